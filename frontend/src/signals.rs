//! The frontend's signals, which the broker forwards from the service manager:
//!
//! * SIGHUP (`systemctl reload`): re-read nix.conf. Changed settings apply to connections
//!   accepted from then on; open connections keep theirs and none is dropped. Each change is
//!   logged; a setting that is fixed at start (the store, the build sandbox, which the root
//!   broker was started with) is logged as needing a restart.
//! * SIGTERM / SIGINT: drain. Stop accepting, cancel running builds (which frees their build
//!   users), let operations in progress finish, close idle connections, and exit once none
//!   is left or after [`DRAIN_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use ward_config::cli::DaemonArgs;
use ward_config::Settings;

use crate::server::Shared;

/// How long a stopping frontend waits for connections busy with an operation. The broker
/// kills it soon after (systemd's stop timeout is longer still).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Settings that are read once at start, by the frontend or by the processes the broker was
/// started with: a reload that changes them says they need a restart.
pub const RESTART_ONLY: &[&str] = &[
    "store",
    "max-jobs",
    "ward-max-jobs-per-user",
    "sandbox-dev-shm-size",
    "ward-build-memory-max",
    "build-users-group",
    "sandbox",
    "sandbox-paths",
    "sandbox-build-dir",
    "sandbox-fallback",
    "system",
    "extra-platforms",
    "filter-syscalls",
    "allow-new-privileges",
    "auto-allocate-uids",
    "start-id",
    "id-count",
    "build-dir",
    "secret-key-files",
    "post-build-hook",
    "http-connections",
    "connect-timeout",
    "download-attempts",
    "fsync-metadata",
    "use-sqlite-wal",
    "min-free",
    "max-free",
    "ward-audit-log",
    "ward-build-max-processes",
];

/// One changed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: &'static str,
    pub old: String,
    pub new: String,
    /// Applies only after a restart.
    pub needs_restart: bool,
}

/// What differs between two sets of settings, by name.
pub fn changes(old: &Settings, new: &Settings) -> Vec<Change> {
    let (old, new) = (old.to_key_values(), new.to_key_values());
    new.iter()
        .filter_map(|(name, value)| {
            let before = old.get(name).cloned().unwrap_or_default();
            (before != *value).then(|| Change {
                name,
                old: before,
                new: value.clone(),
                needs_restart: RESTART_ONLY.contains(name),
            })
        })
        .collect()
}

/// Handles SIGHUP for as long as the frontend runs; returns when SIGTERM or SIGINT arrives,
/// after setting `shared.draining`.
pub async fn handle(shared: Arc<Shared>, args: DaemonArgs) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&shared, &args).await,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping: no new connections; running builds are cancelled");
    shared.draining.send_replace(true);
    if let Some(broker) = &shared.broker {
        if let Err(e) = broker.shutting_down().await {
            warn!("telling the broker to cancel builds: {e}");
        }
    }
    Ok(())
}

/// Re-reads nix.conf (and `NIX_CONFIG` and the command line, as at start) and applies it to
/// new connections; a configuration that no longer loads is refused and the old one kept.
async fn reload(shared: &Shared, args: &DaemonArgs) {
    // After a rotation the audit log's path names a new file.
    ward_store::audit::reopen();
    let args = args.clone();
    let loaded =
        tokio::task::spawn_blocking(move || ward_config::daemon::load_setup(args, false)).await;
    match loaded {
        Ok(Ok(setup)) => {
            let old = shared.settings();
            let found = changes(&old, &setup.settings);
            for change in &found {
                if change.needs_restart {
                    warn!(
                        setting = change.name,
                        "nix.conf changed '{}' from '{}' to '{}'; it applies after a restart \
                         (systemctl restart nix-daemon)",
                        change.name,
                        change.old,
                        change.new
                    );
                } else {
                    info!(
                        setting = change.name,
                        "nix.conf changed '{}' from '{}' to '{}'; new connections use it",
                        change.name,
                        change.old,
                        change.new
                    );
                }
            }
            if found.is_empty() {
                info!("re-read nix.conf: nothing changed");
            }
            shared.replace_config(setup.settings);
        }
        Ok(Err(e)) => error!("re-reading nix.conf: {e}; the settings in use stay"),
        Err(e) => error!("re-reading nix.conf: {e}"),
    }
    // Also after a failed reload: systemd waits for READY=1 after RELOADING=1.
    if let Some(broker) = &shared.broker {
        if let Err(e) = broker.serving().await {
            warn!("telling the broker the frontend serves again: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_names_are_real_settings() {
        for name in RESTART_ONLY {
            assert_eq!(ward_config::canonical_name(name), Some(*name), "{name}");
        }
    }

    #[test]
    fn changes_name_each_setting_and_whether_it_needs_a_restart() {
        let host = ward_config::HostInfo::fixed_for_tests();
        let env = ward_config::EnvDefaults::from_env(&|_| None).unwrap();
        let old = Settings::defaults(&host, &env);
        let mut new = old.clone();
        new.set("cores", "3").unwrap();
        new.set("sandbox", "false").unwrap();
        let found = changes(&old, &new);
        let names: Vec<_> = found.iter().map(|c| (c.name, c.needs_restart)).collect();
        assert_eq!(names, [("cores", false), ("sandbox", true)]);
        let cores = &found[0];
        assert_eq!(cores.new, "3");
        assert!(changes(&old, &old).is_empty());
    }
}
