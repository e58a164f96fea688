//! The store-writer's confinement, applied once everything is open and before any channel is
//! served:
//!
//! 1. `no_new_privs`, so nothing this process could still execute gains privileges;
//! 2. landlock (best effort: kernels without it, or with an older ABI, get what they support):
//!    files may be read anywhere, but created, written, renamed or removed only beneath the
//!    physical store directory, the state directory, the log directory and the IPC directory,
//!    and nothing may be executed;
//! 3. seccomp filters returning `EPERM` for system calls the store-writer never needs and an
//!    attacker would want: executing programs, tracing other processes, mounting, changing
//!    root, loading kernel modules or kernels, BPF, changing credentials, entering or creating
//!    namespaces, the kernel keyring, and a few more; `clone` with namespace flags is refused
//!    and `clone3` answers `ENOSYS` (its flags cannot be inspected, and libc then falls back
//!    to `clone` for threads).
//!
//! 4. before those, the allow-list ([`ward_store::seccomp_allow`]): every call not on it
//!    fails with `ENOSYS`.
//!
//! `/proc/self/status` then shows `NoNewPrivs: 1` and `Seccomp: 2`. (The x86-64 filter checks
//! the architecture, which rules out the i386 entry points; x32 calls, on kernels built with
//! x32 support, pass the same architecture check, which is one reason landlock also forbids
//! execution.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the process could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    /// The architecture has no seccomp filter here.
    #[error("no seccomp filter for architecture '{0}'")]
    UnsupportedArch(&'static str),
    /// Building or installing a seccomp filter failed.
    #[error("installing the seccomp filter: {0}")]
    Seccomp(String),
    /// Landlock failed in a way that is not a missing kernel feature.
    #[error("applying landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

/// What confinement achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// How much of the landlock ruleset the kernel enforces, for the log.
    pub landlock: &'static str,
    /// Whether landlock restricts file writes at all (any landlock ABI does).
    pub landlock_enforced: bool,
}

/// The newest landlock ABI this code asks for; older kernels get the intersection.
const LANDLOCK_ABI: ABI = ABI::V9;

/// Confines the calling process; `writable` are the directories it may write beneath.
pub fn confine(writable: &[PathBuf]) -> Result<Confinement, ConfineError> {
    nix::sys::prctl::set_no_new_privs().map_err(ConfineError::NoNewPrivs)?;
    let status = apply_landlock(writable)?;
    // First the allow-list (every call not on it: ENOSYS); the deny filters installed after it
    // keep their EPERM for the calls they name (the newest filter's errno wins).
    use ward_store::seccomp_allow::{allow_list, learning, STORE_WRITER, STORE_WRITER_X86_64};
    let allowed = allow_list(&[STORE_WRITER, STORE_WRITER_X86_64], learning())
        .map_err(ConfineError::Seccomp)?;
    seccompiler::apply_filter_all_threads(&allowed)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    for filter in seccomp_filters()? {
        seccompiler::apply_filter_all_threads(&filter)
            .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    }
    // The denylist above names x86_64 numbers; x32 ones would slip past it.
    seccompiler::apply_filter_all_threads(&ward_store::seccomp_abi::refuse_x32())
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    Ok(Confinement {
        landlock: match status {
            RulesetStatus::FullyEnforced => "fully enforced",
            RulesetStatus::PartiallyEnforced => "enforced with the kernel's older landlock abi",
            RulesetStatus::NotEnforced => "not enforced (kernel without landlock)",
        },
        landlock_enforced: status != RulesetStatus::NotEnforced,
    })
}

fn apply_landlock(writable: &[PathBuf]) -> Result<RulesetStatus, ConfineError> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let no_exec: BitFlags<AccessFs> = all & !AccessFs::Execute;
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let status = Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(["/"], read))?
        .add_rules(path_beneath_rules(writable, no_exec))?
        .restrict_self()?;
    Ok(status.ruleset)
}

fn target_arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| ConfineError::UnsupportedArch(std::env::consts::ARCH))
}

/// System calls refused outright with `EPERM`.
fn denied_syscalls() -> Vec<i64> {
    let mut calls = vec![
        // Running programs.
        libc::SYS_execve,
        libc::SYS_execveat,
        // Other processes' memory.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        // Mounts and the root directory.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        // The kernel itself.
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        // Credentials.
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_setgroups,
        libc::SYS_capset,
        // Namespaces.
        libc::SYS_unshare,
        libc::SYS_setns,
        // Keyrings.
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        // File handles bypass path-based checks.
        libc::SYS_open_by_handle_at,
    ];
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// The flags of `clone` that create namespaces.
const CLONE_NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn seccomp_error(e: impl std::fmt::Display) -> ConfineError {
    ConfineError::Seccomp(e.to_string())
}

/// The filters: denied calls and namespace-creating `clone` (`EPERM`), and `clone3`
/// (`ENOSYS`). Each allows everything else.
fn seccomp_filters() -> Result<Vec<BpfProgram>, ConfineError> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag.unsigned_abs());
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|condition| SeccompRule::new(vec![condition]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(seccomp_error)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(seccomp_error)?;
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        arch,
    )
    .map_err(seccomp_error)?;
    [deny, no_clone3]
        .into_iter()
        .map(|filter| BpfProgram::try_from(filter).map_err(seccomp_error))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::process::Command;

    use super::*;

    /// Set in the environment of the re-executed test binary: the directory it may write.
    const CHILD_ENV: &str = "WARD_CONFINE_TEST_WRITABLE";
    /// And a directory it may not write.
    const FORBIDDEN_ENV: &str = "WARD_CONFINE_TEST_FORBIDDEN";

    #[test]
    fn the_filters_compile_for_this_machine() {
        let filters = seccomp_filters().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
        let denied = denied_syscalls();
        for call in [
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_setuid,
        ] {
            assert!(denied.contains(&call));
        }
    }

    /// Runs in a child process (see below): confines itself, then checks what is refused.
    #[test]
    #[ignore = "helper run in a child process by confinement_refuses_exec_and_foreign_writes"]
    fn confined_child() {
        let writable = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent"));
        let forbidden = PathBuf::from(std::env::var_os(FORBIDDEN_ENV).expect("run by the parent"));
        let confinement = confine(std::slice::from_ref(&writable)).unwrap();

        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");

        let spawned = Command::new("/bin/sh").arg("-c").arg("true").status();
        let err = spawned.expect_err("exec must be refused");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");

        // The x32 entry points are refused too (on a kernel without x32 the filter still
        // sees the number first).
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(unsafe_code)]
            // SAFETY: getpid takes no arguments and touches no memory of ours; a refused
            // number only returns -1 with errno set.
            let ret = unsafe {
                libc::syscall(
                    i64::from(ward_store::seccomp_abi::X32_SYSCALL_BIT) | libc::SYS_getpid,
                )
            };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((ret, errno), (-1, Some(libc::EPERM)), "x32 getpid");
        }
        // Threads still start (clone3 falls back to clone).
        std::thread::spawn(|| 1 + 1).join().unwrap();
        // Creating namespaces is refused.
        assert_eq!(
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER),
            Err(nix::errno::Errno::EPERM)
        );

        std::fs::write(writable.join("allowed"), "yes").unwrap();
        let outside = std::fs::write(forbidden.join("refused"), "no");
        if confinement.landlock_enforced {
            let err = outside.expect_err("landlock must refuse writes elsewhere");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        } else {
            println!("landlock: {}", confinement.landlock);
        }
        println!("confined child checks passed");
    }

    #[test]
    fn confinement_refuses_exec_and_foreign_writes() {
        let writable = tempfile::tempdir().unwrap();
        let forbidden = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let output = Command::new(exe)
            .args([
                "--exact",
                "confine::tests::confined_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, writable.path())
            .env(FORBIDDEN_ENV, forbidden.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("confined child checks passed") && stdout.contains("1 passed"),
            "the child test did not run: {stdout}\n{stderr}"
        );
        assert!(writable.path().join("allowed").exists());
        assert!(!forbidden.path().join("refused").exists());
    }
}
