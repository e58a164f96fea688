//! `secret-key-files`, handed over by the broker as descriptors (`--secret-key-fd N`): the
//! broker may open a root-only key file that the store-writer's own user could not, and never
//! reads it; the store-writer parses it here. A key that cannot be read or parsed is reported
//! and left out, so a bad key file costs signatures, not the store.
//!
//! The other descriptor the broker hands over, the store-writer's channel to it
//! (`--broker-fd N`), is adopted here too: this is the one module of the binary that adopts
//! descriptors by number.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;

use ward_proto::signature::SecretKey;

/// A key file larger than this is not a key.
const MAX_KEY_FILE: usize = 4096;

/// Takes the inherited descriptors `fds` (each once, at start-up) and parses the keys.
pub fn load(fds: &[RawFd]) -> Vec<SecretKey> {
    let mut keys = Vec::new();
    for &fd in fds {
        // Only a descriptor that is open may be adopted; /proc says so without touching it.
        if fd < 3 || std::fs::metadata(format!("/proc/self/fd/{fd}")).is_err() {
            tracing::error!(
                fd,
                "--secret-key-fd names no open descriptor; not signing with it"
            );
            continue;
        }
        // SAFETY: the broker placed this descriptor at exec for exactly this purpose
        // (`--secret-key-fd`); it is open (checked above), nothing else in this process
        // refers to it, and `load` runs once at start-up, so the File is its only owner.
        let file = unsafe { File::from_raw_fd(fd) };
        match read_key(&file) {
            Ok(key) => {
                tracing::info!(key = key.name(), "signing what is built and added here");
                keys.push(key);
            }
            Err(e) => tracing::error!("secret key (descriptor {fd}): {e}; not signing with it"),
        }
    }
    keys
}

/// Takes the inherited broker channel `fd` (once, at start-up); `None` if it is not an open
/// socket.
pub fn adopt_broker_channel(fd: RawFd) -> Option<std::os::unix::net::UnixStream> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    if fd < 3 || !meta.file_type().is_socket() {
        tracing::error!(
            fd,
            "--broker-fd names no open socket; collecting garbage is refused"
        );
        return None;
    }
    // SAFETY: the broker placed this socket at exec for exactly this purpose (`--broker-fd`);
    // it is open (checked above), nothing else in this process refers to it, and this runs
    // once at start-up, so the stream is its only owner.
    Some(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
}

/// Reads the key from the start of the file (pread: the broker keeps the descriptor for the
/// next store-writer it starts, whose offset is shared with this one).
fn read_key(file: &File) -> Result<SecretKey, String> {
    let mut buf = vec![0u8; MAX_KEY_FILE + 1];
    let mut len = 0;
    loop {
        let n = file
            .read_at(&mut buf[len..], len as u64)
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
        if len > MAX_KEY_FILE {
            return Err(format!("longer than {MAX_KEY_FILE} bytes"));
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| "not text".to_string())?;
    SecretKey::parse(text.trim()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_read_from_its_start_whatever_the_offset() {
        use std::io::{Seek, Write};
        let key = SecretKey::generate("test-1").unwrap();
        let mut file = tempfile::tempfile().unwrap();
        writeln!(file, "{}", key.to_secret_string()).unwrap();
        // The offset is at the end, as a previous store-writer could have left it.
        file.seek(std::io::SeekFrom::End(0)).unwrap();
        let read = read_key(&file).unwrap();
        assert_eq!(read.name(), "test-1");
        assert_eq!(read.public_key(), key.public_key());

        let mut junk = tempfile::tempfile().unwrap();
        junk.write_all(b"not-a-key").unwrap();
        assert!(read_key(&junk).is_err());
        let mut big = tempfile::tempfile().unwrap();
        big.write_all(&[b'a'; MAX_KEY_FILE + 10]).unwrap();
        assert!(read_key(&big).unwrap_err().contains("longer"));
    }
}
