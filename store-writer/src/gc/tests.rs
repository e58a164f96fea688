use super::*;
use crate::db::{DbSettings, DerivationOutputs};
use crate::layout::CreateOptions;
use crate::test_support::{info, new_layout, test_path};
use std::os::unix::fs::MetadataExt;

/// A store in a scratch directory.
struct Fixture {
    _tmp: tempfile::TempDir,
    store: Mutex<Store>,
    layout: StoreLayout,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            new_layout(tmp.path()),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        Fixture {
            _tmp: tmp,
            layout: store.layout.clone(),
            store: Mutex::new(store),
        }
    }

    fn s(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// Registers `path` (a read-only directory holding one file of `size` bytes) referring to
    /// `refs`, derived from `deriver`; a `.drv` gets `outputs` as its known outputs.
    fn add(
        &self,
        path: &StorePath,
        refs: &[&StorePath],
        deriver: Option<&StorePath>,
        size: usize,
        outputs: &[(&str, &StorePath)],
    ) {
        let s = self.s();
        let real = s.layout.real_path(path);
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("data"), vec![b'x'; size]).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o555)).unwrap();
        drop(s);
        let mut row = info(path, refs);
        row.deriver = deriver.cloned();
        row.nar_size = size as u64;
        let outputs: DerivationOutputs = outputs
            .iter()
            .map(|(name, out)| (name.to_string(), (*out).clone()))
            .collect();
        self.s()
            .db
            .register_valid_paths(&[row], |_| Ok(outputs.clone()))
            .unwrap();
    }

    fn exists(&self, path: &StorePath) -> bool {
        self.s().layout.real_path(path).exists()
    }

    fn valid(&self, path: &StorePath) -> bool {
        self.s().db.is_valid(path).unwrap()
    }

    fn gone(&self, path: &StorePath) -> bool {
        !self.valid(path) && !self.exists(path)
    }

    fn state_dir(&self) -> PathBuf {
        self.s().layout.state_dir().to_owned()
    }

    fn run(&self, request: &GcRequest, roots: &[&StorePath]) -> Result<GcOutcome, GcError> {
        let external = ExternalRoots {
            paths: roots.iter().map(|p| (*p).clone()).collect(),
        };
        collect_garbage(&self.store, &self.layout, request, &external)
    }
}

fn request(action: GcAction) -> GcRequest {
    GcRequest {
        action,
        paths: BTreeSet::new(),
        max_freed: u64::MAX,
        keep_outputs: false,
        keep_derivations: true,
    }
}

fn printed(paths: &[&StorePath]) -> BTreeSet<String> {
    paths.iter().map(|p| StoreDir::default().print(p)).collect()
}

/// Holds a temporary roots file as a live channel would: created, locked, `paths` written.
fn hold_temp_roots(state_dir: &Path, name: &str, paths: &[&StorePath]) -> std::fs::File {
    let path = state_dir.join("temproots").join(name);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .unwrap();
    rustix::fs::flock(&file, FlockOperation::LockExclusive).unwrap();
    for p in paths {
        write!(file, "{}\0", StoreDir::default().print(p)).unwrap();
    }
    file
}

#[test]
fn dead_paths_go_and_the_closure_of_a_root_stays() {
    let f = Fixture::new();
    let (lib, app, junk, junk_dep) = (
        test_path("lib"),
        test_path("app"),
        test_path("junk"),
        test_path("junk-dep"),
    );
    f.add(&lib, &[], None, 100, &[]);
    f.add(&app, &[&lib, &app], None, 200, &[]);
    f.add(&junk_dep, &[], None, 300, &[]);
    f.add(&junk, &[&junk_dep], None, 400, &[]);

    let live = f.run(&request(GcAction::ReturnLive), &[&app]).unwrap();
    assert_eq!(live.paths, printed(&[&lib, &app]));
    let dead = f.run(&request(GcAction::ReturnDead), &[&app]).unwrap();
    assert_eq!(dead.paths, printed(&[&junk, &junk_dep]));
    assert!(f.valid(&junk), "returning the dead deletes nothing");

    let outcome = f.run(&request(GcAction::DeleteDead), &[&app]).unwrap();
    assert_eq!(outcome.paths, printed(&[&junk, &junk_dep]));
    assert_eq!(outcome.bytes_freed, 700, "{outcome:?}");
    assert!(f.gone(&junk) && f.gone(&junk_dep));
    assert!(f.valid(&lib) && f.exists(&lib) && f.valid(&app) && f.exists(&app));
    // Referrers go before their references.
    let order: Vec<&String> = outcome
        .messages
        .iter()
        .filter(|m| m.starts_with("deleting '"))
        .collect();
    assert_eq!(
        order,
        [
            &format!("deleting '{}'", StoreDir::default().print(&junk)),
            &format!("deleting '{}'", StoreDir::default().print(&junk_dep)),
        ]
    );
    assert_eq!(outcome.messages[0], "finding garbage collector roots...");
    assert!(outcome.messages.contains(&"deleting garbage...".to_owned()));
    // Nothing is left in staging.
    let staging = f.s().layout.staging_dir();
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[test]
fn a_zero_limit_returns_and_deletes_nothing() {
    let f = Fixture::new();
    let junk = test_path("junk");
    f.add(&junk, &[], None, 10, &[]);
    for action in [
        GcAction::ReturnDead,
        GcAction::ReturnLive,
        GcAction::DeleteDead,
    ] {
        let mut r = request(action);
        r.max_freed = 0;
        let outcome = f.run(&r, &[]).unwrap();
        assert!(outcome.paths.is_empty(), "{action:?}: {outcome:?}");
    }
    assert!(f.valid(&junk) && f.exists(&junk));
}

#[test]
fn max_freed_stops_after_the_limit_is_passed() {
    let f = Fixture::new();
    let paths: Vec<StorePath> = (0..5).map(|i| test_path(&format!("p{i}"))).collect();
    for p in &paths {
        f.add(p, &[], None, 1000, &[]);
    }
    let mut r = request(GcAction::DeleteDead);
    r.max_freed = 1500;
    let outcome = f.run(&r, &[]).unwrap();
    assert_eq!(outcome.paths.len(), 2, "{outcome:?}");
    assert_eq!(outcome.bytes_freed, 2000);
    assert!(outcome
        .messages
        .contains(&"deleted more than 1500 bytes; stopping".to_owned()));
    let left = paths.iter().filter(|p| f.valid(p) && f.exists(p)).count();
    assert_eq!(left, 3);
}

#[test]
fn keep_derivations_and_keep_outputs_spread_liveness() {
    let f = Fixture::new();
    let drv = test_path("hello.drv");
    let out = test_path("hello");
    f.add(&out, &[], Some(&drv), 10, &[]);
    f.add(&drv, &[], None, 10, &[("out", &out)]);

    // keep-derivations (the default): a live output keeps its derivation.
    let live = f.run(&request(GcAction::ReturnLive), &[&out]).unwrap();
    assert_eq!(live.paths, printed(&[&drv, &out]));
    let mut r = request(GcAction::ReturnLive);
    r.keep_derivations = false;
    assert_eq!(f.run(&r, &[&out]).unwrap().paths, printed(&[&out]));

    // keep-outputs: a live derivation keeps its outputs.
    let live = f.run(&request(GcAction::ReturnLive), &[&drv]).unwrap();
    assert_eq!(live.paths, printed(&[&drv]));
    let mut r = request(GcAction::ReturnLive);
    r.keep_outputs = true;
    assert_eq!(f.run(&r, &[&drv]).unwrap().paths, printed(&[&drv, &out]));

    // Both: the derivation and its output keep each other, and die together.
    let mut r = request(GcAction::DeleteDead);
    r.keep_outputs = true;
    let outcome = f.run(&r, &[]).unwrap();
    assert_eq!(outcome.paths, printed(&[&drv, &out]));
    assert!(f.gone(&drv) && f.gone(&out));
}

#[test]
fn delete_specific_refuses_a_live_path_and_deletes_nothing() {
    let f = Fixture::new();
    let (lib, app, dead_user, lone) = (
        test_path("lib"),
        test_path("app"),
        test_path("dead-user"),
        test_path("lone"),
    );
    f.add(&lib, &[], None, 10, &[]);
    f.add(&app, &[&lib], None, 10, &[]);
    f.add(&lone, &[], None, 10, &[]);
    f.add(&dead_user, &[&lone], None, 10, &[]);

    let mut r = request(GcAction::DeleteSpecific);
    r.paths = [lib.clone(), dead_user.clone()].into();
    match f.run(&r, &[&app]) {
        Err(GcError::StillAlive(p)) => assert_eq!(p, lib),
        other => panic!("expected StillAlive: {other:?}"),
    }
    assert!(f.valid(&lib) && f.valid(&dead_user), "nothing was deleted");

    // A dead path whose (dead) referrer is not named stays too, as in Nix.
    r.paths = [lone.clone()].into();
    assert!(matches!(f.run(&r, &[&app]), Err(GcError::StillAlive(p)) if p == lone));

    // Named together, they go; nothing else does.
    r.paths = [lone.clone(), dead_user.clone()].into();
    let outcome = f.run(&r, &[&app]).unwrap();
    assert_eq!(outcome.paths, printed(&[&lone, &dead_user]));
    assert!(f.gone(&lone) && f.gone(&dead_user));
    assert!(f.valid(&lib) && f.valid(&app));
}

#[test]
fn temporary_roots_of_live_owners_count_and_stale_files_go() {
    let f = Fixture::new();
    let (kept, stale_root, junk) = (test_path("kept"), test_path("stale"), test_path("junk"));
    f.add(&kept, &[], None, 10, &[]);
    f.add(&stale_root, &[], None, 10, &[]);
    f.add(&junk, &[], None, 10, &[]);
    let state = f.state_dir();
    let _live_owner = hold_temp_roots(&state, "live", &[&kept]);
    // A file nobody holds: its owner died.
    drop(hold_temp_roots(&state, "dead", &[&stale_root]));

    let outcome = f.run(&request(GcAction::DeleteDead), &[]).unwrap();
    assert_eq!(outcome.paths, printed(&[&junk, &stale_root]));
    assert!(f.valid(&kept) && f.exists(&kept));
    assert!(!state.join("temproots/dead").exists());
    assert!(state.join("temproots/live").exists());
    assert!(outcome
        .messages
        .iter()
        .any(|m| m.starts_with("removing stale temporary roots file")));
}

#[test]
fn invalid_entries_go_unless_a_temporary_root_names_them() {
    let f = Fixture::new();
    let (rooted, stray) = (test_path("partial"), test_path("stray"));
    let store_dir = f.s().layout.real_store_dir().to_owned();
    for p in [&rooted, &stray] {
        std::fs::write(store_dir.join(p.base_name()), b"half written").unwrap();
    }
    std::fs::write(store_dir.join("not-a-store-path"), b"?").unwrap();
    let _owner = hold_temp_roots(&f.state_dir(), "adder", &[&rooted]);

    let dead = f.run(&request(GcAction::ReturnDead), &[]).unwrap();
    assert!(dead.paths.contains(&StoreDir::default().print(&stray)));

    f.run(&request(GcAction::DeleteDead), &[]).unwrap();
    assert!(store_dir.join(rooted.base_name()).exists());
    assert!(!store_dir.join(stray.base_name()).exists());
    assert!(!store_dir.join("not-a-store-path").exists());
    assert!(store_dir.join(LINKS_DIR_NAME).exists());
    assert!(store_dir.join(STAGING_DIR_NAME).exists());
}

#[test]
fn a_root_sent_to_the_socket_during_a_collection_is_kept() {
    let f = Fixture::new();
    let paths: Vec<StorePath> = (0..50).map(|i| test_path(&format!("p{i}"))).collect();
    for p in &paths {
        f.add(p, &[], None, 10, &[]);
    }
    let state = f.state_dir();
    let socket = state.join("gc-socket/socket");
    // Hold the store so the collection waits after it started listening; then send a root.
    let held = f.s();
    std::thread::scope(|scope| {
        let gc = scope.spawn(|| f.run(&request(GcAction::DeleteDead), &[]).unwrap());
        let mut stream = loop {
            if let Ok(stream) = UnixStream::connect(&socket) {
                break stream;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let wanted = &paths[37];
        writeln!(stream, "{}", StoreDir::default().print(wanted)).unwrap();
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, b"1");
        drop(held);
        let outcome = gc.join().unwrap();
        assert_eq!(outcome.paths.len(), 49, "{outcome:?}");
    });
    assert!(f.valid(&paths[37]) && f.exists(&paths[37]));
    assert!(
        UnixStream::connect(&socket).is_err(),
        "nobody listens once the collection is over"
    );
}

#[test]
fn a_path_that_gains_a_referrer_during_the_collection_is_kept() {
    let f = Fixture::new();
    let dep = test_path("dep");
    f.add(&dep, &[], None, 10, &[]);
    let snapshot = f.s().db.gc_snapshot().unwrap();
    let graph = Graph::build(snapshot, false, true);
    let idx = graph.index[&dep];
    assert!(!graph.closure(Vec::new())[idx], "dead in the snapshot");
    // After the snapshot, a new valid path refers to it.
    let user = test_path("user");
    f.add(&user, &[&dep], None, 10, &[]);
    let s = f.s();
    let allowed: HashSet<StorePath> = [dep.clone()].into();
    let allowed = |p: &StorePath| allowed.contains(p);
    assert!(!still_garbage(&s, &dep, &allowed, &request(GcAction::DeleteDead)).unwrap());
}

#[test]
fn unused_links_are_removed_and_shared_ones_stay() {
    let f = Fixture::new();
    let links = f.s().layout.links_dir();
    std::fs::create_dir_all(&links).unwrap();
    std::fs::write(links.join("unused"), b"nobody links me").unwrap();
    let shared = f.s().layout.real_store_dir().join("shared-file");
    std::fs::write(links.join("shared"), b"linked").unwrap();
    std::fs::hard_link(links.join("shared"), &shared).unwrap();
    let p = test_path("holder");
    f.add(&p, &[], None, 1, &[]);
    std::fs::set_permissions(
        f.s().layout.real_path(&p),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&shared, f.s().layout.real_path(&p).join("f")).unwrap();

    let outcome = f.run(&request(GcAction::DeleteDead), &[&p]).unwrap();
    assert!(!links.join("unused").exists());
    assert!(links.join("shared").exists());
    assert_eq!(std::fs::metadata(links.join("shared")).unwrap().nlink(), 2);
    assert!(outcome
        .messages
        .iter()
        .any(|m| m.starts_with("note: currently hard linking saves")));

    // Once the holder goes, the link goes too, and its bytes count as freed once.
    let outcome = f.run(&request(GcAction::DeleteDead), &[]).unwrap();
    assert_eq!(outcome.paths, printed(&[&p]));
    assert!(!links.join("shared").exists());
    assert_eq!(
        outcome.bytes_freed,
        1 + b"linked".len() as u64,
        "{outcome:?}"
    );
}

#[test]
fn deletion_order_puts_referrers_first_and_cycles_together() {
    let f = Fixture::new();
    let (a, b, c) = (test_path("a"), test_path("b"), test_path("c"));
    f.add(&c, &[], None, 1, &[]);
    f.add(&b, &[&c], None, 1, &[]);
    f.add(&a, &[&b], None, 1, &[]);
    let graph = Graph::build(f.s().db.gc_snapshot().unwrap(), false, true);
    let all = vec![true; graph.paths.len()];
    let order: Vec<Vec<&StorePath>> = graph
        .deletion_order(&all)
        .into_iter()
        .map(|c| c.into_iter().map(|i| &graph.paths[i]).collect())
        .collect();
    assert_eq!(order, vec![vec![&a], vec![&b], vec![&c]]);
}
