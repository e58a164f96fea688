//! Garbage collection: which paths are alive, and deleting the others without ever deleting a
//! path that a client is adding or has just made a root.
//!
//! The collector works as Nix 2.8's does, with the same files, so a Nix collector run on the
//! same store and ward's channels keep each other's roots:
//!
//! 1. It takes `gc.lock` exclusively and listens on `<state>/gc-socket/socket`. From then on
//!    a channel that adds a temporary root cannot take its shared lock on `gc.lock`, and
//!    sends the root to the socket instead ([`crate::temproots`]); the collector records its
//!    hash part before it acknowledges.
//! 2. It reads the temporary roots of every live owner (`temproots/*` whose lock it cannot
//!    take; stale files are removed) and takes the permanent and runtime roots from the caller
//!    (found by the root-side helper: the store-writer cannot read users' links or `/proc`).
//! 3. From one consistent read of the database it computes the live paths: the closure of the
//!    roots over references, a derivation's outputs (`keep-outputs`) and a path's deriver
//!    (`keep-derivations`).
//! 4. It deletes the dead paths in groups, referrers before their references (a cycle, as
//!    `keep-outputs` with `keep-derivations` makes between a derivation and its outputs, goes
//!    as one group). Each group is re-checked while the store is held — no temporary root
//!    arrived for it, nothing outside the deleted groups refers to it now — then invalidated
//!    in the database and only then moved out of the store into the store-writer's private
//!    staging directory, all under the store's lock, and deleted from there (by directory
//!    handles, never following a symlink) after the lock is released. Additions commit under
//!    the same lock and add their temporary root before they look at validity, so an addition
//!    either is seen by the re-check or finds the path gone and writes it anew.
//!
//! A crash between invalidation and deletion leaves files in staging, which the next
//! store-writer clears at start-up; it never leaves a valid path without its files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode};
use rustix::io::Errno;
use thiserror::Error;
use ward_proto::ipc::store_writer::GcAction;
use ward_proto::store_path::{StoreDir, StorePath, HASH_PART_LEN};

use crate::db::DbError;
use crate::fsutil::{self, FsError};
use crate::layout::{StoreLayout, LINKS_DIR_NAME, STAGING_DIR_NAME};
use crate::Store;

/// Most paths deleted in one hold of the store's lock when no `max-freed` limit applies.
const BATCH_PATHS: usize = 256;
/// Longest hold of the store's lock for one batch's checks.
const BATCH_TIME: Duration = Duration::from_millis(50);
/// `.links` entries checked per hold of the store's lock.
const LINKS_BATCH: usize = 1024;

/// A garbage collection could not be done.
#[derive(Debug, Error)]
pub enum GcError {
    /// The database could not be read or changed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Setting up the collection failed (socket, lock, roots files).
    #[error("{what} '{path}': {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file at fault.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `DeleteSpecific` named a path that is still reachable from a root (or from a path that
    /// was not named).
    #[error("cannot delete path '{0}' since it is still alive")]
    StillAlive(StorePath),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GcError {
    let path = path.to_owned();
    move |source| GcError::Io { what, path, source }
}

/// What to collect.
#[derive(Debug, Clone)]
pub struct GcRequest {
    /// Nix's GC action.
    pub action: GcAction,
    /// For `DeleteSpecific`: the paths to delete.
    pub paths: BTreeSet<StorePath>,
    /// Stop deleting once more than this many bytes were freed. As in Nix, 0 does nothing
    /// (clients send `u64::MAX` for no limit).
    pub max_freed: u64,
    /// `keep-outputs`: a live derivation keeps its outputs alive.
    pub keep_outputs: bool,
    /// `keep-derivations`: a live path keeps its deriver alive.
    pub keep_derivations: bool,
}

/// What a collection found or did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Full paths: the live or dead ones (`ReturnLive`, `ReturnDead`) or those deleted.
    pub paths: BTreeSet<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// What the client is told, in order, in Nix's words.
    pub messages: Vec<String>,
}

/// Permanent and runtime roots, as found outside the store-writer.
#[derive(Debug, Clone, Default)]
pub struct ExternalRoots {
    /// Store paths named by roots (their validity is checked here).
    pub paths: BTreeSet<StorePath>,
}

/// Hash parts of the temporary roots known to a running collection.
type TempHashes = Arc<Mutex<HashSet<String>>>;

fn lock_hashes(hashes: &TempHashes) -> MutexGuard<'_, HashSet<String>> {
    hashes.lock().unwrap_or_else(|p| p.into_inner())
}

/// The hash part of a printed store path (or of a store entry name), if it has one.
fn hash_part_of(store_dir: &StoreDir, text: &str) -> Option<String> {
    let rest = text
        .strip_prefix(store_dir.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(text);
    let hash = rest.get(..HASH_PART_LEN)?;
    let nix32 = |c: char| c.is_ascii_digit() || (c.is_ascii_lowercase() && !"eotu".contains(c));
    hash.chars().all(nix32).then(|| hash.to_owned())
}

/// The collector's end of `<state>/gc-socket/socket`: accepts roots sent by channels (and by
/// any Nix process using the store) while the collection runs.
struct RootsServer {
    socket_path: PathBuf,
    stop: Arc<AtomicBool>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl RootsServer {
    fn start(state_dir: &Path, store_dir: &StoreDir, hashes: TempHashes) -> Result<Self, GcError> {
        let dir = state_dir.join("gc-socket");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&dir)
            .map_err(io("creating directory", &dir))?;
        // Bound under a private name and renamed into place, so a client never finds the
        // name missing while this collector holds `gc.lock` (Nix's clients retry a refused
        // connection to a stale socket, not a missing one).
        let socket_path = dir.join("socket");
        let fresh = dir.join(format!(".socket-{}", std::process::id()));
        match std::fs::remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing stale socket", &fresh)(e)),
        }
        let listener = UnixListener::bind(&fresh).map_err(io("binding", &fresh))?;
        // Root processes of Nix may connect too; others cannot reach the state dir anyway.
        let _ = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o666));
        std::fs::rename(&fresh, &socket_path).map_err(io("renaming into place", &fresh))?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let thread = {
            let stop = Arc::clone(&stop);
            let clients = Arc::clone(&clients);
            let store_dir = store_dir.clone();
            std::thread::Builder::new()
                .name("gc-roots-server".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let Ok(kept) = stream.try_clone() else {
                            continue;
                        };
                        clients.lock().unwrap_or_else(|p| p.into_inner()).push(kept);
                        let hashes = Arc::clone(&hashes);
                        let store_dir = store_dir.clone();
                        let _ = std::thread::Builder::new()
                            .name("gc-roots-client".into())
                            .spawn(move || serve_roots_client(stream, &store_dir, &hashes));
                    }
                })
                .map_err(io("starting the roots server for", &socket_path))?
        };
        Ok(RootsServer {
            socket_path,
            stop,
            clients,
            thread: Some(thread),
        })
    }
}

/// Reads roots, one printed path per line, recording each before acknowledging it with `1`.
fn serve_roots_client(stream: UnixStream, store_dir: &StoreDir, hashes: &TempHashes) {
    let Ok(mut reply) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream.take(1 << 20));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Each line is bounded by the reader's limit in total; refresh it per root.
        reader.get_mut().set_limit(1 << 20);
        let text = line.trim_end_matches('\n');
        match hash_part_of(store_dir, text) {
            Some(hash) => {
                tracing::debug!(root = text, "got a new temporary root during collection");
                lock_hashes(hashes).insert(hash);
            }
            None => tracing::warn!("received garbage instead of a root: {text:?}"),
        }
        if reply.write_all(b"1").is_err() {
            return;
        }
    }
}

impl Drop for RootsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then end every client's reader.
        let _ = UnixStream::connect(&self.socket_path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for client in self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        // The socket file stays: a client finding it refuses connections tries `gc.lock`
        // again, as Nix's do, where a missing file would be an error to them.
    }
}

/// Takes `gc.lock` exclusively (waiting for another collector).
fn lock_gc(state_dir: &Path) -> Result<std::fs::File, GcError> {
    let path = state_dir.join("gc.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io("opening", &path))?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| io("locking", &path)(e.into()))?;
    Ok(file)
}

/// Reads the temporary roots of every live owner into `hashes` and returns them as paths;
/// files whose lock can be taken belong to dead processes and are removed, as Nix does (the
/// byte written tells an owner that raced with the removal to start over).
fn read_temp_roots(
    state_dir: &Path,
    store_dir: &StoreDir,
    hashes: &TempHashes,
    messages: &mut Vec<String>,
) -> Result<BTreeSet<StorePath>, GcError> {
    let dir_path = state_dir.join("temproots");
    let dir = fsutil::open_dir_path(&dir_path)?;
    let mut roots = BTreeSet::new();
    for name in fsutil::list_dir(dir.as_fd(), &dir_path)? {
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = dir_path.join(&name);
        let fd = match rustix::fs::openat(
            &dir,
            &name,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(io("opening temporary roots file", &path)(e.into())),
        };
        let mut file = std::fs::File::from(fd);
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                messages.push(format!(
                    "removing stale temporary roots file '{}'",
                    path.display()
                ));
                match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(io("removing", &path)(e.into())),
                }
                let _ = file.write_all(b"d");
                continue;
            }
            Err(Errno::WOULDBLOCK) => {}
            Err(e) => return Err(io("locking", &path)(e.into())),
        }
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)
            .map_err(io("reading temporary roots file", &path))?;
        for item in contents.split(|b| *b == 0).filter(|s| !s.is_empty()) {
            let Ok(text) = std::str::from_utf8(item) else {
                continue;
            };
            if let Some(hash) = hash_part_of(store_dir, text) {
                lock_hashes(hashes).insert(hash);
            }
            if let Ok((root, _)) = store_dir.parse_path_with_suffix(text) {
                roots.insert(root);
            }
        }
    }
    Ok(roots)
}

/// The paths of one snapshot, with the edges along which liveness spreads.
struct Graph {
    paths: Vec<StorePath>,
    index: HashMap<StorePath, usize>,
    /// `i` alive ⇒ `successors[i]` alive.
    successors: Vec<Vec<usize>>,
    /// The reverse edges.
    predecessors: Vec<Vec<usize>>,
}

impl Graph {
    fn build(snapshot: crate::db::GcSnapshot, keep_outputs: bool, keep_derivations: bool) -> Self {
        let paths: Vec<StorePath> = snapshot.paths.iter().map(|r| r.path.clone()).collect();
        let index: HashMap<StorePath, usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        let mut successors = vec![Vec::new(); paths.len()];
        let mut edge = |from: usize, to: usize| {
            if from != to {
                successors[from].push(to);
            }
        };
        for &(referrer, reference) in &snapshot.references {
            edge(referrer, reference);
        }
        if keep_derivations {
            for (i, row) in snapshot.paths.iter().enumerate() {
                if let Some(&d) = row.deriver.as_ref().and_then(|d| index.get(d)) {
                    edge(i, d);
                }
            }
        }
        if keep_outputs {
            for (drv, output) in &snapshot.derivation_outputs {
                if let Some(&o) = index.get(output) {
                    edge(*drv, o);
                }
            }
        }
        let mut predecessors = vec![Vec::new(); paths.len()];
        for (from, tos) in successors.iter_mut().enumerate() {
            tos.sort_unstable();
            tos.dedup();
            for &to in tos.iter() {
                predecessors[to].push(from);
            }
        }
        Graph {
            paths,
            index,
            successors,
            predecessors,
        }
    }

    /// Everything reachable from `roots`.
    fn closure(&self, roots: impl IntoIterator<Item = usize>) -> Vec<bool> {
        let mut seen = vec![false; self.paths.len()];
        let mut todo: Vec<usize> = Vec::new();
        for r in roots {
            if !seen[r] {
                seen[r] = true;
                todo.push(r);
            }
        }
        while let Some(i) = todo.pop() {
            for &j in &self.successors[i] {
                if !seen[j] {
                    seen[j] = true;
                    todo.push(j);
                }
            }
        }
        seen
    }

    /// The strongly connected components of the subgraph on `members`, predecessors first
    /// (Tarjan's algorithm emits successors first; the result is reversed).
    fn deletion_order(&self, members: &[bool]) -> Vec<Vec<usize>> {
        const UNSEEN: usize = usize::MAX;
        let n = self.paths.len();
        let mut number = vec![UNSEEN; n];
        let mut low = vec![0usize; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<usize> = Vec::new();
        let mut components: Vec<Vec<usize>> = Vec::new();
        let mut next = 0usize;
        for start in (0..n).filter(|&i| members[i]) {
            if number[start] != UNSEEN {
                continue;
            }
            // (node, position in its successor list)
            let mut work: Vec<(usize, usize)> = vec![(start, 0)];
            number[start] = next;
            low[start] = next;
            next += 1;
            stack.push(start);
            on_stack[start] = true;
            while let Some(&mut (v, ref mut pos)) = work.last_mut() {
                let succ = &self.successors[v];
                if *pos < succ.len() {
                    let w = succ[*pos];
                    *pos += 1;
                    if !members[w] {
                        continue;
                    }
                    if number[w] == UNSEEN {
                        number[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(number[w]);
                    }
                } else {
                    work.pop();
                    if let Some(&(parent, _)) = work.last() {
                        low[parent] = low[parent].min(low[v]);
                    }
                    if low[v] == number[v] {
                        let mut component = Vec::new();
                        loop {
                            let w = stack.pop().expect("v is on the stack");
                            on_stack[w] = false;
                            component.push(w);
                            if w == v {
                                break;
                            }
                        }
                        components.push(component);
                    }
                }
            }
        }
        components.reverse();
        components
    }
}

/// One thing to delete: a group of valid paths that go together, or an entry of the store
/// directory that is not a valid path.
enum Unit {
    Valid(Vec<StorePath>),
    Invalid(OsString),
}

impl Unit {
    fn len(&self) -> usize {
        match self {
            Unit::Valid(paths) => paths.len(),
            Unit::Invalid(_) => 1,
        }
    }
}

/// Runs a collection. `store` is the store-writer's store, held only for short steps.
pub fn collect_garbage(
    store: &Mutex<Store>,
    layout: &StoreLayout,
    request: &GcRequest,
    external: &ExternalRoots,
) -> Result<GcOutcome, GcError> {
    let lock = || store.lock().unwrap_or_else(|p| p.into_inner());
    let store_dir = layout.store_dir().clone();
    let state_dir = layout.state_dir().to_owned();
    let mut outcome = GcOutcome::default();
    let should_delete = matches!(
        request.action,
        GcAction::DeleteDead | GcAction::DeleteSpecific
    );
    if should_delete {
        // Nix frees its reserved space first, so a full disk can still be collected.
        let _ = std::fs::remove_file(layout.reserved_file());
    }

    // Another collector (ours or Nix's) finishes first; then roots go to our socket.
    let _gc_lock = lock_gc(&state_dir)?;
    let hashes: TempHashes = Arc::default();
    let _server = RootsServer::start(&state_dir, &store_dir, Arc::clone(&hashes))?;

    outcome
        .messages
        .push("finding garbage collector roots...".into());
    let temp_roots = read_temp_roots(&state_dir, &store_dir, &hashes, &mut outcome.messages)?;

    let snapshot = lock().db.gc_snapshot()?;
    let graph = Graph::build(snapshot, request.keep_outputs, request.keep_derivations);
    let root_indices: Vec<usize> = external
        .paths
        .iter()
        .chain(&temp_roots)
        .filter_map(|p| graph.index.get(p).copied())
        .collect();
    let mut live = graph.closure(root_indices);
    // A temporary root may name only a hash part (a `.lock` or `.check` suffix).
    {
        let by_hash: Vec<usize> = {
            let known = lock_hashes(&hashes);
            (0..graph.paths.len())
                .filter(|&i| !live[i] && known.contains(graph.paths[i].hash_part()))
                .collect()
        };
        if !by_hash.is_empty() {
            let more = graph.closure(by_hash);
            for (l, m) in live.iter_mut().zip(more) {
                *l |= m;
            }
        }
    }

    // Entries of the store directory that are not valid paths.
    let invalid_entries: Vec<OsString> = {
        let s = lock();
        let real = layout.real_store_dir();
        fsutil::list_dir(s.store_fd.as_fd(), real)?
            .into_iter()
            .filter(|name| {
                let Some(text) = name.to_str() else {
                    return true;
                };
                if text == LINKS_DIR_NAME || text == STAGING_DIR_NAME {
                    return false;
                }
                StorePath::from_base_name(text)
                    .map(|p| !graph.index.contains_key(&p))
                    .unwrap_or(true)
            })
            .collect()
    };

    let print_entry = |name: &OsStr| format!("{}/{}", store_dir.as_str(), name.to_string_lossy());

    match request.action {
        GcAction::ReturnLive => {
            if request.max_freed > 0 {
                outcome.paths = (0..graph.paths.len())
                    .filter(|&i| live[i])
                    .map(|i| store_dir.print(&graph.paths[i]))
                    .collect();
            }
            return Ok(outcome);
        }
        GcAction::ReturnDead => {
            if request.max_freed > 0 {
                outcome.paths = (0..graph.paths.len())
                    .filter(|&i| !live[i])
                    .map(|i| store_dir.print(&graph.paths[i]))
                    .chain(invalid_entries.iter().map(|n| print_entry(n)))
                    .collect();
            }
            return Ok(outcome);
        }
        GcAction::DeleteDead | GcAction::DeleteSpecific => {}
    }

    let mut units: Vec<Unit> = Vec::new();
    if request.action == GcAction::DeleteSpecific {
        // A named path goes only if it is dead and everything that keeps it alive goes too.
        let mut deletable = vec![false; graph.paths.len()];
        for path in &request.paths {
            if let Some(&i) = graph.index.get(path) {
                deletable[i] = !live[i];
            }
        }
        loop {
            let mut changed = false;
            for i in 0..graph.paths.len() {
                if deletable[i] && graph.predecessors[i].iter().any(|&p| !deletable[p]) {
                    deletable[i] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        if let Some(alive) = request
            .paths
            .iter()
            .find(|p| graph.index.get(*p).is_some_and(|&i| !deletable[i]))
        {
            return Err(GcError::StillAlive(alive.clone()));
        }
        units.extend(
            graph
                .deletion_order(&deletable)
                .into_iter()
                .map(|c| Unit::Valid(c.into_iter().map(|i| graph.paths[i].clone()).collect())),
        );
        let named: HashSet<&str> = request.paths.iter().map(|p| p.base_name()).collect();
        units.extend(
            invalid_entries
                .into_iter()
                .filter(|n| n.to_str().is_some_and(|t| named.contains(t)))
                .map(Unit::Invalid),
        );
    } else if request.max_freed > 0 {
        outcome.messages.push("deleting garbage...".into());
        let dead: Vec<bool> = live.iter().map(|l| !l).collect();
        units.extend(
            graph
                .deletion_order(&dead)
                .into_iter()
                .map(|c| Unit::Valid(c.into_iter().map(|i| graph.paths[i].clone()).collect())),
        );
        units.extend(invalid_entries.into_iter().map(Unit::Invalid));
    }

    let batch_limit = if request.max_freed == u64::MAX {
        BATCH_PATHS
    } else {
        1
    };
    let mut units = units.into_iter().peekable();
    let mut trash_counter = 0u64;
    let pid = std::process::id();
    // Without a byte limit, staged entries are deleted by a few threads while the next batch
    // is checked: deletion mostly waits for the file system, and those waits overlap.
    let deleter = if request.max_freed == u64::MAX && should_delete {
        let staging_fd = lock()
            .staging_fd
            .try_clone()
            .map_err(|e| io("duplicating", &layout.staging_dir())(e))?;
        Some(Deleter::start(staging_fd, layout.staging_dir()))
    } else {
        None
    };
    'batches: while units.peek().is_some() {
        // Under the store's lock: re-check, invalidate, move out of the store.
        let mut moved: Vec<(String, OsString)> = Vec::new();
        {
            let mut s = lock();
            let started = Instant::now();
            let mut doomed: HashSet<StorePath> = HashSet::new();
            let mut doomed_order: Vec<StorePath> = Vec::new();
            let mut invalid: Vec<OsString> = Vec::new();
            let mut taken = 0;
            while taken < batch_limit && started.elapsed() < BATCH_TIME {
                let Some(unit) = units.next() else { break };
                taken += unit.len();
                match unit {
                    Unit::Valid(paths) => {
                        // What may refer to the unit: itself and what this batch already
                        // dooms (checked in place: copying the sets per unit was quadratic).
                        let allowed =
                            |other: &StorePath| doomed.contains(other) || paths.contains(other);
                        let mut still_dead = true;
                        for p in &paths {
                            if lock_hashes(&hashes).contains(p.hash_part())
                                || !still_garbage(&s, p, &allowed, request)?
                            {
                                still_dead = false;
                                break;
                            }
                        }
                        if still_dead {
                            doomed.extend(paths.iter().cloned());
                            doomed_order.extend(paths);
                        } else {
                            tracing::debug!(
                                paths = ?paths.iter().map(|p| p.base_name().to_owned()).collect::<Vec<_>>(),
                                "became alive during the collection; kept"
                            );
                        }
                    }
                    Unit::Invalid(name) => {
                        let rooted = name.to_str().is_some_and(|t| {
                            hash_part_of(&store_dir, t)
                                .is_some_and(|h| lock_hashes(&hashes).contains(&h))
                        });
                        let valid_now = match name.to_str().map(StorePath::from_base_name) {
                            Some(Ok(p)) => s.db.is_valid(&p)?,
                            _ => false,
                        };
                        if !rooted && !valid_now {
                            invalid.push(name);
                        }
                    }
                }
            }
            if !doomed_order.is_empty() {
                s.db.invalidate_garbage(&doomed_order)?;
            }
            let names: Vec<(String, OsString)> = doomed_order
                .iter()
                .map(|p| (store_dir.print(p), OsString::from(p.base_name())))
                .chain(invalid.into_iter().map(|n| (print_entry(&n), n)))
                .collect();
            for (shown, name) in names {
                trash_counter += 1;
                let trash = OsString::from(format!("gc-{pid}-{trash_counter}"));
                match move_to_staging(&s, &name, &trash, &layout.real_store_dir().join(&name))? {
                    Removal::Staged => moved.push((shown, trash)),
                    // Invalid now, and its files were already gone.
                    Removal::Gone => {
                        outcome.messages.push(format!("deleting '{shown}'"));
                        outcome.paths.insert(shown);
                    }
                }
            }
        }
        // Without the lock: delete what was moved out.
        let staging_fd = {
            let s = lock();
            s.staging_fd
                .try_clone()
                .map_err(|e| io("duplicating", &layout.staging_dir())(e))?
        };
        for (shown, trash) in moved {
            outcome.messages.push(format!("deleting '{shown}'"));
            outcome.paths.insert(shown);
            if let Some(deleter) = &deleter {
                deleter.delete(trash);
                continue;
            }
            fsutil::remove_tree_counting(
                staging_fd.as_fd(),
                &trash,
                &layout.staging_dir().join(&trash),
                &mut outcome.bytes_freed,
            )?;
            if outcome.bytes_freed > request.max_freed {
                outcome.messages.push(format!(
                    "deleted more than {} bytes; stopping",
                    request.max_freed
                ));
                break 'batches;
            }
        }
    }
    // Every staged entry is gone before the links are counted.
    if let Some(deleter) = deleter {
        outcome.bytes_freed += deleter.finish()?;
    }

    remove_unused_links(&lock, &layout.links_dir(), &mut outcome)?;
    Ok(outcome)
}

/// Whether valid path `p` is still garbage: nothing outside `allowed` refers to it or keeps it
/// alive through `keep-outputs` or `keep-derivations`, now. The store is held.
fn still_garbage(
    s: &Store,
    p: &StorePath,
    allowed: &dyn Fn(&StorePath) -> bool,
    request: &GcRequest,
) -> Result<bool, GcError> {
    if !s.db.is_valid(p)? {
        return Ok(false);
    }
    let keeps = |other: &StorePath| other != p && !allowed(other);
    if s.db.query_referrers(p)?.iter().any(keeps) {
        return Ok(false);
    }
    if request.keep_derivations && p.is_derivation() {
        for (_, output) in s.db.query_derivation_outputs(p)? {
            if keeps(&output) {
                if let Some(info) = s.db.query_path_info(&output)? {
                    if info.deriver.as_ref() == Some(p) {
                        return Ok(false);
                    }
                }
            }
        }
    }
    if request.keep_outputs && s.db.query_valid_derivers(p)?.iter().any(keeps) {
        return Ok(false);
    }
    Ok(true)
}

/// Threads deleting staged entries, with the bytes they freed and their first error.
struct Deleter {
    queue: Option<std::sync::mpsc::SyncSender<OsString>>,
    threads: Vec<JoinHandle<()>>,
    freed: Arc<std::sync::atomic::AtomicU64>,
    failure: Arc<Mutex<Option<FsError>>>,
}

/// Threads of a [`Deleter`].
const DELETE_THREADS: usize = 4;

impl Deleter {
    fn start(staging_fd: OwnedFd, staging_dir: PathBuf) -> Deleter {
        let (queue, entries) = std::sync::mpsc::sync_channel::<OsString>(4 * BATCH_PATHS);
        let entries = Arc::new(Mutex::new(entries));
        let staging_fd = Arc::new(staging_fd);
        let freed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let threads = (0..DELETE_THREADS)
            .map(|_| {
                let (entries, staging_fd, staging_dir) = (
                    Arc::clone(&entries),
                    Arc::clone(&staging_fd),
                    staging_dir.clone(),
                );
                let (freed, failure) = (Arc::clone(&freed), Arc::clone(&failure));
                std::thread::spawn(move || loop {
                    let next = entries.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(trash) = next else { return };
                    let mut bytes = 0;
                    match fsutil::remove_tree_counting(
                        staging_fd.as_fd(),
                        &trash,
                        &staging_dir.join(&trash),
                        &mut bytes,
                    ) {
                        Ok(_) => {
                            freed.fetch_add(bytes, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failure
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        Deleter {
            queue: Some(queue),
            threads,
            freed,
            failure,
        }
    }

    /// Queues a staged entry (waits while the threads are far behind).
    fn delete(&self, trash: OsString) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(trash);
        }
    }

    /// Waits for every queued entry; the bytes freed, or the first failure.
    fn finish(mut self) -> Result<u64, FsError> {
        self.queue = None;
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
        if let Some(e) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        Ok(self.freed.load(Ordering::Relaxed))
    }
}

/// What [`move_to_staging`] did with a store entry.
enum Removal {
    /// It did not exist.
    Gone,
    /// Moved into staging, to be deleted without the lock.
    Staged,
}

/// Moves the store entry `name` into staging as `trash` (deleting it there, without the
/// store's lock, waits for the file system: a discard per file on some). A directory gets
/// owner write permission first (renaming a directory updates its `..`).
fn move_to_staging(
    s: &Store,
    name: &OsStr,
    trash: &OsStr,
    shown: &Path,
) -> Result<Removal, GcError> {
    let Some(st) = fsutil::stat_at(s.store_fd.as_fd(), name, shown)? else {
        return Ok(Removal::Gone);
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory && st.st_mode & 0o200 == 0 {
        rustix::fs::chmodat(
            &s.store_fd,
            name,
            Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700),
            AtFlags::empty(),
        )
        .map_err(|e| io("making writable", shown)(e.into()))?;
    }
    match rustix::fs::renameat(&s.store_fd, name, &s.staging_fd, trash) {
        Ok(()) => Ok(Removal::Staged),
        Err(Errno::NOENT) => Ok(Removal::Gone),
        Err(e) => Err(io("moving out of the store", shown)(e.into())),
    }
}

/// Removes the `.links` entries nothing else links to any more, under the store's lock (the
/// optimiser links under it too, so a count of 1 cannot be about to grow).
fn remove_unused_links<'a, F>(
    lock: &F,
    links_dir: &Path,
    outcome: &mut GcOutcome,
) -> Result<(), GcError>
where
    F: Fn() -> MutexGuard<'a, Store>,
{
    outcome.messages.push("deleting unused links...".into());
    let links: OwnedFd = match fsutil::open_dir_path(links_dir) {
        Ok(fd) => fd,
        Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(())
        }
        Err(e) => return Err(e.into()),
    };
    let names = fsutil::list_dir(links.as_fd(), links_dir)?;
    let (mut actual, mut unshared) = (0i64, 0i64);
    for chunk in names.chunks(LINKS_BATCH) {
        let _held = lock();
        for name in chunk {
            let shown = links_dir.join(name);
            let Some(st) = fsutil::stat_at(links.as_fd(), name, &shown)? else {
                continue;
            };
            if st.st_nlink != 1 {
                actual += st.st_size;
                unshared += (st.st_nlink as i64 - 1) * st.st_size;
                continue;
            }
            tracing::debug!(link = %shown.display(), "deleting unused link");
            match rustix::fs::unlinkat(&links, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(io("deleting", &shown)(e.into())),
            }
        }
    }
    let overhead = rustix::fs::fstat(&links)
        .map(|st| st.st_blocks * 512)
        .unwrap_or(0);
    outcome.messages.push(format!(
        "note: currently hard linking saves {:.2} MiB",
        (unshared - actual - overhead) as f64 / (1024.0 * 1024.0)
    ));
    Ok(())
}

#[cfg(test)]
mod tests;
