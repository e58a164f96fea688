//! The output of `ward-gc-roots`, the root-side helper that lists the store paths in use:
//! records of three NUL-terminated fields (`kind`, `link`, `target`), ending with an `end`
//! record so that a helper that died half-way is never mistaken for one that found few roots.
//! The helper (`broker/src/gc_roots.rs`) writes them; the store-writer and the frontend read
//! them here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::store_path::{StoreDir, StorePath};

/// Most bytes of helper output accepted (a million roots of 256 bytes).
pub const MAX_OUTPUT: usize = 256 << 20;

/// One root the helper found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RootRecord {
    /// A symlink under `gcroots/` or `profiles/`, or a user's link an indirect root names,
    /// pointing into the store (perhaps below a store path).
    Link {
        /// The link.
        link: PathBuf,
        /// What it points to.
        target: String,
    },
    /// A regular file under `gcroots/` whose name is a store path's.
    File {
        /// The file.
        link: PathBuf,
        /// The store path its name gives.
        target: String,
    },
    /// A store path a running process uses.
    Runtime {
        /// Where it was seen (`/proc/N/fd/M`, `/proc/N/maps`, …).
        link: String,
        /// The path named (perhaps below a store path).
        target: String,
    },
    /// A link in `gcroots/auto/` whose target is gone.
    Stale {
        /// The link in `gcroots/auto/`.
        link: PathBuf,
        /// The vanished target.
        target: PathBuf,
    },
    /// A temporary root of a live process.
    Temp {
        /// The owner's pid.
        owner: String,
        /// The path.
        target: String,
    },
    /// A potential root that could not be read.
    Unreadable {
        /// The path.
        link: PathBuf,
        /// Why.
        reason: String,
    },
}

impl RootRecord {
    /// The store path this record keeps alive, if any.
    pub fn store_path(&self, store_dir: &StoreDir) -> Option<StorePath> {
        let target = match self {
            RootRecord::Link { target, .. }
            | RootRecord::File { target, .. }
            | RootRecord::Runtime { target, .. }
            | RootRecord::Temp { target, .. } => target,
            RootRecord::Stale { .. } | RootRecord::Unreadable { .. } => return None,
        };
        store_dir
            .parse_path_with_suffix(target)
            .ok()
            .map(|(path, _)| path)
    }
}

/// The helper's output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootsFormatError {
    /// The output stops before the `end` record: the helper failed.
    #[error("the roots helper stopped before it finished")]
    Truncated,
    /// A record of an unknown kind.
    #[error("the roots helper wrote a record of unknown kind '{0}'")]
    UnknownKind(String),
    /// More output than [`MAX_OUTPUT`].
    #[error("the roots helper wrote more than {MAX_OUTPUT} bytes")]
    TooLarge,
}

/// Reads the helper's whole output.
pub fn parse_records(bytes: &[u8]) -> Result<Vec<RootRecord>, RootsFormatError> {
    if bytes.len() > MAX_OUTPUT {
        return Err(RootsFormatError::TooLarge);
    }
    let mut fields = bytes.split(|b| *b == 0);
    let mut records = Vec::new();
    loop {
        let (Some(kind), Some(link), Some(target)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(RootsFormatError::Truncated);
        };
        let path = |b: &[u8]| PathBuf::from(OsStr::from_bytes(b));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        records.push(match kind {
            b"end" => {
                // Nothing may follow but the split's empty tail.
                return match (fields.next(), fields.next()) {
                    (Some(b""), None) => Ok(records),
                    _ => Err(RootsFormatError::Truncated),
                };
            }
            b"link" => RootRecord::Link {
                link: path(link),
                target: text(target),
            },
            b"file" => RootRecord::File {
                link: path(link),
                target: text(target),
            },
            b"runtime" => RootRecord::Runtime {
                link: text(link),
                target: text(target),
            },
            b"stale" => RootRecord::Stale {
                link: path(link),
                target: path(target),
            },
            b"temp" => RootRecord::Temp {
                owner: text(link),
                target: text(target),
            },
            b"unreadable" => RootRecord::Unreadable {
                link: path(link),
                reason: text(target),
            },
            other => return Err(RootsFormatError::UnknownKind(text(other))),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-a";

    #[test]
    fn records_parse_and_name_their_store_paths() {
        let bytes = format!(
            "link\0/gcroots/x\0{A}/bin/sh\0runtime\0/proc/1/cwd\0{A}\0stale\0/gcroots/auto/y\0/home/u/r\0end\0\0\0"
        );
        let records = parse_records(bytes.as_bytes()).unwrap();
        assert_eq!(records.len(), 3);
        let store_dir = StoreDir::default();
        let a = store_dir.parse_path(A).unwrap();
        assert_eq!(records[0].store_path(&store_dir), Some(a.clone()));
        assert_eq!(records[1].store_path(&store_dir), Some(a));
        assert_eq!(records[2].store_path(&store_dir), None);
    }

    #[test]
    fn output_without_its_end_is_refused() {
        assert_eq!(parse_records(b""), Err(RootsFormatError::Truncated));
        let cut = format!("link\0/gcroots/x\0{A}\0");
        assert_eq!(
            parse_records(cut.as_bytes()),
            Err(RootsFormatError::Truncated)
        );
        assert_eq!(
            parse_records(b"end\0\0\0link\0"),
            Err(RootsFormatError::Truncated)
        );
        assert_eq!(
            parse_records(b"what\0a\0b\0end\0\0\0"),
            Err(RootsFormatError::UnknownKind("what".into()))
        );
    }
}
