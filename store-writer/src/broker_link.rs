//! The store-writer's channel to the broker: it asks for the roots of a garbage collection,
//! which only the root-side helper can find (users' links, other processes' `/proc`).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use ward_proto::gc_roots::{parse_records, RootRecord, MAX_OUTPUT};
use ward_proto::ipc::broker::{BrokerToStoreWriter, StoreWriterToBroker};
use ward_proto::ipc::{FrameLimit, StoreWriterBrokerChannel, IPC_VERSION};

/// How long the broker may take to answer (it only forks).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The channel, one request at a time.
#[derive(Debug)]
pub struct BrokerLink {
    channel: Mutex<StoreWriterBrokerChannel>,
}

impl BrokerLink {
    /// Exchanges `Hello` on the inherited socket.
    pub fn hello(socket: UnixStream) -> Result<BrokerLink, String> {
        socket
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let channel = StoreWriterBrokerChannel::new(socket, FrameLimit::DEFAULT);
        channel
            .send(
                &StoreWriterToBroker::Hello {
                    ipc_version: IPC_VERSION,
                },
                &[],
            )
            .map_err(|e| e.to_string())?;
        match channel.recv().map_err(|e| e.to_string())?.message {
            BrokerToStoreWriter::Hello { ipc_version } if ipc_version == IPC_VERSION => {
                Ok(BrokerLink {
                    channel: Mutex::new(channel),
                })
            }
            other => Err(format!("unexpected answer to Hello: {other:?}")),
        }
    }

    /// Every root the helper finds, or why there are none: a collection must not run with
    /// fewer roots than there are.
    pub fn find_roots(&self) -> Result<Vec<RootRecord>, String> {
        let pipe = {
            let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
            channel
                .send(&StoreWriterToBroker::FindRoots, &[])
                .map_err(|e| format!("asking the broker: {e}"))?;
            let mut received = channel
                .recv()
                .map_err(|e| format!("waiting for the broker: {e}"))?;
            match received.message {
                BrokerToStoreWriter::RootsPipe => received.fds.pop().ok_or("no pipe came")?,
                BrokerToStoreWriter::Error(e) => return Err(e.to_string()),
                other => return Err(format!("unexpected answer: {other:?}")),
            }
        };
        let mut output = Vec::new();
        std::fs::File::from(pipe)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut output)
            .map_err(|e| format!("reading the roots helper: {e}"))?;
        parse_records(&output).map_err(|e| e.to_string())
    }
}
