//! Multi-user mode (root only): `ward daemon` as root runs `ward-broker` (root), which starts
//! `ward-frontend` and `ward-store-writer` under their own users, confined. An untrusted user
//! adds and queries; a user outside `allowed-users` is refused.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use ward_e2e_tests::{
    ensure_test_user, inputs, known_nix_daemon_deviation, require_nix, require_root, DaemonOptions,
    Fixture, ImportedGraph, TestEnv,
};

/// The fields of `/proc/PID/status` these tests look at.
#[derive(Debug)]
struct ProcStatus {
    pid: u32,
    name: String,
    fields: BTreeMap<String, String>,
}

impl ProcStatus {
    fn read(pid: u32) -> Option<ProcStatus> {
        let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        // The executable's name (comm is cut at 15 characters).
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let name = exe
            .file_name()?
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string();
        Some(ProcStatus { pid, name, fields })
    }

    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "/proc/{}/status of {} has no '{name}' line",
                    self.pid, self.name
                )
            })
    }

    /// Real, effective, saved and filesystem uids.
    fn uids(&self) -> Vec<u32> {
        self.field("Uid")
            .split_whitespace()
            .map(|u| u.parse().expect("uid"))
            .collect()
    }

    fn capability_set_is_empty(&self, set: &str) -> bool {
        u64::from_str_radix(self.field(set), 16).expect("hex capability set") == 0
    }
}

/// Waits until the daemon's process tree holds a broker, a frontend and a store-writer.
fn wait_for_processes(f: &Fixture) -> BTreeMap<&'static str, ProcStatus> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut found = BTreeMap::new();
        for pid in f.daemon.process_tree() {
            if let Some(status) = ProcStatus::read(pid) {
                let role = match status.name.as_str() {
                    "ward-broker" => "broker",
                    "ward-frontend" => "frontend",
                    "ward-store-writer" => "store-writer",
                    _ => continue,
                };
                found.insert(role, status);
            }
        }
        if found.len() == 3 {
            return found;
        }
        if Instant::now() > deadline {
            let tree: Vec<String> = f
                .daemon
                .process_tree()
                .into_iter()
                .filter_map(ProcStatus::read)
                .map(|s| format!("{} {}", s.pid, s.name))
                .collect();
            panic!(
                "expected ward-broker, ward-frontend and ward-store-writer under the daemon; \
                 found {:?} in the process tree {tree:?}",
                found.keys().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .expect("user lookup")
        .unwrap_or_else(|| panic!("user '{user}' does not exist"))
        .uid
        .as_raw()
}

#[test]
fn processes_run_with_dropped_privileges() {
    let test = "processes_run_with_dropped_privileges";
    if known_nix_daemon_deviation(test, "nix-daemon is a single root process") {
        return;
    }
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    // Serve one client first, so lazily started processes exist.
    f.ward.ok("nix", &["store", "ping"]);
    let procs = wait_for_processes(&f);
    let broker = &procs["broker"];
    assert_eq!(
        broker.uids(),
        vec![0, 0, 0, 0],
        "the broker runs as root: {broker:?}"
    );
    for (role, user) in [
        ("frontend", "ward-frontend"),
        ("store-writer", "ward-store"),
    ] {
        let p = &procs[role];
        let uids = p.uids();
        assert!(
            uids.iter().all(|&u| u != 0),
            "{role} (pid {}) has a root uid: Uid {uids:?}",
            p.pid
        );
        assert_eq!(uids, vec![uid_of(user); 4], "{role} runs as '{user}'");
        for set in ["CapEff", "CapPrm", "CapAmb"] {
            assert!(
                p.capability_set_is_empty(set),
                "{role} (pid {}) has capabilities: {set} {}",
                p.pid,
                p.field(set)
            );
        }
        assert_eq!(
            p.field("NoNewPrivs"),
            "1",
            "{role} (pid {}) NoNewPrivs",
            p.pid
        );
        assert_eq!(
            p.field("Seccomp"),
            "2",
            "{role} (pid {}) Seccomp (2 = filter)",
            p.pid
        );
    }
    assert_ne!(
        procs["frontend"].uids(),
        procs["store-writer"].uids(),
        "the frontend and the store-writer must not share a user"
    );
}

#[test]
fn untrusted_user_adds_and_queries() {
    let test = "untrusted_user_adds_and_queries";
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "alice.txt", b"added by an untrusted user\n");
    let tree = inputs::tree(&dir, "alice-tree", "multi-user");
    let added = as_alice.add(&[&file, &tree]);
    assert_eq!(
        added,
        f.reference.client.add(&[&file, &tree]),
        "store paths in the non-default store dir"
    );
    for path in &added {
        assert!(
            path.starts_with(&format!("{}/", f.daemon.layout().logical_store_dir)),
            "{path}"
        );
        inputs::assert_same_tree(&f.real_path(path), &f.reference.real_path(path));
        for flag in ["--hash", "--size", "--references"] {
            assert_eq!(
                as_alice.ok("nix-store", &["-q", flag, path]).lines(),
                f.reference
                    .client
                    .ok("nix-store", &["-q", flag, path])
                    .lines(),
                "nix-store -q {flag} {path} as {}",
                alice.name
            );
        }
        let mut ours = as_alice.path_info_json(path);
        let mut theirs = f.reference.client.path_info_json(path);
        for info in [&mut ours, &mut theirs] {
            info.as_object_mut()
                .expect("object")
                .remove("registrationTime");
        }
        assert_eq!(
            ours, theirs,
            "nix path-info --json {path} as {}",
            alice.name
        );
    }
    // Alice is not trusted: an unsigned import is refused for her, accepted for root.
    let g = ImportedGraph::new(
        &f.env.dir("graph"),
        &f.daemon.layout().logical_store_dir,
        "alice",
    );
    let before = f.snapshot();
    let out = as_alice.fails_with_stdin("nix-store", &["--import"], &g.export);
    out.assert_stderr_contains(&g.a)
        .assert_stderr_contains("lacks a valid signature");
    before.assert_unchanged(
        f.daemon.layout(),
        "refusing an unsigned import from an untrusted user",
    );
    g.import(&f.ward);
}

#[test]
fn user_outside_allowed_users_is_refused() {
    let test = "user_outside_allowed_users_is_refused";
    if !require_nix(test) || !require_root(test) {
        return;
    }
    let env = TestEnv::new(test);
    let f = Fixture::with_env(
        env,
        DaemonOptions::multi_user().conf("allowed-users = root"),
    );
    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    f.populate();
    let before = f.snapshot();
    let file = inputs::file(&f.env.dir("in"), "refused.txt", b"alice may not connect\n");
    let out = as_alice.fails("nix-store", &["--add", file.to_str().expect("utf-8")]);
    if !known_nix_daemon_deviation(
        "allowed-users error message",
        "nix-daemon closes the connection without a word",
    ) {
        out.assert_stderr_contains("allowed-users");
    }
    before.assert_unchanged(f.daemon.layout(), "refusing a user outside allowed-users");
    // Root is still served.
    f.ward.add(&[&file]);
}
