//! Golden tests against Nix's own characterization data and real Nix 2.8 traces.
//!
//! * `libstore-tests/data/{worker,common}-protocol/*.bin` decode to the value in the matching
//!   `.json` and re-encode byte for byte. The protocol version of each case comes from
//!   `src/libstore-tests/{worker,common}-protocol.cc` (NixOS/nix, the commit the data was copied
//!   from); values of the cases without JSON are copied from there too.
//! * `serve-protocol/*.bin` decode to their JSON values (the serve protocol's own layouts are
//!   decoded here with the wire primitives; shared layouts round-trip as well).
//! * Every `nix-traces/*.client.bin` is replayed through the daemon-side decoders (handshake,
//!   every op's arguments, framed uploads) and must parse to the last byte; every
//!   `*.daemon.bin` is replayed through the client-side decoders the same way.
//!
//! The data lives outside the repository; it is found as the first existing of
//! `$WARD_SHARED_DIR/<name>`, `<crate>/../../shared/<name>`, `<crate>/../../../shared/<name>`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Cursor;
use std::path::PathBuf;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::Hash;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_proto::wire::{FramedReader, WireError, WireReader, WireWriter};
use ward_proto::worker::types::{
    read_ca, read_opt_ca, write_ca, write_opt_ca, BuildMode, BuildResult, BuildResultLayout,
    BuildStatus, BuiltOutputsLayout, DerivedPath, DrvOutput, DrvPathOutput, KeyedBuildResult,
    OutputsSpec, PathRealisation, Realisation, TrustFlag, UnkeyedPathInfo, UnkeyedRealisation,
    ValidPathInfo, FULL_PATH_INFO_VERSION,
};
use ward_proto::worker::{
    client_finish, client_negotiate, read_op, ClientHandshakeInfo, FeatureSet, HandshakeError, Op,
    ProtocolVersion, Reply, Request, ServerHandshake, StderrMessage, Upload, WireContext,
    FEATURE_REALISATION_WITH_PATH_NOT_HASH,
};

// ---------------------------------------------------------------------------------------------
// Locating the data

fn shared(name: &str) -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("WARD_SHARED_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    candidates.push(manifest.join("../../shared").join(name));
    candidates.push(manifest.join("../../../shared").join(name));
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "golden data '{name}' not found; set WARD_SHARED_DIR to the directory holding it. \
             Tried: {candidates:?}"
            )
        })
}

fn proto_dir(proto: &str) -> PathBuf {
    shared("nix-test-data")
        .join("libstore-tests/data")
        .join(proto)
}

fn bin(proto: &str, stem: &str) -> Vec<u8> {
    let path = proto_dir(proto).join(format!("{stem}.bin"));
    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn json(proto: &str, stem: &str) -> Value {
    let path = proto_dir(proto).join(format!("{stem}.json"));
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The JSON value as a list of cases: tuple tests store an array, single-value tests an object.
fn cases(proto: &str, stem: &str) -> Vec<Value> {
    match json(proto, stem) {
        Value::Array(items) => items,
        single => vec![single],
    }
}

/// Every `.bin` stem in a data directory; the tests check that each one is covered.
fn stems(proto: &str) -> BTreeSet<String> {
    fs::read_dir(proto_dir(proto))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".bin").map(str::to_owned)
        })
        .collect()
}

fn ctx(minor: u8) -> WireContext {
    WireContext::new(StoreDir::default(), ProtocolVersion::v1(minor))
}

fn ctx_realisation_feature() -> WireContext {
    let mut ctx = ctx(38);
    ctx.features
        .insert(FEATURE_REALISATION_WITH_PATH_NOT_HASH.to_owned());
    ctx
}

fn reader(bytes: &[u8]) -> WireReader<Cursor<Vec<u8>>> {
    WireReader::new(Cursor::new(bytes.to_vec()))
}

/// Bytes of the underlying input consumed so far by `r`.
fn consumed(r: &WireReader<Cursor<Vec<u8>>>) -> usize {
    r.get_ref().position() as usize - r.buffered().len()
}

async fn assert_at_end(r: &mut WireReader<Cursor<Vec<u8>>>, what: &str) {
    assert!(
        r.read_u64_or_eof("end").await.unwrap().is_none(),
        "{what}: trailing bytes after the last value"
    );
}

/// Decodes `expected.len()` values, checks them against the JSON, checks the input is used up,
/// and (when `write` is given) re-encodes and compares bytes.
macro_rules! golden {
    (
        $what:expr, $bytes:expr, $json:expr,
        |$r:ident| $read:expr,
        |$got:ident, $want:ident| $check:expr,
        |$w:ident, $v:ident| $write:expr $(,)?
    ) => {{
        let what: &str = $what;
        let bytes: Vec<u8> = $bytes;
        let wants: Vec<Value> = $json;
        let mut $r = reader(&bytes);
        let mut decoded = Vec::new();
        for $want in &wants {
            let $got = $read
                .await
                .unwrap_or_else(|e| panic!("{what}: decoding failed: {e}"));
            $check;
            decoded.push($got);
        }
        assert_at_end(&mut $r, what).await;
        let mut $w = WireWriter::new();
        for $v in &decoded {
            $write;
        }
        assert_eq!($w.into_bytes(), bytes, "{what}: re-encoding differs");
    }};
}

// ---------------------------------------------------------------------------------------------
// JSON → values (Nix's JSON shapes)

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a JSON string, got {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a JSON number, got {v}"))
}

fn sp(v: &Value) -> StorePath {
    StorePath::from_base_name(s(v)).unwrap()
}

fn opt_sp(v: &Value) -> Option<StorePath> {
    (!v.is_null()).then(|| sp(v))
}

fn sp_set(v: &Value) -> BTreeSet<StorePath> {
    v.as_array().unwrap().iter().map(sp).collect()
}

fn ca(v: &Value) -> ContentAddress {
    let method = match s(&v["method"]) {
        "text" => ContentAddressMethod::Text,
        "flat" => ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
        "nar" => ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        "git" => ContentAddressMethod::Fixed(FileIngestionMethod::Git),
        other => panic!("unknown method {other}"),
    };
    ContentAddress {
        method,
        hash: Hash::parse_any_prefixed(s(&v["hash"])).unwrap(),
    }
}

fn opt_ca(v: &Value) -> Option<ContentAddress> {
    (!v.is_null()).then(|| ca(v))
}

/// A signature: the string form, or the structured `{keyName, sig}` form newer Nix uses.
fn sig(v: &Value) -> String {
    match v {
        Value::String(text) => text.clone(),
        Value::Object(_) => format!("{}:{}", s(&v["keyName"]), s(&v["sig"])),
        other => panic!("bad signature {other}"),
    }
}

fn sigs(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(sig).collect()
}

fn derived_path(v: &Value) -> DerivedPath {
    match v {
        Value::String(_) => DerivedPath::Opaque(sp(v)),
        Value::Object(_) => {
            let outputs: Vec<&str> = v["outputs"].as_array().unwrap().iter().map(s).collect();
            let outputs = if outputs == ["*"] {
                OutputsSpec::All
            } else {
                OutputsSpec::Names(outputs.iter().map(|o| o.to_string()).collect())
            };
            DerivedPath::Built {
                drv_path: sp(&v["drvPath"]),
                outputs,
            }
        }
        other => panic!("bad derived path {other}"),
    }
}

fn realisation(v: &Value) -> Realisation {
    Realisation {
        id: DrvOutput::parse(s(&v["id"])).unwrap(),
        out_path: sp(&v["outPath"]),
        signatures: v.get("signatures").map(sigs).unwrap_or_default(),
        dependent_realisations: v
            .get("dependentRealisations")
            .map(|deps| {
                deps.as_object()
                    .unwrap()
                    .iter()
                    .map(|(id, path)| (DrvOutput::parse(id).unwrap(), sp(path)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn unkeyed_realisation(v: &Value) -> UnkeyedRealisation {
    UnkeyedRealisation {
        out_path: sp(&v["outPath"]),
        signatures: sigs(&v["signatures"]),
    }
}

fn drv_output(v: &Value) -> DrvPathOutput {
    DrvPathOutput {
        drv_path: sp(&v["drvPath"]),
        output_name: s(&v["outputName"]).to_owned(),
    }
}

fn unkeyed_info(v: &Value) -> UnkeyedPathInfo {
    assert_eq!(s(&v["storeDir"]), "/nix/store");
    UnkeyedPathInfo {
        deriver: opt_sp(&v["deriver"]),
        nar_hash: Hash::parse_any_prefixed(s(&v["narHash"])).unwrap(),
        references: sp_set(&v["references"]),
        registration_time: v["registrationTime"].as_i64().unwrap_or(0),
        nar_size: u(&v["narSize"]),
        ultimate: v["ultimate"].as_bool().unwrap(),
        sigs: sigs(&v["signatures"]),
        ca: opt_ca(&v["ca"]),
    }
}

fn keyed_info(v: &Value) -> ValidPathInfo {
    unkeyed_info(v).with_path(sp(&v["path"]))
}

/// Checks a decoded build result against Nix's JSON. The JSON describes Nix's in-memory value,
/// so a few wire details are compared only where the JSON has them (ids, optional keys).
fn check_build_result(got: &BuildResult, want: &Value, what: &str) {
    let status = BuildStatus::from_name(s(&want["status"])).unwrap();
    assert_eq!(got.status, status, "{what}");
    assert_eq!(
        want["success"].as_bool().unwrap(),
        status.is_success(),
        "{what}"
    );
    assert_eq!(got.error_msg, want.get("errorMsg").map_or("", s), "{what}");
    assert_eq!(u64::from(got.times_built), u(&want["timesBuilt"]), "{what}");
    assert_eq!(
        got.is_non_deterministic,
        want.get("isNonDeterministic").is_some_and(|b| b == true),
        "{what}"
    );
    assert_eq!(got.start_time, u(&want["startTime"]), "{what}");
    assert_eq!(got.stop_time, u(&want["stopTime"]), "{what}");
    assert_eq!(got.cpu_user_micros, want.get("cpuUser").map(u), "{what}");
    assert_eq!(
        got.cpu_system_micros,
        want.get("cpuSystem").map(u),
        "{what}"
    );
    let outputs = want
        .get("builtOutputs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        got.built_outputs.len(),
        outputs.len(),
        "{what}: builtOutputs"
    );
    for (name, out) in &outputs {
        let realisation = &got.built_outputs[name];
        assert_eq!(realisation.out_path, sp(&out["outPath"]), "{what}: {name}");
        if let Some(id) = out.get("id") {
            assert_eq!(
                realisation.id,
                DrvOutput::parse(s(id)).unwrap(),
                "{what}: {name}"
            );
        }
        if let Some(sig_list) = out.get("signatures") {
            assert_eq!(realisation.signatures, sigs(sig_list), "{what}");
        }
        if let Some(deps) = out.get("dependentRealisations") {
            assert_eq!(
                realisation.dependent_realisations.len(),
                deps.as_object().unwrap().len(),
                "{what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases shared by the three protocols

/// Checks the cases whose layout is the same in every protocol. Returns false for stems it
/// does not know.
async fn shared_case(proto: &str, stem: &str) -> bool {
    let what = &format!("{proto}/{stem}");
    let c = ctx(34);
    let dir = &c.store_dir;
    match stem {
        "string" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| r.read_bytes("string"),
            |got, want| { assert_eq!(got, s(want).as_bytes(), "{what}") },
            |w, v| w.put_bytes(v)
        ),
        "store-path" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| r.read_path("store path", dir),
            |got, want| { assert_eq!(got, sp(want), "{what}") },
            |w, v| w.put_path(dir, v)
        ),
        "optional-store-path" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| r.read_opt_path("store path", dir),
            |got, want| { assert_eq!(got, opt_sp(want), "{what}") },
            |w, v| w.put_opt_path(dir, v.as_ref())
        ),
        "content-address" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| read_ca(&mut r, "ca"),
            |got, want| { assert_eq!(got, ca(want), "{what}") },
            |w, v| write_ca(&mut w, v)
        ),
        "optional-content-address" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| read_opt_ca(&mut r, "ca"),
            |got, want| { assert_eq!(got, opt_ca(want), "{what}") },
            |w, v| write_opt_ca(&mut w, v.as_ref())
        ),
        "vector" => {
            // (vector<string>, vector<string>, vector<string>, vector<vector<string>>)
            let wants = cases(proto, stem);
            let bytes = bin(proto, stem);
            let mut r = reader(&bytes);
            let mut w = WireWriter::new();
            for want in &wants[..3] {
                let got = r.read_string_list("vector").await.unwrap();
                let expected: Vec<&str> = want.as_array().unwrap().iter().map(s).collect();
                assert_eq!(got, expected, "{what}");
                w.put_strings(&got);
            }
            let n = r.read_count("outer vector").await.unwrap();
            let want = wants[3].as_array().unwrap();
            assert_eq!(n, want.len(), "{what}");
            w.put_u64(n as u64);
            for inner in want {
                let got = r.read_string_list("inner vector").await.unwrap();
                let expected: Vec<&str> = inner.as_array().unwrap().iter().map(s).collect();
                assert_eq!(got, expected, "{what}");
                w.put_strings(&got);
            }
            assert_at_end(&mut r, what).await;
            assert_eq!(w.into_bytes(), bytes, "{what}: re-encoding differs");
        }
        "set" => {
            // (StringSet, StringSet, StringSet, set<StringSet>)
            let wants = cases(proto, stem);
            let bytes = bin(proto, stem);
            let mut r = reader(&bytes);
            let mut w = WireWriter::new();
            let as_set = |v: &Value| -> BTreeSet<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| s(x).to_owned())
                    .collect()
            };
            for want in &wants[..3] {
                let got = r.read_string_set("set").await.unwrap();
                assert_eq!(got, as_set(want), "{what}");
                w.put_strings(&got);
            }
            let n = r.read_count("outer set").await.unwrap();
            let mut outer = BTreeSet::new();
            for _ in 0..n {
                outer.insert(r.read_string_set("inner set").await.unwrap());
            }
            let want: BTreeSet<_> = wants[3].as_array().unwrap().iter().map(as_set).collect();
            assert_eq!(outer, want, "{what}");
            w.put_u64(outer.len() as u64);
            for inner in &outer {
                w.put_strings(inner);
            }
            assert_at_end(&mut r, what).await;
            assert_eq!(w.into_bytes(), bytes, "{what}: re-encoding differs");
        }
        // The JSON-era DrvOutput id and realisation files (kept in the data although current
        // Nix no longer tests them).
        "drv-output" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| DrvOutput::wire_read(&mut r),
            |got, want| assert_eq!(got, DrvOutput::parse(s(want)).unwrap(), "{what}"),
            |w, v| v.wire_write(&mut w),
        ),
        "realisation-with-deps" => golden!(
            what,
            bin(proto, stem),
            cases(proto, stem),
            |r| Realisation::wire_read(&mut r),
            |got, want| assert_eq!(got, realisation(want), "{what}"),
            |w, v| v.wire_write(&mut w),
        ),
        "realisation" => {
            // The second value was written by a Nix that briefly put structured signatures
            // (`{"keyName", "sig"}` objects) into realisation JSON. Nix 2.8 cannot read that
            // (its realisation JSON reader wants strings) and neither does ward: it is refused
            // with a typed error, and the stream stays in sync after it.
            let bytes = bin(proto, stem);
            let wants = cases(proto, stem);
            let mut r = reader(&bytes);
            let first = Realisation::wire_read(&mut r).await.unwrap();
            assert_eq!(first, realisation(&wants[0]), "{what}");
            let second = Realisation::wire_read(&mut r).await;
            assert!(
                matches!(second, Err(WireError::InvalidJson { .. })),
                "{what}: {second:?}"
            );
            assert!(wants[1]["signatures"][0].is_object(), "{what}");
            assert_at_end(&mut r, what).await;
            let mut w = WireWriter::new();
            first.wire_write(&mut w);
            assert!(
                bytes.starts_with(w.as_bytes()),
                "{what}: first value re-encoding differs"
            );
        }
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Worker protocol

const WORKER: &str = "worker-protocol";

async fn build_results(stem: &str, c: &WireContext) {
    let what = &format!("{WORKER}/{stem}");
    golden!(
        what,
        bin(WORKER, stem),
        cases(WORKER, stem),
        |r| BuildResult::read(&mut r, c),
        |got, want| check_build_result(&got, want, what),
        |w, v| v.write(&mut w, c),
    );
}

/// Current Nix writes `builtOutputs` realisation JSON with only `id` and `outPath` (and a zero
/// hash); ward writes what Nix 2.8 writes (all four keys), which every client reads the same.
/// So this file is decoded and checked, and ward's own encoding must decode to the same value.
async fn build_results_decode_only(stem: &str, c: &WireContext) {
    let what = &format!("{WORKER}/{stem}");
    let bytes = bin(WORKER, stem);
    let mut r = reader(&bytes);
    let mut w = WireWriter::new();
    let mut decoded = Vec::new();
    for want in cases(WORKER, stem) {
        let got = BuildResult::read(&mut r, c).await.unwrap();
        check_build_result(&got, &want, what);
        got.write(&mut w, c);
        decoded.push(got);
    }
    assert_at_end(&mut r, what).await;
    let mut back = reader(w.as_bytes());
    for got in &decoded {
        assert_eq!(
            &BuildResult::read(&mut back, c).await.unwrap(),
            got,
            "{what}"
        );
    }
}

async fn worker_case(stem: &str) {
    let what = &format!("{WORKER}/{stem}");
    match stem {
        "derived-path-1.29" | "derived-path-1.30" => {
            let c = ctx(if stem.ends_with("29") { 29 } else { 30 });
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| DerivedPath::read(&mut r, &c),
                |got, want| { assert_eq!(got, derived_path(want), "{what}") },
                |w, v| v.write(&mut w, &c).unwrap()
            );
        }
        "drv-output-realisation-with-path-not-hash" => {
            let c = ctx_realisation_feature();
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| DrvPathOutput::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, drv_output(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            );
        }
        "unkeyed-realisation-realisation-with-path-not-hash" => {
            let c = ctx_realisation_feature();
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| UnkeyedRealisation::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, unkeyed_realisation(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            );
        }
        "realisation-realisation-with-path-not-hash" => {
            let c = ctx_realisation_feature();
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| PathRealisation::wire_read(&mut r, &c),
                |got, want| {
                    let expected = PathRealisation {
                        key: drv_output(&want["key"]),
                        value: unkeyed_realisation(&want["value"]),
                    };
                    assert_eq!(got, expected, "{what}")
                },
                |w, v| v.wire_write(&mut w, &c)
            );
        }
        "build-result-1.27" => build_results(stem, &ctx(27)).await,
        "build-result-1.28" => build_results(stem, &ctx(28)).await,
        "build-result-1.29" => build_results(stem, &ctx(29)).await,
        "build-result-1.29-compat" => build_results_decode_only(stem, &ctx(29)).await,
        "build-result-1.37" => build_results(stem, &ctx(37)).await,
        "build-result-realisation-with-path-not-hash" => {
            build_results(stem, &ctx_realisation_feature()).await
        }
        "keyed-build-result-1.29" => {
            let c = ctx(29);
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| KeyedBuildResult::read(&mut r, &c),
                |got, want| {
                    assert_eq!(got.path, derived_path(&want["path"]), "{what}");
                    check_build_result(&got.result, want, what)
                },
                |w, v| v.write(&mut w, &c).unwrap()
            );
        }
        "unkeyed-valid-path-info-1.15" => {
            let c = ctx(15);
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| UnkeyedPathInfo::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, unkeyed_info(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            );
        }
        "valid-path-info-1.15" | "valid-path-info-1.16" => {
            let c = ctx(if stem.ends_with("15") { 15 } else { 16 });
            golden!(
                what,
                bin(WORKER, stem),
                cases(WORKER, stem),
                |r| ValidPathInfo::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, keyed_info(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            );
        }
        "build-mode" => golden!(
            what,
            bin(WORKER, stem),
            cases(WORKER, stem),
            |r| BuildMode::read(&mut r),
            |got, want| { assert_eq!(got.code(), u(want), "{what}") },
            |w, v| v.write(&mut w)
        ),
        "optional-trusted-flag" => golden!(
            what,
            bin(WORKER, stem),
            cases(WORKER, stem),
            |r| TrustFlag::read_opt(&mut r),
            |got, want| {
                let expected = match want {
                    Value::Null => None,
                    Value::Bool(true) => Some(TrustFlag::Trusted),
                    Value::Bool(false) => Some(TrustFlag::NotTrusted),
                    other => panic!("{other}"),
                };
                assert_eq!(got, expected, "{what}")
            },
            |w, v| TrustFlag::write_opt(*v, &mut w)
        ),
        "client-handshake-info_1_30"
        | "client-handshake-info_1_33"
        | "client-handshake-info_1_35" => {
            // No JSON: the values are those of worker-protocol.cc.
            let info = |v: &str, trust| ClientHandshakeInfo {
                daemon_nix_version: Some(v.into()),
                trust,
            };
            let (minor, expected) = match stem {
                "client-handshake-info_1_30" => (30, vec![ClientHandshakeInfo::default()]),
                "client-handshake-info_1_33" => (33, vec![info("foo", None), info("bar", None)]),
                _ => (
                    35,
                    vec![
                        info("foo", Some(TrustFlag::NotTrusted)),
                        info("bar", Some(TrustFlag::Trusted)),
                    ],
                ),
            };
            let version = ProtocolVersion::v1(minor);
            let bytes = bin(WORKER, stem);
            let mut r = reader(&bytes);
            let mut w = WireWriter::new();
            for want in &expected {
                let got = ClientHandshakeInfo::read(&mut r, version).await.unwrap();
                assert_eq!(&got, want, "{what}");
                got.write(&mut w, version).unwrap();
            }
            assert_at_end(&mut r, what).await;
            assert_eq!(w.into_bytes(), bytes, "{what}");
        }
        "handshake-to-client" => handshake_to_client().await,
        other => {
            assert!(
                shared_case(WORKER, other).await,
                "no golden check for {WORKER}/{other}.bin"
            );
        }
    }
}

/// The daemon side of a 1.10 handshake writes exactly `handshake-to-client.bin`; the client
/// side accepts it, refuses every truncation, and reacts to corruptions as Nix's own test says.
async fn handshake_to_client() {
    let golden = bin(WORKER, "handshake-to-client");
    let v110 = ProtocolVersion::v1(10);
    let server = ServerHandshake {
        version: v110,
        min_client_version: v110,
        features: FeatureSet::new(),
    };
    let mut client_bytes = WireWriter::new();
    client_bytes.put_u64(ward_proto::worker::WORKER_MAGIC_1);
    client_bytes.put_u64(v110.to_wire());
    let mut r = reader(client_bytes.as_bytes());
    let mut to_client = Vec::new();
    let negotiated = server.negotiate(&mut r, &mut to_client).await.unwrap();
    assert_eq!(negotiated.version, v110);
    assert_eq!(to_client, golden, "handshake-to-client.bin");

    let replay = |bytes: Vec<u8>| async move {
        let mut r = reader(&bytes);
        client_negotiate(&mut r, &mut tokio::io::sink(), v110, &FeatureSet::new()).await
    };
    assert_eq!(replay(golden.clone()).await.unwrap().version, v110);
    for len in 0..golden.len() {
        let err = replay(golden[..len].to_vec()).await.unwrap_err();
        assert!(
            matches!(err, HandshakeError::Wire(ref e) if e.is_eof()),
            "truncated at {len}: {err}"
        );
    }
    for idx in 0..golden.len() {
        let mut corrupt = golden.clone();
        corrupt[idx] = corrupt[idx].wrapping_mul(4).wrapping_add(1);
        let result = replay(corrupt).await;
        match idx {
            0..=3 => assert!(
                matches!(result, Err(HandshakeError::BadMagic { .. })),
                "idx {idx}"
            ),
            9 => assert!(
                matches!(result, Err(HandshakeError::UnsupportedDaemonMajor { .. })),
                "idx {idx}"
            ),
            4..=7 | 12.. => assert!(
                matches!(
                    result,
                    Err(HandshakeError::Wire(WireError::IntegerTooLarge { .. }))
                ),
                "idx {idx}: {result:?}"
            ),
            _ => assert_eq!(result.unwrap().version, v110, "idx {idx}"),
        }
    }
}

#[tokio::test]
async fn worker_protocol_golden() {
    let all = stems(WORKER);
    assert!(
        all.len() >= 30,
        "expected the full worker-protocol data set, found {}",
        all.len()
    );
    for stem in &all {
        worker_case(stem).await;
    }
}

#[tokio::test]
async fn common_protocol_golden() {
    for stem in &stems("common-protocol") {
        assert!(
            shared_case("common-protocol", stem).await,
            "no golden check for common-protocol/{stem}.bin"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Serve protocol (decode; layouts shared with the worker protocol also re-encode)

const SERVE: &str = "serve-protocol";

fn serve_layout(minor: u8) -> BuildResultLayout {
    BuildResultLayout {
        times: minor >= 3,
        cpu: false,
        outputs: match minor {
            8.. => BuiltOutputsLayout::Binary,
            6..=7 => BuiltOutputsLayout::Json,
            _ => BuiltOutputsLayout::Absent,
        },
    }
}

#[tokio::test]
async fn serve_protocol_golden() {
    let c = ctx_realisation_feature();
    for stem in &stems(SERVE) {
        let what = &format!("{SERVE}/{stem}");
        match stem.as_str() {
            "drv-output-2.8" => golden!(
                what,
                bin(SERVE, stem),
                cases(SERVE, stem),
                |r| DrvPathOutput::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, drv_output(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            ),
            "unkeyed-realisation-2.8" => golden!(
                what,
                bin(SERVE, stem),
                cases(SERVE, stem),
                |r| UnkeyedRealisation::wire_read(&mut r, &c),
                |got, want| { assert_eq!(got, unkeyed_realisation(want), "{what}") },
                |w, v| v.wire_write(&mut w, &c)
            ),
            "realisation-2.8" => golden!(
                what,
                bin(SERVE, stem),
                cases(SERVE, stem),
                |r| PathRealisation::wire_read(&mut r, &c),
                |got, want| {
                    let expected = PathRealisation {
                        key: drv_output(&want["key"]),
                        value: unkeyed_realisation(&want["value"]),
                    };
                    assert_eq!(got, expected, "{what}")
                },
                |w, v| v.wire_write(&mut w, &c)
            ),
            "build-result-2.2"
            | "build-result-2.3"
            | "build-result-2.6"
            | "build-result-2.7-compat"
            | "build-result-2.8" => {
                let minor: u8 = stem["build-result-2.".len()..]
                    .trim_end_matches("-compat")
                    .parse()
                    .unwrap();
                let layout = serve_layout(minor);
                if stem.ends_with("-compat") {
                    // Current Nix's two-key realisation JSON: decoded only (see
                    // `build_results_decode_only`).
                    let bytes = bin(SERVE, stem);
                    let mut r = reader(&bytes);
                    for want in cases(SERVE, stem) {
                        let got = BuildResult::read_layout(&mut r, &c, layout).await.unwrap();
                        check_build_result(&got, &want, what);
                    }
                    assert_at_end(&mut r, what).await;
                } else {
                    golden!(
                        what,
                        bin(SERVE, stem),
                        cases(SERVE, stem),
                        |r| BuildResult::read_layout(&mut r, &c, layout),
                        |got, want| check_build_result(&got, want, what),
                        |w, v| v.write_layout(&mut w, &c, layout),
                    );
                }
            }
            "unkeyed-valid-path-info-2.3" | "unkeyed-valid-path-info-2.4" => {
                serve_path_infos(stem, stem.ends_with("2.4")).await
            }
            "build-options-2.1" | "build-options-2.2" | "build-options-2.3"
            | "build-options-2.7" => serve_build_options(stem).await,
            "handshake-to-client" => {
                // SERVE_MAGIC_2, then the daemon's serve protocol version 2.5.
                let bytes = bin(SERVE, stem);
                let mut r = reader(&bytes);
                assert_eq!(r.read_u64("serve magic").await.unwrap(), 0x5452_eecb);
                assert_eq!(r.read_u64("serve version").await.unwrap(), 0x205);
                assert_at_end(&mut r, what).await;
            }
            other => assert!(
                shared_case(SERVE, other).await,
                "no golden check for {SERVE}/{other}.bin"
            ),
        }
    }
}

/// The serve protocol's own path info layout: deriver, references, download size, NAR size,
/// and from 2.4 on the prefixed NAR hash, CA and signatures.
async fn serve_path_infos(stem: &str, with_hash: bool) {
    let what = &format!("{SERVE}/{stem}");
    let dir = StoreDir::default();
    let bytes = bin(SERVE, stem);
    let mut r = reader(&bytes);
    for want in cases(SERVE, stem) {
        let expected = unkeyed_info(&want);
        assert_eq!(
            r.read_opt_path("deriver", &dir).await.unwrap(),
            expected.deriver,
            "{what}"
        );
        assert_eq!(
            r.read_path_set("references", &dir).await.unwrap(),
            expected.references,
            "{what}"
        );
        assert_eq!(
            r.read_u64("download size").await.unwrap(),
            expected.nar_size,
            "{what}"
        );
        assert_eq!(
            r.read_u64("nar size").await.unwrap(),
            expected.nar_size,
            "{what}"
        );
        if with_hash {
            let hash = Hash::parse_any(&r.read_string("nar hash").await.unwrap(), None).unwrap();
            assert_eq!(hash, expected.nar_hash, "{what}");
            assert_eq!(
                read_opt_ca(&mut r, "ca").await.unwrap(),
                expected.ca,
                "{what}"
            );
            assert_eq!(
                r.read_string_set("sigs").await.unwrap(),
                expected.sigs,
                "{what}"
            );
        } else {
            assert_eq!(
                expected.nar_hash,
                Hash::sha256([0; 32]),
                "{what}: 2.3 carries no hash"
            );
        }
    }
    assert_at_end(&mut r, what).await;
}

/// BuildOptions (no JSON; values from serve-protocol.cc): maxSilentTime, buildTimeout,
/// [2.2] maxLogSize, [2.3] nrRepeats, enforceDeterminism, [2.7] keepFailed.
async fn serve_build_options(stem: &str) {
    let what = &format!("{SERVE}/{stem}");
    let minor: u8 = stem["build-options-2.".len()..].parse().unwrap();
    let bytes = bin(SERVE, stem);
    let mut r = reader(&bytes);
    assert_eq!(r.read_u32("max silent time").await.unwrap(), 5, "{what}");
    assert_eq!(r.read_u32("build timeout").await.unwrap(), 6, "{what}");
    if minor >= 2 {
        assert_eq!(r.read_u64("max log size").await.unwrap(), 7, "{what}");
    }
    if minor >= 3 {
        assert_eq!(r.read_u32("repeats").await.unwrap(), 8, "{what}");
        assert_eq!(
            r.read_bool("enforce determinism").await.unwrap(),
            minor == 3,
            "{what}"
        );
    }
    if minor >= 7 {
        assert!(r.read_bool("keep failed").await.unwrap(), "{what}");
    }
    assert_at_end(&mut r, what).await;
}

// ---------------------------------------------------------------------------------------------
// Real Nix 2.8 traces

/// All recorded connections: (name, client bytes, daemon bytes).
fn traces() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let dir = shared("nix-traces");
    let mut out = Vec::new();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .strip_suffix(".client.bin")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    for name in names {
        let client = fs::read(dir.join(format!("{name}.client.bin"))).unwrap();
        let daemon = fs::read(dir.join(format!("{name}.daemon.bin"))).unwrap();
        out.push((name, client, daemon));
    }
    out
}

/// Replays a client's bytes through the daemon-side decoders; returns the ops seen.
async fn replay_client(name: &str, bytes: &[u8]) -> (WireContext, Vec<Op>) {
    let mut r = reader(bytes);
    let server = ServerHandshake::default();
    let mut sink = tokio::io::sink();
    let negotiated = server
        .negotiate(&mut r, &mut sink)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let info = ClientHandshakeInfo {
        daemon_nix_version: Some("2.8.0".into()),
        trust: None,
    };
    server
        .finish(&mut r, &mut sink, &negotiated, &info)
        .await
        .unwrap();
    assert_eq!(negotiated.version, ProtocolVersion::v1(34), "{name}");
    let ctx =
        WireContext::with_features(StoreDir::default(), negotiated.version, negotiated.features);
    let mut ops = Vec::new();
    loop {
        let start = consumed(&r);
        let Some(op) = read_op(&mut r)
            .await
            .unwrap_or_else(|e| panic!("{name}: op code: {e}"))
        else {
            break;
        };
        let request = Request::read(op, &mut r, &ctx)
            .await
            .unwrap_or_else(|e| panic!("{name}: {op:?}: {e}"));
        assert_eq!(request.op(), op);
        // Our encoding of the decoded request is exactly what the Nix 2.8 client sent.
        let mut w = WireWriter::new();
        request.write(&mut w, &ctx).unwrap();
        assert_eq!(
            w.as_bytes(),
            &bytes[start..consumed(&r)],
            "{name}: {op:?} re-encoding differs"
        );
        match op.upload(ctx.version) {
            Upload::None => {}
            Upload::Framed if op == Op::AddMultipleToStore => {
                let mut framed = WireReader::new(FramedReader::new(&mut r));
                let count = ward_proto::worker::read_multiple_count(&mut framed)
                    .await
                    .unwrap();
                for _ in 0..count {
                    let info = ValidPathInfo::wire_read_at(
                        &mut framed,
                        &ctx.store_dir,
                        FULL_PATH_INFO_VERSION,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{name}: entry: {e}"));
                    let mut nar = vec![0u8; info.nar_size as usize];
                    framed.read_exact(&mut nar).await.unwrap();
                    let parsed = ward_proto::nar::copy_nar(&nar[..], std::io::sink())
                        .unwrap_or_else(|e| panic!("{name}: entry NAR: {e}"));
                    assert_eq!(
                        parsed, info.nar_size,
                        "{name}: NAR is exactly narSize bytes"
                    );
                }
                let mut rest = Vec::new();
                framed.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "{name}: bytes after the last entry");
            }
            Upload::Framed => {
                let mut framed = FramedReader::new(&mut r);
                let n = framed
                    .drain()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: framed data: {e}"));
                assert!(n > 0, "{name}: {op:?} uploaded nothing");
            }
            other => panic!("{name}: unexpected upload {other:?} at 1.34"),
        }
        ops.push(op);
    }
    (ctx, ops)
}

/// Reads stderr messages up to the end of a work phase; returns the last one and the count.
async fn read_until_end(
    r: &mut WireReader<Cursor<Vec<u8>>>,
    version: ProtocolVersion,
    name: &str,
) -> (StderrMessage, usize) {
    let mut count = 0;
    loop {
        let msg = StderrMessage::read(r, version)
            .await
            .unwrap_or_else(|e| panic!("{name}: stderr: {e}"));
        count += 1;
        if msg.ends_work_phase() {
            return (msg, count);
        }
    }
}

/// Replays the daemon's bytes through the client-side decoders, given the ops of the
/// connection. The bare NAR after NarFromPath's `STDERR_LAST` is delimited with the NAR
/// parser, as a client does.
async fn replay_daemon(name: &str, bytes: &[u8], ctx: &WireContext, ops: &[Op]) -> usize {
    let mut r = reader(bytes);
    let mut sink = tokio::io::sink();
    let negotiated = client_negotiate(
        &mut r,
        &mut sink,
        ProtocolVersion::v1(34),
        &FeatureSet::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(negotiated.peer_version, ProtocolVersion::v1(34));
    let info = client_finish(&mut r, &mut sink, &negotiated).await.unwrap();
    assert_eq!(info.daemon_nix_version.as_deref(), Some("2.8.0"), "{name}");
    assert_eq!(info.trust, None, "{name}: no trust byte at 1.34");
    let mut messages = 0;
    let (first, n) = read_until_end(&mut r, ctx.version, name).await;
    assert_eq!(first, StderrMessage::Last, "{name}: handshake");
    messages += n;
    for op in ops {
        let (end, n) = read_until_end(&mut r, ctx.version, name).await;
        messages += n;
        if let StderrMessage::Error(err) = end {
            assert!(!err.message.is_empty(), "{name}: {op:?}");
            continue;
        }
        if *op == Op::NarFromPath {
            let start = consumed(&r);
            let len = ward_proto::nar::copy_nar(&bytes[start..], std::io::sink())
                .unwrap_or_else(|e| panic!("{name}: NarFromPath NAR: {e}"));
            let mut nar = vec![0u8; len as usize];
            r.read_exact(&mut nar).await.unwrap();
            continue;
        }
        let start = consumed(&r);
        let reply = Reply::read(*op, &mut r, ctx)
            .await
            .unwrap_or_else(|e| panic!("{name}: {op:?} reply: {e}"));
        assert_eq!(reply.op(), *op);
        // Our encoding of the decoded reply is exactly what the Nix 2.8 daemon sent.
        let mut w = WireWriter::new();
        reply.write(&mut w, ctx).unwrap();
        assert_eq!(
            w.as_bytes(),
            &bytes[start..consumed(&r)],
            "{name}: {op:?} reply re-encoding differs"
        );
    }
    assert_at_end(&mut r, name).await;
    messages
}

#[tokio::test]
async fn nix_2_8_traces_parse_completely() {
    let all = traces();
    assert!(
        all.len() >= 30,
        "expected the recorded traces, found {}",
        all.len()
    );
    let mut seen = BTreeSet::new();
    for (name, client, daemon) in &all {
        let (ctx, ops) = replay_client(name, client).await;
        seen.extend(ops.iter().copied());
        let messages = replay_daemon(name, daemon, &ctx, &ops).await;
        assert!(messages >= 1, "{name}");
    }
    for op in [
        Op::SetOptions,
        Op::AddToStore,
        Op::AddToStoreNar,
        Op::AddMultipleToStore,
        Op::AddTextToStore,
        Op::BuildPaths,
        Op::BuildDerivation,
        Op::QueryMissing,
        Op::QueryPathInfo,
        Op::NarFromPath,
        Op::CollectGarbage,
        Op::VerifyStore,
        Op::QueryValidPaths,
        Op::AddIndirectRoot,
    ] {
        assert!(seen.contains(&op), "no trace exercised {op:?}");
    }
}

/// A full handshake between our client and our daemon over an in-memory pipe, at the
/// versions that matter.
#[tokio::test]
async fn client_and_server_handshake_each_other() {
    for (client_minor, features) in [
        (21u8, vec![]),
        (34, vec![]),
        (35, vec![]),
        (38, vec!["a", "b"]),
    ] {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (server_read, mut server_write) = tokio::io::split(server_io);
        let (client_read, mut client_write) = tokio::io::split(client_io);
        let server = ServerHandshake {
            features: ["b", "c"].iter().map(|s| s.to_string()).collect(),
            ..ServerHandshake::default()
        };
        let info = ClientHandshakeInfo {
            daemon_nix_version: Some("ward".into()),
            trust: Some(TrustFlag::Trusted),
        };
        let server_task = tokio::spawn(async move {
            let mut r = WireReader::new(server_read);
            let negotiated = server
                .accept(&mut r, &mut server_write, &info)
                .await
                .unwrap();
            let mut w = WireWriter::new();
            StderrMessage::Last.write(&mut w, negotiated.version);
            w.flush_to(&mut server_write).await.unwrap();
            server_write.shutdown().await.unwrap();
            negotiated
        });
        let mut r = WireReader::new(client_read);
        let features: FeatureSet = features.iter().map(|s| s.to_string()).collect();
        let negotiated = client_negotiate(
            &mut r,
            &mut client_write,
            ProtocolVersion::v1(client_minor),
            &features,
        )
        .await
        .unwrap();
        let info = client_finish(&mut r, &mut client_write, &negotiated)
            .await
            .unwrap();
        assert_eq!(
            StderrMessage::read(&mut r, negotiated.version)
                .await
                .unwrap(),
            StderrMessage::Last
        );
        let server_side = server_task.await.unwrap();
        assert_eq!(server_side.version, negotiated.version);
        assert_eq!(server_side.features, negotiated.features);
        assert_eq!(negotiated.version, ProtocolVersion::v1(client_minor));
        assert_eq!(info.daemon_nix_version.is_some(), client_minor >= 33);
        assert_eq!(info.trust.is_some(), client_minor >= 35);
        let expected: Vec<&str> = if client_minor >= 38 {
            vec!["b"]
        } else {
            vec![]
        };
        assert_eq!(
            negotiated
                .features
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            expected
        );
    }
}
