//! `ward daemon` (and `nix-daemon`, by argv0): read the command line and configuration, fail
//! before binding anything if either is wrong, take or bind the listening socket, and exec the
//! broker, which starts the frontend and the store-writer.
//!
//! This process runs as whoever started the daemon (root in multi-user mode) but reads no
//! client bytes: it only ever sees the admin's command line and nix.conf.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use ward_config::cli;
use ward_config::layout::{self, StoreLayout};

pub use ward_config::daemon::{
    load_setup, parse_passthrough, DaemonSetup, FRONTEND_USER, STORE_USER, WARD_GROUP,
};

/// Exit code for a bad command line or configuration (sysexits EX_USAGE / EX_CONFIG).
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad command line.
    #[error("{0}")]
    Cli(#[from] cli::CliError),
    /// Bad configuration.
    #[error("{0}")]
    Config(#[from] ward_config::ConfigError),
    /// A store ward cannot serve.
    #[error("{0}")]
    Layout(#[from] layout::LayoutError),
    /// The command line, settings or layout could not be read.
    #[error("{0}")]
    Daemon(#[from] ward_config::daemon::DaemonError),
    /// An I/O step failed; names the path.
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A command run during set-up failed.
    #[error("{0}")]
    Setup(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LaunchError + 'a {
    move |source| LaunchError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `ward daemon ARGS` / `nix-daemon ARGS`: `name` is how help and errors name the command.
pub fn daemon_main(name: &str, args: Vec<OsString>) -> ExitCode {
    // The children re-read the same command line, so it is passed on as given.
    let raw_args = args.clone();
    let args = match cli::parse_args(args) {
        Ok(cli::Command::Run(args)) => args,
        Ok(cli::Command::Help) => {
            println!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Version) => {
            println!("{name} (ward {}) 2.8.0", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\nTry '{name} --help' for more information.");
            return ExitCode::from(EX_USAGE);
        }
    };
    let setup = match load_setup(args, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match start(&setup, raw_args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Takes the listener from systemd, or binds the socket, then runs the broker.
fn start(setup: &DaemonSetup, raw_args: Vec<OsString>) -> Result<ExitCode, LaunchError> {
    let multi_user = is_root();
    if multi_user {
        ensure_system_setup(&setup.layout)?;
    } else {
        create_dir_all(&setup.layout.state_dir, 0o755)?;
    }
    if !setup.settings.ward_audit_log.is_empty() {
        prepare_audit_log(Path::new(&setup.settings.ward_audit_log), multi_user)?;
    }
    // Programs Nix would run for builds (as root, some of them): ward runs none of them.
    for (name, value) in [
        ("pre-build-hook", &setup.settings.pre_build_hook),
        ("diff-hook", &setup.settings.diff_hook),
        ("build-hook", &setup.settings.build_hook),
    ] {
        if !value.is_empty() {
            eprintln!(
                "ward: warning: nix.conf sets '{name} = {value}', which ward does not run \
                 (SECURITY.md, 'Trusted users')"
            );
        }
    }
    if setup.args.stdio {
        return serve_stdio(setup, raw_args, multi_user);
    }
    // The listener must stay open across exec: its descriptor is deliberately leaked here.
    // It is systemd's, launchd's (macOS: the plist's `Sockets`), or bound here.
    let inherited = match systemd_listener()? {
        Some(fd) => Some(fd),
        None => crate::launchd::listener().map_err(|e| {
            LaunchError::Setup(format!("taking the socket launchd holds for the job: {e}"))
        })?,
    };
    let listener_fd = match inherited {
        Some(fd) => fd,
        None => bind_socket(&setup.layout.socket_path)?.into_raw_fd(),
    };
    let err = broker_command(setup, listener_fd, raw_args, multi_user, None)?.exec();
    Err(LaunchError::Io {
        what: "exec",
        path: sibling_binary("ward-broker")?,
        source: err,
    })
}

/// `--stdio`: one client on stdin/stdout. The broker tree serves one end of a socketpair and
/// this process copies bytes between it and stdin/stdout, so no process that reads the
/// client's bytes keeps this process's privileges.
fn serve_stdio(
    setup: &DaemonSetup,
    raw_args: Vec<OsString>,
    multi_user: bool,
) -> Result<ExitCode, LaunchError> {
    let (ours, theirs) =
        UnixStream::pair().map_err(io_err("socketpair for", Path::new("--stdio")))?;
    let session = Some(std::process::id());
    let mut child = broker_command(setup, theirs.as_raw_fd(), raw_args, multi_user, session)?
        .spawn()
        .map_err(io_err("starting", Path::new("ward-broker")))?;
    drop(theirs);
    let mut to_daemon = ours
        .try_clone()
        .map_err(io_err("dup", Path::new("--stdio")))?;
    let mut from_daemon = ours;
    let mut stdin = std::fs::File::from(
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err("dup", Path::new("stdin")))?,
    );
    // Straight to fd 1: `io::stdout()` is line-buffered and would hold back replies that
    // contain no newline byte until its buffer filled.
    let mut stdout = std::fs::File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err("dup", Path::new("stdout")))?,
    );
    let upstream = std::thread::spawn(move || {
        pump(&mut stdin, &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    pump(&mut from_daemon, &mut stdout);
    drop(upstream);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX)),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    Ok(ExitCode::SUCCESS)
}

/// Copies `from` to `to` until end of input or an error, passing on whatever each read
/// returns at once. (`io::copy` is not used: on Linux it splices, and a blocking splice out of a
/// socket waits for more data than the client's request holds, stalling the protocol.)
fn pump(from: &mut impl io::Read, to: &mut impl io::Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The command line of the broker for this set-up; the listener (or the stdio socket) is
/// inherited as `fd`. `stdio_session` is the pid of the `--stdio` relay the broker ends with.
fn broker_command(
    setup: &DaemonSetup,
    fd: RawFd,
    raw_args: Vec<OsString>,
    multi_user: bool,
    stdio_session: Option<u32>,
) -> Result<Command, LaunchError> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| LaunchError::Io {
        what: "clearing close-on-exec of",
        path: setup.layout.socket_path.clone(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(sibling_binary("ward-broker")?);
    cmd.arg("--listen-fd")
        .arg(fd.to_string())
        .arg("--frontend")
        .arg(frontend_binary()?)
        .arg("--store-writer")
        .arg(sibling_binary("ward-store-writer")?)
        .arg("--ipc-dir")
        .arg(setup.layout.ipc_dir())
        .arg("--state-dir")
        .arg(&setup.layout.state_dir);
    if multi_user {
        cmd.args([
            "--frontend-user",
            FRONTEND_USER,
            "--store-user",
            STORE_USER,
            "--group",
            WARD_GROUP,
        ]);
    }
    build_flags(&mut cmd, setup);
    for key in &setup.settings.secret_key_files {
        cmd.arg("--secret-key-file").arg(key);
    }
    if !setup.settings.post_build_hook.is_empty() {
        cmd.arg("--post-build-hook")
            .arg(&setup.settings.post_build_hook)
            .arg("--daemon-socket")
            .arg(&setup.layout.socket_path);
    }
    if let Some(user) = &setup.args.hook_user {
        cmd.arg("--hook-user").arg(user);
    }
    if let Some(pid) = stdio_session {
        // The broker ends with this relay, also when it is killed.
        cmd.arg("--parent-pid").arg(pid.to_string());
    }
    cmd.arg("--").args(raw_args);
    if multi_user {
        // The children run unprivileged, where `build-users-group` would default to empty:
        // they must refuse the build group's processes as the root launcher decided.
        cmd.args(["--option", "build-users-group"])
            .arg(&setup.settings.build_users_group);
    }
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// The build policy from nix.conf, as broker flags (the broker decides nothing from the
/// frontend). Without the `ward-builder` binary the broker refuses builds but serves the rest.
fn build_flags(cmd: &mut Command, setup: &DaemonSetup) {
    let s = &setup.settings;
    match sibling_binary("ward-gc-roots") {
        Ok(path) => {
            cmd.arg("--gc-roots").arg(path);
        }
        Err(e) => eprintln!("ward: {e}; garbage collection and --print-roots are refused"),
    }
    match sibling_binary("ward-builder") {
        Ok(path) => {
            cmd.arg("--builder").arg(path);
        }
        Err(e) => eprintln!("ward: {e}; builds are refused"),
    }
    cmd.arg("--store-dir")
        .arg(&setup.layout.store_dir)
        .arg("--real-store-dir")
        .arg(&setup.layout.real_store_dir)
        .arg("--build-users-group")
        .arg(&s.build_users_group)
        .arg("--max-jobs")
        .arg(s.max_jobs.to_string())
        .arg("--max-build-processes")
        .arg(s.ward_build_max_processes.to_string())
        .arg("--sandbox-dev-shm-size")
        .arg(&s.sandbox_dev_shm_size)
        .arg("--build-memory-max")
        .arg(s.ward_build_memory_max.to_string())
        .arg("--sandbox")
        .arg(match s.sandbox {
            ward_config::SandboxMode::Enabled => "true",
            ward_config::SandboxMode::Relaxed => "relaxed",
            ward_config::SandboxMode::Disabled => "false",
        })
        .arg("--sandbox-build-dir")
        .arg(&s.sandbox_build_dir)
        .arg("--system")
        .arg(&s.system);
    for path in &s.sandbox_paths {
        cmd.arg("--sandbox-path").arg(path);
    }
    for platform in &s.extra_platforms {
        cmd.arg("--extra-platform").arg(platform);
    }
    if !s.filter_syscalls {
        cmd.arg("--no-filter-syscalls");
    }
    if s.allow_new_privileges {
        cmd.arg("--allow-new-privileges");
    }
    if s.auto_allocate_uids {
        cmd.arg("--auto-allocate-uids")
            .arg("--start-id")
            .arg(s.start_id.to_string())
            .arg("--id-count")
            .arg(s.id_count.to_string());
    }
    if !s.build_dir.is_empty() {
        cmd.arg("--build-dir").arg(&s.build_dir);
    }
    // Fixed-output builds get a network namespace of their own where slirp4netns is installed.
    if let Some(slirp4netns) = [
        "/usr/bin/slirp4netns",
        "/usr/local/bin/slirp4netns",
        "/bin/slirp4netns",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.is_file())
    {
        cmd.arg("--slirp4netns").arg(slirp4netns);
    }
}

/// The frontend the broker starts: `ward-frontend` beside this binary. A debug (test) build
/// honours `WARD_TEST_FRONTEND`, which puts a hostile one in its place
/// (`tests/tests/compromised_frontend.rs`); release builds have no such hook.
fn frontend_binary() -> Result<PathBuf, LaunchError> {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("WARD_TEST_FRONTEND") {
        return Ok(PathBuf::from(path));
    }
    sibling_binary("ward-frontend")
}

/// ward's helper binaries sit beside the `ward` binary.
fn sibling_binary(name: &str) -> Result<PathBuf, LaunchError> {
    let exe = std::env::current_exe().map_err(io_err("finding", Path::new("/proc/self/exe")))?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        return Err(LaunchError::Setup(format!(
            "'{}' is missing: ward's binaries must be installed side by side",
            path.display()
        )));
    }
    Ok(path)
}

/// The socket systemd passed (LISTEN_PID/LISTEN_FDS, fd 3; with several, the one named
/// `nix-daemon.socket`), checked as sd_listen_fds does. The descriptor stays where systemd put
/// it; only its number is passed on.
fn systemd_listener() -> Result<Option<RawFd>, LaunchError> {
    let Some(pid) = std::env::var_os("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(None);
    }
    let count: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| LaunchError::Setup("LISTEN_FDS is not a positive number".into()))?;
    let index = match std::env::var("LISTEN_FDNAMES") {
        Ok(names) => {
            let names: Vec<&str> = names.split(':').collect();
            if names.len() != count {
                return Err(LaunchError::Setup(format!(
                    "LISTEN_FDNAMES names {} sockets but LISTEN_FDS is {count}",
                    names.len()
                )));
            }
            names
                .iter()
                .position(|n| *n == "nix-daemon.socket")
                .unwrap_or(0)
        }
        Err(_) => 0,
    };
    let fd = 3 + RawFd::try_from(index).unwrap_or(0);
    fcntl(fd, FcntlArg::F_GETFD).map_err(|e| LaunchError::Io {
        what: "checking the socket systemd passed as",
        path: PathBuf::from(format!("fd {fd}")),
        source: e.into(),
    })?;
    Ok(Some(fd))
}

/// Binds the daemon socket: parent directories 0755, a stale socket replaced, mode 0666
/// (access is decided by peer credentials, as in Nix).
fn bind_socket(path: &Path) -> Result<UnixListener, LaunchError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent, 0o755)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
        }
        Ok(_) => {
            return Err(LaunchError::Setup(format!(
                "'{}' exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("binding the daemon socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io_err("chmod", path))?;
    Ok(listener)
}

pub(crate) fn create_dir_all(path: &Path, mode: u32) -> Result<(), LaunchError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io_err("creating directory", path))
}

/// The `useradd` arguments of ward's own users (`ward-store`, `ward-frontend`): system
/// accounts in group `ward`, without a home or a shell.
pub fn ward_account_useradd_args(user: &str) -> [&str; 11] {
    let comment = if user == STORE_USER {
        "ward store-writer (owns the Nix store)"
    } else {
        "ward frontend (serves Nix clients)"
    };
    [
        "--system",
        "--gid",
        WARD_GROUP,
        "--no-create-home",
        "--home-dir",
        "/var/empty",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        comment,
        user,
    ]
}

pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<(), LaunchError> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| LaunchError::Setup(format!("running {program}: {e}")))?;
    if !status.success() {
        return Err(LaunchError::Setup(format!(
            "{program} {} failed: {status}",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Creates (once) the system group and users, and gives the store owner the top directories of
/// the store. Existing contents made by a root Nix daemon stay root-owned and readable; the DB
/// directory and the store directory itself must be the store owner's.
pub fn ensure_system_setup(layout: &StoreLayout) -> Result<(), LaunchError> {
    let group_exists = || {
        nix::unistd::Group::from_name(WARD_GROUP)
            .ok()
            .flatten()
            .is_some()
    };
    // Another ward starting at the same moment may create them first: a failed tool is only
    // an error if the account still does not exist.
    if !group_exists() {
        if let Err(e) = run_tool("groupadd", &["--system", WARD_GROUP]) {
            if !group_exists() {
                return Err(e);
            }
        }
    }
    for user in [STORE_USER, FRONTEND_USER] {
        let user_exists = || nix::unistd::User::from_name(user).ok().flatten().is_some();
        if !user_exists() {
            let created = run_tool("useradd", &ward_account_useradd_args(user));
            if let Err(e) = created {
                if !user_exists() {
                    return Err(e);
                }
            }
        }
    }
    let owner = nix::unistd::User::from_name(STORE_USER)
        .ok()
        .flatten()
        .ok_or_else(|| LaunchError::Setup(format!("user '{STORE_USER}' is missing")))?;
    let group = nix::unistd::Group::from_name(WARD_GROUP)
        .ok()
        .flatten()
        .ok_or_else(|| LaunchError::Setup(format!("group '{WARD_GROUP}' is missing")))?;
    let db_dir = layout.state_dir.join("db");
    for dir in [
        &layout.real_store_dir,
        &layout.state_dir,
        &layout.log_dir,
        &db_dir,
        &layout.ipc_dir(),
    ] {
        create_dir_all(dir, 0o755)?;
    }
    for path in paths_the_store_owner_owns(layout)? {
        nix::unistd::fchownat(
            None,
            &path,
            Some(owner.uid),
            Some(group.gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| LaunchError::Io {
            what: "chown",
            path: path.clone(),
            source: e.into(),
        })?;
    }
    check_reachable(&layout.real_store_dir)?;
    check_reachable(&layout.state_dir)?;
    Ok(())
}

/// Everything the store-writer writes, which must be the store owner's, also in a state tree a
/// root nix-daemon made: the directories (not their users' contents, never through a
/// symlink) and the files it rewrites in place (the DB and its companions, temporary roots,
/// the per-derivation log directories: build logs are replaced by rename). Users' own
/// directories under `per-user/` keep their owners. Only what exists is listed.
pub fn paths_the_store_owner_owns(layout: &StoreLayout) -> Result<Vec<PathBuf>, LaunchError> {
    let state = &layout.state_dir;
    let db_dir = state.join("db");
    let mut out = Vec::new();
    for dir in [
        layout.real_store_dir.clone(),
        state.clone(),
        layout.log_dir.clone(),
        layout.ipc_dir(),
        db_dir.clone(),
        state.join("gcroots"),
        state.join("gcroots/auto"),
        state.join("gcroots/per-user"),
        state.join("profiles"),
        state.join("profiles/per-user"),
        state.join("temproots"),
        state.join("userpool"),
        layout.log_dir.join("drvs"),
    ] {
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => out.push(dir),
            _ => {}
        }
    }
    for (dir, files_too) in [
        (&db_dir, true),
        (state, true),
        (&state.join("temproots"), true),
        (&layout.log_dir.join("drvs"), false),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("checking", &path))?;
            // Only the state dir's own files (gc.lock), not its subdirectories' trees.
            let is_state_subdir = dir == state && meta.is_dir();
            if (meta.is_dir() && !is_state_subdir) || (files_too && meta.is_file()) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Creates the audit log (`ward-audit-log`) if missing: as root, its directory 0750 and the
/// file 0620, both group `ward`, so ward's processes may append but not read it; in
/// single-user mode, 0700 and 0600. An existing file keeps its owner and mode; a symlink or
/// anything but a regular file is refused.
fn prepare_audit_log(path: &Path, multi_user: bool) -> Result<(), LaunchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let setting = |detail: String| {
        LaunchError::Setup(format!(
            "the audit log '{}' (setting 'ward-audit-log'): {detail}",
            path.display()
        ))
    };
    if !path.is_absolute() {
        return Err(setting("must be an absolute path".into()));
    }
    let group = if multi_user {
        Some(
            nix::unistd::Group::from_name(WARD_GROUP)
                .ok()
                .flatten()
                .ok_or_else(|| setting(format!("group '{WARD_GROUP}' is missing")))?
                .gid,
        )
    } else {
        None
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            create_dir_all(dir, if multi_user { 0o750 } else { 0o700 })?;
            if let Some(gid) = group {
                nix::unistd::chown(dir, None, Some(gid)).map_err(|e| LaunchError::Io {
                    what: "chown",
                    path: dir.to_path_buf(),
                    source: e.into(),
                })?;
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(_) => return Err(setting("exists and is not a regular file".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking", path)(e)),
    }
    let mode = if multi_user { 0o620 } else { 0o600 };
    std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("creating the audit log", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| LaunchError::Io {
            what: "chown",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// ward's users must be able to walk down to `dir`: every ancestor needs the search bit for
/// others (they are neither root nor in root's group).
pub(crate) fn check_reachable(dir: &Path) -> Result<(), LaunchError> {
    let mut current = Some(dir);
    while let Some(path) = current {
        let meta = std::fs::metadata(path).map_err(io_err("checking", path))?;
        let mode = meta.permissions().mode();
        if meta.is_dir() && mode & 0o001 == 0 && path != dir {
            return Err(LaunchError::Setup(format!(
                "'{}' (mode {:o}) is not searchable by ward's users '{FRONTEND_USER}' and \
                 '{STORE_USER}'; allow it with 'chmod o+x {}'",
                path.display(),
                mode & 0o7777,
                path.display()
            )));
        }
        current = path.parent();
    }
    Ok(())
}
