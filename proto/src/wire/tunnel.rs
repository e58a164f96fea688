//! The `STDERR_READ` tunnel (protocol-facts §1.5): the old way of uploading data, used by
//! `AddToStoreNar` at protocol 1.21–1.22 and by `ImportPaths`.
//!
//! Whenever the daemon needs more bytes it sends `STDERR_READ` and the number of bytes it wants
//! on the stderr channel; the client answers on its own stream with one string of at most that
//! many bytes. An empty answer means the client's source is exhausted, which is an error: the
//! tunnelled data has no terminator of its own, its consumer (a NAR parser) knows where it ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{WireError, WireReader, WireWriter};

/// `STDERR_READ`: the daemon wants data from the client (protocol-facts §2.1).
pub const STDERR_READ: u64 = 0x6461_7461;

/// Bytes asked for per `STDERR_READ` by default (the reference asks for its 32 KiB buffer size).
pub const DEFAULT_TUNNEL_REQUEST: u64 = 32 * 1024;

type Fetch<'a, R, W> = Pin<
    Box<
        dyn Future<Output = (Result<Vec<u8>, WireError>, &'a mut WireReader<R>, &'a mut W)>
            + Send
            + 'a,
    >,
>;

enum TunnelState<'a, R, W> {
    Idle(&'a mut WireReader<R>, &'a mut W),
    Fetching(Fetch<'a, R, W>),
    /// Only while switching states; a panic in between leaves the reader unusable.
    Empty,
}

/// An [`AsyncRead`] whose bytes are fetched from the client with `STDERR_READ` requests.
///
/// It borrows the connection's reader and writer for as long as it lives; requests are written
/// and flushed directly to the writer. It must only be used inside an op's work phase (after the
/// op's arguments are read, before `STDERR_LAST`).
pub struct TunnelReader<'a, R, W> {
    state: TunnelState<'a, R, W>,
    data: Vec<u8>,
    pos: usize,
    request: u64,
    received: u64,
}

impl<R, W> std::fmt::Debug for TunnelReader<'_, R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelReader")
            .field("buffered", &(self.data.len() - self.pos))
            .field("request", &self.request)
            .field("received", &self.received)
            .finish()
    }
}

impl<'a, R, W> TunnelReader<'a, R, W>
where
    R: AsyncRead + Unpin + Send + 'a,
    W: AsyncWrite + Unpin + Send + 'a,
{
    /// A tunnel asking for [`DEFAULT_TUNNEL_REQUEST`] bytes at a time.
    pub fn new(reader: &'a mut WireReader<R>, writer: &'a mut W) -> Self {
        Self::with_request_size(reader, writer, DEFAULT_TUNNEL_REQUEST)
    }

    /// A tunnel asking for `request` bytes at a time (at least 1, at most
    /// [`Limits::max_text`](super::Limits::max_text)).
    pub fn with_request_size(
        reader: &'a mut WireReader<R>,
        writer: &'a mut W,
        request: u64,
    ) -> Self {
        let cap = reader.limits().max_text as u64;
        TunnelReader {
            state: TunnelState::Idle(reader, writer),
            data: Vec::new(),
            pos: 0,
            request: request.clamp(1, cap.max(1)),
            received: 0,
        }
    }

    /// Total bytes received from the client so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

async fn fetch<R, W>(
    reader: &mut WireReader<R>,
    writer: &mut W,
    wanted: u64,
) -> Result<Vec<u8>, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut request = WireWriter::new();
    request.put_u64(STDERR_READ);
    request.put_u64(wanted);
    request
        .flush_to(writer)
        .await
        .map_err(|source| WireError::Io {
            field: "stderr read request",
            source,
        })?;
    let len = reader.read_u64("tunnelled data length").await?;
    if len == 0 {
        return Err(WireError::UnexpectedEof {
            field: "tunnelled data",
        });
    }
    if len > wanted {
        return Err(WireError::TunnelOverrun { wanted, got: len });
    }
    // `len <= wanted <= max_text`, so this allocation is bounded by our own request size.
    let mut data = vec![0u8; len as usize];
    tokio::io::AsyncReadExt::read_exact(reader, &mut data)
        .await
        .map_err(|e| WireError::from_io("tunnelled data", e))?;
    reader.read_padding("tunnelled data", len).await?;
    Ok(data)
}

impl<'a, R, W> AsyncRead for TunnelReader<'a, R, W>
where
    R: AsyncRead + Unpin + Send + 'a,
    W: AsyncWrite + Unpin + Send + 'a,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.data.len() {
                let n = (this.data.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.data[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match std::mem::replace(&mut this.state, TunnelState::Empty) {
                TunnelState::Idle(reader, writer) => {
                    let wanted = this.request;
                    this.state = TunnelState::Fetching(Box::pin(async move {
                        let result = fetch(reader, writer, wanted).await;
                        (result, reader, writer)
                    }));
                }
                TunnelState::Fetching(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = TunnelState::Fetching(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((result, reader, writer)) => {
                        this.state = TunnelState::Idle(reader, writer);
                        let data = result.map_err(io::Error::from)?;
                        this.received += data.len() as u64;
                        this.data = data;
                        this.pos = 0;
                    }
                },
                TunnelState::Empty => {
                    return Poll::Ready(Err(io::Error::other("tunnel reader used after a panic")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio::io::AsyncReadExt;

    fn answers(chunks: &[&[u8]]) -> Vec<u8> {
        let mut w = WireWriter::new();
        for c in chunks {
            w.put_bytes(c);
        }
        w.into_bytes()
    }

    #[tokio::test]
    async fn fetches_with_stderr_read_requests() {
        let mut r = WireReader::new(Cursor::new(answers(&[b"hello ", b"world"])));
        let mut out: Vec<u8> = Vec::new();
        let mut got = vec![0u8; 11];
        {
            let mut tunnel = TunnelReader::with_request_size(&mut r, &mut out, 6);
            tunnel.read_exact(&mut got).await.unwrap();
            assert_eq!(tunnel.received(), 11);
        }
        assert_eq!(got, b"hello world");
        let mut expected = WireWriter::new();
        for _ in 0..2 {
            expected.put_u64(STDERR_READ);
            expected.put_u64(6);
        }
        assert_eq!(out, expected.into_bytes());
    }

    #[tokio::test]
    async fn empty_answer_is_an_eof_error() {
        let mut r = WireReader::new(Cursor::new(answers(&[b""])));
        let mut out: Vec<u8> = Vec::new();
        let mut tunnel = TunnelReader::new(&mut r, &mut out);
        let mut buf = [0u8; 4];
        let err = tunnel.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_answer_is_refused_before_reading_it() {
        let mut w = WireWriter::new();
        w.put_u64(u64::MAX);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        let mut out: Vec<u8> = Vec::new();
        let mut tunnel = TunnelReader::with_request_size(&mut r, &mut out, 16);
        let mut buf = [0u8; 4];
        let err = tunnel.read(&mut buf).await.unwrap_err();
        assert!(matches!(
            WireError::from_io("x", err),
            WireError::TunnelOverrun {
                wanted: 16,
                got: u64::MAX
            }
        ));
    }

    #[tokio::test]
    async fn truncated_answer_is_eof() {
        let full = answers(&[b"abcdefghij"]);
        for cut in 0..full.len() {
            let mut r = WireReader::new(Cursor::new(full[..cut].to_vec()));
            let mut out: Vec<u8> = Vec::new();
            let mut tunnel = TunnelReader::new(&mut r, &mut out);
            let mut buf = vec![0u8; 10];
            let err = tunnel.read_exact(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}");
        }
    }
}
