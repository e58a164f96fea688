//! Sync-behind: an addition is registered as soon as its tree is in place, and a syncer thread
//! makes the contents of many additions durable with one filesystem sync.
//!
//! Nix 2.8 never flushes a path's contents; after a power loss its database can name paths
//! whose files are empty or missing. ward keeps the invariant that a valid path is whole on
//! disk without paying a flush per addition (a journal commit, about 0.3 ms on a virtual disk,
//! more than all the rest of a small add):
//!
//! 1. the rows of an addition are committed together with a `WardUnsynced` row per path
//!    ([`StoreDb::register_unsynced`](crate::db::StoreDb::register_unsynced));
//! 2. the syncer waits [`GATHER`] for more additions, syncs the store's filesystem once
//!    (`syncfs`, which also flushes the database's WAL), and only then deletes the marks that
//!    sync covered;
//! 3. at start, [`Store::recover_unsynced`] re-hashes every path still marked: one whose
//!    contents do not match is invalidated, with every path that refers to it, and removed.
//!
//! A reply therefore means: the path is valid now, survives a crash of any ward process at
//! once, and survives a power loss once the next sync is done (within [`GATHER`] plus the
//! sync's own time). `ward-durable-replies = true` restores a flush before every reply.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ward_proto::hash::Hasher;
use ward_proto::store_path::StorePath;

use crate::db::DbError;
use crate::fsutil;
use crate::store::Store;

/// How long the syncer waits after the first unsynced addition for others to share its sync.
pub const GATHER: Duration = Duration::from_millis(20);

/// The marks committed but not yet covered by a sync, shared by the store and the syncer.
#[derive(Debug, Default)]
pub struct SyncBehind {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Ids marked since the syncer last took them.
    pending: Vec<i64>,
    /// When the oldest of `pending` was committed.
    since: Option<Instant>,
    /// A sync taken from `pending` is running.
    syncing: bool,
}

impl SyncBehind {
    /// A new, empty tracker.
    pub fn new() -> Arc<SyncBehind> {
        Arc::new(SyncBehind::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records marks just committed and wakes the syncer.
    pub fn marked(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.state();
        state.pending.extend_from_slice(ids);
        state.since.get_or_insert_with(Instant::now);
        self.changed.notify_all();
    }

    /// Waits until every mark recorded so far is covered by a finished sync, or `timeout`
    /// passes; true when it is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        while !state.pending.is_empty() || state.syncing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Blocks until there is something to sync and its gathering time is over, then takes it.
    fn take(&self) -> Vec<i64> {
        let mut state = self.state();
        loop {
            match state.since {
                None => {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                Some(since) => {
                    let left = GATHER.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        state.since = None;
                        state.syncing = true;
                        return std::mem::take(&mut state.pending);
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Ends a sync: its ids are cleared, or (on failure) given back for the next round.
    fn finish(&self, failed: Option<Vec<i64>>) {
        let mut state = self.state();
        state.syncing = false;
        if let Some(mut ids) = failed {
            ids.append(&mut state.pending);
            state.pending = ids;
            state.since.get_or_insert_with(Instant::now);
        }
        self.changed.notify_all();
    }
}

/// Starts the syncer thread. `store_dir` is a descriptor on the physical store directory
/// (`shown` for messages; any descriptor on its filesystem would do for `syncfs`), and `clear`
/// deletes the marks of the ids a finished sync covered (under the store's lock).
pub fn start_syncer(
    tracker: Arc<SyncBehind>,
    store_dir: OwnedFd,
    shown: PathBuf,
    mut clear: impl FnMut(&[i64]) -> Result<(), DbError> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("syncer".into())
        .spawn(move || loop {
            let ids = tracker.take();
            let result = fsutil::sync_filesystem(store_dir.as_fd(), &shown)
                .map_err(|e| e.to_string())
                .and_then(|()| clear(&ids).map_err(|e| e.to_string()));
            match result {
                Ok(()) => {
                    tracing::trace!(paths = ids.len(), "synced the store's filesystem");
                    tracker.finish(None);
                }
                Err(e) => {
                    // The marks stay: the next round tries again, and a start after a crash
                    // re-checks these paths.
                    tracing::error!(
                        paths = ids.len(),
                        "syncing the store for recent additions failed: {e}; retrying"
                    );
                    tracker.finish(Some(ids));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map(drop)
}

/// What [`Store::recover_unsynced`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Marked paths whose contents matched their NAR hash.
    pub intact: usize,
    /// Paths invalidated and removed: the marked ones that did not match, and their referrers.
    pub invalidated: Vec<StorePath>,
}

impl Store {
    /// Re-checks the paths a previous run registered before a sync covered them (see the
    /// [module documentation](self)); invalidates and removes those whose contents are not
    /// what their rows say, and every path referring to one; syncs; clears the marks.
    pub fn recover_unsynced(&mut self) -> Result<Recovery, DbError> {
        let marked = self.db.unsynced_paths()?;
        let mut recovery = Recovery::default();
        if marked.is_empty() {
            self.db.clear_unsynced(None)?;
            return Ok(recovery);
        }
        let mut bad = Vec::new();
        for info in &marked {
            let real = self.layout.real_path(&info.path);
            let mut hasher = Hasher::new(info.nar_hash.algo());
            let whole = match ward_proto::nar::dump_path(&real, &mut hasher) {
                Ok(size) => hasher.finish() == info.nar_hash && info.nar_size == size,
                Err(_) => false,
            };
            if whole {
                recovery.intact += 1;
            } else {
                bad.push(info.path.clone());
            }
        }
        if !bad.is_empty() {
            let doomed = self.with_referrers(&bad)?;
            let order = self.referrers_first(&doomed)?;
            self.db.invalidate_paths(&order)?;
            for path in &order {
                let real = self.layout.real_path(path);
                let base = OsStr::new(path.base_name());
                if let Err(e) = fsutil::remove_tree_at(self.store_fd.as_fd(), base, &real) {
                    tracing::warn!(path = %real.display(), "removing an invalidated path: {e}");
                }
                tracing::warn!(
                    path = %self.layout.store_dir().print(path),
                    "invalidated: registered just before the machine went down, its contents \
                     never reached the disk (or refer to such a path)"
                );
            }
            recovery.invalidated = order;
        }
        // The contents checked above may still be only in the page cache (a crash of the
        // store-writer alone): make them durable before the marks go.
        if let Err(e) = fsutil::sync_filesystem(self.store_fd.as_fd(), self.layout.real_store_dir())
        {
            tracing::error!("syncing the store after re-checking recent additions: {e}");
            return Ok(recovery);
        }
        self.db.clear_unsynced(None)?;
        Ok(recovery)
    }

    /// `paths` and everything that refers to them, transitively.
    fn with_referrers(&self, paths: &[StorePath]) -> Result<BTreeSet<StorePath>, DbError> {
        let mut all: BTreeSet<StorePath> = paths.iter().cloned().collect();
        let mut todo: Vec<StorePath> = paths.to_vec();
        while let Some(path) = todo.pop() {
            for referrer in self.db.query_referrers(&path)? {
                if all.insert(referrer.clone()) {
                    todo.push(referrer);
                }
            }
        }
        Ok(all)
    }

    /// `set` (closed under referrers) ordered so that each path comes after all its
    /// referrers, as the `Refs` foreign keys need for deleting.
    fn referrers_first(&self, set: &BTreeSet<StorePath>) -> Result<Vec<StorePath>, DbError> {
        let mut left = set.clone();
        let mut order = Vec::with_capacity(set.len());
        while !left.is_empty() {
            let mut free = Vec::new();
            for path in &left {
                let referrers = self.db.query_referrers(path)?;
                if !referrers.iter().any(|r| r != path && left.contains(r)) {
                    free.push(path.clone());
                }
            }
            if free.is_empty() {
                // A cycle (impossible for valid paths): take them all in any order.
                order.extend(left.iter().cloned());
                break;
            }
            for path in free {
                left.remove(&path);
                order.push(path);
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use ward_proto::content_address::ContentAddressMethod;
    use ward_proto::hash::HashAlgo;

    use super::*;
    use crate::add::AddOptions;
    use crate::db::DbSettings;
    use crate::layout::CreateOptions;
    use crate::test_support::new_layout;

    fn open(dir: &Path, tracker: Option<Arc<SyncBehind>>) -> Store {
        let layout = crate::layout::StoreLayout::chroot(&dir.join("root")).unwrap();
        let mut store =
            Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap();
        store.sync_behind = tracker;
        store
    }

    fn add_text(store: &mut Store, name: &str, text: &[u8], refs: &[&StorePath]) -> StorePath {
        let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
        store
            .add_from_content(
                name,
                ContentAddressMethod::Text,
                HashAlgo::Sha256,
                &refs,
                text,
                AddOptions::default(),
            )
            .unwrap()
            .0
            .path
    }

    fn marks(store: &Store) -> usize {
        store.db.unsynced_paths().unwrap().len()
    }

    /// What a power loss before the sync does to a file: its contents never reached the disk.
    fn lose_contents(store: &Store, path: &StorePath) {
        let real = store.layout.real_path(path);
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&real, b"").unwrap();
    }

    #[test]
    fn additions_are_marked_and_a_sync_clears_the_marks() {
        let tmp = tempfile::tempdir().unwrap();
        new_layout(tmp.path());
        let tracker = SyncBehind::new();
        let mut store = open(tmp.path(), Some(Arc::clone(&tracker)));
        let a = add_text(&mut store, "a", b"a\n", &[]);
        let b = add_text(&mut store, "b", b"b\n", &[&a]);
        assert!(store.db.is_valid(&a).unwrap() && store.db.is_valid(&b).unwrap());
        assert_eq!(marks(&store), 2);
        // The syncer's round, by hand: take, sync, clear, finish.
        let ids = tracker.take();
        assert_eq!(ids.len(), 2);
        fsutil::sync_filesystem(store.store_fd.as_fd(), store.layout.real_store_dir()).unwrap();
        store.db.clear_unsynced(Some(&ids)).unwrap();
        tracker.finish(None);
        assert!(tracker.wait_idle(Duration::ZERO));
        assert_eq!(marks(&store), 0);
        // Without sync-behind nothing is marked.
        store.sync_behind = None;
        add_text(&mut store, "c", b"c\n", &[]);
        assert_eq!(marks(&store), 0);
    }

    #[test]
    fn the_syncer_thread_clears_marks_within_the_gathering_time() {
        let tmp = tempfile::tempdir().unwrap();
        new_layout(tmp.path());
        let tracker = SyncBehind::new();
        let store = Arc::new(Mutex::new(open(tmp.path(), Some(Arc::clone(&tracker)))));
        let dir = {
            let s = store.lock().unwrap();
            fsutil::open_dir_path(s.layout.real_store_dir()).unwrap()
        };
        let for_syncer = Arc::clone(&store);
        start_syncer(Arc::clone(&tracker), dir, "store".into(), move |ids| {
            for_syncer.lock().unwrap().db.clear_unsynced(Some(ids))
        })
        .unwrap();
        for i in 0..20 {
            add_text(&mut store.lock().unwrap(), &format!("p{i}"), b"x\n", &[]);
        }
        assert!(
            tracker.wait_idle(Duration::from_secs(10)),
            "the syncer did not finish"
        );
        assert_eq!(marks(&store.lock().unwrap()), 0);
    }

    #[test]
    fn a_start_after_a_power_loss_invalidates_unsynced_paths_whose_contents_were_lost() {
        let tmp = tempfile::tempdir().unwrap();
        new_layout(tmp.path());
        let (synced, kept, lost, referrer, unrelated);
        {
            let mut store = open(tmp.path(), None);
            synced = add_text(&mut store, "synced", b"synced\n", &[]);
            store.sync_behind = Some(SyncBehind::new());
            kept = add_text(&mut store, "kept", b"kept\n", &[&synced]);
            lost = add_text(&mut store, "lost", b"lost\n", &[&synced]);
            referrer = add_text(&mut store, "referrer", b"ref\n", &[&lost]);
            unrelated = add_text(&mut store, "unrelated", b"unrelated\n", &[]);
            assert_eq!(marks(&store), 4);
            // The machine goes down: `lost`'s data never reached the disk; the rest did.
            lose_contents(&store, &lost);
        }
        let mut store = open(tmp.path(), None);
        let recovery = store.recover_unsynced().unwrap();
        assert_eq!(recovery.intact, 3, "{recovery:?}");
        let mut invalidated = recovery.invalidated.clone();
        invalidated.sort();
        let mut expected = vec![lost.clone(), referrer.clone()];
        expected.sort();
        assert_eq!(invalidated, expected);
        for path in [&synced, &kept, &unrelated] {
            assert!(store.db.is_valid(path).unwrap(), "{path:?} stays valid");
        }
        for path in [&lost, &referrer] {
            assert!(!store.db.is_valid(path).unwrap(), "{path:?} is invalidated");
            assert!(
                !store.layout.real_path(path).exists(),
                "{path:?} is removed from disk"
            );
        }
        assert_eq!(marks(&store), 0);
        // A second start has nothing to re-check.
        assert_eq!(store.recover_unsynced().unwrap(), Recovery::default());
        // A path only ever synced is not re-checked (it is durable): changing it by hand is
        // for `--verify`, not for recovery.
        lose_contents(&store, &synced);
        assert_eq!(store.recover_unsynced().unwrap(), Recovery::default());
        assert!(store.db.is_valid(&synced).unwrap());
    }

    #[test]
    fn a_start_after_a_crash_of_the_store_writer_alone_keeps_every_path() {
        let tmp = tempfile::tempdir().unwrap();
        new_layout(tmp.path());
        let paths: Vec<StorePath> = {
            let mut store = open(tmp.path(), Some(SyncBehind::new()));
            (0..10)
                .map(|i| {
                    add_text(
                        &mut store,
                        &format!("p{i}"),
                        format!("{i}\n").as_bytes(),
                        &[],
                    )
                })
                .collect()
        };
        let mut store = open(tmp.path(), None);
        let recovery = store.recover_unsynced().unwrap();
        assert_eq!(recovery.intact, 10);
        assert!(recovery.invalidated.is_empty());
        for path in &paths {
            assert!(store.db.is_valid(path).unwrap());
        }
        assert_eq!(marks(&store), 0);
    }

    #[test]
    fn marks_of_paths_deleted_before_the_sync_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        new_layout(tmp.path());
        let mut store = open(tmp.path(), Some(SyncBehind::new()));
        let gone = add_text(&mut store, "gone", b"gone\n", &[]);
        store
            .db
            .invalidate_paths(std::slice::from_ref(&gone))
            .unwrap();
        std::fs::remove_file(store.layout.real_path(&gone)).unwrap();
        assert_eq!(marks(&store), 0);
        assert_eq!(store.recover_unsynced().unwrap(), Recovery::default());
    }
}
