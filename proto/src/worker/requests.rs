//! The arguments of every op (what follows the op code), in both directions.
//!
//! Each request type has `async fn read(r, ctx)` (daemon side) and `fn write(&self, w, ctx)`
//! (client side, tests). [`Request`] dispatches on the [`Op`]. Bulk data that follows the
//! arguments (framed uploads, tunnelled data, bare NARs; see [`Op::upload`]) is **not** part of
//! the request: the caller reads it during the work phase.
//!
//! Strictness follows the reference (protocol-facts §1.1): flags the reference reads as a typed
//! `bool` must be 0 or 1, flags it reads as an integer are non-zero = true, and fields it reads
//! as `unsigned int` must fit in 32 bits.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use tokio::io::AsyncRead;

use super::ops::Op;
use super::types::{
    read_opt_ca, write_opt_ca, BasicDerivation, BuildMode, CaMethodWithAlgo, CollectGarbageRequest,
    DerivedPath, DrvOutput, DrvPathOutput, PathRealisation, Realisation, SetOptions,
    SingleDerivedPath, ValidPathInfo, FULL_PATH_INFO_VERSION,
};
use super::version::WireContext;
use crate::content_address::{ContentAddress, FileIngestionMethod};
use crate::hash::HashAlgo;
use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};

/// Reads a file-system path (not necessarily UTF-8).
pub(crate) async fn read_fs_path<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<PathBuf, WireError> {
    Ok(PathBuf::from(std::ffi::OsString::from_vec(
        r.read_bytes(field).await?,
    )))
}

/// Writes a file-system path.
pub(crate) fn write_fs_path(w: &mut WireWriter, path: &std::path::Path) {
    w.put_bytes(path.as_os_str().as_bytes());
}

macro_rules! path_requests {
    ( $( $(#[$meta:meta])* $name:ident, )* ) => { $(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The store path.
            pub path: StorePath,
        }

        impl $name {
            /// Reads the arguments.
            pub async fn read<R: AsyncRead + Unpin>(
                r: &mut WireReader<R>,
                ctx: &WireContext,
            ) -> Result<Self, WireError> {
                Ok($name { path: r.read_path("path", &ctx.store_dir).await? })
            }

            /// Writes the arguments.
            pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
                w.put_path(&ctx.store_dir, &self.path);
                Ok(())
            }
        }
    )* };
}

macro_rules! empty_requests {
    ( $( $(#[$meta:meta])* $name:ident, )* ) => { $(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl $name {
            /// There are no arguments to read.
            pub async fn read<R: AsyncRead + Unpin>(
                _r: &mut WireReader<R>,
                _ctx: &WireContext,
            ) -> Result<Self, WireError> {
                Ok($name)
            }

            /// There are no arguments to write.
            pub fn write(&self, _w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
                Ok(())
            }
        }
    )* };
}

path_requests! {
    /// Op 1: is the path valid?
    IsValidPath,
    /// Op 3 (obsolete): does a substituter have the path?
    HasSubstitutes,
    /// Op 4 (obsolete): the path's NAR hash.
    QueryPathHash,
    /// Op 5 (obsolete): the path's references.
    QueryReferences,
    /// Op 6: paths referring to the path.
    QueryReferrers,
    /// Op 10: make the path valid (substitute it if needed).
    EnsurePath,
    /// Op 11: register a temporary GC root for this connection.
    AddTempRoot,
    /// Op 18 (obsolete): the path's deriver.
    QueryDeriver,
    /// Op 21 (obsolete): substitutable info of one path.
    QuerySubstitutablePathInfo,
    /// Op 22 (obsolete): output paths of a derivation.
    QueryDerivationOutputs,
    /// Op 26: path info.
    QueryPathInfo,
    /// Op 28 (obsolete): output names of a derivation.
    QueryDerivationOutputNames,
    /// Op 33: valid derivers of a path.
    QueryValidDerivers,
    /// Op 38: the path as a NAR.
    NarFromPath,
    /// Op 41: output name → path map of a derivation.
    QueryDerivationOutputMap,
}

empty_requests! {
    /// Op 13 (obsolete no-op).
    SyncWithGC,
    /// Op 14: list GC roots.
    FindRoots,
    /// Op 23: all valid paths.
    QueryAllValidPaths,
    /// Op 24 (removed).
    QueryFailedPaths,
    /// Op 25 (removed).
    ClearFailedPaths,
    /// Op 27 (obsolete): the data arrives through STDERR_READ during the work phase.
    ImportPaths,
    /// Op 34: deduplicate the store.
    OptimiseStore,
}

/// Op 7, AddToStore. The layout changed at 1.25; the data follows (framed from 1.25, a bare NAR
/// before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddToStore {
    /// ≥ 1.25.
    Current {
        /// The store path name.
        name: String,
        /// How to hash the data (`text:sha256`, `fixed:r:sha256`, ...).
        method: CaMethodWithAlgo,
        /// References of the new path.
        references: BTreeSet<StorePath>,
        /// Repair flag (strict bool).
        repair: bool,
    },
    /// < 1.25.
    Legacy {
        /// The store path name.
        base_name: String,
        /// The obsolete "fixed" flag (strict bool). When false the reference forces sha256 with
        /// NAR ingestion.
        fixed: bool,
        /// 1 = NAR ingestion, 0 = flat (values above 1 are refused).
        recursive: bool,
        /// The hash algorithm name, as sent (ignored when `fixed` is false).
        hash_algo: String,
    },
}

impl AddToStore {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        if ctx.at_least(25) {
            Ok(AddToStore::Current {
                name: r.read_string("name").await?,
                method: CaMethodWithAlgo::read(r, "content-address method").await?,
                references: r.read_path_set("references", &ctx.store_dir).await?,
                repair: r.read_bool_strict("repair").await?,
            })
        } else {
            let base_name = r.read_string("name").await?;
            let fixed = r.read_bool_strict("fixed").await?;
            let recursive = match r.read_u8("recursive").await? {
                0 => false,
                1 => true,
                other => {
                    return Err(WireError::InvalidCode {
                        field: "file ingestion method",
                        value: u64::from(other),
                    })
                }
            };
            let hash_algo = r.read_string("hash algorithm").await?;
            Ok(AddToStore::Legacy {
                base_name,
                fixed,
                recursive,
                hash_algo,
            })
        }
    }

    /// Writes the arguments. The variant must match the negotiated version.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        match self {
            AddToStore::Current {
                name,
                method,
                references,
                repair,
            } if ctx.at_least(25) => {
                w.put_str(name);
                method.write(w);
                w.put_paths(&ctx.store_dir, references);
                w.put_bool(*repair);
            }
            AddToStore::Legacy {
                base_name,
                fixed,
                recursive,
                hash_algo,
            } if !ctx.at_least(25) => {
                w.put_str(base_name);
                w.put_bool(*fixed);
                w.put_bool(*recursive);
                w.put_str(hash_algo);
            }
            _ => {
                return Err(WireError::Unrepresentable {
                    what: "AddToStore arguments",
                    version: ctx.version.to_string(),
                    reason: "the layout changed at 1.25",
                })
            }
        }
        Ok(())
    }

    /// The legacy form's effective ingestion: `fixed == false` means sha256 with NAR
    /// ingestion, whatever was sent (the reference's compatibility rule).
    pub fn legacy_ingestion(
        fixed: bool,
        recursive: bool,
        hash_algo: &str,
    ) -> Result<(FileIngestionMethod, HashAlgo), WireError> {
        if !fixed {
            return Ok((FileIngestionMethod::Recursive, HashAlgo::Sha256));
        }
        let algo = HashAlgo::from_name(hash_algo).map_err(|source| WireError::InvalidHash {
            field: "hash algorithm",
            source,
        })?;
        let method = if recursive {
            FileIngestionMethod::Recursive
        } else {
            FileIngestionMethod::Flat
        };
        Ok((method, algo))
    }
}

/// Op 8 (obsolete since 1.25): add a text file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddTextToStore {
    /// The store path name.
    pub name: String,
    /// The contents (raw bytes, [`Limits::max_text`](crate::wire::Limits::max_text)).
    pub text: Vec<u8>,
    /// References.
    pub references: BTreeSet<StorePath>,
}

impl AddTextToStore {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddTextToStore {
            name: r.read_string("name").await?,
            text: r.read_text_bytes("text").await?,
            references: r.read_path_set("references", &ctx.store_dir).await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_str(&self.name);
        w.put_bytes(&self.text);
        w.put_paths(&ctx.store_dir, &self.references);
        Ok(())
    }
}

/// Op 9: build derived paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPaths {
    /// What to build.
    pub paths: Vec<DerivedPath>,
    /// The mode (sent from 1.15 on; [`BuildMode::Normal`] below).
    pub mode: BuildMode,
}

impl BuildPaths {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let paths = DerivedPath::read_list(r, ctx).await?;
        let mode = if ctx.at_least(15) {
            BuildMode::read(r).await?
        } else {
            BuildMode::Normal
        };
        Ok(BuildPaths { paths, mode })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        DerivedPath::write_list(&self.paths, w, ctx)?;
        if ctx.at_least(15) {
            self.mode.write(w);
        } else if self.mode != BuildMode::Normal {
            return Err(WireError::Unrepresentable {
                what: "a build mode",
                version: ctx.version.to_string(),
                reason: "the build mode is only sent from 1.15 on",
            });
        }
        Ok(())
    }
}

/// Op 12: register an indirect GC root (a symlink somewhere outside the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddIndirectRoot {
    /// The symlink's path as sent (the reference makes it absolute against its cwd, `/`).
    pub path: PathBuf,
}

impl AddIndirectRoot {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddIndirectRoot {
            path: read_fs_path(r, "indirect root").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        write_fs_path(w, &self.path);
        Ok(())
    }
}

/// Op 16 (obsolete): export a path through STDERR_WRITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPath {
    /// The path.
    pub path: StorePath,
    /// The obsolete "sign" flag (ignored).
    pub sign: u32,
}

impl ExportPath {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(ExportPath {
            path: r.read_path("path", &ctx.store_dir).await?,
            sign: r.read_u32("sign flag").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_path(&ctx.store_dir, &self.path);
        w.put_u64(u64::from(self.sign));
        Ok(())
    }
}

/// Op 29: find a valid path by its hash part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPathFromHashPart {
    /// The hash part as sent (the daemon refuses lengths other than 32).
    pub hash_part: String,
}

impl QueryPathFromHashPart {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(QueryPathFromHashPart {
            hash_part: r.read_string("hash part").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        w.put_str(&self.hash_part);
        Ok(())
    }
}

/// Op 30: substitutable infos of several paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySubstitutablePathInfos {
    /// Paths, with their content address when known (≥ 1.22; below, a `set<path>` is sent and
    /// every CA is `None`).
    pub paths: BTreeMap<StorePath, Option<ContentAddress>>,
}

impl QuerySubstitutablePathInfos {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let mut paths = BTreeMap::new();
        if ctx.at_least(22) {
            let n = r.read_count("paths").await?;
            for _ in 0..n {
                let path = r.read_path("path", &ctx.store_dir).await?;
                let ca = read_opt_ca(r, "content address").await?;
                paths.insert(path, ca);
            }
        } else {
            for path in r.read_path_set("paths", &ctx.store_dir).await? {
                paths.insert(path, None);
            }
        }
        Ok(QuerySubstitutablePathInfos { paths })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        if ctx.at_least(22) {
            w.put_u64(self.paths.len() as u64);
            for (path, ca) in &self.paths {
                w.put_path(&ctx.store_dir, path);
                write_opt_ca(w, ca.as_ref());
            }
        } else {
            w.put_paths(&ctx.store_dir, self.paths.keys());
        }
        Ok(())
    }
}

/// Op 31: which of these paths are valid?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryValidPaths {
    /// The paths.
    pub paths: BTreeSet<StorePath>,
    /// Substitute missing paths first (≥ 1.27; lenient flag).
    pub substitute: bool,
}

impl QueryValidPaths {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let paths = r.read_path_set("paths", &ctx.store_dir).await?;
        let substitute = if ctx.at_least(27) {
            r.read_u32("substitute").await? != 0
        } else {
            false
        };
        Ok(QueryValidPaths { paths, substitute })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_paths(&ctx.store_dir, &self.paths);
        if ctx.at_least(27) {
            w.put_bool(self.substitute);
        }
        Ok(())
    }
}

/// Op 32: which of these paths can be substituted?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySubstitutablePaths {
    /// The paths.
    pub paths: BTreeSet<StorePath>,
}

impl QuerySubstitutablePaths {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(QuerySubstitutablePaths {
            paths: r.read_path_set("paths", &ctx.store_dir).await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_paths(&ctx.store_dir, &self.paths);
        Ok(())
    }
}

/// Op 35: verify the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyStore {
    /// Rehash every path (strict bool).
    pub check_contents: bool,
    /// Repair what is broken (strict bool; trusted clients only).
    pub repair: bool,
}

impl VerifyStore {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(VerifyStore {
            check_contents: r.read_bool_strict("check contents").await?,
            repair: r.read_bool_strict("repair").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        w.put_bool(self.check_contents);
        w.put_bool(self.repair);
        Ok(())
    }
}

/// Op 36: build a derivation the client sends inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDerivation {
    /// The derivation's path (its name gives the derivation name).
    pub drv_path: StorePath,
    /// The derivation.
    pub drv: BasicDerivation,
    /// The build mode.
    pub mode: BuildMode,
}

impl BuildDerivation {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(BuildDerivation {
            drv_path: r.read_path("derivation path", &ctx.store_dir).await?,
            drv: BasicDerivation::read(r, ctx).await?,
            mode: BuildMode::read(r).await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_path(&ctx.store_dir, &self.drv_path);
        self.drv.write(w, ctx);
        self.mode.write(w);
        Ok(())
    }
}

/// Op 37: add signatures to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSignatures {
    /// The path.
    pub path: StorePath,
    /// Signatures, `keyname:base64`.
    pub sigs: BTreeSet<String>,
}

impl AddSignatures {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddSignatures {
            path: r.read_path("path", &ctx.store_dir).await?,
            sigs: r.read_string_set("signatures").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_path(&ctx.store_dir, &self.path);
        w.put_strings(&self.sigs);
        Ok(())
    }
}

/// Op 39: add a path from a NAR. The NAR follows: framed (≥ 1.23), through STDERR_READ
/// (1.21–1.22) or bare (< 1.21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddToStoreNar {
    /// The path and its claimed metadata (all fields, whatever the version).
    pub info: ValidPathInfo,
    /// Repair flag (strict bool).
    pub repair: bool,
    /// Skip signature checks (strict bool; honoured for trusted clients only).
    pub dont_check_sigs: bool,
}

impl AddToStoreNar {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddToStoreNar {
            info: ValidPathInfo::wire_read_at(r, &ctx.store_dir, FULL_PATH_INFO_VERSION).await?,
            repair: r.read_bool_strict("repair").await?,
            dont_check_sigs: r.read_bool_strict("dont check sigs").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        self.info
            .wire_write_at(w, &ctx.store_dir, FULL_PATH_INFO_VERSION);
        w.put_bool(self.repair);
        w.put_bool(self.dont_check_sigs);
        Ok(())
    }
}

/// Op 40: what would building these paths take?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMissing {
    /// The targets.
    pub targets: Vec<DerivedPath>,
}

impl QueryMissing {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(QueryMissing {
            targets: DerivedPath::read_list(r, ctx).await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        DerivedPath::write_list(&self.targets, w, ctx)
    }
}

/// Op 42: register a realisation of a derivation output. (The reference reads these
/// arguments after entering the work phase; clients cannot tell.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterDrvOutput {
    /// < 1.31: DrvOutput id and output path **base name**.
    Legacy {
        /// The derivation output.
        id: DrvOutput,
        /// The output path.
        out_path: StorePath,
    },
    /// ≥ 1.31: realisation JSON.
    Json(Realisation),
    /// With `realisation-with-path-not-hash`: the binary form.
    Binary(PathRealisation),
}

impl RegisterDrvOutput {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        if ctx.realisation_with_path() {
            Ok(RegisterDrvOutput::Binary(
                PathRealisation::wire_read(r, ctx).await?,
            ))
        } else if ctx.at_least(31) {
            Ok(RegisterDrvOutput::Json(Realisation::wire_read(r).await?))
        } else {
            Ok(RegisterDrvOutput::Legacy {
                id: DrvOutput::wire_read(r).await?,
                out_path: r.read_base_name("output path").await?,
            })
        }
    }

    /// Writes the arguments. The variant must match the connection.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        match self {
            RegisterDrvOutput::Binary(keyed) if ctx.realisation_with_path() => {
                keyed.wire_write(w, ctx)
            }
            RegisterDrvOutput::Json(realisation)
                if !ctx.realisation_with_path() && ctx.at_least(31) =>
            {
                realisation.wire_write(w)
            }
            RegisterDrvOutput::Legacy { id, out_path } if !ctx.at_least(31) => {
                id.wire_write(w);
                w.put_str(out_path.base_name());
            }
            _ => {
                return Err(WireError::Unrepresentable {
                    what: "RegisterDrvOutput arguments",
                    version: ctx.version.to_string(),
                    reason:
                        "the layout depends on 1.31 and the realisation-with-path-not-hash feature",
                })
            }
        }
        Ok(())
    }
}

/// Op 43: look up the realisation of a derivation output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRealisation {
    /// Without `realisation-with-path-not-hash`: the DrvOutput id string.
    Id(DrvOutput),
    /// With the feature: drv path and output name.
    Output(DrvPathOutput),
}

impl QueryRealisation {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        if ctx.realisation_with_path() {
            Ok(QueryRealisation::Output(
                DrvPathOutput::wire_read(r, ctx).await?,
            ))
        } else {
            Ok(QueryRealisation::Id(DrvOutput::wire_read(r).await?))
        }
    }

    /// Writes the arguments. The variant must match the connection.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        match self {
            QueryRealisation::Output(output) if ctx.realisation_with_path() => {
                output.wire_write(w, ctx)
            }
            QueryRealisation::Id(id) if !ctx.realisation_with_path() => id.wire_write(w),
            _ => {
                return Err(WireError::Unrepresentable {
                    what: "QueryRealisation arguments",
                    version: ctx.version.to_string(),
                    reason: "the layout depends on the realisation-with-path-not-hash feature",
                })
            }
        }
        Ok(())
    }
}

/// Op 44: add several paths. A framed stream follows: `u64` count, then per path a keyed path
/// info in the 1.16 layout and exactly `narSize` NAR bytes (see [`read_multiple_count`] and
/// [`write_multiple_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddMultipleToStore {
    /// Repair flag (strict bool).
    pub repair: bool,
    /// Skip signature checks (strict bool; honoured for trusted clients only).
    pub dont_check_sigs: bool,
}

impl AddMultipleToStore {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddMultipleToStore {
            repair: r.read_bool_strict("repair").await?,
            dont_check_sigs: r.read_bool_strict("dont check sigs").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        w.put_bool(self.repair);
        w.put_bool(self.dont_check_sigs);
        Ok(())
    }
}

/// Reads the entry count at the start of AddMultipleToStore's framed payload (pass a
/// [`WireReader`] wrapped around the [`crate::wire::FramedReader`]). Entries are streamed one
/// by one, so the count is not capped; each entry's info is then read with
/// [`ValidPathInfo::wire_read_at`] at [`FULL_PATH_INFO_VERSION`], followed by
/// exactly `nar_size` bytes of NAR, which must be consumed even for paths that are already
/// valid.
pub async fn read_multiple_count<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
) -> Result<u64, WireError> {
    r.read_u64("path count").await
}

/// Encodes one AddMultipleToStore entry (client side): the info in the 1.16 layout, then the
/// NAR bytes. Prefix the entries with their count as a `u64` and send the whole as a framed
/// stream.
pub fn write_multiple_entry(
    w: &mut WireWriter,
    ctx: &WireContext,
    info: &ValidPathInfo,
    nar: &[u8],
) {
    info.wire_write_at(w, &ctx.store_dir, FULL_PATH_INFO_VERSION);
    w.put_raw(nar);
}

/// Op 45: add a build log. The log follows as a framed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddBuildLog {
    /// The derivation, sent as a **base name** (no store directory).
    pub drv_path: StorePath,
}

impl AddBuildLog {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddBuildLog {
            drv_path: r.read_base_name("derivation").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        w.put_str(self.drv_path.base_name());
        Ok(())
    }
}

/// Op 46: build and report a result per derived path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPathsWithResults {
    /// What to build. Replies must repeat each one exactly.
    pub paths: Vec<DerivedPath>,
    /// The build mode.
    pub mode: BuildMode,
}

impl BuildPathsWithResults {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(BuildPathsWithResults {
            paths: DerivedPath::read_list(r, ctx).await?,
            mode: BuildMode::read(r).await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        DerivedPath::write_list(&self.paths, w, ctx)?;
        self.mode.write(w);
        Ok(())
    }
}

/// Op 47: make a permanent GC root (≥ 1.36, trusted clients only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddPermRoot {
    /// The store path to root.
    pub path: StorePath,
    /// Where to put the root symlink.
    pub gc_root: PathBuf,
}

impl AddPermRoot {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddPermRoot {
            path: r.read_path("path", &ctx.store_dir).await?,
            gc_root: read_fs_path(r, "gc root").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_path(&ctx.store_dir, &self.path);
        write_fs_path(w, &self.gc_root);
        Ok(())
    }
}

/// Op 1000 (builder-rpc only): report a built output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutput {
    /// The derivation output being submitted.
    pub path: SingleDerivedPath,
    /// The output name.
    pub output: String,
}

impl SubmitOutput {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(SubmitOutput {
            path: SingleDerivedPath::read(r, ctx).await?,
            output: r.read_string("output name").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        self.path.write(w, ctx);
        w.put_str(&self.output);
        Ok(())
    }
}

/// Op 1001 (recursive Nix only): add content and scan it for references. The dump follows as
/// a framed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddToStoreScanning {
    /// The store path name.
    pub name: String,
    /// How to hash the data.
    pub method: CaMethodWithAlgo,
}

impl AddToStoreScanning {
    /// Reads the arguments.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        _ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Ok(AddToStoreScanning {
            name: r.read_string("name").await?,
            method: CaMethodWithAlgo::read(r, "content-address method").await?,
        })
    }

    /// Writes the arguments.
    pub fn write(&self, w: &mut WireWriter, _ctx: &WireContext) -> Result<(), WireError> {
        w.put_str(&self.name);
        self.method.write(w);
        Ok(())
    }
}

macro_rules! request_enum {
    ( $( $variant:ident($ty:ty), )* ) => {
        /// The arguments of any op. Variants are named after the [`Op`] they belong to.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $(
                #[doc = concat!("Op ", stringify!($variant), ".")]
                $variant($ty),
            )*
        }

        impl Request {
            /// The op these arguments belong to.
            pub fn op(&self) -> Op {
                match self {
                    $( Request::$variant(_) => Op::$variant, )*
                }
            }

            /// Reads the arguments of `op` (after its code). Starts a new message budget.
            pub async fn read<R: AsyncRead + Unpin>(
                op: Op,
                r: &mut WireReader<R>,
                ctx: &WireContext,
            ) -> Result<Self, WireError> {
                r.begin_message();
                Ok(match op {
                    $( Op::$variant => Request::$variant(<$ty>::read(r, ctx).await?), )*
                })
            }

            /// Writes the op code and the arguments.
            pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
                w.put_u64(self.op().code());
                match self {
                    $( Request::$variant(req) => req.write(w, ctx), )*
                }
            }
        }
    };
}

request_enum! {
    IsValidPath(IsValidPath),
    HasSubstitutes(HasSubstitutes),
    QueryPathHash(QueryPathHash),
    QueryReferences(QueryReferences),
    QueryReferrers(QueryReferrers),
    AddToStore(AddToStore),
    AddTextToStore(AddTextToStore),
    BuildPaths(BuildPaths),
    EnsurePath(EnsurePath),
    AddTempRoot(AddTempRoot),
    AddIndirectRoot(AddIndirectRoot),
    SyncWithGC(SyncWithGC),
    FindRoots(FindRoots),
    ExportPath(ExportPath),
    QueryDeriver(QueryDeriver),
    SetOptions(SetOptions),
    CollectGarbage(CollectGarbageRequest),
    QuerySubstitutablePathInfo(QuerySubstitutablePathInfo),
    QueryDerivationOutputs(QueryDerivationOutputs),
    QueryAllValidPaths(QueryAllValidPaths),
    QueryFailedPaths(QueryFailedPaths),
    ClearFailedPaths(ClearFailedPaths),
    QueryPathInfo(QueryPathInfo),
    ImportPaths(ImportPaths),
    QueryDerivationOutputNames(QueryDerivationOutputNames),
    QueryPathFromHashPart(QueryPathFromHashPart),
    QuerySubstitutablePathInfos(QuerySubstitutablePathInfos),
    QueryValidPaths(QueryValidPaths),
    QuerySubstitutablePaths(QuerySubstitutablePaths),
    QueryValidDerivers(QueryValidDerivers),
    OptimiseStore(OptimiseStore),
    VerifyStore(VerifyStore),
    BuildDerivation(BuildDerivation),
    AddSignatures(AddSignatures),
    NarFromPath(NarFromPath),
    AddToStoreNar(AddToStoreNar),
    QueryMissing(QueryMissing),
    QueryDerivationOutputMap(QueryDerivationOutputMap),
    RegisterDrvOutput(RegisterDrvOutput),
    QueryRealisation(QueryRealisation),
    AddMultipleToStore(AddMultipleToStore),
    AddBuildLog(AddBuildLog),
    BuildPathsWithResults(BuildPathsWithResults),
    AddPermRoot(AddPermRoot),
    SubmitOutput(SubmitOutput),
    AddToStoreScanning(AddToStoreScanning),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::types::placeholder_drv_output;
    use crate::worker::version::ProtocolVersion;
    use std::io::Cursor;

    fn ctx(minor: u8) -> WireContext {
        WireContext::new(StoreDir::default(), ProtocolVersion::v1(minor))
    }

    fn path(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-{name}")).unwrap()
    }

    async fn round_trip(req: &Request, ctx: &WireContext) -> Request {
        let mut w = WireWriter::new();
        req.write(&mut w, ctx).unwrap();
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        let op = super::super::ops::read_op(&mut r).await.unwrap().unwrap();
        let back = Request::read(op, &mut r, ctx).await.unwrap();
        assert!(
            r.read_u64_or_eof("rest").await.unwrap().is_none(),
            "trailing bytes"
        );
        back
    }

    /// protocol-facts Appendix A.1: IsValidPath as a Nix 2.8 client sends it.
    #[tokio::test]
    async fn is_valid_path_bytes() {
        let req = Request::IsValidPath(IsValidPath {
            path: path("f.txt"),
        });
        let mut w = WireWriter::new();
        req.write(&mut w, &ctx(34)).unwrap();
        let mut expected = WireWriter::new();
        expected.put_u64(1);
        expected.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-f.txt");
        assert_eq!(w.as_bytes(), expected.as_bytes());
    }

    #[tokio::test]
    async fn version_dependent_layouts() {
        let legacy = Request::AddToStore(AddToStore::Legacy {
            base_name: "f".into(),
            fixed: true,
            recursive: false,
            hash_algo: "sha1".into(),
        });
        assert_eq!(round_trip(&legacy, &ctx(24)).await, legacy);
        assert!(legacy.write(&mut WireWriter::new(), &ctx(25)).is_err());

        let qsp = Request::QuerySubstitutablePathInfos(QuerySubstitutablePathInfos {
            paths: [(path("a"), None), (path("b"), None)].into(),
        });
        assert_eq!(round_trip(&qsp, &ctx(21)).await, qsp);
        assert_eq!(round_trip(&qsp, &ctx(22)).await, qsp);

        let qvp = Request::QueryValidPaths(QueryValidPaths {
            paths: [path("a")].into(),
            substitute: true,
        });
        assert_eq!(round_trip(&qvp, &ctx(27)).await, qvp);
        let Request::QueryValidPaths(old) = round_trip(&qvp, &ctx(26)).await else {
            panic!()
        };
        assert!(!old.substitute);

        let reg = Request::RegisterDrvOutput(RegisterDrvOutput::Legacy {
            id: placeholder_drv_output("out"),
            out_path: path("out"),
        });
        assert_eq!(round_trip(&reg, &ctx(30)).await, reg);
        assert!(reg.write(&mut WireWriter::new(), &ctx(31)).is_err());
    }

    #[tokio::test]
    async fn legacy_add_to_store_checks() {
        let mut w = WireWriter::new();
        w.put_str("f");
        w.put_u64(1);
        w.put_u64(2);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            Request::read(Op::AddToStore, &mut r, &ctx(24)).await,
            Err(WireError::InvalidCode {
                field: "file ingestion method",
                value: 2
            })
        ));
        assert_eq!(
            AddToStore::legacy_ingestion(false, false, "garbage").unwrap(),
            (FileIngestionMethod::Recursive, HashAlgo::Sha256)
        );
        assert_eq!(
            AddToStore::legacy_ingestion(true, false, "sha1").unwrap(),
            (FileIngestionMethod::Flat, HashAlgo::Sha1)
        );
        assert!(AddToStore::legacy_ingestion(true, true, "crc32").is_err());
    }

    #[tokio::test]
    async fn non_utf8_file_system_paths_survive() {
        let req = Request::AddIndirectRoot(AddIndirectRoot {
            path: PathBuf::from(std::ffi::OsString::from_vec(b"/home/\xffresult".to_vec())),
        });
        assert_eq!(round_trip(&req, &ctx(34)).await, req);
    }
}
