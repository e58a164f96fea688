//! Garbage collection: the action, the CollectGarbage request and its reply
//! (protocol-facts §3.2.9, §3.3 op 20, §3.7).

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::{WireContext, FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS};

/// What CollectGarbage does (`u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GcAction {
    /// 0: report live paths.
    ReturnLive,
    /// 1: report dead paths.
    ReturnDead,
    /// 2: delete dead paths.
    DeleteDead,
    /// 3: delete the given paths (if dead).
    DeleteSpecific,
}

impl GcAction {
    /// The wire value.
    pub const fn code(self) -> u64 {
        match self {
            GcAction::ReturnLive => 0,
            GcAction::ReturnDead => 1,
            GcAction::DeleteDead => 2,
            GcAction::DeleteSpecific => 3,
        }
    }

    /// Reads an action; anything but 0–3 is refused.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        const FIELD: &str = "gc action";
        match r.read_u32(FIELD).await? {
            0 => Ok(GcAction::ReturnLive),
            1 => Ok(GcAction::ReturnDead),
            2 => Ok(GcAction::DeleteDead),
            3 => Ok(GcAction::DeleteSpecific),
            value => Err(WireError::InvalidCode {
                field: FIELD,
                value: u64::from(value),
            }),
        }
    }
}

/// Which paths the action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcPaths {
    /// The whole store.
    WholeStore,
    /// These paths.
    Specific {
        /// The paths.
        paths: BTreeSet<StorePath>,
        /// Also delete their referrers (only with `delete-dead-specific-referrers`).
        delete_referrers: bool,
    },
}

/// The arguments of CollectGarbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectGarbageRequest {
    /// The action.
    pub action: GcAction,
    /// The paths. Without the `delete-dead-specific-referrers` feature the wire carries a plain
    /// `set<path>`, read as current Nix does: an empty set with an action other than
    /// DeleteSpecific means the whole store.
    pub paths: GcPaths,
    /// Ignore liveness (refused for every client by the reference).
    pub ignore_liveness: bool,
    /// Stop after freeing this many bytes; clients send `u64::MAX` for no limit.
    pub max_freed: u64,
}

impl CollectGarbageRequest {
    /// Encodes the request. Fails when `delete_referrers` is set without the feature.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_u64(self.action.code());
        if ctx.has_feature(FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS) {
            match &self.paths {
                GcPaths::WholeStore => w.put_u64(1),
                GcPaths::Specific {
                    paths,
                    delete_referrers,
                } => {
                    w.put_u64(0);
                    w.put_paths(&ctx.store_dir, paths);
                    w.put_bool(*delete_referrers);
                }
            }
        } else {
            match &self.paths {
                GcPaths::WholeStore => w.put_u64(0),
                GcPaths::Specific {
                    delete_referrers: true,
                    ..
                } => {
                    return Err(WireError::Unrepresentable {
                        what: "deleting referrers",
                        version: ctx.version.to_string(),
                        reason: "needs the delete-dead-specific-referrers feature",
                    })
                }
                GcPaths::Specific { paths, .. } => w.put_paths(&ctx.store_dir, paths),
            }
        }
        w.put_bool(self.ignore_liveness);
        w.put_u64(self.max_freed);
        for _ in 0..3 {
            w.put_u64(0);
        }
        Ok(())
    }

    /// Decodes the request.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let action = GcAction::read(r).await?;
        let paths = if ctx.has_feature(FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS) {
            match r.read_u8("gc whole-store flag").await? {
                1 => GcPaths::WholeStore,
                0 => GcPaths::Specific {
                    paths: r.read_path_set("gc paths", &ctx.store_dir).await?,
                    delete_referrers: r.read_bool_strict("delete referrers").await?,
                },
                other => {
                    return Err(WireError::InvalidCode {
                        field: "gc whole-store flag",
                        value: u64::from(other),
                    })
                }
            }
        } else {
            let paths = r.read_path_set("gc paths", &ctx.store_dir).await?;
            if paths.is_empty() && action != GcAction::DeleteSpecific {
                GcPaths::WholeStore
            } else {
                GcPaths::Specific {
                    paths,
                    delete_referrers: false,
                }
            }
        };
        let ignore_liveness = r.read_bool_strict("ignore liveness").await?;
        let max_freed = r.read_u64("max freed").await?;
        for _ in 0..3 {
            r.read_u32("obsolete gc field").await?;
        }
        Ok(CollectGarbageRequest {
            action,
            paths,
            ignore_liveness,
            max_freed,
        })
    }
}

/// The reply of CollectGarbage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcResult {
    /// Deleted paths, or the live/dead paths for the report actions (full paths as text).
    pub paths: BTreeSet<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
}

impl GcResult {
    /// Encodes `set<str>`, `u64` bytes freed, `u64` 0 (obsolete).
    pub fn write(&self, w: &mut WireWriter) {
        w.put_strings(&self.paths);
        w.put_u64(self.bytes_freed);
        w.put_u64(0);
    }

    /// Decodes the reply.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        let paths = r.read_string_set("gc result paths").await?;
        let bytes_freed = r.read_u64("bytes freed").await?;
        r.read_u64("obsolete gc result field").await?;
        Ok(GcResult { paths, bytes_freed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::version::ProtocolVersion;
    use std::io::Cursor;

    fn path() -> StorePath {
        StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap()
    }

    async fn round_trip(req: &CollectGarbageRequest, ctx: &WireContext) -> CollectGarbageRequest {
        let mut w = WireWriter::new();
        req.write(&mut w, ctx).unwrap();
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        CollectGarbageRequest::read(&mut r, ctx).await.unwrap()
    }

    #[tokio::test]
    async fn layouts_with_and_without_the_feature() {
        let plain = WireContext::new(StoreDir::default(), ProtocolVersion::v1(34));
        let mut feature = WireContext::new(StoreDir::default(), ProtocolVersion::v1(38));
        feature
            .features
            .insert(FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS.into());
        let requests = [
            CollectGarbageRequest {
                action: GcAction::DeleteDead,
                paths: GcPaths::WholeStore,
                ignore_liveness: false,
                max_freed: u64::MAX,
            },
            CollectGarbageRequest {
                action: GcAction::DeleteSpecific,
                paths: GcPaths::Specific {
                    paths: [path()].into(),
                    delete_referrers: false,
                },
                ignore_liveness: false,
                max_freed: 0,
            },
        ];
        for req in &requests {
            assert_eq!(&round_trip(req, &plain).await, req);
            assert_eq!(&round_trip(req, &feature).await, req);
        }
        let referrers = CollectGarbageRequest {
            paths: GcPaths::Specific {
                paths: [path()].into(),
                delete_referrers: true,
            },
            ..requests[1].clone()
        };
        assert_eq!(round_trip(&referrers, &feature).await, referrers);
        assert!(referrers.write(&mut WireWriter::new(), &plain).is_err());
    }

    #[tokio::test]
    async fn bad_action_and_strict_bool() {
        let ctx = WireContext::new(StoreDir::default(), ProtocolVersion::v1(34));
        let mut w = WireWriter::new();
        w.put_u64(4);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            CollectGarbageRequest::read(&mut r, &ctx).await,
            Err(WireError::InvalidCode { value: 4, .. })
        ));
        let mut w = WireWriter::new();
        w.put_u64(2);
        w.put_u64(0);
        w.put_u64(2);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            CollectGarbageRequest::read(&mut r, &ctx).await,
            Err(WireError::InvalidBool {
                field: "ignore liveness",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn result_round_trip() {
        let result = GcResult {
            paths: ["/nix/store/x".to_string()].into(),
            bytes_freed: 42,
        };
        let mut w = WireWriter::new();
        result.write(&mut w);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(GcResult::read(&mut r).await.unwrap(), result);
    }
}
