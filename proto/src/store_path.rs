//! Store paths: parsing, printing and computing them for any store directory.
//!
//! A [`StorePath`] is only the base name (`<32 nix32 chars>-<name>`); the [`StoreDir`] it lives
//! in is kept apart, because a non-default store directory changes every hash and the same
//! base name means nothing without it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use crate::hash::{Hash, HashAlgo};

pub use ward_ipc::store_path::{
    check_name, StorePath, StorePathError, HASH_PART_LEN, MAX_NAME_LEN,
};

/// The default logical store directory.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";

/// A logical store directory such as `/nix/store`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreDir {
    dir: String,
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir {
            dir: DEFAULT_STORE_DIR.to_owned(),
        }
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({})", self.dir)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir)
    }
}

impl StoreDir {
    /// Validates an absolute, clean directory path.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        let clean = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && dir
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean {
            return Err(StorePathError::BadStoreDir(dir.to_owned()));
        }
        Ok(StoreDir {
            dir: dir.to_owned(),
        })
    }

    /// The directory as text.
    pub fn as_str(&self) -> &str {
        &self.dir
    }

    /// The full path of `path` in this store.
    pub fn print(&self, path: &StorePath) -> String {
        format!("{}/{}", self.dir, path.base_name())
    }

    /// Parses a full path that must sit directly in this store directory.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: full.to_owned(),
            store_dir: self.dir.clone(),
        };
        let base = full
            .strip_prefix(self.dir.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        if base.contains('/') {
            return Err(not_in_store());
        }
        StorePath::from_base_name(base)
    }

    /// Splits a path inside the store (`/nix/store/<base>/sub/dir`) into the store path and the
    /// rest (`""` or `/sub/dir`).
    pub fn parse_path_with_suffix<'a>(
        &self,
        full: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: full.to_owned(),
            store_dir: self.dir.clone(),
        };
        let inner = full
            .strip_prefix(self.dir.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        let (base, rest) = match inner.find('/') {
            Some(i) => inner.split_at(i),
            None => (inner, ""),
        };
        Ok((StorePath::from_base_name(base)?, rest))
    }

    /// Nix's `makeStorePath`: fingerprint `<kind>:sha256:<inner base16>:<store dir>:<name>`,
    /// hashed, folded to 20 bytes, printed in nix32.
    pub fn make_store_path(
        &self,
        kind: &str,
        inner: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        check_name(name)?;
        let fingerprint = format!(
            "{kind}:{}:{}:{}:{name}",
            inner.algo(),
            inner.to_base16(),
            self.dir
        );
        let folded = Hash::compute(HashAlgo::Sha256, fingerprint.as_bytes()).fold(20);
        let digest: [u8; 20] = folded.try_into().expect("fold(20) yields 20 bytes");
        StorePath::from_digest(&digest, name)
    }

    fn kind_with_refs(
        &self,
        mut kind: String,
        refs: &BTreeSet<StorePath>,
        has_self: bool,
    ) -> String {
        for r in refs {
            kind.push(':');
            kind.push_str(&self.print(r));
        }
        if has_self {
            kind.push_str(":self");
        }
        kind
    }

    /// Path of a text object (`.drv` files, `builtins.toFile`): content hash is SHA-256 of the
    /// text itself.
    pub fn make_text_path(
        &self,
        name: &str,
        content_hash: &Hash,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StorePathError> {
        if content_hash.algo() != HashAlgo::Sha256 {
            return Err(StorePathError::TextNeedsSha256(name.to_owned()));
        }
        let kind = self.kind_with_refs("text".to_owned(), refs, false);
        self.make_store_path(&kind, content_hash, name)
    }

    /// Path of fixed content (`nix-store --add`, `--add-fixed`, fixed-output derivations).
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        method: FileIngestionMethod,
        hash: &Hash,
        refs: &BTreeSet<StorePath>,
        has_self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        match method {
            FileIngestionMethod::Recursive if hash.algo() == HashAlgo::Sha256 => {
                let kind = self.kind_with_refs("source".to_owned(), refs, has_self_reference);
                self.make_store_path(&kind, hash, name)
            }
            FileIngestionMethod::Git => Err(StorePathError::GitUnsupported(name.to_owned())),
            _ => {
                if !refs.is_empty() || has_self_reference {
                    return Err(StorePathError::ReferencesNotAllowed(name.to_owned()));
                }
                let inner = format!(
                    "fixed:out:{}{}:{}:",
                    method.prefix(),
                    hash.algo(),
                    hash.to_base16()
                );
                let inner = Hash::compute(HashAlgo::Sha256, inner.as_bytes());
                self.make_store_path("output:out", &inner, name)
            }
        }
    }

    /// Path that a content address describes, with its references (the path's own base name in
    /// `refs` counts as a self-reference).
    pub fn make_path_from_ca(
        &self,
        name: &str,
        ca: &ContentAddress,
        refs: &BTreeSet<StorePath>,
        has_self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        match ca.method {
            ContentAddressMethod::Text => {
                if has_self_reference {
                    return Err(StorePathError::SelfReferenceInText(name.to_owned()));
                }
                self.make_text_path(name, &ca.hash, refs)
            }
            ContentAddressMethod::Fixed(method) => {
                self.make_fixed_output_path(name, method, &ca.hash, refs, has_self_reference)
            }
        }
    }

    /// Output path of an input-addressed derivation output: `drv_hash` is the masked
    /// hashDerivationModulo; output `out` is named `<drv name>`, others `<drv name>-<output>`.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = if output == "out" {
            drv_name.to_owned()
        } else {
            format!("{drv_name}-{output}")
        };
        self.make_store_path(&format!("output:{output}"), drv_hash, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn parses_and_prints() {
        let s = store();
        let p = s
            .parse_path("/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt")
            .unwrap();
        assert_eq!(p.hash_part(), "6h9lcbx523532ax1c5g2351w9bm8ykhy");
        assert_eq!(p.name(), "f.txt");
        assert_eq!(
            s.print(&p),
            "/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"
        );
        assert!(!p.is_derivation());
        let (p2, rest) = s
            .parse_path_with_suffix("/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt/bin/x")
            .unwrap();
        assert_eq!((p2, rest), (p, "/bin/x"));
    }

    #[test]
    fn refuses_bad_paths() {
        let s = store();
        let h = "6h9lcbx523532ax1c5g2351w9bm8ykhy";
        for bad in [
            "/nix/store/short".to_owned(),
            format!("/nix/store/{h}"),
            format!("/nix/store/{h}-"),
            format!("/nix/store/{h}_foo"),
            format!("/nix/store/e{}-foo", &h[1..]),
            format!("/nix/store/{h}-foo/bar"),
            format!("/nix/store/{h}-fo o"),
            format!("/nix/store/{h}-.."),
            format!("/nix/store/{h}-.-x"),
            format!("/nix/store/{h}-{}", "a".repeat(212)),
            format!("/nix/storex/{h}-foo"),
            format!("/other/{h}-foo"),
            format!("nix/store/{h}-foo"),
            format!("/nix/store/{h}-f\u{e9}"),
        ] {
            assert!(s.parse_path(&bad).is_err(), "accepted {bad}");
        }
        assert!(s
            .parse_path(&format!("/nix/store/{h}-{}", "a".repeat(211)))
            .is_ok());
        for bad in [
            "",
            "/",
            "nix",
            "/nix/",
            "/nix//store",
            "/nix/./store",
            "/nix/../store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "accepted store dir {bad:?}");
        }
    }

    // Vectors from section 6.10 of the protocol facts, checked against Nix 2.8.
    #[test]
    fn text_paths() {
        let s = store();
        let foo = s
            .make_text_path(
                "foo",
                &Hash::compute(HashAlgo::Sha256, b"bar"),
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(
            s.print(&foo),
            "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo"
        );
        let contents = s.print(&foo);
        let refs = BTreeSet::from([foo]);
        let baz = s
            .make_text_path(
                "baz",
                &Hash::compute(HashAlgo::Sha256, contents.as_bytes()),
                &refs,
            )
            .unwrap();
        assert_eq!(
            s.print(&baz),
            "/nix/store/5xd714cbfnkz02h2vbsj4fm03x3f15nf-baz"
        );
    }

    #[test]
    fn fixed_paths() {
        let s = store();
        let none = BTreeSet::new();
        let nar_hash = Hash::parse_bare(
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
            HashAlgo::Sha256,
        )
        .unwrap();
        let added = s
            .make_fixed_output_path(
                "f.txt",
                FileIngestionMethod::Recursive,
                &nar_hash,
                &none,
                false,
            )
            .unwrap();
        assert_eq!(
            s.print(&added),
            "/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt"
        );
        let flat = Hash::compute(HashAlgo::Sha256, b"hello\n");
        let fixed = s
            .make_fixed_output_path("f.txt", FileIngestionMethod::Flat, &flat, &none, false)
            .unwrap();
        assert_eq!(
            s.print(&fixed),
            "/nix/store/d4b4lmbd433fa2xcdysz7p7zahnqh1z4-f.txt"
        );
        let dir_nar = Hash::parse_bare(
            "64032129cd88eddd37d39d745f95c3eac92d3bb3c56c0c922218224d5236c764",
            HashAlgo::Sha256,
        )
        .unwrap();
        let d = s
            .make_fixed_output_path("d", FileIngestionMethod::Recursive, &dir_nar, &none, false)
            .unwrap();
        assert_eq!(s.print(&d), "/nix/store/j5yw5l53l34yb4sr59y61qxd4xnknsx0-d");
        let bar =
            Hash::parse_bare("0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33", HashAlgo::Sha1).unwrap();
        let p = s
            .make_fixed_output_path("bar", FileIngestionMethod::Recursive, &bar, &none, false)
            .unwrap();
        assert_eq!(
            s.print(&p),
            "/nix/store/mp57d33657rf34lzvlbpfa1gjfv5gmpg-bar"
        );
        let refs = BTreeSet::from([added]);
        assert!(s
            .make_fixed_output_path("x", FileIngestionMethod::Flat, &flat, &refs, false)
            .is_err());
    }

    #[test]
    fn store_dir_changes_hashes() {
        let other = StoreDir::new("/gnu/store").unwrap();
        let h = Hash::compute(HashAlgo::Sha256, b"bar");
        let a = store().make_text_path("foo", &h, &BTreeSet::new()).unwrap();
        let b = other.make_text_path("foo", &h, &BTreeSet::new()).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.name(), "foo");
    }

    #[test]
    fn ordering_is_by_base_name() {
        let a = StorePath::from_base_name("00000000000000000000000000000000-z").unwrap();
        let b = StorePath::from_base_name("10000000000000000000000000000000-a").unwrap();
        assert!(a < b);
    }
}
