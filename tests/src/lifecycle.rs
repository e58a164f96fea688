//! Helpers for the process-level tests (`tests/lifecycle.rs`, `tests/activation.rs`,
//! `tests/options.rs`): ward's process tree as `/proc` shows it, killing one of its
//! processes, starting `ward` by hand (own environment, another argv0, a wrapper such as
//! `systemd-socket-activate`, `--stdio` on pipes), and running the Nix client with exactly
//! the arguments a test gives (no `--option substituters ''` appended).
//!
//! Like the rest of the harness this does not depend on ward's crates: processes are found by
//! their program name in `/proc/PID/cmdline`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::daemon::descendants;
use crate::nixcmd::CmdOutput;
use crate::wire::WorkerClient;

/// Program name of ward's frontend.
pub const FRONTEND: &str = "ward-frontend";
/// Program name of ward's store-writer.
pub const STORE_WRITER: &str = "ward-store-writer";
/// Program name of ward's broker.
pub const BROKER: &str = "ward-broker";

/// How long a hand-started daemon may take to serve its first handshake.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one readiness probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The program name of a process: the last component of `argv[0]` (`/proc/PID/cmdline`).
/// `None` for a process that is gone, a zombie, or a kernel thread.
pub fn program_name(pid: u32) -> Option<String> {
    if process_state(pid) == Some('Z') {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    if argv0.is_empty() {
        // Right after exec the command line can read as empty for a moment; the executable
        // link is already the new one.
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let name = exe.file_name()?.to_string_lossy().into_owned();
        return Some(name.trim_end_matches(" (deleted)").to_string());
    }
    let argv0 = String::from_utf8_lossy(argv0);
    Some(argv0.rsplit('/').next().unwrap_or(&argv0).to_string())
}

/// The one-letter state of a process (`R`, `S`, `Z`, ...) from `/proc/PID/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

/// Live (non-zombie) processes named `name` in the tree under `root`, `root` included.
pub fn processes_named(root: u32, name: &str) -> Vec<u32> {
    descendants(root)
        .into_iter()
        .filter(|&pid| program_name(pid).as_deref() == Some(name))
        .collect()
}

/// The single live process named `name` under `root`; `None` when there is none. Panics when
/// there are several (ward runs one frontend and one store-writer).
pub fn single_process_named(root: u32, name: &str) -> Option<u32> {
    let found = processes_named(root, name);
    assert!(
        found.len() <= 1,
        "expected at most one '{name}' under pid {root}, found {found:?}"
    );
    found.first().copied()
}

/// Waits until a live process named `name` runs under `root` whose pid is not `other_than`,
/// and returns its pid. `Err` says what was seen when `timeout` ran out.
pub fn wait_for_process(
    root: u32,
    name: &str,
    other_than: Option<u32>,
    timeout: Duration,
) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = processes_named(root, name);
        if let Some(&pid) = found.iter().find(|&&pid| Some(pid) != other_than) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no '{name}' other than {other_than:?} under pid {root} after {timeout:?} \
                 (found {found:?}; tree {:?})",
                descendants(root)
                    .into_iter()
                    .map(|p| (p, program_name(p)))
                    .collect::<Vec<_>>()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to one process.
pub fn kill_9(pid: u32) {
    let raw = i32::try_from(pid).expect("pid fits in i32");
    kill(Pid::from_raw(raw), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

/// Whether a process with this pid is alive (and not a zombie).
pub fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && process_state(pid) != Some('Z')
}

/// A small deterministic pseudo-random generator (xorshift64*), seeded from the clock unless
/// `WARD_E2E_SEED` is set; tests print the seed so a failing run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    /// The seed this generator started from.
    pub seed: u64,
}

impl Rng {
    /// A generator seeded from `WARD_E2E_SEED` or the clock.
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var("WARD_E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1);
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            });
        Rng::new(seed)
    }

    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed.max(1),
            seed,
        }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A scratch directory (mode 0755) for a daemon started by hand: its `nix.conf` directories,
/// home, chroot store and logs.
#[derive(Debug)]
pub struct Scratch {
    tmp: TempDir,
}

impl Scratch {
    /// A fresh scratch directory whose name mentions `label`.
    pub fn new(label: &str) -> Scratch {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("ward-life-{label}-"))
            .tempdir()
            .expect("creating a temporary directory");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod temporary directory");
        Scratch { tmp }
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A directory `name` holding a `nix.conf` with `contents`; returns the directory (for
    /// `NIX_CONF_DIR`).
    pub fn conf_dir(&self, name: &str, contents: &str) -> PathBuf {
        let dir = self.dir(name);
        fs::write(dir.join("nix.conf"), contents).expect("writing nix.conf");
        fs::set_permissions(dir.join("nix.conf"), fs::Permissions::from_mode(0o644))
            .expect("chmod nix.conf");
        dir
    }

    /// A new directory (mode 0755) under the scratch directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    /// Root of a chroot store `name` (not created: the daemon creates it).
    pub fn store_root(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        crate::make_removable(self.tmp.path());
    }
}

/// The default socket of a single-user daemon on the chroot store `root`.
pub fn chroot_socket(root: &Path) -> PathBuf {
    root.join("nix/var/nix/daemon-socket/socket")
}

/// The client store URL for a chroot store served on `socket`.
pub fn chroot_url(socket: &Path, root: &Path) -> String {
    format!("unix://{}?root={}", socket.display(), root.display())
}

/// A `Command` for `program` with an isolated environment: only `PATH`, `HOME` (`home`) and
/// `NIX_CONF_DIR` (`conf_dir`), plus `RUST_BACKTRACE`, in its own process group so it can be
/// killed as a whole. Should the test process die, `setpriv --pdeathsig KILL` takes the
/// program with it (when `setpriv` is installed).
pub fn isolated_command(program: &Path, conf_dir: &Path, home: &Path) -> Command {
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
        .env("NIX_CONF_DIR", conf_dir)
        .env("RUST_BACKTRACE", "1")
        .current_dir(home)
        .process_group(0);
    cmd
}

fn setpriv_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("setpriv")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Describes a command for failure messages.
fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let env: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    format!("{} {}", env.join(" "), words.join(" "))
}

/// Runs `cmd` to completion (killing it after `timeout`) and returns what it did.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let description = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
    let mut stdout_pipe = child.stdout.take().expect("stdout pipe");
    let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
    let stdout_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut buf);
        buf
    });
    let stderr_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });
    let status = wait_with_deadline(&mut child, timeout).unwrap_or_else(|| {
        kill_tree(child.id());
        let _ = child.wait();
        panic!("{description} did not exit within {timeout:?}; killed it");
    });
    // Whatever the program left running (a daemon it started) must not outlive the test.
    kill_tree(child.id());
    let stdout = stdout_thread.join().unwrap_or_default();
    let stderr = stderr_thread.join().unwrap_or_default();
    CmdOutput {
        command: description,
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() > deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// SIGKILL to the process group led by `leader` and to every descendant of it.
fn kill_tree(leader: u32) {
    let tree = descendants(leader);
    if let Ok(raw) = i32::try_from(leader) {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    }
    for pid in tree {
        if let Ok(raw) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// A daemon (or a wrapper running one) started by hand, its stdout and stderr going to a log
/// file. Dropping it kills its whole process tree and prints the log if the test failed.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    log_path: PathBuf,
    description: String,
}

impl Running {
    /// Starts `cmd` with stdin from /dev/null and stdout/stderr into `log_path`.
    pub fn spawn(mut cmd: Command, log_path: &Path) -> Running {
        let description = describe(&cmd);
        let log = fs::File::create(log_path).expect("creating the daemon log");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
        Running {
            child: Some(child),
            log_path: log_path.to_path_buf(),
            description,
        }
    }

    /// Pid of the process started.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until a client gets through the handshake on `socket`; panics with the log if the
    /// process exits first or the time runs out.
    pub fn wait_serving(&mut self, socket: &Path) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited with {status} before serving on {}; its log:\n{}",
                    self.description,
                    socket.display(),
                    self.log()
                );
            }
            let last = match WorkerClient::handshake_with_timeout(socket, PROBE_TIMEOUT) {
                Ok(client) => {
                    client.hang_up();
                    return;
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "{} did not serve on {} within {STARTUP_TIMEOUT:?} (last attempt: {last}); \
                     its log:\n{}",
                    self.description,
                    socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_with_deadline(self.child.as_mut()?, timeout)
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for_log_text(|| self.log(), needle, timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}\n---- end of log ----",
                self.description,
                self.log()
            );
        }
    }
}

/// Polls `read_log` until it contains `needle`; returns the log then, panics after `timeout`.
pub fn wait_for_log_text(read_log: impl Fn() -> String, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = read_log();
        if log.contains(needle) {
            return log;
        }
        if Instant::now() > deadline {
            panic!("the log does not mention '{needle}' after {timeout:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ward daemon --stdio …` with its stdin and stdout on pipes, made reachable for
/// [`WorkerClient`] through a relay: a listening socket whose single accepted connection is
/// copied to the daemon's stdin and from its stdout.
#[derive(Debug)]
pub struct StdioDaemon {
    child: Option<Child>,
    /// The relay's socket: connect here once.
    pub relay_socket: PathBuf,
    relay: Option<JoinHandle<()>>,
    log_path: PathBuf,
}

impl StdioDaemon {
    /// Starts `cmd` (which must include `--stdio`) with piped stdin/stdout and stderr into
    /// `log_path`; the relay listens on `relay_socket`.
    pub fn spawn(mut cmd: Command, relay_socket: &Path, log_path: &Path) -> StdioDaemon {
        let description = describe(&cmd);
        let log = fs::File::create(log_path).expect("creating the daemon log");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let listener = UnixListener::bind(relay_socket).expect("binding the relay socket");
        let relay = std::thread::spawn(move || relay_one(listener, stdin, stdout));
        StdioDaemon {
            child: Some(child),
            relay_socket: relay_socket.to_path_buf(),
            relay: Some(relay),
            log_path: log_path.to_path_buf(),
        }
    }

    /// Pid of `ward daemon --stdio`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for `ward daemon --stdio` to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_with_deadline(self.child.as_mut()?, timeout);
        if status.is_some() {
            if let Some(relay) = self.relay.take() {
                let _ = relay.join();
            }
        }
        status
    }
}

impl Drop for StdioDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of ward daemon --stdio ----\n{}\n---- end ----",
                self.log()
            );
        }
    }
}

/// Accepts one connection and copies it to `stdin` / from `stdout` until either side ends.
fn relay_one(listener: UnixListener, mut stdin: ChildStdin, mut stdout: ChildStdout) {
    let Ok((conn, _)) = listener.accept() else {
        return;
    };
    drop(listener);
    let Ok(mut to_client) = conn.try_clone() else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let mut from_client: UnixStream = conn;
        copy_until_closed(&mut from_client, &mut stdin);
        // Closing the daemon's stdin is how the client's hang-up reaches it.
        drop(stdin);
    });
    copy_until_closed(&mut stdout, &mut to_client);
    let _ = to_client.shutdown(std::net::Shutdown::Both);
    let _ = upstream.join();
}

fn copy_until_closed(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() || to.flush().is_err() {
                    return;
                }
            }
        }
    }
}

/// How to run the Nix client for [`run_nix`]: its own `HOME` and `NIX_CONF_DIR`, the store
/// URL, extra environment (a multi-user store's `NIX_STORE_DIR` ...), and optionally another
/// user (through `setpriv`; root only).
#[derive(Debug, Clone)]
pub struct NixEnv {
    /// `HOME` (and the XDG directories under it).
    pub home: PathBuf,
    /// `NIX_CONF_DIR`.
    pub conf_dir: PathBuf,
    /// `NIX_REMOTE`.
    pub store_url: String,
    /// Further variables.
    pub extra_env: Vec<(String, String)>,
    /// Run as this user instead of the test's own.
    pub user: Option<nix::unistd::User>,
}

impl NixEnv {
    /// A client environment in `dir/home` and `dir/conf` (with `conf` as its nix.conf) for
    /// `store_url`; both directories are given to `user` when one is named.
    pub fn new(
        dir: &Path,
        conf: &str,
        store_url: &str,
        extra_env: Vec<(String, String)>,
        user: Option<nix::unistd::User>,
    ) -> NixEnv {
        let home = dir.join("home");
        let conf_dir = dir.join("conf");
        for d in [dir, &home, &conf_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fs::write(conf_dir.join("nix.conf"), conf).expect("writing the client's nix.conf");
        if let Some(user) = &user {
            for path in [&home, &conf_dir, &conf_dir.join("nix.conf")] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), user.name));
            }
        }
        NixEnv {
            home,
            conf_dir,
            store_url: store_url.to_string(),
            extra_env,
            user,
        }
    }
}

/// Runs a Nix program with exactly `args` (nothing appended) in the isolated environment
/// `env`.
pub fn run_nix(program: &str, args: &[&str], env: &NixEnv) -> CmdOutput {
    let mut cmd = match &env.user {
        None => Command::new(program),
        Some(user) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups")
                .arg(program);
            cmd
        }
    };
    let path: OsString = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let home = &env.home;
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("NIX_CONF_DIR", &env.conf_dir)
        .env("NIX_REMOTE", &env.store_url)
        .env("TERM", "dumb")
        .envs(env.extra_env.iter().map(|(k, v)| (k, v)))
        .current_dir(home);
    if let Some(user) = &env.user {
        cmd.env("USER", &user.name).env("LOGNAME", &user.name);
    }
    run_to_exit(cmd, Duration::from_secs(30))
}

/// Runs `one(index, seed)` on `count` threads, each with its own seed from `seeds`; returns
/// the sum of what they return, or panics with every thread's failure and the seed.
pub fn on_daemons(count: usize, seeds: &mut Rng, one: fn(usize, u64) -> usize) -> usize {
    let workers: Vec<_> = (0..count)
        .map(|index| {
            let seed = seeds.next_u64();
            std::thread::spawn(move || one(index, seed))
        })
        .collect();
    let mut failures = Vec::new();
    let mut total = 0;
    for (index, worker) in workers.into_iter().enumerate() {
        match worker.join() {
            Ok(n) => total += n,
            Err(panic) => failures.push(format!(
                "daemon {index}: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "seed {}:\n{}",
        seeds.seed,
        failures.join("\n")
    );
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_name_is_the_last_component_of_argv0() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        assert_eq!(program_name(child.id()).as_deref(), Some("sleep"));
        let me = std::process::id();
        assert_eq!(processes_named(me, "sleep"), vec![child.id()]);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert_eq!(program_name(child.id()), None);
        assert!(!is_alive(child.id()));
    }

    #[test]
    fn rng_is_deterministic_per_seed_and_bounded() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.below(51)).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.below(51)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 51));
        assert_eq!(Rng::new(7).bytes(13).len(), 13);
        assert_ne!(Rng::new(1).bytes(16), Rng::new(2).bytes(16));
    }

    #[test]
    fn run_to_exit_reports_status_and_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_to_exit(cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr, "err\n");
    }
}
