//! N rows: hostile NARs, sent by an untrusted client as content-addressed uploads (whose
//! path is computed from the bytes, so only the NAR's own validity is in question), and
//! hostile substitutes served from a local binary cache.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ward_e2e_tests::nar::{self, NarNode};
use ward_e2e_tests::wire::{PathInfo, WireError};

use crate::client::refused;
use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Lab, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, run| Attack {
        id,
        category: Category::N,
        attack,
        safe,
        store: if id == "N13" {
            StoreRule::MayAddValid
        } else {
            StoreRule::Unchanged
        },
        run,
        open: None,
    };
    vec![
        row(
            "N2",
            "NAR entries named ., .., x/y, empty, or with a NUL",
            "refused",
            n2_bad_names,
        ),
        row(
            "N3",
            "unsorted or duplicate entries, name after node, executable after contents, a bad tag",
            "refused",
            n3_bad_structure,
        ),
        row(
            "N4",
            "100,000-deep directory nesting",
            "refused at a depth limit; no crash",
            n4_deep,
        ),
        row(
            "N5",
            "length fields near 2^64, a 4 GiB name, followed by a stream of zeros",
            "refused at once; memory bounded",
            n5_huge_lengths,
        ),
        row(
            "N7",
            "truncated contents, non-zero padding, bytes after the root",
            "refused; no partial path valid",
            n7_truncated_and_padding,
        ),
        row(
            "N8",
            "a substitute NAR that does not match its narinfo's NarHash, with traversal entries",
            "verified before anything is visible or valid; nothing lands outside staging",
            n8_substitute_mismatch,
        ),
        row(
            "N10",
            "an untrusted client adds file:// and http://evil substituters; a trusted cache's \
             narinfo is a symlink out of it",
            "untrusted ones ignored; symlinks not followed",
            n10_substituters,
        ),
        row(
            "N11",
            "tarball with absolute members, .., absolute hard links, a write through a symlink",
            "everything stays under the destination or the unpack fails",
            n11_tarball,
        ),
        row(
            "N12",
            "builtin:fetchurl from an https server with a bad certificate, and an http \
             redirect to file://",
            "TLS fails; the scheme change is refused",
            n12_fetchurl_tls_and_redirect,
        ),
        row(
            "N13",
            "case-hack collisions (X and x~nix~case~hack~1)",
            "refused (ward never case-hacks on Linux, so the names are ordinary and distinct, \
             and a real duplicate is refused)",
            n13_case_hack,
        ),
    ]
}

fn test_data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/nix-test-data/libutil-tests/data/nars")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Uploads `nar` as a content-addressed path (untrusted); the daemon's refusal, checked to
/// leave the path invalid.
fn upload_refused(lab: &Lab, what: &str, nar: &[u8]) -> Result<String, String> {
    let (path, ca) = nar::source_path(&lab.store_dir(), "hostile", nar);
    let mut info = PathInfo::for_nar(&path, nar);
    info.ca = ca;
    let mut client = lab.wire();
    let message = refused(what, client.add_to_store_nar(&info, nar, 1 << 16, false))?;
    let mut again = lab.wire();
    ensure!(
        !again.is_valid_path(&path).map_err(|e| e.to_string())?,
        "{what}: {path} is valid"
    );
    Ok(message)
}

fn file(contents: &[u8]) -> NarNode {
    NarNode::File {
        contents: contents.to_vec(),
        executable: false,
    }
}

fn dir(entries: &[(&[u8], NarNode)]) -> NarNode {
    NarNode::Directory(
        entries
            .iter()
            .map(|(n, e)| (n.to_vec(), e.clone()))
            .collect(),
    )
}

fn n2_bad_names(ctx: &mut Ctx<'_>) -> Outcome {
    for name in [
        "dot.nar",
        "dotdot.nar",
        "slash.nar",
        "nul-character.nar",
        "empty.nar",
    ] {
        let message = upload_refused(ctx.lab, name, &test_data(name))?;
        ensure!(
            message.contains("name") || message.contains("NAR"),
            "{name}: {message}"
        );
    }
    // The same, nested below a good directory.
    for bad in [&b"."[..], b"..", b"x/y", b"", b"a\0b"] {
        let nar = dir(&[(b"ok", dir(&[(bad, file(b"pwned\n"))]))]).to_nar();
        upload_refused(
            ctx.lab,
            &format!("entry {:?}", String::from_utf8_lossy(bad)),
            &nar,
        )?;
    }
    HELD
}

fn n3_bad_structure(ctx: &mut Ctx<'_>) -> Outcome {
    for name in [
        "name-after-node.nar",
        "executable-after-contents.nar",
        "invalid-tag-instead-of-contents.nar",
    ] {
        upload_refused(ctx.lab, name, &test_data(name))?;
    }
    let unsorted = dir(&[(b"b", file(b"1")), (b"a", file(b"2"))]).to_nar();
    upload_refused(ctx.lab, "unsorted entries", &unsorted)?;
    let duplicate = dir(&[(b"a", file(b"1")), (b"a", file(b"2"))]).to_nar();
    upload_refused(ctx.lab, "duplicate entries", &duplicate)?;
    HELD
}

fn n4_deep(ctx: &mut Ctx<'_>) -> Outcome {
    let message = upload_refused(
        ctx.lab,
        "a 100,000-deep NAR",
        &crate::client::deep_nar(100_000),
    )?;
    ensure!(
        message.contains("deep") || message.contains("depth") || message.contains("nest"),
        "{message}"
    );
    HELD
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// The RSS high-water marks of the daemon's processes, in KiB.
fn peak_rss_kib(lab: &Lab) -> Vec<(u32, u64)> {
    let Some(root) = lab.f.daemon.pid() else {
        return vec![];
    };
    let mut pids = ward_e2e_tests::daemon::descendants(root);
    pids.push(root);
    pids.into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
            Some((pid, hwm.trim().trim_end_matches(" kB").trim().parse().ok()?))
        })
        .collect()
}

fn n5_huge_lengths(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let heads: [(&str, Vec<u8>); 3] = [
        ("contents of 2^64-1 bytes", {
            let mut h = Vec::new();
            for t in [
                &b"nix-archive-1"[..],
                b"(",
                b"type",
                b"regular",
                b"contents",
            ] {
                put_str(&mut h, t);
            }
            h.extend_from_slice(&u64::MAX.to_le_bytes());
            h
        }),
        ("a name of 4 GiB", {
            let mut h = Vec::new();
            for t in [
                &b"nix-archive-1"[..],
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
            ] {
                put_str(&mut h, t);
            }
            h.extend_from_slice(&(4u64 << 30).to_le_bytes());
            h
        }),
        ("a tag of 2^64-8 bytes", {
            let mut h = Vec::new();
            put_str(&mut h, b"nix-archive-1");
            h.extend_from_slice(&(u64::MAX - 7).to_le_bytes());
            h
        }),
    ];
    for (what, head) in heads {
        let before: u64 = peak_rss_kib(lab).iter().map(|(_, k)| k).sum();
        // The upload claims a NAR of 64 MiB; the header is followed by zeros.
        let claimed = 64u64 << 20;
        let mut info = PathInfo::for_nar(&nar::made_up_path(&lab.store_dir(), "n5", what), &[]);
        info.nar_size = claimed;
        info.ca = format!("fixed:r:sha256:{}", nar::nix32(&[0u8; 32]));
        let mut client = lab.wire();
        let started = Instant::now();
        client
            .begin_add_to_store_nar(&info, false)
            .map_err(|e| e.to_string())?;
        let mut sent = 0u64;
        let mut stopped_early = false;
        let zeros = vec![0u8; 1 << 20];
        if client.send_frames(&head, head.len()).is_err() {
            stopped_early = true;
        }
        while !stopped_early && sent < claimed {
            if client.send_frames(&zeros, zeros.len()).is_err() {
                stopped_early = true;
                break;
            }
            sent += zeros.len() as u64;
        }
        if !stopped_early {
            let _ = client.end_frames();
        }
        client.set_read_timeout(Duration::from_secs(20)).unwrap();
        match client.process_stderr() {
            Ok(()) => return Err(format!("{what}: accepted")),
            Err(WireError::Daemon { .. }) | Err(WireError::Io(_)) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: took {:?}",
            started.elapsed()
        );
        let after: u64 = peak_rss_kib(lab).iter().map(|(_, k)| k).sum();
        ensure!(
            after < before + 64 * 1024,
            "{what}: the daemon grew from {before} KiB to {after} KiB"
        );
    }
    HELD
}

fn n7_truncated_and_padding(ctx: &mut Ctx<'_>) -> Outcome {
    for name in [
        "regular-truncated-large-contents.nar",
        "regular-truncated-padding.nar",
        "regular-one-byte-non-zero-padding.nar",
    ] {
        upload_refused(ctx.lab, name, &test_data(name))?;
    }
    let mut trailing = nar::nar_of_file(b"complete\n", false);
    put_str(&mut trailing, b"(");
    upload_refused(ctx.lab, "bytes after the root", &trailing)?;
    HELD
}

fn n8_substitute_mismatch(ctx: &mut Ctx<'_>) -> Outcome {
    crate::local::substitute_with_bad_nar(ctx)
}

fn n10_substituters(ctx: &mut Ctx<'_>) -> Outcome {
    crate::local::untrusted_and_symlinked_caches(ctx)
}

fn n11_tarball(ctx: &mut Ctx<'_>) -> Outcome {
    crate::builder::unpack_hostile_tarball(ctx)
}

fn n12_fetchurl_tls_and_redirect(ctx: &mut Ctx<'_>) -> Outcome {
    crate::builder::fetchurl_bad_tls_and_redirect(ctx)
}

fn n13_case_hack(ctx: &mut Ctx<'_>) -> Outcome {
    let collide = dir(&[
        (b"X", file(b"upper\n")),
        (b"x~nix~case~hack~1", file(b"lower\n")),
    ])
    .to_nar();
    // Distinct names on a case-sensitive store: accepted as they are, never merged.
    let lab = ctx.lab;
    let (path, ca) = nar::source_path(&lab.store_dir(), "n13", &collide);
    let mut info = PathInfo::for_nar(&path, &collide);
    info.ca = ca;
    let mut client = lab.wire();
    if client
        .add_to_store_nar(&info, &collide, 1 << 16, false)
        .is_ok()
    {
        let real = lab.real_path(&path);
        let names: Vec<String> = std::fs::read_dir(&real)
            .map_err(|e| e.to_string())?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        ensure!(names.len() == 2, "the names were merged: {names:?}");
    }
    // Two entries whose names fold to the same one with case hacking off are just a
    // duplicate: refused.
    let same = dir(&[(b"x", file(b"1")), (b"x", file(b"2"))]).to_nar();
    upload_refused(lab, "a case-hack duplicate", &same)?;
    HELD
}
