//! `post-build-hook` through ward with Debian's Nix 2.8 client: after each build the hook runs
//! with `DRV_PATH` and `OUT_PATHS`, its output reaches `nix-build` as Nix shows it, and it
//! never runs as root — a hook program runs as its owner, a root-owned one only as
//! `--hook-user`, and one others could change not at all. The last test is the CI use of a
//! hook: it pushes what was built to a binary cache with `nix copy`.
//!
//! The daemon runs as root in all of them (ward's broker is root when started by root, which
//! is where "never as root" means something); as a normal user they are skipped.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use ward_e2e_tests::builds::{self, drv, expr};
use ward_e2e_tests::{ensure_test_user, require_root, DaemonOptions, Fixture};

/// A directory for hook programs that every user can read (tests' scratch space may not be).
struct HookDir {
    dir: tempfile::TempDir,
}

impl HookDir {
    fn new() -> HookDir {
        let dir = tempfile::Builder::new()
            .prefix("ward-hooks-")
            .tempdir()
            .expect("creating the hook directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        HookDir { dir }
    }

    /// Writes an executable `/bin/sh` script `name` with `body`, mode `mode`, owned by `uid`.
    fn script(&self, name: &str, body: &str, mode: u32, uid: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        chown(&path, Some(uid), None).unwrap();
        path
    }

    /// A directory owned by `uid` where a hook leaves its record.
    fn record_dir(&self, uid: u32) -> PathBuf {
        let path = self.dir.path().join("records");
        fs::create_dir_all(&path).unwrap();
        chown(&path, Some(uid), None).unwrap();
        path
    }
}

/// A hook that records who ran it and what it was told, and prints one line.
fn recording_hook(records: &Path) -> String {
    format!(
        r#"set -e
{{
  echo "uid=$(id -u)"
  echo "drv=$DRV_PATH"
  echo "outs=$OUT_PATHS"
  echo "home=$HOME"
  grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
}} > {records}/record
echo "hook saw $OUT_PATHS"
"#,
        records = records.display()
    )
}

fn record(records: &Path) -> Option<String> {
    fs::read_to_string(records.join("record")).ok()
}

/// A root daemon with `hook` as its post-build-hook (and `extra` options), or `None` when the
/// test cannot run here.
fn daemon_with_hook(test: &str, hook: &Path, extra: DaemonOptions) -> Option<Fixture> {
    if !require_root(test) {
        return None;
    }
    builds::start(
        test,
        extra.conf(format!("post-build-hook = {}", hook.display())),
    )
}

/// Instantiates a derivation writing `text`, returning the .nix file, the .drv and its output.
fn instantiate(f: &Fixture, name: &str, text: &str) -> (PathBuf, String, String) {
    let file = expr(f, name, &drv(name, &format!("echo {text} > $out"), ""));
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let out = f
        .ward
        .ok("nix-store", &["-q", "--outputs", &drv_path])
        .single_line();
    (file, drv_path, out)
}

#[test]
fn the_hook_runs_after_each_build_as_its_owner_and_its_output_reaches_the_client() {
    let test = "the_hook_runs_after_each_build_as_its_owner_and_its_output_reaches_the_client";
    if !require_root(test) {
        return;
    }
    let alice = ensure_test_user();
    let hooks = HookDir::new();
    let records = hooks.record_dir(alice.uid.as_raw());
    let hook = hooks.script(
        "record",
        &recording_hook(&records),
        0o755,
        alice.uid.as_raw(),
    );
    let Some(f) = daemon_with_hook(test, &hook, DaemonOptions::single_user()) else {
        return;
    };
    let (file, drv_path, out) = instantiate(&f, "hooked", "built");
    let run = f
        .ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    assert_eq!(run.single_line(), out);
    // Nix's simple logger prints each line of the hook as "post-build-hook: …".
    run.assert_stderr_contains(&format!("post-build-hook: hook saw {out}"));

    let rec = record(&records).expect("the hook ran and wrote its record");
    assert!(rec.contains(&format!("uid={}\n", alice.uid)), "{rec}");
    assert!(rec.contains(&format!("drv={drv_path}\n")), "{rec}");
    assert!(rec.contains(&format!("outs={out}\n")), "{rec}");
    assert!(
        rec.contains(&format!("home={}\n", alice.dir.display())),
        "{rec}"
    );
    assert!(rec.contains("CapEff:\t0000000000000000"), "{rec}");
    assert!(rec.contains("NoNewPrivs:\t1"), "{rec}");

    // A path that is already valid is not built again, so the hook does not run again.
    fs::remove_file(records.join("record")).unwrap();
    f.ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    assert!(record(&records).is_none(), "no build, no hook");
}

#[test]
fn a_root_owned_hook_runs_only_as_hook_user() {
    let test = "a_root_owned_hook_runs_only_as_hook_user";
    if !require_root(test) {
        return;
    }
    let alice = ensure_test_user();
    let hooks = HookDir::new();
    let records = hooks.record_dir(alice.uid.as_raw());
    let hook = hooks.script("record", &recording_hook(&records), 0o755, 0);

    // Without --hook-user the build fails, naming the hook and both fixes; as in Nix, the
    // outputs were registered before the hook ran and stay valid.
    let Some(f) = daemon_with_hook(test, &hook, DaemonOptions::single_user()) else {
        return;
    };
    let (file, _drv, out) = instantiate(&f, "root-hooked", "built");
    let failed = f
        .ward
        .fails("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    failed
        .assert_stderr_contains(&format!("post-build-hook '{}'", hook.display()))
        .assert_stderr_contains("owned by root")
        .assert_stderr_contains("--hook-user");
    assert!(record(&records).is_none(), "the hook never ran");
    assert!(f.ward.all_valid_paths().contains(&out), "{out} stays valid");
    drop(f);

    // With --hook-user it runs, as that user.
    let Some(f) = daemon_with_hook(
        &format!("{test}-with-user"),
        &hook,
        DaemonOptions::single_user()
            .arg("--hook-user")
            .arg(alice.name.clone()),
    ) else {
        return;
    };
    let (file, _drv, out) = instantiate(&f, "root-hooked", "again");
    f.ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let rec = record(&records).expect("the hook ran");
    assert!(rec.contains(&format!("uid={}\n", alice.uid)), "{rec}");
    assert!(rec.contains(&format!("outs={out}\n")), "{rec}");
}

#[test]
fn a_hook_others_can_change_is_refused_and_a_failing_hook_fails_the_build() {
    let test = "a_hook_others_can_change_is_refused_and_a_failing_hook_fails_the_build";
    if !require_root(test) {
        return;
    }
    let alice = ensure_test_user();
    let hooks = HookDir::new();
    let records = hooks.record_dir(alice.uid.as_raw());
    let writable = hooks.script(
        "writable",
        &recording_hook(&records),
        0o775,
        alice.uid.as_raw(),
    );
    let Some(f) = daemon_with_hook(test, &writable, DaemonOptions::single_user()) else {
        return;
    };
    let (file, _, _) = instantiate(&f, "writable-hooked", "built");
    f.ward
        .fails("nix-build", &[file.to_str().unwrap(), "--no-out-link"])
        .assert_stderr_contains("is writable by its group or by others");
    assert!(record(&records).is_none(), "the hook never ran");
    drop(f);

    let failing = hooks.script(
        "failing",
        "echo about to fail; echo on stderr >&2; exit 3",
        0o755,
        alice.uid.as_raw(),
    );
    let Some(f) = daemon_with_hook(
        &format!("{test}-failing"),
        &failing,
        DaemonOptions::single_user(),
    ) else {
        return;
    };
    let (file, _, out) = instantiate(&f, "fail-hooked", "built");
    let failed = f
        .ward
        .fails("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    failed
        .assert_stderr_contains("post-build-hook: about to fail")
        .assert_stderr_contains("post-build-hook: on stderr")
        .assert_stderr_contains(&format!(
            "program '{}' failed with exit code 3",
            failing.display()
        ));
    assert!(f.ward.all_valid_paths().contains(&out), "{out} stays valid");
    // The daemon goes on serving.
    f.ward.ok("nix-store", &["--verify-path", &out]);
}

#[test]
fn a_hook_pushes_what_was_built_to_a_binary_cache() {
    let test = "a_hook_pushes_what_was_built_to_a_binary_cache";
    if !require_root(test) {
        return;
    }
    let alice = ensure_test_user();
    let hooks = HookDir::new();
    let cache = hooks.record_dir(alice.uid.as_raw());
    // The hook of Nix's manual, minus the signing key (ward signs with secret-key-files).
    let hook = hooks.script(
        "upload",
        &format!(
            "set -eu\nset -f\nexport IFS=' '\necho \"Uploading paths\" $OUT_PATHS\n\
             exec nix copy --to 'file://{}?compression=none' $OUT_PATHS",
            cache.display()
        ),
        0o755,
        alice.uid.as_raw(),
    );
    let Some(f) = daemon_with_hook(test, &hook, DaemonOptions::multi_user()) else {
        return;
    };
    let (file, _, out) = instantiate(&f, "pushed", "to-the-cache");
    let run = f
        .ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    run.assert_stderr_contains(&format!("post-build-hook: Uploading paths {out}"));
    let base = out.rsplit('/').next().unwrap();
    let narinfo = fs::read_to_string(cache.join(format!("{}.narinfo", &base[..32])))
        .unwrap_or_else(|e| panic!("the hook uploaded {out}: {e}\n{}", run.stderr));
    assert!(
        narinfo.contains(&format!("StorePath: {out}\n")),
        "{narinfo}"
    );
    assert!(narinfo.contains("Compression: none"), "{narinfo}");
}

#[test]
fn a_hook_whose_client_went_away_is_killed_with_what_it_started() {
    let test = "a_hook_whose_client_went_away_is_killed_with_what_it_started";
    if !require_root(test) {
        return;
    }
    let alice = ensure_test_user();
    let hooks = HookDir::new();
    // A sleep whose argument no other process on the host has, started in the background by
    // the hook (same process group) and waited for.
    let seconds = 400_000 + std::process::id() % 100_000;
    let marker = format!("sleep\0{seconds}");
    let hook = hooks.script(
        "sleeper",
        &format!("sleep {seconds} &\nwait"),
        0o755,
        alice.uid.as_raw(),
    );
    let Some(f) = daemon_with_hook(test, &hook, DaemonOptions::single_user()) else {
        return;
    };
    let (_, drv_path, out) = instantiate(&f, "slow-hooked", "built");
    let running = || -> usize {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let cmdline = fs::read(format!("/proc/{name}/cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&marker)
                    .then_some(())
            })
            .count()
    };
    let mut client = std::process::Command::new("nix-store");
    client
        .args(["--realise", &drv_path])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env("NIX_REMOTE", f.daemon.layout().client_url())
        .env("HOME", f.env.dir("cancel-home"));
    for (k, v) in f.daemon.layout().client_env() {
        client.env(k, v);
    }
    let mut child = client.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook never started: {}",
            f.daemon.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while running() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook's sleep outlived the client by 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The build itself had finished: its output is valid, and the daemon goes on serving.
    assert!(f.ward.all_valid_paths().contains(&out), "{out} stays valid");
}
