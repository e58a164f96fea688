use std::collections::{BTreeMap, BTreeSet};

use ward_proto::hash::HashAlgo;

use super::*;
use crate::test_support::*;

fn no_drvs(path: &StorePath) -> Result<DerivationOutputs, DbError> {
    panic!("unexpected derivation {path}")
}

fn open_new(dir: &Path) -> (StoreLayout, StoreDb) {
    let layout = new_layout(dir);
    let db = StoreDb::open(&layout, &DbSettings::default()).unwrap();
    (layout, db)
}

type RawRow = (
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn raw_row(db: &StoreDb, path: &StorePath) -> RawRow {
    db.connection()
        .query_row(
            "select hash, registrationTime, deriver, narSize, ultimate, sigs, ca \
             from ValidPaths where path = ?1",
            [db.store_dir().print(path)],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap()
}

#[test]
fn new_store_gets_schema_file_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, db) = open_new(dir.path());
    assert_eq!(std::fs::read(layout.schema_file()).unwrap(), b"10");
    let conn = db.connection();
    let mode: String = conn
        .query_row("pragma main.journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = conn
        .query_row("pragma foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let sync: i64 = conn
        .query_row("pragma synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "normal");
    let checkpoint: i64 = conn
        .query_row("pragma wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(checkpoint, 40000);
    let tables: i64 = conn
        .query_row(
            "select count(*) from sqlite_master where type = 'table' and name in \
             ('ValidPaths', 'Refs', 'DerivationOutputs')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 3);
    assert!(!layout.ca_schema_file().exists());
    drop(db);
    // Reopening an existing store works and keeps the file.
    StoreDb::open(&layout, &DbSettings::default()).unwrap();
    assert_eq!(std::fs::read(layout.schema_file()).unwrap(), b"10");
}

#[test]
fn settings_without_wal_and_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let layout = new_layout(dir.path());
    let settings = DbSettings {
        fsync_metadata: false,
        use_sqlite_wal: false,
        ca_derivations: false,
    };
    let db = StoreDb::open(&layout, &settings).unwrap();
    let mode: String = db
        .connection()
        .query_row("pragma main.journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "truncate");
    let sync: i64 = db
        .connection()
        .query_row("pragma synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 0, "off");
}

#[test]
fn newer_schema_is_refused_with_nix_message() {
    let dir = tempfile::tempdir().unwrap();
    let layout = new_layout(dir.path());
    std::fs::write(layout.schema_file(), "11").unwrap();
    let err = StoreDb::open(&layout, &DbSettings::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "current Nix store schema is version 11, but I only support 10"
    );
    assert!(matches!(
        StoreDb::open_read_only(&layout),
        Err(DbError::SchemaTooNew { found: 11, .. })
    ));
}

#[test]
fn corrupt_and_ancient_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = new_layout(dir.path());
    std::fs::write(layout.schema_file(), "ten").unwrap();
    let err = StoreDb::open(&layout, &DbSettings::default()).unwrap_err();
    assert!(matches!(err, DbError::CorruptSchemaFile { .. }), "{err}");
    assert!(err.to_string().contains("db/schema"), "{err}");
    for (version, format) in [(3, "Berkeley DB"), (5, "flat file")] {
        std::fs::write(layout.schema_file(), version.to_string()).unwrap();
        let err = StoreDb::open(&layout, &DbSettings::default()).unwrap_err();
        assert!(err.to_string().contains(format), "{err}");
        assert!(matches!(err, DbError::SchemaTooOld { found, .. } if found == version));
    }
}

/// A schema-7 database as Nix 1.x wrote it: no `ultimate`, `sigs`, `ca`; a `FailedPaths` table.
#[test]
fn schema_7_is_upgraded_like_nix() {
    let dir = tempfile::tempdir().unwrap();
    let layout = new_layout(dir.path());
    {
        let conn = Connection::open(layout.db_file()).unwrap();
        conn.execute_batch(
            "create table ValidPaths (
                 id integer primary key autoincrement not null,
                 path text unique not null,
                 hash text not null,
                 registrationTime integer not null,
                 deriver text,
                 narSize integer);
             create table Refs (
                 referrer integer not null,
                 reference integer not null,
                 primary key (referrer, reference),
                 foreign key (referrer) references ValidPaths(id) on delete cascade,
                 foreign key (reference) references ValidPaths(id) on delete restrict);
             create table DerivationOutputs (
                 drv integer not null, id text not null, path text not null,
                 primary key (drv, id),
                 foreign key (drv) references ValidPaths(id) on delete cascade);
             create table FailedPaths (path text primary key not null, time integer not null);",
        )
        .unwrap();
        let p = test_path("old");
        conn.execute(
            "insert into ValidPaths (path, hash, registrationTime, narSize) values (?1, ?2, 5, 7)",
            params![
                StoreDir::default().print(&p),
                test_hash("old").to_prefixed_base16()
            ],
        )
        .unwrap();
    }
    std::fs::write(layout.schema_file(), "7").unwrap();
    let db = StoreDb::open(&layout, &DbSettings::default()).unwrap();
    assert_eq!(std::fs::read(layout.schema_file()).unwrap(), b"10");
    let info = db.query_path_info(&test_path("old")).unwrap().unwrap();
    assert_eq!((info.nar_size, info.registration_time), (7, 5));
    assert!(info.sigs.is_empty() && info.ca.is_none() && !info.ultimate);
    let failed: i64 = db
        .connection()
        .query_row(
            "select count(*) from sqlite_master where name = 'FailedPaths'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed, 0);
    // The big lock is back to shared: a reader can open the store alongside.
    StoreDb::open_read_only(&layout).unwrap();
}

#[test]
fn rows_are_written_as_nix_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let dep = test_path("dep");
    let plain = test_path("plain");
    let full = test_path("full");
    let deriver = test_path("full.drv");
    let mut full_info = info(&full, &[&dep, &full]);
    full_info.deriver = Some(deriver.clone());
    full_info.nar_size = 1234;
    full_info.registration_time = 99;
    full_info.ultimate = true;
    full_info.sigs = ["cache.example-1:c2ln".to_owned(), "a:b".to_owned()].into();
    let before = now();
    db.register_valid_paths(
        &[info(&dep, &[]), info(&plain, &[&dep]), full_info.clone()],
        no_drvs,
    )
    .unwrap();

    let (hash, time, drv, size, ultimate, sigs, ca) = raw_row(&db, &plain);
    assert_eq!(
        hash,
        format!("sha256:{}", test_hash(plain.base_name()).to_base16())
    );
    assert!(time >= before, "registration time is now when 0");
    assert_eq!(
        (drv, size, ultimate, sigs, ca),
        (None, None, None, None, None)
    );

    let (_, time, drv, size, ultimate, sigs, _) = raw_row(&db, &full);
    assert_eq!(time, 99);
    assert_eq!(drv, Some(StoreDir::default().print(&deriver)));
    assert_eq!((size, ultimate), (Some(1234), Some(1)));
    assert_eq!(sigs.as_deref(), Some("a:b cache.example-1:c2ln"));

    let read = db.query_path_info(&full).unwrap().unwrap();
    assert_eq!(read, full_info);
    let self_refs: i64 = db
        .connection()
        .query_row(
            "select count(*) from Refs where referrer = reference",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(self_refs, 1, "self-references get a Refs row");

    assert!(db.is_valid(&dep).unwrap());
    assert!(!db.is_valid(&test_path("absent")).unwrap());
    assert!(db.query_path_info(&test_path("absent")).unwrap().is_none());
    assert_eq!(
        db.query_all_valid_paths().unwrap(),
        [dep.clone(), plain.clone(), full.clone()].into()
    );
    let asked: BTreeSet<_> = [dep.clone(), test_path("absent")].into();
    assert_eq!(db.query_valid_paths(&asked).unwrap(), [dep.clone()].into());
    assert_eq!(
        db.query_referrers(&dep).unwrap(),
        [plain.clone(), full.clone()].into()
    );
    assert_eq!(db.query_referrers(&full).unwrap(), [full.clone()].into());
}

#[test]
fn reregistering_updates_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let p = test_path("p");
    let mut first = info(&p, &[]);
    first.registration_time = 10;
    db.register_valid_paths(&[first.clone()], no_drvs).unwrap();
    let mut second = first.clone();
    second.nar_size = 77;
    second.ultimate = true;
    second.registration_time = 20;
    db.register_valid_paths(&[second], no_drvs).unwrap();
    let read = db.query_path_info(&p).unwrap().unwrap();
    assert_eq!((read.nar_size, read.ultimate), (77, true));
    assert_eq!(
        read.registration_time, 10,
        "registration time is kept, as in Nix"
    );
}

#[test]
fn path_from_hash_part() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let a = test_path("a");
    let b = test_path("b");
    db.register_valid_paths(&[info(&a, &[]), info(&b, &[])], no_drvs)
        .unwrap();
    assert_eq!(
        db.query_path_from_hash_part(a.hash_part()).unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        db.query_path_from_hash_part(b.hash_part()).unwrap(),
        Some(b)
    );
    // A hash part sorting just before an existing path must not match it.
    let missing = "00000000000000000000000000000000";
    assert_eq!(db.query_path_from_hash_part(missing).unwrap(), None);
    let zzz = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
    assert_eq!(db.query_path_from_hash_part(zzz).unwrap(), None);
    assert!(matches!(
        db.query_path_from_hash_part("short"),
        Err(DbError::BadHashPart(_))
    ));
    // SQL metacharacters are only data.
    assert_eq!(
        db.query_path_from_hash_part("'%_\"; drop table ValidPaths; --x")
            .unwrap(),
        None
    );
    assert!(db.is_valid(&a).unwrap());
}

#[test]
fn derivation_outputs_and_derivers() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let drv = test_path("x.drv");
    let out = test_path("x");
    let dev = test_path("x-dev");
    let outputs: DerivationOutputs = [
        ("out".to_owned(), out.clone()),
        ("dev".to_owned(), dev.clone()),
    ]
    .into();
    let mut seen = Vec::new();
    db.register_valid_paths(&[info(&drv, &[])], |p| {
        seen.push(p.clone());
        Ok(outputs.clone())
    })
    .unwrap();
    assert_eq!(seen, vec![drv.clone()]);
    assert_eq!(db.query_derivation_outputs(&drv).unwrap(), outputs);
    // Outputs need not be valid for the mapping to exist; derivers are found from them.
    assert_eq!(db.query_valid_derivers(&out).unwrap(), [drv.clone()].into());
    assert!(db
        .query_valid_derivers(&test_path("other"))
        .unwrap()
        .is_empty());
    assert!(matches!(
        db.query_derivation_outputs(&test_path("nope.drv")),
        Err(DbError::NotValid(p)) if p.ends_with("nope.drv")
    ));
    // A derivation that cannot be read rolls the registration back.
    let bad = test_path("bad.drv");
    let err = db
        .register_valid_paths(&[info(&bad, &[])], |p| {
            Err(DbError::Derivation {
                path: p.to_string(),
                reason: "unparsable".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("bad.drv"), "{err}");
    assert!(!db.is_valid(&bad).unwrap());
}

#[test]
fn invalid_reference_rolls_back_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let a = test_path("a");
    let b = test_path("b");
    let ghost = test_path("ghost");
    let err = db
        .register_valid_paths(&[info(&a, &[]), info(&b, &[&ghost])], no_drvs)
        .unwrap_err();
    assert!(
        matches!(&err, DbError::NotValid(p) if p == &StoreDir::default().print(&ghost)),
        "{err}"
    );
    assert!(!db.is_valid(&a).unwrap(), "nothing of the batch is kept");
}

#[test]
fn reference_cycles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let a = test_path("a");
    let b = test_path("b");
    let c = test_path("c");
    let err = db
        .register_valid_paths(
            &[info(&a, &[&b]), info(&b, &[&c]), info(&c, &[&a, &c])],
            no_drvs,
        )
        .unwrap_err();
    assert!(matches!(err, DbError::Cycle { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("cycle detected in the references of"));
    assert!(db.query_all_valid_paths().unwrap().is_empty());
    // Self-references alone are fine.
    db.register_valid_paths(&[info(&a, &[&a])], no_drvs)
        .unwrap();
}

#[test]
fn content_address_must_produce_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let refs = BTreeSet::new();
    let (path, ca) = text_ca("t.txt", b"hello", &refs);
    let mut good = info(&path, &[]);
    good.ca = Some(ca);
    db.register_valid_paths(&[good.clone()], no_drvs).unwrap();
    assert_eq!(
        db.query_path_info(&path).unwrap().unwrap().ca,
        Some(ca),
        "ca round-trips"
    );
    let (_, other_ca) = text_ca("t.txt", b"other", &refs);
    let mut lying = info(&test_path("liar"), &[]);
    lying.ca = Some(other_ca);
    let err = db.register_valid_paths(&[lying], no_drvs).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot add path '{}' to the Nix store because it claims to be content-addressed \
             but isn't",
            StoreDir::default().print(&test_path("liar"))
        )
    );
    // A text path may not refer to itself.
    let mut self_ref = good.clone();
    self_ref.references.insert(path.clone());
    assert!(matches!(
        db.register_valid_paths(&[self_ref], no_drvs),
        Err(DbError::NotContentAddressed(_))
    ));
}

#[test]
fn nar_hash_must_be_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let mut bad = info(&test_path("p"), &[]);
    bad.nar_hash = Hash::compute(HashAlgo::Sha1, b"x");
    assert!(matches!(
        db.register_valid_paths(&[bad], no_drvs),
        Err(DbError::NarHashNotSha256 { .. })
    ));
    let mut huge = info(&test_path("p"), &[]);
    huge.nar_size = u64::MAX;
    assert!(matches!(
        db.register_valid_paths(&[huge], no_drvs),
        Err(DbError::TooLarge { .. })
    ));
}

#[test]
fn signatures_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let p = test_path("p");
    db.register_valid_paths(&[info(&p, &[])], no_drvs).unwrap();
    db.add_signatures(&p, &["k2:s2".to_owned(), "k1:s1".to_owned()].into())
        .unwrap();
    db.add_signatures(&p, &["k1:s1".to_owned(), "k3:s3".to_owned()].into())
        .unwrap();
    assert_eq!(raw_row(&db, &p).5.as_deref(), Some("k1:s1 k2:s2 k3:s3"));
    assert!(matches!(
        db.add_signatures(&test_path("absent"), &["k:s".to_owned()].into()),
        Err(DbError::NotValid(_))
    ));
}

#[test]
fn bad_rows_give_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let p = test_path("p");
    db.register_valid_paths(&[info(&p, &[])], no_drvs).unwrap();
    db.connection()
        .execute("update ValidPaths set hash = 'sha256:nothex'", [])
        .unwrap();
    let err = db.query_path_info(&p).unwrap_err();
    assert!(matches!(err, DbError::BadRow { .. }));
    assert!(err.to_string().contains(p.base_name()), "{err}");
    db.connection()
        .execute(
            "insert into ValidPaths (path, hash, registrationTime) values ('/etc/passwd', 'x', 1)",
            [],
        )
        .unwrap();
    let err = db.query_all_valid_paths().unwrap_err();
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
}

#[test]
fn a_bad_reference_row_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_layout, mut db) = open_new(dir.path());
    let p = test_path("p");
    db.register_valid_paths(&[info(&p, &[])], no_drvs).unwrap();
    let conn = db.connection();
    conn.execute(
        "insert into ValidPaths (path, hash, registrationTime) values ('/etc/shadow', 'x', 1)",
        [],
    )
    .unwrap();
    conn.execute(
        "insert into Refs (referrer, reference) select a.id, b.id from ValidPaths a, ValidPaths b \
         where a.path != '/etc/shadow' and b.path = '/etc/shadow'",
        [],
    )
    .unwrap();
    let err = db.query_path_info(&p).unwrap_err();
    assert!(matches!(err, DbError::BadRow { .. }), "{err}");
    assert!(err.to_string().contains("/etc/shadow"), "{err}");
}

#[test]
fn read_only_handle_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, mut writer) = open_new(dir.path());
    let p = test_path("p");
    writer
        .register_valid_paths(&[info(&p, &[])], no_drvs)
        .unwrap();
    let mut reader = StoreDb::open_read_only(&layout).unwrap();
    assert!(reader.is_valid(&p).unwrap());
    // The reader sees later commits of the writer.
    let q = test_path("q");
    writer
        .register_valid_paths(&[info(&q, &[&p])], no_drvs)
        .unwrap();
    assert_eq!(reader.query_referrers(&p).unwrap(), [q.clone()].into());
    assert!(matches!(
        reader.register_valid_paths(&[info(&test_path("r"), &[])], no_drvs),
        Err(DbError::ReadOnly)
    ));
    assert!(matches!(
        reader.add_signatures(&p, &["k:s".to_owned()].into()),
        Err(DbError::ReadOnly)
    ));
    // Even raw SQL cannot write through it.
    assert!(reader
        .connection()
        .execute("delete from ValidPaths", [])
        .is_err());
}

#[test]
fn read_only_open_of_an_unupgraded_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, db) = open_new(dir.path());
    drop(db);
    std::fs::write(layout.schema_file(), "9").unwrap();
    assert!(matches!(
        StoreDb::open_read_only(&layout),
        Err(DbError::NeedsUpgrade { found: 9, .. })
    ));
}

#[test]
fn realisations() {
    let dir = tempfile::tempdir().unwrap();
    let layout = new_layout(dir.path());
    {
        let mut plain = StoreDb::open(&layout, &DbSettings::default()).unwrap();
        let id = DrvOutput {
            drv_hash: test_hash("drv"),
            output: "out".into(),
        };
        assert!(matches!(
            plain.query_realisation(&id),
            Err(DbError::CaDerivationsDisabled)
        ));
        let r = Realisation {
            id,
            out_path: test_path("x"),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        };
        assert!(matches!(
            plain.register_realisation(&r),
            Err(DbError::CaDerivationsDisabled)
        ));
    }
    let settings = DbSettings {
        ca_derivations: true,
        ..DbSettings::default()
    };
    let mut db = StoreDb::open(&layout, &settings).unwrap();
    assert_eq!(std::fs::read(layout.ca_schema_file()).unwrap(), b"3");
    let dep_out = test_path("dep");
    let out = test_path("out");
    db.register_valid_paths(&[info(&dep_out, &[]), info(&out, &[&dep_out])], no_drvs)
        .unwrap();
    let dep_id = DrvOutput {
        drv_hash: test_hash("dep.drv"),
        output: "out".into(),
    };
    let id = DrvOutput {
        drv_hash: test_hash("main.drv"),
        output: "dev".into(),
    };
    let dep = Realisation {
        id: dep_id.clone(),
        out_path: dep_out.clone(),
        signatures: ["k:1".to_owned()].into(),
        dependent_realisations: BTreeMap::new(),
    };
    let main = Realisation {
        id: id.clone(),
        out_path: out.clone(),
        signatures: ["k:2".to_owned()].into(),
        dependent_realisations: [(dep_id.clone(), dep_out.clone())].into(),
    };
    // The dependency must be registered first.
    assert!(matches!(
        db.register_realisation(&main),
        Err(DbError::RealisationDependency {
            problem: "the non existent",
            ..
        })
    ));
    db.register_realisation(&dep).unwrap();
    db.register_realisation(&main).unwrap();
    assert_eq!(db.query_realisation(&id).unwrap(), Some(main.clone()));
    let stored: (String, String) = db
        .connection()
        .query_row(
            "select drvPath, outputName from Realisations where outputName = 'dev'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        stored,
        (test_hash("main.drv").to_prefixed_base16(), "dev".into())
    );
    // Same output path again: signatures are merged.
    let mut again = main.clone();
    again.signatures = ["k:3".to_owned()].into();
    db.register_realisation(&again).unwrap();
    assert_eq!(
        db.query_realisation(&id).unwrap().unwrap().signatures,
        ["k:2".to_owned(), "k:3".to_owned()].into()
    );
    // Another output path is a conflict.
    let mut other = main.clone();
    other.out_path = dep_out.clone();
    let err = db.register_realisation(&other).unwrap_err();
    assert!(matches!(err, DbError::RealisationConflict { .. }), "{err}");
    // The output path must be valid.
    let unknown = Realisation {
        id: DrvOutput {
            drv_hash: test_hash("u.drv"),
            output: "out".into(),
        },
        out_path: test_path("not-valid"),
        signatures: BTreeSet::new(),
        dependent_realisations: BTreeMap::new(),
    };
    assert!(matches!(
        db.register_realisation(&unknown),
        Err(DbError::NotValid(_))
    ));
    let missing = DrvOutput {
        drv_hash: test_hash("none"),
        output: "out".into(),
    };
    assert_eq!(db.query_realisation(&missing).unwrap(), None);
}

/// A store made by the real `nix-store --add` and `nix-instantiate` is read by ward.
#[test]
fn reads_a_store_made_by_nix() {
    let Some(nix_store) = nix_store() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let root = home.join("root");
    let root_s = root.to_str().unwrap();
    let file = home.join("hello.txt");
    std::fs::write(&file, "hello from nix\n").unwrap();
    let added = run_nix(
        &nix_store,
        &["--store", root_s, "--add", file.to_str().unwrap()],
        home,
    );
    let nix_instantiate = nix_store.with_file_name("nix-instantiate");
    let drv = run_nix(
        &nix_instantiate,
        &[
            "--store",
            root_s,
            "--expr",
            "derivation { name = \"x\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; \
             outputs = [\"out\" \"dev\"]; src = ./hello.txt; }",
        ],
        home,
    );
    let layout = StoreLayout::chroot(&root).unwrap();
    let db = StoreDb::open(&layout, &DbSettings::default()).unwrap();
    let store_dir = StoreDir::default();
    let added = store_dir.parse_path(added.trim()).unwrap();
    let drv = store_dir.parse_path(drv.trim()).unwrap();

    let info = db
        .query_path_info(&added)
        .unwrap()
        .expect("nix registered it");
    let q = |flag: &str, path: &StorePath| {
        run_nix(
            &nix_store,
            &["--store", root_s, "-q", flag, &store_dir.print(path)],
            home,
        )
    };
    assert_eq!(
        q("--hash", &added).trim(),
        info.nar_hash.to_prefixed_nix32()
    );
    assert_eq!(q("--size", &added).trim(), info.nar_size.to_string());
    assert!(info.registration_time > 0);
    assert!(info.references.is_empty() && info.deriver.is_none());
    assert!(info.ca.is_some() && info.is_content_addressed(&store_dir));

    let drv_info = db.query_path_info(&drv).unwrap().unwrap();
    assert_eq!(drv_info.references, [added.clone()].into());
    assert_eq!(db.query_referrers(&added).unwrap(), [drv.clone()].into());
    let outputs = db.query_derivation_outputs(&drv).unwrap();
    assert_eq!(outputs.keys().collect::<Vec<_>>(), ["dev", "out"]);
    let out_paths = run_nix(
        &nix_store,
        &["--store", root_s, "-q", "--outputs", &store_dir.print(&drv)],
        home,
    );
    let expected: BTreeSet<StorePath> = out_paths
        .lines()
        .map(|l| store_dir.parse_path(l).unwrap())
        .collect();
    assert_eq!(outputs.values().cloned().collect::<BTreeSet<_>>(), expected);
    for out in outputs.values() {
        assert_eq!(db.query_valid_derivers(out).unwrap(), [drv.clone()].into());
    }
    assert_eq!(
        db.query_path_from_hash_part(drv.hash_part()).unwrap(),
        Some(drv.clone())
    );
    assert_eq!(db.query_all_valid_paths().unwrap(), [added, drv].into());
}

/// Rows written by ward are read back by the real Nix client.
#[test]
fn nix_reads_rows_written_by_ward() {
    let Some(nix_store) = nix_store() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (layout, mut db) = open_new(home);
    let root = home.join("root");
    let root_s = root.to_str().unwrap();
    let store_dir = StoreDir::default();
    let dep = test_path("dep");
    let main = test_path("main");
    let deriver = test_path("main.drv");
    let mut main_info = info(&main, &[&dep, &main]);
    main_info.deriver = Some(deriver.clone());
    main_info.nar_size = 4242;
    main_info.ultimate = true;
    main_info.sigs = ["cache.example.org-1:AAAA".to_owned()].into();
    let mut dep_info = info(&dep, &[]);
    dep_info.nar_size = 96;
    db.register_valid_paths(&[dep_info, main_info.clone()], no_drvs)
        .unwrap();
    drop(db);
    let main_s = store_dir.print(&main);
    let q = |flag: &str| run_nix(&nix_store, &["--store", root_s, "-q", flag, &main_s], home);
    let refs: BTreeSet<String> = q("--references").lines().map(str::to_owned).collect();
    assert_eq!(refs, [store_dir.print(&dep), main_s.clone()].into());
    assert_eq!(q("--hash").trim(), main_info.nar_hash.to_prefixed_nix32());
    assert_eq!(q("--size").trim(), "4242");
    assert_eq!(q("--deriver").trim(), store_dir.print(&deriver));
    let referrers = run_nix(
        &nix_store,
        &[
            "--store",
            root_s,
            "-q",
            "--referrers",
            &store_dir.print(&dep),
        ],
        home,
    );
    assert!(referrers.lines().any(|l| l == main_s), "{referrers}");
    let nix = nix_store.with_file_name("nix");
    let json = run_nix(
        &nix,
        &[
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--store",
            root_s,
            "--json",
            &main_s,
        ],
        home,
    );
    for needle in [
        format!("\"path\":\"{main_s}\""),
        format!("\"narHash\":\"{}\"", main_info.nar_hash.to_sri()),
        "\"narSize\":4242".to_owned(),
        "\"ultimate\":true".to_owned(),
        "\"signatures\":[\"cache.example.org-1:AAAA\"]".to_owned(),
        format!("\"deriver\":\"{}\"", store_dir.print(&deriver)),
    ] {
        assert!(json.contains(&needle), "{needle} not in {json}");
    }
    // And a second ward open of the store still works after Nix used it.
    StoreDb::open(&layout, &DbSettings::default()).unwrap();
}
