//! `ward doctor [--fix] [--json] [--root DIR] [--socket PATH] [--check NAME]`: the checks Nix
//! admins otherwise script by hand. Each finding says what is wrong, names the path, user or
//! setting, and gives the one command that fixes it; `--fix` applies the fixes that are safe
//! (what the daemon or `ward install` would do anyway: modes, owners, missing build users, a
//! stale socket) and says what it did.
//!
//! Exit code: 0 when healthy, 1 when anything is left (after `--fix`: unfixed), 64 for bad
//! usage.
//!
//! The checks, in order: `config` (the settings can be read), `daemon` (the socket answers a
//! worker-protocol handshake; if not, why), `socket` (modes and owners of the socket and its
//! directories), `build-users`, `store` (owners and modes of the store, state and DB),
//! `database` (`PRAGMA integrity_check`, read-only), `sandbox` (what the kernel offers),
//! `settings` (risky nix.conf settings), `disk` (space and inodes against `min-free`),
//! `client` (`NIX_REMOTE` and nix.conf's `store`) and `units` (systemd units).

mod daemon;
mod fixes;
mod kernel;
mod report;
mod settings;
mod store;
mod units;
mod users;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ward_config::cli::DaemonArgs;
use ward_config::daemon::DaemonSetup;
use ward_config::{CommandLineConfig, CommandLineSetting, EnvDefaults, HostInfo, Settings};

use super::cli::{DoctorArgs, TargetArgs};
use super::target::Target;
pub use daemon::{probe, Probe};
pub use report::{Check, Finding, Fix, Report, Status};

/// Exit code for bad usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// How many rounds of fixes `--fix` runs (a fix can reveal the next problem: a created build
/// group has no members yet).
const FIX_ROUNDS: usize = 3;

/// The names `--check` accepts.
pub const CHECK_NAMES: [&str; 11] = [
    "config",
    "daemon",
    "socket",
    "build-users",
    "store",
    "database",
    "sandbox",
    "settings",
    "disk",
    "client",
    "units",
];

/// Why the doctor could not even start.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--root` or `--socket` is not usable.
    #[error("{0}")]
    Usage(String),
}

/// Everything the checks look at, gathered once per run.
#[derive(Debug)]
pub struct Context {
    /// The system checked.
    pub target: Target,
    /// The daemon's settings and layout as the target's daemon would read them.
    pub setup: DaemonSetup,
    /// Problems reading the settings (check `config`).
    pub config_findings: Vec<Finding>,
    /// The `store` setting as Nix clients read the target's nix.conf (without `NIX_REMOTE`).
    pub client_store: Option<String>,
    /// The target's nix.conf.
    pub conf_file: PathBuf,
    /// The daemon socket checked.
    pub socket: PathBuf,
    /// Whether the socket is the layout's (no `--socket`).
    pub socket_is_default: bool,
    /// Whether the daemon runs as root (build users, ward's store owner): always on `/`, and
    /// whenever the doctor runs as root.
    pub multi_user: bool,
    /// Who runs the doctor.
    pub euid: u32,
    /// What the socket said.
    pub probe: Probe,
    /// This environment's `NIX_REMOTE`.
    pub nix_remote: Option<String>,
}

impl Context {
    /// Gathers the context for `args`.
    pub fn gather(args: &DoctorArgs) -> Result<Context, DoctorError> {
        let target = Target::new(&TargetArgs {
            root: args.root.clone(),
            dry_run: false,
        })
        .map_err(|e| DoctorError::Usage(e.to_string()))?;
        if !target.is_live() && !target.root.is_dir() {
            return Err(DoctorError::Usage(format!(
                "--root '{}' is not a directory",
                target.root.display()
            )));
        }
        if let Some(socket) = &args.socket {
            if !socket.is_absolute() {
                return Err(DoctorError::Usage(format!(
                    "--socket '{}' must be an absolute path",
                    socket.display()
                )));
            }
        }
        let base_env = target.env();
        // The daemon does not read NIX_REMOTE as a client does (under systemd it has none);
        // the client check looks at it separately.
        let env = move |name: &str| -> Option<OsString> {
            if name == "NIX_REMOTE" {
                None
            } else {
                base_env(name)
            }
        };
        let host = HostInfo::detect();
        let mut config_findings = Vec::new();
        let conf_file_of = |settings: &Settings| PathBuf::from(&settings.conf_dir).join("nix.conf");
        let client = ward_config::load(&env, &host, &CommandLineConfig::default());
        let client_store = match &client {
            Ok(loaded) => Some(loaded.settings.store.clone()),
            Err(_) => None,
        };
        let mut daemon_args = DaemonArgs::default();
        let store_flag = |value: String| CommandLineSetting::Flag {
            name: "store".into(),
            value,
        };
        if !target.is_live() {
            daemon_args
                .config
                .settings
                .push(store_flag(target.root.display().to_string()));
        } else if let Ok(loaded) = &client {
            // A store setting the daemon cannot serve is the client check's finding; the
            // other checks look at the local store.
            if ward_config::layout::resolve(&loaded.settings, None, None).is_err() {
                daemon_args.config.settings.push(store_flag("auto".into()));
            }
        }
        let setup = match ward_config::daemon::load_setup_with(daemon_args, &env, false) {
            Ok(setup) => setup,
            Err(e) => {
                let fallback = fallback_setup(&target, &env, &host)?;
                let file = conf_file_of(&fallback.settings);
                config_findings.push(
                    Finding::error(
                        Check::Config,
                        "unreadable",
                        format!(
                            "the daemon's settings cannot be read ({e}); the other checks use \
                             the defaults"
                        ),
                    )
                    .command(format!("correct {}", file.display())),
                );
                fallback
            }
        };
        let conf_file = conf_file_of(&setup.settings);
        let socket = args
            .socket
            .clone()
            .unwrap_or_else(|| setup.layout.socket_path.clone());
        let socket_is_default = socket == setup.layout.socket_path;
        let euid = nix::unistd::geteuid().as_raw();
        let probe = daemon::probe(&socket);
        Ok(Context {
            multi_user: euid == 0 || target.is_live(),
            nix_remote: std::env::var("NIX_REMOTE").ok(),
            target,
            setup,
            config_findings,
            client_store,
            conf_file,
            socket,
            socket_is_default,
            euid,
            probe,
        })
    }

    /// The command that starts the daemon for this target.
    pub fn start_command(&self) -> String {
        if self.target.systemd_running() {
            return "systemctl start nix-daemon.socket".to_owned();
        }
        let mut command = if self.target.is_live() {
            "ward daemon".to_owned()
        } else {
            format!(
                "NIX_CONF_DIR={} ward daemon --store {}",
                quote(&self.target.path("etc/nix")),
                quote(&self.target.root)
            )
        };
        if !self.socket_is_default {
            command.push_str(&format!(" --socket-path {}", quote(&self.socket)));
        }
        command
    }

    /// Whether the target has `nix-daemon.socket` where systemd looks for it.
    pub fn units_installed(&self) -> bool {
        units::find_unit(&self.target, units::SOCKET_NAME).is_some()
    }

    /// Whether Nix's own daemon, not ward, serves this store: the daemon that answered says
    /// so, or (none answered) the service unit systemd would start is Nix's.
    pub fn nix_daemon_serves(&self) -> bool {
        match self.probe.is_ward() {
            Some(is_ward) => !is_ward,
            None => matches!(
                units::find_unit(&self.target, units::SERVICE_NAME),
                Some((_, Some(text))) if !crate::admin::install::is_ward_unit(&text)
            ),
        }
    }

    /// A uid's name on the target, or the number.
    pub fn user_name(&self, uid: u32) -> String {
        self.target
            .user_by_uid(uid)
            .map(|a| a.name)
            .unwrap_or_else(|| uid.to_string())
    }

    /// `set 'LINE' in FILE`: how a nix.conf fix is worded.
    pub fn conf_line(&self, line: &str) -> String {
        format!("set '{line}' in {}", self.conf_file.display())
    }
}

/// The defaults, for when the settings cannot be read.
fn fallback_setup(
    target: &Target,
    env: &dyn Fn(&str) -> Option<OsString>,
    host: &HostInfo,
) -> Result<DaemonSetup, DoctorError> {
    let env_defaults = EnvDefaults::from_env(env)
        .or_else(|_| EnvDefaults::from_env(&|_| None))
        .map_err(|e| DoctorError::Usage(e.to_string()))?;
    let mut settings = Settings::defaults(host, &env_defaults);
    if !target.is_live() {
        settings.store = target.root.display().to_string();
    } else {
        settings.store = "auto".into();
    }
    let layout = ward_config::layout::resolve(&settings, None, None)
        .map_err(|e| DoctorError::Usage(e.to_string()))?;
    Ok(DaemonSetup {
        args: DaemonArgs::default(),
        settings,
        layout,
    })
}

/// Runs the selected checks; every check that found nothing says so.
pub fn run_checks(ctx: &Context, selected: &[Check]) -> Vec<Finding> {
    let mut out = Vec::new();
    for check in Check::ALL {
        if !selected.is_empty() && !selected.contains(&check) {
            continue;
        }
        let found = match check {
            Check::Config => ctx.config_findings.clone(),
            Check::Daemon => daemon::check_daemon(ctx),
            Check::Socket => daemon::check_socket(ctx),
            Check::BuildUsers => users::check_build_users(ctx),
            Check::Store => store::check_store(ctx),
            Check::Database => store::check_database(ctx),
            Check::Sandbox => kernel::check_sandbox(),
            Check::Settings => settings::check_settings(ctx),
            Check::Disk => store::check_disk(ctx),
            Check::Client => settings::check_client(ctx),
            Check::Units => units::check_units(ctx),
        };
        if found.is_empty() {
            out.push(Finding::ok(check, check.all_clear()));
        } else {
            out.extend(found);
        }
    }
    out
}

/// Runs the doctor: checks, `--fix` rounds, and the report.
pub fn diagnose(args: &DoctorArgs) -> Result<Report, DoctorError> {
    let selected: Vec<Check> = args
        .checks
        .iter()
        .map(|name| {
            Check::from_name(name).ok_or_else(|| {
                DoctorError::Usage(format!(
                    "unknown check '{name}'; the checks are: {}",
                    CHECK_NAMES.join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let ctx = Context::gather(args)?;
    let first = run_checks(&ctx, &selected);
    if !args.fix {
        return Ok(report::plain(first));
    }
    let mut applied: Vec<(Finding, Result<String, String>)> = Vec::new();
    let mut tried: Vec<Fix> = Vec::new();
    let mut ctx = ctx;
    let mut latest = first.clone();
    for _ in 0..FIX_ROUNDS {
        let mut any = false;
        for finding in latest.iter().filter(|f| f.is_problem()) {
            let Some(fix) = &finding.fix else {
                continue;
            };
            if tried.contains(fix) {
                continue;
            }
            tried.push(fix.clone());
            any = true;
            applied.push((finding.clone(), fixes::apply(&ctx, fix)));
        }
        if !any {
            break;
        }
        ctx = Context::gather(args)?;
        latest = run_checks(&ctx, &selected);
    }
    if applied.is_empty() {
        return Ok(report::plain(first));
    }
    Ok(report::merge(&applied, latest))
}

/// `ward doctor`.
pub fn doctor(args: &DoctorArgs) -> ExitCode {
    match diagnose(args) {
        Ok(report) => {
            if args.json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.render_text(args.fix));
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("ward doctor: error: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// A path as a shell would need it typed.
pub fn quote(path: &Path) -> String {
    quote_str(&path.display().to_string())
}

/// A word as a shell would need it typed.
pub fn quote_str(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_match_the_checks() {
        let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, CHECK_NAMES);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(Path::new("/nix/var/nix")), "/nix/var/nix");
        assert_eq!(quote_str("a b"), "'a b'");
        assert_eq!(quote_str("it's"), "'it'\\''s'");
    }

    fn args(root: &Path) -> DoctorArgs {
        DoctorArgs {
            root: root.to_path_buf(),
            fix: false,
            json: false,
            socket: None,
            checks: Vec::new(),
        }
    }

    #[test]
    fn a_scratch_root_is_a_chroot_store_with_its_own_nix_conf() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/nix")).unwrap();
        std::fs::write(dir.path().join("etc/nix/nix.conf"), "store = daemon\n").unwrap();
        let ctx = Context::gather(&args(dir.path())).unwrap();
        assert_eq!(
            ctx.setup.layout.socket_path,
            dir.path().join("nix/var/nix/daemon-socket/socket")
        );
        assert_eq!(ctx.conf_file, dir.path().join("etc/nix/nix.conf"));
        assert_eq!(ctx.client_store.as_deref(), Some("daemon"));
        assert!(ctx.config_findings.is_empty());
        assert_eq!(ctx.probe, Probe::Missing { dir_missing: true });
        assert!(ctx.start_command().contains("--store"));
    }

    #[test]
    fn unreadable_settings_are_a_finding_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/nix")).unwrap();
        std::fs::write(dir.path().join("etc/nix/nix.conf"), "max-jobs = lots\n").unwrap();
        let ctx = Context::gather(&args(dir.path())).unwrap();
        assert_eq!(ctx.config_findings.len(), 1, "{:?}", ctx.config_findings);
        assert_eq!(
            ctx.setup.layout.real_store_dir,
            dir.path().join("nix/store")
        );
    }

    #[test]
    fn bad_usage_is_refused() {
        let mut a = args(Path::new("relative"));
        assert!(matches!(diagnose(&a), Err(DoctorError::Usage(_))));
        a.root = PathBuf::from("/");
        a.checks = vec!["nonsense".into()];
        assert!(matches!(diagnose(&a), Err(DoctorError::Usage(_))));
    }
}
