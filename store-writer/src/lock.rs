//! `flock(2)` locks with Nix's semantics, so that ward and Nix processes working on the same
//! store exclude each other.
//!
//! * Per-path locks (`<store path>.lock`): opened or created with mode 0600, locked
//!   exclusively; a lock file that is not empty after locking was deleted by its previous owner
//!   (who writes `d` into it before unlinking it), so the lock is retried on a fresh file.
//! * The big lock (`db/big-lock`): held shared by every store user for as long as the store is
//!   open, exclusively during a schema upgrade.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use thiserror::Error;

/// How many times a stale (deleted) per-path lock file is retried before giving up. Each retry
/// means another process deleted the lock file between our open and our lock; more than a
/// handful in a row means something keeps deleting it.
const MAX_STALE_RETRIES: usize = 1000;

/// A lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Opening or locking the lock file failed.
    #[error("{action} lock file '{path}': {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The lock file kept being deleted under us.
    #[error("lock file '{0}' keeps being deleted by other processes")]
    Unstable(PathBuf),
}

fn lock_io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_owned();
    move |source| LockError::Io {
        action,
        path,
        source,
    }
}

/// Opens (creating if asked) a lock file read-write with mode 0600, as Nix's `openLockFile`.
pub fn open_lock_file(path: &Path, create: bool) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(lock_io("opening", path))
}

/// Takes `operation` on `file`, waiting if `wait` is true. Returns false when `wait` is false
/// and another process holds a conflicting lock. Interrupted waits are retried.
pub fn lock_file(file: &File, exclusive: bool, wait: bool) -> std::io::Result<bool> {
    let operation = match (exclusive, wait) {
        (true, true) => FlockOperation::LockExclusive,
        (true, false) => FlockOperation::NonBlockingLockExclusive,
        (false, true) => FlockOperation::LockShared,
        (false, false) => FlockOperation::NonBlockingLockShared,
    };
    loop {
        match flock(file, operation) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// An exclusive lock on `<store path>.lock`, released when dropped. By default the lock file
/// stays; [`PathLock::set_delete_on_release`] removes it on release the way Nix does once the
/// path is valid.
#[derive(Debug)]
pub struct PathLock {
    file: File,
    path: PathBuf,
    delete_on_release: bool,
}

impl PathLock {
    /// Locks `lock_path`, waiting for other holders.
    pub fn acquire(lock_path: &Path) -> Result<PathLock, LockError> {
        for _ in 0..MAX_STALE_RETRIES {
            let file = open_lock_file(lock_path, true)?;
            lock_file(&file, true, true).map_err(lock_io("locking", lock_path))?;
            let size = file
                .metadata()
                .map_err(lock_io("checking", lock_path))?
                .len();
            if size == 0 {
                return Ok(PathLock {
                    file,
                    path: lock_path.to_owned(),
                    delete_on_release: false,
                });
            }
            tracing::debug!(path = %lock_path.display(), "lock file has become stale, retrying");
        }
        Err(LockError::Unstable(lock_path.to_owned()))
    }

    /// Tries to lock `lock_path` without waiting; `None` if another process holds it.
    pub fn try_acquire(lock_path: &Path) -> Result<Option<PathLock>, LockError> {
        for _ in 0..MAX_STALE_RETRIES {
            let file = open_lock_file(lock_path, true)?;
            if !lock_file(&file, true, false).map_err(lock_io("locking", lock_path))? {
                return Ok(None);
            }
            let size = file
                .metadata()
                .map_err(lock_io("checking", lock_path))?
                .len();
            if size == 0 {
                return Ok(Some(PathLock {
                    file,
                    path: lock_path.to_owned(),
                    delete_on_release: false,
                }));
            }
        }
        Err(LockError::Unstable(lock_path.to_owned()))
    }

    /// Whether to delete the lock file when the lock is released.
    pub fn set_delete_on_release(&mut self, delete: bool) {
        self.delete_on_release = delete;
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        if self.delete_on_release {
            // Unlink first, then mark the open file stale so that a process already waiting
            // on it retries with a new file. Failing to unlink only leaves an empty file.
            let _ = std::fs::remove_file(&self.path);
            let _ = self.file.write_all(b"d");
        }
        // Closing the file releases the flock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_excludes_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("x.lock");
        let held = PathLock::acquire(&lock_path).unwrap();
        assert_eq!(held.path(), lock_path);
        assert!(PathLock::try_acquire(&lock_path).unwrap().is_none());
        drop(held);
        assert!(lock_path.exists(), "lock file kept by default");
        let again = PathLock::try_acquire(&lock_path).unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn deleted_lock_file_is_marked_stale() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("x.lock");
        let mut held = PathLock::acquire(&lock_path).unwrap();
        // A second process opened the file before we delete it.
        let waiter = open_lock_file(&lock_path, false).unwrap();
        held.set_delete_on_release(true);
        drop(held);
        assert!(!lock_path.exists());
        // The waiter gets the lock on the old file but sees it is stale (size 1).
        assert!(lock_file(&waiter, true, false).unwrap());
        assert_eq!(waiter.metadata().unwrap().len(), 1);
        // A fresh acquire creates a new file.
        let fresh = PathLock::acquire(&lock_path).unwrap();
        assert_eq!(fresh.file.metadata().unwrap().len(), 0);
    }

    #[test]
    fn shared_locks_coexist_but_exclude_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big-lock");
        let a = open_lock_file(&path, true).unwrap();
        let b = open_lock_file(&path, true).unwrap();
        let c = open_lock_file(&path, true).unwrap();
        assert!(lock_file(&a, false, false).unwrap());
        assert!(lock_file(&b, false, false).unwrap());
        assert!(!lock_file(&c, true, false).unwrap());
        drop(a);
        drop(b);
        assert!(lock_file(&c, true, false).unwrap());
    }

    #[test]
    fn missing_lock_file_without_create_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = open_lock_file(&path, false).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("p.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(PathLock::acquire(&link).is_err());
    }
}
