//! The frontend's confinement, checked from outside and from inside. From outside: it runs
//! as `ward-frontend`, not root, with no capabilities, no_new_privs and a seccomp filter. From
//! inside (a probe that only debug builds have, `WARD_TEST_CONFINEMENT_PROBE`): once confined
//! it cannot create a file in the store, open the DB for writing, or run a program — and it
//! goes on serving.
//!
//! Root only (multi-user daemon); prints SKIPPED otherwise.

use std::time::Duration;

use ward_e2e_tests::lifecycle::{wait_for_log_text, wait_for_process, FRONTEND};
use ward_e2e_tests::{inputs, DaemonOptions, Fixture};

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[test]
fn the_confined_frontend_cannot_write_the_store_or_the_db_or_exec() {
    let test = "the_confined_frontend_cannot_write_the_store_or_the_db_or_exec";
    let options = DaemonOptions::multi_user().env("WARD_TEST_CONFINEMENT_PROBE", "1");
    let Some(f) = Fixture::start(test, options) else {
        return;
    };
    let log = wait_for_log_text(
        || f.daemon.log(),
        "confinement probe:",
        Duration::from_secs(20),
    );
    let line = log
        .lines()
        .find(|l| l.contains("confinement probe:"))
        .unwrap()
        .to_owned();
    for what in ["write store: denied", "write db: denied", "exec: denied"] {
        assert!(line.contains(what), "{what} expected: {line}");
    }
    assert!(!line.contains("ALLOWED"), "{line}");
    assert!(
        !f.daemon
            .layout()
            .real_store_dir
            .join("ward-confinement-probe")
            .exists(),
        "the probe created a file in the store"
    );

    let frontend = wait_for_process(
        f.daemon.pid().unwrap(),
        FRONTEND,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let user = nix::unistd::User::from_name("ward-frontend")
        .unwrap()
        .unwrap();
    let uids = status_field(frontend, "Uid:");
    assert!(
        uids.split_whitespace().all(|u| u == user.uid.to_string()),
        "the frontend's uids: {uids}"
    );
    assert_eq!(status_field(frontend, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(frontend, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(frontend, "NoNewPrivs:"), "1");
    assert_eq!(status_field(frontend, "Seccomp:"), "2");

    // Confined, it serves: an add goes through it to the store-writer.
    let dir = f.env.dir("inputs");
    let file = inputs::file(&dir, "confined.txt", b"served by a confined frontend\n");
    f.ward.add(&[&file]);
}
