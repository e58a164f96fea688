//! AddBuildLog: a derivation's build log, written where Nix reads it:
//! `<log dir>/drvs/<first 2 chars of the base name>/<rest>.bz2` (bzip2, with
//! `compress-build-log = true`, the default) or `.../<rest>` uncompressed. The log is written
//! to a temporary file and renamed into place, replacing an older log of the same derivation;
//! the other variant, if present, is removed so that readers (which prefer the uncompressed
//! one) see the new log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ward_proto::store_path::StorePath;

/// Makes temporary file names unique within this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Why a log could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BuildLogError {
    /// The path is not a derivation.
    #[error("'{0}' is not a derivation")]
    NotADerivation(String),
    /// Reading the log from its pipe failed (including the peer going away).
    #[error("reading the build log: {0}")]
    Read(#[source] io::Error),
    /// Writing the log failed.
    #[error("{action} '{path}': {source}")]
    Write {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where the log of `drv` goes: `(directory, file name without .bz2)`.
pub fn log_location(log_dir: &Path, drv: &StorePath) -> (PathBuf, String) {
    let base = drv.base_name();
    // Store path base names are ASCII and longer than 2 bytes (32-char hash part).
    let (prefix, rest) = base.split_at(2);
    (log_dir.join("drvs").join(prefix), rest.to_owned())
}

/// Writes the log read from `source` for `drv`.
pub fn write_build_log(
    log_dir: &Path,
    drv: &StorePath,
    compress: bool,
    mut source: impl Read,
) -> Result<PathBuf, BuildLogError> {
    if !drv.is_derivation() {
        return Err(BuildLogError::NotADerivation(drv.base_name().to_owned()));
    }
    let (dir, rest) = log_location(log_dir, drv);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(|source| BuildLogError::Write {
            action: "creating directory",
            path: dir.clone(),
            source,
        })?;
    let plain = dir.join(&rest);
    let bz2 = dir.join(format!("{rest}.bz2"));
    let (target, other) = if compress { (bz2, plain) } else { (plain, bz2) };
    let temp = dir.join(format!(
        "{rest}.tmp.{}.{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ));
    let write_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| BuildLogError::Write {
            action,
            path,
            source,
        }
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .map_err(write_err("creating", &temp))?;
    let written = copy_log(&mut source, file, compress, &temp);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&temp, &target) {
        let _ = std::fs::remove_file(&temp);
        return Err(write_err("renaming into", &target)(e));
    }
    match std::fs::remove_file(&other) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err("removing the older log", &other)(e)),
    }
    Ok(target)
}

fn copy_log(
    source: &mut impl Read,
    file: File,
    compress: bool,
    temp: &Path,
) -> Result<(), BuildLogError> {
    let write_err = |source| BuildLogError::Write {
        action: "writing",
        path: temp.to_owned(),
        source,
    };
    let mut buf = vec![0u8; 64 * 1024];
    if compress {
        let mut encoder = bzip2::write::BzEncoder::new(file, bzip2::Compression::default());
        copy_through(source, &mut encoder, &mut buf, write_err)?;
        encoder.finish().map_err(write_err)?;
    } else {
        let mut file = file;
        copy_through(source, &mut file, &mut buf, write_err)?;
    }
    Ok(())
}

fn copy_through(
    source: &mut impl Read,
    sink: &mut impl Write,
    buf: &mut [u8],
    write_err: impl Fn(io::Error) -> BuildLogError,
) -> Result<(), BuildLogError> {
    loop {
        let n = match source.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BuildLogError::Read(e)),
        };
        sink.write_all(&buf[..n]).map_err(&write_err)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv";

    fn drv() -> StorePath {
        StorePath::from_base_name(DRV).unwrap()
    }

    #[test]
    fn compressed_logs_go_where_nix_reads_them_and_decompress() {
        let dir = tempfile::tempdir().unwrap();
        let log = b"building hello\n".repeat(1000);
        let path = write_build_log(dir.path(), &drv(), true, &log[..]).unwrap();
        assert_eq!(
            path,
            dir.path()
                .join("drvs/7h/7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv.bz2")
        );
        let mut back = Vec::new();
        bzip2::read::BzDecoder::new(File::open(&path).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, log);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_new_log_replaces_the_old_one_in_either_form() {
        let dir = tempfile::tempdir().unwrap();
        let bz2 = write_build_log(dir.path(), &drv(), true, &b"old"[..]).unwrap();
        let plain = write_build_log(dir.path(), &drv(), false, &b"new"[..]).unwrap();
        assert_eq!(std::fs::read(&plain).unwrap(), b"new");
        assert!(!bz2.exists());
        write_build_log(dir.path(), &drv(), true, &b"newer"[..]).unwrap();
        assert!(!plain.exists());
    }

    #[test]
    fn only_derivations_have_logs() {
        let dir = tempfile::tempdir().unwrap();
        let not_drv = StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello").unwrap();
        let e = write_build_log(dir.path(), &not_drv, true, &b""[..]).unwrap_err();
        assert!(e.to_string().contains("is not a derivation"), "{e}");
    }

    #[test]
    fn a_failing_source_leaves_no_file() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let e = write_build_log(dir.path(), &drv(), true, Failing).unwrap_err();
        assert!(matches!(e, BuildLogError::Read(_)), "{e}");
        let (sub, _) = log_location(dir.path(), &drv());
        assert_eq!(std::fs::read_dir(sub).unwrap().count(), 0);
    }
}
