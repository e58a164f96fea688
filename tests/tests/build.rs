//! Builds through ward with Debian's Nix 2.8 client (`nix-build`, `nix-store --realise`,
//! `nix build`), sandboxed, with Debian's static busybox as the sandbox's `/bin/sh`.
//!
//! Every derivation here is written as a Nix expression and built by the real client; the
//! results are checked on disk and in the database. Hostile builders try to get out and the
//! test asserts that they failed and that the host is unchanged.

use std::fs;

use ward_e2e_tests::builds::{build, drv, expr, read_output, start};
use ward_e2e_tests::DaemonOptions;

#[test]
fn nix_build_builds_a_trivial_derivation_in_the_sandbox() {
    let test = "nix_build_builds_a_trivial_derivation_in_the_sandbox";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(
        &f,
        "trivial",
        &drv("trivial", "echo hello from the sandbox > $out", ""),
    );
    let out = build(&f.ward, &file);
    assert!(out.ends_with("-trivial"), "{out}");
    assert_eq!(read_output(&f, &out), "hello from the sandbox\n");
    // Registered with its deriver, canonical metadata, and no references.
    let info = f.ward.path_info_json(&out);
    assert!(
        info["deriver"]
            .as_str()
            .unwrap_or("")
            .ends_with("-trivial.drv"),
        "{info}"
    );
    assert_eq!(
        info["references"].as_array().map(Vec::len),
        Some(0),
        "{info}"
    );
    let meta = fs::symlink_metadata(f.daemon.layout().real_path(&out)).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o7777, 0o444, "mode of {out}");
    assert_eq!(meta.mtime(), 1, "mtime of {out}");
    // A second build finds it valid and builds nothing.
    let again = f
        .ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    assert_eq!(again.single_line(), out);
    assert!(
        !again.stderr.clone().contains("building"),
        "{}",
        again.stderr.clone()
    );
}

#[test]
fn build_logs_reach_the_client_and_the_log_store() {
    let test = "build_logs_reach_the_client_and_the_log_store";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(
        &f,
        "logged",
        &drv(
            "logged",
            "echo line-one; echo line-two >&2; echo done > $out",
            "",
        ),
    );
    let run = f
        .ward
        .ok("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let stderr = run.stderr.clone();
    assert!(
        stderr.contains("line-one") && stderr.contains("line-two"),
        "{stderr}"
    );
    let out = run.single_line();
    let log = f.ward.ok("nix-store", &["--read-log", &out]).stdout_text();
    assert_eq!(log, "line-one\nline-two\n");
}

#[test]
fn a_three_step_chain_with_references_and_multiple_outputs() {
    let test = "a_three_step_chain_with_references_and_multiple_outputs";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let body = r#"
let
  sh = "/bin/sh";
  a = derivation {
    name = "chain-a"; system = builtins.currentSystem; builder = sh;
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo a-out > $out; mkdir $dev; echo $out > $dev/points-to-out" ];
  };
  b = derivation {
    name = "chain-b"; system = builtins.currentSystem; builder = sh;
    args = [ "-c" "echo ${a.dev} > $out" ];
  };
in derivation {
  name = "chain-c"; system = builtins.currentSystem; builder = sh;
  args = [ "-c" "cat ${b} > $out; echo ${a} >> $out" ];
}
"#;
    let file = expr(&f, "chain", body);
    let out = build(&f.ward, &file);
    let text = read_output(&f, &out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("-chain-a-dev"), "{text}");
    assert!(lines[1].ends_with("-chain-a"), "{text}");
    // References were found by scanning: c → b? No: c mentions a.dev and a; b's path is not
    // in c's output. The closure follows the references recorded for each output.
    let refs = f
        .ward
        .ok("nix-store", &["-q", "--references", &out])
        .lines();
    assert!(refs.iter().any(|r| r.ends_with("-chain-a")), "{refs:?}");
    assert!(refs.iter().any(|r| r.ends_with("-chain-a-dev")), "{refs:?}");
    assert!(!refs.iter().any(|r| r.ends_with("-chain-b")), "{refs:?}");
    let dev = lines[0];
    let dev_refs = f.ward.ok("nix-store", &["-q", "--references", dev]).lines();
    assert_eq!(dev_refs, vec![lines[1].to_string()], "references of {dev}");
}

#[test]
fn a_failing_builder_reports_its_exit_code_and_log_tail() {
    let test = "a_failing_builder_reports_its_exit_code_and_log_tail";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(
        &f,
        "failing",
        &drv("failing", "echo about to fail; exit 3", ""),
    );
    // Instantiated first, so that the snapshot holds the .drv and the build adds nothing.
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let before = f.ward.all_valid_paths();
    let run = f.ward.fails("nix-store", &["--realise", &drv_path]);
    let stderr = run.stderr.clone();
    assert!(stderr.contains("failed with exit code 3"), "{stderr}");
    assert!(stderr.contains("> about to fail"), "{stderr}");
    let after = f.ward.all_valid_paths();
    assert_eq!(before, after, "nothing may be registered by a failed build");
}

#[test]
fn an_output_that_is_not_produced_is_a_clear_error() {
    let test = "an_output_that_is_not_produced_is_a_clear_error";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(&f, "lazy", &drv("lazy", "echo nothing", ""));
    let stderr = f
        .ward
        .fails("nix-build", &[file.to_str().unwrap(), "--no-out-link"])
        .stderr
        .clone();
    assert!(
        stderr.contains("failed to produce output path for output 'out'"),
        "{stderr}"
    );
}

#[test]
fn fixed_output_derivations_are_checked_flat_and_recursive() {
    let test = "fixed_output_derivations_are_checked_flat_and_recursive";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    // sha256 of "fixed\n".
    let flat = expr(
        &f,
        "flat",
        &drv(
            "fixed-flat",
            "echo fixed > $out",
            r#"outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "sha256-DDBxQY5jVuYUiYyE7QZMqV6IVRvAgRtTS98ZUuza5TQ=";"#,
        ),
    );
    let run = f
        .ward
        .run("nix-build", &[flat.to_str().unwrap(), "--no-out-link"]);
    if !run.status.success() {
        // The hash above is only right if the test's arithmetic is: print what Nix said.
        panic!("flat FOD: {}", run.stderr.clone());
    }
    let out = run.single_line();
    assert_eq!(read_output(&f, &out), "fixed\n");
    let info = f.ward.path_info_json(&out);
    assert!(
        info["ca"]
            .as_str()
            .unwrap_or("")
            .starts_with("fixed:sha256:"),
        "{info}"
    );

    let wrong = expr(
        &f,
        "wrong",
        &drv(
            "fixed-wrong",
            "echo not what was promised > $out",
            r#"outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "sha256-DDBxQY5jVuYUiYyE7QZMqV6IVRvAgRtTS98ZUuza5TQ=";"#,
        ),
    );
    let stderr = f
        .ward
        .fails("nix-build", &[wrong.to_str().unwrap(), "--no-out-link"])
        .stderr
        .clone();
    assert!(stderr.contains("hash mismatch"), "{stderr}");
    assert!(
        stderr.contains("specified") && stderr.contains("got"),
        "{stderr}"
    );

    // Recursive: the hash is of the output's NAR, here a directory with a file and a link.
    use ward_e2e_tests::nar::{self, NarNode};
    let tree = NarNode::Directory(vec![
        (
            b"data".to_vec(),
            NarNode::File {
                contents: b"recursive\n".to_vec(),
                executable: false,
            },
        ),
        (b"link".to_vec(), NarNode::Symlink(b"data".to_vec())),
    ]);
    let nar_hash = nar::base16(&nar::sha256(&tree.to_nar()));
    let recursive_attrs = |hash: &str| {
        format!(
            r#"outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "{hash}";"#
        )
    };
    let script = "mkdir $out; echo recursive > $out/data; ln -s data $out/link";
    let recursive = expr(
        &f,
        "recursive",
        &drv("fixed-recursive", script, &recursive_attrs(&nar_hash)),
    );
    let run = f
        .ward
        .run("nix-build", &[recursive.to_str().unwrap(), "--no-out-link"]);
    assert!(
        run.status.success(),
        "recursive FOD: {}",
        run.stderr.clone()
    );
    let out = run.single_line();
    let real = f.daemon.layout().real_path(&out);
    assert_eq!(nar::dump_path(&real).unwrap(), tree.to_nar());
    let info = f.ward.path_info_json(&out);
    assert!(
        info["ca"]
            .as_str()
            .unwrap_or("")
            .starts_with("fixed:r:sha256:"),
        "{info}"
    );
    // The same tree with other contents is refused, naming both hashes.
    let wrong_recursive = expr(
        &f,
        "wrong-recursive",
        &drv(
            "fixed-recursive-wrong",
            "mkdir $out; echo other > $out/data; ln -s data $out/link",
            &recursive_attrs(&nar_hash),
        ),
    );
    let stderr = f
        .ward
        .fails(
            "nix-build",
            &[wrong_recursive.to_str().unwrap(), "--no-out-link"],
        )
        .stderr
        .clone();
    assert!(
        stderr.contains("hash mismatch") && stderr.contains("specified") && stderr.contains("got"),
        "{stderr}"
    );
}

#[test]
fn an_optional_sandbox_path_that_is_missing_is_left_out() {
    let test = "an_optional_sandbox_path_that_is_missing_is_left_out";
    if !ward_e2e_tests::builds::have_busybox(test) {
        return;
    }
    // After the sandbox's own `sandbox-paths` line, which would replace an earlier one.
    let options = ward_e2e_tests::builds::sandboxed(DaemonOptions::single_user()).conf(format!(
        "extra-sandbox-paths = /ward-e2e-absent-{}? /ward-hostname=/etc/hostname?",
        std::process::id()
    ));
    let Some(f) = ward_e2e_tests::Fixture::start(test, options) else {
        return;
    };
    let file = expr(
        &f,
        "optional",
        &drv(
            "optional",
            &format!(
                "if test -e /ward-e2e-absent-{}; then echo present; else echo absent; fi > $out; \
                 if test -e /ward-hostname; then echo bound >> $out; fi",
                std::process::id()
            ),
            "",
        ),
    );
    let out = build(&f.ward, &file);
    let text = read_output(&f, &out);
    assert!(text.starts_with("absent\n"), "{text}");
    if std::path::Path::new("/etc/hostname").exists() {
        assert!(
            text.contains("bound"),
            "an optional path that exists is bound: {text}"
        );
    }
}
