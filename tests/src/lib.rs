//! Harness for ward's end-to-end tests: Debian's Nix 2.8 client against a ward daemon.
//!
//! Every test starts its own daemon on its own temporary store ([`WardDaemon`]), drives it with
//! the real Nix client in an isolated environment ([`NixClient`]: its own `NIX_CONF_DIR`, `HOME`
//! and XDG directories, no substituters), and compares what it sees with real Nix's own local
//! chroot store ([`ReferenceStore`]). Failure tests check the store is unchanged afterwards by
//! reading `db.sqlite` and the store directory directly ([`StoreSnapshot`]). [`wire`] is a small
//! worker-protocol client for what the CLI cannot do (a lying NAR hash, a half-sent upload).
//!
//! Nothing here depends on ward's own crates: the NAR writer, hashing and the protocol client
//! are written independently so that a bug in ward cannot make a test agree with it.
//!
//! Tests that need the Nix client or root call [`require_nix`] / [`require_root`] first; those
//! print `SKIPPED <test>: …` straight to the terminal (not through the captured test output)
//! and the test returns early. A missing `ward` binary is a failure, never a skip.
//!
//! Set `WARD_E2E_DAEMON=nix-daemon` to run the same tests against Debian's real `nix-daemon`
//! instead of ward: a test that fails there is a wrong test, not a ward bug.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod inputs;
pub mod nar;
pub mod nixcmd;
pub mod store;
pub mod wire;

use std::io::Write;
use std::process::Command;

pub use daemon::{DaemonKind, DaemonOptions, Mode, StoreLayout, WardDaemon};
pub use nixcmd::{CmdOutput, NixClient, ReferenceStore, TestEnv};
pub use store::StoreSnapshot;

/// The unprivileged user multi-user tests run clients as (created by `.ci/test-all` as root;
/// [`ensure_test_user`] creates it when missing).
pub const TEST_USER: &str = "ward-test-alice";

/// Writes one line to the real stderr, bypassing the test harness's output capture, so skip
/// notices are visible even for tests that pass.
pub fn notice(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Whether the Nix 2.8 client programs are installed and run.
fn nix_available() -> Result<(), String> {
    for program in ["nix-store", "nix", "nix-instantiate"] {
        match Command::new(program).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "'{program} --version' failed with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => return Err(format!("'{program}' cannot be run: {e}")),
        }
    }
    Ok(())
}

/// Returns false (after printing `SKIPPED <test>: needs the Nix client …`) when Debian's Nix
/// client is not installed. Use as `if !require_nix("name") { return; }`.
pub fn require_nix(test: &str) -> bool {
    match nix_available() {
        Ok(()) => true,
        Err(why) => {
            notice(&format!(
                "SKIPPED {test}: needs the Nix client (nix-store, nix, nix-instantiate from \
                 Debian's nix-bin): {why}"
            ));
            false
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns false (after printing `SKIPPED <test>: needs root`) unless running as root.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        true
    } else {
        notice(&format!("SKIPPED {test}: needs root"));
        false
    }
}

/// Name of the user running the tests.
pub fn current_user_name() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// Makes sure [`TEST_USER`] exists (root only), creating it with `useradd` when missing.
pub fn ensure_test_user() -> nix::unistd::User {
    assert!(is_root(), "ensure_test_user needs root");
    if let Ok(Some(user)) = nix::unistd::User::from_name(TEST_USER) {
        return user;
    }
    let out = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", TEST_USER])
        .output()
        .expect("running useradd");
    // Another test running in parallel may have created it first.
    if let Ok(Some(user)) = nix::unistd::User::from_name(TEST_USER) {
        return user;
    }
    panic!(
        "could not create the test user '{TEST_USER}': useradd exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
