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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The build, for the process title and logs.
    pub build: BuildId,
    /// The derivation, for the process title.
    pub drv_path: StorePath,
    /// The logical store directory seen inside the sandbox, e.g. `/nix/store`.
    pub store_dir: String,
    /// The physical store directory on the host (differs for chroot stores).
    pub real_store_dir: String,
    /// The build directory on the host, created by the broker and owned by the build user.
    pub build_dir: String,
    /// Where the build directory appears inside the sandbox (`/build`).
    pub sandbox_build_dir: String,
    /// The build user's uid (first of the range when `uid_count` > 1).
    pub uid: u32,
    /// The build group's gid.
    pub gid: u32,
    /// How many uids the build gets (1, or 65536 for a uid range).
    pub uid_count: u32,
    /// Share the host's network namespace (fixed-output builds); otherwise loopback only.
    pub network: bool,
    /// Store paths bind-mounted read-only into the sandbox's store directory.
    pub input_paths: BTreeSet<StorePath>,
    /// Store paths the build may create (the sandbox's store directory is writable for them
    /// only).
    pub output_paths: BTreeSet<StorePath>,
    /// Extra host paths, from the broker's configuration.
    pub bind_mounts: Vec<BindMount>,
    /// Files to create in the build directory before exec.
    pub build_dir_files: Vec<BuildDirFile>,
    /// The program to exec, an absolute path inside the sandbox.
    pub builder: String,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Its complete environment.
    pub env: BTreeMap<String, String>,
    /// Install the seccomp filter that denies setuid/setgid mode bits, xattrs and ACLs
    /// (`filter-syscalls`, on unless the broker's configuration turns it off).
    pub filter_syscalls: bool,
    /// Leave `no_new_privs` unset (`allow-new-privileges`; off by default).
    pub allow_new_privileges: bool,
}

/// Messages from the broker to a builder. Only the broker sends these, once per builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerToBuilder {
    /// The only message: the sandbox to build and the program to exec in it. No descriptors
    /// (the log pipe is the builder's stdout and stderr from the broker's fork).
    Spec(Box<SandboxSpec>),
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
            build_dir: "/tmp/ward-build-5".into(),
            sandbox_build_dir: "/build".into(),
            uid: 30001,
            gid: 30000,
            uid_count: 1,
            network: false,
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
}
