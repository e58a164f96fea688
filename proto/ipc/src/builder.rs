//! Broker ⇄ builder: the sandbox a build runs in.
//!
//! The broker fork+execs the builder program (a fresh address space) with one end of a
//! socketpair, sends exactly one [`BrokerToBuilder::Spec`], and waits. The builder applies the
//! spec in the order of [`SetupStep`] and execs the derivation's builder. The socket is
//! close-on-exec, so end-of-file without a message means the exec succeeded; on any failure the
//! builder sends one [`BuilderToBroker::SetupFailed`] and exits.
//!
//! Unlike the frontend's requests, the spec is written by the broker from its own
//! configuration plus a [`super::broker::BuildRequest`] it has already checked, so the builder
//! trusts its sender; it still refuses values that cannot be applied safely (relative paths,
//! NUL bytes) rather than misapply them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::broker::BuildDirFile;
use super::{BuildId, IpcMessage};
use crate::store_path::StorePath;

/// A host path made visible inside the sandbox (`sandbox-paths`, chosen by the broker's
/// configuration only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: String,
    /// Absolute path inside the sandbox.
    pub target: String,
    /// Skip silently if `source` does not exist (`sandbox-paths` entries ending in `?`).
    pub optional: bool,
}

/// Everything the builder applies, in one message.
///
/// Descriptors the broker places before exec (not passed in the frame): 0 = `/dev/null`,
/// 1 and 2 = the write end of the build's log pipe, 3 = this channel, 4 = the build's own
/// directory (`O_DIRECTORY`, owned by the build user, mode 0700, inside the broker's root-owned
/// 0700 builds directory, so the builder can reach it only through this handle). The broker
/// has already switched to the build user (groups cleared, gid, uid) before exec: the builder
/// never runs as root.
///
/// Inside the build directory the builder creates `build/` (the build directory proper, seen
/// as [`SandboxSpec::sandbox_build_dir`]), `store/` (the sandbox's store directory: input mount
/// points and the outputs the build writes) and `root/` (the chroot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The build, for the process title and logs.
    pub build: BuildId,
    /// The derivation, for the process title.
    pub drv_path: StorePath,
    /// The logical store directory seen inside the sandbox, e.g. `/nix/store`.
    pub store_dir: String,
    /// The physical store directory on the host (differs for chroot stores); inputs are bound
    /// from here, and without a chroot the outputs are written here.
    pub real_store_dir: String,
    /// Where the build directory appears inside the sandbox (`/build`).
    pub sandbox_build_dir: String,
    /// The build directory's host path, used only without a chroot: environment values equal
    /// to [`SandboxSpec::sandbox_build_dir`] are replaced by it.
    pub host_build_dir: String,
    /// The uid the build sees itself as inside its user namespace (1000, as in Nix).
    pub sandbox_uid: u32,
    /// The gid the build sees itself as (100, as in Nix).
    pub sandbox_gid: u32,
    /// Build in namespaces with a chroot (`sandbox = true`, or `relaxed` without
    /// `__noChroot`). When false the builder runs on the host file system (still as the build
    /// user, with seccomp, landlock and no_new_privs), writing its outputs into the real store
    /// directory — or, with [`SandboxSpec::private_store`], into its own view of it.
    pub chroot: bool,
    /// Without a chroot, in a multi-user store the build user may not write the real store
    /// (only the store-writer does): the builder then makes a user and mount namespace in
    /// which the store directory is the build's `store/` (its inputs bound in read-only, its
    /// outputs written there and collected from there, as with a chroot) and the build
    /// directory is reachable at [`SandboxSpec::host_build_dir`]. Set by a broker running as
    /// root; a single-user daemon's builds write the store they own directly.
    pub private_store: bool,
    /// The build gets the network (fixed-output builds). Without it the build gets a network
    /// namespace of its own with only loopback. With it and a
    /// [`SandboxSpec::network_helper`], a namespace of its own reaching the network through
    /// that helper; otherwise it keeps the host's network namespace, and the seccomp filter
    /// refuses `socket(AF_UNIX, ...)`, so the build cannot reach the host's abstract unix
    /// sockets (attacks A3, A10) or any socket path; the mount namespace hides the daemon's
    /// sockets.
    pub network: bool,
    /// With [`SandboxSpec::network`] and a chroot: slirp4netns (an absolute host path, from
    /// the broker's configuration). The build then gets a network namespace of its own,
    /// connected to the host's network by slirp4netns running as the build user outside the
    /// sandbox, with the host's loopback addresses refused; it sees none of the host's
    /// interfaces or abstract sockets, and `AF_UNIX` sockets are allowed again. `None`: the
    /// build keeps the host's network namespace, as described above.
    pub network_helper: Option<String>,
    /// Store paths bind-mounted read-only into the sandbox's store directory.
    pub input_paths: BTreeSet<StorePath>,
    /// Store paths the build may create.
    pub output_paths: BTreeSet<StorePath>,
    /// Extra host paths, from the broker's configuration.
    pub bind_mounts: Vec<BindMount>,
    /// Files to create in the build directory before exec (with `O_EXCL | O_NOFOLLOW`,
    /// relative to the build directory's handle).
    pub build_dir_files: Vec<BuildDirFile>,
    /// The program to exec, an absolute path inside the sandbox.
    pub builder: String,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Its complete environment.
    pub env: BTreeMap<String, String>,
    /// Install the seccomp filters (`filter-syscalls`, on unless the broker's configuration
    /// turns it off): an allow-list whose default is `ENOSYS`, and the denials of setuid and
    /// setgid mode bits (`EPERM`) and of extended attributes (`ENOTSUP`).
    pub filter_syscalls: bool,
    /// Leave `no_new_privs` unset (`allow-new-privileges`; off by default).
    pub allow_new_privileges: bool,
    /// The broker runs as root and cleared every supplementary group before exec: the builder
    /// refuses to go on if any remains. A single-user daemon run by an ordinary user cannot
    /// drop that user's own groups (they grant the build nothing the user could not do), so
    /// its broker sends `false`.
    pub groups_cleared: bool,
    /// Instead of exec'ing `builder`, inspect the finished sandbox from inside and send
    /// [`BuilderToBroker::CanaryReport`] (the broker's start-up check).
    pub canary: bool,
    /// The `size=` of the sandbox's tmpfs mounts (`/dev/shm`, `/tmp`, and the chroot's root),
    /// from `sandbox-dev-shm-size`: what a build can fill of the host's memory through them.
    /// Checked by [`valid_tmpfs_size`].
    pub tmpfs_size: String,
}

/// Whether `size` is a tmpfs `size=` value: digits, then at most one of `k`, `m`, `g` (either
/// case) or `%`. Nothing else may reach a mount's option string.
pub fn valid_tmpfs_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    !digits.is_empty()
        && size.len() - digits.len() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// What `ward-builder collect` serialises: the outputs of a finished build.
///
/// Descriptors placed by the broker before exec: 3 = this channel, 4 = the build's directory
/// (as for [`SandboxSpec`]), 5, 6, ... = the write ends of one pipe per entry of
/// [`CollectSpec::outputs`], in order. The broker has switched to the build user before exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectSpec {
    /// The build, for logs.
    pub build: BuildId,
    /// The outputs to serialise, in the order of the pipes.
    pub outputs: Vec<StorePath>,
    /// Read the outputs from the real store directory (builds without a chroot) instead of the
    /// build's `store/`.
    pub from_real_store: bool,
    /// The physical store directory on the host.
    pub real_store_dir: String,
    /// Every entry must be owned by this uid (the build user).
    pub owner_uid: u32,
}

/// What a canary build saw from inside its sandbox, just before it would have exec'd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// `/proc/self/uid_map`, as read.
    pub uid_map: String,
    /// `/proc/self/gid_map`, as read.
    pub gid_map: String,
    /// The effective capability set (`CapEff` of `/proc/self/status`).
    pub cap_eff: u64,
    /// `NoNewPrivs` of `/proc/self/status`.
    pub no_new_privs: bool,
    /// `Seccomp` of `/proc/self/status` (0 none, 2 filter).
    pub seccomp_mode: u32,
    /// The landlock ABI applied, or `None` where the kernel has no landlock.
    pub landlock_abi: Option<i32>,
    /// Mount points (`/proc/self/mounts`, the second field of each line).
    pub mounts: Vec<String>,
    /// Network interfaces (`/proc/net/dev`).
    pub net_devices: Vec<String>,
    /// The host name.
    pub hostname: String,
    /// The real, effective and saved uids as the build sees them.
    pub uids: [u32; 3],
    /// Supplementary groups as the build sees them.
    pub groups: Vec<u32>,
}

/// Messages from the broker to a builder. Only the broker sends these, once per builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerToBuilder {
    /// To `ward-builder build`: the sandbox to build and the program to exec in it. No
    /// descriptors in the frame (they are placed before exec, see [`SandboxSpec`]).
    Spec(Box<SandboxSpec>),
    /// To `ward-builder collect`: the outputs to serialise (see [`CollectSpec`]).
    Collect(Box<CollectSpec>),
}

impl IpcMessage for BrokerToBuilder {
    const NAME: &'static str = "BrokerToBuilder";
    const TAG: [u8; 4] = *b"BR>B";

    fn fd_count(&self) -> usize {
        0
    }

    fn variant_name(&self) -> &'static str {
        match self {
            BrokerToBuilder::Spec(_) => "Spec",
            BrokerToBuilder::Collect(_) => "Collect",
        }
    }
}

/// The builder's steps, in the order it takes them; a failure names the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetupStep {
    /// Reading and checking the spec.
    ReadSpec,
    /// `unshare` of user, mount, pid, network, ipc and uts namespaces.
    Namespaces,
    /// Writing uid/gid maps.
    IdMaps,
    /// Building the mount tree: store paths, build directory, /dev, /proc, bind mounts.
    MountTree,
    /// `pivot_root` into it.
    PivotRoot,
    /// Loopback and hostname.
    Network,
    /// Writing /etc/passwd, /etc/group and the build directory's files.
    Files,
    /// Dropping supplementary groups, gid and uid.
    DropPrivileges,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Landlock rules.
    Landlock,
    /// The seccomp filter.
    Seccomp,
    /// Dropping every capability.
    Capabilities,
    /// `execve` of the derivation's builder.
    Exec,
}

/// Messages from a builder to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuilderToBroker {
    /// Sent by the builder when a step failed, then it exits; the derivation's builder never
    /// ran. The broker reports it as [`super::broker::BuildOutcome::SetupFailed`] and trusts
    /// nothing in it beyond logging it (a failed builder may be in any state).
    SetupFailed {
        /// The step.
        step: SetupStep,
        /// The OS error or reason.
        message: String,
    },
    /// Sent by a canary builder ([`SandboxSpec::canary`]) instead of exec'ing; it then exits.
    /// The broker compares it with the policy it configured.
    CanaryReport(Box<SandboxReport>),
    /// Sent by `ward-builder collect` once every output was walked and found registrable;
    /// it then writes the NARs. The broker's reply to `CollectOutputs` waits for this.
    Collected,
    /// Sent by `ward-builder collect` when an output cannot be registered; it then exits
    /// without writing any NAR.
    CollectRefused {
        /// The output's base name.
        output: String,
        /// What is wrong, naming the file inside the output.
        reason: String,
    },
}

impl IpcMessage for BuilderToBroker {
    const NAME: &'static str = "BuilderToBroker";
    const TAG: [u8; 4] = *b"B>BR";

    fn fd_count(&self) -> usize {
        0
    }

    fn variant_name(&self) -> &'static str {
        match self {
            BuilderToBroker::SetupFailed { .. } => "SetupFailed",
            BuilderToBroker::CanaryReport(_) => "CanaryReport",
            BuilderToBroker::Collected => "Collected",
            BuilderToBroker::CollectRefused { .. } => "CollectRefused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{encode_frame, read_frame, FrameLimit};
    use super::super::{Channel, FrontendToBroker, IpcError};
    use super::*;

    fn spec() -> SandboxSpec {
        let p = |b: &str| StorePath::from_base_name(b).unwrap();
        SandboxSpec {
            build: BuildId(5),
            drv_path: p("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
            store_dir: "/nix/store".into(),
            real_store_dir: "/home/u/store/nix/store".into(),
            sandbox_build_dir: "/build".into(),
            host_build_dir: "/nix/var/nix/ward/builds/5-hello/build".into(),
            sandbox_uid: 1000,
            sandbox_gid: 100,
            chroot: true,
            private_store: false,
            network: false,
            network_helper: None,
            input_paths: [p("ab3li50xq0nl4q5lxdyinb8w8y13my9s-bash")].into(),
            output_paths: [p("0c7kkqq2a2r9d0a1g3g0h3sgx8rz3i5f-hello")].into(),
            bind_mounts: vec![BindMount {
                source: "/bin/sh".into(),
                target: "/bin/sh".into(),
                optional: true,
            }],
            build_dir_files: vec![BuildDirFile {
                name: "a".into(),
                contents: vec![1, 2],
            }],
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi > $out".into()],
            env: [("out".to_string(), "/nix/store/0c7k-hello".to_string())].into(),
            filter_syscalls: true,
            allow_new_privileges: false,
            groups_cleared: true,
            canary: false,
            tmpfs_size: "50%".into(),
        }
    }

    #[test]
    fn spec_and_failures_round_trip() {
        let (broker, builder) =
            Channel::<BrokerToBuilder, BuilderToBroker>::pair(FrameLimit::DEFAULT).unwrap();
        let message = BrokerToBuilder::Spec(Box::new(spec()));
        broker.send(&message, &[]).unwrap();
        assert_eq!(builder.recv().unwrap().message, message);
        for step in [SetupStep::ReadSpec, SetupStep::MountTree, SetupStep::Exec] {
            let failure = BuilderToBroker::SetupFailed {
                step,
                message: "EPERM".into(),
            };
            builder.send(&failure, &[]).unwrap();
            assert_eq!(broker.recv().unwrap().message, failure);
        }
        // Exec closes the builder's end: the broker sees a clean close.
        drop(builder);
        assert!(matches!(broker.recv(), Err(IpcError::PeerClosed)));
    }

    #[test]
    fn a_builder_cannot_speak_for_the_frontend() {
        let failure = BuilderToBroker::SetupFailed {
            step: SetupStep::Seccomp,
            message: String::new(),
        };
        let frame = encode_frame(&failure, FrameLimit::DEFAULT).unwrap();
        assert!(matches!(
            read_frame::<_, FrontendToBroker>(&mut &frame[..], FrameLimit::DEFAULT),
            Err(IpcError::WrongTag { .. })
        ));
        let spec_frame = encode_frame(
            &BrokerToBuilder::Spec(Box::new(spec())),
            FrameLimit::DEFAULT,
        )
        .unwrap();
        assert!(matches!(
            read_frame::<_, BuilderToBroker>(&mut &spec_frame[..], FrameLimit::DEFAULT),
            Err(IpcError::WrongTag { .. })
        ));
    }

    #[test]
    fn tmpfs_sizes_are_digits_and_one_unit() {
        for good in ["50%", "16M", "1g", "4096", "512k"] {
            assert!(valid_tmpfs_size(good), "{good}");
        }
        for bad in ["", "0", "%", "16MB", "1,uid=0", "-1", "1 g", "0M"] {
            assert!(!valid_tmpfs_size(bad), "{bad}");
        }
    }
}
