//! FindRoots: the GC roots a client may list, found by reading (never writing) the state dir.
//!
//! Roots are symlinks under `gcroots/` and `profiles/` that point into the store (directly, or
//! through one more link as indirect roots in `gcroots/auto/` do), and the temporary roots in
//! `temproots/`. Temporary roots show as `{temp:PID}` to trusted clients and `{censored}` to
//! others, as in Nix. Runtime roots from `/proc` are not scanned: ward's frontend does not look
//! at other processes.

use std::path::{Path, PathBuf};

use ward_proto::store_path::StorePath;
use ward_proto::worker::GcRoot;

use crate::server::Shared;

/// Directories deeper than this under a roots directory are not searched.
const MAX_DEPTH: usize = 32;
/// At most this many roots are reported.
const MAX_ROOTS: usize = 1 << 20;

/// Lists the roots.
pub fn find_roots(shared: &Shared, trusted: bool) -> Vec<GcRoot> {
    let state = shared.store.layout().state_dir().to_path_buf();
    let mut roots = Vec::new();
    for top in ["gcroots", "profiles"] {
        walk(shared, &state.join(top), 0, &mut roots);
    }
    temp_roots(shared, &state.join("temproots"), trusted, &mut roots);
    roots.sort_by(|a, b| (&a.link, &a.target).cmp(&(&b.link, &b.target)));
    roots.dedup();
    roots
}

fn store_path_of(shared: &Shared, target: &Path) -> Option<StorePath> {
    let text = target.to_str()?;
    shared
        .store
        .store_dir()
        .parse_path_with_suffix(text)
        .ok()
        .map(|(p, _)| p)
}

fn walk(shared: &Shared, dir: &Path, depth: usize, roots: &mut Vec<GcRoot>) {
    if depth > MAX_DEPTH || roots.len() >= MAX_ROOTS {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(shared, &path, depth + 1, roots);
        } else if meta.file_type().is_symlink() {
            let Ok(target) = std::fs::read_link(&path) else {
                continue;
            };
            if let Some(store_path) = store_path_of(shared, &target) {
                roots.push(GcRoot {
                    link: path,
                    target: store_path,
                });
            } else if target.is_absolute() {
                // An indirect root: a link to the user's link, which points into the store.
                if let Ok(second) = std::fs::read_link(&target) {
                    if let Some(store_path) = store_path_of(shared, &second) {
                        roots.push(GcRoot {
                            link: target.clone(),
                            target: store_path,
                        });
                    }
                }
            }
        }
    }
}

fn temp_roots(shared: &Shared, dir: &Path, trusted: bool, roots: &mut Vec<GcRoot>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(contents) = std::fs::read(entry.path()) else {
            continue;
        };
        let pid: String = name.chars().take_while(char::is_ascii_digit).collect();
        let link = if trusted {
            PathBuf::from(format!("{{temp:{pid}}}"))
        } else {
            PathBuf::from("{censored}")
        };
        for item in contents.split(|b| *b == 0).filter(|s| !s.is_empty()) {
            if roots.len() >= MAX_ROOTS {
                return;
            }
            let Ok(text) = std::str::from_utf8(item) else {
                continue;
            };
            if let Some(store_path) = store_path_of(shared, Path::new(text)) {
                roots.push(GcRoot {
                    link: link.clone(),
                    target: store_path,
                });
            }
        }
    }
}
