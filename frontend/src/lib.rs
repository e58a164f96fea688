//! The frontend: the unprivileged process that speaks the Nix worker protocol to clients,
//! parses everything they send and makes every trust decision.
#![forbid(unsafe_code)]

pub mod auth;
pub mod launch;
