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
    /// The daemon's settings (each connection starts from a copy).
    pub settings: Settings,
    /// Read-only view of the store.
    pub store: StoreView,
    /// Where the store-writer's socket is.
    pub ipc_dir: PathBuf,
    /// `trusted-users`, `allowed-users`, `build-users-group`.
    pub policy: AccessPolicy,
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
}

impl Shared {
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
pub async fn serve_listener(listener: UnixListener, shared: Arc<Shared>, workers: &Workers) {
    loop {
        match listener.accept().await {
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
    connection::serve(stream, shared, peer, trust)
        .instrument(span)
        .await;
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

fn connection_span(peer: &PeerInfo, trust: Trust) -> tracing::Span {
    info_span!(
        "connection",
        pid = peer.pid.unwrap_or(0),
        uid = peer.uid,
        user = %peer.user_name,
        trusted = trust.is_trusted()
    )
}

async fn accept_one(stream: UnixStream, shared: Arc<Shared>) {
    let peer = peer_of(&stream).await;
    let decision = match shared.trust_override {
        Some(TrustOverride::Trusted) => Ok(Trust::Trusted),
        Some(TrustOverride::Untrusted) => Ok(Trust::Untrusted),
        None => auth::decide(&shared.policy, &peer, &SystemGroups),
    };
    let trust = match decision {
        Ok(trust) => trust,
        Err(refusal) => {
            warn!(
                pid = peer.pid.unwrap_or(0),
                uid = peer.uid,
                "error processing connection: {refusal}"
            );
            refuse(stream, &refusal.to_string()).await;
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
    span.in_scope(|| {
        info!(
            "accepted connection from pid {}, user {}{}",
            peer.pid
                .map_or_else(|| "<unknown>".to_owned(), |p| p.to_string()),
            peer.user_name,
            if trust.is_trusted() { " (trusted)" } else { "" }
        );
    });
    connection::serve(stream, shared, peer, trust)
        .instrument(span)
        .await;
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
