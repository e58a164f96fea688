//! Build users: which uid a build runs as.
//!
//! * Static pool: the members of `build-users-group` (and users whose primary group it is),
//!   sorted by uid; uid 0 and the broker's own uid are never used. The gid is the group's.
//! * `auto-allocate-uids`: the next free uid of `start-id .. start-id + id-count`.
//! * Single-user (the broker is not root): every build runs as the broker's own uid.
//!
//! One build per uid at a time (except single-user), also across several ward daemons on one
//! host: a uid is held with an exclusive `flock` on `/run/ward-build-users/<uid>` (root-owned,
//! 0700) for as long as a build has it, and a uid another daemon holds is skipped — so one
//! daemon's sweep never kills another daemon's build. Before a uid is handed out it is swept:
//! a child that switched to it kills every process it owns, so nothing of an earlier build
//! (or of anyone else using that uid) survives into the next.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Group, Pid, Uid, User};

use crate::sys;

/// Where uids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fixed, sorted list.
    Static(Vec<u32>),
    /// A range: `start .. start + count`.
    Range {
        /// First uid.
        start: u32,
        /// How many.
        count: u32,
    },
    /// Single-user: the broker's own uid, shared by every build.
    Own,
}

/// The build users and which of them are taken.
#[derive(Debug)]
pub struct Pool {
    source: Source,
    /// The builds' gid; `None`: each uid's own number (auto-allocated uids without a group).
    gid: Option<u32>,
    own_uid: u32,
    busy: BTreeSet<u32>,
    /// Sweep uids before use and after builds (needs root).
    sweep: bool,
    /// The host-wide lock of each uid this pool holds.
    locks: BTreeMap<u32, OwnedFd>,
}

/// Host-wide directory of build-user locks (multi-user mode).
pub const LOCK_DIR: &str = "/run/ward-build-users";

/// Takes the host-wide lock of `uid`, or `None` if another process holds it.
fn lock_uid(uid: u32) -> Option<OwnedFd> {
    use rustix::fs::{flock, openat, FlockOperation, Mode, OFlags, CWD};
    match rustix::fs::mkdir(LOCK_DIR, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => {
            say!("ward-broker: creating {LOCK_DIR}: {e}");
            return None;
        }
    }
    let dir = match openat(
        CWD,
        LOCK_DIR,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(e) => {
            say!("ward-broker: opening {LOCK_DIR}: {e}");
            return None;
        }
    };
    match rustix::fs::fstat(&dir) {
        Ok(st) if st.st_uid == 0 && st.st_mode & 0o022 == 0 => {}
        _ => {
            say!("ward-broker: {LOCK_DIR} is not a root-owned private directory; not using it");
            return None;
        }
    }
    let file = openat(
        &dir,
        uid.to_string(),
        OFlags::CREATE | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

impl Pool {
    /// A pool over `source`; uid 0 and `own_uid` are removed from a static list (and skipped in
    /// a range).
    pub fn new(source: Source, gid: impl Into<Option<u32>>, own_uid: u32) -> Pool {
        let gid = gid.into();
        let sweep = !matches!(source, Source::Own);
        let source = match source {
            Source::Static(mut uids) => {
                uids.retain(|&u| u != 0 && u != own_uid);
                uids.sort_unstable();
                uids.dedup();
                Source::Static(uids)
            }
            other => other,
        };
        Pool {
            source,
            gid,
            own_uid,
            busy: BTreeSet::new(),
            sweep,
            locks: BTreeMap::new(),
        }
    }

    /// Reads `group`'s members and the users whose primary group it is.
    pub fn from_group(group: &str, own_uid: u32) -> Result<Pool, String> {
        let gr = Group::from_name(group)
            .map_err(|e| format!("looking up group '{group}': {e}"))?
            .ok_or_else(|| format!("build users group '{group}' does not exist"))?;
        let mut uids = Vec::new();
        for name in &gr.mem {
            match User::from_name(name) {
                Ok(Some(u)) => uids.push(u.uid.as_raw()),
                _ => {
                    say!("ward-broker: build user '{name}' of group '{group}' does not exist")
                }
            }
        }
        uids.extend(primary_members(gr.gid));
        if uids.contains(&0) || uids.contains(&own_uid) {
            say!("ward-broker: group '{group}' contains root or the broker's own user; they are never used for builds");
        }
        let pool = Pool::new(Source::Static(uids), gr.gid.as_raw(), own_uid);
        if pool.capacity() == 0 {
            return Err(format!("build users group '{group}' has no usable members"));
        }
        Ok(pool)
    }

    /// The gid a build running as `uid` gets.
    pub fn gid_for(&self, uid: u32) -> u32 {
        self.gid.unwrap_or(uid)
    }

    /// Whether builds may run as `uid` (in single-user mode: the broker's own uid).
    pub fn contains(&self, uid: u32) -> bool {
        match &self.source {
            Source::Static(uids) => uids.binary_search(&uid).is_ok(),
            Source::Range { start, count } => uid >= *start && uid - start < *count,
            Source::Own => uid == self.own_uid,
        }
    }

    /// How many builds can hold a user at once (`u32::MAX` in single-user mode).
    pub fn capacity(&self) -> usize {
        match &self.source {
            Source::Static(uids) => uids.len(),
            Source::Range { count, .. } => *count as usize,
            Source::Own => usize::MAX,
        }
    }

    /// Takes a free uid. `usable(uid)` is asked before a uid is handed out (the sweep); a uid it
    /// refuses is skipped.
    pub fn allocate_with(&mut self, mut usable: impl FnMut(u32) -> bool) -> Option<u32> {
        match &self.source {
            Source::Own => Some(self.own_uid),
            Source::Static(uids) => {
                let free: Vec<u32> = uids
                    .iter()
                    .copied()
                    .filter(|u| !self.busy.contains(u))
                    .collect();
                let sweep = self.sweep;
                let mut taken = None;
                for uid in free {
                    let lock = if sweep {
                        match lock_uid(uid) {
                            Some(l) => Some(l),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    if usable(uid) {
                        taken = Some((uid, lock));
                        break;
                    }
                }
                let (uid, lock) = taken?;
                if let Some(lock) = lock {
                    self.locks.insert(uid, lock);
                }
                self.busy.insert(uid);
                Some(uid)
            }
            &Source::Range { start, count } => {
                let mut tried = 0;
                let sweep = self.sweep;
                for uid in (start..start.saturating_add(count))
                    .filter(|u| *u != 0 && *u != self.own_uid && !self.busy.contains(u))
                {
                    let lock = if sweep {
                        match lock_uid(uid) {
                            Some(l) => Some(l),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    if usable(uid) {
                        if let Some(lock) = lock {
                            self.locks.insert(uid, lock);
                        }
                        self.busy.insert(uid);
                        return Some(uid);
                    }
                    tried += 1;
                    if tried >= 16 {
                        break;
                    }
                }
                None
            }
        }
    }

    /// Takes a free uid, sweeping it first (multi-user).
    pub fn allocate(&mut self) -> Option<u32> {
        let sweep = self.sweep;
        self.allocate_with(|uid| !sweep || sweep_uid(uid))
    }

    /// Returns `uid` to the pool, sweeping it first.
    pub fn release(&mut self, uid: u32) {
        if self.sweep && !sweep_uid(uid) {
            say!("ward-broker: uid {uid} still owns processes after SIGKILL; it stays reserved");
            return;
        }
        self.busy.remove(&uid);
        self.locks.remove(&uid);
    }

    /// Whether uids are swept (multi-user).
    pub fn sweeps(&self) -> bool {
        self.sweep
    }
}

/// Users whose primary group is `gid`.
fn primary_members(gid: Gid) -> Vec<u32> {
    let mut uids = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[3].parse::<u32>().ok() == Some(gid.as_raw()) {
                if let Ok(uid) = fields[2].parse::<u32>() {
                    uids.push(uid);
                }
            }
        }
    }
    uids
}

/// Kills every process owned by `uid`, until none is left: a child that switched to `uid`
/// sends `kill(-1, SIGKILL)` (which reaches exactly the processes that uid may signal), then
/// root checks `/proc` for a live process whose real, effective or saved uid is `uid`
/// (`kill(-1, 0)` cannot tell: it succeeds whenever any other process exists). True when none
/// is left. Never used with uid 0 or the broker's own uid.
pub fn sweep_uid(uid: u32) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return false;
    }
    for round in 0..200 {
        if round > 0 && !kill_all_of(uid) {
            return false;
        }
        match live_processes_of(uid) {
            Ok(0) => return true,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(if round < 10 {
                1
            } else {
                10
            })),
            Err(e) => {
                say!("ward-broker: sweeping uid {uid}: reading /proc: {e}");
                return false;
            }
        }
    }
    false
}

/// One `kill(-1, SIGKILL)` from a child running as `uid`.
fn kill_all_of(uid: u32) -> bool {
    let child = match sys::fork_process() {
        Ok(ForkResult::Parent { child }) => child,
        Ok(ForkResult::Child) => {
            let u = Uid::from_raw(uid);
            let code = if nix::unistd::setresuid(u, u, u).is_err() || nix::unistd::getuid() != u {
                2
            } else {
                match kill(Pid::from_raw(-1), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => 0,
                    Err(_) => 1,
                }
            };
            std::process::exit(code);
        }
        Err(e) => {
            say!("ward-broker: fork for sweeping uid {uid}: {e}");
            return false;
        }
    };
    let status = waitpid(child, None);
    if !matches!(status, Ok(WaitStatus::Exited(_, 0))) {
        say!("ward-broker: sweeping uid {uid}: {status:?}");
        return false;
    }
    true
}

/// How many processes that are not zombies have `uid` as real, effective or saved uid.
pub(crate) fn live_processes_of(uid: u32) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // /proc/<pid> belongs to the process's effective uid (or root when it is not
        // dumpable). A process whose real or saved uid is `uid` but effective uid another
        // non-root one takes a privileged uid change, which nothing running as a build user
        // can make: such entries need no reading of `status`, by far the costly part.
        match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                if meta.uid() != 0 && meta.uid() != uid {
                    continue;
                }
            }
            Err(_) => continue,
        }
        // A process that is gone by now is simply not counted.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let mut zombie = false;
        let mut owned = false;
        for line in status.lines() {
            if let Some(state) = line.strip_prefix("State:") {
                zombie = state.trim_start().starts_with('Z') || state.trim_start().starts_with('X');
            } else if let Some(ids) = line.strip_prefix("Uid:") {
                owned = ids
                    .split_whitespace()
                    .take(3)
                    .any(|id| id.parse::<u32>().ok() == Some(uid));
            }
        }
        if owned && !zombie {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_uid_are_never_handed_out() {
        let mut pool = Pool::new(Source::Static(vec![0, 30002, 500, 30001]), 30000, 500);
        assert_eq!(pool.capacity(), 2);
        assert_eq!(pool.allocate_with(|_| true), Some(30001));
        assert_eq!(pool.allocate_with(|_| true), Some(30002));
        assert_eq!(pool.allocate_with(|_| true), None);
    }

    #[test]
    fn one_build_per_uid_and_busy_uids_are_skipped() {
        let mut pool = Pool::new(Source::Static(vec![30001, 30002, 30003]), 30000, 0);
        pool.sweep = false;
        // 30001 still owns processes: skipped.
        assert_eq!(pool.allocate_with(|u| u != 30001), Some(30002));
        assert_eq!(pool.allocate_with(|_| true), Some(30001));
        assert_eq!(pool.allocate_with(|_| true), Some(30003));
        assert_eq!(pool.allocate_with(|_| true), None);
        pool.release(30002);
        assert_eq!(pool.allocate_with(|_| true), Some(30002));
    }

    #[test]
    fn ranges_skip_busy_and_reserved_uids() {
        let mut pool = Pool::new(Source::Range { start: 0, count: 3 }, 30000, 1);
        pool.sweep = false;
        assert_eq!(pool.allocate_with(|_| true), Some(2));
        assert_eq!(pool.allocate_with(|_| true), None);
        let mut pool = Pool::new(
            Source::Range {
                start: 872_415_232,
                count: 65536 * 128,
            },
            30000,
            0,
        );
        pool.sweep = false;
        assert_eq!(pool.allocate_with(|_| true), Some(872_415_232));
        assert_eq!(pool.allocate_with(|_| true), Some(872_415_233));
    }

    #[test]
    fn single_user_shares_the_brokers_uid() {
        let mut pool = Pool::new(Source::Own, 100, 1000);
        assert!(!pool.sweeps());
        assert_eq!(pool.allocate(), Some(1000));
        assert_eq!(pool.allocate(), Some(1000));
    }

    #[test]
    fn sweeping_kills_a_process_of_the_uid() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: sweeping_kills_a_process_of_the_uid needs root");
            return;
        }
        let uid = 872_415_232 + 4242;
        let child = match sys::fork_process().unwrap() {
            ForkResult::Child => {
                let u = Uid::from_raw(uid);
                let _ = nix::unistd::setresuid(u, u, u);
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
            ForkResult::Parent { child } => child,
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The child is a zombie once killed, which kill(-1, 0) still counts; reap it from
        // here while the sweep retries.
        assert!(sweep_or_reap(uid, child));
    }

    fn sweep_or_reap(uid: u32, child: Pid) -> bool {
        let killer = std::thread::spawn(move || sweep_uid(uid));
        let status = waitpid(child, None).unwrap();
        assert!(matches!(
            status,
            WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
        killer.join().unwrap()
    }
}
