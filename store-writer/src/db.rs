//! The store database (`<state>/db/db.sqlite`), opened and written exactly as Nix 2.8 does so
//! that `nix-store`, `nix-daemon` and ward can take turns on the same store.
//!
//! * [`StoreDb::open`] is the store-writer's read-write open: it takes the big lock shared,
//!   creates the database and the `schema` file for a new store, upgrades old schemas as Nix
//!   does (taking the big lock exclusively), refuses newer ones, and sets Nix's pragmas.
//! * [`StoreDb::open_read_only`] is the frontend's open (`SQLITE_OPEN_READ_ONLY`). It writes
//!   nothing and never changes the journal mode. Because the database is in WAL mode, a
//!   reader needs read access to `db.sqlite`, `db.sqlite-wal` and `db.sqlite-shm`, and the
//!   `-wal` and `-shm` files must already exist: SQLite (3.22 and later) can then read through
//!   a read-only `-shm`, but it cannot create the files without write access to `db/`. They
//!   exist while the store-writer holds the database open, so the store-writer opens the
//!   database before it starts the frontend and keeps it open (without a writer, SQLite
//!   removes them and the reader fails with "attempt to write a readonly database"). The
//!   frontend also needs read access to `db/schema` and to `db/big-lock`, which it holds
//!   shared. Nix creates `big-lock` with mode 0600: give it the frontend's group and mode
//!   0640 (anyone who can open it can hold it and stall schema upgrades, so not 0644).
//!   `tests/read_only.rs` checks all of this with a reader running as `nobody`.
//!
//! Rows are written as Nix writes them: `hash` is `sha256:<base16>`, `registrationTime` is
//! "now" when the info says 0, and `narSize`, `ultimate`, `sigs`, `deriver` and `ca` are NULL
//! when 0, false, empty or absent. `Refs` gets one row per reference, self-references
//! included; a `.drv` gets one `DerivationOutputs` row per output whose path is known.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use thiserror::Error;
use ward_proto::content_address::ContentAddress;
use ward_proto::db as schema;
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::store_path::{StoreDir, StorePath, HASH_PART_LEN};

use crate::layout::StoreLayout;
use crate::lock::{lock_file, open_lock_file, LockError};
use ward_proto::path_info::{DrvOutput, Realisation, ValidPathInfo};

/// Output name → output path of a derivation, for its `DerivationOutputs` rows.
pub type DerivationOutputs = BTreeMap<String, StorePath>;

/// Database settings from `nix.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettings {
    /// `fsync-metadata` (default true): `synchronous = normal`, else `off`.
    pub fsync_metadata: bool,
    /// `use-sqlite-wal` (default true): WAL journal, else `truncate` with the `unix-dotfile`
    /// VFS (for NFS and WSL1).
    pub use_sqlite_wal: bool,
    /// The `ca-derivations` experimental feature: creates or upgrades the realisation tables.
    pub ca_derivations: bool,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            fsync_metadata: true,
            use_sqlite_wal: true,
            ca_derivations: false,
        }
    }
}

/// A database operation failed.
#[derive(Debug, Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("{action}: {source} (in '{db}')")]
    Sqlite {
        /// What was being done.
        action: String,
        /// The database file.
        db: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file next to the database could not be read or written.
    #[error("{action} '{path}': {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The big lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The `schema` file holds something other than a version number.
    #[error("'{path}' is corrupt: {source}")]
    CorruptSchemaFile {
        /// The schema file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: schema::SchemaVersionError,
    },
    /// The store was written by a newer Nix.
    #[error("current Nix store schema is version {found}, but I only support {supported}")]
    SchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest version ward supports.
        supported: u32,
    },
    /// The ca-schema was written by a newer Nix.
    #[error("current Nix store ca-schema is version {found}, but I only support {supported}")]
    CaSchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest version ward supports.
        supported: u32,
    },
    /// The store is too old to upgrade in place.
    #[error(
        "the Nix store database in '{db_dir}' has schema version {found} ({format}), which is no \
         longer supported; upgrade it with Nix {upgrade_with} first"
    )]
    SchemaTooOld {
        /// The database directory.
        db_dir: PathBuf,
        /// Version found.
        found: u32,
        /// The old storage format.
        format: &'static str,
        /// Which Nix release can still convert it.
        upgrade_with: &'static str,
    },
    /// A read-only open found a schema the store-writer still has to upgrade.
    #[error(
        "the Nix store database has schema version {found}; the store-writer must upgrade it \
         to {supported} before it can be read"
    )]
    NeedsUpgrade {
        /// Version found.
        found: u32,
        /// Version required.
        supported: u32,
    },
    /// A write was attempted on a read-only handle.
    #[error("the store database was opened read-only")]
    ReadOnly,
    /// A row holds a value ward cannot parse.
    #[error("invalid-path entry for '{path}': {reason}")]
    BadRow {
        /// The path (or value) of the row.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path is not valid.
    #[error("path '{0}' is not valid")]
    NotValid(String),
    /// The references of paths registered together form a cycle.
    #[error("cycle detected in the references of '{path}' from '{parent}'")]
    Cycle {
        /// The path reached twice.
        path: String,
        /// The path referring to it.
        parent: String,
    },
    /// A path's content address does not produce the path.
    #[error(
        "cannot add path '{0}' to the Nix store because it claims to be content-addressed but \
         isn't"
    )]
    NotContentAddressed(String),
    /// The NAR hash of path info registered in the DB must be SHA-256.
    #[error("nar hash of path '{path}' must be sha256, not {algo}")]
    NarHashNotSha256 {
        /// The path.
        path: String,
        /// The algorithm given.
        algo: HashAlgo,
    },
    /// A number that does not fit a SQLite integer.
    #[error("{what} of path '{path}' is too large: {value}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The path.
        path: String,
        /// The value.
        value: u64,
    },
    /// The hash part given to a lookup has the wrong length.
    #[error("invalid hash part '{0}'")]
    BadHashPart(String),
    /// A `.drv` being registered could not be read or parsed.
    #[error("reading derivation '{path}': {reason}")]
    Derivation {
        /// The derivation.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Realisations need the `ca-derivations` tables.
    #[error(
        "experimental Nix feature 'ca-derivations' is disabled; use \
         '--extra-experimental-features ca-derivations' to override"
    )]
    CaDerivationsDisabled,
    /// A different realisation of the same output is already registered.
    #[error(
        "trying to register a realisation of '{id}', but we already have another one locally \
         (local: '{local}', remote: '{remote}')"
    )]
    RealisationConflict {
        /// The output.
        id: String,
        /// What the store has.
        local: String,
        /// What was offered.
        remote: String,
    },
    /// A realisation depends on one the store does not have or has differently.
    #[error("unable to register the derivation '{id}' as it depends on {problem} '{dependency}'")]
    RealisationDependency {
        /// The realisation being registered.
        id: String,
        /// The dependency.
        dependency: String,
        /// "the non existent" or "a different realisation of".
        problem: &'static str,
    },
}

/// Renders a DrvOutput as Nix does (`sha256:<base16>!out`).
fn drv_output_string(id: &DrvOutput) -> String {
    id.to_string()
}

/// One valid path as the garbage collector sees it.
#[derive(Debug, Clone)]
pub struct GcPathRow {
    /// The path.
    pub path: StorePath,
    /// Its recorded deriver, if any (valid or not).
    pub deriver: Option<StorePath>,
    /// Its NAR size.
    pub nar_size: u64,
}

/// A consistent read of the valid paths and the edges between them; see
/// [`StoreDb::gc_snapshot`].
#[derive(Debug, Clone, Default)]
pub struct GcSnapshot {
    /// Every valid path.
    pub paths: Vec<GcPathRow>,
    /// (referrer, reference), as indices into `paths`; self-references included.
    pub references: Vec<(usize, usize)>,
    /// (derivation, output path) for each recorded output of a valid derivation; the output
    /// need not be valid.
    pub derivation_outputs: Vec<(usize, StorePath)>,
}

/// The store database; see the [module documentation](self).
#[derive(Debug)]
pub struct StoreDb {
    conn: Connection,
    db_file: PathBuf,
    store_dir: StoreDir,
    /// Held shared while the database is open, so no schema upgrade runs under us.
    _big_lock: File,
    read_only: bool,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads a `schema`/`ca-schema` file; a missing file means version 0.
fn read_schema_file(path: &Path) -> Result<u32, DbError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
            schema::parse_schema_version(&text).map_err(|source| DbError::CorruptSchemaFile {
                path: path.to_owned(),
                source,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(DbError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a schema version file: the decimal number, no newline, mode 0644. It is written to a
/// temporary name and renamed, so a crash leaves the old or the new version, never a torn one.
fn write_schema_file(path: &Path, version: u32) -> Result<(), DbError> {
    let io = |action| {
        move |source| DbError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let tmp = path.with_extension("tmp-ward");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(io("writing"))?;
    file.write_all(version.to_string().as_bytes())
        .map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into"))
}

impl StoreDb {
    /// Opens (creating, upgrading) the database of the store in `layout` read-write. The
    /// directory tree must exist ([`StoreLayout::create`]).
    pub fn open(layout: &StoreLayout, settings: &DbSettings) -> Result<StoreDb, DbError> {
        let db_file = layout.db_file();
        let big_lock = open_lock_file(&layout.big_lock_file(), true)?;
        take_big_lock(&big_lock, &layout.big_lock_file(), false)?;

        let schema_path = layout.schema_file();
        let mut found = read_schema_file(&schema_path)?;
        if found > schema::SCHEMA_VERSION {
            return Err(DbError::SchemaTooNew {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        let conn = if found == 0 {
            let conn = open_connection(&db_file, true, settings)?;
            conn.execute_batch(schema::SCHEMA_SQL)
                .map_err(sqlite_err("creating the store schema", &db_file))?;
            write_schema_file(&schema_path, schema::SCHEMA_VERSION)?;
            conn
        } else if found < schema::SCHEMA_VERSION {
            refuse_ancient(layout, found)?;
            take_big_lock(&big_lock, &layout.big_lock_file(), true)?;
            // Another process may have upgraded while we waited.
            found = read_schema_file(&schema_path)?;
            if found < 7 {
                crate::fsutil::clear_immutable_bits(layout.real_store_dir()).map_err(|e| {
                    DbError::Io {
                        action: "removing immutable bits from",
                        path: layout.real_store_dir().to_owned(),
                        source: std::io::Error::other(e.to_string()),
                    }
                })?;
            }
            let conn = open_connection(&db_file, false, settings)?;
            upgrade_schema(&conn, found, &db_file)?;
            write_schema_file(&schema_path, schema::SCHEMA_VERSION)?;
            take_big_lock(&big_lock, &layout.big_lock_file(), false)?;
            conn
        } else {
            open_connection(&db_file, false, settings)?
        };
        if settings.ca_derivations {
            migrate_ca_schema(&conn, &layout.ca_schema_file(), &big_lock, layout, &db_file)?;
        }
        // ward's own table (Nix ignores tables it does not know): see `register_unsynced`.
        conn.execute_batch(UNSYNCED_TABLE_SQL)
            .map_err(sqlite_err("creating the WardUnsynced table", &db_file))?;
        Ok(StoreDb {
            conn,
            db_file,
            store_dir: layout.store_dir().clone(),
            _big_lock: big_lock,
            read_only: false,
        })
    }

    /// Opens an existing store database read-only (the frontend's view). See the module
    /// documentation for the files this needs.
    pub fn open_read_only(layout: &StoreLayout) -> Result<StoreDb, DbError> {
        let db_file = layout.db_file();
        let lock_path = layout.big_lock_file();
        let big_lock = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(|source| LockError::Io {
                action: "opening",
                path: lock_path.clone(),
                source,
            })?;
        take_big_lock(&big_lock, &lock_path, false)?;
        let found = read_schema_file(&layout.schema_file())?;
        if found > schema::SCHEMA_VERSION {
            return Err(DbError::SchemaTooNew {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found < schema::SCHEMA_VERSION {
            return Err(DbError::NeedsUpgrade {
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        let conn = Connection::open_with_flags(
            &db_file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err("cannot open SQLite database", &db_file))?;
        conn.busy_timeout(schema::BUSY_TIMEOUT)
            .map_err(sqlite_err("setting timeout", &db_file))?;
        Ok(StoreDb {
            conn,
            db_file,
            store_dir: layout.store_dir().clone(),
            _big_lock: big_lock,
            read_only: true,
        })
    }

    /// SQLite's `data_version` of this connection: it changes whenever another connection
    /// (any process) has committed to the database since this connection last asked. Cheap:
    /// it reads the WAL index, not the database.
    pub fn data_version(&self) -> Result<i64, DbError> {
        self.conn
            .pragma_query_value(None, "data_version", |row| row.get(0))
            .map_err(sqlite_err("reading data_version of", &self.db_file))
    }

    /// The logical store directory rows are printed with.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn print(&self, path: &StorePath) -> String {
        self.store_dir.print(path)
    }

    fn parse(&self, row_path: &str) -> Result<StorePath, DbError> {
        self.store_dir
            .parse_path(row_path)
            .map_err(|e| DbError::BadRow {
                path: row_path.to_owned(),
                reason: e.to_string(),
            })
    }

    fn err(&self, action: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
        let action = action.into();
        move |source| DbError::Sqlite {
            action,
            db: self.db_file.clone(),
            source,
        }
    }

    fn path_id(&self, path: &StorePath) -> Result<Option<i64>, DbError> {
        let printed = self.print(path);
        self.conn
            .prepare_cached("select id from ValidPaths where path = ?1")
            .and_then(|mut s| s.query_row([&printed], |r| r.get(0)).optional())
            .map_err(|e| self.err(format!("querying path '{printed}'"))(e))
    }

    /// Whether `path` has a row in `ValidPaths`.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        Ok(self.path_id(path)?.is_some())
    }

    /// The info of a valid path, or `None` if it is not valid.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, DbError> {
        let printed = self.print(path);
        type Row = (
            String,
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
        );
        // One statement, so one read transaction (one WAL read lock) per lookup and a consistent
        // view of the row and its references. The references come back NUL-separated: no path
        // contains NUL, whatever the store directory is.
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "select hash, registrationTime, deriver, narSize, ultimate, sigs, ca, \
                 (select cast(group_concat(r.path, char(0)) as blob) \
                  from Refs join ValidPaths r on reference = r.id where referrer = v.id) \
                 from ValidPaths v where v.path = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&printed], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(format!("querying path info of '{printed}'"))(e))?;
        let Some((hash, registration_time, deriver, nar_size, ultimate, sigs, ca, refs)) = row
        else {
            return Ok(None);
        };
        let bad = |reason: String| DbError::BadRow {
            path: printed.clone(),
            reason,
        };
        let nar_hash = Hash::parse_any_prefixed(&hash).map_err(|e| bad(e.to_string()))?;
        let deriver = deriver.map(|d| self.parse(&d)).transpose()?;
        let nar_size = u64::try_from(nar_size.unwrap_or(0))
            .map_err(|_| bad(format!("negative narSize {}", nar_size.unwrap_or(0))))?;
        let sigs = sigs
            .map(|s| {
                s.split(' ')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let ca = match ca {
            Some(ca) => ContentAddress::parse_opt(&ca).map_err(|e| bad(e.to_string()))?,
            None => None,
        };
        let references = self.parse_reference_list(refs.as_deref().unwrap_or_default())?;
        Ok(Some(ValidPathInfo {
            path: path.clone(),
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate: ultimate == Some(1),
            sigs,
            ca,
        }))
    }

    /// Parses the NUL-separated reference paths that `query_path_info` selects.
    fn parse_reference_list(&self, list: &[u8]) -> Result<BTreeSet<StorePath>, DbError> {
        if list.is_empty() {
            return Ok(BTreeSet::new());
        }
        list.split(|&b| b == 0)
            .map(|p| match std::str::from_utf8(p) {
                Ok(p) => self.parse(p),
                Err(e) => Err(DbError::BadRow {
                    path: String::from_utf8_lossy(p).into_owned(),
                    reason: format!("reference is not UTF-8: {e}"),
                }),
            })
            .collect()
    }

    /// The subset of `paths` that is valid.
    pub fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, DbError> {
        let mut valid = BTreeSet::new();
        for path in paths {
            if self.is_valid(path)? {
                valid.insert(path.clone());
            }
        }
        Ok(valid)
    }

    /// Every valid path.
    pub fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, DbError> {
        let rows: Vec<String> = self
            .conn
            .prepare_cached("select path from ValidPaths")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(self.err("querying valid paths"))?;
        rows.iter().map(|p| self.parse(p)).collect()
    }

    /// Makes `paths` invalid in one transaction (their references and derivation outputs go
    /// with them, through the schema's cascades; a path still referred to by a valid path
    /// outside `paths` makes the whole transaction fail).
    pub fn invalidate_paths(&mut self, paths: &[StorePath]) -> Result<(), DbError> {
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        let db = self.db_file.clone();
        let printed: Vec<String> = paths.iter().map(|p| self.print(p)).collect();
        let sql_err = |action: String| {
            let db = db.clone();
            move |source| DbError::Sqlite { action, db, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a transaction to invalidate paths".into()))?;
        for path in &printed {
            tx.execute("delete from ValidPaths where path = ?1", [path])
                .map_err(sql_err(format!("invalidating '{path}'")))?;
        }
        tx.commit()
            .map_err(sql_err("committing the invalidation of paths".into()))?;
        Ok(())
    }

    /// Everything the garbage collector needs to know about the valid paths, read in one
    /// transaction so it is consistent: each path with its NAR size and deriver, the
    /// references and the recorded derivation outputs (as indices into `paths`, or, for
    /// outputs, the output's path).
    pub fn gc_snapshot(&self) -> Result<GcSnapshot, DbError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(self.err("starting a read of the whole database"))?;
        let mut ids = std::collections::HashMap::new();
        let mut snapshot = GcSnapshot::default();
        {
            let rows: Vec<(i64, String, Option<String>, Option<i64>)> = tx
                .prepare("select id, path, deriver, narSize from ValidPaths")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect()
                })
                .map_err(self.err("reading the valid paths"))?;
            for (id, path, deriver, nar_size) in rows {
                ids.insert(id, snapshot.paths.len());
                snapshot.paths.push(GcPathRow {
                    path: self.parse(&path)?,
                    deriver: deriver
                        .filter(|d| !d.is_empty())
                        .and_then(|d| self.store_dir.parse_path(&d).ok()),
                    nar_size: nar_size.unwrap_or(0).max(0) as u64,
                });
            }
        }
        let refs: Vec<(i64, i64)> = tx
            .prepare("select referrer, reference from Refs")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(self.err("reading the references"))?;
        for (referrer, reference) in refs {
            if let (Some(&from), Some(&to)) = (ids.get(&referrer), ids.get(&reference)) {
                snapshot.references.push((from, to));
            }
        }
        let outputs: Vec<(i64, String)> = tx
            .prepare("select drv, path from DerivationOutputs")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(self.err("reading the derivation outputs"))?;
        for (drv, path) in outputs {
            if let (Some(&drv), Ok(path)) = (ids.get(&drv), self.store_dir.parse_path(&path)) {
                snapshot.derivation_outputs.push((drv, path));
            }
        }
        tx.finish()
            .map_err(self.err("ending a read of the whole database"))?;
        Ok(snapshot)
    }

    /// Invalidates `paths` for the garbage collector, in one transaction: first their own
    /// references are dropped (so the order among them does not matter), then their rows. A
    /// path outside `paths` that still refers to one of them makes the whole transaction fail
    /// and nothing changes.
    pub fn invalidate_garbage(&mut self, paths: &[StorePath]) -> Result<(), DbError> {
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        let db = self.db_file.clone();
        let printed: Vec<String> = paths.iter().map(|p| self.print(p)).collect();
        let sql_err = |action: String| {
            let db = db.clone();
            move |source| DbError::Sqlite { action, db, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a transaction to delete garbage".into()))?;
        // Each statement is prepared once for the whole batch (a collection may invalidate
        // hundreds of thousands of paths; parsing the SQL per path was a fifth of its time).
        {
            let mut drop_refs = tx
                .prepare_cached(
                    "delete from Refs where referrer = (select id from ValidPaths where path = ?1)",
                )
                .map_err(sql_err("preparing the deletion of references".into()))?;
            for path in &printed {
                drop_refs
                    .execute([path])
                    .map_err(sql_err(format!("dropping the references of '{path}'")))?;
            }
            let mut invalidate = tx
                .prepare_cached("delete from ValidPaths where path = ?1")
                .map_err(sql_err("preparing the invalidation of paths".into()))?;
            for path in &printed {
                invalidate
                    .execute([path])
                    .map_err(sql_err(format!("invalidating '{path}'")))?;
            }
        }
        tx.commit()
            .map_err(sql_err("committing the deletion of garbage".into()))?;
        Ok(())
    }

    /// Valid paths that refer to `path` (including `path` itself if it refers to itself).
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let printed = self.print(path);
        let rows: Vec<String> = self
            .conn
            .prepare_cached(
                "select path from Refs join ValidPaths on referrer = id \
                 where reference = (select id from ValidPaths where path = ?1)",
            )
            .and_then(|mut s| s.query_map([&printed], |r| r.get(0))?.collect())
            .map_err(self.err(format!("querying referrers of '{printed}'")))?;
        rows.iter().map(|p| self.parse(p)).collect()
    }

    /// The valid path whose hash part is `hash_part`, as Nix finds it: the first path not
    /// sorting before `<store dir>/<hash part>`, if it starts with that.
    pub fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, DbError> {
        if hash_part.len() != HASH_PART_LEN {
            return Err(DbError::BadHashPart(hash_part.chars().take(64).collect()));
        }
        let prefix = format!("{}/{}", self.store_dir, hash_part);
        let found: Option<String> = self
            .conn
            .prepare_cached("select path from ValidPaths where path >= ?1 limit 1")
            .and_then(|mut s| s.query_row([&prefix], |r| r.get(0)).optional())
            .map_err(self.err(format!("querying path with hash part '{hash_part}'")))?;
        match found {
            Some(p) if p.starts_with(&prefix) => Ok(Some(self.parse(&p)?)),
            _ => Ok(None),
        }
    }

    /// Valid derivations that have `path` as an output.
    pub fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let printed = self.print(path);
        let rows: Vec<String> = self
            .conn
            .prepare_cached(
                "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id \
                 where d.path = ?1",
            )
            .and_then(|mut s| s.query_map([&printed], |r| r.get(0))?.collect())
            .map_err(self.err(format!("querying derivers of '{printed}'")))?;
        rows.iter().map(|p| self.parse(p)).collect()
    }

    /// The `DerivationOutputs` rows of a valid derivation: output name → path.
    pub fn query_derivation_outputs(&self, drv: &StorePath) -> Result<DerivationOutputs, DbError> {
        let printed = self.print(drv);
        let id = self
            .path_id(drv)?
            .ok_or_else(|| DbError::NotValid(printed.clone()))?;
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached("select id, path from DerivationOutputs where drv = ?1")
            .and_then(|mut s| s.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(self.err(format!("querying outputs of '{printed}'")))?;
        rows.into_iter()
            .map(|(name, path)| Ok((name, self.parse(&path)?)))
            .collect()
    }

    /// Registers `infos` in one transaction, as Nix's `registerValidPaths`: paths already valid
    /// get their row updated, new ones inserted; then every reference is recorded (each must
    /// be valid or in `infos`), and a reference cycle among `infos` rolls everything back.
    /// `derivation_outputs` is called for each new `.drv` path and returns its known outputs.
    pub fn register_valid_paths<F>(
        &mut self,
        infos: &[ValidPathInfo],
        derivation_outputs: F,
    ) -> Result<(), DbError>
    where
        F: FnMut(&StorePath) -> Result<DerivationOutputs, DbError>,
    {
        self.register(infos, derivation_outputs, false).map(drop)
    }

    /// Like [`StoreDb::register_valid_paths`], for paths whose contents are not yet known to
    /// be on disk (sync-behind): each newly inserted row also gets a `WardUnsynced` row in the
    /// same transaction, so that if the machine goes down before the next filesystem sync,
    /// the next start knows exactly which paths to re-check. Returns the ids marked (rows that
    /// existed and were only updated are not marked).
    pub fn register_unsynced<F>(
        &mut self,
        infos: &[ValidPathInfo],
        derivation_outputs: F,
    ) -> Result<Vec<i64>, DbError>
    where
        F: FnMut(&StorePath) -> Result<DerivationOutputs, DbError>,
    {
        self.register(infos, derivation_outputs, true)
    }

    fn register<F>(
        &mut self,
        infos: &[ValidPathInfo],
        mut derivation_outputs: F,
        mark_unsynced: bool,
    ) -> Result<Vec<i64>, DbError>
    where
        F: FnMut(&StorePath) -> Result<DerivationOutputs, DbError>,
    {
        let mut marked = Vec::new();
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        for info in infos {
            self.check_info(info)?;
        }
        check_no_cycles(infos, &self.store_dir)?;
        let db_file = self.db_file.clone();
        let store_dir = self.store_dir.clone();
        let sql_err = |action: String| {
            let db = db_file.clone();
            move |source| DbError::Sqlite { action, db, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a transaction".into()))?;
        for info in infos {
            let printed = store_dir.print(&info.path);
            let nar_size = nullable_size(info)?;
            let sigs = (!info.sigs.is_empty())
                .then(|| info.sigs.iter().cloned().collect::<Vec<_>>().join(" "));
            let ca = info.ca.as_ref().map(ToString::to_string);
            let ultimate = info.ultimate.then_some(1i64);
            let hash = info.nar_hash.to_prefixed_base16();
            let existing: Option<i64> = tx
                .prepare_cached("select id from ValidPaths where path = ?1")
                .and_then(|mut s| s.query_row([&printed], |r| r.get(0)).optional())
                .map_err(sql_err(format!("querying path '{printed}'")))?;
            if existing.is_some() {
                tx.prepare_cached(
                    "update ValidPaths set narSize = ?1, hash = ?2, ultimate = ?3, sigs = ?4, \
                     ca = ?5 where path = ?6",
                )
                .and_then(|mut s| s.execute(params![nar_size, hash, ultimate, sigs, ca, printed]))
                .map_err(sql_err(format!("updating path info of '{printed}'")))?;
                continue;
            }
            let time = if info.registration_time == 0 {
                now()
            } else {
                info.registration_time
            };
            let deriver = info.deriver.as_ref().map(|d| store_dir.print(d));
            tx.prepare_cached(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, \
                 ultimate, sigs, ca) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    printed, hash, time, deriver, nar_size, ultimate, sigs, ca
                ])
            })
            .map_err(sql_err(format!("registering path '{printed}'")))?;
            let id = tx.last_insert_rowid();
            if mark_unsynced {
                tx.prepare_cached("insert or ignore into WardUnsynced (id) values (?1)")
                    .and_then(|mut s| s.execute([id]))
                    .map_err(sql_err(format!("marking '{printed}' as not yet synced")))?;
                marked.push(id);
            }
            if info.path.is_derivation() {
                for (name, output) in derivation_outputs(&info.path)? {
                    let out = store_dir.print(&output);
                    tx.prepare_cached(
                        "insert or replace into DerivationOutputs (drv, id, path) \
                         values (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![id, name, out]))
                    .map_err(sql_err(format!("registering outputs of '{printed}'")))?;
                }
            }
        }
        for info in infos {
            let printed = store_dir.print(&info.path);
            let id_of = |path: &StorePath| -> Result<i64, DbError> {
                let p = store_dir.print(path);
                tx.prepare_cached("select id from ValidPaths where path = ?1")
                    .and_then(|mut s| s.query_row([&p], |r| r.get(0)).optional())
                    .map_err(sql_err(format!("querying path '{p}'")))?
                    .ok_or(DbError::NotValid(p))
            };
            let referrer = id_of(&info.path)?;
            for reference in &info.references {
                let reference = id_of(reference)?;
                tx.prepare_cached(
                    "insert or replace into Refs (referrer, reference) values (?1, ?2)",
                )
                .and_then(|mut s| s.execute(params![referrer, reference]))
                .map_err(sql_err(format!("registering references of '{printed}'")))?;
            }
        }
        tx.commit()
            .map_err(sql_err("committing the registration".into()))?;
        Ok(marked)
    }

    /// The valid paths registered by [`StoreDb::register_unsynced`] whose marks no sync has
    /// cleared yet, with their info (markers of paths deleted since are skipped).
    pub fn unsynced_paths(&self) -> Result<Vec<ValidPathInfo>, DbError> {
        let rows: Vec<String> = self
            .conn
            .prepare_cached(
                "select v.path from WardUnsynced u join ValidPaths v on v.id = u.id order by u.id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(self.err("reading WardUnsynced"))?;
        let mut infos = Vec::with_capacity(rows.len());
        for row in rows {
            let path = self.parse(&row)?;
            if let Some(info) = self.query_path_info(&path)? {
                infos.push(info);
            }
        }
        Ok(infos)
    }

    /// Clears the marks of `ids` (after a sync that covered them), or every mark (`None`).
    pub fn clear_unsynced(&mut self, ids: Option<&[i64]>) -> Result<(), DbError> {
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        let db = self.db_file.clone();
        let sql_err = move |source| DbError::Sqlite {
            action: "clearing WardUnsynced".into(),
            db: db.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err.clone())?;
        match ids {
            None => {
                tx.execute("delete from WardUnsynced", [])
                    .map_err(sql_err.clone())?;
            }
            Some(ids) => {
                let mut delete = tx
                    .prepare_cached("delete from WardUnsynced where id = ?1")
                    .map_err(sql_err.clone())?;
                for id in ids {
                    delete.execute([id]).map_err(sql_err.clone())?;
                }
            }
        }
        tx.commit().map_err(sql_err)
    }

    /// Checks one info before it is written: SHA-256 NAR hash, a size SQLite can hold, and a
    /// content address that really produces the path (as Nix's `addValidPath`).
    fn check_info(&self, info: &ValidPathInfo) -> Result<(), DbError> {
        let printed = self.print(&info.path);
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(DbError::NarHashNotSha256 {
                path: printed,
                algo: info.nar_hash.algo(),
            });
        }
        nullable_size(info)?;
        if info.ca.is_some() && !info.is_content_addressed(&self.store_dir) {
            return Err(DbError::NotContentAddressed(printed));
        }
        Ok(())
    }

    /// Adds signatures to a valid path's `sigs` (a set: duplicates are kept once).
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<(), DbError> {
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        let printed = self.print(path);
        let db = self.db_file.clone();
        let sql_err = |action: &str| {
            let action = format!("{action} '{printed}'");
            let db = db.clone();
            move |source| DbError::Sqlite { action, db, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a transaction for"))?;
        let current: Option<Option<String>> = tx
            .query_row(
                "select sigs from ValidPaths where path = ?1",
                [&printed],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("querying signatures of"))?;
        let Some(current) = current else {
            return Err(DbError::NotValid(printed));
        };
        let mut all: BTreeSet<String> = current
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        all.extend(sigs.iter().filter(|s| !s.is_empty()).cloned());
        let joined = (!all.is_empty()).then(|| all.into_iter().collect::<Vec<_>>().join(" "));
        tx.execute(
            "update ValidPaths set sigs = ?1 where path = ?2",
            params![joined, printed],
        )
        .map_err(sql_err("updating signatures of"))?;
        tx.commit().map_err(sql_err("committing signatures of"))
    }

    fn has_realisation_tables(&self) -> Result<bool, DbError> {
        let n: i64 = self
            .conn
            .query_row(
                "select count(*) from sqlite_master where type = 'table' and name = 'Realisations'",
                [],
                |r| r.get(0),
            )
            .map_err(self.err("checking for the realisation tables"))?;
        Ok(n > 0)
    }

    fn realisation_core(&self, id: &DrvOutput) -> Result<Option<(i64, Realisation)>, DbError> {
        let shown = drv_output_string(id);
        let row: Option<(i64, String, Option<String>)> = self
            .conn
            .prepare_cached(
                "select Realisations.id, Output.path, Realisations.signatures from Realisations \
                 inner join ValidPaths as Output on Output.id = Realisations.outputPath \
                 where drvPath = ?1 and outputName = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![id.drv_hash.to_prefixed_base16(), id.output], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(self.err(format!("querying realisation '{shown}'")))?;
        let Some((row_id, out_path, sigs)) = row else {
            return Ok(None);
        };
        Ok(Some((
            row_id,
            Realisation {
                id: id.clone(),
                out_path: self.parse(&out_path)?,
                signatures: sigs
                    .unwrap_or_default()
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                dependent_realisations: BTreeMap::new(),
            },
        )))
    }

    /// The realisation of a derivation output, with its dependencies.
    pub fn query_realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, DbError> {
        if !self.has_realisation_tables()? {
            return Err(DbError::CaDerivationsDisabled);
        }
        let Some((row_id, mut realisation)) = self.realisation_core(id)? else {
            return Ok(None);
        };
        let shown = drv_output_string(id);
        let deps: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "select drvPath, outputName from Realisations \
                 join RealisationsRefs on realisationReference = Realisations.id \
                 where referrer = ?1",
            )
            .and_then(|mut s| {
                s.query_map([row_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(self.err(format!("querying dependencies of realisation '{shown}'")))?;
        for (drv_hash, output_name) in deps {
            let dep = DrvOutput {
                drv_hash: Hash::parse_any_prefixed(&drv_hash).map_err(|e| DbError::BadRow {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?,
                output: output_name,
            };
            let (_, dep_realisation) =
                self.realisation_core(&dep)?
                    .ok_or_else(|| DbError::BadRow {
                        path: shown.clone(),
                        reason: format!("dependency '{}' is missing", drv_output_string(&dep)),
                    })?;
            realisation
                .dependent_realisations
                .insert(dep, dep_realisation.out_path);
        }
        Ok(Some(realisation))
    }

    /// Records a realisation as Nix's `registerDrvOutput`: a compatible existing one gets the
    /// union of the signatures, an incompatible one is refused; every dependency must already
    /// be realised to the same path.
    pub fn register_realisation(&mut self, realisation: &Realisation) -> Result<(), DbError> {
        if self.read_only {
            return Err(DbError::ReadOnly);
        }
        if !self.has_realisation_tables()? {
            return Err(DbError::CaDerivationsDisabled);
        }
        let id = &realisation.id;
        let shown = drv_output_string(id);
        let existing = self.query_realisation(id)?;
        let out_path = self.print(&realisation.out_path);
        let mut deps = Vec::new();
        for (dep, dep_path) in &realisation.dependent_realisations {
            let Some((_, local)) = self.realisation_core(dep)? else {
                return Err(DbError::RealisationDependency {
                    id: shown,
                    dependency: drv_output_string(dep),
                    problem: "the non existent",
                });
            };
            if &local.out_path != dep_path {
                return Err(DbError::RealisationDependency {
                    id: shown,
                    dependency: drv_output_string(dep),
                    problem: "a different realisation of",
                });
            }
            deps.push(dep.clone());
        }
        let db = self.db_file.clone();
        let sql_err = |action: &str| {
            let action = format!("{action} '{shown}'");
            let db = db.clone();
            move |source| DbError::Sqlite { action, db, source }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err("starting a transaction for"))?;
        let hash = id.drv_hash.to_prefixed_base16();
        match existing {
            Some(old) => {
                if !realisations_compatible(&old, realisation) {
                    return Err(DbError::RealisationConflict {
                        id: shown.clone(),
                        local: self.store_dir.print(&old.out_path),
                        remote: out_path,
                    });
                }
                let mut sigs = old.signatures.clone();
                sigs.extend(realisation.signatures.iter().cloned());
                let joined = sigs.into_iter().collect::<Vec<_>>().join(" ");
                tx.execute(
                    "update Realisations set signatures = ?1 where drvPath = ?2 and outputName = ?3",
                    params![joined, hash, id.output],
                )
                .map_err(sql_err("updating realisation"))?;
            }
            None => {
                let joined = realisation
                    .signatures
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                let inserted = tx
                    .execute(
                        "insert into Realisations (drvPath, outputName, outputPath, signatures) \
                         select ?1, ?2, id, ?4 from ValidPaths where path = ?3",
                        params![hash, id.output, out_path, joined],
                    )
                    .map_err(sql_err("registering realisation"))?;
                if inserted == 0 {
                    return Err(DbError::NotValid(out_path));
                }
            }
        }
        for dep in deps {
            tx.execute(
                "insert or replace into RealisationsRefs (referrer, realisationReference) values (\
                 (select id from Realisations where drvPath = ?1 and outputName = ?2), \
                 (select id from Realisations where drvPath = ?3 and outputName = ?4))",
                params![
                    hash,
                    id.output,
                    dep.drv_hash.to_prefixed_base16(),
                    dep.output
                ],
            )
            .map_err(sql_err("registering dependencies of realisation"))?;
        }
        tx.commit().map_err(sql_err("committing realisation"))
    }

    /// Runs a read-only query closure on the connection (for callers that need a query this
    /// module does not offer; the connection must not be used to write).
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Nix's `Realisation::isCompatibleWith`: same output path, and the same dependencies unless
/// one side has none recorded (an artefact of older Nix versions).
fn realisations_compatible(a: &Realisation, b: &Realisation) -> bool {
    if a.out_path != b.out_path {
        return false;
    }
    if a.dependent_realisations.is_empty() != b.dependent_realisations.is_empty() {
        return true;
    }
    a.dependent_realisations == b.dependent_realisations
}

/// The `narSize` column value: NULL for 0.
fn nullable_size(info: &ValidPathInfo) -> Result<Option<i64>, DbError> {
    if info.nar_size == 0 {
        return Ok(None);
    }
    i64::try_from(info.nar_size)
        .map(Some)
        .map_err(|_| DbError::TooLarge {
            what: "nar size",
            path: info.path.to_string(),
            value: info.nar_size,
        })
}

/// Refuses a reference cycle among `infos` (self-references and references outside the batch
/// do not count), as Nix's topological sort in `registerValidPaths` does.
fn check_no_cycles(infos: &[ValidPathInfo], store_dir: &StoreDir) -> Result<(), DbError> {
    let batch: BTreeMap<&StorePath, &ValidPathInfo> = infos.iter().map(|i| (&i.path, i)).collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        InProgress,
        Done,
    }
    let mut marks: BTreeMap<&StorePath, Mark> = BTreeMap::new();
    for start in batch.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // Explicit DFS stack of (path, iterator over its in-batch references).
        let children = |p: &StorePath| -> Vec<&StorePath> {
            batch[p]
                .references
                .iter()
                .filter(|r| *r != p && batch.contains_key(r))
                .map(|r| batch.get_key_value(r).expect("filtered above").0)
                .copied()
                .collect()
        };
        marks.insert(start, Mark::InProgress);
        let mut stack = vec![(*start, children(start).into_iter())];
        while let Some((path, iter)) = stack.last_mut() {
            let path = *path;
            match iter.next() {
                Some(child) => match marks.get(child) {
                    Some(Mark::InProgress) => {
                        return Err(DbError::Cycle {
                            path: store_dir.print(child),
                            parent: store_dir.print(path),
                        })
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(child, Mark::InProgress);
                        stack.push((child, children(child).into_iter()));
                    }
                },
                None => {
                    marks.insert(path, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

fn sqlite_err(action: &str, db: &Path) -> impl FnOnce(rusqlite::Error) -> DbError {
    let action = action.to_owned();
    let db = db.to_owned();
    move |source| DbError::Sqlite { action, db, source }
}

/// Takes the big lock shared or exclusive, saying so if it has to wait.
fn take_big_lock(file: &File, path: &Path, exclusive: bool) -> Result<(), DbError> {
    let io = |source| LockError::Io {
        action: "locking",
        path: path.to_owned(),
        source,
    };
    if !lock_file(file, exclusive, false).map_err(io)? {
        if exclusive {
            tracing::info!("waiting for exclusive access to the Nix store...");
        } else {
            tracing::info!("waiting for the big Nix store lock...");
        }
        lock_file(file, exclusive, true).map_err(io)?;
    }
    Ok(())
}

/// Schemas before 6 cannot be upgraded in place.
fn refuse_ancient(layout: &StoreLayout, found: u32) -> Result<(), DbError> {
    let (format, upgrade_with) = match found {
        0..=4 => ("Berkeley DB format", "0.12"),
        5 => ("flat file format", "1.11"),
        _ => return Ok(()),
    };
    Err(DbError::SchemaTooOld {
        db_dir: layout.db_dir(),
        found,
        format,
        upgrade_with,
    })
}

/// Opens the database file and applies Nix's pragmas (see `ward_proto::db`).
/// ward's table of paths registered before a sync made their contents durable: ids of
/// `ValidPaths` rows, no foreign key (a path may be deleted before its mark is cleared; ids are
/// never reused, `ValidPaths.id` being `autoincrement`).
const UNSYNCED_TABLE_SQL: &str =
    "create table if not exists WardUnsynced (id integer primary key not null);";

fn open_connection(
    db_file: &Path,
    create: bool,
    settings: &DbSettings,
) -> Result<Connection, DbError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = if settings.use_sqlite_wal {
        Connection::open_with_flags(db_file, flags)
    } else {
        Connection::open_with_flags_and_vfs(db_file, flags, "unix-dotfile")
    }
    .map_err(sqlite_err("cannot open SQLite database", db_file))?;
    conn.busy_timeout(schema::BUSY_TIMEOUT)
        .map_err(sqlite_err("setting timeout", db_file))?;
    for pragma in schema::open_pragmas(settings.fsync_metadata, settings.use_sqlite_wal) {
        if pragma.only_if_different {
            let current: String = conn
                .query_row(&format!("pragma {}", pragma.name), [], |r| r.get(0))
                .map_err(sqlite_err("querying journal mode", db_file))?;
            if current.eq_ignore_ascii_case(pragma.value) {
                continue;
            }
        }
        // Some pragmas answer with a row (journal_mode), others with none.
        let mut stmt = conn
            .prepare(&pragma.statement())
            .map_err(sqlite_err("preparing pragma", db_file))?;
        let mut rows = stmt
            .query([])
            .map_err(sqlite_err("setting pragma", db_file))?;
        while rows
            .next()
            .map_err(sqlite_err("setting pragma", db_file))?
            .is_some()
        {}
    }
    Ok(conn)
}

/// Nix's in-place upgrades from schema 7, 8 and 9 to 10, each in its own transaction.
fn upgrade_schema(conn: &Connection, from: u32, db_file: &Path) -> Result<(), DbError> {
    let steps: [(u32, &str); 3] = [
        (
            8,
            "alter table ValidPaths add column ultimate integer; \
             alter table ValidPaths add column sigs text;",
        ),
        (9, "drop table if exists FailedPaths;"),
        (10, "alter table ValidPaths add column ca text;"),
    ];
    for (version, sql) in steps {
        if from < version {
            conn.execute_batch(&format!("begin; {sql} commit;"))
                .map_err(sqlite_err("upgrading the store schema", db_file))?;
        }
    }
    Ok(())
}

/// Creates or upgrades the realisation tables (`ca-schema`), as Nix's `migrateCASchema`.
fn migrate_ca_schema(
    conn: &Connection,
    ca_schema_file: &Path,
    big_lock: &File,
    layout: &StoreLayout,
    db_file: &Path,
) -> Result<(), DbError> {
    let found = read_schema_file(ca_schema_file)?;
    if found == schema::CA_SCHEMA_VERSION {
        return Ok(());
    }
    if found > schema::CA_SCHEMA_VERSION {
        return Err(DbError::CaSchemaTooNew {
            found,
            supported: schema::CA_SCHEMA_VERSION,
        });
    }
    take_big_lock(big_lock, &layout.big_lock_file(), true)?;
    let found = read_schema_file(ca_schema_file)?;
    if found == 1 {
        // Version 1 keyed Realisations by (drvPath, outputName) without an id column.
        conn.execute_batch(
            "begin;
             create table Realisations2 (
                 id integer primary key autoincrement not null,
                 drvPath text not null,
                 outputName text not null,
                 outputPath integer not null,
                 signatures text,
                 foreign key (outputPath) references ValidPaths(id) on delete cascade
             );
             insert into Realisations2 (drvPath, outputName, outputPath, signatures)
                 select drvPath, outputName, outputPath, signatures from Realisations;
             drop table Realisations;
             alter table Realisations2 rename to Realisations;
             commit;",
        )
        .map_err(sqlite_err("upgrading the ca-schema", db_file))?;
    }
    // Everything else (new tables at 0, RealisationsRefs at 1, indexes at 2) is created by
    // the idempotent schema script.
    if found < schema::CA_SCHEMA_VERSION {
        conn.execute_batch(&format!("begin; {} commit;", schema::CA_SCHEMA_SQL))
            .map_err(sqlite_err("creating the ca-schema", db_file))?;
    }
    write_schema_file(ca_schema_file, schema::CA_SCHEMA_VERSION)?;
    take_big_lock(big_lock, &layout.big_lock_file(), false)
}

#[cfg(test)]
mod tests;
