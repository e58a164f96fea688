//! Per-user directories (root only): Nix ≤ 2.13 daemons create `profiles/per-user/<user>` and
//! `gcroots/per-user/<user>` for each connecting user, owned by that user, so `nix-env` works
//! for them. In ward the root broker creates them on the frontend's request.

use std::os::unix::fs::MetadataExt;

use ward_e2e_tests::{ensure_test_user, DaemonOptions, Fixture};

#[test]
fn connecting_user_gets_per_user_directories() {
    let test = "connecting_user_gets_per_user_directories";
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let alice = ensure_test_user();
    let state = f.daemon.layout().state_dir.clone();
    for top in ["profiles", "gcroots"] {
        let dir = state.join(top).join("per-user").join(&alice.name);
        assert!(
            !dir.exists(),
            "{} exists before the user connected",
            dir.display()
        );
    }
    let as_alice = f.env.client_as(&f.daemon, &alice);
    as_alice.ok("nix", &["store", "ping"]);
    for top in ["profiles", "gcroots"] {
        let dir = state.join(top).join("per-user").join(&alice.name);
        let meta = std::fs::symlink_metadata(&dir)
            .unwrap_or_else(|e| panic!("{} after alice connected: {e}", dir.display()));
        assert!(meta.is_dir(), "{} is not a directory", dir.display());
        assert_eq!(meta.uid(), alice.uid.as_raw(), "owner of {}", dir.display());
        assert_eq!(meta.mode() & 0o7777, 0o755, "mode of {}", dir.display());
        // Nobody but alice (and root) may write into the parents (attack A1).
        let parent = std::fs::metadata(dir.parent().unwrap()).unwrap();
        assert_eq!(
            parent.mode() & 0o022,
            0,
            "{} is group/world writable",
            dir.display()
        );
    }
}
