//! The framed (chunked) upload transport (protocol-facts §1.4).
//!
//! A framed stream is a series of chunks, each a `u64` length followed by that many bytes with
//! no padding; a chunk of length 0 ends the stream. The daemon must read up to and including the
//! terminator **even when the operation fails**, or the next op is read from the middle of the
//! upload: always finish with [`FramedReader::drain`].

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{WireError, WireReader, WireWriter};

/// Chunk size used by [`FramedWriter`] and [`put_framed`] by default: what Nix clients use
/// (the default buffer size of their `BufferedSink`).
pub const DEFAULT_FRAME_CHUNK: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
enum FrameState {
    /// Reading a chunk header; `filled` bytes of it are in `buf`.
    Header { buf: [u8; 8], filled: usize },
    /// Inside a chunk with `remaining` payload bytes left.
    Chunk { remaining: u64 },
    /// The terminator has been read.
    Done,
}

/// Turns a framed stream into an [`AsyncRead`] of its payload.
///
/// The reader ends (returns 0 bytes) after the terminating empty chunk. A chunk header above
/// [`Limits::max_frame`](super::Limits::max_frame) or end of file before the terminator is an
/// error: [`drain`](Self::drain) and [`read_all`](Self::read_all) return it as a
/// [`WireError`], and the `io::Error`s produced by `poll_read` carry the [`WireError`] inside
/// (`io::Error::get_ref`), which [`WireReader`] unwraps again when it reads through a framed
/// stream.
///
/// Nothing is allocated per chunk: payload bytes go straight into the caller's buffer.
#[derive(Debug)]
#[must_use = "a framed stream must be drained to its terminator"]
pub struct FramedReader<'a, R> {
    inner: &'a mut WireReader<R>,
    state: FrameState,
    max_frame: u64,
    payload_bytes: u64,
}

impl<'a, R: AsyncRead + Unpin> FramedReader<'a, R> {
    /// Starts reading a framed stream from `inner`.
    pub fn new(inner: &'a mut WireReader<R>) -> Self {
        let max_frame = inner.limits().max_frame;
        FramedReader {
            inner,
            state: FrameState::Header {
                buf: [0; 8],
                filled: 0,
            },
            max_frame,
            payload_bytes: 0,
        }
    }

    /// True once the terminating empty chunk has been read.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, FrameState::Done)
    }

    /// Payload bytes delivered (or skipped) so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Reads and discards everything up to and including the terminator. Returns the number of
    /// payload bytes skipped. Call this whatever happened to the operation; it is a no-op on a
    /// stream that is already finished.
    pub async fn drain(&mut self) -> Result<u64, WireError> {
        let mut scratch = [0u8; 8192];
        let mut skipped = 0u64;
        loop {
            let n = self
                .read(&mut scratch)
                .await
                .map_err(|e| WireError::from_io("framed data", e))?;
            if n == 0 {
                return Ok(skipped);
            }
            skipped += n as u64;
        }
    }

    /// Reads the whole payload into memory, refusing more than `max` bytes. On
    /// [`WireError::StringTooLong`] the stream is left unfinished: call [`drain`](Self::drain).
    pub async fn read_all(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        let mut scratch = [0u8; 8192];
        loop {
            let n = self
                .read(&mut scratch)
                .await
                .map_err(|e| WireError::from_io(field, e))?;
            if n == 0 {
                return Ok(out);
            }
            if out.len() + n > max {
                return Err(WireError::StringTooLong {
                    field,
                    len: (out.len() + n) as u64,
                    max,
                });
            }
            out.extend_from_slice(&scratch[..n]);
        }
    }
}

fn eof(field: &'static str) -> io::Error {
    WireError::UnexpectedEof { field }.into()
}

impl<R: AsyncRead + Unpin> AsyncRead for FramedReader<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                FrameState::Done => return Poll::Ready(Ok(())),
                FrameState::Header {
                    buf: mut header,
                    filled,
                } => {
                    let mut sub = ReadBuf::new(&mut header[filled..]);
                    ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut sub))?;
                    let got = sub.filled().len();
                    if got == 0 {
                        return Poll::Ready(Err(eof("frame length")));
                    }
                    let filled = filled + got;
                    if filled < 8 {
                        this.state = FrameState::Header {
                            buf: header,
                            filled,
                        };
                        continue;
                    }
                    let len = u64::from_le_bytes(header);
                    this.state = if len == 0 {
                        FrameState::Done
                    } else if len > this.max_frame {
                        return Poll::Ready(Err(WireError::FrameTooLarge {
                            len,
                            max: this.max_frame,
                        }
                        .into()));
                    } else {
                        FrameState::Chunk { remaining: len }
                    };
                }
                FrameState::Chunk { remaining } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    let dst = buf.initialize_unfilled_to(want);
                    let mut sub = ReadBuf::new(dst);
                    ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut sub))?;
                    let got = sub.filled().len();
                    if got == 0 {
                        return Poll::Ready(Err(eof("framed data")));
                    }
                    buf.advance(got);
                    this.payload_bytes += got as u64;
                    let remaining = remaining - got as u64;
                    this.state = if remaining == 0 {
                        FrameState::Header {
                            buf: [0; 8],
                            filled: 0,
                        }
                    } else {
                        FrameState::Chunk { remaining }
                    };
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Writes a framed stream (the client side of an upload; used by tests and test clients).
#[derive(Debug)]
pub struct FramedWriter<'a, W> {
    inner: &'a mut W,
    pending: Vec<u8>,
    chunk: usize,
}

impl<'a, W: AsyncWrite + Unpin> FramedWriter<'a, W> {
    /// A writer emitting chunks of [`DEFAULT_FRAME_CHUNK`] bytes.
    pub fn new(inner: &'a mut W) -> Self {
        Self::with_chunk_size(inner, DEFAULT_FRAME_CHUNK)
    }

    /// A writer emitting chunks of `chunk` bytes (at least 1).
    pub fn with_chunk_size(inner: &'a mut W, chunk: usize) -> Self {
        FramedWriter {
            inner,
            pending: Vec::new(),
            chunk: chunk.max(1),
        }
    }

    async fn emit(&mut self, len: usize) -> io::Result<()> {
        let mut header = WireWriter::new();
        header.put_u64(len as u64);
        self.inner.write_all(header.as_bytes()).await?;
        self.inner.write_all(&self.pending[..len]).await?;
        self.pending.drain(..len);
        Ok(())
    }

    /// Queues `data`, sending every full chunk.
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= self.chunk {
            self.emit(self.chunk).await?;
        }
        Ok(())
    }

    /// Sends the last partial chunk and the terminator, then flushes.
    pub async fn finish(mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(self.pending.len()).await?;
        }
        self.inner.write_all(&0u64.to_le_bytes()).await?;
        self.inner.flush().await
    }
}

/// Encodes `data` as a complete framed stream into `w`, in chunks of at most `chunk` bytes.
pub fn put_framed(w: &mut WireWriter, data: &[u8], chunk: usize) {
    for piece in data.chunks(chunk.max(1)) {
        w.put_u64(piece.len() as u64);
        w.put_raw(piece);
    }
    w.put_u64(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Limits;
    use std::io::Cursor;

    fn reader(bytes: Vec<u8>) -> WireReader<Cursor<Vec<u8>>> {
        WireReader::new(Cursor::new(bytes))
    }

    #[tokio::test]
    async fn reassembles_chunks_and_stops_at_the_terminator() {
        let payload: Vec<u8> = (0..100u8).collect();
        let mut w = WireWriter::new();
        put_framed(&mut w, &payload, 7);
        w.put_u64(0xdead); // the next op
        let mut r = reader(w.into_bytes());
        let mut framed = FramedReader::new(&mut r);
        let got = framed.read_all("data", 1000).await.unwrap();
        assert!(framed.is_finished());
        assert_eq!(got, payload);
        assert_eq!(r.read_u64("next op").await.unwrap(), 0xdead);
    }

    #[tokio::test]
    async fn drain_skips_to_the_terminator_after_a_partial_read() {
        let mut w = WireWriter::new();
        put_framed(&mut w, &[1u8; 50_000], DEFAULT_FRAME_CHUNK);
        w.put_u64(42);
        let mut r = reader(w.into_bytes());
        let mut framed = FramedReader::new(&mut r);
        let mut first = [0u8; 10];
        framed.read_exact(&mut first).await.unwrap();
        assert_eq!(framed.drain().await.unwrap(), 50_000 - 10);
        assert_eq!(framed.drain().await.unwrap(), 0);
        assert_eq!(r.read_u64("next").await.unwrap(), 42);
    }

    #[tokio::test]
    async fn empty_stream() {
        let mut r = reader(0u64.to_le_bytes().to_vec());
        let mut framed = FramedReader::new(&mut r);
        assert_eq!(framed.read_all("data", 0).await.unwrap(), Vec::<u8>::new());
    }

    #[tokio::test]
    async fn oversized_chunk_header_is_refused() {
        for len in [u64::MAX, 1 << 40, 16 * 1024 * 1024 + 1] {
            let mut r = reader(len.to_le_bytes().to_vec());
            let mut framed = FramedReader::new(&mut r);
            assert!(matches!(
                framed.drain().await,
                Err(WireError::FrameTooLarge { .. })
            ));
        }
    }

    #[tokio::test]
    async fn truncation_anywhere_is_an_eof_error() {
        let mut w = WireWriter::new();
        put_framed(&mut w, b"hello, framed world", 5);
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let mut r = reader(bytes[..cut].to_vec());
            let mut framed = FramedReader::new(&mut r);
            let err = framed.drain().await.unwrap_err();
            assert!(err.is_eof(), "cut {cut}: {err:?}");
        }
    }

    #[tokio::test]
    async fn read_all_refuses_too_much_and_drain_recovers() {
        let mut w = WireWriter::new();
        put_framed(&mut w, &[7u8; 100], 10);
        w.put_u64(5);
        let mut r = reader(w.into_bytes());
        let mut framed = FramedReader::new(&mut r);
        assert!(matches!(
            framed.read_all("log", 50).await,
            Err(WireError::StringTooLong { .. })
        ));
        framed.drain().await.unwrap();
        assert_eq!(r.read_u64("next").await.unwrap(), 5);
    }

    #[tokio::test]
    async fn writer_matches_put_framed() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut out = Vec::new();
        let mut fw = FramedWriter::with_chunk_size(&mut out, 300);
        fw.write(&payload[..10]).await.unwrap();
        fw.write(&payload[10..]).await.unwrap();
        fw.finish().await.unwrap();
        let mut expected = WireWriter::new();
        put_framed(&mut expected, &payload, 300);
        assert_eq!(out, expected.into_bytes());
    }

    #[tokio::test]
    async fn frame_limit_comes_from_the_reader() {
        let limits = Limits {
            max_frame: 4,
            ..Limits::default()
        };
        let mut w = WireWriter::new();
        put_framed(&mut w, b"12345", 5);
        let mut r = WireReader::with_limits(Cursor::new(w.into_bytes()), limits);
        let mut framed = FramedReader::new(&mut r);
        assert!(matches!(
            framed.drain().await,
            Err(WireError::FrameTooLarge { len: 5, max: 4 })
        ));
    }
}
