//! `ward_store`: the store-writer's library, the only code in ward that writes the Nix store
//! directory and its database.
//!
//! * [`layout`]: where a store keeps its files, and creating the tree Nix creates.
//! * [`lock`]: per-path and big locks with Nix's `flock` semantics.
//! * [`store`]: an open store (layout, database, staging directory) and crash recovery.
//! * [`add`]: adding paths atomically from a NAR stream or from raw content.
//! * [`build_outputs`]: registering the outputs of a finished build, read from NAR pipes.
//! * [`refscan`]: finding references (hash parts of candidate paths) in a stream.
//! * [`db`]: the SQLite database, opened and written as Nix 2.8 does.
//! * [`fsutil`]: descriptor-based tree walks (canonicalise, remove) that never follow symlinks.
#![forbid(unsafe_code)]

pub use add::{AddError, AddOptions, AddOutcome, ContentAddition, PathAddition, StagedAddition};
pub use store::{Store, StoreError};

pub mod add;
pub mod audit;
pub mod build_outputs;
pub mod db;
pub mod fsutil;
pub mod gc;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod optimise;
pub mod refscan;
#[cfg(target_os = "linux")]
pub mod seccomp_abi;
#[cfg(target_os = "linux")]
pub mod seccomp_allow;
pub mod store;
pub mod sync_behind;
pub mod verify;

#[cfg(test)]
mod test_support;
