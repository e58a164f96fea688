//! Ed25519 keys and detached signatures in Nix's `name:base64` text forms.
//!
//! * secret key: `name:` + base64 of 64 bytes, the seed followed by the public key (libsodium's
//!   layout, what `nix-store --generate-binary-cache-key` writes);
//! * public key: `name:` + base64 of 32 bytes (a `trusted-public-keys` entry);
//! * signature: `name:` + base64 of the 64-byte detached signature.
//!
//! A signature is only checked against the trusted key of the same name; an unknown name or a
//! malformed signature simply does not count, it is never an error for the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

/// Bytes in an Ed25519 seed.
pub const SEED_LEN: usize = 32;
/// Bytes in an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes in a Nix secret key (seed ‖ public key).
pub const SECRET_KEY_LEN: usize = 64;
/// Bytes in a detached Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest key or signature text accepted; real ones are about 100 bytes, so this only stops
/// an attacker from making us decode megabytes.
pub const MAX_TEXT_LEN: usize = 8192;

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// Longer than [`MAX_TEXT_LEN`].
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// Which kind of text ("signature", "public key", "secret key").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No `:`, or nothing before or after it.
    #[error("{what} '{text}' is corrupt: expected '<name>:<base64>'")]
    Corrupt {
        /// Which kind of text.
        what: &'static str,
        /// The text (redacted for secret keys).
        text: String,
    },
    /// A character outside the base64 alphabet.
    #[error("{what} named '{name}' has an invalid base64 character {ch:?}")]
    BadBase64 {
        /// Which kind of text.
        what: &'static str,
        /// The key name.
        name: String,
        /// The offending character.
        ch: char,
    },
    /// The decoded bytes have the wrong length.
    #[error("{what} named '{name}' is {got} bytes long, expected {expected}")]
    WrongLength {
        /// Which kind of text.
        what: &'static str,
        /// The key name.
        name: String,
        /// Decoded length.
        got: usize,
        /// Required length.
        expected: usize,
    },
    /// The public half of a secret key is not the one its seed yields.
    #[error("secret key named '{0}' is corrupt: its public half does not match its seed")]
    KeyMismatch(String),
    /// A name that cannot be written in the `name:base64` form.
    #[error("key name '{0}' is invalid: it must be non-empty and have no ':', whitespace or control characters")]
    BadKeyName(String),
    /// Bytes that are not UTF-8 (e.g. a corrupt key file or wire string).
    #[error("{what} is not valid utf-8")]
    NotUtf8 {
        /// Which kind of text.
        what: &'static str,
    },
    /// The OS random source failed.
    #[error("cannot read random bytes from /dev/urandom for key generation: {0}")]
    Random(String),
}

/// Decodes base64 the way Nix does: stops at the first `=`, skips newlines, tolerates missing
/// padding and leftover bits, refuses any other character outside the alphabet.
fn decode_base64_like_nix(text: &str) -> Result<Vec<u8>, char> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        if c == '=' {
            break;
        }
        if c == '\n' {
            continue;
        }
        let digit = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            _ => return Err(c),
        };
        acc = (acc << 6 | digit) & 0xfff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Checks the size cap, then UTF-8.
fn bytes_to_text<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, SignatureError> {
    if bytes.len() > MAX_TEXT_LEN {
        return Err(SignatureError::TooLong {
            what,
            len: bytes.len(),
            max: MAX_TEXT_LEN,
        });
    }
    std::str::from_utf8(bytes).map_err(|_| SignatureError::NotUtf8 { what })
}

/// Splits `name:base64` and decodes the base64 part; both parts must be non-empty.
fn split_and_decode(
    what: &'static str,
    text: &str,
    redact: bool,
) -> Result<(String, Vec<u8>), SignatureError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(SignatureError::TooLong {
            what,
            len: text.len(),
            max: MAX_TEXT_LEN,
        });
    }
    let corrupt = || SignatureError::Corrupt {
        what,
        text: if redact {
            "<redacted>".to_owned()
        } else {
            text.to_owned()
        },
    };
    let (name, data) = text.split_once(':').ok_or_else(corrupt)?;
    if name.is_empty() {
        return Err(corrupt());
    }
    let bytes = decode_base64_like_nix(data).map_err(|ch| SignatureError::BadBase64 {
        what,
        name: name.to_owned(),
        ch: if redact { '?' } else { ch },
    })?;
    if bytes.is_empty() {
        return Err(corrupt());
    }
    Ok((name.to_owned(), bytes))
}

fn check_length(
    what: &'static str,
    name: &str,
    bytes: &[u8],
    expected: usize,
) -> Result<(), SignatureError> {
    if bytes.len() != expected {
        return Err(SignatureError::WrongLength {
            what,
            name: name.to_owned(),
            got: bytes.len(),
            expected,
        });
    }
    Ok(())
}

/// Checks a name for a new key: it has to survive the `name:base64` form and the
/// whitespace-separated `trusted-public-keys` setting.
pub fn check_key_name(name: &str) -> Result<(), SignatureError> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(SignatureError::BadKeyName(name.to_owned()))
    }
}

/// A parsed signature: key name and raw signature bytes (any non-empty length; only 64-byte
/// ones can verify).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    key_name: String,
    bytes: Vec<u8>,
}

impl Signature {
    /// Parses `name:base64`.
    pub fn parse(text: &str) -> Result<Signature, SignatureError> {
        let (key_name, bytes) = split_and_decode("signature", text, false)?;
        Ok(Signature { key_name, bytes })
    }

    /// Parses `name:base64` from raw bytes (a wire string).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Signature, SignatureError> {
        Signature::parse(bytes_to_text("signature", bytes)?)
    }

    /// Builds a signature from its parts; the name must be non-empty, without `:`.
    pub fn from_parts(key_name: &str, bytes: Vec<u8>) -> Result<Signature, SignatureError> {
        if key_name.is_empty() || key_name.contains(':') || bytes.is_empty() {
            return Err(SignatureError::Corrupt {
                what: "signature",
                text: format!("{key_name}:{}", BASE64.encode(&bytes)),
            });
        }
        if key_name.len() + bytes.len() > MAX_TEXT_LEN {
            return Err(SignatureError::TooLong {
                what: "signature",
                len: key_name.len() + bytes.len(),
                max: MAX_TEXT_LEN,
            });
        }
        Ok(Signature {
            key_name: key_name.to_owned(),
            bytes,
        })
    }

    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The raw signature bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The signature bytes in standard base64 with padding.
    pub fn bytes_base64(&self) -> String {
        BASE64.encode(&self.bytes)
    }

    /// Current Nix's structured JSON form, `{"keyName": …, "sig": …}`.
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::json!({ "keyName": self.key_name, "sig": self.bytes_base64() })
    }

    /// Reads current Nix's JSON form: either the `name:base64` string or the
    /// `{"keyName", "sig"}` object.
    pub fn from_json_value(value: &serde_json::Value) -> Result<Signature, SignatureError> {
        let corrupt = || SignatureError::Corrupt {
            what: "signature",
            text: value.to_string().chars().take(200).collect(),
        };
        match value {
            serde_json::Value::String(s) => Signature::parse(s),
            serde_json::Value::Object(obj) => {
                let name = obj
                    .get("keyName")
                    .and_then(|v| v.as_str())
                    .ok_or_else(corrupt)?;
                let sig = obj
                    .get("sig")
                    .and_then(|v| v.as_str())
                    .ok_or_else(corrupt)?;
                if sig.len() > MAX_TEXT_LEN {
                    return Err(SignatureError::TooLong {
                        what: "signature",
                        len: sig.len(),
                        max: MAX_TEXT_LEN,
                    });
                }
                let bytes =
                    decode_base64_like_nix(sig).map_err(|ch| SignatureError::BadBase64 {
                        what: "signature",
                        name: name.to_owned(),
                        ch,
                    })?;
                Signature::from_parts(name, bytes)
            }
            _ => Err(corrupt()),
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, self.bytes_base64())
    }
}

impl FromStr for Signature {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signature::parse(s)
    }
}

/// A named Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    name: String,
    bytes: [u8; PUBLIC_KEY_LEN],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    /// Parses `name:base64` of 32 bytes. Like Nix, the bytes are not checked to be a curve
    /// point here; a key that is not one verifies nothing.
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        let (name, bytes) = split_and_decode("public key", text, false)?;
        check_length("public key", &name, &bytes, PUBLIC_KEY_LEN)?;
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(&bytes);
        Ok(PublicKey { name, bytes: key })
    }

    /// Parses a public key from raw bytes (e.g. a `.pub` file).
    pub fn parse_bytes(bytes: &[u8]) -> Result<PublicKey, SignatureError> {
        PublicKey::parse(bytes_to_text("public key", bytes)?)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32 key bytes.
    pub fn bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// Checks a detached signature over `data`, ignoring the signature's key name.
    fn verify_bytes(&self, data: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; SIGNATURE_LEN]>::try_from(sig) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&self.bytes) else {
            return false;
        };
        // Strict verification refuses small-order keys and non-canonical signatures, as
        // libsodium's crypto_sign_verify_detached (what Nix uses) does.
        key.verify_strict(data, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }

    /// True when `sig` was made by this key over `data` (the names must match too).
    pub fn verify(&self, data: impl AsRef<[u8]>, sig: &Signature) -> bool {
        sig.key_name == self.name && self.verify_bytes(data.as_ref(), &sig.bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

/// A named Ed25519 signing key. Its `Debug` never shows the key material.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.key.to_keypair_bytes() == other.key.to_keypair_bytes()
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// Parses `name:base64` of seed ‖ public key, and checks that the public half belongs to
    /// the seed (a mismatch would make every signature fail to verify). Error messages never
    /// include the key text.
    pub fn parse(text: &str) -> Result<SecretKey, SignatureError> {
        let (name, bytes) = split_and_decode("secret key", text, true)?;
        check_length("secret key", &name, &bytes, SECRET_KEY_LEN)?;
        let mut pair = [0u8; SECRET_KEY_LEN];
        pair.copy_from_slice(&bytes);
        let key = SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| SignatureError::KeyMismatch(name.clone()))?;
        Ok(SecretKey { name, key })
    }

    /// Parses a secret key from raw bytes (the contents of a key file).
    pub fn parse_bytes(bytes: &[u8]) -> Result<SecretKey, SignatureError> {
        SecretKey::parse(bytes_to_text("secret key", bytes)?)
    }

    /// Makes a key from a 32-byte seed.
    pub fn from_seed(name: &str, seed: &[u8; SEED_LEN]) -> Result<SecretKey, SignatureError> {
        check_key_name(name)?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// Generates a fresh key from the OS random source, like
    /// `nix-store --generate-binary-cache-key`.
    pub fn generate(name: &str) -> Result<SecretKey, SignatureError> {
        check_key_name(name)?;
        let mut seed = [0u8; SEED_LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| SignatureError::Random(e.to_string()))?;
        SecretKey::from_seed(name, &seed)
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            bytes: self.key.verifying_key().to_bytes(),
        }
    }

    /// Signs `data`, returning the parsed signature.
    pub fn sign_detached(&self, data: impl AsRef<[u8]>) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(data.as_ref()).to_bytes().to_vec(),
        }
    }

    /// Signs `data`, returning `name:base64sig` as stored in `sigs`.
    pub fn sign(&self, data: impl AsRef<[u8]>) -> String {
        self.sign_detached(data).to_string()
    }

    /// The `name:base64` text of the secret key (what goes in a key file).
    pub fn to_secret_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl FromStr for SecretKey {
    type Err = SignatureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SecretKey::parse(s)
    }
}

/// The trusted public keys, by name. As in Nix, the first key given for a name wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl PublicKeys {
    /// No trusted keys: nothing verifies.
    pub fn new() -> PublicKeys {
        PublicKeys::default()
    }

    /// Parses `trusted-public-keys` entries, one `name:base64` per item.
    pub fn parse_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<PublicKeys, SignatureError> {
        let mut keys = PublicKeys::new();
        for entry in entries {
            keys.insert(PublicKey::parse(entry)?);
        }
        Ok(keys)
    }

    /// Parses the value of the `trusted-public-keys` setting (whitespace separated).
    pub fn parse_setting(value: &str) -> Result<PublicKeys, SignatureError> {
        PublicKeys::parse_entries(value.split_whitespace())
    }

    /// Adds a key unless one of that name is already there; returns whether it was added.
    pub fn insert(&mut self, key: PublicKey) -> bool {
        match self.keys.entry(key.name.clone()) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(key);
                true
            }
        }
    }

    /// The key of that name.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys in name order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// Checks a parsed signature over `data` against the key of the same name.
    pub fn verify_signature(&self, data: impl AsRef<[u8]>, sig: &Signature) -> bool {
        self.keys
            .get(&sig.key_name)
            .is_some_and(|key| key.verify_bytes(data.as_ref(), &sig.bytes))
    }

    /// Checks a `name:base64sig` string over `data`. Unknown names and malformed signatures
    /// are simply not valid.
    pub fn verify(&self, data: impl AsRef<[u8]>, sig: &str) -> bool {
        Signature::parse(sig).is_ok_and(|sig| self.verify_signature(data, &sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // TV8 from section 6.10 of the protocol facts (made by Nix 2.8.0).
    const TV8_SECRET: &str = "test-key-1:KFx22X+N6DPlRlfnsxWyRqisAYNoSSnhGNyKQk2RVlJ84khZg9AR3YRoHamnbHlYeZSy2wlNohRB7QpwlT0ltw==";
    const TV8_PUBLIC: &str = "test-key-1:fOJIWYPQEd2EaB2pp2x5WHmUstsJTaIUQe0KcJU9Jbc=";
    const TV8_FINGERPRINT: &str = "1;/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;";
    const TV8_SIG: &str = "test-key-1:ZpwIslaumRCeZCI5i2LsG2p4nuHwSTe5N+hCLvNSi3/ARRe9WAtNJM/9+/aJGmeDPURalNX848/nIdISp5gFCA==";

    #[test]
    fn tv8_reproduced_exactly() {
        let sk = SecretKey::parse(TV8_SECRET).unwrap();
        assert_eq!(sk.name(), "test-key-1");
        assert_eq!(sk.to_secret_string(), TV8_SECRET);
        assert_eq!(sk.public_key().to_string(), TV8_PUBLIC);
        assert_eq!(sk.sign(TV8_FINGERPRINT), TV8_SIG);
        let keys =
            PublicKeys::parse_setting(&format!(" other:{}  {TV8_PUBLIC}\n", "A".repeat(43) + "="))
                .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.verify(TV8_FINGERPRINT, TV8_SIG));
        assert!(!keys.verify(format!("{TV8_FINGERPRINT}x"), TV8_SIG));
        let pk = PublicKey::parse(TV8_PUBLIC).unwrap();
        assert!(pk.verify(TV8_FINGERPRINT, &Signature::parse(TV8_SIG).unwrap()));
    }

    #[test]
    fn unknown_or_malformed_signatures_are_not_valid() {
        let keys = PublicKeys::parse_entries([TV8_PUBLIC]).unwrap();
        let (_, b64) = TV8_SIG.split_once(':').unwrap();
        for bad in [
            format!("test-key-2:{b64}"),
            format!(":{b64}"),
            b64.to_owned(),
            "test-key-1:".to_owned(),
            "test-key-1:!!!!".to_owned(),
            "test-key-1:AAAA".to_owned(),
            format!("test-key-1:{}", &b64[..80]),
            format!("test-key-1:{0}{0}", b64.trim_end_matches('=')),
            format!("test-key-1:{}", "A".repeat(MAX_TEXT_LEN)),
            String::new(),
        ] {
            assert!(!keys.verify(TV8_FINGERPRINT, &bad), "{bad}");
        }
        // A different signature by the same key name does not verify either.
        let other = SecretKey::from_seed("test-key-1", &[7; 32]).unwrap();
        assert!(!keys.verify(TV8_FINGERPRINT, &other.sign(TV8_FINGERPRINT)));
        assert!(!PublicKeys::new().verify(TV8_FINGERPRINT, TV8_SIG));
        // Like Nix's decoder, text after the padding is ignored.
        assert!(keys.verify(TV8_FINGERPRINT, &format!("{TV8_SIG}AAAA")));
    }

    #[test]
    fn first_key_of_a_name_wins() {
        let a = SecretKey::from_seed("k", &[1; 32]).unwrap();
        let b = SecretKey::from_seed("k", &[2; 32]).unwrap();
        let mut keys = PublicKeys::new();
        assert!(keys.insert(a.public_key()));
        assert!(!keys.insert(b.public_key()));
        assert!(keys.verify("x", &a.sign("x")));
        assert!(!keys.verify("x", &b.sign("x")));
    }

    #[test]
    fn lenient_base64_like_nix() {
        // Missing padding and a trailing newline are accepted, as Nix's decoder does.
        let unpadded = TV8_PUBLIC.trim_end_matches('=');
        assert_eq!(PublicKey::parse(unpadded).unwrap().to_string(), TV8_PUBLIC);
        let with_newline = format!("{TV8_SECRET}\n");
        assert_eq!(
            SecretKey::parse(&with_newline).unwrap().to_secret_string(),
            TV8_SECRET
        );
        assert_eq!(decode_base64_like_nix("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64_like_nix("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64_like_nix("a*"), Err('*'));
    }

    #[test]
    fn refuses_bad_keys() {
        let (_, sk_b64) = TV8_SECRET.split_once(':').unwrap();
        let (_, pk_b64) = TV8_PUBLIC.split_once(':').unwrap();
        assert!(matches!(
            SecretKey::parse(sk_b64),
            Err(SignatureError::Corrupt { .. })
        ));
        assert!(matches!(
            SecretKey::parse(&format!(":{sk_b64}")),
            Err(SignatureError::Corrupt { .. })
        ));
        assert!(matches!(
            SecretKey::parse("n:"),
            Err(SignatureError::Corrupt { .. })
        ));
        assert!(matches!(
            SecretKey::parse(&format!("n:{pk_b64}")),
            Err(SignatureError::WrongLength {
                got: 32,
                expected: 64,
                ..
            })
        ));
        assert!(matches!(
            SecretKey::parse("n:ab$d"),
            Err(SignatureError::BadBase64 { ch: '?', .. })
        ));
        // Seed of TV8 with a different public half.
        let mut pair = decode_base64_like_nix(sk_b64).unwrap();
        pair[40] ^= 1;
        let tampered = format!("n:{}", BASE64.encode(&pair));
        assert_eq!(
            SecretKey::parse(&tampered),
            Err(SignatureError::KeyMismatch("n".to_owned()))
        );
        // Errors about secret keys never echo the key.
        let err = SecretKey::parse(sk_b64).unwrap_err().to_string();
        assert!(!err.contains(&sk_b64[..20]), "{err}");

        assert!(matches!(
            PublicKey::parse(&format!("n:{sk_b64}")),
            Err(SignatureError::WrongLength {
                got: 64,
                expected: 32,
                ..
            })
        ));
        assert!(matches!(
            PublicKey::parse(&format!("n:{}", &pk_b64[..40])),
            Err(SignatureError::WrongLength { got: 30, .. })
        ));
        assert!(matches!(
            PublicKey::parse(&format!("n:{}", "A".repeat(MAX_TEXT_LEN))),
            Err(SignatureError::TooLong { .. })
        ));
        assert!(matches!(
            PublicKey::parse("n:ü"),
            Err(SignatureError::BadBase64 { ch: 'ü', .. })
        ));
        assert!(PublicKeys::parse_setting(&format!("{TV8_PUBLIC} garbage")).is_err());
    }

    #[test]
    fn refuses_bad_bytes() {
        let mut bytes = TV8_SECRET.as_bytes().to_vec();
        assert_eq!(
            SecretKey::parse_bytes(&bytes).unwrap().to_secret_string(),
            TV8_SECRET
        );
        bytes[20] = 0xc3;
        assert_eq!(
            SecretKey::parse_bytes(&bytes),
            Err(SignatureError::NotUtf8 { what: "secret key" })
        );
        assert_eq!(
            PublicKey::parse_bytes(b"k:\xff\xfe"),
            Err(SignatureError::NotUtf8 { what: "public key" })
        );
        assert!(matches!(
            Signature::parse_bytes(&vec![b'a'; MAX_TEXT_LEN + 1]),
            Err(SignatureError::TooLong { .. })
        ));
        assert_eq!(
            Signature::parse_bytes(TV8_SIG.as_bytes())
                .unwrap()
                .to_string(),
            TV8_SIG
        );
        // Truncated forms.
        for cut in [0, 5, 11, 20, 60] {
            assert!(SecretKey::parse(&TV8_SECRET[..cut]).is_err(), "{cut}");
            assert!(
                PublicKey::parse(&TV8_PUBLIC[..cut.min(TV8_PUBLIC.len() - 4)]).is_err(),
                "{cut}"
            );
        }
    }

    #[test]
    fn key_names() {
        for bad in ["", "a:b", "a b", "a\nb", "a\u{7}"] {
            assert!(SecretKey::from_seed(bad, &[0; 32]).is_err(), "{bad:?}");
            assert!(SecretKey::generate(bad).is_err(), "{bad:?}");
        }
        assert!(check_key_name("cache.example.org-1").is_ok());
    }

    #[test]
    fn generated_keys_work_and_differ() {
        let a = SecretKey::generate("gen").unwrap();
        let b = SecretKey::generate("gen").unwrap();
        assert_ne!(a, b);
        let reparsed = SecretKey::parse(&a.to_secret_string()).unwrap();
        assert_eq!(reparsed, a);
        assert_eq!(
            PublicKey::parse(&a.public_key().to_string()).unwrap(),
            a.public_key()
        );
        let keys = PublicKeys::parse_entries([a.public_key().to_string().as_str()]).unwrap();
        assert!(keys.verify("data", &a.sign("data")));
        assert!(format!("{a:?}").contains("redacted"));
    }

    #[test]
    fn non_point_public_key_verifies_nothing() {
        // Some of these encodings are not curve points at all, some are small-order points:
        // parsing succeeds (as in Nix), verification fails without panicking.
        for first in 0..=255u8 {
            let mut bytes = [0u8; 32];
            bytes[0] = first;
            let pk = PublicKey::parse(&format!("k:{}", BASE64.encode(bytes))).unwrap();
            let sig = Signature::from_parts("k", vec![first; 64]).unwrap();
            assert!(!pk.verify("x", &sig));
        }
    }

    #[test]
    fn signature_json_forms() {
        let sig = Signature::parse(TV8_SIG).unwrap();
        let obj = sig.to_json_value();
        assert_eq!(obj["keyName"], "test-key-1");
        assert_eq!(Signature::from_json_value(&obj).unwrap(), sig);
        assert_eq!(
            Signature::from_json_value(&serde_json::Value::String(TV8_SIG.into())).unwrap(),
            sig
        );
        for bad in [
            serde_json::json!(1),
            serde_json::json!({"keyName": "a"}),
            serde_json::json!({"keyName": "", "sig": "AAAA"}),
            serde_json::json!({"keyName": "a:b", "sig": "AAAA"}),
            serde_json::json!({"keyName": "a", "sig": "%%"}),
            serde_json::json!({"keyName": "a", "sig": ""}),
        ] {
            assert!(Signature::from_json_value(&bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn sign_then_verify(
            seed in proptest::array::uniform32(proptest::num::u8::ANY),
            name in "[a-zA-Z0-9._-]{1,30}",
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            flip in 0usize..64,
        ) {
            let sk = SecretKey::from_seed(&name, &seed).unwrap();
            let reparsed = SecretKey::parse(&sk.to_secret_string()).unwrap();
            proptest::prop_assert_eq!(&reparsed, &sk);
            let sig = sk.sign(&data);
            let keys = PublicKeys::parse_entries([sk.public_key().to_string().as_str()]).unwrap();
            proptest::prop_assert!(keys.verify(&data, &sig));
            let mut parsed = Signature::parse(&sig).unwrap();
            proptest::prop_assert_eq!(parsed.to_string(), sig.clone());
            parsed.bytes[flip] ^= 0x10;
            proptest::prop_assert!(!keys.verify_signature(&data, &parsed));
            let mut other = data.clone();
            other.push(0);
            proptest::prop_assert!(!keys.verify(&other, &sig));
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let _ = Signature::parse(&text);
            let _ = PublicKey::parse(&text);
            let _ = SecretKey::parse(&text);
            let _ = PublicKeys::parse_setting(&text);
        }
    }
}
