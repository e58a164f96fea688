//! The builder's environment and the files of its build directory, computed from a derivation
//! the way Nix 2.8 does it (`initEnv`, `initTmpDir`, `writeStructuredAttrs` and the
//! `exportReferencesGraph` part of `startBuilder` in `local-derivation-goal.cc`, and
//! `prepareStructuredAttrs` / `writeStructuredAttrsShell` in `parsed-derivations.cc`).
//!
//! Everything here is described as seen from inside the sandbox: the build directory is
//! [`EnvRequest::sandbox_build_dir`] and the outputs are at their final paths, so the only
//! rewriting Nix would do is replacing each output's hash placeholder by its path.
//!
//! # Differences from Nix 2.8, on purpose
//!
//! * Nix 2.8 points `NIX_ATTRS_SH_FILE` and `NIX_ATTRS_JSON_FILE` at the *host* build
//!   directory, which does not exist inside the sandbox (fixed in Nix 2.15). ward points them
//!   at the build directory as the builder sees it.
//! * Environment variable names that are empty or hold `=`, and names or values holding NUL,
//!   are refused: `execve` could not pass them as written.
//! * The builder's environment holds text: a variable whose name or value is not UTF-8 is
//!   refused (`passAsFile` values are files and may hold any bytes).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use thiserror::Error;
use ward_proto::derivation::{hash_placeholder, name_from_drv_path, Derivation, DerivationError};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::broker::BuildDirFile;
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::{StoreDir, StorePath};

/// `HOME` in the build: a path that does not exist (Nix's `homeDir`).
pub const HOME_DIR: &str = "/homeless-shelter";
/// `PATH` in the build, unless the derivation sets it.
pub const DUMMY_PATH: &str = "/path-not-set";
/// The structured attributes as JSON, in the build directory.
pub const ATTRS_JSON_FILE: &str = ".attrs.json";
/// The structured attributes as bash declarations, in the build directory.
pub const ATTRS_SH_FILE: &str = ".attrs.sh";

/// What [`build_environment`] needs to know about one build.
pub struct EnvRequest<'a> {
    /// The derivation to build.
    pub drv: &'a Derivation,
    /// The logical store directory.
    pub store_dir: &'a StoreDir,
    /// Output name -> final output path (all outputs of the derivation).
    pub output_paths: &'a BTreeMap<String, StorePath>,
    /// The build's input closure (every path visible in the sandbox).
    pub input_closure: &'a BTreeSet<StorePath>,
    /// "/build" (sandbox-build-dir).
    pub sandbox_build_dir: &'a str,
    /// NIX_BUILD_CORES (settings `cores`; 0 stays 0 as in Nix).
    pub cores: u32,
    /// Looks up the daemon's own environment variable (for impureEnvVars of fixed-output
    /// derivations).
    pub daemon_env: &'a dyn Fn(&str) -> Option<String>,
    /// Looks up a valid path's info (for exportReferencesGraph and structured attrs' closure
    /// info).
    pub path_info: &'a dyn Fn(&StorePath) -> Option<Arc<ValidPathInfo>>,
}

impl fmt::Debug for EnvRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvRequest")
            .field("drv", &self.drv.name)
            .field("store_dir", self.store_dir)
            .field("output_paths", self.output_paths)
            .field("input_closure", &self.input_closure.len())
            .field("sandbox_build_dir", &self.sandbox_build_dir)
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

/// The builder's environment and the files to create in its build directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// Variable name -> value.
    pub env: BTreeMap<String, String>,
    /// Files to write into the build directory before the build starts, each named by a
    /// single path component (`.attr-<hash>`, `.attrs.json`, `.attrs.sh`, exportReferencesGraph
    /// files). Names are distinct.
    pub files: Vec<BuildDirFile>,
}

/// Why the environment or the options of a derivation could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    /// A variable that would reach the builder's environment is not UTF-8.
    #[error("environment variable '{var}' of the derivation is not valid UTF-8")]
    NotUtf8 {
        /// The variable's name (lossily decoded).
        var: String,
    },
    /// A variable `execve` cannot pass as written.
    #[error("environment variable '{var}' {reason}")]
    BadEnvVar {
        /// The variable's name (escaped for display).
        var: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `__json` attribute is not a JSON object.
    #[error("cannot process __json attribute: {reason}")]
    BadJson {
        /// The parser's message, or what the value is instead.
        reason: String,
    },
    /// An attribute of the wrong type.
    #[error("attribute '{attr}' of the derivation must be {expected}")]
    AttrType {
        /// The attribute (dotted for nested ones: `outputChecks.out.maxSize`).
        attr: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A non-structured `exportReferencesGraph` with an odd number of words.
    #[error("odd number of tokens in 'exportReferencesGraph': '{value}'")]
    OddExportTokens {
        /// The attribute's value.
        value: String,
    },
    /// An `exportReferencesGraph` file name that is not `[A-Za-z_][A-Za-z0-9_.-]*`.
    #[error("invalid file name '{name}' in 'exportReferencesGraph'")]
    BadExportFileName {
        /// The name given.
        name: String,
    },
    /// An `exportReferencesGraph` path outside the store.
    #[error("'exportReferencesGraph' contains a non-store path '{path}'")]
    ExportNonStorePath {
        /// The path given.
        path: String,
    },
    /// An `exportReferencesGraph` path in the store that is not a valid store path.
    #[error("invalid store path '{path}' in 'exportReferencesGraph': {reason}")]
    ExportBadStorePath {
        /// The path given.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// An `exportReferencesGraph` path the build cannot see.
    #[error(
        "cannot export references of path '{path}' because it is not in the input closure of \
         the derivation"
    )]
    NotInInputClosure {
        /// The path (full).
        path: String,
    },
    /// A path in an exported closure that has no path info.
    #[error("path '{path}' is not valid")]
    InvalidPath {
        /// The path (full).
        path: String,
    },
    /// A derivation in an exported closure could not be read.
    #[error("cannot read derivation '{path}' (in 'exportReferencesGraph'): {reason}")]
    DrvRead {
        /// The `.drv` path (full).
        path: String,
        /// Why.
        reason: String,
    },
    /// A derivation in an exported closure whose output paths are not known (Nix 2.8: not
    /// implemented).
    #[error(
        "exportReferences on CA derivations is not yet implemented (derivation '{path}' in \
         'exportReferencesGraph')"
    )]
    ExportCaDerivation {
        /// The `.drv` path (full).
        path: String,
    },
    /// [`EnvRequest::output_paths`] lacks an output of the derivation.
    #[error("no path is known for output '{output}' of the derivation")]
    MissingOutputPath {
        /// The output name.
        output: String,
    },
    /// The derivation's outputs do not form a valid combination.
    #[error("{0}")]
    Derivation(#[from] DerivationError),
}

/// The reference and size checks of one output (structured attrs' `outputChecks.<output>`).
/// Items are output names or full store paths, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputCheckAttrs {
    /// `allowedReferences`: the output may refer only to these.
    pub allowed_references: Option<Vec<String>>,
    /// `disallowedReferences`: the output may not refer to these.
    pub disallowed_references: Vec<String>,
    /// `allowedRequisites`: the output's closure may hold only these.
    pub allowed_requisites: Option<Vec<String>>,
    /// `disallowedRequisites`: the output's closure may not hold these.
    pub disallowed_requisites: Vec<String>,
    /// `maxSize`: largest NAR size of the output.
    pub max_size: Option<u64>,
    /// `maxClosureSize`: largest total NAR size of its closure.
    pub max_closure_size: Option<u64>,
}

/// Parsed derivation attributes the scheduler needs (from env, or from __json with
/// structured attrs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrvOptions {
    /// The derivation has structured attributes (`__json`).
    pub structured_attrs: bool,
    /// `__noChroot`.
    pub no_chroot: bool,
    /// `requiredSystemFeatures`, plus `ca-derivations` when the output paths are not known
    /// before the build (Nix's `getRequiredSystemFeatures`).
    pub required_system_features: BTreeSet<String>,
    /// `preferLocalBuild`.
    pub prefer_local_build: bool,
    /// `allowedReferences` (output names or store paths, as written). Without structured
    /// attrs these four apply to every output; with them Nix 2.8 ignores the top-level
    /// attributes (only `outputChecks` counts), so they stay empty.
    pub allowed_references: Option<Vec<String>>,
    /// `disallowedReferences`.
    pub disallowed_references: Vec<String>,
    /// `allowedRequisites`.
    pub allowed_requisites: Option<Vec<String>>,
    /// `disallowedRequisites`.
    pub disallowed_requisites: Vec<String>,
    /// structured attrs `outputChecks.<output>.{allowedReferences,...,maxSize,maxClosureSize}`,
    /// for the outputs the derivation has and whose entry is an object.
    pub output_checks: BTreeMap<String, OutputCheckAttrs>,
    /// `impureEnvVars`: read (and so checked) only for fixed-output and impure derivations,
    /// the only ones it applies to; empty for the others.
    pub impure_env_vars: Vec<String>,
    /// `exportReferencesGraph` as `(file name, path string)` pairs. With structured attrs the
    /// names are the keys of the object (each paired with every path of its list), not files.
    pub export_references_graph: Vec<(String, String)>,
}

/// The derivation's attributes: its environment, or the `__json` object.
enum Attrs<'a> {
    Env(&'a BTreeMap<Vec<u8>, Vec<u8>>),
    Json(Map<String, Value>),
}

/// Nix's `tokenizeString` default separators.
fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn tokenize(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| is_separator(b)).filter(|t| !t.is_empty())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn utf8(bytes: &[u8], var: &[u8]) -> Result<String, EnvError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| EnvError::NotUtf8 { var: lossy(var) })
}

/// The values nlohmann's iteration visits: array elements, object values, nothing for null,
/// the value itself for anything else.
fn nlohmann_items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

const LIST_OF_STRINGS: &str = "a list of strings";

impl<'a> Attrs<'a> {
    fn of(drv: &'a Derivation) -> Result<Attrs<'a>, EnvError> {
        let Some(json) = drv.env_var("__json") else {
            return Ok(Attrs::Env(&drv.env));
        };
        let value: Value = serde_json::from_slice(json).map_err(|e| EnvError::BadJson {
            reason: e.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(Attrs::Json(map)),
            // nlohmann turns null into an object on the first insertion.
            Value::Null => Ok(Attrs::Json(Map::new())),
            _ => Err(EnvError::BadJson {
                reason: "the value is not a JSON object".into(),
            }),
        }
    }

    fn structured(&self) -> bool {
        matches!(self, Attrs::Json(_))
    }

    /// Nix's `getBoolAttr`.
    fn get_bool(&self, name: &str, def: bool) -> Result<bool, EnvError> {
        match self {
            Attrs::Env(env) => Ok(env
                .get(name.as_bytes())
                .map_or(def, |v| v.as_slice() == b"1")),
            Attrs::Json(json) => match json.get(name) {
                None => Ok(def),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(EnvError::AttrType {
                    attr: name.to_owned(),
                    expected: "a Boolean",
                }),
            },
        }
    }

    /// Nix's `getStringsAttr`.
    fn get_strings(&self, name: &str) -> Result<Option<Vec<String>>, EnvError> {
        match self {
            Attrs::Env(env) => {
                let Some(v) = env.get(name.as_bytes()) else {
                    return Ok(None);
                };
                let v = utf8(v, name.as_bytes())?;
                Ok(Some(
                    tokenize(v.as_bytes())
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .collect(),
                ))
            }
            Attrs::Json(json) => match json.get(name) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(EnvError::AttrType {
                            attr: name.to_owned(),
                            expected: LIST_OF_STRINGS,
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(EnvError::AttrType {
                    attr: name.to_owned(),
                    expected: LIST_OF_STRINGS,
                }),
            },
        }
    }
}

/// A list in `outputChecks.<output>`: iterated the nlohmann way, every item a string.
fn check_list(
    output: &Map<String, Value>,
    out: &str,
    name: &str,
) -> Result<Option<Vec<String>>, EnvError> {
    let Some(v) = output.get(name) else {
        return Ok(None);
    };
    nlohmann_items(v)
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.clone()),
            _ => Err(EnvError::AttrType {
                attr: format!("outputChecks.{out}.{name}"),
                expected: LIST_OF_STRINGS,
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A size in `outputChecks.<output>` (nlohmann's `get<uint64_t>`: any number or Boolean).
fn check_size(output: &Map<String, Value>, out: &str, name: &str) -> Result<Option<u64>, EnvError> {
    let Some(v) = output.get(name) else {
        return Ok(None);
    };
    let n = match v {
        Value::Bool(b) => u64::from(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u,
            // A C++ conversion of a negative integer to uint64_t wraps.
            (None, Some(i), _) => i as u64,
            (None, None, Some(f)) => f as u64,
            _ => 0,
        },
        _ => {
            return Err(EnvError::AttrType {
                attr: format!("outputChecks.{out}.{name}"),
                expected: "a number",
            })
        }
    };
    Ok(Some(n))
}

/// Parsed derivation attributes the scheduler needs, from the environment or, with
/// structured attrs, from `__json` (Nix's `ParsedDerivation` getters and `checkOutputs`).
pub fn drv_options(drv: &Derivation) -> Result<DrvOptions, EnvError> {
    let attrs = Attrs::of(drv)?;
    options_of(drv, &attrs)
}

fn options_of(drv: &Derivation, attrs: &Attrs<'_>) -> Result<DrvOptions, EnvError> {
    let mut opts = DrvOptions {
        structured_attrs: attrs.structured(),
        no_chroot: attrs.get_bool("__noChroot", false)?,
        prefer_local_build: attrs.get_bool("preferLocalBuild", false)?,
        ..DrvOptions::default()
    };
    let drv_type = drv.derivation_type()?;
    // Nix reads impureEnvVars only for the derivations it applies to.
    if !drv_type.is_sandboxed() {
        opts.impure_env_vars = attrs.get_strings("impureEnvVars")?.unwrap_or_default();
    }
    opts.required_system_features = attrs
        .get_strings("requiredSystemFeatures")?
        .unwrap_or_default()
        .into_iter()
        .collect();
    if !drv_type.has_known_output_paths() {
        opts.required_system_features
            .insert("ca-derivations".to_owned());
    }
    match attrs {
        Attrs::Env(env) => {
            opts.allowed_references = attrs.get_strings("allowedReferences")?;
            opts.allowed_requisites = attrs.get_strings("allowedRequisites")?;
            opts.disallowed_references = attrs
                .get_strings("disallowedReferences")?
                .unwrap_or_default();
            opts.disallowed_requisites = attrs
                .get_strings("disallowedRequisites")?
                .unwrap_or_default();
            if let Some(value) = env.get(b"exportReferencesGraph".as_slice()) {
                let value = utf8(value, b"exportReferencesGraph")?;
                let words: Vec<&str> = value
                    .split(|c: char| c.is_ascii() && is_separator(c as u8))
                    .filter(|w| !w.is_empty())
                    .collect();
                if !words.len().is_multiple_of(2) {
                    return Err(EnvError::OddExportTokens { value });
                }
                opts.export_references_graph = words
                    .chunks(2)
                    .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
                    .collect();
            }
        }
        Attrs::Json(json) => {
            if let Some(Value::Object(checks)) = json.get("outputChecks") {
                for out in drv.outputs.keys() {
                    let Some(Value::Object(output)) = checks.get(out) else {
                        continue;
                    };
                    let c = OutputCheckAttrs {
                        max_size: check_size(output, out, "maxSize")?,
                        max_closure_size: check_size(output, out, "maxClosureSize")?,
                        allowed_references: check_list(output, out, "allowedReferences")?,
                        allowed_requisites: check_list(output, out, "allowedRequisites")?,
                        disallowed_references: check_list(output, out, "disallowedReferences")?
                            .unwrap_or_default(),
                        disallowed_requisites: check_list(output, out, "disallowedRequisites")?
                            .unwrap_or_default(),
                    };
                    opts.output_checks.insert(out.clone(), c);
                }
            }
            if let Some(Value::Object(graph)) = json.get("exportReferencesGraph") {
                for (key, paths) in graph {
                    for p in nlohmann_items(paths) {
                        let Value::String(p) = p else {
                            return Err(EnvError::AttrType {
                                attr: format!("exportReferencesGraph.{key}"),
                                expected: "a list of store paths",
                            });
                        };
                        opts.export_references_graph.push((key.clone(), p.clone()));
                    }
                }
            }
        }
    }
    Ok(opts)
}

/// The rewrites Nix applies to the environment and the build directory files in a sandboxed
/// build: each output's hash placeholder (see [`hash_placeholder`]) to the output's path,
/// ordered by placeholder.
pub fn placeholder_rewrites(req: &EnvRequest<'_>) -> Result<Vec<(String, String)>, EnvError> {
    let mut rewrites = BTreeMap::new();
    for name in req.drv.outputs.keys() {
        let path = req
            .output_paths
            .get(name)
            .ok_or_else(|| EnvError::MissingOutputPath {
                output: name.clone(),
            })?;
        rewrites.insert(hash_placeholder(name), req.store_dir.print(path));
    }
    Ok(rewrites.into_iter().collect())
}

/// Nix's `rewriteStrings` over bytes: every occurrence of each key, in order, replaced by its
/// value. Nix applies it to the builder's arguments too (not to the builder itself).
pub fn rewrite_bytes(s: &[u8], rewrites: &[(String, String)]) -> Vec<u8> {
    let mut s = s.to_vec();
    for (from, to) in rewrites {
        let (from, to) = (from.as_bytes(), to.as_bytes());
        if from == to || from.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        s = out;
    }
    s
}

fn rewrite_str(s: &str, rewrites: &[(String, String)]) -> String {
    // Keys and values are UTF-8 and replaced whole, so the result is UTF-8.
    String::from_utf8(rewrite_bytes(s.as_bytes(), rewrites))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Reads a derivation at its logical path in the store (the default for
/// [`build_environment`]).
fn read_drv_from_store(store_dir: &StoreDir, path: &StorePath) -> Result<Derivation, String> {
    let name = name_from_drv_path(path).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(store_dir.print(path)).map_err(|e| e.to_string())?;
    Derivation::parse(&bytes, store_dir, name).map_err(|e| e.to_string())
}

/// The builder's environment and build directory files, as Nix 2.8 computes them. Derivations
/// met in an `exportReferencesGraph` closure are read from the store at their logical path;
/// see [`build_environment_with_drvs`] to read them otherwise.
pub fn build_environment(req: &EnvRequest<'_>) -> Result<BuildEnv, EnvError> {
    build_environment_with_drvs(req, &|p| read_drv_from_store(req.store_dir, p))
}

/// [`build_environment`], reading the derivations met in an `exportReferencesGraph` closure
/// with `read_drv` (Nix adds the closures of their outputs).
pub fn build_environment_with_drvs(
    req: &EnvRequest<'_>,
    read_drv: &dyn Fn(&StorePath) -> Result<Derivation, String>,
) -> Result<BuildEnv, EnvError> {
    let drv = req.drv;
    let attrs = Attrs::of(drv)?;
    let opts = options_of(drv, &attrs)?;
    let drv_type = drv.derivation_type()?;
    let rewrites = placeholder_rewrites(req)?;
    let top = req.sandbox_build_dir;
    let infos = Infos::new(req);

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<BuildDirFile> = Vec::new();
    fn set(env: &mut BTreeMap<String, String>, k: &str, v: &str) {
        env.insert(k.to_owned(), v.to_owned());
    }

    // initEnv.
    set(&mut env, "PATH", DUMMY_PATH);
    set(&mut env, "HOME", HOME_DIR);
    set(&mut env, "NIX_STORE", req.store_dir.as_str());
    set(&mut env, "NIX_BUILD_CORES", &req.cores.to_string());

    // initTmpDir.
    if let Attrs::Env(drv_env) = &attrs {
        let pass_as_file: BTreeSet<&[u8]> = drv_env
            .get(b"passAsFile".as_slice())
            .map(|v| tokenize(v).collect())
            .unwrap_or_default();
        for (k, v) in drv_env.iter() {
            let name = utf8(k, k)?;
            if pass_as_file.contains(k.as_slice()) {
                let file = format!(".attr-{}", Hash::compute(HashAlgo::Sha256, k).to_nix32());
                env.insert(format!("{name}Path"), format!("{top}/{file}"));
                files.push(BuildDirFile {
                    name: file,
                    contents: rewrite_bytes(v, &rewrites),
                });
            } else {
                env.insert(name, utf8(v, k)?);
            }
        }
    }
    for var in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        set(&mut env, var, top);
    }

    // Back in initEnv.
    if drv_type.is_fixed() {
        set(&mut env, "NIX_OUTPUT_CHECKED", "1");
    }
    if !drv_type.is_sandboxed() {
        for var in &opts.impure_env_vars {
            let value = (req.daemon_env)(var).unwrap_or_default();
            env.insert(var.clone(), value);
        }
    }
    set(&mut env, "NIX_LOG_FD", "2");
    set(&mut env, "TERM", "xterm-256color");

    match &attrs {
        // writeStructuredAttrs.
        Attrs::Json(json) => {
            let json = prepare_structured_attrs(req, json, &infos, read_drv, &rewrites)?;
            let sh = rewrite_bytes(structured_attrs_shell(&json).as_bytes(), &rewrites);
            files.push(BuildDirFile {
                name: ATTRS_SH_FILE.to_owned(),
                contents: sh,
            });
            env.insert("NIX_ATTRS_SH_FILE".into(), format!("{top}/{ATTRS_SH_FILE}"));
            let mut text = String::new();
            dump_json(&mut text, &Value::Object(json));
            files.push(BuildDirFile {
                name: ATTRS_JSON_FILE.to_owned(),
                contents: rewrite_bytes(text.as_bytes(), &rewrites),
            });
            env.insert(
                "NIX_ATTRS_JSON_FILE".into(),
                format!("{top}/{ATTRS_JSON_FILE}"),
            );
        }
        // exportReferencesGraph (not rewritten, as in Nix).
        Attrs::Env(_) => {
            for (file, path) in &opts.export_references_graph {
                if !valid_export_file_name(file) {
                    return Err(EnvError::BadExportFileName { name: file.clone() });
                }
                let path = export_store_path(req.store_dir, path)?;
                let closure = export_references(req, &infos, read_drv, &BTreeSet::from([path]))?;
                let contents = validity_registration(req.store_dir, &infos, &closure)?;
                // Nix writes the file again: the last one wins.
                files.retain(|f| &f.name != file);
                files.push(BuildDirFile {
                    name: file.clone(),
                    contents: contents.into_bytes(),
                });
            }
        }
    }

    // runChild rewrites every `name=value`.
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let (k, v) = (rewrite_str(&k, &rewrites), rewrite_str(&v, &rewrites));
        check_env_var(&k, &v)?;
        out.insert(k, v);
    }
    Ok(BuildEnv { env: out, files })
}

fn check_env_var(name: &str, value: &str) -> Result<(), EnvError> {
    let bad = |reason| {
        Err(EnvError::BadEnvVar {
            var: name.escape_debug().to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("has an empty name");
    }
    if name.contains('=') {
        return bad("has '=' in its name");
    }
    if name.contains('\0') {
        return bad("has a NUL byte in its name");
    }
    if value.contains('\0') {
        return bad("has a NUL byte in its value");
    }
    Ok(())
}

/// `[A-Za-z_][A-Za-z0-9_.-]*`.
fn valid_export_file_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Nix's `isInStore` + `toStorePath(..).first`: a path inside the store, reduced to its store
/// path.
fn export_store_path(store_dir: &StoreDir, path: &str) -> Result<StorePath, EnvError> {
    let dir = store_dir.as_str();
    let in_store = path.starts_with('/')
        && path.len() >= dir.len() + 2
        && path.starts_with(dir)
        && path.as_bytes()[dir.len()] == b'/';
    if !in_store {
        return Err(EnvError::ExportNonStorePath {
            path: path.to_owned(),
        });
    }
    store_dir
        .parse_path_with_suffix(path)
        .map(|(p, _)| p)
        .map_err(|e| EnvError::ExportBadStorePath {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Nix's `canonPath` without symlinks: `.`, `..` and repeated or trailing slashes removed.
fn canon_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Nix's `parseStorePath`: after canonicalisation, directly in the store directory.
fn parse_store_path(store_dir: &StoreDir, path: &str) -> Result<StorePath, EnvError> {
    let canon = canon_path(path).ok_or_else(|| EnvError::ExportBadStorePath {
        path: path.to_owned(),
        reason: "not an absolute path".into(),
    })?;
    store_dir
        .parse_path(&canon)
        .map_err(|e| EnvError::ExportBadStorePath {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Path infos looked up once each.
struct Infos<'r> {
    store_dir: &'r StoreDir,
    lookup: &'r dyn Fn(&StorePath) -> Option<Arc<ValidPathInfo>>,
    cache: RefCell<HashMap<StorePath, Arc<ValidPathInfo>>>,
}

impl<'r> Infos<'r> {
    fn new(req: &EnvRequest<'r>) -> Infos<'r> {
        Infos {
            store_dir: req.store_dir,
            lookup: req.path_info,
            cache: RefCell::new(HashMap::new()),
        }
    }

    fn get(&self, path: &StorePath) -> Result<Arc<ValidPathInfo>, EnvError> {
        if let Some(info) = self.cache.borrow().get(path) {
            return Ok(Arc::clone(info));
        }
        let info = (self.lookup)(path).ok_or_else(|| EnvError::InvalidPath {
            path: self.store_dir.print(path),
        })?;
        self.cache
            .borrow_mut()
            .insert(path.clone(), Arc::clone(&info));
        Ok(info)
    }

    /// Nix's `computeFSClosure` into `into` (paths already there are not visited again).
    fn closure(&self, start: &StorePath, into: &mut BTreeSet<StorePath>) -> Result<(), EnvError> {
        let mut todo = vec![start.clone()];
        while let Some(path) = todo.pop() {
            if into.contains(&path) {
                continue;
            }
            let info = self.get(&path)?;
            into.insert(path);
            todo.extend(
                info.references
                    .iter()
                    .filter(|r| !into.contains(*r))
                    .cloned(),
            );
        }
        Ok(())
    }
}

/// Nix's `exportReferences`: the closures of `paths`, which must be inputs, plus the closures
/// of the outputs of the derivations found in them.
fn export_references(
    req: &EnvRequest<'_>,
    infos: &Infos<'_>,
    read_drv: &dyn Fn(&StorePath) -> Result<Derivation, String>,
    paths: &BTreeSet<StorePath>,
) -> Result<BTreeSet<StorePath>, EnvError> {
    let mut closure = BTreeSet::new();
    for path in paths {
        if !req.input_closure.contains(path) {
            return Err(EnvError::NotInInputClosure {
                path: req.store_dir.print(path),
            });
        }
        infos.closure(path, &mut closure)?;
    }
    let drvs: Vec<StorePath> = closure
        .iter()
        .filter(|p| p.is_derivation())
        .cloned()
        .collect();
    for drv_path in drvs {
        let shown = || req.store_dir.print(&drv_path);
        let drv = read_drv(&drv_path).map_err(|reason| EnvError::DrvRead {
            path: shown(),
            reason,
        })?;
        let outputs = drv
            .output_paths(req.store_dir)
            .map_err(|e| EnvError::DrvRead {
                path: shown(),
                reason: e.to_string(),
            })?;
        for out in outputs.values() {
            let Some(out) = out else {
                return Err(EnvError::ExportCaDerivation { path: shown() });
            };
            infos.closure(out, &mut closure)?;
        }
    }
    Ok(closure)
}

/// Nix's `makeValidityRegistration(paths, showDerivers = false, showHash = false)`.
fn validity_registration(
    store_dir: &StoreDir,
    infos: &Infos<'_>,
    paths: &BTreeSet<StorePath>,
) -> Result<String, EnvError> {
    let mut s = String::new();
    for path in paths {
        let info = infos.get(path)?;
        s.push_str(&store_dir.print(path));
        s.push_str("\n\n");
        s.push_str(&format!("{}\n", info.references.len()));
        for r in &info.references {
            s.push_str(&store_dir.print(r));
            s.push('\n');
        }
    }
    Ok(s)
}

/// Nix's `pathInfoToJSON(paths, includeImpureInfo = false, showClosureSize = true)`, nix32
/// hashes.
fn path_info_json(infos: &Infos<'_>, paths: &BTreeSet<StorePath>) -> Result<Value, EnvError> {
    let mut list = Vec::new();
    for path in paths {
        let info = infos.get(path)?;
        let mut obj = Map::new();
        obj.insert("path".into(), Value::String(infos.store_dir.print(path)));
        obj.insert(
            "narHash".into(),
            Value::String(info.nar_hash.to_prefixed_nix32()),
        );
        obj.insert("narSize".into(), Value::from(info.nar_size));
        obj.insert(
            "references".into(),
            Value::Array(
                info.references
                    .iter()
                    .map(|r| Value::String(infos.store_dir.print(r)))
                    .collect(),
            ),
        );
        if let Some(ca) = &info.ca {
            obj.insert("ca".into(), Value::String(ca.to_string()));
        }
        let mut closure = BTreeSet::new();
        infos.closure(path, &mut closure)?;
        let mut size = 0u64;
        for p in &closure {
            size = size.wrapping_add(infos.get(p)?.nar_size);
        }
        obj.insert("closureSize".into(), Value::from(size));
        list.push(Value::Object(obj));
    }
    Ok(Value::Array(list))
}

/// Nix's `prepareStructuredAttrs` followed by the output rewriting of `writeStructuredAttrs`.
fn prepare_structured_attrs(
    req: &EnvRequest<'_>,
    json: &Map<String, Value>,
    infos: &Infos<'_>,
    read_drv: &dyn Fn(&StorePath) -> Result<Derivation, String>,
    rewrites: &[(String, String)],
) -> Result<Map<String, Value>, EnvError> {
    let mut json = json.clone();
    let outputs: Map<String, Value> = req
        .drv
        .outputs
        .keys()
        .map(|name| (name.clone(), Value::String(hash_placeholder(name))))
        .collect();
    json.insert("outputs".into(), Value::Object(outputs));

    if let Some(Value::Object(graph)) = json.get("exportReferencesGraph").cloned() {
        for (key, value) in graph {
            let mut paths = BTreeSet::new();
            for p in nlohmann_items(&value) {
                let Value::String(p) = p else {
                    return Err(EnvError::AttrType {
                        attr: format!("exportReferencesGraph.{key}"),
                        expected: "a list of store paths",
                    });
                };
                paths.insert(parse_store_path(req.store_dir, p)?);
            }
            let closure = export_references(req, infos, read_drv, &paths)?;
            json.insert(key, path_info_json(infos, &closure)?);
        }
    }

    let not_object = || EnvError::AttrType {
        attr: "outputs".into(),
        expected: "an object of strings",
    };
    let Some(Value::Object(outputs)) = json.get("outputs") else {
        return Err(not_object());
    };
    let mut rewritten = Map::new();
    for (name, path) in outputs {
        let Value::String(path) = path else {
            return Err(not_object());
        };
        rewritten.insert(name.clone(), Value::String(rewrite_str(path, rewrites)));
    }
    json.insert("outputs".into(), Value::Object(rewritten));
    Ok(json)
}

/// Nix's `shellEscape`: single quotes, `'` as `'\''`.
fn shell_escape(s: &str) -> String {
    let mut r = String::with_capacity(s.len() + 2);
    r.push('\'');
    for c in s.chars() {
        if c == '\'' {
            r.push_str("'\\''");
        } else {
            r.push(c);
        }
    }
    r.push('\'');
    r
}

/// `handleSimpleType` of `writeStructuredAttrsShell`: strings, integral numbers (printed as a
/// C `int`, as Nix does), null and Booleans.
fn shell_simple(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                // `get<int>()`: a C++ narrowing conversion, which wraps.
                return Some((u as i32).to_string());
            }
            if let Some(i) = n.as_i64() {
                return Some((i as i32).to_string());
            }
            let d = n.as_f64()?;
            let f = d as f32;
            if f.ceil() != f {
                return None;
            }
            // `static_cast<int>(double)`; out of range, x86 gives INT_MIN.
            let i = if d > -2_147_483_649.0 && d < 2_147_483_648.0 {
                d.trunc() as i32
            } else {
                i32::MIN
            };
            Some(i.to_string())
        }
        Value::Null => Some("''".to_owned()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_owned()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_shell_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Nix's `writeStructuredAttrsShell`: bash declarations for the attributes bash can hold
/// (simple values, and arrays and objects of simple values).
pub fn structured_attrs_shell(json: &Map<String, Value>) -> String {
    let mut sh = String::new();
    for (key, value) in json {
        if !is_shell_var_name(key) {
            continue;
        }
        if let Some(s) = shell_simple(value) {
            sh.push_str(&format!("declare {key}={s}\n"));
            continue;
        }
        match value {
            Value::Array(items) => {
                let mut s2 = String::new();
                let good = items.iter().all(|v| match shell_simple(v) {
                    Some(s3) => {
                        s2.push_str(&s3);
                        s2.push(' ');
                        true
                    }
                    None => false,
                });
                if good {
                    sh.push_str(&format!("declare -a {key}=({s2})\n"));
                }
            }
            Value::Object(map) => {
                let mut s2 = String::new();
                let good = map.iter().all(|(k2, v)| match shell_simple(v) {
                    Some(s3) => {
                        s2.push_str(&format!("[{}]={s3} ", shell_escape(k2)));
                        true
                    }
                    None => false,
                });
                if good {
                    sh.push_str(&format!("declare -A {key}=({s2})\n"));
                }
            }
            _ => {}
        }
    }
    sh
}

/// nlohmann's `dump()`: compact, keys sorted, floats printed its way.
fn dump_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else {
                out.push_str(&nlohmann_float(n.as_f64().unwrap_or(0.0)));
            }
        }
        Value::String(s) => push_json_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                dump_json(out, v);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, k);
                out.push(':');
                dump_json(out, v);
            }
            out.push('}');
        }
    }
}

/// A JSON string as nlohmann writes it (`\b \t \n \f \r \" \\`, other controls as `\u00xx`,
/// everything else as is): the same escaping as serde_json's.
fn push_json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(text) => out.push_str(&text),
        Err(_) => out.push_str("\"\""),
    }
}

/// nlohmann's float printing: shortest round-trip digits, decimal notation for exponents in
/// (-4, 15], else `d.ddde+XX`; integral values get `.0`.
fn nlohmann_float(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    let mut out = String::new();
    if x.is_sign_negative() {
        out.push('-');
    }
    let x = x.abs();
    if x == 0.0 {
        out.push_str("0.0");
        return out;
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let k = digits.len() as i32;
    let n = exp + 1;
    const MIN_EXP: i32 = -4;
    const MAX_EXP: i32 = 15;
    if k <= n && n <= MAX_EXP {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
        out.push_str(".0");
    } else if 0 < n && n <= MAX_EXP {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if MIN_EXP < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_proto::hash::{Hash, HashAlgo};

    /// `derivation { name="hello"; system="x86_64-linux"; builder="/bin/sh";
    /// args=["-c" "echo hi > $out"]; }`, as Nix 2.8 wrote it.
    const HELLO: &str = r#"Derive([("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","hello"),("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello"),("system","x86_64-linux")])"#;
    const HELLO_DRV: &str = "76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv";
    const HELLO_OUT: &str = "mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello";
    /// The fixed-output `fo` (flat SHA-256 of `hello\n`), as Nix 2.8 wrote it.
    const FO: &str = r#"Derive([("out","/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo","sha256","5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","fo"),("out","/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo"),("outputHash","5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("system","x86_64-linux")])"#;
    const FO_OUT: &str = "09xxzzxfl30gihclrc0q5vfmj0iwipml-fo";

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";
    const C: &str = "cccccccccccccccccccccccccccccccc-c";
    const OUTSIDE: &str = "dddddddddddddddddddddddddddddddd-outside";
    const S_OUT: &str = "ffffffffffffffffffffffffffffffff-s";
    const S_DEV: &str = "gggggggggggggggggggggggggggggggg-s-dev";

    fn sd() -> StoreDir {
        StoreDir::default()
    }

    fn sp(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    fn full(base: &str) -> String {
        format!("/nix/store/{base}")
    }

    fn parse(text: &str, name: &str) -> Derivation {
        Derivation::parse(text.as_bytes(), &sd(), name).unwrap()
    }

    fn set_env(drv: &mut Derivation, k: &str, v: &str) {
        drv.env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }

    /// A structured-attrs derivation `s` with outputs `out` and `dev` and this `__json`.
    fn structured(json: &str) -> Derivation {
        let mut drv = parse(HELLO, "s");
        drv.outputs = BTreeMap::from([
            (
                "out".to_owned(),
                DerivationOutput::InputAddressed(sp(S_OUT)),
            ),
            (
                "dev".to_owned(),
                DerivationOutput::InputAddressed(sp(S_DEV)),
            ),
        ]);
        drv.env = BTreeMap::new();
        set_env(&mut drv, "__json", json);
        set_env(&mut drv, "out", &full(S_OUT));
        set_env(&mut drv, "dev", &full(S_DEV));
        drv
    }

    use ward_proto::derivation::DerivationOutput;

    /// The three-path closure: a -> {b, c}, b -> {c}, c -> {c}; sizes 10, 20, 40.
    fn infos() -> BTreeMap<StorePath, Arc<ValidPathInfo>> {
        let mk = |base: &str, refs: &[&str], size: u64| {
            let mut info =
                ValidPathInfo::new(sp(base), Hash::compute(HashAlgo::Sha256, base.as_bytes()));
            info.references = refs.iter().map(|r| sp(r)).collect();
            info.nar_size = size;
            info.deriver = Some(sp(HELLO_DRV));
            (sp(base), Arc::new(info))
        };
        BTreeMap::from([
            mk(A, &[B, C], 10),
            mk(B, &[C], 20),
            mk(C, &[C], 40),
            mk(OUTSIDE, &[], 1),
        ])
    }

    struct Fixture {
        store_dir: StoreDir,
        outputs: BTreeMap<String, StorePath>,
        closure: BTreeSet<StorePath>,
        infos: BTreeMap<StorePath, Arc<ValidPathInfo>>,
        daemon: BTreeMap<String, String>,
    }

    impl Fixture {
        fn new(drv: &Derivation) -> Fixture {
            let outputs = drv
                .output_paths(&sd())
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.unwrap()))
                .collect();
            Fixture {
                store_dir: sd(),
                outputs,
                closure: [A, B, C].iter().map(|p| sp(p)).collect(),
                infos: infos(),
                daemon: BTreeMap::from([("http_proxy".to_owned(), "http://proxy:3128".to_owned())]),
            }
        }

        fn run(&self, drv: &Derivation) -> Result<BuildEnv, EnvError> {
            self.run_with(drv, &|p| Err(format!("no derivation {p}")))
        }

        fn run_with(
            &self,
            drv: &Derivation,
            read_drv: &dyn Fn(&StorePath) -> Result<Derivation, String>,
        ) -> Result<BuildEnv, EnvError> {
            let daemon_env = |k: &str| self.daemon.get(k).cloned();
            let path_info = |p: &StorePath| self.infos.get(p).cloned();
            let req = EnvRequest {
                drv,
                store_dir: &self.store_dir,
                output_paths: &self.outputs,
                input_closure: &self.closure,
                sandbox_build_dir: "/build",
                cores: 4,
                daemon_env: &daemon_env,
                path_info: &path_info,
            };
            build_environment_with_drvs(&req, read_drv)
        }
    }

    /// What every build gets (Nix's initEnv and initTmpDir).
    fn base_env() -> BTreeMap<String, String> {
        [
            ("HOME", "/homeless-shelter"),
            ("NIX_BUILD_CORES", "4"),
            ("NIX_BUILD_TOP", "/build"),
            ("NIX_LOG_FD", "2"),
            ("NIX_STORE", "/nix/store"),
            ("PATH", "/path-not-set"),
            ("PWD", "/build"),
            ("TEMP", "/build"),
            ("TEMPDIR", "/build"),
            ("TERM", "xterm-256color"),
            ("TMP", "/build"),
            ("TMPDIR", "/build"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn with(mut env: BTreeMap<String, String>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    fn file<'e>(env: &'e BuildEnv, name: &str) -> &'e str {
        let f = env
            .files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no file {name}"));
        std::str::from_utf8(&f.contents).unwrap()
    }

    #[test]
    fn plain_derivation() {
        let drv = parse(HELLO, "hello");
        let got = Fixture::new(&drv).run(&drv).unwrap();
        let out = full(HELLO_OUT);
        let expected = with(
            base_env(),
            &[
                ("builder", "/bin/sh"),
                ("name", "hello"),
                ("out", &out),
                ("system", "x86_64-linux"),
            ],
        );
        assert_eq!(got.env, expected);
        assert!(got.files.is_empty());
    }

    #[test]
    fn derivation_env_overrides_initial_vars_but_not_build_dir_vars() {
        let mut drv = parse(HELLO, "hello");
        set_env(&mut drv, "PATH", "/my/bin");
        set_env(&mut drv, "HOME", "/home/x");
        set_env(&mut drv, "TMPDIR", "/tmp");
        set_env(&mut drv, "TERM", "dumb");
        set_env(
            &mut drv,
            "flags",
            &format!("--prefix={}", hash_placeholder("out")),
        );
        let got = Fixture::new(&drv).run(&drv).unwrap();
        assert_eq!(got.env["PATH"], "/my/bin");
        assert_eq!(got.env["HOME"], "/home/x");
        assert_eq!(got.env["TMPDIR"], "/build");
        assert_eq!(got.env["TERM"], "xterm-256color");
        assert_eq!(got.env["flags"], format!("--prefix={}", full(HELLO_OUT)));
    }

    #[test]
    fn pass_as_file() {
        let mut drv = parse(HELLO, "hello");
        set_env(&mut drv, "passAsFile", " script\tbin missing ");
        set_env(
            &mut drv,
            "script",
            &format!("echo hi > {}/x\n", hash_placeholder("out")),
        );
        drv.env.insert(b"bin".to_vec(), vec![0xff, 0, 1]);
        let got = Fixture::new(&drv).run(&drv).unwrap();
        // Computed apart from the code: nix32 of SHA-256 of the attribute's name.
        let name_of = |attr: &str| {
            format!(
                ".attr-{}",
                ward_proto::nix32::encode(
                    Hash::compute(HashAlgo::Sha256, attr.as_bytes()).digest()
                )
            )
        };
        let (script_file, bin_file) = (name_of("script"), name_of("bin"));
        assert_eq!(script_file.len(), ".attr-".len() + 52);
        let out = full(HELLO_OUT);
        let script_path = format!("/build/{script_file}");
        let bin_path = format!("/build/{bin_file}");
        let expected = with(
            base_env(),
            &[
                ("builder", "/bin/sh"),
                ("name", "hello"),
                ("out", &out),
                ("system", "x86_64-linux"),
                ("passAsFile", " script\tbin missing "),
                ("scriptPath", &script_path),
                ("binPath", &bin_path),
            ],
        );
        assert_eq!(got.env, expected);
        assert_eq!(
            got.files,
            vec![
                BuildDirFile {
                    name: bin_file,
                    contents: vec![0xff, 0, 1]
                },
                BuildDirFile {
                    name: script_file,
                    contents: format!("echo hi > {out}/x\n").into_bytes()
                },
            ]
        );
    }

    #[test]
    fn fixed_output_gets_impure_env_vars() {
        let mut drv = parse(FO, "fo");
        set_env(&mut drv, "impureEnvVars", "http_proxy NOT_SET");
        let got = Fixture::new(&drv).run(&drv).unwrap();
        let out = full(FO_OUT);
        let hash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let expected = with(
            base_env(),
            &[
                ("builder", "/bin/sh"),
                ("name", "fo"),
                ("out", &out),
                ("outputHash", hash),
                ("outputHashAlgo", "sha256"),
                ("outputHashMode", "flat"),
                ("system", "x86_64-linux"),
                ("impureEnvVars", "http_proxy NOT_SET"),
                ("NIX_OUTPUT_CHECKED", "1"),
                ("http_proxy", "http://proxy:3128"),
                ("NOT_SET", ""),
            ],
        );
        assert_eq!(got.env, expected);

        // Not for a sandboxed derivation.
        let mut drv = parse(HELLO, "hello");
        set_env(&mut drv, "impureEnvVars", "http_proxy");
        let got = Fixture::new(&drv).run(&drv).unwrap();
        assert!(!got.env.contains_key("http_proxy"));
        assert!(!got.env.contains_key("NIX_OUTPUT_CHECKED"));
    }

    const STRUCTURED_JSON: &str = r#"{"builder":"/bin/sh","name":"s","system":"x86_64-linux",
        "outputs":["out","dev"],"str":"it's \"q\"\n","int":42,"neg":-7,"big":4294967301,
        "float":1.5,"intf":3.0,"yes":true,"no":false,"nul":null,
        "list":["a","b'c",1,true,null],"empty":[],"mixed":["a",[1]],"obj":{"k":"v","n":1,"x y":false},
        "nested":{"a":{"b":1}},"bad-name":"x","ph":"PH/bin","passAsFile":["str"],
        "tab\t":1,"_u":"\u0001é"}"#;

    #[test]
    fn structured_attrs_env_json_and_shell() {
        let drv = structured(&STRUCTURED_JSON.replace("PH", &hash_placeholder("out")));
        let got = Fixture::new(&drv).run(&drv).unwrap();
        let expected = with(
            base_env(),
            &[
                ("NIX_ATTRS_JSON_FILE", "/build/.attrs.json"),
                ("NIX_ATTRS_SH_FILE", "/build/.attrs.sh"),
            ],
        );
        assert_eq!(got.env, expected);
        assert_eq!(
            got.files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            vec![".attrs.sh", ".attrs.json"]
        );
        let (out, dev) = (full(S_OUT), full(S_DEV));
        let json = format!(
            concat!(
                r#"{{"_u":"\u0001é","bad-name":"x","big":4294967301,"builder":"/bin/sh","empty":[],"#,
                r#""float":1.5,"int":42,"intf":3.0,"list":["a","b'c",1,true,null],"#,
                r#""mixed":["a",[1]],"name":"s","neg":-7,"nested":{{"a":{{"b":1}}}},"no":false,"#,
                r#""nul":null,"obj":{{"k":"v","n":1,"x y":false}},"#,
                r#""outputs":{{"dev":"{dev}","out":"{out}"}},"passAsFile":["str"],"ph":"{out}/bin","#,
                r#""str":"it's \"q\"\n","system":"x86_64-linux","tab\t":1,"yes":true}}"#
            ),
            out = out,
            dev = dev
        );
        assert_eq!(file(&got, ".attrs.json"), json);
        // writeStructuredAttrsShell: keys in order, bad names, non-integral numbers, nested
        // arrays and objects left out; `int` narrowing; a space after every element.
        let sh = format!(
            concat!(
                "declare _u='\u{1}é'\n",
                "declare big=5\n",
                "declare builder='/bin/sh'\n",
                "declare -a empty=()\n",
                "declare int=42\n",
                "declare intf=3\n",
                "declare -a list=('a' 'b'\\''c' 1 1 '' )\n",
                "declare name='s'\n",
                "declare neg=-7\n",
                "declare no=\n",
                "declare nul=''\n",
                "declare -A obj=(['k']='v' ['n']=1 ['x y']= )\n",
                "declare -A outputs=(['dev']='{dev}' ['out']='{out}' )\n",
                "declare -a passAsFile=('str' )\n",
                "declare ph='{out}/bin'\n",
                "declare str='it'\\''s \"q\"\n'\n",
                "declare system='x86_64-linux'\n",
                "declare yes=1\n",
            ),
            out = out,
            dev = dev
        );
        assert_eq!(file(&got, ".attrs.sh"), sh);
    }

    #[test]
    fn structured_export_references_graph() {
        let json = format!(
            r#"{{"exportReferencesGraph":{{"closure":["{}"],"one":"{}/","none":[]}},"x":1}}"#,
            full(A),
            full(C)
        );
        let drv = structured(&json);
        let got = Fixture::new(&drv).run(&drv).unwrap();
        let obj = |base: &str, refs: &[&str], size: u64, closure: u64| {
            let refs: Vec<String> = refs.iter().map(|r| format!("\"{}\"", full(r))).collect();
            format!(
                r#"{{"closureSize":{closure},"narHash":"{}","narSize":{size},"path":"{}","references":[{}]}}"#,
                Hash::compute(HashAlgo::Sha256, base.as_bytes()).to_prefixed_nix32(),
                full(base),
                refs.join(",")
            )
        };
        let (a, b, c) = (
            obj(A, &[B, C], 10, 70),
            obj(B, &[C], 20, 60),
            obj(C, &[C], 40, 40),
        );
        let text = file(&got, ".attrs.json");
        let expected = format!(
            concat!(
                r#"{{"closure":[{a},{b},{c}],"exportReferencesGraph":{{"closure":["{pa}"],"none":[],"one":"{pc}/"}},"#,
                r#""none":[],"one":[{c}],"outputs":{{"dev":"{dev}","out":"{out}"}},"x":1}}"#
            ),
            a = a,
            b = b,
            c = c,
            pa = full(A),
            pc = full(C),
            dev = full(S_DEV),
            out = full(S_OUT)
        );
        assert_eq!(text, expected);
        // Lists of objects and objects of lists have no bash form.
        assert_eq!(
            file(&got, ".attrs.sh"),
            format!(
                "declare -a none=()\ndeclare -A outputs=(['dev']='{}' ['out']='{}' )\ndeclare x=1\n",
                full(S_DEV),
                full(S_OUT)
            )
        );
        // Outside the input closure.
        let drv = structured(&format!(
            r#"{{"exportReferencesGraph":{{"c":["{}"]}}}}"#,
            full(OUTSIDE)
        ));
        assert_eq!(
            Fixture::new(&drv).run(&drv).unwrap_err(),
            EnvError::NotInInputClosure {
                path: full(OUTSIDE)
            }
        );
        // A path inside a store object is not a store path here.
        let drv = structured(&format!(
            r#"{{"exportReferencesGraph":{{"c":["{}/bin"]}}}}"#,
            full(A)
        ));
        assert!(matches!(
            Fixture::new(&drv).run(&drv).unwrap_err(),
            EnvError::ExportBadStorePath { .. }
        ));
    }

    #[test]
    fn export_references_graph_three_path_closure() {
        let mut drv = parse(HELLO, "hello");
        let value = format!("graph {}/bin/sh\n only_c {}", full(A), full(C));
        set_env(&mut drv, "exportReferencesGraph", &value);
        let got = Fixture::new(&drv).run(&drv).unwrap();
        // The attribute itself is passed as usual.
        assert_eq!(got.env["exportReferencesGraph"], value);
        let (a, b, c) = (full(A), full(B), full(C));
        assert_eq!(
            file(&got, "graph"),
            format!("{a}\n\n2\n{b}\n{c}\n{b}\n\n1\n{c}\n{c}\n\n1\n{c}\n")
        );
        assert_eq!(file(&got, "only_c"), format!("{c}\n\n1\n{c}\n"));
        assert_eq!(got.files.len(), 2);
    }

    #[test]
    fn export_references_graph_adds_derivation_outputs() {
        let mut fixture = Fixture::new(&parse(HELLO, "hello"));
        // a.drv-like source referring to hello.drv; hello's output is valid.
        let mut top = ValidPathInfo::new(sp(A), Hash::compute(HashAlgo::Sha256, b"a"));
        top.references = BTreeSet::from([sp(HELLO_DRV)]);
        fixture.infos.insert(sp(A), Arc::new(top));
        fixture.infos.insert(
            sp(HELLO_DRV),
            Arc::new(ValidPathInfo::new(
                sp(HELLO_DRV),
                Hash::compute(HashAlgo::Sha256, b"d"),
            )),
        );
        let mut hello_out =
            ValidPathInfo::new(sp(HELLO_OUT), Hash::compute(HashAlgo::Sha256, b"o"));
        hello_out.references = BTreeSet::from([sp(C)]);
        fixture.infos.insert(sp(HELLO_OUT), Arc::new(hello_out));

        let mut drv = parse(FO, "fo");
        set_env(&mut drv, "exportReferencesGraph", &format!("g {}", full(A)));
        let read = |p: &StorePath| {
            assert_eq!(p, &sp(HELLO_DRV));
            Ok(parse(HELLO, "hello"))
        };
        let got = fixture.run_with(&drv, &read).unwrap();
        let (a, c, d, o) = (full(A), full(C), full(HELLO_DRV), full(HELLO_OUT));
        // Sorted by base name: 76w… (drv), aaa…, ccc…, mjs… (output).
        assert_eq!(
            file(&got, "g"),
            format!("{d}\n\n0\n{a}\n\n1\n{d}\n{c}\n\n1\n{c}\n{o}\n\n1\n{c}\n")
        );
        // Without a way to read the derivation.
        assert!(matches!(
            fixture.run(&drv).unwrap_err(),
            EnvError::DrvRead { .. }
        ));
    }

    #[test]
    fn export_references_graph_refusals() {
        let drv = parse(HELLO, "hello");
        let fixture = Fixture::new(&drv);
        let run = |value: &str| {
            let mut drv = drv.clone();
            set_env(&mut drv, "exportReferencesGraph", value);
            fixture.run(&drv).unwrap_err()
        };
        assert_eq!(
            run(&format!("g {}", full(OUTSIDE))),
            EnvError::NotInInputClosure {
                path: full(OUTSIDE)
            }
        );
        assert_eq!(
            run(&format!("g {}", full(OUTSIDE))).to_string(),
            format!(
                "cannot export references of path '{}' because it is not in the input closure of the derivation",
                full(OUTSIDE)
            )
        );
        for bad in ["../g", "1g", ".attrs.sh", "a/b", "é"] {
            assert_eq!(
                run(&format!("{bad} {}", full(A))),
                EnvError::BadExportFileName {
                    name: bad.to_owned()
                }
            );
        }
        assert_eq!(
            run(&format!("g {} h", full(A))),
            EnvError::OddExportTokens {
                value: format!("g {} h", full(A))
            }
        );
        assert_eq!(
            run("g /etc/passwd"),
            EnvError::ExportNonStorePath {
                path: "/etc/passwd".to_owned()
            }
        );
        assert_eq!(
            run("g /nix/store/"),
            EnvError::ExportNonStorePath {
                path: "/nix/store/".to_owned()
            }
        );
        assert!(matches!(
            run("g /nix/store/short"),
            EnvError::ExportBadStorePath { .. }
        ));
    }

    #[test]
    fn refuses_nul_non_utf8_and_bad_names() {
        let base = parse(HELLO, "hello");
        let fixture = Fixture::new(&base);
        let run = |k: &[u8], v: &[u8]| {
            let mut drv = base.clone();
            drv.env.insert(k.to_vec(), v.to_vec());
            fixture.run(&drv)
        };
        assert!(matches!(
            run(b"x", b"a\0b").unwrap_err(),
            EnvError::BadEnvVar { var, .. } if var == "x"
        ));
        assert!(matches!(
            run(b"x\0y", b"a").unwrap_err(),
            EnvError::BadEnvVar { .. }
        ));
        assert!(matches!(
            run(b"a=b", b"a").unwrap_err(),
            EnvError::BadEnvVar { .. }
        ));
        assert!(matches!(
            run(b"", b"a").unwrap_err(),
            EnvError::BadEnvVar { .. }
        ));
        assert_eq!(
            run(b"latin", b"caf\xe9").unwrap_err(),
            EnvError::NotUtf8 {
                var: "latin".to_owned()
            }
        );
        assert!(run(b"latin", b"caf\xe9")
            .unwrap_err()
            .to_string()
            .contains("'latin'"));
        // In a file, any bytes do.
        let mut drv = base.clone();
        drv.env.insert(b"latin".to_vec(), b"caf\xe9".to_vec());
        set_env(&mut drv, "passAsFile", "latin");
        assert!(fixture.run(&drv).is_ok());
        // With structured attrs the other variables are not passed, so not checked.
        let mut drv = structured("{}");
        drv.env.insert(b"latin".to_vec(), b"caf\xe9".to_vec());
        assert!(Fixture::new(&drv).run(&drv).is_ok());
        // Bad JSON.
        let drv = structured("{");
        assert!(matches!(
            Fixture::new(&drv).run(&drv).unwrap_err(),
            EnvError::BadJson { .. }
        ));
        let drv = structured("[1]");
        assert!(matches!(
            drv_options(&drv).unwrap_err(),
            EnvError::BadJson { .. }
        ));
    }

    #[test]
    fn missing_output_path_is_refused() {
        let drv = parse(HELLO, "hello");
        let mut fixture = Fixture::new(&drv);
        fixture.outputs.clear();
        assert_eq!(
            fixture.run(&drv).unwrap_err(),
            EnvError::MissingOutputPath {
                output: "out".to_owned()
            }
        );
    }

    #[test]
    fn drv_options_from_env() {
        let mut drv = parse(FO, "fo");
        let c = full(C);
        set_env(&mut drv, "allowedReferences", &format!("out {c}"));
        set_env(&mut drv, "disallowedRequisites", " ");
        set_env(&mut drv, "requiredSystemFeatures", "kvm\nbig-parallel");
        set_env(&mut drv, "preferLocalBuild", "1");
        set_env(&mut drv, "__noChroot", "true");
        set_env(&mut drv, "impureEnvVars", "http_proxy");
        set_env(&mut drv, "exportReferencesGraph", &format!("g {c} h {c}"));
        let opts = drv_options(&drv).unwrap();
        assert_eq!(
            opts,
            DrvOptions {
                structured_attrs: false,
                // Only "1" is true.
                no_chroot: false,
                required_system_features: BTreeSet::from([
                    "kvm".to_owned(),
                    "big-parallel".to_owned()
                ]),
                prefer_local_build: true,
                allowed_references: Some(vec!["out".to_owned(), c.clone()]),
                disallowed_references: vec![],
                allowed_requisites: None,
                disallowed_requisites: vec![],
                output_checks: BTreeMap::new(),
                impure_env_vars: vec!["http_proxy".to_owned()],
                export_references_graph: vec![
                    ("g".to_owned(), c.clone()),
                    ("h".to_owned(), c.clone())
                ],
            }
        );
        set_env(&mut drv, "__noChroot", "1");
        assert!(drv_options(&drv).unwrap().no_chroot);
        // impureEnvVars are not read for sandboxed derivations.
        let mut hello = parse(HELLO, "hello");
        set_env(&mut hello, "impureEnvVars", "http_proxy");
        assert_eq!(drv_options(&hello).unwrap(), DrvOptions::default());
    }

    #[test]
    fn drv_options_from_structured_attrs() {
        let c = full(C);
        let json = format!(
            r#"{{"__noChroot":true,"preferLocalBuild":false,"requiredSystemFeatures":["kvm"],
            "allowedReferences":["ignored"],"impureEnvVars":["x"],
            "outputChecks":{{"out":{{"allowedReferences":["out","{c}"],"maxSize":100,
            "maxClosureSize":1000,"disallowedRequisites":"dev","allowedRequisites":null}},
            "dev":"not an object","other":{{"maxSize":1}}}},
            "exportReferencesGraph":{{"g":["{c}","{c}"],"h":"{c}"}}}}"#
        );
        let drv = structured(&json);
        let opts = drv_options(&drv).unwrap();
        assert_eq!(
            opts,
            DrvOptions {
                structured_attrs: true,
                no_chroot: true,
                required_system_features: BTreeSet::from(["kvm".to_owned()]),
                prefer_local_build: false,
                output_checks: BTreeMap::from([(
                    "out".to_owned(),
                    OutputCheckAttrs {
                        allowed_references: Some(vec!["out".to_owned(), c.clone()]),
                        disallowed_references: vec![],
                        allowed_requisites: Some(vec![]),
                        disallowed_requisites: vec!["dev".to_owned()],
                        max_size: Some(100),
                        max_closure_size: Some(1000),
                    }
                )]),
                export_references_graph: vec![
                    ("g".to_owned(), c.clone()),
                    ("g".to_owned(), c.clone()),
                    ("h".to_owned(), c.clone())
                ],
                ..DrvOptions::default()
            }
        );
        // Types are checked.
        let err = drv_options(&structured(r#"{"__noChroot":"1"}"#)).unwrap_err();
        assert_eq!(
            err,
            EnvError::AttrType {
                attr: "__noChroot".into(),
                expected: "a Boolean"
            }
        );
        let err = drv_options(&structured(r#"{"requiredSystemFeatures":"kvm"}"#)).unwrap_err();
        assert_eq!(
            err,
            EnvError::AttrType {
                attr: "requiredSystemFeatures".into(),
                expected: "a list of strings"
            }
        );
        let err =
            drv_options(&structured(r#"{"outputChecks":{"out":{"maxSize":"1"}}}"#)).unwrap_err();
        assert_eq!(
            err,
            EnvError::AttrType {
                attr: "outputChecks.out.maxSize".into(),
                expected: "a number"
            }
        );
        let err = drv_options(&structured(
            r#"{"outputChecks":{"out":{"allowedReferences":[1]}}}"#,
        ))
        .unwrap_err();
        assert!(matches!(err, EnvError::AttrType { .. }));
    }

    #[test]
    fn floats_print_like_nlohmann() {
        for (x, s) in [
            (1.5, "1.5"),
            (100.0, "100.0"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e14, "100000000000000.0"),
            (1e15, "1e+15"),
            (1.5e300, "1.5e+300"),
            (123456.789, "123456.789"),
        ] {
            assert_eq!(nlohmann_float(x), s, "{x}");
        }
    }

    #[test]
    fn shell_numbers_narrow_like_cpp() {
        let v = |s: &str| shell_simple(&serde_json::from_str(s).unwrap());
        assert_eq!(v("2147483648").as_deref(), Some("-2147483648"));
        assert_eq!(v("-1").as_deref(), Some("-1"));
        assert_eq!(v("18446744073709551615").as_deref(), Some("-1"));
        assert_eq!(v("2.5"), None);
        assert_eq!(v("1e10").as_deref(), Some("-2147483648"));
        assert_eq!(v("-3.0").as_deref(), Some("-3"));
    }
}
