//! Undoing a cached NAR's compression, with memory bounded against hostile archives (an xz
//! stream may ask for a dictionary of gigabytes; it is refused beyond [`XZ_MEMORY_LIMIT`]).

use std::io;

use super::source::Stream;

/// Most memory the xz decoder may use (`xz -9e` needs 65 MiB).
pub const XZ_MEMORY_LIMIT: u64 = 256 << 20;

/// Largest zstd window accepted, as a power of two (zstd's own default limit: 128 MiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// A reader of the decompressed bytes of `raw`, compressed with `compression` (Nix's names;
/// `check_narinfo` has already refused the others).
pub fn decoder(compression: &str, raw: Stream) -> io::Result<Stream> {
    Ok(match compression {
        "none" | "" => raw,
        "xz" => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMORY_LIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(raw, stream))
        }
        "bzip2" => Box::new(bzip2::read::MultiBzDecoder::new(raw)),
        "zstd" => {
            let mut d = zstd::stream::read::Decoder::new(raw)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            Box::new(d)
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unsupported compression '{other}'"),
            ))
        }
    })
}

/// Reads everything (tests).
#[cfg(test)]
fn decode_all(compression: &str, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut d = decoder(compression, Box::new(io::Cursor::new(bytes)))?;
    io::Read::read_to_end(&mut d, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DATA: &[u8] = b"nix-archive-1 and then some more bytes, repeated repeated repeated";

    #[test]
    fn every_supported_compression_round_trips() {
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(DATA).unwrap();
        let xz = xz.finish().unwrap();
        assert_eq!(decode_all("xz", xz).unwrap(), DATA);

        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(DATA).unwrap();
        assert_eq!(decode_all("bzip2", bz.finish().unwrap()).unwrap(), DATA);

        let zs = zstd::encode_all(DATA, 3).unwrap();
        assert_eq!(decode_all("zstd", zs).unwrap(), DATA);

        assert_eq!(decode_all("none", DATA.to_vec()).unwrap(), DATA);
    }

    #[test]
    fn garbage_and_unknown_compressions_are_errors() {
        assert!(decode_all("xz", b"not xz at all".to_vec()).is_err());
        assert!(decode_all("bzip2", b"not bzip2".to_vec()).is_err());
        assert!(decode_all("zstd", b"not zstd".to_vec()).is_err());
        assert!(decode_all("br", DATA.to_vec()).is_err());
    }

    #[test]
    fn an_xz_stream_asking_for_too_much_memory_is_refused() {
        // A preset whose dictionary (1.5 GiB) is beyond the decoder's limit.
        let mut opts = liblzma::stream::LzmaOptions::new_preset(9).unwrap();
        opts.dict_size(1536 << 20);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma2(&opts);
        let stream =
            liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc64)
                .unwrap();
        let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(DATA).unwrap();
        let bytes = enc.finish().unwrap();
        let err = decode_all("xz", bytes).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("mem"), "{err}");
    }
}
