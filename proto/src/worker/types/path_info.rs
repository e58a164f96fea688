//! Path info on the wire (protocol-facts §3.2.1): codecs for
//! [`ValidPathInfo`](crate::path_info::ValidPathInfo) (keyed by its path) and
//! [`UnkeyedPathInfo`](crate::path_info::UnkeyedPathInfo).
//!
//! Field order: \[path\], deriver (`opt_path`), narHash (`str`), references (`set<path>`),
//! registrationTime, narSize, and from 1.16 ultimate (strict `bool`), sigs (`list<str>`), ca
//! (`str`, `""` = none). The NAR hash is written as bare lowercase base16 and read in any form
//! Nix accepts (base16, nix32, base64, with or without `sha256:`, SRI), SHA-256 only.

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use super::content_address::{read_opt_ca, write_opt_ca};
use crate::content_address::ContentAddress;
use crate::hash::{Hash, HashAlgo};
use crate::path_info::{UnkeyedPathInfo, ValidPathInfo};
use crate::store_path::{StoreDir, StorePath};
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::{ProtocolVersion, WireContext};

/// The layout AddToStoreNar arguments and AddMultipleToStore entries always use, whatever the
/// negotiated version: every field present.
pub const FULL_PATH_INFO_VERSION: ProtocolVersion = ProtocolVersion::v1(16);

/// The fields both forms share, borrowed.
struct Fields<'a> {
    deriver: Option<&'a StorePath>,
    nar_hash: &'a Hash,
    references: &'a BTreeSet<StorePath>,
    registration_time: i64,
    nar_size: u64,
    ultimate: bool,
    sigs: &'a BTreeSet<String>,
    ca: Option<&'a ContentAddress>,
}

/// Both path-info types carry the same fields after the path.
trait HasFields {
    fn fields(&self) -> Fields<'_>;
}

macro_rules! has_fields {
    ($ty:ty) => {
        impl HasFields for $ty {
            fn fields(&self) -> Fields<'_> {
                Fields {
                    deriver: self.deriver.as_ref(),
                    nar_hash: &self.nar_hash,
                    references: &self.references,
                    registration_time: self.registration_time,
                    nar_size: self.nar_size,
                    ultimate: self.ultimate,
                    sigs: &self.sigs,
                    ca: self.ca.as_ref(),
                }
            }
        }
    };
}

has_fields!(UnkeyedPathInfo);
has_fields!(ValidPathInfo);

impl Fields<'_> {
    fn write(&self, w: &mut WireWriter, store_dir: &StoreDir, version: ProtocolVersion) {
        w.put_opt_path(store_dir, self.deriver);
        w.put_str(&self.nar_hash.to_base16());
        w.put_paths(store_dir, self.references);
        // A negative time cannot be sent (the reference reads a non-negative `time_t`); it
        // goes out as 0, "unknown".
        w.put_u64(u64::try_from(self.registration_time).unwrap_or(0));
        w.put_u64(self.nar_size);
        if version.at_least(16) {
            w.put_bool(self.ultimate);
            w.put_strings(self.sigs);
            write_opt_ca(w, self.ca);
        }
    }
}

async fn read_fields<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    store_dir: &StoreDir,
    version: ProtocolVersion,
) -> Result<UnkeyedPathInfo, WireError> {
    let deriver = r.read_opt_path("deriver", store_dir).await?;
    let hash_text = r.read_string("nar hash").await?;
    let nar_hash = Hash::parse_any(&hash_text, Some(HashAlgo::Sha256)).map_err(|source| {
        WireError::InvalidHash {
            field: "nar hash",
            source,
        }
    })?;
    let references = r.read_path_set("references", store_dir).await?;
    // `read_i64_nonneg` guarantees the value fits.
    let registration_time = r.read_i64_nonneg("registration time").await? as i64;
    let nar_size = r.read_u64("nar size").await?;
    let mut info = UnkeyedPathInfo {
        deriver,
        nar_hash,
        references,
        registration_time,
        nar_size,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: None,
    };
    if version.at_least(16) {
        info.ultimate = r.read_bool_strict("ultimate").await?;
        info.sigs = r.read_string_set("signatures").await?;
        info.ca = read_opt_ca(r, "content address").await?;
    }
    Ok(info)
}

impl UnkeyedPathInfo {
    /// Encodes the fields `version` carries (the ≥ 1.16 ones are left out below it).
    pub fn wire_write_at(
        &self,
        w: &mut WireWriter,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) {
        self.fields().write(w, store_dir, version)
    }

    /// Decodes the fields `version` carries.
    pub async fn wire_read_at<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        read_fields(r, store_dir, version).await
    }

    /// Encodes for the connection (QueryPathInfo reply).
    pub fn wire_write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.wire_write_at(w, &ctx.store_dir, ctx.version)
    }

    /// Decodes for the connection.
    pub async fn wire_read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        read_fields(r, &ctx.store_dir, ctx.version).await
    }
}

impl ValidPathInfo {
    /// Encodes path, then the fields `version` carries.
    pub fn wire_write_at(
        &self,
        w: &mut WireWriter,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) {
        w.put_path(store_dir, &self.path);
        self.fields().write(w, store_dir, version)
    }

    /// Decodes path, then the fields `version` carries.
    pub async fn wire_read_at<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let path = r.read_path("path", store_dir).await?;
        Ok(read_fields(r, store_dir, version).await?.with_path(path))
    }

    /// Encodes for the connection (AddToStore reply).
    pub fn wire_write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.wire_write_at(w, &ctx.store_dir, ctx.version)
    }

    /// Writes everything but the path: the encoding of the [`UnkeyedPathInfo`] it converts to.
    pub fn wire_write_unkeyed(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.fields().write(w, &ctx.store_dir, ctx.version)
    }

    /// Decodes for the connection.
    pub async fn wire_read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Self::wire_read_at(r, &ctx.store_dir, ctx.version).await
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
        let mut info = ValidPathInfo::new(path.clone(), Hash::compute(HashAlgo::Sha256, b"nar"));
        info.references.insert(path);
        info.registration_time = 23423;
        info.nar_size = 34878;
        info.ultimate = true;
        info.sigs.insert("k:c2ln".into());
        info
    }

    #[tokio::test]
    async fn gated_fields() {
        let dir = StoreDir::default();
        let info = sample();
        for (minor, round_trips) in [(15, false), (16, true)] {
            let version = ProtocolVersion::v1(minor);
            let mut w = WireWriter::new();
            info.wire_write_at(&mut w, &dir, version);
            let mut r = WireReader::new(Cursor::new(w.into_bytes()));
            let back = ValidPathInfo::wire_read_at(&mut r, &dir, version)
                .await
                .unwrap();
            assert_eq!(back == info, round_trips);
            assert_eq!(back.nar_hash, info.nar_hash);
        }
        let unkeyed = UnkeyedPathInfo::from(&info);
        let mut w = WireWriter::new();
        unkeyed.wire_write_at(&mut w, &dir, FULL_PATH_INFO_VERSION);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(
            UnkeyedPathInfo::wire_read_at(&mut r, &dir, FULL_PATH_INFO_VERSION)
                .await
                .unwrap(),
            unkeyed
        );
    }

    #[test]
    fn negative_registration_time_goes_out_as_unknown() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.registration_time = -5;
        let mut w = WireWriter::new();
        info.wire_write_at(&mut w, &dir, ProtocolVersion::v1(15));
        let bytes = w.into_bytes();
        let pos = bytes
            .windows(8)
            .position(|win| win == 34878u64.to_le_bytes())
            .unwrap();
        assert_eq!(&bytes[pos - 8..pos], &0u64.to_le_bytes());
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
            let got = UnkeyedPathInfo::wire_read_at(&mut r, &dir, ProtocolVersion::v1(15)).await;
            assert_eq!(got.unwrap().nar_hash, hash, "{text}");
        }
        let mut w = WireWriter::new();
        w.put_str("");
        w.put_str(&Hash::compute(HashAlgo::Sha1, b"x").to_prefixed_base16());
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            UnkeyedPathInfo::wire_read_at(&mut r, &dir, ProtocolVersion::v1(15)).await,
            Err(WireError::InvalidHash { .. })
        ));
    }

    #[tokio::test]
    async fn strict_ultimate_and_time_range() {
        let dir = StoreDir::default();
        let mut info = sample();
        info.ultimate = false;
        let mut w = WireWriter::new();
        info.wire_write_at(&mut w, &dir, FULL_PATH_INFO_VERSION);
        let mut bytes = w.into_bytes();
        // The ultimate flag follows narSize (34878).
        let pos = bytes
            .windows(8)
            .position(|win| win == 34878u64.to_le_bytes())
            .unwrap()
            + 8;
        bytes[pos] = 2;
        let mut r = WireReader::new(Cursor::new(bytes.clone()));
        assert!(matches!(
            ValidPathInfo::wire_read_at(&mut r, &dir, FULL_PATH_INFO_VERSION).await,
            Err(WireError::InvalidBool {
                field: "ultimate",
                value: 2
            })
        ));
        bytes[pos] = 0;
        bytes[pos - 9] = 0x80; // top byte of registrationTime
        let mut r = WireReader::new(Cursor::new(bytes));
        assert!(matches!(
            ValidPathInfo::wire_read_at(&mut r, &dir, FULL_PATH_INFO_VERSION).await,
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
        sample().wire_write_at(&mut w, &dir, FULL_PATH_INFO_VERSION);
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let mut r = WireReader::new(Cursor::new(bytes[..cut].to_vec()));
            let err = ValidPathInfo::wire_read_at(&mut r, &dir, FULL_PATH_INFO_VERSION)
                .await
                .unwrap_err();
            assert!(err.is_eof(), "cut {cut}: {err}");
        }
    }
}
