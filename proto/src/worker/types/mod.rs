//! Data structures shared by several ops (protocol-facts §3.2).

mod build_mode;
mod build_result;
mod content_address;
mod derivation;
mod derived_path;
mod export;
mod gc;
mod options;
mod path_info;
mod realisation;
mod substitutable;
mod trust;

pub use build_mode::BuildMode;
pub use build_result::{
    BuildResult, BuildResultLayout, BuildStatus, BuiltOutputsLayout, KeyedBuildResult,
};
pub use content_address::{read_ca, read_opt_ca, write_ca, write_opt_ca, CaMethodWithAlgo};
pub use derivation::{BasicDerivation, WireDerivationOutput};
pub use derived_path::{DerivedPath, OutputsSpec, SingleDerivedPath};
pub use export::{read_import_marker, write_import_marker, ExportTrailer, EXPORT_MAGIC};
pub use gc::{CollectGarbageRequest, GcAction, GcPaths, GcResult};
pub use options::{OverrideRejection, RejectedOverride, SetOptions};
pub use path_info::{UnkeyedValidPathInfo, ValidPathInfo};
pub use realisation::{DrvOutput, DrvOutputId, KeyedRealisation, Realisation, UnkeyedRealisation};
pub use substitutable::{MissingInfo, SubstitutablePathInfo};
pub use trust::TrustFlag;
