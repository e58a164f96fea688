//! Build results (protocol-facts §3.2.5, §3.2.6).

use std::collections::BTreeMap;

use tokio::io::AsyncRead;

use super::derived_path::DerivedPath;
use super::realisation::placeholder_drv_output;
use crate::path_info::{DrvOutput, Realisation, UnkeyedRealisation};
use crate::wire::{WireError, WireReader, WireWriter};
use crate::worker::version::WireContext;

/// The status of a build (`u64` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// 0
    Built,
    /// 1
    Substituted,
    /// 2
    AlreadyValid,
    /// 3
    PermanentFailure,
    /// 4
    InputRejected,
    /// 5 (current Nix also sends its internal HashMismatch as this)
    OutputRejected,
    /// 6
    TransientFailure,
    /// 7 (unused)
    CachedFailure,
    /// 8
    TimedOut,
    /// 9
    MiscFailure,
    /// 10
    DependencyFailed,
    /// 11
    LogLimitExceeded,
    /// 12
    NotDeterministic,
    /// 13
    ResolvesToAlreadyValid,
    /// 14
    NoSubstituters,
}

const STATUSES: [BuildStatus; 15] = [
    BuildStatus::Built,
    BuildStatus::Substituted,
    BuildStatus::AlreadyValid,
    BuildStatus::PermanentFailure,
    BuildStatus::InputRejected,
    BuildStatus::OutputRejected,
    BuildStatus::TransientFailure,
    BuildStatus::CachedFailure,
    BuildStatus::TimedOut,
    BuildStatus::MiscFailure,
    BuildStatus::DependencyFailed,
    BuildStatus::LogLimitExceeded,
    BuildStatus::NotDeterministic,
    BuildStatus::ResolvesToAlreadyValid,
    BuildStatus::NoSubstituters,
];

impl BuildStatus {
    /// The wire value.
    pub fn code(self) -> u64 {
        STATUSES.iter().position(|s| *s == self).unwrap_or(0) as u64
    }

    /// Decodes a wire value.
    pub fn from_code(code: u64) -> Option<Self> {
        usize::try_from(code)
            .ok()
            .and_then(|i| STATUSES.get(i).copied())
    }

    /// Clients count Built, Substituted, AlreadyValid and ResolvesToAlreadyValid as success.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            BuildStatus::Built
                | BuildStatus::Substituted
                | BuildStatus::AlreadyValid
                | BuildStatus::ResolvesToAlreadyValid
        )
    }

    /// Nix's name of the status (as in its JSON).
    pub fn name(self) -> &'static str {
        match self {
            BuildStatus::Built => "Built",
            BuildStatus::Substituted => "Substituted",
            BuildStatus::AlreadyValid => "AlreadyValid",
            BuildStatus::PermanentFailure => "PermanentFailure",
            BuildStatus::InputRejected => "InputRejected",
            BuildStatus::OutputRejected => "OutputRejected",
            BuildStatus::TransientFailure => "TransientFailure",
            BuildStatus::CachedFailure => "CachedFailure",
            BuildStatus::TimedOut => "TimedOut",
            BuildStatus::MiscFailure => "MiscFailure",
            BuildStatus::DependencyFailed => "DependencyFailed",
            BuildStatus::LogLimitExceeded => "LogLimitExceeded",
            BuildStatus::NotDeterministic => "NotDeterministic",
            BuildStatus::ResolvesToAlreadyValid => "ResolvesToAlreadyValid",
            BuildStatus::NoSubstituters => "NoSubstituters",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        STATUSES.iter().copied().find(|s| s.name() == name)
    }
}

/// Which fields of a build result a connection carries. The worker protocol derives it from the
/// negotiated version and features ([`BuildResultLayout::for_context`]); the serve protocol
/// (`nix-store --serve`) uses the same fields at other version numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildResultLayout {
    /// timesBuilt, isNonDeterministic, startTime, stopTime (worker ≥ 1.29).
    pub times: bool,
    /// cpuUser, cpuSystem (worker ≥ 1.37).
    pub cpu: bool,
    /// How builtOutputs are sent.
    pub outputs: BuiltOutputsLayout,
}

/// How `builtOutputs` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltOutputsLayout {
    /// Not sent (worker < 1.28).
    Absent,
    /// `map<str, str>`: DrvOutput id → realisation JSON (worker ≥ 1.28).
    Json,
    /// `map<str, UnkeyedRealisation>`: output name → binary realisation (feature
    /// `realisation-with-path-not-hash`).
    Binary,
}

impl BuildResultLayout {
    /// The layout of a worker-protocol connection.
    pub fn for_context(ctx: &WireContext) -> Self {
        BuildResultLayout {
            times: ctx.at_least(29),
            cpu: ctx.at_least(37),
            outputs: if ctx.realisation_with_path() {
                BuiltOutputsLayout::Binary
            } else if ctx.at_least(28) {
                BuiltOutputsLayout::Json
            } else {
                BuiltOutputsLayout::Absent
            },
        }
    }
}

/// The result of building one derived path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// The status.
    pub status: BuildStatus,
    /// The error message ("" on success).
    pub error_msg: String,
    /// How often the derivation was built (≥ 1.29).
    pub times_built: u32,
    /// Whether repeated builds differed (≥ 1.29).
    pub is_non_deterministic: bool,
    /// Unix seconds (≥ 1.29), at most `i64::MAX`.
    pub start_time: u64,
    /// Unix seconds (≥ 1.29), at most `i64::MAX`.
    pub stop_time: u64,
    /// User CPU time in microseconds (≥ 1.37), at most `i64::MAX`.
    pub cpu_user_micros: Option<u64>,
    /// System CPU time in microseconds (≥ 1.37), at most `i64::MAX`.
    pub cpu_system_micros: Option<u64>,
    /// The outputs, by output name (≥ 1.28). In the JSON layout each entry's
    /// [`Realisation::id`] is the key sent (Nix 2.8 clients read the output name after its `!`
    /// and `outPath`; a [`placeholder_drv_output`] id is fine); in the binary layout only the
    /// path and signatures travel, and decoding fills in a placeholder id and no dependencies.
    pub built_outputs: BTreeMap<String, Realisation>,
}

impl BuildResult {
    /// A result with the given status and message and everything else empty.
    pub fn new(status: BuildStatus, error_msg: impl Into<String>) -> Self {
        BuildResult {
            status,
            error_msg: error_msg.into(),
            times_built: 0,
            is_non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            cpu_user_micros: None,
            cpu_system_micros: None,
            built_outputs: BTreeMap::new(),
        }
    }

    /// Encodes with an explicit layout.
    pub fn write_layout(&self, w: &mut WireWriter, ctx: &WireContext, layout: BuildResultLayout) {
        w.put_u64(self.status.code());
        w.put_str(&self.error_msg);
        if layout.times {
            w.put_u64(u64::from(self.times_built));
            w.put_bool(self.is_non_deterministic);
            w.put_u64(self.start_time);
            w.put_u64(self.stop_time);
        }
        if layout.cpu {
            for value in [self.cpu_user_micros, self.cpu_system_micros] {
                w.put_option_tag(value.is_some());
                if let Some(micros) = value {
                    w.put_u64(micros);
                }
            }
        }
        match layout.outputs {
            BuiltOutputsLayout::Absent => {}
            BuiltOutputsLayout::Json => {
                // Sorted by the key text, like the reference's string map.
                let entries: BTreeMap<String, String> = self
                    .built_outputs
                    .values()
                    .map(|r| (r.id.to_string(), r.to_json_string()))
                    .collect();
                w.put_string_map(&entries);
            }
            BuiltOutputsLayout::Binary => {
                w.put_u64(self.built_outputs.len() as u64);
                for (name, realisation) in &self.built_outputs {
                    w.put_str(name);
                    realisation.to_unkeyed_realisation().wire_write(w, ctx);
                }
            }
        }
    }

    /// Decodes with an explicit layout.
    pub async fn read_layout<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
        layout: BuildResultLayout,
    ) -> Result<Self, WireError> {
        let code = r.read_u64("build status").await?;
        let status = BuildStatus::from_code(code).ok_or(WireError::InvalidCode {
            field: "build status",
            value: code,
        })?;
        // Display text from a remote daemon: replace invalid UTF-8 rather than fail the build.
        let msg = r.read_text_bytes("build error message").await?;
        let mut result = BuildResult::new(status, String::from_utf8_lossy(&msg).into_owned());
        if layout.times {
            result.times_built = r.read_u32("times built").await?;
            result.is_non_deterministic = r.read_bool_strict("is non-deterministic").await?;
            result.start_time = r.read_i64_nonneg("start time").await?;
            result.stop_time = r.read_i64_nonneg("stop time").await?;
        }
        if layout.cpu {
            if r.read_option_tag("cpu user").await? {
                result.cpu_user_micros = Some(r.read_i64_nonneg("cpu user").await?);
            }
            if r.read_option_tag("cpu system").await? {
                result.cpu_system_micros = Some(r.read_i64_nonneg("cpu system").await?);
            }
        }
        match layout.outputs {
            BuiltOutputsLayout::Absent => {}
            BuiltOutputsLayout::Json => {
                let n = r.read_count("built outputs").await?;
                for _ in 0..n {
                    let key = DrvOutput::wire_read(r).await?;
                    let realisation = Realisation::wire_read(r).await?;
                    result.built_outputs.insert(key.output, realisation);
                }
            }
            BuiltOutputsLayout::Binary => {
                let n = r.read_count("built outputs").await?;
                for _ in 0..n {
                    let name = r.read_string("output name").await?;
                    let value = UnkeyedRealisation::wire_read(r, ctx).await?;
                    let realisation = Realisation {
                        id: placeholder_drv_output(name.clone()),
                        out_path: value.out_path,
                        signatures: value.signatures,
                        dependent_realisations: BTreeMap::new(),
                    };
                    result.built_outputs.insert(name, realisation);
                }
            }
        }
        Ok(result)
    }

    /// Encodes for the connection.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) {
        self.write_layout(w, ctx, BuildResultLayout::for_context(ctx))
    }

    /// Decodes for the connection.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        Self::read_layout(r, ctx, BuildResultLayout::for_context(ctx)).await
    }
}

/// A build result together with the derived path it answers (BuildPathsWithResults). The
/// path must be exactly the one requested: Nix 2.8 clients look results up by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedBuildResult {
    /// What was requested.
    pub path: DerivedPath,
    /// The result.
    pub result: BuildResult,
}

impl KeyedBuildResult {
    /// Encodes path then result.
    pub fn write(&self, w: &mut WireWriter, ctx: &WireContext) -> Result<(), WireError> {
        self.path.write(w, ctx)?;
        self.result.write(w, ctx);
        Ok(())
    }

    /// Decodes path then result.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        ctx: &WireContext,
    ) -> Result<Self, WireError> {
        let path = DerivedPath::read(r, ctx).await?;
        let result = BuildResult::read(r, ctx).await?;
        Ok(KeyedBuildResult { path, result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::{StoreDir, StorePath};
    use crate::worker::version::{ProtocolVersion, FEATURE_REALISATION_WITH_PATH_NOT_HASH};
    use std::io::Cursor;

    fn ctx(minor: u8) -> WireContext {
        WireContext::new(StoreDir::default(), ProtocolVersion::v1(minor))
    }

    fn built() -> BuildResult {
        let mut result = BuildResult::new(BuildStatus::Built, "");
        result.times_built = 1;
        result.start_time = 30;
        result.stop_time = 50;
        result.cpu_user_micros = Some(500_000_000);
        result.cpu_system_micros = None;
        let out = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap();
        let realisation = Realisation {
            id: placeholder_drv_output("out"),
            out_path: out,
            signatures: ["k:AAAA".to_string()].into(),
            dependent_realisations: BTreeMap::new(),
        };
        result.built_outputs.insert("out".into(), realisation);
        result
    }

    async fn round_trip(result: &BuildResult, ctx: &WireContext) -> BuildResult {
        let mut w = WireWriter::new();
        result.write(&mut w, ctx);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        BuildResult::read(&mut r, ctx).await.unwrap()
    }

    #[tokio::test]
    async fn fields_appear_by_version() {
        let full = built();
        assert_eq!(round_trip(&full, &ctx(37)).await, full);
        let at29 = round_trip(&full, &ctx(29)).await;
        assert_eq!(at29.cpu_user_micros, None);
        assert_eq!(at29.built_outputs, full.built_outputs);
        let at28 = round_trip(&full, &ctx(28)).await;
        assert_eq!((at28.times_built, at28.start_time), (0, 0));
        let at27 = round_trip(&full, &ctx(27)).await;
        assert!(at27.built_outputs.is_empty());

        let mut feature = ctx(38);
        feature
            .features
            .insert(FEATURE_REALISATION_WITH_PATH_NOT_HASH.into());
        let binary = round_trip(&full, &feature).await;
        assert_eq!(
            binary.built_outputs["out"].out_path,
            full.built_outputs["out"].out_path
        );
    }

    #[test]
    fn statuses() {
        for code in 0..15 {
            let status = BuildStatus::from_code(code).unwrap();
            assert_eq!(status.code(), code);
            assert_eq!(BuildStatus::from_name(status.name()), Some(status));
        }
        assert_eq!(BuildStatus::from_code(15), None);
        assert!(BuildStatus::ResolvesToAlreadyValid.is_success());
        assert!(!BuildStatus::TimedOut.is_success());
    }

    #[tokio::test]
    async fn bad_input() {
        let ctx = ctx(37);
        let mut w = WireWriter::new();
        w.put_u64(15);
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert!(matches!(
            BuildResult::read(&mut r, &ctx).await,
            Err(WireError::InvalidCode { value: 15, .. })
        ));

        let mut w = WireWriter::new();
        built().write(&mut w, &ctx);
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let mut r = WireReader::new(Cursor::new(bytes[..cut].to_vec()));
            assert!(
                BuildResult::read(&mut r, &ctx).await.unwrap_err().is_eof(),
                "cut {cut}"
            );
        }
        // isNonDeterministic is a strict bool.
        let mut bad = bytes.clone();
        let pos = 8 + 8 + 8; // status, empty message, timesBuilt
        bad[pos] = 2;
        let mut r = WireReader::new(Cursor::new(bad));
        assert!(matches!(
            BuildResult::read(&mut r, &ctx).await,
            Err(WireError::InvalidBool { .. })
        ));
    }
}
