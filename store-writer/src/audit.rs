//! The audit log: one JSON object per line for every privileged action — each connection
//! (uid, pid, trust), each refusal with the setting that caused it, each build started with
//! its build user, each store path added, deleted or signed, each garbage collection. Set by
//! `ward-audit-log = PATH` (in nix.conf or ward.conf); off when unset.
//!
//! The frontend and the store-writer append to it themselves, each line in one `write`
//! (O_APPEND: lines never interleave). The launcher creates the file as root, mode 0620,
//! group `ward`: ward's processes may append but not read it. SIGHUP (`systemctl reload`)
//! makes each process reopen the path, so `logrotate` can move the file away and have a new
//! one created (`create 0620 root ward`, `postrotate systemctl reload nix-daemon`).
//!
//! A compromised frontend could still truncate the file it may write: the log is a record
//! for the admin, not evidence a broken process cannot touch (ARCHITECTURE.md).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// The audit log of this process.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    process: &'static str,
    file: Mutex<Option<File>>,
}

static LOG: OnceLock<AuditLog> = OnceLock::new();

/// Opens the audit log at `path` for this process (`process` names it in each line); does
/// nothing when `path` is empty. An audit log that cannot be opened is an error to report,
/// not a reason to stop serving: lines are then dropped with one warning.
pub fn init(path: &str, process: &'static str) -> Result<(), std::io::Error> {
    if path.is_empty() {
        return Ok(());
    }
    let log = AuditLog {
        path: PathBuf::from(path),
        process,
        file: Mutex::new(None),
    };
    let opened = open(&log.path);
    let result = opened
        .as_ref()
        .map(|_| ())
        .map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
    *log.file.lock().unwrap_or_else(|p| p.into_inner()) = opened.ok();
    let _ = LOG.set(log);
    result
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Reopens the file at the same path (after a rotation); SIGHUP calls this.
pub fn reopen() {
    let Some(log) = LOG.get() else {
        return;
    };
    let reopened = open(&log.path);
    if let Err(e) = &reopened {
        tracing::warn!(path = %log.path.display(), "reopening the audit log: {e}");
    }
    *log.file.lock().unwrap_or_else(|p| p.into_inner()) = reopened.ok();
}

/// Whether an audit log is configured (callers can skip building records otherwise).
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Appends one record: `event` and `fields`, with the time and the process.
pub fn record(event: &str, fields: Value) {
    let Some(log) = LOG.get() else {
        return;
    };
    let line = render(log.process, event, fields, SystemTime::now());
    let mut file = log.file.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = file.as_mut() {
        if let Err(e) = f.write_all(line.as_bytes()) {
            tracing::warn!(path = %log.path.display(), "writing the audit log: {e}");
        }
    }
}

/// One line of the audit log.
pub fn render(process: &str, event: &str, fields: Value, now: SystemTime) -> String {
    let mut object = Map::new();
    object.insert("time".into(), Value::String(rfc3339(now)));
    object.insert("process".into(), Value::String(process.into()));
    object.insert("event".into(), Value::String(event.into()));
    if let Value::Object(fields) = fields {
        for (k, v) in fields {
            object.insert(k, v);
        }
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

/// `2026-12-07T12:34:56.789Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_646_896_789);
        assert_eq!(rfc3339(t), "2026-12-07T12:34:56.789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_record_is_one_json_line() {
        let line = render(
            "frontend",
            "connection",
            serde_json::json!({"uid": 1000, "user": "al\nice"}),
            UNIX_EPOCH,
        );
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "connection");
        assert_eq!(value["process"], "frontend");
        assert_eq!(value["uid"], 1000);
        assert_eq!(value["user"], "al\nice");
    }
}
