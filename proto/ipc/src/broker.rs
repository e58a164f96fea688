//! Frontend ⇄ broker: the broker's entire attack surface.
//!
//! The broker runs as root. [`FrontendToBroker`] is every request it will act on; a change to
//! it is a security review by definition. The frontend is unprivileged and must be assumed
//! compromised: nothing here lets it name a uid, a host path, a mount, a seccomp program, a
//! capability or a command to run as root.
//!
//! What the frontend *does* choose, and why that is harmless:
//! * the builder program, its arguments and environment — they run as a build user inside the
//!   sandbox, which is what the derivation asks for anyway;
//! * the store paths visible in the sandbox — [`StorePath`] is a base name that cannot contain
//!   `/`, so it cannot leave the store directory, and the broker bind-mounts each one
//!   read-only only after checking it exists there as a real file, directory or symlink;
//! * network access for fixed-output builds — the frontend could fetch the same data itself;
//!   the build still runs as a build user in its own namespaces;
//! * which store paths a `post-build-hook` is told about — the program, its user and the rest
//!   of its environment are the broker's.
//!
//! The broker picks, from its own configuration: the build user, the build directory, the
//! sandbox paths (`sandbox-paths`), the seccomp and landlock policy, the store directory, and
//! the limits on concurrent builds.
//!
//! Channel protocol:
//! * [`Phase::Handshake`]: the frontend sends [`FrontendToBroker::Hello`], once. The broker
//!   answers [`BrokerToFrontend::Hello`].
//! * [`Phase::Serving`]: builds are started, queried and cancelled. **Every request gets
//!   exactly one reply, in request order**; replies and errors about a build carry its
//!   [`BuildId`]. The only unasked messages are [`BrokerToFrontend::BuildFinished`] (when a
//!   build ends by itself or by its timeout), [`BrokerToFrontend::PostBuildHookFinished`] and
//!   [`BrokerToFrontend::StoreWriterRestarted`]; they may come between the replies.
//!   `CancelBuild`'s reply *is* the build's `BuildFinished` (no second one follows), and
//!   likewise for `CancelPostBuildHook`; `ShuttingDown` is answered by one `BuildFinished`
//!   per running build, then `Drained`.
//! * [`Phase::Draining`]: after [`FrontendToBroker::ShuttingDown`]; only status requests.
//! * A request outside its phase, a frame error or a wrong descriptor count is a protocol
//!   violation: the broker logs it with the frontend's pid and uid, kills the builds started
//!   on this channel and closes it. The broker never tries to recover from a misbehaving
//!   frontend.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{BuildId, IpcMessage, Phase};
use crate::store_path::{check_name, StorePath};

/// Longest builder path the broker accepts (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest single argument or environment entry: Linux's `MAX_ARG_STRLEN` (32 pages), beyond
/// which `execve` fails anyway.
pub const MAX_EXEC_STRING_LEN: usize = 128 * 1024;

/// A file the builder writes into the build directory before starting the build
/// (`passAsFile` attributes, `.attrs.json`, `.attrs.sh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDirFile {
    /// A single path component: no `/`, not `.` or `..`, no NUL, at most 255 bytes.
    pub name: String,
    /// The file's contents.
    pub contents: Vec<u8>,
}

/// Everything the broker needs to start one build. Produced by the frontend from a derivation
/// it parsed and validated; the broker re-checks what [`BuildRequest::check`] lists and, on
/// the file system, what [`FrontendToBroker::StartBuild`] lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// Chosen by the frontend; must not be running already on this channel.
    pub build: BuildId,
    /// The derivation, for logs, the process title and the build directory's name.
    pub drv_path: StorePath,
    /// The derivation's `system`; must be one the broker's configuration can build.
    pub system: String,
    /// Absolute path of the program to exec inside the sandbox.
    pub builder: String,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// The complete environment of the builder.
    pub env: BTreeMap<String, String>,
    /// The input closure: every store path made visible (read-only) in the sandbox.
    pub input_paths: BTreeSet<StorePath>,
    /// Output name → the store path the builder must create (for floating content-addressed
    /// outputs, a scratch path).
    pub outputs: BTreeMap<String, StorePath>,
    /// A fixed-output derivation: it gets the host's network.
    pub fixed_output: bool,
    /// Files to place in the build directory before the build starts.
    pub build_dir_files: Vec<BuildDirFile>,
    /// Kill the build after this many seconds in total; 0 means no limit.
    pub timeout_secs: u64,
    /// The derivation asks to run without a chroot (`__noChroot`). The broker grants it only
    /// when its own `sandbox` setting is `relaxed`; with `sandbox = true` it refuses the build
    /// ([`BrokerError::SandboxRefused`]), with `sandbox = false` nothing is chrooted anyway.
    pub no_chroot: bool,
    /// The uid of the client that asked for the build: the only user besides root who may
    /// read a build directory kept by `keep-failed` ([`FrontendToBroker::ReleaseBuild`]). Grants
    /// nothing else; the broker refuses a build user's uid here.
    pub requester_uid: u32,
}

impl BuildRequest {
    /// The checks on values alone that the broker applies before touching anything: text that
    /// reaches `execve` or the file system has no NUL byte and bounded length, environment
    /// names have no `=`, paths are absolute and normalised, output names follow the store
    /// path name rules, the outputs are distinct and disjoint from the inputs, and build
    /// directory file names are single distinct components.
    pub fn check(&self) -> Result<(), BrokerError> {
        let bad = |field: &str, reason: String| BrokerError::BadRequest {
            build: self.build,
            field: field.to_owned(),
            reason,
        };
        if self.system.is_empty()
            || self.system.len() > 64
            || !self
                .system
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            return Err(bad(
                "system",
                format!("'{}' is not a system name", self.system),
            ));
        }
        check_absolute_path(&self.builder).map_err(|reason| bad("builder", reason))?;
        for arg in &self.args {
            check_exec_string(arg).map_err(|reason| bad("args", reason))?;
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(bad(
                    "env",
                    format!("variable name '{name}' is empty or has '='"),
                ));
            }
            check_exec_string(name).map_err(|reason| bad("env", reason))?;
            check_exec_string(value)
                .map_err(|reason| bad("env", format!("variable '{name}': {reason}")))?;
        }
        if self.outputs.is_empty() {
            return Err(bad("outputs", "a build needs at least one output".into()));
        }
        let mut seen = BTreeSet::new();
        for (name, path) in &self.outputs {
            check_name(name).map_err(|e| bad("outputs", e.to_string()))?;
            if !seen.insert(path) {
                return Err(bad("outputs", format!("'{path}' is named by two outputs")));
            }
            if self.input_paths.contains(path) {
                return Err(bad("outputs", format!("output '{path}' is also an input")));
            }
        }
        let mut names = BTreeSet::new();
        for file in &self.build_dir_files {
            let name = &file.name;
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.len() > 255
                || name.contains('/')
                || name.contains('\0')
            {
                return Err(bad(
                    "build_dir_files",
                    format!("'{name}' is not a file name"),
                ));
            }
            if !names.insert(name) {
                return Err(bad("build_dir_files", format!("'{name}' is given twice")));
            }
        }
        Ok(())
    }
}

/// A string that will reach `execve`: no NUL, bounded.
fn check_exec_string(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if s.len() > MAX_EXEC_STRING_LEN {
        return Err(format!(
            "is {} bytes long, more than {MAX_EXEC_STRING_LEN}",
            s.len()
        ));
    }
    Ok(())
}

/// An absolute, normalised path: starts with `/`, no empty, `.` or `..` component, no NUL.
pub fn check_absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' is not an absolute path"));
    }
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(format!(
            "'{}' is too long or contains a NUL byte",
            path.escape_debug()
        ));
    }
    if path.len() > 1
        && path[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "'{path}' is not normalised (empty, '.' or '..' component)"
        ));
    }
    Ok(())
}

/// Why the frontend cancels a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// The client asked, or went away.
    Client,
    /// No log output for `max-silent-time` (the frontend reads the log pipe, so it keeps this
    /// timer).
    MaxSilentTime,
    /// Another build of the same goal failed and `keep-going` is off.
    DependencyFailed,
}

/// Requests from the frontend to the broker. **Only the frontend sends these.** The builder
/// and the store-writer have no channel on which they could.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendToBroker {
    /// Sent by: the frontend. Phase: handshake, first frame, once.
    /// Re-checks: `ipc_version` equals [`super::IPC_VERSION`]; otherwise the broker replies
    /// with [`BrokerError::VersionMismatch`] and closes the channel.
    /// Root does: nothing. Reply: [`BrokerToFrontend::Hello`].
    Hello {
        /// The frontend's [`super::IPC_VERSION`].
        ipc_version: u32,
    },
    /// Sent by: the frontend, when a client's build (or a build on behalf of a substitution
    /// that needs one) is ready to run. Phase: serving.
    ///
    /// Re-checks, in order, before anything is created: [`BuildRequest::check`]; the build id
    /// is not running; fewer than the configured maximum of builds run; `system` is one the
    /// broker can build; every input path exists directly in the physical store directory
    /// (`lstat`, no following of symlinks out of it; `drv_path` need not exist: BuildDerivation
    /// builds a derivation sent whole, and it names only logs and the build directory); no output path exists yet
    /// unless it is a leftover the broker may delete (not a valid path — the broker asks
    /// nobody and deletes nothing that is a valid path; it refuses instead); `builder` is
    /// inside an input path or one of the configured sandbox paths (with a chroot; without
    /// one it is a host path).
    ///
    /// Root does: takes a free build user from the pool; creates a fresh build directory owned
    /// by it under the configured build root; creates the build's cgroup where the host allows
    /// (a child of the broker's own, named by the broker, killed through `cgroup.kill` when the
    /// builder ends and removed with the build); creates the log pipe; fork+execs the builder
    /// program (joined to that cgroup before it drops root) with a
    /// [`super::BrokerToBuilder::Spec`] built from this request plus the broker's own
    /// configuration; starts the timeout.
    ///
    /// Why root is OK: the only privileged effects are allocating a uid from a fixed pool and
    /// creating a directory under a fixed root; everything the frontend chose runs as that
    /// uid inside namespaces.
    ///
    /// Reply: [`BrokerToFrontend::BuildStarted`] with the log pipe's read end, later
    /// [`BrokerToFrontend::BuildFinished`]; or [`BrokerToFrontend::Error`].
    StartBuild(Box<BuildRequest>),
    /// Sent by: the frontend. Phase: serving or draining.
    /// Re-checks: `build` was started on this channel and still runs.
    /// Root does: SIGKILLs the builder process (the build's pid 1 dies with it, and its pid
    /// namespace with that), reaps it, and kills whatever still runs as the build user. The
    /// build user and the build directory stay reserved until `ReleaseBuild`.
    /// Why root is OK: it only kills processes of a build this channel started.
    /// Reply: [`BrokerToFrontend::BuildFinished`] with [`BuildOutcome::Cancelled`] — this is
    /// the build's only `BuildFinished`, no unasked one follows — or
    /// [`BrokerToFrontend::Error`] with [`BrokerError::UnknownBuild`] (also for a build that has
    /// already finished).
    CancelBuild {
        /// The build.
        build: BuildId,
        /// Why, for the log and the outcome.
        reason: CancelReason,
    },
    /// Sent by: the frontend, after [`BrokerToFrontend::BuildFinished`] with
    /// `Exited { code: 0 }`. Phase: serving.
    ///
    /// Re-checks: `build` was started on this channel, has finished with exit code 0, and its
    /// outputs have not been collected yet (a refused or failed collection counts: there is
    /// one attempt per build); no process of the build user is left (the broker checked when
    /// the build ended). The broker waits at most 60 s for the collector's verdict.
    ///
    /// Root does: fork+execs `ward-builder collect` **as the build user** (never as root), with
    /// the build's directory handle and one pipe per output. The collector walks each output
    /// through directory handles (`O_NOFOLLOW`), refuses what cannot be registered (devices,
    /// FIFOs, sockets, foreign owners, group- or world-writable entries, hard links to files
    /// outside the output), tells the broker its verdict, then serialises each output as a NAR
    /// into its pipe. The broker waits only for the verdict.
    ///
    /// Why root is OK: root reads nothing of the outputs; the collector runs as the uid that
    /// wrote them, and the store-writer re-parses and re-hashes every byte.
    ///
    /// Reply: [`BrokerToFrontend::OutputsCollected`] with the pipes' read ends, or
    /// [`BrokerToFrontend::Error`] ([`BrokerError::OutputRefused`] names the output and why).
    CollectOutputs {
        /// The build.
        build: BuildId,
    },
    /// Sent by: the frontend, when it is done with a finished build (outputs registered, or
    /// the build failed). Phase: serving or draining.
    ///
    /// Re-checks: `build` was started on this channel and has finished; a collector still
    /// running is killed first.
    ///
    /// Root does: first kills whatever still runs as the build user (nothing may change the
    /// tree while root walks it). With `keep_failed`, it hands the tree to the build's
    /// `requester_uid` while it is still inside the root-only builds directory: entries are
    /// changed through directory handles with `AT_SYMLINK_NOFOLLOW`, only those owned by the
    /// build user and, for non-directories, with one link (attack A2); then it moves the
    /// directory (a rename, never a copy) to `<state>/ward-broker/kept/<uid>/<name>`, where
    /// `kept/<uid>` is 0700 and owned by that user (an existing entry that is not a directory
    /// owned by that user is refused), `kept/` by root. Otherwise it deletes the build
    /// directory through directory handles (never following a symlink). Then it returns the
    /// user to the pool.
    ///
    /// Why root is OK: the tree can only be given to the uid the frontend named for the
    /// build, its links are never followed, and nothing of the build runs any more.
    ///
    /// Reply: [`BrokerToFrontend::BuildReleased`], or [`BrokerToFrontend::Error`].
    ReleaseBuild {
        /// The build.
        build: BuildId,
        /// Keep the build directory for the requesting user (`keep-failed`).
        keep_failed: bool,
    },
    /// Sent by: the frontend. Phase: serving or draining.
    /// Re-checks: `build` was started on this channel and still runs.
    /// Root does: reads its own bookkeeping. Reply: [`BrokerToFrontend::BuildStatus`] or
    /// [`BrokerToFrontend::Error`] with [`BrokerError::UnknownBuild`].
    QueryBuild {
        /// The build.
        build: BuildId,
    },
    /// Sent by: the frontend, when it stops or restarts (SIGTERM, upgrade). Phase: serving,
    /// once; the channel then enters the draining phase, where `StartBuild` is refused.
    /// Re-checks: nothing. Root does: cancels every build started on this channel (nobody
    /// would register their outputs) and reports each with `BuildFinished`, then
    /// [`BrokerToFrontend::Drained`]. Why root is OK: as `CancelBuild`, for all of them.
    ShuttingDown,
    /// Sent by: the frontend, after it accepted a client connection from `uid` (Nix ≤ 2.13
    /// clients need these directories for `nix-env`). Phase: serving.
    ///
    /// Re-checks: `uid` is not 0 and names a user in the user database; the user's name (from
    /// that database, never from the frontend) is a single path component of at most 255
    /// bytes, not `.` or `..`.
    ///
    /// Root does: under the state directory, opens `profiles/per-user` and `gcroots/per-user`
    /// one component at a time with `O_NOFOLLOW | O_DIRECTORY` (a symlink anywhere fails the
    /// request), creates `<name>` in each with mode 0755 if missing and `fchown`s the new
    /// directory (through its descriptor) to `uid` and the broker's gid. An existing entry is
    /// left alone: accepted if it is a directory owned by `uid`, reported otherwise (never
    /// re-chowned).
    ///
    /// Why root is OK: the only effect is an empty directory owned by the very user the kernel
    /// said is connected, at a place derived from the state directory and the user database;
    /// a lying frontend can at most create an empty directory for another existing user, which
    /// grants nobody anything (attack A1: the directory can never end up owned by someone
    /// else than its user).
    ///
    /// Reply: [`BrokerToFrontend::UserDirsReady`] or [`BrokerToFrontend::Error`] with
    /// [`BrokerError::UserDirs`].
    CreateUserDirs {
        /// The connected client's uid (from SO_PEERCRED).
        uid: u32,
    },
    /// Sent by: the frontend, for a client's FindRoots (`nix-store --gc --print-roots`).
    /// Phase: serving.
    ///
    /// Re-checks: nothing (no fields). Root does: starts `ward-gc-roots` (its path from the
    /// broker's command line) with the state and store directories from its own
    /// configuration and its stdout a new pipe; at most [`MAX_ROOT_FINDERS`] run at once.
    /// The helper drops to `nobody` with only `CAP_DAC_READ_SEARCH` and `CAP_SYS_PTRACE`
    /// and no_new_privs before it reads anything, walks `gcroots/` and `profiles/` without
    /// following a symlink it walks, reads `/proc`, and writes records naming the links and
    /// the store paths in use; it writes nothing else.
    ///
    /// Why root is OK: the answer reveals which store paths running processes use and where
    /// users' root links are (the frontend shows runtime roots only to trusted clients, as
    /// Nix does); nothing is changed, and the helper cannot write or exec.
    ///
    /// Reply: [`BrokerToFrontend::RootsPipe`] or [`BrokerToFrontend::Error`] with
    /// [`BrokerError::Roots`].
    FindRoots,
    /// Sent by: the frontend, after the outputs of a build it ran were registered, when the
    /// daemon's `post-build-hook` is set. Phase: serving.
    ///
    /// Re-checks: the broker has a `post-build-hook` of its own (from its command line, i.e.
    /// the admin's nix.conf — the frontend names no program); `build` has no hook running on
    /// this channel; at most [`MAX_HOOK_OUTPUTS`] output paths; fewer hooks run than the
    /// broker allows. At each run, on the program file itself (`stat`, following links):
    /// it is not writable by group or others, and its owner decides the user it runs as —
    /// a non-root owner that is not a build user runs it as that owner; a root-owned program
    /// runs as the broker's `--hook-user`, and without one it is refused. A program owned by
    /// a user other than root or `--hook-user`, or by a build user, is refused. The broker
    /// never runs a hook as root.
    ///
    /// Root does: fork+execs the program as that user (its groups from the user database, no
    /// capabilities, no_new_privs, its own session, cwd `/`), stdin `/dev/null`, stdout and
    /// stderr one new pipe, with an environment the broker builds: `DRV_PATH` and `OUT_PATHS`
    /// (full paths, space-separated, as Nix sets them), `HOME`, `USER`, `LOGNAME` of that
    /// user, `NIX_REMOTE` naming the daemon's socket (unless the broker's environment sets
    /// it), and from the broker's environment only `PATH`, locale, time zone, proxy, TLS
    /// and `NIX_*` variables.
    ///
    /// Why root is OK: the program and the user are the admin's choice (the program's owner
    /// could run it as themselves anyway); the frontend chooses only which store paths are
    /// named in two variables, and store paths are world-readable. Why in the broker: only
    /// root can start a program as another user; the frontend may not exec at all, and a
    /// child of the store-writer would run as the store's owner.
    ///
    /// Reply: [`BrokerToFrontend::PostBuildHookStarted`] with the output pipe's read end, later
    /// [`BrokerToFrontend::PostBuildHookFinished`]; or [`BrokerToFrontend::Error`] with
    /// [`BrokerError::PostBuildHook`].
    RunPostBuildHook {
        /// The build the hook is for (its id names the hook until it finishes).
        build: BuildId,
        /// The derivation that was built.
        drv_path: StorePath,
        /// Its output paths.
        out_paths: BTreeSet<StorePath>,
    },
    /// Sent by: the frontend, when nobody waits for a build whose hook still runs any more.
    /// Phase: serving or draining. Re-checks: a hook for `build` runs on this channel.
    /// Root does: SIGKILLs the hook's process group and reaps the hook. Why root is OK: it
    /// only kills a hook this channel started.
    /// Reply: [`BrokerToFrontend::PostBuildHookFinished`] — the hook's only one — or
    /// [`BrokerToFrontend::Error`] with [`BrokerError::UnknownBuild`] when it has already ended.
    CancelPostBuildHook {
        /// The build whose hook to stop.
        build: BuildId,
    },
    /// Sent by: the frontend. Phase: serving or draining. Health check; root does nothing.
    /// Reply: [`BrokerToFrontend::Pong`].
    Ping,
    /// Sent by: the frontend, when it accepts clients: once after it started and again after
    /// each re-read of nix.conf (SIGHUP). Phase: serving.
    ///
    /// Re-checks: nothing (it carries no data). Root does: tells the service manager (systemd's
    /// `NOTIFY_SOCKET`, when set) `READY=1` and a status line of the broker's own wording; no
    /// text from the frontend reaches the service manager, whose protocol is line-based.
    /// Reply: [`BrokerToFrontend::Pong`].
    Serving,
}

/// Most output paths one `RunPostBuildHook` may name.
pub const MAX_HOOK_OUTPUTS: usize = 1024;

/// Most `ward-gc-roots` helpers running at once (for both channels together).
pub const MAX_ROOT_FINDERS: usize = 4;

impl FrontendToBroker {
    /// Whether this request is accepted in `phase`. The broker checks it before dispatch.
    pub fn permitted_in(&self, phase: Phase) -> bool {
        match self {
            FrontendToBroker::Hello { .. } => phase == Phase::Handshake,
            FrontendToBroker::StartBuild(_)
            | FrontendToBroker::CollectOutputs { .. }
            | FrontendToBroker::ShuttingDown
            | FrontendToBroker::CreateUserDirs { .. }
            | FrontendToBroker::FindRoots
            | FrontendToBroker::RunPostBuildHook { .. }
            | FrontendToBroker::Serving => phase == Phase::Serving,
            FrontendToBroker::CancelBuild { .. }
            | FrontendToBroker::CancelPostBuildHook { .. }
            | FrontendToBroker::ReleaseBuild { .. }
            | FrontendToBroker::QueryBuild { .. }
            | FrontendToBroker::Ping => matches!(phase, Phase::Serving | Phase::Draining),
        }
    }
}

impl IpcMessage for FrontendToBroker {
    const NAME: &'static str = "FrontendToBroker";
    const TAG: [u8; 4] = *b"F>BR";

    /// The frontend never passes descriptors to root.
    fn fd_count(&self) -> usize {
        0
    }

    fn variant_name(&self) -> &'static str {
        match self {
            FrontendToBroker::Hello { .. } => "Hello",
            FrontendToBroker::StartBuild(_) => "StartBuild",
            FrontendToBroker::CancelBuild { .. } => "CancelBuild",
            FrontendToBroker::CollectOutputs { .. } => "CollectOutputs",
            FrontendToBroker::ReleaseBuild { .. } => "ReleaseBuild",
            FrontendToBroker::QueryBuild { .. } => "QueryBuild",
            FrontendToBroker::ShuttingDown => "ShuttingDown",
            FrontendToBroker::CreateUserDirs { .. } => "CreateUserDirs",
            FrontendToBroker::FindRoots => "FindRoots",
            FrontendToBroker::RunPostBuildHook { .. } => "RunPostBuildHook",
            FrontendToBroker::CancelPostBuildHook { .. } => "CancelPostBuildHook",
            FrontendToBroker::Ping => "Ping",
            FrontendToBroker::Serving => "Serving",
        }
    }
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildOutcome {
    /// The builder exited with this status (0 = success; outputs still need registering).
    Exited {
        /// The exit status.
        code: i32,
    },
    /// The builder was killed by this signal.
    Signalled {
        /// The signal number.
        signal: i32,
    },
    /// The broker killed it after `timeout_secs`.
    TimedOut,
    /// The frontend cancelled it.
    Cancelled {
        /// The reason the frontend gave.
        reason: CancelReason,
    },
    /// The sandbox could not be set up; the derivation's builder never ran.
    SetupFailed {
        /// The step that failed.
        step: super::builder::SetupStep,
        /// The error, e.g. the OS error of the failing call.
        message: String,
    },
}

/// When a build ran and what it cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTimings {
    /// Unix seconds when the builder was started.
    pub start_time: u64,
    /// Unix seconds when the last process of the build was gone.
    pub stop_time: u64,
    /// User CPU time of the whole process tree, in microseconds.
    pub cpu_user_micros: u64,
    /// System CPU time of the whole process tree, in microseconds.
    pub cpu_system_micros: u64,
}

/// Replies and notices from the broker to the frontend. Sent by the broker only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerToFrontend {
    /// Answer to `Hello`: the broker's [`super::IPC_VERSION`].
    Hello {
        /// The broker's version.
        ipc_version: u32,
    },
    /// Answer to `StartBuild`: the builder runs. Carries one descriptor: the read end of the
    /// build's log pipe (builder stdout and stderr), which the frontend forwards and stores.
    BuildStarted {
        /// The build.
        build: BuildId,
        /// The uid the build runs as, for logs.
        build_uid: u32,
    },
    /// Sent unasked when a build ends by itself or by its timeout; the reply to `CancelBuild`
    /// (and one per running build before `Drained` after `ShuttingDown`). Sent once per build.
    BuildFinished {
        /// The build.
        build: BuildId,
        /// How it ended.
        outcome: BuildOutcome,
        /// Times and CPU use.
        timings: BuildTimings,
    },
    /// Answer to `CollectOutputs`. Carries one descriptor per output, in the order of
    /// `outputs`: the read end of a pipe yielding that output's NAR.
    OutputsCollected {
        /// The build.
        build: BuildId,
        /// Output names, in the order of the descriptors.
        outputs: Vec<String>,
    },
    /// Answer to `ReleaseBuild`.
    BuildReleased {
        /// The build.
        build: BuildId,
        /// Where the kept build directory is (with `keep_failed`), as a host path:
        /// `<state>/ward-broker/kept/<uid>/<name>/build`, the build's own directory (the
        /// sandbox's `root/` and `store/` are kept beside it).
        kept_at: Option<String>,
    },
    /// Answer to `QueryBuild` for a running build.
    BuildStatus {
        /// The build.
        build: BuildId,
        /// Seconds since it started.
        running_secs: u64,
    },
    /// Answer to `ShuttingDown`, after the last `BuildFinished` of this channel.
    Drained,
    /// Sent unasked when the broker restarted a crashed store-writer. Carries one descriptor:
    /// a socket to the new store-writer; the frontend replaces its old channel with it.
    StoreWriterRestarted,
    /// Answer to `Ping`.
    Pong,
    /// Answer to `CreateUserDirs`: both directories exist and belong to the user.
    UserDirsReady {
        /// The user's name, as the broker found it.
        user: String,
    },
    /// Answer to `FindRoots`. Carries one descriptor: the read end of the `ward-gc-roots`
    /// helper's output (records as `ward_proto::gc_roots` reads them), at end of file when
    /// the helper is done.
    RootsPipe,
    /// Answer to `RunPostBuildHook`: the hook runs. Carries one descriptor: the read end of
    /// the hook's stdout and stderr.
    PostBuildHookStarted {
        /// The build the hook is for.
        build: BuildId,
        /// The user it runs as, for the log.
        user: String,
    },
    /// Sent unasked when a hook exits; the reply to `CancelPostBuildHook`. Once per hook.
    PostBuildHookFinished {
        /// The build the hook was for.
        build: BuildId,
        /// How it ended (`Exited`, `Signalled` or `Cancelled`).
        outcome: BuildOutcome,
    },
    /// A request was refused or failed.
    Error(BrokerError),
}

impl IpcMessage for BrokerToFrontend {
    const NAME: &'static str = "BrokerToFrontend";
    const TAG: [u8; 4] = *b"BR>F";

    fn fd_count(&self) -> usize {
        match self {
            BrokerToFrontend::BuildStarted { .. }
            | BrokerToFrontend::StoreWriterRestarted
            | BrokerToFrontend::RootsPipe
            | BrokerToFrontend::PostBuildHookStarted { .. } => 1,
            BrokerToFrontend::OutputsCollected { outputs, .. } => outputs.len(),
            BrokerToFrontend::BuildReleased { .. }
            | BrokerToFrontend::Hello { .. }
            | BrokerToFrontend::BuildFinished { .. }
            | BrokerToFrontend::BuildStatus { .. }
            | BrokerToFrontend::Drained
            | BrokerToFrontend::Pong
            | BrokerToFrontend::UserDirsReady { .. }
            | BrokerToFrontend::PostBuildHookFinished { .. }
            | BrokerToFrontend::Error(_) => 0,
        }
    }

    fn variant_name(&self) -> &'static str {
        match self {
            BrokerToFrontend::Hello { .. } => "Hello",
            BrokerToFrontend::BuildStarted { .. } => "BuildStarted",
            BrokerToFrontend::BuildFinished { .. } => "BuildFinished",
            BrokerToFrontend::BuildStatus { .. } => "BuildStatus",
            BrokerToFrontend::OutputsCollected { .. } => "OutputsCollected",
            BrokerToFrontend::BuildReleased { .. } => "BuildReleased",
            BrokerToFrontend::Drained => "Drained",
            BrokerToFrontend::StoreWriterRestarted => "StoreWriterRestarted",
            BrokerToFrontend::Pong => "Pong",
            BrokerToFrontend::UserDirsReady { .. } => "UserDirsReady",
            BrokerToFrontend::RootsPipe => "RootsPipe",
            BrokerToFrontend::PostBuildHookStarted { .. } => "PostBuildHookStarted",
            BrokerToFrontend::PostBuildHookFinished { .. } => "PostBuildHookFinished",
            BrokerToFrontend::Error(_) => "Error",
        }
    }
}

/// Why the broker refused or failed a request. Each variant names the build and the value at
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BrokerError {
    /// The frontend speaks another IPC version.
    #[error("broker speaks ipc version {ours}, frontend sent {theirs}")]
    VersionMismatch {
        /// The broker's version.
        ours: u32,
        /// The version received.
        theirs: u32,
    },
    /// A request outside its phase (the channel is closed after this reply).
    #[error("request {request} is not permitted in the {phase} phase")]
    NotPermitted {
        /// The variant name.
        request: String,
        /// The channel's phase.
        phase: Phase,
    },
    /// A field failed [`BuildRequest::check`].
    #[error("{build}: invalid {field}: {reason}")]
    BadRequest {
        /// The build.
        build: BuildId,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `StartBuild` with the id of a running build.
    #[error("{build} is already running")]
    DuplicateBuild {
        /// The build.
        build: BuildId,
    },
    /// A build this channel did not start, or that has finished.
    #[error("{build} is not running")]
    UnknownBuild {
        /// The build.
        build: BuildId,
    },
    /// The derivation's system is not one the broker can build.
    #[error("{build}: cannot build for system '{system}' on this machine")]
    UnsupportedSystem {
        /// The build.
        build: BuildId,
        /// The system asked for.
        system: String,
    },
    /// An input path (or the derivation) is not in the store directory.
    #[error("{build}: input '{path}' does not exist in the store")]
    MissingInput {
        /// The build.
        build: BuildId,
        /// The path.
        path: StorePath,
    },
    /// An output path exists and is not a leftover the broker may remove.
    #[error("{build}: output path '{path}' already exists")]
    OutputExists {
        /// The build.
        build: BuildId,
        /// The path.
        path: StorePath,
    },
    /// The builder program is neither in the input closure nor in a sandbox path.
    #[error("{build}: builder '{builder}' is not in the input closure or the sandbox paths")]
    BuilderNotAvailable {
        /// The build.
        build: BuildId,
        /// The builder as given.
        builder: String,
    },
    /// Too many builds already run.
    #[error("{build}: {max} builds are already running")]
    TooManyBuilds {
        /// The build.
        build: BuildId,
        /// The configured maximum.
        max: u32,
    },
    /// Every build user is busy.
    #[error("{build}: all build users are currently in use")]
    NoBuildUser {
        /// The build.
        build: BuildId,
    },
    /// Starting the build failed before the builder program ran (fork, directory, pipe).
    #[error("{build}: {operation} failed: {message}")]
    StartFailed {
        /// The build.
        build: BuildId,
        /// What the broker was doing.
        operation: String,
        /// The OS error.
        message: String,
    },
    /// The collector refused an output (or could not read it).
    #[error("{build}: output '{output}' cannot be registered: {reason}")]
    OutputRefused {
        /// The build.
        build: BuildId,
        /// The output's store path base name.
        output: String,
        /// What is wrong, naming the file inside the output.
        reason: String,
    },
    /// `CollectOutputs` or `ReleaseBuild` for a build that has not finished (or that did not
    /// exit with 0, or whose outputs were already collected).
    #[error("{build}: {reason}")]
    WrongBuildState {
        /// The build.
        build: BuildId,
        /// What state it is in.
        reason: String,
    },
    /// The sandbox the configuration asks for cannot be had, or the derivation asks for less
    /// than the configuration allows (`__noChroot` with `sandbox = true`).
    #[error("{build}: {reason}")]
    SandboxRefused {
        /// The build.
        build: BuildId,
        /// Which part is missing or refused, naming the setting.
        reason: String,
    },
    /// `CreateUserDirs` was refused or failed.
    #[error("per-user directories for uid {uid}: {reason}")]
    UserDirs {
        /// The uid asked for.
        uid: u32,
        /// What went wrong, naming the path.
        reason: String,
    },
    /// `FindRoots` could not start the roots helper.
    #[error("cannot list the garbage collector's roots: {reason}")]
    Roots {
        /// Why, naming the helper or the limit.
        reason: String,
    },
    /// `RunPostBuildHook` was refused or could not start the hook.
    #[error("{reason}")]
    PostBuildHook {
        /// The build the hook was for.
        build: BuildId,
        /// Why, naming the program, its owner or the setting at fault.
        reason: String,
    },
}

/// Requests from the store-writer to the broker, on the channel the broker gives it at start
/// (`--broker-fd`). Sent by: the store-writer only. The store-writer is less privileged than
/// the broker and is assumed compromised like the frontend; nothing here names a path, a uid
/// or a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreWriterToBroker {
    /// First frame, once. Re-checks: `ipc_version` equals [`super::IPC_VERSION`], else the
    /// channel is closed after an error reply. Reply: [`BrokerToStoreWriter::Hello`].
    Hello {
        /// The store-writer's version.
        ipc_version: u32,
    },
    /// Serving phase: the roots for a garbage collection (permanent, indirect and runtime).
    /// Root does exactly what [`FrontendToBroker::FindRoots`] does. Why root is OK: the
    /// store-writer deletes only what these roots, its own temporary roots and the database
    /// leave dead; a helper that cannot run fails the collection instead of emptying it.
    /// Reply: [`BrokerToStoreWriter::RootsPipe`] or [`BrokerToStoreWriter::Error`].
    FindRoots,
}

impl StoreWriterToBroker {
    /// Whether this request is accepted in `phase`.
    pub fn permitted_in(&self, phase: Phase) -> bool {
        match self {
            StoreWriterToBroker::Hello { .. } => phase == Phase::Handshake,
            StoreWriterToBroker::FindRoots => phase == Phase::Serving,
        }
    }
}

impl IpcMessage for StoreWriterToBroker {
    const NAME: &'static str = "StoreWriterToBroker";
    const TAG: [u8; 4] = *b"W>BR";

    /// The store-writer never passes descriptors to root.
    fn fd_count(&self) -> usize {
        0
    }

    fn variant_name(&self) -> &'static str {
        match self {
            StoreWriterToBroker::Hello { .. } => "Hello",
            StoreWriterToBroker::FindRoots => "FindRoots",
        }
    }
}

/// Replies from the broker to the store-writer, one per request. Sent by the broker only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerToStoreWriter {
    /// Answer to `Hello`: the broker's [`super::IPC_VERSION`].
    Hello {
        /// The broker's version.
        ipc_version: u32,
    },
    /// Answer to `FindRoots`; one descriptor, as [`BrokerToFrontend::RootsPipe`].
    RootsPipe,
    /// A request was refused or failed.
    Error(BrokerError),
}

impl IpcMessage for BrokerToStoreWriter {
    const NAME: &'static str = "BrokerToStoreWriter";
    const TAG: [u8; 4] = *b"BR>W";

    fn fd_count(&self) -> usize {
        match self {
            BrokerToStoreWriter::RootsPipe => 1,
            BrokerToStoreWriter::Hello { .. } | BrokerToStoreWriter::Error(_) => 0,
        }
    }

    fn variant_name(&self) -> &'static str {
        match self {
            BrokerToStoreWriter::Hello { .. } => "Hello",
            BrokerToStoreWriter::RootsPipe => "RootsPipe",
            BrokerToStoreWriter::Error(_) => "Error",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::super::frame::{encode_frame, read_frame, FrameLimit};
    use super::super::{builder::SetupStep, Channel, IpcError, IPC_VERSION};
    use super::*;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    pub(crate) fn sample_build() -> BuildRequest {
        BuildRequest {
            build: BuildId(1),
            drv_path: path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
            system: "x86_64-linux".into(),
            builder: "/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-bash/bin/bash".into(),
            args: vec!["-e".into(), "builder.sh".into()],
            env: [
                ("out".to_string(), "/nix/store/x".to_string()),
                ("A".into(), String::new()),
            ]
            .into(),
            input_paths: [path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-bash")].into(),
            outputs: [(
                "out".to_string(),
                path("0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello"),
            )]
            .into(),
            fixed_output: false,
            build_dir_files: vec![BuildDirFile {
                name: ".attrs.json".into(),
                contents: b"{}".to_vec(),
            }],
            timeout_secs: 3600,
            no_chroot: false,
            requester_uid: 1000,
        }
    }

    fn all_requests() -> Vec<FrontendToBroker> {
        vec![
            FrontendToBroker::Hello {
                ipc_version: IPC_VERSION,
            },
            FrontendToBroker::StartBuild(Box::new(sample_build())),
            FrontendToBroker::CancelBuild {
                build: BuildId(1),
                reason: CancelReason::MaxSilentTime,
            },
            FrontendToBroker::QueryBuild { build: BuildId(1) },
            FrontendToBroker::CollectOutputs { build: BuildId(1) },
            FrontendToBroker::ReleaseBuild {
                build: BuildId(1),
                keep_failed: true,
            },
            FrontendToBroker::ShuttingDown,
            FrontendToBroker::CreateUserDirs { uid: 1000 },
            FrontendToBroker::FindRoots,
            FrontendToBroker::RunPostBuildHook {
                build: BuildId(1),
                drv_path: path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
                out_paths: [path("0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello")].into(),
            },
            FrontendToBroker::CancelPostBuildHook { build: BuildId(1) },
            FrontendToBroker::Ping,
        ]
    }

    fn all_replies() -> Vec<BrokerToFrontend> {
        let timings = BuildTimings {
            start_time: 1,
            stop_time: 2,
            cpu_user_micros: 3,
            cpu_system_micros: 4,
        };
        let b = BuildId(9);
        let mut replies = vec![
            BrokerToFrontend::Hello {
                ipc_version: IPC_VERSION,
            },
            BrokerToFrontend::BuildStarted {
                build: b,
                build_uid: 30001,
            },
            BrokerToFrontend::BuildStatus {
                build: b,
                running_secs: 12,
            },
            BrokerToFrontend::Drained,
            BrokerToFrontend::OutputsCollected {
                build: b,
                outputs: vec!["out".into(), "dev".into()],
            },
            BrokerToFrontend::BuildReleased {
                build: b,
                kept_at: Some("/nix/var/nix/ward/kept/1000/x".into()),
            },
            BrokerToFrontend::StoreWriterRestarted,
            BrokerToFrontend::Pong,
            BrokerToFrontend::UserDirsReady {
                user: "alice".into(),
            },
            BrokerToFrontend::Error(BrokerError::UserDirs {
                uid: 7,
                reason: "x".into(),
            }),
            BrokerToFrontend::RootsPipe,
            BrokerToFrontend::PostBuildHookStarted {
                build: b,
                user: "upload".into(),
            },
            BrokerToFrontend::PostBuildHookFinished {
                build: b,
                outcome: BuildOutcome::Exited { code: 1 },
            },
            BrokerToFrontend::Error(BrokerError::PostBuildHook {
                build: b,
                reason: "owned by root".into(),
            }),
        ];
        for outcome in [
            BuildOutcome::Exited { code: 0 },
            BuildOutcome::Signalled { signal: 9 },
            BuildOutcome::TimedOut,
            BuildOutcome::Cancelled {
                reason: CancelReason::Client,
            },
            BuildOutcome::Cancelled {
                reason: CancelReason::DependencyFailed,
            },
            BuildOutcome::SetupFailed {
                step: SetupStep::Seccomp,
                message: "EINVAL".into(),
            },
        ] {
            replies.push(BrokerToFrontend::BuildFinished {
                build: b,
                outcome,
                timings,
            });
        }
        let p = path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-bash");
        for error in [
            BrokerError::VersionMismatch { ours: 1, theirs: 0 },
            BrokerError::NotPermitted {
                request: "StartBuild".into(),
                phase: Phase::Draining,
            },
            BrokerError::BadRequest {
                build: b,
                field: "env".into(),
                reason: "NUL".into(),
            },
            BrokerError::DuplicateBuild { build: b },
            BrokerError::UnknownBuild { build: b },
            BrokerError::UnsupportedSystem {
                build: b,
                system: "mips-linux".into(),
            },
            BrokerError::MissingInput {
                build: b,
                path: p.clone(),
            },
            BrokerError::OutputExists { build: b, path: p },
            BrokerError::BuilderNotAvailable {
                build: b,
                builder: "/bin/sh".into(),
            },
            BrokerError::TooManyBuilds { build: b, max: 4 },
            BrokerError::NoBuildUser { build: b },
            BrokerError::OutputRefused {
                build: b,
                output: "x-out".into(),
                reason: "a FIFO".into(),
            },
            BrokerError::WrongBuildState {
                build: b,
                reason: "still running".into(),
            },
            BrokerError::SandboxRefused {
                build: b,
                reason: "no user namespaces".into(),
            },
            BrokerError::StartFailed {
                build: b,
                operation: "fork".into(),
                message: "EAGAIN".into(),
            },
        ] {
            replies.push(BrokerToFrontend::Error(error));
        }
        replies
    }

    #[test]
    fn every_request_round_trips_and_none_carries_fds() {
        let (frontend, broker) =
            Channel::<FrontendToBroker, BrokerToFrontend>::pair(FrameLimit::DEFAULT).unwrap();
        for request in all_requests() {
            assert_eq!(request.fd_count(), 0);
            frontend.send(&request, &[]).unwrap();
            assert_eq!(broker.recv().unwrap().message, request);
        }
    }

    #[test]
    fn every_reply_round_trips_with_its_fds() {
        let (frontend, broker) =
            Channel::<FrontendToBroker, BrokerToFrontend>::pair(FrameLimit::DEFAULT).unwrap();
        let (_r, w) = rustix::pipe::pipe().unwrap();
        for reply in all_replies() {
            let fds = vec![w.as_fd(); reply.fd_count()];
            broker.send(&reply, &fds).unwrap();
            let got = frontend.recv().unwrap();
            assert_eq!(got.fds.len(), reply.fd_count());
            assert_eq!(got.message, reply);
        }
    }

    #[test]
    fn the_broker_refuses_descriptors_from_the_frontend() {
        let (frontend, broker) =
            Channel::<FrontendToBroker, BrokerToFrontend>::pair(FrameLimit::DEFAULT).unwrap();
        let (_r, w) = rustix::pipe::pipe().unwrap();
        // The typed sender will not even try...
        assert!(matches!(
            frontend.send(&FrontendToBroker::Ping, &[w.as_fd()]),
            Err(IpcError::FdCountMismatch { .. })
        ));
        // ...and a hostile one that does is refused by the receiver.
        let frame = encode_frame(&FrontendToBroker::Ping, FrameLimit::DEFAULT).unwrap();
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let fds = [w.as_fd()];
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            frontend.socket(),
            &[std::io::IoSlice::new(&frame)],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        assert!(matches!(
            broker.recv(),
            Err(IpcError::FdCountMismatch { actual: 1, .. })
        ));
    }

    #[test]
    fn phases_are_enforced_per_variant() {
        use FrontendToBroker as R;
        let cases: Vec<(R, [bool; 3])> = vec![
            // [handshake, serving, draining]
            (R::Hello { ipc_version: 1 }, [true, false, false]),
            (
                R::StartBuild(Box::new(sample_build())),
                [false, true, false],
            ),
            (
                R::CancelBuild {
                    build: BuildId(1),
                    reason: CancelReason::Client,
                },
                [false, true, true],
            ),
            (R::QueryBuild { build: BuildId(1) }, [false, true, true]),
            (
                R::CollectOutputs { build: BuildId(1) },
                [false, true, false],
            ),
            (
                R::ReleaseBuild {
                    build: BuildId(1),
                    keep_failed: false,
                },
                [false, true, true],
            ),
            (R::ShuttingDown, [false, true, false]),
            (R::CreateUserDirs { uid: 1000 }, [false, true, false]),
            (R::FindRoots, [false, true, false]),
            (
                R::RunPostBuildHook {
                    build: BuildId(1),
                    drv_path: path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
                    out_paths: BTreeSet::new(),
                },
                [false, true, false],
            ),
            (
                R::CancelPostBuildHook { build: BuildId(1) },
                [false, true, true],
            ),
            (R::Ping, [false, true, true]),
        ];
        assert_eq!(cases.len(), all_requests().len());
        for (request, allowed) in cases {
            for (phase, allowed) in [Phase::Handshake, Phase::Serving, Phase::Draining]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(
                    request.permitted_in(phase),
                    allowed,
                    "{} in {phase}",
                    request.variant_name()
                );
            }
        }
    }

    #[test]
    fn requests_are_not_replies() {
        for request in all_requests() {
            let frame = encode_frame(&request, FrameLimit::DEFAULT).unwrap();
            assert!(matches!(
                read_frame::<_, BrokerToFrontend>(&mut &frame[..], FrameLimit::DEFAULT),
                Err(IpcError::WrongTag { .. })
            ));
        }
    }

    #[test]
    fn a_valid_build_request_passes_its_checks() {
        sample_build().check().unwrap();
        let mut fod = sample_build();
        fod.fixed_output = true;
        fod.build_dir_files.clear();
        fod.check().unwrap();
    }

    #[test]
    fn build_requests_with_bad_values_are_refused() {
        type Mutation = fn(&mut BuildRequest);
        let cases: Vec<(&str, Mutation)> = vec![
            ("system", |r| r.system = String::new()),
            ("system", |r| r.system = "x86_64-linux/../../etc".into()),
            ("builder", |r| r.builder = "bin/sh".into()),
            ("builder", |r| r.builder = "/nix/store/../../bin/sh".into()),
            ("builder", |r| r.builder = "/nix//store/x".into()),
            ("builder", |r| r.builder = "/bin/sh\0x".into()),
            ("builder", |r| {
                r.builder = format!("/{}", "a".repeat(MAX_PATH_LEN))
            }),
            ("args", |r| r.args.push("a\0b".into())),
            ("args", |r| r.args.push("a".repeat(MAX_EXEC_STRING_LEN + 1))),
            ("env", |r| {
                r.env.insert("A=B".into(), "x".into());
            }),
            ("env", |r| {
                r.env.insert(String::new(), "x".into());
            }),
            ("env", |r| {
                r.env.insert("X".into(), "nul\0".into());
            }),
            ("outputs", |r| r.outputs.clear()),
            ("outputs", |r| {
                r.outputs.insert(
                    "bad/name".into(),
                    path("0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-x"),
                );
            }),
            ("outputs", |r| {
                let same = r.outputs["out"].clone();
                r.outputs.insert("dev".into(), same);
            }),
            ("outputs", |r| {
                let input = r.input_paths.iter().next().unwrap().clone();
                r.outputs.insert("dev".into(), input);
            }),
            ("build_dir_files", |r| {
                r.build_dir_files[0].name = "../escape".into()
            }),
            ("build_dir_files", |r| {
                r.build_dir_files[0].name = "..".into()
            }),
            ("build_dir_files", |r| {
                r.build_dir_files[0].name = String::new()
            }),
            ("build_dir_files", |r| {
                let again = r.build_dir_files[0].clone();
                r.build_dir_files.push(again);
            }),
        ];
        for (field, mutate) in cases {
            let mut request = sample_build();
            mutate(&mut request);
            match request.check() {
                Err(BrokerError::BadRequest {
                    field: f,
                    build,
                    reason,
                }) => {
                    assert_eq!(f, field, "{reason}");
                    assert_eq!(build, BuildId(1));
                }
                other => panic!("{field}: expected BadRequest, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_messages_name_the_build_and_value() {
        let e = BrokerError::UnsupportedSystem {
            build: BuildId(4),
            system: "mips-linux".into(),
        };
        assert_eq!(
            e.to_string(),
            "build 4: cannot build for system 'mips-linux' on this machine"
        );
        let e = BrokerError::BadRequest {
            build: BuildId(2),
            field: "builder".into(),
            reason: "'bin/sh' is not an absolute path".into(),
        };
        assert_eq!(
            e.to_string(),
            "build 2: invalid builder: 'bin/sh' is not an absolute path"
        );
    }
}
