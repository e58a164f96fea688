//! The frontend's confinement, applied once everything it needs is open: no new privileges and
//! a seccomp filter that makes the syscalls a network-facing parser never needs fail with
//! EPERM (program execution, debugging other processes, mounts, namespaces, module loading,
//! identity changes, kernel keyrings, BPF).
//!
//! A denylist rather than an allowlist for now: tokio, SQLite and the allocator use a wide and
//! libc-dependent set of syscalls. `/proc/<pid>/status` shows `NoNewPrivs: 1`, `Seccomp: 2`.
//!
//! Linux only: macOS has neither no_new_privs nor seccomp, and there [`confine_frontend`]
//! fails, so the frontend refuses to serve rather than run unconfined (a `sandbox_init`
//! profile would be macOS's counterpart; there is none yet).

#[cfg(target_os = "linux")]
use std::collections::BTreeMap;

#[cfg(target_os = "linux")]
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use ward_config::layout::StoreLayout;

/// Syscalls the frontend must never make, with why.
#[cfg(target_os = "linux")]
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_execve, "running programs"),
    (libc::SYS_execveat, "running programs"),
    (libc::SYS_ptrace, "debugging other processes"),
    (libc::SYS_process_vm_readv, "reading other processes"),
    (libc::SYS_process_vm_writev, "writing other processes"),
    (libc::SYS_mount, "mounting"),
    (libc::SYS_umount2, "unmounting"),
    (libc::SYS_pivot_root, "changing root"),
    (libc::SYS_chroot, "changing root"),
    (libc::SYS_unshare, "new namespaces"),
    (libc::SYS_setns, "entering namespaces"),
    (libc::SYS_init_module, "kernel modules"),
    (libc::SYS_finit_module, "kernel modules"),
    (libc::SYS_delete_module, "kernel modules"),
    (libc::SYS_kexec_load, "replacing the kernel"),
    (libc::SYS_bpf, "BPF programs"),
    (libc::SYS_keyctl, "kernel keyrings"),
    (libc::SYS_add_key, "kernel keyrings"),
    (libc::SYS_request_key, "kernel keyrings"),
    (libc::SYS_setuid, "identity changes"),
    (libc::SYS_setgid, "identity changes"),
    (libc::SYS_setreuid, "identity changes"),
    (libc::SYS_setregid, "identity changes"),
    (libc::SYS_setresuid, "identity changes"),
    (libc::SYS_setresgid, "identity changes"),
    (libc::SYS_setgroups, "identity changes"),
    (libc::SYS_perf_event_open, "performance counters"),
    (libc::SYS_userfaultfd, "user fault handling"),
    (libc::SYS_io_uring_setup, "io_uring bypasses the filter"),
];

/// Why confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    /// The filter could not be built or installed.
    #[error("installing the seccomp filter: {0}")]
    Seccomp(String),
    /// Not Linux: no way to confine the frontend yet.
    #[cfg(not(target_os = "linux"))]
    #[error("the frontend's confinement (no_new_privs, seccomp) exists only on Linux")]
    Unsupported,
}

#[cfg(target_os = "linux")]
fn target_arch() -> Result<TargetArch, ConfineError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Confines every thread of the frontend.
#[cfg(target_os = "linux")]
pub fn confine_frontend(_layout: &StoreLayout) -> Result<(), ConfineError> {
    nix::sys::prctl::set_no_new_privs().map_err(ConfineError::NoNewPrivs)?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(nr, _why)| (*nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )
    .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string()))?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Not Linux: refuses (see the module's documentation).
#[cfg(not(target_os = "linux"))]
pub fn confine_frontend(_layout: &StoreLayout) -> Result<(), ConfineError> {
    Err(ConfineError::Unsupported)
}
