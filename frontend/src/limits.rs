//! Caps on what clients may hold: connections in total and per user, and the time a client
//! may take over its handshake. Each open connection costs the frontend a descriptor and some
//! memory; without a cap per user, one user opening connections until the descriptors run out
//! would lock every other user out. root is capped only by the total.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections the frontend serves at once, from everyone.
pub const MAX_CONNECTIONS: usize = 32768;
/// Connections one user (other than root) may have open at once.
pub const MAX_CONNECTIONS_PER_USER: usize = 1024;
/// Temporary roots (AddTempRoot) the connections of one user (other than root) may hold at
/// once: each is a line in a roots file the store-writer keeps until the connection ends.
pub const MAX_TEMP_ROOTS_PER_USER: u64 = 1 << 18;
/// How long a client may take to finish the handshake (Nix's takes milliseconds).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The daemon serves its maximum.
    #[error("the daemon serves {MAX_CONNECTIONS} connections already, its limit; try again later")]
    Total,
    /// This user has too many open.
    #[error(
        "uid {uid} has {MAX_CONNECTIONS_PER_USER} connections to the daemon open already, the \
         limit per user; close some"
    )]
    PerUser { uid: u32 },
    /// This user's connections hold too many temporary roots.
    #[error(
        "uid {uid} holds {MAX_TEMP_ROOTS_PER_USER} temporary roots already, the limit per user; \
         close connections that hold roots"
    )]
    TempRoots { uid: u32 },
    /// This user already runs a scan of the whole store.
    #[error("uid {uid} already runs an {what} (one at a time per user); wait for it to finish")]
    ScanRunning { uid: u32, what: &'static str },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
    temp_roots: HashMap<u32, u64>,
    /// Users with a whole-store scan (OptimiseStore, VerifyStore) running.
    scanning: std::collections::HashSet<u32>,
}

/// Open connections, by user.
#[derive(Debug)]
pub struct ConnectionCounts {
    counts: Mutex<Counts>,
    total_limit: usize,
    per_user_limit: usize,
}

impl Default for ConnectionCounts {
    fn default() -> Self {
        ConnectionCounts::with_limits(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_USER)
    }
}

impl ConnectionCounts {
    /// Counts with other limits (tests).
    pub fn with_limits(total_limit: usize, per_user_limit: usize) -> ConnectionCounts {
        ConnectionCounts {
            counts: Mutex::new(Counts::default()),
            total_limit,
            per_user_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one more connection from `uid`, or says which limit it would pass.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<ConnectionSlot, LimitError> {
        let mut counts = self.lock();
        if counts.total >= self.total_limit {
            return Err(LimitError::Total);
        }
        let mine = counts.per_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 && mine >= self.per_user_limit {
            return Err(LimitError::PerUser { uid });
        }
        counts.total += 1;
        counts.per_uid.insert(uid, mine + 1);
        Ok(ConnectionSlot {
            counts: Arc::clone(self),
            uid,
        })
    }

    /// The temporary-root budget of one connection of `uid`.
    pub fn temp_root_budget(self: &Arc<Self>, uid: u32) -> TempRootBudget {
        TempRootBudget {
            counts: Arc::clone(self),
            uid,
            held: 0,
        }
    }

    /// Starts a whole-store scan (`what`) for `uid`, unless that user runs one already (root
    /// is not limited).
    pub fn begin_scan(
        self: &Arc<Self>,
        uid: u32,
        what: &'static str,
    ) -> Result<ScanGuard, LimitError> {
        if uid != 0 && !self.lock().scanning.insert(uid) {
            return Err(LimitError::ScanRunning { uid, what });
        }
        Ok(ScanGuard {
            counts: Arc::clone(self),
            uid,
        })
    }

    /// Open connections in total, and of `uid`.
    pub fn open(&self, uid: u32) -> (usize, usize) {
        let counts = self.lock();
        (counts.total, counts.per_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    uid: u32,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_uid.remove(&self.uid);
            }
        }
    }
}

/// The temporary roots one connection added; given back when the connection ends.
#[derive(Debug)]
pub struct TempRootBudget {
    counts: Arc<ConnectionCounts>,
    uid: u32,
    held: u64,
}

impl TempRootBudget {
    /// Counts one more root, or refuses it when the user holds the maximum (root is not
    /// limited).
    pub fn take(&mut self) -> Result<(), LimitError> {
        let mut counts = self.counts.lock();
        let mine = counts.temp_roots.entry(self.uid).or_insert(0);
        if self.uid != 0 && *mine >= MAX_TEMP_ROOTS_PER_USER {
            return Err(LimitError::TempRoots { uid: self.uid });
        }
        *mine += 1;
        self.held += 1;
        Ok(())
    }
}

impl Drop for TempRootBudget {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut counts = self.counts.lock();
        if let Some(n) = counts.temp_roots.get_mut(&self.uid) {
            *n = n.saturating_sub(self.held);
            if *n == 0 {
                counts.temp_roots.remove(&self.uid);
            }
        }
    }
}

/// A running whole-store scan of one user.
#[derive(Debug)]
pub struct ScanGuard {
    counts: Arc<ConnectionCounts>,
    uid: u32,
}

impl Drop for ScanGuard {
    fn drop(&mut self) {
        self.counts.lock().scanning.remove(&self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_at_the_limit_does_not_stop_another() {
        let counts = Arc::new(ConnectionCounts::with_limits(5, 2));
        let a1 = counts.admit(1000).unwrap();
        let _a2 = counts.admit(1000).unwrap();
        assert_eq!(
            counts.admit(1000).unwrap_err(),
            LimitError::PerUser { uid: 1000 }
        );
        let _b = counts.admit(1001).unwrap();
        drop(a1);
        let _a3 = counts.admit(1000).unwrap();
        assert_eq!(counts.open(1000), (3, 2));
    }

    #[test]
    fn root_is_capped_only_by_the_total() {
        let counts = Arc::new(ConnectionCounts::with_limits(3, 1));
        let slots: Vec<_> = (0..3).map(|_| counts.admit(0).unwrap()).collect();
        assert_eq!(counts.admit(0).unwrap_err(), LimitError::Total);
        assert_eq!(counts.admit(1000).unwrap_err(), LimitError::Total);
        drop(slots);
        assert_eq!(counts.open(0), (0, 0));
    }

    #[test]
    fn refusals_name_the_limit() {
        assert!(LimitError::PerUser { uid: 7 }
            .to_string()
            .contains("1024 connections"));
        assert!(LimitError::Total.to_string().contains("32768"));
    }

    #[test]
    fn temp_roots_are_capped_per_user_and_given_back() {
        let counts = Arc::new(ConnectionCounts::default());
        let mut a = counts.temp_root_budget(1000);
        let mut b = counts.temp_root_budget(1000);
        for _ in 0..MAX_TEMP_ROOTS_PER_USER / 2 {
            a.take().unwrap();
            b.take().unwrap();
        }
        assert_eq!(a.take(), Err(LimitError::TempRoots { uid: 1000 }));
        assert!(counts.temp_root_budget(1001).take().is_ok());
        let mut root = counts.temp_root_budget(0);
        for _ in 0..MAX_TEMP_ROOTS_PER_USER + 1 {
            root.take().unwrap();
        }
        drop(b);
        assert!(a.take().is_ok());
    }

    #[test]
    fn one_scan_at_a_time_per_user() {
        let counts = Arc::new(ConnectionCounts::default());
        let first = counts.begin_scan(1000, "optimise").unwrap();
        assert!(matches!(
            counts.begin_scan(1000, "optimise"),
            Err(LimitError::ScanRunning { uid: 1000, .. })
        ));
        assert!(counts.begin_scan(1001, "verify").is_ok());
        let _root = counts.begin_scan(0, "verify").unwrap();
        assert!(counts.begin_scan(0, "verify").is_ok());
        drop(first);
        assert!(counts.begin_scan(1000, "optimise").is_ok());
    }
}
