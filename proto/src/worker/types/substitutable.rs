//! Substitutable path info (ops 21 and 30; protocol-facts §3.2.2) and the QueryMissing reply.

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// What a substituter knows about a path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubstitutablePathInfo {
    /// The deriver, if known.
    pub deriver: Option<StorePath>,
    /// References.
    pub references: BTreeSet<StorePath>,
    /// Bytes to download (compressed size).
    pub download_size: u64,
    /// NAR size.
    pub nar_size: u64,
}

impl SubstitutablePathInfo {
    /// Encodes `opt_path`, `set<path>`, `u64`, `u64`.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_opt_path(&ctx.store_dir, self.deriver.as_ref());
        w.put_paths(&ctx.store_dir, &self.references);
        w.put_u64(self.download_size);
        w.put_u64(self.nar_size);
    }

    /// Decodes it.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(SubstitutablePathInfo {
            deriver: r.read_opt_path("deriver", &ctx.store_dir).await?,
            references: r.read_path_set("references", &ctx.store_dir).await?,
            download_size: r.read_u64("download size").await?,
            nar_size: r.read_u64("nar size").await?,
        })
    }
}

/// The reply of QueryMissing (op 40).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MissingInfo {
    /// Derivations that would be built.
    pub will_build: BTreeSet<StorePath>,
    /// Paths that would be substituted.
    pub will_substitute: BTreeSet<StorePath>,
    /// Paths nobody knows how to make.
    pub unknown: BTreeSet<StorePath>,
    /// Total download size.
    pub download_size: u64,
    /// Total NAR size.
    pub nar_size: u64,
}

impl MissingInfo {
    /// Encodes three `set<path>` and two `u64`.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_paths(&ctx.store_dir, &self.will_build);
        w.put_paths(&ctx.store_dir, &self.will_substitute);
        w.put_paths(&ctx.store_dir, &self.unknown);
        w.put_u64(self.download_size);
        w.put_u64(self.nar_size);
    }

    /// Decodes it.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(MissingInfo {
            will_build: r.read_path_set("will build", &ctx.store_dir).await?,
            will_substitute: r.read_path_set("will substitute", &ctx.store_dir).await?,
            unknown: r.read_path_set("unknown", &ctx.store_dir).await?,
            download_size: r.read_u64("download size").await?,
            nar_size: r.read_u64("nar size").await?,
        })
    }
}
