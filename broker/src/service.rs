//! What the broker tells the service manager (systemd with `Type=notify`): `READY=1` once the
//! frontend accepts clients, `RELOADING=1` while nix.conf is re-read, `STOPPING=1` while the
//! daemon drains, and a `STATUS=` line with each. Without `NOTIFY_SOCKET` (started by hand,
//! by launchd, in tests) every call does nothing.
//!
//! The broker is the service's main process (`ward daemon` execs it), so it is the one
//! systemd listens to (`NotifyAccess=main`); the children never see `NOTIFY_SOCKET`. Every
//! status line is the broker's own wording: nothing the frontend sends reaches systemd.

use sd_notify::NotifyState;

/// The service manager's notification socket, if the daemon runs under one.
#[derive(Debug)]
pub struct ServiceManager {
    enabled: bool,
}

impl ServiceManager {
    /// Looks at `NOTIFY_SOCKET` once.
    pub fn from_env() -> ServiceManager {
        ServiceManager {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            say!("ward-broker: telling the service manager {states:?}: {e}");
        }
    }

    /// Starting: the children are not up yet.
    pub fn starting(&self) {
        self.send(&[NotifyState::Status(
            "starting the store-writer and the frontend",
        )]);
    }

    /// The frontend accepts clients (after start-up, or after a reload).
    pub fn ready(&self, frontend_pid: Option<i32>, reloads: u32) {
        let status = match (frontend_pid, reloads) {
            (Some(pid), 0) => format!("serving clients (frontend pid {pid})"),
            (Some(pid), n) => {
                format!("serving clients (frontend pid {pid}); nix.conf re-read {n} time(s)")
            }
            (None, _) => "serving clients".to_owned(),
        };
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// A child died and is being restarted; `quick_deaths` in a row so far.
    pub fn restarting(&self, role: &str, quick_deaths: u32) {
        let status = if quick_deaths > 1 {
            format!("restarting the {role} (it died {quick_deaths} times in a row)")
        } else {
            format!("restarting the {role}")
        };
        self.send(&[NotifyState::Status(&status)]);
    }

    /// SIGHUP: nix.conf is being re-read; `ready` follows when the frontend has done so.
    pub fn reloading(&self) {
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("re-reading nix.conf"),
        ];
        // systemd ≥ 253 uses the timestamp to match the reload with its READY=1.
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// SIGTERM: draining connections, cancelling builds, stopping the children.
    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining connections and cancelling builds"),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// One test owns `NOTIFY_SOCKET` (the variable is process-wide).
    #[test]
    fn states_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        let manager = ServiceManager::from_env();
        let mut buf = [0u8; 512];
        let mut next = || {
            let n = receiver.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        };
        manager.starting();
        assert_eq!(
            next(),
            "STATUS=starting the store-writer and the frontend\n"
        );
        manager.ready(Some(42), 0);
        assert_eq!(
            next(),
            "READY=1\nSTATUS=serving clients (frontend pid 42)\n"
        );
        manager.reloading();
        let reload = next();
        assert!(
            reload.starts_with("RELOADING=1\nSTATUS=re-reading nix.conf\n"),
            "{reload}"
        );
        assert!(reload.contains("MONOTONIC_USEC="), "{reload}");
        manager.ready(Some(42), 1);
        assert!(next().contains("re-read 1 time(s)"));
        manager.stopping();
        assert!(next().starts_with("STOPPING=1\n"));
        std::env::remove_var("NOTIFY_SOCKET");
    }

    #[test]
    fn without_a_notify_socket_nothing_is_sent() {
        let manager = ServiceManager { enabled: false };
        manager.ready(None, 0);
        manager.stopping();
    }
}
