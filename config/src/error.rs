//! Errors and warnings from loading the configuration.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use super::kinds::{shorten, SettingError, SettingNotice};

/// Where a setting assignment came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a configuration file (line numbers start at 1).
    File { path: PathBuf, line: usize },
    /// A line of the `NIX_CONFIG` environment variable.
    Env { line: usize },
    /// The daemon's command line (`--option`, `--NAME`, ...).
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { line } => write!(f, "NIX_CONFIG:{line}"),
            Origin::CommandLine => f.write_str("the command line"),
        }
    }
}

/// A problem that stops the configuration from loading.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A line that is neither `NAME = VALUE`, `include PATH` nor `!include PATH`.
    #[error("{origin}: illegal configuration line '{line}'")]
    Syntax { origin: Origin, line: String },
    /// A well-formed line whose value the setting refuses.
    #[error("{origin}: {source}")]
    Setting {
        origin: Origin,
        #[source]
        source: SettingError,
    },
    /// `include PATH` where PATH does not exist.
    #[error("{origin}: included file '{}' not found", path.display())]
    IncludeNotFound { origin: Origin, path: PathBuf },
    /// A file that includes itself, directly or through other files.
    #[error("{origin}: include loop: '{}' is already being read", path.display())]
    IncludeLoop { origin: Origin, path: PathBuf },
    /// Includes nested deeper than the limit.
    #[error("{origin}: includes nested deeper than {limit} levels at '{}'", path.display())]
    IncludeTooDeep {
        origin: Origin,
        path: PathBuf,
        limit: usize,
    },
    /// A relative include in `NIX_CONFIG`, which has no directory to be relative to.
    #[error("{origin}: include path '{path}' must be absolute in NIX_CONFIG")]
    RelativeIncludeInEnv { origin: Origin, path: String },
    /// A configuration file larger than the limit.
    #[error("configuration file '{}' is larger than {limit} bytes", path.display())]
    FileTooLarge { path: PathBuf, limit: u64 },
    /// A configuration file that is not UTF-8.
    #[error("configuration file '{}' is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    /// An included file that exists but cannot be read.
    #[error("cannot read configuration file '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An environment variable whose value is not UTF-8.
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUtf8 { name: &'static str },
    /// A directory environment variable (`NIX_STORE_DIR`, ...) that is not an absolute path.
    #[error("environment variable {name} must be an absolute path, not '{value}'")]
    EnvNotAbsolute { name: &'static str, value: String },
    /// A command-line setting flag (`--NAME VALUE`, `-j`, `--cores`, ...) with a bad value.
    #[error("{0}")]
    CommandLine(SettingError),
}

impl ConfigError {
    pub(crate) fn env_not_absolute(name: &'static str, value: &str) -> ConfigError {
        ConfigError::EnvNotAbsolute {
            name,
            value: shorten(value),
        }
    }
}

/// Something wrong that does not stop the configuration from loading; the daemon logs these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// A setting name nobody knows (Nix warns and ignores it too).
    UnknownSetting { origin: Origin, name: String },
    /// An accepted value with something dropped from it.
    Notice {
        origin: Origin,
        notice: SettingNotice,
    },
    /// `--option NAME VALUE` with a bad value: Nix only warns about these.
    InvalidOption { error: SettingError },
    /// The main configuration file exists but could not be read; Nix skips it silently.
    Unreadable { path: PathBuf, error: String },
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::UnknownSetting { origin, name } => {
                write!(f, "{origin}: unknown setting '{}'", shorten(name))
            }
            ConfigWarning::Notice { origin, notice } => write!(f, "{origin}: {notice}"),
            ConfigWarning::InvalidOption { error } => write!(f, "ignoring --option: {error}"),
            ConfigWarning::Unreadable { path, error } => {
                write!(
                    f,
                    "ignoring configuration file '{}': {error}",
                    path.display()
                )
            }
        }
    }
}
