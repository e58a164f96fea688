//! Helpers of the build tests: sandboxed daemons with Debian's static busybox as `/bin/sh`,
//! and derivations written as Nix expressions.

use std::path::{Path, PathBuf};

use crate::{inputs, notice, DaemonOptions, Fixture, NixClient};

/// The sandbox's shell: Debian's busybox-static (its shell runs applets without a PATH).
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether busybox-static is installed; prints `SKIPPED <test>: …` when it is not.
pub fn have_busybox(test: &str) -> bool {
    if Path::new(BUSYBOX).exists() {
        true
    } else {
        notice(&format!(
            "SKIPPED {test}: needs Debian's busybox-static at {BUSYBOX} (apt-get install busybox-static)"
        ));
        false
    }
}

/// Daemon options for sandboxed builds.
pub fn sandboxed(options: DaemonOptions) -> DaemonOptions {
    options
        .conf("sandbox = true")
        .conf(format!("sandbox-paths = /bin/sh={BUSYBOX}"))
}

/// A sandboxed daemon with `options`, or `None` (after a SKIPPED line) when the Nix client,
/// busybox or (for multi-user) root is missing.
pub fn start(test: &str, options: DaemonOptions) -> Option<Fixture> {
    if !have_busybox(test) {
        return None;
    }
    Fixture::start(test, sandboxed(options))
}

/// Like [`start`], with `sandbox = <mode>` (`true`, `false` or `relaxed`) instead of `true`.
pub fn start_with_sandbox(test: &str, mode: &str, options: DaemonOptions) -> Option<Fixture> {
    if !have_busybox(test) {
        return None;
    }
    Fixture::start(test, sandboxed(options).conf(format!("sandbox = {mode}")))
}

/// Writes `name.nix` holding `body` into the test's expression directory.
pub fn expr(f: &Fixture, name: &str, body: &str) -> PathBuf {
    let dir = f.env.dir("expr");
    inputs::file(&dir, &format!("{name}.nix"), body.as_bytes())
}

/// A derivation expression running `script` with busybox's sh; `extra` is spliced in as
/// further attributes.
pub fn drv(name: &str, script: &str, extra: &str) -> String {
    format!(
        r#"derivation {{
  name = "{name}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" {script:?} ];
  {extra}
}}"#
    )
}

/// Builds `file` with `nix-build --no-out-link` and returns the output path printed.
pub fn build(client: &NixClient, file: &Path) -> String {
    client
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"])
        .single_line()
}

/// The contents of the output file `out` (a store path) in the daemon's store.
pub fn read_output(f: &Fixture, out: &str) -> String {
    let real = f.daemon.layout().real_path(out);
    std::fs::read_to_string(&real).unwrap_or_else(|e| panic!("reading {}: {e}", real.display()))
}

/// Instantiates `file`, realises it expecting failure, and checks that nothing but the .drv
/// files was registered. Returns the client's stderr.
pub fn fails_registering_nothing(f: &Fixture, file: &Path, extra: &[&str]) -> String {
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let before = f.ward.all_valid_paths();
    let mut args = vec!["--realise", drv_path.as_str()];
    args.extend_from_slice(extra);
    let stderr = f.ward.fails("nix-store", &args).stderr.clone();
    assert_eq!(
        f.ward.all_valid_paths(),
        before,
        "nothing registered: {stderr}"
    );
    stderr
}
