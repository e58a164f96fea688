//! Socket activation: `systemd-socket-activate -l SOCKET ward daemon --store DIR` hands ward a
//! listening socket (`LISTEN_PID`, `LISTEN_FDS`, optionally `LISTEN_FDNAMES`); ward must
//! serve on it and bind nothing itself. With several sockets, the one named
//! `nix-daemon.socket` is the daemon's.
//!
//! Needs `systemd-socket-activate` (Debian package `systemd`); skipped with a notice when it
//! is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_e2e_tests::daemon::ward_bin;
use ward_e2e_tests::lifecycle::{
    chroot_socket, chroot_url, isolated_command, processes_named, run_nix, wait_for_process,
    NixEnv, Running, Scratch, FRONTEND,
};
use ward_e2e_tests::wire::{PathInfo, WorkerClient};
use ward_e2e_tests::{nar, notice, require_nix};

const BASE_CONF: &str = "substituters =\nsandbox = false\nexperimental-features = nix-command\n";

/// The `systemd-socket-activate` program, or `None` after printing a skip notice.
fn socket_activate(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        notice(&format!(
            "SKIPPED {test}: needs systemd-socket-activate (Debian package 'systemd')"
        ));
    }
    found
}

/// A store, config and home for one activated daemon.
struct Activated {
    scratch: Scratch,
    conf_dir: PathBuf,
    home: PathBuf,
    store: PathBuf,
}

impl Activated {
    fn new(label: &str) -> Activated {
        let scratch = Scratch::new(label);
        let conf_dir = scratch.conf_dir("conf", BASE_CONF);
        let home = scratch.dir("home");
        let store = scratch.store_root("store");
        Activated {
            scratch,
            conf_dir,
            home,
            store,
        }
    }

    /// `systemd-socket-activate ARGS… -E …  ward daemon --store DIR`, started.
    fn start(&self, activate: &Path, activate_args: &[String]) -> Running {
        let mut cmd: Command = isolated_command(activate, &self.conf_dir, &self.home);
        cmd.args(activate_args);
        // systemd-socket-activate passes on only the variables it is told to.
        for var in ["PATH", "HOME", "NIX_CONF_DIR", "RUST_BACKTRACE"] {
            cmd.arg("-E").arg(var);
        }
        cmd.arg(ward_bin())
            .arg("daemon")
            .arg("--store")
            .arg(&self.store);
        Running::spawn(cmd, &self.scratch.path().join("daemon.log"))
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// Serves a raw client on `socket`: an add and a query.
fn assert_served(socket: &Path, daemon: &Running, label: &str) {
    let mut client = WorkerClient::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}\n{}", socket.display(), daemon.log()));
    let nar = nar::nar_of_file(format!("served through {label}\n").as_bytes(), false);
    let (path, ca) = nar::source_path("/nix/store", "activated.txt", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    client
        .add_to_store_nar(&info, &nar, 64 * 1024, false)
        .unwrap_or_else(|e| panic!("AddToStoreNar through {label}: {e}\n{}", daemon.log()));
    let stored = client
        .query_path_info(&path)
        .expect("QueryPathInfo")
        .expect("the path is valid");
    assert_eq!(stored.nar_hash, info.nar_hash);
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let test = "socket_activation_serves_on_the_passed_socket";
    let Some(activate) = socket_activate(test) else {
        return;
    };
    let a = Activated::new("activation");
    let socket = a.socket("activated.sock");
    let listen = format!("--listen={}", socket.display());
    let mut daemon = a.start(&activate, &[listen]);
    // systemd-socket-activate binds at once and starts ward on the first connection.
    daemon.wait_serving(&socket);
    assert_served(&socket, &daemon, "systemd-socket-activate");
    assert!(
        !chroot_socket(&a.store).exists(),
        "ward bound its own socket {} although systemd passed one",
        chroot_socket(&a.store).display()
    );
    // systemd-socket-activate execs ward: the same pid is the broker, with a frontend.
    wait_for_process(daemon.pid(), FRONTEND, None, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    if require_nix(test) {
        let env = NixEnv::new(
            &a.scratch.path().join("client"),
            BASE_CONF,
            &chroot_url(&socket, &a.store),
            Vec::new(),
            None,
        );
        let out = run_nix("nix", &["store", "ping"], &env);
        assert!(out.status.success(), "{out}\n{}", daemon.log());
    }
}

#[test]
fn socket_activation_with_the_nix_daemon_fd_name() {
    let test = "socket_activation_with_the_nix_daemon_fd_name";
    let Some(activate) = socket_activate(test) else {
        return;
    };
    let a = Activated::new("activation-named");
    let socket = a.socket("named.sock");
    let mut daemon = a.start(
        &activate,
        &[
            format!("--listen={}", socket.display()),
            "--fdname=nix-daemon.socket".to_string(),
        ],
    );
    daemon.wait_serving(&socket);
    assert_served(&socket, &daemon, "a socket named nix-daemon.socket");
    assert!(!chroot_socket(&a.store).exists());
}

#[test]
fn socket_activation_picks_the_socket_named_nix_daemon() {
    let test = "socket_activation_picks_the_socket_named_nix_daemon";
    let Some(activate) = socket_activate(test) else {
        return;
    };
    let a = Activated::new("activation-two");
    let other = a.socket("other.sock");
    let daemon_socket = a.socket("daemon.sock");
    let mut daemon = a.start(
        &activate,
        &[
            format!("--listen={}", other.display()),
            format!("--listen={}", daemon_socket.display()),
            "--fdname=other.socket:nix-daemon.socket".to_string(),
        ],
    );
    // The first connection (on either socket) starts ward; then only the named one serves.
    daemon.wait_serving(&daemon_socket);
    assert_served(&daemon_socket, &daemon, "the second of two sockets");
    assert_eq!(processes_named(daemon.pid(), FRONTEND).len(), 1);
    let refused = WorkerClient::handshake_with_timeout(&other, Duration::from_millis(500));
    assert!(
        refused.is_err(),
        "the socket not named nix-daemon.socket was served too"
    );
}
