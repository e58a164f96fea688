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
