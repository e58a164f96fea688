//! The frontend's confinement, applied once everything it needs is open: a landlock domain
//! ([`confine_files`]: read anywhere, write only the DB's shared-memory index and the audit
//! log, create, remove and execute nothing), no new privileges, and seccomp: a deny filter
//! that makes the syscalls a network-facing parser never needs fail with EPERM (program
//! execution, debugging other processes, mounts, namespaces, module loading, identity changes,
//! kernel keyrings, BPF), the x32 filter, and (installed first) the allow-list
//! (`ward_store::seccomp_allow`): every call not on it fails with ENOSYS.
//! `/proc/<pid>/status` shows `NoNewPrivs: 1`, `Seccomp: 2`.
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
    /// The landlock domain could not be set up.
    #[error("setting up landlock: {0}")]
    Landlock(String),
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
    // First the allow-list (every call not on it: ENOSYS), then the deny filter, whose EPERM
    // then wins for the calls it names (the newest filter's errno does), then x32.
    use ward_store::seccomp_allow::{allow_list, learning, FRONTEND};
    let allowed = allow_list(&[FRONTEND], learning()).map_err(ConfineError::Seccomp)?;
    seccompiler::apply_filter_all_threads(&allowed)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
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
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    // The denylist names x86_64 numbers; x32 ones would slip past it.
    seccompiler::apply_filter_all_threads(&ward_store::seccomp_abi::refuse_x32())
        .map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// What the frontend may write once [`confine_files`] ran: the DB's shared-memory index (a
/// WAL reader must), and the audit log's directory (it appends to the log, reopened after a
/// rotation). Everything may be read; nothing else written, created, removed or executed.
#[cfg(target_os = "linux")]
pub fn confine_files(layout: &StoreLayout, audit_log: &str) -> Result<String, ConfineError> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    let landlock = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    // Landlock confines the calling thread and those it starts later, not threads already
    // running: this runs before the frontend starts any.
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads > 1 {
        return Err(ConfineError::Landlock(format!(
            "{threads} threads are running already; landlock would confine only one"
        )));
    }
    let all = AccessFs::from_all(ABI::V5);
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let write: BitFlags<AccessFs> = AccessFs::WriteFile.into();
    let mut writable: Vec<std::path::PathBuf> = Vec::new();
    let shm = layout.state_dir.join("db/db.sqlite-shm");
    if shm.is_file() {
        writable.push(shm);
    }
    if !audit_log.is_empty() {
        if let Some(dir) = std::path::Path::new(audit_log).parent() {
            if dir.is_dir() {
                writable.push(dir.to_path_buf());
            }
        }
    }
    let status = Ruleset::default()
        .handle_access(all)
        .map_err(landlock)?
        .create()
        .map_err(landlock)?
        .add_rules(path_beneath_rules(["/"], read))
        .map_err(landlock)?
        .add_rules(path_beneath_rules(&writable, write))
        .map_err(landlock)?
        .restrict_self()
        .map_err(landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced".into(),
        RulesetStatus::PartiallyEnforced => "enforced with the kernel's older landlock abi".into(),
        RulesetStatus::NotEnforced => "not enforced (kernel without landlock)".into(),
    })
}

/// Debug (test) builds only: with `WARD_TEST_CONFINEMENT_PROBE` set, the confined frontend
/// tries what it must not be able to do and logs each outcome (`tests/tests/confinement.rs`).
#[cfg(all(target_os = "linux", debug_assertions))]
pub fn probe_confinement(layout: &StoreLayout) {
    if std::env::var_os("WARD_TEST_CONFINEMENT_PROBE").is_none() {
        return;
    }
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "ALLOWED".to_owned(),
        Err(e) => format!("denied ({e})"),
    };
    let store = outcome(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(layout.real_store_dir.join("ward-confinement-probe"))
            .map(|_| ()),
    );
    let db = outcome(
        std::fs::OpenOptions::new()
            .write(true)
            .open(layout.state_dir.join("db/db.sqlite"))
            .map(|_| ()),
    );
    let exec = outcome(std::process::Command::new("/bin/true").status().map(|_| ()));
    // A harmless call that no deny-list would name, and the allow-list does not hold.
    let unlisted = outcome(
        rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::CLOEXEC)
            .map(drop)
            .map_err(std::io::Error::from),
    );
    tracing::warn!(
        "confinement probe: write store: {store}; write db: {db}; exec: {exec}; unlisted \
         call: {unlisted}"
    );
}

/// Not Linux: refuses (see the module's documentation).
#[cfg(not(target_os = "linux"))]
pub fn confine_frontend(_layout: &StoreLayout) -> Result<(), ConfineError> {
    Err(ConfineError::Unsupported)
}
