//! The attack catalog (`../shared/reference/attacks.md`, section 6) as one suite: every row is
//! an attack performed for real against a running multi-user ward, and its safe outcome is
//! checked. Hostile clients speak the wire protocol themselves; hostile builders are
//! derivations built through the real Nix 2.8 client; hostile NARs and narinfos are crafted
//! bytes, served from a local binary cache where they would come from one.
//!
//! Besides what each row asserts, the harness checks after every row that
//! - the store is unchanged: the DB rows and a listing with a checksum of every file in the
//!   store directory, taken when the row arms its guard (rows whose attack is a build that
//!   succeeds while its misdeeds fail may add that build's outputs, and nothing else);
//! - no file outside the store was touched: canary files (a secret, a public file and a
//!   victim directory) and `/etc/shadow` and `/etc/passwd` keep contents, mode, owner and
//!   mtime;
//! - the daemon still serves another client.
//!
//! `cargo test -p ward-e2e-tests --test attacks [-- ID…]` runs every row (or those named) and
//! prints `N passed, N failed` for each category. Rows that cannot run on this host say why
//! and count as skipped, never as passed. Advisories A1–A21 map onto rows (`ADVISORIES`);
//! those that do not apply to a Linux daemon are explained in SECURITY.md.

mod builder;
mod client;
mod frontend;
mod harness;
mod local;
mod nar_attacks;
mod resources;

use harness::{Attack, Category};

/// Which rows stand for each advisory of section 1 (SECURITY.md, "The attack catalog", says
/// why the ones with no row do not apply here).
pub const ADVISORIES: &[(&str, &[&str])] = &[
    ("A1", &["L1"]),
    ("A2", &["B16"]),
    ("A3", &["B1", "L4"]),
    ("A4", &["L1", "B4"]),
    ("A5", &["N2"]),
    ("A6", &["N12"]),
    ("A7", &["C16"]),
    ("A8", &["L8", "B4"]),
    ("A9", &["B13"]),
    ("A10", &["B2"]),
    ("A11", &["L2"]),
    ("A12", &["B15"]),
    ("A13", &["B16"]),
    ("A14", &["B18"]),
    ("A15", &["C16"]),
    ("A16", &["B22", "L4"]),
    ("A17", &["N4", "C12"]),
    ("A18", &["N5", "C13"]),
    ("A19", &["N11"]),
    ("A20", &["N8", "N10"]),
    ("A21", &["C9"]),
];

fn rows() -> Vec<Attack> {
    let mut all = Vec::new();
    all.extend(client::rows());
    all.extend(builder::rows());
    all.extend(nar_attacks::rows());
    all.extend(local::rows());
    all.extend(resources::rows());
    all.extend(frontend::rows());
    all
}

fn main() -> std::process::ExitCode {
    if let Some(code) = harness::helper_mode() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo's own test flags (--nocapture, --test-threads=N, …) mean nothing here.
    let wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for row in rows() {
            println!("{}: test", row.id);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let rows: Vec<Attack> = rows()
        .into_iter()
        .filter(|r| wanted.is_empty() || wanted.contains(&r.id))
        .collect();
    for (advisory, covering) in ADVISORIES {
        for id in *covering {
            assert!(
                harness::is_known_row(id),
                "{advisory} names row {id}, which the suite lacks"
            );
        }
    }
    harness::run(&rows, Category::ALL)
}
