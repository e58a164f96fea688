//! What the doctor found, and how it is shown: one line per finding with the one command that
//! fixes it, or (`--json`) a list of `{check, status, message, fix_command, fixed}` objects.

use std::fmt;
use std::path::PathBuf;

/// The checks, in the order they run and are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// The settings could be read at all.
    Config,
    /// The daemon answers a handshake on its socket.
    Daemon,
    /// Modes and owners of the socket and its directories.
    Socket,
    /// The build users' group, accounts and stray processes.
    BuildUsers,
    /// Owners and modes of the store, state and DB.
    Store,
    /// `PRAGMA integrity_check` of the DB.
    Database,
    /// What the kernel offers the sandbox.
    Sandbox,
    /// Risky settings in nix.conf.
    Settings,
    /// Free space and inodes of the store's file system.
    Disk,
    /// How this shell's Nix commands reach the store.
    Client,
    /// The systemd units.
    Units,
}

impl Check {
    /// Every check, in order.
    pub const ALL: [Check; 11] = [
        Check::Config,
        Check::Daemon,
        Check::Socket,
        Check::BuildUsers,
        Check::Store,
        Check::Database,
        Check::Sandbox,
        Check::Settings,
        Check::Disk,
        Check::Client,
        Check::Units,
    ];

    /// The name `--check` takes and the report shows.
    pub fn name(self) -> &'static str {
        match self {
            Check::Config => "config",
            Check::Daemon => "daemon",
            Check::Socket => "socket",
            Check::BuildUsers => "build-users",
            Check::Store => "store",
            Check::Database => "database",
            Check::Sandbox => "sandbox",
            Check::Settings => "settings",
            Check::Disk => "disk",
            Check::Client => "client",
            Check::Units => "units",
        }
    }

    /// The check named `name`.
    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// What an all-clear of this check says when the check itself said nothing.
    pub fn all_clear(self) -> &'static str {
        match self {
            Check::Config => "the settings were read",
            Check::Daemon => "the daemon answers",
            Check::Socket => "the socket and its directories have safe owners and modes",
            Check::BuildUsers => "the build users are set up",
            Check::Store => "the store's owners and modes are as the daemon needs them",
            Check::Database => "the database passes its integrity check",
            Check::Sandbox => "the kernel offers everything the sandbox uses",
            Check::Settings => "no risky settings",
            Check::Disk => "enough free space and inodes",
            Check::Client => "Nix commands in this environment reach the daemon",
            Check::Units => "the service units are ward's and enabled",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warning,
    Error,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Error => "error",
        }
    }
}

/// A repair `--fix` may apply by itself: each one is what the daemon or `ward install` would
/// do, and none of them loses data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Remove a socket file nobody listens on (checked again right before); restart the socket
    /// unit when systemd runs.
    RemoveStaleSocket { path: PathBuf, restart_unit: bool },
    /// `systemctl start nix-daemon.socket`.
    StartSocketUnit,
    /// `chmod MODE PATH` (never following a symlink).
    Chmod { path: PathBuf, mode: u32 },
    /// `chown -h UID:GID PATH…` (never following a symlink); `owner` names them.
    Chown {
        paths: Vec<PathBuf>,
        uid: u32,
        gid: u32,
        owner: String,
    },
    /// `groupadd --system NAME`.
    CreateGroup { name: String },
    /// `useradd … NAME` for each build user, as `ward install` makes them.
    CreateBuildUsers { group: String, users: Vec<String> },
    /// `usermod --gid GROUP --groups GROUP USER`: the build group as the only group.
    OnlyBuildGroup { user: String, group: String },
    /// Kill every process of a build user (only while the daemon is down).
    KillProcesses { user: String, uid: u32 },
    /// Enable (and on a running systemd start) `nix-daemon.socket`.
    EnableSocketUnit,
}

/// One thing a check found (or the all-clear of a check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: Check,
    pub status: Status,
    /// What it is about (a path, a user, a setting): the same problem found again after
    /// `--fix` has the same subject.
    pub subject: String,
    /// What is wrong, naming the path, user or setting.
    pub message: String,
    /// The one command (or nix.conf line) that fixes it.
    pub fix_command: Option<String>,
    /// What `--fix` may do about it by itself.
    pub fix: Option<Fix>,
}

impl Finding {
    pub fn ok(check: Check, message: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            subject: String::new(),
            message: message.into(),
            fix_command: None,
            fix: None,
        }
    }

    pub fn warning(
        check: Check,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            status: Status::Warning,
            subject: subject.into(),
            ..Finding::ok(check, message)
        }
    }

    pub fn error(check: Check, subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            status: Status::Error,
            ..Finding::warning(check, subject, message)
        }
    }

    /// The command that fixes it.
    pub fn command(mut self, command: impl Into<String>) -> Finding {
        self.fix_command = Some(command.into());
        self
    }

    /// What `--fix` may do about it.
    pub fn fixable(mut self, fix: Fix) -> Finding {
        self.fix = Some(fix);
        self
    }

    /// A warning or an error.
    pub fn is_problem(&self) -> bool {
        self.status != Status::Ok
    }

    /// The identity of the problem across runs.
    pub fn key(&self) -> (Check, &str) {
        (self.check, self.subject.as_str())
    }
}

/// A finding as reported: after `--fix`, whether it was fixed and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub finding: Finding,
    pub fixed: bool,
    /// What `--fix` did or why it could not.
    pub note: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Report {
    /// Findings still open: warnings and errors not fixed.
    pub fn open_problems(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.finding.is_problem() && !e.fixed)
            .count()
    }

    /// 0 when healthy, 1 when anything is left.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.open_problems() > 0)
    }

    /// The machine-readable report: a JSON list.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.entries
                .iter()
                .map(|e| {
                    let mut object = serde_json::json!({
                        "check": e.finding.check.name(),
                        "status": e.finding.status.name(),
                        "message": e.finding.message,
                        "fix_command": e.finding.fix_command,
                        "fixed": e.fixed,
                    });
                    if let (Some(note), Some(map)) = (&e.note, object.as_object_mut()) {
                        map.insert("fix_note".into(), serde_json::Value::String(note.clone()));
                    }
                    object
                })
                .collect(),
        )
    }

    /// The report for a terminal: a line per finding, its fix below it, a summary.
    pub fn render_text(&self, fix_ran: bool) -> String {
        let mut out = String::new();
        let width = Check::ALL.iter().map(|c| c.name().len()).max().unwrap_or(0);
        for e in &self.entries {
            let label = match (e.fixed, e.finding.status) {
                (true, _) => "FIXED",
                (false, Status::Ok) => "ok",
                (false, Status::Warning) => "warning",
                (false, Status::Error) => "ERROR",
            };
            out.push_str(&format!(
                "{label:<8} {:<width$}  {}\n",
                e.finding.check.name(),
                e.finding.message
            ));
            let indent = " ".repeat(8 + 1 + width + 2);
            if let Some(note) = &e.note {
                out.push_str(&format!("{indent}{note}\n"));
            }
            if !e.fixed {
                if let Some(command) = &e.finding.fix_command {
                    out.push_str(&format!("{indent}fix: {command}\n"));
                }
            }
        }
        let count = |status: Status| {
            self.entries
                .iter()
                .filter(|e| e.finding.status == status && !e.fixed)
                .count()
        };
        let (errors, warnings) = (count(Status::Error), count(Status::Warning));
        let fixed = self.entries.iter().filter(|e| e.fixed).count();
        let fixable = self
            .entries
            .iter()
            .filter(|e| !e.fixed && e.finding.is_problem() && e.finding.fix.is_some())
            .count();
        if errors + warnings == 0 {
            out.push_str(&if fixed > 0 {
                format!("healthy after {fixed} fix{}\n", plural_es(fixed))
            } else {
                "healthy\n".to_owned()
            });
        } else {
            out.push_str(&format!(
                "{errors} error{}, {warnings} warning{}",
                plural(errors),
                plural(warnings)
            ));
            if fixed > 0 {
                out.push_str(&format!("; {fixed} fixed"));
            }
            if fixable > 0 && !fix_ran {
                out.push_str(&format!(
                    "; 'ward doctor --fix' repairs {fixable} of them by itself"
                ));
            }
            out.push('\n');
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn plural_es(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "es"
    }
}

/// Merges the first run's findings, the fixes applied to them and the second run's findings
/// into the report: a problem whose fix ran and that the second run no longer finds is
/// "fixed"; everything the second run finds is reported as it is now.
pub fn merge(applied: &[(Finding, Result<String, String>)], after: Vec<Finding>) -> Report {
    let mut entries: Vec<Entry> = Vec::new();
    for check in Check::ALL {
        for (finding, result) in applied.iter().filter(|(f, _)| f.check == check) {
            // The same problem again; another one about the same subject (a fix that
            // revealed the next question) still counts this one as fixed.
            let still_there = after.iter().any(|a| {
                a.is_problem() && a.key() == finding.key() && a.message == finding.message
            });
            if let (Ok(done), false) = (result, still_there) {
                entries.push(Entry {
                    finding: finding.clone(),
                    fixed: true,
                    note: Some(format!("fixed: {done}")),
                });
            }
        }
        for finding in after.iter().filter(|f| f.check == check) {
            let note = applied
                .iter()
                .find(|(f, _)| {
                    f.key() == finding.key() && f.message == finding.message && finding.is_problem()
                })
                .map(|(_, result)| match result {
                    Ok(done) => format!("--fix did '{done}', but the problem remains"),
                    Err(why) => format!("--fix failed: {why}"),
                });
            entries.push(Entry {
                finding: finding.clone(),
                fixed: false,
                note,
            });
        }
    }
    // A first-run problem that was neither fixed nor found again (it went away by itself)
    // needs no entry.
    Report { entries }
}

/// The report of a run without `--fix`.
pub fn plain(findings: Vec<Finding>) -> Report {
    Report {
        entries: findings
            .into_iter()
            .map(|finding| Entry {
                finding,
                fixed: false,
                note: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale() -> Finding {
        Finding::error(Check::Daemon, "/s", "stale socket '/s'")
            .command("rm /s")
            .fixable(Fix::RemoveStaleSocket {
                path: "/s".into(),
                restart_unit: false,
            })
    }

    #[test]
    fn check_names_round_trip() {
        for check in Check::ALL {
            assert_eq!(Check::from_name(check.name()), Some(check));
        }
        assert_eq!(Check::from_name("nonsense"), None);
    }

    #[test]
    fn the_json_report_is_a_list_of_the_documented_fields() {
        let report = plain(vec![stale(), Finding::ok(Check::Disk, "fine")]);
        let json = report.to_json();
        let list = json.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["check"], "daemon");
        assert_eq!(list[0]["status"], "error");
        assert_eq!(list[0]["message"], "stale socket '/s'");
        assert_eq!(list[0]["fix_command"], "rm /s");
        assert_eq!(list[0]["fixed"], false);
        assert_eq!(list[1]["status"], "ok");
        assert!(list[1]["fix_command"].is_null());
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn text_shows_the_fix_and_a_summary() {
        let report = plain(vec![stale(), Finding::ok(Check::Disk, "fine")]);
        let text = report.render_text(false);
        assert!(text.contains("ERROR    daemon"), "{text}");
        assert!(text.contains("fix: rm /s"), "{text}");
        assert!(text.contains("1 error, 0 warnings"), "{text}");
        assert!(text.contains("--fix' repairs 1"), "{text}");
        assert_eq!(plain(vec![Finding::ok(Check::Disk, "fine")]).exit_code(), 0);
        assert!(plain(vec![]).render_text(false).contains("healthy"));
    }

    #[test]
    fn a_fix_that_worked_is_reported_fixed_and_one_that_did_not_stays_open() {
        let gone = stale();
        let remains = Finding::error(Check::Socket, "/d", "dir '/d' is 0777").fixable(Fix::Chmod {
            path: "/d".into(),
            mode: 0o755,
        });
        let applied = vec![
            (gone.clone(), Ok("removed /s".to_owned())),
            (remains.clone(), Err("permission denied".to_owned())),
        ];
        let after = vec![
            Finding::error(Check::Daemon, "missing", "no socket"),
            remains.clone(),
        ];
        let report = merge(&applied, after);
        let fixed: Vec<_> = report.entries.iter().filter(|e| e.fixed).collect();
        assert_eq!(fixed.len(), 1);
        assert_eq!(fixed[0].finding.subject, "/s");
        let open: Vec<_> = report
            .entries
            .iter()
            .filter(|e| !e.fixed && e.finding.is_problem())
            .collect();
        assert_eq!(open.len(), 2);
        assert!(open[1]
            .note
            .as_deref()
            .unwrap()
            .contains("permission denied"));
        assert_eq!(report.exit_code(), 1);
        let json = report.to_json();
        assert_eq!(json[0]["fixed"], true);
        assert!(report.render_text(true).contains("FIXED"));
    }

    #[test]
    fn a_fix_that_reveals_another_question_about_the_same_path_counts_as_done() {
        let writable = Finding::error(Check::Socket, "/d", "dir '/d' is writable by its group")
            .fixable(Fix::Chmod {
                path: "/d".into(),
                mode: 0o750,
            });
        let applied = vec![(writable, Ok("chmod 0750 /d".to_owned()))];
        let next = Finding::warning(Check::Socket, "/d", "dir '/d' cannot be searched by others");
        let report = merge(&applied, vec![next]);
        assert!(
            report.entries.iter().any(|e| e.fixed),
            "{:?}",
            report.entries
        );
        let open = report.entries.iter().find(|e| !e.fixed).unwrap();
        assert_eq!(
            open.note, None,
            "not 'the problem remains': it is another one"
        );
    }
}
