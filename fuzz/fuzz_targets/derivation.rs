//! The ATerm `.drv` parser (`Derivation::parse`) and what is computed from a parsed
//! derivation: its type, output paths, `.drv` path, BuildDerivation triples, JSON form and
//! hashDerivationModulo.
//!
//! Input: the derivation's name, a newline, then the ATerm text (the name is not part of the
//! text but the parser checks fixed output paths against it). Besides "never panics", it
//! checks that printing is exact: a parsed derivation prints, and the printed text parses to
//! the same derivation and prints identically; likewise for the JSON form.
#![no_main]

use std::convert::Infallible;

use libfuzzer_sys::fuzz_target;
use ward_proto::derivation::{Derivation, DerivationError, HashModuloCache};
use ward_proto::store_path::{StoreDir, StorePath};

/// Derivation names are store path names, so at most 211 bytes; a longer first line is just
/// more text.
const MAX_NAME: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().take(MAX_NAME + 1).position(|&b| b == b'\n') else {
        return;
    };
    let Ok(name) = std::str::from_utf8(&data[..newline]) else {
        return;
    };
    let text = &data[newline + 1..];
    let store_dir = StoreDir::new("/nix/store").expect("the default store dir");
    let drv = match Derivation::parse(text, &store_dir, name) {
        Ok(drv) => drv,
        Err(e) => {
            let _ = e.to_string();
            let _ = e.offset();
            let _ = e.innermost();
            return;
        }
    };

    let printed = drv
        .to_aterm(&store_dir)
        .expect("a parsed derivation prints");
    let again = Derivation::parse(&printed, &store_dir, name).expect("printed text parses");
    assert_eq!(again, drv, "print/parse round trip changed the derivation");
    assert_eq!(again.to_aterm(&store_dir).expect("prints again"), printed);

    let _ = drv.derivation_type();
    let _ = drv.output_paths(&store_dir);
    let _ = drv.drv_path(&store_dir);
    let _ = drv.to_basic().output_triples(&store_dir);
    let _ = drv.references();

    if let Ok(json) = drv.to_json() {
        let back = Derivation::from_json(&json).expect("own json form parses");
        assert_eq!(back, drv, "json round trip changed the derivation");
    }

    // hashDerivationModulo over two graphs: every input derivation a leaf (this one without
    // inputs), and every input derivation this one again (a cycle when it has inputs).
    let leaf = |path: &StorePath| -> Result<Derivation, Infallible> {
        let mut input = drv.clone();
        input.input_drvs.clear();
        input.name = path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(path.name())
            .to_owned();
        Ok(input)
    };
    for mask in [false, true] {
        let _ = drv.hash_modulo(&store_dir, mask, &leaf, &mut HashModuloCache::new());
    }
    let cyclic = |path: &StorePath| -> Result<Derivation, Infallible> {
        let mut input = drv.clone();
        input.name = path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(path.name())
            .to_owned();
        Ok(input)
    };
    match drv.hash_modulo(&store_dir, false, &cyclic, &mut HashModuloCache::new()) {
        Err(ward_proto::derivation::HashModuloError::Derivation(DerivationError::Cycle {
            ..
        })) => {
            assert!(!drv.input_drvs.is_empty())
        }
        other => {
            let _ = other.map_err(|e| e.to_string());
        }
    }
});
