//! Queries: `nix-store -q --references/--referrers/--requisites/--hash/--size/--deriver` and
//! `nix path-info --json`, compared with real Nix's answers for the same paths.

use ward_e2e_tests::wire::WorkerClient;
use ward_e2e_tests::{
    inputs, known_nix_daemon_deviation, nar, Fixture, ImportedGraph, NixClient, SigningKey,
};

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn query(client: &NixClient, flag: &str, path: &str) -> Vec<String> {
    sorted(client.ok("nix-store", &["-q", flag, path]).lines())
}

#[test]
fn references_referrers_and_requisites_match_real_nix() {
    let Some(f) = Fixture::single_user("references_referrers_and_requisites_match_real_nix") else {
        return;
    };
    let g = ImportedGraph::new(&f.env.dir("in"), "/nix/store", "query");
    g.import(&f.ward);
    g.import(&f.reference.client);
    let (a, b, c) = (g.a.clone(), g.b.clone(), g.c.clone());
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("--references", &a, vec![]),
        ("--references", &b, vec![a.clone()]),
        ("--references", &c, sorted(vec![b.clone(), c.clone()])),
        ("--referrers", &a, vec![b.clone()]),
        ("--referrers", &b, vec![c.clone()]),
        ("--referrers", &c, vec![c.clone()]),
        (
            "--requisites",
            &c,
            sorted(vec![a.clone(), b.clone(), c.clone()]),
        ),
        ("--requisites", &b, sorted(vec![a.clone(), b.clone()])),
        (
            "--referrers-closure",
            &a,
            sorted(vec![a.clone(), b.clone(), c.clone()]),
        ),
    ];
    for (flag, path, expected) in cases {
        let from_ward = query(&f.ward, flag, path);
        let from_nix = query(&f.reference.client, flag, path);
        assert_eq!(
            from_nix, expected,
            "real Nix's nix-store -q {flag} {path} (test is wrong)"
        );
        assert_eq!(from_ward, expected, "ward's nix-store -q {flag} {path}");
    }
}

#[test]
fn hash_size_and_deriver_match_real_nix() {
    let Some(f) = Fixture::single_user("hash_size_and_deriver_match_real_nix") else {
        return;
    };
    let g = ImportedGraph::new(&f.env.dir("in"), "/nix/store", "hash");
    g.import(&f.ward);
    g.import(&f.reference.client);
    for (path, nar) in [&g.a, &g.b, &g.c].into_iter().zip(&g.nars) {
        let expected_hash = format!("sha256:{}", nar::nix32(&nar::sha256(nar)));
        assert_eq!(
            f.ward
                .ok("nix-store", &["-q", "--hash", path])
                .single_line(),
            expected_hash
        );
        assert_eq!(
            f.ward
                .ok("nix-store", &["-q", "--size", path])
                .single_line(),
            nar.len().to_string(),
            "nar size of {path}"
        );
        for flag in ["--hash", "--size", "--deriver"] {
            assert_eq!(
                f.ward.ok("nix-store", &["-q", flag, path]).lines(),
                f.reference
                    .client
                    .ok("nix-store", &["-q", flag, path])
                    .lines(),
                "nix-store -q {flag} {path}"
            );
        }
    }
    assert_eq!(
        f.ward
            .ok("nix-store", &["-q", "--deriver", &g.b])
            .single_line(),
        g.b_deriver
    );
    // The whole closure printed as a tree is built from the same answers.
    assert_eq!(
        f.ward
            .ok("nix-store", &["-q", "--tree", &g.c])
            .stdout_text(),
        f.reference
            .client
            .ok("nix-store", &["-q", "--tree", &g.c])
            .stdout_text()
    );
}

/// The fields of `nix path-info --json` that do not depend on when the path was registered.
fn stable_fields(info: &serde_json::Value) -> serde_json::Value {
    let mut info = info.clone();
    let object = info.as_object_mut().expect("path-info entry is an object");
    assert!(
        object
            .get("registrationTime")
            .and_then(|t| t.as_u64())
            .is_some_and(|t| t > 0),
        "registrationTime missing or zero in {info:?}"
    );
    object.remove("registrationTime");
    info
}

#[test]
fn path_info_json_matches_real_nix() {
    let Some(f) = Fixture::single_user("path_info_json_matches_real_nix") else {
        return;
    };
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "info.txt", b"path info\n");
    let tree = inputs::tree(&dir, "infotree", "path-info");
    let added = f.ward.add(&[&file, &tree]);
    assert_eq!(added, f.reference.client.add(&[&file, &tree]));
    let g = ImportedGraph::new(&dir, "/nix/store", "path-info");
    g.import(&f.ward);
    g.import(&f.reference.client);

    for path in added.iter().chain([&g.a, &g.b, &g.c]) {
        let ward = f.ward.path_info_json(path);
        let real = f.reference.client.path_info_json(path);
        assert_eq!(
            stable_fields(&ward),
            stable_fields(&real),
            "nix path-info --json {path}"
        );
    }
    // Independently: the added file's hash, size and content address.
    let nar = nar::nar_of_file(b"path info\n", false);
    let info = f.ward.path_info_json(&added[0]);
    assert_eq!(info["narHash"], nar::sri_sha256(&nar).as_str(), "{info}");
    assert_eq!(info["narSize"], nar.len() as u64, "{info}");
    assert_eq!(info["references"], serde_json::json!([]), "{info}");
    assert_eq!(
        info["ca"],
        nar::source_path("/nix/store", "info.txt", &nar).1.as_str(),
        "{info}"
    );
    assert!(
        info.get("signatures").is_none(),
        "unsigned path has signatures: {info}"
    );
    // An imported path: references and deriver, no content address.
    let info = f.ward.path_info_json(&g.b);
    assert_eq!(info["references"], serde_json::json!([g.a]), "{info}");
    assert_eq!(info["deriver"], g.b_deriver.as_str(), "{info}");
    assert!(info.get("ca").is_none(), "imported path has a ca: {info}");
    assert_eq!(
        info["narHash"],
        nar::sri_sha256(&g.nars[1]).as_str(),
        "{info}"
    );

    // The closure.
    let closure = |client: &NixClient| -> Vec<String> {
        let out = client.ok("nix", &["path-info", "--json", "--recursive", &g.c]);
        let mut paths: Vec<String> = out
            .json()
            .as_array()
            .expect("list")
            .iter()
            .map(|e| e["path"].as_str().expect("path").to_string())
            .collect();
        paths.sort();
        paths
    };
    assert_eq!(
        closure(&f.ward),
        sorted(vec![g.a.clone(), g.b.clone(), g.c.clone()])
    );
}

#[test]
fn signatures_added_with_nix_store_sign_match_real_nix() {
    let Some(f) = Fixture::single_user("signatures_added_with_nix_store_sign_match_real_nix")
    else {
        return;
    };
    let dir = f.env.dir("in");
    let key = SigningKey::generate(&f.env, "ward-e2e-1");
    let secret = key.secret_arg();
    let tree = inputs::tree(&dir, "signed", "sign");
    let path = f.ward.add(&[&tree]).remove(0);
    assert_eq!(path, f.reference.client.add(&[&tree]).remove(0));
    let g = ImportedGraph::new(&dir, "/nix/store", "sign");
    g.import(&f.ward);
    g.import(&f.reference.client);
    for p in [&path, &g.b] {
        // Asked once before signing, so ward's path-info cache holds the unsigned info: the
        // signatures must show at once anyway.
        let before = f.ward.path_info_json(p);
        assert!(
            before["signatures"].as_array().is_none_or(Vec::is_empty),
            "signed before signing: {before}"
        );
        f.ward
            .ok("nix", &["store", "sign", "--key-file", secret, p]);
        f.reference
            .client
            .ok("nix", &["store", "sign", "--key-file", secret, p]);
        let ward = f.ward.path_info_json(p);
        let real = f.reference.client.path_info_json(p);
        let sigs = ward["signatures"]
            .as_array()
            .unwrap_or_else(|| panic!("no signatures after signing {p}: {ward}"));
        assert_eq!(sigs.len(), 1, "{ward}");
        assert!(
            sigs[0].as_str().unwrap_or("").starts_with("ward-e2e-1:"),
            "{ward}"
        );
        // Ed25519 is deterministic: the same key over the same fingerprint gives the same bytes.
        assert_eq!(ward["signatures"], real["signatures"], "signatures of {p}");
        // Signing again adds nothing.
        f.ward
            .ok("nix", &["store", "sign", "--key-file", secret, p]);
        assert_eq!(f.ward.path_info_json(p)["signatures"], real["signatures"]);
    }
    // And real Nix's own verifier accepts ward's stored signatures.
    f.ward.ok(
        "nix",
        &[
            "store",
            "verify",
            "--no-contents",
            "--trusted-public-keys",
            &key.public,
            &path,
            &g.b,
        ],
    );
}

#[test]
fn path_info_all_lists_exactly_the_valid_paths() {
    let Some(f) = Fixture::single_user("path_info_all_lists_exactly_the_valid_paths") else {
        return;
    };
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "all.txt", b"listed\n");
    let tree = inputs::tree(&dir, "alltree", "all");
    let mut expected = f.ward.add(&[&file, &tree]);
    let g = ImportedGraph::new(&dir, "/nix/store", "all");
    g.import(&f.ward);
    expected.extend([g.a.clone(), g.b.clone(), g.c.clone()]);
    expected.sort();
    // What the daemon says (QueryAllValidPaths) and what its database holds.
    assert_eq!(f.ward.all_valid_paths(), expected, "nix path-info --all");
    assert_eq!(f.snapshot().paths(), expected, "ValidPaths in db.sqlite");
}

#[test]
fn signatures_added_on_one_connection_show_at_once_on_another() {
    let Some(f) =
        Fixture::single_user("signatures_added_on_one_connection_show_at_once_on_another")
    else {
        return;
    };
    // nix-daemon caches path infos per connection for 30 days, so its connection A would keep
    // answering with the signatures it saw first.
    if known_nix_daemon_deviation(
        "signatures seen by another connection at once",
        "Nix 2.8 serves a connection's earlier QueryPathInfo answer from its own cache",
    ) {
        return;
    }
    let dir = f.env.dir("in");
    let path = f
        .ward
        .add(&[&inputs::file(&dir, "sigs.txt", b"signed later\n")])
        .remove(0);
    let socket = f.daemon.socket();
    let mut reader = WorkerClient::handshake(socket).expect("connect A");
    let mut signer = WorkerClient::handshake(socket).expect("connect B");
    let mut expected: Vec<String> = Vec::new();
    for round in 0..20 {
        // A asks twice (the second answer may come from ward's cache), B signs, A asks again:
        // the new signature must be there at once, well within the cache's lifetime.
        for _ in 0..2 {
            let info = reader
                .query_path_info(&path)
                .expect("QueryPathInfo")
                .expect("valid");
            assert_eq!(sorted(info.sigs), expected, "round {round}, before signing");
        }
        let sig = format!("ward-e2e-k{round:02}:{}==", "A".repeat(86));
        signer
            .add_signatures(&path, std::slice::from_ref(&sig))
            .expect("AddSignatures");
        expected.push(sig);
        expected.sort();
        let info = reader
            .query_path_info(&path)
            .expect("QueryPathInfo")
            .expect("valid");
        assert_eq!(sorted(info.sigs), expected, "round {round}, after signing");
        assert!(reader.is_valid_path(&path).expect("IsValidPath"));
    }
}
