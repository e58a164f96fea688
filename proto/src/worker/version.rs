//! Protocol versions, features, and the per-connection context every codec needs.

use std::collections::BTreeSet;
use std::fmt;

use crate::store_path::StoreDir;

/// A worker protocol version, `major.minor`. On the wire it is one `u64`, `major << 8 | minor`.
///
/// Ordering compares the major, then the minor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Always 1 for the worker protocol.
    pub major: u8,
    /// The number every cut-off is expressed in (protocol-facts §1.9).
    pub minor: u8,
}

impl ProtocolVersion {
    /// `major.minor`.
    pub const fn new(major: u8, minor: u8) -> Self {
        ProtocolVersion { major, minor }
    }

    /// Version `1.minor`.
    pub const fn v1(minor: u8) -> Self {
        ProtocolVersion { major: 1, minor }
    }

    /// Decodes the wire form. Like the reference, only the low 16 bits count (the caller has
    /// already refused values of 2^32 and above).
    pub const fn from_wire(value: u64) -> Self {
        ProtocolVersion {
            major: ((value >> 8) & 0xff) as u8,
            minor: (value & 0xff) as u8,
        }
    }

    /// The wire form, `major << 8 | minor`.
    pub const fn to_wire(self) -> u64 {
        ((self.major as u64) << 8) | self.minor as u64
    }

    /// True if this version is `1.minor` or newer.
    pub fn at_least(self, minor: u8) -> bool {
        self >= ProtocolVersion::v1(minor)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The version ward announces: 1.38, what current Nix sends (the header's 1.39 is unused,
/// protocol-facts §1.8).
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::v1(38);

/// The oldest client version ward accepts. Clients below it are disconnected without a word,
/// as the reference does. 1.21 is Nix 2.1–2.3; everything older predates the
/// `STDERR_READ`/framed uploads and would need the bare-NAR code paths.
pub const MIN_CLIENT_VERSION: ProtocolVersion = ProtocolVersion::v1(21);

/// The oldest daemon version a client accepts (the reference's client check).
pub const MIN_DAEMON_VERSION: ProtocolVersion = ProtocolVersion::v1(10);

/// `WORKER_MAGIC_1`, the first `u64` a client sends.
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// `WORKER_MAGIC_2`, the daemon's answer.
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// A set of protocol feature names (exchanged from 1.38 on).
pub type FeatureSet = BTreeSet<String>;

/// Feature: realisations, `DrvOutput`s and `builtOutputs` use the binary layouts keyed by the
/// derivation path (Nix ≥ 2.35).
pub const FEATURE_REALISATION_WITH_PATH_NOT_HASH: &str = "realisation-with-path-not-hash";
/// Feature: `CollectGarbage` takes a tagged path argument with `deleteReferrers` (Nix ≥ 2.35).
pub const FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS: &str = "delete-dead-specific-referrers";
/// Feature used on recursive-Nix / builder-rpc connections only: `SetOptions` is ignored.
pub const FEATURE_DISABLE_SET_OPTIONS: &str = "disable-set-options";
/// Feature used on recursive-Nix / builder-rpc connections only: op 1001 is allowed.
pub const FEATURE_ADD_TO_STORE_SCANNING: &str = "add-to-store-scanning";
/// Feature used on builder-rpc connections only: op 1000 is allowed.
pub const FEATURE_SUBMIT_OUTPUT: &str = "submit-output";

/// The features ward announces on ordinary connections. Empty: the codecs in this module
/// understand both feature layouts, but the store semantics behind them (realisations keyed by
/// derivation path, deleting referrers) are not provided, and an empty list is always safe
/// (protocol-facts §1.8).
pub const DAEMON_FEATURES: &[&str] = &[];

/// Everything a codec needs to know about its connection: the negotiated version and features,
/// and the store directory that full store paths must lie in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireContext {
    /// The negotiated version, min(client, daemon).
    pub version: ProtocolVersion,
    /// The negotiated features (intersection of both sides' lists).
    pub features: FeatureSet,
    /// The logical store directory.
    pub store_dir: StoreDir,
}

impl WireContext {
    /// A context for `version` with no features.
    pub fn new(store_dir: StoreDir, version: ProtocolVersion) -> Self {
        WireContext {
            version,
            features: FeatureSet::new(),
            store_dir,
        }
    }

    /// A context with features.
    pub fn with_features(
        store_dir: StoreDir,
        version: ProtocolVersion,
        features: FeatureSet,
    ) -> Self {
        WireContext {
            version,
            features,
            store_dir,
        }
    }

    /// True if the negotiated version is `1.minor` or newer.
    pub fn at_least(&self, minor: u8) -> bool {
        self.version.at_least(minor)
    }

    /// True if `feature` was negotiated.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// True if `realisation-with-path-not-hash` was negotiated.
    pub fn realisation_with_path(&self) -> bool {
        self.has_feature(FEATURE_REALISATION_WITH_PATH_NOT_HASH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(ProtocolVersion::v1(34).to_wire(), 0x122);
        assert_eq!(ProtocolVersion::from_wire(0x122), ProtocolVersion::v1(34));
        assert_eq!(ProtocolVersion::from_wire(0x10a), ProtocolVersion::v1(10));
        // Bits above 16 are ignored, as in the reference.
        assert_eq!(
            ProtocolVersion::from_wire(0xab_0126),
            ProtocolVersion::v1(38)
        );
        assert_eq!(PROTOCOL_VERSION.to_string(), "1.38");
    }

    #[test]
    fn ordering_is_major_then_minor() {
        assert!(ProtocolVersion::new(0, 255) < ProtocolVersion::v1(0));
        assert!(ProtocolVersion::v1(10) < ProtocolVersion::v1(20));
        assert!(ProtocolVersion::new(2, 0) > ProtocolVersion::v1(200));
        assert!(ProtocolVersion::v1(34).at_least(34));
        assert!(!ProtocolVersion::v1(34).at_least(35));
        assert!(ProtocolVersion::new(2, 0).at_least(38));
    }
}
