//! Notices at once when the store-writer is restarted, so that connections holding temporary
//! roots give them to the new one right away instead of at their next request (until then a
//! collection would not see them).
//!
//! One thread keeps an idle channel open to the store-writer; its end of file means the
//! store-writer died. Once a new one accepts a channel again, the counter is bumped and every
//! connection waiting for its client's next request replays its roots
//! (`connection.rs`, `connect_writer`).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// How often a missing store-writer is looked for again.
const RETRY: Duration = Duration::from_millis(20);

/// Starts the watcher; the receiver's value is the number of restarts seen.
pub fn start(ipc_dir: PathBuf) -> std::io::Result<watch::Receiver<u64>> {
    let (tx, rx) = watch::channel(0u64);
    let socket = ward_config::daemon::store_writer_socket(&ipc_dir);
    std::thread::Builder::new()
        .name("writer-watch".into())
        .spawn(move || {
            let mut seen_one = false;
            loop {
                let stream = loop {
                    match UnixStream::connect(&socket) {
                        Ok(stream) => break stream,
                        Err(_) => std::thread::sleep(RETRY),
                    }
                };
                if seen_one {
                    tracing::info!(
                        "the store-writer was restarted; connections replay their roots"
                    );
                    tx.send_modify(|n| *n += 1);
                }
                seen_one = true;
                let mut byte = [0u8; 1];
                // The store-writer never writes to a channel that sent nothing: any return
                // means it went away.
                let _ = (&stream).read(&mut byte);
                if tx.is_closed() {
                    return;
                }
            }
        })?;
    Ok(rx)
}
