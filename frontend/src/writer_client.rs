//! The frontend's client for one channel to the store-writer.
//!
//! A channel serves one request at a time; each method sends its request and waits for the
//! one reply. Requests with bulk data (a NAR, file contents, a build log) pass the read end of
//! a fresh pipe beside the request and copy the data into the write end *while* waiting for
//! the reply, closing it at the data's end; the store-writer reads the pipe to its end before
//! it answers, or answers early (and closes its end) when it refuses the request outright.
//!
//! Errors are split so the caller can tell a refusal meant for the Nix client
//! ([`ClientError::Store`], e.g. a hash mismatch) from a broken channel or a failed data
//! source. After an IPC failure, an abandoned transfer or a request future dropped half-way,
//! the client refuses further requests with [`ClientError::Broken`]; open a new one.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::Sender;
use ward_proto::content_address::ContentAddressMethod;
use ward_proto::hash::HashAlgo;
use ward_proto::ipc::store_writer::{
    AddContent, AddPathFromNar, FrontendToStoreWriter, GcAction, PathInfo, StoreWriterError,
    StoreWriterToFrontend,
};
use ward_proto::ipc::{FrameLimit, FrontendStoreWriterChannel, IpcError, IpcMessage, IPC_VERSION};
use ward_proto::store_path::StorePath;

use crate::path_info_cache::{ChangeGuard, PathInfoCache};

/// How long to wait between attempts while the store-writer's socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// Size asked for the data pipe's buffer (best effort; the kernel may cap it).
#[cfg(target_os = "linux")]
const PIPE_BUFFER: usize = 1 << 20;

/// A close-on-exec pipe for data sent to the store-writer, with a `PIPE_BUFFER` buffer where
/// the kernel allows (Linux; elsewhere the default buffer and close-on-exec set after
/// creation: the frontend runs no programs).
fn data_pipe() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(target_os = "linux")]
    {
        let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let _ = rustix::pipe::fcntl_setpipe_size(&write_end, PIPE_BUFFER);
        Ok((read_end, write_end))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (read_end, write_end) = rustix::pipe::pipe()?;
        for fd in [&read_end, &write_end] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok((read_end, write_end))
    }
}
/// Size of the chunks data is copied in.
const CHUNK: usize = 64 * 1024;

/// Why a request to the store-writer failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store-writer refused or failed the request; the message is meant for the Nix
    /// client. The channel stays usable (unless the refusal was of the handshake).
    #[error("{0}")]
    Store(Box<StoreWriterError>),
    /// The channel failed (the store-writer went away, or a frame was malformed).
    #[error("store-writer channel failed: {0}")]
    Ipc(#[from] IpcError),
    /// The socket could not be reached.
    #[error("cannot connect to the store-writer at '{path}': {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket did not appear, or did not answer, in time.
    #[error("the store-writer at '{path}' did not answer within {timeout:?}")]
    ConnectTimeout {
        /// The socket.
        path: PathBuf,
        /// How long was waited.
        timeout: Duration,
    },
    /// The store-writer answered with a reply that does not belong to the request.
    #[error("the store-writer answered {request} with {reply}")]
    UnexpectedReply {
        /// The request sent.
        request: &'static str,
        /// The reply received.
        reply: &'static str,
    },
    /// Reading the data to send failed; the transfer was abandoned and nothing registered.
    #[error("reading the data for the store-writer: {0}")]
    Source(#[source] io::Error),
    /// A pipe or socket pair for a request could not be made.
    #[error("creating a {what} for the store-writer: {source}")]
    Setup {
        /// What was being created.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The request carries descriptors; use the method made for it.
    #[error("request {0} carries data and needs its own method")]
    NeedsData(&'static str),
    /// An earlier failure left the channel in an unknown state.
    #[error("the channel to the store-writer is unusable after an earlier failure")]
    Broken,
}

impl ClientError {
    /// The store-writer's refusal, if that is what this is (to be shown to the Nix client).
    pub fn refusal(&self) -> Option<&StoreWriterError> {
        match self {
            ClientError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreWriterError> for ClientError {
    fn from(e: StoreWriterError) -> Self {
        ClientError::Store(Box::new(e))
    }
}

/// What to do when the data source fails in the middle of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnSourceError {
    /// Close the pipe and wait for the reply: the data is self-delimiting (a NAR), so the
    /// store-writer sees it is cut short and refuses it; the channel stays usable.
    ClosePipe,
    /// Shut the channel down before closing the pipe: a flat file or text cut short looks
    /// complete, so the store-writer must see the channel go away instead.
    AbandonChannel,
}

/// How the data copy ended.
enum CopyEnd {
    /// All data went into the pipe, which is now closed.
    Done,
    /// The store-writer closed its end (it refused early; its reply says why).
    ReaderGone,
    /// The source failed; the pipe is handed back so the caller decides when it closes.
    SourceFailed(io::Error, Sender),
}

async fn copy_into_pipe(mut data: impl AsyncRead + Unpin, mut pipe: Sender) -> CopyEnd {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match data.read(&mut buf).await {
            Ok(0) => return CopyEnd::Done,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return CopyEnd::SourceFailed(e, pipe),
        };
        if pipe.write_all(&buf[..n]).await.is_err() {
            return CopyEnd::ReaderGone;
        }
    }
}

/// One channel to the store-writer.
#[derive(Debug)]
pub struct WriterClient {
    channel: FrontendStoreWriterChannel,
    /// Set while a request is in flight and left set if it did not finish cleanly.
    unusable: bool,
    /// Bypassed and emptied around requests that change recorded paths.
    cache: Option<Arc<PathInfoCache>>,
    /// The temporary roots the store-writer holds for this channel (asked for, or made by it
    /// for paths this channel added or built): they die with the channel, so a client
    /// connection that has to open a new one (the store-writer restarted) gives them to it
    /// again.
    temp_roots: BTreeSet<StorePath>,
}

impl WriterClient {
    /// Connects to `ipc_dir/store-writer.socket`, retrying while the socket does not exist or
    /// refuses connections (the store-writer may still be starting), then does the handshake.
    pub async fn connect(ipc_dir: &Path, timeout: Duration) -> Result<WriterClient, ClientError> {
        WriterClient::connect_for(ipc_dir, timeout, None).await
    }

    /// [`WriterClient::connect`] for a channel that serves the client with uid `client_uid`
    /// (the store-writer names it in the audit log).
    pub async fn connect_for(
        ipc_dir: &Path,
        timeout: Duration,
        client_uid: Option<u32>,
    ) -> Result<WriterClient, ClientError> {
        let path = ward_config::daemon::store_writer_socket(ipc_dir);
        let deadline = Instant::now() + timeout;
        let timed_out = || ClientError::ConnectTimeout {
            path: path.clone(),
            timeout,
        };
        let stream = loop {
            match tokio::net::UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if Instant::now() + CONNECT_RETRY > deadline {
                        return Err(timed_out());
                    }
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.clone(),
                        source,
                    })
                }
            }
        };
        let channel = FrontendStoreWriterChannel::new(stream, FrameLimit::DEFAULT);
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, WriterClient::handshake_for(channel, client_uid))
            .await
            .map_err(|_| timed_out())?
    }

    /// Wraps an already connected channel (e.g. one end of a socket pair whose other end was
    /// passed with [`WriterClient::open_channel`]) and does the handshake.
    pub async fn handshake(
        channel: FrontendStoreWriterChannel,
    ) -> Result<WriterClient, ClientError> {
        WriterClient::handshake_for(channel, None).await
    }

    async fn handshake_for(
        channel: FrontendStoreWriterChannel,
        client_uid: Option<u32>,
    ) -> Result<WriterClient, ClientError> {
        let mut client = WriterClient {
            channel,
            unusable: false,
            cache: None,
            temp_roots: BTreeSet::new(),
        };
        let hello = FrontendToStoreWriter::Hello {
            ipc_version: IPC_VERSION,
            client_uid,
        };
        match client.exchange(&hello, &[]).await? {
            StoreWriterToFrontend::Hello { ipc_version } if ipc_version == IPC_VERSION => {
                Ok(client)
            }
            StoreWriterToFrontend::Hello { ipc_version } => {
                Err(StoreWriterError::VersionMismatch {
                    ours: IPC_VERSION,
                    theirs: ipc_version,
                }
                .into())
            }
            other => Err(unexpected(&hello, &other)),
        }
    }

    /// Whether this channel can no longer carry a request: an earlier one failed, or the
    /// store-writer closed it (it exited or was restarted). Between requests the store-writer
    /// sends nothing, so end-of-file or any pending byte means the channel is finished.
    pub fn is_closed(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        if self.unusable {
            return true;
        }
        let mut probe = [0u8; 1];
        let fd = self.channel.socket().as_raw_fd();
        match recv(fd, &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(nix::errno::Errno::EINTR) => false,
            Ok(_) | Err(_) => true,
        }
    }

    /// Opens a further, independent channel through this one (OpenChannel): the store-writer
    /// serves it on its own thread, so requests on it do not wait for this channel's. The
    /// peer fields only label the store-writer's log lines.
    pub async fn open_channel(
        &mut self,
        peer_pid: Option<i32>,
        peer_uid: Option<u32>,
    ) -> Result<WriterClient, ClientError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|source| ClientError::Setup {
                what: "socket pair",
                source,
            })?;
        let request = FrontendToStoreWriter::OpenChannel { peer_pid, peer_uid };
        let reply = self.exchange(&request, &[theirs.as_fd()]).await?;
        drop(theirs);
        expect_done(&request, reply)?;
        let channel =
            FrontendStoreWriterChannel::from_std(ours, FrameLimit::DEFAULT).map_err(|source| {
                ClientError::Setup {
                    what: "channel",
                    source,
                }
            })?;
        WriterClient::handshake(channel).await
    }

    /// Keeps `cache` coherent with what this channel changes.
    pub fn with_path_info_cache(mut self, cache: Arc<PathInfoCache>) -> WriterClient {
        self.cache = Some(cache);
        self
    }

    /// Held while `request` is in flight, if it may change recorded paths.
    fn change_guard(&self, request: &FrontendToStoreWriter) -> Option<ChangeGuard> {
        let cache = self.cache.as_ref()?;
        request
            .may_change_recorded_paths()
            .then(|| cache.begin_change())
    }

    /// Sends a request and waits for its reply; refusals become [`ClientError::Store`].
    async fn exchange(
        &mut self,
        request: &FrontendToStoreWriter,
        fds: &[BorrowedFd<'_>],
    ) -> Result<StoreWriterToFrontend, ClientError> {
        if self.unusable {
            return Err(ClientError::Broken);
        }
        let _guard = self.change_guard(request);
        self.unusable = true;
        self.channel.send(request, fds).await?;
        let reply = self.channel.recv().await?;
        self.unusable = false;
        let reply = refusal_to_error(reply.message)?;
        self.remember_roots(request, &reply);
        Ok(reply)
    }

    /// Notes the temporary roots a successful request left on this channel.
    fn remember_roots(&mut self, request: &FrontendToStoreWriter, reply: &StoreWriterToFrontend) {
        match (request, reply) {
            (FrontendToStoreWriter::AddTempRoot { path }, StoreWriterToFrontend::Done)
            | (
                FrontendToStoreWriter::AddPermRoot { path, .. },
                StoreWriterToFrontend::RootAdded { .. },
            ) => {
                self.temp_roots.insert(path.clone());
            }
            (_, StoreWriterToFrontend::PathAdded(info)) => {
                self.temp_roots.insert(info.path.clone());
            }
            (_, StoreWriterToFrontend::OutputsRegistered { outputs }) => {
                self.temp_roots
                    .extend(outputs.values().map(|info| info.path.clone()));
            }
            _ => {}
        }
    }

    /// Counts `roots` as this channel's temporary roots (those of the channel it replaces).
    pub fn keep_temp_roots(&mut self, roots: BTreeSet<StorePath>) {
        self.temp_roots.extend(roots);
    }

    /// Whether this channel holds temporary roots.
    pub fn has_temp_roots(&self) -> bool {
        !self.temp_roots.is_empty()
    }

    /// The temporary roots this channel holds (see [`WriterClient::temp_roots`]), for the
    /// channel that replaces it.
    pub fn take_temp_roots(&mut self) -> BTreeSet<StorePath> {
        std::mem::take(&mut self.temp_roots)
    }

    /// Sends a request that carries a data pipe, copies `data` into the pipe while waiting
    /// for the reply, and returns the reply.
    async fn exchange_with_data(
        &mut self,
        request: &FrontendToStoreWriter,
        data: impl AsyncRead + Unpin,
        on_source_error: OnSourceError,
    ) -> Result<StoreWriterToFrontend, ClientError> {
        if self.unusable {
            return Err(ClientError::Broken);
        }
        let setup = |source: io::Error| ClientError::Setup {
            what: "pipe",
            source,
        };
        let (read_end, write_end) = data_pipe().map_err(|e| setup(e.into()))?;
        let sender = Sender::from_owned_fd(write_end).map_err(setup)?;
        let _guard = self.change_guard(request);
        self.unusable = true;
        self.channel.send(request, &[read_end.as_fd()]).await?;
        drop(read_end);

        let mut source_error = None;
        let reply = {
            let mut copy = std::pin::pin!(copy_into_pipe(data, sender));
            let mut reply = std::pin::pin!(self.channel.recv());
            let mut copying = true;
            loop {
                tokio::select! {
                    received = &mut reply => break received,
                    end = &mut copy, if copying => {
                        copying = false;
                        if let CopyEnd::SourceFailed(e, pipe) = end {
                            match on_source_error {
                                OnSourceError::ClosePipe => {
                                    drop(pipe);
                                    source_error = Some(e);
                                }
                                OnSourceError::AbandonChannel => {
                                    // Shut down first, so the store-writer sees the channel
                                    // gone before it sees the pipe end.
                                    let _ = rustix::net::shutdown(
                                        self.channel.socket(),
                                        rustix::net::Shutdown::Both,
                                    );
                                    drop(pipe);
                                    return Err(ClientError::Source(e));
                                }
                            }
                        }
                    }
                }
            }
            // Leaving this block drops the copy (and with it the pipe) if the store-writer
            // answered before taking all the data.
        };
        let reply = reply?;
        self.unusable = false;
        if let Some(e) = source_error {
            return Err(ClientError::Source(e));
        }
        let reply = refusal_to_error(reply.message)?;
        self.remember_roots(request, &reply);
        Ok(reply)
    }

    /// AddToStoreNar and friends: adds a path from its NAR, read from `nar`. Returns the path
    /// as registered. `nar` may be left partly read if the store-writer refuses early (e.g. a
    /// missing signature); the caller must still drain its client's stream.
    pub async fn add_path_from_nar(
        &mut self,
        info: PathInfo,
        repair: bool,
        check_sigs: bool,
        nar: impl AsyncRead + Unpin,
    ) -> Result<PathInfo, ClientError> {
        self.add_path_from_nar_in(info, repair, check_sigs, false, nar)
            .await
    }

    /// [`WriterClient::add_path_from_nar`] with `defer`: the path joins the channel's batch
    /// and is registered by [`WriterClient::commit_additions`] (AddMultipleToStore). The
    /// reply is the info as checked, not yet registered.
    pub async fn add_path_from_nar_in(
        &mut self,
        info: PathInfo,
        repair: bool,
        check_sigs: bool,
        defer: bool,
        nar: impl AsyncRead + Unpin,
    ) -> Result<PathInfo, ClientError> {
        let request = FrontendToStoreWriter::AddPathFromNar(Box::new(AddPathFromNar {
            info,
            repair,
            check_sigs,
            defer,
        }));
        let reply = self
            .exchange_with_data(&request, nar, OnSourceError::ClosePipe)
            .await?;
        expect_path(&request, reply)
    }

    /// AddToStore / AddTextToStore: content hashed by the store-writer (`data` is the file's
    /// contents for text and flat, a NAR for recursive). Returns the path as registered.
    pub async fn add_content(
        &mut self,
        name: String,
        method: ContentAddressMethod,
        hash_algo: HashAlgo,
        references: BTreeSet<StorePath>,
        repair: bool,
        data: impl AsyncRead + Unpin,
    ) -> Result<PathInfo, ClientError> {
        let self_delimiting = matches!(
            method,
            ContentAddressMethod::Fixed(
                ward_proto::content_address::FileIngestionMethod::Recursive
            )
        );
        let request = FrontendToStoreWriter::AddContent(Box::new(AddContent {
            name,
            method,
            hash_algo,
            references,
            repair,
        }));
        let on_error = if self_delimiting {
            OnSourceError::ClosePipe
        } else {
            OnSourceError::AbandonChannel
        };
        let reply = self.exchange_with_data(&request, data, on_error).await?;
        expect_path(&request, reply)
    }

    /// AddBuildLog: stores the log read from `log` for `drv_path`. A log cut short by a
    /// failing source is abandoned (the channel is shut down), not stored.
    pub async fn add_build_log(
        &mut self,
        drv_path: StorePath,
        log: impl AsyncRead + Unpin,
    ) -> Result<(), ClientError> {
        let request = FrontendToStoreWriter::AddBuildLog { drv_path };
        let reply = self
            .exchange_with_data(&request, log, OnSourceError::AbandonChannel)
            .await?;
        expect_done(&request, reply)
    }

    /// CommitAdditions: registers the paths added with `defer` since the last commit, in one
    /// sync and one transaction.
    pub async fn commit_additions(&mut self) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::CommitAdditions).await
    }

    /// AddTempRoot: keeps `path` alive for as long as this channel is open.
    pub async fn add_temp_root(&mut self, path: StorePath) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::AddTempRoot { path })
            .await
    }

    /// AddIndirectRoot: registers the user's symlink `link` (an absolute path).
    pub async fn add_indirect_root(&mut self, link: String) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::AddIndirectRoot { link })
            .await
    }

    /// AddPermRoot: the symlink `gc_root` → `path` inside the state directory's `gcroots/` or
    /// `profiles/`. Returns the root's path.
    pub async fn add_perm_root(
        &mut self,
        path: StorePath,
        gc_root: String,
    ) -> Result<String, ClientError> {
        let request = FrontendToStoreWriter::AddPermRoot { path, gc_root };
        match self.exchange(&request, &[]).await? {
            StoreWriterToFrontend::RootAdded { gc_root } => Ok(gc_root),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// AddSignatures: merges `sigs` into a valid path's signatures.
    pub async fn add_signatures(
        &mut self,
        path: StorePath,
        sigs: BTreeSet<String>,
    ) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::AddSignatures { path, sigs })
            .await
    }

    /// VerifyStore: whether errors were found, and the messages for the client (findings
    /// marked `true`).
    pub async fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
    ) -> Result<(bool, Vec<(bool, String)>, Vec<String>), ClientError> {
        let request = FrontendToStoreWriter::VerifyStore {
            check_contents,
            repair,
        };
        match self.exchange(&request, &[]).await? {
            StoreWriterToFrontend::Verified {
                errors_found,
                messages,
                to_repair,
            } => Ok((errors_found, messages, to_repair)),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// CollectGarbage: the paths, the bytes freed and what to tell the client.
    pub async fn collect_garbage(
        &mut self,
        action: GcAction,
        paths: BTreeSet<StorePath>,
        max_freed: u64,
        keep_outputs: bool,
        keep_derivations: bool,
    ) -> Result<(BTreeSet<String>, u64, Vec<String>), ClientError> {
        let request = FrontendToStoreWriter::CollectGarbage {
            action,
            paths,
            max_freed,
            keep_outputs,
            keep_derivations,
        };
        // The paths of a large collection come in parts before the final reply.
        let mut reply = self.exchange(&request, &[]).await?;
        let mut collected = BTreeSet::new();
        let mut said = Vec::new();
        loop {
            match reply {
                StoreWriterToFrontend::GarbageCollectedPart { paths, messages } => {
                    collected.extend(paths);
                    said.extend(messages);
                    self.unusable = true;
                    let next = self.channel.recv().await?;
                    self.unusable = false;
                    reply = refusal_to_error(next.message)?;
                }
                StoreWriterToFrontend::GarbageCollected {
                    paths,
                    bytes_freed,
                    messages,
                } => {
                    collected.extend(paths);
                    said.extend(messages);
                    return Ok((collected, bytes_freed, said));
                }
                other => return Err(unexpected(&request, &other)),
            }
        }
    }

    /// OptimiseStore: bytes freed and files linked.
    pub async fn optimise_store(&mut self) -> Result<(u64, u64), ClientError> {
        let request = FrontendToStoreWriter::OptimiseStore;
        match self.exchange(&request, &[]).await? {
            StoreWriterToFrontend::Optimised {
                bytes_freed,
                files_linked,
            } => Ok((bytes_freed, files_linked)),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// RegisterDrvOutput: records a realisation (as the worker protocol carries it).
    pub async fn register_realisation(
        &mut self,
        realisation: ward_proto::path_info::Realisation,
    ) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::RegisterRealisation(Box::new(
            realisation,
        )))
        .await
    }

    /// RegisterBuildOutputs: `nars` holds, in the order of the request's `outputs` map, the
    /// read end of each output's NAR pipe. Returns output name → the registered info.
    pub async fn register_build_outputs(
        &mut self,
        request: FrontendToStoreWriter,
        nars: Vec<OwnedFd>,
    ) -> Result<std::collections::BTreeMap<String, PathInfo>, ClientError> {
        if request.fd_count() != nars.len() {
            return Err(ClientError::NeedsData(request.variant_name()));
        }
        let fds: Vec<BorrowedFd<'_>> = nars.iter().map(|fd| fd.as_fd()).collect();
        let reply = self.exchange(&request, &fds).await?;
        drop(fds);
        drop(nars);
        match reply {
            StoreWriterToFrontend::OutputsRegistered { outputs } => Ok(outputs),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// CreateUserDirs: the per-user profile and GC-root directories of `user`.
    pub async fn create_user_dirs(&mut self, user: String, uid: u32) -> Result<(), ClientError> {
        self.call_done(FrontendToStoreWriter::CreateUserDirs { user, uid })
            .await
    }

    /// Health check.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let request = FrontendToStoreWriter::Ping;
        match self.exchange(&request, &[]).await? {
            StoreWriterToFrontend::Pong => Ok(()),
            other => Err(unexpected(&request, &other)),
        }
    }

    /// Any request without descriptors (e.g. those of later issues), returning the raw reply;
    /// refusals are still [`ClientError::Store`].
    pub async fn call(
        &mut self,
        request: FrontendToStoreWriter,
    ) -> Result<StoreWriterToFrontend, ClientError> {
        if request.fd_count() != 0 {
            return Err(ClientError::NeedsData(request.variant_name()));
        }
        self.exchange(&request, &[]).await
    }

    async fn call_done(&mut self, request: FrontendToStoreWriter) -> Result<(), ClientError> {
        let reply = self.exchange(&request, &[]).await?;
        expect_done(&request, reply)
    }
}

fn refusal_to_error(reply: StoreWriterToFrontend) -> Result<StoreWriterToFrontend, ClientError> {
    match reply {
        StoreWriterToFrontend::Error(e) => Err(e.into()),
        other => Ok(other),
    }
}

fn unexpected(request: &FrontendToStoreWriter, reply: &StoreWriterToFrontend) -> ClientError {
    ClientError::UnexpectedReply {
        request: request.variant_name(),
        reply: reply.variant_name(),
    }
}

fn expect_done(
    request: &FrontendToStoreWriter,
    reply: StoreWriterToFrontend,
) -> Result<(), ClientError> {
    match reply {
        StoreWriterToFrontend::Done => Ok(()),
        other => Err(unexpected(request, &other)),
    }
}

fn expect_path(
    request: &FrontendToStoreWriter,
    reply: StoreWriterToFrontend,
) -> Result<PathInfo, ClientError> {
    match reply {
        StoreWriterToFrontend::PathAdded(info) => Ok(*info),
        other => Err(unexpected(request, &other)),
    }
}

#[cfg(test)]
mod tests {
    use ward_proto::ipc::store_writer::StoreWriterToFrontend as Reply;
    use ward_proto::ipc::{Channel, FrameLimit};

    use super::*;

    type FakeWriter = Channel<Reply, FrontendToStoreWriter>;

    /// A client on one end of a socket pair and a blocking fake store-writer on the other.
    async fn pair() -> (WriterClient, FakeWriter) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let fake = FakeWriter::new(theirs, FrameLimit::DEFAULT);
        let channel = FrontendStoreWriterChannel::from_std(ours, FrameLimit::DEFAULT).unwrap();
        let client = WriterClient {
            channel,
            unusable: false,
            cache: None,
            temp_roots: BTreeSet::new(),
        };
        (client, fake)
    }

    #[tokio::test]
    async fn the_roots_a_channel_holds_are_remembered_for_its_successor() {
        let (mut client, _fake) = pair().await;
        let added = path();
        client.remember_roots(
            &FrontendToStoreWriter::AddTempRoot {
                path: added.clone(),
            },
            &StoreWriterToFrontend::Done,
        );
        // A refusal leaves nothing to remember; an unrelated reply neither.
        client.remember_roots(&FrontendToStoreWriter::Ping, &StoreWriterToFrontend::Pong);
        assert_eq!(client.take_temp_roots(), BTreeSet::from([added.clone()]));
        assert!(client.take_temp_roots().is_empty(), "taken once");
        client.keep_temp_roots(BTreeSet::from([added.clone()]));
        assert_eq!(client.take_temp_roots(), BTreeSet::from([added]));
    }

    fn path() -> StorePath {
        StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f").unwrap()
    }

    #[tokio::test]
    async fn a_collection_sent_in_parts_is_put_back_together() {
        let (mut client, fake) = pair().await;
        let paths: BTreeSet<String> = (0..40_000)
            .map(|i| format!("/nix/store/{i:032}-dead-path-{i}"))
            .collect();
        let expected = paths.clone();
        let server = std::thread::spawn(move || {
            let request = fake.recv().unwrap();
            assert!(matches!(
                request.message,
                FrontendToStoreWriter::CollectGarbage { .. }
            ));
            let frames =
                ward_proto::ipc::store_writer::split_garbage_collected(Reply::GarbageCollected {
                    messages: paths.iter().map(|p| format!("deleting '{p}'")).collect(),
                    paths,
                    bytes_freed: 99,
                });
            assert!(frames.len() > 1, "large enough to need parts");
            for frame in frames {
                fake.send(&frame, &[]).unwrap();
            }
            fake
        });
        let (got, freed, said) = client
            .collect_garbage(
                GcAction::ReturnDead,
                BTreeSet::new(),
                u64::MAX,
                false,
                false,
            )
            .await
            .unwrap();
        assert_eq!(said.len(), expected.len(), "every message came");
        assert_eq!((got, freed), (expected, 99));
        let _fake = server.join().unwrap();
        // The channel is in step again: the next request gets its own reply.
        assert!(!client.unusable);
    }

    #[tokio::test]
    async fn a_channel_the_store_writer_closed_reads_as_closed() {
        let (client, fake) = pair().await;
        assert!(!client.is_closed(), "an idle, open channel is usable");
        drop(fake);
        assert!(client.is_closed(), "the store-writer went away");
        let (mut client, _fake) = pair().await;
        client.unusable = true;
        assert!(
            client.is_closed(),
            "a channel left mid-request is not reused"
        );
    }

    fn cached(cache: &PathInfoCache) -> Arc<ward_proto::path_info::ValidPathInfo> {
        let info = Arc::new(ward_proto::path_info::ValidPathInfo::new(
            path(),
            ward_proto::hash::Hash::compute(HashAlgo::Sha256, b"f"),
        ));
        cache.store(cache.ticket().unwrap(), &info);
        assert!(cache.lookup(&path()).is_some());
        info
    }

    #[tokio::test]
    async fn a_change_to_recorded_paths_bypasses_and_then_empties_the_cache() {
        let cache = Arc::new(PathInfoCache::new());
        let (client, fake) = pair().await;
        let mut client = client.with_path_info_cache(Arc::clone(&cache));
        cached(&cache);
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let request = fake.recv().unwrap();
                seen_tx.send(request.message).unwrap();
                go_rx.recv().unwrap();
                fake.send(&Reply::Done, &[]).unwrap();
            }
        });
        // Adding a temporary root changes nothing recorded: the cache keeps answering.
        let call = tokio::spawn(async move {
            client.add_temp_root(path()).await.unwrap();
            client
        });
        let seen = tokio::task::spawn_blocking({
            let seen_rx = seen_rx;
            move || (seen_rx.recv().unwrap(), seen_rx)
        });
        let (message, seen_rx) = seen.await.unwrap();
        assert!(matches!(message, FrontendToStoreWriter::AddTempRoot { .. }));
        assert!(cache.lookup(&path()).is_some(), "not bypassed for a root");
        go_tx.send(()).unwrap();
        let mut client = call.await.unwrap();
        assert!(cache.lookup(&path()).is_some(), "not emptied for a root");

        // Signatures change the row: while in flight nothing is answered or stored, and
        // afterwards the old entry is gone.
        let call = tokio::spawn(async move {
            client
                .add_signatures(path(), ["k:c2ln".to_owned()].into())
                .await
                .unwrap();
        });
        let message = tokio::task::spawn_blocking(move || seen_rx.recv().unwrap())
            .await
            .unwrap();
        assert!(matches!(
            message,
            FrontendToStoreWriter::AddSignatures { .. }
        ));
        assert!(cache.lookup(&path()).is_none(), "answered during a change");
        assert!(
            cache.ticket().is_none(),
            "a read during a change could be stored"
        );
        go_tx.send(()).unwrap();
        call.await.unwrap();
        server.join().unwrap();
        assert!(
            cache.lookup(&path()).is_none(),
            "the old signatures are still cached"
        );
        assert!(cache.is_empty());
        cached(&cache);
    }

    #[tokio::test]
    async fn refusals_are_distinguished_from_channel_failures() {
        let (mut client, fake) = pair().await;
        let server = std::thread::spawn(move || {
            let request = fake.recv().unwrap();
            assert!(matches!(
                request.message,
                FrontendToStoreWriter::AddTempRoot { .. }
            ));
            fake.send(
                &Reply::Error(StoreWriterError::NotValid { path: path() }),
                &[],
            )
            .unwrap();
            let request = fake.recv().unwrap();
            assert_eq!(request.message, FrontendToStoreWriter::Ping);
            drop(fake);
        });
        let e = client.add_temp_root(path()).await.unwrap_err();
        assert!(e.refusal().is_some(), "{e}");
        // The channel survives a refusal; then the fake store-writer goes away.
        let e = client.ping().await.unwrap_err();
        assert!(matches!(e, ClientError::Ipc(_)), "{e}");
        assert!(matches!(
            client.ping().await.unwrap_err(),
            ClientError::Broken
        ));
        server.join().unwrap();
    }

    #[tokio::test]
    async fn data_is_copied_while_the_reply_is_awaited() {
        let (mut client, fake) = pair().await;
        let data = vec![5u8; 3 << 20];
        let expected = data.clone();
        let server = std::thread::spawn(move || {
            let mut request = fake.recv().unwrap();
            let pipe = request.fds.pop().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(pipe), &mut got).unwrap();
            assert_eq!(got, expected);
            fake.send(&Reply::Done, &[]).unwrap();
        });
        client
            .add_build_log(
                StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x.drv").unwrap(),
                &data[..],
            )
            .await
            .unwrap();
        server.join().unwrap();
    }

    #[tokio::test]
    async fn an_early_refusal_stops_the_copy() {
        let (mut client, fake) = pair().await;
        let server = std::thread::spawn(move || {
            let request = fake.recv().unwrap();
            // Refuse without reading the pipe.
            drop(request.fds);
            fake.send(
                &Reply::Error(StoreWriterError::SignatureMissing { path: path() }),
                &[],
            )
            .unwrap();
            let request = fake.recv().unwrap();
            assert_eq!(request.message, FrontendToStoreWriter::Ping);
            fake.send(&Reply::Pong, &[]).unwrap();
        });
        // Far more than a pipe holds: the copy must not block the reply.
        let nar = vec![0u8; 8 << 20];
        let info = PathInfo {
            path: path(),
            deriver: None,
            nar_hash: ward_proto::hash::Hash::compute(HashAlgo::Sha256, &nar),
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: nar.len() as u64,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        };
        let e = client
            .add_path_from_nar(info, false, true, &nar[..])
            .await
            .unwrap_err();
        assert!(
            matches!(e.refusal(), Some(StoreWriterError::SignatureMissing { .. })),
            "{e}"
        );
        client.ping().await.unwrap();
        server.join().unwrap();
    }

    /// A source that yields some bytes, then fails.
    struct FailingSource {
        sent: bool,
    }

    impl AsyncRead for FailingSource {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if self.sent {
                return std::task::Poll::Ready(Err(io::Error::other("client went away")));
            }
            self.sent = true;
            buf.put_slice(b"nix-archive-1 but not all of it");
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_nar_source_closes_the_pipe_and_keeps_the_channel() {
        let (mut client, fake) = pair().await;
        let server = std::thread::spawn(move || {
            let mut request = fake.recv().unwrap();
            let pipe = request.fds.pop().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(pipe), &mut got).unwrap();
            assert_eq!(got, b"nix-archive-1 but not all of it");
            fake.send(
                &Reply::Error(StoreWriterError::DataTruncated { path: "x".into() }),
                &[],
            )
            .unwrap();
            assert_eq!(fake.recv().unwrap().message, FrontendToStoreWriter::Ping);
            fake.send(&Reply::Pong, &[]).unwrap();
        });
        let info = PathInfo {
            path: path(),
            deriver: None,
            nar_hash: ward_proto::hash::Hash::compute(HashAlgo::Sha256, b""),
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: 100,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        };
        let e = client
            .add_path_from_nar(info, false, false, FailingSource { sent: false })
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Source(_)), "{e}");
        assert!(e.to_string().contains("client went away"), "{e}");
        client.ping().await.unwrap();
        server.join().unwrap();
    }

    #[tokio::test]
    async fn a_failing_flat_source_abandons_the_channel() {
        let (mut client, fake) = pair().await;
        let server = std::thread::spawn(move || {
            let request = fake.recv().unwrap();
            assert_eq!(request.fds.len(), 1);
            // The channel is shut down (not just the pipe closed).
            assert!(matches!(fake.recv(), Err(IpcError::PeerClosed)));
        });
        let e = client
            .add_content(
                "f".into(),
                ContentAddressMethod::Text,
                HashAlgo::Sha256,
                BTreeSet::new(),
                false,
                FailingSource { sent: false },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Source(_)), "{e}");
        assert!(matches!(
            client.ping().await.unwrap_err(),
            ClientError::Broken
        ));
        server.join().unwrap();
    }

    #[tokio::test]
    async fn requests_with_data_cannot_go_through_call() {
        let (mut client, _fake) = pair().await;
        let e = client
            .call(FrontendToStoreWriter::AddBuildLog { drv_path: path() })
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NeedsData("AddBuildLog")), "{e}");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let e = WriterClient::connect(dir.path(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::ConnectTimeout { .. }), "{e}");
        assert!(e.to_string().contains("store-writer.socket"), "{e}");
    }
}
