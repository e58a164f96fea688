//! Crash safety of store maintenance: the store-writer is killed with SIGKILL in the middle
//! of a garbage collection and of an optimise, again and again, and after each restart the
//! store must verify clean (`nix-store --verify --check-contents`), every live path must
//! still be valid, and every valid path must have all its files with the recorded NAR hash —
//! checked on disk, independently of ward. (The same for a substitution is in
//! `substitute.rs`.)
//!
//! The kill falls at a random moment inside the operation: the first round runs it without a
//! kill and times it, later rounds kill within that time. Several daemons share the rounds
//! because the broker doubles its restart delay after each quick death.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ward_e2e_tests::lifecycle::{kill_9, on_daemons, single_process_named, wait_for_process, Rng};
use ward_e2e_tests::lifecycle::{FRONTEND, STORE_WRITER};
use ward_e2e_tests::nar::{self, NarNode};
use ward_e2e_tests::store::{assert_valid_paths_complete, assert_verify_path, live_temp_roots};
use ward_e2e_tests::wire::{ca_nar, PathInfo, WorkerClient};
use ward_e2e_tests::{
    known_nix_daemon_deviation, require_nix, CmdOutput, DaemonOptions, ImportedGraph, NixClient,
    StoreSnapshot, TestEnv, WardDaemon,
};

const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// Daemons per test, run side by side, and kills per daemon (after the timing round).
const DAEMONS: usize = 2;
const KILLS_PER_DAEMON: usize = 3;

/// Skips (returning true) when the tests run against real `nix-daemon`, which has no
/// store-writer to kill.
fn no_process_tree(test: &str) -> bool {
    known_nix_daemon_deviation(test, "nix-daemon has no separate store-writer")
}

/// One daemon under test, with the pids of its children.
struct Victim {
    env: TestEnv,
    daemon: WardDaemon,
    client: NixClient,
    broker: u32,
    frontend: u32,
    writer: u32,
}

impl Victim {
    fn start(label: &str) -> Victim {
        let env = TestEnv::new(label);
        let daemon = WardDaemon::start(DaemonOptions::single_user());
        let client = env.client(&daemon);
        let broker = daemon.pid().expect("the daemon runs");
        let wait = |name: &str| {
            wait_for_process(broker, name, None, RESTART_TIMEOUT)
                .unwrap_or_else(|e| panic!("{e}; log:\n{}", daemon.log_tail()))
        };
        let frontend = wait(FRONTEND);
        let writer = wait(STORE_WRITER);
        Victim {
            env,
            daemon,
            client,
            broker,
            frontend,
            writer,
        }
    }

    /// Adds each (info, NAR) over one raw connection, closed before this returns, so the
    /// paths are not temporary roots of a live connection any more.
    fn add_all(&self, paths: &[(PathInfo, Vec<u8>)]) {
        let mut wire = WorkerClient::connect(self.daemon.socket()).expect("connect");
        for (info, nar) in paths {
            wire.add_to_store_nar(info, nar, 64 * 1024, false)
                .unwrap_or_else(|e| panic!("adding {}: {e}", info.path));
        }
        wire.hang_up();
        // The connection's temporary roots go when the frontend has seen it close.
        let temproots = self.daemon.layout().state_dir.join("temproots");
        let deadline = Instant::now() + Duration::from_secs(10);
        while paths
            .iter()
            .any(|(info, _)| live_temp_roots(&temproots).contains(&info.path))
        {
            assert!(
                Instant::now() < deadline,
                "the temporary roots of a closed connection stayed"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `nix-store args` in a thread; with `kill_after`, kills the store-writer that long
    /// after the command started and waits for its replacement. Returns the command's output
    /// and how long it ran.
    fn run_maybe_killed(
        &mut self,
        args: &[&str],
        kill_after: Option<Duration>,
    ) -> (CmdOutput, Duration) {
        let client = self.client.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let started = Instant::now();
        let command = thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = client.run("nix-store", &args);
            (out, started.elapsed())
        });
        if let Some(delay) = kill_after {
            thread::sleep(delay);
            kill_9(self.writer);
        }
        let (out, took) = command.join().expect("the client thread panicked");
        if kill_after.is_some() {
            self.writer = wait_for_process(
                self.broker,
                STORE_WRITER,
                Some(self.writer),
                RESTART_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.daemon.log_tail()));
        }
        (out, took)
    }

    /// What must hold after every round: every valid path complete on disk, the live paths
    /// valid, `--verify --check-contents` clean, the frontend untouched. Returns the valid
    /// paths.
    fn assert_sound(
        &self,
        live: &BTreeSet<String>,
        checked: &mut BTreeSet<(String, String)>,
        context: &str,
    ) -> BTreeSet<String> {
        // A path that changed on disk after it was checked would be caught by --verify.
        let valid: BTreeSet<String> =
            assert_valid_paths_complete(self.daemon.layout(), &[], &[], checked, context)
                .into_iter()
                .collect();
        for path in live {
            assert!(
                valid.contains(path),
                "{context}: the live path {path} was lost"
            );
        }
        let verify = self
            .client
            .run("nix-store", &["--verify", "--check-contents"]);
        assert!(verify.status.success(), "{context}: {verify}");
        let all: Vec<String> = valid.iter().cloned().collect();
        assert_verify_path(&self.client, &all, context);
        assert_eq!(
            single_process_named(self.broker, FRONTEND),
            Some(self.frontend),
            "{context}: the frontend must survive the store-writer's deaths; log:\n{}",
            self.daemon.log_tail()
        );
        valid
    }

    /// Names directly in the store directory other than valid paths and dot-files: what a
    /// crash could have left behind once the store-writer has cleaned up.
    fn strays(&self, valid: &BTreeSet<String>) -> Vec<String> {
        let snapshot = StoreSnapshot::take(self.daemon.layout());
        let valid_names: BTreeSet<&str> =
            valid.iter().filter_map(|p| p.rsplit('/').next()).collect();
        let mut strays: Vec<String> = snapshot
            .store_entries
            .into_iter()
            .filter(|name| !name.starts_with('.') && !valid_names.contains(name.as_str()))
            .collect();
        // Leftovers of killed operations in the store-writer's staging directory are removed
        // when it restarts; a finished operation leaves none.
        let staging = self.daemon.layout().real_store_dir.join(".ward-staging");
        if let Ok(entries) = std::fs::read_dir(&staging) {
            strays.extend(
                entries
                    .flatten()
                    .map(|e| format!(".ward-staging/{}", e.file_name().to_string_lossy())),
            );
        }
        strays
    }
}

/// A random delay between 25% and 85% of `took` (at least 1 ms): `took` is the shortest
/// uninterrupted run of the whole command seen, whose first part is the client starting and
/// connecting, and later runs may be quicker than the first (warm caches).
fn kill_point(rng: &mut Rng, took: Duration) -> Duration {
    let took = took.as_millis() as u64;
    let (from, to) = (took / 4, (took * 85 / 100).max(took / 4 + 1));
    Duration::from_millis(from + rng.below(to - from) + 1)
}

/// Dead paths per round of the GC test.
const DEAD_PER_ROUND: usize = 800;

fn gc_under_kills(index: usize, seed: u64) -> usize {
    let mut v = Victim::start(&format!("crash-gc-{index}"));
    let mut rng = Rng::new(seed);
    // Live: an imported closure a ← b ← c rooted through c, and a rooted file.
    let graph = ImportedGraph::new(
        &v.env.dir("graph"),
        "/nix/store",
        &format!("crash-gc-{index}-{seed}"),
    );
    graph.import(&v.client);
    let file = ward_e2e_tests::inputs::file(&v.env.dir("inputs"), "rooted.txt", b"rooted\n");
    let rooted_file = v.client.add(&[&file]).remove(0);
    let home = v.env.dir("roots");
    for (name, path) in [("graph", &graph.c), ("file", &rooted_file)] {
        let link = home.join(name);
        v.client.ok(
            "nix-store",
            &[
                "--realise",
                path,
                "--add-root",
                link.to_str().unwrap(),
                "--indirect",
            ],
        );
    }
    let live: BTreeSet<String> = [&graph.a, &graph.b, &graph.c, &rooted_file]
        .into_iter()
        .cloned()
        .collect();
    let mut checked = BTreeSet::new();
    let mut took = Duration::ZERO;
    let mut interrupted = 0;
    for round in 0..=KILLS_PER_DAEMON {
        let context = format!("gc daemon {index}, round {round} (seed {seed})");
        let dead: Vec<(PathInfo, Vec<u8>)> = (0..DEAD_PER_ROUND)
            .map(|i| {
                let name = format!("dead-{round}-{i}");
                ca_nar(
                    &name,
                    format!("{name} {seed} {}\n", rng.next_u64()).as_bytes(),
                )
            })
            .collect();
        v.add_all(&dead);
        let kill = (round > 0).then(|| kill_point(&mut rng, took));
        let (out, ran) = v.run_maybe_killed(&["--gc"], kill);
        if round == 0 {
            assert!(out.status.success(), "{context}: {out}");
            took = ran;
        } else if out.status.success() {
            took = took.min(ran);
        }
        let valid = v.assert_sound(&live, &mut checked, &context);
        if out.status.success() {
            for (info, _) in &dead {
                assert!(
                    !valid.contains(&info.path),
                    "{context}: the collection succeeded but {} is still valid",
                    info.path
                );
            }
        } else {
            interrupted += 1;
        }
    }
    // An uninterrupted collection leaves exactly the live paths, and nothing on disk besides.
    let (out, _) = v.run_maybe_killed(&["--gc"], None);
    assert!(out.status.success(), "the last collection: {out}");
    let valid = v.assert_sound(&live, &mut checked, "after the last collection");
    assert_eq!(valid, live, "only the live paths are left");
    let strays = v.strays(&valid);
    assert!(strays.is_empty(), "left in the store directory: {strays:?}");
    interrupted
}

#[test]
fn store_writer_killed_during_collections_loses_nothing_live_and_leaves_nothing_partial() {
    let test =
        "store_writer_killed_during_collections_loses_nothing_live_and_leaves_nothing_partial";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let mut seeds = Rng::from_env_or_clock();
    eprintln!("seed {} (set WARD_E2E_SEED to repeat)", seeds.seed);
    let interrupted = on_daemons(DAEMONS, &mut seeds, gc_under_kills);
    assert!(
        interrupted > 0,
        "seed {}: every collection finished before its kill; nothing was tested",
        seeds.seed
    );
    eprintln!(
        "{interrupted} of {} collections were interrupted",
        DAEMONS * KILLS_PER_DAEMON
    );
}

/// Paths per round of the optimise test, files in each, and distinct contents among them.
const PATHS_PER_ROUND: usize = 60;
const FILES_PER_PATH: usize = 8;
const DISTINCT_BLOBS: usize = 12;

/// A directory path whose files are drawn from `blobs`.
fn tree_nar(name: &str, blobs: &[Vec<u8>], rng: &mut Rng) -> (PathInfo, Vec<u8>) {
    let entries: Vec<(Vec<u8>, NarNode)> = (0..FILES_PER_PATH)
        .map(|i| {
            let blob = &blobs[rng.below(blobs.len() as u64) as usize];
            (
                format!("file-{i:02}").into_bytes(),
                NarNode::File {
                    contents: blob.clone(),
                    executable: i % 3 == 0,
                },
            )
        })
        .collect();
    let nar = NarNode::Directory(entries).to_nar();
    let (path, ca) = nar::source_path("/nix/store", name, &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    (info, nar)
}

fn optimise_under_kills(index: usize, seed: u64) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut v = Victim::start(&format!("crash-optimise-{index}"));
    let mut rng = Rng::new(seed);
    let mut checked = BTreeSet::new();
    let mut took = Duration::ZERO;
    let mut interrupted = 0;
    let mut all = BTreeSet::new();
    for round in 0..=KILLS_PER_DAEMON {
        let context = format!("optimise daemon {index}, round {round} (seed {seed})");
        // New contents each round, so every round has linking to do.
        let blobs: Vec<Vec<u8>> = (0..DISTINCT_BLOBS)
            .map(|b| {
                let mut blob = format!("round {round} blob {b} {seed}\n").into_bytes();
                blob.extend(rng.bytes(16 * 1024));
                blob
            })
            .collect();
        let paths: Vec<(PathInfo, Vec<u8>)> = (0..PATHS_PER_ROUND)
            .map(|p| tree_nar(&format!("tree-{round}-{p}"), &blobs, &mut rng))
            .collect();
        v.add_all(&paths);
        all.extend(paths.iter().map(|(info, _)| info.path.clone()));
        let kill = (round > 0).then(|| kill_point(&mut rng, took));
        let (out, ran) = v.run_maybe_killed(&["--optimise"], kill);
        if round == 0 {
            assert!(out.status.success(), "{context}: {out}");
            took = ran;
        } else if out.status.success() {
            took = took.min(ran);
        }
        if !out.status.success() {
            interrupted += 1;
        }
        // Linking never loses a file or changes one: every path is still valid and whole.
        v.assert_sound(&all, &mut checked, &context);
        // Already-checked paths are re-read here: a file replaced by a half-made link after
        // its first check would show as a different NAR.
        let recorded: BTreeMap<String, String> = StoreSnapshot::take(v.daemon.layout())
            .valid_paths
            .into_iter()
            .map(|row| (row.path, row.hash))
            .collect();
        for path in &all {
            let real = v.daemon.layout().real_path(path);
            let nar = nar::dump_path(&real).unwrap_or_else(|e| panic!("{context}: {path}: {e}"));
            assert_eq!(
                recorded.get(path).map(String::as_str),
                Some(format!("sha256:{}", nar::base16(&nar::sha256(&nar))).as_str()),
                "{context}: {path} changed on disk"
            );
        }
    }
    // An uninterrupted optimise leaves one inode per distinct content.
    let (out, _) = v.run_maybe_killed(&["--optimise"], None);
    assert!(out.status.success(), "the last optimise: {out}");
    let mut inodes: BTreeMap<Vec<u8>, BTreeSet<u64>> = BTreeMap::new();
    for path in &all {
        let dir = v.daemon.layout().real_path(path);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let contents = std::fs::read(entry.path()).unwrap();
            let ino = entry.metadata().unwrap().ino();
            inodes.entry(contents).or_default().insert(ino);
        }
    }
    for (contents, set) in &inodes {
        // Executable and plain copies of the same bytes are different files in .links.
        assert!(
            set.len() <= 2,
            "{} copies of one {}-byte content after a full optimise",
            set.len(),
            contents.len()
        );
    }
    let valid = v.assert_sound(&all, &mut checked, "after the last optimise");
    let strays = v.strays(&valid);
    assert!(strays.is_empty(), "left in the store directory: {strays:?}");
    let links = v.daemon.layout().real_store_dir.join(".links");
    assert!(Path::new(&links).is_dir(), "{} exists", links.display());
    interrupted
}

#[test]
fn store_writer_killed_during_optimise_changes_no_file() {
    let test = "store_writer_killed_during_optimise_changes_no_file";
    if !require_nix(test) || no_process_tree(test) {
        return;
    }
    let mut seeds = Rng::from_env_or_clock();
    eprintln!("seed {} (set WARD_E2E_SEED to repeat)", seeds.seed);
    let interrupted = on_daemons(DAEMONS, &mut seeds, optimise_under_kills);
    assert!(
        interrupted > 0,
        "seed {}: every optimise finished before its kill; nothing was tested",
        seeds.seed
    );
    eprintln!(
        "{interrupted} of {} optimise runs were interrupted",
        DAEMONS * KILLS_PER_DAEMON
    );
}
