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

pub mod builds;
pub mod daemon;
pub mod evil;
pub mod inputs;
pub mod lifecycle;
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

/// Whether the Nix client programs are installed: `Err` names the one missing. A program
/// that is installed but fails to run is a broken machine, not a reason to skip: that panics.
/// The probe runs in an isolated environment, like every Nix command of the tests, so the
/// machine's own `/nix` and `nix.conf` do not matter.
fn nix_available() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let scratch = tempfile::tempdir().expect("creating a temporary directory");
            for program in ["nix-store", "nix", "nix-instantiate"] {
                let out = Command::new(program)
                    .arg("--version")
                    .env_clear()
                    .env(
                        "PATH",
                        std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
                    )
                    .env("HOME", scratch.path())
                    .env("NIX_CONF_DIR", scratch.path())
                    .env("NIX_REMOTE", scratch.path().join("store"))
                    .output();
                match out {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => panic!(
                        "'{program} --version' is installed but failed with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(format!("'{program}' is not installed"));
                    }
                    Err(e) => panic!("'{program} --version' could not be run: {e}"),
                }
            }
            Ok(())
        })
        .clone()
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

/// When the tests run against real `nix-daemon` (`WARD_E2E_DAEMON=nix-daemon`) and a check
/// demands more than Nix 2.8 does, prints `SKIPPED <check> against nix-daemon: <reason>` and
/// returns true; the caller then skips that check. Always false against ward.
pub fn known_nix_daemon_deviation(check: &str, reason: &str) -> bool {
    if DaemonKind::from_env() == DaemonKind::NixDaemon {
        notice(&format!("SKIPPED {check} against nix-daemon: {reason}"));
        true
    } else {
        false
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

/// The usual set-up of a test: a scratch directory, a daemon, a Nix client of it and a
/// reference store of real Nix.
#[derive(Debug)]
pub struct Fixture {
    /// The client of the daemon (`NIX_REMOTE` = the daemon's socket).
    pub ward: NixClient,
    /// Real Nix's local chroot store.
    pub reference: ReferenceStore,
    /// The daemon. Declared after the clients and before the scratch directory: dropped
    /// (killed) before the scratch directory is removed.
    pub daemon: WardDaemon,
    /// Scratch space: inputs, client homes, the reference store.
    pub env: TestEnv,
}

impl Fixture {
    /// Skips (returns `None` after printing `SKIPPED <test>: …`) when the Nix client is
    /// missing; otherwise starts a daemon with `options`.
    pub fn start(test: &str, options: DaemonOptions) -> Option<Fixture> {
        if !require_nix(test) {
            return None;
        }
        if options.mode() == Mode::MultiUser && !require_root(test) {
            return None;
        }
        Some(Fixture::with_env(TestEnv::new(test), options))
    }

    /// Starts a daemon with `options` for a test that already made its scratch space (and
    /// checked its requirements).
    pub fn with_env(env: TestEnv, options: DaemonOptions) -> Fixture {
        let daemon = WardDaemon::start(options);
        let ward = env.client(&daemon);
        let reference = match daemon.mode() {
            Mode::SingleUser => env.reference("main"),
            Mode::MultiUser => {
                env.reference_with_store_dir("main", &daemon.layout().logical_store_dir)
            }
        };
        Fixture {
            ward,
            reference,
            daemon,
            env,
        }
    }

    /// A single-user daemon with default options (the invoking user is trusted).
    pub fn single_user(test: &str) -> Option<Fixture> {
        Fixture::start(test, DaemonOptions::single_user())
    }

    /// The daemon's store as it is on disk now.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot::take(self.daemon.layout())
    }

    /// Adds a small file so the store is initialised and not empty, for failure tests that
    /// check it stays unchanged. Returns its store path.
    pub fn populate(&self) -> String {
        let dir = self.env.dir("populate");
        let file = inputs::file(&dir, "already-there.txt", b"valid before the bad request\n");
        self.ward.add(&[&file]).remove(0)
    }

    /// The on-disk location of a path in the daemon's store.
    pub fn real_path(&self, store_path: &str) -> std::path::PathBuf {
        self.daemon.layout().real_path(store_path)
    }
}

/// Three input-addressed paths with references, imported with `nix-store --import` (which
/// needs a trusted client): `a` (no references), `b` (a directory referring to `a`, with a
/// deriver) and `c` (referring to `b` and to itself).
#[derive(Debug, Clone)]
pub struct ImportedGraph {
    /// Path with no references.
    pub a: String,
    /// Path referring to `a`.
    pub b: String,
    /// Path referring to `b` and itself.
    pub c: String,
    /// The deriver recorded for `b`.
    pub b_deriver: String,
    /// The NARs of a, b and c.
    pub nars: [Vec<u8>; 3],
    /// The export stream that creates them.
    pub export: Vec<u8>,
}

impl ImportedGraph {
    /// Builds the paths under the store directory `store_dir`, with hash parts derived from
    /// `seed`.
    pub fn new(scratch: &std::path::Path, store_dir: &str, seed: &str) -> ImportedGraph {
        let a = nar::made_up_path(store_dir, "ward-e2e-a", &format!("{seed}-a"));
        let b = nar::made_up_path(store_dir, "ward-e2e-b", &format!("{seed}-b"));
        let c = nar::made_up_path(store_dir, "ward-e2e-c", &format!("{seed}-c"));
        let b_deriver = nar::made_up_path(store_dir, "ward-e2e-b.drv", &format!("{seed}-b.drv"));
        let nar_a = nar::nar_of_file(format!("a ({seed})\n").as_bytes(), false);
        let tree = inputs::tree(scratch, &format!("graph-b-{seed}"), &format!("{a} {seed}"));
        let nar_b = nar::dump_path(&tree).expect("dumping the tree for b");
        let nar_c = nar::nar_of_file(format!("#!/bin/sh\n# {b}\n# {c}\n").as_bytes(), true);
        let export = nar::export_stream(&[
            nar::ExportEntry {
                path: &a,
                references: &[],
                deriver: "",
                nar: &nar_a,
            },
            nar::ExportEntry {
                path: &b,
                references: &[&a],
                deriver: &b_deriver,
                nar: &nar_b,
            },
            nar::ExportEntry {
                path: &c,
                references: &[&b, &c],
                deriver: "",
                nar: &nar_c,
            },
        ]);
        ImportedGraph {
            a,
            b,
            c,
            b_deriver,
            nars: [nar_a, nar_b, nar_c],
            export,
        }
    }

    /// Imports the paths through `client` (`nix-store --import`), checking what it prints.
    pub fn import(&self, client: &NixClient) {
        let out = client.ok_with_stdin("nix-store", &["--import"], &self.export);
        assert_eq!(
            out.lines(),
            vec![self.a.clone(), self.b.clone(), self.c.clone()],
            "{out}"
        );
    }
}

/// An ed25519 binary-cache signing key made by `nix-store --generate-binary-cache-key`.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// File holding the secret key.
    pub secret_file: std::path::PathBuf,
    /// The public key, `name:base64`.
    pub public: String,
}

impl SigningKey {
    /// Generates a key called `name` in the test's scratch space.
    pub fn generate(env: &TestEnv, name: &str) -> SigningKey {
        let dir = env.dir(&format!("key-{name}"));
        let (secret, public) = (dir.join("secret"), dir.join("public"));
        env.reference(&format!("keygen-{name}")).client.ok(
            "nix-store",
            &[
                "--generate-binary-cache-key",
                name,
                secret.to_str().expect("utf-8 path"),
                public.to_str().expect("utf-8 path"),
            ],
        );
        let public = std::fs::read_to_string(&public).expect("reading the public key");
        SigningKey {
            secret_file: secret,
            public: public.trim().to_string(),
        }
    }

    /// The secret key file as a string argument.
    pub fn secret_arg(&self) -> &str {
        self.secret_file.to_str().expect("utf-8 path")
    }
}

/// Whether `WARD_E2E_KEEP` asks to keep temporary stores and scratch directories (for
/// looking at a daemon's log and store after a run).
pub(crate) fn keep_scratch() -> bool {
    std::env::var_os("WARD_E2E_KEEP").is_some_and(|v| !v.is_empty())
}

/// Adds the owner-write bit to every directory under `root` (not following symlinks), so that
/// a temporary directory holding a store (whose directories are read-only, mode 0555) can be
/// removed by an unprivileged user. Errors are ignored: this only helps clean-up.
pub(crate) fn make_removable(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || depth > 256 {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn make_removable_opens_read_only_directories() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("store/sub");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for d in [&dir, &tmp.path().join("store")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        }
        super::make_removable(tmp.path());
        for d in [&dir, &tmp.path().join("store")] {
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            assert_eq!(mode & 0o700, 0o700, "{} has mode {mode:o}", d.display());
        }
    }
}
