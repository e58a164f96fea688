//! Derivations: the typed form, the ATerm text of `.drv` files ([`aterm`]), the BasicDerivation
//! wire triples ([`output`]), hashDerivationModulo and output paths ([`hash_modulo`]) and Nix's
//! JSON form ([`json`]).
//!
//! # Byte strings
//!
//! Nix strings are byte strings: a derivation's builder, arguments and environment may hold any
//! bytes (`builtins.readFile` of a Latin-1 file ends up in `env`), and the `.drv` text, its hash
//! and every output path depend on those exact bytes. So `builder`, `args` and `env` are
//! `Vec<u8>` here and print back byte for byte. Fields Nix writes without escaping (output
//! names, paths, hash algorithms, the platform, input output names) are `String`: a `.drv` with
//! invalid UTF-8 in one of those is refused, which no real derivation has.
//!
//! # What is checked where
//!
//! [`Derivation::parse`] checks syntax, store paths, names, output kinds and (as current Nix
//! does) that a fixed output's stated path matches its content address. Whether the outputs
//! form a valid combination is [`Derivation::derivation_type`], and whether input-addressed
//! paths are the right ones is [`Derivation::check_outputs`]: both need more than the text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use thiserror::Error;

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo};
use crate::nix32;
use crate::store_path::{check_name, StoreDir, StorePath, StorePathError};

pub mod aterm;
pub mod hash_modulo;
pub mod json;
pub mod output;

pub use aterm::MAX_ATERM_SIZE;
pub use hash_modulo::{DrvHashModulo, HashModuloCache, HashModuloError};
pub use output::{output_triple, OutputTriple};

/// The file name suffix of store derivations.
pub const DRV_EXTENSION: &str = ".drv";

/// Why a derivation was refused or an operation on it failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DerivationError {
    /// The text is longer than [`MAX_ATERM_SIZE`].
    #[error("derivation is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The text does not follow the ATerm grammar.
    #[error("malformed derivation at byte {offset}: expected {expected}")]
    Syntax {
        /// Where the parser stopped.
        offset: usize,
        /// What it wanted there.
        expected: &'static str,
    },
    /// A string literal runs to the end of the text.
    #[error("malformed derivation at byte {offset}: unterminated string")]
    UnterminatedString {
        /// Where the string starts.
        offset: usize,
    },
    /// Bytes after the closing parenthesis.
    #[error("malformed derivation at byte {offset}: unexpected data after the closing ')'")]
    TrailingData {
        /// Where the extra bytes start.
        offset: usize,
    },
    /// `DrvWithVersion` with a version Nix never defined.
    #[error("unknown derivation ATerm format version '{version}'")]
    UnknownVersion {
        /// The version string (lossily decoded).
        version: String,
    },
    /// `DrvWithVersion("xp-dyn-drv", …)` or dynamic inputs: an experiment ward does not support.
    #[error("dynamic derivations (ATerm format version 'xp-dyn-drv') are not supported")]
    DynamicDerivationsUnsupported,
    /// A field that must be text is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A platform holding `"` or `\`: Nix writes the platform unescaped, so the `.drv` text
    /// could not hold it (it would not parse back to the same derivation).
    #[error("platform '{platform}' contains '\"' or '\\', which a .drv file cannot hold")]
    UnprintablePlatform {
        /// The platform (escaped for display, shortened).
        platform: String,
    },
    /// A path that is not a valid store path of the store directory.
    #[error("bad store path '{path}': {source}")]
    BadPath {
        /// The path given.
        path: String,
        /// Why it was refused.
        source: StorePathError,
    },
    /// A key or element given twice.
    #[error("duplicate {what} '{key}'")]
    Duplicate {
        /// Which kind of key.
        what: &'static str,
        /// The key (lossily decoded).
        key: String,
    },
    /// An input derivation entry that asks for no outputs.
    #[error("input derivation '{path}' lists no outputs")]
    NoInputOutputs {
        /// The input derivation.
        path: String,
    },
    /// An output whose path, hash algorithm and hash do not fit together.
    #[error("derivation output '{output}': {reason}")]
    BadOutput {
        /// The output name.
        output: String,
        /// What is wrong.
        reason: String,
    },
    /// The derivation name is not a valid store path name.
    #[error("invalid derivation name '{name}': {source}")]
    BadName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        source: StorePathError,
    },
    /// An output name that is not a valid store path name.
    #[error("invalid output name '{name}': {source}")]
    BadOutputName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        source: StorePathError,
    },
    /// A semantic error found at a place in the ATerm text.
    #[error("malformed derivation at byte {offset}: {source}")]
    At {
        /// Where the offending string starts.
        offset: usize,
        /// The error.
        source: Box<DerivationError>,
    },
    /// A derivation without outputs.
    #[error("derivation '{name}' must have at least one output")]
    NoOutputs {
        /// The derivation name.
        name: String,
    },
    /// Outputs of different kinds in one derivation.
    #[error("derivation '{name}' mixes output types")]
    MixedOutputTypes {
        /// The derivation name.
        name: String,
    },
    /// More than one fixed output.
    #[error("derivation '{name}' has more than one fixed output")]
    MultipleFixedOutputs {
        /// The derivation name.
        name: String,
    },
    /// A single fixed output not named `out`.
    #[error("the fixed output of derivation '{name}' must be named 'out', not '{output}'")]
    FixedOutputNotOut {
        /// The derivation name.
        name: String,
        /// The output's name.
        output: String,
    },
    /// Floating outputs with different hash algorithms.
    #[error("all floating outputs of derivation '{name}' must use the same hash algorithm")]
    FloatingAlgoMismatch {
        /// The derivation name.
        name: String,
    },
    /// A content-addressed output path could not be computed.
    #[error("cannot compute the path of output '{output}' of derivation '{name}': {source}")]
    OutputPath {
        /// The derivation name.
        name: String,
        /// The output name.
        output: String,
        /// Why.
        source: StorePathError,
    },
    /// A path used as a derivation path does not end in `.drv`.
    #[error("store path '{path}' is not a derivation (its name does not end in '.drv')")]
    NotADrvPath {
        /// The path given.
        path: String,
    },
    /// A derivation read for a path carries another name than the path implies.
    #[error("derivation read for '{path}' is named '{name}'")]
    NameMismatch {
        /// The path looked up.
        path: String,
        /// The name of what was returned.
        name: String,
    },
    /// An input asks for an output its derivation does not have.
    #[error("input derivation '{input}' has no output '{output}'")]
    MissingInputOutput {
        /// The input derivation.
        input: String,
        /// The output asked for.
        output: String,
    },
    /// The input graph loops back to a derivation still being hashed.
    #[error("derivation '{path}' depends on itself")]
    Cycle {
        /// A derivation on the loop.
        path: String,
    },
    /// An input-addressed output path is not the one the derivation's hash gives.
    #[error("derivation '{name}' has incorrect output '{got}', should be '{expected}'")]
    WrongOutputPath {
        /// The derivation name.
        name: String,
        /// The path in the derivation.
        got: String,
        /// The path it must have.
        expected: String,
    },
    /// The environment variable named after an output does not hold its path.
    #[error(
        "derivation '{name}' has incorrect environment variable '{var}', should be '{expected}'"
    )]
    WrongEnvVar {
        /// The derivation name.
        name: String,
        /// The variable (= output name).
        var: String,
        /// The path it must hold.
        expected: String,
    },
    /// Nix's JSON form could not be read or written.
    #[error("derivation JSON: {0}")]
    Json(String),
}

impl DerivationError {
    /// Wraps `self` with the byte offset it was found at.
    pub(crate) fn at(self, offset: usize) -> DerivationError {
        DerivationError::At {
            offset,
            source: Box::new(self),
        }
    }

    /// The byte offset in the ATerm text, when the error has one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            DerivationError::Syntax { offset, .. }
            | DerivationError::UnterminatedString { offset }
            | DerivationError::TrailingData { offset }
            | DerivationError::At { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The error without its [`DerivationError::At`] wrapper.
    pub fn innermost(&self) -> &DerivationError {
        match self {
            DerivationError::At { source, .. } => source.innermost(),
            other => other,
        }
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// The path is a function of the derivation's inputs (hashDerivationModulo).
    InputAddressed(StorePath),
    /// Content known in advance (fetchers); the path follows from the content address.
    CAFixed(ContentAddress),
    /// Content-addressed, path known only after the build (experimental `ca-derivations`).
    CAFloating {
        /// How the output will be hashed.
        method: ContentAddressMethod,
        /// With which algorithm.
        algo: HashAlgo,
    },
    /// Input-addressed, path not computed yet (it depends on a floating input).
    Deferred,
    /// Impure output (experimental `impure-derivations`).
    Impure {
        /// How the output will be hashed.
        method: ContentAddressMethod,
        /// With which algorithm.
        algo: HashAlgo,
    },
}

impl DerivationOutput {
    /// The output's store path when it is known before the build: stated for input-addressed
    /// outputs, computed for fixed ones.
    pub fn path(
        &self,
        store_dir: &StoreDir,
        drv_name: &str,
        output_name: &str,
    ) -> Result<Option<StorePath>, DerivationError> {
        match self {
            DerivationOutput::InputAddressed(path) => Ok(Some(path.clone())),
            DerivationOutput::CAFixed(ca) => {
                fixed_output_path(store_dir, ca, drv_name, output_name).map(Some)
            }
            DerivationOutput::CAFloating { .. }
            | DerivationOutput::Deferred
            | DerivationOutput::Impure { .. } => Ok(None),
        }
    }
}

/// The path of a fixed output: the content address applied to `<drv>[-<output>]`.
pub(crate) fn fixed_output_path(
    store_dir: &StoreDir,
    ca: &ContentAddress,
    drv_name: &str,
    output_name: &str,
) -> Result<StorePath, DerivationError> {
    store_dir
        .make_path_from_ca(
            &output_path_name(drv_name, output_name),
            ca,
            &BTreeSet::new(),
            false,
        )
        .map_err(|source| DerivationError::OutputPath {
            name: drv_name.to_owned(),
            output: output_name.to_owned(),
            source,
        })
}

/// The kind of a derivation, from the kinds of its outputs (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationType {
    /// Input-addressed; `deferred` when the output paths are not computed yet.
    InputAddressed {
        /// Outputs are [`DerivationOutput::Deferred`].
        deferred: bool,
    },
    /// Content-addressed; `fixed` for fixed-output derivations, else floating.
    ContentAddressed {
        /// A single fixed output.
        fixed: bool,
    },
    /// Impure outputs.
    Impure,
}

impl DerivationType {
    /// Fixed-output derivations get the network and are hashed by their output.
    pub fn is_fixed(self) -> bool {
        self == DerivationType::ContentAddressed { fixed: true }
    }

    /// Whether all output paths are known before the build.
    pub fn has_known_output_paths(self) -> bool {
        matches!(
            self,
            DerivationType::InputAddressed { deferred: false }
                | DerivationType::ContentAddressed { fixed: true }
        )
    }

    /// Whether the build runs in the sandbox (everything but fixed-output and impure).
    pub fn is_sandboxed(self) -> bool {
        matches!(
            self,
            DerivationType::InputAddressed { .. }
                | DerivationType::ContentAddressed { fixed: false }
        )
    }
}

/// A derivation as a `.drv` file holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The name: the `.drv` path's name without `.drv` (not part of the ATerm text).
    pub name: String,
    /// Outputs by name.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and which of their outputs are used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources (store paths that are not derivation outputs).
    pub input_srcs: BTreeSet<StorePath>,
    /// The system type (`x86_64-linux`).
    pub platform: String,
    /// The program to run.
    pub builder: Vec<u8>,
    /// Its arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// Its environment.
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A derivation without input derivations, as BuildDerivation sends it: the client has already
/// resolved the inputs to store paths in `input_srcs`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicDerivation {
    /// The name: the `.drv` path's name without `.drv`.
    pub name: String,
    /// Outputs by name.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// All input paths.
    pub input_srcs: BTreeSet<StorePath>,
    /// The system type.
    pub platform: String,
    /// The program to run.
    pub builder: Vec<u8>,
    /// Its arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// Its environment.
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Derivation {
    /// Parses ATerm text; `name` is the `.drv` path's name without `.drv`.
    pub fn parse(
        text: &[u8],
        store_dir: &StoreDir,
        name: &str,
    ) -> Result<Derivation, DerivationError> {
        aterm::parse(text, store_dir, name)
    }

    /// The ATerm text, exactly as Nix writes it.
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Result<Vec<u8>, DerivationError> {
        aterm::print(self, store_dir)
    }

    /// The `.drv` file's references: input sources and input derivations.
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_srcs.clone();
        refs.extend(self.input_drvs.keys().cloned());
        refs
    }

    /// The store path of the `.drv` file: a text object named `<name>.drv`.
    pub fn drv_path(&self, store_dir: &StoreDir) -> Result<StorePath, DerivationError> {
        let text = self.to_aterm(store_dir)?;
        let name = format!("{}{DRV_EXTENSION}", self.name);
        store_dir
            .make_text_path(
                &name,
                &Hash::compute(HashAlgo::Sha256, &text),
                &self.references(),
            )
            .map_err(|source| DerivationError::BadName { name, source })
    }

    /// The derivation's kind, refusing output combinations Nix refuses.
    pub fn derivation_type(&self) -> Result<DerivationType, DerivationError> {
        derivation_type_of(&self.name, &self.outputs)
    }

    /// Output paths known before the build, by output name (`None` for floating, deferred and
    /// impure outputs).
    pub fn output_paths(
        &self,
        store_dir: &StoreDir,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DerivationError> {
        output_paths_of(store_dir, &self.name, &self.outputs)
    }

    /// An environment variable by name.
    pub fn env_var(&self, key: &str) -> Option<&[u8]> {
        self.env.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// Whether the builder is one built into Nix (`builtin:fetchurl`, ...).
    pub fn is_builtin(&self) -> bool {
        self.builder.starts_with(b"builtin:")
    }

    /// The same derivation without its input derivations.
    pub fn to_basic(&self) -> BasicDerivation {
        BasicDerivation {
            name: self.name.clone(),
            outputs: self.outputs.clone(),
            input_srcs: self.input_srcs.clone(),
            platform: self.platform.clone(),
            builder: self.builder.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
        }
    }
}

impl BasicDerivation {
    /// The derivation's kind, refusing output combinations Nix refuses.
    pub fn derivation_type(&self) -> Result<DerivationType, DerivationError> {
        derivation_type_of(&self.name, &self.outputs)
    }

    /// Output paths known before the build, by output name.
    pub fn output_paths(
        &self,
        store_dir: &StoreDir,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DerivationError> {
        output_paths_of(store_dir, &self.name, &self.outputs)
    }

    /// The outputs as BuildDerivation sends them: `(name, (path, hashAlgo, hash))` in name
    /// order.
    pub fn output_triples(
        &self,
        store_dir: &StoreDir,
    ) -> Result<Vec<(String, OutputTriple)>, DerivationError> {
        self.outputs
            .iter()
            .map(|(name, output)| {
                Ok((
                    name.clone(),
                    output_triple(output, store_dir, &self.name, name)?,
                ))
            })
            .collect()
    }

    /// An environment variable by name.
    pub fn env_var(&self, key: &str) -> Option<&[u8]> {
        self.env.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// Whether the builder is one built into Nix.
    pub fn is_builtin(&self) -> bool {
        self.builder.starts_with(b"builtin:")
    }
}

/// Bytes shown as `b"…"` with non-printable bytes escaped, so that `{:?}` of a derivation is
/// readable.
struct ShowBytes<'a>(&'a [u8]);

impl fmt::Debug for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn show_args(args: &[Vec<u8>]) -> Vec<ShowBytes<'_>> {
    args.iter().map(|a| ShowBytes(a)).collect()
}

fn show_env(env: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<ShowKey<'_>, ShowBytes<'_>> {
    env.iter()
        .map(|(k, v)| (ShowKey(k), ShowBytes(v)))
        .collect()
}

/// An env key for [`fmt::Debug`], ordered like the bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ShowKey<'a>(&'a [u8]);

impl fmt::Debug for ShowKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ShowBytes(self.0).fmt(f)
    }
}

impl fmt::Debug for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Derivation")
            .field("name", &self.name)
            .field("outputs", &self.outputs)
            .field("input_drvs", &self.input_drvs)
            .field("input_srcs", &self.input_srcs)
            .field("platform", &self.platform)
            .field("builder", &ShowBytes(&self.builder))
            .field("args", &show_args(&self.args))
            .field("env", &show_env(&self.env))
            .finish()
    }
}

impl fmt::Debug for BasicDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicDerivation")
            .field("name", &self.name)
            .field("outputs", &self.outputs)
            .field("input_srcs", &self.input_srcs)
            .field("platform", &self.platform)
            .field("builder", &ShowBytes(&self.builder))
            .field("args", &show_args(&self.args))
            .field("env", &show_env(&self.env))
            .finish()
    }
}

impl From<Derivation> for BasicDerivation {
    fn from(drv: Derivation) -> BasicDerivation {
        BasicDerivation {
            name: drv.name,
            outputs: drv.outputs,
            input_srcs: drv.input_srcs,
            platform: drv.platform,
            builder: drv.builder,
            args: drv.args,
            env: drv.env,
        }
    }
}

fn output_paths_of(
    store_dir: &StoreDir,
    drv_name: &str,
    outputs: &BTreeMap<String, DerivationOutput>,
) -> Result<BTreeMap<String, Option<StorePath>>, DerivationError> {
    outputs
        .iter()
        .map(|(name, output)| Ok((name.clone(), output.path(store_dir, drv_name, name)?)))
        .collect()
}

/// Nix's `BasicDerivation::type()`: all outputs of one kind; a fixed-output derivation has
/// exactly one output, `out`; floating outputs share one hash algorithm.
fn derivation_type_of(
    name: &str,
    outputs: &BTreeMap<String, DerivationOutput>,
) -> Result<DerivationType, DerivationError> {
    let mut kinds = outputs.values().map(|o| match o {
        DerivationOutput::InputAddressed(_) => 0,
        DerivationOutput::CAFixed(_) => 1,
        DerivationOutput::CAFloating { .. } => 2,
        DerivationOutput::Deferred => 3,
        DerivationOutput::Impure { .. } => 4,
    });
    let Some(first) = kinds.next() else {
        return Err(DerivationError::NoOutputs {
            name: name.to_owned(),
        });
    };
    if kinds.any(|k| k != first) {
        return Err(DerivationError::MixedOutputTypes {
            name: name.to_owned(),
        });
    }
    match first {
        0 => Ok(DerivationType::InputAddressed { deferred: false }),
        1 => {
            if outputs.len() > 1 {
                return Err(DerivationError::MultipleFixedOutputs {
                    name: name.to_owned(),
                });
            }
            match outputs.keys().next() {
                Some(output) if output != "out" => Err(DerivationError::FixedOutputNotOut {
                    name: name.to_owned(),
                    output: output.clone(),
                }),
                _ => Ok(DerivationType::ContentAddressed { fixed: true }),
            }
        }
        2 => {
            let mut algos = outputs.values().filter_map(|o| match o {
                DerivationOutput::CAFloating { algo, .. } => Some(*algo),
                _ => None,
            });
            let first_algo = algos.next();
            if algos.any(|a| Some(a) != first_algo) {
                return Err(DerivationError::FloatingAlgoMismatch {
                    name: name.to_owned(),
                });
            }
            Ok(DerivationType::ContentAddressed { fixed: false })
        }
        3 => Ok(DerivationType::InputAddressed { deferred: true }),
        _ => Ok(DerivationType::Impure),
    }
}

/// The name of an output's store path: `<drv>` for `out`, else `<drv>-<output>`.
pub fn output_path_name(drv_name: &str, output_name: &str) -> String {
    if output_name == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output_name}")
    }
}

/// The derivation name a `.drv` path implies: its name without `.drv`.
pub fn name_from_drv_path(drv_path: &StorePath) -> Result<&str, DerivationError> {
    drv_path
        .name()
        .strip_suffix(DRV_EXTENSION)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| DerivationError::NotADrvPath {
            path: drv_path.to_string(),
        })
}

/// The placeholder Nix puts in the environment for an output whose path is unknown before the
/// build: `/` + nix32(SHA-256(`nix-output:<name>`)).
pub fn hash_placeholder(output_name: &str) -> String {
    let hash = Hash::compute(
        HashAlgo::Sha256,
        format!("nix-output:{output_name}").as_bytes(),
    );
    format!("/{}", nix32::encode(hash.digest()))
}

/// Checks an output name: it becomes part of a store path name, so the same rules apply.
pub(crate) fn check_output_name(name: &str) -> Result<(), DerivationError> {
    check_name(name).map_err(|source| DerivationError::BadOutputName {
        name: name.to_owned(),
        source,
    })
}

/// Checks a derivation name (the `.drv` path name without `.drv`).
pub(crate) fn check_drv_name(name: &str) -> Result<(), DerivationError> {
    check_name(name).map_err(|source| DerivationError::BadName {
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
