//! Frames: `u32` little-endian payload length, then the payload = 4-byte tag + bincode body.
//!
//! ```text
//! +----------------+-----------+---------------------------------------+
//! | len: u32 (LE)  | tag [4]   | bincode (standard config: varint, LE)  |
//! +----------------+-----------+---------------------------------------+
//!                  |<-------------------- len bytes ------------------->|
//! ```
//!
//! * `len` is checked against the channel's [`FrameLimit`] before a buffer is allocated, so a
//!   peer announcing 2 GiB costs nothing but the error.
//! * The body is decoded with a bincode byte limit of the smallest bucket of
//!   [`DECODE_LIMIT_BUCKETS`] that holds the cap, which bounds what a small frame can make the
//!   decoder allocate (bincode allocates a string or byte vector before reading it).
//! * A body must be consumed exactly; leftover bytes are an error.
//!
//! This module moves frames over any byte stream (`Read`/`Write`, tokio's
//! `AsyncRead`/`AsyncWrite`); frames with file descriptors beside them need a unix socket and
//! [`super::fdpass`].

use std::io::{self, Read, Write};

use bincode::config::{Configuration, LittleEndian, NoLimit, Varint};
use serde::de::DeserializeOwned;
#[cfg(feature = "async")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{IpcError, IpcMessage};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the tag at the start of every payload.
pub const TAG_LEN: usize = 4;
/// The default cap on a frame's payload: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1 << 20;
/// The largest cap any channel may configure: 64 MiB.
pub const MAX_FRAME_LEN_CEILING: u32 = 64 << 20;
/// Bincode decode limits; a channel decodes with the smallest one at least as large as its cap.
pub const DECODE_LIMIT_BUCKETS: [usize; 4] = [64 << 10, 1 << 20, 16 << 20, 64 << 20];

/// The largest payload a channel accepts or sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimit {
    max_len: u32,
}

impl FrameLimit {
    /// [`DEFAULT_MAX_FRAME_LEN`].
    pub const DEFAULT: FrameLimit = FrameLimit {
        max_len: DEFAULT_MAX_FRAME_LEN,
    };

    /// A cap of `max_len` bytes; it must be at least 1 and at most [`MAX_FRAME_LEN_CEILING`].
    pub fn new(max_len: u32) -> Result<FrameLimit, IpcError> {
        if max_len == 0 || max_len > MAX_FRAME_LEN_CEILING {
            return Err(IpcError::InvalidFrameLimit {
                requested: u64::from(max_len),
                ceiling: MAX_FRAME_LEN_CEILING,
            });
        }
        Ok(FrameLimit { max_len })
    }

    /// The cap in bytes.
    pub const fn max_len(self) -> u32 {
        self.max_len
    }

    /// Checks a payload length (announced by a peer, or of a message about to be sent).
    pub fn check(self, len: u64) -> Result<usize, IpcError> {
        match usize::try_from(len) {
            Ok(n) if len <= u64::from(self.max_len) => Ok(n),
            _ => Err(IpcError::FrameTooLarge {
                size: len,
                cap: self.max_len,
            }),
        }
    }
}

impl Default for FrameLimit {
    fn default() -> Self {
        FrameLimit::DEFAULT
    }
}

/// The one bincode configuration all frames use. Fixed: changing it changes [`super::IPC_VERSION`].
fn bincode_config() -> Configuration<LittleEndian, Varint, NoLimit> {
    bincode::config::standard()
}

/// Encodes `message` as a whole frame (prefix, tag, body), refusing one larger than `limit`.
pub fn encode_frame<M: IpcMessage>(message: &M, limit: FrameLimit) -> Result<Vec<u8>, IpcError> {
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    frame.extend_from_slice(&M::TAG);
    bincode::serde::encode_into_std_write(message, &mut frame, bincode_config()).map_err(
        |source| IpcError::Encode {
            message: M::NAME,
            source,
        },
    )?;
    let payload_len = (frame.len() - LENGTH_PREFIX_LEN) as u64;
    limit.check(payload_len)?;
    let prefix = u32::try_from(payload_len).map_err(|_| IpcError::FrameTooLarge {
        size: payload_len,
        cap: limit.max_len(),
    })?;
    frame[..LENGTH_PREFIX_LEN].copy_from_slice(&prefix.to_le_bytes());
    Ok(frame)
}

/// Reads the payload length from a prefix and checks it against `limit`.
pub fn payload_len(prefix: [u8; LENGTH_PREFIX_LEN], limit: FrameLimit) -> Result<usize, IpcError> {
    limit.check(u64::from(u32::from_le_bytes(prefix)))
}

/// Decodes a payload (tag + body) as an `M`.
pub fn decode_payload<M: IpcMessage>(payload: &[u8], limit: FrameLimit) -> Result<M, IpcError> {
    limit.check(payload.len() as u64)?;
    let Some((tag, body)) = payload.split_first_chunk::<TAG_LEN>() else {
        return Err(IpcError::Truncated {
            expected: (LENGTH_PREFIX_LEN + TAG_LEN) as u64,
            received: (LENGTH_PREFIX_LEN + payload.len()) as u64,
        });
    };
    if *tag != M::TAG {
        return Err(IpcError::WrongTag {
            expected: M::NAME,
            expected_tag: M::TAG,
            found: *tag,
        });
    }
    let (message, used) = decode_body::<M>(body, limit).map_err(|source| IpcError::Decode {
        message: M::NAME,
        source,
    })?;
    if used != body.len() {
        return Err(IpcError::TrailingBytes {
            message: M::NAME,
            unused: body.len() - used,
        });
    }
    Ok(message)
}

fn decode_body<M: DeserializeOwned>(
    body: &[u8],
    limit: FrameLimit,
) -> Result<(M, usize), bincode::error::DecodeError> {
    let cap = limit.max_len() as usize;
    if cap <= DECODE_LIMIT_BUCKETS[0] {
        decode_limited::<M, { DECODE_LIMIT_BUCKETS[0] }>(body)
    } else if cap <= DECODE_LIMIT_BUCKETS[1] {
        decode_limited::<M, { DECODE_LIMIT_BUCKETS[1] }>(body)
    } else if cap <= DECODE_LIMIT_BUCKETS[2] {
        decode_limited::<M, { DECODE_LIMIT_BUCKETS[2] }>(body)
    } else {
        decode_limited::<M, { DECODE_LIMIT_BUCKETS[3] }>(body)
    }
}

fn decode_limited<M: DeserializeOwned, const LIMIT: usize>(
    body: &[u8],
) -> Result<(M, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(body, bincode_config().with_limit::<LIMIT>())
}

/// Refuses a message that needs file descriptors on a stream that cannot carry them.
fn check_no_fds<M: IpcMessage>(message: &M) -> Result<(), IpcError> {
    match message.fd_count() {
        0 => Ok(()),
        expected => Err(IpcError::FdCountMismatch {
            message: M::NAME,
            variant: message.variant_name(),
            expected,
            actual: 0,
        }),
    }
}

/// Writes one frame to a blocking stream.
pub fn write_frame<W: Write, M: IpcMessage>(
    writer: &mut W,
    message: &M,
    limit: FrameLimit,
) -> Result<(), IpcError> {
    check_no_fds(message)?;
    let frame = encode_frame(message, limit)?;
    writer.write_all(&frame).map_err(map_write_error)?;
    writer.flush().map_err(map_write_error)
}

/// Reads one frame from a blocking stream.
pub fn read_frame<R: Read, M: IpcMessage>(
    reader: &mut R,
    limit: FrameLimit,
) -> Result<M, IpcError> {
    let mut prefix = [0; LENGTH_PREFIX_LEN];
    let got = read_full(reader, &mut prefix)?;
    check_prefix_complete(got)?;
    let len = payload_len(prefix, limit)?;
    let mut payload = vec![0; len];
    let got = read_full(reader, &mut payload)?;
    check_payload_complete(len, got)?;
    let message: M = decode_payload(&payload, limit)?;
    check_no_fds(&message)?;
    Ok(message)
}

#[cfg(feature = "async")]
/// Writes one frame to an async stream.
pub async fn write_frame_async<W: AsyncWrite + Unpin, M: IpcMessage>(
    writer: &mut W,
    message: &M,
    limit: FrameLimit,
) -> Result<(), IpcError> {
    check_no_fds(message)?;
    let frame = encode_frame(message, limit)?;
    writer.write_all(&frame).await.map_err(map_write_error)?;
    writer.flush().await.map_err(map_write_error)
}

#[cfg(feature = "async")]
/// Reads one frame from an async stream. Not cancel-safe (see [`super::AsyncChannel`]).
pub async fn read_frame_async<R: AsyncRead + Unpin, M: IpcMessage>(
    reader: &mut R,
    limit: FrameLimit,
) -> Result<M, IpcError> {
    let mut prefix = [0; LENGTH_PREFIX_LEN];
    let got = read_full_async(reader, &mut prefix).await?;
    check_prefix_complete(got)?;
    let len = payload_len(prefix, limit)?;
    let mut payload = vec![0; len];
    let got = read_full_async(reader, &mut payload).await?;
    check_payload_complete(len, got)?;
    let message: M = decode_payload(&payload, limit)?;
    check_no_fds(&message)?;
    Ok(message)
}

/// EOF before the first byte of a frame is a clean close; inside the prefix it is truncation.
fn check_prefix_complete(got: usize) -> Result<(), IpcError> {
    match got {
        0 => Err(IpcError::PeerClosed),
        LENGTH_PREFIX_LEN => Ok(()),
        partial => Err(IpcError::Truncated {
            expected: LENGTH_PREFIX_LEN as u64,
            received: partial as u64,
        }),
    }
}

fn check_payload_complete(len: usize, got: usize) -> Result<(), IpcError> {
    if got == len {
        Ok(())
    } else {
        Err(IpcError::Truncated {
            expected: (LENGTH_PREFIX_LEN + len) as u64,
            received: (LENGTH_PREFIX_LEN + got) as u64,
        })
    }
}

/// A peer that went away while we wrote is reported as such, not as a bare I/O error.
pub(crate) fn map_write_error(e: io::Error) -> IpcError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => IpcError::PeerClosed,
        _ => IpcError::Io(e),
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(feature = "async")]
async fn read_full_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::net::UnixStream;

    use serde::{Deserialize, Serialize};

    use super::*;

    /// A message enum for exercising the frame layer alone.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) enum TestMessage {
        Small(u32),
        Blob(Vec<u8>),
        Text { name: String, parts: Vec<String> },
        WithPipe { what: String },
        WithTwoPipes,
    }

    impl IpcMessage for TestMessage {
        const NAME: &'static str = "TestMessage";
        const TAG: [u8; 4] = *b"TEST";
        fn fd_count(&self) -> usize {
            match self {
                TestMessage::WithPipe { .. } => 1,
                TestMessage::WithTwoPipes => 2,
                _ => 0,
            }
        }
        fn variant_name(&self) -> &'static str {
            match self {
                TestMessage::Small(_) => "Small",
                TestMessage::Blob(_) => "Blob",
                TestMessage::Text { .. } => "Text",
                TestMessage::WithPipe { .. } => "WithPipe",
                TestMessage::WithTwoPipes => "WithTwoPipes",
            }
        }
    }

    /// Same shape, other tag: stands for "another direction's enum".
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum OtherMessage {
        Small(u32),
    }

    impl IpcMessage for OtherMessage {
        const NAME: &'static str = "OtherMessage";
        const TAG: [u8; 4] = *b"OTHR";
        fn fd_count(&self) -> usize {
            0
        }
        fn variant_name(&self) -> &'static str {
            "Small"
        }
    }

    pub(crate) fn samples() -> Vec<TestMessage> {
        vec![
            TestMessage::Small(7),
            TestMessage::Blob(vec![0, 1, 2, 255]),
            TestMessage::Blob(vec![0xa5; 100_000]),
            TestMessage::Text {
                name: "ünïcode".into(),
                parts: vec!["a".into(), String::new()],
            },
        ]
    }

    /// Counts how many bytes were taken from the inner reader.
    struct CountingReader<R> {
        inner: R,
        taken: usize,
    }

    impl<R: Read> Read for CountingReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n;
            Ok(n)
        }
    }

    /// A payload with our tag and the given body.
    pub(crate) fn raw_frame(tag: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut frame = ((TAG_LEN + body.len()) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(tag);
        frame.extend_from_slice(body);
        frame
    }

    #[test]
    fn frame_round_trip_over_std_socket() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            for m in samples() {
                write_frame(&mut a, &m, FrameLimit::DEFAULT).unwrap();
            }
        });
        for expected in samples() {
            let got: TestMessage = read_frame(&mut b, FrameLimit::DEFAULT).unwrap();
            assert_eq!(got, expected);
        }
        writer.join().unwrap();
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut b, FrameLimit::DEFAULT),
            Err(IpcError::PeerClosed)
        ));
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn frame_round_trip_over_tokio_socket() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            for m in samples() {
                write_frame_async(&mut a, &m, FrameLimit::DEFAULT)
                    .await
                    .unwrap();
            }
        });
        for expected in samples() {
            let got: TestMessage = read_frame_async(&mut b, FrameLimit::DEFAULT).await.unwrap();
            assert_eq!(got, expected);
        }
        writer.await.unwrap();
        assert!(matches!(
            read_frame_async::<_, TestMessage>(&mut b, FrameLimit::DEFAULT).await,
            Err(IpcError::PeerClosed)
        ));
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading_the_payload() {
        let mut bytes = (1u32 << 31).to_le_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        let mut reader = CountingReader {
            inner: &bytes[..],
            taken: 0,
        };
        match read_frame::<_, TestMessage>(&mut reader, FrameLimit::DEFAULT) {
            Err(IpcError::FrameTooLarge { size, cap }) => {
                assert_eq!(size, 1 << 31);
                assert_eq!(cap, DEFAULT_MAX_FRAME_LEN);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(reader.taken, LENGTH_PREFIX_LEN, "payload bytes were read");
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn oversized_prefix_from_a_tokio_peer_is_refused() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = read_frame_async::<_, TestMessage>(&mut b, FrameLimit::DEFAULT).await;
        assert!(
            matches!(err, Err(IpcError::FrameTooLarge { size, .. }) if size == u64::from(u32::MAX))
        );
    }

    #[test]
    fn frame_just_at_the_cap_passes_and_one_byte_more_is_refused() {
        let limit = FrameLimit::new(1000).unwrap();
        // Tag (4) + variant (1) + length varint (3 for 251..=65535) + bytes.
        let fits = TestMessage::Blob(vec![1; 1000 - 4 - 1 - 3]);
        let frame = encode_frame(&fits, limit).unwrap();
        assert_eq!(frame.len(), LENGTH_PREFIX_LEN + 1000);
        let mut reader = &frame[..];
        assert_eq!(
            read_frame::<_, TestMessage>(&mut reader, limit).unwrap(),
            fits
        );
        let too_big = TestMessage::Blob(vec![1; 1000 - 4 - 1 - 3 + 1]);
        match encode_frame(&too_big, limit) {
            Err(IpcError::FrameTooLarge {
                size: 1001,
                cap: 1000,
            }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &too_big, limit),
            Err(IpcError::FrameTooLarge { .. })
        ));
        assert!(sink.is_empty(), "an oversized frame was partly written");
        // A receiver with a smaller cap refuses what a larger one sent.
        let small = FrameLimit::new(999).unwrap();
        let mut reader = &frame[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut reader, small),
            Err(IpcError::FrameTooLarge {
                size: 1000,
                cap: 999
            })
        ));
    }

    #[test]
    fn truncated_frames_are_reported_as_such() {
        let frame = encode_frame(&TestMessage::Small(1), FrameLimit::DEFAULT).unwrap();
        for cut in 1..frame.len() {
            let mut reader = &frame[..cut];
            match read_frame::<_, TestMessage>(&mut reader, FrameLimit::DEFAULT) {
                Err(IpcError::Truncated { expected, received }) => {
                    assert_eq!(received, cut as u64);
                    assert!(expected > received);
                }
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn truncated_frame_from_a_tokio_peer() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let frame = encode_frame(&TestMessage::Blob(vec![9; 50]), FrameLimit::DEFAULT).unwrap();
        a.write_all(&frame[..20]).await.unwrap();
        drop(a);
        let err = read_frame_async::<_, TestMessage>(&mut b, FrameLimit::DEFAULT).await;
        assert!(
            matches!(err, Err(IpcError::Truncated { received: 20, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_bodies_are_refused_with_decode_errors() {
        let limit = FrameLimit::DEFAULT;
        // Variant index 200 does not exist.
        let mut r = &raw_frame(b"TEST", &[200])[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, limit),
            Err(IpcError::Decode { .. })
        ));
        // Empty body.
        let mut r = &raw_frame(b"TEST", &[])[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, limit),
            Err(IpcError::Decode { .. })
        ));
        // A string that is not UTF-8.
        let mut r = &raw_frame(b"TEST", &[2, 2, 0xff, 0xfe, 0])[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, limit),
            Err(IpcError::Decode { .. })
        ));
        // A payload shorter than the tag.
        let mut r = &[2u8, 0, 0, 0, b'T', b'E'][..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, limit),
            Err(IpcError::Truncated { .. })
        ));
        // Pseudo-random bytes never panic and never pass as a message with trailing junk.
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let frame = raw_frame(b"TEST", &body);
            let mut r = &frame[..];
            match read_frame::<_, TestMessage>(&mut r, limit) {
                // Whatever decoded is a real message: it survives its own round trip.
                Ok(m) => {
                    let again = encode_frame(&m, limit).unwrap();
                    assert_eq!(
                        read_frame::<_, TestMessage>(&mut &again[..], limit).unwrap(),
                        m
                    );
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        IpcError::Decode { .. }
                            | IpcError::TrailingBytes { .. }
                            | IpcError::FdCountMismatch { .. }
                    ),
                    "unexpected error {e:?}"
                ),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode_frame(&TestMessage::Small(3), FrameLimit::DEFAULT).unwrap();
        frame.push(0);
        let new_len = (frame.len() - LENGTH_PREFIX_LEN) as u32;
        frame[..4].copy_from_slice(&new_len.to_le_bytes());
        let mut r = &frame[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, FrameLimit::DEFAULT),
            Err(IpcError::TrailingBytes { unused: 1, .. })
        ));
    }

    #[test]
    fn another_enums_frame_is_refused_by_its_tag() {
        let frame = encode_frame(&OtherMessage::Small(5), FrameLimit::DEFAULT).unwrap();
        let mut r = &frame[..];
        match read_frame::<_, TestMessage>(&mut r, FrameLimit::DEFAULT) {
            Err(IpcError::WrongTag {
                expected: "TestMessage",
                found,
                ..
            }) => {
                assert_eq!(&found, b"OTHR")
            }
            other => panic!("expected WrongTag, got {other:?}"),
        }
    }

    #[test]
    fn claimed_lengths_inside_the_body_are_bounded() {
        // Text (variant 2) whose name claims 2^40 bytes (varint marker 253: a u64 follows).
        // Strings are allocated before they are read, so the decode limit must stop this: an
        // attempt to allocate 1 TiB would abort the test process.
        let mut body = vec![2, 253];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        match read_frame::<_, TestMessage>(&mut &raw_frame(b"TEST", &body)[..], FrameLimit::DEFAULT)
        {
            Err(IpcError::Decode { source, .. }) => {
                assert!(
                    matches!(source, bincode::error::DecodeError::LimitExceeded),
                    "{source}"
                )
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        // A name just over the bucket of a small channel is refused by the limit too, even
        // though a 2 MiB claim is harmless on a 16 MiB channel.
        let mut body = vec![2, 253];
        body.extend_from_slice(&(2u64 << 20).to_le_bytes());
        let small = FrameLimit::new(4096).unwrap();
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut &raw_frame(b"TEST", &body)[..], small),
            Err(IpcError::Decode {
                source: bincode::error::DecodeError::LimitExceeded,
                ..
            })
        ));
        // Blob (variant 1) claiming 2^40 bytes, and Text with a list claiming 2^32 strings:
        // sequences grow as elements arrive, so these end at the end of the body.
        for body in [vec![1u8, 253], vec![2, 0, 253]] {
            let mut body = body;
            body.extend_from_slice(&(1u64 << 40).to_le_bytes());
            assert!(matches!(
                read_frame::<_, TestMessage>(
                    &mut &raw_frame(b"TEST", &body)[..],
                    FrameLimit::DEFAULT
                ),
                Err(IpcError::Decode { .. })
            ));
        }
    }

    #[test]
    fn messages_with_fds_need_an_fd_channel() {
        let mut sink = Vec::new();
        let m = TestMessage::WithPipe { what: "nar".into() };
        assert!(matches!(
            write_frame(&mut sink, &m, FrameLimit::DEFAULT),
            Err(IpcError::FdCountMismatch {
                expected: 1,
                actual: 0,
                variant: "WithPipe",
                ..
            })
        ));
        let frame = encode_frame(&m, FrameLimit::DEFAULT).unwrap();
        let mut r = &frame[..];
        assert!(matches!(
            read_frame::<_, TestMessage>(&mut r, FrameLimit::DEFAULT),
            Err(IpcError::FdCountMismatch { .. })
        ));
    }

    #[test]
    fn frame_limits_are_bounded() {
        assert!(matches!(
            FrameLimit::new(0),
            Err(IpcError::InvalidFrameLimit { .. })
        ));
        assert!(FrameLimit::new(MAX_FRAME_LEN_CEILING).is_ok());
        let err = FrameLimit::new(MAX_FRAME_LEN_CEILING + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipc frame cap of 67108865 bytes is outside 1..=67108864"
        );
        assert_eq!(
            *DECODE_LIMIT_BUCKETS.last().unwrap(),
            MAX_FRAME_LEN_CEILING as usize
        );
        assert_eq!(FrameLimit::default(), FrameLimit::DEFAULT);
        assert!(FrameLimit::DEFAULT.check(u64::MAX).is_err());
    }

    #[test]
    fn error_messages_name_the_sizes() {
        let err = FrameLimit::DEFAULT.check(1 << 31).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ipc frame of 2147483648 bytes exceeds the cap of 1048576 bytes"
        );
    }
}
