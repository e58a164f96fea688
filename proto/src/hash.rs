//! Hashes as Nix names, computes, prints and parses them.
//!
//! Nix writes a digest in base16, nix32, base64 or SRI form depending on the place (the wire
//! uses bare base16, the DB `sha256:` + base16, narinfo and CA strings `sha256:` + nix32).
//! Parsing accepts any form; without an SRI marker the encoding is chosen by length.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use digest::Digest as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::nix32;

/// The hash algorithms Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    /// MD5 (16 bytes); only for fixed-output derivations of old fetchers.
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes): NAR hashes, store path fingerprints.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
    /// BLAKE3 (32 bytes); experimental in current Nix, never on the 2.8 wire.
    Blake3,
}

impl HashAlgo {
    /// Every algorithm, in Nix's order.
    pub const ALL: [HashAlgo; 5] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
        HashAlgo::Blake3,
    ];

    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 | HashAlgo::Blake3 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix prints (`sha256`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
            HashAlgo::Blake3 => "blake3",
        }
    }

    /// Parses an algorithm name.
    pub fn from_name(name: &str) -> Result<HashAlgo, HashError> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| HashError::UnknownAlgo(name.to_owned()))
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlgo::from_name(s)
    }
}

/// How a digest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashEncoding {
    /// Lowercase hexadecimal.
    Base16,
    /// Nix's base-32.
    Nix32,
    /// Standard base64 with padding.
    Base64,
}

/// Why a hash string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    /// The algorithm name is not one Nix knows.
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgo(String),
    /// The digest's length fits no encoding of the algorithm.
    #[error("hash '{hash}' has wrong length for hash algorithm '{algo}'")]
    WrongLength {
        /// The text given.
        hash: String,
        /// The algorithm it was read as.
        algo: HashAlgo,
    },
    /// The digest has characters outside its encoding.
    #[error("invalid {encoding} encoding in hash '{hash}'")]
    BadEncoding {
        /// The text given.
        hash: String,
        /// Which encoding was tried.
        encoding: &'static str,
    },
    /// No algorithm was given and none could be inferred.
    #[error("hash '{0}' does not include a type")]
    MissingAlgo(String),
    /// The algorithm was not the one required here.
    #[error("hash '{hash}' should have type '{expected}'")]
    WrongAlgo {
        /// The text given.
        hash: String,
        /// The algorithm required.
        expected: HashAlgo,
    },
    /// Raw digest bytes of the wrong size.
    #[error("digest of {got} bytes does not fit hash algorithm '{algo}'")]
    WrongDigestSize {
        /// Bytes given.
        got: usize,
        /// The algorithm.
        algo: HashAlgo,
    },
}

/// A digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl Hash {
    /// Wraps raw digest bytes.
    pub fn from_digest(algo: HashAlgo, digest: &[u8]) -> Result<Hash, HashError> {
        if digest.len() != algo.size() {
            return Err(HashError::WrongDigestSize {
                got: digest.len(),
                algo,
            });
        }
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Hash { algo, bytes })
    }

    /// A SHA-256 hash from its 32 digest bytes.
    pub fn sha256(digest: [u8; 32]) -> Hash {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&digest);
        Hash {
            algo: HashAlgo::Sha256,
            bytes,
        }
    }

    /// Hashes `data` in one go.
    pub fn compute(algo: HashAlgo, data: &[u8]) -> Hash {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The digest bytes.
    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    /// The digest in the given encoding, without a prefix.
    pub fn encode(&self, encoding: HashEncoding) -> String {
        match encoding {
            HashEncoding::Base16 => base16(self.digest()),
            HashEncoding::Nix32 => nix32::encode(self.digest()),
            HashEncoding::Base64 => BASE64.encode(self.digest()),
        }
    }

    /// Lowercase base16, no prefix (the wire form of narHash).
    pub fn to_base16(&self) -> String {
        self.encode(HashEncoding::Base16)
    }

    /// nix32, no prefix.
    pub fn to_nix32(&self) -> String {
        self.encode(HashEncoding::Nix32)
    }

    /// `algo:` + base16 (the DB `hash` column).
    pub fn to_prefixed_base16(&self) -> String {
        format!("{}:{}", self.algo, self.to_base16())
    }

    /// `algo:` + nix32 (narinfo, CA strings, signature fingerprints).
    pub fn to_prefixed_nix32(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix32())
    }

    /// SRI form, `algo-base64`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.encode(HashEncoding::Base64))
    }

    /// Parses a digest without prefix for a known algorithm, choosing the encoding by length.
    pub fn parse_bare(s: &str, algo: HashAlgo) -> Result<Hash, HashError> {
        let size = algo.size();
        let digest = if s.len() == size * 2 {
            hex::decode(s).map_err(|_| HashError::BadEncoding {
                hash: s.to_owned(),
                encoding: "base16",
            })?
        } else if s.len() == nix32::encoded_len(size) {
            nix32::decode_exact(s, size).map_err(|_| HashError::BadEncoding {
                hash: s.to_owned(),
                encoding: "nix32",
            })?
        } else if s.len() == size.div_ceil(3) * 4 {
            BASE64.decode(s).map_err(|_| HashError::BadEncoding {
                hash: s.to_owned(),
                encoding: "base64",
            })?
        } else {
            return Err(HashError::WrongLength {
                hash: s.to_owned(),
                algo,
            });
        };
        Hash::from_digest(algo, &digest).map_err(|_| HashError::WrongLength {
            hash: s.to_owned(),
            algo,
        })
    }

    /// Parses SRI (`sha256-…`) or prefixed (`sha256:…`) text.
    pub fn parse_any_prefixed(s: &str) -> Result<Hash, HashError> {
        if let Some((algo, rest)) = s.split_once(':') {
            return Hash::parse_bare(rest, HashAlgo::from_name(algo)?);
        }
        if let Some((algo, rest)) = s.split_once('-') {
            if let Ok(algo) = HashAlgo::from_name(algo) {
                return Hash::parse_sri_digest(s, rest, algo);
            }
        }
        Err(HashError::MissingAlgo(s.to_owned()))
    }

    fn parse_sri_digest(whole: &str, b64: &str, algo: HashAlgo) -> Result<Hash, HashError> {
        let digest = BASE64.decode(b64).map_err(|_| HashError::BadEncoding {
            hash: whole.to_owned(),
            encoding: "base64",
        })?;
        Hash::from_digest(algo, &digest).map_err(|_| HashError::WrongLength {
            hash: whole.to_owned(),
            algo,
        })
    }

    /// Nix's `parseAny`: prefixed, SRI, or bare when `algo` is given. A prefix that names
    /// another algorithm than `algo` is refused.
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<Hash, HashError> {
        let has_prefix = s.contains(':')
            || s.split_once('-')
                .is_some_and(|(a, _)| HashAlgo::from_name(a).is_ok());
        let hash = match (has_prefix, algo) {
            (true, _) => Hash::parse_any_prefixed(s)?,
            (false, Some(algo)) => Hash::parse_bare(s, algo)?,
            (false, None) => return Err(HashError::MissingAlgo(s.to_owned())),
        };
        match algo {
            Some(expected) if expected != hash.algo => Err(HashError::WrongAlgo {
                hash: s.to_owned(),
                expected,
            }),
            _ => Ok(hash),
        }
    }

    /// Folds the digest into `size` bytes by XOR, as Nix does for store path hashes.
    pub fn fold(&self, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        for (i, b) in self.digest().iter().enumerate() {
            out[i % size] ^= b;
        }
        out
    }
}

/// Lower-case hexadecimal, as Nix prints base-16 hashes (a plain loop: QueryPathInfo prints
/// one per reply).
fn base16(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_prefixed_base16())
    }
}

/// Prints the SRI form, as current Nix does by default.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_sri())
    }
}

impl FromStr for Hash {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::parse_any(s, None)
    }
}

/// Serialised as `algo:base16` (IPC and JSON of ward's own).
impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_prefixed_base16())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::parse_any_prefixed(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
    /// BLAKE3 state.
    Blake3(Box<blake3::Hasher>),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algo())
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            HashAlgo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Md5(_) => HashAlgo::Md5,
            Hasher::Sha1(_) => HashAlgo::Sha1,
            Hasher::Sha256(_) => HashAlgo::Sha256,
            Hasher::Sha512(_) => HashAlgo::Sha512,
            Hasher::Blake3(_) => HashAlgo::Blake3,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The final hash.
    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let digest: Vec<u8> = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
            Hasher::Blake3(h) => h.finalize().as_bytes().to_vec(),
        };
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(&digest);
        Hash { algo, bytes }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA256: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn base16_matches_the_hex_crate() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(base16(&all), hex::encode(&all));
        assert_eq!(base16(&[]), "");
    }

    #[test]
    fn computes_and_prints_every_form() {
        let h = Hash::compute(HashAlgo::Sha256, b"hello\n");
        assert_eq!(h.to_base16(), HELLO_SHA256);
        assert_eq!(
            h.to_nix32(),
            "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM="
        );
        assert_eq!(h.to_prefixed_base16(), format!("sha256:{HELLO_SHA256}"));
        let sha1 = Hash::compute(HashAlgo::Sha1, b"hello\n");
        assert_eq!(sha1.to_base16(), "f572d396fae9206628714fb2ce00f72e94f2258f");
        assert_eq!(sha1.to_nix32(), "iwjz551fyw0cxcjgf4l6c879zabd6wpm");
        assert_eq!(
            Hash::compute(HashAlgo::Md5, b"").to_base16(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(Hash::compute(HashAlgo::Sha512, b"").digest().len(), 64);
    }

    #[test]
    fn parses_every_form() {
        let h = Hash::compute(HashAlgo::Sha256, b"hello\n");
        for text in [
            HELLO_SHA256.to_owned(),
            HELLO_SHA256.to_uppercase(),
            h.to_nix32(),
            h.encode(HashEncoding::Base64),
        ] {
            assert_eq!(
                Hash::parse_any(&text, Some(HashAlgo::Sha256)).unwrap(),
                h,
                "{text}"
            );
        }
        for text in [h.to_prefixed_base16(), h.to_prefixed_nix32(), h.to_sri()] {
            assert_eq!(Hash::parse_any(&text, None).unwrap(), h, "{text}");
            assert_eq!(text.parse::<Hash>().unwrap(), h);
        }
        for algo in HashAlgo::ALL {
            let h = Hash::compute(algo, b"abc");
            for enc in [
                HashEncoding::Base16,
                HashEncoding::Nix32,
                HashEncoding::Base64,
            ] {
                assert_eq!(Hash::parse_bare(&h.encode(enc), algo).unwrap(), h);
            }
            assert_eq!(Hash::parse_any(&h.to_sri(), None).unwrap(), h);
        }
    }

    #[test]
    fn refuses_bad_hashes() {
        assert!(matches!(
            Hash::parse_any("abc", None),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_any("foo:abc", None),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_any("sha256:abc", None),
            Err(HashError::WrongLength { .. })
        ));
        let nonhex = "g".repeat(64);
        assert!(matches!(
            Hash::parse_bare(&nonhex, HashAlgo::Sha256),
            Err(HashError::BadEncoding { .. })
        ));
        let sha1 = Hash::compute(HashAlgo::Sha1, b"x").to_prefixed_base16();
        assert!(matches!(
            Hash::parse_any(&sha1, Some(HashAlgo::Sha256)),
            Err(HashError::WrongAlgo { .. })
        ));
        assert!(Hash::parse_any("sha256-AAAA", None).is_err());
        assert!(Hash::from_digest(HashAlgo::Sha256, &[0; 31]).is_err());
    }

    #[test]
    fn serde_round_trip() {
        let h = Hash::compute(HashAlgo::Sha512, b"x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
    }
}
