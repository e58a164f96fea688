//! Bad requests: each gets a clear error naming what is wrong, and the store is exactly as it
//! was before (database rows and store directory, read from disk).

use ward_e2e_tests::nar::NarNode;
use ward_e2e_tests::wire::{PathInfo, WireError, WorkerClient};
use ward_e2e_tests::{
    known_nix_daemon_deviation, nar, DaemonOptions, Fixture, ImportedGraph, StoreSnapshot,
    WardDaemon,
};

/// Adds one content-addressed path over the wire so the store is initialised and not empty.
fn populate_over_the_wire(client: &mut WorkerClient) -> String {
    let nar = nar::nar_of_file(b"valid before the bad request\n", false);
    let (path, ca) = nar::source_path("/nix/store", "already-there.txt", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    client
        .add_to_store_nar(&info, &nar, 64 * 1024, false)
        .unwrap_or_else(|e| panic!("adding {path}: {e}"));
    path
}

/// Panics unless `result` is an error from the daemon whose message contains every needle.
fn expect_daemon_error(result: Result<(), WireError>, what: &str, needles: &[&str]) -> String {
    match result {
        Err(WireError::Daemon { message }) => {
            // Shown with --nocapture: what a client of the daemon would read.
            eprintln!("{what}: the daemon said: {message}");
            for needle in needles {
                assert!(
                    message.to_lowercase().contains(&needle.to_lowercase()),
                    "the error for {what} should mention '{needle}': {message}"
                );
            }
            message
        }
        Ok(()) => panic!("{what} was accepted"),
        Err(other) => panic!("{what} should get an error message from the daemon, got {other}"),
    }
}

#[test]
fn missing_path_is_a_clear_error() {
    let Some(f) = Fixture::single_user("missing_path_is_a_clear_error") else {
        return;
    };
    f.populate();
    let before = f.snapshot();
    let missing = nar::made_up_path("/nix/store", "ward-e2e-missing", "missing");
    for args in [
        &["nix-store", "-q", "--references", &missing][..],
        &["nix-store", "-q", "--hash", &missing],
        &["nix-store", "--export", &missing],
        &["nix", "path-info", &missing],
    ] {
        let out = f.ward.fails(args[0], &args[1..]);
        out.assert_stderr_contains(&missing)
            .assert_stderr_contains("is not valid");
    }
    // NarFromPath of a missing path is an error from the daemon itself, sent before
    // STDERR_LAST (after it, no error can be reported any more).
    if !known_nix_daemon_deviation(
        "NarFromPath of a missing path",
        "Nix 2.8 sends STDERR_LAST first and then fails to dump, breaking the connection",
    ) {
        let mut client = WorkerClient::connect(f.daemon.socket()).expect("connect");
        let result = client.nar_from_path(&missing, 0).map(|_| ());
        expect_daemon_error(result, "NarFromPath of a missing path", &[&missing]);
        assert!(!client
            .is_valid_path(&missing)
            .expect("the connection goes on after the error"));
    }
    before.assert_unchanged(f.daemon.layout(), "queries of a missing path");
}

#[test]
fn untrusted_unsigned_import_is_refused() {
    let Some(f) = Fixture::start(
        "untrusted_unsigned_import_is_refused",
        DaemonOptions::single_user().untrusted(),
    ) else {
        return;
    };
    // Content-addressed adds still work for an untrusted user.
    f.populate();
    let before = f.snapshot();
    let g = ImportedGraph::new(&f.env.dir("in"), "/nix/store", "untrusted-import");
    let out = f
        .ward
        .fails_with_stdin("nix-store", &["--import"], &g.export);
    out.assert_stderr_contains(&g.a)
        .assert_stderr_contains("lacks a valid signature");
    before.assert_unchanged(f.daemon.layout(), "refusing an unsigned import");
}

#[test]
fn nar_hash_mismatch_is_refused() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut client);
    let before = StoreSnapshot::take(daemon.layout());
    let path = nar::made_up_path("/nix/store", "ward-e2e-liar", "hash-mismatch");
    let nar = nar::nar_of_file(b"the real contents\n", false);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.nar_hash = nar::base16(&nar::sha256(&nar::nar_of_file(
        b"claimed contents\n",
        false,
    )));
    // Trusted and dontCheckSigs: only the hash check stands in the way.
    let result = client.add_to_store_nar(&info, &nar, 64, true);
    expect_daemon_error(
        result,
        "a NAR whose hash does not match",
        &[&path, "hash mismatch"],
    );
    assert!(
        !client
            .is_valid_path(&path)
            .expect("the connection goes on after the error"),
        "{path} became valid"
    );
    before.assert_unchanged(daemon.layout(), "refusing a NAR with the wrong hash");
}

#[test]
fn nar_size_mismatch_is_refused() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut client);
    let before = StoreSnapshot::take(daemon.layout());
    let path = nar::made_up_path("/nix/store", "ward-e2e-size", "size-mismatch");
    let nar = nar::nar_of_file(b"sized\n", false);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.nar_size += 8;
    let result = client.add_to_store_nar(&info, &nar, 4096, true);
    expect_daemon_error(
        result,
        "a NAR whose size does not match",
        &[&path, "size mismatch"],
    );
    assert!(!client
        .is_valid_path(&path)
        .expect("the connection goes on after the error"));
    before.assert_unchanged(daemon.layout(), "refusing a NAR with the wrong size");
}

fn file(contents: &[u8]) -> NarNode {
    NarNode::File {
        contents: contents.to_vec(),
        executable: false,
    }
}

#[test]
fn malformed_nars_are_refused() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut client);
    let before = StoreSnapshot::take(daemon.layout());
    // Each is a NAR that Nix's parser (or its fixed version) refuses; the claimed hash and
    // size are honest, so only the NAR check stands in the way.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unsorted directory entries",
            NarNode::Directory(vec![
                (b"b".to_vec(), file(b"b")),
                (b"a".to_vec(), file(b"a")),
            ])
            .to_nar(),
        ),
        (
            "an entry named '..'",
            NarNode::Directory(vec![(b"..".to_vec(), file(b"up"))]).to_nar(),
        ),
        (
            "an entry name with a slash",
            NarNode::Directory(vec![(b"x/y".to_vec(), file(b"slash"))]).to_nar(),
        ),
        ("a wrong magic", {
            let mut nar = file(b"x").to_nar();
            nar[8] = b'N';
            nar
        }),
        ("a truncated archive", {
            let nar = file(b"truncated").to_nar();
            nar[..nar.len() - 8].to_vec()
        }),
    ];
    for (i, (what, nar)) in cases.iter().enumerate() {
        if i == 0
            && known_nix_daemon_deviation(
                "unsorted NAR check",
                "Nix 2.8's sort check never fires (prevName scoped per entry, CVE-2024-45593)",
            )
        {
            continue;
        }
        let path = nar::made_up_path("/nix/store", "ward-e2e-malformed", what);
        let info = PathInfo::for_nar(&path, nar);
        let result = client.add_to_store_nar(&info, nar, 4096, true);
        expect_daemon_error(result, &format!("a NAR with {what}"), &[]);
        assert!(
            !client
                .is_valid_path(&path)
                .expect("the connection goes on after the error"),
            "{path} ({what}) is valid"
        );
    }
    before.assert_unchanged(daemon.layout(), "refusing malformed NARs");
}

#[test]
fn duplicate_nar_entries_cannot_write_outside_the_store() {
    // CVE-2024-45593's shape: entry "x" a symlink out of the store, then entry "x" again as a
    // directory with a file. An untrusted client with an honest content-address claim.
    let daemon = WardDaemon::start(DaemonOptions::single_user().untrusted());
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut client);
    let before = StoreSnapshot::take(daemon.layout());
    let canary = tempfile::tempdir().expect("canary dir");
    let target = canary.path().as_os_str().as_encoded_bytes().to_vec();
    let evil = NarNode::Directory(vec![
        (b"x".to_vec(), NarNode::Symlink(target)),
        (
            b"x".to_vec(),
            NarNode::Directory(vec![(b"pwn".to_vec(), file(b"owned"))]),
        ),
    ])
    .to_nar();
    let (path, ca) = nar::source_path("/nix/store", "ward-e2e-dupe", &evil);
    let mut info = PathInfo::for_nar(&path, &evil);
    info.ca = ca;
    let result = client.add_to_store_nar(&info, &evil, 4096, false);
    expect_daemon_error(result, "a NAR with a duplicate entry", &[]);
    let pwn = canary.path().join("pwn");
    assert!(
        !pwn.exists(),
        "a NAR wrote {} outside the store",
        pwn.display()
    );
    assert!(!client
        .is_valid_path(&path)
        .expect("the connection goes on after the error"));
    before.assert_unchanged(daemon.layout(), "refusing a NAR with duplicate entries");
}

#[test]
fn content_address_claim_that_does_not_match_is_refused() {
    // An untrusted client claims a content address for data it does not match: only a
    // correct claim (or a signature) would let the path in.
    let daemon = WardDaemon::start(DaemonOptions::single_user().untrusted());
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut client);
    let before = StoreSnapshot::take(daemon.layout());
    let real = nar::nar_of_file(b"what is really sent\n", false);
    let claimed = nar::nar_of_file(b"what the claim is about\n", false);
    let (path, ca) = nar::source_path("/nix/store", "ward-e2e-ca-liar", &claimed);
    let mut info = PathInfo::for_nar(&path, &real);
    info.ca = ca;
    let result = client.add_to_store_nar(&info, &real, 4096, false);
    expect_daemon_error(result, "a false content-address claim", &[&path]);
    assert!(!client
        .is_valid_path(&path)
        .expect("the connection goes on after the error"));
    before.assert_unchanged(daemon.layout(), "refusing a false content-address claim");
}

#[test]
fn client_hanging_up_mid_upload_leaves_the_store_unchanged() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut setup = WorkerClient::connect(daemon.socket()).expect("connect");
    populate_over_the_wire(&mut setup);
    let before = StoreSnapshot::take(daemon.layout());

    let contents: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let nar = nar::nar_of_file(&contents, false);
    let (path, ca) = nar::source_path("/nix/store", "ward-e2e-half", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    let mut uploader = WorkerClient::connect(daemon.socket()).expect("connect");
    uploader
        .begin_add_to_store_nar(&info, false)
        .expect("sending AddToStoreNar");
    uploader
        .send_frames(&nar[..nar.len() / 2], 32 * 1024)
        .expect("sending half the NAR");
    uploader.hang_up();

    before.assert_unchanged(
        daemon.layout(),
        "a client hung up in the middle of an upload",
    );
    let mut daemon = daemon;
    assert!(
        daemon.is_running(),
        "the daemon died when a client hung up mid-upload"
    );
    // A new client is served, and the same path can still be added in full.
    let mut client =
        WorkerClient::connect(daemon.socket()).expect("a new client after the hang-up");
    assert!(
        !client.is_valid_path(&path).expect("IsValidPath"),
        "half-uploaded {path} is valid"
    );
    client
        .add_to_store_nar(&info, &nar, 32 * 1024, false)
        .unwrap_or_else(|e| panic!("adding {path} in full after the aborted upload: {e}"));
    let stored = client
        .query_path_info(&path)
        .expect("QueryPathInfo")
        .expect("valid now");
    assert_eq!(stored.nar_hash, info.nar_hash);
    let on_disk = nar::dump_path(&daemon.layout().real_path(&path)).expect("dump");
    assert!(
        on_disk == nar,
        "{path} on disk differs from what was uploaded"
    );
    // The earlier connection was not disturbed either.
    assert!(setup
        .is_valid_path(&path)
        .expect("the first connection still works"));
}

/// Whether `result` shows the daemon refused promptly: an error message or a closed
/// connection, not a read that timed out.
fn refused_promptly(result: Result<(), WireError>) -> Result<String, String> {
    match result {
        Err(WireError::Daemon { message }) => Ok(message),
        Err(WireError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(format!("connection closed ({e})"))
        }
        Err(other) => Err(format!("no prompt refusal: {other}")),
        Ok(()) => Err("the request was accepted".into()),
    }
}

#[test]
fn garbage_from_clients_does_not_take_the_daemon_down() {
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let mut setup = WorkerClient::connect(daemon.socket()).expect("connect");
    let valid = populate_over_the_wire(&mut setup);
    let before = StoreSnapshot::take(daemon.layout());

    // A wrong magic number: the daemon hangs up.
    {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(&0xdead_beef_u64.to_le_bytes())
            .expect("write");
        let mut reply = Vec::new();
        match stream.read_to_end(&mut reply) {
            Ok(_) => assert!(
                reply.len() <= 16,
                "answered a bad magic with {} bytes",
                reply.len()
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    // An unknown op code, and a string length no daemon should try to allocate.
    let cases: [(&str, Vec<u8>); 2] = [
        ("an unknown op code", 9999u64.to_le_bytes().to_vec()),
        ("a 2^62-byte store path", {
            let mut bytes = 1u64.to_le_bytes().to_vec(); // IsValidPath
            bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
            bytes.extend_from_slice(b"/nix/sto");
            bytes
        }),
    ];
    for (what, bytes) in cases {
        let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
        client
            .set_read_timeout(std::time::Duration::from_secs(10))
            .expect("timeout");
        client.send_raw(&bytes).expect("sending the request");
        if let Err(why) = refused_promptly(client.process_stderr()) {
            panic!("{what}: {why}");
        }
    }
    let mut daemon = daemon;
    assert!(daemon.is_running(), "the daemon died of a client's garbage");
    let mut client = WorkerClient::connect(daemon.socket()).expect("a new client afterwards");
    assert!(client.is_valid_path(&valid).expect("IsValidPath"));
    assert!(setup
        .is_valid_path(&valid)
        .expect("the first connection still works"));
    before.assert_unchanged(daemon.layout(), "garbage from clients");
}
