//! One channel: the handshake, then requests served one at a time, in order, one reply each.
//!
//! A request in the wrong phase gets a `NotPermitted` reply and the channel is closed, and so
//! does a request whose descriptor is not what it must be (a pipe, a socket): the real frontend
//! never sends those, whatever its clients do. A frame error closes it at once (the stream
//! position is then unknown). A peer that closes the
//! channel while a request's data is still being read tears the channel down without a reply,
//! and nothing is registered. The channel's temporary roots file is removed when it ends.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};
use ward_proto::hash::HashAlgo;

use ward_proto::ipc::store_writer::{
    AddContent, AddPathFromNar, FrontendToStoreWriter, OutputChecks, OutputKind, Realisation,
    RegisterMode, StoreWriterError, StoreWriterToFrontend,
};
use ward_proto::ipc::{Channel, FrameLimit, IpcError, IpcMessage, Phase, IPC_VERSION};
use ward_proto::signature::Signature;
use ward_proto::store_path::{check_name, StorePath};
use ward_store::build_outputs::{BuildOutput, OutputError};
use ward_store::gc::GcRequest;
use ward_store::{AddOptions, AddOutcome, StagedAddition};

use crate::buildlog::{self, BuildLogError};
use crate::errors::{self, AddContext};
use crate::roots;
use crate::server::{self, ChannelSlot, Shared};
use crate::temproots::{TempRootError, TempRoots};
use crate::upload::{self, is_peer_gone, Upload, UploadFailure, WatchedPipe};

/// The store-writer's end of one channel.
type WriterChannel = Channel<StoreWriterToFrontend, FrontendToStoreWriter>;

/// Why a request produced no ordinary reply.
#[derive(Debug)]
enum Failure {
    /// Refused or failed: the reply is this error, and the channel goes on. (Boxed:
    /// `StoreWriterError` is large and this is the rare path.)
    Refused(Box<StoreWriterError>),
    /// The peer closed the channel mid-request: no reply, the channel ends.
    PeerGone,
    /// Something no correct frontend sends (a descriptor of the wrong kind): the reply is
    /// this error, then the channel is closed.
    Violation(Box<StoreWriterError>),
}

impl From<StoreWriterError> for Failure {
    fn from(e: StoreWriterError) -> Self {
        Failure::Refused(Box::new(e))
    }
}

impl From<Box<StoreWriterError>> for Failure {
    fn from(e: Box<StoreWriterError>) -> Self {
        Failure::Refused(e)
    }
}

type Outcome = Result<StoreWriterToFrontend, Failure>;

/// State of one channel.
struct ChannelState {
    shared: Arc<Shared>,
    id: u64,
    /// The client this channel serves, as the frontend said when it opened it.
    client_uid: Option<u32>,
    phase: Phase,
    temp_roots: TempRoots,
    /// Deferred additions (AddMultipleToStore) waiting for `CommitAdditions`, in order.
    batch: Vec<StagedAddition>,
    /// Their paths, which later additions of the batch may refer to.
    batch_paths: BTreeSet<StorePath>,
    /// Their NAR bytes in all.
    batch_bytes: u64,
}

/// A batch is committed early once it holds this many paths: each staged path keeps a
/// descriptor or two open until then, and more gain little (one sync per 64 small paths
/// already makes the sync a small part of each add).
const MAX_BATCH_PATHS: usize = 64;

/// ... or this many NAR bytes, beyond which one sync per path costs little anyway.
const MAX_BATCH_BYTES: u64 = 64 << 20;

/// Serves one channel until the peer closes it or breaks the protocol.
pub fn serve(slot: ChannelSlot, socket: UnixStream, client_uid: Option<u32>) {
    let shared = Arc::clone(slot.shared());
    let id = slot.id;
    let temp_roots = TempRoots::new(
        shared.layout.state_dir(),
        shared.store_dir().clone(),
        &format!("{}-{id}", std::process::id()),
    );
    let mut state = ChannelState {
        shared,
        id,
        client_uid,
        phase: Phase::Handshake,
        temp_roots,
        batch: Vec::new(),
        batch_paths: BTreeSet::new(),
        batch_bytes: 0,
    };
    // Who is at the other end, for the log of a violation (a channel passed with OpenChannel
    // names the frontend, which made its socket pair).
    let peer = rustix::net::sockopt::socket_peercred(&socket).map_or_else(
        |_| "an unknown peer".to_owned(),
        |c| format!("pid {} uid {}", c.pid.as_raw_nonzero(), c.uid.as_raw()),
    );
    let channel = WriterChannel::new(socket, FrameLimit::DEFAULT);
    loop {
        let received = match channel.recv() {
            Ok(received) => received,
            Err(IpcError::PeerClosed) => break,
            Err(e) => {
                tracing::warn!(channel = id, %peer, error = %e, "protocol violation; closing the channel");
                break;
            }
        };
        let request = received.message;
        let name = request.variant_name();
        if request.phase() != state.phase {
            tracing::warn!(
                channel = id,
                request = name,
                phase = %state.phase,
                %peer,
                "request in the wrong phase; closing the channel"
            );
            let reply = StoreWriterToFrontend::Error(StoreWriterError::NotPermitted {
                request: name.to_owned(),
                phase: state.phase,
            });
            let _ = channel.send(&reply, &[]);
            break;
        }
        tracing::debug!(channel = id, request = name, "request");
        let (reply, close) = match state.handle(request, received.fds, &channel) {
            Ok(reply) => (reply, false),
            Err(Failure::Refused(e)) => {
                tracing::info!(channel = id, request = name, error = %e, "request refused");
                let close = matches!(*e, StoreWriterError::VersionMismatch { .. });
                (StoreWriterToFrontend::Error(*e), close)
            }
            Err(Failure::Violation(e)) => {
                tracing::warn!(
                    channel = id,
                    request = name,
                    %peer,
                    error = %e,
                    "protocol violation; closing the channel"
                );
                (StoreWriterToFrontend::Error(*e), true)
            }
            Err(Failure::PeerGone) => {
                tracing::info!(
                    channel = id,
                    request = name,
                    "the frontend closed the channel during the request; nothing was registered"
                );
                break;
            }
        };
        // A large garbage collection's paths go in several frames.
        let mut failed = false;
        for frame in ward_proto::ipc::store_writer::split_garbage_collected(reply) {
            if let Err(e) = channel.send(&frame, &[]) {
                tracing::info!(channel = id, error = %e, "cannot reply; closing the channel");
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
        if close {
            break;
        }
    }
    tracing::debug!(channel = id, "channel closed");
    // `state` (and with it the temporary roots file) and `slot` drop here.
}

/// The client's view of a failed output registration.
fn output_error(e: OutputError, drv_path: &StorePath, drv_shown: &str) -> StoreWriterError {
    match e {
        OutputError::NotValid { path, .. } => StoreWriterError::NotValid { path },
        OutputError::NotTheDerivation { output, reason, .. }
        | OutputError::Unsupported {
            output,
            what: reason,
            ..
        } => StoreWriterError::BadOutput {
            drv_path: drv_path.clone(),
            output,
            reason,
        },
        OutputError::FixedHashMismatch { specified, got, .. } => {
            StoreWriterError::FixedOutputHashMismatch {
                drv_path: drv_path.clone(),
                specified: *specified,
                got: *got,
            }
        }
        OutputError::CheckMismatch {
            path,
            registered,
            rebuilt,
            ..
        } => StoreWriterError::CheckMismatch {
            drv_path: drv_path.clone(),
            path,
            expected: *registered,
            actual: *rebuilt,
        },
        OutputError::Rejected { path, reason } => StoreWriterError::OutputCheckFailed {
            drv_path: drv_path.clone(),
            path,
            reason,
        },
        OutputError::Nar { path, source, .. } => StoreWriterError::MalformedNar {
            path,
            reason: source.to_string(),
        },
        OutputError::Add(e) => StoreWriterError::Io {
            operation: "registering the outputs of".into(),
            path: drv_shown.to_owned(),
            message: e.to_string(),
        },
    }
}

/// A build output's NAR, cut off with an error past `ward-max-output-size` (0 = no limit).
struct SizeCapped<R> {
    inner: R,
    limit: u64,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for SizeCapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.limit != 0 && self.read > self.limit {
            return Err(std::io::Error::other(format!(
                "the output is larger than {} bytes, the daemon's 'ward-max-output-size'",
                self.limit
            )));
        }
        Ok(n)
    }
}

fn temp_root_error(e: TempRootError) -> StoreWriterError {
    StoreWriterError::Io {
        operation: e.action.to_owned(),
        path: e.path.display().to_string(),
        message: e.source.to_string(),
    }
}

/// The reply to a refused addition: a failure to read its data comes first (that is what went
/// wrong, whatever the NAR parser made of it), then the addition's own error.
fn refused_addition<R: std::io::Read>(
    upload: Upload<R>,
    error: ward_store::AddError,
    ctx: &AddContext<'_>,
) -> Failure {
    match upload.finish() {
        Some(UploadFailure::PeerGone) => Failure::PeerGone,
        Some(UploadFailure::Read(e)) => Failure::from(StoreWriterError::Io {
            operation: "reading the data of".into(),
            path: ctx.shown.clone(),
            message: format!("reading the data pipe: {e}"),
        }),
        None => Failure::from(errors::add_error(error, ctx)),
    }
}

impl ChannelState {
    fn handle(
        &mut self,
        request: FrontendToStoreWriter,
        fds: Vec<OwnedFd>,
        channel: &WriterChannel,
    ) -> Outcome {
        // The frame layer already checked that exactly `fd_count()` descriptors came.
        let (fd, fds) = if matches!(request, FrontendToStoreWriter::RegisterBuildOutputs { .. }) {
            (None, fds)
        } else {
            (fds.into_iter().next(), Vec::new())
        };
        match request {
            FrontendToStoreWriter::Hello {
                ipc_version,
                client_uid,
            } => {
                if client_uid.is_some() {
                    self.client_uid = client_uid;
                }
                if ipc_version != IPC_VERSION {
                    return Err(StoreWriterError::VersionMismatch {
                        ours: IPC_VERSION,
                        theirs: ipc_version,
                    }
                    .into());
                }
                self.phase = Phase::Serving;
                Ok(StoreWriterToFrontend::Hello {
                    ipc_version: IPC_VERSION,
                })
            }
            FrontendToStoreWriter::Ping => Ok(StoreWriterToFrontend::Pong),
            FrontendToStoreWriter::OpenChannel { peer_pid, peer_uid } => {
                self.open_channel(fd, peer_pid, peer_uid)
            }
            FrontendToStoreWriter::AddPathFromNar(request) => {
                self.add_path_from_nar(*request, fd, channel)
            }
            FrontendToStoreWriter::CommitAdditions => {
                self.commit_batch()?;
                Ok(StoreWriterToFrontend::Done)
            }
            FrontendToStoreWriter::AddContent(request) => self.add_content(*request, fd, channel),
            FrontendToStoreWriter::AddSignatures { path, sigs } => {
                self.add_signatures(&path, &sigs)
            }
            FrontendToStoreWriter::AddTempRoot { path } => {
                self.temp_roots.add(&path).map_err(temp_root_error)?;
                Ok(StoreWriterToFrontend::Done)
            }
            FrontendToStoreWriter::AddIndirectRoot { link } => {
                roots::add_indirect_root(&self.shared.layout, &link)?;
                Ok(StoreWriterToFrontend::Done)
            }
            FrontendToStoreWriter::AddPermRoot { path, gc_root } => {
                self.add_perm_root(&path, gc_root)
            }
            FrontendToStoreWriter::CreateUserDirs { user, uid } => {
                roots::create_user_dirs(&self.shared.layout, &user, uid)?;
                Ok(StoreWriterToFrontend::Done)
            }
            FrontendToStoreWriter::RegisterRealisation(realisation) => {
                self.register_realisation(&realisation)
            }
            FrontendToStoreWriter::AddBuildLog { drv_path } => {
                self.add_build_log(&drv_path, fd, channel)
            }
            FrontendToStoreWriter::RegisterBuildOutputs {
                build,
                drv_path,
                outputs,
                reference_candidates,
                checks,
                mode,
            } => self.register_build_outputs(
                build,
                &drv_path,
                outputs,
                &reference_candidates,
                &checks,
                mode,
                fds,
                channel,
            ),
            FrontendToStoreWriter::CollectGarbage {
                action,
                paths,
                max_freed,
                keep_outputs,
                keep_derivations,
            } => crate::collect::collect_garbage(
                &self.shared,
                &GcRequest {
                    action,
                    paths,
                    max_freed,
                    keep_outputs,
                    keep_derivations,
                },
            )
            .map_err(Failure::from),
            FrontendToStoreWriter::VerifyStore {
                check_contents,
                repair,
            } => {
                let shared = Arc::clone(&self.shared);
                let verified = shared
                    .store()
                    .verify(check_contents, repair)
                    .map_err(|e| errors::db_error(e, &shared.store_dir().to_string()))?;
                for path in &verified.invalidated {
                    tracing::warn!(
                        channel = self.id,
                        path = %shared.print(path),
                        "verify: its files were gone; removed from the database"
                    );
                }
                Ok(StoreWriterToFrontend::Verified {
                    errors_found: verified.errors_found,
                    messages: verified.messages,
                    to_repair: verified.to_repair.iter().map(|p| shared.print(p)).collect(),
                })
            }
            FrontendToStoreWriter::OptimiseStore => {
                let shared = Arc::clone(&self.shared);
                let optimised = shared.store().optimise().map_err(|e| match e {
                    ward_store::optimise::OptimiseError::Db(e) => {
                        errors::db_error(e, &shared.store_dir().to_string())
                    }
                    ward_store::optimise::OptimiseError::Io { what, path, source } => {
                        StoreWriterError::Io {
                            operation: format!("optimising: {what}"),
                            path: path.display().to_string(),
                            message: source.to_string(),
                        }
                    }
                })?;
                for warning in &optimised.warnings {
                    tracing::warn!(channel = self.id, "optimise: {warning}");
                }
                tracing::info!(
                    channel = self.id,
                    files_linked = optimised.files_linked,
                    bytes_freed = optimised.bytes_freed,
                    "optimised the store"
                );
                Ok(StoreWriterToFrontend::Optimised {
                    bytes_freed: optimised.bytes_freed,
                    files_linked: optimised.files_linked,
                })
            }
        }
    }

    /// The descriptor a request carries (present: the frame layer checked the count).
    fn take_pipe(fd: Option<OwnedFd>, shown: &str) -> Result<OwnedFd, Failure> {
        let bad = |message: String| {
            Failure::Violation(Box::new(StoreWriterError::Io {
                operation: "reading the data of".into(),
                path: shown.to_owned(),
                message,
            }))
        };
        let fd = fd.ok_or_else(|| bad("no data pipe came with the request".into()))?;
        upload::check_is_pipe(&fd).map_err(|e| bad(e.to_string()))?;
        Ok(fd)
    }

    fn open_channel(
        &self,
        fd: Option<OwnedFd>,
        peer_pid: Option<i32>,
        peer_uid: Option<u32>,
    ) -> Outcome {
        let refuse = |message: String| {
            Failure::from(StoreWriterError::Io {
                operation: "opening a channel on".into(),
                path: "the passed socket".into(),
                message,
            })
        };
        let violation = |message: String| {
            Failure::Violation(Box::new(StoreWriterError::Io {
                operation: "opening a channel on".into(),
                path: "the passed socket".into(),
                message,
            }))
        };
        let fd = fd.ok_or_else(|| violation("no socket came with the request".into()))?;
        let is_unix_stream = rustix::net::sockopt::socket_type(&fd)
            .is_ok_and(|kind| kind == rustix::net::SocketType::STREAM)
            && rustix::net::sockopt::socket_domain(&fd)
                .is_ok_and(|domain| domain == rustix::net::AddressFamily::UNIX);
        if !is_unix_stream {
            return Err(violation(
                "the descriptor is not a unix stream socket".into(),
            ));
        }
        let origin = format!(
            "OpenChannel on channel {} for client pid {peer_pid:?} uid {peer_uid:?}",
            self.id
        );
        if !server::spawn_channel(&self.shared, UnixStream::from(fd), &origin, peer_uid) {
            return Err(refuse(format!(
                "too many open channels (at most {})",
                server::MAX_CHANNELS
            )));
        }
        Ok(StoreWriterToFrontend::Done)
    }

    /// `auto-optimise-store`: links the new paths' files to identical ones. A failure costs
    /// only the saving, never the addition.
    fn auto_optimise(&self, paths: &[StorePath]) {
        let mut store = self.shared.store();
        if !store.auto_optimise {
            return;
        }
        match store.optimise_paths(paths) {
            Ok(stats) => {
                for warning in &stats.warnings {
                    tracing::warn!(channel = self.id, "auto-optimise: {warning}");
                }
            }
            Err(e) => tracing::warn!(channel = self.id, "auto-optimise: {e}"),
        }
    }

    /// Records an addition (and the signatures it was given or got) in the audit log.
    fn audit_added(&self, info: &ward_proto::path_info::ValidPathInfo, from: &str) {
        if !ward_store::audit::enabled() {
            return;
        }
        let shown = self.shared.print(&info.path);
        ward_store::audit::record(
            "path-added",
            serde_json::json!({
                "path": shown,
                "nar_hash": info.nar_hash.to_string(),
                "nar_size": info.nar_size,
                "from": from,
                "uid": self.client_uid,
            }),
        );
        crate::audit_signed(&shown, info.sigs.iter(), self.client_uid);
    }

    fn registered_info(&self, path: &StorePath) -> Outcome {
        self.auto_optimise(std::slice::from_ref(path));
        let shown = self.shared.print(path);
        let info = self
            .shared
            .store()
            .db()
            .query_path_info(path)
            .map_err(|e| errors::db_error(e, &shown))?
            .ok_or_else(|| StoreWriterError::NotValid { path: path.clone() })?;
        Ok(StoreWriterToFrontend::PathAdded(Box::new(info)))
    }

    fn add_path_from_nar(
        &mut self,
        request: AddPathFromNar,
        fd: Option<OwnedFd>,
        channel: &WriterChannel,
    ) -> Outcome {
        let shared = Arc::clone(&self.shared);
        shared.auto_gc.run_if_needed(&shared);
        let mut info = request.info.clone();
        let path = info.path.clone();
        let shown = shared.print(&path);
        let pipe = Self::take_pipe(fd, &shown)?;
        check_name(path.name()).map_err(|e| StoreWriterError::BadName {
            name: path.name().to_owned(),
            reason: errors::name_reason(&e),
        })?;
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(StoreWriterError::MalformedNar {
                path,
                reason: format!(
                    "the claimed nar hash uses {}; nar hashes are sha256",
                    info.nar_hash.algo()
                ),
            }
            .into());
        }
        if request.check_sigs {
            // Only trusted clients may vouch for a path themselves.
            info.ultimate = false;
            let policy = shared.policy();
            if policy.require_sigs && !info.has_enough_signatures(shared.store_dir(), &policy.keys)
            {
                ward_store::audit::record(
                    "refused",
                    serde_json::json!({
                        "action": "add a path without a trusted signature",
                        "path": shown,
                        "setting": "require-sigs",
                        "uid": self.client_uid,
                    }),
                );
                return Err(StoreWriterError::SignatureMissing { path }.into());
            }
        }
        self.temp_roots.add(&path).map_err(temp_root_error)?;
        let options = AddOptions {
            repair: request.repair,
        };
        // The store is held only to prepare and to commit; the data streams into staging
        // without it.
        let mut upload = Upload::new(WatchedPipe::new(pipe, channel.socket().as_fd()));
        let prepared = shared
            .store()
            .prepare_add_path_in_batch(&info, options, &self.batch_paths);
        let staged = prepared.and_then(|addition| addition.stage(&mut upload));
        let added = match staged {
            Ok(staged) if request.defer && !request.repair => return self.defer_addition(staged),
            Ok(staged) => shared.store().commit_addition(staged),
            Err(e) => Err(e),
        };
        match added {
            Ok(outcome) => {
                if outcome == AddOutcome::Added {
                    tracing::info!(channel = self.id, path = %shown, "added path");
                    self.audit_added(&info, "nar");
                }
                self.registered_info(&path)
            }
            Err(e) => Err(refused_addition(
                upload,
                e,
                &AddContext {
                    store_dir: shared.store_dir(),
                    claimed: Some(&info),
                    shown,
                },
            )),
        }
    }

    /// Keeps a checked, staged addition for the channel's batch; commits the batch once full.
    fn defer_addition(&mut self, staged: StagedAddition) -> Outcome {
        let claimed = staged.info().clone();
        self.batch_bytes = self.batch_bytes.saturating_add(claimed.nar_size);
        self.batch_paths.insert(claimed.path.clone());
        self.batch.push(staged);
        if self.batch.len() >= MAX_BATCH_PATHS || self.batch_bytes >= MAX_BATCH_BYTES {
            self.commit_batch()?;
        }
        Ok(StoreWriterToFrontend::PathAdded(Box::new(claimed)))
    }

    /// CommitAdditions: registers the batch (see `Store::commit_additions`).
    fn commit_batch(&mut self) -> Result<(), Failure> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_paths.clear();
        self.batch_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let claims: Vec<_> = batch.iter().map(|s| s.info().clone()).collect();
        let shared = Arc::clone(&self.shared);
        let (outcomes, failure) = shared.store().commit_additions(batch);
        let mut committed = Vec::with_capacity(outcomes.len());
        for (info, outcome) in &outcomes {
            if *outcome == AddOutcome::Added {
                tracing::info!(channel = self.id, path = %shared.print(&info.path), "added path");
                self.audit_added(info, "nar");
            }
            committed.push(info.path.clone());
        }
        self.auto_optimise(&committed);
        if outcomes.len() > 1 {
            tracing::debug!(
                channel = self.id,
                paths = outcomes.len(),
                "committed a batch"
            );
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                // Nothing after the failed addition was committed: it names the path.
                let failed = claims.get(outcomes.len()).or(claims.first());
                Err(Failure::from(errors::add_error(
                    e,
                    &AddContext {
                        store_dir: shared.store_dir(),
                        claimed: failed,
                        shown: failed.map(|i| shared.print(&i.path)).unwrap_or_default(),
                    },
                )))
            }
        }
    }

    fn add_content(
        &mut self,
        request: AddContent,
        fd: Option<OwnedFd>,
        channel: &WriterChannel,
    ) -> Outcome {
        self.shared.auto_gc.run_if_needed(&self.shared);
        let shared = Arc::clone(&self.shared);
        let pipe = Self::take_pipe(fd, &request.name)?;
        check_name(&request.name).map_err(|e| StoreWriterError::BadName {
            name: request.name.clone(),
            reason: errors::name_reason(&e),
        })?;
        {
            let store = shared.store();
            for reference in &request.references {
                let valid = store
                    .db()
                    .is_valid(reference)
                    .map_err(|e| errors::db_error(e, &request.name))?;
                if !valid {
                    return Err(StoreWriterError::NotValid {
                        path: reference.clone(),
                    }
                    .into());
                }
            }
        }
        let options = AddOptions {
            repair: request.repair,
        };
        let mut upload = Upload::new(WatchedPipe::new(pipe, channel.socket().as_fd()));
        let prepared = shared.store().prepare_add_content(
            &request.name,
            request.method,
            request.hash_algo,
            &request.references,
            options,
        );
        let staged = prepared.and_then(|addition| addition.stage(&mut upload));
        let added = match staged {
            Ok(mut staged) => {
                // The root comes first, so a collection that runs now either keeps the path
                // or has deleted it before the commit below looks at validity.
                self.temp_roots
                    .add(&staged.info().path)
                    .map_err(temp_root_error)?;
                let mut store = shared.store();
                // Content the store-writer hashed itself: signed with secret-key-files.
                store.sign(staged.info_mut());
                let info = staged.info().clone();
                store.commit_addition(staged).map(|outcome| (info, outcome))
            }
            Err(e) => Err(e),
        };
        match added {
            Ok((info, outcome)) => {
                if outcome == AddOutcome::Added {
                    tracing::info!(channel = self.id, path = %shared.print(&info.path), "added path");
                    self.audit_added(&info, "content");
                }
                self.registered_info(&info.path)
            }
            Err(e) => Err(refused_addition(
                upload,
                e,
                &AddContext {
                    store_dir: shared.store_dir(),
                    claimed: None,
                    shown: request.name.clone(),
                },
            )),
        }
    }

    fn add_signatures(
        &self,
        path: &StorePath,
        sigs: &std::collections::BTreeSet<String>,
    ) -> Outcome {
        for sig in sigs {
            if Signature::parse(sig).is_err() {
                return Err(StoreWriterError::BadSignature {
                    path: path.clone(),
                    signature: sig.clone(),
                }
                .into());
            }
        }
        let shown = self.shared.print(path);
        let mut store = self.shared.store();
        if !store
            .db()
            .is_valid(path)
            .map_err(|e| errors::db_error(e, &shown))?
        {
            return Err(StoreWriterError::NotValid { path: path.clone() }.into());
        }
        store
            .db_mut()
            .add_signatures(path, sigs)
            .map_err(|e| errors::db_error(e, &shown))?;
        crate::audit_signed(&shown, sigs.iter(), self.client_uid);
        Ok(StoreWriterToFrontend::Done)
    }

    fn add_perm_root(&mut self, path: &StorePath, gc_root: String) -> Outcome {
        let shown = self.shared.print(path);
        let valid = self
            .shared
            .store()
            .db()
            .is_valid(path)
            .map_err(|e| errors::db_error(e, &shown))?;
        if !valid {
            return Err(StoreWriterError::NotValid { path: path.clone() }.into());
        }
        // As Nix: keep the path alive while the root is being made.
        self.temp_roots.add(path).map_err(temp_root_error)?;
        roots::add_perm_root(&self.shared.layout, &shown, &gc_root)?;
        Ok(StoreWriterToFrontend::RootAdded { gc_root })
    }

    fn register_realisation(&self, realisation: &Realisation) -> Outcome {
        let id_shown = format!(
            "{}!{}",
            realisation.id.drv_hash.to_prefixed_base16(),
            realisation.id.output
        );
        let bad = |reason: String| {
            Failure::from(StoreWriterError::BadContentAddress {
                path: id_shown.clone(),
                reason,
            })
        };
        if realisation.id.drv_hash.algo() != HashAlgo::Sha256 {
            return Err(bad(format!(
                "the derivation hash uses {}, not sha256",
                realisation.id.drv_hash.algo()
            )));
        }
        let ids = std::iter::once(&realisation.id).chain(realisation.dependent_realisations.keys());
        for id in ids {
            check_name(&id.output).map_err(|e| StoreWriterError::BadName {
                name: id.output.clone(),
                reason: errors::name_reason(&e),
            })?;
        }
        for sig in &realisation.signatures {
            if Signature::parse(sig).is_err() {
                return Err(StoreWriterError::BadSignature {
                    path: realisation.out_path.clone(),
                    signature: sig.clone(),
                }
                .into());
            }
        }
        let mut store = self.shared.store();
        let paths = std::iter::once(&realisation.out_path)
            .chain(realisation.dependent_realisations.values());
        for path in paths {
            let valid = store
                .db()
                .is_valid(path)
                .map_err(|e| errors::db_error(e, &id_shown))?;
            if !valid {
                return Err(StoreWriterError::NotValid { path: path.clone() }.into());
            }
        }
        store
            .db_mut()
            .register_realisation(realisation)
            .map_err(|e| errors::db_error(e, &id_shown))?;
        Ok(StoreWriterToFrontend::Done)
    }

    fn add_build_log(
        &self,
        drv_path: &StorePath,
        fd: Option<OwnedFd>,
        channel: &WriterChannel,
    ) -> Outcome {
        let shown = self.shared.print(drv_path);
        let pipe = Self::take_pipe(fd, &shown)?;
        let source = WatchedPipe::new(pipe, channel.socket().as_fd());
        match buildlog::write_build_log(
            self.shared.layout.log_dir(),
            drv_path,
            self.shared.policy().compress_build_log,
            source,
        ) {
            Ok(_) => Ok(StoreWriterToFrontend::Done),
            Err(BuildLogError::NotADerivation(_)) => Err(StoreWriterError::BadName {
                name: drv_path.name().to_owned(),
                reason: format!("'{shown}' is not a derivation, so it has no build log"),
            }
            .into()),
            Err(BuildLogError::Read(e)) if is_peer_gone(&e) => Err(Failure::PeerGone),
            Err(BuildLogError::Read(e)) => Err(StoreWriterError::Io {
                operation: "reading the build log of".into(),
                path: shown,
                message: e.to_string(),
            }
            .into()),
            Err(BuildLogError::Write {
                action,
                path,
                source,
            }) => Err(StoreWriterError::Io {
                operation: format!("storing the build log of {shown}: {action}"),
                path: path.display().to_string(),
                message: source.to_string(),
            }
            .into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register_build_outputs(
        &mut self,
        build: ward_proto::ipc::BuildId,
        drv_path: &StorePath,
        outputs: BTreeMap<String, OutputKind>,
        reference_candidates: &BTreeSet<StorePath>,
        checks: &BTreeMap<String, OutputChecks>,
        mode: RegisterMode,
        fds: Vec<OwnedFd>,
        channel: &WriterChannel,
    ) -> Outcome {
        let shared = Arc::clone(&self.shared);
        shared.auto_gc.run_if_needed(&shared);
        let drv_shown = shared.print(drv_path);
        let mut wanted = Vec::with_capacity(outputs.len());
        for (name, kind) in outputs {
            let (path, fixed) = match kind {
                OutputKind::InputAddressed { path } => (path, None),
                OutputKind::Fixed { path, ca } => (path, Some(ca)),
                OutputKind::Floating { .. } => {
                    return Err(StoreWriterError::BadOutput {
                        drv_path: drv_path.clone(),
                        output: name,
                        reason: "content-addressed (floating) outputs are not supported by ward"
                            .into(),
                    }
                    .into())
                }
            };
            wanted.push(BuildOutput { name, path, fixed });
        }
        let mut pipes = Vec::with_capacity(fds.len());
        let max_output_size = shared.policy().max_output_size;
        for (fd, output) in fds.into_iter().zip(&wanted) {
            let pipe = Self::take_pipe(Some(fd), &shared.print(&output.path))?;
            pipes.push(SizeCapped {
                inner: WatchedPipe::new(pipe, channel.socket().as_fd()),
                limit: max_output_size,
                read: 0,
            });
        }
        // Temporary roots first, so a collection cannot take the outputs between their
        // registration and the client's own root.
        for output in &wanted {
            self.temp_roots.add(&output.path).map_err(temp_root_error)?;
        }
        // The store is held to prepare and to commit, not while the NARs stream in.
        let prepared =
            shared
                .store()
                .prepare_build_outputs(drv_path, wanted, reference_candidates, mode);
        let staged = prepared.and_then(|registration| registration.stage(pipes));
        let registered = match staged {
            Ok(staged) => shared.store().commit_build_outputs(staged, checks),
            Err(e) => Err(e),
        };
        match registered {
            Ok(outputs) => {
                let paths: Vec<StorePath> = outputs.values().map(|i| i.path.clone()).collect();
                self.auto_optimise(&paths);
                for info in outputs.values() {
                    ward_store::audit::record(
                        "path-added",
                        serde_json::json!({
                            "path": self.shared.print(&info.path),
                            "nar_hash": info.nar_hash.to_string(),
                            "nar_size": info.nar_size,
                            "from": "build",
                            "drv": drv_shown,
                            "uid": self.client_uid,
                        }),
                    );
                    crate::audit_signed(&self.shared.print(&info.path), info.sigs.iter(), None);
                }
                tracing::info!(
                    channel = self.id,
                    %build,
                    drv = %drv_shown,
                    ?mode,
                    outputs = outputs.len(),
                    "registered build outputs"
                );
                Ok(StoreWriterToFrontend::OutputsRegistered { outputs })
            }
            Err(e) => {
                if e.read_failure().is_some_and(is_peer_gone) {
                    return Err(Failure::PeerGone);
                }
                Err(output_error(e, drv_path, &drv_shown).into())
            }
        }
    }
}
