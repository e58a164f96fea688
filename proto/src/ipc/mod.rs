//! ward's IPC between its own processes: everything in the `ward-ipc` crate (frames, fd
//! passing, the broker's and the builder's messages), plus the frontend⇄store-writer messages,
//! which name hashes, content addresses and path infos and so live beside those types.

pub use ward_ipc::*;

pub mod store_writer;

pub use store_writer::{FrontendToStoreWriter, StoreWriterToFrontend};

/// The frontend's end of its channel to the store-writer.
pub type FrontendStoreWriterChannel = AsyncChannel<FrontendToStoreWriter, StoreWriterToFrontend>;
/// The store-writer's end of its channel to the frontend.
pub type StoreWriterFrontendChannel = AsyncChannel<StoreWriterToFrontend, FrontendToStoreWriter>;
