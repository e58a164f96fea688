//! The frontend's read-only view of the store: a small pool of read-only SQLite connections
//! and the mapping from logical store paths to files.
//!
//! The frontend never writes the store or the DB; every change goes to the store-writer.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::{DbError, StoreDb};
use ward_store::layout::StoreLayout;

use crate::path_info_cache::{PathInfoCache, DB_CHECK_INTERVAL};

/// Tells the store views of one process apart (tests open several).
static NEXT_VIEW_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each runtime thread keeps its own read-only connection: no lock is shared between
    /// threads on the query path (a shared pool's mutex was contended on every op).
    static THREAD_DB: RefCell<Option<(u64, StoreDb)>> = const { RefCell::new(None) };
}

/// Read-only access to the store.
#[derive(Debug)]
pub struct StoreView {
    layout: StoreLayout,
    id: u64,
    cache: Arc<PathInfoCache>,
    /// Whether anyone committed to the database since the cache was last checked.
    watch: Mutex<DbWatch>,
    /// Origin of `next_check`.
    opened: Instant,
    /// Nanoseconds after `opened` when the database is next asked about commits.
    next_check: AtomicU64,
}

/// A connection of its own for `data_version`, which is per connection: comparing answers
/// only means something when one connection gives them all.
#[derive(Debug)]
struct DbWatch {
    db: StoreDb,
    /// The last answer; `None` before the first, or after one failed.
    version: Option<i64>,
}

impl StoreView {
    /// Opens one connection now, so a store that cannot be read fails at start-up.
    pub fn open(layout: StoreLayout) -> Result<StoreView, DbError> {
        let first = StoreDb::open_read_only(&layout)?;
        let watch = DbWatch {
            db: StoreDb::open_read_only(&layout)?,
            version: None,
        };
        let id = NEXT_VIEW_ID.fetch_add(1, Ordering::Relaxed);
        THREAD_DB.with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut() {
                *slot = Some((id, first));
            }
        });
        Ok(StoreView {
            layout,
            id,
            cache: Arc::new(PathInfoCache::new()),
            watch: Mutex::new(watch),
            opened: Instant::now(),
            next_check: AtomicU64::new(0),
        })
    }

    /// The logical store directory.
    pub fn store_dir(&self) -> &StoreDir {
        self.layout.store_dir()
    }

    /// The store's layout.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// Where the files of `path` are.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.layout.real_path(path)
    }

    /// Runs `f` with this thread's connection, opening it on first use. Queries take
    /// microseconds, so they run inline on the connection's task.
    pub fn with_db<T>(&self, f: impl FnOnce(&StoreDb) -> Result<T, DbError>) -> Result<T, DbError> {
        THREAD_DB.with(|slot| match slot.try_borrow_mut() {
            Ok(mut slot) => {
                if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                    *slot = Some((self.id, StoreDb::open_read_only(&self.layout)?));
                }
                let (_, db) = slot.as_ref().expect("opened above");
                f(db)
            }
            // Only a query nested inside another on the same thread gets here.
            Err(_) => f(&StoreDb::open_read_only(&self.layout)?),
        })
    }

    /// The path-info cache; store-writer channels must hold it (see
    /// [`crate::writer_client::WriterClient::with_path_info_cache`]).
    pub fn path_info_cache(&self) -> &Arc<PathInfoCache> {
        &self.cache
    }

    /// The metadata of `path` if it is valid, from the cache when it is there.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<Arc<ValidPathInfo>>, DbError> {
        self.notice_commits();
        if let Some(info) = self.cache.lookup(path) {
            return Ok(Some(info));
        }
        let ticket = self.cache.ticket();
        let info = self.with_db(|db| db.query_path_info(path))?.map(Arc::new);
        if let (Some(ticket), Some(info)) = (ticket, &info) {
            self.cache.store(ticket, info);
        }
        Ok(info)
    }

    /// Empties the cache if anyone committed to the database since the last check; asks at
    /// most every [`DB_CHECK_INTERVAL`]. Called before every cache lookup, so an answer from
    /// the cache is at most that old. (Changes through ward's own store-writer that alter
    /// recorded paths empty it at once: `ChangeGuard`.)
    fn notice_commits(&self) {
        let now = || u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if now() < self.next_check.load(Ordering::Acquire) {
            return;
        }
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let checked_at = now();
        if checked_at < self.next_check.load(Ordering::Acquire) {
            return; // another thread checked while this one waited
        }
        let version = match watch.db.data_version() {
            Ok(version) => Some(version),
            Err(e) => {
                tracing::warn!("{e}; not trusting the path-info cache");
                None
            }
        };
        // Unknown before or now counts as changed.
        if version.is_none() || watch.version != version {
            self.cache.invalidate();
        }
        watch.version = version;
        let interval = u64::try_from(DB_CHECK_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        self.next_check
            .store(checked_at.saturating_add(interval), Ordering::Release);
    }

    /// Whether `path` is valid, from the cache when it is there.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        self.notice_commits();
        if self.cache.lookup(path).is_some() {
            return Ok(true);
        }
        self.with_db(|db| db.is_valid(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;
    use ward_proto::hash::{Hash, HashAlgo};
    use ward_store::db::DbSettings;
    use ward_store::layout::CreateOptions;

    #[test]
    fn a_commit_by_another_program_reaches_the_cache_within_the_check_interval() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(dir.path()).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        // Plays the other program: writes the database directly, without ward's change guard.
        let mut other = StoreDb::open(&layout, &DbSettings::default()).unwrap();
        let path = StorePath::from_digest(&[7; 20], "cached").unwrap();
        let info = ValidPathInfo::new(path.clone(), Hash::compute(HashAlgo::Sha256, b"nar"));
        other
            .register_valid_paths(std::slice::from_ref(&info), |_| Ok(Default::default()))
            .unwrap();

        let view = StoreView::open(layout.clone()).unwrap();
        let first = view.query_path_info(&path).unwrap().expect("valid");
        assert!(first.sigs.is_empty());
        // Nothing committed: the cached answer (the same allocation) is kept however old.
        std::thread::sleep(DB_CHECK_INTERVAL * 3);
        let again = view.query_path_info(&path).unwrap().expect("valid");
        assert!(
            Arc::ptr_eq(&first, &again),
            "a quiet database emptied the cache"
        );

        let sig = "other-1:c2lnbmF0dXJl".to_owned();
        other
            .add_signatures(&path, &BTreeSet::from([sig.clone()]))
            .unwrap();
        std::thread::sleep(DB_CHECK_INTERVAL + Duration::from_millis(20));
        let after = view.query_path_info(&path).unwrap().expect("valid");
        assert_eq!(after.sigs, BTreeSet::from([sig]), "the cache hid a commit");
        assert!(view.is_valid(&path).unwrap());
    }
}
