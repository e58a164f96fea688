//! `ward-proto`: everything ward speaks or parses.
//!
//! * Store formats: [`nix32`], [`hash`], [`store_path`], [`content_address`], [`nar`],
//!   [`derivation`], [`narinfo`], [`signature`], and the SQLite schema in [`db`].
//! * The Nix worker protocol: wire primitives in [`wire`], handshake, logger channel and every
//!   op's request and reply in [`worker`].
//! * ward's own IPC between its processes: [`ipc`].
//!
//! Nothing here runs as root in production except the small parts of [`ipc`] the broker uses
//! for framing; no parser in this crate trusts a length it read before checking it.
#![forbid(unsafe_code)]

pub mod binary_cache;
pub mod content_address;
pub mod db;
pub mod derivation;
pub mod gc_roots;
pub mod hash;
pub mod ipc;
pub mod nar;
pub mod narinfo;
pub use ward_ipc::nix32;
pub mod path_info;
pub mod signature;
pub mod store_path;
pub mod wire;
pub mod worker;
