//! The system an admin command acts on: `/`, or a scratch root given by `--root DIR` (its own
//! `/etc/passwd`, `/etc/group`, unit directories and `/nix`). Every change goes through
//! [`Target::step`], which prints it and, under `--dry-run`, only prints it.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use ward_config::daemon::DaemonSetup;
use ward_config::layout::StoreLayout;

use super::cli::TargetArgs;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A file-system step failed; names the path.
    #[error("{what} '{path}': {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A tool (useradd, systemctl, ...) failed or could not be run.
    #[error("'{command}' failed: {reason}")]
    Tool { command: String, reason: String },
    /// The settings or store layout could not be read.
    #[error("{0}")]
    Setup(#[from] ward_config::daemon::DaemonError),
    /// Anything else, already worded for the admin.
    #[error("{0}")]
    Refused(String),
}

pub fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> AdminError {
    let what = what.into();
    let path = path.to_path_buf();
    move |source| AdminError::Io { what, path, source }
}

/// A user account as `/etc/passwd` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A group as `/etc/group` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    /// Supplementary members.
    pub members: Vec<String>,
}

/// The system being changed.
#[derive(Debug, Clone)]
pub struct Target {
    /// `/` or the `--root` directory.
    pub root: PathBuf,
    /// `--dry-run`: print, change nothing.
    pub dry_run: bool,
    /// A failed `systemctl` step only warns (stopping units that may not be running).
    pub failure_ok: bool,
}

impl Target {
    pub fn new(args: &TargetArgs) -> Result<Target, AdminError> {
        if !args.root.is_absolute() {
            return Err(AdminError::Refused(format!(
                "--root '{}' must be an absolute path",
                args.root.display()
            )));
        }
        Ok(Target {
            root: args.root.clone(),
            dry_run: args.dry_run,
            failure_ok: false,
        })
    }

    /// This target, with failed `systemctl` steps only warned about.
    pub fn with_failure_ok(mut self) -> Target {
        self.failure_ok = true;
        self
    }

    /// Whether this is the running system rather than a scratch root.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute, as seen on the target system) where it really is.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The target's settings and store layout: its nix.conf (`ROOT/etc/nix`, or
    /// `NIX_CONF_DIR` on the live system) and its store (`ROOT/nix/store`, a chroot store).
    pub fn setup(&self) -> Result<DaemonSetup, AdminError> {
        let mut args = ward_config::cli::DaemonArgs::default();
        if !self.is_live() {
            args.config
                .settings
                .push(ward_config::CommandLineSetting::Flag {
                    name: "store".into(),
                    value: self.root.display().to_string(),
                });
        }
        Ok(ward_config::daemon::load_setup_with(
            args,
            &self.env(),
            false,
        )?)
    }

    /// The environment the target's daemon would read its settings with: this process's,
    /// except that under `--root` `NIX_CONF_DIR` is `ROOT/etc/nix` and `NIX_CONFIG` is unset.
    pub fn env(&self) -> impl Fn(&str) -> Option<OsString> {
        let conf_dir = self.path("etc/nix");
        let root_is_live = self.is_live();
        move |name: &str| -> Option<OsString> {
            if !root_is_live && name == "NIX_CONF_DIR" {
                return Some(conf_dir.clone().into_os_string());
            }
            if !root_is_live && name == "NIX_CONFIG" {
                return None;
            }
            ward_config::process_env(name)
        }
    }

    /// The store layout alone.
    pub fn layout(&self) -> Result<StoreLayout, AdminError> {
        Ok(self.setup()?.layout)
    }

    /// Prints `what` and, unless this is a dry run, does it.
    pub fn step(
        &self,
        what: impl fmt::Display,
        action: impl FnOnce() -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        if self.dry_run {
            println!("would: {what}");
            Ok(())
        } else {
            println!("ward: {what}");
            action()
        }
    }

    /// Runs an account tool (`useradd`, `groupadd`, `usermod`, `userdel`, `groupdel`) on the
    /// target's account files, as a step.
    pub fn account_tool(&self, program: &str, args: &[&str]) -> Result<(), AdminError> {
        let mut full: Vec<String> = Vec::new();
        if !self.is_live() {
            full.push("--root".into());
            full.push(self.root.display().to_string());
        }
        full.extend(args.iter().map(|a| a.to_string()));
        self.step(shell_line(program, &full), || run_tool(program, &full))
    }

    /// Reads the target's `/etc/passwd` (on the live system, through NSS as the daemon does).
    pub fn user(&self, name: &str) -> Option<Account> {
        if self.is_live() {
            let user = nix::unistd::User::from_name(name).ok().flatten()?;
            return Some(Account {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            });
        }
        self.passwd().into_iter().find(|a| a.name == name)
    }

    /// The target's user with this uid.
    pub fn user_by_uid(&self, uid: u32) -> Option<Account> {
        if self.is_live() {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()?;
            return Some(Account {
                name: user.name,
                uid,
                gid: user.gid.as_raw(),
            });
        }
        self.passwd().into_iter().find(|a| a.uid == uid)
    }

    /// Reads the target's `/etc/group`.
    pub fn group(&self, name: &str) -> Option<GroupEntry> {
        if self.is_live() {
            let group = nix::unistd::Group::from_name(name).ok().flatten()?;
            return Some(GroupEntry {
                name: group.name,
                gid: group.gid.as_raw(),
                members: group.mem,
            });
        }
        self.groups().into_iter().find(|g| g.name == name)
    }

    /// Whether a group with this gid exists on the target.
    pub fn gid_taken(&self, gid: u32) -> bool {
        if self.is_live() {
            return nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .is_some();
        }
        self.groups().iter().any(|g| g.gid == gid)
    }

    /// Every account in the target's `/etc/passwd` file.
    pub fn passwd(&self) -> Vec<Account> {
        let text = std::fs::read_to_string(self.path("etc/passwd")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                Some(Account {
                    name: fields.first()?.to_string(),
                    uid: fields.get(2)?.parse().ok()?,
                    gid: fields.get(3)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// Every group in the target's `/etc/group` file.
    pub fn groups(&self) -> Vec<GroupEntry> {
        let text = std::fs::read_to_string(self.path("etc/group")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                Some(GroupEntry {
                    name: fields.first()?.to_string(),
                    gid: fields.get(2)?.parse().ok()?,
                    members: fields
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Whether systemd manages the running system (and so `systemctl` can start units).
    pub fn systemd_running(&self) -> bool {
        self.is_live() && Path::new("/run/systemd/system").is_dir()
    }
}

/// A command as a shell would need it typed: arguments with spaces or quotes single-quoted.
pub fn shell_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        let plain = !arg.is_empty()
            && arg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
        if plain {
            line.push_str(arg);
        } else {
            line.push('\'');
            line.push_str(&arg.replace('\'', "'\\''"));
            line.push('\'');
        }
    }
    line
}

/// Runs a tool to completion; its output goes to ours.
pub fn run_tool(program: &str, args: &[String]) -> Result<(), AdminError> {
    let shown = shell_line(program, args);
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| AdminError::Tool {
            command: shown.clone(),
            reason: e.to_string(),
        })?;
    if !status.success() {
        return Err(AdminError::Tool {
            command: shown,
            reason: status.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(passwd: &str, group: &str) -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        let target = Target {
            root: dir.path().to_path_buf(),
            dry_run: true,
            failure_ok: false,
        };
        (dir, target)
    }

    #[test]
    fn account_files_of_a_scratch_root_are_read() {
        let (_dir, target) = scratch(
            "root:x:0:0:root:/root:/bin/sh\nnixbld1:x:30001:30000::/var/empty:/sbin/nologin\n",
            "root:x:0:\nnixbld:x:30000:nixbld1,nixbld2\nempty:x:5:\n",
        );
        assert_eq!(
            target.user("nixbld1"),
            Some(Account {
                name: "nixbld1".into(),
                uid: 30001,
                gid: 30000
            })
        );
        assert_eq!(target.user_by_uid(0).unwrap().name, "root");
        assert!(target.user("nobody").is_none());
        let group = target.group("nixbld").unwrap();
        assert_eq!(group.gid, 30000);
        assert_eq!(group.members, ["nixbld1", "nixbld2"]);
        assert!(target.group("empty").unwrap().members.is_empty());
        assert!(target.gid_taken(5) && !target.gid_taken(6));
    }

    #[test]
    fn paths_are_placed_under_the_root() {
        let (dir, target) = scratch("", "");
        assert_eq!(
            target.path("/etc/systemd/system"),
            dir.path().join("etc/systemd/system")
        );
        assert!(!target.is_live() && !target.systemd_running());
    }

    #[test]
    fn shown_commands_can_be_pasted_into_a_shell() {
        let args: Vec<String> = ["--comment", "Nix build user 1", "it's", "nixbld1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_line("useradd", &args),
            "useradd --comment 'Nix build user 1' 'it'\\''s' nixbld1"
        );
    }

    #[test]
    fn a_dry_run_step_does_nothing() {
        let (_dir, target) = scratch("", "");
        target
            .step("explode", || panic!("a dry run ran a step"))
            .unwrap();
    }
}
