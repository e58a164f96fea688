//! The NAR serialiser.
//!
//! [`NarWriter`] emits a NAR node by node and refuses calls that would not form a canonical
//! archive: names that cannot be entries, entries out of order, contents that do not match the
//! declared size, a second root. What it writes is what [`NarReader`](super::NarReader) with
//! default options accepts, byte for byte what `nix-store --dump` would produce for the same tree.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};

use super::error::{show_bytes, show_nar_path};
use super::reader::{check_entry_name, check_symlink_target};
use super::{NarError, COPY_CHUNK, MAX_NAME_LEN, MAX_TARGET_LEN, NAR_MAGIC};

/// Where the writer is in the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A node is due: the root, or the node of an entry just opened.
    Node,
    /// Inside a directory: an entry or the directory's end is due.
    Directory,
    /// Inside a file's contents: `declared` bytes announced, `written` so far.
    Contents { declared: u64, written: u64 },
    /// The root node is complete.
    Done,
    /// A write failed; the output is unusable.
    Failed,
}

/// An open directory on the writer's stack.
#[derive(Debug)]
struct OpenDirectory {
    path_len: usize,
    previous_name: Vec<u8>,
}

/// Serialises one NAR into `W`, streaming file contents.
///
/// Call order, for a directory root holding a file and a symlink:
///
/// ```
/// use ward_proto::nar::NarWriter;
/// # fn main() -> Result<(), ward_proto::nar::NarError> {
/// let mut nar = NarWriter::new(Vec::new());
/// nar.directory()?;
/// nar.entry(b"a.txt")?;
/// nar.file_from_bytes(false, b"hello\n")?;
/// nar.entry(b"link")?;
/// nar.symlink(b"a.txt")?;
/// nar.end_directory()?;
/// let bytes = nar.finish()?;
/// assert_eq!(bytes.len(), 480);
/// # Ok(()) }
/// ```
///
/// Tokens are written with small `write_all` calls: give it a buffered or in-memory `W`.
pub struct NarWriter<W: Write> {
    out: W,
    offset: u64,
    state: State,
    magic_written: bool,
    directories: Vec<OpenDirectory>,
    /// Path of the current node inside the NAR, for error messages.
    path: Vec<u8>,
}

impl<W: Write> fmt::Debug for NarWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NarWriter")
            .field("offset", &self.offset)
            .field("state", &self.state)
            .field("path", &show_nar_path(&self.path))
            .finish_non_exhaustive()
    }
}

impl<W: Write> NarWriter<W> {
    /// A writer whose root node is still to come. Nothing is written until the first node.
    pub fn new(out: W) -> Self {
        NarWriter {
            out,
            offset: 0,
            state: State::Node,
            magic_written: false,
            directories: Vec::new(),
            path: Vec::new(),
        }
    }

    /// Bytes written so far; after [`finish`](Self::finish), the NAR's size.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Starts a directory node. Follow with [`entry`](Self::entry) + node pairs in increasing
    /// byte order of names, then [`end_directory`](Self::end_directory).
    pub fn directory(&mut self) -> Result<(), NarError> {
        self.begin_node("directory() called where no node is due")?;
        self.write_tokens(&[b"(", b"type", b"directory"])?;
        self.directories.push(OpenDirectory {
            path_len: self.path.len(),
            previous_name: Vec::new(),
        });
        self.state = State::Directory;
        Ok(())
    }

    /// Opens the entry `name` in the current directory; the next call writes its node.
    /// Names must be valid (non-empty, not `.` or `..`, no `/` or NUL, at most 255 bytes) and
    /// strictly increasing as unsigned bytes within a directory.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        if self.state != State::Directory {
            return Err(self.misuse("entry() called outside a directory"));
        }
        let directory = self.directories.last_mut().expect("inside a directory");
        let check = if name.len() > MAX_NAME_LEN {
            Err("longer than 255 bytes")
        } else {
            check_entry_name(name)
        };
        if let Err(reason) = check {
            return Err(NarError::InvalidEntryName {
                offset: self.offset,
                directory: show_nar_path(&self.path),
                name: show_bytes(name),
                reason,
            });
        }
        match name.cmp(&directory.previous_name) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => {
                return Err(NarError::DuplicateEntry {
                    offset: self.offset,
                    directory: show_nar_path(&self.path),
                    name: show_bytes(name),
                })
            }
            std::cmp::Ordering::Less => {
                return Err(NarError::UnsortedEntries {
                    offset: self.offset,
                    directory: show_nar_path(&self.path),
                    previous: show_bytes(&directory.previous_name),
                    name: show_bytes(name),
                })
            }
        }
        directory.previous_name.clear();
        directory.previous_name.extend_from_slice(name);
        self.write_tokens(&[b"entry", b"(", b"name", name, b"node"])?;
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name);
        self.state = State::Node;
        Ok(())
    }

    /// Closes the current directory.
    pub fn end_directory(&mut self) -> Result<(), NarError> {
        if self.state != State::Directory {
            return Err(self.misuse("end_directory() called outside a directory"));
        }
        self.write_tokens(&[b")"])?;
        self.directories.pop();
        self.end_node()
    }

    /// Writes a symlink node. The target must be non-empty, without NUL, at most 4095 bytes;
    /// it is written verbatim.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        self.begin_node("symlink() called where no node is due")?;
        let check = if target.len() > MAX_TARGET_LEN {
            Err("longer than 4095 bytes")
        } else {
            check_symlink_target(target)
        };
        if let Err(reason) = check {
            return Err(NarError::InvalidSymlinkTarget {
                offset: self.offset,
                path: show_nar_path(&self.path),
                target: show_bytes(target),
                reason,
            });
        }
        self.write_tokens(&[b"(", b"type", b"symlink", b"target", target, b")"])?;
        self.end_node()
    }

    /// Starts a regular file of exactly `size` bytes; write them through the returned
    /// [`FileSink`] and call [`FileSink::finish`].
    pub fn begin_file(&mut self, executable: bool, size: u64) -> Result<FileSink<'_, W>, NarError> {
        self.begin_node("begin_file() called where no node is due")?;
        self.write_tokens(&[b"(", b"type", b"regular"])?;
        if executable {
            self.write_tokens(&[b"executable", b""])?;
        }
        self.write_tokens(&[b"contents"])?;
        self.write_raw(&size.to_le_bytes())?;
        self.state = State::Contents {
            declared: size,
            written: 0,
        };
        Ok(FileSink { writer: self })
    }

    /// Writes a regular file whose `size` bytes are read from `source` in chunks (it must
    /// yield at least that many; nothing after them is read).
    pub fn file<S: Read>(
        &mut self,
        executable: bool,
        size: u64,
        mut source: S,
    ) -> Result<(), NarError> {
        let mut sink = self.begin_file(executable, size)?;
        let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(size).unwrap_or(COPY_CHUNK))];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match source.read(&mut buf[..want]) {
                Ok(0) => {
                    let path = show_nar_path(&sink.writer.path);
                    sink.writer.state = State::Failed;
                    return Err(NarError::ContentsSizeMismatch {
                        path,
                        declared: size,
                        actual: size - left,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    let path = show_nar_path(&sink.writer.path);
                    sink.writer.state = State::Failed;
                    return Err(NarError::ContentsSource { path, source });
                }
            };
            sink.write_chunk(&buf[..n])?;
            left -= n as u64;
        }
        sink.finish()
    }

    /// Writes a regular file with the given contents.
    pub fn file_from_bytes(&mut self, executable: bool, contents: &[u8]) -> Result<(), NarError> {
        let mut sink = self.begin_file(executable, contents.len() as u64)?;
        sink.write_chunk(contents)?;
        sink.finish()
    }

    /// Ends the NAR: the root node must be complete. Flushes and returns the output.
    pub fn finish(mut self) -> Result<W, NarError> {
        if self.state != State::Done {
            return Err(self.misuse("finish() called before the root node is complete"));
        }
        let offset = self.offset;
        self.out
            .flush()
            .map_err(|source| NarError::Write { offset, source })?;
        Ok(self.out)
    }

    /// Checks a node may start here, and writes the magic before the root.
    fn begin_node(&mut self, misuse: &'static str) -> Result<(), NarError> {
        if self.state != State::Node {
            return Err(self.misuse(misuse));
        }
        if !self.magic_written {
            self.write_tokens(&[NAR_MAGIC])?;
            self.magic_written = true;
        }
        Ok(())
    }

    /// A node is complete: close the entry around it, or finish the root.
    fn end_node(&mut self) -> Result<(), NarError> {
        match self.directories.last() {
            None => self.state = State::Done,
            Some(directory) => {
                self.path.truncate(directory.path_len);
                self.write_tokens(&[b")"])?;
                self.state = State::Directory;
            }
        }
        Ok(())
    }

    fn misuse(&mut self, what: &'static str) -> NarError {
        if self.state == State::Failed {
            NarError::WriterMisuse {
                what: "nar writer used after an error",
            }
        } else {
            NarError::WriterMisuse { what }
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        match self.out.write_all(bytes) {
            Ok(()) => {
                self.offset += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                self.state = State::Failed;
                Err(NarError::Write {
                    offset: self.offset,
                    source,
                })
            }
        }
    }

    /// Writes each string as a NAR token: length, bytes, zero padding to 8.
    fn write_tokens(&mut self, tokens: &[&[u8]]) -> Result<(), NarError> {
        for token in tokens {
            self.write_raw(&(token.len() as u64).to_le_bytes())?;
            self.write_raw(token)?;
            self.write_padding(token.len() as u64)?;
        }
        Ok(())
    }

    fn write_padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = ((8 - len % 8) % 8) as usize;
        if pad > 0 {
            self.write_raw(&[0u8; 8][..pad])?;
        }
        Ok(())
    }
}

/// Receives the contents of one regular file; see [`NarWriter::begin_file`].
///
/// Dropping it without [`finish`](Self::finish) leaves the writer unusable for further nodes.
pub struct FileSink<'a, W: Write> {
    writer: &'a mut NarWriter<W>,
}

impl<W: Write> fmt::Debug for FileSink<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("writer", &self.writer)
            .finish()
    }
}

impl<W: Write> FileSink<'_, W> {
    /// Appends `chunk` to the file; refused if it would exceed the declared size.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        let State::Contents { declared, written } = self.writer.state else {
            return Err(self.writer.misuse("file contents written outside a file"));
        };
        let after = written + chunk.len() as u64;
        if after > declared {
            let path = show_nar_path(&self.writer.path);
            self.writer.state = State::Failed;
            return Err(NarError::ContentsSizeMismatch {
                path,
                declared,
                actual: after,
            });
        }
        self.writer.write_raw(chunk)?;
        self.writer.state = State::Contents {
            declared,
            written: after,
        };
        Ok(())
    }

    /// Appends bytes that `send` writes to the underlying writer itself (with `sendfile`, say),
    /// at most the bytes still expected; `send` gets the writer and that bound and returns how
    /// many bytes it wrote. Returns that count (0: `send` wrote nothing).
    pub fn write_with(
        &mut self,
        send: impl FnOnce(&mut W, u64) -> io::Result<u64>,
    ) -> Result<u64, NarError> {
        let State::Contents { declared, written } = self.writer.state else {
            return Err(self.writer.misuse("file contents written outside a file"));
        };
        let left = declared - written;
        match send(&mut self.writer.out, left) {
            Ok(n) if n <= left => {
                self.writer.offset += n;
                self.writer.state = State::Contents {
                    declared,
                    written: written + n,
                };
                Ok(n)
            }
            Ok(n) => {
                let path = show_nar_path(&self.writer.path);
                self.writer.state = State::Failed;
                Err(NarError::ContentsSizeMismatch {
                    path,
                    declared,
                    actual: written + n,
                })
            }
            Err(source) => {
                self.writer.state = State::Failed;
                Err(NarError::Write {
                    offset: self.writer.offset,
                    source,
                })
            }
        }
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        match self.writer.state {
            State::Contents { declared, written } => declared - written,
            _ => 0,
        }
    }

    /// Ends the file; refused unless exactly the declared size was written.
    pub fn finish(self) -> Result<(), NarError> {
        let State::Contents { declared, written } = self.writer.state else {
            return Err(self.writer.misuse("file finished outside a file"));
        };
        if written != declared {
            let path = show_nar_path(&self.writer.path);
            self.writer.state = State::Failed;
            return Err(NarError::ContentsSizeMismatch {
                path,
                declared,
                actual: written,
            });
        }
        self.writer.write_padding(declared)?;
        self.writer.write_tokens(&[b")"])?;
        self.writer.end_node()
    }
}

impl<W: Write> Write for FileSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_chunk(buf)
            .map(|()| buf.len())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.out.flush()
    }
}
