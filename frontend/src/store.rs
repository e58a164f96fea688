//! The frontend's read-only view of the store: a small pool of read-only SQLite connections
//! and the mapping from logical store paths to files.
//!
//! The frontend never writes the store or the DB; every change goes to the store-writer.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::{DbError, StoreDb};
use ward_store::layout::StoreLayout;

use crate::path_info_cache::PathInfoCache;

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
}

impl StoreView {
    /// Opens one connection now, so a store that cannot be read fails at start-up.
    pub fn open(layout: StoreLayout) -> Result<StoreView, DbError> {
        let first = StoreDb::open_read_only(&layout)?;
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

    /// Whether `path` is valid, from the cache when it is there.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        if self.cache.lookup(path).is_some() {
            return Ok(true);
        }
        self.with_db(|db| db.is_valid(path))
    }
}
