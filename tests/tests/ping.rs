//! Connecting: `nix store ping`, the raw handshake, a custom socket path, parallel clients.

use ward_e2e_tests::wire::WorkerClient;
use ward_e2e_tests::{require_nix, DaemonOptions, TestEnv, WardDaemon};

#[test]
fn nix_store_ping_reaches_the_daemon() {
    if !require_nix("nix_store_ping_reaches_the_daemon") {
        return;
    }
    let env = TestEnv::new("ping");
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let out = env.client(&daemon).ok("nix", &["store", "ping"]);
    // Nix 2.8 prints both lines on stderr.
    out.assert_stderr_contains(&format!("Store URL: unix://{}", daemon.socket().display()));
    let version = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or_else(|| panic!("no 'Version:' line (the daemon's version string) in {out}"));
    assert!(!version.trim().is_empty(), "empty daemon version in {out}");
}

#[test]
fn raw_handshake_negotiates_protocol_1_34() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut client = WorkerClient::connect(daemon.socket())
        .unwrap_or_else(|e| panic!("handshake + SetOptions failed: {e}"));
    assert_eq!(client.daemon_version >> 8, 1, "major protocol version");
    assert!(
        client.daemon_version & 0xff >= 34,
        "daemon announces {:#x}; Nix 2.8 clients need at least 1.34",
        client.daemon_version
    );
    let version = client
        .daemon_nix_version
        .clone()
        .expect("version string from 1.33 on");
    assert!(!version.is_empty(), "empty daemon version string");
    let missing = "/nix/store/00000000000000000000000000000000-ward-e2e-missing";
    assert!(
        !client.is_valid_path(missing).expect("IsValidPath"),
        "{missing} reported valid"
    );
    assert_eq!(
        client.query_path_info(missing).expect("QueryPathInfo"),
        None
    );
}

#[test]
fn socket_path_option_moves_the_socket() {
    let tmp = tempfile::tempdir().expect("tmp");
    let socket = tmp.path().join("custom.sock");
    let daemon = WardDaemon::start(DaemonOptions::single_user().socket_path(&socket));
    assert_eq!(daemon.socket(), socket.as_path());
    let mut client = WorkerClient::connect(&socket).expect("connecting to --socket-path");
    assert!(!client
        .is_valid_path("/nix/store/00000000000000000000000000000000-x")
        .expect("IsValidPath"));
}

#[test]
fn serves_several_connections_at_once() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    // All connected before any of them sends an op: one slow client must not block others.
    let mut clients: Vec<WorkerClient> = (0..4)
        .map(|i| {
            WorkerClient::handshake(daemon.socket()).unwrap_or_else(|e| panic!("client {i}: {e}"))
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate().rev() {
        client
            .set_options()
            .unwrap_or_else(|e| panic!("client {i} SetOptions: {e}"));
        let valid = client
            .is_valid_path("/nix/store/00000000000000000000000000000000-x")
            .unwrap_or_else(|e| panic!("client {i} IsValidPath: {e}"));
        assert!(!valid);
    }
}

#[test]
fn untrusted_clients_restricted_settings_are_ignored_not_fatal() {
    use ward_e2e_tests::{inputs, Fixture};
    let Some(f) = Fixture::start(
        "untrusted_clients_restricted_settings_are_ignored_not_fatal",
        DaemonOptions::single_user().untrusted(),
    ) else {
        return;
    };
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "options.txt", b"settings from an untrusted client\n");
    let file = file.to_str().expect("utf-8");
    let expected = f
        .reference
        .client
        .add(&[std::path::Path::new(file)])
        .remove(0);
    // Restricted settings (Nix 2.8 drops them silently for untrusted clients); the operation
    // itself goes through.
    let restricted = [
        ["--option", "build-hook", "/nonexistent/ward-e2e-hook"],
        ["--option", "sandbox", "false"],
        ["--option", "build-users-group", ""],
    ];
    for option in restricted {
        let mut args = vec!["--add", file];
        args.extend(option);
        assert_eq!(
            f.ward.ok("nix-store", &args).single_line(),
            expected,
            "{option:?}"
        );
    }
    // An untrusted substituter gets Nix's warning, and the add still succeeds.
    let cache = f.env.dir("untrusted-cache");
    let url = format!("file://{}", cache.display());
    let out = f.ward.ok(
        "nix-store",
        &["--add", file, "--option", "substituters", &url],
    );
    assert_eq!(out.single_line(), expected);
    out.assert_stderr_contains(&format!("ignoring untrusted substituter '{url}'"));
}
