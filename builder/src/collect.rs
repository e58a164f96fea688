//! `ward-builder collect`: checks a finished build's outputs and serialises them as NARs.
//!
//! Everything is reached through directory handles (`openat` with `O_NOFOLLOW`, `fstatat`
//! with `AT_SYMLINK_NOFOLLOW`); no path is ever re-resolved from the top. The whole of every
//! output is walked before anything is written, so a refusal writes no NAR at all.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use ward_ipc::builder::CollectSpec;
use ward_proto::nar::{NarError, NarWriter};

/// Why an output cannot be collected: sent as `CollectRefused`.
#[derive(Debug)]
pub struct Refusal {
    /// The output's base name.
    pub output: String,
    /// What is wrong, naming the file inside the output.
    pub reason: String,
}

/// One walked node.
#[derive(Debug)]
enum Node {
    File {
        executable: bool,
        dev: u64,
        ino: u64,
    },
    Symlink(Vec<u8>),
    /// Entries sorted by name bytes.
    Directory(Vec<(Vec<u8>, Node)>),
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Hard-link bookkeeping over all outputs: (dev, ino) → (st_nlink, times seen, a path).
type Links = HashMap<(u64, u64), (u64, u64, String)>;

struct Walker<'a> {
    output: &'a str,
    owner: u32,
    links: Links,
}

impl Walker<'_> {
    fn refuse(&self, path: &str, reason: impl std::fmt::Display) -> Refusal {
        Refusal {
            output: self.output.to_string(),
            reason: format!("'{path}' {reason}"),
        }
    }

    /// Walks the entry `name` of `parent`; `path` is its path for messages.
    fn walk(&mut self, parent: &OwnedFd, name: &[u8], path: &str) -> Result<Node, Refusal> {
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.refuse(path, format_args!("cannot be examined: {e}")))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        let mode = st.st_mode & 0o7777;
        match kind {
            FileType::RegularFile | FileType::Directory | FileType::Symlink => {}
            FileType::Fifo => {
                return Err(self.refuse(path, "is a FIFO, which a store path cannot hold"))
            }
            FileType::Socket => {
                return Err(self.refuse(path, "is a socket, which a store path cannot hold"))
            }
            _ => return Err(self.refuse(path, "is a device, which a store path cannot hold")),
        }
        if st.st_uid != self.owner {
            return Err(self.refuse(
                path,
                format_args!(
                    "is owned by uid {}, not by the build user (uid {})",
                    st.st_uid, self.owner
                ),
            ));
        }
        if kind != FileType::Symlink && mode & 0o022 != 0 {
            return Err(self.refuse(path, "is writable by group or others"));
        }
        match kind {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(parent, name, Vec::new())
                    .map_err(|e| self.refuse(path, format_args!("cannot be read: {e}")))?;
                Ok(Node::Symlink(target.into_bytes()))
            }
            FileType::RegularFile => {
                if mode & 0o400 == 0 {
                    self.chmod(parent, name, mode | 0o400, path)?;
                }
                let key = (st.st_dev, st.st_ino);
                let entry = self
                    .links
                    .entry(key)
                    .or_insert((st.st_nlink, 0, path.to_string()));
                entry.1 += 1;
                Ok(Node::File {
                    executable: mode & 0o100 != 0,
                    dev: st.st_dev,
                    ino: st.st_ino,
                })
            }
            _ => {
                if mode & 0o500 != 0o500 {
                    self.chmod(parent, name, mode | 0o500, path)?;
                }
                let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.refuse(path, format_args!("cannot be opened: {e}")))?;
                let mut names = Vec::new();
                let reader = rustix::fs::Dir::read_from(&dir)
                    .map_err(|e| self.refuse(path, format_args!("cannot be listed: {e}")))?;
                for entry in reader {
                    let entry = entry
                        .map_err(|e| self.refuse(path, format_args!("cannot be listed: {e}")))?;
                    let n = entry.file_name().to_bytes();
                    if n == b"." || n == b".." {
                        continue;
                    }
                    names.push(n.to_vec());
                }
                names.sort();
                let mut entries = Vec::with_capacity(names.len());
                for n in names {
                    let child_path = format!("{path}/{}", String::from_utf8_lossy(&n));
                    let node = self.walk(&dir, &n, &child_path)?;
                    entries.push((n, node));
                }
                Ok(Node::Directory(entries))
            }
        }
    }

    /// Gives the owner read (and search) permission on its own scratch copy, without
    /// following a symlink.
    fn chmod(&self, parent: &OwnedFd, name: &[u8], mode: u32, path: &str) -> Result<(), Refusal> {
        // An O_PATH handle never follows a symlink; chmod through its /proc/self/fd link acts
        // on exactly the inode just examined.
        let handle = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.refuse(path, format_args!("cannot be opened: {e}")))?;
        let kind = rustix::fs::fstat(&handle)
            .map(|st| FileType::from_raw_mode(st.st_mode))
            .map_err(|e| self.refuse(path, format_args!("cannot be examined: {e}")))?;
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Err(self.refuse(path, "changed type while it was examined"));
        }
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
        rustix::fs::chmodat(
            CWD,
            link.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|e| self.refuse(path, format_args!("cannot be made readable: {e}")))
    }
}

/// Walks every output; returns the trees in the spec's order.
fn walk_outputs(spec: &CollectSpec, base: &OwnedFd) -> Result<Vec<Node>, Refusal> {
    let mut links = Links::new();
    let mut trees = Vec::new();
    // Paths of files per output for the hard-link message.
    for output in &spec.outputs {
        let name = output.base_name();
        match rustix::fs::statat(base, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) => {
                return Err(Refusal {
                    output: name.to_string(),
                    reason: "was not produced by the builder".into(),
                })
            }
            Err(e) => {
                return Err(Refusal {
                    output: name.to_string(),
                    reason: format!("cannot be examined: {e}"),
                })
            }
        }
        let mut walker = Walker {
            output: name,
            owner: spec.owner_uid,
            links: std::mem::take(&mut links),
        };
        let tree = walker.walk(base, name.as_bytes(), name)?;
        links = walker.links;
        trees.push(tree);
    }
    for (nlink, seen, path) in links.values() {
        if seen < nlink {
            let output = path.split('/').next().unwrap_or_default().to_string();
            return Err(Refusal {
                output,
                reason: format!(
                    "'{path}' has {nlink} hard links but only {seen} inside the outputs (a link to a file outside them)"
                ),
            });
        }
    }
    Ok(trees)
}

/// Opens the directory the outputs live in.
pub fn open_base(spec: &CollectSpec, top: &OwnedFd) -> std::io::Result<OwnedFd> {
    if spec.from_real_store {
        Ok(rustix::fs::openat(
            CWD,
            spec.real_store_dir.as_str(),
            DIR_FLAGS,
            Mode::empty(),
        )?)
    } else {
        Ok(rustix::fs::openat(top, "store", DIR_FLAGS, Mode::empty())?)
    }
}

/// Checks every output; `Ok` holds what to serialise.
pub fn check(spec: &CollectSpec, base: &OwnedFd) -> Result<Checked, Refusal> {
    walk_outputs(spec, base).map(|trees| Checked { trees })
}

/// The outputs, walked and found registrable.
#[derive(Debug)]
pub struct Checked {
    trees: Vec<Node>,
}

#[derive(Debug)]
enum SerialiseError {
    Nar(NarError),
    Changed(String),
}

impl From<NarError> for SerialiseError {
    fn from(e: NarError) -> Self {
        SerialiseError::Nar(e)
    }
}

fn serialise<W: Write>(
    nar: &mut NarWriter<W>,
    parent: &OwnedFd,
    name: &[u8],
    node: &Node,
) -> Result<(), SerialiseError> {
    let changed =
        |what: &str| SerialiseError::Changed(format!("{} {what}", String::from_utf8_lossy(name)));
    match node {
        Node::Symlink(target) => nar.symlink(target)?,
        Node::File {
            executable,
            dev,
            ino,
        } => {
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|_| changed("cannot be opened"))?;
            let st = rustix::fs::fstat(&fd).map_err(|_| changed("cannot be examined"))?;
            if st.st_dev != *dev || st.st_ino != *ino {
                return Err(changed("changed since it was checked"));
            }
            let size = u64::try_from(st.st_size).map_err(|_| changed("has a negative size"))?;
            nar.file(*executable, size, std::fs::File::from(fd))?;
        }
        Node::Directory(entries) => {
            let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
                .map_err(|_| changed("cannot be opened"))?;
            nar.directory()?;
            for (entry, child) in entries {
                nar.entry(entry)?;
                serialise(nar, &dir, entry, child)?;
            }
            nar.end_directory()?;
        }
    }
    Ok(())
}

/// Writes each output's NAR into its pipe, one thread per output so the reader may drain
/// the pipes in any order. Returns false if any write failed (the reader gave up).
pub fn write_nars(
    spec: &CollectSpec,
    base: &OwnedFd,
    checked: Checked,
    pipes: Vec<OwnedFd>,
) -> bool {
    std::thread::scope(|scope| {
        let handles: Vec<_> = checked
            .trees
            .iter()
            .zip(spec.outputs.iter())
            .zip(pipes)
            .map(|((tree, output), pipe)| {
                let base = base.as_fd();
                scope.spawn(move || {
                    let base = match base.try_clone_to_owned() {
                        Ok(b) => b,
                        Err(_) => return false,
                    };
                    let out = BufWriter::with_capacity(64 << 10, std::fs::File::from(pipe));
                    let mut nar = NarWriter::new(out);
                    let result = serialise(&mut nar, &base, output.base_name().as_bytes(), tree)
                        .and_then(|()| nar.finish().map(drop).map_err(SerialiseError::from));
                    match result {
                        Ok(()) => true,
                        // The reader gave up (EPIPE): quietly.
                        Err(SerialiseError::Nar(NarError::Write { .. })) => false,
                        Err(SerialiseError::Nar(e)) => {
                            eprintln!("ward-builder collect: {}: {e}", output.base_name());
                            false
                        }
                        Err(SerialiseError::Changed(what)) => {
                            eprintln!("ward-builder collect: {}: {what}", output.base_name());
                            false
                        }
                    }
                })
            })
            .collect();
        // Threads not joined here are joined when the scope ends.
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}
