//! The real `ward-store-writer` binary on a temporary chroot store, driven over its socket with
//! the blocking IPC channel: start-up and confinement, the handshake and protocol violations,
//! temporary, indirect and permanent roots, build logs, signatures, realisations, operations
//! of later issues, registering build outputs from NAR pipes, a peer leaving mid-transfer, and
//! a peer with a foreign uid.
//!
//! (The NAR round trips through the frontend's async client are in
//! `frontend/tests/writer_client.rs`.)

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_proto::content_address::ContentAddressMethod;
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::store_writer::{
    AddContent, AddPathFromNar, DrvOutputId, FrontendToStoreWriter, GcAction, PathInfo,
    Realisation, StoreWriterError, StoreWriterToFrontend,
};
use ward_proto::ipc::{Channel, FrameLimit, IpcError, Phase, IPC_VERSION};
use ward_proto::nar::NarWriter;
use ward_proto::signature::SecretKey;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_store::db::StoreDb;
use ward_store::layout::StoreLayout;

type Client = Channel<FrontendToStoreWriter, StoreWriterToFrontend>;

/// A running store-writer on its own temporary store; killed when dropped.
struct Writer {
    dir: tempfile::TempDir,
    child: Child,
}

impl Writer {
    fn start(extra_conf: &str) -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("etc");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("nix.conf"), extra_conf).unwrap();
        let log = std::fs::File::create(dir.path().join("writer.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ward-store-writer"))
            .arg("--ipc-dir")
            .arg(dir.path().join("ipc"))
            .arg("--")
            .arg("--store")
            .arg(dir.path().join("root"))
            .arg("--debug")
            .env_clear()
            .env("NIX_CONF_DIR", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut writer = Writer { dir, child };
        writer.wait_for_socket();
        writer
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("ipc/store-writer.socket")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn layout(&self) -> StoreLayout {
        StoreLayout::chroot(&self.root()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("writer.log")).unwrap()
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // The socket file appears at bind(), a moment before listen(): wait for a connection
        // to be accepted, not for the file.
        // It confines itself after listen() and then says it is ready: wait for that too.
        while UnixStream::connect(self.socket()).is_err()
            || !self.log().contains("store-writer ready")
        {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("store-writer exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "no socket: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn raw(&self) -> Client {
        Channel::new(
            UnixStream::connect(self.socket()).unwrap(),
            FrameLimit::DEFAULT,
        )
    }

    fn connect(&self) -> Client {
        let client = self.raw();
        let reply = call(
            &client,
            FrontendToStoreWriter::Hello {
                ipc_version: IPC_VERSION,
                client_uid: None,
            },
        );
        assert_eq!(
            reply,
            StoreWriterToFrontend::Hello {
                ipc_version: IPC_VERSION
            }
        );
        client
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(client: &Client, request: FrontendToStoreWriter) -> StoreWriterToFrontend {
    client.send(&request, &[]).unwrap();
    client.recv().unwrap().message
}

fn refused(reply: StoreWriterToFrontend) -> StoreWriterError {
    match reply {
        StoreWriterToFrontend::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Waits until `cond` holds (the store-writer works on its own threads).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_nar(contents: &[u8]) -> Vec<u8> {
    let mut nar = NarWriter::new(Vec::new());
    nar.file_from_bytes(false, contents).unwrap();
    nar.finish().unwrap()
}

/// Adds `contents` as a text path and returns it.
fn add_text(client: &Client, name: &str, contents: &[u8]) -> PathInfo {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let request = FrontendToStoreWriter::AddContent(Box::new(AddContent {
        name: name.into(),
        method: ContentAddressMethod::Text,
        hash_algo: HashAlgo::Sha256,
        references: BTreeSet::new(),
        repair: false,
    }));
    client.send(&request, &[r.as_fd()]).unwrap();
    drop(r);
    std::fs::File::from(w).write_all(contents).unwrap();
    match client.recv().unwrap().message {
        StoreWriterToFrontend::PathAdded(info) => *info,
        other => panic!("{other:?}"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn start_up_confines_the_process_and_prepares_the_database() {
    let writer = Writer::start("");
    let status = std::fs::read_to_string(format!("/proc/{}/status", writer.pid())).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    assert_eq!(mode(&writer.socket()), 0o660);
    let db = writer.layout().db_file();
    for suffix in ["-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        assert!(Path::new(&name).exists(), "{suffix} must exist for readers");
    }
    assert!(
        writer.log().contains("store-writer ready"),
        "{}",
        writer.log()
    );
    let client = writer.connect();
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
}

#[test]
fn the_handshake_comes_first_and_only_once() {
    let writer = Writer::start("");
    // A request before Hello: refused, then the channel is closed.
    let client = writer.raw();
    let e = refused(call(&client, FrontendToStoreWriter::Ping));
    assert_eq!(
        e,
        StoreWriterError::NotPermitted {
            request: "Ping".into(),
            phase: Phase::Handshake
        }
    );
    assert!(matches!(client.recv(), Err(IpcError::PeerClosed)));

    // Another version: refused and closed.
    let client = writer.raw();
    let e = refused(call(
        &client,
        FrontendToStoreWriter::Hello {
            ipc_version: IPC_VERSION + 1,
            client_uid: None,
        },
    ));
    assert!(matches!(e, StoreWriterError::VersionMismatch { .. }), "{e}");
    assert!(matches!(client.recv(), Err(IpcError::PeerClosed)));

    // Hello twice: refused and closed.
    let client = writer.connect();
    let e = refused(call(
        &client,
        FrontendToStoreWriter::Hello {
            ipc_version: IPC_VERSION,
            client_uid: None,
        },
    ));
    assert!(
        matches!(
            e,
            StoreWriterError::NotPermitted {
                phase: Phase::Serving,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(client.recv(), Err(IpcError::PeerClosed)));

    // Garbage instead of a frame closes only that channel.
    let mut garbage = UnixStream::connect(writer.socket()).unwrap();
    garbage.write_all(&[0xff; 64]).unwrap();
    // Closed without a reply (a reset when our bytes were still unread).
    let mut rest = Vec::new();
    match garbage.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let client = writer.connect();
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
    assert!(
        writer.log().contains("protocol violation"),
        "{}",
        writer.log()
    );
}

#[test]
fn temporary_roots_live_exactly_as_long_as_their_channel() {
    let writer = Writer::start("");
    let client = writer.connect();
    let path = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-anything").unwrap();
    assert_eq!(
        call(
            &client,
            FrontendToStoreWriter::AddTempRoot { path: path.clone() }
        ),
        StoreWriterToFrontend::Done
    );
    let temproots = writer.layout().temproots_dir();
    let files: Vec<PathBuf> = std::fs::read_dir(&temproots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("{}-", writer.pid())),
        "named after the store-writer's pid: {name}"
    );
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        format!("{}\0", StoreDir::default().print(&path)).as_bytes()
    );
    // Locked: a collector would see live roots.
    let file = std::fs::File::open(&files[0]).unwrap();
    assert!(
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    );
    drop(client);
    eventually("the temporary roots file to go", || !files[0].exists());
}

#[test]
fn indirect_and_permanent_roots() {
    let writer = Writer::start("");
    let client = writer.connect();
    let link = writer.dir.path().join("result");
    let link = link.to_str().unwrap().to_owned();
    assert_eq!(
        call(
            &client,
            FrontendToStoreWriter::AddIndirectRoot { link: link.clone() }
        ),
        StoreWriterToFrontend::Done
    );
    let auto = writer.layout().gcroots_dir().join("auto");
    let entries: Vec<PathBuf> = std::fs::read_dir(&auto)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].file_name().unwrap().to_str().unwrap(),
        Hash::compute(HashAlgo::Sha1, link.as_bytes()).to_nix32()
    );
    assert_eq!(std::fs::read_link(&entries[0]).unwrap(), Path::new(&link));

    let e = refused(call(
        &client,
        FrontendToStoreWriter::AddIndirectRoot {
            link: "/a/../etc".into(),
        },
    ));
    assert!(matches!(e, StoreWriterError::BadRoot { .. }), "{e}");

    let state = writer.layout().state_dir().to_str().unwrap().to_owned();
    let gc_root = format!("{state}/gcroots/mine");
    let missing = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-missing").unwrap();
    let e = refused(call(
        &client,
        FrontendToStoreWriter::AddPermRoot {
            path: missing.clone(),
            gc_root: gc_root.clone(),
        },
    ));
    assert_eq!(e, StoreWriterError::NotValid { path: missing });

    let info = add_text(&client, "rooted", b"keep me");
    assert_eq!(
        call(
            &client,
            FrontendToStoreWriter::AddPermRoot {
                path: info.path.clone(),
                gc_root: gc_root.clone(),
            },
        ),
        StoreWriterToFrontend::RootAdded {
            gc_root: gc_root.clone()
        }
    );
    assert_eq!(
        std::fs::read_link(&gc_root).unwrap(),
        Path::new(&StoreDir::default().print(&info.path))
    );
    let e = refused(call(
        &client,
        FrontendToStoreWriter::AddPermRoot {
            path: info.path,
            gc_root: format!("{}/elsewhere", writer.dir.path().display()),
        },
    ));
    assert!(e.to_string().contains("is not inside"), "{e}");
}

#[test]
fn build_logs_signatures_and_realisations() {
    let writer = Writer::start("experimental-features = ca-derivations\n");
    let client = writer.connect();

    let drv = StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv").unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    client
        .send(
            &FrontendToStoreWriter::AddBuildLog {
                drv_path: drv.clone(),
            },
            &[r.as_fd()],
        )
        .unwrap();
    drop(r);
    std::fs::File::from(w).write_all(b"building\n").unwrap();
    assert_eq!(client.recv().unwrap().message, StoreWriterToFrontend::Done);
    let log = writer
        .layout()
        .log_dir()
        .join("drvs/7h/7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv.bz2");
    assert!(std::fs::read(&log).unwrap().starts_with(b"BZh"));

    let info = add_text(&client, "signed", b"sign me");
    let key = SecretKey::generate("test-1").unwrap();
    let sig = key.sign("anything");
    assert_eq!(
        call(
            &client,
            FrontendToStoreWriter::AddSignatures {
                path: info.path.clone(),
                sigs: [sig.clone()].into(),
            }
        ),
        StoreWriterToFrontend::Done
    );
    let e = refused(call(
        &client,
        FrontendToStoreWriter::AddSignatures {
            path: info.path.clone(),
            sigs: ["no-colon".to_string()].into(),
        },
    ));
    assert!(matches!(e, StoreWriterError::BadSignature { .. }), "{e}");

    let realisation = Realisation {
        id: DrvOutputId {
            drv_hash: Hash::compute(HashAlgo::Sha256, b"drv"),
            output: "out".into(),
        },
        out_path: info.path.clone(),
        signatures: BTreeSet::new(),
        dependent_realisations: Default::default(),
    };
    assert_eq!(
        call(
            &client,
            FrontendToStoreWriter::RegisterRealisation(Box::new(realisation.clone()))
        ),
        StoreWriterToFrontend::Done
    );
    let mut bad = realisation;
    bad.out_path = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-nope").unwrap();
    let e = refused(call(
        &client,
        FrontendToStoreWriter::RegisterRealisation(Box::new(bad)),
    ));
    assert!(matches!(e, StoreWriterError::NotValid { .. }), "{e}");

    let db = StoreDb::open_read_only(&writer.layout()).unwrap();
    let stored = db.query_path_info(&info.path).unwrap().unwrap();
    assert!(stored.sigs.contains(&sig));
    let id = ward_proto::path_info::DrvOutput {
        drv_hash: Hash::compute(HashAlgo::Sha256, b"drv"),
        output: "out".into(),
    };
    assert_eq!(
        db.query_realisation(&id).unwrap().unwrap().out_path,
        info.path
    );
}

#[test]
fn maintenance_ops_are_served_or_refused_with_a_clear_error() {
    let writer = Writer::start("");
    let client = writer.connect();
    // Without a broker (started by hand) the roots cannot be found: no collection at all.
    let e = refused(call(
        &client,
        FrontendToStoreWriter::CollectGarbage {
            action: GcAction::DeleteDead,
            paths: BTreeSet::new(),
            max_freed: u64::MAX,
            keep_outputs: false,
            keep_derivations: true,
        },
    ))
    .to_string();
    assert!(
        e.contains("collecting garbage in") && e.contains("without the broker"),
        "{e}"
    );
    // VerifyStore is served: an empty store verifies, saying what it checked.
    match call(
        &client,
        FrontendToStoreWriter::VerifyStore {
            check_contents: true,
            repair: false,
        },
    ) {
        StoreWriterToFrontend::Verified {
            errors_found,
            messages,
            ..
        } => {
            assert!(!errors_found, "{messages:?}");
            assert!(messages.contains(&(false, "checking store hashes...".to_string())));
        }
        other => panic!("VerifyStore: {other:?}"),
    }
    // So is OptimiseStore: nothing to link in an empty store.
    assert_eq!(
        call(&client, FrontendToStoreWriter::OptimiseStore),
        StoreWriterToFrontend::Optimised {
            bytes_freed: 0,
            files_linked: 0
        }
    );
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
}

#[test]
fn open_channel_makes_an_independent_channel() {
    let writer = Writer::start("");
    let client = writer.connect();
    let (ours, theirs) = UnixStream::pair().unwrap();
    client
        .send(
            &FrontendToStoreWriter::OpenChannel {
                peer_pid: Some(1),
                peer_uid: Some(0),
            },
            &[theirs.as_fd()],
        )
        .unwrap();
    drop(theirs);
    assert_eq!(client.recv().unwrap().message, StoreWriterToFrontend::Done);
    let second: Client = Channel::new(ours, FrameLimit::DEFAULT);
    assert!(matches!(
        call(
            &second,
            FrontendToStoreWriter::Hello {
                ipc_version: IPC_VERSION,
                client_uid: None,
            }
        ),
        StoreWriterToFrontend::Hello { .. }
    ));
    // The first channel is free while the second is mid-request.
    let (r, w) = rustix::pipe::pipe().unwrap();
    second
        .send(
            &FrontendToStoreWriter::AddBuildLog {
                drv_path: StorePath::from_base_name("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-x.drv")
                    .unwrap(),
            },
            &[r.as_fd()],
        )
        .unwrap();
    drop(r);
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
    drop(w);
    assert_eq!(second.recv().unwrap().message, StoreWriterToFrontend::Done);

    // A descriptor that is not a unix stream socket is refused.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    client
        .send(
            &FrontendToStoreWriter::OpenChannel {
                peer_pid: None,
                peer_uid: None,
            },
            &[r.as_fd()],
        )
        .unwrap();
    let e = refused(client.recv().unwrap().message);
    assert!(e.to_string().contains("not a unix stream socket"), "{e}");
}

#[test]
fn a_peer_leaving_mid_transfer_registers_nothing_and_the_writer_goes_on() {
    let writer = Writer::start("");
    let client = writer.connect();
    let nar = file_nar(&[9u8; 100_000]);
    let nar_hash = Hash::compute(HashAlgo::Sha256, &nar);
    let path = StorePath::from_base_name("ab3li50xq0nl4q5lxdyinb8w8y13my9s-partial").unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let request = FrontendToStoreWriter::AddPathFromNar(Box::new(AddPathFromNar {
        info: PathInfo {
            path: path.clone(),
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: nar.len() as u64,
            ultimate: true,
            sigs: BTreeSet::new(),
            ca: None,
        },
        repair: false,
        check_sigs: false,
        defer: false,
    }));
    client.send(&request, &[r.as_fd()]).unwrap();
    drop(r);
    let mut w = std::fs::File::from(w);
    w.write_all(&nar[..nar.len() / 2]).unwrap();
    // The frontend goes away; the pipe stays open (as if another process still held it).
    drop(client);
    eventually("the store-writer to notice", || {
        writer
            .log()
            .contains("closed the channel during the request")
    });
    drop(w);
    let db = StoreDb::open_read_only(&writer.layout()).unwrap();
    assert!(!db.is_valid(&path).unwrap());
    assert!(!writer.layout().real_path(&path).exists());
    let client = writer.connect();
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
    let info = add_text(&client, "after", b"still serving");
    assert!(db.is_valid(&info.path).unwrap());
}

const FOREIGN_UID: u32 = 65534;
const SOCKET_ENV: &str = "WARD_SERVER_TEST_SOCKET";

/// Runs as uid 65534 in a child process: the store-writer must close the connection without
/// answering.
#[test]
#[ignore = "helper run as another uid by a_peer_with_a_foreign_uid_is_refused"]
fn foreign_peer_child() {
    let socket = std::env::var_os(SOCKET_ENV).expect("run by the parent test");
    assert_eq!(rustix::process::getuid().as_raw(), FOREIGN_UID);
    let client: Client = Channel::new(UnixStream::connect(socket).unwrap(), FrameLimit::DEFAULT);
    // The hello may or may not be written before the store-writer closes the socket.
    let _ = client.send(
        &FrontendToStoreWriter::Hello {
            ipc_version: IPC_VERSION,
            client_uid: None,
        },
        &[],
    );
    let reply = client.recv();
    assert!(
        matches!(reply, Err(IpcError::PeerClosed) | Err(IpcError::Io(_))),
        "{reply:?}"
    );
    println!("foreign peer was refused");
}

#[test]
fn a_peer_with_a_foreign_uid_is_refused() {
    if !rustix::process::geteuid().is_root() {
        println!(
            "skipping a_peer_with_a_foreign_uid_is_refused: connecting as another uid needs root"
        );
        return;
    }
    let writer = Writer::start("");
    // Let the other uid reach the socket at all, so that only the credential check stops it.
    for dir in [writer.dir.path().to_owned(), writer.dir.path().join("ipc")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(writer.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    // The test binary must be executable by that uid: copy it somewhere it can reach.
    let exe_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(exe_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = exe_dir.path().join("server-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new(&exe)
        .args([
            "--exact",
            "foreign_peer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SOCKET_ENV, writer.socket())
        .uid(FOREIGN_UID)
        .gid(FOREIGN_UID)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("foreign peer was refused"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eventually("the refusal to be logged", || {
        writer.log().contains("refusing a connection from a uid")
    });
    assert!(
        writer.log().contains(&format!("uid={FOREIGN_UID}")),
        "{}",
        writer.log()
    );
    // Our own uid still gets in.
    let client = writer.connect();
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
}

/// A derivation `name` with one input-addressed output, added through the channel.
fn add_derivation(client: &Client, name: &str) -> (StorePath, StorePath) {
    use ward_proto::derivation::{Derivation, DerivationOutput, HashModuloCache};
    let store_dir = StoreDir::default();
    let env = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
        input_drvs: Default::default(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: b"/bin/sh".to_vec(),
        args: vec![],
        env: [
            env("builder", "/bin/sh"),
            env("name", name),
            env("system", "x86_64-linux"),
        ]
        .into(),
    };
    let no_inputs = |_: &StorePath| -> Result<Derivation, std::io::Error> {
        unreachable!("no input derivations")
    };
    drv.compute_output_paths(&store_dir, &no_inputs, &mut HashModuloCache::new())
        .unwrap();
    let text = drv.to_aterm(&store_dir).unwrap();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let request = FrontendToStoreWriter::AddContent(Box::new(AddContent {
        name: format!("{name}.drv"),
        method: ContentAddressMethod::Text,
        hash_algo: HashAlgo::Sha256,
        references: BTreeSet::new(),
        repair: false,
    }));
    client.send(&request, &[r.as_fd()]).unwrap();
    drop(r);
    std::fs::File::from(w).write_all(&text).unwrap();
    let drv_path = match client.recv().unwrap().message {
        StoreWriterToFrontend::PathAdded(info) => info.path,
        other => panic!("{other:?}"),
    };
    let out = drv.output_paths(&store_dir).unwrap()["out"]
        .clone()
        .unwrap();
    (drv_path, out)
}

fn register_request(
    drv_path: &StorePath,
    out: &StorePath,
    candidates: BTreeSet<StorePath>,
) -> FrontendToStoreWriter {
    use ward_proto::ipc::store_writer::{OutputKind, RegisterMode};
    FrontendToStoreWriter::RegisterBuildOutputs {
        build: ward_proto::ipc::BuildId(7),
        drv_path: drv_path.clone(),
        outputs: [(
            "out".to_owned(),
            OutputKind::InputAddressed { path: out.clone() },
        )]
        .into(),
        reference_candidates: candidates,
        checks: Default::default(),
        mode: RegisterMode::Normal,
    }
}

#[test]
fn build_outputs_are_registered_from_their_nar_pipes() {
    let writer = Writer::start("");
    let client = writer.connect();
    let store_dir = StoreDir::default();
    let input = add_text(&client, "input", b"an input");
    let (drv_path, out) = add_derivation(&client, "built");
    let contents = format!("uses {}", store_dir.print(&input.path));

    // A NAR that is cut short registers nothing; the channel goes on.
    let (r, w) = rustix::pipe::pipe().unwrap();
    client
        .send(
            &register_request(&drv_path, &out, [input.path.clone()].into()),
            &[r.as_fd()],
        )
        .unwrap();
    drop(r);
    let nar = file_nar(contents.as_bytes());
    std::fs::File::from(w)
        .write_all(&nar[..nar.len() / 2])
        .unwrap();
    let e = refused(client.recv().unwrap().message);
    assert!(matches!(e, StoreWriterError::MalformedNar { .. }), "{e}");
    let layout = writer.layout();
    assert!(!layout.real_path(&out).exists());

    // The whole NAR: registered, with its reference, deriver and ultimate trust.
    let (r, w) = rustix::pipe::pipe().unwrap();
    client
        .send(
            &register_request(&drv_path, &out, [input.path.clone()].into()),
            &[r.as_fd()],
        )
        .unwrap();
    drop(r);
    std::fs::File::from(w).write_all(&nar).unwrap();
    let outputs = match client.recv().unwrap().message {
        StoreWriterToFrontend::OutputsRegistered { outputs } => outputs,
        other => panic!("{other:?}"),
    };
    let info = &outputs["out"];
    assert_eq!(info.path, out);
    assert_eq!(info.references, [input.path.clone()].into());
    assert_eq!(info.deriver.as_ref(), Some(&drv_path));
    assert!(info.ultimate);
    assert_eq!(info.nar_hash, Hash::compute(HashAlgo::Sha256, &nar));
    let db = StoreDb::open_read_only(&layout).unwrap();
    assert_eq!(db.query_path_info(&out).unwrap().as_ref(), Some(info));
    assert_eq!(
        std::fs::read(layout.real_path(&out)).unwrap(),
        contents.as_bytes()
    );

    // A request whose output path is not the derivation's is refused before anything is read.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    client
        .send(
            &register_request(&drv_path, &input.path, BTreeSet::new()),
            &[r.as_fd()],
        )
        .unwrap();
    let e = refused(client.recv().unwrap().message);
    assert!(
        matches!(e, StoreWriterError::BadOutput { .. }) && e.to_string().contains("puts it at"),
        "{e}"
    );
    assert_eq!(
        call(&client, FrontendToStoreWriter::Ping),
        StoreWriterToFrontend::Pong
    );
}
