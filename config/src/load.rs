//! Loading the daemon's settings in Nix's order: defaults (from the host and environment),
//! then `$NIX_CONF_DIR/nix.conf` (default `/etc/nix/nix.conf`), then ward's own
//! `$NIX_CONF_DIR/ward.conf` (same syntax; for the settings only ward knows, which Nix clients
//! would warn about in nix.conf), then the `NIX_CONFIG` variable, then the command line. The
//! daemon does not read per-user files (`NIX_USER_CONF_FILES`, `~/.config/nix`).
//!
//! Every assignment that takes effect is remembered with its [`Origin`] ([`Loaded::origins`]),
//! for `ward show-config`: an assignment that replaces a value forgets the earlier ones, one
//! that appends (`extra-NAME`) is added to them, so a setting's origin lists exactly the
//! assignments its value is made of.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::error::{ConfigError, ConfigWarning, Origin};
use super::host::HostInfo;
use super::kinds::SettingError;
use super::parse::ConfigReader;
use super::settings::{canonical_name, Applied, EnvDefaults, EnvLookup, Settings};

/// ward's own configuration file, beside nix.conf in `NIX_CONF_DIR`.
pub const WARD_CONF: &str = "ward.conf";

/// One setting given on the daemon's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLineSetting {
    /// `--option NAME VALUE`: as in Nix, an unknown name or a bad value is only a warning.
    Option { name: String, value: String },
    /// A flag that sets a setting (`--NAME VALUE`, `--no-NAME`, `-j N`, `--cores N`, ...): a
    /// bad value is an error.
    Flag { name: String, value: String },
}

/// Everything on the command line that affects settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLineConfig {
    /// Settings in command-line order.
    pub settings: Vec<CommandLineSetting>,
    /// `--offline`: no substituters, downloaded files count as fresh, fail fast on network.
    pub offline: bool,
    /// `--refresh`: downloaded files and cached narinfos count as stale.
    pub refresh: bool,
}

/// Where a setting's loaded value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingOrigin {
    /// Whether the value starts from the default: nothing replaced it (at most `extra-NAME`
    /// added to it).
    pub from_default: bool,
    /// The assignments the value is made of, oldest first: the last one that replaced the
    /// value, then every `extra-NAME` after it. `--offline` and `--refresh` count as
    /// replacing the values they change, with [`Origin::CommandLine`].
    pub assignments: Vec<Origin>,
}

impl SettingOrigin {
    /// The origin of a setting nobody assigned.
    pub fn default_value() -> SettingOrigin {
        SettingOrigin {
            from_default: true,
            assignments: Vec::new(),
        }
    }

    /// Whether the value is the default, untouched.
    pub fn is_default(&self) -> bool {
        self.from_default && self.assignments.is_empty()
    }

    /// The assignment that took effect last, if any.
    pub fn last(&self) -> Option<&Origin> {
        self.assignments.last()
    }

    fn record(&mut self, origin: &Origin, appended: bool) {
        if !appended {
            self.from_default = false;
            self.assignments.clear();
        }
        self.assignments.push(origin.clone());
    }
}

/// `default`, or the origins joined by ` + ` (`default + /etc/nix/nix.conf:3` for an
/// `extra-NAME` added to the default).
impl fmt::Display for SettingOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if self.from_default {
            f.write_str("default")?;
            first = false;
        }
        for origin in &self.assignments {
            if !first {
                f.write_str(" + ")?;
            }
            write!(f, "{origin}")?;
            first = false;
        }
        Ok(())
    }
}

/// Loaded settings and what was wrong but not fatal.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// To be logged as warnings by the daemon.
    pub warnings: Vec<ConfigWarning>,
    /// Where each assigned setting's value came from, by canonical name; a setting missing
    /// here has its default value (see [`Loaded::origin`]).
    pub origins: BTreeMap<&'static str, SettingOrigin>,
}

impl Loaded {
    /// Where setting `name`'s value came from (`name` canonical or an alias; a setting that
    /// was never assigned, or is unknown, has its default).
    pub fn origin(&self, name: &str) -> SettingOrigin {
        canonical_name(name)
            .and_then(|canonical| self.origins.get(canonical))
            .cloned()
            .unwrap_or_else(SettingOrigin::default_value)
    }
}

/// The origins being collected while loading.
type Origins = BTreeMap<&'static str, SettingOrigin>;

fn record(origins: &mut Origins, applied: &Applied, origin: &Origin) {
    origins
        .entry(applied.canonical)
        .or_insert_with(SettingOrigin::default_value)
        .record(origin, applied.appended);
}

/// Loads the settings: defaults for `host` and the variables seen through `env`, then
/// `nix.conf`, `NIX_CONFIG` and `command_line`.
pub fn load(
    env: EnvLookup<'_>,
    host: &HostInfo,
    command_line: &CommandLineConfig,
) -> Result<Loaded, ConfigError> {
    let env_defaults = EnvDefaults::from_env(env)?;
    let mut settings = Settings::defaults(host, &env_defaults);
    let mut warnings = Vec::new();
    let mut origins = Origins::new();

    let main_file = format!("{}/nix.conf", env_defaults.conf_dir);
    apply_config(
        &mut settings,
        &mut warnings,
        &mut origins,
        &mut Vec::new(),
        |reader| reader.read_main_file(&main_file),
    )?;
    let ward_file = format!("{}/{WARD_CONF}", env_defaults.conf_dir);
    apply_config(
        &mut settings,
        &mut warnings,
        &mut origins,
        &mut Vec::new(),
        |reader| reader.read_main_file(&ward_file),
    )?;

    // Nix calls what is set from here on "overridden"; `--offline` leaves those alone.
    let mut overridden = BTreeSet::new();
    if let Some(contents) = env("NIX_CONFIG") {
        let bytes = std::os::unix::ffi::OsStringExt::into_vec(contents);
        let mut set_names = Vec::new();
        apply_config(
            &mut settings,
            &mut warnings,
            &mut origins,
            &mut set_names,
            |reader| reader.read_env(&bytes),
        )?;
        overridden.extend(set_names);
    }

    for setting in &command_line.settings {
        overridden.extend(apply_command_line(
            &mut settings,
            &mut warnings,
            &mut origins,
            setting,
        )?);
    }

    let mut set_by_flag = |name: &'static str| {
        origins
            .entry(name)
            .or_insert_with(SettingOrigin::default_value)
            .record(&Origin::CommandLine, false);
    };
    if command_line.offline {
        for name in apply_offline(&mut settings, &overridden) {
            set_by_flag(name);
        }
    }
    if command_line.refresh {
        settings.tarball_ttl = 0;
        settings.narinfo_cache_negative_ttl = 0;
        settings.narinfo_cache_positive_ttl = 0;
        for name in [
            "tarball-ttl",
            "narinfo-cache-negative-ttl",
            "narinfo-cache-positive-ttl",
        ] {
            set_by_flag(name);
        }
    }
    Ok(Loaded {
        settings,
        warnings,
        origins,
    })
}

/// Applies one command-line setting; returns the canonical name set, if any.
fn apply_command_line(
    settings: &mut Settings,
    warnings: &mut Vec<ConfigWarning>,
    origins: &mut Origins,
    setting: &CommandLineSetting,
) -> Result<Option<&'static str>, ConfigError> {
    let (name, value, lenient) = match setting {
        CommandLineSetting::Option { name, value } => (name, value, true),
        CommandLineSetting::Flag { name, value } => (name, value, false),
    };
    match settings.set(name, value) {
        Ok(applied) => {
            record(origins, &applied, &Origin::CommandLine);
            warnings.extend(
                applied
                    .notices
                    .into_iter()
                    .map(|notice| ConfigWarning::Notice {
                        origin: Origin::CommandLine,
                        notice,
                    }),
            );
            Ok(Some(applied.canonical))
        }
        Err(SettingError::Unknown { name }) if lenient => {
            warnings.push(ConfigWarning::UnknownSetting {
                origin: Origin::CommandLine,
                name,
            });
            Ok(None)
        }
        Err(error) if lenient => {
            warnings.push(ConfigWarning::InvalidOption { error });
            Ok(None)
        }
        Err(error) => Err(ConfigError::CommandLine(error)),
    }
}

/// What `nix --offline` does to settings that were not set explicitly after `nix.conf`;
/// returns the names it changed.
fn apply_offline(
    settings: &mut Settings,
    overridden: &BTreeSet<&'static str>,
) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if !overridden.contains("substitute") {
        settings.substitute = false;
        changed.push("substitute");
    }
    if !overridden.contains("tarball-ttl") {
        settings.tarball_ttl = u32::MAX;
        changed.push("tarball-ttl");
    }
    if !overridden.contains("download-attempts") {
        settings.download_attempts = 0;
        changed.push("download-attempts");
    }
    if !overridden.contains("connect-timeout") {
        settings.connect_timeout = 1;
        changed.push("connect-timeout");
    }
    changed
}

/// Runs `read` with a sink that applies every assignment to `settings`, records where each
/// came from in `origins`, and records the canonical names that were set in `set_names`.
fn apply_config(
    settings: &mut Settings,
    warnings: &mut Vec<ConfigWarning>,
    origins: &mut Origins,
    set_names: &mut Vec<&'static str>,
    read: impl FnOnce(&mut ConfigReader<'_, '_>) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let mut setting_warnings = Vec::new();
    let mut sink = |origin: &Origin, name: &str, value: &str| {
        let canonical = apply_one(
            settings,
            &mut setting_warnings,
            origins,
            origin,
            name,
            value,
        )?;
        set_names.extend(canonical);
        Ok(())
    };
    let mut reader_warnings = Vec::new();
    let result = read(&mut ConfigReader::new(&mut sink, &mut reader_warnings));
    warnings.append(&mut reader_warnings);
    warnings.append(&mut setting_warnings);
    result
}

/// Applies one assignment from a configuration file or `NIX_CONFIG`: an unknown name is a
/// warning, a bad value an error. Returns the canonical name that was set.
fn apply_one(
    settings: &mut Settings,
    warnings: &mut Vec<ConfigWarning>,
    origins: &mut Origins,
    origin: &Origin,
    name: &str,
    value: &str,
) -> Result<Option<&'static str>, ConfigError> {
    match settings.set(name, value) {
        Ok(applied) => {
            record(origins, &applied, origin);
            warnings.extend(
                applied
                    .notices
                    .into_iter()
                    .map(|notice| ConfigWarning::Notice {
                        origin: origin.clone(),
                        notice,
                    }),
            );
            Ok(Some(applied.canonical))
        }
        Err(SettingError::Unknown { name }) => {
            warnings.push(ConfigWarning::UnknownSetting {
                origin: origin.clone(),
                name,
            });
            Ok(None)
        }
        Err(source) => Err(ConfigError::Setting {
            origin: origin.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::fs;

    /// A temporary NIX_CONF_DIR holding `nix.conf` with `contents`, plus extra variables.
    struct Fixture {
        dir: tempfile::TempDir,
        vars: HashMap<String, OsString>,
    }

    impl Fixture {
        fn new(contents: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("nix.conf"), contents).unwrap();
            let mut vars = HashMap::new();
            vars.insert("NIX_CONF_DIR".to_owned(), dir.path().as_os_str().to_owned());
            Fixture { dir, vars }
        }

        fn with(mut self, name: &str, value: &str) -> Fixture {
            self.vars.insert(name.to_owned(), OsString::from(value));
            self
        }

        fn load(&self, command_line: &CommandLineConfig) -> Result<Loaded, ConfigError> {
            let lookup = |name: &str| self.vars.get(name).cloned();
            load(&lookup, &HostInfo::fixed_for_tests(), command_line)
        }

        fn conf_path(&self) -> String {
            self.dir.path().join("nix.conf").display().to_string()
        }
    }

    fn option(name: &str, value: &str) -> CommandLineSetting {
        CommandLineSetting::Option {
            name: name.into(),
            value: value.into(),
        }
    }

    fn flag(name: &str, value: &str) -> CommandLineSetting {
        CommandLineSetting::Flag {
            name: name.into(),
            value: value.into(),
        }
    }

    fn cli(settings: Vec<CommandLineSetting>) -> CommandLineConfig {
        CommandLineConfig {
            settings,
            ..CommandLineConfig::default()
        }
    }

    #[test]
    fn conf_file_settings_are_applied() {
        let fixture = Fixture::new(
            "# ward test\ntrusted-users = root @wheel\nsandbox = relaxed\n\
             extra-substituters = https://mine\nmax-jobs = auto\nmin-free = 2G\n",
        );
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        let s = &loaded.settings;
        assert_eq!(s.trusted_users, ["root", "@wheel"]);
        assert_eq!(s.get("sandbox").as_deref(), Some("relaxed"));
        assert_eq!(s.substituters, ["https://cache.nixos.org/", "https://mine"]);
        assert_eq!(s.max_jobs, 4);
        assert_eq!(s.min_free, 2 << 30);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn missing_conf_file_gives_defaults() {
        let lookup =
            |name: &str| (name == "NIX_CONF_DIR").then(|| OsString::from("/nonexistent/ward-test"));
        let loaded = load(
            &lookup,
            &HostInfo::fixed_for_tests(),
            &CommandLineConfig::default(),
        )
        .unwrap();
        assert!(loaded.warnings.is_empty());
        assert_eq!(loaded.settings.conf_dir, "/nonexistent/ward-test");
        assert_eq!(loaded.settings.builders, "@/nonexistent/ward-test/machines");
    }

    #[test]
    fn bad_boolean_names_file_and_line() {
        let fixture = Fixture::new("cores = 2\n\nkeep-failed = perhaps\n");
        let err = fixture.load(&CommandLineConfig::default()).unwrap_err();
        match &err {
            ConfigError::Setting {
                origin: Origin::File { line: 3, .. },
                source,
            } => {
                assert_eq!(source.name(), "keep-failed");
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: setting 'keep-failed' has invalid value 'perhaps' (expected true or false)",
                fixture.conf_path()
            )
        );
    }

    #[test]
    fn bad_integer_and_overflow_name_file_and_line() {
        for (contents, value) in [
            ("cores = 1.5\n", "1.5"),
            ("cores = 4294967296\n", "4294967296"),
            ("min-free = 99999999T\n", "99999999T"),
        ] {
            let err = Fixture::new(contents)
                .load(&CommandLineConfig::default())
                .unwrap_err();
            assert!(
                matches!(
                    &err,
                    ConfigError::Setting {
                        origin: Origin::File { line: 1, .. },
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let fixture = Fixture::new("cores = 2\nsandbox=false\n");
        let err = fixture.load(&CommandLineConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: illegal configuration line 'sandbox=false'",
                fixture.conf_path()
            )
        );
    }

    #[test]
    fn unknown_settings_are_warnings() {
        let fixture = Fixture::new("frobnicate = yes\nextra-cores = 2\ncores = 3\n");
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert_eq!(loaded.settings.cores, 3);
        let texts: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                format!("{}:1: unknown setting 'frobnicate'", fixture.conf_path()),
                format!("{}:2: unknown setting 'extra-cores'", fixture.conf_path()),
            ]
        );
    }

    #[test]
    fn unknown_experimental_feature_is_a_warning() {
        let fixture = Fixture::new("experimental-features = nix-command teleport\n");
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert!(loaded.settings.has_experimental_feature("nix-command"));
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0]
            .to_string()
            .ends_with(":1: unknown experimental feature 'teleport'"));
    }

    #[test]
    fn nix_config_comes_after_the_file() {
        let fixture = Fixture::new("cores = 2\nsubstituters = https://a\n").with(
            "NIX_CONFIG",
            "cores = 5\nextra-substituters = https://b\nbogus = 1",
        );
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert_eq!(loaded.settings.cores, 5);
        assert_eq!(loaded.settings.substituters, ["https://a", "https://b"]);
        let texts: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["NIX_CONFIG:3: unknown setting 'bogus'"]);
    }

    #[test]
    fn nix_config_errors_name_the_line() {
        let fixture = Fixture::new("").with("NIX_CONFIG", "cores = 1\nsandbox = maybe\n");
        let err = fixture.load(&CommandLineConfig::default()).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::Setting {
                    origin: Origin::Env { line: 2 },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("NIX_CONFIG:2: setting 'sandbox'"),
            "{err}"
        );
    }

    #[test]
    fn nix_config_relative_include_is_an_error() {
        let fixture = Fixture::new("").with("NIX_CONFIG", "!include other.conf");
        let err = fixture.load(&CommandLineConfig::default()).unwrap_err();
        assert!(
            matches!(err, ConfigError::RelativeIncludeInEnv { .. }),
            "{err}"
        );
    }

    #[test]
    fn command_line_comes_last() {
        let fixture = Fixture::new("cores = 2\n").with("NIX_CONFIG", "cores = 5");
        let loaded = fixture.load(&cli(vec![option("cores", "7")])).unwrap();
        assert_eq!(loaded.settings.cores, 7);
        let loaded = fixture
            .load(&cli(vec![flag("cores", "8"), option("build-cores", "9")]))
            .unwrap();
        assert_eq!(loaded.settings.cores, 9);
    }

    #[test]
    fn bad_option_is_a_warning_but_bad_flag_an_error() {
        let fixture = Fixture::new("");
        let loaded = fixture
            .load(&cli(vec![
                option("cores", "abc"),
                option("nonsense", "1"),
                option("timeout", "4"),
            ]))
            .unwrap();
        assert_eq!(loaded.settings.cores, 4, "unchanged default");
        assert_eq!(loaded.settings.timeout, 4);
        let texts: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "ignoring --option: setting 'cores' has invalid value 'abc': not an integer",
                "the command line: unknown setting 'nonsense'",
            ]
        );
        let err = fixture.load(&cli(vec![flag("cores", "abc")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::CommandLine(SettingError::InvalidInteger { .. })
        ));
        let err = fixture
            .load(&cli(vec![flag("max-jobs", "lots")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "setting 'max-jobs' has invalid value 'lots' (expected 'auto' or an integer)"
        );
    }

    #[test]
    fn offline_respects_explicit_settings() {
        let fixture = Fixture::new("substitute = true\nconnect-timeout = 9\n")
            .with("NIX_CONFIG", "download-attempts = 3");
        let config = CommandLineConfig {
            settings: vec![option("tarball-ttl", "60")],
            offline: true,
            refresh: false,
        };
        let s = fixture.load(&config).unwrap().settings;
        // From nix.conf: not "overridden", so --offline wins.
        assert!(!s.substitute);
        assert_eq!(s.connect_timeout, 1);
        // From NIX_CONFIG and the command line: kept.
        assert_eq!(s.download_attempts, 3);
        assert_eq!(s.tarball_ttl, 60);

        let s = Fixture::new("")
            .load(&CommandLineConfig {
                offline: true,
                ..CommandLineConfig::default()
            })
            .unwrap()
            .settings;
        assert_eq!(s.tarball_ttl, u32::MAX);
        assert_eq!(s.download_attempts, 0);
    }

    #[test]
    fn refresh_zeroes_cache_lifetimes() {
        let config = CommandLineConfig {
            refresh: true,
            ..CommandLineConfig::default()
        };
        let s = Fixture::new("tarball-ttl = 100\n")
            .load(&config)
            .unwrap()
            .settings;
        assert_eq!(
            (
                s.tarball_ttl,
                s.narinfo_cache_negative_ttl,
                s.narinfo_cache_positive_ttl
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn include_from_conf_dir() {
        let fixture = Fixture::new("include conf.d/local.conf\n!include conf.d/absent.conf\n");
        fs::create_dir(fixture.dir.path().join("conf.d")).unwrap();
        fs::write(
            fixture.dir.path().join("conf.d/local.conf"),
            "allowed-users = @users\n",
        )
        .unwrap();
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert_eq!(loaded.settings.allowed_users, ["@users"]);
    }

    #[test]
    fn missing_include_fails_the_load() {
        let fixture = Fixture::new("include conf.d/absent.conf\n");
        let err = fixture.load(&CommandLineConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::IncludeNotFound { .. }), "{err}");
    }

    #[test]
    fn env_store_dir_is_used() {
        let fixture = Fixture::new("").with("NIX_STORE_DIR", "/srv/nix/store");
        let s = fixture
            .load(&CommandLineConfig::default())
            .unwrap()
            .settings;
        assert_eq!(s.store_dir, "/srv/nix/store");
        let err = Fixture::new("")
            .with("NIX_STORE_DIR", "nix/store")
            .load(&CommandLineConfig::default())
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::EnvNotAbsolute {
                name: "NIX_STORE_DIR",
                ..
            }
        ));
    }

    fn file(path: &std::path::Path, line: usize) -> Origin {
        Origin::File {
            path: path.to_path_buf(),
            line,
        }
    }

    #[test]
    fn origins_of_file_lines() {
        let fixture = Fixture::new("# comment\ncores = 2\n\nbuild-cores = 3\nsandbox = relaxed\n");
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        let conf = fixture.dir.path().join("nix.conf");
        // The last assignment wins, also through an alias.
        assert_eq!(loaded.origin("cores").assignments, [file(&conf, 4)]);
        assert!(!loaded.origin("cores").from_default);
        assert_eq!(loaded.origin("build-cores"), loaded.origin("cores"));
        assert_eq!(
            loaded.origin("sandbox").to_string(),
            format!("{}:5", fixture.conf_path())
        );
        assert_eq!(loaded.origins.len(), 2, "{:?}", loaded.origins);
    }

    #[test]
    fn defaults_have_no_origin() {
        let fixture = Fixture::new("cores = 2\nbogus = 1\n");
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        let origin = loaded.origin("max-jobs");
        assert!(origin.is_default() && origin.last().is_none());
        assert_eq!(origin.to_string(), "default");
        assert_eq!(loaded.origin("bogus"), SettingOrigin::default_value());
        // Every setting not assigned is absent from the map.
        for name in loaded.settings.to_key_values().keys() {
            assert_eq!(
                loaded.origins.contains_key(name),
                *name == "cores",
                "{name}"
            );
        }
    }

    #[test]
    fn origins_of_included_files() {
        let fixture = Fixture::new("cores = 1\ninclude conf.d/local.conf\nmax-jobs = 2\n");
        fs::create_dir(fixture.dir.path().join("conf.d")).unwrap();
        let included = fixture.dir.path().join("conf.d/local.conf");
        fs::write(&included, "\ncores = 6\n!include more.conf\n").unwrap();
        fs::write(
            fixture.dir.path().join("conf.d/more.conf"),
            "timeout = 10\n",
        )
        .unwrap();
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert_eq!(loaded.settings.cores, 6);
        assert_eq!(loaded.origin("cores").assignments, [file(&included, 2)]);
        assert_eq!(
            loaded.origin("timeout").assignments,
            [file(&fixture.dir.path().join("conf.d/more.conf"), 1)]
        );
        assert_eq!(
            loaded.origin("max-jobs").assignments,
            [file(&fixture.dir.path().join("nix.conf"), 3)]
        );
    }

    #[test]
    fn origins_of_nix_config_and_the_command_line() {
        let fixture = Fixture::new("cores = 2\ntimeout = 5\nkeep-going = true\n")
            .with("NIX_CONFIG", "timeout = 6\n\nmax-jobs = 3");
        let loaded = fixture
            .load(&cli(vec![
                option("cores", "7"),
                flag("keep-going", "false"),
            ]))
            .unwrap();
        assert_eq!(
            loaded.origin("timeout").assignments,
            [Origin::Env { line: 1 }]
        );
        assert_eq!(loaded.origin("max-jobs").to_string(), "NIX_CONFIG:3");
        assert_eq!(loaded.origin("cores").assignments, [Origin::CommandLine]);
        assert_eq!(
            loaded.origin("keep-going").assignments,
            [Origin::CommandLine]
        );
        // A bad --option is ignored, so the earlier origin stays.
        let loaded = fixture.load(&cli(vec![option("cores", "abc")])).unwrap();
        assert_eq!(
            loaded.origin("cores").assignments,
            [file(&fixture.dir.path().join("nix.conf"), 1)]
        );
    }

    #[test]
    fn appended_values_keep_every_origin() {
        let fixture = Fixture::new("extra-substituters = https://a\ntrusted-users = root\n").with(
            "NIX_CONFIG",
            "extra-substituters = https://b\nextra-trusted-users = alice",
        );
        let loaded = fixture
            .load(&cli(vec![flag("extra-trusted-users", "bob")]))
            .unwrap();
        let conf = fixture.dir.path().join("nix.conf");
        let substituters = loaded.origin("substituters");
        assert!(substituters.from_default);
        assert_eq!(
            substituters.assignments,
            [file(&conf, 1), Origin::Env { line: 1 }]
        );
        assert_eq!(
            substituters.to_string(),
            format!("default + {}:1 + NIX_CONFIG:1", fixture.conf_path())
        );
        assert_eq!(
            loaded.origin("trusted-users").to_string(),
            format!(
                "{}:2 + NIX_CONFIG:2 + the command line",
                fixture.conf_path()
            )
        );
        // A later replacement forgets what came before.
        let loaded = fixture
            .load(&cli(vec![option("substituters", "https://c")]))
            .unwrap();
        assert_eq!(
            loaded.origin("substituters").assignments,
            [Origin::CommandLine]
        );
        assert!(!loaded.origin("substituters").from_default);
    }

    #[test]
    fn offline_and_refresh_are_command_line_origins() {
        let fixture = Fixture::new("connect-timeout = 9\n").with("NIX_CONFIG", "substitute = true");
        let loaded = fixture
            .load(&CommandLineConfig {
                settings: Vec::new(),
                offline: true,
                refresh: true,
            })
            .unwrap();
        for name in [
            "connect-timeout",
            "download-attempts",
            "tarball-ttl",
            "narinfo-cache-negative-ttl",
            "narinfo-cache-positive-ttl",
        ] {
            assert_eq!(
                loaded.origin(name).assignments,
                [Origin::CommandLine],
                "{name}"
            );
        }
        // NIX_CONFIG's value is kept by --offline, and so is its origin.
        assert_eq!(
            loaded.origin("substitute").assignments,
            [Origin::Env { line: 1 }]
        );
    }
    #[test]
    fn ward_conf_is_read_after_nix_conf() {
        let fixture = Fixture::new("cores = 2\nward-audit-log = /from/nix.conf\n");
        fs::write(
            fixture.dir.path().join(WARD_CONF),
            "ward-audit-log = /var/log/ward/audit.log\n",
        )
        .unwrap();
        let loaded = fixture.load(&CommandLineConfig::default()).unwrap();
        assert_eq!(loaded.settings.ward_audit_log, "/var/log/ward/audit.log");
        assert_eq!(loaded.settings.cores, 2);
        let origin = loaded.origin("ward-audit-log").last().unwrap().to_string();
        assert!(origin.ends_with("ward.conf:1"), "{origin}");
    }
}
