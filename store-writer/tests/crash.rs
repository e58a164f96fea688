//! Crash safety of adding paths: a child process adds paths and is killed with SIGKILL at
//! random moments; after each kill the store must hold no valid path whose contents are
//! incomplete, and adding the same paths again must succeed.
//!
//! The child is this test binary itself, running the ignored test `crash_child` with the
//! store root and an iteration number in its environment.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::{Hash, HashAlgo, Hasher};
use ward_proto::nar::{self, NarWriter};
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::StoreDir;
use ward_store::db::DbSettings;
use ward_store::layout::{CreateOptions, StoreLayout};
use ward_store::{AddOptions, Store};

const ROOT_ENV: &str = "WARD_CRASH_CHILD_ROOT";
const ITERATION_ENV: &str = "WARD_CRASH_CHILD_ITERATION";
const ITERATIONS: u64 = 30;
const PATHS_PER_ITERATION: u64 = 3;

/// Small deterministic generator (xorshift64*), so the child and the parent build the same
/// NARs from a seed, and the parent's random delays can be replayed from a printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The NAR and claimed info of test path number `seed`: a directory of a few dozen files
/// (about 128 KiB), an executable, a subdirectory and a symlink, content-addressed.
fn test_path(seed: u64) -> (ValidPathInfo, Vec<u8>) {
    let mut rng = Rng::new(seed + 1);
    let mut w = NarWriter::new(Vec::new());
    w.directory().unwrap();
    w.entry(b"bin").unwrap();
    w.directory().unwrap();
    w.entry(b"tool").unwrap();
    w.file_from_bytes(true, &rng.bytes(4096)).unwrap();
    w.end_directory().unwrap();
    for i in 0..12 {
        w.entry(format!("data-{i:02}").as_bytes()).unwrap();
        let len = 1024 + (rng.next() % (8 * 1024)) as usize;
        w.file_from_bytes(false, &rng.bytes(len)).unwrap();
    }
    w.entry(b"link").unwrap();
    w.symlink(b"bin/tool").unwrap();
    w.end_directory().unwrap();
    let nar = w.finish().unwrap();
    let nar_hash = Hash::compute(HashAlgo::Sha256, &nar);
    let ca = ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: nar_hash,
    };
    let info = ValidPathInfo::make_from_ca(
        &StoreDir::default(),
        &format!("crash-{seed}"),
        ca,
        BTreeSet::new(),
        false,
        nar_hash,
        nar.len() as u64,
    )
    .unwrap();
    (info, nar)
}

/// The seeds iteration `i` adds: its own, plus the last one of the previous iteration (which
/// may have been interrupted, leaving an invalid leftover to replace).
fn seeds(iteration: u64) -> std::ops::Range<u64> {
    (iteration * PATHS_PER_ITERATION).saturating_sub(1)..(iteration + 1) * PATHS_PER_ITERATION
}

fn open_store(root: &Path) -> Store {
    let layout = StoreLayout::chroot(root).unwrap();
    Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap()
}

#[test]
#[ignore = "helper process for kill_9_during_add_loses_nothing; does nothing on its own"]
fn crash_child() {
    let Some(root) = std::env::var_os(ROOT_ENV) else {
        eprintln!("crash_child only runs as a child of kill_9_during_add_loses_nothing");
        return;
    };
    let iteration: u64 = std::env::var(ITERATION_ENV).unwrap().parse().unwrap();
    let mut store = open_store(Path::new(&root));
    for seed in seeds(iteration) {
        let (info, nar) = test_path(seed);
        store
            .add_path(&info, &nar[..], AddOptions::default())
            .unwrap();
    }
}

fn spawn_child(root: &Path, iteration: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--test-threads=1"])
        .env(ROOT_ENV, root)
        .env(ITERATION_ENV, iteration.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SHA-256 and size of the NAR of what is on disk at `path`.
fn dump_hash(path: &Path) -> (Hash, u64) {
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let size = nar::dump_path(path, &mut hasher).unwrap();
    (hasher.finish(), size)
}

/// Opens the store (which recovers from the crash) and checks that every valid path is
/// complete. Returns the number of valid paths.
fn check_store(root: &Path) -> usize {
    let store = open_store(root);
    let staging = store.layout().staging_dir();
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging is cleared on open"
    );
    let valid = store.db().query_all_valid_paths().unwrap();
    for path in &valid {
        let info = store.db().query_path_info(path).unwrap().unwrap();
        let real = store.layout().real_path(path);
        assert_eq!(
            dump_hash(&real),
            (info.nar_hash, info.nar_size),
            "valid path {path} is incomplete or damaged"
        );
    }
    valid.len()
}

#[test]
fn kill_9_during_add_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // How long one child run takes, measured on a scratch store.
    let scratch = dir.path().join("scratch");
    let started = Instant::now();
    let status = spawn_child(&scratch, ITERATIONS + 10).wait().unwrap();
    assert!(status.success(), "the child must succeed when left alone");
    let full_run = started.elapsed();
    assert_eq!(check_store(&scratch), 4);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("crash test: random seed {seed}, one child run takes {full_run:?}");
    let mut rng = Rng::new(seed);
    let root: PathBuf = dir.path().join("root");
    let window = full_run.as_micros() as u64 * 5 / 4;
    let mut interrupted = 0;
    let mut progress = Vec::new();
    let mut valid_before = 0;
    for iteration in 1..=ITERATIONS {
        let mut child = spawn_child(&root, iteration);
        std::thread::sleep(Duration::from_micros(rng.next() % window.max(1)));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let valid = check_store(&root);
        progress.push(valid - valid_before);
        valid_before = valid;
    }
    println!(
        "crash test: {interrupted} of {ITERATIONS} children were killed mid-run; paths each \
         run completed: {progress:?}"
    );
    assert!(
        interrupted >= ITERATIONS / 3,
        "too few kills landed during an add ({interrupted}); the test would prove little"
    );

    // Every path can be added afterwards, whatever state the kills left.
    let mut store = open_store(&root);
    for seed in 0..(ITERATIONS + 1) * PATHS_PER_ITERATION {
        let (info, nar) = test_path(seed);
        store
            .add_path(&info, &nar[..], AddOptions::default())
            .unwrap();
        let real = store.layout().real_path(&info.path);
        assert_eq!(dump_hash(&real), (info.nar_hash, info.nar_size));
    }
    drop(store);
    assert_eq!(
        check_store(&root) as u64,
        (ITERATIONS + 1) * PATHS_PER_ITERATION
    );
}
