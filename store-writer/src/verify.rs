//! VerifyStore (`nix-store --verify [--check-contents] [--repair]`), as Nix 2.8 does it:
//! every valid path must exist in the store directory — a missing one is removed from the
//! database when no valid path still refers to it, and reported otherwise — and, with
//! `check_contents`, its NAR hash is computed again from the files and compared with the
//! recorded one. References must name valid paths (the schema makes that so; it is checked
//! anyway). Findings are returned in Nix's words, for the client's log.
//!
//! The store-writer cannot fetch anything: with `repair`, a corrupted path, or one gone while
//! still referred to, is listed in [`Verification::to_repair`] for the frontend, which fetches
//! it again from a substituter (or rebuilds it) through an AddPathFromNar with `repair`.

use std::collections::BTreeSet;

use ward_proto::hash::Hasher;
use ward_proto::store_path::StorePath;

use crate::db::DbError;
use crate::store::Store;

/// What a verification found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Something is (still) broken.
    pub errors_found: bool,
    /// Progress (`false`) and findings (`true`), in order, in Nix's words.
    pub messages: Vec<(bool, String)>,
    /// Paths removed from the database because their files were gone.
    pub invalidated: Vec<StorePath>,
    /// With `repair`: broken paths, not counted in `errors_found`.
    pub to_repair: Vec<StorePath>,
}

/// A finding, shown to the client at error level.
fn error(text: String) -> (bool, String) {
    (true, text)
}

impl Store {
    /// Verifies the store (see the module documentation). The caller holds the store, so no
    /// path is added or registered meanwhile.
    pub fn verify(&mut self, check_contents: bool, repair: bool) -> Result<Verification, DbError> {
        let mut out = Verification::default();
        let store_dir = self.layout.store_dir().clone();
        out.messages
            .push((false, "reading the Nix store...".into()));
        let valid = self.db.query_all_valid_paths()?;
        out.messages
            .push((false, "checking path existence...".into()));
        let missing: BTreeSet<StorePath> = valid
            .iter()
            .filter(|p| std::fs::symlink_metadata(self.layout.real_path(p)).is_err())
            .cloned()
            .collect();
        // A missing path may go when every path referring to it goes too: a fixed point over
        // the missing ones (Nix's recursion over referrers decides the same).
        let mut removable: BTreeSet<StorePath> = BTreeSet::new();
        loop {
            let mut grew = false;
            for path in &missing {
                if removable.contains(path) {
                    continue;
                }
                let referrers = self.db.query_referrers(path)?;
                if referrers.iter().all(|r| r == path || removable.contains(r)) {
                    removable.insert(path.clone());
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        for path in &missing {
            let shown = store_dir.print(path);
            if removable.contains(path) {
                out.messages.push((
                    false,
                    format!("path '{shown}' disappeared, removing from database..."),
                ));
            } else {
                out.messages.push(error(format!(
                    "path '{shown}' disappeared, but it still has valid referrers!"
                )));
                if repair {
                    out.to_repair.push(path.clone());
                } else {
                    out.errors_found = true;
                }
            }
        }
        if !removable.is_empty() {
            // Referrers first: the schema refuses to drop a path still referred to.
            let mut left = removable.clone();
            while !left.is_empty() {
                let mut next = Vec::new();
                for path in &left {
                    let referrers = self.db.query_referrers(path)?;
                    if referrers.iter().all(|r| r == path || !left.contains(r)) {
                        next.push(path.clone());
                    }
                }
                if next.is_empty() {
                    // A cycle among them: the removable set has none (see above).
                    break;
                }
                for path in &next {
                    left.remove(path);
                }
                out.invalidated.extend(next);
            }
            self.db.invalidate_paths(&out.invalidated)?;
        }
        let present: Vec<&StorePath> = valid.iter().filter(|p| !missing.contains(*p)).collect();
        for path in &present {
            let Some(info) = self.db.query_path_info(path)? else {
                continue;
            };
            for reference in &info.references {
                if !self.db.is_valid(reference)? {
                    out.messages.push(error(format!(
                        "path '{}' refers to '{}', which is not valid",
                        store_dir.print(path),
                        store_dir.print(reference)
                    )));
                    out.errors_found = true;
                }
            }
        }
        if check_contents {
            out.messages
                .push((false, "checking store hashes...".into()));
            for path in present {
                let Some(info) = self.db.query_path_info(path)? else {
                    continue;
                };
                let shown = store_dir.print(path);
                let mut hasher = Hasher::new(info.nar_hash.algo());
                let current =
                    match ward_proto::nar::dump_path(&self.layout.real_path(path), &mut hasher) {
                        Ok(_) => hasher.finish(),
                        Err(e) => {
                            out.messages
                                .push(error(format!("path '{shown}' cannot be read: {e}")));
                            out.errors_found = true;
                            continue;
                        }
                    };
                if current != info.nar_hash {
                    out.messages.push(error(format!(
                        "path '{shown}' was modified! expected hash '{}', got '{}'",
                        info.nar_hash.to_prefixed_nix32(),
                        current.to_prefixed_nix32()
                    )));
                    if repair {
                        out.to_repair.push(path.clone());
                    } else {
                        out.errors_found = true;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::add::AddOptions;
    use crate::db::DbSettings;
    use crate::layout::CreateOptions;
    use crate::test_support::new_layout;
    use std::os::unix::fs::PermissionsExt;
    use ward_proto::content_address::ContentAddressMethod;
    use ward_proto::hash::HashAlgo;

    fn joined(v: &Verification) -> String {
        let lines: Vec<String> = v
            .messages
            .iter()
            .map(|(error, text)| format!("{}{text}", if *error { "E " } else { "I " }))
            .collect();
        lines.join("\n")
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = new_layout(tmp.path());
        let store = Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap();
        (tmp, store)
    }

    fn add_file(store: &mut Store, name: &str, text: &[u8], refs: &[&StorePath]) -> StorePath {
        let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
        store
            .add_from_content(
                name,
                ContentAddressMethod::Text,
                HashAlgo::Sha256,
                &refs,
                text,
                AddOptions::default(),
            )
            .unwrap()
            .0
            .path
    }

    fn remove_real(store: &Store, path: &StorePath) {
        std::fs::remove_file(store.layout.real_path(path)).unwrap();
    }

    fn overwrite_real(store: &Store, path: &StorePath, text: &[u8]) {
        let real = store.layout.real_path(path);
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&real, text).unwrap();
    }

    #[test]
    fn missing_modified_and_intact_paths() {
        let (_tmp, mut store) = temp_store();
        let a = add_file(&mut store, "a", b"aaa\n", &[]);
        let b = add_file(&mut store, "b", b"bbb\n", &[&a]);
        let c = add_file(&mut store, "c", b"ccc\n", &[]);
        let lone = add_file(&mut store, "lone", b"lone\n", &[]);
        // Intact: nothing to say but progress.
        let v = store.verify(true, false).unwrap();
        assert!(!v.errors_found, "{:?}", v.messages);
        assert!(v.invalidated.is_empty());

        // `a` is gone but `b` refers to it; `lone` is gone and referred to by nothing; `c`
        // was changed by hand.
        remove_real(&store, &a);
        remove_real(&store, &lone);
        overwrite_real(&store, &c, b"CCC\n");
        let v = store.verify(false, false).unwrap();
        assert!(v.errors_found);
        let text = joined(&v);
        assert!(
            text.contains("disappeared, but it still has valid referrers!"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{}' disappeared, removing from database...",
                lone.base_name()
            )),
            "{text}"
        );
        assert_eq!(v.invalidated, vec![lone.clone()]);
        assert!(!store.db().is_valid(&lone).unwrap());
        assert!(store.db().is_valid(&a).unwrap() && store.db().is_valid(&b).unwrap());
        assert!(
            !text.contains("was modified"),
            "contents only when asked: {text}"
        );

        let v = store.verify(true, true).unwrap();
        let text = joined(&v);
        assert!(
            text.contains(&format!(
                "{}' was modified! expected hash 'sha256:",
                c.base_name()
            )),
            "{text}"
        );
        // Repair is the frontend's: the broken paths (`a` is gone but `b` refers to it, `c`
        // was modified) are handed to it, not counted as errors.
        assert_eq!(v.to_repair, vec![a.clone(), c.clone()]);
        assert!(!v.errors_found, "{text}");
        let v = store.verify(true, false).unwrap();
        assert!(v.errors_found && v.to_repair.is_empty());
        // Once `b` is gone too, both go.
        remove_real(&store, &b);
        let v = store.verify(false, false).unwrap();
        let mut gone = v.invalidated.clone();
        gone.sort();
        let mut want = vec![a.clone(), b.clone()];
        want.sort();
        assert_eq!(gone, want, "{:?}", v.messages);
    }
}
