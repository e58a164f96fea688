//! The broker's decoders: every frame payload the root broker reads from a less privileged
//! peer — the frontend (`FrontendToBroker`), the store-writer (`StoreWriterToBroker`) and a
//! builder (`BuilderToBroker`). The first byte picks the enum; the rest is the body after the
//! enum's tag (the tag check is exercised by the unit tests, and a wrong tag is refused before
//! any decoding).
//!
//! Besides "never panics, bounded memory": a decoded message re-encodes, decodes back to
//! itself, and answers `permitted_in`, `fd_count` and `variant_name` for every phase.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_proto::ipc::broker::{FrontendToBroker, StoreWriterToBroker};
use ward_proto::ipc::builder::BuilderToBroker;
use ward_proto::ipc::frame::{decode_payload, encode_frame, LENGTH_PREFIX_LEN};
use ward_proto::ipc::{FrameLimit, IpcMessage, Phase};

fn round_trip<M: IpcMessage + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<M> {
    let mut payload = M::TAG.to_vec();
    payload.extend_from_slice(body);
    let message = decode_payload::<M>(&payload, FrameLimit::DEFAULT).ok()?;
    let frame = encode_frame(&message, FrameLimit::DEFAULT).expect("a decoded message encodes");
    let again = decode_payload::<M>(&frame[LENGTH_PREFIX_LEN..], FrameLimit::DEFAULT)
        .expect("an encoded message decodes");
    assert_eq!(again, message);
    let _ = (message.fd_count(), message.variant_name());
    Some(message)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Some(m) = round_trip::<FrontendToBroker>(body) {
                for phase in [Phase::Handshake, Phase::Serving, Phase::Draining] {
                    let _ = m.permitted_in(phase);
                }
            }
        }
        1 => {
            if let Some(m) = round_trip::<StoreWriterToBroker>(body) {
                for phase in [Phase::Handshake, Phase::Serving, Phase::Draining] {
                    let _ = m.permitted_in(phase);
                }
            }
        }
        _ => {
            let _ = round_trip::<BuilderToBroker>(body);
        }
    }
});
