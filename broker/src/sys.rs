//! Every syscall of the broker that needs `unsafe`, each wrapped once.
//!
//! The broker is single-threaded, so `fork` here is the classic kind: the child continues with
//! a copy of the only thread and may run ordinary code until it execs.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// Forks the (single-threaded) broker.
pub fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: the broker never starts a second thread (no tokio, no thread pools), so the child
    // is a complete copy of the process and may allocate and run normal code before exec.
    unsafe { nix::unistd::fork() }
}

/// Closes every descriptor numbered `first` or above.
pub fn close_fds_from(first: RawFd) -> nix::Result<()> {
    let first = u32::try_from(first).map_err(|_| Errno::EINVAL)?;
    // SAFETY: close_range only closes descriptors; the caller owns every descriptor at or above
    // `first` (it is called in a freshly forked child right before exec), so no Rust object is
    // left holding a closed descriptor that it will use afterwards.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    Errno::result(rc).map(drop)
}

/// Drops every capability from the bounding set so no later exec can regain one.
pub fn drop_capability_bounding_set() -> nix::Result<()> {
    for cap in 0..=63 {
        // SAFETY: PR_CAPBSET_DROP takes an integer argument and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let err = Errno::last();
            // EINVAL: this capability number does not exist on this kernel; we are done.
            if err == Errno::EINVAL {
                return Ok(());
            }
            return Err(err);
        }
    }
    Ok(())
}

/// Clears the ambient capability set.
pub fn clear_ambient_capabilities() -> nix::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Restores the default disposition of SIGPIPE (the Rust runtime ignores it, and an ignored
/// signal stays ignored across exec).
pub fn default_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_DFL runs no handler code of ours, so no signal-safety rule applies.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

/// One reaped child: its pid, its wait status and its CPU use.
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// The child.
    pub pid: nix::unistd::Pid,
    /// Its status.
    pub status: nix::sys::wait::WaitStatus,
    /// User CPU time, microseconds (with its waited-for descendants).
    pub user_micros: u64,
    /// System CPU time, microseconds.
    pub system_micros: u64,
}

/// `wait4(pid, WNOHANG unless blocking)`: `Ok(None)` when no child (of `pid`, or any with -1)
/// has changed state.
pub fn wait4(pid: i32, block: bool) -> nix::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: both pointers point to live, writable locals of the right types for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    let rc = Errno::result(rc)?;
    if rc == 0 {
        return Ok(None);
    }
    let pid = nix::unistd::Pid::from_raw(rc);
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    Ok(Some(Reaped {
        pid,
        status: nix::sys::wait::WaitStatus::from_raw(pid, status)?,
        user_micros: micros(usage.ru_utime),
        system_micros: micros(usage.ru_stime),
    }))
}
