//! The seccomp allow-lists of the frontend and the store-writer: every system call not named
//! here fails with `ENOSYS` (so libc's and std's fallbacks for newer calls, `clone3` →
//! `clone` or `statx` → `newfstatat`, still work, and anything unforeseen fails cleanly
//! instead of running). Installed first, before the deny filters and the x32 filter: when
//! several filters refuse a call, the kernel takes the most recently installed one's errno,
//! so the calls those name keep their `EPERM`. `seccomp` is on the list for those two
//! installs (a filter can only ever restrict further).
//!
//! The lists hold what tokio, std, SQLite, the allocator, NSS and the processes' own code call
//! on x86_64 Linux. They were checked by running the whole test suite (1,027 tests, the attack
//! suite among them) with the filter's default action set to log, where the kernel's audit
//! lines (`type=1326` in `dmesg`) name each call that was missing: only `clone3` (refused on
//! purpose: std falls back to `clone`, whose flags the filter can check) and `flistxattr`
//! (canonicalisation) were. Debug builds log instead of refusing when the process's
//! environment has `WARD_SECCOMP_LEARN=1`, to repeat that check.
//!
//! What is absent on purpose: running programs, other processes' memory, mounts, namespaces
//! (`clone` only without namespace flags), credentials, the kernel's modules, keyrings, BPF,
//! perf, io_uring, userfaultfd.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Calls both processes make.
const COMMON: &[i64] = &[
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_msync,
    libc::SYS_membarrier,
    // Threads and their synchronisation.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Who and where we are.
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getgroups,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrusage,
    libc::SYS_prlimit64,
    libc::SYS_prctl,
    libc::SYS_getcwd,
    libc::SYS_getrandom,
    // Signals.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd4,
    libc::SYS_kill,
    libc::SYS_tgkill,
    // Time.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // Waiting for events.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    // Descriptors and files (landlock decides which files).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_ioctl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fadvise64,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_memfd_create,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_umask,
    libc::SYS_fchdir,
    // Unix sockets (clients, the IPC channels, journald).
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // Further filters (they can only restrict).
    libc::SYS_seccomp,
    // Children the process waits for (none run a program: execve is not allowed).
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// x86_64-only names of calls std or libc may use.
#[cfg(target_arch = "x86_64")]
const COMMON_X86_64: &[i64] = &[
    libc::SYS_arch_prctl,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_epoll_wait,
    libc::SYS_pipe,
    libc::SYS_dup2,
    libc::SYS_time,
    libc::SYS_getdents,
];
#[cfg(not(target_arch = "x86_64"))]
const COMMON_X86_64: &[i64] = &[];

/// What only the store-writer adds: it creates, renames, links and removes store files.
pub const STORE_WRITER: &[i64] = &[
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_renameat,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_syncfs,
    libc::SYS_sync_file_range,
    // Canonicalisation strips extended attributes.
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
];

/// x86_64-only names the store-writer's file code may use.
#[cfg(target_arch = "x86_64")]
pub const STORE_WRITER_X86_64: &[i64] = &[
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_rmdir,
    libc::SYS_rename,
    libc::SYS_link,
    libc::SYS_symlink,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_lchown,
];
#[cfg(not(target_arch = "x86_64"))]
pub const STORE_WRITER_X86_64: &[i64] = &[];

/// What only the frontend adds: nothing so far (it creates no file; landlock forbids it too).
pub const FRONTEND: &[i64] = &[];

/// The flags of `clone` that create namespaces: `clone` is allowed only without them.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The allow-list filter of the common calls plus `extra`. `learn` (debug builds only, for
/// finding missing calls) logs instead of refusing.
pub fn allow_list(extra: &[&[i64]], learn: bool) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for list in [COMMON, COMMON_X86_64].iter().chain(extra) {
        for &call in *list {
            rules.insert(call, Vec::new());
        }
    }
    let no_namespaces = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
        0,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| e.to_string())?;
    rules.insert(libc::SYS_clone, vec![no_namespaces]);
    let refused = if learn && cfg!(debug_assertions) {
        SeccompAction::Log
    } else {
        SeccompAction::Errno(libc::ENOSYS as u32)
    };
    let filter = SeccompFilter::new(rules, refused, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Whether the learning mode was asked for (`WARD_SECCOMP_LEARN=1`, honoured by debug builds
/// only).
pub fn learning() -> bool {
    cfg!(debug_assertions) && std::env::var_os("WARD_SECCOMP_LEARN").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls no list may ever hold.
    const NEVER: &[i64] = &[
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_setuid,
        libc::SYS_setresuid,
        libc::SYS_setgid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_capset,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_open_by_handle_at,
        libc::SYS_clone3,
    ];

    #[test]
    fn no_list_allows_a_dangerous_call() {
        for list in [
            COMMON,
            COMMON_X86_64,
            STORE_WRITER,
            STORE_WRITER_X86_64,
            FRONTEND,
        ] {
            for call in NEVER {
                assert!(!list.contains(call), "syscall {call} is allowed");
            }
        }
    }

    #[test]
    fn the_filters_compile() {
        assert!(allow_list(&[FRONTEND], false).is_ok());
        assert!(allow_list(&[STORE_WRITER, STORE_WRITER_X86_64], false).is_ok());
    }
}
