//! Garbage collection through ward with Debian's Nix 2.8 client: `nix-store --gc` and its
//! `--print-roots`, `--print-live`, `--print-dead` and `--max-freed`; `nix-store --delete`
//! refusing a live path in Nix's words; `nix-collect-garbage` (and `-d`) and `nix store gc`;
//! indirect roots and their stale links; runtime roots of running processes (censored for
//! untrusted clients); and paths added while collections run, from two connections at once,
//! never lost.

use ward_e2e_tests::builds::{self, drv, expr};
use ward_e2e_tests::wire::{gc_action, WorkerClient};
use ward_e2e_tests::{ensure_test_user, inputs, is_root, DaemonOptions, Fixture};

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn gc_keeps_the_closure_of_roots_and_deletes_the_rest() {
    let test = "gc_keeps_the_closure_of_roots_and_deletes_the_rest";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let kept = f.ward.add(&[&inputs::file(&dir, "kept.txt", b"rooted\n")])[0].clone();
    let junk = f.ward.add(&[&inputs::file(&dir, "junk.txt", b"garbage\n")])[0].clone();
    let named = f
        .ward
        .add(&[&inputs::file(&dir, "named.txt", b"deleted by name\n")])[0]
        .clone();
    let result = f.env.dir("home").join("result");
    f.ward.ok(
        "nix-store",
        &[
            "--realise",
            &kept,
            "--add-root",
            result.to_str().unwrap(),
            "--indirect",
        ],
    );

    let roots = f.ward.ok("nix-store", &["--gc", "--print-roots"]);
    assert!(
        roots
            .lines()
            .contains(&format!("{} -> {kept}", result.display())),
        "{roots}"
    );
    let dead = f.ward.ok("nix-store", &["--gc", "--print-dead"]).lines();
    assert!(dead.contains(&junk) && dead.contains(&named), "{dead:?}");
    assert!(!dead.contains(&kept), "{dead:?}");
    let live = f.ward.ok("nix-store", &["--gc", "--print-live"]).lines();
    assert!(live.contains(&kept) && !live.contains(&junk), "{live:?}");
    assert!(
        f.ward.all_valid_paths().contains(&junk),
        "printing deletes nothing"
    );

    // A live path is refused by name, in Nix's words, and nothing goes.
    let refused = f.ward.fails("nix-store", &["--delete", &kept]);
    refused.assert_stderr_contains(&format!(
        "Cannot delete path '{kept}' since it is still alive. To find out why, use: nix-store --query --roots"
    ));
    assert!(f.real_path(&kept).exists());

    // A dead one goes when named, alone.
    let deleted = f.ward.ok("nix-store", &["--delete", &named]);
    assert!(
        deleted.stdout_text().contains("1 store paths deleted"),
        "{deleted}"
    );
    let valid = f.ward.all_valid_paths();
    assert!(
        !valid.contains(&named) && valid.contains(&junk),
        "{valid:?}"
    );
    assert!(!f.real_path(&named).exists());

    let gc = f.ward.ok("nix-store", &["--gc"]);
    assert!(
        gc.stderr.contains(&format!("deleting '{junk}'")),
        "Nix says what it deletes: {gc}"
    );
    assert!(gc.stdout_text().contains("1 store paths deleted"), "{gc}");
    let valid = f.ward.all_valid_paths();
    assert!(valid.contains(&kept) && !valid.contains(&junk), "{valid:?}");
    assert!(f.real_path(&kept).exists() && !f.real_path(&junk).exists());

    // Once the user's link is gone, its indirect root is stale: removed, and the path goes.
    std::fs::remove_file(&result).unwrap();
    let gc = f.ward.ok("nix-collect-garbage", &[]);
    assert!(
        !lines_with(&gc.stderr, "removing stale link from '").is_empty()
            && gc.stderr.contains(&format!("to '{}'", result.display())),
        "{gc}"
    );
    assert!(!f.ward.all_valid_paths().contains(&kept));
    assert!(!f.real_path(&kept).exists());
    let auto = f.daemon.layout().state_dir.join("gcroots/auto");
    assert_eq!(
        std::fs::read_dir(&auto).map(|d| d.count()).unwrap_or(0),
        0,
        "the stale link is gone from {}",
        auto.display()
    );
}

#[test]
fn max_freed_stops_the_collection_early() {
    let test = "max_freed_stops_the_collection_early";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let paths: Vec<String> = (0..5)
        .map(|i| {
            let contents = vec![b'a' + i as u8; 64 * 1024];
            f.ward
                .add(&[&inputs::file(&dir, &format!("big{i}"), &contents)])[0]
                .clone()
        })
        .collect();
    let gc = f.ward.ok("nix-store", &["--gc", "--max-freed", "1"]);
    assert!(gc.stdout_text().contains("1 store paths deleted"), "{gc}");
    let valid = f.ward.all_valid_paths();
    assert_eq!(
        paths.iter().filter(|p| valid.contains(p)).count(),
        4,
        "{gc}\n{valid:?}"
    );
    // `nix store gc` (the new command line) takes the rest.
    let rest = f.ward.ok("nix", &["store", "gc"]);
    let valid = f.ward.all_valid_paths();
    assert!(
        paths.iter().all(|p| !valid.contains(p)),
        "{rest}\n{valid:?}"
    );
    // And with nothing left to do, `nix-collect-garbage -d` still succeeds.
    f.ward.ok("nix-collect-garbage", &["-d"]);
}

/// Builds a trivial derivation and roots it at `root` (the output, or with `drv_root` the
/// derivation); returns (drv, out).
fn built_and_rooted(
    f: &Fixture,
    name: &str,
    root: &std::path::Path,
    drv_root: bool,
) -> (String, String) {
    let file = expr(f, name, &drv(name, "echo built > $out", ""));
    let drv_path = f
        .ward
        .ok("nix-instantiate", &[file.to_str().unwrap()])
        .single_line();
    let out = f
        .ward
        .ok("nix-store", &["--realise", &drv_path])
        .single_line();
    if drv_root {
        // nix-instantiate roots the derivation itself (`nix-store -r` would root outputs).
        f.ward.ok(
            "nix-instantiate",
            &[
                file.to_str().unwrap(),
                "--add-root",
                root.to_str().unwrap(),
                "--indirect",
            ],
        );
    } else {
        f.ward.ok(
            "nix-store",
            &[
                "--realise",
                &out,
                "--add-root",
                root.to_str().unwrap(),
                "--indirect",
            ],
        );
    }
    (drv_path, out)
}

#[test]
fn keep_derivations_keeps_the_drv_of_a_live_output_by_default() {
    let test = "keep_derivations_keeps_the_drv_of_a_live_output_by_default";
    let Some(f) = builds::start(test, DaemonOptions::single_user()) else {
        return;
    };
    let home = f.env.dir("home");
    let (drv_path, out) = built_and_rooted(&f, "kept-drv", &home.join("out-root"), false);
    // The derivation alone, rooted by nothing but the output's deriver link.
    let (other_drv, other_out) = built_and_rooted(&f, "drv-root", &home.join("drv-root"), true);
    f.ward.ok("nix-store", &["--gc"]);
    let valid = f.ward.all_valid_paths();
    assert!(
        valid.contains(&out) && valid.contains(&drv_path),
        "{valid:?}"
    );
    // keep-outputs is off: a rooted derivation does not keep its output.
    assert!(
        valid.contains(&other_drv) && !valid.contains(&other_out),
        "{valid:?}"
    );
}

#[test]
fn keep_outputs_and_keep_derivations_follow_nix_conf() {
    let test = "keep_outputs_and_keep_derivations_follow_nix_conf";
    let Some(f) = builds::start(
        test,
        DaemonOptions::single_user()
            .conf("keep-outputs = true")
            .conf("keep-derivations = false"),
    ) else {
        return;
    };
    let home = f.env.dir("home");
    let (drv_path, out) = built_and_rooted(&f, "out-only", &home.join("out-root"), false);
    let (other_drv, other_out) = built_and_rooted(&f, "drv-keeps", &home.join("drv-root"), true);
    f.ward.ok("nix-store", &["--gc"]);
    let valid = f.ward.all_valid_paths();
    // keep-derivations off: a live output does not keep its derivation.
    assert!(
        valid.contains(&out) && !valid.contains(&drv_path),
        "{valid:?}"
    );
    // keep-outputs on: a rooted derivation keeps its output.
    assert!(
        valid.contains(&other_drv) && valid.contains(&other_out),
        "{valid:?}"
    );
}

#[test]
fn a_path_a_running_process_uses_is_a_runtime_root() {
    let test = "a_path_a_running_process_uses_is_a_runtime_root";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let used = f.ward.add(&[&inputs::file(&dir, "in-use.txt", b"open\n")])[0].clone();
    let real = f.real_path(&used);
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 60")
        .arg(&real)
        .spawn()
        .unwrap();
    let fd_link = format!("/proc/{}/fd/3", holder.id());
    for _ in 0..200 {
        if std::fs::read_link(&fd_link).is_ok_and(|t| t == real) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let roots = f.ward.ok("nix-store", &["--gc", "--print-roots"]);
    let gc = f.ward.ok("nix-store", &["--gc"]);
    let still = f.ward.all_valid_paths().contains(&used);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        roots.lines().contains(&format!("{fd_link} -> {used}")),
        "{roots}"
    );
    assert!(still && real.exists(), "{gc}");
    // The holder is gone: now it is garbage.
    f.ward.ok("nix-store", &["--gc"]);
    assert!(!f.ward.all_valid_paths().contains(&used));
}

#[test]
fn untrusted_clients_see_runtime_roots_censored_and_cannot_ignore_liveness() {
    let test = "untrusted_clients_see_runtime_roots_censored_and_cannot_ignore_liveness";
    if !is_root() {
        eprintln!("SKIPPED {test}: needs root (a second, untrusted user)");
        return;
    }
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let used = f.ward.add(&[&inputs::file(&dir, "in-use.txt", b"open\n")])[0].clone();
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 60")
        .arg(f.real_path(&used))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let alice = ensure_test_user();
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let roots = as_alice.ok("nix-store", &["--gc", "--print-roots"]);
    let trusted_roots = f.ward.ok("nix-store", &["--gc", "--print-roots"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        roots.lines().contains(&format!("{{censored}} -> {used}")),
        "{roots}"
    );
    assert!(!roots.stdout_text().contains("/proc/"), "{roots}");
    assert!(trusted_roots
        .stdout_text()
        .contains(&format!("/fd/3 -> {used}")));

    // ignoreLiveness is refused for everyone, as by Nix's daemon.
    let mut client = WorkerClient::connect(f.daemon.socket()).unwrap();
    let e = client
        .collect_garbage(gc_action::DELETE_DEAD, &[], true, u64::MAX)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("you are not allowed to ignore liveness"),
        "{e}"
    );
    assert!(f.ward.all_valid_paths().contains(&used));
}

/// Two connections each add a path and collect garbage, hundreds of times, at once: every
/// path a connection added stays valid, with its files, while that connection lives.
#[test]
fn paths_added_while_collections_run_are_never_lost() {
    let test = "paths_added_while_collections_run_are_never_lost";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    const ROUNDS: usize = 150;
    let socket = f.daemon.socket().to_owned();
    let layout = f.daemon.layout().clone();
    let run = |who: &'static str| {
        let socket = socket.clone();
        let layout = layout.clone();
        std::thread::spawn(move || {
            let mut client = WorkerClient::connect(&socket).unwrap();
            let mut mine = Vec::new();
            let mut deleted_total = 0;
            for round in 0..ROUNDS {
                let text = format!("{who} round {round}\n");
                let path = client
                    .add_text_to_store(&format!("{who}-{round}"), text.as_bytes(), &[])
                    .unwrap();
                // Garbage for the collections to find: a path whose connection has ended.
                let mut scratch = WorkerClient::connect(&socket).unwrap();
                scratch
                    .add_text_to_store(&format!("{who}-scratch-{round}"), text.as_bytes(), &[])
                    .unwrap();
                drop(scratch);
                let (deleted, _) = client
                    .collect_garbage(gc_action::DELETE_DEAD, &[], false, u64::MAX)
                    .unwrap();
                assert!(
                    !deleted.contains(&path),
                    "{who}: round {round} deleted its own new path {path}"
                );
                deleted_total += deleted.len();
                mine.push(path);
                for p in &mine {
                    assert!(client.is_valid_path(p).unwrap(), "{who}: {p} was lost");
                }
                let real = layout.real_path(mine.last().unwrap());
                assert_eq!(std::fs::read(&real).unwrap(), text.as_bytes(), "{who}");
            }
            (client, mine, deleted_total)
        })
    };
    let (a, b) = (run("left"), run("right"));
    let (client_a, mine_a, deleted_a) = a.join().unwrap();
    let (client_b, mine_b, deleted_b) = b.join().unwrap();
    assert!(
        deleted_a + deleted_b > ROUNDS,
        "the collections had garbage to delete ({deleted_a} + {deleted_b})"
    );
    let valid = f.ward.all_valid_paths();
    for p in mine_a.iter().chain(&mine_b) {
        assert!(valid.contains(p), "{p} lost");
        assert!(f.real_path(p).exists(), "{p} has no files");
    }
    // Once their connections end, the paths are garbage.
    drop((client_a, client_b));
    std::thread::sleep(std::time::Duration::from_millis(200));
    f.ward.ok("nix-store", &["--gc"]);
    let valid = f.ward.all_valid_paths();
    assert!(
        mine_a.iter().chain(&mine_b).all(|p| !valid.contains(p)),
        "{valid:?}"
    );
}

/// `min-free` / `max-free`: an addition that finds less than `min-free` bytes available first
/// collects garbage (the free space is faked with Nix's own test hook, which ward honours).
#[test]
fn additions_collect_garbage_when_space_runs_low() {
    let test = "additions_collect_garbage_when_space_runs_low";
    let scratch = tempfile::tempdir().unwrap();
    let free_file = scratch.path().join("free-bytes");
    let Some(f) = Fixture::start(
        test,
        DaemonOptions::single_user()
            .conf("min-free = 1000")
            .conf("max-free = 5000")
            .conf("min-free-check-interval = 0")
            .env("_NIX_TEST_FREE_SPACE_FILE", free_file.as_os_str()),
    ) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let add = |name: &str| {
        let contents = format!("{name}\n").repeat(200);
        f.ward
            .add(&[&inputs::file(&dir, name, contents.as_bytes())])[0]
            .clone()
    };
    // Without the file there is nothing to go by: no collection.
    let junk: Vec<String> = (0..3).map(|i| add(&format!("junk{i}"))).collect();
    let valid = f.ward.all_valid_paths();
    assert!(junk.iter().all(|p| valid.contains(p)), "{valid:?}");
    // Plenty of space: no collection either.
    std::fs::write(&free_file, "1000000").unwrap();
    let roomy = add("roomy");
    let valid = f.ward.all_valid_paths();
    assert!(junk.iter().all(|p| valid.contains(p)), "{valid:?}");
    // Short of space: the next addition first collects the garbage, then adds.
    std::fs::write(&free_file, "100").unwrap();
    let tight = add("tight");
    let valid = f.ward.all_valid_paths();
    assert!(
        junk.iter().chain([&roomy]).all(|p| !valid.contains(p)),
        "garbage collected: {valid:?}\n{}",
        f.daemon.log_tail()
    );
    assert!(valid.contains(&tight), "{valid:?}");
    assert!(
        f.daemon
            .log()
            .contains("running auto-GC to free 4900 bytes"),
        "{}",
        f.daemon.log_tail()
    );
}
