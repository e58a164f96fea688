//! Reading a data pipe from the frontend (a NAR, file contents, a build log).
//!
//! [`WatchedPipe`] reads the pipe while watching the channel's socket: if the frontend closes
//! the channel in the middle of a transfer, the read fails with [`PeerGone`] instead of waiting
//! for a pipe that may never end, and the channel is torn down.
//!
//! [`spool`] copies a whole pipe into an anonymous file in ward's staging directory before the
//! store is locked. The store's additions are serialised (one database writer, one staging
//! area), so reading a client's upload under that lock would let one slow or stalled client
//! hold up every other write; spooling first means the lock is only held while the data is
//! unpacked from local disk. The spool sits in the staging directory (mode 0700, on the store's
//! file system, cleared at every start), so it takes space where the path will, and a crash
//! leaves nothing behind.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use ward_proto::hash::{Hash, HashAlgo, Hasher};

/// Size of the buffer data is copied through.
const CHUNK: usize = 64 * 1024;

/// The frontend closed the channel while a request's data was still being read.
#[derive(Debug, thiserror::Error)]
#[error("the frontend closed the channel during the transfer")]
pub struct PeerGone;

/// Whether an I/O error came from [`WatchedPipe`] noticing that the peer left.
pub fn is_peer_gone(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<PeerGone>())
}

/// A pipe's read end, read while watching the channel socket for the peer hanging up.
#[derive(Debug)]
pub struct WatchedPipe<'a> {
    pipe: OwnedFd,
    socket: BorrowedFd<'a>,
}

impl<'a> WatchedPipe<'a> {
    /// Wraps the read end `pipe` of a request on the channel whose socket is `socket`.
    pub fn new(pipe: OwnedFd, socket: BorrowedFd<'a>) -> Self {
        WatchedPipe { pipe, socket }
    }

    /// True when the peer has closed or shut down its end of the channel.
    fn peer_hung_up(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.socket, PollFlags::RDHUP)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(_) => Ok(hung_up(fds[0].revents())),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn hung_up(revents: PollFlags) -> bool {
    revents.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL)
}

fn peer_gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, PeerGone)
}

impl Read for WatchedPipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut fds = [
                PollFd::new(&self.pipe, PollFlags::IN),
                PollFd::new(&self.socket, PollFlags::RDHUP),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if hung_up(fds[1].revents()) {
                return Err(peer_gone());
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match rustix::io::read(&self.pipe, &mut *buf) {
                Ok(0) => {
                    // End of data. If the frontend gave up on the channel, it shuts the socket
                    // down before closing the pipe, so an abandoned transfer is not mistaken
                    // for a complete one.
                    if !buf.is_empty() && self.peer_hung_up()? {
                        return Err(peer_gone());
                    }
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Where spool files go: ward's staging directory in the store.
#[derive(Debug)]
pub struct SpoolDir {
    fd: OwnedFd,
    path: PathBuf,
    counter: AtomicU64,
}

/// Why a pipe could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The frontend closed the channel during the transfer.
    #[error(transparent)]
    PeerGone(#[from] PeerGone),
    /// Reading the pipe failed.
    #[error("reading the data pipe: {0}")]
    Read(io::Error),
    /// Writing the spool file failed (e.g. the disk is full).
    #[error("{action} spool file in '{path}': {source}")]
    Write {
        /// What was being done.
        action: &'static str,
        /// The spool directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A pipe's data, spooled.
#[derive(Debug)]
pub struct Spooled {
    /// The stored data, positioned at its start.
    pub file: File,
    /// How many bytes the pipe yielded (more than were stored when a cap applied).
    pub total: u64,
    /// SHA-256 of everything the pipe yielded.
    pub sha256: Hash,
}

impl SpoolDir {
    /// Opens `path` (an existing directory, not a symlink) for spool files.
    pub fn open(path: &Path) -> io::Result<SpoolDir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SpoolDir {
            fd,
            path: path.to_owned(),
            counter: AtomicU64::new(0),
        })
    }

    /// A new anonymous read-write file: `O_TMPFILE` where the file system has it, else a
    /// uniquely named file that is unlinked at once.
    fn anonymous_file(&self) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, ".", flags | OFlags::TMPFILE, Mode::from(0o600)) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let name = format!("spool-{}-{n}", std::process::id());
            match rustix::fs::openat(
                &self.fd,
                name.as_str(),
                flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                Mode::from(0o600),
            ) {
                Ok(fd) => {
                    rustix::fs::unlinkat(&self.fd, name.as_str(), rustix::fs::AtFlags::empty())?;
                    return Ok(File::from(fd));
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Copies everything `source` yields into a new spool file, hashing it on the way. At most
/// `store_limit` bytes are stored (the rest is still read, counted and hashed, so a sender of
/// too much data learns its real size without costing disk space beyond the limit).
pub fn spool(
    mut source: impl Read,
    dir: &SpoolDir,
    store_limit: Option<u64>,
) -> Result<Spooled, SpoolError> {
    let write_err = |action| {
        move |source| SpoolError::Write {
            action,
            path: dir.path.clone(),
            source,
        }
    };
    let mut file = dir.anonymous_file().map_err(write_err("creating a"))?;
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let mut total: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_peer_gone(&e) => return Err(SpoolError::PeerGone(PeerGone)),
            Err(e) => return Err(SpoolError::Read(e)),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        let room = store_limit.map_or(u64::MAX, |limit| limit.saturating_sub(total));
        let keep = usize::try_from(room).map_or(n, |room| room.min(n));
        file.write_all(&chunk[..keep])
            .map_err(write_err("writing the"))?;
        total += n as u64;
    }
    file.seek(SeekFrom::Start(0))
        .map_err(write_err("rewinding the"))?;
    Ok(Spooled {
        file,
        total,
        sha256: hasher.finish(),
    })
}

/// The descriptor a request's pipe arrives as, checked to be a pipe (or FIFO) opened for
/// reading; anything else is refused before it is read.
pub fn check_is_pipe(fd: &OwnedFd) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the descriptor passed for the data is not a pipe",
        ));
    }
    let access = rustix::fs::fcntl_getfl(fd.as_fd())? & OFlags::RWMODE;
    if access != OFlags::RDONLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the pipe passed for the data is not a read end",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pipe() -> (OwnedFd, File) {
        let (r, w) = rustix::pipe::pipe().unwrap();
        (r, File::from(w))
    }

    fn spool_dir() -> (tempfile::TempDir, SpoolDir) {
        let dir = tempfile::tempdir().unwrap();
        let spool = SpoolDir::open(dir.path()).unwrap();
        (dir, spool)
    }

    #[test]
    fn spools_everything_and_hashes_it() {
        let (dir, spool_dir) = spool_dir();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        let writer = std::thread::spawn(move || {
            for _ in 0..40 {
                w.write_all(&[7u8; 10_000]).unwrap();
            }
        });
        let mut spooled = spool(WatchedPipe::new(r, ours.as_fd()), &spool_dir, None).unwrap();
        writer.join().unwrap();
        assert_eq!(spooled.total, 400_000);
        assert_eq!(
            spooled.sha256,
            Hash::compute(HashAlgo::Sha256, &[7u8; 400_000])
        );
        let mut back = Vec::new();
        spooled.file.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 400_000);
        // Anonymous: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_cap_limits_what_is_stored_but_not_what_is_counted() {
        let (_dir, spool_dir) = spool_dir();
        let data = b"0123456789".repeat(100);
        let mut spooled = spool(&data[..], &spool_dir, Some(15)).unwrap();
        assert_eq!(spooled.total, 1000);
        assert_eq!(spooled.sha256, Hash::compute(HashAlgo::Sha256, &data));
        let mut back = Vec::new();
        spooled.file.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"012345678901234");
    }

    #[test]
    fn a_peer_that_hangs_up_mid_transfer_aborts_the_read() {
        let (_dir, spool_dir) = spool_dir();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"partial").unwrap();
        // The writer keeps the pipe open, but the channel goes away.
        drop(theirs);
        let err = spool(WatchedPipe::new(r, ours.as_fd()), &spool_dir, None).unwrap_err();
        assert!(matches!(err, SpoolError::PeerGone(_)), "{err}");
        drop(w);
    }

    #[test]
    fn a_peer_that_shuts_down_before_closing_the_pipe_is_not_a_complete_transfer() {
        let (_dir, spool_dir) = spool_dir();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"partial").unwrap();
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
        drop(w);
        let err = spool(WatchedPipe::new(r, ours.as_fd()), &spool_dir, None).unwrap_err();
        assert!(matches!(err, SpoolError::PeerGone(_)), "{err}");
    }

    #[test]
    fn a_closed_pipe_with_a_live_peer_is_the_end_of_the_data() {
        let (_dir, spool_dir) = spool_dir();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"all of it").unwrap();
        drop(w);
        let spooled = spool(WatchedPipe::new(r, ours.as_fd()), &spool_dir, None).unwrap();
        assert_eq!(spooled.total, 9);
    }

    #[test]
    fn only_read_ends_of_pipes_are_accepted() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        check_is_pipe(&r).unwrap();
        assert!(check_is_pipe(&w).is_err());
        let file = OwnedFd::from(tempfile::tempfile().unwrap());
        assert!(check_is_pipe(&file).is_err());
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(check_is_pipe(&OwnedFd::from(a)).is_err());
    }
}
