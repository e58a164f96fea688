//! Starting and stopping a daemon under test.
//!
//! Single-user: `ward daemon --store DIR` as the invoking user on a fresh temporary DIR.
//! Multi-user (root): `ward daemon` with `NIX_STORE_DIR`, `NIX_STATE_DIR`, `NIX_LOG_DIR`,
//! `NIX_CONF_DIR` and `NIX_DAEMON_SOCKET_PATH` pointing into a fresh temporary directory.
//! The daemon's stdout and stderr go to a log file that is printed when the test fails; the
//! daemon's whole process tree is killed when the [`WardDaemon`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::wire::WorkerClient;

/// How long a daemon may take to serve its first handshake after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one readiness probe waits for the daemon's side of the handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a daemon gets to exit after SIGTERM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How much of the end of the daemon log is printed when a test fails.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// Single-user (any user, chroot store) or multi-user (root, privilege-separated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ward daemon --store DIR`.
    SingleUser,
    /// `ward daemon` as root with `NIX_*` variables naming a temporary store.
    MultiUser,
}

/// Which daemon program is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// ward (the default).
    Ward,
    /// Debian's real `nix-daemon`, to check the tests themselves (`WARD_E2E_DAEMON=nix-daemon`).
    NixDaemon,
}

impl DaemonKind {
    /// Reads `WARD_E2E_DAEMON` (`ward`, the default, or `nix-daemon`).
    pub fn from_env() -> DaemonKind {
        match std::env::var("WARD_E2E_DAEMON").as_deref() {
            Ok("nix-daemon") => DaemonKind::NixDaemon,
            Ok("ward") | Ok("") | Err(_) => DaemonKind::Ward,
            Ok(other) => panic!("WARD_E2E_DAEMON must be 'ward' or 'nix-daemon', not '{other}'"),
        }
    }
}

/// Where a daemon's store lives, logically and on disk.
#[derive(Debug, Clone)]
pub struct StoreLayout {
    /// The store directory as clients name it (`/nix/store` for a chroot store).
    pub logical_store_dir: String,
    /// The store directory on disk.
    pub real_store_dir: PathBuf,
    /// The state directory on disk (`…/nix/var/nix`), holding `db/db.sqlite`.
    pub state_dir: PathBuf,
    /// The log directory on disk.
    pub log_dir: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The chroot store root (single-user mode only).
    pub chroot: Option<PathBuf>,
}

impl StoreLayout {
    /// Path of the Nix database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("db").join("db.sqlite")
    }

    /// On-disk location of a store path given by its logical name.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        let prefix = format!("{}/", self.logical_store_dir);
        let base = store_path.strip_prefix(&prefix).unwrap_or_else(|| {
            panic!("'{store_path}' is not under the store directory '{prefix}'")
        });
        self.real_store_dir.join(base)
    }

    /// The store URL clients use (`unix://SOCKET?root=DIR` for a chroot store).
    pub fn client_url(&self) -> String {
        match &self.chroot {
            Some(root) => format!("unix://{}?root={}", self.socket.display(), root.display()),
            None => format!("unix://{}", self.socket.display()),
        }
    }

    /// Environment a client needs besides the URL (the store and state dirs of a non-default
    /// multi-user store, so store paths are computed the same way).
    pub fn client_env(&self) -> Vec<(String, String)> {
        match &self.chroot {
            Some(_) => Vec::new(),
            None => vec![
                ("NIX_STORE_DIR".into(), self.logical_store_dir.clone()),
                ("NIX_STATE_DIR".into(), self.state_dir.display().to_string()),
                ("NIX_LOG_DIR".into(), self.log_dir.display().to_string()),
            ],
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    mode: Mode,
    conf: Vec<String>,
    args: Vec<String>,
    socket_path: Option<PathBuf>,
    store_root: Option<PathBuf>,
    env: Vec<(String, OsString)>,
}

impl DaemonOptions {
    /// A single-user daemon on a chroot store; the invoking user is trusted.
    pub fn single_user() -> DaemonOptions {
        DaemonOptions {
            mode: Mode::SingleUser,
            conf: Vec::new(),
            args: Vec::new(),
            socket_path: None,
            store_root: None,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the daemon (its environment is cleared otherwise).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<OsString>) -> DaemonOptions {
        self.env.push((name.into(), value.into()));
        self
    }

    /// A multi-user daemon (root only); only root is trusted.
    pub fn multi_user() -> DaemonOptions {
        DaemonOptions {
            mode: Mode::MultiUser,
            ..DaemonOptions::single_user()
        }
    }

    /// Appends a line to the daemon's `nix.conf` (later lines override earlier ones).
    pub fn conf(mut self, line: impl Into<String>) -> DaemonOptions {
        self.conf.push(line.into());
        self
    }

    /// Makes every client untrusted: `trusted-users` names nobody who exists.
    pub fn untrusted(self) -> DaemonOptions {
        self.conf("trusted-users = ward-e2e-nobody")
    }

    /// Appends a command-line argument after `ward daemon`.
    pub fn arg(mut self, arg: impl Into<String>) -> DaemonOptions {
        self.args.push(arg.into());
        self
    }

    /// Listens on this socket instead of the default one (`--socket-path`).
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> DaemonOptions {
        self.socket_path = Some(path.into());
        self
    }

    /// Serves an existing chroot store at `root` (single-user) instead of a fresh one; the
    /// store is left in place when the daemon is dropped.
    pub fn store_root(mut self, root: impl Into<PathBuf>) -> DaemonOptions {
        assert_eq!(
            self.mode,
            Mode::SingleUser,
            "an existing store root is for single-user mode"
        );
        self.store_root = Some(root.into());
        self
    }

    /// The mode chosen.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// Candidates for the `ward` binary, best first.
fn ward_bin_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("WARD_BIN") {
        candidates.push(PathBuf::from(path));
        return candidates;
    }
    // The test executable is <target>/debug/deps/<test>-<hash>.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("ward"));
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug").join("ward"));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(workspace.join("target").join("debug").join("ward"));
    candidates
}

/// The `ward` binary (`WARD_BIN`, next to the test executable's profile directory,
/// `$CARGO_TARGET_DIR/debug`, or `<workspace>/target/debug`). Panics naming every place looked
/// at when it is missing: a missing daemon is a failure, not a skip.
pub fn ward_bin() -> PathBuf {
    let candidates = ward_bin_candidates();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    let listed: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    panic!(
        "ward binary not found at {}; build it with `cargo build --workspace` (or set WARD_BIN)",
        listed.join(", ")
    );
}

/// A running daemon with its temporary store. Dropping it kills the daemon's process tree and
/// removes the store.
#[derive(Debug)]
pub struct WardDaemon {
    child: Option<Child>,
    kind: DaemonKind,
    program: PathBuf,
    options: DaemonOptions,
    mode: Mode,
    layout: StoreLayout,
    log_path: PathBuf,
    conf_dir: PathBuf,
    home: PathBuf,
    // Last field: removed after the daemon was stopped.
    tmp: TempDir,
}

impl WardDaemon {
    /// Starts a daemon and waits until its socket accepts connections.
    pub fn start(options: DaemonOptions) -> WardDaemon {
        let kind = DaemonKind::from_env();
        let program = match kind {
            DaemonKind::Ward => ward_bin(),
            DaemonKind::NixDaemon => PathBuf::from("nix-daemon"),
        };
        // As root, `ward daemon` itself creates its users (ward-frontend, ward-store) and group.
        if options.mode == Mode::MultiUser {
            assert!(crate::is_root(), "a multi-user daemon needs root");
        }
        let tmp = tempfile::Builder::new()
            .prefix("ward-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        // Multi-user: other users (the test user, ward's own users) must reach the socket and
        // the store inside it.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod temporary directory");
        let root = tmp.path().to_path_buf();
        let conf_dir = root.join("daemon-conf");
        let home = root.join("daemon-home");
        for dir in [&conf_dir, &home] {
            fs::create_dir_all(dir).expect("creating daemon directories");
        }
        let mut conf =
            String::from("substituters =\nsandbox = false\nexperimental-features = nix-command\n");
        match options.mode {
            Mode::SingleUser => {
                conf.push_str(&format!("trusted-users = {}\n", crate::current_user_name()))
            }
            Mode::MultiUser => conf.push_str("trusted-users = root\n"),
        }
        for line in &options.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(conf_dir.join("nix.conf"), conf).expect("writing the daemon's nix.conf");
        fs::set_permissions(&conf_dir, fs::Permissions::from_mode(0o755)).expect("chmod conf dir");

        let layout = match options.mode {
            Mode::SingleUser => {
                let store_root = options
                    .store_root
                    .clone()
                    .unwrap_or_else(|| root.join("store"));
                let state_dir = store_root.join("nix/var/nix");
                StoreLayout {
                    logical_store_dir: "/nix/store".into(),
                    real_store_dir: store_root.join("nix/store"),
                    socket: options
                        .socket_path
                        .clone()
                        .unwrap_or_else(|| state_dir.join("daemon-socket/socket")),
                    state_dir,
                    log_dir: store_root.join("nix/var/log/nix"),
                    chroot: Some(store_root),
                }
            }
            Mode::MultiUser => StoreLayout {
                logical_store_dir: root.join("store").display().to_string(),
                real_store_dir: root.join("store"),
                state_dir: root.join("var/nix"),
                log_dir: root.join("var/log/nix"),
                socket: options
                    .socket_path
                    .clone()
                    .unwrap_or_else(|| root.join("daemon-socket/socket")),
                chroot: None,
            },
        };

        if kind == DaemonKind::NixDaemon && options.mode == Mode::MultiUser {
            // nix-daemon's "auto" store picks the daemon (itself, recursively) when the state
            // directory does not exist yet but the socket does. ward creates its directories.
            fs::create_dir_all(&layout.state_dir).expect("creating the state directory");
        }
        let log_path = root.join("daemon.log");
        let mut daemon = WardDaemon {
            child: None,
            kind,
            program,
            mode: options.mode,
            options,
            layout,
            log_path,
            conf_dir,
            home,
            tmp,
        };
        daemon.spawn();
        daemon
    }

    /// Stops the daemon and starts it again on the same store, socket and configuration (the
    /// log goes on in the same file).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the daemon process and waits until it serves.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the daemon log");
        let (program, home, layout, options) =
            (&self.program, &self.home, &self.layout, &self.options);
        // setpriv --pdeathsig: should the test process die without dropping the daemon (a
        // killed `cargo test`), the daemon dies with it instead of lingering.
        let mut cmd = if setpriv_available() {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NIX_CONF_DIR", &self.conf_dir)
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .process_group(0);
        if let Some(filter) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        for (name, value) in &options.env {
            cmd.env(name, value);
        }
        match (self.kind, options.mode) {
            (DaemonKind::Ward, Mode::SingleUser) => {
                let chroot = layout.chroot.as_ref().expect("chroot");
                cmd.arg("daemon").arg("--store").arg(chroot);
                if let Some(socket) = &options.socket_path {
                    cmd.arg("--socket-path").arg(socket);
                }
            }
            (DaemonKind::NixDaemon, Mode::SingleUser) => {
                let chroot = layout.chroot.as_ref().expect("chroot");
                cmd.arg("--store")
                    .arg(chroot)
                    .env("NIX_DAEMON_SOCKET_PATH", &layout.socket);
            }
            (kind, Mode::MultiUser) => {
                if kind == DaemonKind::Ward {
                    cmd.arg("daemon");
                }
                cmd.env("NIX_STORE_DIR", &layout.logical_store_dir)
                    .env("NIX_STATE_DIR", &layout.state_dir)
                    .env("NIX_LOG_DIR", &layout.log_dir)
                    .env("NIX_DAEMON_SOCKET_PATH", &layout.socket);
            }
        }
        if std::env::var_os("WARD_E2E_DEBUG").is_some_and(|v| !v.is_empty()) {
            cmd.arg("--debug");
        }
        cmd.args(&options.args);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        self.child = Some(child);
        self.wait_for_socket();
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "the daemon exited with {status} before its socket {} accepted \
                         connections; its log:\n{}",
                        self.layout.socket.display(),
                        self.log_tail()
                    );
                }
            }
            // Ready means serving: a client gets through the handshake, not just connect().
            let last_error = match UnixStream::connect(&self.layout.socket) {
                Ok(_) => {
                    match WorkerClient::handshake_with_timeout(&self.layout.socket, PROBE_TIMEOUT) {
                        Ok(client) => {
                            client.hang_up();
                            return;
                        }
                        Err(e) => format!("handshake: {e}"),
                    }
                }
                Err(e) => format!("connect: {e}"),
            };
            if Instant::now() > deadline {
                panic!(
                    "the daemon on {} did not serve a handshake within {:?} (last attempt: \
                     {last_error}); its log:\n{}",
                    self.layout.socket.display(),
                    STARTUP_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Which daemon program runs.
    pub fn kind(&self) -> DaemonKind {
        self.kind
    }

    /// Single- or multi-user.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where its store is.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    /// The directory holding the daemon's `nix.conf`.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// A scratch directory that lives as long as the daemon.
    pub fn scratch_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Pid of the process started (`ward daemon`), if it is still running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the started process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The whole daemon log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The end of the daemon log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        if log.len() <= LOG_TAIL_BYTES {
            return log;
        }
        let mut start = log.len() - LOG_TAIL_BYTES;
        while !log.is_char_boundary(start) {
            start += 1;
        }
        format!("[… {start} bytes cut …]\n{}", &log[start..])
    }

    /// All live processes descended from the started process, itself included.
    pub fn process_tree(&self) -> Vec<u32> {
        match self.pid() {
            Some(pid) => descendants(pid),
            None => Vec::new(),
        }
    }

    /// Stops the daemon: SIGTERM to its process group and every descendant, SIGKILL after a
    /// grace period. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let tree = descendants(pid);
        signal_tree(pid, &tree, Signal::SIGTERM);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the tree (including children that changed their process
        // group) is killed outright.
        let mut rest: BTreeSet<u32> = tree.into_iter().collect();
        rest.extend(descendants(pid));
        signal_tree(pid, &rest.into_iter().collect::<Vec<_>>(), Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for WardDaemon {
    fn drop(&mut self) {
        self.stop();
        if crate::keep_scratch() {
            self.tmp.disable_cleanup(true);
            crate::notice(&format!(
                "kept daemon directory {}",
                self.tmp.path().display()
            ));
            return;
        }
        crate::make_removable(self.tmp.path());
        if std::thread::panicking() {
            eprintln!(
                "---- daemon log ({}) ----\n{}\n---- end of daemon log ----",
                self.log_path.display(),
                self.log_tail()
            );
        }
    }
}

fn setpriv_available() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal_tree(group_leader: u32, pids: &[u32], signal: Signal) {
    if let Ok(pid) = i32::try_from(group_leader) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
    for &pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// Parent pid of every process, from `/proc/*/stat`.
fn parent_map() -> BTreeMap<u32, u32> {
    let mut parents = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may itself contain spaces or ')'.
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after_comm.split_whitespace();
        let _state = fields.next();
        if let Some(ppid) = fields.next().and_then(|s| s.parse::<u32>().ok()) {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// `root` and all its live descendants.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents = parent_map();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        for (&pid, &ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        index += 1;
    }
    found.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_the_root_and_its_children() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let me = std::process::id();
        let tree = descendants(me);
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "{tree:?} lacks {}", child.id());
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn real_path_maps_logical_names() {
        let layout = StoreLayout {
            logical_store_dir: "/nix/store".into(),
            real_store_dir: "/tmp/x/nix/store".into(),
            state_dir: "/tmp/x/nix/var/nix".into(),
            log_dir: "/tmp/x/nix/var/log/nix".into(),
            socket: "/tmp/x/s".into(),
            chroot: Some("/tmp/x".into()),
        };
        assert_eq!(
            layout.real_path("/nix/store/abc-x"),
            PathBuf::from("/tmp/x/nix/store/abc-x")
        );
        assert_eq!(layout.client_url(), "unix:///tmp/x/s?root=/tmp/x");
        assert_eq!(
            layout.db_path(),
            PathBuf::from("/tmp/x/nix/var/nix/db/db.sqlite")
        );
    }
}
