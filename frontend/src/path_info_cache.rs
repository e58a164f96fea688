//! A cache of valid paths' metadata, shared by every connection of the frontend.
//!
//! `nix-daemon` keeps a path-info cache in each per-connection process and trusts a hit for
//! 30 days (`ttlPositiveNarInfoCache`), so a path deleted or re-signed by another connection
//! stays in that connection's view. ward keeps one cache for the whole frontend and makes it
//! safe instead:
//!
//! - Only valid paths are cached. A path added later is never hidden by a cached "not valid".
//! - Every store-writer request that can change or remove what is already recorded (signatures,
//!   repairs, build registrations, garbage collection, verification) holds a [`ChangeGuard`] ([`PathInfoCache::begin_change`])
//!   for as long as it is in flight: while one exists nothing is looked up or stored, and its
//!   start and end each advance the epoch, which empties every shard. A lookup that read the
//!   database before a change began cannot store its (now old) answer, because it stores only
//!   if the epoch it saw before reading is still current.
//! - Any commit to the database by anyone — ward's store-writer, or another program writing
//!   the same database directly (say, a root `nix-store --delete` with `NIX_REMOTE=local`) —
//!   empties the cache too, noticed within [`DB_CHECK_INTERVAL`]: the store view asks SQLite
//!   for the database's `data_version` at most that often and calls
//!   [`PathInfoCache::invalidate`] when it moved (`crate::store::StoreView`). Entries have no
//!   age limit otherwise: while nothing is committed, nothing they say can have changed.
//!
//! The cache is sharded by the path's hash part so that the runtime's threads rarely meet on
//! the same lock, and bounded ([`SHARDS`] × [`SHARD_CAPACITY`] entries, oldest dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::StorePath;

/// How often, at most, the store view asks the database whether anyone committed to it. The
/// longest a change made behind ward's back can go unnoticed by the cache.
pub const DB_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Number of independently locked parts.
pub const SHARDS: usize = 16;

/// Entries per shard; 16 × 1024 path infos are a few MiB at most.
pub const SHARD_CAPACITY: usize = 1024;

/// The cache. One per frontend, shared by its connections and their store-writer channels.
#[derive(Debug)]
pub struct PathInfoCache {
    /// Advanced at the start and at the end of every change to recorded paths.
    epoch: AtomicU64,
    /// Changes in flight; while non-zero the cache is bypassed.
    changes_in_flight: AtomicUsize,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for PathInfoCache {
    fn default() -> PathInfoCache {
        PathInfoCache::new()
    }
}

/// Held while a request that may change or remove recorded paths is in flight.
#[derive(Debug)]
#[must_use = "the cache is protected only while the guard lives"]
pub struct ChangeGuard(Arc<PathInfoCache>);

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        // Advance first: a lookup that starts after the count drops must see the new epoch.
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
        self.0.changes_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a database read must present to [`PathInfoCache::store`]: the epoch before the read.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl PathInfoCache {
    /// An empty cache.
    pub fn new() -> PathInfoCache {
        PathInfoCache {
            epoch: AtomicU64::new(0),
            changes_in_flight: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
        }
    }

    /// Stops the cache from answering or filling until the guard is dropped.
    pub fn begin_change(self: &Arc<Self>) -> ChangeGuard {
        self.changes_in_flight.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        ChangeGuard(Arc::clone(self))
    }

    /// Forgets everything cached: the database changed. Reads that began before cannot store
    /// their answers.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Taken before reading the database; `None` while a change is in flight.
    pub fn ticket(&self) -> Option<Ticket> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if self.changes_in_flight.load(Ordering::SeqCst) != 0 {
            return None;
        }
        Some(Ticket(epoch))
    }

    /// The cached info of `path`, if it is known to be valid.
    pub fn lookup(&self, path: &StorePath) -> Option<Arc<ValidPathInfo>> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if self.changes_in_flight.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let mut shard = self.shard_of(path);
        shard.sync(epoch);
        let entry = shard.entries.get(path)?;
        Some(Arc::clone(&entry.info))
    }

    /// Remembers `info` (read from the database after `ticket` was taken) unless something
    /// changed since.
    pub fn store(&self, ticket: Ticket, info: &Arc<ValidPathInfo>) {
        let mut shard = self.shard_of(&info.path);
        // Checked under the shard lock: a change that begins after this check advances the
        // epoch, so the next lookup empties the shard before reading it.
        if self.epoch.load(Ordering::SeqCst) != ticket.0
            || self.changes_in_flight.load(Ordering::SeqCst) != 0
        {
            return;
        }
        shard.sync(ticket.0);
        shard.insert(Arc::clone(info));
    }

    /// Number of entries held (expired ones included), for tests and logs.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, path: &StorePath) -> std::sync::MutexGuard<'_, Shard> {
        // Hash parts are uniformly distributed base-32 digits.
        let byte = usize::from(path.hash_part().as_bytes()[0]);
        self.shards[byte % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Entry {
    info: Arc<ValidPathInfo>,
    /// Matches the queue slot that owns this entry.
    serial: u64,
}

#[derive(Debug)]
struct Shard {
    /// The epoch the entries belong to.
    epoch: u64,
    entries: HashMap<StorePath, Entry>,
    /// Insertion order for eviction: (path, serial); stale slots are skipped.
    order: VecDeque<(StorePath, u64)>,
    next_serial: u64,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            epoch: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_serial: 0,
        }
    }

    /// Empties the shard if its entries belong to another epoch.
    fn sync(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.entries.clear();
            self.order.clear();
            self.epoch = epoch;
        }
    }

    fn insert(&mut self, info: Arc<ValidPathInfo>) {
        while self.entries.len() >= SHARD_CAPACITY {
            let Some((old, serial)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.serial == serial) {
                self.entries.remove(&old);
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let path = info.path.clone();
        self.order.push_back((path.clone(), serial));
        self.entries.insert(path, Entry { info, serial });
        // Re-stored paths leave stale slots behind; keep the queue bounded too.
        if self.order.len() > 2 * SHARD_CAPACITY {
            let entries = &self.entries;
            self.order
                .retain(|(p, s)| entries.get(p).is_some_and(|e| e.serial == *s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_proto::hash::{Hash, HashAlgo};

    fn info(n: usize) -> Arc<ValidPathInfo> {
        // Distinct hash parts spread over the shards.
        let digest: [u8; 20] =
            std::array::from_fn(|i| (n.wrapping_mul(31).wrapping_add(i * 7)) as u8);
        let path = StorePath::from_digest(&digest, &format!("p{n}")).unwrap();
        Arc::new(ValidPathInfo::new(
            path,
            Hash::compute(HashAlgo::Sha256, &n.to_le_bytes()),
        ))
    }

    #[test]
    fn a_stored_path_is_found_and_others_are_not() {
        let cache = PathInfoCache::new();
        let a = info(1);
        assert!(cache.lookup(&a.path).is_none());
        cache.store(cache.ticket().unwrap(), &a);
        assert_eq!(cache.lookup(&a.path).as_deref(), Some(&*a));
        assert!(cache.lookup(&info(2).path).is_none());
    }

    #[test]
    fn an_answer_read_before_a_change_is_not_stored() {
        let cache = Arc::new(PathInfoCache::new());
        let a = info(1);
        // Read began, then a change began and ended: the read's answer may be old.
        let ticket = cache.ticket().unwrap();
        drop(cache.begin_change());
        cache.store(ticket, &a);
        assert!(cache.lookup(&a.path).is_none());
        // Nor while the change is still going on.
        let ticket = cache.ticket().unwrap();
        let guard = cache.begin_change();
        cache.store(ticket, &a);
        assert!(cache.ticket().is_none());
        drop(guard);
        assert!(cache.lookup(&a.path).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_change_empties_what_was_cached() {
        let cache = Arc::new(PathInfoCache::new());
        let all: Vec<_> = (0..100).map(info).collect();
        for i in &all {
            cache.store(cache.ticket().unwrap(), i);
        }
        assert!(all.iter().all(|i| cache.lookup(&i.path).is_some()));
        let guard = cache.begin_change();
        assert!(all.iter().all(|i| cache.lookup(&i.path).is_none()));
        drop(guard);
        assert!(all.iter().all(|i| cache.lookup(&i.path).is_none()));
    }

    #[test]
    fn invalidating_empties_the_cache_and_refuses_older_reads() {
        let cache = PathInfoCache::new();
        let a = info(1);
        let b = info(2);
        cache.store(cache.ticket().unwrap(), &a);
        let read_before = cache.ticket().unwrap();
        cache.invalidate();
        assert!(cache.lookup(&a.path).is_none());
        cache.store(read_before, &b);
        assert!(
            cache.lookup(&b.path).is_none(),
            "an answer read before was stored"
        );
        cache.store(cache.ticket().unwrap(), &b);
        assert!(cache.lookup(&b.path).is_some());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = PathInfoCache::new();
        let n = SHARDS * SHARD_CAPACITY * 3;
        for i in 0..n {
            cache.store(cache.ticket().unwrap(), &info(i));
        }
        assert!(cache.len() <= SHARDS * SHARD_CAPACITY, "{}", cache.len());
        // The newest survive.
        assert!(cache.lookup(&info(n - 1).path).is_some());
        // Storing the same path again and again keeps the eviction queue bounded too.
        let a = info(0);
        for _ in 0..SHARD_CAPACITY * 5 {
            cache.store(cache.ticket().unwrap(), &a);
        }
        let shard = cache.shard_of(&a.path);
        assert!(shard.order.len() <= 2 * SHARD_CAPACITY + 1);
    }
}
