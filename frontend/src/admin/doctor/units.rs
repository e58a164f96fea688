//! Check 10: the systemd units. `nix-daemon.socket` and `nix-daemon.service` where systemd
//! finds them (`ROOT/etc/systemd/system` first, then the package directories), ward's own
//! (their ExecStart runs `ward daemon`), the program they run present, and the socket enabled.
//! Answers "the daemon vanished after an OS update": the package's units came back.

use std::path::{Path, PathBuf};

use super::report::{Check, Finding, Fix, Status};
use super::{quote, Context};
use crate::admin::install::is_ward_unit;
use crate::admin::target::Target;

pub use crate::admin::install::{SERVICE_NAME, SOCKET_NAME};

/// Where an admin's units are (they win over a package's).
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// Where systemd looks, in its order.
const SEARCH_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The unit file systemd would use for `name` on the target: (path as found, text). A
/// masked unit (a link to /dev/null) has the text `None`.
pub fn find_unit(target: &Target, name: &str) -> Option<(PathBuf, Option<String>)> {
    SEARCH_DIRS.iter().find_map(|dir| {
        let path = target.path(&format!("{dir}/{name}"));
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(&path).ok()?;
            if to == Path::new("/dev/null") {
                return Some((path, None));
            }
        }
        // A link to the unit elsewhere on the target is read through the target.
        let text = std::fs::read_to_string(&path).ok().or_else(|| {
            let to = std::fs::read_link(&path).ok()?;
            std::fs::read_to_string(target.path(&to.display().to_string())).ok()
        })?;
        Some((path, Some(text)))
    })
}

/// The program an ExecStart line runs (without systemd's `-`, `@`, `+`, `!` prefixes).
pub fn exec_program(unit: &str) -> Option<String> {
    unit.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("ExecStart=")?;
        let word = rest.split_whitespace().next()?;
        Some(
            word.trim_start_matches(['-', '@', '+', '!', ':'])
                .to_owned(),
        )
    })
}

/// Whether the target's socket unit is enabled (or the service itself is).
fn enabled(target: &Target) -> bool {
    crate::admin::install::socket_enabled(target)
        || std::fs::symlink_metadata(target.path(&format!(
            "{UNIT_DIR}/multi-user.target.wants/{SERVICE_NAME}"
        )))
        .is_ok()
}

/// Check 10.
pub fn check_units(ctx: &Context) -> Vec<Finding> {
    let c = Check::Units;
    let target = &ctx.target;
    let mut out = Vec::new();
    let socket = find_unit(target, SOCKET_NAME);
    let service = find_unit(target, SERVICE_NAME);
    let no_systemd = target.is_live() && !target.systemd_running();
    if socket.is_none() && service.is_none() {
        let mut f = Finding::error(
            c,
            "missing",
            format!(
                "no {SOCKET_NAME} or {SERVICE_NAME} in {}: nothing starts the daemon, at boot \
                 or for the first client",
                target.path(UNIT_DIR).display()
            ),
        )
        .command("ward install");
        if no_systemd {
            f.status = Status::Warning;
            f.message
                .push_str(" (systemd does not run here: start it with 'ward daemon')");
        }
        return vec![f];
    }
    let mut all_ward = true;
    for (name, found) in [(SOCKET_NAME, &socket), (SERVICE_NAME, &service)] {
        let Some((path, text)) = found else {
            all_ward = false;
            out.push(
                Finding::error(
                    c,
                    format!("missing:{name}"),
                    format!(
                        "{name} is missing from {} (the other unit is there)",
                        target.path(UNIT_DIR).display()
                    ),
                )
                .command("ward install"),
            );
            continue;
        };
        let Some(text) = text else {
            all_ward = false;
            out.push(
                Finding::error(
                    c,
                    format!("masked:{name}"),
                    format!("{name} is masked ('{}' links to /dev/null)", path.display()),
                )
                .command(format!("systemctl unmask {name}")),
            );
            continue;
        };
        if name == SERVICE_NAME {
            if !is_ward_unit(text) {
                all_ward = false;
                out.push(
                    Finding::error(
                        c,
                        "nix-units",
                        format!(
                            "Nix's own daemon is installed, not ward: '{}' runs '{}' (an OS \
                             or Nix update may have put its units back)",
                            path.display(),
                            exec_program(text).unwrap_or_else(|| "?".into())
                        ),
                    )
                    .command("ward install"),
                );
            } else if let Some(program) = exec_program(text) {
                // Under --root the units may name this host's binaries (a scratch root
                // served from here) or the root's own (a mounted system).
                let present = target.path(&program).is_file()
                    || (!target.is_live() && Path::new(&program).is_file());
                if !present {
                    all_ward = false;
                    out.push(
                        Finding::error(
                            c,
                            "program",
                            format!(
                                "'{}' runs '{program}', which does not exist",
                                path.display()
                            ),
                        )
                        .command("ward install --bindir DIR   # DIR: where the ward binaries are"),
                    );
                }
            }
        }
    }
    if !enabled(target) {
        let command = if target.is_live() {
            format!("systemctl enable --now {SOCKET_NAME}")
        } else {
            format!(
                "systemctl --root={} enable {SOCKET_NAME}",
                quote(&target.root)
            )
        };
        let mut f = Finding::error(
            c,
            "disabled",
            format!(
                "{SOCKET_NAME} is not enabled ({} is missing): after a reboot no daemon listens",
                target
                    .path(&format!("{UNIT_DIR}/sockets.target.wants/{SOCKET_NAME}"))
                    .display()
            ),
        )
        .command(command);
        if all_ward
            && socket
                .as_ref()
                .is_some_and(|(p, _)| p.starts_with(target.path(UNIT_DIR)))
        {
            f = f.fixable(Fix::EnableSocketUnit);
        }
        out.push(f);
    }
    if out.is_empty() {
        out.push(Finding::ok(
            c,
            format!("ward's {SOCKET_NAME} and {SERVICE_NAME} are installed; the socket is enabled"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().unwrap();
        let target = Target {
            root: dir.path().to_path_buf(),
            dry_run: false,
            failure_ok: false,
        };
        (dir, target)
    }

    fn write(target: &Target, path: &str, text: &str) {
        let path = target.path(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn exec_start_programs() {
        assert_eq!(
            exec_program("[Service]\nExecStart=@/usr/bin/nix-daemon nix-daemon --daemon\n")
                .as_deref(),
            Some("/usr/bin/nix-daemon")
        );
        assert_eq!(
            exec_program("ExecStart=/usr/local/bin/ward daemon\n").as_deref(),
            Some("/usr/local/bin/ward")
        );
        assert_eq!(exec_program("[Unit]\n"), None);
    }

    #[test]
    fn units_are_found_in_systemds_order_and_masks_are_seen() {
        let (_dir, target) = scratch();
        assert!(find_unit(&target, SOCKET_NAME).is_none());
        write(&target, "/lib/systemd/system/nix-daemon.socket", "nix's");
        let (path, text) = find_unit(&target, SOCKET_NAME).unwrap();
        assert!(path.ends_with("lib/systemd/system/nix-daemon.socket"));
        assert_eq!(text.as_deref(), Some("nix's"));
        write(&target, "/etc/systemd/system/nix-daemon.socket", "ward's");
        assert_eq!(
            find_unit(&target, SOCKET_NAME).unwrap().1.as_deref(),
            Some("ward's")
        );
        let masked = target.path("/etc/systemd/system/nix-daemon.service");
        std::os::unix::fs::symlink("/dev/null", &masked).unwrap();
        assert_eq!(find_unit(&target, SERVICE_NAME).unwrap().1, None);
    }
}
