//! Builds: from a client's BuildPaths to a registered output.
//!
//! * [`goal`] decides what to build and in which order, once for all clients;
//! * [`run`] runs one build through the broker and registers its outputs;
//! * [`env`] computes the builder's environment and the files of its build directory from a
//!   derivation, as Nix does.

pub mod env;
pub mod goal;
pub mod run;

pub use goal::{goal_for, BuildCtx, Builds, GoalResult, LogEvent};
