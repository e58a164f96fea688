//! Every operation of the builder that needs `unsafe`, each wrapped once.
//!
//! The builder is single-threaded whenever it forks (build mode never starts a thread), so
//! `fork` here is the classic kind: the child continues with a copy of the only thread.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::ForkResult;

/// Takes ownership of an inherited descriptor placed by the broker, after checking it is open,
/// and marks it close-on-exec so the derivation's builder never inherits it.
pub fn take_inherited_fd(fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor's flags; it touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(Errno::last());
    }
    // SAFETY: F_SETFD with an integer argument only changes the descriptor's flags.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    Errno::result(rc)?;
    // SAFETY: the descriptor is open (checked above) and was placed for us by the broker; it is
    // taken exactly once per number (main takes each of 3, 4, 5.. once), so nothing else owns
    // or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks every descriptor numbered `first` or above close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`), so nothing the broker leaked reaches the derivation's builder.
pub fn cloexec_fds_from(first: RawFd) -> nix::Result<()> {
    let first = u32::try_from(first).map_err(|_| Errno::EINVAL)?;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; no
    // descriptor is closed, so no Rust object is left holding a dead descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(rc).map(drop)
}

/// Forks the (single-threaded) builder.
pub fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: build mode never starts a second thread, so the child is a complete copy of the
    // process and may allocate and run normal code.
    unsafe { nix::unistd::fork() }
}

/// `dup2(from, to)`, used to point stdout/stderr of the waiting parent at /dev/null.
pub fn dup_onto(from: RawFd, to: RawFd) -> nix::Result<()> {
    // SAFETY: dup2 onto 1 or 2 replaces the standard descriptors, which no Rust object owns
    // (std's stdout/stderr handles only refer to the numbers).
    let rc = unsafe { libc::dup2(from, to) };
    Errno::result(rc).map(drop)
}

/// Sets `IFF_UP` on the loopback interface of the current network namespace.
pub fn bring_up_loopback() -> nix::Result<()> {
    // SAFETY: socket() takes integer arguments only and returns a new descriptor or -1.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `sock` was just returned by socket() and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `ifr` and writes its flags into the
    // ifreq we own, which lives for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) };
    Errno::result(rc)?;
    // SAFETY: the union member ifru_flags was filled by SIOCGIFFLAGS just above.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own, which lives for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) };
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

/// A raw syscall with up to three integer arguments, for the seccomp tests (x32 numbers and
/// calls libc has no wrapper for). Only integer arguments: no memory is passed.
#[cfg(test)]
pub fn raw_syscall3(nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> i64 {
    // SAFETY: test-only; callers pass integer arguments (or null pointers), which the kernel
    // validates; no memory of ours is handed over except through valid pointers they own.
    unsafe { libc::syscall(nr, a, b, c) }
}

/// `chmod(path, mode)` through the raw syscall (x86_64 has it; aarch64 uses fchmodat), for the
/// seccomp tests.
#[cfg(test)]
pub fn raw_chmod(path: &std::ffi::CStr, mode: u32) -> i64 {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_fchmodat,
            libc::AT_FDCWD,
            path.as_ptr(),
            mode as libc::c_long,
        )
    }
}

/// `setxattr(path, name, value, size, flags)`, for the seccomp tests.
#[cfg(test)]
pub fn raw_setxattr(path: &std::ffi::CStr) -> i64 {
    let name = c"user.ward";
    let value = b"x";
    // SAFETY: every pointer refers to memory that outlives the call; size matches `value`.
    unsafe {
        libc::syscall(
            libc::SYS_setxattr,
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr(),
            1usize,
            0,
        )
    }
}

/// Forks in a test (the test harness is multi-threaded: the child must only make raw syscalls
/// and `_exit`).
#[cfg(test)]
pub fn fork_for_test() -> nix::Result<ForkResult> {
    // SAFETY: test-only; the child restricts itself to async-signal-safe work (prctl,
    // seccomp through a prebuilt program, raw syscalls, _exit).
    unsafe { nix::unistd::fork() }
}

/// `_exit` in a forked test child.
#[cfg(test)]
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}
