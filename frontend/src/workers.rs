//! The frontend's threads: single-threaded async runtimes (one per two CPUs), each serving its
//! share of the connections.
//!
//! A connection stays on the thread that accepted it for its whole life, so a request is read,
//! answered and its reply written without any hand-over between threads. (With a
//! work-stealing runtime, measured per QueryPathInfo, a third to a half of the frontend's CPU
//! time went to cross-thread wake-ups.) New connections go to the thread serving the fewest.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

/// Work handed to a worker thread; runs inside its runtime, so it may `tokio::spawn`.
type Job = Box<dyn FnOnce() + Send>;

/// Most worker threads, whatever the CPU count: connections are cheap, threads are not.
const MAX_WORKERS: usize = 64;

/// The worker threads.
#[derive(Debug)]
pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    /// Open connections per worker.
    load: Arc<[AtomicUsize]>,
}

/// Decrements its worker's connection count when the connection ends.
struct LoadGuard {
    load: Arc<[AtomicUsize]>,
    worker: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// One worker per two CPUs this process may run on (at least one, at most
    /// [`MAX_WORKERS`]), each busy polling for `busy_poll` after a reply (zero: never). The
    /// clients are local processes that need CPU time too, and one worker serves tens of
    /// thousands of requests a second: measured on 2 CPUs with 8 busy clients, one worker
    /// spent 25–40% less CPU per QueryPathInfo than two and answered at least as many.
    pub fn for_this_machine(busy_poll: Duration) -> io::Result<Workers> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let poll_window = (!busy_poll.is_zero()).then_some(busy_poll);
        Workers::start_with(cpus.div_ceil(2).clamp(1, MAX_WORKERS), poll_window)
    }

    /// Starts `count` worker threads that do not poll before sleeping.
    pub fn start(count: usize) -> io::Result<Workers> {
        Workers::start_with(count, None)
    }

    /// Starts `count` worker threads; with `poll_window`, each polls for that long after a
    /// reply before sleeping (see [`crate::busy_poll`]).
    pub fn start_with(count: usize, poll_window: Option<Duration>) -> io::Result<Workers> {
        let count = count.max(1);
        let mut senders = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("ward-frontend-{index}"))
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new()
                .name(format!("ward-frontend-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        if let Some(window) = poll_window {
                            tokio::spawn(crate::busy_poll::run_poller(window));
                        }
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                })?;
            senders.push(tx);
        }
        let load = (0..count).map(|_| AtomicUsize::new(0)).collect();
        Ok(Workers { senders, load })
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Open connections per worker, for tests and logs.
    pub fn loads(&self) -> Vec<usize> {
        self.load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Serves `stream` on the least busy worker: `serve` gets the stream registered with that
    /// worker's runtime and runs there until the connection ends.
    pub fn serve<F, Fut>(&self, stream: std::os::unix::net::UnixStream, serve: F)
    where
        F: FnOnce(tokio::net::UnixStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = self
            .load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| l.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i);
        self.load[worker].fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard {
            load: Arc::clone(&self.load),
            worker,
        };
        let job: Job = Box::new(move || {
            let stream = match stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(stream))
            {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("registering a connection with worker {worker}: {e}");
                    return;
                }
            };
            tokio::spawn(async move {
                serve(stream).await;
                drop(guard);
            });
        });
        if self.senders[worker].send(job).is_err() {
            // The worker thread is gone (it panicked); the job and its guard were dropped,
            // which closed the connection. Nothing else to do here.
            tracing::error!("frontend worker {worker} has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn connections_are_spread_and_counted_until_they_end() {
        let workers = Workers::start(2).unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            // Echo one byte, then wait for the client to hang up.
            workers.serve(theirs, |mut stream| async move {
                let mut b = [0u8; 1];
                if stream.read_exact(&mut b).await.is_ok() {
                    let _ = stream.write_all(&b).await;
                    let _ = stream.read(&mut b).await;
                }
            });
            clients.push(ours);
        }
        assert_eq!(workers.loads(), vec![2, 2], "least busy first");
        for (i, c) in clients.iter_mut().enumerate() {
            use std::io::{Read, Write};
            c.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
        clients.truncate(1);
        wait_for("three connections to end", || {
            workers.loads().iter().sum::<usize>() == 1
        });
        drop(clients);
        wait_for("the last connection to end", || {
            workers.loads().iter().sum::<usize>() == 0
        });
    }
}
