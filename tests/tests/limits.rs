//! Resource limits against hostile clients: one user holding more connections than the limit
//! per user (1024) does not stop another user from being served, and that user's next
//! connection is refused with a message naming the limit; a client that connects and never
//! finishes its handshake is dropped after 10 s; a client that sends one byte a second does not
//! delay anyone else.
//!
//! Root only for the first (a second user); the others run as anyone.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_e2e_tests::lifecycle::wait_for_log_text;
use ward_e2e_tests::wire::WorkerClient;
use ward_e2e_tests::{ensure_test_user, inputs, require_root, DaemonOptions, Fixture};

/// Connections alice opens and holds: more than the limit per user.
const HELD: usize = 1100;

#[test]
fn one_user_holding_too_many_connections_does_not_lock_out_another() {
    let test = "one_user_holding_too_many_connections_does_not_lock_out_another";
    if !require_root(test) {
        return;
    }
    let Some(f) = Fixture::start(test, DaemonOptions::multi_user()) else {
        return;
    };
    let alice = ensure_test_user();
    // Alice's process opens HELD connections and keeps them until its stdin closes.
    let script = format!(
        "import socket, sys\n\
         held = []\n\
         for _ in range({HELD}):\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.connect({socket:?})\n\
         \x20   held.append(s)\n\
         print('holding', flush=True)\n\
         sys.stdin.read()\n",
        socket = f.daemon.socket().display().to_string()
    );
    let mut holder = Command::new("setpriv")
        .arg(format!("--reuid={}", alice.uid))
        .arg(format!("--regid={}", alice.gid))
        .arg("--init-groups")
        .args(["/usr/bin/python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 8];
    holder
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .expect("the holder reports its connections");
    // The frontend refuses the ones past the limit.
    wait_for_log_text(
        || f.daemon.log(),
        "connections to the daemon open already, the limit per user",
        Duration::from_secs(30),
    );

    // Another user (root) is served at once.
    let started = Instant::now();
    let dir = f.env.dir("inputs");
    let file = inputs::file(
        &dir,
        "served.txt",
        b"served while alice holds her connections\n",
    );
    let path = f.ward.add(&[&file]).remove(0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "root waited {:?}",
        started.elapsed()
    );

    // Alice's own next command is refused, naming the limit.
    let as_alice = f.env.client_as(&f.daemon, &alice);
    let refused = as_alice.fails("nix-store", &["--query", "--hash", &path]);
    assert!(refused.stderr.contains("limit per user"), "{refused}");

    drop(holder.stdin.take());
    let _ = holder.wait();
    // Her connections gone, she is served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let query = as_alice.run("nix-store", &["--query", "--hash", &path]);
        if query.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "alice still refused: {query}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_dropped_and_a_slow_one_delays_nobody() {
    let test = "a_client_that_never_finishes_its_handshake_is_dropped_and_a_slow_one_delays_nobody";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    // Silent: connects and sends nothing.
    let mut silent = UnixStream::connect(f.daemon.socket()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Slow: sends its magic one byte a second.
    let socket = f.daemon.socket().to_path_buf();
    let slow = std::thread::spawn(move || {
        use std::io::Write;
        let mut s = UnixStream::connect(&socket).unwrap();
        for byte in 0x6e697863u64.to_le_bytes() {
            if s.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // Meanwhile others are served at once.
    for _ in 0..5 {
        let started = Instant::now();
        let mut client = WorkerClient::connect(f.daemon.socket()).expect("served");
        assert!(!client
            .is_valid_path("/nix/store/00000000000000000000000000000000-x")
            .unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent
        .read(&mut buf)
        .expect("the daemon closes it, not the read timeout");
    assert_eq!(n, 0, "the silent client got bytes");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the silent client was kept {waited:?}"
    );
    slow.join().unwrap();
    wait_for_log_text(
        || f.daemon.log(),
        "not finished within 10 s",
        Duration::from_secs(5),
    );
}
