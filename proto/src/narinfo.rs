//! `.narinfo` files: the path info a binary cache serves for each store object.
//!
//! The text is lines of `Key: value`, written in a fixed key order (StorePath, URL,
//! Compression, FileHash, FileSize, NarHash, NarSize, References, Deriver, System, Sig, CA).
//! Parsing follows Nix: unknown keys are ignored; StorePath, NarHash, URL and a non-zero
//! NarSize are required; Compression defaults to `bzip2`; `Deriver: unknown-deriver` means
//! none. Unlike Nix, repeated keys (other than `Sig`) and malformed lines are refused with the
//! key and line at fault rather than silently re-interpreted.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::content_address::{CaError, ContentAddress};
use crate::hash::{Hash, HashAlgo, HashError};
use crate::path_info::{
    parse_json_text, write_nix28_json, JsonFormatError, JsonObject, Nix28NarInfoFields,
    PathInfoJson, PathInfoJsonFormat, ValidPathInfo,
};
use crate::signature::{Signature, SignatureError};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Longest narinfo accepted; real ones are a few KiB even with thousands of references.
pub const MAX_NARINFO_LEN: usize = 1 << 20;
/// The compression Nix assumes when the `Compression` key is absent or empty.
pub const DEFAULT_COMPRESSION: &str = "bzip2";
/// The `Deriver` value that means "no deriver".
pub const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// Why a narinfo was refused (or could not be printed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    /// Longer than [`MAX_NARINFO_LEN`].
    #[error("narinfo is {len} bytes long, more than the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that are not UTF-8.
    #[error("narinfo line {line} is not valid utf-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line (possibly empty) without `:`.
    #[error("narinfo line {line} has no ':'")]
    MissingColon {
        /// 1-based line number.
        line: usize,
    },
    /// The last line does not end in a newline.
    #[error("narinfo line {line} does not end with a newline")]
    MissingNewline {
        /// 1-based line number.
        line: usize,
    },
    /// Something other than a single space after the `:` of a non-empty value.
    #[error("narinfo line {line}: expected ': ' after key '{key}'")]
    MissingSpace {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
    /// A key that may appear once appeared again.
    #[error("narinfo line {line}: duplicate key '{key}'")]
    DuplicateKey {
        /// 1-based line number of the repeat.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A hash that did not parse.
    #[error("narinfo line {line}: bad {key}: {source}")]
    BadHash {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// Why.
        source: HashError,
    },
    /// `NarHash` that is not SHA-256.
    #[error("narinfo line {line}: NarHash must be sha256, not {algo}")]
    NarHashNotSha256 {
        /// 1-based line number.
        line: usize,
        /// The algorithm given.
        algo: HashAlgo,
    },
    /// A store path that did not parse.
    #[error("narinfo line {line}: bad {key}: {source}")]
    BadPath {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// Why.
        source: StorePathError,
    },
    /// A size that is not a decimal unsigned 64-bit number.
    #[error("narinfo line {line}: {key} '{value}' is not a valid size")]
    BadNumber {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The text given.
        value: String,
    },
    /// A content address that did not parse.
    #[error("narinfo line {line}: bad CA: {source}")]
    BadCa {
        /// 1-based line number.
        line: usize,
        /// Why.
        source: CaError,
    },
    /// A signature that did not parse.
    #[error("narinfo line {line}: bad Sig: {source}")]
    BadSignature {
        /// 1-based line number.
        line: usize,
        /// Why.
        source: SignatureError,
    },
    /// A required key is absent (or, for URL, empty).
    #[error("narinfo is missing required key '{0}'")]
    MissingKey(&'static str),
    /// NarSize is 0.
    #[error("narinfo NarSize is zero")]
    ZeroNarSize,
    /// A value that cannot be written without corrupting the file.
    #[error("cannot print narinfo: {key} value {value:?} {reason}")]
    Unprintable {
        /// The key.
        key: &'static str,
        /// The value (shortened).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A parsed narinfo: the path info plus where and how the NAR is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarInfo {
    /// Path, NAR hash and size, references, deriver, signatures, CA. `registration_time` and
    /// `ultimate` are not part of the text form (read as 0 and false).
    pub info: ValidPathInfo,
    /// Where the (compressed) NAR is, relative to the cache.
    pub url: String,
    /// `xz`, `bzip2`, `zstd`, `none`, ...; `None` prints as `bzip2`.
    pub compression: Option<String>,
    /// Hash of the compressed file.
    pub file_hash: Option<Hash>,
    /// Size of the compressed file.
    pub file_size: Option<u64>,
    /// The `System` key Nix 2.8 still writes when set.
    pub system: Option<String>,
}

/// Which once-only keys have been seen.
#[derive(Default)]
struct Seen {
    keys: Vec<&'static str>,
}

impl Seen {
    fn first(&mut self, key: &'static str, line: usize) -> Result<(), NarInfoError> {
        if self.keys.contains(&key) {
            return Err(NarInfoError::DuplicateKey { line, key });
        }
        self.keys.push(key);
        Ok(())
    }
}

fn parse_size(key: &'static str, value: &str, line: usize) -> Result<u64, NarInfoError> {
    let bad = || NarInfoError::BadNumber {
        line,
        key,
        value: value.chars().take(64).collect(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

fn parse_hash(key: &'static str, value: &str, line: usize) -> Result<Hash, NarInfoError> {
    Hash::parse_any_prefixed(value).map_err(|source| NarInfoError::BadHash { line, key, source })
}

fn parse_base_name(key: &'static str, value: &str, line: usize) -> Result<StorePath, NarInfoError> {
    StorePath::from_base_name(value).map_err(|source| NarInfoError::BadPath { line, key, source })
}

impl NarInfo {
    /// A narinfo for `info` with the NAR at `url`, other cache fields unset.
    pub fn from_path_info(info: ValidPathInfo, url: String) -> NarInfo {
        NarInfo {
            info,
            url,
            compression: None,
            file_hash: None,
            file_size: None,
            system: None,
        }
    }

    /// The path info alone.
    pub fn into_path_info(self) -> ValidPathInfo {
        self.info
    }

    /// The compression, with Nix's default.
    pub fn compression_or_default(&self) -> &str {
        match self.compression.as_deref() {
            None | Some("") => DEFAULT_COMPRESSION,
            Some(c) => c,
        }
    }

    /// Parses narinfo bytes (at most [`MAX_NARINFO_LEN`], UTF-8).
    pub fn parse(store_dir: &StoreDir, bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
        if bytes.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge {
                len: bytes.len(),
                max: MAX_NARINFO_LEN,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| NarInfoError::NotUtf8 {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
        })?;
        NarInfo::parse_str(store_dir, text)
    }

    /// Parses narinfo text (at most [`MAX_NARINFO_LEN`]).
    pub fn parse_str(store_dir: &StoreDir, text: &str) -> Result<NarInfo, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge {
                len: text.len(),
                max: MAX_NARINFO_LEN,
            });
        }
        let mut seen = Seen::default();
        let mut path = None;
        let mut url = String::new();
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = 0u64;
        let mut references = BTreeSet::new();
        let mut deriver = None;
        let mut system = None;
        let mut sigs = BTreeSet::new();
        let mut ca = None;

        let mut rest = text;
        let mut line = 0usize;
        while !rest.is_empty() {
            line += 1;
            let Some(eol) = rest.find('\n') else {
                return Err(NarInfoError::MissingNewline { line });
            };
            let current = &rest[..eol];
            rest = &rest[eol + 1..];
            let Some((key, after)) = current.split_once(':') else {
                return Err(NarInfoError::MissingColon { line });
            };
            let value = match after.strip_prefix(' ') {
                Some(v) => v,
                None if after.is_empty() => "",
                None => {
                    return Err(NarInfoError::MissingSpace {
                        line,
                        key: key.chars().take(64).collect(),
                    })
                }
            };
            match key {
                "StorePath" => {
                    seen.first("StorePath", line)?;
                    path = Some(store_dir.parse_path(value).map_err(|source| {
                        NarInfoError::BadPath {
                            line,
                            key: "StorePath",
                            source,
                        }
                    })?);
                }
                "URL" => {
                    seen.first("URL", line)?;
                    url = value.to_owned();
                }
                "Compression" => {
                    seen.first("Compression", line)?;
                    compression = (!value.is_empty()).then(|| value.to_owned());
                }
                "FileHash" => {
                    seen.first("FileHash", line)?;
                    file_hash = Some(parse_hash("FileHash", value, line)?);
                }
                "FileSize" => {
                    seen.first("FileSize", line)?;
                    file_size = Some(parse_size("FileSize", value, line)?);
                }
                "NarHash" => {
                    seen.first("NarHash", line)?;
                    let hash = parse_hash("NarHash", value, line)?;
                    if hash.algo() != HashAlgo::Sha256 {
                        return Err(NarInfoError::NarHashNotSha256 {
                            line,
                            algo: hash.algo(),
                        });
                    }
                    nar_hash = Some(hash);
                }
                "NarSize" => {
                    seen.first("NarSize", line)?;
                    nar_size = parse_size("NarSize", value, line)?;
                }
                "References" => {
                    seen.first("References", line)?;
                    for r in value.split(' ').filter(|r| !r.is_empty()) {
                        references.insert(parse_base_name("References", r, line)?);
                    }
                }
                "Deriver" => {
                    seen.first("Deriver", line)?;
                    if value != UNKNOWN_DERIVER {
                        deriver = Some(parse_base_name("Deriver", value, line)?);
                    }
                }
                "System" => {
                    seen.first("System", line)?;
                    system = Some(value.to_owned());
                }
                "Sig" => {
                    Signature::parse(value)
                        .map_err(|source| NarInfoError::BadSignature { line, source })?;
                    sigs.insert(value.to_owned());
                }
                "CA" => {
                    seen.first("CA", line)?;
                    ca = ContentAddress::parse_opt(value)
                        .map_err(|source| NarInfoError::BadCa { line, source })?;
                }
                // Nix ignores keys it does not know (e.g. `StoreDir`, new fields).
                _ => {}
            }
        }

        let path = path.ok_or(NarInfoError::MissingKey("StorePath"))?;
        let nar_hash = nar_hash.ok_or(NarInfoError::MissingKey("NarHash"))?;
        if url.is_empty() {
            return Err(NarInfoError::MissingKey("URL"));
        }
        if nar_size == 0 {
            return Err(if seen.keys.contains(&"NarSize") {
                NarInfoError::ZeroNarSize
            } else {
                NarInfoError::MissingKey("NarSize")
            });
        }
        Ok(NarInfo {
            info: ValidPathInfo {
                path,
                deriver,
                nar_hash,
                references,
                registration_time: 0,
                nar_size,
                ultimate: false,
                sigs,
                ca,
            },
            url,
            compression: Some(compression.unwrap_or_else(|| DEFAULT_COMPRESSION.to_owned())),
            file_hash,
            file_size,
            system,
        })
    }

    /// Prints the narinfo in Nix's key order. Refuses values that would not parse back
    /// (newlines, an empty URL, a zero NarSize, a non-SHA-256 NarHash, malformed signatures).
    pub fn to_text(&self, store_dir: &StoreDir) -> Result<String, NarInfoError> {
        fn one_line(key: &'static str, value: &str) -> Result<(), NarInfoError> {
            if value.contains('\n') {
                return Err(NarInfoError::Unprintable {
                    key,
                    value: value.chars().take(64).collect(),
                    reason: "contains a newline",
                });
            }
            Ok(())
        }
        let info = &self.info;
        one_line("URL", &self.url)?;
        if self.url.is_empty() {
            return Err(NarInfoError::MissingKey("URL"));
        }
        if info.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        if info.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(NarInfoError::Unprintable {
                key: "NarHash",
                value: info.nar_hash.to_sri(),
                reason: "is not sha256",
            });
        }
        let compression = self.compression_or_default();
        one_line("Compression", compression)?;

        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        line("StorePath", &store_dir.print(&info.path));
        line("URL", &self.url);
        line("Compression", compression);
        if let Some(hash) = &self.file_hash {
            line("FileHash", &hash.to_prefixed_nix32());
        }
        if let Some(size) = self.file_size {
            line("FileSize", &size.to_string());
        }
        line("NarHash", &info.nar_hash.to_prefixed_nix32());
        line("NarSize", &info.nar_size.to_string());
        line("References", &info.short_refs().join(" "));
        if let Some(deriver) = &info.deriver {
            line("Deriver", deriver.base_name());
        }
        if let Some(system) = self.system.as_deref().filter(|s| !s.is_empty()) {
            one_line("System", system)?;
            line("System", system);
        }
        for sig in &info.sigs {
            one_line("Sig", sig)?;
            if let Err(source) = Signature::parse(sig) {
                return Err(NarInfoError::Unprintable {
                    key: "Sig",
                    value: sig.chars().take(64).collect(),
                    reason: match source {
                        SignatureError::TooLong { .. } => "is too long",
                        _ => "is not of the form '<name>:<base64>'",
                    },
                });
            }
            line("Sig", sig);
        }
        if let Some(ca) = &info.ca {
            line("CA", &ca.to_string());
        }
        Ok(out)
    }

    /// One object of `nix path-info --json` for a binary-cache path, as Nix 2.8 prints it;
    /// `closure_sizes` = (closure NAR size, closure download size) for `--closure-size`.
    pub fn to_nix28_json(&self, store_dir: &StoreDir, closure_sizes: Option<(u64, u64)>) -> String {
        write_nix28_json(
            &self.info,
            store_dir,
            closure_sizes.map(|c| c.0),
            Some(Nix28NarInfoFields {
                url: &self.url,
                file_hash: self.file_hash.as_ref(),
                file_size: self.file_size,
                closure_download_size: closure_sizes.map(|c| c.1),
            }),
        )
    }
}

/// Current Nix's narinfo JSON: path-info JSON plus `url`, `compression`, `downloadHash`,
/// `downloadSize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfoJson {
    /// The path-info part.
    pub path_info: PathInfoJson,
    /// `url`, empty when absent.
    pub url: String,
    /// `compression`, when present.
    pub compression: Option<String>,
    /// `downloadHash`, when present.
    pub download_hash: Option<Hash>,
    /// `downloadSize`, when present.
    pub download_size: Option<u64>,
}

impl NarInfoJson {
    /// Parses JSON text or bytes (capped at [`crate::path_info::MAX_JSON_LEN`]).
    pub fn parse(
        text: impl AsRef<[u8]>,
        default_store_dir: &StoreDir,
    ) -> Result<NarInfoJson, JsonFormatError> {
        NarInfoJson::from_value(&parse_json_text(text.as_ref())?, default_store_dir)
    }

    /// Reads a parsed JSON object; see [`PathInfoJson::from_value`].
    pub fn from_value(
        value: &Value,
        default_store_dir: &StoreDir,
    ) -> Result<NarInfoJson, JsonFormatError> {
        let path_info = PathInfoJson::from_value(value, default_store_dir)?;
        let obj = JsonObject::new(value, "")?;
        let download_hash = obj
            .get("downloadHash")
            .map(|v| obj.sri_hash_of("downloadHash", v))
            .transpose()?;
        Ok(NarInfoJson {
            path_info,
            url: obj.opt_str("url")?.unwrap_or_default().to_owned(),
            compression: obj.opt_str("compression")?.map(str::to_owned),
            download_hash,
            download_size: obj.opt_u64("downloadSize")?,
        })
    }

    /// The JSON form of `narinfo`.
    pub fn from_narinfo(
        narinfo: &NarInfo,
        store_dir: &StoreDir,
        format: PathInfoJsonFormat,
        keyed: bool,
    ) -> NarInfoJson {
        NarInfoJson {
            path_info: PathInfoJson::from_path_info(&narinfo.info, store_dir, format, keyed),
            url: narinfo.url.clone(),
            compression: narinfo.compression.clone(),
            download_hash: narinfo.file_hash,
            download_size: narinfo.file_size,
        }
    }

    /// The narinfo, with the path from the object or, for unkeyed objects, the one given.
    pub fn into_narinfo(
        self,
        path_if_unkeyed: Option<StorePath>,
    ) -> Result<NarInfo, JsonFormatError> {
        Ok(NarInfo {
            info: self.path_info.into_path_info(path_if_unkeyed)?,
            url: self.url,
            compression: self.compression,
            file_hash: self.download_hash,
            file_size: self.download_size,
            system: None,
        })
    }

    /// Writes the object as current Nix does; the cache fields are impure information.
    pub fn to_value(&self, include_impure: bool) -> Value {
        let mut value = self.path_info.to_value(include_impure);
        if let (true, Some(obj)) = (include_impure, value.as_object_mut()) {
            if !self.url.is_empty() {
                obj.insert("url".into(), self.url.clone().into());
            }
            if let Some(c) = &self.compression {
                obj.insert("compression".into(), c.clone().into());
            }
            if let Some(h) = &self.download_hash {
                obj.insert("downloadHash".into(), h.to_sri().into());
            }
            if let Some(size) = self.download_size.filter(|&s| s != 0) {
                obj.insert("downloadSize".into(), size.into());
            }
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{PublicKeys, SecretKey};

    /// Written by Nix 2.8.0 (`nix copy --to file://…` of TV3, signed by a test key).
    const NIX28_NARINFO: &str = "StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt
URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz
Compression: xz
FileHash: sha256:17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a
FileSize: 128
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Sig: k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA==
CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
";
    const K1_PUBLIC: &str = "k1:tQ2agrYu5jGEHo97GJnOrRgw1QWeBAwEwO2NZgdhv9c=";

    fn store() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn parses_and_reprints_nix28_output() {
        let n = NarInfo::parse(&store(), NIX28_NARINFO.as_bytes()).unwrap();
        assert_eq!(
            n.info.path.base_name(),
            "6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"
        );
        assert_eq!(n.info.nar_size, 120);
        assert_eq!(n.file_size, Some(128));
        assert_eq!(n.compression.as_deref(), Some("xz"));
        assert!(n.info.references.is_empty());
        assert!(n.info.deriver.is_none());
        assert_eq!(n.to_text(&store()).unwrap(), NIX28_NARINFO);
        let keys = PublicKeys::parse_setting(K1_PUBLIC).unwrap();
        assert_eq!(n.info.check_signatures(&store(), &keys), 1);
        assert!(n.info.is_content_addressed(&store()));
    }

    #[test]
    fn defaults_and_optional_keys() {
        let text = "StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt
URL: nar/x.nar
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt  00000000000000000000000000000000-a
Deriver: 00000000000000000000000000000000-a.drv
System: x86_64-linux
StoreDir: /nix/store
X-Unknown: whatever: with colons
Sig: b:AAAA
Sig: a:AAAA
";
        let n = NarInfo::parse_str(&store(), text).unwrap();
        assert_eq!(n.compression_or_default(), "bzip2");
        assert_eq!(n.compression.as_deref(), Some("bzip2"));
        assert_eq!(n.file_hash, None);
        assert_eq!(n.file_size, None);
        assert_eq!(n.info.references.len(), 2);
        assert_eq!(
            n.info.deriver.as_ref().unwrap().base_name(),
            "00000000000000000000000000000000-a.drv"
        );
        assert_eq!(n.system.as_deref(), Some("x86_64-linux"));
        assert_eq!(n.info.sigs.len(), 2);
        let printed = n.to_text(&store()).unwrap();
        assert!(printed.contains("Compression: bzip2\nNarHash"), "{printed}");
        assert!(printed.contains(
            "References: 00000000000000000000000000000000-a 6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt\n"
        ));
        assert!(printed.contains("System: x86_64-linux\nSig: a:AAAA\nSig: b:AAAA\n"));
        assert_eq!(NarInfo::parse_str(&store(), &printed).unwrap(), n);

        let unknown = text.replace(
            "Deriver: 00000000000000000000000000000000-a.drv",
            "Deriver: unknown-deriver",
        );
        assert_eq!(
            NarInfo::parse_str(&store(), &unknown).unwrap().info.deriver,
            None
        );
        let empty_ca = text.replace("System: x86_64-linux", "CA: ");
        assert_eq!(
            NarInfo::parse_str(&store(), &empty_ca).unwrap().info.ca,
            None
        );
        let bare_colon = text.replace("System: x86_64-linux", "Compression:");
        assert_eq!(
            NarInfo::parse_str(&store(), &bare_colon)
                .unwrap()
                .compression_or_default(),
            "bzip2"
        );
    }

    #[test]
    fn path_info_conversion() {
        let n = NarInfo::parse_str(&store(), NIX28_NARINFO).unwrap();
        let info = n.clone().into_path_info();
        let mut back = NarInfo::from_path_info(info.clone(), n.url.clone());
        assert_eq!(back.info, info);
        back.compression = Some("xz".into());
        back.file_hash = n.file_hash;
        back.file_size = n.file_size;
        assert_eq!(back, n);
    }

    fn err(text: &str) -> NarInfoError {
        NarInfo::parse(&store(), text.as_bytes()).unwrap_err()
    }

    #[test]
    fn refuses_bad_input_with_line_and_key() {
        let good = NIX28_NARINFO;
        let replace = |from: &str, to: &str| {
            assert!(good.contains(from), "{from}");
            err(&good.replacen(from, to, 1))
        };
        assert_eq!(
            err(&good[..good.len() - 1]),
            NarInfoError::MissingNewline { line: 10 }
        );
        assert_eq!(err(&good[..40]), NarInfoError::MissingNewline { line: 1 });
        assert_eq!(
            replace("Compression: xz\n", "Compression: xz\n\n"),
            NarInfoError::MissingColon { line: 4 }
        );
        assert_eq!(
            replace("Compression: xz", "Compression xz"),
            NarInfoError::MissingColon { line: 3 }
        );
        assert_eq!(
            replace("Compression: xz", "Compression:xz"),
            NarInfoError::MissingSpace {
                line: 3,
                key: "Compression".into()
            }
        );
        assert_eq!(
            replace("NarSize: 120\n", "NarSize: 120\nNarSize: 121\n"),
            NarInfoError::DuplicateKey {
                line: 8,
                key: "NarSize"
            }
        );
        assert_eq!(
            replace("References: \n", "References: \nReferences: \n"),
            NarInfoError::DuplicateKey {
                line: 9,
                key: "References"
            }
        );
        assert!(matches!(
            replace("CA: fixed", "CA: fixed:r:sha256:x\nCA: fixed"),
            NarInfoError::BadCa { line: 10, .. }
        ));
        assert_eq!(
            replace("CA: fixed", "CA: \nCA: fixed"),
            NarInfoError::DuplicateKey {
                line: 11,
                key: "CA"
            }
        );
        assert!(matches!(
            replace("NarHash: sha256:04z", "NarHash: sha256:z4z"),
            NarInfoError::BadHash {
                line: 6,
                key: "NarHash",
                ..
            }
        ));
        assert!(matches!(
            replace(
                "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
                "NarHash: 04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
            ),
            NarInfoError::BadHash { line: 6, .. }
        ));
        assert!(matches!(
            replace(
                "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
                "NarHash: sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm"
            ),
            NarInfoError::NarHashNotSha256 { line: 6, .. }
        ));
        assert!(matches!(
            replace("FileHash: sha256:", "FileHash: md6:"),
            NarInfoError::BadHash {
                line: 4,
                key: "FileHash",
                ..
            }
        ));
        assert!(matches!(
            replace("StorePath: /nix/store/", "StorePath: /gnu/store/"),
            NarInfoError::BadPath {
                line: 1,
                key: "StorePath",
                ..
            }
        ));
        assert!(matches!(
            replace(
                "References: ",
                "References: /nix/store/00000000000000000000000000000000-a"
            ),
            NarInfoError::BadPath {
                line: 8,
                key: "References",
                ..
            }
        ));
        assert!(matches!(
            replace("References: \n", "References: \nDeriver: \n"),
            NarInfoError::BadPath {
                line: 9,
                key: "Deriver",
                ..
            }
        ));
        for bad_size in ["-1", "+1", "1e3", "", " 1", "18446744073709551616", "0x10"] {
            assert!(
                matches!(
                    replace("NarSize: 120", &format!("NarSize: {bad_size}")),
                    NarInfoError::BadNumber {
                        line: 7,
                        key: "NarSize",
                        ..
                    } | NarInfoError::MissingSpace { line: 7, .. }
                ),
                "{bad_size}"
            );
        }
        assert!(matches!(
            replace("FileSize: 128", "FileSize: big"),
            NarInfoError::BadNumber {
                line: 5,
                key: "FileSize",
                ..
            }
        ));
        assert!(matches!(
            replace("Sig: k1:", "Sig: k1:***"),
            NarInfoError::BadSignature { line: 9, .. }
        ));
        assert!(matches!(
            replace("Sig: k1:", "Sig: :"),
            NarInfoError::BadSignature { line: 9, .. }
        ));
        assert_eq!(
            replace("NarSize: 120", "NarSize: 0"),
            NarInfoError::ZeroNarSize
        );
        assert_eq!(
            replace("NarSize: 120\n", ""),
            NarInfoError::MissingKey("NarSize")
        );
        assert_eq!(
            replace(
                "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n",
                ""
            ),
            NarInfoError::MissingKey("NarHash")
        );
        assert_eq!(
            replace(
                "StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt\n",
                ""
            ),
            NarInfoError::MissingKey("StorePath")
        );
        assert_eq!(
            replace(
                "URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz",
                "URL: "
            ),
            NarInfoError::MissingKey("URL")
        );
        assert_eq!(err(""), NarInfoError::MissingKey("StorePath"));
    }

    #[test]
    fn refuses_bad_utf8_and_huge_input() {
        let mut bytes = NIX28_NARINFO.as_bytes().to_vec();
        let at = NIX28_NARINFO.find("Compression").unwrap();
        bytes[at + 14] = 0xff;
        assert_eq!(
            NarInfo::parse(&store(), &bytes),
            Err(NarInfoError::NotUtf8 { line: 3 })
        );
        let huge = vec![b'a'; MAX_NARINFO_LEN + 1];
        assert!(matches!(
            NarInfo::parse(&store(), &huge),
            Err(NarInfoError::TooLarge { .. })
        ));
        let huge_text = format!("{NIX28_NARINFO}X: {}\n", "y".repeat(MAX_NARINFO_LEN));
        assert!(matches!(
            NarInfo::parse_str(&store(), &huge_text),
            Err(NarInfoError::TooLarge { .. })
        ));
        // Non-ASCII across the end of a hash part is an error, not a panic.
        let straddle = NIX28_NARINFO.replace(
            "References: ",
            &format!("References: {}\u{e9}-x", "0".repeat(31)),
        );
        assert!(matches!(
            NarInfo::parse_str(&store(), &straddle),
            Err(NarInfoError::BadPath { line: 8, .. })
        ));
    }

    #[test]
    fn refuses_to_print_what_would_not_parse() {
        let n = NarInfo::parse_str(&store(), NIX28_NARINFO).unwrap();
        let mut bad = n.clone();
        bad.url = "a\nStorePath: /nix/store/x".into();
        assert!(matches!(
            bad.to_text(&store()),
            Err(NarInfoError::Unprintable { key: "URL", .. })
        ));
        let mut bad = n.clone();
        bad.url.clear();
        assert_eq!(bad.to_text(&store()), Err(NarInfoError::MissingKey("URL")));
        let mut bad = n.clone();
        bad.info.sigs.insert("x:AAAA\nCA: text:sha256:x".into());
        assert!(matches!(
            bad.to_text(&store()),
            Err(NarInfoError::Unprintable { key: "Sig", .. })
        ));
        let mut bad = n.clone();
        bad.info.sigs.insert("not a sig".into());
        assert!(matches!(
            bad.to_text(&store()),
            Err(NarInfoError::Unprintable { key: "Sig", .. })
        ));
        let mut bad = n.clone();
        bad.info.nar_size = 0;
        assert_eq!(bad.to_text(&store()), Err(NarInfoError::ZeroNarSize));
        let mut bad = n.clone();
        bad.info.nar_hash = Hash::compute(HashAlgo::Sha1, b"x");
        assert!(bad.to_text(&store()).is_err());
        let mut bad = n.clone();
        bad.system = Some("x\ny".into());
        assert!(bad.to_text(&store()).is_err());
        let mut bad = n;
        bad.compression = Some("xz\n".into());
        assert!(bad.to_text(&store()).is_err());
    }

    #[test]
    fn nix28_json_of_a_narinfo() {
        // Printed by Nix 2.8.0: `nix path-info --json [-S] --store file://…` of that narinfo.
        const WITH_CLOSURE: &str = r#"{"path":"/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt","narHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","narSize":120,"references":[],"ca":"fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw","closureSize":120,"signatures":["k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA=="],"url":"nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz","downloadHash":"sha256-iuB/PvOJ49iPk94QbOnGpwX4ZnuKK2xYjiD1Sf837Z0=","downloadSize":128,"closureDownloadSize":128}"#;
        const PLAIN: &str = r#"{"path":"/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt","narHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","narSize":120,"references":[],"ca":"fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw","signatures":["k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA=="],"url":"nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz","downloadHash":"sha256-iuB/PvOJ49iPk94QbOnGpwX4ZnuKK2xYjiD1Sf837Z0=","downloadSize":128}"#;
        let n = NarInfo::parse_str(&store(), NIX28_NARINFO).unwrap();
        assert_eq!(n.to_nix28_json(&store(), Some((120, 128))), WITH_CLOSURE);
        assert_eq!(n.to_nix28_json(&store(), None), PLAIN);
        let back = NarInfoJson::parse(WITH_CLOSURE, &store()).unwrap();
        assert_eq!(back.path_info.closure_size, Some(120));
        let mut expected = n.clone();
        expected.compression = None;
        assert_eq!(back.into_narinfo(None).unwrap(), expected);
    }

    #[test]
    fn narinfo_json_round_trip_and_errors() {
        let mut n = NarInfo::parse_str(&store(), NIX28_NARINFO).unwrap();
        n.system = None;
        for format in [
            PathInfoJsonFormat::V1,
            PathInfoJsonFormat::V2,
            PathInfoJsonFormat::V3,
        ] {
            let json = NarInfoJson::from_narinfo(&n, &store(), format, true);
            let text = json.to_value(true).to_string();
            let back = NarInfoJson::parse(&text, &store()).unwrap();
            assert_eq!(back, json);
            assert_eq!(back.into_narinfo(None).unwrap(), n);
        }
        let base =
            NarInfoJson::from_narinfo(&n, &store(), PathInfoJsonFormat::V2, true).to_value(true);
        let with = |k: &str, v: Value| {
            let mut o = base.clone();
            o[k] = v;
            NarInfoJson::from_value(&o, &store())
        };
        assert!(matches!(
            with("url", 1.into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("compression", true.into()),
            Err(JsonFormatError::WrongType { .. })
        ));
        assert!(matches!(
            with("downloadHash", "sha256:abc".into()),
            Err(JsonFormatError::NotSri { .. })
        ));
        assert!(matches!(
            with("downloadSize", "1".into()),
            Err(JsonFormatError::WrongType { .. })
        ));
    }

    #[test]
    fn signing_a_narinfo_path() {
        let mut n = NarInfo::parse_str(&store(), NIX28_NARINFO).unwrap();
        n.info.sigs.clear();
        let sk = SecretKey::from_seed("cache-1", &[42; 32]).unwrap();
        n.info.sign(&store(), &sk).unwrap();
        let text = n.to_text(&store()).unwrap();
        let back = NarInfo::parse_str(&store(), &text).unwrap();
        let keys = PublicKeys::parse_entries([sk.public_key().to_string().as_str()]).unwrap();
        assert_eq!(back.info.check_signatures(&store(), &keys), 1);
    }

    fn arb_base_name() -> impl proptest::strategy::Strategy<Value = StorePath> {
        use proptest::strategy::Strategy;
        (
            "[0-9a-df-np-sv-z]{32}",
            "[a-zA-Z0-9+_?=][a-zA-Z0-9+._?=-]{0,40}",
        )
            .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-{n}")).unwrap())
    }

    proptest::proptest! {
        #[test]
        fn print_then_parse(
            path in arb_base_name(),
            refs in proptest::collection::btree_set(arb_base_name(), 0..5),
            deriver in proptest::option::of(arb_base_name()),
            nar in proptest::array::uniform32(proptest::num::u8::ANY),
            file in proptest::option::of(proptest::array::uniform32(proptest::num::u8::ANY)),
            nar_size in 1u64..,
            file_size in proptest::option::of(proptest::num::u64::ANY),
            url in "[!-~][ -~]{0,60}",
            compression in proptest::option::of("[a-z0-9]{1,8}"),
            system in proptest::option::of("[ -~]{1,20}"),
            sig_names in proptest::collection::btree_set("[a-z0-9.-]{1,12}", 0..3),
            ca_hash in proptest::option::of(proptest::array::uniform32(proptest::num::u8::ANY)),
        ) {
            let mut info = ValidPathInfo::new(path, Hash::sha256(nar));
            info.references = refs;
            info.deriver = deriver;
            info.nar_size = nar_size;
            info.sigs = sig_names.iter().map(|n| format!("{n}:{}", "A".repeat(86) + "==")).collect();
            info.ca = ca_hash.map(|h| ContentAddress {
                method: crate::content_address::ContentAddressMethod::Fixed(
                    crate::content_address::FileIngestionMethod::Recursive),
                hash: Hash::sha256(h),
            });
            let n = NarInfo {
                info,
                url,
                compression: Some(compression.unwrap_or_else(|| DEFAULT_COMPRESSION.to_owned())),
                file_hash: file.map(Hash::sha256),
                file_size,
                system,
            };
            let text = n.to_text(&store()).unwrap();
            let back = NarInfo::parse_str(&store(), &text).unwrap();
            proptest::prop_assert_eq!(&back, &n);
            proptest::prop_assert_eq!(back.to_text(&store()).unwrap(), text);
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = NarInfo::parse(&store(), &bytes);
        }

        #[test]
        fn parser_never_panics_on_near_valid_text(cut in 0usize..NIX28_NARINFO.len(), junk in "\\PC{0,20}") {
            let mut text = NIX28_NARINFO.to_owned();
            text.insert_str(cut, &junk);
            let _ = NarInfo::parse_str(&store(), &text);
            let _ = NarInfo::parse_str(&store(), &NIX28_NARINFO[..cut]);
        }
    }
}
