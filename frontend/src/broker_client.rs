//! The frontend's end of its channel to the broker (fd 4): one request at a time.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Mutex as AsyncMutex;
use ward_proto::ipc::broker::{BrokerToFrontend, FrontendToBroker};
use ward_proto::ipc::{FrontendBrokerChannel, IPC_VERSION};

/// A channel to the broker, shared by all connections.
#[derive(Debug)]
pub struct BrokerClient {
    channel: AsyncMutex<FrontendBrokerChannel>,
    /// Uids whose per-user directories are known to exist.
    users_done: Mutex<HashSet<u32>>,
}

impl BrokerClient {
    /// Says hello on a fresh channel.
    pub async fn connect(channel: FrontendBrokerChannel) -> Result<BrokerClient, String> {
        let client = BrokerClient {
            channel: AsyncMutex::new(channel),
            users_done: Mutex::new(HashSet::new()),
        };
        match client
            .request(FrontendToBroker::Hello {
                ipc_version: IPC_VERSION,
            })
            .await?
        {
            BrokerToFrontend::Hello { .. } => Ok(client),
            other => Err(format!("unexpected answer to Hello: {other:?}")),
        }
    }

    async fn request(&self, request: FrontendToBroker) -> Result<BrokerToFrontend, String> {
        let channel = self.channel.lock().await;
        channel
            .send(&request, &[])
            .await
            .map_err(|e| format!("sending to the broker: {e}"))?;
        let reply = channel
            .recv()
            .await
            .map_err(|e| format!("reading from the broker: {e}"))?;
        Ok(reply.message)
    }

    /// Makes sure `profiles/per-user/<user>` and `gcroots/per-user/<user>` exist for `uid`.
    pub async fn ensure_user_dirs(&self, uid: u32) -> Result<(), String> {
        if self
            .users_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&uid)
        {
            return Ok(());
        }
        match self
            .request(FrontendToBroker::CreateUserDirs { uid })
            .await?
        {
            BrokerToFrontend::UserDirsReady { .. } => {
                self.users_done
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid);
                Ok(())
            }
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to CreateUserDirs: {other:?}")),
        }
    }
}
