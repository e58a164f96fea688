//! Nix's base-32 encoding ("nix32").
//!
//! Not RFC 4648: the alphabet leaves out `e`, `o`, `t` and `u`, and the digest is read as one
//! little-endian number whose most significant 5-bit group is printed first.

use thiserror::Error;

/// The 32 symbols, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nix32 string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nix32Error {
    /// A character outside the alphabet.
    #[error("invalid character {0:?} in nix32 string")]
    InvalidChar(char),
    /// The string has the wrong length for the expected number of bytes.
    #[error("nix32 string has length {got}, expected {expected}")]
    WrongLength {
        /// Characters given.
        got: usize,
        /// Characters needed.
        expected: usize,
    },
    /// Bits beyond the last byte were set.
    #[error("nix32 string encodes more bits than fit in {0} bytes")]
    Overflow(usize),
}

/// Number of characters that encode `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a nix32 string of `chars` characters decodes to, if any length matches.
pub fn decoded_len(chars: usize) -> Option<usize> {
    // encoded_len is strictly increasing, so at most one byte count matches.
    let guess = chars * 5 / 8;
    (guess..=guess + 1).find(|&n| encoded_len(n) == chars)
}

/// Encodes `bytes` in nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = Vec::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * 5;
        let i = bit / 8;
        let j = bit % 8;
        let mut value = u32::from(bytes[i]) >> j;
        if i + 1 < bytes.len() && j > 3 {
            value |= u32::from(bytes[i + 1]) << (8 - j);
        }
        out.push(ALPHABET[(value & 31) as usize]);
    }
    String::from_utf8(out).expect("the alphabet is ASCII")
}

/// Symbol value by byte; 0xff for bytes outside the alphabet. Store paths are parsed on every
/// request, so this is a table rather than a search.
const SYMBOL_VALUES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn symbol_value(c: u8) -> Option<u8> {
    match SYMBOL_VALUES[usize::from(c)] {
        0xff => None,
        v => Some(v),
    }
}

/// Decodes a nix32 string into exactly `expected_bytes` bytes.
pub fn decode_exact(s: &str, expected_bytes: usize) -> Result<Vec<u8>, Nix32Error> {
    let expected = encoded_len(expected_bytes);
    if s.len() != expected {
        return Err(Nix32Error::WrongLength {
            got: s.len(),
            expected,
        });
    }
    let mut out = vec![0u8; expected_bytes];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = symbol_value(c).ok_or(Nix32Error::InvalidChar(char::from(c)))?;
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        out[i] |= digit << j;
        let carry = u16::from(digit) >> (8 - j);
        if carry != 0 {
            if i + 1 >= expected_bytes {
                return Err(Nix32Error::Overflow(expected_bytes));
            }
            out[i + 1] |= carry as u8;
        }
    }
    Ok(out)
}

/// Decodes a nix32 string whose byte length follows from its character length.
pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let bytes = decoded_len(s.len()).ok_or(Nix32Error::WrongLength {
        got: s.len(),
        expected: encoded_len(s.len() * 5 / 8),
    })?;
    decode_exact(s, bytes)
}

/// True when `c` is a nix32 symbol.
pub fn is_symbol(c: u8) -> bool {
    symbol_value(c).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_symbol_table_matches_the_alphabet() {
        for c in 0..=255u8 {
            assert_eq!(
                symbol_value(c),
                ALPHABET.iter().position(|&a| a == c).map(|p| p as u8),
                "byte {c}"
            );
        }
    }

    #[test]
    fn lengths_match_nix() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in [16, 20, 32, 64] {
            assert_eq!(decoded_len(encoded_len(n)), Some(n));
        }
    }

    #[test]
    fn known_vectors() {
        let sha256 =
            hex::decode("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
                .unwrap();
        assert_eq!(
            encode(&sha256),
            "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
        );
        let sha1 = hex::decode("f572d396fae9206628714fb2ce00f72e94f2258f").unwrap();
        assert_eq!(encode(&sha1), "iwjz551fyw0cxcjgf4l6c879zabd6wpm");
        assert_eq!(encode(&[0u8; 20]), "0".repeat(32));
        assert_eq!(encode(&[0xffu8; 20]), "z".repeat(32));
        assert_eq!(decode("iwjz551fyw0cxcjgf4l6c879zabd6wpm").unwrap(), sha1);
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(
            decode_exact("e".repeat(32).as_str(), 20),
            Err(Nix32Error::InvalidChar('e'))
        );
        assert!(matches!(
            decode_exact("000", 20),
            Err(Nix32Error::WrongLength { .. })
        ));
        // 52 chars hold 260 bits; a 'z' first sets bits beyond 256.
        let over = format!("z{}", "0".repeat(51));
        assert_eq!(decode_exact(&over, 32), Err(Nix32Error::Overflow(32)));
        assert!(decode("").is_ok_and(|v| v.is_empty()));
        assert!(decode("0").is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let s = encode(&bytes);
            proptest::prop_assert_eq!(decode_exact(&s, bytes.len()).unwrap(), bytes);
        }
    }
}
