//! `ward show-config`: the built `ward` binary prints every setting with where its value came
//! from: a line of nix.conf or of a file it includes, a line of `NIX_CONFIG`, the nix-daemon
//! options after `--`, or the default. Needs no root and no Nix client.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use ward_e2e_tests::daemon::ward_bin;

const NIX_CONF: &str = "\
# ward show-config test
cores = 1
include local.conf
max-jobs = 2
extra-substituters = https://a.example
";

const LOCAL_CONF: &str = "\
# included
keep-going = true
timeout = 7
";

const NIX_CONFIG: &str = "timeout = 8\nmax-silent-time = 9";

/// Runs `ward ARGS` with only `vars` (and `PATH`) in its environment.
fn ward(args: &[&str], vars: &[(&str, &Path)], nix_config: Option<&str>) -> Output {
    let mut cmd = Command::new(ward_bin());
    cmd.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    if let Some(text) = nix_config {
        cmd.env("NIX_CONFIG", text);
    }
    let output = cmd.output().expect("running ward");
    assert!(
        output.status.success(),
        "ward {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The plain output as name → (value, origin).
fn parse_plain(stdout: &[u8]) -> BTreeMap<String, (String, String)> {
    let text = String::from_utf8(stdout.to_vec()).unwrap();
    text.lines()
        .map(|line| {
            let (assignment, origin) = line
                .split_once("  # ")
                .unwrap_or_else(|| panic!("no origin comment: {line:?}"));
            let (name, value) = assignment
                .split_once(" = ")
                .or_else(|| assignment.trim_end().strip_suffix(" =").map(|n| (n, "")))
                .unwrap_or_else(|| panic!("not an assignment: {line:?}"));
            (
                name.to_owned(),
                (value.trim_end().to_owned(), origin.to_owned()),
            )
        })
        .collect()
}

/// A configuration directory holding nix.conf and the file it includes (canonical, as ward
/// names files by their canonical paths).
fn conf_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = fs::canonicalize(dir.path()).unwrap();
    fs::write(path.join("nix.conf"), NIX_CONF).unwrap();
    fs::write(path.join("local.conf"), LOCAL_CONF).unwrap();
    (dir, path)
}

#[test]
fn every_origin_is_shown() {
    let (_dir, conf) = conf_dir();
    let main = conf.join("nix.conf").display().to_string();
    let local = conf.join("local.conf").display().to_string();
    let output = ward(
        &["show-config", "--", "--option", "cores", "3"],
        &[("NIX_CONF_DIR", &conf)],
        Some(NIX_CONFIG),
    );
    let settings = parse_plain(&output.stdout);
    let expect = |name: &str, value: &str, origin: &str| {
        let (got_value, got_origin) = settings
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the output"));
        assert_eq!(
            (got_value.as_str(), got_origin.as_str()),
            (value, origin),
            "{name}"
        );
    };
    expect("cores", "3", "the command line");
    expect("max-jobs", "2", &format!("{main}:4"));
    expect("keep-going", "true", &format!("{local}:2"));
    expect("timeout", "8", "NIX_CONFIG:1");
    expect("max-silent-time", "9", "NIX_CONFIG:2");
    expect("keep-failed", "false", "default");
    expect(
        "substituters",
        "https://cache.nixos.org/ https://a.example",
        &format!("default + {main}:5"),
    );

    // The same through --json.
    let output = ward(
        &["show-config", "--json", "--", "--option", "cores", "3"],
        &[("NIX_CONF_DIR", &conf)],
        Some(NIX_CONFIG),
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), settings.len());
    for (name, (value, origin)) in &settings {
        assert_eq!(object[name]["value"], value.as_str(), "{name}");
        assert_eq!(object[name]["origin"], origin.as_str(), "{name}");
    }
}

#[test]
fn plain_output_is_a_valid_nix_conf() {
    let (_dir, conf) = conf_dir();
    let first = ward(
        &["show-config", "--", "--max-jobs", "6"],
        &[("NIX_CONF_DIR", &conf)],
        Some(NIX_CONFIG),
    );
    // Read back as the only nix.conf, it gives the same values, every one from that file.
    let again = tempfile::tempdir().unwrap();
    let again_path = fs::canonicalize(again.path()).unwrap();
    fs::write(again_path.join("nix.conf"), &first.stdout).unwrap();
    let second = ward(&["show-config"], &[("NIX_CONF_DIR", &again_path)], None);
    let before = parse_plain(&first.stdout);
    let after = parse_plain(&second.stdout);
    assert_eq!(before.len(), after.len());
    let reread = again_path.join("nix.conf").display().to_string();
    for (line, (name, (value, origin))) in after.iter().enumerate() {
        assert_eq!(&before[name].0, value, "{name}");
        assert_eq!(origin, &format!("{reread}:{}", line + 1), "{name}");
    }
}

#[test]
fn root_reads_the_target_systems_nix_conf_only() {
    let root = tempfile::tempdir().unwrap();
    let root_path = fs::canonicalize(root.path()).unwrap();
    let etc_nix = root_path.join("etc/nix");
    fs::create_dir_all(&etc_nix).unwrap();
    fs::write(etc_nix.join("nix.conf"), "\ncores = 5\n").unwrap();
    let (_dir, conf) = conf_dir();
    let output = ward(
        &[
            "show-config",
            "--json",
            "--root",
            root_path.to_str().unwrap(),
        ],
        &[("NIX_CONF_DIR", &conf)],
        Some(NIX_CONFIG),
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["cores"]["value"], "5");
    assert_eq!(
        json["cores"]["origin"],
        format!("{}:2", etc_nix.join("nix.conf").display())
    );
    // Neither the process's NIX_CONF_DIR nor its NIX_CONFIG count for another system.
    assert_eq!(json["timeout"]["origin"], "default");
    assert_eq!(json["max-jobs"]["origin"], "default");
}

#[test]
fn bad_settings_fail_naming_the_line() {
    let (_dir, conf) = conf_dir();
    fs::write(conf.join("local.conf"), "keep-going = perhaps\n").unwrap();
    let output = Command::new(ward_bin())
        .args(["show-config"])
        .env_clear()
        .env("NIX_CONF_DIR", &conf)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:1:", conf.join("local.conf").display())),
        "{stderr}"
    );
}
