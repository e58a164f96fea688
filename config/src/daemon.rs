//! What every ward process agrees on about one daemon: its command line, settings and store
//! layout, read the same way by the `ward` launcher and by each child the broker starts
//! (`ward-frontend`, `ward-store-writer`, which get the original daemon arguments after `--`),
//! plus the names of ward's system users and of the store-writer's socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::cli::{self, CliError, DaemonArgs};
use crate::layout::{self, LayoutError, StoreLayout};
use crate::{ConfigError, HostInfo, Settings};

/// The unprivileged user the frontend runs as in multi-user mode.
pub const FRONTEND_USER: &str = "ward-frontend";
/// The store owner, the store-writer's user in multi-user mode.
pub const STORE_USER: &str = "ward-store";
/// The group both belong to; it may read the DB and reach the store-writer's socket.
pub const WARD_GROUP: &str = "ward";
/// Name of the store-writer's listening socket inside the IPC directory.
pub const STORE_WRITER_SOCKET_NAME: &str = "store-writer.socket";

/// Where the store-writer listens, given the IPC directory (`--ipc-dir`).
pub fn store_writer_socket(ipc_dir: &Path) -> PathBuf {
    ipc_dir.join(STORE_WRITER_SOCKET_NAME)
}

/// Everything the daemon's processes agree on, read the same way by each of them.
#[derive(Debug)]
pub struct DaemonSetup {
    /// The parsed command line.
    pub args: DaemonArgs,
    /// The loaded settings.
    pub settings: Settings,
    /// Where the store is.
    pub layout: StoreLayout,
}

/// Why the daemon's set-up could not be read.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Bad command line.
    #[error("{0}")]
    Cli(#[from] CliError),
    /// Bad configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A store ward cannot serve.
    #[error("{0}")]
    Layout(#[from] LayoutError),
    /// `--help` or `--version` in the arguments handed to a child process: the launcher
    /// answers those itself, so a child seeing one was started wrongly.
    #[error("'--help'/'--version' reached a child process; the launcher answers them itself")]
    HelpInChild,
}

/// Loads settings and layout exactly as every ward process does; prints configuration warnings
/// to stderr when asked (the launcher does; children stay quiet to avoid repeating them).
pub fn load_setup(args: DaemonArgs, print_warnings: bool) -> Result<DaemonSetup, DaemonError> {
    load_setup_with(args, &crate::process_env, print_warnings)
}

/// [`load_setup`] with the environment seen through `env` (the admin commands point
/// `NIX_CONF_DIR` into a `--root` directory this way).
pub fn load_setup_with(
    args: DaemonArgs,
    env: crate::EnvLookup<'_>,
    print_warnings: bool,
) -> Result<DaemonSetup, DaemonError> {
    let host = HostInfo::detect();
    let loaded = crate::load(env, &host, &args.config)?;
    if print_warnings {
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
    }
    args.check_experimental_features(&loaded.settings)?;
    let socket_from_env = env("NIX_DAEMON_SOCKET_PATH").map(PathBuf::from);
    let layout = layout::resolve(
        &loaded.settings,
        args.socket_path.as_deref(),
        socket_from_env.as_deref(),
    )?;
    Ok(DaemonSetup {
        args,
        settings: loaded.settings,
        layout,
    })
}

/// Parses the daemon command line that follows `--` in a child's argv.
pub fn parse_passthrough(args: Vec<OsString>) -> Result<DaemonArgs, DaemonError> {
    match cli::parse_args(args)? {
        cli::Command::Run(args) => Ok(args),
        cli::Command::Help | cli::Command::Version => Err(DaemonError::HelpInChild),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn passthrough_parses_the_daemon_command_line() {
        let args = parse_passthrough(os(&["--store", "/tmp/x", "-v"])).unwrap();
        assert_eq!(args.verbosity, crate::Verbosity::Talkative);
    }

    #[test]
    fn passthrough_refuses_help_and_bad_flags() {
        assert!(matches!(
            parse_passthrough(os(&["--help"])),
            Err(DaemonError::HelpInChild)
        ));
        let err = parse_passthrough(os(&["--no-such-flag"])).unwrap_err();
        assert!(err.to_string().contains("--no-such-flag"), "{err}");
    }

    #[test]
    fn store_writer_socket_is_inside_the_ipc_dir() {
        assert_eq!(
            store_writer_socket(Path::new("/nix/var/nix/ward")),
            Path::new("/nix/var/nix/ward/store-writer.socket")
        );
    }
}
