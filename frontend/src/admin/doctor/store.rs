//! Checks 4, 5 and 8: owners and modes of the store, the state directory and the DB (the
//! paths the daemon itself hands its store owner, `launch::paths_the_store_owner_owns`); the
//! DB's `PRAGMA integrity_check`, opened read-only; free space and inodes of the store's file
//! system against `min-free`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ward_config::daemon::{STORE_USER, WARD_GROUP};

use super::report::{Check, Finding, Fix, Status};
use super::{quote, Context};

/// Above this many paths with the wrong owner, one finding lists them all.
const MAX_OWNER_FINDINGS: usize = 8;
/// How many integrity-check messages are shown.
const MAX_INTEGRITY_LINES: usize = 5;

/// Who must own the store's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// ward in multi-user mode: `ward-store:ward`.
    Ward { uid: u32, gid: u32 },
    /// Nix's own daemon serves the store: root's, as Nix has it.
    Nix,
    /// A single-user store: the user running the daemon (and the doctor).
    User { uid: u32, name: String },
}

impl Owner {
    fn describe(&self) -> String {
        match self {
            Owner::Ward { .. } => format!("{STORE_USER}:{WARD_GROUP}"),
            Owner::Nix => "root".to_owned(),
            Owner::User { name, .. } => name.clone(),
        }
    }
}

/// The DB and its companions, and the modes ward gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFile {
    /// `db.sqlite`, `db.sqlite-wal`, `big-lock`: 0640 (the frontend reads through group ward).
    Data,
    /// `db.sqlite-shm`: 0660 (the frontend's read-only WAL connection writes its index).
    SharedMemory,
}

/// A problem with a DB file's mode: its status, wording and the mode that fixes it.
pub fn db_file_mode_problem(
    kind: DbFile,
    mode: u32,
    owner: &Owner,
) -> Option<(Status, String, u32)> {
    let mode = mode & 0o7777;
    let fixed_mode = match (owner, kind) {
        (Owner::Ward { .. }, DbFile::Data) => 0o640,
        (Owner::Ward { .. }, DbFile::SharedMemory) => 0o660,
        _ => 0o644,
    };
    if mode & 0o002 != 0 {
        return Some((
            Status::Error,
            format!("has mode {mode:04o}: anyone can write the database"),
            fixed_mode,
        ));
    }
    let group_may_write = matches!((owner, kind), (Owner::Ward { .. }, DbFile::SharedMemory));
    if mode & 0o020 != 0 && !group_may_write {
        return Some((
            Status::Warning,
            format!("has mode {mode:04o}: its group may write the database"),
            fixed_mode,
        ));
    }
    None
}

/// A problem with a directory's mode: the store directory may be group- or world-writable
/// only with the sticky bit (as Nix's 1775); the state and DB directories not at all.
pub fn dir_mode_problem(mode: u32, is_store: bool) -> Option<(Status, String)> {
    let mode = mode & 0o7777;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !(is_store && sticky) {
        return Some((
            Status::Error,
            format!(
                "has mode {mode:04o}: anyone can {}",
                if is_store {
                    "rename or delete store paths in it"
                } else {
                    "replace what is in it"
                }
            ),
        ));
    }
    if mode & 0o020 != 0 && !(is_store && sticky) {
        return Some((
            Status::Warning,
            format!("has mode {mode:04o}: its group can replace what is in it"),
        ));
    }
    None
}

/// Who should own the store, or why that cannot be said.
fn expected_owner(ctx: &Context) -> Result<Owner, Box<Finding>> {
    if !ctx.multi_user {
        return Ok(Owner::User {
            uid: ctx.euid,
            name: ctx.user_name(ctx.euid),
        });
    }
    if ctx.nix_daemon_serves() {
        return Ok(Owner::Nix);
    }
    // The target's accounts; a scratch root without them is served by this host's daemon,
    // which uses the host's.
    let host_user = || {
        nix::unistd::User::from_name(STORE_USER)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    let host_group = || {
        nix::unistd::Group::from_name(WARD_GROUP)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    let uid = ctx
        .target
        .user(STORE_USER)
        .map(|a| a.uid)
        .or_else(|| (!ctx.target.is_live()).then(host_user).flatten());
    let gid = ctx
        .target
        .group(WARD_GROUP)
        .map(|g| g.gid)
        .or_else(|| (!ctx.target.is_live()).then(host_group).flatten());
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok(Owner::Ward { uid, gid }),
        _ => Err(Box::new(
            Finding::error(
                Check::Store,
                "accounts",
                format!(
                "ward's store owner '{STORE_USER}' or group '{WARD_GROUP}' does not exist: the \
                 daemon creates them on its first start as root"
            ),
            )
            .command("ward install"),
        )),
    }
}

/// Check 4.
pub fn check_store(ctx: &Context) -> Vec<Finding> {
    let c = Check::Store;
    let layout = &ctx.setup.layout;
    let mut out = Vec::new();
    if !layout.state_dir.exists() && !layout.real_store_dir.exists() {
        return vec![Finding::ok(
            c,
            format!(
                "no store at '{}' yet: the daemon creates it on its first start",
                layout.real_store_dir.display()
            ),
        )];
    }
    let owner = match expected_owner(ctx) {
        Ok(owner) => Some(owner),
        Err(finding) => {
            out.push(*finding);
            None
        }
    };
    // Owners.
    if let Some(owner) = &owner {
        let paths = match crate::launch::paths_the_store_owner_owns(layout) {
            Ok(paths) => paths,
            Err(e) => {
                out.push(Finding::warning(
                    c,
                    "listing",
                    format!("cannot list the store's directories: {e}"),
                ));
                Vec::new()
            }
        };
        let wrong: Vec<(PathBuf, u32, u32)> = paths
            .into_iter()
            .filter_map(|path| {
                let meta = std::fs::symlink_metadata(&path).ok()?;
                let ok = match owner {
                    Owner::Ward { uid, gid } => meta.uid() == *uid && meta.gid() == *gid,
                    // Nix's daemon runs as root and needs nothing of the owners.
                    Owner::Nix => true,
                    Owner::User { uid, .. } => meta.uid() == *uid,
                };
                (!ok).then(|| (path, meta.uid(), meta.gid()))
            })
            .collect();
        let fixable = matches!(owner, Owner::Ward { .. }) && ctx.euid == 0;
        let chown = |paths: Vec<PathBuf>| -> Option<Fix> {
            let Owner::Ward { uid, gid } = owner else {
                return None;
            };
            fixable.then(|| Fix::Chown {
                paths,
                uid: *uid,
                gid: *gid,
                owner: owner.describe(),
            })
        };
        let who = |uid: u32, gid: u32| {
            let user = ctx.user_name(uid);
            let group = ctx
                .target
                .groups()
                .into_iter()
                .find(|g| g.gid == gid)
                .map(|g| g.name)
                .unwrap_or_else(|| gid.to_string());
            format!("{user}:{group}")
        };
        let reason = match owner {
            Owner::User { .. } => "the daemon runs as that user and must write it",
            _ => "the store-writer runs as that user and must write it",
        };
        if wrong.len() <= MAX_OWNER_FINDINGS {
            for (path, uid, gid) in wrong {
                let mut f = Finding::error(
                    c,
                    format!("owner:{}", path.display()),
                    format!(
                        "'{}' is owned by {}, not {}: {reason}",
                        path.display(),
                        who(uid, gid),
                        owner.describe()
                    ),
                )
                .command(format!("chown -h {} {}", owner.describe(), quote(&path)));
                if let Some(fix) = chown(vec![path]) {
                    f = f.fixable(fix);
                }
                out.push(f);
            }
        } else {
            let count = wrong.len();
            let shown: Vec<String> = wrong
                .iter()
                .take(3)
                .map(|(p, u, g)| format!("'{}' ({})", p.display(), who(*u, *g)))
                .collect();
            let paths: Vec<PathBuf> = wrong.into_iter().map(|(p, _, _)| p).collect();
            let command = format!(
                "chown -h {} {}",
                owner.describe(),
                paths.iter().map(|p| quote(p)).collect::<Vec<_>>().join(" ")
            );
            let mut f = Finding::error(
                c,
                "owner:many",
                format!(
                    "{count} of the store's directories and DB files are not owned by {}, \
                     among them {}: {reason}",
                    owner.describe(),
                    shown.join(", ")
                ),
            )
            .command(command);
            if let Some(fix) = chown(paths) {
                f = f.fixable(fix);
            }
            out.push(f);
        }
    }
    // Modes of the directories.
    let db_dir = layout.state_dir.join("db");
    for (dir, is_store, fixed_mode) in [
        (
            &layout.real_store_dir,
            true,
            if owner == Some(Owner::Nix) {
                0o1775
            } else {
                0o755
            },
        ),
        (&layout.state_dir, false, 0o755),
        (&db_dir, false, 0o755),
    ] {
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            continue;
        };
        if let Some((status, why)) = dir_mode_problem(meta.mode(), is_store) {
            let mut f = Finding::error(
                c,
                format!("mode:{}", dir.display()),
                format!("'{}' {why}", dir.display()),
            )
            .command(format!("chmod {fixed_mode:04o} {}", quote(dir)))
            .fixable(Fix::Chmod {
                path: dir.clone(),
                mode: fixed_mode,
            });
            f.status = status;
            out.push(f);
        }
    }
    // Modes of the DB files.
    let owner_for_modes = owner.clone().unwrap_or(Owner::Nix);
    let db = layout.db_path();
    let suffixed = |suffix: &str| {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    for (path, kind) in [
        (db.clone(), DbFile::Data),
        (suffixed("-wal"), DbFile::Data),
        (suffixed("-shm"), DbFile::SharedMemory),
        (db_dir.join("big-lock"), DbFile::Data),
    ] {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            out.push(Finding::error(
                c,
                format!("type:{}", path.display()),
                format!("'{}' is not a regular file", path.display()),
            ));
            continue;
        }
        if let Some((status, why, fixed_mode)) =
            db_file_mode_problem(kind, meta.mode(), &owner_for_modes)
        {
            let mut f = Finding::error(
                c,
                format!("mode:{}", path.display()),
                format!("the database file '{}' {why}", path.display()),
            )
            .command(format!("chmod {fixed_mode:04o} {}", quote(&path)))
            .fixable(Fix::Chmod {
                path: path.clone(),
                mode: fixed_mode,
            });
            f.status = status;
            out.push(f);
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            c,
            format!(
                "'{}', '{}' and the database are {}'s, with safe modes",
                layout.real_store_dir.display(),
                layout.state_dir.display(),
                owner_for_modes.describe()
            ),
        ));
    }
    out
}

/// `file:PATH?immutable=1`: reads the DB without locks and without creating `-wal`/`-shm`.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.display().to_string().bytes() {
        match b {
            b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(char::from(b)),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// The result of `PRAGMA integrity_check`: `Ok` when the DB is sound, else the messages.
pub fn integrity_check(path: &Path) -> Result<Result<(), Vec<String>>, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    // With the daemon running, the -wal and -shm exist and an ordinary read-only connection
    // shares them. Without them, a read-only connection would have to create them (as root,
    // owned by root, which the store-writer could not open later): read the file as it is.
    let conn = if Path::new(&shm).exists() {
        rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?
    } else {
        rusqlite::Connection::open_with_flags(
            immutable_uri(path),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut messages = Vec::new();
    for row in rows {
        messages.push(row?);
    }
    if messages.len() == 1 && messages[0] == "ok" {
        Ok(Ok(()))
    } else {
        Ok(Err(messages))
    }
}

/// Check 5.
pub fn check_database(ctx: &Context) -> Vec<Finding> {
    let c = Check::Database;
    let db = ctx.setup.layout.db_path();
    if std::fs::symlink_metadata(&db).is_err() {
        return vec![Finding::ok(
            c,
            format!(
                "no database at '{}' yet: the daemon creates it on its first start",
                db.display()
            ),
        )];
    }
    let recover = format!(
        "restore '{0}' from a backup, or with the daemon stopped: sqlite3 {1} .recover | \
         sqlite3 {1}.recovered && mv {1}.recovered {1}",
        db.display(),
        quote(&db)
    );
    match integrity_check(&db) {
        Ok(Ok(())) => vec![Finding::ok(
            c,
            format!("'{}' passes PRAGMA integrity_check", db.display()),
        )],
        Ok(Err(messages)) => {
            let more = messages.len().saturating_sub(MAX_INTEGRITY_LINES);
            let mut shown: Vec<String> = messages.into_iter().take(MAX_INTEGRITY_LINES).collect();
            if more > 0 {
                shown.push(format!("and {more} more"));
            }
            vec![Finding::error(
                c,
                "corrupt",
                format!(
                    "the database '{}' fails PRAGMA integrity_check: {}",
                    db.display(),
                    shown.join("; ")
                ),
            )
            .command(recover)]
        }
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::CannotOpen
                || e.code == rusqlite::ErrorCode::PermissionDenied =>
        {
            vec![Finding::warning(
                c,
                "unreadable",
                format!(
                    "cannot open '{}' as {} ({}): its integrity was not checked",
                    db.display(),
                    ctx.user_name(ctx.euid),
                    msg.unwrap_or_else(|| e.to_string())
                ),
            )
            .command("sudo ward doctor --check database")]
        }
        Err(e) => vec![Finding::error(
            c,
            "corrupt",
            format!(
                "the database '{}' cannot be read as an SQLite database: {e}",
                db.display()
            ),
        )
        .command(recover)],
    }
}

/// Bytes as `12.3 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Space and inodes of the store's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_inodes: u64,
    pub total_inodes: u64,
}

/// What is short on the store's file system: (status, subject, message).
pub fn space_problems(space: &Space, min_free: u64) -> Vec<(Status, &'static str, String)> {
    let mut out = Vec::new();
    let free = human(space.free_bytes);
    if min_free > 0 && space.free_bytes < min_free {
        out.push((
            Status::Warning,
            "min-free",
            format!(
                "only {free} free, below min-free = {}: the daemon collects garbage every time \
                 it checks",
                human(min_free)
            ),
        ));
    } else if space.free_bytes < 100 * 1024 * 1024 {
        out.push((
            Status::Error,
            "space",
            format!("only {free} free: adds and builds will fail"),
        ));
    } else if space.free_bytes < 1024 * 1024 * 1024
        || (space.total_bytes > 0 && space.free_bytes.saturating_mul(50) < space.total_bytes)
    {
        out.push((
            Status::Warning,
            "space",
            format!(
                "only {free} free of {}{}",
                human(space.total_bytes),
                if min_free == 0 {
                    " and min-free is not set, so nothing collects garbage by itself"
                } else {
                    ""
                }
            ),
        ));
    }
    // Some file systems (btrfs) report no inode counts at all.
    if space.total_inodes > 0 {
        if space.free_inodes < 1000 {
            out.push((
                Status::Error,
                "inodes",
                format!(
                    "only {} inodes free: adding files will fail",
                    space.free_inodes
                ),
            ));
        } else if space.free_inodes.saturating_mul(20) < space.total_inodes {
            out.push((
                Status::Warning,
                "inodes",
                format!(
                    "only {} of {} inodes free",
                    space.free_inodes, space.total_inodes
                ),
            ));
        }
    }
    out
}

/// Check 8.
pub fn check_disk(ctx: &Context) -> Vec<Finding> {
    let c = Check::Disk;
    let store = &ctx.setup.layout.real_store_dir;
    let Some(existing) = store.ancestors().find(|p| p.exists()) else {
        return vec![Finding::warning(
            c,
            "statvfs",
            format!("no part of '{}' exists", store.display()),
        )];
    };
    let stat = match nix::sys::statvfs::statvfs(existing) {
        Ok(stat) => stat,
        Err(e) => {
            return vec![Finding::warning(
                c,
                "statvfs",
                format!("statvfs '{}': {e}", existing.display()),
            )]
        }
    };
    let frag = stat.fragment_size() as u64;
    let space = Space {
        free_bytes: (stat.blocks_available() as u64).saturating_mul(frag),
        total_bytes: (stat.blocks() as u64).saturating_mul(frag),
        free_inodes: stat.files_available() as u64,
        total_inodes: stat.files() as u64,
    };
    let min_free = ctx.setup.settings.min_free;
    let problems = space_problems(&space, min_free);
    if problems.is_empty() {
        return vec![Finding::ok(
            c,
            format!(
                "{} free of {} and {} inodes free on the file system of '{}'{}",
                human(space.free_bytes),
                human(space.total_bytes),
                space.free_inodes,
                existing.display(),
                if min_free > 0 {
                    format!(" (min-free = {})", human(min_free))
                } else {
                    String::new()
                }
            ),
        )];
    }
    problems
        .into_iter()
        .map(|(status, subject, message)| {
            let mut f = Finding::error(
                c,
                subject,
                format!(
                    "the store's file system ('{}'): {message}",
                    existing.display()
                ),
            )
            .command(if subject == "min-free" || min_free > 0 {
                "nix-store --gc".to_owned()
            } else {
                format!(
                    "nix-store --gc (and {} so the daemon collects by itself)",
                    ctx.conf_line("min-free = 1G")
                )
            });
            f.status = status;
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARD: Owner = Owner::Ward { uid: 900, gid: 901 };

    #[test]
    fn db_file_modes() {
        assert!(db_file_mode_problem(DbFile::Data, 0o100640, &WARD).is_none());
        assert!(db_file_mode_problem(DbFile::SharedMemory, 0o660, &WARD).is_none());
        assert!(db_file_mode_problem(DbFile::Data, 0o644, &Owner::Nix).is_none());
        let (status, why, mode) = db_file_mode_problem(DbFile::Data, 0o666, &WARD).unwrap();
        assert_eq!(status, Status::Error);
        assert!(why.contains("anyone"), "{why}");
        assert_eq!(mode, 0o640);
        let (status, _, mode) = db_file_mode_problem(DbFile::Data, 0o660, &WARD).unwrap();
        assert_eq!((status, mode), (Status::Warning, 0o640));
        let (_, _, mode) = db_file_mode_problem(DbFile::SharedMemory, 0o666, &WARD).unwrap();
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn directory_modes() {
        assert!(dir_mode_problem(0o40755, true).is_none());
        assert!(dir_mode_problem(0o1775, true).is_none(), "Nix's store mode");
        assert!(dir_mode_problem(0o1777, true).is_none());
        assert_eq!(dir_mode_problem(0o777, true).unwrap().0, Status::Error);
        assert_eq!(dir_mode_problem(0o775, true).unwrap().0, Status::Warning);
        assert_eq!(dir_mode_problem(0o1777, false).unwrap().0, Status::Error);
    }

    #[test]
    fn space_against_min_free() {
        let gib = 1024 * 1024 * 1024;
        let plenty = Space {
            free_bytes: 50 * gib,
            total_bytes: 100 * gib,
            free_inodes: 1_000_000,
            total_inodes: 2_000_000,
        };
        assert!(space_problems(&plenty, 0).is_empty());
        assert!(space_problems(&plenty, 10 * gib).is_empty());
        let found = space_problems(&plenty, 60 * gib);
        assert_eq!(found[0].1, "min-free");
        assert!(found[0].2.contains("60.0 GiB"), "{}", found[0].2);
        let nearly_full = Space {
            free_bytes: 50 * 1024 * 1024,
            ..plenty
        };
        assert_eq!(space_problems(&nearly_full, 0)[0].0, Status::Error);
        let no_inodes = Space {
            free_inodes: 10,
            ..plenty
        };
        assert_eq!(space_problems(&no_inodes, 0)[0].1, "inodes");
        let btrfs = Space {
            free_inodes: 0,
            total_inodes: 0,
            ..plenty
        };
        assert!(space_problems(&btrfs, 0).is_empty());
    }

    #[test]
    fn integrity_of_a_sound_and_a_broken_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v);",
            )
            .unwrap();
            for i in 0..2000 {
                conn.execute("INSERT INTO t (v) VALUES (?1)", [format!("value {i}")])
                    .unwrap();
            }
        }
        assert_eq!(integrity_check(&db).unwrap(), Ok(()));
        // Nothing was created next to it.
        assert!(!dir.path().join("db.sqlite-shm").exists());
        let mut bytes = std::fs::read(&db).unwrap();
        let len = bytes.len();
        for b in &mut bytes[4096..len.min(4096 * 4)] {
            *b = 0x5a;
        }
        std::fs::write(&db, &bytes).unwrap();
        match integrity_check(&db) {
            Ok(Err(messages)) => assert!(!messages.is_empty()),
            Err(_) => {}
            Ok(Ok(())) => panic!("a corrupted database passed"),
        }
        std::fs::write(&db, b"this is not a database at all, not even close to one").unwrap();
        assert!(!matches!(integrity_check(&db), Ok(Ok(()))));
    }

    #[test]
    fn uris_escape_what_sqlite_would_read_as_parameters() {
        assert_eq!(
            immutable_uri(Path::new("/a b/c?d#e%f")),
            "file:/a b/c%3Fd%23e%25f?immutable=1"
        );
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
