//! A compromised frontend (catalog rows I1–I6): a hostile program in the frontend's place,
//! with its descriptors and its user, speaks the broker's and the store-writer's IPC as an
//! attacker would (`frontend/examples/evil_frontend.rs`). Each attack is refused or closes its
//! channel, the refusals are logged with the peer, nothing reaches the store, and the broker
//! and the store-writer go on to serve the real frontend, which the broker starts after the
//! hostile one exits.
//!
//! Rows the IPC cannot express are not attacks here: the frontend never names a uid for a
//! build, a host path to bind, or a seccomp program (the broker's requests have no such
//! fields; SECURITY.md).
//!
//! Root only (multi-user daemon); prints SKIPPED otherwise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ward_e2e_tests::evil::EvilFrontend;
use ward_e2e_tests::lifecycle::wait_for_log_text;
use ward_e2e_tests::{inputs, notice, Fixture};

#[test]
fn a_compromised_frontend_gets_nowhere_and_the_daemon_goes_on() {
    let test = "a_compromised_frontend_gets_nowhere_and_the_daemon_goes_on";
    let Some(evil) = EvilFrontend::new() else {
        notice(&format!(
            "SKIPPED {test}: build the example first (cargo build --workspace --all-targets)"
        ));
        return;
    };
    let (report, done) = (evil.report.clone(), evil.done.clone());
    let options = evil.options();
    let Some(f) = Fixture::start(test, options) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.exists() {
        assert!(Instant::now() < deadline, "no report\n{}", f.daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&report).unwrap();
    eprintln!("the hostile frontend's report:\n{text}");
    let outcomes: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once(": ")).collect();
    let outcome = |name: &str| {
        *outcomes
            .get(name)
            .unwrap_or_else(|| panic!("no outcome for {name}:\n{text}"))
    };
    assert!(
        outcome("broker-hello").starts_with("answered Hello"),
        "{text}"
    );
    for refused in [
        "i1-user-dirs-root",
        "i1-user-dirs-nobody",
        "i2-build-with-invalid-input",
        "i4-made-up-hash",
        "i6-open-channel-with-a-directory",
        "i6-nar-from-a-file",
    ] {
        assert!(outcome(refused).starts_with("refused"), "{refused}: {text}");
    }
    assert!(outcome("i4-made-up-hash").contains("hash"), "{text}");
    assert!(
        outcome("i6-open-channel-with-a-directory").contains("not a unix stream socket"),
        "{text}"
    );
    assert!(outcome("i6-nar-from-a-file").contains("pipe"), "{text}");
    // Replayed or out-of-order handshakes close the channel.
    for closed in [
        "i5-hello-again",
        "i5-writer-before-hello",
        "i5-writer-hello-again",
    ] {
        assert!(
            outcome(closed).starts_with("closed") || outcome(closed).starts_with("refused"),
            "{closed}: {text}"
        );
    }
    for after in ["i5-after-close", "i5-writer-after-close"] {
        assert!(
            !outcome(after).starts_with("answered"),
            "{after}: a channel was served after a violation: {text}"
        );
    }
    // The broker logged the violation with the peer.
    let log = wait_for_log_text(
        || f.daemon.log(),
        "frontend protocol violation by pid",
        Duration::from_secs(5),
    );
    assert!(
        log.contains("request in the wrong phase; closing the channel"),
        "{log}"
    );
    assert!(
        log.contains("peer=pid "),
        "the store-writer names the peer: {log}"
    );
    // Nothing reached the store.
    let store = &f.daemon.layout().real_store_dir;
    for name in [
        "33333333333333333333333333333333-made-up",
        "22222222222222222222222222222222-evil",
    ] {
        assert!(!store.join(name).exists(), "{name} reached the store");
    }

    // The real frontend takes over, and the broker and the store-writer serve it.
    let dir = f.env.dir("inputs");
    let file = inputs::file(
        &dir,
        "after.txt",
        b"served after the compromised frontend\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = f.ward.run("nix-store", &["--add", file.to_str().unwrap()]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served again: {out}\n{}",
            f.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
