//! A seccomp filter that refuses every x32 system call (numbers with bit `0x40000000` on
//! x86_64) with `EPERM`. The daemon's own denylists (frontend, store-writer) name syscalls by
//! their x86_64 numbers, and on a kernel built with the x32 ABI, `execve` under its x32 number
//! would pass them. Calls of the i386 ABI (`int 0x80`) carry another architecture, which
//! seccompiler's arch check in those denylists already refuses. Installed next to them; the
//! kernel applies every filter.

/// `AUDIT_ARCH_X86_64`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// The x32 bit of a syscall number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The filter: on x86_64, x32 numbers get `EPERM`, everything else passes; elsewhere there is
/// no x32, and it lets everything pass.
#[cfg(target_os = "linux")]
pub fn refuse_x32() -> seccompiler::BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    // Offsets in `struct seccomp_data`: nr at 0, arch at 4.
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            insn(LD_W_ABS, 0, 0, 4),
            insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
            insn(LD_W_ABS, 0, 0, 0),
            insn(JSET_K, 0, 1, X32_SYSCALL_BIT),
            insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
            insn(RET_K, 0, 0, RET_ALLOW),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (LD_W_ABS, JEQ_K, JSET_K, RET_ERRNO);
        vec![insn(RET_K, 0, 0, RET_ALLOW)]
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_program_checks_the_arch_then_the_x32_bit() {
        let program = refuse_x32();
        assert_eq!(program.len(), 6);
        assert_eq!(program[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(program[3].k, X32_SYSCALL_BIT);
        assert_eq!(program[4].k, 0x0005_0000 | libc::EPERM as u32);
        assert_eq!(program[5].k, 0x7fff_0000);
    }
}
