//! Binary caches: `nix copy --to file://DIR` out of ward and `nix copy --from file://DIR` into
//! it, trusted and untrusted, signed and unsigned; and `nix copy` from a local store into ward
//! (AddMultipleToStore).

use std::path::Path;

use std::thread;
use std::time::Duration;

use ward_e2e_tests::lifecycle::{kill_9, wait_for_process, STORE_WRITER};
use ward_e2e_tests::wire::{PathInfo, WorkerClient};
use ward_e2e_tests::{
    inputs, known_nix_daemon_deviation, nar, require_nix, DaemonOptions, Fixture, ImportedGraph,
    NixClient, SigningKey, TestEnv, WardDaemon,
};

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The narinfo file of `path` in the cache at `cache`.
fn narinfo(cache: &Path, path: &str) -> String {
    let base = path.rsplit('/').next().expect("base name");
    let hash_part = &base[..32];
    let file = cache.join(format!("{hash_part}.narinfo"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// Copies `paths` (with their closure) from `client`'s store into a new binary cache.
fn copy_to_cache(client: &NixClient, cache: &Path, paths: &[&str]) {
    let url = file_url(cache);
    let mut args = vec!["copy", "--to", url.as_str()];
    args.extend(paths);
    client.ok("nix", &args);
}

#[test]
fn copy_to_a_file_cache_matches_real_nix_and_copies_back() {
    let Some(f) = Fixture::single_user("copy_to_a_file_cache_matches_real_nix_and_copies_back")
    else {
        return;
    };
    let input = inputs::tree(&f.env.dir("in"), "cached", "copy");
    let path = f.ward.add(&[&input]).remove(0);
    assert_eq!(path, f.reference.client.add(&[&input]).remove(0));
    let (from_ward, from_nix) = (f.env.dir("cache-ward"), f.env.dir("cache-nix"));
    copy_to_cache(&f.ward, &from_ward, &[&path]);
    copy_to_cache(&f.reference.client, &from_nix, &[&path]);
    let info = narinfo(&from_ward, &path);
    assert_eq!(
        info,
        narinfo(&from_nix, &path),
        "narinfo of {path} written from ward vs from real Nix"
    );
    let nar_url = info
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap_or_else(|| panic!("no URL in narinfo:\n{info}"));
    assert_eq!(
        std::fs::read(from_ward.join(nar_url)).expect("nar from ward"),
        std::fs::read(from_nix.join(nar_url)).expect("nar from real Nix"),
        "compressed NAR {nar_url}"
    );

    // And back into a fresh ward store: a content-addressed path needs no signature.
    let second = ward_e2e_tests::WardDaemon::start(DaemonOptions::single_user());
    let second_client = f.env.client(&second);
    second_client.ok(
        "nix",
        &[
            "copy",
            "--from",
            &file_url(&from_ward),
            "--to",
            second_client.store_url(),
            &path,
        ],
    );
    let mut copied = second_client.path_info_json(&path);
    let mut original = f.ward.path_info_json(&path);
    for info in [&mut copied, &mut original] {
        info.as_object_mut()
            .expect("object")
            .remove("registrationTime");
    }
    assert_eq!(
        copied, original,
        "path info of {path} after a round trip through file://"
    );
    inputs::assert_same_tree(&second.layout().real_path(&path), &f.real_path(&path));
}

/// Input-addressed paths (no `ca`, so only a signature can vouch for them) imported into real
/// Nix's store, optionally signed there, then copied into a binary cache.
fn unsigned_cache(
    env: &TestEnv,
    seed: &str,
    key: Option<&SigningKey>,
) -> (ImportedGraph, std::path::PathBuf) {
    let reference = env.reference(&format!("source-{seed}"));
    let g = ImportedGraph::new(&env.dir(&format!("in-{seed}")), "/nix/store", seed);
    g.import(&reference.client);
    if let Some(key) = key {
        reference.client.ok(
            "nix",
            &[
                "store",
                "sign",
                "--key-file",
                key.secret_arg(),
                &g.a,
                &g.b,
                &g.c,
            ],
        );
    }
    let cache = env.dir(&format!("cache-{seed}"));
    copy_to_cache(&reference.client, &cache, &[&g.c]);
    (g, cache)
}

#[test]
fn trusted_copy_of_unsigned_paths_needs_no_check_sigs() {
    let test = "trusted_copy_of_unsigned_paths_needs_no_check_sigs";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let (g, cache) = unsigned_cache(&env, "trusted", None);
    let f = Fixture::with_env(env, DaemonOptions::single_user());
    let url = file_url(&cache);
    f.populate();
    // require-sigs applies to trusted users too unless they ask otherwise.
    let before = f.snapshot();
    let out = f.ward.fails(
        "nix",
        &["copy", "--from", &url, "--to", f.ward.store_url(), &g.a],
    );
    out.assert_stderr_contains(&g.a)
        .assert_stderr_contains("lacks a valid signature");
    before.assert_unchanged(f.daemon.layout(), "refusing an unsigned path");
    // With --no-check-sigs a trusted user may.
    f.ward.ok(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &url,
            "--to",
            f.ward.store_url(),
            &g.c,
        ],
    );
    let info = f.ward.path_info_json(&g.c);
    let mut expected = vec![g.b.clone(), g.c.clone()];
    expected.sort();
    assert_eq!(info["references"], serde_json::json!(expected), "{info}");
    assert_eq!(
        f.ward
            .ok("nix-store", &["-q", "--requisites", &g.c])
            .lines()
            .len(),
        3
    );
}

#[test]
fn untrusted_copy_of_signed_paths_is_accepted() {
    let test = "untrusted_copy_of_signed_paths_is_accepted";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let key = SigningKey::generate(&env, "ward-e2e-cache-1");
    let (g, cache) = unsigned_cache(&env, "signed", Some(&key));
    let options = DaemonOptions::single_user()
        .untrusted()
        .conf(format!("trusted-public-keys = {}", key.public));
    let f = Fixture::with_env(env, options);
    f.ward.ok(
        "nix",
        &[
            "copy",
            "--from",
            &file_url(&cache),
            "--to",
            f.ward.store_url(),
            &g.c,
        ],
    );
    for path in [&g.a, &g.b, &g.c] {
        let info = f.ward.path_info_json(path);
        let sigs = info["signatures"]
            .as_array()
            .unwrap_or_else(|| panic!("no signatures on {path}: {info}"));
        assert_eq!(sigs.len(), 1, "{info}");
        assert!(
            sigs[0]
                .as_str()
                .unwrap_or("")
                .starts_with("ward-e2e-cache-1:"),
            "{info}"
        );
    }
}

#[test]
fn untrusted_copy_of_unsigned_paths_is_refused() {
    let test = "untrusted_copy_of_unsigned_paths_is_refused";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let key = SigningKey::generate(&env, "ward-e2e-cache-2");
    let (g, cache) = unsigned_cache(&env, "unsigned", None);
    let options = DaemonOptions::single_user()
        .untrusted()
        .conf(format!("trusted-public-keys = {}", key.public));
    let f = Fixture::with_env(env, options);
    // Something valid already, so "unchanged" is not trivially true.
    f.populate();
    let before = f.snapshot();
    // --no-check-sigs is not honoured for untrusted users.
    let out = f.ward.fails(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &file_url(&cache),
            "--to",
            f.ward.store_url(),
            &g.a,
        ],
    );
    out.assert_stderr_contains(&g.a)
        .assert_stderr_contains("lacks a valid signature");
    before.assert_unchanged(
        f.daemon.layout(),
        "refusing an unsigned path from an untrusted user",
    );
    assert!(!before.paths().contains(&g.a));
}

#[test]
fn untrusted_copy_signed_by_an_unknown_key_is_refused() {
    let test = "untrusted_copy_signed_by_an_unknown_key_is_refused";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let trusted_key = SigningKey::generate(&env, "ward-e2e-trusted");
    let other_key = SigningKey::generate(&env, "ward-e2e-stranger");
    let (g, cache) = unsigned_cache(&env, "stranger", Some(&other_key));
    let options = DaemonOptions::single_user()
        .untrusted()
        .conf(format!("trusted-public-keys = {}", trusted_key.public));
    let f = Fixture::with_env(env, options);
    f.populate();
    let before = f.snapshot();
    let out = f.ward.fails(
        "nix",
        &[
            "copy",
            "--from",
            &file_url(&cache),
            "--to",
            f.ward.store_url(),
            &g.a,
        ],
    );
    out.assert_stderr_contains(&g.a)
        .assert_stderr_contains("lacks a valid signature");
    before.assert_unchanged(
        f.daemon.layout(),
        "refusing a path signed by an unknown key",
    );
}

#[test]
fn untrusted_copy_of_content_addressed_paths_needs_no_signature() {
    let test = "untrusted_copy_of_content_addressed_paths_needs_no_signature";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let reference = env.reference("source");
    let input = inputs::tree(&env.dir("in"), "ca-tree", "content-addressed");
    let path = reference.client.add(&[&input]).remove(0);
    let cache = env.dir("cache");
    copy_to_cache(&reference.client, &cache, &[&path]);
    let f = Fixture::with_env(env, DaemonOptions::single_user().untrusted());
    f.ward.ok(
        "nix",
        &[
            "copy",
            "--from",
            &file_url(&cache),
            "--to",
            f.ward.store_url(),
            &path,
        ],
    );
    inputs::assert_same_tree(&f.real_path(&path), &reference.real_path(&path));
}

#[test]
fn copy_from_a_local_store_into_ward() {
    let Some(f) = Fixture::single_user("copy_from_a_local_store_into_ward") else {
        return;
    };
    let g = ImportedGraph::new(&f.env.dir("in"), "/nix/store", "local");
    g.import(&f.reference.client);
    let input = inputs::tree(&f.env.dir("in2"), "local-ca", "local");
    let ca_path = f.reference.client.add(&[&input]).remove(0);
    let source = f.reference.root().to_str().expect("utf-8").to_string();
    f.ward.ok(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &source,
            "--to",
            f.ward.store_url(),
            &g.c,
            &ca_path,
        ],
    );
    for path in [&g.a, &g.b, &g.c, &ca_path] {
        let mut ours = f.ward.path_info_json(path);
        let mut theirs = f.reference.client.path_info_json(path);
        for info in [&mut ours, &mut theirs] {
            info.as_object_mut()
                .expect("object")
                .remove("registrationTime");
        }
        assert_eq!(ours, theirs, "path info of {path} after nix copy into ward");
        inputs::assert_same_tree(&f.real_path(path), &f.reference.real_path(path));
    }
}

/// `count` input-addressed one-file paths, each referring to the one before it, as a trusted
/// client may send them (no signature, no content address).
fn chain(count: usize, seed: &str) -> Vec<(PathInfo, Vec<u8>)> {
    let mut entries: Vec<(PathInfo, Vec<u8>)> = Vec::new();
    for i in 0..count {
        let contents = format!("link {i} of {seed}\n");
        let bytes = nar::nar_of_file(contents.as_bytes(), false);
        let path = nar::made_up_path("/nix/store", &format!("chain-{i}"), &format!("{seed}-{i}"));
        let mut info = PathInfo::for_nar(&path, &bytes);
        if let Some((previous, _)) = entries.last() {
            info.references = vec![previous.path.clone()];
        }
        entries.push((info, bytes));
    }
    entries
}

#[test]
fn add_multiple_registers_a_batch_whose_paths_refer_to_each_other() {
    let Some(f) =
        Fixture::single_user("add_multiple_registers_a_batch_whose_paths_refer_to_each_other")
    else {
        return;
    };
    // More than one of the store-writer's batches (64 paths), so a full batch commits early
    // and the rest at the end.
    let entries = chain(150, "batched");
    let mut client = WorkerClient::handshake(f.daemon.socket()).expect("handshake");
    client
        .add_multiple_to_store(&entries, 4096, true)
        .expect("AddMultipleToStore");
    for (info, _) in &entries {
        let got = client
            .query_path_info(&info.path)
            .expect("QueryPathInfo")
            .unwrap_or_else(|| panic!("{} is not valid after AddMultipleToStore", info.path));
        assert_eq!(got.nar_hash, info.nar_hash, "{}", info.path);
        assert_eq!(got.references, info.references, "{}", info.path);
    }
    // The real client sees the whole closure.
    let top = &entries.last().unwrap().0.path;
    let closure = f.ward.ok("nix-store", &["-qR", top]);
    assert_eq!(
        closure.lines().len(),
        entries.len(),
        "{:?}",
        closure.lines()
    );
}

#[test]
fn add_multiple_keeps_the_paths_before_a_bad_one_and_none_after() {
    let Some(f) =
        Fixture::single_user("add_multiple_keeps_the_paths_before_a_bad_one_and_none_after")
    else {
        return;
    };
    let mut entries = chain(5, "broken");
    // The third path's NAR (of the same size) does not hash to what its info claims.
    let bad = entries[2].0.path.clone();
    entries[2].1 = nar::nar_of_file(b"link 2 of brokeN\n", false);
    assert_eq!(entries[2].1.len() as u64, entries[2].0.nar_size);
    let mut client = WorkerClient::handshake(f.daemon.socket()).expect("handshake");
    let err = client
        .add_multiple_to_store(&entries, 4096, true)
        .expect_err("a NAR that does not match its hash is refused");
    let message = err.to_string();
    assert!(message.contains(&bad), "the error names {bad}: {message}");
    let mut client = WorkerClient::handshake(f.daemon.socket()).expect("handshake");
    for (i, (info, _)) in entries.iter().enumerate() {
        let valid = client.is_valid_path(&info.path).expect("IsValidPath");
        assert_eq!(valid, i < 2, "path {i} ({}) valid: {valid}", info.path);
    }
    // Nothing of the refused paths was left in the store directory.
    let store = &f.daemon.layout().real_store_dir;
    for (info, _) in &entries[2..] {
        let base = info.path.rsplit('/').next().unwrap();
        assert!(
            !store.join(base).exists(),
            "{base} left in {}",
            store.display()
        );
    }
}

/// A batch lives on its store-writer channel: when the store-writer is killed between two
/// paths of an AddMultipleToStore, the copy fails with an error saying so (it must not commit
/// an empty batch on a fresh channel and report success), none of the unfinished batch is
/// valid, and the same copy run again succeeds.
#[test]
fn add_multiple_fails_when_the_store_writer_restarts_mid_batch() {
    let test = "add_multiple_fails_when_the_store_writer_restarts_mid_batch";
    if !require_nix(test)
        || known_nix_daemon_deviation(test, "nix-daemon has no store-writer to kill")
    {
        return;
    }
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let broker = daemon.pid().expect("the daemon is running");
    let restart = Duration::from_secs(5);
    let writer = wait_for_process(broker, STORE_WRITER, None, restart).expect("store-writer");
    // Fewer than the store-writer's 64-path batch, so nothing commits before the kill.
    let entries = chain(20, "restarted");
    let mut client = WorkerClient::handshake(daemon.socket()).expect("handshake");
    let err = client
        .add_multiple_to_store_pausing(&entries, 4096, true, 10, || {
            // Let the frontend hand the first paths to the store-writer, then kill it.
            thread::sleep(Duration::from_millis(300));
            kill_9(writer);
            wait_for_process(broker, STORE_WRITER, Some(writer), restart)
                .expect("a new store-writer");
        })
        .expect_err("a batch whose store-writer died cannot succeed");
    let message = err.to_string();
    assert!(
        message.contains("store-writer restarted during AddMultipleToStore"),
        "the error says why: {message}"
    );
    let mut check = WorkerClient::handshake(daemon.socket()).expect("handshake");
    for (info, _) in &entries {
        assert!(
            !check.is_valid_path(&info.path).expect("IsValidPath"),
            "{} of the lost batch is valid",
            info.path
        );
    }
    // The client's retry goes through on the new store-writer.
    check
        .add_multiple_to_store(&entries, 4096, true)
        .expect("the same copy, run again");
    for (info, _) in &entries {
        assert!(
            check.is_valid_path(&info.path).expect("IsValidPath"),
            "{}",
            info.path
        );
    }
}
