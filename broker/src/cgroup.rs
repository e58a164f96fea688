//! A cgroup (v2) per build, where the host allows: the builder joins it before it drops root,
//! so every process the build starts is in it wherever it moves in the pid namespace, and the
//! end of the build (success, failure, cancel, disconnect, timeout) writes `cgroup.kill`,
//! which kills them all at once — a second line behind the pid namespace and the uid sweep.
//!
//! The cgroups are children of the broker's own cgroup, named `ward-build-<broker pid>-<n>-<build
//! directory name>`; under systemd that is the service's cgroup, delegated with `Delegate=yes`.
//! `cgroup.kill` needs no controller. Limits do: when `ward-build-memory-max` or
//! `ward-build-max-processes` is set and the broker's cgroup offers the `memory` or `pids`
//! controller and holds nothing but the daemon's own processes (as systemd's `Delegate=yes`
//! service cgroup does), the broker moves the daemon into a leaf `ward-daemon` beside the
//! builds (the "no internal processes" rule), enables the controllers for the children, and
//! gives each build cgroup `memory.max` (with `memory.oom.group`, so an OOM kills the whole
//! build) and `pids.max`. A cgroup shared with other processes is never reorganised: builds
//! then get no limits from cgroups (RLIMIT_NPROC still caps their processes), and start-up
//! says why. Without a writable cgroup2 hierarchy, or on a kernel without `cgroup.kill`
//! (before 5.14), builds run without a cgroup and start-up says so once.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where build cgroups are made.
#[derive(Debug, Clone)]
pub struct BuildCgroups {
    parent: PathBuf,
    /// What each build cgroup gets (`None`: no controller could be enabled).
    limits: Option<Limits>,
    /// Why there are no limits, for the start-up log.
    no_limits: Option<String>,
}

/// Per-build cgroup limits; 0 = none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory_max: u64,
    /// `pids.max`.
    pub pids_max: u32,
}

/// One build's cgroup.
#[derive(Debug)]
pub struct BuildCgroup {
    dir: PathBuf,
}

impl BuildCgroups {
    /// The broker's own cgroup, if it is on a cgroup2 hierarchy we may create children in.
    /// `Err` says why not (for the start-up log).
    pub fn discover(wanted: Limits) -> Result<BuildCgroups, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let rel = own_cgroup(&own).ok_or("the broker is in no cgroup2 cgroup")?;
        let parent = Path::new(&mount).join(rel.trim_start_matches('/'));
        // A trial child: proves we may create (and remove) cgroups here, and that they have
        // cgroup.kill (the root cgroup never has one).
        let probe = parent.join(format!("ward-probe-{}", std::process::id()));
        fs::create_dir(&probe).map_err(|e| format!("creating {}: {e}", probe.display()))?;
        let has_kill = probe.join("cgroup.kill").exists();
        let _ = fs::remove_dir(&probe);
        if !has_kill {
            return Err(format!(
                "cgroups under {} have no cgroup.kill (Linux 5.14 or later)",
                parent.display()
            ));
        }
        let (limits, no_limits) = if wanted.memory_max == 0 && wanted.pids_max == 0 {
            (None, None)
        } else {
            match enable_controllers(&parent, wanted, std::process::id()) {
                Ok(limits) => (Some(limits), None),
                Err(why) => (None, Some(why)),
            }
        };
        Ok(BuildCgroups {
            parent,
            limits,
            no_limits,
        })
    }

    /// The limits builds get, or why they get none (for the start-up log); `None` when none
    /// were asked for.
    pub fn limits(&self) -> Option<Result<Limits, &str>> {
        match (&self.limits, &self.no_limits) {
            (Some(l), _) => Some(Ok(*l)),
            (None, Some(why)) => Some(Err(why)),
            (None, None) => None,
        }
    }

    /// Creates the cgroup of a build and opens its `cgroup.procs` for the builder to join.
    pub fn create(&self, dir_name: &str) -> std::io::Result<(BuildCgroup, File)> {
        // The broker's pid keeps daemons that share a cgroup (tests, `--stdio` sessions) apart,
        // the sequence number the tables of one process. An existing cgroup of that name is
        // not ours to kill: this build then goes without one.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = self.parent.join(format!(
            "ward-build-{}-{seq}-{dir_name}",
            std::process::id()
        ));
        fs::create_dir(&dir)?;
        if let Some(limits) = self.limits {
            if let Err(e) = apply_limits(&dir, limits) {
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
        }
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"));
        match procs {
            Ok(procs) => Ok((BuildCgroup { dir }, procs)),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

impl BuildCgroup {
    /// Kills every process in the cgroup.
    pub fn kill(&self) {
        match fs::write(self.dir.join("cgroup.kill"), "1") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => say!(
                "ward-broker: {}: writing cgroup.kill: {e}",
                self.dir.display()
            ),
        }
    }

    /// Kills every process in the cgroup and waits (up to 5 s) until none is left; true when
    /// the cgroup is empty.
    pub fn kill_and_wait(&self) -> bool {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::read_to_string(self.dir.join("cgroup.events")) {
                Ok(events) if events.lines().any(|l| l == "populated 0") => return true,
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                _ => return false,
            }
        }
    }

    /// Kills what is left, waits (briefly) for the cgroup to empty and removes it.
    pub fn remove(&self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                // EBUSY while killed processes are still exiting.
                Err(e) if Instant::now() >= deadline => {
                    say!("ward-broker: removing {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// The number of processes in it now (for tests and the log).
    #[cfg(test)]
    pub fn process_count(&self) -> usize {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// Writes the limits into a new build cgroup.
fn apply_limits(dir: &Path, limits: Limits) -> std::io::Result<()> {
    if limits.memory_max != 0 {
        fs::write(dir.join("memory.max"), limits.memory_max.to_string())?;
        // Swap would let a bomb go on past the limit, slowly.
        if dir.join("memory.swap.max").exists() {
            fs::write(dir.join("memory.swap.max"), "0")?;
        }
        fs::write(dir.join("memory.oom.group"), "1")?;
    }
    if limits.pids_max != 0 {
        fs::write(dir.join("pids.max"), limits.pids_max.to_string())?;
    }
    Ok(())
}

/// Makes `parent`'s children able to carry `wanted`: moves the daemon (`broker` and its
/// descendants, which must be all that `parent` holds) into the leaf `ward-daemon`, then
/// enables the controllers. Returns the limits that will apply (a controller the cgroup does
/// not offer drops its limit); `Err` says why none can.
fn enable_controllers(parent: &Path, wanted: Limits, broker: u32) -> Result<Limits, String> {
    let read = |name: &str| {
        fs::read_to_string(parent.join(name))
            .map_err(|e| format!("reading {}: {e}", parent.join(name).display()))
    };
    let offered = read("cgroup.controllers")?;
    let has = |c: &str| offered.split_whitespace().any(|o| o == c);
    let limits = Limits {
        memory_max: if has("memory") { wanted.memory_max } else { 0 },
        pids_max: if has("pids") { wanted.pids_max } else { 0 },
    };
    let mut enable = Vec::new();
    if limits.memory_max != 0 {
        enable.push("+memory");
    }
    if limits.pids_max != 0 {
        enable.push("+pids");
    }
    if enable.is_empty() {
        return Err(format!(
            "{} offers neither the memory nor the pids controller",
            parent.display()
        ));
    }
    let enabled = read("cgroup.subtree_control")?;
    let missing: Vec<&str> = enable
        .iter()
        .copied()
        .filter(|c| !enabled.split_whitespace().any(|e| e == &c[1..]))
        .collect();
    if missing.is_empty() {
        return Ok(limits);
    }
    let members: Vec<u32> = read("cgroup.procs")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Some(foreign) = members.iter().find(|&&p| !is_daemon_process(p, broker)) {
        return Err(format!(
            "{} also holds process {foreign}, which is not the daemon's; only a cgroup of the \
             daemon's own (systemd's Delegate=yes) is reorganised",
            parent.display()
        ));
    }
    let leaf = parent.join("ward-daemon");
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", leaf.display())),
    }
    for pid in members {
        match fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => {}
            // Exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(format!("moving process {pid} to {}: {e}", leaf.display())),
        }
    }
    fs::write(parent.join("cgroup.subtree_control"), missing.join(" ")).map_err(|e| {
        format!(
            "enabling {} in {}: {e}",
            missing.join(" "),
            parent.join("cgroup.subtree_control").display()
        )
    })?;
    Ok(limits)
}

/// Whether `pid` is `broker` or one of its descendants (by the parent links in /proc).
fn is_daemon_process(pid: u32, broker: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        if p == broker {
            return true;
        }
        match parent_of(p) {
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Joins the cgroup whose `cgroup.procs` is `procs` (in the child, before it drops root).
pub fn join(mut procs: &File) -> std::io::Result<()> {
    procs.write_all(b"0")
}

/// The mount point of the first cgroup2 file system in a `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        // Field 5 is the mount point (octal escapes for spaces and the like).
        let mount = before.split_whitespace().nth(4)?;
        Some(unescape_octal(mount))
    })
}

/// The cgroup2 path of a `/proc/self/cgroup` text: the line `0::<path>`.
fn own_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing in for a cgroup: its interface files as plain files.
    fn fake_cgroup(controllers: &str, subtree: &str, procs: &[u32]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), subtree).unwrap();
        let procs: Vec<String> = procs.iter().map(u32::to_string).collect();
        fs::write(dir.path().join("cgroup.procs"), procs.join("\n")).unwrap();
        dir
    }

    #[test]
    fn controllers_are_enabled_only_in_a_cgroup_of_the_daemon_alone() {
        let me = std::process::id();
        let wanted = Limits {
            memory_max: 1 << 30,
            pids_max: 100,
        };
        // Ours alone: the daemon moves to the leaf, then the controllers are enabled.
        let cg = fake_cgroup("cpu memory pids", "", &[me]);
        let got = enable_controllers(cg.path(), wanted, me).unwrap();
        assert_eq!(got, wanted);
        assert_eq!(
            fs::read_to_string(cg.path().join("ward-daemon/cgroup.procs")).unwrap(),
            me.to_string()
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        // A controller the cgroup does not offer drops its limit.
        let cg = fake_cgroup("cpu pids", "", &[me]);
        let got = enable_controllers(cg.path(), wanted, me).unwrap();
        assert_eq!(got.memory_max, 0);
        assert_eq!(got.pids_max, 100);
        // Already enabled: nothing is moved.
        let cg = fake_cgroup("memory pids", "memory pids", &[me]);
        assert_eq!(enable_controllers(cg.path(), wanted, me).unwrap(), wanted);
        assert!(!cg.path().join("ward-daemon").exists());
        // Shared with a process that is not the daemon's (pid 1): left alone.
        let cg = fake_cgroup("memory pids", "", &[me, 1]);
        let err = enable_controllers(cg.path(), wanted, me).unwrap_err();
        assert!(err.contains("not the daemon's"), "{err}");
        assert!(!cg.path().join("ward-daemon").exists());
        assert_eq!(
            fs::read_to_string(cg.path().join("cgroup.subtree_control")).unwrap(),
            ""
        );
        // Neither controller.
        let cg = fake_cgroup("cpu io", "", &[me]);
        assert!(enable_controllers(cg.path(), wanted, me).is_err());
    }

    #[test]
    fn limits_are_written_into_a_build_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        apply_limits(
            dir.path(),
            Limits {
                memory_max: 4096,
                pids_max: 7,
            },
        )
        .unwrap();
        let read = |n: &str| fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("memory.max"), "4096");
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("pids.max"), "7");
    }

    #[test]
    fn finds_the_cgroup2_mount_and_the_own_cgroup() {
        let mountinfo = "\
24 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 25 0:31 / /sys/fs/cgroup/my\\040unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo).as_deref(),
            Some("/sys/fs/cgroup/my unified")
        );
        assert_eq!(
            cgroup2_mount("24 1 253:0 / / rw - ext4 /dev/vda rw\n"),
            None
        );
        let cgroup = "4:memory:/x\n0::/system.slice/nix-daemon.service\n";
        assert_eq!(own_cgroup(cgroup), Some("/system.slice/nix-daemon.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn a_build_cgroup_kills_everything_in_it() {
        if !nix::unistd::geteuid().is_root() {
            say!("SKIPPED a_build_cgroup_kills_everything_in_it: needs root");
            return;
        }
        let cgroups = match BuildCgroups::discover(Limits {
            memory_max: 0,
            pids_max: 0,
        }) {
            Ok(c) => c,
            Err(why) => {
                say!("SKIPPED a_build_cgroup_kills_everything_in_it: {why}");
                return;
            }
        };
        let (cg, _procs) = cgroups.create("unit-test-kill").unwrap();
        // A shell that joins the cgroup, then leaves a detached sleeper behind and exits.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs; setsid sleep 300 >/dev/null 2>&1 & echo $!",
                cg.dir.display()
            ))
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        let sleeper: i32 = out.trim().parse().unwrap();
        assert!(Path::new(&format!("/proc/{sleeper}")).exists());
        assert!(cg.process_count() >= 1);
        cg.remove();
        let gone = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        });
        assert!(gone, "the sleeper {sleeper} survived cgroup.kill");
        assert!(!cg.dir.exists());
    }
}
