//! Builds: from a client's BuildPaths to a registered output.
//!
//! * [`env`] computes the builder's environment and the files of its build directory from a
//!   derivation, as Nix does.

pub mod env;
