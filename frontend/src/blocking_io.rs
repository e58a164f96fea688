//! Running synchronous NAR code (dumping, parsing) on the blocking pool against a connection's
//! async stream, without blocking the worker thread that serves the other connections.
//!
//! Writing (NarFromPath) goes straight to a blocking duplicate of the client's socket. Reading
//! (old protocols' bare NARs) goes over channels: the sync side asks for at most `n` bytes and
//! gets back what one read returned, so it never consumes a byte of the stream that it did not
//! ask for (those protocols send data after the NAR, with nothing but the NAR's own structure
//! to say where it ends).

use std::io::{self, Read};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Largest single read the sync side may ask for.
const MAX_READ: usize = 64 * 1024;

/// Runs `produce` on the blocking pool writing straight into the socket behind `out`, as
/// nix-daemon does: no copies between threads. While it runs the socket's file description is
/// in blocking mode; the caller must not use the socket until this returns (the connection's
/// task is waiting here), and non-blocking mode is restored before it does. A write that makes
/// no progress for `stall_limit` fails, so a client that stops reading cannot hold a
/// blocking-pool thread for ever.
pub async fn write_socket_from_blocking<F>(
    out: &tokio::net::unix::OwnedWriteHalf,
    stall_limit: std::time::Duration,
    produce: F,
) -> Result<(), String>
where
    F: FnOnce(&mut std::os::unix::net::UnixStream) -> Result<(), String> + Send + 'static,
{
    use std::os::fd::AsFd;
    let socket: &tokio::net::UnixStream = out.as_ref();
    let fd = socket
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the client socket: {e}"))?;
    let set_blocking = |blocking: bool| {
        // The flag belongs to the file description, shared by `socket` and `fd`.
        let flags = rustix::fs::fcntl_getfl(socket)?;
        let flags = if blocking {
            flags - rustix::fs::OFlags::NONBLOCK
        } else {
            flags | rustix::fs::OFlags::NONBLOCK
        };
        rustix::fs::fcntl_setfl(socket, flags)
    };
    rustix::net::sockopt::set_socket_timeout(
        socket,
        rustix::net::sockopt::Timeout::Send,
        Some(stall_limit),
    )
    .map_err(|e| format!("setting the client socket's send timeout: {e}"))?;
    set_blocking(true).map_err(|e| format!("making the client socket blocking: {e}"))?;
    let joined = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::from(fd);
        // `produce` buffers itself (the NAR writer writes in large chunks).
        produce(&mut stream)
    })
    .await;
    // Restored whatever happened, before anything else touches the socket.
    set_blocking(false).map_err(|e| format!("making the client socket non-blocking: {e}"))?;
    rustix::net::sockopt::set_socket_timeout(socket, rustix::net::sockopt::Timeout::Send, None)
        .map_err(|e| format!("clearing the client socket's send timeout: {e}"))?;
    joined.map_err(|e| format!("the blocking task failed: {e}"))?
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
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_stops_reading_fails_the_dump_after_the_stall_limit() {
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read_half, write_half) = ours.into_split();
        let started = Instant::now();
        let err = write_socket_from_blocking(&write_half, Duration::from_millis(200), |w| loop {
            w.write_all(&[0u8; 65536]).map_err(|e| e.to_string())?;
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        // The socket is usable again afterwards: non-blocking, no send timeout.
        let socket: &tokio::net::UnixStream = write_half.as_ref();
        assert!(rustix::fs::fcntl_getfl(socket)
            .unwrap()
            .contains(rustix::fs::OFlags::NONBLOCK));
        assert_eq!(
            rustix::net::sockopt::socket_timeout(socket, rustix::net::sockopt::Timeout::Send)
                .unwrap(),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn socket_writes_arrive_and_the_socket_is_non_blocking_again() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_read_half, write_half) = ours.into_split();
        let expected: Vec<u8> = (0..3 * 256 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let data = expected.clone();
        let reader = tokio::spawn(async move {
            let mut theirs = theirs;
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.unwrap();
            all
        });
        write_socket_from_blocking(&write_half, Duration::from_secs(60), move |w| {
            for piece in data.chunks(1000) {
                w.write_all(piece).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let flags = {
            use std::os::fd::AsFd;
            let socket: &tokio::net::UnixStream = write_half.as_ref();
            rustix::fs::fcntl_getfl(socket.as_fd()).unwrap()
        };
        assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
        drop(write_half);
        drop(_read_half);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_the_peer_closed_fails_the_producer() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        drop(theirs);
        let (_read_half, write_half) = ours.into_split();
        let err = write_socket_from_blocking(&write_half, Duration::from_secs(60), |w| loop {
            w.write_all(&[0u8; 4096]).map_err(|e| e.to_string())?;
        })
        .await
        .unwrap_err();
        assert!(!err.is_empty());
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
