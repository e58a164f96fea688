//! Under systemd (`JOURNAL_STREAM` naming the daemon's stderr), ward logs to the journal with
//! structured fields. The test stands in for journald: in a mount namespace of its own
//! (`unshare --mount`, a tmpfs on /run) a small recorder binds
//! `/run/systemd/journal/socket`, starts ward with its stderr on a file named by
//! `JOURNAL_STREAM`, and keeps every datagram; the test then serves a real client and reads
//! the records back: the frontend's connection with `WARD_CONNECTION`, `WARD_UID`,
//! `WARD_PID`, and the store-writer's addition, each under its `SYSLOG_IDENTIFIER`.
//!
//! Root only (mount namespace); prints SKIPPED otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ward_e2e_tests::daemon::ward_bin;
use ward_e2e_tests::lifecycle::{chroot_socket, chroot_url, run_nix, NixEnv, Scratch};
use ward_e2e_tests::{notice, require_nix, require_root};

/// The stand-in journald: binds the socket, starts ward (argv after the script's own
/// arguments) with stderr on `stderr.log` and JOURNAL_STREAM naming it, records each
/// datagram (hex, one per line) until `stop` appears, then stops ward.
const RECORDER: &str = r#"
import os, socket, subprocess, sys, time
out_dir = sys.argv[1]
os.makedirs('/run/systemd/journal', exist_ok=True)
journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journal.bind('/run/systemd/journal/socket')
os.chmod('/run/systemd/journal/socket', 0o666)
journal.settimeout(0.1)
stderr = open(os.path.join(out_dir, 'stderr.log'), 'wb')
st = os.fstat(stderr.fileno())
env = dict(os.environ, JOURNAL_STREAM='%d:%d' % (st.st_dev, st.st_ino))
ward = subprocess.Popen(sys.argv[2:], stderr=stderr, env=env)
with open(os.path.join(out_dir, 'datagrams'), 'w') as record:
    while not os.path.exists(os.path.join(out_dir, 'stop')):
        try:
            data = journal.recv(1 << 20)
        except socket.timeout:
            continue
        record.write(data.hex() + '\n')
        record.flush()
ward.terminate()
ward.wait(timeout=15)
"#;

/// Parses one datagram of journald's native protocol: `KEY=VALUE\n`, or `KEY\n` followed by
/// a little-endian u64 length, the value and `\n`.
fn parse_datagram(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            rest = &rest[(line_end + 1).min(rest.len())..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let after = &rest[line_end + 1..];
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            let value = &after[8..8 + len];
            // A field may repeat (one per span); the innermost (last) one wins here.
            fields.insert(name, String::from_utf8_lossy(value).into_owned());
            rest = &after[(8 + len + 1).min(after.len())..];
        }
    }
    fields
}

fn hex_decode(line: &str) -> Vec<u8> {
    (0..line.len() / 2)
        .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn records(dir: &Path) -> Vec<BTreeMap<String, String>> {
    fs::read_to_string(dir.join("datagrams"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_datagram(&hex_decode(l)))
        .collect()
}

#[test]
fn under_systemd_ward_logs_to_the_journal_with_fields() {
    let test = "under_systemd_ward_logs_to_the_journal_with_fields";
    if !require_root(test) || !require_nix(test) {
        return;
    }
    let scratch = Scratch::new("journal");
    let out = scratch.dir("journal");
    let store = scratch.store_root("store");
    let conf = scratch.conf_dir("conf", "substituters =\nsandbox = false\n");
    let mut recorder = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs /run && exec python3 -c "$0" "$@""#)
        .arg(RECORDER)
        .arg(&out)
        .arg(ward_bin())
        .arg("daemon")
        .arg("--store")
        .arg(&store)
        .env("NIX_CONF_DIR", &conf)
        .spawn()
        .unwrap();
    let socket = chroot_socket(&store);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Ok(Some(status)) = recorder.try_wait() {
            notice(&format!(
                "SKIPPED {test}: the stand-in journal could not start ({status}): {}",
                fs::read_to_string(out.join("stderr.log")).unwrap_or_default()
            ));
            return;
        }
        assert!(Instant::now() < deadline, "ward did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = NixEnv::new(
        &scratch.path().join("client"),
        "substituters =\n",
        &chroot_url(&socket, &store),
        Vec::new(),
        None,
    );
    let file = scratch.path().join("journal.txt");
    fs::write(&file, "logged to the journal\n").unwrap();
    let mut added = run_nix("nix-store", &["--add", file.to_str().unwrap()], &client);
    // The daemon may still be starting its frontend when the socket appears.
    for _ in 0..50 {
        if added.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        added = run_nix("nix-store", &["--add", file.to_str().unwrap()], &client);
    }
    assert!(added.status.success(), "{added}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let (connection, addition) = loop {
        let all = records(&out);
        let connection = all
            .iter()
            .find(|r| {
                r.get("MESSAGE")
                    .is_some_and(|m| m.starts_with("accepted connection"))
            })
            .cloned();
        let addition = all
            .iter()
            .find(|r| r.get("MESSAGE").is_some_and(|m| m == "added path"))
            .cloned();
        if let (Some(c), Some(a)) = (&connection, &addition) {
            break (c.clone(), a.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no connection and addition in the journal; records: {all:#?}\nstderr: {}",
            fs::read_to_string(out.join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    fs::write(out.join("stop"), "").unwrap();
    let _ = recorder.wait();

    assert_eq!(
        connection.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("ward-frontend")
    );
    assert_eq!(
        connection.get("WARD_UID").map(String::as_str),
        Some("0"),
        "{connection:#?}"
    );
    assert!(
        connection
            .get("WARD_CONNECTION")
            .is_some_and(|c| c.parse::<u64>().is_ok()),
        "{connection:#?}"
    );
    assert!(connection
        .get("WARD_PID")
        .is_some_and(|p| p.parse::<u64>().is_ok_and(|p| p > 0)));
    assert_eq!(
        connection.get("PRIORITY").map(String::as_str),
        Some("5"),
        "info is notice"
    );
    assert_eq!(
        addition.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("ward-store-writer")
    );
    assert!(
        addition
            .get("WARD_PATH")
            .is_some_and(|p| p.ends_with("-journal.txt")),
        "{addition:#?}"
    );
    // The journal got the lines: stderr holds only the broker's own (plain eprintln) lines.
    let stderr = fs::read_to_string(out.join("stderr.log")).unwrap_or_default();
    assert!(!stderr.contains("accepted connection"), "{stderr}");
}
