//! Reading files from a binary cache: a local directory (`file://`) or an HTTP(S) server.
//!
//! Everything here blocks; callers run it on tokio's blocking pool. A cache is untrusted
//! input: a `file://` cache is read through directory handles without following a symlink
//! anywhere below the cache's own directory (a narinfo linked to `/etc/shadow` is refused, not
//! read), and an HTTP answer larger than asked for is cut off with an error.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

/// Where a cache's files are.
#[derive(Debug)]
pub enum Source {
    /// A directory on this machine (`file:///srv/cache`).
    File(PathBuf),
    /// An HTTP(S) server; `base` has no trailing `/` and no `?` parameters.
    Http {
        /// `https://cache.example.org/sub`.
        base: String,
        /// The daemon's HTTP client (shared connections, timeouts, proxies, TLS roots).
        agent: ureq::Agent,
        /// `download-attempts`.
        attempts: u32,
    },
}

/// Why a file could not be read from a cache (every variant names the file's URL).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// An I/O error reading a local cache.
    #[error("reading '{url}': {source}")]
    Io {
        /// The file.
        url: String,
        /// What failed.
        source: io::Error,
    },
    /// A symlink below a local cache's directory.
    #[error("'{url}' is a symlink; ward does not follow symlinks inside a binary cache")]
    Symlink {
        /// The file.
        url: String,
    },
    /// Not a regular file.
    #[error("'{url}' is not a regular file")]
    NotAFile {
        /// The file.
        url: String,
    },
    /// Longer than the caller allows.
    #[error("'{url}' is longer than {limit} bytes")]
    TooLarge {
        /// The file.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The server answered with an error status other than 404/403.
    #[error("unable to download '{url}': HTTP error {status}")]
    Status {
        /// The file.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The connection failed (after `download-attempts` tries).
    #[error("unable to download '{url}': {reason}")]
    Transfer {
        /// The file.
        url: String,
        /// ureq's description.
        reason: String,
    },
}

/// A stream of a file's bytes.
pub type Stream = Box<dyn Read + Send>;

impl Source {
    /// How this source prints `rel` in messages.
    pub fn url_of(&self, rel: &str) -> String {
        match self {
            Source::File(dir) => format!("file://{}/{rel}", dir.display()),
            Source::Http { base, .. } => format!("{base}/{rel}"),
        }
    }

    /// Reads the small file `rel` whole (`None`: the cache has no such file).
    pub fn get_small(&self, rel: &str, limit: usize) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(stream) = self.open(rel)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        stream
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| FetchError::Io {
                url: self.url_of(rel),
                source,
            })?;
        if bytes.len() > limit {
            return Err(FetchError::TooLarge {
                url: self.url_of(rel),
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// Opens `rel` (a relative path of plain components) for reading.
    pub fn open(&self, rel: &str) -> Result<Option<Stream>, FetchError> {
        match self {
            Source::File(dir) => open_beneath(dir, rel, &self.url_of(rel)),
            Source::Http {
                base,
                agent,
                attempts,
            } => http_get(agent, &format!("{base}/{rel}"), *attempts),
        }
    }
}

/// Opens `rel` under `dir` one component at a time, refusing symlinks (`O_NOFOLLOW` on every
/// step), and checks that the end is a regular file.
fn open_beneath(dir: &std::path::Path, rel: &str, url: &str) -> Result<Option<Stream>, FetchError> {
    let io_err = |source: io::Error| FetchError::Io {
        url: url.to_owned(),
        source,
    };
    let components: Vec<&str> = rel.split('/').collect();
    if components
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(FetchError::NotAFile {
            url: url.to_owned(),
        });
    }
    let mut current: OwnedFd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return Err(io_err(e.into())),
    };
    let (last, parents) = components.split_last().expect("split never yields nothing");
    for component in parents {
        current = match rustix::fs::openat(
            &current,
            *component,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(FetchError::Symlink {
                    url: url.to_owned(),
                })
            }
            Err(e) => return Err(io_err(e.into())),
        };
    }
    // O_NONBLOCK: a FIFO planted in the cache must not hang the open.
    let file = match rustix::fs::openat(
        &current,
        *last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(FetchError::Symlink {
                url: url.to_owned(),
            })
        }
        Err(e) => return Err(io_err(e.into())),
    };
    let stat = rustix::fs::fstat(&file).map_err(|e| io_err(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(FetchError::NotAFile {
            url: url.to_owned(),
        });
    }
    Ok(Some(Box::new(File::from(file))))
}

/// GET with retries of transient failures (connection errors, 5xx, 429), waiting 250 ms,
/// 500 ms, ... between tries as Nix does. 404 and 403 mean "not in this cache".
fn http_get(agent: &ureq::Agent, url: &str, attempts: u32) -> Result<Option<Stream>, FetchError> {
    let attempts = attempts.max(1);
    let mut attempt = 1;
    loop {
        let failure = match agent.get(url).call() {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => return Ok(Some(Box::new(response.into_body().into_reader()))),
                    403 | 404 | 410 => return Ok(None),
                    500..=599 | 429 => FetchError::Status {
                        url: url.to_owned(),
                        status,
                    },
                    _ => {
                        return Err(FetchError::Status {
                            url: url.to_owned(),
                            status,
                        })
                    }
                }
            }
            Err(e) => {
                let failure = FetchError::Transfer {
                    url: url.to_owned(),
                    reason: e.to_string(),
                };
                if !is_transient(&e) {
                    return Err(failure);
                }
                failure
            }
        };
        if attempt >= attempts {
            return Err(failure);
        }
        tracing::debug!(%url, attempt, "retrying a download: {failure}");
        std::thread::sleep(Duration::from_millis(250u64 << (attempt - 1).min(6)));
        attempt += 1;
    }
}

/// Whether trying again may help: not for a refused certificate or a malformed URL (rustls
/// reports TLS failures as `InvalidData`).
fn is_transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() != io::ErrorKind::InvalidData,
        ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// The daemon's HTTP client. Timeouts: `connect-timeout` (0: 300 s, curl's default) for the
/// connection, `stalled-download-timeout` for any single read. Proxies from the environment
/// (`http_proxy`, `https_proxy`, `no_proxy`); TLS roots from `ssl-cert-file`, else
/// `NIX_SSL_CERT_FILE`, `SSL_CERT_FILE`, `/etc/ssl/certs/ca-certificates.crt`, else the
/// Mozilla roots built in.
pub fn http_agent(settings: &ward_config::Settings) -> ureq::Agent {
    let connect = match settings.connect_timeout {
        0 => 300,
        s => s,
    };
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(root_certs(settings))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(connect)))
        .timeout_per_read(Some(Duration::from_secs(
            settings.stalled_download_timeout.max(1),
        )))
        .max_redirects(10)
        .user_agent(concat!("ward/", env!("CARGO_PKG_VERSION"), " Nix/2.8.0"))
        .tls_config(tls)
        .build()
        .into()
}

fn root_certs(settings: &ward_config::Settings) -> ureq::tls::RootCerts {
    let configured = settings
        .get("ssl-cert-file")
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("NIX_SSL_CERT_FILE").ok())
        .or_else(|| std::env::var("SSL_CERT_FILE").ok())
        .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    match std::fs::read(&configured) {
        Ok(pem) => {
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                tracing::warn!(file = %configured, "no certificates in the TLS root file; using the built-in roots");
                ureq::tls::RootCerts::WebPki
            } else {
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
        }
        Err(e) => {
            tracing::debug!(file = %configured, "TLS root file unreadable ({e}); using the built-in roots");
            ureq::tls::RootCerts::WebPki
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn local_files_are_read_and_symlinks_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("nar")).unwrap();
        std::fs::write(dir.path().join("nar/a.nar"), b"nar bytes").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        symlink(dir.path().join("secret"), dir.path().join("x.narinfo")).unwrap();
        symlink(dir.path().join("nar"), dir.path().join("linked")).unwrap();
        let source = Source::File(dir.path().to_owned());

        assert_eq!(
            source.get_small("nar/a.nar", 100).unwrap().unwrap(),
            b"nar bytes"
        );
        assert!(source.get_small("missing.narinfo", 100).unwrap().is_none());
        assert!(source.get_small("nowhere/a.nar", 100).unwrap().is_none());
        assert!(matches!(
            source.get_small("x.narinfo", 100),
            Err(FetchError::Symlink { .. })
        ));
        assert!(matches!(
            source.get_small("linked/a.nar", 100),
            Err(FetchError::Symlink { .. })
        ));
        assert!(matches!(
            source.get_small("nar/a.nar", 3),
            Err(FetchError::TooLarge { .. })
        ));
        assert!(matches!(
            source.get_small("nar", 100),
            Err(FetchError::NotAFile { .. })
        ));
        assert!(matches!(
            source.get_small("nar/../secret", 100),
            Err(FetchError::NotAFile { .. })
        ));
    }

    #[test]
    fn a_fifo_in_the_cache_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.narinfo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let source = Source::File(dir.path().to_owned());
        assert!(matches!(
            source.get_small("p.narinfo", 100),
            Err(FetchError::NotAFile { .. })
        ));
    }
}
