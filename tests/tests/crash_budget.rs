//! What a bug in the frontend costs. A panic while serving one connection ends only that
//! connection, and its client gets an error naming an internal error instead of a silent
//! hang-up, while other clients go on being served. A frontend that keeps dying is restarted
//! with back-off and the broker logs an error once it dies three times in a row; when it
//! stops dying, clients are served again.
//!
//! The panic comes from a hook that exists only in debug builds (`WARD_TEST_PANIC_ON_OP`,
//! `frontend/src/connection.rs`), which the tests use.

use std::time::{Duration, Instant};

use ward_e2e_tests::lifecycle::{kill_9, wait_for_log_text, wait_for_process, FRONTEND};
use ward_e2e_tests::{inputs, DaemonOptions, Fixture};

#[test]
fn a_panic_serving_one_connection_ends_only_that_one_with_an_error_frame() {
    let test = "a_panic_serving_one_connection_ends_only_that_one_with_an_error_frame";
    let options = DaemonOptions::single_user().env("WARD_TEST_PANIC_ON_OP", "QueryPathInfo");
    let Some(f) = Fixture::start(test, options) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let file = inputs::file(&dir, "budget.txt", b"served before and after a panic\n");
    let path = f.ward.add(&[&file]).remove(0);
    let frontend = wait_for_process(
        f.daemon.pid().unwrap(),
        FRONTEND,
        None,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.daemon.log()));

    // `nix path-info` asks QueryPathInfo, whose handling panics here.
    let failed = f.ward.fails("nix-store", &["--query", "--hash", &path]);
    assert!(
        failed.stderr.contains("internal error"),
        "the client should be told, not hung up on: {failed}"
    );
    assert!(
        !failed.stderr.contains("unexpected end-of-file"),
        "{failed}"
    );
    wait_for_log_text(
        || f.daemon.log(),
        "internal error while handling",
        Duration::from_secs(5),
    );

    // The same frontend goes on serving other requests and other clients.
    let again = inputs::file(&dir, "after.txt", b"added after the panic\n");
    f.ward.add(&[&again]);
    let still = wait_for_process(
        f.daemon.pid().unwrap(),
        FRONTEND,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        still, frontend,
        "the frontend process was restarted by a connection's panic"
    );
}

#[test]
fn a_frontend_that_keeps_dying_is_restarted_with_back_off_and_an_error() {
    let test = "a_frontend_that_keeps_dying_is_restarted_with_back_off_and_an_error";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let broker = f.daemon.pid().unwrap();
    let mut last = None;
    let mut killed_at = Vec::new();
    for _ in 0..3 {
        let pid = wait_for_process(broker, FRONTEND, last, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", f.daemon.log()));
        kill_9(pid);
        killed_at.push(Instant::now());
        last = Some(pid);
    }
    // The broker's stderr is unbuffered, so a line may arrive in pieces:
    // wait for its end, not its start.
    let log = wait_for_log_text(|| f.daemon.log(), "next start in", Duration::from_secs(20));
    assert!(log.contains("keeps dying (3 times in a row"), "{log}");
    // Back-off: the third restart waits longer than the first.
    let gaps: Vec<Duration> = killed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= gaps[0], "{gaps:?}");
    // Once it stops dying, clients are served again.
    wait_for_process(broker, FRONTEND, last, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.daemon.log()));
    let dir = f.env.dir("inputs");
    let file = inputs::file(&dir, "served.txt", b"served after the crash loop\n");
    f.ward.add(&[&file]);
}
