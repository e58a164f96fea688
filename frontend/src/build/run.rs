//! Running one build: the broker starts it, the frontend follows its log, the store-writer
//! registers what the build user's collector serialised.
//!
//! The log pipe is read here and nowhere else: each line goes to the client that started the
//! goal (as a `resBuildLogLine` result of its `actBuild` activity), the last `log-lines` lines
//! are kept for the error message, and the bytes stream into the store-writer's `AddBuildLog`
//! through a bounded pipe, so a builder writing gigabytes costs the frontend a fixed amount of
//! memory. `max-build-log-size` and `max-silent-time` are enforced here (the broker enforces
//! `timeout`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use ward_proto::derivation::{Derivation, DerivationOutput};
use ward_proto::ipc::broker::{BuildOutcome, BuildRequest, CancelReason};
use ward_proto::ipc::store_writer::{
    FrontendToStoreWriter, OutputChecks, OutputKind, RegisterMode,
};
use ward_proto::store_path::StorePath;
use ward_proto::worker::types::{BuildMode, BuildStatus as S};

use crate::broker_client::{BrokerClient, BuildStartError, Finished};
use crate::server::Shared;
use crate::writer_client::{ClientError, WriterClient};

use super::env::{self, EnvRequest};
use super::goal::{cancelled, BuildCtx, GoalResult, LogEvent};

/// How long a build waits for the store-writer's channel.
const WRITER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest log line kept whole; longer ones are split.
const MAX_LINE: usize = 64 * 1024;

/// Everything a build needs, decided by the goal.
#[derive(Debug)]
pub struct BuildPlan {
    /// The derivation's path.
    pub drv_path: StorePath,
    /// The derivation.
    pub drv: Derivation,
    /// Output name → path.
    pub outputs: BTreeMap<String, StorePath>,
    /// Every path the build may see.
    pub input_closure: BTreeSet<StorePath>,
    /// Normal, check or repair.
    pub mode: BuildMode,
    /// Nix's name of the goal, for timeouts ("building of '...' from .drv file").
    pub name: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn send_log(ctx: &BuildCtx, event: LogEvent) {
    if let Some(log) = &ctx.log {
        let _ = log.send(event).await;
    }
}

/// Runs `plan`'s build (waiting for a build slot first) and registers its outputs.
pub async fn run_build(
    shared: &Arc<Shared>,
    plan: BuildPlan,
    ctx: &BuildCtx,
    mut cancel: watch::Receiver<bool>,
) -> GoalResult {
    let store_dir = shared.store.store_dir().clone();
    let drv_shown = store_dir.print(&plan.drv_path);
    let Some(broker) = shared.broker.clone() else {
        return GoalResult::failed(
            S::MiscFailure,
            format!("cannot build '{drv_shown}': this daemon was started without a broker"),
        );
    };
    if ctx.settings.max_jobs == 0 {
        return GoalResult::failed(
            S::MiscFailure,
            "unable to start any build; either increase '--max-jobs' or enable remote builds.\n\
             https://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html",
        );
    }
    let options = match env::drv_options(&plan.drv) {
        Ok(o) => o,
        Err(e) => {
            return GoalResult::failed(S::MiscFailure, format!("derivation '{drv_shown}': {e}"))
        }
    };
    // System and features, as Nix words the refusal.
    let settings = &ctx.settings;
    let builtin = plan.drv.builder.starts_with(b"builtin:");
    let system_ok = plan.drv.platform == settings.system
        || settings.extra_platforms.contains(&plan.drv.platform)
        || (builtin && plan.drv.platform == "builtin");
    let features_ok = options
        .required_system_features
        .iter()
        .all(|f| settings.system_features.contains(f));
    if !system_ok || !features_ok {
        let required: Vec<&str> = options
            .required_system_features
            .iter()
            .map(String::as_str)
            .collect();
        let have: Vec<&str> = settings
            .system_features
            .iter()
            .map(String::as_str)
            .collect();
        return GoalResult::failed(
            S::InputRejected,
            format!(
                "a '{}' with features {{{}}} is required to build '{drv_shown}', but I am a '{}' with features {{{}}}",
                plan.drv.platform,
                required.join(", "),
                settings.system,
                have.join(", ")
            ),
        );
    }
    if builtin {
        return GoalResult::failed(
            S::MiscFailure,
            format!(
                "cannot build '{drv_shown}': the builtin builder '{}' is not supported by ward yet",
                String::from_utf8_lossy(&plan.drv.builder)
            ),
        );
    }

    // Wait for a slot.
    let permit = tokio::select! {
        p = shared.builds.slot(ctx.uid) => match p {
            Some(p) => p,
            None => return GoalResult::failed(S::MiscFailure, "the daemon is shutting down"),
        },
        _ = cancelled(&mut cancel) => return GoalResult::failed(S::MiscFailure, "build cancelled"),
    };

    let fixed = plan
        .drv
        .derivation_type()
        .map(|t| t.is_fixed())
        .unwrap_or(false);
    let prepared = {
        let daemon_env = |name: &str| std::env::var(name).ok();
        let path_info = |p: &StorePath| shared.store.query_path_info(p).ok().flatten();
        let env_request = EnvRequest {
            drv: &plan.drv,
            store_dir: &store_dir,
            output_paths: &plan.outputs,
            input_closure: &plan.input_closure,
            sandbox_build_dir: &settings.sandbox_build_dir,
            cores: settings.cores,
            daemon_env: &daemon_env,
            path_info: &path_info,
        };
        let read_drv = |p: &StorePath| super::goal::read_derivation(shared, p);
        env::build_environment_with_drvs(&env_request, &read_drv)
            .and_then(|e| env::placeholder_rewrites(&env_request).map(|rewrites| (e, rewrites)))
    };
    let (build_env, rewrites) = match prepared {
        Ok(e) => e,
        Err(e) => {
            return GoalResult::failed(S::MiscFailure, format!("derivation '{drv_shown}': {e}"))
        }
    };
    let text = |bytes: &[u8], what: &str| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("derivation '{drv_shown}': the {what} is not valid UTF-8"))
    };
    let builder = match text(&env::rewrite_bytes(&plan.drv.builder, &rewrites), "builder") {
        Ok(b) => b,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };
    let mut args = Vec::new();
    for a in &plan.drv.args {
        match text(&env::rewrite_bytes(a, &rewrites), "builder's arguments") {
            Ok(a) => args.push(a),
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        }
    }
    let build = shared.builds.next_build_id();
    let request = BuildRequest {
        build,
        drv_path: plan.drv_path.clone(),
        system: plan.drv.platform.clone(),
        builder,
        args,
        env: build_env.env,
        input_paths: plan.input_closure.clone(),
        outputs: plan.outputs.clone(),
        fixed_output: fixed,
        build_dir_files: build_env.files,
        timeout_secs: u64::try_from(settings.timeout).unwrap_or(0),
        no_chroot: options.no_chroot,
        requester_uid: ctx.uid,
    };
    let start_time = now();
    let (log_fd, build_uid, finished) = match broker.start_build(request).await {
        Ok(started) => started,
        Err(BuildStartError::Refused(e)) => {
            return GoalResult::failed(S::MiscFailure, format!("cannot build '{drv_shown}': {e}"))
        }
        Err(e) => {
            return GoalResult::failed(S::MiscFailure, format!("cannot build '{drv_shown}': {e}"))
        }
    };
    info!(%build, build_uid, "build started");
    ward_store::audit::record(
        "build-started",
        serde_json::json!({
            "drv": drv_shown,
            "build_uid": build_uid,
            "uid": ctx.uid,
            "fixed_output": fixed,
        }),
    );
    let activity = shared.builds.next_activity();
    send_log(
        ctx,
        LogEvent::Start {
            activity,
            drv: drv_shown.clone(),
        },
    )
    .await;

    let followed = follow_log(
        shared,
        &broker,
        &plan,
        ctx,
        build,
        log_fd,
        finished,
        activity,
        &mut cancel,
    )
    .await;
    send_log(ctx, LogEvent::Stop { activity }).await;
    let stop_time = now();
    let mut result = match followed.ended {
        Ended::Finished(Finished {
            outcome: BuildOutcome::Exited { code: 0 },
            timings,
        }) => {
            let mut r = register(shared, &broker, &plan, build, &options).await;
            r.cpu_user_micros = Some(timings.cpu_user_micros);
            r.cpu_system_micros = Some(timings.cpu_system_micros);
            r
        }
        Ended::Finished(Finished { outcome, .. }) => {
            let (status, what) = match outcome {
                BuildOutcome::Exited { code } => {
                    (S::PermanentFailure, format!("failed with exit code {code}"))
                }
                BuildOutcome::Signalled { signal } => (
                    S::PermanentFailure,
                    format!("failed due to signal {signal} ({})", signal_name(signal)),
                ),
                BuildOutcome::TimedOut => {
                    let r = GoalResult::failed(
                        S::TimedOut,
                        format!("{} timed out after {} seconds", plan.name, settings.timeout),
                    );
                    release(&broker, build, false).await;
                    return finish(r, start_time, stop_time);
                }
                BuildOutcome::Cancelled { .. } => (S::MiscFailure, "was cancelled".to_string()),
                BuildOutcome::SetupFailed { step, message } => (
                    S::MiscFailure,
                    format!("could not be started: {step:?}: {message}"),
                ),
            };
            let mut msg = format!("builder for '{drv_shown}' {what}");
            if !followed.tail.is_empty() {
                msg.push_str(&format!(";\nlast {} log lines:\n", followed.tail.len()));
                for line in &followed.tail {
                    msg.push_str("> ");
                    msg.push_str(&String::from_utf8_lossy(line));
                    msg.push('\n');
                }
                msg.push_str(&format!("For full logs, run 'nix log {drv_shown}'."));
            }
            GoalResult::failed(status, msg)
        }
        Ended::Stopped(r) => r,
    };
    let keep = settings.keep_failed && !result.succeeded();
    if let Some(kept) = release(&broker, build, keep).await {
        send_log(
            ctx,
            LogEvent::Message(format!("note: keeping build directory '{kept}'")),
        )
        .await;
    }
    drop(permit);
    if result.succeeded() {
        result.times_built = 1;
        // As Nix: after the outputs are registered, before the build counts as done; a
        // failing hook fails the build (its outputs stay valid).
        let outputs = result.outputs.values().cloned().collect();
        if let Err(e) = super::hook::run_post_build_hook(
            shared,
            &broker,
            ctx,
            build,
            &plan.drv_path,
            outputs,
            &mut cancel,
        )
        .await
        {
            let stop = now();
            let mut failed = GoalResult::failed(S::MiscFailure, e);
            failed.times_built = 1;
            return finish(failed, start_time, stop);
        }
    }
    finish(result, start_time, stop_time)
}

fn finish(mut r: GoalResult, start: u64, stop: u64) -> GoalResult {
    r.start_time = start;
    r.stop_time = stop;
    r
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "Killed",
        libc::SIGTERM => "Terminated",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGABRT => "Aborted",
        libc::SIGINT => "Interrupt",
        libc::SIGHUP => "Hangup",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGBUS => "Bus error",
        libc::SIGILL => "Illegal instruction",
        libc::SIGFPE => "Floating point exception",
        _ => "Unknown signal",
    }
}

async fn release(
    broker: &BrokerClient,
    build: ward_proto::ipc::BuildId,
    keep: bool,
) -> Option<String> {
    match broker.release_build(build, keep).await {
        Ok(kept) => kept,
        Err(e) => {
            warn!(%build, "releasing the build: {e}");
            None
        }
    }
}

enum Ended {
    /// The broker reported the end.
    Finished(Finished),
    /// The frontend stopped it (log limit, silence, cancel): the result is decided.
    Stopped(GoalResult),
}

struct Followed {
    ended: Ended,
    tail: VecDeque<Vec<u8>>,
}

#[allow(clippy::too_many_arguments)]
async fn follow_log(
    shared: &Arc<Shared>,
    broker: &BrokerClient,
    plan: &BuildPlan,
    ctx: &BuildCtx,
    build: ward_proto::ipc::BuildId,
    log_fd: OwnedFd,
    mut finished: tokio::sync::oneshot::Receiver<Finished>,
    activity: u64,
    cancel: &mut watch::Receiver<bool>,
) -> Followed {
    let settings = &ctx.settings;
    let keep_lines = usize::try_from(settings.log_lines).unwrap_or(10);
    let mut tail: VecDeque<Vec<u8>> = VecDeque::new();
    let mut pipe = match log_reader(log_fd) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(%build, "reading the build log: {e}");
            None
        }
    };
    // The log goes to the store-writer as it comes, through a bounded in-memory pipe.
    let (mut log_in, log_out) = tokio::io::duplex(64 * 1024);
    let keep_log = settings.keep_build_log;
    let drv_path = plan.drv_path.clone();
    let ipc_dir = shared.ipc_dir.clone();
    let saver = async move {
        if !keep_log {
            let mut sink = log_out;
            let _ = tokio::io::copy(&mut sink, &mut tokio::io::sink()).await;
            return;
        }
        match WriterClient::connect(&ipc_dir, WRITER_TIMEOUT).await {
            Ok(mut writer) => {
                if let Err(e) = writer.add_build_log(drv_path, log_out).await {
                    warn!("storing the build log: {e}");
                }
            }
            Err(e) => warn!("storing the build log: {e}"),
        }
    };
    let max_log = settings.max_build_log_size;
    let silence = u64::try_from(settings.max_silent_time).unwrap_or(0);
    let follower = async {
        let mut line: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut logged: u64 = 0;
        let mut stop: Option<GoalResult> = None;
        let mut result: Option<Finished> = None;
        let mut pipe_open = pipe.is_some();
        let mut cancel_sent = false;
        loop {
            if !pipe_open && result.is_some() {
                break;
            }
            let silence_timer = async {
                if silence == 0 || !pipe_open {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_secs(silence)).await;
            };
            tokio::select! {
                read = async { pipe.as_mut().expect("pipe_open").read(&mut buf).await }, if pipe_open => {
                    let n = match read {
                        Ok(0) | Err(_) => { pipe_open = false; 0 }
                        Ok(n) => n,
                    };
                    if n == 0 {
                        if !line.is_empty() {
                            flush_line(ctx, activity, &mut line, &mut tail, keep_lines).await;
                        }
                        continue;
                    }
                    logged += n as u64;
                    if max_log > 0 && logged > max_log && stop.is_none() {
                        stop = Some(GoalResult::failed(
                            S::LogLimitExceeded,
                            format!("{} killed after writing more than {max_log} bytes of log output", plan.name),
                        ));
                        if !cancel_sent {
                            broker.cancel_build(build, CancelReason::Client);
                            cancel_sent = true;
                        }
                    }
                    if stop.is_some() {
                        continue;
                    }
                    let _ = log_in.write_all(&buf[..n]).await;
                    for &byte in &buf[..n] {
                        if byte == b'\n' {
                            flush_line(ctx, activity, &mut line, &mut tail, keep_lines).await;
                        } else if byte != b'\r' {
                            line.push(byte);
                            if line.len() >= MAX_LINE {
                                flush_line(ctx, activity, &mut line, &mut tail, keep_lines).await;
                            }
                        }
                    }
                }
                f = &mut finished, if result.is_none() => {
                    match f {
                        Ok(f) => result = Some(f),
                        Err(_) => {
                            stop.get_or_insert_with(|| GoalResult::failed(S::MiscFailure, "the broker went away during the build"));
                            break;
                        }
                    }
                }
                _ = silence_timer, if stop.is_none() => {
                    stop = Some(GoalResult::failed(
                        S::TimedOut,
                        format!("{} timed out after {silence} seconds of silence", plan.name),
                    ));
                    broker.cancel_build(build, CancelReason::MaxSilentTime);
                    cancel_sent = true;
                }
                _ = cancelled(cancel), if !cancel_sent => {
                    stop = Some(GoalResult::failed(S::MiscFailure, "build cancelled"));
                    broker.cancel_build(build, CancelReason::Client);
                    cancel_sent = true;
                }
            }
        }
        drop(log_in);
        match (stop, result) {
            (Some(r), _) => Ended::Stopped(r),
            (None, Some(f)) => Ended::Finished(f),
            (None, None) => Ended::Stopped(GoalResult::failed(
                S::MiscFailure,
                "the build ended without a status",
            )),
        }
    };
    let ((), ended) = tokio::join!(saver, follower);
    Followed { ended, tail }
}

async fn flush_line(
    ctx: &BuildCtx,
    activity: u64,
    line: &mut Vec<u8>,
    tail: &mut VecDeque<Vec<u8>>,
    keep: usize,
) {
    let text = std::mem::take(line);
    if keep > 0 {
        if tail.len() == keep {
            tail.pop_front();
        }
        tail.push_back(text.clone());
    }
    send_log(
        ctx,
        LogEvent::Line {
            activity,
            line: text,
        },
    )
    .await;
}

fn log_reader(fd: OwnedFd) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

/// Collects the outputs and has the store-writer register them.
async fn register(
    shared: &Arc<Shared>,
    broker: &BrokerClient,
    plan: &BuildPlan,
    build: ward_proto::ipc::BuildId,
    options: &env::DrvOptions,
) -> GoalResult {
    let store_dir = shared.store.store_dir().clone();
    let drv_shown = store_dir.print(&plan.drv_path);
    let pipes = match broker.collect_outputs(build).await {
        Ok(p) => p,
        Err(BuildStartError::Refused(ward_proto::ipc::broker::BrokerError::OutputRefused {
            output,
            reason,
            ..
        })) => {
            let name = plan
                .outputs
                .iter()
                .find(|(_, p)| p.base_name() == output)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| output.clone());
            let path = format!("{}/{output}", store_dir);
            let msg = if reason.contains("not produced") || reason.contains("does not exist") {
                format!("builder for '{drv_shown}' failed to produce output path for output '{name}' at '{path}'")
            } else {
                format!("output '{path}' of '{drv_shown}' cannot be registered: {reason}")
            };
            return GoalResult::failed(S::OutputRejected, msg);
        }
        Err(e) => {
            return GoalResult::failed(
                S::MiscFailure,
                format!("collecting the outputs of '{drv_shown}': {e}"),
            )
        }
    };
    let by_name: BTreeMap<String, OwnedFd> = pipes.into_iter().collect();
    let mut outputs = BTreeMap::new();
    for (name, path) in &plan.outputs {
        let kind = match plan.drv.outputs.get(name) {
            Some(DerivationOutput::CAFixed(ca)) => OutputKind::Fixed {
                path: path.clone(),
                ca: *ca,
            },
            _ => OutputKind::InputAddressed { path: path.clone() },
        };
        outputs.insert(name.clone(), kind);
    }
    let mut nars = Vec::new();
    for name in outputs.keys() {
        match by_name.get(name) {
            Some(fd) => match fd.try_clone() {
                Ok(fd) => nars.push(fd),
                Err(e) => {
                    return GoalResult::failed(
                        S::MiscFailure,
                        format!("collecting output '{name}': {e}"),
                    )
                }
            },
            None => {
                return GoalResult::failed(
                    S::MiscFailure,
                    format!("the broker collected no NAR for output '{name}' of '{drv_shown}'"),
                )
            }
        }
    }
    drop(by_name);
    let checks = match output_checks(&store_dir, options, &plan.outputs) {
        Ok(c) => c,
        Err(e) => {
            return GoalResult::failed(S::MiscFailure, format!("derivation '{drv_shown}': {e}"))
        }
    };
    let mode = match plan.mode {
        BuildMode::Normal => RegisterMode::Normal,
        BuildMode::Check => RegisterMode::Check,
        BuildMode::Repair => RegisterMode::Repair,
    };
    let request = FrontendToStoreWriter::RegisterBuildOutputs {
        build,
        drv_path: plan.drv_path.clone(),
        outputs,
        reference_candidates: plan.input_closure.clone(),
        checks,
        mode,
    };
    let mut writer = match WriterClient::connect_for(&shared.ipc_dir, WRITER_TIMEOUT, None).await {
        Ok(w) => w.with_path_info_cache(Arc::clone(shared.store.path_info_cache())),
        Err(e) => {
            return GoalResult::failed(
                S::MiscFailure,
                format!("ward's store-writer is unavailable: {e}"),
            )
        }
    };
    match writer.register_build_outputs(request, nars).await {
        Ok(registered) => {
            debug!(%build, "outputs registered");
            let mut r = GoalResult::failed(S::Built, "");
            r.outputs = registered
                .into_iter()
                .map(|(n, info)| (n, info.path))
                .collect();
            r
        }
        Err(ClientError::Store(e)) => {
            use ward_proto::ipc::store_writer::StoreWriterError as E;
            let status = match *e {
                E::CheckMismatch { .. } => S::NotDeterministic,
                E::HashMismatch { .. }
                | E::FixedOutputHashMismatch { .. }
                | E::OutputCheckFailed { .. }
                | E::PathMismatch { .. } => S::OutputRejected,
                _ => S::MiscFailure,
            };
            GoalResult::failed(status, e.to_client_message(&store_dir))
        }
        Err(e) => GoalResult::failed(
            S::MiscFailure,
            format!("ward's store-writer is unavailable: {e}"),
        ),
    }
}

/// The derivation's reference checks, with output names resolved to paths.
fn output_checks(
    store_dir: &ward_proto::store_path::StoreDir,
    options: &env::DrvOptions,
    outputs: &BTreeMap<String, StorePath>,
) -> Result<BTreeMap<String, OutputChecks>, String> {
    let resolve = |items: &[String]| -> Result<BTreeSet<StorePath>, String> {
        items
            .iter()
            .map(|item| match outputs.get(item) {
                Some(p) => Ok(p.clone()),
                None => store_dir
                    .parse_path(item)
                    .map_err(|e| format!("invalid path '{item}' in a reference check: {e}")),
            })
            .collect()
    };
    let mut checks = BTreeMap::new();
    for name in outputs.keys() {
        let mut c = OutputChecks::default();
        if let Some(per) = options.output_checks.get(name) {
            c.allowed_references = per.allowed_references.as_deref().map(resolve).transpose()?;
            c.disallowed_references = resolve(&per.disallowed_references)?;
            c.allowed_requisites = per.allowed_requisites.as_deref().map(resolve).transpose()?;
            c.disallowed_requisites = resolve(&per.disallowed_requisites)?;
            c.max_size = per.max_size;
            c.max_closure_size = per.max_closure_size;
        } else {
            c.allowed_references = options
                .allowed_references
                .as_deref()
                .map(resolve)
                .transpose()?;
            c.disallowed_references = resolve(&options.disallowed_references)?;
            c.allowed_requisites = options
                .allowed_requisites
                .as_deref()
                .map(resolve)
                .transpose()?;
            c.disallowed_requisites = resolve(&options.disallowed_requisites)?;
        }
        if c != OutputChecks::default() {
            checks.insert(name.clone(), c);
        }
    }
    Ok(checks)
}
