//! The network of a fixed-output build: a network namespace of its own, connected to the
//! host's network by slirp4netns, a user-mode TCP/IP stack that runs as the build user outside
//! the sandbox and refuses connections to the host's loopback addresses.
//!
//! So a fixed-output build can fetch from the network but sees none of the host's interfaces,
//! none of its abstract unix sockets (they belong to a network namespace) and none of its
//! loopback services. Order of events:
//!
//! 1. [`start`], before the namespaces exist: forks the helper, which stays in the host's
//!    namespaces and waits;
//! 2. the builder makes its namespaces and writes its id maps, then [`Helper::go`]: the helper
//!    execs slirp4netns attached to its parent's (the builder's) new network namespace;
//! 3. pid 1 of the sandbox [`wait_configured`]s for slirp4netns to report `tap0` up (with an
//!    address and a default route) before it runs the build;
//! 4. the builder's outer process holds slirp4netns's exit pipe; when the build is over it
//!    exits and slirp4netns with it (the broker kills whatever the build user left anyway).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::unistd::{ForkResult, Pid};
use ward_ipc::builder::SetupStep;

use crate::sandbox::{fail, Failure};
use crate::sys;

/// slirp4netns's view of the descriptors it is given.
const FD_READY: RawFd = 5;
const FD_EXIT: RawFd = 6;
/// How long the sandbox waits for the network.
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);
/// The resolver slirp4netns answers on inside the namespace (its DNS forwarder).
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// The helper, forked and waiting for [`Helper::go`].
#[derive(Debug)]
pub struct Helper {
    go: OwnedFd,
    /// Read end: slirp4netns writes one byte when the network is configured.
    pub ready: OwnedFd,
    /// Write end: closing it ends slirp4netns.
    pub exit: OwnedFd,
    /// The helper's pid (slirp4netns once it has exec'd).
    pub pid: Pid,
}

fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd), Failure> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fail(SetupStep::Network, format!("{what}: pipe2: {e}")))
}

/// Forks the helper that will run `slirp4netns` (an absolute path from the broker's
/// configuration). Call before unsharing any namespace.
pub fn start(slirp4netns: &str) -> Result<Helper, Failure> {
    let argv0 = std::ffi::CString::new(slirp4netns)
        .map_err(|_| fail(SetupStep::Network, "NUL in the slirp4netns path"))?;
    let (go_r, go_w) = pipe("the helper's start pipe")?;
    let (ready_r, ready_w) = pipe("slirp4netns's ready pipe")?;
    let (exit_r, exit_w) = pipe("slirp4netns's exit pipe")?;
    match sys::fork_process().map_err(|e| {
        fail(
            SetupStep::Network,
            format!("fork of the network helper: {e}"),
        )
    })? {
        ForkResult::Parent { child } => Ok(Helper {
            go: go_w,
            ready: ready_r,
            exit: exit_w,
            pid: child,
        }),
        ForkResult::Child => {
            drop((go_w, ready_r, exit_w));
            let code = match run_helper(&argv0, go_r, ready_w, exit_r) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ward-builder: network helper: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// In the helper: wait for the namespaces, then become slirp4netns.
fn run_helper(
    argv0: &std::ffi::CStr,
    go: OwnedFd,
    ready: OwnedFd,
    exit: OwnedFd,
) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match std::fs::File::from(go).read(&mut byte) {
        Ok(1) => {}
        // The builder gave up before making its namespaces.
        _ => return Ok(()),
    }
    let target = nix::unistd::getppid();
    // slirp4netns's chatter ("sent tapfd=…", a seccomp warning) is not the build's log.
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    // Park the sources above every target first, so one dup2 cannot clobber another's source.
    let park = |fd: &OwnedFd| {
        rustix::io::fcntl_dupfd_cloexec(fd, 100).map_err(|e| format!("parking a pipe: {e}"))
    };
    let (ready, exit) = (park(&ready)?, park(&exit)?);
    sys::cloexec_fds_from(3).map_err(|e| format!("closing inherited descriptors: {e}"))?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (null.as_raw_fd(), 1),
        (null.as_raw_fd(), 2),
        (ready.as_raw_fd(), FD_READY),
        (exit.as_raw_fd(), FD_EXIT),
    ] {
        nix::unistd::dup2(from, to).map_err(|e| format!("dup2 onto {to}: {e}"))?;
    }
    let args = [
        "--configure".to_string(),
        "--mtu=65520".into(),
        // The host's 127.0.0.1 and ::1 (through 10.0.2.2) stay out of reach.
        "--disable-host-loopback".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={FD_READY}"),
        format!("--exit-fd={FD_EXIT}"),
        target.to_string(),
        "tap0".into(),
    ];
    let mut argv = vec![argv0.to_owned()];
    for a in args {
        argv.push(std::ffi::CString::new(a).map_err(|_| "NUL in an argument".to_string())?);
    }
    let env = [std::ffi::CString::new("PATH=/usr/bin:/bin").expect("no NUL")];
    let err = nix::unistd::execve(argv0, &argv, &env).unwrap_err();
    Err(format!(
        "executing '{}': {}",
        argv0.to_string_lossy(),
        err.desc()
    ))
}

impl Helper {
    /// The namespaces exist and are mapped: let the helper attach slirp4netns to them.
    pub fn go(&self) -> Result<(), Failure> {
        match rustix::io::write(&self.go, b"1") {
            Ok(1) => Ok(()),
            Ok(_) => Err(fail(
                SetupStep::Network,
                "starting slirp4netns: short write",
            )),
            Err(e) => Err(fail(
                SetupStep::Network,
                format!("starting slirp4netns: {e}"),
            )),
        }
    }
}

/// In the sandbox's pid 1: waits until slirp4netns reports the network configured.
pub fn wait_configured(ready: OwnedFd) -> Result<(), Failure> {
    let mut fds = [rustix::event::PollFd::new(
        &ready,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::event::Timespec {
        tv_sec: CONFIGURE_TIMEOUT.as_secs() as i64,
        tv_nsec: 0,
    };
    let ready_now = rustix::event::poll(&mut fds, Some(&timeout))
        .map_err(|e| fail(SetupStep::Network, format!("waiting for slirp4netns: {e}")))?;
    let mut byte = [0u8; 1];
    let got = if ready_now > 0 {
        std::fs::File::from(ready).read(&mut byte).unwrap_or(0)
    } else {
        0
    };
    if got != 1 {
        return Err(fail(
            SetupStep::Network,
            format!(
                "slirp4netns did not bring up the network of this fixed-output build within \
                 {} s (is /dev/net/tun usable by build users?)",
                CONFIGURE_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(())
}
