//! Reading binary caches (substituters): `nix-cache-info`, and the checks a narinfo from a
//! cache must pass before anything it describes is fetched. A cache is untrusted input: its
//! narinfo may name another path than the one asked for, point its URL outside the cache, or
//! claim a compression nobody can undo; each is refused here with the cache and path named.

use crate::narinfo::NarInfo;
use crate::signature::PublicKeys;
use crate::store_path::{StoreDir, StorePath};

/// The file at the top of every binary cache.
pub const CACHE_INFO_FILE: &str = "nix-cache-info";

/// Compressions of a NAR that ward can undo (Nix's names).
pub const SUPPORTED_COMPRESSIONS: [&str; 4] = ["none", "xz", "bzip2", "zstd"];

/// What `nix-cache-info` says (defaults as Nix's: no mass queries, priority 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheInfo {
    /// `WantMassQuery: 1`: the cache may be asked about many paths at once.
    pub want_mass_query: bool,
    /// `Priority`: lower is tried first (Nix's default is 0).
    pub priority: i64,
}

/// Why a cache, or one of its narinfos, is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// `StoreDir` names another store.
    #[error("binary cache '{cache}' is for Nix stores with prefix '{theirs}', not '{ours}'")]
    WrongStoreDir {
        /// The cache's URL.
        cache: String,
        /// Its `StoreDir`.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// `Priority` is not a number.
    #[error("binary cache '{cache}' has an invalid priority '{value}'")]
    BadPriority {
        /// The cache's URL.
        cache: String,
        /// The value.
        value: String,
    },
    /// The narinfo describes another path than the one asked for.
    #[error("binary cache '{cache}' answered for '{asked}' with the narinfo of '{got}'")]
    WrongPath {
        /// The cache's URL.
        cache: String,
        /// The path asked for.
        asked: String,
        /// The path in the narinfo.
        got: String,
    },
    /// The NAR's URL leaves the cache (absolute, `..`, another scheme).
    #[error("binary cache '{cache}' gives '{path}' the NAR URL '{url}', which leaves the cache")]
    BadUrl {
        /// The cache's URL.
        cache: String,
        /// The path.
        path: String,
        /// The URL.
        url: String,
    },
    /// A compression ward cannot undo.
    #[error("binary cache '{cache}' stores '{path}' compressed with '{compression}', which ward cannot decompress")]
    UnsupportedCompression {
        /// The cache's URL.
        cache: String,
        /// The path.
        path: String,
        /// The compression.
        compression: String,
    },
    /// No signature by a trusted key (with `require-sigs`).
    #[error("substituter '{cache}' does not have a valid signature for path '{path}'")]
    Unsigned {
        /// The cache's URL.
        cache: String,
        /// The path.
        path: String,
    },
}

impl CacheInfo {
    /// Parses `nix-cache-info` of the cache at `cache` (for messages) for a store at
    /// `store_dir`. Lines without a colon and unknown keys are ignored, as by Nix.
    pub fn parse(cache: &str, text: &str, store_dir: &StoreDir) -> Result<CacheInfo, CacheError> {
        let mut info = CacheInfo::default();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name {
                "StoreDir" if value != store_dir.as_str() => {
                    return Err(CacheError::WrongStoreDir {
                        cache: cache.to_owned(),
                        theirs: value.to_owned(),
                        ours: store_dir.as_str().to_owned(),
                    })
                }
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    info.priority = value.parse().map_err(|_| CacheError::BadPriority {
                        cache: cache.to_owned(),
                        value: value.chars().take(64).collect(),
                    })?
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// Where the narinfo of `path` is, relative to the cache.
pub fn narinfo_file(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

/// Checks a narinfo that cache `cache` returned for `asked` before its NAR is fetched: it
/// describes `asked`, its URL stays inside the cache, its compression can be undone, and
/// (with `require_sigs`) a key of `keys` signed it or it is content-addressed. The NAR hash
/// and size are checked again against the data when it arrives.
pub fn check_narinfo(
    cache: &str,
    asked: &StorePath,
    narinfo: &NarInfo,
    store_dir: &StoreDir,
    keys: &PublicKeys,
    require_sigs: bool,
) -> Result<(), CacheError> {
    let path = store_dir.print(asked);
    if &narinfo.info.path != asked {
        return Err(CacheError::WrongPath {
            cache: cache.to_owned(),
            asked: path,
            got: store_dir.print(&narinfo.info.path),
        });
    }
    let url = narinfo.url.as_str();
    let leaves = url.is_empty()
        || url.starts_with('/')
        || url.contains("://")
        || url.contains('\\')
        || url.contains('\0')
        || url
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty());
    if leaves {
        return Err(CacheError::BadUrl {
            cache: cache.to_owned(),
            path,
            url: url.chars().take(256).collect(),
        });
    }
    let compression = narinfo.compression_or_default();
    if !SUPPORTED_COMPRESSIONS.contains(&compression) {
        return Err(CacheError::UnsupportedCompression {
            cache: cache.to_owned(),
            path,
            compression: compression.chars().take(64).collect(),
        });
    }
    if require_sigs && !narinfo.info.has_enough_signatures(store_dir, keys) {
        return Err(CacheError::Unsigned {
            cache: cache.to_owned(),
            path,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{Hash, HashAlgo};
    use crate::path_info::ValidPathInfo;
    use crate::signature::SecretKey;

    const CACHE: &str = "file:///srv/cache";

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    fn narinfo(p: &StorePath, url: &str, compression: Option<&str>) -> NarInfo {
        let mut info = ValidPathInfo::new(p.clone(), Hash::compute(HashAlgo::Sha256, b"nar"));
        info.nar_size = 3;
        let mut n = NarInfo::from_path_info(info, url.into());
        n.compression = compression.map(str::to_owned);
        n
    }

    #[test]
    fn cache_info_is_read_as_nix_reads_it() {
        let store_dir = StoreDir::default();
        let info = CacheInfo::parse(
            CACHE,
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\nno colon here\nOther: x\n",
            &store_dir,
        )
        .unwrap();
        assert_eq!(
            info,
            CacheInfo {
                want_mass_query: true,
                priority: 40
            }
        );
        assert_eq!(
            CacheInfo::parse(CACHE, "", &store_dir).unwrap(),
            CacheInfo::default()
        );
        let wrong = CacheInfo::parse(CACHE, "StoreDir: /gnu/store\n", &store_dir).unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "binary cache 'file:///srv/cache' is for Nix stores with prefix '/gnu/store', not '/nix/store'"
        );
        assert!(matches!(
            CacheInfo::parse(CACHE, "Priority: high\n", &store_dir),
            Err(CacheError::BadPriority { .. })
        ));
    }

    #[test]
    fn a_narinfo_must_describe_the_path_asked_for_and_stay_in_the_cache() {
        let store_dir = StoreDir::default();
        let keys = PublicKeys::new();
        let asked = path("7rjj86a15146cq1d3qy068lml7n8ykzm-hello");
        let other = path("0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-evil");
        assert_eq!(
            narinfo_file(&asked),
            "7rjj86a15146cq1d3qy068lml7n8ykzm.narinfo"
        );
        let ok = narinfo(&asked, "nar/abc.nar.xz", Some("xz"));
        check_narinfo(CACHE, &asked, &ok, &store_dir, &keys, false).unwrap();

        let swapped = narinfo(&other, "nar/abc.nar.xz", Some("xz"));
        assert!(matches!(
            check_narinfo(CACHE, &asked, &swapped, &store_dir, &keys, false),
            Err(CacheError::WrongPath { .. })
        ));
        for url in [
            "../../etc/shadow",
            "/etc/shadow",
            "nar/../../x",
            "https://elsewhere/nar",
            "nar//x",
            "",
        ] {
            let bad = narinfo(&asked, url, Some("none"));
            assert!(
                matches!(
                    check_narinfo(CACHE, &asked, &bad, &store_dir, &keys, false),
                    Err(CacheError::BadUrl { .. })
                ),
                "{url:?}"
            );
        }
        let lz4 = narinfo(&asked, "nar/x.nar.lz4", Some("lz4"));
        assert!(matches!(
            check_narinfo(CACHE, &asked, &lz4, &store_dir, &keys, false),
            Err(CacheError::UnsupportedCompression { .. })
        ));
        // No compression key means bzip2, as in Nix.
        let default = narinfo(&asked, "nar/x.nar.bz2", None);
        check_narinfo(CACHE, &asked, &default, &store_dir, &keys, false).unwrap();
    }

    #[test]
    fn require_sigs_wants_a_trusted_signature() {
        let store_dir = StoreDir::default();
        let asked = path("7rjj86a15146cq1d3qy068lml7n8ykzm-hello");
        let key = SecretKey::generate("cache.example-1").unwrap();
        let mut keys = PublicKeys::new();
        keys.insert(key.public_key());
        let mut signed = narinfo(&asked, "nar/x.nar", Some("none"));
        let unsigned = signed.clone();
        signed.info.sign(&store_dir, &key).unwrap();
        check_narinfo(CACHE, &asked, &signed, &store_dir, &keys, true).unwrap();
        let refused = check_narinfo(CACHE, &asked, &unsigned, &store_dir, &keys, true);
        assert_eq!(
            refused.unwrap_err().to_string(),
            "substituter 'file:///srv/cache' does not have a valid signature for path \
             '/nix/store/7rjj86a15146cq1d3qy068lml7n8ykzm-hello'"
        );
        // Without require-sigs the signature is not looked at.
        check_narinfo(
            CACHE,
            &asked,
            &unsigned,
            &store_dir,
            &PublicKeys::new(),
            false,
        )
        .unwrap();
    }
}
