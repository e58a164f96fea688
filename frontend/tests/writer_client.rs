//! Round trips through [`WriterClient`] against the real `ward-store-writer` binary on a
//! temporary chroot store, checked in the database with the frontend's read-only open.
//!
//! The binary belongs to another package, so Cargo does not build it for this test: the test
//! builds it once (`cargo build -p ward-store-writer`, a no-op when it is fresh) into the same
//! target directory and starts it from there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ward_frontend::writer_client::{ClientError, WriterClient};
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::store_writer::{PathInfo, StoreWriterError};
use ward_proto::nar::NarWriter;
use ward_proto::path_info::ValidPathInfo;
use ward_proto::signature::SecretKey;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::StoreDb;
use ward_store::layout::StoreLayout;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `target/<profile>/ward-store-writer`, built on first use.
fn store_writer_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test binary>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let target_dir = profile_dir.parent().unwrap();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "ward-store-writer",
                "--bin",
                "ward-store-writer",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building ward-store-writer failed");
        profile_dir.join("ward-store-writer")
    })
}

/// A running store-writer on a temporary store; killed when dropped.
struct Writer {
    dir: tempfile::TempDir,
    child: Child,
}

impl Writer {
    fn start(nix_conf: &str) -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("nix.conf"), nix_conf).unwrap();
        let log = std::fs::File::create(dir.path().join("writer.log")).unwrap();
        let child = Command::new(store_writer_binary())
            .arg("--ipc-dir")
            .arg(dir.path().join("ipc"))
            .arg("--")
            .arg("--store")
            .arg(dir.path().join("root"))
            .env_clear()
            .env("NIX_CONF_DIR", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Writer { dir, child }
    }

    async fn client(&self) -> WriterClient {
        WriterClient::connect(&self.dir.path().join("ipc"), CONNECT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("writer.log")).unwrap_or_default()
    }

    fn layout(&self) -> StoreLayout {
        StoreLayout::chroot(&self.dir.path().join("root")).unwrap()
    }

    fn db(&self) -> StoreDb {
        StoreDb::open_read_only(&self.layout()).unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The NAR of a small tree: a directory with a file, an executable and a symlink.
fn tree_nar(seed: &str) -> Vec<u8> {
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    nar.entry(b"bin").unwrap();
    nar.file_from_bytes(true, format!("#!/bin/sh\necho {seed}\n").as_bytes())
        .unwrap();
    nar.entry(b"data").unwrap();
    nar.file_from_bytes(false, &vec![b'x'; 200_000]).unwrap();
    nar.entry(b"link").unwrap();
    nar.symlink(b"data").unwrap();
    nar.end_directory().unwrap();
    nar.finish().unwrap()
}

/// An input-addressed-looking claim for `nar` (no content address).
fn plain_claim(hash_part_seed: &str, name: &str, nar: &[u8]) -> ValidPathInfo {
    let hash = Hash::compute(HashAlgo::Sha256, hash_part_seed.as_bytes()).fold(20);
    let base = format!("{}-{name}", ward_proto::nix32::encode(&hash));
    let mut info = ValidPathInfo::new(
        StorePath::from_base_name(&base).unwrap(),
        Hash::compute(HashAlgo::Sha256, nar),
    );
    info.nar_size = nar.len() as u64;
    info
}

/// A claim for `nar` as a content-addressed (`fixed:r:sha256`) source.
fn ca_claim(name: &str, nar: &[u8]) -> ValidPathInfo {
    let nar_hash = Hash::compute(HashAlgo::Sha256, nar);
    let path = StoreDir::default()
        .make_fixed_output_path(
            name,
            FileIngestionMethod::Recursive,
            &nar_hash,
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    let mut info = ValidPathInfo::new(path, nar_hash);
    info.nar_size = nar.len() as u64;
    info.ca = Some(ContentAddress {
        method: ContentAddressMethod::Fixed(FileIngestionMethod::Recursive),
        hash: nar_hash,
    });
    info
}

fn to_ipc(info: &ValidPathInfo) -> PathInfo {
    info.clone()
}

fn refusal(e: ClientError) -> StoreWriterError {
    match e {
        ClientError::Store(e) => *e,
        other => panic!("expected a refusal, got: {other}"),
    }
}

#[tokio::test]
async fn a_nar_round_trips_into_the_store_and_the_database() {
    let writer = Writer::start("");
    let mut client = writer.client().await;
    let nar = tree_nar("one");
    let claim = plain_claim("one", "tree", &nar);
    let added = client
        .add_path_from_nar(to_ipc(&claim), false, false, &nar[..])
        .await
        .unwrap();
    assert_eq!(added.path, claim.path);
    assert_eq!(added.nar_hash, claim.nar_hash);
    assert_eq!(added.nar_size, nar.len() as u64);
    assert!(added.registration_time > 0);

    let stored = writer.db().query_path_info(&claim.path).unwrap().unwrap();
    assert_eq!(stored.nar_hash, claim.nar_hash);
    assert_eq!(stored.nar_size, claim.nar_size);
    let on_disk = writer.layout().real_path(&claim.path);
    assert_eq!(
        std::fs::read_to_string(on_disk.join("bin")).unwrap(),
        "#!/bin/sh\necho one\n"
    );
    assert_eq!(
        std::fs::read_link(on_disk.join("link")).unwrap(),
        Path::new("data")
    );
    // The same path again: nothing to do, the same info comes back.
    let again = client
        .add_path_from_nar(to_ipc(&claim), false, false, &nar[..])
        .await
        .unwrap();
    assert_eq!(again, added);
}

#[tokio::test]
async fn a_hash_mismatch_names_the_path_and_both_hashes_and_registers_nothing() {
    let writer = Writer::start("");
    let mut client = writer.client().await;
    let nar = tree_nar("two");
    let mut claim = plain_claim("two", "tree", &nar);
    let claimed_hash = Hash::compute(HashAlgo::Sha256, b"something else");
    claim.nar_hash = claimed_hash;
    let e = refusal(
        client
            .add_path_from_nar(to_ipc(&claim), false, false, &nar[..])
            .await
            .unwrap_err(),
    );
    let actual = Hash::compute(HashAlgo::Sha256, &nar);
    assert_eq!(
        e,
        StoreWriterError::HashMismatch {
            path: claim.path.clone(),
            expected: claimed_hash,
            actual,
        }
    );
    let text = e.to_string();
    assert!(text.contains(claim.path.base_name()), "{text}");
    assert!(text.contains(&claimed_hash.to_prefixed_nix32()), "{text}");
    assert!(text.contains(&actual.to_prefixed_nix32()), "{text}");
    assert!(!writer.db().is_valid(&claim.path).unwrap());
    assert!(!writer.layout().real_path(&claim.path).exists());

    // A claimed size that is too small: the NAR is cut off at the claim (nothing past it is
    // read or stored), and the claim is reported.
    let mut claim = plain_claim("two", "tree", &nar);
    claim.nar_size = 100;
    let e = refusal(
        client
            .add_path_from_nar(to_ipc(&claim), false, false, &nar[..])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        StoreWriterError::LongerThanClaimed {
            path: claim.path.clone(),
            expected: 100,
        }
    );
    assert!(!writer.db().is_valid(&claim.path).unwrap());
}

/// Yields the first `cut` bytes of `data`, then fails, like a Nix client that disconnects.
struct CutShort {
    data: Vec<u8>,
    at: usize,
    cut: usize,
}

impl tokio::io::AsyncRead for CutShort {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at >= self.cut {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the nix client went away",
            )));
        }
        let n = buf.remaining().min(self.cut - self.at).min(4096);
        let start = self.at;
        buf.put_slice(&self.data[start..start + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_nar_cut_short_registers_nothing_and_the_writer_keeps_serving() {
    let writer = Writer::start("");
    let mut client = writer.client().await;
    let nar = tree_nar("three");
    let claim = plain_claim("three", "tree", &nar);
    let source = CutShort {
        cut: nar.len() / 2,
        data: nar.clone(),
        at: 0,
    };
    let e = client
        .add_path_from_nar(to_ipc(&claim), false, false, source)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Source(_)), "{e}");
    assert!(e.to_string().contains("went away"), "{e}");
    // The store-writer saw the NAR end early and refused it.
    eventually("the refusal to be logged", || {
        writer.log().contains("ended early")
    });
    assert!(!writer.db().is_valid(&claim.path).unwrap());
    assert!(!writer.layout().real_path(&claim.path).exists());
    // The same channel goes on, and the whole NAR is then accepted.
    client.ping().await.unwrap();
    client
        .add_path_from_nar(to_ipc(&claim), false, false, &nar[..])
        .await
        .unwrap();
    assert!(writer.db().is_valid(&claim.path).unwrap());
    // Nothing was left in the staging area.
    let staging = writer.layout().staging_dir();
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

#[tokio::test]
async fn untrusted_imports_need_a_trusted_signature_or_a_content_address() {
    let trusted = SecretKey::generate("trusted-1").unwrap();
    let other = SecretKey::generate("other-1").unwrap();
    let writer = Writer::start(&format!(
        "trusted-public-keys = {}\nrequire-sigs = true\n",
        trusted.public_key()
    ));
    let mut client = writer.client().await;
    let store_dir = StoreDir::default();

    let nar = tree_nar("four");
    let unsigned = plain_claim("four", "tree", &nar);
    let e = refusal(
        client
            .add_path_from_nar(to_ipc(&unsigned), false, true, &nar[..])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        StoreWriterError::SignatureMissing {
            path: unsigned.path.clone()
        }
    );
    assert!(e.to_string().contains(unsigned.path.base_name()), "{e}");

    let mut wrong_key = unsigned.clone();
    wrong_key.sign(&store_dir, &other).unwrap();
    let e = refusal(
        client
            .add_path_from_nar(to_ipc(&wrong_key), false, true, &nar[..])
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(e, StoreWriterError::SignatureMissing { .. }),
        "{e}"
    );
    assert!(!writer.db().is_valid(&unsigned.path).unwrap());

    let mut signed = unsigned.clone();
    signed.sign(&store_dir, &trusted).unwrap();
    // Claiming `ultimate` does not stick for an untrusted client.
    signed.ultimate = true;
    let added = client
        .add_path_from_nar(to_ipc(&signed), false, true, &nar[..])
        .await
        .unwrap();
    assert_eq!(added.sigs, signed.sigs);
    assert!(!added.ultimate);

    // A correctly content-addressed path needs no signature.
    let nar = tree_nar("five");
    let ca = ca_claim("source", &nar);
    let added = client
        .add_path_from_nar(to_ipc(&ca), false, true, &nar[..])
        .await
        .unwrap();
    assert_eq!(added.ca, ca.ca);

    // A content address that does not give the path does not excuse a missing signature.
    let other_nar = tree_nar("six");
    let mut false_ca = plain_claim("six", "source", &other_nar);
    false_ca.ca = ca_claim("source", &other_nar).ca;
    let e = refusal(
        client
            .add_path_from_nar(to_ipc(&false_ca), false, true, &other_nar[..])
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(e, StoreWriterError::SignatureMissing { .. }),
        "{e}"
    );

    // A trusted client (check_sigs off) may import unsigned paths.
    client
        .add_path_from_nar(
            to_ipc(&plain_claim("seven", "t", &other_nar)),
            false,
            false,
            &other_nar[..],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn content_is_hashed_by_the_store_writer() {
    let writer = Writer::start("");
    let mut client = writer.client().await;
    let text = b"hello, ward\n";
    let added = client
        .add_content(
            "greeting".into(),
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            BTreeSet::new(),
            false,
            &text[..],
        )
        .await
        .unwrap();
    let expected = StoreDir::default()
        .make_text_path(
            "greeting",
            &Hash::compute(HashAlgo::Sha256, text),
            &BTreeSet::new(),
        )
        .unwrap();
    assert_eq!(added.path, expected);
    assert_eq!(
        std::fs::read(writer.layout().real_path(&expected)).unwrap(),
        text
    );
    // A text referring to it.
    let referrer = client
        .add_content(
            "referrer".into(),
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            [expected.clone()].into(),
            false,
            &b"uses greeting"[..],
        )
        .await
        .unwrap();
    assert_eq!(referrer.references, [expected].into());
    // References must be valid.
    let missing = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-missing").unwrap();
    let e = refusal(
        client
            .add_content(
                "dangling".into(),
                ContentAddressMethod::Text,
                HashAlgo::Sha256,
                [missing.clone()].into(),
                false,
                &b"x"[..],
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e, StoreWriterError::NotValid { path: missing });
    let e = refusal(
        client
            .add_content(
                "bad/name".into(),
                ContentAddressMethod::Fixed(FileIngestionMethod::Flat),
                HashAlgo::Sha256,
                BTreeSet::new(),
                false,
                &b"x"[..],
            )
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, StoreWriterError::BadName { .. }), "{e}");
}

#[tokio::test]
async fn temp_roots_and_indirect_roots() {
    let writer = Writer::start("");
    let mut client = writer.client().await;
    let path = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-kept").unwrap();
    client.add_temp_root(path.clone()).await.unwrap();
    let temproots = writer.layout().temproots_dir();
    let files: Vec<PathBuf> = std::fs::read_dir(&temproots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        format!("/nix/store/{}\0", path.base_name()).as_bytes()
    );

    let link = writer
        .dir
        .path()
        .join("result")
        .to_str()
        .unwrap()
        .to_owned();
    client.add_indirect_root(link.clone()).await.unwrap();
    let root = writer
        .layout()
        .gcroots_dir()
        .join("auto")
        .join(Hash::compute(HashAlgo::Sha1, link.as_bytes()).to_nix32());
    assert_eq!(std::fs::read_link(root).unwrap(), Path::new(&link));

    // A second, independent channel has its own roots file.
    let mut second = client.open_channel(Some(1), Some(0)).await.unwrap();
    second.add_temp_root(path).await.unwrap();
    assert_eq!(std::fs::read_dir(&temproots).unwrap().count(), 2);
    drop(second);
    drop(client);
    eventually("the roots files to go", || {
        std::fs::read_dir(&temproots).unwrap().count() == 0
    });
}

#[tokio::test]
async fn the_client_waits_for_a_store_writer_that_is_still_starting() {
    let dir = tempfile::tempdir().unwrap();
    let ipc = dir.path().join("ipc");
    let connecting = tokio::spawn({
        let ipc = ipc.clone();
        async move { WriterClient::connect(&ipc, CONNECT_TIMEOUT).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conf = dir.path().join("etc");
    std::fs::create_dir(&conf).unwrap();
    let mut child = Command::new(store_writer_binary())
        .arg("--ipc-dir")
        .arg(&ipc)
        .arg("--")
        .arg("--store")
        .arg(dir.path().join("root"))
        .env_clear()
        .env("NIX_CONF_DIR", &conf)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let result = connecting.await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut client = result.unwrap();
    // The store-writer is gone now: the channel fails as an IPC error, not a refusal.
    let e = client.ping().await.unwrap_err();
    assert!(matches!(e, ClientError::Ipc(_)), "{e}");
}

#[tokio::test]
async fn require_sigs_false_turns_the_signature_check_off() {
    let writer = Writer::start("require-sigs = false\n");
    let mut client = writer.client().await;
    let nar = tree_nar("eight");
    let unsigned = plain_claim("eight", "tree", &nar);
    client
        .add_path_from_nar(to_ipc(&unsigned), false, true, &nar[..])
        .await
        .unwrap();
    assert!(writer.db().is_valid(&unsigned.path).unwrap());
}
