//! The `ward` command line, as clap definitions. They drive parsing of the admin commands and
//! generate the man pages and shell completions (`docs.rs`). `ward daemon`'s own arguments are
//! parsed by Nix's rules in `ward_config::cli` (`--option NAME VALUE`, `-j4`, a flag for every
//! setting), which clap cannot express; [`daemon_command`] describes the same flags for the
//! documentation, and a test checks that the daemon's parser accepts every one of them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Args, Command, Parser, Subcommand};

/// ward: a privilege-separated Nix daemon.
#[derive(Debug, Parser)]
#[command(
    name = "ward",
    version,
    about = "ward: a privilege-separated drop-in replacement for the Nix daemon",
    long_about = "ward serves the Nix store to unmodified Nix clients over the Nix worker \
                  protocol. An unprivileged frontend parses everything clients send, a small \
                  root broker starts builds under build users in sandboxes, and a store-writer \
                  is the only process that writes the store. Invoked as 'nix-daemon', ward \
                  behaves as 'ward daemon'."
)]
pub struct WardCli {
    #[command(subcommand)]
    pub command: WardCommand,
}

/// The subcommands of `ward`.
#[derive(Debug, Subcommand)]
pub enum WardCommand {
    /// Serve the Nix worker protocol (takes nix-daemon's options; see ward-daemon(8)).
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Daemon {
        /// nix-daemon's options, parsed as Nix parses them.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "OPTION"
        )]
        args: Vec<OsString>,
    },
    /// As root: create the build users, ward's users, the store directories and the service
    /// units; take over a running Nix daemon's socket and store.
    Install(InstallArgs),
    /// As root: stop and remove what 'ward install' made; the store stays unless
    /// --delete-store.
    Uninstall(UninstallArgs),
    /// Print the daemon's effective settings as nix.conf lines, each with where its value
    /// came from (file and line, NIX_CONFIG, the command line, or the default).
    ShowConfig(ShowConfigArgs),
    /// Check the daemon, its socket, the build users, the store's owners and DB, the kernel's
    /// sandbox features and the settings; name each problem and the one command that fixes
    /// it (exit code 0 when healthy, 1 with findings).
    Doctor(DoctorArgs),
}

/// Options every admin command shares.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Act on the system under DIR instead of '/' (its /etc, /nix and unit directories);
    /// accounts are changed with useradd/groupadd --root DIR.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print every step and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `ward install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How many build users to create (nixbld1..N); default 32, or max-jobs if that is more.
    #[arg(long, value_name = "N")]
    pub build_users: Option<u32>,
    /// Where the ward binaries are, as the units should name them (default: beside this
    /// 'ward').
    #[arg(long, value_name = "DIR")]
    pub bindir: Option<PathBuf>,
    /// Write and enable the units but do not start them (also implied when systemd is not
    /// running, or with --root).
    #[arg(long)]
    pub no_start: bool,
}

/// `ward uninstall`.
#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Give the socket and the store back to the Nix daemon that 'ward install' took over:
    /// its units are restored and the store is handed back to root.
    #[arg(long)]
    pub restore_nix: bool,
    /// Also delete the store and its state (/nix/store, /nix/var/nix): every store path.
    #[arg(long, conflicts_with = "restore_nix")]
    pub delete_store: bool,
}

/// `ward show-config`.
#[derive(Debug, Clone, Args)]
pub struct ShowConfigArgs {
    /// Print a JSON object: each setting's name to its value and origin.
    #[arg(long)]
    pub json: bool,
    /// Show the settings of the system under DIR: its etc/nix/nix.conf; NIX_CONFIG is not
    /// read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// After '--': nix-daemon options, as the daemon would get them ('--option NAME VALUE',
    /// '--NAME VALUE', '-j N', '--offline', ...).
    #[arg(last = true, value_name = "DAEMON-OPTION")]
    pub daemon_args: Vec<OsString>,
}

/// `ward doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Check the system under DIR instead of '/': its etc/passwd and etc/group, its
    /// etc/nix/nix.conf, its unit directories, and its store as a chroot store (DIR/nix/store).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Apply the safe fixes (modes, owners, missing build users, a stale socket, ...) and say
    /// what was done; the exit code is 1 if anything is left.
    #[arg(long)]
    pub fix: bool,
    /// Print a JSON list of {check, status, message, fix_command, fixed}.
    #[arg(long)]
    pub json: bool,
    /// Check this daemon socket instead of the store's.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Run only this check (repeatable).
    #[arg(
        long = "check",
        value_name = "NAME",
        value_parser = clap::builder::PossibleValuesParser::new(super::doctor::CHECK_NAMES)
    )]
    pub checks: Vec<String>,
}

/// Parses `ward`'s arguments (without argv0).
pub fn parse(args: Vec<OsString>) -> Result<WardCli, clap::Error> {
    WardCli::try_parse_from(std::iter::once(OsString::from("ward")).chain(args))
}

/// A flag of `ward daemon`, for the documentation.
struct DaemonFlag {
    long: &'static str,
    short: Option<char>,
    values: &'static [&'static str],
    help: &'static str,
    heading: &'static str,
}

const DAEMON: &str = "Daemon options";
const SETTINGS: &str = "Settings";
const LOGGING: &str = "Logging";

const fn flag(
    long: &'static str,
    short: Option<char>,
    values: &'static [&'static str],
    help: &'static str,
    heading: &'static str,
) -> DaemonFlag {
    DaemonFlag {
        long,
        short,
        values,
        help,
        heading,
    }
}

/// Every flag of `ward daemon` / `nix-daemon` that has a fixed name (each setting also has
/// `--NAME VALUE`, `--extra-NAME VALUE` and, for booleans, `--NAME`/`--no-NAME`).
const DAEMON_FLAGS: &[DaemonFlag] = &[
    flag("stdio", None, &[], "Serve a single client on standard input and output.", DAEMON),
    flag("socket-path", None, &["PATH"], "Listen on PATH (not together with --stdio).", DAEMON),
    flag("force-trusted", None, &[], "Treat every client as trusted (needs experimental feature daemon-trust-override).", DAEMON),
    flag("force-untrusted", None, &[], "Treat every client as untrusted (needs experimental feature daemon-trust-override).", DAEMON),
    flag("default-trust", None, &[], "Decide trust from trusted-users, the default (needs experimental feature daemon-trust-override).", DAEMON),
    flag("process-ops", None, &[], "Serve operations locally even when the store is remote (needs experimental feature mounted-ssh-store).", DAEMON),
    flag("store", None, &["URL"], "The store to serve: a directory (a chroot store) or 'local?root=DIR' (setting 'store').", DAEMON),
    flag("daemon", None, &[], "Accepted and ignored, for old scripts.", DAEMON),
    flag("busy-poll", None, &["MICROSECONDS"], "ward only: after a reply, while a client sends requests back to back, keep polling this long before sleeping (default 400; 0 turns it off; at most 100000).", DAEMON),
    flag("hook-user", None, &["USER"], "ward only: run a root-owned post-build-hook as USER (ward never runs hooks as root; a hook program owned by another user runs as its owner).", DAEMON),
    flag("option", None, &["NAME", "VALUE"], "Set a nix.conf setting; a bad value is only a warning.", SETTINGS),
    flag("relaxed-sandbox", None, &[], "sandbox = relaxed.", SETTINGS),
    flag("max-jobs", Some('j'), &["N"], "max-jobs (a number or 'auto').", SETTINGS),
    flag("cores", None, &["N"], "cores; numbers may end in K, M, G or T.", SETTINGS),
    flag("timeout", None, &["SECONDS"], "timeout for each build.", SETTINGS),
    flag("max-silent-time", None, &["SECONDS"], "max-silent-time for each build.", SETTINGS),
    flag("keep-failed", Some('K'), &[], "keep-failed = true.", SETTINGS),
    flag("keep-going", Some('k'), &[], "keep-going = true.", SETTINGS),
    flag("fallback", None, &[], "fallback = true.", SETTINGS),
    flag("offline", None, &[], "No substituters, no network waits.", SETTINGS),
    flag("refresh", None, &[], "Treat cached downloads as stale.", SETTINGS),
    flag("readonly-mode", None, &[], "Do not write to the store.", SETTINGS),
    flag("verbose", Some('v'), &[], "Log more (repeatable).", LOGGING),
    flag("quiet", None, &[], "Log less.", LOGGING),
    flag("debug", None, &[], "Log at debug level.", LOGGING),
    flag("log-format", None, &["FORMAT"], "raw, raw-with-logs, internal-json, bar or bar-with-logs.", LOGGING),
    flag("print-build-logs", Some('L'), &[], "Same as --log-format bar-with-logs.", LOGGING),
    flag("no-build-output", Some('Q'), &[], "Same as --log-format raw.", LOGGING),
];

/// `ward daemon` as a clap command, for the man page and completions only.
pub fn daemon_command() -> Command {
    let mut cmd = Command::new("ward-daemon")
        .bin_name("ward daemon")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Serve the Nix store to Nix clients over the Nix worker protocol")
        .long_about(
            "Serve the Nix store to Nix clients over the Nix worker protocol. By default ward \
             listens on the daemon socket ($NIX_DAEMON_SOCKET_PATH, or \
             $NIX_STATE_DIR/daemon-socket/socket), or on the socket systemd or launchd hands \
             over. Invoked as 'nix-daemon', ward takes the same options.\n\n\
             Settings are read from $NIX_CONF_DIR/nix.conf (default /etc/nix/nix.conf), then \
             from $NIX_CONFIG, then from the command line. Every setting NAME also has the \
             flags --NAME VALUE and --extra-NAME VALUE (lists), or --NAME and --no-NAME \
             (booleans). SIGHUP re-reads nix.conf: changed settings apply to new \
             connections. SIGTERM stops the daemon after draining its connections.",
        )
        .after_long_help(
            "Files: /etc/nix/nix.conf (settings); /nix/var/nix/daemon-socket/socket (the \
             socket); /nix/var/nix/db/db.sqlite (the store's database, written only by the \
             store-writer); units nix-daemon.socket and nix-daemon.service (systemd) or \
             org.nixos.nix-daemon (launchd).\n\n\
             Signals: SIGHUP re-reads nix.conf (systemctl reload nix-daemon): changed \
             settings apply to new connections and the log names each change; settings fixed \
             at start (store, sandbox, build users) are logged as needing a restart. SIGTERM \
             drains: no new connections are accepted (they wait on a socket-activated socket \
             for the next start), running builds are cancelled, operations in progress finish, \
             and the daemon exits within 10 seconds.\n\n\
             Logs: to the journal with fields CONNECTION, UID, PID and DRV when run by \
             systemd, else to standard error. See ward(1), ward-doctor(8), ward-install(8).",
        )
        .disable_help_flag(true)
        .disable_version_flag(true);
    for f in DAEMON_FLAGS {
        let mut arg = Arg::new(f.long)
            .long(f.long)
            .help(f.help)
            .help_heading(f.heading);
        if let Some(short) = f.short {
            arg = arg.short(short);
        }
        arg = match f.values.len() {
            0 if f.long == "verbose" => arg.action(ArgAction::Count),
            0 => arg.action(ArgAction::SetTrue),
            n => arg.num_args(n).value_names(f.values.iter().copied()),
        };
        if f.long == "socket-path" {
            arg = arg.value_hint(clap::ValueHint::FilePath);
        } else if f.long == "store" {
            arg = arg.value_hint(clap::ValueHint::DirPath);
        } else if f.long == "log-format" {
            arg = arg.value_parser([
                "raw",
                "raw-with-logs",
                "internal-json",
                "bar",
                "bar-with-logs",
            ]);
        }
        cmd = cmd.arg(arg);
    }
    cmd.arg(
        Arg::new("help")
            .long("help")
            .action(ArgAction::Help)
            .help("Show the options."),
    )
    .arg(
        Arg::new("version")
            .long("version")
            .action(ArgAction::Version)
            .help("Show the version."),
    )
}

/// `ward` with its subcommands, `daemon` described in full, for the documentation.
pub fn ward_command() -> Command {
    use clap::CommandFactory;
    WardCli::command().mut_subcommand("daemon", |_| {
        daemon_command().name("daemon").bin_name("ward daemon")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clap_definitions_are_consistent() {
        WardCli::command_for_tests().debug_assert();
        daemon_command().debug_assert();
        ward_command().debug_assert();
    }

    impl WardCli {
        fn command_for_tests() -> Command {
            <WardCli as clap::CommandFactory>::command()
        }
    }

    /// Every documented daemon flag is one the daemon's own parser accepts, with the values
    /// the documentation names.
    #[test]
    fn the_daemon_parser_accepts_every_documented_flag() {
        for f in DAEMON_FLAGS {
            let values: Vec<&str> = match f.long {
                "option" => vec!["cores", "2"],
                "log-format" => vec!["raw"],
                "busy-poll" => vec!["100"],
                "store" | "socket-path" => vec!["/tmp/ward-doc-test"],
                "hook-user" => vec!["nobody"],
                _ => f.values.iter().map(|_| "3").collect(),
            };
            let mut args = vec![format!("--{}", f.long)];
            args.extend(values.iter().map(|v| v.to_string()));
            let parsed = ward_config::cli::parse_args(args.clone());
            assert!(parsed.is_ok(), "{args:?}: {parsed:?}");
            if let Some(short) = f.short {
                let mut args = vec![format!("-{short}")];
                args.extend(values.iter().map(|v| v.to_string()));
                let parsed = ward_config::cli::parse_args(args.clone());
                assert!(parsed.is_ok(), "{args:?}: {parsed:?}");
            }
        }
    }

    #[test]
    fn daemon_arguments_pass_through_untouched() {
        let cli = parse(
            ["daemon", "--option", "cores", "2", "-j4", "--help"]
                .iter()
                .map(OsString::from)
                .collect(),
        )
        .unwrap();
        match cli.command {
            WardCommand::Daemon { args } => assert_eq!(
                args,
                ["--option", "cores", "2", "-j4", "--help"]
                    .iter()
                    .map(OsString::from)
                    .collect::<Vec<_>>()
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn show_config_takes_daemon_options_after_the_separator() {
        let cli = parse(
            [
                "show-config",
                "--json",
                "--",
                "--option",
                "cores",
                "3",
                "-j4",
            ]
            .iter()
            .map(OsString::from)
            .collect(),
        )
        .unwrap();
        match cli.command {
            WardCommand::ShowConfig(args) => {
                assert!(args.json);
                assert_eq!(args.root, PathBuf::from("/"));
                assert_eq!(args.daemon_args, ["--option", "cores", "3", "-j4"]);
            }
            other => panic!("{other:?}"),
        }
        // Daemon options need the separator.
        assert!(parse(
            ["show-config", "--cores", "3"]
                .iter()
                .map(OsString::from)
                .collect()
        )
        .is_err());
    }

    #[test]
    fn uninstall_refuses_restore_together_with_delete() {
        let err = parse(
            ["uninstall", "--restore-nix", "--delete-store"]
                .iter()
                .map(OsString::from)
                .collect(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
