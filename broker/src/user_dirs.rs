//! `CreateUserDirs`: `profiles/per-user/<user>` and `gcroots/per-user/<user>`, owned by the
//! user, as Nix ≤ 2.13 creates them for every connecting user.
//!
//! WHY ROOT IS OK: the user's name comes from the user database, not from the frontend; every
//! directory is reached with `openat(O_NOFOLLOW | O_DIRECTORY)` from the state directory, so a
//! symlink planted by anyone (the store-writer owns the state directory) fails the request
//! instead of redirecting it; the new directory is chowned through its own descriptor; an
//! existing entry is never chowned.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::unistd::{Uid, User};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Creates (or checks) both per-user directories; returns the user's name.
pub fn create_user_dirs(state_dir: &Path, uid: u32) -> Result<String, String> {
    if uid == 0 {
        return Err("root has no per-user directories to create".into());
    }
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| format!("looking up uid {uid}: {e}"))?
        .ok_or_else(|| format!("uid {uid} is not in the user database"))?;
    let name = user.name;
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(format!("user name {name:?} cannot be a directory name"));
    }
    let state = open_dir_path(state_dir)?;
    for parent in ["profiles", "gcroots"] {
        let top = open_child_dir(&state, parent, state_dir)?;
        let per_user = open_child_dir(&top, "per-user", &state_dir.join(parent))?;
        let shown = state_dir.join(parent).join("per-user").join(&name);
        ensure_owned_dir(&per_user, &name, uid, &shown)?;
    }
    Ok(name)
}

/// Opens an absolute directory path from `/`, refusing symlinks in every component.
fn open_dir_path(path: &Path) -> Result<OwnedFd, String> {
    let mut dir = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening '/': {e}"))?;
    let mut shown = std::path::PathBuf::from("/");
    for component in path.components().skip(1) {
        let name = component.as_os_str();
        shown.push(name);
        dir = open_child_dir(&dir, name, &shown)?;
    }
    Ok(dir)
}

fn open_child_dir<P: rustix::path::Arg + Copy>(
    parent: &OwnedFd,
    name: P,
    shown: &Path,
) -> Result<OwnedFd, String> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => format!("'{}' is not a plain directory", shown.display()),
        e => format!("opening '{}': {e}", shown.display()),
    })
}

fn ensure_owned_dir(parent: &OwnedFd, name: &str, uid: u32, shown: &Path) -> Result<(), String> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => {
            let dir = open_child_dir(parent, name, shown)?;
            let gid = rustix::process::getgid();
            rustix::fs::fchown(&dir, Some(rustix::fs::Uid::from_raw(uid)), Some(gid))
                .map_err(|e| format!("chown '{}': {e}", shown.display()))?;
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o755))
                .map_err(|e| format!("chmod '{}': {e}", shown.display()))
        }
        Err(Errno::EXIST) => {
            let dir = open_child_dir(parent, name, shown)?;
            let stat =
                rustix::fs::fstat(&dir).map_err(|e| format!("'{}': {e}", shown.display()))?;
            if stat.st_uid != uid {
                return Err(format!(
                    "'{}' exists but belongs to uid {}, not {uid}; leaving it alone",
                    shown.display(),
                    stat.st_uid
                ));
            }
            Ok(())
        }
        Err(e) => Err(format!("creating '{}': {e}", shown.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn state_with_parents() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in ["profiles/per-user", "gcroots/per-user"] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
        }
        dir
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn creates_both_directories_for_the_connected_user() {
        if me() == 0 {
            // As root the test uses a real unprivileged user instead.
            let Some(nobody) = User::from_name("nobody").ok().flatten() else {
                println!("SKIPPED creates_both_directories_for_the_connected_user: no 'nobody'");
                return;
            };
            let state = state_with_parents();
            let name = create_user_dirs(state.path(), nobody.uid.as_raw()).unwrap();
            for p in ["profiles", "gcroots"] {
                let meta =
                    std::fs::metadata(state.path().join(p).join("per-user").join(&name)).unwrap();
                assert_eq!(meta.uid(), nobody.uid.as_raw());
                assert_eq!(meta.mode() & 0o7777, 0o755);
            }
            return;
        }
        let state = state_with_parents();
        let name = create_user_dirs(state.path(), me()).unwrap();
        let meta = std::fs::metadata(state.path().join("profiles/per-user").join(&name)).unwrap();
        assert_eq!(meta.uid(), me());
        // A second call accepts what is there.
        create_user_dirs(state.path(), me()).unwrap();
    }

    #[test]
    fn refuses_symlinked_parents() {
        let state = state_with_parents();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::remove_dir(state.path().join("gcroots/per-user")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), state.path().join("gcroots/per-user"))
            .unwrap();
        let uid = if me() == 0 { 65534 } else { me() };
        let err = create_user_dirs(state.path(), uid).unwrap_err();
        assert!(err.contains("not a plain directory"), "{err}");
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_root_and_unknown_uids() {
        let state = state_with_parents();
        assert!(create_user_dirs(state.path(), 0).is_err());
        let err = create_user_dirs(state.path(), 3_999_999_999).unwrap_err();
        assert!(err.contains("not in the user database"), "{err}");
    }
}
