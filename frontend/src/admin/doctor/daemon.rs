//! Checks 1 and 2: the daemon answers the worker-protocol handshake on its socket, and the
//! socket and the directories above it have modes and owners no other user can abuse.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_proto::worker::{STDERR_ERROR, STDERR_LAST, STDERR_NEXT, WORKER_MAGIC_1, WORKER_MAGIC_2};

use super::report::{Check, Finding, Fix};
use super::{quote, Context};

/// How long the daemon gets for each step of the handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Protocol 1.34, what Nix 2.8 announces.
const CLIENT_VERSION: u64 = (1 << 8) | 34;
/// The longest string the probe reads from the daemon.
const MAX_STRING: u64 = 64 * 1024;
/// How many log lines before the handshake's end the probe reads.
const MAX_LOG_LINES: usize = 64;

/// What connecting to the socket showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The handshake completed.
    Answered {
        /// The daemon's protocol version (`1 << 8 | minor`).
        version: u64,
        /// The version string it sent (≥ 1.33), e.g. `2.8.0 (ward 0.1.0)`.
        nix_version: Option<String>,
        /// The error it sent at the end of the handshake instead of accepting this client.
        refused: Option<String>,
    },
    /// No file at the socket path; whether its directory is missing too.
    Missing { dir_missing: bool },
    /// Something other than a socket is there.
    NotSocket { kind: &'static str },
    /// A socket file nobody listens on.
    Refused,
    /// The kernel refused this user; `blocker` is the directory or socket in the way.
    Denied { blocker: PathBuf },
    /// Connected, but the handshake failed (closed, reset, timed out).
    Broken(String),
    /// Something answered that is not a Nix daemon.
    WrongMagic(u64),
    /// Any other failure.
    Other(String),
}

impl Probe {
    /// Whether a daemon serves on the socket.
    pub fn reachable(&self) -> bool {
        matches!(self, Probe::Answered { .. })
    }

    /// Whether the daemon that answered is ward (its version string says so).
    pub fn is_ward(&self) -> Option<bool> {
        match self {
            Probe::Answered {
                nix_version: Some(v),
                ..
            } => Some(v.contains("(ward")),
            _ => None,
        }
    }
}

/// Connects to `socket` and does the client side of the handshake.
pub fn probe(socket: &Path) -> Probe {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir_missing = socket.parent().is_some_and(|d| !d.exists());
            return Probe::Missing { dir_missing };
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Probe::Denied {
                blocker: first_unsearchable(socket).unwrap_or_else(|| socket.to_path_buf()),
            }
        }
        Err(e) => return Probe::Other(format!("checking '{}': {e}", socket.display())),
    };
    let file_type = meta.file_type();
    if !file_type.is_socket() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_symlink() {
            "a symbolic link"
        } else if file_type.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Probe::NotSocket { kind };
    }
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => Probe::Refused,
                Some(libc::EACCES) | Some(libc::EPERM) => Probe::Denied {
                    blocker: first_unsearchable(socket).unwrap_or_else(|| socket.to_path_buf()),
                },
                Some(libc::ENOENT) => Probe::Missing { dir_missing: false },
                _ => Probe::Other(format!("connecting to '{}': {e}", socket.display())),
            }
        }
    };
    match handshake(stream) {
        Ok(probe) => probe,
        Err(e) => Probe::Broken(e),
    }
}

/// The first directory above `path` this process may not search, or `path` itself when it
/// may not write it (a socket needs write permission to connect).
fn first_unsearchable(path: &Path) -> Option<PathBuf> {
    use nix::unistd::{access, AccessFlags};
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        if access(dir, AccessFlags::X_OK).is_err() {
            return Some(dir.to_path_buf());
        }
    }
    access(path, AccessFlags::W_OK)
        .is_err()
        .then(|| path.to_path_buf())
}

fn handshake(mut stream: UnixStream) -> Result<Probe, String> {
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(fail("setting a timeout"))?;
    stream
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(fail("setting a timeout"))?;
    stream
        .write_all(&WORKER_MAGIC_1.to_le_bytes())
        .map_err(fail("sending the client magic"))?;
    let magic = read_u64(&mut stream).map_err(fail("reading the daemon's magic"))?;
    if magic != WORKER_MAGIC_2 {
        return Ok(Probe::WrongMagic(magic));
    }
    let version = read_u64(&mut stream).map_err(fail("reading the daemon's version"))?;
    if version >> 8 != 1 {
        return Err(format!(
            "the daemon announced protocol {version:#x}, not 1.x"
        ));
    }
    let minor = (version & 0xff).min(CLIENT_VERSION & 0xff);
    for word in [CLIENT_VERSION, 0, 0] {
        stream
            .write_all(&word.to_le_bytes())
            .map_err(fail("sending the client version"))?;
    }
    let nix_version = if minor >= 33 {
        Some(read_string(&mut stream).map_err(fail("reading the daemon's version string"))?)
    } else {
        None
    };
    let mut refused = None;
    for _ in 0..MAX_LOG_LINES {
        match read_u64(&mut stream).map_err(fail("reading the end of the handshake"))? {
            STDERR_LAST => break,
            STDERR_NEXT => {
                read_string(&mut stream).map_err(fail("reading a log line"))?;
            }
            STDERR_ERROR => {
                refused = Some(read_error(&mut stream, minor).map_err(fail("reading an error"))?);
                break;
            }
            other => {
                return Err(format!(
                    "the daemon sent message {other:#x} before the end of the handshake"
                ))
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(Probe::Answered {
        version,
        nix_version,
        refused,
    })
}

/// Wraps an I/O error with what was being done.
fn fail(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    r.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_string(r: &mut impl Read) -> io::Result<String> {
    let len = read_u64(r)?;
    if len > MAX_STRING {
        return Err(io::Error::other(format!("a string of {len} bytes")));
    }
    let padded = len.div_ceil(8) * 8;
    let mut buf = vec![0u8; usize::try_from(padded).map_err(io::Error::other)?];
    r.read_exact(&mut buf)?;
    buf.truncate(usize::try_from(len).map_err(io::Error::other)?);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The message of a `STDERR_ERROR`.
fn read_error(r: &mut impl Read, minor: u64) -> io::Result<String> {
    if minor >= 26 {
        let _type = read_string(r)?;
        let _level = read_u64(r)?;
        let _name = read_string(r)?;
        read_string(r)
    } else {
        read_string(r)
    }
}

/// Check 1: the daemon answers.
pub fn check_daemon(ctx: &Context) -> Vec<Finding> {
    let socket = &ctx.socket;
    let shown = socket.display();
    let c = Check::Daemon;
    let start_command = ctx.start_command();
    let finding = match &ctx.probe {
        Probe::Answered {
            version,
            nix_version,
            refused,
        } => {
            let who = nix_version.as_deref().unwrap_or("a daemon before Nix 2.4");
            let base = format!(
                "the daemon answers on '{shown}': protocol 1.{}, {who}",
                version & 0xff
            );
            match refused {
                Some(why) => Finding::warning(
                    c,
                    "refused",
                    format!("{base}, but it refuses this user: {why}"),
                )
                .command(format!(
                    "add this user to 'allowed-users' in {}",
                    ctx.conf_file.display()
                )),
                None => Finding::ok(c, base),
            }
        }
        Probe::Missing { dir_missing } => {
            let what = if *dir_missing {
                format!(
                    "neither the socket '{shown}' nor its directory exists: no daemon and no \
                     socket unit runs"
                )
            } else {
                format!("the socket '{shown}' does not exist: no daemon and no socket unit runs")
            };
            let mut f = Finding::error(c, "missing", what).command(start_command);
            if ctx.target.systemd_running() && ctx.units_installed() {
                f = f.fixable(Fix::StartSocketUnit);
            }
            f
        }
        Probe::NotSocket { kind } => Finding::error(
            c,
            "not-socket",
            format!(
                "'{shown}' is {kind}, not a socket: the daemon refuses to replace it and clients \
                 cannot connect"
            ),
        )
        .command(format!(
            "mv {} {}.moved-aside",
            quote(socket),
            quote(socket)
        )),
        Probe::Refused => {
            let restart = ctx.target.systemd_running();
            let command = if restart {
                format!(
                    "rm {} && systemctl restart nix-daemon.socket",
                    quote(socket)
                )
            } else {
                format!("rm {} && {start_command}", quote(socket))
            };
            Finding::error(
                c,
                "stale",
                format!(
                    "stale socket file '{shown}': it exists but nobody listens on it (connection \
                     refused); the daemon died without removing it"
                ),
            )
            .command(command)
            .fixable(Fix::RemoveStaleSocket {
                path: socket.clone(),
                restart_unit: restart,
            })
        }
        Probe::Denied { blocker } => {
            let command = if blocker == socket {
                format!("chmod 0666 {}", quote(socket))
            } else {
                format!("chmod o+x {}", quote(blocker))
            };
            Finding::error(
                c,
                "denied",
                format!(
                    "permission denied connecting to '{shown}': '{}' does not let this user \
                     through",
                    blocker.display()
                ),
            )
            .command(command)
        }
        Probe::Broken(why) => Finding::error(
            c,
            "broken",
            format!(
                "something accepts connections on '{shown}' but the handshake failed ({why}); \
                 if systemd holds the socket, the service fails to start"
            ),
        )
        .command(if ctx.target.systemd_running() {
            "journalctl -u nix-daemon.service -n 50".to_owned()
        } else {
            format!("check the daemon's log; restart it with '{start_command}'")
        }),
        Probe::WrongMagic(magic) => Finding::error(
            c,
            "wrong-magic",
            format!(
                "the program listening on '{shown}' is not a Nix daemon (it answered {magic:#x})"
            ),
        )
        .command(format!("fuser -v {}", quote(socket))),
        Probe::Other(why) => Finding::error(c, "other", why.clone()).command(start_command),
    };
    vec![finding]
}

/// What is wrong with a socket's mode, if anything: everyone must be able to connect
/// (access is decided by peer credentials, as in Nix).
pub fn socket_mode_problem(mode: u32) -> Option<String> {
    let mode = mode & 0o7777;
    (mode & 0o666 != 0o666).then(|| {
        format!(
            "has mode {mode:04o}: users other than its owner cannot connect (the daemon decides \
             access by allowed-users; the socket must be 0666)"
        )
    })
}

/// What is wrong with the socket's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirProblem {
    /// Owned by someone other than the daemon's user: its owner can replace the socket.
    Owner,
    /// Writable by its group or everyone, who could put their own socket there.
    Writable,
    /// Not searchable by other users, so clients cannot reach the socket.
    NotSearchable,
}

/// Classifies the socket's directory: it must be the daemon user's, writable by nobody else,
/// and (when clients are other users) searchable by everyone. Returns the problem and its
/// wording (after the directory's name).
pub fn socket_dir_problem(
    mode: u32,
    uid: u32,
    expected_uid: u32,
    expected_owner: &str,
    clients_are_others: bool,
) -> Option<(DirProblem, String)> {
    let mode = mode & 0o7777;
    if uid != expected_uid {
        return Some((
            DirProblem::Owner,
            format!(
                "is owned by uid {uid}, not {expected_owner}: its owner can replace the socket"
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Some((
            DirProblem::Writable,
            format!(
                "has mode {mode:04o}: writable by {}, who could replace the socket with their own",
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                }
            ),
        ));
    }
    if clients_are_others && mode & 0o001 == 0 {
        return Some((
            DirProblem::NotSearchable,
            format!("has mode {mode:04o}: other users cannot reach the socket in it"),
        ));
    }
    None
}

/// Check 2: the socket and its directory.
pub fn check_socket(ctx: &Context) -> Vec<Finding> {
    let c = Check::Socket;
    let mut out = Vec::new();
    let socket = &ctx.socket;
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if meta.file_type().is_socket() {
            if let Some(problem) = socket_mode_problem(meta.mode()) {
                out.push(
                    Finding::error(
                        c,
                        socket.display().to_string(),
                        format!("the socket '{}' {problem}", socket.display()),
                    )
                    .command(format!("chmod 0666 {}", quote(socket)))
                    .fixable(Fix::Chmod {
                        path: socket.clone(),
                        mode: 0o666,
                    }),
                );
            }
        }
    }
    let Some(dir) = socket.parent() else {
        return out;
    };
    let (expected_uid, expected_owner) = if ctx.multi_user {
        (0, "root".to_owned())
    } else {
        (ctx.euid, ctx.user_name(ctx.euid))
    };
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if meta.file_type().is_symlink() {
            out.push(
                Finding::warning(
                    c,
                    dir.display().to_string(),
                    format!(
                        "the socket's directory '{}' is a symbolic link: whoever owns its \
                         target controls the socket",
                        dir.display()
                    ),
                )
                .command(format!("ls -ld {}", quote(dir))),
            );
        } else if let Some((problem, why)) = socket_dir_problem(
            meta.mode(),
            meta.uid(),
            expected_uid,
            &expected_owner,
            ctx.multi_user,
        ) {
            let shown = dir.display();
            let group = ctx
                .target
                .groups()
                .into_iter()
                .find(|g| g.gid == meta.gid())
                .map(|g| g.name)
                .unwrap_or_else(|| meta.gid().to_string());
            let finding = match problem {
                DirProblem::Owner => Finding::error(
                    c,
                    shown.to_string(),
                    format!("the socket's directory '{shown}' {why}"),
                )
                .command(format!("chown {expected_owner} {}", quote(dir)))
                .fixable(Fix::Chown {
                    paths: vec![dir.to_path_buf()],
                    uid: expected_uid,
                    gid: meta.gid(),
                    owner: expected_owner.clone(),
                }),
                // Only the write bits go: who may reach the socket stays as it was.
                DirProblem::Writable => {
                    let mode = meta.mode() & 0o7777 & !0o022;
                    Finding::error(
                        c,
                        shown.to_string(),
                        format!("the socket's directory '{shown}' (group '{group}') {why}"),
                    )
                    .command(format!("chmod {mode:04o} {}", quote(dir)))
                    .fixable(Fix::Chmod {
                        path: dir.to_path_buf(),
                        mode,
                    })
                }
                // Perhaps on purpose (Debian gives only group nix-users the socket): not
                // changed by itself.
                DirProblem::NotSearchable => Finding::warning(
                    c,
                    shown.to_string(),
                    format!(
                        "the socket's directory '{shown}' {why} (only root and group \
                         '{group}' can; if that is on purpose, as with Debian's nix-users, \
                         ward's way is mode 0755 and allowed-users = @{group})"
                    ),
                )
                .command(format!("chmod 0755 {}", quote(dir))),
            };
            out.push(finding);
        }
    }
    // Every directory above: others must be able to search it (multi-user), and nobody but
    // root may rename things in it (unless it is sticky, like /tmp).
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if ctx.multi_user && mode & 0o001 == 0 {
            out.push(
                Finding::error(
                    c,
                    ancestor.display().to_string(),
                    format!(
                        "'{}' (mode {mode:04o}) is not searchable by other users: clients \
                         cannot reach the socket '{}'",
                        ancestor.display(),
                        socket.display()
                    ),
                )
                .command(format!("chmod o+x {}", quote(ancestor))),
            );
        }
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            out.push(
                Finding::error(
                    c,
                    ancestor.display().to_string(),
                    format!(
                        "'{}' (mode {mode:04o}) is writable by everyone without the sticky bit: \
                         anyone can move the socket's directory aside and put their own",
                        ancestor.display()
                    ),
                )
                .command(format!("chmod o-w {}", quote(ancestor))),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn socket_modes() {
        assert!(socket_mode_problem(0o140666).is_none());
        assert!(socket_mode_problem(0o777).is_none());
        let problem = socket_mode_problem(0o600).unwrap();
        assert!(problem.contains("0600"), "{problem}");
        assert!(socket_mode_problem(0o660).is_some());
    }

    #[test]
    fn socket_directory_modes_and_owners() {
        assert!(socket_dir_problem(0o40755, 0, 0, "root", true).is_none());
        let (problem, why) = socket_dir_problem(0o777, 0, 0, "root", true).unwrap();
        assert_eq!(problem, DirProblem::Writable);
        assert!(why.contains("everyone"), "{why}");
        let (_, why) = socket_dir_problem(0o775, 0, 0, "root", true).unwrap();
        assert!(why.contains("its group"), "{why}");
        let (problem, why) = socket_dir_problem(0o755, 1000, 0, "root", true).unwrap();
        assert_eq!(problem, DirProblem::Owner);
        assert!(why.contains("uid 1000"), "{why}");
        assert_eq!(
            socket_dir_problem(0o750, 0, 0, "root", true).unwrap().0,
            DirProblem::NotSearchable
        );
        // A single-user daemon's directory may be private.
        assert!(socket_dir_problem(0o700, 1000, 1000, "alice", false).is_none());
    }

    #[test]
    fn probing_tells_missing_stale_and_not_a_socket_apart() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        assert_eq!(probe(&socket), Probe::Missing { dir_missing: false });
        assert_eq!(
            probe(&dir.path().join("gone/socket")),
            Probe::Missing { dir_missing: true }
        );
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(
            probe(&socket),
            Probe::NotSocket {
                kind: "a regular file"
            }
        );
        std::fs::remove_file(&socket).unwrap();
        drop(UnixListener::bind(&socket).unwrap());
        assert_eq!(probe(&socket), Probe::Refused);
    }

    #[test]
    fn probing_a_fake_daemon_reads_its_version_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            for refuse in [false, true] {
                let (mut s, _) = listener.accept().unwrap();
                assert_eq!(read_u64(&mut s).unwrap(), WORKER_MAGIC_1);
                s.write_all(&WORKER_MAGIC_2.to_le_bytes()).unwrap();
                s.write_all(&((1u64 << 8) | 38).to_le_bytes()).unwrap();
                for _ in 0..3 {
                    read_u64(&mut s).unwrap();
                }
                let string = |s: &mut UnixStream, text: &str| {
                    s.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
                    let mut bytes = text.as_bytes().to_vec();
                    bytes.resize(text.len().div_ceil(8) * 8, 0);
                    s.write_all(&bytes).unwrap();
                };
                string(&mut s, "2.8.0 (ward 0.1.0)");
                if refuse {
                    s.write_all(&STDERR_ERROR.to_le_bytes()).unwrap();
                    string(&mut s, "Error");
                    s.write_all(&0u64.to_le_bytes()).unwrap();
                    string(&mut s, "");
                    string(&mut s, "user 'x' is not in allowed-users");
                } else {
                    s.write_all(&STDERR_NEXT.to_le_bytes()).unwrap();
                    string(&mut s, "hello");
                    s.write_all(&STDERR_LAST.to_le_bytes()).unwrap();
                }
            }
        });
        let first = probe(&socket);
        assert_eq!(
            first,
            Probe::Answered {
                version: (1 << 8) | 38,
                nix_version: Some("2.8.0 (ward 0.1.0)".into()),
                refused: None
            }
        );
        assert_eq!(first.is_ward(), Some(true));
        match probe(&socket) {
            Probe::Answered {
                refused: Some(why), ..
            } => assert!(why.contains("allowed-users"), "{why}"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_listener_that_is_not_a_nix_daemon_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"HTTP/1.1").unwrap();
        });
        assert_eq!(
            probe(&socket),
            Probe::WrongMagic(u64::from_le_bytes(*b"HTTP/1.1"))
        );
        server.join().unwrap();
    }
}
