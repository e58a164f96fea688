//! ward-broker: the small root process that supervises the frontend and the store-writer
//! (and, later, starts builders).
//!
//! It parses no client bytes: its only input is its own command line from `ward daemon` and the
//! typed requests listed in `proto`'s broker IPC file. It depends on no parser of client data,
//! no async runtime and no SQLite. All `unsafe` lives in [`sys`].

/// `eprintln!`, but the line reaches stderr in one `write`: stderr is unbuffered, so
/// `eprintln!` writes each piece on its own, and a reader of the log (or a line from the
/// frontend written meanwhile to the same file) could split a line in two.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

mod args;
mod builds;
mod cgroup;
mod exec;
mod hooks;
mod pool;
mod roots;
mod service;
mod supervisor;
mod sys;
mod tree;
mod user_dirs;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match args::BrokerArgs::parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            say!("ward-broker: {e}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = args.build.check_for(nix::unistd::geteuid().as_raw()) {
        say!("ward-broker: {e}");
        return ExitCode::from(64);
    }
    if let Err(e) = supervisor::check_listen_fd(args.listen_fd)
        .and_then(|()| match args.parent_pid {
            Some(parent) => supervisor::exit_with_parent(parent),
            None => Ok(()),
        })
        .and_then(|()| supervisor::run(&args))
    {
        say!("ward-broker: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
