//! What a client's SetOptions request does to the settings of its connection (Nix 2.8's
//! `ClientSettings::apply`, with the allow-list of current Nix).
//!
//! The twelve fixed fields apply to every client. Of the name/value overrides, a trusted
//! client may set anything; an untrusted one only a few harmless settings, and may narrow the
//! substituters to ones the daemon already trusts. Nothing here is ever an error: refused or
//! bad overrides become messages for the client.
//!
//! Difference from Nix 2.8: the "restricted setting" message is at debug level (invisible)
//! in Nix 2.8-2.21 and a warning from 2.22 on; ward returns it as a warning, because a user
//! whose option silently does nothing is worse off than one who is told why.

use std::collections::BTreeMap;

use super::kinds::{shorten, SettingError};
use super::settings::{canonical_name, Settings};
use super::value::tokenize;
use super::verbosity::Verbosity;
use super::KNOWN_EXPERIMENTAL_FEATURES;

/// A decoded SetOptions request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    /// The log level the client wants for this connection.
    pub verbosity: Verbosity,
    pub max_build_jobs: u32,
    pub max_silent_time: u32,
    /// The raw `verboseBuild` field; build output is shown when it is 0 (`lvlError`).
    pub verbose_build: u64,
    pub build_cores: u32,
    pub use_substitutes: bool,
    /// The overrides in the order they arrived (Nix keeps the first of duplicate names).
    pub overrides: Vec<(String, String)>,
}

/// How loud a message to the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageLevel {
    /// Sent to the client as a warning.
    Warning,
    /// Only for the daemon's own debug log.
    Debug,
}

/// A message produced while applying overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideMessage {
    pub level: MessageLevel,
    pub text: String,
}

impl OverrideMessage {
    fn warning(text: String) -> OverrideMessage {
        OverrideMessage {
            level: MessageLevel::Warning,
            text,
        }
    }
    fn debug(text: String) -> OverrideMessage {
        OverrideMessage {
            level: MessageLevel::Debug,
            text,
        }
    }
}

/// The settings of one connection after a SetOptions request, and what to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOptionsOutcome {
    pub settings: Settings,
    /// Log level for this connection.
    pub verbosity: Verbosity,
    /// Whether build output is sent to the client.
    pub verbose_build: bool,
    /// Messages in the order they arose.
    pub messages: Vec<OverrideMessage>,
}

/// Settings an untrusted client may set (current Nix's list; names compared exactly, so
/// aliases such as `build-timeout` do not count). `builders` is allowed only when empty.
fn allowed_for_untrusted(name: &str, value: &str) -> bool {
    matches!(
        name,
        "timeout" | "max-silent-time" | "build-poll-interval" | "connect-timeout"
    ) || (name == "builders" && value.is_empty())
}

/// Applies a client's SetOptions request to `current` (the connection's settings so far) and
/// returns the new settings, for a `trusted` or untrusted client.
pub fn apply_client_options(
    trusted: bool,
    options: &ClientOptions,
    current: &Settings,
) -> SetOptionsOutcome {
    let mut settings = current.clone();
    settings.keep_failed = options.keep_failed;
    settings.keep_going = options.keep_going;
    settings.fallback = options.try_fallback;
    settings.max_jobs = options.max_build_jobs;
    settings.max_silent_time = i64::from(options.max_silent_time);
    settings.cores = options.build_cores;
    settings.substitute = options.use_substitutes;

    // Name order, first value of a repeated name wins (Nix's std::map::emplace).
    let mut overrides: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, value) in &options.overrides {
        overrides.entry(name.as_str()).or_insert(value.as_str());
    }

    let mut messages = Vec::new();
    for (name, value) in overrides {
        apply_override(trusted, name, value, &mut settings, &mut messages);
    }
    SetOptionsOutcome {
        settings,
        verbosity: options.verbosity,
        verbose_build: options.verbose_build == 0,
        messages,
    }
}

fn apply_override(
    trusted: bool,
    name: &str,
    value: &str,
    settings: &mut Settings,
    messages: &mut Vec<OverrideMessage>,
) {
    match name {
        // Obsolete; ignored for everyone.
        "ssh-auth-sock" => {}
        // Which store the client talks to: the client sends it whenever `--store` was given,
        // and it means nothing to the daemon. Ignored silently for everyone, as Lix does, so
        // untrusted users are not warned on every command.
        "store" => {}
        // The daemon's own features decide what it does, even for trusted clients.
        "experimental-features" => {
            let wanted: std::collections::BTreeSet<&str> = tokenize(value)
                .filter(|feature| KNOWN_EXPERIMENTAL_FEATURES.contains(feature))
                .collect();
            let ours: std::collections::BTreeSet<&str> = settings
                .experimental_features
                .iter()
                .map(String::as_str)
                .collect();
            if wanted != ours {
                messages.push(OverrideMessage::debug(
                    "ignoring the client-specified experimental features".to_owned(),
                ));
            }
        }
        // Loading code into the daemon is never a client's business.
        "plugin-files" => messages.push(OverrideMessage::warning(
            "ignoring the client-specified setting 'plugin-files': a client cannot make the \
             daemon load plugins"
                .to_owned(),
        )),
        // The broker runs only the daemon's own hook, and never as root; a trusted client's
        // hook would otherwise be a way to run a program as whoever runs the daemon's.
        "post-build-hook" if trusted => {
            if value != settings.post_build_hook {
                messages.push(OverrideMessage::warning(format!(
                    "ignoring the client-specified setting 'post-build-hook': ward runs only \
                     the post-build-hook of the daemon's nix.conf ('{}'), never as root",
                    settings.post_build_hook
                )));
            }
        }
        // The build sandbox is the root broker's, started from nix.conf: one connection
        // cannot change it. Nix lets a trusted client turn it off or bind host paths into
        // builds; ward says it ignores that (only when the value differs, as Nix clients
        // send the settings of their own nix.conf, usually the daemon's too).
        // Programs the daemon would run for a build: ward runs none of these (a hook that
        // Nix runs as root would be a way for a trusted client to become root).
        "pre-build-hook" | "diff-hook" | "build-hook" if trusted => {
            if !value.is_empty() {
                messages.push(OverrideMessage::warning(format!(
                    "ignoring the client-specified setting '{name}': ward does not run it"
                )));
            }
        }
        _ if trusted && daemon_only(name) => {
            let canonical = canonical_name(name.strip_prefix("extra-").unwrap_or(name));
            let current = canonical.and_then(|c| settings.get(c));
            let mut probe = settings.clone();
            if let Err(error) = probe.set(name, value) {
                messages.push(OverrideMessage::warning(error.to_string()));
            } else if canonical.and_then(|c| probe.get(c)) != current {
                messages.push(OverrideMessage::warning(format!(
                    "ignoring the client-specified setting '{}': the build sandbox is set by \
                     the daemon's nix.conf only, and a client cannot change it",
                    shorten(name)
                )));
            }
        }
        _ if trusted || allowed_for_untrusted(name, value) => match settings.set(name, value) {
            Ok(applied) => messages.extend(
                applied
                    .notices
                    .iter()
                    .map(|notice| OverrideMessage::warning(notice.to_string())),
            ),
            // Nix ignores unknown names from clients without a word.
            Err(SettingError::Unknown { .. }) => messages.push(OverrideMessage::debug(format!(
                "ignoring unknown client-specified setting '{}'",
                shorten(name)
            ))),
            Err(error) => messages.push(OverrideMessage::warning(error.to_string())),
        },
        "substituters" | "binary-caches" => filter_substituters(value, settings, messages),
        _ => messages.push(OverrideMessage::warning(format!(
            "ignoring the client-specified setting '{}', because it is a restricted setting \
             and you are not a trusted user",
            shorten(name)
        ))),
    }
}

/// Settings of the build sandbox, which the root broker takes from nix.conf when it starts:
/// what a client sends for them never reaches a build.
const DAEMON_ONLY: &[&str] = &[
    "sandbox",
    "sandbox-paths",
    "sandbox-build-dir",
    "sandbox-fallback",
    "build-users-group",
    "allow-new-privileges",
    "filter-syscalls",
    "auto-allocate-uids",
    "start-id",
    "id-count",
    "build-dir",
    "ward-build-max-processes",
];

fn daemon_only(name: &str) -> bool {
    canonical_name(name.strip_prefix("extra-").unwrap_or(name))
        .is_some_and(|canonical| DAEMON_ONLY.contains(&canonical))
}

/// An untrusted client's substituters: each URL is kept if the daemon lists it in
/// `substituters` or `trusted-substituters` (also when only the form with a trailing `/` is
/// listed, in which case that form is kept); the others are dropped with a warning. The
/// result replaces the connection's substituters.
fn filter_substituters(value: &str, settings: &mut Settings, messages: &mut Vec<OverrideMessage>) {
    let is_accepted = |url: &str| {
        settings.substituters.iter().any(|s| s == url)
            || settings.trusted_substituters.contains(url)
    };
    let mut kept = Vec::new();
    for url in tokenize(value) {
        if is_accepted(url) {
            kept.push(url.to_owned());
            continue;
        }
        let with_slash = format!("{url}/");
        if !url.ends_with('/') && is_accepted(&with_slash) {
            kept.push(with_slash);
        } else {
            messages.push(OverrideMessage::warning(format!(
                "ignoring untrusted substituter '{}'",
                shorten(url)
            )));
        }
    }
    settings.substituters = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvDefaults, HostInfo};

    fn daemon_settings() -> Settings {
        let env = EnvDefaults::from_env(&|_: &str| None).unwrap();
        let mut settings = Settings::defaults(&HostInfo::fixed_for_tests(), &env);
        settings
            .set("substituters", "https://cache.nixos.org/ https://local")
            .unwrap();
        settings
            .set("trusted-substituters", "https://extra/ file:///srv/cache")
            .unwrap();
        settings
    }

    fn options(overrides: &[(&str, &str)]) -> ClientOptions {
        ClientOptions {
            verbosity: Verbosity::Info,
            max_build_jobs: 1,
            build_cores: 2,
            use_substitutes: true,
            verbose_build: 0,
            overrides: overrides
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..ClientOptions::default()
        }
    }

    fn warnings(outcome: &SetOptionsOutcome) -> Vec<&str> {
        outcome
            .messages
            .iter()
            .filter(|m| m.level == MessageLevel::Warning)
            .map(|m| m.text.as_str())
            .collect()
    }

    const RESTRICTED: &str = "because it is a restricted setting and you are not a trusted user";

    #[test]
    fn fixed_fields_apply_to_everyone() {
        let daemon = daemon_settings();
        for trusted in [false, true] {
            let opts = ClientOptions {
                keep_failed: true,
                keep_going: true,
                try_fallback: true,
                verbosity: Verbosity::Debug,
                max_build_jobs: 4,
                max_silent_time: 7,
                verbose_build: 7,
                build_cores: 3,
                use_substitutes: false,
                overrides: Vec::new(),
            };
            let out = apply_client_options(trusted, &opts, &daemon);
            let s = &out.settings;
            assert!(s.keep_failed && s.keep_going && s.fallback);
            assert_eq!((s.max_jobs, s.max_silent_time, s.cores), (4, 7, 3));
            assert!(!s.substitute);
            assert_eq!(out.verbosity, Verbosity::Debug);
            assert!(!out.verbose_build, "7 (vomit) means no build output");
            assert!(out.messages.is_empty());
        }
        let out = apply_client_options(false, &options(&[]), &daemon);
        assert!(out.verbose_build, "0 (error) means build output");
    }

    #[test]
    fn untrusted_allow_list() {
        let daemon = daemon_settings();
        let out = apply_client_options(
            false,
            &options(&[
                ("timeout", "5"),
                ("max-silent-time", "9"),
                ("build-poll-interval", "2"),
                ("connect-timeout", "3"),
                ("builders", ""),
            ]),
            &daemon,
        );
        assert!(out.messages.is_empty(), "{:?}", out.messages);
        let s = &out.settings;
        assert_eq!(
            (s.timeout, s.max_silent_time, s.build_poll_interval),
            (5, 9, 2)
        );
        assert_eq!((s.connect_timeout, s.builders.as_str()), (3, ""));
    }

    #[test]
    fn overrides_come_after_fixed_fields() {
        // `max-silent-time` is both a fixed field (0 here) and an allowed override.
        let out = apply_client_options(
            false,
            &options(&[("max-silent-time", "9")]),
            &daemon_settings(),
        );
        assert_eq!(out.settings.max_silent_time, 9);
    }

    #[test]
    fn untrusted_restricted_settings_are_ignored_with_a_warning() {
        let daemon = daemon_settings();
        let restricted = [
            ("builders", "ssh://evil x86_64-linux"),
            ("build-timeout", "5"),
            ("sandbox", "false"),
            ("build-users-group", ""),
            ("require-sigs", "false"),
            ("trusted-public-keys", "evil:key"),
            ("trusted-substituters", "https://evil"),
            ("post-build-hook", "/tmp/x"),
            ("extra-sandbox-paths", "/etc/shadow"),
            ("extra-substituters", "https://evil"),
            ("narinfo-cache-negative-ttl", "0"),
            ("repeat", "1"),
            ("no-such-setting", "1"),
        ];
        for (name, value) in restricted {
            let out = apply_client_options(false, &options(&[(name, value)]), &daemon);
            let mut expected_settings = daemon.clone();
            expected_settings.cores = 2;
            assert_eq!(
                out.settings, expected_settings,
                "{name} must not change anything"
            );
            let warnings = warnings(&out);
            assert_eq!(warnings.len(), 1, "{name}");
            assert_eq!(
                warnings[0],
                format!("ignoring the client-specified setting '{name}', {RESTRICTED}")
            );
        }
    }

    #[test]
    fn trusted_clients_may_set_anything_but_the_sandbox() {
        let daemon = daemon_settings();
        let out = apply_client_options(
            true,
            &options(&[
                ("build-timeout", "5"),
                ("substituters", "https://anything"),
                ("extra-trusted-public-keys", "mine:key"),
                ("builders", "ssh://builder x86_64-linux"),
            ]),
            &daemon,
        );
        assert!(out.messages.is_empty(), "{:?}", out.messages);
        let s = &out.settings;
        assert_eq!(s.timeout, 5);
        assert_eq!(s.substituters, ["https://anything"]);
        assert_eq!(
            s.trusted_public_keys.last().map(String::as_str),
            Some("mine:key")
        );
        assert_eq!(s.builders, "ssh://builder x86_64-linux");
    }

    #[test]
    fn bad_values_are_warnings_not_errors() {
        let daemon = daemon_settings();
        let out = apply_client_options(false, &options(&[("timeout", "soon")]), &daemon);
        assert_eq!(out.settings.timeout, daemon.timeout);
        assert_eq!(
            warnings(&out),
            ["setting 'timeout' has invalid value 'soon': not an integer"]
        );
        let out = apply_client_options(true, &options(&[("sandbox", "maybe")]), &daemon);
        assert_eq!(out.settings.sandbox, daemon.sandbox);
        assert_eq!(warnings(&out).len(), 1);
        assert!(warnings(&out)[0].contains("'sandbox'"));
    }

    #[test]
    fn a_trusted_client_cannot_change_the_post_build_hook() {
        let mut daemon = daemon_settings();
        daemon.set("post-build-hook", "/etc/nix/upload").unwrap();
        let out = apply_client_options(
            true,
            &options(&[("post-build-hook", "/home/mallory/hook")]),
            &daemon,
        );
        assert_eq!(out.settings.post_build_hook, "/etc/nix/upload");
        let shown = warnings(&out);
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("'/etc/nix/upload'"), "{}", shown[0]);
        // The same value (a client repeating the daemon's nix.conf) is no news.
        let out = apply_client_options(
            true,
            &options(&[("post-build-hook", "/etc/nix/upload")]),
            &daemon,
        );
        assert!(warnings(&out).is_empty());
    }

    #[test]
    fn trusted_unknown_settings_are_ignored_quietly() {
        let out = apply_client_options(
            true,
            &options(&[("no-such-setting", "1")]),
            &daemon_settings(),
        );
        assert!(warnings(&out).is_empty());
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].level, MessageLevel::Debug);
    }

    #[test]
    fn ignored_for_everyone() {
        let daemon = daemon_settings();
        for trusted in [false, true] {
            let out = apply_client_options(
                trusted,
                &options(&[
                    ("ssh-auth-sock", "/tmp/agent"),
                    ("store", "unix:///tmp/s"),
                    ("experimental-features", "nix-command flakes ca-derivations"),
                ]),
                &daemon,
            );
            assert!(out.settings.experimental_features.is_empty());
            assert!(warnings(&out).is_empty());
            assert_eq!(out.messages.len(), 1, "a debug note about the features");
            assert_eq!(out.messages[0].level, MessageLevel::Debug);

            let out =
                apply_client_options(trusted, &options(&[("experimental-features", "")]), &daemon);
            assert!(out.messages.is_empty(), "same features: nothing to say");

            let out =
                apply_client_options(trusted, &options(&[("plugin-files", "/x.so")]), &daemon);
            assert_eq!(out.settings.get("plugin-files").as_deref(), Some(""));
            assert_eq!(warnings(&out).len(), 1);
            assert!(warnings(&out)[0].contains("plugin-files"));
        }
    }

    #[test]
    fn substituter_filtering() {
        let daemon = daemon_settings();
        let out = apply_client_options(
            false,
            &options(&[(
                "substituters",
                "https://extra https://evil https://local file:///srv/cache https://cache.nixos.org",
            )]),
            &daemon,
        );
        assert_eq!(
            out.settings.substituters,
            [
                "https://extra/",
                "https://local",
                "file:///srv/cache",
                "https://cache.nixos.org/"
            ]
        );
        assert_eq!(
            warnings(&out),
            ["ignoring untrusted substituter 'https://evil'"]
        );
    }

    #[test]
    fn substituter_slash_rule_only_adds_a_slash() {
        let daemon = daemon_settings();
        // "https://local" is listed without a slash; "https://local/" is not accepted.
        let out = apply_client_options(
            false,
            &options(&[("substituters", "https://local/")]),
            &daemon,
        );
        assert!(out.settings.substituters.is_empty());
        assert_eq!(
            warnings(&out),
            ["ignoring untrusted substituter 'https://local/'"]
        );
    }

    #[test]
    fn substituter_alias_and_emptying() {
        let daemon = daemon_settings();
        let out = apply_client_options(false, &options(&[("binary-caches", "")]), &daemon);
        assert!(out.settings.substituters.is_empty());
        assert!(out.messages.is_empty());
        let out = apply_client_options(
            false,
            &options(&[("binary-caches", "https://local https://cache.nixos.org/")]),
            &daemon,
        );
        assert_eq!(
            out.settings.substituters,
            ["https://local", "https://cache.nixos.org/"]
        );
    }

    #[test]
    fn narrowing_then_widening_in_one_request_is_not_possible() {
        // Entries run in name order against the connection's current list, so narrowing
        // with `binary-caches` first leaves `substituters` unable to re-add what is gone
        // unless it is a trusted substituter.
        let daemon = daemon_settings();
        let out = apply_client_options(
            false,
            &options(&[
                ("substituters", "https://local https://extra"),
                ("binary-caches", "https://cache.nixos.org/"),
            ]),
            &daemon,
        );
        assert_eq!(out.settings.substituters, ["https://extra/"]);
        assert_eq!(
            warnings(&out),
            ["ignoring untrusted substituter 'https://local'"]
        );
    }

    #[test]
    fn first_of_duplicate_names_wins() {
        let out = apply_client_options(
            false,
            &options(&[("timeout", "1"), ("timeout", "2")]),
            &daemon_settings(),
        );
        assert_eq!(out.settings.timeout, 1);
    }

    #[test]
    fn hostile_names_are_shortened_in_messages() {
        let name = "x".repeat(100_000);
        let out = apply_client_options(false, &options(&[(&name, "1")]), &daemon_settings());
        assert!(out.messages[0].text.len() < 500);
    }

    #[test]
    fn a_trusted_client_cannot_change_the_build_sandbox() {
        let mut daemon = daemon_settings();
        daemon.set("sandbox", "true").unwrap();
        for (name, value) in [
            ("sandbox", "false"),
            ("extra-sandbox-paths", "/etc/shadow"),
            ("sandbox-paths", "/home"),
            ("build-users-group", "wheel"),
            ("allow-new-privileges", "true"),
            ("filter-syscalls", "false"),
        ] {
            let out = apply_client_options(true, &options(&[(name, value)]), &daemon);
            let mut expected = daemon.clone();
            expected.cores = 2;
            assert_eq!(out.settings, expected, "{name} must not change anything");
            let warnings = warnings(&out);
            assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
            assert!(
                warnings[0].contains(&format!("'{name}'")) && warnings[0].contains("nix.conf"),
                "{}",
                warnings[0]
            );
        }
        // What the client's own nix.conf says, when it says what the daemon's does, is no
        // news (Nix clients send the settings of their nix.conf).
        let out = apply_client_options(true, &options(&[("sandbox", "true")]), &daemon);
        assert!(warnings(&out).is_empty());
    }

    #[test]
    fn a_trusted_client_cannot_make_ward_run_a_hook() {
        let daemon = daemon_settings();
        for name in ["pre-build-hook", "diff-hook", "build-hook"] {
            let out = apply_client_options(true, &options(&[(name, "/tmp/evil")]), &daemon);
            let mut expected = daemon.clone();
            expected.cores = 2;
            assert_eq!(out.settings, expected, "{name}");
            assert_eq!(
                warnings(&out),
                [format!(
                    "ignoring the client-specified setting '{name}': ward does not run it"
                )]
            );
        }
    }
}
