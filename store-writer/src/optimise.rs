//! OptimiseStore (`nix-store --optimise`, `nix store optimise`), as Nix does it: every regular
//! file of every valid path is hashed (SHA-256 of its NAR, so the executable bit counts) and
//! hard-linked to `<store>/.links/<nix32 hash>`; a file whose twin is already there is
//! replaced, atomically, by a link to it (a temporary link in the store directory renamed
//! over the file, its directory made writable just for that). Files already linked are
//! skipped by inode. The caller holds the store, so nothing is added meanwhile.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use ward_proto::hash::{HashAlgo, Hasher};

use ward_proto::store_path::StorePath;

use crate::db::DbError;
use crate::store::Store;

/// The directory of the links, inside the store directory.
pub const LINKS_DIR: &str = ".links";

/// What an optimisation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OptimiseStats {
    /// Files replaced by a link to an identical one.
    pub files_linked: u64,
    /// Their sizes, summed.
    pub bytes_freed: u64,
    /// Problems met and stepped over (in Nix's words), for the log.
    pub warnings: Vec<String>,
}

/// An optimisation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum OptimiseError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The file system.
    #[error("{what} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OptimiseError + 'a {
    move |source| OptimiseError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Hard-links identical files of all valid paths (see the module documentation).
    pub fn optimise(&mut self) -> Result<OptimiseStats, OptimiseError> {
        let links = self.links_dir()?;
        // Inodes already in .links: their files need no hashing.
        let mut linked: HashSet<u64> = HashSet::new();
        for entry in fs::read_dir(&links).map_err(io("reading directory", &links))? {
            let entry = entry.map_err(io("reading directory", &links))?;
            if let Ok(meta) = entry.metadata() {
                linked.insert(meta.ino());
            }
        }
        let paths: Vec<StorePath> = self.db.query_all_valid_paths()?.into_iter().collect();
        self.optimise_with(&paths, &links, &mut linked)
    }

    /// The same for `paths` only (`auto-optimise-store`, just after they were registered:
    /// without reading all of `.links` first, as Nix does for one path).
    pub fn optimise_paths(&mut self, paths: &[StorePath]) -> Result<OptimiseStats, OptimiseError> {
        let links = self.links_dir()?;
        self.optimise_with(paths, &links, &mut HashSet::new())
    }

    fn links_dir(&self) -> Result<PathBuf, OptimiseError> {
        let links = self.layout.real_store_dir().join(LINKS_DIR);
        match fs::create_dir(&links) {
            Ok(()) => Ok(links),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(links),
            Err(e) => Err(io("creating directory", &links)(e)),
        }
    }

    fn optimise_with(
        &self,
        paths: &[StorePath],
        links: &Path,
        linked: &mut HashSet<u64>,
    ) -> Result<OptimiseStats, OptimiseError> {
        let real = self.layout.real_store_dir().to_owned();
        let mut stats = OptimiseStats::default();
        for path in paths {
            let top = self.layout.real_path(path);
            self.optimise_tree(&top, &real, links, linked, &mut stats)?;
        }
        Ok(stats)
    }

    fn optimise_tree(
        &self,
        top: &Path,
        real: &Path,
        links: &Path,
        linked: &mut HashSet<u64>,
        stats: &mut OptimiseStats,
    ) -> Result<(), OptimiseError> {
        let mut todo = vec![top.to_path_buf()];
        while let Some(path) = todo.pop() {
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue; // gone: VerifyStore's business
            };
            if meta.is_dir() {
                for entry in fs::read_dir(&path).map_err(io("reading directory", &path))? {
                    let entry = entry.map_err(io("reading directory", &path))?;
                    todo.push(entry.path());
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            if meta.mode() & 0o200 != 0 {
                stats.warnings.push(format!(
                    "skipping suspicious writable file '{}'",
                    path.display()
                ));
                continue;
            }
            if meta.nlink() > 1 && linked.contains(&meta.ino()) {
                continue;
            }
            let mut hasher = Hasher::new(HashAlgo::Sha256);
            if let Err(e) = ward_proto::nar::dump_path(&path, &mut hasher) {
                stats
                    .warnings
                    .push(format!("cannot hash '{}': {e}", path.display()));
                continue;
            }
            let link = links.join(hasher.finish().to_nix32());
            match fs::symlink_metadata(&link) {
                Err(_) => match fs::hard_link(&path, &link) {
                    Ok(()) => {
                        linked.insert(meta.ino());
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        stats.warnings.push(format!(
                            "cannot link '{}' to '{}': {e}",
                            link.display(),
                            path.display()
                        ));
                        continue;
                    }
                },
                Ok(link_meta) if link_meta.size() != meta.size() => {
                    stats
                        .warnings
                        .push(format!("removing corrupted link '{}'", link.display()));
                    fs::remove_file(&link).map_err(io("removing", &link))?;
                    fs::hard_link(&path, &link).map_err(io("linking", &link))?;
                    linked.insert(meta.ino());
                    continue;
                }
                Ok(_) => {}
            }
            let link_meta = fs::symlink_metadata(&link).map_err(io("reading", &link))?;
            if link_meta.ino() == meta.ino() {
                continue;
            }
            if self.replace_with_link(&path, &link, real, stats)? {
                stats.files_linked += 1;
                stats.bytes_freed += meta.size();
            }
        }
        Ok(())
    }

    /// Renames a fresh link to `link` over `path`, with `path`'s directory writable only for
    /// the rename (the store directory itself is left as it is). False when the file system
    /// allows no more links to `link`.
    fn replace_with_link(
        &self,
        path: &Path,
        link: &Path,
        real: &Path,
        stats: &mut OptimiseStats,
    ) -> Result<bool, OptimiseError> {
        let dir = path.parent().unwrap_or(real);
        let toggle = dir != real;
        let dir_mode = fs::symlink_metadata(dir)
            .map_err(io("reading", dir))?
            .mode()
            & 0o7777;
        if toggle {
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode | 0o200))
                .map_err(io("making writable", dir))?;
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temp = real.join(format!(
            ".tmp-link-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let result = fs::hard_link(link, &temp)
            .and_then(|()| fs::rename(&temp, path).inspect_err(|_| drop(fs::remove_file(&temp))));
        if toggle {
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))
                .map_err(io("making read-only", dir))?;
            // Back to the canonical time stamp a rename changed.
            if let Ok(handle) = fs::File::open(dir) {
                let _ = handle.set_modified(UNIX_EPOCH + Duration::from_secs(1));
            }
        }
        match result {
            Ok(()) => Ok(true),
            // Too many links to one file (empty files, typically): leave this one be.
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                stats
                    .warnings
                    .push(format!("'{}' has maximum number of links", link.display()));
                Ok(false)
            }
            Err(e) => Err(io("linking", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::add::AddOptions;
    use crate::db::DbSettings;
    use crate::layout::CreateOptions;
    use crate::test_support::new_layout;
    use std::collections::BTreeSet;
    use ward_proto::content_address::{ContentAddressMethod, FileIngestionMethod};
    use ward_proto::nar::NarWriter;

    /// A directory path holding `files` (name, contents, executable).
    fn add_tree(store: &mut Store, name: &str, files: &[(&str, &[u8], bool)]) -> StorePath {
        let mut nar = NarWriter::new(Vec::new());
        nar.directory().unwrap();
        let mut sorted: Vec<_> = files.to_vec();
        sorted.sort_by_key(|f| f.0);
        for (file, contents, exec) in sorted {
            nar.entry(file.as_bytes()).unwrap();
            nar.file_from_bytes(exec, contents).unwrap();
        }
        nar.end_directory().unwrap();
        let bytes = nar.finish().unwrap();
        store
            .add_from_content(
                name,
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                HashAlgo::Sha256,
                &BTreeSet::new(),
                &bytes[..],
                AddOptions::default(),
            )
            .unwrap()
            .0
            .path
    }

    #[test]
    fn identical_files_are_linked_once_and_the_contents_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(
            new_layout(tmp.path()),
            &CreateOptions::default(),
            &DbSettings::default(),
        )
        .unwrap();
        let same = b"the same bytes, twice\n".as_slice();
        let a = add_tree(&mut store, "a", &[("f", same, false), ("x", same, true)]);
        let b = add_tree(&mut store, "b", &[("g", same, false)]);
        let stats = store.optimise().unwrap();
        assert_eq!(stats.files_linked, 1, "{stats:?}");
        assert_eq!(stats.bytes_freed, same.len() as u64);
        let fa = store.layout.real_path(&a).join("f");
        let fb = store.layout.real_path(&b).join("g");
        let xa = store.layout.real_path(&a).join("x");
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&fa), ino(&fb), "identical files share an inode");
        assert_ne!(
            ino(&fa),
            ino(&xa),
            "the executable one is not the same file in a NAR"
        );
        assert_eq!(fs::read(&fb).unwrap(), same);
        // Directories are read-only again.
        let mode = fs::symlink_metadata(store.layout.real_path(&b))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o222, 0, "{mode:o}");
        // Again: nothing left to do.
        let again = store.optimise().unwrap();
        assert_eq!((again.files_linked, again.bytes_freed), (0, 0), "{again:?}");
        // And the store still verifies.
        assert!(!store.verify(true, false).unwrap().errors_found);
    }
}
