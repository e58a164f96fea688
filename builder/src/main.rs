//! ward-builder: sets up one build sandbox and execs the derivation builder (`build`), or
//! checks and serialises a finished build's outputs (`collect`).
//!
//! Exec'd by the broker, already as the build user, with these descriptors:
//!
//! * `build`: 0 = /dev/null, 1 and 2 = the build log pipe, 3 = the channel (one
//!   `BrokerToBuilder::Spec`), 4 = the build's own directory (`O_DIRECTORY`).
//! * `collect`: 3 = the channel (one `BrokerToBuilder::Collect`), 4 = the build's directory,
//!   5, 6, ... = the write ends of one pipe per output, in the spec's order.
//!
//! Exit status: 0 on success (for `build`, the exec replaced us; a canary reports and exits
//! 0), 1 after a `SetupFailed` / `CollectRefused` / a failed write, 2 on a usage error. In
//! sandboxed builds the process the broker started waits for pid 1 of the build's pid
//! namespace and exits with its status (128 + signal when it was killed).

mod collect;
mod net;
mod sandbox;
mod seccomp;
mod spec;
mod sys;
mod syscall_allowlist;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use ward_ipc::builder::{BrokerToBuilder, BuilderToBroker, SetupStep};
use ward_ipc::frame::MAX_FRAME_LEN_CEILING;
use ward_ipc::{BuilderBrokerChannel, FrameLimit};

/// The channel to the broker.
pub const FD_CHANNEL: i32 = 3;
/// The build's directory.
pub const FD_TOP: i32 = 4;
/// The first output pipe of `collect`.
pub const FD_FIRST_PIPE: i32 = 5;

fn usage() -> ! {
    eprintln!("usage: ward-builder build|collect (exec'd by the ward broker with its descriptors in place)");
    std::process::exit(2)
}

fn open_channel() -> BuilderBrokerChannel {
    let fd = match sys::take_inherited_fd(FD_CHANNEL) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("ward-builder: descriptor {FD_CHANNEL} (the broker channel): {e}");
            std::process::exit(2)
        }
    };
    let limit = FrameLimit::new(MAX_FRAME_LEN_CEILING).unwrap_or(FrameLimit::DEFAULT);
    BuilderBrokerChannel::new(UnixStream::from(fd), limit)
}

fn setup_failed(channel: &BuilderBrokerChannel, step: SetupStep, message: String) -> ! {
    eprintln!("ward-builder: {step:?}: {message}");
    let _ = channel.send(&BuilderToBroker::SetupFailed { step, message }, &[]);
    std::process::exit(1)
}

fn take_top(channel: &BuilderBrokerChannel, step: SetupStep) -> OwnedFd {
    sys::take_inherited_fd(FD_TOP).unwrap_or_else(|e| {
        setup_failed(
            channel,
            step,
            format!("descriptor {FD_TOP} (the build directory): {e}"),
        )
    })
}

fn build() -> ! {
    let channel = open_channel();
    // Nothing the broker leaked past 4 may reach the build.
    if let Err(e) = sys::cloexec_fds_from(FD_TOP + 1) {
        setup_failed(
            &channel,
            SetupStep::ReadSpec,
            format!("close_range(5.., CLOEXEC): {e}"),
        );
    }
    let top = take_top(&channel, SetupStep::ReadSpec);
    let spec = match channel.recv() {
        Ok(received) => match received.message {
            BrokerToBuilder::Spec(spec) => spec,
            BrokerToBuilder::Collect(_) => setup_failed(
                &channel,
                SetupStep::ReadSpec,
                "expected a Spec, got a Collect request".into(),
            ),
        },
        Err(e) => setup_failed(
            &channel,
            SetupStep::ReadSpec,
            format!("reading the spec: {e}"),
        ),
    };
    match sandbox::run(&channel, top, *spec) {
        Ok(never) => match never {},
        Err(failure) => setup_failed(&channel, failure.step, failure.message),
    }
}

fn collect() -> ! {
    let channel = open_channel();
    let top = take_top(&channel, SetupStep::ReadSpec);
    let spec = match channel.recv() {
        Ok(received) => match received.message {
            BrokerToBuilder::Collect(spec) => spec,
            BrokerToBuilder::Spec(_) => {
                eprintln!("ward-builder collect: expected a Collect request, got a Spec");
                std::process::exit(1)
            }
        },
        Err(e) => {
            eprintln!("ward-builder collect: reading the request: {e}");
            std::process::exit(1)
        }
    };
    let mut pipes = Vec::with_capacity(spec.outputs.len());
    for i in 0..spec.outputs.len() {
        let fd = FD_FIRST_PIPE + i32::try_from(i).unwrap_or(i32::MAX - FD_FIRST_PIPE);
        match sys::take_inherited_fd(fd) {
            Ok(pipe) => pipes.push(pipe),
            Err(e) => {
                eprintln!("ward-builder collect: descriptor {fd} (pipe of output {i}): {e}");
                std::process::exit(1)
            }
        }
    }
    let refuse = |output: String, reason: String| -> ! {
        let _ = channel.send(&BuilderToBroker::CollectRefused { output, reason }, &[]);
        std::process::exit(1)
    };
    let base = match collect::open_base(&spec, &top) {
        Ok(base) => base,
        Err(e) => {
            let output = spec
                .outputs
                .first()
                .map(|o| o.base_name().to_string())
                .unwrap_or_default();
            refuse(
                output,
                format!("cannot open the directory holding the outputs: {e}"),
            )
        }
    };
    drop(top);
    let checked = match collect::check(&spec, &base) {
        Ok(checked) => checked,
        Err(refusal) => refuse(refusal.output, refusal.reason),
    };
    if channel.send(&BuilderToBroker::Collected, &[]).is_err() {
        std::process::exit(1);
    }
    let ok = collect::write_nars(&spec, &base, checked, pipes);
    std::process::exit(if ok { 0 } else { 1 })
}

fn main() {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("build"), None) => build(),
        (Some("collect"), None) => collect(),
        _ => usage(),
    }
}
