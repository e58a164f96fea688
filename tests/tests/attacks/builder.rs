//! B rows: malicious derivation builders, built through the real Nix 2.8 client (an
//! untrusted client of the lab). The static helper `/bin/hostile` (helper.c) makes the system
//! calls busybox cannot.

use std::io::Read;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use ward_e2e_tests::nar;

use crate::ensure;
use crate::harness::{Attack, Category, Ctx, Lab, Outcome, StoreRule, HELD};

pub fn rows() -> Vec<Attack> {
    let row = |id, attack, safe, store, run| Attack {
        id,
        category: Category::B,
        attack,
        safe,
        store,
        run,
        open: None,
    };
    use StoreRule::{MayAddValid, Unchanged};
    vec![
        row(
            "B1",
            "a fixed-output build passes an fd of $out over an abstract socket to a host \
             listener, which writes after registration",
            "connect fails; the registered content is what was built",
            MayAddValid,
            b1_fd_smuggling,
        ),
        row(
            "B2",
            "two concurrent fixed-output builds, or one and a host process, talk over abstract \
             or loopback sockets in either direction",
            "every direction fails",
            MayAddValid,
            b2_fod_cross_talk,
        ),
        row(
            "B4",
            "setuid/setgid through chmod, fchmod, fchmodat, fchmodat2, the i386 and x32 entry \
             points; mknod of devices",
            "EPERM or ENOSYS; no 06000 bits and no device node in any output",
            MayAddValid,
            b4_setid_and_devices,
        ),
        row(
            "B5",
            "setxattr, lsetxattr, fsetxattr, setxattrat, an ACL on build files",
            "ENOTSUP, EPERM or ENOSYS",
            MayAddValid,
            b5_xattrs,
        ),
        row(
            "B6",
            "io_uring_setup, and system call numbers no kernel has yet",
            "refused (ENOSYS or EPERM)",
            MayAddValid,
            b6_io_uring_and_unknown,
        ),
        row(
            "B8",
            "hard links to /etc/shadow and to an input's store file in $out",
            "the links fail or are not in the output; /etc/shadow untouched",
            MayAddValid,
            b8_hard_links,
        ),
        row(
            "B10",
            "an output holding a FIFO, a socket or a device",
            "rejected: unsupported type",
            Unchanged,
            b10_special_files,
        ),
        row(
            "B11",
            "an output left group- and world-writable",
            "rejected, or canonicalised to 0444/0555 owned by the store",
            MayAddValid,
            b11_writable_output,
        ),
        row(
            "B13",
            "during cleanup the build subtree is swapped for a symlink to a victim directory",
            "the victim is untouched",
            Unchanged,
            b13_cleanup_symlink_swap,
        ),
        row(
            "B15",
            "a failing build leaves processes writing to $out and the build dir after the \
             failure",
            "no valid path; nothing of the build survives",
            Unchanged,
            b15_writes_after_failure,
        ),
        row(
            "B16",
            "with keep-failed, plant hard links and world-writable directories, then fail",
            "the kept tree is never chowned through a link",
            Unchanged,
            b16_keep_failed_links,
        ),
        row(
            "B18",
            "a canary reports uid/gid maps, capabilities, NoNewPrivs, seccomp, mounts, network \
             devices, hostname and /etc/passwd",
            "exactly the policy: unprivileged host uid, no capabilities, NNP 1, seccomp 2, lo only",
            MayAddValid,
            b18_canary,
        ),
        row(
            "B19",
            "write /etc, the store, another input, /proc/sys; remount / read-write",
            "EACCES or EROFS",
            MayAddValid,
            b19_writes_outside,
        ),
        row(
            "B21",
            "a non-fixed-output builder resolves DNS, connects to 1.1.1.1 or a host loopback \
             service",
            "unreachable",
            MayAddValid,
            b21_network,
        ),
        row(
            "B22",
            "a fixed-output build claims the hash of an existing output of the same name with \
             other content",
            "hash mismatch; the existing output unchanged",
            MayAddValid,
            b22_fod_alias,
        ),
    ]
}

/// The helper's path in the sandbox, or the row's skip reason.
fn hostile(lab: &Lab) -> Result<&'static str, Outcome> {
    lab.hostile.clone().map_err(|why| Ok(Some(why)))
}

/// Builds `file` and returns (output path, its contents when a file).
fn built(lab: &Lab, file: &std::path::Path) -> Result<(String, String), String> {
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    ensure!(out.status.success(), "the build failed: {out}");
    let path = out.single_line();
    let text = std::fs::read_to_string(lab.real_path(&path)).unwrap_or_default();
    Ok((path, text))
}

/// Lines `what=result` of the helper.
fn results(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

fn fod_attrs(contents: &str) -> String {
    format!(
        r#"outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{}";"#,
        nar::sri_sha256(contents.as_bytes())
    )
}

fn b1_fd_smuggling(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let helper = match hostile(lab) {
        Ok(h) => h,
        Err(skip) => return skip,
    };
    let name = format!("ward-attacks-b1-{}", std::process::id());
    let listener = UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).unwrap();
    let contents = format!("fixed output of {name}\n");
    let script = format!(
        "{helper} connect-abstract {name} $out >&2; printf '{}' > $out",
        contents.escape_default()
    );
    let file = lab.drv_file("b1-smuggler", &script, &fod_attrs(&contents));
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    let accepted = listener.accept().is_ok();
    ensure!(!accepted, "the build reached the host's abstract socket");
    ensure!(
        out.stderr.contains("connect-abstract=errno"),
        "the attempt did not fail: {out}"
    );
    ensure!(out.status.success(), "the output itself is fine: {out}");
    let real = lab.real_path(&out.single_line());
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        std::fs::read_to_string(&real).unwrap_or_default() == contents,
        "the registered output changed"
    );
    HELD
}

fn b2_fod_cross_talk(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let helper = match hostile(lab) {
        Ok(h) => h,
        Err(skip) => return skip,
    };
    let tag = std::process::id();
    let listen_name = format!("ward-attacks-b2-fod-{tag}");
    let host_name = format!("ward-attacks-b2-host-{tag}");
    let host_abstract = UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(host_name.as_bytes()).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    host_abstract.set_nonblocking(true).unwrap();
    let host_tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    host_tcp.set_nonblocking(true).unwrap();
    let port = host_tcp.local_addr().unwrap().port();
    // FOD A listens 6 s; FOD B (started a little later) and the host try to reach it; both
    // also try the host's sockets.
    let a_out = format!("b2 listener {tag}\n");
    let a = lab.drv_file(
        "b2-listener",
        &format!(
            "{helper} listen-abstract {listen_name} 6000 >&2; printf '{}' > $out",
            a_out.escape_default()
        ),
        &fod_attrs(&a_out),
    );
    let b_out = format!("b2 caller {tag}\n");
    let b = lab.drv_file(
        "b2-caller",
        &format!(
            "sleep 2; {helper} connect-abstract {listen_name} >&2; {helper} connect-abstract {host_name} >&2; \
             {helper} connect-tcp 127.0.0.1 {port} >&2; printf '{}' > $out",
            b_out.escape_default()
        ),
        &fod_attrs(&b_out),
    );
    let client = lab.nix().clone();
    let a_arg = a.to_str().unwrap().to_string();
    let first = std::thread::spawn(move || client.run("nix-build", &[&a_arg, "--no-out-link"]));
    let started = Instant::now();
    let mut host_reached_fod = false;
    let second_client = lab.nix().clone();
    let b_arg = b.to_str().unwrap().to_string();
    let second =
        std::thread::spawn(move || second_client.run("nix-build", &[&b_arg, "--no-out-link"]));
    while started.elapsed() < Duration::from_secs(5) {
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(listen_name.as_bytes()).unwrap();
        if std::os::unix::net::UnixStream::connect_addr(&addr).is_ok() {
            host_reached_fod = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let a_run = first.join().unwrap();
    let b_run = second.join().unwrap();
    ensure!(
        !host_reached_fod,
        "the host reached a fixed-output build's abstract socket"
    );
    ensure!(
        host_abstract.accept().is_err(),
        "a build reached the host's abstract socket"
    );
    ensure!(
        host_tcp.accept().is_err(),
        "a build reached the host's loopback"
    );
    ensure!(
        a_run.status.success() && b_run.status.success(),
        "{a_run}\n{b_run}"
    );
    ensure!(
        a_run.stderr.contains("accepted=none"),
        "FOD A was reached: {a_run}"
    );
    let calls = b_run.stderr.matches("=errno").count();
    ensure!(calls >= 3, "a connection of FOD B worked: {b_run}");
    HELD
}

fn b4_setid_and_devices(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let helper = match hostile(lab) {
        Ok(h) => h,
        Err(skip) => return skip,
    };
    let script = format!(
        "mkdir $out; cd $out; echo x > target; {helper} setid target > /build/results; \
         touch suid; chmod u+s suid; mknod null c 1 3; cp /build/results $out/results"
    );
    let file = lab.drv_file("b4-setid", &script, "");
    let (path, _) = built(lab, &file)?;
    let real = lab.real_path(&path);
    let text = std::fs::read_to_string(real.join("results")).map_err(|e| e.to_string())?;
    let got = results(&text);
    ensure!(got.len() == 8, "every attempt ran:\n{text}");
    for (what, result) in &got {
        ensure!(result != "ok", "{what} worked:\n{text}");
    }
    // The i386 and x32 entry points kill the caller (SIGSYS, 31) or fail.
    for what in ["i386-chmod-setuid", "x32-chmod-setuid"] {
        let r = got
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, r)| r.as_str())
            .unwrap_or("");
        ensure!(r == "killed 31" || r.starts_with("errno"), "{what}: {r}");
    }
    for entry in walk(&real) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        ensure!(
            meta.mode() & 0o6000 == 0,
            "{} has mode {:o}",
            entry.display(),
            meta.mode()
        );
        let kind = meta.file_type();
        ensure!(
            kind.is_dir() || kind.is_file() || kind.is_symlink(),
            "{} is a special file",
            entry.display()
        );
    }
    HELD
}

/// Every path under `root`, `root` included.
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}

fn b5_xattrs(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let helper = match hostile(lab) {
        Ok(h) => h,
        Err(skip) => return skip,
    };
    let script = format!("echo x > /build/f; {helper} xattr /build/f > $out");
    let (_, text) = built(lab, &lab.drv_file("b5-xattr", &script, ""))?;
    let got = results(&text);
    ensure!(got.len() == 5, "every attempt ran:\n{text}");
    for (what, result) in &got {
        ensure!(result != "ok", "{what} worked:\n{text}");
    }
    HELD
}

fn b6_io_uring_and_unknown(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let helper = match hostile(lab) {
        Ok(h) => h,
        Err(skip) => return skip,
    };
    let (_, text) = built(
        lab,
        &lab.drv_file("b6-syscalls", &format!("{helper} syscalls > $out"), ""),
    )?;
    let got = results(&text);
    ensure!(got.len() == 3, "every attempt ran:\n{text}");
    for (what, result) in &got {
        // ENOSYS (38) or EPERM (1).
        ensure!(
            result == "errno 38" || result == "errno 1",
            "{what}: {result}\n{text}"
        );
    }
    HELD
}

/// A shell line recording whether `cmd` worked.
fn attempt(what: &str, cmd: &str) -> String {
    format!(
        "if {cmd} >/dev/null 2>&1; then echo \"ESCAPED {what}\" >> $out; else echo \"denied {what}\" >> $out; fi; "
    )
}

fn all_denied(text: &str, attempts: usize) -> Result<(), String> {
    ensure!(!text.contains("ESCAPED"), "an attempt worked:\n{text}");
    let denied = text.lines().filter(|l| l.starts_with("denied ")).count();
    ensure!(denied == attempts, "every attempt ran:\n{text}");
    Ok(())
}

fn b8_hard_links(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let dep_file = lab.drv_file("b8-dep", "mkdir $out; echo input > $out/file", "");
    let script = "mkdir $out; ln /etc/shadow $out/shadow 2>/dev/null; \
                  ln $dep/file $out/dep-file 2>/dev/null; echo done > $out/report";
    let body = format!(
        "let dep = import {}; in {}",
        dep_file.display(),
        ward_e2e_tests::builds::drv("b8-linker", script, "inherit dep;")
    );
    let file = ward_e2e_tests::builds::expr(&lab.f, "b8-linker", &body);
    let (path, _) = built(lab, &file)?;
    let real = lab.real_path(&path);
    ensure!(real.join("report").exists(), "the builder did not finish");
    ensure!(
        !real.join("shadow").exists(),
        "/etc/shadow was linked into the output"
    );
    // A link to the input that did work is a copy in the store: its own inode.
    if let Ok(meta) = std::fs::metadata(real.join("dep-file")) {
        let dep_out = lab
            .nix()
            .ok("nix-build", &[dep_file.to_str().unwrap(), "--no-out-link"])
            .single_line();
        let dep_meta = std::fs::metadata(lab.real_path(&dep_out).join("file")).unwrap();
        ensure!(
            meta.ino() != dep_meta.ino(),
            "the output shares the input's inode"
        );
    }
    HELD
}

fn b10_special_files(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    for (name, script) in [
        ("b10-fifo", "mkdir $out; mkfifo $out/fifo"),
        (
            "b10-socket",
            "mkdir $out; nc -lU $out/sock & sleep 1; kill %1; test -S $out/sock || exit 3",
        ),
        ("b10-device", "mkdir $out; mknod $out/dev c 1 3 || exit 3"),
    ] {
        let file = lab.drv_file(name, script, "");
        let drv = lab.instantiate(&file);
        ctx.arm();
        let out = lab.nix().run("nix-store", &["--realise", &drv]);
        ensure!(!out.status.success(), "{name} was registered: {out}");
    }
    HELD
}

fn b11_writable_output(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let file = lab.drv_file(
        "b11-writable",
        "mkdir -p $out/sub; echo x > $out/sub/f; chmod -R 777 $out",
        "",
    );
    let out = lab
        .nix()
        .run("nix-build", &[file.to_str().unwrap(), "--no-out-link"]);
    if !out.status.success() {
        ensure!(
            out.stderr.contains("writable by group or others") || out.stderr.contains("suspicious"),
            "{out}"
        );
        return HELD;
    }
    let real = lab.real_path(&out.single_line());
    let store_owner = std::fs::metadata(lab.real_path(&lab.known_path))
        .unwrap()
        .uid();
    for entry in walk(&real) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        ensure!(
            meta.mode() & 0o222 == 0,
            "{} is writable ({:o})",
            entry.display(),
            meta.mode()
        );
        ensure!(
            meta.uid() == store_owner,
            "{} is owned by {}",
            entry.display(),
            meta.uid()
        );
    }
    HELD
}

fn b13_cleanup_symlink_swap(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let victim = lab.canaries.victim.display().to_string();
    // The builder replaces parts of its own tree by links to the victim, leaves a process
    // that keeps swapping them during cleanup, and fails.
    let script = format!(
        "mkdir -p /build/sub/a; ln -s {victim} /build/link; \
         (while true; do rm -rf /build/sub; ln -sfn {victim} /build/sub; mkdir -p /build/sub2; \
         ln -sfn {victim} /build/sub2/x; done) & sleep 1; exit 1"
    );
    let file = lab.drv_file("b13-swapper", &script, "");
    let drv = lab.instantiate(&file);
    ctx.arm();
    let out = lab.nix().run("nix-store", &["--realise", &drv]);
    ensure!(!out.status.success(), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    HELD
}

fn b15_writes_after_failure(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let script = "mkdir $out; exec 3>$out/kept; (setsid sh -c 'sleep 2; echo late >&3; echo late > /build/late; chmod 777 $out' &) ; exit 1";
    let file = lab.drv_file("b15-lingerer", script, "");
    let drv = lab.instantiate(&file);
    ctx.arm();
    let out = lab.nix().run("nix-store", &["--realise", &drv]);
    ensure!(!out.status.success(), "{out}");
    let out_path = lab
        .nix()
        .ok("nix-store", &["--query", "--outputs", &drv])
        .single_line();
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        !lab.real_path(&out_path).exists(),
        "{out_path} exists in the store after the failure"
    );
    // The same derivation again: the same clean failure, nothing left from before.
    let again = lab.nix().run("nix-store", &["--realise", &drv]);
    ensure!(!again.status.success(), "{again}");
    HELD
}

fn b16_keep_failed_links(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let secret = lab.canaries.secret.display().to_string();
    let script = format!(
        "ln /bin/sh /build/sh-link 2>/dev/null; ln {secret} /build/secret-link 2>/dev/null; \
         mkdir /build/open; chmod 777 /build/open; ln -s /etc/shadow /build/open/shadow; exit 1"
    );
    let file = lab.drv_file("b16-planter", &script, "");
    let drv = lab.instantiate(&file);
    ctx.arm();
    let busybox_before = std::fs::metadata(ward_e2e_tests::builds::BUSYBOX).unwrap();
    let as_alice = lab.nix_as_alice();
    let out = as_alice.run("nix-store", &["--realise", &drv, "--keep-failed"]);
    ensure!(!out.status.success(), "{out}");
    let busybox_after = std::fs::metadata(ward_e2e_tests::builds::BUSYBOX).unwrap();
    ensure!(
        (
            busybox_after.uid(),
            busybox_after.gid(),
            busybox_after.mode()
        ) == (
            busybox_before.uid(),
            busybox_before.gid(),
            busybox_before.mode()
        ),
        "the sandbox's shell on the host changed owner or mode"
    );
    // The kept tree, if any, is alice's, and holds no link to a file of someone else.
    let kept = out
        .stderr
        .lines()
        .find_map(|l| l.split("keeping build directory '").nth(1))
        .and_then(|r| r.split('\'').next())
        .map(std::path::PathBuf::from);
    if let Some(kept) = kept {
        for entry in walk(&kept) {
            let Ok(meta) = std::fs::symlink_metadata(&entry) else {
                continue;
            };
            if meta.is_file() {
                ensure!(
                    meta.nlink() == 1 || meta.uid() == lab.alice.uid.as_raw(),
                    "{} is a hard link to a file of uid {}",
                    entry.display(),
                    meta.uid()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&kept);
    }
    HELD
}

fn b18_canary(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let script = "for f in uid_map gid_map status mountinfo net/dev; do echo \"== $f\"; cat /proc/self/$f; done > $out; \
                  echo \"== hostname\" >> $out; hostname >> $out; echo \"== passwd\" >> $out; cat /etc/passwd >> $out";
    let (_, text) = built(lab, &lab.drv_file("b18-canary", script, ""))?;
    let section = |name: &str| -> String {
        text.split(&format!("== {name}\n"))
            .nth(1)
            .map(|rest| rest.split("\n== ").next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let uid_map = section("uid_map");
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    ensure!(
        fields.len() == 3 && fields[2] == "1",
        "one uid mapped: {uid_map}"
    );
    ensure!(fields[1] != "0", "the build runs as host root: {uid_map}");
    let status = section("status");
    for want in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        ensure!(status.contains(want), "{want} missing:\n{status}");
    }
    let net_dev = section("net/dev");
    let devices: Vec<&str> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    ensure!(devices == ["lo"], "network devices: {devices:?}");
    ensure!(
        section("hostname").trim() == "localhost",
        "hostname {}",
        section("hostname")
    );
    let passwd = section("passwd");
    ensure!(
        !passwd.contains(&lab.alice.name),
        "the host's users are visible:\n{passwd}"
    );
    let mounts = section("mountinfo");
    ensure!(
        !mounts.contains(" /home "),
        "the host's /home is mounted:\n{mounts}"
    );
    HELD
}

fn b19_writes_outside(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let dep_file = lab.drv_file("b19-dep", "mkdir $out; echo input > $out/file", "");
    let attempts = [
        ("write /etc", "sh -c 'echo x > /etc/evil'"),
        ("write an input's file", "sh -c 'echo x > $dep/file'"),
        ("add to an input", "sh -c 'echo x > $dep/new'"),
        ("remove an input", "rm -rf $dep"),
        ("write /proc/sys", "sh -c 'echo 1 > /proc/sys/kernel/panic'"),
        ("remount / read-write", "mount -o remount,rw /"),
        ("remount an input read-write", "mount -o remount,rw $dep"),
    ];
    // Paths that are not inputs do not exist in the sandbox: writing "there" writes the
    // sandbox's own store directory, never the real one (the guard checks the real one).
    let known = lab.known_path.clone();
    let mut script = format!(": > $out; echo x > {known} 2>/dev/null; ");
    for (what, cmd) in &attempts {
        script.push_str(&attempt(what, cmd));
    }
    let body = format!(
        "let dep = import {}; in {}",
        dep_file.display(),
        ward_e2e_tests::builds::drv("b19-writer", &script, "inherit dep;")
    );
    let file = ward_e2e_tests::builds::expr(&lab.f, "b19-writer", &body);
    let (_, text) = built(lab, &file)?;
    all_denied(&text, attempts.len())?;
    HELD
}

fn b21_network(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let attempts = [
        ("resolve a name", "nslookup example.org".to_string()),
        (
            "reach 1.1.1.1",
            "wget -q -T 3 -O /dev/null http://1.1.1.1/".to_string(),
        ),
        (
            "reach the host's loopback",
            format!("wget -q -T 3 -O /dev/null http://127.0.0.1:{port}/"),
        ),
        (
            "reach the host via 10.0.2.2",
            format!("wget -q -T 3 -O /dev/null http://10.0.2.2:{port}/"),
        ),
    ];
    let mut script = ": > $out; ".to_string();
    for (what, cmd) in &attempts {
        script.push_str(&attempt(what, cmd));
    }
    let (_, text) = built(lab, &lab.drv_file("b21-network", &script, ""))?;
    all_denied(&text, attempts.len())?;
    let mut buf = [0u8; 1];
    if let Ok((mut conn, _)) = listener.accept() {
        let _ = conn.read(&mut buf);
        return Err("the build reached the host's loopback".into());
    }
    HELD
}

fn b22_fod_alias(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let good = format!("b22 original {}\n", std::process::id());
    let first = lab.drv_file(
        "b22-fetch",
        &format!("printf '{}' > $out", good.escape_default()),
        &fod_attrs(&good),
    );
    let (path, text) = built(lab, &first)?;
    ensure!(text == good, "{text}");
    // Same name, same claimed hash, other content (and another builder so the .drv differs).
    let liar = lab.drv_file(
        "b22-fetch",
        "printf 'something else\\n' > $out; true",
        &fod_attrs(&good),
    );
    let out = lab.nix().run(
        "nix-build",
        &[liar.to_str().unwrap(), "--no-out-link", "--check"],
    );
    if out.status.success() {
        ensure!(
            out.single_line() == path,
            "another path: {}",
            out.single_line()
        );
    } else {
        ensure!(
            out.stderr.contains("hash mismatch") || out.stderr.contains("differs"),
            "{out}"
        );
    }
    ensure!(
        std::fs::read_to_string(lab.real_path(&path)).unwrap_or_default() == good,
        "the existing output changed"
    );
    HELD
}

/// N11: ward's daemon unpacks no tarball itself; the one builder that would
/// (`builtin:unpack-channel`) is refused, so a hostile tarball never reaches an unpacker.
pub fn unpack_hostile_tarball(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let dir = lab.scratch.path().join("n11");
    std::fs::create_dir_all(&dir).unwrap();
    let tarball = dir.join("evil.tar");
    write_hostile_tar(&tarball, &lab.canaries.victim.display().to_string())?;
    let added = lab
        .nix()
        .ok("nix-store", &["--add", tarball.to_str().unwrap()])
        .single_line();
    let body = format!(
        r#"derivation {{
  name = "n11-channel";
  system = "builtin";
  builder = "builtin:unpack-channel";
  src = "{added}";
  channelName = "evil";
}}"#
    );
    let file = ward_e2e_tests::builds::expr(&lab.f, "n11-channel", &body);
    let drv = lab.instantiate(&file);
    ctx.arm();
    let out = lab.nix().run("nix-store", &["--realise", &drv]);
    ensure!(!out.status.success(), "the channel was unpacked: {out}");
    ensure!(out.stderr.contains("builtin"), "{out}");
    HELD
}

/// A tar archive with an absolute member, a `..` member, a hard link to an absolute path and
/// a symlink followed by a write through it.
fn write_hostile_tar(path: &std::path::Path, victim: &str) -> Result<(), String> {
    fn header(name: &str, kind: u8, link: &str, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..262].copy_from_slice(b"ustar");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }
    let mut tar = Vec::new();
    let body = b"pwned\n";
    let file = |tar: &mut Vec<u8>, name: &str| {
        tar.extend(header(name, b'0', "", body.len()));
        let mut block = body.to_vec();
        block.resize(512, 0);
        tar.extend(block);
    };
    file(&mut tar, &format!("{victim}/absolute"));
    file(&mut tar, "../../../../escaped");
    tar.extend(header("hardlink", b'1', "/etc/shadow", 0));
    tar.extend(header("link", b'2', victim, 0));
    file(&mut tar, "link/through-symlink");
    tar.extend(vec![0u8; 1024]);
    std::fs::write(path, tar).map_err(|e| e.to_string())
}

/// N12: `builtin:fetchurl` is refused before any network (ward implements no builtin
/// builder yet): neither an https server with a self-signed certificate nor an http server
/// redirecting to file:// is ever contacted.
pub fn fetchurl_bad_tls_and_redirect(ctx: &mut Ctx<'_>) -> Outcome {
    let lab = ctx.lab;
    let server = TcpListener::bind("0.0.0.0:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let port = server.local_addr().unwrap().port();
    for (i, url) in [
        format!("https://127.0.0.1:{port}/file"),
        format!("http://127.0.0.1:{port}/redirect-to-file"),
    ]
    .iter()
    .enumerate()
    {
        let body = format!(
            r#"derivation {{
  name = "n12-{i}";
  system = "builtin";
  builder = "builtin:fetchurl";
  url = "{url}";
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = "{}";
}}"#,
            "1".repeat(64)
        );
        let file = ward_e2e_tests::builds::expr(&lab.f, &format!("n12-{i}"), &body);
        let drv = lab.instantiate(&file);
        ctx.arm();
        let out = lab.nix().run("nix-store", &["--realise", &drv]);
        ensure!(!out.status.success(), "{url} was fetched: {out}");
    }
    ensure!(server.accept().is_err(), "the daemon contacted the server");
    HELD
}
