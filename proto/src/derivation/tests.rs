//! Test vectors TV5–TV7 (real Nix 2.8 output), output path computation, checks, and a
//! print → parse property test.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use proptest::prelude::*;

use super::hash_modulo::{hash_derivation_modulo, modulo_aterm};
use super::*;
use crate::content_address::FileIngestionMethod;

/// TV5: `derivation { name="hello"; system="x86_64-linux"; builder="/bin/sh";
/// args=["-c" "echo hi > $out"]; }`, as Nix 2.8 wrote it.
const TV5: &str = r#"Derive([("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","hello"),("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello"),("system","x86_64-linux")])"#;
const TV5_DRV: &str = "76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv";
const TV5_OUT: &str = "mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello";

/// TV6: the fixed-output `fo` (flat SHA-256 of `hello\n`). The facts give its paths; this text
/// is what Nix 2.8 wrote for `derivation { name="fo"; system="x86_64-linux";
/// builder="/bin/sh"; args=["-c" "echo hi > $out"]; outputHashMode="flat";
/// outputHashAlgo="sha256"; outputHash="5891…be03"; }`, whose `.drv` path is TV6's.
const TV6: &str = r#"Derive([("out","/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo","sha256","5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","fo"),("out","/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo"),("outputHash","5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("system","x86_64-linux")])"#;
const TV6_DRV: &str = "ihdj3vgimzx5wf73kjlm7l19d5r9bb8y-fo.drv";
const TV6_OUT: &str = "09xxzzxfl30gihclrc0q5vfmj0iwipml-fo";

/// A two-output derivation `dep` using TV5, TV6 and TV3's `f.txt`, written by Nix 2.8 for
/// `derivation { name="dep"; system="x86_64-linux"; builder="/bin/sh"; outputs=["out" "dev"];
/// args=["-c" "cat $src > $out; echo \"$hello $fo\"\t> $dev"]; src=./f.txt; inherit hello fo; }`.
/// (The fact sheet's TV7 has the same shape, but its builder and args are not recorded, so
/// its exact text cannot be rebuilt; this one is TV7's recipe with known bytes.)
const TV7: &str = r#"Derive([("dev","/nix/store/g65x7c42vymdwmwd73mdphy52ksganml-dep-dev","",""),("out","/nix/store/fd6qjkwvirkyrxgc68ff19rnx99h4ka1-dep","","")],[("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",["out"]),("/nix/store/ihdj3vgimzx5wf73kjlm7l19d5r9bb8y-fo.drv",["out"])],["/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"],"x86_64-linux","/bin/sh",["-c","cat $src > $out; echo \"$hello $fo\"\t> $dev"],[("builder","/bin/sh"),("dev","/nix/store/g65x7c42vymdwmwd73mdphy52ksganml-dep-dev"),("fo","/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo"),("hello","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello"),("name","dep"),("out","/nix/store/fd6qjkwvirkyrxgc68ff19rnx99h4ka1-dep"),("outputs","out dev"),("src","/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"),("system","x86_64-linux")])"#;
const TV7_DRV: &str = "db61z9qwg00h7s3mwz2cd25g343718pm-dep.drv";
const F_TXT: &str = "6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt";

fn store() -> StoreDir {
    StoreDir::default()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

fn parse(text: &str, name: &str) -> Derivation {
    Derivation::parse(text.as_bytes(), &store(), name).unwrap()
}

/// A lookup over a fixed set of derivations, by `.drv` path.
struct Drvs(BTreeMap<StorePath, Derivation>);

impl Drvs {
    fn new(drvs: impl IntoIterator<Item = Derivation>) -> Drvs {
        Drvs(
            drvs.into_iter()
                .map(|d| (d.drv_path(&store()).unwrap(), d))
                .collect(),
        )
    }

    fn get(&self, path: &StorePath) -> Result<Derivation, io::Error> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no derivation {path}")))
    }
}

fn tv_inputs() -> Drvs {
    Drvs::new([parse(TV5, "hello"), parse(TV6, "fo")])
}

#[test]
fn tv5_text_drv_path_and_output() {
    let s = store();
    let drv = parse(TV5, "hello");
    let text = drv.to_aterm(&s).unwrap();
    assert_eq!(text, TV5.as_bytes());
    // The fact sheet's "376 bytes" is the NAR size of the .drv (`nix-store -q --size`); the
    // text itself is 257 bytes.
    assert_eq!(text.len(), 257);
    assert_eq!(
        Hash::compute(HashAlgo::Sha256, &text).to_nix32(),
        "0m3jdi42fq9fgggf36i4w7k5xhwdv6chz9kjxqbhn3153hrvnfbx"
    );
    assert_eq!(drv.drv_path(&s).unwrap(), sp(TV5_DRV));
    assert!(drv.references().is_empty());

    // The masked text is TV5 with both occurrences of the output path blanked.
    let lookup = |p: &StorePath| tv_inputs().get(p);
    let mut cache = HashModuloCache::new();
    let masked = modulo_aterm(&drv, &s, true, &lookup, &mut cache)
        .unwrap()
        .unwrap();
    let expected = TV5.replace(&format!("/nix/store/{TV5_OUT}"), "");
    assert_eq!(String::from_utf8(masked).unwrap(), expected);
    let hash = hash_derivation_modulo(&drv, &s, true, &lookup, &mut cache).unwrap();
    assert_eq!(
        hash,
        DrvHashModulo::Regular(Hash::compute(HashAlgo::Sha256, expected.as_bytes()))
    );
    let DrvHashModulo::Regular(hash) = hash else {
        unreachable!()
    };
    assert_eq!(
        s.make_output_path("out", &hash, "hello").unwrap(),
        sp(TV5_OUT)
    );
    drv.check_outputs(&s, &lookup, &mut cache).unwrap();
}

#[test]
fn tv5_from_scratch_like_the_evaluator() {
    let s = store();
    let mut drv = Derivation {
        name: "hello".into(),
        outputs: BTreeMap::from([("out".to_owned(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), b"echo hi > $out".to_vec()],
        env: BTreeMap::from([
            (b"builder".to_vec(), b"/bin/sh".to_vec()),
            (b"name".to_vec(), b"hello".to_vec()),
            (b"system".to_vec(), b"x86_64-linux".to_vec()),
        ]),
    };
    let lookup = |p: &StorePath| tv_inputs().get(p);
    drv.compute_output_paths(&s, &lookup, &mut HashModuloCache::new())
        .unwrap();
    assert_eq!(drv, parse(TV5, "hello"));
    assert_eq!(drv.drv_path(&s).unwrap(), sp(TV5_DRV));
}

#[test]
fn tv6_fixed_output() {
    let s = store();
    let drv = parse(TV6, "fo");
    assert_eq!(drv.to_aterm(&s).unwrap(), TV6.as_bytes());
    assert_eq!(drv.drv_path(&s).unwrap(), sp(TV6_DRV));
    assert_eq!(
        drv.derivation_type().unwrap(),
        DerivationType::ContentAddressed { fixed: true }
    );
    assert_eq!(
        drv.output_paths(&s).unwrap(),
        BTreeMap::from([("out".to_owned(), Some(sp(TV6_OUT)))])
    );
    let lookup = |p: &StorePath| tv_inputs().get(p);
    let mut cache = HashModuloCache::new();
    let expected = Hash::compute(
        HashAlgo::Sha256,
        format!(
            "fixed:out:sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03:/nix/store/{TV6_OUT}"
        )
        .as_bytes(),
    );
    for mask in [false, true] {
        assert_eq!(
            hash_derivation_modulo(&drv, &s, mask, &lookup, &mut cache).unwrap(),
            DrvHashModulo::FixedOutput(BTreeMap::from([("out".to_owned(), expected)]))
        );
    }
    assert_eq!(
        modulo_aterm(&drv, &s, true, &lookup, &mut cache).unwrap(),
        None
    );
    drv.check_outputs(&s, &lookup, &mut cache).unwrap();
    // The env var must hold the fixed path.
    let mut wrong = drv.clone();
    wrong.env.insert(b"out".to_vec(), b"/nix/store/x".to_vec());
    assert!(matches!(
        wrong.check_outputs(&s, &lookup, &mut cache),
        Err(HashModuloError::Derivation(
            DerivationError::WrongEnvVar { .. }
        ))
    ));
}

#[test]
fn tv7_two_outputs_with_inputs() {
    let s = store();
    let inputs = tv_inputs();
    assert_eq!(
        inputs.0.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([sp(TV5_DRV), sp(TV6_DRV)])
    );
    let drv = parse(TV7, "dep");
    assert_eq!(drv.to_aterm(&s).unwrap(), TV7.as_bytes());
    assert_eq!(drv.drv_path(&s).unwrap(), sp(TV7_DRV));
    assert_eq!(
        drv.references(),
        BTreeSet::from([sp(TV5_DRV), sp(TV6_DRV), sp(F_TXT)])
    );
    assert_eq!(drv.args[1], b"cat $src > $out; echo \"$hello $fo\"\t> $dev");

    let lookup = |p: &StorePath| inputs.get(p);
    let mut cache = HashModuloCache::new();
    drv.check_outputs(&s, &lookup, &mut cache).unwrap();
    assert_eq!(cache.len(), 2);

    // The modulo text replaces hello.drv by its unmasked hash and fo.drv by its fixed hash.
    let hello_hash = Hash::compute(HashAlgo::Sha256, TV5.as_bytes()).to_base16();
    let fo_hash = Hash::compute(
        HashAlgo::Sha256,
        format!(
            "fixed:out:sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03:/nix/store/{TV6_OUT}"
        )
        .as_bytes(),
    )
    .to_base16();
    let mut inputs_text = [
        format!(r#"("{hello_hash}",["out"])"#),
        format!(r#"("{fo_hash}",["out"])"#),
    ];
    inputs_text.sort();
    let masked = modulo_aterm(&drv, &s, true, &lookup, &mut cache)
        .unwrap()
        .unwrap();
    let expected = TV7
        .replace(
            &format!(r#"("/nix/store/{TV5_DRV}",["out"]),("/nix/store/{TV6_DRV}",["out"])"#),
            &inputs_text.join(","),
        )
        .replace("/nix/store/g65x7c42vymdwmwd73mdphy52ksganml-dep-dev", "")
        .replace("/nix/store/fd6qjkwvirkyrxgc68ff19rnx99h4ka1-dep", "");
    assert_eq!(String::from_utf8(masked).unwrap(), expected);

    // Filling in from deferred outputs gives back Nix's derivation.
    let mut fresh = drv.clone();
    for output in fresh.outputs.values_mut() {
        *output = DerivationOutput::Deferred;
    }
    fresh.env.remove(b"out".as_slice());
    fresh.env.remove(b"dev".as_slice());
    fresh.compute_output_paths(&s, &lookup, &mut cache).unwrap();
    assert_eq!(fresh, drv);

    // Registration refuses a wrong path or env var.
    let mut wrong = drv.clone();
    wrong.outputs.insert(
        "dev".into(),
        DerivationOutput::InputAddressed(sp("g65x7c42vymdwmwd73mdphy52ksganml-dep-dex")),
    );
    assert!(matches!(
        wrong.check_outputs(&s, &lookup, &mut cache),
        Err(HashModuloError::Derivation(
            DerivationError::WrongOutputPath { .. }
        ))
    ));
    let mut wrong = drv.clone();
    wrong.env.insert(b"dev".to_vec(), b"".to_vec());
    assert!(matches!(
        wrong.check_outputs(&s, &lookup, &mut cache),
        Err(HashModuloError::Derivation(
            DerivationError::WrongEnvVar { .. }
        ))
    ));
    let mut wrong = drv.clone();
    wrong.args.push(b"changed".to_vec());
    assert!(matches!(
        wrong.check_outputs(&s, &lookup, &mut cache),
        Err(HashModuloError::Derivation(
            DerivationError::WrongOutputPath { .. }
        ))
    ));

    // BuildDerivation form.
    let basic = drv.to_basic();
    let triples = basic.output_triples(&s).unwrap();
    assert_eq!(triples.len(), 2);
    assert_eq!(
        triples[0],
        (
            "dev".to_owned(),
            (
                "/nix/store/g65x7c42vymdwmwd73mdphy52ksganml-dep-dev".to_owned(),
                String::new(),
                String::new()
            )
        )
    );
    assert_eq!(BasicDerivation::from(drv.clone()), basic);
}

#[test]
fn missing_inputs_outputs_and_names_are_refused() {
    let s = store();
    let inputs = tv_inputs();
    let lookup = |p: &StorePath| inputs.get(p);
    let mut drv = parse(TV7, "dep");
    drv.input_drvs
        .insert(sp(TV5_DRV), BTreeSet::from(["dev".to_owned()]));
    assert!(matches!(
        drv.check_outputs(&s, &lookup, &mut HashModuloCache::new()),
        Err(HashModuloError::Derivation(
            DerivationError::MissingInputOutput { .. }
        ))
    ));
    let mut drv = parse(TV7, "dep");
    drv.input_drvs
        .insert(sp(TV6_DRV), BTreeSet::from(["dev".to_owned()]));
    assert!(matches!(
        drv.check_outputs(&s, &lookup, &mut HashModuloCache::new()),
        Err(HashModuloError::Derivation(
            DerivationError::MissingInputOutput { .. }
        ))
    ));
    let mut drv = parse(TV7, "dep");
    drv.input_drvs.insert(
        sp("00000000000000000000000000000000-gone.drv"),
        BTreeSet::from(["out".to_owned()]),
    );
    let err = drv
        .check_outputs(&s, &lookup, &mut HashModuloCache::new())
        .unwrap_err();
    assert!(matches!(err, HashModuloError::Lookup { .. }));
    assert!(err
        .to_string()
        .contains("00000000000000000000000000000000-gone.drv"));
    let mut drv = parse(TV7, "dep");
    drv.input_drvs.insert(
        sp("00000000000000000000000000000000-notadrv"),
        BTreeSet::from(["out".to_owned()]),
    );
    assert!(matches!(
        drv.check_outputs(&s, &lookup, &mut HashModuloCache::new()),
        Err(HashModuloError::Derivation(
            DerivationError::NotADrvPath { .. }
        ))
    ));
    // A lookup that answers with a derivation of another name.
    let renamed = |p: &StorePath| {
        inputs.get(p).map(|mut d| {
            d.name = "other".into();
            d
        })
    };
    assert!(matches!(
        parse(TV7, "dep").check_outputs(&s, &renamed, &mut HashModuloCache::new()),
        Err(HashModuloError::Derivation(
            DerivationError::NameMismatch { .. }
        ))
    ));
}

#[test]
fn cycles_are_refused() {
    let s = store();
    let a = sp("00000000000000000000000000000000-a.drv");
    let b = sp("11111111111111111111111111111111-b.drv");
    let node = |name: &str, input: &StorePath| {
        let mut d = parse(TV5, "hello");
        d.name = name.into();
        d.input_drvs = BTreeMap::from([(input.clone(), BTreeSet::from(["out".to_owned()]))]);
        d
    };
    let lookup = |p: &StorePath| -> Result<Derivation, io::Error> {
        Ok(if *p == a {
            node("a", &b)
        } else {
            node("b", &a)
        })
    };
    let root = node("root", &a);
    let err =
        hash_derivation_modulo(&root, &s, true, &lookup, &mut HashModuloCache::new()).unwrap_err();
    assert!(
        matches!(
            err,
            HashModuloError::Derivation(DerivationError::Cycle { .. })
        ),
        "{err}"
    );
}

#[test]
fn long_input_chains_do_not_recurse() {
    let s = store();
    // A chain of 5000 derivations, each depending on the previous one.
    let mut drvs = BTreeMap::new();
    let mut prev: Option<StorePath> = None;
    for i in 0..5000 {
        let mut d = parse(TV5, "hello");
        d.name = format!("n{i}");
        d.outputs = BTreeMap::from([("out".to_owned(), DerivationOutput::Deferred)]);
        if let Some(p) = &prev {
            d.input_drvs = BTreeMap::from([(p.clone(), BTreeSet::from(["out".to_owned()]))]);
        }
        let path = d.drv_path(&s).unwrap();
        drvs.insert(path.clone(), d);
        prev = Some(path);
    }
    let top = drvs[prev.as_ref().unwrap()].clone();
    let drvs = Drvs(drvs);
    let lookup = |p: &StorePath| drvs.get(p);
    let mut cache = HashModuloCache::new();
    let hash = hash_derivation_modulo(&top, &s, true, &lookup, &mut cache).unwrap();
    assert!(matches!(hash, DrvHashModulo::Regular(_)));
    assert_eq!(cache.len(), 4999);
}

#[test]
fn floating_and_impure_inputs_defer_output_paths() {
    let s = store();
    let mut ca = parse(TV5, "hello");
    ca.name = "ca".into();
    ca.outputs = BTreeMap::from([(
        "out".to_owned(),
        DerivationOutput::CAFloating {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            algo: HashAlgo::Sha256,
        },
    )]);
    let lookup0 = |p: &StorePath| tv_inputs().get(p);
    ca.compute_output_paths(&s, &lookup0, &mut HashModuloCache::new())
        .unwrap();
    assert_eq!(ca.env_var("out"), Some(hash_placeholder("out").as_bytes()));
    let mut impure = ca.clone();
    impure.name = "imp".into();
    impure.outputs = BTreeMap::from([(
        "out".to_owned(),
        DerivationOutput::Impure {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            algo: HashAlgo::Sha256,
        },
    )]);
    assert_eq!(
        hash_derivation_modulo(&impure, &s, true, &lookup0, &mut HashModuloCache::new()).unwrap(),
        DrvHashModulo::Deferred(Hash::compute(HashAlgo::Sha256, b"impure"))
    );
    assert!(
        hash_derivation_modulo(&ca, &s, true, &lookup0, &mut HashModuloCache::new())
            .unwrap()
            .is_deferred()
    );

    for input in [ca, impure] {
        let input_path = input.drv_path(&s).unwrap();
        let inputs = Drvs::new([input]);
        let lookup = |p: &StorePath| inputs.get(p);
        let mut user = parse(TV5, "hello");
        user.name = "user".into();
        user.input_drvs = BTreeMap::from([(input_path, BTreeSet::from(["out".to_owned()]))]);
        user.compute_output_paths(&s, &lookup, &mut HashModuloCache::new())
            .unwrap();
        assert_eq!(user.outputs["out"], DerivationOutput::Deferred);
        assert_eq!(user.env_var("out"), Some(b"".as_slice()));
        assert_eq!(
            user.derivation_type().unwrap(),
            DerivationType::InputAddressed { deferred: true }
        );
        // Nothing to check for deferred outputs.
        user.check_outputs(&s, &lookup, &mut HashModuloCache::new())
            .unwrap();
        let hashes = user
            .static_output_hashes(&s, &lookup, &mut HashModuloCache::new())
            .unwrap();
        assert_eq!(hashes.keys().collect::<Vec<_>>(), vec!["out"]);
    }
}

#[test]
fn hash_placeholder_matches_nix() {
    // From Nix's ca/advanced-attributes test data: the `out` env var of a floating output.
    assert_eq!(
        hash_placeholder("out"),
        "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    );
}

#[test]
fn derivation_types() {
    let base = parse(TV5, "hello");
    let with = |outputs: Vec<(&str, DerivationOutput)>| {
        let mut d = base.clone();
        d.outputs = outputs
            .into_iter()
            .map(|(n, o)| (n.to_owned(), o))
            .collect();
        d.derivation_type()
    };
    let fixed = parse(TV6, "fo").outputs["out"].clone();
    let floating = |algo| DerivationOutput::CAFloating {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        algo,
    };
    assert!(matches!(
        with(vec![]),
        Err(DerivationError::NoOutputs { .. })
    ));
    assert!(matches!(
        with(vec![
            ("out", DerivationOutput::Deferred),
            ("dev", fixed.clone())
        ]),
        Err(DerivationError::MixedOutputTypes { .. })
    ));
    assert!(matches!(
        with(vec![("out", fixed.clone()), ("dev", fixed.clone())]),
        Err(DerivationError::MultipleFixedOutputs { .. })
    ));
    assert!(matches!(
        with(vec![("bin", fixed.clone())]),
        Err(DerivationError::FixedOutputNotOut { .. })
    ));
    assert!(matches!(
        with(vec![
            ("out", floating(HashAlgo::Sha256)),
            ("dev", floating(HashAlgo::Sha512))
        ]),
        Err(DerivationError::FloatingAlgoMismatch { .. })
    ));
    assert_eq!(
        with(vec![
            ("out", floating(HashAlgo::Sha256)),
            ("dev", floating(HashAlgo::Sha256))
        ])
        .unwrap(),
        DerivationType::ContentAddressed { fixed: false }
    );
    assert!(DerivationType::ContentAddressed { fixed: true }.is_fixed());
    assert!(!DerivationType::ContentAddressed { fixed: true }.is_sandboxed());
    assert!(!DerivationType::InputAddressed { deferred: true }.has_known_output_paths());
}

#[test]
fn names_from_drv_paths() {
    assert_eq!(name_from_drv_path(&sp(TV5_DRV)).unwrap(), "hello");
    assert!(name_from_drv_path(&sp(TV5_OUT)).is_err());
    assert!(name_from_drv_path(&sp("76w21n1f03fs5kw8fnffphx7qrqffw6r-.drv")).is_err());
    assert_eq!(output_path_name("hello", "out"), "hello");
    assert_eq!(output_path_name("hello", "dev"), "hello-dev");
}

#[test]
fn drv_path_needs_a_valid_name() {
    let mut drv = parse(TV5, "hello");
    drv.name = "x".repeat(210);
    assert!(matches!(
        drv.drv_path(&store()),
        Err(DerivationError::BadName { .. })
    ));
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9+._?=-]{0,15}"
}

fn arb_store_path(suffix: &'static str) -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", arb_name())
        .prop_map(move |(hash, name)| sp(&format!("{hash}-{name}{suffix}")))
}

fn arb_algo() -> impl Strategy<Value = HashAlgo> {
    prop_oneof![
        Just(HashAlgo::Md5),
        Just(HashAlgo::Sha1),
        Just(HashAlgo::Sha256),
        Just(HashAlgo::Sha512),
    ]
}

fn arb_method_algo() -> impl Strategy<Value = (ContentAddressMethod, HashAlgo)> {
    prop_oneof![
        arb_algo().prop_map(|a| (ContentAddressMethod::Fixed(FileIngestionMethod::Flat), a)),
        arb_algo().prop_map(|a| (
            ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            a
        )),
        Just((ContentAddressMethod::Text, HashAlgo::Sha256)),
    ]
}

fn arb_output() -> impl Strategy<Value = DerivationOutput> {
    prop_oneof![
        arb_store_path("").prop_map(DerivationOutput::InputAddressed),
        (arb_method_algo(), any::<[u8; 64]>()).prop_map(|((method, algo), bytes)| {
            DerivationOutput::CAFixed(ContentAddress {
                method,
                hash: Hash::from_digest(algo, &bytes[..algo.size()]).unwrap(),
            })
        }),
        arb_method_algo().prop_map(|(method, algo)| DerivationOutput::CAFloating { method, algo }),
        Just(DerivationOutput::Deferred),
        arb_method_algo().prop_map(|(method, algo)| DerivationOutput::Impure { method, algo }),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..24)
}

prop_compose! {
    fn arb_derivation()(
        name in arb_name(),
        outputs in prop::collection::btree_map("[a-z][a-z0-9]{0,6}", arb_output(), 0..4),
        input_drvs in prop::collection::btree_map(
            arb_store_path(".drv"),
            prop::collection::btree_set("[a-z][a-z0-9]{0,6}", 1..3),
            0..3,
        ),
        input_srcs in prop::collection::btree_set(arb_store_path(""), 0..3),
        platform in "[^\"\\\\]{0,12}",
        builder in bytes(),
        args in prop::collection::vec(bytes(), 0..4),
        env in prop::collection::btree_map(bytes(), bytes(), 0..5),
    ) -> Derivation {
        Derivation { name, outputs, input_drvs, input_srcs, platform, builder, args, env }
    }
}

proptest! {
    #[test]
    fn print_parse_round_trip(drv in arb_derivation()) {
        let s = store();
        let text = drv.to_aterm(&s).unwrap();
        let back = Derivation::parse(&text, &s, &drv.name).unwrap();
        prop_assert_eq!(&back, &drv);
        prop_assert_eq!(back.to_aterm(&s).unwrap(), text);
    }

    #[test]
    fn wire_triples_round_trip(drv in arb_derivation()) {
        let s = store();
        let basic = drv.to_basic();
        for (name, (path, algo, hash)) in basic.output_triples(&s).unwrap() {
            let back = DerivationOutput::from_triple(&path, &algo, &hash, &s, &drv.name, &name)
                .unwrap();
            prop_assert_eq!(&back, &drv.outputs[&name]);
        }
    }

    #[test]
    fn garbage_never_panics(text in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Derivation::parse(&text, &store(), "x");
    }

    #[test]
    fn mutated_tv7_never_panics(at in 0..TV7.len(), byte in any::<u8>()) {
        let mut text = TV7.as_bytes().to_vec();
        text[at] = byte;
        if let Ok(drv) = Derivation::parse(&text, &store(), "dep") {
            // Whatever parses prints to something that parses to the same derivation.
            let printed = drv.to_aterm(&store()).unwrap();
            prop_assert_eq!(Derivation::parse(&printed, &store(), "dep").unwrap(), drv);
        }
    }
}

#[test]
fn debug_shows_bytes_readably() {
    let mut drv = parse(TV5, "hello");
    drv.env.insert(b"raw".to_vec(), vec![0xff, b'"']);
    let shown = format!("{drv:?}");
    assert!(shown.contains(r#"b"echo hi > $out""#), "{shown}");
    assert!(shown.contains(r#"b"raw": b"\xff\"""#), "{shown}");
    assert!(format!("{:?}", drv.to_basic()).contains(r#"builder: b"/bin/sh""#));
}

#[test]
fn every_truncation_of_tv7_is_refused_with_an_offset() {
    for len in 0..TV7.len() {
        let err = Derivation::parse(&TV7.as_bytes()[..len], &store(), "dep").unwrap_err();
        let offset = err
            .offset()
            .unwrap_or_else(|| panic!("no offset for prefix {len}: {err}"));
        assert!(offset <= len, "offset {offset} beyond prefix {len}: {err}");
    }
}
