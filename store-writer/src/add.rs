//! Adding paths to the store atomically.
//!
//! [`Store::add_path`] takes a claimed [`ValidPathInfo`] and the path's NAR as a byte stream
//! (in production a pipe from the frontend). [`Store::add_from_content`] takes raw content
//! (AddToStore: a flat file, a text, or a NAR) and computes the path itself. Both run the same
//! steps:
//!
//! 1. check the name and that every reference is valid (or the path itself);
//! 2. unpack the stream into a fresh entry of the private staging directory
//!    (`<store>/.ward-staging/<pid>-<n>/out`, mode 0700), hashing exactly the bytes the NAR
//!    parser consumes; the stream must end with the NAR;
//! 3. compare NAR hash and size with the claim; if a content address is claimed, recompute it
//!    from the staged files and recompute the store path from it and the references;
//! 4. canonicalise the staged tree (modes 0444/0555, mtime 1, no set-id bits, no xattrs) and
//!    sync every file;
//! 5. take the per-path lock (`<path>.lock`); if the path is valid by now (and this is not a
//!    repair), discard the staging entry;
//! 6. otherwise remove whatever invalid leftover is at the final location, rename the staged
//!    tree into place (`RENAME_NOREPLACE`), finish the root directory's metadata, sync the
//!    store directory, and only then commit the database rows in one transaction.
//!
//! Registering a `.drv` also checks its outputs as Nix does (input-addressed output paths must
//! be the ones hashDerivationModulo gives) and records them in `DerivationOutputs`.
//!
//! Steps 2 to 4 need no [`Store`]: [`Store::prepare_add_path`] (or
//! [`Store::prepare_add_content`]) does step 1 and allocates the staging entry,
//! [`PathAddition::stage`] (or [`ContentAddition::stage`]) reads, checks and canonicalises, and
//! [`Store::commit_addition`] does steps 5 and 6 (checking the references again). A server
//! holds its store only for the first and the last, so a slow client's upload blocks no other
//! write. [`Store::add_path`] and [`Store::add_from_content`] run all three in a row.
//!
//! A path is valid exactly when its row is committed, and that happens after its contents are
//! complete and on disk, so a crash at any point leaves either no row (and at most an invalid
//! leftover that the next add replaces, or a staging entry that the next start removes) or a
//! complete, valid path.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags, RenameFlags};
use thiserror::Error;
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::derivation::{name_from_drv_path, Derivation, HashModuloCache, MAX_ATERM_SIZE};
use ward_proto::hash::{Hash, HashAlgo, Hasher};
use ward_proto::nar::{self, NarError, ParseOptions, TeeReader};
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{check_name, StoreDir, StorePath, StorePathError};

use crate::db::{DbError, DerivationOutputs};
use crate::fsutil::{self, FsError, PendingRoot};
use crate::lock::{LockError, PathLock};
use crate::store::Store;

/// Name of the staged tree inside its staging entry.
pub(crate) const STAGED: &str = "out";

/// Largest `.drv` file whose outputs are read at registration (the ATerm parser's own limit).
/// Real derivations are a few kilobytes; this only bounds the memory a hostile one can cost.
const MAX_DRV_SIZE: u64 = MAX_ATERM_SIZE as u64;

/// Options of an addition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddOptions {
    /// Replace the path's contents even if it is already valid. As in Nix, the old contents
    /// are removed before the new ones are moved in, so the path is briefly absent.
    pub repair: bool,
}

/// What an addition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The path was written and registered.
    Added,
    /// The path was already valid; nothing changed.
    AlreadyValid,
}

/// Why an addition failed. Every variant names the store path; nothing was registered and no
/// new entry was left in the store directory.
#[derive(Debug, Error)]
pub enum AddError {
    /// The name breaks Nix's rules.
    #[error("cannot add '{name}' to the store: {source}")]
    BadName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        #[source]
        source: StorePathError,
    },
    /// A reference is neither valid nor the path itself.
    #[error("cannot add path '{path}' because its reference '{reference}' is not valid")]
    InvalidReference {
        /// The path being added.
        path: String,
        /// The reference.
        reference: String,
    },
    /// The claimed NAR hash is not SHA-256.
    #[error("cannot add path '{path}': its nar hash must be sha256, not {algo}")]
    NarHashNotSha256 {
        /// The path.
        path: String,
        /// The algorithm claimed.
        algo: HashAlgo,
    },
    /// The NAR stream was malformed, truncated, or could not be unpacked.
    #[error("cannot add path '{path}': {source}")]
    Nar {
        /// The path.
        path: String,
        /// What was wrong.
        #[source]
        source: NarError,
    },
    /// The content stream could not be read or written to staging.
    #[error("cannot add path '{path}': reading its contents: {source}")]
    Read {
        /// The path (or name, for content additions).
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The NAR does not hash to the claimed hash.
    #[error(
        "hash mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}"
    )]
    HashMismatch {
        /// The path.
        path: String,
        /// The claimed hash (`sha256:<nix32>`).
        specified: String,
        /// The computed hash.
        got: String,
    },
    /// The NAR is not of the claimed size.
    #[error(
        "size mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}"
    )]
    SizeMismatch {
        /// The path.
        path: String,
        /// The claimed size.
        specified: u64,
        /// The actual size.
        got: u64,
    },
    /// The NAR went on past its claimed size (cut off there).
    #[error(
        "size mismatch importing path '{path}';\n  specified: {specified}\n  got:       more than {specified}"
    )]
    LongerThanClaimed {
        /// The path.
        path: String,
        /// The claimed size.
        specified: u64,
    },
    /// The content does not hash to the claimed content address.
    #[error(
        "ca hash mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}"
    )]
    CaHashMismatch {
        /// The path.
        path: String,
        /// The claimed content hash.
        specified: String,
        /// The computed content hash.
        got: String,
    },
    /// The content address and references do not produce the path.
    #[error(
        "cannot add path '{0}' to the Nix store because it claims to be content-addressed but \
         isn't"
    )]
    NotContentAddressed(String),
    /// A flat or text content address needs a single regular file.
    #[error("cannot add path '{path}': content address '{ca}' needs a single regular file")]
    NotAFlatFile {
        /// The path.
        path: String,
        /// The content address.
        ca: String,
    },
    /// A content-addressing method ward does not implement (git).
    #[error("cannot add path '{path}': content-addressing method '{method}' is not supported")]
    UnsupportedMethod {
        /// The path or name.
        path: String,
        /// The method.
        method: String,
    },
    /// The store path could not be computed from the content.
    #[error("cannot add '{name}' to the store: {source}")]
    MakePath {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// A file-system operation on the store failed.
    #[error("cannot add path '{path}': {source}")]
    Fs {
        /// The path.
        path: String,
        /// The failure.
        #[source]
        source: FsError,
    },
    /// The per-path lock could not be taken.
    #[error("cannot add path '{path}': {source}")]
    Lock {
        /// The path.
        path: String,
        /// The failure.
        #[source]
        source: LockError,
    },
    /// The database refused the registration.
    #[error("cannot add path '{path}': {source}")]
    Db {
        /// The path.
        path: String,
        /// The failure (boxed: SQLite errors are large).
        #[source]
        source: Box<DbError>,
    },
}

/// A `Write` that hashes with SHA-256 (the NAR hash), optionally with a second algorithm (a
/// content address over the same bytes), and counts the bytes.
pub(crate) struct NarDigester {
    sha256: Hasher,
    extra: Option<Hasher>,
    size: u64,
}

impl NarDigester {
    pub(crate) fn new(extra: Option<HashAlgo>) -> NarDigester {
        NarDigester {
            sha256: Hasher::new(HashAlgo::Sha256),
            extra: extra.map(Hasher::new),
            size: 0,
        }
    }

    pub(crate) fn finish(self) -> (Hash, u64, Option<Hash>) {
        (
            self.sha256.finish(),
            self.size,
            self.extra.map(Hasher::finish),
        )
    }
}

impl Write for NarDigester {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sha256.update(buf);
        if let Some(extra) = &mut self.extra {
            extra.update(buf);
        }
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// NAR parse options for a stream that carries exactly one NAR.
pub(crate) fn whole_stream_options() -> ParseOptions {
    ParseOptions {
        require_eof: true,
        ..ParseOptions::default()
    }
}

/// A staging entry, owned by one addition: removed when dropped (after a successful commit
/// it is empty, its tree having been renamed into the store). It holds its own descriptor on
/// the staging directory, so unpacking into it and removing it need no [`Store`].
pub(crate) struct Staging {
    /// The staging directory (a duplicate of the store's descriptor).
    parent: OwnedFd,
    name: OsString,
    pub(crate) fd: OwnedFd,
    dir: PathBuf,
}

impl Staging {
    pub(crate) fn staged_path(&self) -> PathBuf {
        self.dir.join(STAGED)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Logged, not failed: leftovers are cleared at the next start anyway.
        if let Err(e) = fsutil::remove_tree_at(self.parent.as_fd(), &self.name, &self.dir) {
            tracing::warn!(error = %e, "could not remove staging entry");
        }
    }
}

/// What hashing the NAR while unpacking it gave.
struct NarDigest {
    nar_hash: Hash,
    nar_size: u64,
    /// The NAR's hash with a second algorithm (a content address's), when asked for.
    extra: Option<Hash>,
}

/// An addition of a path from its NAR whose checks against the store have passed
/// ([`Store::prepare_add_path`]); [`PathAddition::stage`] reads the NAR without the store.
#[derive(Debug)]
pub struct PathAddition {
    info: ValidPathInfo,
    shown: String,
    store_dir: StoreDir,
    repair: bool,
    /// `None` when the path was already valid and this is not a repair: the NAR is then only
    /// read and checked, and nothing is written.
    staging: Option<Staging>,
}

/// An addition of raw content ([`Store::prepare_add_content`]); [`ContentAddition::stage`]
/// reads the content without the store.
#[derive(Debug)]
pub struct ContentAddition {
    name: String,
    method: ContentAddressMethod,
    algo: HashAlgo,
    references: BTreeSet<StorePath>,
    store_dir: StoreDir,
    repair: bool,
    staging: Staging,
}

/// An addition whose data is staged, checked and canonicalised, ready for
/// [`Store::commit_addition`]. Dropping it removes the staged tree.
#[derive(Debug)]
pub struct StagedAddition {
    info: ValidPathInfo,
    shown: String,
    repair: bool,
    /// The staged tree and its root directory's unfinished metadata; `None` when nothing was
    /// staged because the path was already valid.
    staged: Option<(Staging, Option<PendingRoot>)>,
}

impl StagedAddition {
    /// The path's info (for content additions: as computed from the content).
    pub fn info(&self) -> &ValidPathInfo {
        &self.info
    }

    /// The record to be written, for the store's own signatures.
    pub fn info_mut(&mut self) -> &mut ValidPathInfo {
        &mut self.info
    }
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("dir", &self.dir).finish()
    }
}

/// Makes a fresh staging entry in the store's staging directory.
pub(crate) fn new_staging(store: &mut Store, shown: &str) -> Result<Staging, AddError> {
    let fs_err = |source| AddError::Fs {
        path: shown.to_owned(),
        source,
    };
    let staging_dir = store.layout.staging_dir();
    let parent = rustix::io::fcntl_dupfd_cloexec(&store.staging_fd, 0).map_err(|e| {
        fs_err(fsutil::io_err("duplicating a descriptor on", &staging_dir)(
            e,
        ))
    })?;
    let (name, fd) = store.new_staging_entry().map_err(fs_err)?;
    let dir = staging_dir.join(&name);
    Ok(Staging {
        parent,
        name,
        fd,
        dir,
    })
}

/// Reads at most `limit` bytes; one more is an error. A NAR claimed to be N bytes is cut off
/// there, so a stream that never ends (a decompression bomb from a cache, a client that keeps
/// sending) fills no more of the disk than its claim.
struct ClaimedSize<'a, R> {
    inner: R,
    left: u64,
    claimed: u64,
    overran: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for ClaimedSize<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte past the claim is allowed to be asked for, so that overrunning is noticed.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.overran.set(true);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the NAR is longer than the {} bytes claimed for it",
                    self.claimed
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Unpacks `nar` into the staging entry, hashing what the parser consumes; with `claimed`,
/// a NAR longer than that is refused as soon as it gets longer.
fn unpack_into(
    staging: &Staging,
    nar: impl Read,
    claimed: Option<u64>,
    extra: Option<HashAlgo>,
    shown: &str,
) -> Result<NarDigest, AddError> {
    let overran = std::cell::Cell::new(false);
    let nar = ClaimedSize {
        inner: nar,
        left: claimed.unwrap_or(u64::MAX),
        claimed: claimed.unwrap_or(u64::MAX),
        overran: &overran,
    };
    let mut tee = TeeReader::new(BufReader::new(nar), NarDigester::new(extra));
    nar::unpack_with(&mut tee, &staging.staged_path(), whole_stream_options()).map_err(
        |source| match claimed {
            Some(specified) if overran.get() => AddError::LongerThanClaimed {
                path: shown.to_owned(),
                specified,
            },
            _ => AddError::Nar {
                path: shown.to_owned(),
                source,
            },
        },
    )?;
    let (_, digester) = tee.into_parts();
    let (nar_hash, nar_size, extra) = digester.finish();
    Ok(NarDigest {
        nar_hash,
        nar_size,
        extra,
    })
}

/// Canonicalises the staged tree, leaving a root directory's own
/// metadata for after the rename.
pub(crate) fn canonicalise_staged(
    staging: &Staging,
    shown: &str,
) -> Result<Option<PendingRoot>, AddError> {
    fsutil::canonicalise_tree_at(
        staging.fd.as_fd(),
        OsStr::new(STAGED),
        &staging.staged_path(),
    )
    .map_err(|source| AddError::Fs {
        path: shown.to_owned(),
        source,
    })
}

impl Store {
    fn print(&self, path: &StorePath) -> String {
        self.layout.store_dir().print(path)
    }

    /// Checks that every reference is valid, `path` itself, or in `batch` (paths added
    /// earlier in the same batch, registered in the same transaction).
    fn check_references(
        &self,
        path: Option<&StorePath>,
        shown: &str,
        references: &BTreeSet<StorePath>,
        batch: &BTreeSet<StorePath>,
    ) -> Result<(), AddError> {
        for reference in references {
            if Some(reference) == path || batch.contains(reference) {
                continue;
            }
            let valid = self.db.is_valid(reference).map_err(|source| AddError::Db {
                path: shown.to_owned(),
                source: Box::new(source),
            })?;
            if !valid {
                return Err(AddError::InvalidReference {
                    path: shown.to_owned(),
                    reference: self.print(reference),
                });
            }
        }
        Ok(())
    }

    /// Adds a path from its NAR, checking the claimed info against what the NAR really is.
    /// `nar` must yield exactly one NAR and then end. The store is held throughout; a server
    /// that must not let a slow stream block other writes uses [`Store::prepare_add_path`],
    /// [`PathAddition::stage`] and [`Store::commit_addition`] instead.
    pub fn add_path(
        &mut self,
        info: &ValidPathInfo,
        nar: impl Read,
        options: AddOptions,
    ) -> Result<AddOutcome, AddError> {
        let staged = self.prepare_add_path(info, options)?.stage(nar)?;
        self.commit_addition(staged)
    }

    /// Step 1 of the module documentation for [`Store::add_path`], and a staging entry when
    /// the path is to be written.
    pub fn prepare_add_path(
        &mut self,
        info: &ValidPathInfo,
        options: AddOptions,
    ) -> Result<PathAddition, AddError> {
        self.prepare_add_path_in_batch(info, options, &BTreeSet::new())
    }

    /// [`Store::prepare_add_path`] for one addition of a batch that
    /// [`Store::commit_additions`] will commit: `batch` holds the paths staged before it,
    /// which its references may name (and which, unless repairing, it need not stage again).
    pub fn prepare_add_path_in_batch(
        &mut self,
        info: &ValidPathInfo,
        options: AddOptions,
        batch: &BTreeSet<StorePath>,
    ) -> Result<PathAddition, AddError> {
        let shown = self.print(&info.path);
        check_name(info.path.name()).map_err(|source| AddError::BadName {
            name: info.path.name().to_owned(),
            source,
        })?;
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(AddError::NarHashNotSha256 {
                path: shown,
                algo: info.nar_hash.algo(),
            });
        }
        self.check_references(Some(&info.path), &shown, &info.references, batch)?;
        if let Some(ca) = &info.ca {
            if ca.method == ContentAddressMethod::Fixed(FileIngestionMethod::Git) {
                return Err(AddError::UnsupportedMethod {
                    path: shown,
                    method: ca.method.render_with_algo(ca.hash.algo()),
                });
            }
        }
        let already_valid = self
            .db
            .is_valid(&info.path)
            .map_err(|source| AddError::Db {
                path: shown.clone(),
                source: Box::new(source),
            })?;
        let already_staged = batch.contains(&info.path);
        let staging = if (already_valid || already_staged) && !options.repair {
            None
        } else {
            Some(new_staging(self, &shown)?)
        };
        Ok(PathAddition {
            info: info.clone(),
            shown,
            store_dir: self.layout.store_dir().clone(),
            repair: options.repair,
            staging,
        })
    }

    /// Adds content given raw (AddToStore): for `Text` and `Fixed(Flat)` the stream is the
    /// file's contents, for `Fixed(Recursive)` it is a NAR. The content is hashed with `algo`,
    /// the store path computed from the resulting content address and `references`, and the
    /// path registered with that content address. Returns the path's info and whether it was
    /// new. As with [`Store::add_path`], the store is held throughout.
    pub fn add_from_content(
        &mut self,
        name: &str,
        method: ContentAddressMethod,
        algo: HashAlgo,
        references: &BTreeSet<StorePath>,
        content: impl Read,
        options: AddOptions,
    ) -> Result<(ValidPathInfo, AddOutcome), AddError> {
        let staged = self
            .prepare_add_content(name, method, algo, references, options)?
            .stage(content)?;
        let info = staged.info().clone();
        let outcome = self.commit_addition(staged)?;
        Ok((info, outcome))
    }

    /// The checks of [`Store::add_from_content`] that need the store, and a staging entry.
    pub fn prepare_add_content(
        &mut self,
        name: &str,
        method: ContentAddressMethod,
        algo: HashAlgo,
        references: &BTreeSet<StorePath>,
        options: AddOptions,
    ) -> Result<ContentAddition, AddError> {
        check_name(name).map_err(|source| AddError::BadName {
            name: name.to_owned(),
            source,
        })?;
        let unsupported = || AddError::UnsupportedMethod {
            path: name.to_owned(),
            method: method.render_with_algo(algo),
        };
        match method {
            ContentAddressMethod::Fixed(FileIngestionMethod::Git) => return Err(unsupported()),
            ContentAddressMethod::Text if algo != HashAlgo::Sha256 => return Err(unsupported()),
            _ => {}
        }
        self.check_references(None, name, references, &BTreeSet::new())?;
        let staging = new_staging(self, name)?;
        Ok(ContentAddition {
            name: name.to_owned(),
            method,
            algo,
            references: references.clone(),
            store_dir: self.layout.store_dir().clone(),
            repair: options.repair,
            staging,
        })
    }

    /// Steps 5 and 6 of the module documentation: lock, move into place, register. The
    /// references are checked again, as they were checked before the data was read.
    pub fn commit_addition(&mut self, staged: StagedAddition) -> Result<AddOutcome, AddError> {
        let (mut outcomes, failure) = self.commit_additions(vec![staged]);
        match failure {
            Some(e) => Err(e),
            None => Ok(outcomes.pop().map_or(AddOutcome::AlreadyValid, |(_, o)| o)),
        }
    }

    /// Commits staged additions as one batch (AddMultipleToStore): each is locked, checked
    /// and moved into place in order, then the filesystem is synced once and every new row is
    /// committed in one transaction, so a batch of small paths costs one journal commit
    /// instead of one per file. A reference may name a path earlier in the batch.
    ///
    /// Returns the outcome of each addition up to the first that failed, and that failure;
    /// the additions before it are registered (as Nix registers the paths of an
    /// AddMultipleToStore before the one that fails), the failed one and the rest are not.
    /// If the sync or the transaction fails, nothing of the batch is registered and the
    /// moved trees are taken out again.
    pub fn commit_additions(
        &mut self,
        staged: Vec<StagedAddition>,
    ) -> (Vec<(ValidPathInfo, AddOutcome)>, Option<AddError>) {
        let mut outcomes = Vec::with_capacity(staged.len());
        let mut placed: Vec<Placed> = Vec::new();
        let mut in_batch = BTreeSet::new();
        let mut failure = None;
        for addition in staged {
            let StagedAddition {
                info,
                shown,
                repair,
                staged,
            } = addition;
            let Some((staging, pending)) = staged else {
                outcomes.push((info, AddOutcome::AlreadyValid));
                continue;
            };
            if in_batch.contains(&info.path) && !repair {
                outcomes.push((info, AddOutcome::AlreadyValid));
                continue;
            }
            let placing = self
                .check_references(Some(&info.path), &shown, &info.references, &in_batch)
                .and_then(|()| self.place(&staging, pending, &info, repair, &shown));
            // `staging` drops at the end of this iteration, removing the (now empty) entry.
            match placing {
                Ok(Some(p)) => {
                    in_batch.insert(info.path.clone());
                    placed.push(p);
                    outcomes.push((info, AddOutcome::Added));
                }
                Ok(None) => outcomes.push((info, AddOutcome::AlreadyValid)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !placed.is_empty() {
            if let Err(e) = self.register_placed(&mut placed) {
                return (Vec::new(), Some(e));
            }
        }
        (outcomes, failure)
    }

    /// Step 6 up to the sync: takes the path's lock and moves the staged tree into place.
    /// `None` when the path became valid meanwhile (and this is not a repair).
    fn place(
        &mut self,
        staging: &Staging,
        pending: Option<PendingRoot>,
        info: &ValidPathInfo,
        repair: bool,
        shown: &str,
    ) -> Result<Option<Placed>, AddError> {
        let fs_err = |source| AddError::Fs {
            path: shown.to_owned(),
            source,
        };
        let mut lock = PathLock::acquire(&self.layout.lock_path(&info.path)).map_err(|source| {
            AddError::Lock {
                path: shown.to_owned(),
                source,
            }
        })?;
        let valid = self
            .db
            .is_valid(&info.path)
            .map_err(|source| AddError::Db {
                path: shown.to_owned(),
                source: Box::new(source),
            })?;
        if valid && !repair {
            lock.set_delete_on_release(true);
            return Ok(None);
        }
        let base = OsStr::new(info.path.base_name());
        let real_path = self.layout.real_path(&info.path);
        if fsutil::remove_tree_at(self.store_fd.as_fd(), base, &real_path).map_err(fs_err)? {
            tracing::info!(path = %shown, "replaced an invalid leftover at the final location");
        }
        rustix::fs::renameat_with(
            &staging.fd,
            STAGED,
            &self.store_fd,
            base,
            RenameFlags::NOREPLACE,
        )
        .map_err(|e| fs_err(fsutil::io_err("moving into place", &real_path)(e)))?;
        let placed = Placed {
            lock,
            real_path,
            info: info.clone(),
            shown: shown.to_owned(),
            repair,
        };
        if let Some(root) = pending {
            if let Err(e) = root.finish(&placed.real_path) {
                placed.remove(&self.store_fd);
                return Err(fs_err(e));
            }
        }
        Ok(Some(placed))
    }

    /// The rest of step 6 for moved trees: one sync of the store's filesystem, then their rows
    /// in one transaction. On failure every tree is taken out again (best effort: it is
    /// invalid either way and the next add would replace it).
    fn register_placed(&mut self, placed: &mut [Placed]) -> Result<(), AddError> {
        let registered = self.sync_and_register(placed);
        if registered.is_err() {
            for p in placed.iter() {
                p.remove(&self.store_fd);
            }
            return registered;
        }
        for p in placed.iter_mut() {
            p.lock.set_delete_on_release(true);
        }
        Ok(())
    }

    fn sync_and_register(&mut self, placed: &[Placed]) -> Result<(), AddError> {
        // Errors name the batch's first path, and how many more it held.
        let shown = match placed {
            [only] => only.shown.clone(),
            [first, rest @ ..] => format!("{} (and {} more in the batch)", first.shown, rest.len()),
            [] => return Ok(()),
        };
        let fs_err = |source| AddError::Fs {
            path: shown.clone(),
            source,
        };
        let infos: Vec<ValidPathInfo> = placed.iter().map(|p| p.info.clone()).collect();
        let db_err = |source| AddError::Db {
            path: shown.clone(),
            source: Box::new(source),
        };
        // Sync-behind: the rows go in now with their marks, the syncer makes the contents
        // durable shortly. A repair is synced first: its row already counted as whole.
        if let Some(tracker) = self.sync_behind.clone() {
            if !placed.iter().any(|p| p.repair) {
                let store_fd = &self.store_fd;
                let layout = &self.layout;
                let cache = &mut self.drv_hash_cache;
                let marked = self
                    .db
                    .register_unsynced(&infos, |drv| {
                        derivation_outputs_on_disk(layout, store_fd, cache, drv)
                    })
                    .map_err(db_err)?;
                tracker.marked(&marked);
                return Ok(());
            }
        }
        match placed {
            // One path that is a single file (most small adds): its own fsync and the store
            // directory's are cheaper than syncfs, which would also wait for whatever other
            // programs left dirty on the filesystem.
            [only] if only.is_regular_file(&self.store_fd) => {
                let base = OsStr::new(only.info.path.base_name());
                let file = rustix::fs::openat(
                    &self.store_fd,
                    base,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fs_err(fsutil::io_err("opening", &only.real_path)(e)))?;
                fsutil::fsync(file.as_fd(), &only.real_path).map_err(fs_err)?;
                fsutil::fsync(self.store_fd.as_fd(), self.layout.real_store_dir())
                    .map_err(fs_err)?;
            }
            _ => fsutil::sync_filesystem(self.store_fd.as_fd(), self.layout.real_store_dir())
                .map_err(fs_err)?,
        }
        let store_fd = &self.store_fd;
        let layout = &self.layout;
        let cache = &mut self.drv_hash_cache;
        self.db
            .register_valid_paths(&infos, |drv| {
                derivation_outputs_on_disk(layout, store_fd, cache, drv)
            })
            .map_err(db_err)
    }
}

/// A tree moved to its final location whose row is not committed yet; its lock is held.
struct Placed {
    lock: PathLock,
    real_path: PathBuf,
    info: ValidPathInfo,
    shown: String,
    /// It replaces a valid path's contents (which a later mark could not undo).
    repair: bool,
}

impl Placed {
    /// Whether the moved tree is a single regular file.
    fn is_regular_file(&self, store_fd: &OwnedFd) -> bool {
        let base = OsStr::new(self.info.path.base_name());
        rustix::fs::statat(store_fd, base, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        })
    }

    /// Takes the tree out of the store again (best effort).
    fn remove(&self, store_fd: &OwnedFd) {
        let base = OsStr::new(self.info.path.base_name());
        let _ = fsutil::remove_tree_at(store_fd.as_fd(), base, &self.real_path);
    }
}

impl PathAddition {
    /// Steps 2 to 4 of the module documentation: reads the NAR (which must be exactly one NAR
    /// and then end) into the staging entry, checks it against the claim and canonicalises
    /// it. Needs no [`Store`], so a slow stream holds up no other write.
    pub fn stage(self, nar: impl Read) -> Result<StagedAddition, AddError> {
        let PathAddition {
            info,
            shown,
            store_dir,
            repair,
            staging,
        } = self;
        let Some(staging) = staging else {
            // Nothing will be written, but the stream is still read to its end and checked,
            // so the caller learns about a bad NAR either way.
            let (digest, size) =
                nar::hash_and_size_with(BufReader::new(nar), whole_stream_options()).map_err(
                    |source| AddError::Nar {
                        path: shown.clone(),
                        source,
                    },
                )?;
            check_nar_claim(&info, &Hash::sha256(digest), size, &shown)?;
            return Ok(StagedAddition {
                info,
                shown,
                repair,
                staged: None,
            });
        };
        let extra = match &info.ca {
            Some(ContentAddress {
                method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                hash,
            }) if hash.algo() != HashAlgo::Sha256 => Some(hash.algo()),
            _ => None,
        };
        let NarDigest {
            nar_hash,
            nar_size,
            extra,
        } = unpack_into(&staging, nar, Some(info.nar_size), extra, &shown)?;
        check_nar_claim(&info, &nar_hash, nar_size, &shown)?;
        if let Some(ca) = &info.ca {
            let actual = match ca.method {
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive) => {
                    extra.unwrap_or(nar_hash)
                }
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat)
                | ContentAddressMethod::Text => hash_staged_file(&staging, ca, &shown)?,
                ContentAddressMethod::Fixed(FileIngestionMethod::Git) => {
                    unreachable!("refused before staging")
                }
            };
            if actual != ca.hash {
                return Err(AddError::CaHashMismatch {
                    path: shown,
                    specified: ca.hash.to_prefixed_nix32(),
                    got: actual.to_prefixed_nix32(),
                });
            }
            if !info.is_content_addressed(&store_dir) {
                return Err(AddError::NotContentAddressed(shown));
            }
        }
        let pending = canonicalise_staged(&staging, &shown)?;
        Ok(StagedAddition {
            info,
            shown,
            repair,
            staged: Some((staging, pending)),
        })
    }
}

impl ContentAddition {
    /// Reads the content into the staging entry, computes the path from it and canonicalises
    /// the staged tree. Needs no [`Store`].
    pub fn stage(self, content: impl Read) -> Result<StagedAddition, AddError> {
        let ContentAddition {
            name,
            method,
            algo,
            references,
            store_dir,
            repair,
            staging,
        } = self;
        let (ca_hash, nar_hash, nar_size) = match method {
            ContentAddressMethod::Fixed(FileIngestionMethod::Recursive) => {
                let extra = (algo != HashAlgo::Sha256).then_some(algo);
                let NarDigest {
                    nar_hash,
                    nar_size,
                    extra,
                } = unpack_into(&staging, content, None, extra, &name)?;
                (extra.unwrap_or(nar_hash), nar_hash, nar_size)
            }
            _ => {
                let ca_hash = write_staged_file(&staging, content, algo, &name)?;
                let mut nar_digest = NarDigester::new(None);
                nar::dump_path(&staging.staged_path(), &mut nar_digest).map_err(|source| {
                    AddError::Nar {
                        path: name.clone(),
                        source,
                    }
                })?;
                let (nar_hash, nar_size, _) = nar_digest.finish();
                (ca_hash, nar_hash, nar_size)
            }
        };
        let ca = ContentAddress {
            method,
            hash: ca_hash,
        };
        let info = ValidPathInfo::make_from_ca(
            &store_dir, &name, ca, references, false, nar_hash, nar_size,
        )
        .map_err(|source| AddError::MakePath {
            name: name.clone(),
            source,
        })?;
        let shown = store_dir.print(&info.path);
        let pending = canonicalise_staged(&staging, &shown)?;
        Ok(StagedAddition {
            info,
            shown,
            repair,
            staged: Some((staging, pending)),
        })
    }
}

/// Compares the NAR hash and size with the claim, with Nix's messages.
fn check_nar_claim(
    info: &ValidPathInfo,
    nar_hash: &Hash,
    nar_size: u64,
    shown: &str,
) -> Result<(), AddError> {
    if *nar_hash != info.nar_hash {
        return Err(AddError::HashMismatch {
            path: shown.to_owned(),
            specified: info.nar_hash.to_prefixed_nix32(),
            got: nar_hash.to_prefixed_nix32(),
        });
    }
    if nar_size != info.nar_size {
        return Err(AddError::SizeMismatch {
            path: shown.to_owned(),
            specified: info.nar_size,
            got: nar_size,
        });
    }
    Ok(())
}

/// Hashes the staged single regular file with the content address's algorithm.
pub(crate) fn hash_staged_file(
    staging: &Staging,
    ca: &ContentAddress,
    shown: &str,
) -> Result<Hash, AddError> {
    let not_flat = || AddError::NotAFlatFile {
        path: shown.to_owned(),
        ca: ca.to_string(),
    };
    let file = match fsutil::open_file_at(
        staging.fd.as_fd(),
        OsStr::new(STAGED),
        &staging.staged_path(),
    ) {
        Ok(file) => file,
        Err(FsError::NotARegularFile(_)) => return Err(not_flat()),
        Err(FsError::Io { source, .. }) if source.raw_os_error() == Some(libc_eloop()) => {
            return Err(not_flat())
        }
        Err(source) => {
            return Err(AddError::Fs {
                path: shown.to_owned(),
                source,
            })
        }
    };
    let mut hasher = Hasher::new(ca.hash.algo());
    std::io::copy(&mut fsutil::FdReader(file), &mut hasher).map_err(|source| AddError::Read {
        path: shown.to_owned(),
        source,
    })?;
    Ok(hasher.finish())
}

/// `ELOOP`: what opening a symlink with `O_NOFOLLOW` fails with.
fn libc_eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}

/// Writes `content` to the staged file, returning its hash with `algo`.
fn write_staged_file(
    staging: &Staging,
    mut content: impl Read,
    algo: HashAlgo,
    name: &str,
) -> Result<Hash, AddError> {
    let shown = staging.staged_path();
    let fd = rustix::fs::openat(
        &staging.fd,
        STAGED,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| AddError::Fs {
        path: name.to_owned(),
        source: fsutil::io_err("creating", &shown)(e),
    })?;
    let mut file = std::fs::File::from(fd);
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(AddError::Read {
                    path: name.to_owned(),
                    source,
                })
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|source| AddError::Read {
            path: name.to_owned(),
            source,
        })?;
    }
    Ok(hasher.finish())
}

/// An input derivation could not be read from the store.
#[derive(Debug, Error)]
#[error("{0}")]
pub(crate) struct DrvReadError(pub(crate) String);

/// Reads and parses the `.drv` file of `drv` from the store directory (never following a
/// symlink, at most [`MAX_DRV_SIZE`] bytes).
pub(crate) fn read_derivation(
    layout: &crate::layout::StoreLayout,
    store_fd: &OwnedFd,
    drv: &StorePath,
) -> Result<Derivation, DrvReadError> {
    let store_dir = layout.store_dir();
    let real = layout.real_path(drv);
    let file = fsutil::open_file_at(store_fd.as_fd(), OsStr::new(drv.base_name()), &real)
        .map_err(|e| DrvReadError(e.to_string()))?;
    let mut text = Vec::new();
    fsutil::FdReader(file)
        .take(MAX_DRV_SIZE + 1)
        .read_to_end(&mut text)
        .map_err(|e| DrvReadError(format!("reading '{}': {e}", real.display())))?;
    if text.len() as u64 > MAX_DRV_SIZE {
        return Err(DrvReadError(format!(
            "'{}' is larger than {MAX_DRV_SIZE} bytes",
            real.display()
        )));
    }
    let name = name_from_drv_path(drv).map_err(|e| DrvReadError(e.to_string()))?;
    Derivation::parse(&text, store_dir, name).map_err(|e| DrvReadError(e.to_string()))
}

/// The known output paths of the derivation `drv` (just moved into the store by this process),
/// after checking its outputs as Nix's `registerValidPaths` does: input-addressed output paths
/// must be the ones hashDerivationModulo gives (input derivations are read from the store),
/// and the env var of each output must hold its path.
fn derivation_outputs_on_disk(
    layout: &crate::layout::StoreLayout,
    store_fd: &OwnedFd,
    cache: &mut HashModuloCache,
    drv: &StorePath,
) -> Result<DerivationOutputs, DbError> {
    let store_dir = layout.store_dir();
    let fail = |reason: String| DbError::Derivation {
        path: store_dir.print(drv),
        reason,
    };
    let parsed = read_derivation(layout, store_fd, drv).map_err(|e| fail(e.0))?;
    let lookup = |input: &StorePath| read_derivation(layout, store_fd, input);
    parsed
        .check_outputs(store_dir, &lookup, cache)
        .map_err(|e| fail(e.to_string()))?;
    let outputs = parsed
        .output_paths(store_dir)
        .map_err(|e| fail(e.to_string()))?;
    // Floating and deferred outputs have no path yet, so no row.
    Ok(outputs
        .into_iter()
        .filter_map(|(name, path)| Some((name, path?)))
        .collect())
}

#[cfg(test)]
mod tests;
