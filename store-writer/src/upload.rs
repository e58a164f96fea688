//! Reading a data pipe from the frontend (a NAR, file contents, a build log).
//!
//! [`WatchedPipe`] reads the pipe while watching the channel's socket: if the frontend closes
//! the channel in the middle of a transfer, the read fails with [`PeerGone`] instead of waiting
//! for a pipe that may never end, and the channel is torn down.
//!
//! [`Upload`] is what an addition reads: the pipe streamed straight into the store's staging
//! directory, without the store being held (see `ward_store::add`), so a slow client holds up
//! no other write. It remembers why reading failed, if it did, so that a peer that left or a
//! broken pipe is reported as such rather than as whatever the NAR parser made of it, and it
//! reads a refused request's data to its end, as the frontend is still writing it.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;

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

/// Why reading a request's data failed.
#[derive(Debug)]
pub enum UploadFailure {
    /// The frontend closed the channel during the transfer.
    PeerGone,
    /// Reading the pipe failed.
    Read(io::Error),
}

/// A request's data as an addition reads it; see the [module documentation](self).
#[derive(Debug)]
pub struct Upload<R> {
    source: R,
    /// The source said it had no more data.
    ended: bool,
    /// The first read failure, kept for the reply.
    failure: Option<UploadFailure>,
}

impl<R: Read> Upload<R> {
    /// Wraps the data source of one request.
    pub fn new(source: R) -> Self {
        Upload {
            source,
            ended: false,
            failure: None,
        }
    }

    /// Reads whatever the source still holds (the request is being refused, and the frontend
    /// writes all of it before it reads the reply), then tells why reading failed, if it did.
    pub fn finish(mut self) -> Option<UploadFailure> {
        let mut buf = vec![0u8; CHUNK];
        while !self.ended && self.failure.is_none() {
            // Errors are recorded by `read`.
            let _ = self.read(&mut buf);
        }
        self.failure
    }
}

impl<R: Read> Read for Upload<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match &self.failure {
            Some(UploadFailure::PeerGone) => return Err(peer_gone()),
            Some(UploadFailure::Read(e)) => return Err(io::Error::new(e.kind(), e.to_string())),
            None if self.ended => return Ok(0),
            None => {}
        }
        loop {
            match self.source.read(buf) {
                Ok(0) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_peer_gone(&e) => {
                    self.failure = Some(UploadFailure::PeerGone);
                    return Err(e);
                }
                Err(e) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    self.failure = Some(UploadFailure::Read(e));
                    return Err(copy);
                }
            }
        }
    }
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
    use std::fs::File;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pipe() -> (OwnedFd, File) {
        let (r, w) = rustix::pipe::pipe().unwrap();
        (r, File::from(w))
    }

    fn read_all(source: impl Read) -> (Vec<u8>, Option<UploadFailure>) {
        let mut upload = Upload::new(source);
        let mut data = Vec::new();
        let _ = upload.read_to_end(&mut data);
        (data, upload.finish())
    }

    #[test]
    fn reads_everything_a_live_peer_sends() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        let writer = std::thread::spawn(move || {
            for _ in 0..40 {
                w.write_all(&[7u8; 10_000]).unwrap();
            }
        });
        let (data, failure) = read_all(WatchedPipe::new(r, ours.as_fd()));
        writer.join().unwrap();
        assert_eq!(data, vec![7u8; 400_000]);
        assert!(failure.is_none(), "{failure:?}");
    }

    #[test]
    fn a_peer_that_hangs_up_mid_transfer_aborts_the_read() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"partial").unwrap();
        // The writer keeps the pipe open, but the channel goes away.
        drop(theirs);
        let (_, failure) = read_all(WatchedPipe::new(r, ours.as_fd()));
        assert!(
            matches!(failure, Some(UploadFailure::PeerGone)),
            "{failure:?}"
        );
        drop(w);
    }

    #[test]
    fn a_peer_that_shuts_down_before_closing_the_pipe_is_not_a_complete_transfer() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"partial").unwrap();
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
        drop(w);
        let (_, failure) = read_all(WatchedPipe::new(r, ours.as_fd()));
        assert!(
            matches!(failure, Some(UploadFailure::PeerGone)),
            "{failure:?}"
        );
    }

    #[test]
    fn a_closed_pipe_with_a_live_peer_is_the_end_of_the_data() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        w.write_all(b"all of it").unwrap();
        drop(w);
        let (data, failure) = read_all(WatchedPipe::new(r, ours.as_fd()));
        assert_eq!(data, b"all of it");
        assert!(failure.is_none(), "{failure:?}");
    }

    #[test]
    fn finishing_early_reads_the_rest_so_the_writer_is_not_blocked() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (r, mut w) = pipe();
        // More than a pipe buffer holds: the writer only finishes if the rest is read.
        let writer = std::thread::spawn(move || w.write_all(&vec![1u8; 1 << 20]).is_ok());
        let mut upload = Upload::new(WatchedPipe::new(r, ours.as_fd()));
        let mut first = [0u8; 10];
        upload.read_exact(&mut first).unwrap();
        assert!(upload.finish().is_none());
        assert!(writer.join().unwrap());
    }

    /// Fails every read with a fixed error.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "broken on purpose",
            ))
        }
    }

    #[test]
    fn a_read_error_is_kept_for_the_reply_and_repeated() {
        let mut upload = Upload::new(Broken);
        let first = upload.read(&mut [0u8; 8]).unwrap_err();
        let again = upload.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(first.to_string(), "broken on purpose");
        assert_eq!(again.kind(), io::ErrorKind::BrokenPipe);
        match upload.finish() {
            Some(UploadFailure::Read(e)) => assert_eq!(e.to_string(), "broken on purpose"),
            other => panic!("{other:?}"),
        }
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
