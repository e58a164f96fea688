//! SetOptions (op 19; protocol-facts §4.1).

use std::collections::BTreeMap;

use tokio::io::AsyncRead;

use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::logger::Verbosity;
use crate::worker::version::WireContext;

/// Why an override from the client was not kept in [`SetOptions::overrides`]. None of these is
/// a protocol error: the reference never fails SetOptions because of an override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideRejection {
    /// A second value for a name already seen; the first value wins (the reference inserts
    /// with `emplace`).
    Duplicate,
    /// The name or value is not UTF-8.
    InvalidUtf8,
}

/// An override that was dropped while reading, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedOverride {
    /// The setting name (invalid UTF-8 replaced).
    pub name: String,
    /// Why.
    pub reason: OverrideRejection,
}

/// The SetOptions request: twelve fixed fields (each read as a 32-bit unsigned int) and, from
/// 1.12 on, a map of setting overrides.
///
/// Flags are read leniently (non-zero = true) and written as 0 or 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOptions {
    /// keep-failed.
    pub keep_failed: bool,
    /// keep-going.
    pub keep_going: bool,
    /// fallback.
    pub try_fallback: bool,
    /// The client's log level; the daemon filters log lines with it. Values above 7 count as
    /// [`Verbosity::Vomit`].
    pub verbosity: Verbosity,
    /// max-jobs.
    pub max_build_jobs: u32,
    /// max-silent-time, seconds.
    pub max_silent_time: u32,
    /// Obsolete, ignored.
    pub use_build_hook: bool,
    /// The raw "verbose build" level; the daemon sets verbose-build = (value == 0). Nix 2.8
    /// sends 0 from `nix-store`/`nix-build` and 7 from `nix`.
    pub verbose_build: u32,
    /// Obsolete, ignored.
    pub log_type: u32,
    /// Obsolete, ignored.
    pub print_build_trace: u32,
    /// cores.
    pub build_cores: u32,
    /// substitute.
    pub use_substitutes: bool,
    /// Setting overrides (≥ 1.12), first value of a duplicate name kept.
    pub overrides: BTreeMap<String, String>,
    /// Overrides dropped while reading (never sent by [`write`](Self::write)).
    pub rejected_overrides: Vec<RejectedOverride>,
}

impl Default for SetOptions {
    /// What a Nix 2.8 client sends with no options (protocol-facts Appendix A.1), except that
    /// `build_cores` is 0 (= all cores) here.
    fn default() -> Self {
        SetOptions {
            keep_failed: false,
            keep_going: false,
            try_fallback: false,
            verbosity: Verbosity::Info,
            max_build_jobs: 1,
            max_silent_time: 0,
            use_build_hook: true,
            verbose_build: 0,
            log_type: 0,
            print_build_trace: 0,
            build_cores: 0,
            use_substitutes: true,
            overrides: BTreeMap::new(),
            rejected_overrides: Vec::new(),
        }
    }
}

impl SetOptions {
    /// True if the client wants build logs shown (verbose-build).
    pub fn verbose_build_enabled(&self) -> bool {
        self.verbose_build == 0
    }

    /// Encodes the request (never fails; the `Result` keeps all request writers alike).
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        w.put_bool(self.keep_failed);
        w.put_bool(self.keep_going);
        w.put_bool(self.try_fallback);
        w.put_u64(self.verbosity.code());
        w.put_u64(u64::from(self.max_build_jobs));
        w.put_u64(u64::from(self.max_silent_time));
        w.put_bool(self.use_build_hook);
        w.put_u64(u64::from(self.verbose_build));
        w.put_u64(u64::from(self.log_type));
        w.put_u64(u64::from(self.print_build_trace));
        w.put_u64(u64::from(self.build_cores));
        w.put_bool(self.use_substitutes);
        if ctx.at_least(12) {
            w.put_string_map(&self.overrides);
        }
        Ok(())
    }

    /// Decodes the request.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let flag = |v: u32| v != 0;
        let mut opts = SetOptions {
            keep_failed: flag(r.read_u32("keepFailed").await?),
            keep_going: flag(r.read_u32("keepGoing").await?),
            try_fallback: flag(r.read_u32("tryFallback").await?),
            verbosity: Verbosity::from_code_saturating(u64::from(r.read_u32("verbosity").await?)),
            max_build_jobs: r.read_u32("maxBuildJobs").await?,
            max_silent_time: r.read_u32("maxSilentTime").await?,
            use_build_hook: flag(r.read_u32("useBuildHook").await?),
            verbose_build: r.read_u32("verboseBuild").await?,
            log_type: r.read_u32("logType").await?,
            print_build_trace: r.read_u32("printBuildTrace").await?,
            build_cores: r.read_u32("buildCores").await?,
            use_substitutes: flag(r.read_u32("useSubstitutes").await?),
            overrides: BTreeMap::new(),
            rejected_overrides: Vec::new(),
        };
        if ctx.at_least(12) {
            let count = r.read_u32("setting overrides").await?;
            let max = r.limits().max_collection_len;
            if count as usize > max {
                return Err(WireError::TooManyElements {
                    field: "setting overrides",
                    count: u64::from(count),
                    max,
                });
            }
            for _ in 0..count {
                let name = r.read_bytes("setting name").await?;
                let value = r.read_bytes("setting value").await?;
                r.charge("setting overrides", crate::wire::Limits::ELEMENT_OVERHEAD)?;
                match (String::from_utf8(name), String::from_utf8(value)) {
                    (Ok(name), Ok(value)) => match opts.overrides.entry(name) {
                        std::collections::btree_map::Entry::Occupied(entry) => {
                            opts.rejected_overrides.push(RejectedOverride {
                                name: entry.key().clone(),
                                reason: OverrideRejection::Duplicate,
                            });
                        }
                        std::collections::btree_map::Entry::Vacant(entry) => {
                            entry.insert(value);
                        }
                    },
                    (name, _) => {
                        let name = match name {
                            Ok(name) => name,
                            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        };
                        opts.rejected_overrides.push(RejectedOverride {
                            name,
                            reason: OverrideRejection::InvalidUtf8,
                        });
                    }
                }
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StoreDir;
    use crate::worker::version::ProtocolVersion;
    use std::io::Cursor;

    fn ctx() -> WireContext {
        WireContext::new(StoreDir::default(), ProtocolVersion::v1(34))
    }

    /// protocol-facts §4.2: `-K -k -j 4 --option timeout 5 --option max-silent-time 7 ...`
    #[tokio::test]
    async fn verified_nix_2_8_example() {
        let mut w = WireWriter::new();
        for v in [1, 1, 0, 3, 4, 7, 1, 0, 0, 0, 2, 1] {
            w.put_u64(v);
        }
        w.put_string_map([
            ("connect-timeout", "3"),
            ("substituters", "https://a https://b"),
            ("timeout", "5"),
        ]);
        let bytes = w.into_bytes();
        let mut r = WireReader::new(Cursor::new(bytes.clone()));
        let opts = SetOptions::read(&mut r, &ctx()).await.unwrap();
        assert!(opts.keep_failed && opts.keep_going && !opts.try_fallback);
        assert_eq!(opts.verbosity, Verbosity::Info);
        assert_eq!(
            (opts.max_build_jobs, opts.max_silent_time, opts.build_cores),
            (4, 7, 2)
        );
        assert!(opts.verbose_build_enabled());
        assert_eq!(opts.overrides["timeout"], "5");
        let mut back = WireWriter::new();
        opts.write(&mut back, &ctx()).unwrap();
        assert_eq!(back.into_bytes(), bytes);
    }

    #[tokio::test]
    async fn first_duplicate_wins_and_bad_utf8_is_set_aside() {
        let mut w = WireWriter::new();
        for _ in 0..12 {
            w.put_u64(0);
        }
        w.put_u64(3);
        w.put_str("sandbox");
        w.put_str("false");
        w.put_str("sandbox");
        w.put_str("true");
        w.put_bytes(b"bad\xff");
        w.put_str("x");
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        let opts = SetOptions::read(&mut r, &ctx()).await.unwrap();
        assert_eq!(opts.overrides["sandbox"], "false");
        assert_eq!(opts.rejected_overrides.len(), 2);
        assert_eq!(
            opts.rejected_overrides[0].reason,
            OverrideRejection::Duplicate
        );
        assert_eq!(
            opts.rejected_overrides[1].reason,
            OverrideRejection::InvalidUtf8
        );
    }

    #[tokio::test]
    async fn oversized_fields_are_refused() {
        let mut w = WireWriter::new();
        w.put_u64(1 << 32);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            SetOptions::read(&mut r, &ctx()).await,
            Err(WireError::IntegerTooLarge { .. })
        ));
        let mut w = WireWriter::new();
        for _ in 0..12 {
            w.put_u64(0);
        }
        w.put_u64(u64::from(u32::MAX));
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            SetOptions::read(&mut r, &ctx()).await,
            Err(WireError::TooManyElements { .. })
        ));
    }

    #[tokio::test]
    async fn no_overrides_below_1_12() {
        let old = WireContext::new(StoreDir::default(), ProtocolVersion::v1(11));
        let mut opts = SetOptions::default();
        opts.overrides.insert("a".into(), "b".into());
        let mut w = WireWriter::new();
        opts.write(&mut w, &old).unwrap();
        assert_eq!(w.len(), 12 * 8);
    }
}
