//! Where a store keeps its files, and creating the directory tree Nix expects.
//!
//! Two shapes exist, as in Nix:
//! * a *chroot* store (`--store DIR`, `local?root=DIR`): the logical store directory is still
//!   `/nix/store` (paths and their hashes are computed for it), but files live under
//!   `DIR/nix/store`, state under `DIR/nix/var/nix` and logs under `DIR/nix/var/log/nix`;
//! * a *real* store: the store, state and log directories are the values of `NIX_STORE_DIR`,
//!   `NIX_STATE_DIR` and `NIX_LOG_DIR` (or their defaults). The caller reads the environment;
//!   this module only takes the values.
//!
//! [`StoreLayout::create`] makes the tree Nix 2.8's `LocalStore` constructor makes, with the
//! same modes, so that `nix-store` and `nix-daemon` can use a store ward created and the other
//! way round.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use ward_proto::db as schema;
use ward_proto::store_path::{StoreDir, StorePath};

/// Size of `db/reserved`: space released before a garbage collection so that SQLite can still
/// work on a full disk (Nix's `reserved-size`, default 8 MiB).
pub const DEFAULT_RESERVED_SIZE: u64 = 8 * 1024 * 1024;

/// Name of ward's private staging directory inside the physical store directory. It sits in
/// the store directory so that renaming a finished path into place never crosses a file
/// system. Its name is not a store path name, so no store path can collide with it.
pub const STAGING_DIR_NAME: &str = ".ward-staging";

/// Name of the hard-link pool used by store optimisation.
pub const LINKS_DIR_NAME: &str = ".links";

/// Mode of directories Nix creates with `createDirs` under the usual umask 022.
const DIR_MODE: u32 = 0o755;
/// Mode of the store directory in multi-user mode (sticky, group-writable for build users).
const MULTI_USER_STORE_MODE: u32 = 0o1775;

/// Why the layout could not be created or checked.
#[derive(Debug, Error)]
pub enum LayoutError {
    /// A directory given to the layout is not absolute.
    #[error("store directory '{0}' must be an absolute path")]
    NotAbsolute(PathBuf),
    /// A system call on a path failed.
    #[error("{action} '{path}': {source}")]
    Io {
        /// What was being done, e.g. "creating directory".
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store directory or one of its parents is a symlink (Nix refuses this unless
    /// `allow-symlinked-store` is set).
    #[error(
        "the path '{0}' is a symlink; this is not allowed for the Nix store and its parent \
         directories"
    )]
    SymlinkedStore(PathBuf),
    /// A user name that cannot be a single path component.
    #[error("user name '{0}' cannot be used as a per-user directory name")]
    BadUserName(String),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_owned();
    move |source| LayoutError::Io {
        action,
        path,
        source,
    }
}

/// The user whose per-user profile and GC-root directories to create
/// (`profiles/per-user/<name>`, `gcroots/per-user/<name>`), as Nix's `createUser` does for the
/// user running the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUser {
    /// Login name; must be a single path component.
    pub name: String,
    /// Owner to give the directories.
    pub uid: u32,
    /// Group to give the directories (Nix uses the process's group).
    pub gid: u32,
}

/// Options for [`StoreLayout::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Size to give `db/reserved` (`reserved-size`).
    pub reserved_size: u64,
    /// Multi-user mode: the gid of `build-users-group`. When set and the process is root, the
    /// store directory becomes `root:<gid>` mode `1775`, as Nix does.
    pub build_group: Option<u32>,
    /// Per-user directories to create for this user.
    pub user: Option<StoreUser>,
    /// `allow-symlinked-store`: skip the check that the store directory and its parents are
    /// not symlinks.
    pub allow_symlinked_store: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            reserved_size: DEFAULT_RESERVED_SIZE,
            build_group: None,
            user: None,
            allow_symlinked_store: false,
        }
    }
}

/// The directories of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    store_dir: StoreDir,
    real_store_dir: PathBuf,
    state_dir: PathBuf,
    log_dir: PathBuf,
}

impl StoreLayout {
    /// A chroot store under `root` with the logical store directory `/nix/store`.
    pub fn chroot(root: &Path) -> Result<StoreLayout, LayoutError> {
        StoreLayout::chroot_with_store_dir(root, StoreDir::default())
    }

    /// A chroot store under `root` whose paths are computed for `store_dir`. As in Nix, the
    /// files still live in `root/nix/store` whatever the logical directory is.
    pub fn chroot_with_store_dir(
        root: &Path,
        store_dir: StoreDir,
    ) -> Result<StoreLayout, LayoutError> {
        if !root.is_absolute() {
            return Err(LayoutError::NotAbsolute(root.to_owned()));
        }
        Ok(StoreLayout {
            store_dir,
            real_store_dir: root.join("nix/store"),
            state_dir: root.join("nix/var/nix"),
            log_dir: root.join("nix/var/log/nix"),
        })
    }

    /// A store whose files live at the logical store directory (`NIX_STORE_DIR`), with state
    /// and logs in `state_dir` (`NIX_STATE_DIR`) and `log_dir` (`NIX_LOG_DIR`).
    pub fn real(
        store_dir: StoreDir,
        state_dir: &Path,
        log_dir: &Path,
    ) -> Result<StoreLayout, LayoutError> {
        for dir in [state_dir, log_dir] {
            if !dir.is_absolute() {
                return Err(LayoutError::NotAbsolute(dir.to_owned()));
            }
        }
        Ok(StoreLayout {
            real_store_dir: PathBuf::from(store_dir.as_str()),
            store_dir,
            state_dir: state_dir.to_owned(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// A layout from already resolved directories (e.g. `ward_config`'s layout), for either
    /// shape: `real_store_dir` equals the logical directory for a real store and is
    /// `ROOT/nix/store` for a chroot store.
    pub fn from_parts(
        store_dir: StoreDir,
        real_store_dir: &Path,
        state_dir: &Path,
        log_dir: &Path,
    ) -> Result<StoreLayout, LayoutError> {
        for dir in [real_store_dir, state_dir, log_dir] {
            if !dir.is_absolute() {
                return Err(LayoutError::NotAbsolute(dir.to_owned()));
            }
        }
        Ok(StoreLayout {
            store_dir,
            real_store_dir: real_store_dir.to_owned(),
            state_dir: state_dir.to_owned(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// The logical store directory that store paths are printed and hashed with.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Where the store's files physically are.
    pub fn real_store_dir(&self) -> &Path {
        &self.real_store_dir
    }

    /// `/nix/var/nix` or its equivalent.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `/nix/var/log/nix` or its equivalent.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Physical location of a store path.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.real_store_dir.join(path.base_name())
    }

    /// The per-path lock file (`<path>.lock`) in the physical store directory.
    pub fn lock_path(&self, path: &StorePath) -> PathBuf {
        self.real_store_dir
            .join(format!("{}.lock", path.base_name()))
    }

    /// `<state>/db`.
    pub fn db_dir(&self) -> PathBuf {
        self.state_dir.join("db")
    }

    /// `<state>/db/db.sqlite`.
    pub fn db_file(&self) -> PathBuf {
        self.db_dir().join(schema::DB_FILE)
    }

    /// `<state>/db/schema`.
    pub fn schema_file(&self) -> PathBuf {
        self.db_dir().join(schema::SCHEMA_FILE)
    }

    /// `<state>/db/ca-schema`.
    pub fn ca_schema_file(&self) -> PathBuf {
        self.db_dir().join(schema::CA_SCHEMA_FILE)
    }

    /// `<state>/db/big-lock`.
    pub fn big_lock_file(&self) -> PathBuf {
        self.db_dir().join(schema::BIG_LOCK_FILE)
    }

    /// `<state>/db/reserved`.
    pub fn reserved_file(&self) -> PathBuf {
        self.db_dir().join("reserved")
    }

    /// `<state>/gc.lock`.
    pub fn gc_lock_file(&self) -> PathBuf {
        self.state_dir.join("gc.lock")
    }

    /// `<state>/temproots`.
    pub fn temproots_dir(&self) -> PathBuf {
        self.state_dir.join("temproots")
    }

    /// `<state>/gcroots`.
    pub fn gcroots_dir(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    /// `<state>/profiles`.
    pub fn profiles_dir(&self) -> PathBuf {
        self.state_dir.join("profiles")
    }

    /// `<state>/userpool` (locks of build-user uids).
    pub fn userpool_dir(&self) -> PathBuf {
        self.state_dir.join("userpool")
    }

    /// `<state>/daemon-socket`.
    pub fn daemon_socket_dir(&self) -> PathBuf {
        self.state_dir.join("daemon-socket")
    }

    /// `<log>/drvs`, where build logs go.
    pub fn drv_log_dir(&self) -> PathBuf {
        self.log_dir.join("drvs")
    }

    /// `<real store>/.links`.
    pub fn links_dir(&self) -> PathBuf {
        self.real_store_dir.join(LINKS_DIR_NAME)
    }

    /// `<real store>/.ward-staging`, ward's private area for paths being added.
    pub fn staging_dir(&self) -> PathBuf {
        self.real_store_dir.join(STAGING_DIR_NAME)
    }

    /// Creates the directory tree as Nix 2.8 does for a local store, and the database
    /// side files that do not depend on SQLite (`db/big-lock`, `db/reserved`). Existing
    /// entries are kept. The database itself and `db/schema` are made by
    /// [`crate::db::StoreDb::open`].
    pub fn create(&self, options: &CreateOptions) -> Result<(), LayoutError> {
        make_dirs(&self.real_store_dir)?;
        if let Some(gid) = options.build_group {
            self.make_store_multi_user(gid)?;
        }
        make_dirs(&self.links_dir())?;
        let profiles = self.profiles_dir();
        make_dirs(&profiles)?;
        make_dirs(&self.temproots_dir())?;
        make_dirs(&self.db_dir())?;
        let gcroots = self.gcroots_dir();
        if !exists_no_follow(&gcroots)? {
            make_dirs(&gcroots)?;
            let link = gcroots.join("profiles");
            std::os::unix::fs::symlink(&profiles, &link)
                .map_err(io_error("creating symlink", &link))?;
        }
        for dir in [
            gcroots.join("auto"),
            self.userpool_dir(),
            self.daemon_socket_dir(),
            self.drv_log_dir(),
        ] {
            make_dirs(&dir)?;
        }
        for per_user in [profiles.join("per-user"), gcroots.join("per-user")] {
            make_dirs(&per_user)?;
            set_mode(&per_user, DIR_MODE)?;
        }
        if let Some(user) = &options.user {
            self.create_user_dirs(user)?;
        }
        if !options.allow_symlinked_store {
            check_no_symlinks(&self.real_store_dir)?;
        }
        make_reserved_file(&self.reserved_file(), options.reserved_size);
        let big_lock = self.big_lock_file();
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&big_lock)
            .map_err(io_error("creating lock file", &big_lock))?;
        Ok(())
    }

    /// `profiles/per-user/<user>` and `gcroots/per-user/<user>`, mode 0755, owned by the user.
    pub fn create_user_dirs(&self, user: &StoreUser) -> Result<(), LayoutError> {
        let name = user.name.as_str();
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(LayoutError::BadUserName(user.name.clone()));
        }
        for dir in [
            self.profiles_dir().join("per-user").join(name),
            self.gcroots_dir().join("per-user").join(name),
        ] {
            make_dirs(&dir)?;
            set_mode(&dir, DIR_MODE)?;
            let meta = std::fs::symlink_metadata(&dir).map_err(io_error("reading", &dir))?;
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != user.uid || meta.gid() != user.gid {
                std::os::unix::fs::lchown(&dir, Some(user.uid), Some(user.gid))
                    .map_err(io_error("changing owner of directory", &dir))?;
            }
        }
        Ok(())
    }

    /// Multi-user store directory: `root:<build group>`, mode 1775. Only root can do this; as
    /// in Nix, nothing happens otherwise.
    fn make_store_multi_user(&self, gid: u32) -> Result<(), LayoutError> {
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        use std::os::unix::fs::MetadataExt;
        let dir = &self.real_store_dir;
        let meta = std::fs::metadata(dir).map_err(io_error("getting attributes of path", dir))?;
        if meta.uid() != 0 || meta.gid() != gid || meta.mode() & 0o7777 != MULTI_USER_STORE_MODE {
            std::os::unix::fs::chown(dir, Some(0), Some(gid))
                .map_err(io_error("changing ownership of path", dir))?;
            set_mode(dir, MULTI_USER_STORE_MODE)?;
        }
        Ok(())
    }
}

/// `mkdir -p` with mode 0755 (before the umask), like Nix's `createDirs`.
fn make_dirs(dir: &Path) -> Result<(), LayoutError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_error("creating directory", dir))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LayoutError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("changing permissions of", path))
}

fn exists_no_follow(path: &Path) -> Result<bool, LayoutError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("reading", path)(e)),
    }
}

/// Refuses a store directory that is, or has a parent that is, a symlink: path checks done
/// against the logical directory would then not describe the physical files.
fn check_no_symlinks(dir: &Path) -> Result<(), LayoutError> {
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || ancestor == Path::new("/") {
            continue;
        }
        let meta =
            std::fs::symlink_metadata(ancestor).map_err(io_error("getting status of", ancestor))?;
        if meta.file_type().is_symlink() {
            return Err(LayoutError::SymlinkedStore(ancestor.to_owned()));
        }
    }
    Ok(())
}

/// Keeps `size` bytes allocated in `db/reserved`. Failures are ignored, as in Nix: the file
/// only matters on a full disk, and a full disk is exactly when creating it can fail.
fn make_reserved_file(path: &Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let Ok(mut file) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
    else {
        return;
    };
    let allocated =
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).is_ok();
    if !allocated {
        let chunk = vec![b'X'; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }
    let _ = file.set_len(size);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn chroot_paths() {
        let layout = StoreLayout::chroot(Path::new("/tmp/x")).unwrap();
        assert_eq!(layout.store_dir().as_str(), "/nix/store");
        assert_eq!(layout.real_store_dir(), Path::new("/tmp/x/nix/store"));
        assert_eq!(layout.state_dir(), Path::new("/tmp/x/nix/var/nix"));
        assert_eq!(layout.log_dir(), Path::new("/tmp/x/nix/var/log/nix"));
        assert_eq!(
            layout.db_file(),
            Path::new("/tmp/x/nix/var/nix/db/db.sqlite")
        );
        let p = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f").unwrap();
        assert_eq!(
            layout.real_path(&p),
            Path::new("/tmp/x/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f")
        );
        assert_eq!(
            layout.lock_path(&p),
            Path::new("/tmp/x/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f.lock")
        );
        // A non-default logical store directory still lives in root/nix/store.
        let other = StoreLayout::chroot_with_store_dir(
            Path::new("/tmp/x"),
            StoreDir::new("/gnu/store").unwrap(),
        )
        .unwrap();
        assert_eq!(other.real_store_dir(), Path::new("/tmp/x/nix/store"));
        assert_eq!(other.store_dir().as_str(), "/gnu/store");
    }

    #[test]
    fn real_paths() {
        let layout = StoreLayout::real(
            StoreDir::new("/srv/store").unwrap(),
            Path::new("/srv/state"),
            Path::new("/srv/log"),
        )
        .unwrap();
        assert_eq!(layout.real_store_dir(), Path::new("/srv/store"));
        assert_eq!(layout.gc_lock_file(), Path::new("/srv/state/gc.lock"));
        assert_eq!(layout.drv_log_dir(), Path::new("/srv/log/drvs"));
    }

    #[test]
    fn from_parts_matches_the_named_constructors() {
        let root = Path::new("/tmp/x");
        let chroot = StoreLayout::chroot(root).unwrap();
        let parts = StoreLayout::from_parts(
            StoreDir::default(),
            &root.join("nix/store"),
            &root.join("nix/var/nix"),
            &root.join("nix/var/log/nix"),
        )
        .unwrap();
        assert_eq!(parts, chroot);
        assert!(matches!(
            StoreLayout::from_parts(
                StoreDir::default(),
                Path::new("nix/store"),
                Path::new("/s"),
                Path::new("/l")
            ),
            Err(LayoutError::NotAbsolute(_))
        ));
    }

    #[test]
    fn relative_directories_are_refused() {
        assert!(matches!(
            StoreLayout::chroot(Path::new("rel/dir")),
            Err(LayoutError::NotAbsolute(_))
        ));
        assert!(matches!(
            StoreLayout::real(StoreDir::default(), Path::new("state"), Path::new("/log")),
            Err(LayoutError::NotAbsolute(_))
        ));
    }

    #[test]
    fn creates_the_tree_nix_creates() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(dir.path()).unwrap();
        let user = StoreUser {
            name: "alice".into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        let options = CreateOptions {
            user: Some(user),
            ..CreateOptions::default()
        };
        layout.create(&options).unwrap();
        let state = layout.state_dir();
        for d in [
            "db",
            "gcroots",
            "gcroots/auto",
            "gcroots/per-user",
            "gcroots/per-user/alice",
            "profiles",
            "profiles/per-user",
            "profiles/per-user/alice",
            "temproots",
            "userpool",
            "daemon-socket",
        ] {
            let p = state.join(d);
            assert!(p.is_dir(), "{} missing", p.display());
        }
        assert!(layout.real_store_dir().is_dir());
        assert!(layout.links_dir().is_dir());
        assert!(layout.drv_log_dir().is_dir());
        assert_eq!(mode(&state.join("gcroots/per-user")), 0o755);
        assert_eq!(mode(&state.join("profiles/per-user/alice")), 0o755);
        assert_eq!(
            std::fs::read_link(state.join("gcroots/profiles")).unwrap(),
            layout.profiles_dir()
        );
        assert_eq!(
            std::fs::metadata(layout.reserved_file()).unwrap().len(),
            DEFAULT_RESERVED_SIZE
        );
        assert_eq!(mode(&layout.reserved_file()), 0o600);
        let lock = std::fs::metadata(layout.big_lock_file()).unwrap();
        assert_eq!(lock.len(), 0);
        assert_eq!(mode(&layout.big_lock_file()), 0o600);
        // Creating again keeps everything and does not fail on the existing symlink.
        layout.create(&options).unwrap();
    }

    #[test]
    fn existing_gcroots_get_no_profiles_link() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(dir.path()).unwrap();
        std::fs::create_dir_all(layout.gcroots_dir()).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        assert!(!layout.gcroots_dir().join("profiles").exists());
    }

    #[test]
    fn symlinked_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("nix/store")).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let layout = StoreLayout::chroot(&link).unwrap();
        match layout.create(&CreateOptions::default()) {
            Err(e @ LayoutError::SymlinkedStore(_)) => {
                assert!(e.to_string().contains(&link.display().to_string()), "{e}");
            }
            other => panic!("expected a symlink error, got {other:?}"),
        }
        let allowed = CreateOptions {
            allow_symlinked_store: true,
            ..CreateOptions::default()
        };
        layout.create(&allowed).unwrap();
    }

    #[test]
    fn bad_user_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(dir.path()).unwrap();
        for name in ["", ".", "..", "a/b", "../../etc"] {
            let user = StoreUser {
                name: name.into(),
                uid: 0,
                gid: 0,
            };
            assert!(matches!(
                layout.create_user_dirs(&user),
                Err(LayoutError::BadUserName(_))
            ));
        }
    }

    #[test]
    fn multi_user_store_mode() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: changing the store's group needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(dir.path()).unwrap();
        let options = CreateOptions {
            build_group: Some(12345),
            ..CreateOptions::default()
        };
        layout.create(&options).unwrap();
        let meta = std::fs::metadata(layout.real_store_dir()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o1775);
        assert_eq!((meta.uid(), meta.gid()), (0, 12345));
    }
}
