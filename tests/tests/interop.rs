//! The same on-disk store as Nix: real Nix opens a store ward wrote, ward serves a store real
//! Nix wrote, nothing acknowledged is lost across a restart, and parallel clients do not
//! disturb each other.

use std::path::Path;

use ward_e2e_tests::{
    inputs, require_nix, DaemonOptions, Fixture, ImportedGraph, NixClient, TestEnv, WardDaemon,
};

/// `nix path-info --json` without the registration time, which differs between stores.
fn info(client: &NixClient, path: &str) -> serde_json::Value {
    let mut info = client.path_info_json(path);
    info.as_object_mut()
        .expect("object")
        .remove("registrationTime");
    info
}

/// Adds a file, a tree, an imported graph and an instantiated derivation through `client`;
/// returns every path it made valid.
fn populate(client: &NixClient, scratch: &Path, seed: &str) -> Vec<String> {
    let file = inputs::file(
        scratch,
        &format!("{seed}.txt"),
        format!("{seed}\n").as_bytes(),
    );
    let tree = inputs::tree(scratch, &format!("{seed}-tree"), seed);
    let mut paths = client.add(&[&file, &tree]);
    let g = ImportedGraph::new(scratch, "/nix/store", seed);
    g.import(client);
    paths.extend([g.a, g.b, g.c]);
    let expr = inputs::file(
        scratch,
        &format!("{seed}.nix"),
        format!(
            "builtins.derivation {{ name = \"{seed}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; src = ./{seed}.txt; }}"
        )
        .as_bytes(),
    );
    let drv = client
        .ok("nix-instantiate", &[expr.to_str().expect("utf-8")])
        .single_line();
    paths.push(drv);
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn real_nix_reads_a_store_written_by_ward() {
    let Some(mut f) = Fixture::single_user("real_nix_reads_a_store_written_by_ward") else {
        return;
    };
    let paths = populate(&f.ward, &f.env.dir("in"), "written-by-ward");
    let served: Vec<serde_json::Value> = paths.iter().map(|p| info(&f.ward, p)).collect();
    f.daemon.stop();
    // Real Nix opens ward's database and store directly.
    let root = f.daemon.layout().chroot.clone().expect("chroot store");
    let direct = f
        .env
        .reference("direct")
        .client
        .with_env("NIX_REMOTE", root.as_os_str());
    for (path, expected) in paths.iter().zip(&served) {
        assert_eq!(
            &info(&direct, path),
            expected,
            "real Nix reading ward's store: {path}"
        );
    }
    assert_eq!(
        direct.all_valid_paths(),
        paths,
        "nix path-info --all by real Nix"
    );
    let out = direct.ok("nix-store", &["--verify", "--check-contents"]);
    assert!(
        !out.stderr.contains("error") && !out.stderr.contains("warning"),
        "real Nix found problems in ward's store: {out}"
    );
}

#[test]
fn ward_serves_a_store_written_by_real_nix() {
    let test = "ward_serves_a_store_written_by_real_nix";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let reference = env.reference("existing");
    let paths = populate(&reference.client, &env.dir("in"), "written-by-nix");
    let expected: Vec<serde_json::Value> =
        paths.iter().map(|p| info(&reference.client, p)).collect();
    let mut daemon = WardDaemon::start(DaemonOptions::single_user().store_root(reference.root()));
    let ward = env.client(&daemon);
    for (path, expected) in paths.iter().zip(&expected) {
        assert_eq!(
            &info(&ward, path),
            expected,
            "ward serving real Nix's store: {path}"
        );
    }
    assert_eq!(ward.all_valid_paths(), paths);
    // ward adds to it, and real Nix still finds the store sound afterwards.
    let extra = inputs::tree(&env.dir("more"), "added-by-ward", "added");
    let added = ward.add(&[&extra]).remove(0);
    daemon.stop();
    let out = reference
        .client
        .ok("nix-store", &["--verify", "--check-contents"]);
    assert!(
        !out.stderr.contains("error") && !out.stderr.contains("warning"),
        "real Nix found problems after ward wrote to its store: {out}"
    );
    let mut all = paths.clone();
    all.push(added);
    all.sort();
    assert_eq!(reference.client.all_valid_paths(), all);
}

#[test]
fn nothing_acknowledged_is_lost_across_a_restart() {
    let Some(mut f) = Fixture::single_user("nothing_acknowledged_is_lost_across_a_restart") else {
        return;
    };
    let paths = populate(&f.ward, &f.env.dir("in"), "restart");
    let before: Vec<serde_json::Value> = paths.iter().map(|p| info(&f.ward, p)).collect();
    let snapshot = f.snapshot();
    f.daemon.restart();
    snapshot.assert_unchanged(f.daemon.layout(), "a daemon restart");
    for (path, expected) in paths.iter().zip(&before) {
        assert_eq!(&info(&f.ward, path), expected, "{path} after a restart");
    }
    // And it keeps working.
    let more = inputs::file(&f.env.dir("more"), "after-restart.txt", b"after\n");
    f.ward.add(&[&more]);
}

#[test]
fn parallel_clients_add_without_disturbing_each_other() {
    let Some(f) = Fixture::single_user("parallel_clients_add_without_disturbing_each_other") else {
        return;
    };
    let dir = f.env.dir("in");
    let shared = inputs::tree(&dir, "shared", "shared by every client");
    let own: Vec<_> = (0..6)
        .map(|i| inputs::tree(&dir, &format!("own-{i}"), &format!("client {i}")))
        .collect();
    let results: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = own
            .iter()
            .map(|mine| {
                let (ward, shared) = (&f.ward, &shared);
                scope.spawn(move || ward.add(&[shared.as_path(), mine.as_path()]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let shared_path = &results[0][0];
    assert!(results.iter().all(|r| &r[0] == shared_path), "{results:?}");
    let mut expected: Vec<String> = results.iter().map(|r| r[1].clone()).collect();
    expected.push(shared_path.clone());
    expected.sort();
    assert_eq!(f.ward.all_valid_paths(), expected);
    assert_eq!(f.snapshot().paths(), expected);
    for (input, result) in own.iter().zip(&results) {
        inputs::assert_same_tree(
            &f.real_path(&result[1]),
            &f.reference
                .real_path(&f.reference.client.add(&[input]).remove(0)),
        );
    }
}
