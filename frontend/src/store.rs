//! The frontend's read-only view of the store: a small pool of read-only SQLite connections
//! and the mapping from logical store paths to files.
//!
//! The frontend never writes the store or the DB; every change goes to the store-writer.

use std::path::PathBuf;
use std::sync::Mutex;

use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::{DbError, StoreDb};
use ward_store::layout::StoreLayout;

/// Connections kept for reuse; more are opened under load and dropped when returned.
const POOL_KEEP: usize = 8;

/// Read-only access to the store.
#[derive(Debug)]
pub struct StoreView {
    layout: StoreLayout,
    pool: Mutex<Vec<StoreDb>>,
}

impl StoreView {
    /// Opens one connection now, so a store that cannot be read fails at start-up.
    pub fn open(layout: StoreLayout) -> Result<StoreView, DbError> {
        let first = StoreDb::open_read_only(&layout)?;
        Ok(StoreView {
            layout,
            pool: Mutex::new(vec![first]),
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

    /// Runs `f` with a pooled connection. Queries take microseconds, so they run inline on the
    /// connection's task.
    pub fn with_db<T>(&self, f: impl FnOnce(&StoreDb) -> Result<T, DbError>) -> Result<T, DbError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let db = match taken {
            Some(db) => db,
            None => StoreDb::open_read_only(&self.layout)?,
        };
        let result = f(&db);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(db);
        }
        result
    }
}
