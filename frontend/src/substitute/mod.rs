//! Substituters: binary caches that store paths are fetched from instead of being built.
//!
//! The frontend reads caches (they are untrusted input, like clients) and streams each NAR,
//! decompressed, into the store-writer's AddPathFromNar — the same path a client's
//! `nix copy` takes — so the store-writer checks the NAR hash, the size, the references and
//! the signatures (against the daemon's `trusted-public-keys`) again before the path becomes
//! valid, and a NAR that does not match is unpacked only into its private staging directory.
//!
//! - [`CachePool`] (one per daemon) opens each cache once (`nix-cache-info`) and remembers
//!   narinfo answers for `narinfo-cache-positive-ttl` / `narinfo-cache-negative-ttl`.
//! - [`Substituters`] is one connection's choice of caches (its `substituters`, already
//!   filtered for untrusted clients by `ward_config::overrides`), sorted by priority, with its
//!   keys and `require-sigs`.
//! - The substitution goal that uses them is in `crate::build::substitution`.
//!
//! All functions here block (file and network I/O); async callers use `spawn_blocking`.

pub mod decompress;
pub mod source;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ward_config::Settings;
use ward_proto::binary_cache::{self, CacheError, CacheInfo, CACHE_INFO_FILE};
use ward_proto::narinfo::{NarInfo, MAX_NARINFO_LEN};
use ward_proto::signature::{PublicKey, PublicKeys};
use ward_proto::store_path::{StoreDir, StorePath};
use ward_proto::worker::types::SubstitutablePathInfo;

use source::{FetchError, Source, Stream};

/// How long a cache that failed to answer is left alone (Nix: 60 s).
const DISABLE_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Largest `nix-cache-info` read.
const MAX_CACHE_INFO_LEN: usize = 64 << 10;

/// How long an opened cache's `nix-cache-info` is believed.
const CACHE_INFO_TTL: Duration = Duration::from_secs(3600);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A narinfo answer (`None`: not in the cache) and when it was fetched.
type Remembered = (Instant, Option<Arc<NarInfo>>);

/// One binary cache, opened.
#[derive(Debug)]
pub struct Cache {
    /// The URL as configured (with its `?` parameters), as messages show it.
    pub url: String,
    source: Source,
    /// `?trusted=1`: paths from it need no signature (only a URL the daemon's `nix.conf` or a
    /// trusted client names can carry it, since untrusted clients may only pick listed URLs).
    pub trusted: bool,
    /// `Priority` (or `?priority=`): lower is tried first.
    pub priority: i64,
    /// `WantMassQuery` (or `?want-mass-query=`).
    pub want_mass_query: bool,
    opened: Instant,
    narinfos: Mutex<HashMap<String, Remembered>>,
    disabled_until: Mutex<Option<Instant>>,
}

/// The daemon's caches, opened on first use and shared by every connection.
#[derive(Debug)]
pub struct CachePool {
    store_dir: StoreDir,
    agent: ureq::Agent,
    attempts: u32,
    caches: Mutex<HashMap<String, Arc<Cache>>>,
    /// Caches that could not be opened, with when and why: not asked again for
    /// [`DISABLE_AFTER_FAILURE`] (an unreachable `cache.nixos.org` on an offline host would
    /// otherwise cost every build its retries).
    unopenable: Mutex<HashMap<String, (Instant, String)>>,
    /// One permit per cache request in flight (`http-connections`, as Nix bounds its
    /// transfers): a thousand goals asking at once would otherwise each hold a blocking
    /// thread, and the frontend's memory would grow with them.
    pub(crate) requests: Arc<tokio::sync::Semaphore>,
}

/// Cache requests in flight when `http-connections` is 0 (no limit in Nix).
const UNLIMITED_REQUESTS: usize = 64;

/// A cache URL taken apart.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    kind: UrlKind,
    params: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
enum UrlKind {
    File(PathBuf),
    Http(String),
}

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    let kind = if let Some(path) = base.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "substituter '{url}' is not usable: a file:// URL needs an absolute path"
            ));
        }
        UrlKind::File(PathBuf::from(path))
    } else if base.starts_with("http://") || base.starts_with("https://") {
        UrlKind::Http(base.trim_end_matches('/').to_owned())
    } else {
        return Err(format!(
            "substituter '{url}' is not usable: ward reads binary caches over file://, http:// and https:// only"
        ));
    };
    Ok(ParsedUrl { kind, params })
}

fn bool_param(params: &BTreeMap<String, String>, name: &str) -> Option<bool> {
    params
        .get(name)
        .map(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

impl CachePool {
    /// A pool using the daemon's download settings.
    pub fn new(settings: &Settings, store_dir: StoreDir) -> CachePool {
        CachePool {
            store_dir,
            agent: source::http_agent(settings),
            attempts: settings.download_attempts,
            caches: Mutex::new(HashMap::new()),
            unopenable: Mutex::new(HashMap::new()),
            requests: Arc::new(tokio::sync::Semaphore::new(
                match usize::try_from(settings.http_connections) {
                    Ok(0) | Err(_) => UNLIMITED_REQUESTS,
                    Ok(n) => n.min(UNLIMITED_REQUESTS),
                },
            )),
        }
    }

    /// The opened cache at `url`, opening it if needed. A cache for another store directory,
    /// or an HTTP server without `nix-cache-info`, is an error naming it.
    pub fn open(&self, url: &str) -> Result<Arc<Cache>, String> {
        if let Some(cache) = lock(&self.caches).get(url) {
            if cache.opened.elapsed() < CACHE_INFO_TTL {
                return Ok(Arc::clone(cache));
            }
        }
        if let Some((at, why)) = lock(&self.unopenable).get(url) {
            if at.elapsed() < DISABLE_AFTER_FAILURE {
                return Err(why.clone());
            }
        }
        let opened = self.open_uncached(url);
        match &opened {
            Ok(cache) => {
                lock(&self.unopenable).remove(url);
                lock(&self.caches).insert(url.to_owned(), Arc::clone(cache));
            }
            Err(why) => {
                lock(&self.unopenable).insert(url.to_owned(), (Instant::now(), why.clone()));
            }
        }
        opened
    }

    fn open_uncached(&self, url: &str) -> Result<Arc<Cache>, String> {
        let parsed = parse_url(url)?;
        let source = match parsed.kind {
            UrlKind::File(dir) => Source::File(dir),
            UrlKind::Http(base) => Source::Http {
                base,
                agent: self.agent.clone(),
                attempts: self.attempts,
            },
        };
        let info = match source.get_small(CACHE_INFO_FILE, MAX_CACHE_INFO_LEN) {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                CacheInfo::parse(url, &text, &self.store_dir).map_err(|e| e.to_string())?
            }
            // A local directory without one is a cache nobody wrote to yet (Nix would create
            // the file; ward never writes to a cache).
            Ok(None) if matches!(source, Source::File(_)) => CacheInfo::default(),
            Ok(None) => return Err(format!("'{url}' does not appear to be a binary cache")),
            Err(e) => return Err(format!("unable to open substituter '{url}': {e}")),
        };
        let priority = match parsed.params.get("priority") {
            Some(p) => p.parse().map_err(|_| {
                format!("substituter '{url}' has an invalid priority parameter '{p}'")
            })?,
            None => info.priority,
        };
        let cache = Arc::new(Cache {
            url: url.to_owned(),
            source,
            trusted: bool_param(&parsed.params, "trusted").unwrap_or(false),
            priority,
            want_mass_query: bool_param(&parsed.params, "want-mass-query")
                .unwrap_or(info.want_mass_query),
            opened: Instant::now(),
            narinfos: Mutex::new(HashMap::new()),
            disabled_until: Mutex::new(None),
        });
        Ok(cache)
    }

    /// The caches `settings` select (none when `substitute = false`), sorted by priority;
    /// caches that cannot be opened are left out with a warning in `warnings`.
    pub fn select(&self, settings: &Settings, warnings: &mut Vec<String>) -> Substituters {
        let mut caches = Vec::new();
        if settings.substitute {
            let mut seen = BTreeSet::new();
            for url in &settings.substituters {
                if !seen.insert(url.clone()) {
                    continue;
                }
                match self.open(url) {
                    Ok(cache) => caches.push(cache),
                    Err(e) => warnings.push(e),
                }
            }
        }
        // Stable: equal priorities keep the configured order.
        caches.sort_by_key(|c| c.priority);
        let mut keys = PublicKeys::new();
        for entry in &settings.trusted_public_keys {
            match PublicKey::parse(entry) {
                Ok(key) => {
                    keys.insert(key);
                }
                Err(e) => warnings.push(format!(
                    "ignoring the malformed trusted public key '{entry}': {e}"
                )),
            }
        }
        Substituters {
            caches,
            keys,
            require_sigs: settings.require_sigs,
            fallback: settings.fallback,
            store_dir: self.store_dir.clone(),
            positive_ttl: Duration::from_secs(settings.narinfo_cache_positive_ttl.into()),
            negative_ttl: Duration::from_secs(settings.narinfo_cache_negative_ttl.into()),
        }
    }
}

impl Cache {
    fn disabled(&self) -> bool {
        lock(&self.disabled_until).is_some_and(|until| Instant::now() < until)
    }

    fn fetch_failed(&self, e: &FetchError) {
        if matches!(e, FetchError::Transfer { .. } | FetchError::Status { .. }) {
            tracing::warn!(cache = %self.url, "disabling binary cache for {} s: {e}", DISABLE_AFTER_FAILURE.as_secs());
            *lock(&self.disabled_until) = Some(Instant::now() + DISABLE_AFTER_FAILURE);
        }
    }

    /// The narinfo of `path` in this cache (`None`: not there). A narinfo that does not parse,
    /// or that describes another path, is an error naming the cache.
    pub fn narinfo(
        &self,
        path: &StorePath,
        subs: &Substituters,
    ) -> Result<Option<Arc<NarInfo>>, String> {
        let key = path.hash_part().to_owned();
        if let Some((at, answer)) = lock(&self.narinfos).get(&key) {
            let ttl = if answer.is_some() {
                subs.positive_ttl
            } else {
                subs.negative_ttl
            };
            if at.elapsed() < ttl {
                return Ok(answer.clone());
            }
        }
        if self.disabled() {
            return Err(format!(
                "binary cache '{}' is disabled for a while after failing",
                self.url
            ));
        }
        let file = binary_cache::narinfo_file(path);
        let bytes = match self.source.get_small(&file, MAX_NARINFO_LEN) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.fetch_failed(&e);
                return Err(e.to_string());
            }
        };
        let answer = match bytes {
            None => None,
            Some(bytes) => {
                let narinfo = NarInfo::parse(&subs.store_dir, &bytes).map_err(|e| {
                    format!(
                        "binary cache '{}' has an invalid narinfo for '{}': {e}",
                        self.url,
                        subs.store_dir.print(path)
                    )
                })?;
                if &narinfo.info.path != path {
                    return Err(CacheError::WrongPath {
                        cache: self.url.clone(),
                        asked: subs.store_dir.print(path),
                        got: subs.store_dir.print(&narinfo.info.path),
                    }
                    .to_string());
                }
                Some(Arc::new(narinfo))
            }
        };
        lock(&self.narinfos).insert(key, (Instant::now(), answer.clone()));
        Ok(answer)
    }

    /// The decompressed NAR `narinfo` describes (checked by [`Substituters::check`] first).
    /// A NAR file that has gone is an error saying so.
    pub fn open_nar(&self, narinfo: &NarInfo) -> Result<Stream, String> {
        let raw = match self.source.open(&narinfo.url) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(format!(
                    "file '{}' does not exist in binary cache '{}'",
                    narinfo.url, self.url
                ))
            }
            Err(e) => {
                self.fetch_failed(&e);
                return Err(e.to_string());
            }
        };
        decompress::decoder(narinfo.compression_or_default(), raw).map_err(|e| {
            format!(
                "decompressing '{}' from '{}': {e}",
                self.source.url_of(&narinfo.url),
                self.url
            )
        })
    }
}

/// One connection's (or goal's) substituters.
#[derive(Debug, Clone)]
pub struct Substituters {
    /// Sorted by priority.
    pub caches: Vec<Arc<Cache>>,
    keys: PublicKeys,
    require_sigs: bool,
    /// `fallback`: a failing substituter lets the derivation be built instead.
    pub fallback: bool,
    store_dir: StoreDir,
    positive_ttl: Duration,
    negative_ttl: Duration,
}

impl Substituters {
    /// Whether there is any cache to ask.
    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }

    /// The checks before a NAR is fetched (`binary_cache::check_narinfo`); the signature is
    /// not needed from a `?trusted=1` cache.
    pub fn check(
        &self,
        cache: &Cache,
        path: &StorePath,
        narinfo: &NarInfo,
    ) -> Result<(), CacheError> {
        binary_cache::check_narinfo(
            &cache.url,
            path,
            narinfo,
            &self.store_dir,
            &self.keys,
            self.require_sigs && !cache.trusted,
        )
    }

    /// The first cache that has `path`, with its narinfo. Errors of caches are added to
    /// `messages` and the next cache is asked.
    pub fn query_info(
        &self,
        path: &StorePath,
        messages: &mut Vec<String>,
    ) -> Option<(Arc<Cache>, Arc<NarInfo>)> {
        for cache in &self.caches {
            match cache.narinfo(path, self) {
                Ok(Some(info)) => return Some((Arc::clone(cache), info)),
                Ok(None) => {}
                Err(e) => messages.push(e),
            }
        }
        None
    }

    /// QuerySubstitutablePaths: the paths some cache that allows mass queries has (Nix asks
    /// only those).
    pub fn substitutable_paths(
        &self,
        paths: &BTreeSet<StorePath>,
        messages: &mut Vec<String>,
    ) -> BTreeSet<StorePath> {
        let mut found = BTreeSet::new();
        for cache in self.caches.iter().filter(|c| c.want_mass_query) {
            for path in paths {
                if found.contains(path) {
                    continue;
                }
                match cache.narinfo(path, self) {
                    Ok(Some(_)) => {
                        found.insert(path.clone());
                    }
                    Ok(None) => {}
                    Err(e) => messages.push(e),
                }
            }
        }
        found
    }

    /// QuerySubstitutablePathInfos: what the first cache with each path says about it.
    pub fn path_infos<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
        messages: &mut Vec<String>,
    ) -> BTreeMap<StorePath, SubstitutablePathInfo> {
        let mut out = BTreeMap::new();
        for path in paths {
            if let Some((_, narinfo)) = self.query_info(path, messages) {
                out.insert(path.clone(), substitutable_info(&narinfo));
            }
        }
        out
    }
}

/// The client's view of a narinfo.
pub fn substitutable_info(narinfo: &NarInfo) -> SubstitutablePathInfo {
    SubstitutablePathInfo {
        deriver: narinfo.info.deriver.clone(),
        references: narinfo.info.references.clone(),
        download_size: narinfo.file_size.unwrap_or(0),
        nar_size: narinfo.info.nar_size,
    }
}

#[cfg(test)]
mod tests;
