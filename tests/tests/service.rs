//! ward as systemd runs it: the test plays systemd. It holds the listening socket across
//! restarts (as `nix-daemon.socket` does), starts ward through `systemd-socket-activate` with
//! that socket at fd 3 (`LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`), and listens on a
//! `NOTIFY_SOCKET` of its own for `Type=notify`'s messages. It checks READY=1 after start,
//! RELOADING=1 and READY=1 around a SIGHUP that re-reads nix.conf (new connections see the
//! change, an open one is not dropped), STOPPING=1 and an exit within 10 s at SIGTERM, and
//! `systemctl restart`: a client that connects while ward stops waits and is served by the
//! next ward.
//!
//! Also: a stop cancels a running build (its client gets an error, its build user is freed)
//! while an upload in progress finishes; and the shipped unit files pass
//! `systemd-analyze verify`.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use ward_e2e_tests::daemon::{descendants, ward_bin, DaemonOptions};
use ward_e2e_tests::lifecycle::{isolated_command, Running, Scratch};
use ward_e2e_tests::wire::{PathInfo, WorkerClient};
use ward_e2e_tests::{builds, nar, notice};

const BASE_CONF: &str = "substituters =\nsandbox = false\n";

fn have(program: &str, package: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        notice(&format!(
            "SKIPPED {test}: needs {program} (Debian package '{package}')"
        ));
    }
    found
}

/// The service manager's side: the socket it holds, its notify socket, and the unit's
/// environment.
struct Systemd {
    scratch: Scratch,
    listener: UnixListener,
    notify: UnixDatagram,
    socket: PathBuf,
    conf_dir: PathBuf,
    home: PathBuf,
    store: PathBuf,
    activate: PathBuf,
}

impl Systemd {
    fn new(label: &str, activate: PathBuf) -> Systemd {
        let scratch = Scratch::new(label);
        let socket = scratch.path().join("daemon.socket");
        let listener = UnixListener::bind(&socket).expect("binding the service's socket");
        let notify = UnixDatagram::bind(scratch.path().join("notify")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let conf_dir = scratch.conf_dir("conf", BASE_CONF);
        let home = scratch.dir("home");
        let store = scratch.store_root("store");
        Systemd {
            scratch,
            listener,
            notify,
            socket,
            conf_dir,
            home,
            store,
            activate,
        }
    }

    /// `ExecStart`: ward with the held socket at fd 3, through systemd-socket-activate (which
    /// execs ward at the first connection and passes the socket on).
    fn start(&self, log: &str) -> Running {
        let fd: OwnedFd = self.listener.try_clone().unwrap().into();
        let mut cmd = isolated_command(Path::new("/bin/sh"), &self.conf_dir, &self.home);
        cmd.arg("-c")
            .arg(r#"LISTEN_FDS=1 LISTEN_PID=$$ exec "$@""#)
            .arg("sh")
            .arg(&self.activate)
            .arg("--fdname=nix-daemon.socket");
        for var in [
            "PATH",
            "HOME",
            "NIX_CONF_DIR",
            "NOTIFY_SOCKET",
            "RUST_BACKTRACE",
        ] {
            cmd.arg("-E").arg(var);
        }
        cmd.arg(ward_bin())
            .arg("daemon")
            .arg("--store")
            .arg(&self.store)
            .env("NOTIFY_SOCKET", self.scratch.path().join("notify"))
            .fd_mappings(vec![FdMapping {
                parent_fd: fd,
                child_fd: 3,
            }])
            .unwrap();
        Running::spawn(cmd, &self.scratch.path().join(log))
    }

    /// The next notification, as text.
    fn next_message(&self, daemon: &Running) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification from ward: {e}\n{}", daemon.log()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads notifications until one contains `needle`; returns it and what came before.
    fn wait_for(&self, daemon: &Running, needle: &str) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let message = self.next_message(daemon);
            if message.contains(needle) {
                return (message, before);
            }
            before.push(message);
        }
    }

    fn write_conf(&self, extra: &str) {
        fs::write(
            self.conf_dir.join("nix.conf"),
            format!("{BASE_CONF}{extra}"),
        )
        .unwrap();
    }
}

fn signal(daemon: &Running, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), sig).unwrap();
}

/// Adds a small file through `client` and returns its store path.
fn add_small(client: &mut WorkerClient, text: &str) -> String {
    let nar = nar::nar_of_file(text.as_bytes(), false);
    let (path, ca) = nar::source_path("/nix/store", "service.txt", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    client
        .add_to_store_nar(&info, &nar, 64 * 1024, false)
        .expect("AddToStoreNar");
    path
}

#[test]
fn notify_reload_stop_and_restart_as_systemd_runs_ward() {
    let test = "notify_reload_stop_and_restart_as_systemd_runs_ward";
    let Some(activate) = have("systemd-socket-activate", "systemd", test) else {
        return;
    };
    let systemd = Systemd::new("service", activate);
    let mut daemon = systemd.start("daemon.log");

    // The first client starts ward (socket activation) and is served once it is ready.
    let mut first = WorkerClient::connect(&systemd.socket)
        .unwrap_or_else(|e| panic!("first client: {e}\n{}", daemon.log()));
    let (ready, before) = systemd.wait_for(&daemon, "READY=1");
    assert!(
        before.iter().any(|m| m.contains("STATUS=starting")),
        "no start-up status before READY=1: {before:?}"
    );
    assert!(ready.contains("STATUS=serving clients"), "{ready}");
    let path = add_small(&mut first, "before the reload\n");

    // Reload: nobody may connect any more. New connections are refused naming the setting's
    // effect; the open connection goes on.
    systemd.write_conf("trusted-users = nobody\nallowed-users = nobody\n");
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    let (reloading, _) = systemd.wait_for(&daemon, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let (ready, _) = systemd.wait_for(&daemon, "READY=1");
    assert!(ready.contains("re-read 1 time"), "{ready}");
    let refused = WorkerClient::connect(&systemd.socket)
        .err()
        .unwrap_or_else(|| {
            panic!(
                "a new connection was accepted after the reload\n{}",
                daemon.log()
            )
        });
    assert!(refused.to_string().contains("not allowed"), "{refused}");
    assert!(
        first
            .is_valid_path(&path)
            .expect("the open connection was dropped by the reload"),
        "{}",
        daemon.log()
    );
    let log = daemon.wait_for_log("changed 'allowed-users'", Duration::from_secs(10));
    assert!(log.contains("new connections use it"), "{log}");

    // A change that needs a restart says so.
    systemd.write_conf("sandbox = relaxed\n");
    signal(&daemon, nix::sys::signal::Signal::SIGHUP);
    systemd.wait_for(&daemon, "READY=1");
    daemon.wait_for_log("it applies after a restart", Duration::from_secs(10));
    let mut second = WorkerClient::connect(&systemd.socket)
        .unwrap_or_else(|e| panic!("after the second reload: {e}\n{}", daemon.log()));
    assert!(second.is_valid_path(&path).unwrap());

    // Stop (systemctl restart, first half): STOPPING=1, idle connections closed, exit in 10 s.
    let stop_started = Instant::now();
    signal(&daemon, nix::sys::signal::Signal::SIGTERM);
    let (stopping, _) = systemd.wait_for(&daemon, "STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    // A client connecting once the frontend stopped accepting waits in the socket's backlog,
    // held by "systemd". (One that connected a moment earlier was accepted by this ward and
    // is closed after its operation, like any idle connection at a stop.)
    daemon.wait_for_log("no new connections", Duration::from_secs(5));
    let socket = systemd.socket.clone();
    let waiting = std::thread::spawn(move || {
        let mut client = WorkerClient::connect(&socket)?;
        client.is_valid_path(&path)
    });
    let status = daemon
        .wait_exit(Duration::from_secs(12))
        .unwrap_or_else(|| panic!("ward did not stop within 12 s\n{}", daemon.log()));
    let took = stop_started.elapsed();
    assert!(
        status.success(),
        "ward's exit status at SIGTERM: {status:?}\n{}",
        daemon.log()
    );
    assert!(
        took < Duration::from_secs(10),
        "stopping took {took:?}\n{}",
        daemon.log()
    );
    assert!(
        first
            .is_valid_path("/nix/store/00000000000000000000000000000000-x")
            .is_err(),
        "an idle connection survived the stop"
    );

    // Second half: the next ward serves the client that waited.
    let mut next = systemd.start("daemon-2.log");
    let served = waiting.join().unwrap();
    assert!(
        served.as_ref().is_ok_and(|valid| *valid),
        "the client that connected during the restart: {served:?}\n{}",
        next.log()
    );
    systemd.wait_for(&next, "READY=1");
    signal(&next, nix::sys::signal::Signal::SIGTERM);
    assert!(next.wait_exit(Duration::from_secs(12)).is_some());
}

#[test]
fn stop_cancels_builds_frees_their_users_and_lets_uploads_finish() {
    let test = "stop_cancels_builds_frees_their_users_and_lets_uploads_finish";
    let Some(mut f) = builds::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let file = builds::expr(
        &f,
        "sleeper",
        &builds::drv("sleeper", "echo started; sleep 120; echo > $out", ""),
    );
    let client = f.ward.clone();
    let build = std::thread::spawn(move || {
        client.run("nix-build", &[file.to_str().unwrap(), "--no-out-link"])
    });
    // Wait for the builder's sleep to run under a build user.
    let daemon_pid = f.daemon.pid().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let build_uids = loop {
        let uids: Vec<u32> = descendants(daemon_pid)
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
            .filter_map(uid_of)
            .collect();
        if !uids.is_empty() {
            break uids;
        }
        assert!(
            Instant::now() < deadline,
            "the build did not start\n{}",
            f.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // An upload in progress when the stop comes: 16 MiB, sent over about two seconds.
    let socket = f.daemon.socket().to_path_buf();
    let store_dir = f.daemon.layout().logical_store_dir.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let upload = std::thread::spawn(move || {
        let mut client = WorkerClient::connect(&socket).expect("upload client");
        let contents: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        let nar = nar::nar_of_file(&contents, false);
        let (path, ca) = nar::source_path(&store_dir, "upload.bin", &nar);
        let mut info = PathInfo::for_nar(&path, &nar);
        info.ca = ca;
        client.begin_add_to_store_nar(&info, false)?;
        let chunk = 1 << 20;
        for (i, piece) in nar.chunks(chunk).enumerate() {
            client.send_frames(piece, chunk)?;
            if i == 2 {
                started_tx.send(()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(120));
        }
        client.end_frames()?;
        client.process_stderr()?;
        Ok::<String, ward_e2e_tests::wire::WireError>(path)
    });
    started_rx.recv().unwrap();

    let stop_started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let built = build.join().unwrap();
    assert!(
        !built.status.success(),
        "the build survived the stop: {built}"
    );
    assert!(
        stop_started.elapsed() < Duration::from_secs(10),
        "the build's client waited {:?}",
        stop_started.elapsed()
    );
    let uploaded = upload.join().unwrap();
    let path = uploaded.unwrap_or_else(|e| {
        panic!(
            "the upload in progress failed at the stop: {e}\n{}",
            f.daemon.log()
        )
    });
    let deadline = stop_started + Duration::from_secs(10);
    while f.daemon.is_running() {
        assert!(
            Instant::now() < deadline,
            "ward did not stop in 10 s\n{}",
            f.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for uid in &build_uids {
        let left: Vec<u32> = all_pids()
            .into_iter()
            .filter(|p| uid_of(*p) == Some(*uid) && !is_zombie(*p))
            .collect();
        assert!(left.is_empty(), "build user {uid} still runs {left:?}");
    }
    // The upload was committed: a restarted ward has the path.
    f.daemon.restart();
    let mut client = WorkerClient::connect(f.daemon.socket()).unwrap();
    assert!(client.is_valid_path(&path).unwrap(), "{}", f.daemon.log());
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A zombie runs nothing and holds no resource but its pid; whether it is ever reaped is up to
/// its parent (pid 1, once ward has exited), not ward.
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let test = "the_shipped_units_pass_systemd_analyze_verify";
    let Some(analyze) = have("systemd-analyze", "systemd", test) else {
        return;
    };
    let scratch = Scratch::new("units");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let bindir = ward_bin().parent().unwrap().display().to_string();
    for name in ["nix-daemon.socket", "nix-daemon.service"] {
        let text = fs::read_to_string(units.join(name)).unwrap();
        fs::write(scratch.path().join(name), text.replace("@bindir@", &bindir)).unwrap();
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(scratch.path().join("nix-daemon.socket"))
        .arg(scratch.path().join("nix-daemon.service"))
        .current_dir(scratch.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Where systemd-analyze cannot run at all (no /proc/self/mountinfo access, ...), say so.
    if stderr.contains("Failed to initialize manager") || stderr.contains("Operation not permitted")
    {
        notice(&format!(
            "SKIPPED {test}: systemd-analyze cannot run here: {stderr}"
        ));
        return;
    }
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );

    // The check is real: a broken unit is reported.
    let broken = scratch.path().join("nix-daemon.service");
    let text = fs::read_to_string(&broken).unwrap();
    fs::write(
        &broken,
        text.replace("KillMode=process", "KillMode=processes\nNoSuchKey=1"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NoSuchKey") && stderr.contains("kill mode"),
        "{stderr}"
    );
}
