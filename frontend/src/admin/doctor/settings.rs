//! Checks 7 and 9: risky settings in nix.conf (`trusted-users` that trust everyone or a
//! broad group, `sandbox = false`, `require-sigs = false`, an empty `build-users-group` under
//! a root daemon), and how this environment's Nix commands reach the store (`NIX_REMOTE`, and
//! a `store` setting in nix.conf).

use std::path::Path;

use ward_config::SandboxMode;

use super::report::{Check, Finding, Status};
use super::{quote, quote_str, Context};

/// Groups that hold (nearly) every user of a host.
const EVERYONE_GROUPS: [&str; 4] = ["users", "everyone", "staff", "domain users"];
/// Groups of admins: trusting them is as good as giving them root, which they may have
/// anyway.
const ADMIN_GROUPS: [&str; 4] = ["wheel", "sudo", "admin", "adm"];
/// A group with at least this many members is "broad".
const MANY_MEMBERS: usize = 10;

/// One risky `trusted-users` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRisk {
    pub entry: String,
    pub status: Status,
    pub why: String,
}

/// The risky entries of `trusted-users`; `members` gives a group's member count.
pub fn trusted_user_risks(
    trusted: &[String],
    members: &dyn Fn(&str) -> Option<usize>,
) -> Vec<TrustRisk> {
    let mut out = Vec::new();
    for entry in trusted {
        if entry == "*" {
            out.push(TrustRisk {
                entry: entry.clone(),
                status: Status::Error,
                why: "every user who can reach the socket is trusted, and a trusted user is as \
                      good as root (they may disable the sandbox, set build hooks and import \
                      unsigned paths)"
                    .into(),
            });
            continue;
        }
        let Some(group) = entry.strip_prefix('@') else {
            continue;
        };
        let count = members(group);
        let counted = count
            .map(|n| format!(" ({n} member{})", if n == 1 { "" } else { "s" }))
            .unwrap_or_default();
        if EVERYONE_GROUPS.contains(&group) {
            out.push(TrustRisk {
                entry: entry.clone(),
                status: Status::Error,
                why: format!(
                    "every member of group '{group}'{counted}, ordinarily every user, is \
                     trusted: as good as root"
                ),
            });
        } else if ADMIN_GROUPS.contains(&group) {
            out.push(TrustRisk {
                entry: entry.clone(),
                status: Status::Warning,
                why: format!(
                    "every member of group '{group}'{counted} is trusted, which is as good as \
                     root: fine only if each of them may become root anyway"
                ),
            });
        } else if let Some(n) = count.filter(|&n| n >= MANY_MEMBERS) {
            out.push(TrustRisk {
                entry: entry.clone(),
                status: Status::Warning,
                why: format!(
                    "group '{group}' has {n} members, each of them trusted: as good as root"
                ),
            });
        }
    }
    out
}

/// Check 7.
pub fn check_settings(ctx: &Context) -> Vec<Finding> {
    let c = Check::Settings;
    let s = &ctx.setup.settings;
    let mut out = Vec::new();
    let file = ctx.conf_file.display();
    let members = |group: &str| -> Option<usize> {
        let entry = ctx.target.group(group)?;
        let primary = ctx
            .target
            .passwd()
            .into_iter()
            .filter(|a| a.gid == entry.gid && !entry.members.contains(&a.name))
            .count();
        Some(entry.members.len() + primary)
    };
    let risks = trusted_user_risks(&s.trusted_users, &members);
    if !risks.is_empty() {
        let kept: Vec<&str> = s
            .trusted_users
            .iter()
            .filter(|u| !risks.iter().any(|r| &r.entry == *u))
            .map(String::as_str)
            .collect();
        let kept = if kept.is_empty() {
            "root".to_owned()
        } else {
            kept.join(" ")
        };
        for risk in risks {
            let mut f = Finding::error(
                c,
                format!("trusted-users:{}", risk.entry),
                format!(
                    "trusted-users contains '{}' in {file}: {}",
                    risk.entry, risk.why
                ),
            )
            .command(ctx.conf_line(&format!("trusted-users = {kept}")));
            f.status = risk.status;
            out.push(f);
        }
    }
    match s.sandbox {
        SandboxMode::Disabled => out.push(
            Finding::warning(
                c,
                "sandbox",
                format!(
                    "sandbox = false in {file}: builds see the host's file system and network \
                     (ward still runs them as build users under seccomp and landlock, writing \
                     only their build directory and outputs)"
                ),
            )
            .command(ctx.conf_line("sandbox = true")),
        ),
        SandboxMode::Relaxed => out.push(
            Finding::warning(
                c,
                "sandbox",
                format!(
                    "sandbox = relaxed in {file}: derivations with __noChroot build on the \
                     host's file system"
                ),
            )
            .command(ctx.conf_line("sandbox = true")),
        ),
        SandboxMode::Enabled => {}
    }
    if !s.require_sigs {
        let caches = s.substituters.len();
        let mut f = Finding::error(
            c,
            "require-sigs",
            format!(
                "require-sigs = false in {file}: paths from substituters{} are accepted \
                 without a trusted signature, so whoever controls a cache or the way to it \
                 controls what lands in the store",
                if caches > 0 {
                    format!(" ({})", s.substituters.join(" "))
                } else {
                    String::new()
                }
            ),
        )
        .command(ctx.conf_line("require-sigs = true"));
        if caches == 0 {
            f.status = Status::Warning;
        }
        out.push(f);
    }
    if ctx.multi_user && s.build_users_group.is_empty() && !s.auto_allocate_uids {
        out.push(
            Finding::error(
                c,
                "build-users-group",
                format!(
                    "build-users-group is empty in {file} while the daemon runs as root: Nix \
                     would build as root; ward refuses to build at all"
                ),
            )
            .command(ctx.conf_line("build-users-group = nixbld")),
        );
    }
    out
}

/// How a store URI reaches the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUri {
    /// `auto` (or unset): the daemon, unless the user may write the state directory (root),
    /// in which case the store is opened directly.
    Auto,
    /// `daemon`: the default socket.
    Daemon,
    /// `unix://PATH[?root=DIR]`.
    Socket { path: String, root: Option<String> },
    /// `local`, `local?...` or a directory: opened directly, bypassing any daemon.
    Local,
    /// Anything else (`ssh://`, `https://`, ...).
    Other(String),
}

/// Parses a store URI the way Nix 2.8 picks a store type.
pub fn parse_store_uri(uri: &str) -> StoreUri {
    let uri = uri.trim();
    let param = |query: &str, key: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    };
    if uri.is_empty() || uri == "auto" {
        StoreUri::Auto
    } else if uri == "daemon" {
        StoreUri::Daemon
    } else if let Some(rest) = uri.strip_prefix("unix://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        StoreUri::Socket {
            path: path.to_owned(),
            root: param(query, "root"),
        }
    } else if uri == "local"
        || uri.starts_with("local?")
        || uri.starts_with('/')
        || uri.starts_with("file://") && !uri.contains('?')
    {
        StoreUri::Local
    } else {
        StoreUri::Other(uri.to_owned())
    }
}

/// Whether a store URI reaches the daemon on `socket`: `None` when it does, else why not.
pub fn misses_daemon(
    uri: &StoreUri,
    socket: &Path,
    default_socket: &Path,
    as_root: bool,
) -> Option<String> {
    match uri {
        StoreUri::Auto if as_root => Some(
            "as root, 'auto' opens the store directly instead of going through the daemon".into(),
        ),
        StoreUri::Auto => None,
        StoreUri::Daemon if socket == default_socket => None,
        StoreUri::Daemon => Some(format!(
            "'daemon' means the socket '{}', but the daemon listens on '{}'",
            default_socket.display(),
            socket.display()
        )),
        StoreUri::Socket { path, .. } if Path::new(path) == socket => None,
        StoreUri::Socket { path, .. } => Some(format!(
            "it names the socket '{path}', but the daemon listens on '{}'",
            socket.display()
        )),
        StoreUri::Local => Some("it opens the store directly, bypassing the daemon".into()),
        StoreUri::Other(uri) => Some(format!("it names another store, '{uri}'")),
    }
}

/// Check 9.
pub fn check_client(ctx: &Context) -> Vec<Finding> {
    let c = Check::Client;
    let mut out = Vec::new();
    let socket = &ctx.socket;
    // What a client's "daemon" means: the socket from this environment (as Nix reads it).
    let default_socket = ward_config::EnvDefaults::from_env(&ward_config::process_env)
        .map(|d| d.daemon_socket_path)
        .unwrap_or_else(|_| "/nix/var/nix/daemon-socket/socket".to_owned());
    let default_socket = Path::new(&default_socket);
    let chroot = ctx.setup.layout.chroot_root.as_deref();
    let good_remote = match chroot {
        Some(root) => quote_str(&format!(
            "unix://{}?root={}",
            socket.display(),
            root.display()
        )),
        None if socket == default_socket => "daemon".to_owned(),
        None => format!("unix://{}", quote(socket)),
    };
    // Root on a live ward store: Nix's 'auto' would open the store directly.
    let root_bypasses = ctx.euid == 0 && ctx.target.is_live() && !ctx.nix_daemon_serves();
    match ctx.nix_remote.as_deref().map(str::trim) {
        None | Some("") => {}
        Some(value) => {
            let uri = parse_store_uri(value);
            if let Some(why) = misses_daemon(&uri, socket, default_socket, root_bypasses) {
                out.push(
                    Finding::warning(
                        c,
                        "NIX_REMOTE",
                        format!(
                            "NIX_REMOTE={value} in this environment: Nix commands here do not \
                             use the daemon on '{}': {why}",
                            socket.display()
                        ),
                    )
                    .command(format!("export NIX_REMOTE={good_remote}")),
                );
            }
        }
    }
    let conf = ctx.conf_file.display();
    let remove_line = format!(
        "sed -i '/^[[:space:]]*store[[:space:]]*=/d' {}",
        quote(&ctx.conf_file)
    );
    // A NIX_REMOTE overrides the file's store setting for this environment.
    let remote_set = ctx
        .nix_remote
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty());
    if let Some(store) = &ctx.client_store {
        let uri = parse_store_uri(store);
        // On `/` the daemon reads the same nix.conf: a store it cannot serve stops it.
        let daemon_refuses = ctx.target.is_live()
            && matches!(
                uri,
                StoreUri::Daemon | StoreUri::Socket { .. } | StoreUri::Other(_)
            );
        if daemon_refuses {
            out.push(
                Finding::error(
                    c,
                    "store",
                    format!(
                        "store = {store} in {conf}: 'ward daemon' reads this file too and \
                         refuses to start with a store it cannot serve; point clients at the \
                         daemon with NIX_REMOTE instead"
                    ),
                )
                .command(remove_line.clone()),
            );
        } else if uri != StoreUri::Auto {
            // A NIX_REMOTE overrides the file for this environment.
            if let (Some(why), false) = (
                misses_daemon(&uri, socket, default_socket, root_bypasses),
                remote_set,
            ) {
                out.push(
                    Finding::warning(
                        c,
                        "store",
                        format!(
                            "store = {store} in {conf}: Nix commands do not use the daemon on \
                             '{}': {why}",
                            socket.display()
                        ),
                    )
                    .command(remove_line.clone()),
                );
            }
        } else if root_bypasses && !remote_set {
            out.push(
                Finding::warning(
                    c,
                    "root-auto",
                    format!(
                        "as root, Nix commands open the store '{}' directly (store = auto, no \
                         NIX_REMOTE) instead of going through ward: what they add is root's, \
                         which ward's store owner cannot collect",
                        ctx.setup.layout.real_store_dir.display()
                    ),
                )
                .command("export NIX_REMOTE=daemon   # e.g. in /root/.profile"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn trusting_everyone_or_broad_groups_is_risky() {
        let members = |g: &str| match g {
            "users" => Some(40),
            "wheel" => Some(2),
            "devs" => Some(12),
            "ops" => Some(3),
            _ => None,
        };
        assert!(trusted_user_risks(&strings(&["root", "alice", "@ops"]), &members).is_empty());
        let risks = trusted_user_risks(&strings(&["root", "*"]), &members);
        assert_eq!(risks.len(), 1);
        assert_eq!(risks[0].status, Status::Error);
        let risks = trusted_user_risks(&strings(&["@users", "@wheel", "@devs"]), &members);
        assert_eq!(risks.len(), 3);
        assert_eq!(risks[0].status, Status::Error);
        assert!(risks[0].why.contains("40 members"), "{}", risks[0].why);
        assert_eq!(risks[1].status, Status::Warning);
        assert!(risks[2].why.contains("12 members"), "{}", risks[2].why);
        // A group that does not exist trusts nobody.
        assert!(trusted_user_risks(&strings(&["@nonexistent"]), &members).is_empty());
    }

    #[test]
    fn store_uris() {
        assert_eq!(parse_store_uri(""), StoreUri::Auto);
        assert_eq!(parse_store_uri("auto"), StoreUri::Auto);
        assert_eq!(parse_store_uri("daemon"), StoreUri::Daemon);
        assert_eq!(
            parse_store_uri("unix:///s?root=/r&x=1"),
            StoreUri::Socket {
                path: "/s".into(),
                root: Some("/r".into())
            }
        );
        assert_eq!(parse_store_uri("local"), StoreUri::Local);
        assert_eq!(parse_store_uri("local?root=/x"), StoreUri::Local);
        assert_eq!(parse_store_uri("/tmp/store"), StoreUri::Local);
        assert_eq!(
            parse_store_uri("ssh://builder"),
            StoreUri::Other("ssh://builder".into())
        );
    }

    #[test]
    fn which_uris_reach_the_daemon() {
        let default = Path::new("/nix/var/nix/daemon-socket/socket");
        let other = Path::new("/tmp/r/nix/var/nix/daemon-socket/socket");
        let reach = |uri: &str, socket: &Path, root: bool| {
            misses_daemon(&parse_store_uri(uri), socket, default, root)
        };
        assert_eq!(reach("daemon", default, false), None);
        assert_eq!(reach("auto", default, false), None);
        assert!(reach("auto", default, true).unwrap().contains("as root"));
        assert!(reach("daemon", other, false)
            .unwrap()
            .contains("listens on '/tmp/r/nix/var/nix/daemon-socket/socket'"));
        assert_eq!(
            reach(
                "unix:///tmp/r/nix/var/nix/daemon-socket/socket?root=/tmp/r",
                other,
                false
            ),
            None
        );
        assert!(reach("unix:///elsewhere", other, false)
            .unwrap()
            .contains("/elsewhere"));
        assert!(reach("local", default, false).unwrap().contains("directly"));
        assert!(reach("https://cache", default, false)
            .unwrap()
            .contains("another store"));
    }
}
