//! FindRoots: the GC roots a client may list, as the root-side helper (`ward-gc-roots`,
//! started by the broker) finds them: links under `gcroots/` and `profiles/` (and the users'
//! links indirect roots name), the temporary roots of live processes and the runtime roots of
//! running processes. Temporary and runtime roots show as `{temp:PID}` and the `/proc` entry
//! to trusted clients and as `{censored}` to others, as in Nix. Roots naming paths that are
//! not valid are left out, as Nix does.

use std::io::Read;
use std::path::PathBuf;

use ward_proto::gc_roots::{parse_records, RootRecord, MAX_OUTPUT};
use ward_proto::worker::GcRoot;

use crate::server::Shared;

/// Lists the roots, or says why they cannot be found.
pub async fn find_roots(shared: &Shared, trusted: bool) -> Result<Vec<GcRoot>, String> {
    let broker = shared
        .broker
        .as_ref()
        .ok_or("roots cannot be listed without the broker")?;
    let pipe = broker.find_roots().await?;
    let output = tokio::task::spawn_blocking(move || {
        let mut output = Vec::new();
        std::fs::File::from(pipe)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut output)
            .map(|_| output)
    })
    .await
    .map_err(|e| format!("reading the roots helper: {e}"))?
    .map_err(|e| format!("reading the roots helper: {e}"))?;
    let records = parse_records(&output).map_err(|e| e.to_string())?;
    Ok(roots_for_client(shared, records, trusted))
}

fn roots_for_client(shared: &Shared, records: Vec<RootRecord>, trusted: bool) -> Vec<GcRoot> {
    let censored = || PathBuf::from("{censored}");
    let store_dir = shared.store.store_dir();
    let mut roots = Vec::new();
    for record in records {
        let Some(target) = record.store_path(store_dir) else {
            continue;
        };
        if !shared.store.is_valid(&target).unwrap_or(false) {
            continue;
        }
        let link = match record {
            RootRecord::Link { link, .. } | RootRecord::File { link, .. } => link,
            RootRecord::Runtime { link, .. } if trusted => PathBuf::from(link),
            RootRecord::Temp { owner, .. } if trusted => PathBuf::from(format!("{{temp:{owner}}}")),
            _ => censored(),
        };
        roots.push(GcRoot { link, target });
    }
    roots.sort_by(|a, b| (&a.link, &a.target).cmp(&(&b.link, &b.target)));
    roots.dedup();
    roots
}
