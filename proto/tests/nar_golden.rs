//! NAR against outside references: Nix's golden NAR files, the protocol-facts test vectors
//! built on disk, and (when installed) the real `nix-store --dump` / `--restore`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use ward_proto::nar::{self, NarError, ParseOptions};

/// The shared data folder: `$WARD_SHARED_DIR`, else `shared/` beside the checkout (two or three
/// levels above this crate, to work from the main checkout and from worktrees).
fn shared_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = std::env::var_os("WARD_SHARED_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            manifest.join("../../shared"),
            manifest.join("../../../shared"),
        ])
        .collect();
    candidates
        .iter()
        .find(|dir| dir.join("nix-test-data").is_dir())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "shared test data not found: none of {candidates:?} holds nix-test-data/; \
                 set WARD_SHARED_DIR to the folder that does"
            )
        })
}

fn golden_nars_dir() -> PathBuf {
    let dir = shared_dir().join("nix-test-data/libutil-tests/data/nars");
    assert!(
        dir.is_dir(),
        "golden nar folder {} is missing",
        dir.display()
    );
    dir
}

fn strict() -> ParseOptions {
    ParseOptions {
        require_eof: true,
        ..ParseOptions::default()
    }
}

/// What each known golden file must produce; `None` = accepted.
fn expected_outcome(name: &str) -> Option<fn(&NarError) -> bool> {
    Some(match name {
        "regular-one-byte-zero-padding.nar" => return None,
        "regular-one-byte-non-zero-padding.nar" => |e| matches!(e, NarError::NonZeroPadding { .. }),
        "regular-truncated-large-contents.nar" | "regular-truncated-padding.nar" => {
            |e| matches!(e, NarError::Truncated { .. })
        }
        "invalid-tag-instead-of-contents.nar" => {
            |e| matches!(e, NarError::UnexpectedTag { found, .. } if found == "AAAAAAAA")
        }
        "executable-after-contents.nar" => {
            |e| matches!(e, NarError::ExecutableAfterContents { path, .. } if path == "/foo")
        }
        "name-after-node.nar" => |e| {
            matches!(e, NarError::UnexpectedTag { expected, found, .. }
                    if expected.contains("name") && found == "node")
        },
        "dot.nar" | "dotdot.nar" | "empty.nar" | "slash.nar" | "nul-character.nar" => {
            |e| matches!(e, NarError::InvalidEntryName { .. })
        }
        // A file added to the folder later: it must be refused somehow.
        _ => |_| true,
    })
}

#[test]
fn golden_nars_are_accepted_or_refused_as_nix_does() {
    let dir = golden_nars_dir();
    let mut seen = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some(OsStr::new("nar")) {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = fs::read(&path).unwrap();
        let result = nar::hash_and_size_with(&bytes[..], strict());
        match (expected_outcome(&name), result) {
            (None, Ok((digest, size))) => {
                assert_eq!(size, bytes.len() as u64, "{name}");
                assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)), "{name}");
            }
            (None, Err(e)) => panic!("{name} must be accepted, got: {e}"),
            (Some(_), Ok(_)) => panic!("{name} must be refused, but was accepted"),
            (Some(check), Err(e)) => {
                assert!(check(&e), "{name} refused with the wrong error: {e}");
                println!("{name}: {e}");
            }
        }
        // Copying and unpacking refuse the same files.
        let copied = nar::copy_nar_with(&bytes[..], Vec::new(), strict());
        assert_eq!(
            copied.is_ok(),
            expected_outcome(&name).is_none(),
            "copy_nar on {name}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let unpacked = nar::unpack_with(&bytes[..], &tmp.path().join("out"), strict());
        assert_eq!(
            unpacked.is_ok(),
            expected_outcome(&name).is_none(),
            "unpack on {name}"
        );
        seen.push(name);
    }
    seen.sort();
    for required in [
        "dot.nar",
        "dotdot.nar",
        "empty.nar",
        "executable-after-contents.nar",
        "invalid-tag-instead-of-contents.nar",
        "name-after-node.nar",
        "nul-character.nar",
        "regular-one-byte-non-zero-padding.nar",
        "regular-one-byte-zero-padding.nar",
        "regular-truncated-large-contents.nar",
        "regular-truncated-padding.nar",
        "slash.nar",
    ] {
        assert!(
            seen.iter().any(|n| n == required),
            "golden file {required} missing from {}",
            dir.display()
        );
    }
}

/// Builds TV4 of the protocol facts: a.txt = "hello\n", link -> a.txt, executable run.
fn build_tv4(dir: &Path) {
    fs::create_dir(dir).unwrap();
    fs::write(dir.join("a.txt"), b"hello\n").unwrap();
    symlink("a.txt", dir.join("link")).unwrap();
    fs::write(dir.join("run"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
}

fn dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let size = nar::dump_path(path, &mut out).unwrap();
    assert_eq!(size, out.len() as u64);
    out
}

#[test]
fn test_vectors_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let hello = tmp.path().join("f.txt");
    fs::write(&hello, b"hello\n").unwrap();
    let bytes = dump(&hello);
    assert_eq!(bytes.len(), 120);
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
    );

    let tv4 = tmp.path().join("d");
    build_tv4(&tv4);
    let bytes = dump(&tv4);
    assert_eq!(bytes.len(), 712);
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        "64032129cd88eddd37d39d745f95c3eac92d3bb3c56c0c922218224d5236c764"
    );
    let (digest, size) = nar::hash_and_size(&bytes[..]).unwrap();
    assert_eq!(
        (hex::encode(digest), size),
        (hex::encode(Sha256::digest(&bytes)), 712)
    );

    // Unpacking and dumping again gives the same bytes.
    let copy = tmp.path().join("copy");
    nar::unpack(&bytes[..], &copy).unwrap();
    assert_eq!(dump(&copy), bytes);
}

/// A tree with the awkward cases: nesting, empty file and directory, names that sort
/// differently as signed and unsigned bytes, non-UTF-8 names, a file spanning several copy
/// chunks, an executable with odd group/other bits, dangling and absolute symlinks.
fn build_awkward_tree(dir: &Path) {
    build_tv4(dir);
    let sub = dir.join("sub dir");
    fs::create_dir_all(sub.join("deeper/still")).unwrap();
    fs::create_dir(dir.join("empty-dir")).unwrap();
    fs::write(dir.join("empty-file"), b"").unwrap();
    fs::write(dir.join(OsStr::from_bytes(b"\xff\xfe-not-utf8")), b"bytes").unwrap();
    fs::write(dir.join("UPPER"), b"sorts before lower").unwrap();
    fs::write(dir.join("\u{e9}t\u{e9}"), b"utf-8 name").unwrap();
    let big: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(sub.join("big.bin"), &big).unwrap();
    fs::write(sub.join("deeper/still/x"), b"x").unwrap();
    fs::set_permissions(
        sub.join("deeper/still/x"),
        fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    fs::write(sub.join("group-exec-only"), b"no").unwrap();
    fs::set_permissions(
        sub.join("group-exec-only"),
        fs::Permissions::from_mode(0o655),
    )
    .unwrap();
    symlink("../nowhere/at/all", sub.join("dangling")).unwrap();
    symlink("/etc/passwd", sub.join("absolute")).unwrap();
}

fn nix_store() -> Option<PathBuf> {
    let found = [
        "/usr/bin/nix-store",
        "/nix/var/nix/profiles/default/bin/nix-store",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if found.is_none() {
        println!(
            "SKIPPED: nix-store is not installed; the cross-check against real Nix did not run"
        );
    }
    found
}

#[test]
fn matches_real_nix_store_dump_and_restore() {
    let Some(nix_store) = nix_store() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    build_awkward_tree(&tree);

    let output = Command::new(&nix_store)
        .arg("--dump")
        .arg(&tree)
        .stderr(Stdio::inherit())
        .output()
        .expect("running nix-store --dump");
    assert!(
        output.status.success(),
        "nix-store --dump failed: {:?}",
        output.status
    );
    let ours = dump(&tree);
    assert_eq!(
        ours.len(),
        output.stdout.len(),
        "nar size differs from nix-store --dump"
    );
    assert!(
        ours == output.stdout,
        "nar bytes differ from nix-store --dump"
    );
    nar::hash_and_size_with(&ours[..], strict()).expect("our reader accepts nix's dump");

    // Nix restores what we unpack identically, and the other way round.
    let ours_unpacked = tmp.path().join("ours");
    nar::unpack(&ours[..], &ours_unpacked).unwrap();
    let nix_restored = tmp.path().join("nix");
    let mut child = Command::new(&nix_store)
        .arg("--restore")
        .arg(&nix_restored)
        .stdin(Stdio::piped())
        .spawn()
        .expect("running nix-store --restore");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &ours).unwrap();
    drop(child.stdin.take());
    assert!(
        child.wait().unwrap().success(),
        "nix-store --restore failed"
    );
    assert!(
        dump(&nix_restored) == ours,
        "nix's restore of our nar dumps differently"
    );
    assert!(dump(&ours_unpacked) == ours, "our unpack dumps differently");
}
