//! An open store: its layout, its database, and descriptors on the physical store directory
//! and on ward's private staging directory.
//!
//! Opening a store also recovers from a crash of a previous store-writer: everything left in
//! the staging directory is removed (only ward ever writes there, and the exclusive lock on it
//! shows that no other store-writer is using it). Entries at final store locations that have
//! no database row are left alone; they are not valid, and the next add of that path replaces
//! them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{FlockOperation, Mode};
use rustix::io::Errno;
use thiserror::Error;
use ward_proto::derivation::HashModuloCache;
use ward_proto::path_info::ValidPathInfo;

use crate::db::{DbError, DbSettings, StoreDb};
use crate::fsutil::{self, FsError};
use crate::layout::{CreateOptions, LayoutError, StoreLayout, STAGING_DIR_NAME};
use crate::sync_behind::SyncBehind;

/// The store could not be opened.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Creating or checking the directory tree failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Opening the database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A file-system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The staging directory belongs to someone else: somebody with write access to the store
    /// directory made it, and ward will not stage paths where another user can reach them.
    #[error(
        "staging directory '{path}' is owned by uid {owner}, not by the store-writer (uid \
         {ours}); remove it"
    )]
    StagingNotOurs {
        /// The staging directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The store-writer's uid.
        ours: u32,
    },
    /// Another store-writer holds the staging directory.
    #[error("another store-writer is already using the store at '{0}'")]
    InUse(PathBuf),
}

/// An open store; see the [module documentation](self).
#[derive(Debug)]
pub struct Store {
    pub(crate) layout: StoreLayout,
    pub(crate) db: StoreDb,
    /// The physical store directory.
    pub(crate) store_fd: OwnedFd,
    /// `<store>/.ward-staging`, mode 0700, owned by us, locked exclusively while open.
    pub(crate) staging_fd: OwnedFd,
    /// Counter for unique staging entry names within this process.
    pub(crate) next_staging: u64,
    /// hashDerivationModulo of derivations already read, for checking the outputs of `.drv`
    /// files being registered (never stale: `.drv` paths are content addresses).
    pub(crate) drv_hash_cache: HashModuloCache,
    /// `secret-key-files`: every path built here, and every path added with content the
    /// store-writer hashed itself, is signed with each (as `nix store sign` would).
    pub signing_keys: Vec<ward_proto::signature::SecretKey>,
    /// `auto-optimise-store`: new paths are hard-linked to identical files as they come.
    pub auto_optimise: bool,
    /// Sync-behind (see [`crate::sync_behind`]): additions are registered with a mark and
    /// synced in groups by the syncer. `None` (`ward-durable-replies`, and tests): each
    /// addition is synced before its rows are committed.
    pub sync_behind: Option<Arc<SyncBehind>>,
}

impl Store {
    /// Creates the layout if needed, opens the database read-write, takes the staging
    /// directory and clears what a previous run left in it.
    pub fn open(
        layout: StoreLayout,
        create: &CreateOptions,
        settings: &DbSettings,
    ) -> Result<Store, StoreError> {
        layout.create(create)?;
        let db = StoreDb::open(&layout, settings)?;
        let store_fd = fsutil::open_dir_path(layout.real_store_dir())?;
        let staging_fd = open_staging(&layout, &store_fd)?;
        let store = Store {
            layout,
            db,
            store_fd,
            staging_fd,
            next_staging: 0,
            drv_hash_cache: HashModuloCache::new(),
            signing_keys: Vec::new(),
            auto_optimise: false,
            sync_behind: None,
        };
        let removed = store.clean_staging()?;
        if removed > 0 {
            tracing::info!(
                removed,
                "removed leftovers of interrupted additions from staging"
            );
        }
        Ok(store)
    }

    /// Adds this store's signatures (`secret-key-files`) to `info`.
    pub fn sign(&self, info: &mut ValidPathInfo) {
        if self.signing_keys.is_empty() {
            return;
        }
        match info.fingerprint(self.layout.store_dir()) {
            Ok(fingerprint) => {
                for key in &self.signing_keys {
                    info.sigs.insert(key.sign(&fingerprint));
                }
            }
            Err(e) => tracing::warn!("not signing: {e}"),
        }
    }

    /// Where the store's files are.
    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// The database (for queries).
    pub fn db(&self) -> &StoreDb {
        &self.db
    }

    /// The database, for writes that do not touch the store directory (signatures,
    /// realisations).
    pub fn db_mut(&mut self) -> &mut StoreDb {
        &mut self.db
    }

    /// Removes every entry in the staging directory; returns how many there were.
    fn clean_staging(&self) -> Result<usize, FsError> {
        let staging = self.layout.staging_dir();
        let names = fsutil::list_dir(self.staging_fd.as_fd(), &staging)?;
        for name in &names {
            fsutil::remove_tree_at(self.staging_fd.as_fd(), name, &staging.join(name))?;
        }
        Ok(names.len())
    }

    /// Makes a fresh, private entry in the staging directory.
    pub(crate) fn new_staging_entry(&mut self) -> Result<(OsString, OwnedFd), FsError> {
        let staging = self.layout.staging_dir();
        loop {
            self.next_staging += 1;
            let name = OsString::from(format!(
                "{}-{}",
                rustix::process::getpid().as_raw_nonzero(),
                self.next_staging
            ));
            let shown = staging.join(&name);
            match rustix::fs::mkdirat(&self.staging_fd, &name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(fsutil::io_err("creating staging directory", &shown)(e)),
            }
            let fd = fsutil::open_dir_at(self.staging_fd.as_fd(), &name, &shown)?;
            return Ok((name, fd));
        }
    }
}

/// Opens (creating it if needed) the staging directory, checks that it is ours and private,
/// and locks it so that no second store-writer clears it under us.
fn open_staging(layout: &StoreLayout, store_fd: &OwnedFd) -> Result<OwnedFd, StoreError> {
    let path = layout.staging_dir();
    match rustix::fs::mkdirat(store_fd, STAGING_DIR_NAME, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(fsutil::io_err("creating staging directory", &path)(e).into()),
    }
    let fd = fsutil::open_dir_at(store_fd.as_fd(), OsStr::new(STAGING_DIR_NAME), &path)?;
    let st = rustix::fs::fstat(&fd).map_err(fsutil::io_err("getting status of", &path))?;
    let ours = rustix::process::geteuid().as_raw();
    if st.st_uid != ours {
        return Err(StoreError::StagingNotOurs {
            path,
            owner: st.st_uid,
            ours,
        });
    }
    if st.st_mode & 0o7777 != 0o700 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(fsutil::io_err("changing mode of", &path))?;
    }
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(Errno::WOULDBLOCK) => Err(StoreError::InUse(layout.real_store_dir().to_owned())),
        Err(e) => Err(fsutil::io_err("locking", &path)(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn open_creates_a_private_locked_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        let store = Store::open(
            layout.clone(),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        let meta = std::fs::metadata(layout.staging_dir()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert!(matches!(
            Store::open(
                layout.clone(),
                &CreateOptions::default(),
                &DbSettings::default()
            ),
            Err(StoreError::InUse(_))
        ));
        drop(store);
        Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap();
    }

    #[test]
    fn open_clears_staging_leftovers_and_fixes_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        let staging = layout.staging_dir();
        std::fs::create_dir_all(staging.join("123-4/out/sub")).unwrap();
        std::fs::write(staging.join("123-4/out/sub/f"), "x").unwrap();
        std::fs::set_permissions(
            staging.join("123-4/out/sub"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        std::fs::write(staging.join("stray"), "y").unwrap();
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A final location without a DB row is not staging: it stays.
        let leftover = layout
            .real_store_dir()
            .join("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f");
        std::fs::write(&leftover, "half").unwrap();
        let _store = Store::open(
            layout.clone(),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(&staging).unwrap().mode() & 0o7777, 0o700);
        assert!(leftover.exists());
    }

    #[test]
    fn foreign_staging_directory_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: giving the staging directory to another user needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        std::fs::create_dir(layout.staging_dir()).unwrap();
        std::os::unix::fs::chown(layout.staging_dir(), Some(65534), Some(65534)).unwrap();
        let err =
            Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::StagingNotOurs { owner: 65534, .. }),
            "{err}"
        );
    }

    #[test]
    fn symlinked_staging_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("precious"), "keep").unwrap();
        std::os::unix::fs::symlink(&elsewhere, layout.staging_dir()).unwrap();
        let err =
            Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap_err();
        assert!(err.to_string().contains(STAGING_DIR_NAME), "{err}");
        assert!(elsewhere.join("precious").exists());
    }
}
