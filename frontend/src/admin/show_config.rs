//! `ward show-config`: the daemon's effective settings, each with where its value came from.
//!
//! The settings are loaded exactly as `ward daemon` loads them (`ward_config::load`: defaults,
//! `$NIX_CONF_DIR/nix.conf` and the files it includes, `NIX_CONFIG`, then the nix-daemon
//! options given after `--`, parsed by Nix's rules in `ward_config::cli`). With `--root DIR`
//! they are those of the system under DIR: `DIR/etc/nix/nix.conf`, without `NIX_CONFIG`.
//!
//! Plain output is one `name = value` line per setting, sorted by name, with the origin as a
//! `# ...` comment aligned after it, so the output is itself a valid `nix.conf`. An origin is
//! `FILE:LINE`, `NIX_CONFIG:LINE`, `the command line` or `default`; a list that `extra-NAME`
//! lines added to names every assignment its value is made of, joined by ` + ` (e.g.
//! `default + /etc/nix/nix.conf:4`), since the last one alone would not explain the value.
//! `--json` prints an object mapping each name to `{"value": ..., "origin": ...}`, the same
//! strings. Daemon options that are not settings (`--stdio`, `--socket-path`, ...) are
//! accepted and ignored. Warnings (unknown settings, ...) go to stderr.

use std::fmt::Write as _;

use ward_config::cli::{self, Command};
use ward_config::daemon::DaemonError;
use ward_config::{HostInfo, Loaded};

use super::cli::{ShowConfigArgs, TargetArgs};
use super::target::{AdminError, Target};

/// Lines whose `name = value` part is longer than this get their comment two spaces after
/// it instead of in the common column.
const MAX_ALIGN: usize = 48;

/// `ward show-config`.
pub fn show_config(args: &ShowConfigArgs) -> Result<(), AdminError> {
    let loaded = load(args)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    if args.json {
        println!("{}", render_json(&loaded));
    } else {
        print!("{}", render_plain(&loaded));
    }
    Ok(())
}

/// Loads the settings `ward daemon DAEMON-ARGS` would run with on the target system.
pub fn load(args: &ShowConfigArgs) -> Result<Loaded, AdminError> {
    let target = Target::new(&TargetArgs {
        root: args.root.clone(),
        dry_run: false,
    })?;
    let daemon_args = match cli::parse_args(args.daemon_args.clone()).map_err(DaemonError::from)? {
        Command::Run(daemon_args) => daemon_args,
        Command::Help | Command::Version => {
            return Err(AdminError::Refused(
                "'--help' and '--version' are not daemon settings (see 'ward daemon --help')"
                    .into(),
            ))
        }
    };
    let loaded = ward_config::load(&target.env(), &HostInfo::detect(), &daemon_args.config)
        .map_err(DaemonError::from)?;
    // The daemon would refuse to start with these; say so here too.
    daemon_args
        .check_experimental_features(&loaded.settings)
        .map_err(DaemonError::from)?;
    Ok(loaded)
}

/// One `name = value  # origin` line per setting.
pub fn render_plain(loaded: &Loaded) -> String {
    let lines: Vec<(String, String)> = loaded
        .settings
        .to_key_values()
        .into_iter()
        .map(|(name, value)| (format!("{name} = {value}"), loaded.origin(name).to_string()))
        .collect();
    let column = lines
        .iter()
        .map(|(assignment, _)| assignment.len())
        .filter(|&len| len <= MAX_ALIGN)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (assignment, origin) in lines {
        let _ = writeln!(out, "{assignment:<column$}  # {origin}");
    }
    out
}

/// `{"name": {"value": "...", "origin": "..."}, ...}`, sorted by name.
pub fn render_json(loaded: &Loaded) -> String {
    let object: serde_json::Map<String, serde_json::Value> = loaded
        .settings
        .to_key_values()
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_owned(),
                serde_json::json!({
                    "value": value,
                    "origin": loaded.origin(name).to_string(),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn load_with(
        conf: &str,
        nix_config: Option<&str>,
        cli_args: &[&str],
    ) -> (tempfile::TempDir, Loaded) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), conf).unwrap();
        let conf_dir = dir.path().as_os_str().to_owned();
        let nix_config = nix_config.map(OsString::from);
        let env = move |name: &str| match name {
            "NIX_CONF_DIR" => Some(conf_dir.clone()),
            "NIX_CONFIG" => nix_config.clone(),
            _ => None,
        };
        let Command::Run(args) = cli::parse_args(cli_args.iter().copied()).unwrap() else {
            panic!("not a run")
        };
        let loaded = ward_config::load(&env, &HostInfo::detect(), &args.config).unwrap();
        (dir, loaded)
    }

    #[test]
    fn plain_output_is_nix_conf_with_aligned_origins() {
        let (dir, loaded) = load_with("cores = 2\n", Some("timeout = 9"), &["--max-jobs", "5"]);
        let text = render_plain(&loaded);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), loaded.settings.to_key_values().len());
        let find = |name: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(&format!("{name} = ")))
                .unwrap()
        };
        assert!(
            find("cores").ends_with(&format!("  # {}:1", dir.path().join("nix.conf").display()))
        );
        assert!(find("timeout").ends_with("  # NIX_CONFIG:1"));
        assert!(find("max-jobs").starts_with("max-jobs = 5 "));
        assert!(find("max-jobs").ends_with("  # the command line"));
        assert!(find("keep-going").ends_with("  # default"));
        // Short lines share one comment column.
        let column = find("cores").find('#').unwrap();
        assert_eq!(find("timeout").find('#').unwrap(), column);
        assert_eq!(find("keep-going").find('#').unwrap(), column);

        // Read back as nix.conf, the output gives the same values.
        let (_again_dir, again) = load_with(&text, None, &[]);
        assert_eq!(
            again.settings.to_key_values(),
            loaded.settings.to_key_values()
        );
    }

    #[test]
    fn json_output_maps_names_to_value_and_origin() {
        let (_dir, loaded) = load_with("", None, &["--option", "cores", "3"]);
        let json: serde_json::Value = serde_json::from_str(&render_json(&loaded)).unwrap();
        assert_eq!(json["cores"]["value"], "3");
        assert_eq!(json["cores"]["origin"], "the command line");
        assert_eq!(json["sandbox"]["origin"], "default");
        assert_eq!(
            json.as_object().unwrap().len(),
            loaded.settings.to_key_values().len()
        );
    }

    #[test]
    fn help_is_not_a_setting() {
        let args = ShowConfigArgs {
            json: false,
            root: "/nonexistent-ward-root".into(),
            daemon_args: vec!["--help".into()],
        };
        assert!(matches!(load(&args), Err(AdminError::Refused(_))));
    }
}
