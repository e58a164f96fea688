//! `BuildMode` (protocol-facts §3.2.3).

use tokio::io::AsyncRead;

use crate::wire::{WireError, WireReader, WireWriter};

/// How to build: `0` normal, `1` repair, `2` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BuildMode {
    /// Build what is missing.
    #[default]
    Normal,
    /// Rebuild and replace corrupted paths (trusted clients only).
    Repair,
    /// Rebuild and compare with the existing outputs.
    Check,
}

impl BuildMode {
    /// The wire value.
    pub const fn code(self) -> u64 {
        match self {
            BuildMode::Normal => 0,
            BuildMode::Repair => 1,
            BuildMode::Check => 2,
        }
    }

    /// Writes the mode.
    pub fn write(self, w: &mut WireWriter) {
        w.put_u64(self.code());
    }

    /// Reads a mode; values other than 0, 1, 2 are refused (the 2.8 daemon would cast them
    /// blindly, current Nix refuses them).
    pub async fn read<R: AsyncRead + Unpin>(r: &mut WireReader<R>) -> Result<Self, WireError> {
        const FIELD: &str = "build mode";
        match r.read_u64(FIELD).await? {
            0 => Ok(BuildMode::Normal),
            1 => Ok(BuildMode::Repair),
            2 => Ok(BuildMode::Check),
            value => Err(WireError::InvalidCode {
                field: FIELD,
                value,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn known_modes_round_trip_and_others_are_refused() {
        let mut w = WireWriter::new();
        for mode in [BuildMode::Normal, BuildMode::Repair, BuildMode::Check] {
            mode.write(&mut w);
        }
        w.put_u64(3);
        let mut r = WireReader::new(std::io::Cursor::new(w.into_bytes()));
        assert_eq!(BuildMode::read(&mut r).await.unwrap(), BuildMode::Normal);
        assert_eq!(BuildMode::read(&mut r).await.unwrap(), BuildMode::Repair);
        assert_eq!(BuildMode::read(&mut r).await.unwrap(), BuildMode::Check);
        assert!(matches!(
            BuildMode::read(&mut r).await,
            Err(WireError::InvalidCode { value: 3, .. })
        ));
    }
}
