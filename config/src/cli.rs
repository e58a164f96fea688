//! The daemon's command line, accepting what `nix-daemon` and `nix daemon` accept so that ward
//! can be installed under either name.
//!
//! Syntax follows Nix's argument parser: long flags take their values as separate arguments
//! (`--option NAME VALUE`, never `--flag=value`); short flags can be grouped (`-vvv`) and a
//! short flag's value can be attached (`-j4`); after `--`, arguments are matched against the
//! `nix-daemon` words only (`nix-daemon -- --stdio` works, as in Nix).
//!
//! Besides the daemon's own flags, every setting has flags: `--NAME VALUE`, `--extra-NAME
//! VALUE` for lists, `--NAME`/`--no-NAME` for booleans and `--sandbox`, `--no-sandbox`,
//! `--relaxed-sandbox`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::{
    parse_int_with_unit, setting_shape, CommandLineConfig, CommandLineSetting, IntError, Settings,
    Shape, Verbosity,
};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(DaemonArgs),
    /// `--help`: print [`HELP`] and exit.
    Help,
    /// `--version`: print the version and exit.
    Version,
}

/// A forced trust decision for clients (`--force-trusted` / `--force-untrusted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustOverride {
    Trusted,
    Untrusted,
}

/// Format of the daemon's own log on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Raw,
    RawWithLogs,
    InternalJson,
    Bar,
    BarWithLogs,
}

impl LogFormat {
    fn parse(text: &str) -> Option<LogFormat> {
        Some(match text {
            "raw" => LogFormat::Raw,
            "raw-with-logs" => LogFormat::RawWithLogs,
            "internal-json" => LogFormat::InternalJson,
            "bar" => LogFormat::Bar,
            "bar-with-logs" => LogFormat::BarWithLogs,
            _ => return None,
        })
    }
}

/// `--busy-poll` when the command line does not say: long enough to cover a client's own
/// wake-up and work between two requests (measured on a 2-CPU VM: 50–80 µs for a compiled
/// client, 150–300 µs for a Python one), short enough that the end of each burst of requests
/// costs well under a millisecond of CPU.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(400);

/// Largest `--busy-poll`: polling longer than this is sleeping done badly.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(100);

/// The parsed daemon command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    /// `--stdio`: serve one client on stdin/stdout instead of listening on a socket.
    pub stdio: bool,
    /// `--force-trusted` / `--force-untrusted`; `--default-trust` resets it. Last one wins.
    pub trust_override: Option<TrustOverride>,
    /// `--process-ops`: serve operations here even when the store is remote.
    pub process_ops: bool,
    /// `--socket-path PATH`: listen here instead of the default socket.
    pub socket_path: Option<PathBuf>,
    /// `--log-format`, `-L` (bar-with-logs) or `-Q` (raw); `None` = the default.
    pub log_format: Option<LogFormat>,
    /// After `-v`, `--quiet` and `--debug`, in order; starts at info.
    pub verbosity: Verbosity,
    /// `--readonly-mode`: do not write the store.
    pub read_only: bool,
    /// Settings from the command line, plus `--offline` / `--refresh`.
    pub config: CommandLineConfig,
    /// `--busy-poll MICROSECONDS` (ward only): how long a frontend worker keeps polling its
    /// connections after a reply, while clients send requests back to back, before it
    /// sleeps. Zero turns it off.
    pub busy_poll: Duration,
    /// `--hook-user USER` (ward only): who runs a root-owned `post-build-hook` (ward never
    /// runs a hook as root; a hook owned by another user runs as its owner).
    pub hook_user: Option<String>,
    /// The first flag that needs `daemon-trust-override` (checked once settings are loaded).
    trust_flag: Option<&'static str>,
}

impl Default for DaemonArgs {
    fn default() -> Self {
        DaemonArgs {
            stdio: false,
            trust_override: None,
            process_ops: false,
            socket_path: None,
            log_format: None,
            verbosity: Verbosity::Info,
            read_only: false,
            config: CommandLineConfig::default(),
            busy_poll: DEFAULT_BUSY_POLL,
            hook_user: None,
            trust_flag: None,
        }
    }
}

/// A command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    #[error("unrecognised flag '{0}'")]
    UnknownFlag(String),
    #[error("flag '{flag}' requires {count} argument(s)")]
    MissingValue { flag: String, count: usize },
    #[error("unexpected argument '{0}'")]
    UnexpectedArgument(String),
    #[error("argument '{0}' is not valid UTF-8")]
    NotUtf8(String),
    #[error("option 'log-format' has an invalid value '{0}'")]
    InvalidLogFormat(String),
    #[error("flag '{flag}' has invalid value '{value}': {reason}")]
    InvalidNumber {
        flag: String,
        value: String,
        reason: IntError,
    },
    #[error("'--stdio' and '--socket-path' are incompatible")]
    StdioWithSocketPath,
    #[error(
        "flag '{flag}' needs experimental feature '{feature}'; \
         use '--extra-experimental-features {feature}' to enable it"
    )]
    MissingExperimentalFeature {
        flag: &'static str,
        feature: &'static str,
    },
}

/// The text printed by `--help`.
pub const HELP: &str = "\
Usage: nix-daemon [OPTION...]
       nix daemon [OPTION...]

Serve the Nix store to Nix clients over the Nix worker protocol (ward).

By default, listen on the daemon socket ($NIX_DAEMON_SOCKET_PATH, or
$NIX_STATE_DIR/daemon-socket/socket), or on the socket systemd hands over.

Daemon options:
  --stdio                 serve a single client on standard input and output
  --socket-path PATH      listen on PATH (not together with --stdio)
  --force-trusted         treat every client as trusted        (*)
  --force-untrusted       treat every client as untrusted      (*)
  --default-trust         decide trust from trusted-users (the default) (*)
  --process-ops           serve operations locally even when the store is remote
                          (needs experimental feature mounted-ssh-store)
  --store URL             the store to serve (setting 'store')
  --daemon                accepted and ignored, for old scripts
  --busy-poll MICROSECONDS
                          ward only: after a reply, while a client sends requests
                          back to back, keep polling this long before sleeping
                          (default 400; 0 turns it off; at most 100000)
  --hook-user USER        ward only: run a root-owned post-build-hook as USER
                          (ward never runs hooks as root; a hook program owned
                          by another user runs as its owner)

Settings:
  --option NAME VALUE     set a nix.conf setting; a bad value is only a warning
  --NAME VALUE            set setting NAME; --extra-NAME VALUE appends to a list
  --NAME, --no-NAME       turn a boolean setting on or off
  --relaxed-sandbox       sandbox = relaxed
  -j, --max-jobs N        max-jobs (a number or 'auto')
  --cores N, --timeout N, --max-silent-time N
                          numbers may end in K, M, G or T
  -K, --keep-failed       keep-failed = true
  -k, --keep-going        keep-going = true
  --fallback              fallback = true
  --offline               no substituters, no network waits
  --refresh               treat cached downloads as stale
  --readonly-mode         do not write to the store

Logging:
  -v, --verbose           log more (repeatable)
  --quiet                 log less
  --debug                 log at debug level
  --log-format FORMAT     raw, raw-with-logs, internal-json, bar or bar-with-logs
  -L, --print-build-logs  same as --log-format bar-with-logs
  -Q, --no-build-output   same as --log-format raw

  --help                  show this text
  --version               show the version

(*) needs experimental feature daemon-trust-override.

Settings are read from $NIX_CONF_DIR/nix.conf (default /etc/nix/nix.conf), then
from $NIX_CONFIG, then from the command line.
";

/// Parses the daemon's arguments (without the program name).
pub fn parse_args<I>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut queue = VecDeque::new();
    for arg in args {
        let arg: OsString = arg.into();
        let text = arg
            .into_string()
            .map_err(|raw| CliError::NotUtf8(raw.to_string_lossy().into_owned()))?;
        queue.push_back(text);
    }
    Parser {
        queue,
        args: DaemonArgs::default(),
        after_dash_dash: false,
    }
    .run()
}

struct Parser {
    queue: VecDeque<String>,
    args: DaemonArgs,
    after_dash_dash: bool,
}

/// What a recognised flag does.
enum Step {
    Continue,
    Finish(Command),
}

impl Parser {
    fn run(mut self) -> Result<Command, CliError> {
        while let Some(arg) = self.queue.pop_front() {
            if !self.after_dash_dash && is_short_group(&arg) {
                self.expand_short_group(&arg);
                continue;
            }
            let step = if !self.after_dash_dash && arg == "--" {
                self.after_dash_dash = true;
                Step::Continue
            } else if !self.after_dash_dash && arg.starts_with('-') {
                match self.flag(&arg)? {
                    Some(step) => step,
                    None => match self.daemon_word(&arg) {
                        Some(step) => step,
                        None => return Err(CliError::UnknownFlag(arg)),
                    },
                }
            } else {
                // Nix hands positional arguments to nix-daemon's own word matcher.
                match self.daemon_word(&arg) {
                    Some(step) => step,
                    None => return Err(CliError::UnexpectedArgument(arg)),
                }
            };
            if let Step::Finish(command) = step {
                return Ok(command);
            }
        }
        if self.args.stdio && self.args.socket_path.is_some() {
            return Err(CliError::StdioWithSocketPath);
        }
        Ok(Command::Run(self.args))
    }

    /// Splits `-abc` into `-a -b -c` and `-j4` into `-j 4`, in front of the queue.
    fn expand_short_group(&mut self, arg: &str) {
        let mut parts = Vec::new();
        for (index, c) in arg.char_indices().skip(1) {
            if c.is_ascii_alphabetic() {
                parts.push(format!("-{c}"));
            } else {
                parts.push(arg[index..].to_owned());
                break;
            }
        }
        for part in parts.into_iter().rev() {
            self.queue.push_front(part);
        }
    }

    fn take(&mut self, flag: &str, count: usize) -> Result<Vec<String>, CliError> {
        if self.queue.len() < count {
            return Err(CliError::MissingValue {
                flag: flag.to_owned(),
                count,
            });
        }
        Ok(self.queue.drain(..count).collect())
    }

    fn take_one(&mut self, flag: &str) -> Result<String, CliError> {
        Ok(self.take(flag, 1)?.remove(0))
    }

    fn set_flag(&mut self, name: &str, value: String) {
        self.args.config.settings.push(CommandLineSetting::Flag {
            name: name.to_owned(),
            value,
        });
    }

    /// A number flag of nix-daemon (`--cores`, `--timeout`, `--max-silent-time`): the unit
    /// suffix is applied here, then the setting gets the plain number.
    fn number_flag(&mut self, flag: &str, setting: &str) -> Result<(), CliError> {
        let value = self.take_one(flag)?;
        let number =
            parse_int_with_unit::<u64>(&value).map_err(|reason| CliError::InvalidNumber {
                flag: flag.to_owned(),
                value: value.clone(),
                reason,
            })?;
        self.set_flag(setting, number.to_string());
        Ok(())
    }

    /// Handles a flag of the common Nix argument parser, or a setting flag. `None` when
    /// `arg` is none of those.
    fn flag(&mut self, arg: &str) -> Result<Option<Step>, CliError> {
        let a = &mut self.args;
        match arg {
            "-v" | "--verbose" => a.verbosity = a.verbosity.louder(),
            "--quiet" => a.verbosity = a.verbosity.quieter(),
            "--debug" => a.verbosity = Verbosity::Debug,
            "--option" => {
                let mut pair = self.take(arg, 2)?.into_iter();
                let (name, value) = (
                    pair.next().unwrap_or_default(),
                    pair.next().unwrap_or_default(),
                );
                self.args
                    .config
                    .settings
                    .push(CommandLineSetting::Option { name, value });
            }
            "--log-format" => {
                let value = self.take_one(arg)?;
                self.args.log_format =
                    Some(LogFormat::parse(&value).ok_or(CliError::InvalidLogFormat(value))?);
            }
            "-L" | "--print-build-logs" => a.log_format = Some(LogFormat::BarWithLogs),
            "-Q" | "--no-build-output" => a.log_format = Some(LogFormat::Raw),
            "-j" | "--max-jobs" => {
                let value = self.take_one(arg)?;
                self.set_flag("max-jobs", value);
            }
            "-K" | "--keep-failed" => self.set_flag("keep-failed", "true".to_owned()),
            "-k" | "--keep-going" => self.set_flag("keep-going", "true".to_owned()),
            "--fallback" => self.set_flag("fallback", "true".to_owned()),
            "--cores" => self.number_flag(arg, "cores")?,
            "--max-silent-time" => self.number_flag(arg, "max-silent-time")?,
            "--timeout" => self.number_flag(arg, "timeout")?,
            "--store" => {
                let value = self.take_one(arg)?;
                self.set_flag("store", value);
            }
            "--readonly-mode" => a.read_only = true,
            "--no-gc-warning" => {}
            "--offline" | "--no-net" => a.config.offline = true,
            "--refresh" => a.config.refresh = true,
            "--socket-path" => {
                let value = self.take_one(arg)?;
                self.args.socket_path = Some(PathBuf::from(value));
            }
            "--busy-poll" => self.args.busy_poll = self.busy_poll(arg)?,
            "--hook-user" => {
                let value = self.take_one(arg)?;
                self.args.hook_user = Some(value);
            }
            _ => return self.setting_flag(arg),
        }
        Ok(Some(Step::Continue))
    }

    /// `--NAME [VALUE]`, `--no-NAME`, `--relaxed-sandbox`, `--extra-NAME VALUE`.
    fn setting_flag(&mut self, arg: &str) -> Result<Option<Step>, CliError> {
        let Some(long) = arg.strip_prefix("--") else {
            return Ok(None);
        };
        match setting_shape(long) {
            Some(Shape::Bool | Shape::Sandbox) => self.set_flag(long, "true".to_owned()),
            Some(Shape::Value | Shape::Appendable) => {
                let value = self.take_one(arg)?;
                self.set_flag(long, value);
            }
            None => {
                if let Some(base) = long.strip_prefix("no-") {
                    if let Some(Shape::Bool | Shape::Sandbox) = setting_shape(base) {
                        self.set_flag(base, "false".to_owned());
                        return Ok(Some(Step::Continue));
                    }
                }
                if long.strip_prefix("relaxed-").map(setting_shape) == Some(Some(Shape::Sandbox)) {
                    self.set_flag(&long["relaxed-".len()..], "relaxed".to_owned());
                    return Ok(Some(Step::Continue));
                }
                if let Some(base) = long.strip_prefix("extra-") {
                    if setting_shape(base) == Some(Shape::Appendable) {
                        let value = self.take_one(arg)?;
                        self.set_flag(long, value);
                        return Ok(Some(Step::Continue));
                    }
                }
                return Ok(None);
            }
        }
        Ok(Some(Step::Continue))
    }

    /// The value of `--busy-poll MICROSECONDS`, at most [`MAX_BUSY_POLL`].
    fn busy_poll(&mut self, flag: &str) -> Result<Duration, CliError> {
        let value = self.take_one(flag)?;
        let micros = parse_int_with_unit::<u64>(&value)
            .and_then(|n| {
                (u128::from(n) <= MAX_BUSY_POLL.as_micros())
                    .then_some(n)
                    .ok_or(IntError::OutOfRange)
            })
            .map_err(|reason| CliError::InvalidNumber {
                flag: flag.to_owned(),
                value,
                reason,
            })?;
        Ok(Duration::from_micros(micros))
    }

    /// The words nix-daemon itself recognises.
    fn daemon_word(&mut self, arg: &str) -> Option<Step> {
        let a = &mut self.args;
        match arg {
            "--daemon" => {}
            "--help" => return Some(Step::Finish(Command::Help)),
            "--version" => return Some(Step::Finish(Command::Version)),
            "--stdio" => a.stdio = true,
            "--force-trusted" => a.set_trust("--force-trusted", Some(TrustOverride::Trusted)),
            "--force-untrusted" => {
                a.set_trust("--force-untrusted", Some(TrustOverride::Untrusted));
            }
            "--default-trust" => a.set_trust("--default-trust", None),
            "--process-ops" => a.process_ops = true,
            _ => return None,
        }
        Some(Step::Continue)
    }
}

/// `-abc`: a single dash, a letter, and more characters.
fn is_short_group(arg: &str) -> bool {
    let bytes = arg.as_bytes();
    bytes.len() > 2 && bytes[0] == b'-' && bytes[1].is_ascii_alphabetic()
}

impl DaemonArgs {
    fn set_trust(&mut self, flag: &'static str, value: Option<TrustOverride>) {
        self.trust_override = value;
        self.trust_flag.get_or_insert(flag);
    }

    /// Refuses flags whose experimental feature is not enabled in the loaded `settings`, as
    /// Nix does: the trust flags need `daemon-trust-override`, `--process-ops` needs
    /// `mounted-ssh-store`.
    pub fn check_experimental_features(&self, settings: &Settings) -> Result<(), CliError> {
        if let Some(flag) = self.trust_flag {
            let feature = "daemon-trust-override";
            if !settings.has_experimental_feature(feature) {
                return Err(CliError::MissingExperimentalFeature { flag, feature });
            }
        }
        let feature = "mounted-ssh-store";
        if self.process_ops && !settings.has_experimental_feature(feature) {
            return Err(CliError::MissingExperimentalFeature {
                flag: "--process-ops",
                feature,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load, HostInfo};

    fn run(args: &[&str]) -> DaemonArgs {
        match parse_args(args.iter().copied()) {
            Ok(Command::Run(parsed)) => parsed,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> CliError {
        match parse_args(args.iter().copied()) {
            Err(error) => error,
            Ok(other) => panic!("{args:?} parsed: {other:?}"),
        }
    }

    fn flag(name: &str, value: &str) -> CommandLineSetting {
        CommandLineSetting::Flag {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn no_arguments() {
        assert_eq!(run(&[]), DaemonArgs::default());
    }

    #[test]
    fn daemon_flags() {
        let a = run(&["--stdio", "--daemon", "--process-ops"]);
        assert!(a.stdio && a.process_ops);
        assert_eq!(
            run(&["--hook-user", "nix-upload"]).hook_user.as_deref(),
            Some("nix-upload")
        );
        let a = run(&["--socket-path", "/run/ward.sock"]);
        assert_eq!(a.socket_path, Some(PathBuf::from("/run/ward.sock")));
        assert!(!a.stdio);
    }

    #[test]
    fn trust_flags_last_one_wins() {
        assert_eq!(
            run(&["--force-trusted"]).trust_override,
            Some(TrustOverride::Trusted)
        );
        assert_eq!(
            run(&["--force-trusted", "--force-untrusted"]).trust_override,
            Some(TrustOverride::Untrusted)
        );
        assert_eq!(
            run(&["--force-untrusted", "--default-trust"]).trust_override,
            None
        );
    }

    #[test]
    fn stdio_with_socket_path_is_refused() {
        assert_eq!(
            err(&["--stdio", "--socket-path", "/s"]),
            CliError::StdioWithSocketPath
        );
        assert_eq!(
            err(&["--socket-path", "/s", "--stdio"]),
            CliError::StdioWithSocketPath
        );
    }

    #[test]
    fn unknown_flags_and_arguments() {
        assert_eq!(err(&["--bogus"]), CliError::UnknownFlag("--bogus".into()));
        assert_eq!(err(&["-x"]), CliError::UnknownFlag("-x".into()));
        assert_eq!(err(&["-"]), CliError::UnknownFlag("-".into()));
        assert_eq!(err(&["-1"]), CliError::UnknownFlag("-1".into()));
        assert_eq!(
            err(&["--stdio=yes"]),
            CliError::UnknownFlag("--stdio=yes".into())
        );
        assert_eq!(
            err(&["--no-cores"]),
            CliError::UnknownFlag("--no-cores".into())
        );
        assert_eq!(
            err(&["--extra-cores", "1"]),
            CliError::UnknownFlag("--extra-cores".into())
        );
        assert_eq!(
            err(&["--relaxed-keep-failed"]),
            CliError::UnknownFlag("--relaxed-keep-failed".into())
        );
        assert_eq!(
            err(&["serve"]),
            CliError::UnexpectedArgument("serve".into())
        );
        assert_eq!(err(&["--bogus"]).to_string(), "unrecognised flag '--bogus'");
    }

    #[test]
    fn missing_values() {
        for (args, flag, count) in [
            (&["--option", "cores"][..], "--option", 2),
            (&["--option"][..], "--option", 2),
            (&["--socket-path"][..], "--socket-path", 1),
            (&["--log-format"][..], "--log-format", 1),
            (&["-j"][..], "-j", 1),
            (&["--store"][..], "--store", 1),
            (&["--cores"][..], "--cores", 1),
            (&["--substituters"][..], "--substituters", 1),
            (&["--extra-substituters"][..], "--extra-substituters", 1),
        ] {
            assert_eq!(
                err(args),
                CliError::MissingValue {
                    flag: flag.into(),
                    count
                },
                "{args:?}"
            );
        }
        assert_eq!(
            err(&["--option", "cores"]).to_string(),
            "flag '--option' requires 2 argument(s)"
        );
    }

    #[test]
    fn values_are_taken_verbatim_even_with_dashes() {
        let a = run(&["--option", "timeout", "-5", "--store", "--stdio"]);
        assert!(!a.stdio, "--stdio was the value of --store");
        assert_eq!(
            a.config.settings,
            [
                CommandLineSetting::Option {
                    name: "timeout".into(),
                    value: "-5".into()
                },
                flag("store", "--stdio"),
            ]
        );
    }

    #[test]
    fn options_and_setting_flags_in_order() {
        let a = run(&[
            "--option",
            "substituters",
            "https://a https://b",
            "--extra-substituters",
            "https://c",
            "--sandbox",
            "--no-sandbox",
            "--relaxed-sandbox",
            "--keep-outputs",
            "--no-require-sigs",
            "--extra-experimental-features",
            "nix-command",
            "--builders",
            "",
            "--show-trace",
        ]);
        assert_eq!(
            a.config.settings,
            [
                CommandLineSetting::Option {
                    name: "substituters".into(),
                    value: "https://a https://b".into()
                },
                flag("extra-substituters", "https://c"),
                flag("sandbox", "true"),
                flag("sandbox", "false"),
                flag("sandbox", "relaxed"),
                flag("keep-outputs", "true"),
                flag("require-sigs", "false"),
                flag("extra-experimental-features", "nix-command"),
                flag("builders", ""),
                flag("show-trace", "true"),
            ]
        );
    }

    #[test]
    fn legacy_setting_flags() {
        let a = run(&[
            "-K",
            "-k",
            "--fallback",
            "-j",
            "auto",
            "--cores",
            "2K",
            "--timeout",
            "60",
            "--max-silent-time",
            "1M",
            "--store",
            "local?root=/tmp/s",
            "--readonly-mode",
            "--no-gc-warning",
        ]);
        assert_eq!(
            a.config.settings,
            [
                flag("keep-failed", "true"),
                flag("keep-going", "true"),
                flag("fallback", "true"),
                flag("max-jobs", "auto"),
                flag("cores", "2048"),
                flag("timeout", "60"),
                flag("max-silent-time", "1048576"),
                flag("store", "local?root=/tmp/s"),
            ]
        );
        assert!(a.read_only);
    }

    #[test]
    fn busy_poll_has_a_default_is_set_in_microseconds_and_is_bounded() {
        assert_eq!(run(&[]).busy_poll, DEFAULT_BUSY_POLL);
        assert_eq!(run(&["--busy-poll", "0"]).busy_poll, Duration::ZERO);
        assert_eq!(
            run(&["--busy-poll", "250"]).busy_poll,
            Duration::from_micros(250)
        );
        assert_eq!(run(&["--busy-poll", "100000"]).busy_poll, MAX_BUSY_POLL);
        for (value, reason) in [
            ("100001", IntError::OutOfRange),
            ("1M", IntError::OutOfRange),
            ("-5", IntError::NotAnInteger),
            ("soon", IntError::NotAnInteger),
        ] {
            assert_eq!(
                err(&["--busy-poll", value]),
                CliError::InvalidNumber {
                    flag: "--busy-poll".into(),
                    value: value.into(),
                    reason,
                },
                "{value}"
            );
        }
        assert_eq!(
            err(&["--busy-poll"]),
            CliError::MissingValue {
                flag: "--busy-poll".into(),
                count: 1
            }
        );
    }

    #[test]
    fn number_flags_reject_garbage_and_overflow() {
        assert_eq!(
            err(&["--cores", "lots"]),
            CliError::InvalidNumber {
                flag: "--cores".into(),
                value: "lots".into(),
                reason: IntError::NotAnInteger
            }
        );
        assert_eq!(
            err(&["--timeout", "99999999T"]),
            CliError::InvalidNumber {
                flag: "--timeout".into(),
                value: "99999999T".into(),
                reason: IntError::OutOfRange
            }
        );
        assert!(matches!(
            err(&["--max-silent-time", "3X"]),
            CliError::InvalidNumber {
                reason: IntError::InvalidUnit('X'),
                ..
            }
        ));
    }

    #[test]
    fn verbosity_in_order() {
        assert_eq!(run(&["-v"]).verbosity, Verbosity::Talkative);
        assert_eq!(run(&["-vvv"]).verbosity, Verbosity::Debug);
        assert_eq!(run(&["-vvvvvvvvvv"]).verbosity, Verbosity::Vomit);
        assert_eq!(
            run(&["--verbose", "--quiet", "--quiet"]).verbosity,
            Verbosity::Notice
        );
        assert_eq!(run(&["--quiet"; 10]).verbosity, Verbosity::Error);
        assert_eq!(run(&["--debug", "-v"]).verbosity, Verbosity::Vomit);
        assert_eq!(run(&["-v", "--debug"]).verbosity, Verbosity::Debug);
    }

    #[test]
    fn short_groups() {
        let a = run(&["-vKj4"]);
        assert_eq!(a.verbosity, Verbosity::Talkative);
        assert_eq!(
            a.config.settings,
            [flag("keep-failed", "true"), flag("max-jobs", "4")]
        );
        assert_eq!(err(&["-vx"]), CliError::UnknownFlag("-x".into()));
        assert_eq!(run(&["-Lv"]).log_format, Some(LogFormat::BarWithLogs));
    }

    #[test]
    fn log_formats() {
        for (text, format) in [
            ("raw", LogFormat::Raw),
            ("raw-with-logs", LogFormat::RawWithLogs),
            ("internal-json", LogFormat::InternalJson),
            ("bar", LogFormat::Bar),
            ("bar-with-logs", LogFormat::BarWithLogs),
        ] {
            assert_eq!(run(&["--log-format", text]).log_format, Some(format));
        }
        assert_eq!(
            err(&["--log-format", "xml"]),
            CliError::InvalidLogFormat("xml".into())
        );
        assert_eq!(run(&["-L"]).log_format, Some(LogFormat::BarWithLogs));
        assert_eq!(
            run(&["--print-build-logs", "-Q"]).log_format,
            Some(LogFormat::Raw)
        );
    }

    #[test]
    fn offline_and_refresh() {
        let a = run(&["--offline", "--refresh"]);
        assert!(a.config.offline && a.config.refresh);
        assert!(run(&["--no-net"]).config.offline);
    }

    #[test]
    fn help_and_version_stop_parsing() {
        assert_eq!(parse_args(["--help", "--bogus"]), Ok(Command::Help));
        assert_eq!(
            parse_args(["--stdio", "--version", "--bogus"]),
            Ok(Command::Version)
        );
        assert_eq!(
            parse_args(["--bogus", "--help"]),
            Err(CliError::UnknownFlag("--bogus".into()))
        );
        assert!(HELP.contains("--stdio") && HELP.contains("--option NAME VALUE"));
    }

    #[test]
    fn dash_dash_passes_words_to_nix_daemon_matcher() {
        assert!(run(&["--", "--stdio"]).stdio);
        assert_eq!(
            err(&["--", "-v"]),
            CliError::UnexpectedArgument("-v".into())
        );
        assert_eq!(
            err(&["--", "--option"]),
            CliError::UnexpectedArgument("--option".into())
        );
        assert_eq!(
            err(&["--", "--"]),
            CliError::UnexpectedArgument("--".into())
        );
    }

    #[test]
    fn non_utf8_argument() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'-', b'-', 0xff]);
        assert!(matches!(parse_args([bad]), Err(CliError::NotUtf8(_))));
    }

    fn loaded(args: &[&str], env: &[(&str, &str)]) -> Settings {
        let parsed = run(args);
        let env: std::collections::HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        let lookup = move |name: &str| env.get(name).cloned();
        let host = HostInfo::fixed_for_tests();
        load(&lookup, &host, &parsed.config).unwrap().settings
    }

    #[test]
    fn experimental_feature_requirements() {
        let no_conf = [("NIX_CONF_DIR", "/nonexistent-ward-test")];
        let args = run(&["--force-trusted"]);
        let plain = loaded(&[], &no_conf);
        assert_eq!(
            args.check_experimental_features(&plain),
            Err(CliError::MissingExperimentalFeature {
                flag: "--force-trusted",
                feature: "daemon-trust-override"
            })
        );
        let enabled = loaded(
            &["--extra-experimental-features", "daemon-trust-override"],
            &no_conf,
        );
        assert_eq!(args.check_experimental_features(&enabled), Ok(()));
        assert!(run(&["--default-trust"])
            .check_experimental_features(&plain)
            .is_err());
        assert!(run(&["--process-ops"])
            .check_experimental_features(&plain)
            .is_err());
        assert!(run(&["--stdio"])
            .check_experimental_features(&plain)
            .is_ok());
    }
}
