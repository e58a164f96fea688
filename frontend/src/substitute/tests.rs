use super::*;
use ward_config::{EnvDefaults, HostInfo};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::path_info::ValidPathInfo;
use ward_proto::signature::SecretKey;

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let env = EnvDefaults::from_env(&|_: &str| None).unwrap();
    let mut s = Settings::defaults(&HostInfo::fixed_for_tests(), &env);
    s.set("substituters", "").unwrap();
    for (k, v) in pairs {
        s.set(k, v).unwrap();
    }
    s
}

/// A path whose hash part differs for each name.
fn path(name: &str) -> StorePath {
    let digest = Hash::compute(HashAlgo::Sha256, name.as_bytes());
    let hash: String = digest.to_nix32().chars().take(32).collect();
    StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
}

fn write_narinfo(dir: &std::path::Path, p: &StorePath, key: Option<&SecretKey>) {
    let store_dir = StoreDir::default();
    let mut info = ValidPathInfo::new(p.clone(), Hash::compute(HashAlgo::Sha256, b"nar"));
    info.nar_size = 3;
    if let Some(key) = key {
        info.sign(&store_dir, key).unwrap();
    }
    let mut n = NarInfo::from_path_info(info, format!("nar/{}.nar", p.hash_part()));
    n.compression = Some("none".into());
    n.file_size = Some(3);
    std::fs::write(
        dir.join(binary_cache::narinfo_file(p)),
        n.to_text(&store_dir).unwrap(),
    )
    .unwrap();
}

fn url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn urls_are_taken_apart_and_other_schemes_refused() {
    let p = parse_url("file:///srv/cache?trusted=1&priority=10").unwrap();
    assert_eq!(p.kind, UrlKind::File("/srv/cache".into()));
    assert_eq!(p.params["trusted"], "1");
    assert_eq!(p.params["priority"], "10");
    let p = parse_url("https://cache.example.org/sub/").unwrap();
    assert_eq!(
        p.kind,
        UrlKind::Http("https://cache.example.org/sub".into())
    );
    for bad in ["s3://bucket", "ssh://host", "daemon", "file://relative/dir"] {
        let e = parse_url(bad).unwrap_err();
        assert!(e.contains(bad), "{e}");
    }
}

#[test]
fn caches_are_sorted_by_priority_and_unusable_ones_reported() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let other_store = tempfile::tempdir().unwrap();
    std::fs::write(
        a.path().join("nix-cache-info"),
        "StoreDir: /nix/store\nPriority: 50\n",
    )
    .unwrap();
    std::fs::write(
        b.path().join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 20\n",
    )
    .unwrap();
    std::fs::write(
        other_store.path().join("nix-cache-info"),
        "StoreDir: /gnu/store\n",
    )
    .unwrap();
    let list = format!(
        "{} {} {} s3://bucket",
        url(a.path()),
        url(b.path()),
        url(other_store.path())
    );
    let s = settings(&[("substituters", &list)]);
    let pool = CachePool::new(&s, StoreDir::default());
    let mut warnings = Vec::new();
    let subs = pool.select(&s, &mut warnings);
    let order: Vec<&str> = subs.caches.iter().map(|c| c.url.as_str()).collect();
    assert_eq!(order, [url(b.path()), url(a.path())]);
    assert!(subs.caches[0].want_mass_query && !subs.caches[1].want_mass_query);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.contains("/gnu/store")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("s3://bucket")),
        "{warnings:?}"
    );

    // `substitute = false` asks nobody.
    let off = settings(&[("substituters", &list), ("substitute", "false")]);
    assert!(pool.select(&off, &mut Vec::new()).is_empty());
}

#[test]
fn narinfos_are_found_remembered_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate("test-1").unwrap();
    let signed = path("signed");
    let unsigned = path("unsigned");
    write_narinfo(dir.path(), &signed, Some(&key));
    write_narinfo(dir.path(), &unsigned, None);
    let s = settings(&[
        ("substituters", &url(dir.path())),
        ("trusted-public-keys", &key.public_key().to_string()),
        ("narinfo-cache-negative-ttl", "3600"),
    ]);
    let pool = CachePool::new(&s, StoreDir::default());
    let subs = pool.select(&s, &mut Vec::new());
    let mut messages = Vec::new();

    let (cache, info) = subs.query_info(&signed, &mut messages).unwrap();
    subs.check(&cache, &signed, &info).unwrap();
    let (cache, info) = subs.query_info(&unsigned, &mut messages).unwrap();
    assert!(matches!(
        subs.check(&cache, &unsigned, &info),
        Err(CacheError::Unsigned { .. })
    ));

    // A miss is remembered for the negative TTL: a narinfo that appears later is not seen.
    let later = path("later");
    assert!(subs.query_info(&later, &mut messages).is_none());
    write_narinfo(dir.path(), &later, Some(&key));
    assert!(subs.query_info(&later, &mut messages).is_none());
    assert!(messages.is_empty(), "{messages:?}");
    // With a TTL of 0 it is.
    let fresh = pool.select(
        &settings(&[
            ("substituters", &url(dir.path())),
            ("narinfo-cache-negative-ttl", "0"),
        ]),
        &mut Vec::new(),
    );
    assert!(fresh.query_info(&later, &mut messages).is_some());

    let infos = subs.path_infos([&signed, &path("absent")], &mut messages);
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[&signed].nar_size, 3);
    assert_eq!(infos[&signed].download_size, 3);
    // No WantMassQuery: QuerySubstitutablePaths does not ask this cache (as Nix).
    assert!(subs
        .substitutable_paths(&[signed.clone()].into(), &mut messages)
        .is_empty());
}

#[test]
fn a_narinfo_for_another_path_or_garbage_is_an_error_naming_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let asked = path("asked");
    let other = path("other");
    write_narinfo(dir.path(), &other, None);
    std::fs::rename(
        dir.path().join(binary_cache::narinfo_file(&other)),
        dir.path().join(binary_cache::narinfo_file(&asked)),
    )
    .unwrap();
    let garbage = StorePath::from_base_name(&format!("{}-garbage", "8".repeat(32))).unwrap();
    std::fs::write(
        dir.path().join(binary_cache::narinfo_file(&garbage)),
        "StorePath: nonsense\n",
    )
    .unwrap();
    let s = settings(&[("substituters", &url(dir.path()))]);
    let pool = CachePool::new(&s, StoreDir::default());
    let subs = pool.select(&s, &mut Vec::new());
    let mut messages = Vec::new();
    assert!(subs.query_info(&asked, &mut messages).is_none());
    assert!(subs.query_info(&garbage, &mut messages).is_none());
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("other") && messages[0].contains(&url(dir.path())),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("invalid narinfo"), "{}", messages[1]);
}

#[test]
fn trusted_caches_need_no_signature() {
    let dir = tempfile::tempdir().unwrap();
    let p = path("unsigned");
    write_narinfo(dir.path(), &p, None);
    let trusted_url = format!("{}?trusted=1", url(dir.path()));
    let s = settings(&[("substituters", &trusted_url)]);
    let pool = CachePool::new(&s, StoreDir::default());
    let subs = pool.select(&s, &mut Vec::new());
    let (cache, info) = subs.query_info(&p, &mut Vec::new()).unwrap();
    assert!(cache.trusted);
    subs.check(&cache, &p, &info).unwrap();
}

#[test]
fn a_cache_that_cannot_be_opened_is_not_asked_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /gnu/store\n").unwrap();
    let s = settings(&[("substituters", &url(&cache))]);
    let pool = CachePool::new(&s, StoreDir::default());
    let first = pool.open(&url(&cache)).unwrap_err();
    assert!(first.contains("/gnu/store"), "{first}");
    // Fixed meanwhile, but the failure is remembered for a while.
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    assert_eq!(pool.open(&url(&cache)).unwrap_err(), first);
}
