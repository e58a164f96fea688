//! Helpers shared by the unit tests: fresh stores, sample path infos, and running the real
//! Nix 2.8 client against a chroot store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::store_path::{StoreDir, StorePath};

use crate::layout::{CreateOptions, StoreLayout};
use ward_proto::path_info::ValidPathInfo;

/// The Nix 2.8 `nix-store` the interop tests use, or `None` (with a printed reason).
pub fn nix_store() -> Option<PathBuf> {
    let path = Path::new("/usr/bin/nix-store");
    if path.exists() {
        Some(path.to_owned())
    } else {
        eprintln!("skipping: /usr/bin/nix-store is not installed, cannot compare with Nix");
        None
    }
}

/// Runs a Nix command with HOME and caches inside `home`; panics with its stderr on failure.
pub fn run_nix(program: &Path, args: &[&str], home: &Path) -> String {
    let output = try_nix(program, args, home);
    assert!(
        output.status.success(),
        "{} {:?} failed: {}",
        program.display(),
        args,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("nix prints UTF-8")
}

/// Runs a Nix command and returns its output whatever the exit status.
pub fn try_nix(program: &Path, args: &[&str], home: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("NIX_REMOTE")
        .output()
        .expect("running nix")
}

/// A created chroot store layout in `dir/root`.
pub fn new_layout(dir: &Path) -> StoreLayout {
    let layout = StoreLayout::chroot(&dir.join("root")).unwrap();
    layout.create(&CreateOptions::default()).unwrap();
    layout
}

/// A deterministic but distinct SHA-256 for tests.
pub fn test_hash(seed: &str) -> Hash {
    Hash::compute(HashAlgo::Sha256, seed.as_bytes())
}

/// An input-addressed-looking path named `name` (hash part derived from the name).
pub fn test_path(name: &str) -> StorePath {
    StoreDir::default()
        .make_store_path("output:out", &test_hash(name), name)
        .unwrap()
}

/// Path info with the given references and otherwise default fields.
pub fn info(path: &StorePath, refs: &[&StorePath]) -> ValidPathInfo {
    ValidPathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash: test_hash(path.base_name()),
        references: refs.iter().map(|r| (*r).clone()).collect(),
        registration_time: 0,
        nar_size: 0,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: None,
    }
}

/// A text content address for `contents` and the path it gives.
pub fn text_ca(
    name: &str,
    contents: &[u8],
    refs: &BTreeSet<StorePath>,
) -> (StorePath, ContentAddress) {
    let hash = Hash::compute(HashAlgo::Sha256, contents);
    let path = StoreDir::default()
        .make_text_path(name, &hash, refs)
        .unwrap();
    (
        path,
        ContentAddress {
            method: ContentAddressMethod::Text,
            hash,
        },
    )
}

/// A NAR-hashed (`fixed:r:sha256`) content address for a NAR hash and the path it gives.
pub fn source_ca(
    name: &str,
    nar_hash: &Hash,
    refs: &BTreeSet<StorePath>,
) -> (StorePath, ContentAddress) {
    let path = StoreDir::default()
        .make_fixed_output_path(name, FileIngestionMethod::Recursive, nar_hash, refs, false)
        .unwrap();
    (
        path,
        ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            hash: *nar_hash,
        },
    )
}
