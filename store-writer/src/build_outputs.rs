//! Registering the outputs of a finished build.
//!
//! The build user's collector serialises each output as a NAR into a pipe; nothing here ever
//! opens a file the build wrote. The steps mirror [`crate::add`]:
//!
//! 1. [`Store::prepare_build_outputs`] (store held): the derivation is valid, and the store-writer
//!    reads it itself — every output named in the request must be one of its outputs, with the
//!    same path and (for a fixed output) the same content address; every reference candidate
//!    is valid; a staging entry per output that is to be written.
//! 2. [`OutputRegistration::stage`] (no store): each NAR is unpacked into its staging entry
//!    with the bounded parser, hashed (SHA-256 and size, and the content address's algorithm
//!    for a recursive fixed output) and scanned for the hash parts of the reference
//!    candidates and of the outputs, in one pass. Fixed outputs are checked (flat: a single
//!    non-executable regular file; no references; the hash the derivation specifies), the tree
//!    canonicalised. In check mode nothing is staged: the NAR is hashed and compared with the
//!    registered hash. An output that is valid already (normal mode) is read, checked as a NAR
//!    and left alone.
//! 3. [`Store::commit_build_outputs`] (store held): the derivation's output checks
//!    (`allowedReferences` and the rest, `maxSize`, `maxClosureSize`) against the database and
//!    the other new outputs; then every output path is locked (in name order), the staged trees
//!    renamed into place, the store directory synced, and all rows committed in one
//!    transaction with the derivation as deriver and `ultimate` set. If anything fails, the
//!    moved trees are taken out again and nothing is registered.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, RenameFlags};
use thiserror::Error;
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::derivation::DerivationOutput;
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::store_writer::{OutputChecks, RegisterMode};
use ward_proto::nar::{self, NarError, TeeReader};
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{StoreDir, StorePath};

use crate::add::{self, AddError, NarDigester, Staging, STAGED};
use crate::db::DbError;
use crate::fsutil::{self, PendingRoot};
use crate::lock::PathLock;
use crate::refscan::RefScanner;
use crate::store::Store;

/// One output to register, as the frontend describes it (checked against the derivation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    /// The output's name (`out`, `dev`...).
    pub name: String,
    /// Where it goes.
    pub path: StorePath,
    /// For a fixed output: the content address it must have.
    pub fixed: Option<ContentAddress>,
}

/// Why registering a build's outputs failed; nothing was registered. Messages use Nix's
/// wording with full store paths.
#[derive(Debug, Error)]
pub enum OutputError {
    /// A path that must be valid is not.
    #[error("path '{shown}' is not valid")]
    NotValid {
        /// The path.
        path: StorePath,
        /// It, printed.
        shown: String,
    },
    /// The request does not describe the derivation (a confused or hostile frontend).
    #[error("output '{output}' of '{drv}' cannot be registered: {reason}")]
    NotTheDerivation {
        /// The derivation, printed.
        drv: String,
        /// The output name.
        output: String,
        /// What differs.
        reason: String,
    },
    /// A fixed output does not have the hash the derivation specifies.
    #[error(
        "hash mismatch in fixed-output derivation '{drv}':\n  specified: {}\n     got:    {}",
        specified.to_sri(),
        got.to_sri()
    )]
    FixedHashMismatch {
        /// The derivation, printed.
        drv: String,
        /// The hash the derivation specifies.
        specified: Box<Hash>,
        /// The hash of what the build produced.
        got: Box<Hash>,
    },
    /// `--check`: the rebuilt output differs from the registered one.
    #[error("derivation '{drv}' may not be deterministic: output '{shown}' differs")]
    CheckMismatch {
        /// The derivation, printed.
        drv: String,
        /// The output.
        path: StorePath,
        /// It, printed.
        shown: String,
        /// The registered NAR hash.
        registered: Box<Hash>,
        /// The NAR hash of the rebuilt output.
        rebuilt: Box<Hash>,
    },
    /// The output breaks a rule (a derivation's reference or size checks, a fixed output's
    /// shape). `reason` is the whole message.
    #[error("{reason}")]
    Rejected {
        /// The output.
        path: StorePath,
        /// Nix's message.
        reason: String,
    },
    /// The output's NAR is malformed or could not be read.
    #[error("cannot register output '{shown}': {source}")]
    Nar {
        /// The output.
        path: StorePath,
        /// It, printed.
        shown: String,
        /// What was wrong.
        #[source]
        source: NarError,
    },
    /// An output kind ward does not build.
    #[error("output '{output}' of '{drv}': {what} is not supported by ward")]
    Unsupported {
        /// The derivation, printed.
        drv: String,
        /// The output name.
        output: String,
        /// What is not supported.
        what: String,
    },
    /// Staging, locking, moving or registering failed.
    #[error("{0}")]
    Add(#[from] AddError),
}

impl OutputError {
    /// The read error, when reading an output's NAR pipe failed.
    pub fn read_failure(&self) -> Option<&std::io::Error> {
        match self {
            OutputError::Nar {
                source: NarError::Io { source, .. },
                ..
            } => Some(source),
            _ => None,
        }
    }
}

/// What happens to one output.
#[derive(Debug)]
enum Plan {
    /// Not valid yet (or repair): unpack into this staging entry.
    Write(Staging),
    /// Valid, normal mode: read the NAR, keep what is registered.
    Keep(Box<ValidPathInfo>),
    /// Valid, check mode: the rebuilt NAR must hash to the registered one.
    Compare(Box<ValidPathInfo>),
}

/// Outputs whose registration passed step 1; see the [module documentation](self).
#[derive(Debug)]
pub struct OutputRegistration {
    drv_path: StorePath,
    drv_shown: String,
    store_dir: StoreDir,
    mode: RegisterMode,
    outputs: Vec<(BuildOutput, Plan)>,
    /// Reference candidates and the outputs.
    candidates: BTreeSet<StorePath>,
}

/// An output staged, checked and canonicalised.
#[derive(Debug)]
struct StagedOutput {
    name: String,
    info: ValidPathInfo,
    staging: Staging,
    pending: Option<PendingRoot>,
}

/// Outputs read and checked (step 2), ready for [`Store::commit_build_outputs`].
#[derive(Debug)]
pub struct StagedOutputs {
    drv_shown: String,
    mode: RegisterMode,
    staged: Vec<StagedOutput>,
    /// Outputs that were valid and stay as they are (normal and check mode).
    kept: BTreeMap<String, ValidPathInfo>,
}

/// One reference rule of an output: the paths it uses (references or requisites), the
/// derivation's list if it has one, and whether the list allows (or forbids) what it names.
type RefRule<'a> = (
    &'a BTreeSet<StorePath>,
    Option<&'a BTreeSet<StorePath>>,
    bool,
);

/// A `Write` that hashes, counts and scans in one pass.
struct OutputSink {
    digest: NarDigester,
    refs: RefScanner,
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.digest.write_all(buf)?;
        self.refs.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Step 1 of the [module documentation](self).
    pub fn prepare_build_outputs(
        &mut self,
        drv_path: &StorePath,
        outputs: Vec<BuildOutput>,
        reference_candidates: &BTreeSet<StorePath>,
        mode: RegisterMode,
    ) -> Result<OutputRegistration, OutputError> {
        let store_dir = self.layout.store_dir().clone();
        let drv_shown = store_dir.print(drv_path);
        let db_err = |source: DbError, shown: &str| {
            OutputError::Add(AddError::Db {
                path: shown.to_owned(),
                source: Box::new(source),
            })
        };
        let is_valid = |store: &Store, path: &StorePath| {
            store
                .db
                .is_valid(path)
                .map_err(|e| db_err(e, &store_dir.print(path)))
        };
        if !drv_path.is_derivation() || !is_valid(self, drv_path)? {
            return Err(OutputError::NotValid {
                path: drv_path.clone(),
                shown: drv_shown,
            });
        }
        let drv = add::read_derivation(&self.layout, &self.store_fd, drv_path).map_err(|e| {
            OutputError::NotTheDerivation {
                drv: drv_shown.clone(),
                output: String::new(),
                reason: format!("reading the derivation: {e}"),
            }
        })?;
        let paths = drv
            .output_paths(&store_dir)
            .map_err(|e| OutputError::NotTheDerivation {
                drv: drv_shown.clone(),
                output: String::new(),
                reason: e.to_string(),
            })?;
        let mismatch = |output: &str, reason: String| OutputError::NotTheDerivation {
            drv: drv_shown.clone(),
            output: output.to_owned(),
            reason,
        };
        if outputs.is_empty() {
            return Err(mismatch("", "the request names no output".into()));
        }
        for output in &outputs {
            let Some(declared) = drv.outputs.get(&output.name) else {
                return Err(mismatch(
                    &output.name,
                    "the derivation has no such output".into(),
                ));
            };
            match (declared, &output.fixed) {
                (DerivationOutput::InputAddressed(_), None) => {}
                (DerivationOutput::CAFixed(ca), Some(claimed)) if ca == claimed => {
                    if matches!(
                        ca.method,
                        ContentAddressMethod::Text
                            | ContentAddressMethod::Fixed(FileIngestionMethod::Git)
                    ) {
                        return Err(OutputError::Unsupported {
                            drv: drv_shown.clone(),
                            output: output.name.clone(),
                            what: format!(
                                "content address method '{}'",
                                ca.method.render_with_algo(ca.hash.algo())
                            ),
                        });
                    }
                }
                (
                    DerivationOutput::CAFloating { .. }
                    | DerivationOutput::Deferred
                    | DerivationOutput::Impure { .. },
                    _,
                ) => {
                    return Err(OutputError::Unsupported {
                        drv: drv_shown.clone(),
                        output: output.name.clone(),
                        what: "a content-addressed (floating, deferred or impure) output".into(),
                    })
                }
                _ => {
                    return Err(mismatch(
                        &output.name,
                        "the request and the derivation disagree on its content address".into(),
                    ))
                }
            }
            let declared_path = paths.get(&output.name).cloned().flatten();
            if declared_path.as_ref() != Some(&output.path) {
                return Err(mismatch(
                    &output.name,
                    format!(
                        "the derivation puts it at '{}', not at '{}'",
                        declared_path
                            .map(|p| store_dir.print(&p))
                            .unwrap_or_else(|| "no known path".into()),
                        store_dir.print(&output.path)
                    ),
                ));
            }
        }
        for candidate in reference_candidates {
            if !is_valid(self, candidate)? {
                return Err(OutputError::NotValid {
                    path: candidate.clone(),
                    shown: store_dir.print(candidate),
                });
            }
        }
        let mut candidates = reference_candidates.clone();
        let mut planned = Vec::with_capacity(outputs.len());
        for output in outputs {
            candidates.insert(output.path.clone());
            let shown = store_dir.print(&output.path);
            let registered = self
                .db
                .query_path_info(&output.path)
                .map_err(|e| db_err(e, &shown))?;
            let plan = match (mode, registered) {
                (RegisterMode::Check, Some(info)) => Plan::Compare(Box::new(info)),
                (RegisterMode::Check, None) => {
                    return Err(OutputError::NotValid {
                        path: output.path,
                        shown,
                    })
                }
                (RegisterMode::Normal, Some(info)) => Plan::Keep(Box::new(info)),
                (RegisterMode::Normal | RegisterMode::Repair, _) => {
                    Plan::Write(add::new_staging(self, &shown)?)
                }
            };
            planned.push((output, plan));
        }
        Ok(OutputRegistration {
            drv_path: drv_path.clone(),
            drv_shown,
            store_dir,
            mode,
            outputs: planned,
            candidates,
        })
    }

    /// Step 3 of the [module documentation](self): checks, then one transaction. Returns every
    /// output's registered info.
    pub fn commit_build_outputs(
        &mut self,
        staged: StagedOutputs,
        checks: &BTreeMap<String, OutputChecks>,
    ) -> Result<BTreeMap<String, ValidPathInfo>, OutputError> {
        let StagedOutputs {
            drv_shown,
            mode,
            staged,
            mut kept,
        } = staged;
        if mode == RegisterMode::Check {
            // As Nix: a verified rebuild makes the paths ultimately trusted.
            let mut upgraded = Vec::new();
            for info in kept.values_mut().filter(|info| !info.ultimate) {
                info.ultimate = true;
                upgraded.push(info.clone());
            }
            if !upgraded.is_empty() {
                self.db
                    .register_valid_paths(&upgraded, |_| Ok(Default::default()))
                    .map_err(|source| AddError::Db {
                        path: drv_shown.clone(),
                        source: Box::new(source),
                    })?;
            }
            return Ok(kept);
        }
        self.apply_output_checks(&staged, checks)?;
        // The references were checked when the request came; check them again now that the
        // store is held (other outputs of this build are not valid yet).
        let new_paths: BTreeSet<&StorePath> = staged.iter().map(|s| &s.info.path).collect();
        for output in &staged {
            for reference in &output.info.references {
                if new_paths.contains(reference) {
                    continue;
                }
                let valid = self.db.is_valid(reference).map_err(|source| AddError::Db {
                    path: drv_shown.clone(),
                    source: Box::new(source),
                })?;
                if !valid {
                    return Err(OutputError::NotValid {
                        path: reference.clone(),
                        shown: self.layout.store_dir().print(reference),
                    });
                }
            }
        }
        let repair = mode == RegisterMode::Repair;
        let mut locks = Vec::with_capacity(staged.len());
        let mut to_write = Vec::with_capacity(staged.len());
        for output in staged {
            let shown = self.layout.store_dir().print(&output.info.path);
            let lock =
                PathLock::acquire(&self.layout.lock_path(&output.info.path)).map_err(|source| {
                    AddError::Lock {
                        path: shown.clone(),
                        source,
                    }
                })?;
            let valid = self
                .db
                .query_path_info(&output.info.path)
                .map_err(|source| AddError::Db {
                    path: shown.clone(),
                    source: Box::new(source),
                })?;
            locks.push(lock);
            match valid {
                // Registered meanwhile (another build of the same derivation): keep that one.
                Some(info) if !repair => {
                    kept.insert(output.name.clone(), info);
                }
                _ => to_write.push((output, shown)),
            }
        }
        // Signed as they are registered, as Nix signs what it builds.
        for (output, _) in &mut to_write {
            self.sign(&mut output.info);
        }
        let mut moved = Vec::with_capacity(to_write.len());
        let result = self.move_and_register(&mut to_write, &mut moved);
        if result.is_err() {
            for (base, real) in moved {
                let _ = fsutil::remove_tree_at(self.store_fd.as_fd(), OsStr::new(&base), &real);
            }
        } else {
            for lock in &mut locks {
                lock.set_delete_on_release(true);
            }
        }
        result?;
        // Reply with the rows as written (registration time included).
        for (output, shown) in to_write {
            let info = self
                .db
                .query_path_info(&output.info.path)
                .map_err(|source| AddError::Db {
                    path: shown.clone(),
                    source: Box::new(source),
                })?
                .unwrap_or(output.info);
            kept.insert(output.name, info);
        }
        Ok(kept)
    }

    /// Moves every staged tree into place and registers them all in one transaction. `moved`
    /// collects what was moved, for the caller to take out again on failure.
    fn move_and_register(
        &mut self,
        to_write: &mut [(StagedOutput, String)],
        moved: &mut Vec<(String, std::path::PathBuf)>,
    ) -> Result<(), OutputError> {
        for (output, shown) in to_write.iter() {
            let fs_err = |source| AddError::Fs {
                path: shown.clone(),
                source,
            };
            let base = output.info.path.base_name();
            let real_path = self.layout.real_path(&output.info.path);
            if fsutil::remove_tree_at(self.store_fd.as_fd(), OsStr::new(base), &real_path)
                .map_err(fs_err)?
            {
                tracing::info!(path = %shown, "replaced an invalid (or repaired) copy at the final location");
            }
            rustix::fs::renameat_with(
                &output.staging.fd,
                STAGED,
                &self.store_fd,
                base,
                RenameFlags::NOREPLACE,
            )
            .map_err(|e| fs_err(fsutil::io_err("moving into place", &real_path)(e)))?;
            moved.push((base.to_owned(), real_path));
        }
        for (output, shown) in to_write.iter_mut() {
            if let Some(root) = output.pending.take() {
                let real_path = self.layout.real_path(&output.info.path);
                root.finish(&real_path).map_err(|source| AddError::Fs {
                    path: shown.clone(),
                    source,
                })?;
            }
        }
        fsutil::sync_filesystem(self.store_fd.as_fd(), self.layout.real_store_dir()).map_err(
            |source| AddError::Fs {
                path: self.layout.real_store_dir().display().to_string(),
                source,
            },
        )?;
        let infos: Vec<ValidPathInfo> = to_write.iter().map(|(o, _)| o.info.clone()).collect();
        self.db
            .register_valid_paths(&infos, |_| Ok(Default::default()))
            .map_err(|source| {
                OutputError::Add(AddError::Db {
                    path: to_write
                        .first()
                        .map(|(_, shown)| shown.clone())
                        .unwrap_or_default(),
                    source: Box::new(source),
                })
            })
    }

    /// The derivation's output checks, as Nix's `checkOutputs`, for the outputs about to be
    /// registered. References of a requisite closure are looked up among these outputs first,
    /// then in the database.
    fn apply_output_checks(
        &self,
        staged: &[StagedOutput],
        checks: &BTreeMap<String, OutputChecks>,
    ) -> Result<(), OutputError> {
        let store_dir = self.layout.store_dir();
        let by_path: BTreeMap<&StorePath, &ValidPathInfo> =
            staged.iter().map(|o| (&o.info.path, &o.info)).collect();
        let closure = |start: &StorePath| -> Result<(BTreeSet<StorePath>, u64), OutputError> {
            let mut done = BTreeSet::new();
            let mut size = 0u64;
            let mut todo = vec![start.clone()];
            while let Some(path) = todo.pop() {
                if !done.insert(path.clone()) {
                    continue;
                }
                let (nar_size, refs) = match by_path.get(&path) {
                    Some(info) => (info.nar_size, info.references.clone()),
                    None => {
                        let shown = store_dir.print(&path);
                        let info = self
                            .db
                            .query_path_info(&path)
                            .map_err(|source| AddError::Db {
                                path: shown.clone(),
                                source: Box::new(source),
                            })?
                            .ok_or(OutputError::NotValid { path, shown })?;
                        (info.nar_size, info.references)
                    }
                };
                size = size.saturating_add(nar_size);
                todo.extend(refs);
            }
            Ok((done, size))
        };
        for output in staged {
            let Some(checks) = checks.get(&output.name) else {
                continue;
            };
            let info = &output.info;
            let shown = store_dir.print(&info.path);
            let reject = |reason: String| OutputError::Rejected {
                path: info.path.clone(),
                reason,
            };
            if let Some(max) = checks.max_size {
                if info.nar_size > max {
                    return Err(reject(format!(
                        "path '{shown}' is too large at {} bytes; limit is {max} bytes",
                        info.nar_size
                    )));
                }
            }
            let needs_closure = checks.max_closure_size.is_some()
                || checks.allowed_requisites.is_some()
                || !checks.disallowed_requisites.is_empty();
            let (requisites, closure_size) = if needs_closure {
                let (mut paths, size) = closure(&info.path)?;
                // Self-references never count against a requisite list.
                paths.remove(&info.path);
                (paths, size)
            } else {
                (BTreeSet::new(), 0)
            };
            if let Some(max) = checks.max_closure_size {
                if closure_size > max {
                    return Err(reject(format!(
                        "closure of path '{shown}' is too large at {closure_size} bytes; limit is {max} bytes"
                    )));
                }
            }
            let refs_without_self: BTreeSet<StorePath> = info
                .references
                .iter()
                .filter(|r| **r != info.path)
                .cloned()
                .collect();
            // (paths used, the derivation's list, whether the list is an allow-list)
            let lists: [RefRule<'_>; 4] = [
                (&refs_without_self, checks.allowed_references.as_ref(), true),
                (&requisites, checks.allowed_requisites.as_ref(), true),
                (
                    &refs_without_self,
                    Some(&checks.disallowed_references),
                    false,
                ),
                (&requisites, Some(&checks.disallowed_requisites), false),
            ];
            for (used, spec, allowed) in lists {
                let Some(spec) = spec else { continue };
                let bad: Vec<&StorePath> = used
                    .iter()
                    .filter(|p| spec.contains(*p) != allowed)
                    .collect();
                if !bad.is_empty() {
                    let list: String = bad
                        .iter()
                        .map(|p| format!("\n  {}", store_dir.print(p)))
                        .collect();
                    return Err(reject(format!(
                        "output '{shown}' is not allowed to refer to the following paths:{list}"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl OutputRegistration {
    /// The output paths, in the order their NARs are expected.
    pub fn output_paths(&self) -> impl Iterator<Item = &StorePath> {
        self.outputs.iter().map(|(o, _)| &o.path)
    }

    /// Step 2 of the [module documentation](self): `nars` yields one NAR per output, in the
    /// order of the outputs given to [`Store::prepare_build_outputs`].
    pub fn stage<R: Read>(self, nars: Vec<R>) -> Result<StagedOutputs, OutputError> {
        let OutputRegistration {
            drv_path,
            drv_shown,
            store_dir,
            mode,
            outputs,
            candidates,
        } = self;
        assert_eq!(nars.len(), outputs.len(), "one NAR per output");
        let mut staged = Vec::new();
        let mut kept = BTreeMap::new();
        for ((output, plan), nar) in outputs.into_iter().zip(nars) {
            let shown = store_dir.print(&output.path);
            let nar_err = |source| OutputError::Nar {
                path: output.path.clone(),
                shown: shown.clone(),
                source,
            };
            match plan {
                Plan::Keep(info) => {
                    nar::hash_and_size_with(BufReader::new(nar), add::whole_stream_options())
                        .map_err(nar_err)?;
                    kept.insert(output.name, *info);
                }
                Plan::Compare(info) => {
                    let (digest, _) =
                        nar::hash_and_size_with(BufReader::new(nar), add::whole_stream_options())
                            .map_err(nar_err)?;
                    let rebuilt = Hash::sha256(digest);
                    if rebuilt != info.nar_hash {
                        return Err(OutputError::CheckMismatch {
                            drv: drv_shown,
                            path: output.path,
                            shown,
                            registered: Box::new(info.nar_hash),
                            rebuilt: Box::new(rebuilt),
                        });
                    }
                    kept.insert(output.name, *info);
                }
                Plan::Write(staging) => {
                    let info = stage_output(
                        &store_dir,
                        &drv_path,
                        &drv_shown,
                        &output,
                        &candidates,
                        &staging,
                        nar,
                    )?;
                    let pending = add::canonicalise_staged(&staging, &shown)?;
                    staged.push(StagedOutput {
                        name: output.name,
                        info,
                        staging,
                        pending,
                    });
                }
            }
        }
        Ok(StagedOutputs {
            drv_shown,
            mode,
            staged,
            kept,
        })
    }
}

/// Unpacks, hashes and scans one output; checks a fixed output. Returns its info.
fn stage_output<R: Read>(
    store_dir: &StoreDir,
    drv_path: &StorePath,
    drv_shown: &str,
    output: &BuildOutput,
    candidates: &BTreeSet<StorePath>,
    staging: &Staging,
    nar: R,
) -> Result<ValidPathInfo, OutputError> {
    let shown = store_dir.print(&output.path);
    let extra = match &output.fixed {
        Some(ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            hash,
        }) if hash.algo() != HashAlgo::Sha256 => Some(hash.algo()),
        _ => None,
    };
    let sink = OutputSink {
        digest: NarDigester::new(extra),
        refs: RefScanner::new(candidates),
    };
    let mut tee = TeeReader::new(BufReader::new(nar), sink);
    nar::unpack_with(
        &mut tee,
        &staging.staged_path(),
        add::whole_stream_options(),
    )
    .map_err(|source| OutputError::Nar {
        path: output.path.clone(),
        shown: shown.clone(),
        source,
    })?;
    let (_, sink) = tee.into_parts();
    let (nar_hash, nar_size, extra) = sink.digest.finish();
    let references = sink.refs.finish();
    let reject = |reason: String| OutputError::Rejected {
        path: output.path.clone(),
        reason,
    };
    let ca = match &output.fixed {
        None => None,
        Some(ca) => {
            let got = match ca.method {
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive) => {
                    extra.unwrap_or(nar_hash)
                }
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat) => {
                    let st = rustix::fs::statat(&staging.fd, STAGED, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| AddError::Fs {
                            path: shown.clone(),
                            source: fsutil::io_err("examining", &staging.staged_path())(e),
                        })?;
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                        || st.st_mode & 0o100 != 0
                    {
                        return Err(reject(format!(
                            "output path '{shown}' should be a non-executable regular file since \
                             recursive hashing is not enabled (outputHashMode=flat)"
                        )));
                    }
                    add::hash_staged_file(staging, ca, &shown)?
                }
                ContentAddressMethod::Text
                | ContentAddressMethod::Fixed(FileIngestionMethod::Git) => {
                    unreachable!("refused when the registration was prepared")
                }
            };
            if got != ca.hash {
                return Err(OutputError::FixedHashMismatch {
                    drv: drv_shown.to_owned(),
                    specified: Box::new(ca.hash),
                    got: Box::new(got),
                });
            }
            if !references.is_empty() {
                return Err(reject(format!(
                    "illegal path references in fixed-output derivation '{drv_shown}'"
                )));
            }
            Some(*ca)
        }
    };
    Ok(ValidPathInfo {
        path: output.path.clone(),
        deriver: Some(drv_path.clone()),
        nar_hash,
        references,
        registration_time: 0,
        nar_size,
        ultimate: true,
        sigs: BTreeSet::new(),
        ca,
    })
}

#[cfg(test)]
mod tests;
