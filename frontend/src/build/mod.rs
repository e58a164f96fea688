//! Builds: from a client's BuildPaths to a registered output.
//!
//! * [`goal`] decides what to build and in which order, once for all clients;
//! * [`substitution`] fetches one path from a binary cache instead of building it;
//! * [`run`] runs one build through the broker and registers its outputs;
//! * [`keeper`] holds the goals' temporary roots on one store-writer channel;
//! * [`hook`] runs the daemon's `post-build-hook` after a build, through the broker;
//! * [`env`] computes the builder's environment and the files of its build directory from a
//!   derivation, as Nix does.

pub mod env;
pub mod goal;
pub mod hook;
pub mod keeper;
pub mod missing;
pub mod run;
pub mod substitution;

pub use goal::{goal_for, repair_for, substitution_for, BuildCtx, Builds, GoalResult, LogEvent};
