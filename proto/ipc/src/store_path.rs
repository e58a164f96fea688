//! Store path base names (`<32 nix32 chars>-<name>`) and Nix's name rules.
//!
//! This small part of the store-path logic lives here, beside the IPC messages, because the
//! broker re-checks every store path a build request names and must not depend on ward's
//! parsers of client data. Computing paths (which needs hashing) is in `ward_proto::store_path`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::nix32;

/// Characters in the hash part of a store path.
pub const HASH_PART_LEN: usize = 32;
/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store path or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// The base name is shorter than a hash part plus `-` plus one character.
    #[error("store path '{0}' is too short")]
    TooShort(String),
    /// The hash part has a character outside nix32.
    #[error("store path '{0}' has an invalid hash part")]
    BadHashPart(String),
    /// No `-` after the hash part.
    #[error("store path '{0}' has no '-' after its hash part")]
    MissingDash(String),
    /// The name breaks Nix's name rules.
    #[error("store path name '{name}' is invalid: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A full path that is not directly inside the store directory.
    #[error("path '{path}' is not in the Nix store '{store_dir}'")]
    NotInStore {
        /// The path given.
        path: String,
        /// The store directory it was checked against.
        store_dir: String,
    },
    /// A store directory that is not an absolute, clean path.
    #[error(
        "store directory '{0}' must be an absolute path without '.', '..', '//' or a trailing '/'"
    )]
    BadStoreDir(String),
    /// Text references may not include the path itself.
    #[error("text object '{0}' cannot refer to itself")]
    SelfReferenceInText(String),
    /// Fixed-output paths other than NAR+SHA-256 cannot have references.
    #[error("fixed-output path '{0}' of this kind cannot have references")]
    ReferencesNotAllowed(String),
    /// Text content addresses must use SHA-256.
    #[error("text content address of '{0}' must use sha256")]
    TextNeedsSha256(String),
    /// Git hashing is experimental in current Nix and not supported by ward.
    #[error("git content addressing of '{0}' is not supported")]
    GitUnsupported(String),
}

/// Checks a store path name against Nix's rules (2.21+ strictness: `.`, `..`, `.-…`, `..-…`
/// are refused too).
pub fn check_name(name: &str) -> Result<(), StorePathError> {
    let bad = |reason| {
        Err(StorePathError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 211 characters");
    }
    if name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-") {
        return bad("it is '.' or '..' or starts with '.-' or '..-'");
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
    {
        return bad("it has a character outside A-Z a-z 0-9 + - . _ ? =");
    }
    Ok(())
}

/// The base name of a store object: `<hash part>-<name>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    base: Box<str>,
}

impl StorePath {
    /// Parses `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<StorePath, StorePathError> {
        if base.len() < HASH_PART_LEN + 2 {
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        if !base.is_char_boundary(HASH_PART_LEN) {
            return Err(StorePathError::BadHashPart(base.to_owned()));
        }
        let (hash, rest) = base.split_at(HASH_PART_LEN);
        if !hash.bytes().all(nix32::is_symbol) {
            return Err(StorePathError::BadHashPart(base.to_owned()));
        }
        let Some(name) = rest.strip_prefix('-') else {
            return Err(StorePathError::MissingDash(base.to_owned()));
        };
        check_name(name)?;
        Ok(StorePath { base: base.into() })
    }

    /// Builds a path from a 20-byte digest and a name.
    pub fn from_digest(digest: &[u8; 20], name: &str) -> Result<StorePath, StorePathError> {
        check_name(name)?;
        Ok(StorePath {
            base: format!("{}-{}", nix32::encode(digest), name).into(),
        })
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.base[..HASH_PART_LEN]
    }

    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.base[HASH_PART_LEN + 1..]
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        &self.base
    }

    /// True for `.drv` files.
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base)
    }
}

/// Prints the base name; use [`StoreDir::print`] for the full path.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.base)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StorePath::from_base_name(&s).map_err(serde::de::Error::custom)
    }
}
