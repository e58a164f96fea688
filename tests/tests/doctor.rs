//! `ward doctor --root DIR` against a scratch root prepared by `ward install --root DIR
//! --no-start` (its own account files, units and nix.conf; its store a chroot store served by
//! `ward daemon --store DIR`). Each test breaks something on purpose and checks that the
//! doctor names it (exit code 1, the path, user or setting in the message) and that `--fix`
//! repairs what it can (the finding gone afterwards) and leaves the rest alone.
//!
//! Root only (useradd --root, chown, a multi-user daemon); prints SKIPPED otherwise.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ward_e2e_tests::daemon::ward_bin;
use ward_e2e_tests::lifecycle::{chroot_socket, isolated_command, run_to_exit, Running, Scratch};
use ward_e2e_tests::nixcmd::CmdOutput;
use ward_e2e_tests::require_root;

const CONF: &str = "substituters =\nsandbox = false\ntrusted-users = root\n\
                    build-users-group = nixbld\nmax-jobs = 2\n";

/// ward's own accounts, which a daemon on this host uses (through NSS) also for a chroot
/// store: made here if missing, as `ward daemon` makes them.
fn ensure_host_ward_accounts() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let exists = |db: &str, name: &str| {
            Command::new("getent")
                .args([db, name])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !exists("group", "ward") {
            let _ = Command::new("groupadd").args(["--system", "ward"]).status();
        }
        for user in ["ward-store", "ward-frontend"] {
            if !exists("passwd", user) {
                let _ = Command::new("useradd")
                    .args([
                        "--system",
                        "--gid",
                        "ward",
                        "--no-create-home",
                        "--home-dir",
                        "/var/empty",
                        "--shell",
                        "/usr/sbin/nologin",
                        user,
                    ])
                    .status();
            }
            assert!(
                exists("passwd", user),
                "could not create the host's '{user}'"
            );
        }
    });
}

/// The host's line for `name` in `/etc/FILE`.
fn host_line(file: &str, name: &str) -> String {
    let text = fs::read_to_string(Path::new("/etc").join(file)).unwrap();
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("no '{name}' in /etc/{file}"))
        .to_owned()
}

/// A scratch root after `ward install --root DIR --no-start --build-users 2`.
struct Root {
    scratch: Scratch,
    root: PathBuf,
    home: PathBuf,
}

impl Root {
    fn new(label: &str) -> Root {
        ensure_host_ward_accounts();
        let scratch = Scratch::new(label);
        let root = scratch.dir("root");
        let home = scratch.dir("home");
        fs::create_dir_all(root.join("etc/nix")).unwrap();
        // root's own accounts plus the host's ward accounts (same uids as the daemon's).
        let ward_users = format!(
            "{}\n{}\n",
            host_line("passwd", "ward-store"),
            host_line("passwd", "ward-frontend")
        );
        for (name, contents, mode) in [
            (
                "passwd",
                format!("root:x:0:0:root:/root:/bin/sh\n{ward_users}"),
                0o644,
            ),
            (
                "group",
                format!("root:x:0:\n{}\n", host_line("group", "ward")),
                0o644,
            ),
            (
                "shadow",
                "root:*:19000:0:99999:7:::\nward-store:!:19000::::::\nward-frontend:!:19000::::::\n"
                    .to_owned(),
                0o600,
            ),
            ("gshadow", "root:*::\nward:!::\n".to_owned(), 0o600),
        ] {
            let path = root.join("etc").join(name);
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::write(root.join("etc/nix/nix.conf"), CONF).unwrap();
        let r = Root {
            scratch,
            root,
            home,
        };
        let out = r.ward(&[
            "install",
            "--root",
            r.path_str(),
            "--no-start",
            "--build-users",
            "2",
        ]);
        assert!(out.status.success(), "ward install failed:\n{out}");
        r
    }

    fn path_str(&self) -> &str {
        self.root.to_str().expect("a UTF-8 temporary path")
    }

    fn socket(&self) -> PathBuf {
        chroot_socket(&self.root)
    }

    fn db(&self) -> PathBuf {
        self.root.join("nix/var/nix/db/db.sqlite")
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = isolated_command(&ward_bin(), &self.root.join("etc/nix"), &self.home);
        cmd.args(args);
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd
    }

    fn ward(&self, args: &[&str]) -> CmdOutput {
        run_to_exit(self.command(args, &[]), Duration::from_secs(60))
    }

    /// `ward daemon --store ROOT`, serving.
    fn start_daemon(&self) -> Running {
        let cmd = self.command(&["daemon", "--store", self.path_str()], &[]);
        let mut daemon = Running::spawn(cmd, &self.scratch.path().join("daemon.log"));
        daemon.wait_serving(&self.socket());
        daemon
    }

    /// `ward doctor --root ROOT --json EXTRA…` with `env`: the exit code and the entries.
    fn doctor(&self, extra: &[&str], env: &[(&str, &str)]) -> Doctor {
        let mut args = vec!["doctor", "--root", self.path_str(), "--json"];
        args.extend(extra);
        let out = run_to_exit(self.command(&args, env), Duration::from_secs(60));
        let code = out.status.code().unwrap_or(-1);
        let entries: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ward doctor printed no JSON ({e}):\n{out}"));
        Doctor {
            code,
            entries: entries.as_array().cloned().unwrap_or_default(),
            output: out.to_string(),
        }
    }
}

/// One run of the doctor.
struct Doctor {
    code: i32,
    entries: Vec<Value>,
    output: String,
}

impl Doctor {
    /// The entries of `check` that are warnings or errors (and not fixed).
    fn problems(&self, check: &str) -> Vec<&Value> {
        self.entries
            .iter()
            .filter(|e| e["check"] == check && e["status"] != "ok" && e["fixed"] != true)
            .collect()
    }

    /// The entries of `check` that `--fix` fixed.
    fn fixed(&self, check: &str) -> Vec<&Value> {
        self.entries
            .iter()
            .filter(|e| e["check"] == check && e["fixed"] == true)
            .collect()
    }

    /// The one open problem of `check` whose message contains `needle`; panics otherwise.
    fn finding(&self, check: &str, needle: &str) -> &Value {
        let found: Vec<&Value> = self
            .problems(check)
            .into_iter()
            .filter(|e| e["message"].as_str().unwrap_or("").contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one '{check}' finding mentioning '{needle}':\n{}",
            self.output
        );
        found[0]
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "exit code:\n{}", self.output);
    }
}

fn message(entry: &Value) -> &str {
    entry["message"].as_str().unwrap_or("")
}

fn fix_command(entry: &Value) -> &str {
    entry["fix_command"].as_str().unwrap_or("")
}

/// A freshly installed root with its daemon serving: every check about ward's own set-up
/// passes (exit 0 for them); then a socket with the wrong mode, a DB that is world-writable
/// and another's, each found and fixed while the daemon serves.
#[test]
fn a_healthy_daemon_passes_and_broken_modes_and_owners_are_fixed() {
    if !require_root("a_healthy_daemon_passes_and_broken_modes_and_owners_are_fixed") {
        return;
    }
    let r = Root::new("doctor-healthy");
    let _daemon = r.start_daemon();
    let own = [
        "--check",
        "config",
        "--check",
        "daemon",
        "--check",
        "socket",
        "--check",
        "build-users",
        "--check",
        "store",
        "--check",
        "database",
        "--check",
        "client",
        "--check",
        "units",
    ];
    let healthy = r.doctor(&own, &[]);
    healthy.assert_code(0);
    let daemon = &healthy.entries[1];
    assert_eq!(daemon["check"], "daemon");
    assert!(
        message(daemon).contains("(ward")
            && message(daemon).contains(&*r.socket().to_string_lossy()),
        "{}",
        healthy.output
    );
    // All checks run: whatever the kernel and disk say, nothing about ward's set-up.
    let all = r.doctor(&[], &[]);
    for check in [
        "config",
        "daemon",
        "socket",
        "build-users",
        "store",
        "database",
        "units",
    ] {
        assert!(all.problems(check).is_empty(), "{check}:\n{}", all.output);
    }

    // The socket, mode 0600: other users cannot connect.
    let socket = r.socket();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    let found = r.doctor(&["--check", "socket"], &[]);
    found.assert_code(1);
    let entry = found.finding("socket", "0600");
    assert!(message(entry).contains(&*socket.to_string_lossy()));
    assert!(
        fix_command(entry).starts_with("chmod 0666"),
        "{}",
        found.output
    );
    let fixed = r.doctor(&["--check", "socket", "--fix"], &[]);
    fixed.assert_code(0);
    assert_eq!(fixed.fixed("socket").len(), 1, "{}", fixed.output);
    assert_eq!(fs::metadata(&socket).unwrap().mode() & 0o777, 0o666);

    // The DB: world-writable and root's.
    let db = r.db();
    let owner = fs::metadata(&db).unwrap();
    fs::set_permissions(&db, fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::lchown(&db, Some(0), Some(0)).unwrap();
    let found = r.doctor(&["--check", "store"], &[]);
    found.assert_code(1);
    let db_text = db.to_string_lossy().into_owned();
    let mode = found.finding("store", "anyone can write the database");
    assert!(message(mode).contains(&db_text), "{}", found.output);
    let wrong_owner = found.finding("store", "owned by root:root");
    assert!(message(wrong_owner).contains(&db_text), "{}", found.output);
    assert!(fix_command(wrong_owner).contains("chown -h ward-store:ward"));
    let fixed = r.doctor(&["--check", "store", "--fix"], &[]);
    fixed.assert_code(0);
    assert_eq!(fixed.fixed("store").len(), 2, "{}", fixed.output);
    let now = fs::metadata(&db).unwrap();
    assert_eq!((now.uid(), now.gid()), (owner.uid(), owner.gid()));
    assert_eq!(now.mode() & 0o777, 0o640);
    r.doctor(&own, &[]).assert_code(0);
}

/// A socket file nobody listens on (a daemon killed with -9): named, and removed by --fix,
/// after which the doctor says there is no socket; a regular file in its place is named and
/// left alone.
#[test]
fn a_stale_socket_is_removed_and_a_file_in_its_place_is_not() {
    if !require_root("a_stale_socket_is_removed_and_a_file_in_its_place_is_not") {
        return;
    }
    let r = Root::new("doctor-stale");
    let socket = r.socket();
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&socket).unwrap());
    let found = r.doctor(&["--check", "daemon"], &[]);
    found.assert_code(1);
    let stale = found.finding("daemon", "stale socket");
    assert!(message(stale).contains(&*socket.to_string_lossy()));
    assert!(fix_command(stale).starts_with("rm "), "{}", found.output);

    let fixed = r.doctor(&["--check", "daemon", "--fix"], &[]);
    assert_eq!(fixed.fixed("daemon").len(), 1, "{}", fixed.output);
    assert!(!socket.exists(), "the stale socket is still there");
    // What remains is that no daemon runs.
    fixed.assert_code(1);
    fixed.finding("daemon", "does not exist");

    fs::write(&socket, b"not a socket").unwrap();
    let found = r.doctor(&["--check", "daemon", "--fix"], &[]);
    found.assert_code(1);
    found.finding("daemon", "is a regular file, not a socket");
    assert!(found.fixed("daemon").is_empty());
    assert_eq!(fs::read(&socket).unwrap(), b"not a socket");
}

/// Build users: one also in group wheel, one missing for max-jobs = 2, and a process left
/// running as a build user while no daemon runs. All three named; --fix takes the user out
/// of wheel, creates the missing one and kills the process.
#[test]
fn build_users_in_extra_groups_missing_or_with_stray_processes_are_fixed() {
    if !require_root("build_users_in_extra_groups_missing_or_with_stray_processes_are_fixed") {
        return;
    }
    let r = Root::new("doctor-users");
    r.doctor(&["--check", "build-users"], &[]).assert_code(0);
    let tool = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .arg("--root")
            .arg(&r.root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tool("groupadd", &["wheel"]);
    tool("usermod", &["--append", "--groups", "wheel", "nixbld1"]);
    tool("userdel", &["nixbld2"]);
    let passwd = fs::read_to_string(r.root.join("etc/passwd")).unwrap();
    let nixbld1 = passwd
        .lines()
        .find(|l| l.starts_with("nixbld1:"))
        .expect("nixbld1 in the root's passwd");
    let fields: Vec<&str> = nixbld1.split(':').collect();
    let (uid, gid) = (fields[2], fields[3]);
    let mut stray = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sleep",
            "120",
        ])
        .spawn()
        .expect("starting a process as nixbld1 (setpriv, util-linux)");
    // Until setpriv has switched, the process is still root's.
    let as_build_user = || {
        fs::read_to_string(format!("/proc/{}/status", stray.id()))
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.contains(uid)))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !as_build_user() {
        assert!(
            std::time::Instant::now() < deadline,
            "setpriv did not switch"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let found = r.doctor(&["--check", "build-users"], &[]);
    found.assert_code(1);
    let wheel = found.finding("build-users", "'wheel'");
    assert!(message(wheel).contains("'nixbld1'"), "{}", found.output);
    assert_eq!(
        fix_command(wheel),
        "usermod --gid nixbld --groups nixbld nixbld1"
    );
    let count = found.finding("build-users", "max-jobs = 2");
    assert_eq!(fix_command(count), "ward install");
    let process = found.finding("build-users", "owns processes");
    assert!(
        message(process).contains(&stray.id().to_string()) && message(process).contains("nixbld1"),
        "{}",
        found.output
    );
    assert_eq!(fix_command(process), "pkill -KILL -U nixbld1");

    let fixed = r.doctor(&["--check", "build-users", "--fix"], &[]);
    fixed.assert_code(0);
    assert_eq!(fixed.fixed("build-users").len(), 3, "{}", fixed.output);
    let status = stray.wait().unwrap();
    assert!(!status.success(), "the stray process was not killed");
    let group = fs::read_to_string(r.root.join("etc/group")).unwrap();
    let wheel_line = group.lines().find(|l| l.starts_with("wheel:")).unwrap();
    assert!(!wheel_line.contains("nixbld1"), "{wheel_line}");
    let passwd = fs::read_to_string(r.root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("nixbld2:")),
        "{passwd}"
    );
    r.doctor(&["--check", "build-users"], &[]).assert_code(0);
}

/// A corrupt DB fails the integrity check, which --fix does not touch.
#[test]
fn a_corrupt_database_is_named_and_left_alone() {
    if !require_root("a_corrupt_database_is_named_and_left_alone") {
        return;
    }
    let r = Root::new("doctor-db");
    drop(r.start_daemon());
    let db = r.db();
    // Everything into the main file, no WAL left beside it.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
            .unwrap();
    }
    r.doctor(&["--check", "database"], &[]).assert_code(0);
    let mut bytes = fs::read(&db).unwrap();
    let page = 4096;
    assert!(bytes.len() > 3 * page, "a DB of {} bytes", bytes.len());
    let end = bytes.len();
    for b in &mut bytes[2 * page..end] {
        *b = 0xa5;
    }
    fs::write(&db, &bytes).unwrap();
    let found = r.doctor(&["--check", "database", "--fix"], &[]);
    found.assert_code(1);
    let corrupt = &found.problems("database")[0];
    assert_eq!(corrupt["status"], "error", "{}", found.output);
    assert!(
        message(corrupt).contains(&*db.to_string_lossy()),
        "{}",
        found.output
    );
    assert!(
        fix_command(corrupt).contains(".recover"),
        "{}",
        found.output
    );
    assert!(found.fixed("database").is_empty());
    assert_eq!(
        fs::read(&db).unwrap(),
        bytes,
        "--fix changed the corrupt DB"
    );
}

/// Risky settings in ROOT/etc/nix/nix.conf and client settings that miss the daemon: each
/// named with the file and the line to set; --fix changes no nix.conf.
#[test]
fn risky_settings_and_clients_that_miss_the_daemon_are_named() {
    if !require_root("risky_settings_and_clients_that_miss_the_daemon_are_named") {
        return;
    }
    let r = Root::new("doctor-settings");
    let conf = r.root.join("etc/nix/nix.conf");
    let risky = "substituters = https://cache.example.org\ntrusted-users = root * @users\n\
                 require-sigs = false\nsandbox = false\nbuild-users-group =\n\
                 store = ssh://elsewhere\n";
    fs::write(&conf, risky).unwrap();
    let conf_text = conf.to_string_lossy().into_owned();
    let found = r.doctor(&["--check", "settings", "--check", "client", "--fix"], &[]);
    found.assert_code(1);
    assert!(
        found.entries.iter().all(|e| e["fixed"] == false),
        "{}",
        found.output
    );
    for (needle, status, line) in [
        ("'*'", "error", "trusted-users = root"),
        ("'@users'", "error", "trusted-users = root"),
        ("require-sigs = false", "error", "require-sigs = true"),
        ("sandbox = false", "warning", "sandbox = true"),
        (
            "build-users-group is empty",
            "error",
            "build-users-group = nixbld",
        ),
    ] {
        let entry = found.finding("settings", needle);
        assert_eq!(entry["status"], status, "{needle}: {}", found.output);
        assert!(message(entry).contains(&conf_text), "{}", found.output);
        assert_eq!(fix_command(entry), format!("set '{line}' in {conf_text}"));
    }
    let store = found.finding("client", "store = ssh://elsewhere");
    assert!(fix_command(store).contains(&conf_text), "{}", found.output);
    assert_eq!(
        fs::read_to_string(&conf).unwrap(),
        risky,
        "--fix changed nix.conf"
    );

    fs::write(&conf, CONF).unwrap();
    let elsewhere = r.doctor(
        &["--check", "client"],
        &[("NIX_REMOTE", "unix:///elsewhere/socket")],
    );
    elsewhere.assert_code(1);
    let remote = elsewhere.finding("client", "NIX_REMOTE=unix:///elsewhere/socket");
    assert!(
        message(remote).contains(&*r.socket().to_string_lossy()),
        "{}",
        elsewhere.output
    );
    assert_eq!(
        fix_command(remote),
        format!(
            "export NIX_REMOTE='unix://{}?root={}'",
            r.socket().display(),
            r.root.display()
        )
    );
    let here = format!("unix://{}?root={}", r.socket().display(), r.root.display());
    r.doctor(&["--check", "client"], &[("NIX_REMOTE", &here)])
        .assert_code(0);
    r.doctor(&["--check", "settings"], &[]).assert_code(1); // sandbox = false in CONF
}

/// The units: a socket unit that is not enabled is enabled by --fix; Nix's own service unit in
/// ward's place is named ("the daemon vanished after an OS update") and left for
/// `ward install`.
#[test]
fn units_not_enabled_or_replaced_by_nixs_are_named() {
    if !require_root("units_not_enabled_or_replaced_by_nixs_are_named") {
        return;
    }
    let r = Root::new("doctor-units");
    r.doctor(&["--check", "units"], &[]).assert_code(0);
    let link = r
        .root
        .join("etc/systemd/system/sockets.target.wants/nix-daemon.socket");
    fs::remove_file(&link).unwrap();
    let found = r.doctor(&["--check", "units"], &[]);
    found.assert_code(1);
    let disabled = found.finding("units", "not enabled");
    assert!(fix_command(disabled).contains("enable nix-daemon.socket"));
    let fixed = r.doctor(&["--check", "units", "--fix"], &[]);
    fixed.assert_code(0);
    assert!(
        fs::symlink_metadata(&link).is_ok(),
        "the socket was not enabled"
    );

    let service = r.root.join("etc/systemd/system/nix-daemon.service");
    fs::write(
        &service,
        "[Service]\nExecStart=@/usr/bin/nix-daemon nix-daemon --daemon\n",
    )
    .unwrap();
    let found = r.doctor(&["--check", "units", "--fix"], &[]);
    found.assert_code(1);
    let nix = found.finding("units", "Nix's own daemon is installed");
    assert!(
        message(nix).contains(&*service.to_string_lossy()),
        "{}",
        found.output
    );
    assert_eq!(fix_command(nix), "ward install");
}

/// Bad usage is exit code 64.
#[test]
fn bad_usage_exits_64() {
    let out = run_to_exit(
        {
            let mut cmd = Command::new(ward_bin());
            cmd.args(["doctor", "--root", "relative/dir"]);
            cmd
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64), "{out}");
    let out = run_to_exit(
        {
            let mut cmd = Command::new(ward_bin());
            cmd.args(["doctor", "--check", "no-such-check"]);
            cmd
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(64), "{out}");
}
