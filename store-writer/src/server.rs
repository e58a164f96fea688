//! Start-up and the accept loop: open the store, share what the frontend must read with the
//! `ward` group, bind `store-writer.socket`, confine the process, then serve each accepted
//! channel on its own thread.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use nix::unistd::{Group, User};
use ward_config::daemon::{self, DaemonSetup, FRONTEND_USER, WARD_GROUP};
use ward_proto::signature::PublicKeys;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::DbSettings;
use ward_store::fsutil;
use ward_store::layout::{CreateOptions, StoreLayout, StoreUser};
use ward_store::sync_behind::{start_syncer, SyncBehind};
use ward_store::Store;

use crate::broker_link::BrokerLink;
use crate::confine;
use crate::handler;

/// Most channels served at once (accepted connections plus OpenChannel sockets); more are
/// refused, so a runaway frontend costs bounded threads.
pub const MAX_CHANNELS: usize = 512;

/// Why the store-writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store directory setting is not a valid store directory.
    #[error("{0}")]
    StoreDir(#[from] ward_proto::store_path::StorePathError),
    /// The layout could not be used.
    #[error("{0}")]
    Layout(#[from] ward_store::layout::LayoutError),
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] ward_store::StoreError),
    /// A file or socket operation failed.
    #[error("{action} '{path}': {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something exists where the socket goes.
    #[error("'{0}' exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Confinement could not be applied.
    #[error("{0}")]
    Confine(#[from] confine::ConfineError),
    /// Re-checking the additions a previous run had not synced yet failed.
    #[error("re-checking recent additions of the last run: {0}")]
    Recovery(String),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What every channel shares.
#[derive(Debug)]
pub struct Shared {
    store: Mutex<Store>,
    /// Where the store's files are.
    pub layout: StoreLayout,
    /// The settings that a re-read of nix.conf (SIGHUP) changes.
    policy: RwLock<Arc<WriterPolicy>>,
    /// The channel to the broker, for the roots of a collection (none: collections are
    /// refused).
    pub broker: Option<BrokerLink>,
    /// Held by the one collection that runs.
    pub collecting: Mutex<()>,
    /// `min-free` / `max-free`: collections started by additions when space runs low.
    pub auto_gc: crate::collect::AutoGc,
    open_channels: AtomicUsize,
    next_channel: AtomicU64,
}

/// The store-writer's settings that apply at once when nix.conf is re-read (SIGHUP); each
/// request reads them when it starts.
#[derive(Debug)]
pub struct WriterPolicy {
    /// `trusted-public-keys`.
    pub keys: PublicKeys,
    /// `require-sigs`.
    pub require_sigs: bool,
    /// `compress-build-log`.
    pub compress_build_log: bool,
    /// `ward-max-output-size` (0 = no limit).
    pub max_output_size: u64,
}

impl WriterPolicy {
    /// The policy `settings` give.
    pub fn from_settings(settings: &ward_config::Settings) -> WriterPolicy {
        WriterPolicy {
            keys: trusted_keys(&settings.trusted_public_keys),
            require_sigs: settings.require_sigs,
            compress_build_log: settings.compress_build_log,
            max_output_size: settings.ward_max_output_size,
        }
    }
}

/// Settings the store-writer reads only at start: a changed value is logged as needing a
/// restart.
const WRITER_RESTART_ONLY: &[&str] = &[
    "store",
    "fsync-metadata",
    "use-sqlite-wal",
    "min-free",
    "max-free",
    "min-free-check-interval",
    "keep-outputs",
    "keep-derivations",
    "gc-reserved-space",
    "build-users-group",
    "secret-key-files",
    "experimental-features",
    "ward-audit-log",
    "ward-durable-replies",
];

impl Shared {
    /// The settings in force now.
    pub fn policy(&self) -> Arc<WriterPolicy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads nix.conf (SIGHUP): applies what can change at once and logs the rest.
    fn reload(&self, args: &ward_config::cli::DaemonArgs, current: &mut ward_config::Settings) {
        let fresh = match ward_config::daemon::load_setup(args.clone(), false) {
            Ok(setup) => setup.settings,
            Err(e) => {
                tracing::error!("re-reading nix.conf: {e}; the settings in use stay");
                return;
            }
        };
        let (old, new) = (current.to_key_values(), fresh.to_key_values());
        let mut changed = 0;
        for (name, value) in &new {
            if old.get(name) == Some(value) {
                continue;
            }
            changed += 1;
            if WRITER_RESTART_ONLY.contains(name) {
                tracing::warn!(setting = name, value = %value,
                    "nix.conf changed '{name}', which the store-writer reads only at start; \
                     it applies after a restart (systemctl restart nix-daemon)");
            } else {
                tracing::debug!(setting = name, "nix.conf changed '{name}'");
            }
        }
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WriterPolicy::from_settings(&fresh));
        self.store().auto_optimise = fresh.auto_optimise_store;
        tracing::info!(changed, "store-writer re-read nix.conf");
        *current = fresh;
    }

    /// The store's lock itself, for the collector, which takes it in short steps.
    pub fn store_mutex(&self) -> &Mutex<Store> {
        &self.store
    }

    /// The store, for one request's worth of work. A panic while it was held leaves the
    /// library's state consistent (it is crash-safe on disk and has no half-done in-memory
    /// state between calls), so a poisoned lock is taken over with a log line.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| {
            tracing::error!("a channel panicked while holding the store; continuing");
            poisoned.into_inner()
        })
    }

    /// The logical store directory.
    pub fn store_dir(&self) -> &StoreDir {
        self.layout.store_dir()
    }

    /// A printed store path.
    pub fn print(&self, path: &StorePath) -> String {
        self.layout.store_dir().print(path)
    }

    /// Takes a channel slot, or `None` when [`MAX_CHANNELS`] are open.
    pub fn open_channel(self: &Arc<Self>) -> Option<ChannelSlot> {
        let taken = self
            .open_channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CHANNELS).then_some(n + 1)
            });
        taken.ok().map(|_| ChannelSlot {
            shared: Arc::clone(self),
            id: self.next_channel.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }
}

/// One open channel's place in the count; released when dropped.
#[derive(Debug)]
pub struct ChannelSlot {
    shared: Arc<Shared>,
    /// The channel's number, unique in this process (names its temporary roots file).
    pub id: u64,
}

impl ChannelSlot {
    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.shared.open_channels.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a thread serving `socket` as a new channel. Returns false (and logs) when the
/// channel limit is reached or the thread cannot start; the socket is then closed.
/// `client_uid` is the uid of the client the frontend opens this channel for, as the frontend
/// says (for the audit log).
pub fn spawn_channel(
    shared: &Arc<Shared>,
    socket: UnixStream,
    origin: &str,
    client_uid: Option<u32>,
) -> bool {
    let Some(slot) = shared.open_channel() else {
        tracing::warn!(
            origin,
            limit = MAX_CHANNELS,
            "refusing a channel: too many open channels"
        );
        return false;
    };
    let id = slot.id;
    let spawned = std::thread::Builder::new()
        .name(format!("channel-{id}"))
        .spawn(move || handler::serve(slot, socket, client_uid));
    match spawned {
        Ok(_) => {
            tracing::debug!(channel = id, origin, "channel opened");
            true
        }
        Err(e) => {
            tracing::error!(channel = id, error = %e, "cannot start a channel thread");
            false
        }
    }
}

/// Who may connect: our own uid, and the frontend's user if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPeers {
    uids: Vec<u32>,
}

impl AllowedPeers {
    fn detect() -> AllowedPeers {
        let mut uids = vec![rustix::process::geteuid().as_raw()];
        if let Ok(Some(user)) = User::from_name(FRONTEND_USER) {
            if !uids.contains(&user.uid.as_raw()) {
                uids.push(user.uid.as_raw());
            }
        }
        AllowedPeers { uids }
    }

    fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

/// The gid of the `ward` group when this process runs as a non-root member of it (multi-user
/// mode: the broker started us as `ward-store`).
fn ward_group_membership() -> Option<u32> {
    if rustix::process::geteuid().is_root() {
        return None;
    }
    let group = Group::from_name(WARD_GROUP).ok().flatten()?;
    let gid = group.gid.as_raw();
    let member = rustix::process::getegid().as_raw() == gid
        || nix::unistd::getgroups()
            .map(|groups| groups.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false);
    member.then_some(gid)
}

/// The library's layout for the daemon's resolved one.
fn store_layout(setup: &DaemonSetup) -> Result<StoreLayout, ServerError> {
    let resolved = &setup.layout;
    Ok(StoreLayout::from_parts(
        StoreDir::new(&resolved.store_dir)?,
        &resolved.real_store_dir,
        &resolved.state_dir,
        &resolved.log_dir,
    )?)
}

fn create_options(setup: &DaemonSetup, multi_user: bool) -> CreateOptions {
    let settings = &setup.settings;
    let euid = rustix::process::geteuid();
    let build_group = if euid.is_root() && !settings.build_users_group.is_empty() {
        Group::from_name(&settings.build_users_group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    } else {
        None
    };
    // Nix makes the per-user directories of the user running the store; in multi-user mode
    // that is ward's own system user, which has no use for them.
    let user = if multi_user {
        None
    } else {
        User::from_uid(euid.as_raw().into())
            .ok()
            .flatten()
            .map(|u| StoreUser {
                name: u.name,
                uid: euid.as_raw(),
                gid: rustix::process::getegid().as_raw(),
            })
    };
    CreateOptions {
        reserved_size: u64::try_from(settings.gc_reserved_space).unwrap_or(0),
        build_group,
        user,
        allow_symlinked_store: settings.allow_symlinked_store,
    }
}

/// Multi-user mode: lets the frontend (group `ward`) read what it must. `db/big-lock`,
/// `db.sqlite` and `db.sqlite-wal` become 0640. `db.sqlite-shm` becomes 0660: the frontend's
/// read-only WAL connection must write the shared-memory index (its read marks and locks), or
/// SQLite falls back to a slower, more fragile read-only-shm mode. The trade-off: a
/// compromised frontend could scribble on the index and make the store-writer misread recent
/// pages until the next checkpoint; it cannot write the database or the WAL themselves, and
/// every path's contents are still re-hashed on import.
fn share_db_with_group(layout: &StoreLayout, gid: u32) -> Result<(), ServerError> {
    let db = layout.db_file();
    let with_suffix = |suffix: &str| {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let files = [
        (layout.big_lock_file(), 0o640),
        (db.clone(), 0o640),
        (with_suffix("-wal"), 0o640),
        (with_suffix("-shm"), 0o660),
    ];
    for (path, mode) in files {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("getting status of", &path)(e)),
        };
        if !meta.is_file() {
            return Err(io_err("sharing", &path)(std::io::Error::other(
                "not a regular file",
            )));
        }
        use std::os::unix::fs::MetadataExt;
        if meta.gid() != gid {
            std::os::unix::fs::lchown(&path, None, Some(gid))
                .map_err(io_err("changing the group of", &path))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("changing permissions of", &path))?;
    }
    Ok(())
}

/// Makes sure `db.sqlite-wal` and `-shm` exist before the frontend opens the database
/// read-only (it cannot create them). SQLite creates them when a connection first reads the
/// database in WAL mode; the store keeps its connection open, so they then stay.
fn ensure_wal_files(store: &Store) -> Result<(), ServerError> {
    let db = store.layout().db_file();
    let mut wal = db.clone().into_os_string();
    wal.push("-wal");
    let mut shm = db.clone().into_os_string();
    shm.push("-shm");
    if Path::new(&wal).exists() && Path::new(&shm).exists() {
        return Ok(());
    }
    // Any read opens the WAL. The path need not exist.
    let probe = StorePath::from_base_name("00000000000000000000000000000000-ward-probe")
        .expect("a constant, valid store path");
    store.db().is_valid(&probe).map_err(|e| ServerError::Io {
        action: "reading",
        path: db.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for file in [&wal, &shm] {
        if !Path::new(file).exists() {
            tracing::warn!(
                file = %Path::new(file).display(),
                "sqlite did not create the file; the frontend's read-only open may fail"
            );
        }
    }
    Ok(())
}

/// Binds the socket (replacing a stale one), mode 0660.
fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("changing permissions of", path))?;
    Ok(listener)
}

/// Opens everything, confines the process and serves until killed.
pub fn run(
    setup: &DaemonSetup,
    ipc_dir: &Path,
    signing_keys: Vec<ward_proto::signature::SecretKey>,
    broker: Option<BrokerLink>,
) -> Result<Infallible, ServerError> {
    // Before any thread starts, so that every thread inherits the mask (see start_reloader).
    block_hangup()?;
    let layout = store_layout(setup)?;
    // SQLite's temporary files (large sorts) would go to /var/tmp or /tmp, which landlock
    // will not let us write; the staging directory is private, on the store's file system and
    // cleared at start. SQLite reads this once, when the first database is opened.
    std::env::set_var("SQLITE_TMPDIR", layout.staging_dir());
    let group = ward_group_membership();
    let db_settings = DbSettings {
        fsync_metadata: setup.settings.fsync_metadata,
        use_sqlite_wal: setup.settings.use_sqlite_wal,
        ca_derivations: setup.settings.has_experimental_feature("ca-derivations"),
    };
    let mut store = Store::open(
        layout.clone(),
        &create_options(setup, group.is_some()),
        &db_settings,
    )?;
    store.signing_keys = signing_keys;
    store.auto_optimise = setup.settings.auto_optimise_store;
    let recovery = store
        .recover_unsynced()
        .map_err(|e| ServerError::Recovery(e.to_string()))?;
    if recovery.intact > 0 || !recovery.invalidated.is_empty() {
        tracing::info!(
            intact = recovery.intact,
            invalidated = recovery.invalidated.len(),
            "re-checked the additions the last run registered before syncing them"
        );
    }
    let sync_behind = (!setup.settings.ward_durable_replies).then(SyncBehind::new);
    store.sync_behind = sync_behind.clone();
    if db_settings.use_sqlite_wal {
        ensure_wal_files(&store)?;
    }
    if let Some(gid) = group {
        share_db_with_group(&layout, gid)?;
    }
    let peers = AllowedPeers::detect();
    std::fs::create_dir_all(ipc_dir).map_err(io_err("creating directory", ipc_dir))?;
    let socket_path = daemon::store_writer_socket(ipc_dir);
    let listener = bind_socket(&socket_path)?;

    let mut writable = vec![
        layout.real_store_dir().to_owned(),
        layout.state_dir().to_owned(),
        layout.log_dir().to_owned(),
        ipc_dir.to_owned(),
    ];
    // The audit log is reopened by path after a rotation: its directory, not the file.
    if let Some(dir) = Path::new(&setup.settings.ward_audit_log).parent() {
        if !setup.settings.ward_audit_log.is_empty() && dir.is_dir() {
            writable.push(dir.to_owned());
        }
    }
    let report = confine::confine(&writable)?;
    tracing::info!(
        store = %layout.real_store_dir().display(),
        socket = %socket_path.display(),
        multi_user = group.is_some(),
        landlock = %report.landlock,
        "store-writer ready"
    );

    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        layout,
        policy: RwLock::new(Arc::new(WriterPolicy::from_settings(&setup.settings))),
        broker,
        collecting: Mutex::new(()),
        auto_gc: crate::collect::AutoGc::from_settings(&setup.settings),
        open_channels: AtomicUsize::new(0),
        next_channel: AtomicU64::new(0),
    });
    start_reloader(&shared, setup)?;
    if let Some(tracker) = sync_behind {
        let store_dir = fsutil::open_dir_path(shared.layout.real_store_dir())
            .map_err(|e| ServerError::Recovery(e.to_string()))?;
        let for_syncer = Arc::clone(&shared);
        start_syncer(
            tracker,
            store_dir,
            shared.layout.real_store_dir().to_owned(),
            move |ids| for_syncer.store().db_mut().clear_unsynced(Some(ids)),
        )
        .map_err(|source| ServerError::Io {
            action: "starting the syncer thread for",
            path: shared.layout.real_store_dir().to_owned(),
            source,
        })?;
    }
    accept_loop(&shared, &listener, &peers)
}

fn hangup_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGHUP);
    set
}

fn block_hangup() -> Result<(), ServerError> {
    hangup_set().thread_block().map_err(|e| ServerError::Io {
        action: "blocking",
        path: PathBuf::from("SIGHUP"),
        source: e.into(),
    })
}

/// A thread that re-reads nix.conf on each SIGHUP (which the broker forwards from
/// `systemctl reload`). SIGHUP is blocked in every thread, so none is killed by it; this one
/// takes it with sigwait.
fn start_reloader(shared: &Arc<Shared>, setup: &DaemonSetup) -> Result<(), ServerError> {
    let hangup = hangup_set();
    let shared = Arc::clone(shared);
    let args = setup.args.clone();
    let mut current = setup.settings.clone();
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || loop {
            match hangup.wait() {
                Ok(_) => {
                    ward_store::audit::reopen();
                    shared.reload(&args, &mut current);
                }
                Err(e) => {
                    tracing::error!("waiting for SIGHUP: {e}; nix.conf is not re-read");
                    return;
                }
            }
        })
        .map_err(|e| ServerError::Io {
            action: "starting the reload thread for",
            path: PathBuf::from("SIGHUP"),
            source: e,
        })?;
    Ok(())
}

/// Parses `trusted-public-keys`; a malformed key is logged and left out (nothing verifies
/// against it, which fails closed).
fn trusted_keys(entries: &[String]) -> PublicKeys {
    let mut keys = PublicKeys::new();
    for entry in entries {
        match ward_proto::signature::PublicKey::parse(entry) {
            Ok(key) => {
                keys.insert(key);
            }
            Err(e) => tracing::error!(key = %entry, error = %e,
                "ignoring a malformed entry of 'trusted-public-keys'"),
        }
    }
    keys
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: &UnixListener,
    peers: &AllowedPeers,
) -> Result<Infallible, ServerError> {
    loop {
        let socket = match listener.accept() {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of descriptors or memory: wait for channels to close instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let cred = match rustix::net::sockopt::socket_peercred(&socket) {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "refusing a connection: cannot read its credentials");
                continue;
            }
        };
        let uid = cred.uid.as_raw();
        if !peers.allows(uid) {
            tracing::warn!(
                uid,
                pid = cred.pid.as_raw_nonzero().get(),
                "refusing a connection from a uid that is neither the store-writer's nor '{FRONTEND_USER}'"
            );
            continue;
        }
        let origin = format!("connection from pid {}", cred.pid.as_raw_nonzero());
        spawn_channel(shared, socket, &origin, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_uid_is_always_allowed() {
        let peers = AllowedPeers::detect();
        assert!(peers.allows(rustix::process::geteuid().as_raw()));
        let unused = (1..u32::MAX)
            .rev()
            .find(|uid| !peers.uids.contains(uid))
            .unwrap();
        assert!(!peers.allows(unused));
    }

    #[test]
    fn malformed_trusted_keys_are_left_out() {
        let keys = trusted_keys(&[
            ward_config::CACHE_NIXOS_ORG_KEY.to_string(),
            "broken".to_string(),
        ]);
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn a_stale_socket_is_replaced_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(bind_socket(&path).unwrap());
        let listener = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(listener);
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            bind_socket(&file),
            Err(ServerError::NotASocket(_))
        ));
    }

    #[test]
    fn the_channel_count_is_bounded_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        let store = Store::open(
            layout.clone(),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            layout,
            policy: RwLock::new(Arc::new(WriterPolicy {
                keys: PublicKeys::new(),
                require_sigs: true,
                compress_build_log: true,
                max_output_size: 0,
            })),
            broker: None,
            collecting: Mutex::new(()),
            auto_gc: crate::collect::AutoGc::disabled(),
            open_channels: AtomicUsize::new(0),
            next_channel: AtomicU64::new(0),
        });
        let slots: Vec<_> = (0..MAX_CHANNELS)
            .map(|_| shared.open_channel().unwrap())
            .collect();
        assert!(shared.open_channel().is_none());
        let ids: std::collections::BTreeSet<u64> = slots.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), MAX_CHANNELS);
        drop(slots);
        assert!(shared.open_channel().is_some());
    }

    #[test]
    fn wal_files_exist_after_start_and_are_shared_with_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        let store = Store::open(
            layout.clone(),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        ensure_wal_files(&store).unwrap();
        let db = layout.db_file();
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        assert!(shm.exists() && wal.exists());
        let gid = rustix::process::getegid().as_raw();
        share_db_with_group(&layout, gid).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&db), 0o640);
        assert_eq!(mode(&wal), 0o640);
        assert_eq!(mode(&shm), 0o660);
        assert_eq!(mode(&layout.big_lock_file()), 0o640);
    }
}
