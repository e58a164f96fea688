//! What derivations ask of a build, through Debian's Nix 2.8 client and a sandboxed ward:
//! `passAsFile`, `__structuredAttrs`, `exportReferencesGraph`, reference checks, `--check` of
//! a non-deterministic build, `timeout` and `max-silent-time`, `keep-failed`, two clients
//! building one derivation at once, an untrusted user's build in a multi-user daemon, and the
//! new CLI (`nix build`, `nix log`).

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use ward_e2e_tests::builds::{build, drv, expr, read_output, start};
use ward_e2e_tests::{ensure_test_user, DaemonOptions};

#[test]
fn pass_as_file_structured_attrs_and_export_references_graph() {
    let test = "pass_as_file_structured_attrs_and_export_references_graph";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    // passAsFile: the attribute arrives as a file named by `<attr>Path`.
    let file = expr(
        &f,
        "passasfile",
        &drv(
            "pass-as-file",
            "cat $bigPath > $out; echo \"[$big]\" >> $out",
            r#"big = "a value passed as a file"; passAsFile = [ "big" ];"#,
        ),
    );
    let out = build(&f.ward, &file);
    assert_eq!(read_output(&f, &out), "a value passed as a file[]\n");

    // __structuredAttrs: .attrs.json in the build directory holds every attribute and the
    // output paths.
    let file = expr(
        &f,
        "structured",
        &drv(
            "structured",
            // No `$out` in structured mode: the output path is read from the JSON itself.
            r#"o=$(sed -n 's/.*"out": *"\([^"]*\)".*/\1/p' $NIX_BUILD_TOP/.attrs.json); test -f $NIX_BUILD_TOP/.attrs.sh && cp $NIX_BUILD_TOP/.attrs.json $o"#,
            r#"__structuredAttrs = true; answer = 42; nested = { list = [ "a" "b" ]; };"#,
        ),
    );
    let out = build(&f.ward, &file);
    let attrs: serde_json::Value = serde_json::from_str(&read_output(&f, &out)).unwrap();
    assert_eq!(attrs["answer"], 42, "{attrs}");
    assert_eq!(attrs["nested"]["list"][1], "b", "{attrs}");
    assert_eq!(attrs["outputs"]["out"], out.as_str(), "{attrs}");

    // exportReferencesGraph: the closure of a dependency, in Nix's registration format.
    let body = r#"
let
  dep = derivation {
    name = "graph-dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo leaf > $out" ];
  };
  mid = derivation {
    name = "graph-mid"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${dep} > $out" ];
  };
in derivation {
  name = "graph"; system = builtins.currentSystem; builder = "/bin/sh";
  exportReferencesGraph = [ "closure" mid ];
  args = [ "-c" "cat closure > $out" ];
}
"#;
    let file = expr(&f, "graph", body);
    let out = build(&f.ward, &file);
    let graph = read_output(&f, &out);
    let lines: Vec<&str> = graph.lines().collect();
    let mid = lines
        .iter()
        .find(|l| l.ends_with("-graph-mid"))
        .unwrap_or_else(|| panic!("{graph}"));
    let dep = lines
        .iter()
        .find(|l| l.ends_with("-graph-dep"))
        .unwrap_or_else(|| panic!("{graph}"));
    // Each entry: path, deriver (empty), number of references, the references.
    let at = lines.iter().position(|l| l == mid).unwrap();
    assert_eq!(lines[at + 2], "1", "{graph}");
    assert_eq!(lines[at + 3], *dep, "{graph}");
    // The exported paths are not references of the result (its text names them, though).
    let refs = f
        .ward
        .ok("nix-store", &["-q", "--references", &out])
        .lines();
    assert_eq!(refs.len(), 2, "{refs:?}");
}

#[test]
fn an_allowed_references_violation_fails_and_registers_nothing() {
    let test = "an_allowed_references_violation_fails_and_registers_nothing";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let body = r#"
let
  dep = derivation {
    name = "forbidden-dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo dep > $out" ];
  };
in derivation {
  name = "restricted"; system = builtins.currentSystem; builder = "/bin/sh";
  allowedReferences = [ ];
  args = [ "-c" "echo ${dep} > $out" ];
}
"#;
    let file = expr(&f, "restricted", body);
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let out = f
        .ward
        .ok("nix-store", &["-q", "--outputs", &drv_path])
        .single_line();
    let stderr = f
        .ward
        .fails("nix-store", &["--realise", &drv_path])
        .stderr
        .clone();
    assert!(
        stderr.contains(&format!(
            "output '{out}' is not allowed to refer to the following paths:"
        )) && stderr.contains("-forbidden-dep"),
        "{stderr}"
    );
    let valid = f.ward.all_valid_paths();
    assert!(!valid.contains(&out), "{out} must not be registered");
    assert!(!f.daemon.layout().real_path(&out).exists());
}

#[test]
fn check_rebuilds_and_reports_a_non_deterministic_output() {
    let test = "check_rebuilds_and_reports_a_non_deterministic_output";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let stable = expr(&f, "stable", &drv("stable", "echo same > $out", ""));
    let out = build(&f.ward, &stable);
    let check = f.ward.ok(
        "nix-build",
        &[stable.to_str().unwrap(), "--no-out-link", "--check"],
    );
    assert_eq!(check.single_line(), out);

    let random = expr(
        &f,
        "random",
        &drv("random", "head -c 32 /dev/urandom | od -x > $out", ""),
    );
    let out = build(&f.ward, &random);
    let before = read_output(&f, &out);
    let stderr = f
        .ward
        .fails(
            "nix-build",
            &[random.to_str().unwrap(), "--no-out-link", "--check"],
        )
        .stderr
        .clone();
    assert!(
        stderr.contains("may not be deterministic") && stderr.contains(&out),
        "{stderr}"
    );
    assert!(
        stderr.contains("registered: sha256:") && stderr.contains("rebuilt:    sha256:"),
        "both hashes named: {stderr}"
    );
    // The registered output is untouched.
    assert_eq!(read_output(&f, &out), before);
}

#[test]
fn timeout_and_max_silent_time_stop_the_build() {
    let test = "timeout_and_max_silent_time_stop_the_build";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let sleepy = expr(
        &f,
        "sleepy",
        &drv("sleepy", "echo starting; sleep 60; echo late > $out", ""),
    );
    for (option, words) in [
        ("--timeout", "timed out after 2 seconds"),
        ("--max-silent-time", "timed out after 2 seconds of silence"),
    ] {
        let started = Instant::now();
        let stderr = f
            .ward
            .fails(
                "nix-build",
                &[sleepy.to_str().unwrap(), "--no-out-link", option, "2"],
            )
            .stderr
            .clone();
        let took = started.elapsed();
        assert!(
            stderr.contains(words) && stderr.contains("sleepy"),
            "{option}: {stderr}"
        );
        assert!(
            took < Duration::from_secs(30),
            "{option}: the build was stopped after {took:?}"
        );
        // Nothing of the build is left running.
        let leftovers: Vec<u32> = f
            .daemon
            .process_tree()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains("sleep"))
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "{option}: left running: {leftovers:?}"
        );
    }
}

/// The build directory `keep-failed` kept, as the client was told.
fn kept_directory(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("keeping build directory '")
                .map(|(_, rest)| rest.trim_end_matches('\'').to_string())
        })
        .unwrap_or_else(|| panic!("no kept directory named: {stderr}"))
}

#[test]
fn keep_failed_keeps_the_build_directory_for_the_requester_only() {
    let test = "keep_failed_keeps_the_build_directory_for_the_requester_only";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let failing = expr(
        &f,
        "kept",
        &drv("kept", "echo evidence > left-behind; exit 1", ""),
    );
    let stderr = f
        .ward
        .fails(
            "nix-build",
            &[failing.to_str().unwrap(), "--no-out-link", "--keep-failed"],
        )
        .stderr
        .clone();
    let kept = kept_directory(&stderr);
    let dir = std::path::Path::new(&kept);
    let meta = std::fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{kept}: {e}\n{stderr}"));
    assert!(meta.is_dir(), "{kept}");
    // Owned by the requesting user and closed to everyone else.
    assert_eq!(meta.uid(), nix::unistd::getuid().as_raw(), "{kept}");
    assert_eq!(meta.mode() & 0o077, 0, "{kept} mode {:o}", meta.mode());
    let listing = || {
        std::process::Command::new("ls")
            .args(["-laR", &kept])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        std::fs::read_to_string(dir.join("left-behind"))
            .unwrap_or_else(|e| panic!("{e}: {}", listing())),
        "evidence\n"
    );
    let parent = std::fs::symlink_metadata(dir.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o077, 0, "parent of {kept}");
}

#[test]
fn two_clients_building_one_derivation_get_one_build() {
    let test = "two_clients_building_one_derivation_get_one_build";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let slow = expr(
        &f,
        "shared",
        &drv(
            "shared-build",
            "sleep 2; head -c 16 /dev/urandom | od -x > $out",
            "",
        ),
    );
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[slow.to_str().unwrap()])
        .single_line();
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    f.ward
                        .ok("nix-store", &["--realise", &drv_path])
                        .single_line()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0], results[1]);
    // One build: the output was registered once (a second build would have produced other
    // random bytes and been left unregistered, or failed).
    let log = f.daemon.log();
    let registrations = log
        .lines()
        .filter(|l| l.contains("registered build outputs") && l.contains(&drv_path))
        .count();
    assert_eq!(registrations, 1, "{log}");
}

#[test]
fn an_untrusted_user_builds_as_a_build_user_in_a_multi_user_daemon() {
    let test = "an_untrusted_user_builds_as_a_build_user_in_a_multi_user_daemon";
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let file = expr(
        &f,
        "whoami",
        &drv(
            "whoami",
            "id -u > $out; id -g >> $out; id -G >> $out; cat /proc/self/uid_map >> $out; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):' >> $out",
            "",
        ),
    );
    // Alice's client must read the expression.
    std::fs::set_permissions(
        file.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = build(&as_alice, &file);
    let text = read_output(&f, &out);
    let lines: Vec<&str> = text.lines().collect();
    // Inside, the build user is uid 1000 and gid 100, as in Nix's sandbox; the uid map says
    // which host uid that is.
    assert_eq!(lines[0], "1000", "{text}");
    assert_eq!(lines[1], "100", "{text}");
    let map: Vec<u32> = lines[3]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!((map[0], map[2]), (1000, 1), "one uid mapped: {text}");
    let uid = map[1];
    assert_ne!(uid, 0, "{text}");
    assert_ne!(uid, alice.uid.as_raw(), "{text}");
    let group = nix::unistd::Group::from_name("nixbld").unwrap();
    if let Some(group) = group {
        let member = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .unwrap()
            .is_some_and(|u| u.gid == group.gid || group.mem.contains(&u.name));
        assert!(member, "uid {uid} is a nixbld user: {text}");
    }
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    // Supplementary groups are dropped: only the primary group.
    assert_eq!(lines[1], lines[2], "{text}");
    // Alice may not build in repair mode.
    let repaired = as_alice.run(
        "nix-build",
        &[file.to_str().unwrap(), "--no-out-link", "--repair"],
    );
    assert!(!repaired.status.success());
}

#[test]
fn nix_build_and_nix_log_with_the_new_cli() {
    let test = "nix_build_and_nix_log_with_the_new_cli";
    let Some(f) = start(test, DaemonOptions::single_user()) else {
        return;
    };
    let file = expr(
        &f,
        "newcli",
        r#"derivation {
  name = "new-cli"; system = builtins.currentSystem; builder = "/bin/sh";
  outputs = [ "out" "doc" ];
  args = [ "-c" "echo new-cli-log-line; echo out > $out; echo doc > $doc" ];
}"#,
    );
    let run = f.ward.ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "build",
            "--no-link",
            "--json",
            "-L",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    let json = run.json();
    let out = json[0]["outputs"]["out"]
        .as_str()
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(read_output(&f, out), "out\n");
    // Another output by name: BuildPathsWithResults names the output asked for.
    let doc_run = f.ward.ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "build",
            "--no-link",
            "--json",
            "-f",
            file.to_str().unwrap(),
            "doc",
        ],
    );
    let doc_json = doc_run.json();
    let doc = doc_json[0]["outputs"]["doc"]
        .as_str()
        .unwrap_or_else(|| panic!("{doc_json}"));
    assert_eq!(read_output(&f, doc), "doc\n");
    assert!(
        run.stderr.clone().contains("new-cli-log-line"),
        "-L shows the log: {}",
        run.stderr.clone()
    );
    let drv_path = json[0]["drvPath"].as_str().unwrap();
    let log = f
        .ward
        .ok(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "log",
                drv_path,
            ],
        )
        .stdout_text();
    assert!(log.contains("new-cli-log-line"), "{log}");
    // On disk where Nix keeps it, <log-dir>/drvs/<first two>/<rest>.bz2, bzip2-compressed:
    // a reading of Nix's own `nix-store --read-log` on the files would find it.
    let base = drv_path.rsplit_once('/').unwrap().1;
    let on_disk = f
        .daemon
        .layout()
        .log_dir
        .join("drvs")
        .join(&base[..2])
        .join(format!("{}.bz2", &base[2..]));
    let compressed = std::fs::read(&on_disk)
        .unwrap_or_else(|e| panic!("reading the log file {}: {e}", on_disk.display()));
    assert!(
        compressed.starts_with(b"BZh"),
        "bzip2 magic in {}",
        on_disk.display()
    );
    let unpacked = std::process::Command::new("bzip2")
        .arg("-dc")
        .arg(&on_disk)
        .output()
        .expect("running bzip2 -dc");
    assert!(unpacked.status.success(), "{unpacked:?}");
    assert_eq!(String::from_utf8_lossy(&unpacked.stdout), log);
}

#[test]
fn secret_key_files_sign_what_is_built_and_added() {
    use std::os::unix::fs::PermissionsExt;
    let test = "secret_key_files_sign_what_is_built_and_added";
    if !ward_e2e_tests::require_root(test) || !ward_e2e_tests::require_nix(test) {
        return;
    }
    // A key made by Nix itself, readable by root only (as Nix's docs have it): the broker
    // opens it, the store-writer (another user) signs with it.
    let keys = tempfile::Builder::new()
        .prefix("ward-e2e-keys-")
        .tempdir()
        .unwrap();
    // `nix-store --generate-binary-cache-key`: the secret key file and the public key.
    let make_key = |name: &str| {
        let (secret, public) = (
            keys.path().join(name),
            keys.path().join(format!("{name}.pub")),
        );
        let made = std::process::Command::new("nix-store")
            .args(["--generate-binary-cache-key", name])
            .args([&secret, &public])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let public_key = std::fs::read_to_string(&public).unwrap().trim().to_string();
        (secret, public_key)
    };
    let (secret, public_key) = make_key("ward-test-1");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(f) = start(
        test,
        DaemonOptions::multi_user().conf(format!("secret-key-files = {}", secret.display())),
    ) else {
        return;
    };
    let built = build(
        &f.ward,
        &expr(&f, "signed", &drv("signed", "echo signed > $out", "")),
    );
    let added = f.ward.add(&[&ward_e2e_tests::inputs::file(
        &f.env.dir("added"),
        "added.txt",
        b"added and signed\n",
    )])[0]
        .clone();
    let verify_with = |key: &str, path: &str| {
        f.ward.run(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "store",
                "verify",
                "--sigs-needed",
                "1",
                "--option",
                "trusted-public-keys",
                key,
                path,
            ],
        )
    };
    for path in [&built, &added] {
        let info = f.ward.path_info_json(path);
        let sigs = info["signatures"].as_array().cloned().unwrap_or_default();
        assert!(
            sigs.iter()
                .any(|s| s.as_str().is_some_and(|s| s.starts_with("ward-test-1:"))),
            "{path} is signed: {info}"
        );
        // Nix checks the signature against the public key.
        verify_with(&public_key, path).assert_success();
    }
    // Against another key it does not verify: the check above means something.
    let (other, other_key) = make_key("ward-test-2");
    verify_with(&other_key, &built).assert_failure();
    // `nix store sign --key-file` (AddSignatures) adds a signature for a trusted client and is
    // refused to an untrusted one with Nix's words.
    let sign = |client: &ward_e2e_tests::NixClient| {
        client.run(
            "nix",
            &[
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                "--key-file",
                other.to_str().unwrap(),
                &added,
            ],
        )
    };
    let alice = ensure_test_user();
    for p in [keys.path(), other.as_path()] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let refused = sign(&f.env.client_as(&f.daemon, &alice));
    assert!(!refused.status.success(), "{refused}");
    assert!(
        refused
            .stderr
            .contains("you are not privileged to add signatures"),
        "{refused}"
    );
    let signed = sign(&f.ward);
    assert!(signed.status.success(), "{signed}");
    let info = f.ward.path_info_json(&added);
    let names: Vec<&str> = info["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str()?.split(':').next())
        .collect();
    assert_eq!(names, ["ward-test-1", "ward-test-2"], "{info}");
}

#[test]
fn keep_failed_gives_an_untrusted_requester_the_tree_and_nobody_else() {
    let test = "keep_failed_gives_an_untrusted_requester_the_tree_and_nobody_else";
    if !ward_e2e_tests::require_root(test) {
        return;
    }
    let alice = ward_e2e_tests::ensure_test_user();
    let Some(f) = start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let failing = expr(
        &f,
        "kept-for-alice",
        &drv(
            "kept-for-alice",
            "echo evidence > left-behind; chmod 644 left-behind; exit 1",
            "",
        ),
    );
    let stderr = as_alice
        .fails(
            "nix-build",
            &[failing.to_str().unwrap(), "--no-out-link", "--keep-failed"],
        )
        .stderr
        .clone();
    let kept = kept_directory(&stderr);
    let dir = std::path::Path::new(&kept);
    let meta = std::fs::symlink_metadata(dir).unwrap();
    assert_eq!(meta.uid(), alice.uid.as_raw(), "{kept} is alice's");
    let file = dir.join("left-behind");
    assert_eq!(
        std::fs::symlink_metadata(&file).unwrap().uid(),
        alice.uid.as_raw(),
        "the build user's file was handed over"
    );
    let cat_as = |uid: u32, gid: u32| {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("cat")
            .arg(&file)
            .output()
            .unwrap()
    };
    let mine = cat_as(alice.uid.as_raw(), alice.gid.as_raw());
    assert_eq!(
        String::from_utf8_lossy(&mine.stdout),
        "evidence\n",
        "alice reads it"
    );
    // Even a world-readable file in the tree is out of reach for anyone else.
    let other = cat_as(65534, 65534);
    assert!(!other.status.success(), "nobody read {}", file.display());
    // The daemon goes on building for her.
    let ok = expr(&f, "after-kept", &drv("after-kept", "echo fine > $out", ""));
    as_alice.ok("nix-build", &[ok.to_str().unwrap(), "--no-out-link"]);
}
