//! Golden tests against Nix's own characterisation data (`nix-test-data`) and, when it is
//! installed, against the real Nix 2.8 command line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::narinfo::{NarInfo, NarInfoJson};
use ward_proto::path_info::{
    DrvPathOutput, PathInfoJson, PathInfoJsonFormat, PathRealisation, UnkeyedPathInfo,
    UnkeyedRealisation, ValidPathInfo,
};
use ward_proto::signature::{PublicKey, PublicKeys, SecretKey, Signature};
use ward_proto::store_path::{StoreDir, StorePath};

/// The first existing of `$WARD_SHARED_DIR/nix-test-data` and the `shared/nix-test-data`
/// directories two or three levels above this crate.
fn nix_test_data() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("WARD_SHARED_DIR") {
        candidates.push(PathBuf::from(dir).join("nix-test-data"));
    }
    candidates.push(manifest.join("../../shared/nix-test-data"));
    candidates.push(manifest.join("../../../shared/nix-test-data"));
    match candidates.iter().find(|p| p.is_dir()) {
        Some(dir) => dir.clone(),
        None => {
            panic!("nix-test-data not found; set WARD_SHARED_DIR or provide one of: {candidates:?}")
        }
    }
}

fn read_text(relative: &str) -> String {
    let path = nix_test_data().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

fn read_json(relative: &str) -> Value {
    let text = read_text(relative);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad json in {relative}: {e}"))
}

fn store() -> StoreDir {
    StoreDir::default()
}

fn base(name: &str) -> StorePath {
    StorePath::from_base_name(name).unwrap()
}

fn zero_sig(name: &str) -> String {
    Signature::from_parts(name, vec![0; 64])
        .unwrap()
        .to_string()
}

/// The narHash every path-info and nar-info vector uses.
fn vector_nar_hash() -> Hash {
    Hash::parse_any("sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=", None).unwrap()
}

/// Current Nix's `makeFull`: NAR-hashed `foo` with a reference to `bar` and to itself.
fn full_info(impure: bool) -> ValidPathInfo {
    let ca = ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: Hash::compute(HashAlgo::Sha256, b"(...)"),
    };
    let bar = base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar");
    let mut info = ValidPathInfo::make_from_ca(
        &store(),
        "foo",
        ca,
        BTreeSet::from([bar]),
        true,
        vector_nar_hash(),
        34878,
    )
    .unwrap();
    if impure {
        info.deriver = Some(base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv"));
        info.registration_time = 23423;
        info.ultimate = true;
        info.sigs = BTreeSet::from([zero_sig("asdf"), zero_sig("qwer")]);
    }
    info
}

fn empty_info() -> UnkeyedPathInfo {
    UnkeyedPathInfo {
        deriver: None,
        nar_hash: vector_nar_hash(),
        references: BTreeSet::new(),
        registration_time: 0,
        nar_size: 0,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: None,
    }
}

const FORMATS: [(PathInfoJsonFormat, &str); 3] = [
    (PathInfoJsonFormat::V1, "json-1"),
    (PathInfoJsonFormat::V2, "json-2"),
    (PathInfoJsonFormat::V3, "json-3"),
];

#[test]
fn hash_vectors_parse() {
    let asdf256 = Hash::compute(HashAlgo::Sha256, b"asdf");
    let asdf_blake3 = Hash::compute(HashAlgo::Blake3, b"asdf");
    // Upstream's `sha512` vector really holds the SHA-256 hash (see libutil-tests/hash.cc).
    for (file, expected) in [
        ("sha256.json", asdf256),
        ("sha512.json", asdf256),
        ("blake3.json", asdf_blake3),
    ] {
        let value = read_json(&format!("libutil-tests/data/hash/{file}"));
        let text = value.as_str().expect("hash vector is a json string");
        let hash = Hash::parse_any(text, None).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(hash, expected, "{file}");
        assert_eq!(hash.to_sri(), text, "{file}");
        assert_eq!(
            serde_json::from_value::<Hash>(value.clone()).unwrap(),
            expected
        );
    }
}

#[test]
fn path_info_vectors() {
    let full = full_info(true);
    assert_eq!(
        full.path.base_name(),
        "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo"
    );
    for (format, dir) in FORMATS {
        for (stem, expected, impure) in [
            ("empty_pure", empty_info(), false),
            ("empty_impure", empty_info(), true),
            ("pure", UnkeyedPathInfo::from(&full_info(false)), false),
            ("impure", UnkeyedPathInfo::from(&full_info(true)), true),
        ] {
            let file = format!("libstore-tests/data/path-info/{dir}/{stem}.json");
            let value = read_json(&file);
            let parsed = PathInfoJson::from_value(&value, &store())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(parsed.format, format, "{file}");
            assert_eq!(parsed.store_dir, store(), "{file}");
            assert_eq!(parsed.path, None, "{file}");
            assert_eq!(parsed.info, expected, "{file}");
            let written = PathInfoJson {
                format,
                store_dir: store(),
                path: None,
                info: expected.clone(),
                closure_size: None,
            }
            .to_value(impure);
            assert_eq!(written, value, "{file}");
            if stem.ends_with("pure") && !stem.starts_with("empty") {
                let info = parsed.into_path_info(Some(full.path.clone())).unwrap();
                assert!(info.is_content_addressed(&store()), "{file}");
            }
        }
    }
    let noversion = read_json("libstore-tests/data/path-info/json-1/pure_noversion.json");
    let parsed = PathInfoJson::from_value(&noversion, &store()).unwrap();
    assert_eq!(parsed.format, PathInfoJsonFormat::V1);
    assert_eq!(parsed.info, UnkeyedPathInfo::from(&full_info(false)));
    // Without a default store directory of its own, version 1 takes the caller's.
    let other = StoreDir::new("/other/store").unwrap();
    assert!(PathInfoJson::from_value(&noversion, &other).is_err());
}

fn expected_narinfo(impure: bool) -> NarInfo {
    let mut n = NarInfo::from_path_info(full_info(impure), String::new());
    if impure {
        n.url = "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz".into();
        n.compression = Some("xz".into());
        n.file_hash = Some(vector_nar_hash());
        n.file_size = Some(4029176);
    }
    n
}

#[test]
fn nar_info_vectors() {
    let path = full_info(true).path;
    for (format, dir) in FORMATS {
        for (stem, impure) in [("pure", false), ("impure", true)] {
            let file = format!("libstore-tests/data/nar-info/{dir}/{stem}.json");
            let value = read_json(&file);
            let expected = expected_narinfo(impure);
            let parsed =
                NarInfoJson::from_value(&value, &store()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(parsed.path_info.format, format, "{file}");
            let narinfo = parsed
                .into_narinfo(Some(path.clone()))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(narinfo, expected, "{file}");
            let written =
                NarInfoJson::from_narinfo(&expected, &store(), format, false).to_value(impure);
            assert_eq!(written, value, "{file}");
            if impure {
                // The JSON and text forms carry the same narinfo.
                let text = narinfo.to_text(&store()).unwrap();
                let back = NarInfo::parse_str(&store(), &text).unwrap();
                let mut text_expected = expected.clone();
                text_expected.info.registration_time = 0;
                text_expected.info.ultimate = false;
                assert_eq!(back, text_expected, "{file}");
            }
        }
    }
    let noversion = read_json("libstore-tests/data/nar-info/json-1/pure_noversion.json");
    let parsed = NarInfoJson::from_value(&noversion, &store()).unwrap();
    assert_eq!(
        parsed.into_narinfo(Some(path)).unwrap(),
        expected_narinfo(false)
    );
}

/// The key current Nix's realisation tests sign with.
const REALISATION_TEST_KEY: &str = "test-key:tU7tTvLcScf8pmz/eTV0BEtLmRsPpZfKaRcd0nCN+pysBZPHSeg61/u2oc7mIOewfuAY1V1BiX32homTaDJ2Jw==";

fn realisation_key() -> DrvPathOutput {
    DrvPathOutput {
        drv_path: base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv"),
        output_name: "foo".into(),
    }
}

fn unkeyed_simple() -> UnkeyedRealisation {
    UnkeyedRealisation {
        out_path: base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"),
        signatures: BTreeSet::new(),
    }
}

fn unkeyed_with_signature() -> UnkeyedRealisation {
    UnkeyedRealisation {
        out_path: base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv"),
        signatures: BTreeSet::from([zero_sig("asdf")]),
    }
}

#[test]
fn realisation_vectors() {
    let dir = "libstore-tests/data/realisation";
    for (stem, value) in [
        ("unkeyed-simple", unkeyed_simple()),
        ("unkeyed-with-signature", unkeyed_with_signature()),
    ] {
        let json = read_json(&format!("{dir}/{stem}.json"));
        assert_eq!(
            UnkeyedRealisation::from_value(&json).unwrap(),
            value,
            "{stem}"
        );
        assert_eq!(value.to_value(), json, "{stem}");
    }

    let secret = SecretKey::parse(REALISATION_TEST_KEY).unwrap();
    let keys = PublicKeys::parse_entries([secret.public_key().to_string().as_str()]).unwrap();
    let wrong = PublicKeys::parse_entries([SecretKey::from_seed("test-key", &[3; 32])
        .unwrap()
        .public_key()
        .to_string()
        .as_str()])
    .unwrap();
    for (stem, value) in [
        ("simple", unkeyed_simple()),
        ("with-signature", unkeyed_with_signature()),
    ] {
        let expected = PathRealisation {
            key: realisation_key(),
            value,
        };
        let json = read_json(&format!("{dir}/{stem}.json"));
        assert_eq!(
            PathRealisation::from_value(&json).unwrap(),
            expected,
            "{stem}"
        );
        assert_eq!(expected.to_value(), json, "{stem}");

        let fingerprint = read_text(&format!("{dir}/{stem}-fingerprint.txt"));
        assert_eq!(expected.fingerprint(), fingerprint, "{stem}");

        let sig_json = read_json(&format!("{dir}/{stem}-sig.json"));
        let sig = secret.sign_detached(&fingerprint);
        assert_eq!(sig.to_json_value(), sig_json, "{stem}");
        let file_sig = Signature::from_json_value(&sig_json).unwrap();
        assert!(keys.verify_signature(&fingerprint, &file_sig), "{stem}");
        assert!(!wrong.verify_signature(&fingerprint, &file_sig), "{stem}");

        let mut signed = expected.value.clone();
        signed.sign(&expected.key, &secret);
        assert_eq!(signed.check_signatures(&expected.key, &keys), 1, "{stem}");
        signed.out_path = base("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar");
        assert_eq!(signed.check_signatures(&expected.key, &keys), 0, "{stem}");
    }
    // The old string form of signatures still reads.
    let unstructured = read_json(&format!("{dir}/with-signature-unstructured.json"));
    assert_eq!(
        PathRealisation::from_value(&unstructured).unwrap(),
        PathRealisation {
            key: realisation_key(),
            value: unkeyed_with_signature(),
        }
    );
}

/// Runs a Nix command in an isolated environment; returns stdout, panics with stderr.
fn run_nix(tmp: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("NIX_CONF_DIR", tmp.join("etc"))
        .env("HOME", tmp.join("home"))
        .env("XDG_CACHE_HOME", tmp.join("home/cache"))
        .env("XDG_CONFIG_HOME", tmp.join("home/config"))
        .env_remove("NIX_REMOTE")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Like [`run_nix`] but returns whether it succeeded and its stderr.
fn try_nix(tmp: &Path, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .env("NIX_CONF_DIR", tmp.join("etc"))
        .env("HOME", tmp.join("home"))
        .env("XDG_CACHE_HOME", tmp.join("home/cache"))
        .env("XDG_CONFIG_HOME", tmp.join("home/config"))
        .env_remove("NIX_REMOTE")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cross_check_with_nix_cli() {
    const NIX_STORE: &str = "/usr/bin/nix-store";
    const NIX: &str = "/usr/bin/nix";
    if !Path::new(NIX_STORE).exists() || !Path::new(NIX).exists() {
        eprintln!("skipping cross_check_with_nix_cli: {NIX_STORE} or {NIX} is not installed");
        return;
    }
    let xp = "--extra-experimental-features";
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for d in ["etc", "home", "root"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    let root = t.join("root");
    let root_s = root.to_str().unwrap();
    let file = t.join("f.txt");
    std::fs::write(&file, "hello\n").unwrap();
    let added = run_nix(
        t,
        NIX_STORE,
        &["--store", root_s, "--add", file.to_str().unwrap()],
    );
    let full_path = added.trim();
    assert_eq!(
        full_path,
        "/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"
    );

    // A ward key signs through Nix; ward verifies what Nix stored.
    let ward_key = SecretKey::generate("ward-test-1").unwrap();
    let ward_key_file = t.join("ward.sec");
    std::fs::write(&ward_key_file, ward_key.to_secret_string()).unwrap();
    let key_file = ward_key_file.to_str().unwrap();
    run_nix(
        t,
        NIX,
        &[
            xp,
            "nix-command",
            "store",
            "sign",
            "--store",
            root_s,
            "--key-file",
            key_file,
            full_path,
        ],
    );
    let listing = run_nix(
        t,
        NIX,
        &[
            xp,
            "nix-command",
            "path-info",
            "--json",
            "--store",
            root_s,
            full_path,
        ],
    );
    let listing = listing.trim_end();
    let objects: Vec<Value> = serde_json::from_str(listing).unwrap();
    let info = PathInfoJson::from_value(&objects[0], &store())
        .unwrap()
        .into_path_info(None)
        .unwrap();
    let ward_keys =
        PublicKeys::parse_entries([ward_key.public_key().to_string().as_str()]).unwrap();
    assert_eq!(info.check_signatures(&store(), &ward_keys), 1);
    assert!(info.is_content_addressed(&store()));
    // Ward signs the same fingerprint to the same (deterministic) signature.
    let fingerprint = info.fingerprint(&store()).unwrap();
    assert!(info.sigs.contains(&ward_key.sign(&fingerprint)));
    // And prints the same JSON bytes as Nix 2.8.
    assert_eq!(
        ward_proto::path_info::nix28_json_list([info.to_nix28_json(&store(), None)]),
        listing
    );

    // A Nix-made key reads in ward and yields the same public key and signatures.
    let (nix_sec, nix_pub) = (t.join("nix.sec"), t.join("nix.pub"));
    run_nix(
        t,
        NIX_STORE,
        &[
            "--generate-binary-cache-key",
            "nix-test-1",
            nix_sec.to_str().unwrap(),
            nix_pub.to_str().unwrap(),
        ],
    );
    let nix_secret = SecretKey::parse(&std::fs::read_to_string(&nix_sec).unwrap()).unwrap();
    let nix_public = PublicKey::parse(&std::fs::read_to_string(&nix_pub).unwrap()).unwrap();
    assert_eq!(nix_secret.public_key(), nix_public);
    run_nix(
        t,
        NIX,
        &[
            xp,
            "nix-command",
            "store",
            "sign",
            "--store",
            root_s,
            "--key-file",
            nix_sec.to_str().unwrap(),
            full_path,
        ],
    );
    let listing = run_nix(
        t,
        NIX,
        &[
            xp,
            "nix-command",
            "path-info",
            "--json",
            "--store",
            root_s,
            full_path,
        ],
    );
    let objects: Vec<Value> = serde_json::from_str(&listing).unwrap();
    let signed = PathInfoJson::from_value(&objects[0], &store())
        .unwrap()
        .into_path_info(None)
        .unwrap();
    assert!(signed.sigs.contains(&nix_secret.sign(&fingerprint)));

    // Nix writes a narinfo; ward reads it and prints the same bytes.
    let cache = t.join("cache");
    let cache_url = format!("file://{}", cache.display());
    run_nix(
        t,
        NIX,
        &[
            xp,
            "nix-command",
            "copy",
            "--from",
            root_s,
            "--to",
            &cache_url,
            full_path,
        ],
    );
    let narinfo_file = cache.join("6h9lcbx523532ax1c5g2351w9bm8ykhy.narinfo");
    let narinfo_bytes = std::fs::read(&narinfo_file).unwrap();
    let narinfo = NarInfo::parse(&store(), &narinfo_bytes).unwrap();
    assert_eq!(narinfo.to_text(&store()).unwrap().as_bytes(), narinfo_bytes);
    assert_eq!(narinfo.info.check_signatures(&store(), &ward_keys), 1);

    // Nix accepts a non-content-addressed narinfo only with a valid signature; check that
    // it accepts ward's and refuses one by an untrusted key.
    let mut unsigned = narinfo.clone();
    unsigned.info.ca = None;
    unsigned.info.sigs.clear();
    let stranger = SecretKey::generate("ward-test-1").unwrap();
    for (signer, should_work) in [(&stranger, false), (&ward_key, true)] {
        let mut n = unsigned.clone();
        n.info.sign(&store(), signer).unwrap();
        let cache2 = t.join(format!("cache-{should_work}"));
        std::fs::create_dir_all(cache2.join("nar")).unwrap();
        std::fs::copy(cache.join("nix-cache-info"), cache2.join("nix-cache-info")).unwrap();
        std::fs::copy(cache.join(&n.url), cache2.join(&n.url)).unwrap();
        std::fs::write(
            cache2.join("6h9lcbx523532ax1c5g2351w9bm8ykhy.narinfo"),
            n.to_text(&store()).unwrap(),
        )
        .unwrap();
        let dest = t.join(format!("dest-{should_work}"));
        let trusted = ward_key.public_key().to_string();
        let (ok, stderr) = try_nix(
            t,
            NIX,
            &[
                xp,
                "nix-command",
                "copy",
                "--option",
                "trusted-public-keys",
                &trusted,
                "--from",
                &format!("file://{}", cache2.display()),
                "--to",
                dest.to_str().unwrap(),
                full_path,
            ],
        );
        assert_eq!(ok, should_work, "nix copy with signer {signer:?}: {stderr}");
        if !should_work {
            assert!(stderr.contains("signature"), "{stderr}");
        }
    }
}
