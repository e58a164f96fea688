//! The ExportPath / ImportPaths data format (protocol-facts §3.4).
//!
//! One exported path is: the NAR, `u64` [`EXPORT_MAGIC`], `str` path, `set<path>` references,
//! `str` deriver (`""` = none), `u64` 0. An import stream is a sequence of entries, each
//! introduced by `u64` 1, ended by `u64` 0; on import the last `u64` of an entry may be 1 and be
//! followed by a legacy signature `str`, which is ignored.
//!
//! The NAR has no length prefix: its reader (the NAR parser) finds its end. This module codes
//! the parts around it.

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// The magic number after the NAR of an exported path.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// What follows the NAR of one exported path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTrailer {
    /// The path.
    pub path: StorePath,
    /// Its references.
    pub references: BTreeSet<StorePath>,
    /// Its deriver.
    pub deriver: Option<StorePath>,
    /// A legacy signature found on import (ignored by current Nix; never written).
    pub legacy_signature: Option<Vec<u8>>,
}

impl ExportTrailer {
    /// Encodes magic, path, references, deriver and the 0 "no signature" marker.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_u64(EXPORT_MAGIC);
        w.put_path(&ctx.store_dir, &self.path);
        w.put_paths(&ctx.store_dir, &self.references);
        w.put_opt_path(&ctx.store_dir, self.deriver.as_ref());
        w.put_u64(0);
    }

    /// Decodes the trailer (the NAR before it has already been consumed).
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let magic = r.read_u32("export magic").await?;
        if u64::from(magic) != EXPORT_MAGIC {
            return Err(WireError::InvalidCode {
                field: "export magic",
                value: u64::from(magic),
            });
        }
        let path = r.read_path("exported path", &ctx.store_dir).await?;
        let references = r
            .read_path_set("exported references", &ctx.store_dir)
            .await?;
        let deriver = r.read_opt_path("exported deriver", &ctx.store_dir).await?;
        let legacy_signature = match r.read_u32("legacy signature flag").await? {
            0 => None,
            1 => Some(r.read_bytes("legacy signature").await?),
            other => {
                return Err(WireError::InvalidCode {
                    field: "legacy signature flag",
                    value: u64::from(other),
                })
            }
        };
        Ok(ExportTrailer {
            path,
            references,
            deriver,
            legacy_signature,
        })
    }
}

/// Writes the marker before an import entry (`true`) or at the end of the stream (`false`).
pub fn write_import_marker(w: &mut WireWriter, entry_follows: bool) {
    w.put_u64(u64::from(entry_follows));
}

/// Reads the marker of an import stream: `true` if an entry follows, `false` at the end.
pub async fn read_import_marker<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
) -> Result<bool, WireError> {
    match r.read_u64("import marker").await? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(WireError::InvalidCode {
            field: "import marker",
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::version::ProtocolVersion;
    use std::io::Cursor;

    #[tokio::test]
    async fn trailer_round_trip_and_legacy_signature() {
        let ctx = WireContext::new(StoreDir::default(), ProtocolVersion::v1(34));
        let path = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap();
        let trailer = ExportTrailer {
            path: path.clone(),
            references: [path.clone()].into(),
            deriver: None,
            legacy_signature: None,
        };
        let mut w = WireWriter::new();
        trailer.write(&mut w, &ctx);
        let mut bytes = w.into_bytes();
        let mut r = WireReader::new(Cursor::new(bytes.clone()));
        assert_eq!(ExportTrailer::read(&mut r, &ctx).await.unwrap(), trailer);

        let n = bytes.len();
        bytes[n - 8] = 1;
        let mut sig = WireWriter::new();
        sig.put_str("old-sig");
        bytes.extend_from_slice(sig.as_bytes());
        let mut r = WireReader::new(Cursor::new(bytes));
        let read = ExportTrailer::read(&mut r, &ctx).await.unwrap();
        assert_eq!(read.legacy_signature.as_deref(), Some(&b"old-sig"[..]));

        let mut w = WireWriter::new();
        w.put_u64(0x1234);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            ExportTrailer::read(&mut r, &ctx).await,
            Err(WireError::InvalidCode { .. })
        ));
    }

    #[tokio::test]
    async fn markers() {
        let mut w = WireWriter::new();
        write_import_marker(&mut w, true);
        write_import_marker(&mut w, false);
        w.put_u64(2);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(read_import_marker(&mut r).await.unwrap());
        assert!(!read_import_marker(&mut r).await.unwrap());
        assert!(read_import_marker(&mut r).await.is_err());
    }
}
