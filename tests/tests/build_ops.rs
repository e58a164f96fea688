//! The build ops' options and failures, through Debian's Nix 2.8 client and a sandboxed ward:
//! Nix's wording for a wrong system, missing system features, a missing builder and
//! `max-jobs = 0`; a clear refusal of floating content-addressed derivations; `keep-going`;
//! `cores`; `max-build-log-size`; QueryMissing (`--dry-run`); repair refused to untrusted
//! users; a client that disconnects cancels its build.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_e2e_tests::builds::{build, drv, expr, fails_registering_nothing, read_output, start};
use ward_e2e_tests::{ensure_test_user, DaemonOptions};

/// For the tests of a daemon run by an ordinary user: the requirements (root to set it up,
/// the Nix client, busybox), the test user, and a 0755 scratch directory under /tmp that the
/// user owns. `None` after a SKIPPED line.
fn user_scratch(test: &str, prefix: &str) -> Option<(nix::unistd::User, tempfile::TempDir)> {
    use std::os::unix::fs::PermissionsExt;
    if !ward_e2e_tests::require_root(test)
        || !ward_e2e_tests::require_nix(test)
        || !ward_e2e_tests::builds::have_busybox(test)
    {
        return None;
    }
    let user = ensure_test_user();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    Some((user, dir))
}

#[test]
fn failures_before_the_build_use_nix_wording() {
    let test = "failures_before_the_build_use_nix_wording";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let wrong_system = expr(
        &f,
        "plan9",
        r#"derivation { name = "plan9"; system = "mips64-plan9"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }"#,
    );
    let stderr = fails_registering_nothing(&f, &wrong_system, &[]);
    assert!(
        stderr.contains("a 'mips64-plan9' with features {} is required to build")
            && stderr.contains("but I am a '"),
        "{stderr}"
    );

    let features = expr(
        &f,
        "features",
        &drv(
            "needs-features",
            "echo > $out",
            r#"requiredSystemFeatures = [ "ward-test-nonexistent-feature" ];"#,
        ),
    );
    let stderr = fails_registering_nothing(&f, &features, &[]);
    assert!(
        stderr.contains("with features {ward-test-nonexistent-feature} is required to build"),
        "{stderr}"
    );

    let no_builder = expr(
        &f,
        "nobuilder",
        r#"derivation { name = "no-builder"; system = builtins.currentSystem; builder = "/no/such/builder"; }"#,
    );
    let stderr = fails_registering_nothing(&f, &no_builder, &[]);
    assert!(
        stderr.contains("/no/such/builder") && stderr.contains("no-builder.drv"),
        "{stderr}"
    );

    // Floating content-addressed derivations (Nix's experimental ca-derivations): refused
    // with a clear error, nothing registered.
    let floating = expr(
        &f,
        "floating",
        &drv(
            "floating-ca",
            "echo > $out",
            r#"__contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";"#,
        ),
    );
    let ca = ["--extra-experimental-features", "ca-derivations"];
    let mut args = vec![floating.to_str().unwrap()];
    args.extend(ca);
    let drv_path = f.ward.ok("nix-instantiate", &args).single_line();
    let before = f.ward.all_valid_paths();
    let mut args = vec!["--realise", drv_path.as_str()];
    args.extend(ca);
    let stderr = f.ward.fails("nix-store", &args).stderr.clone();
    assert!(
        stderr.contains("content-addressed") && stderr.contains("floating-ca.drv"),
        "{stderr}"
    );
    assert_eq!(f.ward.all_valid_paths(), before, "{stderr}");

    let trivial = expr(&f, "jobs", &drv("no-jobs", "echo > $out", ""));
    let stderr = fails_registering_nothing(&f, &trivial, &["--max-jobs", "0"]);
    assert!(
        stderr.contains(
            "unable to start any build; either increase '--max-jobs' or enable remote builds"
        ),
        "{stderr}"
    );
}

#[test]
fn keep_going_builds_what_it_can() {
    let test = "keep_going_builds_what_it_can";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let body = format!(
        "[ ({}) ({}) ]",
        drv("bad-one", "exit 1", ""),
        drv("good-one", "sleep 1; echo good > $out", "")
    );
    let file = expr(&f, "pair", &body);
    let drvs = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .lines();
    assert_eq!(drvs.len(), 2, "{drvs:?}");
    let good_drv = drvs.iter().find(|d| d.ends_with("good-one.drv")).unwrap();
    let good_out = f
        .ward
        .ok("nix-store", &["-q", "--outputs", good_drv])
        .single_line();
    let mut args = vec!["--realise", "--keep-going"];
    args.extend(drvs.iter().map(String::as_str));
    let stderr = f.ward.fails("nix-store", &args).stderr.clone();
    assert!(stderr.contains("bad-one"), "{stderr}");
    assert!(
        f.ward.all_valid_paths().contains(&good_out),
        "the good build ran to the end: {stderr}"
    );
    assert_eq!(read_output(&f, &good_out), "good\n");
}

#[test]
fn cores_and_max_build_log_size() {
    let test = "cores_and_max_build_log_size";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let cores = expr(
        &f,
        "cores",
        &drv("cores", "echo $NIX_BUILD_CORES > $out", ""),
    );
    let out = f
        .ward
        .ok(
            "nix-build",
            &[cores.to_str().unwrap(), "--no-out-link", "--cores", "3"],
        )
        .single_line();
    assert_eq!(read_output(&f, &out), "3\n");

    // A builder writing log as fast as it can is killed at the limit; the daemon's memory
    // stays bounded (the log is streamed, never held whole).
    let chatty = expr(
        &f,
        "chatty",
        &drv("chatty", "yes ward-log-line; echo never > $out", ""),
    );
    let started = Instant::now();
    let stderr =
        fails_registering_nothing(&f, &chatty, &["--option", "max-build-log-size", "200000"]);
    assert!(
        stderr.contains("killed after writing more than 200000 bytes of log output"),
        "{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // 32 MiB of log through the daemon to the client: no process of the daemon ever held
    // much of it (peak resident memory, VmHWM, stays far below the log's size).
    let flood = expr(
        &f,
        "flood",
        &drv(
            "flood",
            "yes ward-flood-line-of-some-length; echo never > $out",
            "",
        ),
    );
    let limit = 32u64 << 20;
    let started = Instant::now();
    let stderr = fails_registering_nothing(
        &f,
        &flood,
        &["--option", "max-build-log-size", &limit.to_string()],
    );
    assert!(
        stderr.len() as u64 > limit / 2,
        "the client got the log ({} bytes)",
        stderr.len()
    );
    let elapsed = started.elapsed();
    for pid in f.daemon.process_tree() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let hwm_kib: u64 = field("VmHWM:")
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(
            hwm_kib < 28 << 10,
            "{} (pid {pid}) peaked at {hwm_kib} KiB while streaming {limit} bytes of log in {elapsed:?}",
            field("Name:")
        );
    }
}

#[test]
fn dry_run_reports_what_would_be_built() {
    let test = "dry_run_reports_what_would_be_built";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(&f, "dry", &drv("dry-run", "echo > $out", ""));
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let dry = f
        .ward
        .ok("nix-store", &["--realise", "--dry-run", &drv_path])
        .stderr
        .clone();
    assert!(
        dry.contains("this derivation will be built:") && dry.contains(&drv_path),
        "{dry}"
    );
    let out = build(&f.ward, &file);
    let dry = f
        .ward
        .ok("nix-store", &["--realise", "--dry-run", &drv_path])
        .stderr
        .clone();
    assert!(!dry.contains("will be built"), "{dry}");
    assert!(f.ward.all_valid_paths().contains(&out));
}

#[test]
fn repair_is_refused_to_untrusted_users() {
    let test = "repair_is_refused_to_untrusted_users";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let file = expr(&f, "repairme", &drv("repair-me", "echo ok > $out", ""));
    for p in [file.parent().unwrap(), file.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = build(&as_alice, &file);
    let stderr = as_alice
        .fails(
            "nix-build",
            &[file.to_str().unwrap(), "--no-out-link", "--repair"],
        )
        .stderr
        .clone();
    assert!(stderr.contains("repairing is not allowed"), "{stderr}");
    // Root may.
    let again = f
        .ward
        .ok(
            "nix-build",
            &[file.to_str().unwrap(), "--no-out-link", "--repair"],
        )
        .single_line();
    assert_eq!(again, out);
}

#[test]
fn a_client_that_disconnects_cancels_its_build() {
    let test = "a_client_that_disconnects_cancels_its_build";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    // A sleep whose argument no other process on the host has: its cmdline is the marker.
    let seconds = 300_000 + std::process::id() % 100_000;
    let marker = format!("sleep\0{seconds}");
    let file = expr(
        &f,
        "abandoned",
        &drv("abandoned", &format!("sleep {seconds}"), ""),
    );
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let running = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&marker)
                    .then_some(name)
            })
            .collect()
    };
    let mut client = Command::new("nix-store");
    client
        .args(["--realise", &drv_path])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    client.env("NIX_REMOTE", f.daemon.layout().client_url());
    for (k, v) in f.daemon.layout().client_env() {
        client.env(k, v);
    }
    client.env("HOME", f.env.dir("cancel-home"));
    let mut child = client.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running().is_empty() {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the build outlived its client: {:?}",
            running()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The daemon goes on serving, and the same derivation can be built again later.
    let quick = expr(&f, "after", &drv("after-cancel", "echo fine > $out", ""));
    let out = build(&f.ward, &quick);
    assert_eq!(read_output(&f, &out), "fine\n");
}

#[test]
fn an_ordinary_user_runs_a_single_user_daemon_that_builds_sandboxed() {
    let test = "an_ordinary_user_runs_a_single_user_daemon_that_builds_sandboxed";
    let Some((alice, dir)) = user_scratch(test, "ward-e2e-alice-") else {
        return;
    };
    let root = dir.path();
    std::fs::write(
        root.join("nix.conf"),
        format!(
            "sandbox = true\nsandbox-paths = /bin/sh={}\n",
            ward_e2e_tests::builds::BUSYBOX
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("whoami.nix"),
        r#"derivation { name = "user-build"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "id -u > $out; cat /proc/self/uid_map >> $out; grep NoNewPrivs /proc/self/status >> $out" ]; }"#,
    )
    .unwrap();
    nix::unistd::chown(root, Some(alice.uid), Some(alice.gid)).unwrap();
    for name in ["nix.conf", "whoami.nix"] {
        nix::unistd::chown(&root.join(name), Some(alice.uid), Some(alice.gid)).unwrap();
    }
    let store = root.join("store");
    let (uid, gid) = (alice.uid.as_raw(), alice.gid.as_raw());
    // setpriv (util-linux) sets the user's uid, gid and its own supplementary groups.
    let as_alice = |program: &std::path::Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env_clear()
        .env("HOME", root)
        .env("PATH", "/usr/bin:/bin")
        .env("NIX_CONF_DIR", root)
        .current_dir(root);
        cmd
    };
    let mut daemon = as_alice(&ward_e2e_tests::daemon::ward_bin());
    daemon
        .args(["daemon", "--store", store.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("daemon.log")).unwrap());
    let mut daemon = daemon.spawn().unwrap();
    let socket = store.join("nix/var/nix/daemon-socket/socket");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut client = as_alice(std::path::Path::new("/usr/bin/nix-build"));
    client.args(["whoami.nix", "--no-out-link"]).env(
        "NIX_REMOTE",
        format!("unix://{}?root={}", socket.display(), store.display()),
    );
    let out = client.output().unwrap();
    let log = std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        out.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let real = store.join(path.trim_start_matches('/'));
    let text = std::fs::read_to_string(&real).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Sandboxed with an unprivileged user namespace: uid 1000 inside is the user outside.
    assert_eq!(lines[0], "1000", "{text}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, vec!["1000", &uid.to_string(), "1"], "{text}");
    assert!(lines[2].ends_with('1'), "{text}");
    assert!(log.contains("sandbox check passed"), "{log}");
    // Let the test's cleanup remove what the user's store-writer made read-only.
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(root).status();
}

/// Runs `ward daemon` as `user` on a native store under a non-default `NIX_STORE_DIR` (as
/// Nix's own test suite runs its daemon), builds `expression` with Debian's `nix-build` as
/// the same user, and returns the output's contents and the daemon's log.
fn build_as_user_on_native_store(
    user: &nix::unistd::User,
    root: &std::path::Path,
    conf: &str,
    expression: &str,
) -> (String, String) {
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let env = [
        ("HOME", root.to_path_buf()),
        ("PATH", "/usr/bin:/bin".into()),
        ("NIX_CONF_DIR", root.to_path_buf()),
        ("NIX_STORE_DIR", root.join("store")),
        ("NIX_STATE_DIR", root.join("var/nix")),
        ("NIX_LOG_DIR", root.join("var/log/nix")),
        ("NIX_DAEMON_SOCKET_PATH", root.join("daemon.sock")),
    ];
    let as_user = |program: &std::path::Path| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--init-groups",
            "--",
        ])
        .arg(program)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root);
        cmd
    };
    for (name, text) in [("nix.conf", conf), ("build.nix", expression)] {
        std::fs::write(root.join(name), text).unwrap();
        nix::unistd::chown(&root.join(name), Some(user.uid), Some(user.gid)).unwrap();
    }
    let log_file = root.join("daemon.log");
    let mut daemon = as_user(&ward_e2e_tests::daemon::ward_bin())
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let socket = root.join("daemon.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = as_user(std::path::Path::new("/usr/bin/nix-build"))
        .args(["build.nix", "--no-out-link"])
        .env("NIX_REMOTE", format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    let _ = std::fs::remove_file(&socket);
    assert!(
        out.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        path.starts_with(&format!("{}/", root.join("store").display())),
        "{path}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    (text, log)
}

#[test]
fn an_ordinary_user_builds_on_a_native_store_under_a_non_default_store_dir() {
    let test = "an_ordinary_user_builds_on_a_native_store_under_a_non_default_store_dir";
    let Some((alice, dir)) = user_scratch(test, "ward-e2e-native-") else {
        return;
    };
    let root = dir.path();
    let uid = alice.uid.as_raw();

    // Sandboxed, in an unprivileged user namespace: uid 1000 inside is the user outside.
    let (text, log) = build_as_user_on_native_store(
        &alice,
        root,
        &format!(
            "sandbox = true\nsandbox-paths = /bin/sh={}\nsubstituters =\n",
            ward_e2e_tests::builds::BUSYBOX
        ),
        r#"derivation { name = "native-sandboxed"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "id -u > $out; cat /proc/self/uid_map >> $out" ]; }"#,
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1000", "{text}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, vec!["1000", &uid.to_string(), "1"], "{text}");
    assert!(log.contains("sandbox check passed"), "{log}");

    // sandbox = false on the same store: on the host, as the user itself.
    let (text, log) = build_as_user_on_native_store(
        &alice,
        root,
        "sandbox = false\nsubstituters =\n",
        r#"derivation { name = "native-unsandboxed"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/usr/bin/id -u > $out; if [ -d /home ]; then echo host >> $out; fi" ]; }"#,
    );
    assert_eq!(text, format!("{uid}\nhost\n"), "{log}");
    // Let the test's cleanup remove what the user's store-writer made read-only.
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(root).status();
}

#[test]
fn without_user_namespaces_a_sandbox_is_refused_clearly_and_sandbox_false_builds() {
    let test = "without_user_namespaces_a_sandbox_is_refused_clearly_and_sandbox_false_builds";
    let Some((alice, dir)) = user_scratch(test, "ward-e2e-nouserns-") else {
        return;
    };
    let root = dir.path();
    if Command::new("python3").arg("--version").output().is_err() {
        ward_e2e_tests::notice(&format!("SKIPPED {test}: needs python3"));
        return;
    }
    use std::os::unix::process::CommandExt;
    let helper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("support/no-user-namespaces.py");
    let (uid, gid) = (alice.uid.as_raw(), alice.gid.as_raw());
    // The helper needs a user namespace of its own in which it may lower the limit; where
    // the host gives none, there is nothing to simulate.
    let probe = Command::new("python3")
        .arg(&helper)
        .arg(uid.to_string())
        .arg("/bin/true")
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        ward_e2e_tests::notice(&format!(
            "SKIPPED {test}: cannot make a user namespace without further ones here: {probe:?}"
        ));
        return;
    }
    let expression = root.join("build.nix");
    std::fs::write(
        &expression,
        r#"derivation { name = "wants-a-sandbox"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/usr/bin/id -u > $out" ]; }"#,
    )
    .unwrap();
    // A daemon run by the user where the kernel gives it no user namespace, on a native
    // store (`NIX_STORE_DIR`) or a diverted one (`--store DIR`), and one nix-build.
    let build = |conf: &str, native: bool| -> (std::process::Output, String, std::path::PathBuf) {
        std::fs::write(root.join("nix.conf"), conf).unwrap();
        let (store_root, socket, remote);
        let mut daemon = Command::new("python3");
        daemon
            .arg(&helper)
            .arg(uid.to_string())
            .arg(ward_e2e_tests::daemon::ward_bin())
            .arg("daemon")
            .env_clear()
            .env("HOME", root)
            .env("PATH", "/usr/bin:/bin")
            .env("NIX_CONF_DIR", root)
            .current_dir(root);
        if native {
            store_root = root.join("native");
            socket = root.join("native.sock");
            daemon
                .env("NIX_STORE_DIR", store_root.join("store"))
                .env("NIX_STATE_DIR", store_root.join("var/nix"))
                .env("NIX_LOG_DIR", store_root.join("var/log/nix"))
                .env("NIX_DAEMON_SOCKET_PATH", &socket);
            remote = format!("unix://{}", socket.display());
        } else {
            store_root = root.join("diverted");
            socket = store_root.join("nix/var/nix/daemon-socket/socket");
            daemon.args(["--store", store_root.to_str().unwrap()]);
            remote = format!("unix://{}?root={}", socket.display(), store_root.display());
        }
        let log_file = root.join("daemon.log");
        let mut daemon = daemon
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = nix::unistd::Pid::from_raw(daemon.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut client = Command::new("setpriv");
        client
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--init-groups",
                "--",
                "/usr/bin/nix-build",
            ])
            .arg(&expression)
            .arg("--no-out-link")
            .env_clear()
            .env("HOME", root)
            .env("PATH", "/usr/bin:/bin")
            .env("NIX_CONF_DIR", root)
            .env("NIX_REMOTE", remote)
            .current_dir(root);
        if native {
            client.env("NIX_STORE_DIR", store_root.join("store"));
        }
        let out = client.output().unwrap();
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = daemon.wait();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        (out, log, store_root)
    };
    let refused_clearly = |out: &std::process::Output, log: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}\n{log}");
        for needle in [
            "sandbox check failed",
            "user namespace",
            "'sandbox = false'",
        ] {
            assert!(stderr.contains(needle), "{needle:?} in: {stderr}\n{log}");
        }
    };

    // A sandbox was asked for and cannot be had: refused, saying why and what to do.
    let sandboxed = format!(
        "sandbox = true\nsandbox-paths = /bin/sh={}\nsubstituters =\n",
        ward_e2e_tests::builds::BUSYBOX
    );
    let (out, log, _) = build(&sandboxed, true);
    refused_clearly(&out, &log);

    // sandbox = false: built without one, as the user.
    let (out, log, store_root) = build("sandbox = false\nsubstituters =\n", true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{log}");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let base = path.rsplit_once('/').unwrap().1;
    let text = std::fs::read_to_string(store_root.join("store").join(base)).unwrap();
    assert_eq!(text, format!("{uid}\n"));

    // A diverted store builds only in the sandbox (as in Nix), sandbox = false or not: here
    // that is the same clear refusal.
    let (out, log, _) = build("sandbox = false\nsubstituters =\n", false);
    refused_clearly(&out, &log);
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(root).status();
}

#[test]
fn the_oldest_client_ward_accepts_gets_its_build_logs_and_older_ones_are_refused() {
    // ward serves protocol 1.21 (Nix 2.1) and newer, where build logs travel as activity
    // results; the plain STDERR_NEXT lines of clients before 1.20 are never needed, and
    // such a client is refused at the handshake, as the log says.
    let test = "the_oldest_client_ward_accepts_gets_its_build_logs_and_older_ones_are_refused";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    assert!(
        ward_e2e_tests::wire::WorkerClient::connect_as(f.daemon.socket(), 19).is_err(),
        "a protocol 1.19 client is refused"
    );
    let log = f.daemon.log();
    assert!(log.contains("too old"), "the refusal is logged: {log}");
    let file = expr(
        &f,
        "old-client",
        &drv(
            "old-client",
            "echo a-line-for-an-old-client; echo done > $out",
            "",
        ),
    );
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let mut old = ward_e2e_tests::wire::WorkerClient::connect_as(f.daemon.socket(), 21)
        .expect("a protocol 1.21 client connects");
    assert_eq!(old.negotiated_minor(), 21);
    old.build_paths_plain(&[&format!("{drv_path}!out")])
        .expect("BuildPaths from a 1.21 client");
    assert!(
        old.activity_messages >= 3,
        "the build's start, its log line and its stop: {}",
        old.activity_messages
    );
    let out = f
        .ward
        .ok("nix-store", &["-q", "--outputs", &drv_path])
        .single_line();
    assert_eq!(read_output(&f, &out), "done\n");
}
