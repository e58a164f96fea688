//! Running synchronous NAR code (dumping, parsing) on the blocking pool against a connection's
//! async stream, without blocking the worker thread that serves the other connections.
//!
//! The sync side talks to the async side over channels: for writing it sends filled buffers;
//! for reading it asks for at most `n` bytes and gets back what one read returned, so it never
//! consumes a byte of the stream that it did not ask for (old protocols send data after the
//! NAR, with nothing but the NAR's own structure to say where it ends).

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Size of the chunks a dump is sent in.
const CHUNK: usize = 256 * 1024;

/// Largest single read the sync side may ask for.
const MAX_READ: usize = 64 * 1024;

/// Runs `produce` on the blocking pool and copies everything it writes to `out`. Fails if
/// `produce` fails or `out` cannot be written (then `produce` sees a broken pipe).
pub async fn write_from_blocking<W, F>(out: &mut W, produce: F) -> Result<(), String>
where
    W: AsyncWrite + Unpin,
    F: FnOnce(&mut dyn Write) -> Result<(), String> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let task = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        produce(&mut sink)?;
        sink.flush().map_err(|e| e.to_string())
    });
    let mut write_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = out.write_all(&chunk).await {
            write_error = Some(e.to_string());
            break;
        }
    }
    // Closing the receiver makes the producer's next write fail, so it ends promptly.
    drop(rx);
    let produced = task
        .await
        .map_err(|e| format!("the blocking task failed: {e}"))?;
    match write_error {
        Some(e) => Err(e),
        None => produced,
    }
}

struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

/// Runs `consume` on the blocking pool with a reader that reads from `input`, only as much as
/// `consume` asks for, and returns its result.
pub async fn read_with_blocking<R, F, T>(input: &mut R, consume: F) -> Result<T, String>
where
    R: AsyncRead + Unpin,
    F: FnOnce(&mut dyn Read) -> T + Send + 'static,
    T: Send + 'static,
{
    let (want_tx, mut want_rx) = mpsc::channel::<usize>(1);
    let (got_tx, got_rx) = std::sync::mpsc::channel::<io::Result<Vec<u8>>>();
    let task = tokio::task::spawn_blocking(move || {
        let mut source = ChunkReceiver {
            want: want_tx,
            got: got_rx,
        };
        consume(&mut source)
    });
    // Serve read requests until the sync side is done (its request sender is dropped).
    let mut buf = vec![0u8; MAX_READ];
    while let Some(n) = want_rx.recv().await {
        let n = n.min(MAX_READ);
        let answer = input.read(&mut buf[..n]).await.map(|k| buf[..k].to_vec());
        if got_tx.send(answer).is_err() {
            break;
        }
    }
    task.await
        .map_err(|e| format!("the blocking task failed: {e}"))
}

struct ChunkReceiver {
    want: mpsc::Sender<usize>,
    got: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
}

impl Read for ChunkReceiver {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let gone = || io::Error::from(io::ErrorKind::BrokenPipe);
        self.want.blocking_send(out.len()).map_err(|_| gone())?;
        let data = self.got.recv().map_err(|_| gone())??;
        out[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn written_bytes_arrive_in_order_on_a_single_threaded_runtime() {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        let expected: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let data = expected.clone();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.unwrap();
            all
        });
        write_from_blocking(&mut ours, move |w| {
            for piece in data.chunks(1000) {
                w.write_all(piece).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .unwrap();
        drop(ours);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_output_stops_the_producer() {
        let (mut ours, theirs) = tokio::io::duplex(1024);
        drop(theirs);
        let err = write_from_blocking(&mut ours, |w| loop {
            w.write_all(&[0u8; 4096]).map_err(|e| e.to_string())?;
        })
        .await
        .unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_producer_error_is_returned() {
        let (mut ours, _theirs) = tokio::io::duplex(1024);
        let err = write_from_blocking(&mut ours, |_| Err("no such file".to_owned()))
            .await
            .unwrap_err();
        assert_eq!(err, "no such file");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_reader_takes_only_what_it_asks_for() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        tokio::spawn(async move {
            theirs.write_all(b"0123456789rest").await.unwrap();
        });
        let head = read_with_blocking(&mut ours, |r| {
            let mut head = [0u8; 10];
            r.read_exact(&mut head).map(|()| head)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&head, b"0123456789");
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"rest");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn end_of_input_reaches_the_reader() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let result = read_with_blocking(&mut ours, |r| {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)
        })
        .await
        .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
