//! `nix-store --verify` through ward with Debian's Nix 2.8 client: an intact store verifies;
//! a path changed by hand is named with both hashes by `--check-contents` (and only then); a
//! path whose files are gone and that nothing refers to is removed from the database; repair
//! is refused to untrusted clients with Nix's words. `nix-store --optimise` and `nix store
//! optimise` hard-link identical files and say how much they freed.

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

#[test]
fn optimise_links_identical_files_and_reports_what_it_freed() {
    use std::os::unix::fs::MetadataExt;
    let test = "optimise_links_identical_files_and_reports_what_it_freed";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let contents = vec![b'x'; 3 * 1024 * 1024];
    let one = f.ward.add(&[&inputs::file(&dir, "one.bin", &contents)])[0].clone();
    let two = f.ward.add(&[&inputs::file(&dir, "two.bin", &contents)])[0].clone();
    let other = f
        .ward
        .add(&[&inputs::file(&dir, "other.bin", b"different\n")])[0]
        .clone();
    let ino = |p: &str| std::fs::symlink_metadata(f.real_path(p)).unwrap().ino();
    assert_ne!(ino(&one), ino(&two));

    let out = f.ward.ok("nix-store", &["--optimise"]);
    assert!(
        out.stderr
            .contains("3.00 MiB freed by hard-linking 1 files"),
        "{out}"
    );
    assert_eq!(ino(&one), ino(&two), "identical files are one inode");
    assert_ne!(ino(&one), ino(&other));
    assert_eq!(std::fs::read(f.real_path(&two)).unwrap(), contents);
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);

    // The new CLI's spelling; nothing is left to link.
    let again = f.ward.ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "store",
            "optimise",
        ],
    );
    assert!(
        again
            .stderr
            .contains("0.00 MiB freed by hard-linking 0 files"),
        "{again}"
    );
}

#[test]
fn auto_optimise_store_links_paths_as_they_are_added() {
    use std::os::unix::fs::MetadataExt;
    let test = "auto_optimise_store_links_paths_as_they_are_added";
    let Some(f) = Fixture::start(
        test,
        DaemonOptions::single_user().conf("auto-optimise-store = true"),
    ) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let one = f
        .ward
        .add(&[&inputs::file(&dir, "first.txt", b"twice the same\n")])[0]
        .clone();
    let two = f
        .ward
        .add(&[&inputs::file(&dir, "second.txt", b"twice the same\n")])[0]
        .clone();
    let ino = |p: &str| std::fs::symlink_metadata(f.real_path(p)).unwrap().ino();
    assert_eq!(ino(&one), ino(&two), "linked on addition, no optimise run");
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);
}
