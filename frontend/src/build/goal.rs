//! Derivation goals: what to build, in which order, once.
//!
//! A goal realises one derivation: it waits for the goals of its input derivations, computes
//! the input closure, and runs the build ([`super::run`]). Goals are shared by every connection:
//! a second client asking for a derivation that is being built waits for the same goal and gets
//! the same result. A goal lives as long as someone waits for it; when the last waiter goes
//! (its client disconnected, or the goal that needed it was cancelled) it is cancelled, which
//! kills its build.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info_span, Instrument};

use ward_config::Settings;
use ward_proto::derivation::{Derivation, DerivationOutput, HashModuloCache};
use ward_proto::store_path::StorePath;
use ward_proto::worker::types::BuildMode;

use crate::server::Shared;

use super::run::{self, BuildPlan};

/// How long a goal waits for the store-writer's channel.
pub(crate) const WRITER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a client's build request sees of the build's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A build started (Nix's `actBuild` activity).
    Start {
        /// The activity id.
        activity: u64,
        /// The derivation, printed.
        drv: String,
    },
    /// One line of the build log, without its newline.
    Line {
        /// The activity id.
        activity: u64,
        /// The line.
        line: Vec<u8>,
    },
    /// The build ended.
    Stop {
        /// The activity id.
        activity: u64,
    },
    /// A path is being copied from a substituter (Nix's `actCopyPath` activity).
    Copy {
        /// The activity id.
        activity: u64,
        /// The path, printed.
        path: String,
        /// The cache's URL.
        from: String,
    },
    /// The post-build hook started (Nix's `actPostBuildHook` activity).
    HookStart {
        /// The activity id.
        activity: u64,
        /// The hook program, as configured.
        hook: String,
        /// The derivation, printed.
        drv: String,
    },
    /// One line of the hook's output, without its newline.
    HookLine {
        /// The activity id.
        activity: u64,
        /// The line.
        line: Vec<u8>,
    },
    /// A message for the user (e.g. where a failed build was kept).
    Message(String),
}

/// Who asked for a build, and with which settings.
#[derive(Debug, Clone)]
pub struct BuildCtx {
    /// The connection's settings (the daemon's, changed by SetOptions).
    pub settings: Arc<Settings>,
    /// Whether the client is trusted.
    pub trusted: bool,
    /// The client's uid (keep-failed directories are given to it).
    pub uid: u32,
    /// Where the build logs of goals this client starts go.
    pub log: Option<mpsc::Sender<LogEvent>>,
}

/// How a goal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalResult {
    /// Nix's build status.
    pub status: ward_proto::worker::types::BuildStatus,
    /// The error, with Nix's wording ("" on success).
    pub error: String,
    /// Output name → path, for every output of the derivation.
    pub outputs: BTreeMap<String, StorePath>,
    /// How often it was built by this goal (0 or 1).
    pub times_built: u32,
    /// Unix seconds.
    pub start_time: u64,
    /// Unix seconds.
    pub stop_time: u64,
    /// CPU time of the build, in microseconds.
    pub cpu_user_micros: Option<u64>,
    /// CPU time of the build, in microseconds.
    pub cpu_system_micros: Option<u64>,
    /// A substitution that failed because a cache failed (not because no cache had the
    /// path): without `fallback`, the derivation needing it is not built from source.
    pub substituter_failed: bool,
}

impl GoalResult {
    /// A failure with no outputs.
    pub fn failed(
        status: ward_proto::worker::types::BuildStatus,
        error: impl Into<String>,
    ) -> Self {
        GoalResult {
            status,
            error: error.into(),
            outputs: BTreeMap::new(),
            times_built: 0,
            start_time: 0,
            stop_time: 0,
            cpu_user_micros: None,
            cpu_system_micros: None,
            substituter_failed: false,
        }
    }

    /// Whether the outputs are there.
    pub fn succeeded(&self) -> bool {
        use ward_proto::worker::types::BuildStatus as S;
        matches!(
            self.status,
            S::Built | S::Substituted | S::AlreadyValid | S::ResolvesToAlreadyValid
        )
    }
}

/// What a goal realises: a derivation's outputs (built, or substituted when they can be), or
/// one store path fetched from a substituter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum GoalKey {
    Derivation { drv: StorePath, mode: BuildMode },
    Substitution { path: StorePath, repair: bool },
}

/// A waiter's hold on a goal; the goal is cancelled when the last one is dropped.
#[derive(Debug)]
pub struct GoalHandle {
    result: watch::Receiver<Option<Arc<GoalResult>>>,
    cancel: watch::Sender<bool>,
}

impl Drop for GoalHandle {
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}

impl GoalHandle {
    /// Waits for the goal's result.
    pub async fn wait(&self) -> Arc<GoalResult> {
        let mut rx = self.result.clone();
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                return Arc::new(GoalResult::failed(
                    ward_proto::worker::types::BuildStatus::MiscFailure,
                    "the build was abandoned",
                ));
            }
        }
    }
}

/// A held build slot (and the uid's own permit, if they are capped).
#[derive(Debug)]
pub(crate) struct Slot {
    _own: Option<tokio::sync::OwnedSemaphorePermit>,
    _global: tokio::sync::OwnedSemaphorePermit,
}

/// The daemon's goals and build slots.
#[derive(Debug)]
pub struct Builds {
    goals: Mutex<HashMap<GoalKey, Weak<GoalHandle>>>,
    /// One permit per concurrent build (`max-jobs`).
    pub(crate) jobs: Arc<Semaphore>,
    /// `ward-max-jobs-per-user` (0 = none), and each client uid's own permits.
    per_user_limit: u32,
    per_user: Mutex<HashMap<u32, Arc<Semaphore>>>,
    next_build: AtomicU64,
    next_activity: AtomicU64,
    /// The goals' temporary roots, on one store-writer channel.
    pub(crate) roots: Arc<super::keeper::RootKeeper>,
}

impl Builds {
    /// Build slots for `max_jobs` concurrent builds, at most `per_user_limit` (0 = all) of
    /// them held by one client uid.
    pub fn new(max_jobs: u32, per_user_limit: u32) -> Builds {
        Builds {
            goals: Mutex::new(HashMap::new()),
            jobs: Arc::new(Semaphore::new(max_jobs.max(1) as usize)),
            per_user_limit,
            per_user: Mutex::new(HashMap::new()),
            next_build: AtomicU64::new(1),
            next_activity: AtomicU64::new(u64::from(std::process::id()) << 32),
            roots: Arc::default(),
        }
    }

    /// Waits for a build slot on behalf of `uid`: first one of that uid's own (when
    /// `ward-max-jobs-per-user` caps them), then one of `max-jobs`. `None` when the daemon
    /// shuts down.
    pub(crate) async fn slot(&self, uid: u32) -> Option<Slot> {
        let own = if self.per_user_limit == 0 {
            None
        } else {
            let sem = Arc::clone(
                lock(&self.per_user)
                    .entry(uid)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_user_limit as usize))),
            );
            Some(sem.acquire_owned().await.ok()?)
        };
        let global = Arc::clone(&self.jobs).acquire_owned().await.ok()?;
        Some(Slot {
            _own: own,
            _global: global,
        })
    }

    pub(crate) fn next_build_id(&self) -> ward_proto::ipc::BuildId {
        ward_proto::ipc::BuildId(self.next_build.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn next_activity(&self) -> u64 {
        self.next_activity.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The goal that realises `drv` in `mode`: the running one if there is one, else a new one.
pub fn goal_for(
    shared: &Arc<Shared>,
    drv: &StorePath,
    mode: BuildMode,
    ctx: &BuildCtx,
) -> Arc<GoalHandle> {
    let key = GoalKey::Derivation {
        drv: drv.clone(),
        mode,
    };
    start_goal(shared, key, ctx)
}

/// The goal that fetches `path` from a substituter (with its references first).
pub fn substitution_for(shared: &Arc<Shared>, path: &StorePath, ctx: &BuildCtx) -> Arc<GoalHandle> {
    start_goal(
        shared,
        GoalKey::Substitution {
            path: path.clone(),
            repair: false,
        },
        ctx,
    )
}

/// The goal that fetches `path` again from a substituter even though it is valid (its files
/// are damaged or gone), replacing what is in the store.
pub fn repair_for(shared: &Arc<Shared>, path: &StorePath, ctx: &BuildCtx) -> Arc<GoalHandle> {
    start_goal(
        shared,
        GoalKey::Substitution {
            path: path.clone(),
            repair: true,
        },
        ctx,
    )
}

fn start_goal(shared: &Arc<Shared>, key: GoalKey, ctx: &BuildCtx) -> Arc<GoalHandle> {
    let mut goals = lock(&shared.builds.goals);
    if let Some(handle) = goals.get(&key).and_then(Weak::upgrade) {
        debug!(goal = ?key, "joining a running goal");
        return handle;
    }
    let (result_tx, result_rx) = watch::channel(None);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let handle = Arc::new(GoalHandle {
        result: result_rx,
        cancel: cancel_tx,
    });
    let mine = Arc::downgrade(&handle);
    goals.insert(key.clone(), mine.clone());
    drop(goals);
    let shared = Arc::clone(shared);
    let ctx = ctx.clone();
    let span = match &key {
        GoalKey::Derivation { drv, .. } => info_span!("goal", drv = %drv, uid = ctx.uid),
        GoalKey::Substitution { path, repair } => {
            info_span!("substitution", path = %path, repair, uid = ctx.uid)
        }
    };
    tokio::spawn(
        async move {
            let result = match &key {
                GoalKey::Derivation { drv, mode } => {
                    realise(&shared, drv, *mode, &ctx, cancel_rx).await
                }
                GoalKey::Substitution { path, repair } => {
                    super::substitution::substitute(&shared, path, *repair, &ctx, cancel_rx).await
                }
            };
            debug!(status = ?result.status, "goal done");
            let _ = result_tx.send(Some(Arc::new(result)));
            let mut goals = lock(&shared.builds.goals);
            if goals.get(&key).is_some_and(|w| Weak::ptr_eq(w, &mine)) {
                goals.remove(&key);
            }
        }
        .instrument(span),
    );
    handle
}

/// Reads and parses a derivation from the store.
pub fn read_derivation(shared: &Shared, drv: &StorePath) -> Result<Derivation, String> {
    let store_dir = shared.store.store_dir();
    let file = shared.store.real_path(drv);
    let bytes = std::fs::read(&file)
        .map_err(|e| format!("reading derivation '{}': {e}", store_dir.print(drv)))?;
    let name = ward_proto::derivation::name_from_drv_path(drv)
        .map_err(|e| format!("'{}' is not a derivation: {e}", store_dir.print(drv)))?;
    Derivation::parse(&bytes, store_dir, name)
        .map_err(|e| format!("parsing derivation '{}': {e}", store_dir.print(drv)))
}

/// Output name → path of a derivation whose output paths are known before the build.
pub fn known_outputs(
    shared: &Shared,
    drv: &Derivation,
    drv_path: &StorePath,
) -> Result<BTreeMap<String, StorePath>, String> {
    let store_dir = shared.store.store_dir();
    let mut out = BTreeMap::new();
    for (name, output) in &drv.outputs {
        match output.path(store_dir, &drv.name, name) {
            Ok(Some(path)) => {
                out.insert(name.clone(), path);
            }
            Ok(None) => {
                return Err(format!(
                    "derivation '{}' has content-addressed or deferred outputs, which ward cannot build yet",
                    store_dir.print(drv_path)
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// The closure of `paths` under the references recorded in the database.
pub fn closure(
    shared: &Shared,
    paths: impl IntoIterator<Item = StorePath>,
) -> Result<BTreeSet<StorePath>, String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<StorePath> = paths.into_iter().collect();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let info = shared
            .store
            .query_path_info(&path)
            .map_err(|e| format!("reading the store database: {e}"))?
            .ok_or_else(|| {
                format!(
                    "path '{}' is not valid",
                    shared.store.store_dir().print(&path)
                )
            })?;
        for reference in &info.references {
            if !seen.contains(reference) {
                todo.push(reference.clone());
            }
        }
    }
    Ok(seen)
}

fn is_valid(shared: &Shared, path: &StorePath) -> Result<bool, String> {
    shared
        .store
        .is_valid(path)
        .map_err(|e| format!("reading the store database: {e}"))
}

async fn realise(
    shared: &Arc<Shared>,
    drv_path: &StorePath,
    mode: BuildMode,
    ctx: &BuildCtx,
    mut cancel: watch::Receiver<bool>,
) -> GoalResult {
    use ward_proto::worker::types::BuildStatus as S;
    let store_dir = shared.store.store_dir().clone();
    let drv = match read_derivation(shared, drv_path) {
        Ok(d) => d,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };
    // A derivation whose output paths do not follow from its inputs (say, a .drv written
    // with another derivation's output path) is refused before anything runs.
    let lookup = |input: &StorePath| read_derivation(shared, input).map_err(DrvLookupError);
    if let Err(e) = drv.check_outputs(&store_dir, &lookup, &mut HashModuloCache::new()) {
        return GoalResult::failed(
            S::MiscFailure,
            format!("derivation '{}' is invalid: {e}", store_dir.print(drv_path)),
        );
    }
    let outputs = match known_outputs(shared, &drv, drv_path) {
        Ok(o) => o,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };
    let mut all_valid = true;
    let mut any_valid = false;
    for path in outputs.values() {
        match is_valid(shared, path) {
            Ok(true) => any_valid = true,
            Ok(false) => all_valid = false,
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        }
    }
    match mode {
        BuildMode::Normal if all_valid => {
            let mut r = GoalResult::failed(S::AlreadyValid, "");
            r.outputs = outputs;
            return r;
        }
        BuildMode::Check if !all_valid => {
            return GoalResult::failed(
                S::MiscFailure,
                format!(
                    "some outputs of '{}' are not valid, so checking is not possible",
                    store_dir.print(drv_path)
                ),
            );
        }
        _ => {}
    }
    let _ = any_valid;

    // Outputs from a substituter before building, as Nix: all of them, or the build runs
    // (a failing cache stops it unless `fallback` is set).
    if matches!(mode, BuildMode::Normal | BuildMode::Repair)
        && ctx.settings.substitute
        && !ctx.settings.substituters.is_empty()
        && substitutes_allowed(&drv, &ctx.settings)
    {
        // Repairing fetches every output again; otherwise only the missing ones.
        let repair = mode == BuildMode::Repair;
        let mut missing = Vec::new();
        for path in outputs.values() {
            match is_valid(shared, path) {
                Ok(true) if !repair => {}
                Ok(_) => missing.push(path.clone()),
                Err(e) => return GoalResult::failed(S::MiscFailure, e),
            }
        }
        let handles: Vec<_> = missing
            .iter()
            .map(|p| {
                if repair {
                    repair_for(shared, p, ctx)
                } else {
                    substitution_for(shared, p, ctx)
                }
            })
            .collect();
        let mut substituter_failed = false;
        let mut all_fetched = true;
        for handle in &handles {
            let result = tokio::select! {
                r = handle.wait() => r,
                _ = cancelled(&mut cancel) => {
                    return GoalResult::failed(S::MiscFailure, "build cancelled");
                }
            };
            substituter_failed |= result.substituter_failed;
            all_fetched &= result.succeeded();
        }
        drop(handles);
        let mut now_valid = all_fetched;
        for path in &missing {
            match is_valid(shared, path) {
                Ok(v) => now_valid &= v,
                Err(e) => return GoalResult::failed(S::MiscFailure, e),
            }
        }
        if now_valid {
            let mut r = GoalResult::failed(S::Substituted, "");
            r.outputs = outputs;
            return r;
        }
        if substituter_failed && !ctx.settings.fallback && !repair {
            return GoalResult::failed(
                S::TransientFailure,
                format!(
                    "some substitutes for the outputs of derivation '{}' failed (usually happens due to networking issues); try '--fallback' to build derivation from source ",
                    store_dir.print(drv_path)
                ),
            );
        }
    }

    // Inputs first: every input derivation's goal, at once.
    let mut waits = Vec::new();
    for (input, wanted) in &drv.input_drvs {
        let input_drv = match read_derivation(shared, input) {
            Ok(d) => d,
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        };
        let input_outputs = match known_outputs(shared, &input_drv, input) {
            Ok(o) => o,
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        };
        let mut needed = false;
        for name in wanted {
            match input_outputs.get(name) {
                Some(path) => match is_valid(shared, path) {
                    Ok(true) => {}
                    Ok(false) => needed = true,
                    Err(e) => return GoalResult::failed(S::MiscFailure, e),
                },
                None => {
                    return GoalResult::failed(
                        S::MiscFailure,
                        format!(
                            "derivation '{}' has no output '{name}' needed by '{}'",
                            store_dir.print(input),
                            store_dir.print(drv_path)
                        ),
                    )
                }
            }
        }
        if needed {
            let handle = goal_for(shared, input, BuildMode::Normal, ctx);
            waits.push((input.clone(), handle));
        }
    }
    // Sources that are not here come from a substituter.
    for src in &drv.input_srcs {
        match is_valid(shared, src) {
            Ok(true) => {}
            Ok(false) => waits.push((src.clone(), substitution_for(shared, src, ctx))),
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        }
    }
    // What the inputs' goals produce is this goal's temporary root from now until the build
    // ends: their own roots go when they finish.
    let mut input_roots = None;
    if !waits.is_empty() {
        match shared
            .builds
            .roots
            .hold(&shared.ipc_dir, input_paths(shared, &drv))
            .await
        {
            Ok(guard) => input_roots = Some(guard),
            Err(e) => {
                return GoalResult::failed(
                    S::MiscFailure,
                    format!("ward's store-writer is unavailable: {e}"),
                )
            }
        }
    }
    let mut failed = 0usize;
    let mut last_error = String::new();
    {
        let mut pending: Vec<_> = waits
            .iter()
            .map(|(drv, handle)| {
                let drv = drv.clone();
                Box::pin(async move { (drv, handle.wait().await) })
            })
            .collect();
        while !pending.is_empty() {
            let ((_, result), _, rest) = tokio::select! {
                done = futures_select_all(pending) => done,
                _ = cancelled(&mut cancel) => {
                    return GoalResult::failed(S::MiscFailure, "build cancelled");
                }
            };
            pending = rest;
            if !result.succeeded() {
                failed += 1;
                last_error = result.error.clone();
                if !ctx.settings.keep_going {
                    break;
                }
            }
        }
    }
    drop(waits);
    if failed > 0 {
        debug!("dependency failed: {last_error}");
        return GoalResult::failed(
            S::DependencyFailed,
            format!(
                "{failed} dependencies of derivation '{}' failed to build",
                store_dir.print(drv_path)
            ),
        );
    }

    // The input closure: sources and the used outputs of input derivations.
    let mut roots: BTreeSet<StorePath> = drv.input_srcs.clone();
    for (input, wanted) in &drv.input_drvs {
        let input_drv = match read_derivation(shared, input) {
            Ok(d) => d,
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        };
        let input_outputs = match known_outputs(shared, &input_drv, input) {
            Ok(o) => o,
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        };
        for name in wanted {
            if let Some(p) = input_outputs.get(name) {
                roots.insert(p.clone());
            }
        }
    }
    for src in &drv.input_srcs {
        match is_valid(shared, src) {
            Ok(true) => {}
            Ok(false) => {
                return GoalResult::failed(
                    S::MiscFailure,
                    format!(
                        "path '{}' is required, but there is no substituter that can build it",
                        store_dir.print(src)
                    ),
                )
            }
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        }
    }
    let input_closure = match closure(shared, roots) {
        Ok(c) => c,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };

    let plan_outputs: Vec<String> = outputs.keys().cloned().collect();
    let plan = BuildPlan {
        drv_path: drv_path.clone(),
        drv,
        outputs,
        input_closure,
        mode,
        name: format!(
            "building of '{}!{}' from .drv file",
            store_dir.print(drv_path),
            plan_outputs.join(",")
        ),
    };
    let result = run::run_build(shared, plan, ctx, cancel).await;
    drop(input_roots);
    result
}

/// The input sources and the wanted outputs of the input derivations of `drv` (those whose
/// paths are known).
fn input_paths(shared: &Shared, drv: &Derivation) -> BTreeSet<StorePath> {
    let mut paths = drv.input_srcs.clone();
    for (input, wanted) in &drv.input_drvs {
        if let Ok(outputs) = output_map(shared, input) {
            for name in wanted {
                if let Some(Some(p)) = outputs.get(name) {
                    paths.insert(p.clone());
                }
            }
        }
    }
    paths
}

/// `allowSubstitutes` (default true; `always-allow-substitutes` overrides a false).
fn substitutes_allowed(drv: &Derivation, settings: &Settings) -> bool {
    if settings.get("always-allow-substitutes").as_deref() == Some("true") {
        return true;
    }
    match drv.env.get(b"__json".as_slice()) {
        Some(json) => serde_json::from_slice::<serde_json::Value>(json)
            .ok()
            .and_then(|v| {
                v.get("allowSubstitutes")
                    .and_then(serde_json::Value::as_bool)
            })
            .unwrap_or(true),
        None => drv
            .env
            .get(b"allowSubstitutes".as_slice())
            .is_none_or(|v| v == b"1"),
    }
}

/// Resolves when the goal is cancelled.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            // Every handle is gone: nobody waits any more.
            return;
        }
    }
}

/// The first of several futures to finish, and the rest.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: Vec<F>,
) -> (F::Output, usize, Vec<F>) {
    let mut futures = futures;
    std::future::poll_fn(move |cx| {
        for i in 0..futures.len() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(&mut futures[i]).poll(cx) {
                drop(futures.swap_remove(i));
                let rest = std::mem::take(&mut futures);
                return std::task::Poll::Ready((out, i, rest));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[derive(Debug)]
struct DrvLookupError(String);

impl std::fmt::Display for DrvLookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DrvLookupError {}

/// Output paths of `drv` known before building (used by QueryMissing and the ops).
pub fn output_map(
    shared: &Shared,
    drv_path: &StorePath,
) -> Result<BTreeMap<String, Option<StorePath>>, String> {
    let drv = read_derivation(shared, drv_path)?;
    let store_dir = shared.store.store_dir();
    drv.outputs
        .iter()
        .map(|(name, output): (&String, &DerivationOutput)| {
            output
                .path(store_dir, &drv.name, name)
                .map(|p| (name.clone(), p))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// BuildDerivation: builds a derivation the client sent whole (its inputs are sources that
/// must be valid). Not shared with other clients: the derivation need not be in the store.
pub async fn realise_basic(
    shared: Arc<Shared>,
    drv_path: StorePath,
    drv: Derivation,
    mode: BuildMode,
    ctx: BuildCtx,
) -> GoalResult {
    use ward_proto::worker::types::BuildStatus as S;
    let store_dir = shared.store.store_dir().clone();
    let outputs = match known_outputs(&shared, &drv, &drv_path) {
        Ok(o) => o,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };
    if mode == BuildMode::Normal {
        let mut all_valid = true;
        for p in outputs.values() {
            match is_valid(&shared, p) {
                Ok(v) => all_valid &= v,
                Err(e) => return GoalResult::failed(S::MiscFailure, e),
            }
        }
        if all_valid {
            let mut r = GoalResult::failed(S::AlreadyValid, "");
            r.outputs = outputs;
            return r;
        }
    }
    for src in &drv.input_srcs {
        match is_valid(&shared, src) {
            Ok(true) => {}
            Ok(false) => {
                return GoalResult::failed(
                    S::MiscFailure,
                    format!(
                        "path '{}' is required, but there is no substituter that can build it",
                        store_dir.print(src)
                    ),
                )
            }
            Err(e) => return GoalResult::failed(S::MiscFailure, e),
        }
    }
    let input_closure = match closure(&shared, drv.input_srcs.clone()) {
        Ok(c) => c,
        Err(e) => return GoalResult::failed(S::MiscFailure, e),
    };
    let names: Vec<&str> = outputs.keys().map(String::as_str).collect();
    let plan = BuildPlan {
        name: format!(
            "building of '{}!{}' from in-memory derivation",
            store_dir.print(&drv_path),
            names.join(",")
        ),
        drv_path,
        drv,
        outputs,
        input_closure,
        mode,
    };
    // The goal lives as long as the request: dropping this future drops the receiver, which
    // reads as a cancellation.
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    run::run_build(&shared, plan, &ctx, cancel_rx).await
}
