//! The store-writer's decoder: every frame payload it reads from the frontend
//! (`FrontendToStoreWriter`), body after the tag.
//!
//! Besides "never panics, bounded memory": a decoded request re-encodes and decodes back to
//! itself, and its phase, descriptor count and name are answered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_proto::ipc::frame::{decode_payload, encode_frame, LENGTH_PREFIX_LEN};
use ward_proto::ipc::store_writer::FrontendToStoreWriter;
use ward_proto::ipc::{FrameLimit, IpcMessage};

fuzz_target!(|data: &[u8]| {
    let mut payload = FrontendToStoreWriter::TAG.to_vec();
    payload.extend_from_slice(data);
    let Ok(request) = decode_payload::<FrontendToStoreWriter>(&payload, FrameLimit::DEFAULT) else {
        return;
    };
    let frame = encode_frame(&request, FrameLimit::DEFAULT).expect("a decoded request encodes");
    let again =
        decode_payload::<FrontendToStoreWriter>(&frame[LENGTH_PREFIX_LEN..], FrameLimit::DEFAULT)
            .expect("an encoded request decodes");
    assert_eq!(again, request);
    let _ = (request.phase(), request.fd_count(), request.variant_name());
    let _ = request.may_change_recorded_paths();
});
