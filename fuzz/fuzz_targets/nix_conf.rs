//! The nix.conf parser and the settings it fills: arbitrary bytes as `NIX_CONFIG` (the same
//! reader as a nix.conf file: comments, `include`/`!include`, `extra-` settings, every
//! setting's value parser), with a missing `NIX_CONF_DIR`.
//!
//! Besides "never panics, bounded memory": loading is deterministic, every loaded setting
//! prints, and each printed value sets that setting again without error.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use ward_config::{load, CommandLineConfig, HostInfo};

fuzz_target!(|data: &[u8]| {
    let config = OsString::from_vec(data.to_vec());
    let env = |name: &str| match name {
        "NIX_CONFIG" => Some(config.clone()),
        "NIX_CONF_DIR" => Some(OsString::from("/nonexistent/ward-fuzz")),
        _ => None,
    };
    let host = HostInfo::fixed_for_tests();
    let first = load(&env, &host, &CommandLineConfig::default());
    let second = load(&env, &host, &CommandLineConfig::default());
    match (first, second) {
        (Ok(a), Ok(b)) => {
            let values = a.settings.to_key_values();
            assert_eq!(
                values,
                b.settings.to_key_values(),
                "loading is deterministic"
            );
            let mut again = a.settings.clone();
            for (name, value) in &values {
                // A printed value must be one the setting accepts back.
                again
                    .set(name, value)
                    .unwrap_or_else(|e| panic!("setting {name} = {value:?} again: {e}"));
            }
            for w in &a.warnings {
                let _ = w.to_string();
            }
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("two loads disagree: {:?} / {:?}", a.is_ok(), b.is_ok()),
    }
});
