//! L rows: a local user (alice, or a stray process of a build user) against the store, the
//! DB and running builds; and the substitute rows that need a binary cache (N8, N10).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ward_e2e_tests::nar::{self, NarNode};
use ward_e2e_tests::{DaemonOptions, Fixture};

use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Lab, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, store, run| Attack {
        id,
        category: Category::L,
        attack,
        safe,
        store,
        run,
        open: None,
    };
    use StoreRule::{MayAddValid, Unchanged};
    vec![
        row(
            "L1",
            "while a build runs, alice reads or writes its build directory (which the builder \
             opened to everyone)",
            "EACCES at the root-owned 0700 parent",
            MayAddValid,
            l1_build_dir,
        ),
        row(
            "L2",
            "alice plants entries or symlinks where build directories are made",
            "she cannot create anything there; names are made exclusively",
            MayAddValid,
            l2_predictable_build_dirs,
        ),
        row(
            "L3",
            "alice creates or modifies files in the store, or opens the DB for writing",
            "EACCES: the store is the store-writer's, mode 0755",
            Unchanged,
            l3_store_and_db,
        ),
        row(
            "L4",
            "a build's process keeps an fd of its output and writes after registration",
            "the registered content is unchanged (fresh inodes, all build processes killed)",
            MayAddValid,
            l4_fd_after_registration,
        ),
        row(
            "L6",
            "a stray process of a build user outside any sandbox, when a build starts",
            "the broker never starts a build for a uid that still owns processes",
            MayAddValid,
            l6_stray_build_user,
        ),
        row(
            "L8",
            "run a setuid output before canonicalisation (the staging window)",
            "staging unreachable (0700, store-writer's); final mode 0444/0555",
            MayAddValid,
            l8_staging_window,
        ),
        row(
            "L9",
            "hard-link a store file into $HOME to pin it or to watch later writes",
            "store files are 0444 and never written in place",
            Unchanged,
            l9_hard_link_pin,
        ),
    ]
}

/// Runs `args` as alice; whether it succeeded, and its stderr.
fn as_alice(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", lab.alice.uid))
        .arg(format!("--regid={}", lab.alice.gid))
        .arg("--init-groups")
        .args(args)
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn broker_state(lab: &Lab) -> std::path::PathBuf {
    lab.f.daemon.layout().state_dir.join("ward-broker")
}

fn l1_build_dir(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let file = lab.drv_file(
        "l1-opener",
        "chmod 777 /build; echo secret > /build/secret; chmod 666 /build/secret; sleep 4; echo done > $out",
        "",
    );
    let client = lab.nix().clone();
    let arg = file.to_str().unwrap().to_string();
    let building = std::thread::spawn(move || client.run("nix-build", &[&arg, "--no-out-link"]));
    let builds = broker_state(lab).join("builds");
    let deadline = Instant::now() + Duration::from_secs(30);
    let secret = loop {
        let found = std::fs::read_dir(&builds).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("build/secret"))
                .find(|p| p.exists())
        });
        if let Some(found) = found {
            break found;
        }
        ensure!(Instant::now() < deadline, "the build never wrote its file");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (read, _) = as_alice(lab, &["cat", secret.to_str().unwrap()]);
    let (wrote, _) = as_alice(
        lab,
        &["sh", "-c", &format!("echo x > {}", secret.display())],
    );
    let (listed, _) = as_alice(lab, &["ls", builds.to_str().unwrap()]);
    let run = building.join().unwrap();
    ensure!(!read, "alice read {}", secret.display());
    ensure!(!wrote, "alice wrote {}", secret.display());
    ensure!(!listed, "alice listed {}", builds.display());
    ensure!(run.status.success(), "{run}");
    HELD
}

fn l2_predictable_build_dirs(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let state = broker_state(lab);
    let builds = state.join("builds");
    for dir in [&state, &builds] {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
        ensure!(
            meta.is_dir() && meta.uid() == 0,
            "{} is not root's directory",
            dir.display()
        );
        ensure!(
            meta.mode() & 0o022 == 0,
            "{} mode {:o}",
            dir.display(),
            meta.mode()
        );
    }
    for name in ["0", "1", "build-1", "ward-build-1"] {
        let planted = builds.join(name);
        let (made, _) = as_alice(lab, &["mkdir", planted.to_str().unwrap()]);
        ensure!(!made, "alice made {}", planted.display());
        let (linked, _) = as_alice(
            lab,
            &[
                "ln",
                "-s",
                lab.canaries.victim.to_str().unwrap(),
                planted.to_str().unwrap(),
            ],
        );
        ensure!(!linked, "alice linked {}", planted.display());
    }
    // An operator's `build-dir = /tmp` is refused, and /tmp left as it is (making it 0700
    // would take it from everyone).
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata("/tmp").unwrap().permissions().mode();
    let other = Fixture::start(
        "attacks-l2-build-dir",
        ward_e2e_tests::builds::sandboxed(DaemonOptions::multi_user()).conf("build-dir = /tmp"),
    )
    .ok_or("no Nix client")?;
    let file = ward_e2e_tests::builds::expr(
        &other,
        "l2-tmp",
        &ward_e2e_tests::builds::drv("l2-tmp", "echo x > $out", ""),
    );
    let refused = other
        .ward
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let after = std::fs::metadata("/tmp").unwrap().permissions().mode();
    ensure!(
        after == tmp_mode,
        "/tmp went from mode {tmp_mode:o} to {after:o}"
    );
    ensure!(!refused.status.success(), "a build ran in /tmp: {refused}");
    ensure!(
        refused
            .stderr
            .contains("build-dir '/tmp' is writable by others"),
        "{refused}"
    );
    drop(other);
    // A client's build-dir is ignored: a build still runs in the closed tree.
    let file = lab.drv_file("l2-where", "pwd > $out; echo $TMPDIR >> $out", "");
    let out = lab.nix().run(
        "nix-build",
        &[
            file.to_str().unwrap(),
            "--no-out-link",
            "--option",
            "build-dir",
            "/tmp",
        ],
    );
    ensure!(out.status.success(), "{out}");
    let text = std::fs::read_to_string(lab.real_path(&out.single_line())).unwrap_or_default();
    ensure!(text.starts_with("/build"), "{text}");
    HELD
}

fn l3_store_and_db(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let layout = lab.f.daemon.layout();
    let store = &layout.real_store_dir;
    let meta = std::fs::metadata(store).unwrap();
    ensure!(
        meta.mode() & 0o7777 == 0o755,
        "store mode {:o}",
        meta.mode()
    );
    ensure!(
        meta.uid() != 0,
        "the store is root's (upstream's 1775 root:nixbld model)"
    );
    let known = lab.real_path(&lab.known_path);
    let db = layout.db_path();
    let attempts: Vec<(&str, Vec<String>)> = vec![
        (
            "create a store entry",
            vec!["touch".into(), store.join("x-evil").display().to_string()],
        ),
        (
            "write a store file",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}", known.display()),
            ],
        ),
        (
            "remove a store path",
            vec!["rm".into(), "-rf".into(), known.display().to_string()],
        ),
        (
            "rename a store path",
            vec![
                "mv".into(),
                known.display().to_string(),
                store.join("moved").display().to_string(),
            ],
        ),
        (
            "write the DB",
            vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}", db.display()),
            ],
        ),
        (
            "create the DB's journal",
            vec!["touch".into(), format!("{}-journal", db.display())],
        ),
    ];
    for (what, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (worked, _) = as_alice(lab, &args);
        ensure!(!worked, "alice could {what}");
    }
    // SQLite itself, read-write.
    let (worked, err) = as_alice(
        lab,
        &["sh", "-c", &format!("test -w {} || exit 1", db.display())],
    );
    ensure!(!worked, "the DB is writable by alice {err}");
    HELD
}

fn l4_fd_after_registration(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let script = "mkdir $out; echo good > $out/file; exec 3>>$out/file; \
                  (setsid sh -c 'sleep 3; echo evil >&3; echo evil > '$out'/file' &); echo started";
    let (path, _) = {
        let file = lab.drv_file("l4-holder", script, "");
        let out = lab
            .nix()
            .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
        ensure!(out.status.success(), "{out}");
        (out.single_line(), ())
    };
    std::thread::sleep(Duration::from_secs(4));
    let real = lab.real_path(&path).join("file");
    let text = std::fs::read_to_string(&real).unwrap_or_default();
    ensure!(text == "good\n", "the registered file now reads {text:?}");
    let meta = std::fs::metadata(&real).unwrap();
    ensure!(meta.mode() & 0o777 == 0o444, "mode {:o}", meta.mode());
    HELD
}

fn l6_stray_build_user(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let Some(group) = nix::unistd::Group::from_name("nixbld").ok().flatten() else {
        return Ok(Some("no nixbld group".into()));
    };
    // A stray sleep of every build user.
    let users: Vec<nix::unistd::User> = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[3] == group.gid.to_string())
                .then(|| nix::unistd::User::from_name(f[0]).ok().flatten())
                .flatten()
        })
        .collect();
    ensure!(!users.is_empty(), "no build users");
    let mut strays = Vec::new();
    for user in &users {
        let child = Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--clear-groups")
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        strays.push((user.uid.as_raw(), child));
    }
    std::thread::sleep(Duration::from_millis(300));
    let file = lab.drv_file("l6-whoami", "cat /proc/self/uid_map > $out", "");
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let mut alive_for_build_uid = None;
    if out.status.success() {
        let text = std::fs::read_to_string(lab.real_path(&out.single_line())).unwrap_or_default();
        let host_uid: u32 = text
            .split_whitespace()
            .nth(1)
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        for (uid, child) in strays.iter_mut() {
            if *uid == host_uid && child.try_wait().unwrap().is_none() {
                alive_for_build_uid = Some(host_uid);
            }
        }
    }
    for (_, child) in strays.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    ensure!(out.status.success(), "{out}");
    ensure!(
        alive_for_build_uid.is_none(),
        "a build ran as uid {alive_for_build_uid:?} while a stray process of it lived"
    );
    HELD
}

fn l8_staging_window(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let store = &lab.f.daemon.layout().real_store_dir;
    let staging = store.join(".ward-staging");
    if let Ok(meta) = std::fs::metadata(&staging) {
        ensure!(meta.mode() & 0o077 == 0, "staging mode {:o}", meta.mode());
        let (listed, _) = as_alice(lab, &["ls", staging.to_str().unwrap()]);
        ensure!(!listed, "alice listed the staging directory");
    }
    let file = lab.drv_file(
        "l8-suid",
        "mkdir $out; cp /bin/sh $out/sh; chmod 4755 $out/sh || true; chmod 2755 $out || true; chmod 755 $out/sh",
        "",
    );
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    ensure!(out.status.success(), "{out}");
    let real = lab.real_path(&out.single_line());
    for p in [real.clone(), real.join("sh")] {
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        ensure!(
            mode == 0o555 || mode == 0o444,
            "{} has mode {mode:o}",
            p.display()
        );
    }
    HELD
}

fn l9_hard_link_pin(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let known = lab.real_path(&lab.known_path);
    let meta = std::fs::metadata(&known).unwrap();
    ensure!(meta.mode() & 0o7777 == 0o444, "mode {:o}", meta.mode());
    ensure!(
        meta.uid() != lab.alice.uid.as_raw(),
        "alice owns a store file"
    );
    let home = lab.scratch.path().join("alice-home");
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(&home, Some(lab.alice.uid), Some(lab.alice.gid)).unwrap();
    let link = home.join("pinned");
    let (linked, _) = as_alice(
        lab,
        &["ln", known.to_str().unwrap(), link.to_str().unwrap()],
    );
    if linked {
        // protected_hardlinks is off: the link exists, but the file is read-only and no
        // later write goes to it in place.
        let (wrote, _) = as_alice(lab, &["sh", "-c", &format!("echo x >> {}", link.display())]);
        let _ = std::fs::remove_file(&link);
        ensure!(!wrote, "alice wrote a store file through her link");
    }
    HELD
}

/// Fills the trusted cache with a signed narinfo for a path whose NAR is `served`, while its
/// narinfo describes `described`.
fn signed_cache_entry(
    lab: &Lab,
    name: &str,
    described: &[u8],
    served: &[u8],
) -> Result<String, String> {
    // Real Nix signs: a local store of its own holds the good NAR's path, copied with the key.
    let store_dir = lab.store_dir();
    let source = lab.scratch.path().join(format!("source-{name}"));
    std::fs::create_dir_all(&source).unwrap();
    let good = source.join(name);
    std::fs::write(&good, described).unwrap();
    let reference = lab
        .f
        .env
        .reference_with_store_dir(&format!("src-{name}"), &store_dir);
    let path = reference
        .client
        .ok("nix-store", &["--add", good.to_str().unwrap()])
        .single_line();
    let url = format!(
        "file://{}?compression=none&secret-key={}",
        lab.trusted_cache_dir.display(),
        lab.key.secret_arg()
    );
    reference.client.ok("nix", &["copy", "--to", &url, &path]);
    let base = path.rsplit('/').next().unwrap();
    let narinfo = std::fs::read_to_string(
        lab.trusted_cache_dir
            .join(format!("{}.narinfo", &base[..32])),
    )
    .unwrap();
    let nar_url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .ok_or("no URL in the narinfo")?;
    std::fs::write(lab.trusted_cache_dir.join(nar_url), served).unwrap();
    Ok(path)
}

fn trusted_cache_url(lab: &Lab) -> String {
    format!("file://{}", lab.trusted_cache_dir.display())
}

/// N8: the narinfo is validly signed; the NAR served differs, with entries climbing out.
pub fn substitute_with_bad_nar(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let climbing = NarNode::Directory(vec![
        (
            b"..".to_vec(),
            NarNode::File {
                contents: b"pwned\n".to_vec(),
                executable: false,
            },
        ),
        (
            b"ok".to_vec(),
            NarNode::File {
                contents: b"x\n".to_vec(),
                executable: false,
            },
        ),
    ])
    .to_nar();
    let path = signed_cache_entry(lab, "n8-climb", b"what was signed\n", &climbing)?;
    let other = signed_cache_entry(
        lab,
        "n8-other",
        b"signed too\n",
        &nar::nar_of_file(b"not what was signed\n", false),
    )?;
    ctx.arm();
    let url = trusted_cache_url(lab);
    for p in [&path, &other] {
        let out = lab.nix().run(
            "nix-store",
            &["--realise", p, "--option", "substituters", &url],
        );
        ensure!(!out.status.success(), "{p} was substituted: {out}");
        ensure!(
            out.stderr.contains(p.as_str()),
            "the error names the path: {out}"
        );
    }
    let store = &lab.f.daemon.layout().real_store_dir;
    ensure!(
        !store.join("pwned").exists(),
        "a NAR entry reached the store directory"
    );
    ensure!(
        !store.parent().unwrap().join("pwned").exists(),
        "a NAR entry climbed out of the store"
    );
    HELD
}

/// N10: untrusted substituters are ignored; a trusted cache's symlinked narinfo is not
/// followed.
pub fn untrusted_and_symlinked_caches(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let good = b"n10 fine contents\n";
    let path = signed_cache_entry(lab, "n10-linked", good, &nar::nar_of_file(good, false))?;
    // The same entry in the untrusted cache.
    let base = path.rsplit('/').next().unwrap();
    let narinfo_name = format!("{}.narinfo", &base[..32]);
    let narinfo = lab.trusted_cache_dir.join(&narinfo_name);
    let text = std::fs::read_to_string(&narinfo).unwrap();
    copy_cache_entry(&lab.trusted_cache_dir, &lab.cache_dir, &narinfo_name, &text);
    // In the trusted cache the narinfo becomes a link to a file outside it.
    let outside = lab.scratch.path().join("outside.narinfo");
    std::fs::rename(&narinfo, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &narinfo).unwrap();
    ctx.arm();
    for (url, want) in [
        (
            format!("file://{}", lab.cache_dir.display()),
            "untrusted substituter",
        ),
        ("http://evil.example".to_string(), "untrusted substituter"),
        (trusted_cache_url(lab), "symlink"),
    ] {
        let out = lab.nix().run(
            "nix-store",
            &["--realise", &path, "--option", "substituters", &url],
        );
        ensure!(!out.status.success(), "{path} came from {url}: {out}");
        ensure!(out.stderr.contains(want), "{url}: {out}");
    }
    let _ = std::fs::remove_file(&narinfo);
    std::fs::rename(&outside, &narinfo).unwrap();
    HELD
}

fn copy_cache_entry(from: &Path, to: &Path, narinfo_name: &str, text: &str) {
    std::fs::write(to.join(narinfo_name), text).unwrap();
    if let Some(url) = text.lines().find_map(|l| l.strip_prefix("URL: ")) {
        std::fs::copy(from.join(url), to.join(url)).unwrap();
    }
}
