//! Nix's own derivation test data (`libstore-tests/data/derivation`) and derivations written by
//! the real Nix 2.8 `nix-instantiate`, run through ward's parser, printer and hash-modulo.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use ward_proto::derivation::hash_modulo::{hash_derivation_modulo, modulo_aterm};
use ward_proto::derivation::json::output_from_json;
use ward_proto::derivation::json::output_to_json;
use ward_proto::derivation::{
    name_from_drv_path, Derivation, DerivationError, DerivationOutput, DrvHashModulo,
    HashModuloCache, HashModuloError,
};
use ward_proto::store_path::{StoreDir, StorePath};

/// The shared copy of Nix's test data; panics when none is found, so the suite never passes
/// by testing nothing.
fn nix_test_data() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(shared) = std::env::var_os("WARD_SHARED_DIR") {
        candidates.push(PathBuf::from(shared).join("nix-test-data"));
    }
    candidates.push(manifest.join("../../shared/nix-test-data"));
    candidates.push(manifest.join("../../../shared/nix-test-data"));
    candidates
        .iter()
        .find(|c| c.is_dir())
        .cloned()
        .unwrap_or_else(|| {
            panic!("nix-test-data not found (set WARD_SHARED_DIR); looked in {candidates:#?}")
        })
}

fn derivation_dir() -> PathBuf {
    nix_test_data().join("libstore-tests/data/derivation")
}

fn store() -> StoreDir {
    StoreDir::default()
}

/// Every `.drv` file under `dir`, sorted, walking with an explicit stack.
fn drv_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "drv") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The file's bytes. Nix's repository keeps some `.drv` files as git symlinks into
/// `tests/functional`; a copy made without following them holds the link text instead. Those
/// are followed when the target exists, and reported as `None` when it does not.
fn read_drv(path: &Path) -> Option<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    if bytes.starts_with(b"../") && !bytes.contains(&b'(') {
        let target = path
            .parent()
            .unwrap()
            .join(String::from_utf8_lossy(&bytes).trim());
        return match fs::read(&target) {
            Ok(b) => Some(b),
            Err(_) => {
                println!(
                    "skipping {}: it is a git symlink to {}, which this copy of the data lacks",
                    path.display(),
                    target.display()
                );
                None
            }
        };
    }
    Some(bytes)
}

fn read_json(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

/// Files Nix's data holds in a non-canonical order (anonymised hashes reorder the inputs);
/// they parse, and print sorted.
const NON_CANONICAL: &[&str] = &["hello.drv", "firefox.drv"];

/// Our JSON and Nix's, with structured attributes compared as JSON values (Nix moves the
/// `__json` env var to a `structuredAttrs` object).
fn assert_json_matches(drv: &Derivation, expected: &Value, file: &Path) {
    let original = expected;
    let mut ours = drv.to_json().unwrap();
    let mut expected = expected.clone();
    if let Some(attrs) = expected.as_object_mut().unwrap().remove("structuredAttrs") {
        let env = ours["env"].as_object_mut().unwrap();
        let text = env
            .remove("__json")
            .unwrap_or_else(|| panic!("{}: no __json env var", file.display()));
        let parsed: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(parsed, attrs, "{}: structured attrs differ", file.display());
    }
    assert_eq!(ours, expected, "{}: JSON differs", file.display());
    let mut back = Derivation::from_json(original).unwrap();
    let mut drv = drv.clone();
    if original.get("structuredAttrs").is_some() {
        // Nix and serde_json may serialise the attributes differently; compare as JSON.
        let as_json = |d: &mut Derivation| -> Value {
            let text = d.env.remove(b"__json".as_slice()).unwrap();
            serde_json::from_slice(&text).unwrap()
        };
        assert_eq!(as_json(&mut back), as_json(&mut drv), "{}", file.display());
    }
    assert_eq!(back, drv, "{}: from_json differs", file.display());
}

#[test]
fn every_drv_parses_prints_back_and_matches_its_json() {
    let s = store();
    let dir = derivation_dir();
    let mut checked = 0;
    let mut with_json = 0;
    for file in drv_files(&dir) {
        let file_name = file.file_name().unwrap().to_str().unwrap().to_owned();
        let stem = file_name.strip_suffix(".drv").unwrap();
        if file_name.starts_with("bad-")
            || file_name == "dyn-dep-derivation.drv"
            || stem.ends_with("-modulo")
        {
            continue; // Refusals and the hash-modulo texts have their own tests.
        }
        let Some(bytes) = read_drv(&file) else {
            continue;
        };
        let json = read_json(&file.with_extension("json"));
        let name = json
            .as_ref()
            .and_then(|j| j["name"].as_str())
            .unwrap_or(stem)
            .to_owned();
        let drv = Derivation::parse(&bytes, &s, &name)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let printed = drv.to_aterm(&s).unwrap();
        if NON_CANONICAL.contains(&file_name.as_str()) && printed != bytes {
            let again = Derivation::parse(&printed, &s, &name).unwrap();
            assert_eq!(again, drv, "{}", file.display());
            assert_eq!(again.to_aterm(&s).unwrap(), printed, "{}", file.display());
            assert_eq!(printed.len(), bytes.len(), "{}", file.display());
        } else {
            assert!(
                printed == bytes,
                "{}: printed text differs:\n{}\n{}",
                file.display(),
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&printed)
            );
        }
        if let Some(json) = json {
            assert_json_matches(&drv, &json, &file);
            with_json += 1;
        }
        checked += 1;
    }
    println!("checked {checked} derivations, {with_json} against JSON");
    assert!(
        checked >= 9,
        "only {checked} derivations found in {}",
        dir.display()
    );
    assert!(with_json >= 7, "only {with_json} derivations had JSON");
}

#[test]
fn bad_and_unsupported_drvs_are_refused() {
    let s = store();
    let dir = derivation_dir();
    let parse = |file: &str, name: &str| {
        let bytes = fs::read(dir.join(file)).unwrap();
        Derivation::parse(&bytes, &s, name).unwrap_err()
    };
    assert_eq!(
        parse("bad-version.drv", "whatever"),
        DerivationError::UnknownVersion {
            version: "invalid-version".into()
        }
    );
    assert!(matches!(
        parse("bad-old-version-dyn-deps.drv", "dyn-dep-derivation"),
        DerivationError::Syntax { .. }
    ));
    let err = parse("bad-ca-fixed-path.drv", "fixed");
    assert!(
        matches!(err.innermost(), DerivationError::BadOutput { reason, .. }
            if reason.contains("does not match its content address")),
        "{err}"
    );
    assert_eq!(
        parse("dyn-dep-derivation.drv", "dyn-dep-derivation"),
        DerivationError::DynamicDerivationsUnsupported
    );
    let mut bad = 0;
    for file in drv_files(&dir) {
        let file_name = file.file_name().unwrap().to_str().unwrap();
        let stem = file_name.strip_suffix(".drv").unwrap();
        if file_name.starts_with("bad-") || stem.ends_with("-modulo") {
            let bytes = fs::read(&file).unwrap();
            let err = Derivation::parse(&bytes, &s, "x").unwrap_err();
            println!("{file_name}: {err}");
            bad += 1;
        }
    }
    assert!(
        bad >= 7,
        "expected the bad-* and *-modulo files, found {bad}"
    );
}

#[test]
fn output_json_files_round_trip() {
    let dir = derivation_dir();
    let mut seen = 0;
    for kind in [
        "inputAddressed",
        "caFixedFlat",
        "caFixedNAR",
        "caFixedText",
        "caFloating",
        "deferred",
        "impure",
    ] {
        let file = dir.join(format!("output-{kind}.json"));
        let value = read_json(&file).unwrap_or_else(|| panic!("{} missing", file.display()));
        let output = output_from_json(&value).unwrap();
        assert_eq!(output_to_json(&output), value, "{kind}");
        seen += 1;
    }
    assert_eq!(seen, 7);
}

/// A lookup over parsed derivations keyed by their computed `.drv` paths.
struct Drvs(BTreeMap<StorePath, Derivation>);

impl Drvs {
    fn get(&self, path: &StorePath) -> Result<Derivation, io::Error> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no derivation {path}")))
    }
}

#[test]
fn hash_modulo_folder() {
    let s = store();
    let dir = derivation_dir().join("hash-modulo");
    let stems = [
        "source-first",
        "source-second",
        "intermediate-first",
        "intermediate-second",
        "parent-split",
        "parent-joined",
    ];
    let mut by_stem = BTreeMap::new();
    let mut drvs = BTreeMap::new();
    for stem in stems {
        let json = read_json(&dir.join(format!("{stem}.json"))).unwrap();
        let name = json["name"].as_str().unwrap();
        let bytes = fs::read(dir.join(format!("{stem}.drv"))).unwrap();
        let drv = Derivation::parse(&bytes, &s, name).unwrap();
        assert_eq!(drv.to_aterm(&s).unwrap(), bytes, "{stem}");
        assert_eq!(drv.to_json().unwrap(), json, "{stem}");
        drvs.insert(drv.drv_path(&s).unwrap(), drv.clone());
        by_stem.insert(stem, drv);
    }
    // Every input derivation named in the files is one of ours: the .drv paths we compute are
    // the ones Nix wrote.
    for drv in by_stem.values() {
        for input in drv.input_drvs.keys() {
            assert!(drvs.contains_key(input), "unknown input {input}");
        }
    }
    let drvs = Drvs(drvs);
    let lookup = |p: &StorePath| drvs.get(p);
    let mut cache = HashModuloCache::new();

    for stem in ["source-first", "source-second"] {
        let drv = &by_stem[stem];
        assert!(matches!(
            hash_derivation_modulo(drv, &s, true, &lookup, &mut cache).unwrap(),
            DrvHashModulo::FixedOutput(_)
        ));
        assert_eq!(
            modulo_aterm(drv, &s, true, &lookup, &mut cache).unwrap(),
            None
        );
        drv.check_outputs(&s, &lookup, &mut cache).unwrap();
    }
    assert_eq!(
        hash_derivation_modulo(&by_stem["source-first"], &s, false, &lookup, &mut cache).unwrap(),
        hash_derivation_modulo(&by_stem["source-second"], &s, false, &lookup, &mut cache).unwrap(),
    );

    for stem in [
        "intermediate-first",
        "intermediate-second",
        "parent-split",
        "parent-joined",
    ] {
        let expected = fs::read(dir.join(format!("{stem}-modulo.drv"))).unwrap();
        let text = modulo_aterm(&by_stem[stem], &s, true, &lookup, &mut cache)
            .unwrap()
            .unwrap();
        assert!(
            text == expected,
            "{stem}: modulo text differs:\n{}\n{}",
            String::from_utf8_lossy(&expected),
            String::from_utf8_lossy(&text)
        );
    }
    // The parents' outputs are deferred: nothing to check.
    for stem in ["parent-split", "parent-joined"] {
        by_stem[stem]
            .check_outputs(&s, &lookup, &mut cache)
            .unwrap();
    }
    let hash = |stem: &str| {
        hash_derivation_modulo(
            &by_stem[stem],
            &s,
            true,
            &lookup,
            &mut HashModuloCache::new(),
        )
        .unwrap()
    };
    assert_eq!(hash("parent-split"), hash("parent-joined"));
    assert_eq!(hash("intermediate-first"), hash("intermediate-second"));

    // Current Nix's fixture filled in the intermediates' output paths while their env had no
    // `out`/`dev` variables yet (its `fillInOutputPaths` hashes first and adds them after), so
    // the paths are the `output:<o>` paths of the masked hash *without* those env entries.
    // Nix 2.8 always hashes with them present (the evaluator sets them to ""), so under 2.8's
    // registration check, which ward follows, these files have wrong output paths.
    for stem in ["intermediate-first", "intermediate-second"] {
        let nix = &by_stem[stem];
        let mut as_filled = nix.clone();
        for output in as_filled.outputs.values_mut() {
            *output = DerivationOutput::Deferred;
        }
        as_filled.env.clear();
        let DrvHashModulo::Regular(hash) =
            hash_derivation_modulo(&as_filled, &s, true, &lookup, &mut cache).unwrap()
        else {
            panic!("{stem}: expected a regular hash");
        };
        for (name, output) in &nix.outputs {
            let path = s.make_output_path(name, &hash, &nix.name).unwrap();
            assert_eq!(
                output,
                &DerivationOutput::InputAddressed(path),
                "{stem} {name}"
            );
        }
        assert!(
            matches!(
                nix.check_outputs(&s, &lookup, &mut cache),
                Err(HashModuloError::Derivation(
                    DerivationError::WrongOutputPath { .. }
                ))
            ),
            "{stem}"
        );
        // Filled in the 2.8 way (env vars present while hashing), the paths differ and pass.
        let mut fresh = as_filled.clone();
        fresh.compute_output_paths(&s, &lookup, &mut cache).unwrap();
        assert_ne!(fresh.outputs, nix.outputs, "{stem}");
        fresh.check_outputs(&s, &lookup, &mut cache).unwrap();
    }
}

/// Derivations for `nix-instantiate`: TV5 (`hello`), TV6 (`fo`), the two-output `dep` (TV7's
/// recipe), and some that stress escaping, raw bytes, structured attrs and other fixed kinds.
const NIX_EXPR: &str = r#"
rec {
  hello = derivation { name = "hello"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo hi > $out" ]; };
  fo = derivation { name = "fo"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo hi > $out" ]; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh";
    outputs = [ "out" "dev" ]; args = [ "-c" "cat $src > $out; echo \"$hello $fo\"\t> $dev" ];
    src = ./f.txt; inherit hello fo; };
  recursiveSha1 = derivation { name = "rec-sha1"; system = "x86_64-linux"; builder = "/bin/sh";
    outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33"; };
  recursiveSha256 = derivation { name = "src"; system = "x86_64-linux"; builder = "/bin/sh";
    outputHashMode = "recursive";
    outputHash = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="; };
  weird = derivation {
    name = "weird-1.0"; system = "x86_64-linux"; builder = "${dep.dev}/bin/b\\\"x";
    outputs = [ "out" "bin" "lib" ];
    args = [ "" "q\"uote" "back\\slash" "nl\nret\rtab\t" "${recursiveSha1}" "${recursiveSha256}/x" ];
    latin1 = builtins.readFile ./latin1.txt;
    "env key with spaces" = "a\tb";
    empty = "";
  };
  structured = derivation {
    name = "structured"; system = "x86_64-linux"; builder = "/bin/sh";
    __structuredAttrs = true; outputs = [ "out" "doc" ];
    list = [ 1 "two" { three = 3.5; } ]; text = "x\ny";
    dep = weird.lib;
  };
}
"#;

#[test]
fn real_nix_instantiate_agrees() {
    let version = Command::new("nix-instantiate").arg("--version").output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        println!("SKIPPED real_nix_instantiate_agrees: nix-instantiate is not installed");
        return;
    }
    let s = store();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("f.txt"), b"hello\n").unwrap();
    fs::write(tmp.path().join("latin1.txt"), b"caf\xe9 \xff").unwrap();
    fs::write(tmp.path().join("drvs.nix"), NIX_EXPR).unwrap();
    let chroot = tmp.path().join("store");

    let mut drvs = BTreeMap::new();
    let mut order = Vec::new();
    for attr in [
        "hello",
        "fo",
        "dep",
        "recursiveSha1",
        "recursiveSha256",
        "weird",
        "structured",
    ] {
        let out = Command::new("nix-instantiate")
            .arg("--store")
            .arg(&chroot)
            .arg(tmp.path().join("drvs.nix"))
            .args(["-A", attr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-instantiate -A {attr} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        let drv_path = s.parse_path(printed.trim()).unwrap();
        let file = chroot.join(printed.trim().trim_start_matches('/'));
        let bytes = fs::read(&file).unwrap();
        let name = name_from_drv_path(&drv_path).unwrap();
        let drv = Derivation::parse(&bytes, &s, name).unwrap_or_else(|e| panic!("{attr}: {e}"));
        assert!(
            drv.to_aterm(&s).unwrap() == bytes,
            "{attr}: printed text differs from Nix's"
        );
        assert_eq!(drv.drv_path(&s).unwrap(), drv_path, "{attr}");
        drvs.insert(drv_path.clone(), drv);
        order.push((attr, drv_path));
    }
    let by_attr: BTreeMap<&str, &StorePath> = order.iter().map(|(a, p)| (*a, p)).collect();
    assert_eq!(
        by_attr["hello"].to_string(),
        "76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv"
    );
    assert_eq!(
        by_attr["fo"].to_string(),
        "ihdj3vgimzx5wf73kjlm7l19d5r9bb8y-fo.drv"
    );
    let weird = &drvs[by_attr["weird"]];
    assert_eq!(weird.env_var("latin1"), Some(b"caf\xe9 \xff".as_slice()));
    assert!(weird.to_json().is_err(), "raw bytes cannot be JSON");
    assert!(drvs[by_attr["structured"]].env_var("__json").is_some());

    let drvs = Drvs(drvs);
    let lookup = |p: &StorePath| drvs.get(p);
    let mut cache = HashModuloCache::new();
    for (attr, path) in &order {
        let nix = &drvs.0[path];
        nix.check_outputs(&s, &lookup, &mut cache)
            .unwrap_or_else(|e| panic!("{attr}: {e}"));
        // Recompute every output path from a derivation with the paths removed.
        let mut fresh = nix.clone();
        let fixed = nix.derivation_type().unwrap().is_fixed();
        for (name, output) in fresh.outputs.iter_mut() {
            if !fixed {
                *output = DerivationOutput::Deferred;
            }
            fresh.env.remove(name.as_bytes());
        }
        fresh
            .compute_output_paths(&s, &lookup, &mut cache)
            .unwrap_or_else(|e| panic!("{attr}: {e}"));
        assert_eq!(&fresh, nix, "{attr}: computed outputs differ from Nix's");
    }
    let refs: BTreeSet<String> = drvs.0[by_attr["dep"]]
        .references()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(refs.contains("6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"));
}
