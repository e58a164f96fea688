//! R rows: resource exhaustion by builders and by clients.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ward_e2e_tests::wire::WorkerClient;

use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, store, run| Attack {
        id,
        category: Category::R,
        attack,
        safe,
        store,
        run,
        open: None,
    };
    use StoreRule::{MayAddValid, Unchanged};
    vec![
        row(
            "R1",
            "a fork bomb in the builder",
            "the build's process cap is hit; only that build fails; another build succeeds",
            MayAddValid,
            r1_fork_bomb,
        ),
        row(
            "R2",
            "a memory bomb in the builder",
            "memory.max: the builder is OOM-killed; the host is fine",
            Unchanged,
            r2_memory_bomb,
        ),
        row(
            "R3",
            "fill the build directory, or produce a 1 TiB (sparse) output",
            "a size limit stops it; the daemon stays responsive; the space comes back",
            Unchanged,
            r3_huge_output,
        ),
        row(
            "R4",
            "fill /dev/shm and /tmp in the sandbox",
            "bounded by the tmpfs size (sandbox-dev-shm-size)",
            MayAddValid,
            r4_fill_shm,
        ),
        row(
            "R6",
            "a silent hang, and an endless but chatty loop",
            "max-silent-time and timeout end them",
            Unchanged,
            r6_hangs,
        ),
        row(
            "R7",
            "1,100 connections from one user, a stalled handshake and a one-byte-a-second one",
            "the per-user cap and the handshake timeout hold; another user is served at once",
            Unchanged,
            r7_connections,
        ),
        row(
            "R9",
            "one user fills every build slot with sleeping builds",
            "a per-user quota leaves slots for others, whose builds progress",
            MayAddValid,
            r9_build_slots,
        ),
        row(
            "R10",
            "a flood of AddTempRoot, and OptimiseStore and VerifyStore(checkContents) in parallel",
            "bounded per connection and per user; others are served",
            StoreRule::MayOptimise,
            r10_floods,
        ),
    ]
}

fn r1_fork_bomb(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    // The lab caps each build at 64 processes (ward-build-max-processes).
    let bomb = lab.drv_file(
        "r1-bomb",
        "i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait; echo survived > $out",
        "",
    );
    let drv = lab.instantiate(&bomb);
    let client = lab.nix().clone();
    let bombing = std::thread::spawn(move || {
        client.run(
            "nix-store",
            &["--realise", &drv, "--option", "timeout", "60"],
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let other = lab.drv_file(
        "r1-bystander",
        &format!("echo fine {} > $out", std::process::id()),
        "",
    );
    let started = Instant::now();
    let fine = lab
        .nix()
        .run("nix-build", &[other.to_str().unwrap(), "--no-out-link"]);
    let bombed = bombing.join().unwrap();
    ensure!(fine.status.success(), "a bystander build failed: {fine}");
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "the bystander waited {:?}",
        started.elapsed()
    );
    ensure!(!bombed.status.success(), "the bomb succeeded: {bombed}");
    ensure!(
        bombed.stderr.contains("can't fork") || bombed.stderr.contains("Resource temporarily"),
        "the bomb did not hit the cap: {bombed}"
    );
    HELD
}

/// Whether builds here could get a memory limit: a cgroup2 hierarchy with the memory
/// controller available to the daemon's cgroup.
fn memory_controller() -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2").then(|| before.split_whitespace().nth(4))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new(mount).join(rel.trim_start_matches('/'));
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "memory")
        .then(|| dir.display().to_string())
}

fn r2_memory_bomb(_ctx: &mut Ctx<'_>) -> Outcome {
    match memory_controller() {
        None => Ok(Some(
            "no cgroup2 memory controller is delegated to this host's cgroup, so no build can \
             get memory.max here"
                .into(),
        )),
        Some(dir) => Ok(Some(format!(
            "the memory controller is available at {dir}, but the lab's daemon shares that \
             cgroup with the test runner, and ward reorganises only a cgroup of its own \
             (systemd's Delegate=yes) to give builds memory.max; the broker's unit tests \
             (cgroup::tests) check that sequence"
        ))),
    }
}

fn r3_huge_output(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let file = lab.drv_file("r3-huge", "truncate -s 1099511627776 $out", "");
    let drv = lab.instantiate(&file);
    ctx.arm();
    let started = Instant::now();
    let client = lab.nix().clone();
    let building = std::thread::spawn(move || client.run("nix-store", &["--realise", &drv]));
    // Meanwhile the daemon answers.
    std::thread::sleep(Duration::from_secs(1));
    let mut probe = lab.wire();
    let asked = Instant::now();
    ensure!(
        probe
            .is_valid_path(&lab.known_path)
            .map_err(|e| e.to_string())?,
        "the known path went"
    );
    ensure!(
        asked.elapsed() < Duration::from_secs(2),
        "a query waited {:?} during the huge output",
        asked.elapsed()
    );
    let out = building.join().unwrap();
    ensure!(
        !out.status.success(),
        "a 1 TiB output was registered: {out}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "refusing it took {:?}",
        started.elapsed()
    );
    ensure!(
        out.stderr.contains("size")
            || out.stderr.contains("large")
            || out.stderr.contains("File too large"),
        "no size limit named: {out}"
    );
    HELD
}

fn r4_fill_shm(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    // The lab sets sandbox-dev-shm-size = 16M.
    let file = lab.drv_file(
        "r4-fill",
        "for d in /dev/shm /tmp; do dd if=/dev/zero of=$d/fill bs=1M count=64 2>/dev/null; \
         echo \"$d $(( $(wc -c < $d/fill) / 1048576 ))\" >> $out; rm -f $d/fill; done",
        "",
    );
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    ensure!(out.status.success(), "{out}");
    let text = std::fs::read_to_string(lab.real_path(&out.single_line())).unwrap_or_default();
    for line in text.lines() {
        let (dir, mib) = line.split_once(' ').unwrap_or((line, "?"));
        let mib: u64 = mib.parse().map_err(|_| line.to_string())?;
        ensure!(mib <= 16, "{dir} took {mib} MiB, more than its 16 MiB");
    }
    ensure!(text.lines().count() == 2, "{text}");
    HELD
}

fn r6_hangs(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    for (name, script, option, value, want) in [
        (
            "r6-silent",
            "sleep 120",
            "max-silent-time",
            "2",
            "of silence",
        ),
        (
            "r6-chatty",
            "while true; do echo still here; sleep 0.5; done",
            "timeout",
            "3",
            "timed out",
        ),
    ] {
        let file = lab.drv_file(name, script, "");
        let drv = lab.instantiate(&file);
        ctx.arm();
        let started = Instant::now();
        let out = lab
            .nix()
            .run("nix-store", &["--realise", &drv, "--option", option, value]);
        ensure!(!out.status.success(), "{name}: {out}");
        ensure!(out.stderr.contains(want), "{name}: {out}");
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "{name} ran {:?}",
            started.elapsed()
        );
    }
    HELD
}

/// In the helper process: opens `count` connections to `socket` and says how many were
/// served and what the first refusal said; keeps them until stdin closes.
pub fn hold_connections(socket: &str, count: usize) -> std::process::ExitCode {
    use nix::sys::resource::{setrlimit, Resource};
    let _ = setrlimit(Resource::RLIMIT_NOFILE, 4096, 4096);
    let mut held = Vec::new();
    let mut refusal = String::new();
    for _ in 0..count {
        match WorkerClient::connect(std::path::Path::new(socket)) {
            Ok(c) => held.push(c),
            Err(e) => {
                if refusal.is_empty() {
                    refusal = e.to_string();
                }
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {}", held.len(), refusal.replace('\n', " "));
    let _ = out.flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::ExitCode::SUCCESS
}

fn r7_connections(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let mut holder = crate::harness::spawn_as_alice(
        lab,
        &[
            ("WARD_ATTACKS_HOLD", "1100"),
            ("WARD_ATTACKS_SOCKET", lab.socket().to_str().unwrap()),
        ],
    )?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = holder.stdout.take().unwrap();
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
    }
    let (served, refusal) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let served: usize = served
        .parse()
        .map_err(|_| format!("holder said {line:?}"))?;
    // A stalled handshake and a slow one meanwhile.
    let mut stalled = UnixStream::connect(lab.socket()).map_err(|e| e.to_string())?;
    let socket = lab.socket().to_path_buf();
    let slow = std::thread::spawn(move || {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            for byte in 0x6e69_7863u64.to_le_bytes() {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    let started = Instant::now();
    let mut root = lab.wire();
    ensure!(
        root.is_valid_path(&lab.known_path)
            .map_err(|e| e.to_string())?,
        "root is not served"
    );
    let waited = started.elapsed();
    let _ = holder.stdin.take();
    let _ = holder.wait();
    ensure!(waited < Duration::from_secs(2), "root waited {waited:?}");
    ensure!(
        served == 1024,
        "alice held {served} connections, the cap is 1024"
    );
    ensure!(refusal.contains("limit per user"), "the refusal: {refusal}");
    // The stalled one is dropped after the handshake timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let dropped = Instant::now();
    let n = std::io::Read::read(&mut stalled, &mut buf).unwrap_or(0);
    ensure!(
        n == 0 || dropped.elapsed() < Duration::from_secs(15),
        "the stalled handshake was kept"
    );
    let _ = slow.join();
    HELD
}

fn r9_build_slots(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    // The lab allows 4 builds at once and 2 per user.
    let alice = lab.nix_as_alice();
    let mut hogs = Vec::new();
    for i in 0..4 {
        let file = lab.drv_file(
            &format!("r9-hog-{i}"),
            &format!("sleep 8; echo {i} > $out"),
            "",
        );
        let client = alice.clone();
        hogs.push(std::thread::spawn(move || {
            client.run("nix-build", &[file.to_str().unwrap(), "--no-out-link"])
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let other = lab.drv_file(
        "r9-other",
        &format!("echo other {} > $out", std::process::id()),
        "",
    );
    let out = lab
        .nix()
        .run("nix-build", &[other.to_str().unwrap(), "--no-out-link"]);
    let waited = started.elapsed();
    for h in hogs {
        let r = h.join().unwrap();
        ensure!(r.status.success(), "a hog failed: {r}");
    }
    ensure!(out.status.success(), "{out}");
    ensure!(
        waited < Duration::from_secs(5),
        "another user's build waited {waited:?} behind alice's sleeping builds"
    );
    HELD
}

fn r10_floods(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let alice = |lab: &crate::harness::Lab| -> Result<WorkerClient, String> {
        let stream = lab.connect_as(lab.alice.uid.as_raw(), lab.alice.gid.as_raw())?;
        WorkerClient::connect_stream(stream).map_err(|e| e.to_string())
    };
    // AddTempRoot (op 11) of ever new made-up paths, 512 requests per round trip, until
    // refused: the cap per user is 2^18. (Rounds small enough that neither side's socket
    // buffer fills while the other waits.)
    let mut flood = alice(lab)?;
    let store_dir = lab.store_dir();
    let mut sent = 0u32;
    let refusal = 'flood: loop {
        if sent > 300_000 {
            break None;
        }
        for i in sent..sent + 512 {
            let path = format!("{store_dir}/{i:032}-r10");
            flood.write_u64(11).map_err(|e| e.to_string())?;
            flood
                .write_string(path.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        for _ in 0..512 {
            match flood.process_stderr().and_then(|()| flood.read_u64()) {
                Ok(_) => sent += 1,
                Err(e) => break 'flood Some(e.to_string()),
            }
        }
    };
    let why = refusal.ok_or("300,000 temporary roots were accepted from one user")?;
    ensure!(
        why.contains("temporary roots") && sent == 1 << 18,
        "refused after {sent}: {why}"
    );
    // The roots go with the connection: the next one may add again.
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = alice(lab)?;
    let path = format!("{store_dir}/{:032}-r10-again", 1);
    again.write_u64(11).map_err(|e| e.to_string())?;
    again
        .write_string(path.as_bytes())
        .map_err(|e| e.to_string())?;
    again
        .process_stderr()
        .map_err(|e| format!("after the flood: {e}"))?;
    again.read_u64().map_err(|e| e.to_string())?;
    // Whole-store scans: one at a time per user; others are served meanwhile.
    let mut heavy = Vec::new();
    for i in 0..4 {
        let mut c = alice(lab)?;
        heavy.push(std::thread::spawn(move || -> Result<u64, String> {
            if i % 2 == 0 {
                c.write_u64(34).map_err(|e| e.to_string())?;
            } else {
                c.write_u64(35).map_err(|e| e.to_string())?;
                c.write_u64(1).map_err(|e| e.to_string())?;
                c.write_u64(0).map_err(|e| e.to_string())?;
            }
            c.process_stderr().map_err(|e| e.to_string())?;
            c.read_u64().map_err(|e| e.to_string())
        }));
    }
    let started = Instant::now();
    let mut other = lab.wire();
    ensure!(
        other
            .is_valid_path(&lab.known_path)
            .map_err(|e| e.to_string())?,
        "not served"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "a query waited {:?}",
        started.elapsed()
    );
    let results: Vec<Result<u64, String>> = heavy.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        if let Err(e) = r {
            ensure!(
                e.contains("one at a time per user"),
                "a scan failed otherwise: {e}"
            );
        }
    }
    ensure!(
        results.iter().any(|r| r.is_ok()),
        "no scan ran: {results:?}"
    );
    HELD
}
