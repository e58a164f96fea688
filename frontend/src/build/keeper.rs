//! The temporary roots of goals: one store-writer channel holds them for every goal, so a
//! thousand goals in flight (a `nix-store --realise` of a thousand paths) cost one channel,
//! not a thousand (the store-writer serves a bounded number of channels).
//!
//! A channel's roots cannot be dropped one by one; they go when the channel closes. So the
//! keeper counts how many goals hold each path; when the last guard goes the channel is
//! closed at once (nothing of a finished goal stays a root, as in Nix, where temporary roots
//! end with the process), and once the channel carries at least as many stale roots as held
//! ones it moves to a fresh channel with only the held ones (added there before the old
//! channel closes, so no path is unrooted in between; each rotation re-adds at most as many
//! roots as it drops, so the cost stays linear). When the store-writer is
//! restarted, the held roots are given to the new one on the next use, as connections do
//! with theirs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ward_proto::store_path::StorePath;

use crate::writer_client::{ClientError, WriterClient};

use super::goal::WRITER_TIMEOUT;

/// Goals' temporary roots, on one channel.
#[derive(Debug, Default)]
pub struct RootKeeper {
    /// How many guards hold each path.
    held: Mutex<HashMap<StorePath, usize>>,
    channel: tokio::sync::Mutex<KeeperChannel>,
    /// How many paths the channel roots (mirrors `KeeperChannel::rooted`, readable without
    /// the async lock).
    rooted_count: AtomicUsize,
    /// A compaction task is queued.
    compacting: AtomicBool,
    /// The store-writer's IPC directory, known from the first `hold`.
    ipc_dir: Mutex<Option<PathBuf>>,
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
        lock(&self.ipc_dir).get_or_insert_with(|| ipc_dir.to_owned());
        let mut channel = self.channel.lock().await;
        if channel.writer.is_none() {
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
                    self.rooted_count
                        .store(channel.rooted.len(), Ordering::Relaxed);
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
        self.rooted_count
            .store(channel.rooted.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Closes the channel when nothing is held, or moves to a fresh one when at least half of
    /// its roots are stale.
    async fn compact(&self) {
        let mut channel = self.channel.lock().await;
        self.compacting.store(false, Ordering::Relaxed);
        let held = lock(&self.held).len();
        if held == 0 {
            channel.writer = None;
            channel.rooted.clear();
            self.rooted_count.store(0, Ordering::Relaxed);
            return;
        }
        if channel.rooted.len().saturating_sub(held) < held {
            return;
        }
        let Some(ipc_dir) = lock(&self.ipc_dir).clone() else {
            return;
        };
        if let Err(e) = self.replace_channel(&ipc_dir, &mut channel).await {
            tracing::warn!("moving goals' roots to a fresh store-writer channel: {e}");
        }
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
            self.rooted_count.store(0, Ordering::Relaxed);
        }
    }

    /// How many distinct paths are held (for tests and logs).
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let held = {
            let mut held = lock(&self.keeper.held);
            for p in &self.paths {
                if let Some(n) = held.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(p);
                    }
                }
            }
            held.len()
        };
        let keeper = &self.keeper;
        if held == 0 {
            // The last holder: close the channel now if nobody is using it.
            if let Ok(mut channel) = keeper.channel.try_lock() {
                if lock(&keeper.held).is_empty() {
                    channel.writer = None;
                    channel.rooted.clear();
                    keeper.rooted_count.store(0, Ordering::Relaxed);
                    return;
                }
            }
        }
        let stale = keeper
            .rooted_count
            .load(Ordering::Relaxed)
            .saturating_sub(held);
        if (held == 0 || stale >= held)
            && stale > 0
            && !keeper.compacting.swap(true, Ordering::Relaxed)
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let keeper = Arc::clone(keeper);
                runtime.spawn(async move { keeper.compact().await });
            } else {
                keeper.compacting.store(false, Ordering::Relaxed);
            }
        }
    }
}
