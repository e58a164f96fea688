//! Where the daemon's processes log. Under systemd, whose journal stream is their stderr
//! (`JOURNAL_STREAM` names its device and inode), they log to the journal directly with
//! structured fields — `WARD_CONNECTION`, `WARD_UID`, `WARD_PID`, `WARD_DRV`, ... from the
//! spans around each message — so `journalctl -u nix-daemon WARD_UID=1000` finds one user's
//! connections. Elsewhere they write lines to stderr.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The prefix of ward's own journal fields (journald reserves unprefixed names).
pub const JOURNAL_FIELD_PREFIX: &str = "WARD";

/// Whether stderr is the journal stream systemd set up: `JOURNAL_STREAM` is `DEVICE:INODE`
/// and stderr is that file (a redirected stderr is not, and then lines go where it points).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    // `st_dev` and `st_ino` are narrower than u64 on some systems.
    #[allow(clippy::unnecessary_cast)]
    let (dev, ino) = (stat.st_dev as u64, stat.st_ino as u64);
    journal_stream_matches(&value.to_string_lossy(), dev, ino)
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` against a file's device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Sets the process's subscriber: the journal when stderr is the journal stream (and the
/// journal's socket can be used), else `stderr_layer` (plain lines when `None`).
/// `identifier` is the journal's `SYSLOG_IDENTIFIER`.
pub fn init<L>(identifier: &str, filter: EnvFilter, stderr_layer: Option<L>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal
                    .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))
                    .with_syslog_identifier(identifier.to_owned());
                let _ = tracing_subscriber::registry()
                    .with(journal)
                    .with(filter)
                    .try_init();
                return;
            }
            Err(e) => {
                eprintln!("{identifier}: the journal is not reachable ({e}); logging to stderr")
            }
        }
    }
    match stderr_layer {
        Some(layer) => {
            let _ = tracing_subscriber::registry()
                .with(layer)
                .with(filter)
                .try_init();
        }
        None => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_env_filter(filter)
                .with_target(false)
                .try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_stream_must_name_this_very_file() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("8-1234", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
    }
}
