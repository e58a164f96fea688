//! The `nix.conf` syntax, as Nix reads it:
//!
//! * one directive per line; `#` starts a comment that runs to the end of the line;
//! * a line is split into whitespace-separated words; blank lines are skipped;
//! * `NAME = VALUE...`: the `=` must be a word of its own; the value is the remaining words
//!   joined by single spaces (so it may be empty);
//! * `include PATH` reads another file in place (an error if it does not exist) and
//!   `!include PATH` does the same but skips a missing file; a relative PATH is relative to
//!   the including file's directory. In `NIX_CONFIG` only absolute paths work (Nix 2.8 fails
//!   on relative ones too).
//!
//! Unlike Nix, ward refuses include loops and deep nesting instead of recursing until the stack
//! runs out, caps the size of a file, and reports the line number of a bad line.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigWarning, Origin};
use super::kinds::shorten;
use super::value::{canon_path, dir_of, tokenize};

/// How deeply `include`s may nest.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// Largest configuration file read, in bytes.
pub const MAX_FILE_SIZE: u64 = 8 * 1024 * 1024;

/// Receives each `NAME = VALUE` assignment in file order (includes expanded in place).
pub type Sink<'a> = &'a mut dyn FnMut(&Origin, &str, &str) -> Result<(), ConfigError>;

/// Where the text being read came from.
#[derive(Debug, Clone)]
enum Source<'p> {
    /// A file with this canonical absolute path.
    File(&'p str),
    /// The `NIX_CONFIG` environment variable.
    Env,
}

impl Source<'_> {
    fn origin(&self, line: usize) -> Origin {
        match self {
            Source::File(path) => Origin::File {
                path: PathBuf::from(path),
                line,
            },
            Source::Env => Origin::Env { line },
        }
    }
}

/// Reads configuration text and include files, feeding assignments to a sink.
pub struct ConfigReader<'a, 'w> {
    sink: Sink<'a>,
    warnings: &'w mut Vec<ConfigWarning>,
    /// (device, inode) of every file currently being read, to refuse include loops.
    open_files: Vec<(u64, u64)>,
}

impl std::fmt::Debug for ConfigReader<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigReader")
            .field("open_files", &self.open_files)
            .finish()
    }
}

/// The result of trying to read a file.
enum ReadOutcome {
    Text(Vec<u8>, (u64, u64)),
    Missing,
}

impl<'a, 'w> ConfigReader<'a, 'w> {
    /// A reader that sends assignments to `sink` and non-fatal problems to `warnings`.
    pub fn new(sink: Sink<'a>, warnings: &'w mut Vec<ConfigWarning>) -> Self {
        ConfigReader {
            sink,
            warnings,
            open_files: Vec::new(),
        }
    }

    /// Reads the main configuration file at `path` (absolute). A missing file is fine (Nix
    /// runs without one); one that cannot be read is skipped with a warning.
    pub fn read_main_file(&mut self, path: &str) -> Result<(), ConfigError> {
        let Some(path) = canon_path(path) else {
            return Err(ConfigError::Read {
                path: PathBuf::from(path),
                source: std::io::Error::new(ErrorKind::InvalidInput, "not an absolute path"),
            });
        };
        match self.read_file(Path::new(&path))? {
            Some(ReadOutcome::Text(bytes, identity)) => self.apply_file(&path, &bytes, identity, 0),
            Some(ReadOutcome::Missing) | None => Ok(()),
        }
    }

    /// Applies the contents of the `NIX_CONFIG` environment variable.
    pub fn read_env(&mut self, contents: &[u8]) -> Result<(), ConfigError> {
        self.apply_bytes(contents, &Source::Env, 0)
    }

    /// Opens and reads `path`, capped at [`MAX_FILE_SIZE`]. `Ok(None)` means it could not be
    /// read for a reason other than not existing, and a warning was recorded.
    fn read_file(&mut self, path: &Path) -> Result<Option<ReadOutcome>, ConfigError> {
        let unreadable = |warnings: &mut Vec<ConfigWarning>, error: std::io::Error| {
            warnings.push(ConfigWarning::Unreadable {
                path: path.to_path_buf(),
                error: error.to_string(),
            });
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Ok(Some(ReadOutcome::Missing));
            }
            Err(error) => {
                unreadable(self.warnings, error);
                return Ok(None);
            }
        };
        let identity = match file.metadata() {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(error) => {
                unreadable(self.warnings, error);
                return Ok(None);
            }
        };
        let mut bytes = Vec::new();
        if let Err(error) = file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes) {
            unreadable(self.warnings, error);
            return Ok(None);
        }
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(ConfigError::FileTooLarge {
                path: path.to_path_buf(),
                limit: MAX_FILE_SIZE,
            });
        }
        Ok(Some(ReadOutcome::Text(bytes, identity)))
    }

    fn apply_file(
        &mut self,
        path: &str,
        bytes: &[u8],
        identity: (u64, u64),
        depth: usize,
    ) -> Result<(), ConfigError> {
        self.open_files.push(identity);
        let result = self.apply_bytes(bytes, &Source::File(path), depth);
        self.open_files.pop();
        result
    }

    fn apply_bytes(
        &mut self,
        contents: &[u8],
        source: &Source<'_>,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (index, raw_line) in contents.split(|&byte| byte == b'\n').enumerate() {
            let origin = || source.origin(index + 1);
            // Everything from the first '#' on is a comment; only the rest must be UTF-8.
            let code = match raw_line.iter().position(|&byte| byte == b'#') {
                Some(hash) => &raw_line[..hash],
                None => raw_line,
            };
            let line = std::str::from_utf8(code).map_err(|_| ConfigError::Syntax {
                origin: origin(),
                line: String::from_utf8_lossy(code).trim().to_owned(),
            })?;
            let words: Vec<&str> = tokenize(line).collect();
            let syntax_error = || ConfigError::Syntax {
                origin: origin(),
                line: shorten(line.trim()),
            };
            match words.as_slice() {
                [] => {}
                [_] => return Err(syntax_error()),
                [keyword @ ("include" | "!include"), target] => {
                    self.include(target, *keyword == "!include", source, origin(), depth)?;
                }
                ["include" | "!include", ..] => return Err(syntax_error()),
                [name, "=", value @ ..] => (self.sink)(&origin(), name, &value.join(" "))?,
                _ => return Err(syntax_error()),
            }
        }
        Ok(())
    }

    fn include(
        &mut self,
        target: &str,
        ignore_missing: bool,
        source: &Source<'_>,
        origin: Origin,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let joined = match source {
            _ if target.starts_with('/') => target.to_owned(),
            Source::File(including) => format!("{}/{target}", dir_of(including)),
            Source::Env => {
                return Err(ConfigError::RelativeIncludeInEnv {
                    origin,
                    path: shorten(target),
                });
            }
        };
        let path = canon_path(&joined).unwrap_or(joined);
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(ConfigError::IncludeTooDeep {
                origin,
                path: PathBuf::from(path),
                limit: MAX_INCLUDE_DEPTH,
            });
        }
        match self.read_file(Path::new(&path))? {
            Some(ReadOutcome::Text(bytes, identity)) => {
                if self.open_files.contains(&identity) {
                    return Err(ConfigError::IncludeLoop {
                        origin,
                        path: PathBuf::from(path),
                    });
                }
                self.apply_file(&path, &bytes, identity, depth + 1)
            }
            Some(ReadOutcome::Missing) if ignore_missing => Ok(()),
            Some(ReadOutcome::Missing) => Err(ConfigError::IncludeNotFound {
                origin,
                path: PathBuf::from(path),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// One assignment as `(origin, name, value)` strings.
    type Seen = (String, String, String);

    /// Reads `main` (and what it includes) and returns the assignments and the warnings.
    fn read(main: &Path) -> Result<(Vec<Seen>, Vec<ConfigWarning>), ConfigError> {
        let mut seen = Vec::new();
        let mut warnings = Vec::new();
        let mut sink = |origin: &Origin, name: &str, value: &str| {
            seen.push((origin.to_string(), name.to_owned(), value.to_owned()));
            Ok(())
        };
        ConfigReader::new(&mut sink, &mut warnings).read_main_file(main.to_str().unwrap())?;
        Ok((seen, warnings))
    }

    fn read_env(text: &str) -> Result<Vec<Seen>, ConfigError> {
        let mut seen = Vec::new();
        let mut warnings = Vec::new();
        let mut sink = |origin: &Origin, name: &str, value: &str| {
            seen.push((origin.to_string(), name.to_owned(), value.to_owned()));
            Ok(())
        };
        ConfigReader::new(&mut sink, &mut warnings).read_env(text.as_bytes())?;
        assert!(warnings.is_empty());
        Ok(seen)
    }

    fn triple(origin: &str, name: &str, value: &str) -> Seen {
        (origin.to_owned(), name.to_owned(), value.to_owned())
    }

    #[test]
    fn basic_syntax() {
        let seen = read_env(
            "# a comment\n\n  keep-failed = true\nsubstituters =  a\tb   c # trailing\n\
             empty =\ncomment-in-value = x#y\r\nlast = 1",
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                triple("NIX_CONFIG:3", "keep-failed", "true"),
                triple("NIX_CONFIG:4", "substituters", "a b c"),
                triple("NIX_CONFIG:5", "empty", ""),
                triple("NIX_CONFIG:6", "comment-in-value", "x"),
                triple("NIX_CONFIG:7", "last", "1"),
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("ok = 1\nlonely\n", 2),
            ("a=b\n", 1),
            ("a= b\n", 1),
            ("a =b c\n", 1),
            ("\n\na b c\n", 3),
            ("include\n", 1),
            ("include a b\n", 1),
            ("!include\n", 1),
            ("= value\n", 1),
        ] {
            let err = read_env(text).unwrap_err();
            match &err {
                ConfigError::Syntax {
                    origin: Origin::Env { line: got },
                    ..
                } => {
                    assert_eq!(*got, line, "{text:?}");
                }
                other => panic!("{text:?}: {other}"),
            }
            assert!(
                err.to_string().starts_with(&format!("NIX_CONFIG:{line}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn comment_only_non_utf8_is_fine_but_not_in_code() {
        let mut seen = Vec::new();
        let mut warnings = Vec::new();
        let mut sink = |_: &Origin, name: &str, value: &str| {
            seen.push(format!("{name}={value}"));
            Ok(())
        };
        let mut reader = ConfigReader::new(&mut sink, &mut warnings);
        reader.read_env(b"a = 1 # caf\xe9\n").unwrap();
        let err = reader.read_env(b"a = caf\xe9\n").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Syntax {
                origin: Origin::Env { line: 1 },
                ..
            }
        ));
        assert_eq!(seen, ["a=1"]);
    }

    #[test]
    fn missing_main_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let (seen, warnings) = read(&dir.path().join("nix.conf")).unwrap();
        assert!(seen.is_empty() && warnings.is_empty());
    }

    #[test]
    fn includes_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(
            dir.path().join("sub/inner.conf"),
            "cores = 7\ninclude ../third.conf\n",
        )
        .unwrap();
        fs::write(dir.path().join("third.conf"), "timeout = 3\n").unwrap();
        let main = dir.path().join("nix.conf");
        fs::write(
            &main,
            "a = 1\ninclude sub/inner.conf\n!include nowhere.conf\nb = 2\n",
        )
        .unwrap();
        let (seen, warnings) = read(&main).unwrap();
        let names: Vec<&str> = seen.iter().map(|(_, name, _)| name.as_str()).collect();
        assert_eq!(names, ["a", "cores", "timeout", "b"]);
        assert!(seen[1].0.ends_with("/sub/inner.conf:1"), "{}", seen[1].0);
        assert!(seen[2].0.ends_with("/third.conf:1"), "{}", seen[2].0);
        assert!(warnings.is_empty());
    }

    #[test]
    fn missing_include_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("nix.conf");
        fs::write(&main, "a = 1\ninclude missing.conf\n").unwrap();
        let err = read(&main).unwrap_err();
        match &err {
            ConfigError::IncludeNotFound {
                origin: Origin::File { line: 2, .. },
                path,
            } => {
                assert!(path.ends_with("missing.conf"));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("missing.conf"), "{err}");
        assert!(err.to_string().contains("nix.conf:2"), "{err}");
    }

    #[test]
    fn include_loop_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.conf"), "x = 1\ninclude b.conf\n").unwrap();
        fs::write(dir.path().join("b.conf"), "include ./a.conf\n").unwrap();
        let err = read(&dir.path().join("a.conf")).unwrap_err();
        match &err {
            ConfigError::IncludeLoop {
                origin: Origin::File { path, line: 1 },
                path: target,
            } => {
                assert!(path.ends_with("b.conf"));
                assert!(target.ends_with("a.conf"));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn self_include_through_a_symlink_is_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.conf"), "include link.conf\n").unwrap();
        std::os::unix::fs::symlink("a.conf", dir.path().join("link.conf")).unwrap();
        let err = read(&dir.path().join("a.conf")).unwrap_err();
        assert!(matches!(err, ConfigError::IncludeLoop { .. }), "{err}");
    }

    #[test]
    fn deep_includes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for level in 0..=MAX_INCLUDE_DEPTH {
            fs::write(
                dir.path().join(format!("{level}.conf")),
                format!("include {}.conf\n", level + 1),
            )
            .unwrap();
        }
        let err = read(&dir.path().join("0.conf")).unwrap_err();
        assert!(matches!(err, ConfigError::IncludeTooDeep { .. }), "{err}");
    }

    #[test]
    fn env_includes_must_be_absolute() {
        let err = read_env("include relative.conf\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::RelativeIncludeInEnv { .. }),
            "{err}"
        );
        let err = read_env("!include relative.conf\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::RelativeIncludeInEnv { .. }),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("inc.conf");
        fs::write(&inc, "cores = 5\n").unwrap();
        let seen = read_env(&format!("include {}\n", inc.display())).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, "cores");
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("nix.conf");
        let file = File::create(&main).unwrap();
        file.set_len(MAX_FILE_SIZE + 1).unwrap();
        let err = read(&main).unwrap_err();
        assert!(matches!(err, ConfigError::FileTooLarge { .. }), "{err}");
    }

    #[test]
    fn unreadable_file_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens but cannot be read.
        let (seen, warnings) = read(dir.path()).unwrap();
        assert!(seen.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0]
            .to_string()
            .contains("ignoring configuration file"));
    }

    #[test]
    fn sink_errors_stop_reading() {
        let mut warnings = Vec::new();
        let mut count = 0;
        let mut sink = |origin: &Origin, _: &str, _: &str| {
            count += 1;
            Err(ConfigError::Syntax {
                origin: origin.clone(),
                line: "refused".into(),
            })
        };
        let err = ConfigReader::new(&mut sink, &mut warnings)
            .read_env(b"a = 1\nb = 2\n")
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Syntax {
                origin: Origin::Env { line: 1 },
                ..
            }
        ));
        assert_eq!(count, 1);
    }
}
