//! Input files and trees to add to a store. Everything is world-readable so that multi-user
//! tests can hand the inputs to the unprivileged test user.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes a regular, non-executable file (mode 0644) and returns its path.
pub fn file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
    path
}

/// Writes an executable file (mode 0755) and returns its path.
pub fn executable(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = file(dir, name, contents);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod executable");
    path
}

/// Creates a directory (mode 0755) and returns its path.
pub fn directory(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod directory");
    path
}

/// Builds a small tree under `dir/name` exercising every NAR node kind and returns its path:
///
/// ```text
/// name/
///   README            regular file
///   bin/hello         executable
///   hello-link        symlink to bin/hello (relative)
///   empty/            empty directory
///   sub/nested/data   file two levels down, with bytes that are not UTF-8
/// ```
///
/// `seed` goes into the file contents, so different seeds give different store paths.
pub fn tree(dir: &Path, name: &str, seed: &str) -> PathBuf {
    let root = directory(dir, name);
    file(&root, "README", format!("a test tree ({seed})\n").as_bytes());
    let bin = directory(&root, "bin");
    executable(&bin, "hello", format!("#!/bin/sh\necho hello {seed}\n").as_bytes());
    symlink("bin/hello", root.join("hello-link")).expect("creating a symlink");
    directory(&root, "empty");
    let nested = directory(&root.join("sub"), "nested");
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut data = vec![0u8, 0xff, 0xfe, b'\n'];
    data.extend_from_slice(seed.as_bytes());
    file(&nested, "data", &data);
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_every_node_kind() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tree(tmp.path(), "t", "seed");
        assert!(root.join("README").is_file());
        let mode = fs::metadata(root.join("bin/hello")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o111, 0o111);
        let link = fs::symlink_metadata(root.join("hello-link")).expect("lstat");
        assert!(link.file_type().is_symlink());
        assert_eq!(fs::read_link(root.join("hello-link")).expect("readlink"), Path::new("bin/hello"));
        assert!(root.join("empty").is_dir());
        assert!(fs::read(root.join("sub/nested/data")).expect("read").starts_with(&[0, 0xff]));
    }
}
