//! `ward_store`: the store-writer's library, the only code in ward that writes the Nix store
//! directory and its database.
//!
//! * [`layout`]: where a store keeps its files, and creating the tree Nix creates.
//! * [`lock`]: per-path and big locks with Nix's `flock` semantics.
//! * [`fsutil`]: descriptor-based tree walks (canonicalise, remove) that never follow symlinks.
#![forbid(unsafe_code)]

pub mod fsutil;
pub mod layout;
pub mod lock;
mod types;
