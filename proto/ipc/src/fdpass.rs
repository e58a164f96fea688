//! Frames with file descriptors beside them, over unix stream sockets (`SCM_RIGHTS`).
//!
//! The sender passes the descriptors in the same `sendmsg` as the frame's first byte, so they
//! travel with that frame. The receiver reads the frame with `recvmsg` (never reading past
//! the frame's end, so the next frame's descriptors stay queued for it) and:
//! * takes descriptors close-on-exec (`MSG_CMSG_CLOEXEC`), owned as [`OwnedFd`] so an error
//!   path closes them;
//! * refuses truncated control data (`MSG_CTRUNC`), more than [`MAX_FDS_PER_FRAME`] per frame,
//!   and any control message other than `SCM_RIGHTS`;
//! * refuses a message whose [`IpcMessage::fd_count`] differs from what arrived.
//!
//! The syscalls go through `rustix`, whose `recvmsg` hands back received descriptors as
//! [`OwnedFd`] without any `unsafe` on our side (the `nix` crate returns raw integers that
//! would need `unsafe` to own).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
#[cfg(feature = "async")]
use tokio::io::Interest;

use super::frame::{self, FrameLimit, LENGTH_PREFIX_LEN};
use super::{IpcError, IpcMessage, Received};

/// Most descriptors one frame may carry. Every message carries at most two (a data pipe, a
/// log pipe); the bound keeps the receive buffer small and fixed.
pub const MAX_FDS_PER_FRAME: usize = 4;

/// Control buffer size for [`MAX_FDS_PER_FRAME`] descriptors.
const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_FRAME));

/// Checks the descriptors against the message and encodes the frame.
fn prepare<M: IpcMessage>(
    message: &M,
    fds: &[BorrowedFd<'_>],
    limit: FrameLimit,
) -> Result<Vec<u8>, IpcError> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(IpcError::TooManyFds {
            count: fds.len(),
            max: MAX_FDS_PER_FRAME,
        });
    }
    if fds.len() != message.fd_count() {
        return Err(IpcError::FdCountMismatch {
            message: M::NAME,
            variant: message.variant_name(),
            expected: message.fd_count(),
            actual: fds.len(),
        });
    }
    frame::encode_frame(message, limit)
}

/// One `sendmsg`; `fds` go with the first byte of `bytes`.
fn send_chunk(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "control buffer too small for the file descriptors",
        ));
    }
    // NOSIGNAL: a vanished peer is an EPIPE error, not a SIGPIPE that kills the sender. macOS
    // has no MSG_NOSIGNAL; there ward's binaries rely on Rust's runtime ignoring SIGPIPE.
    #[cfg(target_os = "linux")]
    let flags = SendFlags::NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    let flags = SendFlags::empty();
    let sent = rustix::net::sendmsg(socket, &[IoSlice::new(bytes)], &mut control, flags)?;
    if sent == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(sent)
}

/// What one `recvmsg` brought.
struct Chunk {
    bytes: usize,
    fds: Vec<OwnedFd>,
    control_truncated: bool,
    foreign_control: bool,
}

/// One `recvmsg` into `buf`, taking descriptors close-on-exec.
fn recv_chunk(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Chunk> {
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    #[cfg(target_os = "linux")]
    let flags = RecvFlags::CMSG_CLOEXEC;
    // macOS has no MSG_CMSG_CLOEXEC: the descriptors are marked close-on-exec just below, so
    // only a fork + exec on another thread in between could inherit them.
    #[cfg(not(target_os = "linux"))]
    let flags = RecvFlags::empty();
    let received = rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    let mut foreign_control = false;
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(passed) => fds.extend(passed),
            _ => foreign_control = true,
        }
    }
    #[cfg(not(target_os = "linux"))]
    for fd in &fds {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok(Chunk {
        bytes: received.bytes,
        fds,
        control_truncated: received.flags.contains(ReturnFlags::CTRUNC),
        foreign_control,
    })
}

/// Collects one frame and its descriptors from successive `recvmsg` calls.
struct FrameAssembler {
    limit: FrameLimit,
    prefix: [u8; LENGTH_PREFIX_LEN],
    prefix_got: usize,
    /// Allocated once the prefix is complete and its length has passed the cap.
    payload: Option<Vec<u8>>,
    payload_got: usize,
    fds: Vec<OwnedFd>,
}

impl FrameAssembler {
    fn new(limit: FrameLimit) -> Self {
        FrameAssembler {
            limit,
            prefix: [0; LENGTH_PREFIX_LEN],
            prefix_got: 0,
            payload: None,
            payload_got: 0,
            fds: Vec::new(),
        }
    }

    /// Where the next bytes go: never past the end of this frame.
    fn unfilled(&mut self) -> &mut [u8] {
        match &mut self.payload {
            None => &mut self.prefix[self.prefix_got..],
            Some(payload) => &mut payload[self.payload_got..],
        }
    }

    /// Takes one chunk; `Ok(true)` once the frame is complete.
    fn accept(&mut self, chunk: Chunk) -> Result<bool, IpcError> {
        // Descriptors in `chunk` are closed when it drops on any error below.
        if chunk.control_truncated {
            return Err(IpcError::ControlTruncated {
                max: MAX_FDS_PER_FRAME,
            });
        }
        if chunk.foreign_control {
            return Err(IpcError::UnexpectedControlMessage);
        }
        let count = self.fds.len() + chunk.fds.len();
        if count > MAX_FDS_PER_FRAME {
            return Err(IpcError::TooManyFds {
                count,
                max: MAX_FDS_PER_FRAME,
            });
        }
        self.fds.extend(chunk.fds);
        if chunk.bytes == 0 {
            return Err(self.eof_error());
        }
        match &self.payload {
            None => {
                self.prefix_got += chunk.bytes;
                if self.prefix_got == LENGTH_PREFIX_LEN {
                    let len = frame::payload_len(self.prefix, self.limit)?;
                    self.payload = Some(vec![0; len]);
                }
            }
            Some(_) => self.payload_got += chunk.bytes,
        }
        Ok(matches!(&self.payload, Some(p) if p.len() == self.payload_got))
    }

    /// The peer closed: cleanly between frames, or in the middle of this one.
    fn eof_error(&self) -> IpcError {
        match &self.payload {
            None if self.prefix_got == 0 && self.fds.is_empty() => IpcError::PeerClosed,
            None => IpcError::Truncated {
                expected: LENGTH_PREFIX_LEN as u64,
                received: self.prefix_got as u64,
            },
            Some(payload) => IpcError::Truncated {
                expected: (LENGTH_PREFIX_LEN + payload.len()) as u64,
                received: (LENGTH_PREFIX_LEN + self.payload_got) as u64,
            },
        }
    }

    fn finish<M: IpcMessage>(self) -> Result<Received<M>, IpcError> {
        let payload = self.payload.unwrap_or_default();
        let message: M = frame::decode_payload(&payload, self.limit)?;
        if message.fd_count() != self.fds.len() {
            return Err(IpcError::FdCountMismatch {
                message: M::NAME,
                variant: message.variant_name(),
                expected: message.fd_count(),
                actual: self.fds.len(),
            });
        }
        Ok(Received {
            message,
            fds: self.fds,
        })
    }
}

/// Sends one frame with `fds` beside it over a blocking socket.
pub fn send_frame_with_fds<M: IpcMessage>(
    socket: &UnixStream,
    message: &M,
    fds: &[BorrowedFd<'_>],
    limit: FrameLimit,
) -> Result<(), IpcError> {
    let frame = prepare(message, fds, limit)?;
    let mut sent = 0;
    while sent < frame.len() {
        let with = if sent == 0 { fds } else { &[] };
        match send_chunk(socket.as_fd(), &frame[sent..], with) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(frame::map_write_error(e)),
        }
    }
    Ok(())
}

/// Receives one frame and its descriptors from a blocking socket.
pub fn recv_frame_with_fds<M: IpcMessage>(
    socket: &UnixStream,
    limit: FrameLimit,
) -> Result<Received<M>, IpcError> {
    let mut assembler = FrameAssembler::new(limit);
    loop {
        let chunk = match recv_chunk(socket.as_fd(), assembler.unfilled()) {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IpcError::Io(e)),
        };
        if assembler.accept(chunk)? {
            return assembler.finish();
        }
    }
}

#[cfg(feature = "async")]
/// Sends one frame with `fds` beside it over a tokio socket.
pub async fn send_frame_with_fds_async<M: IpcMessage>(
    socket: &tokio::net::UnixStream,
    message: &M,
    fds: &[BorrowedFd<'_>],
    limit: FrameLimit,
) -> Result<(), IpcError> {
    let frame = prepare(message, fds, limit)?;
    let mut sent = 0;
    while sent < frame.len() {
        let with = if sent == 0 { fds } else { &[] };
        let rest = &frame[sent..];
        match socket
            .async_io(Interest::WRITABLE, || {
                send_chunk(socket.as_fd(), rest, with)
            })
            .await
        {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(frame::map_write_error(e)),
        }
    }
    Ok(())
}

#[cfg(feature = "async")]
/// Receives one frame and its descriptors from a tokio socket. Not cancel-safe.
pub async fn recv_frame_with_fds_async<M: IpcMessage>(
    socket: &tokio::net::UnixStream,
    limit: FrameLimit,
) -> Result<Received<M>, IpcError> {
    let mut assembler = FrameAssembler::new(limit);
    loop {
        let result = socket
            .async_io(Interest::READABLE, || {
                recv_chunk(socket.as_fd(), assembler.unfilled())
            })
            .await;
        let chunk = match result {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IpcError::Io(e)),
        };
        if assembler.accept(chunk)? {
            return assembler.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};

    use super::super::frame::tests::{raw_frame, samples, TestMessage};
    use super::super::frame::DEFAULT_MAX_FRAME_LEN;
    #[cfg(feature = "async")]
    use super::super::AsyncChannel;
    use super::super::Channel;
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = rustix::pipe::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    /// Sends raw bytes with descriptors, bypassing every check of the sending side.
    fn raw_send(socket: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let n = rustix::net::sendmsg(
            socket,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(n, bytes.len());
    }

    fn is_cloexec(fd: &OwnedFd) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    #[test]
    fn frames_without_fds_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for m in samples() {
                send_frame_with_fds(&a, &m, &[], FrameLimit::DEFAULT).unwrap();
            }
        });
        for expected in samples() {
            let got = recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT).unwrap();
            assert_eq!(got.message, expected);
            assert!(got.fds.is_empty());
        }
        writer.join().unwrap();
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::PeerClosed)
        ));
    }

    #[test]
    fn passed_pipe_end_works_on_the_other_side() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut read_end, write_end) = pipe();
        let message = TestMessage::WithPipe { what: "log".into() };
        send_frame_with_fds(&a, &message, &[write_end.as_fd()], FrameLimit::DEFAULT).unwrap();
        drop(write_end);
        let got = recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT).unwrap();
        assert_eq!(got.message, message);
        assert_eq!(got.fds.len(), 1);
        assert!(
            is_cloexec(&got.fds[0]),
            "received descriptor is not close-on-exec"
        );
        let mut passed = File::from(got.fds.into_iter().next().unwrap());
        passed.write_all(b"through the passed pipe").unwrap();
        drop(passed);
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the passed pipe");
    }

    #[test]
    fn descriptor_order_is_kept_and_frames_keep_their_own_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        let (mut r3, w3) = pipe();
        let limit = FrameLimit::DEFAULT;
        // Three frames back to back before anything is read.
        send_frame_with_fds(
            &a,
            &TestMessage::WithTwoPipes,
            &[w1.as_fd(), w2.as_fd()],
            limit,
        )
        .unwrap();
        send_frame_with_fds(&a, &TestMessage::Small(1), &[], limit).unwrap();
        let third = TestMessage::WithPipe { what: "x".into() };
        send_frame_with_fds(&a, &third, &[w3.as_fd()], limit).unwrap();
        drop((w1, w2, w3));
        let first = recv_frame_with_fds::<TestMessage>(&b, limit).unwrap();
        assert_eq!(first.fds.len(), 2);
        for (fd, text) in first.fds.into_iter().zip(["one", "two"]) {
            File::from(fd).write_all(text.as_bytes()).unwrap();
        }
        let second = recv_frame_with_fds::<TestMessage>(&b, limit).unwrap();
        assert_eq!(
            (second.message, second.fds.len()),
            (TestMessage::Small(1), 0)
        );
        let third_got = recv_frame_with_fds::<TestMessage>(&b, limit).unwrap();
        assert_eq!(third_got.message, third);
        File::from(third_got.fds.into_iter().next().unwrap())
            .write_all(b"three")
            .unwrap();
        for (reader, expected) in [(&mut r1, "one"), (&mut r2, "two"), (&mut r3, "three")] {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            assert_eq!(text, expected);
        }
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn async_fd_round_trip() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut read_end, write_end) = pipe();
        let message = TestMessage::WithPipe { what: "nar".into() };
        send_frame_with_fds_async(&a, &message, &[write_end.as_fd()], FrameLimit::DEFAULT)
            .await
            .unwrap();
        drop(write_end);
        // A large frame after it, bigger than the socket buffer, so it goes in pieces.
        let big = TestMessage::Blob(vec![7; 900_000]);
        let sender = tokio::spawn(async move {
            send_frame_with_fds_async(&a, &big, &[], FrameLimit::DEFAULT)
                .await
                .unwrap();
            a
        });
        let got = recv_frame_with_fds_async::<TestMessage>(&b, FrameLimit::DEFAULT)
            .await
            .unwrap();
        assert_eq!(got.message, message);
        assert!(is_cloexec(&got.fds[0]));
        File::from(got.fds.into_iter().next().unwrap())
            .write_all(b"async")
            .unwrap();
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "async");
        let got = recv_frame_with_fds_async::<TestMessage>(&b, FrameLimit::DEFAULT)
            .await
            .unwrap();
        assert_eq!(got.message, TestMessage::Blob(vec![7; 900_000]));
        drop(sender.await.unwrap());
        assert!(matches!(
            recv_frame_with_fds_async::<TestMessage>(&b, FrameLimit::DEFAULT).await,
            Err(IpcError::PeerClosed)
        ));
    }

    #[test]
    fn typed_channels_round_trip() {
        let (ours, theirs) =
            Channel::<TestMessage, TestMessage>::pair(FrameLimit::DEFAULT).unwrap();
        let (mut read_end, write_end) = pipe();
        let m = TestMessage::WithPipe {
            what: "typed".into(),
        };
        ours.send(&m, &[write_end.as_fd()]).unwrap();
        let got = theirs.recv().unwrap();
        assert_eq!(got.message, m);
        drop(write_end);
        File::from(got.fds.into_iter().next().unwrap())
            .write_all(b"ok")
            .unwrap();
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ok");
        assert_eq!(ours.limit(), FrameLimit::DEFAULT);
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn typed_async_channels_round_trip() {
        let (ours, theirs) =
            AsyncChannel::<TestMessage, TestMessage>::pair(FrameLimit::DEFAULT).unwrap();
        for m in samples() {
            ours.send(&m, &[]).await.unwrap();
            assert_eq!(theirs.recv().await.unwrap().message, m);
        }
        // A std socket handed over (as from the broker) works the same way.
        let (a, b) = UnixStream::pair().unwrap();
        let async_end =
            AsyncChannel::<TestMessage, TestMessage>::from_std(a, FrameLimit::DEFAULT).unwrap();
        let blocking_end = Channel::<TestMessage, TestMessage>::new(b, FrameLimit::DEFAULT);
        async_end.send(&TestMessage::Small(42), &[]).await.unwrap();
        let got = tokio::task::spawn_blocking(move || blocking_end.recv().unwrap().message)
            .await
            .unwrap();
        assert_eq!(got, TestMessage::Small(42));
    }

    #[test]
    fn sender_refuses_wrong_fd_counts_before_sending() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let needs_one = TestMessage::WithPipe { what: "x".into() };
        assert!(matches!(
            send_frame_with_fds(&a, &needs_one, &[], FrameLimit::DEFAULT),
            Err(IpcError::FdCountMismatch {
                expected: 1,
                actual: 0,
                ..
            })
        ));
        assert!(matches!(
            send_frame_with_fds(
                &a,
                &TestMessage::Small(1),
                &[w.as_fd()],
                FrameLimit::DEFAULT
            ),
            Err(IpcError::FdCountMismatch {
                expected: 0,
                actual: 1,
                ..
            })
        ));
        let five = [w.as_fd(), w.as_fd(), w.as_fd(), w.as_fd(), w.as_fd()];
        assert!(matches!(
            send_frame_with_fds(&a, &TestMessage::Small(1), &five, FrameLimit::DEFAULT),
            Err(IpcError::TooManyFds {
                count: 5,
                max: MAX_FDS_PER_FRAME
            })
        ));
        // Nothing reached the peer.
        drop(a);
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::PeerClosed)
        ));
    }

    #[test]
    fn receiver_refuses_unexpected_fds_and_closes_them() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = pipe();
        let frame = frame::encode_frame(&TestMessage::Small(1), FrameLimit::DEFAULT).unwrap();
        raw_send(&a, &frame, &[w.as_fd()]);
        drop(w);
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::FdCountMismatch {
                expected: 0,
                actual: 1,
                variant: "Small",
                ..
            })
        ));
        // The received copy was closed, so the pipe's only writer is gone: EOF.
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn too_many_fds_in_one_message_is_refused_as_truncated_control_data() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = pipe();
        let frame = frame::encode_frame(&TestMessage::Small(1), FrameLimit::DEFAULT).unwrap();
        let many = vec![w.as_fd(); MAX_FDS_PER_FRAME + 3];
        raw_send(&a, &frame, &many);
        drop(w);
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::ControlTruncated {
                max: MAX_FDS_PER_FRAME
            })
        ));
        let mut rest = Vec::new();
        assert_eq!(
            r.read_to_end(&mut rest).unwrap(),
            0,
            "a received descriptor leaked"
        );
    }

    #[test]
    fn fds_spread_over_a_frame_are_counted_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, w) = pipe();
        let frame = frame::encode_frame(&TestMessage::WithTwoPipes, FrameLimit::DEFAULT).unwrap();
        // Prefix with 3 descriptors, the rest with 3 more: 6 > MAX in one frame.
        let three = [w.as_fd(), w.as_fd(), w.as_fd()];
        raw_send(&a, &frame[..LENGTH_PREFIX_LEN], &three);
        raw_send(&a, &frame[LENGTH_PREFIX_LEN..], &three);
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::TooManyFds {
                count: 6,
                max: MAX_FDS_PER_FRAME
            })
        ));
    }

    #[test]
    fn oversized_prefix_from_a_socket_peer_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        raw_send(&a, &(1u32 << 31).to_le_bytes(), &[]);
        match recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT) {
            Err(IpcError::FrameTooLarge { size, cap }) => {
                assert_eq!((size, cap), (1 << 31, DEFAULT_MAX_FRAME_LEN))
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn oversized_prefix_from_an_async_socket_peer_is_refused() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let a = a.into_std().unwrap();
        a.set_nonblocking(false).unwrap();
        raw_send(&a, &(1u32 << 31).to_le_bytes(), &[]);
        assert!(matches!(
            recv_frame_with_fds_async::<TestMessage>(&b, FrameLimit::DEFAULT).await,
            Err(IpcError::FrameTooLarge {
                size: 2147483648,
                ..
            })
        ));
    }

    #[test]
    fn truncated_frames_over_a_socket() {
        let frame =
            frame::encode_frame(&TestMessage::Blob(vec![1; 40]), FrameLimit::DEFAULT).unwrap();
        for cut in [1, 3, LENGTH_PREFIX_LEN, 10, frame.len() - 1] {
            let (a, b) = UnixStream::pair().unwrap();
            raw_send(&a, &frame[..cut], &[]);
            drop(a);
            match recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT) {
                Err(IpcError::Truncated { received, expected }) => {
                    assert_eq!(received, cut as u64);
                    assert!(expected > received);
                }
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn truncated_frame_with_its_fd_over_an_async_socket() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let a = a.into_std().unwrap();
        a.set_nonblocking(false).unwrap();
        let (_r, w) = pipe();
        let frame = frame::encode_frame(
            &TestMessage::WithPipe { what: "x".into() },
            FrameLimit::DEFAULT,
        )
        .unwrap();
        raw_send(&a, &frame[..6], &[w.as_fd()]);
        drop(a);
        assert!(matches!(
            recv_frame_with_fds_async::<TestMessage>(&b, FrameLimit::DEFAULT).await,
            Err(IpcError::Truncated { received: 6, .. })
        ));
    }

    #[test]
    fn garbage_over_a_socket_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        raw_send(&a, &raw_frame(b"TEST", &[0xff, 0xff, 0xff]), &[]);
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::Decode {
                message: "TestMessage",
                ..
            })
        ));
        raw_send(&a, b"GET / HTTP/1.1\r\n\r\n", &[]);
        // "GET " read as a little-endian length is ~542 MB: refused by the cap.
        assert!(matches!(
            recv_frame_with_fds::<TestMessage>(&b, FrameLimit::DEFAULT),
            Err(IpcError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn sending_to_a_closed_peer_reports_peer_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(matches!(
            send_frame_with_fds(&a, &TestMessage::Small(1), &[], FrameLimit::DEFAULT),
            Err(IpcError::PeerClosed)
        ));
    }
}
