//! The hostile frontend of `frontend/examples/evil_frontend.rs`, put in the frontend's place
//! by a debug build's `WARD_TEST_FRONTEND`: where its report goes, and the daemon options that
//! start it (used by `tests/compromised_frontend.rs` and the attack suite's I rows).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::daemon::{ward_bin, DaemonOptions};

/// A scratch directory for one hostile frontend's report.
#[derive(Debug)]
pub struct EvilFrontend {
    /// Its `name: outcome` lines.
    pub report: PathBuf,
    /// Left by its first round; `done.second` by its second.
    pub done: PathBuf,
    binary: PathBuf,
    _scratch: tempfile::TempDir,
}

impl EvilFrontend {
    /// `None` when the example is not built (`cargo build --workspace --all-targets`).
    pub fn new() -> Option<EvilFrontend> {
        let binary = ward_bin().parent()?.join("examples/evil_frontend");
        if !binary.is_file() {
            return None;
        }
        let scratch = tempfile::Builder::new()
            .prefix("ward-evil-")
            .tempdir()
            .expect("a scratch directory");
        // The hostile frontend runs as ward-frontend and writes its report here.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777))
            .expect("opening the scratch directory");
        Some(EvilFrontend {
            report: scratch.path().join("report"),
            done: scratch.path().join("done"),
            binary,
            _scratch: scratch,
        })
    }

    /// A multi-user daemon whose first frontends are this hostile one.
    pub fn options(&self) -> DaemonOptions {
        let real = ward_bin().with_file_name("ward-frontend");
        DaemonOptions::multi_user()
            .env("WARD_TEST_FRONTEND", self.binary.as_os_str())
            .env("WARD_REAL_FRONTEND", real.as_os_str())
            .env("WARD_EVIL_REPORT", self.report.as_os_str())
            .env("WARD_EVIL_DONE", self.done.as_os_str())
            .env(
                "WARD_EVIL_SYSTEM",
                format!("{}-linux", std::env::consts::ARCH),
            )
    }
}
