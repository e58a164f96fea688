//! What the daemon writes after `STDERR_LAST`, for every op (protocol-facts §3.3).
//!
//! [`Reply`] has one variant per [`Op`]; [`Reply::write`] encodes for the negotiated version
//! and [`Reply::read`] decodes (client side). Ops with no reply bytes have unit variants.
//! NarFromPath's reply is a bare NAR that the caller streams itself after `STDERR_LAST`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tokio::io::AsyncRead;

use super::ops::Op;
use super::requests::{read_fs_path, write_fs_path};
use super::types::{
    BuildResult, GcResult, KeyedBuildResult, MissingInfo, Realisation, SubstitutablePathInfo,
    UnkeyedPathInfo, UnkeyedRealisation, ValidPathInfo,
};
use super::version::WireContext;
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter, PREALLOC_CAP};

/// The reply of AddToStore: a keyed path info from 1.25 on, only the path before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddToStoreReply {
    /// ≥ 1.25.
    PathInfo(Box<ValidPathInfo>),
    /// < 1.25.
    Path(StorePath),
}

/// The reply of QueryRealisation; the layout depends on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealisationReply {
    /// < 1.31: a `set<path>` of zero or one output path.
    OutPath(Option<StorePath>),
    /// ≥ 1.31: a `set<str>` of zero or one realisation JSON.
    Json(Option<Realisation>),
    /// With `realisation-with-path-not-hash`: a tagged optional binary realisation.
    Binary(Option<UnkeyedRealisation>),
}

impl RealisationReply {
    /// The reply to send on `ctx` for a realisation found (or not).
    pub fn for_context(found: Option<&Realisation>, ctx: &WireContext) -> Self {
        if ctx.realisation_with_path() {
            RealisationReply::Binary(found.map(Realisation::to_unkeyed_realisation))
        } else if ctx.at_least(31) {
            RealisationReply::Json(found.cloned())
        } else {
            RealisationReply::OutPath(found.map(|r| r.out_path.clone()))
        }
    }
}

/// One GC root: the link (a file-system path, or a placeholder such as `{censored}` or
/// `{temp:PID}`) and the store path it keeps alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRoot {
    /// The link.
    pub link: PathBuf,
    /// The target.
    pub target: StorePath,
}

/// The reply to an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Op 1: `bool`.
    IsValidPath(bool),
    /// Op 3: `bool`.
    HasSubstitutes(bool),
    /// Op 4: base16 NAR hash.
    QueryPathHash(Hash),
    /// Op 5: `set<path>`.
    QueryReferences(BTreeSet<StorePath>),
    /// Op 6: `set<path>`.
    QueryReferrers(BTreeSet<StorePath>),
    /// Op 7.
    AddToStore(AddToStoreReply),
    /// Op 8: `path`.
    AddTextToStore(StorePath),
    /// Op 9: `u64` 1.
    BuildPaths,
    /// Op 10: `u64` 1.
    EnsurePath,
    /// Op 11: `u64` 1.
    AddTempRoot,
    /// Op 12: `u64` 1.
    AddIndirectRoot,
    /// Op 13: `u64` 1.
    SyncWithGC,
    /// Op 14: `u64` n, then n × (`str` link, `path` target).
    FindRoots(Vec<GcRoot>),
    /// Op 16: `u64` 1 (the data went through STDERR_WRITE).
    ExportPath,
    /// Op 18: `opt_path`.
    QueryDeriver(Option<StorePath>),
    /// Op 19: nothing.
    SetOptions,
    /// Op 20.
    CollectGarbage(GcResult),
    /// Op 21: `u64` 0, or `u64` 1 and the info.
    QuerySubstitutablePathInfo(Option<SubstitutablePathInfo>),
    /// Op 22: `set<path>`.
    QueryDerivationOutputs(BTreeSet<StorePath>),
    /// Op 23: `set<path>`.
    QueryAllValidPaths(BTreeSet<StorePath>),
    /// Op 24: never answered successfully (removed op).
    QueryFailedPaths,
    /// Op 25: never answered successfully (removed op).
    ClearFailedPaths,
    /// Op 26: from 1.17 a valid flag, then the info if valid. Below 1.17 an invalid path must
    /// be reported as an error instead ([`WireError::Unrepresentable`] on write).
    QueryPathInfo(Option<UnkeyedPathInfo>),
    /// Op 27: `list<path>` of imported paths.
    ImportPaths(Vec<StorePath>),
    /// Op 28: `list<str>`.
    QueryDerivationOutputNames(Vec<String>),
    /// Op 29: `opt_path`.
    QueryPathFromHashPart(Option<StorePath>),
    /// Op 30: `u64` n, then n × (`path`, info).
    QuerySubstitutablePathInfos(BTreeMap<StorePath, SubstitutablePathInfo>),
    /// Op 31: `set<path>`.
    QueryValidPaths(BTreeSet<StorePath>),
    /// Op 32: `set<path>`.
    QuerySubstitutablePaths(BTreeSet<StorePath>),
    /// Op 33: `set<path>`.
    QueryValidDerivers(BTreeSet<StorePath>),
    /// Op 34: `u64` 1.
    OptimiseStore,
    /// Op 35: errors found (`bool`).
    VerifyStore(bool),
    /// Op 36: unkeyed build result.
    BuildDerivation(BuildResult),
    /// Op 37: `u64` 1.
    AddSignatures,
    /// Op 38: nothing here; the caller streams the NAR.
    NarFromPath,
    /// Op 39: nothing.
    AddToStoreNar,
    /// Op 40.
    QueryMissing(MissingInfo),
    /// Op 41: `map<str, opt_path>`.
    QueryDerivationOutputMap(BTreeMap<String, Option<StorePath>>),
    /// Op 42: nothing.
    RegisterDrvOutput,
    /// Op 43.
    QueryRealisation(RealisationReply),
    /// Op 44: nothing.
    AddMultipleToStore,
    /// Op 45: `u64` 1.
    AddBuildLog,
    /// Op 46: `list<KeyedBuildResult>`.
    BuildPathsWithResults(Vec<KeyedBuildResult>),
    /// Op 47: `str` the gc-root path.
    AddPermRoot(PathBuf),
    /// Op 1000: `u64` 1.
    SubmitOutput,
    /// Op 1001: keyed path info.
    AddToStoreScanning(ValidPathInfo),
}

fn mismatch(what: &'static str, ctx: &WireContext, reason: &'static str) -> WireError {
    WireError::Unrepresentable {
        what,
        version: ctx.version.to_string(),
        reason,
    }
}

async fn read_ack<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<(), WireError> {
    // Clients read this value and ignore it.
    r.read_u64("acknowledgement").await.map(|_| ())
}

impl Reply {
    /// The op this reply answers.
    pub fn op(&self) -> Op {
        match self {
            Reply::IsValidPath(_) => Op::IsValidPath,
            Reply::HasSubstitutes(_) => Op::HasSubstitutes,
            Reply::QueryPathHash(_) => Op::QueryPathHash,
            Reply::QueryReferences(_) => Op::QueryReferences,
            Reply::QueryReferrers(_) => Op::QueryReferrers,
            Reply::AddToStore(_) => Op::AddToStore,
            Reply::AddTextToStore(_) => Op::AddTextToStore,
            Reply::BuildPaths => Op::BuildPaths,
            Reply::EnsurePath => Op::EnsurePath,
            Reply::AddTempRoot => Op::AddTempRoot,
            Reply::AddIndirectRoot => Op::AddIndirectRoot,
            Reply::SyncWithGC => Op::SyncWithGC,
            Reply::FindRoots(_) => Op::FindRoots,
            Reply::ExportPath => Op::ExportPath,
            Reply::QueryDeriver(_) => Op::QueryDeriver,
            Reply::SetOptions => Op::SetOptions,
            Reply::CollectGarbage(_) => Op::CollectGarbage,
            Reply::QuerySubstitutablePathInfo(_) => Op::QuerySubstitutablePathInfo,
            Reply::QueryDerivationOutputs(_) => Op::QueryDerivationOutputs,
            Reply::QueryAllValidPaths(_) => Op::QueryAllValidPaths,
            Reply::QueryFailedPaths => Op::QueryFailedPaths,
            Reply::ClearFailedPaths => Op::ClearFailedPaths,
            Reply::QueryPathInfo(_) => Op::QueryPathInfo,
            Reply::ImportPaths(_) => Op::ImportPaths,
            Reply::QueryDerivationOutputNames(_) => Op::QueryDerivationOutputNames,
            Reply::QueryPathFromHashPart(_) => Op::QueryPathFromHashPart,
            Reply::QuerySubstitutablePathInfos(_) => Op::QuerySubstitutablePathInfos,
            Reply::QueryValidPaths(_) => Op::QueryValidPaths,
            Reply::QuerySubstitutablePaths(_) => Op::QuerySubstitutablePaths,
            Reply::QueryValidDerivers(_) => Op::QueryValidDerivers,
            Reply::OptimiseStore => Op::OptimiseStore,
            Reply::VerifyStore(_) => Op::VerifyStore,
            Reply::BuildDerivation(_) => Op::BuildDerivation,
            Reply::AddSignatures => Op::AddSignatures,
            Reply::NarFromPath => Op::NarFromPath,
            Reply::AddToStoreNar => Op::AddToStoreNar,
            Reply::QueryMissing(_) => Op::QueryMissing,
            Reply::QueryDerivationOutputMap(_) => Op::QueryDerivationOutputMap,
            Reply::RegisterDrvOutput => Op::RegisterDrvOutput,
            Reply::QueryRealisation(_) => Op::QueryRealisation,
            Reply::AddMultipleToStore => Op::AddMultipleToStore,
            Reply::AddBuildLog => Op::AddBuildLog,
            Reply::BuildPathsWithResults(_) => Op::BuildPathsWithResults,
            Reply::AddPermRoot(_) => Op::AddPermRoot,
            Reply::SubmitOutput => Op::SubmitOutput,
            Reply::AddToStoreScanning(_) => Op::AddToStoreScanning,
        }
    }

    /// Writes the reply to QueryPathInfo straight from a [`ValidPathInfo`]: the same bytes as
    /// `Reply::QueryPathInfo(info.map(UnkeyedPathInfo::from))`, without copying the info.
    pub fn write_query_path_info(
        w: &mut WireWriter,
        ctx: &WireContext,
        info: Option<&ValidPathInfo>,
    ) -> Result<(), WireError> {
        write_query_path_info(w, ctx, info, ValidPathInfo::wire_write_unkeyed)
    }

    /// Encodes the reply for the connection. Fails only for values the negotiated version
    /// cannot express (the caller must then send an error instead, before `STDERR_LAST`).
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        let dir = &ctx.store_dir;
        match self {
            Reply::IsValidPath(b) | Reply::HasSubstitutes(b) | Reply::VerifyStore(b) => {
                w.put_bool(*b)
            }
            Reply::QueryPathHash(hash) => w.put_str(&hash.to_base16()),
            Reply::QueryReferences(paths)
            | Reply::QueryReferrers(paths)
            | Reply::QueryDerivationOutputs(paths)
            | Reply::QueryAllValidPaths(paths)
            | Reply::QueryValidPaths(paths)
            | Reply::QuerySubstitutablePaths(paths)
            | Reply::QueryValidDerivers(paths) => w.put_paths(dir, paths),
            Reply::AddToStore(AddToStoreReply::PathInfo(info)) if ctx.at_least(25) => {
                info.wire_write(w, ctx)
            }
            Reply::AddToStore(AddToStoreReply::Path(path)) if !ctx.at_least(25) => {
                w.put_path(dir, path)
            }
            Reply::AddToStore(_) => {
                return Err(mismatch(
                    "the AddToStore reply",
                    ctx,
                    "the reply layout changed at 1.25",
                ))
            }
            Reply::AddTextToStore(path) => w.put_path(dir, path),
            Reply::BuildPaths
            | Reply::EnsurePath
            | Reply::AddTempRoot
            | Reply::AddIndirectRoot
            | Reply::SyncWithGC
            | Reply::ExportPath
            | Reply::OptimiseStore
            | Reply::AddSignatures
            | Reply::AddBuildLog
            | Reply::SubmitOutput => w.put_u64(1),
            Reply::SetOptions
            | Reply::NarFromPath
            | Reply::AddToStoreNar
            | Reply::RegisterDrvOutput
            | Reply::AddMultipleToStore
            | Reply::QueryFailedPaths
            | Reply::ClearFailedPaths => {}
            Reply::FindRoots(roots) => {
                w.put_u64(roots.len() as u64);
                for root in roots {
                    write_fs_path(w, &root.link);
                    w.put_path(dir, &root.target);
                }
            }
            Reply::QueryDeriver(path) | Reply::QueryPathFromHashPart(path) => {
                w.put_opt_path(dir, path.as_ref())
            }
            Reply::CollectGarbage(result) => result.write(w),
            Reply::QuerySubstitutablePathInfo(info) => {
                w.put_bool(info.is_some());
                if let Some(info) = info {
                    info.write(w, ctx);
                }
            }
            Reply::QueryPathInfo(info) => {
                write_query_path_info(w, ctx, info.as_ref(), UnkeyedPathInfo::wire_write)?
            }
            Reply::ImportPaths(paths) => w.put_paths(dir, paths),
            Reply::QueryDerivationOutputNames(names) => w.put_strings(names),
            Reply::QuerySubstitutablePathInfos(infos) => {
                w.put_u64(infos.len() as u64);
                for (path, info) in infos {
                    w.put_path(dir, path);
                    info.write(w, ctx);
                }
            }
            Reply::BuildDerivation(result) => result.write(w, ctx),
            Reply::QueryMissing(missing) => missing.write(w, ctx),
            Reply::QueryDerivationOutputMap(map) => {
                w.put_u64(map.len() as u64);
                for (name, path) in map {
                    w.put_str(name);
                    w.put_opt_path(dir, path.as_ref());
                }
            }
            Reply::QueryRealisation(reply) => match reply {
                RealisationReply::Binary(value) if ctx.realisation_with_path() => {
                    w.put_option_tag(value.is_some());
                    if let Some(value) = value {
                        value.wire_write(w, ctx);
                    }
                }
                RealisationReply::Json(value)
                    if !ctx.realisation_with_path() && ctx.at_least(31) =>
                {
                    w.put_u64(u64::from(value.is_some()));
                    if let Some(value) = value {
                        value.wire_write(w);
                    }
                }
                RealisationReply::OutPath(path)
                    if !ctx.realisation_with_path() && !ctx.at_least(31) =>
                {
                    w.put_paths(dir, path.iter());
                }
                _ => {
                    return Err(mismatch(
                        "the QueryRealisation reply",
                        ctx,
                        "use RealisationReply::for_context to pick the layout",
                    ))
                }
            },
            Reply::BuildPathsWithResults(results) => {
                w.put_u64(results.len() as u64);
                for result in results {
                    result.write(w, ctx)?;
                }
            }
            Reply::AddPermRoot(path) => write_fs_path(w, path),
            Reply::AddToStoreScanning(info) => info.wire_write(w, ctx),
        }
        Ok(())
    }

    /// Decodes the reply to `op` (client side). Starts a new message budget. For NarFromPath
    /// nothing is read: the NAR follows and the caller parses it.
    pub async fn read<R: AsyncRead + Unpin>(
        op: Op,
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        r.begin_message();
        let dir = &ctx.store_dir;
        Ok(match op {
            Op::IsValidPath => Reply::IsValidPath(r.read_bool_strict("valid").await?),
            Op::HasSubstitutes => {
                Reply::HasSubstitutes(r.read_bool_strict("has substitutes").await?)
            }
            Op::VerifyStore => Reply::VerifyStore(r.read_bool_strict("errors found").await?),
            Op::QueryPathHash => {
                let text = r.read_string("nar hash").await?;
                Reply::QueryPathHash(Hash::parse_any(&text, Some(HashAlgo::Sha256)).map_err(
                    |source| WireError::InvalidHash {
                        field: "nar hash",
                        source,
                    },
                )?)
            }
            Op::QueryReferences => {
                Reply::QueryReferences(r.read_path_set("references", dir).await?)
            }
            Op::QueryReferrers => Reply::QueryReferrers(r.read_path_set("referrers", dir).await?),
            Op::QueryDerivationOutputs => {
                Reply::QueryDerivationOutputs(r.read_path_set("derivation outputs", dir).await?)
            }
            Op::QueryAllValidPaths => {
                Reply::QueryAllValidPaths(r.read_path_set("valid paths", dir).await?)
            }
            Op::QueryValidPaths => {
                Reply::QueryValidPaths(r.read_path_set("valid paths", dir).await?)
            }
            Op::QuerySubstitutablePaths => {
                Reply::QuerySubstitutablePaths(r.read_path_set("substitutable paths", dir).await?)
            }
            Op::QueryValidDerivers => {
                Reply::QueryValidDerivers(r.read_path_set("valid derivers", dir).await?)
            }
            Op::AddToStore => Reply::AddToStore(if ctx.at_least(25) {
                AddToStoreReply::PathInfo(Box::new(ValidPathInfo::wire_read(r, ctx).await?))
            } else {
                AddToStoreReply::Path(r.read_path("added path", dir).await?)
            }),
            Op::AddTextToStore => Reply::AddTextToStore(r.read_path("added path", dir).await?),
            Op::BuildPaths => read_ack(r).await.map(|_| Reply::BuildPaths)?,
            Op::EnsurePath => read_ack(r).await.map(|_| Reply::EnsurePath)?,
            Op::AddTempRoot => read_ack(r).await.map(|_| Reply::AddTempRoot)?,
            Op::AddIndirectRoot => read_ack(r).await.map(|_| Reply::AddIndirectRoot)?,
            Op::SyncWithGC => read_ack(r).await.map(|_| Reply::SyncWithGC)?,
            Op::ExportPath => read_ack(r).await.map(|_| Reply::ExportPath)?,
            Op::OptimiseStore => read_ack(r).await.map(|_| Reply::OptimiseStore)?,
            Op::AddSignatures => read_ack(r).await.map(|_| Reply::AddSignatures)?,
            Op::AddBuildLog => read_ack(r).await.map(|_| Reply::AddBuildLog)?,
            Op::SubmitOutput => read_ack(r).await.map(|_| Reply::SubmitOutput)?,
            Op::SetOptions => Reply::SetOptions,
            Op::NarFromPath => Reply::NarFromPath,
            Op::AddToStoreNar => Reply::AddToStoreNar,
            Op::RegisterDrvOutput => Reply::RegisterDrvOutput,
            Op::AddMultipleToStore => Reply::AddMultipleToStore,
            Op::QueryFailedPaths => Reply::QueryFailedPaths,
            Op::ClearFailedPaths => Reply::ClearFailedPaths,
            Op::FindRoots => {
                let n = r.read_count("gc roots").await?;
                let mut roots = Vec::with_capacity(n.min(PREALLOC_CAP));
                for _ in 0..n {
                    let link = read_fs_path(r, "gc root link").await?;
                    let target = r.read_path("gc root target", dir).await?;
                    roots.push(GcRoot { link, target });
                }
                Reply::FindRoots(roots)
            }
            Op::QueryDeriver => Reply::QueryDeriver(r.read_opt_path("deriver", dir).await?),
            Op::QueryPathFromHashPart => {
                Reply::QueryPathFromHashPart(r.read_opt_path("path", dir).await?)
            }
            Op::CollectGarbage => Reply::CollectGarbage(GcResult::read(r).await?),
            Op::QuerySubstitutablePathInfo => {
                Reply::QuerySubstitutablePathInfo(if r.read_bool_strict("substitutable").await? {
                    Some(SubstitutablePathInfo::read(r, ctx).await?)
                } else {
                    None
                })
            }
            Op::QueryPathInfo => {
                Reply::QueryPathInfo(if !ctx.at_least(17) || r.read_bool_strict("valid").await? {
                    Some(UnkeyedPathInfo::wire_read(r, ctx).await?)
                } else {
                    None
                })
            }
            Op::ImportPaths => Reply::ImportPaths(r.read_path_list("imported paths", dir).await?),
            Op::QueryDerivationOutputNames => {
                Reply::QueryDerivationOutputNames(r.read_string_list("output names").await?)
            }
            Op::QuerySubstitutablePathInfos => {
                let n = r.read_count("substitutable infos").await?;
                let mut infos = BTreeMap::new();
                for _ in 0..n {
                    let path = r.read_path("path", dir).await?;
                    infos.insert(path, SubstitutablePathInfo::read(r, ctx).await?);
                }
                Reply::QuerySubstitutablePathInfos(infos)
            }
            Op::BuildDerivation => Reply::BuildDerivation(BuildResult::read(r, ctx).await?),
            Op::QueryMissing => Reply::QueryMissing(MissingInfo::read(r, ctx).await?),
            Op::QueryDerivationOutputMap => {
                let n = r.read_count("output map").await?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let name = r.read_string("output name").await?;
                    map.insert(name, r.read_opt_path("output path", dir).await?);
                }
                Reply::QueryDerivationOutputMap(map)
            }
            Op::QueryRealisation => Reply::QueryRealisation(if ctx.realisation_with_path() {
                RealisationReply::Binary(if r.read_option_tag("realisation").await? {
                    Some(UnkeyedRealisation::wire_read(r, ctx).await?)
                } else {
                    None
                })
            } else if ctx.at_least(31) {
                let n = r.read_count("realisations").await?;
                let mut found = None;
                for _ in 0..n {
                    found = Some(Realisation::wire_read(r).await?);
                }
                if n > 1 {
                    return Err(WireError::TooManyElements {
                        field: "realisations",
                        count: n as u64,
                        max: 1,
                    });
                }
                RealisationReply::Json(found)
            } else {
                let paths = r.read_path_set("realisation output paths", dir).await?;
                if paths.len() > 1 {
                    return Err(WireError::TooManyElements {
                        field: "realisation output paths",
                        count: paths.len() as u64,
                        max: 1,
                    });
                }
                RealisationReply::OutPath(paths.into_iter().next())
            }),
            Op::BuildPathsWithResults => {
                let n = r.read_count("build results").await?;
                let mut results = Vec::with_capacity(n.min(PREALLOC_CAP));
                for _ in 0..n {
                    results.push(KeyedBuildResult::read(r, ctx).await?);
                }
                Reply::BuildPathsWithResults(results)
            }
            Op::AddPermRoot => Reply::AddPermRoot(read_fs_path(r, "gc root").await?),
            Op::AddToStoreScanning => {
                Reply::AddToStoreScanning(ValidPathInfo::wire_read(r, ctx).await?)
            }
        })
    }
}

/// QueryPathInfo's version rules: from 1.17 a validity flag and then the info; before that an
/// invalid path cannot be expressed (the daemon must send an error instead).
fn write_query_path_info<T>(
    w: &mut WireWriter,
    ctx: &WireContext,
    info: Option<&T>,
    write_info: impl FnOnce(&T, &mut WireWriter, &WireContext),
) -> Result<(), WireError> {
    match info {
        Some(info) => {
            if ctx.at_least(17) {
                w.put_bool(true);
            }
            write_info(info, w, ctx);
        }
        None if ctx.at_least(17) => w.put_bool(false),
        None => {
            return Err(mismatch(
                "an invalid path in QueryPathInfo",
                ctx,
                "below 1.17 an invalid path must be reported as an error",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::types::placeholder_drv_output;
    use crate::worker::version::{ProtocolVersion, FEATURE_REALISATION_WITH_PATH_NOT_HASH};
    use std::collections::BTreeMap as Map;
    use std::io::Cursor;

    fn ctx(minor: u8) -> WireContext {
        WireContext::new(StoreDir::default(), ProtocolVersion::v1(minor))
    }

    fn path(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-{name}")).unwrap()
    }

    async fn round_trip(reply: &Reply, ctx: &WireContext) -> Reply {
        let mut w = WireWriter::new();
        reply.write(&mut w, ctx).unwrap();
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        let back = Reply::read(reply.op(), &mut r, ctx).await.unwrap();
        assert!(
            r.read_u64_or_eof("rest").await.unwrap().is_none(),
            "trailing bytes"
        );
        back
    }

    #[tokio::test]
    async fn query_path_info_gates() {
        let info = UnkeyedPathInfo::from(&ValidPathInfo::new(
            path("x"),
            Hash::compute(HashAlgo::Sha256, b"x"),
        ));
        let some = Reply::QueryPathInfo(Some(info.clone()));
        let none = Reply::QueryPathInfo(None);
        // The borrowing writer gives the same bytes as the reply value, at every version.
        let full = ValidPathInfo {
            deriver: Some(path("x.drv")),
            references: [path("x"), path("y")].into(),
            registration_time: 7,
            nar_size: 120,
            ultimate: true,
            sigs: ["k:c2ln".to_owned()].into(),
            ca: Some(
                "text:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
                    .parse()
                    .unwrap(),
            ),
            ..ValidPathInfo::new(path("x"), Hash::compute(HashAlgo::Sha256, b"x"))
        };
        for minor in [15, 16, 17, 34, 38] {
            let c = ctx(minor);
            let mut by_value = WireWriter::new();
            Reply::QueryPathInfo(Some(UnkeyedPathInfo::from(&full)))
                .write(&mut by_value, &c)
                .unwrap();
            let mut borrowed = WireWriter::new();
            Reply::write_query_path_info(&mut borrowed, &c, Some(&full)).unwrap();
            assert_eq!(borrowed.as_bytes(), by_value.as_bytes(), "1.{minor}");
            let mut absent = WireWriter::new();
            let result = Reply::write_query_path_info(&mut absent, &c, None);
            assert_eq!(result.is_ok(), minor >= 17, "1.{minor}");
        }
        assert_eq!(round_trip(&some, &ctx(34)).await, some);
        assert_eq!(round_trip(&none, &ctx(34)).await, none);
        let old = ctx(16);
        let Reply::QueryPathInfo(Some(back)) = round_trip(&some, &old).await else {
            panic!()
        };
        assert_eq!(back.nar_hash, info.nar_hash);
        assert!(none.write(&mut WireWriter::new(), &old).is_err());
    }

    #[tokio::test]
    async fn realisation_reply_layouts() {
        let found = Realisation {
            id: placeholder_drv_output("out"),
            out_path: path("out"),
            signatures: ["k:AAAA".to_string()].into(),
            dependent_realisations: Map::new(),
        };
        let mut feature = ctx(38);
        feature
            .features
            .insert(FEATURE_REALISATION_WITH_PATH_NOT_HASH.into());
        for ctx in [ctx(30), ctx(31), feature] {
            for value in [Some(&found), None] {
                let reply = Reply::QueryRealisation(RealisationReply::for_context(value, &ctx));
                assert_eq!(round_trip(&reply, &ctx).await, reply);
            }
        }
        let wrong = Reply::QueryRealisation(RealisationReply::Json(None));
        assert!(wrong.write(&mut WireWriter::new(), &ctx(30)).is_err());
    }

    #[tokio::test]
    async fn misc_round_trips() {
        let c = ctx(34);
        let replies = [
            Reply::IsValidPath(false),
            Reply::QueryPathHash(Hash::compute(HashAlgo::Sha256, b"y")),
            Reply::QueryReferrers([path("a"), path("b")].into()),
            Reply::BuildPaths,
            Reply::FindRoots(vec![GcRoot {
                link: "{censored}".into(),
                target: path("a"),
            }]),
            Reply::QueryDeriver(None),
            Reply::QuerySubstitutablePathInfo(Some(SubstitutablePathInfo::default())),
            Reply::QueryDerivationOutputMap(
                [("out".to_string(), Some(path("o"))), ("dev".into(), None)].into(),
            ),
            Reply::ImportPaths(vec![path("b"), path("a")]),
            Reply::AddPermRoot("/home/u/result".into()),
            Reply::SetOptions,
        ];
        for reply in &replies {
            assert_eq!(&round_trip(reply, &c).await, reply);
        }
    }

    #[tokio::test]
    async fn ack_is_one() {
        let mut w = WireWriter::new();
        Reply::AddTempRoot.write(&mut w, &ctx(34)).unwrap();
        assert_eq!(w.as_bytes(), &1u64.to_le_bytes());
    }
}
