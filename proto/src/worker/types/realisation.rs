//! Realisations and derivation outputs (protocol-facts §3.2.7).
//!
//! Two layouts exist:
//!
//! * the **JSON form** (≥ 1.31 until current Nix's feature): a [`DrvOutputId`] is the string
//!   `"<algo>:<base16 hash>!<output>"` and a [`Realisation`] is a `str` holding a JSON object;
//!   `outPath` and the values of `dependentRealisations` are store path *base names*;
//! * the **binary form**, only when `realisation-with-path-not-hash` is negotiated: a
//!   [`DrvOutput`] is `path` + `str`, an [`UnkeyedRealisation`] is `path` + `set<str>`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;
use tokio::io::AsyncRead;

use crate::hash::Hash;
use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// A derivation output identified by the derivation's hash modulo (JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DrvOutputId {
    /// hashDerivationModulo of the derivation (current Nix sends a zero SHA-256 here).
    pub drv_hash: Hash,
    /// The output name.
    pub output_name: String,
}

impl DrvOutputId {
    /// The placeholder hash current Nix puts in `builtOutputs` keys: SHA-256 of all zeroes.
    pub fn placeholder(output_name: impl Into<String>) -> Self {
        DrvOutputId {
            drv_hash: Hash::sha256([0; 32]),
            output_name: output_name.into(),
        }
    }

    /// Parses `"<algo>:<hash>!<output>"`, splitting at the first `!` as Nix 2.8 does.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        const FIELD: &str = "derivation output id";
        let (hash, output) = text.split_once('!').ok_or_else(|| {
            WireError::invalid_value(FIELD, text, "missing '!' before the output name")
        })?;
        let drv_hash = Hash::parse_any_prefixed(hash).map_err(|source| WireError::InvalidHash {
            field: FIELD,
            source,
        })?;
        if output.is_empty() {
            return Err(WireError::invalid_value(FIELD, text, "empty output name"));
        }
        Ok(DrvOutputId {
            drv_hash,
            output_name: output.to_owned(),
        })
    }

    /// Reads the string form.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        let text = r.read_string("derivation output id").await?;
        Self::parse(&text)
    }

    /// Writes the string form.
    pub fn write(&self, w: &mut WireWriter) {
        w.put_str(&self.to_string());
    }
}

impl fmt::Display for DrvOutputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}!{}",
            self.drv_hash.to_prefixed_base16(),
            self.output_name
        )
    }
}

impl Ord for DrvOutputId {
    fn cmp(&self, other: &Self) -> Ordering {
        (
            self.drv_hash.algo(),
            self.drv_hash.digest(),
            &self.output_name,
        )
            .cmp(&(
                other.drv_hash.algo(),
                other.drv_hash.digest(),
                &other.output_name,
            ))
    }
}

impl PartialOrd for DrvOutputId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A realisation in the JSON form.
///
/// `signatures` and `dependentRealisations` are optional in the JSON; `None` means the key is
/// absent (as in the `builtOutputs` current Nix writes), `Some` that it is present (Nix 2.8
/// always writes both).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Realisation {
    /// The derivation output.
    pub id: DrvOutputId,
    /// The output path.
    pub out_path: StorePath,
    /// Signatures, `keyname:base64`.
    pub signatures: Option<BTreeSet<String>>,
    /// Realisations this one depends on, with their output paths.
    pub dependent_realisations: Option<BTreeMap<DrvOutputId, StorePath>>,
}

fn json_str(s: &str) -> String {
    // Serialising a `&str` cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

impl Realisation {
    /// A realisation as Nix 2.8 writes it: both optional keys present.
    pub fn new(id: DrvOutputId, out_path: StorePath) -> Self {
        Realisation {
            id,
            out_path,
            signatures: Some(BTreeSet::new()),
            dependent_realisations: Some(BTreeMap::new()),
        }
    }

    fn render(&self, with_signatures: bool) -> String {
        // Keys in sorted order and no whitespace, exactly like nlohmann's `dump()`.
        let mut parts = Vec::with_capacity(4);
        if let Some(deps) = &self.dependent_realisations {
            let sorted: BTreeMap<String, &str> = deps
                .iter()
                .map(|(id, path)| (id.to_string(), path.base_name()))
                .collect();
            let body: Vec<String> = sorted
                .iter()
                .map(|(id, path)| format!("{}:{}", json_str(id), json_str(path)))
                .collect();
            parts.push(format!("\"dependentRealisations\":{{{}}}", body.join(",")));
        }
        parts.push(format!("\"id\":{}", json_str(&self.id.to_string())));
        parts.push(format!(
            "\"outPath\":{}",
            json_str(self.out_path.base_name())
        ));
        if with_signatures {
            if let Some(sigs) = &self.signatures {
                let body: Vec<String> = sigs.iter().map(|s| json_str(s)).collect();
                parts.push(format!("\"signatures\":[{}]", body.join(",")));
            }
        }
        format!("{{{}}}", parts.join(","))
    }

    /// The JSON text, keys sorted, no whitespace (what Nix 2.8 sends).
    pub fn to_json(&self) -> String {
        self.render(true)
    }

    /// The text signatures are computed over: the JSON with `signatures` left out and
    /// `dependentRealisations` always present (Nix 2.8 `Realisation::fingerprint`).
    pub fn fingerprint(&self) -> String {
        let full = Realisation {
            dependent_realisations: Some(self.dependent_realisations.clone().unwrap_or_default()),
            ..self.clone()
        };
        full.render(false)
    }

    /// Parses the JSON text. `id` and `outPath` are required; unknown keys are ignored.
    /// Signatures may be strings (`"key:sig"`) or objects (`{"keyName": …, "sig": …}`, as some
    /// newer Nix versions write them).
    pub fn from_json(text: &str) -> Result<Self, WireError> {
        const FIELD: &str = "realisation";
        let bad = |reason: &str| WireError::invalid_value(FIELD, text, reason);
        let value: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| bad("not a json object"))?;
        let get_str = |key: &str| -> Result<&str, WireError> {
            obj.get(key)
                .ok_or_else(|| bad(&format!("missing field '{key}'")))?
                .as_str()
                .ok_or_else(|| bad(&format!("field '{key}' is not a string")))
        };
        let base_name = |s: &str| {
            StorePath::from_base_name(s).map_err(|source| WireError::InvalidStorePath {
                field: FIELD,
                source,
            })
        };
        let id = DrvOutputId::parse(get_str("id")?)?;
        let out_path = base_name(get_str("outPath")?)?;
        let signatures = match obj.get("signatures") {
            None => None,
            Some(Value::Array(items)) => {
                let mut sigs = BTreeSet::new();
                for item in items {
                    sigs.insert(match item {
                        Value::String(s) => s.clone(),
                        Value::Object(sig) => match (sig.get("keyName"), sig.get("sig")) {
                            (Some(Value::String(key)), Some(Value::String(sig))) => {
                                format!("{key}:{sig}")
                            }
                            _ => return Err(bad("signature object lacks 'keyName' or 'sig'")),
                        },
                        _ => return Err(bad("signature is neither a string nor an object")),
                    });
                }
                Some(sigs)
            }
            Some(_) => return Err(bad("field 'signatures' is not an array")),
        };
        let dependent_realisations = match obj.get("dependentRealisations") {
            None => None,
            Some(Value::Object(deps)) => {
                let mut map = BTreeMap::new();
                for (dep_id, dep_path) in deps {
                    let dep_path = dep_path
                        .as_str()
                        .ok_or_else(|| bad("dependent realisation path is not a string"))?;
                    map.insert(DrvOutputId::parse(dep_id)?, base_name(dep_path)?);
                }
                Some(map)
            }
            Some(_) => return Err(bad("field 'dependentRealisations' is not an object")),
        };
        Ok(Realisation {
            id,
            out_path,
            signatures,
            dependent_realisations,
        })
    }

    /// Reads the JSON form (a `str`).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        let text = r.read_string("realisation").await?;
        Self::from_json(&text)
    }

    /// Writes the JSON form (a `str`).
    pub fn write(&self, w: &mut WireWriter) {
        w.put_str(&self.to_json());
    }

    /// The binary-form value of this realisation (drops the id and dependencies).
    pub fn to_unkeyed(&self) -> UnkeyedRealisation {
        UnkeyedRealisation {
            out_path: self.out_path.clone(),
            signatures: self.signatures.clone().unwrap_or_default(),
        }
    }
}

/// A derivation output identified by the derivation's path (binary form).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DrvOutput {
    /// The derivation.
    pub drv_path: StorePath,
    /// The output name.
    pub output_name: String,
}

impl DrvOutput {
    /// Writes `path` + `str`.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_path(&ctx.store_dir, &self.drv_path);
        w.put_str(&self.output_name);
    }

    /// Reads `path` + `str`.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let drv_path = r
            .read_path("derivation output path", &ctx.store_dir)
            .await?;
        let output_name = r.read_string("derivation output name").await?;
        Ok(DrvOutput {
            drv_path,
            output_name,
        })
    }
}

/// The value of a realisation in the binary form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnkeyedRealisation {
    /// The output path.
    pub out_path: StorePath,
    /// Signatures, `keyname:base64`.
    pub signatures: BTreeSet<String>,
}

impl UnkeyedRealisation {
    /// Writes `path` + `set<str>`.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_path(&ctx.store_dir, &self.out_path);
        w.put_strings(&self.signatures);
    }

    /// Reads `path` + `set<str>`.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let out_path = r
            .read_path("realisation output path", &ctx.store_dir)
            .await?;
        let signatures = r.read_string_set("realisation signatures").await?;
        Ok(UnkeyedRealisation {
            out_path,
            signatures,
        })
    }

    /// The JSON-form realisation for `id`, with both optional keys present and no dependencies.
    pub fn with_id(&self, id: DrvOutputId) -> Realisation {
        Realisation {
            id,
            out_path: self.out_path.clone(),
            signatures: Some(self.signatures.clone()),
            dependent_realisations: Some(BTreeMap::new()),
        }
    }
}

/// A realisation in the binary form: [`DrvOutput`] followed by [`UnkeyedRealisation`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyedRealisation {
    /// The derivation output.
    pub id: DrvOutput,
    /// Its realisation.
    pub value: UnkeyedRealisation,
}

impl KeyedRealisation {
    /// Writes the binary form.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.id.write(w, ctx);
        self.value.write(w, ctx);
    }

    /// Reads the binary form.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let id = DrvOutput::read(r, ctx).await?;
        let value = UnkeyedRealisation::read(r, ctx).await?;
        Ok(KeyedRealisation { id, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527!baz";
    const DEP: &str =
        "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad277d4f15c373f5!quux";
    const OUT: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo";

    #[test]
    fn drv_output_id_round_trip() {
        let id = DrvOutputId::parse(ID).unwrap();
        assert_eq!(id.output_name, "baz");
        assert_eq!(id.to_string(), ID);
        for bad in [
            "sha256:abc",
            "nohash!out",
            "sha256:00!out",
            &format!("{}!", &ID[..ID.len() - 4]),
        ] {
            assert!(DrvOutputId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DrvOutputId::placeholder("out").drv_hash,
            Hash::sha256([0; 32])
        );
    }

    #[test]
    fn json_matches_nix_2_8() {
        let mut r = Realisation::new(
            DrvOutputId::parse(ID).unwrap(),
            StorePath::from_base_name(OUT).unwrap(),
        );
        assert_eq!(
            r.to_json(),
            format!(
                r#"{{"dependentRealisations":{{}},"id":"{ID}","outPath":"{OUT}","signatures":[]}}"#
            )
        );
        r.signatures = None;
        r.dependent_realisations = None;
        assert_eq!(r.to_json(), format!(r#"{{"id":"{ID}","outPath":"{OUT}"}}"#));
        assert_eq!(
            r.fingerprint(),
            format!(r#"{{"dependentRealisations":{{}},"id":"{ID}","outPath":"{OUT}"}}"#)
        );
    }

    #[test]
    fn json_parse_forms() {
        let text = format!(
            r#"{{"outPath":"{OUT}","id":"{ID}","extra":1,"signatures":["a:b",{{"keyName":"k","sig":"s"}}],"dependentRealisations":{{"{DEP}":"{OUT}"}}}}"#
        );
        let r = Realisation::from_json(&text).unwrap();
        let sigs: Vec<_> = r.signatures.clone().unwrap().into_iter().collect();
        assert_eq!(sigs, ["a:b", "k:s"]);
        assert_eq!(r.dependent_realisations.as_ref().unwrap().len(), 1);
        let back = Realisation::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn json_refusals() {
        for bad in [
            "not json".to_string(),
            "[]".to_string(),
            format!(r#"{{"id":"{ID}"}}"#),
            format!(r#"{{"id":"{ID}","outPath":"/nix/store/{OUT}"}}"#),
            format!(r#"{{"id":"{ID}","outPath":"{OUT}","signatures":"x"}}"#),
            format!(r#"{{"id":"{ID}","outPath":"{OUT}","signatures":[1]}}"#),
            format!(r#"{{"id":"{ID}","outPath":"{OUT}","dependentRealisations":{{"{DEP}":3}}}}"#),
            format!(r#"{{"id":"bad","outPath":"{OUT}"}}"#),
            "[".repeat(10_000),
        ] {
            assert!(Realisation::from_json(&bad).is_err(), "{bad:.80}");
        }
    }
}
