use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::derivation::{Derivation, DerivationOutput, HashModuloCache};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::store_writer::{OutputChecks, RegisterMode};
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::StorePath;

use super::*;
use crate::add::{read_derivation, AddOptions};
use crate::db::DbSettings;
use crate::layout::{CreateOptions, StoreLayout};
use crate::test_support::*;

fn open_store(dir: &Path) -> Store {
    let layout = StoreLayout::chroot(&dir.join("root")).unwrap();
    Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap()
}

/// Adds a text file and returns its path (an input of the builds below).
fn add_input(store: &mut Store, name: &str, contents: &[u8]) -> StorePath {
    let (info, _) = store
        .add_from_content(
            name,
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            contents,
            AddOptions::default(),
        )
        .unwrap();
    info.path
}

/// Adds a derivation named `name` with the given outputs (input-addressed ones as `Deferred`,
/// filled in as the evaluator does) and source inputs; returns it and its path.
fn add_drv(
    store: &mut Store,
    name: &str,
    outputs: &[(&str, DerivationOutput)],
    srcs: &[&StorePath],
) -> (Derivation, StorePath) {
    let env = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: outputs
            .iter()
            .map(|(n, o)| ((*n).to_owned(), o.clone()))
            .collect(),
        input_drvs: BTreeMap::new(),
        input_srcs: srcs.iter().map(|p| (*p).clone()).collect(),
        platform: "x86_64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![],
        env: [
            env("builder", "/bin/sh"),
            env("name", name),
            env("outputs", &names.join(" ")),
            env("system", "x86_64-linux"),
        ]
        .into(),
    };
    let lookup = |p: &StorePath| read_derivation(store.layout(), &store.store_fd, p);
    drv.compute_output_paths(
        store.layout().store_dir(),
        &lookup,
        &mut HashModuloCache::new(),
    )
    .unwrap();
    let store_dir = store.layout().store_dir().clone();
    let text = drv.to_aterm(&store_dir).unwrap();
    let (info, _) = store
        .add_from_content(
            &format!("{name}.drv"),
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &drv.references(),
            &text[..],
            AddOptions::default(),
        )
        .unwrap();
    (drv, info.path)
}

fn build_outputs(drv: &Derivation, store: &Store) -> Vec<BuildOutput> {
    let paths = drv.output_paths(store.layout().store_dir()).unwrap();
    drv.outputs
        .iter()
        .map(|(name, out)| BuildOutput {
            name: name.clone(),
            path: paths[name].clone().unwrap(),
            fixed: match out {
                DerivationOutput::CAFixed(ca) => Some(*ca),
                _ => None,
            },
        })
        .collect()
}

/// Runs all three steps.
fn register(
    store: &mut Store,
    drv_path: &StorePath,
    drv: &Derivation,
    candidates: &BTreeSet<StorePath>,
    mode: RegisterMode,
    nars: &[&[u8]],
    checks: &BTreeMap<String, OutputChecks>,
) -> Result<BTreeMap<String, ValidPathInfo>, OutputError> {
    let outputs = build_outputs(drv, store);
    let registration = store.prepare_build_outputs(drv_path, outputs, candidates, mode)?;
    let staged = registration.stage(nars.to_vec())?;
    store.commit_build_outputs(staged, checks)
}

fn staging_is_empty(store: &Store) -> bool {
    std::fs::read_dir(store.layout().staging_dir())
        .unwrap()
        .next()
        .is_none()
}

/// Asserts that nothing of `paths` was registered or left in the store.
fn assert_nothing_registered(store: &Store, paths: &[&StorePath]) {
    for path in paths {
        assert!(!store.db().is_valid(path).unwrap(), "{path} not registered");
        assert!(
            std::fs::symlink_metadata(store.layout().real_path(path)).is_err(),
            "{path} not in the store"
        );
    }
    assert!(staging_is_empty(store), "staging cleaned");
}

fn two_outputs() -> Vec<(&'static str, DerivationOutput)> {
    vec![
        ("dev", DerivationOutput::Deferred),
        ("out", DerivationOutput::Deferred),
    ]
}

#[test]
fn outputs_are_registered_with_their_references_deriver_and_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = store.layout().store_dir().clone();
    let lib = add_input(&mut store, "lib", b"a library");
    let unused = add_input(&mut store, "unused", b"not referenced");
    let unlisted = add_input(&mut store, "unlisted", b"valid but not a candidate");
    let (drv, drv_path) = add_drv(&mut store, "multi", &two_outputs(), &[&lib, &unused]);
    let outputs = build_outputs(&drv, &store);
    let dev = outputs[0].path.clone();
    let out = outputs[1].path.clone();
    // `out` refers to `lib`, to `dev` and to itself; it also names `unlisted`, which is not a
    // candidate and so not a reference. `dev` refers to nothing.
    let script = format!(
        "#!{}/bin/sh\n{} {} {}\n",
        store_dir.print(&lib),
        store_dir.print(&dev),
        store_dir.print(&out),
        store_dir.print(&unlisted)
    );
    let out_nar = nar_of(&Node::Dir(vec![
        (
            "bin".into(),
            Node::Dir(vec![(
                "run".into(),
                Node::File {
                    executable: true,
                    contents: script.into_bytes(),
                },
            )]),
        ),
        ("link".into(), Node::Symlink("/etc/shadow".into())),
    ]));
    let dev_nar = nar_of(&file(b"headers"));
    let candidates: BTreeSet<StorePath> = [lib.clone(), unused.clone()].into();
    let registered = register(
        &mut store,
        &drv_path,
        &drv,
        &candidates,
        RegisterMode::Normal,
        &[&dev_nar, &out_nar],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(registered.len(), 2);
    let out_info = store.db().query_path_info(&out).unwrap().unwrap();
    assert_eq!(
        out_info.references,
        [lib.clone(), dev.clone(), out.clone()].into()
    );
    assert_eq!(out_info.deriver.as_ref(), Some(&drv_path));
    assert!(out_info.ultimate);
    assert_eq!(out_info.ca, None);
    assert_eq!(out_info.nar_hash, Hash::compute(HashAlgo::Sha256, &out_nar));
    assert_eq!(out_info.nar_size, out_nar.len() as u64);
    assert_eq!(registered["out"].path, out);
    let dev_info = store.db().query_path_info(&dev).unwrap().unwrap();
    assert!(dev_info.references.is_empty());
    // Canonical on disk; the symlink is stored as a link, never followed.
    let real = store.layout().real_path(&out);
    let run = std::fs::metadata(real.join("bin/run")).unwrap();
    assert_eq!(run.mode() & 0o7777, 0o555);
    assert_eq!(run.mtime(), 1);
    assert_eq!(
        std::fs::read_link(real.join("link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(staging_is_empty(&store));

    // Registered again (normal mode): left alone, the NARs are still read and checked.
    let before = store.db().query_path_info(&out).unwrap().unwrap();
    let again = register(
        &mut store,
        &drv_path,
        &drv,
        &candidates,
        RegisterMode::Normal,
        &[&dev_nar, &out_nar[..out_nar.len() - 8]],
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(matches!(again, OutputError::Nar { .. }), "{again}");
    let again = register(
        &mut store,
        &drv_path,
        &drv,
        &candidates,
        RegisterMode::Normal,
        &[&dev_nar, &nar_of(&file(b"different"))],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(again["out"], before);
    assert_eq!(store.db().query_path_info(&out).unwrap().unwrap(), before);
}

#[test]
fn check_mode_compares_and_names_both_hashes_and_repair_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let (drv, drv_path) = add_drv(
        &mut store,
        "det",
        &[("out", DerivationOutput::Deferred)],
        &[],
    );
    let out = build_outputs(&drv, &store)[0].path.clone();
    let none = BTreeSet::new();
    let checks = BTreeMap::new();
    let first = nar_of(&file(b"first"));
    // Check mode needs a valid output.
    let e = register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Check,
        &[&first],
        &checks,
    )
    .unwrap_err();
    assert!(matches!(e, OutputError::NotValid { .. }), "{e}");
    register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Normal,
        &[&first],
        &checks,
    )
    .unwrap();
    // Same output: fine.
    register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Check,
        &[&first],
        &checks,
    )
    .unwrap();
    let second = nar_of(&file(b"second"));
    let e = register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Check,
        &[&second],
        &checks,
    )
    .unwrap_err();
    match &e {
        OutputError::CheckMismatch {
            registered,
            rebuilt,
            ..
        } => {
            assert_eq!(**registered, Hash::compute(HashAlgo::Sha256, &first));
            assert_eq!(**rebuilt, Hash::compute(HashAlgo::Sha256, &second));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("may not be deterministic"), "{e}");
    let real = store.layout().real_path(&out);
    assert_eq!(std::fs::read(&real).unwrap(), b"first");
    // Repair replaces the contents and the row.
    register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Repair,
        &[&second],
        &checks,
    )
    .unwrap();
    assert_eq!(std::fs::read(&real).unwrap(), b"second");
    assert_eq!(
        store.db().query_path_info(&out).unwrap().unwrap().nar_hash,
        Hash::compute(HashAlgo::Sha256, &second)
    );
    assert!(staging_is_empty(&store));
}

fn fixed(method: FileIngestionMethod, hash: Hash) -> DerivationOutput {
    DerivationOutput::CAFixed(ContentAddress {
        method: ContentAddressMethod::Fixed(method),
        hash,
    })
}

#[test]
fn fixed_outputs_flat_and_recursive_with_each_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let none = BTreeSet::new();
    let checks = BTreeMap::new();
    let contents = b"fetched bytes\n";
    for (i, algo) in [HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512]
        .into_iter()
        .enumerate()
    {
        let want = Hash::compute(algo, contents);
        let (drv, drv_path) = add_drv(
            &mut store,
            &format!("flat{i}"),
            &[("out", fixed(FileIngestionMethod::Flat, want))],
            &[],
        );
        let registered = register(
            &mut store,
            &drv_path,
            &drv,
            &none,
            RegisterMode::Normal,
            &[&nar_of(&file(contents))],
            &checks,
        )
        .unwrap();
        let info = &registered["out"];
        assert_eq!(info.ca.unwrap().hash, want);
        assert!(info.is_content_addressed(store.layout().store_dir()));
        assert!(store.db().is_valid(&info.path).unwrap());

        let tree = Node::Dir(vec![("f".into(), file(contents))]);
        let nar = nar_of(&tree);
        let (drv, drv_path) = add_drv(
            &mut store,
            &format!("rec{i}"),
            &[(
                "out",
                fixed(FileIngestionMethod::Recursive, Hash::compute(algo, &nar)),
            )],
            &[],
        );
        let registered = register(
            &mut store,
            &drv_path,
            &drv,
            &none,
            RegisterMode::Normal,
            &[&nar],
            &checks,
        )
        .unwrap();
        assert!(store.db().is_valid(&registered["out"].path).unwrap());
    }
}

#[test]
fn a_wrong_fixed_output_is_refused_with_nix_wording_and_nothing_is_registered() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let input = add_input(&mut store, "input", b"x");
    let want = Hash::compute(HashAlgo::Sha256, b"expected");
    let (drv, drv_path) = add_drv(
        &mut store,
        "fetch",
        &[("out", fixed(FileIngestionMethod::Flat, want))],
        &[&input],
    );
    let out = build_outputs(&drv, &store)[0].path.clone();
    let candidates: BTreeSet<StorePath> = [input.clone()].into();
    let checks = BTreeMap::new();
    let attempt = |store: &mut Store, nar: &[u8]| {
        register(
            store,
            &drv_path,
            &drv,
            &candidates,
            RegisterMode::Normal,
            &[nar],
            &checks,
        )
        .unwrap_err()
    };
    let e = attempt(&mut store, &nar_of(&file(b"something else")));
    let text = e.to_string();
    assert!(
        text.contains("hash mismatch in fixed-output derivation")
            && text.contains(&format!("specified: {}", want.to_sri()))
            && text.contains(&format!(
                "got:    {}",
                Hash::compute(HashAlgo::Sha256, b"something else").to_sri()
            )),
        "{text}"
    );
    assert_nothing_registered(&store, &[&out]);
    // Flat needs a single non-executable regular file.
    let e = attempt(
        &mut store,
        &nar_of(&Node::File {
            executable: true,
            contents: b"expected".to_vec(),
        }),
    );
    assert!(
        e.to_string()
            .contains("should be a non-executable regular file"),
        "{e}"
    );
    let e = attempt(&mut store, &nar_of(&Node::Symlink("/etc/passwd".into())));
    assert!(
        e.to_string()
            .contains("should be a non-executable regular file"),
        "{e}"
    );
    assert_nothing_registered(&store, &[&out]);
}

#[test]
fn a_fixed_output_may_not_refer_to_store_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = store.layout().store_dir().clone();
    let input = add_input(&mut store, "input", b"x");
    let tree = Node::Dir(vec![("f".into(), file(store_dir.print(&input).as_bytes()))]);
    let nar = nar_of(&tree);
    let (drv, drv_path) = add_drv(
        &mut store,
        "sneaky",
        &[(
            "out",
            fixed(
                FileIngestionMethod::Recursive,
                Hash::compute(HashAlgo::Sha256, &nar),
            ),
        )],
        &[&input],
    );
    let out = build_outputs(&drv, &store)[0].path.clone();
    let e = register(
        &mut store,
        &drv_path,
        &drv,
        &[input].into(),
        RegisterMode::Normal,
        &[&nar],
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("illegal path references in fixed-output derivation"),
        "{e}"
    );
    assert_nothing_registered(&store, &[&out]);
}

#[test]
fn reference_and_size_checks_use_nix_wording() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = store.layout().store_dir().clone();
    let dep = add_input(&mut store, "dep", b"dependency");
    let (drv, drv_path) = add_drv(&mut store, "checked", &two_outputs(), &[&dep]);
    let outputs = build_outputs(&drv, &store);
    let dev = outputs[0].path.clone();
    let out = outputs[1].path.clone();
    let out_nar = nar_of(&file(
        format!("{} {}", store_dir.print(&dev), store_dir.print(&out)).as_bytes(),
    ));
    let dev_nar = nar_of(&file(store_dir.print(&dep).as_bytes()));
    let candidates: BTreeSet<StorePath> = [dep.clone()].into();
    let attempt = |store: &mut Store, checks: BTreeMap<String, OutputChecks>| {
        register(
            store,
            &drv_path,
            &drv,
            &candidates,
            RegisterMode::Normal,
            &[&dev_nar, &out_nar],
            &checks,
        )
    };
    let cases: Vec<(&str, OutputChecks, String)> = vec![
        (
            "out",
            OutputChecks {
                allowed_references: Some(BTreeSet::new()),
                ..OutputChecks::default()
            },
            format!(
                "output '{}' is not allowed to refer to the following paths:\n  {}",
                store_dir.print(&out),
                store_dir.print(&dev)
            ),
        ),
        (
            "out",
            OutputChecks {
                disallowed_requisites: [dep.clone()].into(),
                ..OutputChecks::default()
            },
            format!(
                "output '{}' is not allowed to refer to the following paths:\n  {}",
                store_dir.print(&out),
                store_dir.print(&dep)
            ),
        ),
        (
            "out",
            OutputChecks {
                allowed_requisites: Some([dev.clone()].into()),
                ..OutputChecks::default()
            },
            format!(
                "output '{}' is not allowed to refer to the following paths:\n  {}",
                store_dir.print(&out),
                store_dir.print(&dep)
            ),
        ),
        (
            "dev",
            OutputChecks {
                disallowed_references: [dep.clone()].into(),
                ..OutputChecks::default()
            },
            format!(
                "output '{}' is not allowed to refer to the following paths:\n  {}",
                store_dir.print(&dev),
                store_dir.print(&dep)
            ),
        ),
        (
            "dev",
            OutputChecks {
                max_size: Some(8),
                ..OutputChecks::default()
            },
            format!(
                "path '{}' is too large at {} bytes; limit is 8 bytes",
                store_dir.print(&dev),
                dev_nar.len()
            ),
        ),
        (
            "out",
            OutputChecks {
                max_closure_size: Some(out_nar.len() as u64 + dev_nar.len() as u64),
                ..OutputChecks::default()
            },
            format!(
                "closure of path '{}' is too large at",
                store_dir.print(&out)
            ),
        ),
    ];
    for (output, check, words) in cases {
        let e = attempt(&mut store, [(output.to_owned(), check.clone())].into()).unwrap_err();
        assert!(
            matches!(e, OutputError::Rejected { .. }) && e.to_string().contains(&words),
            "{check:?}: {e}\nwanted: {words}"
        );
        assert_nothing_registered(&store, &[&out, &dev]);
    }
    // Checks that hold: registered.
    let ok = OutputChecks {
        allowed_references: Some([dev.clone()].into()),
        allowed_requisites: Some([dev.clone(), dep.clone()].into()),
        max_size: Some(out_nar.len() as u64),
        ..OutputChecks::default()
    };
    attempt(&mut store, [("out".to_owned(), ok)].into()).unwrap();
    assert!(store.db().is_valid(&out).unwrap() && store.db().is_valid(&dev).unwrap());
}

#[test]
fn a_request_that_does_not_match_the_derivation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let victim = add_input(&mut store, "victim", b"someone else's path");
    let (drv, drv_path) = add_drv(
        &mut store,
        "honest",
        &[("out", DerivationOutput::Deferred)],
        &[],
    );
    let none = BTreeSet::new();
    let prepare = |store: &mut Store, outputs: Vec<BuildOutput>, drv_path: &StorePath| {
        store
            .prepare_build_outputs(drv_path, outputs, &none, RegisterMode::Repair)
            .map(drop)
            .unwrap_err()
    };
    let mut wrong_path = build_outputs(&drv, &store);
    wrong_path[0].path = victim.clone();
    let e = prepare(&mut store, wrong_path, &drv_path);
    assert!(
        matches!(e, OutputError::NotTheDerivation { .. }) && e.to_string().contains("puts it at"),
        "{e}"
    );
    let mut wrong_name = build_outputs(&drv, &store);
    wrong_name[0].name = "bin".into();
    let e = prepare(&mut store, wrong_name, &drv_path);
    assert!(e.to_string().contains("no such output"), "{e}");
    let mut claims_fixed = build_outputs(&drv, &store);
    claims_fixed[0].fixed = Some(ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
        hash: Hash::compute(HashAlgo::Sha256, b""),
    });
    let e = prepare(&mut store, claims_fixed, &drv_path);
    assert!(e.to_string().contains("content address"), "{e}");
    let outs = build_outputs(&drv, &store);
    let e = prepare(&mut store, outs, &victim);
    assert!(matches!(e, OutputError::NotValid { .. }), "{e}");
    let invalid_candidate: BTreeSet<StorePath> = [test_path("not-there")].into();
    let outs = build_outputs(&drv, &store);
    let e = store
        .prepare_build_outputs(&drv_path, outs, &invalid_candidate, RegisterMode::Normal)
        .map(drop)
        .unwrap_err();
    assert!(matches!(e, OutputError::NotValid { .. }), "{e}");
    // The victim is untouched.
    assert_eq!(
        std::fs::read(store.layout().real_path(&victim)).unwrap(),
        b"someone else's path"
    );
    assert!(staging_is_empty(&store));
}

#[test]
fn malformed_nars_and_cycles_register_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = store.layout().store_dir().clone();
    let (drv, drv_path) = add_drv(&mut store, "cyclic", &two_outputs(), &[]);
    let outputs = build_outputs(&drv, &store);
    let dev = outputs[0].path.clone();
    let out = outputs[1].path.clone();
    let none = BTreeSet::new();
    let dotdot = nar_tokens(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"..",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"x",
        b")",
        b")",
        b")",
    ]);
    let good = nar_of(&file(b"fine"));
    for bad in [&dotdot[..], b"not a nar", &good[..good.len() - 1]] {
        let e = register(
            &mut store,
            &drv_path,
            &drv,
            &none,
            RegisterMode::Normal,
            &[&good, bad],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(matches!(e, OutputError::Nar { .. }), "{e}");
        assert_nothing_registered(&store, &[&out, &dev]);
    }
    // Trailing bytes after the NAR are refused too.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"extra");
    let e = register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Normal,
        &[&good, &trailing],
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(matches!(e, OutputError::Nar { .. }), "{e}");
    // `out` and `dev` refer to each other: a cycle, refused as a whole.
    let e = register(
        &mut store,
        &drv_path,
        &drv,
        &none,
        RegisterMode::Normal,
        &[
            &nar_of(&file(store_dir.print(&out).as_bytes())),
            &nar_of(&file(store_dir.print(&dev).as_bytes())),
        ],
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert_nothing_registered(&store, &[&out, &dev]);
}
