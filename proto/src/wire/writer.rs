//! [`WireWriter`]: synchronous encoding into memory.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::padding_len;
use crate::store_path::{StoreDir, StorePath};

/// Encoder of worker-protocol primitives into a growable buffer.
///
/// Encoding cannot fail and never blocks; the daemon encodes a whole stderr message or reply and
/// then sends it with [`flush_to`](Self::flush_to). Booleans are always written as 0 or 1.
#[derive(Debug, Default, Clone)]
pub struct WireWriter {
    buf: Vec<u8>,
}

impl WireWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes encoded so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing has been encoded.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the encoded bytes, leaving the writer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Consumes the writer, returning the encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Discards everything encoded so far (e.g. a half-built reply after an error).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Writes a `u64`.
    pub fn put_u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// Writes a boolean as 0 or 1.
    pub fn put_bool(&mut self, value: bool) {
        self.put_u64(u64::from(value));
    }

    /// Appends raw bytes with no length and no padding (frame payloads, NAR data).
    pub fn put_raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Writes a byte string: length, bytes, zero padding.
    pub fn put_bytes(&mut self, data: &[u8]) {
        self.put_u64(data.len() as u64);
        self.buf.extend_from_slice(data);
        let padded = self.buf.len() + padding_len(data.len() as u64);
        self.buf.resize(padded, 0);
    }

    /// Writes a string.
    pub fn put_str(&mut self, s: &str) {
        self.put_bytes(s.as_bytes());
    }

    /// Writes a `list<str>` (or `set<str>`: pass the elements in order).
    pub fn put_strings<I, S>(&mut self, items: I)
    where
        I: IntoIterator<Item = S>,
        I::IntoIter: ExactSizeIterator,
        S: AsRef<[u8]>,
    {
        let items = items.into_iter();
        self.put_u64(items.len() as u64);
        for item in items {
            self.put_bytes(item.as_ref());
        }
    }

    /// Writes a `map<str, str>`.
    pub fn put_string_map<I, K, V>(&mut self, items: I)
    where
        I: IntoIterator<Item = (K, V)>,
        I::IntoIter: ExactSizeIterator,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let items = items.into_iter();
        self.put_u64(items.len() as u64);
        for (key, value) in items {
            self.put_bytes(key.as_ref());
            self.put_bytes(value.as_ref());
        }
    }

    /// Writes a full store path.
    pub fn put_path(&mut self, store_dir: &StoreDir, path: &StorePath) {
        self.put_str(&store_dir.print(path));
    }

    /// Writes an optional store path (none is the empty string).
    pub fn put_opt_path(&mut self, store_dir: &StoreDir, path: Option<&StorePath>) {
        match path {
            Some(path) => self.put_path(store_dir, path),
            None => self.put_str(""),
        }
    }

    /// Writes a `set<path>` or `list<path>` in the iterator's order.
    pub fn put_paths<'p, I>(&mut self, store_dir: &StoreDir, paths: I)
    where
        I: IntoIterator<Item = &'p StorePath>,
        I::IntoIter: ExactSizeIterator,
    {
        let paths = paths.into_iter();
        self.put_u64(paths.len() as u64);
        for path in paths {
            self.put_path(store_dir, path);
        }
    }

    /// Writes the tag of a tagged optional (0 = none, 1 = some).
    pub fn put_option_tag(&mut self, present: bool) {
        self.put_u64(u64::from(present));
    }

    /// Sends everything encoded so far to `out`, flushes `out`, and empties the writer.
    pub async fn flush_to<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        out: &mut W,
    ) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            out.write_all(&self.buf).await?;
            self.buf.clear();
        }
        out.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_layout() {
        let mut w = WireWriter::new();
        w.put_str("hi");
        assert_eq!(
            w.as_bytes(),
            &[2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 0, 0, 0, 0]
        );
        let mut w = WireWriter::new();
        w.put_str("");
        assert_eq!(w.as_bytes(), &[0u8; 8]);
    }

    #[test]
    fn booleans_are_zero_or_one() {
        let mut w = WireWriter::new();
        w.put_bool(true);
        w.put_bool(false);
        assert_eq!(
            w.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn lists_and_maps() {
        let mut w = WireWriter::new();
        w.put_strings(["a", "bc"]);
        w.put_string_map([("k", "v")]);
        let b = w.into_bytes();
        assert_eq!(b.len(), 8 + 16 + 16 + 8 + 16 + 16);
        assert_eq!(&b[..8], &2u64.to_le_bytes());
    }

    #[tokio::test]
    async fn flush_empties_the_buffer() {
        let mut w = WireWriter::new();
        w.put_u64(7);
        let mut out = Vec::new();
        w.flush_to(&mut out).await.unwrap();
        assert!(w.is_empty());
        assert_eq!(out, 7u64.to_le_bytes());
    }
}
