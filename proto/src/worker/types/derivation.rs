//! `BasicDerivation` as sent in BuildDerivation (protocol-facts §3.2.8).
//!
//! Kept close to the wire: outputs are the raw `(path, hashAlgo, hash)` strings, which the
//! derivation module interprets (input-addressed, fixed, floating, deferred, impure). There is
//! no `inputDrvs` and no name: the name is the drv path's name without `.drv`
//! ([`BasicDerivation::name_from_drv_path`]).

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::AsyncRead;

use crate::store_path::StorePath;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// One output as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireDerivationOutput {
    /// Full output path, or `""` (floating, deferred, impure).
    pub path: String,
    /// `""`, or the method-prefixed algorithm (`sha256`, `r:sha256`, `text:sha256`, `git:sha1`).
    pub hash_algo: String,
    /// `""`, the base16 digest of a fixed output, or `"impure"`.
    pub hash: String,
}

/// A derivation without `inputDrvs`, as the client sends it after resolving its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BasicDerivation {
    /// Outputs by name. The reference keeps them in a map, so a duplicate name keeps the last.
    pub outputs: BTreeMap<String, WireDerivationOutput>,
    /// Input sources (already resolved store paths).
    pub input_srcs: BTreeSet<StorePath>,
    /// System type, e.g. `x86_64-linux`.
    pub platform: String,
    /// The builder executable.
    pub builder: String,
    /// Arguments ([`Limits::max_text`](crate::wire::Limits::max_text) each).
    pub args: Vec<String>,
    /// Environment. Keys are ordinary strings, values text; a duplicate key keeps the last
    /// value, as in the reference.
    pub env: BTreeMap<String, String>,
}

impl BasicDerivation {
    /// The derivation name for a drv path: its name without `.drv`.
    pub fn name_from_drv_path(drv_path: &StorePath) -> &str {
        drv_path
            .name()
            .strip_suffix(".drv")
            .unwrap_or(drv_path.name())
    }

    /// Encodes the derivation.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        w.put_u64(self.outputs.len() as u64);
        for (name, output) in &self.outputs {
            w.put_str(name);
            w.put_str(&output.path);
            w.put_str(&output.hash_algo);
            w.put_str(&output.hash);
        }
        w.put_paths(&ctx.store_dir, &self.input_srcs);
        w.put_str(&self.platform);
        w.put_str(&self.builder);
        w.put_strings(&self.args);
        w.put_string_map(&self.env);
    }

    /// Decodes the derivation. Every text field must be UTF-8.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let mut drv = BasicDerivation::default();
        let n = r.read_count("derivation outputs").await?;
        for _ in 0..n {
            let name = r.read_string("output name").await?;
            let output = WireDerivationOutput {
                path: r.read_string("output path").await?,
                hash_algo: r.read_string("output hash algorithm").await?,
                hash: r.read_string("output hash").await?,
            };
            drv.outputs.insert(name, output);
        }
        drv.input_srcs = r.read_path_set("input sources", &ctx.store_dir).await?;
        drv.platform = r.read_string("platform").await?;
        drv.builder = r.read_text("builder").await?;
        drv.args = r.read_text_list("builder arguments").await?;
        let n = r.read_count("environment").await?;
        for _ in 0..n {
            let key = r.read_string("environment variable name").await?;
            let value = r.read_text("environment variable value").await?;
            drv.env.insert(key, value);
        }
        Ok(drv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::version::ProtocolVersion;
    use std::io::Cursor;

    fn sample(dir: &StoreDir) -> BasicDerivation {
        let mut drv = BasicDerivation::default();
        drv.outputs.insert(
            "out".into(),
            WireDerivationOutput {
                path: "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo".into(),
                ..Default::default()
            },
        );
        drv.input_srcs.insert(
            dir.parse_path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-src")
                .unwrap(),
        );
        drv.platform = "x86_64-linux".into();
        drv.builder = "/bin/sh".into();
        drv.args = vec!["-c".into(), "echo hi > $out".into()];
        drv.env.insert(
            "out".into(),
            "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo".into(),
        );
        drv
    }

    #[tokio::test]
    async fn round_trip_and_truncation() {
        let ctx = WireContext::new(StoreDir::default(), ProtocolVersion::v1(34));
        let drv = sample(&ctx.store_dir);
        let mut w = WireWriter::new();
        drv.write(&mut w, &ctx);
        let bytes = w.into_bytes();
        let mut r = WireReader::new(Cursor::new(bytes.clone()));
        assert_eq!(BasicDerivation::read(&mut r, &ctx).await.unwrap(), drv);
        for cut in 0..bytes.len() {
            let mut r = WireReader::new(Cursor::new(bytes[..cut].to_vec()));
            assert!(
                BasicDerivation::read(&mut r, &ctx)
                    .await
                    .unwrap_err()
                    .is_eof(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn name_from_drv_path() {
        let p =
            StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-hello-2.1.drv").unwrap();
        assert_eq!(BasicDerivation::name_from_drv_path(&p), "hello-2.1");
    }
}
