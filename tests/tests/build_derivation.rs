//! BuildDerivation, spoken on the wire (the Nix CLI sends it only to remote builders). Nix
//! allows an untrusted client only derivations whose outputs are fixed, and trusts nothing it
//! says about paths: the derivation's own path and its outputs' paths are recomputed, and the
//! derivation is written to the store under its real path. A trusted client may build an
//! input-addressed derivation that is not in the store. EnsurePath, which only substitutes.

use ward_e2e_tests::builds::{drv, expr, read_output, start};
use ward_e2e_tests::wire::{BasicDerivation, WireError, WorkerClient};
use ward_e2e_tests::{DaemonOptions, Fixture};

/// Instantiates `body` in the reference store of real Nix (not in ward's) and returns the
/// derivation's path and the derivation as BuildDerivation sends it.
fn instantiate_elsewhere(f: &Fixture, name: &str, body: &str) -> (String, BasicDerivation) {
    let file = expr(f, name, body);
    let client = &f.reference.client;
    let drv_path = client
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let json = client
        .ok(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "show-derivation",
                &drv_path,
            ],
        )
        .json();
    let basic = BasicDerivation::from_show_derivation(&json, &drv_path);
    (drv_path, basic)
}

/// `path` with its hash part replaced: a well-formed store path naming nothing real.
fn forged(path: &str) -> String {
    let (dir, base) = path.rsplit_once('/').unwrap();
    let (hash, name) = base.split_once('-').unwrap();
    let other = if hash.starts_with('0') { "1" } else { "0" };
    format!("{dir}/{}-{name}", other.repeat(hash.len()))
}

#[test]
fn untrusted_build_derivation_is_limited_to_fixed_outputs_and_trusts_no_path() {
    let test = "untrusted_build_derivation_is_limited_to_fixed_outputs_and_trusts_no_path";
    let Some(f) = start(test, DaemonOptions::multi_user().untrusted()) else {
        return;
    };
    let socket = f.daemon.layout().socket.clone();
    let mut client = WorkerClient::handshake(&socket).expect("handshake");
    client.set_options().expect("SetOptions");

    // An input-addressed derivation: refused before anything runs, with Nix's words, and
    // the connection goes on serving.
    let (ia_path, ia) = instantiate_elsewhere(
        &f,
        "input-addressed",
        &drv("input-addressed", "echo built > $out", ""),
    );
    let ia_out = ia.outputs[0].1.clone();
    let before = f.ward.all_valid_paths();
    match client.build_derivation(&ia_path, &ia, 0) {
        Err(WireError::Daemon { message }) => assert!(
            message.contains("you are not privileged to build input-addressed derivations"),
            "{message}"
        ),
        other => panic!("an untrusted input-addressed BuildDerivation was not refused: {other:?}"),
    }
    assert!(!client
        .is_valid_path(&ia_out)
        .expect("IsValidPath after the refusal"));
    assert_eq!(
        f.ward.all_valid_paths(),
        before,
        "the refusal registered nothing"
    );

    // A fixed-output derivation sent under a forged derivation path, with a forged output
    // path: it builds, but under the real paths only.
    let (fod_path, mut fod) = instantiate_elsewhere(
        &f,
        "fixed",
        &drv(
            "fixed",
            "echo fixed > $out",
            // sha256 of "fixed\n"
            r#"outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534";"#,
        ),
    );
    let real_out = fod.outputs[0].1.clone();
    let forged_drv = forged(&fod_path);
    let forged_out = forged(&real_out);
    fod.outputs[0].1 = forged_out.clone();
    let result = client
        .build_derivation(&forged_drv, &fod, 0)
        .expect("BuildDerivation of a fixed-output derivation");
    if result.status != 0 {
        panic!(
            "the fixed-output build failed (status {}): {}\n{}",
            result.status,
            result.error_msg,
            f.daemon.log_tail()
        );
    }
    assert_eq!(result.times_built, 1);
    assert!(!result.is_non_deterministic);
    // Realisations name the output by its base name, as Nix's JSON does.
    let real_base = real_out.rsplit_once('/').unwrap().1;
    let reported: Vec<String> = result
        .built_outputs
        .iter()
        .map(|(id, r)| {
            assert!(id.ends_with("!out"), "{id}");
            let json: serde_json::Value = serde_json::from_str(r).expect("realisation JSON");
            json["outPath"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        reported,
        [real_base],
        "the built output, under its real path"
    );
    assert_eq!(read_output(&f, &real_out), "fixed\n");
    for forged_path in [&forged_drv, &forged_out] {
        assert!(
            !client.is_valid_path(forged_path).expect("IsValidPath"),
            "{forged_path} must not become valid"
        );
    }
    // As Nix does, the derivation was written to the store under its own path, and it is
    // the output's deriver.
    assert!(client.is_valid_path(&fod_path).expect("IsValidPath"));
    let info = client
        .query_path_info(&real_out)
        .expect("QueryPathInfo")
        .expect("the output is valid");
    assert_eq!(info.deriver, fod_path);
    assert!(info.ca.starts_with("fixed:sha256:"), "{}", info.ca);
    assert!(!f.real_path(&forged_out).exists());
}

#[test]
fn trusted_build_derivation_builds_a_derivation_that_is_not_in_the_store() {
    let test = "trusted_build_derivation_builds_a_derivation_that_is_not_in_the_store";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let mut client = WorkerClient::handshake(&f.daemon.layout().socket).expect("handshake");
    client.set_options().expect("SetOptions");
    // As a remote builder gets it: an input-addressed derivation that only the client has.
    let (drv_path, basic) = instantiate_elsewhere(
        &f,
        "remote",
        &drv("remote", "echo built remotely > $out", ""),
    );
    let out = basic.outputs[0].1.clone();
    assert!(!client.is_valid_path(&drv_path).expect("IsValidPath"));
    let result = client
        .build_derivation(&drv_path, &basic, 0)
        .expect("BuildDerivation");
    assert_eq!(
        (result.status, result.error_msg.as_str()),
        (0, ""),
        "{}",
        f.daemon.log_tail()
    );
    assert_eq!(read_output(&f, &out), "built remotely\n");
    let info = client
        .query_path_info(&out)
        .expect("QueryPathInfo")
        .expect("the output is valid");
    // Without input derivations the derivation sent is the one the client named, so the
    // deriver is the path the client named. Unlike Nix (which writes only an untrusted
    // client's), ward writes it to the store: the store-writer registers outputs only of a
    // valid derivation that declares them (ARCHITECTURE.md, "Builds").
    assert_eq!(
        info.deriver, drv_path,
        "the deriver is the path the client named"
    );
    assert!(client.is_valid_path(&drv_path).expect("IsValidPath"));
    // Built again: already valid.
    let again = client
        .build_derivation(&drv_path, &basic, 0)
        .expect("BuildDerivation again");
    assert_eq!(again.status, 2, "AlreadyValid: {again:?}");
}

#[test]
fn ensure_path_takes_valid_paths_and_names_the_missing_one() {
    let test = "ensure_path_takes_valid_paths_and_names_the_missing_one";
    let Some(f) = start(test, DaemonOptions::multi_user().untrusted()) else {
        return;
    };
    let valid = f.populate();
    let mut client = WorkerClient::handshake(&f.daemon.layout().socket).expect("handshake");
    client.set_options().expect("SetOptions");
    client
        .ensure_path(&valid)
        .expect("EnsurePath of a valid path");
    // Not valid, and nothing can substitute it (EnsurePath never builds): Nix's words.
    let missing = forged(&valid);
    match client.ensure_path(&missing) {
        Err(WireError::Daemon { message }) => assert_eq!(
            message,
            format!("path '{missing}' does not exist and cannot be created")
        ),
        other => panic!("EnsurePath of {missing}: {other:?}"),
    }
    // The connection goes on.
    assert!(client.is_valid_path(&valid).expect("IsValidPath"));
}
