//! Parsers for single setting values, following the rules Nix applies to `nix.conf` values,
//! `--option` arguments and SetOptions overrides.

use thiserror::Error;

/// The characters Nix splits lists (and config lines) on.
const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// Splits `text` into whitespace-separated tokens, dropping empty ones (Nix's `tokenizeString`).
pub fn tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(WHITESPACE).filter(|token| !token.is_empty())
}

/// Parses a boolean the way Nix's `BaseSetting<bool>` does: `true`/`yes`/`1` and
/// `false`/`no`/`0`, nothing else (no trimming, no case folding).
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Why a string is not an acceptable integer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IntError {
    /// Not an optionally signed run of decimal digits.
    #[error("not an integer")]
    NotAnInteger,
    /// The last character is a letter other than K, M, G or T.
    #[error("invalid unit specifier '{0}'")]
    InvalidUnit(char),
    /// A valid number that does not fit the setting's type (after applying the unit).
    #[error("out of range")]
    OutOfRange,
}

/// Integer types a setting can hold.
pub trait SettingInt: Copy + std::fmt::Display + TryFrom<i128> {}
impl SettingInt for u32 {}
impl SettingInt for u64 {}
impl SettingInt for i64 {}

/// Parses an integer with an optional binary unit suffix `K`, `M`, `G` or `T` (either case),
/// as Nix's `string2IntWithUnitPrefix`: `4K` is 4096. A leading `+` is accepted, a leading `-`
/// only for signed types. Unlike Nix, a product that overflows the type is an error instead of
/// wrapping around.
pub fn parse_int_with_unit<T: SettingInt>(text: &str) -> Result<T, IntError> {
    let (digits, multiplier) = split_unit::<T>(text)?;
    let number = parse_plain_int::<T>(digits)?;
    let scaled = number.checked_mul(multiplier).ok_or(IntError::OutOfRange)?;
    T::try_from(scaled).map_err(|_| IntError::OutOfRange)
}

/// Parses an integer without a unit suffix (Nix's `string2Int`), e.g. for `max-jobs`.
pub fn parse_plain<T: SettingInt>(text: &str) -> Result<T, IntError> {
    let number = parse_plain_int::<T>(text)?;
    T::try_from(number).map_err(|_| IntError::OutOfRange)
}

/// Separates a trailing unit letter from the digits and returns the multiplier it stands for.
/// A letter that is not a unit is reported as such only when the rest is a number, so that
/// `abc` is "not an integer" rather than a bad unit `C`.
fn split_unit<T: SettingInt>(text: &str) -> Result<(&str, i128), IntError> {
    let Some(last) = text.chars().last() else {
        return Ok((text, 1));
    };
    // Nix tests the last byte with C's `isalpha`, i.e. ASCII letters only.
    if !last.is_ascii_alphabetic() {
        return Ok((text, 1));
    }
    let digits = &text[..text.len() - 1];
    let shift = match last.to_ascii_uppercase() {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        other => {
            parse_plain_int::<T>(digits)?;
            return Err(IntError::InvalidUnit(other));
        }
    };
    Ok((digits, 1i128 << shift))
}

/// Parses `[+-]digits` into an i128, refusing `-` for unsigned targets.
fn parse_plain_int<T: SettingInt>(text: &str) -> Result<i128, IntError> {
    let signed = T::try_from(-1i128).is_ok();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') if signed => (true, &text[1..]),
        Some(b'-') => return Err(IntError::NotAnInteger),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IntError::NotAnInteger);
    }
    // Anything longer than 39 digits cannot fit an i128; refuse before parsing.
    let magnitude: i128 = digits.parse().map_err(|_| IntError::OutOfRange)?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Makes an absolute path canonical without touching the file system, as Nix's `canonPath`:
/// repeated slashes and `.` components are dropped, `..` removes the previous component (never
/// going above `/`), and there is no trailing slash. Returns `None` for a relative path.
pub fn canon_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut components: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            other => components.push(other),
        }
    }
    let mut result = String::with_capacity(path.len());
    for component in &components {
        result.push('/');
        result.push_str(component);
    }
    if result.is_empty() {
        result.push('/');
    }
    Some(result)
}

/// The parent directory of an absolute canonical path (`/` for `/` itself), like Nix's `dirOf`.
pub fn dir_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(index) => &path[..index],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_splits_on_all_nix_whitespace() {
        let tokens: Vec<&str> = tokenize(" a\tb\r\nc  d ").collect();
        assert_eq!(tokens, ["a", "b", "c", "d"]);
        assert_eq!(tokenize("   ").count(), 0);
    }

    #[test]
    fn booleans_accept_exactly_nix_spellings() {
        for yes in ["true", "yes", "1"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["false", "no", "0"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["TRUE", "True", "on", "off", "", " true", "2", "y"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn integers_plain() {
        assert_eq!(parse_int_with_unit::<u32>("0"), Ok(0));
        assert_eq!(parse_int_with_unit::<u32>("+3"), Ok(3));
        assert_eq!(parse_int_with_unit::<u32>("007"), Ok(7));
        assert_eq!(parse_int_with_unit::<i64>("-5"), Ok(-5));
        assert_eq!(
            parse_int_with_unit::<u64>("18446744073709551615"),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn integers_with_units() {
        assert_eq!(parse_int_with_unit::<u64>("4K"), Ok(4096));
        assert_eq!(parse_int_with_unit::<u64>("4k"), Ok(4096));
        assert_eq!(parse_int_with_unit::<u64>("2M"), Ok(2 << 20));
        assert_eq!(parse_int_with_unit::<u64>("3G"), Ok(3 << 30));
        assert_eq!(parse_int_with_unit::<u64>("5t"), Ok(5 << 40));
        assert_eq!(parse_int_with_unit::<i64>("-1K"), Ok(-1024));
        assert_eq!(parse_int_with_unit::<u32>("3G"), Ok(3 << 30));
    }

    #[test]
    fn integers_bad_input() {
        assert_eq!(parse_int_with_unit::<u32>(""), Err(IntError::NotAnInteger));
        assert_eq!(parse_int_with_unit::<u32>("K"), Err(IntError::NotAnInteger));
        assert_eq!(
            parse_int_with_unit::<u32>("-1"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("-0"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(parse_int_with_unit::<u32>("+"), Err(IntError::NotAnInteger));
        assert_eq!(
            parse_int_with_unit::<u32>(" 1"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("1 "),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("0x10"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("1.5"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("1KB"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("abc"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<u32>("2X"),
            Err(IntError::InvalidUnit('X'))
        );
        assert_eq!(
            parse_int_with_unit::<u32>("1é"),
            Err(IntError::NotAnInteger)
        );
        assert_eq!(
            parse_int_with_unit::<i64>("--1"),
            Err(IntError::NotAnInteger)
        );
    }

    #[test]
    fn integers_overflow_is_an_error() {
        assert_eq!(
            parse_int_with_unit::<u32>("4294967296"),
            Err(IntError::OutOfRange)
        );
        assert_eq!(parse_int_with_unit::<u32>("4294967295"), Ok(u32::MAX));
        assert_eq!(parse_int_with_unit::<u32>("4T"), Err(IntError::OutOfRange));
        assert_eq!(
            parse_int_with_unit::<u64>("18446744073709551616"),
            Err(IntError::OutOfRange)
        );
        assert_eq!(
            parse_int_with_unit::<u64>("16777216T"),
            Err(IntError::OutOfRange)
        );
        assert_eq!(parse_int_with_unit::<u64>("16777215T"), Ok(16777215 << 40));
        assert_eq!(
            parse_int_with_unit::<i64>("-9223372036854775809"),
            Err(IntError::OutOfRange)
        );
        let huge = "9".repeat(200);
        assert_eq!(parse_int_with_unit::<u64>(&huge), Err(IntError::OutOfRange));
        assert_eq!(
            parse_int_with_unit::<i64>(&format!("-{huge}")),
            Err(IntError::OutOfRange)
        );
    }

    #[test]
    fn plain_integers_refuse_units() {
        assert_eq!(parse_plain::<u32>("4"), Ok(4));
        assert_eq!(parse_plain::<u32>("4K"), Err(IntError::NotAnInteger));
        assert_eq!(parse_plain::<u32>("4294967296"), Err(IntError::OutOfRange));
    }

    #[test]
    fn canon_path_cases() {
        assert_eq!(canon_path("/").as_deref(), Some("/"));
        assert_eq!(canon_path("//").as_deref(), Some("/"));
        assert_eq!(canon_path("/nix/store/").as_deref(), Some("/nix/store"));
        assert_eq!(canon_path("/nix//./store").as_deref(), Some("/nix/store"));
        assert_eq!(canon_path("/a/b/../c").as_deref(), Some("/a/c"));
        assert_eq!(canon_path("/../../a").as_deref(), Some("/a"));
        assert_eq!(canon_path("relative/path"), None);
        assert_eq!(canon_path(""), None);
        assert_eq!(canon_path("./x"), None);
    }

    #[test]
    fn dir_of_cases() {
        assert_eq!(dir_of("/etc/nix/nix.conf"), "/etc/nix");
        assert_eq!(dir_of("/nix.conf"), "/");
        assert_eq!(dir_of("/"), "/");
    }
}
