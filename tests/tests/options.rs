//! Settings and who may change them.
//!
//! SetOptions: the real Nix client sends every setting it has overridden (`--option NAME
//! VALUE`) to the daemon. A trusted client's overrides apply silently; an untrusted client is
//! told which restricted settings and which substituters were ignored, and its request still
//! succeeds. Trust comes from `trusted-users`, or is forced with `--force-trusted` /
//! `--force-untrusted` (experimental feature `daemon-trust-override`).
//!
//! The daemon's own settings: `NIX_CONFIG` overrides nix.conf, and `--option` overrides both.
//!
//! The Nix client runs here with exactly the arguments given (the harness's `NixClient` appends
//! `--option substituters ''`, which would replace the substituters under test), and with a
//! nix.conf that overrides nothing but `experimental-features` (which clients never send), so
//! the only overrides sent are the test's own.

use std::time::Duration;

use ward_e2e_tests::daemon::ward_bin;
use ward_e2e_tests::lifecycle::{
    chroot_socket, isolated_command, run_nix, run_to_exit, NixEnv, Running, Scratch,
};
use ward_e2e_tests::wire::{PathInfo, WireError, WorkerClient};
use ward_e2e_tests::{
    ensure_test_user, inputs, known_nix_daemon_deviation, nar, require_nix, require_root,
    CmdOutput, DaemonOptions, TestEnv, WardDaemon,
};

/// The client's nix.conf: overrides nothing the client would send.
const CLIENT_CONF: &str = "experimental-features = nix-command\n";
/// The warning for a restricted setting from an untrusted client.
const SANDBOX_IGNORED: &str = "ignoring the client-specified setting 'sandbox', because it is a \
                               restricted setting and you are not a trusted user";
/// The warning for a substituter the daemon does not trust.
const SUBSTITUTER_IGNORED: &str = "ignoring untrusted substituter 'file:///x'";
/// The feature `--force-trusted` / `--force-untrusted` need.
const TRUST_FEATURE: &str = "extra-experimental-features = daemon-trust-override";

/// A client of `daemon` (as `user`, or the test's own user) with [`CLIENT_CONF`].
fn client_env(
    env: &TestEnv,
    label: &str,
    daemon: &WardDaemon,
    user: Option<nix::unistd::User>,
) -> NixEnv {
    let layout = daemon.layout();
    NixEnv::new(
        &env.path().join(format!("client-{label}")),
        CLIENT_CONF,
        &layout.client_url(),
        layout.client_env(),
        user,
    )
}

/// `nix-store --add FILE EXTRA…` through `client`; must succeed and print the path of FILE.
fn add_with(env: &TestEnv, client: &NixEnv, name: &str, extra: &[&str]) -> CmdOutput {
    let file = inputs::file(
        &env.dir(&format!("in-{name}")),
        name,
        format!("added with {extra:?}\n").as_bytes(),
    );
    let mut args = vec!["--add", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let out = run_nix("nix-store", &args, client);
    assert!(out.status.success(), "the add must succeed: {out}");
    let printed = out.single_line();
    let (expected, _) = nar::source_path(
        &client
            .extra_env
            .iter()
            .find(|(k, _)| k == "NIX_STORE_DIR")
            .map_or("/nix/store".to_string(), |(_, v)| v.clone()),
        name,
        &nar::nar_of_file(format!("added with {extra:?}\n").as_bytes(), false),
    );
    assert_eq!(printed, expected, "{out}");
    out
}

/// The checks for a client the daemon does not trust: both overrides are refused with a
/// warning, the adds succeed, and without overrides there is no warning.
fn assert_untrusted_policy(env: &TestEnv, client: &NixEnv, restricted_warning_checked: bool) {
    let plain = add_with(env, client, "plain.txt", &[]);
    assert!(
        !plain.stderr.contains("ignoring"),
        "no override, no warning: {plain}"
    );
    let sandbox = add_with(
        env,
        client,
        "sandbox.txt",
        &["--option", "sandbox", "false"],
    );
    if restricted_warning_checked {
        sandbox.assert_stderr_contains(SANDBOX_IGNORED);
    }
    let subst = add_with(
        env,
        client,
        "subst.txt",
        &["--option", "substituters", "file:///x"],
    );
    subst.assert_stderr_contains(SUBSTITUTER_IGNORED);
}

/// The checks for a trusted client: the same overrides apply without a word.
fn assert_trusted_policy(env: &TestEnv, client: &NixEnv) {
    for (name, extra) in [
        ("sandbox.txt", &["--option", "sandbox", "false"][..]),
        ("subst.txt", &["--option", "substituters", "file:///x"][..]),
    ] {
        let out = add_with(env, client, name, extra);
        assert!(
            !out.stderr.contains("ignoring"),
            "a trusted client's override must apply silently: {out}"
        );
    }
}

#[test]
fn trusted_client_overrides_apply_silently() {
    let test = "trusted_client_overrides_apply_silently";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    // The test's own user is in trusted-users (root too, when the tests run as root).
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let client = client_env(&env, "self", &daemon, None);
    assert_trusted_policy(&env, &client);
}

#[test]
fn force_untrusted_client_overrides_are_ignored_with_warnings() {
    let test = "force_untrusted_client_overrides_are_ignored_with_warnings";
    if !require_nix(test) || known_nix_daemon_deviation(test, "Nix 2.8 has no --force-untrusted") {
        return;
    }
    let env = TestEnv::new(test);
    // trusted-users names the invoking user, but --force-untrusted wins.
    let daemon = WardDaemon::start(
        DaemonOptions::single_user()
            .conf(TRUST_FEATURE)
            .arg("--force-untrusted"),
    );
    let client = client_env(&env, "self", &daemon, None);
    assert_untrusted_policy(&env, &client, true);
}

#[test]
fn force_trusted_makes_an_untrusted_user_trusted() {
    let test = "force_trusted_makes_an_untrusted_user_trusted";
    if !require_nix(test) || known_nix_daemon_deviation(test, "Nix 2.8 has no --force-trusted") {
        return;
    }
    let env = TestEnv::new(test);
    // trusted-users names nobody who exists; --force-trusted overrides it.
    let daemon = WardDaemon::start(
        DaemonOptions::single_user()
            .untrusted()
            .conf(TRUST_FEATURE)
            .arg("--force-trusted"),
    );
    let client = client_env(&env, "self", &daemon, None);
    assert_trusted_policy(&env, &client);
}

#[test]
fn untrusted_by_trusted_users_overrides_are_ignored_with_warnings() {
    let test = "untrusted_by_trusted_users_overrides_are_ignored_with_warnings";
    if !require_nix(test) {
        return;
    }
    let env = TestEnv::new(test);
    let daemon = WardDaemon::start(DaemonOptions::single_user().untrusted());
    let client = client_env(&env, "self", &daemon, None);
    let check_restricted = !known_nix_daemon_deviation(
        "restricted-setting warning",
        "Nix 2.8 logs it at debug level only",
    );
    assert_untrusted_policy(&env, &client, check_restricted);
}

#[test]
fn multi_user_test_user_overrides_are_ignored_with_warnings() {
    let test = "multi_user_test_user_overrides_are_ignored_with_warnings";
    if !require_nix(test) || !require_root(test) {
        return;
    }
    let env = TestEnv::new(test);
    let daemon = WardDaemon::start(DaemonOptions::multi_user());
    let alice = ensure_test_user();
    let as_alice = client_env(&env, "alice", &daemon, Some(alice));
    let check_restricted = !known_nix_daemon_deviation(
        "restricted-setting warning",
        "Nix 2.8 logs it at debug level only",
    );
    assert_untrusted_policy(&env, &as_alice, check_restricted);
    // Root is trusted on the same daemon.
    let as_root = client_env(&env, "root", &daemon, None);
    assert_trusted_policy(&env, &as_root);
}

#[test]
fn trust_flags_need_their_experimental_feature() {
    // Runs ward itself, also when the other tests run against nix-daemon.
    for flag in ["--force-untrusted", "--force-trusted"] {
        let scratch = Scratch::new("trust-flag");
        let conf = scratch.conf_dir("conf", "substituters =\n");
        let home = scratch.dir("home");
        let store = scratch.store_root("store");
        let mut cmd = isolated_command(&ward_bin(), &conf, &home);
        cmd.arg("daemon").arg("--store").arg(&store).arg(flag);
        let out = run_to_exit(cmd, Duration::from_secs(10));
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{flag} without the feature must be refused: {out}"
        );
        out.assert_stderr_contains("daemon-trust-override");
        out.assert_stderr_contains(flag);
        assert!(!chroot_socket(&store).exists(), "{out}");
    }
}

/// An input-addressed, unsigned path for AddToStoreNar.
fn unsigned_path(label: &str) -> (PathInfo, Vec<u8>) {
    let nar = nar::nar_of_file(format!("unsigned, {label}\n").as_bytes(), false);
    let path = nar::made_up_path("/nix/store", "ward-e2e-unsigned", label);
    (PathInfo::for_nar(&path, &nar), nar)
}

/// Starts `ward daemon --store DIR ARGS…` with a nix.conf where nobody is trusted and
/// `nix_config` (if any) in `NIX_CONFIG`; an untrusted raw client then uploads an unsigned
/// path. Returns the daemon's answer.
fn unsigned_upload(label: &str, nix_config: Option<&str>, args: &[&str]) -> Result<(), WireError> {
    let scratch = Scratch::new(label);
    let conf = scratch.conf_dir(
        "conf",
        "substituters =\nsandbox = false\ntrusted-users = ward-e2e-nobody\n",
    );
    let home = scratch.dir("home");
    let store = scratch.store_root("store");
    let mut cmd = isolated_command(&ward_bin(), &conf, &home);
    cmd.arg("daemon").arg("--store").arg(&store).args(args);
    if let Some(value) = nix_config {
        cmd.env("NIX_CONFIG", value);
    }
    let mut daemon = Running::spawn(cmd, &scratch.path().join("daemon.log"));
    let socket = chroot_socket(&store);
    daemon.wait_serving(&socket);
    let (info, nar) = unsigned_path(label);
    let mut client = WorkerClient::connect(&socket).expect("connect");
    // dontCheckSigs = true: an untrusted client's request to skip the check is ignored.
    let result = client.add_to_store_nar(&info, &nar, 64 * 1024, true);
    let valid = client.is_valid_path(&info.path).expect("IsValidPath");
    assert_eq!(
        valid,
        result.is_ok(),
        "{label}: {result:?}\n{}",
        daemon.log()
    );
    result
}

#[test]
fn nix_config_and_option_override_nix_conf() {
    // nix.conf alone: require-sigs (default true) refuses the unsigned upload.
    let refused = unsigned_upload("conf-only", None, &[]);
    match &refused {
        Err(WireError::Daemon { message }) => assert!(
            message.contains("signature"),
            "the refusal should be about the signature: {message}"
        ),
        other => panic!("an untrusted unsigned upload must be refused: {other:?}"),
    }
    // NIX_CONFIG turns the check off.
    unsigned_upload("nix-config", Some("require-sigs = false"), &[])
        .unwrap_or_else(|e| panic!("NIX_CONFIG require-sigs = false was not honoured: {e}"));
    // --option beats NIX_CONFIG.
    let refused = unsigned_upload(
        "option-beats-nix-config",
        Some("require-sigs = false"),
        &["--option", "require-sigs", "true"],
    );
    assert!(
        matches!(refused, Err(WireError::Daemon { .. })),
        "--option require-sigs true must override NIX_CONFIG: {refused:?}"
    );
    // --option alone also turns it off.
    unsigned_upload("option", None, &["--option", "require-sigs", "false"])
        .unwrap_or_else(|e| panic!("--option require-sigs false was not honoured: {e}"));
}

#[test]
fn option_allowed_users_refuses_other_users() {
    let test = "option_allowed_users_refuses_other_users";
    if !require_nix(test) || !require_root(test) {
        return;
    }
    let env = TestEnv::new(test);
    let daemon = WardDaemon::start(
        DaemonOptions::multi_user()
            .arg("--option")
            .arg("allowed-users")
            .arg("root"),
    );
    let alice = ensure_test_user();
    let as_alice = client_env(&env, "alice", &daemon, Some(alice));
    let file = inputs::file(&env.dir("in"), "refused.txt", b"alice may not connect\n");
    let out = run_nix(
        "nix-store",
        &["--add", file.to_str().expect("utf-8")],
        &as_alice,
    );
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "a user outside --option allowed-users must be refused: {out}"
    );
    if !known_nix_daemon_deviation(
        "allowed-users error message",
        "nix-daemon closes the connection without a word",
    ) {
        out.assert_stderr_contains("allowed-users");
    }
    let as_root = client_env(&env, "root", &daemon, None);
    add_with(&env, &as_root, "root.txt", &[]);
}
