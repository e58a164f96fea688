//! The suite's frame: the shared daemon ("the lab"), each row's guard (store, canaries,
//! service), and the report per category.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};
use ward_e2e_tests::builds;
use ward_e2e_tests::lifecycle::processes_named;
use ward_e2e_tests::store::StoreSnapshot;
use ward_e2e_tests::wire::WorkerClient;
use ward_e2e_tests::{ensure_test_user, inputs, DaemonOptions, Fixture, NixClient, SigningKey};

/// The catalog's categories, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Hostile client over the socket.
    C,
    /// Malicious derivation builder.
    B,
    /// Hostile NAR or substitute.
    N,
    /// Local user against the store.
    L,
    /// Resource exhaustion.
    R,
    /// Compromised frontend.
    I,
}

impl Category {
    pub const ALL: &'static [Category] = &[
        Category::C,
        Category::B,
        Category::N,
        Category::L,
        Category::R,
        Category::I,
    ];

    fn title(self) -> &'static str {
        match self {
            Category::C => "hostile client",
            Category::B => "malicious builder",
            Category::N => "hostile NAR or substitute",
            Category::L => "local user against the store",
            Category::R => "resource exhaustion",
            Category::I => "compromised frontend",
        }
    }
}

/// What a row may do to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRule {
    /// Nothing changes after the guard is armed.
    Unchanged,
    /// A build that succeeds while its misdeeds fail registers its outputs: new valid paths
    /// may appear; nothing that was there changes.
    MayAddValid,
    /// The row restarts the daemon's children or replaces the frontend; the store is still
    /// checked, the frontend's pid is not.
    UnchangedAcrossRestart,
    /// The row runs OptimiseStore, which any client may: `.links` may gain hard links (each
    /// a read-only regular file); nothing else changes.
    MayOptimise,
}

/// One row of the catalog.
pub struct Attack {
    pub id: &'static str,
    pub category: Category,
    /// The attack, in one line.
    pub attack: &'static str,
    /// The safe outcome the row asserts.
    pub safe: &'static str,
    pub store: StoreRule,
    pub run: fn(&mut Ctx<'_>) -> Outcome,
    /// A known gap, with where it is tracked: the row's failure is reported and counted, but
    /// does not fail the suite; a pass says the mark is stale (and fails it).
    pub open: Option<&'static str>,
}

/// `Ok(Some(reason))`: the row cannot run on this host (counted as skipped).
pub type Outcome = Result<Option<String>, String>;

/// Shorthand for a row that ran and held.
pub const HELD: Outcome = Ok(None);

/// Fails the row with a message unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The daemon every row attacks, with what the rows share.
pub struct Lab {
    /// Multi-user, sandboxed, every client untrusted; `allowed-users = root <alice>`.
    pub f: Fixture,
    /// An unprivileged user allowed to connect.
    pub alice: nix::unistd::User,
    /// A path valid before any row, for the liveness check.
    pub known_path: String,
    /// Files outside the store that no row may touch.
    pub canaries: Canaries,
    /// A local binary cache (`file://`) that is not trusted.
    pub cache_dir: PathBuf,
    /// A second local binary cache, listed in `trusted-substituters`.
    pub trusted_cache_dir: PathBuf,
    /// Scratch space of the rows.
    pub scratch: tempfile::TempDir,
    /// The hostile helper's path inside the sandbox, or why there is none (no C compiler).
    pub hostile: Result<&'static str, String>,
    /// The key the daemon trusts for substitutes.
    pub key: SigningKey,
    _key_env: ward_e2e_tests::TestEnv,
    /// The frontend's pid when the row started (a row may not crash it).
    frontend_pid: Option<u32>,
}

impl Lab {
    fn start() -> Option<Lab> {
        if !builds::have_busybox("attacks") {
            return None;
        }
        let scratch = tempfile::Builder::new()
            .prefix("ward-attacks-")
            .tempdir()
            .expect("scratch directory");
        fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let cache_dir = scratch.path().join("cache");
        let trusted_cache_dir = scratch.path().join("trusted-cache");
        for dir in [&cache_dir, &trusted_cache_dir] {
            fs::create_dir_all(dir.join("nar")).unwrap();
            fs::write(
                dir.join("nix-cache-info"),
                "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
            )
            .unwrap();
        }
        let alice = ensure_test_user();
        let hostile = compile_hostile(scratch.path());
        let key_env = ward_e2e_tests::TestEnv::new("attacks-key");
        let key = SigningKey::generate(&key_env, "attacks-cache-1");
        let mut sandbox_paths = format!("sandbox-paths = /bin/sh={}", builds::BUSYBOX);
        if let Ok(hostile) = &hostile {
            sandbox_paths.push_str(&format!(" /bin/hostile={}", hostile.display()));
        }
        let options = builds::sandboxed(DaemonOptions::multi_user())
            .conf(sandbox_paths)
            .conf(format!("trusted-public-keys = {}", key.public))
            .conf("ward-build-max-processes = 64")
            .conf("sandbox-dev-shm-size = 16M")
            .conf("ward-max-jobs-per-user = 2")
            .conf(format!("ward-max-output-size = {}", 64u64 << 20))
            .untrusted()
            .conf(format!("allowed-users = root {}", alice.name))
            .conf(format!(
                "trusted-substituters = file://{}",
                trusted_cache_dir.display()
            ))
            .conf("substituters =")
            .conf("max-jobs = 4");
        let f = Fixture::start("attacks", options)?;
        // The caches are for this store's directory.
        for dir in [&cache_dir, &trusted_cache_dir] {
            fs::write(
                dir.join("nix-cache-info"),
                format!(
                    "StoreDir: {}\nWantMassQuery: 1\nPriority: 40\n",
                    f.daemon.layout().logical_store_dir
                ),
            )
            .unwrap();
        }
        let known_path = f.populate();
        let canaries = Canaries::plant(&scratch.path().join("canaries"));
        Some(Lab {
            f,
            alice,
            hostile: hostile.map(|_| "/bin/hostile"),
            key,
            _key_env: key_env,
            known_path,
            canaries,
            cache_dir,
            trusted_cache_dir,
            scratch,
            frontend_pid: None,
        })
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        self.f.daemon.socket()
    }

    /// The store directory clients see (`/nix/store` or the chroot store's logical one).
    pub fn store_dir(&self) -> String {
        self.f.daemon.layout().logical_store_dir.clone()
    }

    /// The real Nix client, as root (untrusted here).
    pub fn nix(&self) -> &NixClient {
        &self.f.ward
    }

    /// The real Nix client as alice.
    pub fn nix_as_alice(&self) -> NixClient {
        self.f.env.client_as(&self.f.daemon, &self.alice)
    }

    /// A wire client as root (untrusted).
    pub fn wire(&self) -> WorkerClient {
        WorkerClient::connect(self.socket()).expect("connecting to the lab's daemon")
    }

    /// A connection made by a process running as `uid`:`gid` with no supplementary groups
    /// (the daemon saw those credentials at connect); `Err` is the connect error.
    pub fn connect_as(&self, uid: u32, gid: u32) -> Result<UnixStream, String> {
        connect_as(self.socket(), uid, gid)
    }

    /// Writes `name.nix` for a derivation running `script` under busybox's sh.
    pub fn drv_file(&self, name: &str, script: &str, extra: &str) -> PathBuf {
        builds::expr(&self.f, name, &builds::drv(name, script, extra))
    }

    /// `nix-instantiate`s `file`: the .drv path.
    pub fn instantiate(&self, file: &Path) -> String {
        self.nix()
            .ok("nix-instantiate", &[file.to_str().unwrap()])
            .single_line()
    }

    /// The on-disk place of a store path.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        self.f.real_path(store_path)
    }

    /// The frontend process (its pid), if exactly one runs.
    fn frontend(&self) -> Option<u32> {
        let root = self.f.daemon.pid()?;
        let found = processes_named(root, "ward-frontend");
        (found.len() == 1).then(|| found[0])
    }

    /// The daemon's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        self.f.daemon.log_tail()
    }
}

/// Compiles `helper.c` statically into `dir` (the suite's hostile builder).
fn compile_hostile(dir: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/attacks/helper.c");
    let binary = dir.join("hostile");
    let out = Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .map_err(|e| format!("no C compiler for the hostile helper (cc: {e})"))?;
    assert!(
        out.status.success(),
        "cc -static {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    Ok(binary)
}

/// Files outside the store, with what they were.
pub struct Canaries {
    /// A root-only file.
    pub secret: PathBuf,
    /// A directory whose contents a hostile build or cleanup would like to delete.
    pub victim: PathBuf,
    watched: Vec<PathBuf>,
    state: BTreeMap<PathBuf, String>,
}

impl Canaries {
    fn plant(dir: &Path) -> Canaries {
        fs::create_dir_all(dir.join("victim/inner")).unwrap();
        let secret = inputs::file(dir, "secret", b"the canary's secret\n");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        inputs::file(dir, "public", b"a public canary\n");
        inputs::file(&dir.join("victim"), "file", b"must survive\n");
        inputs::file(&dir.join("victim/inner"), "deeper", b"must survive too\n");
        let mut watched = vec![dir.to_path_buf()];
        for system in ["/etc/shadow", "/etc/passwd", "/etc/group"] {
            if Path::new(system).exists() {
                watched.push(PathBuf::from(system));
            }
        }
        let mut canaries = Canaries {
            secret,
            victim: dir.join("victim"),
            watched,
            state: BTreeMap::new(),
        };
        canaries.state = canaries.read();
        canaries
    }

    fn read(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for path in &self.watched {
            describe_tree(path, &mut out);
        }
        out
    }

    /// What changed since they were planted, if anything.
    fn changes(&self) -> Option<String> {
        let now = self.read();
        if now == self.state {
            return None;
        }
        let mut lines = Vec::new();
        for (path, was) in &self.state {
            match now.get(path) {
                None => lines.push(format!("{} removed (was {was})", path.display())),
                Some(is) if is != was => {
                    lines.push(format!("{} changed: {was} -> {is}", path.display()))
                }
                _ => {}
            }
        }
        for path in now.keys().filter(|p| !self.state.contains_key(*p)) {
            lines.push(format!("{} appeared", path.display()));
        }
        Some(lines.join("\n"))
    }
}

/// Type, mode, owner, mtime and content hash of `path` and everything under it.
fn describe_tree(path: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let kind = meta.file_type();
    let content = if kind.is_file() {
        fs::read(path)
            .map(|data| hex(&Sha256::digest(&data)))
            .unwrap_or_else(|e| format!("unreadable: {e}"))
    } else if kind.is_symlink() {
        fs::read_link(path)
            .map(|t| format!("-> {}", t.display()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    out.insert(
        path.to_path_buf(),
        format!(
            "mode {:o} owner {}:{} mtime {}.{} {content}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
    if kind.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                describe_tree(&entry.path(), out);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store's rows and files at one moment.
#[derive(PartialEq, Eq)]
struct StoreState {
    db: StoreSnapshot,
    /// Each top-level entry of the store directory: a digest of its whole tree.
    files: BTreeMap<String, String>,
    /// Entries of `.links` that are not read-only regular files.
    links_writable: Vec<String>,
}

fn links_writable(links: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(links) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            fs::symlink_metadata(e.path())
                .map(|m| !m.is_file() || m.mode() & 0o222 != 0)
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

impl StoreState {
    fn take(lab: &Lab) -> StoreState {
        let layout = lab.f.daemon.layout();
        let db = StoreSnapshot::take(layout);
        let mut files = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&layout.real_store_dir) {
            for entry in entries.flatten() {
                // The staging directory's own times change with every upload; what matters
                // is that nothing is left in it.
                if entry.file_name() == ".ward-staging" {
                    let left: Vec<String> = fs::read_dir(entry.path())
                        .map(|d| {
                            d.flatten()
                                .map(|e| e.file_name().to_string_lossy().into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    files.insert(".ward-staging".into(), format!("holding {left:?}"));
                    continue;
                }
                let mut tree = BTreeMap::new();
                describe_tree(&entry.path(), &mut tree);
                let digest = tree
                    .iter()
                    .map(|(p, d)| format!("{}\t{d}\n", p.display()))
                    .collect::<String>();
                files.insert(
                    entry.file_name().to_string_lossy().into_owned(),
                    hex(&Sha256::digest(digest.as_bytes())),
                );
            }
        }
        StoreState {
            db,
            files,
            links_writable: links_writable(&layout.real_store_dir.join(".links")),
        }
    }

    /// What is wrong with `after` under `rule`, if anything.
    fn judge(&self, after: &StoreState, rule: StoreRule) -> Option<String> {
        let mut wrong = Vec::new();
        for (name, digest) in &self.files {
            if name == ".links" && rule == StoreRule::MayOptimise {
                continue;
            }
            match after.files.get(name) {
                None => wrong.push(format!("store entry {name} disappeared")),
                Some(d) if d != digest => wrong.push(format!("store entry {name} changed")),
                _ => {}
            }
        }
        for row in &self.db.valid_paths {
            if !after.db.valid_paths.contains(row) {
                wrong.push(format!("the DB row of {} changed or went", row.path));
            }
        }
        let valid_after: Vec<String> = after.db.paths();
        for name in after.files.keys().filter(|n| !self.files.contains_key(*n)) {
            if name == ".links" && rule == StoreRule::MayOptimise {
                continue;
            }
            let allowed = rule == StoreRule::MayAddValid
                && valid_after.iter().any(|p| p.ends_with(&format!("/{name}")));
            if !allowed {
                wrong.push(format!("store entry {name} appeared"));
            }
        }
        if rule != StoreRule::MayAddValid {
            for row in &after.db.valid_paths {
                if !self.db.valid_paths.iter().any(|r| r.path == row.path) {
                    wrong.push(format!("{} became valid", row.path));
                }
            }
            if after.db.refs != self.db.refs {
                wrong.push("the References table changed".into());
            }
        }
        if !after.links_writable.is_empty() {
            wrong.push(format!(
                "writable entries in .links: {:?}",
                after.links_writable
            ));
        }
        (!wrong.is_empty()).then(|| wrong.join("\n"))
    }
}

/// What a row works with: the lab and its guard.
pub struct Ctx<'a> {
    pub lab: &'a Lab,
    before: StoreState,
}

impl Ctx<'_> {
    /// Takes the store's state again: what the row did so far (instantiating its derivation,
    /// adding its inputs) is the baseline.
    pub fn arm(&mut self) {
        self.before = StoreState::take(self.lab);
    }
}

/// Rows run as root against multi-user ward; without root the suite says it skipped.
pub fn run(rows: &[Attack], categories: &[Category]) -> ExitCode {
    if !ward_e2e_tests::require_root("attacks (the attack catalog)") {
        return ExitCode::SUCCESS;
    }
    let Some(mut lab) = Lab::start() else {
        return ExitCode::SUCCESS;
    };
    let mut tally: BTreeMap<Category, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut open_gaps: Vec<&str> = Vec::new();
    for row in rows {
        lab.frontend_pid = lab.frontend();
        let started = Instant::now();
        let before = StoreState::take(&lab);
        let mut ctx = Ctx { lab: &lab, before };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (row.run)(&mut ctx)))
            .unwrap_or_else(|panic| {
                Err(panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
        let before = ctx.before;
        let result = result.and_then(|skip| {
            if skip.is_some() {
                return Ok(skip);
            }
            let mut wrong = Vec::new();
            // The daemon may still be cleaning up a refused request.
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let after = StoreState::take(&lab);
                match before.judge(&after, row.store) {
                    Some(_) if Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(100))
                    }
                    Some(problem) => {
                        wrong.push(problem);
                        break;
                    }
                    None => break,
                }
            }
            if let Some(changed) = lab.canaries.changes() {
                wrong.push(format!("files outside the store changed:\n{changed}"));
            }
            match WorkerClient::connect(lab.socket())
                .and_then(|mut c| c.is_valid_path(&lab.known_path))
            {
                Ok(true) => {}
                Ok(false) => wrong.push(format!("{} is no longer valid", lab.known_path)),
                Err(e) => wrong.push(format!("the daemon no longer serves: {e}")),
            }
            if row.store != StoreRule::UnchangedAcrossRestart
                && lab.frontend_pid.is_some()
                && lab.frontend() != lab.frontend_pid
            {
                wrong.push("the frontend died (it was restarted)".into());
            }
            if wrong.is_empty() {
                Ok(None)
            } else {
                Err(wrong.join("\n"))
            }
        });
        let counts = tally.entry(row.category).or_default();
        let took = started.elapsed().as_secs_f32();
        match (result, row.open) {
            (Ok(None), Some(open)) => {
                counts.0 += 1;
                println!(
                    "passed  {:<4} {} — but it is marked open ({open}): remove the mark",
                    row.id, row.attack
                );
                failures.push(row.id);
            }
            (Err(why), Some(open)) => {
                counts.1 += 1;
                println!("FAILED  {:<4} {} [known gap: {open}]", row.id, row.attack);
                for line in why.lines() {
                    println!("        {line}");
                }
                open_gaps.push(row.id);
            }
            (Ok(None), None) => {
                counts.0 += 1;
                println!("passed  {:<4} {} ({took:.1} s)", row.id, row.attack);
            }
            (Ok(Some(why)), _) => {
                counts.2 += 1;
                println!("SKIPPED {:<4} {}: {why}", row.id, row.attack);
            }
            (Err(why), None) => {
                counts.1 += 1;
                println!(
                    "FAILED  {:<4} {}\n        expected: {}",
                    row.id, row.attack, row.safe
                );
                for line in why.lines() {
                    println!("        {line}");
                }
                failures.push(row.id);
            }
        }
    }
    println!();
    for category in categories {
        if let Some((passed, failed, skipped)) = tally.get(category) {
            println!(
                "{category:?} ({}): {passed} passed, {failed} failed, {skipped} skipped",
                category.title()
            );
        }
    }
    if !open_gaps.is_empty() {
        println!(
            "known gaps (failed, not failing the suite): {}",
            open_gaps.join(" ")
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed rows: {}", failures.join(" "));
        let log = lab.log_tail();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        println!("---- daemon log (last lines) ----\n{tail}");
        lab.f.daemon.stop();
        ExitCode::FAILURE
    }
}

const HELPER_ENV: &str = "WARD_ATTACKS_CONNECT_TO";

/// In the helper process `connect_as` starts (as another user): connects to the socket,
/// says `c` (or `e` and the error) on stdout, then pumps bytes between its stdin/stdout (a
/// socket of the suite's) and the connection. `None` in the suite itself.
pub fn helper_mode() -> Option<ExitCode> {
    use std::io::{Read, Write};
    if let (Some(count), Some(socket)) = (
        std::env::var_os("WARD_ATTACKS_HOLD"),
        std::env::var_os("WARD_ATTACKS_SOCKET"),
    ) {
        let count = count.to_str()?.parse().ok()?;
        return Some(crate::resources::hold_connections(socket.to_str()?, count));
    }
    let socket = std::env::var_os(HELPER_ENV)?;
    let mut out = std::io::stdout().lock();
    let mut stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(e) => {
            let _ = write!(out, "e{e}");
            let _ = out.flush();
            return Some(ExitCode::from(1));
        }
    };
    let _ = out.write_all(b"c");
    let _ = out.flush();
    let mut to_daemon = stream.try_clone().expect("cloning the connection");
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 || to_daemon.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).is_err() || out.flush().is_err() {
            break;
        }
    }
    Some(ExitCode::SUCCESS)
}

fn helper_binary() -> &'static Path {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = COPY.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ward-attacks-helper-")
            .tempdir()
            .expect("a directory for the helper");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("connect-as");
        fs::copy(std::env::current_exe().unwrap(), &path).expect("copying the suite's binary");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        (dir, path)
    });
    path
}

/// Starts the suite's binary as alice with `env` (a helper mode), stdin and stdout piped.
pub fn spawn_as_alice(lab: &Lab, env: &[(&str, &str)]) -> Result<std::process::Child, String> {
    Command::new("setpriv")
        .arg(format!("--reuid={}", lab.alice.uid))
        .arg(format!("--regid={}", lab.alice.gid))
        .arg("--clear-groups")
        .arg(helper_binary())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())
}

fn connect_as(socket: &Path, uid: u32, gid: u32) -> Result<UnixStream, String> {
    use std::io::Read;
    let (mut ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let theirs = OwnedFd::from(theirs);
    let again = theirs.try_clone().map_err(|e| e.to_string())?;
    // The suite's own binary, copied where any user may run it (the checkout may sit in a
    // home directory nobody else can enter).
    let exe = helper_binary();
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(exe)
        .env_clear()
        .env(HELPER_ENV, socket)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::from(again))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    ours.read_exact(&mut first)
        .map_err(|e| format!("the helper said nothing: {e}"))?;
    if first[0] == b'c' {
        std::thread::spawn(move || child.wait());
        return Ok(ours);
    }
    let mut why = String::new();
    let _ = ours.read_to_string(&mut why);
    let _ = child.wait();
    Err(why)
}

/// Whether some row has this id.
pub fn is_known_row(id: &str) -> bool {
    crate::rows().iter().any(|r| r.id == id)
}
