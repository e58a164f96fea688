use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ward_proto::derivation::DerivationOutput;
use ward_proto::store_path::StoreDir;

use super::*;
use crate::db::DbSettings;
use crate::layout::{CreateOptions, StoreLayout};
use crate::test_support::*;

fn open_store(dir: &Path) -> Store {
    let layout = StoreLayout::chroot(&dir.join("root")).unwrap();
    Store::open(layout, &CreateOptions::default(), &DbSettings::default()).unwrap()
}

fn sample_tree() -> Node {
    Node::Dir(vec![
        (
            "bin".into(),
            Node::Dir(vec![(
                "hello".into(),
                Node::File {
                    executable: true,
                    contents: b"#!/bin/sh\necho hello\n".to_vec(),
                },
            )]),
        ),
        ("empty".into(), Node::Dir(vec![])),
        ("link".into(), Node::Symlink("bin/hello".into())),
        ("share".into(), file(b"some data\n")),
    ])
}

/// Everything in the physical store directory except ward's staging directory, the links
/// pool and lock files.
fn store_entries(store: &Store) -> BTreeSet<String> {
    std::fs::read_dir(store.layout().real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".ward-staging" && n != ".links" && !n.ends_with(".lock"))
        .collect()
}

fn staging_is_empty(store: &Store) -> bool {
    std::fs::read_dir(store.layout().staging_dir())
        .unwrap()
        .next()
        .is_none()
}

/// Asserts that a failed add left nothing behind.
fn assert_unchanged(store: &Store, before: &BTreeSet<String>, path: &StorePath) {
    assert!(!store.db().is_valid(path).unwrap(), "no row for {path}");
    assert_eq!(&store_entries(store), before, "no new entry in the store");
    assert!(staging_is_empty(store), "staging cleaned");
}

fn dump_hash(path: &Path) -> (Hash, u64) {
    let mut digest = NarDigester::new(None);
    nar::dump_path(path, &mut digest).unwrap();
    let (hash, size, _) = digest.finish();
    (hash, size)
}

#[test]
fn adds_a_tree_atomically_and_canonically() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let nar = nar_of(&sample_tree());
    let info = claim_for("sample", &nar, &[]);
    let outcome = store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap();
    assert_eq!(outcome, AddOutcome::Added);
    let real = store.layout().real_path(&info.path);
    for (rel, mode) in [
        ("", 0o555),
        ("bin", 0o555),
        ("bin/hello", 0o555),
        ("empty", 0o555),
        ("share", 0o444),
    ] {
        let m = std::fs::symlink_metadata(real.join(rel)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "mode of '{rel}'");
        assert_eq!(m.mtime(), 1, "mtime of '{rel}'");
    }
    let link = std::fs::symlink_metadata(real.join("link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(link.mtime(), 1);
    assert_eq!(
        std::fs::read_link(real.join("link")).unwrap(),
        Path::new("bin/hello")
    );
    assert_eq!(dump_hash(&real), (info.nar_hash, info.nar_size));
    let stored = store.db().query_path_info(&info.path).unwrap().unwrap();
    assert_eq!(stored.nar_hash, info.nar_hash);
    assert_eq!(stored.ca, info.ca);
    assert!(stored.registration_time > 0);
    assert!(
        !store.layout().lock_path(&info.path).exists(),
        "lock file deleted"
    );
    assert!(staging_is_empty(&store));

    // Adding it again is a no-op.
    let again = store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap();
    assert_eq!(again, AddOutcome::AlreadyValid);
    assert_eq!(
        store.db().query_path_info(&info.path).unwrap().unwrap(),
        stored
    );
}

#[test]
fn adds_single_files_and_symlinks_with_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let dep_nar = nar_of(&file(b"dependency"));
    let dep = claim_for("dep", &dep_nar, &[]);
    store
        .add_path(&dep, &dep_nar[..], AddOptions::default())
        .unwrap();
    let link_target = StoreDir::default().print(&dep.path);
    let link_nar = nar_of(&Node::Symlink(link_target.clone()));
    let link = plain_claim("link", &link_nar, &[&dep.path]);
    store
        .add_path(&link, &link_nar[..], AddOptions::default())
        .unwrap();
    let real = store.layout().real_path(&link.path);
    assert_eq!(
        std::fs::read_link(&real).unwrap(),
        Path::new(&link_target),
        "the symlink is stored, never followed"
    );
    assert_eq!(
        store.db().query_referrers(&dep.path).unwrap(),
        [link.path.clone()].into()
    );
    let exe_nar = nar_of(&Node::File {
        executable: true,
        contents: b"\x7fELF".to_vec(),
    });
    let exe = plain_claim("exe", &exe_nar, &[]);
    let with_self = ValidPathInfo {
        references: [exe.path.clone()].into(),
        ..exe
    };
    store
        .add_path(&with_self, &exe_nar[..], AddOptions::default())
        .unwrap();
    let m = std::fs::metadata(store.layout().real_path(&with_self.path)).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o555, 1));
    assert_eq!(
        store.db().query_referrers(&with_self.path).unwrap(),
        [with_self.path.clone()].into(),
        "self-reference is allowed and recorded"
    );
}

#[test]
fn wrong_hash_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&sample_tree());
    let mut info = plain_claim("p", &nar, &[]);
    info.nar_hash = Hash::compute(HashAlgo::Sha256, b"something else");
    let err = store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap_err();
    let shown = StoreDir::default().print(&info.path);
    let actual = Hash::compute(HashAlgo::Sha256, &nar);
    assert_eq!(
        err.to_string(),
        format!(
            "hash mismatch importing path '{shown}';\n  specified: {}\n  got:       {}",
            info.nar_hash.to_prefixed_nix32(),
            actual.to_prefixed_nix32()
        )
    );
    assert_unchanged(&store, &before, &info.path);
}

#[test]
fn a_nar_longer_than_claimed_is_cut_off_at_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&sample_tree());
    let mut info = plain_claim("p", &nar, &[]);
    info.nar_size = 10;
    // A stream that would never end: refused after the claimed bytes, not read to its end.
    let endless = nar.iter().copied().chain(std::iter::repeat(0u8));
    struct Endless<I>(I, u64);
    impl<I: Iterator<Item = u8>> std::io::Read for Endless<I> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.0.next().unwrap();
            }
            self.1 += buf.len() as u64;
            assert!(self.1 < 1 << 24, "read far past the claim");
            Ok(buf.len())
        }
    }
    let err = store
        .add_path(&info, Endless(endless, 0), AddOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, AddError::LongerThanClaimed { specified: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("got:       more than 10"), "{err}");
    assert_unchanged(&store, &before, &info.path);
}

#[test]
fn wrong_size_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&sample_tree());
    let mut info = plain_claim("p", &nar, &[]);
    info.nar_size += 8;
    let err = store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap_err();
    assert!(matches!(err, AddError::SizeMismatch { got, .. } if got == nar.len() as u64));
    assert!(err.to_string().contains(info.path.base_name()), "{err}");
    assert_unchanged(&store, &before, &info.path);
}

#[test]
fn malicious_and_broken_nars_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let entry = |name: &'static [u8]| {
        nar_tokens(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"pwned",
            b")",
            b")",
            b")",
        ])
    };
    let good = nar_of(&sample_tree());
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage!");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot entry", entry(b"..")),
        ("slash in entry", entry(b"a/../../etc")),
        ("dot entry", entry(b".")),
        ("truncated", good[..good.len() - 16].to_vec()),
        ("trailing data", trailing),
        ("empty stream", Vec::new()),
        ("not a nar", b"#!/bin/sh\nrm -rf /\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let info = plain_claim(&format!("bad-{}", what.replace(' ', "-")), &bytes, &[]);
        let err = store
            .add_path(&info, &bytes[..], AddOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, AddError::Nar { .. }),
            "{what}: expected a nar error, got {err}"
        );
        assert!(
            err.to_string().contains(info.path.base_name()),
            "{what}: {err}"
        );
        assert_unchanged(&store, &before, &info.path);
    }
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn invalid_references_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&file(b"x"));
    let ghost = test_path("ghost");
    let info = plain_claim("p", &nar, &[&ghost]);
    let err = store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot add path '{}' because its reference '{}' is not valid",
            StoreDir::default().print(&info.path),
            StoreDir::default().print(&ghost)
        )
    );
    assert_unchanged(&store, &before, &info.path);
    let err = store
        .add_from_content(
            "text",
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &[ghost].into(),
            &b"hi"[..],
            AddOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, AddError::InvalidReference { .. }), "{err}");
}

#[test]
fn false_content_addresses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&sample_tree());
    let honest = claim_for("tree", &nar, &[]);

    // The ca names other content than the NAR holds.
    let mut lying_hash = honest.clone();
    lying_hash.ca = Some(ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: Hash::compute(HashAlgo::Sha256, b"other"),
    });
    let err = store
        .add_path(&lying_hash, &nar[..], AddOptions::default())
        .unwrap_err();
    assert!(matches!(err, AddError::CaHashMismatch { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("ca hash mismatch importing path '"));
    assert_unchanged(&store, &before, &honest.path);

    // The ca is right for the content but the path is not the one it gives.
    let mut wrong_path = honest.clone();
    wrong_path.path = test_path("tree");
    let err = store
        .add_path(&wrong_path, &nar[..], AddOptions::default())
        .unwrap_err();
    assert!(matches!(err, AddError::NotContentAddressed(_)), "{err}");
    assert_unchanged(&store, &before, &wrong_path.path);

    // A sha1 NAR hash ca, checked with a second hasher over the same stream.
    let sha1 = Hash::compute(HashAlgo::Sha1, &nar);
    let ca = ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: sha1,
    };
    let sha1_path = StoreDir::default()
        .make_path_from_ca("tree", &ca, &BTreeSet::new(), false)
        .unwrap();
    let mut sha1_info = honest.clone();
    sha1_info.path = sha1_path;
    sha1_info.ca = Some(ca);
    store
        .add_path(&sha1_info, &nar[..], AddOptions::default())
        .unwrap();
    let mut bad_sha1 = sha1_info.clone();
    bad_sha1.ca = Some(ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: Hash::compute(HashAlgo::Sha1, b"nope"),
    });
    bad_sha1.path = StoreDir::default()
        .make_path_from_ca(
            "tree",
            bad_sha1.ca.as_ref().unwrap(),
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    assert!(matches!(
        store.add_path(&bad_sha1, &nar[..], AddOptions::default()),
        Err(AddError::CaHashMismatch { .. })
    ));

    // A flat ca on a directory.
    let flat = ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
        hash: Hash::compute(HashAlgo::Sha256, b"x"),
    };
    let mut flat_dir = honest.clone();
    flat_dir.ca = Some(flat);
    flat_dir.path = StoreDir::default()
        .make_path_from_ca("tree", &flat, &BTreeSet::new(), false)
        .unwrap();
    let err = store
        .add_path(&flat_dir, &nar[..], AddOptions::default())
        .unwrap_err();
    assert!(matches!(err, AddError::NotAFlatFile { .. }), "{err}");
    // ... and over a symlink, which is never followed to hash its target.
    let link_nar = nar_of(&Node::Symlink("/etc/passwd".into()));
    let mut flat_link = plain_claim("tree", &link_nar, &[]);
    flat_link.ca = Some(flat);
    flat_link.path = flat_dir.path.clone();
    let err = store
        .add_path(&flat_link, &link_nar[..], AddOptions::default())
        .unwrap_err();
    assert!(matches!(err, AddError::NotAFlatFile { .. }), "{err}");

    // A text ca over a file whose contents differ.
    let text_nar = nar_of(&file(b"real text"));
    let refs = BTreeSet::new();
    let (text_path, text_ca) = text_ca("t", b"claimed text", &refs);
    let mut text_info = plain_claim("t", &text_nar, &[]);
    text_info.path = text_path;
    text_info.ca = Some(text_ca);
    assert!(matches!(
        store.add_path(&text_info, &text_nar[..], AddOptions::default()),
        Err(AddError::CaHashMismatch { .. })
    ));

    // Git hashing is not supported.
    let mut git = honest.clone();
    git.ca = Some(ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Git),
        hash: Hash::compute(HashAlgo::Sha1, b"x"),
    });
    assert!(matches!(
        store.add_path(&git, &nar[..], AddOptions::default()),
        Err(AddError::UnsupportedMethod { .. })
    ));
    assert!(!store.db().is_valid(&honest.path).unwrap());
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    for name in [
        "",
        ".",
        "..",
        "a/b",
        "../escape",
        "x\0y",
        ".-x",
        &"n".repeat(212),
    ] {
        let err = store
            .add_from_content(
                name,
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                HashAlgo::Sha256,
                &BTreeSet::new(),
                &b"data"[..],
                AddOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(err, AddError::BadName { .. }), "{name:?}: {err}");
    }
    assert_eq!(store_entries(&store), before);
    assert!(staging_is_empty(&store));
}

#[test]
fn already_valid_path_still_checks_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let nar = nar_of(&file(b"once"));
    let info = claim_for("once", &nar, &[]);
    store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap();
    let truncated = &nar[..nar.len() - 8];
    assert!(matches!(
        store.add_path(&info, truncated, AddOptions::default()),
        Err(AddError::Nar { .. })
    ));
    let other = nar_of(&file(b"twice"));
    assert!(matches!(
        store.add_path(&info, &other[..], AddOptions::default()),
        Err(AddError::HashMismatch { .. })
    ));
    assert!(store.db().is_valid(&info.path).unwrap(), "still valid");
}

#[test]
fn invalid_leftover_at_final_location_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let nar = nar_of(&sample_tree());
    let info = claim_for("sample", &nar, &[]);
    let real = store.layout().real_path(&info.path);
    // A half-written tree from an interrupted run, read-only like a finished one.
    std::fs::create_dir_all(real.join("bin")).unwrap();
    std::fs::write(real.join("bin/partial"), "trunc").unwrap();
    let ro = std::os::unix::fs::PermissionsExt::from_mode(0o555);
    std::fs::set_permissions(real.join("bin"), ro).unwrap();
    store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap();
    assert!(!real.join("bin/partial").exists());
    assert_eq!(dump_hash(&real), (info.nar_hash, info.nar_size));
}

#[test]
fn repair_restores_damaged_contents() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let nar = nar_of(&file(b"pristine"));
    let info = claim_for("fragile", &nar, &[]);
    store
        .add_path(&info, &nar[..], AddOptions::default())
        .unwrap();
    let real = store.layout().real_path(&info.path);
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&real, "damaged").unwrap();
    let repaired = store
        .add_path(&info, &nar[..], AddOptions { repair: true })
        .unwrap();
    assert_eq!(repaired, AddOutcome::Added);
    assert_eq!(std::fs::read(&real).unwrap(), b"pristine");
    assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o7777, 0o444);
}

#[test]
fn add_from_content_computes_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = StoreDir::default();

    // Flat, sha256 and sha1.
    for algo in [HashAlgo::Sha256, HashAlgo::Sha1] {
        let (info, outcome) = store
            .add_from_content(
                "flat.txt",
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                algo,
                &BTreeSet::new(),
                &b"flat contents\n"[..],
                AddOptions::default(),
            )
            .unwrap();
        assert_eq!(outcome, AddOutcome::Added);
        let expected = store_dir
            .make_fixed_output_path(
                "flat.txt",
                FileIngestionMethod::Flat,
                &Hash::compute(algo, b"flat contents\n"),
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        assert_eq!(info.path, expected);
        let real = store.layout().real_path(&info.path);
        assert_eq!(std::fs::read(&real).unwrap(), b"flat contents\n");
        assert_eq!(dump_hash(&real), (info.nar_hash, info.nar_size));
        assert_eq!(
            store.db().query_path_info(&info.path).unwrap(),
            Some(ValidPathInfo {
                registration_time: store
                    .db()
                    .query_path_info(&info.path)
                    .unwrap()
                    .unwrap()
                    .registration_time,
                ..info
            })
        );
    }

    // Text with a reference.
    let (dep, _) = store
        .add_from_content(
            "dep",
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &b"dep"[..],
            AddOptions::default(),
        )
        .unwrap();
    let refs: BTreeSet<StorePath> = [dep.path.clone()].into();
    let (text, _) = store
        .add_from_content(
            "text",
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &refs,
            &b"refers to dep"[..],
            AddOptions::default(),
        )
        .unwrap();
    assert_eq!(text.path, text_ca("text", b"refers to dep", &refs).0);
    assert_eq!(text.references, refs);
    assert!(matches!(
        store.add_from_content(
            "text",
            ContentAddressMethod::Text,
            HashAlgo::Sha1,
            &BTreeSet::new(),
            &b"x"[..],
            AddOptions::default()
        ),
        Err(AddError::UnsupportedMethod { .. })
    ));
    // Flat content cannot have references (Nix refuses them too).
    assert!(matches!(
        store.add_from_content(
            "flat-ref",
            ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
            HashAlgo::Sha256,
            &refs,
            &b"x"[..],
            AddOptions::default()
        ),
        Err(AddError::MakePath { .. })
    ));

    // Recursive from a NAR, sha256 and sha512.
    let nar = nar_of(&sample_tree());
    for algo in [HashAlgo::Sha256, HashAlgo::Sha512] {
        let (info, _) = store
            .add_from_content(
                "tree",
                ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
                algo,
                &BTreeSet::new(),
                &nar[..],
                AddOptions::default(),
            )
            .unwrap();
        assert_eq!(info.nar_hash, Hash::compute(HashAlgo::Sha256, &nar));
        assert_eq!(info.ca.unwrap().hash, Hash::compute(algo, &nar));
        assert!(info.is_content_addressed(&store_dir));
    }
    // Same content again: already valid.
    let (_, outcome) = store
        .add_from_content(
            "tree",
            ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &nar[..],
            AddOptions::default(),
        )
        .unwrap();
    assert_eq!(outcome, AddOutcome::AlreadyValid);
    assert!(staging_is_empty(&store));
}

/// A derivation named `name` with outputs `out` and `dev`, depending on `inputs`, with its
/// output paths filled in as the evaluator does (input derivations read from `store`).
fn derivation(store: &Store, name: &str, inputs: &[&StorePath]) -> Derivation {
    let env = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: [
            ("out".to_owned(), DerivationOutput::Deferred),
            ("dev".to_owned(), DerivationOutput::Deferred),
        ]
        .into(),
        input_drvs: inputs
            .iter()
            .map(|p| ((*p).clone(), ["out".to_owned()].into()))
            .collect(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![],
        env: [
            env("builder", "/bin/sh"),
            env("name", name),
            env("outputs", "out dev"),
            env("system", "x86_64-linux"),
        ]
        .into(),
    };
    let lookup = |p: &StorePath| read_derivation(store.layout(), &store.store_fd, p);
    drv.compute_output_paths(
        store.layout().store_dir(),
        &lookup,
        &mut HashModuloCache::new(),
    )
    .unwrap();
    drv
}

fn add_drv(store: &mut Store, drv: &Derivation) -> Result<ValidPathInfo, AddError> {
    let store_dir = store.layout().store_dir().clone();
    let text = drv.to_aterm(&store_dir).unwrap();
    store
        .add_from_content(
            &format!("{}.drv", drv.name),
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &drv.references(),
            &text[..],
            AddOptions::default(),
        )
        .map(|(info, _)| info)
}

#[test]
fn derivations_get_their_output_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let store_dir = StoreDir::default();
    let drv = derivation(&store, "x", &[]);
    let info = add_drv(&mut store, &drv).unwrap();
    assert_eq!(info.path, drv.drv_path(&store_dir).unwrap());
    let outputs = store.db().query_derivation_outputs(&info.path).unwrap();
    let expected: DerivationOutputs = drv
        .output_paths(&store_dir)
        .unwrap()
        .into_iter()
        .map(|(name, path)| (name, path.unwrap()))
        .collect();
    assert_eq!(outputs, expected);
    // Same derivation as `derivation { name = "x"; outputs = ["out" "dev"]; ... }` in Nix 2.8.
    assert_eq!(
        store_dir.print(&outputs["dev"]),
        "/nix/store/3qb5aqi3wxx9cipz0418a9w1nvqjsx4m-x-dev"
    );
    assert_eq!(
        store.db().query_valid_derivers(&outputs["out"]).unwrap(),
        [info.path.clone()].into()
    );

    // A derivation with an input derivation: checking its outputs reads the input from disk.
    let child = derivation(&store, "y", &[&info.path]);
    let child_info = add_drv(&mut store, &child).unwrap();
    assert_eq!(child_info.references, [info.path.clone()].into());
    assert_eq!(
        store
            .db()
            .query_derivation_outputs(&child_info.path)
            .unwrap()
            .len(),
        2
    );

    // Output paths that do not match the derivation are refused, as Nix refuses them.
    let before = store_entries(&store);
    let mut forged = derivation(&store, "z", &[]);
    let victim = test_path("victim");
    forged.outputs.insert(
        "out".into(),
        DerivationOutput::InputAddressed(victim.clone()),
    );
    forged
        .env
        .insert(b"out".to_vec(), store_dir.print(&victim).into_bytes());
    let err = add_drv(&mut store, &forged).unwrap_err();
    assert!(err.to_string().contains("has incorrect output"), "{err}");
    assert!(err.to_string().contains("z.drv"), "{err}");
    assert_eq!(store_entries(&store), before);
    assert!(store.db().query_valid_derivers(&victim).unwrap().is_empty());

    // A .drv that does not parse is not registered and not left in the store.
    let err = store
        .add_from_content(
            "broken.drv",
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &b"Derive(nonsense"[..],
            AddOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, AddError::Db { .. }), "{err}");
    assert!(err.to_string().contains("broken.drv"), "{err}");
    assert_eq!(store_entries(&store), before);
}

/// Paths added by ward pass the real Nix's verification and dump back to the same NAR.
#[test]
fn nix_verifies_paths_added_by_ward() {
    let Some(nix_store) = nix_store() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let nar = nar_of(&sample_tree());
    let (tree_path, flat_path) = {
        let mut store = open_store(home);
        let info = claim_for("sample", &nar, &[]);
        store
            .add_path(&info, &nar[..], AddOptions::default())
            .unwrap();
        let (flat, _) = store
            .add_from_content(
                "hello.txt",
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                HashAlgo::Sha256,
                &BTreeSet::new(),
                &b"hello\n"[..],
                AddOptions::default(),
            )
            .unwrap();
        (info.path, flat.path)
    };
    let root = home.join("root");
    let root_s = root.to_str().unwrap();
    let store_dir = StoreDir::default();
    for path in [&tree_path, &flat_path] {
        let printed = store_dir.print(path);
        let out = try_nix(
            &nix_store,
            &["--store", root_s, "--verify-path", &printed],
            home,
        );
        assert!(
            out.status.success(),
            "nix-store --verify-path {printed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let nix = nix_store.with_file_name("nix");
    let dumped = try_nix(
        &nix,
        &[
            "--extra-experimental-features",
            "nix-command",
            "store",
            "dump-path",
            "--store",
            root_s,
            &store_dir.print(&tree_path),
        ],
        home,
    );
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert_eq!(dumped.stdout, nar);
    // Nix computes the same path for the same file.
    std::fs::write(home.join("hello.txt"), "hello\n").unwrap();
    let nix_flat = run_nix(
        &nix_store,
        &[
            "--store",
            root_s,
            "--add-fixed",
            "sha256",
            home.join("hello.txt").to_str().unwrap(),
        ],
        home,
    );
    assert_eq!(nix_flat.trim(), store_dir.print(&flat_path));
}

#[test]
fn staging_needs_no_store_and_other_adds_commit_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let slow_nar = nar_of(&sample_tree());
    let slow = claim_for("slow", &slow_nar, &[]);
    let quick_nar = nar_of(&file(b"quick\n"));
    let quick = claim_for("quick", &quick_nar, &[]);
    let prepared = store
        .prepare_add_path(&slow, AddOptions::default())
        .unwrap();
    // The store is free while `slow` is staged on another thread.
    let stager = std::thread::spawn(move || prepared.stage(&slow_nar[..]));
    assert_eq!(
        store
            .add_path(&quick, &quick_nar[..], AddOptions::default())
            .unwrap(),
        AddOutcome::Added
    );
    let staged = stager.join().unwrap().unwrap();
    assert_eq!(staged.info(), &slow);
    assert!(
        !store.db().is_valid(&slow.path).unwrap(),
        "nothing is valid before the commit"
    );
    assert_eq!(store.commit_addition(staged).unwrap(), AddOutcome::Added);
    assert!(store.db().is_valid(&slow.path).unwrap());
    let real = store.layout().real_path(&slow.path);
    assert_eq!(dump_hash(&real), (slow.nar_hash, slow.nar_size));
    assert!(staging_is_empty(&store));
}

#[test]
fn a_staged_addition_that_is_dropped_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let nar = nar_of(&sample_tree());
    let info = claim_for("dropped", &nar, &[]);
    let staged = store
        .prepare_add_path(&info, AddOptions::default())
        .unwrap()
        .stage(&nar[..])
        .unwrap();
    assert!(!staging_is_empty(&store));
    drop(staged);
    assert_unchanged(&store, &before, &info.path);
}

#[test]
fn a_path_added_by_another_channel_meanwhile_is_already_valid_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let nar = nar_of(&sample_tree());
    let info = claim_for("twice", &nar, &[]);
    let first = store
        .prepare_add_path(&info, AddOptions::default())
        .unwrap()
        .stage(&nar[..])
        .unwrap();
    assert_eq!(
        store
            .add_path(&info, &nar[..], AddOptions::default())
            .unwrap(),
        AddOutcome::Added
    );
    assert_eq!(
        store.commit_addition(first).unwrap(),
        AddOutcome::AlreadyValid
    );
    assert!(staging_is_empty(&store));
    assert_eq!(
        dump_hash(&store.layout().real_path(&info.path)),
        (info.nar_hash, info.nar_size)
    );
}

/// Stages `info` as the next addition of a batch whose paths so far are `batch`.
fn stage_in_batch(
    store: &mut Store,
    info: &ValidPathInfo,
    nar: &[u8],
    batch: &mut BTreeSet<StorePath>,
) -> StagedAddition {
    let staged = store
        .prepare_add_path_in_batch(info, AddOptions::default(), batch)
        .unwrap()
        .stage(nar)
        .unwrap();
    batch.insert(info.path.clone());
    staged
}

#[test]
fn a_batch_may_refer_to_its_own_earlier_paths_and_commits_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let mut batch = BTreeSet::new();
    let leaf_nar = nar_of(&file(b"leaf\n"));
    let leaf = claim_for("leaf", &leaf_nar, &[]);
    let top_nar = nar_of(&sample_tree());
    let top = claim_for("top", &top_nar, &[&leaf.path]);
    // Before the batch is committed, `top`'s reference is not valid: alone it is refused.
    assert!(matches!(
        store.prepare_add_path(&top, AddOptions::default()),
        Err(AddError::InvalidReference { .. })
    ));
    let staged = vec![
        stage_in_batch(&mut store, &leaf, &leaf_nar, &mut batch),
        stage_in_batch(&mut store, &top, &top_nar, &mut batch),
        // The same path twice in one batch is staged once.
        stage_in_batch(&mut store, &leaf, &leaf_nar, &mut batch),
    ];
    assert!(
        !store.db().is_valid(&leaf.path).unwrap(),
        "nothing registered before commit"
    );
    let (outcomes, failure) = store.commit_additions(staged);
    assert!(failure.is_none(), "{failure:?}");
    let outcomes: Vec<_> = outcomes.into_iter().map(|(_, o)| o).collect();
    assert_eq!(
        outcomes,
        [
            AddOutcome::Added,
            AddOutcome::Added,
            AddOutcome::AlreadyValid
        ]
    );
    for info in [&leaf, &top] {
        assert!(store.db().is_valid(&info.path).unwrap());
        assert_eq!(
            dump_hash(&store.layout().real_path(&info.path)),
            (info.nar_hash, info.nar_size)
        );
    }
    assert_eq!(
        store.db().query_referrers(&leaf.path).unwrap(),
        BTreeSet::from([top.path.clone()])
    );
    assert!(staging_is_empty(&store));
}

#[test]
fn a_batch_registers_the_paths_before_a_failed_one_and_none_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let before = store_entries(&store);
    let mut batch = BTreeSet::new();
    let first_nar = nar_of(&file(b"first\n"));
    let first = claim_for("first", &first_nar, &[]);
    let second_nar = nar_of(&file(b"second\n"));
    let second = claim_for("second", &second_nar, &[]);
    let third_nar = nar_of(&file(b"third\n"));
    let third = claim_for("third", &third_nar, &[&second.path]);
    let staged = vec![
        stage_in_batch(&mut store, &first, &first_nar, &mut batch),
        stage_in_batch(&mut store, &second, &second_nar, &mut batch),
        stage_in_batch(&mut store, &third, &third_nar, &mut batch),
    ];
    // `second` leaves the batch (as a refused addition would), so `third`'s reference is
    // neither valid nor earlier in the batch when it is committed.
    let mut staged = staged;
    staged.remove(1);
    let (outcomes, failure) = store.commit_additions(staged);
    assert_eq!(outcomes.len(), 1, "only the addition before the failed one");
    assert!(
        matches!(failure, Some(AddError::InvalidReference { .. })),
        "{failure:?}"
    );
    assert!(store.db().is_valid(&first.path).unwrap());
    assert!(!store.db().is_valid(&third.path).unwrap());
    let mut expected = before.clone();
    expected.insert(first.path.base_name().to_owned());
    assert_eq!(
        store_entries(&store),
        expected,
        "no entry of the failed addition"
    );
    assert!(staging_is_empty(&store));
}
