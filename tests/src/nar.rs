//! An independent NAR writer, SHA-256 in the forms Nix prints, nix32, and the store path of a
//! `nix-store --add`-style (NAR, SHA-256, no references) object. Used by the raw-protocol tests
//! and to check ward's answers without trusting ward's own code.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Deepest directory nesting [`dump_path`] follows.
const MAX_DEPTH: usize = 256;

const NIX32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
    let pad = (8 - bytes.len() % 8) % 8;
    out.resize(out.len() + pad, 0);
}

/// The NAR of a single regular file.
pub fn nar_of_file(contents: &[u8], executable: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 128);
    put_str(&mut out, b"nix-archive-1");
    write_regular(&mut out, contents, executable);
    out
}

fn write_regular(out: &mut Vec<u8>, contents: &[u8], executable: bool) {
    for token in [&b"("[..], b"type", b"regular"] {
        put_str(out, token);
    }
    if executable {
        put_str(out, b"executable");
        put_str(out, b"");
    }
    put_str(out, b"contents");
    put_str(out, contents);
    put_str(out, b")");
}

/// The NAR serialisation of a file-system path (regular file, symlink or directory).
pub fn dump_path(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    put_str(&mut out, b"nix-archive-1");
    dump_node(&mut out, path, 0)?;
    Ok(out)
}

fn dump_node(out: &mut Vec<u8>, path: &Path, depth: usize) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other(format!(
            "directory nesting deeper than {MAX_DEPTH} at {}",
            path.display()
        )));
    }
    let meta = fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path)?;
        for token in [&b"("[..], b"type", b"symlink", b"target"] {
            put_str(out, token);
        }
        put_str(out, target.as_os_str().as_bytes());
        put_str(out, b")");
    } else if kind.is_file() {
        let contents = fs::read(path)?;
        write_regular(out, &contents, meta.permissions().mode() & 0o100 != 0);
    } else if kind.is_dir() {
        for token in [&b"("[..], b"type", b"directory"] {
            put_str(out, token);
        }
        let mut names: Vec<Vec<u8>> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            put_str(out, b"entry");
            put_str(out, b"(");
            put_str(out, b"name");
            put_str(out, &name);
            put_str(out, b"node");
            dump_node(
                out,
                &path.join(std::ffi::OsStr::from_bytes(&name)),
                depth + 1,
            )?;
            put_str(out, b")");
        }
        put_str(out, b")");
    } else {
        return Err(std::io::Error::other(format!(
            "{} is neither a regular file, a directory nor a symlink",
            path.display()
        )));
    }
    Ok(())
}

/// A NAR node written exactly as given: directory entries are *not* sorted or checked, so
/// tests can build malformed archives (duplicates, misordering, bad names).
#[derive(Debug, Clone)]
pub enum NarNode {
    /// A regular file.
    File {
        /// Its contents.
        contents: Vec<u8>,
        /// Whether it is executable.
        executable: bool,
    },
    /// A symlink to `target`.
    Symlink(Vec<u8>),
    /// A directory with these entries, in this order.
    Directory(Vec<(Vec<u8>, NarNode)>),
}

impl NarNode {
    /// The whole archive with this node at its root.
    pub fn to_nar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, b"nix-archive-1");
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            NarNode::File {
                contents,
                executable,
            } => write_regular(out, contents, *executable),
            NarNode::Symlink(target) => {
                for token in [&b"("[..], b"type", b"symlink", b"target", target, b")"] {
                    put_str(out, token);
                }
            }
            NarNode::Directory(entries) => {
                for token in [&b"("[..], b"type", b"directory"] {
                    put_str(out, token);
                }
                for (name, node) in entries {
                    for token in [&b"entry"[..], b"(", b"name", name, b"node"] {
                        put_str(out, token);
                    }
                    node.write(out);
                    put_str(out, b")");
                }
                put_str(out, b")");
            }
        }
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lowercase base16.
pub fn base16(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nix's base-32 encoding (most significant 5-bit group first, of the little-endian number).
pub fn nix32(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    let len = (bytes.len() * 8 - 1) / 5 + 1;
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = u32::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |&b| u32::from(b) << (8 - j));
        out.push(char::from(NIX32_ALPHABET[((low | high) & 31) as usize]));
    }
    out
}

/// Standard base64 with padding (how Nix prints SRI hashes).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `sha256-<base64>`, as `nix path-info --json` prints narHash.
pub fn sri_sha256(data: &[u8]) -> String {
    format!("sha256-{}", base64(&sha256(data)))
}

fn compress_to_20(hash: &[u8; 32]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in hash.iter().enumerate() {
        out[i % 20] ^= b;
    }
    out
}

/// The store path `nix-store --add` gives an object with this NAR (NAR ingestion, SHA-256,
/// no references), and its `ca` string.
pub fn source_path(store_dir: &str, name: &str, nar: &[u8]) -> (String, String) {
    let nar_hash = sha256(nar);
    let fingerprint = format!("source:sha256:{}:{store_dir}:{name}", base16(&nar_hash));
    let hash_part = nix32(&compress_to_20(&sha256(fingerprint.as_bytes())));
    (
        format!("{store_dir}/{hash_part}-{name}"),
        format!("fixed:r:sha256:{}", nix32(&nar_hash)),
    )
}

/// A well-formed input-addressed store path whose hash part is derived from `seed` (for
/// paths that are imported with explicit metadata rather than computed from content).
pub fn made_up_path(store_dir: &str, name: &str, seed: &str) -> String {
    let hash_part = nix32(&compress_to_20(&sha256(seed.as_bytes())));
    format!("{store_dir}/{hash_part}-{name}")
}

/// One path in the `nix-store --export` format.
#[derive(Debug, Clone, Copy)]
pub struct ExportEntry<'a> {
    /// The store path.
    pub path: &'a str,
    /// Its references (full store paths).
    pub references: &'a [&'a str],
    /// Its deriver, or "".
    pub deriver: &'a str,
    /// Its NAR.
    pub nar: &'a [u8],
}

/// The `nix-store --export` format of several paths (references first), as
/// `nix-store --import` reads it: per path a `1`, the NAR, the export magic, the path, its
/// references, its deriver and a `0` (no signature); then a final `0`.
pub fn export_stream(entries: &[ExportEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(entry.nar);
        out.extend_from_slice(&0x4558_494eu64.to_le_bytes());
        put_str(&mut out, entry.path.as_bytes());
        out.extend_from_slice(&(entry.references.len() as u64).to_le_bytes());
        for reference in entry.references {
            put_str(&mut out, reference.as_bytes());
        }
        put_str(&mut out, entry.deriver.as_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_nar_matches_the_nix_vector() {
        let nar = nar_of_file(b"hello\n", false);
        assert_eq!(nar.len(), 120);
        assert_eq!(
            base16(&sha256(&nar)),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );
        assert_eq!(
            nix32(&sha256(&nar)),
            "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
        assert_eq!(
            sri_sha256(&nar),
            "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
        );
    }

    #[test]
    fn nix32_matches_the_nix_vectors() {
        assert_eq!(
            nix32(&sha256(b"hello\n")),
            "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
        );
        assert_eq!(nix32(&[0u8; 20]), "0".repeat(32));
        assert_eq!(nix32(&[0xffu8; 20]), "z".repeat(32));
    }

    #[test]
    fn source_path_matches_nix_store_add() {
        // `nix-store --add hello.txt` (contents "hello\n") in /nix/store, checked with Nix 2.8.
        let (path, ca) = source_path("/nix/store", "hello.txt", &nar_of_file(b"hello\n", false));
        assert_eq!(
            path,
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
        );
        assert_eq!(
            ca,
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
    }

    #[test]
    fn dump_path_of_a_file_equals_nar_of_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = crate::inputs::executable(tmp.path(), "x", b"#!/bin/sh\n");
        assert_eq!(
            dump_path(&f).expect("dump"),
            nar_of_file(b"#!/bin/sh\n", true)
        );
    }

    #[test]
    fn nar_node_of_a_sorted_tree_equals_dump_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = crate::inputs::directory(tmp.path(), "d");
        crate::inputs::file(&dir, "a", b"a\n");
        crate::inputs::executable(&dir, "b", b"b\n");
        std::os::unix::fs::symlink("a", dir.join("c")).expect("symlink");
        let node = NarNode::Directory(vec![
            (
                b"a".to_vec(),
                NarNode::File {
                    contents: b"a\n".to_vec(),
                    executable: false,
                },
            ),
            (
                b"b".to_vec(),
                NarNode::File {
                    contents: b"b\n".to_vec(),
                    executable: true,
                },
            ),
            (b"c".to_vec(), NarNode::Symlink(b"a".to_vec())),
        ]);
        assert_eq!(node.to_nar(), dump_path(&dir).expect("dump"));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
