//! `nix-store --add` and `--add-fixed`: ward must give the store path real Nix gives, and put
//! the same bytes, modes and times on disk.

use ward_e2e_tests::{inputs, nar, Fixture};

#[test]
fn add_file_gives_the_same_path_as_real_nix() {
    let Some(f) = Fixture::single_user("add_file_gives_the_same_path_as_real_nix") else {
        return;
    };
    let input = inputs::file(&f.env.dir("in"), "hello.txt", b"hello\n");
    let ward_path = f.ward.add(&[&input]).remove(0);
    let real_path = f.reference.client.add(&[&input]).remove(0);
    assert_eq!(
        ward_path,
        real_path,
        "ward and real Nix disagree on the store path of {}",
        input.display()
    );
    // Independently computed as well.
    let (expected, _) = nar::source_path(
        "/nix/store",
        "hello.txt",
        &nar::nar_of_file(b"hello\n", false),
    );
    assert_eq!(ward_path, expected);
    inputs::assert_same_tree(&f.real_path(&ward_path), &f.reference.real_path(&real_path));
}

#[test]
fn add_tree_with_executable_and_symlink_gives_the_same_path_as_real_nix() {
    let Some(f) = Fixture::single_user(
        "add_tree_with_executable_and_symlink_gives_the_same_path_as_real_nix",
    ) else {
        return;
    };
    let input = inputs::tree(&f.env.dir("in"), "tree", "add-tree");
    let ward_path = f.ward.add(&[&input]).remove(0);
    let real_path = f.reference.client.add(&[&input]).remove(0);
    assert_eq!(ward_path, real_path);
    let nar = nar::dump_path(&input).expect("dumping the input");
    assert_eq!(ward_path, nar::source_path("/nix/store", "tree", &nar).0);
    // Contents, the executable bit, the symlink, the empty directory, modes and mtimes.
    inputs::assert_same_tree(&f.real_path(&ward_path), &f.reference.real_path(&real_path));
}

#[test]
fn add_several_inputs_in_one_command() {
    let Some(f) = Fixture::single_user("add_several_inputs_in_one_command") else {
        return;
    };
    let dir = f.env.dir("in");
    let a = inputs::file(&dir, "a.txt", b"first\n");
    let b = inputs::executable(&dir, "b.sh", b"#!/bin/sh\nexit 0\n");
    let c = inputs::tree(&dir, "c", "several");
    let ward_paths = f.ward.add(&[&a, &b, &c]);
    let real_paths = f.reference.client.add(&[&a, &b, &c]);
    assert_eq!(ward_paths, real_paths);
    for (w, r) in ward_paths.iter().zip(&real_paths) {
        inputs::assert_same_tree(&f.real_path(w), &f.reference.real_path(r));
    }
}

#[test]
fn adding_the_same_input_twice_changes_nothing() {
    let Some(f) = Fixture::single_user("adding_the_same_input_twice_changes_nothing") else {
        return;
    };
    let input = inputs::tree(&f.env.dir("in"), "tree", "twice");
    let first = f.ward.add(&[&input]).remove(0);
    let before = f.snapshot();
    let second = f.ward.add(&[&input]).remove(0);
    assert_eq!(first, second);
    before.assert_unchanged(f.daemon.layout(), "adding an already valid path again");
}

#[test]
fn add_fixed_sha256_flat_matches_real_nix() {
    let Some(f) = Fixture::single_user("add_fixed_sha256_flat_matches_real_nix") else {
        return;
    };
    let input = inputs::file(&f.env.dir("in"), "fixed.txt", b"fixed content\n");
    let ward_path = f
        .ward
        .ok(
            "nix-store",
            &["--add-fixed", "sha256", input.to_str().unwrap()],
        )
        .single_line();
    let real_path = f
        .reference
        .client
        .ok(
            "nix-store",
            &["--add-fixed", "sha256", input.to_str().unwrap()],
        )
        .single_line();
    assert_eq!(ward_path, real_path);
    let info = f.ward.path_info_json(&ward_path);
    let expected_ca = format!(
        "fixed:sha256:{}",
        nar::nix32(&nar::sha256(b"fixed content\n"))
    );
    assert_eq!(
        info["ca"],
        expected_ca.as_str(),
        "ca of {ward_path}: {info}"
    );
    inputs::assert_same_tree(&f.real_path(&ward_path), &f.reference.real_path(&real_path));
}

#[test]
fn add_fixed_sha256_recursive_matches_real_nix() {
    let Some(f) = Fixture::single_user("add_fixed_sha256_recursive_matches_real_nix") else {
        return;
    };
    let input = inputs::tree(&f.env.dir("in"), "rtree", "recursive");
    let arg = input.to_str().unwrap();
    let ward_path = f
        .ward
        .ok("nix-store", &["--add-fixed", "--recursive", "sha256", arg])
        .single_line();
    let real_path = f
        .reference
        .client
        .ok("nix-store", &["--add-fixed", "--recursive", "sha256", arg])
        .single_line();
    assert_eq!(ward_path, real_path);
    // NAR + SHA-256 is exactly what `nix-store --add` does.
    let nar = nar::dump_path(&input).expect("dump");
    let (expected_path, expected_ca) = nar::source_path("/nix/store", "rtree", &nar);
    assert_eq!(ward_path, expected_path);
    assert_eq!(
        f.ward.path_info_json(&ward_path)["ca"],
        expected_ca.as_str()
    );
    inputs::assert_same_tree(&f.real_path(&ward_path), &f.reference.real_path(&real_path));
}

#[test]
fn add_fixed_with_other_algorithms_matches_real_nix() {
    let Some(f) = Fixture::single_user("add_fixed_with_other_algorithms_matches_real_nix") else {
        return;
    };
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "algo.txt", b"hashed with other algorithms\n");
    let tree = inputs::tree(&dir, "algotree", "algorithms");
    let cases: [&[&str]; 4] = [
        &["--add-fixed", "sha1", file.to_str().unwrap()],
        &["--add-fixed", "sha512", file.to_str().unwrap()],
        &["--add-fixed", "--recursive", "sha1", tree.to_str().unwrap()],
        &[
            "--add-fixed",
            "--recursive",
            "sha512",
            tree.to_str().unwrap(),
        ],
    ];
    for args in cases {
        let ward_path = f.ward.ok("nix-store", args).single_line();
        let real_path = f.reference.client.ok("nix-store", args).single_line();
        assert_eq!(ward_path, real_path, "nix-store {}", args.join(" "));
        let ward_ca = f.ward.path_info_json(&ward_path)["ca"].clone();
        let real_ca = f.reference.client.path_info_json(&real_path)["ca"].clone();
        assert_eq!(ward_ca, real_ca, "ca after nix-store {}", args.join(" "));
        inputs::assert_same_tree(&f.real_path(&ward_path), &f.reference.real_path(&real_path));
    }
}
