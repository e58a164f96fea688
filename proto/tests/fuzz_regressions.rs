//! Inputs the fuzz targets in `fuzz/` found crashing, replayed against the fixed parsers. Each
//! test names the target that found it; the input is inline, as the fuzzer minimised it.

use ward_proto::derivation::{Derivation, DerivationError};
use ward_proto::store_path::StoreDir;

fn store() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

/// Parses `text` as derivation `name` and returns the innermost error and its offset.
fn drv_error(name: &str, text: &[u8]) -> (DerivationError, Option<usize>) {
    let err = Derivation::parse(text, &store(), name).expect_err("the input must be refused");
    (err.innermost().clone(), err.offset())
}

/// Found by `derivation` (minimised): the platform `"\\"` parsed to a single backslash, which
/// the printer wrote raw (`"\"`), so the printed `.drv` no longer parsed back to the same
/// derivation. Such a platform is now refused where it is read.
#[test]
fn drv_platform_with_backslash_is_refused() {
    let (err, offset) = drv_error("2", b"Derive([],[],[],\"\\\\\",\"\",[],[])");
    assert_eq!(
        err,
        DerivationError::UnprintablePlatform {
            platform: "\\\\".to_owned()
        }
    );
    assert_eq!(offset, Some(16), "the offset of the platform string");
}

/// The original crash of the same bug: an escaped quote in the platform came back from the
/// printer as a bare quote that ended the string early.
#[test]
fn drv_platform_with_escaped_quote_is_refused() {
    let text = br#"Derive([("out","/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-4.12.2","","")],[],[],"-firefox'\"\n    exit 3\naaaaaaaaax86_64-linux","/bin/sh",[],[])"#;
    let (err, _) = drv_error("hello-2.12.2", text);
    assert!(
        matches!(&err, DerivationError::UnprintablePlatform { platform } if platform.contains("firefox")),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("platform '-firefox"), "{err}");
}

/// A derivation built in memory (from JSON or the wire, say) with such a platform cannot be
/// printed either: `to_aterm`, and so the `.drv` path, refuse it instead of writing text that
/// means something else.
#[test]
fn drv_printer_refuses_unprintable_platform() {
    let mut drv = Derivation::parse(
        b"Derive([(\"out\",\"\",\"r:sha256\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])",
        &store(),
        "ca",
    )
    .unwrap();
    assert!(drv.to_aterm(&store()).is_ok());
    for platform in ["x86\"64", "x86\\64"] {
        drv.platform = platform.to_owned();
        assert!(matches!(
            drv.to_aterm(&store()),
            Err(DerivationError::UnprintablePlatform { .. })
        ));
        assert!(matches!(
            drv.drv_path(&store()),
            Err(DerivationError::UnprintablePlatform { .. })
        ));
    }
    // Newlines and other bytes Nix writes raw are fine: they parse back unchanged.
    drv.platform = "x86\n64 \t".to_owned();
    let text = drv.to_aterm(&store()).unwrap();
    assert_eq!(Derivation::parse(&text, &store(), "ca").unwrap(), drv);
}
