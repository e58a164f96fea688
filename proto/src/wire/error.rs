//! The error type of every wire decoder and of the few encoders that can fail.

use std::io;

use crate::content_address::CaError;
use crate::hash::HashError;
use crate::path_info::{DrvOutputError, JsonFormatError};
use crate::store_path::StorePathError;

/// What went wrong while reading (or, for a few unrepresentable values, writing) the worker
/// protocol. Every variant names the field at fault; messages are lowercase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The peer closed the connection in the middle of a value.
    #[error("unexpected end of input while reading {field}")]
    UnexpectedEof {
        /// The field being read.
        field: &'static str,
    },

    /// The transport failed.
    #[error("i/o error while reading {field}: {source}")]
    Io {
        /// The field being read.
        field: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An integer does not fit the type the reference implementation reads it into
    /// (protocol-facts §1.1). The message matches Nix's wording.
    #[error("serialised integer {value} is too large for type {ty} (in {field})")]
    IntegerTooLarge {
        /// The field being read.
        field: &'static str,
        /// The value received.
        value: u64,
        /// The C++ type the reference reads the field into.
        ty: &'static str,
    },

    /// A strict boolean was neither 0 nor 1.
    #[error("invalid boolean {value} in {field}: expected 0 or 1")]
    InvalidBool {
        /// The field being read.
        field: &'static str,
        /// The value received.
        value: u64,
    },

    /// A string is longer than the limit for its field. Checked before allocating.
    #[error("{field} is too long: {len} bytes, the limit is {max}")]
    StringTooLong {
        /// The field being read.
        field: &'static str,
        /// The length announced by the peer.
        len: u64,
        /// The limit that applies.
        max: usize,
    },

    /// The padding after a string was not all zero bytes.
    #[error("non-zero padding after {field}")]
    NonZeroPadding {
        /// The field being read.
        field: &'static str,
    },

    /// A field that must be text was not valid UTF-8.
    #[error("{field} is not valid utf-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },

    /// A list, set or map announced more elements than allowed. Checked before allocating.
    #[error("too many elements in {field}: {count}, the limit is {max}")]
    TooManyElements {
        /// The field being read.
        field: &'static str,
        /// The count announced by the peer.
        count: u64,
        /// The limit that applies.
        max: usize,
    },

    /// One message (an op's arguments, a reply, a stderr message) needs more memory than the
    /// per-message budget of [`Limits::max_message_bytes`](super::Limits::max_message_bytes).
    #[error("message too large: {field} exceeds the budget of {max} bytes per message")]
    MessageTooLarge {
        /// The field being read when the budget ran out.
        field: &'static str,
        /// The budget.
        max: usize,
    },

    /// A frame of the chunked transport is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced frame length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The client answered a `STDERR_READ` request with more bytes than were asked for.
    #[error("client sent {got} bytes in answer to a request for {wanted}")]
    TunnelOverrun {
        /// Bytes requested.
        wanted: u64,
        /// Bytes announced by the client.
        got: u64,
    },

    /// A numeric code that has no meaning for its field (an unknown enum value, tag, message
    /// type, magic number ...).
    #[error("invalid {field}: {value:#x}")]
    InvalidCode {
        /// The field being read.
        field: &'static str,
        /// The value received.
        value: u64,
    },

    /// A textual value failed to parse (a store path, hash, content address, derived path ...).
    #[error("invalid {field} '{value}': {reason}")]
    InvalidValue {
        /// The field being read.
        field: &'static str,
        /// The text received (possibly shortened for the message).
        value: String,
        /// Why it was refused.
        reason: String,
    },

    /// A store path (or store path base name) failed to parse.
    #[error("invalid store path in {field}: {source}")]
    InvalidStorePath {
        /// The field being read.
        field: &'static str,
        /// Why it was refused (names the path).
        #[source]
        source: StorePathError,
    },

    /// A hash failed to parse.
    #[error("invalid hash in {field}: {source}")]
    InvalidHash {
        /// The field being read.
        field: &'static str,
        /// Why it was refused (names the hash).
        #[source]
        source: HashError,
    },

    /// A content address or content-address method failed to parse.
    #[error("invalid content address in {field}: {source}")]
    InvalidContentAddress {
        /// The field being read.
        field: &'static str,
        /// Why it was refused (names the value).
        #[source]
        source: CaError,
    },

    /// A derivation output id (`sha256:…!out`) failed to parse.
    #[error("invalid derivation output id in {field}: {source}")]
    InvalidDrvOutput {
        /// The field being read.
        field: &'static str,
        /// Why it was refused (names the value).
        #[source]
        source: DrvOutputError,
    },

    /// A JSON document carried in a string (a realisation) failed to parse.
    #[error("invalid json in {field}: {source}")]
    InvalidJson {
        /// The field being read.
        field: &'static str,
        /// Why it was refused.
        #[source]
        source: JsonFormatError,
    },

    /// Nesting deeper than allowed (only recursive types such as `SingleDerivedPath`).
    #[error("{field} is nested more than {max} levels deep")]
    TooDeep {
        /// The field being read.
        field: &'static str,
        /// The limit.
        max: usize,
    },

    /// A value cannot be expressed at the negotiated protocol version (write side), or a layout
    /// that needs a protocol feature was used without it.
    #[error("{what} cannot be sent at protocol {version}: {reason}")]
    Unrepresentable {
        /// The value being written or read.
        what: &'static str,
        /// The negotiated version, printed as `major.minor`.
        version: String,
        /// Why.
        reason: &'static str,
    },
}

impl WireError {
    /// Builds the error for an I/O failure while reading `field`, turning a short read into
    /// [`WireError::UnexpectedEof`] and unwrapping a [`WireError`] carried inside an
    /// [`io::Error`] (as produced by the framed and tunnelled readers).
    pub(crate) fn from_io(field: &'static str, err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof && err.get_ref().is_none() {
            return WireError::UnexpectedEof { field };
        }
        match err.downcast::<WireError>() {
            Ok(inner) => inner,
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                WireError::UnexpectedEof { field }
            }
            Err(source) => WireError::Io { field, source },
        }
    }

    /// Builds an [`WireError::InvalidValue`], shortening the offending text so that an
    /// attacker-sized value does not end up in a log line whole.
    pub(crate) fn invalid_value(
        field: &'static str,
        value: &str,
        reason: impl std::fmt::Display,
    ) -> Self {
        WireError::InvalidValue {
            field,
            value: shorten(value),
            reason: reason.to_string(),
        }
    }

    /// True when the peer simply went away in the middle of a value.
    pub fn is_eof(&self) -> bool {
        matches!(self, WireError::UnexpectedEof { .. })
    }
}

impl From<WireError> for io::Error {
    fn from(err: WireError) -> Self {
        match err {
            WireError::Io { source, .. } => source,
            WireError::UnexpectedEof { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, err),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// At most this many characters of a refused value are quoted in an error message.
const QUOTE_LIMIT: usize = 200;

fn shorten(value: &str) -> String {
    if value.chars().count() <= QUOTE_LIMIT {
        return value.to_owned();
    }
    let mut out: String = value.chars().take(QUOTE_LIMIT).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_read_becomes_unexpected_eof() {
        let err = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            WireError::from_io("x", err),
            WireError::UnexpectedEof { field: "x" }
        ));
    }

    #[test]
    fn wire_error_survives_a_trip_through_io_error() {
        let inner = WireError::FrameTooLarge { len: 10, max: 5 };
        let io_err: io::Error = inner.into();
        assert_eq!(io_err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            WireError::from_io("frame", io_err),
            WireError::FrameTooLarge { len: 10, max: 5 }
        ));
    }

    #[test]
    fn eof_survives_a_trip_through_io_error() {
        let io_err: io::Error = WireError::UnexpectedEof { field: "inner" }.into();
        assert!(matches!(
            WireError::from_io("outer", io_err),
            WireError::UnexpectedEof { field: "inner" }
        ));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "a".repeat(1000);
        let err = WireError::invalid_value("store path", &long, "bad");
        let msg = err.to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.starts_with("invalid store path 'aaa"));
    }

    #[test]
    fn integer_message_matches_nix_wording() {
        let err = WireError::IntegerTooLarge {
            field: "op code",
            value: 1 << 40,
            ty: "unsigned int",
        };
        assert_eq!(
            err.to_string(),
            "serialised integer 1099511627776 is too large for type unsigned int (in op code)"
        );
    }
}
