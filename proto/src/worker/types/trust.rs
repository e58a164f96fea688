//! The trust flag of the handshake (≥1.35).

use tokio::io::AsyncRead;

use crate::wire::{WireError, WireReader, WireWriter};

/// Whether the daemon trusts the client, as told in the handshake. On the wire it is an optional:
/// `0` = unknown (`None`), `1` = trusted, `2` = not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrustFlag {
    /// The client is a trusted user.
    Trusted,
    /// The client is not trusted.
    NotTrusted,
}

impl TrustFlag {
    /// Writes an optional trust flag.
    pub fn write_opt(flag: Option<TrustFlag>, w: &mut WireWriter) {
        w.put_u64(match flag {
            None => 0,
            Some(TrustFlag::Trusted) => 1,
            Some(TrustFlag::NotTrusted) => 2,
        });
    }

    /// Reads an optional trust flag.
    pub async fn read_opt<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
    ) -> Result<Option<TrustFlag>, WireError> {
        const FIELD: &str = "trust flag";
        match r.read_u8(FIELD).await? {
            0 => Ok(None),
            1 => Ok(Some(TrustFlag::Trusted)),
            2 => Ok(Some(TrustFlag::NotTrusted)),
            other => Err(WireError::InvalidCode {
                field: FIELD,
                value: u64::from(other),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_refusal() {
        let mut w = WireWriter::new();
        for flag in [None, Some(TrustFlag::Trusted), Some(TrustFlag::NotTrusted)] {
            TrustFlag::write_opt(flag, &mut w);
        }
        w.put_u64(3);
        let mut r = WireReader::new(std::io::Cursor::new(w.into_bytes()));
        assert_eq!(TrustFlag::read_opt(&mut r).await.unwrap(), None);
        assert_eq!(
            TrustFlag::read_opt(&mut r).await.unwrap(),
            Some(TrustFlag::Trusted)
        );
        assert_eq!(
            TrustFlag::read_opt(&mut r).await.unwrap(),
            Some(TrustFlag::NotTrusted)
        );
        assert!(matches!(
            TrustFlag::read_opt(&mut r).await,
            Err(WireError::InvalidCode { value: 3, .. })
        ));
    }
}
