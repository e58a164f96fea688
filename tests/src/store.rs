//! What is in a store, read straight from disk: the rows of `db.sqlite` and the names in the
//! store directory. Failure tests take a snapshot before the bad request and check the store
//! is exactly the same afterwards.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::daemon::{DaemonKind, StoreLayout};
use crate::nar;
use crate::nixcmd::NixClient;
use crate::wire::PathInfo;

/// How long a daemon may take to clean up after a failed request.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One row of `ValidPaths`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidPathRow {
    /// Store path.
    pub path: String,
    /// NAR hash as stored (`sha256:<base16>`).
    pub hash: String,
    /// Registration time.
    pub registration_time: i64,
    /// Deriver, if recorded.
    pub deriver: Option<String>,
    /// NAR size, if recorded.
    pub nar_size: Option<i64>,
    /// Ultimate-trust flag.
    pub ultimate: Option<i64>,
    /// Space-separated signatures.
    pub sigs: Option<String>,
    /// Content address.
    pub ca: Option<String>,
}

/// The contents of a store at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Every row of `ValidPaths`, by path.
    pub valid_paths: Vec<ValidPathRow>,
    /// Every reference as (referrer, reference), sorted.
    pub refs: Vec<(String, String)>,
    /// Names directly inside the store directory (including dot-files), sorted.
    pub store_entries: Vec<String>,
}

impl StoreSnapshot {
    /// Reads the database and the store directory of `layout`. A store whose database or
    /// directory does not exist yet reads as empty.
    pub fn take(layout: &StoreLayout) -> StoreSnapshot {
        let (valid_paths, refs) = read_db(&layout.db_path());
        StoreSnapshot {
            valid_paths,
            refs,
            store_entries: list_dir(&layout.real_store_dir),
        }
    }

    /// The valid store paths.
    pub fn paths(&self) -> Vec<String> {
        self.valid_paths
            .iter()
            .map(|row| row.path.clone())
            .collect()
    }

    /// Panics unless the store (database and directory) is the same as `self`, waiting a
    /// little for the daemon to finish cleaning up.
    ///
    /// ward's design forbids leftovers in the store directory after a refused or aborted
    /// upload (contents land under a temporary name and are renamed into place only once
    /// verified). Real `nix-daemon` 2.8 leaves the invalid path and its `.lock` file behind,
    /// so when the tests run against it (`WARD_E2E_DAEMON=nix-daemon`) only the database is
    /// compared.
    pub fn assert_unchanged(&self, layout: &StoreLayout, what: &str) {
        let database_only = DaemonKind::from_env() == DaemonKind::NixDaemon;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = StoreSnapshot::take(layout);
            let same = if database_only {
                now.valid_paths == self.valid_paths && now.refs == self.refs
            } else {
                &now == self
            };
            if same {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the store changed after {what}:\n{}",
                    SnapshotDiff {
                        before: self,
                        after: &now
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A readable difference between two snapshots.
struct SnapshotDiff<'a> {
    before: &'a StoreSnapshot,
    after: &'a StoreSnapshot,
}

impl fmt::Display for SnapshotDiff<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn diff<T: Ord + fmt::Debug + Clone>(
            f: &mut fmt::Formatter<'_>,
            what: &str,
            before: &[T],
            after: &[T],
        ) -> fmt::Result {
            let b: BTreeSet<T> = before.iter().cloned().collect();
            let a: BTreeSet<T> = after.iter().cloned().collect();
            for gone in b.difference(&a) {
                writeln!(f, "  {what} removed: {gone:?}")?;
            }
            for new in a.difference(&b) {
                writeln!(f, "  {what} added:   {new:?}")?;
            }
            Ok(())
        }
        diff(
            f,
            "ValidPaths row",
            &self.before.valid_paths,
            &self.after.valid_paths,
        )?;
        diff(f, "Refs row", &self.before.refs, &self.after.refs)?;
        diff(
            f,
            "store entry",
            &self.before.store_entries,
            &self.after.store_entries,
        )
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

type DbContents = (Vec<ValidPathRow>, Vec<(String, String)>);

fn read_db(db: &Path) -> DbContents {
    if !db.exists() {
        return (Vec::new(), Vec::new());
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let query = |conn: &Connection| -> rusqlite::Result<DbContents> {
        let mut stmt = conn.prepare(
            "SELECT path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca \
             FROM ValidPaths ORDER BY path",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ValidPathRow {
                    path: r.get(0)?,
                    hash: r.get(1)?,
                    registration_time: r.get(2)?,
                    deriver: r.get(3)?,
                    nar_size: r.get(4)?,
                    ultimate: r.get(5)?,
                    sigs: r.get(6)?,
                    ca: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = conn.prepare(
            "SELECT a.path, b.path FROM Refs \
             JOIN ValidPaths a ON a.id = Refs.referrer \
             JOIN ValidPaths b ON b.id = Refs.reference \
             ORDER BY a.path, b.path",
        )?;
        let refs = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((rows, refs))
    };
    match query(&conn) {
        Ok(contents) => contents,
        // A database created but not yet given its schema reads as empty.
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
            (Vec::new(), Vec::new())
        }
        Err(e) => panic!("reading {}: {e}", db.display()),
    }
}

/// Checks every valid path of the store on disk that is not in `checked` yet: its files exist
/// and their NAR (serialised here, independently of ward) has the recorded hash and size. A
/// path this test uploaded (in `known`, with its NAR) is compared byte for byte with that NAR,
/// whose hash was computed once, instead of being hashed again (hashing 4 MiB takes a quarter
/// of a second in a debug build). A valid path never changes, so each is checked once;
/// `nix-store --verify-path` re-checks them all each round. Returns the valid paths.
pub fn assert_valid_paths_complete(
    layout: &StoreLayout,
    known: &[&PathInfo],
    known_nars: &[&[u8]],
    checked: &mut BTreeSet<(String, String)>,
    context: &str,
) -> Vec<String> {
    let snapshot = StoreSnapshot::take(layout);
    for row in &snapshot.valid_paths {
        if !checked.insert((row.path.clone(), row.hash.clone())) {
            continue;
        }
        let real = layout.real_path(&row.path);
        let nar = nar::dump_path(&real).unwrap_or_else(|e| {
            panic!(
                "{context}: '{}' is registered valid but its files cannot be read at {}: {e}",
                row.path,
                real.display()
            )
        });
        let uploaded = known.iter().position(|info| info.path == row.path);
        let actual = match uploaded {
            Some(i) if nar == known_nars[i] => format!("sha256:{}", known[i].nar_hash),
            Some(_) => panic!(
                "{context}: '{}' is registered valid but its files differ from what was \
                 uploaded ({} bytes of NAR on disk, {} uploaded)",
                row.path,
                nar.len(),
                known_nars[uploaded.unwrap_or_default()].len()
            ),
            None => format!("sha256:{}", nar::base16(&nar::sha256(&nar))),
        };
        assert_eq!(
            row.hash, actual,
            "{context}: '{}' is registered valid with a NAR hash its files do not have",
            row.path
        );
        assert_eq!(
            row.nar_size,
            Some(nar.len() as i64),
            "{context}: '{}' has the wrong NAR size",
            row.path
        );
    }
    snapshot.paths()
}

/// `nix-store --verify-path` (real Nix hashing what the daemon serves) of every path.
pub fn assert_verify_path(client: &NixClient, paths: &[String], context: &str) {
    if paths.is_empty() {
        return;
    }
    let mut args = vec!["--verify-path"];
    args.extend(paths.iter().map(String::as_str));
    let out = client.run("nix-store", &args);
    assert!(out.status.success(), "{context}: {out}");
}

/// The paths in the temporary-root files whose owner is alive, as Nix's collector reads them:
/// a file whose lock can be taken belongs to a dead process and does not count.
pub fn live_temp_roots(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    use std::os::fd::AsRawFd;
    let mut live = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)
        .expect("reading temproots/")
        .flatten()
    {
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        #[allow(deprecated)]
        let free =
            nix::fcntl::flock(file.as_raw_fd(), nix::fcntl::FlockArg::LockSharedNonblock).is_ok();
        if free {
            continue;
        }
        let text = std::fs::read(entry.path()).unwrap_or_default();
        for root in text.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            live.insert(String::from_utf8_lossy(root).into_owned());
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_store_reads_as_empty() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = StoreLayout {
            logical_store_dir: "/nix/store".into(),
            real_store_dir: tmp.path().join("nix/store"),
            state_dir: tmp.path().join("nix/var/nix"),
            log_dir: tmp.path().join("nix/var/log/nix"),
            socket: tmp.path().join("socket"),
            chroot: Some(tmp.path().to_path_buf()),
        };
        let snap = StoreSnapshot::take(&layout);
        assert!(
            snap.valid_paths.is_empty() && snap.refs.is_empty() && snap.store_entries.is_empty()
        );
    }

    #[test]
    fn reads_rows_written_in_nix_schema() {
        let tmp = tempfile::tempdir().expect("tmp");
        let db_dir = tmp.path().join("nix/var/nix/db");
        fs::create_dir_all(&db_dir).expect("mkdir");
        fs::create_dir_all(tmp.path().join("nix/store/aaa-x")).expect("mkdir");
        let conn = Connection::open(db_dir.join("db.sqlite")).expect("open");
        conn.execute_batch(
            "CREATE TABLE ValidPaths (id integer primary key autoincrement not null, \
               path text unique not null, hash text not null, registrationTime integer not null, \
               deriver text, narSize integer, ultimate integer, sigs text, ca text);
             CREATE TABLE Refs (referrer integer not null, reference integer not null, \
               primary key (referrer, reference));
             INSERT INTO ValidPaths (path, hash, registrationTime, narSize) \
               VALUES ('/nix/store/aaa-x', 'sha256:00', 1, 120), ('/nix/store/bbb-y', 'sha256:11', 1, 8);
             INSERT INTO Refs VALUES (1, 2), (1, 1);",
        )
        .expect("schema");
        drop(conn);
        let layout = StoreLayout {
            logical_store_dir: "/nix/store".into(),
            real_store_dir: tmp.path().join("nix/store"),
            state_dir: tmp.path().join("nix/var/nix"),
            log_dir: tmp.path().join("nix/var/log/nix"),
            socket: tmp.path().join("socket"),
            chroot: Some(tmp.path().to_path_buf()),
        };
        let snap = StoreSnapshot::take(&layout);
        assert_eq!(snap.paths(), vec!["/nix/store/aaa-x", "/nix/store/bbb-y"]);
        assert_eq!(
            snap.refs,
            vec![
                (
                    "/nix/store/aaa-x".to_string(),
                    "/nix/store/aaa-x".to_string()
                ),
                (
                    "/nix/store/aaa-x".to_string(),
                    "/nix/store/bbb-y".to_string()
                )
            ]
        );
        assert_eq!(snap.store_entries, vec!["aaa-x"]);
        assert_eq!(snap.valid_paths[0].nar_size, Some(120));
    }
}
