//! `nar::unpack` from arbitrary bytes into a fresh temporary directory.
//!
//! Besides "never panics", it checks the round trip: whenever unpacking succeeds, `dump_path`
//! of the unpacked tree gives back exactly the NAR's bytes, and `hash_and_size` agrees that
//! the input held a NAR of that size. Every created file lands under the temporary directory
//! (names are validated), which is removed after each input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_proto::nar::{dump_path, hash_and_size, unpack};

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("creating a scratch directory");
    let dest = scratch.path().join("out");
    let unpacked = unpack(data, &dest);
    let hashed = hash_and_size(data);
    match unpacked {
        Ok(()) => {
            let (_, size) = hashed.expect("unpack accepted a nar hash_and_size refuses");
            let mut dumped = Vec::new();
            let dumped_size = dump_path(&dest, &mut dumped).expect("dumping the unpacked tree");
            assert_eq!(dumped_size, size);
            assert_eq!(
                dumped.as_slice(),
                &data[..size as usize],
                "unpack/dump round trip"
            );
        }
        Err(e) => {
            let _ = e.to_string();
            // Filesystem errors (a name too long for the path limit, say) are not parse errors.
            if !matches!(e, ward_proto::nar::NarError::Fs { .. }) {
                assert!(
                    hashed.is_err(),
                    "unpack refused a nar hash_and_size accepts: {e}"
                );
            }
        }
    }
});
