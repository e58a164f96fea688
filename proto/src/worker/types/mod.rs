//! Data structures shared by several ops (protocol-facts §3.2).
//!
//! Path info and realisations are the types of [`crate::path_info`] (re-exported here); this
//! module adds their wire codecs (`wire_read`/`wire_write` methods).

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

pub use crate::path_info::{
    DrvOutput, DrvPathOutput, PathRealisation, Realisation, UnkeyedPathInfo, UnkeyedRealisation,
    ValidPathInfo,
};
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
pub use path_info::FULL_PATH_INFO_VERSION;
pub use realisation::placeholder_drv_output;
pub use substitutable::{MissingInfo, SubstitutablePathInfo};
pub use trust::TrustFlag;
