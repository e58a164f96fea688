//! The audit log (`ward-audit-log`), read back after a session of real-client commands: the
//! connections with uid and trust, an untrusted user's addition, a build with its build user
//! and the outputs it registered, a refusal naming the setting behind it, a signed addition, a
//! garbage collection with the paths it deleted; then a rotation (move the file away, make a
//! new one, SIGHUP) after which lines go to the new file.
//!
//! Root only (multi-user daemon, a second user); prints SKIPPED otherwise.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_e2e_tests::lifecycle::wait_for_log_text;
use ward_e2e_tests::{builds, ensure_test_user, inputs, DaemonOptions};

fn records(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
        .collect()
}

/// Waits until a record matching `pred` is in the log (the store-writer and the frontend
/// write independently of the client's reply).
fn wait_for(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = records(path).into_iter().find(|r| pred(r)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} in the audit log:\n{}",
            fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_audit_log_records_a_session_of_real_client_commands() {
    let test = "the_audit_log_records_a_session_of_real_client_commands";
    let logs = tempfile::Builder::new()
        .prefix("ward-audit-")
        .tempdir()
        .unwrap();
    fs::set_permissions(logs.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let log = logs.path().join("ward/audit.log");
    let keys = logs.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let options = DaemonOptions::multi_user()
        .conf(format!("ward-audit-log = {}", log.display()))
        .conf("require-sigs = true");
    let Some(f) = builds::start(test, options) else {
        return;
    };
    // Created by the launcher: appendable by ward's group, readable by nobody else.
    let meta = fs::metadata(&log).expect("the launcher creates the audit log");
    assert_eq!(meta.mode() & 0o777, 0o620, "audit log mode");
    assert_eq!(meta.uid(), 0);

    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let alice_uid = u64::from(alice.uid.as_raw());

    // An untrusted user adds a file (content the daemon hashed itself: allowed).
    let dir = f.env.dir("alice-inputs");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let file = inputs::file(&dir, "alice.txt", b"added by alice\n");
    let added = as_alice.add(&[&file]).remove(0);
    wait_for(&log, "alice's connection", |r| {
        r["event"] == "connection" && r["uid"] == alice_uid && r["trusted"] == false
    });
    wait_for(&log, "alice's addition", |r| {
        r["event"] == "path-added" && r["path"] == added.as_str() && r["uid"] == alice_uid
    });

    // A build as root: the build user it ran as, and the output registered.
    let expr = builds::expr(&f, "audited", &builds::drv("audited", "echo hi > $out", ""));
    let out = builds::build(&f.ward, &expr);
    let started = wait_for(&log, "the build", |r| r["event"] == "build-started");
    assert!(
        started["drv"]
            .as_str()
            .is_some_and(|d| d.ends_with("-audited.drv")),
        "{started}"
    );
    let build_uid = started["build_uid"].as_u64().expect("build_uid");
    let nixbld = nix::unistd::Group::from_name("nixbld").unwrap().unwrap();
    let build_user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(build_uid as u32))
        .unwrap()
        .expect("the build user exists");
    assert_eq!(build_user.gid, nixbld.gid, "{started}");
    wait_for(&log, "the build's output", |r| {
        r["event"] == "path-added" && r["path"] == out.as_str() && r["from"] == "build"
    });
    wait_for(&log, "root's trusted connection", |r| {
        r["event"] == "connection" && r["uid"] == 0 && r["trusted"] == true
    });

    // Refusals name their setting: an untrusted import of an unsigned path (require-sigs), an
    // untrusted permanent root (trusted-users).
    let export = f.env.dir("export").join("x.nar");
    let exported = f.ward.ok("nix-store", &["--export", &out]);
    fs::write(&export, &exported.stdout).unwrap();
    fs::set_permissions(&export, fs::Permissions::from_mode(0o644)).unwrap();
    let deleted = f.ward.ok("nix-store", &["--delete", &out]);
    assert!(deleted.status.success());
    let refused = as_alice.fails_with_stdin("nix-store", &["--import"], &exported.stdout);
    assert!(refused.stderr.contains("signature"), "{refused}");
    let refusal = wait_for(&log, "the require-sigs refusal", |r| {
        r["event"] == "refused" && r["setting"] == "require-sigs"
    });
    assert_eq!(refusal["uid"], alice_uid, "{refusal}");

    // A collection: what it deleted, and a summary.
    let collected = f.ward.ok("nix-store", &["--delete", &added]);
    assert!(collected.status.success());
    wait_for(&log, "the deletion", |r| {
        r["event"] == "path-deleted" && r["path"] == added.as_str()
    });
    wait_for(&log, "the gc summary", |r| {
        r["event"] == "gc" && r["action"] == "DeleteSpecific"
    });
    for record in records(&log) {
        assert!(
            record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert!(
            matches!(
                record["process"].as_str(),
                Some("frontend" | "store-writer")
            ),
            "{record}"
        );
    }

    // Rotation: the old file is moved away, a new one made (as logrotate's `create` does),
    // SIGHUP; new lines go to the new file only.
    let rotated = logs.path().join("ward/audit.log.1");
    fs::rename(&log, &rotated).unwrap();
    fs::write(&log, "").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o620)).unwrap();
    let ward_group = nix::unistd::Group::from_name("ward").unwrap().unwrap();
    std::os::unix::fs::chown(&log, Some(0), Some(ward_group.gid.as_raw())).unwrap();
    let before = records(&rotated).len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(f.daemon.pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for_log_text(
        || f.daemon.log(),
        "re-read nix.conf",
        Duration::from_secs(10),
    );
    let again = inputs::file(&dir, "after-rotation.txt", b"after the rotation\n");
    let after = as_alice.add(&[&again]).remove(0);
    wait_for(&log, "the addition after the rotation", |r| {
        r["event"] == "path-added" && r["path"] == after.as_str()
    });
    assert_eq!(
        records(&rotated).len(),
        before,
        "the rotated file was still written"
    );
}
