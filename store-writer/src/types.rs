//! Path info and realisation types used until `proto::path_info` lands (branch `formats`).
//! TEMPORARY: replaced by re-exports of `ward_proto::path_info` once merged.

use std::collections::BTreeSet;

use ward_proto::content_address::ContentAddress;
use ward_proto::hash::Hash;
use ward_proto::store_path::StorePath;

/// Metadata of a valid store path, as in the `ValidPaths` and `Refs` tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    pub registration_time: i64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

/// A derivation output identified by the derivation's hash modulo and the output name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvOutput {
    pub drv_hash: Hash,
    pub output_name: String,
}

/// Which store path a derivation output was built to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    pub id: DrvOutput,
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
    pub dependent_realisations: Vec<(DrvOutput, StorePath)>,
}
