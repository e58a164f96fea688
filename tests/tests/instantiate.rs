//! `nix-instantiate`: ward must write the same `.drv` files (AddToStore `text:sha256` with
//! references) and the same source paths as real Nix.

use std::path::{Path, PathBuf};

use ward_e2e_tests::{inputs, Fixture, NixClient};

/// Writes `expr.nix` (two derivations, a source file and a `builtins.toFile` with a
/// reference) and its source into `dir`.
fn write_expression(dir: &Path) -> PathBuf {
    inputs::file(dir, "hello.txt", b"hello\n");
    inputs::file(
        dir,
        "expr.nix",
        br#"let
  script = builtins.toFile "ward-e2e-script" "cat ${./hello.txt} > $out";
  a = builtins.derivation {
    name = "ward-e2e-a";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo a > $out" ];
    src = ./hello.txt;
  };
in builtins.derivation {
  name = "ward-e2e-b";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ script ];
  inherit a;
  outputs = [ "out" "dev" ];
}
"#,
    )
}

fn sorted_lines(client: &NixClient, args: &[&str]) -> Vec<String> {
    let mut lines = client.ok("nix-store", args).lines();
    lines.sort();
    lines
}

#[test]
fn instantiate_writes_the_same_drv_as_real_nix() {
    let Some(f) = Fixture::single_user("instantiate_writes_the_same_drv_as_real_nix") else {
        return;
    };
    let expr = write_expression(&f.env.dir("expr"));
    let expr = expr.to_str().expect("utf-8");
    let drv = f.ward.ok("nix-instantiate", &[expr]).single_line();
    let real_drv = f
        .reference
        .client
        .ok("nix-instantiate", &[expr])
        .single_line();
    assert_eq!(drv, real_drv, "nix-instantiate {expr}");
    assert!(drv.ends_with("-ward-e2e-b.drv"), "{drv}");

    // Every path it wrote: the .drv files, the source and the toFile script.
    let closure = sorted_lines(&f.ward, &["-q", "--requisites", &drv]);
    assert_eq!(
        closure,
        sorted_lines(&f.reference.client, &["-q", "--requisites", &drv])
    );
    assert_eq!(
        closure.len(),
        4,
        "b.drv, a.drv, hello.txt and the script: {closure:?}"
    );
    for path in &closure {
        inputs::assert_same_tree(&f.real_path(path), &f.reference.real_path(path));
        let mut ours = f.ward.path_info_json(path);
        let mut theirs = f.reference.client.path_info_json(path);
        for info in [&mut ours, &mut theirs] {
            info.as_object_mut()
                .expect("object")
                .remove("registrationTime");
        }
        assert_eq!(ours, theirs, "nix path-info --json {path}");
        if path.ends_with(".drv") {
            assert!(
                ours["ca"]
                    .as_str()
                    .is_some_and(|ca| ca.starts_with("text:sha256:")),
                "a .drv is text-addressed: {ours}"
            );
        }
    }
    for flag in ["--references", "--outputs"] {
        for path in closure.iter().filter(|p| p.ends_with(".drv")) {
            assert_eq!(
                sorted_lines(&f.ward, &["-q", flag, path]),
                sorted_lines(&f.reference.client, &["-q", flag, path]),
                "nix-store -q {flag} {path}"
            );
        }
    }
    let outputs = sorted_lines(&f.ward, &["--query", "--outputs", &drv]);
    assert_eq!(outputs.len(), 2, "outputs out and dev: {outputs:?}");
    assert!(
        outputs.iter().any(|o| o.ends_with("-ward-e2e-b-dev")),
        "{outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| o.ends_with("-ward-e2e-b")),
        "{outputs:?}"
    );
}

#[test]
fn instantiating_again_changes_nothing() {
    let Some(f) = Fixture::single_user("instantiating_again_changes_nothing") else {
        return;
    };
    let expr = write_expression(&f.env.dir("expr"));
    let expr = expr.to_str().expect("utf-8");
    let first = f.ward.ok("nix-instantiate", &[expr]).single_line();
    let before = f.snapshot();
    let second = f.ward.ok("nix-instantiate", &[expr]).single_line();
    assert_eq!(first, second);
    before.assert_unchanged(f.daemon.layout(), "instantiating the same expression again");
}
