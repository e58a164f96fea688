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
    file(
        &root,
        "README",
        format!("a test tree ({seed})\n").as_bytes(),
    );
    let bin = directory(&root, "bin");
    executable(
        &bin,
        "hello",
        format!("#!/bin/sh\necho hello {seed}\n").as_bytes(),
    );
    symlink("bin/hello", root.join("hello-link")).expect("creating a symlink");
    directory(&root, "empty");
    let nested = directory(&root.join("sub"), "nested");
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut data = vec![0u8, 0xff, 0xfe, b'\n'];
    data.extend_from_slice(seed.as_bytes());
    file(&nested, "data", &data);
    root
}

/// Panics unless the trees at `actual` and `expected` agree in everything a store keeps: node
/// kinds, names, contents, symlink targets, permission bits and modification times.
pub fn assert_same_tree(actual: &Path, expected: &Path) {
    let mut differences = Vec::new();
    compare_nodes(actual, expected, &mut differences, 0);
    assert!(
        differences.is_empty(),
        "{} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        differences.join("\n  ")
    );
}

fn compare_nodes(actual: &Path, expected: &Path, out: &mut Vec<String>, depth: usize) {
    use std::os::unix::fs::MetadataExt;
    if depth > 64 {
        out.push(format!("{}: nested too deep to compare", actual.display()));
        return;
    }
    let (a, e) = match (fs::symlink_metadata(actual), fs::symlink_metadata(expected)) {
        (Ok(a), Ok(e)) => (a, e),
        (a, e) => {
            out.push(format!(
                "{}: {:?} vs {:?}",
                actual.display(),
                a.err(),
                e.err()
            ));
            return;
        }
    };
    let kind = |m: &fs::Metadata| {
        let t = m.file_type();
        if t.is_symlink() {
            "symlink"
        } else if t.is_dir() {
            "directory"
        } else if t.is_file() {
            "file"
        } else {
            "special file"
        }
    };
    if kind(&a) != kind(&e) {
        out.push(format!(
            "{}: a {} where real Nix has a {}",
            actual.display(),
            kind(&a),
            kind(&e)
        ));
        return;
    }
    if !a.file_type().is_symlink() && a.mode() & 0o7777 != e.mode() & 0o7777 {
        out.push(format!(
            "{}: mode {:o}, real Nix {:o}",
            actual.display(),
            a.mode() & 0o7777,
            e.mode() & 0o7777
        ));
    }
    if a.mtime() != e.mtime() {
        out.push(format!(
            "{}: mtime {}, real Nix {}",
            actual.display(),
            a.mtime(),
            e.mtime()
        ));
    }
    match kind(&a) {
        "symlink" => {
            let (ta, te) = (fs::read_link(actual).ok(), fs::read_link(expected).ok());
            if ta != te {
                out.push(format!(
                    "{}: target {ta:?}, real Nix {te:?}",
                    actual.display()
                ));
            }
        }
        "file" if fs::read(actual).ok() != fs::read(expected).ok() => {
            out.push(format!("{}: contents differ", actual.display()));
        }
        "directory" => {
            let names = |p: &Path| -> Vec<std::ffi::OsString> {
                let mut v: Vec<_> = fs::read_dir(p)
                    .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                v.sort();
                v
            };
            let (na, ne) = (names(actual), names(expected));
            if na != ne {
                out.push(format!(
                    "{}: entries {na:?}, real Nix {ne:?}",
                    actual.display()
                ));
                return;
            }
            for name in na {
                compare_nodes(&actual.join(&name), &expected.join(&name), out, depth + 1);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_every_node_kind() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tree(tmp.path(), "t", "seed");
        assert!(root.join("README").is_file());
        let mode = fs::metadata(root.join("bin/hello"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let link = fs::symlink_metadata(root.join("hello-link")).expect("lstat");
        assert!(link.file_type().is_symlink());
        assert_eq!(
            fs::read_link(root.join("hello-link")).expect("readlink"),
            Path::new("bin/hello")
        );
        assert!(root.join("empty").is_dir());
        assert!(fs::read(root.join("sub/nested/data"))
            .expect("read")
            .starts_with(&[0, 0xff]));
    }

    #[test]
    fn same_tree_passes_and_differences_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = tree(tmp.path(), "a", "x");
        let b = tree(tmp.path(), "b", "x");
        // Same content; give every node the same time, as a store does.
        for root in [&a, &b] {
            let status = std::process::Command::new("find")
                .arg(root)
                .args(["-exec", "touch", "-h", "-d", "@1", "{}", "+"])
                .status()
                .expect("find");
            assert!(status.success());
        }
        assert_same_tree(&a, &b);
        file(&b, "README", b"changed\n");
        let mut out = Vec::new();
        compare_nodes(&a, &b, &mut out, 0);
        assert!(
            out.iter()
                .any(|d| d.contains("README") && d.contains("contents")),
            "{out:?}"
        );
    }
}
