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

/// A node of a test tree, written with [`NarWriter`](ward_proto::nar::NarWriter).
#[derive(Debug, Clone)]
pub enum Node {
    /// A regular file.
    File { executable: bool, contents: Vec<u8> },
    /// A symlink.
    Symlink(String),
    /// A directory; entries must be given sorted.
    Dir(Vec<(String, Node)>),
}

/// A regular file node.
pub fn file(contents: &[u8]) -> Node {
    Node::File {
        executable: false,
        contents: contents.to_vec(),
    }
}

/// The NAR of a test tree.
pub fn nar_of(node: &Node) -> Vec<u8> {
    fn write(w: &mut ward_proto::nar::NarWriter<Vec<u8>>, node: &Node) {
        match node {
            Node::File {
                executable,
                contents,
            } => w.file_from_bytes(*executable, contents).unwrap(),
            Node::Symlink(target) => w.symlink(target.as_bytes()).unwrap(),
            Node::Dir(entries) => {
                w.directory().unwrap();
                for (name, child) in entries {
                    w.entry(name.as_bytes()).unwrap();
                    write(w, child);
                }
                w.end_directory().unwrap();
            }
        }
    }
    let mut w = ward_proto::nar::NarWriter::new(Vec::new());
    write(&mut w, node);
    w.finish().unwrap()
}

/// Raw NAR token encoding (length, bytes, padding), for archives the writer refuses to make.
pub fn nar_tokens(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(&(t.len() as u64).to_le_bytes());
        out.extend_from_slice(t);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

/// Claimed info for `nar`, content-addressed as a `fixed:r:sha256` source named `name`, so the
/// path is one Nix would accept for these bytes.
pub fn claim_for(name: &str, nar: &[u8], refs: &[&StorePath]) -> ValidPathInfo {
    let nar_hash = Hash::compute(HashAlgo::Sha256, nar);
    let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
    let (path, ca) = source_ca(name, &nar_hash, &refs);
    ValidPathInfo {
        path,
        deriver: None,
        nar_hash,
        references: refs,
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: Some(ca),
    }
}

/// Claimed info for `nar` under an input-addressed-looking path (no content address).
pub fn plain_claim(name: &str, nar: &[u8], refs: &[&StorePath]) -> ValidPathInfo {
    let mut info = info(&test_path(name), refs);
    info.nar_hash = Hash::compute(HashAlgo::Sha256, nar);
    info.nar_size = nar.len() as u64;
    info
}
