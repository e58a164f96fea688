//! Check 3: the build users. The `build-users-group` exists and lists at least `max-jobs`
//! members; each is a real account that is not root, whose primary group is the build group
//! and who is in no other group (a build running as a user in `sudo` gets that group's
//! rights); and no build user owns a process while no build holds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::report::{Check, Finding, Fix, Status};
use super::Context;
use crate::admin::target::{GroupEntry, Target};

/// Home directories and shells of accounts made only to run builds.
const NO_LOGIN_SHELLS: [&str; 3] = ["nologin", "false", "true"];
const NO_HOMES: [&str; 4] = ["/var/empty", "/nonexistent", "/homeless-shelter", "/"];
/// Where ward's broker holds each build user's lock while a build runs as it.
const WARD_LOCK_DIR: &str = "/run/ward-build-users";

/// A user account with what tells a build user from a login account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl Account {
    /// No login shell or no real home: an account made to run things, not a person's.
    pub fn looks_like_build_user(&self) -> bool {
        let shell = self.shell.rsplit('/').next().unwrap_or("");
        NO_LOGIN_SHELLS.contains(&shell) || NO_HOMES.contains(&self.home.as_str())
    }
}

/// The target's account `name` (through NSS on `/`, from `ROOT/etc/passwd` otherwise).
pub fn account(target: &Target, name: &str) -> Option<Account> {
    if target.is_live() {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        return Some(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir.display().to_string(),
            shell: user.shell.display().to_string(),
        });
    }
    let text = std::fs::read_to_string(target.path("etc/passwd")).ok()?;
    parse_passwd(&text).into_iter().find(|a| a.name == name)
}

/// The accounts of a passwd file.
pub fn parse_passwd(text: &str) -> Vec<Account> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(Account {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
                shell: f.get(6).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The `useradd` arguments `ward install` creates build user `name` with.
pub use crate::admin::install::build_user_useradd_args as useradd_args;

/// What the build group and its members look like.
pub struct BuildGroupFacts<'a> {
    pub group: &'a GroupEntry,
    /// Each listed member with its account, if it exists.
    pub members: Vec<(String, Option<Account>)>,
    /// Every group of the target (for other memberships).
    pub all_groups: &'a [GroupEntry],
    pub max_jobs: u32,
    /// Whether a name is taken by an account (for new build users' names).
    pub taken: &'a dyn Fn(&str) -> bool,
}

impl std::fmt::Debug for BuildGroupFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildGroupFacts")
            .field("group", &self.group)
            .field("members", &self.members)
            .field("max_jobs", &self.max_jobs)
            .finish_non_exhaustive()
    }
}

/// The findings about the build group's members (not their processes).
pub fn analyse_members(facts: &BuildGroupFacts<'_>) -> Vec<Finding> {
    let c = Check::BuildUsers;
    let group = &facts.group.name;
    let gid = facts.group.gid;
    let mut out = Vec::new();
    let mut usable = 0u32;
    for (name, account) in &facts.members {
        let Some(account) = account else {
            out.push(
                Finding::error(
                    c,
                    format!("user:{name}"),
                    format!("group '{group}' lists build user '{name}', who does not exist"),
                )
                .command("ward install"),
            );
            continue;
        };
        if account.uid == 0 {
            out.push(
                Finding::error(
                    c,
                    format!("user:{name}"),
                    format!("build user '{name}' has uid 0: builds would run as root"),
                )
                .command(format!("gpasswd --delete {name} {group}")),
            );
            continue;
        }
        if !account.looks_like_build_user() {
            out.push(
                Finding::error(
                    c,
                    format!("user:{name}"),
                    format!(
                        "'{name}' is a login account (home '{}', shell '{}') in the build group \
                         '{group}': builds would run as '{name}', with its files and rights",
                        account.home, account.shell
                    ),
                )
                .command(format!("gpasswd --delete {name} {group}")),
            );
            continue;
        }
        usable += 1;
        let others: Vec<&str> = facts
            .all_groups
            .iter()
            .filter(|g| g.gid != gid && g.members.iter().any(|m| m == name))
            .map(|g| g.name.as_str())
            .collect();
        let mut problems = Vec::new();
        if account.gid != gid {
            let primary = facts
                .all_groups
                .iter()
                .find(|g| g.gid == account.gid)
                .map(|g| format!("'{}'", g.name))
                .unwrap_or_else(|| format!("gid {}", account.gid));
            problems.push(format!("its primary group is {primary}, not '{group}'"));
        }
        if !others.is_empty() {
            problems.push(format!(
                "it is also in group{} {}: a build running as '{name}' gets {} rights",
                if others.len() == 1 { "" } else { "s" },
                others
                    .iter()
                    .map(|g| format!("'{g}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if others.len() == 1 {
                    "that group's"
                } else {
                    "those groups'"
                }
            ));
        }
        if !problems.is_empty() {
            out.push(
                Finding::error(
                    c,
                    format!("user:{name}"),
                    format!("build user '{name}': {}", problems.join("; ")),
                )
                .command(format!("usermod --gid {group} --groups {group} {name}"))
                .fixable(Fix::OnlyBuildGroup {
                    user: name.clone(),
                    group: group.clone(),
                }),
            );
        }
    }
    let wanted = facts.max_jobs.max(1);
    if usable < wanted {
        let missing = wanted - usable;
        let listed: Vec<&str> = facts.members.iter().map(|(n, _)| n.as_str()).collect();
        let mut new_names = Vec::new();
        let mut i = 1u32;
        while new_names.len() < missing as usize && i < 100_000 {
            let name = format!("{group}{i}");
            if !listed.contains(&name.as_str()) && !(facts.taken)(&name) {
                new_names.push(name);
            }
            i += 1;
        }
        let what = if usable == 0 {
            format!("group '{group}' has no usable build users: nothing can be built")
        } else {
            format!(
                "group '{group}' has {usable} usable build user{} for max-jobs = {}: builds \
                 wait for a free one",
                if usable == 1 { "" } else { "s" },
                facts.max_jobs
            )
        };
        let status = if usable == 0 {
            Status::Error
        } else {
            Status::Warning
        };
        let mut f = Finding::error(c, "count", what)
            .command("ward install")
            .fixable(Fix::CreateBuildUsers {
                group: group.clone(),
                users: new_names,
            });
        f.status = status;
        out.push(f);
    }
    out
}

/// The processes whose real, effective, saved or file-system uid is `uid`: (pid, name).
pub fn processes_of(uid: u32) -> Vec<(u32, String)> {
    all_processes()
        .into_iter()
        .filter(|(_, uids, _)| uids.contains(&uid))
        .map(|(pid, _, name)| (pid, name))
        .collect()
}

/// Every process with its uids and name, from `/proc/*/status`.
fn all_processes() -> Vec<(u32, Vec<u32>, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let (uids, name) = parse_status(&status)?;
            Some((pid, uids, name))
        })
        .collect()
}

/// The uids (real, effective, saved, fs) and name in a `/proc/PID/status`; `None` for a
/// zombie (it owns nothing any more and cannot be killed, only reaped by its parent).
pub fn parse_status(status: &str) -> Option<(Vec<u32>, String)> {
    let mut name = String::new();
    let mut uids = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Name:") {
            name = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("State:") {
            if rest.trim_start().starts_with('Z') {
                return None;
            }
        } else if let Some(rest) = line.strip_prefix("Uid:") {
            uids = Some(
                rest.split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect::<Vec<u32>>(),
            );
        }
    }
    Some((uids?, name))
}

/// The (major, minor, inode) of every lock in `/proc/locks`.
pub fn parse_locks(text: &str) -> Vec<(u32, u32, u64)> {
    text.lines()
        .filter_map(|line| {
            line.split_whitespace().find_map(|field| {
                let mut parts = field.split(':');
                let major = u32::from_str_radix(parts.next()?, 16).ok()?;
                let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
                let inode = parts.next()?.parse().ok()?;
                parts.next().is_none().then_some((major, minor, inode))
            })
        })
        .collect()
}

/// Whether a build holds `uid`: ward's broker's lock file, or Nix's userpool file, is locked.
fn build_holds(uid: u32, state_dir: &Path, locks: &[(u32, u32, u64)]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let files: [PathBuf; 2] = [
        Path::new(WARD_LOCK_DIR).join(uid.to_string()),
        state_dir.join("userpool").join(uid.to_string()),
    ];
    files.iter().any(|file| {
        let Ok(meta) = std::fs::metadata(file) else {
            return false;
        };
        let dev = meta.dev();
        let key = (
            nix::sys::stat::major(dev) as u32,
            nix::sys::stat::minor(dev) as u32,
            meta.ino(),
        );
        locks.contains(&key)
    })
}

/// Check 3.
pub fn check_build_users(ctx: &Context) -> Vec<Finding> {
    let c = Check::BuildUsers;
    let settings = &ctx.setup.settings;
    if !ctx.multi_user {
        return vec![Finding::ok(
            c,
            "single-user store: builds run as the daemon's own user",
        )];
    }
    if settings.auto_allocate_uids {
        return vec![Finding::ok(
            c,
            format!(
                "auto-allocate-uids: builds get uids from {} on, no build-users-group members \
                 needed",
                settings.start_id
            ),
        )];
    }
    let group_name = &settings.build_users_group;
    if group_name.is_empty() {
        return vec![Finding::ok(
            c,
            "build-users-group is empty: no build users to check (see the settings check)",
        )];
    }
    let Some(group) = ctx.target.group(group_name) else {
        return vec![Finding::error(
            c,
            "group",
            format!(
                "build-users-group '{group_name}' does not exist on {}",
                ctx.target.root.display()
            ),
        )
        .command("ward install")
        .fixable(Fix::CreateGroup {
            name: group_name.clone(),
        })];
    };
    let all_groups = ctx.target.groups();
    let members: Vec<(String, Option<Account>)> = group
        .members
        .iter()
        .map(|m| (m.clone(), account(&ctx.target, m)))
        .collect();
    let taken = |name: &str| account(&ctx.target, name).is_some();
    let facts = BuildGroupFacts {
        group: &group,
        members: members.clone(),
        all_groups: &all_groups,
        max_jobs: settings.max_jobs,
        taken: &taken,
    };
    let mut out = analyse_members(&facts);

    // Stray processes.
    let locks = std::fs::read_to_string("/proc/locks")
        .map(|t| parse_locks(&t))
        .unwrap_or_default();
    let processes = all_processes();
    let mut by_uid: BTreeMap<u32, Vec<(u32, String)>> = BTreeMap::new();
    for account in members.iter().filter_map(|(_, a)| a.as_ref()) {
        if account.uid == 0 {
            continue;
        }
        let owned: Vec<(u32, String)> = processes
            .iter()
            .filter(|(_, uids, _)| uids.contains(&account.uid))
            .map(|(pid, _, n)| (*pid, n.clone()))
            .collect();
        if !owned.is_empty() {
            by_uid.insert(account.uid, owned);
        }
    }
    let daemon_up = ctx.probe.reachable();
    for (name, account) in members.iter().filter_map(|(n, a)| Some((n, a.as_ref()?))) {
        let Some(owned) = by_uid.get(&account.uid) else {
            continue;
        };
        let shown: Vec<String> = owned
            .iter()
            .take(5)
            .map(|(pid, n)| format!("{pid} ({n})"))
            .collect();
        let more = owned.len().saturating_sub(5);
        let list = if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        };
        if build_holds(account.uid, &ctx.setup.layout.state_dir, &locks) {
            out.push(Finding::ok(
                c,
                format!("a build runs as '{name}' (processes {list})"),
            ));
            continue;
        }
        let mut f = Finding::warning(
            c,
            format!("processes:{name}"),
            format!(
                "build user '{name}' owns processes {list} while no build holds it: leftovers \
                 of a build that escaped being killed{}",
                if daemon_up {
                    ""
                } else {
                    " (the daemon is not running)"
                }
            ),
        )
        .command(format!("pkill -KILL -U {name}"));
        if !daemon_up {
            f = f.fixable(Fix::KillProcesses {
                user: name.clone(),
                uid: account.uid,
            });
        }
        out.push(f);
    }
    if out.is_empty() {
        out.push(Finding::ok(
            c,
            format!(
                "group '{group_name}' has {} build users, none in another group, none with \
                 stray processes",
                group.members.len()
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_user(name: &str, uid: u32, gid: u32) -> Account {
        Account {
            name: name.into(),
            uid,
            gid,
            home: "/var/empty".into(),
            shell: "/usr/sbin/nologin".into(),
        }
    }

    fn group(name: &str, gid: u32, members: &[&str]) -> GroupEntry {
        GroupEntry {
            name: name.into(),
            gid,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn analyse(
        members: Vec<(String, Option<Account>)>,
        groups: &[GroupEntry],
        max_jobs: u32,
    ) -> Vec<Finding> {
        let taken = |name: &str| name == "nixbld3";
        let facts = BuildGroupFacts {
            group: &groups[0],
            members,
            all_groups: groups,
            max_jobs,
            taken: &taken,
        };
        analyse_members(&facts)
    }

    #[test]
    fn healthy_build_users_give_no_findings() {
        let groups = [group("nixbld", 30000, &["nixbld1", "nixbld2"])];
        let members = vec![
            ("nixbld1".into(), Some(build_user("nixbld1", 30001, 30000))),
            ("nixbld2".into(), Some(build_user("nixbld2", 30002, 30000))),
        ];
        assert!(analyse(members, &groups, 2).is_empty());
    }

    #[test]
    fn a_build_user_in_sudo_or_with_another_primary_group_is_named() {
        let groups = [
            group("nixbld", 30000, &["nixbld1", "nixbld2"]),
            group("sudo", 27, &["alice", "nixbld1"]),
            group("users", 100, &[]),
        ];
        let members = vec![
            ("nixbld1".into(), Some(build_user("nixbld1", 30001, 30000))),
            ("nixbld2".into(), Some(build_user("nixbld2", 30002, 100))),
        ];
        let found = analyse(members, &groups, 1);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].message.contains("'nixbld1'") && found[0].message.contains("'sudo'"));
        assert_eq!(
            found[0].fix_command.as_deref(),
            Some("usermod --gid nixbld --groups nixbld nixbld1")
        );
        assert!(found[1].message.contains("primary group is 'users'"));
        assert!(matches!(found[1].fix, Some(Fix::OnlyBuildGroup { .. })));
    }

    #[test]
    fn missing_build_users_are_counted_and_named_for_creation() {
        let groups = [group("nixbld", 30000, &["nixbld1", "ghost"])];
        let members = vec![
            ("nixbld1".into(), Some(build_user("nixbld1", 30001, 30000))),
            ("ghost".into(), None),
        ];
        let found = analyse(members, &groups, 4);
        assert!(found[0].message.contains("'ghost', who does not exist"));
        let count = found.last().unwrap();
        assert_eq!(count.status, Status::Warning);
        assert!(count
            .message
            .contains("1 usable build user for max-jobs = 4"));
        match &count.fix {
            // nixbld1 is a member, nixbld3 is taken by another account.
            Some(Fix::CreateBuildUsers { users, .. }) => {
                assert_eq!(users, &["nixbld2", "nixbld4", "nixbld5"])
            }
            other => panic!("{other:?}"),
        }
        let none = analyse(vec![], &[group("nixbld", 30000, &[])], 1);
        assert_eq!(none[0].status, Status::Error);
    }

    #[test]
    fn login_accounts_and_root_in_the_build_group_are_errors_without_auto_fix() {
        let groups = [group("nixbld", 30000, &["alice", "toor"])];
        let alice = Account {
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            ..build_user("alice", 1000, 1000)
        };
        let members = vec![
            ("alice".into(), Some(alice)),
            ("toor".into(), Some(build_user("toor", 0, 0))),
        ];
        let found = analyse(members, &groups, 0);
        assert!(found[0].message.contains("login account"));
        assert!(found[0].fix.is_none());
        assert!(found[1].message.contains("uid 0"));
    }

    #[test]
    fn proc_status_and_locks_parse() {
        let status = "Name:\tsleep\nUmask:\t0022\nState:\tS\nUid:\t30001\t30001\t30001\t30001\n";
        assert_eq!(
            parse_status(status),
            Some((vec![30001; 4], "sleep".to_owned()))
        );
        assert_eq!(parse_status("Name: x\n"), None);
        assert_eq!(
            parse_status("Name:\tsleep\nState:\tZ (zombie)\nUid:\t1\t1\t1\t1\n"),
            None
        );
        let locks = "1: FLOCK  ADVISORY  WRITE 1234 fd:01:1234567 0 EOF\n\
                     2: POSIX  ADVISORY  READ 99 00:1a:42 0 EOF\n\
                     2: -> POSIX  ADVISORY  WRITE 98 00:1a:42 0 EOF\n";
        assert_eq!(
            parse_locks(locks),
            vec![(0xfd, 1, 1234567), (0, 0x1a, 42), (0, 0x1a, 42)]
        );
    }

    #[test]
    fn passwd_lines_parse_with_home_and_shell() {
        let accounts = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nnixbld1:x:30001:30000:Nix build user 1:/var/empty:/usr/sbin/nologin\nbroken\n",
        );
        assert_eq!(accounts.len(), 2);
        assert!(!accounts[0].looks_like_build_user());
        assert!(accounts[1].looks_like_build_user());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "nixbld1:x:30001:30000::/var/empty:/usr/sbin/nologin\n",
        )
        .unwrap();
        let target = Target {
            root: dir.path().to_path_buf(),
            dry_run: false,
            failure_ok: false,
        };
        let args = useradd_args(&target, "nixbld", "nixbld7");
        assert_eq!(args[11], "Nix build user 7");
        assert_eq!(&args[12..], ["--uid", "30007", "nixbld7"]);
        // A uid another account has is left to useradd.
        assert_eq!(
            &useradd_args(&target, "nixbld", "nixbld1")[12..],
            ["nixbld1"]
        );
    }
}
