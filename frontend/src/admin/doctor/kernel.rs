//! Check 6: what this kernel offers the build sandbox: user namespaces, seccomp, landlock and
//! a cgroup2 hierarchy. Each missing piece is a warning saying what ward does without it
//! (README "Builds").

use super::report::{Check, Finding};

/// `/proc/sys/...` read as a number.
fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What a landlock probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landlock {
    /// Supported, with this ABI (and the kernel's, when newer than the crate knows).
    Available { abi: i32, kernel_abi: Option<i32> },
    /// Built in but not enabled at boot.
    NotEnabled,
    /// Not in this kernel.
    NotImplemented,
    /// The probe itself failed.
    Unknown(String),
}

/// Asks the kernel for its landlock ABI. The landlock crate only reports it when a ruleset is
/// enforced, so a throwaway thread restricts itself (no_new_privs and landlock are per
/// thread; the thread does nothing else and ends).
pub fn probe_landlock() -> Landlock {
    use landlock::{AccessFs, LandlockStatus, Ruleset, RulesetAttr};
    let probe = std::thread::spawn(|| -> Result<LandlockStatus, String> {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        let status = Ruleset::default()
            .handle_access(AccessFs::Execute)
            .map_err(|e| e.to_string())?
            .create()
            .map_err(|e| e.to_string())?
            .restrict_self()
            .map_err(|e| e.to_string())?;
        Ok(status.landlock)
    });
    match probe.join() {
        Ok(Ok(LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        })) => Landlock::Available {
            abi: effective_abi as i32,
            kernel_abi,
        },
        Ok(Ok(LandlockStatus::NotEnabled)) => Landlock::NotEnabled,
        Ok(Ok(LandlockStatus::NotImplemented)) => Landlock::NotImplemented,
        Ok(Err(e)) => Landlock::Unknown(e),
        Err(_) => Landlock::Unknown("the probe thread panicked".into()),
    }
}

/// Whether `/proc/PID/status` text shows seccomp support (the field exists only with
/// CONFIG_SECCOMP).
/// Whether this process's root is not pid 1's (`None` when that cannot be read: not root, or
/// no /proc).
pub fn chrooted() -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/").ok()?;
    let init = std::fs::metadata("/proc/1/root").ok()?;
    Some((ours.dev(), ours.ino()) != (init.dev(), init.ino()))
}

/// Tries to create a user namespace in a child (`unshare --user true`, util-linux); the
/// error when that fails, `None` when it works or `unshare` is not installed.
fn userns_probe_fails() -> Option<String> {
    let out = std::process::Command::new("unshare")
        .args(["--user", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if out.status.success() {
        return None;
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Some(if stderr.is_empty() {
        out.status.to_string()
    } else {
        stderr
    })
}

pub fn has_seccomp(status: &str) -> bool {
    status.lines().any(|l| l.starts_with("Seccomp:"))
}

/// The mount point of a cgroup2 file system in `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fs_type = right.split_whitespace().next()?;
        (fs_type == "cgroup2").then(|| left.split_whitespace().nth(4).map(str::to_owned))?
    })
}

/// Check 6.
pub fn check_sandbox() -> Vec<Finding> {
    let c = Check::Sandbox;
    let mut out = Vec::new();
    let mut fine = Vec::new();

    // User namespaces: every sandboxed build makes one, as its build user (not root).
    match sysctl("/proc/sys/user/max_user_namespaces") {
        Some(0) => out.push(
            Finding::warning(
                c,
                "userns",
                "user namespaces are disabled (user.max_user_namespaces = 0): sandboxed builds \
                 fail at the daemon's start-up canary; only sandbox = false builds, without \
                 namespaces",
            )
            .command("sysctl -w user.max_user_namespaces=65536"),
        ),
        Some(n) => fine.push(format!("user namespaces ({n})")),
        None => out.push(Finding::warning(
            c,
            "userns",
            "this kernel has no user namespaces (/proc/sys/user/max_user_namespaces is \
             missing): sandboxed builds fail; only sandbox = false builds",
        )),
    }
    if sysctl("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        out.push(
            Finding::warning(
                c,
                "userns-unprivileged",
                "kernel.unprivileged_userns_clone = 0: the builder makes its namespaces as the \
                 build user, not root, so sandboxed builds fail at the start-up canary",
            )
            .command("sysctl -w kernel.unprivileged_userns_clone=1"),
        );
    }
    if sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        out.push(
            Finding::warning(
                c,
                "userns-apparmor",
                "kernel.apparmor_restrict_unprivileged_userns = 1: AppArmor denies build users \
                 the capabilities of their own user namespace, so sandboxed builds fail",
            )
            .command("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
        );
    }

    // A chroot: the kernel refuses new user namespaces to a process whose root is not its
    // mount namespace's, and every build starts in one (also with sandbox = false).
    let chroot = chrooted();
    if chroot == Some(true) {
        fine.retain(|f| !f.starts_with("user namespaces"));
        out.push(
            Finding::warning(
                c,
                "chroot",
                "ward runs inside a chroot ('/' is not the root of pid 1): the kernel refuses                  new user namespaces to chrooted processes, so every build fails",
            )
            .command("run ward outside the chroot, or in a container or VM with its own root"),
        );
    } else if let Some(error) = userns_probe_fails() {
        fine.retain(|f| !f.starts_with("user namespaces"));
        // The sysctls may allow them while something else refuses: a chroot that cannot be
        // seen as one, a container's seccomp profile, an LSM.
        out.push(
            Finding::warning(
                c,
                "userns-probe",
                format!(
                    "creating a user namespace fails here ('unshare --user true': {error}): \
                     every build starts in one, so builds fail; a chroot, a container's \
                     seccomp profile or an LSM refuses them"
                ),
            )
            .command("run ward outside the chroot or container, or allow user namespaces in it"),
        );
    }

    // seccomp.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_seccomp(&status) {
        fine.push("seccomp".into());
    } else {
        out.push(
            Finding::warning(
                c,
                "seccomp",
                "this kernel has no seccomp (no Seccomp field in /proc/self/status): the \
                 start-up canary refuses sandboxed builds, and the frontend and store-writer \
                 run without their filters",
            )
            .command("boot a kernel built with CONFIG_SECCOMP_FILTER"),
        );
    }

    // landlock.
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").ok();
    match probe_landlock() {
        Landlock::Available { abi, kernel_abi } => fine.push(match kernel_abi {
            Some(k) => format!("landlock ABI {abi} (kernel {k})"),
            None => format!("landlock ABI {abi}"),
        }),
        Landlock::NotEnabled => out.push(
            Finding::warning(
                c,
                "landlock",
                format!(
                    "landlock is built into this kernel but not enabled{}: builds run without \
                     its file-system rules (the canary logs 'landlock not supported'); \
                     namespaces, seccomp and the build user still confine them",
                    lsm.as_deref()
                        .map(|l| format!(" (active LSMs: {})", l.trim()))
                        .unwrap_or_default()
                ),
            )
            .command("add landlock to the lsm= kernel parameter (e.g. lsm=landlock,lockdown,yama,integrity,apparmor) and reboot"),
        ),
        Landlock::NotImplemented => out.push(
            Finding::warning(
                c,
                "landlock",
                "this kernel has no landlock (Linux 5.13 or later with \
                 CONFIG_SECURITY_LANDLOCK): builds, the frontend and the store-writer run \
                 without its file-system rules; namespaces, seccomp and the build user still \
                 confine builds",
            )
            .command("boot a kernel with CONFIG_SECURITY_LANDLOCK=y"),
        ),
        Landlock::Unknown(why) => out.push(Finding::warning(
            c,
            "landlock",
            format!("landlock could not be probed: {why}"),
        )),
    }

    // cgroup2.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match cgroup2_mount(&mountinfo) {
        Some(mount) => fine.push(format!("cgroup2 at {mount}")),
        None => out.push(
            Finding::warning(
                c,
                "cgroup2",
                "no cgroup2 file system is mounted: builds get no cgroup of their own; ward \
                 instead kills and waits for every process of the build user (scanning /proc) \
                 when a build ends",
            )
            .command("mount -t cgroup2 none /sys/fs/cgroup"),
        ),
    }
    if !fine.is_empty() {
        out.insert(
            0,
            Finding::ok(c, format!("the kernel offers {}", fine.join(", "))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_field() {
        assert!(has_seccomp("Name:\tx\nSeccomp:\t0\nSeccomp_filters:\t0\n"));
        assert!(!has_seccomp("Name:\tx\nNoNewPrivs:\t0\n"));
    }

    #[test]
    fn cgroup2_in_mountinfo() {
        let with = "22 1 0:21 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
                    23 1 0:22 / /proc rw - proc proc rw\n";
        assert_eq!(cgroup2_mount(with).as_deref(), Some("/sys/fs/cgroup"));
        let without = "23 1 0:22 / /proc rw - proc proc rw\n\
                       24 1 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(without), None);
    }

    #[test]
    fn the_landlock_probe_leaves_this_thread_alone() {
        let no_new_privs = || {
            std::fs::read_to_string("/proc/thread-self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("NoNewPrivs:"))
                .map(str::to_owned)
        };
        let before = no_new_privs();
        let _ = probe_landlock();
        assert_eq!(no_new_privs(), before);
        // This thread may still execute programs.
        assert!(std::process::Command::new("true").status().is_ok());
    }

    #[test]
    fn the_sandbox_check_always_says_something() {
        assert!(!check_sandbox().is_empty());
    }
}
