//! The frontend: the unprivileged process that speaks the Nix worker protocol to clients,
//! parses everything they send and makes every trust decision.
#![forbid(unsafe_code)]

pub mod auth;
pub mod blocking_io;
pub mod broker_client;
pub mod build;
pub mod busy_poll;
pub mod confine;
pub mod connection;
pub mod launch;
pub mod path_info_cache;
pub mod process;
pub mod roots;
pub mod server;
pub mod store;
pub mod substitute;
pub mod workers;
pub mod writer_client;
pub mod writer_watch;
