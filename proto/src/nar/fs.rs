//! Between NARs and the filesystem: [`dump_path`] (as `nix-store --dump`) and [`unpack`].

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

use super::{Event, NarError, NarReader, NarWriter, ParseOptions, COPY_CHUNK};

fn fs_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> NarError + 'p {
    move |source| NarError::Fs {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory being dumped: its path and the names still to visit, sorted.
struct PendingDirectory {
    path: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

/// Serialises the filesystem tree at `path` into `out` exactly as `nix-store --dump` does, and
/// returns the NAR's size.
///
/// Directory entries are sorted by their bytes; a regular file is executable iff its owner-x
/// bit is set; symlinks are stored verbatim and never followed (not even `path` itself). Other
/// file types (sockets, devices, FIFOs) are refused with [`NarError::UnsupportedFileType`].
/// Memory does not depend on file sizes (contents are copied in chunks); it grows only with
/// the number of names in the directories on the current path. The walk uses an explicit stack.
///
/// Output is buffered internally; `out` may be a bare file or socket.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<u64, NarError> {
    dump_path_with(path, out, None)
}

/// [`dump_path`] into a socket, pipe or file, sending the contents of large files with
/// `sendfile` instead of copying them through memory: the kernel moves page-cache pages to
/// the descriptor itself (NarFromPath of a 1 GiB path costs one copy instead of three).
pub fn dump_path_to_fd<W: Write + AsFd>(path: &Path, out: W) -> Result<u64, NarError> {
    dump_path_with(path, out, Some(send_file::<W>))
}

/// Files smaller than this are copied through the buffer: for them a flush and a syscall of
/// their own cost more than the copy.
const SENDFILE_MIN: u64 = 64 * 1024;

/// Sends up to `max` bytes of `file`, from its offset on, to `out`'s descriptor; the
/// buffered NAR tokens go first. 0 means the file ended early.
type SendFile<W> = fn(&mut BufWriter<W>, &File, u64) -> std::io::Result<u64>;

fn send_file<W: Write + AsFd>(
    out: &mut BufWriter<W>,
    file: &File,
    max: u64,
) -> std::io::Result<u64> {
    out.flush()?;
    // At most 1 GiB per call, as Linux caps a call just below 2 GiB anyway.
    let want = usize::try_from(max.min(1 << 30)).unwrap_or(1 << 30);
    loop {
        match rustix::fs::sendfile(out.get_ref().as_fd(), file.as_fd(), None, want) {
            Ok(n) => return Ok(n as u64),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn dump_path_with<W: Write>(
    path: &Path,
    out: W,
    send: Option<SendFile<W>>,
) -> Result<u64, NarError> {
    let mut nar = NarWriter::new(BufWriter::with_capacity(COPY_CHUNK, out));
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pending: Vec<PendingDirectory> = Vec::new();
    dump_node(path.to_path_buf(), &mut nar, &mut pending, &mut buf, send)?;
    while let Some(directory) = pending.last_mut() {
        match directory.names.next() {
            Some(name) => {
                let child = directory.path.join(&name);
                nar.entry(name.as_bytes())?;
                dump_node(child, &mut nar, &mut pending, &mut buf, send)?;
            }
            None => {
                nar.end_directory()?;
                pending.pop();
            }
        }
    }
    let size = nar.bytes_written();
    nar.finish()?.into_inner().map_err(|e| NarError::Write {
        offset: size,
        source: e.into_error(),
    })?;
    Ok(size)
}

/// Writes the node at `path`; a directory is only opened, and pushed for the caller to walk.
fn dump_node<W: Write>(
    path: PathBuf,
    nar: &mut NarWriter<BufWriter<W>>,
    pending: &mut Vec<PendingDirectory>,
    buf: &mut [u8],
    send: Option<SendFile<W>>,
) -> Result<(), NarError> {
    let metadata = fs::symlink_metadata(&path).map_err(fs_error("reading metadata of", &path))?;
    let file_type = metadata.file_type();
    if file_type.is_file() {
        dump_file(&path, nar, buf, send)
    } else if file_type.is_symlink() {
        let target = fs::read_link(&path).map_err(fs_error("reading symlink", &path))?;
        nar.symlink(target.as_os_str().as_bytes())
    } else if file_type.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(&path).map_err(fs_error("reading directory", &path))? {
            let entry = entry.map_err(fs_error("reading directory", &path))?;
            names.push(entry.file_name());
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        nar.directory()?;
        pending.push(PendingDirectory {
            path,
            names: names.into_iter(),
        });
        Ok(())
    } else {
        Err(NarError::UnsupportedFileType { path })
    }
}

fn dump_file<W: Write>(
    path: &Path,
    nar: &mut NarWriter<BufWriter<W>>,
    buf: &mut [u8],
    send: Option<SendFile<W>>,
) -> Result<(), NarError> {
    // O_NOFOLLOW: the path was a regular file when we looked; if it has been swapped for a
    // symlink since, fail instead of reading whatever it points to. O_NONBLOCK: likewise
    // for a FIFO, which would otherwise block the open.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(fs_error("opening", path))?;
    // Size and mode come from the open file, so they describe what we read.
    let metadata = file
        .metadata()
        .map_err(fs_error("reading metadata of", path))?;
    if !metadata.is_file() {
        return Err(NarError::UnsupportedFileType {
            path: path.to_path_buf(),
        });
    }
    let size = metadata.len();
    let executable = metadata.permissions().mode() & 0o100 != 0;
    let mut sink = nar.begin_file(executable, size)?;
    let mut left = size;
    if let Some(send) = send.filter(|_| size >= SENDFILE_MIN) {
        while left > 0 {
            match sink.write_with(|out, max| send(out, &file, max))? {
                0 => {
                    return Err(NarError::FileChanged {
                        path: path.to_path_buf(),
                        expected: size,
                        actual: size - left,
                    })
                }
                n => left -= n,
            }
        }
    }
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(NarError::FileChanged {
                    path: path.to_path_buf(),
                    expected: size,
                    actual: size - left,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(fs_error("reading", path)(e)),
        };
        sink.write_chunk(&buf[..n])?;
        left -= n as u64;
    }
    sink.finish()
}

/// Creates the tree stored in the NAR read from `reader` at `dest`, with default
/// [`ParseOptions`]. See [`unpack_with`].
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<(), NarError> {
    unpack_with(reader, dest, ParseOptions::default())
}

/// Creates the tree stored in the NAR read from `reader` at `dest`, validating as it goes.
///
/// `dest` must not exist; its parent must. Every file, directory and symlink is created
/// exclusively (`O_CREAT|O_EXCL`, `mkdir`, `symlink`: all fail on anything already there), files
/// are opened with `O_NOFOLLOW`, and symlinks are only ever created, never followed or written
/// through. Entry names are validated and unique, so no path built here passes through a
/// symlink from the archive. This relies on nobody else writing under `dest` meanwhile: unpack
/// into a directory only the caller can write.
///
/// Executables get the x bits (`mode | 0o111`); other modes are left to the umask — making the
/// tree read-only and setting times is the store writer's job. On error the partial tree is
/// left in place for the caller to remove.
pub fn unpack_with<R: Read>(reader: R, dest: &Path, options: ParseOptions) -> Result<(), NarError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(NarError::DestinationExists {
            path: dest.to_path_buf(),
        });
    }
    let mut nar = NarReader::with_options(reader, options);
    let mut buf = vec![0u8; COPY_CHUNK];
    while let Some(event) = nar.next()? {
        match event {
            Event::Directory { path } => {
                let target = join(dest, path.as_bytes());
                fs::create_dir(&target)
                    .map_err(|e| create_error(e, "creating directory", target))?;
            }
            Event::DirectoryEnd { .. } => {}
            Event::Symlink { path, target } => {
                let link = join(dest, path.as_bytes());
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &link)
                    .map_err(|e| create_error(e, "creating symlink", link))?;
            }
            Event::File {
                path,
                executable,
                mut contents,
                ..
            } => {
                let target = join(dest, path.as_bytes());
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| create_error(e, "creating file", target.clone()))?;
                write_contents(&mut contents, &mut file, &mut buf, &target)?;
                if executable {
                    make_executable(&file, &target)?;
                }
            }
        }
    }
    Ok(())
}

fn write_contents<R: Read>(
    contents: &mut super::FileContents<'_, R>,
    file: &mut File,
    buf: &mut [u8],
    target: &Path,
) -> Result<(), NarError> {
    loop {
        let n = contents.read_chunk(buf)?;
        if n == 0 {
            return Ok(());
        }
        file.write_all(&buf[..n])
            .map_err(fs_error("writing", target))?;
    }
}

fn make_executable(file: &File, target: &Path) -> Result<(), NarError> {
    let mode = file
        .metadata()
        .map_err(fs_error("reading metadata of", target))?
        .permissions()
        .mode();
    file.set_permissions(fs::Permissions::from_mode(mode | 0o111))
        .map_err(fs_error("setting permissions of", target))
}

/// `dest` joined with a validated NAR path (empty for the root).
fn join(dest: &Path, nar_path: &[u8]) -> PathBuf {
    if nar_path.is_empty() {
        dest.to_path_buf()
    } else {
        dest.join(OsStr::from_bytes(nar_path))
    }
}

fn create_error(source: std::io::Error, op: &'static str, path: PathBuf) -> NarError {
    if source.kind() == ErrorKind::AlreadyExists {
        NarError::DestinationExists { path }
    } else {
        NarError::Fs { op, path, source }
    }
}
