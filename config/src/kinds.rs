//! The value kinds a setting can have (boolean, integer, list, ...), how a textual value is
//! assigned to each, and how each is printed back. Shared by the typed fields of
//! [`Settings`](super::Settings) and the settings ward knows but does not use.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use thiserror::Error;

use super::value::{
    canon_path, parse_bool, parse_int_with_unit, parse_plain, tokenize, IntError, SettingInt,
};

/// Longest piece of a rejected value quoted back in an error message; values can come from
/// clients, and nobody needs a megabyte of it echoed into the log.
const MAX_QUOTED_VALUE: usize = 200;

/// Why a setting could not be set.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    /// No setting has this name (also for `extra-NAME` when NAME is not a list).
    #[error("unknown setting '{name}'")]
    Unknown { name: String },
    /// The value is not one of the words the setting accepts.
    #[error("setting '{name}' has invalid value '{value}' (expected {expected})")]
    InvalidValue {
        name: String,
        value: String,
        expected: &'static str,
    },
    /// The value is not an integer of the setting's range.
    #[error("setting '{name}' has invalid value '{value}': {reason}")]
    InvalidInteger {
        name: String,
        value: String,
        reason: IntError,
    },
    /// A path setting was given a relative path.
    #[error("setting '{name}' has invalid value '{value}': not an absolute path")]
    RelativePath { name: String, value: String },
}

impl SettingError {
    /// The setting name the error is about, as it was written.
    pub fn name(&self) -> &str {
        match self {
            SettingError::Unknown { name }
            | SettingError::InvalidValue { name, .. }
            | SettingError::InvalidInteger { name, .. }
            | SettingError::RelativePath { name, .. } => name,
        }
    }
}

/// Something worth telling the user about a value that was accepted anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingNotice {
    /// An experimental feature name ward does not know; it was dropped (as Nix does).
    UnknownExperimentalFeature { feature: String },
}

impl fmt::Display for SettingNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingNotice::UnknownExperimentalFeature { feature } => {
                write!(f, "unknown experimental feature '{}'", shorten(feature))
            }
        }
    }
}

/// Cuts `text` to [`MAX_QUOTED_VALUE`] characters for quoting in a message.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_VALUE) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// How a setting looks on the command line (`--NAME`, `--no-NAME`, `--NAME VALUE`,
/// `--extra-NAME VALUE`), and whether `extra-NAME` appends to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `--NAME` / `--no-NAME`, no argument.
    Bool,
    /// `--NAME`, `--no-NAME` and `--relaxed-NAME` (only `sandbox`).
    Sandbox,
    /// `--NAME VALUE`.
    Value,
    /// `--NAME VALUE` and `--extra-NAME VALUE`; `extra-NAME` appends in config files too.
    Appendable,
}

/// Whether the value the user wrote replaces the current one or is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Replace,
    Append,
}

/// What an assignment may need besides the text: host facts and a place for notices.
pub(crate) struct AssignCtx<'a> {
    /// Number of CPUs, for `max-jobs = auto`.
    pub cpu_count: u32,
    pub notices: &'a mut Vec<SettingNotice>,
}

/// One kind of setting value.
pub(crate) trait Kind {
    type Value;
    const SHAPE: Shape;
    /// Parses `text` and stores it in `value` (or adds it, with [`Mode::Append`]). On error
    /// `value` is unchanged.
    fn assign(
        value: &mut Self::Value,
        name: &str,
        text: &str,
        mode: Mode,
        ctx: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError>;
    /// The value as Nix prints it (`nix show-config`, SetOptions overrides).
    fn render(value: &Self::Value) -> String;
}

fn invalid(name: &str, text: &str, expected: &'static str) -> SettingError {
    SettingError::InvalidValue {
        name: name.to_owned(),
        value: shorten(text),
        expected,
    }
}

/// `true`/`yes`/`1` or `false`/`no`/`0`.
pub(crate) struct BoolKind;

impl Kind for BoolKind {
    type Value = bool;
    const SHAPE: Shape = Shape::Bool;
    fn assign(
        value: &mut bool,
        name: &str,
        text: &str,
        _: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        *value = parse_bool(text).ok_or_else(|| invalid(name, text, "true or false"))?;
        Ok(())
    }
    fn render(value: &bool) -> String {
        if *value { "true" } else { "false" }.to_owned()
    }
}

/// An integer with an optional K/M/G/T suffix.
pub(crate) struct IntKind<T>(PhantomData<T>);

impl<T: SettingInt> Kind for IntKind<T> {
    type Value = T;
    const SHAPE: Shape = Shape::Value;
    fn assign(
        value: &mut T,
        name: &str,
        text: &str,
        _: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        *value = parse_int_with_unit::<T>(text).map_err(|reason| SettingError::InvalidInteger {
            name: name.to_owned(),
            value: shorten(text),
            reason,
        })?;
        Ok(())
    }
    fn render(value: &T) -> String {
        value.to_string()
    }
}

/// `max-jobs`: `auto` (the number of CPUs) or a plain integer (no unit suffix, as in Nix).
pub(crate) struct MaxJobsKind;

impl Kind for MaxJobsKind {
    type Value = u32;
    const SHAPE: Shape = Shape::Value;
    fn assign(
        value: &mut u32,
        name: &str,
        text: &str,
        _: Mode,
        ctx: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        *value = if text == "auto" {
            ctx.cpu_count.max(1)
        } else {
            parse_plain::<u32>(text).map_err(|_| invalid(name, text, "'auto' or an integer"))?
        };
        Ok(())
    }
    fn render(value: &u32) -> String {
        value.to_string()
    }
}

/// Free text, kept exactly as written (after the config file's whitespace folding).
pub(crate) struct TextKind;

impl Kind for TextKind {
    type Value = String;
    const SHAPE: Shape = Shape::Value;
    fn assign(
        value: &mut String,
        _: &str,
        text: &str,
        _: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        text.clone_into(value);
        Ok(())
    }
    fn render(value: &String) -> String {
        value.clone()
    }
}

/// A path that may be empty (meaning "none"); otherwise it must be absolute and is made
/// canonical (Nix's `PathSetting` with `allowEmpty`).
pub(crate) struct OptionalPathKind;

impl Kind for OptionalPathKind {
    type Value = String;
    const SHAPE: Shape = Shape::Value;
    fn assign(
        value: &mut String,
        name: &str,
        text: &str,
        _: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        if text.is_empty() {
            value.clear();
            return Ok(());
        }
        *value = canon_path(text).ok_or_else(|| SettingError::RelativePath {
            name: name.to_owned(),
            value: shorten(text),
        })?;
        Ok(())
    }
    fn render(value: &String) -> String {
        value.clone()
    }
}

/// An ordered list of words; duplicates are kept.
pub(crate) struct ListKind;

impl Kind for ListKind {
    type Value = Vec<String>;
    const SHAPE: Shape = Shape::Appendable;
    fn assign(
        value: &mut Vec<String>,
        _: &str,
        text: &str,
        mode: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        if mode == Mode::Replace {
            value.clear();
        }
        value.extend(tokenize(text).map(str::to_owned));
        Ok(())
    }
    fn render(value: &Vec<String>) -> String {
        value.join(" ")
    }
}

/// A sorted set of words.
pub(crate) struct SetKind;

impl Kind for SetKind {
    type Value = BTreeSet<String>;
    const SHAPE: Shape = Shape::Appendable;
    fn assign(
        value: &mut BTreeSet<String>,
        _: &str,
        text: &str,
        mode: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        if mode == Mode::Replace {
            value.clear();
        }
        value.extend(tokenize(text).map(str::to_owned));
        Ok(())
    }
    fn render(value: &BTreeSet<String>) -> String {
        value
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `key=value` words. As in Nix, words without `=` are skipped and an existing key is not
/// overwritten (the first occurrence wins).
pub(crate) struct MapKind;

impl Kind for MapKind {
    type Value = BTreeMap<String, String>;
    const SHAPE: Shape = Shape::Appendable;
    fn assign(
        value: &mut BTreeMap<String, String>,
        _: &str,
        text: &str,
        mode: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        if mode == Mode::Replace {
            value.clear();
        }
        for word in tokenize(text) {
            if let Some((key, val)) = word.split_once('=') {
                value
                    .entry(key.to_owned())
                    .or_insert_with(|| val.to_owned());
            }
        }
        Ok(())
    }
    fn render(value: &BTreeMap<String, String>) -> String {
        value
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Whether builds run in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// `true`: every build is sandboxed.
    Enabled,
    /// `relaxed`: derivations with `__noChroot = true` run outside the sandbox.
    Relaxed,
    /// `false`: no sandbox.
    Disabled,
}

/// `sandbox`: `true`, `relaxed` or `false` (Nix accepts no other spelling here).
pub(crate) struct SandboxKind;

impl Kind for SandboxKind {
    type Value = SandboxMode;
    const SHAPE: Shape = Shape::Sandbox;
    fn assign(
        value: &mut SandboxMode,
        name: &str,
        text: &str,
        _: Mode,
        _: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        *value = match text {
            "true" => SandboxMode::Enabled,
            "relaxed" => SandboxMode::Relaxed,
            "false" => SandboxMode::Disabled,
            _ => return Err(invalid(name, text, "true, false or relaxed")),
        };
        Ok(())
    }
    fn render(value: &SandboxMode) -> String {
        match value {
            SandboxMode::Enabled => "true",
            SandboxMode::Relaxed => "relaxed",
            SandboxMode::Disabled => "false",
        }
        .to_owned()
    }
}

/// Experimental feature names known to some Nix release (2.8 up to current). Others are
/// dropped with a notice, as Nix drops names it does not know.
pub const KNOWN_EXPERIMENTAL_FEATURES: &[&str] = &[
    "auto-allocate-uids",
    "blake3-hashes",
    "ca-derivations",
    "cgroups",
    "configurable-impure-env",
    "daemon-trust-override",
    "dynamic-derivations",
    "external-builders",
    "fetch-closure",
    "fetch-tree",
    "flakes",
    "git-hashing",
    "impure-derivations",
    "local-overlay-store",
    "mounted-ssh-store",
    "nix-command",
    "no-url-literals",
    "parse-toml-timestamps",
    "pipe-operators",
    "read-only-local-store",
    "recursive-nix",
    "repl-flake",
    "verified-fetches",
];

/// `experimental-features`: a set of known feature names.
pub(crate) struct FeaturesKind;

impl Kind for FeaturesKind {
    type Value = BTreeSet<String>;
    const SHAPE: Shape = Shape::Appendable;
    fn assign(
        value: &mut BTreeSet<String>,
        _: &str,
        text: &str,
        mode: Mode,
        ctx: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        if mode == Mode::Replace {
            value.clear();
        }
        for feature in tokenize(text) {
            if KNOWN_EXPERIMENTAL_FEATURES.contains(&feature) {
                value.insert(feature.to_owned());
            } else {
                ctx.notices.push(SettingNotice::UnknownExperimentalFeature {
                    feature: feature.to_owned(),
                });
            }
        }
        Ok(())
    }
    fn render(value: &BTreeSet<String>) -> String {
        SetKind::render(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign<K: Kind>(value: &mut K::Value, text: &str, mode: Mode) -> Result<(), SettingError> {
        let mut notices = Vec::new();
        let mut ctx = AssignCtx {
            cpu_count: 6,
            notices: &mut notices,
        };
        K::assign(value, "test-setting", text, mode, &mut ctx)
    }

    #[test]
    fn bool_errors_name_setting_and_value() {
        let mut value = true;
        let err = assign::<BoolKind>(&mut value, "maybe", Mode::Replace).unwrap_err();
        assert_eq!(
            err.to_string(),
            "setting 'test-setting' has invalid value 'maybe' (expected true or false)"
        );
        assert!(value, "a failed assignment leaves the value alone");
        assign::<BoolKind>(&mut value, "no", Mode::Replace).unwrap();
        assert!(!value);
    }

    #[test]
    fn max_jobs_auto_and_plain() {
        let mut jobs = 1;
        assign::<MaxJobsKind>(&mut jobs, "auto", Mode::Replace).unwrap();
        assert_eq!(jobs, 6);
        assign::<MaxJobsKind>(&mut jobs, "0", Mode::Replace).unwrap();
        assert_eq!(jobs, 0);
        assert!(assign::<MaxJobsKind>(&mut jobs, "2K", Mode::Replace).is_err());
        assert!(assign::<MaxJobsKind>(&mut jobs, "Auto", Mode::Replace).is_err());
        assert!(assign::<MaxJobsKind>(&mut jobs, "-1", Mode::Replace).is_err());
        assert_eq!(jobs, 0);
    }

    #[test]
    fn lists_replace_and_append_keep_order_and_duplicates() {
        let mut list = vec!["x".to_owned()];
        assign::<ListKind>(&mut list, "b a b", Mode::Replace).unwrap();
        assert_eq!(list, ["b", "a", "b"]);
        assign::<ListKind>(&mut list, " c ", Mode::Append).unwrap();
        assert_eq!(ListKind::render(&list), "b a b c");
        assign::<ListKind>(&mut list, "", Mode::Replace).unwrap();
        assert!(list.is_empty());
    }

    #[test]
    fn sets_sort_and_dedup() {
        let mut set = BTreeSet::new();
        assign::<SetKind>(&mut set, "/b /a /b", Mode::Replace).unwrap();
        assign::<SetKind>(&mut set, "/c /a", Mode::Append).unwrap();
        assert_eq!(SetKind::render(&set), "/a /b /c");
    }

    #[test]
    fn maps_skip_words_without_equals_and_keep_first() {
        let mut map = BTreeMap::new();
        assign::<MapKind>(&mut map, "a=1 junk b=2 a=3 c=x=y", Mode::Replace).unwrap();
        assert_eq!(MapKind::render(&map), "a=1 b=2 c=x=y");
        assign::<MapKind>(&mut map, "b=9 d=4", Mode::Append).unwrap();
        assert_eq!(MapKind::render(&map), "a=1 b=2 c=x=y d=4");
    }

    #[test]
    fn sandbox_accepts_only_three_words() {
        let mut mode = SandboxMode::Enabled;
        assign::<SandboxKind>(&mut mode, "relaxed", Mode::Replace).unwrap();
        assert_eq!(mode, SandboxMode::Relaxed);
        assign::<SandboxKind>(&mut mode, "false", Mode::Replace).unwrap();
        assert_eq!(mode, SandboxMode::Disabled);
        // Nix's sandbox parser does not take the boolean synonyms.
        for bad in ["yes", "1", "no", "0", "True"] {
            assert!(
                assign::<SandboxKind>(&mut mode, bad, Mode::Replace).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn optional_path_canonicalises_and_refuses_relative() {
        let mut path = String::new();
        assign::<OptionalPathKind>(&mut path, "/usr//lib/../bin/hook", Mode::Replace).unwrap();
        assert_eq!(path, "/usr/bin/hook");
        let err = assign::<OptionalPathKind>(&mut path, "hook", Mode::Replace).unwrap_err();
        assert!(matches!(err, SettingError::RelativePath { .. }), "{err}");
        assert_eq!(path, "/usr/bin/hook");
        assign::<OptionalPathKind>(&mut path, "", Mode::Replace).unwrap();
        assert_eq!(path, "");
    }

    #[test]
    fn features_drop_unknown_names_with_a_notice() {
        let mut features = BTreeSet::new();
        let mut notices = Vec::new();
        let mut ctx = AssignCtx {
            cpu_count: 1,
            notices: &mut notices,
        };
        FeaturesKind::assign(
            &mut features,
            "experimental-features",
            "nix-command warp-drive flakes",
            Mode::Replace,
            &mut ctx,
        )
        .unwrap();
        assert_eq!(FeaturesKind::render(&features), "flakes nix-command");
        assert_eq!(
            notices,
            [SettingNotice::UnknownExperimentalFeature {
                feature: "warp-drive".into()
            }]
        );
        assert_eq!(
            notices[0].to_string(),
            "unknown experimental feature 'warp-drive'"
        );
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let mut value = false;
        let long = "x".repeat(10_000);
        let err = assign::<BoolKind>(&mut value, &long, Mode::Replace).unwrap_err();
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
        assert!(err.to_string().contains("..."));
    }
}
