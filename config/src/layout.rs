//! Where the store, its state and the daemon socket are, from the settings and the daemon's
//! command line.
//!
//! Two shapes, as in Nix:
//! * a native store: the directories from `NIX_STORE_DIR`, `NIX_STATE_DIR`, `NIX_LOG_DIR`
//!   (`store = auto` or `local`);
//! * a chroot store (`--store DIR` or `--store 'local?root=DIR'`): the logical store dir stays
//!   `/nix/store` (or `NIX_STORE_DIR`), the files live in `DIR/nix/store`, state in
//!   `DIR/nix/var/nix`, logs in `DIR/nix/var/log/nix`.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::Settings;

/// The resolved places of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    /// The logical store directory that store paths name (`/nix/store`).
    pub store_dir: String,
    /// Where the store's files really are.
    pub real_store_dir: PathBuf,
    /// The state directory (`db/`, `gcroots/`, `profiles/`, `temproots/`, ...).
    pub state_dir: PathBuf,
    /// The build-log directory.
    pub log_dir: PathBuf,
    /// The daemon socket.
    pub socket_path: PathBuf,
    /// The root of a chroot store, if this is one.
    pub chroot_root: Option<PathBuf>,
}

impl StoreLayout {
    /// The directory of ward's private IPC sockets (frontend ⇄ store-writer).
    pub fn ipc_dir(&self) -> PathBuf {
        self.state_dir.join("ward")
    }

    /// The DB file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("db").join("db.sqlite")
    }

    /// The physical path of a logical path inside the store directory.
    pub fn real_path(&self, logical: &str) -> Option<PathBuf> {
        let rest = logical.strip_prefix(self.store_dir.as_str())?;
        let rest = rest.strip_prefix('/')?;
        Some(self.real_store_dir.join(rest))
    }
}

/// A `store` setting ward cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// A remote or unknown store type.
    #[error(
        "store '{0}' is not a local store; ward serves a local store (use --store DIR, \
         --store 'local?root=DIR', or leave 'store' unset)"
    )]
    NotLocal(String),
    /// A chroot root that is not an absolute path.
    #[error("store root '{0}' must be an absolute path")]
    RelativeRoot(String),
    /// A URL parameter ward does not understand.
    #[error("store '{url}': unsupported parameter '{param}'")]
    BadParam {
        /// The whole URL.
        url: String,
        /// The parameter.
        param: String,
    },
}

/// Resolves the layout. `socket_override` is `--socket-path`; `socket_from_env` is
/// `NIX_DAEMON_SOCKET_PATH` when it is set explicitly.
pub fn resolve(
    settings: &Settings,
    socket_override: Option<&Path>,
    socket_from_env: Option<&Path>,
) -> Result<StoreLayout, LayoutError> {
    let url = settings.store.trim();
    let root = parse_store_url(url)?;
    let mut layout = match root {
        None => StoreLayout {
            store_dir: settings.store_dir.clone(),
            real_store_dir: PathBuf::from(&settings.store_dir),
            state_dir: PathBuf::from(&settings.state_dir),
            log_dir: PathBuf::from(&settings.log_dir),
            socket_path: PathBuf::from(&settings.daemon_socket_path),
            chroot_root: None,
        },
        Some(root) => {
            let state_dir = root.join("nix/var/nix");
            StoreLayout {
                store_dir: settings.store_dir.clone(),
                real_store_dir: root.join(settings.store_dir.trim_start_matches('/')),
                socket_path: state_dir.join("daemon-socket/socket"),
                log_dir: root.join("nix/var/log/nix"),
                state_dir,
                chroot_root: Some(root),
            }
        }
    };
    if let Some(p) = socket_override.or(socket_from_env) {
        layout.socket_path = p.to_path_buf();
    }
    Ok(layout)
}

/// `None` for the native store, `Some(root)` for a chroot store.
fn parse_store_url(url: &str) -> Result<Option<PathBuf>, LayoutError> {
    if url.is_empty() || url == "auto" || url == "local" {
        return Ok(None);
    }
    if url.starts_with('/') {
        return Ok(Some(PathBuf::from(url)));
    }
    let Some(params) = url.strip_prefix("local?") else {
        return Err(LayoutError::NotLocal(url.to_owned()));
    };
    let mut root = None;
    for param in params.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key {
            "root" => {
                if !value.starts_with('/') {
                    return Err(LayoutError::RelativeRoot(value.to_owned()));
                }
                root = Some(PathBuf::from(value));
            }
            // Harmless knobs of the local store that ward's defaults already satisfy.
            "trusted" | "read-only" | "require-sigs" => {}
            _ => {
                return Err(LayoutError::BadParam {
                    url: url.to_owned(),
                    param: key.to_owned(),
                })
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EnvDefaults, HostInfo};

    fn settings(store: &str) -> Settings {
        let env = |_: &str| None;
        let mut s = Settings::defaults(
            &HostInfo::fixed_for_tests(),
            &EnvDefaults::from_env(&env).unwrap(),
        );
        s.set("store", store).unwrap();
        s
    }

    #[test]
    fn native_store_uses_the_settings_dirs() {
        let l = resolve(&settings("auto"), None, None).unwrap();
        assert_eq!(l.real_store_dir, PathBuf::from("/nix/store"));
        assert_eq!(
            l.socket_path,
            PathBuf::from("/nix/var/nix/daemon-socket/socket")
        );
        assert_eq!(l.chroot_root, None);
        assert_eq!(l.db_path(), PathBuf::from("/nix/var/nix/db/db.sqlite"));
    }

    #[test]
    fn chroot_store_puts_everything_under_the_root() {
        for url in ["/tmp/s", "local?root=/tmp/s"] {
            let l = resolve(&settings(url), None, None).unwrap();
            assert_eq!(l.store_dir, "/nix/store");
            assert_eq!(l.real_store_dir, PathBuf::from("/tmp/s/nix/store"));
            assert_eq!(l.state_dir, PathBuf::from("/tmp/s/nix/var/nix"));
            assert_eq!(l.log_dir, PathBuf::from("/tmp/s/nix/var/log/nix"));
            assert_eq!(
                l.socket_path,
                PathBuf::from("/tmp/s/nix/var/nix/daemon-socket/socket")
            );
            assert_eq!(
                l.real_path("/nix/store/abc-x/bin"),
                Some(PathBuf::from("/tmp/s/nix/store/abc-x/bin"))
            );
            assert_eq!(l.real_path("/etc/passwd"), None);
        }
    }

    #[test]
    fn socket_path_overrides() {
        let from_env = PathBuf::from("/env.sock");
        let from_cli = PathBuf::from("/cli.sock");
        let l = resolve(&settings("/tmp/s"), None, Some(&from_env)).unwrap();
        assert_eq!(l.socket_path, from_env);
        let l = resolve(&settings("/tmp/s"), Some(&from_cli), Some(&from_env)).unwrap();
        assert_eq!(l.socket_path, from_cli);
    }

    #[test]
    fn refuses_remote_and_odd_stores() {
        for url in [
            "daemon",
            "unix:///x",
            "ssh://host",
            "local?root=rel",
            "local?bogus=1",
        ] {
            assert!(
                resolve(&settings(url), None, None).is_err(),
                "accepted {url}"
            );
        }
        let err = resolve(&settings("daemon"), None, None).unwrap_err();
        assert!(
            err.to_string().contains("'daemon' is not a local store"),
            "{err}"
        );
    }
}
