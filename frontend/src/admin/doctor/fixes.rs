//! Applying the fixes `--fix` may make by itself. Each says what it did, or why it could not;
//! none follows a symbolic link, and each re-checks what it is about to change first.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::{self, Probe};
use super::report::Fix;
use super::users;
use super::{quote, quote_str, Context};
use crate::admin::target::Target;

/// Applies `fix`; `Ok` says what was done.
pub fn apply(ctx: &Context, fix: &Fix) -> Result<String, String> {
    match fix {
        Fix::RemoveStaleSocket { path, restart_unit } => {
            // Only if nobody listens now either (a daemon may have started meanwhile).
            if daemon::probe(path) != Probe::Refused {
                return Err(format!(
                    "'{}' is no longer a stale socket; left alone",
                    path.display()
                ));
            }
            std::fs::remove_file(path).map_err(|e| format!("rm '{}': {e}", path.display()))?;
            let mut done = format!("removed the stale socket '{}'", path.display());
            if *restart_unit {
                run("systemctl", &["restart", "nix-daemon.socket"])?;
                done.push_str(" and restarted nix-daemon.socket");
            }
            Ok(done)
        }
        Fix::StartSocketUnit => {
            run("systemctl", &["start", "nix-daemon.socket"])?;
            Ok("systemctl start nix-daemon.socket".to_owned())
        }
        Fix::Chmod { path, mode } => {
            let meta = std::fs::symlink_metadata(path)
                .map_err(|e| format!("checking '{}': {e}", path.display()))?;
            if meta.file_type().is_symlink() {
                return Err(format!(
                    "'{}' is a symbolic link; left alone",
                    path.display()
                ));
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| format!("chmod '{}': {e}", path.display()))?;
            Ok(format!("chmod {mode:04o} {}", quote(path)))
        }
        Fix::Chown {
            paths,
            uid,
            gid,
            owner,
        } => {
            for path in paths {
                nix::unistd::fchownat(
                    None,
                    path,
                    Some(nix::unistd::Uid::from_raw(*uid)),
                    Some(nix::unistd::Gid::from_raw(*gid)),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| format!("chown '{}': {e}", path.display()))?;
            }
            let shown: Vec<String> = paths.iter().map(|p| quote(p)).collect();
            Ok(format!("chown -h {owner} {}", shown.join(" ")))
        }
        Fix::CreateGroup { name } => account_tool(&ctx.target, "groupadd", &["--system", name]),
        Fix::CreateBuildUsers { group, users } => {
            let mut done = Vec::new();
            for name in users {
                let args = users::useradd_args(&ctx.target, group, name);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                done.push(account_tool(&ctx.target, "useradd", &args)?);
            }
            Ok(done.join("; "))
        }
        Fix::OnlyBuildGroup { user, group } => account_tool(
            &ctx.target,
            "usermod",
            &["--gid", group, "--groups", group, user],
        ),
        Fix::KillProcesses { user, uid } => {
            if daemon::probe(&ctx.socket).reachable() {
                return Err("the daemon is running (it may be building); not killing".to_owned());
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut killed = 0usize;
            loop {
                let pids = users::processes_of(*uid);
                if pids.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} process(es) of {user} are still there after SIGKILL",
                        pids.len()
                    ));
                }
                for (pid, _) in pids {
                    let Ok(raw) = i32::try_from(pid) else {
                        continue;
                    };
                    if nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(raw),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        killed += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(format!(
                "killed {killed} process(es) of {user} (pkill -KILL -U {user})"
            ))
        }
        Fix::EnableSocketUnit => {
            if ctx.target.systemd_running() {
                run("systemctl", &["enable", "--now", "nix-daemon.socket"])?;
                return Ok("systemctl enable --now nix-daemon.socket".to_owned());
            }
            // What `systemctl enable` does offline: the [Install] symlink.
            let wants = ctx
                .target
                .path(&format!("{}/sockets.target.wants", super::units::UNIT_DIR));
            std::fs::create_dir_all(&wants)
                .map_err(|e| format!("creating '{}': {e}", wants.display()))?;
            let link = wants.join(super::units::SOCKET_NAME);
            let to = format!("{}/{}", super::units::UNIT_DIR, super::units::SOCKET_NAME);
            std::os::unix::fs::symlink(&to, &link)
                .map_err(|e| format!("ln -s {to} '{}': {e}", link.display()))?;
            Ok(format!("ln -s {to} {}", quote(&link)))
        }
    }
}

/// Runs `program args`, its output captured; `Err` carries what it said.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let shown = std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| quote_str(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e: io::Error| format!("'{shown}': {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "'{shown}' failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// An account tool on the target's account files (`--root DIR` off `/`), as
/// `Target::account_tool` runs it, but with its output captured so `--json` stays clean.
fn account_tool(target: &Target, program: &str, args: &[&str]) -> Result<String, String> {
    let root = target.root.display().to_string();
    let mut full: Vec<&str> = Vec::new();
    if !target.is_live() {
        full.extend(["--root", root.as_str()]);
    }
    full.extend(args);
    run(program, &full)?;
    Ok(std::iter::once(program.to_owned())
        .chain(full.iter().map(|a| quote_str(a)))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_chmod_fix_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let ctx = test_context(dir.path());
        let err = apply(
            &ctx,
            &Fix::Chmod {
                path: link,
                mode: 0o600,
            },
        )
        .unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        let done = apply(
            &ctx,
            &Fix::Chmod {
                path: file.clone(),
                mode: 0o600,
            },
        )
        .unwrap();
        assert!(done.starts_with("chmod 0600"), "{done}");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_socket_that_is_not_stale_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // A listener that hangs up at once: the probe sees a broken handshake, not a stale
        // file.
        let server = std::thread::spawn(move || drop(listener.accept()));
        let ctx = test_context(dir.path());
        let err = apply(
            &ctx,
            &Fix::RemoveStaleSocket {
                path: socket.clone(),
                restart_unit: false,
            },
        );
        assert!(err.is_err());
        assert!(socket.exists());
        server.join().unwrap();
    }

    fn test_context(root: &Path) -> Context {
        Context::gather(&crate::admin::cli::DoctorArgs {
            root: root.to_path_buf(),
            fix: true,
            json: false,
            socket: None,
            checks: Vec::new(),
        })
        .unwrap()
    }
}
