//! The Nix worker protocol: handshake, logger channel, and every op's request and reply.
//!
//! # How a daemon connection uses this module
//!
//! ```text
//! let mut r = WireReader::new(read_half);                 // bounded, buffered
//! let negotiated = ServerHandshake::default()
//!     .accept(&mut r, &mut write_half, &info).await?;       // §1.7 steps 1–9
//! let ctx = WireContext::with_features(store_dir, negotiated.version, negotiated.features);
//! send queued StderrMessages, then StderrMessage::Last     // end of the startup work phase
//! while let Some(op) = read_op(&mut r).await? {             // None = client closed cleanly
//!     let request = Request::read(op, &mut r, &ctx).await?; // every argument, no bulk data
//!     // -- the work phase starts: stderr messages may be sent from here on --
//!     match op.upload(ctx.version) {                        // bulk data, if any:
//!         Upload::Framed  => FramedReader::new(&mut r) ... .drain() even on error,
//!         Upload::Tunnel  => TunnelReader::new(&mut r, &mut write_half),
//!         Upload::BareNar => parse a NAR straight from `r`,
//!         Upload::None    => {}
//!     }
//!     StderrMessage::Last.write(&mut w, ctx.version);       // or StderrMessage::Error
//!     reply.write(&mut w, &ctx)?;                           // Reply::<op>(...)
//!     w.flush_to(&mut write_half).await?;
//! }
//! ```
//!
//! Every decoder returns [`WireError`](crate::wire::WireError) and stops at the first problem;
//! a request that failed to decode leaves the stream at an unknown position, so the daemon
//! must send one error and close the connection (protocol-facts §2.4).
//!
//! The client side (tests, test clients) uses [`client_negotiate`], [`client_finish`],
//! [`Request::write`], [`StderrMessage::read`] and [`Reply::read`].
//!
//! Path info and realisations are the shared types of [`crate::path_info`]; their wire codecs
//! are the `wire_read`/`wire_write` methods added in [`types`]. Everything else in [`types`]
//! has plain `read`/`write`.
//!
//! Known deliberate differences from the reference: requests are decoded in full before any
//! reply (the reference reads RegisterDrvOutput's and QueryRealisation's arguments inside the
//! work phase; clients cannot tell), unknown build modes and GC actions are refused instead of
//! cast, and decoders bound every length ([`crate::wire::Limits`]).

mod handshake;
mod logger;
mod ops;
mod replies;
mod requests;
pub mod types;
mod version;

pub use handshake::{
    client_finish, client_negotiate, ClientHandshakeInfo, ClientObsoleteFields, HandshakeError,
    Negotiated, ServerHandshake,
};
pub use logger::{
    ActivityResult, ActivityType, DaemonError, LogField, ResultType, StartActivity, StderrMessage,
    Verbosity, STDERR_ERROR, STDERR_LAST, STDERR_NEXT, STDERR_READ, STDERR_RESULT,
    STDERR_START_ACTIVITY, STDERR_STOP_ACTIVITY, STDERR_WRITE,
};
pub use ops::{read_op, Op, Upload};
pub use replies::{AddToStoreReply, GcRoot, RealisationReply, Reply};
pub use requests::*;
pub use version::{
    FeatureSet, ProtocolVersion, WireContext, DAEMON_FEATURES, FEATURE_ADD_TO_STORE_SCANNING,
    FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS, FEATURE_DISABLE_SET_OPTIONS,
    FEATURE_REALISATION_WITH_PATH_NOT_HASH, FEATURE_SUBMIT_OUTPUT, MIN_CLIENT_VERSION,
    MIN_DAEMON_VERSION, PROTOCOL_VERSION, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
