//! Caps on everything a peer can make us allocate.

/// Limits applied by [`WireReader`](super::WireReader) and the framed/tunnelled readers.
///
/// The reference daemon has no limits at all (a string may be `SIZE_MAX` bytes long). These
/// defaults are generous for every real client we know of while keeping what one connection can
/// make the daemon hold to well under a hundred megabytes:
///
/// | Limit | Default | Applies to |
/// |---|---|---|
/// | [`max_string`](Self::max_string) | 64 KiB | every ordinary string: store paths, names, hashes, content addresses, signatures, settings names and values, derived paths, realisation JSON, gc-root paths |
/// | [`max_text`](Self::max_text) | 16 MiB | fields that carry file-sized text: `AddTextToStore` contents, derivation `env` values and `args` in `BuildDerivation`, log and error text read by a client |
/// | [`max_collection_len`](Self::max_collection_len) | 2^20 | element count of any list, set or map |
/// | [`max_message_bytes`](Self::max_message_bytes) | 64 MiB | all strings (plus a fixed per-element overhead) of one message: an op's arguments, one reply, one stderr message |
/// | [`max_frame`](Self::max_frame) | 16 MiB | one chunk of the framed transport; nothing is allocated per chunk, this only rejects absurd headers |
/// | [`max_nesting`](Self::max_nesting) | 16 | depth of recursive values (`SingleDerivedPath`) |
///
/// Framed and tunnelled uploads (NARs, build logs) are streams and are not counted against
/// `max_message_bytes`; whoever consumes them applies their own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest ordinary string, in bytes.
    pub max_string: usize,
    /// Longest string in a field documented as "text", in bytes.
    pub max_text: usize,
    /// Most elements in one list, set or map.
    pub max_collection_len: usize,
    /// Memory budget of one message, in bytes.
    pub max_message_bytes: usize,
    /// Largest chunk of the framed transport, in bytes.
    pub max_frame: u64,
    /// Deepest nesting of recursive values.
    pub max_nesting: usize,
}

impl Limits {
    /// Bytes charged against the message budget for each element of a collection in addition to
    /// its string bytes: roughly what a `String`/`StorePath` costs on the heap and in its
    /// container.
    pub const ELEMENT_OVERHEAD: usize = 32;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string: 64 * 1024,
            max_text: 16 * 1024 * 1024,
            max_collection_len: 1 << 20,
            max_message_bytes: 64 * 1024 * 1024,
            max_frame: 16 * 1024 * 1024,
            max_nesting: 16,
        }
    }
}
