//! The build directories, reached only through directory handles.
//!
//! * `<state>/ward-broker/builds` (or `build-dir`): root-owned 0700; every build gets
//!   `<id>-<drvname>` inside, made with `mkdirat` and `fchown`ed through its own descriptor.
//! * `<state>/ward-broker/kept/<uid>/`: `keep-failed` trees, handed to the requesting user.
//!
//! Nothing here follows a symlink: components are opened with `O_NOFOLLOW | O_DIRECTORY`,
//! entries are examined with `AT_SYMLINK_NOFOLLOW` and removed with `unlinkat` relative to
//! their directory's descriptor (attack A9). Trees are walked only while nothing can change
//! them: the build user owns no process any more and the builds directory is root's 0700.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Uid};
use rustix::io::Errno;

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens `name` in `parent` as a directory, never following a symlink.
pub fn open_dir_at<P: rustix::path::Arg>(
    parent: impl AsFd,
    name: P,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(parent, name, dir_flags(), Mode::empty())
}

/// Opens an absolute directory path from `/`, refusing symlinks in every component and, with
/// `strict`, any component (but a sticky `/tmp`-like one is still refused) that is group- or
/// world-writable.
pub fn open_dir_path(path: &Path, strict: bool) -> Result<OwnedFd, String> {
    let mut dir = rustix::fs::open("/", dir_flags(), Mode::empty())
        .map_err(|e| format!("opening '/': {e}"))?;
    let mut shown = PathBuf::from("/");
    for component in path.components().skip(1) {
        shown.push(component);
        dir = open_dir_at(&dir, component.as_os_str()).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => {
                format!(
                    "'{}' is not a plain directory (a symlink?)",
                    shown.display()
                )
            }
            e => format!("opening '{}': {e}", shown.display()),
        })?;
        if strict {
            let st = rustix::fs::fstat(&dir).map_err(|e| format!("{}: {e}", shown.display()))?;
            if st.st_mode & 0o002 != 0 {
                return Err(format!("'{}' is world-writable", shown.display()));
            }
        }
    }
    Ok(dir)
}

/// Makes sure `name` exists in `parent` as a root-owned (broker-owned) directory of `mode`;
/// returns its handle.
pub fn ensure_private_dir(
    parent: &OwnedFd,
    name: &str,
    mode: u32,
    shown: &Path,
) -> Result<OwnedFd, String> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(format!("creating '{}': {e}", shown.display())),
    }
    let fd = open_dir_at(parent, name)
        .map_err(|e| format!("'{}' is not a plain directory: {e}", shown.display()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("{}: {e}", shown.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!(
            "'{}' is owned by uid {}, not by the broker (uid {me})",
            shown.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o7777 != mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| format!("chmod '{}': {e}", shown.display()))?;
    }
    Ok(fd)
}

/// The broker's directories for builds.
#[derive(Debug)]
pub struct BuildDirs {
    /// Handle of the builds directory.
    pub builds: OwnedFd,
    /// Its host path.
    pub builds_path: PathBuf,
    /// Handle of `<state>/ward-broker/kept`.
    pub kept: OwnedFd,
    /// Its host path.
    pub kept_path: PathBuf,
}

impl BuildDirs {
    /// Creates (or checks) `<state>/ward/{builds,kept}`, or uses `build_dir` for builds.
    pub fn prepare(state_dir: &Path, build_dir: Option<&Path>) -> Result<BuildDirs, String> {
        let state = open_dir_path(state_dir, false)?;
        let ward_path = state_dir.join("ward-broker");
        let ward = ensure_private_dir(&state, "ward-broker", 0o755, &ward_path)?;
        let kept_path = ward_path.join("kept");
        let kept = ensure_private_dir(&ward, "kept", 0o755, &kept_path)?;
        let (builds, builds_path) = match build_dir {
            None => {
                let p = ward_path.join("builds");
                (ensure_private_dir(&ward, "builds", 0o700, &p)?, p)
            }
            Some(dir) => {
                let parent = dir.parent().ok_or("build-dir cannot be '/'")?;
                let name = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or("build-dir must end in a UTF-8 name")?;
                let parent_fd = open_dir_path(parent, true)?;
                // A shared directory such as /tmp is never made private (that would take it
                // from everyone else) nor used as it is (A11): it must be one of its own.
                if let Ok(st) =
                    rustix::fs::statat(&parent_fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                {
                    if st.st_mode & 0o1022 != 0 {
                        return Err(format!(
                            "build-dir '{}' is writable by others (mode {:o}); name a \
                             directory of its own, which ward creates with mode 0700",
                            dir.display(),
                            st.st_mode & 0o7777
                        ));
                    }
                }
                (
                    ensure_private_dir(&parent_fd, name, 0o700, dir)?,
                    dir.to_owned(),
                )
            }
        };
        Ok(BuildDirs {
            builds,
            builds_path,
            kept,
            kept_path,
        })
    }
}

/// Creates `name` in `parent` exclusively (mode 0700), opens it and hands it to `uid:gid`
/// through its descriptor.
pub fn create_owned_dir(
    parent: &OwnedFd,
    name: &str,
    uid: u32,
    gid: u32,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    let fd = open_dir_at(parent, name)?;
    rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    Ok(fd)
}

fn read_names(dir: &OwnedFd) -> rustix::io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn is_dir_entry(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<bool> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory)
}

/// Opens a subdirectory to delete its contents; without root's DAC override, first gives it
/// `u+rwx` (through an `O_PATH` handle, so no symlink is followed).
fn open_for_delete(dir: &OwnedFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    match open_dir_at(dir, name) {
        Err(Errno::ACCESS) => {
            let path = rustix::fs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&path));
            rustix::fs::chmod(proc.as_str(), Mode::from_raw_mode(0o700))?;
            let fd = open_dir_at(dir, name)?;
            Ok(fd)
        }
        Ok(fd) => {
            if !nix::unistd::geteuid().is_root() {
                let st = rustix::fs::fstat(&fd)?;
                if st.st_mode & 0o700 != 0o700 {
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))?;
                }
            }
            Ok(fd)
        }
        Err(e) => Err(e),
    }
}

/// Deletes `name` (a directory tree, or any other entry) in `parent` without following
/// symlinks. Holds one descriptor at a time however deep the tree is: it climbs back with
/// `..`, which is safe because nothing else can change the tree while it is deleted.
pub fn delete_tree(parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    let name = CString::new(name).map_err(|_| Errno::INVAL)?;
    if !is_dir_entry(parent, &name)? {
        return rustix::fs::unlinkat(parent, name.as_c_str(), AtFlags::empty());
    }
    let mut cur = open_for_delete(parent, &name)?;
    let mut depth: Vec<CString> = Vec::new();
    loop {
        let mut subdir = None;
        for entry in read_names(&cur)? {
            if is_dir_entry(&cur, &entry)? {
                if subdir.is_none() {
                    subdir = Some(entry);
                }
            } else {
                rustix::fs::unlinkat(&cur, entry.as_c_str(), AtFlags::empty())?;
            }
        }
        match subdir {
            Some(sub) => {
                let next = open_for_delete(&cur, &sub)?;
                depth.push(sub);
                cur = next;
            }
            None => match depth.pop() {
                Some(done) => {
                    let up = open_dir_at(&cur, "..")?;
                    cur = up;
                    rustix::fs::unlinkat(&cur, done.as_c_str(), AtFlags::REMOVEDIR)?;
                }
                None => break,
            },
        }
    }
    drop(cur);
    rustix::fs::unlinkat(parent, name.as_c_str(), AtFlags::REMOVEDIR)
}

/// What the keep-failed hand-over did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChownCount {
    /// Entries given to the user.
    pub changed: usize,
    /// Entries left alone: another owner, or a non-directory with several links (A2).
    pub skipped: usize,
}

/// Gives every entry of the tree at `top` (and `top` itself) owned by `from_uid` to
/// `to_uid:to_gid`, with `AT_SYMLINK_NOFOLLOW`; non-directories with more than one link are
/// skipped, since a hard link may name a file outside the tree (attack A2).
pub fn chown_tree(
    top: &OwnedFd,
    from_uid: u32,
    to_uid: u32,
    to_gid: Option<u32>,
) -> rustix::io::Result<ChownCount> {
    let mut count = ChownCount::default();
    let uid = Some(Uid::from_raw(to_uid));
    let gid = to_gid.map(Gid::from_raw);
    // Each level keeps the names of the subdirectories it still has to visit; only the
    // current directory is open.
    let mut cur = open_dir_at(top, ".")?;
    let mut pending: Vec<Vec<CString>> = Vec::new();
    let mut subdirs = Vec::new();
    for entry in read_names(&cur)? {
        if visit(&cur, &entry, from_uid, uid, gid, &mut count)? {
            subdirs.push(entry);
        }
    }
    pending.push(subdirs);
    while let Some(level) = pending.last_mut() {
        match level.pop() {
            Some(sub) => {
                cur = open_dir_at(&cur, sub.as_c_str())?;
                let mut subdirs = Vec::new();
                for entry in read_names(&cur)? {
                    if visit(&cur, &entry, from_uid, uid, gid, &mut count)? {
                        subdirs.push(entry);
                    }
                }
                pending.push(subdirs);
            }
            None => {
                pending.pop();
                if !pending.is_empty() {
                    cur = open_dir_at(&cur, "..")?;
                }
            }
        }
    }
    let st = rustix::fs::fstat(top)?;
    if st.st_uid == from_uid {
        rustix::fs::fchown(top, uid, gid)?;
        count.changed += 1;
    } else {
        count.skipped += 1;
    }
    Ok(count)
}

/// Changes one entry if it is the build user's; true if it is a directory to descend into.
fn visit(
    dir: &OwnedFd,
    name: &CStr,
    from_uid: u32,
    uid: Option<Uid>,
    gid: Option<Gid>,
    count: &mut ChownCount,
) -> rustix::io::Result<bool> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    if st.st_uid != from_uid || (!is_dir && st.st_nlink > 1) {
        count.skipped += 1;
    } else {
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        count.changed += 1;
    }
    Ok(is_dir)
}

/// Opens (creating if missing) `kept/<uid>`: 0700, owned by `uid`. An existing entry must be
/// a directory owned by `uid`.
pub fn open_kept_user_dir(kept: &OwnedFd, uid: u32, gid: u32) -> Result<OwnedFd, String> {
    let name = uid.to_string();
    match rustix::fs::mkdirat(kept, name.as_str(), Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            let fd = open_dir_at(kept, name.as_str()).map_err(|e| format!("kept/{name}: {e}"))?;
            rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| format!("chown kept/{name}: {e}"))?;
            Ok(fd)
        }
        Err(Errno::EXIST) => {
            let fd = open_dir_at(kept, name.as_str())
                .map_err(|e| format!("kept/{name} is not a plain directory: {e}"))?;
            let st = rustix::fs::fstat(&fd).map_err(|e| format!("kept/{name}: {e}"))?;
            if st.st_uid != uid {
                return Err(format!(
                    "kept/{name} is owned by uid {}, not by uid {uid}",
                    st.st_uid
                ));
            }
            Ok(fd)
        }
        Err(e) => Err(format!("creating kept/{name}: {e}")),
    }
}

/// Moves `name` from `from` into `to` without replacing anything; returns the name it got.
pub fn move_no_replace(from: &OwnedFd, name: &str, to: &OwnedFd) -> rustix::io::Result<String> {
    let mut target = name.to_owned();
    for n in 2..100 {
        match rustix::fs::renameat_with(from, name, to, target.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(target),
            Err(Errno::EXIST) => target = format!("{name}-{n}"),
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;

    fn root_or_skip(name: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            true
        } else {
            println!("SKIPPED: {name} needs root");
            false
        }
    }

    #[test]
    fn deletion_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("a/b/c")).unwrap();
        std::fs::write(top.join("a/b/c/f"), b"y").unwrap();
        std::fs::write(top.join("a/g"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("link2")).unwrap();
        // A directory its owner cannot enter or write.
        std::fs::create_dir_all(top.join("locked/inner")).unwrap();
        std::fs::write(top.join("locked/inner/x"), b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(top.join("locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let parent = open_dir_path(tmp.path(), false).unwrap();
        delete_tree(&parent, "top").unwrap();
        assert!(!top.exists());
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn deep_trees_are_deleted_with_one_descriptor_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = tmp.path().join("top");
        std::fs::create_dir(&p).unwrap();
        // Deeper than PATH_MAX allows in one path: build it step by step through handles.
        let mut fd = open_dir_path(&p, false).unwrap();
        for _ in 0..600 {
            rustix::fs::mkdirat(&fd, "dddddddd", Mode::from_raw_mode(0o700)).unwrap();
            fd = open_dir_at(&fd, "dddddddd").unwrap();
        }
        drop(fd);
        p.pop();
        let parent = open_dir_path(&p, false).unwrap();
        delete_tree(&parent, "top").unwrap();
        assert!(!p.join("top").exists());
    }

    #[test]
    fn keep_failed_hands_over_only_the_build_users_entries() {
        if !root_or_skip("keep_failed_hands_over_only_the_build_users_entries") {
            return;
        }
        let build_uid = 872_415_232 + 777;
        let requester = 872_415_232 + 778;
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
        std::fs::write(top.join("sub/file"), b"f").unwrap();
        std::fs::write(top.join("rootfile"), b"r").unwrap();
        std::fs::hard_link(outside.join("secret"), top.join("sub/hardlink")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("sub/deeper/escape")).unwrap();
        // The build user owns everything but rootfile (and the hard link's inode, which is
        // the outside file's: chown that inode to the build user to mimic A2's trap).
        for p in ["", "sub", "sub/deeper", "sub/file", "sub/deeper/escape"] {
            let path = top.join(p);
            std::os::unix::fs::lchown(&path, Some(build_uid), Some(100)).unwrap();
        }
        std::os::unix::fs::lchown(outside.join("secret"), Some(build_uid), None).unwrap();
        std::os::unix::fs::lchown(&outside, Some(build_uid), None).unwrap();
        let fd = open_dir_path(&top, false).unwrap();
        let count = chown_tree(&fd, build_uid, requester, Some(100)).unwrap();
        let owner = |p: &str| std::fs::symlink_metadata(top.join(p)).unwrap().uid();
        assert_eq!(owner(""), requester);
        assert_eq!(owner("sub"), requester);
        assert_eq!(owner("sub/deeper"), requester);
        assert_eq!(owner("sub/file"), requester);
        assert_eq!(owner("sub/deeper/escape"), requester);
        assert_eq!(owner("rootfile"), 0);
        assert_eq!(
            owner("sub/hardlink"),
            build_uid,
            "a hard link is never chowned"
        );
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), build_uid);
        assert_eq!(
            std::fs::metadata(outside.join("secret")).unwrap().uid(),
            build_uid
        );
        assert_eq!(
            count,
            ChownCount {
                changed: 5,
                skipped: 2
            }
        );
    }

    #[test]
    fn kept_user_dirs_must_belong_to_the_user() {
        if !root_or_skip("kept_user_dirs_must_belong_to_the_user") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let kept = open_dir_path(tmp.path(), false).unwrap();
        let fd = open_kept_user_dir(&kept, 4321, 100).unwrap();
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_uid, 4321);
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_mode & 0o7777, 0o700);
        open_kept_user_dir(&kept, 4321, 100).unwrap();
        std::fs::create_dir(tmp.path().join("99")).unwrap();
        assert!(open_kept_user_dir(&kept, 99, 100)
            .unwrap_err()
            .contains("owned by uid 0"));
        std::os::unix::fs::symlink("/etc", tmp.path().join("98")).unwrap();
        assert!(open_kept_user_dir(&kept, 98, 100).is_err());
    }

    #[test]
    fn build_dirs_are_created_exclusively_and_owned_through_the_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = BuildDirs::prepare(tmp.path(), None).unwrap();
        let meta = std::fs::metadata(tmp.path().join("ward-broker/builds")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        let me = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        create_owned_dir(&dirs.builds, "1-x", me, gid).unwrap();
        assert_eq!(
            create_owned_dir(&dirs.builds, "1-x", me, gid).unwrap_err(),
            Errno::EXIST
        );
        // A symlinked build-dir is refused.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("ln")).unwrap();
        assert!(BuildDirs::prepare(tmp.path(), Some(&tmp.path().join("ln/b"))).is_err());
    }

    #[test]
    fn a_shared_build_dir_is_refused_and_left_alone() {
        // Not under /tmp: its parents must pass the world-writable check first.
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&target).unwrap();
        let tmp = tempfile::tempdir_in(&target).unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let err = BuildDirs::prepare(&state, Some(&shared)).unwrap_err();
        // (Refused for its parents instead when the checkout lies below /tmp.)
        assert!(err.contains("writable"), "{err}");
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777, "the shared directory was changed");
    }
}
