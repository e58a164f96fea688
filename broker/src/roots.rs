//! `FindRoots`: starts the `ward-gc-roots` helper and hands back the read end of its output.
//!
//! The broker neither reads nor parses what the helper writes; it only forks, places the
//! pipe at the helper's stdout, and execs it with the state and store directories from its
//! own configuration. The helper confines itself (see `gc_roots.rs`) before reading anything.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use ward_ipc::broker::MAX_ROOT_FINDERS;

use crate::exec::{self, ExecSpec};

/// The helpers this broker started and has not reaped yet.
#[derive(Debug)]
pub struct RootFinders {
    bin: Option<PathBuf>,
    argv: Vec<CString>,
    running: Vec<Pid>,
}

impl RootFinders {
    /// Helpers of `bin` (none configured: every request fails, naming the missing binary).
    pub fn new(
        bin: Option<&Path>,
        state_dir: &Path,
        store_dir: &str,
        real_store_dir: &str,
    ) -> RootFinders {
        let argv = bin
            .and_then(|bin| {
                [
                    bin.as_os_str().as_bytes(),
                    b"--state-dir",
                    state_dir.as_os_str().as_bytes(),
                    b"--store-dir",
                    store_dir.as_bytes(),
                    b"--real-store-dir",
                    real_store_dir.as_bytes(),
                ]
                .into_iter()
                .map(|a| CString::new(a).ok())
                .collect::<Option<Vec<_>>>()
            })
            .unwrap_or_default();
        RootFinders {
            bin: bin.map(Path::to_owned),
            argv,
            running: Vec::new(),
        }
    }

    /// Starts one helper; returns the read end of its stdout.
    pub fn start(&mut self) -> Result<OwnedFd, String> {
        if self.bin.is_none() || self.argv.is_empty() {
            return Err("the ward-gc-roots helper is not installed next to ward".into());
        }
        if self.running.len() >= MAX_ROOT_FINDERS {
            return Err(format!(
                "{MAX_ROOT_FINDERS} root searches are already running; try again"
            ));
        }
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("pipe: {e}"))?;
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        let fds = [(null.as_raw_fd(), 0), (write.as_raw_fd(), 1), (2, 2)];
        let env: [CString; 0] = [];
        let spec = ExecSpec {
            argv: &self.argv,
            env: Some(&env),
            fds: &fds,
            identity: None,
            // The helper drops to nobody and sets no_new_privs itself, keeping the two
            // capabilities it needs; it must start as root for that.
            no_new_privs: false,
            death_signal: nix::sys::signal::Signal::SIGKILL,
            new_session: false,
            cwd: None,
        };
        let child =
            exec::spawn(&spec, "ward-gc-roots", || Ok(())).map_err(|e| format!("fork: {e}"))?;
        self.running.push(child);
        Ok(read)
    }

    /// Forgets a reaped helper; false if `pid` was not one.
    pub fn reaped(&mut self, pid: Pid) -> bool {
        match self.running.iter().position(|p| *p == pid) {
            Some(at) => {
                self.running.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_helper_the_request_fails_naming_it() {
        let mut finders =
            RootFinders::new(None, Path::new("/nix/var/nix"), "/nix/store", "/nix/store");
        let err = finders.start().unwrap_err();
        assert!(err.contains("ward-gc-roots"), "{err}");
    }
}
