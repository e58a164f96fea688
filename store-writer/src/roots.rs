//! Permanent and indirect GC roots, and the per-user directories, in the state directory.
//!
//! Everything here works on directory descriptors opened without following symlinks, and only
//! ever creates entries inside the state directory's `gcroots/` and `profiles/` trees: the
//! symlink a client names with AddIndirectRoot is never opened or followed, only recorded as
//! the target of `gcroots/auto/<hash>`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::store_writer::StoreWriterError;
use ward_store::layout::StoreLayout;

/// Longest root path accepted (Linux's `PATH_MAX`).
pub const MAX_ROOT_LEN: usize = 4096;
/// Longest user name accepted for per-user directories (a file name).
pub const MAX_USER_LEN: usize = 255;

/// Makes temporary symlink names unique within this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

// Errors are boxed: `StoreWriterError` is large and these are the rare path.
fn bad_root(root: &str, reason: impl Into<String>) -> Box<StoreWriterError> {
    Box::new(StoreWriterError::BadRoot {
        root: root.to_owned(),
        reason: reason.into(),
    })
}

fn io_error(operation: &str, path: &Path, e: impl std::fmt::Display) -> Box<StoreWriterError> {
    Box::new(StoreWriterError::Io {
        operation: operation.to_owned(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Checks that `root` is an absolute, normalised path (no `.`, `..`, empty components or
/// trailing slash), without NUL, at most [`MAX_ROOT_LEN`] bytes.
pub fn check_root_path(root: &str) -> Result<(), Box<StoreWriterError>> {
    if root.len() > MAX_ROOT_LEN {
        return Err(bad_root(
            root,
            format!("it is longer than {MAX_ROOT_LEN} bytes"),
        ));
    }
    if root.contains('\0') {
        return Err(bad_root(root, "it contains a NUL byte"));
    }
    let Some(rest) = root.strip_prefix('/') else {
        return Err(bad_root(root, "it is not an absolute path"));
    };
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad_root(
            root,
            "it is not in canonical form (empty, '.' or '..' components, or a trailing slash)",
        ));
    }
    Ok(())
}

/// Creates the symlink `name` → `target` in `dir` atomically: under a temporary name first,
/// then renamed over whatever `name` was.
fn replace_symlink_at(
    dir: BorrowedFd<'_>,
    name: &str,
    target: &str,
    shown: &Path,
) -> Result<(), Box<StoreWriterError>> {
    let temp = format!(
        "{name}.tmp-{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    );
    rustix::fs::symlinkat(target, dir, temp.as_str())
        .map_err(|e| io_error("creating symlink", &shown.with_file_name(&temp), e))?;
    if let Err(e) = rustix::fs::renameat(dir, temp.as_str(), dir, name) {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
        return Err(io_error("renaming symlink into", shown, e));
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<OwnedFd, Box<StoreWriterError>> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error("opening directory", path, e))
}

/// The name of the indirect root for `link`: Nix32 of the SHA-1 of the link's path.
pub fn indirect_root_name(link: &str) -> String {
    Hash::compute(HashAlgo::Sha1, link.as_bytes()).to_nix32()
}

/// AddIndirectRoot: `gcroots/auto/<nix32 sha1 of link>` → `link`.
pub fn add_indirect_root(layout: &StoreLayout, link: &str) -> Result<(), Box<StoreWriterError>> {
    check_root_path(link)?;
    let auto = layout.gcroots_dir().join("auto");
    let dir = open_dir(&auto)?;
    let name = indirect_root_name(link);
    replace_symlink_at(dir.as_fd(), &name, link, &auto.join(&name))
}

/// AddPermRoot: the symlink `gc_root` → `target` (a full store path), which must lie inside
/// the state directory's `gcroots/` or `profiles/` tree. Missing directories on the way are
/// created (mode 0755), symlinks on the way are refused, and an existing `gc_root` is only
/// replaced if it is a symlink into the store. The root is also registered as an indirect
/// root, as Nix does.
pub fn add_perm_root(
    layout: &StoreLayout,
    target: &str,
    gc_root: &str,
) -> Result<(), Box<StoreWriterError>> {
    check_root_path(gc_root)?;
    let state = layout.state_dir();
    let outside = || {
        bad_root(
            gc_root,
            format!(
                "it is not inside '{}' or '{}'",
                layout.gcroots_dir().display(),
                layout.profiles_dir().display()
            ),
        )
    };
    let rest = state
        .to_str()
        .and_then(|s| gc_root.strip_prefix(s))
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(outside)?;
    let components: Vec<&str> = rest.split('/').collect();
    let [top, middle @ .., name] = components.as_slice() else {
        return Err(outside());
    };
    if !matches!(*top, "gcroots" | "profiles") {
        return Err(outside());
    }
    let mut shown = state.to_path_buf();
    let mut dir = open_dir(state)?;
    for component in std::iter::once(top).chain(middle) {
        shown.push(component);
        dir = open_or_make_dir(dir.as_fd(), component, &shown, gc_root)?;
    }
    shown.push(name);
    match rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                return Err(bad_root(gc_root, "it already exists and is not a symlink"));
            }
            let old = rustix::fs::readlinkat(&dir, *name, Vec::new())
                .map_err(|e| io_error("reading symlink", &shown, e))?;
            let store_prefix = format!("{}/", layout.store_dir().as_str());
            if !old.to_bytes().starts_with(store_prefix.as_bytes()) {
                return Err(bad_root(
                    gc_root,
                    "it already exists and does not point into the store",
                ));
            }
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(io_error("getting status of", &shown, e)),
    }
    replace_symlink_at(dir.as_fd(), name, target, &shown)?;
    add_indirect_root(layout, gc_root)
}

fn open_or_make_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &Path,
    gc_root: &str,
) -> Result<OwnedFd, Box<StoreWriterError>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let refuse = || {
        bad_root(
            gc_root,
            format!("'{}' is a symlink or not a directory", shown.display()),
        )
    };
    match rustix::fs::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(refuse()),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(io_error("opening directory", shown, e)),
    }
    match rustix::fs::mkdirat(parent, name, Mode::from(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_error("creating directory", shown, e)),
    }
    rustix::fs::openat(parent, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => refuse(),
        e => io_error("opening directory", shown, e),
    })
}

fn bad_user(user: &str, reason: impl Into<String>) -> Box<StoreWriterError> {
    Box::new(StoreWriterError::BadUser {
        user: user.to_owned(),
        reason: reason.into(),
    })
}

/// Checks a user name for `profiles/per-user/<user>`: one path component of
/// `[A-Za-z0-9._-]`, not `.` or `..`, at most [`MAX_USER_LEN`] bytes.
pub fn check_user_name(user: &str) -> Result<(), Box<StoreWriterError>> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(bad_user(
            user,
            format!("a user name has 1 to {MAX_USER_LEN} bytes"),
        ));
    }
    if user == "." || user == ".." {
        return Err(bad_user(user, "'.' and '..' are not user names"));
    }
    if let Some(c) = user
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad_user(
            user,
            format!("it contains {c:?}, which is not one of [A-Za-z0-9._-]"),
        ));
    }
    Ok(())
}

/// CreateUserDirs: `profiles/per-user/<user>` and `gcroots/per-user/<user>`, mode 0755, owned
/// by `uid`. An existing directory owned by `uid` is left alone; one owned by anybody else is
/// an error (never re-chowned). Creating a directory for another uid needs root, which the
/// store-writer is not in multi-user mode: that is refused with a clear error.
pub fn create_user_dirs(
    layout: &StoreLayout,
    user: &str,
    uid: u32,
) -> Result<(), Box<StoreWriterError>> {
    check_user_name(user)?;
    let euid = rustix::process::geteuid();
    let egid = rustix::process::getegid();
    for parent in [
        layout.profiles_dir().join("per-user"),
        layout.gcroots_dir().join("per-user"),
    ] {
        let dir = open_dir(&parent)?;
        let shown = parent.join(user);
        match rustix::fs::statat(&dir, user, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    return Err(bad_user(
                        user,
                        format!("'{}' exists and is not a directory", shown.display()),
                    ));
                }
                if st.st_uid != uid {
                    return Err(bad_user(
                        user,
                        format!(
                            "'{}' is owned by uid {}, not by uid {uid}",
                            shown.display(),
                            st.st_uid
                        ),
                    ));
                }
                continue;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_error("getting status of", &shown, e)),
        }
        if uid != euid.as_raw() && !euid.is_root() {
            return Err(bad_user(
                user,
                format!(
                    "creating '{}' for uid {uid} needs root; the store-writer runs as uid {}",
                    shown.display(),
                    euid.as_raw()
                ),
            ));
        }
        match rustix::fs::mkdirat(&dir, user, Mode::from(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_error("creating directory", &shown, e)),
        }
        // mkdir applies the umask; the mode is part of the contract.
        let created = rustix::fs::openat(
            &dir,
            user,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error("opening directory", &shown, e))?;
        rustix::fs::fchmod(&created, Mode::from(0o755))
            .map_err(|e| io_error("changing permissions of", &shown, e))?;
        if uid != euid.as_raw() {
            rustix::fs::fchown(&created, Some(rustix::fs::Uid::from_raw(uid)), Some(egid))
                .map_err(|e| io_error("changing owner of", &shown, e))?;
        }
    }
    Ok(())
}

/// The file-system path an indirect root for `link` lives at.
#[cfg(test)]
fn indirect_root_path(layout: &StoreLayout, link: &str) -> std::path::PathBuf {
    layout
        .gcroots_dir()
        .join("auto")
        .join(indirect_root_name(link))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use ward_store::layout::CreateOptions;

    fn layout() -> (tempfile::TempDir, StoreLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = StoreLayout::chroot(&dir.path().join("root")).unwrap();
        layout.create(&CreateOptions::default()).unwrap();
        (dir, layout)
    }

    const TARGET: &str = "/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f";

    #[test]
    fn root_paths_must_be_absolute_and_canonical() {
        check_root_path("/home/u/result").unwrap();
        for bad in [
            "",
            "home/u/result",
            "/home//u",
            "/home/u/",
            "/home/./u",
            "/home/../etc",
            "/",
            "/a\0b",
        ] {
            let e = check_root_path(bad).unwrap_err();
            assert!(matches!(*e, StoreWriterError::BadRoot { .. }), "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_ROOT_LEN));
        assert!(check_root_path(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than 4096"));
    }

    #[test]
    fn indirect_root_name_is_nix32_of_sha1() {
        // `nix-hash --type sha1 --base32 --flat` of a file holding "/home/u/result" (Nix 2.8).
        assert_eq!(
            indirect_root_name("/home/u/result"),
            "jlknlzmcc8vgpkzq233mzp2rfy9pnn48"
        );
    }

    #[test]
    fn indirect_roots_point_at_the_link_which_is_never_followed() {
        let (dir, layout) = layout();
        // The link itself need not exist; if it exists it is not touched.
        let link = dir.path().join("result");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let link = link.to_str().unwrap();
        add_indirect_root(&layout, link).unwrap();
        let root = indirect_root_path(&layout, link);
        assert_eq!(std::fs::read_link(&root).unwrap(), Path::new(link));
        // Again: replaced in place, no temporary names left.
        add_indirect_root(&layout, link).unwrap();
        assert_eq!(
            std::fs::read_dir(layout.gcroots_dir().join("auto"))
                .unwrap()
                .count(),
            1
        );
        assert!(matches!(
            add_indirect_root(&layout, "relative").map_err(|e| *e),
            Err(StoreWriterError::BadRoot { .. })
        ));
    }

    #[test]
    fn perm_roots_go_only_into_gcroots_and_profiles() {
        let (dir, layout) = layout();
        let state = layout.state_dir().to_str().unwrap().to_owned();
        let root = format!("{state}/gcroots/deep/er/mine");
        add_perm_root(&layout, TARGET, &root).unwrap();
        assert_eq!(std::fs::read_link(&root).unwrap(), Path::new(TARGET));
        assert_eq!(
            std::fs::read_link(indirect_root_path(&layout, &root)).unwrap(),
            Path::new(&root)
        );
        // A symlink into the store is replaced.
        add_perm_root(&layout, TARGET, &root).unwrap();
        let profile = format!("{state}/profiles/per-user/profile-1-link");
        add_perm_root(&layout, TARGET, &profile).unwrap();

        for outside in [
            format!("{state}/db/x"),
            format!("{state}/gcroots"),
            format!("{}/x", dir.path().display()),
            format!("{state}/temproots/x"),
        ] {
            let e = add_perm_root(&layout, TARGET, &outside).unwrap_err();
            assert!(e.to_string().contains("is not inside"), "{outside}: {e}");
        }
    }

    #[test]
    fn perm_roots_refuse_symlinks_on_the_way_and_foreign_files() {
        let (dir, layout) = layout();
        let state = layout.state_dir().to_str().unwrap().to_owned();
        // gcroots/profiles is a symlink made by the layout.
        let e = add_perm_root(&layout, TARGET, &format!("{state}/gcroots/profiles/x")).unwrap_err();
        assert!(e.to_string().contains("symlink or not a directory"), "{e}");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, layout.gcroots_dir().join("evil")).unwrap();
        let e = add_perm_root(&layout, TARGET, &format!("{state}/gcroots/evil/x")).unwrap_err();
        assert!(e.to_string().contains("symlink or not a directory"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

        let file = format!("{state}/gcroots/plain");
        std::fs::write(&file, "keep").unwrap();
        let e = add_perm_root(&layout, TARGET, &file).unwrap_err();
        assert!(e.to_string().contains("not a symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

        let foreign = format!("{state}/gcroots/foreign");
        std::os::unix::fs::symlink("/etc/passwd", &foreign).unwrap();
        let e = add_perm_root(&layout, TARGET, &foreign).unwrap_err();
        assert!(
            e.to_string().contains("does not point into the store"),
            "{e}"
        );
    }

    #[test]
    fn user_names_are_single_safe_components() {
        check_user_name("alice.b-c_1").unwrap();
        for bad in ["", ".", "..", "a/b", "a b", "ü", "a\0"] {
            assert!(
                matches!(
                    check_user_name(bad).map_err(|e| *e),
                    Err(StoreWriterError::BadUser { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(check_user_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn user_dirs_for_ourselves_are_created_and_foreign_owners_refused() {
        let (_dir, layout) = layout();
        let me = rustix::process::geteuid().as_raw();
        create_user_dirs(&layout, "alice", me).unwrap();
        for parent in [layout.profiles_dir(), layout.gcroots_dir()] {
            let meta = std::fs::metadata(parent.join("per-user/alice")).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
            assert_eq!(meta.uid(), me);
        }
        // Again: left alone.
        create_user_dirs(&layout, "alice", me).unwrap();
        // Owned by us, asked for another uid: refused, not re-chowned.
        let e = create_user_dirs(&layout, "alice", me + 1).unwrap_err();
        assert!(e.to_string().contains("is owned by uid"), "{e}");
        if !rustix::process::geteuid().is_root() {
            let e = create_user_dirs(&layout, "bob", me + 1).unwrap_err();
            assert!(e.to_string().contains("needs root"), "{e}");
        } else {
            create_user_dirs(&layout, "bob", 65534).unwrap();
            let meta = std::fs::metadata(layout.gcroots_dir().join("per-user/bob")).unwrap();
            assert_eq!(meta.uid(), 65534);
        }
    }
}
