//! Finding references in a stream: which of a set of store paths' hash parts occur in it.
//!
//! This is how Nix learns what a build output refers to: it serialises the output as a NAR and
//! looks for the 32-character hash part of every path the output could refer to (the build's
//! input closure and the outputs themselves). The scanner sees the NAR in arbitrary chunks, so
//! a hash part split across two chunks is still found: the last 31 bytes of each chunk are kept
//! and scanned again together with the start of the next one.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use ward_proto::store_path::{StorePath, HASH_PART_LEN};

/// Whether `byte` can occur in a nix32 hash part (`0-9a-z` without `e`, `o`, `u`, `t`).
fn is_nix32(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

/// Scans a stream for the hash parts of candidate paths; see the [module documentation](self).
#[derive(Debug)]
pub struct RefScanner {
    /// Hash part → the candidate it belongs to, for candidates not found yet.
    wanted: HashMap<[u8; HASH_PART_LEN], StorePath>,
    found: BTreeSet<StorePath>,
    /// The last `HASH_PART_LEN - 1` bytes seen (fewer at the start).
    tail: Vec<u8>,
}

impl RefScanner {
    /// A scanner looking for the hash parts of `candidates`.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a StorePath>) -> RefScanner {
        let wanted = candidates
            .into_iter()
            .filter_map(|path| {
                let part: [u8; HASH_PART_LEN] = path.hash_part().as_bytes().try_into().ok()?;
                Some((part, path.clone()))
            })
            .collect();
        RefScanner {
            wanted,
            found: BTreeSet::new(),
            tail: Vec::with_capacity(HASH_PART_LEN),
        }
    }

    /// Scans the next chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.wanted.is_empty() || data.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // Windows that start in the tail end within the first 31 bytes of `data`.
            let mut junction = std::mem::take(&mut self.tail);
            junction.extend_from_slice(&data[..data.len().min(HASH_PART_LEN - 1)]);
            self.scan(&junction);
            self.tail = junction;
        }
        self.scan(data);
        // Keep the last 31 bytes of everything seen so far.
        let keep = HASH_PART_LEN - 1;
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            // `tail` (if it was not empty) already ends with `data`.
            if self.tail.is_empty() {
                self.tail.extend_from_slice(data);
            }
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    /// Scans one contiguous buffer, skipping ahead past any byte that cannot be in a hash.
    fn scan(&mut self, s: &[u8]) {
        let mut i = 0;
        'windows: while i + HASH_PART_LEN <= s.len() {
            // Check the window from its end: a non-hash byte at offset j rules out every
            // window that contains it, so the next candidate starts just after it.
            for j in (0..HASH_PART_LEN).rev() {
                if !is_nix32(s[i + j]) {
                    i += j + 1;
                    continue 'windows;
                }
            }
            let window: &[u8; HASH_PART_LEN] = s[i..i + HASH_PART_LEN]
                .try_into()
                .expect("window has the hash length");
            if let Some(path) = self.wanted.remove(window) {
                self.found.insert(path);
                if self.wanted.is_empty() {
                    return;
                }
            }
            i += 1;
        }
    }

    /// The candidates whose hash part occurred in the stream.
    pub fn finish(self) -> BTreeSet<StorePath> {
        self.found
    }
}

impl Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    fn candidates() -> Vec<StorePath> {
        vec![
            path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-a"),
            path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-b"),
            path("0c3nlhzdgvsd6bvjr6ajzlzm1pdcd7bq-c"),
        ]
    }

    fn scan_in_chunks(data: &[u8], chunk: usize) -> BTreeSet<StorePath> {
        let cands = candidates();
        let mut scanner = RefScanner::new(&cands);
        for piece in data.chunks(chunk) {
            scanner.feed(piece);
        }
        scanner.finish()
    }

    #[test]
    fn finds_hash_parts_whatever_the_chunking() {
        let text = b"#!/bin/sh\nexec /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-a/bin/x \
                     and ab3li50xq0nl4q5lxdyinb8w8y13my9s at the end"
            .to_vec();
        let want: BTreeSet<_> = candidates().into_iter().take(2).collect();
        for chunk in [1, 2, 3, 7, 16, 31, 32, 33, 64, text.len()] {
            assert_eq!(scan_in_chunks(&text, chunk), want, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_hash_part_inside_a_longer_run_of_hash_characters_is_found() {
        // Nix matches any 32-byte window, also inside a longer nix32 run.
        let text = b"xx0c3nlhzdgvsd6bvjr6ajzlzm1pdcd7bqyy";
        let found = scan_in_chunks(text, 5);
        assert_eq!(found, [candidates()[2].clone()].into());
    }

    #[test]
    fn nothing_is_found_in_unrelated_or_truncated_data() {
        assert!(scan_in_chunks(b"", 4).is_empty());
        assert!(scan_in_chunks(b"7h7qgvs4kgzsn8a6rb273saxyqh4jxl", 4).is_empty());
        // One character changed to a non-nix32 letter ('e').
        assert!(scan_in_chunks(b"7h7qgvs4kgzsn8a6rb273saxyqh4jxle", 4).is_empty());
        assert!(scan_in_chunks(&vec![b'a'; 10_000], 100).is_empty());
    }
}
