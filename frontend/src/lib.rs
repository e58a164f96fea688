//! The frontend: the unprivileged process that speaks the Nix worker protocol to clients,
//! parses everything they send and makes every trust decision.
// No unsafe code, except the FFI call that takes launchd's socket on macOS (`launchd.rs`).
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod blocking_io;
pub mod broker_client;
pub mod build;
pub mod busy_poll;
pub mod confine;
pub mod connection;
pub mod launch;
pub mod launchd;
pub mod limits;
pub mod path_info_cache;
pub mod process;
pub mod roots;
pub mod server;
pub mod signals;
pub mod store;
pub mod substitute;
pub mod workers;
pub mod writer_client;
pub mod writer_watch;
