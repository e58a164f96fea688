//! The one way the broker starts a program: fork, then, in the child, place exactly the
//! descriptors asked for, reset the signal state, switch to the user asked for and exec.
//!
//! Every child of the broker (the frontend, the store-writer, builders, collectors, the
//! roots helper and hooks) goes through [`spawn`], so what a child inherits from root is
//! decided in this one place: its descriptors (the ones listed, plus the broker's 0–2 where
//! the list names none; everything above is closed), an empty signal mask with SIGPIPE at
//! its default, no capabilities once it is not root, and the environment it is given.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::sys;

/// The uid, gid and groups a child switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id; never 0 (a request to become root is refused in the child).
    pub uid: Uid,
    /// Primary group id.
    pub gid: Gid,
    /// Supplementary groups (empty for build users).
    pub groups: Vec<Gid>,
}

/// How to start one program.
#[derive(Debug)]
pub struct ExecSpec<'a> {
    /// The program (argv\[0\] is the path executed) and its arguments.
    pub argv: &'a [CString],
    /// The environment; `None` keeps the broker's own.
    pub env: Option<&'a [CString]>,
    /// (descriptor in the broker, number it gets in the child). Every other descriptor above
    /// 2 is closed.
    pub fds: &'a [(RawFd, RawFd)],
    /// The user to become; `None` keeps the broker's.
    pub identity: Option<&'a Identity>,
    /// Set no_new_privs (setuid files then grant nothing).
    pub no_new_privs: bool,
    /// Signal the child gets when the broker dies.
    pub death_signal: Signal,
    /// Start a new session (no terminal; signals to the broker's process group miss it, and
    /// the broker can kill the child's whole process group).
    pub new_session: bool,
    /// Directory to change to before exec.
    pub cwd: Option<&'a CStr>,
}

/// Forks and execs `spec`. In the child, `before` runs first (e.g. joining a cgroup while
/// still root); a failure there or later is printed naming `what` and the child exits 127.
pub fn spawn(
    spec: &ExecSpec<'_>,
    what: &str,
    before: impl FnOnce() -> Result<(), String>,
) -> nix::Result<Pid> {
    match sys::fork_process()? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            if let Err(e) = before() {
                say!("ward-broker: starting {what} failed: {e}");
                std::process::exit(127);
            }
            let Err((step, errno)) = exec_in_child(spec);
            say!("ward-broker: starting {what} failed at {step}: {errno}");
            std::process::exit(127);
        }
    }
}

/// Runs in the forked child; returns only on failure, naming the step.
fn exec_in_child(spec: &ExecSpec<'_>) -> Result<Infallible, (&'static str, Errno)> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| ("unblocking signals", e))?;
    sys::default_sigpipe().map_err(|e| ("resetting SIGPIPE", e))?;

    // Park every source above the targets first, so one dup2 cannot clobber another's source.
    let parked: Vec<(RawFd, RawFd)> = spec
        .fds
        .iter()
        .map(|&(src, dst)| fcntl(src, FcntlArg::F_DUPFD_CLOEXEC(100)).map(|p| (p, dst)))
        .collect::<Result<_, _>>()
        .map_err(|e| ("parking descriptors", e))?;
    let mut highest = 2;
    for (parked_fd, dst) in parked {
        nix::unistd::dup2(parked_fd, dst).map_err(|e| ("placing descriptors", e))?;
        highest = highest.max(dst);
    }
    sys::close_fds_from(highest + 1).map_err(|e| ("closing inherited descriptors", e))?;

    if let Some(id) = spec.identity {
        if id.uid.is_root() {
            return Err(("refusing to run a child as root", Errno::EPERM));
        }
        sys::drop_capability_bounding_set().map_err(|e| ("dropping capabilities", e))?;
        nix::unistd::setgroups(&id.groups).map_err(|e| ("setgroups", e))?;
        nix::unistd::setresgid(id.gid, id.gid, id.gid).map_err(|e| ("setresgid", e))?;
        nix::unistd::setresuid(id.uid, id.uid, id.uid).map_err(|e| ("setresuid", e))?;
        if nix::unistd::getuid() != id.uid || nix::unistd::geteuid() != id.uid {
            return Err(("uid did not change", Errno::EPERM));
        }
    }
    match sys::clear_ambient_capabilities() {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(("clearing ambient capabilities", e)),
    }
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| ("no_new_privs", e))?;
    }
    nix::sys::prctl::set_pdeathsig(spec.death_signal).map_err(|e| ("pdeathsig", e))?;
    if spec.new_session {
        nix::unistd::setsid().map_err(|e| ("setsid", e))?;
    }
    if let Some(dir) = spec.cwd {
        nix::unistd::chdir(dir).map_err(|e| ("changing directory", e))?;
    }
    match spec.env {
        Some(env) => nix::unistd::execve(&spec.argv[0], spec.argv, env),
        None => nix::unistd::execv(&spec.argv[0], spec.argv),
    }
    .map_err(|e| ("exec", e))
}

/// The broker's environment with `changes` applied (`None` removes a variable), for
/// [`ExecSpec::env`].
pub fn environment_with(changes: &[(&str, Option<&str>)]) -> Vec<CString> {
    use std::os::unix::ffi::OsStrExt;
    let mut out: Vec<CString> = std::env::vars_os()
        .filter(|(name, _)| !changes.iter().any(|(n, _)| name.as_bytes() == n.as_bytes()))
        .filter_map(|(name, value)| {
            let mut entry = name.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).ok()
        })
        .collect();
    for (name, value) in changes {
        if let Some(value) = value {
            if let Ok(entry) = CString::new(format!("{name}={value}")) {
                out.push(entry);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_changes_replace_and_remove() {
        std::env::set_var("WARD_EXEC_TEST_KEEP", "1");
        std::env::set_var("WARD_EXEC_TEST_DROP", "1");
        std::env::set_var("WARD_EXEC_TEST_SET", "old");
        let env = environment_with(&[
            ("WARD_EXEC_TEST_DROP", None),
            ("WARD_EXEC_TEST_SET", Some("new")),
        ]);
        let has = |entry: &str| env.iter().any(|e| e.to_bytes() == entry.as_bytes());
        assert!(has("WARD_EXEC_TEST_KEEP=1"));
        assert!(has("WARD_EXEC_TEST_SET=new"));
        assert!(!has("WARD_EXEC_TEST_SET=old"));
        assert!(!env
            .iter()
            .any(|e| e.to_bytes().starts_with(b"WARD_EXEC_TEST_DROP=")));
    }

    #[test]
    fn a_child_gets_only_the_descriptors_it_is_given() {
        // The child lists its descriptors into the pipe at fd 1; the pipe's other end and the
        // extra file opened here must not be among them.
        let (read, write) = rustix::pipe::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        // Inheritable (no close-on-exec), so only the broker's closing keeps it out.
        let stray = rustix::io::fcntl_dupfd_cloexec(&null, 50).unwrap();
        rustix::io::fcntl_setfd(&stray, rustix::io::FdFlags::empty()).unwrap();
        let argv = [
            CString::new("/bin/sh").unwrap(),
            CString::new("-c").unwrap(),
            CString::new("ls /proc/self/fd").unwrap(),
        ];
        let fds = [(write.as_raw_fd(), 1)];
        let spec = ExecSpec {
            argv: &argv,
            env: Some(&[]),
            fds: &fds,
            identity: None,
            no_new_privs: true,
            death_signal: Signal::SIGKILL,
            new_session: true,
            cwd: Some(c"/"),
        };
        let pid = spawn(&spec, "a test child", || Ok(())).unwrap();
        drop(write);
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
        let listed: Vec<i32> = out
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        // 0-2 and the directory ls itself opens to list them; never `stray`.
        assert!(!listed.contains(&stray.as_raw_fd()), "{listed:?}");
        assert!(listed.iter().all(|&fd| fd <= 3), "{listed:?}");
    }
}
