//! Derived paths: what BuildPaths, BuildPathsWithResults and QueryMissing ask for
//! (protocol-facts §3.2.4), and the tagged `SingleDerivedPath` of SubmitOutput.

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use crate::store_path::{check_name, StoreDir, StorePath};
use crate::wire::PREALLOC_CAP;
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::{ProtocolVersion, WireContext};

/// Which outputs of a derivation are wanted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputsSpec {
    /// All outputs (`*`).
    All,
    /// The named outputs; never empty (an empty list means [`OutputsSpec::All`]).
    Names(BTreeSet<String>),
}

/// A store path to make valid, or outputs of a derivation to build.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DerivedPath {
    /// Make sure this path exists. From 1.30 on, for a `.drv` path this means the file itself.
    Opaque(StorePath),
    /// Build these outputs of this derivation.
    Built {
        /// The derivation.
        drv_path: StorePath,
        /// The outputs.
        outputs: OutputsSpec,
    },
}

const FIELD: &str = "derived path";

fn parse_outputs(text: &str) -> Result<OutputsSpec, WireError> {
    if text == "*" {
        return Ok(OutputsSpec::All);
    }
    // Like the 2.8 tokenizer: empty pieces are dropped, and no names at all means all outputs.
    let mut names = BTreeSet::new();
    for name in text.split(',').filter(|n| !n.is_empty()) {
        if name == "*" {
            return Ok(OutputsSpec::All);
        }
        check_name(name).map_err(|e| WireError::invalid_value("output name", name, e))?;
        names.insert(name.to_owned());
    }
    Ok(if names.is_empty() {
        OutputsSpec::All
    } else {
        OutputsSpec::Names(names)
    })
}

impl DerivedPath {
    /// Parses the wire string. From 1.30 on a path without `!` is opaque; below 1.30 a bare
    /// `.drv` path means "build all outputs" (protocol-facts §3.2.4). The string is split at the
    /// first `!`, as Nix 2.8 does.
    pub fn parse(
        text: &str,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        let parse_path = |p: &str| {
            store_dir
                .parse_path(p)
                .map_err(|source| WireError::InvalidStorePath {
                    field: FIELD,
                    source,
                })
        };
        let (path, outputs) = match text.split_once('!') {
            None => (parse_path(text)?, None),
            Some((path, outputs)) => (parse_path(path)?, Some(parse_outputs(outputs)?)),
        };
        Ok(match outputs {
            Some(outputs) if version.at_least(30) => DerivedPath::Built {
                drv_path: path,
                outputs,
            },
            None if version.at_least(30) => DerivedPath::Opaque(path),
            Some(OutputsSpec::Names(names)) => DerivedPath::Built {
                drv_path: path,
                outputs: OutputsSpec::Names(names),
            },
            Some(OutputsSpec::All) | None if path.is_derivation() => DerivedPath::Built {
                drv_path: path,
                outputs: OutputsSpec::All,
            },
            Some(OutputsSpec::All) | None => DerivedPath::Opaque(path),
        })
    }

    /// The wire string for `version`. Fails only below 1.30 for an opaque `.drv` path, which
    /// old clients would read as "build it".
    pub fn to_wire_string(
        &self,
        store_dir: &StoreDir,
        version: ProtocolVersion,
    ) -> Result<String, WireError> {
        Ok(match self {
            DerivedPath::Opaque(path) => {
                if !version.at_least(30) && path.is_derivation() {
                    return Err(WireError::Unrepresentable {
                        what: "an opaque derivation path",
                        version: version.to_string(),
                        reason: "below 1.30 a bare .drv path means building it",
                    });
                }
                store_dir.print(path)
            }
            DerivedPath::Built { drv_path, outputs } => {
                let path = store_dir.print(drv_path);
                match outputs {
                    OutputsSpec::All if version.at_least(30) => format!("{path}!*"),
                    OutputsSpec::All => path,
                    OutputsSpec::Names(names) => {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        format!("{path}!{}", names.join(","))
                    }
                }
            }
        })
    }

    /// Reads one derived path.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let text = r.read_string(FIELD).await?;
        Self::parse(&text, &ctx.store_dir, ctx.version)
    }

    /// Writes one derived path.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_str(&self.to_wire_string(&ctx.store_dir, ctx.version)?);
        Ok(())
    }

    /// Reads a `list<str>` of derived paths.
    pub async fn read_list<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Vec<Self>, WireError> {
        let n = r.read_count("derived paths").await?;
        let mut out = Vec::with_capacity(n.min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(Self::read(r, ctx).await?);
        }
        Ok(out)
    }

    /// Writes a `list<str>` of derived paths.
    pub fn write_list(
        paths: &[Self],
        w: &mut WireWriter,
        ctx: &WireContext,
    ) -> Result<(), WireError> {
        w.put_u64(paths.len() as u64);
        for path in paths {
            path.write(w, ctx)?;
        }
        Ok(())
    }
}

/// A single store path that may itself be the output of a derivation (dynamic derivations;
/// used by SubmitOutput). On the wire: tag 0 + path, or tag 1 + the inner value + output name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SingleDerivedPath {
    /// A plain store path.
    Opaque(StorePath),
    /// One output of a derivation.
    Built {
        /// The derivation, possibly itself an output.
        drv_path: Box<SingleDerivedPath>,
        /// The output name.
        output: String,
    },
}

impl SingleDerivedPath {
    /// Reads the tagged form, iteratively; nesting beyond
    /// [`Limits::max_nesting`](crate::wire::Limits::max_nesting) is refused.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        const FIELD: &str = "single derived path";
        let max = r.limits().max_nesting;
        let mut depth = 0usize;
        loop {
            match r.read_u8(FIELD).await? {
                0 => break,
                1 => {
                    depth += 1;
                    if depth > max {
                        return Err(WireError::TooDeep { field: FIELD, max });
                    }
                }
                other => {
                    return Err(WireError::InvalidCode {
                        field: FIELD,
                        value: u64::from(other),
                    })
                }
            }
        }
        let mut value = SingleDerivedPath::Opaque(r.read_path(FIELD, &ctx.store_dir).await?);
        for _ in 0..depth {
            let output = r.read_string("output name").await?;
            value = SingleDerivedPath::Built {
                drv_path: Box::new(value),
                output,
            };
        }
        Ok(value)
    }

    /// Writes the tagged form.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        let mut outputs = Vec::new();
        let mut cur = self;
        while let SingleDerivedPath::Built { drv_path, output } = cur {
            w.put_u64(1);
            outputs.push(output);
            cur = drv_path;
        }
        w.put_u64(0);
        if let SingleDerivedPath::Opaque(path) = cur {
            w.put_path(&ctx.store_dir, path);
        }
        for output in outputs.into_iter().rev() {
            w.put_str(output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn dir() -> StoreDir {
        StoreDir::default()
    }
    const DRV: &str = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv";
    const OUT: &str = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo";

    fn names(list: &[&str]) -> OutputsSpec {
        OutputsSpec::Names(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn meaning_changes_at_1_30() {
        let v29 = ProtocolVersion::v1(29);
        let v30 = ProtocolVersion::v1(30);
        let drv = dir().parse_path(DRV).unwrap();
        let built_all = DerivedPath::Built {
            drv_path: drv.clone(),
            outputs: OutputsSpec::All,
        };
        assert_eq!(DerivedPath::parse(DRV, &dir(), v29).unwrap(), built_all);
        assert_eq!(
            DerivedPath::parse(DRV, &dir(), v30).unwrap(),
            DerivedPath::Opaque(drv.clone())
        );
        assert_eq!(
            DerivedPath::parse(&format!("{DRV}!*"), &dir(), v30).unwrap(),
            built_all
        );
        assert_eq!(built_all.to_wire_string(&dir(), v29).unwrap(), DRV);
        assert_eq!(
            built_all.to_wire_string(&dir(), v30).unwrap(),
            format!("{DRV}!*")
        );
        assert!(DerivedPath::Opaque(drv)
            .to_wire_string(&dir(), v29)
            .is_err());
        let out = dir().parse_path(OUT).unwrap();
        assert_eq!(
            DerivedPath::parse(OUT, &dir(), v29).unwrap(),
            DerivedPath::Opaque(out)
        );
    }

    #[test]
    fn output_names_are_sorted_and_checked() {
        let v = ProtocolVersion::v1(34);
        let parsed = DerivedPath::parse(&format!("{DRV}!y,x"), &dir(), v).unwrap();
        let drv = dir().parse_path(DRV).unwrap();
        assert_eq!(
            parsed,
            DerivedPath::Built {
                drv_path: drv,
                outputs: names(&["x", "y"])
            }
        );
        assert_eq!(
            parsed.to_wire_string(&dir(), v).unwrap(),
            format!("{DRV}!x,y")
        );
        for bad in [
            format!("{DRV}!a!b"),
            format!("{DRV}!a b"),
            "relative!out".to_string(),
            format!("{DRV}/sub"),
        ] {
            assert!(DerivedPath::parse(&bad, &dir(), v).is_err(), "{bad}");
        }
        // Nix 2.8 drops empty pieces; no names at all means all outputs.
        let all = DerivedPath::parse(&format!("{DRV}!"), &dir(), v).unwrap();
        assert!(matches!(
            all,
            DerivedPath::Built {
                outputs: OutputsSpec::All,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn single_derived_path_nesting() {
        let ctx = WireContext::new(dir(), ProtocolVersion::v1(38));
        let base = dir().parse_path(DRV).unwrap();
        let nested = SingleDerivedPath::Built {
            drv_path: Box::new(SingleDerivedPath::Built {
                drv_path: Box::new(SingleDerivedPath::Opaque(base)),
                output: "inner".into(),
            }),
            output: "outer".into(),
        };
        let mut w = WireWriter::new();
        nested.write(&mut w, &ctx);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(SingleDerivedPath::read(&mut r, &ctx).await.unwrap(), nested);

        let mut w = WireWriter::new();
        for _ in 0..1000 {
            w.put_u64(1);
        }
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            SingleDerivedPath::read(&mut r, &ctx).await,
            Err(WireError::TooDeep { .. })
        ));
    }
}
