//! QueryMissing: what realising some targets would take, as Nix 2.8's `queryMissing` works it
//! out — derivations to build, paths to fetch from substituters (with the download and
//! unpacked sizes), and paths nobody can make. Blocking (it asks caches); run it on the
//! blocking pool.

use std::collections::BTreeSet;

use ward_proto::store_path::StorePath;
use ward_proto::worker::types::{DerivedPath, MissingInfo, OutputsSpec};

use super::goal::{output_map, read_derivation};
use crate::server::Shared;
use crate::substitute::Substituters;

enum Todo {
    /// A path that must be valid.
    Path(StorePath),
    /// Some outputs (all when `None`) of a derivation.
    Outputs(StorePath, Option<BTreeSet<String>>),
}

/// Works out what realising `targets` takes. Errors of caches go to `messages`.
pub fn query_missing(
    shared: &Shared,
    subs: &Substituters,
    targets: &[DerivedPath],
    messages: &mut Vec<String>,
) -> Result<MissingInfo, String> {
    let is_valid = |p: &StorePath| {
        shared
            .store
            .is_valid(p)
            .map_err(|e| format!("reading the store database: {e}"))
    };
    let mut missing = MissingInfo::default();
    let mut todo: Vec<Todo> = targets
        .iter()
        .map(|t| match t {
            DerivedPath::Opaque(p) => Todo::Path(p.clone()),
            DerivedPath::Built { drv_path, outputs } => Todo::Outputs(
                drv_path.clone(),
                match outputs {
                    OutputsSpec::All => None,
                    OutputsSpec::Names(n) => Some(n.iter().cloned().collect()),
                },
            ),
        })
        .collect();
    let mut seen_paths = BTreeSet::new();
    let mut seen_drvs = BTreeSet::new();
    while let Some(item) = todo.pop() {
        match item {
            Todo::Path(path) => {
                if !seen_paths.insert(path.clone()) || is_valid(&path)? {
                    continue;
                }
                match subs.query_info(&path, messages) {
                    Some((_, narinfo)) => {
                        missing.will_substitute.insert(path.clone());
                        missing.download_size += narinfo.file_size.unwrap_or(0);
                        missing.nar_size += narinfo.info.nar_size;
                        for r in &narinfo.info.references {
                            if *r != path {
                                todo.push(Todo::Path(r.clone()));
                            }
                        }
                    }
                    None => {
                        missing.unknown.insert(path);
                    }
                }
            }
            Todo::Outputs(drv_path, wanted) => {
                if !seen_drvs.insert(drv_path.clone()) {
                    continue;
                }
                if !is_valid(&drv_path)? {
                    missing.unknown.insert(drv_path);
                    continue;
                }
                let (Ok(drv), Ok(outputs)) = (
                    read_derivation(shared, &drv_path),
                    output_map(shared, &drv_path),
                ) else {
                    missing.unknown.insert(drv_path);
                    continue;
                };
                let mut invalid = Vec::new();
                let mut all_known = true;
                for (name, path) in &outputs {
                    if wanted.as_ref().is_some_and(|w| !w.contains(name)) {
                        continue;
                    }
                    match path {
                        Some(p) if is_valid(p)? => {}
                        Some(p) => invalid.push(p.clone()),
                        None => all_known = false,
                    }
                }
                if all_known && invalid.is_empty() {
                    continue;
                }
                // All missing outputs substitutable: fetched, not built.
                if all_known && !subs.is_empty() {
                    let found: Vec<_> = invalid
                        .iter()
                        .map(|p| subs.query_info(p, messages).is_some())
                        .collect();
                    if found.iter().all(|f| *f) {
                        todo.extend(invalid.into_iter().map(Todo::Path));
                        continue;
                    }
                }
                missing.will_build.insert(drv_path.clone());
                for (input, outputs) in &drv.input_drvs {
                    todo.push(Todo::Outputs(input.clone(), Some(outputs.clone())));
                }
                for src in &drv.input_srcs {
                    todo.push(Todo::Path(src.clone()));
                }
            }
        }
    }
    Ok(missing)
}
