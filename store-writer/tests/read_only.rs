//! The frontend's view of the database: another, unprivileged user opening it read-only while
//! the store-writer has it open, as `ward_store::db` documents.
//!
//! The reader is this test binary itself, run as `nobody` with `setpriv`, executing the
//! ignored test `read_only_child`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ward_proto::nar::NarWriter;
use ward_proto::store_path::StoreDir;
use ward_store::db::{DbSettings, StoreDb};
use ward_store::layout::{CreateOptions, StoreLayout};
use ward_store::{AddOptions, Store};

const ROOT_ENV: &str = "WARD_READ_ONLY_CHILD_ROOT";
const PATH_ENV: &str = "WARD_READ_ONLY_CHILD_PATH";
const NOBODY: u32 = 65534;

#[test]
#[ignore = "helper process for unprivileged_reader_sees_the_writers_rows; does nothing alone"]
fn read_only_child() {
    let (Some(root), Some(path)) = (std::env::var_os(ROOT_ENV), std::env::var(PATH_ENV).ok())
    else {
        eprintln!("read_only_child only runs as a child of its parent test");
        return;
    };
    let layout = StoreLayout::chroot(Path::new(&root)).unwrap();
    let mut db = StoreDb::open_read_only(&layout).unwrap();
    let path = StoreDir::default().parse_path(&path).unwrap();
    assert!(db.is_valid(&path).unwrap());
    let info = db.query_path_info(&path).unwrap().unwrap();
    assert_eq!(info.path, path);
    assert!(db
        .add_signatures(&path, &["k:s".to_owned()].into())
        .is_err());
}

fn run_reader(root: &Path, path: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "read_only_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(ROOT_ENV, root)
        .env(PATH_ENV, path)
        .output()
        .unwrap()
}

#[test]
fn unprivileged_reader_sees_the_writers_rows() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: running the reader as another user needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping: setpriv (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    let layout = StoreLayout::chroot(&root).unwrap();
    let mut store = Store::open(
        layout.clone(),
        &CreateOptions::default(),
        &DbSettings::default(),
    )
    .unwrap();
    let mut nar = NarWriter::new(Vec::new());
    nar.file_from_bytes(false, b"shared").unwrap();
    let nar = nar.finish().unwrap();
    let (info, _) = store
        .add_from_content(
            "shared",
            ward_proto::content_address::ContentAddressMethod::Fixed(
                ward_proto::content_address::FileIngestionMethod::Recursive,
            ),
            ward_proto::hash::HashAlgo::Sha256,
            &Default::default(),
            &nar[..],
            AddOptions::default(),
        )
        .unwrap();
    let printed = StoreDir::default().print(&info.path);

    // Nix makes big-lock 0600; the frontend needs read access to it (its group, 0640).
    let denied = run_reader(&root, &printed);
    assert!(
        !denied.status.success(),
        "big-lock 0600 keeps other users out"
    );
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("big-lock"),
        "the error names the lock file: {}",
        String::from_utf8_lossy(&denied.stdout)
    );
    std::fs::set_permissions(
        layout.big_lock_file(),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    // With the writer holding the database open, the -wal and -shm files exist and a
    // read-only reader that cannot write them (or the db directory) works.
    let out = run_reader(&root, &printed);
    assert!(
        out.status.success(),
        "reader failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Without a writer SQLite has removed -wal and -shm, and a reader that cannot create them
    // cannot open the database: the store-writer must be up before the frontend.
    drop(store);
    let out = run_reader(&root, &printed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "expected the reader to fail without a writer"
    );
    assert!(
        stdout.contains("readonly database") && stdout.contains("db.sqlite"),
        "{stdout}"
    );
}
