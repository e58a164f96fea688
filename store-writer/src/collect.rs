//! CollectGarbage: the roots from the broker's helper, stale indirect roots removed, then
//! [`ward_store::gc`]; and the automatic collection of `min-free` / `max-free`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use ward_proto::gc_roots::RootRecord;
use ward_proto::ipc::store_writer::{GcAction, StoreWriterError, StoreWriterToFrontend};
use ward_store::gc::{self, ExternalRoots, GcError, GcRequest};

use crate::server::Shared;

/// Runs one collection (waiting for one that runs) and words its outcome for the client.
pub fn collect_garbage(
    shared: &Shared,
    request: &GcRequest,
) -> Result<StoreWriterToFrontend, Box<StoreWriterError>> {
    let store_shown = shared.store_dir().to_string();
    let refused = |message: String| {
        Box::new(StoreWriterError::Io {
            operation: "collecting garbage in".into(),
            path: store_shown.clone(),
            message,
        })
    };
    let _only_one = shared.collecting.lock().unwrap_or_else(|p| p.into_inner());
    let broker = shared.broker.as_ref().ok_or_else(|| {
        refused(
            "the roots of running processes and users cannot be found without the broker".into(),
        )
    })?;
    let records = broker
        .find_roots()
        .map_err(|e| refused(format!("finding the roots: {e}")))?;
    let mut messages = Vec::new();
    let mut external = ExternalRoots::default();
    let auto_dir = shared.layout.state_dir().join("gcroots").join("auto");
    for record in &records {
        match record {
            RootRecord::Stale { link, target } => {
                if remove_stale_link(&auto_dir, link, target) {
                    messages.push(format!(
                        "removing stale link from '{}' to '{}'",
                        link.display(),
                        target.display()
                    ));
                }
            }
            RootRecord::Unreadable { link, reason } => {
                tracing::info!(root = %link.display(), reason, "cannot read potential root");
                messages.push(format!("cannot read potential root '{}'", link.display()));
            }
            // Read by the collector itself, under gc.lock, with the stale ones removed.
            RootRecord::Temp { .. } => {}
            _ => {
                if let Some(path) = record.store_path(shared.store_dir()) {
                    external.paths.insert(path);
                }
            }
        }
    }
    tracing::info!(
        action = ?request.action,
        roots = external.paths.len(),
        max_freed = request.max_freed,
        "collecting garbage"
    );
    let outcome = gc::collect_garbage(shared.store_mutex(), &shared.layout, request, &external)
        .map_err(|e| match e {
            GcError::StillAlive(path) => Box::new(StoreWriterError::StillAlive { path }),
            other => refused(other.to_string()),
        })?;
    let deletes = matches!(
        request.action,
        GcAction::DeleteDead | GcAction::DeleteSpecific
    );
    if deletes && ward_store::audit::enabled() {
        for path in &outcome.paths {
            ward_store::audit::record("path-deleted", serde_json::json!({ "path": path }));
        }
    }
    ward_store::audit::record(
        "gc",
        serde_json::json!({
            "action": format!("{:?}", request.action),
            "paths": outcome.paths.len(),
            "bytes_freed": outcome.bytes_freed,
            "max_freed": request.max_freed,
        }),
    );
    if !outcome.paths.is_empty() || outcome.bytes_freed > 0 {
        tracing::info!(
            paths = outcome.paths.len(),
            bytes_freed = outcome.bytes_freed,
            "collection done"
        );
    }
    messages.extend(outcome.messages);
    Ok(StoreWriterToFrontend::GarbageCollected {
        paths: outcome.paths,
        bytes_freed: outcome.bytes_freed,
        messages,
    })
}

/// Nix's test hook, honoured the same way: a file holding the free bytes to assume.
const FAKE_FREE_SPACE_VAR: &str = "_NIX_TEST_FREE_SPACE_FILE";

/// `min-free` / `max-free`: before an addition (or a build's registration), as Nix's
/// `autoGC`, if at most every `min-free-check-interval` seconds the store's file system has
/// less than `min-free` bytes available, a collection frees up to `max-free` minus what is
/// available. The addition waits for it, as in Nix; additions that arrive meanwhile wait for
/// the same one instead of starting another.
#[derive(Debug)]
pub struct AutoGc {
    min_free: u64,
    max_free: u64,
    interval: Duration,
    keep_outputs: bool,
    keep_derivations: bool,
    state: Mutex<AutoGcState>,
    running: Mutex<()>,
}

#[derive(Debug)]
struct AutoGcState {
    last_check: Option<Instant>,
    /// Space after the last automatic collection: one that could not free 3 % more is not
    /// repeated until space drops below this again.
    avail_after_gc: u64,
}

impl AutoGc {
    /// From `nix.conf`.
    pub fn from_settings(settings: &ward_config::Settings) -> AutoGc {
        AutoGc {
            min_free: settings.min_free,
            max_free: settings.max_free,
            interval: Duration::from_secs(settings.min_free_check_interval),
            keep_outputs: settings.keep_outputs,
            keep_derivations: settings.keep_derivations,
            state: Mutex::new(AutoGcState {
                last_check: None,
                avail_after_gc: u64::MAX,
            }),
            running: Mutex::new(()),
        }
    }

    /// Never collects (`min-free = 0`).
    #[cfg(test)]
    pub fn disabled() -> AutoGc {
        AutoGc {
            min_free: 0,
            max_free: u64::MAX,
            interval: Duration::from_secs(5),
            keep_outputs: false,
            keep_derivations: true,
            state: Mutex::new(AutoGcState {
                last_check: None,
                avail_after_gc: u64::MAX,
            }),
            running: Mutex::new(()),
        }
    }

    /// Bytes available to unprivileged users on the store's file system.
    fn available(real_store_dir: &Path) -> Option<u64> {
        if let Some(file) = std::env::var_os(FAKE_FREE_SPACE_VAR) {
            return std::fs::read_to_string(file).ok()?.trim().parse().ok();
        }
        let st = rustix::fs::statvfs(real_store_dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Collects garbage if space is short (see the type's documentation).
    pub fn run_if_needed(&self, shared: &Shared) {
        if self.min_free == 0 {
            return;
        }
        // One that runs: wait for it, then go on (its result is as good as ours).
        let Ok(_running) = self.running.try_lock() else {
            drop(self.running.lock());
            return;
        };
        let real = shared.layout.real_store_dir();
        let avail = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if state.last_check.is_some_and(|t| now < t + self.interval) {
                return;
            }
            state.last_check = Some(now);
            let Some(avail) = Self::available(real) else {
                return;
            };
            if avail >= self.min_free || avail >= self.max_free {
                return;
            }
            if avail as f64 > state.avail_after_gc as f64 * 0.97 {
                return;
            }
            avail
        };
        let max_freed = self.max_free - avail;
        tracing::info!("running auto-GC to free {max_freed} bytes");
        let request = GcRequest {
            action: GcAction::DeleteDead,
            paths: Default::default(),
            max_freed,
            keep_outputs: self.keep_outputs,
            keep_derivations: self.keep_derivations,
        };
        if let Err(e) = collect_garbage(shared, &request) {
            tracing::error!("the automatic garbage collection failed: {e}");
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.avail_after_gc = Self::available(real).unwrap_or(u64::MAX);
        state.last_check = Some(Instant::now());
    }
}

/// Removes `link` from `gcroots/auto` if it is a symlink there whose `target` is gone for us
/// too (a target we cannot look at is not gone). True if removed.
fn remove_stale_link(auto_dir: &Path, link: &Path, target: &Path) -> bool {
    let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
        return false;
    };
    if parent != auto_dir {
        return false;
    }
    match rustix::fs::lstat(target) {
        Err(Errno::NOENT | Errno::NOTDIR) => {}
        _ => return false,
    }
    let Ok(dir) = ward_store::fsutil::open_dir_path(auto_dir) else {
        return false;
    };
    let is_link = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
    let still_there = rustix::fs::readlinkat(&dir, name, Vec::new())
        .is_ok_and(|t| t.as_bytes() == target.as_os_str().as_bytes());
    is_link && still_there && rustix::fs::unlinkat(&dir, name, AtFlags::empty()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_dangling_links_directly_in_auto_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let auto = tmp.path().join("gcroots/auto");
        std::fs::create_dir_all(&auto).unwrap();
        let gone = tmp.path().join("gone");
        let here = tmp.path().join("here");
        std::fs::write(&here, b"").unwrap();
        symlink(&gone, auto.join("a")).unwrap();
        symlink(&here, auto.join("b")).unwrap();
        assert!(remove_stale_link(&auto, &auto.join("a"), &gone));
        assert!(!auto.join("a").exists() && std::fs::symlink_metadata(auto.join("a")).is_err());
        // The helper's word is not enough: the target exists.
        assert!(!remove_stale_link(&auto, &auto.join("b"), &here));
        // Not in gcroots/auto, or pointing elsewhere now.
        symlink(&gone, tmp.path().join("c")).unwrap();
        assert!(!remove_stale_link(&auto, &tmp.path().join("c"), &gone));
        symlink(&gone, auto.join("d")).unwrap();
        assert!(!remove_stale_link(
            &auto,
            &auto.join("d"),
            &tmp.path().join("other")
        ));
        assert!(std::fs::symlink_metadata(auto.join("d")).is_ok());
    }
}
