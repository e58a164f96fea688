//! Integration tests that play the broker: as root, they lay out a build directory, start
//! `ward-builder` as a build user with the descriptors in place, and check what comes back.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ward_ipc::broker::BuildDirFile;
use ward_ipc::builder::{
    BrokerToBuilder, BuilderToBroker, CollectSpec, SandboxReport, SandboxSpec, SetupStep,
};
use ward_ipc::store_path::StorePath;
use ward_ipc::{BrokerBuilderChannel, BuildId, FrameLimit, IpcError};

const BIN: &str = env!("CARGO_BIN_EXE_ward-builder");
const BUSYBOX_HASH: &str = "0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: {} needs root", module_path!());
            return;
        }
    };
}

/// A build user of our own (one per test, so the "nothing left running" checks cannot see
/// another test's processes); created when missing.
fn build_user(name: &str) -> (u32, u32) {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("getent group nixbld >/dev/null || groupadd --system nixbld")
            .status();
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/var/empty",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                "nixbld",
                "--groups",
                "nixbld",
                name,
            ])
            .status();
    }
    let user = nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("cannot create build user {name}"));
    (user.uid.as_raw(), user.gid.as_raw())
}

fn store_path(hash_seed: char, name: &str) -> StorePath {
    let hash = hash_seed.to_string().repeat(32);
    StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
}

/// A fake host: `<tmp>/store` holding busybox as a store path, `<tmp>/builds` (root, 0700)
/// holding `top` (the build user's, 0700).
struct Host {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    top: PathBuf,
    busybox: StorePath,
    uid: u32,
    gid: u32,
}

impl Host {
    fn new(user: &str) -> Host {
        let (uid, gid) = build_user(user);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = tmp.path().join("store");
        let busybox = StorePath::from_base_name(&format!("{BUSYBOX_HASH}-busybox")).unwrap();
        let bin = store.join(busybox.base_name()).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in [
            "sh", "ls", "cat", "echo", "touch", "chmod", "mkdir", "ps", "sleep", "setsid", "id",
            "wc", "grep", "hostname", "mknod", "ln", "head", "mount", "rm", "test", "stat",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let builds = tmp.path().join("builds");
        std::fs::create_dir(&builds).unwrap();
        std::fs::set_permissions(&builds, std::fs::Permissions::from_mode(0o700)).unwrap();
        let top = builds.join("top");
        std::fs::create_dir(&top).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&top, Some(uid.into()), Some(gid.into())).unwrap();
        Host {
            _tmp: tmp,
            store,
            top,
            busybox,
            uid,
            gid,
        }
    }

    fn bin(&self) -> String {
        format!("/nix/store/{}/bin", self.busybox.base_name())
    }

    fn spec(&self, script: &str, out: &StorePath) -> SandboxSpec {
        let env: BTreeMap<String, String> = [
            ("PATH".to_string(), self.bin()),
            ("out".to_string(), format!("/nix/store/{}", out.base_name())),
            ("HOME".to_string(), "/homeless-shelter".to_string()),
            ("NIX_BUILD_TOP".to_string(), "/build".to_string()),
            ("TMPDIR".to_string(), "/build".to_string()),
        ]
        .into();
        SandboxSpec {
            build: BuildId(1),
            drv_path: store_path('d', "test.drv"),
            store_dir: "/nix/store".into(),
            real_store_dir: self.store.to_str().unwrap().into(),
            sandbox_build_dir: "/build".into(),
            host_build_dir: self.top.join("build").to_str().unwrap().into(),
            sandbox_uid: 1000,
            sandbox_gid: 100,
            chroot: true,
            private_store: false,
            network: false,
            network_helper: None,
            input_paths: [self.busybox.clone()].into(),
            output_paths: [out.clone()].into(),
            bind_mounts: vec![],
            build_dir_files: vec![BuildDirFile {
                name: "file1".into(),
                contents: b"contents".to_vec(),
            }],
            builder: format!("{}/sh", self.bin()),
            args: vec!["-c".into(), script.into()],
            env,
            filter_syscalls: true,
            allow_new_privileges: false,
            groups_cleared: true,
            canary: false,
            tmpfs_size: "64M".into(),
        }
    }

    /// Starts `ward-builder <mode>` as the build user with 3 = channel, 4 = top, 5.. = extra.
    fn spawn(
        &self,
        mode: &str,
        extra: Vec<OwnedFd>,
    ) -> (BrokerBuilderChannel, std::process::Child) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let top = std::fs::File::open(&self.top).unwrap();
        // Move every descriptor to be placed above the numbers it will take, so dup2 never
        // lands on one of its own sources.
        let hi =
            |fd: i32| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).unwrap();
        let mut sources = vec![hi(theirs.as_raw_fd()), hi(top.as_raw_fd())];
        sources.extend(extra.iter().map(|fd| hi(fd.as_raw_fd())));
        let placed = sources.clone();
        let mut command = Command::new(BIN);
        command
            .arg(mode)
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (dup2, prctl) on integers captured by value.
        unsafe {
            command.pre_exec(move || {
                for (i, &fd) in placed.iter().enumerate() {
                    if libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        for fd in sources {
            let _ = nix::unistd::close(fd);
        }
        drop(theirs);
        drop(extra);
        let limit = FrameLimit::new(ward_ipc::frame::MAX_FRAME_LEN_CEILING).unwrap();
        (BrokerBuilderChannel::new(ours, limit), child)
    }

    /// Runs a build: what the builder said (None: it exec'd), its exit code, its log.
    fn build(&self, spec: SandboxSpec) -> (Option<BuilderToBroker>, i32, String) {
        let (channel, mut child) = self.spawn("build", vec![]);
        channel
            .send(&BrokerToBuilder::Spec(Box::new(spec)), &[])
            .unwrap();
        let message = match channel.recv() {
            Ok(received) => Some(received.message),
            Err(IpcError::PeerClosed) => None,
            Err(e) => panic!("channel: {e}"),
        };
        let mut log = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        log.push_str(&err);
        let status = child.wait().unwrap();
        (message, status.code().unwrap_or(-1), log)
    }

    fn top_store(&self) -> PathBuf {
        self.top.join("store")
    }
}

fn processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            let owner = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next().map(str::to_string));
            if owner.as_deref() == Some(&uid.to_string()) {
                found.push(format!(
                    "{name}: {}",
                    status.lines().next().unwrap_or_default()
                ));
            }
        }
    }
    found
}

#[test]
fn a_build_writes_its_output() {
    need_root!();
    let host = Host::new("nixbld5");
    let out = store_path('a', "out");
    let script = "set -e; test \"$(cat /build/file1)\" = contents; test \"$PWD\" = /build; echo hello > $out; echo built";
    let (message, code, log) = host.build(host.spec(script, &out));
    assert_eq!(message, None, "log: {log}");
    assert_eq!(code, 0, "log: {log}");
    assert!(log.contains("built"), "log: {log}");
    let produced = host.top_store().join(out.base_name());
    assert_eq!(std::fs::read_to_string(&produced).unwrap(), "hello\n");
    assert_eq!(std::fs::metadata(&produced).unwrap().uid(), host.uid);
    // The build's files were written with O_EXCL in build/.
    let file1 = host.top.join("build/file1");
    assert_eq!(std::fs::metadata(&file1).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn a_failing_builder_exits_nonzero() {
    need_root!();
    let host = Host::new("nixbld5");
    let out = store_path('a', "out");
    let (message, code, log) = host.build(host.spec("echo failing; exit 3", &out));
    assert_eq!(message, None, "log: {log}");
    assert_eq!(code, 3, "log: {log}");
    assert!(log.contains("failing"));
}

#[test]
fn the_canary_sees_the_policy() {
    need_root!();
    let host = Host::new("nixbld6");
    let out = store_path('a', "out");
    let mut spec = host.spec("", &out);
    spec.canary = true;
    let (message, code, log) = host.build(spec);
    let Some(BuilderToBroker::CanaryReport(report)) = message else {
        panic!("no canary report: {message:?}, log: {log}");
    };
    let SandboxReport {
        uid_map,
        gid_map,
        cap_eff,
        no_new_privs,
        seccomp_mode,
        landlock_abi,
        mounts,
        net_devices,
        hostname,
        uids,
        groups,
    } = *report;
    assert_eq!(code, 0, "log: {log}");
    let fields = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(fields(&uid_map), ["1000", &host.uid.to_string(), "1"]);
    assert_eq!(fields(&gid_map), ["100", &host.gid.to_string(), "1"]);
    assert_eq!(cap_eff, 0);
    assert!(no_new_privs);
    assert_eq!(seccomp_mode, 2);
    assert_eq!(net_devices, ["lo"]);
    assert_eq!(hostname, "localhost");
    assert_eq!(uids, [1000; 3]);
    assert!(groups.is_empty());
    let busybox = format!("/nix/store/{}", host.busybox.base_name());
    let allowed = [
        "/",
        "/nix/store",
        &busybox,
        "/build",
        "/proc",
        "/dev",
        "/dev/full",
        "/dev/null",
        "/dev/random",
        "/dev/tty",
        "/dev/urandom",
        "/dev/zero",
        "/dev/pts",
        "/dev/shm",
        "/tmp",
    ];
    for mount in &mounts {
        assert!(
            allowed.contains(&mount.as_str()),
            "unexpected mount {mount} in {mounts:?}"
        );
    }
    for needed in [
        "/",
        "/nix/store",
        busybox.as_str(),
        "/build",
        "/proc",
        "/dev",
        "/tmp",
    ] {
        assert!(
            mounts.iter().any(|m| m == needed),
            "{needed} missing from {mounts:?}"
        );
    }
    assert!(log.contains("ward-builder: landlock:"), "log: {log}");
    eprintln!("landlock ABI {landlock_abi:?}; log: {log}");
}

#[test]
fn hostile_builds_are_contained() {
    need_root!();
    let host = Host::new("nixbld7");
    let out = store_path('a', "out");
    let input = format!("/nix/store/{}", host.busybox.base_name());
    let script = format!(
        r#"
        bad=0
        check() {{ echo "FAIL: $1"; bad=1; }}
        cat /etc/shadow >/dev/null 2>&1 && check "read /etc/shadow"
        ls /root >/dev/null 2>&1 && check "listed /root"
        ls /home >/dev/null 2>&1 && check "listed /home"
        echo x > {input}/bin/planted 2>/dev/null && check "wrote into an input"
        rm -f {input}/bin/cat 2>/dev/null; test -e {input}/bin/cat || check "removed from an input"
        echo x > /planted 2>/dev/null && check "wrote into /"
        echo x > /etc/passwd 2>/dev/null && check "wrote /etc/passwd"
        touch /build/suid
        msg=$(chmod u+s /build/suid 2>&1) && check "chmod u+s"
        echo "chmod u+s: $msg"
        case "$msg" in *"not permitted"*) ;; *) check "chmod u+s error was '$msg'";; esac
        chmod g+s /build/suid 2>/dev/null && check "chmod g+s"
        chmod 755 /build/suid || check "plain chmod"
        mknod /build/dev c 1 3 2>/dev/null && check "mknod"
        mount -t tmpfs none /tmp 2>/dev/null && check "mount"
        test "$$" = 1 || check "shell is pid $$, not 1"
        n=$(ls /proc | grep -c '^[0-9]')
        test "$n" -le 4 || check "sees $n processes: $(ls /proc)"
        test "$(id -u)" = 1000 || check "uid $(id -u)"
        test "$(hostname)" = localhost || check "hostname"
        echo ok > $out
        echo "hostile checks done: bad=$bad"
        exit $bad
        "#
    );
    let (message, code, log) = host.build(host.spec(&script, &out));
    assert_eq!(message, None, "log: {log}");
    assert!(!log.contains("FAIL"), "log: {log}");
    assert_eq!(code, 0, "log: {log}");
    assert!(log.contains("hostile checks done: bad=0"), "log: {log}");
    assert!(
        log.contains("chmod u+s: chmod: /build/suid: Operation not permitted"),
        "log: {log}"
    );
    eprintln!("{log}");
    assert!(!host
        .store
        .join(host.busybox.base_name())
        .join("bin/planted")
        .exists());
}

#[test]
fn background_processes_die_with_the_build() {
    need_root!();
    let host = Host::new("nixbld8");
    let out = store_path('a', "out");
    let script = "(setsid sleep 1000 &) ; (sleep 1000 &); sleep 0.2; echo started > $out; exit 0";
    let (message, code, log) = host.build(host.spec(script, &out));
    assert_eq!(message, None, "log: {log}");
    assert_eq!(code, 0, "log: {log}");
    assert!(host.top_store().join(out.base_name()).exists());
    let mut left = processes_of(host.uid);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = processes_of(host.uid);
    }
    assert!(
        left.is_empty(),
        "processes of the build user survived: {left:?}"
    );
}

#[test]
fn a_missing_builder_is_a_setup_failure() {
    need_root!();
    let host = Host::new("nixbld5");
    let out = store_path('a', "out");
    let mut spec = host.spec("", &out);
    let missing = format!("/nix/store/{}-nope/bin/sh", "1".repeat(32));
    spec.builder = missing.clone();
    let (message, code, log) = host.build(spec);
    match message {
        Some(BuilderToBroker::SetupFailed {
            step: SetupStep::Exec,
            message,
        }) => assert_eq!(
            message,
            format!("executing '{missing}': No such file or directory")
        ),
        other => panic!("expected SetupFailed(Exec): {other:?}, log: {log}"),
    }
    assert_eq!(code, 1);
}

#[test]
fn a_relative_builder_is_refused_before_anything() {
    need_root!();
    let host = Host::new("nixbld5");
    let out = store_path('a', "out");
    let mut spec = host.spec("", &out);
    spec.builder = "bin/sh".into();
    let (message, code, _log) = host.build(spec);
    assert!(
        matches!(
            message,
            Some(BuilderToBroker::SetupFailed {
                step: SetupStep::ReadSpec,
                ..
            })
        ),
        "{message:?}"
    );
    assert_eq!(code, 1);
    assert!(!host.top.join("build").exists());
}

#[test]
fn a_build_without_chroot_runs_on_the_host() {
    need_root!();
    let host = Host::new("nixbld9");
    let out = store_path('a', "out");
    // The outputs go to the real store directory, which the build user may write here.
    let real_store = host.store.clone();
    nix::unistd::chown(&real_store, Some(host.uid.into()), None).unwrap();
    let mut spec = host.spec("", &out);
    spec.chroot = false;
    spec.builder = format!(
        "{}/{}/bin/sh",
        real_store.display(),
        host.busybox.base_name()
    );
    let out_path = real_store.join(out.base_name());
    spec.env
        .insert("out".into(), out_path.to_str().unwrap().into());
    spec.env.insert(
        "PATH".into(),
        format!("{}/{}/bin", real_store.display(), host.busybox.base_name()),
    );
    spec.args = vec![
        "-c".into(),
        "set -e; test \"$TMPDIR\" != /build; test \"$(cat file1)\" = contents; echo host > $out"
            .into(),
    ];
    let (message, code, log) = host.build(spec);
    assert_eq!(message, None, "log: {log}");
    assert_eq!(code, 0, "log: {log}");
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "host\n");
}

// ---- collect ----

/// Runs `collect` over `outputs` in `host.top/store`; returns the message and the NARs.
fn collect(host: &Host, outputs: &[StorePath]) -> (BuilderToBroker, Vec<Vec<u8>>, i32) {
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for _ in outputs {
        let (r, w) = nix::unistd::pipe().unwrap();
        readers.push(r);
        writers.push(w);
    }
    let (channel, mut child) = host.spawn("collect", writers);
    channel
        .send(
            &BrokerToBuilder::Collect(Box::new(CollectSpec {
                build: BuildId(1),
                outputs: outputs.to_vec(),
                from_real_store: false,
                real_store_dir: host.store.to_str().unwrap().into(),
                owner_uid: host.uid,
            })),
            &[],
        )
        .unwrap();
    let message = channel.recv().unwrap().message;
    // Drain the pipes in reverse order: the builder writes them concurrently.
    let threads: Vec<_> = readers
        .into_iter()
        .rev()
        .map(|r| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
                bytes
            })
        })
        .collect();
    let mut nars: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    nars.reverse();
    let status = child.wait().unwrap();
    (message, nars, status.code().unwrap_or(-1))
}

fn own(host: &Host, path: &Path) {
    nix::unistd::fchownat(
        None,
        path,
        Some(host.uid.into()),
        Some(host.gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn prepare_store(host: &Host) -> PathBuf {
    let store = host.top_store();
    std::fs::create_dir(&store).unwrap();
    own(host, &store);
    store
}

#[test]
fn collect_serialises_directories_and_symlinks() {
    need_root!();
    let host = Host::new("nixbld10");
    let store = prepare_store(&host);
    let dir_out = store_path('b', "dir");
    let link_out = store_path('c', "link");
    let d = store.join(dir_out.base_name());
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(d.join("sub/run"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(d.join("sub/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("Z"), b"upper case sorts first").unwrap();
    std::fs::hard_link(d.join("a.txt"), d.join("sub/a-again")).unwrap();
    std::os::unix::fs::symlink("../a.txt", d.join("sub/link")).unwrap();
    // Links to the root, to themselves and to each other are stored as links, never walked.
    std::os::unix::fs::symlink("/", d.join("sub/root")).unwrap();
    std::os::unix::fs::symlink("self", d.join("sub/self")).unwrap();
    std::os::unix::fs::symlink("loop-b", d.join("sub/loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", d.join("sub/loop-b")).unwrap();
    std::fs::write(d.join("sub/deeper/unreadable"), b"secret").unwrap();
    std::fs::set_permissions(
        d.join("sub/deeper/unreadable"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", store.join(link_out.base_name())).unwrap();
    for entry in [
        "",
        "sub",
        "sub/deeper",
        "a.txt",
        "sub/run",
        "Z",
        "sub/link",
        "sub/root",
        "sub/self",
        "sub/loop-a",
        "sub/loop-b",
        "sub/deeper/unreadable",
    ] {
        own(&host, &d.join(entry));
    }
    own(&host, &store.join(link_out.base_name()));

    let (message, nars, code) = collect(&host, &[dir_out.clone(), link_out.clone()]);
    assert_eq!(message, BuilderToBroker::Collected);
    assert_eq!(code, 0);
    // The unreadable file was made readable by its owner, then dumped.
    let mut expected = Vec::new();
    ward_proto::nar::dump_path(&d, &mut expected).unwrap();
    assert_eq!(nars[0], expected, "directory NAR differs from dump_path");
    let mut expected = Vec::new();
    ward_proto::nar::dump_path(&store.join(link_out.base_name()), &mut expected).unwrap();
    assert_eq!(nars[1], expected);
    assert!(nars[1].windows(11).any(|w| w == b"/etc/shadow"));
    assert!(
        !nars[1].windows(4).any(|w| w == b"root"),
        "the link was followed"
    );
}

fn expect_refusal(host: &Host, output: &StorePath, needle: &str) {
    let (message, nars, code) = collect(host, std::slice::from_ref(output));
    match message {
        BuilderToBroker::CollectRefused { output: o, reason } => {
            assert_eq!(o, output.base_name());
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(nars[0].is_empty(), "a NAR was written despite the refusal");
    assert_eq!(code, 1);
}

#[test]
fn collect_refuses_what_cannot_be_registered() {
    need_root!();
    let host = Host::new("nixbld10");
    let store = prepare_store(&host);

    let missing = store_path('f', "missing");
    expect_refusal(&host, &missing, "was not produced by the builder");

    let fifo = store_path('g', "fifo");
    let d = store.join(fifo.base_name());
    std::fs::create_dir(&d).unwrap();
    own(&host, &d);
    nix::unistd::mkfifo(
        &d.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    own(&host, &d.join("pipe"));
    expect_refusal(&host, &fifo, "/pipe' is a FIFO");

    let writable = store_path('h', "writable");
    let d = store.join(writable.base_name());
    std::fs::create_dir(&d).unwrap();
    own(&host, &d);
    std::fs::write(d.join("f"), b"x").unwrap();
    std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o664)).unwrap();
    own(&host, &d.join("f"));
    expect_refusal(&host, &writable, "is writable by group or others");

    let linked = store_path('i', "linked");
    let d = store.join(linked.base_name());
    std::fs::create_dir(&d).unwrap();
    own(&host, &d);
    std::fs::write(host.top.join("outside"), b"x").unwrap();
    own(&host, &host.top.join("outside"));
    std::fs::hard_link(host.top.join("outside"), d.join("link")).unwrap();
    expect_refusal(&host, &linked, "hard links");

    let socket = store_path('k', "socket");
    let d = store.join(socket.base_name());
    std::fs::create_dir(&d).unwrap();
    own(&host, &d);
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    own(&host, &d.join("sock"));
    expect_refusal(&host, &socket, "/sock' is a socket");

    let foreign = store_path('j', "foreign");
    std::fs::write(store.join(foreign.base_name()), b"root's").unwrap();
    expect_refusal(&host, &foreign, "not by the build user");
}
