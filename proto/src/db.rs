//! The store database (`<state dir>/db/db.sqlite`): schema, schema versions and open pragmas.
//!
//! ward keeps Nix's on-disk database format so that a host can switch between `nix-daemon` and
//! ward without touching its store. This module is data only (no SQLite dependency): the
//! store-writer, the only process that writes the database, applies it; the frontend opens the
//! same file read-only.
//!
//! Opening a store database, in order:
//! 1. open it (create only for a new store), busy timeout [`BUSY_TIMEOUT`];
//! 2. apply [`open_pragmas`] (foreign keys, sync mode, journal mode, checkpoint interval);
//! 3. new store: run [`SCHEMA_SQL`], then write [`SCHEMA_VERSION`] to [`SCHEMA_FILE`];
//!    existing store: read [`SCHEMA_FILE`] with [`parse_schema_version`] and refuse what
//!    [`check_schema_version`] refuses;
//! 4. with `ca-derivations` enabled: run [`CA_SCHEMA_SQL`] and write [`CA_SCHEMA_VERSION`] to
//!    [`CA_SCHEMA_FILE`].

use std::time::Duration;

/// `CREATE` statements for a new store database (schema version [`SCHEMA_VERSION`]).
pub const SCHEMA_SQL: &str = include_str!("db/schema.sql");

/// `CREATE` statements for the content-addressed-derivation tables (ca-schema version
/// [`CA_SCHEMA_VERSION`]), applied on top of [`SCHEMA_SQL`] only when `ca-derivations` is on.
pub const CA_SCHEMA_SQL: &str = include_str!("db/ca-schema.sql");

/// Version of [`SCHEMA_SQL`]; written as ASCII digits without a newline to [`SCHEMA_FILE`].
/// SQLite's `user_version` is not used and stays 0.
pub const SCHEMA_VERSION: u32 = 10;

/// Version of [`CA_SCHEMA_SQL`]; written to [`CA_SCHEMA_FILE`].
pub const CA_SCHEMA_VERSION: u32 = 3;

/// Oldest schema version a store may have and still be upgraded in place (by adding the
/// `ultimate`/`sigs` columns for 8, dropping `FailedPaths` for 9, adding `ca` for 10).
pub const OLDEST_UPGRADABLE_SCHEMA_VERSION: u32 = 6;

/// The database file, relative to `<state dir>/db`.
pub const DB_FILE: &str = "db.sqlite";
/// The schema version file, relative to `<state dir>/db`.
pub const SCHEMA_FILE: &str = "schema";
/// The ca-schema version file, relative to `<state dir>/db`.
pub const CA_SCHEMA_FILE: &str = "ca-schema";
/// The lock every store user holds shared while the store is open (exclusive for upgrades),
/// relative to `<state dir>/db`.
pub const BIG_LOCK_FILE: &str = "big-lock";

/// How long a statement waits for another process's lock before failing: one hour, as in Nix,
/// because a garbage collection or a large registration can hold the write lock that long.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(3_600_000);

/// One `pragma NAME = VALUE` to run right after opening the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pragma {
    /// The pragma's name, schema-qualified where it matters (`main.journal_mode`).
    pub name: &'static str,
    /// The value to set.
    pub value: &'static str,
    /// Only set it when the current value (read with `pragma NAME`) differs. Switching the
    /// journal mode needs an exclusive lock even when it changes nothing, so it is read first
    /// to let several processes open the store at once.
    pub only_if_different: bool,
}

impl Pragma {
    /// The statement that sets this pragma.
    pub fn statement(&self) -> String {
        format!("pragma {} = {}", self.name, self.value)
    }
}

/// The pragmas for the default settings (`fsync-metadata = true`, `use-sqlite-wal = true`), in
/// the order they are applied. Equal to `open_pragmas(true, true)`.
pub const DEFAULT_OPEN_PRAGMAS: &[Pragma] = &[
    FOREIGN_KEYS,
    Pragma {
        name: "synchronous",
        value: "normal",
        only_if_different: false,
    },
    Pragma {
        name: "main.journal_mode",
        value: "wal",
        only_if_different: true,
    },
    WAL_AUTOCHECKPOINT,
];

/// Foreign keys are off by default in SQLite; the `Refs` and `DerivationOutputs` cascades and
/// the `on delete restrict` that protects referenced paths depend on them.
const FOREIGN_KEYS: Pragma = Pragma {
    name: "foreign_keys",
    value: "1",
    only_if_different: false,
};

/// Checkpoint the WAL every 40000 pages instead of 1000, so that registering a large closure
/// costs one fsync rather than many.
const WAL_AUTOCHECKPOINT: Pragma = Pragma {
    name: "wal_autocheckpoint",
    value: "40000",
    only_if_different: false,
};

/// The pragmas to apply on every open, in order, for the settings `fsync-metadata` and
/// `use-sqlite-wal`.
///
/// * `synchronous` is `normal` (safe with WAL), or `off` when `fsync-metadata = false`.
/// * The journal mode is `wal`, or `truncate` when `use-sqlite-wal = false` (for file systems
///   without shared memory, e.g. NFS); then the WAL checkpoint interval does not apply.
pub fn open_pragmas(fsync_metadata: bool, use_sqlite_wal: bool) -> Vec<Pragma> {
    let mut pragmas = vec![
        FOREIGN_KEYS,
        Pragma {
            name: "synchronous",
            value: if fsync_metadata { "normal" } else { "off" },
            only_if_different: false,
        },
        Pragma {
            name: "main.journal_mode",
            value: if use_sqlite_wal { "wal" } else { "truncate" },
            only_if_different: true,
        },
    ];
    if use_sqlite_wal {
        pragmas.push(WAL_AUTOCHECKPOINT);
    }
    pragmas
}

/// Why a `schema` or `ca-schema` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaVersionError {
    /// The file does not hold a decimal version number.
    #[error("schema version file holds {contents:?}, not a version number")]
    Malformed {
        /// The file's contents (at most the first 32 characters).
        contents: String,
    },
    /// The store was written by a newer program.
    #[error("current store schema is version {found}, but ward only supports {supported}")]
    TooNew {
        /// The version in the file.
        found: u32,
        /// The newest version ward understands.
        supported: u32,
    },
    /// The store is too old to upgrade in place.
    #[error("store schema version {found} is too old to upgrade (oldest supported is {oldest})")]
    TooOld {
        /// The version in the file.
        found: u32,
        /// The oldest version ward upgrades.
        oldest: u32,
    },
}

/// Parses the contents of a `schema` or `ca-schema` file: decimal digits, optionally followed
/// by whitespace (Nix writes none, but a hand-edited file may end in a newline). An empty file
/// means version 0 (no schema yet).
pub fn parse_schema_version(contents: &str) -> Result<u32, SchemaVersionError> {
    let trimmed = contents.trim_end();
    if trimmed.is_empty() {
        return Ok(0);
    }
    let malformed = || SchemaVersionError::Malformed {
        contents: contents.chars().take(32).collect(),
    };
    if !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    trimmed.parse().map_err(|_| malformed())
}

/// What opening a store whose `schema` file says `found` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaAction {
    /// No database yet: create it with [`SCHEMA_SQL`].
    Create,
    /// Already at [`SCHEMA_VERSION`].
    UpToDate,
    /// Older but upgradable: take the big lock exclusively and migrate.
    Upgrade {
        /// The version found.
        from: u32,
    },
}

/// Decides what to do with a store whose `schema` file holds version `found` (0 = absent).
pub fn check_schema_version(found: u32) -> Result<SchemaAction, SchemaVersionError> {
    match found {
        0 => Ok(SchemaAction::Create),
        SCHEMA_VERSION => Ok(SchemaAction::UpToDate),
        v if v > SCHEMA_VERSION => Err(SchemaVersionError::TooNew {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        v if v < OLDEST_UPGRADABLE_SCHEMA_VERSION => Err(SchemaVersionError::TooOld {
            found: v,
            oldest: OLDEST_UPGRADABLE_SCHEMA_VERSION,
        }),
        v => Ok(SchemaAction::Upgrade { from: v }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::process::Command;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    /// Tables, indexes and triggers by name (SQLite's own `sqlite_*` objects left out).
    fn objects(conn: &Connection, kind: &str) -> BTreeSet<String> {
        let mut stmt = conn
            .prepare("select name from sqlite_master where type = ?1 and name not like 'sqlite_%'")
            .unwrap();
        let names = stmt
            .query_map([kind], |row| row.get::<_, String>(0))
            .unwrap();
        names.map(Result::unwrap).collect()
    }

    /// Everything that makes two schemas compatible, per table: columns (name, declared type,
    /// not-null, default, primary-key position), foreign keys, and indexes with their columns.
    fn table_shapes(conn: &Connection) -> BTreeMap<String, Vec<String>> {
        let mut shapes = BTreeMap::new();
        for table in objects(conn, "table") {
            let mut shape = Vec::new();
            let mut cols = conn
                .prepare(&format!("pragma table_info({table})"))
                .unwrap();
            let rows = cols
                .query_map([], |r| {
                    Ok(format!(
                        "column {} {} notnull={} default={:?} pk={}",
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?.to_lowercase(),
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?
                    ))
                })
                .unwrap();
            shape.extend(rows.map(Result::unwrap));
            let mut fks = conn
                .prepare(&format!("pragma foreign_key_list({table})"))
                .unwrap();
            let rows = fks
                .query_map([], |r| {
                    Ok(format!(
                        "fk {} -> {}({}) on update {} on delete {}",
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?
                    ))
                })
                .unwrap();
            shape.extend(rows.map(Result::unwrap));
            let mut idx = conn
                .prepare(&format!("pragma index_list({table})"))
                .unwrap();
            let indexes: Vec<(String, i64, String)> = idx
                .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for (name, unique, origin) in indexes {
                let mut info = conn.prepare(&format!("pragma index_info({name})")).unwrap();
                let columns: Vec<String> = info
                    .query_map([], |r| r.get(2))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                shape.push(format!(
                    "index {name} unique={unique} origin={origin} on ({})",
                    columns.join(", ")
                ));
            }
            shape.sort();
            shapes.insert(table, shape);
        }
        shapes
    }

    fn ward_db(with_ca: bool) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for pragma in DEFAULT_OPEN_PRAGMAS {
            // In-memory databases cannot use WAL; the journal mode is checked elsewhere.
            if pragma.name != "main.journal_mode" {
                conn.execute_batch(&pragma.statement()).unwrap();
            }
        }
        conn.execute_batch(SCHEMA_SQL).unwrap();
        if with_ca {
            conn.execute_batch(CA_SCHEMA_SQL).unwrap();
        }
        conn
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn schema_creates_nix_tables_indexes_and_trigger() {
        let conn = ward_db(false);
        assert_eq!(
            objects(&conn, "table"),
            set(&["DerivationOutputs", "Refs", "ValidPaths"])
        );
        assert_eq!(
            objects(&conn, "index"),
            set(&["IndexDerivationOutputs", "IndexReference", "IndexReferrer"])
        );
        assert_eq!(objects(&conn, "trigger"), set(&["DeleteSelfRefs"]));
        let shapes = table_shapes(&conn);
        assert!(
            shapes["ValidPaths"].contains(&"column id integer notnull=1 default=None pk=1".into())
        );
        assert!(shapes["ValidPaths"].contains(&"column ca text notnull=0 default=None pk=0".into()));
        assert!(shapes["Refs"].contains(
            &"fk reference -> ValidPaths(id) on update NO ACTION on delete RESTRICT".into()
        ));
    }

    #[test]
    fn ca_schema_adds_realisation_tables() {
        let conn = ward_db(true);
        assert_eq!(
            objects(&conn, "table"),
            set(&[
                "DerivationOutputs",
                "Realisations",
                "RealisationsRefs",
                "Refs",
                "ValidPaths"
            ])
        );
        assert_eq!(
            objects(&conn, "index"),
            set(&[
                "IndexDerivationOutputs",
                "IndexRealisations",
                "IndexRealisationsRefs",
                "IndexRealisationsRefsOnOutputPath",
                "IndexReference",
                "IndexReferrer",
            ])
        );
    }

    #[test]
    fn schema_is_idempotent() {
        let conn = ward_db(true);
        conn.execute_batch(SCHEMA_SQL).unwrap();
        conn.execute_batch(CA_SCHEMA_SQL).unwrap();
        assert_eq!(objects(&conn, "table").len(), 5);
    }

    #[test]
    fn constraints_behave_like_nix() {
        let conn = ward_db(false);
        let insert =
            "insert into ValidPaths (path, hash, registrationTime) values (?1, 'sha256:00', 1)";
        conn.execute(insert, ["/nix/store/a"]).unwrap();
        conn.execute(insert, ["/nix/store/b"]).unwrap();
        // Duplicate paths are refused.
        assert!(conn.execute(insert, ["/nix/store/a"]).is_err());
        // b refers to a and to itself.
        conn.execute_batch("insert into Refs values (2, 1); insert into Refs values (2, 2);")
            .unwrap();
        // a cannot go while b refers to it (on delete restrict).
        assert!(conn
            .execute("delete from ValidPaths where id = 1", [])
            .is_err());
        // b can go despite its self-reference (DeleteSelfRefs), and its references go with it.
        conn.execute("delete from ValidPaths where id = 2", [])
            .unwrap();
        let refs: i64 = conn
            .query_row("select count(*) from Refs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(refs, 0);
        conn.execute("delete from ValidPaths where id = 1", [])
            .unwrap();
        // A reference to a path that does not exist is refused.
        conn.execute(insert, ["/nix/store/c"]).unwrap();
        assert!(conn.execute("insert into Refs values (3, 99)", []).is_err());
    }

    #[test]
    fn default_pragmas_match_default_settings() {
        assert_eq!(open_pragmas(true, true), DEFAULT_OPEN_PRAGMAS);
        let no_wal = open_pragmas(false, false);
        assert_eq!(
            no_wal.iter().map(Pragma::statement).collect::<Vec<_>>(),
            vec![
                "pragma foreign_keys = 1",
                "pragma synchronous = off",
                "pragma main.journal_mode = truncate",
            ]
        );
    }

    #[test]
    fn pragmas_apply_to_a_file_database() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        for pragma in DEFAULT_OPEN_PRAGMAS {
            if pragma.only_if_different {
                let current: String = conn
                    .query_row(&format!("pragma {}", pragma.name), [], |r| r.get(0))
                    .unwrap();
                if current == pragma.value {
                    continue;
                }
            }
            // journal_mode answers with a row; the others answer with none.
            conn.query_row(&pragma.statement(), [], |_| Ok(()))
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(()),
                    e => Err(e),
                })
                .unwrap();
        }
        let mode: String = conn
            .query_row("pragma main.journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("pragma foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let checkpoint: i64 = conn
            .query_row("pragma wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(checkpoint, 40000);
    }

    #[test]
    fn schema_version_files() {
        assert_eq!(parse_schema_version("10"), Ok(10));
        assert_eq!(parse_schema_version("3\n"), Ok(3));
        assert_eq!(parse_schema_version(""), Ok(0));
        assert!(matches!(
            parse_schema_version("ten"),
            Err(SchemaVersionError::Malformed { .. })
        ));
        assert!(matches!(
            parse_schema_version("-1"),
            Err(SchemaVersionError::Malformed { .. })
        ));
        assert!(matches!(
            parse_schema_version(" 10"),
            Err(SchemaVersionError::Malformed { .. })
        ));
        assert!(matches!(
            parse_schema_version("99999999999999999999"),
            Err(SchemaVersionError::Malformed { .. })
        ));
        let long = "x".repeat(1000);
        match parse_schema_version(&long) {
            Err(SchemaVersionError::Malformed { contents }) => assert_eq!(contents.len(), 32),
            other => panic!("expected malformed, got {other:?}"),
        }
        assert_eq!(check_schema_version(0), Ok(SchemaAction::Create));
        assert_eq!(check_schema_version(10), Ok(SchemaAction::UpToDate));
        assert_eq!(
            check_schema_version(7),
            Ok(SchemaAction::Upgrade { from: 7 })
        );
        assert_eq!(
            check_schema_version(11),
            Err(SchemaVersionError::TooNew {
                found: 11,
                supported: 10
            })
        );
        assert_eq!(
            check_schema_version(5),
            Err(SchemaVersionError::TooOld {
                found: 5,
                oldest: 6
            })
        );
        assert_eq!(
            check_schema_version(11).unwrap_err().to_string(),
            "current store schema is version 11, but ward only supports 10"
        );
    }

    /// Creates a store with the real `nix-store` and returns its database directory, or `None`
    /// (with a printed reason) when Nix is not installed.
    fn nix_made_db(dir: &Path, ca_derivations: bool) -> Option<std::path::PathBuf> {
        let nix_store = Path::new("/usr/bin/nix-store");
        if !nix_store.exists() {
            eprintln!("skipping: /usr/bin/nix-store is not installed, cannot compare with Nix");
            return None;
        }
        let file = dir.join("some-file");
        std::fs::write(&file, "hello from ward\n").unwrap();
        let root = dir.join("root");
        let mut cmd = Command::new(nix_store);
        cmd.arg("--store").arg(&root);
        if ca_derivations {
            cmd.args(["--option", "experimental-features", "ca-derivations"]);
        }
        let output = cmd
            .arg("--add")
            .arg(&file)
            .env("HOME", dir)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "nix-store --add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(root.join("nix/var/nix/db"))
    }

    fn compare_with_nix(ca_derivations: bool) {
        let dir = tempfile::tempdir().unwrap();
        let Some(db_dir) = nix_made_db(dir.path(), ca_derivations) else {
            return;
        };
        let schema = std::fs::read_to_string(db_dir.join(SCHEMA_FILE)).unwrap();
        assert_eq!(schema, SCHEMA_VERSION.to_string());
        if ca_derivations {
            let ca = std::fs::read_to_string(db_dir.join(CA_SCHEMA_FILE)).unwrap();
            assert_eq!(ca, CA_SCHEMA_VERSION.to_string());
        }
        let nix =
            Connection::open_with_flags(db_dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let ours = ward_db(ca_derivations);
        for kind in ["table", "index", "trigger"] {
            assert_eq!(
                objects(&nix, kind),
                objects(&ours, kind),
                "{kind} names differ from Nix"
            );
        }
        assert_eq!(table_shapes(&nix), table_shapes(&ours));
        let mode: String = nix
            .query_row("pragma main.journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, DEFAULT_OPEN_PRAGMAS[2].value);
    }

    #[test]
    fn schema_matches_a_store_made_by_nix() {
        compare_with_nix(false);
    }

    #[test]
    fn ca_schema_matches_a_store_made_by_nix() {
        compare_with_nix(true);
    }
}
