//! Hostile builders, built through Debian's Nix 2.8 client by a multi-user ward (root only):
//! each tries to get out of its sandbox, and the test asserts that the attempt failed and the
//! host is unchanged. A canary build reports what the sandbox looks like from inside, compared
//! with the policy.
//!
//! Each derivation runs its attempts with busybox and writes one line per attempt to `$out`
//! (`ESCAPED <what>` when an attempt worked); the test then also looks at the host itself.
//! Extended attributes (which busybox cannot set) and the i386 and x32 system call entry
//! points are tried by static C helpers compiled by the test with `cc` (which every Rust
//! toolchain on Linux needs anyway) and bound into the sandbox with `sandbox-paths`.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_e2e_tests::builds::{build, drv, expr, read_output, start};
use ward_e2e_tests::{DaemonOptions, Fixture};

/// A shell snippet that runs `cmd` and records whether it worked.
fn attempt(what: &str, cmd: &str) -> String {
    format!("if {cmd} >/dev/null 2>&1; then echo \"ESCAPED {what}\" >> $out; else echo \"denied {what}\" >> $out; fi; ")
}

fn store_entries(f: &Fixture) -> BTreeSet<String> {
    std::fs::read_dir(&f.daemon.layout().real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".lock"))
        .collect()
}

/// A first line proving that an attempt that may work is reported as working (so that
/// "denied" means denied, not a broken snippet).
const CONTROL: &str = "if test -r /etc/passwd; then echo control-ok >> $out; fi; ";

fn assert_all_denied(text: &str, expected_attempts: usize) {
    assert!(
        text.contains("control-ok"),
        "the control attempt ran:\n{text}"
    );
    let denied = text.lines().filter(|l| l.starts_with("denied ")).count();
    assert!(
        !text.contains("ESCAPED"),
        "a hostile builder got out:\n{text}"
    );
    assert_eq!(denied, expected_attempts, "every attempt ran:\n{text}");
}

#[test]
fn a_builder_cannot_read_secrets_reach_the_network_or_the_daemon() {
    let test = "a_builder_cannot_read_secrets_reach_the_network_or_the_daemon";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    // A service on the host's loopback: the build must not reach it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = f.daemon.socket().display().to_string();
    let attempts = [
        ("read /etc/shadow", "cat /etc/shadow".to_string()),
        ("list /root", "ls /root/.".to_string()),
        ("list /home", "ls /home/.".to_string()),
        (
            "read the host's passwd",
            "grep -q ward-test-alice /etc/passwd".to_string(),
        ),
        (
            "reach the internet",
            "wget -q -T 3 -O /dev/null http://1.1.1.1/".to_string(),
        ),
        (
            "reach a host loopback service",
            format!("wget -q -T 3 -O /dev/null http://127.0.0.1:{port}/"),
        ),
        ("see the daemon socket", format!("test -e {socket}")),
        (
            "see the default daemon socket",
            "test -e /nix/var/nix/daemon-socket/socket".to_string(),
        ),
        (
            "see the test's own process",
            format!("test -e /proc/{}/status", std::process::id()),
        ),
        (
            "see the host's mounts",
            "grep -q ' /home ' /proc/mounts".to_string(),
        ),
        (
            "use a non-loopback network device",
            "grep -vE '^ *(lo|Inter|face)' /proc/net/dev | grep -q :".to_string(),
        ),
    ];
    let mut script = format!(": > $out; {CONTROL}");
    for (what, cmd) in &attempts {
        script.push_str(&attempt(what, cmd));
    }
    let file = expr(&f, "nosy", &drv("nosy", &script, ""));
    let out = build(&f.ward, &file);
    let text = read_output(&f, &out);
    assert_all_denied(&text, attempts.len());
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut conn, peer)) => {
            let _ = conn.read(&mut buf);
            panic!("the build connected to the host's loopback service from {peer}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

#[test]
fn a_builder_cannot_write_the_store_inputs_or_set_id_bits_and_leaves_no_process() {
    let test = "a_builder_cannot_write_the_store_inputs_or_set_id_bits_and_leaves_no_process";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let dep_file = expr(&f, "dep", &drv("victim-dep", "echo original > $out", ""));
    let dep = build(&f.ward, &dep_file);
    // Another derivation's output, valid but not an input of the vandal.
    let other_file = expr(
        &f,
        "other",
        &drv("victim-other", "echo untouched > $out", ""),
    );
    let other = build(&f.ward, &other_file);
    // A sleep whose argument no other process has: its cmdline is the marker.
    let seconds = 400_000 + std::process::id() % 100_000;
    let marker = format!("sleep\0{seconds}");
    let attempts = [
        ("write an input", format!("sh -c 'echo tampered > {dep}'")),
        ("remove an input", format!("rm -f {dep}")),
        (
            "set the setuid bit",
            "touch suid && chmod u+s suid && test -u suid".to_string(),
        ),
        (
            "set the setgid bit",
            "touch sgid && chmod g+s sgid && test -g sgid".to_string(),
        ),
        ("mount a filesystem", "mount -t tmpfs none /tmp".to_string()),
        ("become root", "su -c true".to_string()),
        ("make a device node", "mknod dev c 1 3".to_string()),
    ];
    // The sandbox's own store directory is writable (outputs go there); what is written
    // there besides the output must never reach the real store.
    let mut script = format!(
        ": > $out; {CONTROL}echo x > $NIX_STORE/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-planted; \
         echo tampered > {other} 2>/dev/null; "
    );
    for (what, cmd) in &attempts {
        script.push_str(&attempt(what, cmd));
    }
    // A process that tries to outlive the build: double fork and a new session.
    script.push_str(&format!(
        "(setsid sh -c 'sleep {seconds}' &) ; sleep 1; test -n \"$(ps -o args | grep 'sleep {seconds}' | grep -v grep)\" && echo spawned >> $out"
    ));
    let file = expr(
        &f,
        "vandal",
        &format!(
            "let dep = import {}; in {}",
            dep_file.display(),
            drv("vandal", &script, "inherit dep;")
        ),
    );
    let before = store_entries(&f);
    let out = build(&f.ward, &file);
    let text = read_output(&f, &out);
    assert_all_denied(&text, attempts.len());
    assert!(text.contains("spawned"), "{text}");
    assert_eq!(
        read_output(&f, &dep),
        "original\n",
        "the input is unchanged"
    );
    assert_eq!(
        read_output(&f, &other),
        "untouched\n",
        "another derivation's output is unchanged"
    );
    f.ward.ok("nix-store", &["--verify-path", &dep, &other]);
    // The store gained the output and its .drv, nothing else.
    let after = store_entries(&f);
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added
            .iter()
            .all(|n| n.ends_with("-vandal") || n.ends_with("-vandal.drv")),
        "{added:?}"
    );
    // Nothing of the build runs any more.
    std::thread::sleep(Duration::from_millis(300));
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&marker)
                .then_some(name)
        })
        .collect();
    assert!(survivors.is_empty(), "left running: {survivors:?}");
    // No output file carries a set-id bit.
    let meta = std::fs::symlink_metadata(f.daemon.layout().real_path(&out)).unwrap();
    assert_eq!(meta.mode() & 0o6000, 0);
}

#[test]
fn build_directories_stay_closed_even_when_the_builder_opens_them() {
    let test = "build_directories_stay_closed_even_when_the_builder_opens_them";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let state = f.daemon.layout().state_dir.join("ward-broker");
    let meta = std::fs::metadata(&state).unwrap();
    // <state>/ward-broker: root's, writable by root only (users pass through it to their
    // own kept/<uid>); builds/ below it stays closed to everyone but root.
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        meta.mode() & 0o022,
        0,
        "{} mode {:o}",
        state.display(),
        meta.mode()
    );
    let builds = std::fs::metadata(state.join("builds")).unwrap();
    assert_eq!(builds.uid(), 0);
    assert_eq!(builds.mode() & 0o077, 0, "builds/ mode {:o}", builds.mode());

    // A builder opens its build directory (and tries its parent) to everyone and leaves a
    // world-readable file in it; another user still cannot reach it while the build runs.
    let alice = ward_e2e_tests::ensure_test_user();
    let file = expr(
        &f,
        "opener",
        &drv(
            "opener",
            "chmod 777 /build; chmod 777 /build/.. 2>/dev/null; echo secret > /build/secret; \
             chmod 666 /build/secret; sleep 3; echo done > $out",
            "",
        ),
    );
    let client = f.ward.clone();
    let file_arg = file.to_str().unwrap().to_string();
    let building =
        std::thread::spawn(move || client.run("nix-build", &[file_arg.as_str(), "--no-out-link"]));
    let builds_dir = state.join("builds");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let secret = loop {
        let found = std::fs::read_dir(&builds_dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("build/secret"))
                .find(|p| p.exists())
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never wrote its file"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let as_alice = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", alice.uid))
            .arg(format!("--regid={}", alice.gid))
            .arg("--init-groups")
            .args(args)
            .output()
            .unwrap()
    };
    let read = as_alice(&["cat", secret.to_str().unwrap()]);
    assert!(
        !read.status.success(),
        "another user read {}: {}",
        secret.display(),
        String::from_utf8_lossy(&read.stdout)
    );
    let listed = as_alice(&["ls", builds_dir.to_str().unwrap()]);
    assert!(
        !listed.status.success(),
        "another user listed {}",
        builds_dir.display()
    );
    let run = building.join().unwrap();
    assert!(run.status.success(), "{}", run.stderr.clone());
}

#[test]
fn a_fixed_output_build_cannot_plant_links_beside_its_output() {
    let test = "a_fixed_output_build_cannot_plant_links_beside_its_output";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    // sha256 of "fetched\n" (flat).
    let file = expr(
        &f,
        "planter",
        &drv(
            "planter",
            "ln -s /etc/shadow $out-evil; ln -s / $NIX_STORE/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-root; echo fetched > $out",
            r#"outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "sha256-9uN5sGOQVMUYBv1dZ5SMvK69NUsOkadoOTKwQ8XDujI=";"#,
        ),
    );
    let before = store_entries(&f);
    let run = f
        .ward
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let after = store_entries(&f);
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added
            .iter()
            .all(|n| n.ends_with("-planter") || n.ends_with("-planter.drv")),
        "only the output and its .drv: {added:?}\n{}",
        run.stderr.clone()
    );
    assert!(
        run.status.success(),
        "the output itself is fine: {}",
        run.stderr.clone()
    );
    let out = run.single_line();
    let meta = std::fs::symlink_metadata(f.daemon.layout().real_path(&out)).unwrap();
    assert!(meta.is_file());
}

#[test]
fn the_canary_sees_the_sandbox_the_policy_describes() {
    let test = "the_canary_sees_the_sandbox_the_policy_describes";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let file = expr(
        &f,
        "canary",
        &drv(
            "canary",
            "{ echo \"uid_map $(cat /proc/self/uid_map)\"; echo \"gid_map $(cat /proc/self/gid_map)\"; \
             grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
             cut -d' ' -f2 /proc/mounts | sed 's/^/mount /'; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | sed 's/^ */netdev /'; \
             echo \"host $(hostname)\"; } > $out",
            "",
        ),
    );
    let out = build(&f.ward, &file);
    let text = read_output(&f, &out);
    let values = |key: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} ")))
            .map(|rest| rest.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    // One uid and one gid mapped: 1000 and 100 inside, a build user outside.
    let uid_map = &values("uid_map")[0];
    assert_eq!(
        (uid_map[0].as_str(), uid_map[2].as_str()),
        ("1000", "1"),
        "{text}"
    );
    assert_ne!(uid_map[1], "0", "{text}");
    let gid_map = &values("gid_map")[0];
    assert_eq!(
        (gid_map[0].as_str(), gid_map[2].as_str()),
        ("100", "1"),
        "{text}"
    );
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} empty: {text}"
        );
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert_eq!(values("netdev"), vec![vec!["lo".to_string()]], "{text}");
    assert_eq!(
        values("host"),
        vec![vec!["localhost".to_string()]],
        "{text}"
    );
    let mounts: Vec<String> = values("mount").into_iter().flatten().collect();
    for expected in [
        "/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/tmp", "/build",
    ] {
        assert!(mounts.iter().any(|m| m == expected), "{expected}: {text}");
    }
    for forbidden in ["/home", "/root", "/run", "/sys", "/var"] {
        assert!(
            !mounts.iter().any(|m| m == forbidden),
            "{forbidden}: {text}"
        );
    }
    // The broker ran its own canary at start-up, and says how far landlock went (an ABI
    // where the kernel has it, else that it has none).
    let log = f.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("sandbox check passed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("landlock ABI ") || line.contains("landlock not supported"),
        "{line}"
    );
}

/// The mount point of the host's cgroup2 file system, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(Into::into))
            .flatten()
    })
}

#[test]
fn each_build_runs_in_its_own_cgroup_which_goes_with_it() {
    let test = "each_build_runs_in_its_own_cgroup_which_goes_with_it";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let file = expr(
        &f,
        "cgroup",
        &drv("in-a-cgroup", "cat /proc/self/cgroup > $out", ""),
    );
    let out = build(&f.ward, &file);
    let log = f.daemon.log();
    if let Some(line) = log.lines().find(|l| l.contains("no per-build cgroups")) {
        ward_e2e_tests::notice(&format!(
            "SKIPPED {test}: the host gives the broker no cgroups: {line}"
        ));
        return;
    }
    let text = read_output(&f, &out);
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {text:?}"));
    let leaf = path.rsplit('/').next().unwrap();
    assert!(
        leaf.starts_with("ward-build-") && leaf.ends_with("-in-a-cgroup"),
        "the build's own cgroup: {path}"
    );
    let mount = cgroup2_mount().expect("a cgroup2 mount, since the broker made a cgroup");
    let dir = mount.join(path.trim_start_matches('/'));
    assert!(
        !dir.exists(),
        "{} is removed once the build is over",
        dir.display()
    );
    assert!(dir.parent().unwrap().exists(), "{}", dir.display());
}

/// A static C program that tries every way to set or remove an extended attribute on `$out`
/// (busybox has no setfattr) and writes one `call=result` line per attempt.
const XATTR_PROBE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#define TRY(name, call) do { errno = 0; long r = (call); \
    fprintf(f, "%s=%s\n", name, r == 0 ? "allowed" : strerror(errno)); } while (0)

int main(void) {
    const char *out = getenv("out");
    if (!out) return 2;
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    int fd = fileno(f);
    TRY("setxattr", setxattr(out, "user.ward", "x", 1, 0));
    TRY("lsetxattr", lsetxattr(out, "user.ward", "x", 1, 0));
    TRY("fsetxattr", fsetxattr(fd, "user.ward", "x", 1, 0));
    TRY("setxattr-acl", setxattr(out, "system.posix_acl_access", "\x02\0\0\0", 4, 0));
    TRY("removexattr", removexattr(out, "user.ward"));
    TRY("fremovexattr", fremovexattr(fd, "user.ward"));
    TRY("setxattrat", syscall(463, AT_FDCWD, out, 0, "user.ward", NULL, 0));
    TRY("removexattrat", syscall(466, AT_FDCWD, out, 0, "user.ward"));
    fclose(f);
    return 0;
}
"#;

/// Compiles `source` (C) statically into a directory every user may read; `None` after a
/// SKIPPED line when no C compiler can.
fn static_helper(test: &str, name: &str, source: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("ward-e2e-helper-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c_file = dir.path().join(format!("{name}.c"));
    let binary = dir.path().join(name);
    std::fs::write(&c_file, source).unwrap();
    let compiled = std::process::Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&binary)
        .arg(&c_file)
        .output();
    match compiled {
        Ok(o) => {
            assert!(
                o.status.success(),
                "cc -static {}: {}",
                c_file.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            Some((dir, binary))
        }
        Err(e) => {
            ward_e2e_tests::notice(&format!(
                "SKIPPED {test}: no C compiler to build a static helper (cc: {e})"
            ));
            None
        }
    }
}

/// A sandboxed multi-user daemon with `helper` bound in at `/bin/<name>` next to busybox.
fn start_with_helper(test: &str, name: &str, helper: &Path) -> Option<Fixture> {
    let options = ward_e2e_tests::builds::sandboxed(DaemonOptions::multi_user()).conf(format!(
        "sandbox-paths = /bin/sh={} /bin/{name}={}",
        ward_e2e_tests::builds::BUSYBOX,
        helper.display()
    ));
    Fixture::start(test, options)
}

/// Builds a derivation whose builder is `/bin/<name>` and returns its `call=result` lines.
fn helper_results(f: &Fixture, name: &str) -> Vec<(String, String)> {
    let file = expr(
        f,
        name,
        &format!(
            r#"derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/{name}"; }}"#
        ),
    );
    read_output(f, &build(&f.ward, &file))
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn a_builder_cannot_set_or_remove_extended_attributes() {
    let test = "a_builder_cannot_set_or_remove_extended_attributes";
    if !ward_e2e_tests::builds::have_busybox(test) || !ward_e2e_tests::require_root(test) {
        return;
    }
    let Some((_dir, helper)) = static_helper(test, "xattr-probe", XATTR_PROBE_C) else {
        return;
    };
    let Some(f) = start_with_helper(test, "xattr-probe", &helper) else {
        return;
    };
    let results = helper_results(&f, "xattr-probe");
    assert_eq!(results.len(), 8, "every attempt ran: {results:?}");
    for (call, result) in &results {
        assert_eq!(result, "Operation not supported", "{call}: {results:?}");
    }
}

/// A static C program that makes a system call through the i386 entry point (`int 0x80`, in
/// a child, whose end it reports) and through the x32 one.
const ABI_PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    const char *out = getenv("out");
    if (!out) return 2;
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    fflush(f);
    pid_t child = fork();
    if (child == 0) {
        long r;
        __asm__ volatile ("int $0x80" : "=a"(r) : "a"(20L) : "memory");  /* i386 getpid */
        _exit(r > 0 ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status))
        fprintf(f, "i386=killed by signal %d\n", WTERMSIG(status));
    else
        fprintf(f, "i386=%s\n", WEXITSTATUS(status) == 0 ? "allowed" : "failed");
    errno = 0;
    long r = syscall(0x40000000L | SYS_getpid);  /* x32 getpid */
    fprintf(f, "x32=%s\n", r >= 0 ? "allowed" : strerror(errno));
    fclose(f);
    return 0;
}
"#;

#[test]
fn a_builder_cannot_use_the_i386_or_x32_entry_points() {
    let test = "a_builder_cannot_use_the_i386_or_x32_entry_points";
    if !cfg!(target_arch = "x86_64") {
        ward_e2e_tests::notice(&format!("SKIPPED {test}: x86_64 only"));
        return;
    }
    if !ward_e2e_tests::builds::have_busybox(test) || !ward_e2e_tests::require_root(test) {
        return;
    }
    let Some((_dir, helper)) = static_helper(test, "abi-probe", ABI_PROBE_C) else {
        return;
    };
    let Some(f) = start_with_helper(test, "abi-probe", &helper) else {
        return;
    };
    let results = helper_results(&f, "abi-probe");
    let get = |k: &str| {
        results
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {results:?}"))
    };
    // seccomp's architecture check kills the process (SIGSYS) at the first i386 call.
    assert_eq!(get("i386"), format!("killed by signal {}", libc_sigsys()));
    assert_eq!(get("x32"), "Function not implemented");
}

/// SIGSYS's number on Linux.
fn libc_sigsys() -> i32 {
    nix::sys::signal::Signal::SIGSYS as i32
}

/// An address of this host that is not loopback (the source address of its default route).
fn host_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe
        .connect("192.0.2.1:9")
        .or_else(|_| probe.connect("8.8.8.8:53"))
        .ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn a_fixed_output_build_reaches_the_network_from_a_namespace_of_its_own() {
    let test = "a_fixed_output_build_reaches_the_network_from_a_namespace_of_its_own";
    use std::os::unix::fs::PermissionsExt;
    let tun_usable =
        std::fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006);
    if !Path::new("/usr/bin/slirp4netns").exists() || !tun_usable {
        ward_e2e_tests::notice(&format!(
            "SKIPPED {test}: needs slirp4netns (apt-get install slirp4netns) and a /dev/net/tun \
             of mode 0666"
        ));
        return;
    }
    let Some(host) = host_address() else {
        ward_e2e_tests::notice(&format!(
            "SKIPPED {test}: this host has no address besides loopback to fetch from"
        ));
        return;
    };
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    // What the build fetches, from a server on the host's own (non-loopback) address.
    let served = f.env.dir("served");
    let payload = format!("fetched through slirp4netns by {test}\n");
    std::fs::write(served.join("payload"), &payload).unwrap();
    let port = TcpListener::bind((host, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            &host.to_string(),
            "--directory",
        ])
        .arg(&served)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting python3 -m http.server");
    for _ in 0..200 {
        if std::net::TcpStream::connect((host, port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // What it must not reach: a loopback service and an abstract socket of the host.
    let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    loopback.set_nonblocking(true).unwrap();
    let lport = loopback.local_addr().unwrap().port();
    let abstract_name = format!("ward-e2e-abstract-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let _abstract = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
    )
    .unwrap();

    let hash = ward_e2e_tests::nar::base16(&ward_e2e_tests::nar::sha256(payload.as_bytes()));
    let script = format!(
        "escaped=0; \
         timeout 20 wget -q -O $out http://{host}:{port}/payload || {{ echo 'could not fetch'; exit 1; }}; \
         if timeout 5 wget -q -O /dev/null http://127.0.0.1:{lport}/; then echo 'ESCAPED host loopback'; escaped=1; fi; \
         if timeout 5 wget -q -O /dev/null http://10.0.2.2:{lport}/; then echo 'ESCAPED host loopback via 10.0.2.2'; escaped=1; fi; \
         if grep -q {abstract_name} /proc/net/unix; then echo 'ESCAPED sees an abstract socket of the host'; escaped=1; fi; \
         if grep -vE '^ *(lo|tap0|Inter|face)' /proc/net/dev | grep -q :; then echo 'ESCAPED sees a host interface'; escaped=1; fi; \
         grep -q tap0 /proc/net/dev || {{ echo 'no tap0'; escaped=1; }}; \
         exit $escaped"
    );
    let file = expr(
        &f,
        "fetcher",
        &drv(
            "fetcher",
            &script,
            &format!(
                r#"outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{hash}";"#
            ),
        ),
    );
    let run = f
        .ward
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        run.status.success(),
        "the fixed-output build fetched its file and reached nothing else: {}",
        run.stderr.clone()
    );
    assert_eq!(read_output(&f, &run.single_line()), payload);
    let mut buf = [0u8; 1];
    match loopback.accept() {
        Ok((mut conn, peer)) => {
            let _ = conn.read(&mut buf);
            panic!("the build connected to the host's loopback service from {peer}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

/// A static C program that tries to set the setuid and setgid bits on a file of its own
/// through every call that changes a mode, and writes one `call=result` line per attempt,
/// then the mode the file ended with.
const SETID_PROBE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TRY(name, call) do { errno = 0; long r = (call); \
    fprintf(f, "%s=%s\n", name, r == 0 ? "allowed" : strerror(errno)); } while (0)

int main(void) {
    const char *out = getenv("out");
    if (!out) return 2;
    char target[4096];
    snprintf(target, sizeof target, "%s.probe", out);
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    int fd = open(target, O_CREAT | O_WRONLY, 0755);
    if (fd < 0) return 4;
    TRY("chmod-setuid", chmod(target, 04755));
    TRY("fchmod-setuid", fchmod(fd, 04755));
    TRY("fchmodat-setuid", fchmodat(AT_FDCWD, target, 04755, 0));
    TRY("fchmodat2-setuid", syscall(452, AT_FDCWD, target, 04755, 0));
    TRY("chmod-setgid", chmod(target, 02755));
    TRY("fchmod-setgid", fchmod(fd, 02755));
    TRY("fchmodat-setgid", fchmodat(AT_FDCWD, target, 02755, 0));
    TRY("fchmodat2-setgid", syscall(452, AT_FDCWD, target, 02755, 0));
    struct stat st;
    if (fstat(fd, &st) == 0)
        fprintf(f, "final-mode=%o\n", (unsigned) (st.st_mode & 07777));
    close(fd);
    unlink(target);
    fclose(f);
    return 0;
}
"#;

#[test]
fn no_mode_changing_call_sets_a_setuid_or_setgid_bit() {
    let test = "no_mode_changing_call_sets_a_setuid_or_setgid_bit";
    if !ward_e2e_tests::builds::have_busybox(test) || !ward_e2e_tests::require_root(test) {
        return;
    }
    let Some((_dir, helper)) = static_helper(test, "setid-probe", SETID_PROBE_C) else {
        return;
    };
    let Some(f) = start_with_helper(test, "setid-probe", &helper) else {
        return;
    };
    let results = helper_results(&f, "setid-probe");
    assert_eq!(results.len(), 9, "every attempt ran: {results:?}");
    for (call, result) in &results {
        if call == "final-mode" {
            assert_eq!(result, "755", "{results:?}");
        } else {
            assert_eq!(result, "Operation not permitted", "{call}: {results:?}");
        }
    }
}

/// R1 (a fork bomb): a build may run at most `ward-build-max-processes` processes as its
/// build user. One that tries for more gets "can't fork" and fails; the next build on the same
/// daemon succeeds, and none of the first build's processes is left.
#[test]
fn a_build_that_forks_past_its_process_cap_fails_alone() {
    let test = "a_build_that_forks_past_its_process_cap_fails_alone";
    let options = DaemonOptions::multi_user().conf("ward-build-max-processes = 32");
    let Some(f) = start(test, options) else {
        return;
    };
    let bomb = expr(
        &f,
        "forks",
        &drv(
            "forks",
            "i=0; while [ $i -lt 200 ]; do echo started $i; sleep 60 & i=$((i+1)); done; echo > $out",
            "",
        ),
    );
    let failed = f
        .ward
        .fails("nix-build", &[bomb.to_str().unwrap(), "--no-out-link"]);
    assert!(
        failed.stderr.contains("can't fork") || failed.stderr.contains("Resource temporarily"),
        "{failed}"
    );
    let last_started: u32 = failed
        .stderr
        .lines()
        .filter_map(|l| l.trim_start_matches(|c| c != 's').strip_prefix("started "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0);
    assert!(
        (8..32).contains(&last_started),
        "the build started {last_started} processes: {failed}"
    );
    let fine = expr(&f, "fine", &drv("fine", "echo fine > $out", ""));
    let out = build(&f.ward, &fine);
    assert_eq!(read_output(&f, &out), "fine\n");
}
