//! `post-build-hook`: runs the admin's program after a build, as an unprivileged user.
//!
//! Nix runs the hook as root, with the daemon's whole environment. ward never runs it as
//! root. The program file decides who runs it: a program owned by a user other than root runs
//! as that owner (who could run it as themselves anyway); a root-owned one runs as
//! `--hook-user`, and is refused without one. A program writable by its group or by others,
//! or owned by a build user, is refused, and so is any other combination: code one user can
//! change never runs as another. The check is made at every run, so a `chown` takes effect
//! without a restart.
//!
//! The broker reads nothing the hook writes: its stdout and stderr go into a pipe the
//! frontend reads and shows to the client, as Nix does.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Pid, Uid, User};
use ward_ipc::broker::{
    BrokerError, BrokerToFrontend, BuildOutcome, CancelReason, MAX_HOOK_OUTPUTS,
};
use ward_ipc::store_path::StorePath;
use ward_ipc::BuildId;

use crate::args::HookSettings;
use crate::exec::{self, ExecSpec, Identity};
use crate::sys;

/// Variables of the broker's environment a hook gets (besides the ones set for it), and
/// prefixes of such variables. Everything else (systemd's sockets and credentials, the
/// broker's own settings) stays with root.
const PASSED_VARIABLES: &[&str] = &[
    "PATH",
    "TZ",
    "LANG",
    "LANGUAGE",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
];
const PASSED_PREFIXES: &[&str] = &["LC_", "NIX_"];
/// `PATH` when the broker has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The hooks running for the current frontend channel.
#[derive(Debug)]
pub struct Hooks {
    settings: HookSettings,
    store_dir: String,
    running: BTreeMap<BuildId, Pid>,
    /// Hooks of a channel that went away: killed, still to be reaped.
    abandoned: Vec<Pid>,
    max_running: usize,
}

/// Who a hook runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    /// `None`: the broker's own user (it is not root).
    identity: Option<Identity>,
    name: String,
    home: String,
}

impl Hooks {
    /// Hooks from the broker's settings; at most `max(32, max_jobs)` run at once.
    pub fn new(settings: &HookSettings, store_dir: &str, max_jobs: u32) -> Hooks {
        Hooks {
            settings: settings.clone(),
            store_dir: store_dir.to_owned(),
            running: BTreeMap::new(),
            abandoned: Vec::new(),
            max_running: (max_jobs as usize).max(32),
        }
    }

    /// Starts the post-build hook for `build`: the reply and the read end of its output.
    pub fn start(
        &mut self,
        build: BuildId,
        drv_path: &StorePath,
        out_paths: &BTreeSet<StorePath>,
        is_build_user: impl Fn(u32) -> bool,
    ) -> Result<(BrokerToFrontend, OwnedFd), BrokerError> {
        let refuse = |reason: String| BrokerError::PostBuildHook { build, reason };
        let Some(program) = self.settings.post_build_hook.clone() else {
            return Err(refuse(
                "no post-build-hook is configured in the daemon's nix.conf".into(),
            ));
        };
        let shown = program.display().to_string();
        if self.running.contains_key(&build) {
            return Err(refuse(format!(
                "the post-build-hook '{shown}' already runs for {build}"
            )));
        }
        if self.running.len() >= self.max_running {
            return Err(refuse(format!(
                "{} post-build hooks are already running",
                self.running.len()
            )));
        }
        if out_paths.len() > MAX_HOOK_OUTPUTS {
            return Err(refuse(format!(
                "{} output paths for one post-build-hook (at most {MAX_HOOK_OUTPUTS})",
                out_paths.len()
            )));
        }
        let run_as = resolve_user(&program, self.settings.hook_user.as_deref(), &is_build_user)
            .map_err(|why| refuse(format!("post-build-hook '{shown}' {why}")))?;

        let argv = [CString::new(program.as_os_str().as_bytes())
            .map_err(|_| refuse(format!("post-build-hook '{shown}' contains a NUL byte")))?];
        let env = self.environment(drv_path, out_paths, &run_as);
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| refuse(format!("creating the post-build-hook's pipe: {e}")))?;
        let null = std::fs::File::open("/dev/null")
            .map_err(|e| refuse(format!("opening /dev/null: {e}")))?;
        let fds = [
            (null.as_raw_fd(), 0),
            (write.as_raw_fd(), 1),
            (write.as_raw_fd(), 2),
        ];
        let spec = ExecSpec {
            argv: &argv,
            env: Some(&env),
            fds: &fds,
            identity: run_as.identity.as_ref(),
            no_new_privs: true,
            death_signal: Signal::SIGKILL,
            // Its own process group, so a cancel reaches whatever the hook started.
            new_session: true,
            cwd: Some(c"/"),
        };
        let pid = exec::spawn(&spec, "the post-build-hook", || Ok(()))
            .map_err(|e| refuse(format!("starting the post-build-hook '{shown}': {e}")))?;
        say!(
            "ward-broker: post-build-hook '{shown}' for {drv_path} runs as '{}' (pid {pid})",
            run_as.name
        );
        self.running.insert(build, pid);
        Ok((
            BrokerToFrontend::PostBuildHookStarted {
                build,
                user: run_as.name,
            },
            read,
        ))
    }

    fn environment(
        &self,
        drv_path: &StorePath,
        out_paths: &BTreeSet<StorePath>,
        run_as: &RunAs,
    ) -> Vec<CString> {
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(name, _)| {
                PASSED_VARIABLES.contains(&name.as_str())
                    || PASSED_PREFIXES.iter().any(|p| name.starts_with(p))
            })
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        if let Some(socket) = &self.settings.daemon_socket {
            env.entry("NIX_REMOTE".into())
                .or_insert_with(|| format!("unix://{}", socket.display()));
        }
        env.insert("HOME".into(), run_as.home.clone());
        env.insert("USER".into(), run_as.name.clone());
        env.insert("LOGNAME".into(), run_as.name.clone());
        env.insert(
            "DRV_PATH".into(),
            format!("{}/{}", self.store_dir, drv_path.base_name()),
        );
        let outs: Vec<String> = out_paths
            .iter()
            .map(|p| format!("{}/{}", self.store_dir, p.base_name()))
            .collect();
        env.insert("OUT_PATHS".into(), outs.join(" "));
        env.into_iter()
            .filter_map(|(name, value)| CString::new(format!("{name}={value}")).ok())
            .collect()
    }

    /// Kills a running hook and its process group; the reply is its only `Finished`.
    pub fn cancel(&mut self, build: BuildId) -> BrokerToFrontend {
        let Some(pid) = self.running.remove(&build) else {
            return BrokerToFrontend::Error(BrokerError::UnknownBuild { build });
        };
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = sys::wait4(pid.as_raw(), true);
        BrokerToFrontend::PostBuildHookFinished {
            build,
            outcome: BuildOutcome::Cancelled {
                reason: CancelReason::Client,
            },
        }
    }

    /// A reaped child: `Some(Some(notice))` when it was a hook of this channel, `Some(None)`
    /// for an abandoned one, `None` when it was not a hook.
    pub fn reaped(&mut self, pid: Pid, status: WaitStatus) -> Option<Option<BrokerToFrontend>> {
        if let Some(at) = self.abandoned.iter().position(|p| *p == pid) {
            self.abandoned.swap_remove(at);
            return Some(None);
        }
        let build = self
            .running
            .iter()
            .find(|(_, p)| **p == pid)
            .map(|(b, _)| *b)?;
        self.running.remove(&build);
        let outcome = match status {
            WaitStatus::Exited(_, code) => BuildOutcome::Exited { code },
            WaitStatus::Signaled(_, signal, _) => BuildOutcome::Signalled {
                signal: signal as i32,
            },
            _ => return Some(None),
        };
        Some(Some(BrokerToFrontend::PostBuildHookFinished {
            build,
            outcome,
        }))
    }

    /// The channel that started these hooks is gone: kill them (they are reaped later).
    pub fn abandon_all(&mut self) {
        for (_, pid) in std::mem::take(&mut self.running) {
            let _ = killpg(pid, Signal::SIGKILL);
            self.abandoned.push(pid);
        }
    }
}

/// Who runs `program`, per the rules in the module comment.
fn resolve_user(
    program: &Path,
    hook_user: Option<&str>,
    is_build_user: &dyn Fn(u32) -> bool,
) -> Result<RunAs, String> {
    if !program.is_absolute() {
        return Err("is not an absolute path (set post-build-hook to one)".into());
    }
    let meta = std::fs::metadata(program).map_err(|e| format!("cannot be run: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.mode() & 0o111 == 0 {
        return Err("is not executable (chmod +x)".into());
    }
    let root = nix::unistd::geteuid().is_root();
    let hook_uid = match (root, hook_user) {
        (true, Some(name)) => Some(
            User::from_name(name)
                .map_err(|e| format!("cannot run: looking up --hook-user '{name}': {e}"))?
                .ok_or_else(|| format!("cannot run: --hook-user '{name}' does not exist"))?
                .uid
                .as_raw(),
        ),
        _ => None,
    };
    let uid = decide_uid(root, meta.uid(), meta.mode(), hook_uid, is_build_user)?;
    if !root {
        let me = User::from_uid(nix::unistd::getuid()).ok().flatten();
        return Ok(RunAs {
            identity: None,
            name: me
                .as_ref()
                .map(|u| u.name.clone())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_default(),
            home: me
                .map(|u| u.dir.display().to_string())
                .or_else(|| std::env::var("HOME").ok())
                .unwrap_or_else(|| "/".into()),
        });
    }
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| format!("cannot run: looking up uid {uid}: {e}"))?
        .ok_or_else(|| format!("is owned by uid {uid}, which has no entry in the user database"))?;
    let groups = CString::new(user.name.as_bytes())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .unwrap_or_else(|| vec![user.gid]);
    Ok(RunAs {
        identity: Some(Identity {
            uid: user.uid,
            gid: user.gid,
            groups: groups
                .into_iter()
                .filter(|g| *g != Gid::from_raw(0))
                .collect(),
        }),
        name: user.name,
        home: user.dir.display().to_string(),
    })
}

/// The uid a program with owner `owner` and `mode` runs as, or why it may not run. `root`:
/// the broker is root (otherwise it can only run it as itself); `hook_uid`: `--hook-user`.
fn decide_uid(
    root: bool,
    owner: u32,
    mode: u32,
    hook_uid: Option<u32>,
    is_build_user: &dyn Fn(u32) -> bool,
) -> Result<u32, String> {
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by its group or by others (mode {:o}): whoever can change it could \
             run commands as the user it runs as; remove that write permission (chmod go-w)",
            mode & 0o7777
        ));
    }
    if !root {
        return Ok(nix::unistd::getuid().as_raw());
    }
    let uid = match (owner, hook_uid) {
        (0, Some(0)) => {
            return Err(
                "cannot run: --hook-user names root, and ward never runs a hook as root".into(),
            )
        }
        (0, Some(user)) => user,
        (0, None) => {
            return Err(
                "is owned by root, and ward never runs a hook as root: give the program to \
                 the user that should run it (chown), or start ward with --hook-user USER"
                    .into(),
            )
        }
        (owner, Some(user)) if owner != user => {
            return Err(format!(
                "is owned by uid {owner}, not by root or by --hook-user (uid {user}); ward \
                 runs a program only as its owner, or as --hook-user when root owns it"
            ))
        }
        (owner, _) => owner,
    };
    if is_build_user(uid) {
        return Err(format!(
            "would run as uid {uid}, a build user; builds run as that user and could tamper \
             with the hook: give it to another user"
        ));
    }
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_build_users(_: u32) -> bool {
        false
    }

    #[test]
    fn root_owned_programs_need_a_hook_user() {
        let err = decide_uid(true, 0, 0o100755, None, &no_build_users).unwrap_err();
        assert!(
            err.contains("owned by root") && err.contains("--hook-user"),
            "{err}"
        );
        assert_eq!(
            decide_uid(true, 0, 0o100755, Some(1500), &no_build_users),
            Ok(1500)
        );
        let err = decide_uid(true, 0, 0o100755, Some(0), &no_build_users).unwrap_err();
        assert!(err.contains("names root"), "{err}");
    }

    #[test]
    fn other_programs_run_as_their_owner_only() {
        assert_eq!(
            decide_uid(true, 1200, 0o100700, None, &no_build_users),
            Ok(1200)
        );
        assert_eq!(
            decide_uid(true, 1200, 0o100700, Some(1200), &no_build_users),
            Ok(1200)
        );
        let err = decide_uid(true, 1200, 0o100755, Some(1500), &no_build_users).unwrap_err();
        assert!(
            err.contains("uid 1200") && err.contains("uid 1500"),
            "{err}"
        );
    }

    #[test]
    fn writable_programs_and_build_users_are_refused() {
        for mode in [0o100775, 0o100757, 0o100777] {
            let err = decide_uid(true, 1200, mode, None, &no_build_users).unwrap_err();
            assert!(err.contains("writable"), "{mode:o}: {err}");
            // Also when the broker is not root: others could run code as its user.
            assert!(decide_uid(false, 1200, mode, None, &no_build_users).is_err());
        }
        let build_user = |uid: u32| uid == 30001;
        let err = decide_uid(true, 30001, 0o100755, None, &build_user).unwrap_err();
        assert!(err.contains("build user"), "{err}");
        let err = decide_uid(true, 0, 0o100755, Some(30001), &build_user).unwrap_err();
        assert!(err.contains("build user"), "{err}");
    }

    #[test]
    fn unprivileged_brokers_run_hooks_as_themselves() {
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(
            decide_uid(false, 4242, 0o100755, None, &no_build_users),
            Ok(me)
        );
    }

    #[test]
    fn the_environment_names_the_paths_and_keeps_root_s_secrets() {
        std::env::set_var("NIX_HOOK_TEST_PASSED", "1");
        std::env::set_var("CREDENTIALS_DIRECTORY", "/run/credentials/x");
        let hooks = Hooks::new(
            &HookSettings {
                post_build_hook: Some("/etc/nix/upload".into()),
                hook_user: None,
                daemon_socket: Some("/nix/var/nix/daemon-socket/socket".into()),
            },
            "/nix/store",
            1,
        );
        let p = |b: &str| StorePath::from_base_name(b).unwrap();
        let outs: BTreeSet<StorePath> = [
            p("0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello-dev"),
            p("1c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello"),
        ]
        .into();
        let run_as = RunAs {
            identity: None,
            name: "upload".into(),
            home: "/var/lib/upload".into(),
        };
        let env = hooks.environment(
            &p("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
            &outs,
            &run_as,
        );
        let env: Vec<String> = env
            .iter()
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let has = |entry: &str| env.iter().any(|e| e == entry);
        assert!(has(
            "DRV_PATH=/nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"
        ));
        assert!(has(
            "OUT_PATHS=/nix/store/0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello-dev \
             /nix/store/1c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello"
        ));
        assert!(has("HOME=/var/lib/upload") && has("USER=upload"));
        assert!(has("NIX_HOOK_TEST_PASSED=1"));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(
            env.iter().any(|e| e.starts_with("NIX_REMOTE=")),
            "NIX_REMOTE names the daemon unless the broker's environment sets it: {env:?}"
        );
        assert!(!env.iter().any(|e| e.starts_with("CREDENTIALS_DIRECTORY=")));
    }

    #[test]
    fn hostile_requests_are_refused_before_anything_runs() {
        let drv = StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv").unwrap();
        let with = |program: &str| {
            Hooks::new(
                &HookSettings {
                    post_build_hook: Some(program.into()),
                    hook_user: None,
                    daemon_socket: None,
                },
                "/nix/store",
                1,
            )
        };
        let refused = |hooks: &mut Hooks, outs: &BTreeSet<StorePath>| {
            hooks
                .start(BuildId(1), &drv, outs, |_| false)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        // More output paths than any derivation has.
        let many: BTreeSet<StorePath> = (0..=MAX_HOOK_OUTPUTS)
            .map(|i| StorePath::from_base_name(&format!("{i:032}-out")).unwrap())
            .collect();
        let e = refused(&mut with("/bin/true"), &many);
        assert!(e.contains("output paths"), "{e}");
        // A program that is not an absolute path, or not there.
        let e = refused(&mut with("upload.sh"), &BTreeSet::new());
        assert!(e.contains("not an absolute path"), "{e}");
        let e = refused(&mut with("/nonexistent/ward-hook"), &BTreeSet::new());
        assert!(
            e.contains("/nonexistent/ward-hook") && e.contains("cannot be run"),
            "{e}"
        );
        // Nothing started, so nothing to cancel.
        assert!(matches!(
            with("/bin/true").cancel(BuildId(1)),
            BrokerToFrontend::Error(BrokerError::UnknownBuild { .. })
        ));
    }

    #[test]
    fn without_a_configured_hook_the_request_is_refused() {
        let mut hooks = Hooks::new(&HookSettings::default(), "/nix/store", 1);
        let drv = StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv").unwrap();
        let err = hooks
            .start(BuildId(1), &drv, &BTreeSet::new(), |_| false)
            .unwrap_err();
        assert!(err.to_string().contains("no post-build-hook"), "{err}");
        assert!(matches!(
            hooks.cancel(BuildId(1)),
            BrokerToFrontend::Error(BrokerError::UnknownBuild { .. })
        ));
    }
}
