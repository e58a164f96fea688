//! `ward-builder build`: sets up the sandbox described by a [`SandboxSpec`] and execs the
//! derivation's builder (or, for a canary, reports what the sandbox looks like from inside).

use std::convert::Infallible;
use std::ffi::CString;
use std::fmt::Display;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use ward_ipc::builder::{BuilderToBroker, SandboxReport, SandboxSpec, SetupStep};
use ward_ipc::BuilderBrokerChannel;

use crate::net;
use crate::spec;
use crate::sys;
use crate::{seccomp, FD_TOP};

/// A failed step: sent to the broker as [`BuilderToBroker::SetupFailed`].
#[derive(Debug)]
pub struct Failure {
    /// The step.
    pub step: SetupStep,
    /// What failed, naming the path or call and the errno.
    pub message: String,
}

type Step<T> = Result<T, Failure>;

pub(crate) fn fail(step: SetupStep, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
    }
}

/// Attaches the step and a description of the operation to an error.
trait At<T> {
    fn at(self, step: SetupStep, what: impl FnOnce() -> String) -> Step<T>;
}

impl<T, E: Display> At<T> for Result<T, E> {
    fn at(self, step: SetupStep, what: impl FnOnce() -> String) -> Step<T> {
        self.map_err(|e| fail(step, format!("{}: {e}", what())))
    }
}

/// unshare(2) with the new user namespace a sandbox starts from; when the kernel refuses one
/// to this user, the error says so and what to do about it.
fn unshare_namespaces(flags: CloneFlags) -> Step<()> {
    nix::sched::unshare(flags).map_err(|e| {
        let hint = match e {
            nix::errno::Errno::EPERM | nix::errno::Errno::ENOSPC | nix::errno::Errno::EINVAL
                if flags.contains(CloneFlags::CLONE_NEWUSER) =>
            {
                " (this kernel does not let the build user create a user namespace: see \
                 user.max_user_namespaces, kernel.unprivileged_userns_clone or AppArmor's \
                 restrict_unprivileged_userns, and whether the daemon runs inside a chroot, \
                 where the kernel refuses them ('ward doctor' checks these); or set 'sandbox = \
                 false' to build without a sandbox)"
            }
            _ => "",
        };
        fail(
            SetupStep::Namespaces,
            format!("unshare({flags:?}): {e}{hint}"),
        )
    })
}

/// `/proc/self/fd/N/rel`: a path through a handle, for mount sources and targets.
fn fd_path(fd: &impl AsRawFd, rel: &str) -> String {
    if rel.is_empty() {
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    } else {
        format!("/proc/self/fd/{}/{rel}", fd.as_raw_fd())
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn open_dir(parent: impl AsFd, name: &str, step: SetupStep) -> Step<OwnedFd> {
    rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
        .at(step, || format!("opening directory '{name}'"))
}

fn mkdir_excl(parent: impl AsFd, name: &str, mode: u32, step: SetupStep) -> Step<()> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode))
        .at(step, || format!("mkdirat '{name}'"))
}

/// Creates the directories leading to `path` (absolute, inside the new root) component by
/// component without following symlinks; returns the parent's handle and the last component.
fn walk_create(root: &OwnedFd, path: &str, step: SetupStep) -> Step<(OwnedFd, String)> {
    let parts: Vec<&str> = spec::components(path).collect();
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| fail(step, format!("'{path}' names the root")))?;
    let mut cur = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty())
        .at(step, || "reopening the root".into())?;
    for dir in dirs {
        match rustix::fs::mkdirat(&cur, *dir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail(step, format!("mkdirat '{dir}' (for '{path}'): {e}"))),
        }
        cur = rustix::fs::openat(&cur, *dir, DIR_FLAGS, Mode::empty()).at(step, || {
            format!("opening '{dir}' (for '{path}') without following symlinks")
        })?;
    }
    Ok((cur, (*last).to_string()))
}

/// Creates an empty directory or file named `name` in `parent` to mount on (an existing one
/// of the right type is reused).
fn mount_point(parent: &OwnedFd, name: &str, dir: bool, step: SetupStep) -> Step<()> {
    if dir {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => open_dir(parent, name, step).map(drop),
            Err(e) => Err(fail(step, format!("mkdirat '{name}': {e}"))),
        }
    } else {
        rustix::fs::openat(
            parent,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
        .at(step, || format!("creating mount point '{name}'"))
    }
}

fn do_mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    step: SetupStep,
) -> Step<()> {
    mount(source, target, fstype, flags, data).at(step, || {
        format!(
            "mount {} on '{target}' ({})",
            source.unwrap_or("none"),
            fstype.unwrap_or("bind")
        )
    })
}

/// Remounts the bind mount at `target` read-only, nosuid, nodev, keeping the flags the kernel
/// locks for a mount inherited into a user namespace (noexec and the atime flags).
fn remount_readonly(target: &str, step: SetupStep) -> Step<()> {
    use rustix::fs::StatVfsMountFlags as F;
    let vfs = rustix::fs::statvfs(target).at(step, || format!("statvfs '{target}'"))?;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    for (st, ms) in [
        (F::NOEXEC, MsFlags::MS_NOEXEC),
        (F::NOATIME, MsFlags::MS_NOATIME),
        (F::NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::RELATIME, MsFlags::MS_RELATIME),
    ] {
        if vfs.f_flag.contains(st) {
            flags |= ms;
        }
    }
    do_mount(None, target, None, flags, None, step)
}

fn write_new_file(
    dir: &OwnedFd,
    name: &str,
    contents: &[u8],
    mode: u32,
    step: SetupStep,
) -> Step<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .at(step, || format!("creating '{name}'"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)
        .at(step, || format!("writing '{name}'"))
}

/// Runs `build` to its end: on success this execs (or, for a canary, exits after reporting).
pub fn run(channel: &BuilderBrokerChannel, top: OwnedFd, spec: SandboxSpec) -> Step<Infallible> {
    spec::check_sandbox_spec(&spec).map_err(|m| fail(SetupStep::ReadSpec, m))?;
    rustix::process::umask(Mode::from_raw_mode(0o022));

    // The build directory and the sandbox's store directory, through the handle only.
    mkdir_excl(&top, "build", 0o700, SetupStep::Files)?;
    mkdir_excl(&top, "store", 0o755, SetupStep::Files)?;
    let build_dir = open_dir(&top, "build", SetupStep::Files)?;
    for file in &spec.build_dir_files {
        write_new_file(
            &build_dir,
            &file.name,
            &file.contents,
            0o644,
            SetupStep::Files,
        )?;
    }

    if !spec.chroot && spec.private_store {
        return run_with_private_store(channel, top, build_dir, spec);
    }
    if !spec.chroot {
        return run_without_chroot(channel, top, build_dir, spec);
    }

    // A fixed-output build reaches the network through slirp4netns when the broker has it;
    // its helper is forked while we are still in the host's namespaces.
    let helper = match (spec.network, spec.network_helper.as_deref()) {
        (true, Some(slirp4netns)) => Some(net::start(slirp4netns)?),
        _ => None,
    };
    // Namespaces, then map only ourselves.
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !shares_host_network(&spec) {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // Our ids on the host, read before unshare (inside an unmapped namespace they read 65534).
    let (euid, egid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    // A descriptor opened before unshare keeps naming the old mount namespace's mounts, on
    // which nothing can be mounted from the new one. The working directory, though, is
    // translated into the new namespace: stand in <top>, unshare, and reopen "." there.
    nix::unistd::fchdir(top.as_raw_fd()).at(SetupStep::Namespaces, || {
        "fchdir to the build directory".into()
    })?;
    unshare_namespaces(flags)?;
    drop(top);
    drop(build_dir);
    let top = open_dir(CWD, ".", SetupStep::Namespaces)?;
    let build_dir = open_dir(&top, "build", SetupStep::Namespaces)?;
    std::fs::write("/proc/self/setgroups", "deny")
        .at(SetupStep::IdMaps, || "writing /proc/self/setgroups".into())?;
    std::fs::write(
        "/proc/self/uid_map",
        format!("{} {euid} 1\n", spec.sandbox_uid),
    )
    .at(SetupStep::IdMaps, || "writing /proc/self/uid_map".into())?;
    std::fs::write(
        "/proc/self/gid_map",
        format!("{} {egid} 1\n", spec.sandbox_gid),
    )
    .at(SetupStep::IdMaps, || "writing /proc/self/gid_map".into())?;
    let (net_ready, net_exit) = match helper {
        Some(helper) => {
            helper.go()?;
            (Some(helper.ready), Some((helper.exit, helper.pid)))
        }
        None => (None, None),
    };

    // A pipe whose write end only the parent holds: the child sees it hang up if the parent
    // died before PR_SET_PDEATHSIG took effect.
    let (alive_r, alive_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .at(SetupStep::Namespaces, || "pipe2".into())?;
    match sys::fork_process().at(SetupStep::Namespaces, || {
        "fork into the new pid namespace".into()
    })? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            drop(net_ready);
            parent_wait(child, net_exit)
        }
        ForkResult::Child => {
            drop(alive_w);
            drop(net_exit);
            child_setup(channel, top, build_dir, spec, alive_r, net_ready)
        }
    }
}

/// Whether the build keeps the host's network namespace: a fixed-output build without
/// slirp4netns, or one without a chroot (those see the host's file system anyway).
fn shares_host_network(spec: &SandboxSpec) -> bool {
    spec.network && !(spec.chroot && spec.network_helper.is_some())
}

/// The parent outside the pid namespace: lets go of the log pipe and the channel, waits for
/// pid 1 of the namespace and exits with its status (128 + signal if killed). With `net`, it
/// then ends slirp4netns by closing its exit pipe and reaps it.
fn parent_wait(child: nix::unistd::Pid, net: Option<(OwnedFd, nix::unistd::Pid)>) -> ! {
    if let Ok(null) = rustix::fs::openat(
        CWD,
        "/dev/null",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        // Replacing 1, 2, 3 and 4 closes the log pipe, the channel and the build directory
        // in this process; the child keeps its own copies.
        for fd in [1, 2, 3, FD_TOP] {
            let _ = sys::dup_onto(null.as_raw_fd(), fd);
        }
    }
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break 1,
        }
    };
    if let Some((exit, helper)) = net {
        drop(exit);
        reap_within(helper, std::time::Duration::from_secs(2));
    }
    std::process::exit(code)
}

/// Reaps `pid`, killing it if it has not exited within `limit`.
fn reap_within(pid: nix::unistd::Pid, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// Pid 1 of the new namespaces: the mount tree, pivot_root, and the rest.
fn child_setup(
    channel: &BuilderBrokerChannel,
    top: OwnedFd,
    build_dir: OwnedFd,
    spec: SandboxSpec,
    alive: OwnedFd,
    net_ready: Option<OwnedFd>,
) -> Step<Infallible> {
    drop(build_dir);
    let root = mount_tree(&top, &spec)?;

    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached.
    nix::unistd::fchdir(root.as_raw_fd())
        .at(SetupStep::PivotRoot, || "fchdir to the new root".into())?;
    nix::unistd::pivot_root(".", ".")
        .at(SetupStep::PivotRoot, || "pivot_root(\".\", \".\")".into())?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).at(SetupStep::PivotRoot, || {
        "umount2(old root, MNT_DETACH)".into()
    })?;
    nix::unistd::chdir("/").at(SetupStep::PivotRoot, || "chdir /".into())?;
    drop(root);
    drop(top);

    if !shares_host_network(&spec) {
        sys::bring_up_loopback().at(SetupStep::Network, || "ioctl(SIOCSIFFLAGS, lo up)".into())?;
    }
    nix::unistd::sethostname("localhost").at(SetupStep::Network, || "sethostname".into())?;
    rustix::system::setdomainname(b"(none)").at(SetupStep::Network, || "setdomainname".into())?;
    if let Some(ready) = net_ready {
        net::wait_configured(ready)?;
    }

    nix::unistd::chdir(spec.sandbox_build_dir.as_str()).at(SetupStep::Files, || {
        format!("chdir '{}'", spec.sandbox_build_dir)
    })?;

    drop_privileges(&spec)?;
    confine_and_exec(channel, &spec, spec.env.clone(), Some(alive), None)
}

/// The tmpfs root and everything mounted in it; returns the root's handle.
/// Binds every input path of the real store read-only into `store` (a symlink input is
/// copied as a symlink), each on a mount point made for it.
fn bind_inputs(store: &OwnedFd, spec: &SandboxSpec, step: SetupStep) -> Step<()> {
    for input in &spec.input_paths {
        let base = input.base_name();
        let source = format!("{}/{base}", spec.real_store_dir);
        let st = rustix::fs::statat(CWD, source.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .at(step, || format!("lstat input '{source}'"))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(CWD, source.as_str(), Vec::new())
                    .at(step, || format!("readlink input '{source}'"))?;
                rustix::fs::symlinkat(target.as_c_str(), store, base)
                    .at(step, || format!("symlinkat input '{base}'"))?;
                continue;
            }
            FileType::Directory => mkdir_excl(store, base, 0o755, step)?,
            FileType::RegularFile => write_new_file(store, base, b"", 0o644, step)?,
            other => {
                return Err(fail(
                    step,
                    format!("input '{source}' has unsupported type {other:?}"),
                ))
            }
        }
        let target = fd_path(store, base);
        do_mount(
            Some(&source),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            step,
        )?;
        remount_readonly(&target, step)?;
    }
    Ok(())
}

fn mount_tree(top: &OwnedFd, spec: &SandboxSpec) -> Step<OwnedFd> {
    use SetupStep::MountTree as M;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    do_mount(
        None,
        "/",
        None,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None,
        M,
    )?;
    mkdir_excl(top, "root", 0o755, M)?;
    let root_path = fd_path(top, "root");
    do_mount(
        Some("tmpfs"),
        &root_path,
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("mode=0755,size={}", spec.tmpfs_size)),
        M,
    )?;
    let root = open_dir(top, "root", M)?;

    // /tmp first: a store directory, build directory or sandbox path below /tmp (a store
    // under a non-default NIX_STORE_DIR such as /tmp/x/store) is then created inside it
    // rather than hidden by it.
    mount_point(&root, "tmp", true, M)?;
    do_mount(
        Some("tmpfs"),
        &fd_path(&root, "tmp"),
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("mode=1777,size={}", spec.tmpfs_size)),
        M,
    )?;

    // The store: <top>/store, writable, holding the inputs' mount points.
    let (parent, name) = walk_create(&root, &spec.store_dir, M)?;
    mount_point(&parent, &name, true, M)?;
    let store_target = fd_path(&parent, &name);
    do_mount(
        Some(&fd_path(top, "store")),
        &store_target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        M,
    )?;
    let store = open_dir(&parent, &name, M)?;
    bind_inputs(&store, spec, M)?;
    drop(store);

    // The build directory.
    let (parent, name) = walk_create(&root, &spec.sandbox_build_dir, M)?;
    mount_point(&parent, &name, true, M)?;
    do_mount(
        Some(&fd_path(top, "build")),
        &fd_path(&parent, &name),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        M,
    )?;

    // sandbox-paths.
    for bind in &spec.bind_mounts {
        let st = match rustix::fs::statat(CWD, bind.source.as_str(), AtFlags::empty()) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) if bind.optional => continue,
            Err(e) => return Err(fail(M, format!("stat sandbox path '{}': {e}", bind.source))),
        };
        let dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let (parent, name) = walk_create(&root, &bind.target, M)?;
        mount_point(&parent, &name, dir, M)?;
        let target = fd_path(&parent, &name);
        do_mount(
            Some(&bind.source),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            M,
        )?;
        remount_readonly(&target, M)?;
    }

    // /proc.
    mount_point(&root, "proc", true, M)?;
    do_mount(
        Some("proc"),
        &fd_path(&root, "proc"),
        Some("proc"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
        M,
    )?;

    // /dev.
    mount_point(&root, "dev", true, M)?;
    let dev_path = fd_path(&root, "dev");
    do_mount(
        Some("tmpfs"),
        &dev_path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
        M,
    )?;
    let dev = open_dir(&root, "dev", M)?;
    for name in ["full", "null", "random", "tty", "urandom", "zero"] {
        let source = format!("/dev/{name}");
        if name == "tty" && rustix::fs::statat(CWD, source.as_str(), AtFlags::empty()).is_err() {
            continue;
        }
        mount_point(&dev, name, false, M)?;
        do_mount(
            Some(&source),
            &fd_path(&dev, name),
            None,
            MsFlags::MS_BIND,
            None,
            M,
        )?;
    }
    mount_point(&dev, "pts", true, M)?;
    let pts = fd_path(&dev, "pts");
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if mount(
        Some("devpts"),
        pts.as_str(),
        Some("devpts"),
        pts_flags,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .is_err()
    {
        do_mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            pts_flags,
            Some("newinstance,mode=0620"),
            M,
        )?;
    }
    mount_point(&dev, "shm", true, M)?;
    do_mount(
        Some("tmpfs"),
        &fd_path(&dev, "shm"),
        Some("tmpfs"),
        nosuid_nodev,
        Some(&format!("mode=1777,size={}", spec.tmpfs_size)),
        M,
    )?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        rustix::fs::symlinkat(target, &dev, name).at(M, || format!("symlinkat /dev/{name}"))?;
    }
    drop(dev);
    do_mount(
        None,
        &dev_path,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        None,
        M,
    )?;

    // /etc.
    use SetupStep::Files as F;
    mount_point(&root, "etc", true, F)?;
    let etc = open_dir(&root, "etc", F)?;
    write_new_file(
        &etc,
        "passwd",
        spec::passwd_text(spec.sandbox_uid, spec.sandbox_gid, &spec.sandbox_build_dir).as_bytes(),
        0o444,
        F,
    )?;
    write_new_file(
        &etc,
        "group",
        spec::group_text(spec.sandbox_gid).as_bytes(),
        0o444,
        F,
    )?;
    write_new_file(&etc, "hosts", spec::HOSTS_TEXT.as_bytes(), 0o444, F)?;
    if spec.network {
        let own_network = !shares_host_network(spec);
        if own_network {
            // slirp4netns's resolver, which forwards to the host's.
            write_new_file(&etc, "resolv.conf", net::RESOLV_CONF.as_bytes(), 0o444, F)?;
        }
        for name in ["resolv.conf", "services", "nsswitch.conf"] {
            if own_network && name == "resolv.conf" {
                continue;
            }
            let source = format!("/etc/{name}");
            match rustix::fs::statat(CWD, source.as_str(), AtFlags::empty()) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
                _ => continue,
            }
            mount_point(&etc, name, false, M)?;
            let target = fd_path(&etc, name);
            do_mount(Some(&source), &target, None, MsFlags::MS_BIND, None, M)?;
            remount_readonly(&target, M)?;
        }
    }
    drop(etc);

    // The root itself read-only.
    do_mount(
        None,
        &root_path,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | nosuid_nodev,
        None,
        M,
    )?;
    Ok(root)
}

fn drop_privileges(spec: &SandboxSpec) -> Step<()> {
    use SetupStep::DropPrivileges as D;
    let (uid, gid) = (
        Uid::from_raw(spec.sandbox_uid),
        Gid::from_raw(spec.sandbox_gid),
    );
    nix::unistd::setresgid(gid, gid, gid).at(D, || format!("setresgid({gid})"))?;
    nix::unistd::setresuid(uid, uid, uid).at(D, || format!("setresuid({uid})"))?;
    check_groups_cleared(spec)
}

/// When the broker cleared the supplementary groups (as root), none may be left.
fn check_groups_cleared(spec: &SandboxSpec) -> Step<()> {
    let groups = nix::unistd::getgroups().at(SetupStep::DropPrivileges, || "getgroups".into())?;
    if spec.groups_cleared && !groups.is_empty() {
        return Err(fail(
            SetupStep::DropPrivileges,
            format!(
                "supplementary groups {groups:?} remain (the broker must clear them before exec)"
            ),
        ));
    }
    Ok(())
}

/// Without a chroot: the host's file system, still as the build user, with no_new_privs,
/// landlock and seccomp.
fn run_without_chroot(
    channel: &BuilderBrokerChannel,
    top: OwnedFd,
    build_dir: OwnedFd,
    spec: SandboxSpec,
) -> Step<Infallible> {
    nix::unistd::fchdir(build_dir.as_raw_fd()).at(SetupStep::Files, || {
        format!("chdir '{}'", spec.host_build_dir)
    })?;
    drop(top);
    check_groups_cleared(&spec)?;
    let env = spec::rewrite_env_for_host(&spec.env, &spec.sandbox_build_dir, &spec.host_build_dir);
    let host_dir = fd_path(&build_dir, "");
    let result = confine_and_exec(channel, &spec, env, None, Some(host_dir));
    drop(build_dir);
    result
}

/// Without a chroot, in a multi-user store ([`SandboxSpec::private_store`]): the host's file
/// system as the build user, in a user namespace that maps only that user to itself and a
/// mount namespace in which the store directory is the build's own `store/` (the inputs bound
/// in read-only, the outputs written there and collected from there) and the build directory
/// is reachable at its host path (the broker's builds directory, root's 0700, is covered by a
/// tmpfs holding only this build's tree). Then the same confinement as without a chroot.
fn run_with_private_store(
    channel: &BuilderBrokerChannel,
    top: OwnedFd,
    build_dir: OwnedFd,
    spec: SandboxSpec,
) -> Step<Infallible> {
    use SetupStep::MountTree as M;
    check_groups_cleared(&spec)?;
    let host_build = std::path::Path::new(&spec.host_build_dir);
    let (Some(own_dir), Some(builds)) = (
        host_build.parent(),
        host_build.parent().and_then(std::path::Path::parent),
    ) else {
        return Err(fail(
            M,
            format!(
                "host build directory '{}' has no parent",
                spec.host_build_dir
            ),
        ));
    };
    let own_name = own_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| fail(M, format!("'{}' has no name", own_dir.display())))?
        .to_owned();
    let builds = builds.to_string_lossy().into_owned();

    let (euid, egid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS;
    // As in `run`: a descriptor from before unshare names the old namespace's mounts.
    nix::unistd::fchdir(top.as_raw_fd()).at(SetupStep::Namespaces, || {
        "fchdir to the build directory".into()
    })?;
    unshare_namespaces(flags)?;
    drop(top);
    drop(build_dir);
    let top = open_dir(CWD, ".", SetupStep::Namespaces)?;
    std::fs::write("/proc/self/setgroups", "deny")
        .at(SetupStep::IdMaps, || "writing /proc/self/setgroups".into())?;
    std::fs::write("/proc/self/uid_map", format!("{euid} {euid} 1\n"))
        .at(SetupStep::IdMaps, || "writing /proc/self/uid_map".into())?;
    std::fs::write("/proc/self/gid_map", format!("{egid} {egid} 1\n"))
        .at(SetupStep::IdMaps, || "writing /proc/self/gid_map".into())?;

    do_mount(
        None,
        "/",
        None,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None,
        M,
    )?;
    let store = open_dir(&top, "store", M)?;
    bind_inputs(&store, &spec, M)?;
    drop(store);
    do_mount(
        Some(&fd_path(&top, "store")),
        &spec.real_store_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        M,
    )?;
    do_mount(
        Some("tmpfs"),
        &builds,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
        M,
    )?;
    let cover = open_dir(CWD, &builds, M)?;
    mkdir_excl(&cover, &own_name, 0o700, M)?;
    do_mount(
        Some(&fd_path(&top, "")),
        &fd_path(&cover, &own_name),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        M,
    )?;
    drop(cover);
    drop(top);
    nix::unistd::chdir(host_build).at(SetupStep::Files, || {
        format!("chdir '{}'", spec.host_build_dir)
    })?;
    let env = spec::rewrite_env_for_host(&spec.env, &spec.sandbox_build_dir, &spec.host_build_dir);
    let host_dir = spec.host_build_dir.clone();
    confine_and_exec(channel, &spec, env, None, Some(host_dir))
}

/// Devices a build without a chroot may write (the host's `/dev` holds far more, and its
/// `/dev/shm` is shared by every user).
const HOST_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
];

/// The landlock outcome, for the canary and the log line.
#[derive(Debug)]
struct LandlockOutcome {
    abi: Option<i32>,
    status: landlock::RulesetStatus,
}

fn apply_landlock(spec: &SandboxSpec, host_dir: Option<&str>) -> Step<LandlockOutcome> {
    use landlock::{
        Access, AccessFs, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    use SetupStep::Landlock as L;
    let abi = ABI::V9;
    let in_chroot = host_dir.is_none();
    // Inside a chroot /tmp and /dev are the sandbox's own; on the host they are shared, so
    // there the build writes only its build directory, its outputs and a few devices.
    let (writable, devices): (Vec<String>, &[&str]) = match host_dir {
        None => (
            vec![
                "/tmp".into(),
                "/dev".into(),
                spec.sandbox_build_dir.clone(),
                spec.store_dir.clone(),
            ],
            &[],
        ),
        Some(dir) => (
            vec![spec.real_store_dir.clone(), dir.to_string()],
            &HOST_DEVICES,
        ),
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .at(L, || "landlock handle_access".into())?
        .scope(Scope::from_all(abi))
        .at(L, || "landlock scope".into())?
        .create()
        .at(L, || "landlock_create_ruleset".into())?
        .no_new_privs(false);
    let root = PathFd::new("/").at(L, || "opening '/' for landlock".into())?;
    ruleset = ruleset
        .add_rule(PathBeneath::new(root, AccessFs::from_read(abi)))
        .at(L, || "landlock rule for '/'".into())?;
    for path in &writable {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(_) if !in_chroot => continue,
            Err(e) => return Err(fail(L, format!("opening '{path}' for landlock: {e}"))),
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::from_all(abi)))
            .at(L, || format!("landlock rule for '{path}'"))?;
    }
    for device in devices {
        let Ok(fd) = PathFd::new(device) else {
            continue;
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::from_file(abi)))
            .at(L, || format!("landlock rule for '{device}'"))?;
    }
    match ruleset.restrict_self() {
        Ok(status) => {
            let abi = match status.landlock {
                LandlockStatus::Available { effective_abi, .. }
                    if status.ruleset != RulesetStatus::NotEnforced =>
                {
                    Some(effective_abi as i32)
                }
                _ => None,
            };
            Ok(LandlockOutcome {
                abi,
                status: status.ruleset,
            })
        }
        // Without no_new_privs and without CAP_SYS_ADMIN (allow-new-privileges on the host)
        // the kernel refuses; that is the configuration's choice, not a sandbox failure.
        Err(_) if spec.allow_new_privileges => Ok(LandlockOutcome {
            abi: None,
            status: RulesetStatus::NotEnforced,
        }),
        Err(e) => Err(fail(L, format!("landlock_restrict_self: {e}"))),
    }
}

fn drop_capabilities(in_userns: bool) -> Step<()> {
    use SetupStep::Capabilities as C;
    sys::clear_ambient_capabilities().at(C, || "prctl(PR_CAP_AMBIENT_CLEAR_ALL)".into())?;
    match sys::drop_capability_bounding_set() {
        Ok(()) => {}
        // On the host as an ordinary user there is no CAP_SETPCAP; no_new_privs (or the lack
        // of any capability) is what keeps exec from gaining one.
        Err(nix::errno::Errno::EPERM) if !in_userns => {}
        Err(e) => return Err(fail(C, format!("prctl(PR_CAPBSET_DROP): {e}"))),
    }
    let empty = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: empty,
            permitted: empty,
            inheritable: empty,
        },
    )
    .at(C, || "capset(0, 0, 0)".into())
}

/// The steps common to both modes, from no_new_privs to exec.
fn confine_and_exec(
    channel: &BuilderBrokerChannel,
    spec: &SandboxSpec,
    env: std::collections::BTreeMap<String, String>,
    alive: Option<OwnedFd>,
    host_dir: Option<String>,
) -> Step<Infallible> {
    let in_chroot = host_dir.is_none();
    // Everything exec needs, prepared before seccomp.
    let builder =
        CString::new(spec.builder.as_str()).map_err(|_| fail(SetupStep::Exec, "NUL in builder"))?;
    let mut argv = vec![builder.clone()];
    for arg in &spec.args {
        argv.push(
            CString::new(arg.as_str()).map_err(|_| fail(SetupStep::Exec, "NUL in argument"))?,
        );
    }
    let envp = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| fail(SetupStep::Exec, "NUL in environment"))?;
    let programs = if spec.filter_syscalls {
        Some(seccomp::filters(shares_host_network(spec)).map_err(|m| fail(SetupStep::Seccomp, m))?)
    } else {
        None
    };

    if !spec.allow_new_privileges {
        rustix::thread::set_no_new_privs(true).at(SetupStep::NoNewPrivs, || {
            "prctl(PR_SET_NO_NEW_PRIVS)".into()
        })?;
    }
    let landlock = apply_landlock(spec, host_dir.as_deref())?;

    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN (in our user namespace):
    // then the filters go first and the capabilities after (capset stays allowed).
    let install = |programs: &Option<Vec<seccompiler::BpfProgram>>| -> Step<()> {
        match programs {
            Some(p) => seccomp::install(p).map_err(|m| fail(SetupStep::Seccomp, m)),
            None => Ok(()),
        }
    };
    let seccomp_first = spec.allow_new_privileges;
    if seccomp_first {
        set_death_signal(alive.as_ref())?;
        install(&programs)?;
        drop_capabilities(in_chroot)?;
    } else {
        drop_capabilities(in_chroot)?;
        set_death_signal(alive.as_ref())?;
        install(&programs)?;
    }
    drop(alive);

    if spec.canary {
        let report = gather_report(&landlock);
        let line = match landlock.status {
            landlock::RulesetStatus::FullyEnforced => {
                format!("fully enforced (ABI {})", report.landlock_abi.unwrap_or(0))
            }
            landlock::RulesetStatus::PartiallyEnforced => {
                format!(
                    "partially enforced (ABI {})",
                    report.landlock_abi.unwrap_or(0)
                )
            }
            landlock::RulesetStatus::NotEnforced => "not supported by this kernel".into(),
        };
        eprintln!("ward-builder: landlock: {line}");
        let _ = channel.send(&BuilderToBroker::CanaryReport(Box::new(report)), &[]);
        std::process::exit(0);
    }

    let err = nix::unistd::execve(&builder, &argv, &envp).unwrap_err();
    Err(fail(
        SetupStep::Exec,
        format!("executing '{}': {}", spec.builder, err.desc()),
    ))
}

/// PR_SET_PDEATHSIG(SIGKILL) after the last credential change, then a check that the parent
/// is still there (the pipe's write end hangs up when it died).
fn set_death_signal(alive: Option<&OwnedFd>) -> Step<()> {
    let Some(alive) = alive else {
        return Ok(());
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .at(SetupStep::Capabilities, || "prctl(PR_SET_PDEATHSIG)".into())?;
    let mut fds = [rustix::event::PollFd::new(
        alive,
        rustix::event::PollFlags::IN,
    )];
    let ready = rustix::event::poll(
        &mut fds,
        Some(&rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )
    .at(SetupStep::Capabilities, || "poll(parent pipe)".into())?;
    if ready > 0 {
        // The parent is gone: nobody waits for this build.
        std::process::exit(1);
    }
    Ok(())
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}

fn gather_report(landlock: &LandlockOutcome) -> SandboxReport {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let status = read("/proc/self/status");
    let cap_eff = status_field(&status, "CapEff")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(u64::MAX);
    let no_new_privs = status_field(&status, "NoNewPrivs").as_deref() == Some("1");
    let seccomp_mode = status_field(&status, "Seccomp")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mounts = read("/proc/self/mounts")
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect();
    let net_devices = read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ids = nix::unistd::getresuid().ok();
    let uids = ids.map_or([u32::MAX; 3], |r| {
        [r.real.as_raw(), r.effective.as_raw(), r.saved.as_raw()]
    });
    let groups = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    SandboxReport {
        uid_map: read("/proc/self/uid_map"),
        gid_map: read("/proc/self/gid_map"),
        cap_eff,
        no_new_privs,
        seccomp_mode,
        landlock_abi: landlock.abi,
        mounts,
        net_devices,
        hostname,
        uids,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        assert_eq!(
            status_field(s, "CapEff").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(status_field(s, "NoNewPrivs").as_deref(), Some("1"));
        assert_eq!(status_field(s, "Seccomp").as_deref(), Some("2"));
        assert_eq!(status_field(s, "Missing"), None);
    }
}
