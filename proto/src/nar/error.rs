//! The one error type of the NAR module.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading, writing, dumping or unpacking a NAR.
///
/// Variants that come from parsing carry the byte `offset` (from the start of the NAR, at the
/// start of the offending token) and the `path` inside the NAR, rendered for humans: `/` is the
/// root node, `/a/b` is entry `b` of directory `a`; bytes that are not printable ASCII are
/// escaped, so a hostile name cannot smuggle control characters into a log line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    // ---- framing and grammar -------------------------------------------------------------
    /// The input does not start with the string `nix-archive-1`.
    #[error("input is not a nix archive: missing or bad magic (expected \"nix-archive-1\")")]
    BadMagic,

    /// The input ended in the middle of the NAR.
    #[error("nar truncated at byte {offset} at {path} while reading {what}")]
    Truncated {
        offset: u64,
        path: String,
        what: &'static str,
    },

    /// The underlying reader failed.
    #[error("reading nar at byte {offset} at {path}: {source}")]
    Io {
        offset: u64,
        path: String,
        #[source]
        source: io::Error,
    },

    /// A tag other than the one the grammar allows at this point.
    #[error("bad nar at byte {offset} at {path}: expected {expected}, found \"{found}\"")]
    UnexpectedTag {
        offset: u64,
        path: String,
        expected: &'static str,
        found: String,
    },

    /// `type` named something other than `regular`, `symlink` or `directory`.
    #[error("bad nar at byte {offset} at {path}: unknown file type \"{found}\"")]
    UnknownFileType {
        offset: u64,
        path: String,
        found: String,
    },

    /// A node carries a second `type` field.
    #[error("bad nar at byte {offset} at {path}: second \"type\" field in one node")]
    DuplicateType { offset: u64, path: String },

    /// The string after `executable` must be empty.
    #[error(
        "bad nar at byte {offset} at {path}: executable marker has a non-empty value ({len} bytes)"
    )]
    NonEmptyExecutableMarker { offset: u64, path: String, len: u64 },

    /// `executable` must come before `contents` (Nix 2.8 accepted it after; current Nix does not).
    #[error("bad nar at byte {offset} at {path}: \"executable\" after \"contents\"")]
    ExecutableAfterContents { offset: u64, path: String },

    /// A directory entry name that cannot name a file: empty, `.`, `..`, or containing `/` or NUL.
    #[error("bad nar at byte {offset}: bad entry name \"{name}\" in {directory}: {reason}")]
    InvalidEntryName {
        offset: u64,
        directory: String,
        name: String,
        reason: &'static str,
    },

    /// Entries of a directory must be strictly increasing as unsigned bytes.
    #[error(
        "bad nar at byte {offset}: {directory} is not sorted: \"{name}\" after \"{previous}\""
    )]
    UnsortedEntries {
        offset: u64,
        directory: String,
        previous: String,
        name: String,
    },

    /// The same name appears twice in one directory.
    #[error("bad nar at byte {offset}: duplicate entry \"{name}\" in directory {directory}")]
    DuplicateEntry {
        offset: u64,
        directory: String,
        name: String,
    },

    /// The padding after a string or the file contents is not all zero bytes.
    #[error("bad nar at byte {offset} at {path}: non-zero padding")]
    NonZeroPadding { offset: u64, path: String },

    /// [`NarReader::next`](super::NarReader::next) was called again after it failed.
    #[error("nar reader called again after it returned an error")]
    UsedAfterError,

    /// Bytes follow the root node although the caller asked for the input to end there.
    #[error("trailing data after the end of the nar at byte {offset}")]
    TrailingData { offset: u64 },

    // ---- limits --------------------------------------------------------------------------
    /// Directories nest deeper than [`ParseOptions::max_depth`](super::ParseOptions).
    #[error("nar at byte {offset}: {path} nests deeper than the limit of {limit} directories")]
    TooDeep {
        offset: u64,
        path: String,
        limit: usize,
    },

    /// A regular file is larger than [`ParseOptions::max_file_size`](super::ParseOptions).
    #[error("nar at byte {offset}: file {path} has {size} bytes, over the limit of {limit}")]
    FileTooLarge {
        offset: u64,
        path: String,
        size: u64,
        limit: u64,
    },

    /// A length prefix is over the limit for that kind of string; nothing was allocated for it.
    #[error("nar at byte {offset} at {path}: {what} of {len} bytes is over the limit of {limit}")]
    StringTooLong {
        offset: u64,
        path: String,
        what: &'static str,
        len: u64,
        limit: u64,
    },

    /// A symlink target that is empty or contains NUL.
    #[error("bad nar at byte {offset}: invalid symlink target \"{target}\" at {path}: {reason}")]
    InvalidSymlinkTarget {
        offset: u64,
        path: String,
        target: String,
        reason: &'static str,
    },

    /// A directory has more entries than
    /// [`ParseOptions::max_directory_entries`](super::ParseOptions).
    #[error("nar at byte {offset}: directory {directory} has more than {limit} entries")]
    TooManyEntries {
        offset: u64,
        directory: String,
        limit: u64,
    },

    /// The NAR has more nodes than [`ParseOptions::max_nodes`](super::ParseOptions).
    #[error("nar at byte {offset}: more than {limit} files, directories and symlinks (at {path})")]
    TooManyNodes {
        offset: u64,
        path: String,
        limit: u64,
    },

    // ---- producing NARs ------------------------------------------------------------------
    /// Writing the NAR (or the copy of it, for [`copy_nar`](super::copy_nar)) failed.
    #[error("writing nar at byte {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// [`NarWriter`](super::NarWriter) was called in an order that does not form a NAR.
    #[error("nar writer misuse: {what}")]
    WriterMisuse { what: &'static str },

    /// The contents handed to the writer for a file do not match the size declared for it.
    #[error("file contents for {path} in the nar: declared {declared} bytes, got {actual}")]
    ContentsSizeMismatch {
        path: String,
        declared: u64,
        actual: u64,
    },

    /// Reading the contents handed to [`NarWriter::file`](super::NarWriter::file) failed.
    #[error("reading file contents for {path} in the nar: {source}")]
    ContentsSource {
        path: String,
        #[source]
        source: io::Error,
    },

    // ---- the filesystem side (dump_path, unpack) ------------------------------------------
    /// A filesystem operation failed; `op` says which one.
    #[error("{op} {}: {source}", path.display())]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Only regular files, directories and symlinks fit in a NAR.
    #[error("file {} is not a regular file, directory or symlink", path.display())]
    UnsupportedFileType { path: PathBuf },

    /// A file changed size while it was being dumped.
    #[error("{} changed while dumped: expected {expected} bytes, read {actual}", path.display())]
    FileChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// [`unpack`](super::unpack) refuses to write into something that already exists.
    #[error("unpack destination {} already exists", path.display())]
    DestinationExists { path: PathBuf },
}

/// Renders a path inside a NAR (relative, `/`-separated, empty for the root) for messages.
pub(crate) fn show_nar_path(path: &[u8]) -> String {
    let mut shown = String::with_capacity(path.len() + 1);
    shown.push('/');
    shown.push_str(&path.escape_ascii().to_string());
    shown
}

/// Renders attacker-supplied bytes for a message: escaped, and cut after 64 bytes.
pub(crate) fn show_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    if bytes.len() > SHOWN {
        format!("{}...", bytes[..SHOWN].escape_ascii())
    } else {
        bytes.escape_ascii().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_paths_are_rooted_and_escaped() {
        assert_eq!(show_nar_path(b""), "/");
        assert_eq!(show_nar_path(b"a/b"), "/a/b");
        assert_eq!(show_nar_path(b"x\n\x00"), "/x\\n\\x00");
    }

    #[test]
    fn long_bytes_are_cut() {
        let shown = show_bytes(&[b'a'; 100]);
        assert_eq!(shown.len(), 64 + 3);
        assert!(shown.ends_with("..."));
        assert_eq!(show_bytes(b"\"q\""), "\\\"q\\\"");
    }
}
