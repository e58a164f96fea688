//! Outputs as `(path, hashAlgo, hash)` triples: the form both the ATerm text and the
//! BuildDerivation wire message use.
//!
//! | Kind            | path          | hashAlgo        | hash       |
//! |-----------------|---------------|-----------------|------------|
//! | input-addressed | the path      | `""`            | `""`       |
//! | fixed CA        | computed path | `[r:\|text:\|git:]algo` | base16 |
//! | floating CA     | `""`          | `[r:…]algo`     | `""`       |
//! | deferred        | `""`          | `""`            | `""`       |
//! | impure          | `""`          | `[r:…]algo`     | `"impure"` |

use crate::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::StoreDir;

use super::{check_output_name, fixed_output_path, DerivationError, DerivationOutput};

/// `(path, hashAlgo, hash)`: an output as the ATerm text and BuildDerivation carry it.
pub type OutputTriple = (String, String, String);

/// What to do with the path of a fixed output, which follows from its content address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatedFixedPath {
    /// `.drv` text: the stated path must be the computed one (current Nix refuses a mismatch,
    /// so two texts cannot mean the same derivation).
    MustMatch,
    /// BuildDerivation: Nix 2.8 recomputes the path and ignores the one sent; it still has to
    /// be a store path.
    Recompute,
}

/// The `hashAlgo` field of a content-addressed output: method prefix plus algorithm.
pub(crate) fn render_method_algo(method: ContentAddressMethod, algo: HashAlgo) -> String {
    let prefix = match method {
        ContentAddressMethod::Text => "text:",
        ContentAddressMethod::Fixed(m) => m.prefix(),
    };
    format!("{prefix}{algo}")
}

/// Parses the `hashAlgo` field: `sha256`, `r:sha256`, `text:sha256`, `git:sha1`.
pub(crate) fn parse_method_algo(
    s: &str,
    output_name: &str,
) -> Result<(ContentAddressMethod, HashAlgo), DerivationError> {
    let (method, algo) = if let Some(rest) = s.strip_prefix("r:") {
        (
            ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            rest,
        )
    } else if let Some(rest) = s.strip_prefix("git:") {
        (ContentAddressMethod::Fixed(FileIngestionMethod::Git), rest)
    } else if let Some(rest) = s.strip_prefix("text:") {
        (ContentAddressMethod::Text, rest)
    } else {
        (ContentAddressMethod::Fixed(FileIngestionMethod::Flat), s)
    };
    let algo = HashAlgo::from_name(algo).map_err(|e| DerivationError::BadOutput {
        output: output_name.to_owned(),
        reason: format!("hash algorithm '{s}': {e}"),
    })?;
    if method == ContentAddressMethod::Text && algo != HashAlgo::Sha256 {
        return Err(DerivationError::BadOutput {
            output: output_name.to_owned(),
            reason: format!("hash algorithm '{s}': text hashing supports only sha256"),
        });
    }
    Ok((method, algo))
}

/// The `(path, hashAlgo, hash)` triple of an output, as the ATerm text and BuildDerivation carry
/// it. Fails only for a fixed output whose path cannot be computed (git hashing, bad names).
pub fn output_triple(
    output: &DerivationOutput,
    store_dir: &StoreDir,
    drv_name: &str,
    output_name: &str,
) -> Result<OutputTriple, DerivationError> {
    Ok(match output {
        DerivationOutput::InputAddressed(path) => {
            (store_dir.print(path), String::new(), String::new())
        }
        DerivationOutput::CAFixed(ca) => (
            store_dir.print(&fixed_output_path(store_dir, ca, drv_name, output_name)?),
            render_method_algo(ca.method, ca.hash.algo()),
            ca.hash.to_base16(),
        ),
        DerivationOutput::CAFloating { method, algo } => (
            String::new(),
            render_method_algo(*method, *algo),
            String::new(),
        ),
        DerivationOutput::Deferred => (String::new(), String::new(), String::new()),
        DerivationOutput::Impure { method, algo } => (
            String::new(),
            render_method_algo(*method, *algo),
            "impure".to_owned(),
        ),
    })
}

impl DerivationOutput {
    /// The `(path, hashAlgo, hash)` triple; see [`output_triple`].
    pub fn to_triple(
        &self,
        store_dir: &StoreDir,
        drv_name: &str,
        output_name: &str,
    ) -> Result<OutputTriple, DerivationError> {
        output_triple(self, store_dir, drv_name, output_name)
    }

    /// Reads an output from its BuildDerivation triple. A fixed output's path is recomputed
    /// from its content address (Nix 2.8's rule); the one sent must still be a store path.
    pub fn from_triple(
        path: &str,
        hash_algo: &str,
        hash: &str,
        store_dir: &StoreDir,
        drv_name: &str,
        output_name: &str,
    ) -> Result<DerivationOutput, DerivationError> {
        check_output_name(output_name)?;
        parse_triple(
            path,
            hash_algo,
            hash,
            store_dir,
            drv_name,
            output_name,
            StatedFixedPath::Recompute,
        )
    }
}

/// Reads an output triple; `fixed_path` says how a fixed output's stated path is treated.
pub(crate) fn parse_triple(
    path: &str,
    hash_algo: &str,
    hash: &str,
    store_dir: &StoreDir,
    drv_name: &str,
    output_name: &str,
    fixed_path: StatedFixedPath,
) -> Result<DerivationOutput, DerivationError> {
    let bad = |reason: String| DerivationError::BadOutput {
        output: output_name.to_owned(),
        reason,
    };
    let parse_path = |p: &str| {
        store_dir
            .parse_path(p)
            .map_err(|source| DerivationError::BadPath {
                path: p.to_owned(),
                source,
            })
    };
    if hash_algo.is_empty() {
        if !hash.is_empty() {
            return Err(bad(format!("hash '{hash}' given without a hash algorithm")));
        }
        if path.is_empty() {
            return Ok(DerivationOutput::Deferred);
        }
        return Ok(DerivationOutput::InputAddressed(parse_path(path)?));
    }
    let (method, algo) = parse_method_algo(hash_algo, output_name)?;
    if hash == "impure" {
        if !path.is_empty() {
            return Err(bad(format!(
                "impure output must not state a path, got '{path}'"
            )));
        }
        return Ok(DerivationOutput::Impure { method, algo });
    }
    if hash.is_empty() {
        if !path.is_empty() {
            return Err(bad(format!(
                "floating content-addressed output must not state a path, got '{path}'"
            )));
        }
        return Ok(DerivationOutput::CAFloating { method, algo });
    }
    let stated = parse_path(path)?;
    let hash = Hash::parse_bare(hash, algo).map_err(|e| bad(e.to_string()))?;
    let ca = ContentAddress { method, hash };
    let computed = fixed_output_path(store_dir, &ca, drv_name, output_name)?;
    if fixed_path == StatedFixedPath::MustMatch && stated != computed {
        return Err(bad(format!(
            "path '{path}' does not match its content address, which gives '{}'",
            store_dir.print(&computed)
        )));
    }
    Ok(DerivationOutput::CAFixed(ca))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StorePath;

    const HELLO_SHA256: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const FO_PATH: &str = "/nix/store/09xxzzxfl30gihclrc0q5vfmj0iwipml-fo";

    fn store() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn triples_of_every_kind_round_trip() {
        let s = store();
        let fixed = DerivationOutput::CAFixed(ContentAddress {
            method: ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
            hash: Hash::parse_bare(HELLO_SHA256, HashAlgo::Sha256).unwrap(),
        });
        let cases = [
            (
                DerivationOutput::InputAddressed(
                    StorePath::from_base_name("mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello").unwrap(),
                ),
                ("/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello", "", ""),
            ),
            (fixed, (FO_PATH, "sha256", HELLO_SHA256)),
            (
                DerivationOutput::CAFloating {
                    method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                    algo: HashAlgo::Sha256,
                },
                ("", "r:sha256", ""),
            ),
            (DerivationOutput::Deferred, ("", "", "")),
            (
                DerivationOutput::Impure {
                    method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                    algo: HashAlgo::Sha512,
                },
                ("", "r:sha512", "impure"),
            ),
            (
                DerivationOutput::CAFloating {
                    method: ContentAddressMethod::Text,
                    algo: HashAlgo::Sha256,
                },
                ("", "text:sha256", ""),
            ),
        ];
        for (output, (p, a, h)) in cases {
            let triple = output_triple(&output, &s, "fo", "out").unwrap();
            assert_eq!(triple, (p.to_owned(), a.to_owned(), h.to_owned()));
            let back = DerivationOutput::from_triple(p, a, h, &s, "fo", "out").unwrap();
            assert_eq!(back, output);
        }
    }

    #[test]
    fn wire_recomputes_fixed_paths() {
        let s = store();
        let other = "/nix/store/00000000000000000000000000000000-fo";
        let got =
            DerivationOutput::from_triple(other, "sha256", HELLO_SHA256, &s, "fo", "out").unwrap();
        let (path, _, _) = got.to_triple(&s, "fo", "out").unwrap();
        assert_eq!(path, FO_PATH);
        // The ATerm rule refuses the same mismatch.
        let err = parse_triple(
            other,
            "sha256",
            HELLO_SHA256,
            &s,
            "fo",
            "out",
            StatedFixedPath::MustMatch,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("does not match its content address"));
        // Any accepted digest encoding is read; printing is base16.
        let nix32 = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";
        let got = DerivationOutput::from_triple(FO_PATH, "sha256", nix32, &s, "fo", "out").unwrap();
        assert_eq!(got.to_triple(&s, "fo", "out").unwrap().2, HELLO_SHA256);
    }

    #[test]
    fn refuses_bad_triples() {
        let s = store();
        let ia = "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello";
        for (p, a, h) in [
            ("relative/path", "", ""),
            ("/nix/store/short", "", ""),
            (
                "/other/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello",
                "",
                "",
            ),
            (ia, "", HELLO_SHA256),
            ("", "", "impure"),
            ("", "sha257", ""),
            ("", "r:", ""),
            ("", "text:sha1", ""),
            (ia, "r:sha256", ""),
            (ia, "r:sha256", "impure"),
            ("", "sha256", HELLO_SHA256),
            (FO_PATH, "sha256", "abc"),
            (FO_PATH, "sha1", HELLO_SHA256),
            (
                FO_PATH,
                "git:sha1",
                "f572d396fae9206628714fb2ce00f72e94f2258f",
            ),
        ] {
            assert!(
                DerivationOutput::from_triple(p, a, h, &s, "fo", "out").is_err(),
                "accepted ({p:?}, {a:?}, {h:?})"
            );
        }
        assert!(matches!(
            DerivationOutput::from_triple("", "", "", &s, "fo", "bad/name"),
            Err(DerivationError::BadOutputName { .. })
        ));
    }
}
