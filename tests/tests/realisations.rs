//! RegisterDrvOutput (content-addressed derivations' realisations): trusted clients may
//! register any realisation; untrusted ones only realisations signed by a trusted key.

use ward_e2e_tests::wire::WorkerClient;
use ward_e2e_tests::{inputs, known_nix_daemon_deviation, DaemonOptions, Fixture};

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// Sends RegisterDrvOutput (op 42) with an unsigned realisation of `out_path`.
fn register_unsigned(client: &mut WorkerClient, out_path: &str) -> Result<(), String> {
    let base = out_path.rsplit('/').next().unwrap();
    let json = format!(
        r#"{{"dependentRealisations":{{}},"id":"sha256:{}!out","outPath":"{base}","signatures":[]}}"#,
        "ab".repeat(32)
    );
    let mut request = Vec::new();
    put_u64(&mut request, 42);
    put_str(&mut request, &json);
    client.send_raw(&request).map_err(|e| e.to_string())?;
    client.process_stderr().map_err(|e| e.to_string())
}

fn fixture(test: &str, options: DaemonOptions) -> Option<(Fixture, String)> {
    let f = Fixture::start(test, options)?;
    let dir = f.env.dir("in");
    let file = inputs::file(&dir, "out.txt", b"a realised output\n");
    let out = f.ward.add(&[&file]).remove(0);
    Some((f, out))
}

#[test]
fn untrusted_clients_cannot_register_unsigned_realisations() {
    let test = "untrusted_clients_cannot_register_unsigned_realisations";
    if known_nix_daemon_deviation(
        test,
        "Nix 2.8 registers realisations from untrusted clients without checking signatures",
    ) {
        return;
    }
    // Nobody is trusted, so the test process is an untrusted client.
    let Some((f, out)) = fixture(
        test,
        DaemonOptions::single_user().conf("trusted-users = nobody"),
    ) else {
        return;
    };
    let mut client = WorkerClient::handshake(f.daemon.socket()).unwrap();
    client.set_options().unwrap();
    let err = register_unsigned(&mut client, &out).unwrap_err();
    assert!(err.contains("lacks a valid signature"), "{err}");
    // The connection goes on.
    assert!(client.is_valid_path(&out).unwrap());
}

#[test]
fn trusted_clients_register_realisations() {
    let test = "trusted_clients_register_realisations";
    // Like Nix, the store keeps realisations only with the `ca-derivations` feature.
    let options = DaemonOptions::single_user().conf("experimental-features = ca-derivations");
    let Some((f, out)) = fixture(test, options) else {
        return;
    };
    let mut client = WorkerClient::handshake(f.daemon.socket()).unwrap();
    client.set_options().unwrap();
    register_unsigned(&mut client, &out).unwrap();
    let rows: i64 = rusqlite::Connection::open(f.daemon.layout().state_dir.join("db/db.sqlite"))
        .unwrap()
        .query_row("select count(*) from Realisations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "the realisation was stored");
}
