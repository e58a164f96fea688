//! `ward install` and `ward uninstall`.
//!
//! Install creates the build group and users, ward's own users, the store's directories with
//! the owners multi-user mode needs, and the service units under Nix's names; on a host that
//! runs Nix's daemon it takes over the socket and the store in place (no store path moves:
//! ward serves Nix's store and DB as they are, after handing their directories to its store
//! owner). What it changed is written to an install record (`/var/lib/ward/install.json`),
//! which `uninstall` reads to undo exactly that: the accounts it created, the units it
//! replaced, the owners it changed. Running install again changes only what is missing.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ward_config::daemon::{FRONTEND_USER, STORE_USER, WARD_GROUP};
use ward_config::layout::StoreLayout;

use super::cli::{InstallArgs, UninstallArgs};
use super::target::{io_err, AdminError, Target};

/// The units and tmpfiles snippet, as shipped in `systemd/`.
pub const SOCKET_UNIT: &str = include_str!("../../../systemd/nix-daemon.socket");
pub const SERVICE_UNIT: &str = include_str!("../../../systemd/nix-daemon.service");
pub const TMPFILES: &str = include_str!("../../../systemd/nix-daemon.conf");

/// Unit names, Nix's own.
pub const SOCKET_NAME: &str = "nix-daemon.socket";
pub const SERVICE_NAME: &str = "nix-daemon.service";

/// Where systemd looks for units an admin installed, and where packages put theirs.
const UNIT_DIR: &str = "/etc/systemd/system";
const PACKAGE_UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];
const TMPFILES_PATH: &str = "/etc/tmpfiles.d/nix-daemon.conf";
/// ward's own state outside the store (survives `--delete-store`).
const RECORD_DIR: &str = "/var/lib/ward";
const RECORD_FILE: &str = "/var/lib/ward/install.json";
const BACKUP_DIR: &str = "/var/lib/ward/nix-units";

/// Nix's installer numbers: group 30000, build users from uid 30001.
const BUILD_GID: u32 = 30000;
const FIRST_BUILD_UID: u32 = 30001;
const DEFAULT_BUILD_USERS: u32 = 32;

/// What `ward install` changed, for `ward uninstall`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// Groups ward created (never one that existed before).
    pub created_groups: Vec<String>,
    /// Users ward created.
    pub created_users: Vec<String>,
    /// Nix's unit files ward moved aside: original path → backup path.
    pub replaced_units: BTreeMap<PathBuf, PathBuf>,
    /// Whether Nix's own daemon units were installed (in /etc or a package directory) when
    /// ward took over.
    pub took_over_nix: bool,
    /// Whether Nix's socket unit was enabled before the takeover.
    pub nix_socket_was_enabled: bool,
    /// Owners (uid, gid) of the store's directories and DB files before ward took them.
    pub previous_owners: BTreeMap<PathBuf, (u32, u32)>,
    /// Where the units say the ward binaries are.
    pub bindir: PathBuf,
}

impl InstallRecord {
    fn load(target: &Target) -> Result<Option<InstallRecord>, AdminError> {
        let path = target.path(RECORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                AdminError::Refused(format!(
                    "the install record '{}' is not readable: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn save(&self, target: &Target) -> Result<(), AdminError> {
        let path = target.path(RECORD_FILE);
        target.step(
            format!("write the install record {}", path.display()),
            || {
                let dir = target.path(RECORD_DIR);
                std::fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
                let text = serde_json::to_vec_pretty(self).map_err(|e| {
                    AdminError::Refused(format!("encoding the install record: {e}"))
                })?;
                write_file(&path, &text, 0o600)
            },
        )
    }
}

fn require_root(target: &Target, command: &str) -> Result<(), AdminError> {
    if !target.dry_run && !nix::unistd::geteuid().is_root() {
        return Err(AdminError::Refused(format!(
            "'ward {command}' must run as root (try --dry-run to see its steps)"
        )));
    }
    Ok(())
}

/// `ward install`.
pub fn install(args: &InstallArgs) -> Result<(), AdminError> {
    let target = Target::new(&args.target)?;
    require_root(&target, "install")?;
    let setup = target.setup()?;
    let layout = &setup.layout;
    let mut record = InstallRecord::load(&target)?.unwrap_or_default();
    record.bindir = match &args.bindir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(io_err("finding", Path::new("/proc/self/exe")))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin")),
    };
    for binary in ["ward", "ward-broker", "ward-frontend", "ward-store-writer"] {
        let path = record.bindir.join(binary);
        if !path.is_file() {
            return Err(AdminError::Refused(format!(
                "'{}' is missing; give the directory of ward's binaries with --bindir",
                path.display()
            )));
        }
    }

    let build_group = if setup.settings.build_users_group.is_empty() {
        "nixbld".to_owned()
    } else {
        setup.settings.build_users_group.clone()
    };
    let count = args
        .build_users
        .unwrap_or(DEFAULT_BUILD_USERS.max(setup.settings.max_jobs));
    create_build_users(&target, &mut record, &build_group, count)?;
    create_ward_accounts(&target, &mut record)?;
    take_store(&target, &mut record, layout)?;
    install_units(&target, &mut record)?;
    record.save(&target)?;
    enable_units(&target, args.no_start)?;
    println!(
        "ward: {} install of ward on {} {}",
        if target.dry_run {
            "dry run of the"
        } else {
            "finished the"
        },
        target.root.display(),
        if record.took_over_nix {
            "(took over Nix's daemon; 'ward uninstall --restore-nix' gives it back)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The build group and `count` build users in it, numbered as Nix's installer numbers them
/// where those ids are free.
fn create_build_users(
    target: &Target,
    record: &mut InstallRecord,
    group: &str,
    count: u32,
) -> Result<(), AdminError> {
    if target.group(group).is_none() {
        let mut args = vec!["--system"];
        let gid = BUILD_GID.to_string();
        if !target.gid_taken(BUILD_GID) {
            args.extend(["--gid", gid.as_str()]);
        }
        args.push(group);
        target.account_tool("groupadd", &args)?;
        push_unique(&mut record.created_groups, group);
    }
    for i in 1..=count {
        let name = format!("{group}{i}");
        match target.user(&name) {
            Some(_) => {
                let in_group = target
                    .group(group)
                    .is_some_and(|g| g.members.contains(&name));
                if !in_group && !target.dry_run {
                    target.account_tool("usermod", &["--append", "--groups", group, &name])?;
                }
            }
            None => {
                let args = build_user_useradd_args(target, group, &name);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                target.account_tool("useradd", &args)?;
                push_unique(&mut record.created_users, &name);
            }
        }
    }
    Ok(())
}

/// The `useradd` arguments for build user `name` (`GROUPN`) of `group`: a system account
/// without a home or a shell, in `group` only, numbered as Nix's installer numbers them
/// (`30000 + N`) where that uid is free on the target. `ward doctor --fix` uses them too.
pub fn build_user_useradd_args(target: &Target, group: &str, name: &str) -> Vec<String> {
    let number = name.strip_prefix(group).unwrap_or(name);
    let mut args: Vec<String> = [
        "--system",
        "--no-create-home",
        "--home-dir",
        "/var/empty",
        "--shell",
        "/usr/sbin/nologin",
        "--gid",
        group,
        "--groups",
        group,
        "--comment",
        &format!("Nix build user {number}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let uid = number
        .parse::<u32>()
        .ok()
        .and_then(|n| (FIRST_BUILD_UID - 1).checked_add(n));
    if let Some(uid) = uid.filter(|&uid| target.user_by_uid(uid).is_none()) {
        args.extend(["--uid".to_owned(), uid.to_string()]);
    }
    args.push(name.to_owned());
    args
}

/// ward's group and the users of the store-writer and the frontend.
fn create_ward_accounts(target: &Target, record: &mut InstallRecord) -> Result<(), AdminError> {
    if target.group(WARD_GROUP).is_none() {
        target.account_tool("groupadd", &["--system", WARD_GROUP])?;
        push_unique(&mut record.created_groups, WARD_GROUP);
    }
    for user in [STORE_USER, FRONTEND_USER] {
        if target.user(user).is_none() {
            target.account_tool("useradd", &crate::launch::ward_account_useradd_args(user))?;
            push_unique(&mut record.created_users, user);
        }
    }
    Ok(())
}

/// The store's directories, created where missing and handed to ward's store owner; the
/// owners they had are recorded the first time.
fn take_store(
    target: &Target,
    record: &mut InstallRecord,
    layout: &StoreLayout,
) -> Result<(), AdminError> {
    let db_dir = layout.state_dir.join("db");
    let socket_dir = layout
        .socket_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| layout.state_dir.join("daemon-socket"));
    for dir in [
        &layout.real_store_dir,
        &layout.state_dir,
        &layout.log_dir,
        &db_dir,
        &socket_dir,
        &layout.state_dir.join("gcroots"),
        &layout.state_dir.join("profiles"),
        &layout.state_dir.join("temproots"),
    ] {
        if !dir.is_dir() {
            target.step(format!("create directory {}", dir.display()), || {
                crate::launch::create_dir_all(dir, 0o755)
                    .map_err(|e| AdminError::Refused(e.to_string()))
            })?;
        }
    }
    let (Some(owner), Some(group)) = (target.user(STORE_USER), target.group(WARD_GROUP)) else {
        // Only in a dry run: the accounts would have been created above.
        println!(
            "would: give {} and the DB to {STORE_USER}:{WARD_GROUP}",
            layout.real_store_dir.display()
        );
        return Ok(());
    };
    let paths = crate::launch::paths_the_store_owner_owns(layout)
        .map_err(|e| AdminError::Refused(e.to_string()))?;
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("checking", &path))?;
        if meta.uid() == owner.uid && meta.gid() == group.gid {
            continue;
        }
        record
            .previous_owners
            .entry(path.clone())
            .or_insert((meta.uid(), meta.gid()));
        target.step(
            format!("chown {STORE_USER}:{WARD_GROUP} {}", path.display()),
            || lchown(&path, owner.uid, group.gid),
        )?;
    }
    // The socket directory is root's, as Nix has it (systemd creates the socket in it).
    Ok(())
}

/// Writes ward's units under Nix's names, moving Nix's own aside.
fn install_units(target: &Target, record: &mut InstallRecord) -> Result<(), AdminError> {
    let bindir = record.bindir.display().to_string();
    let units = [
        (SOCKET_NAME, SOCKET_UNIT.to_owned()),
        (SERVICE_NAME, SERVICE_UNIT.replace("@bindir@", &bindir)),
    ];
    let in_packages = PACKAGE_UNIT_DIRS
        .iter()
        .any(|dir| target.path(&format!("{dir}/{SERVICE_NAME}")).is_file());
    if in_packages && !record.took_over_nix {
        record.took_over_nix = true;
        record.nix_socket_was_enabled = socket_enabled(target);
    }
    for (name, contents) in units {
        let path = target.path(&format!("{UNIT_DIR}/{name}"));
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == contents => continue,
            Ok(existing) if !is_ward_unit(&existing) => {
                // Nix's unit (from its installer): kept for `uninstall --restore-nix`.
                let backup = target.path(&format!("{BACKUP_DIR}/{name}"));
                if !record.took_over_nix {
                    record.took_over_nix = true;
                    record.nix_socket_was_enabled = socket_enabled(target);
                }
                target.step(
                    format!("move Nix's {} to {}", path.display(), backup.display()),
                    || {
                        let dir = target.path(BACKUP_DIR);
                        std::fs::create_dir_all(&dir)
                            .map_err(io_err("creating directory", &dir))?;
                        std::fs::rename(&path, &backup).map_err(io_err("moving", &path))
                    },
                )?;
                record
                    .replaced_units
                    .insert(strip_root(target, &path), strip_root(target, &backup));
            }
            _ => {}
        }
        target.step(format!("write {}", path.display()), || {
            let dir = target.path(UNIT_DIR);
            std::fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
            write_file(&path, contents.as_bytes(), 0o644)
        })?;
    }
    let tmpfiles = target.path(TMPFILES_PATH);
    if std::fs::read_to_string(&tmpfiles).ok().as_deref() != Some(TMPFILES) {
        target.step(format!("write {}", tmpfiles.display()), || {
            if let Some(dir) = tmpfiles.parent() {
                std::fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
            }
            write_file(&tmpfiles, TMPFILES.as_bytes(), 0o644)
        })?;
    }
    Ok(())
}

/// Enables the socket unit and, on a running systemd, (re)starts it so the new daemon serves.
fn enable_units(target: &Target, no_start: bool) -> Result<(), AdminError> {
    let root = format!("--root={}", target.root.display());
    if target.systemd_running() {
        systemctl(target, &["daemon-reload"])?;
        systemctl(target, &["enable", SOCKET_NAME])?;
        if !no_start {
            // A Nix daemon that was running stops here; clients connecting meanwhile wait on
            // the socket, which systemd keeps open.
            systemctl(target, &["stop", SERVICE_NAME])?;
            systemctl(target, &["restart", SOCKET_NAME])?;
        }
    } else if socket_enabled(target) {
        println!("ward: {SOCKET_NAME} is already enabled");
    } else {
        // Offline: systemctl only creates the [Install] symlinks.
        systemctl(target, &[root.as_str(), "enable", SOCKET_NAME])?;
    }
    Ok(())
}

/// `ward uninstall`.
pub fn uninstall(args: &UninstallArgs) -> Result<(), AdminError> {
    let target = Target::new(&args.target)?;
    require_root(&target, "uninstall")?;
    let layout = target.layout()?;
    let record = InstallRecord::load(&target)?.ok_or_else(|| {
        AdminError::Refused(format!(
            "no install record at '{}': 'ward install' was not run on {}",
            target.path(RECORD_FILE).display(),
            target.root.display()
        ))
    })?;
    if args.restore_nix && !record.took_over_nix {
        return Err(AdminError::Refused(
            "--restore-nix: ward did not take over a Nix daemon on this system".into(),
        ));
    }

    // Stop serving first, so nothing writes the store while it changes hands.
    let root = format!("--root={}", target.root.display());
    if target.systemd_running() {
        systemctl(
            target.clone().with_failure_ok(),
            &["stop", SOCKET_NAME, SERVICE_NAME],
        )?;
        systemctl(target.clone().with_failure_ok(), &["disable", SOCKET_NAME])?;
    } else if socket_enabled(&target) {
        systemctl(&target, &[root.as_str(), "disable", SOCKET_NAME])?;
    }
    for name in [SOCKET_NAME, SERVICE_NAME] {
        let path = target.path(&format!("{UNIT_DIR}/{name}"));
        if std::fs::read_to_string(&path).is_ok_and(|text| is_ward_unit(&text)) {
            target.step(format!("remove {}", path.display()), || {
                std::fs::remove_file(&path).map_err(io_err("removing", &path))
            })?;
        }
    }
    let tmpfiles = target.path(TMPFILES_PATH);
    if std::fs::read_to_string(&tmpfiles).ok().as_deref() == Some(TMPFILES) {
        target.step(format!("remove {}", tmpfiles.display()), || {
            std::fs::remove_file(&tmpfiles).map_err(io_err("removing", &tmpfiles))
        })?;
    }
    if args.restore_nix {
        for (original, backup) in &record.replaced_units {
            let (original, backup) = (
                target.path(&original.to_string_lossy()),
                target.path(&backup.to_string_lossy()),
            );
            target.step(
                format!(
                    "restore Nix's {} from {}",
                    original.display(),
                    backup.display()
                ),
                || std::fs::rename(&backup, &original).map_err(io_err("restoring", &backup)),
            )?;
        }
    }
    let socket = &layout.socket_path;
    if std::fs::symlink_metadata(socket).is_ok() {
        target.step(format!("remove the socket {}", socket.display()), || {
            std::fs::remove_file(socket).map_err(io_err("removing", socket))
        })?;
    }

    if args.delete_store {
        for dir in [&layout.real_store_dir, &layout.state_dir, &layout.log_dir] {
            if dir.exists() {
                target.step(
                    format!("delete {} and everything in it", dir.display()),
                    || std::fs::remove_dir_all(dir).map_err(io_err("deleting", dir)),
                )?;
            }
        }
    } else {
        give_store_back(&target, &record, &layout)?;
    }

    // Accounts last: the store no longer names ward's users. Build users stay for Nix when
    // it gets its daemon back.
    let store_owned = [STORE_USER, FRONTEND_USER];
    for user in record.created_users.iter().rev() {
        let is_ward_user = store_owned.contains(&user.as_str());
        if (is_ward_user || !args.restore_nix) && target.user(user).is_some() {
            target.account_tool("userdel", &[user])?;
        }
    }
    for group in record.created_groups.iter().rev() {
        if (group == WARD_GROUP || !args.restore_nix) && target.group(group).is_some() {
            target.account_tool("groupdel", &[group])?;
        }
    }

    if args.restore_nix {
        if target.systemd_running() {
            systemctl(&target, &["daemon-reload"])?;
            if record.nix_socket_was_enabled {
                systemctl(&target, &["enable", "--now", SOCKET_NAME])?;
            }
        } else if record.nix_socket_was_enabled {
            systemctl(&target, &[root.as_str(), "enable", SOCKET_NAME])?;
        }
    } else if target.systemd_running() {
        systemctl(&target, &["daemon-reload"])?;
    }
    let record_path = target.path(RECORD_FILE);
    target.step(
        format!("remove the install record {}", record_path.display()),
        || std::fs::remove_file(&record_path).map_err(io_err("removing", &record_path)),
    )?;
    println!(
        "ward: {} ward from {}{}",
        if target.dry_run {
            "would uninstall"
        } else {
            "uninstalled"
        },
        target.root.display(),
        match (args.restore_nix, args.delete_store) {
            (true, _) => "; Nix's daemon has its socket and store back",
            (false, true) => "; the store was deleted",
            (false, false) => "; the store was kept (owned by root again)",
        }
    );
    Ok(())
}

/// Hands the store back to root (or to the owners recorded before the takeover): the
/// recorded directories and files, and every store object ward's store owner created.
fn give_store_back(
    target: &Target,
    record: &InstallRecord,
    layout: &StoreLayout,
) -> Result<(), AdminError> {
    let Some(owner) = target.user(STORE_USER) else {
        return Ok(());
    };
    let mut changed = 0u64;
    let mut objects = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&layout.real_store_dir) {
        for entry in entries.flatten() {
            objects.push(entry.path());
        }
    }
    let others: Vec<PathBuf> = crate::launch::paths_the_store_owner_owns(layout)
        .map_err(|e| AdminError::Refused(e.to_string()))?;
    let shown = format!(
        "give {} and its state back to root (objects owned by {STORE_USER})",
        layout.real_store_dir.display()
    );
    target.step(shown, || {
        for path in &objects {
            changed += chown_tree_from(path, owner.uid, 0, 0)?;
        }
        for path in &others {
            let meta = std::fs::symlink_metadata(path).map_err(io_err("checking", path))?;
            if meta.uid() != owner.uid {
                continue;
            }
            let (uid, gid) = record.previous_owners.get(path).copied().unwrap_or((0, 0));
            lchown(path, uid, gid)?;
            changed += 1;
        }
        // Nix's daemon (root) expects the DB directory to be root's only.
        Ok(())
    })?;
    if changed > 0 {
        println!("ward: {changed} entries handed back");
    }
    Ok(())
}

/// Changes the owner of every entry under `path` (not following symlinks) that `from` owns.
fn chown_tree_from(path: &Path, from: u32, uid: u32, gid: u32) -> Result<u64, AdminError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err("checking", path))?;
    let mut changed = 0;
    if meta.uid() == from {
        lchown(path, uid, gid)?;
        changed += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_err("listing", path))? {
            let entry = entry.map_err(io_err("listing", path))?;
            changed += chown_tree_from(&entry.path(), from, uid, gid)?;
        }
    }
    Ok(changed)
}

fn lchown(path: &Path, uid: u32, gid: u32) -> Result<(), AdminError> {
    nix::unistd::fchownat(
        None,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("chown", path)(e.into()))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), AdminError> {
    let temp = path.with_extension("ward-new");
    std::fs::write(&temp, contents).map_err(io_err("writing", &temp))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &temp))?;
    std::fs::rename(&temp, path).map_err(io_err("renaming into place", path))
}

/// ward's units say so in their ExecStart.
pub fn is_ward_unit(text: &str) -> bool {
    text.lines()
        .any(|line| line.starts_with("ExecStart=") && line.contains("ward daemon"))
        || text.starts_with("# ward")
}

/// Whether `nix-daemon.socket` is enabled (its [Install] symlink exists).
pub fn socket_enabled(target: &Target) -> bool {
    std::fs::symlink_metadata(
        target.path(&format!("{UNIT_DIR}/sockets.target.wants/{SOCKET_NAME}")),
    )
    .is_ok()
}

fn strip_root(target: &Target, path: &Path) -> PathBuf {
    match path.strip_prefix(&target.root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => path.to_path_buf(),
    }
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_owned());
    }
}

/// Runs `systemctl ARGS` as a step; a target made with [`Target::with_failure_ok`] only warns
/// when it fails.
fn systemctl(target: impl std::borrow::Borrow<Target>, args: &[&str]) -> Result<(), AdminError> {
    let target = target.borrow();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let result = target.step(super::target::shell_line("systemctl", &args), || {
        super::target::run_tool("systemctl", &args)
    });
    match result {
        Err(e) if target.failure_ok => {
            eprintln!("ward: warning: {e}");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_units_are_wards_and_nixs_are_not() {
        assert!(is_ward_unit(SOCKET_UNIT));
        assert!(is_ward_unit(SERVICE_UNIT));
        let nix_service = "[Unit]\nDescription=Nix Daemon\n[Service]\n\
                           ExecStart=@/nix/var/nix/profiles/default/bin/nix-daemon nix-daemon --daemon\n";
        assert!(!is_ward_unit(nix_service));
    }

    #[test]
    fn the_service_unit_has_what_the_issue_lists() {
        for directive in [
            "Type=notify",
            "ExecReload=",
            "KillMode=process",
            "LimitNOFILE=",
            "TasksMax=",
            "Delegate=yes",
            "RequiresMountsFor=/nix/store",
            "ConditionPathIsReadWrite=/nix/var/nix/daemon-socket",
            "ExecStart=@bindir@/ward daemon",
        ] {
            assert!(
                SERVICE_UNIT.lines().any(|l| l.starts_with(directive)),
                "{directive}"
            );
        }
        assert!(SOCKET_UNIT.contains("ListenStream=/nix/var/nix/daemon-socket/socket"));
        assert!(SOCKET_UNIT.contains("FileDescriptorName=nix-daemon.socket"));
        assert!(TMPFILES.contains("d /nix/var/nix/daemon-socket 0755 root root"));
    }

    #[test]
    fn the_record_round_trips() {
        let mut record = InstallRecord::default();
        record.created_users.push("nixbld1".into());
        record
            .previous_owners
            .insert(PathBuf::from("/nix/store"), (0, 30000));
        record.replaced_units.insert(
            PathBuf::from("/etc/systemd/system/nix-daemon.service"),
            PathBuf::from("/var/lib/ward/nix-units/nix-daemon.service"),
        );
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<InstallRecord>(&text).unwrap(),
            record
        );
    }
}
