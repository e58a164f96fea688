//! Realisations and derivation outputs on the wire (protocol-facts §3.2.7), for the types of
//! [`crate::path_info`].
//!
//! Two layouts exist:
//!
//! * the **JSON form** (≥ 1.31 until current Nix's feature): a
//!   [`DrvOutput`](crate::path_info::DrvOutput) is the string `"<algo>:<base16>!<output>"` and a
//!   [`Realisation`](crate::path_info::Realisation) is a `str` holding Nix 2.8's JSON
//!   (`outPath` and the values of `dependentRealisations` are store path *base names*);
//! * the **binary form**, only when `realisation-with-path-not-hash` is negotiated: a
//!   [`DrvPathOutput`](crate::path_info::DrvPathOutput) is `path` + `str`, an
//!   [`UnkeyedRealisation`](crate::path_info::UnkeyedRealisation) is `path` + `set<str>`, and a
//!   [`PathRealisation`](crate::path_info::PathRealisation) is the two in turn.

use tokio::io::AsyncRead;

use crate::hash::Hash;
use crate::path_info::{
    DrvOutput, DrvPathOutput, PathRealisation, Realisation, UnkeyedRealisation,
};
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// The id current Nix puts in `builtOutputs` keys when it has no derivation hash: SHA-256 of all
/// zeroes. Clients only look at the output name after the `!`.
pub fn placeholder_drv_output(output: impl Into<String>) -> DrvOutput {
    DrvOutput {
        drv_hash: Hash::sha256([0; 32]),
        output: output.into(),
    }
}

impl DrvOutput {
    /// Reads the string form.
    pub async fn wire_read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        const FIELD: &str = "derivation output id";
        let text = r.read_string(FIELD).await?;
        DrvOutput::parse(&text).map_err(|source| WireError::InvalidDrvOutput {
            field: FIELD,
            source,
        })
    }

    /// Writes the string form.
    pub fn wire_write(&self, w: &mut WireWriter) {
        w.put_str(&self.to_string());
    }
}

impl Realisation {
    /// Reads the JSON form (a `str`).
    pub async fn wire_read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        const FIELD: &str = "realisation";
        let text = r.read_string(FIELD).await?;
        Realisation::parse_json(&text).map_err(|source| WireError::InvalidJson {
            field: FIELD,
            source,
        })
    }

    /// Writes the JSON form (a `str`), exactly as Nix 2.8 does.
    pub fn wire_write(&self, w: &mut WireWriter) {
        w.put_str(&self.to_json_string());
    }

    /// The binary-form value of this realisation (drops the id and dependencies).
    pub fn to_unkeyed_realisation(&self) -> UnkeyedRealisation {
        UnkeyedRealisation {
            out_path: self.out_path.clone(),
            signatures: self.signatures.clone(),
        }
    }
}

impl DrvPathOutput {
    /// Writes `path` + `str`.
    pub fn wire_write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_path(&ctx.store_dir, &self.drv_path);
        w.put_str(&self.output_name);
    }

    /// Reads `path` + `str`.
    pub async fn wire_read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let drv_path = r
            .read_path("derivation output path", &ctx.store_dir)
            .await?;
        let output_name = r.read_string("derivation output name").await?;
        Ok(DrvPathOutput {
            drv_path,
            output_name,
        })
    }
}

impl UnkeyedRealisation {
    /// Writes `path` + `set<str>`.
    pub fn wire_write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_path(&ctx.store_dir, &self.out_path);
        w.put_strings(&self.signatures);
    }

    /// Reads `path` + `set<str>`.
    pub async fn wire_read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let out_path = r
            .read_path("realisation output path", &ctx.store_dir)
            .await?;
        let signatures = r.read_string_set("realisation signatures").await?;
        Ok(UnkeyedRealisation {
            out_path,
            signatures,
        })
    }
}

impl PathRealisation {
    /// Writes the binary form: key, then value.
    pub fn wire_write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.key.wire_write(w, ctx);
        self.value.wire_write(w, ctx);
    }

    /// Reads the binary form.
    pub async fn wire_read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let key = DrvPathOutput::wire_read(r, ctx).await?;
        let value = UnkeyedRealisation::wire_read(r, ctx).await?;
        Ok(PathRealisation { key, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::{StoreDir, StorePath};
    use crate::worker::version::ProtocolVersion;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Cursor;

    const ID: &str = "sha256:15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527!baz";
    const OUT: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo";

    #[tokio::test]
    async fn json_form_matches_nix_2_8() {
        let r = Realisation {
            id: DrvOutput::parse(ID).unwrap(),
            out_path: StorePath::from_base_name(OUT).unwrap(),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        };
        let mut w = WireWriter::new();
        r.wire_write(&mut w);
        r.id.wire_write(&mut w);
        let mut expected = WireWriter::new();
        expected.put_str(&format!(
            r#"{{"dependentRealisations":{{}},"id":"{ID}","outPath":"{OUT}","signatures":[]}}"#
        ));
        expected.put_str(ID);
        assert_eq!(w.as_bytes(), expected.as_bytes());
        let mut rd = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(Realisation::wire_read(&mut rd).await.unwrap(), r);
        assert_eq!(DrvOutput::wire_read(&mut rd).await.unwrap(), r.id);
    }

    #[tokio::test]
    async fn refusals_are_typed() {
        let mut w = WireWriter::new();
        w.put_str("sha256:abc");
        w.put_str("{\"id\":1}");
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            DrvOutput::wire_read(&mut r).await,
            Err(WireError::InvalidDrvOutput { .. })
        ));
        assert!(matches!(
            Realisation::wire_read(&mut r).await,
            Err(WireError::InvalidJson { .. })
        ));
    }

    #[tokio::test]
    async fn binary_form_round_trip() {
        let ctx = WireContext::new(StoreDir::default(), ProtocolVersion::v1(38));
        let value = PathRealisation {
            key: DrvPathOutput {
                drv_path: StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv")
                    .unwrap(),
                output_name: "out".into(),
            },
            value: UnkeyedRealisation {
                out_path: StorePath::from_base_name(OUT).unwrap(),
                signatures: ["k:AAAA".to_string()].into(),
            },
        };
        let mut w = WireWriter::new();
        value.wire_write(&mut w, &ctx);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(
            PathRealisation::wire_read(&mut r, &ctx).await.unwrap(),
            value
        );
        assert_eq!(
            placeholder_drv_output("out").to_string(),
            format!("sha256:{}!out", "0".repeat(64))
        );
    }
}
