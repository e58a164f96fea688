//! The broker's own command line.
//!
//! Only `ward daemon` (run by root or the store's owner) starts the broker, so this is not
//! client input; it is still checked strictly so a typo fails loudly instead of running a
//! process tree with the wrong users.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// What the broker was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerArgs {
    /// Descriptor of the bound, listening client socket; handed to the frontend as fd 3.
    pub listen_fd: RawFd,
    /// The frontend binary.
    pub frontend_bin: PathBuf,
    /// The store-writer binary.
    pub store_writer_bin: PathBuf,
    /// User the frontend runs as (multi-user mode); `None` keeps the broker's own user.
    pub frontend_user: Option<String>,
    /// User the store-writer runs as (multi-user mode); `None` keeps the broker's own user.
    pub store_user: Option<String>,
    /// Extra group both children join, so the frontend can reach the store-writer's socket.
    pub shared_group: Option<String>,
    /// Directory of the private frontend⇄store-writer socket.
    pub ipc_dir: PathBuf,
    /// The store's state directory (for per-user directories).
    pub state_dir: PathBuf,
    /// Arguments passed verbatim to both children after their own.
    pub passthrough: Vec<OsString>,
}

/// A command-line mistake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag the broker does not know.
    #[error("unknown option '{0}'")]
    Unknown(String),
    /// A flag given without its value.
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// A required flag was not given.
    #[error("option '{0}' is required")]
    Required(&'static str),
    /// `--listen-fd` was not a small non-negative number.
    #[error("option '--listen-fd' wants a descriptor number, got '{0}'")]
    BadFd(String),
}

impl BrokerArgs {
    /// Parses the arguments after argv[0].
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<BrokerArgs, ArgsError> {
        let mut args = args.into_iter();
        let mut listen_fd = None;
        let mut frontend_bin = None;
        let mut store_writer_bin = None;
        let mut frontend_user = None;
        let mut store_user = None;
        let mut shared_group = None;
        let mut ipc_dir = None;
        let mut state_dir = None;
        let mut passthrough = Vec::new();
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            if flag == "--" {
                passthrough.extend(args.by_ref());
                break;
            }
            let mut value = || {
                args.next()
                    .ok_or_else(|| ArgsError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--listen-fd" => {
                    let v = value()?;
                    let text = v.to_string_lossy();
                    let fd = text
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd >= 0)
                        .ok_or_else(|| ArgsError::BadFd(text.into_owned()))?;
                    listen_fd = Some(fd);
                }
                "--frontend" => frontend_bin = Some(PathBuf::from(value()?)),
                "--store-writer" => store_writer_bin = Some(PathBuf::from(value()?)),
                "--frontend-user" => frontend_user = Some(value()?.to_string_lossy().into_owned()),
                "--store-user" => store_user = Some(value()?.to_string_lossy().into_owned()),
                "--group" => shared_group = Some(value()?.to_string_lossy().into_owned()),
                "--ipc-dir" => ipc_dir = Some(PathBuf::from(value()?)),
                "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        Ok(BrokerArgs {
            listen_fd: listen_fd.ok_or(ArgsError::Required("--listen-fd"))?,
            frontend_bin: frontend_bin.ok_or(ArgsError::Required("--frontend"))?,
            store_writer_bin: store_writer_bin.ok_or(ArgsError::Required("--store-writer"))?,
            frontend_user,
            store_user,
            shared_group,
            ipc_dir: ipc_dir.ok_or(ArgsError::Required("--ipc-dir"))?,
            state_dir: state_dir.ok_or(ArgsError::Required("--state-dir"))?,
            passthrough,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BrokerArgs, ArgsError> {
        BrokerArgs::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_a_full_command_line() {
        let a = parse(&[
            "--listen-fd",
            "3",
            "--frontend",
            "/bin/f",
            "--store-writer",
            "/bin/s",
            "--frontend-user",
            "ward-frontend",
            "--store-user",
            "ward-store",
            "--group",
            "ward",
            "--ipc-dir",
            "/run/ward",
            "--state-dir",
            "/nix/var/nix",
            "--",
            "--store",
            "/x",
            "--debug",
        ])
        .unwrap();
        assert_eq!(a.listen_fd, 3);
        assert_eq!(a.frontend_user.as_deref(), Some("ward-frontend"));
        assert_eq!(a.passthrough, vec!["--store", "/x", "--debug"]);
    }

    #[test]
    fn refuses_mistakes() {
        assert_eq!(
            parse(&["--bogus"]),
            Err(ArgsError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["--listen-fd"]),
            Err(ArgsError::MissingValue("--listen-fd".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "-1"]),
            Err(ArgsError::BadFd("-1".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "x"]),
            Err(ArgsError::BadFd("x".into()))
        );
        assert_eq!(
            parse(&["--listen-fd", "3"]),
            Err(ArgsError::Required("--frontend"))
        );
    }
}
