//! `ward-ipc`: ward's IPC between its own processes, and the little of the store-path rules
//! the root broker needs. The broker depends on this crate alone, so nothing here parses a
//! client's bytes. `ward_proto::ipc` re-exports all of it plus the store-writer messages.
//!
//! ```text
//!  frontend ──FrontendToStoreWriter──▶ store-writer      frontend ──FrontendToBroker──▶ broker
//!           ◀─StoreWriterToFrontend──                             ◀─BrokerToFrontend──
//!                                                          broker ──BrokerToBuilder──▶ builder
//!                                                                 ◀─BuilderToBroker──
//! ```
//!
//! * One enum per direction (the store-writer's in `ward_proto::ipc::store_writer`, [`broker`],
//!   [`builder`]): a process can only
//!   express the messages its side of a channel may send, and each variant documents who sends
//!   it, when, and what the receiver re-checks.
//! * Each message is one frame ([`frame`]): a `u32` little-endian length, then a 4-byte tag
//!   naming the enum ([`IpcMessage::TAG`]), then the bincode body. The length is checked against
//!   the channel's [`FrameLimit`] before anything is allocated for it.
//! * Bulk data (NARs, build logs) never goes through frames: pipes travel beside a frame as file
//!   descriptors ([`fdpass`], `SCM_RIGHTS`), and each message says exactly how many it carries
//!   ([`IpcMessage::fd_count`]); the receiver refuses a frame with any other number.
//! * Any [`IpcError`] on receive leaves the stream at an unknown position: the receiver must
//!   close the channel. A protocol violation by the less-privileged peer is never recovered
//!   from.

pub mod broker;
pub mod builder;
pub mod fdpass;
pub mod frame;
pub mod nix32;
pub mod store_path;

use std::io;
use std::marker::PhantomData;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use broker::{BrokerToFrontend, BrokerToStoreWriter, FrontendToBroker, StoreWriterToBroker};
pub use builder::{BrokerToBuilder, BuilderToBroker};
pub use frame::FrameLimit;

/// Version of the message enums in this module. Both ends of a channel exchange it in their
/// first frame (`Hello`) and refuse a peer built from another version, so a half-upgraded
/// installation fails loudly instead of misreading frames.
pub const IPC_VERSION: u32 = 3;

/// A message that may travel in a frame.
pub trait IpcMessage: Serialize + DeserializeOwned {
    /// Name of the enum, for error messages and logs.
    const NAME: &'static str;
    /// Four bytes at the start of every frame of this enum; a frame with another tag is refused
    /// before decoding, so a miswired socket cannot be read as the wrong direction.
    const TAG: [u8; 4];
    /// Exactly how many file descriptors travel beside this message.
    fn fd_count(&self) -> usize;
    /// The variant's name, for logs and `NotPermitted` errors (never the message's contents,
    /// which may be large or private).
    fn variant_name(&self) -> &'static str;
}

/// Where a channel is in its life; requests are only accepted in the phase their documentation
/// names, and a request in the wrong phase is a protocol violation that closes the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Before the peer's `Hello` has been accepted.
    Handshake,
    /// After the handshake: ordinary requests.
    Serving,
    /// After the peer announced that it is shutting down: only status requests.
    Draining,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "handshake",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        })
    }
}

/// Identifies one build for as long as the broker supervises it. Chosen by the frontend, unique
/// per frontend connection to the broker; the broker refuses a duplicate of a running build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BuildId(pub u64);

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "build {}", self.0)
    }
}

/// Why sending or receiving a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// A frame's announced or encoded length exceeds the channel's cap.
    #[error("ipc frame of {size} bytes exceeds the cap of {cap} bytes")]
    FrameTooLarge {
        /// The length announced by the peer, or of the encoded message.
        size: u64,
        /// The channel's cap.
        cap: u32,
    },
    /// A frame cap outside what [`FrameLimit`] allows.
    #[error("ipc frame cap of {requested} bytes is outside 1..={ceiling}")]
    InvalidFrameLimit {
        /// The cap asked for.
        requested: u64,
        /// The largest cap allowed.
        ceiling: u32,
    },
    /// The peer closed the channel in the middle of a frame.
    #[error("ipc frame truncated: peer closed after {received} of {expected} bytes")]
    Truncated {
        /// Bytes the frame needed (prefix included; just the prefix while it is incomplete).
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// The peer closed the channel between frames.
    #[error("ipc peer closed the channel")]
    PeerClosed,
    /// The frame's tag names another message enum.
    #[error("ipc frame for {expected} carries tag {found:?}, not {expected_tag:?}")]
    WrongTag {
        /// The enum expected.
        expected: &'static str,
        /// Its tag.
        expected_tag: [u8; 4],
        /// The tag received.
        found: [u8; 4],
    },
    /// The body is not a valid message of the expected enum.
    #[error("cannot decode {message} frame: {source}")]
    Decode {
        /// The enum expected.
        message: &'static str,
        /// What bincode (or a field's own parser) refused.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// The body decoded but bytes were left over.
    #[error("{message} frame has {unused} bytes after the message")]
    TrailingBytes {
        /// The enum decoded.
        message: &'static str,
        /// Bytes left over.
        unused: usize,
    },
    /// A message could not be encoded.
    #[error("cannot encode {message} frame: {source}")]
    Encode {
        /// The enum being encoded.
        message: &'static str,
        /// What bincode refused.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A message arrived (or was about to be sent) with the wrong number of file descriptors.
    #[error("{message}::{variant} carries {expected} file descriptors, but {actual} came with it")]
    FdCountMismatch {
        /// The enum.
        message: &'static str,
        /// The variant.
        variant: &'static str,
        /// How many the variant carries.
        expected: usize,
        /// How many there were.
        actual: usize,
    },
    /// More file descriptors than one frame may carry.
    #[error("ipc frame carries {count} file descriptors, more than the {max} allowed")]
    TooManyFds {
        /// How many were sent or received (at least).
        count: usize,
        /// The bound, [`fdpass::MAX_FDS_PER_FRAME`].
        max: usize,
    },
    /// The kernel truncated the control data (`MSG_CTRUNC`): the peer sent more descriptors
    /// than fit the receive buffer; the ones that arrived have been closed.
    #[error("ipc control data truncated (MSG_CTRUNC): peer sent more than {max} file descriptors")]
    ControlTruncated {
        /// The bound, [`fdpass::MAX_FDS_PER_FRAME`].
        max: usize,
    },
    /// A control message other than `SCM_RIGHTS` arrived.
    #[error("ipc frame came with an unexpected control message (not SCM_RIGHTS)")]
    UnexpectedControlMessage,
    /// Any other I/O error on the channel.
    #[error("ipc i/o error: {0}")]
    Io(#[from] io::Error),
}

/// A message together with the file descriptors that came beside it (exactly
/// [`IpcMessage::fd_count`] of them, opened close-on-exec).
#[derive(Debug)]
pub struct Received<M> {
    /// The message.
    pub message: M,
    /// The descriptors, in the order the sender listed them.
    pub fds: Vec<OwnedFd>,
}

/// One end of a blocking channel: sends `Out`, receives `In`. Used by the broker and the
/// builder (no tokio there) and by tests.
#[derive(Debug)]
pub struct Channel<Out, In> {
    socket: UnixStream,
    limit: FrameLimit,
    directions: PhantomData<fn(Out) -> In>,
}

impl<Out: IpcMessage, In: IpcMessage> Channel<Out, In> {
    /// Wraps a connected unix stream socket, which must be in blocking mode (a non-blocking
    /// one makes `send` and `recv` fail with `WouldBlock` I/O errors).
    pub fn new(socket: UnixStream, limit: FrameLimit) -> Self {
        Channel {
            socket,
            limit,
            directions: PhantomData,
        }
    }

    /// A connected pair: this end and the peer's.
    pub fn pair(limit: FrameLimit) -> io::Result<(Self, Channel<In, Out>)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel::new(a, limit), Channel::new(b, limit)))
    }

    /// Sends `message` with `fds` beside it; `fds.len()` must equal `message.fd_count()`.
    pub fn send(&self, message: &Out, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        fdpass::send_frame_with_fds(&self.socket, message, fds, self.limit)
    }

    /// Receives the next message and its descriptors. Blocks until a whole frame arrived.
    pub fn recv(&self) -> Result<Received<In>, IpcError> {
        fdpass::recv_frame_with_fds(&self.socket, self.limit)
    }

    /// The socket, e.g. to read the peer's credentials.
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// The frame cap of this channel.
    pub fn limit(&self) -> FrameLimit {
        self.limit
    }

    /// Gives the socket back.
    pub fn into_socket(self) -> UnixStream {
        self.socket
    }
}

#[cfg(feature = "async")]
/// One end of a tokio channel: sends `Out`, receives `In`. Used by the frontend and the
/// store-writer. Sending and receiving take `&self`: one task may wait for replies while others
/// send, and concurrent senders (or receivers) take turns frame by frame.
///
/// Neither future is cancel-safe: dropping one in the middle of a frame leaves the stream at an
/// unknown position, and the channel must then be closed.
#[derive(Debug)]
pub struct AsyncChannel<Out, In> {
    socket: tokio::net::UnixStream,
    limit: FrameLimit,
    send_turn: tokio::sync::Mutex<()>,
    recv_turn: tokio::sync::Mutex<()>,
    directions: PhantomData<fn(Out) -> In>,
}

#[cfg(feature = "async")]
impl<Out: IpcMessage, In: IpcMessage> AsyncChannel<Out, In> {
    /// Wraps a connected tokio unix stream socket.
    pub fn new(socket: tokio::net::UnixStream, limit: FrameLimit) -> Self {
        AsyncChannel {
            socket,
            limit,
            send_turn: tokio::sync::Mutex::new(()),
            recv_turn: tokio::sync::Mutex::new(()),
            directions: PhantomData,
        }
    }

    /// Wraps a connected std socket (e.g. inherited from the broker); must be called inside a
    /// tokio runtime.
    pub fn from_std(socket: UnixStream, limit: FrameLimit) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(AsyncChannel::new(
            tokio::net::UnixStream::from_std(socket)?,
            limit,
        ))
    }

    /// A connected pair: this end and the peer's; must be called inside a tokio runtime.
    pub fn pair(limit: FrameLimit) -> io::Result<(Self, AsyncChannel<In, Out>)> {
        let (a, b) = tokio::net::UnixStream::pair()?;
        Ok((AsyncChannel::new(a, limit), AsyncChannel::new(b, limit)))
    }

    /// Sends `message` with `fds` beside it; `fds.len()` must equal `message.fd_count()`.
    pub async fn send(&self, message: &Out, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        let _turn = self.send_turn.lock().await;
        fdpass::send_frame_with_fds_async(&self.socket, message, fds, self.limit).await
    }

    /// Receives the next message and its descriptors.
    pub async fn recv(&self) -> Result<Received<In>, IpcError> {
        let _turn = self.recv_turn.lock().await;
        fdpass::recv_frame_with_fds_async(&self.socket, self.limit).await
    }

    /// The socket, e.g. to read the peer's credentials.
    pub fn socket(&self) -> &tokio::net::UnixStream {
        &self.socket
    }

    /// The frame cap of this channel.
    pub fn limit(&self) -> FrameLimit {
        self.limit
    }
}

#[cfg(feature = "async")]
/// The frontend's end of its channel to the broker.
pub type FrontendBrokerChannel = AsyncChannel<FrontendToBroker, BrokerToFrontend>;
/// The broker's end of its channel to the frontend (blocking: the broker has no tokio).
pub type BrokerFrontendChannel = Channel<BrokerToFrontend, FrontendToBroker>;
/// The broker's end of its channel to the store-writer.
pub type BrokerStoreWriterChannel = Channel<BrokerToStoreWriter, StoreWriterToBroker>;
/// The store-writer's end of its channel to the broker.
pub type StoreWriterBrokerChannel = Channel<StoreWriterToBroker, BrokerToStoreWriter>;
/// The broker's end of its channel to one builder.
pub type BrokerBuilderChannel = Channel<BrokerToBuilder, BuilderToBroker>;
/// A builder's end of its channel to the broker.
pub type BuilderBrokerChannel = Channel<BuilderToBroker, BrokerToBuilder>;
