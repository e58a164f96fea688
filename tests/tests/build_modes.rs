//! The sandbox settings of a multi-user daemon, through Debian's Nix 2.8 client: `sandbox =
//! relaxed` honours `__noChroot`, `sandbox = true` refuses it, `sandbox = false` builds on
//! the host's file system — in each case still as a build user, with landlock keeping writes
//! to the build directory and the outputs (a world-writable directory outside stays
//! untouched) — and `auto-allocate-uids` takes build uids from its range instead of
//! `build-users-group`.

use std::collections::BTreeSet;
use std::path::Path;

use ward_e2e_tests::builds::{
    build, drv, expr, fails_registering_nothing, read_output, start, start_with_sandbox,
};
use ward_e2e_tests::{DaemonOptions, Fixture};

/// Where the build ran and what it could do, written to `$out` with nothing but the shell and
/// absolute paths (without a chroot `/bin/sh` is the host's, and `PATH` is unset).
fn probe_script(outside: &Path) -> String {
    format!(
        "if [ -d /home ]; then echo root=host > $out; else echo root=chroot > $out; fi; \
         read map < /proc/self/uid_map; echo uid_map=$map >> $out; \
         read map < /proc/self/gid_map; echo gid_map=$map >> $out; \
         if ( echo x > $NIX_BUILD_TOP/scratch ) 2>/dev/null; then echo build_dir=writable >> $out; fi; \
         if ( echo x > {outside} ) 2>/dev/null; then echo outside=written >> $out; else echo outside=denied >> $out; fi; \
         ( echo x > $NIX_STORE/{STORE_ESCAPE} ) 2>/dev/null; true",
        outside = outside.display()
    )
}

/// A name the probe tries to create in the store directory; it must never appear in the real
/// store (only the store-writer writes it).
const STORE_ESCAPE: &str = "ward-build-mode-escape";

/// Asserts the probe's attempt on the store left the real store alone.
fn assert_store_untouched(f: &Fixture) {
    let escaped = f.daemon.layout().real_store_dir.join(STORE_ESCAPE);
    assert!(!escaped.exists(), "{} was created", escaped.display());
}

/// A `key=value` line of a probe's output.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the probe's output:\n{text}"))
}

/// The host uid (or gid) that `map` (a `/proc/self/uid_map` line) maps the build's id to.
fn host_id(map: &str) -> u32 {
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "a single-id map: {map}");
    assert_eq!(fields[2], "1", "one id mapped: {map}");
    fields[1].parse().unwrap()
}

/// Without a chroot a multi-user build still has a user namespace (its view of the store is
/// its own), which maps only the build user, to itself.
fn assert_runs_as_itself(text: &str) {
    let map = field(text, "uid_map");
    let inside: u32 = map.split_whitespace().next().unwrap().parse().unwrap();
    let uid = host_id(map);
    assert_eq!(inside, uid, "the build user mapped to itself: {text}");
    assert!(
        build_user_uids().contains(&uid),
        "uid {uid} is not in nixbld: {text}"
    );
}

/// The uids of the `nixbld` group's members.
fn build_user_uids() -> BTreeSet<u32> {
    let group = nix::unistd::Group::from_name("nixbld")
        .unwrap()
        .expect("the nixbld group (bash .ci/test-all creates it)");
    group
        .mem
        .iter()
        .filter_map(|name| nix::unistd::User::from_name(name).ok().flatten())
        .map(|u| u.uid.as_raw())
        .collect()
}

/// A file outside the store, the build directory and the outputs, writable by every user
/// (under a sticky 1777 directory, as `/tmp` is), that a build must not be able to create.
fn outside_target(f: &Fixture, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = f.env.dir("world-writable");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    for parent in dir.ancestors().skip(1) {
        if parent == Path::new("/tmp") || parent == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    }
    dir.join(name)
}

#[test]
fn relaxed_sandbox_honours_no_chroot_and_sandbox_true_refuses_it() {
    let test = "relaxed_sandbox_honours_no_chroot_and_sandbox_true_refuses_it";
    let Some(f) = start_with_sandbox(test, "relaxed", DaemonOptions::multi_user()) else {
        return;
    };
    let outside = outside_target(&f, "from-a-no-chroot-build");
    let script = probe_script(&outside);
    let no_chroot = expr(
        &f,
        "nochroot",
        &drv("no-chroot", &script, "__noChroot = true;"),
    );
    let text = read_output(&f, &build(&f.ward, &no_chroot));
    assert_eq!(field(&text, "root"), "host", "{text}");
    assert_eq!(field(&text, "build_dir"), "writable", "{text}");
    // Without a chroot the build still runs as a build user, and landlock still confines
    // its writes even where the file system's permissions would allow them.
    assert_runs_as_itself(&text);
    assert_eq!(field(&text, "outside"), "denied", "{text}");
    assert!(!outside.exists(), "{} was created", outside.display());
    assert_store_untouched(&f);

    // Relaxed or not, a derivation that does not ask for it is chrooted.
    let chrooted = expr(&f, "chrooted", &drv("chrooted", &script, ""));
    let text = read_output(&f, &build(&f.ward, &chrooted));
    assert_eq!(field(&text, "root"), "chroot", "{text}");
    assert!(
        build_user_uids().contains(&host_id(field(&text, "uid_map"))),
        "{text}"
    );

    // With sandbox = true, __noChroot is refused and nothing is registered.
    drop(f);
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let no_chroot = expr(
        &f,
        "nochroot",
        &drv("no-chroot", &script, "__noChroot = true;"),
    );
    let stderr = fails_registering_nothing(&f, &no_chroot, &[]);
    assert!(
        stderr.contains("__noChroot") && stderr.contains("sandbox = relaxed"),
        "{stderr}"
    );
}

#[test]
fn sandbox_false_builds_on_the_host_as_a_build_user_under_landlock() {
    let test = "sandbox_false_builds_on_the_host_as_a_build_user_under_landlock";
    let Some(f) = start_with_sandbox(test, "false", DaemonOptions::multi_user()) else {
        return;
    };
    let outside = outside_target(&f, "from-an-unsandboxed-build");
    let script = probe_script(&outside);
    let file = expr(&f, "host", &drv("on-the-host", &script, ""));
    let text = read_output(&f, &build(&f.ward, &file));
    assert_eq!(field(&text, "root"), "host", "{text}");
    assert_eq!(field(&text, "build_dir"), "writable", "{text}");
    assert_runs_as_itself(&text);
    assert_eq!(field(&text, "outside"), "denied", "{text}");
    assert!(!outside.exists(), "{} was created", outside.display());
    assert_store_untouched(&f);

    let uid_file = expr(
        &f,
        "whoami",
        &drv(
            "whoami",
            "while read -r key real rest; do \
             if [ \"$key\" = Uid: ]; then echo $real > $out; fi; done < /proc/self/status",
            "",
        ),
    );
    let uid: u32 = read_output(&f, &build(&f.ward, &uid_file))
        .trim()
        .parse()
        .unwrap();
    assert!(
        build_user_uids().contains(&uid),
        "uid {uid} is not a member of nixbld"
    );
}

#[test]
fn auto_allocate_uids_builds_as_uids_from_the_range() {
    let test = "auto_allocate_uids_builds_as_uids_from_the_range";
    let (start_id, count) = (1_900_000_000u32, 64u32);
    let options = DaemonOptions::multi_user()
        .conf("build-users-group =")
        .conf("auto-allocate-uids = true")
        .conf(format!("start-id = {start_id}"))
        .conf(format!("id-count = {count}"));
    let Some(f) = start(test, options) else {
        return;
    };
    let outside = outside_target(&f, "from-an-auto-allocated-build");
    let script = probe_script(&outside);
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let file = expr(
            &f,
            &format!("auto{i}"),
            &drv(&format!("auto-{i}"), &script, ""),
        );
        let text = read_output(&f, &build(&f.ward, &file));
        assert_eq!(field(&text, "root"), "chroot", "{text}");
        let uid = host_id(field(&text, "uid_map"));
        let gid = host_id(field(&text, "gid_map"));
        assert!(
            (start_id..start_id + count).contains(&uid),
            "uid {uid} is outside start-id {start_id} + id-count {count}"
        );
        // Without a build users group the gid is the uid's number, never root's group.
        assert_eq!(gid, uid, "{text}");
        assert!(!build_user_uids().contains(&uid));
        seen.insert(uid);
    }
    assert!(!seen.is_empty());
    assert!(!outside.exists());
}

#[test]
fn a_failed_build_gives_its_build_user_back() {
    // One build uid in all: a failing build that did not give it back would leave the next
    // build without a user.
    let test = "a_failed_build_gives_its_build_user_back";
    let options = DaemonOptions::multi_user()
        .conf("build-users-group =")
        .conf("auto-allocate-uids = true")
        .conf("start-id = 1900100000")
        .conf("id-count = 1");
    let Some(f) = start(test, options) else {
        return;
    };
    for i in 0..3 {
        let failing = expr(
            &f,
            &format!("fails{i}"),
            &drv(&format!("fails-{i}"), "echo going down; exit 3", ""),
        );
        f.ward
            .fails("nix-build", &[failing.to_str().unwrap(), "--no-out-link"])
            .assert_stderr_contains("failed with exit code 3");
        let ok = expr(
            &f,
            &format!("after{i}"),
            &drv(&format!("after-{i}"), "echo fine > $out", ""),
        );
        let out = build(&f.ward, &ok);
        assert_eq!(read_output(&f, &out), "fine\n");
    }
}

/// A trusted client (root) asks for `sandbox = false` and for the host's `/home` bound into
/// the build: Nix would grant both; ward names each setting it ignores, and the build runs in
/// its chroot, without `/home`.
#[test]
fn a_trusted_client_cannot_turn_the_sandbox_off_or_bind_host_paths() {
    let test = "a_trusted_client_cannot_turn_the_sandbox_off_or_bind_host_paths";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let outside = outside_target(&f, "from-a-trusted-override");
    let probe = expr(
        &f,
        "trusted",
        &drv("trusted-override", &probe_script(&outside), ""),
    );
    let out = f.ward.ok(
        "nix-build",
        &[
            probe.to_str().unwrap(),
            "--no-out-link",
            "--option",
            "sandbox",
            "false",
            "--option",
            "extra-sandbox-paths",
            "/home",
        ],
    );
    // The client sends `extra-sandbox-paths` merged into `sandbox-paths`.
    for name in ["sandbox", "sandbox-paths"] {
        assert!(
            out.stderr
                .contains(&format!("ignoring the client-specified setting '{name}'")),
            "no warning for {name}: {out}"
        );
    }
    let text = read_output(&f, out.single_line().trim());
    assert_eq!(field(&text, "root"), "chroot", "{text}");
    assert_eq!(field(&text, "outside"), "denied", "{text}");
    assert_store_untouched(&f);
}
