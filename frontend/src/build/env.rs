//! The builder's environment and build-directory files (being written).
