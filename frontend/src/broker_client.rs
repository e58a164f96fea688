//! The frontend's end of its channel to the broker (fd 4), shared by every connection.
//!
//! The broker answers every request exactly once and in order; the only messages it sends
//! unasked are [`BrokerToFrontend::BuildFinished`] (a build ended),
//! [`BrokerToFrontend::PostBuildHookFinished`] (a hook ended) and
//! [`BrokerToFrontend::StoreWriterRestarted`]. So one reader thread owns the receiving side:
//! a `BuildFinished` goes to whoever waits for that build, anything else answers the oldest
//! request still waiting. Requests are sent under one lock that also queues their waiter, so
//! the queue's order is the order on the wire.
//!
//! `CancelBuild` is answered with the cancelled build's `BuildFinished`, or, when the build
//! ended on its own just before, with `Error(UnknownBuild)`: the client does not queue a waiter
//! for it and drops such an error for a build it cancelled.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::{debug, warn};
use ward_proto::ipc::broker::{
    BrokerError, BrokerToFrontend, BuildOutcome, BuildRequest, BuildTimings, CancelReason,
    FrontendToBroker,
};
use ward_proto::ipc::{BuildId, Channel, FrameLimit, Phase, Received, IPC_VERSION};
use ward_proto::store_path::StorePath;

type Waiter = oneshot::Sender<Received<BrokerToFrontend>>;

/// How a build ended, as the broker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The outcome.
    pub outcome: BuildOutcome,
    /// Times and CPU use.
    pub timings: BuildTimings,
}

#[derive(Debug, Default)]
struct Waiting {
    replies: VecDeque<Waiter>,
    finished: HashMap<BuildId, oneshot::Sender<Finished>>,
    /// Post-build hooks waiting for their `PostBuildHookFinished`.
    hooks: HashMap<BuildId, oneshot::Sender<BuildOutcome>>,
    cancelled: HashSet<BuildId>,
    /// Set when the channel failed: every later request fails at once.
    broken: Option<String>,
    /// Set once `ShuttingDown` was sent: requests the broker no longer accepts fail here
    /// instead of closing the channel as a protocol violation.
    draining: bool,
}

/// A channel to the broker, shared by all connections.
#[derive(Debug)]
pub struct BrokerClient {
    sender: Mutex<Channel<FrontendToBroker, BrokerToFrontend>>,
    waiting: Arc<Mutex<Waiting>>,
    /// Uids whose per-user directories are known to exist.
    users_done: Mutex<HashSet<u32>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BrokerClient {
    /// Says hello on a fresh channel (blocking, at start-up) and starts the reader thread.
    pub fn start(socket: UnixStream) -> Result<Arc<BrokerClient>, String> {
        let reader = socket
            .try_clone()
            .map_err(|e| format!("duplicating the broker socket: {e}"))?;
        let sender =
            Channel::<FrontendToBroker, BrokerToFrontend>::new(socket, FrameLimit::DEFAULT);
        sender
            .send(
                &FrontendToBroker::Hello {
                    ipc_version: IPC_VERSION,
                },
                &[],
            )
            .map_err(|e| format!("sending Hello to the broker: {e}"))?;
        let receiver =
            Channel::<FrontendToBroker, BrokerToFrontend>::new(reader, FrameLimit::DEFAULT);
        match receiver.recv() {
            Ok(Received {
                message: BrokerToFrontend::Hello { .. },
                ..
            }) => {}
            Ok(other) => return Err(format!("unexpected answer to Hello: {:?}", other.message)),
            Err(e) => return Err(format!("reading the broker's Hello: {e}")),
        }
        let client = Arc::new(BrokerClient {
            sender: Mutex::new(sender),
            waiting: Arc::new(Mutex::new(Waiting::default())),
            users_done: Mutex::new(HashSet::new()),
        });
        let waiting = Arc::clone(&client.waiting);
        std::thread::Builder::new()
            .name("broker-reader".into())
            .spawn(move || read_loop(receiver, waiting))
            .map_err(|e| format!("starting the broker reader thread: {e}"))?;
        Ok(client)
    }

    /// Sends `request`; when `expect_reply`, returns the receiver of its reply.
    fn send(
        &self,
        request: &FrontendToBroker,
        finished: Option<(BuildId, oneshot::Sender<Finished>)>,
        expect_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Received<BrokerToFrontend>>>, String> {
        let sender = lock(&self.sender);
        let rx = {
            let mut waiting = lock(&self.waiting);
            if let Some(reason) = &waiting.broken {
                return Err(format!("the broker channel is closed: {reason}"));
            }
            if waiting.draining && !request.permitted_in(Phase::Draining) {
                return Err("the daemon is stopping".into());
            }
            if matches!(request, FrontendToBroker::ShuttingDown) {
                waiting.draining = true;
            }
            if let Some((build, tx)) = finished {
                waiting.finished.insert(build, tx);
            }
            if let FrontendToBroker::CancelBuild { build, .. }
            | FrontendToBroker::CancelPostBuildHook { build } = request
            {
                waiting.cancelled.insert(*build);
            }
            if expect_reply {
                let (tx, rx) = oneshot::channel();
                waiting.replies.push_back(tx);
                Some(rx)
            } else {
                None
            }
        };
        if let Err(e) = sender.send(request, &[]) {
            let reason = format!("sending {:?}: {e}", request_name(request));
            fail_all(&self.waiting, &reason);
            return Err(reason);
        }
        Ok(rx)
    }

    async fn request(
        &self,
        request: FrontendToBroker,
    ) -> Result<Received<BrokerToFrontend>, String> {
        let rx = self
            .send(&request, None, true)?
            .expect("a reply receiver was asked for");
        rx.await
            .map_err(|_| "the broker channel closed before the reply".to_string())
    }

    /// Starts a build. Returns the log pipe's read end, the build user's uid and a receiver
    /// for the build's end.
    pub async fn start_build(
        &self,
        request: BuildRequest,
    ) -> Result<(OwnedFd, u32, oneshot::Receiver<Finished>), BuildStartError> {
        let build = request.build;
        let (tx, finished) = oneshot::channel();
        let rx = self
            .send(
                &FrontendToBroker::StartBuild(Box::new(request)),
                Some((build, tx)),
                true,
            )
            .map_err(BuildStartError::Channel)?
            .expect("a reply receiver was asked for");
        let reply = rx
            .await
            .map_err(|_| BuildStartError::Channel("the broker channel closed".into()))?;
        match reply.message {
            BrokerToFrontend::BuildStarted { build_uid, .. } => {
                let log = reply.fds.into_iter().next().ok_or_else(|| {
                    BuildStartError::Channel("BuildStarted came without its log pipe".into())
                })?;
                Ok((log, build_uid, finished))
            }
            BrokerToFrontend::Error(e) => {
                lock(&self.waiting).finished.remove(&build);
                Err(BuildStartError::Refused(e))
            }
            other => Err(BuildStartError::Channel(format!(
                "unexpected answer to StartBuild: {other:?}"
            ))),
        }
    }

    /// Asks the broker to kill a running build; its `BuildFinished` arrives as usual.
    pub fn cancel_build(&self, build: BuildId, reason: CancelReason) {
        if let Err(e) = self.send(
            &FrontendToBroker::CancelBuild { build, reason },
            None,
            false,
        ) {
            warn!(%build, "cancelling: {e}");
        }
    }

    /// Collects the outputs of a build that exited with 0: output name → NAR pipe.
    pub async fn collect_outputs(
        &self,
        build: BuildId,
    ) -> Result<Vec<(String, OwnedFd)>, BuildStartError> {
        let reply = self
            .request(FrontendToBroker::CollectOutputs { build })
            .await
            .map_err(BuildStartError::Channel)?;
        match reply.message {
            BrokerToFrontend::OutputsCollected { outputs, .. } => {
                if outputs.len() != reply.fds.len() {
                    return Err(BuildStartError::Channel(
                        "OutputsCollected with the wrong number of pipes".into(),
                    ));
                }
                Ok(outputs.into_iter().zip(reply.fds).collect())
            }
            BrokerToFrontend::Error(e) => Err(BuildStartError::Refused(e)),
            other => Err(BuildStartError::Channel(format!(
                "unexpected answer to CollectOutputs: {other:?}"
            ))),
        }
    }

    /// Releases a finished build: its directory is deleted, or kept for the requester.
    /// Returns where it was kept.
    pub async fn release_build(
        &self,
        build: BuildId,
        keep_failed: bool,
    ) -> Result<Option<String>, String> {
        let reply = self
            .request(FrontendToBroker::ReleaseBuild { build, keep_failed })
            .await?;
        lock(&self.waiting).cancelled.remove(&build);
        match reply.message {
            BrokerToFrontend::BuildReleased { kept_at, .. } => Ok(kept_at),
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to ReleaseBuild: {other:?}")),
        }
    }

    /// Runs the daemon's post-build-hook for a build whose outputs were registered. Returns
    /// the read end of the hook's output, the user it runs as, and a receiver for its end.
    pub async fn run_post_build_hook(
        &self,
        build: BuildId,
        drv_path: StorePath,
        out_paths: BTreeSet<StorePath>,
    ) -> Result<(OwnedFd, String, oneshot::Receiver<BuildOutcome>), String> {
        let (tx, finished) = oneshot::channel();
        lock(&self.waiting).hooks.insert(build, tx);
        let reply = self
            .request(FrontendToBroker::RunPostBuildHook {
                build,
                drv_path,
                out_paths,
            })
            .await;
        let refused = |waiting: &Mutex<Waiting>, why: String| {
            lock(waiting).hooks.remove(&build);
            Err(why)
        };
        let mut reply = match reply {
            Ok(reply) => reply,
            Err(e) => return refused(&self.waiting, e),
        };
        match reply.message {
            BrokerToFrontend::PostBuildHookStarted { user, .. } => match reply.fds.pop() {
                Some(pipe) => Ok((pipe, user, finished)),
                None => refused(&self.waiting, "the hook's pipe did not come".into()),
            },
            BrokerToFrontend::Error(e) => refused(&self.waiting, e.to_string()),
            other => refused(
                &self.waiting,
                format!("unexpected answer to RunPostBuildHook: {other:?}"),
            ),
        }
    }

    /// Asks the broker to kill a running post-build hook; its end arrives as usual.
    pub fn cancel_post_build_hook(&self, build: BuildId) {
        if let Err(e) = self.send(
            &FrontendToBroker::CancelPostBuildHook { build },
            None,
            false,
        ) {
            warn!(%build, "cancelling the post-build-hook: {e}");
        }
    }

    /// Starts the root-side roots helper; returns the read end of its output.
    pub async fn find_roots(&self) -> Result<OwnedFd, String> {
        let mut reply = self.request(FrontendToBroker::FindRoots).await?;
        match reply.message {
            BrokerToFrontend::RootsPipe => reply.fds.pop().ok_or_else(|| "no pipe came".into()),
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to FindRoots: {other:?}")),
        }
    }

    /// Tells the broker the frontend accepts clients (it tells systemd `READY=1`).
    pub async fn serving(&self) -> Result<(), String> {
        match self.request(FrontendToBroker::Serving).await?.message {
            BrokerToFrontend::Pong => Ok(()),
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to Serving: {other:?}")),
        }
    }

    /// Tells the broker the frontend is stopping: it cancels every running build (their
    /// waiters get `BuildFinished`) and answers `Drained`. Later build requests fail here.
    pub async fn shutting_down(&self) -> Result<(), String> {
        match self.request(FrontendToBroker::ShuttingDown).await?.message {
            BrokerToFrontend::Drained => Ok(()),
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to ShuttingDown: {other:?}")),
        }
    }

    /// Makes sure `profiles/per-user/<user>` and `gcroots/per-user/<user>` exist for `uid`.
    pub async fn ensure_user_dirs(&self, uid: u32) -> Result<(), String> {
        if lock(&self.users_done).contains(&uid) {
            return Ok(());
        }
        match self
            .request(FrontendToBroker::CreateUserDirs { uid })
            .await?
            .message
        {
            BrokerToFrontend::UserDirsReady { .. } => {
                lock(&self.users_done).insert(uid);
                Ok(())
            }
            BrokerToFrontend::Error(e) => Err(e.to_string()),
            other => Err(format!("unexpected answer to CreateUserDirs: {other:?}")),
        }
    }
}

/// Why a build could not be started or its outputs collected.
#[derive(Debug, thiserror::Error)]
pub enum BuildStartError {
    /// The broker refused.
    #[error("{0}")]
    Refused(BrokerError),
    /// The channel to the broker failed.
    #[error("the broker is unavailable: {0}")]
    Channel(String),
}

fn request_name(request: &FrontendToBroker) -> &'static str {
    use ward_proto::ipc::IpcMessage;
    request.variant_name()
}

fn fail_all(waiting: &Mutex<Waiting>, reason: &str) {
    let mut waiting = lock(waiting);
    if waiting.broken.is_none() {
        waiting.broken = Some(reason.to_owned());
    }
    // Dropping the senders wakes every waiter with an error.
    waiting.replies.clear();
    waiting.finished.clear();
    waiting.hooks.clear();
}

fn read_loop(receiver: Channel<FrontendToBroker, BrokerToFrontend>, waiting: Arc<Mutex<Waiting>>) {
    loop {
        let received = match receiver.recv() {
            Ok(r) => r,
            Err(e) => {
                warn!("the broker channel failed: {e}");
                fail_all(&waiting, &e.to_string());
                return;
            }
        };
        let mut w = lock(&waiting);
        match &received.message {
            BrokerToFrontend::BuildFinished {
                build,
                outcome,
                timings,
            } => {
                debug!(%build, ?outcome, "build finished");
                if let Some(tx) = w.finished.remove(build) {
                    let _ = tx.send(Finished {
                        outcome: outcome.clone(),
                        timings: *timings,
                    });
                }
                continue;
            }
            BrokerToFrontend::PostBuildHookFinished { build, outcome } => {
                // A cancelled hook's id stays in `cancelled` (a few bytes per cancel): an
                // UnknownBuild error for it may still come and must be dropped.
                debug!(%build, ?outcome, "post-build-hook finished");
                if let Some(tx) = w.hooks.remove(build) {
                    let _ = tx.send(outcome.clone());
                }
                continue;
            }
            BrokerToFrontend::StoreWriterRestarted => continue,
            BrokerToFrontend::Error(BrokerError::UnknownBuild { build })
                if w.cancelled.contains(build) =>
            {
                continue;
            }
            _ => {}
        }
        match w.replies.pop_front() {
            Some(tx) => {
                let _ = tx.send(received);
            }
            None => {
                warn!("the broker sent an unasked {:?}", received.message);
            }
        }
    }
}
