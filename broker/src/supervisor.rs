//! Starts the frontend and the store-writer with privileges dropped, and restarts whichever dies,
//! with exponential back-off, without touching the other.
//!
//! Privileged steps for each child, in order (a failure makes the child exit 127 before exec):
//! 1. fork (the broker is single-threaded);
//! 2. unblock all signals, SIGPIPE back to default;
//! 3. move the descriptors the child gets to fixed numbers, close every other one from 3 up;
//! 4. multi-user mode: drop the whole capability bounding set, set the supplementary groups,
//!    then gid, then uid (real, effective and saved), and check the uid really changed;
//! 5. clear ambient capabilities, set no_new_privs, ask for SIGTERM when the broker dies;
//! 6. exec the child's binary (a fresh address space; it applies its own seccomp/landlock).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::roots::RootFinders;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Group, Pid, User};
use ward_ipc::broker::{BrokerError, BrokerToFrontend, FrontendToBroker};
use ward_ipc::broker::{BrokerToStoreWriter, StoreWriterToBroker};
use ward_ipc::{
    BrokerFrontendChannel, BrokerStoreWriterChannel, FrameLimit, IpcMessage, Phase, IPC_VERSION,
};

use crate::args::BrokerArgs;
use crate::builds::Builds;
use crate::exec::{self, ExecSpec, Identity};
use crate::hooks::Hooks;
use crate::service::ServiceManager;
use crate::sys;

/// Shortest wait before restarting a child that died.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between restarts of a child that keeps dying.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A child that ran this long before dying is restarted after the shortest delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// Quick deaths in a row after which the broker logs an error instead of a notice.
const CRASH_LOOP: u32 = 3;
/// How long the frontend may drain (its own limit is shorter) before it is killed.
const FRONTEND_DRAIN: Duration = Duration::from_secs(9);
/// A stop ends this long after SIGTERM at the latest, whatever the children do.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Which child a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The unprivileged protocol server.
    Frontend,
    /// The only writer of the store.
    StoreWriter,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::StoreWriter => "store-writer",
        }
    }
}

/// Everything needed to (re)start one child.
#[derive(Debug)]
pub struct ChildSpec {
    role: Role,
    argv: Vec<CString>,
    identity: Option<Identity>,
    /// (descriptor in the broker, number it gets in the child)
    fds: Vec<(RawFd, RawFd)>,
    /// Environment changes: set to `Some(value)` or remove with `None`.
    env: Vec<(&'static str, Option<&'static str>)>,
}

#[derive(Debug)]
struct Child {
    spec: ChildSpec,
    pid: Option<Pid>,
    started: Instant,
    delay: Duration,
    restart_at: Option<Instant>,
    /// Deaths in a row, each within [`HEALTHY_RUN`] of its start.
    quick_deaths: u32,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A user named on the command line does not exist.
    #[error("user '{0}' does not exist (run 'ward install' as root to create ward's users)")]
    NoSuchUser(String),
    /// A group named on the command line does not exist.
    #[error("group '{0}' does not exist (run 'ward install' as root to create ward's group)")]
    NoSuchGroup(String),
    /// A path or argument with a NUL byte.
    #[error("argument '{0}' contains a NUL byte")]
    Nul(String),
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// What the broker was doing.
        what: String,
        /// The error.
        errno: Errno,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> SupervisorError {
    let what = what.into();
    move |errno| SupervisorError::Sys { what, errno }
}

fn cstring(bytes: &[u8]) -> Result<CString, SupervisorError> {
    CString::new(bytes).map_err(|_| SupervisorError::Nul(String::from_utf8_lossy(bytes).into()))
}

fn lookup_identity(user: &str, shared_group: Option<&str>) -> Result<Identity, SupervisorError> {
    let pw = User::from_name(user)
        .map_err(sys_err(format!("looking up user '{user}'")))?
        .ok_or_else(|| SupervisorError::NoSuchUser(user.to_owned()))?;
    let mut groups = vec![pw.gid];
    if let Some(name) = shared_group {
        let gr = Group::from_name(name)
            .map_err(sys_err(format!("looking up group '{name}'")))?
            .ok_or_else(|| SupervisorError::NoSuchGroup(name.to_owned()))?;
        if gr.gid != pw.gid {
            groups.push(gr.gid);
        }
    }
    Ok(Identity {
        uid: pw.uid,
        gid: pw.gid,
        groups,
    })
}

/// Where the store-writer finds its channel to the broker: after the `n_keys` key files.
fn store_writer_broker_fd(n_keys: usize) -> RawFd {
    3 + n_keys as RawFd
}

/// Builds the two child specs from the broker's arguments.
pub fn child_specs(
    args: &BrokerArgs,
    secret_keys: &[std::fs::File],
) -> Result<Vec<ChildSpec>, SupervisorError> {
    let ipc_dir = args.ipc_dir.as_os_str().as_bytes();
    let passthrough: Vec<CString> = args
        .passthrough
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let identity = |user: &Option<String>| {
        user.as_deref()
            .map(|u| lookup_identity(u, args.shared_group.as_deref()))
            .transpose()
    };

    let mut frontend_argv = vec![
        cstring(args.frontend_bin.as_os_str().as_bytes())?,
        cstring(b"--listen-fd")?,
        cstring(b"3")?,
        cstring(b"--ipc-dir")?,
        cstring(ipc_dir)?,
        cstring(b"--")?,
    ];
    frontend_argv.extend(passthrough.iter().cloned());
    let mut writer_argv = vec![
        cstring(args.store_writer_bin.as_os_str().as_bytes())?,
        cstring(b"--ipc-dir")?,
        cstring(ipc_dir)?,
    ];
    // The secret keys at 3, 4, ...: the store-writer reads them with pread, so a restarted
    // one reads them whole again.
    let mut writer_fds = Vec::new();
    for (i, key) in secret_keys.iter().enumerate() {
        let target = 3 + i as RawFd;
        writer_fds.push((key.as_raw_fd(), target));
        writer_argv.push(cstring(b"--secret-key-fd")?);
        writer_argv.push(cstring(target.to_string().as_bytes())?);
    }
    // The channel to this broker comes right after the keys.
    writer_argv.push(cstring(b"--broker-fd")?);
    writer_argv.push(cstring(
        store_writer_broker_fd(secret_keys.len())
            .to_string()
            .as_bytes(),
    )?);
    writer_argv.push(cstring(b"--")?);
    writer_argv.extend(passthrough);

    Ok(vec![
        ChildSpec {
            role: Role::StoreWriter,
            argv: writer_argv,
            identity: identity(&args.store_user)?,
            fds: writer_fds,
            env: vec![
                ("LISTEN_FDS", None),
                ("LISTEN_PID", None),
                ("LISTEN_FDNAMES", None),
                ("NOTIFY_SOCKET", None),
            ],
        },
        ChildSpec {
            role: Role::Frontend,
            argv: frontend_argv,
            identity: identity(&args.frontend_user)?,
            fds: vec![(args.listen_fd, 3)],
            // The socket-activation convention (fds from 3, no pid check) tells the frontend
            // where its sockets are: 3 = clients, 4 = this broker.
            env: vec![
                ("LISTEN_FDS", Some("2")),
                ("LISTEN_PID", None),
                ("LISTEN_FDNAMES", None),
                ("NOTIFY_SOCKET", None),
            ],
        },
    ])
}

fn spawn(spec: &ChildSpec, extra_fds: &[(RawFd, RawFd)]) -> Result<Pid, SupervisorError> {
    let fds: Vec<(RawFd, RawFd)> = spec.fds.iter().chain(extra_fds).copied().collect();
    let env = exec::environment_with(&spec.env);
    let exec_spec = ExecSpec {
        argv: &spec.argv,
        env: Some(&env),
        fds: &fds,
        identity: spec.identity.as_ref(),
        no_new_privs: true,
        death_signal: Signal::SIGTERM,
        new_session: false,
        cwd: None,
    };
    let pid = exec::spawn(&exec_spec, spec.role.name(), || Ok(())).map_err(sys_err("fork"))?;
    say!("ward-broker: started {} as pid {pid}", spec.role.name());
    Ok(pid)
}

fn terminate(children: &mut [Child], grace: Duration) {
    for child in children.iter() {
        if let Some(pid) = child.pid {
            kill_quietly(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while children.iter().any(|c| c.pid.is_some()) && Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(status) => forget_pid(children, status.pid()),
            Err(_) => break,
        }
    }
    for child in children.iter_mut() {
        if let Some(pid) = child.pid.take() {
            kill_quietly(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Reaps what is already dead among the orphans re-parented to the broker, so that none
/// passes to pid 1 as a zombie when the broker exits.
fn reap_orphans() {
    while let Ok(Some(_)) = sys::wait4(-1, false) {}
}

fn kill_quietly(pid: Pid, signal: Signal) {
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => say!("ward-broker: kill {pid} {signal}: {e}"),
    }
}

fn forget_pid(children: &mut [Child], pid: Option<Pid>) {
    if let Some(child) = children
        .iter_mut()
        .find(|c| c.pid.is_some() && c.pid == pid)
    {
        child.pid = None;
    }
}

/// The broker's end of its channel to the running frontend.
struct FrontendLink {
    channel: BrokerFrontendChannel,
    phase: Phase,
    /// The frontend process at the other end, for the log.
    pid: Option<Pid>,
    /// Set by `Serving`, taken by the main loop, which tells the service manager.
    announced_serving: bool,
}

impl std::fmt::Debug for FrontendLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrontendLink({})", self.phase)
    }
}

impl FrontendLink {
    fn new(socket: UnixStream) -> Option<FrontendLink> {
        // A frontend that sends half a frame must not stall the supervisor.
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(FrontendLink {
            channel: BrokerFrontendChannel::new(socket, FrameLimit::DEFAULT),
            phase: Phase::Handshake,
            pid: None,
            announced_serving: false,
        })
    }

    /// Answers one request. Returns false when the channel must be closed: the frontend went
    /// away or broke the protocol (a less-privileged peer's violation is never recovered from).
    fn serve_one(
        &mut self,
        state_dir: &std::path::Path,
        builds: &mut Builds,
        finders: &mut RootFinders,
        hooks: &mut Hooks,
    ) -> bool {
        let request = match self.channel.recv() {
            Ok(received) => received.message,
            Err(e) => {
                say!("ward-broker: closing the frontend channel: {e}");
                return false;
            }
        };
        if !request.permitted_in(self.phase) {
            let error = BrokerError::NotPermitted {
                request: request.variant_name().to_owned(),
                phase: self.phase,
            };
            say!(
                "ward-broker: frontend protocol violation by pid {}: {error}; closing its \
                 channel",
                self.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            let _ = self.channel.send(&BrokerToFrontend::Error(error), &[]);
            return false;
        }
        let mut replies: Vec<(BrokerToFrontend, Vec<OwnedFd>)> = Vec::new();
        let reply = match request {
            FrontendToBroker::Hello { ipc_version } => {
                if ipc_version != IPC_VERSION {
                    let error = BrokerError::VersionMismatch {
                        ours: IPC_VERSION,
                        theirs: ipc_version,
                    };
                    let _ = self.channel.send(&BrokerToFrontend::Error(error), &[]);
                    return false;
                }
                self.phase = Phase::Serving;
                BrokerToFrontend::Hello {
                    ipc_version: IPC_VERSION,
                }
            }
            FrontendToBroker::CreateUserDirs { uid } => {
                match crate::user_dirs::create_user_dirs(state_dir, uid) {
                    Ok(user) => BrokerToFrontend::UserDirsReady { user },
                    Err(reason) => BrokerToFrontend::Error(BrokerError::UserDirs { uid, reason }),
                }
            }
            FrontendToBroker::Ping => BrokerToFrontend::Pong,
            FrontendToBroker::Serving => {
                self.announced_serving = true;
                BrokerToFrontend::Pong
            }
            FrontendToBroker::ShuttingDown => {
                self.phase = Phase::Draining;
                for finished in builds.cancel_all() {
                    replies.push((finished, vec![]));
                }
                BrokerToFrontend::Drained
            }
            FrontendToBroker::StartBuild(request) => {
                let (reply, fds) = builds.start(&request);
                replies.push((reply, fds));
                return self.send_all(replies);
            }
            FrontendToBroker::CollectOutputs { build } => {
                let (reply, fds) = builds.collect(build);
                replies.push((reply, fds));
                return self.send_all(replies);
            }
            FrontendToBroker::CancelBuild { build, reason } => builds.cancel(build, reason),
            FrontendToBroker::ReleaseBuild { build, keep_failed } => {
                builds.release(build, keep_failed)
            }
            FrontendToBroker::QueryBuild { build } => builds.query(build),
            FrontendToBroker::FindRoots => match finders.start() {
                Ok(pipe) => {
                    replies.push((BrokerToFrontend::RootsPipe, vec![pipe]));
                    return self.send_all(replies);
                }
                Err(reason) => BrokerToFrontend::Error(BrokerError::Roots { reason }),
            },
            FrontendToBroker::RunPostBuildHook {
                build,
                drv_path,
                out_paths,
            } => match hooks.start(build, &drv_path, &out_paths, |uid| {
                builds.is_build_user(uid)
            }) {
                Ok((reply, pipe)) => {
                    replies.push((reply, vec![pipe]));
                    return self.send_all(replies);
                }
                Err(error) => {
                    say!("ward-broker: {error}");
                    BrokerToFrontend::Error(error)
                }
            },
            FrontendToBroker::CancelPostBuildHook { build } => hooks.cancel(build),
        };
        replies.push((reply, vec![]));
        self.send_all(replies)
    }

    /// Sends messages in order; false if the channel broke.
    fn send_all(&mut self, messages: Vec<(BrokerToFrontend, Vec<OwnedFd>)>) -> bool {
        for (message, fds) in messages {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = self.channel.send(&message, &borrowed) {
                say!("ward-broker: replying to the frontend: {e}");
                return false;
            }
        }
        true
    }
}

/// The broker's end of its channel to the running store-writer.
struct StoreWriterLink {
    channel: BrokerStoreWriterChannel,
    phase: Phase,
}

impl StoreWriterLink {
    fn new(socket: UnixStream) -> Option<StoreWriterLink> {
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(StoreWriterLink {
            channel: BrokerStoreWriterChannel::new(socket, FrameLimit::DEFAULT),
            phase: Phase::Handshake,
        })
    }

    /// Answers one request; false when the channel must be closed.
    fn serve_one(&mut self, finders: &mut RootFinders) -> bool {
        let request = match self.channel.recv() {
            Ok(received) => received.message,
            Err(e) => {
                say!("ward-broker: closing the store-writer channel: {e}");
                return false;
            }
        };
        if !request.permitted_in(self.phase) {
            let error = BrokerError::NotPermitted {
                request: request.variant_name().to_owned(),
                phase: self.phase,
            };
            say!("ward-broker: store-writer protocol violation: {error}");
            let _ = self.channel.send(&BrokerToStoreWriter::Error(error), &[]);
            return false;
        }
        let (reply, fds) = match request {
            StoreWriterToBroker::Hello { ipc_version } => {
                if ipc_version != IPC_VERSION {
                    let error = BrokerError::VersionMismatch {
                        ours: IPC_VERSION,
                        theirs: ipc_version,
                    };
                    let _ = self.channel.send(&BrokerToStoreWriter::Error(error), &[]);
                    return false;
                }
                self.phase = Phase::Serving;
                let hello = BrokerToStoreWriter::Hello {
                    ipc_version: IPC_VERSION,
                };
                (hello, vec![])
            }
            StoreWriterToBroker::FindRoots => match finders.start() {
                Ok(pipe) => (BrokerToStoreWriter::RootsPipe, vec![pipe]),
                Err(reason) => (
                    BrokerToStoreWriter::Error(BrokerError::Roots { reason }),
                    vec![],
                ),
            },
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        match self.channel.send(&reply, &borrowed) {
            Ok(()) => true,
            Err(e) => {
                say!("ward-broker: replying to the store-writer: {e}");
                false
            }
        }
    }
}

/// Sends unasked notices (`BuildFinished`); drops the link (and its builds) if it broke.
fn notify(
    frontend: &mut Option<FrontendLink>,
    builds: &mut Builds,
    hooks: &mut Hooks,
    notices: Vec<BrokerToFrontend>,
) {
    if notices.is_empty() {
        return;
    }
    let ok = frontend
        .as_mut()
        .is_some_and(|link| link.send_all(notices.into_iter().map(|n| (n, vec![])).collect()));
    if !ok {
        *frontend = None;
        builds.abandon_all();
        hooks.abandon_all();
    }
}

/// Reaps every exited child: schedules the restart of the frontend or store-writer, and
/// finishes builds (their `BuildFinished` notices are returned).
fn reap(
    children: &mut [Child],
    builds: &mut Builds,
    finders: &mut RootFinders,
    hooks: &mut Hooks,
    stopping: bool,
) -> Vec<BrokerToFrontend> {
    let mut notices = Vec::new();
    loop {
        let reaped = match sys::wait4(-1, false) {
            Ok(None) | Err(Errno::ECHILD) => return notices,
            Ok(Some(r)) => r,
            Err(e) => {
                say!("ward-broker: wait4: {e}");
                return notices;
            }
        };
        let status = reaped.status;
        if finders.reaped(reaped.pid) {
            continue;
        }
        if let Some(notice) = hooks.reaped(reaped.pid, status) {
            notices.extend(notice);
            continue;
        }
        let Some(child) = children
            .iter_mut()
            .find(|c| c.pid.is_some() && c.pid == Some(reaped.pid))
        else {
            notices.extend(builds.reaped(reaped));
            continue;
        };
        child.pid = None;
        if stopping {
            say!(
                "ward-broker: {} exited ({status:?})",
                child.spec.role.name()
            );
            continue;
        }
        let now = Instant::now();
        if now.duration_since(child.started) >= HEALTHY_RUN {
            child.delay = FIRST_RESTART_DELAY;
            child.quick_deaths = 0;
        } else {
            child.delay = (child.delay * 2).min(MAX_RESTART_DELAY);
            child.quick_deaths = child.quick_deaths.saturating_add(1);
        }
        child.restart_at = Some(now + child.delay);
        if child.quick_deaths >= CRASH_LOOP {
            // Clients are refused or wait meanwhile: worth an error of its own.
            say!(
                "ward-broker: error: the {} keeps dying ({} times in a row, each within {} s \
                 of its start; last: {status:?}); next start in {} ms",
                child.spec.role.name(),
                child.quick_deaths,
                HEALTHY_RUN.as_secs(),
                child.delay.as_millis()
            );
        } else {
            say!(
                "ward-broker: {} exited ({status:?}); restarting in {} ms",
                child.spec.role.name(),
                child.delay.as_millis()
            );
        }
    }
}

/// Opens the `secret-key-files` for the store-writer (read-only, close-on-exec; the broker
/// never reads them). One that cannot be opened is reported and left out.
fn open_secret_keys(paths: &[std::path::PathBuf]) -> Vec<std::fs::File> {
    paths
        .iter()
        .filter_map(|path| match std::fs::File::open(path) {
            Ok(file) => Some(file),
            Err(e) => {
                say!(
                    "ward-broker: cannot open secret key file '{}' (secret-key-files): {e}; \
                     nothing will be signed with it",
                    path.display()
                );
                None
            }
        })
        .collect()
}

/// Starts both children and supervises them until SIGTERM or SIGINT.
pub fn run(args: &BrokerArgs) -> Result<(), SupervisorError> {
    prepare_ipc_dir(args)?;
    // What a build leaves when its builder dies (the pid namespace's init, above all) is
    // re-parented to the broker and reaped by its loop, not left as a zombie to a pid 1 that
    // may never reap it (containers).
    nix::sys::prctl::set_child_subreaper(true).map_err(sys_err("PR_SET_CHILD_SUBREAPER"))?;
    let secret_keys = open_secret_keys(&args.secret_key_files);
    let specs = child_specs(args, &secret_keys)?;
    let mut builds = Builds::new(&args.build, &args.state_dir);
    let mut finders = RootFinders::new(
        args.gc_roots_bin.as_deref(),
        &args.state_dir,
        &args.build.store_dir,
        &args.build.real_store_dir,
    );
    let mut hooks = Hooks::new(&args.hooks, &args.build.store_dir, args.build.max_jobs);
    let service = ServiceManager::from_env();
    service.starting();
    builds.run_canary();
    // nix.conf re-reads so far, for the status line.
    let mut reloads: u32 = 0;
    // A stop in progress: when SIGTERM came, and whether the store-writer was told yet.
    let mut stop: Option<Instant> = None;
    let mut writer_signalled = false;

    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(sys_err("blocking signals"))?;
    // Non-blocking: after poll, the loop reads until EAGAIN and must never block in read.
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys_err("signalfd"))?;
    // The canary's sandbox init is re-parented to the broker when its builder dies; if it
    // died before SIGCHLD was blocked, that signal is gone and only this reaps it.
    reap_orphans();

    let mut frontend: Option<FrontendLink> = None;
    let mut store_writer: Option<StoreWriterLink> = None;
    let mut children: Vec<Child> = specs
        .into_iter()
        .map(|spec| Child {
            spec,
            pid: None,
            started: Instant::now(),
            delay: FIRST_RESTART_DELAY / 2,
            restart_at: Some(Instant::now()),
            quick_deaths: 0,
        })
        .collect();

    loop {
        let now = Instant::now();
        for child in children.iter_mut() {
            if stop.is_none() && child.restart_at.is_some_and(|t| t <= now) {
                child.restart_at = None;
                child.started = now;
                // Each child gets a fresh channel to the broker on every start: the frontend
                // at fd 4, the store-writer after its key files.
                let pair = match UnixStream::pair() {
                    Ok(pair) => Some(pair),
                    Err(e) => {
                        say!(
                            "ward-broker: socketpair for the {}: {e}",
                            child.spec.role.name()
                        );
                        None
                    }
                };
                let target = match child.spec.role {
                    Role::Frontend => 4,
                    Role::StoreWriter => store_writer_broker_fd(secret_keys.len()),
                };
                let extra: Vec<(RawFd, RawFd)> = pair
                    .iter()
                    .map(|(_, theirs)| (theirs.as_raw_fd(), target))
                    .collect();
                match spawn(&child.spec, &extra) {
                    Ok(pid) => {
                        child.pid = Some(pid);
                        if let Some((ours, _theirs)) = pair {
                            if child.spec.role == Role::Frontend {
                                // Builds and hooks of an earlier frontend have nobody to
                                // report to.
                                builds.abandon_all();
                                hooks.abandon_all();
                                frontend = FrontendLink::new(ours).map(|mut link| {
                                    link.pid = Some(pid);
                                    link
                                });
                            } else {
                                store_writer = StoreWriterLink::new(ours);
                            }
                        }
                    }
                    Err(e) => {
                        say!("ward-broker: {e}");
                        child.delay = (child.delay * 2).min(MAX_RESTART_DELAY);
                        child.restart_at = Some(now + child.delay);
                    }
                }
            }
        }
        let timeout = children
            .iter()
            .filter_map(|c| c.restart_at)
            .chain(builds.next_deadline())
            .chain(stop.map(|_| now + Duration::from_millis(50)))
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let timeout = match timeout {
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let (link_ready, writer_ready, builders_ready) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Some(link) = &frontend {
                fds.push(PollFd::new(
                    link.channel.socket().as_fd(),
                    PollFlags::POLLIN,
                ));
            }
            let writer_at = fds.len();
            if let Some(link) = &store_writer {
                fds.push(PollFd::new(
                    link.channel.socket().as_fd(),
                    PollFlags::POLLIN,
                ));
            }
            let first_builder = fds.len();
            let builder_fds = builds.poll_fds();
            for (_, fd) in &builder_fds {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(SupervisorError::Sys {
                        what: "poll".into(),
                        errno: e,
                    })
                }
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let link_ready = frontend.is_some() && fds.get(1).is_some_and(ready);
            let writer_ready = store_writer.is_some() && fds.get(writer_at).is_some_and(ready);
            let builders_ready: Vec<_> = builder_fds
                .iter()
                .zip(&fds[first_builder..])
                .filter(|(_, f)| ready(f))
                .map(|((id, _), _)| *id)
                .collect();
            (link_ready, writer_ready, builders_ready)
        };
        for id in builders_ready {
            builds.channel_ready(id);
        }
        if link_ready {
            let keep = frontend.as_mut().is_some_and(|link| {
                link.serve_one(&args.state_dir, &mut builds, &mut finders, &mut hooks)
            });
            if !keep {
                frontend = None;
                builds.abandon_all();
                hooks.abandon_all();
            }
            if let Some(link) = frontend.as_mut() {
                if std::mem::take(&mut link.announced_serving) {
                    service.ready(pid_of(&children, Role::Frontend), reloads);
                }
            }
        }
        if writer_ready {
            let keep = store_writer
                .as_mut()
                .is_some_and(|link| link.serve_one(&mut finders));
            if !keep {
                store_writer = None;
            }
        }
        let expired = builds.expire(Instant::now());
        notify(&mut frontend, &mut builds, &mut hooks, expired);
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {
                    let finished = reap(
                        &mut children,
                        &mut builds,
                        &mut finders,
                        &mut hooks,
                        stop.is_some(),
                    );
                    notify(&mut frontend, &mut builds, &mut hooks, finished);
                    if stop.is_none() {
                        for child in children.iter().filter(|c| c.pid.is_none()) {
                            service.restarting(child.spec.role.name(), child.quick_deaths);
                        }
                    }
                }
                Ok(Signal::SIGTERM | Signal::SIGINT) if stop.is_none() => {
                    // The frontend drains first (it cancels its builds through the channel,
                    // which stays served meanwhile); the store-writer stops after it.
                    say!("ward-broker: stopping: the frontend drains its connections");
                    service.stopping();
                    stop = Some(Instant::now());
                    if let Some(pid) = pid_of(&children, Role::Frontend) {
                        kill_quietly(Pid::from_raw(pid), Signal::SIGTERM);
                    }
                }
                Ok(Signal::SIGHUP) if stop.is_none() => {
                    // Both children re-read nix.conf; the frontend's `Serving` ends the reload.
                    reloads = reloads.saturating_add(1);
                    service.reloading();
                    for pid in children.iter().filter_map(|c| c.pid) {
                        kill_quietly(pid, Signal::SIGHUP);
                    }
                }
                _ => {}
            }
        }
        if let Some(since) = stop {
            let frontend_running = pid_of(&children, Role::Frontend);
            if let Some(pid) = frontend_running {
                if since.elapsed() >= FRONTEND_DRAIN {
                    say!("ward-broker: the frontend did not drain in time; killing it");
                    kill_quietly(Pid::from_raw(pid), Signal::SIGKILL);
                }
            } else if !writer_signalled {
                writer_signalled = true;
                if let Some(pid) = pid_of(&children, Role::StoreWriter) {
                    kill_quietly(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
            let all_gone = children.iter().all(|c| c.pid.is_none());
            if all_gone || since.elapsed() >= STOP_DEADLINE {
                builds.abandon_all();
                hooks.abandon_all();
                terminate(&mut children, Duration::ZERO);
                reap_orphans();
                say!(
                    "ward-broker: stopped after {} ms",
                    since.elapsed().as_millis()
                );
                return Ok(());
            }
        }
    }
}

/// The pid of the running child in `role`.
fn pid_of(children: &[Child], role: Role) -> Option<i32> {
    children
        .iter()
        .find(|c| c.spec.role == role)
        .and_then(|c| c.pid)
        .map(|p| p.as_raw())
}

/// Creates the directory of the private frontend⇄store-writer socket: owned by the
/// store-writer's user, group the shared group, mode 0750 (0700 in single-user mode).
fn prepare_ipc_dir(args: &BrokerArgs) -> Result<(), SupervisorError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = &args.ipc_dir;
    let shown = dir.display().to_string();
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => {
            return Err(SupervisorError::Sys {
                what: format!("creating '{shown}'"),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| SupervisorError::Sys {
        what: format!("checking '{shown}'"),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    if !meta.is_dir() {
        return Err(SupervisorError::Sys {
            what: format!("'{shown}' is not a directory"),
            errno: Errno::ENOTDIR,
        });
    }
    if let Some(user) = &args.store_user {
        let owner = lookup_identity(user, args.shared_group.as_deref())?;
        let group = owner.groups.last().copied();
        nix::unistd::chown(dir.as_path(), Some(owner.uid), group)
            .map_err(sys_err(format!("chown '{shown}'")))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(|e| {
            SupervisorError::Sys {
                what: format!("chmod '{shown}'"),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        })?;
    }
    Ok(())
}

/// For `ward daemon --stdio`: ends the broker (SIGTERM, handled like a shutdown, which stops
/// both children) when `parent`, the process relaying the session, exits, so a session torn
/// down with SIGKILL leaves nothing behind. Fails if `parent` is already gone.
pub fn exit_with_parent(parent: i32) -> Result<(), SupervisorError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(sys_err("pdeathsig"))?;
    // The parent may have died before the request above took effect.
    if nix::unistd::getppid() != Pid::from_raw(parent) {
        return Err(SupervisorError::Sys {
            what: format!("the --stdio session (pid {parent}) already ended"),
            errno: Errno::ESRCH,
        });
    }
    Ok(())
}

/// The listening descriptor must be valid before children are started with it.
pub fn check_listen_fd(fd: RawFd) -> Result<(), SupervisorError> {
    fcntl(fd, FcntlArg::F_GETFD)
        .map(drop)
        .map_err(sys_err(format!("--listen-fd {fd}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn specs_pass_arguments_through_and_place_the_listener_at_fd_3() {
        let args = BrokerArgs::parse(
            [
                "--listen-fd",
                "7",
                "--frontend",
                "/f",
                "--store-writer",
                "/s",
                "--ipc-dir",
                "/tmp/x",
                "--state-dir",
                "/tmp/s",
                "--",
                "--store",
                "/d",
            ]
            .map(OsString::from),
        )
        .unwrap();
        let specs = child_specs(&args, &[]).unwrap();
        let fe = specs.iter().find(|s| s.role == Role::Frontend).unwrap();
        assert_eq!(fe.fds, vec![(7, 3)]);
        let argv: Vec<_> = fe.argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            argv,
            [
                "/f",
                "--listen-fd",
                "3",
                "--ipc-dir",
                "/tmp/x",
                "--",
                "--store",
                "/d"
            ]
        );
        let sw = specs.iter().find(|s| s.role == Role::StoreWriter).unwrap();
        assert!(sw.fds.is_empty() && sw.identity.is_none());
    }

    #[test]
    fn unknown_users_are_named() {
        let err = lookup_identity("ward-no-such-user-xyz", None).unwrap_err();
        assert!(err.to_string().contains("ward-no-such-user-xyz"));
    }
}
