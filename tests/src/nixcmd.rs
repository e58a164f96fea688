//! Running the real Nix client in an isolated environment.
//!
//! Every command gets its own `NIX_CONF_DIR` (a `nix.conf` with `substituters =`,
//! `sandbox = false`, `experimental-features = nix-command`), `HOME` and XDG directories inside
//! the test's temporary directory, `NIX_REMOTE` naming the store under test, and
//! `--option substituters ''` on its command line, so nothing leaks in from the machine.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::daemon::WardDaemon;

/// How long one Nix command may run before the test fails (the largest input here is 1 MiB).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a command's stdout is quoted in a failure message.
const QUOTE_BYTES: usize = 8 * 1024;

/// The client configuration every command sees.
const CLIENT_NIX_CONF: &str =
    "substituters =\nsandbox = false\nexperimental-features = nix-command\n";

/// A test's scratch space: input files, client homes, reference stores.
#[derive(Debug)]
pub struct TestEnv {
    name: String,
    tmp: TempDir,
}

impl TestEnv {
    /// A fresh scratch directory for the test `name` (readable by other users, so multi-user
    /// tests can hand inputs to the test user).
    pub fn new(name: &str) -> TestEnv {
        // The name is shortened: sockets inside the directory must fit in sockaddr_un.
        let short: String = name.chars().take(16).collect();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("ward-e2e-{short}-"))
            .tempdir()
            .expect("creating a temporary directory");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod temporary directory");
        TestEnv {
            name: name.to_string(),
            tmp,
        }
    }

    /// The test's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A new, empty directory under the scratch directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    /// Home and configuration directories for one client identity.
    fn client_dirs(&self, label: &str, owner: Option<&nix::unistd::User>) -> (PathBuf, PathBuf) {
        let base = self.dir(&format!("client-{label}"));
        let home = base.join("home");
        let conf = base.join("conf");
        for dir in [&home, &conf] {
            fs::create_dir_all(dir).expect("mkdir client dirs");
        }
        fs::write(conf.join("nix.conf"), CLIENT_NIX_CONF).expect("writing client nix.conf");
        if let Some(user) = owner {
            for path in [&base, &home, &conf, &conf.join("nix.conf")] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), user.name));
            }
        }
        (home, conf)
    }

    /// A client of `daemon`, running as the test's own user.
    pub fn client(&self, daemon: &WardDaemon) -> NixClient {
        let layout = daemon.layout();
        let (home, conf) = self.client_dirs("self", None);
        NixClient::new(home, conf, layout.client_url(), layout.client_env(), None)
    }

    /// A client of `daemon` running as another user (root only; through `setpriv`).
    pub fn client_as(&self, daemon: &WardDaemon, user: &nix::unistd::User) -> NixClient {
        let layout = daemon.layout();
        let (home, conf) = self.client_dirs(&user.name, Some(user));
        NixClient::new(
            home,
            conf,
            layout.client_url(),
            layout.client_env(),
            Some(user.clone()),
        )
    }

    /// A fresh local chroot store of real Nix (`nix-store --store DIR`), the reference that
    /// ward's answers are compared with.
    pub fn reference(&self, label: &str) -> ReferenceStore {
        let root = self.dir(&format!("reference-{label}"));
        let (home, conf) = self.client_dirs(&format!("reference-{label}"), None);
        let url = root.display().to_string();
        ReferenceStore {
            client: NixClient::new(home, conf, url, Vec::new(), None),
            root,
            logical_store_dir: "/nix/store".into(),
        }
    }

    /// A real-Nix local store whose logical store directory is `store_dir` (as a multi-user
    /// daemon with `NIX_STORE_DIR` has), kept physically under the scratch directory.
    pub fn reference_with_store_dir(&self, label: &str, store_dir: &str) -> ReferenceStore {
        let root = self.dir(&format!("reference-{label}"));
        let (home, conf) = self.client_dirs(&format!("reference-{label}"), None);
        let url = format!(
            "local?store={store_dir}&real={}&state={}&log={}",
            root.join("store").display(),
            root.join("state").display(),
            root.join("log").display()
        );
        let env = vec![("NIX_STORE_DIR".to_string(), store_dir.to_string())];
        ReferenceStore {
            client: NixClient::new(home, conf, url, env, None),
            root: root.clone(),
            logical_store_dir: store_dir.to_string(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if crate::keep_scratch() {
            self.tmp.disable_cleanup(true);
            crate::notice(&format!(
                "kept scratch directory {}",
                self.tmp.path().display()
            ));
            return;
        }
        // Reference stores keep read-only directories; let the TempDir remove them.
        crate::make_removable(self.tmp.path());
    }
}

/// Real Nix's own local store: what ward must agree with.
#[derive(Debug, Clone)]
pub struct ReferenceStore {
    /// A client whose `NIX_REMOTE` is this store.
    pub client: NixClient,
    root: PathBuf,
    logical_store_dir: String,
}

impl ReferenceStore {
    /// The directory holding the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The on-disk location of a store path.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        let prefix = format!("{}/", self.logical_store_dir);
        let base = store_path
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("'{store_path}' is not under '{prefix}'"));
        if self.logical_store_dir == "/nix/store" {
            self.root.join("nix/store").join(base)
        } else {
            self.root.join("store").join(base)
        }
    }
}

/// Runs Nix commands against one store with an isolated environment.
#[derive(Debug, Clone)]
pub struct NixClient {
    env: Vec<(String, OsString)>,
    store_url: String,
    user: Option<nix::unistd::User>,
    cwd: PathBuf,
}

impl NixClient {
    fn new(
        home: PathBuf,
        conf: PathBuf,
        store_url: String,
        extra_env: Vec<(String, String)>,
        user: Option<nix::unistd::User>,
    ) -> NixClient {
        let mut env: Vec<(String, OsString)> = vec![
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            ),
            ("HOME".into(), home.clone().into()),
            ("XDG_CONFIG_HOME".into(), home.join(".config").into()),
            ("XDG_CACHE_HOME".into(), home.join(".cache").into()),
            ("XDG_DATA_HOME".into(), home.join(".local/share").into()),
            ("XDG_STATE_HOME".into(), home.join(".local/state").into()),
            ("NIX_CONF_DIR".into(), conf.into()),
            ("NIX_REMOTE".into(), store_url.clone().into()),
            ("TERM".into(), "dumb".into()),
        ];
        if let Some(user) = &user {
            env.push(("USER".into(), user.name.clone().into()));
            env.push(("LOGNAME".into(), user.name.clone().into()));
        }
        env.extend(extra_env.into_iter().map(|(k, v)| (k, v.into())));
        NixClient {
            env,
            store_url,
            user,
            cwd: home,
        }
    }

    /// The store URL in `NIX_REMOTE`.
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// The same client with one more environment variable.
    pub fn with_env(&self, name: &str, value: impl Into<OsString>) -> NixClient {
        let mut client = self.clone();
        client.env.retain(|(k, _)| k != name);
        client.env.push((name.to_string(), value.into()));
        client
    }

    /// Runs `program args… --option substituters ''` (the option left out when `args` set
    /// `substituters` themselves) and returns what happened.
    pub fn run(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.run_with_stdin(program, args, None)
    }

    /// Like [`NixClient::run`], feeding `stdin` to the command.
    pub fn run_with_stdin(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> CmdOutput {
        let mut all_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // No substituters, unless the test sets them itself.
        let sets_substituters = args.windows(2).any(|w| w == ["--option", "substituters"]);
        if !sets_substituters {
            all_args.extend(["--option".into(), "substituters".into(), String::new()]);
        }
        let mut cmd = match &self.user {
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
        cmd.args(&all_args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let description = self.describe(program, &all_args);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
        let stdin_thread = stdin.map(|data| {
            let data = data.to_vec();
            let mut pipe = child.stdin.take().expect("stdin pipe");
            std::thread::spawn(move || {
                // The command may exit without reading everything; that shows in its status.
                let _ = pipe.write_all(&data);
            })
        });
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
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{description} did not finish within {COMMAND_TIMEOUT:?}; killed it");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for {description}: {e}"),
            }
        };
        if let Some(thread) = stdin_thread {
            let _ = thread.join();
        }
        let stdout = stdout_thread.join().unwrap_or_default();
        let stderr = stderr_thread.join().unwrap_or_default();
        CmdOutput {
            command: description,
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    fn describe(&self, program: &str, args: &[String]) -> String {
        let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        let who = match &self.user {
            Some(user) => format!("(as {}) ", user.name),
            None => String::new(),
        };
        format!(
            "{who}NIX_REMOTE={} {program} {}",
            shell_quote(&self.store_url),
            quoted.join(" ")
        )
    }

    /// Runs a command that must succeed; panics with its output otherwise.
    pub fn ok(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.run(program, args).assert_success()
    }

    /// Runs a command with `stdin` that must succeed.
    pub fn ok_with_stdin(&self, program: &str, args: &[&str], stdin: &[u8]) -> CmdOutput {
        self.run_with_stdin(program, args, Some(stdin))
            .assert_success()
    }

    /// Runs a command that must fail; panics with its output if it succeeds.
    pub fn fails(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.run(program, args).assert_failure()
    }

    /// Runs a command with `stdin` that must fail.
    pub fn fails_with_stdin(&self, program: &str, args: &[&str], stdin: &[u8]) -> CmdOutput {
        self.run_with_stdin(program, args, Some(stdin))
            .assert_failure()
    }

    /// `nix-store --add PATH…`: the store paths printed, one per input.
    pub fn add(&self, inputs: &[&Path]) -> Vec<String> {
        let mut args = vec!["--add"];
        let strs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        args.extend(strs.iter().map(String::as_str));
        let out = self.ok("nix-store", &args);
        let lines = out.lines();
        assert_eq!(
            lines.len(),
            inputs.len(),
            "expected one store path per input from {out}"
        );
        lines
    }

    /// Every valid path, as `nix path-info --all` lists it, sorted.
    pub fn all_valid_paths(&self) -> Vec<String> {
        let mut paths = self.ok("nix", &["path-info", "--all"]).lines();
        paths.sort();
        paths
    }

    /// `nix path-info --json PATH` as one JSON object (with `--derivation` for a `.drv`, which
    /// would otherwise stand for its outputs).
    pub fn path_info_json(&self, path: &str) -> serde_json::Value {
        let out = if path.ends_with(".drv") {
            self.ok("nix", &["path-info", "--json", "--derivation", path])
        } else {
            self.ok("nix", &["path-info", "--json", path])
        };
        let value = out.json();
        let list = value
            .as_array()
            .unwrap_or_else(|| panic!("expected a JSON list from {out}"));
        assert_eq!(list.len(), 1, "expected one entry from {out}");
        list[0].clone()
    }
}

/// Quotes a word for display in a shell-like command line.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@+,%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What one command did.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, with its `NIX_REMOTE` and user.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output, raw.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: String,
}

impl CmdOutput {
    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Non-empty lines of standard output, trimmed.
    pub fn lines(&self) -> Vec<String> {
        self.stdout_text()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// The only non-empty line of standard output.
    pub fn single_line(&self) -> String {
        let lines = self.lines();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line of output from {self}"
        );
        lines[0].clone()
    }

    /// Standard output parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("output is not JSON ({e}) in {self}"))
    }

    /// Panics unless the command exited with status 0.
    pub fn assert_success(self) -> CmdOutput {
        assert!(self.status.success(), "command failed: {self}");
        self
    }

    /// Panics unless the command exited with a failure status (not killed by a signal).
    pub fn assert_failure(self) -> CmdOutput {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "command should have failed with an error: {self}"
        );
        self
    }

    /// Panics unless standard error contains `needle`.
    pub fn assert_stderr_contains(&self, needle: &str) -> &CmdOutput {
        assert!(
            self.stderr.contains(needle),
            "stderr should mention '{needle}': {self}"
        );
        self
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("{}", self.status),
        };
        let stdout = self.stdout_text();
        let stdout = if stdout.len() > QUOTE_BYTES {
            let mut end = QUOTE_BYTES;
            while !stdout.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}[… {} more bytes]", &stdout[..end], stdout.len() - end)
        } else {
            stdout
        };
        write!(
            f,
            "\n  command: {}\n  {status}\n  stdout: {}\n  stderr: {}",
            self.command,
            stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_marks_empty_and_special_words() {
        assert_eq!(shell_quote("--add"), "--add");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("unix:///s?root=/r"), "'unix:///s?root=/r'");
    }
}
