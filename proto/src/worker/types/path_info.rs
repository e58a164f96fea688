//! Path info: `ValidPathInfo` (keyed by its path) and `UnkeyedValidPathInfo`
//! (protocol-facts §3.2.1).

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use super::content_address::{read_opt_ca, write_opt_ca};
use crate::content_address::ContentAddress;
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::{ProtocolVersion, WireContext};

/// Metadata of a valid store path, without the path itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnkeyedValidPathInfo {
    /// The derivation that produced the path, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 of the path's NAR serialisation. Written as bare lowercase base16; read in any
    /// form Nix accepts (base16, nix32, base64, with or without `sha256:`, SRI).
    pub nar_hash: Hash,
    /// Store paths referenced by the contents (may include the path itself).
    pub references: BTreeSet<StorePath>,
    /// Unix seconds, 0 = unknown. Never above `i64::MAX` (the reference's `time_t`).
    pub registration_time: u64,
    /// Size of the NAR serialisation, 0 = unknown.
    pub nar_size: u64,
    /// "Built locally / fully trusted" (≥ 1.16).
    pub ultimate: bool,
    /// Signatures, each `keyname:base64` (≥ 1.16).
    pub sigs: BTreeSet<String>,
    /// Content address (≥ 1.16).
    pub ca: Option<ContentAddress>,
}

impl UnkeyedValidPathInfo {
    /// Path info with the given NAR hash and every other field empty.
    pub fn new(nar_hash: Hash) -> Self {
        UnkeyedValidPathInfo {
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: 0,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// Encodes the fields `version` carries (the ≥ 1.16 ones are left out below it).
    pub fn write_at(&self, w: &mut WireWriter, store_dir: &StoreDir, version: ProtocolVersion) {
        w.put_opt_path(store_dir, self.deriver.as_ref());
        w.put_str(&self.nar_hash.to_base16());
        w.put_paths(store_dir, &self.references);
        w.put_u64(self.registration_time);
        w.put_u64(self.nar_size);
        if version.at_least(16) {
            w.put_bool(self.ultimate);
            w.put_strings(&self.sigs);
            write_opt_ca(w, self.ca.as_ref());
        }
    }

    /// Decodes the fields `version` carries.
    pub async fn read_at<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let deriver = r.read_opt_path("deriver", store_dir).await?;
        let hash_text = r.read_string("nar hash").await?;
        let nar_hash = Hash::parse_any(&hash_text, Some(HashAlgo::Sha256)).map_err(|source| {
            WireError::InvalidHash {
                field: "nar hash",
                source,
            }
        })?;
        let references = r.read_path_set("references", store_dir).await?;
        let registration_time = r.read_i64_nonneg("registration time").await?;
        let nar_size = r.read_u64("nar size").await?;
        let mut info = UnkeyedValidPathInfo {
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ..UnkeyedValidPathInfo::new(nar_hash)
        };
        if version.at_least(16) {
            info.ultimate = r.read_bool_strict("ultimate").await?;
            info.sigs = r.read_string_set("signatures").await?;
            info.ca = read_opt_ca(r, "content address").await?;
        }
        Ok(info)
    }

    /// Encodes for the connection's negotiated version.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.write_at(w, &ctx.store_dir, ctx.version)
    }

    /// Decodes for the connection's negotiated version.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Self::read_at(r, &ctx.store_dir, ctx.version).await
    }
}

/// Path info together with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    /// The store path.
    pub path: StorePath,
    /// Everything else.
    pub info: UnkeyedValidPathInfo,
}

impl ValidPathInfo {
    /// The layout AddMultipleToStore entries always use, whatever the negotiated version.
    pub const MULTIPLE_TO_STORE_VERSION: ProtocolVersion = ProtocolVersion::v1(16);

    /// Encodes path then info, with the fields `version` carries.
    pub fn write_at(&self, w: &mut WireWriter, store_dir: &StoreDir, version: ProtocolVersion) {
        w.put_path(store_dir, &self.path);
        self.info.write_at(w, store_dir, version);
    }

    /// Decodes path then info.
    pub async fn read_at<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let path = r.read_path("path", store_dir).await?;
        let info = UnkeyedValidPathInfo::read_at(r, store_dir, version).await?;
        Ok(ValidPathInfo { path, info })
    }

    /// Encodes for the connection's negotiated version.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.write_at(w, &ctx.store_dir, ctx.version)
    }

    /// Decodes for the connection's negotiated version.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Self::read_at(r, &ctx.store_dir, ctx.version).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample() -> ValidPathInfo {
        let dir = StoreDir::default();
        let path = dir
            .parse_path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar")
            .unwrap();
        let mut info = UnkeyedValidPathInfo::new(Hash::compute(HashAlgo::Sha256, b"nar"));
        info.references.insert(path.clone());
        info.registration_time = 23423;
        info.nar_size = 34878;
        info.ultimate = true;
        info.sigs.insert("k:c2ln".into());
        ValidPathInfo { path, info }
    }

    #[tokio::test]
    async fn gated_fields() {
        let dir = StoreDir::default();
        let info = sample();
        for (minor, round_trips) in [(15, false), (16, true)] {
            let version = ProtocolVersion::v1(minor);
            let mut w = WireWriter::new();
            info.write_at(&mut w, &dir, version);
            let mut r = WireReader::new(Cursor::new(w.into_bytes()));
            let back = ValidPathInfo::read_at(&mut r, &dir, version).await.unwrap();
            assert_eq!(back == info, round_trips);
            assert_eq!(back.info.nar_hash, info.info.nar_hash);
        }
    }

    #[tokio::test]
    async fn nar_hash_accepts_any_sha256_form_but_not_other_algorithms() {
        let dir = StoreDir::default();
        let hash = Hash::compute(HashAlgo::Sha256, b"x");
        for text in [
            hash.to_base16(),
            hash.to_nix32(),
            hash.to_prefixed_nix32(),
            hash.to_sri(),
        ] {
            let mut w = WireWriter::new();
            w.put_str("");
            w.put_str(&text);
            w.put_u64(0);
            w.put_u64(0);
            w.put_u64(0);
            let mut r = WireReader::new(Cursor::new(w.into_bytes()));
            let got = UnkeyedValidPathInfo::read_at(&mut r, &dir, ProtocolVersion::v1(15)).await;
            assert_eq!(got.unwrap().nar_hash, hash, "{text}");
        }
        let mut w = WireWriter::new();
        w.put_str("");
        w.put_str(&Hash::compute(HashAlgo::Sha1, b"x").to_prefixed_base16());
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            UnkeyedValidPathInfo::read_at(&mut r, &dir, ProtocolVersion::v1(15)).await,
            Err(WireError::InvalidHash { .. })
        ));
    }

    #[tokio::test]
    async fn strict_ultimate_and_time_range() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.info.ultimate = false;
        let mut w = WireWriter::new();
        info.write_at(&mut w, &dir, ProtocolVersion::v1(16));
        let mut bytes = w.into_bytes();
        // Locate the ultimate flag: it follows narSize (34878).
        let pos = bytes
            .windows(8)
            .position(|win| win == 34878u64.to_le_bytes())
            .unwrap()
            + 8;
        bytes[pos] = 2;
        let mut r = WireReader::new(Cursor::new(bytes.clone()));
        assert!(matches!(
            ValidPathInfo::read_at(&mut r, &dir, ProtocolVersion::v1(16)).await,
            Err(WireError::InvalidBool {
                field: "ultimate",
                value: 2
            })
        ));
        bytes[pos] = 0;
        bytes[pos - 9] = 0x80; // top byte of registrationTime
        let mut r = WireReader::new(Cursor::new(bytes));
        assert!(matches!(
            ValidPathInfo::read_at(&mut r, &dir, ProtocolVersion::v1(16)).await,
            Err(WireError::IntegerTooLarge {
                field: "registration time",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn truncation_is_eof_everywhere() {
        let dir = StoreDir::default();
        let mut w = WireWriter::new();
        sample().write_at(&mut w, &dir, ProtocolVersion::v1(16));
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let mut r = WireReader::new(Cursor::new(bytes[..cut].to_vec()));
            let err = ValidPathInfo::read_at(&mut r, &dir, ProtocolVersion::v1(16))
                .await
                .unwrap_err();
            assert!(err.is_eof(), "cut {cut}: {err}");
        }
    }
}
