//! ward-gc-roots: answers one question for the garbage collector and `--print-roots`: which
//! store paths are in use. Started by the broker (as root in multi-user mode) with its stdout a
//! pipe to whoever asked; it keeps only `CAP_DAC_READ_SEARCH` (to read users' links and other
//! processes' `/proc` directories) and `CAP_SYS_PTRACE` (to read their `fd`, `maps` and
//! `environ`), as user `nobody`, with no_new_privs, before it reads anything. It writes
//! nothing but its stdout and never follows a symlink it walks; checking validity and
//! removing stale links is the store-writer's job.
//!
//! Output: records of three NUL-terminated fields, `kind`, `link`, `target`:
//!
//! * `link`: a symlink under `gcroots/` or `profiles/` (or the user's link an indirect root
//!   points to) and what it points to, unresolved;
//! * `file`: a regular file under `gcroots/`, naming the store path of its base name;
//! * `runtime`: a store path named by a running process (`/proc/N/exe`, `cwd`, `fd/M`,
//!   `maps`, `environ`) or by `/proc/sys/kernel/*`;
//! * `stale`: a link in `gcroots/auto/` whose target no longer exists;
//! * `temp`: a temporary root of a live owner (`temproots/<pid>-…` whose lock is held),
//!   with the owner's pid;
//! * `unreadable`: a potential root that could not be read, and why;
//!
//! and last, `end` with two empty fields (`ward_proto::gc_roots` reads the format).
//!
//! Usage: `ward-gc-roots --state-dir DIR --store-dir DIR [--real-store-dir DIR] [--no-runtime]`.

use std::ffi::{OsStr, OsString};
use std::io::{BufWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Directories nested deeper than this below a roots directory are reported, not walked.
const MAX_DEPTH: usize = 256;
/// The largest `maps` or `environ` file read from one process.
const MAX_PROC_FILE: usize = 16 << 20;
/// `nobody`, whom the helper becomes when started as root.
const NOBODY: u32 = 65534;

/// One record of the output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Record {
    Link { link: PathBuf, target: OsString },
    File { link: PathBuf, target: String },
    Runtime { link: String, target: String },
    Stale { link: PathBuf, target: PathBuf },
    Temp { owner: String, target: String },
    Unreadable { link: PathBuf, reason: String },
}

impl Record {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let (kind, link, target): (&str, &[u8], &[u8]) = match self {
            Record::Link { link, target } => {
                ("link", link.as_os_str().as_bytes(), target.as_bytes())
            }
            Record::File { link, target } => {
                ("file", link.as_os_str().as_bytes(), target.as_bytes())
            }
            Record::Runtime { link, target } => ("runtime", link.as_bytes(), target.as_bytes()),
            Record::Stale { link, target } => (
                "stale",
                link.as_os_str().as_bytes(),
                target.as_os_str().as_bytes(),
            ),
            Record::Temp { owner, target } => ("temp", owner.as_bytes(), target.as_bytes()),
            Record::Unreadable { link, reason } => {
                ("unreadable", link.as_os_str().as_bytes(), reason.as_bytes())
            }
        };
        for field in [kind.as_bytes(), link, target] {
            out.write_all(field)?;
            out.write_all(b"\0")?;
        }
        Ok(())
    }
}

struct Finder<'a> {
    store_dir: &'a str,
    /// Where the store's files are, when not at `store_dir` (a chroot store): processes
    /// name those paths, which are translated to `store_dir`'s.
    real_store_dir: Option<&'a str>,
    auto_dir: PathBuf,
    records: Vec<Record>,
}

impl Finder<'_> {
    fn in_store(&self, target: &[u8]) -> bool {
        target.len() > self.store_dir.len() + 1
            && target.starts_with(self.store_dir.as_bytes())
            && target[self.store_dir.len()] == b'/'
    }

    /// Walks `path` (an entry `name` of the open directory `parent`), as Nix's `findRoots`.
    fn walk_entry(&mut self, parent: &OwnedFd, name: &OsStr, path: &Path, depth: usize) {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return,
            Err(e) => return self.unreadable(path, e),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match rustix::fs::openat(parent, name, flags, Mode::empty()) {
                    Ok(dir) => self.walk_dir(dir, path, depth + 1),
                    Err(Errno::NOENT) => {}
                    Err(e) => self.unreadable(path, e),
                }
            }
            FileType::Symlink => match rustix::fs::readlinkat(parent, name, Vec::new()) {
                Ok(target) => self.found_link(path, OsStr::from_bytes(target.as_bytes())),
                Err(Errno::NOENT) => {}
                Err(e) => self.unreadable(path, e),
            },
            FileType::RegularFile => {
                let base = name.to_string_lossy();
                self.records.push(Record::File {
                    link: path.to_owned(),
                    target: format!("{}/{base}", self.store_dir),
                });
            }
            _ => {}
        }
    }

    fn walk_dir(&mut self, dir: OwnedFd, path: &Path, depth: usize) {
        if depth > MAX_DEPTH {
            return self.records.push(Record::Unreadable {
                link: path.to_owned(),
                reason: format!("nested deeper than {MAX_DEPTH} directories"),
            });
        }
        let names = match list(&dir) {
            Ok(names) => names,
            Err(e) => return self.unreadable(path, e),
        };
        for name in names {
            let child = path.join(&name);
            self.walk_entry(&dir, &name, &child, depth);
        }
    }

    /// A symlink root: into the store, or an indirect root (a link to the user's link).
    fn found_link(&mut self, path: &Path, target: &OsStr) {
        if self.in_store(target.as_bytes()) {
            return self.records.push(Record::Link {
                link: path.to_owned(),
                target: target.to_owned(),
            });
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        let user_link = absolute(parent, Path::new(target));
        match rustix::fs::lstat(&user_link) {
            Err(Errno::NOENT | Errno::NOTDIR) => {
                if path.starts_with(&self.auto_dir) {
                    self.records.push(Record::Stale {
                        link: path.to_owned(),
                        target: user_link,
                    });
                }
            }
            Err(e) => self.unreadable(&user_link, e),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                match rustix::fs::readlink(&user_link, Vec::new()) {
                    Ok(second) if self.in_store(second.as_bytes()) => {
                        self.records.push(Record::Link {
                            link: user_link,
                            target: OsStr::from_bytes(second.as_bytes()).to_owned(),
                        })
                    }
                    Ok(_) | Err(Errno::NOENT) => {}
                    Err(e) => self.unreadable(&user_link, e),
                }
            }
            Ok(_) => {}
        }
    }

    fn unreadable(&mut self, path: &Path, errno: Errno) {
        self.records.push(Record::Unreadable {
            link: path.to_owned(),
            reason: std::io::Error::from(errno).to_string(),
        });
    }

    /// The temporary roots of live owners: a file whose lock can be taken is stale (left
    /// alone here; the collector removes it).
    fn temp_roots(&mut self, dir: &Path) {
        let Ok(dir_fd) = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(names) = list(&dir_fd) else { return };
        for name in names {
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let Ok(fd) = rustix::fs::openat(&dir_fd, &name, flags, Mode::empty()) else {
                continue;
            };
            let file = std::fs::File::from(fd);
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
                Err(Errno::WOULDBLOCK) => {}
                _ => continue,
            }
            let owner: String = name
                .to_string_lossy()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let mut contents = Vec::new();
            use std::io::Read;
            if (&file)
                .take(MAX_PROC_FILE as u64)
                .read_to_end(&mut contents)
                .is_err()
            {
                continue;
            }
            for item in contents.split(|b| *b == 0).filter(|s| !s.is_empty()) {
                if self.in_store(item) {
                    self.records.push(Record::Temp {
                        owner: owner.clone(),
                        target: String::from_utf8_lossy(item).into_owned(),
                    });
                }
            }
        }
    }

    /// Store paths named by running processes, as Nix's `findRuntimeRoots` on Linux.
    fn runtime_roots(&mut self, proc_dir: &Path) {
        let me = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir(proc_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let pid = entry.file_name();
            let Some(pid) = pid.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let dir = proc_dir.join(pid);
            for name in ["exe", "cwd"] {
                let link = dir.join(name);
                if let Ok(target) = std::fs::read_link(&link) {
                    self.runtime(&link.to_string_lossy(), target.as_os_str().as_bytes());
                }
            }
            if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
                for fd in fds.flatten() {
                    let link = fd.path();
                    if let Ok(target) = std::fs::read_link(&link) {
                        self.runtime(&link.to_string_lossy(), target.as_os_str().as_bytes());
                    }
                }
            }
            let maps = dir.join("maps");
            if let Some(text) = read_bounded(&maps) {
                for line in text.split(|b| *b == b'\n') {
                    // address perms offset dev inode [path]
                    let file = line.split(|b| *b == b' ').filter(|f| !f.is_empty()).nth(5);
                    if let Some(file) = file {
                        self.runtime(&maps.to_string_lossy(), file);
                    }
                }
            }
            let environ = dir.join("environ");
            if let Some(text) = read_bounded(&environ) {
                self.mentioned(&environ.to_string_lossy(), &text);
            }
        }
        for name in ["modprobe", "fbsplash", "poweroff_cmd"] {
            let file = proc_dir.join("sys/kernel").join(name);
            if let Some(text) = read_bounded(&file) {
                let text = text.trim_ascii_end();
                self.runtime(&file.to_string_lossy(), text);
            }
        }
    }

    fn runtime(&mut self, link: &str, target: &[u8]) {
        let translated;
        let target = match self.real_store_dir {
            Some(real)
                if target.len() > real.len() + 1
                    && target.starts_with(real.as_bytes())
                    && target[real.len()] == b'/' =>
            {
                translated = [self.store_dir.as_bytes(), &target[real.len()..]].concat();
                &translated[..]
            }
            _ => target,
        };
        if self.in_store(target) {
            self.records.push(Record::Runtime {
                link: link.to_owned(),
                target: String::from_utf8_lossy(target).into_owned(),
            });
        }
    }

    /// Every `<store>/<hash>-<name>` inside `text` (either store directory).
    fn mentioned(&mut self, link: &str, text: &[u8]) {
        let dirs: Vec<String> = std::iter::once(self.store_dir)
            .chain(self.real_store_dir)
            .map(|d| format!("{d}/"))
            .collect();
        for prefix in dirs {
            let prefix = prefix.as_bytes();
            let mut rest = text;
            while let Some(at) = find(rest, prefix) {
                let tail = &rest[at + prefix.len()..];
                let len = tail
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(b))
                    .count();
                if len > 0 {
                    let mut full = prefix.to_vec();
                    full.extend_from_slice(&tail[..len]);
                    self.runtime(link, &full);
                }
                rest = &tail[len..];
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    file.take(MAX_PROC_FILE as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// `target` made absolute against `dir`, lexically (`.` and `..` resolved), as Nix's `absPath`.
fn absolute(dir: &Path, target: &Path) -> PathBuf {
    let joined = if target.is_absolute() {
        target.to_owned()
    } else {
        dir.join(target)
    };
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

fn list(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let dup = rustix::io::fcntl_dupfd_cloexec(dir, 0)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(dup)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Finds every root below `state_dir` (`gcroots/`, `profiles/`) and, with `proc_dir`, the
/// runtime roots.
fn find_roots(
    state_dir: &Path,
    store_dir: &str,
    real_store_dir: Option<&str>,
    proc_dir: Option<&Path>,
) -> Vec<Record> {
    let mut finder = Finder {
        store_dir,
        real_store_dir: real_store_dir.filter(|r| *r != store_dir),
        auto_dir: state_dir.join("gcroots").join("auto"),
        records: Vec::new(),
    };
    match rustix::fs::open(
        state_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(state) => {
            for top in ["gcroots", "profiles"] {
                finder.walk_entry(&state, OsStr::new(top), &state_dir.join(top), 0);
            }
        }
        Err(e) => finder.unreadable(state_dir, e),
    }
    finder.temp_roots(&state_dir.join("temproots"));
    if let Some(proc_dir) = proc_dir {
        finder.runtime_roots(proc_dir);
    }
    finder.records.sort();
    finder.records.dedup();
    finder.records
}

/// As root: becomes `nobody` keeping only the two capabilities it reads with.
fn confine() -> Result<(), String> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let kept = CapabilitySet::DAC_READ_SEARCH | CapabilitySet::SYS_PTRACE;
    if rustix::process::geteuid().is_root() {
        for bit in 0..64u32 {
            let Some(one) = CapabilitySet::from_bits(1u64 << bit) else {
                continue;
            };
            if kept.contains(one) {
                continue;
            }
            match rustix::thread::remove_capability_from_bounding_set(one) {
                Ok(()) | Err(Errno::INVAL) => {}
                Err(e) => return Err(format!("dropping capability {bit}: {e}")),
            }
        }
        rustix::thread::set_keep_capabilities(true).map_err(|e| format!("keepcaps: {e}"))?;
        let nobody_gid = nix::unistd::Gid::from_raw(NOBODY);
        let nobody_uid = nix::unistd::Uid::from_raw(NOBODY);
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(nobody_gid, nobody_gid, nobody_gid)
            .map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(nobody_uid, nobody_uid, nobody_uid)
            .map_err(|e| format!("setresuid: {e}"))?;
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: kept,
                permitted: kept,
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(|e| format!("capset: {e}"))?;
        rustix::thread::set_keep_capabilities(false).map_err(|e| format!("keepcaps: {e}"))?;
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (mut state_dir, mut store_dir, mut runtime) = (None, None, true);
    let mut real_store_dir = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--state-dir") => state_dir = args.next().map(PathBuf::from),
            Some("--store-dir") => store_dir = args.next().and_then(|s| s.into_string().ok()),
            Some("--real-store-dir") => {
                real_store_dir = args.next().and_then(|s| s.into_string().ok())
            }
            Some("--no-runtime") => runtime = false,
            _ => {
                eprintln!("ward-gc-roots: unexpected argument {arg:?}");
                return ExitCode::from(64);
            }
        }
    }
    let (Some(state_dir), Some(store_dir)) = (state_dir, store_dir) else {
        eprintln!(
            "usage: ward-gc-roots --state-dir DIR --store-dir DIR [--real-store-dir DIR] \
             [--no-runtime]"
        );
        return ExitCode::from(64);
    };
    if let Err(e) = confine() {
        eprintln!("ward-gc-roots: {e}");
        return ExitCode::FAILURE;
    }
    let proc_dir = Path::new("/proc");
    let records = find_roots(
        &state_dir,
        &store_dir,
        real_store_dir.as_deref(),
        runtime.then_some(proc_dir),
    );
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    for record in &records {
        if record.write_to(&mut out).is_err() {
            return ExitCode::FAILURE;
        }
    }
    // The reader refuses output without this record: a helper that died found nothing.
    if out.write_all(b"end\0\0\0").is_err() || out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const STORE: &str = "/nix/store";
    const A: &str = "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-a";
    const B: &str = "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-b";

    #[test]
    fn links_indirect_roots_files_and_stale_links() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let gcroots = state.join("gcroots");
        std::fs::create_dir_all(gcroots.join("auto")).unwrap();
        std::fs::create_dir_all(gcroots.join("deep/er")).unwrap();
        std::fs::create_dir_all(state.join("profiles")).unwrap();
        symlink(A, gcroots.join("deep/er/direct")).unwrap();
        symlink(format!("{B}/bin/hello"), state.join("profiles/default")).unwrap();
        std::fs::write(gcroots.join("0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-b"), b"").unwrap();
        // An indirect root: auto link → the user's link → the store.
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        symlink(A, home.join("result")).unwrap();
        symlink(home.join("result"), gcroots.join("auto/one")).unwrap();
        symlink(home.join("gone"), gcroots.join("auto/two")).unwrap();
        // A dangling non-auto link is not stale-removed; a directory link is not followed.
        symlink(home.join("gone"), gcroots.join("elsewhere")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        symlink(A, outside.join("not-a-root")).unwrap();
        symlink(&outside, gcroots.join("dir-link")).unwrap();

        let mut records = find_roots(&state, STORE, None, None);
        records.sort();
        let mut expected = vec![
            Record::Link {
                link: gcroots.join("deep/er/direct"),
                target: A.into(),
            },
            Record::Link {
                link: state.join("profiles/default"),
                target: format!("{B}/bin/hello").into(),
            },
            Record::Link {
                link: home.join("result"),
                target: A.into(),
            },
            Record::File {
                link: gcroots.join("0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-b"),
                target: B.into(),
            },
            Record::Stale {
                link: gcroots.join("auto/two"),
                target: home.join("gone"),
            },
        ];
        expected.sort();
        assert_eq!(records, expected);
    }

    #[test]
    fn processes_naming_store_paths_are_runtime_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let path = store.join("7rjj86a15146cq1d3qy068lml7n8ykzm-cwd");
        let logical = "/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-cwd";
        std::fs::create_dir_all(&path).unwrap();
        let in_env = format!("{}/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-env", store.display());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&path)
            .env("SOME_PATH", format!("/bin:{in_env}/bin"))
            .spawn()
            .unwrap();
        // Wait until the child has exec'd (its environment is the new one then).
        let environ = PathBuf::from(format!("/proc/{}/environ", child.id()));
        for _ in 0..200 {
            if read_bounded(&environ).is_some_and(|e| find(&e, b"SOME_PATH").is_some()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        // Processes name the real directory; roots are reported in the logical one.
        let records = find_roots(
            &state,
            "/nix/store",
            Some(store.to_str().unwrap()),
            Some(Path::new("/proc")),
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let pid = child.id();
        assert!(
            records.contains(&Record::Runtime {
                link: format!("/proc/{pid}/cwd"),
                target: logical.to_owned(),
            }),
            "{records:?}"
        );
        assert!(
            records.contains(&Record::Runtime {
                link: format!("/proc/{pid}/environ"),
                target: "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-env".to_owned(),
            }),
            "{records:?}"
        );
    }

    #[test]
    fn temporary_roots_of_live_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("temproots")).unwrap();
        std::fs::write(state.join("temproots/123-1"), format!("{A}\0")).unwrap();
        std::fs::write(state.join("temproots/456-2"), format!("{B}\0")).unwrap();
        let held = std::fs::File::open(state.join("temproots/123-1")).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let records = find_roots(&state, STORE, None, None);
        assert_eq!(
            records,
            vec![Record::Temp {
                owner: "123".into(),
                target: A.into()
            }]
        );
    }

    #[test]
    fn records_are_three_nul_terminated_fields() {
        let mut out = Vec::new();
        Record::Stale {
            link: "/a".into(),
            target: "/b".into(),
        }
        .write_to(&mut out)
        .unwrap();
        assert_eq!(out, b"stale\0/a\0/b\0");
    }

    #[test]
    fn absolute_resolves_dots_lexically() {
        assert_eq!(
            absolute(Path::new("/x/y"), Path::new("../z/./w")),
            PathBuf::from("/x/z/w")
        );
        assert_eq!(
            absolute(Path::new("/x"), Path::new("/abs")),
            PathBuf::from("/abs")
        );
    }
}
