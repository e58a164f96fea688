//! Builds: the broker's table of running and finished builds, and every privileged step of a
//! build's life (start, timeout, cancel, collect, release), plus the start-up canary.
//!
//! Every reply is produced synchronously, so each request gets exactly one reply in order; the
//! only unasked message this module produces is `BuildFinished` (from [`Builds::reaped`] and
//! [`Builds::expire`]).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Pid, Uid};
use ward_ipc::broker::{
    BrokerError, BrokerToFrontend, BuildOutcome, BuildRequest, BuildTimings, CancelReason,
};
use ward_ipc::builder::{
    BrokerToBuilder, BuilderToBroker, CollectSpec, SandboxReport, SandboxSpec, SetupStep,
};
use ward_ipc::{BrokerBuilderChannel, BuildId, FrameLimit};

use crate::args::{BuildSettings, SandboxMode};
use crate::exec::{self, ExecSpec, Identity};
use crate::pool::{Pool, Source};
use crate::sys;
use crate::tree::{self, BuildDirs};

/// How long `CollectOutputs` waits for the collector's verdict.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the start-up canary may take.
const CANARY_TIMEOUT: Duration = Duration::from_secs(20);
/// The uid and gid a build sees itself as.
const SANDBOX_UID: u32 = 1000;
const SANDBOX_GID: u32 = 100;

/// Where a build is in its life. Kept apart from the processes so it can be tested alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    /// The builder process runs.
    Running,
    /// The builder is gone; the build user is still reserved until release.
    Finished {
        /// How it ended.
        outcome: BuildOutcome,
        /// `CollectOutputs` was granted once already.
        collected: bool,
    },
}

impl Life {
    /// `CollectOutputs`: only after `Exited { code: 0 }`, once.
    pub fn begin_collect(&mut self, build: BuildId) -> Result<(), BrokerError> {
        let wrong = |reason: &str| {
            Err(BrokerError::WrongBuildState {
                build,
                reason: reason.into(),
            })
        };
        match self {
            Life::Running => wrong("still running"),
            Life::Finished {
                collected: true, ..
            } => wrong("its outputs were already collected"),
            Life::Finished {
                outcome: BuildOutcome::Exited { code: 0 },
                collected,
            } => {
                *collected = true;
                Ok(())
            }
            Life::Finished { outcome, .. } => wrong(&format!("it did not succeed ({outcome:?})")),
        }
    }

    /// `ReleaseBuild`: only after the build finished.
    pub fn check_release(&self, build: BuildId) -> Result<(), BrokerError> {
        match self {
            Life::Running => Err(BrokerError::WrongBuildState {
                build,
                reason: "still running (cancel it first)".into(),
            }),
            Life::Finished { .. } => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Build {
    dir_name: String,
    uid: u32,
    gid: u32,
    chroot: bool,
    /// Without a chroot, outputs written to the build's own `store/` (see
    /// [`SandboxSpec::private_store`]) rather than to the real store.
    private_store: bool,
    /// The build's cgroup, killed when the builder ends and removed with the build.
    cgroup: Option<crate::cgroup::BuildCgroup>,
    outputs: Vec<(String, ward_ipc::store_path::StorePath)>,
    requester_uid: u32,
    top: OwnedFd,
    start_unix: u64,
    started: Instant,
    deadline: Option<Instant>,
    pid: Option<Pid>,
    channel: Option<BrokerBuilderChannel>,
    setup_failed: Option<(SetupStep, String)>,
    /// Set when the broker killed the builder, to report why.
    killed_for: Option<BuildOutcome>,
    life: Life,
    collector: Option<Pid>,
}

/// The builds of the current frontend channel, and what the broker needs to run them.
#[derive(Debug)]
pub struct Builds {
    cfg: BuildSettings,
    dirs: Option<BuildDirs>,
    pool: Option<Pool>,
    /// Why no build can start (no builder, bad configuration, failed canary).
    refusal: Option<Refusal>,
    table: BTreeMap<BuildId, Build>,
    /// Collectors to reap (their builds may be released already).
    strays: Vec<Pid>,
    /// The uid the canary ran as.
    canary_uid: u32,
    /// Where per-build cgroups are made, when the host allows it.
    cgroups: Option<crate::cgroup::BuildCgroups>,
    /// slirp4netns, when fixed-output builds can get a network namespace of their own.
    network_helper: Option<String>,
}

#[derive(Debug, Clone)]
enum Refusal {
    /// Builds are not configured or the set-up failed.
    Unavailable(String),
    /// The sandbox check failed.
    Sandbox(String),
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn cstring(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

impl Builds {
    /// Prepares the build directories and the user pool; a problem becomes a refusal of every
    /// build (the daemon still serves everything else).
    pub fn new(cfg: &BuildSettings, state_dir: &Path) -> Builds {
        let mut builds = Builds {
            cfg: cfg.clone(),
            dirs: None,
            pool: None,
            refusal: None,
            table: BTreeMap::new(),
            strays: Vec::new(),
            canary_uid: 0,
            cgroups: None,
            network_helper: None,
        };
        if cfg.builder_bin.is_none() {
            builds.refusal = Some(Refusal::Unavailable(
                "builds are not configured (the broker got no --builder)".into(),
            ));
            return builds;
        }
        match BuildDirs::prepare(state_dir, cfg.build_dir.as_deref()) {
            Ok(d) => builds.dirs = Some(d),
            Err(e) => {
                say!("ward-broker: build directories: {e}; refusing to build");
                builds.refusal = Some(Refusal::Unavailable(e));
                return builds;
            }
        }
        match make_pool(cfg) {
            Ok(p) => builds.pool = Some(p),
            Err(e) => {
                say!("ward-broker: build users: {e}; refusing to build");
                builds.refusal = Some(Refusal::Unavailable(e));
            }
        }
        builds.network_helper = network_helper(cfg);
        if nix::unistd::geteuid().is_root() {
            let wanted = crate::cgroup::Limits {
                memory_max: cfg.build_memory_max,
                pids_max: cfg.max_build_processes,
            };
            match crate::cgroup::BuildCgroups::discover(wanted) {
                Ok(c) => {
                    match c.limits() {
                        Some(Ok(l)) => say!(
                            "ward-broker: each build's cgroup gets memory.max {} and pids.max {} \
                             (0: none)",
                            l.memory_max,
                            l.pids_max
                        ),
                        Some(Err(why)) => say!(
                            "ward-broker: build cgroups get no limits ({why}); \
                             RLIMIT_NPROC still caps a build's processes"
                        ),
                        None => {}
                    }
                    builds.cgroups = Some(c);
                }
                Err(why) => say!(
                    "ward-broker: no per-build cgroups ({why}); a build's processes are still \
                     confined to its pid namespace and killed by uid"
                ),
            }
        }
        builds
    }

    /// Whether builds run as `uid` (a hook never does: a build could tamper with it).
    pub fn is_build_user(&self, uid: u32) -> bool {
        self.pool.as_ref().is_some_and(|p| p.contains(uid))
    }

    /// Whether the store directory builds see differs from where it is on disk.
    fn diverted_store(&self) -> bool {
        self.cfg.store_dir != self.cfg.real_store_dir
    }

    fn refuse(&self, build: BuildId) -> Option<BrokerError> {
        self.refusal.as_ref().map(|r| match r {
            Refusal::Unavailable(message) => BrokerError::StartFailed {
                build,
                operation: "starting a build".into(),
                message: message.clone(),
            },
            Refusal::Sandbox(reason) => BrokerError::SandboxRefused {
                build,
                reason: reason.clone(),
            },
        })
    }

    fn running(&self) -> usize {
        self.table
            .values()
            .filter(|b| b.life == Life::Running)
            .count()
    }

    /// The checks of `StartBuild` that need no process: the request's values and the store.
    fn check_start(&self, req: &BuildRequest) -> Result<bool, BrokerError> {
        let build = req.build;
        if req.builder.starts_with("builtin:") || req.system == "builtin" {
            return Err(BrokerError::BadRequest {
                build,
                field: "builder".into(),
                reason: format!(
                    "builtin builders ('{}') are not supported by ward's broker",
                    req.builder
                ),
            });
        }
        req.check()?;
        // A kept build tree is handed to the requester: never to a build user (a later build
        // as that uid could then change what the requester reads there).
        if self
            .pool
            .as_ref()
            .is_some_and(|pool| pool.sweeps() && pool.contains(req.requester_uid))
        {
            return Err(BrokerError::BadRequest {
                build,
                field: "requester_uid".into(),
                reason: format!("uid {} is a build user", req.requester_uid),
            });
        }
        if self.table.contains_key(&build) {
            return Err(BrokerError::DuplicateBuild { build });
        }
        if self.running() >= self.cfg.max_jobs as usize {
            return Err(BrokerError::TooManyBuilds {
                build,
                max: self.cfg.max_jobs,
            });
        }
        if req.system != self.cfg.system && !self.cfg.extra_platforms.contains(&req.system) {
            return Err(BrokerError::UnsupportedSystem {
                build,
                system: req.system.clone(),
            });
        }
        let chroot = match self.cfg.sandbox {
            SandboxMode::Enabled if req.no_chroot => {
                return Err(BrokerError::SandboxRefused {
                    build,
                    reason: "the derivation asks for __noChroot, but 'sandbox = true' (only \
                             'sandbox = relaxed' allows it)"
                        .into(),
                })
            }
            SandboxMode::Enabled => true,
            SandboxMode::Relaxed => !req.no_chroot,
            SandboxMode::Disabled => false,
        };
        // In a diverted store (`--store DIR`: the store directory a build names is not where
        // the files are) only the sandbox's mount tree puts the store where the build looks
        // for it, so builds there are always sandboxed, as Nix does.
        let chroot = chroot || self.diverted_store();
        let real = Path::new(&self.cfg.real_store_dir);
        // Not the derivation itself: BuildDerivation builds one that need not be in the store.
        for path in &req.input_paths {
            if std::fs::symlink_metadata(real.join(path.base_name())).is_err() {
                return Err(BrokerError::MissingInput {
                    build,
                    path: path.clone(),
                });
            }
        }
        if !chroot {
            for path in req.outputs.values() {
                if std::fs::symlink_metadata(real.join(path.base_name())).is_ok() {
                    return Err(BrokerError::OutputExists {
                        build,
                        path: path.clone(),
                    });
                }
            }
        }
        // Without a chroot the builder is a host path, as in Nix.
        if chroot && !builder_available(&self.cfg, req) {
            return Err(BrokerError::BuilderNotAvailable {
                build,
                builder: req.builder.clone(),
            });
        }
        Ok(chroot)
    }

    /// `StartBuild`: the reply and, for `BuildStarted`, the log pipe's read end.
    pub fn start(&mut self, req: &BuildRequest) -> (BrokerToFrontend, Vec<OwnedFd>) {
        match self.try_start(req) {
            Ok((reply, fd)) => (reply, vec![fd]),
            Err(e) => (BrokerToFrontend::Error(e), vec![]),
        }
    }

    fn try_start(
        &mut self,
        req: &BuildRequest,
    ) -> Result<(BrokerToFrontend, OwnedFd), BrokerError> {
        let build = req.build;
        if let Some(e) = self.refuse(build) {
            // The values are still checked first, so a bad request is named as such.
            req.check()?;
            return Err(e);
        }
        let chroot = self.check_start(req)?;
        let failed = |operation: &str, message: String| BrokerError::StartFailed {
            build,
            operation: operation.into(),
            message,
        };
        let (Some(pool), Some(dirs)) = (self.pool.as_mut(), self.dirs.as_ref()) else {
            return Err(failed("starting a build", "builds are not set up".into()));
        };
        let uid = pool.allocate().ok_or(BrokerError::NoBuildUser { build })?;
        let gid = pool.gid_for(uid);
        let drv_name = req.drv_path.name().trim_end_matches(".drv");
        // Another daemon on the same state directory (`--stdio` sessions) may use the same
        // build id: the first free name wins, never an existing directory.
        let base = format!("{}-{drv_name}", build.0);
        let mut dir_name = base.clone();
        let mut made = tree::create_owned_dir(&dirs.builds, &dir_name, uid, gid);
        for n in 2..50 {
            if !matches!(made, Err(rustix::io::Errno::EXIST)) {
                break;
            }
            dir_name = format!("{base}-{n}");
            made = tree::create_owned_dir(&dirs.builds, &dir_name, uid, gid);
        }
        let top = match made {
            Ok(fd) => fd,
            Err(e) => {
                pool.release(uid);
                return Err(failed(
                    "creating the build directory",
                    format!("{dir_name}: {e}"),
                ));
            }
        };
        let (cgroup, cgroup_procs) = match self.cgroups.as_ref().map(|c| c.create(&dir_name)) {
            Some(Ok((cg, procs))) => (Some(cg), Some(procs)),
            Some(Err(e)) => {
                say!("ward-broker: {build}: no cgroup: {e}");
                (None, None)
            }
            None => (None, None),
        };
        let host_top = dirs.builds_path.join(&dir_name);
        let spec = SandboxSpec {
            build,
            drv_path: req.drv_path.clone(),
            store_dir: self.cfg.store_dir.clone(),
            real_store_dir: self.cfg.real_store_dir.clone(),
            sandbox_build_dir: self.cfg.sandbox_build_dir.clone(),
            host_build_dir: host_top.join("build").to_string_lossy().into_owned(),
            sandbox_uid: SANDBOX_UID,
            sandbox_gid: SANDBOX_GID,
            chroot,
            private_store: !chroot && nix::unistd::geteuid().is_root(),
            network: req.fixed_output,
            network_helper: if req.fixed_output {
                self.network_helper.clone()
            } else {
                None
            },
            input_paths: req.input_paths.clone(),
            output_paths: req.outputs.values().cloned().collect(),
            bind_mounts: self.cfg.sandbox_paths.clone(),
            build_dir_files: req.build_dir_files.clone(),
            builder: req.builder.clone(),
            args: req.args.clone(),
            env: req.env.clone(),
            filter_syscalls: self.cfg.filter_syscalls,
            allow_new_privileges: self.cfg.allow_new_privileges,
            groups_cleared: nix::unistd::geteuid().is_root(),
            canary: false,
            tmpfs_size: self.cfg.tmpfs_size.clone(),
        };
        let private_store = spec.private_store;
        let started = Self::spawn_builder(&self.cfg, &spec, uid, gid, &top, cgroup_procs.as_ref());
        drop(cgroup_procs);
        let (pid, channel, log) = match started {
            Ok(x) => x,
            Err((what, e)) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                let _ = tree::delete_tree(&dirs.builds, &dir_name);
                pool.release(uid);
                return Err(failed(&what, e));
            }
        };
        say!(
            "ward-broker: {build} ({}) started as pid {pid}, uid {uid}, {}",
            req.drv_path,
            if chroot {
                "sandboxed"
            } else {
                "without chroot"
            }
        );
        self.table.insert(
            build,
            Build {
                dir_name,
                uid,
                gid,
                chroot,
                private_store,
                cgroup,
                outputs: req
                    .outputs
                    .iter()
                    .map(|(n, p)| (n.clone(), p.clone()))
                    .collect(),
                requester_uid: req.requester_uid,
                top,
                start_unix: now_unix(),
                started: Instant::now(),
                deadline: (req.timeout_secs > 0)
                    .then(|| Instant::now() + Duration::from_secs(req.timeout_secs)),
                pid: Some(pid),
                channel: Some(channel),
                setup_failed: None,
                killed_for: None,
                life: Life::Running,
                collector: None,
            },
        );
        Ok((
            BrokerToFrontend::BuildStarted {
                build,
                build_uid: uid,
            },
            log,
        ))
    }

    /// Fork+execs `ward-builder build` as the build user and sends it `spec`.
    fn spawn_builder(
        cfg: &BuildSettings,
        spec: &SandboxSpec,
        uid: u32,
        gid: u32,
        top: &OwnedFd,
        cgroup_procs: Option<&std::fs::File>,
    ) -> Result<(Pid, BrokerBuilderChannel, OwnedFd), (String, String)> {
        let err = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| (what, e.to_string())
        };
        let bin = cfg
            .builder_bin
            .as_deref()
            .unwrap_or(Path::new("/nonexistent"));
        let argv =
            exec_argv(bin, "build").map_err(|e| ("builder path".to_owned(), e.to_string()))?;
        let (log_r, log_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| ("log pipe".to_owned(), e.to_string()))?;
        let (ours, theirs) = UnixStream::pair().map_err(err("socketpair"))?;
        let null = std::fs::File::open("/dev/null").map_err(err("/dev/null"))?;
        let fds = [
            (null.as_raw_fd(), 0),
            (log_w.as_raw_fd(), 1),
            (log_w.as_raw_fd(), 2),
            (theirs.as_raw_fd(), 3),
            (top.as_raw_fd(), 4),
        ];
        let pid = spawn_as_build_user(
            &argv,
            uid,
            gid,
            &fds,
            cfg.allow_new_privileges,
            cfg.max_build_processes,
            cgroup_procs,
        )
        .map_err(|e| ("fork".to_owned(), e.to_string()))?;
        drop((log_w, theirs, null));
        let channel = BrokerBuilderChannel::new(ours, builder_frame_limit());
        // A builder that stops reading must not stall the broker.
        let _ = channel
            .socket()
            .set_write_timeout(Some(Duration::from_secs(5)));
        let _ = channel
            .socket()
            .set_read_timeout(Some(Duration::from_secs(2)));
        if let Err(e) = channel.send(&BrokerToBuilder::Spec(Box::new(spec.clone())), &[]) {
            // It died before reading (exec failed): it is reaped like any finished build, but
            // here the caller undoes the start, so kill and reap now.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = sys::wait4(pid.as_raw(), true);
            return Err(("sending the sandbox spec".into(), e.to_string()));
        }
        Ok((pid, channel, log_r))
    }

    /// The descriptors to poll: each running builder's channel (for `SetupFailed`).
    pub fn poll_fds(&self) -> Vec<(BuildId, BorrowedFd<'_>)> {
        self.table
            .iter()
            .filter_map(|(id, b)| b.channel.as_ref().map(|c| (*id, c.socket().as_fd())))
            .collect()
    }

    /// A builder channel is readable: a `SetupFailed`, or end-of-file (the builder exec'd or
    /// exited).
    pub fn channel_ready(&mut self, build: BuildId) {
        let Some(b) = self.table.get_mut(&build) else {
            return;
        };
        read_builder_channel(build, b);
    }

    /// The earliest timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.table
            .values()
            .filter(|b| b.life == Life::Running)
            .filter_map(|b| b.deadline)
            .min()
    }

    /// Kills builds past their timeout; returns their `BuildFinished`.
    pub fn expire(&mut self, now: Instant) -> Vec<BrokerToFrontend> {
        let late: Vec<BuildId> = self
            .table
            .iter()
            .filter(|(_, b)| b.life == Life::Running && b.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        late.into_iter()
            .filter_map(|id| {
                say!("ward-broker: {id} timed out; killing it");
                self.kill_and_finish(id, BuildOutcome::TimedOut)
            })
            .collect()
    }

    /// Kills a running build and reaps it at once; its `BuildFinished`.
    fn kill_and_finish(&mut self, build: BuildId, why: BuildOutcome) -> Option<BrokerToFrontend> {
        let b = self.table.get_mut(&build)?;
        let pid = b.pid?;
        b.killed_for = Some(why);
        let _ = kill(pid, Signal::SIGKILL);
        match sys::wait4(pid.as_raw(), true) {
            Ok(Some(r)) => self.reaped(r),
            _ => None,
        }
    }

    /// A child was reaped: if it is a builder, the build finishes and its `BuildFinished` is
    /// returned; collectors are just forgotten. `None` for pids that are not the builds'.
    pub fn reaped(&mut self, r: sys::Reaped) -> Option<BrokerToFrontend> {
        if let Some(pos) = self.strays.iter().position(|p| *p == r.pid) {
            self.strays.swap_remove(pos);
            return None;
        }
        if let Some(b) = self.table.values_mut().find(|b| b.collector == Some(r.pid)) {
            b.collector = None;
            return None;
        }
        let (&build, b) = self.table.iter_mut().find(|(_, b)| b.pid == Some(r.pid))?;
        b.pid = None;
        // Whatever the build started dies with it, wherever it went, before its outputs are
        // read. An emptied cgroup proves it (a build user cannot leave its cgroup); without
        // one, every process of the build user is killed.
        let emptied = b.cgroup.as_ref().is_some_and(|cg| cg.kill_and_wait());
        read_builder_channel(build, b);
        b.channel = None;
        let sweeps = self.pool.as_ref().is_some_and(|p| p.sweeps());
        if sweeps && !emptied && !crate::pool::sweep_uid(b.uid) {
            say!(
                "ward-broker: {build}: uid {} still owns processes after SIGKILL",
                b.uid
            );
        }
        let outcome = if let Some(why) = b.killed_for.take() {
            why
        } else if let Some((step, message)) = b.setup_failed.take() {
            BuildOutcome::SetupFailed { step, message }
        } else {
            match r.status {
                WaitStatus::Exited(_, code) => BuildOutcome::Exited { code },
                WaitStatus::Signaled(_, signal, _) => BuildOutcome::Signalled {
                    signal: signal as i32,
                },
                _ => BuildOutcome::Signalled { signal: 0 },
            }
        };
        say!("ward-broker: {build} finished: {outcome:?}");
        let timings = BuildTimings {
            start_time: b.start_unix,
            stop_time: now_unix(),
            cpu_user_micros: r.user_micros,
            cpu_system_micros: r.system_micros,
        };
        b.life = Life::Finished {
            outcome: outcome.clone(),
            collected: false,
        };
        Some(BrokerToFrontend::BuildFinished {
            build,
            outcome,
            timings,
        })
    }

    /// `CancelBuild`: the reply is the build's `BuildFinished` with `Cancelled` (no second,
    /// unasked one follows).
    pub fn cancel(&mut self, build: BuildId, reason: CancelReason) -> BrokerToFrontend {
        match self.table.get(&build) {
            Some(b) if b.life == Life::Running => {}
            _ => return BrokerToFrontend::Error(BrokerError::UnknownBuild { build }),
        }
        self.kill_and_finish(build, BuildOutcome::Cancelled { reason })
            .unwrap_or(BrokerToFrontend::Error(BrokerError::UnknownBuild { build }))
    }

    /// `QueryBuild`.
    pub fn query(&self, build: BuildId) -> BrokerToFrontend {
        match self.table.get(&build) {
            Some(b) if b.life == Life::Running => BrokerToFrontend::BuildStatus {
                build,
                running_secs: b.started.elapsed().as_secs(),
            },
            _ => BrokerToFrontend::Error(BrokerError::UnknownBuild { build }),
        }
    }

    /// `CollectOutputs`: the reply and the NAR pipes' read ends.
    pub fn collect(&mut self, build: BuildId) -> (BrokerToFrontend, Vec<OwnedFd>) {
        match self.try_collect(build) {
            Ok((reply, fds)) => (reply, fds),
            Err(e) => (BrokerToFrontend::Error(e), vec![]),
        }
    }

    fn try_collect(
        &mut self,
        build: BuildId,
    ) -> Result<(BrokerToFrontend, Vec<OwnedFd>), BrokerError> {
        let b = self
            .table
            .get_mut(&build)
            .ok_or(BrokerError::UnknownBuild { build })?;
        b.life.begin_collect(build)?;
        let failed = |operation: &str, message: String| BrokerError::StartFailed {
            build,
            operation: operation.into(),
            message,
        };
        let bin = self
            .cfg
            .builder_bin
            .as_deref()
            .unwrap_or(Path::new("/nonexistent"));
        let argv = exec_argv(bin, "collect").map_err(|e| failed("builder path", e.to_string()))?;
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for _ in &b.outputs {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| failed("pipe", e.to_string()))?;
            reads.push(r);
            writes.push(w);
        }
        let (ours, theirs) = UnixStream::pair().map_err(|e| failed("socketpair", e.to_string()))?;
        let null =
            std::fs::File::open("/dev/null").map_err(|e| failed("/dev/null", e.to_string()))?;
        let mut fds = vec![
            (null.as_raw_fd(), 0),
            (null.as_raw_fd(), 1),
            (2, 2),
            (theirs.as_raw_fd(), 3),
            (b.top.as_raw_fd(), 4),
        ];
        for (i, w) in writes.iter().enumerate() {
            fds.push((w.as_raw_fd(), 5 + i as RawFd));
        }
        let pid = spawn_as_build_user(
            &argv,
            b.uid,
            b.gid,
            &fds,
            self.cfg.allow_new_privileges,
            self.cfg.max_build_processes,
            None,
        )
        .map_err(|e| failed("fork", e.to_string()))?;
        drop((writes, theirs, null));
        b.collector = Some(pid);
        let channel = BrokerBuilderChannel::new(ours, builder_frame_limit());
        let _ = channel.socket().set_read_timeout(Some(COLLECT_TIMEOUT));
        let _ = channel
            .socket()
            .set_write_timeout(Some(Duration::from_secs(5)));
        let spec = CollectSpec {
            build,
            outputs: b.outputs.iter().map(|(_, p)| p.clone()).collect(),
            from_real_store: !b.chroot && !b.private_store,
            real_store_dir: self.cfg.real_store_dir.clone(),
            owner_uid: b.uid,
        };
        let refused = |reason: String| BrokerError::OutputRefused {
            build,
            output: b
                .outputs
                .first()
                .map(|(_, p)| p.to_string())
                .unwrap_or_default(),
            reason,
        };
        let verdict = channel
            .send(&BrokerToBuilder::Collect(Box::new(spec)), &[])
            .map_err(|e| refused(format!("the collector did not start: {e}")))
            .and_then(|()| {
                channel
                    .recv()
                    .map_err(|e| refused(format!("the collector gave no verdict: {e}")))
            });
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                let _ = kill(pid, Signal::SIGKILL);
                return Err(e);
            }
        };
        match verdict.message {
            BuilderToBroker::Collected => Ok((
                BrokerToFrontend::OutputsCollected {
                    build,
                    outputs: b.outputs.iter().map(|(n, _)| n.clone()).collect(),
                },
                reads,
            )),
            BuilderToBroker::CollectRefused { output, reason } => Err(BrokerError::OutputRefused {
                build,
                output,
                reason,
            }),
            other => Err(refused(format!(
                "the collector sent {other:?} instead of its verdict"
            ))),
        }
        .inspect_err(|_| {
            // No NAR will be read: stop the collector (it is reaped with the other children).
            let _ = kill(pid, Signal::SIGKILL);
        })
    }

    /// `ReleaseBuild`.
    pub fn release(&mut self, build: BuildId, keep_failed: bool) -> BrokerToFrontend {
        let Some(b) = self.table.get(&build) else {
            return BrokerToFrontend::Error(BrokerError::UnknownBuild { build });
        };
        if let Err(e) = b.life.check_release(build) {
            return BrokerToFrontend::Error(e);
        }
        let b = self.table.remove(&build).expect("just found");
        match self.dispose(build, b, keep_failed) {
            Ok(kept_at) => BrokerToFrontend::BuildReleased { build, kept_at },
            Err(reason) => BrokerToFrontend::Error(BrokerError::StartFailed {
                build,
                operation: "releasing the build".into(),
                message: reason,
            }),
        }
    }

    /// Kills what is left of a finished build, keeps or deletes its directory and frees its
    /// user.
    fn dispose(
        &mut self,
        build: BuildId,
        b: Build,
        keep_failed: bool,
    ) -> Result<Option<String>, String> {
        if let Some(pid) = b.collector {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = sys::wait4(pid.as_raw(), true);
        }
        // The collector (the only process since, and not in the cgroup) is gone; with the
        // cgroup emptied nothing else of this build is left, and the next allocation of the
        // uid sweeps it anyway.
        let emptied = b.cgroup.as_ref().is_some_and(|cg| {
            let empty = cg.kill_and_wait();
            cg.remove();
            empty
        });
        let sweeps = self.pool.as_ref().is_some_and(|p| p.sweeps());
        if sweeps && !emptied && !crate::pool::sweep_uid(b.uid) {
            return Err(format!("uid {} still owns processes", b.uid));
        }
        let Some(dirs) = self.dirs.as_ref() else {
            return Err("builds are not set up".into());
        };
        let mut result = Ok(None);
        if keep_failed {
            match keep(dirs, &b) {
                Ok(path) => {
                    say!("ward-broker: {build}: kept at {path}");
                    result = Ok(Some(path));
                }
                Err(e) => {
                    say!("ward-broker: {build}: keeping the build directory failed: {e}; deleting it");
                    result = Err(format!("keeping the build directory: {e}"));
                }
            }
        }
        if !matches!(result, Ok(Some(_))) {
            if let Err(e) = tree::delete_tree(&dirs.builds, &b.dir_name) {
                say!("ward-broker: {build}: deleting {}: {e}", b.dir_name);
                result = result.and(Err(format!("deleting the build directory: {e}")));
            }
        }
        if let Some(pool) = self.pool.as_mut() {
            pool.release(b.uid);
        }
        result
    }

    /// `ShuttingDown`: cancels every running build; their `BuildFinished`, in build order.
    pub fn cancel_all(&mut self) -> Vec<BrokerToFrontend> {
        let running: Vec<BuildId> = self
            .table
            .iter()
            .filter(|(_, b)| b.life == Life::Running)
            .map(|(id, _)| *id)
            .collect();
        running
            .into_iter()
            .filter_map(|id| {
                self.kill_and_finish(
                    id,
                    BuildOutcome::Cancelled {
                        reason: CancelReason::Client,
                    },
                )
            })
            .collect()
    }

    /// The frontend channel closed: kill every build and release it (directories deleted).
    pub fn abandon_all(&mut self) {
        let _ = self.cancel_all();
        let ids: Vec<BuildId> = self.table.keys().copied().collect();
        for id in ids {
            if let Some(b) = self.table.remove(&id) {
                if let Err(e) = self.dispose(id, b, false) {
                    say!("ward-broker: {id}: {e}");
                }
            }
        }
    }

    /// Runs the start-up canary when a sandbox is configured; on failure every later
    /// `StartBuild` is refused with `SandboxRefused` naming the part.
    pub fn run_canary(&mut self) {
        if self.refusal.is_some()
            || (self.cfg.sandbox == SandboxMode::Disabled && !self.diverted_store())
        {
            return;
        }
        match self.canary() {
            Ok(report) => {
                match compare_report(&report, &self.cfg, self.canary_uid) {
                    Ok(landlock) => say!(
                    "ward-broker: sandbox check passed (uid map, no capabilities, {}seccomp {}, \
                     loopback only, landlock {landlock})",
                    if report.no_new_privs { "no_new_privs, " } else { "" },
                    if report.seccomp_mode == 2 { "on" } else { "off" },
                ),
                    Err(reason) => {
                        say!("ward-broker: sandbox check failed: {reason}; refusing to build");
                        self.refusal =
                            Some(Refusal::Sandbox(format!("sandbox check failed: {reason}")));
                    }
                }
            }
            Err(reason) => {
                say!("ward-broker: sandbox check failed: {reason}; refusing to build");
                self.refusal = Some(Refusal::Sandbox(format!("sandbox check failed: {reason}")));
            }
        }
    }

    fn canary(&mut self) -> Result<SandboxReport, String> {
        let (Some(pool), Some(dirs)) = (self.pool.as_mut(), self.dirs.as_ref()) else {
            return Err("builds are not set up".into());
        };
        let uid = pool.allocate().ok_or("no free build user for the canary")?;
        let gid = pool.gid_for(uid);
        self.canary_uid = uid;
        let name = format!("canary-{}", std::process::id());
        let _ = tree::delete_tree(&dirs.builds, &name);
        let top = tree::create_owned_dir(&dirs.builds, &name, uid, gid)
            .map_err(|e| format!("creating {name}: {e}"))?;
        let spec = SandboxSpec {
            build: BuildId(0),
            drv_path: ward_ipc::store_path::StorePath::from_base_name(
                "00000000000000000000000000000000-ward-canary.drv",
            )
            .map_err(|e| e.to_string())?,
            store_dir: self.cfg.store_dir.clone(),
            real_store_dir: self.cfg.real_store_dir.clone(),
            sandbox_build_dir: self.cfg.sandbox_build_dir.clone(),
            host_build_dir: dirs
                .builds_path
                .join(&name)
                .join("build")
                .to_string_lossy()
                .into_owned(),
            sandbox_uid: SANDBOX_UID,
            sandbox_gid: SANDBOX_GID,
            chroot: true,
            private_store: false,
            network: false,
            network_helper: None,
            input_paths: Default::default(),
            output_paths: Default::default(),
            bind_mounts: self.cfg.sandbox_paths.clone(),
            build_dir_files: vec![],
            builder: "/bin/sh".into(),
            args: vec![],
            env: Default::default(),
            filter_syscalls: self.cfg.filter_syscalls,
            allow_new_privileges: self.cfg.allow_new_privileges,
            groups_cleared: nix::unistd::geteuid().is_root(),
            canary: true,
            tmpfs_size: self.cfg.tmpfs_size.clone(),
        };
        let result = Self::spawn_builder(&self.cfg, &spec, uid, gid, &top, None);
        let result =
            result
                .map_err(|(what, e)| format!("{what}: {e}"))
                .and_then(|(pid, channel, log)| {
                    let _ = channel.socket().set_read_timeout(Some(CANARY_TIMEOUT));
                    let got = channel.recv();
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = sys::wait4(pid.as_raw(), true);
                    let mut log_text = String::new();
                    let _ = rustix::fs::fcntl_setfl(&log, rustix::fs::OFlags::NONBLOCK);
                    let mut buf = [0u8; 2048];
                    if let Ok(n) = rustix::io::read(&log, &mut buf) {
                        log_text = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                    }
                    let tail = if log_text.is_empty() {
                        String::new()
                    } else {
                        format!(" (builder said: {log_text})")
                    };
                    match got {
                        Ok(m) => match m.message {
                            BuilderToBroker::CanaryReport(report) => Ok(*report),
                            BuilderToBroker::SetupFailed { step, message } => Err(format!(
                                "the sandbox could not be set up at {step:?}: {message}"
                            )),
                            other => Err(format!("the canary sent {other:?}")),
                        },
                        Err(e) => Err(format!("the canary sent no report: {e}{tail}")),
                    }
                });
        let sweeps = self.pool.as_ref().is_some_and(|p| p.sweeps());
        if sweeps {
            crate::pool::sweep_uid(uid);
        }
        if let Some(dirs) = self.dirs.as_ref() {
            let _ = tree::delete_tree(&dirs.builds, &name);
        }
        if let Some(pool) = self.pool.as_mut() {
            pool.release(uid);
        }
        result
    }
}

/// The builder reads with the largest cap; a spec is a checked request plus configuration, so
/// it may be somewhat larger than the request frame was.
fn builder_frame_limit() -> FrameLimit {
    FrameLimit::new(ward_ipc::frame::MAX_FRAME_LEN_CEILING).unwrap_or(FrameLimit::DEFAULT)
}

fn read_builder_channel(build: BuildId, b: &mut Build) {
    let Some(channel) = b.channel.as_ref() else {
        return;
    };
    let mut ready = [nix::poll::PollFd::new(
        channel.socket().as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if !matches!(nix::poll::poll(&mut ready, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0) {
        return;
    }
    if let Ok(m) = channel.recv() {
        match m.message {
            BuilderToBroker::SetupFailed { step, message } => {
                say!("ward-broker: {build}: sandbox set-up failed at {step:?}: {message}");
                b.setup_failed = Some((step, message));
            }
            other => {
                say!(
                    "ward-broker: {build}: unexpected message from the builder: {}",
                    ward_ipc::IpcMessage::variant_name(&other)
                );
            }
        }
    }
    // One message at most: after it (or end-of-file) the channel has nothing more to say.
    b.channel = None;
}

/// `keep-failed`: hand the tree to the requester while it is still in the root-only builds
/// directory (nobody can race the walk there), then move it to `kept/<uid>/`.
fn keep(dirs: &BuildDirs, b: &Build) -> Result<String, String> {
    let to_gid = nix::unistd::User::from_uid(Uid::from_raw(b.requester_uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw());
    let count = tree::chown_tree(&b.top, b.uid, b.requester_uid, to_gid)
        .map_err(|e| format!("handing the tree to uid {}: {e}", b.requester_uid))?;
    if count.skipped > 0 {
        say!(
            "ward-broker: kept tree {}: {} entries not handed over (other owner or hard link)",
            b.dir_name,
            count.skipped
        );
    }
    let user_dir = tree::open_kept_user_dir(&dirs.kept, b.requester_uid, to_gid.unwrap_or(b.gid))?;
    let name = tree::move_no_replace(&dirs.builds, &b.dir_name, &user_dir)
        .map_err(|e| format!("moving into kept/{}: {e}", b.requester_uid))?;
    // What the user wants is the build directory itself (Nix's "keeping build directory"):
    // the tree's `build/`; the sandbox's `root/` and `store/` (any outputs written) sit beside
    // it.
    Ok(dirs
        .kept_path
        .join(b.requester_uid.to_string())
        .join(name)
        .join("build")
        .to_string_lossy()
        .into_owned())
}

/// slirp4netns for fixed-output builds, if configured and usable: build users must be able to
/// open `/dev/net/tun` (mode 0666, Debian's default). Otherwise fixed-output builds share the
/// host's network namespace, and start-up says why.
fn network_helper(cfg: &BuildSettings) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let shared = "fixed-output builds share the host's network namespace";
    let Some(bin) = &cfg.slirp4netns else {
        say!("ward-broker: slirp4netns is not installed: {shared}");
        return None;
    };
    match std::fs::metadata(bin) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        _ => {
            say!(
                "ward-broker: '{}' is not an executable file: {shared}",
                bin.display()
            );
            return None;
        }
    }
    let tun = Path::new("/dev/net/tun");
    let usable = if nix::unistd::geteuid().is_root() {
        std::fs::metadata(tun).is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
    } else {
        rustix::fs::access(
            tun,
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_ok()
    };
    if !usable {
        say!(
            "ward-broker: /dev/net/tun cannot be opened by build users (it needs mode 0666): \
             {shared}"
        );
        return None;
    }
    say!(
        "ward-broker: fixed-output builds get a network namespace of their own through '{}'",
        bin.display()
    );
    Some(bin.display().to_string())
}

fn make_pool(cfg: &BuildSettings) -> Result<Pool, String> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let own_gid = nix::unistd::getegid().as_raw();
    if own_uid != 0 {
        if !cfg.build_users_group.is_empty() {
            say!(
                "ward-broker: not root: ignoring build-users-group '{}'; builds run as uid {own_uid}",
                cfg.build_users_group
            );
        }
        return Ok(Pool::new(Source::Own, own_gid, own_uid));
    }
    if cfg.auto_allocate_uids {
        // Without a group each uid gets the gid of the same number (as Nix does), never the
        // broker's own gid: as root that would be group 0.
        let gid = if cfg.build_users_group.is_empty() {
            None
        } else {
            let gid = nix::unistd::Group::from_name(&cfg.build_users_group)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
                .ok_or_else(|| {
                    format!(
                        "build users group '{}' does not exist",
                        cfg.build_users_group
                    )
                })?;
            Some(gid)
        };
        return Ok(Pool::new(
            Source::Range {
                start: cfg.start_id,
                count: cfg.id_count,
            },
            gid,
            own_uid,
        ));
    }
    if cfg.build_users_group.is_empty() {
        return Err("root never builds as root: no build-users-group".into());
    }
    Pool::from_group(&cfg.build_users_group, own_uid)
}

/// Whether the builder program is inside an input path or a configured sandbox path.
pub fn builder_available(cfg: &BuildSettings, req: &BuildRequest) -> bool {
    let within = |dir: &str| {
        req.builder == dir
            || req
                .builder
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    req.input_paths.iter().any(|p| {
        within(&format!(
            "{}/{}",
            cfg.store_dir.trim_end_matches('/'),
            p.base_name()
        ))
    }) || cfg.sandbox_paths.iter().any(|m| within(&m.target))
}

/// Compares a canary's report with the policy; on success, the landlock status for the log.
pub fn compare_report(
    r: &SandboxReport,
    cfg: &BuildSettings,
    build_uid: u32,
) -> Result<String, String> {
    let one_mapping = |map: &str, inside: u32, outside: u32| {
        let lines: Vec<Vec<&str>> = map
            .lines()
            .map(|l| l.split_whitespace().collect())
            .filter(|f: &Vec<&str>| !f.is_empty())
            .collect();
        lines.len() == 1 && lines[0] == [inside.to_string(), outside.to_string(), "1".to_string()]
    };
    if !one_mapping(&r.uid_map, SANDBOX_UID, build_uid) {
        return Err(format!(
            "the uid map is not exactly {SANDBOX_UID} → {build_uid} (got {:?})",
            r.uid_map.trim()
        ));
    }
    if r.uids != [SANDBOX_UID; 3] {
        return Err(format!(
            "the build runs as uids {:?}, not {SANDBOX_UID}",
            r.uids
        ));
    }
    if r.cap_eff != 0 {
        return Err(format!(
            "capabilities are not dropped (CapEff {:#x})",
            r.cap_eff
        ));
    }
    if !cfg.allow_new_privileges && !r.no_new_privs {
        return Err("no_new_privs is not set".into());
    }
    if cfg.filter_syscalls && r.seccomp_mode != 2 {
        return Err(format!("seccomp is not active (mode {})", r.seccomp_mode));
    }
    if r.net_devices != ["lo"] {
        return Err(format!(
            "the network namespace has {:?}, not only loopback",
            r.net_devices
        ));
    }
    if r.hostname != "localhost" {
        return Err(format!(
            "the host name is '{}', not 'localhost'",
            r.hostname
        ));
    }
    // The mount tree: the build's own directories are there, the host's are not (unless
    // the configuration binds them in as sandbox paths).
    for needed in ["/proc", cfg.sandbox_build_dir.as_str()] {
        if !r.mounts.iter().any(|m| m == needed) {
            return Err(format!("'{needed}' is not mounted in the sandbox"));
        }
    }
    let configured = |m: &str| {
        cfg.sandbox_paths
            .iter()
            .any(|b| m == b.target || m.starts_with(&format!("{}/", b.target)))
    };
    for host_only in [
        "/home", "/root", "/run", "/sys", "/var", "/boot", "/srv", "/mnt",
    ] {
        let under = |m: &String| m == host_only || m.starts_with(&format!("{host_only}/"));
        if let Some(m) = r.mounts.iter().find(|m| under(m) && !configured(m)) {
            return Err(format!("the host's '{m}' is mounted in the sandbox"));
        }
    }
    // An unprivileged broker (single-user mode) cannot drop its user's own groups.
    if nix::unistd::geteuid().is_root() && !r.groups.is_empty() {
        return Err(format!("supplementary groups are left: {:?}", r.groups));
    }
    Ok(match r.landlock_abi {
        Some(abi) => format!("ABI {abi}"),
        None => "not supported".into(),
    })
}

fn exec_argv(bin: &Path, mode: &str) -> Result<Vec<CString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    Ok(vec![
        CString::new(bin.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?,
        cstring(mode)?,
    ])
}

/// Fork+exec of `argv` as `uid:gid` (no supplementary groups) with exactly `fds` placed,
/// first joining the cgroup whose `cgroup.procs` is `cgroup_procs` and, when it switches to
/// the build user, capping that user's processes at `max_processes` (0: no cap). Not root
/// (single-user mode): `uid` is the broker's own and no switch happens.
fn spawn_as_build_user(
    argv: &[CString],
    uid: u32,
    gid: u32,
    fds: &[(RawFd, RawFd)],
    allow_new_privileges: bool,
    max_processes: u32,
    cgroup_procs: Option<&std::fs::File>,
) -> nix::Result<Pid> {
    if uid == 0 {
        return Err(Errno::EPERM);
    }
    let identity = nix::unistd::geteuid().is_root().then(|| Identity {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups: Vec::new(),
    });
    if identity.is_none() && nix::unistd::getuid().as_raw() != uid {
        return Err(Errno::EPERM);
    }
    let env = [CString::new("PATH=/usr/bin:/bin").map_err(|_| Errno::EINVAL)?];
    let spec = ExecSpec {
        argv,
        env: Some(&env),
        fds,
        identity: identity.as_ref(),
        no_new_privs: !allow_new_privileges,
        death_signal: Signal::SIGKILL,
        // Its own session: no terminal and no signal meant for the daemon's process group.
        new_session: true,
        cwd: None,
    };
    let what = format!("{:?}", argv.first());
    let cap_processes = identity.is_some() && max_processes > 0;
    exec::spawn(&spec, &what, || {
        if let Some(procs) = cgroup_procs {
            crate::cgroup::join(procs)
                .map_err(|e| format!("joining the build's cgroup failed: {e}"))?;
        }
        // Counted per real uid, which becomes the build user's: one build's fork bomb stops
        // at its own cap.
        if cap_processes {
            let max = u64::from(max_processes);
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, max, max)
                .map_err(|e| format!("capping the build user's processes failed: {e}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_ipc::builder::BindMount;
    use ward_ipc::store_path::StorePath;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    const BASH: &str = "ab3li50xq0nl4q5lxdyinb8w8y13my9s-bash";
    const DRV: &str = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv";
    const OUT: &str = "0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello";

    fn request(store: &str) -> BuildRequest {
        BuildRequest {
            build: BuildId(1),
            drv_path: path(DRV),
            system: "x86_64-linux".into(),
            builder: format!("{store}/{BASH}/bin/bash"),
            args: vec![],
            env: Default::default(),
            input_paths: [path(BASH)].into(),
            outputs: [("out".to_string(), path(OUT))].into(),
            fixed_output: false,
            build_dir_files: vec![],
            timeout_secs: 0,
            no_chroot: false,
            requester_uid: 1000,
        }
    }

    fn settings(store: &str) -> BuildSettings {
        BuildSettings {
            store_dir: store.into(),
            real_store_dir: store.into(),
            system: "x86_64-linux".into(),
            extra_platforms: vec!["i686-linux".into()],
            sandbox_paths: vec![BindMount {
                source: "/usr/bin/env".into(),
                target: "/usr/bin/env".into(),
                optional: false,
            }],
            ..BuildSettings::default()
        }
    }

    fn table(cfg: &BuildSettings) -> Builds {
        Builds {
            cfg: cfg.clone(),
            dirs: None,
            pool: None,
            refusal: None,
            table: BTreeMap::new(),
            strays: vec![],
            canary_uid: 0,
            cgroups: None,
            network_helper: None,
        }
    }

    #[test]
    fn outputs_are_collected_only_after_success_and_once() {
        let b = BuildId(3);
        let mut life = Life::Running;
        assert!(matches!(
            life.begin_collect(b),
            Err(BrokerError::WrongBuildState { .. })
        ));
        assert!(matches!(
            life.check_release(b),
            Err(BrokerError::WrongBuildState { .. })
        ));
        life = Life::Finished {
            outcome: BuildOutcome::Exited { code: 0 },
            collected: false,
        };
        life.begin_collect(b).unwrap();
        let again = life.begin_collect(b).unwrap_err();
        assert!(again.to_string().contains("already collected"), "{again}");
        life.check_release(b).unwrap();
        for outcome in [
            BuildOutcome::Exited { code: 1 },
            BuildOutcome::Signalled { signal: 9 },
            BuildOutcome::TimedOut,
            BuildOutcome::Cancelled {
                reason: CancelReason::Client,
            },
            BuildOutcome::SetupFailed {
                step: SetupStep::Seccomp,
                message: "x".into(),
            },
        ] {
            let mut life = Life::Finished {
                outcome,
                collected: false,
            };
            assert!(life.begin_collect(b).is_err());
            life.check_release(b).unwrap();
        }
    }

    #[test]
    fn start_checks_the_request_against_the_store_and_the_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().to_str().unwrap().to_owned();
        let cfg = settings(&store);
        let mut builds = table(&cfg);
        // Inputs are missing at first.
        assert!(matches!(
            builds.check_start(&request(&store)),
            Err(BrokerError::MissingInput { path, .. }) if path.base_name() == BASH
        ));
        std::fs::create_dir_all(tmp.path().join(BASH).join("bin")).unwrap();
        // The derivation itself need not be in the store (BuildDerivation).
        assert!(!tmp.path().join(DRV).exists());
        assert!(
            builds.check_start(&request(&store)).unwrap(),
            "sandboxed by default"
        );

        let mut r = request(&store);
        r.system = "aarch64-linux".into();
        assert!(matches!(
            builds.check_start(&r),
            Err(BrokerError::UnsupportedSystem { .. })
        ));
        r.system = "i686-linux".into();
        builds.check_start(&r).unwrap();

        let mut r = request(&store);
        r.builder = "builtin:fetchurl".into();
        let e = builds.check_start(&r).unwrap_err();
        assert!(e.to_string().contains("builtin builders"), "{e}");

        // A kept tree is never handed to a build user.
        builds.pool = Some(Pool::new(
            Source::Range {
                start: 30000,
                count: 8,
            },
            30000,
            1,
        ));
        let mut r = request(&store);
        r.requester_uid = 30003;
        let e = builds.check_start(&r).unwrap_err();
        assert!(e.to_string().contains("requester_uid"), "{e}");
        r.requester_uid = 1000;
        builds.check_start(&r).unwrap();
        builds.pool = None;

        let mut r = request(&store);
        r.builder = "/bin/sh".into();
        assert!(matches!(
            builds.check_start(&r),
            Err(BrokerError::BuilderNotAvailable { .. })
        ));
        r.builder = "/usr/bin/env".into();
        builds.check_start(&r).unwrap();
        r.builder = format!("{store}/{BASH}-evil/bin/sh");
        assert!(matches!(
            builds.check_start(&r),
            Err(BrokerError::BuilderNotAvailable { .. })
        ));

        // __noChroot: refused with sandbox = true, granted with relaxed.
        let mut r = request(&store);
        r.no_chroot = true;
        assert!(matches!(
            builds.check_start(&r),
            Err(BrokerError::SandboxRefused { .. })
        ));
        let mut relaxed = table(&BuildSettings {
            sandbox: SandboxMode::Relaxed,
            ..cfg.clone()
        });
        assert!(!relaxed.check_start(&r).unwrap());
        // Without a chroot an existing output is in the way; with one it is not.
        std::fs::create_dir(tmp.path().join(OUT)).unwrap();
        assert!(matches!(
            relaxed.check_start(&r),
            Err(BrokerError::OutputExists { .. })
        ));
        assert!(builds.check_start(&request(&store)).unwrap());

        // Bad values are caught by BuildRequest::check first.
        let mut r = request(&store);
        r.env.insert("A=B".into(), String::new());
        assert!(matches!(
            builds.check_start(&r),
            Err(BrokerError::BadRequest { .. })
        ));

        // max-jobs 0: no local builds.
        relaxed.cfg.max_jobs = 0;
        assert!(matches!(
            relaxed.check_start(&request(&store)),
            Err(BrokerError::TooManyBuilds { max: 0, .. })
        ));
        // A refused sandbox refuses every build, naming the part.
        builds.refusal = Some(Refusal::Sandbox(
            "sandbox check failed: seccomp is not active".into(),
        ));
        match builds.start(&request(&store)) {
            (BrokerToFrontend::Error(BrokerError::SandboxRefused { reason, build }), fds) => {
                assert!(reason.contains("seccomp"));
                assert_eq!(build, BuildId(1));
                assert!(fds.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_builds_are_named_in_errors() {
        let mut builds = table(&settings("/nix/store"));
        let b = BuildId(77);
        for reply in [
            builds.cancel(b, CancelReason::Client),
            builds.query(b),
            builds.collect(b).0,
            builds.release(b, false),
        ] {
            assert_eq!(
                reply,
                BrokerToFrontend::Error(BrokerError::UnknownBuild { build: b })
            );
        }
        assert!(builds.cancel_all().is_empty());
    }

    fn good_report() -> SandboxReport {
        SandboxReport {
            uid_map: "      1000      30001          1\n".into(),
            gid_map: "       100      30000          1\n".into(),
            cap_eff: 0,
            no_new_privs: true,
            seccomp_mode: 2,
            landlock_abi: Some(4),
            mounts: vec!["/".into(), "/proc".into(), "/build".into()],
            net_devices: vec!["lo".into()],
            hostname: "localhost".into(),
            uids: [1000; 3],
            groups: vec![],
        }
    }

    #[test]
    fn a_weaker_sandbox_is_named_part_by_part() {
        let cfg = settings("/nix/store");
        assert_eq!(
            compare_report(&good_report(), &cfg, 30001).unwrap(),
            "ABI 4"
        );
        let mut r = good_report();
        r.landlock_abi = None;
        assert_eq!(compare_report(&r, &cfg, 30001).unwrap(), "not supported");
        type Weaken = fn(&mut SandboxReport);
        let cases: Vec<(Weaken, &str)> = vec![
            (|r| r.uid_map = "0 0 4294967295".into(), "uid map"),
            (|r| r.uid_map.push_str("0 30002 1\n"), "uid map"),
            (|r| r.uid_map = "1000 30001 2".into(), "uid map"),
            (|r| r.uids = [0, 0, 0], "uids"),
            (|r| r.cap_eff = 1 << 21, "capabilities"),
            (|r| r.no_new_privs = false, "no_new_privs"),
            (|r| r.seccomp_mode = 0, "seccomp is not active"),
            (|r| r.net_devices.push("eth0".into()), "loopback"),
            (|r| r.hostname = "host".into(), "host name"),
            (|r| r.groups = vec![65534], "supplementary groups"),
            (
                |r| r.mounts.push("/home".into()),
                "the host's '/home' is mounted",
            ),
            (
                |r| r.mounts.push("/run/user/0".into()),
                "the host's '/run/user/0'",
            ),
            (
                |r| r.mounts.retain(|m| m != "/build"),
                "'/build' is not mounted",
            ),
            (
                |r| r.mounts.retain(|m| m != "/proc"),
                "'/proc' is not mounted",
            ),
        ];
        for (weaken, part) in cases {
            let mut r = good_report();
            weaken(&mut r);
            let e = compare_report(&r, &cfg, 30001).unwrap_err();
            assert!(e.contains(part), "{part}: {e}");
        }
        // The wrong build uid is a wrong map too.
        assert!(compare_report(&good_report(), &cfg, 30002).is_err());
        // What the configuration allows is not a failure.
        let lax = BuildSettings {
            filter_syscalls: false,
            allow_new_privileges: true,
            ..cfg
        };
        let mut r = good_report();
        r.seccomp_mode = 0;
        r.no_new_privs = false;
        compare_report(&r, &lax, 30001).unwrap();
    }

    /// The real `ward-builder` next to the test binary's target directory, if it was built.
    fn real_builder() -> Option<std::path::PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let path = exe.parent()?.parent()?.join("ward-builder");
        path.exists().then_some(path)
    }

    fn wait_finished(builds: &mut Builds) -> BrokerToFrontend {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the build did not finish");
            // Only this table's builders: other tests run in the same process.
            let pids: Vec<Pid> = builds.table.values().filter_map(|b| b.pid).collect();
            for pid in pids {
                if let Ok(Some(r)) = sys::wait4(pid.as_raw(), false) {
                    if let Some(n) = builds.reaped(r) {
                        return n;
                    }
                }
            }
            for id in builds
                .poll_fds()
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
            {
                builds.channel_ready(id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// With the real builder (when built) and the nixbld users: canary, a build that writes
    /// its output, collection, keep-failed and release. Prints what it saw.
    #[test]
    fn end_to_end_with_the_real_builder() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: end_to_end_with_the_real_builder needs root");
            return;
        }
        let Some(builder) = real_builder() else {
            println!("SKIPPED: end_to_end_with_the_real_builder needs target/*/ward-builder");
            return;
        };
        if nix::unistd::Group::from_name("nixbld")
            .ok()
            .flatten()
            .is_none()
        {
            println!("SKIPPED: end_to_end_with_the_real_builder needs the nixbld group");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = tmp.path().join("store");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(store.join(BASH)).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(store.join(DRV), b"Derive()").unwrap();
        let store_s = store.to_str().unwrap().to_owned();
        let mut cfg = settings("/nix/store");
        cfg.real_store_dir = store_s.clone();
        cfg.builder_bin = Some(builder);
        cfg.build_users_group = "nixbld".into();
        cfg.sandbox_paths = [
            "/bin=/usr/bin",
            "/usr",
            "/lib=/usr/lib",
            "/lib64=/usr/lib64?",
        ]
        .iter()
        .map(|p| crate::args::parse_sandbox_path(p).unwrap())
        .collect();
        let mut builds = Builds::new(&cfg, &state);
        builds.run_canary();
        println!("canary refusal: {:?}", builds.refusal);
        // Whatever the canary said, run a build to exercise the broker's side.
        builds.refusal = None;
        let mut req = request("/nix/store");
        req.builder = "/bin/sh".into();
        req.args = vec![
            "-c".into(),
            "echo building; id; mkdir $out && echo hello > $out/greeting; echo kept > kept-file"
                .into(),
        ];
        req.env.insert("out".into(), format!("/nix/store/{OUT}"));
        req.env.insert("PATH".into(), "/bin".into());
        req.timeout_secs = 60;
        let (reply, fds) = builds.start(&req);
        println!("start: {reply:?}");
        let BrokerToFrontend::BuildStarted { build_uid, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_ne!(build_uid, 0);
        assert_eq!(fds.len(), 1);
        let finished = wait_finished(&mut builds);
        println!("finished: {finished:?}");
        let mut log = String::new();
        let _ = rustix::fs::fcntl_setfl(&fds[0], rustix::fs::OFlags::NONBLOCK);
        let mut buf = [0u8; 8192];
        while let Ok(n) = rustix::io::read(&fds[0], &mut buf) {
            if n == 0 {
                break;
            }
            log.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        println!("log: {log}");
        // Collect only works after success; a second start with the same id is refused.
        assert!(matches!(
            builds.start(&req).0,
            BrokerToFrontend::Error(BrokerError::DuplicateBuild { .. })
        ));
        if let BrokerToFrontend::BuildFinished {
            outcome: BuildOutcome::Exited { code: 0 },
            ..
        } = finished
        {
            let (reply, pipes) = builds.collect(BuildId(1));
            println!("collect: {reply:?} with {} pipes", pipes.len());
            for p in &pipes {
                let mut nar = Vec::new();
                let mut f = std::fs::File::from(p.try_clone().unwrap());
                let _ = std::io::Read::read_to_end(&mut f, &mut nar);
                println!("nar: {} bytes", nar.len());
            }
            assert!(matches!(
                builds.collect(BuildId(1)).0,
                BrokerToFrontend::Error(BrokerError::WrongBuildState { .. })
            ));
        }
        let released = builds.release(BuildId(1), true);
        println!("release: {released:?}");
        if let BrokerToFrontend::BuildReleased {
            kept_at: Some(path),
            ..
        } = &released
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(path).unwrap();
            assert_eq!(meta.uid(), 1000);
            assert!(path.starts_with(state.join("ward-broker/kept/1000").to_str().unwrap()));
            assert_eq!(
                std::fs::read_to_string(std::path::Path::new(path).join("kept-file")).unwrap(),
                "kept\n"
            );
        } else {
            panic!("{released:?}");
        }
        assert!(crate::pool::live_processes_of(build_uid).unwrap() == 0);
        assert_eq!(
            std::fs::read_dir(state.join("ward-broker/builds"))
                .unwrap()
                .count(),
            0,
            "the builds directory is empty again"
        );
    }

    /// A root-only, builder-needing set-up: a fake store with one input and the derivation.
    fn real_setup(name: &str) -> Option<(tempfile::TempDir, Builds)> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: {name} needs root");
            return None;
        }
        let Some(builder) = real_builder() else {
            println!("SKIPPED: {name} needs target/*/ward-builder");
            return None;
        };
        if nix::unistd::Group::from_name("nixbld")
            .ok()
            .flatten()
            .is_none()
        {
            println!("SKIPPED: {name} needs the nixbld group");
            return None;
        }
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir_all(store.join(BASH)).unwrap();
        std::fs::create_dir_all(tmp.path().join("state")).unwrap();
        std::fs::write(store.join(DRV), b"Derive()").unwrap();
        let mut cfg = settings("/nix/store");
        cfg.real_store_dir = store.to_str().unwrap().to_owned();
        cfg.builder_bin = Some(builder);
        cfg.build_users_group = "nixbld".into();
        cfg.max_jobs = 4;
        cfg.sandbox_paths = [
            "/bin=/usr/bin",
            "/usr",
            "/lib=/usr/lib",
            "/lib64=/usr/lib64?",
        ]
        .iter()
        .map(|p| crate::args::parse_sandbox_path(p).unwrap())
        .collect();
        let builds = Builds::new(&cfg, &tmp.path().join("state"));
        Some((tmp, builds))
    }

    fn shell_build(id: u64, script: &str, timeout_secs: u64) -> BuildRequest {
        let mut req = request("/nix/store");
        req.build = BuildId(id);
        req.builder = "/bin/sh".into();
        req.args = vec!["-c".into(), script.into()];
        req.env.insert("out".into(), format!("/nix/store/{OUT}"));
        req.env.insert("PATH".into(), "/bin".into());
        req.timeout_secs = timeout_secs;
        req
    }

    fn started_uid(reply: &BrokerToFrontend) -> u32 {
        match reply {
            BrokerToFrontend::BuildStarted { build_uid, .. } => *build_uid,
            other => panic!("{other:?}"),
        }
    }

    /// Timeout and cancel kill the whole build, background processes included; failures
    /// cannot be collected; release deletes the directory.
    #[test]
    fn timeouts_and_cancels_leave_no_process_behind() {
        let Some((tmp, mut builds)) = real_setup("timeouts_and_cancels_leave_no_process_behind")
        else {
            return;
        };
        // Times out; a background sleep (its own session) must not survive.
        let (reply, _log) = builds.start(&shell_build(1, "setsid sleep 1000 & sleep 1000", 1));
        let uid1 = started_uid(&reply);
        // Cancelled.
        let (reply, _log2) = builds.start(&shell_build(2, "sleep 1000 & sleep 1000", 0));
        let uid2 = started_uid(&reply);
        assert_ne!(uid1, uid2, "one build per uid");
        // Fails.
        let (reply, _log3) = builds.start(&shell_build(3, "exit 3", 0));
        started_uid(&reply);
        std::thread::sleep(Duration::from_millis(300));
        match builds.cancel(BuildId(2), CancelReason::MaxSilentTime) {
            BrokerToFrontend::BuildFinished { outcome, build, .. } => {
                assert_eq!(build, BuildId(2));
                assert_eq!(
                    outcome,
                    BuildOutcome::Cancelled {
                        reason: CancelReason::MaxSilentTime
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::pool::live_processes_of(uid2).unwrap(), 0);
        // A cancelled build is no longer running: a second cancel is refused.
        assert!(matches!(
            builds.cancel(BuildId(2), CancelReason::Client),
            BrokerToFrontend::Error(BrokerError::UnknownBuild { .. })
        ));
        let mut finished = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while finished.len() < 2 && Instant::now() < deadline {
            if let Some(at) = builds.next_deadline() {
                if at <= Instant::now() {
                    finished.extend(builds.expire(Instant::now()));
                }
            }
            let pids: Vec<Pid> = builds.table.values().filter_map(|b| b.pid).collect();
            for pid in pids {
                if let Ok(Some(r)) = sys::wait4(pid.as_raw(), false) {
                    finished.extend(builds.reaped(r));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let outcome = |id: u64| {
            finished.iter().find_map(|f| match f {
                BrokerToFrontend::BuildFinished { build, outcome, .. } if build.0 == id => {
                    Some(outcome.clone())
                }
                _ => None,
            })
        };
        assert_eq!(outcome(1), Some(BuildOutcome::TimedOut));
        assert_eq!(outcome(3), Some(BuildOutcome::Exited { code: 3 }));
        assert_eq!(crate::pool::live_processes_of(uid1).unwrap(), 0);
        assert!(matches!(
            builds.collect(BuildId(3)).0,
            BrokerToFrontend::Error(BrokerError::WrongBuildState { .. })
        ));
        for id in [1, 2, 3] {
            assert_eq!(
                builds.release(BuildId(id), false),
                BrokerToFrontend::BuildReleased {
                    build: BuildId(id),
                    kept_at: None
                }
            );
        }
        let left = std::fs::read_dir(tmp.path().join("state/ward-broker/builds"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
        // Shutting down with a running build: it is cancelled and reported.
        let (reply, _log4) = builds.start(&shell_build(4, "sleep 1000", 0));
        started_uid(&reply);
        let all = builds.cancel_all();
        assert!(matches!(
            &all[..],
            [BrokerToFrontend::BuildFinished {
                outcome: BuildOutcome::Cancelled {
                    reason: CancelReason::Client
                },
                ..
            }]
        ));
        builds.abandon_all();
        let left = std::fs::read_dir(tmp.path().join("state/ward-broker/builds"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }
}
