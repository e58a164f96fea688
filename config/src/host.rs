//! Facts about the machine that some setting defaults depend on (as in Nix: the system type,
//! the CPU count, whether we run as root, `/dev/kvm`). Detected once, passed in explicitly so
//! that tests can use fixed values.

use std::collections::BTreeSet;

/// Host facts used for setting defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The daemon runs with real uid 0 (then `build-users-group` defaults to `nixbld`).
    pub is_root: bool,
    /// Number of CPUs available (default for `cores`, value of `max-jobs = auto`).
    pub cpu_count: u32,
    /// Nix system type, e.g. `x86_64-linux`.
    pub system: String,
    /// Default for `extra-platforms`.
    pub extra_platforms: BTreeSet<String>,
    /// Default for `system-features`.
    pub system_features: BTreeSet<String>,
    /// Running on WSL1, where SQLite's WAL mode does not work.
    pub is_wsl1: bool,
}

impl HostInfo {
    /// Looks at the running machine.
    pub fn detect() -> HostInfo {
        let system = native_system();
        let is_wsl1 = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim_end().ends_with("-Microsoft"))
            .unwrap_or(false);
        let cpu_flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_kvm = nix::unistd::access(
            "/dev/kvm",
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
        )
        .is_ok();
        HostInfo {
            is_root: nix::unistd::getuid().is_root(),
            cpu_count: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
            extra_platforms: default_extra_platforms(&system, is_wsl1, &cpu_flags),
            system_features: default_system_features(has_kvm),
            system,
            is_wsl1,
        }
    }

    /// A fixed x86_64-linux host for tests: not root, 4 CPUs, no kvm.
    pub fn fixed_for_tests() -> HostInfo {
        HostInfo {
            is_root: false,
            cpu_count: 4,
            system: "x86_64-linux".to_owned(),
            extra_platforms: ["i686-linux".to_owned()].into(),
            system_features: default_system_features(false),
            is_wsl1: false,
        }
    }
}

/// The Nix system type of the machine ward was built for: `<cpu>-<os>` with Nix's spelling.
pub fn native_system() -> String {
    let cpu = match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc64" if cfg!(target_endian = "little") => "powerpc64le",
        other => other,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{cpu}-{os}")
}

/// Nix's default `system-features`: the pseudo-features nixpkgs uses to route builds, plus
/// `kvm` when `/dev/kvm` is usable.
pub fn default_system_features(has_kvm: bool) -> BTreeSet<String> {
    let mut features: BTreeSet<String> = ["nixos-test", "benchmark", "big-parallel"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if has_kvm {
        features.insert("kvm".to_owned());
    }
    features
}

/// Nix's default `extra-platforms`: `i686-linux` on x86_64-linux (not on WSL1), plus the
/// x86-64 micro-architecture levels the CPU supports (`x86_64-v2-linux`, ...), which Nix
/// derives from CPUID; here from the `flags` line of `/proc/cpuinfo`.
pub fn default_extra_platforms(system: &str, is_wsl1: bool, cpuinfo: &str) -> BTreeSet<String> {
    let mut platforms = BTreeSet::new();
    if system == "x86_64-linux" {
        if !is_wsl1 {
            platforms.insert("i686-linux".to_owned());
        }
        for level in x86_64_levels(cpuinfo) {
            platforms.insert(format!("{level}-linux"));
        }
    }
    platforms
}

/// The x86-64 psABI levels (`x86_64-v1` ... `x86_64-v4`) supported according to the first
/// `flags` line of a `/proc/cpuinfo` text, with the feature lists Nix checks.
pub fn x86_64_levels(cpuinfo: &str) -> Vec<&'static str> {
    let Some(flags_line) = cpuinfo.lines().find(|line| line.starts_with("flags")) else {
        return Vec::new();
    };
    let Some((_, flags)) = flags_line.split_once(':') else {
        return Vec::new();
    };
    let flags: BTreeSet<&str> = flags.split_whitespace().collect();
    let has_all = |names: &[&str]| names.iter().all(|name| flags.contains(name));
    let requirements: [(&'static str, &[&str]); 4] = [
        (
            "x86_64-v1",
            &["cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"],
        ),
        (
            "x86_64-v2",
            &[
                "cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2",
            ],
        ),
        ("x86_64-v3", &["avx", "avx2", "f16c", "fma", "abm", "movbe"]),
        (
            "x86_64-v4",
            &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
        ),
    ];
    let mut levels = Vec::new();
    for (level, needed) in requirements {
        if !has_all(needed) {
            break;
        }
        levels.push(level);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3_FLAGS: &str =
        "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr cx8 cmov mmx fxsr sse \
        sse2 pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt avx f16c lahf_lm abm avx2\n";

    #[test]
    fn levels_stop_at_the_first_missing_feature() {
        assert_eq!(
            x86_64_levels(V3_FLAGS),
            ["x86_64-v1", "x86_64-v2", "x86_64-v3"]
        );
        let without_lahf = V3_FLAGS.replace(" lahf_lm", "");
        assert_eq!(x86_64_levels(&without_lahf), ["x86_64-v1"]);
        assert!(x86_64_levels("").is_empty());
        assert!(x86_64_levels("flags without colon").is_empty());
    }

    #[test]
    fn extra_platforms_defaults() {
        let platforms = default_extra_platforms("x86_64-linux", false, V3_FLAGS);
        let expected = [
            "i686-linux",
            "x86_64-v1-linux",
            "x86_64-v2-linux",
            "x86_64-v3-linux",
        ];
        assert_eq!(
            platforms.iter().map(String::as_str).collect::<Vec<_>>(),
            expected
        );
        let wsl = default_extra_platforms("x86_64-linux", true, "");
        assert!(wsl.is_empty());
        assert!(default_extra_platforms("aarch64-linux", false, V3_FLAGS).is_empty());
    }

    #[test]
    fn system_features_defaults() {
        let plain: Vec<String> = default_system_features(false).into_iter().collect();
        assert_eq!(plain, ["benchmark", "big-parallel", "nixos-test"]);
        assert!(default_system_features(true).contains("kvm"));
    }

    #[test]
    fn native_system_has_cpu_and_os() {
        let system = native_system();
        let (cpu, os) = system.split_once('-').expect("cpu-os");
        assert!(!cpu.is_empty() && !os.is_empty());
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            assert_eq!(system, "x86_64-linux");
        }
    }

    #[test]
    fn detect_gives_sane_values() {
        let host = HostInfo::detect();
        assert!(host.cpu_count >= 1);
        assert_eq!(host.system, native_system());
        assert!(host.system_features.contains("benchmark"));
    }
}
