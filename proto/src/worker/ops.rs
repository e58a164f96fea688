//! Operation codes (protocol-facts §3.3) and how each op's data travels.

use tokio::io::AsyncRead;

use super::version::ProtocolVersion;
use crate::wire::{WireError, WireReader};

macro_rules! ops {
    ( $( $(#[$meta:meta])* $name:ident = $code:literal, )* ) => {
        /// A worker operation, numbered as upstream.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Op {
            $( $(#[$meta])* $name = $code, )*
        }

        impl Op {
            /// Every op, in code order.
            pub const ALL: &'static [Op] = &[ $( Op::$name, )* ];

            /// The op for a code, if there is one.
            pub const fn from_code(code: u64) -> Option<Op> {
                match code {
                    $( $code => Some(Op::$name), )*
                    _ => None,
                }
            }

            /// The op's name as upstream spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Op::$name => stringify!($name), )*
                }
            }
        }
    };
}

ops! {
    /// `path` → `bool`.
    IsValidPath = 1,
    /// Obsolete since 1.12; `path` → `bool`.
    HasSubstitutes = 3,
    /// Obsolete; `path` → base16 narHash.
    QueryPathHash = 4,
    /// Obsolete; `path` → `set<path>`.
    QueryReferences = 5,
    /// `path` → `set<path>`.
    QueryReferrers = 6,
    /// Add content to the store (two layouts, split at 1.25).
    AddToStore = 7,
    /// Obsolete since 1.25; name, text, references → `path`.
    AddTextToStore = 8,
    /// Derived paths, build mode (≥ 1.15) → `u64` 1.
    BuildPaths = 9,
    /// `path` → `u64` 1.
    EnsurePath = 10,
    /// `path` → `u64` 1.
    AddTempRoot = 11,
    /// Symlink path → `u64` 1.
    AddIndirectRoot = 12,
    /// Obsolete no-op → `u64` 1.
    SyncWithGC = 13,
    /// → list of (link, path).
    FindRoots = 14,
    /// Obsolete (removed in Nix 2.32); `path`, `u64` → data via STDERR_WRITE, then `u64` 1.
    ExportPath = 16,
    /// Obsolete; `path` → `opt_path`.
    QueryDeriver = 18,
    /// Client settings → nothing.
    SetOptions = 19,
    /// GC request → GC result.
    CollectGarbage = 20,
    /// Obsolete; `path` → optional substitutable info.
    QuerySubstitutablePathInfo = 21,
    /// Obsolete since 1.22; `path` → `set<path>`.
    QueryDerivationOutputs = 22,
    /// → `set<path>`.
    QueryAllValidPaths = 23,
    /// Removed in Nix 2.0; answered with a fatal "invalid operation".
    QueryFailedPaths = 24,
    /// Removed in Nix 2.0; answered with a fatal "invalid operation".
    ClearFailedPaths = 25,
    /// `path` → valid flag (≥ 1.17) and unkeyed path info.
    QueryPathInfo = 26,
    /// Obsolete (removed in Nix 2.32); data via STDERR_READ → `list<path>`.
    ImportPaths = 27,
    /// Obsolete; `path` → `list<str>`.
    QueryDerivationOutputNames = 28,
    /// Hash part → `opt_path`.
    QueryPathFromHashPart = 29,
    /// Paths (with CA from 1.22) → substitutable infos.
    QuerySubstitutablePathInfos = 30,
    /// `set<path>`, substitute flag (≥ 1.27) → `set<path>`.
    QueryValidPaths = 31,
    /// `set<path>` → `set<path>`.
    QuerySubstitutablePaths = 32,
    /// `path` → `set<path>`.
    QueryValidDerivers = 33,
    /// → `u64` 1.
    OptimiseStore = 34,
    /// checkContents, repair → errors found.
    VerifyStore = 35,
    /// drv path, BasicDerivation, build mode → BuildResult.
    BuildDerivation = 36,
    /// `path`, signatures → `u64` 1.
    AddSignatures = 37,
    /// `path` → a bare NAR after STDERR_LAST.
    NarFromPath = 38,
    /// Path info, repair, dontCheckSigs, then the NAR → nothing.
    AddToStoreNar = 39,
    /// Derived paths → missing info.
    QueryMissing = 40,
    /// drv `path` → map output name → `opt_path`.
    QueryDerivationOutputMap = 41,
    /// A realisation → nothing.
    RegisterDrvOutput = 42,
    /// A derivation output → its realisation, if any.
    QueryRealisation = 43,
    /// repair, dontCheckSigs, framed entries → nothing.
    AddMultipleToStore = 44,
    /// drv base name, framed log → `u64` 1.
    AddBuildLog = 45,
    /// Derived paths, build mode → keyed build results (≥ 1.34).
    BuildPathsWithResults = 46,
    /// `path`, gc-root path → gc-root path (≥ 1.36).
    AddPermRoot = 47,
    /// Builder-rpc only: SingleDerivedPath, output → `u64` 1.
    SubmitOutput = 1000,
    /// Recursive-Nix only: name, method, framed dump → keyed path info.
    AddToStoreScanning = 1001,
}

impl Op {
    /// The wire code.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// How the op's bulk data (if any) follows its arguments at `version`.
    pub fn upload(self, version: ProtocolVersion) -> Upload {
        match self {
            Op::AddToStore if version.at_least(25) => Upload::Framed,
            Op::AddToStore => Upload::BareNar,
            Op::AddToStoreNar if version.at_least(23) => Upload::Framed,
            Op::AddToStoreNar if version.at_least(21) => Upload::Tunnel,
            Op::AddToStoreNar => Upload::BareNar,
            Op::AddMultipleToStore | Op::AddBuildLog | Op::AddToStoreScanning => Upload::Framed,
            Op::ImportPaths => Upload::Tunnel,
            _ => Upload::None,
        }
    }
}

/// How an op's bulk data reaches the daemon after the arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// No data beyond the arguments.
    None,
    /// A framed stream ([`crate::wire::FramedReader`]); must be drained even on errors.
    Framed,
    /// Pulled with `STDERR_READ` requests ([`crate::wire::TunnelReader`]) during the work phase.
    Tunnel,
    /// A NAR follows directly, with no length; parse it to find its end.
    BareNar,
}

/// Reads the next op code. `Ok(None)` is a clean end of file before the code (a normal
/// close); an unknown code is [`WireError::InvalidCode`] with field `"operation"`, after which
/// the reference daemon sends "invalid operation N" and closes the connection.
pub async fn read_op<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Option<Op>, WireError> {
    const FIELD: &str = "operation";
    let Some(code) = r.read_u64_or_eof(FIELD).await? else {
        return Ok(None);
    };
    if code > u64::from(u32::MAX) {
        return Err(WireError::IntegerTooLarge {
            field: FIELD,
            value: code,
            ty: "unsigned int",
        });
    }
    Op::from_code(code).map(Some).ok_or(WireError::InvalidCode {
        field: FIELD,
        value: code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn codes_match_upstream() {
        assert_eq!(Op::ALL.len(), 46);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(*op));
        }
        assert_eq!(Op::SetOptions.code(), 19);
        assert_eq!(Op::AddPermRoot.code(), 47);
        assert_eq!(Op::AddToStoreScanning.code(), 1001);
        for missing in [0, 2, 15, 17, 48, 999, 1002] {
            assert_eq!(Op::from_code(missing), None);
        }
        assert_eq!(Op::QueryPathInfo.name(), "QueryPathInfo");
    }

    #[test]
    fn upload_paths_by_version() {
        let v = ProtocolVersion::v1;
        assert_eq!(Op::AddToStoreNar.upload(v(34)), Upload::Framed);
        assert_eq!(Op::AddToStoreNar.upload(v(22)), Upload::Tunnel);
        assert_eq!(Op::AddToStoreNar.upload(v(21)), Upload::Tunnel);
        assert_eq!(Op::AddToStoreNar.upload(v(20)), Upload::BareNar);
        assert_eq!(Op::AddToStore.upload(v(25)), Upload::Framed);
        assert_eq!(Op::AddToStore.upload(v(24)), Upload::BareNar);
        assert_eq!(Op::ImportPaths.upload(v(34)), Upload::Tunnel);
        assert_eq!(Op::IsValidPath.upload(v(34)), Upload::None);
    }

    #[tokio::test]
    async fn reading_op_codes() {
        let mut bytes = Vec::new();
        for code in [19u64, 2, 1 << 33] {
            bytes.extend_from_slice(&code.to_le_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut r = WireReader::new(Cursor::new(bytes));
        assert_eq!(read_op(&mut r).await.unwrap(), Some(Op::SetOptions));
        assert!(matches!(
            read_op(&mut r).await,
            Err(WireError::InvalidCode { value: 2, .. })
        ));
        assert!(matches!(
            read_op(&mut r).await,
            Err(WireError::IntegerTooLarge { .. })
        ));
        assert!(read_op(&mut r).await.unwrap_err().is_eof());
        let mut r = WireReader::new(Cursor::new(Vec::new()));
        assert_eq!(read_op(&mut r).await.unwrap(), None);
    }
}
