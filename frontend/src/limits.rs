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
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
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
}
