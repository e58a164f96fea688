//! ward-frontend: the unprivileged process that speaks the Nix worker protocol to clients.
//!
//! Started by the broker as `ward-frontend --listen-fd 3 --ipc-dir DIR -- <daemon args>`, with
//! the listening socket (or, for `--stdio`, one connected socket) at fd 3.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match ward_frontend::process::run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-frontend: {e}");
            ExitCode::FAILURE
        }
    }
}
