//! `nix-store --verify` through ward with Debian's Nix 2.8 client: an intact store verifies;
//! a path changed by hand is named with both hashes by `--check-contents` (and only then); a
//! path whose files are gone and that nothing refers to is removed from the database; repair
//! is refused to untrusted clients with Nix's words.

use std::os::unix::fs::PermissionsExt;

use ward_e2e_tests::{inputs, DaemonOptions, Fixture};

#[test]
fn verify_names_modified_and_vanished_paths() {
    let test = "verify_names_modified_and_vanished_paths";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let kept = f
        .ward
        .add(&[&inputs::file(&dir, "kept.txt", b"left alone\n")])[0]
        .clone();
    let changed = f
        .ward
        .add(&[&inputs::file(&dir, "changed.txt", b"original\n")])[0]
        .clone();
    let vanished = f
        .ward
        .add(&[&inputs::file(&dir, "vanished.txt", b"soon gone\n")])[0]
        .clone();

    let ok = f.ward.run("nix-store", &["--verify", "--check-contents"]);
    assert!(ok.status.success(), "an intact store verifies: {ok}");

    // Changed by hand behind the daemon's back.
    let real = f.real_path(&changed);
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&real, b"tampered\n").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o444)).unwrap();
    let plain = f.ward.run("nix-store", &["--verify"]);
    assert!(
        plain.status.success() && !plain.stderr.contains("was modified"),
        "without --check-contents only existence is checked: {plain}"
    );
    let checked = f.ward.run("nix-store", &["--verify", "--check-contents"]);
    assert!(!checked.status.success(), "{checked}");
    assert!(
        checked.stderr.contains(&format!(
            "path '{changed}' was modified! expected hash 'sha256:"
        )) && checked.stderr.contains("', got 'sha256:"),
        "{checked}"
    );
    assert!(
        !checked.stderr.contains(&kept),
        "only the changed path is named: {checked}"
    );

    // Gone altogether, and nothing refers to it: dropped from the database.
    std::fs::remove_file(f.real_path(&vanished)).unwrap();
    let out = f.ward.run("nix-store", &["--verify"]);
    assert!(
        out.stderr.contains(&format!(
            "path '{vanished}' disappeared, removing from database..."
        )),
        "{out}"
    );
    let valid = f.ward.all_valid_paths();
    assert!(!valid.contains(&vanished), "{valid:?}");
    assert!(
        valid.contains(&kept) && valid.contains(&changed),
        "{valid:?}"
    );
}

#[test]
fn verify_repair_is_refused_to_untrusted_clients() {
    let test = "verify_repair_is_refused_to_untrusted_clients";
    let Some(f) = Fixture::start(test, DaemonOptions::single_user().untrusted()) else {
        return;
    };
    f.populate();
    let out = f.ward.run("nix-store", &["--verify", "--repair"]);
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr
            .contains("you are not privileged to repair paths"),
        "{out}"
    );
    // Checking without repair is open to everyone.
    let out = f.ward.run("nix-store", &["--verify", "--check-contents"]);
    assert!(out.status.success(), "{out}");
}
