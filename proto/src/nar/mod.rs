//! NAR, the Nix ARchive format: streaming reader, writer, and filesystem dump / unpack.
//!
//! A NAR is a sequence of `str` tokens (`u64` little-endian length, the bytes, zero padding to a
//! multiple of 8):
//!
//! ```text
//! archive   := "nix-archive-1" node
//! node      := "(" "type" kind ")"
//! kind      := "regular" [ "executable" "" ] "contents" <contents>
//!            | "symlink" "target" <target>
//!            | "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! It keeps only the file type, the executable bit, contents and symlink targets, and it is
//! canonical: entries sorted by name as unsigned bytes, `executable` before `contents`. Hashing
//! the NAR of a path is how Nix identifies its contents, so the reader accepts only the
//! canonical form — the bytes it validates are exactly the bytes `nix-store --dump` would
//! produce from the tree they describe — and refuses everything else with a [`NarError`] naming
//! the offset and the path inside the archive. It is as strict as current Nix (which also refuses
//! `executable` after `contents`, still accepted by Nix 2.8) and adds configurable limits
//! ([`ParseOptions`]). macOS's case hack (`~nix~case~hack~N` suffixes) is not implemented.
//!
//! * [`NarReader`]: pull parser over any [`Read`], yielding [`Event`]s, file contents streamed.
//! * [`NarWriter`]: emits a NAR node by node, refusing anything non-canonical.
//! * [`hash_and_size`], [`copy_nar`], [`TeeReader`]: read exactly one NAR, validating it, and
//!   hash it or forward its raw bytes.
//! * [`dump_path`] and [`unpack`]: between a NAR and a tree on disk.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

mod error;
mod fs;
mod reader;
mod writer;

pub use error::NarError;
pub use fs::{dump_path, dump_path_to_fd, unpack, unpack_with};
pub use reader::{Event, FileContents, NarPath, NarReader, ParseOptions};
pub use writer::{FileSink, NarWriter};

/// The string every NAR starts with.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Longest entry name the writer produces and the reader accepts by default (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target the writer produces and the reader accepts by default.
pub const MAX_TARGET_LEN: usize = 4095;

/// Chunk size for streaming file contents.
pub(crate) const COPY_CHUNK: usize = 64 * 1024;

/// A reader that copies every byte it reads from `R` into `W`.
///
/// Because [`NarReader`] reads exactly the bytes of one NAR, a `NarReader` over a `TeeReader`
/// forwards exactly that NAR, and nothing after it, to `W`: this is how a NAR embedded in a
/// stream is found and passed on, or hashed while it is unpacked. If `W` fails, the read fails
/// too, and [`take_sink_error`](Self::take_sink_error) returns `W`'s error.
pub struct TeeReader<R, W> {
    inner: R,
    sink: W,
    sink_error: Option<io::Error>,
}

impl<R, W> fmt::Debug for TeeReader<R, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeReader")
            .field("sink_failed", &self.sink_error.is_some())
            .finish_non_exhaustive()
    }
}

impl<R: Read, W: Write> TeeReader<R, W> {
    /// Reads from `inner`, copying into `sink`.
    pub fn new(inner: R, sink: W) -> Self {
        TeeReader {
            inner,
            sink,
            sink_error: None,
        }
    }

    /// The error `W` returned, if a read failed because of it.
    pub fn take_sink_error(&mut self) -> Option<io::Error> {
        self.sink_error.take()
    }

    /// The reader and the sink.
    pub fn into_parts(self) -> (R, W) {
        (self.inner, self.sink)
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.sink.write_all(&buf[..n]) {
            self.sink_error = Some(e);
            return Err(io::Error::other("the destination of the nar copy failed"));
        }
        Ok(n)
    }
}

/// Reads and validates exactly one NAR from `reader` (default [`ParseOptions`]) and returns its
/// SHA-256 and size. Nothing after the NAR is read.
pub fn hash_and_size<R: Read>(reader: R) -> Result<([u8; 32], u64), NarError> {
    hash_and_size_with(reader, ParseOptions::default())
}

/// [`hash_and_size`] with the given options.
pub fn hash_and_size_with<R: Read>(
    reader: R,
    options: ParseOptions,
) -> Result<([u8; 32], u64), NarError> {
    let mut nar = NarReader::with_options(TeeReader::new(reader, Sha256Writer::default()), options);
    nar.skip_to_end()?;
    let size = nar.offset();
    let (_, hasher) = nar.into_inner().into_parts();
    Ok((hasher.0.finalize().into(), size))
}

/// Reads and validates exactly one NAR from `reader` (default [`ParseOptions`]), writing its
/// raw bytes to `writer` as they are read; returns its size. Nothing after the NAR is read, so
/// this is how the end of a NAR inside a stream is found. On a parse error, `writer` has
/// received a prefix of the bad input and must be discarded.
pub fn copy_nar<R: Read, W: Write>(reader: R, writer: W) -> Result<u64, NarError> {
    copy_nar_with(reader, writer, ParseOptions::default())
}

/// [`copy_nar`] with the given options.
pub fn copy_nar_with<R: Read, W: Write>(
    reader: R,
    writer: W,
    options: ParseOptions,
) -> Result<u64, NarError> {
    let mut nar = NarReader::with_options(TeeReader::new(reader, writer), options);
    match nar.skip_to_end() {
        Ok(()) => {
            let size = nar.offset();
            let (_, mut writer) = nar.into_inner().into_parts();
            writer.flush().map_err(|source| NarError::Write {
                offset: size,
                source,
            })?;
            Ok(size)
        }
        Err(e) => {
            let offset = nar.offset();
            let mut tee = nar.into_inner();
            match tee.take_sink_error() {
                Some(source) => Err(NarError::Write { offset, source }),
                None => Err(e),
            }
        }
    }
}

/// `io::Write` into a SHA-256 state, kept private so the digest crate's own `Write` impl
/// (feature-dependent) is not relied on.
#[derive(Default)]
struct Sha256Writer(Sha256);

impl Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
