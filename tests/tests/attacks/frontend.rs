//! I rows: a compromised frontend. A hostile program takes the frontend's place in a second
//! multi-user ward (debug builds' `WARD_TEST_FRONTEND`, `frontend/examples/evil_frontend.rs`),
//! with the frontend's user and descriptors, and attacks the broker's and the store-writer's
//! IPC; each row reads its part of the hostile program's report and the daemon's log, and
//! checks that the daemon's store is unchanged and that the real frontend, started after the
//! hostile one, is served.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ward_e2e_tests::evil::EvilFrontend;
use ward_e2e_tests::store::StoreSnapshot;
use ward_e2e_tests::{inputs, Fixture};

use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, run| Attack {
        id,
        category: Category::I,
        attack,
        safe,
        store: StoreRule::Unchanged,
        run,
        open: None,
    };
    vec![
        row(
            "I1",
            "the frontend asks for root's or a made-up uid's directories, and a build on \
             root's behalf",
            "refused: the broker allocates uids itself and knows its users",
            i1_uids,
        ),
        row(
            "I2",
            "the frontend asks for a build whose input is not in the store (a host path to \
             bind)",
            "refused: only store inputs are bound",
            i2_binds,
        ),
        row(
            "I3",
            "the frontend's build request carries fields of its own (its own seccomp flags)",
            "refused: the request does not decode; the broker's own filter applies",
            i3_own_flags,
        ),
        row(
            "I4",
            "the frontend registers a path with a made-up hash, made-up references or a false \
             content address",
            "refused by the store-writer, which hashes and checks what it stores",
            i4_made_up_metadata,
        ),
        row(
            "I5",
            "the frontend replays its handshake and sends requests before it",
            "the channel is closed and the violation logged with the peer",
            i5_replay,
        ),
        row(
            "I6",
            "the frontend passes a directory fd for /, a regular file and a socket where pipes \
             and sockets are expected",
            "refused, logged with the peer, and the channel closed",
            i6_unexpected_fds,
        ),
    ]
}

struct EvilRun {
    f: Fixture,
    report: BTreeMap<String, String>,
    before: StoreSnapshot,
    served_after: Result<(), String>,
    _evil: EvilFrontend,
}

thread_local! {
    static RUN: RefCell<Option<Result<EvilRun, String>>> = const { RefCell::new(None) };
}

fn start() -> Result<EvilRun, String> {
    let evil = EvilFrontend::new()
        .ok_or("build the example first (cargo build --workspace --all-targets)")?;
    let (report, done) = (evil.report.clone(), evil.done.clone());
    let options = evil.options();
    let f = Fixture::start("attacks-evil-frontend", options).ok_or("no Nix client")?;
    let before = f.snapshot();
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = done.with_extension("second");
    while !second.exists() {
        ensure!(Instant::now() < deadline, "no report\n{}", f.daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&report).unwrap();
    let report = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // The real frontend takes over and is served.
    let dir = f.env.dir("inputs");
    let file = inputs::file(
        &dir,
        "after.txt",
        b"served after the compromised frontend\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let served_after = loop {
        let out = f.ward.run("nix-store", &["--add", file.to_str().unwrap()]);
        if out.status.success() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(format!("not served again: {out}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Ok(EvilRun {
        f,
        report,
        before,
        served_after,
        _evil: evil,
    })
}

/// Checks `check` against the hostile frontend's run (made once, on first use), then that
/// nothing of it reached the store and the real frontend was served after it.
fn with_run(check: impl FnOnce(&EvilRun) -> Result<(), String>) -> Outcome {
    RUN.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(start());
        }
        let run = match cell.as_ref().unwrap() {
            Ok(run) => run,
            Err(why) if why.starts_with("build the example") => return Ok(Some(why.clone())),
            Err(why) => return Err(why.clone()),
        };
        check(run)?;
        run.served_after.clone()?;
        // Only the real frontend's own add after the attacks may have changed the store.
        let now = run.f.snapshot();
        for row in &now.valid_paths {
            let was_there = run.before.valid_paths.iter().any(|r| r.path == row.path);
            ensure!(
                was_there || row.path.ends_with("-after.txt"),
                "{} became valid",
                row.path
            );
        }
        HELD
    })
}

fn outcome<'a>(run: &'a EvilRun, name: &str) -> Result<&'a str, String> {
    run.report
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| format!("no outcome for {name}: {:?}", run.report))
}

fn refused(run: &EvilRun, name: &str, want: &str) -> Result<(), String> {
    let got = outcome(run, name)?;
    ensure!(
        got.starts_with("refused") && got.contains(want),
        "{name}: {got}"
    );
    Ok(())
}

fn i1_uids(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| {
        refused(run, "i1-user-dirs-root", "root")?;
        refused(run, "i1-user-dirs-nobody", "")?;
        refused(run, "i1-build-as-build-user", "build user")
    })
}

fn i2_binds(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| refused(run, "i2-build-with-invalid-input", "does not exist"))
}

fn i3_own_flags(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| {
        let got = outcome(run, "i3-request-with-extra-fields")?;
        ensure!(
            got.starts_with("closed") || got.starts_with("refused"),
            "a request with fields of the frontend's own was served: {got}"
        );
        Ok(())
    })
}

fn i4_made_up_metadata(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| {
        refused(run, "i4-made-up-hash", "hash")?;
        refused(run, "i4-made-up-references", "")?;
        refused(run, "i4-false-content-address", "")?;
        let store = &run.f.daemon.layout().real_store_dir;
        for name in [
            "33333333333333333333333333333333-made-up",
            "55555555555555555555555555555555-made-up-refs",
            "66666666666666666666666666666666-false-ca",
        ] {
            ensure!(!store.join(name).exists(), "{name} reached the store");
        }
        Ok(())
    })
}

fn i5_replay(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| {
        for name in [
            "i5-hello-again",
            "i5-writer-before-hello",
            "i5-writer-hello-again",
        ] {
            let got = outcome(run, name)?;
            ensure!(
                got.starts_with("closed") || got.starts_with("refused"),
                "{name}: {got}"
            );
        }
        for name in ["i5-after-close", "i5-writer-after-close"] {
            let got = outcome(run, name)?;
            ensure!(
                !got.starts_with("answered"),
                "{name}: served after a violation: {got}"
            );
        }
        let log = run.f.daemon.log();
        ensure!(
            log.contains("frontend protocol violation by pid"),
            "the broker names no peer"
        );
        ensure!(log.contains("peer=pid "), "the store-writer names no peer");
        Ok(())
    })
}

fn i6_unexpected_fds(_: &mut Ctx<'_>) -> Outcome {
    with_run(|run| {
        refused(
            run,
            "i6-open-channel-with-a-directory",
            "not a unix stream socket",
        )?;
        refused(run, "i6-nar-from-a-file", "pipe")?;
        refused(run, "i6-nar-from-a-socket", "pipe")?;
        // A descriptor of the wrong kind is a violation: the channel is closed after it.
        for then in [
            "i6-open-channel-with-a-directory-then",
            "i6-nar-from-a-file-then",
            "i6-nar-from-a-socket-then",
        ] {
            let got = outcome(run, then)?;
            ensure!(
                !got.starts_with("answered"),
                "{then}: the channel went on: {got}"
            );
        }
        let log = run.f.daemon.log();
        ensure!(
            log.contains("protocol violation; closing the channel"),
            "the store-writer logged no violation"
        );
        Ok(())
    })
}
