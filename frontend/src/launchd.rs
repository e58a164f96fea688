//! The listening socket launchd holds for the daemon's job on macOS: the `Sockets` entry
//! `nix-daemon.socket` of `launchd/org.nixos.nix-daemon.plist`. launchd creates and binds the
//! socket when it loads the job, so clients that connect while the daemon is starting wait in
//! its backlog instead of being refused; `ward daemon` takes it with libSystem's
//! `launch_activate_socket` and binds nothing itself.
//!
//! Everywhere else [`listener`] finds nothing. The only `unsafe` code of the frontend crate is
//! the small FFI module below, compiled on macOS only.

use std::io;
use std::os::fd::RawFd;

/// The name of the socket in the plist's `Sockets` dictionary (as systemd's unit is named).
pub const SOCKET_NAME: &str = "nix-daemon.socket";

/// The listening socket launchd holds for this job, if it runs under launchd with one named
/// [`SOCKET_NAME`]. The descriptor is handed over as a raw number and deliberately kept open
/// (the broker inherits it across exec); launchd's other descriptors for the name, if any,
/// are closed.
#[cfg(target_os = "macos")]
pub fn listener() -> io::Result<Option<RawFd>> {
    use std::os::fd::IntoRawFd;
    let Some(fds) = ffi::activate_socket(SOCKET_NAME)? else {
        return Ok(None);
    };
    // The rest of the iterator, launchd's other descriptors, is dropped (closed) here.
    let first = fds.into_iter().next().ok_or_else(|| {
        io::Error::other(format!(
            "launchd has no descriptor for the socket '{SOCKET_NAME}'"
        ))
    })?;
    Ok(Some(first.into_raw_fd()))
}

/// Not macOS: there is no launchd.
#[cfg(not(target_os = "macos"))]
pub fn listener() -> io::Result<Option<RawFd>> {
    Ok(None)
}

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{c_char, c_int, CString};
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    extern "C" {
        /// libSystem (`<launch.h>`): the descriptors of the socket `name` from the job's
        /// `Sockets`, in a `malloc`ed array of `*cnt` ints the caller frees. Returns 0 or an
        /// errno value: `ESRCH` when the process is not managed by launchd, `ENOENT` when the
        /// job has no socket of that name, `EALREADY` when they were already taken.
        fn launch_activate_socket(
            name: *const c_char,
            fds: *mut *mut c_int,
            cnt: *mut usize,
        ) -> c_int;
    }

    /// The descriptors launchd holds for `name`; `None` when this process is not a launchd
    /// job or its job has no such socket.
    pub fn activate_socket(name: &str) -> io::Result<Option<Vec<OwnedFd>>> {
        let name = CString::new(name).map_err(io::Error::other)?;
        let mut fds: *mut c_int = std::ptr::null_mut();
        let mut count: usize = 0;
        // SAFETY: `name` is a NUL-terminated string that outlives the call; `fds` and `count`
        // are valid, writable out-parameters of the types the C declaration names.
        let rc = unsafe { launch_activate_socket(name.as_ptr(), &mut fds, &mut count) };
        if rc != 0 {
            return match rc {
                libc::ESRCH | libc::ENOENT => Ok(None),
                _ => Err(io::Error::from_raw_os_error(rc)),
            };
        }
        if fds.is_null() {
            return Ok(Some(Vec::new()));
        }
        // SAFETY: on success `fds` points to `count` initialised ints allocated by
        // launch_activate_socket; the slice is only read before the array is freed below.
        let raw = unsafe { std::slice::from_raw_parts(fds, count) };
        let owned = raw
            .iter()
            .map(|&fd| {
                // SAFETY: launchd handed each descriptor to this process for its sole use;
                // nothing else in the process knows it, so ownership is taken exactly once.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .collect();
        // SAFETY: the array was allocated with malloc by launch_activate_socket, is freed once,
        // and `raw` is not used after this point.
        unsafe { libc::free(fds.cast()) };
        Ok(Some(owned))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(target_os = "macos"))]
    #[test]
    fn there_is_no_launchd_socket_outside_macos() {
        assert_eq!(super::listener().unwrap(), None);
    }
}
