//! The stderr / logger channel: messages from the daemon to the client (protocol-facts §2).
//!
//! During an op's work phase the daemon may send any number of [`StderrMessage`]s; the phase
//! ends with [`StderrMessage::Last`] (the op's reply follows) or [`StderrMessage::Error`] (no
//! reply follows). [`StderrMessage::write`] picks the encoding the negotiated version needs:
//!
//! * below 1.20 activities do not exist: a start becomes a plain `STDERR_NEXT` line
//!   `"text...\n"` (nothing if the text is empty) and stops and results are dropped;
//! * below 1.26 an error is `STDERR_ERROR`, message, exit status; from 1.26 on it is the
//!   structured form (`"Error"`, level, `"Error"`, message, position 0, traces with position 0).
//!
//! The level filter (send a log line only if its level ≤ the client's verbosity) is the
//! caller's business: activities and results are never filtered.

use tokio::io::AsyncRead;

use super::version::ProtocolVersion;
use crate::wire::{WireError, WireReader, WireWriter};

/// `STDERR_NEXT`: a log line.
pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub use crate::wire::STDERR_READ;
/// `STDERR_WRITE`: data for the client's sink (ExportPath).
pub const STDERR_WRITE: u64 = 0x6461_7416;
/// `STDERR_LAST`: the work phase ended successfully; the reply follows.
pub const STDERR_LAST: u64 = 0x616c_7473;
/// `STDERR_ERROR`: the work phase ended with an error; no reply follows.
pub const STDERR_ERROR: u64 = 0x6378_7470;
/// `STDERR_START_ACTIVITY` (≥ 1.20).
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
/// `STDERR_STOP_ACTIVITY` (≥ 1.20).
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
/// `STDERR_RESULT` (≥ 1.20).
pub const STDERR_RESULT: u64 = 0x5253_4c54;

/// Log levels (`u64` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verbosity {
    /// 0
    Error,
    /// 1
    Warn,
    /// 2
    Notice,
    /// 3 (the client default)
    Info,
    /// 4
    Talkative,
    /// 5
    Chatty,
    /// 6
    Debug,
    /// 7
    Vomit,
}

impl Verbosity {
    /// The wire value.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// Decodes a level; values above 7 (which the reference casts blindly) count as
    /// [`Verbosity::Vomit`].
    pub const fn from_code_saturating(code: u64) -> Self {
        match code {
            0 => Verbosity::Error,
            1 => Verbosity::Warn,
            2 => Verbosity::Notice,
            3 => Verbosity::Info,
            4 => Verbosity::Talkative,
            5 => Verbosity::Chatty,
            6 => Verbosity::Debug,
            _ => Verbosity::Vomit,
        }
    }
}

macro_rules! open_code_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $code:expr, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this version of ward does not know; clients print these generically.
            Other(u32),
        }

        impl $name {
            /// The wire value.
            pub const fn code(self) -> u32 {
                match self {
                    $( $name::$variant => $code, )*
                    $name::Other(code) => code,
                }
            }

            /// Decodes a wire value; unknown values become `Other`.
            pub const fn from_code(code: u32) -> Self {
                match code {
                    $( $code => $name::$variant, )*
                    other => $name::Other(other),
                }
            }
        }
    };
}

open_code_enum! {
    /// Activity types (`actUnknown` … ; protocol-facts §2.2).
    ActivityType {
        /// 0
        Unknown = 0,
        /// 100: copying a path between stores.
        CopyPath = 100,
        /// 101: a download.
        FileTransfer = 101,
        /// 102
        Realise = 102,
        /// 103
        CopyPaths = 103,
        /// 104
        Builds = 104,
        /// 105: fields drv path, machine, current round, number of rounds.
        Build = 105,
        /// 106
        OptimiseStore = 106,
        /// 107
        VerifyPaths = 107,
        /// 108
        Substitute = 108,
        /// 109
        QueryPathInfo = 109,
        /// 110
        PostBuildHook = 110,
        /// 111
        BuildWaiting = 111,
        /// 112 (later Nix)
        FetchTree = 112,
        /// 113 (later Nix)
        FetchToStore = 113,
    }
}

open_code_enum! {
    /// Result types of `STDERR_RESULT` (protocol-facts §2.2).
    ResultType {
        /// 100: fields bytes, blocks.
        FileLinked = 100,
        /// 101: field line.
        BuildLogLine = 101,
        /// 102
        UntrustedPath = 102,
        /// 103
        CorruptedPath = 103,
        /// 104: field phase name.
        SetPhase = 104,
        /// 105: fields done, expected, running, failed.
        Progress = 105,
        /// 106: fields activity type, expected.
        SetExpected = 106,
        /// 107: field line.
        PostBuildLogLine = 107,
        /// 108 (later Nix)
        FetchStatus = 108,
    }
}

/// One field of an activity or result: tag 0 = integer, tag 1 = string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogField {
    /// Tag 0.
    Int(u64),
    /// Tag 1. Raw bytes: build log lines need not be UTF-8.
    String(Vec<u8>),
}

impl From<u64> for LogField {
    fn from(value: u64) -> Self {
        LogField::Int(value)
    }
}

impl From<&str> for LogField {
    fn from(value: &str) -> Self {
        LogField::String(value.as_bytes().to_vec())
    }
}

/// An error sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonError {
    /// The level (≥ 1.26 only; almost always [`Verbosity::Error`]).
    pub level: Verbosity,
    /// The message, without the `error: ` prefix the client adds.
    pub message: String,
    /// Traces (≥ 1.26 only); the client prints the last one first.
    pub traces: Vec<String>,
    /// The exit status (< 1.26 only; normally 1).
    pub exit_status: u32,
}

impl DaemonError {
    /// An error-level error with exit status 1 and no traces.
    pub fn new(message: impl Into<String>) -> Self {
        DaemonError {
            level: Verbosity::Error,
            message: message.into(),
            traces: Vec::new(),
            exit_status: 1,
        }
    }
}

/// `STDERR_START_ACTIVITY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartActivity {
    /// A unique id (the reference counts up from `pid << 32`).
    pub id: u64,
    /// The level.
    pub level: Verbosity,
    /// The type.
    pub activity_type: ActivityType,
    /// Text the client shows while the activity runs.
    pub text: String,
    /// Type-specific fields.
    pub fields: Vec<LogField>,
    /// The parent activity, 0 for none.
    pub parent: u64,
}

/// `STDERR_RESULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityResult {
    /// The activity.
    pub id: u64,
    /// The type.
    pub result_type: ResultType,
    /// Type-specific fields.
    pub fields: Vec<LogField>,
}

/// A message on the stderr channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrMessage {
    /// A log line, sent verbatim (the daemon appends `"\n"`: see [`StderrMessage::log_line`]).
    Next(Vec<u8>),
    /// The daemon asks for this many bytes (old upload path).
    Read(u64),
    /// Data for the client's sink.
    Write(Vec<u8>),
    /// End of the work phase; the reply follows.
    Last,
    /// End of the work phase with an error.
    Error(DaemonError),
    /// An activity starts.
    StartActivity(StartActivity),
    /// An activity stops.
    StopActivity(u64),
    /// A result for an activity.
    Result(ActivityResult),
}

fn put_fields(w: &mut WireWriter, fields: &[LogField]) {
    w.put_u64(fields.len() as u64);
    for field in fields {
        match field {
            LogField::Int(value) => {
                w.put_u64(0);
                w.put_u64(*value);
            }
            LogField::String(bytes) => {
                w.put_u64(1);
                w.put_bytes(bytes);
            }
        }
    }
}

async fn read_fields<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
) -> Result<Vec<LogField>, WireError> {
    let n = r.read_count("log fields").await?;
    let mut fields = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        match r.read_u64("log field type").await? {
            0 => fields.push(LogField::Int(r.read_u64("log field").await?)),
            1 => fields.push(LogField::String(r.read_text_bytes("log field").await?)),
            other => {
                return Err(WireError::InvalidCode {
                    field: "log field type",
                    value: other,
                })
            }
        }
    }
    Ok(fields)
}

/// Display-only text from the daemon: invalid UTF-8 is replaced rather than refused, since a
/// client must still be able to show the error it was sent.
async fn read_display_text<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<String, WireError> {
    let bytes = r.read_text_bytes(field).await?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

impl StderrMessage {
    /// A log line: `text` plus the `"\n"` the reference daemon appends.
    pub fn log_line(text: &str) -> Self {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        StderrMessage::Next(bytes)
    }

    /// True for the two messages that end a work phase.
    pub fn ends_work_phase(&self) -> bool {
        matches!(self, StderrMessage::Last | StderrMessage::Error(_))
    }

    /// Encodes the message for the negotiated `version` (see the module documentation for the
    /// downgrades below 1.20 and 1.26).
    pub fn write(&self, w: &mut WireWriter, version: ProtocolVersion) {
        match self {
            StderrMessage::Next(text) => {
                w.put_u64(STDERR_NEXT);
                w.put_bytes(text);
            }
            StderrMessage::Read(wanted) => {
                w.put_u64(STDERR_READ);
                w.put_u64(*wanted);
            }
            StderrMessage::Write(data) => {
                w.put_u64(STDERR_WRITE);
                w.put_bytes(data);
            }
            StderrMessage::Last => w.put_u64(STDERR_LAST),
            StderrMessage::Error(err) => {
                w.put_u64(STDERR_ERROR);
                if version.at_least(26) {
                    w.put_str("Error");
                    w.put_u64(err.level.code());
                    w.put_str("Error");
                    w.put_str(&err.message);
                    w.put_u64(0);
                    w.put_u64(err.traces.len() as u64);
                    for trace in &err.traces {
                        w.put_u64(0);
                        w.put_str(trace);
                    }
                } else {
                    w.put_str(&err.message);
                    w.put_u64(u64::from(err.exit_status));
                }
            }
            StderrMessage::StartActivity(act) => {
                if !version.at_least(20) {
                    if !act.text.is_empty() {
                        w.put_u64(STDERR_NEXT);
                        w.put_str(&format!("{}...\n", act.text));
                    }
                    return;
                }
                w.put_u64(STDERR_START_ACTIVITY);
                w.put_u64(act.id);
                w.put_u64(act.level.code());
                w.put_u64(u64::from(act.activity_type.code()));
                w.put_str(&act.text);
                put_fields(w, &act.fields);
                w.put_u64(act.parent);
            }
            StderrMessage::StopActivity(id) => {
                if version.at_least(20) {
                    w.put_u64(STDERR_STOP_ACTIVITY);
                    w.put_u64(*id);
                }
            }
            StderrMessage::Result(res) => {
                if version.at_least(20) {
                    w.put_u64(STDERR_RESULT);
                    w.put_u64(res.id);
                    w.put_u64(u64::from(res.result_type.code()));
                    put_fields(w, &res.fields);
                }
            }
        }
    }

    /// Decodes one message (client side). Starts a new message budget.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut WireReader<R>,
        version: ProtocolVersion,
    ) -> Result<Self, WireError> {
        r.begin_message();
        let code = r.read_u64("stderr message type").await?;
        Ok(match code {
            STDERR_NEXT => StderrMessage::Next(r.read_text_bytes("log line").await?),
            STDERR_READ => StderrMessage::Read(r.read_u64("bytes wanted").await?),
            STDERR_WRITE => StderrMessage::Write(r.read_text_bytes("sink data").await?),
            STDERR_LAST => StderrMessage::Last,
            STDERR_ERROR => StderrMessage::Error(read_error(r, version).await?),
            STDERR_START_ACTIVITY => {
                let id = r.read_u64("activity id").await?;
                let level = Verbosity::from_code_saturating(u64::from(r.read_u32("level").await?));
                let activity_type = ActivityType::from_code(r.read_u32("activity type").await?);
                let text = read_display_text(r, "activity text").await?;
                let fields = read_fields(r).await?;
                let parent = r.read_u64("parent activity").await?;
                StderrMessage::StartActivity(StartActivity {
                    id,
                    level,
                    activity_type,
                    text,
                    fields,
                    parent,
                })
            }
            STDERR_STOP_ACTIVITY => StderrMessage::StopActivity(r.read_u64("activity id").await?),
            STDERR_RESULT => {
                let id = r.read_u64("activity id").await?;
                let result_type = ResultType::from_code(r.read_u32("result type").await?);
                let fields = read_fields(r).await?;
                StderrMessage::Result(ActivityResult {
                    id,
                    result_type,
                    fields,
                })
            }
            other => {
                return Err(WireError::InvalidCode {
                    field: "stderr message type",
                    value: other,
                })
            }
        })
    }
}

async fn read_error<R: AsyncRead + Unpin>(
    r: &mut WireReader<R>,
    version: ProtocolVersion,
) -> Result<DaemonError, WireError> {
    if !version.at_least(26) {
        let message = read_display_text(r, "error message").await?;
        let exit_status = r.read_u32("exit status").await?;
        return Ok(DaemonError {
            level: Verbosity::Error,
            message,
            traces: Vec::new(),
            exit_status,
        });
    }
    let kind = r.read_string("error type").await?;
    if kind != "Error" {
        return Err(WireError::invalid_value(
            "error type",
            &kind,
            "expected 'Error'",
        ));
    }
    let level = Verbosity::from_code_saturating(u64::from(r.read_u32("error level").await?));
    let _obsolete_name = r.read_string("error name").await?;
    let message = read_display_text(r, "error message").await?;
    if r.read_u64("error position").await? != 0 {
        return Err(WireError::invalid_value(
            "error position",
            "non-zero",
            "deserializing error positions is not supported",
        ));
    }
    let n = r.read_count("error traces").await?;
    let mut traces = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        if r.read_u64("trace position").await? != 0 {
            return Err(WireError::invalid_value(
                "trace position",
                "non-zero",
                "deserializing error positions is not supported",
            ));
        }
        traces.push(read_display_text(r, "error trace").await?);
    }
    Ok(DaemonError {
        level,
        message,
        traces,
        exit_status: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const V34: ProtocolVersion = ProtocolVersion::v1(34);

    async fn decode(bytes: Vec<u8>, version: ProtocolVersion) -> Result<StderrMessage, WireError> {
        let mut r = WireReader::new(Cursor::new(bytes));
        StderrMessage::read(&mut r, version).await
    }

    /// protocol-facts Appendix A.4, byte for byte.
    #[test]
    fn appendix_a4_encoding() {
        let mut w = WireWriter::new();
        StderrMessage::StartActivity(StartActivity {
            id: 42,
            level: Verbosity::Info,
            activity_type: ActivityType::Build,
            text: "building something".into(),
            fields: vec!["/nix/store/x.drv".into(), "".into(), 1.into(), 1.into()],
            parent: 0,
        })
        .write(&mut w, V34);
        let mut expected = WireWriter::new();
        for v in [0x5354_5254, 42, 3, 105] {
            expected.put_u64(v);
        }
        expected.put_str("building something");
        expected.put_u64(4);
        expected.put_u64(1);
        expected.put_str("/nix/store/x.drv");
        expected.put_u64(1);
        expected.put_str("");
        for v in [0, 1, 0, 1, 0] {
            expected.put_u64(v);
        }
        assert_eq!(w.as_bytes(), expected.as_bytes());

        let mut w = WireWriter::new();
        let err = DaemonError {
            traces: vec!["trace one".into(), "trace two".into()],
            ..DaemonError::new("something went wrong")
        };
        StderrMessage::Error(err).write(&mut w, V34);
        let mut expected = WireWriter::new();
        expected.put_u64(0x6378_7470);
        expected.put_str("Error");
        expected.put_u64(0);
        expected.put_str("Error");
        expected.put_str("something went wrong");
        expected.put_u64(0);
        expected.put_u64(2);
        expected.put_u64(0);
        expected.put_str("trace one");
        expected.put_u64(0);
        expected.put_str("trace two");
        assert_eq!(w.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn old_error_form_below_1_26() {
        let mut w = WireWriter::new();
        StderrMessage::Error(DaemonError::new("boom")).write(&mut w, ProtocolVersion::v1(25));
        let mut expected = WireWriter::new();
        expected.put_u64(STDERR_ERROR);
        expected.put_str("boom");
        expected.put_u64(1);
        assert_eq!(w.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn activities_downgrade_below_1_20() {
        let old = ProtocolVersion::v1(19);
        let start = |text: &str| {
            StderrMessage::StartActivity(StartActivity {
                id: 1,
                level: Verbosity::Info,
                activity_type: ActivityType::Realise,
                text: text.into(),
                fields: vec![],
                parent: 0,
            })
        };
        let mut w = WireWriter::new();
        start("copying").write(&mut w, old);
        let mut expected = WireWriter::new();
        expected.put_u64(STDERR_NEXT);
        expected.put_str("copying...\n");
        assert_eq!(w.as_bytes(), expected.as_bytes());

        let mut w = WireWriter::new();
        start("").write(&mut w, old);
        StderrMessage::StopActivity(1).write(&mut w, old);
        StderrMessage::Result(ActivityResult {
            id: 1,
            result_type: ResultType::Progress,
            fields: vec![],
        })
        .write(&mut w, old);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn round_trips() {
        let messages = vec![
            StderrMessage::log_line("hello from fake daemon"),
            StderrMessage::Read(32768),
            StderrMessage::Write(vec![0, 1, 2, 255]),
            StderrMessage::Last,
            StderrMessage::Error(DaemonError {
                level: Verbosity::Warn,
                traces: vec!["t".into()],
                ..DaemonError::new("m")
            }),
            StderrMessage::StartActivity(StartActivity {
                id: u64::MAX,
                level: Verbosity::Vomit,
                activity_type: ActivityType::Other(999),
                text: "x".into(),
                fields: vec![LogField::Int(7), LogField::String(vec![0xff])],
                parent: 3,
            }),
            StderrMessage::StopActivity(9),
            StderrMessage::Result(ActivityResult {
                id: 9,
                result_type: ResultType::BuildLogLine,
                fields: vec!["line".into()],
            }),
        ];
        for msg in messages {
            let mut w = WireWriter::new();
            msg.write(&mut w, V34);
            assert_eq!(decode(w.into_bytes(), V34).await.unwrap(), msg);
        }
    }

    #[tokio::test]
    async fn bad_messages_are_typed_errors() {
        let mut w = WireWriter::new();
        w.put_u64(0x1234);
        assert!(matches!(
            decode(w.into_bytes(), V34).await,
            Err(WireError::InvalidCode { .. })
        ));

        let mut w = WireWriter::new();
        w.put_u64(STDERR_RESULT);
        w.put_u64(1);
        w.put_u64(101);
        w.put_u64(1);
        w.put_u64(2); // unknown field type
        assert!(matches!(
            decode(w.into_bytes(), V34).await,
            Err(WireError::InvalidCode {
                field: "log field type",
                value: 2
            })
        ));

        let mut w = WireWriter::new();
        w.put_u64(STDERR_ERROR);
        w.put_str("NotError");
        assert!(matches!(
            decode(w.into_bytes(), V34).await,
            Err(WireError::InvalidValue { .. })
        ));

        let mut w = WireWriter::new();
        w.put_u64(STDERR_ERROR);
        w.put_str("Error");
        w.put_u64(0);
        w.put_str("Error");
        w.put_str("msg");
        w.put_u64(5); // a position
        assert!(matches!(
            decode(w.into_bytes(), V34).await,
            Err(WireError::InvalidValue { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_messages_are_eof() {
        let mut w = WireWriter::new();
        StderrMessage::Error(DaemonError {
            traces: vec!["a".into()],
            ..DaemonError::new("b")
        })
        .write(&mut w, V34);
        let bytes = w.into_bytes();
        for cut in 0..bytes.len() {
            let err = decode(bytes[..cut].to_vec(), V34).await.unwrap_err();
            assert!(err.is_eof(), "cut {cut}: {err}");
        }
    }

    #[test]
    fn code_enums() {
        assert_eq!(ActivityType::from_code(105), ActivityType::Build);
        assert_eq!(ActivityType::Build.code(), 105);
        assert_eq!(ActivityType::from_code(5), ActivityType::Other(5));
        assert_eq!(ResultType::from_code(101), ResultType::BuildLogLine);
        assert_eq!(Verbosity::from_code_saturating(99), Verbosity::Vomit);
        assert_eq!(Verbosity::Info.code(), 3);
    }
}
