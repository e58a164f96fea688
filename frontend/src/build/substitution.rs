//! Substitution goals: one store path fetched from a binary cache, its references first (or,
//! repairing, fetched again over a valid path whose files are damaged).
//!
//! As Nix's `PathSubstitutionGoal`: the caches are tried in priority order; one that does not
//! have the path, or whose narinfo is not signed by a trusted key, is skipped; references
//! are realised by their own (shared) goals before the path; the download takes a build
//! slot. The NAR streams from the cache through the decompressor into the store-writer's
//! AddPathFromNar with `check_sigs` (unless the cache is `?trusted=1`), so the store-writer
//! re-checks hash, size and signatures before the path becomes valid.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{debug, warn};

use ward_proto::binary_cache::CacheError;
use ward_proto::store_path::StorePath;
use ward_proto::worker::types::BuildStatus as S;

use super::goal::{cancelled, substitution_for, BuildCtx, GoalResult, LogEvent, WRITER_TIMEOUT};
use crate::server::Shared;
use crate::substitute::Substituters;
use crate::writer_client::{ClientError, WriterClient};

/// Bytes of decompressed NAR in flight between the download thread and the store-writer.
const PIPE_BUFFER: usize = 1 << 20;

async fn message(ctx: &BuildCtx, text: String) {
    if let Some(log) = &ctx.log {
        let _ = log.send(LogEvent::Message(text)).await;
    }
}

/// This goal's caches (opening them blocks: files and the network).
pub async fn select(shared: &Arc<Shared>, ctx: &BuildCtx) -> Substituters {
    let pool = Arc::clone(shared);
    let settings = Arc::clone(&ctx.settings);
    let (subs, warnings) = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        let subs = pool.substituters.select(&settings, &mut warnings);
        (subs, warnings)
    })
    .await
    .expect("selecting substituters does not panic");
    for w in warnings {
        warn!("{w}");
        message(ctx, format!("warning: {w}")).await;
    }
    subs
}

fn writer_error(shared: &Shared, e: &ClientError) -> String {
    crate::connection::writer_message(shared.store.store_dir(), e)
}

/// Realises `path` from a substituter.
pub(crate) async fn substitute(
    shared: &Arc<Shared>,
    path: &StorePath,
    repair: bool,
    ctx: &BuildCtx,
    mut cancel: watch::Receiver<bool>,
) -> GoalResult {
    let store_dir = shared.store.store_dir().clone();
    let shown = store_dir.print(path);
    match shared.store.is_valid(path) {
        Ok(true) if !repair => return GoalResult::failed(S::AlreadyValid, ""),
        Ok(_) => {}
        Err(e) => {
            return GoalResult::failed(S::MiscFailure, format!("reading the store database: {e}"))
        }
    }
    let no_substituter = |failed: bool| {
        let mut r = GoalResult::failed(
            S::NoSubstituters,
            format!("path '{shown}' is required, but there is no substituter that can build it"),
        );
        r.substituter_failed = failed;
        r
    };
    if !ctx.settings.substitute || ctx.settings.substituters.is_empty() {
        return no_substituter(false);
    }
    let subs = select(shared, ctx).await;
    if subs.is_empty() {
        return no_substituter(false);
    }
    // The path and its references are this goal's temporary roots until it ends (held for
    // all goals on one channel; the goal opens its own only to add the path).
    let keeper = Arc::clone(&shared.builds.roots);
    let _path_root = match keeper.hold(&shared.ipc_dir, [path.clone()]).await {
        Ok(guard) => guard,
        Err(e) => return GoalResult::failed(S::MiscFailure, writer_error(shared, &e)),
    };
    let mut reference_roots = Vec::new();
    let mut failed = false;
    for cache in subs.caches.clone() {
        let lookup = {
            let Ok(_request) = Arc::clone(&shared.substituters.requests)
                .acquire_owned()
                .await
            else {
                return GoalResult::failed(S::MiscFailure, "the daemon is shutting down");
            };
            let (cache, subs, path) = (Arc::clone(&cache), subs.clone(), path.clone());
            tokio::task::spawn_blocking(move || cache.narinfo(&path, &subs))
                .await
                .expect("narinfo lookups do not panic")
        };
        let narinfo = match lookup {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                message(ctx, format!("error: {e}")).await;
                failed = true;
                continue;
            }
        };
        match subs.check(&cache, path, &narinfo) {
            Ok(()) => {}
            Err(CacheError::Unsigned { .. }) => {
                message(
                    ctx,
                    format!(
                        "warning: the substitute for '{shown}' from '{}' is not signed by any of the keys in 'trusted-public-keys'",
                        cache.url
                    ),
                )
                .await;
                continue;
            }
            Err(e) => {
                message(ctx, format!("error: {e}")).await;
                failed = true;
                continue;
            }
        }

        // The closure first.
        let mut references = Vec::new();
        for reference in narinfo.info.references.iter().filter(|r| *r != path) {
            match shared.store.is_valid(reference) {
                Ok(true) => {}
                Ok(false) => references.push(reference.clone()),
                Err(e) => {
                    return GoalResult::failed(
                        S::MiscFailure,
                        format!("reading the store database: {e}"),
                    )
                }
            }
        }
        match keeper
            .hold(&shared.ipc_dir, references.iter().cloned())
            .await
        {
            Ok(guard) => reference_roots.push(guard),
            Err(e) => return GoalResult::failed(S::MiscFailure, writer_error(shared, &e)),
        }
        let handles: Vec<_> = references
            .iter()
            .map(|r| substitution_for(shared, r, ctx))
            .collect();
        let mut references_failed = false;
        for handle in &handles {
            let result = tokio::select! {
                r = handle.wait() => r,
                _ = cancelled(&mut cancel) => {
                    return GoalResult::failed(S::MiscFailure, "substitution cancelled");
                }
            };
            references_failed |= !result.succeeded();
        }
        drop(handles);
        if references_failed {
            return GoalResult::failed(
                S::DependencyFailed,
                format!("some references of path '{shown}' could not be realised"),
            );
        }

        let _slot = tokio::select! {
            permit = shared.builds.slot(ctx.uid) => permit,
            _ = cancelled(&mut cancel) => {
                return GoalResult::failed(S::MiscFailure, "substitution cancelled");
            }
        };
        // A channel of its own for the NAR, only while it holds a slot: channels are few.
        let mut writer =
            match WriterClient::connect_for(&shared.ipc_dir, WRITER_TIMEOUT, Some(ctx.uid)).await {
                Ok(w) => w.with_path_info_cache(Arc::clone(shared.store.path_info_cache())),
                Err(e) => return GoalResult::failed(S::MiscFailure, writer_error(shared, &e)),
            };
        let activity = shared.builds.next_activity();
        if let Some(log) = &ctx.log {
            let _ = log
                .send(LogEvent::Copy {
                    activity,
                    path: shown.clone(),
                    from: cache.url.clone(),
                })
                .await;
        }
        let started = std::time::Instant::now();
        let (nar_in, nar_out) = tokio::io::duplex(PIPE_BUFFER);
        let download = {
            let (cache, narinfo) = (Arc::clone(&cache), Arc::clone(&narinfo));
            tokio::task::spawn_blocking(move || -> Result<u64, String> {
                let mut nar = cache.open_nar(&narinfo)?;
                let mut sink = tokio_util::io::SyncIoBridge::new(nar_in);
                let copied = std::io::copy(&mut nar, &mut sink).map_err(|e| {
                    format!("downloading '{}' from '{}': {e}", narinfo.url, cache.url)
                })?;
                // Closing the pipe ends the NAR for the store-writer.
                let mut pipe = sink.into_inner();
                tokio::runtime::Handle::current()
                    .block_on(pipe.shutdown())
                    .map_err(|e| format!("downloading '{}': {e}", narinfo.url))?;
                Ok(copied)
            })
        };
        let mut info = narinfo.info.clone();
        info.ultimate = false;
        info.registration_time = 0;
        let added = tokio::select! {
            added = writer.add_path_from_nar(info, repair, !cache.trusted, nar_out) => added,
            _ = cancelled(&mut cancel) => {
                return GoalResult::failed(S::MiscFailure, "substitution cancelled");
            }
        };
        let downloaded = download.await.unwrap_or_else(|e| Err(e.to_string()));
        if let Some(log) = &ctx.log {
            let _ = log.send(LogEvent::Stop { activity }).await;
        }
        match (added, downloaded) {
            (Ok(_), Ok(bytes)) => {
                debug!(path = %shown, cache = %cache.url, bytes, elapsed = ?started.elapsed(), "substituted");
                return GoalResult::failed(S::Substituted, "");
            }
            (added, downloaded) => {
                // The download's own error says most when there is one.
                let reason = match (downloaded, added) {
                    (Err(e), _) => e,
                    (Ok(_), Err(e)) => writer_error(shared, &e),
                    (Ok(_), Ok(_)) => unreachable!("handled above"),
                };
                warn!(path = %shown, cache = %cache.url, "substitution failed: {reason}");
                message(
                    ctx,
                    format!(
                        "error: substituting '{shown}' from '{}': {reason}",
                        cache.url
                    ),
                )
                .await;
                failed = true;
            }
        }
    }
    no_substituter(failed)
}
