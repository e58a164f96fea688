//! The sandbox's seccomp filters, built with seccompiler for the native architecture.
//!
//! Installed in this order (the kernel runs the newest first; for equal actions the newest
//! filter's errno wins, so the specific denials below override the allow-list's `ENOSYS`):
//!
//! 1. the allow-list ([`crate::syscall_allowlist`]), default `ENOSYS`; `personality` only for
//!    `PER_LINUX` or a query. seccompiler's arch check kills a call from another ABI (i386 via
//!    `int 0x80`); x32 numbers (bit `0x40000000`) are in no table, so they get `ENOSYS`.
//! 2. `EPERM` for setuid/setgid mode bits in `chmod`, `fchmod`, `fchmodat`, `fchmodat2`, for
//!    `clone` with a namespace flag, and (network builds) for `socket`/`socketpair` in
//!    `AF_UNIX`.
//! 3. `ENOTSUP` for every xattr-setting or -removing call.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::syscall_allowlist;

/// `fchmodat2` (Linux 6.6); not in every libc yet.
const SYS_FCHMODAT2: i64 = 452;
/// `setxattrat` and `removexattrat` (Linux 6.13).
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;

fn err(e: impl std::fmt::Display) -> String {
    format!("seccomp: {e}")
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(err)
}

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, value).map_err(err)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(err)
}

/// Rules matching a mode argument with S_ISUID or S_ISGID set.
fn setid_mode_rules(arg: u8) -> Result<Vec<SeccompRule>, String> {
    [libc::S_ISUID, libc::S_ISGID]
        .into_iter()
        .map(|bit| {
            let bit = u64::from(bit);
            rule(vec![cond(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(bit),
                bit,
            )?])
        })
        .collect()
}

/// The three programs, in installation order.
pub fn filters(network: bool) -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;

    // 1. The allow-list.
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = syscall_allowlist::allowed()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    allow.insert(
        libc::SYS_personality,
        vec![
            rule(vec![cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?])?,
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                0xffff_ffff,
            )?])?,
        ],
    );
    let allow_list = SeccompFilter::new(
        allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        SeccompAction::Allow,
        arch,
    )
    .map_err(err)?;

    // 2. EPERM denials.
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    #[cfg(target_arch = "x86_64")]
    eperm.insert(libc::SYS_chmod, setid_mode_rules(1)?);
    eperm.insert(libc::SYS_fchmod, setid_mode_rules(1)?);
    eperm.insert(libc::SYS_fchmodat, setid_mode_rules(2)?);
    eperm.insert(SYS_FCHMODAT2, setid_mode_rules(2)?);
    let namespaces = libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    let clone_rules = (0..32)
        .map(|bit| 1u64 << bit)
        .filter(|flag| u64::from(namespaces.unsigned_abs()) & flag != 0)
        .map(|flag| {
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    eperm.insert(libc::SYS_clone, clone_rules);
    if network {
        let unix = u64::from(libc::AF_UNIX.unsigned_abs());
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            eperm.insert(
                nr,
                vec![rule(vec![cond(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    unix,
                )?])?],
            );
        }
    }
    let eperm = SeccompFilter::new(
        eperm,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(err)?;

    // 3. ENOTSUP for xattrs.
    let xattr: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        SYS_SETXATTRAT,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
        SYS_REMOVEXATTRAT,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    let xattr = SeccompFilter::new(
        xattr,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOTSUP.unsigned_abs()),
        arch,
    )
    .map_err(err)?;

    [allow_list, eperm, xattr]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(err))
        .collect()
}

/// Installs the programs on the calling thread (the builder is single-threaded here).
pub fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::ForkResult;

    use super::*;
    use crate::sys;

    #[test]
    fn the_filters_compile() {
        assert_eq!(filters(false).unwrap().len(), 3);
        assert_eq!(filters(true).unwrap().len(), 3);
    }

    /// Runs checks in a forked child under the filters; returns the child's exit code, which
    /// is the number of the first failed check (0 = all passed).
    fn in_filtered_child(network: bool, path: &std::ffi::CStr) -> i32 {
        let programs = filters(network).unwrap();
        match sys::fork_for_test().unwrap() {
            ForkResult::Child => {
                let neg = |errno: i32| -i64::from(errno);
                let _ = rustix::thread::set_no_new_privs(true);
                if install(&programs).is_err() {
                    sys::exit_now(100);
                }
                // syscall() returns -1 and sets errno; read it back.
                let call = |nr: i64, a: i64, b: i64, c: i64| -> i64 {
                    let rc = sys::raw_syscall3(nr, a, b, c);
                    if rc < 0 {
                        neg(nix::errno::Errno::last_raw())
                    } else {
                        rc
                    }
                };
                // 1. x32 getpid: ENOSYS.
                if call(0x4000_0000 | libc::SYS_getpid, 0, 0, 0) != neg(libc::ENOSYS) {
                    sys::exit_now(1);
                }
                // 2. an ordinary call works.
                if call(libc::SYS_getpid, 0, 0, 0) <= 0 {
                    sys::exit_now(2);
                }
                // 3. chmod u+s: EPERM; plain chmod works.
                let rc = sys::raw_chmod(path, 0o4755);
                if rc != -1 || nix::errno::Errno::last_raw() != libc::EPERM {
                    sys::exit_now(3);
                }
                if sys::raw_chmod(path, 0o755) != 0 {
                    sys::exit_now(4);
                }
                // 5. setxattr: ENOTSUP.
                let rc = sys::raw_setxattr(path);
                if rc != -1 || nix::errno::Errno::last_raw() != libc::ENOTSUP {
                    sys::exit_now(5);
                }
                // 6. mount: ENOSYS.
                if call(libc::SYS_mount, 0, 0, 0) != neg(libc::ENOSYS) {
                    sys::exit_now(6);
                }
                // 7. unshare: ENOSYS; clone with CLONE_NEWUSER: EPERM.
                if call(libc::SYS_unshare, i64::from(libc::CLONE_NEWUSER), 0, 0)
                    != neg(libc::ENOSYS)
                {
                    sys::exit_now(7);
                }
                if call(libc::SYS_clone, i64::from(libc::CLONE_NEWUSER), 0, 0) != neg(libc::EPERM) {
                    sys::exit_now(8);
                }
                // 9. setuid: ENOSYS.
                if call(libc::SYS_setresuid, -1, -1, -1) != neg(libc::ENOSYS) {
                    sys::exit_now(9);
                }
                // 10. AF_UNIX sockets: EPERM for network builds only.
                let rc = call(
                    libc::SYS_socket,
                    i64::from(libc::AF_UNIX),
                    i64::from(libc::SOCK_STREAM),
                    0,
                );
                if network && rc != neg(libc::EPERM) {
                    sys::exit_now(10);
                }
                if !network && rc < 0 {
                    sys::exit_now(11);
                }
                // 12. personality: PER_LINUX allowed, others ENOSYS.
                if call(libc::SYS_personality, 0xffff_ffff, 0, 0) < 0 {
                    sys::exit_now(12);
                }
                if call(libc::SYS_personality, 0x0040000, 0, 0) != neg(libc::ENOSYS) {
                    sys::exit_now(13);
                }
                sys::exit_now(0)
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("filtered child: {other:?}"),
            },
        }
    }

    #[test]
    fn the_filters_deny_what_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        assert_eq!(in_filtered_child(false, &path), 0, "offline filters");
        assert_eq!(in_filtered_child(true, &path), 0, "network filters");
    }
}
