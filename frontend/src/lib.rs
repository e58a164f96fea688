//! ward-frontend: the unprivileged process that speaks the Nix worker protocol to clients.
//! This library holds the parts the binaries share.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
