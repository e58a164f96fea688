//! [`WireReader`]: buffered, bounded decoding of wire primitives.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use super::{padding_len, Limits, WireError};
use crate::store_path::{StoreDir, StorePath};

/// Buffered reader of worker-protocol primitives.
///
/// * Every method takes the name of the field it reads; errors carry it.
/// * Lengths and counts are checked against [`Limits`] before anything is allocated.
/// * All strings read between two calls of [`begin_message`](Self::begin_message) share one
///   budget ([`Limits::max_message_bytes`]). The typed readers of [`crate::worker`] (requests,
///   replies, stderr messages, handshake) call it themselves; code that reads primitives
///   directly in a loop must call it once per logical message.
///
/// `WireReader` is also an [`AsyncRead`] (and [`AsyncBufRead`]) over the raw bytes, so that
/// unframed payloads (a bare NAR after `NarFromPath`, for instance) can be read through the same
/// buffer.
#[derive(Debug)]
pub struct WireReader<R> {
    inner: BufReader<R>,
    limits: Limits,
    used: usize,
}

impl<R: AsyncRead + Unpin> WireReader<R> {
    /// Wraps `inner` with the default [`Limits`].
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    /// Wraps `inner` with the given limits.
    pub fn with_limits(inner: R, limits: Limits) -> Self {
        WireReader {
            inner: BufReader::new(inner),
            limits,
            used: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts a new message: resets the per-message memory budget.
    pub fn begin_message(&mut self) {
        self.used = 0;
    }

    /// Bytes of the current message's budget used so far.
    pub fn budget_used(&self) -> usize {
        self.used
    }

    /// The wrapped reader. Bytes already buffered are not visible through it.
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }

    /// The wrapped reader, mutably. Reading from it directly skips buffered bytes.
    pub fn get_mut(&mut self) -> &mut R {
        self.inner.get_mut()
    }

    /// Bytes read from the transport but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        self.inner.buffer()
    }

    /// Unwraps the reader, dropping any buffered bytes.
    pub fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// Charges `bytes` against the message budget.
    pub fn charge(&mut self, field: &'static str, bytes: usize) -> Result<(), WireError> {
        let max = self.limits.max_message_bytes;
        match self.used.checked_add(bytes) {
            Some(total) if total <= max => {
                self.used = total;
                Ok(())
            }
            _ => Err(WireError::MessageTooLarge { field, max }),
        }
    }

    async fn fill_exact(&mut self, field: &'static str, buf: &mut [u8]) -> Result<(), WireError> {
        self.inner
            .read_exact(buf)
            .await
            .map(|_| ())
            .map_err(|e| WireError::from_io(field, e))
    }

    /// Reads a `u64`.
    pub async fn read_u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let mut buf = [0u8; 8];
        self.fill_exact(field, &mut buf).await?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Reads a `u64`, or returns `None` if the stream ends cleanly before its first byte.
    /// This is how the daemon waits for the next op: end of file there is a normal close, end of
    /// file inside the number is an error.
    pub async fn read_u64_or_eof(&mut self, field: &'static str) -> Result<Option<u64>, WireError> {
        let available = self
            .inner
            .fill_buf()
            .await
            .map_err(|e| WireError::from_io(field, e))?;
        if available.is_empty() {
            return Ok(None);
        }
        self.read_u64(field).await.map(Some)
    }

    /// Reads a `u64` that the reference reads as `unsigned int`: values of 2^32 and above are
    /// refused as Nix does.
    pub async fn read_u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let value = self.read_u64(field).await?;
        u32::try_from(value).map_err(|_| WireError::IntegerTooLarge {
            field,
            value,
            ty: "unsigned int",
        })
    }

    /// Reads a `u64` that the reference reads as `uint8_t` (tags, status codes in current Nix).
    pub async fn read_u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        let value = self.read_u64(field).await?;
        u8::try_from(value).map_err(|_| WireError::IntegerTooLarge {
            field,
            value,
            ty: "uint8_t",
        })
    }

    /// Reads a `u64` that the reference reads as a signed 64-bit number (`time_t`, durations).
    /// Values above `i64::MAX` are refused; the value is returned as `u64` since negative values
    /// cannot be sent.
    pub async fn read_i64_nonneg(&mut self, field: &'static str) -> Result<u64, WireError> {
        let value = self.read_u64(field).await?;
        if value > i64::MAX as u64 {
            return Err(WireError::IntegerTooLarge {
                field,
                value,
                ty: "int64_t",
            });
        }
        Ok(value)
    }

    /// Reads a `u64` into a `usize` (`size_t` in the reference).
    pub async fn read_usize(&mut self, field: &'static str) -> Result<usize, WireError> {
        let value = self.read_u64(field).await?;
        usize::try_from(value).map_err(|_| WireError::IntegerTooLarge {
            field,
            value,
            ty: "size_t",
        })
    }

    /// Reads a boolean leniently: any non-zero value is true. Used where the reference reads an
    /// integer and tests it (protocol-facts §1.1).
    pub async fn read_bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        Ok(self.read_u64(field).await? != 0)
    }

    /// Reads a boolean strictly: only 0 and 1 are accepted, as where the reference reads a typed
    /// `bool`.
    pub async fn read_bool_strict(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.read_u64(field).await? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::InvalidBool { field, value }),
        }
    }

    /// Reads a string of at most `max` bytes as raw bytes. The length is checked before
    /// allocating and charged against the message budget; the padding must be zero.
    pub async fn read_bytes_max(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Vec<u8>, WireError> {
        let len = self.read_u64(field).await?;
        let len_usize = match usize::try_from(len) {
            Ok(n) if n <= max => n,
            _ => return Err(WireError::StringTooLong { field, len, max }),
        };
        self.charge(field, len_usize)?;
        let mut data = vec![0u8; len_usize];
        self.fill_exact(field, &mut data).await?;
        self.read_padding(field, len).await?;
        Ok(data)
    }

    /// Reads and checks the zero padding after a string (or anything else) of `len` bytes.
    pub async fn read_padding(&mut self, field: &'static str, len: u64) -> Result<(), WireError> {
        let pad = padding_len(len);
        if pad == 0 {
            return Ok(());
        }
        let mut buf = [0u8; 8];
        self.fill_exact(field, &mut buf[..pad]).await?;
        if buf[..pad].iter().any(|&b| b != 0) {
            return Err(WireError::NonZeroPadding { field });
        }
        Ok(())
    }

    /// Reads an ordinary string as raw bytes ([`Limits::max_string`]).
    pub async fn read_bytes(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let max = self.limits.max_string;
        self.read_bytes_max(field, max).await
    }

    /// Reads a text field as raw bytes ([`Limits::max_text`]).
    pub async fn read_text_bytes(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let max = self.limits.max_text;
        self.read_bytes_max(field, max).await
    }

    /// Reads an ordinary string that must be UTF-8 ([`Limits::max_string`]).
    pub async fn read_string(&mut self, field: &'static str) -> Result<String, WireError> {
        let bytes = self.read_bytes(field).await?;
        String::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { field })
    }

    /// Reads a text field that must be UTF-8 ([`Limits::max_text`]).
    pub async fn read_text(&mut self, field: &'static str) -> Result<String, WireError> {
        let bytes = self.read_text_bytes(field).await?;
        String::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { field })
    }

    /// Reads a string that must be UTF-8, with an explicit length limit.
    pub async fn read_string_max(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<String, WireError> {
        let bytes = self.read_bytes_max(field, max).await?;
        String::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8 { field })
    }

    /// Reads the count of a list, set or map and checks it against
    /// [`Limits::max_collection_len`]; charges a fixed overhead per element against the message
    /// budget.
    pub async fn read_count(&mut self, field: &'static str) -> Result<usize, WireError> {
        let count = self.read_u64(field).await?;
        let max = self.limits.max_collection_len;
        let n = match usize::try_from(count) {
            Ok(n) if n <= max => n,
            _ => return Err(WireError::TooManyElements { field, count, max }),
        };
        self.charge(field, n.saturating_mul(Limits::ELEMENT_OVERHEAD))?;
        Ok(n)
    }

    /// Reads a `list<str>` of ordinary strings.
    pub async fn read_string_list(
        &mut self,
        field: &'static str,
    ) -> Result<Vec<String>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = Vec::with_capacity(n.min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(self.read_string(field).await?);
        }
        Ok(out)
    }

    /// Reads a `list<str>` of text fields ([`Limits::max_text`] each).
    pub async fn read_text_list(&mut self, field: &'static str) -> Result<Vec<String>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = Vec::with_capacity(n.min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(self.read_text(field).await?);
        }
        Ok(out)
    }

    /// Reads a `set<str>` of ordinary strings; duplicates collapse.
    pub async fn read_string_set(
        &mut self,
        field: &'static str,
    ) -> Result<BTreeSet<String>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.read_string(field).await?);
        }
        Ok(out)
    }

    /// Reads a `map<str, str>` of ordinary strings. As in the reference's generic map reader,
    /// the last value of a duplicate key wins.
    pub async fn read_string_map(
        &mut self,
        field: &'static str,
    ) -> Result<BTreeMap<String, String>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = self.read_string(field).await?;
            let value = self.read_string(field).await?;
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Reads a full store path (`/nix/store/<hash>-<name>`) that must lie in `store_dir`.
    pub async fn read_path(
        &mut self,
        field: &'static str,
        store_dir: &StoreDir,
    ) -> Result<StorePath, WireError> {
        let text = self.read_string(field).await?;
        store_dir
            .parse_path(&text)
            .map_err(|source| WireError::InvalidStorePath { field, source })
    }

    /// Reads an optional store path: the empty string is none.
    pub async fn read_opt_path(
        &mut self,
        field: &'static str,
        store_dir: &StoreDir,
    ) -> Result<Option<StorePath>, WireError> {
        let text = self.read_string(field).await?;
        if text.is_empty() {
            return Ok(None);
        }
        store_dir
            .parse_path(&text)
            .map(Some)
            .map_err(|source| WireError::InvalidStorePath { field, source })
    }

    /// Reads a store path base name (`<hash>-<name>`, no directory), as in `AddBuildLog`.
    pub async fn read_base_name(&mut self, field: &'static str) -> Result<StorePath, WireError> {
        let text = self.read_string(field).await?;
        StorePath::from_base_name(&text)
            .map_err(|source| WireError::InvalidStorePath { field, source })
    }

    /// Reads a `set<path>`; duplicates collapse.
    pub async fn read_path_set(
        &mut self,
        field: &'static str,
        store_dir: &StoreDir,
    ) -> Result<BTreeSet<StorePath>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.read_path(field, store_dir).await?);
        }
        Ok(out)
    }

    /// Reads a `list<path>`, keeping order and duplicates.
    pub async fn read_path_list(
        &mut self,
        field: &'static str,
        store_dir: &StoreDir,
    ) -> Result<Vec<StorePath>, WireError> {
        let n = self.read_count(field).await?;
        let mut out = Vec::with_capacity(n.min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(self.read_path(field, store_dir).await?);
        }
        Ok(out)
    }

    /// Reads the `u64` tag of a tagged optional (current Nix): 0 = none, 1 = some.
    pub async fn read_option_tag(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.read_u8(field).await? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::InvalidCode {
                field,
                value: u64::from(other),
            }),
        }
    }
}

/// Collections never preallocate more than this many elements up front: the count comes from
/// the peer, the elements may never arrive.
pub(crate) const PREALLOC_CAP: usize = 1024;

impl<R: AsyncRead + Unpin> AsyncRead for WireReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for WireReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.inner).consume(amt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireWriter;

    fn reader(bytes: Vec<u8>) -> WireReader<std::io::Cursor<Vec<u8>>> {
        WireReader::new(std::io::Cursor::new(bytes))
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[tokio::test]
    async fn reads_u64_little_endian() {
        let mut r = reader(vec![1, 2, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(r.read_u64("n").await.unwrap(), 0x8000_0000_0000_0201);
    }

    #[tokio::test]
    async fn clean_eof_before_a_number_is_none() {
        let mut r = reader(vec![]);
        assert!(r.read_u64_or_eof("op").await.unwrap().is_none());
        let mut r = reader(vec![1, 2, 3]);
        assert!(r.read_u64_or_eof("op").await.unwrap_err().is_eof());
        let mut r = reader(u64s(&[19]));
        assert_eq!(r.read_u64_or_eof("op").await.unwrap(), Some(19));
    }

    #[tokio::test]
    async fn range_checked_integers() {
        let mut r = reader(u64s(&[u32::MAX as u64, 1 << 32]));
        assert_eq!(r.read_u32("a").await.unwrap(), u32::MAX);
        let err = r.read_u32("b").await.unwrap_err();
        assert!(matches!(
            err,
            WireError::IntegerTooLarge {
                field: "b",
                ty: "unsigned int",
                ..
            }
        ));

        let mut r = reader(u64s(&[255, 256]));
        assert_eq!(r.read_u8("t").await.unwrap(), 255);
        assert!(matches!(
            r.read_u8("t").await,
            Err(WireError::IntegerTooLarge { .. })
        ));

        let mut r = reader(u64s(&[i64::MAX as u64, i64::MAX as u64 + 1]));
        assert_eq!(r.read_i64_nonneg("time").await.unwrap(), i64::MAX as u64);
        assert!(matches!(
            r.read_i64_nonneg("time").await,
            Err(WireError::IntegerTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn booleans_lenient_and_strict() {
        let mut r = reader(u64s(&[0, 1, 2, 0, 1, 2]));
        assert!(!r.read_bool("a").await.unwrap());
        assert!(r.read_bool("a").await.unwrap());
        assert!(r.read_bool("a").await.unwrap());
        assert!(!r.read_bool_strict("b").await.unwrap());
        assert!(r.read_bool_strict("b").await.unwrap());
        assert!(matches!(
            r.read_bool_strict("b").await,
            Err(WireError::InvalidBool {
                field: "b",
                value: 2
            })
        ));
    }

    #[tokio::test]
    async fn strings_with_padding() {
        let mut w = WireWriter::new();
        w.put_str("");
        w.put_str("hi");
        w.put_str("12345678");
        w.put_bytes(b"\x00\xff");
        let mut r = reader(w.into_bytes());
        assert_eq!(r.read_string("s").await.unwrap(), "");
        assert_eq!(r.read_string("s").await.unwrap(), "hi");
        assert_eq!(r.read_string("s").await.unwrap(), "12345678");
        assert_eq!(r.read_bytes("b").await.unwrap(), vec![0, 0xff]);
    }

    #[tokio::test]
    async fn non_zero_padding_is_refused() {
        let mut bytes = u64s(&[1]);
        bytes.extend_from_slice(&[b'a', 0, 0, 0, 0, 0, 1, 0]);
        let mut r = reader(bytes);
        assert!(matches!(
            r.read_string("s").await,
            Err(WireError::NonZeroPadding { field: "s" })
        ));
    }

    #[tokio::test]
    async fn invalid_utf8_is_refused_where_text_is_expected() {
        let mut w = WireWriter::new();
        w.put_bytes(b"\xff\xfe");
        let bytes = w.into_bytes();
        let mut r = reader(bytes.clone());
        assert!(matches!(
            r.read_string("name").await,
            Err(WireError::InvalidUtf8 { field: "name" })
        ));
        let mut r = reader(bytes);
        assert_eq!(r.read_bytes("raw").await.unwrap(), vec![0xff, 0xfe]);
    }

    #[tokio::test]
    async fn huge_lengths_fail_before_allocating() {
        for len in [u64::MAX, u64::MAX - 7, 1 << 63, (64 * 1024) + 1] {
            let mut r = reader(u64s(&[len]));
            match r.read_string("s").await {
                Err(WireError::StringTooLong { len: got, max, .. }) => {
                    assert_eq!(got, len);
                    assert_eq!(max, 64 * 1024);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn huge_counts_fail_before_allocating() {
        for count in [u64::MAX, 1 << 32, (1 << 20) + 1] {
            let mut r = reader(u64s(&[count]));
            assert!(matches!(
                r.read_string_list("l").await,
                Err(WireError::TooManyElements { .. })
            ));
        }
    }

    #[tokio::test]
    async fn message_budget_bounds_total_bytes() {
        let limits = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        let mut w = WireWriter::new();
        for _ in 0..3 {
            w.put_str(&"x".repeat(40));
        }
        let bytes = w.into_bytes();
        let mut r = WireReader::with_limits(std::io::Cursor::new(bytes.clone()), limits.clone());
        r.read_string("a").await.unwrap();
        r.read_string("b").await.unwrap();
        assert!(matches!(
            r.read_string("c").await,
            Err(WireError::MessageTooLarge { field: "c", .. })
        ));

        let mut r = WireReader::with_limits(std::io::Cursor::new(bytes), limits);
        for _ in 0..3 {
            r.begin_message();
            r.read_string("a").await.unwrap();
        }
    }

    #[tokio::test]
    async fn collection_overhead_is_charged() {
        let limits = Limits {
            max_message_bytes: 10 * Limits::ELEMENT_OVERHEAD,
            ..Limits::default()
        };
        let mut r = WireReader::with_limits(std::io::Cursor::new(u64s(&[11])), limits);
        assert!(matches!(
            r.read_string_list("l").await,
            Err(WireError::MessageTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn sets_collapse_duplicates_and_maps_keep_the_last_value() {
        let mut w = WireWriter::new();
        w.put_u64(3);
        for s in ["b", "a", "b"] {
            w.put_str(s);
        }
        w.put_u64(2);
        for s in ["k", "1", "k", "2"] {
            w.put_str(s);
        }
        let mut r = reader(w.into_bytes());
        let set = r.read_string_set("set").await.unwrap();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        let map = r.read_string_map("map").await.unwrap();
        assert_eq!(map.get("k").map(String::as_str), Some("2"));
        assert_eq!(map.len(), 1);
    }

    #[tokio::test]
    async fn truncated_string_is_eof_not_panic() {
        let mut w = WireWriter::new();
        w.put_str("hello world");
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let mut r = reader(bytes[..cut].to_vec());
            let err = r.read_string("s").await.unwrap_err();
            assert!(err.is_eof(), "cut {cut}: {err:?}");
        }
    }

    #[tokio::test]
    async fn option_tags() {
        let mut r = reader(u64s(&[0, 1, 2]));
        assert!(!r.read_option_tag("o").await.unwrap());
        assert!(r.read_option_tag("o").await.unwrap());
        assert!(matches!(
            r.read_option_tag("o").await,
            Err(WireError::InvalidCode { value: 2, .. })
        ));
    }
}
