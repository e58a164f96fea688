//! Content addresses on the wire: the `ca` field (`""` = none) and AddToStore method strings.

use std::fmt;

use tokio::io::AsyncRead;

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::HashAlgo;
use crate::wire::{WireError, WireReader, WireWriter};

/// Reads a content address (`text:sha256:…`, `fixed:[r:|git:]algo:…`).
pub async fn read_ca<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<ContentAddress, WireError> {
    let text = r.read_string(field).await?;
    ContentAddress::parse(&text)
        .map_err(|source| WireError::InvalidContentAddress { field, source })
}

/// Reads an optional content address: the empty string is none.
pub async fn read_opt_ca<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<Option<ContentAddress>, WireError> {
    let text = r.read_string(field).await?;
    ContentAddress::parse_opt(&text)
        .map_err(|source| WireError::InvalidContentAddress { field, source })
}

/// Writes a content address.
pub fn write_ca(w: &mut WireWriter, ca: &ContentAddress) {
    w.put_str(&ca.to_string());
}

/// Writes an optional content address (none is the empty string).
pub fn write_opt_ca(w: &mut WireWriter, ca: Option<&ContentAddress>) {
    match ca {
        Some(ca) => write_ca(w, ca),
        None => w.put_str(""),
    }
}

/// A content-address method with its hash algorithm, as AddToStore (≥ 1.25) and
/// AddToStoreScanning send it: `text:sha256`, `fixed:sha1`, `fixed:r:sha256`, `fixed:git:sha1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaMethodWithAlgo {
    /// The method.
    pub method: ContentAddressMethod,
    /// The hash algorithm.
    pub algo: HashAlgo,
}

impl CaMethodWithAlgo {
    /// Reads a method string.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        field: &'static str,
    ) -> Result<Self, WireError> {
        let text = r.read_string(field).await?;
        let (method, algo) = ContentAddressMethod::parse_with_algo(&text)
            .map_err(|source| WireError::InvalidContentAddress { field, source })?;
        Ok(CaMethodWithAlgo { method, algo })
    }

    /// Writes the method string.
    pub fn write(&self, w: &mut WireWriter) {
        w.put_str(&self.to_string());
    }
}

impl fmt::Display for CaMethodWithAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.method.render_with_algo(self.algo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_address::FileIngestionMethod;
    use crate::hash::Hash;
    use std::io::Cursor;

    #[tokio::test]
    async fn method_strings() {
        let mut w = WireWriter::new();
        for s in [
            "text:sha256",
            "fixed:sha1",
            "fixed:r:sha256",
            "fixed:git:sha1",
            "text:sha1",
            "nar:sha256",
        ] {
            w.put_str(s);
        }
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        let expect = [
            (ContentAddressMethod::Text, HashAlgo::Sha256),
            (
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                HashAlgo::Sha1,
            ),
            (
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                HashAlgo::Sha256,
            ),
            (
                ContentAddressMethod::Fixed(FileIngestionMethod::Git),
                HashAlgo::Sha1,
            ),
        ];
        for (method, algo) in expect {
            let got = CaMethodWithAlgo::read(&mut r, "method").await.unwrap();
            assert_eq!(got, CaMethodWithAlgo { method, algo });
            let mut w = WireWriter::new();
            got.write(&mut w);
            let mut back = WireReader::new(Cursor::new(w.into_bytes()));
            assert_eq!(
                CaMethodWithAlgo::read(&mut back, "method").await.unwrap(),
                got
            );
        }
        for _ in 0..2 {
            assert!(matches!(
                CaMethodWithAlgo::read(&mut r, "method").await,
                Err(WireError::InvalidContentAddress {
                    field: "method",
                    ..
                })
            ));
        }
    }

    #[tokio::test]
    async fn optional_content_address() {
        let ca = ContentAddress {
            method: ContentAddressMethod::Text,
            hash: Hash::compute(HashAlgo::Sha256, b"x"),
        };
        let mut w = WireWriter::new();
        write_opt_ca(&mut w, None);
        write_opt_ca(&mut w, Some(&ca));
        w.put_str("fixed:r:sha256:not-a-hash");
        let mut r = WireReader::new(Cursor::new(w.into_bytes()));
        assert_eq!(read_opt_ca(&mut r, "ca").await.unwrap(), None);
        assert_eq!(read_opt_ca(&mut r, "ca").await.unwrap(), Some(ca));
        assert!(matches!(
            read_opt_ca(&mut r, "ca").await,
            Err(WireError::InvalidContentAddress { .. })
        ));
    }
}
