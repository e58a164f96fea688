//! Frontend ⇄ store-writer: everything that writes the store, the database or the state
//! directories.
//!
//! The store-writer is the only process that can write the store. It treats the frontend as
//! less trusted than itself: the frontend decides *whether* a client may ask for something
//! (trust, `allowed-users`), the store-writer decides whether the request is *well-formed and
//! true* — it recomputes every hash it is told, re-checks names and references against the
//! database, and never writes outside the store and its own state directories.
//!
//! Protocol on each channel:
//! * Phase [`Phase::Handshake`]: the frontend sends [`FrontendToStoreWriter::Hello`] first,
//!   once; the store-writer answers [`StoreWriterToFrontend::Hello`] or closes the channel.
//! * Phase [`Phase::Serving`]: any other request. Requests on one channel are served one at a
//!   time and answered in order, one reply each, either the reply the variant names or
//!   [`StoreWriterToFrontend::Error`]. For concurrency the frontend opens more channels with
//!   [`FrontendToStoreWriter::OpenChannel`] (one per client connection).
//! * A request in the wrong phase, a frame error, or a wrong descriptor count is a protocol
//!   violation: the store-writer logs it and closes the channel.
//! * Temporary roots belong to the channel they were added on and are dropped when it closes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{BuildId, IpcMessage, Phase};
use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StorePath;

/// What the store-writer takes and returns about a path: the same type the protocol and the DB
/// use. In a request ([`AddPathFromNar`]) every field is a *claim* the store-writer checks
/// (`registration_time` 0 means "now"); in a reply it is what was registered.
pub type PathInfo = crate::path_info::ValidPathInfo;

/// AddToStoreNar / AddMultipleToStore: a path whose NAR the client supplies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPathFromNar {
    /// What the client claims about the path.
    pub info: PathInfo,
    /// Replace the contents even if the path is already valid.
    pub repair: bool,
    /// Require a signature by a trusted key (or a content address that matches). The frontend
    /// sets this for every untrusted client (Nix forces `dontCheckSigs` off for them).
    pub check_sigs: bool,
    /// Part of a batch (AddMultipleToStore): the NAR is read, checked and staged as usual,
    /// but the path is registered only by the channel's next
    /// [`FrontendToStoreWriter::CommitAdditions`] (or earlier, when the channel's batch is
    /// full), together with the rest of the batch: one sync of the filesystem and one
    /// transaction for all. Ignored with `repair`, which always commits at once.
    pub defer: bool,
}

/// AddToStore (op 7) / AddTextToStore: content the client supplies, hashed by the store-writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddContent {
    /// The name part of the new path.
    pub name: String,
    /// Text, flat file, or NAR ("recursive").
    pub method: ContentAddressMethod,
    /// The hash algorithm of the content address.
    #[serde(with = "hash_algo_by_name")]
    pub hash_algo: HashAlgo,
    /// References of the new path (only text objects and NAR+SHA-256 may have any).
    pub references: BTreeSet<StorePath>,
    /// Replace the contents even if the path is already valid.
    pub repair: bool,
}

/// What a build output is expected to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// Input-addressed: the output path is fixed by the derivation.
    InputAddressed {
        /// The output path.
        path: StorePath,
    },
    /// Fixed-output: path and content hash are fixed by the derivation.
    Fixed {
        /// The output path.
        path: StorePath,
        /// The hash the contents must have.
        ca: ContentAddress,
    },
    /// Floating content-addressed: the path follows from the contents.
    Floating {
        /// How the contents are hashed.
        method: ContentAddressMethod,
        /// With which algorithm.
        #[serde(with = "hash_algo_by_name")]
        hash_algo: HashAlgo,
    },
}

/// What RegisterBuildOutputs does with the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterMode {
    /// Register outputs that are not valid yet; an output that is already valid is left as it
    /// is (its registered info is returned).
    Normal,
    /// `--check`: every output must already be valid; nothing is written. An output whose NAR
    /// hash differs from the registered one is [`StoreWriterError::CheckMismatch`].
    Check,
    /// `--repair` (trusted clients only): replace the contents of valid outputs too.
    Repair,
}

/// The checks a derivation asks of one output (`allowedReferences`, `disallowedReferences`,
/// `allowedRequisites`, `disallowedRequisites`, and `outputChecks`' `maxSize` and
/// `maxClosureSize`). Output names in the derivation's lists are resolved to their paths by
/// the frontend; the store-writer applies the checks before anything is registered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChecks {
    /// The output may refer only to these paths.
    pub allowed_references: Option<BTreeSet<StorePath>>,
    /// The output may not refer to any of these.
    pub disallowed_references: BTreeSet<StorePath>,
    /// The output's closure may contain only these paths (besides itself).
    pub allowed_requisites: Option<BTreeSet<StorePath>>,
    /// The output's closure may not contain any of these.
    pub disallowed_requisites: BTreeSet<StorePath>,
    /// Largest NAR size of the output.
    pub max_size: Option<u64>,
    /// Largest total NAR size of its closure.
    pub max_closure_size: Option<u64>,
}

/// A derivation output id (`sha256:<hash modulo>!<output>`).
pub type DrvOutputId = crate::path_info::DrvOutput;

/// A realisation of a content-addressed derivation output.
pub type Realisation = crate::path_info::Realisation;

/// What CollectGarbage does (Nix's GC action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcAction {
    /// List the live paths.
    ReturnLive,
    /// List the dead paths.
    ReturnDead,
    /// Delete all dead paths (up to `max_freed` bytes).
    DeleteDead,
    /// Delete the given paths, each only if dead.
    DeleteSpecific,
}

/// Requests from the frontend to the store-writer. Only the frontend sends these; every field
/// came from a client or from the frontend's own parsing and is re-checked as documented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendToStoreWriter {
    /// First frame on every channel, once. Checks: `ipc_version` equals
    /// [`super::IPC_VERSION`], else the channel is closed after an error reply.
    /// Reply: [`StoreWriterToFrontend::Hello`].
    Hello {
        /// The sender's [`super::IPC_VERSION`].
        ipc_version: u32,
        /// The client connection this channel serves, if one: its uid as the frontend saw it
        /// (labels the audit log's records; decides nothing).
        client_uid: Option<u32>,
    },
    /// Serving phase. Carries one descriptor: a connected unix stream socket that becomes a
    /// new, independent channel (starting with its own `Hello`), usually one per client
    /// connection. The peer fields only label log lines and grant nothing.
    /// Checks: the descriptor is a unix stream socket; at most a configured number of channels
    /// are open. Reply: [`StoreWriterToFrontend::Done`].
    OpenChannel {
        /// The client's pid, for logs.
        peer_pid: Option<i32>,
        /// The client's uid, for logs.
        peer_uid: Option<u32>,
    },
    /// Serving phase. AddToStoreNar / AddMultipleToStore / substitution: carries one
    /// descriptor, the read end of a pipe that yields exactly one NAR.
    /// Checks: the NAR is well-formed (bounded parser) and unpacked under a temporary name in
    /// the store; its SHA-256 and size equal `info.nar_hash` and `info.nar_size`; every
    /// reference other than the path itself is valid; `info.deriver`, if given, parses; with
    /// `info.ca`, the path equals the one computed from the content address and references;
    /// with `check_sigs` and no matching `ca`, one signature verifies against
    /// `trusted-public-keys`; the path is not already valid unless `repair`. Then the contents
    /// are canonicalised, renamed into place and the row committed in one transaction; a
    /// `.drv` path also gets its `DerivationOutputs` rows from the store-writer's own parse of
    /// the file. The path becomes a temporary root of this channel.
    /// Reply: [`StoreWriterToFrontend::PathAdded`]; with `defer`, the info as claimed and
    /// checked, not yet registered.
    AddPathFromNar(Box<AddPathFromNar>),
    /// Serving phase. AddToStore / AddTextToStore: carries one descriptor, a pipe yielding
    /// the raw file contents (text and flat) or a NAR (recursive).
    /// Checks: `name` passes the store path name rules; text uses SHA-256 and does not refer
    /// to itself; fixed-output content other than NAR+SHA-256 has no references; every
    /// reference is valid. The store-writer hashes the data itself and computes the path;
    /// nothing about the result is taken from the frontend. A `.drv` gets its
    /// `DerivationOutputs` rows as above. The path becomes a temporary root of this channel.
    /// Reply: [`StoreWriterToFrontend::PathAdded`].
    AddContent(Box<AddContent>),
    /// Serving phase. Registers the outputs of a finished build. Carries one descriptor per
    /// output, in the order of `outputs` (a `BTreeMap`, so by output name): the read end of a
    /// pipe yielding that output's NAR, as the build user's collector serialised it (the
    /// store-writer never opens a file the build wrote).
    ///
    /// Checks: `drv_path` is a valid path; each NAR is well-formed (bounded parser) and is
    /// unpacked into the store-writer's own staging, then canonicalised (owner, mode 0444 or
    /// 0555, mtime 1, no setuid/setgid, no xattrs or ACLs); its references are found by
    /// scanning for the hash parts of `reference_candidates` and of all outputs only (every
    /// candidate must be valid); a fixed output's content hash must equal its `ca` (flat or
    /// recursive; else `HashMismatch` naming "specified" and "got") and its path the one the
    /// `ca` gives; `checks` hold; with [`RegisterMode::Check`] the NAR hash must equal the
    /// registered one. All outputs are registered in one transaction with
    /// `deriver = drv_path` and `ultimate = true`; a build log is not part of this.
    /// Reply: [`StoreWriterToFrontend::OutputsRegistered`].
    RegisterBuildOutputs {
        /// The build, for logs.
        build: BuildId,
        /// The derivation that was built.
        drv_path: StorePath,
        /// Output name → what it must be (and so where it goes).
        outputs: BTreeMap<String, OutputKind>,
        /// Paths the outputs may refer to: the build's input closure.
        reference_candidates: BTreeSet<StorePath>,
        /// Output name → the derivation's checks for it (missing: none).
        checks: BTreeMap<String, OutputChecks>,
        /// Register, check or repair.
        mode: RegisterMode,
    },
    /// Serving phase. AddSignatures; the frontend sends it only for clients allowed to add
    /// signatures. Checks: `path` is valid; each signature is `<name>:<base64 of 64 bytes>`;
    /// they are merged with the existing ones. Reply: [`StoreWriterToFrontend::Done`].
    AddSignatures {
        /// The path to sign.
        path: StorePath,
        /// New signatures.
        sigs: BTreeSet<String>,
    },
    /// Serving phase. AddTempRoot: keeps `path` alive for as long as this channel is open
    /// (the store-writer owns the `temproots/` files). Checks: none beyond the path's syntax;
    /// the path need not be valid yet. Reply: [`StoreWriterToFrontend::Done`].
    AddTempRoot {
        /// The path to keep.
        path: StorePath,
    },
    /// Serving phase. AddIndirectRoot: creates `gcroots/auto/<hash of link>` pointing to
    /// `link`. Checks: `link` is absolute, normalised (no `.`, `..`, `//`), without NUL, at
    /// most 4096 bytes; the store-writer creates only the symlink in `gcroots/auto/` and
    /// never opens or follows `link`. Reply: [`StoreWriterToFrontend::Done`].
    AddIndirectRoot {
        /// The user's symlink, an absolute path.
        link: String,
    },
    /// Serving phase. AddPermRoot (trusted clients only; the frontend refuses others): makes
    /// the symlink `gc_root` → the store path. Checks: `path` is valid; `gc_root` is absolute
    /// and normalised and lies inside the state directory's `gcroots/` or `profiles/` tree (the
    /// store-writer refuses any other location: it never creates files elsewhere for a
    /// client); no component of it is a symlink; an existing `gc_root` is replaced only if it
    /// is a symlink. Reply: [`StoreWriterToFrontend::RootAdded`] with the root's path.
    AddPermRoot {
        /// The store path to keep alive.
        path: StorePath,
        /// Where the root symlink goes.
        gc_root: String,
    },
    /// Serving phase, once per client connection of a Nix ≤ 2.13 client (the frontend sends it
    /// after reading the peer's credentials). Creates `profiles/per-user/<user>` and
    /// `gcroots/per-user/<user>` with mode 0755 owned by `uid`. Checks: `user` is a single
    /// path component of `[A-Za-z0-9._-]`, not `.` or `..`, at most 255 bytes; an existing
    /// directory is left alone if owned by `uid`, and reported as an error if owned by
    /// anyone else (never re-chowned). Reply: [`StoreWriterToFrontend::Done`].
    CreateUserDirs {
        /// The user's login name.
        user: String,
        /// The user's uid, from the peer credentials.
        uid: u32,
    },
    /// Serving phase. RegisterDrvOutput (content-addressed derivations). Checks: `out_path`
    /// and every dependent realisation's path are valid; output names pass the name rules;
    /// the drv hash is SHA-256; signatures are well-formed. Written to `Realisations` in one
    /// transaction. Reply: [`StoreWriterToFrontend::Done`].
    RegisterRealisation(Box<Realisation>),
    /// Serving phase. AddBuildLog: carries one descriptor, a pipe yielding the log text.
    /// Checks: `drv_path` is a derivation path; the log is written (bzip2) to
    /// `<log dir>/drvs/<2 chars>/<rest>.bz2`, replacing an older one, through a temporary file
    /// and a rename. Reply: [`StoreWriterToFrontend::Done`].
    AddBuildLog {
        /// The derivation the log belongs to.
        drv_path: StorePath,
    },
    /// Serving phase. CollectGarbage (the frontend refuses `ignoreLiveness` for everyone, so it
    /// cannot be expressed). Roots: the permanent and runtime roots come from the broker's
    /// roots helper, asked by the store-writer itself (never from the frontend, so a lying
    /// frontend cannot hide a root), plus every channel's temporary roots; a collection
    /// whose roots cannot be found is refused. Checks: with `DeleteSpecific`, a path that is
    /// alive (or kept alive by a path not named) refuses the whole request with `StillAlive`
    /// and nothing is deleted. Only one collection runs at a time. Reply:
    /// [`StoreWriterToFrontend::GarbageCollected`].
    CollectGarbage {
        /// What to do.
        action: GcAction,
        /// The paths for `DeleteSpecific` (ignored otherwise).
        paths: BTreeSet<StorePath>,
        /// Stop deleting once more than this many bytes are freed; as in Nix, 0 returns and
        /// deletes nothing and clients send `u64::MAX` for no limit.
        max_freed: u64,
        /// `keep-outputs` as it applies to this client.
        keep_outputs: bool,
        /// `keep-derivations` as it applies to this client.
        keep_derivations: bool,
    },
    /// Serving phase. VerifyStore; the frontend refuses `repair` for untrusted clients.
    /// Checks the database against the store directory (a path whose files are gone is
    /// dropped when nothing valid refers to it), and with `check_contents` every NAR hash.
    /// With `repair`, the broken paths are listed in the reply for the frontend to fetch
    /// again (from a substituter, else by rebuilding their deriver) instead of counting as
    /// errors.
    /// Reply: [`StoreWriterToFrontend::Verified`].
    VerifyStore {
        /// Re-hash every path.
        check_contents: bool,
        /// Repair what is found broken.
        repair: bool,
    },
    /// Serving phase. OptimiseStore: hard-links identical files through
    /// `.links/`. Reply: [`StoreWriterToFrontend::Optimised`].
    OptimiseStore,
    /// Any phase after the handshake: health check. Reply: [`StoreWriterToFrontend::Pong`].
    Ping,
    /// Serving phase. Ends a batch of deferred `AddPathFromNar`s: their trees are moved into
    /// place in the order they were sent, the store's filesystem synced once, and all rows
    /// committed in one transaction. References may name paths earlier in the batch. Checks:
    /// as for each `AddPathFromNar` at commit time (references valid or earlier in the batch;
    /// a path valid by now is skipped). If one fails, the ones before it are registered and
    /// the error names it; the rest of the batch is dropped. A channel that closes with a
    /// batch open registers none of it. Reply: [`StoreWriterToFrontend::Done`].
    CommitAdditions,
}

impl FrontendToStoreWriter {
    /// The phase in which this request is accepted.
    pub fn phase(&self) -> Phase {
        match self {
            FrontendToStoreWriter::Hello { .. } => Phase::Handshake,
            FrontendToStoreWriter::OpenChannel { .. }
            | FrontendToStoreWriter::AddPathFromNar(_)
            | FrontendToStoreWriter::CommitAdditions
            | FrontendToStoreWriter::AddContent(_)
            | FrontendToStoreWriter::RegisterBuildOutputs { .. }
            | FrontendToStoreWriter::AddSignatures { .. }
            | FrontendToStoreWriter::AddTempRoot { .. }
            | FrontendToStoreWriter::AddIndirectRoot { .. }
            | FrontendToStoreWriter::AddPermRoot { .. }
            | FrontendToStoreWriter::CreateUserDirs { .. }
            | FrontendToStoreWriter::RegisterRealisation(_)
            | FrontendToStoreWriter::AddBuildLog { .. }
            | FrontendToStoreWriter::CollectGarbage { .. }
            | FrontendToStoreWriter::VerifyStore { .. }
            | FrontendToStoreWriter::OptimiseStore
            | FrontendToStoreWriter::Ping => Phase::Serving,
        }
    }

    /// Whether the request may change or remove what is recorded about paths that are already
    /// valid (their rows, references or signatures), as opposed to only adding new paths,
    /// roots, logs or realisations. The frontend's path-info cache is bypassed and then
    /// emptied around these.
    pub fn may_change_recorded_paths(&self) -> bool {
        match self {
            FrontendToStoreWriter::AddPathFromNar(add) => add.repair,
            FrontendToStoreWriter::AddContent(add) => add.repair,
            FrontendToStoreWriter::RegisterBuildOutputs { .. }
            | FrontendToStoreWriter::AddSignatures { .. }
            | FrontendToStoreWriter::CollectGarbage { .. }
            | FrontendToStoreWriter::VerifyStore { .. } => true,
            FrontendToStoreWriter::Hello { .. }
            | FrontendToStoreWriter::OpenChannel { .. }
            | FrontendToStoreWriter::CommitAdditions
            | FrontendToStoreWriter::AddTempRoot { .. }
            | FrontendToStoreWriter::AddIndirectRoot { .. }
            | FrontendToStoreWriter::AddPermRoot { .. }
            | FrontendToStoreWriter::CreateUserDirs { .. }
            | FrontendToStoreWriter::RegisterRealisation(_)
            | FrontendToStoreWriter::AddBuildLog { .. }
            | FrontendToStoreWriter::OptimiseStore
            | FrontendToStoreWriter::Ping => false,
        }
    }
}

impl IpcMessage for FrontendToStoreWriter {
    const NAME: &'static str = "FrontendToStoreWriter";
    const TAG: [u8; 4] = *b"F>SW";

    fn fd_count(&self) -> usize {
        match self {
            FrontendToStoreWriter::OpenChannel { .. }
            | FrontendToStoreWriter::AddPathFromNar(_)
            | FrontendToStoreWriter::AddContent(_)
            | FrontendToStoreWriter::AddBuildLog { .. } => 1,
            FrontendToStoreWriter::RegisterBuildOutputs { outputs, .. } => outputs.len(),
            FrontendToStoreWriter::Hello { .. }
            | FrontendToStoreWriter::CommitAdditions
            | FrontendToStoreWriter::AddSignatures { .. }
            | FrontendToStoreWriter::AddTempRoot { .. }
            | FrontendToStoreWriter::AddIndirectRoot { .. }
            | FrontendToStoreWriter::AddPermRoot { .. }
            | FrontendToStoreWriter::CreateUserDirs { .. }
            | FrontendToStoreWriter::RegisterRealisation(_)
            | FrontendToStoreWriter::CollectGarbage { .. }
            | FrontendToStoreWriter::VerifyStore { .. }
            | FrontendToStoreWriter::OptimiseStore
            | FrontendToStoreWriter::Ping => 0,
        }
    }

    fn variant_name(&self) -> &'static str {
        match self {
            FrontendToStoreWriter::Hello { .. } => "Hello",
            FrontendToStoreWriter::OpenChannel { .. } => "OpenChannel",
            FrontendToStoreWriter::AddPathFromNar(_) => "AddPathFromNar",
            FrontendToStoreWriter::CommitAdditions => "CommitAdditions",
            FrontendToStoreWriter::AddContent(_) => "AddContent",
            FrontendToStoreWriter::RegisterBuildOutputs { .. } => "RegisterBuildOutputs",
            FrontendToStoreWriter::AddSignatures { .. } => "AddSignatures",
            FrontendToStoreWriter::AddTempRoot { .. } => "AddTempRoot",
            FrontendToStoreWriter::AddIndirectRoot { .. } => "AddIndirectRoot",
            FrontendToStoreWriter::AddPermRoot { .. } => "AddPermRoot",
            FrontendToStoreWriter::CreateUserDirs { .. } => "CreateUserDirs",
            FrontendToStoreWriter::RegisterRealisation(_) => "RegisterRealisation",
            FrontendToStoreWriter::AddBuildLog { .. } => "AddBuildLog",
            FrontendToStoreWriter::CollectGarbage { .. } => "CollectGarbage",
            FrontendToStoreWriter::VerifyStore { .. } => "VerifyStore",
            FrontendToStoreWriter::OptimiseStore => "OptimiseStore",
            FrontendToStoreWriter::Ping => "Ping",
        }
    }
}

/// Replies from the store-writer, one per request, in request order. No descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreWriterToFrontend {
    /// Answer to `Hello`: the store-writer's [`super::IPC_VERSION`]. The frontend closes the
    /// channel if it differs from its own.
    Hello {
        /// The store-writer's version.
        ipc_version: u32,
    },
    /// Answer to `AddPathFromNar` and `AddContent`: the path as registered (also when it was
    /// already valid and nothing was written).
    PathAdded(Box<PathInfo>),
    /// Answer to `RegisterBuildOutputs`: output name → the registered path (in check mode,
    /// the registered info, which matched).
    OutputsRegistered {
        /// Every output, as registered.
        outputs: BTreeMap<String, PathInfo>,
    },
    /// Answer to `AddPermRoot`: the root's path, as Nix returns it.
    RootAdded {
        /// The symlink created.
        gc_root: String,
    },
    /// Answer to `CollectGarbage`.
    GarbageCollected {
        /// Full paths: the live or dead ones (`ReturnLive`/`ReturnDead`) or those deleted
        /// (which may include store entries that were not valid paths).
        paths: BTreeSet<String>,
        /// Bytes freed by deleting.
        bytes_freed: u64,
        /// What the client is told, in Nix's words, in order.
        messages: Vec<String>,
    },
    /// Part of the answer to `CollectGarbage`, sent before [`Self::GarbageCollected`] when
    /// the paths or messages do not fit one frame (see [`split_garbage_collected`]); the
    /// frontend adds these paths to the final reply's, and these messages before its.
    GarbageCollectedPart {
        /// Some of the paths.
        paths: Vec<String>,
        /// Some of the messages, in order.
        messages: Vec<String>,
    },
    /// Answer to `VerifyStore`.
    Verified {
        /// Whether anything was found broken (and, without repair, left so).
        errors_found: bool,
        /// What the client is told, in Nix's words, in order: progress (`false`) and
        /// findings (`true`, shown at error level).
        messages: Vec<(bool, String)>,
        /// With `repair`: the paths to repair (modified, or gone while still referred to);
        /// they are not counted in `errors_found`.
        to_repair: Vec<String>,
    },
    /// Answer to `OptimiseStore`.
    Optimised {
        /// Bytes saved by hard-linking.
        bytes_freed: u64,
        /// Files replaced by links.
        files_linked: u64,
    },
    /// Answer to requests that return nothing else.
    Done,
    /// Answer to `Ping`.
    Pong,
    /// The request was refused or failed; nothing was registered.
    Error(StoreWriterError),
}

impl IpcMessage for StoreWriterToFrontend {
    const NAME: &'static str = "StoreWriterToFrontend";
    const TAG: [u8; 4] = *b"SW>F";

    fn fd_count(&self) -> usize {
        0
    }

    fn variant_name(&self) -> &'static str {
        match self {
            StoreWriterToFrontend::Hello { .. } => "Hello",
            StoreWriterToFrontend::PathAdded(_) => "PathAdded",
            StoreWriterToFrontend::OutputsRegistered { .. } => "OutputsRegistered",
            StoreWriterToFrontend::RootAdded { .. } => "RootAdded",
            StoreWriterToFrontend::GarbageCollected { .. } => "GarbageCollected",
            StoreWriterToFrontend::GarbageCollectedPart { .. } => "GarbageCollectedPart",
            StoreWriterToFrontend::Verified { .. } => "Verified",
            StoreWriterToFrontend::Optimised { .. } => "Optimised",
            StoreWriterToFrontend::Done => "Done",
            StoreWriterToFrontend::Pong => "Pong",
            StoreWriterToFrontend::Error(_) => "Error",
        }
    }
}

/// Most bytes of path text in one `GarbageCollected` or `GarbageCollectedPart` frame: well
/// under the frame cap, whatever the paths' lengths.
pub const GC_PATHS_PER_FRAME_BYTES: usize = 256 * 1024;

/// A `GarbageCollected` reply as the frames it is sent in: `GarbageCollectedPart`s with at
/// most [`GC_PATHS_PER_FRAME_BYTES`] of paths each, then the `GarbageCollected` itself with
/// the rest. Any other reply is one frame.
pub fn split_garbage_collected(reply: StoreWriterToFrontend) -> Vec<StoreWriterToFrontend> {
    let StoreWriterToFrontend::GarbageCollected {
        paths,
        bytes_freed,
        messages,
    } = reply
    else {
        return vec![reply];
    };
    // Length prefix and padding, roughly, as the frame encodes a string.
    let cost = |text: &String| text.len() + 16;
    let mut frames = Vec::new();
    let (mut chunk_paths, mut chunk_messages): (Vec<String>, Vec<String>) = (vec![], vec![]);
    let mut chunk_bytes = 0;
    let items = paths
        .into_iter()
        .map(|p| (true, p))
        .chain(messages.into_iter().map(|m| (false, m)));
    for (is_path, text) in items {
        if chunk_bytes + cost(&text) > GC_PATHS_PER_FRAME_BYTES && chunk_bytes > 0 {
            frames.push(StoreWriterToFrontend::GarbageCollectedPart {
                paths: std::mem::take(&mut chunk_paths),
                messages: std::mem::take(&mut chunk_messages),
            });
            chunk_bytes = 0;
        }
        chunk_bytes += cost(&text);
        if is_path {
            chunk_paths.push(text);
        } else {
            chunk_messages.push(text);
        }
    }
    frames.push(StoreWriterToFrontend::GarbageCollected {
        paths: chunk_paths.into_iter().collect(),
        bytes_freed,
        messages: chunk_messages,
    });
    frames
}

/// Why the store-writer refused or failed a request. Each variant names the path or value at
/// fault; the messages are meant to be shown to the client (with the store directory added to
/// base names by the frontend where Nix prints full paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreWriterError {
    /// The peer speaks another IPC version.
    #[error("store-writer speaks ipc version {ours}, frontend sent {theirs}")]
    VersionMismatch {
        /// The store-writer's version.
        ours: u32,
        /// The version received.
        theirs: u32,
    },
    /// The contents do not hash to what was claimed or expected.
    #[error(
        "hash mismatch importing path '{path}';\n  specified: {}\n  got:       {}",
        expected.to_prefixed_nix32(),
        actual.to_prefixed_nix32()
    )]
    HashMismatch {
        /// The path being added.
        path: StorePath,
        /// The claimed or expected hash.
        expected: Hash,
        /// The hash of what arrived.
        actual: Hash,
    },
    /// The NAR is not as long as claimed.
    #[error(
        "size mismatch importing path '{path}';\n  specified: {expected}\n  got:       {actual}"
    )]
    SizeMismatch {
        /// The path being added.
        path: StorePath,
        /// The claimed size.
        expected: u64,
        /// The size that arrived.
        actual: u64,
    },
    /// The NAR went on past its claimed size; it was cut off there, so its real size is not
    /// known.
    #[error(
        "size mismatch importing path '{path}';\n  specified: {expected}\n  got:       more than {expected}"
    )]
    LongerThanClaimed {
        /// The path being added.
        path: StorePath,
        /// The claimed size.
        expected: u64,
    },
    /// The NAR could not be parsed.
    #[error("malformed nar for path '{path}': {reason}")]
    MalformedNar {
        /// The path being added.
        path: StorePath,
        /// What the NAR parser refused.
        reason: String,
    },
    /// The data pipe ended before the data did.
    #[error("data for path '{path}' ended early")]
    DataTruncated {
        /// The path (or name) being added.
        path: String,
    },
    /// A reference is not a valid path.
    #[error(
        "cannot add path '{path}' because it references path '{reference}', which is not valid"
    )]
    InvalidReference {
        /// The path being added.
        path: StorePath,
        /// The reference that is not valid.
        reference: StorePath,
    },
    /// A name breaks the store path name rules.
    #[error("invalid store path name '{name}': {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A content-addressed path is not the path its content address gives.
    #[error("path '{claimed}' does not match its content address, which gives '{computed}'")]
    PathMismatch {
        /// The path claimed.
        claimed: StorePath,
        /// The path computed.
        computed: StorePath,
    },
    /// A content address that cannot apply (text with another hash, fixed output with
    /// references, text referring to itself...).
    #[error("invalid content address for '{path}': {reason}")]
    BadContentAddress {
        /// The path or name at fault.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Signatures were required and none verified.
    #[error("cannot add path '{path}' because it lacks a valid signature")]
    SignatureMissing {
        /// The path being added.
        path: StorePath,
    },
    /// A signature is not `<name>:<base64 of 64 bytes>`.
    #[error("malformed signature '{signature}' for path '{path}'")]
    BadSignature {
        /// The path being signed.
        path: StorePath,
        /// The signature as given.
        signature: String,
    },
    /// The path is not valid (but must be).
    #[error("path '{path}' is not valid")]
    NotValid {
        /// The path.
        path: StorePath,
    },
    /// The path is already valid and `repair` was not asked for (for requests where that
    /// matters; adding an identical valid path is not an error).
    #[error("path '{path}' is already valid")]
    AlreadyValid {
        /// The path.
        path: StorePath,
    },
    /// A build output is missing, a symlink, or not where it should be.
    #[error("output '{output}' of '{drv_path}' is missing or malformed: {reason}")]
    BadOutput {
        /// The derivation.
        drv_path: StorePath,
        /// The output name.
        output: String,
        /// What is wrong.
        reason: String,
    },
    /// A fixed output's contents do not have the hash its derivation specifies (Nix's
    /// wording, SRI hashes).
    #[error(
        "hash mismatch in fixed-output derivation '{drv_path}':\n  specified: {}\n     got:    {}",
        specified.to_sri(),
        got.to_sri()
    )]
    FixedOutputHashMismatch {
        /// The derivation.
        drv_path: StorePath,
        /// The hash the derivation specifies.
        specified: Hash,
        /// The hash of what the build produced.
        got: Hash,
    },
    /// `--check`: a rebuilt output differs from the registered one (Nix's first line, then
    /// both NAR hashes).
    #[error(
        "derivation '{drv_path}' may not be deterministic: output '{path}' differs\n  registered: {}\n  rebuilt:    {}",
        expected.to_prefixed_nix32(),
        actual.to_prefixed_nix32()
    )]
    CheckMismatch {
        /// The derivation.
        drv_path: StorePath,
        /// The output.
        path: StorePath,
        /// The registered NAR hash.
        expected: Hash,
        /// The NAR hash of the rebuilt output.
        actual: Hash,
    },
    /// An output breaks one of its derivation's checks (`allowedReferences`, ...) or a fixed
    /// output has the wrong shape. `reason` is the whole message, Nix's wording with full
    /// store paths.
    #[error("{reason}")]
    OutputCheckFailed {
        /// The derivation.
        drv_path: StorePath,
        /// The output.
        path: StorePath,
        /// What failed.
        reason: String,
    },
    /// DeleteSpecific on a live path (the frontend words it as Nix does, with the full path).
    #[error("cannot delete path '{path}' since it is still alive")]
    StillAlive {
        /// The path.
        path: StorePath,
    },
    /// A root location or target the store-writer refuses.
    #[error("refusing gc root '{root}': {reason}")]
    BadRoot {
        /// The root path as given.
        root: String,
        /// Why.
        reason: String,
    },
    /// A user name that cannot name a per-user directory, or a directory owned by another uid.
    #[error("cannot create per-user directories for '{user}': {reason}")]
    BadUser {
        /// The user name as given.
        user: String,
        /// Why.
        reason: String,
    },
    /// A request not allowed in the channel's current phase (the channel is closed after this
    /// reply).
    #[error("request {request} is not permitted in the {phase} phase")]
    NotPermitted {
        /// The variant name.
        request: String,
        /// The channel's phase.
        phase: Phase,
    },
    /// A file system operation in the store or state directory failed.
    #[error("{operation} '{path}' failed: {message}")]
    Io {
        /// What was being done (`renaming`, `writing`...).
        operation: String,
        /// The file system path.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The database refused or failed.
    #[error("store database error: {message}")]
    Database {
        /// SQLite's message.
        message: String,
    },
}

/// Serialises a [`HashAlgo`] by its Nix name (`sha256`), refusing unknown names on input.
mod hash_algo_by_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::hash::HashAlgo;

    pub(super) fn serialize<S: Serializer>(algo: &HashAlgo, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(algo.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashAlgo, D::Error> {
        let name = String::deserialize(d)?;
        HashAlgo::from_name(&name).map_err(serde::de::Error::custom)
    }
}

impl StoreWriterError {
    /// The store paths this error names.
    fn named_paths(&self) -> Vec<&StorePath> {
        use StoreWriterError as E;
        match self {
            E::HashMismatch { path, .. }
            | E::SizeMismatch { path, .. }
            | E::LongerThanClaimed { path, .. }
            | E::MalformedNar { path, .. }
            | E::SignatureMissing { path }
            | E::BadSignature { path, .. }
            | E::NotValid { path }
            | E::AlreadyValid { path }
            | E::StillAlive { path } => vec![path],
            E::InvalidReference { path, reference } => vec![path, reference],
            E::PathMismatch { claimed, computed } => vec![claimed, computed],
            E::BadOutput { drv_path, .. } => vec![drv_path],
            E::FixedOutputHashMismatch { drv_path, .. } => vec![drv_path],
            E::CheckMismatch { drv_path, path, .. }
            | E::OutputCheckFailed { drv_path, path, .. } => vec![drv_path, path],
            E::VersionMismatch { .. }
            | E::DataTruncated { .. }
            | E::BadName { .. }
            | E::BadContentAddress { .. }
            | E::BadRoot { .. }
            | E::BadUser { .. }
            | E::NotPermitted { .. }
            | E::Io { .. }
            | E::Database { .. } => vec![],
        }
    }

    /// The message for a Nix client: as [`Display`](std::fmt::Display), with every quoted store
    /// path printed in full (`'/nix/store/<hash>-<name>'`), as Nix prints them.
    pub fn to_client_message(&self, store_dir: &crate::store_path::StoreDir) -> String {
        let mut text = self.to_string();
        for path in self.named_paths() {
            text = text.replace(
                &format!("'{path}'"),
                &format!("'{}'", store_dir.print(path)),
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::super::frame::{encode_frame, FrameLimit};

    /// A frame with the given tag and body, bypassing the encoder.
    fn raw_frame(tag: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(tag.len() + body.len()).unwrap();
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(tag);
        frame.extend_from_slice(body);
        frame
    }
    use super::super::{broker::FrontendToBroker, Channel, IpcError, IPC_VERSION};
    use super::*;
    use crate::content_address::FileIngestionMethod;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    fn sample_info() -> PathInfo {
        PathInfo {
            path: path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"),
            deriver: Some(path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-f.drv")),
            nar_hash: Hash::compute(HashAlgo::Sha256, b"nar bytes"),
            references: [path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f")].into(),
            registration_time: 1_700_000_000,
            nar_size: 120,
            ultimate: false,
            sigs: ["cache.example.org-1:c2ln".to_string()].into(),
            ca: Some(ContentAddress {
                method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                hash: Hash::compute(HashAlgo::Sha256, b"content"),
            }),
        }
    }

    pub(crate) fn all_requests() -> Vec<FrontendToStoreWriter> {
        let drv = path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-f.drv");
        let out = path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f");
        let id = DrvOutputId {
            drv_hash: Hash::compute(HashAlgo::Sha256, b"drv"),
            output: "out".into(),
        };
        vec![
            FrontendToStoreWriter::Hello {
                ipc_version: IPC_VERSION,
                client_uid: Some(1000),
            },
            FrontendToStoreWriter::OpenChannel {
                peer_pid: Some(42),
                peer_uid: Some(1000),
            },
            FrontendToStoreWriter::AddPathFromNar(Box::new(AddPathFromNar {
                info: sample_info(),
                repair: false,
                check_sigs: true,
                defer: false,
            })),
            FrontendToStoreWriter::AddContent(Box::new(AddContent {
                name: "hello.txt".into(),
                method: ContentAddressMethod::Text,
                hash_algo: HashAlgo::Sha256,
                references: [out.clone()].into(),
                repair: true,
            })),
            FrontendToStoreWriter::RegisterBuildOutputs {
                build: BuildId(3),
                drv_path: drv.clone(),
                outputs: [
                    (
                        "out".to_string(),
                        OutputKind::InputAddressed { path: out.clone() },
                    ),
                    (
                        "dev".to_string(),
                        OutputKind::Floating {
                            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                            hash_algo: HashAlgo::Sha512,
                        },
                    ),
                    (
                        "src".to_string(),
                        OutputKind::Fixed {
                            path: out.clone(),
                            ca: sample_info().ca.unwrap(),
                        },
                    ),
                ]
                .into(),
                reference_candidates: [drv.clone(), out.clone()].into(),
                checks: [(
                    "out".to_string(),
                    OutputChecks {
                        allowed_references: Some([out.clone()].into()),
                        max_size: Some(10),
                        ..OutputChecks::default()
                    },
                )]
                .into(),
                mode: RegisterMode::Check,
            },
            FrontendToStoreWriter::AddSignatures {
                path: out.clone(),
                sigs: ["k:AAAA".to_string()].into(),
            },
            FrontendToStoreWriter::AddTempRoot { path: out.clone() },
            FrontendToStoreWriter::AddIndirectRoot {
                link: "/home/u/result".into(),
            },
            FrontendToStoreWriter::AddPermRoot {
                path: out.clone(),
                gc_root: "/nix/var/nix/gcroots/x".into(),
            },
            FrontendToStoreWriter::CreateUserDirs {
                user: "alice".into(),
                uid: 1000,
            },
            FrontendToStoreWriter::RegisterRealisation(Box::new(Realisation {
                id: id.clone(),
                out_path: out.clone(),
                signatures: BTreeSet::new(),
                dependent_realisations: [(id, out.clone())].into_iter().collect(),
            })),
            FrontendToStoreWriter::AddBuildLog { drv_path: drv },
            FrontendToStoreWriter::CollectGarbage {
                action: GcAction::DeleteSpecific,
                paths: [out].into(),
                max_freed: 0,
                keep_outputs: true,
                keep_derivations: false,
            },
            FrontendToStoreWriter::VerifyStore {
                check_contents: true,
                repair: false,
            },
            FrontendToStoreWriter::OptimiseStore,
            FrontendToStoreWriter::Ping,
        ]
    }

    fn all_replies() -> Vec<StoreWriterToFrontend> {
        let out = path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f");
        vec![
            StoreWriterToFrontend::Hello {
                ipc_version: IPC_VERSION,
            },
            StoreWriterToFrontend::PathAdded(Box::new(sample_info())),
            StoreWriterToFrontend::OutputsRegistered {
                outputs: [("out".to_string(), sample_info())].into(),
            },
            StoreWriterToFrontend::RootAdded {
                gc_root: "/nix/var/nix/gcroots/x".into(),
            },
            StoreWriterToFrontend::GarbageCollected {
                paths: [format!("/nix/store/{out}")].into(),
                bytes_freed: 4096,
                messages: vec!["deleting garbage...".into()],
            },
            StoreWriterToFrontend::GarbageCollectedPart {
                paths: vec![format!("/nix/store/{out}")],
                messages: vec![format!("deleting '/nix/store/{out}'")],
            },
            StoreWriterToFrontend::Verified {
                errors_found: true,
                messages: vec![(false, "checking path existence...".into())],
                to_repair: vec![format!("/nix/store/{out}")],
            },
            StoreWriterToFrontend::Optimised {
                bytes_freed: 10,
                files_linked: 2,
            },
            StoreWriterToFrontend::Done,
            StoreWriterToFrontend::Pong,
        ]
        .into_iter()
        .chain(all_errors().into_iter().map(StoreWriterToFrontend::Error))
        .collect()
    }

    fn all_errors() -> Vec<StoreWriterError> {
        let p = path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f");
        let h1 = Hash::compute(HashAlgo::Sha256, b"1");
        let h2 = Hash::compute(HashAlgo::Sha256, b"2");
        vec![
            StoreWriterError::VersionMismatch { ours: 1, theirs: 2 },
            StoreWriterError::HashMismatch {
                path: p.clone(),
                expected: h1,
                actual: h2,
            },
            StoreWriterError::SizeMismatch {
                path: p.clone(),
                expected: 1,
                actual: 2,
            },
            StoreWriterError::LongerThanClaimed {
                path: p.clone(),
                expected: 1,
            },
            StoreWriterError::MalformedNar {
                path: p.clone(),
                reason: "bad magic".into(),
            },
            StoreWriterError::DataTruncated { path: "x".into() },
            StoreWriterError::InvalidReference {
                path: p.clone(),
                reference: p.clone(),
            },
            StoreWriterError::BadName {
                name: "a/b".into(),
                reason: "slash".into(),
            },
            StoreWriterError::PathMismatch {
                claimed: p.clone(),
                computed: p.clone(),
            },
            StoreWriterError::BadContentAddress {
                path: "x".into(),
                reason: "refs".into(),
            },
            StoreWriterError::SignatureMissing { path: p.clone() },
            StoreWriterError::BadSignature {
                path: p.clone(),
                signature: "nocolon".into(),
            },
            StoreWriterError::NotValid { path: p.clone() },
            StoreWriterError::AlreadyValid { path: p.clone() },
            StoreWriterError::BadOutput {
                drv_path: p.clone(),
                output: "out".into(),
                reason: "missing".into(),
            },
            StoreWriterError::FixedOutputHashMismatch {
                drv_path: p.clone(),
                specified: Hash::compute(HashAlgo::Sha256, b"a"),
                got: Hash::compute(HashAlgo::Sha256, b"b"),
            },
            StoreWriterError::CheckMismatch {
                drv_path: p.clone(),
                path: p.clone(),
                expected: Hash::compute(HashAlgo::Sha256, b"a"),
                actual: Hash::compute(HashAlgo::Sha256, b"b"),
            },
            StoreWriterError::OutputCheckFailed {
                drv_path: p.clone(),
                path: p.clone(),
                reason: "output is too large".into(),
            },
            StoreWriterError::StillAlive { path: p.clone() },
            StoreWriterError::BadRoot {
                root: "/etc/x".into(),
                reason: "outside".into(),
            },
            StoreWriterError::BadUser {
                user: "..".into(),
                reason: "dots".into(),
            },
            StoreWriterError::NotPermitted {
                request: "Ping".into(),
                phase: Phase::Handshake,
            },
            StoreWriterError::Io {
                operation: "renaming".into(),
                path: "/nix/store/x".into(),
                message: "no space".into(),
            },
            StoreWriterError::Database {
                message: "locked".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips_through_a_channel_with_its_fds() {
        let (frontend, writer) =
            Channel::<FrontendToStoreWriter, StoreWriterToFrontend>::pair(FrameLimit::DEFAULT)
                .unwrap();
        let (_r, w) = rustix::pipe::pipe().unwrap();
        for request in all_requests() {
            let fds = vec![w.as_fd(); request.fd_count()];
            frontend.send(&request, &fds).unwrap();
            let got = writer.recv().unwrap();
            assert_eq!(got.fds.len(), request.fd_count());
            assert_eq!(got.message, request);
        }
    }

    #[test]
    fn a_large_collection_is_sent_in_frames_under_the_cap() {
        let paths: BTreeSet<String> = (0..60_000)
            .map(|i| format!("/nix/store/{i:032}-a-name-of-some-length-{i}"))
            .collect();
        let mut messages = vec!["deleting garbage...".to_string()];
        messages.extend(paths.iter().map(|p| format!("deleting '{p}'")));
        let frames = split_garbage_collected(StoreWriterToFrontend::GarbageCollected {
            paths: paths.clone(),
            bytes_freed: 7,
            messages: messages.clone(),
        });
        assert!(frames.len() > 2, "{} frames", frames.len());
        let mut seen = BTreeSet::new();
        let mut seen_messages = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let bytes = encode_frame(frame, FrameLimit::DEFAULT)
                .unwrap_or_else(|e| panic!("frame {i} does not fit: {e}"));
            assert!(bytes.len() < FrameLimit::DEFAULT.max_len() as usize);
            match frame {
                StoreWriterToFrontend::GarbageCollectedPart { paths, messages } => {
                    assert!(i + 1 < frames.len(), "parts come first");
                    seen.extend(paths.iter().cloned());
                    seen_messages.extend(messages.iter().cloned());
                }
                StoreWriterToFrontend::GarbageCollected {
                    paths,
                    bytes_freed,
                    messages,
                } => {
                    assert_eq!(i + 1, frames.len(), "the final reply comes last");
                    assert_eq!(*bytes_freed, 7);
                    seen.extend(paths.iter().cloned());
                    seen_messages.extend(messages.iter().cloned());
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        assert_eq!(seen, paths);
        assert_eq!(seen_messages, messages, "every message, in order");
        // A small one stays a single frame, and other replies are untouched.
        assert_eq!(
            split_garbage_collected(StoreWriterToFrontend::Done),
            vec![StoreWriterToFrontend::Done]
        );
    }

    #[test]
    fn every_reply_round_trips_through_a_channel() {
        let (frontend, writer) =
            Channel::<FrontendToStoreWriter, StoreWriterToFrontend>::pair(FrameLimit::DEFAULT)
                .unwrap();
        for reply in all_replies() {
            writer.send(&reply, &[]).unwrap();
            assert_eq!(frontend.recv().unwrap().message, reply);
        }
    }

    #[test]
    fn only_hello_belongs_to_the_handshake() {
        for request in all_requests() {
            let expected = if matches!(request, FrontendToStoreWriter::Hello { .. }) {
                Phase::Handshake
            } else {
                Phase::Serving
            };
            assert_eq!(request.phase(), expected, "{}", request.variant_name());
        }
    }

    #[test]
    fn a_request_frame_is_not_a_reply_nor_a_broker_request() {
        for request in all_requests() {
            let frame = encode_frame(&request, FrameLimit::DEFAULT).unwrap();
            assert!(matches!(
                super::super::frame::read_frame::<_, StoreWriterToFrontend>(
                    &mut &frame[..],
                    FrameLimit::DEFAULT
                ),
                Err(IpcError::WrongTag { .. })
            ));
            assert!(matches!(
                super::super::frame::read_frame::<_, FrontendToBroker>(
                    &mut &frame[..],
                    FrameLimit::DEFAULT
                ),
                Err(IpcError::WrongTag { .. })
            ));
        }
    }

    #[test]
    fn field_parsers_refuse_bad_values_inside_frames() {
        // AddTempRoot (variant 6) with a store path that has a '/' in its name.
        let mut body = vec![6];
        let bad = "ab3li50xq0nl4q5lxdyinb8w8y13my9s-../etc";
        body.push(bad.len() as u8);
        body.extend_from_slice(bad.as_bytes());
        let frame = raw_frame(b"F>SW", &body);
        let err = super::super::frame::read_frame::<_, FrontendToStoreWriter>(
            &mut &frame[..],
            FrameLimit::DEFAULT,
        )
        .unwrap_err();
        assert!(matches!(err, IpcError::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("invalid"), "{err}");
        // The same frame with a good path decodes, so the refusal above was the path's.
        let good = "ab3li50xq0nl4q5lxdyinb8w8y13my9s-f";
        let mut body = vec![6, good.len() as u8];
        body.extend_from_slice(good.as_bytes());
        let frame = raw_frame(b"F>SW", &body);
        assert_eq!(
            super::super::frame::read_frame::<_, FrontendToStoreWriter>(
                &mut &frame[..],
                FrameLimit::DEFAULT
            )
            .unwrap(),
            FrontendToStoreWriter::AddTempRoot { path: path(good) }
        );
    }

    #[test]
    fn unknown_hash_algorithm_names_are_refused() {
        let request = FrontendToStoreWriter::AddContent(Box::new(AddContent {
            name: "x".into(),
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
            hash_algo: HashAlgo::Sha1,
            references: BTreeSet::new(),
            repair: false,
        }));
        let mut frame = encode_frame(&request, FrameLimit::DEFAULT).unwrap();
        let at = frame.windows(4).position(|w| w == b"sha1").unwrap();
        frame[at..at + 4].copy_from_slice(b"shaX");
        assert!(matches!(
            super::super::frame::decode_payload::<FrontendToStoreWriter>(
                &frame[4..],
                FrameLimit::DEFAULT
            ),
            Err(IpcError::Decode { .. })
        ));
    }

    #[test]
    fn error_messages_name_what_is_at_fault() {
        let p = path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f");
        let e = StoreWriterError::SizeMismatch {
            path: p.clone(),
            expected: 120,
            actual: 7,
        };
        assert_eq!(
            e.to_string(),
            "size mismatch importing path 'ab3li50xq0nl4q5lxdyinb8w8y13my9s-f';\n  specified: 120\n  got:       7"
        );
        let e = StoreWriterError::InvalidReference {
            path: p.clone(),
            reference: path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g"),
        };
        assert!(e
            .to_string()
            .contains("'7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g'"));
        for e in all_errors() {
            let text = e.to_string();
            assert!(!text.ends_with('.'), "{text}");
            assert!(text.starts_with(|c: char| !c.is_uppercase()), "{text}");
        }
    }
}
