//! Nix's JSON form of a derivation (format version 4, `nix derivation show`): outputs as
//! `{"path"}` / `{"hash","method"}` / `{"hashAlgo","method"}` / `{}` /
//! `{"hashAlgo","impure","method"}`, inputs as `{"srcs": [...], "drvs": {path: {"outputs",
//! "dynamicOutputs"}}}`, every store path as a base name.
//!
//! ward keeps structured attributes as the `__json` env var (as Nix 2.8 does); reading JSON
//! with a `structuredAttrs` object puts its compact serialisation there.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StorePath;

use super::{check_drv_name, check_output_name, Derivation, DerivationError, DerivationOutput};

/// The only JSON format version read and written.
pub const JSON_VERSION: u64 = 4;

/// The env var that holds structured attributes.
const STRUCTURED_ATTRS_VAR: &str = "__json";

fn err(msg: impl Into<String>) -> DerivationError {
    DerivationError::Json(msg.into())
}

fn method_name(method: ContentAddressMethod) -> &'static str {
    match method {
        ContentAddressMethod::Text => "text",
        ContentAddressMethod::Fixed(FileIngestionMethod::Flat) => "flat",
        ContentAddressMethod::Fixed(FileIngestionMethod::Recursive) => "nar",
        ContentAddressMethod::Fixed(FileIngestionMethod::Git) => "git",
    }
}

fn method_from_name(name: &str) -> Result<ContentAddressMethod, DerivationError> {
    Ok(match name {
        "text" => ContentAddressMethod::Text,
        "flat" => ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
        "nar" => ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        "git" => ContentAddressMethod::Fixed(FileIngestionMethod::Git),
        other => return Err(err(format!("unknown content address method '{other}'"))),
    })
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, DerivationError> {
    std::str::from_utf8(bytes).map_err(|_| err(format!("{what} is not valid UTF-8")))
}

/// The JSON object of one output.
pub fn output_to_json(output: &DerivationOutput) -> Value {
    match output {
        DerivationOutput::InputAddressed(path) => json!({ "path": path.base_name() }),
        DerivationOutput::CAFixed(ca) => json!({
            "hash": ca.hash.to_sri(),
            "method": method_name(ca.method),
        }),
        DerivationOutput::CAFloating { method, algo } => json!({
            "hashAlgo": algo.name(),
            "method": method_name(*method),
        }),
        DerivationOutput::Deferred => json!({}),
        DerivationOutput::Impure { method, algo } => json!({
            "hashAlgo": algo.name(),
            "impure": true,
            "method": method_name(*method),
        }),
    }
}

/// Reads one output's JSON object; the set of keys decides the kind.
pub fn output_from_json(value: &Value) -> Result<DerivationOutput, DerivationError> {
    let obj = value
        .as_object()
        .ok_or_else(|| err("derivation output is not an object"))?;
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let method_algo = || -> Result<(ContentAddressMethod, HashAlgo), DerivationError> {
        let method = method_from_name(get_str(obj, "method")?)?;
        let algo =
            HashAlgo::from_name(get_str(obj, "hashAlgo")?).map_err(|e| err(e.to_string()))?;
        Ok((method, algo))
    };
    let is = |want: &[&str]| keys == want.iter().copied().collect::<BTreeSet<&str>>();
    if is(&["path"]) {
        let path =
            StorePath::from_base_name(get_str(obj, "path")?).map_err(|e| err(e.to_string()))?;
        Ok(DerivationOutput::InputAddressed(path))
    } else if is(&["hash", "method"]) {
        let method = method_from_name(get_str(obj, "method")?)?;
        let hash =
            Hash::parse_any_prefixed(get_str(obj, "hash")?).map_err(|e| err(e.to_string()))?;
        Ok(DerivationOutput::CAFixed(ContentAddress { method, hash }))
    } else if is(&["hashAlgo", "method"]) {
        let (method, algo) = method_algo()?;
        Ok(DerivationOutput::CAFloating { method, algo })
    } else if is(&[]) {
        Ok(DerivationOutput::Deferred)
    } else if is(&["hashAlgo", "impure", "method"]) {
        if obj.get("impure") != Some(&Value::Bool(true)) {
            return Err(err("'impure' must be true"));
        }
        let (method, algo) = method_algo()?;
        Ok(DerivationOutput::Impure { method, algo })
    } else {
        Err(err(format!(
            "invalid keys {keys:?} for a derivation output"
        )))
    }
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a Value, DerivationError> {
    obj.get(key)
        .ok_or_else(|| err(format!("missing key '{key}'")))
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, DerivationError> {
    get(obj, key)?
        .as_str()
        .ok_or_else(|| err(format!("'{key}' is not a string")))
}

fn get_obj<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Map<String, Value>, DerivationError> {
    get(obj, key)?
        .as_object()
        .ok_or_else(|| err(format!("'{key}' is not an object")))
}

fn str_array<'a>(value: &'a Value, what: &str) -> Result<Vec<&'a str>, DerivationError> {
    value
        .as_array()
        .ok_or_else(|| err(format!("'{what}' is not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| err(format!("'{what}' holds a non-string")))
        })
        .collect()
}

impl Derivation {
    /// The JSON form (version 4). Fails when a byte-string field is not UTF-8, which JSON
    /// cannot hold.
    pub fn to_json(&self) -> Result<Value, DerivationError> {
        let outputs: Map<String, Value> = self
            .outputs
            .iter()
            .map(|(name, o)| (name.clone(), output_to_json(o)))
            .collect();
        let drvs: Map<String, Value> = self
            .input_drvs
            .iter()
            .map(|(path, outs)| {
                (
                    path.base_name().to_owned(),
                    json!({ "dynamicOutputs": {}, "outputs": outs }),
                )
            })
            .collect();
        let srcs: Vec<&str> = self.input_srcs.iter().map(StorePath::base_name).collect();
        let args = self
            .args
            .iter()
            .map(|a| utf8(a, "an argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Map::new();
        for (key, value) in &self.env {
            env.insert(
                utf8(key, "an environment variable name")?.to_owned(),
                Value::from(utf8(value, "an environment variable value")?),
            );
        }
        Ok(json!({
            "args": args,
            "builder": utf8(&self.builder, "the builder")?,
            "env": env,
            "inputs": { "drvs": drvs, "srcs": srcs },
            "name": self.name,
            "outputs": outputs,
            "system": self.platform,
            "version": JSON_VERSION,
        }))
    }

    /// Reads the JSON form (version 4). Dynamic outputs are refused; a `structuredAttrs`
    /// object becomes the `__json` env var.
    pub fn from_json(value: &Value) -> Result<Derivation, DerivationError> {
        let obj = value
            .as_object()
            .ok_or_else(|| err("derivation is not an object"))?;
        let version = get(obj, "version")?.as_u64();
        if version != Some(JSON_VERSION) {
            return Err(err(format!(
                "unsupported format version {}, only {JSON_VERSION} is supported",
                get(obj, "version")?
            )));
        }
        let name = get_str(obj, "name")?.to_owned();
        check_drv_name(&name)?;

        let mut outputs = BTreeMap::new();
        for (output_name, output) in get_obj(obj, "outputs")? {
            check_output_name(output_name)?;
            outputs.insert(output_name.clone(), output_from_json(output)?);
        }

        let inputs = get_obj(obj, "inputs")?;
        let mut input_srcs = BTreeSet::new();
        for src in str_array(get(inputs, "srcs")?, "srcs")? {
            let path = StorePath::from_base_name(src).map_err(|e| err(e.to_string()))?;
            if !input_srcs.insert(path) {
                return Err(err(format!("duplicate input source '{src}'")));
            }
        }
        let mut input_drvs = BTreeMap::new();
        for (path, entry) in get_obj(inputs, "drvs")? {
            let path_parsed = StorePath::from_base_name(path).map_err(|e| err(e.to_string()))?;
            let entry = entry
                .as_object()
                .ok_or_else(|| err(format!("input '{path}' is not an object")))?;
            if !get_obj(entry, "dynamicOutputs")?.is_empty() {
                return Err(DerivationError::DynamicDerivationsUnsupported);
            }
            let mut wanted = BTreeSet::new();
            for output in str_array(get(entry, "outputs")?, "outputs")? {
                check_output_name(output)?;
                wanted.insert(output.to_owned());
            }
            if wanted.is_empty() {
                return Err(DerivationError::NoInputOutputs { path: path.clone() });
            }
            input_drvs.insert(path_parsed, wanted);
        }

        let args = str_array(get(obj, "args")?, "args")?
            .into_iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        let mut env = BTreeMap::new();
        for (key, value) in get_obj(obj, "env")? {
            let value = value
                .as_str()
                .ok_or_else(|| err(format!("env var '{key}' is not a string")))?;
            env.insert(key.as_bytes().to_vec(), value.as_bytes().to_vec());
        }
        if let Some(attrs) = obj.get("structuredAttrs") {
            if env.contains_key(STRUCTURED_ATTRS_VAR.as_bytes()) {
                return Err(err("both 'structuredAttrs' and an env var '__json'"));
            }
            let text = serde_json::to_string(attrs).map_err(|e| err(e.to_string()))?;
            env.insert(STRUCTURED_ATTRS_VAR.as_bytes().to_vec(), text.into_bytes());
        }
        Ok(Derivation {
            name,
            outputs,
            input_drvs,
            input_srcs,
            platform: get_str(obj, "system")?.to_owned(),
            builder: get_str(obj, "builder")?.as_bytes().to_vec(),
            args,
            env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_round_trip() {
        for text in [
            r#"{"path":"c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-drv-name-output-name"}"#,
            r#"{"hash":"sha256-iUUXyRY8iW7DGirb0zwGgf1fRbLA7wimTJKgP7l/OQ8=","method":"flat"}"#,
            r#"{"hash":"sha256-iUUXyRY8iW7DGirb0zwGgf1fRbLA7wimTJKgP7l/OQ8=","method":"nar"}"#,
            r#"{"hash":"sha256-iUUXyRY8iW7DGirb0zwGgf1fRbLA7wimTJKgP7l/OQ8=","method":"text"}"#,
            r#"{"hashAlgo":"sha256","method":"nar"}"#,
            r#"{}"#,
            r#"{"hashAlgo":"sha256","impure":true,"method":"nar"}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let output = output_from_json(&value).unwrap();
            assert_eq!(output_to_json(&output), value, "{text}");
        }
    }

    #[test]
    fn refuses_bad_outputs() {
        for text in [
            r#"[]"#,
            r#"{"path":"x"}"#,
            r#"{"path":"c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-x","method":"nar"}"#,
            r#"{"hash":"sha256-iUUXyRY8iW7DGirb0zwGgf1fRbLA7wimTJKgP7l/OQ8=","method":"zip"}"#,
            r#"{"hash":"nope","method":"nar"}"#,
            r#"{"hashAlgo":"sha257","method":"nar"}"#,
            r#"{"hashAlgo":"sha256","impure":false,"method":"nar"}"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(output_from_json(&value).is_err(), "{text}");
        }
    }

    #[test]
    fn refuses_bad_derivations() {
        let good = json!({
            "args": [], "builder": "b", "env": {}, "name": "n", "outputs": {"out": {}},
            "inputs": {"drvs": {}, "srcs": []}, "system": "s", "version": 4,
        });
        assert!(Derivation::from_json(&good).is_ok());
        let mut bad = good.clone();
        bad["version"] = json!(3);
        assert!(Derivation::from_json(&bad).is_err());
        let mut bad = good.clone();
        bad["name"] = json!("a/b");
        assert!(Derivation::from_json(&bad).is_err());
        let mut bad = good.clone();
        bad["inputs"]["drvs"] = json!({
            "c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-dep2.drv": {
                "dynamicOutputs": {"cat": {"dynamicOutputs": {}, "outputs": ["kitten"]}},
                "outputs": ["cat"],
            }
        });
        assert_eq!(
            Derivation::from_json(&bad),
            Err(DerivationError::DynamicDerivationsUnsupported)
        );
        let mut bad = good.clone();
        bad["env"] = json!({"a": 1});
        assert!(Derivation::from_json(&bad).is_err());
    }

    #[test]
    fn non_utf8_cannot_be_json() {
        let good = json!({
            "args": [], "builder": "b", "env": {}, "name": "n", "outputs": {"out": {}},
            "inputs": {"drvs": {}, "srcs": []}, "system": "s", "version": 4,
        });
        let mut drv = Derivation::from_json(&good).unwrap();
        assert_eq!(drv.to_json().unwrap(), good);
        drv.env.insert(b"k".to_vec(), vec![0xff]);
        assert!(drv.to_json().is_err());
    }
}
