//! The narinfo parsers from arbitrary bytes: the text form (`NarInfo::parse`) and the JSON
//! form (`NarInfoJson::parse`).
//!
//! Besides "never panics", it checks that printing is stable: a narinfo that parsed prints
//! without error, and parsing and printing that text again gives the same text and value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_proto::narinfo::{NarInfo, NarInfoJson};
use ward_proto::store_path::StoreDir;

fuzz_target!(|data: &[u8]| {
    let store_dir = StoreDir::new("/nix/store").expect("the default store dir");
    match NarInfo::parse(&store_dir, data) {
        Ok(narinfo) => {
            let text = narinfo
                .to_text(&store_dir)
                .expect("a parsed narinfo prints");
            let again = NarInfo::parse(&store_dir, text.as_bytes()).expect("printed text parses");
            assert_eq!(again.to_text(&store_dir).expect("prints again"), text);
            let _ = narinfo.to_nix28_json(&store_dir, Some((1, 2)));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match NarInfoJson::parse(data, &store_dir) {
        Ok(json) => {
            let _ = json.to_value(true);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
