//! The typed [`Settings`] with Nix's names, aliases and defaults, and
//! [`Settings::set`], the single entry point used by `nix.conf`, `NIX_CONFIG`, `--option` and
//! SetOptions overrides.
//!
//! Settings ward acts on are typed fields. Settings that Nix knows but ward has no use for
//! (evaluator and flake options, HTTP tuning, ...) are still validated by kind and kept as
//! their printed string, so that a `nix.conf` written for Nix loads without spurious
//! "unknown setting" warnings and a bad value there is still caught.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use super::error::ConfigError;
use super::host::HostInfo;
use super::kinds::{
    AssignCtx, BoolKind, FeaturesKind, IntKind, Kind, ListKind, MapKind, MaxJobsKind, Mode,
    OptionalPathKind, SandboxKind, SandboxMode, SetKind, SettingError, SettingNotice, Shape,
    TextKind,
};
use super::value::{canon_path, tokenize};

/// The public key of cache.nixos.org, trusted by default.
pub const CACHE_NIXOS_ORG_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// Reads one environment variable; `None` when unset. Passed in so tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// Reads `name` from the real process environment.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Reads a variable that must be UTF-8 if set.
pub(crate) fn env_string(
    env: EnvLookup<'_>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match env(name) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| ConfigError::EnvNotUtf8 { name }),
    }
}

/// The parts of the defaults that come from environment variables (Nix reads the same ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDefaults {
    /// `NIX_STORE_DIR`, else `NIX_STORE`, else `/nix/store`.
    pub store_dir: String,
    /// `NIX_STATE_DIR`, else `/nix/var/nix`.
    pub state_dir: String,
    /// `NIX_LOG_DIR`, else `/nix/var/log/nix`.
    pub log_dir: String,
    /// `NIX_CONF_DIR`, else `/etc/nix`.
    pub conf_dir: String,
    /// `NIX_DAEMON_SOCKET_PATH`, else `<state dir>/daemon-socket/socket`.
    pub daemon_socket_path: String,
    /// `NIX_REMOTE`, else `auto`: the default of the `store` setting.
    pub store_uri: String,
    /// `NIX_REMOTE_SYSTEMS` (colon-separated machine files), the old way to set `builders`.
    pub remote_systems: Option<String>,
    /// `NIX_IGNORE_SYMLINK_STORE=1`: default of `allow-symlinked-store`.
    pub ignore_symlink_store: bool,
}

impl EnvDefaults {
    /// Reads the variables through `env`. Directories must be absolute and are made canonical.
    pub fn from_env(env: EnvLookup<'_>) -> Result<EnvDefaults, ConfigError> {
        let dir = |name: &'static str, fallback: &str| -> Result<String, ConfigError> {
            let value = env_string(env, name)?;
            let raw = value.as_deref().unwrap_or(fallback);
            canon_path(raw).ok_or_else(|| ConfigError::env_not_absolute(name, raw))
        };
        let store_dir = match env_string(env, "NIX_STORE_DIR")? {
            Some(value) => canon_path(&value)
                .ok_or_else(|| ConfigError::env_not_absolute("NIX_STORE_DIR", &value))?,
            None => dir("NIX_STORE", "/nix/store")?,
        };
        let state_dir = dir("NIX_STATE_DIR", "/nix/var/nix")?;
        let default_socket = format!("{state_dir}/daemon-socket/socket");
        Ok(EnvDefaults {
            store_dir,
            log_dir: dir("NIX_LOG_DIR", "/nix/var/log/nix")?,
            conf_dir: dir("NIX_CONF_DIR", "/etc/nix")?,
            daemon_socket_path: dir("NIX_DAEMON_SOCKET_PATH", &default_socket)?,
            state_dir,
            store_uri: env_string(env, "NIX_REMOTE")?.unwrap_or_else(|| "auto".to_owned()),
            remote_systems: env_string(env, "NIX_REMOTE_SYSTEMS")?,
            ignore_symlink_store: env_string(env, "NIX_IGNORE_SYMLINK_STORE")?.as_deref()
                == Some("1"),
        })
    }

    /// Default of `builders`: `@<conf dir>/machines`, or each file of `NIX_REMOTE_SYSTEMS`
    /// prefixed with `@`.
    fn default_builders(&self) -> String {
        match &self.remote_systems {
            Some(files) => files
                .split(':')
                .filter(|file| !file.is_empty())
                .map(|file| format!("@{file}"))
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("@{}/machines", self.conf_dir),
        }
    }
}

/// A setting's name, old names and command-line shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub shape: Shape,
}

impl Spec {
    fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.contains(&name)
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

fn string_set(words: &[&str]) -> BTreeSet<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

/// Declares the typed settings once: the struct fields, their names, aliases, kinds and
/// defaults, and the name-based dispatch used by [`Settings::set`] and [`Settings::get`].
macro_rules! define_settings {
    (
        defaults($host:ident, $env:ident);
        $(
            $(#[doc = $doc:literal])*
            $field:ident: $ty:ty, $kind:ty, $name:literal $([$($alias:literal),+])?
                = $default:expr;
        )*
    ) => {
        /// Every setting ward uses, with Nix's defaults, plus the directories Nix takes from
        /// the environment. Build it with [`Settings::defaults`] or
        /// [`load`](crate::load()); change it only through [`Settings::set`].
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            /// The store directory (`NIX_STORE_DIR`), e.g. `/nix/store`.
            pub store_dir: String,
            /// The state directory (`NIX_STATE_DIR`), e.g. `/nix/var/nix`.
            pub state_dir: String,
            /// The log directory (`NIX_LOG_DIR`), e.g. `/nix/var/log/nix`.
            pub log_dir: String,
            /// The configuration directory (`NIX_CONF_DIR`), e.g. `/etc/nix`.
            pub conf_dir: String,
            /// Where the daemon socket lives (`NIX_DAEMON_SOCKET_PATH`).
            pub daemon_socket_path: String,
            $( $(#[doc = $doc])* pub $field: $ty, )*
            /// Known settings ward does not use, by canonical name, as printed strings.
            other: BTreeMap<&'static str, String>,
            /// CPU count, for `max-jobs = auto`.
            cpu_count: u32,
        }

        const TYPED_SPECS: &[Spec] = &[
            $( Spec {
                name: $name,
                aliases: &[$($($alias),+)?],
                shape: <$kind as Kind>::SHAPE,
            }, )*
        ];

        impl Settings {
            /// Nix's defaults on `host` with the directories from `env`.
            pub fn defaults($host: &HostInfo, $env: &EnvDefaults) -> Settings {
                Settings {
                    store_dir: $env.store_dir.clone(),
                    state_dir: $env.state_dir.clone(),
                    log_dir: $env.log_dir.clone(),
                    conf_dir: $env.conf_dir.clone(),
                    daemon_socket_path: $env.daemon_socket_path.clone(),
                    $( $field: $default, )*
                    other: OTHER_SPECS
                        .iter()
                        .map(|spec| (spec.spec.name, spec.default.to_owned()))
                        .collect(),
                    cpu_count: $host.cpu_count,
                }
            }

            fn assign_typed(
                &mut self,
                canonical: &str,
                name: &str,
                text: &str,
                mode: Mode,
                ctx: &mut AssignCtx<'_>,
            ) -> Option<Result<(), SettingError>> {
                match canonical {
                    $( $name => Some(<$kind as Kind>::assign(&mut self.$field, name, text, mode, ctx)), )*
                    _ => None,
                }
            }

            fn render_typed(&self, canonical: &str) -> Option<String> {
                match canonical {
                    $( $name => Some(<$kind as Kind>::render(&self.$field)), )*
                    _ => None,
                }
            }
        }
    };
}

define_settings! {
    defaults(host, env);

    /// `store`: the store to serve (`auto`, `daemon`, `local?root=...`, ...).
    store: String, TextKind, "store" = env.store_uri.clone();
    /// `keep-failed`: keep the build directory of failed builds.
    keep_failed: bool, BoolKind, "keep-failed" = false;
    /// `keep-going`: keep building other derivations after one fails.
    keep_going: bool, BoolKind, "keep-going" = false;
    /// `fallback`: build from source when substitution fails.
    fallback: bool, BoolKind, "fallback" ["build-fallback"] = false;
    /// `log-lines`: lines of a failed build's log to show.
    log_lines: u64, IntKind<u64>, "log-lines" = 10;
    /// `max-jobs`: parallel local builds (`auto` is the CPU count).
    max_jobs: u32, MaxJobsKind, "max-jobs" ["build-max-jobs"] = 1;
    /// `cores`: `NIX_BUILD_CORES` for builders; 0 means all. Nix 2.8 defaults to the CPU count.
    cores: u32, IntKind<u32>, "cores" ["build-cores"] = host.cpu_count.max(1);
    /// `system`: the platform this machine builds for.
    system: String, TextKind, "system" = host.system.clone();
    /// `max-silent-time`: seconds a build may produce no output; 0 = no limit.
    max_silent_time: i64, IntKind<i64>, "max-silent-time" ["build-max-silent-time"] = 0;
    /// `timeout`: seconds a build may run; 0 = no limit.
    timeout: i64, IntKind<i64>, "timeout" ["build-timeout"] = 0;
    /// `build-hook`: program that hands builds to remote machines. Empty (ward's default,
    /// since it ships no `build-remote`) means no remote builds.
    build_hook: String, OptionalPathKind, "build-hook" = String::new();
    /// `builders`: remote build machines (`@FILE` reads them from FILE).
    builders: String, TextKind, "builders" = env.default_builders();
    /// `builders-use-substitutes`: remote builders fetch from their own substituters.
    builders_use_substitutes: bool, BoolKind, "builders-use-substitutes" = false;
    /// `gc-reserved-space`: bytes kept free for the garbage collector.
    gc_reserved_space: i64, IntKind<i64>, "gc-reserved-space" = 8 * 1024 * 1024;
    /// `fsync-metadata`: fsync the database.
    fsync_metadata: bool, BoolKind, "fsync-metadata" = true;
    /// `use-sqlite-wal`: use SQLite's write-ahead log (not on WSL1).
    use_sqlite_wal: bool, BoolKind, "use-sqlite-wal" = !host.is_wsl1;
    /// `sync-before-registering`: call sync() before registering a path.
    sync_before_registering: bool, BoolKind, "sync-before-registering" = false;
    /// `substitute`: use substituters at all.
    substitute: bool, BoolKind, "substitute" ["build-use-substitutes"] = true;
    /// `build-users-group`: group of the build users; `nixbld` when running as root.
    build_users_group: String, TextKind, "build-users-group" =
        if host.is_root { "nixbld".to_owned() } else { String::new() };
    /// `impersonate-linux-26`: report a 2.6 kernel to builds.
    impersonate_linux_26: bool, BoolKind, "impersonate-linux-26" ["build-impersonate-linux-26"]
        = false;
    /// `keep-build-log`: store build logs under the log directory.
    keep_build_log: bool, BoolKind, "keep-build-log" ["build-keep-log"] = true;
    /// `compress-build-log`: bzip2 the stored build logs.
    compress_build_log: bool, BoolKind, "compress-build-log" ["build-compress-log"] = true;
    /// `max-build-log-size`: bytes of output after which a build is killed; 0 = no limit.
    max_build_log_size: u64, IntKind<u64>, "max-build-log-size" ["build-max-log-size"] = 0;
    /// `build-poll-interval`: seconds between polls for locks.
    build_poll_interval: u32, IntKind<u32>, "build-poll-interval" = 5;
    /// `keep-outputs`: the collector keeps outputs of live derivations.
    keep_outputs: bool, BoolKind, "keep-outputs" ["gc-keep-outputs"] = false;
    /// `keep-derivations`: the collector keeps derivations of live outputs.
    keep_derivations: bool, BoolKind, "keep-derivations" ["gc-keep-derivations"] = true;
    /// `auto-optimise-store`: hard-link identical files when adding paths.
    auto_optimise_store: bool, BoolKind, "auto-optimise-store" = false;
    /// `keep-env-derivations`: user environments keep their derivations alive.
    keep_env_derivations: bool, BoolKind, "keep-env-derivations" ["env-keep-derivations"] = false;
    /// `sandbox`: sandboxed builds (on by default on Linux).
    sandbox: SandboxMode, SandboxKind, "sandbox" ["build-use-chroot", "build-use-sandbox"] =
        if cfg!(target_os = "linux") { SandboxMode::Enabled } else { SandboxMode::Disabled };
    /// `sandbox-paths`: host paths visible in the sandbox (`extra-sandbox-paths` appends).
    sandbox_paths: BTreeSet<String>, SetKind, "sandbox-paths"
        ["build-chroot-dirs", "build-sandbox-paths"] = BTreeSet::new();
    /// `sandbox-fallback`: build without a sandbox when the kernel cannot make one.
    sandbox_fallback: bool, BoolKind, "sandbox-fallback" = true;
    /// `repeat`: extra times to build each derivation to check determinism.
    repeat: u64, IntKind<u64>, "repeat" ["build-repeat"] = 0;
    /// `sandbox-dev-shm-size`: size of the sandbox's /dev/shm.
    sandbox_dev_shm_size: String, TextKind, "sandbox-dev-shm-size" = "50%".to_owned();
    /// `sandbox-build-dir`: the build directory as seen inside the sandbox.
    sandbox_build_dir: String, TextKind, "sandbox-build-dir" = "/build".to_owned();
    /// `allowed-impure-host-deps`: prefixes derivations may ask for (Darwin).
    allowed_impure_host_deps: BTreeSet<String>, SetKind, "allowed-impure-host-deps" =
        BTreeSet::new();
    /// `run-diff-hook`: run `diff-hook` when a repeated build differs.
    run_diff_hook: bool, BoolKind, "run-diff-hook" = false;
    /// `diff-hook`: program comparing differing build results; empty = none.
    diff_hook: String, OptionalPathKind, "diff-hook" = String::new();
    /// `enforce-determinism`: fail when repeated builds differ.
    enforce_determinism: bool, BoolKind, "enforce-determinism" = true;
    /// `trusted-public-keys`: keys whose signatures make a path trusted.
    trusted_public_keys: Vec<String>, ListKind, "trusted-public-keys"
        ["binary-cache-public-keys"] = strings(&[CACHE_NIXOS_ORG_KEY]);
    /// `secret-key-files`: keys to sign locally built paths with.
    secret_key_files: Vec<String>, ListKind, "secret-key-files" = Vec::new();
    /// `tarball-ttl`: seconds downloaded tarballs stay fresh.
    tarball_ttl: u32, IntKind<u32>, "tarball-ttl" = 60 * 60;
    /// `require-sigs`: paths from untrusted sources need a trusted signature.
    require_sigs: bool, BoolKind, "require-sigs" = true;
    /// `extra-platforms`: other platforms this machine can build for.
    extra_platforms: BTreeSet<String>, SetKind, "extra-platforms" =
        host.extra_platforms.clone();
    /// `system-features`: features builds may require (`kvm`, `big-parallel`, ...).
    system_features: BTreeSet<String>, SetKind, "system-features" =
        host.system_features.clone();
    /// `substituters`: binary caches used, in order.
    substituters: Vec<String>, ListKind, "substituters" ["binary-caches"] =
        strings(&["https://cache.nixos.org/"]);
    /// `trusted-substituters`: caches untrusted users may additionally select.
    trusted_substituters: BTreeSet<String>, SetKind, "trusted-substituters"
        ["trusted-binary-caches"] = BTreeSet::new();
    /// `trusted-users`: users (and `@groups`) with extra rights.
    trusted_users: Vec<String>, ListKind, "trusted-users" = strings(&["root"]);
    /// `narinfo-cache-negative-ttl`: seconds a "not in cache" answer is remembered.
    narinfo_cache_negative_ttl: u32, IntKind<u32>, "narinfo-cache-negative-ttl" = 3600;
    /// `narinfo-cache-positive-ttl`: seconds a cached narinfo is remembered.
    narinfo_cache_positive_ttl: u32, IntKind<u32>, "narinfo-cache-positive-ttl" =
        30 * 24 * 3600;
    /// `allowed-users`: users (and `@groups`) that may connect at all.
    allowed_users: Vec<String>, ListKind, "allowed-users" = strings(&["*"]);
    /// `pre-build-hook`: program run before each build to add sandbox paths.
    pre_build_hook: String, TextKind, "pre-build-hook" = String::new();
    /// `post-build-hook`: program run after each build.
    post_build_hook: String, TextKind, "post-build-hook" = String::new();
    /// `ward-build-max-processes` (ward only): processes and threads one build may run at
    /// once, as its build user (RLIMIT_NPROC); 0 = no cap. Multi-user mode only.
    ward_build_max_processes: u32, IntKind<u32>, "ward-build-max-processes" = 4096;
    /// `ward-max-jobs-per-user` (ward only): of the `max-jobs` build slots, how many one
    /// client uid may hold at once, so that one user's sleeping builds cannot stall everyone
    /// else's; 0 = no cap (Nix's behaviour).
    ward_max_jobs_per_user: u32, IntKind<u32>, "ward-max-jobs-per-user" = 0;
    /// `ward-build-memory-max` (ward only): each build's `memory.max` in bytes, where the
    /// daemon runs in a cgroup of its own that offers the memory controller (systemd's
    /// `Delegate=yes`); 0 = none.
    ward_build_memory_max: u64, IntKind<u64>, "ward-build-memory-max" = 0;
    /// `ward-max-output-size` (ward only): the largest NAR one build output may have, in
    /// bytes; the store-writer stops reading (and refuses the output) past it, so a sparse
    /// 1 TiB file is refused at the limit instead of being hashed for hours; 0 = no limit.
    ward_max_output_size: u64, IntKind<u64>, "ward-max-output-size" = 0;
    /// `ward-durable-replies` (ward only): flush each addition's contents to disk before its
    /// rows are committed and the client is answered, instead of registering it at once and
    /// flushing additions in groups a few milliseconds later (sync-behind, which never leaves
    /// a valid path with missing contents after a crash, but may forget the last additions
    /// of the moment the power went).
    ward_durable_replies: bool, BoolKind, "ward-durable-replies" = false;
    /// `ward-audit-log` (ward only): the audit log file, JSON lines; empty = none. Best set
    /// in `ward.conf`, which Nix clients do not read (they warn about settings they do not
    /// know).
    ward_audit_log: String, TextKind, "ward-audit-log" = String::new();
    /// `netrc-file`: HTTP credentials for substituters.
    netrc_file: String, TextKind, "netrc-file" = format!("{}/netrc", env.conf_dir);
    /// `filter-syscalls`: forbid setuid files, ACLs and xattrs in builds.
    filter_syscalls: bool, BoolKind, "filter-syscalls" = true;
    /// `allow-new-privileges`: let builds gain privileges (setuid programs).
    allow_new_privileges: bool, BoolKind, "allow-new-privileges" = false;
    /// `ignored-acls`: ACLs left alone when canonicalising outputs.
    ignored_acls: BTreeSet<String>, SetKind, "ignored-acls" =
        string_set(&["security.selinux", "system.nfs4_acl"]);
    /// `min-free`: collect garbage during builds when free space drops below this.
    min_free: u64, IntKind<u64>, "min-free" = 0;
    /// `max-free`: stop such a collection once this much space is free.
    max_free: u64, IntKind<u64>, "max-free" = u64::MAX;
    /// `min-free-check-interval`: seconds between free-space checks.
    min_free_check_interval: u64, IntKind<u64>, "min-free-check-interval" = 5;
    /// `experimental-features`: enabled experimental features.
    experimental_features: BTreeSet<String>, FeaturesKind, "experimental-features" =
        BTreeSet::new();
    /// `nar-buffer-size`: NAR bytes held in memory before spilling to disk.
    nar_buffer_size: u64, IntKind<u64>, "nar-buffer-size" = 32 * 1024 * 1024;
    /// `allow-symlinked-store`: accept a store directory with symlinks in its path.
    allow_symlinked_store: bool, BoolKind, "allow-symlinked-store" = env.ignore_symlink_store;
    /// `connect-timeout`: seconds to wait for a substituter connection; 0 = curl's default.
    connect_timeout: u64, IntKind<u64>, "connect-timeout" = 0;
    /// `stalled-download-timeout`: seconds without data before a download is dropped.
    stalled_download_timeout: u64, IntKind<u64>, "stalled-download-timeout" = 300;
    /// `download-attempts`: tries per download.
    download_attempts: u32, IntKind<u32>, "download-attempts" = 5;
    /// `http-connections`: parallel connections to caches; 0 = no limit.
    http_connections: u64, IntKind<u64>, "http-connections"
        ["binary-caches-parallel-connections"] = 25;
    /// `auto-allocate-uids` (Nix 2.11+): builds get uids from a range instead of nixbld users.
    auto_allocate_uids: bool, BoolKind, "auto-allocate-uids" = false;
    /// `start-id` (Nix 2.11+): first uid/gid of that range.
    start_id: u32, IntKind<u32>, "start-id" = 0x3400_0000;
    /// `id-count` (Nix 2.11+): size of that range.
    id_count: u32, IntKind<u32>, "id-count" = 128 * 65536;
    /// `use-cgroups` (Nix 2.11+): run each build in its own cgroup.
    use_cgroups: bool, BoolKind, "use-cgroups" = false;
    /// `build-dir` (Nix 2.22+): where build directories are made; empty = the temp dir.
    build_dir: String, OptionalPathKind, "build-dir" = String::new();
    /// `max-substitution-jobs` (Nix 2.16+): parallel substitutions.
    max_substitution_jobs: u32, IntKind<u32>, "max-substitution-jobs" = 16;
}

/// Value kinds of the settings ward knows but does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtherKind {
    Bool,
    U32,
    U64,
    Text,
    List,
    Map,
}

/// A known-but-unused setting: its name, kind and printed default.
#[derive(Debug)]
struct OtherSpec {
    spec: Spec,
    kind: OtherKind,
    default: &'static str,
}

const fn other(
    name: &'static str,
    aliases: &'static [&'static str],
    kind: OtherKind,
    default: &'static str,
) -> OtherSpec {
    let shape = match kind {
        OtherKind::Bool => Shape::Bool,
        OtherKind::U32 | OtherKind::U64 | OtherKind::Text => Shape::Value,
        OtherKind::List | OtherKind::Map => Shape::Appendable,
    };
    OtherSpec {
        spec: Spec {
            name,
            aliases,
            shape,
        },
        kind,
        default,
    }
}

/// Settings of Nix 2.8 (store, evaluator, fetchers, file transfer, `nix develop`) and some
/// later releases that ward accepts and ignores.
const OTHER_SPECS: &[OtherSpec] = &[
    other("print-missing", &[], OtherKind::Bool, "true"),
    other("hashed-mirrors", &[], OtherKind::List, ""),
    other("plugin-files", &[], OtherKind::List, ""),
    other(
        "darwin-log-sandbox-violations",
        &[],
        OtherKind::Bool,
        "false",
    ),
    other("http2", &[], OtherKind::Bool, "true"),
    other("user-agent-suffix", &[], OtherKind::Text, ""),
    other("use-case-hack", &[], OtherKind::Bool, "false"),
    other("preallocate-contents", &[], OtherKind::Bool, "false"),
    other("show-trace", &[], OtherKind::Bool, "false"),
    other(
        "allow-unsafe-native-code-during-evaluation",
        &[],
        OtherKind::Bool,
        "false",
    ),
    other("nix-path", &[], OtherKind::List, ""),
    other("restrict-eval", &[], OtherKind::Bool, "false"),
    other("pure-eval", &[], OtherKind::Bool, "false"),
    other("allow-import-from-derivation", &[], OtherKind::Bool, "true"),
    other("allowed-uris", &[], OtherKind::List, ""),
    other("trace-function-calls", &[], OtherKind::Bool, "false"),
    other("eval-cache", &[], OtherKind::Bool, "true"),
    other("access-tokens", &[], OtherKind::Map, ""),
    other("allow-dirty", &[], OtherKind::Bool, "true"),
    other("warn-dirty", &[], OtherKind::Bool, "true"),
    other(
        "flake-registry",
        &[],
        OtherKind::Text,
        "https://github.com/NixOS/flake-registry/raw/master/flake-registry.json",
    ),
    other("use-registries", &[], OtherKind::Bool, "true"),
    other("accept-flake-config", &[], OtherKind::Bool, "false"),
    other("commit-lockfile-summary", &[], OtherKind::Text, ""),
    other("bash-prompt", &[], OtherKind::Text, ""),
    other("bash-prompt-suffix", &[], OtherKind::Text, ""),
    // Later releases.
    other("bash-prompt-prefix", &[], OtherKind::Text, ""),
    other("download-buffer-size", &[], OtherKind::U64, "67108864"),
    other("always-allow-substitutes", &[], OtherKind::Bool, "false"),
    other("use-xdg-base-directories", &[], OtherKind::Bool, "false"),
    other(
        "require-drop-supplementary-groups",
        &[],
        OtherKind::Bool,
        "false",
    ),
    other("fsync-store-paths", &[], OtherKind::Bool, "false"),
    other("ssl-cert-file", &[], OtherKind::Text, ""),
    other("impure-env", &[], OtherKind::Map, ""),
    other("upgrade-nix-store-path-url", &[], OtherKind::Text, ""),
    other("allow-dirty-locks", &[], OtherKind::Bool, "false"),
    other("trace-verbose", &[], OtherKind::Bool, "false"),
    other("debugger-on-trace", &[], OtherKind::Bool, "false"),
    other("ignore-try", &[], OtherKind::Bool, "false"),
    other("max-call-depth", &[], OtherKind::U32, "10000"),
    other("eval-system", &[], OtherKind::Text, ""),
    other("warn-large-path-threshold", &[], OtherKind::U64, "0"),
    other(
        "trace-import-from-derivation",
        &[],
        OtherKind::Bool,
        "false",
    ),
    other("json-log-path", &[], OtherKind::Text, ""),
];

/// Where a resolved name points.
#[derive(Debug, Clone, Copy)]
enum Target {
    Typed,
    Other(OtherKind),
}

/// A setting name resolved to its canonical name.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    canonical: &'static str,
    target: Target,
    mode: Mode,
}

/// Finds the setting `name` (canonical or alias) answers to.
fn lookup(name: &str) -> Option<(Spec, Target)> {
    if let Some(spec) = TYPED_SPECS.iter().find(|spec| spec.answers_to(name)) {
        return Some((*spec, Target::Typed));
    }
    OTHER_SPECS
        .iter()
        .find(|other| other.spec.answers_to(name))
        .map(|other| (other.spec, Target::Other(other.kind)))
}

/// Resolves `name` as Nix's `Config::set` does: an exact name or alias first, then
/// `extra-NAME` for an appendable NAME.
fn resolve(name: &str) -> Option<Resolved> {
    if let Some((spec, target)) = lookup(name) {
        return Some(Resolved {
            canonical: spec.name,
            target,
            mode: Mode::Replace,
        });
    }
    let base = name.strip_prefix("extra-")?;
    let (spec, target) = lookup(base)?;
    (spec.shape == Shape::Appendable).then_some(Resolved {
        canonical: spec.name,
        target,
        mode: Mode::Append,
    })
}

/// The canonical name `name` stands for (resolving aliases and `extra-`), if it is a setting.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    resolve(name).map(|resolved| resolved.canonical)
}

/// The command-line shape of the setting whose canonical name is `name`. Aliases get no
/// flags, as in Nix 2.8.
pub fn setting_shape(name: &str) -> Option<Shape> {
    TYPED_SPECS
        .iter()
        .chain(OTHER_SPECS.iter().map(|other| &other.spec))
        .find(|spec| spec.name == name)
        .map(|spec| spec.shape)
}

/// The outcome of a successful [`Settings::set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The canonical name that was set.
    pub canonical: &'static str,
    /// Whether the value was appended to (`extra-NAME`) rather than replaced.
    pub appended: bool,
    /// Things dropped from the value (e.g. unknown experimental features).
    pub notices: Vec<SettingNotice>,
}

impl Settings {
    /// Sets `name` (canonical, alias, or `extra-NAME` to append to a list) from its textual
    /// `value`, with Nix's parsing rules. On error nothing changes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<Applied, SettingError> {
        let resolved = resolve(name).ok_or_else(|| SettingError::Unknown {
            name: name.to_owned(),
        })?;
        let mut notices = Vec::new();
        let mut ctx = AssignCtx {
            cpu_count: self.cpu_count,
            notices: &mut notices,
        };
        match resolved.target {
            Target::Typed => self
                .assign_typed(resolved.canonical, name, value, resolved.mode, &mut ctx)
                .unwrap_or_else(|| {
                    Err(SettingError::Unknown {
                        name: name.to_owned(),
                    })
                })?,
            Target::Other(kind) => {
                let current = self.other.entry(resolved.canonical).or_default();
                assign_other(kind, current, name, value, resolved.mode, &mut ctx)?;
            }
        }
        Ok(Applied {
            canonical: resolved.canonical,
            appended: resolved.mode == Mode::Append,
            notices,
        })
    }

    /// The value of setting `name` (canonical or alias) as Nix prints it.
    pub fn get(&self, name: &str) -> Option<String> {
        let (spec, target) = lookup(name)?;
        match target {
            Target::Typed => self.render_typed(spec.name),
            Target::Other(_) => self.other.get(spec.name).cloned(),
        }
    }

    /// Every setting's canonical name with its printed value, sorted by name (like
    /// `nix show-config`).
    pub fn to_key_values(&self) -> BTreeMap<&'static str, String> {
        TYPED_SPECS
            .iter()
            .chain(OTHER_SPECS.iter().map(|other| &other.spec))
            .filter_map(|spec| Some((spec.name, self.get(spec.name)?)))
            .collect()
    }

    /// Whether `feature` is listed in `experimental-features`.
    pub fn has_experimental_feature(&self, feature: &str) -> bool {
        self.experimental_features.contains(feature)
    }
}

/// Assigns to a known-but-unused setting held as a printed string, reusing the typed kinds
/// so validation and printing match the typed settings.
fn assign_other(
    kind: OtherKind,
    current: &mut String,
    name: &str,
    text: &str,
    mode: Mode,
    ctx: &mut AssignCtx<'_>,
) -> Result<(), SettingError> {
    fn replace<K: Kind>(
        mut value: K::Value,
        current: &mut String,
        name: &str,
        text: &str,
        mode: Mode,
        ctx: &mut AssignCtx<'_>,
    ) -> Result<(), SettingError> {
        K::assign(&mut value, name, text, mode, ctx)?;
        *current = K::render(&value);
        Ok(())
    }
    match kind {
        OtherKind::Bool => replace::<BoolKind>(false, current, name, text, mode, ctx),
        OtherKind::U32 => replace::<IntKind<u32>>(0, current, name, text, mode, ctx),
        OtherKind::U64 => replace::<IntKind<u64>>(0, current, name, text, mode, ctx),
        OtherKind::Text => replace::<TextKind>(String::new(), current, name, text, mode, ctx),
        OtherKind::List => {
            let existing = tokenize(current).map(str::to_owned).collect();
            replace::<ListKind>(existing, current, name, text, mode, ctx)
        }
        OtherKind::Map => {
            let mut existing = BTreeMap::new();
            MapKind::assign(&mut existing, name, current, Mode::Replace, ctx)?;
            replace::<MapKind>(existing, current, name, text, mode, ctx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn defaults() -> Settings {
        let env = EnvDefaults::from_env(&env_from(&[])).unwrap();
        Settings::defaults(&HostInfo::fixed_for_tests(), &env)
    }

    #[test]
    fn nix_defaults() {
        let s = defaults();
        assert_eq!(s.store_dir, "/nix/store");
        assert_eq!(s.state_dir, "/nix/var/nix");
        assert_eq!(s.log_dir, "/nix/var/log/nix");
        assert_eq!(s.conf_dir, "/etc/nix");
        assert_eq!(s.daemon_socket_path, "/nix/var/nix/daemon-socket/socket");
        assert_eq!(s.store, "auto");
        assert_eq!(s.trusted_users, ["root"]);
        assert_eq!(s.allowed_users, ["*"]);
        assert_eq!(s.build_users_group, "");
        assert!(s.require_sigs);
        assert_eq!(s.trusted_public_keys, [CACHE_NIXOS_ORG_KEY]);
        assert_eq!(s.substituters, ["https://cache.nixos.org/"]);
        assert!(s.trusted_substituters.is_empty());
        assert_eq!(s.max_jobs, 1);
        assert_eq!(s.cores, 4);
        assert_eq!(s.system, "x86_64-linux");
        assert_eq!(s.builders, "@/etc/nix/machines");
        assert_eq!(s.netrc_file, "/etc/nix/netrc");
        assert_eq!(s.max_free, u64::MAX);
        assert_eq!(s.get("max-free").as_deref(), Some("18446744073709551615"));
        assert_eq!(s.get("sandbox").as_deref(), Some("true"));
        assert_eq!(s.get("warn-dirty").as_deref(), Some("true"));
        assert_eq!(
            s.get("system-features").as_deref(),
            Some("benchmark big-parallel nixos-test")
        );
        assert_eq!(s.get("no-such-setting"), None);
    }

    #[test]
    fn root_gets_nixbld() {
        let env = EnvDefaults::from_env(&env_from(&[])).unwrap();
        let host = HostInfo {
            is_root: true,
            ..HostInfo::fixed_for_tests()
        };
        assert_eq!(Settings::defaults(&host, &env).build_users_group, "nixbld");
    }

    #[test]
    fn env_directories() {
        let env = EnvDefaults::from_env(&env_from(&[
            ("NIX_STORE_DIR", "/tmp/x//store/"),
            ("NIX_STATE_DIR", "/tmp/x/var"),
            ("NIX_LOG_DIR", "/tmp/x/log"),
            ("NIX_CONF_DIR", "/tmp/x/etc"),
            ("NIX_REMOTE", "daemon"),
            ("NIX_REMOTE_SYSTEMS", "/a:/b"),
            ("NIX_IGNORE_SYMLINK_STORE", "1"),
        ]))
        .unwrap();
        let s = Settings::defaults(&HostInfo::fixed_for_tests(), &env);
        assert_eq!(s.store_dir, "/tmp/x/store");
        assert_eq!(s.daemon_socket_path, "/tmp/x/var/daemon-socket/socket");
        assert_eq!(s.store, "daemon");
        assert_eq!(s.builders, "@/a @/b");
        assert_eq!(s.netrc_file, "/tmp/x/etc/netrc");
        assert!(s.allow_symlinked_store);
    }

    #[test]
    fn nix_store_is_the_fallback_for_nix_store_dir() {
        let env = EnvDefaults::from_env(&env_from(&[("NIX_STORE", "/old/store")])).unwrap();
        assert_eq!(env.store_dir, "/old/store");
        let env = EnvDefaults::from_env(&env_from(&[
            ("NIX_STORE", "/old/store"),
            ("NIX_STORE_DIR", "/new/store"),
        ]))
        .unwrap();
        assert_eq!(env.store_dir, "/new/store");
    }

    #[test]
    fn env_relative_or_empty_dirs_are_errors() {
        for (name, value) in [
            ("NIX_STORE_DIR", "store"),
            ("NIX_STATE_DIR", ""),
            ("NIX_DAEMON_SOCKET_PATH", "s"),
        ] {
            let err = EnvDefaults::from_env(&env_from(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn env_non_utf8_is_an_error() {
        use std::os::unix::ffi::OsStringExt;
        let env =
            |name: &str| (name == "NIX_CONF_DIR").then(|| OsString::from_vec(vec![b'/', 0xff]));
        let err = EnvDefaults::from_env(&env).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::EnvNotUtf8 {
                    name: "NIX_CONF_DIR"
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn aliases_set_the_canonical_setting() {
        let cases = [
            ("build-max-jobs", "3", "max-jobs", "3"),
            ("build-cores", "2", "cores", "2"),
            ("build-timeout", "10", "timeout", "10"),
            ("build-max-silent-time", "7", "max-silent-time", "7"),
            (
                "binary-caches",
                "https://a/ https://b",
                "substituters",
                "https://a/ https://b",
            ),
            (
                "trusted-binary-caches",
                "https://t",
                "trusted-substituters",
                "https://t",
            ),
            (
                "binary-cache-public-keys",
                "k:1",
                "trusted-public-keys",
                "k:1",
            ),
            ("build-use-sandbox", "relaxed", "sandbox", "relaxed"),
            ("build-use-chroot", "false", "sandbox", "false"),
            ("build-chroot-dirs", "/x", "sandbox-paths", "/x"),
            ("build-sandbox-paths", "/y", "sandbox-paths", "/y"),
            ("gc-keep-outputs", "true", "keep-outputs", "true"),
            ("gc-keep-derivations", "false", "keep-derivations", "false"),
            (
                "env-keep-derivations",
                "true",
                "keep-env-derivations",
                "true",
            ),
            ("build-fallback", "true", "fallback", "true"),
            ("build-use-substitutes", "false", "substitute", "false"),
            ("build-keep-log", "false", "keep-build-log", "false"),
            ("build-compress-log", "false", "compress-build-log", "false"),
            ("build-max-log-size", "1M", "max-build-log-size", "1048576"),
            ("build-repeat", "2", "repeat", "2"),
            (
                "build-impersonate-linux-26",
                "yes",
                "impersonate-linux-26",
                "true",
            ),
            (
                "binary-caches-parallel-connections",
                "8",
                "http-connections",
                "8",
            ),
        ];
        for (alias, value, canonical, printed) in cases {
            let mut s = defaults();
            let applied = s.set(alias, value).unwrap();
            assert_eq!(applied.canonical, canonical, "{alias}");
            assert_eq!(s.get(canonical).as_deref(), Some(printed), "{alias}");
            assert_eq!(s.get(alias).as_deref(), Some(printed), "{alias}");
        }
    }

    #[test]
    fn removed_aliases_are_unknown_as_in_nix_2_8() {
        // Nix 2.4 dropped these; Nix 2.8 warns about them and ignores them.
        let mut s = defaults();
        for name in ["build-extra-sandbox-paths", "build-extra-chroot-dirs"] {
            assert_eq!(
                s.set(name, "/x"),
                Err(SettingError::Unknown {
                    name: name.to_owned()
                }),
                "{name}"
            );
        }
        assert!(s.sandbox_paths.is_empty());
    }

    #[test]
    fn extra_prefix_appends_to_lists_only() {
        let mut s = defaults();
        s.set("extra-substituters", "https://mine").unwrap();
        assert_eq!(s.substituters, ["https://cache.nixos.org/", "https://mine"]);
        s.set("extra-binary-caches", "https://other").unwrap();
        assert_eq!(s.substituters.len(), 3);
        s.set("extra-sandbox-paths", "/b /a").unwrap();
        s.set("extra-sandbox-paths", "/a /c").unwrap();
        assert_eq!(s.get("sandbox-paths").as_deref(), Some("/a /b /c"));
        s.set("extra-trusted-users", "@wheel").unwrap();
        assert_eq!(s.trusted_users, ["root", "@wheel"]);
        s.set("extra-nix-path", "nixpkgs=/x").unwrap();
        s.set("extra-nix-path", "y=/y").unwrap();
        assert_eq!(s.get("nix-path").as_deref(), Some("nixpkgs=/x y=/y"));
        // `extra-platforms` is a setting of its own; `extra-extra-platforms` appends to it.
        s.set("extra-platforms", "aarch64-linux").unwrap();
        assert_eq!(s.get("extra-platforms").as_deref(), Some("aarch64-linux"));
        s.set("extra-extra-platforms", "armv7l-linux").unwrap();
        assert_eq!(
            s.get("extra-platforms").as_deref(),
            Some("aarch64-linux armv7l-linux")
        );
        for name in [
            "extra-sandbox",
            "extra-cores",
            "extra-keep-failed",
            "extra-store",
        ] {
            let err = s.set(name, "1").unwrap_err();
            assert_eq!(
                err,
                SettingError::Unknown {
                    name: name.to_owned()
                }
            );
        }
    }

    #[test]
    fn plain_set_replaces_lists() {
        let mut s = defaults();
        s.set("substituters", "").unwrap();
        assert!(s.substituters.is_empty());
        s.set("trusted-users", "alice  bob").unwrap();
        assert_eq!(s.trusted_users, ["alice", "bob"]);
    }

    #[test]
    fn bad_values_are_refused_and_leave_the_setting_alone() {
        let mut s = defaults();
        let cases = [
            ("keep-failed", "maybe"),
            ("require-sigs", "TRUE"),
            ("sandbox", "yes"),
            ("cores", "two"),
            ("cores", "4294967296"),
            ("cores", "-1"),
            ("max-jobs", "1K"),
            ("timeout", "1Q"),
            ("build-hook", "relative/hook"),
            ("pure-eval", "sometimes"),
            ("tarball-ttl", "5T"),
            ("download-buffer-size", "x"),
        ];
        let before = s.clone();
        for (name, value) in cases {
            let err = s.set(name, value).unwrap_err();
            assert_eq!(err.name(), name);
            assert!(err.to_string().contains(value), "{err}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn integers_with_suffixes_and_signs() {
        let mut s = defaults();
        s.set("min-free", "1G").unwrap();
        assert_eq!(s.min_free, 1 << 30);
        s.set("max-free", "2t").unwrap();
        assert_eq!(s.max_free, 2 << 40);
        s.set("timeout", "-1").unwrap();
        assert_eq!(s.timeout, -1);
        s.set("max-jobs", "auto").unwrap();
        assert_eq!(s.max_jobs, 4);
        s.set("cores", "+3").unwrap();
        assert_eq!(s.cores, 3);
    }

    #[test]
    fn known_but_unused_settings_are_validated_and_kept() {
        let mut s = defaults();
        s.set("pure-eval", "yes").unwrap();
        assert_eq!(s.get("pure-eval").as_deref(), Some("true"));
        s.set("flake-registry", "/etc/registry.json").unwrap();
        assert_eq!(
            s.get("flake-registry").as_deref(),
            Some("/etc/registry.json")
        );
        s.set("access-tokens", "github.com=abc").unwrap();
        s.set("extra-access-tokens", "github.com=zzz gitlab.com=def")
            .unwrap();
        assert_eq!(
            s.get("access-tokens").as_deref(),
            Some("github.com=abc gitlab.com=def")
        );
        s.set("download-buffer-size", "1M").unwrap();
        assert_eq!(s.get("download-buffer-size").as_deref(), Some("1048576"));
        assert!(s.set("extra-show-trace", "true").is_err());
    }

    #[test]
    fn experimental_features_notice_unknown() {
        let mut s = defaults();
        let applied = s.set("experimental-features", "nix-command bogus").unwrap();
        assert_eq!(
            applied.notices,
            [SettingNotice::UnknownExperimentalFeature {
                feature: "bogus".into()
            }]
        );
        assert!(s.has_experimental_feature("nix-command"));
        s.set("extra-experimental-features", "flakes").unwrap();
        assert_eq!(
            s.get("experimental-features").as_deref(),
            Some("flakes nix-command")
        );
    }

    #[test]
    fn unknown_setting() {
        let mut s = defaults();
        assert_eq!(
            s.set("no-such-thing", "1"),
            Err(SettingError::Unknown {
                name: "no-such-thing".into()
            })
        );
        assert_eq!(
            s.set("extra-", "1"),
            Err(SettingError::Unknown {
                name: "extra-".into()
            })
        );
    }

    #[test]
    fn shapes_for_the_command_line() {
        assert_eq!(setting_shape("keep-failed"), Some(Shape::Bool));
        assert_eq!(setting_shape("sandbox"), Some(Shape::Sandbox));
        assert_eq!(setting_shape("cores"), Some(Shape::Value));
        assert_eq!(setting_shape("substituters"), Some(Shape::Appendable));
        assert_eq!(setting_shape("show-trace"), Some(Shape::Bool));
        assert_eq!(setting_shape("nix-path"), Some(Shape::Appendable));
        assert_eq!(setting_shape("binary-caches"), None, "aliases get no flags");
        assert_eq!(setting_shape("nope"), None);
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("build-timeout"), Some("timeout"));
        assert_eq!(canonical_name("extra-binary-caches"), Some("substituters"));
        assert_eq!(canonical_name("extra-timeout"), None);
        assert_eq!(canonical_name("nope"), None);
    }

    #[test]
    fn names_are_unique() {
        let mut seen = BTreeSet::new();
        for spec in TYPED_SPECS
            .iter()
            .chain(OTHER_SPECS.iter().map(|o| &o.spec))
        {
            assert!(seen.insert(spec.name), "duplicate {}", spec.name);
            for alias in spec.aliases {
                assert!(seen.insert(alias), "duplicate {alias}");
            }
        }
        let printed = defaults().to_key_values();
        assert_eq!(printed.len(), TYPED_SPECS.len() + OTHER_SPECS.len());
    }

    #[test]
    fn other_defaults_are_valid_for_their_kind() {
        // Re-setting each default through `set` must succeed and print the same text.
        let s = defaults();
        for other in OTHER_SPECS {
            let mut copy = s.clone();
            copy.set(other.spec.name, other.default).unwrap();
            assert_eq!(copy.get(other.spec.name).as_deref(), Some(other.default));
        }
        for spec in TYPED_SPECS {
            let mut copy = s.clone();
            let printed = s.get(spec.name).unwrap();
            copy.set(spec.name, &printed).unwrap();
            assert_eq!(copy.get(spec.name), Some(printed), "{}", spec.name);
        }
    }
}
