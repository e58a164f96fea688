//! The daemon side of a worker-protocol connection, from arbitrary client bytes: the server
//! handshake, then op after op (`read_op`, `Request::read`) with each op's upload handled the
//! way a daemon must (framed streams drained or parsed, bare NARs parsed to find their end,
//! tunnelled data fetched and parsed as a NAR or an export stream).
//!
//! Besides "never panics", it checks that every request that decodes encodes again and decodes
//! to the same value. The input is what a client writes, so the Nix 2.8 traces
//! (`*.client.bin`) are seeds as they are.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;
use ward_proto::nar::NarReader;
use ward_proto::path_info::ValidPathInfo;
use ward_proto::store_path::StoreDir;
use ward_proto::wire::{FramedReader, TunnelReader, WireError, WireReader, WireWriter};
use ward_proto::worker::types::{read_import_marker, ExportTrailer, FULL_PATH_INFO_VERSION};
use ward_proto::worker::{
    read_multiple_count, read_op, ClientHandshakeInfo, Op, Request, ServerHandshake, Upload,
    WireContext,
};

/// Most tunnelled bytes collected for one op; inputs are far smaller than this anyway.
const MAX_TUNNELLED: u64 = 1 << 20;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// How many bytes of `all` the reader has consumed (its input is a suffix of `all`).
fn consumed(all: &[u8], r: &WireReader<&[u8]>) -> usize {
    all.len() - r.get_ref().len() - r.buffered().len()
}

/// Parses one NAR at the start of `bytes` and returns its length.
fn nar_len(bytes: &[u8]) -> Option<usize> {
    let mut nar = NarReader::new(bytes);
    match nar.skip_to_end() {
        Ok(()) => Some(nar.offset() as usize),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

/// Decoding a request's own encoding gives it back, except for what the decoder deliberately
/// drops: SetOptions overrides it rejected (duplicates, invalid UTF-8) are reported to the
/// caller, not re-sent.
async fn check_round_trip(request: &Request, ctx: &WireContext) {
    let mut expected = request.clone();
    if let Request::SetOptions(options) = &mut expected {
        options.rejected_overrides.clear();
    }
    let request = &expected;
    let mut w = WireWriter::new();
    if request.write(&mut w, ctx).is_err() {
        return;
    }
    let mut out = Vec::new();
    w.flush_to(&mut out).await.expect("writing to a vec");
    let mut r = WireReader::new(out.as_slice());
    let op = read_op(&mut r).await.expect("own op code").expect("an op");
    assert_eq!(op, request.op());
    let again = Request::read(op, &mut r, ctx)
        .await
        .unwrap_or_else(|e| panic!("re-reading {request:?}: {e}"));
    assert_eq!(&again, request);
}

/// Reads AddMultipleToStore's framed payload: a count, then path infos each followed by
/// exactly `narSize` NAR bytes.
async fn read_multiple(
    framed: &mut FramedReader<'_, &[u8]>,
    store_dir: &StoreDir,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut r = WireReader::new(framed);
    let count = read_multiple_count(&mut r).await?;
    for _ in 0..count {
        r.begin_message();
        let info = ValidPathInfo::wire_read_at(&mut r, store_dir, FULL_PATH_INFO_VERSION).await?;
        let mut nar = (&mut r).take(info.nar_size);
        let copied = tokio::io::copy(&mut nar, &mut tokio::io::sink()).await?;
        if copied != info.nar_size {
            return Err(WireError::UnexpectedEof { field: "nar" }.into());
        }
    }
    Ok(())
}

/// Parses tunnelled ImportPaths data: entries of marker, NAR, trailer; then the end marker.
async fn read_import(mut data: &[u8], ctx: &WireContext) -> Result<(), WireError> {
    loop {
        let mut r = WireReader::new(data);
        if !read_import_marker(&mut r).await? {
            return Ok(());
        }
        let at = consumed(data, &r);
        let Some(len) = nar_len(&data[at..]) else {
            return Ok(());
        };
        data = &data[at + len..];
        let mut r = WireReader::new(data);
        r.begin_message();
        ExportTrailer::read(&mut r, ctx).await?;
        data = &data[consumed(data, &r)..];
    }
}

/// Runs a whole connection over `input`. Returns at the first error, as a daemon would close
/// the connection there.
async fn serve(input: &[u8]) {
    let mut replies = tokio::io::sink();
    let mut r = WireReader::new(input);
    let negotiated = match ServerHandshake::default()
        .accept(
            &mut r,
            &mut replies,
            &ClientHandshakeInfo {
                daemon_nix_version: Some("2.8.0".to_owned()),
                trust: None,
            },
        )
        .await
    {
        Ok(n) => n,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let store_dir = StoreDir::new("/nix/store").expect("the default store dir");
    let ctx =
        WireContext::with_features(store_dir.clone(), negotiated.version, negotiated.features);

    // `rest` is the input from the start of the next op on.
    let mut rest = &input[consumed(input, &r)..];
    loop {
        let mut r = WireReader::new(rest);
        let op = match read_op(&mut r).await {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        let request = match Request::read(op, &mut r, &ctx).await {
            Ok(request) => request,
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        };
        assert_eq!(request.op(), op);
        check_round_trip(&request, &ctx).await;

        match op.upload(ctx.version) {
            Upload::None => rest = &rest[consumed(rest, &r)..],
            Upload::Framed => {
                let mut framed = FramedReader::new(&mut r);
                if op == Op::AddMultipleToStore {
                    if let Err(e) = read_multiple(&mut framed, &store_dir).await {
                        let _ = e.to_string();
                    }
                }
                // Whatever happened to the op, the stream goes on after the terminator.
                if let Err(e) = framed.drain().await {
                    let _ = e.to_string();
                    return;
                }
                rest = &rest[consumed(rest, &r)..];
            }
            Upload::BareNar => {
                let at = consumed(rest, &r);
                let Some(len) = nar_len(&rest[at..]) else {
                    return;
                };
                rest = &rest[at + len..];
            }
            Upload::Tunnel => {
                // Tunnelled data has no end of its own; its consumer finds it. Collect what the
                // client sends, parse it, and end the connection there.
                let mut data = Vec::new();
                let mut tunnel = TunnelReader::new(&mut r, &mut replies).take(MAX_TUNNELLED);
                let _ = tunnel.read_to_end(&mut data).await;
                if op == Op::ImportPaths {
                    if let Err(e) = read_import(&data, &ctx).await {
                        let _ = e.to_string();
                    }
                } else {
                    let _ = nar_len(&data);
                }
                return;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(serve(data));
});
