//! The daemon's life: its children killed with SIGKILL (mid-upload, too) and restarted with
//! back-off, `--stdio`, the `nix-daemon` argv0, `--version` / `--help` / bad flags,
//! configuration errors that stop it before it binds, and what it logs per connection.
//!
//! ward's process tree: `ward daemon` execs `ward-broker`, which starts `ward-frontend` and
//! `ward-store-writer`. Tests that kill one of those skip against real `nix-daemon`, which has
//! no such processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ward_e2e_tests::builds;
use ward_e2e_tests::daemon::{descendants, ward_bin};
use ward_e2e_tests::lifecycle::{
    chroot_socket, chroot_url, is_alive, isolated_command, kill_9, on_daemons, processes_named,
    run_nix, run_to_exit, single_process_named, wait_for_log_text, wait_for_process, NixEnv, Rng,
    Running, Scratch, StdioDaemon, BROKER, FRONTEND, STORE_WRITER,
};
use ward_e2e_tests::store::{assert_valid_paths_complete, assert_verify_path, live_temp_roots};
use ward_e2e_tests::wire::{ca_nar, PathInfo, WireError, WorkerClient};
use ward_e2e_tests::{
    current_user_name, inputs, known_nix_daemon_deviation, nar, require_nix, require_root,
    CmdOutput, DaemonOptions, NixClient, TestEnv, WardDaemon,
};

/// How long a killed child may take to be replaced (the first restart waits 200 ms).
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of each upload interrupted by a kill.
const UPLOAD_BYTES: usize = 4 << 20;
/// Daemons in the kill test, each on its own store, run side by side.
const KILL_DAEMONS: usize = 4;
/// Kills per daemon: the broker doubles its restart delay after each quick death (200, 400,
/// 800 ms ...), so the rounds are spread over several daemons to stay within seconds.
const KILLS_PER_DAEMON: usize = 3;
/// A daemon config that works everywhere (no substituters, no sandbox).
const BASE_CONF: &str = "substituters =\nsandbox = false\nexperimental-features = nix-command\n";

/// Skips (returning true) a check of ward's own process tree when the tests run against
/// real `nix-daemon`.
fn no_process_tree(test: &str) -> bool {
    known_nix_daemon_deviation(
        test,
        "nix-daemon is one process, with no broker, frontend or store-writer",
    )
}

fn broker_pid(daemon: &WardDaemon) -> u32 {
    daemon.pid().expect("the daemon is running")
}

fn wait_child(daemon: &WardDaemon, name: &str, other_than: Option<u32>) -> u32 {
    wait_for_process(broker_pid(daemon), name, other_than, RESTART_TIMEOUT).unwrap_or_else(|e| {
        panic!("{e}; daemon log:\n{}", daemon.log_tail());
    })
}

/// A 4 MiB upload (AddToStoreNar of a file's NAR, content-addressed as `nix-store --add`
/// would make it) started on its own connection: the arguments and the first quarter (or all)
/// of the NAR are sent before this returns, so the store-writer is receiving (or processing)
/// it; a thread sends the rest and reads the answer.
struct Upload {
    info: PathInfo,
    nar: Vec<u8>,
    sender: thread::JoinHandle<Result<(), WireError>>,
}

impl Upload {
    /// `whole`: send all of the NAR before returning, so the kill falls while the
    /// store-writer verifies and registers it rather than while it receives it.
    fn start(socket: &Path, name: &str, contents: &[u8], whole: bool) -> Upload {
        let (info, nar) = ca_nar(name, contents);
        let mut client = WorkerClient::connect(socket).expect("connect");
        client
            .set_read_timeout(Duration::from_secs(20))
            .expect("read timeout");
        let split = if whole { nar.len() } else { nar.len() / 4 };
        client
            .begin_add_to_store_nar(&info, false)
            .and_then(|()| client.send_frames(&nar[..split], 64 * 1024))
            .expect("sending the first quarter of the upload");
        let rest = nar[split..].to_vec();
        let sender = thread::spawn(move || {
            client.send_frames(&rest, 64 * 1024)?;
            client.end_frames()?;
            client.process_stderr()
        });
        Upload { info, nar, sender }
    }
}

/// One daemon's share of the kill test: `KILLS_PER_DAEMON` rounds of "start a 4 MiB upload,
/// wait 0–50 ms, kill -9 the store-writer". Returns how many uploads the kill cut short.
fn kill_store_writer_during_adds(index: usize, seed: u64) -> usize {
    let env = TestEnv::new(&format!("kill-writer-{index}"));
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = env.client(&daemon);
    let frontend = wait_child(&daemon, FRONTEND, None);
    let mut writer = wait_child(&daemon, STORE_WRITER, None);
    let inputs_dir = env.dir("inputs");
    let mut rng = Rng::new(seed);
    let mut added: Vec<(Upload, PathBuf)> = Vec::new();
    let mut checked = BTreeSet::new();
    let mut interrupted = 0;
    for round in 0..KILLS_PER_DAEMON {
        let context = format!("daemon {index}, round {round} (seed {seed})");
        let name = format!("big-{index}-{round}");
        let contents = rng.bytes(UPLOAD_BYTES);
        let file = inputs::file(&inputs_dir, &name, &contents);
        let whole = rng.below(3) == 0;
        let mut upload = Upload::start(daemon.socket(), &name, &contents, whole);
        thread::sleep(Duration::from_millis(rng.below(51)));
        kill_9(writer);
        let sender = std::mem::replace(&mut upload.sender, thread::spawn(|| Ok(())));
        let started = Instant::now();
        let result = sender.join().expect("the upload thread panicked");
        // The client must hear about it promptly, whichever way it went.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{context}: the upload took {:?} to end after the kill",
            started.elapsed()
        );
        let replacement = wait_child(&daemon, STORE_WRITER, Some(writer));
        assert!(
            !is_alive(writer),
            "{context}: the killed store-writer {writer} still runs"
        );
        writer = replacement;
        assert_eq!(
            single_process_named(broker_pid(&daemon), FRONTEND),
            Some(frontend),
            "{context}: the frontend must survive the store-writer's death; log:\n{}",
            daemon.log_tail()
        );
        let known: Vec<&PathInfo> = added
            .iter()
            .map(|(u, _)| &u.info)
            .chain([&upload.info])
            .collect();
        let known_nars: Vec<&[u8]> = added
            .iter()
            .map(|(u, _)| u.nar.as_slice())
            .chain([upload.nar.as_slice()])
            .collect();
        let valid = assert_valid_paths_complete(
            daemon.layout(),
            &known,
            &known_nars,
            &mut checked,
            &context,
        );
        match result {
            // Finished before the kill: the path is valid (and checked above).
            Ok(()) => assert!(
                valid.contains(&upload.info.path),
                "{context}: the upload succeeded but {} is not valid",
                upload.info.path
            ),
            // Cut short: refused with an error, or the connection closed. Nothing
            // half-written may be valid.
            Err(e) => {
                interrupted += 1;
                assert!(
                    !matches!(e, WireError::Protocol(_)),
                    "{context}: the daemon answered the cut-short upload with garbage: {e}"
                );
            }
        }
        assert_verify_path(&client, &valid, &context);
        added.push((upload, file));
    }
    // The same adds again, now without interruption: each succeeds, and the real client
    // adding the same file gets the same path.
    let mut retry = WorkerClient::connect(daemon.socket()).expect("connect");
    for (upload, _) in &added {
        retry
            .add_to_store_nar(&upload.info, &upload.nar, 64 * 1024, false)
            .unwrap_or_else(|e| panic!("retrying the add of {}: {e}", upload.info.path));
    }
    // One of them through the real client too (each costs a full upload).
    let (upload, file) = &added[0];
    let path = client.add(&[file]).remove(0);
    assert_eq!(path, upload.info.path, "nix-store --add {}", file.display());
    let known: Vec<&PathInfo> = added.iter().map(|(u, _)| &u.info).collect();
    let known_nars: Vec<&[u8]> = added.iter().map(|(u, _)| u.nar.as_slice()).collect();
    let valid = assert_valid_paths_complete(
        daemon.layout(),
        &known,
        &known_nars,
        &mut checked,
        "after the retries",
    );
    for (upload, _) in &added {
        assert!(
            valid.contains(&upload.info.path),
            "{} is not valid after its retried add",
            upload.info.path
        );
    }
    assert_verify_path(&client, &valid, "after the retries");
    assert_eq!(
        single_process_named(broker_pid(&daemon), FRONTEND),
        Some(frontend),
        "the frontend was replaced; log:\n{}",
        daemon.log_tail()
    );
    client.ok("nix", &["store", "ping"]);
    interrupted
}

#[test]
fn store_writer_killed_during_adds_registers_nothing_incomplete() {
    let test = "store_writer_killed_during_adds_registers_nothing_incomplete";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let mut seeds = Rng::from_env_or_clock();
    eprintln!("seed {} (set WARD_E2E_SEED to repeat)", seeds.seed);
    let interrupted = on_daemons(KILL_DAEMONS, &mut seeds, kill_store_writer_during_adds);
    // Uploads take far longer than 50 ms; if none was cut short, nothing was tested.
    assert!(
        interrupted > 0,
        "seed {}: all {} uploads finished before their kill",
        seeds.seed,
        KILL_DAEMONS * KILLS_PER_DAEMON
    );
    eprintln!(
        "{interrupted} of {} uploads were interrupted",
        KILL_DAEMONS * KILLS_PER_DAEMON
    );
}

/// Runs `nix store ping` until it succeeds; panics after `timeout`.
fn ping_until_served(client: &NixClient, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = client.run("nix", &["store", "ping"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nix store ping still fails after {timeout:?}: {out}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killed_frontend_is_restarted_and_the_store_writer_left_alone() {
    let test = "killed_frontend_is_restarted_and_the_store_writer_left_alone";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let env = TestEnv::new("kill-frontend");
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = env.client(&daemon);
    let before = client.add(&[&inputs::file(&env.dir("in"), "before.txt", b"before\n")]);
    let frontend = wait_child(&daemon, FRONTEND, None);
    let writer = wait_child(&daemon, STORE_WRITER, None);
    let broker = broker_pid(&daemon);

    kill_9(frontend);
    let replacement = wait_child(&daemon, FRONTEND, Some(frontend));
    assert_ne!(replacement, frontend);
    ping_until_served(&client, RESTART_TIMEOUT);
    assert_eq!(
        single_process_named(broker, STORE_WRITER),
        Some(writer),
        "the store-writer must not be touched when the frontend dies"
    );
    assert!(is_alive(broker), "the broker died");
    // Everything works as before: queries of old paths, new adds.
    let after = client.add(&[&inputs::file(&env.dir("in2"), "after.txt", b"after\n")]);
    let mut valid = client.all_valid_paths();
    valid.sort();
    let mut expected = vec![before[0].clone(), after[0].clone()];
    expected.sort();
    assert_eq!(valid, expected);
    assert_eq!(single_process_named(broker, STORE_WRITER), Some(writer));
}

#[test]
fn killed_store_writer_is_restarted_and_the_frontend_left_alone() {
    let test = "killed_store_writer_is_restarted_and_the_frontend_left_alone";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let env = TestEnv::new("kill-store-writer");
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = env.client(&daemon);
    let before = client.add(&[&inputs::file(&env.dir("in"), "before.txt", b"before\n")]);
    let frontend = wait_child(&daemon, FRONTEND, None);
    let writer = wait_child(&daemon, STORE_WRITER, None);
    let broker = broker_pid(&daemon);
    // A client connected (and having added something) before the kill.
    let mut old_connection = WorkerClient::connect(daemon.socket()).expect("connect");
    let early = nar::nar_of_file(b"added over the old connection before the kill\n", false);
    let (early_path, early_ca) = nar::source_path("/nix/store", "early.txt", &early);
    let mut info = PathInfo::for_nar(&early_path, &early);
    info.ca = early_ca;
    old_connection
        .add_to_store_nar(&info, &early, 4096, false)
        .expect("AddToStoreNar before the kill");

    kill_9(writer);
    let replacement = wait_child(&daemon, STORE_WRITER, Some(writer));
    assert_ne!(replacement, writer);
    assert_eq!(
        single_process_named(broker, FRONTEND),
        Some(frontend),
        "the frontend must not be touched when the store-writer dies"
    );
    // New connections add again once the store-writer is back.
    let after = client.add(&[&inputs::file(&env.dir("in2"), "after.txt", b"after\n")]);
    // The connection from before the kill still answers queries and can add again: the
    // frontend reconnects to the new store-writer.
    assert!(old_connection
        .is_valid_path(&early_path)
        .expect("IsValidPath on the old connection"));
    let late = nar::nar_of_file(b"added over the old connection after the restart\n", false);
    let (late_path, late_ca) = nar::source_path("/nix/store", "late.txt", &late);
    let mut info = PathInfo::for_nar(&late_path, &late);
    info.ca = late_ca;
    old_connection
        .add_to_store_nar(&info, &late, 4096, false)
        .unwrap_or_else(|e| {
            panic!(
                "AddToStoreNar on a connection opened before the store-writer restarted: {e}; \
                 daemon log:\n{}",
                daemon.log_tail()
            )
        });
    // The old connection's temporary roots died with the old store-writer; the frontend gave
    // them to the new one: a collector (Nix's, reading temproots/ as it does) sees both
    // paths of the still open connection as live roots.
    let live = live_temp_roots(&daemon.layout().state_dir.join("temproots"));
    for path in [&early_path, &late_path] {
        assert!(
            live.contains(path),
            "{path} is a live temporary root: {live:?}"
        );
    }
    let mut valid = client.all_valid_paths();
    valid.sort();
    let mut expected = vec![before[0].clone(), after[0].clone(), early_path, late_path];
    expected.sort();
    assert_eq!(valid, expected);
    assert_eq!(single_process_named(broker, FRONTEND), Some(frontend));
}

#[test]
fn idle_connections_give_their_roots_to_a_restarted_store_writer_at_once() {
    let test = "idle_connections_give_their_roots_to_a_restarted_store_writer_at_once";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let env = TestEnv::new("idle-roots-after-restart");
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = env.client(&daemon);
    let writer = wait_child(&daemon, STORE_WRITER, None);
    let mut idle = WorkerClient::connect(daemon.socket()).expect("connect");
    let nar_bytes = nar::nar_of_file(
        b"added by a connection that then sits idle
",
        false,
    );
    let (path, ca) = nar::source_path("/nix/store", "idle.txt", &nar_bytes);
    let mut info = PathInfo::for_nar(&path, &nar_bytes);
    info.ca = ca;
    idle.add_to_store_nar(&info, &nar_bytes, 4096, false)
        .expect("AddToStoreNar");

    kill_9(writer);
    wait_child(&daemon, STORE_WRITER, Some(writer));
    // The idle connection sends nothing; the frontend replays its roots by itself.
    let temproots = daemon.layout().state_dir.join("temproots");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !live_temp_roots(&temproots).contains(&path) {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} was not replayed to the new store-writer: {}",
            daemon.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let gc = client.ok("nix-store", &["--gc"]);
    assert!(
        client.all_valid_paths().contains(&path),
        "a collection after the restart kept the idle connection's path: {gc}"
    );
    assert!(idle
        .is_valid_path(&path)
        .expect("the idle connection still works"));
}

#[test]
fn a_child_that_keeps_dying_is_restarted_after_growing_delays() {
    let test = "a_child_that_keeps_dying_is_restarted_after_growing_delays";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let env = TestEnv::new("backoff");
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = env.client(&daemon);
    let writer = wait_child(&daemon, STORE_WRITER, None);
    let mut frontend = wait_child(&daemon, FRONTEND, None);
    // Each death within seconds of the last start doubles the wait: 200, 400, 800 ms. Only
    // lower bounds are checked (a loaded machine may restart later, never earlier).
    let mut gaps = Vec::new();
    for minimum_ms in [200u64, 400, 800] {
        kill_9(frontend);
        let killed_at = Instant::now();
        let next = wait_for_process(
            broker_pid(&daemon),
            FRONTEND,
            Some(frontend),
            Duration::from_millis(minimum_ms) + RESTART_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log_tail()));
        let gap = killed_at.elapsed();
        gaps.push(gap);
        // A little slack for the time between the kill and the broker noticing it.
        assert!(
            gap + Duration::from_millis(20) >= Duration::from_millis(minimum_ms),
            "frontend {frontend} was replaced after {gap:?}, expected a back-off of at least \
             {minimum_ms} ms (gaps so far {gaps:?}); log:\n{}",
            daemon.log_tail()
        );
        frontend = next;
    }
    ping_until_served(&client, RESTART_TIMEOUT);
    assert_eq!(
        single_process_named(broker_pid(&daemon), STORE_WRITER),
        Some(writer),
        "the store-writer must survive the frontend's deaths"
    );
}

/// A chroot store and config for a daemon started by hand.
struct HandStarted {
    scratch: Scratch,
    conf_dir: PathBuf,
    home: PathBuf,
    store: PathBuf,
}

impl HandStarted {
    fn new(label: &str, conf: &str) -> HandStarted {
        let scratch = Scratch::new(label);
        let conf_dir = scratch.conf_dir("conf", conf);
        let home = scratch.dir("home");
        let store = scratch.store_root("store");
        HandStarted {
            scratch,
            conf_dir,
            home,
            store,
        }
    }

    fn ward(&self, args: &[&str]) -> std::process::Command {
        self.program(&ward_bin(), args)
    }

    fn program(&self, program: &Path, args: &[&str]) -> std::process::Command {
        let mut cmd = isolated_command(program, &self.conf_dir, &self.home);
        cmd.args(args);
        cmd
    }

    fn store_arg(&self) -> &str {
        self.store.to_str().expect("utf-8 path")
    }

    fn socket(&self) -> PathBuf {
        chroot_socket(&self.store)
    }

    /// A Nix client of the default socket, with a config of its own.
    fn nix(&self, program: &str, args: &[&str]) -> CmdOutput {
        let env = NixEnv::new(
            &self.scratch.path().join("client"),
            BASE_CONF,
            &chroot_url(&self.socket(), &self.store),
            Vec::new(),
            None,
        );
        run_nix(program, args, &env)
    }
}

#[test]
fn stdio_serves_one_client_on_its_pipes() {
    let h = HandStarted::new("stdio", BASE_CONF);
    let relay = h.scratch.path().join("relay.sock");
    let mut daemon = StdioDaemon::spawn(
        h.ward(&["daemon", "--stdio", "--store", h.store_arg()]),
        &relay,
        &h.scratch.path().join("stdio.log"),
    );
    let (info, nar) = ca_nar("stdio.txt", b"added through ward daemon --stdio\n");
    let mut client = WorkerClient::connect(&relay)
        .unwrap_or_else(|e| panic!("handshake over --stdio: {e}; stderr:\n{}", daemon.log()));
    assert!(
        client.daemon_version & 0xff >= 34,
        "{:#x}",
        client.daemon_version
    );
    assert!(!client.is_valid_path(&info.path).expect("IsValidPath"));
    client
        .add_to_store_nar(&info, &nar, 64 * 1024, false)
        .unwrap_or_else(|e| panic!("AddToStoreNar over --stdio: {e}; stderr:\n{}", daemon.log()));
    assert!(client.is_valid_path(&info.path).expect("IsValidPath"));
    let stored = client
        .query_path_info(&info.path)
        .expect("QueryPathInfo")
        .expect("the added path is valid");
    assert_eq!(stored.nar_hash, info.nar_hash);
    assert_eq!(stored.nar_size, info.nar_size);
    assert_eq!(stored.ca, info.ca);
    assert_eq!(
        client
            .nar_from_path(&info.path, stored.nar_size)
            .expect("NarFromPath"),
        nar
    );
    // No socket was bound: --stdio serves only its pipes.
    assert!(
        !h.socket().exists(),
        "--stdio created the socket {}",
        h.socket().display()
    );
    let tree: Vec<u32> = descendants(daemon.pid());
    assert!(
        tree.iter()
            .any(|&p| ward_e2e_tests::lifecycle::program_name(p).as_deref() == Some(FRONTEND)),
        "no {FRONTEND} under ward daemon --stdio: {tree:?}"
    );
    // The client hangs up: the daemon and everything it started exit.
    client.hang_up();
    let status = daemon.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "ward daemon --stdio still runs 5 s after its client hung up; stderr:\n{}",
            daemon.log()
        )
    });
    assert!(status.success(), "ward daemon --stdio exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = tree.iter().copied().filter(|&p| is_alive(p)).collect();
    assert!(
        left.is_empty(),
        "processes left after --stdio ended: {left:?}"
    );
    drop(daemon);

    // The path persists: a second --stdio session on the same store sees it.
    let relay2 = h.scratch.path().join("relay2.sock");
    let _daemon2 = StdioDaemon::spawn(
        h.ward(&["daemon", "--stdio", "--store", h.store_arg()]),
        &relay2,
        &h.scratch.path().join("stdio2.log"),
    );
    let mut client2 = WorkerClient::connect(&relay2).expect("second --stdio session");
    assert!(client2.is_valid_path(&info.path).expect("IsValidPath"));
}

#[test]
fn stdio_daemon_killed_mid_session_leaves_no_processes() {
    // An SSH session that is torn down kills `ward daemon --stdio`; the broker, frontend and
    // store-writer it started must not linger.
    let h = HandStarted::new("stdio-killed", BASE_CONF);
    let relay = h.scratch.path().join("relay.sock");
    let daemon = StdioDaemon::spawn(
        h.ward(&["daemon", "--stdio", "--store", h.store_arg()]),
        &relay,
        &h.scratch.path().join("stdio.log"),
    );
    let mut client = WorkerClient::connect(&relay).expect("handshake over --stdio");
    assert!(!client
        .is_valid_path("/nix/store/00000000000000000000000000000000-x")
        .expect("IsValidPath"));
    let launcher = daemon.pid();
    let tree = descendants(launcher);
    for name in [BROKER, FRONTEND, STORE_WRITER] {
        assert!(
            tree.iter()
                .any(|&p| ward_e2e_tests::lifecycle::program_name(p).as_deref() == Some(name)),
            "no {name} under ward daemon --stdio: {tree:?}"
        );
    }
    kill_9(launcher);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<(u32, Option<String>)> = tree
        .iter()
        .copied()
        .filter(|&p| is_alive(p))
        .map(|p| (p, ward_e2e_tests::lifecycle::program_name(p)))
        .collect();
    // Clean up before failing, so nothing outlives the test either way.
    for (pid, _) in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        left.is_empty(),
        "5 s after ward daemon --stdio was killed, these still run: {left:?}; stderr:\n{}",
        daemon.log()
    );
}

#[test]
fn nix_daemon_argv0_behaves_as_ward_daemon() {
    let test = "nix_daemon_argv0_behaves_as_ward_daemon";
    let h = HandStarted::new("argv0", BASE_CONF);
    let bin = h.scratch.dir("bin");
    let link = bin.join("nix-daemon");
    std::os::unix::fs::symlink(ward_bin(), &link).expect("symlinking nix-daemon to ward");

    let out = run_to_exit(h.program(&link, &["--version"]), Duration::from_secs(10));
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout_text().starts_with("nix-daemon "),
        "nix-daemon --version should name nix-daemon: {out}"
    );
    let out = run_to_exit(h.program(&link, &["--help"]), Duration::from_secs(10));
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_text().contains("--stdio"), "{out}");

    let mut daemon = Running::spawn(
        h.program(&link, &["--store", h.store_arg()]),
        &h.scratch.path().join("daemon.log"),
    );
    daemon.wait_serving(&h.socket());
    assert_eq!(
        processes_named(daemon.pid(), BROKER),
        vec![daemon.pid()],
        "nix-daemon should exec ward-broker"
    );
    wait_for_process(daemon.pid(), FRONTEND, None, RESTART_TIMEOUT).expect("frontend");
    wait_for_process(daemon.pid(), STORE_WRITER, None, RESTART_TIMEOUT).expect("store-writer");
    if require_nix(test) {
        let file = inputs::file(&h.scratch.dir("in"), "argv0.txt", b"served by nix-daemon\n");
        let out = h.nix("nix-store", &["--add", file.to_str().unwrap()]);
        assert!(out.status.success(), "{out}");
        let out = h.nix("nix-store", &["--verify-path", &out.single_line()]);
        assert!(out.status.success(), "{out}");
    }
}

#[test]
fn version_help_and_unknown_flags() {
    let h = HandStarted::new("flags", BASE_CONF);
    let timeout = Duration::from_secs(10);
    let out = run_to_exit(h.ward(&["--version"]), timeout);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout_text().starts_with("ward "), "{out}");
    let out = run_to_exit(h.ward(&["daemon", "--version"]), timeout);
    assert!(out.status.success(), "{out}");
    let out = run_to_exit(h.ward(&["daemon", "--help"]), timeout);
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout_text().contains("--stdio") && out.stdout_text().contains("--option"),
        "{out}"
    );
    for args in [
        &["daemon", "--no-such-flag", "--store", h.store_arg()][..],
        &["daemon", "--store", h.store_arg(), "--no-such-flag"][..],
    ] {
        let out = run_to_exit(h.ward(args), timeout);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "an unknown flag must fail: {out}"
        );
        out.assert_stderr_contains("'--no-such-flag'");
    }
    let out = run_to_exit(h.ward(&["no-such-command"]), timeout);
    assert!(!out.status.success(), "{out}");
    out.assert_stderr_contains("no-such-command");
    assert!(
        !h.store.exists(),
        "a refused command line created {}",
        h.store.display()
    );
}

/// Starts `ward daemon --store DIR` with `conf` as nix.conf (and `env`); it must exit with
/// an error before binding. Returns its output.
fn refused_config(label: &str, conf: &str, env: &[(&str, &str)], args: &[&str]) -> CmdOutput {
    let h = HandStarted::new(label, conf);
    let mut full = vec!["daemon", "--store", h.store_arg()];
    full.extend_from_slice(args);
    let mut cmd = h.ward(&full);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = run_to_exit(cmd, Duration::from_secs(10));
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "the daemon should refuse to start: {out}"
    );
    assert!(
        !h.socket().exists(),
        "the socket {} was created despite the error",
        h.socket().display()
    );
    assert!(
        !h.store.join("nix/var/nix/ward").exists(),
        "the daemon got as far as its IPC directory despite the error: {out}"
    );
    out
}

#[test]
fn config_errors_stop_the_daemon_before_it_binds() {
    // A line without '='.
    let out = refused_config(
        "no-equals",
        "substituters =\nthis line has no equals sign\n",
        &[],
        &[],
    );
    out.assert_stderr_contains("nix.conf:2");
    out.assert_stderr_contains("this line has no equals sign");
    // A boolean that is not one.
    let out = refused_config(
        "bad-bool",
        "substituters =\nrequire-sigs = maybe\n",
        &[],
        &[],
    );
    out.assert_stderr_contains("nix.conf:2");
    out.assert_stderr_contains("require-sigs");
    out.assert_stderr_contains("maybe");
    // The same mistake in NIX_CONFIG is named as such.
    let out = refused_config(
        "bad-nix-config",
        BASE_CONF,
        &[("NIX_CONFIG", "sandbox = false\nrequire-sigs = sometimes")],
        &[],
    );
    out.assert_stderr_contains("NIX_CONFIG");
    out.assert_stderr_contains("require-sigs");
    // The file is named by its full path.
    let h = HandStarted::new("named-file", "substituters =\nkeep-outputs = perhaps\n");
    let out = run_to_exit(
        h.ward(&["daemon", "--store", h.store_arg()]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "{out}");
    out.assert_stderr_contains(&format!("{}:2", h.conf_dir.join("nix.conf").display()));
    assert!(!h.socket().exists());
}

#[test]
fn unknown_setting_is_only_a_warning() {
    let h = HandStarted::new(
        "unknown-setting",
        &format!("{BASE_CONF}no-such-setting-in-any-nix = 1\n"),
    );
    let mut daemon = Running::spawn(
        h.ward(&["daemon", "--store", h.store_arg()]),
        &h.scratch.path().join("daemon.log"),
    );
    daemon.wait_serving(&h.socket());
    let log = daemon.log();
    assert!(
        log.contains("no-such-setting-in-any-nix") && log.contains("warning"),
        "expected a warning naming the unknown setting:\n{log}"
    );
    let mut client = WorkerClient::connect(&h.socket()).expect("connect");
    assert!(!client
        .is_valid_path("/nix/store/00000000000000000000000000000000-x")
        .expect("IsValidPath"));
}

/// Removes ANSI colour sequences (ESC [ ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Connects from this process (so the pid is known), does one query, hangs up, and returns
/// the text the daemon logs for such a connection.
fn connect_once(daemon: &WardDaemon) -> String {
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    client
        .is_valid_path("/nix/store/00000000000000000000000000000000-x")
        .expect("IsValidPath");
    client.hang_up();
    format!(
        "accepted connection from pid {}, user {}",
        std::process::id(),
        current_user_name()
    )
}

#[test]
fn log_names_each_connections_pid_and_user() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let line = connect_once(&daemon);
    let log = wait_for_log_text(|| strip_ansi(&daemon.log()), &line, Duration::from_secs(5));
    let uid = nix::unistd::getuid().as_raw();
    let entry = log
        .lines()
        .find(|l| l.contains(&line))
        .expect("found above");
    if !known_nix_daemon_deviation(
        "uid in the connection log line",
        "nix-daemon names the user only",
    ) {
        assert!(
            entry.contains(&format!("uid={uid}")),
            "the connection line should carry the peer's uid {uid}: {entry}"
        );
    }
}

#[test]
fn log_format_internal_json_is_nix_json() {
    let daemon = WardDaemon::start(
        DaemonOptions::single_user()
            .arg("--log-format")
            .arg("internal-json"),
    );
    let line = connect_once(&daemon);
    let log = wait_for_log_text(|| daemon.log(), &line, Duration::from_secs(5));
    // Nix's internal-json: one `@nix {json}` per message, with an action and a level.
    let entry = log
        .lines()
        .find(|l| l.contains(&line))
        .expect("found above");
    let json = entry
        .strip_prefix("@nix ")
        .unwrap_or_else(|| panic!("an internal-json line starts with '@nix ': {entry}"));
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {entry}"));
    assert_eq!(value["action"], "msg", "{entry}");
    assert_eq!(value["level"], 3, "info is level 3: {entry}");
    assert!(
        value["msg"].as_str().is_some_and(|m| m.contains(&line)),
        "{entry}"
    );
}

#[test]
fn quiet_hides_and_verbose_and_debug_add_log_lines() {
    // --quiet: info messages such as the per-connection line are not shown.
    let quiet = WardDaemon::start(DaemonOptions::single_user().arg("--quiet"));
    let line = connect_once(&quiet);
    // The connection is served (a second one too), then the log is read.
    let _ = connect_once(&quiet);
    thread::sleep(Duration::from_millis(300));
    let log = strip_ansi(&quiet.log());
    assert!(
        !log.contains(&line) && !log.contains("accepted connection from"),
        "--quiet should hide the connection lines:\n{log}"
    );
    // Default, -v and --debug: more verbosity, more lines for the same connection.
    let count_after_connect = |daemon: &WardDaemon| {
        let line = connect_once(daemon);
        wait_for_log_text(|| strip_ansi(&daemon.log()), &line, Duration::from_secs(5));
        // Let the end of the connection be logged too.
        thread::sleep(Duration::from_millis(300));
        strip_ansi(&daemon.log()).lines().count()
    };
    let plain = WardDaemon::start(DaemonOptions::single_user());
    let plain_lines = count_after_connect(&plain);
    let mut louder = vec![("--debug", true)];
    // Nix 2.8 has nothing to say at talkative level (-v) about a connection.
    louder.push((
        "-v",
        !known_nix_daemon_deviation("-v logs more", "Nix 2.8 logs nothing more at -v"),
    ));
    for (flag, checked) in louder {
        if !checked {
            continue;
        }
        let loud = WardDaemon::start(DaemonOptions::single_user().arg(flag));
        let loud_lines = count_after_connect(&loud);
        assert!(
            loud_lines > plain_lines,
            "{flag} should log more than the default ({loud_lines} vs {plain_lines} lines):\n\
             ---- {flag} ----\n{}\n---- default ----\n{}",
            strip_ansi(&loud.log()),
            strip_ansi(&plain.log())
        );
    }
}

/// The start-up sandbox check's builder dies under the broker before the broker watches
/// SIGCHLD; its pid-namespace init must still be reaped, not left as a zombie for the life of
/// the daemon (where pid 1 is a container's shell, nobody else would reap it either).
#[test]
fn the_start_up_sandbox_check_leaves_no_zombie() {
    let test = "the_start_up_sandbox_check_leaves_no_zombie";
    if !require_root(test) || no_process_tree(test) || !builds::have_busybox(test) {
        return;
    }
    let daemon = WardDaemon::start(builds::sandboxed(DaemonOptions::multi_user()));
    wait_child(&daemon, FRONTEND, None);
    assert!(
        daemon.log().contains("sandbox check passed"),
        "the sandbox check did not run:\n{}",
        daemon.log_tail()
    );
    let zombies = |d: &WardDaemon| -> Vec<String> {
        d.process_tree()
            .into_iter()
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // "pid (comm) S ...": the state follows the last ')'.
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_owned();
                let comm_end = stat.rfind(')')? + 1;
                (state == "Z").then(|| stat[..comm_end].to_owned())
            })
            .collect()
    };
    // The canary ran before the frontend started; give a late SIGCHLD its turn.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut left = zombies(&daemon);
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        left = zombies(&daemon);
    }
    assert!(
        left.is_empty(),
        "zombies under the broker after start-up: {left:?}\n{}",
        daemon.log_tail()
    );
}
