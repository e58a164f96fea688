//! `ward install` / `ward uninstall` in a scratch root (`--root DIR`: its own account files,
//! unit directory and /nix): a fresh install and its undoing, a second install that changes
//! nothing, a dry run that changes nothing, and the takeover of a Nix daemon's store and units
//! with `uninstall --restore-nix` giving them back — the store path Nix made stays where it was
//! and is served by ward in between.
//!
//! Root only (useradd --root needs it); prints SKIPPED otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_e2e_tests::daemon::ward_bin;
use ward_e2e_tests::lifecycle::{
    chroot_socket, chroot_url, isolated_command, run_nix, run_to_exit, NixEnv, Running, Scratch,
};
use ward_e2e_tests::nixcmd::CmdOutput;
use ward_e2e_tests::{require_nix, require_root};

const NIX_SERVICE: &str = "[Unit]\nDescription=Nix Daemon\nRequiresMountsFor=/nix/store\n\
    ConditionPathIsReadWrite=/nix/var/nix/daemon-socket\n\n[Service]\n\
    ExecStart=@/nix/var/nix/profiles/default/bin/nix-daemon nix-daemon --daemon\n\
    KillMode=process\n\n[Install]\nWantedBy=multi-user.target\n";
const NIX_SOCKET: &str = "[Unit]\nDescription=Nix Daemon Socket\nBefore=multi-user.target\n\n\
    [Socket]\nListenStream=/nix/var/nix/daemon-socket/socket\n\n[Install]\nWantedBy=sockets.target\n";

/// A scratch root with account files: the host's copied (`copy_host`), or only root's.
fn scratch_root(label: &str, copy_host: bool) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(label);
    let root = scratch.dir("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    for (name, minimal, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("gshadow", "root:*::\n", 0o600),
    ] {
        let path = root.join("etc").join(name);
        let host = Path::new("/etc").join(name);
        if copy_host && host.exists() {
            fs::copy(&host, &path).unwrap();
        } else {
            fs::write(&path, minimal).unwrap();
        }
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    (scratch, root)
}

fn ward(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(ward_bin());
    cmd.args(args).env_remove("NIX_CONFIG");
    run_to_exit(cmd, Duration::from_secs(120))
}

fn ward_ok(args: &[&str]) -> CmdOutput {
    let out = ward(args);
    assert!(out.status.success(), "ward {args:?} failed:\n{out}");
    out
}

/// Every entry under `root` with its type, mode, owner and (for files) contents, to show a
/// dry run changed nothing.
fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let contents = if meta.is_file() {
            format!("{:?}", fs::read(&path).unwrap())
        } else if meta.file_type().is_symlink() {
            fs::read_link(&path).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            path.clone(),
            format!("{:o} {}:{} {contents}", meta.mode(), meta.uid(), meta.gid()),
        );
        if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

/// The named account's uid in the scratch root's passwd file.
fn uid_in(root: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
}

/// Members of the named group in the scratch root's group file, or None without the group.
fn members_in(root: &Path, group: &str) -> Option<Vec<String>> {
    fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .lines()
        .find(|l| l.split(':').next() == Some(group))
        .map(|l| {
            l.split(':')
                .nth(3)
                .unwrap_or("")
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        })
}

fn bindir() -> String {
    ward_bin().parent().unwrap().display().to_string()
}

#[test]
fn install_twice_then_uninstall_in_a_scratch_root() {
    if !require_root("install_twice_then_uninstall_in_a_scratch_root") {
        return;
    }
    let (_scratch, root) = scratch_root("install-fresh", false);
    let r = root.to_str().unwrap();

    // A dry run prints every step and changes nothing.
    let before = listing(&root);
    let dry = ward_ok(&["install", "--root", r, "--dry-run", "--build-users", "4"]);
    for step in [
        "would: groupadd",
        "nixbld4",
        "would: useradd",
        "ward-store",
        "ward-frontend",
        "nix-daemon.socket",
        "nix-daemon.service",
        "tmpfiles.d/nix-daemon.conf",
        "install record",
    ] {
        assert!(
            dry.stdout_text().contains(step),
            "dry run does not mention {step}:\n{dry}"
        );
    }
    assert_eq!(
        listing(&root),
        before,
        "the dry run changed the root:\n{dry}"
    );

    let first = ward_ok(&["install", "--root", r, "--build-users", "4"]);
    let members = members_in(&root, "nixbld").expect("group nixbld");
    assert_eq!(
        members,
        ["nixbld1", "nixbld2", "nixbld3", "nixbld4"],
        "{first}"
    );
    assert_eq!(
        uid_in(&root, "nixbld1"),
        Some(30001),
        "Nix's installer numbering"
    );
    assert!(uid_in(&root, "ward-store").is_some() && uid_in(&root, "ward-frontend").is_some());
    let store_uid = uid_in(&root, "ward-store").unwrap();
    for dir in ["nix/store", "nix/var/nix", "nix/var/nix/db"] {
        let meta = fs::metadata(root.join(dir)).unwrap();
        assert_eq!(
            meta.uid(),
            store_uid,
            "{dir} is not the store owner's:\n{first}"
        );
    }
    let socket_dir = fs::metadata(root.join("nix/var/nix/daemon-socket")).unwrap();
    assert_eq!((socket_dir.uid(), socket_dir.mode() & 0o7777), (0, 0o755));
    let service = fs::read_to_string(root.join("etc/systemd/system/nix-daemon.service")).unwrap();
    assert!(
        service.contains(&format!("ExecStart={}/ward daemon", bindir())),
        "{service}"
    );
    assert!(root.join("etc/systemd/system/nix-daemon.socket").is_file());
    assert!(root.join("etc/tmpfiles.d/nix-daemon.conf").is_file());
    let wants = root.join("etc/systemd/system/sockets.target.wants/nix-daemon.socket");
    assert!(
        fs::symlink_metadata(&wants).is_ok(),
        "socket not enabled:\n{first}"
    );

    // Idempotent: the second run changes nothing and says so by printing no step.
    let after_first = listing(&root);
    let second = ward_ok(&["install", "--root", r, "--build-users", "4"]);
    for verb in [
        "ward: useradd",
        "ward: groupadd",
        "ward: chown",
        "ward: write /",
    ] {
        assert!(
            !second.stdout_text().contains(verb),
            "second install did {verb}:\n{second}"
        );
    }
    let changed: Vec<_> = listing(&root)
        .into_iter()
        .filter(|(path, meta)| after_first.get(path) != Some(meta))
        .map(|(path, _)| path)
        .filter(|p| !p.ends_with("install.json"))
        .collect();
    assert!(
        changed.is_empty(),
        "second install changed {changed:?}:\n{second}"
    );

    // --restore-nix needs a takeover to undo.
    let refused = ward(&["uninstall", "--root", r, "--restore-nix"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("did not take over"), "{refused}");

    // Uninstall: accounts and units gone, the store kept and root's.
    fs::write(root.join("nix/store/kept"), "a file in the store").unwrap();
    let out = ward_ok(&["uninstall", "--root", r]);
    assert_eq!(members_in(&root, "nixbld"), None, "{out}");
    for user in ["nixbld1", "nixbld4", "ward-store", "ward-frontend"] {
        assert_eq!(uid_in(&root, user), None, "{user} left behind:\n{out}");
    }
    assert!(members_in(&root, "ward").is_none());
    assert!(!root.join("etc/systemd/system/nix-daemon.service").exists());
    assert!(
        fs::symlink_metadata(&wants).is_err(),
        "socket still enabled:\n{out}"
    );
    assert!(!root.join("var/lib/ward/install.json").exists());
    assert_eq!(
        fs::metadata(root.join("nix/store")).unwrap().uid(),
        0,
        "{out}"
    );
    assert!(
        root.join("nix/store/kept").is_file(),
        "uninstall deleted the store"
    );

    // --delete-store removes it (and only with that flag).
    ward_ok(&["install", "--root", r, "--build-users", "1"]);
    ward_ok(&["uninstall", "--root", r, "--delete-store"]);
    assert!(!root.join("nix/store").exists());
}

#[test]
fn install_takes_over_a_nix_store_and_uninstall_gives_it_back() {
    let test = "install_takes_over_a_nix_store_and_uninstall_gives_it_back";
    if !require_root(test) || !require_nix(test) {
        return;
    }
    // The host's accounts: its build users and ward's users exist already, as on a host that
    // runs Nix's daemon (and for ward's daemon, which uses the host's accounts, below).
    let (scratch, root) = scratch_root("install-takeover", true);
    let r = root.to_str().unwrap();
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).unwrap();
    fs::write(units.join("nix-daemon.service"), NIX_SERVICE).unwrap();
    fs::write(units.join("nix-daemon.socket"), NIX_SOCKET).unwrap();
    let enable = Command::new("systemctl")
        .arg(format!("--root={r}"))
        .args(["enable", "nix-daemon.socket"])
        .output()
        .unwrap();
    assert!(enable.status.success(), "{enable:?}");

    // A store made by Nix itself, as root.
    let conf_dir = scratch.conf_dir("etc-nix", "substituters =\nsandbox = false\n");
    let home = scratch.dir("home");
    let file = scratch.path().join("hello.txt");
    fs::write(&file, "made by Nix before ward\n").unwrap();
    let nix_local = NixEnv::new(
        &scratch.path().join("nix-client"),
        "substituters =\n",
        &format!("local?root={r}"),
        Vec::new(),
        None,
    );
    let added = run_nix("nix-store", &["--add", file.to_str().unwrap()], &nix_local);
    assert!(added.status.success(), "{added}");
    let path = added.stdout_text().trim().to_owned();
    let real = root.join(path.trim_start_matches('/'));
    let inode = fs::metadata(&real).unwrap().ino();
    assert_eq!(fs::metadata(root.join("nix/store")).unwrap().uid(), 0);

    let out = ward_ok(&["install", "--root", r, "--build-users", "14", "--no-start"]);
    assert!(
        out.stdout_text().contains("took over Nix's daemon"),
        "{out}"
    );
    let backup = root.join("var/lib/ward/nix-units");
    assert_eq!(
        fs::read_to_string(backup.join("nix-daemon.service")).unwrap(),
        NIX_SERVICE
    );
    assert!(fs::read_to_string(units.join("nix-daemon.service"))
        .unwrap()
        .contains("ward daemon"));
    assert_eq!(
        fs::metadata(&real).unwrap().ino(),
        inode,
        "the store path moved"
    );
    let store_uid = uid_in(&root, "ward-store").unwrap();
    assert_eq!(
        fs::metadata(root.join("nix/store")).unwrap().uid(),
        store_uid
    );
    assert_eq!(
        fs::metadata(root.join("nix/var/nix/db/db.sqlite"))
            .unwrap()
            .uid(),
        store_uid
    );
    let members = members_in(&root, "nixbld").unwrap();
    assert!(
        members.contains(&"nixbld14".to_owned()),
        "{members:?}\n{out}"
    );

    // ward serves Nix's store as it is, and adds to it.
    let mut daemon = Running::spawn(
        {
            let mut cmd = isolated_command(&ward_bin(), &conf_dir, &home);
            cmd.arg("daemon").arg("--store").arg(&root);
            cmd
        },
        &scratch.path().join("daemon.log"),
    );
    let socket = chroot_socket(&root);
    daemon.wait_serving(&socket);
    let client = NixEnv::new(
        &scratch.path().join("client"),
        "substituters =\n",
        &chroot_url(&socket, &root),
        Vec::new(),
        None,
    );
    let hash = run_nix("nix-store", &["--query", "--hash", &path], &client);
    assert!(hash.status.success(), "{hash}\n{}", daemon.log());
    let second_file = scratch.path().join("second.txt");
    fs::write(&second_file, "added through ward\n").unwrap();
    let second = run_nix(
        "nix-store",
        &["--add", second_file.to_str().unwrap()],
        &client,
    );
    assert!(second.status.success(), "{second}\n{}", daemon.log());
    let second_path = second.stdout_text().trim().to_owned();
    drop(daemon);

    // Give it back: Nix's units, root's store, and a store Nix itself can verify.
    let back = ward_ok(&["uninstall", "--root", r, "--restore-nix"]);
    assert_eq!(
        fs::read_to_string(units.join("nix-daemon.service")).unwrap(),
        NIX_SERVICE,
        "{back}"
    );
    assert_eq!(
        fs::read_to_string(units.join("nix-daemon.socket")).unwrap(),
        NIX_SOCKET
    );
    assert!(fs::symlink_metadata(units.join("sockets.target.wants/nix-daemon.socket")).is_ok());
    assert!(
        members_in(&root, "nixbld")
            .unwrap()
            .contains(&"nixbld14".to_owned()),
        "build users are Nix's too and must stay"
    );
    for p in [&path, &second_path] {
        let meta = fs::symlink_metadata(root.join(p.trim_start_matches('/'))).unwrap();
        assert_eq!(
            meta.uid(),
            0,
            "{p} is not root's after --restore-nix:\n{back}"
        );
    }
    assert_eq!(
        fs::metadata(root.join("nix/var/nix/db/db.sqlite"))
            .unwrap()
            .uid(),
        0
    );
    let verify = run_nix("nix-store", &["--verify", "--check-contents"], &nix_local);
    assert!(verify.status.success(), "{verify}");
    let hash = run_nix(
        "nix-store",
        &["--query", "--hash", &second_path],
        &nix_local,
    );
    assert!(
        hash.status.success(),
        "Nix does not see the path ward added: {hash}"
    );
}
