//! The frontend's confinement, checked from outside and from inside. From outside: it runs
//! as `ward-frontend`, not root, with no capabilities, no_new_privs and a seccomp filter. From
//! inside (a probe that only debug builds have, `WARD_TEST_CONFINEMENT_PROBE`): once confined
//! it cannot create a file in the store, open the DB for writing, or run a program — and it
//! goes on serving.
//!
//! Root only (multi-user daemon); prints SKIPPED otherwise.

use std::time::Duration;

use ward_e2e_tests::lifecycle::{
    program_name, wait_for_log_text, wait_for_process, BROKER, FRONTEND, STORE_WRITER,
};
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
    for what in [
        "write store: denied",
        "write db: denied",
        "exec: denied",
        // inotify_init1 is on no deny-list: only an allow-list refuses it.
        "unlisted call: denied",
    ] {
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

/// The inodes of the unix sockets that are listening, with their paths.
fn listening_unix_sockets() -> std::collections::BTreeMap<u64, String> {
    // Num RefCount Protocol Flags Type St Inode [Path]; Flags has __SO_ACCEPTCON (0x10000).
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u64::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & 0x10000 != 0)
                .then(|| Some((f.get(6)?.parse().ok()?, f.get(7).unwrap_or(&"").to_string())))?
        })
        .collect()
}

/// The socket inodes a process holds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[test]
fn only_the_broker_is_root_and_it_listens_on_nothing_of_its_own() {
    let test = "only_the_broker_is_root_and_it_listens_on_nothing_of_its_own";
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let daemon = f.daemon.pid().unwrap();
    let broker = if program_name(daemon).as_deref() == Some(BROKER) {
        daemon
    } else {
        wait_for_process(daemon, BROKER, None, Duration::from_secs(5)).unwrap()
    };
    let writer = wait_for_process(broker, STORE_WRITER, None, Duration::from_secs(5)).unwrap();
    let frontend = wait_for_process(broker, FRONTEND, None, Duration::from_secs(5)).unwrap();
    // The store-writer: its own user, no capability at all, no_new_privs, seccomp.
    let store_user = nix::unistd::User::from_name("ward-store").unwrap().unwrap();
    let uids = status_field(writer, "Uid:");
    assert!(
        uids.split_whitespace()
            .all(|u| u == store_user.uid.to_string()),
        "the store-writer's uids: {uids}"
    );
    for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_field(writer, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(writer, "NoNewPrivs:"), "1");
    assert_eq!(status_field(writer, "Seccomp:"), "2");
    // Of the daemon's processes only the broker runs as root. (Its short-lived forks, which
    // switch to a build user before they do anything, are root for a moment: a process must
    // stay root for two seconds to count.)
    assert_eq!(
        status_field(broker, "Uid:").split_whitespace().next(),
        Some("0")
    );
    let root_children = || -> Vec<u32> {
        ward_e2e_tests::daemon::descendants(broker)
            .into_iter()
            .filter(|pid| *pid != broker)
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
                        .unwrap_or(false)
                })
            })
            .collect()
    };
    let first = root_children();
    std::thread::sleep(Duration::from_secs(2));
    let lasting: Vec<u32> = root_children()
        .into_iter()
        .filter(|p| first.contains(p))
        .collect();
    let shown: Vec<String> = lasting
        .iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            format!("{p}: {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect();
    assert!(
        lasting.is_empty(),
        "processes of the daemon run as root: {shown:?}"
    );
    // The broker holds the clients' socket only to hand it to the frontend it starts; it
    // listens on no socket of its own.
    let listening = listening_unix_sockets();
    let socket = f.daemon.socket().display().to_string();
    for inode in socket_inodes(broker) {
        if let Some(path) = listening.get(&inode) {
            assert_eq!(path, &socket, "the broker listens on {path}");
        }
    }
    assert!(
        socket_inodes(frontend)
            .iter()
            .any(|i| listening.get(i) == Some(&socket)),
        "the frontend holds the clients' socket"
    );
}
