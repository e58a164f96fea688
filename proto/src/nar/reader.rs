//! The streaming NAR parser.
//!
//! [`NarReader`] pulls one token at a time from a [`Read`] and hands out [`Event`]s in the order
//! the nodes appear in the archive. File contents are never buffered: the [`Event::File`] carries
//! a [`FileContents`] reader over exactly that file's bytes, and whatever the caller leaves unread
//! is skipped (and still validated) on the next call. Memory is bounded by the limits in
//! [`ParseOptions`], never by a length read from the input: every length is checked before
//! anything is allocated for it, and directory nesting is tracked on an explicit, bounded stack.
//!
//! The parser never reads a byte past the end of the root node, so a NAR embedded in a longer
//! stream (the worker protocol) leaves the stream positioned right after it; see
//! [`NarReader::into_inner`]. For the same reason it does no read-ahead of its own: wrap
//! unbuffered sources (sockets, pipes, files) in a [`std::io::BufReader`].

use std::fmt;
use std::io::{self, ErrorKind, Read};

use super::error::{show_bytes, show_nar_path};
use super::{NarError, COPY_CHUNK, MAX_NAME_LEN, MAX_TARGET_LEN, NAR_MAGIC};

/// Longest tag the parser reads. NAR keywords are at most 10 bytes ("executable"); the slack
/// only makes error messages about short garbage more useful.
const MAX_TAG_LEN: usize = 16;

/// Limits and checks applied while parsing. The defaults accept every NAR that Nix produces
/// on Linux and refuse everything the format does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// Deepest allowed nesting: the root is at depth 0, its entries at depth 1, and so on.
    /// Default 256.
    pub max_depth: usize,
    /// Largest allowed regular file, in bytes. Default: no limit (contents are streamed, so
    /// size costs no memory).
    pub max_file_size: u64,
    /// Longest allowed directory entry name. Default 255 (`NAME_MAX`, and what current Nix
    /// enforces).
    pub max_name_len: usize,
    /// Longest allowed symlink target. Default 4095 (`PATH_MAX` - 1, as current Nix).
    pub max_target_len: usize,
    /// Most entries allowed in one directory. Default: no limit.
    pub max_directory_entries: u64,
    /// Most nodes (files, directories, symlinks) allowed in the whole NAR. Default: no limit.
    pub max_nodes: u64,
    /// After the root node, require the input to end; a further byte is
    /// [`NarError::TrailingData`]. Default false, because a NAR inside a protocol stream is
    /// followed by more data. Only set this when the reader holds nothing but the NAR, or the
    /// check will wait for an end of input that never comes.
    pub require_eof: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_depth: 256,
            max_file_size: u64::MAX,
            max_name_len: MAX_NAME_LEN,
            max_target_len: MAX_TARGET_LEN,
            max_directory_entries: u64::MAX,
            max_nodes: u64::MAX,
            require_eof: false,
        }
    }
}

/// A path inside a NAR: `/`-separated names relative to the root, empty for the root itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarPath<'a>(&'a [u8]);

impl<'a> NarPath<'a> {
    /// The raw path: `b""` for the root, `b"a/b"` for entry `b` of directory `a`.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Whether this is the root node of the archive.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component (the entry name); empty for the root.
    pub fn file_name(&self) -> &'a [u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(slash) => &self.0[slash + 1..],
            None => self.0,
        }
    }

    /// Number of directories above this node: 0 for the root.
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            1 + self.0.iter().filter(|&&b| b == b'/').count()
        }
    }
}

impl fmt::Display for NarPath<'_> {
    /// Shows the path rooted at `/`, with non-printable bytes escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show_nar_path(self.0))
    }
}

impl fmt::Debug for NarPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarPath({self})")
    }
}

/// One step of a NAR, in archive order.
///
/// A directory yields [`Event::Directory`], then one event tree per entry in sorted order, then
/// [`Event::DirectoryEnd`] with the same path.
#[derive(Debug)]
pub enum Event<'a, R> {
    /// A directory starts; its entries follow.
    Directory { path: NarPath<'a> },
    /// The directory at `path` has no more entries.
    DirectoryEnd { path: NarPath<'a> },
    /// A regular file. Read its bytes from `contents`; anything left unread is skipped by the
    /// next call to [`NarReader::next`].
    File {
        path: NarPath<'a>,
        executable: bool,
        size: u64,
        contents: FileContents<'a, R>,
    },
    /// A symbolic link. `target` is verbatim: non-empty, without NUL, and not checked further
    /// (it may be absolute or point anywhere).
    Symlink { path: NarPath<'a>, target: &'a [u8] },
}

impl<'a, R> Event<'a, R> {
    /// The path of the node this event is about.
    pub fn path(&self) -> NarPath<'a> {
        match self {
            Event::Directory { path }
            | Event::DirectoryEnd { path }
            | Event::File { path, .. }
            | Event::Symlink { path, .. } => *path,
        }
    }
}

/// The low-level input: the reader, how far into the NAR it is, and how much of the current
/// file's contents is still unread.
struct Input<R> {
    inner: R,
    offset: u64,
    contents_left: u64,
}

/// A tag read into a fixed buffer, with the offset where its token started.
struct Tag {
    bytes: [u8; MAX_TAG_LEN],
    len: usize,
    offset: u64,
}

impl Tag {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn is(&self, expected: &[u8]) -> bool {
        self.as_bytes() == expected
    }

    fn shown(&self) -> String {
        show_bytes(self.as_bytes())
    }
}

fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

impl<R: Read> Input<R> {
    fn read_exact(
        &mut self,
        buf: &mut [u8],
        path: &[u8],
        what: &'static str,
    ) -> Result<(), NarError> {
        let start = self.offset;
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(NarError::Truncated {
                offset: start,
                path: show_nar_path(path),
                what,
            }),
            Err(source) => Err(NarError::Io {
                offset: start,
                path: show_nar_path(path),
                source,
            }),
        }
    }

    fn read_u64(&mut self, path: &[u8], what: &'static str) -> Result<u64, NarError> {
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes, path, what)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Reads and checks the zero padding that follows a string of `len` bytes.
    fn read_padding(&mut self, len: u64, path: &[u8]) -> Result<(), NarError> {
        let pad = padding_len(len);
        if pad == 0 {
            return Ok(());
        }
        let start = self.offset;
        let mut bytes = [0u8; 8];
        self.read_exact(&mut bytes[..pad], path, "padding")?;
        if bytes[..pad].iter().any(|&b| b != 0) {
            return Err(NarError::NonZeroPadding {
                offset: start,
                path: show_nar_path(path),
            });
        }
        Ok(())
    }

    /// Reads a length prefix and refuses it if over `limit`, before anything is allocated.
    fn read_len(
        &mut self,
        limit: usize,
        path: &[u8],
        what: &'static str,
    ) -> Result<(u64, usize), NarError> {
        let start = self.offset;
        let len = self.read_u64(path, what)?;
        if len > limit as u64 {
            return Err(NarError::StringTooLong {
                offset: start,
                path: show_nar_path(path),
                what,
                len,
                limit: limit as u64,
            });
        }
        Ok((start, len as usize))
    }

    /// Reads a string of at most `limit` bytes into `buf` (replacing its contents).
    /// Returns the offset where the token started.
    fn read_string_into(
        &mut self,
        buf: &mut Vec<u8>,
        limit: usize,
        path: &[u8],
        what: &'static str,
    ) -> Result<u64, NarError> {
        let (start, len) = self.read_len(limit, path, what)?;
        buf.clear();
        buf.resize(len, 0);
        self.read_exact(buf, path, what)?;
        self.read_padding(len as u64, path)?;
        Ok(start)
    }

    fn read_tag(&mut self, path: &[u8]) -> Result<Tag, NarError> {
        let (offset, len) = self.read_len(MAX_TAG_LEN, path, "tag")?;
        let mut bytes = [0u8; MAX_TAG_LEN];
        // MAX_TAG_LEN is a multiple of 8, so the padded length still fits.
        let padded = len + padding_len(len as u64);
        self.read_exact(&mut bytes[..padded], path, "tag")?;
        if bytes[len..padded].iter().any(|&b| b != 0) {
            return Err(NarError::NonZeroPadding {
                offset: self.offset - (padded - len) as u64,
                path: show_nar_path(path),
            });
        }
        Ok(Tag { bytes, len, offset })
    }

    /// Reads one chunk of the current file's contents into `buf`; 0 means the file is done.
    fn read_contents(&mut self, buf: &mut [u8], path: &[u8]) -> Result<usize, NarError> {
        if self.contents_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.contents_left).unwrap_or(usize::MAX));
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(NarError::Truncated {
                        offset: self.offset,
                        path: show_nar_path(path),
                        what: "file contents",
                    })
                }
                Ok(n) => {
                    self.offset += n as u64;
                    self.contents_left -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NarError::Io {
                        offset: self.offset,
                        path: show_nar_path(path),
                        source,
                    })
                }
            }
        }
    }
}

/// Reader over the contents of one regular file in the NAR; see [`Event::File`].
///
/// It ends (returns 0) exactly at the end of the file. Errors from the archive (truncation,
/// read failures) come back as [`NarError`] from [`FileContents::read_chunk`]; through the
/// [`Read`] impl they are wrapped in an [`io::Error`] whose inner error is that `NarError`.
pub struct FileContents<'a, R> {
    input: &'a mut Input<R>,
    path: &'a [u8],
}

impl<R> FileContents<'_, R> {
    /// Bytes of this file not read yet.
    pub fn remaining(&self) -> u64 {
        self.input.contents_left
    }
}

impl<R: Read> FileContents<'_, R> {
    /// Reads up to `buf.len()` bytes of the file; `Ok(0)` at its end.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        self.input.read_contents(buf, self.path)
    }
}

impl<R: Read> Read for FileContents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(|e| {
            let kind = match &e {
                NarError::Truncated { .. } => ErrorKind::UnexpectedEof,
                NarError::Io { source, .. } => source.kind(),
                _ => ErrorKind::InvalidData,
            };
            io::Error::new(kind, e)
        })
    }
}

impl<R> fmt::Debug for FileContents<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileContents")
            .field("path", &NarPath(self.path))
            .field("remaining", &self.input.contents_left)
            .finish()
    }
}

/// Where the parser is in the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing read yet.
    Magic,
    /// A node starts at `path`.
    Node,
    /// Inside a regular file's contents (of `size` bytes); the caller may be reading them.
    Contents { size: u64 },
    /// A node just ended; close the entry around it, or finish if it was the root.
    AfterNode,
    /// Inside a directory, before an `entry` or its closing `)`.
    Directory,
    /// The root node has been read (and the end of input checked, if asked).
    Done,
    /// An error was returned; the input position is unknown, nothing more can be read.
    Failed,
}

/// An open directory on the parser's explicit stack.
struct OpenDirectory {
    /// Length of the reader's `path` buffer holding this directory's path.
    path_len: usize,
    /// The name of the previous entry (empty before the first: names are never empty).
    previous_name: Vec<u8>,
    entries: u64,
}

/// What one step of the state machine produced.
enum Step {
    Continue,
    Directory,
    DirectoryEnd,
    File { executable: bool, size: u64 },
    Symlink,
    Finished,
}

/// Streaming, validating NAR parser; see the [module documentation](self).
///
/// ```
/// use ward_proto::nar::{Event, NarReader, NarWriter};
/// # fn main() -> Result<(), ward_proto::nar::NarError> {
/// let mut writer = NarWriter::new(Vec::new());
/// writer.file_from_bytes(false, b"hello\n")?;
/// let nar = writer.finish()?;
///
/// let mut reader = NarReader::new(&nar[..]);
/// while let Some(event) = reader.next()? {
///     if let Event::File { size, mut contents, .. } = event {
///         let mut text = Vec::new();
///         std::io::Read::read_to_end(&mut contents, &mut text).unwrap();
///         assert_eq!((size, &text[..]), (6, &b"hello\n"[..]));
///     }
/// }
/// assert_eq!(reader.offset(), 120);
/// # Ok(()) }
/// ```
pub struct NarReader<R> {
    input: Input<R>,
    options: ParseOptions,
    state: State,
    /// Path of the current node, relative to the root (empty for the root).
    path: Vec<u8>,
    directories: Vec<OpenDirectory>,
    nodes: u64,
    name: Vec<u8>,
    target: Vec<u8>,
    /// Where skipped file contents go; allocated on first use.
    scratch: Vec<u8>,
}

impl<R> fmt::Debug for NarReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NarReader")
            .field("offset", &self.input.offset)
            .field("state", &self.state)
            .field("path", &NarPath(&self.path))
            .finish_non_exhaustive()
    }
}

impl<R: Read> NarReader<R> {
    /// A parser with the default [`ParseOptions`].
    pub fn new(inner: R) -> Self {
        Self::with_options(inner, ParseOptions::default())
    }

    /// A parser with the given limits.
    pub fn with_options(inner: R, options: ParseOptions) -> Self {
        NarReader {
            input: Input {
                inner,
                offset: 0,
                contents_left: 0,
            },
            options,
            state: State::Magic,
            path: Vec::new(),
            directories: Vec::new(),
            nodes: 0,
            name: Vec::new(),
            target: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Bytes of the NAR consumed so far; after the last event, the NAR's size.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    /// Whether the whole NAR has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The options this reader enforces.
    pub fn options(&self) -> &ParseOptions {
        &self.options
    }

    /// The underlying reader. After [`next`](Self::next) returned `Ok(None)` it is positioned
    /// exactly after the NAR's last byte.
    pub fn into_inner(self) -> R {
        self.input.inner
    }

    /// A shared reference to the underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.input.inner
    }

    /// The next event, or `Ok(None)` once the root node is complete (and, with
    /// [`ParseOptions::require_eof`], the input has ended). After an error the reader is
    /// unusable: every further call fails.
    #[allow(clippy::should_implement_trait)] // a lending iterator; `Iterator` cannot express it
    pub fn next(&mut self) -> Result<Option<Event<'_, R>>, NarError> {
        let step = loop {
            match self.step() {
                Ok(Step::Continue) => continue,
                Ok(step) => break step,
                Err(e) => {
                    self.state = State::Failed;
                    return Err(e);
                }
            }
        };
        let path = NarPath(&self.path);
        Ok(Some(match step {
            Step::Continue => unreachable!("the loop above consumes Continue"),
            Step::Finished => return Ok(None),
            Step::Directory => Event::Directory { path },
            Step::DirectoryEnd => Event::DirectoryEnd { path },
            Step::Symlink => Event::Symlink {
                path,
                target: &self.target,
            },
            Step::File { executable, size } => Event::File {
                path,
                executable,
                size,
                contents: FileContents {
                    input: &mut self.input,
                    path: &self.path,
                },
            },
        }))
    }

    /// Reads (and validates) the rest of the NAR, skipping file contents.
    pub fn skip_to_end(&mut self) -> Result<(), NarError> {
        while self.next()?.is_some() {}
        Ok(())
    }

    /// Advances the state machine by one grammar step.
    fn step(&mut self) -> Result<Step, NarError> {
        match self.state {
            State::Magic => {
                self.read_magic()?;
                self.state = State::Node;
                Ok(Step::Continue)
            }
            State::Node => self.read_node_header(),
            State::Contents { size } => {
                self.skip_contents()?;
                self.input.read_padding(size, &self.path)?;
                let tag = self.input.read_tag(&self.path)?;
                if !tag.is(b")") {
                    return Err(if tag.is(b"executable") {
                        NarError::ExecutableAfterContents {
                            offset: tag.offset,
                            path: show_nar_path(&self.path),
                        }
                    } else {
                        self.unexpected_in_node(&tag, "\")\" after the file contents")
                    });
                }
                self.state = State::AfterNode;
                Ok(Step::Continue)
            }
            State::AfterNode => {
                let Some(directory) = self.directories.last() else {
                    self.finish()?;
                    return Ok(Step::Finished);
                };
                self.path.truncate(directory.path_len);
                self.expect_tag(b")", "\")\" closing the directory entry")?;
                self.state = State::Directory;
                Ok(Step::Continue)
            }
            State::Directory => self.read_directory_item(),
            State::Done => Ok(Step::Finished),
            State::Failed => Err(NarError::UsedAfterError),
        }
    }

    fn read_magic(&mut self) -> Result<(), NarError> {
        let mut token = [0u8; 8 + 16];
        match self.input.read_exact(&mut token[..8], b"", "magic") {
            Ok(()) => {}
            Err(NarError::Truncated { .. }) => return Err(NarError::BadMagic),
            Err(e) => return Err(e),
        }
        if u64::from_le_bytes(token[..8].try_into().expect("8 bytes")) != NAR_MAGIC.len() as u64 {
            return Err(NarError::BadMagic);
        }
        match self.input.read_exact(&mut token[8..], b"", "magic") {
            Ok(()) => {}
            Err(NarError::Truncated { .. }) => return Err(NarError::BadMagic),
            Err(e) => return Err(e),
        }
        let (magic, padding) = token[8..].split_at(NAR_MAGIC.len());
        if magic != NAR_MAGIC || padding.iter().any(|&b| b != 0) {
            return Err(NarError::BadMagic);
        }
        Ok(())
    }

    /// Reads `( type <kind>` and what follows up to the point where the caller gets the node.
    fn read_node_header(&mut self) -> Result<Step, NarError> {
        let node_offset = self.input.offset;
        self.nodes += 1;
        if self.nodes > self.options.max_nodes {
            return Err(NarError::TooManyNodes {
                offset: node_offset,
                path: show_nar_path(&self.path),
                limit: self.options.max_nodes,
            });
        }
        self.expect_tag(b"(", "\"(\" opening a node")?;
        self.expect_tag(b"type", "\"type\"")?;
        let kind = self.input.read_tag(&self.path)?;
        match kind.as_bytes() {
            b"regular" => self.read_regular_header(),
            b"symlink" => self.read_symlink(),
            b"directory" => {
                self.directories.push(OpenDirectory {
                    path_len: self.path.len(),
                    previous_name: Vec::new(),
                    entries: 0,
                });
                self.state = State::Directory;
                Ok(Step::Directory)
            }
            _ => Err(NarError::UnknownFileType {
                offset: kind.offset,
                path: show_nar_path(&self.path),
                found: kind.shown(),
            }),
        }
    }

    fn read_regular_header(&mut self) -> Result<Step, NarError> {
        let mut tag = self.input.read_tag(&self.path)?;
        let mut executable = false;
        if tag.is(b"executable") {
            let start = self.input.offset;
            let marker_len = self.input.read_u64(&self.path, "executable marker")?;
            if marker_len != 0 {
                return Err(NarError::NonEmptyExecutableMarker {
                    offset: start,
                    path: show_nar_path(&self.path),
                    len: marker_len,
                });
            }
            executable = true;
            tag = self.input.read_tag(&self.path)?;
            if !tag.is(b"contents") {
                return Err(self.unexpected_in_node(&tag, "\"contents\""));
            }
        } else if !tag.is(b"contents") {
            return Err(self.unexpected_in_node(&tag, "\"executable\" or \"contents\""));
        }
        let size_offset = self.input.offset;
        let size = self.input.read_u64(&self.path, "file size")?;
        if size > self.options.max_file_size {
            return Err(NarError::FileTooLarge {
                offset: size_offset,
                path: show_nar_path(&self.path),
                size,
                limit: self.options.max_file_size,
            });
        }
        self.input.contents_left = size;
        self.state = State::Contents { size };
        Ok(Step::File { executable, size })
    }

    fn read_symlink(&mut self) -> Result<Step, NarError> {
        let tag = self.input.read_tag(&self.path)?;
        if !tag.is(b"target") {
            return Err(self.unexpected_in_node(&tag, "\"target\""));
        }
        let offset = self.input.read_string_into(
            &mut self.target,
            self.options.max_target_len,
            &self.path,
            "symlink target",
        )?;
        if let Err(reason) = check_symlink_target(&self.target) {
            return Err(NarError::InvalidSymlinkTarget {
                offset,
                path: show_nar_path(&self.path),
                target: show_bytes(&self.target),
                reason,
            });
        }
        let tag = self.input.read_tag(&self.path)?;
        if !tag.is(b")") {
            return Err(self.unexpected_in_node(&tag, "\")\" after the symlink target"));
        }
        self.state = State::AfterNode;
        Ok(Step::Symlink)
    }

    /// Inside a directory: either its closing `)` or one `entry ( name <name> node` header.
    fn read_directory_item(&mut self) -> Result<Step, NarError> {
        let tag = self.input.read_tag(&self.path)?;
        if tag.is(b")") {
            self.directories.pop();
            self.state = State::AfterNode;
            return Ok(Step::DirectoryEnd);
        }
        if !tag.is(b"entry") {
            return Err(self.unexpected_in_node(&tag, "\"entry\" or \")\""));
        }
        let limits = &self.options;
        let directory = self.directories.last_mut().expect("inside a directory");
        directory.entries += 1;
        if directory.entries > limits.max_directory_entries {
            return Err(NarError::TooManyEntries {
                offset: tag.offset,
                directory: show_nar_path(&self.path),
                limit: limits.max_directory_entries,
            });
        }
        self.expect_tag(b"(", "\"(\" opening a directory entry")?;
        self.expect_tag(b"name", "\"name\"")?;
        let name_offset = self.input.read_string_into(
            &mut self.name,
            self.options.max_name_len,
            &self.path,
            "entry name",
        )?;
        if let Err(reason) = check_entry_name(&self.name) {
            return Err(NarError::InvalidEntryName {
                offset: name_offset,
                directory: show_nar_path(&self.path),
                name: show_bytes(&self.name),
                reason,
            });
        }
        let directory = self.directories.last_mut().expect("inside a directory");
        match self.name.as_slice().cmp(&directory.previous_name) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => {
                return Err(NarError::DuplicateEntry {
                    offset: name_offset,
                    directory: show_nar_path(&self.path),
                    name: show_bytes(&self.name),
                })
            }
            std::cmp::Ordering::Less => {
                return Err(NarError::UnsortedEntries {
                    offset: name_offset,
                    directory: show_nar_path(&self.path),
                    previous: show_bytes(&directory.previous_name),
                    name: show_bytes(&self.name),
                })
            }
        }
        directory.previous_name.clear();
        directory.previous_name.extend_from_slice(&self.name);
        self.expect_tag(b"node", "\"node\"")?;
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(&self.name);
        // The entry's node sits one level below every open directory.
        if self.directories.len() > self.options.max_depth {
            return Err(NarError::TooDeep {
                offset: self.input.offset,
                path: show_nar_path(&self.path),
                limit: self.options.max_depth,
            });
        }
        self.state = State::Node;
        Ok(Step::Continue)
    }

    fn expect_tag(&mut self, expected: &[u8], description: &'static str) -> Result<(), NarError> {
        let tag = self.input.read_tag(&self.path)?;
        if tag.is(expected) {
            Ok(())
        } else {
            Err(NarError::UnexpectedTag {
                offset: tag.offset,
                path: show_nar_path(&self.path),
                expected: description,
                found: tag.shown(),
            })
        }
    }

    /// The error for a wrong tag inside a node whose type is known: a repeated `type` gets
    /// its own error, anything else is an unexpected tag.
    fn unexpected_in_node(&self, tag: &Tag, expected: &'static str) -> NarError {
        if tag.is(b"type") {
            NarError::DuplicateType {
                offset: tag.offset,
                path: show_nar_path(&self.path),
            }
        } else {
            NarError::UnexpectedTag {
                offset: tag.offset,
                path: show_nar_path(&self.path),
                expected,
                found: tag.shown(),
            }
        }
    }

    /// Discards whatever the caller left unread of the current file.
    fn skip_contents(&mut self) -> Result<(), NarError> {
        if self.input.contents_left == 0 {
            return Ok(());
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; COPY_CHUNK];
        }
        while self.input.read_contents(&mut self.scratch, &self.path)? > 0 {}
        Ok(())
    }

    /// The root node is complete: check the end of input if asked to.
    fn finish(&mut self) -> Result<(), NarError> {
        if self.options.require_eof {
            let mut byte = [0u8; 1];
            loop {
                match self.input.inner.read(&mut byte) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(NarError::TrailingData {
                            offset: self.input.offset,
                        })
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(NarError::Io {
                            offset: self.input.offset,
                            path: "(after the root node)".to_string(),
                            source,
                        })
                    }
                }
            }
        }
        self.state = State::Done;
        Ok(())
    }
}

/// Why `name` cannot be a directory entry, if it cannot. Length is checked separately.
pub(crate) fn check_entry_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty name")
    } else if name == b"." || name == b".." {
        Err("\".\" and \"..\" are not allowed")
    } else if name.contains(&b'/') {
        Err("contains '/'")
    } else if name.contains(&0) {
        Err("contains a nul byte")
    } else {
        Ok(())
    }
}

/// Why `target` cannot be a symlink target, if it cannot. Length is checked separately.
pub(crate) fn check_symlink_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("empty target")
    } else if target.contains(&0) {
        Err("contains a nul byte")
    } else {
        Ok(())
    }
}
