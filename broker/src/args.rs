//! The broker's own command line.
//!
//! Only `ward daemon` (run by root or the store's owner) starts the broker, so this is not
//! client input; it is still checked strictly so a typo fails loudly instead of running a
//! process tree with the wrong users.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use ward_ipc::builder::BindMount;

/// What the broker was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerArgs {
    /// Descriptor of the bound, listening client socket; handed to the frontend as fd 3.
    pub listen_fd: RawFd,
    /// The frontend binary.
    pub frontend_bin: PathBuf,
    /// The store-writer binary.
    pub store_writer_bin: PathBuf,
    /// `--gc-roots`: the `ward-gc-roots` helper, run for `FindRoots`.
    pub gc_roots_bin: Option<PathBuf>,
    /// User the frontend runs as (multi-user mode); `None` keeps the broker's own user.
    pub frontend_user: Option<String>,
    /// User the store-writer runs as (multi-user mode); `None` keeps the broker's own user.
    pub store_user: Option<String>,
    /// Extra group both children join, so the frontend can reach the store-writer's socket.
    pub shared_group: Option<String>,
    /// Directory of the private frontend⇄store-writer socket.
    pub ipc_dir: PathBuf,
    /// The store's state directory (for per-user directories).
    pub state_dir: PathBuf,
    /// `--parent-pid PID` (`ward daemon --stdio`): the broker serves one session for that
    /// process and exits when it does.
    pub parent_pid: Option<i32>,
    /// `--secret-key-file` (`secret-key-files`): opened by the broker, which may read them
    /// when the store-writer may not, and handed to the store-writer as descriptors; never
    /// read or parsed here.
    pub secret_key_files: Vec<PathBuf>,
    /// Arguments passed verbatim to both children after their own.
    pub passthrough: Vec<OsString>,
    /// How builds are run (the admin's nix.conf, as passed by `ward daemon`).
    pub build: BuildSettings,
    /// The `post-build-hook` and who runs it.
    pub hooks: HookSettings,
}

/// The hooks the broker runs: the admin's, never the frontend's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSettings {
    /// `--post-build-hook` (nix.conf's `post-build-hook`).
    pub post_build_hook: Option<PathBuf>,
    /// `--hook-user`: who runs a root-owned hook program.
    pub hook_user: Option<String>,
    /// `--daemon-socket`: the socket clients reach the daemon on, named to hooks in
    /// `NIX_REMOTE` so a hook's `nix copy` goes through ward.
    pub daemon_socket: Option<PathBuf>,
}

/// The `sandbox` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// `true`: every build in a chroot.
    Enabled,
    /// `relaxed`: `__noChroot` derivations run without one.
    Relaxed,
    /// `false`: no chroot.
    Disabled,
}

/// Build policy: everything here is the admin's, never the frontend's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSettings {
    /// `--builder`: the `ward-builder` binary; `None` disables builds.
    pub builder_bin: Option<PathBuf>,
    /// `--store-dir`: the logical store directory.
    pub store_dir: String,
    /// `--real-store-dir`: where the store's files are (defaults to `store_dir`).
    pub real_store_dir: String,
    /// `--build-users-group`: empty means single-user (builds run as the broker's uid).
    pub build_users_group: String,
    /// `--max-jobs`.
    pub max_jobs: u32,
    /// `--max-build-processes` (`ward-build-max-processes`): processes and threads one build's
    /// user may run at once (RLIMIT_NPROC; a fork bomb fails only its own build); 0 = none.
    /// Multi-user mode only: in single-user mode builds run as the daemon's own user.
    pub max_build_processes: u32,
    /// `--build-memory-max` (`ward-build-memory-max`): each build cgroup's `memory.max` in
    /// bytes, where the host's cgroups allow; 0 = none.
    pub build_memory_max: u64,
    /// `--sandbox-dev-shm-size`: the `size=` of each build's tmpfs mounts (/dev/shm, /tmp and
    /// the chroot's root).
    pub tmpfs_size: String,
    /// `--sandbox`.
    pub sandbox: SandboxMode,
    /// `--sandbox-path`, in order.
    pub sandbox_paths: Vec<BindMount>,
    /// `--sandbox-build-dir`.
    pub sandbox_build_dir: String,
    /// `--system`.
    pub system: String,
    /// `--extra-platform`.
    pub extra_platforms: Vec<String>,
    /// Off with `--no-filter-syscalls`.
    pub filter_syscalls: bool,
    /// `--allow-new-privileges`.
    pub allow_new_privileges: bool,
    /// `--auto-allocate-uids`.
    pub auto_allocate_uids: bool,
    /// `--start-id`.
    pub start_id: u32,
    /// `--id-count`.
    pub id_count: u32,
    /// `--build-dir`: instead of `<state>/ward-broker/builds`.
    pub build_dir: Option<PathBuf>,
    /// `--slirp4netns`: gives fixed-output builds a network namespace of their own.
    pub slirp4netns: Option<PathBuf>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            builder_bin: None,
            store_dir: "/nix/store".into(),
            real_store_dir: String::new(),
            build_users_group: String::new(),
            max_jobs: 1,
            max_build_processes: 0,
            tmpfs_size: "50%".into(),
            build_memory_max: 0,
            sandbox: SandboxMode::Enabled,
            sandbox_paths: Vec::new(),
            sandbox_build_dir: "/build".into(),
            system: format!("{}-linux", std::env::consts::ARCH),
            extra_platforms: Vec::new(),
            filter_syscalls: true,
            allow_new_privileges: false,
            auto_allocate_uids: false,
            start_id: 872_415_232,
            id_count: 65536 * 128,
            build_dir: None,
            slirp4netns: None,
        }
    }
}

impl BuildSettings {
    /// Start-up refusals that depend on who runs the broker: root never builds as root, so
    /// as root builds need a build users group (or `auto-allocate-uids`).
    pub fn check_for(&self, euid: u32) -> Result<(), ArgsError> {
        if self.builder_bin.is_some()
            && euid == 0
            && self.build_users_group.is_empty()
            && !self.auto_allocate_uids
        {
            return Err(ArgsError::Invalid(
                "--build-users-group".into(),
                "is empty, but the broker runs as root and never runs builds as root: set \
                 'build-users-group' in nix.conf (e.g. nixbld) or enable 'auto-allocate-uids'"
                    .into(),
            ));
        }
        if self.auto_allocate_uids
            && (self.id_count == 0 || self.start_id.checked_add(self.id_count).is_none())
        {
            return Err(ArgsError::Invalid(
                "--id-count".into(),
                format!(
                    "the uid range {}+{} is empty or overflows",
                    self.start_id, self.id_count
                ),
            ));
        }
        Ok(())
    }
}

/// Parses one `sandbox-paths` entry: `TARGET=SOURCE`, or `PATH` (= `PATH=PATH`); a trailing
/// `?` makes it optional. Both sides must be absolute, normalised paths.
pub fn parse_sandbox_path(entry: &str) -> Result<BindMount, String> {
    let (entry, optional) = match entry.strip_suffix('?') {
        Some(rest) => (rest, true),
        None => (entry, false),
    };
    let (target, source) = match entry.split_once('=') {
        Some((t, s)) => (t, s),
        None => (entry, entry),
    };
    for p in [target, source] {
        ward_ipc::broker::check_absolute_path(p)?;
    }
    if target == "/" {
        return Err("'/' cannot be a sandbox path target".into());
    }
    Ok(BindMount {
        source: source.to_owned(),
        target: target.to_owned(),
        optional,
    })
}

/// A command-line mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag the broker does not know.
    #[error("unknown option '{0}'")]
    Unknown(String),
    /// A flag given without its value.
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// A required flag was not given.
    #[error("option '{0}' is required")]
    Required(&'static str),
    /// `--listen-fd` was not a small non-negative number.
    #[error("option '--listen-fd' wants a descriptor number, got '{0}'")]
    BadFd(String),
    /// `--parent-pid` was not a positive number.
    #[error("option '--parent-pid' wants a process id, got '{0}'")]
    BadPid(String),
    /// A value the option does not accept.
    #[error("option '{0}' {1}")]
    Invalid(String, String),
}

impl BrokerArgs {
    /// Parses the arguments after argv[0].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<BrokerArgs, ArgsError> {
        let mut args = args.into_iter();
        let mut listen_fd = None;
        let mut frontend_bin = None;
        let mut store_writer_bin = None;
        let mut gc_roots_bin = None;
        let mut frontend_user = None;
        let mut store_user = None;
        let mut shared_group = None;
        let mut ipc_dir = None;
        let mut state_dir = None;
        let mut parent_pid = None;
        let mut passthrough = Vec::new();
        let mut secret_key_files = Vec::new();
        let mut build = BuildSettings::default();
        let mut real_store_dir = None;
        let mut hooks = HookSettings::default();
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            if flag == "--" {
                passthrough.extend(args.by_ref());
                break;
            }
            let mut value = || {
                args.next()
                    .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--listen-fd" => {
                    let v = value()?;
                    let text = v.to_string_lossy();
                    let fd = text
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd >= 0)
                        .ok_or_else(|| ArgsError::BadFd(text.into_owned()))?;
                    listen_fd = Some(fd);
                }
                "--frontend" => frontend_bin = Some(PathBuf::from(value()?)),
                "--store-writer" => store_writer_bin = Some(PathBuf::from(value()?)),
                "--gc-roots" => gc_roots_bin = Some(PathBuf::from(value()?)),
                "--frontend-user" => frontend_user = Some(value()?.to_string_lossy().into_owned()),
                "--store-user" => store_user = Some(value()?.to_string_lossy().into_owned()),
                "--group" => shared_group = Some(value()?.to_string_lossy().into_owned()),
                "--ipc-dir" => ipc_dir = Some(PathBuf::from(value()?)),
                "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
                "--secret-key-file" => secret_key_files.push(PathBuf::from(value()?)),
                "--parent-pid" => {
                    let v = value()?;
                    let text = v.to_string_lossy();
                    let pid = text
                        .parse::<i32>()
                        .ok()
                        .filter(|pid| *pid > 0)
                        .ok_or_else(|| ArgsError::BadPid(text.into_owned()))?;
                    parent_pid = Some(pid);
                }
                "--builder" => build.builder_bin = Some(PathBuf::from(value()?)),
                "--store-dir" => {
                    let v = text(value()?);
                    ward_ipc::broker::check_absolute_path(&v)
                        .map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                    build.store_dir = v;
                }
                "--real-store-dir" => {
                    let v = text(value()?);
                    ward_ipc::broker::check_absolute_path(&v)
                        .map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                    real_store_dir = Some(v);
                }
                "--build-users-group" => build.build_users_group = text(value()?),
                "--max-jobs" => build.max_jobs = number(&flag, value()?)?,
                "--max-build-processes" => {
                    build.max_build_processes = number(&flag, value()?)?;
                }
                "--build-memory-max" => {
                    let v = text(value()?);
                    build.build_memory_max = v.parse().map_err(|_| {
                        ArgsError::Invalid(
                            flag.clone(),
                            format!("wants a number of bytes, got '{v}'"),
                        )
                    })?;
                }
                "--sandbox-dev-shm-size" => {
                    let size = text(value()?);
                    if !ward_ipc::builder::valid_tmpfs_size(&size) {
                        return Err(ArgsError::Invalid(
                            flag.clone(),
                            format!("wants a size (digits, then k, m, g or %), got '{size}'"),
                        ));
                    }
                    build.tmpfs_size = size;
                }
                "--sandbox" => {
                    build.sandbox = match text(value()?).as_str() {
                        "true" => SandboxMode::Enabled,
                        "relaxed" => SandboxMode::Relaxed,
                        "false" => SandboxMode::Disabled,
                        other => {
                            return Err(ArgsError::Invalid(
                                flag.clone(),
                                format!("wants true, false or relaxed, got '{other}'"),
                            ))
                        }
                    }
                }
                "--sandbox-path" => {
                    let v = text(value()?);
                    let mount =
                        parse_sandbox_path(&v).map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                    build.sandbox_paths.push(mount);
                }
                "--sandbox-build-dir" => {
                    let v = text(value()?);
                    ward_ipc::broker::check_absolute_path(&v)
                        .map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                    if v == "/" {
                        return Err(ArgsError::Invalid(flag.clone(), "cannot be '/'".into()));
                    }
                    build.sandbox_build_dir = v;
                }
                "--system" => build.system = system(&flag, value()?)?,
                "--extra-platform" => {
                    let v = system(&flag, value()?)?;
                    build.extra_platforms.push(v);
                }
                "--no-filter-syscalls" => build.filter_syscalls = false,
                "--allow-new-privileges" => build.allow_new_privileges = true,
                "--auto-allocate-uids" => build.auto_allocate_uids = true,
                "--start-id" => build.start_id = number(&flag, value()?)?,
                "--id-count" => build.id_count = number(&flag, value()?)?,
                "--build-dir" => {
                    let v = text(value()?);
                    if !v.is_empty() {
                        ward_ipc::broker::check_absolute_path(&v)
                            .map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                        build.build_dir = Some(PathBuf::from(v));
                    }
                }
                "--slirp4netns" => {
                    let v = text(value()?);
                    ward_ipc::broker::check_absolute_path(&v)
                        .map_err(|e| ArgsError::Invalid(flag.clone(), e))?;
                    build.slirp4netns = Some(PathBuf::from(v));
                }
                "--post-build-hook" => {
                    let v = value()?;
                    hooks.post_build_hook = (!v.is_empty()).then(|| PathBuf::from(v));
                }
                "--hook-user" => hooks.hook_user = Some(text(value()?)),
                "--daemon-socket" => hooks.daemon_socket = Some(PathBuf::from(value()?)),
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        Ok(BrokerArgs {
            listen_fd: listen_fd.ok_or(ArgsError::Required("--listen-fd"))?,
            frontend_bin: frontend_bin.ok_or(ArgsError::Required("--frontend"))?,
            store_writer_bin: store_writer_bin.ok_or(ArgsError::Required("--store-writer"))?,
            gc_roots_bin,
            frontend_user,
            store_user,
            shared_group,
            ipc_dir: ipc_dir.ok_or(ArgsError::Required("--ipc-dir"))?,
            state_dir: state_dir.ok_or(ArgsError::Required("--state-dir"))?,
            parent_pid,
            secret_key_files,
            passthrough,
            hooks,
            build: BuildSettings {
                real_store_dir: real_store_dir.unwrap_or_else(|| build.store_dir.clone()),
                ..build
            },
        })
    }
}

fn text(v: OsString) -> String {
    v.to_string_lossy().into_owned()
}

fn number(flag: &str, v: OsString) -> Result<u32, ArgsError> {
    let t = text(v);
    t.parse::<u32>()
        .map_err(|_| ArgsError::Invalid(flag.to_owned(), format!("wants a number, got '{t}'")))
}

fn system(flag: &str, v: OsString) -> Result<String, ArgsError> {
    let t = text(v);
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return Err(ArgsError::Invalid(
            flag.to_owned(),
            format!("wants a system name, got '{t}'"),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BrokerArgs, ArgsError> {
        BrokerArgs::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_a_full_command_line() {
        let a = parse(&[
            "--listen-fd",
            "3",
            "--frontend",
            "/bin/f",
            "--store-writer",
            "/bin/s",
            "--frontend-user",
            "ward-frontend",
            "--store-user",
            "ward-store",
            "--group",
            "ward",
            "--ipc-dir",
            "/run/ward",
            "--state-dir",
            "/nix/var/nix",
            "--",
            "--store",
            "/x",
            "--debug",
        ])
        .unwrap();
        assert_eq!(a.listen_fd, 3);
        assert_eq!(a.frontend_user.as_deref(), Some("ward-frontend"));
        assert_eq!(a.passthrough, vec!["--store", "/x", "--debug"]);
        assert_eq!(a.parent_pid, None);
    }

    #[test]
    fn parent_pid_is_a_positive_number() {
        let base = [
            "--listen-fd",
            "3",
            "--frontend",
            "/f",
            "--store-writer",
            "/s",
            "--ipc-dir",
            "/i",
            "--state-dir",
            "/d",
        ];
        let with = |pid: &str| {
            let mut args = base.to_vec();
            args.extend(["--parent-pid", pid]);
            parse(&args)
        };
        assert_eq!(with("4242").unwrap().parent_pid, Some(4242));
        assert_eq!(with("0"), Err(ArgsError::BadPid("0".into())));
        assert_eq!(with("-5"), Err(ArgsError::BadPid("-5".into())));
        assert_eq!(with("x"), Err(ArgsError::BadPid("x".into())));
    }

    #[test]
    fn refuses_mistakes() {
        assert_eq!(
            parse(&["--bogus"]),
            Err(ArgsError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["--listen-fd"]),
            Err(ArgsError::MissingValue("--listen-fd".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "-1"]),
            Err(ArgsError::BadFd("-1".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "x"]),
            Err(ArgsError::BadFd("x".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "3"]),
            Err(ArgsError::Required("--frontend"))
        );
    }

    const BASE: [&str; 10] = [
        "--listen-fd",
        "3",
        "--frontend",
        "/f",
        "--store-writer",
        "/s",
        "--ipc-dir",
        "/i",
        "--state-dir",
        "/d",
    ];

    fn with(extra: &[&str]) -> Result<BrokerArgs, ArgsError> {
        let mut args = BASE.to_vec();
        args.extend(extra);
        parse(&args)
    }

    #[test]
    fn build_settings_default_like_nix() {
        let b = with(&[]).unwrap().build;
        assert_eq!(b.builder_bin, None);
        assert_eq!(b.store_dir, "/nix/store");
        assert_eq!(b.real_store_dir, "/nix/store");
        assert_eq!(b.max_jobs, 1);
        assert_eq!(b.sandbox, SandboxMode::Enabled);
        assert_eq!(b.sandbox_build_dir, "/build");
        assert!(b.filter_syscalls && !b.allow_new_privileges && !b.auto_allocate_uids);
        assert_eq!((b.start_id, b.id_count), (872_415_232, 65536 * 128));
        assert_eq!(b.build_dir, None);
    }

    #[test]
    fn parses_every_build_flag() {
        let b = with(&[
            "--builder",
            "/bin/ward-builder",
            "--store-dir",
            "/nix/store",
            "--real-store-dir",
            "/srv/root/nix/store",
            "--build-users-group",
            "nixbld",
            "--max-jobs",
            "4",
            "--sandbox",
            "relaxed",
            "--sandbox-path",
            "/bin/sh=/nix/store/x-busybox/bin/sh",
            "--sandbox-path",
            "/etc/ssl?",
            "--sandbox-build-dir",
            "/tmp/build",
            "--system",
            "x86_64-linux",
            "--extra-platform",
            "i686-linux",
            "--extra-platform",
            "x86_64-v3-linux",
            "--no-filter-syscalls",
            "--allow-new-privileges",
            "--auto-allocate-uids",
            "--start-id",
            "100000",
            "--id-count",
            "256",
            "--build-dir",
            "/var/builds",
        ])
        .unwrap()
        .build;
        assert_eq!(
            b.builder_bin.as_deref(),
            Some(std::path::Path::new("/bin/ward-builder"))
        );
        assert_eq!(b.real_store_dir, "/srv/root/nix/store");
        assert_eq!(b.build_users_group, "nixbld");
        assert_eq!(b.max_jobs, 4);
        assert_eq!(b.sandbox, SandboxMode::Relaxed);
        assert_eq!(
            b.sandbox_paths,
            vec![
                BindMount {
                    source: "/nix/store/x-busybox/bin/sh".into(),
                    target: "/bin/sh".into(),
                    optional: false
                },
                BindMount {
                    source: "/etc/ssl".into(),
                    target: "/etc/ssl".into(),
                    optional: true
                },
            ]
        );
        assert_eq!(b.sandbox_build_dir, "/tmp/build");
        assert_eq!(b.extra_platforms, ["i686-linux", "x86_64-v3-linux"]);
        assert!(!b.filter_syscalls && b.allow_new_privileges && b.auto_allocate_uids);
        assert_eq!((b.start_id, b.id_count), (100_000, 256));
        assert_eq!(
            b.build_dir.as_deref(),
            Some(std::path::Path::new("/var/builds"))
        );
        // An empty build-dir means the default.
        assert_eq!(with(&["--build-dir", ""]).unwrap().build.build_dir, None);
        assert_eq!(
            with(&["--sandbox", "false"]).unwrap().build.sandbox,
            SandboxMode::Disabled
        );
    }

    #[test]
    fn refuses_bad_build_values() {
        for bad in [
            &["--sandbox", "yes"][..],
            &["--max-jobs", "many"],
            &["--max-jobs", "-1"],
            &["--store-dir", "nix/store"],
            &["--real-store-dir", "/a/../b"],
            &["--sandbox-path", "relative"],
            &["--sandbox-path", "/a=b"],
            &["--sandbox-path", "/=/x"],
            &["--sandbox-build-dir", "/"],
            &["--system", "x86_64-linux/.."],
            &["--extra-platform", ""],
            &["--start-id", "x"],
            &["--build-dir", "rel"],
            // A mount option smuggled into the tmpfs size, or no size at all.
            &["--sandbox-dev-shm-size", "16M,exec"],
            &["--sandbox-dev-shm-size", "0"],
            &["--sandbox-dev-shm-size", ""],
            &["--build-memory-max", "1G"],
            &["--build-memory-max", "-1"],
        ] {
            assert!(
                matches!(with(bad), Err(ArgsError::Invalid(..))),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            with(&["--sandbox-path"]),
            Err(ArgsError::MissingValue("--sandbox-path".into()))
        );
        let ok = with(&[
            "--sandbox-dev-shm-size",
            "16M",
            "--build-memory-max",
            "1073741824",
        ])
        .unwrap()
        .build;
        assert_eq!(
            (ok.tmpfs_size.as_str(), ok.build_memory_max),
            ("16M", 1 << 30)
        );
    }

    #[test]
    fn sandbox_paths_parse_like_nix() {
        let m = parse_sandbox_path("/dev/kvm?").unwrap();
        assert_eq!(
            (m.target.as_str(), m.source.as_str(), m.optional),
            ("/dev/kvm", "/dev/kvm", true)
        );
        let m = parse_sandbox_path("/usr/bin/env=/nix/store/y-coreutils/bin/env").unwrap();
        assert_eq!(m.target, "/usr/bin/env");
        assert_eq!(m.source, "/nix/store/y-coreutils/bin/env");
        assert!(!m.optional);
        assert!(parse_sandbox_path("/a=/b?").unwrap().optional);
        assert!(parse_sandbox_path("").is_err());
        assert!(parse_sandbox_path("/a=").is_err());
        assert!(parse_sandbox_path("/a\0b").is_err());
    }

    #[test]
    fn root_refuses_builds_without_a_build_users_group() {
        let b = with(&["--builder", "/b"]).unwrap().build;
        let err = b.check_for(0).unwrap_err();
        assert!(err.to_string().contains("--build-users-group"), "{err}");
        assert!(
            err.to_string().contains("never runs builds as root"),
            "{err}"
        );
        // Not root: single-user builds as the broker's own uid.
        b.check_for(1000).unwrap();
        // With a group, or auto-allocated uids, root may build.
        with(&["--builder", "/b", "--build-users-group", "nixbld"])
            .unwrap()
            .build
            .check_for(0)
            .unwrap();
        with(&["--builder", "/b", "--auto-allocate-uids"])
            .unwrap()
            .build
            .check_for(0)
            .unwrap();
        // Without a builder there are no builds to refuse.
        with(&[]).unwrap().build.check_for(0).unwrap();
        let range = with(&[
            "--builder",
            "/b",
            "--auto-allocate-uids",
            "--start-id",
            "4294967295",
            "--id-count",
            "2",
        ])
        .unwrap()
        .build;
        assert!(range.check_for(0).is_err());
    }
}
