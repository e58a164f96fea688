//! `ward-gen-docs [DIR]`: writes ward's man pages and shell completions, generated from its
//! clap definitions, into DIR (default: the repository's `doc/`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(ward_frontend::admin::docs::repository_doc_dir);
    match ward_frontend::admin::docs::write_all(&dir) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ward-gen-docs: writing into '{}': {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
