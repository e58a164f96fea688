//! Temporary GC roots of one channel, kept the way Nix 2.8 keeps a process's: a file
//! `<state>/temproots/<name>` holding full store paths, each followed by a NUL byte, locked
//! exclusively (`flock`) for as long as the roots must live. Nix's garbage collector reads
//! every such file whose lock it cannot take, and deletes the ones it can lock (their owner
//! died), so the roots stay compatible with a `nix-store --gc` run on the same store.
//!
//! Nix names the file after the pid; a store-writer serves many channels, so the name is
//! `<pid>-<channel>` (Nix's collector parses the leading number only for its log lines).
//!
//! Before appending, the shared lock on `<state>/gc.lock` is tried: a running collector holds
//! it exclusively and has already read the temporary roots, so the new root is then sent to
//! the collector's socket (`<state>/gc-socket/socket`, the path and a newline, answered by
//! `1`), as Nix does.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::FlockOperation;
use ward_proto::store_path::{StoreDir, StorePath};

/// How often to retry reaching a collector that holds `gc.lock` but does not answer on its
/// socket (it may be starting or finishing) before giving up.
const GC_SOCKET_ATTEMPTS: u32 = 500;
/// Pause between those attempts.
const GC_SOCKET_RETRY: Duration = Duration::from_millis(10);

/// A temporary root could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("{action} '{path}': {source}")]
pub struct TempRootError {
    /// What was being done.
    pub action: &'static str,
    /// The file at fault.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TempRootError + 'a {
    move |source| TempRootError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The temporary roots of one channel; the file is removed when this is dropped.
#[derive(Debug)]
pub struct TempRoots {
    file_path: PathBuf,
    gc_lock_path: PathBuf,
    gc_socket_path: PathBuf,
    store_dir: StoreDir,
    /// The roots file, locked exclusively; created on the first root.
    file: Option<File>,
    /// This channel's own descriptor on `gc.lock` (flock locks belong to the open file, so
    /// channels must not share one).
    gc_lock: Option<File>,
    /// Connection to a running collector, kept while it runs.
    gc_socket: Option<UnixStream>,
}

impl TempRoots {
    /// The roots of channel `name` of a store with the given state directory.
    pub fn new(state_dir: &Path, store_dir: StoreDir, name: &str) -> TempRoots {
        TempRoots {
            file_path: state_dir.join("temproots").join(name),
            gc_lock_path: state_dir.join("gc.lock"),
            gc_socket_path: state_dir.join("gc-socket").join("socket"),
            store_dir,
            file: None,
            gc_lock: None,
            gc_socket: None,
        }
    }

    /// The roots file (which exists once a root was added).
    #[cfg(test)]
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// Creates and locks the roots file, as Nix's `addTempRoot` does: a file left by an
    /// earlier owner of the name is stale and replaced; if a collector deleted the new file
    /// between its creation and the lock (it then writes a byte into it), start again.
    fn open_file(&mut self) -> Result<&mut File, TempRootError> {
        if self.file.is_none() {
            let path = &self.file_path;
            let file = loop {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(err("removing stale roots file", path)(e)),
                }
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(err("creating roots file", path))?;
                rustix::fs::flock(&file, FlockOperation::LockExclusive)
                    .map_err(|e| err("locking roots file", path)(e.into()))?;
                let len = file
                    .metadata()
                    .map_err(err("getting status of roots file", path))?
                    .len();
                if len == 0 {
                    break file;
                }
            };
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("set above"))
    }

    /// Records `path` as a root of this channel.
    pub fn add(&mut self, path: &StorePath) -> Result<(), TempRootError> {
        let printed = self.store_dir.print(path);
        self.open_file()?;
        if self.gc_lock.is_none() {
            let lock = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.gc_lock_path)
                .map_err(err("opening", &self.gc_lock_path))?;
            self.gc_lock = Some(lock);
        }
        let mut attempts = 0;
        let locked = loop {
            let lock = self.gc_lock.as_ref().expect("opened above");
            match rustix::fs::flock(lock, FlockOperation::NonBlockingLockShared) {
                Ok(()) => break true,
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(err("locking", &self.gc_lock_path)(e.into())),
            }
            // A collector is running: tell it directly.
            match self.tell_collector(&printed) {
                Ok(true) => break false,
                Ok(false) => {
                    attempts += 1;
                    if attempts >= GC_SOCKET_ATTEMPTS {
                        return Err(err(
                            "reaching the garbage collector at",
                            &self.gc_socket_path,
                        )(io::Error::new(
                            ErrorKind::TimedOut,
                            "it holds gc.lock but does not accept roots",
                        )));
                    }
                    std::thread::sleep(GC_SOCKET_RETRY);
                }
                Err(e) => return Err(e),
            }
        };
        let mut record = printed.into_bytes();
        record.push(0);
        let file_path = self.file_path.clone();
        let written = self
            .file
            .as_mut()
            .expect("opened above")
            .write_all(&record)
            .map_err(err("writing roots file", &file_path));
        if locked {
            let lock = self.gc_lock.as_ref().expect("opened above");
            let _ = rustix::fs::flock(lock, FlockOperation::Unlock);
        }
        written
    }

    /// Sends a root to a running collector; `Ok(false)` when it cannot be reached right now
    /// (it may just be exiting), so the caller tries the lock again.
    fn tell_collector(&mut self, printed: &str) -> Result<bool, TempRootError> {
        if self.gc_socket.is_none() {
            match UnixStream::connect(&self.gc_socket_path) {
                Ok(s) => self.gc_socket = Some(s),
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(err("connecting to", &self.gc_socket_path)(e)),
            }
        }
        let socket = self.gc_socket.as_mut().expect("connected above");
        let mut line = printed.as_bytes().to_vec();
        line.push(b'\n');
        let mut ack = [0u8; 1];
        let exchanged = socket
            .write_all(&line)
            .and_then(|()| socket.read_exact(&mut ack));
        match exchanged {
            Ok(()) if ack == *b"1" => Ok(true),
            Ok(()) => Err(err(
                "talking to the garbage collector at",
                &self.gc_socket_path,
            )(io::Error::new(
                ErrorKind::InvalidData,
                "unexpected acknowledgement",
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                self.gc_socket = None;
                Ok(false)
            }
            Err(e) => Err(err(
                "talking to the garbage collector at",
                &self.gc_socket_path,
            )(e)),
        }
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Unlink while still holding the lock, so a collector never takes our name's
            // file for a stale one that it may delete while we still use it.
            if let Err(e) = std::fs::remove_file(&self.file_path) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %self.file_path.display(), error = %e,
                        "could not remove temporary roots file");
                }
            }
            drop(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("temproots")).unwrap();
        (dir, state)
    }

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    #[test]
    fn roots_are_nul_terminated_full_paths_in_a_locked_file_removed_on_drop() {
        let (_dir, state) = setup();
        let mut roots = TempRoots::new(&state, StoreDir::default(), "42-1");
        assert!(!roots.file_path().exists());
        roots
            .add(&path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"))
            .unwrap();
        roots
            .add(&path("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g"))
            .unwrap();
        let file = roots.file_path().to_owned();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f\0\
              /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-g\0"
        );
        // A collector cannot take the lock: the roots are live.
        let other = File::open(&file).unwrap();
        assert_eq!(
            rustix::fs::flock(&other, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        drop(roots);
        assert!(!file.exists());
    }

    #[test]
    fn a_stale_file_of_the_same_name_is_replaced() {
        let (_dir, state) = setup();
        let file = state.join("temproots/7-1");
        std::fs::write(&file, "/nix/store/old\0").unwrap();
        let mut roots = TempRoots::new(&state, StoreDir::default(), "7-1");
        roots
            .add(&path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"))
            .unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f\0"
        );
    }

    #[test]
    fn a_running_collector_is_told_through_its_socket() {
        let (_dir, state) = setup();
        std::fs::create_dir_all(state.join("gc-socket")).unwrap();
        let listener = UnixListener::bind(state.join("gc-socket/socket")).unwrap();
        let gc_lock = File::create(state.join("gc.lock")).unwrap();
        rustix::fs::flock(&gc_lock, FlockOperation::LockExclusive).unwrap();
        let collector = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while byte != *b"\n" {
                conn.read_exact(&mut byte).unwrap();
                got.push(byte[0]);
            }
            conn.write_all(b"1").unwrap();
            got
        });
        let mut roots = TempRoots::new(&state, StoreDir::default(), "9-1");
        roots
            .add(&path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"))
            .unwrap();
        assert_eq!(
            collector.join().unwrap(),
            b"/nix/store/ab3li50xq0nl4q5lxdyinb8w8y13my9s-f\n"
        );
        // It is in the file too, for the next collection.
        assert!(std::fs::read(roots.file_path()).unwrap().ends_with(b"-f\0"));
    }

    #[test]
    fn a_missing_temproots_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut roots = TempRoots::new(dir.path(), StoreDir::default(), "1-1");
        let e = roots
            .add(&path("ab3li50xq0nl4q5lxdyinb8w8y13my9s-f"))
            .unwrap_err();
        assert!(e.to_string().contains("temproots/1-1"), "{e}");
    }
}
