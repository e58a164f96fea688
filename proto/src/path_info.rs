//! Path info (the metadata of a valid store object) and realisations, with their
//! fingerprints, signatures and JSON forms.
//!
//! JSON forms handled:
//! * what `nix path-info --json` prints in Nix 2.8 ([`ValidPathInfo::to_nix28_json`]);
//! * current Nix's path-info JSON, versions 1 to 3 ([`PathInfoJson`]);
//! * Nix 2.8's realisation JSON, sent on the wire in `builtOutputs` ([`Realisation`]);
//! * current Nix's realisation JSON keyed by derivation path ([`PathRealisation`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::content_address::{CaError, ContentAddress, ContentAddressMethod, FileIngestionMethod};
use crate::hash::{Hash, HashAlgo, HashError};
use crate::signature::{PublicKeys, SecretKey, Signature, SignatureError};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Longest JSON document the parsers here accept.
pub const MAX_JSON_LEN: usize = 1 << 20;

/// Why a path info could not be fingerprinted or signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathInfoError {
    /// Nix refuses to fingerprint a path whose NAR size is unknown (0).
    #[error("cannot calculate the fingerprint of path '{0}' because its nar size is not known")]
    UnknownNarSize(String),
    /// The fingerprint names the NAR hash as SHA-256.
    #[error("cannot calculate the fingerprint of path '{path}' because its nar hash is {algo}, not sha256")]
    NarHashNotSha256 {
        /// The full path.
        path: String,
        /// The algorithm it has.
        algo: HashAlgo,
    },
}

/// Why a JSON document (path info, narinfo, realisation) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonFormatError {
    /// Longer than [`MAX_JSON_LEN`].
    #[error("json document is {len} bytes long, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON at all.
    #[error("invalid json: {0}")]
    Syntax(String),
    /// A required key is absent.
    #[error("json key '{0}' is missing")]
    MissingKey(String),
    /// A key holds the wrong kind of value.
    #[error("json key '{key}' should be {expected}")]
    WrongType {
        /// The key (with its parent, e.g. `value.outPath`).
        key: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A hash that did not parse.
    #[error("json key '{key}': {source}")]
    BadHash {
        /// The key.
        key: String,
        /// Why.
        source: HashError,
    },
    /// A hash not in the `algo-base64` form current Nix requires.
    #[error("json key '{key}': hash '{value}' is not in SRI form")]
    NotSri {
        /// The key.
        key: String,
        /// The text given.
        value: String,
    },
    /// A store path or store directory that did not parse.
    #[error("json key '{key}': {source}")]
    BadPath {
        /// The key.
        key: String,
        /// Why.
        source: StorePathError,
    },
    /// A content address that did not parse.
    #[error("json key '{key}': {source}")]
    BadCa {
        /// The key.
        key: String,
        /// Why.
        source: CaError,
    },
    /// A content-address method name other than `text`, `flat`, `nar`, `git`.
    #[error("json key '{key}': unknown content address method '{value}'")]
    BadCaMethod {
        /// The key.
        key: String,
        /// The text given.
        value: String,
    },
    /// A signature that did not parse.
    #[error("json key '{key}': {source}")]
    BadSignature {
        /// The key.
        key: String,
        /// Why.
        source: SignatureError,
    },
    /// A path-info JSON version this code does not know.
    #[error("path info json version {0} is not supported; supported versions are 1, 2 and 3")]
    UnsupportedVersion(String),
    /// A derivation output id that did not parse.
    #[error("json key '{key}': {source}")]
    BadDrvOutput {
        /// The key.
        key: String,
        /// Why.
        source: DrvOutputError,
    },
    /// An object has no `path` and none was supplied.
    #[error("path info json has no 'path' key and no path was supplied")]
    NoPath,
}

fn wrong_type(key: &str, expected: &'static str) -> JsonFormatError {
    JsonFormatError::WrongType {
        key: key.to_owned(),
        expected,
    }
}

/// Parses JSON bytes under the size cap (invalid UTF-8 is a syntax error).
pub(crate) fn parse_json_text(text: &[u8]) -> Result<Value, JsonFormatError> {
    if text.len() > MAX_JSON_LEN {
        return Err(JsonFormatError::TooLarge {
            len: text.len(),
            max: MAX_JSON_LEN,
        });
    }
    serde_json::from_slice(text).map_err(|e| JsonFormatError::Syntax(e.to_string()))
}

/// Small typed accessors over a JSON object; `prefix` names the parent in error messages.
pub(crate) struct JsonObject<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> JsonObject<'a> {
    pub(crate) fn new(value: &'a Value, prefix: &'a str) -> Result<Self, JsonFormatError> {
        let map = value.as_object().ok_or_else(|| {
            wrong_type(
                if prefix.is_empty() { "<root>" } else { prefix },
                "an object",
            )
        })?;
        Ok(JsonObject { map, prefix })
    }

    pub(crate) fn key_name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// The value, treating JSON `null` as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn require(&self, key: &str) -> Result<&'a Value, JsonFormatError> {
        self.map
            .get(key)
            .ok_or_else(|| JsonFormatError::MissingKey(self.key_name(key)))
    }

    pub(crate) fn str_of(&self, key: &str, v: &'a Value) -> Result<&'a str, JsonFormatError> {
        v.as_str()
            .ok_or_else(|| wrong_type(&self.key_name(key), "a string"))
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, JsonFormatError> {
        self.get(key).map(|v| self.str_of(key, v)).transpose()
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, JsonFormatError> {
        let v = self.require(key)?;
        self.str_of(key, v)
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>, JsonFormatError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| wrong_type(&self.key_name(key), "an unsigned integer"))
            })
            .transpose()
    }

    pub(crate) fn req_u64(&self, key: &str) -> Result<u64, JsonFormatError> {
        self.require(key)?;
        self.opt_u64(key)?
            .ok_or_else(|| wrong_type(&self.key_name(key), "an unsigned integer"))
    }

    pub(crate) fn opt_i64(&self, key: &str) -> Result<Option<i64>, JsonFormatError> {
        self.get(key)
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| wrong_type(&self.key_name(key), "an integer"))
            })
            .transpose()
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>, JsonFormatError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| wrong_type(&self.key_name(key), "a boolean"))
            })
            .transpose()
    }

    pub(crate) fn opt_array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, JsonFormatError> {
        self.get(key)
            .map(|v| {
                v.as_array()
                    .ok_or_else(|| wrong_type(&self.key_name(key), "an array"))
            })
            .transpose()
    }

    /// A hash in SRI form (`sha256-…`), the only form current Nix's JSON uses.
    pub(crate) fn sri_hash_of(&self, key: &str, v: &Value) -> Result<Hash, JsonFormatError> {
        let text = self.str_of(key, v)?;
        parse_sri(text).map_err(|e| match e {
            None => JsonFormatError::NotSri {
                key: self.key_name(key),
                value: text.to_owned(),
            },
            Some(source) => JsonFormatError::BadHash {
                key: self.key_name(key),
                source,
            },
        })
    }

    pub(crate) fn base_name_of(&self, key: &str, v: &Value) -> Result<StorePath, JsonFormatError> {
        let text = self.str_of(key, v)?;
        StorePath::from_base_name(text).map_err(|source| JsonFormatError::BadPath {
            key: self.key_name(key),
            source,
        })
    }

    pub(crate) fn full_path_of(
        &self,
        key: &str,
        v: &Value,
        store_dir: &StoreDir,
    ) -> Result<StorePath, JsonFormatError> {
        let text = self.str_of(key, v)?;
        store_dir
            .parse_path(text)
            .map_err(|source| JsonFormatError::BadPath {
                key: self.key_name(key),
                source,
            })
    }
}

/// Parses `algo-base64`; `Err(None)` when the text is not in SRI form at all.
fn parse_sri(text: &str) -> Result<Hash, Option<HashError>> {
    let (algo, _) = text.split_once('-').ok_or(None)?;
    if text.contains(':') || HashAlgo::from_name(algo).is_err() {
        return Err(None);
    }
    Hash::parse_any_prefixed(text).map_err(Some)
}

/// Appends `s` as a JSON string the way Nix 2.8's own JSON writer does: `"`, `\`, `\n`, `\r`,
/// `\t` get short escapes, other control characters `\u00xx`, everything else is raw.
pub(crate) fn push_json_string_nix28(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `s` as a JSON string the way nlohmann::json's `dump()` does (also escapes `\b`,
/// `\f` in short form).
fn push_json_string_nlohmann(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Compact JSON with object keys in byte order, byte for byte what nlohmann::json's `dump()`
/// prints for the same value (Nix signs such text, so it must be exact).
pub(crate) fn dump_sorted(value: &Value) -> String {
    fn go(out: &mut String, v: &Value) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => push_json_string_nlohmann(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go(out, item);
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_json_string_nlohmann(out, k);
                    out.push(':');
                    go(out, item);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(&mut out, value);
    out
}

/// Current Nix's JSON form of a content address: `{"method": "nar", "hash": "sha256-…"}`.
fn ca_to_json_object(ca: &ContentAddress) -> Value {
    let method = match ca.method {
        ContentAddressMethod::Text => "text",
        ContentAddressMethod::Fixed(FileIngestionMethod::Flat) => "flat",
        ContentAddressMethod::Fixed(FileIngestionMethod::Recursive) => "nar",
        ContentAddressMethod::Fixed(FileIngestionMethod::Git) => "git",
    };
    serde_json::json!({ "method": method, "hash": ca.hash.to_sri() })
}

fn ca_from_json_object(
    obj: &JsonObject<'_>,
    key: &str,
    v: &Value,
) -> Result<ContentAddress, JsonFormatError> {
    let key_name = obj.key_name(key);
    let inner = JsonObject::new(v, &key_name)?;
    let method = match inner.req_str("method")? {
        "text" => ContentAddressMethod::Text,
        "flat" => ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
        "nar" => ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        "git" => ContentAddressMethod::Fixed(FileIngestionMethod::Git),
        other => {
            return Err(JsonFormatError::BadCaMethod {
                key: key_name.clone(),
                value: other.to_owned(),
            })
        }
    };
    let hash = inner.sri_hash_of("hash", inner.require("hash")?)?;
    // Round-trip through the string form so the text-needs-sha256 rule is checked once.
    let ca = ContentAddress { method, hash };
    ContentAddress::parse(&ca.to_string()).map_err(|source| JsonFormatError::BadCa {
        key: key_name,
        source,
    })
}

/// Sorts signature strings as current Nix orders its parsed signatures (by key name, then by
/// bytes); strings that do not parse come last, in string order.
fn sigs_in_nix_order(sigs: &BTreeSet<String>) -> Vec<(&String, Option<Signature>)> {
    let mut out: Vec<(&String, Option<Signature>)> =
        sigs.iter().map(|s| (s, Signature::parse(s).ok())).collect();
    out.sort_by(|a, b| match (&a.1, &b.1) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.0.cmp(b.0),
    });
    out
}

/// Reads a `signatures` array whose items are `name:base64` strings or `{keyName, sig}`
/// objects; each is validated and stored in `name:base64` form.
fn parse_signature_array(
    obj: &JsonObject<'_>,
    key: &str,
) -> Result<BTreeSet<String>, JsonFormatError> {
    let mut sigs = BTreeSet::new();
    if let Some(items) = obj.opt_array(key)? {
        for item in items {
            let sig = Signature::from_json_value(item).map_err(|source| {
                JsonFormatError::BadSignature {
                    key: obj.key_name(key),
                    source,
                }
            })?;
            sigs.insert(sig.to_string());
        }
    }
    Ok(sigs)
}

/// The metadata of a valid store object, as the daemon protocol and the database carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidPathInfo {
    /// The store object.
    pub path: StorePath,
    /// The derivation that produced it, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 of its NAR serialisation.
    pub nar_hash: Hash,
    /// Store objects it refers to (may include itself).
    pub references: BTreeSet<StorePath>,
    /// Unix seconds when it became valid; 0 = unknown.
    pub registration_time: i64,
    /// Size of its NAR serialisation; 0 = unknown.
    pub nar_size: u64,
    /// Built locally, so trusted without signatures.
    pub ultimate: bool,
    /// `keyname:base64sig` strings.
    pub sigs: BTreeSet<String>,
    /// How it is content-addressed, if it is.
    pub ca: Option<ContentAddress>,
}

impl ValidPathInfo {
    /// A path info with only path and NAR hash set, everything else empty or unknown.
    pub fn new(path: StorePath, nar_hash: Hash) -> ValidPathInfo {
        ValidPathInfo {
            path,
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: 0,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// Builds the info of a content-addressed object: the path is computed from `ca`, the
    /// other references and the self-reference flag.
    pub fn make_from_ca(
        store_dir: &StoreDir,
        name: &str,
        ca: ContentAddress,
        other_references: BTreeSet<StorePath>,
        has_self_reference: bool,
        nar_hash: Hash,
        nar_size: u64,
    ) -> Result<ValidPathInfo, StorePathError> {
        let path = store_dir.make_path_from_ca(name, &ca, &other_references, has_self_reference)?;
        let mut references = other_references;
        if has_self_reference {
            references.insert(path.clone());
        }
        Ok(ValidPathInfo {
            references,
            nar_size,
            ca: Some(ca),
            ..ValidPathInfo::new(path, nar_hash)
        })
    }

    /// The text that path signatures sign:
    /// `1;<path>;<narHash sha256:nix32>;<narSize>;<references, full, sorted, ','-joined>`.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> Result<String, PathInfoError> {
        let path = store_dir.print(&self.path);
        if self.nar_size == 0 {
            return Err(PathInfoError::UnknownNarSize(path));
        }
        if self.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(PathInfoError::NarHashNotSha256 {
                path,
                algo: self.nar_hash.algo(),
            });
        }
        let refs: Vec<String> = self.references.iter().map(|r| store_dir.print(r)).collect();
        Ok(format!(
            "1;{path};{};{};{}",
            self.nar_hash.to_prefixed_nix32(),
            self.nar_size,
            refs.join(",")
        ))
    }

    /// True when `ca` and the references really yield this path (the path's own base name in
    /// the references counts as a self-reference). Such a path needs no signature.
    pub fn is_content_addressed(&self, store_dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else {
            return false;
        };
        let mut others = self.references.clone();
        let has_self = others.remove(&self.path);
        store_dir
            .make_path_from_ca(self.path.name(), ca, &others, has_self)
            .is_ok_and(|computed| computed == self.path)
    }

    /// Number of signatures that verify against `keys`.
    pub fn check_signatures(&self, store_dir: &StoreDir, keys: &PublicKeys) -> usize {
        let Ok(fingerprint) = self.fingerprint(store_dir) else {
            return 0;
        };
        self.sigs
            .iter()
            .filter(|sig| keys.verify(&fingerprint, sig))
            .count()
    }

    /// Nix's notion of "enough signatures": correctly content-addressed, or at least one
    /// signature verifies.
    pub fn has_enough_signatures(&self, store_dir: &StoreDir, keys: &PublicKeys) -> bool {
        self.is_content_addressed(store_dir) || self.check_signatures(store_dir, keys) > 0
    }

    /// Adds a signature by `key` over the fingerprint.
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) -> Result<(), PathInfoError> {
        let fingerprint = self.fingerprint(store_dir)?;
        self.sigs.insert(key.sign(fingerprint));
        Ok(())
    }

    /// The references as base names, in order.
    pub fn short_refs(&self) -> Vec<&str> {
        self.references.iter().map(|r| r.base_name()).collect()
    }

    /// One object of `nix path-info --json` as Nix 2.8 prints it (compact, keys in its
    /// order). `closure_size` is printed when given (`--closure-size`).
    pub fn to_nix28_json(&self, store_dir: &StoreDir, closure_size: Option<u64>) -> String {
        write_nix28_json(self, store_dir, closure_size, None)
    }
}

/// The narinfo-only fields of Nix 2.8's path-info JSON.
pub(crate) struct Nix28NarInfoFields<'a> {
    pub url: &'a str,
    pub file_hash: Option<&'a Hash>,
    pub file_size: Option<u64>,
    pub closure_download_size: Option<u64>,
}

/// Writes one path-info object the way Nix 2.8's `pathInfoToJSON` does (SRI hashes).
pub(crate) fn write_nix28_json(
    info: &ValidPathInfo,
    store_dir: &StoreDir,
    closure_size: Option<u64>,
    narinfo: Option<Nix28NarInfoFields<'_>>,
) -> String {
    let mut out = String::from("{");
    let key = |out: &mut String, k: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        push_json_string_nix28(out, k);
        out.push(':');
    };
    key(&mut out, "path");
    push_json_string_nix28(&mut out, &store_dir.print(&info.path));
    key(&mut out, "narHash");
    push_json_string_nix28(&mut out, &info.nar_hash.to_sri());
    key(&mut out, "narSize");
    out.push_str(&info.nar_size.to_string());
    key(&mut out, "references");
    out.push('[');
    for (i, r) in info.references.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string_nix28(&mut out, &store_dir.print(r));
    }
    out.push(']');
    if let Some(ca) = &info.ca {
        key(&mut out, "ca");
        push_json_string_nix28(&mut out, &ca.to_string());
    }
    if let Some(size) = closure_size {
        key(&mut out, "closureSize");
        out.push_str(&size.to_string());
    }
    if let Some(deriver) = &info.deriver {
        key(&mut out, "deriver");
        push_json_string_nix28(&mut out, &store_dir.print(deriver));
    }
    if info.registration_time != 0 {
        key(&mut out, "registrationTime");
        out.push_str(&info.registration_time.to_string());
    }
    if info.ultimate {
        key(&mut out, "ultimate");
        out.push_str("true");
    }
    if !info.sigs.is_empty() {
        key(&mut out, "signatures");
        out.push('[');
        for (i, sig) in info.sigs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string_nix28(&mut out, sig);
        }
        out.push(']');
    }
    if let Some(fields) = narinfo {
        if !fields.url.is_empty() {
            key(&mut out, "url");
            push_json_string_nix28(&mut out, fields.url);
        }
        if let Some(hash) = fields.file_hash {
            key(&mut out, "downloadHash");
            push_json_string_nix28(&mut out, &hash.to_sri());
        }
        if let Some(size) = fields.file_size.filter(|&s| s != 0) {
            key(&mut out, "downloadSize");
            out.push_str(&size.to_string());
        }
        if let (Some(size), Some(_)) = (fields.closure_download_size, closure_size) {
            key(&mut out, "closureDownloadSize");
            out.push_str(&size.to_string());
        }
    }
    out.push('}');
    out
}

/// Nix 2.8's `nix path-info --json` entry for a path that is not valid.
pub fn nix28_invalid_path_json(store_dir: &StoreDir, path: &StorePath) -> String {
    let mut out = String::from("{\"path\":");
    push_json_string_nix28(&mut out, &store_dir.print(path));
    out.push_str(",\"valid\":false}");
    out
}

/// Nix 2.8's `nix path-info --json` list around objects from [`ValidPathInfo::to_nix28_json`].
pub fn nix28_json_list<I, S>(objects: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::from("[");
    for (i, obj) in objects.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(obj.as_ref());
    }
    out.push(']');
    out
}

/// The versions of current Nix's path-info JSON. Version 1 is also how ward reads Nix 2.8's
/// `nix path-info --json` objects (full paths, string `ca`, string signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathInfoJsonFormat {
    /// Full paths, `ca` as a string, signatures as strings.
    V1,
    /// Base names, `ca` as an object, signatures as strings.
    V2,
    /// Base names, `ca` as an object, signatures as `{keyName, sig}` objects.
    V3,
}

impl PathInfoJsonFormat {
    /// The number in the `version` key.
    pub fn number(self) -> u64 {
        match self {
            PathInfoJsonFormat::V1 => 1,
            PathInfoJsonFormat::V2 => 2,
            PathInfoJsonFormat::V3 => 3,
        }
    }
}

/// Path info without the path, as current Nix's unkeyed JSON carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnkeyedPathInfo {
    /// See [`ValidPathInfo::deriver`].
    pub deriver: Option<StorePath>,
    /// See [`ValidPathInfo::nar_hash`].
    pub nar_hash: Hash,
    /// See [`ValidPathInfo::references`].
    pub references: BTreeSet<StorePath>,
    /// See [`ValidPathInfo::registration_time`].
    pub registration_time: i64,
    /// See [`ValidPathInfo::nar_size`].
    pub nar_size: u64,
    /// See [`ValidPathInfo::ultimate`].
    pub ultimate: bool,
    /// See [`ValidPathInfo::sigs`].
    pub sigs: BTreeSet<String>,
    /// See [`ValidPathInfo::ca`].
    pub ca: Option<ContentAddress>,
}

impl UnkeyedPathInfo {
    /// Adds the path.
    pub fn with_path(self, path: StorePath) -> ValidPathInfo {
        ValidPathInfo {
            path,
            deriver: self.deriver,
            nar_hash: self.nar_hash,
            references: self.references,
            registration_time: self.registration_time,
            nar_size: self.nar_size,
            ultimate: self.ultimate,
            sigs: self.sigs,
            ca: self.ca,
        }
    }
}

impl From<&ValidPathInfo> for UnkeyedPathInfo {
    fn from(info: &ValidPathInfo) -> UnkeyedPathInfo {
        UnkeyedPathInfo {
            deriver: info.deriver.clone(),
            nar_hash: info.nar_hash,
            references: info.references.clone(),
            registration_time: info.registration_time,
            nar_size: info.nar_size,
            ultimate: info.ultimate,
            sigs: info.sigs.clone(),
            ca: info.ca,
        }
    }
}

/// One path-info JSON object in current Nix's forms (and Nix 2.8's, read as version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfoJson {
    /// The version it was written in.
    pub format: PathInfoJsonFormat,
    /// The `storeDir` key (required from version 2; the caller's default before).
    pub store_dir: StoreDir,
    /// The `path` key, when the object is keyed.
    pub path: Option<StorePath>,
    /// The rest.
    pub info: UnkeyedPathInfo,
    /// The `closureSize` key, when present.
    pub closure_size: Option<u64>,
}

impl PathInfoJson {
    /// Parses JSON text or bytes (capped at [`MAX_JSON_LEN`]).
    pub fn parse(
        text: impl AsRef<[u8]>,
        default_store_dir: &StoreDir,
    ) -> Result<PathInfoJson, JsonFormatError> {
        PathInfoJson::from_value(&parse_json_text(text.as_ref())?, default_store_dir)
    }

    /// Reads a parsed JSON object. Unknown keys are ignored. For version 1 a missing `ca` is
    /// read as none (Nix 2.8 leaves it out), and `storeDir` defaults to `default_store_dir`.
    pub fn from_value(
        value: &Value,
        default_store_dir: &StoreDir,
    ) -> Result<PathInfoJson, JsonFormatError> {
        let obj = JsonObject::new(value, "")?;
        let format = match obj.get("version") {
            None => PathInfoJsonFormat::V1,
            Some(v) => match v.as_u64() {
                Some(1) => PathInfoJsonFormat::V1,
                Some(2) => PathInfoJsonFormat::V2,
                Some(3) => PathInfoJsonFormat::V3,
                _ => return Err(JsonFormatError::UnsupportedVersion(v.to_string())),
            },
        };
        let store_dir = match obj.opt_str("storeDir")? {
            Some(dir) => StoreDir::new(dir).map_err(|source| JsonFormatError::BadPath {
                key: "storeDir".to_owned(),
                source,
            })?,
            None if format == PathInfoJsonFormat::V1 => default_store_dir.clone(),
            None => return Err(JsonFormatError::MissingKey("storeDir".to_owned())),
        };
        let v1 = format == PathInfoJsonFormat::V1;
        let path_of = |key: &str, v: &Value| {
            if v1 {
                obj.full_path_of(key, v, &store_dir)
            } else {
                obj.base_name_of(key, v)
            }
        };

        let path = obj.get("path").map(|v| path_of("path", v)).transpose()?;
        let nar_hash = obj.sri_hash_of("narHash", obj.require("narHash")?)?;
        let nar_size = obj.req_u64("narSize")?;
        let mut references = BTreeSet::new();
        let refs = obj
            .opt_array("references")?
            .ok_or_else(|| JsonFormatError::MissingKey("references".to_owned()))?;
        for r in refs {
            references.insert(path_of("references", r)?);
        }
        let ca =
            match obj.get("ca") {
                None if !v1 && !obj.map.contains_key("ca") => {
                    return Err(JsonFormatError::MissingKey("ca".to_owned()))
                }
                None => None,
                Some(Value::String(s)) if v1 => Some(ContentAddress::parse(s).map_err(
                    |source| JsonFormatError::BadCa {
                        key: "ca".to_owned(),
                        source,
                    },
                )?),
                Some(_) if v1 => return Err(wrong_type("ca", "a string or null")),
                Some(v) => Some(ca_from_json_object(&obj, "ca", v)?),
            };
        let deriver = obj
            .get("deriver")
            .map(|v| path_of("deriver", v))
            .transpose()?;
        let registration_time = obj.opt_i64("registrationTime")?.unwrap_or(0);
        let ultimate = obj.opt_bool("ultimate")?.unwrap_or(false);
        let sigs = parse_signature_array(&obj, "signatures")?;
        let closure_size = obj.opt_u64("closureSize")?;
        Ok(PathInfoJson {
            format,
            store_dir,
            path,
            info: UnkeyedPathInfo {
                deriver,
                nar_hash,
                references,
                registration_time,
                nar_size,
                ultimate,
                sigs,
                ca,
            },
            closure_size,
        })
    }

    /// The JSON form of `info` in `format`; keyed (with `path`) when `keyed`.
    pub fn from_path_info(
        info: &ValidPathInfo,
        store_dir: &StoreDir,
        format: PathInfoJsonFormat,
        keyed: bool,
    ) -> PathInfoJson {
        PathInfoJson {
            format,
            store_dir: store_dir.clone(),
            path: keyed.then(|| info.path.clone()),
            info: UnkeyedPathInfo::from(info),
            closure_size: None,
        }
    }

    /// The path info, with `path` from the object or, for unkeyed objects, the one given.
    pub fn into_path_info(
        self,
        path_if_unkeyed: Option<StorePath>,
    ) -> Result<ValidPathInfo, JsonFormatError> {
        let path = self
            .path
            .or(path_if_unkeyed)
            .ok_or(JsonFormatError::NoPath)?;
        Ok(self.info.with_path(path))
    }

    /// Writes the object as current Nix does; `include_impure` adds deriver, registration
    /// time, ultimate and signatures.
    pub fn to_value(&self, include_impure: bool) -> Value {
        let v1 = self.format == PathInfoJsonFormat::V1;
        let path_value = |p: &StorePath| {
            Value::String(if v1 {
                self.store_dir.print(p)
            } else {
                p.base_name().to_owned()
            })
        };
        let info = &self.info;
        let mut obj = Map::new();
        obj.insert("version".into(), self.format.number().into());
        obj.insert("storeDir".into(), self.store_dir.as_str().into());
        if let Some(path) = &self.path {
            obj.insert("path".into(), path_value(path));
        }
        obj.insert("narHash".into(), info.nar_hash.to_sri().into());
        obj.insert("narSize".into(), info.nar_size.into());
        obj.insert(
            "references".into(),
            Value::Array(info.references.iter().map(path_value).collect()),
        );
        let ca = match &info.ca {
            None => Value::Null,
            Some(ca) if v1 => ca.to_string().into(),
            Some(ca) => ca_to_json_object(ca),
        };
        obj.insert("ca".into(), ca);
        if include_impure {
            obj.insert(
                "deriver".into(),
                info.deriver.as_ref().map_or(Value::Null, path_value),
            );
            obj.insert(
                "registrationTime".into(),
                if info.registration_time == 0 {
                    Value::Null
                } else {
                    info.registration_time.into()
                },
            );
            obj.insert("ultimate".into(), info.ultimate.into());
            let sigs = sigs_in_nix_order(&info.sigs)
                .into_iter()
                .map(|(text, parsed)| match (self.format, parsed) {
                    (PathInfoJsonFormat::V3, Some(sig)) => sig.to_json_value(),
                    (_, Some(sig)) => sig.to_string().into(),
                    (_, None) => text.clone().into(),
                })
                .collect();
            obj.insert("signatures".into(), Value::Array(sigs));
        }
        if let Some(size) = self.closure_size {
            obj.insert("closureSize".into(), size.into());
        }
        Value::Object(obj)
    }
}

/// Why a derivation output id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DrvOutputError {
    /// No `!` (or `^` for the path-keyed form) separator.
    #[error("invalid derivation output id '{0}': missing '{1}'")]
    MissingSeparator(String, char),
    /// Nothing after the separator.
    #[error("invalid derivation output id '{0}': empty output name")]
    EmptyOutputName(String),
    /// The hash part did not parse.
    #[error("invalid derivation output id '{0}': {1}")]
    BadHash(String, HashError),
    /// The derivation path did not parse.
    #[error("invalid derivation output id '{0}': {1}")]
    BadPath(String, StorePathError),
}

/// Nix 2.8's id of a derivation output: hashDerivationModulo of the derivation and the output
/// name, printed `sha256:<base16>!<output>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DrvOutput {
    /// The derivation's hash modulo.
    pub drv_hash: Hash,
    /// The output name.
    pub output: String,
}

impl DrvOutput {
    /// Parses `<algo>:<hash>!<output>` (split at the first `!`, as Nix 2.8 does).
    pub fn parse(text: &str) -> Result<DrvOutput, DrvOutputError> {
        let (hash, output) = text
            .split_once('!')
            .ok_or_else(|| DrvOutputError::MissingSeparator(text.to_owned(), '!'))?;
        if output.is_empty() {
            return Err(DrvOutputError::EmptyOutputName(text.to_owned()));
        }
        let drv_hash = Hash::parse_any_prefixed(hash)
            .map_err(|e| DrvOutputError::BadHash(text.to_owned(), e))?;
        Ok(DrvOutput {
            drv_hash,
            output: output.to_owned(),
        })
    }
}

impl fmt::Display for DrvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}!{}", self.drv_hash.to_prefixed_base16(), self.output)
    }
}

impl FromStr for DrvOutput {
    type Err = DrvOutputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DrvOutput::parse(s)
    }
}

impl PartialOrd for DrvOutput {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders by algorithm, digest, then output name (the JSON writers sort by text anyway).
impl Ord for DrvOutput {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.drv_hash.algo(), self.drv_hash.digest(), &self.output).cmp(&(
            other.drv_hash.algo(),
            other.drv_hash.digest(),
            &other.output,
        ))
    }
}

impl Serialize for DrvOutput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DrvOutput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DrvOutput::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Nix 2.8's realisation: where a derivation output (by hash modulo) ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Realisation {
    /// Which output.
    pub id: DrvOutput,
    /// The store path it was realised to.
    pub out_path: StorePath,
    /// `keyname:base64sig` strings over [`Realisation::fingerprint`].
    pub signatures: BTreeSet<String>,
    /// Realisations of the outputs this one depends on.
    pub dependent_realisations: BTreeMap<DrvOutput, StorePath>,
}

impl Realisation {
    fn json_value(&self, with_signatures: bool) -> Value {
        let deps: Map<String, Value> = self
            .dependent_realisations
            .iter()
            .map(|(id, path)| (id.to_string(), Value::String(path.base_name().to_owned())))
            .collect();
        let mut obj = Map::new();
        obj.insert("dependentRealisations".into(), Value::Object(deps));
        obj.insert("id".into(), self.id.to_string().into());
        obj.insert("outPath".into(), self.out_path.base_name().into());
        if with_signatures {
            obj.insert(
                "signatures".into(),
                Value::Array(self.signatures.iter().map(|s| s.as_str().into()).collect()),
            );
        }
        Value::Object(obj)
    }

    /// The JSON text Nix 2.8 sends (compact, keys sorted: `dependentRealisations`, `id`,
    /// `outPath`, `signatures`).
    pub fn to_json_string(&self) -> String {
        dump_sorted(&self.json_value(true))
    }

    /// The text realisation signatures sign: the JSON without `signatures`.
    pub fn fingerprint(&self) -> String {
        dump_sorted(&self.json_value(false))
    }

    /// Adds a signature by `key`.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint());
        self.signatures.insert(sig);
    }

    /// Number of signatures that verify against `keys`.
    pub fn check_signatures(&self, keys: &PublicKeys) -> usize {
        let fingerprint = self.fingerprint();
        self.signatures
            .iter()
            .filter(|sig| keys.verify(&fingerprint, sig))
            .count()
    }

    /// Parses Nix 2.8's JSON text: `id` and `outPath` required, `signatures` and
    /// `dependentRealisations` optional, other keys ignored.
    pub fn parse_json(text: impl AsRef<[u8]>) -> Result<Realisation, JsonFormatError> {
        Realisation::from_value(&parse_json_text(text.as_ref())?)
    }

    /// Reads a parsed JSON object; see [`Realisation::parse_json`].
    pub fn from_value(value: &Value) -> Result<Realisation, JsonFormatError> {
        let obj = JsonObject::new(value, "")?;
        let id_text = obj.req_str("id")?;
        let id = DrvOutput::parse(id_text).map_err(|source| JsonFormatError::BadDrvOutput {
            key: "id".to_owned(),
            source,
        })?;
        let out_path = obj.base_name_of("outPath", obj.require("outPath")?)?;
        let mut signatures = BTreeSet::new();
        for sig in obj.opt_array("signatures")?.into_iter().flatten() {
            let sig = sig
                .as_str()
                .ok_or_else(|| wrong_type("signatures", "an array of strings"))?;
            signatures.insert(sig.to_owned());
        }
        let mut dependent_realisations = BTreeMap::new();
        if let Some(deps) = obj.get("dependentRealisations") {
            let deps = deps
                .as_object()
                .ok_or_else(|| wrong_type("dependentRealisations", "an object"))?;
            for (dep_id, dep_path) in deps {
                let key = format!("dependentRealisations.{dep_id}");
                let dep =
                    DrvOutput::parse(dep_id).map_err(|source| JsonFormatError::BadDrvOutput {
                        key: key.clone(),
                        source,
                    })?;
                let path = obj.base_name_of(&key, dep_path)?;
                dependent_realisations.insert(dep, path);
            }
        }
        Ok(Realisation {
            id,
            out_path,
            signatures,
            dependent_realisations,
        })
    }
}

/// Current Nix's id of a derivation output: the derivation's store path and the output name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DrvPathOutput {
    /// The `.drv` store path.
    pub drv_path: StorePath,
    /// The output name.
    pub output_name: String,
}

impl DrvPathOutput {
    /// Parses `<drv base name>^<output>` (split at the last `^`).
    pub fn parse(text: &str) -> Result<DrvPathOutput, DrvOutputError> {
        let (drv, output) = text
            .rsplit_once('^')
            .ok_or_else(|| DrvOutputError::MissingSeparator(text.to_owned(), '^'))?;
        if output.is_empty() {
            return Err(DrvOutputError::EmptyOutputName(text.to_owned()));
        }
        let drv_path = StorePath::from_base_name(drv)
            .map_err(|e| DrvOutputError::BadPath(text.to_owned(), e))?;
        Ok(DrvPathOutput {
            drv_path,
            output_name: output.to_owned(),
        })
    }

    fn json_value(&self) -> Value {
        serde_json::json!({
            "drvPath": self.drv_path.base_name(),
            "outputName": self.output_name,
        })
    }

    fn from_json(obj: &JsonObject<'_>) -> Result<DrvPathOutput, JsonFormatError> {
        let drv_path = obj.base_name_of("drvPath", obj.require("drvPath")?)?;
        let output_name = obj.req_str("outputName")?;
        if output_name.is_empty() {
            return Err(JsonFormatError::BadDrvOutput {
                key: obj.key_name("outputName"),
                source: DrvOutputError::EmptyOutputName(output_name.to_owned()),
            });
        }
        Ok(DrvPathOutput {
            drv_path,
            output_name: output_name.to_owned(),
        })
    }
}

impl fmt::Display for DrvPathOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}", self.drv_path, self.output_name)
    }
}

/// Current Nix's realisation value: the output path and signatures, without its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnkeyedRealisation {
    /// The output's store path.
    pub out_path: StorePath,
    /// `keyname:base64sig` strings over [`UnkeyedRealisation::fingerprint`].
    pub signatures: BTreeSet<String>,
}

impl UnkeyedRealisation {
    fn json_value(&self, with_signatures: bool) -> Value {
        let mut obj = Map::new();
        obj.insert("outPath".into(), self.out_path.base_name().into());
        if with_signatures {
            let sigs = sigs_in_nix_order(&self.signatures)
                .into_iter()
                .map(|(text, parsed)| {
                    parsed.map_or_else(|| text.clone().into(), |s| s.to_json_value())
                })
                .collect();
            obj.insert("signatures".into(), Value::Array(sigs));
        }
        Value::Object(obj)
    }

    /// Current Nix's JSON object `{"outPath", "signatures"}`.
    pub fn to_value(&self) -> Value {
        self.json_value(true)
    }

    /// Reads `{"outPath", "signatures"?}`; signatures may be strings or objects.
    pub fn from_value(value: &Value) -> Result<UnkeyedRealisation, JsonFormatError> {
        UnkeyedRealisation::from_json(&JsonObject::new(value, "")?)
    }

    fn from_json(obj: &JsonObject<'_>) -> Result<UnkeyedRealisation, JsonFormatError> {
        Ok(UnkeyedRealisation {
            out_path: obj.base_name_of("outPath", obj.require("outPath")?)?,
            signatures: parse_signature_array(obj, "signatures")?,
        })
    }

    /// The text signed for this value under `key`: the keyed JSON without signatures.
    pub fn fingerprint(&self, key: &DrvPathOutput) -> String {
        let mut obj = Map::new();
        obj.insert("key".into(), key.json_value());
        obj.insert("value".into(), self.json_value(false));
        dump_sorted(&Value::Object(obj))
    }

    /// Adds a signature by `secret`.
    pub fn sign(&mut self, key: &DrvPathOutput, secret: &SecretKey) {
        let sig = secret.sign(self.fingerprint(key));
        self.signatures.insert(sig);
    }

    /// Number of signatures that verify against `keys`.
    pub fn check_signatures(&self, key: &DrvPathOutput, keys: &PublicKeys) -> usize {
        let fingerprint = self.fingerprint(key);
        self.signatures
            .iter()
            .filter(|sig| keys.verify(&fingerprint, sig))
            .count()
    }
}

/// Current Nix's realisation: `{"key": {drvPath, outputName}, "value": {outPath, signatures}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRealisation {
    /// Which output.
    pub key: DrvPathOutput,
    /// Where it went.
    pub value: UnkeyedRealisation,
}

impl PathRealisation {
    /// Parses the JSON text or bytes.
    pub fn parse_json(text: impl AsRef<[u8]>) -> Result<PathRealisation, JsonFormatError> {
        PathRealisation::from_value(&parse_json_text(text.as_ref())?)
    }

    /// Reads a parsed JSON object.
    pub fn from_value(value: &Value) -> Result<PathRealisation, JsonFormatError> {
        let obj = JsonObject::new(value, "")?;
        let key = DrvPathOutput::from_json(&JsonObject::new(obj.require("key")?, "key")?)?;
        let value =
            UnkeyedRealisation::from_json(&JsonObject::new(obj.require("value")?, "value")?)?;
        Ok(PathRealisation { key, value })
    }

    /// The JSON object.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "key": self.key.json_value(), "value": self.value.to_value() })
    }

    /// The text signatures sign.
    pub fn fingerprint(&self) -> String {
        self.value.fingerprint(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TV8_SECRET: &str = "test-key-1:KFx22X+N6DPlRlfnsxWyRqisAYNoSSnhGNyKQk2RVlJ84khZg9AR3YRoHamnbHlYeZSy2wlNohRB7QpwlT0ltw==";
    const TV8_SIG: &str = "test-key-1:ZpwIslaumRCeZCI5i2LsG2p4nuHwSTe5N+hCLvNSi3/ARRe9WAtNJM/9+/aJGmeDPURalNX848/nIdISp5gFCA==";

    fn store() -> StoreDir {
        StoreDir::default()
    }

    /// TV3's `nix-store --add f.txt` path info.
    fn tv3() -> ValidPathInfo {
        let nar_hash = Hash::parse_any(
            "sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
            None,
        )
        .unwrap();
        ValidPathInfo::make_from_ca(
            &store(),
            "f.txt",
            ContentAddress {
                method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                hash: nar_hash,
            },
            BTreeSet::new(),
            false,
            nar_hash,
            120,
        )
        .unwrap()
    }

    #[test]
    fn fingerprint_and_signature_match_tv8() {
        let mut info = tv3();
        assert_eq!(
            store().print(&info.path),
            "/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"
        );
        assert_eq!(
            info.fingerprint(&store()).unwrap(),
            "1;/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"
        );
        let sk = SecretKey::parse(TV8_SECRET).unwrap();
        info.sign(&store(), &sk).unwrap();
        assert_eq!(info.sigs, BTreeSet::from([TV8_SIG.to_owned()]));
        let keys = PublicKeys::parse_entries([sk.public_key().to_string().as_str()]).unwrap();
        assert_eq!(info.check_signatures(&store(), &keys), 1);
        info.sigs.insert("junk".into());
        info.sigs
            .insert(format!("unknown:{}", TV8_SIG.split_once(':').unwrap().1));
        assert_eq!(info.check_signatures(&store(), &keys), 1);
        // A changed NAR size invalidates the signature.
        info.nar_size = 121;
        assert_eq!(info.check_signatures(&store(), &keys), 0);
    }

    #[test]
    fn fingerprint_lists_references_sorted() {
        let s = store();
        let a = StorePath::from_base_name("00000000000000000000000000000000-a").unwrap();
        let b = StorePath::from_base_name("11111111111111111111111111111111-b").unwrap();
        let mut info = ValidPathInfo::new(b.clone(), Hash::compute(HashAlgo::Sha256, b"x"));
        info.nar_size = 5;
        info.references = BTreeSet::from([b.clone(), a.clone()]);
        let fp = info.fingerprint(&s).unwrap();
        assert!(
            fp.ends_with(&format!(";5;{},{}", s.print(&a), s.print(&b))),
            "{fp}"
        );
    }

    #[test]
    fn fingerprint_refuses_unknown_size_and_non_sha256() {
        let mut info = tv3();
        info.nar_size = 0;
        assert!(matches!(
            info.fingerprint(&store()),
            Err(PathInfoError::UnknownNarSize(_))
        ));
        let sk = SecretKey::parse(TV8_SECRET).unwrap();
        assert!(info.sign(&store(), &sk).is_err());
        info.nar_size = 1;
        info.nar_hash = Hash::compute(HashAlgo::Sha512, b"x");
        assert!(matches!(
            info.fingerprint(&store()),
            Err(PathInfoError::NarHashNotSha256 { .. })
        ));
    }

    #[test]
    fn content_addressed_check() {
        let info = tv3();
        let keys = PublicKeys::new();
        assert!(info.is_content_addressed(&store()));
        assert!(info.has_enough_signatures(&store(), &keys));
        let mut wrong = info.clone();
        wrong.ca = Some(ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
            hash: info.nar_hash,
        });
        assert!(!wrong.is_content_addressed(&store()));
        assert!(!wrong.has_enough_signatures(&store(), &keys));
        let mut none = info.clone();
        none.ca = None;
        assert!(!none.is_content_addressed(&store()));
        // Same CA in another store directory names another path.
        assert!(!info.is_content_addressed(&StoreDir::new("/gnu/store").unwrap()));
        // An extra reference changes the path.
        let mut extra = info.clone();
        extra
            .references
            .insert(StorePath::from_base_name("00000000000000000000000000000000-a").unwrap());
        assert!(!extra.is_content_addressed(&store()));
    }

    #[test]
    fn self_reference_counts() {
        let s = store();
        let ca = ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            hash: Hash::compute(HashAlgo::Sha256, b"(...)"),
        };
        let bar = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar").unwrap();
        let nar = Hash::compute(HashAlgo::Sha256, b"nar");
        let info =
            ValidPathInfo::make_from_ca(&s, "foo", ca, BTreeSet::from([bar.clone()]), true, nar, 1)
                .unwrap();
        // The vector of current Nix's path-info tests.
        assert_eq!(
            info.path.base_name(),
            "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo"
        );
        assert!(info.references.contains(&info.path));
        assert!(info.is_content_addressed(&s));
        let mut no_self = info.clone();
        no_self.references.remove(&info.path);
        assert!(!no_self.is_content_addressed(&s));
        // Text objects cannot refer to themselves.
        let mut text = info.clone();
        text.ca = Some(ContentAddress {
            method: ContentAddressMethod::Text,
            hash: ca.hash,
        });
        assert!(!text.is_content_addressed(&s));
    }

    #[test]
    fn nix28_json_matches_nix_output() {
        // Printed by Nix 2.8.0's `nix path-info --json` for TV3 signed with a test key.
        let mut info = tv3();
        info.registration_time = 1795296239;
        info.sigs.insert("k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA==".into());
        let expected = r#"{"path":"/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt","narHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","narSize":120,"references":[],"ca":"fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw","closureSize":120,"registrationTime":1795296239,"signatures":["k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA=="]}"#;
        assert_eq!(info.to_nix28_json(&store(), Some(120)), expected);
        assert_eq!(nix28_json_list([expected]), format!("[{expected}]"));
        let parsed = PathInfoJson::parse(expected, &store()).unwrap();
        assert_eq!(parsed.format, PathInfoJsonFormat::V1);
        assert_eq!(parsed.closure_size, Some(120));
        assert_eq!(parsed.into_path_info(None).unwrap(), info);

        let mut full = info.clone();
        full.deriver =
            Some(StorePath::from_base_name("00000000000000000000000000000000-d.drv").unwrap());
        full.ultimate = true;
        full.references.insert(full.path.clone());
        let text = full.to_nix28_json(&store(), None);
        assert!(text.contains(r#","deriver":"/nix/store/00000000000000000000000000000000-d.drv","registrationTime":1795296239,"ultimate":true,"signatures""#), "{text}");
        let back = PathInfoJson::parse(&text, &store())
            .unwrap()
            .into_path_info(None)
            .unwrap();
        assert_eq!(back, full);
        assert_eq!(
            nix28_invalid_path_json(&store(), &info.path),
            r#"{"path":"/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt","valid":false}"#
        );
    }

    #[test]
    fn nix28_json_escapes_like_nix() {
        let mut out = String::new();
        push_json_string_nix28(&mut out, "a\"b\\c\nd\u{1}\u{8}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001\\u0008é\"");
        let mut out = String::new();
        push_json_string_nlohmann(&mut out, "\u{8}\u{c}\u{1f}");
        assert_eq!(out, "\"\\b\\f\\u001f\"");
    }

    #[test]
    fn path_info_json_round_trips_in_every_version() {
        let mut info = tv3();
        info.deriver =
            Some(StorePath::from_base_name("00000000000000000000000000000000-d.drv").unwrap());
        info.registration_time = 7;
        info.ultimate = true;
        let sk = SecretKey::parse(TV8_SECRET).unwrap();
        info.sign(&store(), &sk).unwrap();
        for format in [
            PathInfoJsonFormat::V1,
            PathInfoJsonFormat::V2,
            PathInfoJsonFormat::V3,
        ] {
            for keyed in [false, true] {
                let json = PathInfoJson::from_path_info(&info, &store(), format, keyed);
                let text = json.to_value(true).to_string();
                let back = PathInfoJson::parse(&text, &StoreDir::new("/other").unwrap()).unwrap();
                assert_eq!(back, json, "{text}");
                let path = (!keyed).then(|| info.path.clone());
                assert_eq!(back.into_path_info(path).unwrap(), info);
            }
        }
    }

    #[test]
    fn path_info_json_refuses_bad_input() {
        let ok = serde_json::json!({
            "version": 2, "storeDir": "/nix/store",
            "narHash": "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=",
            "narSize": 1, "references": [], "ca": null,
        });
        let s = store();
        PathInfoJson::from_value(&ok, &s).unwrap();
        let with = |key: &str, v: Value| {
            let mut o = ok.clone();
            o[key] = v;
            PathInfoJson::from_value(&o, &s)
        };
        let without = |key: &str| {
            let mut o = ok.clone();
            o.as_object_mut().unwrap().remove(key);
            PathInfoJson::from_value(&o, &s)
        };
        assert!(matches!(
            with("version", 4.into()),
            Err(JsonFormatError::UnsupportedVersion(_))
        ));
        assert!(matches!(
            with("version", "2".into()),
            Err(JsonFormatError::UnsupportedVersion(_))
        ));
        assert!(
            matches!(without("storeDir"), Err(JsonFormatError::MissingKey(k)) if k == "storeDir")
        );
        assert!(matches!(
            with("storeDir", "rel".into()),
            Err(JsonFormatError::BadPath { .. })
        ));
        assert!(matches!(
            without("narHash"),
            Err(JsonFormatError::MissingKey(_))
        ));
        assert!(matches!(without("ca"), Err(JsonFormatError::MissingKey(_))));
        assert!(matches!(
            without("references"),
            Err(JsonFormatError::MissingKey(_))
        ));
        assert!(matches!(
            with(
                "narHash",
                "sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13".into()
            ),
            Err(JsonFormatError::NotSri { .. })
        ));
        assert!(matches!(
            with("narHash", "sha256-AAAA".into()),
            Err(JsonFormatError::BadHash { .. })
        ));
        assert!(matches!(
            with("narSize", (-1).into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("narSize", 1.5.into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("narSize", Value::Null),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with(
                "references",
                serde_json::json!(["/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar"])
            ),
            Err(JsonFormatError::BadPath { .. })
        ));
        assert!(matches!(
            with("references", serde_json::json!([1])),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with(
                "ca",
                serde_json::json!({"method": "zip", "hash": "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc="})
            ),
            Err(JsonFormatError::BadCaMethod { .. })
        ));
        assert!(matches!(
            with(
                "ca",
                serde_json::json!({"method": "text", "hash": "sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA="})
            ),
            Err(JsonFormatError::BadCa { .. })
        ));
        assert!(matches!(
            with("ca", "fixed:r:sha256:x".into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("signatures", serde_json::json!(["nocolon"])),
            Err(JsonFormatError::BadSignature { .. })
        ));
        assert!(matches!(
            with("ultimate", 1.into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("registrationTime", "now".into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            PathInfoJson::from_value(&serde_json::json!([]), &s),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            PathInfoJson::parse("{", &s),
            Err(JsonFormatError::Syntax(_))
        ));
        assert!(matches!(
            PathInfoJson::parse("\u{0}", &s),
            Err(JsonFormatError::Syntax(_))
        ));
        let huge = format!("[{}]", " ".repeat(MAX_JSON_LEN));
        assert!(matches!(
            PathInfoJson::parse(&huge, &s),
            Err(JsonFormatError::TooLarge { .. })
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            PathInfoJson::parse(&deep, &s),
            Err(JsonFormatError::Syntax(_))
        ));
        // V1 with a missing ca (as Nix 2.8 prints) is fine; V1 ca must be a string.
        let v1 = serde_json::json!({
            "narHash": "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=",
            "narSize": 1, "references": [], "ca": {"method": "nar"},
        });
        assert!(matches!(
            PathInfoJson::from_value(&v1, &s),
            Err(JsonFormatError::WrongType { .. })
        ));
        // No path anywhere.
        let parsed = PathInfoJson::from_value(&ok, &s).unwrap();
        assert_eq!(parsed.into_path_info(None), Err(JsonFormatError::NoPath));
    }

    #[test]
    fn serde_round_trips_for_ipc() {
        let mut info = tv3();
        info.deriver =
            Some(StorePath::from_base_name("00000000000000000000000000000000-d.drv").unwrap());
        info.sigs.insert(TV8_SIG.into());
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<ValidPathInfo>(&json).unwrap(), info);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&info, config).unwrap();
        let (back, _): (ValidPathInfo, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, info);
        let mut r = sample_realisation();
        r.dependent_realisations
            .insert(r.id.clone(), r.out_path.clone());
        let bytes = bincode::serde::encode_to_vec(&r, config).unwrap();
        let (back, _): (Realisation, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn drv_output_ids() {
        let text = "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!out";
        let id = DrvOutput::parse(text).unwrap();
        assert_eq!(id.output, "out");
        assert_eq!(id.to_string(), text);
        // Other encodings parse and print back in base16.
        let nix32 = format!("sha256:{}!dev", id.drv_hash.to_nix32());
        assert_eq!(
            DrvOutput::parse(&nix32).unwrap().to_string(),
            text.replace("!out", "!dev")
        );
        // Split at the first '!'.
        assert_eq!(
            DrvOutput::parse(&format!("{text}!x")).unwrap().output,
            "out!x"
        );
        for bad in [
            "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d",
            "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!",
            "sha256:6f86!out",
            "6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!out",
            "",
        ] {
            assert!(DrvOutput::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<DrvOutput>(&json).unwrap(), id);
    }

    fn sample_realisation() -> Realisation {
        let id = DrvOutput::parse(
            "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo",
        )
        .unwrap();
        Realisation {
            id,
            out_path: StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap(),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        }
    }

    #[test]
    fn realisation_json_is_nix28_text() {
        let mut r = sample_realisation();
        assert_eq!(
            r.to_json_string(),
            r#"{"dependentRealisations":{},"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[]}"#
        );
        assert_eq!(
            r.fingerprint(),
            r#"{"dependentRealisations":{},"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#
        );
        let dep_b = DrvOutput::parse(
            "sha256:ff869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!out",
        )
        .unwrap();
        let dep_a = DrvOutput::parse(
            "sha256:00869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!out",
        )
        .unwrap();
        r.dependent_realisations
            .insert(dep_b.clone(), r.out_path.clone());
        r.dependent_realisations
            .insert(dep_a.clone(), r.out_path.clone());
        let text = r.to_json_string();
        let a_at = text.find(&dep_a.to_string()).unwrap();
        let b_at = text.find(&dep_b.to_string()).unwrap();
        assert!(a_at < b_at, "{text}");
        assert_eq!(Realisation::parse_json(&text).unwrap(), r);

        let sk = SecretKey::parse(TV8_SECRET).unwrap();
        r.sign(&sk);
        let keys = PublicKeys::parse_entries([sk.public_key().to_string().as_str()]).unwrap();
        assert_eq!(r.check_signatures(&keys), 1);
        let parsed = Realisation::parse_json(r.to_json_string()).unwrap();
        assert_eq!(parsed, r);
        assert_eq!(parsed.check_signatures(&keys), 1);
        let mut tampered = parsed;
        tampered.out_path =
            StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar").unwrap();
        assert_eq!(tampered.check_signatures(&keys), 0);
        let other = PublicKeys::parse_entries([SecretKey::from_seed("test-key-1", &[9; 32])
            .unwrap()
            .public_key()
            .to_string()
            .as_str()])
        .unwrap();
        assert_eq!(r.check_signatures(&other), 0);
    }

    #[test]
    fn realisation_json_reading() {
        // Key order does not matter, optional keys may be absent, unknown keys are ignored.
        let text = r#"{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","extra":1}"#;
        assert_eq!(Realisation::parse_json(text).unwrap(), sample_realisation());
        for bad in [
            r#"{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo"}"#,
            r#"{"id":1,"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#,
            r#"{"id":"sha256:6f86!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[1]}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":"x"}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","dependentRealisations":{"x":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}}"#,
            r#"{"id":"sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad6d6b0ad5ba1e6d!foo","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","dependentRealisations":[]}"#,
            "[]",
            "",
            "{\"id\":\"\u{0}",
        ] {
            assert!(Realisation::parse_json(bad).is_err(), "{bad}");
        }
        let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_JSON_LEN));
        assert!(matches!(
            Realisation::parse_json(&huge),
            Err(JsonFormatError::TooLarge { .. })
        ));
        let mut bad_utf8 = text.as_bytes().to_vec();
        bad_utf8[12] = 0xff;
        assert!(matches!(
            Realisation::parse_json(&bad_utf8),
            Err(JsonFormatError::Syntax(_))
        ));
        assert!(matches!(
            PathRealisation::parse_json(&bad_utf8),
            Err(JsonFormatError::Syntax(_))
        ));
        assert!(matches!(
            PathInfoJson::parse(&bad_utf8, &store()),
            Err(JsonFormatError::Syntax(_))
        ));
        // Truncated documents.
        for cut in [0, 1, 10, text.len() - 1] {
            assert!(Realisation::parse_json(&text[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn path_keyed_realisation_ids() {
        let id = DrvPathOutput::parse("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv^foo").unwrap();
        assert_eq!(id.output_name, "foo");
        assert_eq!(
            id.to_string(),
            "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv^foo"
        );
        for bad in [
            "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv",
            "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv^",
            "x^out",
        ] {
            assert!(DrvPathOutput::parse(bad).is_err(), "{bad}");
        }
        // A multi-byte character across the end of the hash part is refused, not a panic.
        let straddling = format!("{}\u{e9}-bar.drv^foo", "g".repeat(31));
        assert!(DrvPathOutput::parse(&straddling).is_err());
    }

    proptest::proptest! {
        #[test]
        fn json_parsers_never_panic(text in "\\PC{0,300}") {
            let _ = PathInfoJson::parse(&text, &store());
            let _ = Realisation::parse_json(&text);
            let _ = PathRealisation::parse_json(&text);
            let _ = DrvOutput::parse(&text);
            let _ = DrvPathOutput::parse(&text);
        }
    }
}
