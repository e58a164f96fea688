//! A minimal Nix worker-protocol client (protocol 1.34, as Nix 2.8 speaks it) for what the
//! Nix CLI cannot do on purpose: claim a NAR hash that does not match the data, or hang up in
//! the middle of an upload. Blocking `std` I/O with timeouts, so a hung daemon fails the test
//! instead of hanging it.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// First word a client sends.
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// First word the daemon answers.
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// Protocol 1.34 (Nix 2.8).
pub const CLIENT_VERSION: u64 = (1 << 8) | 34;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_READ: u64 = 0x6461_7461;
const STDERR_WRITE: u64 = 0x6461_7416;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6378_7470;
const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
const STDERR_RESULT: u64 = 0x5253_4c54;

/// Worker operation numbers used here.
pub mod op {
    /// IsValidPath.
    pub const IS_VALID_PATH: u64 = 1;
    /// SetOptions.
    pub const SET_OPTIONS: u64 = 19;
    /// QueryPathInfo.
    pub const QUERY_PATH_INFO: u64 = 26;
    /// AddSignatures.
    pub const ADD_SIGNATURES: u64 = 37;
    /// NarFromPath.
    pub const NAR_FROM_PATH: u64 = 38;
    /// AddToStoreNar.
    pub const ADD_TO_STORE_NAR: u64 = 39;
    /// BuildDerivation.
    pub const BUILD_DERIVATION: u64 = 36;
    /// EnsurePath.
    pub const ENSURE_PATH: u64 = 10;
    /// AddTextToStore.
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    /// CollectGarbage.
    pub const COLLECT_GARBAGE: u64 = 20;
    /// AddMultipleToStore.
    pub const ADD_MULTIPLE_TO_STORE: u64 = 44;
}

/// CollectGarbage's actions.
pub mod gc_action {
    /// List the live paths.
    pub const RETURN_LIVE: u64 = 0;
    /// List the dead paths.
    pub const RETURN_DEAD: u64 = 1;
    /// Delete the dead paths.
    pub const DELETE_DEAD: u64 = 2;
    /// Delete the paths named.
    pub const DELETE_SPECIFIC: u64 = 3;
}

/// A derivation as BuildDerivation sends it (Nix's `BasicDerivation`: no input derivations).
#[derive(Debug, Clone, Default)]
pub struct BasicDerivation {
    /// Outputs as (name, path, hash algorithm, hash); the last two empty unless fixed.
    pub outputs: Vec<(String, String, String, String)>,
    /// Input sources.
    pub input_srcs: Vec<String>,
    /// The `system` it builds for.
    pub platform: String,
    /// The builder program.
    pub builder: String,
    /// The builder's arguments.
    pub args: Vec<String>,
    /// The environment, in the order sent.
    pub env: Vec<(String, String)>,
}

impl BasicDerivation {
    /// Reads the derivation `drv_path` out of `nix show-derivation`'s JSON.
    pub fn from_show_derivation(json: &serde_json::Value, drv_path: &str) -> BasicDerivation {
        let d = &json[drv_path];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let texts = |v: &serde_json::Value| {
            v.as_array()
                .unwrap_or_else(|| panic!("not a list in {d}"))
                .iter()
                .map(text)
                .collect::<Vec<_>>()
        };
        let object = |v: &serde_json::Value| {
            v.as_object()
                .unwrap_or_else(|| panic!("not an object in {d}"))
                .clone()
        };
        BasicDerivation {
            outputs: object(&d["outputs"])
                .iter()
                .map(|(name, o)| {
                    (
                        name.clone(),
                        text(&o["path"]),
                        text(&o["hashAlgo"]),
                        text(&o["hash"]),
                    )
                })
                .collect(),
            input_srcs: texts(&d["inputSrcs"]),
            platform: text(&d["system"]),
            builder: text(&d["builder"]),
            args: texts(&d["args"]),
            env: object(&d["env"])
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
        }
    }
}

/// The daemon's answer to BuildDerivation (protocol 1.34).
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// Nix's `BuildResult::Status` (0 built, 1 substituted, 2 already valid, 3+ failures).
    pub status: u64,
    /// The error message of a failed build.
    pub error_msg: String,
    /// How often it was built (more than once with `--check` and `repeat`).
    pub times_built: u64,
    /// Whether `--check` found it non-deterministic.
    pub is_non_deterministic: bool,
    /// The realisations of the outputs built, as (`DrvOutput` id, realisation JSON).
    pub built_outputs: Vec<(String, String)>,
}

/// Longest string this client accepts from a daemon.
const MAX_STRING: u64 = 64 << 20;
/// Most list elements this client accepts from a daemon.
const MAX_LIST: u64 = 1 << 20;
/// Read and write timeout on the socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to a daemon.
#[derive(Debug)]
pub enum WireError {
    /// The socket failed or closed.
    Io(io::Error),
    /// The daemon answered with `STDERR_ERROR`.
    Daemon {
        /// The error message.
        message: String,
    },
    /// The daemon sent something this client does not understand.
    Protocol(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "i/o error: {e}"),
            WireError::Daemon { message } => write!(f, "daemon error: {message}"),
            WireError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

type Result<T> = std::result::Result<T, WireError>;

/// Metadata of a store path, as AddToStoreNar sends it and QueryPathInfo returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path.
    pub path: String,
    /// Deriver, or "".
    pub deriver: String,
    /// NAR SHA-256 in lowercase base16, no prefix.
    pub nar_hash: String,
    /// References (full store paths).
    pub references: Vec<String>,
    /// Registration time (0 = unknown).
    pub registration_time: u64,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// Ultimate-trust flag.
    pub ultimate: bool,
    /// Signatures.
    pub sigs: Vec<String>,
    /// Content address, or "".
    pub ca: String,
}

impl PathInfo {
    /// Metadata of a path with no references, deriver or signatures whose NAR is `nar`.
    pub fn for_nar(path: &str, nar: &[u8]) -> PathInfo {
        PathInfo {
            path: path.to_string(),
            deriver: String::new(),
            nar_hash: crate::nar::base16(&crate::nar::sha256(nar)),
            references: Vec::new(),
            registration_time: 0,
            nar_size: nar.len() as u64,
            ultimate: false,
            sigs: Vec::new(),
            ca: String::new(),
        }
    }
}

/// One connection to a daemon, after the handshake.
#[derive(Debug)]
pub struct WorkerClient {
    stream: UnixStream,
    /// Protocol version the daemon announced.
    pub daemon_version: u64,
    /// The daemon's Nix version string (sent from 1.33 on).
    pub daemon_nix_version: Option<String>,
    /// Log lines (`STDERR_NEXT`) received so far.
    pub log: Vec<String>,
    /// The protocol version this client announced.
    client_version: u64,
    /// Activity messages (start, stop, result) received so far.
    pub activity_messages: usize,
}

impl WorkerClient {
    /// Connects, does the 1.34 handshake and sends SetOptions like Nix 2.8 does.
    pub fn connect(socket: &Path) -> Result<WorkerClient> {
        let mut client = WorkerClient::handshake(socket)?;
        client.set_options()?;
        Ok(client)
    }

    /// Connects and does the handshake only.
    pub fn handshake(socket: &Path) -> Result<WorkerClient> {
        WorkerClient::handshake_with_timeout(socket, IO_TIMEOUT)
    }

    /// Connects and does the handshake, waiting at most `timeout` for each read or write.
    pub fn handshake_with_timeout(socket: &Path, timeout: Duration) -> Result<WorkerClient> {
        WorkerClient::handshake_version(socket, timeout, CLIENT_VERSION)
    }

    /// Connects as a client of protocol 1.`minor` (at least 1.14), does that version's
    /// handshake and SetOptions. Errors of clients before 1.26 arrive as a message and a
    /// status, and their logs only as `STDERR_NEXT` lines.
    pub fn connect_as(socket: &Path, minor: u64) -> Result<WorkerClient> {
        assert!((14..=34).contains(&minor), "protocol 1.{minor}");
        let mut client = WorkerClient::handshake_version(socket, IO_TIMEOUT, (1 << 8) | minor)?;
        client.set_options()?;
        Ok(client)
    }

    fn handshake_version(
        socket: &Path,
        timeout: Duration,
        client_version: u64,
    ) -> Result<WorkerClient> {
        WorkerClient::handshake_on(UnixStream::connect(socket)?, timeout, client_version)
    }

    /// Does the 1.34 handshake and SetOptions on a connection made elsewhere (for instance by
    /// a child running as another user, whose credentials the daemon saw at connect).
    pub fn connect_stream(stream: UnixStream) -> Result<WorkerClient> {
        let mut client = WorkerClient::handshake_on(stream, IO_TIMEOUT, CLIENT_VERSION)?;
        client.set_options()?;
        Ok(client)
    }

    fn handshake_on(
        stream: UnixStream,
        timeout: Duration,
        client_version: u64,
    ) -> Result<WorkerClient> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut client = WorkerClient {
            stream,
            daemon_version: 0,
            daemon_nix_version: None,
            log: Vec::new(),
            client_version,
            activity_messages: 0,
        };
        client.write_u64(WORKER_MAGIC_1)?;
        let magic = client.read_u64()?;
        if magic != WORKER_MAGIC_2 {
            return Err(WireError::Protocol(format!(
                "daemon magic {magic:#x}, expected {WORKER_MAGIC_2:#x}"
            )));
        }
        client.daemon_version = client.read_u64()?;
        if client.daemon_version >> 8 != 1 || client.daemon_version & 0xff < 10 {
            return Err(WireError::Protocol(format!(
                "daemon protocol version {:#x} is not 1.x with x >= 10",
                client.daemon_version
            )));
        }
        client.write_u64(client_version)?;
        client.write_u64(0)?; // no CPU affinity
        client.write_u64(0)?; // reserveSpace
        if client.negotiated_minor() >= 33 {
            client.daemon_nix_version = Some(client.read_string()?);
        }
        client.process_stderr()?;
        client.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        client.stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(client)
    }

    /// The minor protocol version both sides speak.
    pub fn negotiated_minor(&self) -> u64 {
        (self.daemon_version & 0xff).min(self.client_version & 0xff)
    }

    /// SetOptions with Nix 2.8's defaults and no overrides.
    pub fn set_options(&mut self) -> Result<()> {
        self.write_u64(op::SET_OPTIONS)?;
        // keepFailed, keepGoing, tryFallback, verbosity (Info), maxBuildJobs, maxSilentTime,
        // useBuildHook, verboseBuild, logType, printBuildTrace, buildCores, useSubstitutes.
        for value in [0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 1, 0] {
            self.write_u64(value)?;
        }
        self.write_u64(0)?; // no overrides
        self.process_stderr()
    }

    /// IsValidPath.
    pub fn is_valid_path(&mut self, path: &str) -> Result<bool> {
        self.write_u64(op::IS_VALID_PATH)?;
        self.write_string(path.as_bytes())?;
        self.process_stderr()?;
        Ok(self.read_u64()? != 0)
    }

    /// QueryPathInfo; `None` when the path is not valid.
    pub fn query_path_info(&mut self, path: &str) -> Result<Option<PathInfo>> {
        self.write_u64(op::QUERY_PATH_INFO)?;
        self.write_string(path.as_bytes())?;
        self.process_stderr()?;
        if self.read_u64()? == 0 {
            return Ok(None);
        }
        Ok(Some(PathInfo {
            path: path.to_string(),
            deriver: self.read_string()?,
            nar_hash: self.read_string()?,
            references: self.read_strings()?,
            registration_time: self.read_u64()?,
            nar_size: self.read_u64()?,
            ultimate: self.read_u64()? != 0,
            sigs: self.read_strings()?,
            ca: self.read_string()?,
        }))
    }

    /// AddSignatures (trusted clients only).
    pub fn add_signatures(&mut self, path: &str, sigs: &[String]) -> Result<()> {
        self.write_u64(op::ADD_SIGNATURES)?;
        self.write_string(path.as_bytes())?;
        self.write_strings(sigs)?;
        self.process_stderr()?;
        self.read_u64()?;
        Ok(())
    }

    /// NarFromPath; the daemon sends a bare NAR, read here as exactly `nar_size` bytes.
    pub fn nar_from_path(&mut self, path: &str, nar_size: u64) -> Result<Vec<u8>> {
        self.write_u64(op::NAR_FROM_PATH)?;
        self.write_string(path.as_bytes())?;
        self.process_stderr()?;
        if nar_size > MAX_STRING {
            return Err(WireError::Protocol(format!(
                "nar of {nar_size} bytes is too large"
            )));
        }
        let mut nar = vec![0u8; nar_size as usize];
        self.stream.read_exact(&mut nar)?;
        Ok(nar)
    }

    /// EnsurePath: Ok when the path is (or could be made) valid.
    pub fn ensure_path(&mut self, path: &str) -> Result<()> {
        self.write_u64(op::ENSURE_PATH)?;
        self.write_string(path.as_bytes())?;
        self.process_stderr()?;
        self.read_u64()?;
        Ok(())
    }

    /// BuildDerivation of `drv` under the name `drv_path`, in `mode` (0 normal, 1 repair,
    /// 2 check).
    pub fn build_derivation(
        &mut self,
        drv_path: &str,
        drv: &BasicDerivation,
        mode: u64,
    ) -> Result<BuildResult> {
        self.write_u64(op::BUILD_DERIVATION)?;
        self.write_string(drv_path.as_bytes())?;
        self.write_u64(drv.outputs.len() as u64)?;
        for (name, path, algo, hash) in &drv.outputs {
            for field in [name, path, algo, hash] {
                self.write_string(field.as_bytes())?;
            }
        }
        self.write_strings(&drv.input_srcs)?;
        self.write_string(drv.platform.as_bytes())?;
        self.write_string(drv.builder.as_bytes())?;
        self.write_strings(&drv.args)?;
        self.write_u64(drv.env.len() as u64)?;
        for (k, v) in &drv.env {
            self.write_string(k.as_bytes())?;
            self.write_string(v.as_bytes())?;
        }
        self.write_u64(mode)?;
        self.process_stderr()?;
        let status = self.read_u64()?;
        let error_msg = self.read_string()?;
        let times_built = self.read_u64()?;
        let is_non_deterministic = self.read_u64()? != 0;
        let _start_time = self.read_u64()?;
        let _stop_time = self.read_u64()?;
        let count = self.read_u64()?;
        if count > MAX_LIST {
            return Err(WireError::Protocol(format!("{count} built outputs")));
        }
        let mut built_outputs = Vec::new();
        for _ in 0..count {
            built_outputs.push((self.read_string()?, self.read_string()?));
        }
        Ok(BuildResult {
            status,
            error_msg,
            times_built,
            is_non_deterministic,
            built_outputs,
        })
    }

    /// Sends AddToStoreNar's op code and arguments, not yet the data.
    pub fn begin_add_to_store_nar(&mut self, info: &PathInfo, dont_check_sigs: bool) -> Result<()> {
        self.write_u64(op::ADD_TO_STORE_NAR)?;
        self.write_string(info.path.as_bytes())?;
        self.write_string(info.deriver.as_bytes())?;
        self.write_string(info.nar_hash.as_bytes())?;
        self.write_strings(&info.references)?;
        self.write_u64(info.registration_time)?;
        self.write_u64(info.nar_size)?;
        self.write_u64(u64::from(info.ultimate))?;
        self.write_strings(&info.sigs)?;
        self.write_string(info.ca.as_bytes())?;
        self.write_u64(0)?; // repair
        self.write_u64(u64::from(dont_check_sigs))
    }

    /// Sends `data` as frames of at most `chunk` bytes, without the terminating empty frame.
    pub fn send_frames(&mut self, data: &[u8], chunk: usize) -> Result<()> {
        for piece in data.chunks(chunk.max(1)) {
            self.write_u64(piece.len() as u64)?;
            self.stream.write_all(piece)?;
        }
        Ok(())
    }

    /// Sends the empty frame that ends a framed stream.
    pub fn end_frames(&mut self) -> Result<()> {
        self.write_u64(0)
    }

    /// A whole AddToStoreNar: arguments, the NAR in frames of `chunk` bytes, the end frame,
    /// then the daemon's answer.
    pub fn add_to_store_nar(
        &mut self,
        info: &PathInfo,
        nar: &[u8],
        chunk: usize,
        dont_check_sigs: bool,
    ) -> Result<()> {
        self.begin_add_to_store_nar(info, dont_check_sigs)?;
        self.send_frames(nar, chunk)?;
        self.end_frames()?;
        self.process_stderr()
    }

    /// AddMultipleToStore as `nix copy` sends it: one framed stream holding the count, then
    /// each path's full info (path first) followed by its NAR; frames of at most `chunk`
    /// bytes. Returns the daemon's answer (an error names the path at fault).
    pub fn add_multiple_to_store(
        &mut self,
        entries: &[(PathInfo, Vec<u8>)],
        chunk: usize,
        dont_check_sigs: bool,
    ) -> Result<()> {
        self.add_multiple_to_store_pausing(entries, chunk, dont_check_sigs, entries.len(), || {})
    }

    /// Like [`WorkerClient::add_multiple_to_store`], but `pause` runs after the stream of the
    /// first `pause_after` paths has been sent and before the rest is.
    pub fn add_multiple_to_store_pausing(
        &mut self,
        entries: &[(PathInfo, Vec<u8>)],
        chunk: usize,
        dont_check_sigs: bool,
        pause_after: usize,
        pause: impl FnOnce(),
    ) -> Result<()> {
        fn u64_to(out: &mut Vec<u8>, v: u64) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        fn string_to(out: &mut Vec<u8>, s: &[u8]) {
            u64_to(out, s.len() as u64);
            out.extend_from_slice(s);
            out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
        }
        fn strings_to(out: &mut Vec<u8>, items: &[String]) {
            u64_to(out, items.len() as u64);
            for item in items {
                string_to(out, item.as_bytes());
            }
        }
        let mut stream = Vec::new();
        let mut split = None;
        u64_to(&mut stream, entries.len() as u64);
        for (index, (info, nar)) in entries.iter().enumerate() {
            if index == pause_after {
                split = Some(stream.len());
            }
            string_to(&mut stream, info.path.as_bytes());
            string_to(&mut stream, info.deriver.as_bytes());
            string_to(&mut stream, info.nar_hash.as_bytes());
            strings_to(&mut stream, &info.references);
            u64_to(&mut stream, info.registration_time);
            u64_to(&mut stream, info.nar_size);
            u64_to(&mut stream, u64::from(info.ultimate));
            strings_to(&mut stream, &info.sigs);
            string_to(&mut stream, info.ca.as_bytes());
            stream.extend_from_slice(nar);
        }
        self.write_u64(op::ADD_MULTIPLE_TO_STORE)?;
        self.write_u64(0)?; // repair
        self.write_u64(u64::from(dont_check_sigs))?;
        let (first, rest) = stream.split_at(split.unwrap_or(stream.len()));
        self.send_frames(first, chunk)?;
        self.stream.flush()?;
        pause();
        self.send_frames(rest, chunk)?;
        self.end_frames()?;
        self.process_stderr()
    }

    /// AddTextToStore: a text path with `references`; returns its store path. On this
    /// connection it is a temporary root until the connection ends.
    pub fn add_text_to_store(
        &mut self,
        name: &str,
        text: &[u8],
        references: &[String],
    ) -> Result<String> {
        self.write_u64(op::ADD_TEXT_TO_STORE)?;
        self.write_string(name.as_bytes())?;
        self.write_string(text)?;
        self.write_strings(references)?;
        self.process_stderr()?;
        self.read_string()
    }

    /// CollectGarbage: the paths reported or deleted and the bytes freed.
    pub fn collect_garbage(
        &mut self,
        action: u64,
        paths: &[String],
        ignore_liveness: bool,
        max_freed: u64,
    ) -> Result<(Vec<String>, u64)> {
        self.write_u64(op::COLLECT_GARBAGE)?;
        self.write_u64(action)?;
        self.write_strings(paths)?;
        self.write_u64(u64::from(ignore_liveness))?;
        self.write_u64(max_freed)?;
        for _obsolete in 0..3 {
            self.write_u64(0)?;
        }
        self.process_stderr()?;
        let paths = self.read_strings()?;
        let freed = self.read_u64()?;
        let _obsolete = self.read_u64()?;
        Ok((paths, freed))
    }

    /// Writes raw bytes (for malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Changes how long a read may wait.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// Closes the connection at once (both directions).
    pub fn hang_up(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// BuildPaths (op 9) of `paths` (`drv!out` or plain store paths) in normal mode;
    /// returns when the daemon's answer (1) came.
    pub fn build_paths_plain(&mut self, paths: &[&str]) -> Result<()> {
        self.write_u64(9)?;
        self.write_u64(paths.len() as u64)?;
        for p in paths {
            self.write_string(p.as_bytes())?;
        }
        self.write_u64(0)?; // bmNormal
        self.process_stderr()?;
        match self.read_u64()? {
            1 => Ok(()),
            other => Err(WireError::Protocol(format!("BuildPaths answered {other}"))),
        }
    }

    /// Reads logger messages until `STDERR_LAST` (Ok) or `STDERR_ERROR` (Err).
    pub fn process_stderr(&mut self) -> Result<()> {
        loop {
            match self.read_u64()? {
                STDERR_LAST => return Ok(()),
                STDERR_NEXT => {
                    let line = self.read_string()?;
                    self.log.push(line);
                }
                STDERR_ERROR => return Err(self.read_error()),
                STDERR_START_ACTIVITY => {
                    self.activity_messages += 1;
                    let _id = self.read_u64()?;
                    let _level = self.read_u64()?;
                    let _kind = self.read_u64()?;
                    let text = self.read_string()?;
                    self.read_fields()?;
                    let _parent = self.read_u64()?;
                    self.log.push(text);
                }
                STDERR_STOP_ACTIVITY => {
                    self.activity_messages += 1;
                    let _id = self.read_u64()?;
                }
                STDERR_RESULT => {
                    self.activity_messages += 1;
                    let _id = self.read_u64()?;
                    let _kind = self.read_u64()?;
                    self.read_fields()?;
                }
                code @ (STDERR_READ | STDERR_WRITE) => {
                    return Err(WireError::Protocol(format!(
                        "daemon sent {code:#x}, which protocol 1.34 never uses for these ops"
                    )))
                }
                other => {
                    return Err(WireError::Protocol(format!(
                        "unknown logger message {other:#x}"
                    )))
                }
            }
        }
    }

    fn read_error(&mut self) -> WireError {
        if self.negotiated_minor() < 26 {
            // Before 1.26: the message, then an exit status.
            return match self.read_string().and_then(|m| self.read_u64().map(|_| m)) {
                Ok(message) => WireError::Daemon { message },
                Err(e) => e,
            };
        }
        // Protocol >= 1.26: "Error", level, "Error", message, position 0, traces.
        let parse = |client: &mut WorkerClient| -> Result<String> {
            let tag = client.read_string()?;
            if tag != "Error" {
                return Err(WireError::Protocol(format!(
                    "error tag '{tag}', expected 'Error'"
                )));
            }
            let _level = client.read_u64()?;
            let _name = client.read_string()?;
            let mut message = client.read_string()?;
            let _position = client.read_u64()?;
            let traces = client.read_u64()?;
            if traces > MAX_LIST {
                return Err(WireError::Protocol(format!("{traces} error traces")));
            }
            for _ in 0..traces {
                let _position = client.read_u64()?;
                let trace = client.read_string()?;
                message.push_str("\n… ");
                message.push_str(&trace);
            }
            Ok(message)
        };
        match parse(self) {
            Ok(message) => WireError::Daemon { message },
            Err(e) => e,
        }
    }

    fn read_fields(&mut self) -> Result<()> {
        let count = self.read_u64()?;
        if count > MAX_LIST {
            return Err(WireError::Protocol(format!("{count} activity fields")));
        }
        for _ in 0..count {
            match self.read_u64()? {
                0 => {
                    self.read_u64()?;
                }
                1 => {
                    self.read_string()?;
                }
                tag => return Err(WireError::Protocol(format!("activity field type {tag}"))),
            }
        }
        Ok(())
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn write_u64(&mut self, value: u64) -> Result<()> {
        self.stream.write_all(&value.to_le_bytes())?;
        Ok(())
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn write_string(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_u64(bytes.len() as u64)?;
        self.stream.write_all(bytes)?;
        let pad = (8 - bytes.len() % 8) % 8;
        self.stream.write_all(&[0u8; 8][..pad])?;
        Ok(())
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn write_strings(&mut self, items: &[String]) -> Result<()> {
        self.write_u64(items.len() as u64)?;
        for item in items {
            self.write_string(item.as_bytes())?;
        }
        Ok(())
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn read_u64(&mut self) -> Result<u64> {
        let mut buf = [0u8; 8];
        self.stream.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn read_string(&mut self) -> Result<String> {
        let len = self.read_u64()?;
        if len > MAX_STRING {
            return Err(WireError::Protocol(format!("string of {len} bytes")));
        }
        let padded = len.div_ceil(8) * 8;
        let mut buf = vec![0u8; padded as usize];
        self.stream.read_exact(&mut buf)?;
        if buf[len as usize..].iter().any(|&b| b != 0) {
            return Err(WireError::Protocol("non-zero string padding".into()));
        }
        buf.truncate(len as usize);
        String::from_utf8(buf).map_err(|_| WireError::Protocol("string is not UTF-8".into()))
    }

    /// One wire value (for requests the typed methods do not cover).
    pub fn read_strings(&mut self) -> Result<Vec<String>> {
        let count = self.read_u64()?;
        if count > MAX_LIST {
            return Err(WireError::Protocol(format!("list of {count} strings")));
        }
        (0..count).map(|_| self.read_string()).collect()
    }
}

/// A file's NAR and its path info with the content address `nix-store --add` gives it, for
/// adds over the raw protocol.
pub fn ca_nar(name: &str, contents: &[u8]) -> (PathInfo, Vec<u8>) {
    let nar = crate::nar::nar_of_file(contents, false);
    let (path, ca) = crate::nar::source_path("/nix/store", name, &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca;
    (info, nar)
}
