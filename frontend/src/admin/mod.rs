//! `ward`'s commands for admins: the entry point of the `ward` binary, `install`,
//! `uninstall`, `show-config`, and the generated documentation. They run as whoever invokes
//! them (root for the ones that change the system) and read no client bytes.

pub mod cli;
pub mod docs;
pub mod doctor;
pub mod install;
pub mod show_config;
pub mod target;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::ExitCode;

use cli::WardCommand;

/// Entry point of the `ward` binary (also installed as `nix-daemon`).
pub fn ward_main() -> ExitCode {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_else(|| OsString::from("ward"));
    let invoked_as = Path::new(&argv0)
        .file_name()
        .unwrap_or(OsStr::new("ward"))
        .to_owned();
    let rest: Vec<OsString> = argv.collect();
    if invoked_as == "nix-daemon" {
        return crate::launch::daemon_main("nix-daemon", rest);
    }
    let parsed = match cli::parse(rest) {
        Ok(parsed) => parsed,
        Err(e) => {
            // clap prints help and version itself and picks the exit code (2 for misuse).
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(64),
            };
        }
    };
    let result = match parsed.command {
        WardCommand::Daemon { args } => return crate::launch::daemon_main("ward daemon", args),
        WardCommand::Install(args) => install::install(&args),
        WardCommand::Uninstall(args) => install::uninstall(&args),
        WardCommand::ShowConfig(args) => show_config::show_config(&args),
        WardCommand::Doctor(args) => return doctor::doctor(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward: error: {e}");
            ExitCode::FAILURE
        }
    }
}
