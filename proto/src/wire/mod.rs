//! Wire primitives of the Nix worker protocol.
//!
//! Everything on the wire is built from three things (protocol-facts §1):
//!
//! * `u64`: eight bytes, little-endian;
//! * byte strings: a `u64` length, the bytes, then zero padding to a multiple of eight;
//! * collections: a `u64` count, then the elements.
//!
//! This module has the pieces every op is made of:
//!
//! * [`WireReader`]: a buffered async reader. Every length and count it reads is checked
//!   against [`Limits`] *before* memory is allocated, and every message has a total byte budget,
//!   so a hostile client costs bounded memory.
//! * [`WireWriter`]: a synchronous encoder into a `Vec<u8>`. The daemon builds a whole reply (or
//!   stderr message) in memory and then flushes it to the socket with [`WireWriter::flush_to`].
//! * [`FramedReader`] / [`FramedWriter`]: the chunked transport used for uploads (§1.4).
//! * [`TunnelReader`]: the old `STDERR_READ` upload path (§1.5).
//!
//! Errors are [`WireError`]; each names the field being read.

mod error;
mod framed;
mod limits;
mod reader;
mod tunnel;
mod writer;

pub use error::WireError;
pub use framed::{put_framed, FramedReader, FramedWriter, DEFAULT_FRAME_CHUNK};
pub use limits::Limits;
pub use reader::WireReader;
pub(crate) use reader::PREALLOC_CAP;
pub use tunnel::{TunnelReader, DEFAULT_TUNNEL_REQUEST, STDERR_READ};
pub use writer::WireWriter;

/// Number of zero bytes that follow a string of `len` bytes.
pub(crate) const fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

#[cfg(test)]
mod tests {
    use super::padding_len;

    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 7);
        assert_eq!(padding_len(7), 1);
        assert_eq!(padding_len(8), 0);
        assert_eq!(padding_len(9), 7);
        assert_eq!(padding_len(u64::MAX), 1);
    }
}
