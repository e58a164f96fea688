//! Content addresses: the `ca` field of path info, narinfo `CA:` lines, and the method strings
//! of AddToStore.
//!
//! Forms: `text:sha256:<nix32>`, `fixed:<algo>:<nix32>` (flat), `fixed:r:<algo>:<nix32>`
//! (NAR), `fixed:git:<algo>:<nix32>` (git, current Nix only). Method-only strings drop the
//! digest: `text:sha256`, `fixed:r:sha256`, ...

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};

/// How file system content becomes the bytes that are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileIngestionMethod {
    /// The single regular file's contents.
    Flat,
    /// The NAR serialisation of the tree.
    Recursive,
    /// Git's tree hashing (experimental in current Nix; parsed, never produced by ward).
    Git,
}

impl FileIngestionMethod {
    /// The prefix this method puts before the algorithm: `""`, `"r:"` or `"git:"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            FileIngestionMethod::Flat => "",
            FileIngestionMethod::Recursive => "r:",
            FileIngestionMethod::Git => "git:",
        }
    }
}

/// The kind of content address, without the digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContentAddressMethod {
    /// A text object (`.drv` files, `builtins.toFile`): flat SHA-256 with references allowed.
    Text,
    /// Fixed content ingested with the given method.
    Fixed(FileIngestionMethod),
}

impl ContentAddressMethod {
    /// Renders the method with an algorithm, as AddToStore sends it (`fixed:r:sha256`).
    pub fn render_with_algo(self, algo: HashAlgo) -> String {
        match self {
            ContentAddressMethod::Text => format!("text:{algo}"),
            ContentAddressMethod::Fixed(m) => format!("fixed:{}{algo}", m.prefix()),
        }
    }

    /// Parses a method string with its algorithm (`text:sha256`, `fixed:r:sha1`, ...).
    pub fn parse_with_algo(s: &str) -> Result<(ContentAddressMethod, HashAlgo), CaError> {
        let (method, rest) = split_method(s)?;
        let algo = HashAlgo::from_name(rest).map_err(|e| CaError::Hash(s.to_owned(), e))?;
        if method == ContentAddressMethod::Text && algo != HashAlgo::Sha256 {
            return Err(CaError::TextNotSha256(s.to_owned()));
        }
        Ok((method, algo))
    }
}

/// Splits the method prefix off `s`, returning the rest (`algo` or `algo:digest`).
fn split_method(s: &str) -> Result<(ContentAddressMethod, &str), CaError> {
    if let Some(rest) = s.strip_prefix("text:") {
        return Ok((ContentAddressMethod::Text, rest));
    }
    if let Some(rest) = s.strip_prefix("fixed:") {
        if let Some(rest) = rest.strip_prefix("r:") {
            return Ok((
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                rest,
            ));
        }
        if let Some(rest) = rest.strip_prefix("git:") {
            return Ok((ContentAddressMethod::Fixed(FileIngestionMethod::Git), rest));
        }
        return Ok((ContentAddressMethod::Fixed(FileIngestionMethod::Flat), rest));
    }
    Err(CaError::UnknownMethod(s.to_owned()))
}

/// Why a content address was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaError {
    /// Neither `text:` nor `fixed:`.
    #[error("content address '{0}' has an unknown method prefix (expected 'text:' or 'fixed:')")]
    UnknownMethod(String),
    /// Text content addresses use SHA-256 only.
    #[error("content address '{0}': text hashing supports only sha256")]
    TextNotSha256(String),
    /// No digest after the algorithm.
    #[error("content address '{0}' lacks a hash")]
    MissingHash(String),
    /// The digest did not parse.
    #[error("content address '{0}': {1}")]
    Hash(String, HashError),
}

/// A content address: method plus digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentAddress {
    /// How the content was hashed.
    pub method: ContentAddressMethod,
    /// The digest.
    pub hash: Hash,
}

impl ContentAddress {
    /// Parses `text:sha256:…` / `fixed:[r:|git:]algo:…`.
    pub fn parse(s: &str) -> Result<ContentAddress, CaError> {
        let (method, rest) = split_method(s)?;
        let (algo, digest) = rest
            .split_once(':')
            .ok_or_else(|| CaError::MissingHash(s.to_owned()))?;
        let algo = HashAlgo::from_name(algo).map_err(|e| CaError::Hash(s.to_owned(), e))?;
        if method == ContentAddressMethod::Text && algo != HashAlgo::Sha256 {
            return Err(CaError::TextNotSha256(s.to_owned()));
        }
        let hash = Hash::parse_bare(digest, algo).map_err(|e| CaError::Hash(s.to_owned(), e))?;
        Ok(ContentAddress { method, hash })
    }

    /// Parses an optional content address: the empty string is none.
    pub fn parse_opt(s: &str) -> Result<Option<ContentAddress>, CaError> {
        if s.is_empty() {
            Ok(None)
        } else {
            ContentAddress::parse(s).map(Some)
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.method.render_with_algo(self.hash.algo()),
            self.hash.to_nix32()
        )
    }
}

impl FromStr for ContentAddress {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ContentAddress::parse(s)
    }
}

impl Serialize for ContentAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ContentAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ContentAddress::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_db_values() {
        for s in [
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            "fixed:r:sha1:irpi95vran56h61r76jba9bjgwc7bqkc",
            "text:sha256:0m3jdi42fq9fgggf36i4w7k5xhwdv6chz9kjxqbhn3153hrvnfbx",
        ] {
            let ca = ContentAddress::parse(s).unwrap();
            assert_eq!(ca.to_string(), s);
        }
        let ca = ContentAddress::parse(
            "fixed:r:sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
        )
        .unwrap();
        assert_eq!(
            ca.to_string(),
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
    }

    #[test]
    fn methods() {
        for (s, m, a) in [
            ("text:sha256", ContentAddressMethod::Text, HashAlgo::Sha256),
            (
                "fixed:sha1",
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                HashAlgo::Sha1,
            ),
            (
                "fixed:r:sha512",
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                HashAlgo::Sha512,
            ),
            (
                "fixed:git:sha1",
                ContentAddressMethod::Fixed(FileIngestionMethod::Git),
                HashAlgo::Sha1,
            ),
        ] {
            assert_eq!(ContentAddressMethod::parse_with_algo(s).unwrap(), (m, a));
            assert_eq!(m.render_with_algo(a), s);
        }
    }

    #[test]
    fn refuses_bad() {
        for bad in [
            "",
            "foo:sha256:abc",
            "text:sha1",
            "text:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm",
            "fixed:sha256",
            "fixed:r:sha256:tooshort",
            "fixed:r:sha257:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
        ] {
            assert!(ContentAddress::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(ContentAddressMethod::parse_with_algo("text:md5").is_err());
        assert_eq!(ContentAddress::parse_opt("").unwrap(), None);
    }
}
