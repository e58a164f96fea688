//! `ward-config`: the daemon's command line and configuration: Nix's `nix.conf` syntax and settings, the daemon's environment, and
//! the policy for settings a client sends with SetOptions.
#![forbid(unsafe_code)]

pub mod cli;
pub mod daemon;
mod error;
mod host;
mod kinds;
pub mod layout;
mod load;
mod overrides;
mod parse;
mod settings;
mod value;
mod verbosity;

pub use error::{ConfigError, ConfigWarning, Origin};
pub use host::{native_system, HostInfo};
pub use kinds::{SandboxMode, SettingError, SettingNotice, Shape, KNOWN_EXPERIMENTAL_FEATURES};
pub use load::{load, CommandLineConfig, CommandLineSetting, Loaded, SettingOrigin};
pub use overrides::{
    apply_client_options, ClientOptions, MessageLevel, OverrideMessage, SetOptionsOutcome,
};
pub use parse::{ConfigReader, MAX_FILE_SIZE, MAX_INCLUDE_DEPTH};
pub use settings::{
    canonical_name, process_env, setting_shape, Applied, EnvDefaults, EnvLookup, Settings,
    CACHE_NIXOS_ORG_KEY,
};
pub use value::{parse_int_with_unit, IntError};
pub use verbosity::Verbosity;
