//! Nix's log levels, used for `-v`/`--quiet`/`--debug` and the SetOptions verbosity field.

/// A Nix log level; a message is shown when its level is at most the current verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Verbosity {
    Error,
    Warn,
    Notice,
    #[default]
    Info,
    Talkative,
    Chatty,
    Debug,
    Vomit,
}

impl Verbosity {
    const ALL: [Verbosity; 8] = [
        Verbosity::Error,
        Verbosity::Warn,
        Verbosity::Notice,
        Verbosity::Info,
        Verbosity::Talkative,
        Verbosity::Chatty,
        Verbosity::Debug,
        Verbosity::Vomit,
    ];

    /// The level for a number on the wire (0 = error ... 7 = vomit); larger numbers mean
    /// "everything", i.e. vomit.
    pub fn from_wire(level: u64) -> Verbosity {
        usize::try_from(level)
            .ok()
            .and_then(|index| Verbosity::ALL.get(index).copied())
            .unwrap_or(Verbosity::Vomit)
    }

    /// The number Nix uses for this level.
    pub fn to_wire(self) -> u64 {
        self as u64
    }

    /// One level more verbose (`-v`), stopping at vomit.
    pub fn louder(self) -> Verbosity {
        Verbosity::from_wire(self.to_wire() + 1)
    }

    /// One level less verbose (`--quiet`), stopping at error.
    pub fn quieter(self) -> Verbosity {
        Verbosity::from_wire(self.to_wire().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_round_trip_and_clamp() {
        for level in 0..8 {
            assert_eq!(Verbosity::from_wire(level).to_wire(), level);
        }
        assert_eq!(Verbosity::from_wire(8), Verbosity::Vomit);
        assert_eq!(Verbosity::from_wire(u64::MAX), Verbosity::Vomit);
        assert_eq!(Verbosity::default(), Verbosity::Info);
        assert_eq!(Verbosity::Info.to_wire(), 3);
    }

    #[test]
    fn louder_and_quieter_saturate() {
        assert_eq!(Verbosity::Info.louder(), Verbosity::Talkative);
        assert_eq!(Verbosity::Vomit.louder(), Verbosity::Vomit);
        assert_eq!(Verbosity::Warn.quieter(), Verbosity::Error);
        assert_eq!(Verbosity::Error.quieter(), Verbosity::Error);
    }
}
