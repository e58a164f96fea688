//! A cgroup (v2) per build, where the host allows: the builder joins it before it drops root,
//! so every process the build starts is in it wherever it moves in the pid namespace, and the
//! end of the build (success, failure, cancel, disconnect, timeout) writes `cgroup.kill`,
//! which kills them all at once — a second line behind the pid namespace and the uid sweep.
//!
//! The cgroups are children of the broker's own cgroup, named `ward-build-<broker pid>-<n>-<build
//! directory name>`; under systemd that is the service's cgroup, delegated with `Delegate=yes`.
//! No controller is enabled on them: `cgroup.kill` needs none, and enabling one would put the
//! broker's own cgroup under the "no internal processes" rule. Without a writable cgroup2
//! hierarchy, or on a kernel without `cgroup.kill` (before 5.14), builds run without one and
//! start-up says so once.

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
}

/// One build's cgroup.
#[derive(Debug)]
pub struct BuildCgroup {
    dir: PathBuf,
}

impl BuildCgroups {
    /// The broker's own cgroup, if it is on a cgroup2 hierarchy we may create children in.
    /// `Err` says why not (for the start-up log).
    pub fn discover() -> Result<BuildCgroups, String> {
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
        Ok(BuildCgroups { parent })
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
            Err(e) => eprintln!(
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
                    eprintln!("ward-broker: removing {}: {e}", self.dir.display());
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
            eprintln!("SKIPPED a_build_cgroup_kills_everything_in_it: needs root");
            return;
        }
        let cgroups = match BuildCgroups::discover() {
            Ok(c) => c,
            Err(why) => {
                eprintln!("SKIPPED a_build_cgroup_kills_everything_in_it: {why}");
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
