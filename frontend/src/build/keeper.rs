//! The temporary roots of goals: one store-writer channel holds them for every goal, so a
//! thousand goals in flight (a `nix-store --realise` of a thousand paths) cost one channel,
//! not a thousand (the store-writer serves a bounded number of channels).
//!
//! A channel's roots cannot be dropped one by one; they go when the channel closes. So the
//! keeper counts how many goals hold each path and, once the channel carries many more roots
//! than are still held, moves to a fresh channel with only the held ones (added there before
//! the old channel closes, so no path is unrooted in between). When the store-writer is
//! restarted, the held roots are given to the new one on the next use, as connections do
//! with theirs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ward_proto::store_path::StorePath;

use crate::writer_client::{ClientError, WriterClient};

use super::goal::WRITER_TIMEOUT;

/// Roots left on the channel without a holder, beyond which it is replaced.
const STALE_ROOTS_BEFORE_ROTATION: usize = 4096;

/// Goals' temporary roots, on one channel.
#[derive(Debug, Default)]
pub struct RootKeeper {
    /// How many guards hold each path.
    held: Mutex<HashMap<StorePath, usize>>,
    channel: tokio::sync::Mutex<KeeperChannel>,
}

#[derive(Debug, Default)]
struct KeeperChannel {
    writer: Option<WriterClient>,
    /// Paths rooted on `writer`.
    rooted: HashSet<StorePath>,
}

/// Holds paths as temporary roots until dropped.
#[derive(Debug)]
pub struct RootGuard {
    keeper: Arc<RootKeeper>,
    paths: Vec<StorePath>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RootKeeper {
    /// Makes `paths` temporary roots (valid or not yet), held until the guard drops.
    pub async fn hold(
        self: &Arc<Self>,
        ipc_dir: &Path,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<RootGuard, ClientError> {
        let paths: Vec<StorePath> = paths.into_iter().collect();
        {
            let mut held = lock(&self.held);
            for p in &paths {
                *held.entry(p.clone()).or_insert(0) += 1;
            }
        }
        // From here on the guard releases the counts, also when rooting fails.
        let guard = RootGuard {
            keeper: Arc::clone(self),
            paths,
        };
        let mut channel = self.channel.lock().await;
        let stale = channel.rooted.len().saturating_sub(lock(&self.held).len());
        if channel.writer.is_none() || stale > STALE_ROOTS_BEFORE_ROTATION {
            self.replace_channel(ipc_dir, &mut channel).await?;
        }
        for path in &guard.paths {
            if channel.rooted.contains(path) {
                continue;
            }
            let writer = channel.writer.as_mut().expect("connected above");
            match writer.add_temp_root(path.clone()).await {
                Ok(()) => {
                    channel.rooted.insert(path.clone());
                }
                Err(_) => {
                    // The store-writer went away (or was restarted): a new channel with
                    // every held root, this one included.
                    self.replace_channel(ipc_dir, &mut channel).await?;
                }
            }
        }
        Ok(guard)
    }

    /// Opens a new channel, roots every held path on it, then lets the old one go.
    async fn replace_channel(
        &self,
        ipc_dir: &Path,
        channel: &mut KeeperChannel,
    ) -> Result<(), ClientError> {
        let mut writer = WriterClient::connect(ipc_dir, WRITER_TIMEOUT).await?;
        let wanted: Vec<StorePath> = lock(&self.held).keys().cloned().collect();
        let mut rooted = HashSet::with_capacity(wanted.len());
        for path in wanted {
            writer.add_temp_root(path.clone()).await?;
            rooted.insert(path);
        }
        channel.writer = Some(writer);
        channel.rooted = rooted;
        Ok(())
    }

    /// After a restart of the store-writer: gives every held root to the new one at once.
    pub async fn refresh(&self, ipc_dir: &Path) {
        let mut channel = self.channel.lock().await;
        if channel.writer.is_none() && lock(&self.held).is_empty() {
            return;
        }
        if let Err(e) = self.replace_channel(ipc_dir, &mut channel).await {
            tracing::warn!("giving goals' roots to the restarted store-writer: {e}");
            channel.writer = None;
            channel.rooted.clear();
        }
    }

    /// How many distinct paths are held (for tests and logs).
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let mut held = lock(&self.keeper.held);
        for p in &self.paths {
            if let Some(n) = held.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    held.remove(p);
                }
            }
        }
    }
}
