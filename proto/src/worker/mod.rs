//! The Nix worker protocol (in progress).
