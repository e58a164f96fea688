//! hashDerivationModulo and the paths of input-addressed outputs.
//!
//! * A fixed-output derivation hashes to SHA-256 of
//!   `fixed:out:<[r:]algo>:<base16 digest>:<output path>`: only what it produces counts, not how.
//! * Any other derivation hashes to SHA-256 of its ATerm text with each input derivation path
//!   replaced by the base16 of that input's own (unmasked) hash; inputs that hash alike merge
//!   their output sets. Its input-addressed output `o` is then the `output:o` path of the
//!   *masked* hash (output paths and env vars named after outputs written as `""`).
//! * Floating and impure derivations, and anything that depends on one, are "deferred": their
//!   output paths are known only after the build.
//!
//! Input derivations are read through a caller's lookup and their hashes memoised in a
//! [`HashModuloCache`]. The walk over the input graph uses an explicit stack, never recursion,
//! and refuses a cycle instead of looping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::error::Error as StdError;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

use super::aterm::{print_with, Modulo};
use super::output::render_method_algo;
use super::{
    fixed_output_path, hash_placeholder, name_from_drv_path, Derivation, DerivationError,
    DerivationOutput, DerivationType,
};

/// The result of hashDerivationModulo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvHashModulo {
    /// Input-addressed (or with all inputs known): one hash for every output.
    Regular(Hash),
    /// Fixed-output: one hash per output, from the output's content address and path.
    FixedOutput(BTreeMap<String, Hash>),
    /// Output paths known only after the build (floating or impure, here or in an input). The
    /// hash still names the derivation's outputs in realisations.
    Deferred(Hash),
}

impl DrvHashModulo {
    /// Whether output paths are known only after the build.
    pub fn is_deferred(&self) -> bool {
        matches!(self, DrvHashModulo::Deferred(_))
    }

    /// The hash of each of `outputs` (Nix's `DrvHash::hashes`).
    pub fn output_hashes<'a>(
        &self,
        outputs: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Hash> {
        match self {
            DrvHashModulo::FixedOutput(map) => map.clone(),
            DrvHashModulo::Regular(h) | DrvHashModulo::Deferred(h) => {
                outputs.into_iter().map(|o| (o.clone(), *h)).collect()
            }
        }
    }
}

/// Why hashing a derivation modulo its inputs failed.
#[derive(Debug, Error)]
pub enum HashModuloError<E: StdError + 'static> {
    /// The caller's lookup could not produce an input derivation.
    #[error("cannot read input derivation '{path}': {source}")]
    Lookup {
        /// The input derivation.
        path: String,
        /// The lookup's error.
        source: E,
    },
    /// A derivation in the graph is invalid.
    #[error(transparent)]
    Derivation(#[from] DerivationError),
}

/// The unmasked hash of an input derivation and its output names.
#[derive(Debug, Clone)]
struct CachedHash {
    hash: DrvHashModulo,
    outputs: BTreeSet<String>,
}

impl CachedHash {
    fn output_hash(&self, output: &str) -> Option<&Hash> {
        match &self.hash {
            DrvHashModulo::FixedOutput(map) => map.get(output),
            DrvHashModulo::Regular(h) | DrvHashModulo::Deferred(h) => {
                self.outputs.contains(output).then_some(h)
            }
        }
    }
}

/// Memoised (unmasked) hashes of input derivations, by `.drv` path. Keep one per store
/// directory; entries never go stale because `.drv` paths are content addresses.
#[derive(Debug, Clone, Default)]
pub struct HashModuloCache {
    entries: HashMap<StorePath, CachedHash>,
}

impl HashModuloCache {
    /// An empty cache.
    pub fn new() -> HashModuloCache {
        HashModuloCache::default()
    }

    /// Number of derivations hashed so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached unmasked hash of a `.drv` path, if any.
    pub fn get(&self, drv_path: &StorePath) -> Option<&DrvHashModulo> {
        self.entries.get(drv_path).map(|c| &c.hash)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Reads an input derivation given its `.drv` path.
pub type Lookup<'a, E> = &'a dyn Fn(&StorePath) -> Result<Derivation, E>;

/// What [`modulo_parts`] found: the text hashed (if any) and the result.
struct ModuloParts {
    text: Option<Vec<u8>>,
    hash: DrvHashModulo,
}

const IMPURE_HASH_INPUT: &[u8] = b"impure";

/// Hashes `drv` once every input derivation is in `cache`.
fn modulo_parts(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    cache: &HashModuloCache,
) -> Result<ModuloParts, DerivationError> {
    let kind = drv.derivation_type()?;
    match kind {
        DerivationType::ContentAddressed { fixed: true } => {
            let mut hashes = BTreeMap::new();
            for (name, output) in &drv.outputs {
                if let DerivationOutput::CAFixed(ca) = output {
                    let path = fixed_output_path(store_dir, ca, &drv.name, name)?;
                    let text = format!(
                        "fixed:out:{}:{}:{}",
                        render_method_algo(ca.method, ca.hash.algo()),
                        ca.hash.to_base16(),
                        store_dir.print(&path)
                    );
                    hashes.insert(
                        name.clone(),
                        Hash::compute(HashAlgo::Sha256, text.as_bytes()),
                    );
                }
            }
            return Ok(ModuloParts {
                text: None,
                hash: DrvHashModulo::FixedOutput(hashes),
            });
        }
        DerivationType::Impure => {
            return Ok(ModuloParts {
                text: None,
                hash: DrvHashModulo::Deferred(Hash::compute(HashAlgo::Sha256, IMPURE_HASH_INPUT)),
            });
        }
        DerivationType::InputAddressed { .. } | DerivationType::ContentAddressed { .. } => {}
    }
    let mut deferred = kind == DerivationType::ContentAddressed { fixed: false };
    let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, wanted) in &drv.input_drvs {
        let input = cache
            .entries
            .get(path)
            .expect("every input derivation is hashed before the derivation that uses it");
        deferred |= input.hash.is_deferred();
        for output in wanted {
            let hash =
                input
                    .output_hash(output)
                    .ok_or_else(|| DerivationError::MissingInputOutput {
                        input: store_dir.print(path),
                        output: output.clone(),
                    })?;
            inputs
                .entry(hash.to_base16())
                .or_default()
                .insert(output.clone());
        }
    }
    let text = print_with(
        drv,
        store_dir,
        Some(Modulo {
            inputs: &inputs,
            mask_outputs,
        }),
    )?;
    let hash = Hash::compute(HashAlgo::Sha256, &text);
    Ok(ModuloParts {
        text: Some(text),
        hash: if deferred {
            DrvHashModulo::Deferred(hash)
        } else {
            DrvHashModulo::Regular(hash)
        },
    })
}

/// Puts the unmasked hash of every derivation `drv` depends on into `cache`, depth first with
/// an explicit stack.
fn hash_inputs<E: StdError + 'static>(
    drv: &Derivation,
    store_dir: &StoreDir,
    lookup: Lookup<'_, E>,
    cache: &mut HashModuloCache,
) -> Result<(), HashModuloError<E>> {
    enum Step {
        /// Read the derivation and queue its inputs.
        Visit(StorePath),
        /// All its inputs are hashed: hash it.
        Finish(StorePath, Derivation),
    }
    let mut stack: Vec<Step> = drv
        .input_drvs
        .keys()
        .filter(|p| !cache.entries.contains_key(*p))
        .cloned()
        .map(Step::Visit)
        .collect();
    // Derivations whose Finish step is on the stack; everything above it depends on them.
    let mut in_progress: HashSet<StorePath> = HashSet::new();
    while let Some(step) = stack.pop() {
        match step {
            Step::Visit(path) => {
                if cache.entries.contains_key(&path) {
                    continue;
                }
                if in_progress.contains(&path) {
                    return Err(DerivationError::Cycle {
                        path: store_dir.print(&path),
                    }
                    .into());
                }
                let expected_name = name_from_drv_path(&path)?;
                let input = lookup(&path).map_err(|source| HashModuloError::Lookup {
                    path: store_dir.print(&path),
                    source,
                })?;
                if input.name != expected_name {
                    return Err(DerivationError::NameMismatch {
                        path: store_dir.print(&path),
                        name: input.name,
                    }
                    .into());
                }
                let pending: Vec<StorePath> = input
                    .input_drvs
                    .keys()
                    .filter(|p| !cache.entries.contains_key(*p))
                    .cloned()
                    .collect();
                in_progress.insert(path.clone());
                stack.push(Step::Finish(path, input));
                stack.extend(pending.into_iter().map(Step::Visit));
            }
            Step::Finish(path, input) => {
                let parts = modulo_parts(&input, store_dir, false, cache)?;
                in_progress.remove(&path);
                cache.entries.insert(
                    path,
                    CachedHash {
                        hash: parts.hash,
                        outputs: input.outputs.into_keys().collect(),
                    },
                );
            }
        }
    }
    Ok(())
}

/// Nix's `hashDerivationModulo`. With `mask_outputs` the derivation's own output paths and the
/// env vars named after its outputs count as `""` (how its output paths are computed); input
/// derivations are always hashed unmasked.
pub fn hash_derivation_modulo<E: StdError + 'static>(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    lookup: Lookup<'_, E>,
    cache: &mut HashModuloCache,
) -> Result<DrvHashModulo, HashModuloError<E>> {
    hash_inputs(drv, store_dir, lookup, cache)?;
    Ok(modulo_parts(drv, store_dir, mask_outputs, cache)?.hash)
}

/// The text hashDerivationModulo hashes for a non-fixed, pure derivation (input derivations
/// replaced by their hashes); `None` for fixed-output and impure derivations, which are hashed
/// otherwise. For review and tests: Nix's test suite characterises this text.
pub fn modulo_aterm<E: StdError + 'static>(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    lookup: Lookup<'_, E>,
    cache: &mut HashModuloCache,
) -> Result<Option<Vec<u8>>, HashModuloError<E>> {
    hash_inputs(drv, store_dir, lookup, cache)?;
    Ok(modulo_parts(drv, store_dir, mask_outputs, cache)?.text)
}

impl Derivation {
    /// hashDerivationModulo of this derivation; see [`hash_derivation_modulo`].
    pub fn hash_modulo<E: StdError + 'static>(
        &self,
        store_dir: &StoreDir,
        mask_outputs: bool,
        lookup: Lookup<'_, E>,
        cache: &mut HashModuloCache,
    ) -> Result<DrvHashModulo, HashModuloError<E>> {
        hash_derivation_modulo(self, store_dir, mask_outputs, lookup, cache)
    }

    /// The masked hash of each output (Nix's `staticOutputHashes`): what names the outputs in
    /// realisations (`sha256:<base16>!<output>`).
    pub fn static_output_hashes<E: StdError + 'static>(
        &self,
        store_dir: &StoreDir,
        lookup: Lookup<'_, E>,
        cache: &mut HashModuloCache,
    ) -> Result<BTreeMap<String, Hash>, HashModuloError<E>> {
        let hash = hash_derivation_modulo(self, store_dir, true, lookup, cache)?;
        Ok(hash.output_hashes(self.outputs.keys()))
    }

    /// Fills in output paths the way `derivation` does in the evaluator: input-addressed
    /// outputs get the `output:<o>` path of the masked hash (or stay deferred when an input is
    /// floating), and each output's env var gets its path; a fixed output's env var gets its
    /// content-addressed path; floating and impure outputs get placeholders.
    pub fn compute_output_paths<E: StdError + 'static>(
        &mut self,
        store_dir: &StoreDir,
        lookup: Lookup<'_, E>,
        cache: &mut HashModuloCache,
    ) -> Result<(), HashModuloError<E>> {
        match self.derivation_type()? {
            DerivationType::InputAddressed { .. } => {
                let names: Vec<String> = self.outputs.keys().cloned().collect();
                for name in &names {
                    self.outputs
                        .insert(name.clone(), DerivationOutput::Deferred);
                    self.env.insert(name.as_bytes().to_vec(), Vec::new());
                }
                let hash = hash_derivation_modulo(self, store_dir, true, lookup, cache)?;
                if let DrvHashModulo::Regular(hash) = hash {
                    for name in names {
                        let path = store_dir
                            .make_output_path(&name, &hash, &self.name)
                            .map_err(|source| DerivationError::OutputPath {
                                name: self.name.clone(),
                                output: name.clone(),
                                source,
                            })?;
                        self.env.insert(
                            name.as_bytes().to_vec(),
                            store_dir.print(&path).into_bytes(),
                        );
                        self.outputs
                            .insert(name, DerivationOutput::InputAddressed(path));
                    }
                }
            }
            DerivationType::ContentAddressed { fixed: true } => {
                for (name, path) in self.output_paths(store_dir)? {
                    if let Some(path) = path {
                        self.env
                            .insert(name.into_bytes(), store_dir.print(&path).into_bytes());
                    }
                }
            }
            DerivationType::ContentAddressed { fixed: false } | DerivationType::Impure => {
                for name in self.outputs.keys() {
                    self.env.insert(
                        name.as_bytes().to_vec(),
                        hash_placeholder(name).into_bytes(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Checks what the local store checks when a `.drv` is registered (Nix's
    /// `checkDerivationOutputs`): the outputs form a valid combination, every input-addressed
    /// path is the one the masked hash gives, and the env var named after each input-addressed
    /// or fixed output holds its path. `self.name` must come from the `.drv` path.
    pub fn check_outputs<E: StdError + 'static>(
        &self,
        store_dir: &StoreDir,
        lookup: Lookup<'_, E>,
        cache: &mut HashModuloCache,
    ) -> Result<(), HashModuloError<E>> {
        self.derivation_type()?;
        let mut masked: Option<DrvHashModulo> = None;
        for (name, output) in &self.outputs {
            let actual = match output {
                DerivationOutput::InputAddressed(path) => {
                    let hash = match &masked {
                        Some(h) => h,
                        None => masked.insert(hash_derivation_modulo(
                            self, store_dir, true, lookup, cache,
                        )?),
                    };
                    let hash = match hash {
                        DrvHashModulo::Regular(h) | DrvHashModulo::Deferred(h) => *h,
                        DrvHashModulo::FixedOutput(map) => {
                            *map.get(name)
                                .ok_or_else(|| DerivationError::MixedOutputTypes {
                                    name: self.name.clone(),
                                })?
                        }
                    };
                    let expected = store_dir
                        .make_output_path(name, &hash, &self.name)
                        .map_err(|source| DerivationError::OutputPath {
                            name: self.name.clone(),
                            output: name.clone(),
                            source,
                        })?;
                    if *path != expected {
                        return Err(DerivationError::WrongOutputPath {
                            name: self.name.clone(),
                            got: store_dir.print(path),
                            expected: store_dir.print(&expected),
                        }
                        .into());
                    }
                    expected
                }
                DerivationOutput::CAFixed(ca) => {
                    fixed_output_path(store_dir, ca, &self.name, name)?
                }
                DerivationOutput::CAFloating { .. }
                | DerivationOutput::Deferred
                | DerivationOutput::Impure { .. } => continue,
            };
            let printed = store_dir.print(&actual);
            if self.env_var(name) != Some(printed.as_bytes()) {
                return Err(DerivationError::WrongEnvVar {
                    name: self.name.clone(),
                    var: name.clone(),
                    expected: printed,
                }
                .into());
            }
        }
        Ok(())
    }
}
