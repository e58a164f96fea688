//! `post-build-hook`: after a build's outputs are registered, the broker runs the daemon's
//! hook as an unprivileged user (see the broker's `hooks.rs`); here its output is shown to
//! the client as Nix shows it (an `actPostBuildHook` activity with `resPostBuildLogLine`
//! results) and its exit status decides the build's result, as in Nix: a failing hook fails
//! the build, whose outputs stay valid.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::{info, warn};

use ward_proto::ipc::broker::BuildOutcome;
use ward_proto::ipc::BuildId;
use ward_proto::store_path::StorePath;

use crate::broker_client::BrokerClient;
use crate::server::Shared;

use super::goal::{cancelled, BuildCtx, LogEvent};

/// Longest hook output line kept whole; longer ones are split.
const MAX_LINE: usize = 64 * 1024;
/// How long the hook's output is still read after the hook exited (a process it left behind
/// may hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

async fn send(ctx: &BuildCtx, event: LogEvent) {
    if let Some(log) = &ctx.log {
        let _ = log.send(event).await;
    }
}

/// Runs the daemon's post-build hook for `drv_path`'s `outputs` and waits for it. `Ok` when
/// no hook is configured or it succeeded; `Err` with Nix's wording otherwise.
pub async fn run_post_build_hook(
    shared: &Arc<Shared>,
    broker: &BrokerClient,
    ctx: &BuildCtx,
    build: BuildId,
    drv_path: &StorePath,
    outputs: BTreeSet<StorePath>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    // The daemon's hook, never a client's: the broker runs only the one of its nix.conf.
    let hook = shared.settings().post_build_hook.clone();
    if hook.is_empty() {
        return Ok(());
    }
    let drv_shown = shared.store.store_dir().print(drv_path);
    let (pipe, user, mut finished) = broker
        .run_post_build_hook(build, drv_path.clone(), outputs)
        .await
        .map_err(|e| format!("cannot run the post-build-hook for '{drv_shown}': {e}"))?;
    info!(%build, hook, user, "post-build-hook started");
    let activity = shared.builds.next_activity();
    send(
        ctx,
        LogEvent::HookStart {
            activity,
            hook: hook.clone(),
            drv: drv_shown.clone(),
        },
    )
    .await;
    let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).ok();
    let mut buf = vec![0u8; 16 * 1024];
    let mut line = Vec::new();
    let mut outcome: Option<BuildOutcome> = None;
    let mut cancel_sent = false;
    let drain_deadline = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    tokio::pin!(drain_deadline);
    loop {
        if reader.is_none() && outcome.is_some() {
            break;
        }
        tokio::select! {
            read = async { reader.as_mut().expect("reader").read(&mut buf).await }, if reader.is_some() => {
                match read {
                    Ok(0) | Err(_) => reader = None,
                    Ok(n) => {
                        for &byte in &buf[..n] {
                            if byte == b'\n' || line.len() >= MAX_LINE {
                                let text = std::mem::take(&mut line);
                                send(ctx, LogEvent::HookLine { activity, line: text }).await;
                            }
                            if byte != b'\n' {
                                line.push(byte);
                            }
                        }
                    }
                }
            }
            done = &mut finished, if outcome.is_none() => {
                outcome = Some(done.unwrap_or(BuildOutcome::Cancelled {
                    reason: ward_proto::ipc::broker::CancelReason::Client,
                }));
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = &mut drain_deadline, if outcome.is_some() => reader = None,
            _ = cancelled(cancel), if !cancel_sent => {
                broker.cancel_post_build_hook(build);
                cancel_sent = true;
            }
        }
    }
    if !line.is_empty() {
        send(ctx, LogEvent::HookLine { activity, line }).await;
    }
    send(ctx, LogEvent::Stop { activity }).await;
    match outcome.expect("the loop ends with an outcome") {
        BuildOutcome::Exited { code: 0 } => Ok(()),
        BuildOutcome::Exited { code } => {
            Err(format!("program '{hook}' failed with exit code {code}"))
        }
        BuildOutcome::Signalled { signal } => {
            Err(format!("program '{hook}' failed due to signal {signal}"))
        }
        other => {
            warn!(%build, ?other, "post-build-hook did not finish");
            Err(format!(
                "the post-build-hook '{hook}' of '{drv_shown}' was cancelled"
            ))
        }
    }
}
