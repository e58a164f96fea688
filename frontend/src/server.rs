//! Accepting clients: peer credentials, the trust decision, one task per connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, info_span, warn, Instrument};

use ward_config::cli::TrustOverride;
use ward_config::Settings;
use ward_proto::wire::WireReader;
use ward_proto::worker::{ClientHandshakeInfo, DaemonError, ServerHandshake, StderrMessage};

use crate::auth::{self, AccessPolicy, PeerInfo, SystemGroups, Trust};
use crate::connection::{self, REPORTED_VERSION};
use crate::store::StoreView;
use crate::workers::Workers;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The daemon's settings (each connection starts from a copy) and the access policy
    /// drawn from them; replaced when nix.conf is re-read (SIGHUP), which open connections
    /// do not notice.
    config: std::sync::RwLock<LiveConfig>,
    /// Read-only view of the store.
    pub store: StoreView,
    /// Where the store-writer's socket is.
    pub ipc_dir: PathBuf,
    /// `--force-trusted` / `--force-untrusted`: replaces the credential check entirely.
    pub trust_override: Option<TrustOverride>,
    /// The channel to the broker (absent when the frontend runs without one, e.g. in tests).
    pub broker: Option<Arc<crate::broker_client::BrokerClient>>,
    /// Running goals and build slots, shared by all connections.
    pub builds: crate::build::Builds,
    /// Bumped when the store-writer was restarted (`writer_watch.rs`); absent in tests that
    /// run without one.
    pub writer_restarts: Option<tokio::sync::watch::Receiver<u64>>,
    /// The binary caches, opened on first use.
    pub substituters: crate::substitute::CachePool,
    /// Becomes true at SIGTERM: no more accepting, idle connections close, busy ones finish
    /// their operation.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Open connections, by user, against their limits.
    pub connections: Arc<crate::limits::ConnectionCounts>,
}

/// The configuration new connections start from.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The daemon's settings.
    pub settings: Arc<Settings>,
    /// `trusted-users`, `allowed-users`, `build-users-group`.
    pub policy: Arc<AccessPolicy>,
}

impl LiveConfig {
    /// The configuration `settings` give.
    pub fn new(settings: Settings) -> LiveConfig {
        LiveConfig {
            policy: Arc::new(Shared::policy_from(&settings)),
            settings: Arc::new(settings),
        }
    }
}

/// What a [`Shared`] is made of (its configuration is kept behind a lock).
#[derive(Debug)]
pub struct SharedParts {
    pub settings: Settings,
    pub store: StoreView,
    pub ipc_dir: PathBuf,
    pub trust_override: Option<TrustOverride>,
    pub broker: Option<Arc<crate::broker_client::BrokerClient>>,
    pub builds: crate::build::Builds,
    pub writer_restarts: Option<tokio::sync::watch::Receiver<u64>>,
    pub substituters: crate::substitute::CachePool,
}

impl Shared {
    /// Puts the parts together.
    pub fn new(parts: SharedParts) -> Shared {
        Shared {
            config: std::sync::RwLock::new(LiveConfig::new(parts.settings)),
            store: parts.store,
            ipc_dir: parts.ipc_dir,
            trust_override: parts.trust_override,
            broker: parts.broker,
            builds: parts.builds,
            writer_restarts: parts.writer_restarts,
            substituters: parts.substituters,
            draining: tokio::sync::watch::channel(false).0,
            connections: Arc::new(crate::limits::ConnectionCounts::default()),
        }
    }

    /// The settings a new connection starts from.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.config().settings)
    }

    /// The access policy new connections are checked against.
    pub fn policy(&self) -> Arc<AccessPolicy> {
        Arc::clone(&self.config().policy)
    }

    fn config(&self) -> std::sync::RwLockReadGuard<'_, LiveConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn replace_config(&self, settings: Settings) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = LiveConfig::new(settings);
    }

    /// Whether the daemon is draining (SIGTERM).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Collects the access policy from the settings.
    pub fn policy_from(settings: &Settings) -> AccessPolicy {
        AccessPolicy {
            trusted_users: settings.trusted_users.clone(),
            allowed_users: settings.allowed_users.clone(),
            build_users_group: settings.build_users_group.clone(),
        }
    }
}

/// Accepts clients forever; each gets its own task on the least busy worker thread.
/// Returns once the daemon drains (SIGTERM): connections that arrive from then on wait in the
/// socket's backlog for the next daemon (socket activation) or are refused when it exits.
pub async fn serve_listener(listener: UnixListener, shared: Arc<Shared>, workers: &Workers) {
    let mut draining = shared.draining.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = draining.wait_for(|d| *d) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(e) => {
                        warn!("taking over an accepted connection: {e}");
                        continue;
                    }
                };
                let shared = Arc::clone(&shared);
                workers.serve(stream, move |stream| accept_one(stream, shared));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves the single connection of `--stdio`: trusted unless `--force-untrusted`, since
/// whoever can write to the pipe already chose to (e.g. an SSH forced command).
pub async fn serve_stdio(stream: UnixStream, shared: Arc<Shared>) {
    let trust = match shared.trust_override {
        Some(TrustOverride::Untrusted) => Trust::Untrusted,
        _ => Trust::Trusted,
    };
    let peer = peer_of(&stream).await;
    let span = connection_span(&peer, trust);
    serve_guarded(stream, shared, peer, trust, span).await;
}

async fn peer_of(stream: &UnixStream) -> PeerInfo {
    let (pid, uid, gid) = match stream.peer_cred() {
        Ok(cred) => (cred.pid(), cred.uid(), Some(cred.gid())),
        // An unknown peer only matches '*' (current Nix's rule).
        Err(_) => (None, u32::MAX, None),
    };
    // Name look-ups may go to NSS (LDAP, ...): keep them off the runtime's threads.
    tokio::task::spawn_blocking(move || PeerInfo::from_credentials(pid, uid, gid))
        .await
        .unwrap_or_else(|_| PeerInfo {
            pid,
            uid,
            gid,
            user_name: uid.to_string(),
            group_name: gid.map(|g| g.to_string()),
            user_known: false,
        })
}

/// Numbers connections in the log (the journal's `WARD_CONNECTION`).
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn connection_span(peer: &PeerInfo, trust: Trust) -> tracing::Span {
    let connection = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    info_span!(
        "connection",
        connection,
        pid = peer.pid.unwrap_or(0),
        uid = peer.uid,
        user = %peer.user_name,
        trusted = trust.is_trusted()
    )
}

async fn accept_one(stream: UnixStream, shared: Arc<Shared>) {
    let peer = peer_of(&stream).await;
    let _slot = match shared.connections.admit(peer.uid) {
        Ok(slot) => slot,
        Err(limit) => {
            refuse_connection(stream, &peer, "connection limit", &limit.to_string()).await;
            return;
        }
    };
    let decision = match shared.trust_override {
        Some(TrustOverride::Trusted) => Ok(Trust::Trusted),
        Some(TrustOverride::Untrusted) => Ok(Trust::Untrusted),
        None => auth::decide(&shared.policy(), &peer, &SystemGroups),
    };
    let trust = match decision {
        Ok(trust) => trust,
        Err(refusal) => {
            refuse_connection(stream, &peer, refusal.setting(), &refusal.to_string()).await;
            return;
        }
    };
    let span = connection_span(&peer, trust);
    if let Some(broker) = &shared.broker {
        if peer.user_known && peer.uid != 0 {
            if let Err(e) = broker
                .ensure_user_dirs(peer.uid)
                .instrument(span.clone())
                .await
            {
                span.in_scope(|| warn!("per-user directories for uid {}: {e}", peer.uid));
            }
        }
    }
    ward_store::audit::record(
        "connection",
        serde_json::json!({
            "uid": peer.uid,
            "pid": peer.pid,
            "user": peer.user_name,
            "trusted": trust.is_trusted(),
        }),
    );
    span.in_scope(|| {
        info!(
            "accepted connection from pid {}, user {}{}",
            peer.pid
                .map_or_else(|| "<unknown>".to_owned(), |p| p.to_string()),
            peer.user_name,
            if trust.is_trusted() { " (trusted)" } else { "" }
        );
    });
    serve_guarded(stream, shared, peer, trust, span).await;
}

/// Serves a connection; a panic outside an operation (which `Connection::run` catches and
/// answers with an error frame itself) ends only this connection and is logged as the bug it
/// is.
async fn serve_guarded(
    stream: UnixStream,
    shared: Arc<Shared>,
    peer: PeerInfo,
    trust: Trust,
    span: tracing::Span,
) {
    let serving =
        CatchPanic::new(connection::serve(stream, shared, peer, trust).instrument(span.clone()));
    if let Err(panic) = serving.await {
        let what = panic_message(&*panic);
        span.in_scope(|| tracing::error!("internal error while serving this connection: {what}"));
    }
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Polls a future, turning a panic inside it into an `Err`.
#[allow(missing_debug_implementations)]
pub struct CatchPanic<F> {
    inner: std::pin::Pin<Box<F>>,
}

impl<F> CatchPanic<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> CatchPanic<F> {
        CatchPanic {
            inner: Box::pin(future),
        }
    }
}

impl<F: std::future::Future> std::future::Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Logs and audits a refused connection, naming the setting behind it, and tells the peer.
async fn refuse_connection(stream: UnixStream, peer: &PeerInfo, setting: &str, reason: &str) {
    warn!(
        pid = peer.pid.unwrap_or(0),
        uid = peer.uid,
        "refusing a connection: {reason}"
    );
    ward_store::audit::record(
        "refused",
        serde_json::json!({
            "uid": peer.uid,
            "pid": peer.pid,
            "user": peer.user_name,
            "action": "connect",
            "setting": setting,
            "reason": reason,
        }),
    );
    refuse(stream, reason).await;
}

/// Tells a refused peer why, then closes. Nix closes silently; ward completes the (bounded)
/// handshake so the client prints which setting refused it, and reads nothing else.
async fn refuse(stream: UnixStream, message: &str) {
    let (read_half, mut write_half) = stream.into_split();
    let mut r = WireReader::new(read_half);
    let info = ClientHandshakeInfo {
        daemon_nix_version: Some(REPORTED_VERSION.to_owned()),
        trust: None,
    };
    let handshake = ServerHandshake::default();
    let negotiated = tokio::time::timeout(
        Duration::from_secs(5),
        handshake.accept(&mut r, &mut write_half, &info),
    )
    .await;
    if let Ok(Ok(negotiated)) = negotiated {
        let mut out = ward_proto::wire::WireWriter::new();
        StderrMessage::Error(DaemonError::new(message)).write(&mut out, negotiated.version);
        let _ = out.flush_to(&mut write_half).await;
    }
    let _ = write_half.shutdown().await;
}
