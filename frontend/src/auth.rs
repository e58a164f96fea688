//! Who a peer is and whether it may connect: `allowed-users`, `trusted-users` and
//! `build-users-group`, decided once per connection from kernel facts (SO_PEERCRED).

use std::fmt;

use nix::unistd::{Gid, Group, Uid, User};

/// The kernel's word on who is at the other end of a socket, plus the names Nix matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Process id, when the platform reports one.
    pub pid: Option<i32>,
    /// User id.
    pub uid: u32,
    /// Primary group id, when known.
    pub gid: Option<u32>,
    /// `getpwuid(uid)->pw_name`, or the uid in decimal when the lookup fails (so a numeric
    /// list entry matches only users without a name, as in Nix).
    pub user_name: String,
    /// `getgrgid(gid)->gr_name`, or the gid in decimal.
    pub group_name: Option<String>,
    /// True when the user name came from the user database.
    pub user_known: bool,
}

impl PeerInfo {
    /// Resolves names for the credentials of a peer.
    pub fn from_credentials(pid: Option<i32>, uid: u32, gid: Option<u32>) -> PeerInfo {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let group_name = gid.map(|g| {
            Group::from_gid(Gid::from_raw(g))
                .ok()
                .flatten()
                .map_or_else(|| g.to_string(), |gr| gr.name)
        });
        PeerInfo {
            pid,
            uid,
            gid,
            user_known: user.is_some(),
            user_name: user.map_or_else(|| uid.to_string(), |u| u.name),
            group_name,
        }
    }
}

/// The outcome of the per-connection trust decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Listed in `trusted-users` (or forced trusted).
    Trusted,
    /// Allowed to connect, not trusted.
    Untrusted,
}

impl Trust {
    /// True for [`Trust::Trusted`].
    pub fn is_trusted(self) -> bool {
        self == Trust::Trusted
    }
}

/// Why a peer was refused; the message tells the admin which setting to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither trusted nor in `allowed-users`.
    #[error(
        "user '{0}' is not allowed to connect to the Nix daemon (add it to 'allowed-users' in nix.conf)"
    )]
    NotAllowed(String),
    /// The peer's primary group is the build users group.
    #[error(
        "user '{user}' is refused because its primary group is '{group}', the 'build-users-group'; build users may never connect"
    )]
    BuildUser {
        /// The peer's name.
        user: String,
        /// The build users group.
        group: String,
    },
}

impl AuthError {
    /// The setting that caused the refusal.
    pub fn setting(&self) -> &'static str {
        match self {
            AuthError::NotAllowed(_) => "allowed-users",
            AuthError::BuildUser { .. } => "build-users-group",
        }
    }
}

/// Group database look-up, as a trait so tests need no real groups.
pub trait GroupMembers {
    /// Member names of group `name` (`gr_mem`), or `None` if there is no such group.
    fn members(&self, name: &str) -> Option<Vec<String>>;
}

/// The system's group database.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemGroups;

impl GroupMembers for SystemGroups {
    fn members(&self, name: &str) -> Option<Vec<String>> {
        Group::from_name(name).ok().flatten().map(|g| g.mem)
    }
}

/// Nix's `matchUser`: `*`, the exact user name (a numeric entry only when the name lookup
/// failed), or `@group` when the peer's primary group is that group or the user is listed as
/// a member of it in the group database.
pub fn matches(list: &[String], peer: &PeerInfo, groups: &dyn GroupMembers) -> bool {
    list.iter().any(|entry| {
        if entry == "*" {
            return true;
        }
        if let Some(group) = entry.strip_prefix('@') {
            if peer.group_name.as_deref() == Some(group) {
                return true;
            }
            return groups
                .members(group)
                .is_some_and(|members| members.contains(&peer.user_name));
        }
        *entry == peer.user_name
    })
}

/// The settings the decision reads.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    /// `trusted-users`.
    pub trusted_users: Vec<String>,
    /// `allowed-users`.
    pub allowed_users: Vec<String>,
    /// `build-users-group` (empty = none).
    pub build_users_group: String,
}

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccessPolicy(trusted={:?}, allowed={:?}, build group={:?})",
            self.trusted_users, self.allowed_users, self.build_users_group
        )
    }
}

/// Decides once per connection, exactly as Nix 2.8: trusted when `trusted-users` matches;
/// refused when not trusted and `allowed-users` does not match, or when the primary group is
/// the build users group (trusted or not).
pub fn decide(
    policy: &AccessPolicy,
    peer: &PeerInfo,
    groups: &dyn GroupMembers,
) -> Result<Trust, AuthError> {
    let trusted = matches(&policy.trusted_users, peer, groups);
    if !policy.build_users_group.is_empty()
        && peer.group_name.as_deref() == Some(policy.build_users_group.as_str())
    {
        return Err(AuthError::BuildUser {
            user: peer.user_name.clone(),
            group: policy.build_users_group.clone(),
        });
    }
    if !trusted && !matches(&policy.allowed_users, peer, groups) {
        return Err(AuthError::NotAllowed(peer.user_name.clone()));
    }
    Ok(if trusted {
        Trust::Trusted
    } else {
        Trust::Untrusted
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeGroups(HashMap<&'static str, Vec<&'static str>>);
    impl GroupMembers for FakeGroups {
        fn members(&self, name: &str) -> Option<Vec<String>> {
            self.0
                .get(name)
                .map(|m| m.iter().map(|s| s.to_string()).collect())
        }
    }

    fn peer(user: &str, group: &str) -> PeerInfo {
        PeerInfo {
            pid: Some(1),
            uid: 1000,
            gid: Some(100),
            user_name: user.into(),
            group_name: Some(group.into()),
            user_known: true,
        }
    }

    fn policy(trusted: &[&str], allowed: &[&str], build: &str) -> AccessPolicy {
        AccessPolicy {
            trusted_users: trusted.iter().map(|s| s.to_string()).collect(),
            allowed_users: allowed.iter().map(|s| s.to_string()).collect(),
            build_users_group: build.into(),
        }
    }

    fn groups() -> FakeGroups {
        FakeGroups(HashMap::from([("wheel", vec!["alice"]), ("staff", vec![])]))
    }

    #[test]
    fn defaults_trust_root_and_allow_everyone() {
        let p = policy(&["root"], &["*"], "nixbld");
        assert_eq!(
            decide(&p, &peer("root", "root"), &groups()),
            Ok(Trust::Trusted)
        );
        assert_eq!(
            decide(&p, &peer("alice", "users"), &groups()),
            Ok(Trust::Untrusted)
        );
    }

    #[test]
    fn groups_match_by_primary_group_or_membership() {
        let p = policy(&["@wheel"], &["@staff"], "");
        assert_eq!(
            decide(&p, &peer("alice", "users"), &groups()),
            Ok(Trust::Trusted)
        );
        assert_eq!(
            decide(&p, &peer("bob", "staff"), &groups()),
            Ok(Trust::Untrusted)
        );
        assert_eq!(
            decide(&p, &peer("carol", "users"), &groups()),
            Err(AuthError::NotAllowed("carol".into()))
        );
        assert!(!matches(
            &["@nosuch".into()],
            &peer("carol", "users"),
            &groups()
        ));
    }

    #[test]
    fn build_users_are_refused_even_when_trusted() {
        let p = policy(&["*"], &["*"], "nixbld");
        let err = decide(&p, &peer("nixbld1", "nixbld"), &groups()).unwrap_err();
        assert!(err.to_string().contains("build-users-group"), "{err}");
    }

    #[test]
    fn refusal_names_the_setting() {
        let p = policy(&["root"], &["root"], "");
        let err = decide(&p, &peer("mallory", "users"), &groups()).unwrap_err();
        assert!(err.to_string().contains("'mallory'") && err.to_string().contains("allowed-users"));
    }

    #[test]
    fn numeric_entries_match_only_unknown_users() {
        let mut unknown = peer("1234", "users");
        unknown.user_known = false;
        assert!(matches(&["1234".into()], &unknown, &groups()));
        let named = peer("1234", "users");
        // A user really named "1234" in the database still matches by name.
        assert!(matches(&["1234".into()], &named, &groups()));
        assert!(!matches(
            &["1234".into()],
            &peer("alice", "users"),
            &groups()
        ));
    }

    #[test]
    fn resolves_root_from_the_system() {
        let p = PeerInfo::from_credentials(Some(1), 0, Some(0));
        assert_eq!(p.user_name, "root");
        assert!(p.user_known);
        let nobody = PeerInfo::from_credentials(None, 4_000_000_000, None);
        assert_eq!(nobody.user_name, "4000000000");
        assert!(!nobody.user_known);
    }
}
