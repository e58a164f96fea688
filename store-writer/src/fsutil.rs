//! File-system work on descriptors, never on paths built from untrusted names.
//!
//! Everything here starts from a directory descriptor the caller holds and one name inside it,
//! opens with `O_NOFOLLOW`, and walks trees with an explicit, depth-bounded stack. Paths are
//! only carried along for error messages.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use thiserror::Error;

/// Deepest directory nesting the tree walks accept. NARs are limited to 256 levels by default,
/// so anything deeper was not made by ward and is refused rather than walked.
pub const MAX_TREE_DEPTH: usize = 1024;

/// Modification time of everything in the store: one second after the epoch.
pub const STORE_MTIME: i64 = 1;

/// Extended attributes that are left alone when stripping (Nix's default `ignored-acls`):
/// they are set by the system, not by the file's writer, and cannot always be removed.
const IGNORED_XATTRS: &[&str] = &["security.selinux", "system.nfs4_acl", "security.csm"];

/// A file-system operation failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// A system call failed.
    #[error("{action} '{path}': {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path at fault (for the message only).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that is neither a regular file, a directory nor a symlink.
    #[error("file '{0}' has an unsupported type")]
    UnsupportedType(PathBuf),
    /// A tree nested deeper than [`MAX_TREE_DEPTH`].
    #[error("directory tree at '{0}' is nested too deeply")]
    TooDeep(PathBuf),
    /// A regular file was expected.
    #[error("'{0}' is not a regular file")]
    NotARegularFile(PathBuf),
    /// The entry changed type or identity between looking at it and opening it.
    #[error("'{0}' changed while it was being processed")]
    Changed(PathBuf),
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(Errno) -> FsError + 'a {
    move |e| FsError::Io {
        action,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Opens a directory by absolute path without following a symlink in the last component.
pub fn open_dir_path(path: &Path) -> Result<OwnedFd, FsError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("opening directory", path))
}

/// Opens the directory `name` in `dir` without following symlinks.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd, FsError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("opening directory", shown))
}

/// Opens the regular file `name` in `dir` for reading, refusing symlinks and anything that is
/// not a regular file (`O_NONBLOCK` so that a FIFO cannot block the open).
pub fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<OwnedFd, FsError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("opening", shown))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err("getting status of", shown))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(FsError::NotARegularFile(shown.to_owned()));
    }
    Ok(fd)
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn stat_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
) -> Result<Option<rustix::fs::Stat>, FsError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err("getting status of", shown)(e)),
    }
}

/// Names in a directory, without `.` and `..`, sorted.
pub fn list_dir(dir: BorrowedFd<'_>, shown: &Path) -> Result<Vec<OsString>, FsError> {
    let mut reader = rustix::fs::Dir::read_from(dir).map_err(io_err("reading directory", shown))?;
    let mut names = Vec::new();
    while let Some(entry) = reader.read() {
        let entry = entry.map_err(io_err("reading directory", shown))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `fsync` on a descriptor.
pub fn fsync(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), FsError> {
    rustix::fs::fsync(fd).map_err(io_err("syncing", shown))
}

/// Makes everything written to the filesystem holding `fd` durable: file data, new entries
/// and renames, in one journal commit. Adds use it once per batch instead of one `fsync` per
/// file and one per directory, each of which costs a commit of its own (about 0.3 ms on the
/// virtual disk ward is developed on); it also waits for data other programs left dirty on
/// the same filesystem, which is the price of that single commit. On Linux only; elsewhere
/// `sync()` does the same for every filesystem.
pub fn sync_filesystem(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), FsError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::fs::syncfs(fd).map_err(io_err("syncing the filesystem of", shown))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (fd, shown);
        rustix::fs::sync();
        Ok(())
    }
}

/// The mode Nix gives a store file: 0444, or 0555 when the owner could execute it; a mode
/// that is already one of those stays. Set-id and sticky bits never survive.
pub fn canonical_mode(mode: u32) -> u32 {
    let perms = mode & 0o7777;
    if perms == 0o444 || perms == 0o555 {
        perms
    } else if perms & 0o100 != 0 {
        0o555
    } else {
        0o444
    }
}

fn store_times() -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: STORE_MTIME,
            tv_nsec: 0,
        },
    }
}

/// Removes extended attributes from an open file or directory, except the system-managed ones
/// in [`IGNORED_XATTRS`]. File systems without xattr support are fine.
fn strip_xattrs(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), FsError> {
    let size = match rustix::fs::flistxattr_query(fd) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(()),
        Err(e) => return Err(io_err("querying extended attributes of", shown)(e)),
    };
    let mut names = vec![0u8; size];
    let size = rustix::fs::flistxattr(fd, &mut names[..])
        .map_err(io_err("querying extended attributes of", shown))?;
    for name in names[..size.min(names.len())]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        if IGNORED_XATTRS.iter().any(|i| i.as_bytes() == name) {
            continue;
        }
        match rustix::fs::fremovexattr(fd, OsStr::from_bytes(name)) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(io_err("removing extended attribute from", shown)(e)),
        }
    }
    Ok(())
}

/// Gives an open file or directory its store metadata: no extended attributes, mode 0444 or
/// 0555, mtime 1. Not synced here: the caller syncs the whole filesystem once, after the
/// rename and before the row is committed ([`sync_filesystem`]).
fn canonicalise_fd(fd: BorrowedFd<'_>, st: &rustix::fs::Stat, shown: &Path) -> Result<(), FsError> {
    strip_xattrs(fd, shown)?;
    // `st_mode` is a u32 on Linux, a u16 on macOS.
    #[allow(clippy::useless_conversion)]
    let st_mode = u32::from(st.st_mode);
    let mode = canonical_mode(st_mode);
    if st_mode & 0o7777 != mode {
        // 0o444 or 0o555: fits macOS's u16 too.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode as rustix::fs::RawMode))
            .map_err(io_err("changing mode of", shown))?;
    }
    rustix::fs::futimens(fd, &store_times()).map_err(io_err("changing modification time of", shown))
}

/// A directory on the walk's stack.
struct Frame {
    fd: OwnedFd,
    st: rustix::fs::Stat,
    path: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

/// What [`canonicalise_tree_at`] leaves for the caller when the root is a directory: its open
/// descriptor and status, to finish (mode, mtime) after it has been renamed into place.
/// A directory has to stay writable until then, because moving a directory to another parent
/// rewrites its `..` entry, which needs write permission on it.
#[derive(Debug)]
pub struct PendingRoot {
    fd: OwnedFd,
    st: rustix::fs::Stat,
}

impl PendingRoot {
    /// Finishes the root directory: mode, mtime 1, extended attributes.
    pub fn finish(self, shown: &Path) -> Result<(), FsError> {
        canonicalise_fd(self.fd.as_fd(), &self.st, shown)
    }
}

/// Canonicalises the tree at `name` in `dir` as Nix's `canonicalisePathMetaData` does for a
/// path it created itself: every regular file and directory gets mode 0444/0555, mtime 1 and no
/// extended attributes; symlinks get mtime 1. Ownership is left as it is (everything was
/// created by this process). Nothing is synced: see [`sync_filesystem`].
///
/// If the root is a directory, its own metadata is left for [`PendingRoot::finish`].
pub fn canonicalise_tree_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
) -> Result<Option<PendingRoot>, FsError> {
    let st = stat_at(dir, name, shown)?.ok_or_else(|| FsError::Changed(shown.to_owned()))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            rustix::fs::utimensat(dir, name, &store_times(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("changing modification time of", shown))?;
            Ok(None)
        }
        FileType::RegularFile => {
            let fd = open_file_at(dir, name, shown)?;
            let st2 = rustix::fs::fstat(&fd).map_err(io_err("getting status of", shown))?;
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
                return Err(FsError::Changed(shown.to_owned()));
            }
            canonicalise_fd(fd.as_fd(), &st2, shown)?;
            Ok(None)
        }
        FileType::Directory => {
            let fd = open_dir_at(dir, name, shown)?;
            let st = rustix::fs::fstat(&fd).map_err(io_err("getting status of", shown))?;
            let names = list_dir(fd.as_fd(), shown)?;
            let root = Frame {
                fd,
                st,
                path: shown.to_owned(),
                names: names.into_iter(),
            };
            let (fd, st) = canonicalise_children(root)?;
            Ok(Some(PendingRoot { fd, st }))
        }
        _ => Err(FsError::UnsupportedType(shown.to_owned())),
    }
}

/// Walks the directory in `root` post-order, canonicalising everything below it; returns the
/// root's descriptor and status untouched.
fn canonicalise_children(root: Frame) -> Result<(OwnedFd, rustix::fs::Stat), FsError> {
    let mut stack = vec![root];
    loop {
        let depth = stack.len();
        let frame = stack.last_mut().expect("the stack holds at least the root");
        let Some(name) = frame.names.next() else {
            let done = stack.pop().expect("the stack holds at least the root");
            if stack.is_empty() {
                return Ok((done.fd, done.st));
            }
            canonicalise_fd(done.fd.as_fd(), &done.st, &done.path)?;
            continue;
        };
        let path = frame.path.join(&name);
        let parent = frame.fd.as_fd();
        let st = stat_at(parent, &name, &path)?.ok_or_else(|| FsError::Changed(path.clone()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                rustix::fs::utimensat(parent, &name, &store_times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("changing modification time of", &path))?;
            }
            FileType::RegularFile => {
                let fd = open_file_at(parent, &name, &path)?;
                let st2 = rustix::fs::fstat(&fd).map_err(io_err("getting status of", &path))?;
                if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
                    return Err(FsError::Changed(path));
                }
                canonicalise_fd(fd.as_fd(), &st2, &path)?;
            }
            FileType::Directory => {
                if depth >= MAX_TREE_DEPTH {
                    return Err(FsError::TooDeep(path));
                }
                let fd = open_dir_at(parent, &name, &path)?;
                let st = rustix::fs::fstat(&fd).map_err(io_err("getting status of", &path))?;
                let names = list_dir(fd.as_fd(), &path)?;
                stack.push(Frame {
                    fd,
                    st,
                    path,
                    names: names.into_iter(),
                });
            }
            _ => return Err(FsError::UnsupportedType(path)),
        }
    }
}

/// Deletes the tree at `name` in `dir` (if it exists) without following symlinks. Directories
/// are made writable by their owner first, so read-only store trees can be removed.
/// Returns whether anything was there.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<bool, FsError> {
    let mut freed = 0;
    remove_tree_counting(dir, name, shown, &mut freed)
}

/// The bytes a file's removal frees, as Nix counts them: its size if this is its last link,
/// or one of two (the other then usually being its `.links` entry, which goes next).
fn freed_by_unlinking(st: &rustix::fs::Stat) -> u64 {
    if st.st_nlink <= 2 {
        st.st_size.max(0) as u64
    } else {
        0
    }
}

/// [`remove_tree_at`], adding the bytes freed to `freed`.
pub fn remove_tree_counting(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    freed: &mut u64,
) -> Result<bool, FsError> {
    let Some(st) = stat_at(dir, name, shown)? else {
        return Ok(false);
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        unlink_if_exists(dir, name, AtFlags::empty(), shown)?;
        *freed += freed_by_unlinking(&st);
        return Ok(true);
    }
    struct DirFrame {
        fd: OwnedFd,
        path: PathBuf,
        names: std::vec::IntoIter<OsString>,
    }
    let open = |parent: BorrowedFd<'_>, name: &OsStr, path: PathBuf| {
        let fd = open_dir_at(parent, name, &path)?;
        // Owner write and search permission, so the entries can be listed and unlinked. This
        // fails harmlessly on directories owned by someone else.
        let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700));
        let names = list_dir(fd.as_fd(), &path)?;
        Ok::<_, FsError>(DirFrame {
            fd,
            path,
            names: names.into_iter(),
        })
    };
    let mut stack = vec![open(dir, name, shown.to_owned())?];
    loop {
        let depth = stack.len();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        match frame.names.next() {
            Some(child) => {
                let path = frame.path.join(&child);
                let parent = frame.fd.as_fd();
                let Some(st) = stat_at(parent, &child, &path)? else {
                    continue;
                };
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    if depth >= MAX_TREE_DEPTH {
                        return Err(FsError::TooDeep(path));
                    }
                    let next = open(parent, &child, path)?;
                    stack.push(next);
                } else {
                    unlink_if_exists(parent, &child, AtFlags::empty(), &path)?;
                    *freed += freed_by_unlinking(&st);
                }
            }
            None => {
                let done = stack.pop().expect("loop condition");
                drop(done.fd);
                let (parent, leaf) = match stack.last() {
                    Some(up) => (up.fd.as_fd(), done.path.file_name().unwrap_or_default()),
                    None => (dir, name),
                };
                unlink_if_exists(parent, leaf, AtFlags::REMOVEDIR, &done.path)?;
            }
        }
    }
    Ok(true)
}

fn unlink_if_exists(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: AtFlags,
    shown: &Path,
) -> Result<(), FsError> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err("removing", shown)(e)),
    }
}

/// Clears the immutable flag (`chattr -i`) on everything under `dir`, as Nix's upgrade to
/// schema 7 does: very old Nix versions made store files immutable, which stops the garbage
/// collector from deleting them. Only root can change the flag; for anyone else this does
/// nothing, as in Nix. Symlinks are not followed (and cannot carry the flag).
pub fn clear_immutable_bits(dir: &Path) -> Result<(), FsError> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    tracing::info!("removing immutable bits from the Nix store (this may take a while)...");
    let root = open_dir_path(dir)?;
    clear_immutable(root.as_fd(), dir)?;
    let mut stack = vec![(root, dir.to_owned(), list_dir_of(dir)?.into_iter())];
    while let Some((fd, path, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let child = path.join(&name);
        let Some(st) = stat_at(fd.as_fd(), &name, &child)? else {
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let file = open_file_at(fd.as_fd(), &name, &child)?;
                clear_immutable(file.as_fd(), &child)?;
            }
            FileType::Directory => {
                let sub = open_dir_at(fd.as_fd(), &name, &child)?;
                clear_immutable(sub.as_fd(), &child)?;
                let names = list_dir(sub.as_fd(), &child)?;
                if stack.len() >= MAX_TREE_DEPTH {
                    return Err(FsError::TooDeep(child));
                }
                stack.push((sub, child, names.into_iter()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn list_dir_of(dir: &Path) -> Result<Vec<OsString>, FsError> {
    let fd = open_dir_path(dir)?;
    list_dir(fd.as_fd(), dir)
}

/// Inode flags (`FS_IOC_GETFLAGS`) are Linux's; elsewhere there is nothing to clear here (a
/// macOS port would clear `UF_IMMUTABLE`/`SF_IMMUTABLE` with `fchflags`; until then such a
/// file fails the operation that follows, with `EPERM`).
#[cfg(not(target_os = "linux"))]
fn clear_immutable(_fd: BorrowedFd<'_>, _shown: &Path) -> Result<(), FsError> {
    Ok(())
}

#[cfg(target_os = "linux")]
fn clear_immutable(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), FsError> {
    use rustix::fs::IFlags;
    let flags = match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => flags,
        // File systems without inode flags have nothing to clear.
        Err(Errno::NOTTY) | Err(Errno::NOTSUP) | Err(Errno::INVAL) => return Ok(()),
        Err(e) => return Err(io_err("reading inode flags of", shown)(e)),
    };
    if flags.contains(IFlags::IMMUTABLE) {
        rustix::fs::ioctl_setflags(fd, flags - IFlags::IMMUTABLE)
            .map_err(io_err("clearing the immutable flag of", shown))?;
    }
    Ok(())
}

/// A reader over an owned descriptor (for hashing files opened with [`open_file_at`]).
#[derive(Debug)]
pub struct FdReader(pub OwnedFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match rustix::io::read(&self.0, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn meta(path: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(path).unwrap()
    }

    #[test]
    fn canonical_modes() {
        assert_eq!(canonical_mode(0o644), 0o444);
        assert_eq!(canonical_mode(0o755), 0o555);
        assert_eq!(canonical_mode(0o100755), 0o555);
        assert_eq!(canonical_mode(0o4755), 0o555, "setuid is dropped");
        assert_eq!(canonical_mode(0o2644), 0o444, "setgid is dropped");
        assert_eq!(canonical_mode(0o1777), 0o555, "sticky is dropped");
        assert_eq!(canonical_mode(0o444), 0o444);
        assert_eq!(canonical_mode(0o555), 0o555);
        assert_eq!(canonical_mode(0o000), 0o444);
        assert_eq!(
            canonical_mode(0o011),
            0o444,
            "only the owner's x bit counts"
        );
    }

    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("file"), "data").unwrap();
        std::fs::write(root.join("sub/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            root.join("sub/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::set_permissions(
            root.join("sub/deeper"),
            std::fs::Permissions::from_mode(0o2775),
        )
        .unwrap();
        std::os::unix::fs::symlink("../file", root.join("sub/link")).unwrap();
    }

    #[test]
    fn canonicalises_a_tree_and_leaves_the_root_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        sample_tree(&root);
        let dirfd = open_dir_path(dir.path()).unwrap();
        let pending = canonicalise_tree_at(dirfd.as_fd(), OsStr::new("out"), &root)
            .unwrap()
            .expect("a directory root is left pending");
        for (rel, mode) in [
            ("file", 0o444),
            ("sub", 0o555),
            ("sub/tool", 0o555),
            ("sub/deeper", 0o555),
        ] {
            let m = meta(&root.join(rel));
            assert_eq!(m.mode() & 0o7777, mode, "{rel}");
            assert_eq!(m.mtime(), 1, "{rel}");
        }
        let link = meta(&root.join("sub/link"));
        assert_eq!(link.mtime(), 1);
        assert_ne!(meta(&root).mtime(), 1, "root untouched until finish");
        pending.finish(&root).unwrap();
        let m = meta(&root);
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o555, 1));
        // Clean up read-only tree.
        remove_tree_at(dirfd.as_fd(), OsStr::new("out"), &root).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn canonicalises_single_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        std::fs::set_permissions(
            dir.path().join("f"),
            std::fs::Permissions::from_mode(0o6700),
        )
        .unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("l")).unwrap();
        let dirfd = open_dir_path(dir.path()).unwrap();
        assert!(
            canonicalise_tree_at(dirfd.as_fd(), OsStr::new("f"), Path::new("f"))
                .unwrap()
                .is_none()
        );
        assert!(
            canonicalise_tree_at(dirfd.as_fd(), OsStr::new("l"), Path::new("l"))
                .unwrap()
                .is_none()
        );
        let f = meta(&dir.path().join("f"));
        assert_eq!((f.mode() & 0o7777, f.mtime()), (0o555, 1));
        assert_eq!(meta(&dir.path().join("l")).mtime(), 1);
    }

    #[test]
    fn refuses_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
        let dirfd = open_dir_path(dir.path()).unwrap();
        let err = canonicalise_tree_at(dirfd.as_fd(), OsStr::new("fifo"), &fifo).unwrap_err();
        assert!(matches!(err, FsError::UnsupportedType(_)), "{err}");
        assert!(err.to_string().contains("fifo"));
        // Inside a directory too.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.path().join("d/p"),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let err = canonicalise_tree_at(dirfd.as_fd(), OsStr::new("d"), &dir.path().join("d"))
            .unwrap_err();
        assert!(matches!(err, FsError::UnsupportedType(p) if p.ends_with("d/p")));
    }

    #[test]
    fn strips_user_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        if rustix::fs::setxattr(&f, "user.ward-test", b"1", rustix::fs::XattrFlags::empty())
            .is_err()
        {
            eprintln!("skipping: the temporary file system has no user xattrs");
            return;
        }
        let dirfd = open_dir_path(dir.path()).unwrap();
        canonicalise_tree_at(dirfd.as_fd(), OsStr::new("f"), &f).unwrap();
        let mut buf = [0u8; 256];
        let n = rustix::fs::listxattr(&f, &mut buf[..]).unwrap();
        assert!(
            !buf[..n].split(|&b| b == 0).any(|n| n == b"user.ward-test"),
            "xattr left behind"
        );
    }

    #[test]
    fn removes_read_only_trees_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "precious").unwrap();
        let root = dir.path().join("victim");
        sample_tree(&root);
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o555)).unwrap();
        let dirfd = open_dir_path(dir.path()).unwrap();
        assert!(remove_tree_at(dirfd.as_fd(), OsStr::new("victim"), &root).unwrap());
        assert!(!root.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"precious");
        assert!(!remove_tree_at(dirfd.as_fd(), OsStr::new("victim"), &root).unwrap());
        // A symlink root is removed itself, not its target.
        std::os::unix::fs::symlink(&outside, dir.path().join("l")).unwrap();
        assert!(remove_tree_at(dirfd.as_fd(), OsStr::new("l"), Path::new("l")).unwrap());
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn open_file_refuses_symlinks_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let dirfd = open_dir_path(dir.path()).unwrap();
        let mut r = FdReader(open_file_at(dirfd.as_fd(), OsStr::new("f"), Path::new("f")).unwrap());
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        assert!(open_file_at(dirfd.as_fd(), OsStr::new("l"), Path::new("l")).is_err());
        assert!(matches!(
            open_file_at(dirfd.as_fd(), OsStr::new("d"), Path::new("d")),
            Err(FsError::NotARegularFile(_))
        ));
    }
}
