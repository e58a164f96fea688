//! CollectGarbage: the roots from the broker's helper, stale indirect roots removed, then
//! [`ward_store::gc`].

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use ward_proto::gc_roots::RootRecord;
use ward_proto::ipc::store_writer::{StoreWriterError, StoreWriterToFrontend};
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
