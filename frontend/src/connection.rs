//! One client connection: the handshake, then ops until the client closes.
//!
//! Every op follows protocol-facts §3.1: read all arguments (a decoding error is answered with
//! one `STDERR_ERROR` and the connection is closed, since the stream is out of sync), then the
//! work phase (log lines, bulk data), then `STDERR_LAST` and the reply, or `STDERR_ERROR` and
//! the next op. Uploaded data is always read to its end, even when the op fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use ward_config::{ClientOptions, MessageLevel, Settings};
use ward_proto::content_address::{ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::HashAlgo;
use ward_proto::ipc::store_writer::{GcAction, StoreWriterError};
use ward_proto::nar;
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::StorePath;
use ward_proto::wire::{FramedReader, Limits, WireError, WireReader, WireWriter};
use ward_proto::worker::types::{
    placeholder_drv_output, BuildResult, BuildStatus, DerivedPath, GcAction as WireGcAction,
    GcPaths, GcResult, KeyedBuildResult, OutputsSpec, TrustFlag,
};
use ward_proto::worker::{
    read_op, AddToStore, AddToStoreReply, ClientHandshakeInfo, DaemonError, Op, QueryRealisation,
    RealisationReply, RegisterDrvOutput, Reply, Request, ServerHandshake, StderrMessage, Upload,
    Verbosity, WireContext,
};

use crate::auth::{PeerInfo, Trust};
use crate::blocking_io::{read_with_blocking, write_socket_from_blocking};
use crate::server::Shared;
use crate::writer_client::{ClientError, WriterClient};

/// The Nix version ward reports in the handshake (≥ 1.33). Clients only display it.
pub const REPORTED_VERSION: &str = concat!("2.8.0 (ward ", env!("CARGO_PKG_VERSION"), ")");

/// How long a connection waits for the store-writer before failing the op.
const WRITER_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long NarFromPath waits for a client that has stopped reading before giving up on it.
const NAR_SEND_STALL_LIMIT: Duration = Duration::from_secs(600);

/// Largest NAR an old-protocol ImportPaths may carry: that op sends the NAR before the path it
/// belongs to, so it has to be held in memory (clients newer than Nix 2.0 never use it).
const MAX_IMPORT_NAR: u64 = 256 << 20;

/// How an op failed.
#[derive(Debug)]
enum OpError {
    /// Shown to the client as an error; the connection goes on.
    Client(String),
    /// The stream is out of sync or gone: send the error if possible and close.
    Fatal(String),
    /// The store-writer refused or failed; shown to the client, the connection goes on.
    Writer(ClientError),
}

impl From<ClientError> for OpError {
    fn from(e: ClientError) -> OpError {
        OpError::Writer(e)
    }
}

/// A store-writer failure as the Nix client sees it.
pub(crate) fn writer_message(
    store_dir: &ward_proto::store_path::StoreDir,
    e: &ClientError,
) -> String {
    match e {
        ClientError::Store(e) => e.to_client_message(store_dir),
        other => format!("ward's store-writer is unavailable: {other}"),
    }
}

impl From<ward_store::db::DbError> for OpError {
    fn from(e: ward_store::db::DbError) -> OpError {
        OpError::Client(format!("reading the store database: {e}"))
    }
}

fn wire_fatal(e: WireError) -> OpError {
    OpError::Fatal(e.to_string())
}

type OpResult<T = ()> = Result<T, OpError>;

/// Whether a connection's end is the client going away (end of input, a broken pipe, a reset)
/// rather than something wrong.
pub(crate) fn is_hang_up(message: &str) -> bool {
    [
        "unexpected end of input",
        "went away",
        "Broken pipe",
        "Connection reset",
        "os error 32",
        "os error 104",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Serves one client until it closes.
pub async fn serve(stream: UnixStream, shared: Arc<Shared>, peer: PeerInfo, trust: Trust) {
    let (read_half, write_half) = stream.into_split();
    let store_dir = shared.store.store_dir().clone();
    let temp_roots = shared.connections.temp_root_budget(peer.uid);
    let mut conn = Connection {
        r: WireReader::with_limits(read_half, Limits::default()),
        w: write_half,
        out: WireWriter::new(),
        ctx: WireContext::new(store_dir, ward_proto::worker::PROTOCOL_VERSION),
        settings: shared.settings(),
        shared,
        trust,
        verbosity: Verbosity::Info,
        writer: None,
        peer_uid: peer.uid,
        temp_roots,
    };
    match conn.run().await {
        Ok(()) => debug!(user = %peer.user_name, "client closed the connection"),
        // A client that hangs up (Ctrl-C, a killed nix-build) is routine, not an error.
        Err(e) if is_hang_up(&e) => debug!(user = %peer.user_name, "client hung up: {e}"),
        Err(e) => info!(user = %peer.user_name, "connection ended: {e}"),
    }
}

struct Connection {
    r: WireReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    /// Bytes queued for the client (stderr messages, replies), flushed at the end of each op.
    out: WireWriter,
    ctx: WireContext,
    shared: Arc<Shared>,
    /// This connection's settings (the daemon's, changed by SetOptions).
    settings: Arc<Settings>,
    trust: Trust,
    verbosity: Verbosity,
    /// The channel to the store-writer, opened by the first op that changes the store; temporary
    /// roots live as long as it does.
    writer: Option<WriterClient>,
    /// The client's uid (builds it starts name it as their requester).
    peer_uid: u32,
    /// The AddTempRoot roots this connection holds, counted against its user's cap.
    temp_roots: crate::limits::TempRootBudget,
}

impl Connection {
    async fn run(&mut self) -> Result<(), String> {
        let info = ClientHandshakeInfo {
            daemon_nix_version: Some(REPORTED_VERSION.to_owned()),
            trust: Some(if self.trust.is_trusted() {
                TrustFlag::Trusted
            } else {
                TrustFlag::NotTrusted
            }),
        };
        let negotiated = tokio::time::timeout(
            crate::limits::HANDSHAKE_TIMEOUT,
            ServerHandshake::default().accept(&mut self.r, &mut self.w, &info),
        )
        .await
        .map_err(|_| {
            format!(
                "handshake: not finished within {} s; closing",
                crate::limits::HANDSHAKE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("handshake: {e}"))?;
        self.ctx = WireContext::with_features(
            self.ctx.store_dir.clone(),
            negotiated.version,
            negotiated.features,
        );
        debug!(version = %negotiated.version, "handshake done");
        StderrMessage::Last.write(&mut self.out, self.ctx.version);
        self.flush().await?;

        let mut restarts = self.shared.writer_restarts.clone();
        let mut draining = self.shared.draining.subscribe();
        loop {
            // While waiting for the next request, a restarted store-writer gets this
            // connection's temporary roots at once, and a draining daemon closes the
            // connection (between operations, where the client expects nothing).
            if !self
                .wait_for_request(restarts.as_mut(), &mut draining)
                .await?
            {
                debug!("closing an idle connection: the daemon is stopping");
                return Ok(());
            }
            let op = match read_op(&mut self.r).await {
                Ok(Some(op)) => op,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.fail_and_close(&format!("reading the next operation: {e}"))
                        .await;
                    return Err(e.to_string());
                }
            };
            let request = match Request::read(op, &mut self.r, &self.ctx).await {
                Ok(request) => request,
                Err(e) if e.is_eof() => return Err(format!("client went away during {op:?}")),
                Err(e) => {
                    let msg = format!("invalid arguments for operation {op:?}: {e}");
                    self.fail_and_close(&msg).await;
                    return Err(msg);
                }
            };
            debug!(?op, "operation");

            // A bug that panics while handling one request is answered like any failure,
            // with an error frame the client shows, and ends this connection only (its
            // state may be half-changed).
            let handled = crate::server::CatchPanic::new(async {
                // Debug (test) builds only: an op whose handling panics, for the tests of what
                // a bug costs (tests/tests/crash_budget.rs). Release builds have no such hook.
                #[cfg(debug_assertions)]
                if std::env::var("WARD_TEST_PANIC_ON_OP")
                    .is_ok_and(|name| name == format!("{op:?}"))
                {
                    panic!("test hook WARD_TEST_PANIC_ON_OP: {op:?}");
                }
                self.handle(request).await
            })
            .await;
            let handled = match handled {
                Ok(handled) => handled,
                Err(panic) => {
                    let what = crate::server::panic_message(&*panic);
                    tracing::error!(?op, "internal error while handling the request: {what}");
                    let msg = format!(
                        "ward's frontend hit an internal error handling {op:?} ({what}); the \
                         connection is closed, the daemon goes on (its log has the details)"
                    );
                    self.fail_and_close(&msg).await;
                    return Err(msg);
                }
            };
            match handled {
                Ok(()) => {}
                Err(OpError::Writer(e)) => {
                    let msg = writer_message(&self.ctx.store_dir, &e);
                    debug!(?op, "failed: {msg}");
                    // A dead or out-of-sync channel (the store-writer was restarted) is
                    // dropped, so the connection's next request reaches the new one.
                    if matches!(
                        e,
                        ClientError::Ipc(_)
                            | ClientError::UnexpectedReply { .. }
                            | ClientError::Broken
                    ) {
                        self.writer = None;
                    }
                    self.queue_error(&msg);
                    self.flush().await?;
                }
                Err(OpError::Client(msg)) => {
                    debug!(?op, "failed: {msg}");
                    self.queue_error(&msg);
                    self.flush().await?;
                }
                Err(OpError::Fatal(msg)) => {
                    self.fail_and_close(&msg).await;
                    return Err(msg);
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.out
            .flush_to(&mut self.w)
            .await
            .map_err(|e| format!("writing to the client: {e}"))?;
        crate::busy_poll::note_reply();
        Ok(())
    }

    fn queue_error(&mut self, msg: &str) {
        StderrMessage::Error(DaemonError::new(msg)).write(&mut self.out, self.ctx.version);
    }

    async fn fail_and_close(&mut self, msg: &str) {
        if is_hang_up(msg) {
            debug!("client hung up: {msg}");
        } else {
            warn!("closing connection: {msg}");
        }
        self.queue_error(msg);
        let _ = self.flush().await;
        let _ = self.w.shutdown().await;
    }

    /// Queues a log line if the client's verbosity admits it.
    fn log(&mut self, level: Verbosity, text: &str) {
        if level <= self.verbosity {
            StderrMessage::Next(format!("{text}\n").into_bytes())
                .write(&mut self.out, self.ctx.version);
        }
    }

    /// Ends the work phase with `reply`.
    async fn reply(&mut self, reply: Reply) -> OpResult {
        StderrMessage::Last.write(&mut self.out, self.ctx.version);
        reply
            .write(&mut self.out, &self.ctx)
            .map_err(|e| OpError::Fatal(e.to_string()))?;
        self.flush().await.map_err(OpError::Fatal)
    }

    fn trusted(&self) -> bool {
        self.trust.is_trusted()
    }

    fn require_trusted(&self, what: &str) -> OpResult {
        if self.trusted() {
            Ok(())
        } else {
            self.audit_refusal(what, "trusted-users");
            Err(OpError::Client(format!("you are not privileged to {what}")))
        }
    }

    /// Records in the audit log that this client was refused `what` because of `setting`.
    fn audit_refusal(&self, what: &str, setting: &str) {
        ward_store::audit::record(
            "refused",
            serde_json::json!({ "uid": self.peer_uid, "action": what, "setting": setting }),
        );
    }

    fn print(&self, path: &StorePath) -> String {
        self.ctx.store_dir.print(path)
    }

    /// Returns when the client's next request has begun to arrive (or it hung up), giving
    /// this connection's temporary roots to a restarted store-writer meanwhile.
    /// Waits until the next request's first bytes are here (true) or the daemon drains
    /// (false).
    async fn wait_for_request(
        &mut self,
        mut restarts: Option<&mut tokio::sync::watch::Receiver<u64>>,
        draining: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<bool, String> {
        use tokio::io::AsyncBufReadExt;
        loop {
            if !self.r.buffered().is_empty() {
                return Ok(true);
            }
            let holds_roots = restarts.is_some()
                && self
                    .writer
                    .as_ref()
                    .is_some_and(WriterClient::has_temp_roots);
            // `fill_buf` is cancel safe: nothing is consumed.
            let restarted = tokio::select! {
                filled = self.r.fill_buf() => {
                    filled.map_err(|e| format!("reading the next operation: {e}"))?;
                    false
                }
                changed = async {
                    match restarts.as_mut() {
                        Some(r) => r.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if holds_roots => changed,
                _ = draining.wait_for(|d| *d) => return Ok(false),
            };
            if !restarted {
                return Ok(true);
            }
            match connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid)).await {
                Ok(_) => debug!("temporary roots given to the restarted store-writer"),
                Err(e) => debug!("replaying temporary roots: {e:?}; retried at the next request"),
            }
        }
    }

    async fn writer(&mut self) -> OpResult<&mut WriterClient> {
        connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid)).await
    }

    fn query_info(&self, path: &StorePath) -> OpResult<Option<Arc<ValidPathInfo>>> {
        Ok(self.shared.store.query_path_info(path)?)
    }

    fn valid_info(&self, path: &StorePath) -> OpResult<Arc<ValidPathInfo>> {
        self.query_info(path)?
            .ok_or_else(|| OpError::Client(format!("path '{}' is not valid", self.print(path))))
    }

    fn is_valid(&self, path: &StorePath) -> OpResult<bool> {
        Ok(self.shared.store.is_valid(path)?)
    }

    async fn handle(&mut self, request: Request) -> OpResult {
        use Request as R;
        let op = request.op();
        match request {
            R::IsValidPath(r) => {
                let valid = self.is_valid(&r.path)?;
                self.reply(Reply::IsValidPath(valid)).await
            }
            R::HasSubstitutes(r) => {
                let found = self
                    .ask_substituters(move |subs, messages| {
                        subs.substitutable_paths(&[r.path].into(), messages)
                    })
                    .await;
                self.reply(Reply::HasSubstitutes(!found.is_empty())).await
            }
            R::QueryPathHash(r) => {
                let info = self.valid_info(&r.path)?;
                self.reply(Reply::QueryPathHash(info.nar_hash)).await
            }
            R::QueryReferences(r) => {
                let info = self.valid_info(&r.path)?;
                self.reply(Reply::QueryReferences(info.references.clone()))
                    .await
            }
            R::QueryReferrers(r) => {
                let referrers = self
                    .shared
                    .store
                    .with_db(|db| db.query_referrers(&r.path))?;
                self.reply(Reply::QueryReferrers(referrers)).await
            }
            R::QueryDeriver(r) => {
                let info = self.valid_info(&r.path)?;
                self.reply(Reply::QueryDeriver(info.deriver.clone())).await
            }
            R::QueryPathInfo(r) => {
                let info = self.query_info(&r.path)?;
                if info.is_none() && !self.ctx.at_least(17) {
                    return Err(OpError::Client(format!(
                        "path '{}' is not valid",
                        self.print(&r.path)
                    )));
                }
                // Written from the shared (cached) info without copying it.
                StderrMessage::Last.write(&mut self.out, self.ctx.version);
                Reply::write_query_path_info(&mut self.out, &self.ctx, info.as_deref())
                    .map_err(|e| OpError::Fatal(e.to_string()))?;
                self.flush().await.map_err(OpError::Fatal)
            }
            R::QueryAllValidPaths(_) => {
                let all = self.shared.store.with_db(|db| db.query_all_valid_paths())?;
                self.reply(Reply::QueryAllValidPaths(all)).await
            }
            R::QueryValidPaths(r) => {
                let valid = self
                    .shared
                    .store
                    .with_db(|db| db.query_valid_paths(&r.paths))?;
                self.reply(Reply::QueryValidPaths(valid)).await
            }
            R::QueryPathFromHashPart(r) => {
                let found = self
                    .shared
                    .store
                    .with_db(|db| db.query_path_from_hash_part(&r.hash_part))?;
                self.reply(Reply::QueryPathFromHashPart(found)).await
            }
            R::QueryValidDerivers(r) => {
                let derivers = self
                    .shared
                    .store
                    .with_db(|db| db.query_valid_derivers(&r.path))?;
                self.reply(Reply::QueryValidDerivers(derivers)).await
            }
            R::QueryDerivationOutputs(r) => {
                let outputs = self.derivation_outputs(&r.path)?;
                let paths = outputs.into_values().flatten().collect();
                self.reply(Reply::QueryDerivationOutputs(paths)).await
            }
            R::QueryDerivationOutputNames(r) => {
                let outputs = self.derivation_outputs(&r.path)?;
                self.reply(Reply::QueryDerivationOutputNames(
                    outputs.into_keys().collect(),
                ))
                .await
            }
            R::QueryDerivationOutputMap(r) => {
                let outputs = self.derivation_outputs(&r.path)?;
                self.reply(Reply::QueryDerivationOutputMap(outputs)).await
            }
            R::QuerySubstitutablePathInfo(r) => {
                let mut infos = self
                    .ask_substituters(move |subs, messages| {
                        subs.path_infos([&r.path], messages).into_values().next()
                    })
                    .await;
                self.reply(Reply::QuerySubstitutablePathInfo(infos.take()))
                    .await
            }
            R::QuerySubstitutablePathInfos(r) => {
                // Content addresses would matter only for a cache of another store directory,
                // which ward does not use.
                let infos = self
                    .ask_substituters(move |subs, messages| {
                        subs.path_infos(r.paths.keys(), messages)
                    })
                    .await;
                self.reply(Reply::QuerySubstitutablePathInfos(infos)).await
            }
            R::QuerySubstitutablePaths(r) => {
                let found = self
                    .ask_substituters(move |subs, messages| {
                        subs.substitutable_paths(&r.paths, messages)
                    })
                    .await;
                self.reply(Reply::QuerySubstitutablePaths(found)).await
            }
            R::QueryMissing(r) => {
                let shared = Arc::clone(&self.shared);
                let targets = r.targets;
                let missing = self
                    .ask_substituters(move |subs, messages| {
                        crate::build::missing::query_missing(&shared, subs, &targets, messages)
                    })
                    .await
                    .map_err(OpError::Client)?;
                self.reply(Reply::QueryMissing(missing)).await
            }
            R::SetOptions(r) => {
                self.set_options(r);
                self.reply(Reply::SetOptions).await
            }
            R::EnsurePath(r) => {
                if !self.is_valid(&r.path)? {
                    let target = DerivedPath::Opaque(r.path.clone());
                    let results = self
                        .build_targets(vec![target], ward_proto::worker::types::BuildMode::Normal)
                        .await?;
                    let result = &results[0].result;
                    if !build_succeeded(result) {
                        return Err(OpError::Client(
                            if result.status == BuildStatus::NoSubstituters {
                                format!(
                                    "path '{}' does not exist and cannot be created",
                                    self.print(&r.path)
                                )
                            } else {
                                result.error_msg.clone()
                            },
                        ));
                    }
                }
                self.writer().await?.add_temp_root(r.path).await?;
                self.reply(Reply::EnsurePath).await
            }
            R::AddTempRoot(r) => {
                self.temp_roots
                    .take()
                    .map_err(|e| OpError::Client(e.to_string()))?;
                self.writer().await?.add_temp_root(r.path).await?;
                self.reply(Reply::AddTempRoot).await
            }
            R::AddIndirectRoot(r) => {
                let link = r.path.to_string_lossy().into_owned();
                self.writer().await?.add_indirect_root(link).await?;
                self.reply(Reply::AddIndirectRoot).await
            }
            R::AddPermRoot(r) => {
                self.require_trusted("add permanent GC roots")?;
                let gc_root = r.gc_root.to_string_lossy().into_owned();
                let made = self.writer().await?.add_perm_root(r.path, gc_root).await?;
                self.reply(Reply::AddPermRoot(made.into())).await
            }
            R::SyncWithGC(_) => self.reply(Reply::SyncWithGC).await,
            R::FindRoots(_) => {
                let roots = crate::roots::find_roots(&self.shared, self.trusted())
                    .await
                    .map_err(|e| {
                        OpError::Client(format!("cannot find the garbage collector's roots: {e}"))
                    })?;
                self.reply(Reply::FindRoots(roots)).await
            }
            R::AddSignatures(r) => {
                self.require_trusted("add signatures")?;
                self.writer().await?.add_signatures(r.path, r.sigs).await?;
                self.reply(Reply::AddSignatures).await
            }
            R::NarFromPath(r) => self.nar_from_path(&r.path).await,
            R::ExportPath(r) => self.export_path(&r.path).await,
            R::AddToStore(r) => self.add_to_store(r).await,
            R::AddTextToStore(r) => {
                let data: &[u8] = &r.text;
                let info = self
                    .writer()
                    .await?
                    .add_content(
                        r.name,
                        ContentAddressMethod::Text,
                        HashAlgo::Sha256,
                        r.references,
                        false,
                        data,
                    )
                    .await?;
                self.reply(Reply::AddTextToStore(info.path)).await
            }
            R::AddToStoreNar(r) => self.add_to_store_nar(r).await,
            R::AddMultipleToStore(r) => self.add_multiple(r.repair, r.dont_check_sigs).await,
            R::ImportPaths(_) => self.import_paths().await,
            R::RegisterDrvOutput(r) => {
                let realisation = match r {
                    RegisterDrvOutput::Json(realisation) => realisation,
                    RegisterDrvOutput::Legacy { .. } => {
                        return Err(OpError::Client(
                            "RegisterDrvOutput without a realisation (protocol < 1.31) is not \
                             supported"
                                .into(),
                        ))
                    }
                    other => {
                        return Err(OpError::Client(format!(
                            "unsupported RegisterDrvOutput form: {other:?}"
                        )))
                    }
                };
                // Untrusted clients may register only realisations signed by a trusted key.
                if !self.trusted() {
                    let keys = ward_proto::signature::PublicKeys::parse_setting(
                        &self.settings.trusted_public_keys.join(" "),
                    )
                    .map_err(|e| OpError::Client(format!("setting 'trusted-public-keys': {e}")))?;
                    if realisation.check_signatures(&keys) == 0 {
                        self.audit_refusal(
                            "register an unsigned realisation",
                            "trusted-public-keys",
                        );
                        return Err(OpError::Client(format!(
                            "cannot register realisation '{}' because it lacks a valid \
                             signature (only trusted users may register unsigned ones)",
                            realisation.id
                        )));
                    }
                }
                self.writer()
                    .await?
                    .register_realisation(realisation)
                    .await?;
                self.reply(Reply::RegisterDrvOutput).await
            }
            R::QueryRealisation(r) => {
                let QueryRealisation::Id(id) = r else {
                    return Err(OpError::Client(
                        "QueryRealisation by derivation path is not supported".into(),
                    ));
                };
                let found = self.shared.store.with_db(|db| db.query_realisation(&id))?;
                let reply = if self.ctx.at_least(31) {
                    RealisationReply::Json(found)
                } else {
                    RealisationReply::OutPath(found.map(|r| r.out_path))
                };
                self.reply(Reply::QueryRealisation(reply)).await
            }
            R::AddBuildLog(r) => {
                let mut framed = FramedReader::new(&mut self.r);
                let mut log = Vec::new();
                let read = (&mut framed).take(64 << 20).read_to_end(&mut log).await;
                framed.drain().await.map_err(wire_fatal)?;
                read.map_err(|e| OpError::Fatal(e.to_string()))?;
                self.require_trusted("add build logs")?;
                let data: &[u8] = &log;
                self.writer().await?.add_build_log(r.drv_path, data).await?;
                self.reply(Reply::AddBuildLog).await
            }
            R::VerifyStore(r) => {
                if r.repair {
                    self.require_trusted("repair paths")?;
                }
                let _scan = self
                    .shared
                    .connections
                    .begin_scan(self.peer_uid, "store verification")
                    .map_err(|e| OpError::Client(e.to_string()))?;
                let (mut errors, messages, to_repair) = self
                    .writer()
                    .await?
                    .verify_store(r.check_contents, r.repair)
                    .await?;
                for (finding, text) in messages {
                    let level = if finding {
                        Verbosity::Error
                    } else {
                        Verbosity::Info
                    };
                    self.log(level, &text);
                }
                for printed in to_repair {
                    let repaired = match self.ctx.store_dir.parse_path(&printed) {
                        Ok(path) => self.repair_path(&path).await?,
                        Err(_) => false,
                    };
                    if !repaired {
                        self.log(Verbosity::Error, &format!("cannot repair path '{printed}'"));
                        errors = true;
                    }
                }
                self.reply(Reply::VerifyStore(errors)).await
            }
            R::BuildPaths(r) => {
                self.check_build_mode(r.mode)?;
                let results = self.build_targets(r.paths, r.mode).await?;
                let failed: Vec<&KeyedBuildResult> = results
                    .iter()
                    .filter(|r| !build_succeeded(&r.result))
                    .collect();
                match failed.as_slice() {
                    [] => self.reply(Reply::BuildPaths).await,
                    [one] => Err(OpError::Client(one.result.error_msg.clone())),
                    many => {
                        if let Some(last) = many.last() {
                            let text = format!("error: {}", last.result.error_msg);
                            self.log(Verbosity::Error, &text);
                        }
                        let names: Vec<String> = many
                            .iter()
                            .map(|r| match &r.path {
                                DerivedPath::Opaque(p) => format!("'{}'", self.print(p)),
                                DerivedPath::Built { drv_path, .. } => {
                                    format!("'{}'", self.print(drv_path))
                                }
                            })
                            .collect();
                        Err(OpError::Client(format!(
                            "build of {} failed",
                            names.join(", ")
                        )))
                    }
                }
            }
            R::BuildPathsWithResults(r) => {
                self.check_build_mode(r.mode)?;
                let results = self.build_targets(r.paths, r.mode).await?;
                self.reply(Reply::BuildPathsWithResults(results)).await
            }
            R::BuildDerivation(r) => {
                let fixed = r.drv.outputs.values().all(|o| !o.hash_algo.is_empty());
                if !self.trusted() && !fixed {
                    self.audit_refusal("build input-addressed derivations", "trusted-users");
                    return Err(OpError::Client(
                        "you are not privileged to build input-addressed derivations".into(),
                    ));
                }
                self.check_build_mode(r.mode)?;
                let result = self.build_derivation(r.drv_path, r.drv, r.mode).await?;
                self.reply(Reply::BuildDerivation(result)).await
            }
            R::CollectGarbage(r) => {
                if r.ignore_liveness {
                    return Err(OpError::Client(
                        "you are not allowed to ignore liveness".into(),
                    ));
                }
                let paths = match r.paths {
                    GcPaths::WholeStore => BTreeSet::new(),
                    GcPaths::Specific {
                        delete_referrers: true,
                        ..
                    } => {
                        return Err(OpError::Client(
                            "ward does not delete the referrers of the paths named \
                             (delete-dead-specific-referrers); name them too"
                                .into(),
                        ))
                    }
                    GcPaths::Specific { paths, .. } => paths,
                };
                let action = match r.action {
                    WireGcAction::ReturnLive => GcAction::ReturnLive,
                    WireGcAction::ReturnDead => GcAction::ReturnDead,
                    WireGcAction::DeleteDead => GcAction::DeleteDead,
                    WireGcAction::DeleteSpecific => GcAction::DeleteSpecific,
                };
                let (keep_outputs, keep_derivations) =
                    (self.settings.keep_outputs, self.settings.keep_derivations);
                let collected = self
                    .writer()
                    .await?
                    .collect_garbage(action, paths, r.max_freed, keep_outputs, keep_derivations)
                    .await;
                let (paths, bytes_freed, messages) = match collected {
                    Err(e) => {
                        if let Some(StoreWriterError::StillAlive { path }) = e.refusal() {
                            return Err(OpError::Client(format!(
                                "Cannot delete path '{}' since it is still alive. \
                                 To find out why, use: nix-store --query --roots",
                                self.shared.store.store_dir().print(path)
                            )));
                        }
                        return Err(e.into());
                    }
                    Ok(collected) => collected,
                };
                for message in messages {
                    self.log(Verbosity::Info, &message);
                }
                self.reply(Reply::CollectGarbage(GcResult { paths, bytes_freed }))
                    .await
            }
            R::OptimiseStore(_) => {
                // As in Nix, any client may ask: it changes no path's contents. One at a time
                // per user: each reads the whole store.
                let _scan = self
                    .shared
                    .connections
                    .begin_scan(self.peer_uid, "optimisation of the store")
                    .map_err(|e| OpError::Client(e.to_string()))?;
                let (bytes_freed, files_linked) = self.writer().await?.optimise_store().await?;
                self.log(
                    Verbosity::Info,
                    &format!(
                        "{:.2} MiB freed by hard-linking {files_linked} files",
                        bytes_freed as f64 / (1024.0 * 1024.0)
                    ),
                );
                self.reply(Reply::OptimiseStore).await
            }
            R::QueryFailedPaths(_) | R::ClearFailedPaths(_) => {
                Err(OpError::Fatal(format!("invalid operation {}", op.code())))
            }
            other => Err(OpError::Fatal(format!(
                "operation {:?} is not supported on this connection",
                other.op()
            ))),
        }
    }

    /// Repairs a valid path whose files are damaged or gone, as Nix's `repairPath`: fetched
    /// again from a substituter, else its deriver (when valid) rebuilt in repair mode.
    async fn repair_path(&mut self, path: &StorePath) -> OpResult<bool> {
        use ward_proto::worker::types::BuildMode;
        let fetched = self
            .build_targets(vec![DerivedPath::Opaque(path.clone())], BuildMode::Repair)
            .await?;
        if build_succeeded(&fetched[0].result) {
            return Ok(true);
        }
        let deriver = self.query_info(path)?.and_then(|i| i.deriver.clone());
        let Some(deriver) = deriver else {
            return Ok(false);
        };
        if !self.is_valid(&deriver)? {
            return Ok(false);
        }
        let rebuilt = self
            .build_targets(
                vec![DerivedPath::Built {
                    drv_path: deriver,
                    outputs: OutputsSpec::All,
                }],
                BuildMode::Repair,
            )
            .await?;
        Ok(build_succeeded(&rebuilt[0].result))
    }

    fn build_ctx(
        &self,
        log: tokio::sync::mpsc::Sender<crate::build::LogEvent>,
    ) -> crate::build::BuildCtx {
        crate::build::BuildCtx {
            settings: Arc::clone(&self.settings),
            trusted: self.trusted(),
            uid: self.peer_uid,
            log: Some(log),
        }
    }

    /// Realises `targets`: valid paths as they are, derivations through their (shared) goals.
    /// Build logs stream to this client meanwhile; if the client goes away, its goals are
    /// dropped, which cancels builds nobody else waits for.
    async fn build_targets(
        &mut self,
        targets: Vec<DerivedPath>,
        mode: ward_proto::worker::types::BuildMode,
    ) -> OpResult<Vec<KeyedBuildResult>> {
        use ward_proto::worker::types::BuildMode;
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let ctx = self.build_ctx(tx);
        enum Pending {
            Done(BuildResult),
            Goal(Arc<crate::build::goal::GoalHandle>, BTreeSet<String>),
        }
        let mut pending = Vec::new();
        for target in &targets {
            let entry = match target {
                DerivedPath::Opaque(path) => {
                    if mode == BuildMode::Repair {
                        self.writer().await?.add_temp_root(path.clone()).await?;
                        let handle = crate::build::repair_for(&self.shared, path, &ctx);
                        Pending::Goal(handle, BTreeSet::new())
                    } else if self.is_valid(path)? {
                        Pending::Done(BuildResult::new(BuildStatus::AlreadyValid, ""))
                    } else {
                        // Rooted before it exists, so a collection cannot take it between
                        // its substitution and the end of this op.
                        self.writer().await?.add_temp_root(path.clone()).await?;
                        let handle = crate::build::substitution_for(&self.shared, path, &ctx);
                        Pending::Goal(handle, BTreeSet::new())
                    }
                }
                DerivedPath::Built { drv_path, outputs } => {
                    if !self.is_valid(drv_path)? {
                        Pending::Done(BuildResult::new(
                            BuildStatus::MiscFailure,
                            format!(
                                "path '{}' is required, but there is no substituter that can build it",
                                self.print(drv_path)
                            ),
                        ))
                    } else {
                        let known = crate::build::goal::output_map(&self.shared, drv_path)
                            .map_err(OpError::Client)?;
                        let wanted: BTreeSet<String> = match outputs {
                            OutputsSpec::All => known.keys().cloned().collect(),
                            OutputsSpec::Names(names) => names.iter().cloned().collect(),
                        };
                        for name in &wanted {
                            if !known.contains_key(name) {
                                return Err(OpError::Client(format!(
                                    "derivation '{}' does not have wanted outputs '{name}'",
                                    self.print(drv_path)
                                )));
                            }
                        }
                        let mut all_valid = mode == BuildMode::Normal;
                        for name in &wanted {
                            match known.get(name) {
                                Some(Some(p)) if self.is_valid(p)? => {}
                                _ => all_valid = false,
                            }
                        }
                        if all_valid {
                            let mut result = BuildResult::new(BuildStatus::AlreadyValid, "");
                            result.built_outputs = realisations(&known, &wanted);
                            Pending::Done(result)
                        } else {
                            let handle = crate::build::goal_for(&self.shared, drv_path, mode, &ctx);
                            Pending::Goal(handle, wanted)
                        }
                    }
                }
            };
            pending.push(entry);
        }
        drop(ctx);
        let mut results = Vec::with_capacity(targets.len());
        let waited = async {
            let mut out = Vec::new();
            for p in &pending {
                out.push(match p {
                    Pending::Done(r) => r.clone(),
                    Pending::Goal(handle, wanted) => {
                        let goal = handle.wait().await;
                        let mut r = BuildResult::new(goal.status, goal.error.clone());
                        r.times_built = goal.times_built;
                        r.start_time = goal.start_time;
                        r.stop_time = goal.stop_time;
                        r.cpu_user_micros = goal.cpu_user_micros;
                        r.cpu_system_micros = goal.cpu_system_micros;
                        if goal.status != BuildStatus::DependencyFailed || !goal.outputs.is_empty()
                        {
                            let known: BTreeMap<String, Option<StorePath>> = goal
                                .outputs
                                .iter()
                                .map(|(n, p)| (n.clone(), Some(p.clone())))
                                .collect();
                            r.built_outputs = realisations(&known, wanted);
                        }
                        r
                    }
                });
            }
            out
        };
        tokio::pin!(waited);
        // A second handle on the client socket, to notice a client that hangs up mid-build.
        let watcher = {
            use std::os::fd::AsFd;
            self.r
                .get_ref()
                .as_ref()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| {
                    let std = std::os::unix::net::UnixStream::from(fd);
                    std.set_nonblocking(true).ok()?;
                    UnixStream::from_std(std).ok()
                })
        };
        let mut watch_client = watcher.is_some() && self.r.buffered().is_empty();
        let done = loop {
            tokio::select! {
                done = &mut waited => break done,
                Some(event) = rx.recv() => {
                    self.queue_build_event(event);
                    self.flush().await.map_err(OpError::Fatal)?;
                }
                readable = async { watcher.as_ref().expect("watched").readable().await }, if watch_client => {
                    if readable.is_ok() {
                        use std::os::fd::AsFd;
                        match client_closed(watcher.as_ref().expect("watched").as_fd()) {
                            Some(true) => {
                                info!("client went away during a build; cancelling its goals");
                                return Err(OpError::Fatal("client went away during a build".into()));
                            }
                            Some(false) => watch_client = false,
                            None => {}
                        }
                    }
                }
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.queue_build_event(event);
        }
        // As Nix's daemon does for a build it was asked for: the derivation and its outputs
        // are this connection's temporary roots, so a collection cannot take them before the
        // client has made its own root.
        let mut rooted = BTreeSet::new();
        for (target, result) in targets.iter().zip(&done) {
            match target {
                DerivedPath::Built { drv_path, .. } => rooted.insert(drv_path.clone()),
                DerivedPath::Opaque(path) => rooted.insert(path.clone()),
            };
            rooted.extend(result.built_outputs.values().map(|r| r.out_path.clone()));
        }
        for path in rooted {
            if self.is_valid(&path)? {
                self.writer().await?.add_temp_root(path).await?;
            }
        }
        for (target, result) in targets.into_iter().zip(done) {
            results.push(KeyedBuildResult {
                path: target,
                result,
            });
        }
        Ok(results)
    }

    /// BuildDerivation: builds the derivation the client sent, whose inputs are all sources.
    async fn build_derivation(
        &mut self,
        drv_path: StorePath,
        basic: ward_proto::worker::types::BasicDerivation,
        mode: ward_proto::worker::types::BuildMode,
    ) -> OpResult<BuildResult> {
        let store_dir = self.ctx.store_dir.clone();
        let name =
            ward_proto::worker::types::BasicDerivation::name_from_drv_path(&drv_path).to_owned();
        let mut outputs = BTreeMap::new();
        for (out_name, o) in &basic.outputs {
            let output = ward_proto::derivation::DerivationOutput::from_triple(
                &o.path,
                &o.hash_algo,
                &o.hash,
                &store_dir,
                &name,
                out_name,
            )
            .map_err(|e| OpError::Client(format!("derivation '{}': {e}", self.print(&drv_path))))?;
            outputs.insert(out_name.clone(), output);
        }
        let drv = ward_proto::derivation::Derivation {
            name,
            outputs,
            input_drvs: BTreeMap::new(),
            input_srcs: basic.input_srcs.clone(),
            platform: basic.platform.clone(),
            builder: basic.builder.clone().into_bytes(),
            args: basic.args.iter().map(|a| a.clone().into_bytes()).collect(),
            env: basic
                .env
                .iter()
                .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
                .collect(),
        };
        // The derivation path the client named counts for nothing: the derivation it sent is
        // written to the store and built, and registered as the outputs' deriver, under its
        // own path (Nix does this for untrusted clients, which get only fixed-output ones this
        // far). For trusted clients too, since the store-writer registers outputs only of a
        // valid derivation that declares them; see ARCHITECTURE.md, "Builds".
        let text = drv
            .to_aterm(&store_dir)
            .map_err(|e| OpError::Client(format!("derivation '{}': {e}", self.print(&drv_path))))?;
        let written = self
            .writer()
            .await?
            .add_content(
                format!("{}.drv", drv.name),
                ContentAddressMethod::Text,
                HashAlgo::Sha256,
                drv.references(),
                false,
                &text[..],
            )
            .await?
            .path;
        if written != drv_path {
            tracing::info!(
                named = %self.print(&drv_path),
                built = %self.print(&written),
                "BuildDerivation: building the derivation sent under its own path"
            );
        }
        let drv_path = written;
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let ctx = self.build_ctx(tx);
        let shared = Arc::clone(&self.shared);
        let work = crate::build::goal::realise_basic(shared, drv_path, drv, mode, ctx);
        tokio::pin!(work);
        let goal = loop {
            tokio::select! {
                done = &mut work => break done,
                Some(event) = rx.recv() => {
                    self.queue_build_event(event);
                    self.flush().await.map_err(OpError::Fatal)?;
                }
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.queue_build_event(event);
        }
        let mut r = BuildResult::new(goal.status, goal.error.clone());
        r.times_built = goal.times_built;
        r.start_time = goal.start_time;
        r.stop_time = goal.stop_time;
        r.cpu_user_micros = goal.cpu_user_micros;
        r.cpu_system_micros = goal.cpu_system_micros;
        let known: BTreeMap<String, Option<StorePath>> = goal
            .outputs
            .iter()
            .map(|(n, p)| (n.clone(), Some(p.clone())))
            .collect();
        let wanted: BTreeSet<String> = known.keys().cloned().collect();
        r.built_outputs = realisations(&known, &wanted);
        Ok(r)
    }

    /// Queues one build event for the client, as its protocol version shows them.
    fn queue_build_event(&mut self, event: crate::build::LogEvent) {
        use crate::build::LogEvent as E;
        use ward_proto::worker::{
            ActivityResult, ActivityType, LogField, ResultType, StartActivity,
        };
        let activities = self.ctx.at_least(20);
        let message = match event {
            E::Start { activity, drv } => StderrMessage::StartActivity(StartActivity {
                id: activity,
                level: Verbosity::Info,
                activity_type: ActivityType::Build,
                text: format!("building '{drv}'"),
                fields: vec![
                    LogField::from(drv.as_str()),
                    LogField::from(""),
                    LogField::Int(1),
                    LogField::Int(1),
                ],
                parent: 0,
            }),
            E::Line { activity, line } => {
                if activities {
                    StderrMessage::Result(ActivityResult {
                        id: activity,
                        result_type: ResultType::BuildLogLine,
                        fields: vec![LogField::String(line)],
                    })
                } else {
                    let mut bytes = line;
                    bytes.push(b'\n');
                    StderrMessage::Next(bytes)
                }
            }
            E::Copy {
                activity,
                path,
                from,
            } => StderrMessage::StartActivity(StartActivity {
                id: activity,
                level: Verbosity::Info,
                activity_type: ActivityType::CopyPath,
                text: format!("copying path '{path}' from '{from}'"),
                fields: vec![
                    LogField::from(path.as_str()),
                    LogField::from(from.as_str()),
                    LogField::from("local"),
                ],
                parent: 0,
            }),
            E::HookStart {
                activity,
                hook,
                drv,
            } => StderrMessage::StartActivity(StartActivity {
                id: activity,
                level: Verbosity::Info,
                activity_type: ActivityType::PostBuildHook,
                text: format!("running post-build-hook '{hook}'"),
                fields: vec![LogField::from(drv.as_str())],
                parent: 0,
            }),
            E::HookLine { activity, line } => {
                if activities {
                    StderrMessage::Result(ActivityResult {
                        id: activity,
                        result_type: ResultType::PostBuildLogLine,
                        fields: vec![LogField::String(line)],
                    })
                } else {
                    let mut bytes = b"post-build-hook: ".to_vec();
                    bytes.extend_from_slice(&line);
                    bytes.push(b'\n');
                    StderrMessage::Next(bytes)
                }
            }
            E::Stop { activity } => StderrMessage::StopActivity(activity),
            E::Message(text) => StderrMessage::log_line(&text),
        };
        message.write(&mut self.out, self.ctx.version);
    }

    fn check_build_mode(&self, mode: ward_proto::worker::types::BuildMode) -> OpResult {
        // As Nix: only repairing is for trusted users (it is not atomic); `--check` builds
        // into the sandbox and registers nothing new, so anyone may ask for it.
        if mode == ward_proto::worker::types::BuildMode::Repair && !self.trusted() {
            self.audit_refusal("repair", "trusted-users");
            return Err(OpError::Client(
                "repairing is not allowed because you are not in 'trusted-users'".into(),
            ));
        }
        Ok(())
    }

    /// Output name → path for a derivation: the DB's rows, plus outputs whose path is not known
    /// yet (floating content-addressed), read from the `.drv` file.
    fn derivation_outputs(&self, drv: &StorePath) -> OpResult<BTreeMap<String, Option<StorePath>>> {
        let known = self
            .shared
            .store
            .with_db(|db| db.query_derivation_outputs(drv))?;
        let mut outputs: BTreeMap<String, Option<StorePath>> = known
            .into_iter()
            .map(|(name, path)| (name, Some(path)))
            .collect();
        if self.is_valid(drv)? {
            if let Ok(parsed) = self.read_derivation(drv) {
                for name in parsed.outputs.keys() {
                    outputs.entry(name.clone()).or_insert(None);
                }
            }
        }
        Ok(outputs)
    }

    fn read_derivation(&self, drv: &StorePath) -> OpResult<ward_proto::derivation::Derivation> {
        let file = self.shared.store.real_path(drv);
        let bytes = std::fs::read(&file).map_err(|e| {
            OpError::Client(format!("reading derivation '{}': {e}", self.print(drv)))
        })?;
        let name = ward_proto::derivation::name_from_drv_path(drv).map_err(|e| {
            OpError::Client(format!("'{}' is not a derivation: {e}", self.print(drv)))
        })?;
        ward_proto::derivation::Derivation::parse(&bytes, &self.ctx.store_dir, name)
            .map_err(|e| OpError::Client(format!("parsing derivation '{}': {e}", self.print(drv))))
    }

    /// Runs `query` against this connection's substituters on the blocking pool (it reads
    /// files and the network); what the caches said wrong is shown to the client as warnings.
    async fn ask_substituters<T: Send + 'static>(
        &mut self,
        query: impl FnOnce(&crate::substitute::Substituters, &mut Vec<String>) -> T + Send + 'static,
    ) -> T {
        let shared = Arc::clone(&self.shared);
        let settings = Arc::clone(&self.settings);
        let (value, messages) = tokio::task::spawn_blocking(move || {
            let mut messages = Vec::new();
            let subs = shared.substituters.select(&settings, &mut messages);
            let value = query(&subs, &mut messages);
            (value, messages)
        })
        .await
        .expect("substituter queries do not panic");
        for m in messages {
            self.log(Verbosity::Error, &format!("warning: {m}"));
        }
        value
    }

    fn set_options(&mut self, r: ward_proto::worker::types::SetOptions) {
        let options = ClientOptions {
            keep_failed: r.keep_failed,
            keep_going: r.keep_going,
            try_fallback: r.try_fallback,
            verbosity: config_verbosity(r.verbosity),
            max_build_jobs: r.max_build_jobs,
            max_silent_time: r.max_silent_time,
            verbose_build: u64::from(r.verbose_build),
            build_cores: r.build_cores,
            use_substitutes: r.use_substitutes,
            overrides: r.overrides.into_iter().collect(),
        };
        debug!(overrides = ?options.overrides, "client settings");
        let outcome = ward_config::apply_client_options(self.trusted(), &options, &self.settings);
        self.verbosity = r.verbosity;
        for message in outcome.messages {
            match message.level {
                MessageLevel::Warning => {
                    let text = format!("warning: {}", message.text);
                    self.log(Verbosity::Warn, &text);
                }
                MessageLevel::Debug => debug!("{}", message.text),
            }
        }
        for rejected in &r.rejected_overrides {
            let text = format!("warning: ignoring client setting: {rejected:?}");
            self.log(Verbosity::Warn, &text);
        }
        self.settings = Arc::new(outcome.settings);
    }

    /// Whether signatures must be checked for data this client uploads.
    fn check_sigs(&self, dont_check_sigs: bool) -> bool {
        self.settings.require_sigs && !(self.trusted() && dont_check_sigs)
    }

    async fn add_to_store(&mut self, r: AddToStore) -> OpResult {
        match r {
            AddToStore::Current {
                name,
                method,
                references,
                repair,
            } => {
                let (method, algo) = (method.method, method.algo);
                let mut framed = FramedReader::new(&mut self.r);
                let writer =
                    match connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid)).await
                    {
                        Ok(w) => w,
                        Err(e) => {
                            framed.drain().await.map_err(wire_fatal)?;
                            return Err(e);
                        }
                    };
                let result = writer
                    .add_content(name, method, algo, references, repair, &mut framed)
                    .await;
                framed.drain().await.map_err(wire_fatal)?;
                let info = result?;
                self.reply(Reply::AddToStore(AddToStoreReply::PathInfo(Box::new(info))))
                    .await
            }
            AddToStore::Legacy {
                base_name,
                fixed,
                recursive,
                hash_algo,
            } => {
                let (method, algo) = if !fixed {
                    (FileIngestionMethod::Recursive, HashAlgo::Sha256)
                } else {
                    let algo = HashAlgo::from_name(&hash_algo)
                        .map_err(|e| OpError::Fatal(e.to_string()))?;
                    let m = if recursive {
                        FileIngestionMethod::Recursive
                    } else {
                        FileIngestionMethod::Flat
                    };
                    (m, algo)
                };
                let data = self
                    .read_bare_nar(method == FileIngestionMethod::Flat)
                    .await?;
                let data: &[u8] = &data;
                let info = self
                    .writer()
                    .await?
                    .add_content(
                        base_name,
                        ContentAddressMethod::Fixed(method),
                        algo,
                        BTreeSet::new(),
                        false,
                        data,
                    )
                    .await?;
                self.reply(Reply::AddToStore(AddToStoreReply::Path(info.path)))
                    .await
            }
        }
    }

    /// Old protocols send a NAR with no framing: parse it to find its end. With `flat`, only
    /// the single regular file's contents are kept. Held in memory: only pre-2.4 clients use it.
    async fn read_bare_nar(&mut self, flat: bool) -> OpResult<Vec<u8>> {
        read_with_blocking(&mut self.r, move |reader| {
            let mut nar_bytes = Vec::new();
            let mut capped = std::io::Read::take(reader, MAX_IMPORT_NAR);
            nar::copy_nar(&mut capped, &mut nar_bytes)
                .map_err(|e| OpError::Fatal(format!("reading the uploaded NAR: {e}")))?;
            if !flat {
                return Ok(nar_bytes);
            }
            let mut parser = nar::NarReader::new(&nar_bytes[..]);
            match parser.next() {
                Ok(Some(nar::Event::File { mut contents, .. })) => {
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut contents, &mut data)
                        .map_err(|e| OpError::Client(format!("reading the uploaded file: {e}")))?;
                    Ok(data)
                }
                Ok(_) => Err(OpError::Client(
                    "regular file expected for flat (non-recursive) hashing".into(),
                )),
                Err(e) => Err(OpError::Client(e.to_string())),
            }
        })
        .await
        .map_err(OpError::Fatal)?
    }

    async fn add_to_store_nar(&mut self, r: ward_proto::worker::AddToStoreNar) -> OpResult {
        let check_sigs = self.check_sigs(r.dont_check_sigs);
        let mut info = r.info;
        if !self.trusted() {
            info.ultimate = false;
        }
        let ipc_info = info.clone();
        match Op::AddToStoreNar.upload(self.ctx.version) {
            Upload::Framed => {
                let mut framed = FramedReader::new(&mut self.r);
                let writer =
                    match connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid)).await
                    {
                        Ok(w) => w,
                        Err(e) => {
                            framed.drain().await.map_err(wire_fatal)?;
                            return Err(e);
                        }
                    };
                let result = writer
                    .add_path_from_nar(ipc_info, r.repair, check_sigs, &mut framed)
                    .await;
                framed.drain().await.map_err(wire_fatal)?;
                result?;
            }
            Upload::Tunnel => {
                self.flush().await.map_err(OpError::Fatal)?;
                let writer =
                    connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid)).await?;
                let mut tunnel = ward_proto::wire::TunnelReader::new(&mut self.r, &mut self.w);
                let result = writer
                    .add_path_from_nar(ipc_info, r.repair, check_sigs, &mut tunnel)
                    .await;
                result?;
            }
            Upload::BareNar | Upload::None => {
                let data = self.read_bare_nar(false).await?;
                let data: &[u8] = &data;
                self.writer()
                    .await?
                    .add_path_from_nar(ipc_info, r.repair, check_sigs, data)
                    .await?;
            }
        }
        self.reply(Reply::AddToStoreNar).await
    }

    /// AddMultipleToStore: a framed stream of `count`, then per path its info (1.16 layout)
    /// and exactly `narSize` NAR bytes. Every entry is consumed in full even when it fails or
    /// is already valid, so the stream stays in sync; the first error is reported at the end.
    async fn add_multiple(&mut self, repair: bool, dont_check_sigs: bool) -> OpResult {
        let check_sigs = self.check_sigs(dont_check_sigs);
        let store_dir = self.ctx.store_dir.clone();
        let mut framed = FramedReader::new(&mut self.r);
        let mut first_error: Option<OpError> = None;
        let mut batch_open = false;
        let outcome: Result<(), OpError> = async {
            let mut entries = WireReader::new(&mut framed);
            let count = ward_proto::worker::read_multiple_count(&mut entries)
                .await
                .map_err(wire_fatal)?;
            for _ in 0..count {
                let mut info = ValidPathInfo::wire_read_at(
                    &mut entries,
                    &store_dir,
                    ward_proto::worker::types::FULL_PATH_INFO_VERSION,
                )
                .await
                .map_err(wire_fatal)?;
                info.ultimate = false;
                let mut nar_data = (&mut entries).take(info.nar_size);
                if first_error.is_none() && batch_open && writer_lost(&self.writer) {
                    first_error = Some(batch_lost());
                }
                if first_error.is_none() {
                    let result =
                        match connect_writer(&mut self.writer, &self.shared, Some(self.peer_uid))
                            .await
                        {
                            Ok(writer) => {
                                // Batched unless repairing: one sync and one transaction per
                                // batch, committed below (the store-writer also commits a
                                // full batch by itself).
                                let defer = !repair;
                                batch_open |= defer;
                                writer
                                    .add_path_from_nar_in(
                                        info.clone(),
                                        repair,
                                        check_sigs,
                                        defer,
                                        &mut nar_data,
                                    )
                                    .await
                                    .map(drop)
                                    .map_err(OpError::from)
                            }
                            Err(e) => Err(e),
                        };
                    if let Err(e) = result {
                        first_error = Some(e);
                    }
                }
                // Whatever the store-writer did not read still belongs to this entry.
                tokio::io::copy(&mut nar_data, &mut tokio::io::sink())
                    .await
                    .map_err(|e| OpError::Fatal(format!("reading the upload: {e}")))?;
            }
            Ok(())
        }
        .await;
        framed.drain().await.map_err(wire_fatal)?;
        // The paths accepted before any failure are registered, as Nix registers them.
        // The batch lives on the store-writer channel it was sent on: a new channel (the
        // store-writer restarted) does not have it, so committing there would report paths
        // as added that never were.
        if batch_open {
            let committed = match self.writer.as_mut() {
                Some(writer) if !writer.is_closed() => {
                    writer.commit_additions().await.map_err(OpError::from)
                }
                _ => Err(batch_lost()),
            };
            if let Err(e) = committed {
                first_error.get_or_insert(e);
            }
        }
        outcome?;
        if let Some(e) = first_error {
            return Err(e);
        }
        self.reply(Reply::AddMultipleToStore).await
    }

    /// ImportPaths (protocol < 1.18 only): export-format entries through STDERR_READ.
    async fn import_paths(&mut self) -> OpResult {
        self.flush().await.map_err(OpError::Fatal)?;
        let ctx = self.ctx.clone();
        let mut entries = Vec::new();
        {
            let mut tunnel = ward_proto::wire::TunnelReader::new(&mut self.r, &mut self.w);
            let mut input = WireReader::new(&mut tunnel);
            loop {
                let more = input.read_u64("import marker").await.map_err(wire_fatal)?;
                match more {
                    0 => break,
                    1 => {}
                    n => return Err(OpError::Fatal(format!("bad import marker {n}"))),
                }
                let nar_bytes = read_with_blocking(&mut input, |reader| {
                    let mut capped = std::io::Read::take(reader, MAX_IMPORT_NAR);
                    let mut nar_bytes = Vec::new();
                    nar::copy_nar(&mut capped, &mut nar_bytes)
                        .map(|_| nar_bytes)
                        .map_err(|e| e.to_string())
                })
                .await
                .and_then(|read| read)
                .map_err(|e| OpError::Fatal(format!("reading an imported NAR: {e}")))?;
                let entry = ward_proto::worker::types::ExportTrailer::read(&mut input, &ctx)
                    .await
                    .map_err(wire_fatal)?;
                entries.push((entry, nar_bytes));
            }
        }
        let check_sigs = self.check_sigs(false);
        let mut imported = Vec::new();
        for (entry, nar_bytes) in entries {
            let (hash, size) = nar::hash_and_size(&nar_bytes[..])
                .map_err(|e| OpError::Client(format!("imported NAR: {e}")))?;
            let mut info =
                ValidPathInfo::new(entry.path.clone(), ward_proto::hash::Hash::sha256(hash));
            info.nar_size = size;
            info.references = entry.references;
            info.deriver = entry.deriver;
            let data: &[u8] = &nar_bytes;
            self.writer()
                .await?
                .add_path_from_nar(info.clone(), false, check_sigs, data)
                .await?;
            imported.push(entry.path);
        }
        self.reply(Reply::ImportPaths(imported)).await
    }

    /// NarFromPath: validity is checked before `STDERR_LAST`, since no error can follow it;
    /// then the NAR is written raw.
    async fn nar_from_path(&mut self, path: &StorePath) -> OpResult {
        self.valid_info(path)?;
        StderrMessage::Last.write(&mut self.out, self.ctx.version);
        self.flush().await.map_err(OpError::Fatal)?;
        let file = self.shared.store.real_path(path);
        let source = file.clone();
        write_socket_from_blocking(&self.w, NAR_SEND_STALL_LIMIT, move |out| {
            nar::dump_path_to_fd(&source, out)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| OpError::Fatal(format!("sending '{}': {e}", file.display())))
    }

    /// ExportPath (protocol < 1.18 clients): the export format through STDERR_WRITE chunks.
    async fn export_path(&mut self, path: &StorePath) -> OpResult {
        let info = self.valid_info(path)?;
        let file = self.shared.store.real_path(path);
        let mut nar_bytes = Vec::new();
        nar::dump_path(&file, &mut nar_bytes)
            .map_err(|e| OpError::Client(format!("dumping '{}': {e}", file.display())))?;
        let mut trailer = WireWriter::new();
        ward_proto::worker::types::ExportTrailer {
            path: path.clone(),
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            legacy_signature: None,
        }
        .write(&mut trailer, &self.ctx);
        nar_bytes.extend_from_slice(trailer.as_bytes());
        for chunk in nar_bytes.chunks(64 * 1024) {
            StderrMessage::Write(chunk.to_vec()).write(&mut self.out, self.ctx.version);
            self.flush().await.map_err(OpError::Fatal)?;
        }
        self.reply(Reply::ExportPath).await
    }
}

async fn connect_writer<'a>(
    slot: &'a mut Option<WriterClient>,
    shared: &Shared,
    uid: Option<u32>,
) -> OpResult<&'a mut WriterClient> {
    let mut replay = BTreeSet::new();
    if slot.as_ref().is_some_and(WriterClient::is_closed) {
        if let Some(mut old) = slot.take() {
            replay = old.take_temp_roots();
        }
    }
    if slot.is_none() {
        let mut client = WriterClient::connect_for(&shared.ipc_dir, WRITER_CONNECT_TIMEOUT, uid)
            .await?
            .with_path_info_cache(Arc::clone(shared.store.path_info_cache()));
        // The old channel's temporary roots died with it (the store-writer restarted): this
        // connection's paths are kept alive again before anything else happens on it. Should
        // that fail, the new channel still owes them, and the next one replays them.
        let mut replayed = Ok(());
        for root in &replay {
            replayed = client.add_temp_root(root.clone()).await;
            if replayed.is_err() {
                break;
            }
        }
        client.keep_temp_roots(replay);
        *slot = Some(client);
        replayed?;
    }
    Ok(slot.as_mut().expect("set above"))
}

/// Whether the store-writer channel is gone (or was never opened).
fn writer_lost(writer: &Option<WriterClient>) -> bool {
    writer.as_ref().is_none_or(WriterClient::is_closed)
}

/// The error of an AddMultipleToStore whose batch died with its store-writer channel.
fn batch_lost() -> OpError {
    OpError::Client(
        "the store-writer restarted during AddMultipleToStore; the paths of its unfinished \
         batch were not registered, run the copy again"
            .to_owned(),
    )
}

/// Whether the client closed its end: `Some(true)` at end of file, `Some(false)` when it sent
/// something (it should not, during a build), `None` when nothing is there yet.
fn client_closed(fd: std::os::fd::BorrowedFd<'_>) -> Option<bool> {
    let mut byte = [0u8; 1];
    match rustix::net::recv(
        fd,
        &mut byte,
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => Some(true),
        Ok(_) => Some(false),
        Err(rustix::io::Errno::AGAIN) => None,
        Err(_) => Some(true),
    }
}

/// The realisations of the `wanted` outputs that have a path.
fn realisations(
    known: &BTreeMap<String, Option<StorePath>>,
    wanted: &BTreeSet<String>,
) -> BTreeMap<String, ward_proto::path_info::Realisation> {
    wanted
        .iter()
        .filter_map(|name| {
            let path = known.get(name)?.clone()?;
            Some((
                name.clone(),
                ward_proto::path_info::Realisation {
                    id: placeholder_drv_output(name.clone()),
                    out_path: path,
                    signatures: BTreeSet::new(),
                    dependent_realisations: BTreeMap::new(),
                },
            ))
        })
        .collect()
}

fn build_succeeded(result: &BuildResult) -> bool {
    matches!(
        result.status,
        BuildStatus::Built
            | BuildStatus::Substituted
            | BuildStatus::AlreadyValid
            | BuildStatus::ResolvesToAlreadyValid
    )
}

fn config_verbosity(v: Verbosity) -> ward_config::Verbosity {
    ward_config::Verbosity::from_wire(v as u64)
}

#[cfg(test)]
mod tests {
    use super::is_hang_up;

    #[test]
    fn hang_ups_are_told_from_failures() {
        for gone in [
            "handshake: unexpected end of input while reading client magic",
            "client went away during AddToStoreNar",
            "writing to the client: Broken pipe (os error 32)",
            "writing to the client: Connection reset by peer (os error 104)",
        ] {
            assert!(is_hang_up(gone), "{gone}");
        }
        for failure in [
            "invalid arguments for operation AddToStore: string of 9999999 bytes is too long",
            "reading the next operation: unknown operation 4242",
        ] {
            assert!(!is_hang_up(failure), "{failure}");
        }
    }
}
