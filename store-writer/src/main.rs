//! ward-store-writer: the only process that writes the store and its database.
//!
//! Started by the broker as `ward-store-writer --ipc-dir DIR -- <the daemon's arguments>`: it
//! reads the same command line and settings as every other ward process, opens the store,
//! confines itself (no_new_privs, seccomp, landlock) and then serves the frontend's typed
//! requests on `DIR/store-writer.socket`, one thread per channel.
// Unsafe only in `secret_keys`, to adopt the descriptors the broker hands over.
#![deny(unsafe_code)]

mod broker_link;

/// Records the signatures a path carries in the audit log (each key name once).
fn audit_signed<'a>(path: &str, sigs: impl Iterator<Item = &'a String>, uid: Option<u32>) {
    let keys: std::collections::BTreeSet<&str> = sigs
        .filter_map(|s| s.split_once(':').map(|(k, _)| k))
        .collect();
    if !keys.is_empty() {
        ward_store::audit::record(
            "path-signed",
            serde_json::json!({ "path": path, "keys": keys, "uid": uid }),
        );
    }
}
mod buildlog;
mod collect;
mod confine;
mod errors;
mod handler;
mod roots;
mod secret_keys;
mod server;
mod temproots;
mod upload;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use ward_config::Verbosity;

/// Exit code for a bad command line (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for a bad configuration (sysexits EX_CONFIG).
const EX_CONFIG: u8 = 78;

const USAGE: &str =
    "usage: ward-store-writer --ipc-dir DIR [--secret-key-fd N ...] [--broker-fd N] -- [nix-daemon options]";

/// The store-writer's own command line.
#[derive(Debug, PartialEq, Eq)]
struct CommandLine {
    /// Where to put `store-writer.socket`.
    ipc_dir: PathBuf,
    /// `--secret-key-fd`: descriptors of the `secret-key-files`, opened by the broker.
    secret_key_fds: Vec<i32>,
    /// `--broker-fd`: the channel to the broker (for the roots of a collection).
    broker_fd: Option<i32>,
    /// The daemon's arguments, after `--`.
    daemon_args: Vec<OsString>,
}

/// A command line the store-writer cannot use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum CommandLineError {
    #[error("'--ipc-dir' requires a directory")]
    MissingIpcDirValue,
    #[error("'--ipc-dir' is required")]
    MissingIpcDir,
    #[error("the ipc directory '{0}' must be an absolute path")]
    RelativeIpcDir(PathBuf),
    #[error("'--secret-key-fd' requires a descriptor number, got '{0}'")]
    BadSecretKeyFd(String),
    #[error("'--broker-fd' requires a descriptor number, got '{0}'")]
    BadBrokerFd(String),
    #[error("unexpected argument '{0}' before '--'")]
    Unexpected(String),
}

fn parse_command_line(args: Vec<OsString>) -> Result<CommandLine, CommandLineError> {
    let mut args = args.into_iter();
    let mut ipc_dir = None;
    let mut secret_key_fds = Vec::new();
    let mut broker_fd = None;
    let mut daemon_args = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--" {
            daemon_args = args.collect();
            break;
        } else if arg == "--secret-key-fd" {
            let value = args.next().unwrap_or_default();
            let text = value.to_string_lossy();
            let fd = text
                .parse::<i32>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| CommandLineError::BadSecretKeyFd(text.into_owned()))?;
            secret_key_fds.push(fd);
        } else if arg == "--broker-fd" {
            let value = args.next().unwrap_or_default();
            let text = value.to_string_lossy();
            let fd = text
                .parse::<i32>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| CommandLineError::BadBrokerFd(text.into_owned()))?;
            broker_fd = Some(fd);
        } else if arg == "--ipc-dir" {
            ipc_dir = Some(PathBuf::from(
                args.next().ok_or(CommandLineError::MissingIpcDirValue)?,
            ));
        } else {
            return Err(CommandLineError::Unexpected(
                arg.to_string_lossy().into_owned(),
            ));
        }
    }
    let ipc_dir = ipc_dir.ok_or(CommandLineError::MissingIpcDir)?;
    if !ipc_dir.is_absolute() {
        return Err(CommandLineError::RelativeIpcDir(ipc_dir));
    }
    Ok(CommandLine {
        ipc_dir,
        secret_key_fds,
        broker_fd,
        daemon_args,
    })
}

/// The tracing level for the daemon's `-v`/`--quiet`/`--debug` verbosity. `WARD_LOG` (an
/// `EnvFilter` directive such as `debug`) overrides it.
fn log_level(verbosity: Verbosity) -> tracing::Level {
    match verbosity {
        Verbosity::Error => tracing::Level::ERROR,
        // Nix hides info messages at notice (`--quiet`).
        Verbosity::Warn | Verbosity::Notice => tracing::Level::WARN,
        Verbosity::Info => tracing::Level::INFO,
        Verbosity::Talkative | Verbosity::Chatty | Verbosity::Debug => tracing::Level::DEBUG,
        Verbosity::Vomit => tracing::Level::TRACE,
    }
}

fn init_logging(verbosity: Verbosity) {
    let filter = match std::env::var("WARD_LOG") {
        Ok(directive) => tracing_subscriber::EnvFilter::try_new(directive).ok(),
        Err(_) => None,
    }
    .unwrap_or_else(|| {
        tracing_subscriber::EnvFilter::new(log_level(verbosity).as_str().to_ascii_lowercase())
    });
    ward_store::logging::init::<tracing_subscriber::fmt::Layer<tracing_subscriber::Registry>>(
        "ward-store-writer",
        filter,
        None,
    );
}

fn main() -> ExitCode {
    let command_line = match parse_command_line(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ward-store-writer: {e}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let setup = match ward_config::daemon::parse_passthrough(command_line.daemon_args)
        .and_then(|args| ward_config::daemon::load_setup(args, false))
    {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("ward-store-writer: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging(setup.args.verbosity);
    if let Err(e) = ward_store::audit::init(&setup.settings.ward_audit_log, "store-writer") {
        tracing::error!(
            "the audit log '{}' (setting 'ward-audit-log') cannot be opened: {e}",
            setup.settings.ward_audit_log
        );
    }
    let signing_keys = secret_keys::load(&command_line.secret_key_fds);
    let broker = command_line
        .broker_fd
        .and_then(secret_keys::adopt_broker_channel)
        .and_then(|socket| match broker_link::BrokerLink::hello(socket) {
            Ok(link) => Some(link),
            Err(e) => {
                tracing::error!("the broker channel: {e}; collecting garbage is refused");
                None
            }
        });
    match server::run(&setup, &command_line.ipc_dir, signing_keys, broker) {
        Ok(never) => match never {},
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_line_splits_at_the_double_dash() {
        let parsed = parse_command_line(os(&[
            "--ipc-dir",
            "/run/w",
            "--secret-key-fd",
            "3",
            "--secret-key-fd",
            "4",
            "--",
            "--store",
            "/x",
        ]));
        assert_eq!(
            parsed.unwrap(),
            CommandLine {
                ipc_dir: PathBuf::from("/run/w"),
                secret_key_fds: vec![3, 4],
                broker_fd: None,
                daemon_args: os(&["--store", "/x"]),
            }
        );
        let parsed = parse_command_line(os(&["--ipc-dir", "/run/w"])).unwrap();
        assert!(parsed.daemon_args.is_empty());
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(
            parse_command_line(os(&["--", "--store", "/x"])),
            Err(CommandLineError::MissingIpcDir)
        );
        assert_eq!(
            parse_command_line(os(&["--ipc-dir"])),
            Err(CommandLineError::MissingIpcDirValue)
        );
        assert_eq!(
            parse_command_line(os(&["--ipc-dir", "rel"])),
            Err(CommandLineError::RelativeIpcDir(PathBuf::from("rel")))
        );
        for bad in ["1", "x", ""] {
            assert_eq!(
                parse_command_line(os(&["--ipc-dir", "/x", "--secret-key-fd", bad])),
                Err(CommandLineError::BadSecretKeyFd(bad.into()))
            );
        }
        assert_eq!(
            parse_command_line(os(&["--verbose", "--ipc-dir", "/x"])),
            Err(CommandLineError::Unexpected("--verbose".into()))
        );
    }

    #[test]
    fn verbosity_maps_to_log_levels() {
        assert_eq!(log_level(Verbosity::Info), tracing::Level::INFO);
        assert_eq!(log_level(Verbosity::Talkative), tracing::Level::DEBUG);
        assert_eq!(log_level(Verbosity::Debug), tracing::Level::DEBUG);
        assert_eq!(log_level(Verbosity::Error), tracing::Level::ERROR);
        assert_eq!(log_level(Verbosity::Vomit), tracing::Level::TRACE);
        assert_eq!(log_level(Verbosity::Notice), tracing::Level::WARN);
    }
}
