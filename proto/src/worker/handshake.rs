//! The connection handshake (protocol-facts §1.7), both sides.
//!
//! Daemon side, in order:
//!
//! 1. [`ServerHandshake::negotiate`]: read `WORKER_MAGIC_1`, send `WORKER_MAGIC_2` and our
//!    version (flushed before anything else is read: Nix 2.8 clients wait for it), read the
//!    client version, refuse clients below the minimum ([`HandshakeError::ClientTooOld`]: close
//!    the connection without sending anything more), exchange feature lists when the negotiated
//!    version is ≥ 1.38.
//! 2. [`ServerHandshake::finish`]: read the obsolete CPU-affinity (≥ 1.14) and reserveSpace
//!    (≥ 1.11) fields, then send [`ClientHandshakeInfo`] (version string ≥ 1.33, trust flag
//!    ≥ 1.35 — never to a 1.34 client).
//! 3. The caller then starts the logger's work phase: queued stderr messages, then
//!    `STDERR_LAST` (or `STDERR_ERROR`).
//!
//! [`ServerHandshake::accept`] does steps 1 and 2. The client side
//! ([`client_negotiate`], [`client_finish`]) mirrors them for tests and test clients.

use std::collections::BTreeSet;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use super::types::TrustFlag;
use super::version::{
    FeatureSet, ProtocolVersion, DAEMON_FEATURES, MIN_CLIENT_VERSION, MIN_DAEMON_VERSION,
    PROTOCOL_VERSION, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
use crate::wire::{WireError, WireReader, WireWriter};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Reading failed or the peer sent something malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Sending failed.
    #[error("i/o error while sending the handshake: {0}")]
    Send(#[source] io::Error),
    /// The first number was not the expected magic.
    #[error("protocol mismatch: expected magic {expected:#x}, got {got:#x}")]
    BadMagic {
        /// The magic required.
        expected: u64,
        /// The value received.
        got: u64,
    },
    /// The client speaks a version older than we accept. The daemon closes the connection
    /// without sending an error, as the reference does.
    #[error("the nix client version {client} is too old (the oldest accepted is {minimum})")]
    ClientTooOld {
        /// The client's version.
        client: ProtocolVersion,
        /// Our minimum.
        minimum: ProtocolVersion,
    },
    /// (Client side) the daemon's major version differs from ours.
    #[error("nix daemon protocol version {daemon} is not supported (major version differs)")]
    UnsupportedDaemonMajor {
        /// The daemon's version.
        daemon: ProtocolVersion,
    },
    /// (Client side) the daemon is older than 1.10.
    #[error("the nix daemon version {daemon} is too old")]
    DaemonTooOld {
        /// The daemon's version.
        daemon: ProtocolVersion,
    },
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// min(client version, daemon version).
    pub version: ProtocolVersion,
    /// Features both sides announced (empty below 1.38).
    pub features: FeatureSet,
    /// The version the peer announced (client version on the daemon side, daemon version on
    /// the client side).
    pub peer_version: ProtocolVersion,
}

/// Sent by the daemon after the negotiation: its Nix version (≥ 1.33) and whether it trusts the
/// client (≥ 1.35).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHandshakeInfo {
    /// The daemon's Nix version string, e.g. `"2.8.0"`. Required when writing at ≥ 1.33.
    pub daemon_nix_version: Option<String>,
    /// The trust flag (`None` = unknown). Only sent at ≥ 1.35.
    pub trust: Option<TrustFlag>,
}

impl ClientHandshakeInfo {
    /// Encodes the fields the negotiated `version` carries.
    pub fn write(&self, w: &mut WireWriter, version: ProtocolVersion) -> Result<(), WireError> {
        if version.at_least(33) {
            let Some(nix_version) = &self.daemon_nix_version else {
                return Err(WireError::Unrepresentable {
                    what: "handshake info",
                    version: version.to_string(),
                    reason: "a daemon version string is required from 1.33 on",
                });
            };
            w.put_str(nix_version);
        }
        if version.at_least(35) {
            TrustFlag::write_opt(self.trust, w);
        }
        Ok(())
    }

    /// Decodes the fields the negotiated `version` carries.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let mut info = ClientHandshakeInfo::default();
        if version.at_least(33) {
            info.daemon_nix_version = Some(r.read_string("daemon nix version").await?);
        }
        if version.at_least(35) {
            info.trust = TrustFlag::read_opt(r).await?;
        }
        Ok(info)
    }
}

/// The obsolete fields a client sends after the negotiation. They are read and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientObsoleteFields {
    /// The CPU-affinity value, if the client sent a non-zero flag (≥ 1.14).
    pub cpu_affinity: Option<u64>,
    /// The reserveSpace flag (≥ 1.11).
    pub reserve_space: bool,
}

/// Daemon-side handshake settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHandshake {
    /// The version we announce (default [`PROTOCOL_VERSION`]).
    pub version: ProtocolVersion,
    /// The oldest client version we accept (default [`MIN_CLIENT_VERSION`]).
    pub min_client_version: ProtocolVersion,
    /// The features we announce (default [`DAEMON_FEATURES`]).
    pub features: FeatureSet,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        ServerHandshake {
            version: PROTOCOL_VERSION,
            min_client_version: MIN_CLIENT_VERSION,
            features: DAEMON_FEATURES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut WireWriter,
    out: &mut W,
) -> Result<(), HandshakeError> {
    w.flush_to(out).await.map_err(HandshakeError::Send)
}

fn intersect(a: &FeatureSet, b: &FeatureSet) -> FeatureSet {
    a.intersection(b).cloned().collect::<BTreeSet<_>>()
}

impl ServerHandshake {
    /// Steps 1–5: magic numbers, versions and features.
    pub async fn negotiate<R, W>(
        &self,
        r: &mut WireReader<R>,
        out: &mut W,
    ) -> Result<Negotiated, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        r.begin_message();
        let magic = u64::from(r.read_u32("client magic").await?);
        if magic != WORKER_MAGIC_1 {
            return Err(HandshakeError::BadMagic {
                expected: WORKER_MAGIC_1,
                got: magic,
            });
        }
        let mut w = WireWriter::new();
        w.put_u64(WORKER_MAGIC_2);
        w.put_u64(self.version.to_wire());
        send(&mut w, out).await?;

        let client = ProtocolVersion::from_wire(u64::from(r.read_u32("client version").await?));
        let version = client.min(self.version);
        if version < self.min_client_version {
            return Err(HandshakeError::ClientTooOld {
                client,
                minimum: self.min_client_version,
            });
        }

        let mut features = FeatureSet::new();
        if version.at_least(38) {
            let client_features = r.read_string_set("client features").await?;
            w.put_strings(&self.features);
            send(&mut w, out).await?;
            features = intersect(&client_features, &self.features);
        }
        Ok(Negotiated {
            version,
            features,
            peer_version: client,
        })
    }

    /// Steps 6–9: read the obsolete client fields, send the handshake info. The caller then
    /// sends the stderr messages of the startup work phase and `STDERR_LAST`.
    pub async fn finish<R, W>(
        &self,
        r: &mut WireReader<R>,
        out: &mut W,
        negotiated: &Negotiated,
        info: &ClientHandshakeInfo,
    ) -> Result<ClientObsoleteFields, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let version = negotiated.version;
        let mut obsolete = ClientObsoleteFields::default();
        if version.at_least(14) && r.read_bool("cpu affinity flag").await? {
            obsolete.cpu_affinity = Some(r.read_u64("cpu affinity").await?);
        }
        if version.at_least(11) {
            obsolete.reserve_space = r.read_bool("reserve space").await?;
        }
        let mut w = WireWriter::new();
        info.write(&mut w, version)?;
        send(&mut w, out).await?;
        Ok(obsolete)
    }

    /// The whole handshake up to (not including) the startup work phase.
    pub async fn accept<R, W>(
        &self,
        r: &mut WireReader<R>,
        out: &mut W,
        info: &ClientHandshakeInfo,
    ) -> Result<Negotiated, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let negotiated = self.negotiate(r, out).await?;
        self.finish(r, out, &negotiated, info).await?;
        Ok(negotiated)
    }
}

/// Client side of steps 1–5. Sends the magic and `version` together (as current Nix does),
/// reads the daemon's answer and exchanges features at ≥ 1.38.
pub async fn client_negotiate<R, W>(
    r: &mut WireReader<R>,
    out: &mut W,
    version: ProtocolVersion,
    features: &FeatureSet,
) -> Result<Negotiated, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    r.begin_message();
    let mut w = WireWriter::new();
    w.put_u64(WORKER_MAGIC_1);
    w.put_u64(version.to_wire());
    send(&mut w, out).await?;

    let magic = u64::from(r.read_u32("daemon magic").await?);
    if magic != WORKER_MAGIC_2 {
        return Err(HandshakeError::BadMagic {
            expected: WORKER_MAGIC_2,
            got: magic,
        });
    }
    let daemon = ProtocolVersion::from_wire(u64::from(r.read_u32("daemon version").await?));
    if daemon.major != version.major {
        return Err(HandshakeError::UnsupportedDaemonMajor { daemon });
    }
    if daemon < MIN_DAEMON_VERSION {
        return Err(HandshakeError::DaemonTooOld { daemon });
    }
    let negotiated = daemon.min(version);
    let mut common = FeatureSet::new();
    if negotiated.at_least(38) {
        w.put_strings(features);
        send(&mut w, out).await?;
        let daemon_features = r.read_string_set("daemon features").await?;
        common = intersect(&daemon_features, features);
    }
    Ok(Negotiated {
        version: negotiated,
        features: common,
        peer_version: daemon,
    })
}

/// Client side of steps 6–9: sends CPU affinity 0 (≥ 1.14) and reserveSpace 0 (≥ 1.11), then
/// reads the handshake info. The caller then processes stderr messages up to `STDERR_LAST`.
pub async fn client_finish<R, W>(
    r: &mut WireReader<R>,
    out: &mut W,
    negotiated: &Negotiated,
) -> Result<ClientHandshakeInfo, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = negotiated.version;
    let mut w = WireWriter::new();
    if version.at_least(14) {
        w.put_u64(0);
    }
    if version.at_least(11) {
        w.put_u64(0);
    }
    send(&mut w, out).await?;
    Ok(ClientHandshakeInfo::read(r, version).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// What a Nix 2.8.0 client sends and expects (protocol-facts Appendix A.1).
    #[tokio::test]
    async fn nix_2_8_client_gets_no_trust_byte() {
        let mut r = WireReader::new(Cursor::new(u64s(&[WORKER_MAGIC_1, 0x122, 0, 0])));
        let mut out = Vec::new();
        let info = ClientHandshakeInfo {
            daemon_nix_version: Some("2.8.0".into()),
            trust: Some(TrustFlag::Trusted),
        };
        let negotiated = ServerHandshake::default()
            .accept(&mut r, &mut out, &info)
            .await
            .unwrap();
        assert_eq!(negotiated.version, ProtocolVersion::v1(34));
        assert!(negotiated.features.is_empty());
        let mut expected = WireWriter::new();
        expected.put_u64(WORKER_MAGIC_2);
        expected.put_u64(0x126);
        expected.put_str("2.8.0");
        assert_eq!(out, expected.into_bytes());
    }

    #[tokio::test]
    async fn trust_byte_from_1_35() {
        let mut r = WireReader::new(Cursor::new(u64s(&[WORKER_MAGIC_1, 0x123, 0, 0])));
        let mut out = Vec::new();
        let info = ClientHandshakeInfo {
            daemon_nix_version: Some("x".into()),
            trust: Some(TrustFlag::NotTrusted),
        };
        ServerHandshake::default()
            .accept(&mut r, &mut out, &info)
            .await
            .unwrap();
        assert_eq!(&out[out.len() - 8..], &2u64.to_le_bytes());
    }

    #[tokio::test]
    async fn old_clients_are_refused_after_our_greeting() {
        let mut r = WireReader::new(Cursor::new(u64s(&[WORKER_MAGIC_1, 0x114])));
        let mut out = Vec::new();
        let err = ServerHandshake::default()
            .negotiate(&mut r, &mut out)
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::ClientTooOld { .. }), "{err}");
        assert_eq!(out, u64s(&[WORKER_MAGIC_2, 0x126]));
    }

    #[tokio::test]
    async fn bad_magic_is_refused_before_sending_anything() {
        let mut r = WireReader::new(Cursor::new(u64s(&[0x1234, 0x122])));
        let mut out = Vec::new();
        let err = ServerHandshake::default()
            .negotiate(&mut r, &mut out)
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::BadMagic { got: 0x1234, .. }));
        assert!(out.is_empty());

        let mut r = WireReader::new(Cursor::new(u64s(&[1 << 40])));
        let err = ServerHandshake::default()
            .negotiate(&mut r, &mut out)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Wire(WireError::IntegerTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn features_are_intersected_at_1_38() {
        let server = ServerHandshake {
            features: ["foo", "bar", "xyzzy"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..ServerHandshake::default()
        };
        let mut input = WireWriter::new();
        input.put_u64(WORKER_MAGIC_1);
        input.put_u64(ProtocolVersion::v1(200).to_wire());
        input.put_strings(["aap", "bar", "mies", "xyzzy"]);
        let mut r = WireReader::new(Cursor::new(input.into_bytes()));
        let mut out = Vec::new();
        let negotiated = server.negotiate(&mut r, &mut out).await.unwrap();
        assert_eq!(negotiated.version, PROTOCOL_VERSION);
        assert_eq!(negotiated.peer_version, ProtocolVersion::v1(200));
        let names: Vec<_> = negotiated.features.iter().map(String::as_str).collect();
        assert_eq!(names, ["bar", "xyzzy"]);
    }

    #[tokio::test]
    async fn truncated_client_greeting_is_eof() {
        let full = u64s(&[WORKER_MAGIC_1, 0x122, 0, 0]);
        for cut in 0..full.len() {
            let mut r = WireReader::new(Cursor::new(full[..cut].to_vec()));
            let mut out = Vec::new();
            let info = ClientHandshakeInfo {
                daemon_nix_version: Some("v".into()),
                trust: None,
            };
            let err = ServerHandshake::default()
                .accept(&mut r, &mut out, &info)
                .await
                .unwrap_err();
            assert!(
                matches!(err, HandshakeError::Wire(ref e) if e.is_eof()),
                "cut {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn client_side_checks_the_daemon() {
        let mut r = WireReader::new(Cursor::new(u64s(&[WORKER_MAGIC_2, 0x109])));
        let mut out = Vec::new();
        let err = client_negotiate(
            &mut r,
            &mut out,
            ProtocolVersion::v1(34),
            &FeatureSet::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HandshakeError::DaemonTooOld { .. }));
        let mut r = WireReader::new(Cursor::new(u64s(&[WORKER_MAGIC_2, 0x222])));
        let err = client_negotiate(
            &mut r,
            &mut out,
            ProtocolVersion::v1(34),
            &FeatureSet::new(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HandshakeError::UnsupportedDaemonMajor { .. }));
    }

    #[test]
    fn missing_version_string_cannot_be_sent_at_1_33() {
        let mut w = WireWriter::new();
        let info = ClientHandshakeInfo::default();
        assert!(info.write(&mut w, ProtocolVersion::v1(33)).is_err());
        assert!(info.write(&mut w, ProtocolVersion::v1(32)).is_ok());
        assert!(w.is_empty());
    }
}
