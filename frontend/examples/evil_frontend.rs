//! A compromised frontend, for `tests/tests/compromised_frontend.rs` (catalog rows I1–I6). The
//! broker starts it in the frontend's place (a debug build's `ward daemon` honours
//! `WARD_TEST_FRONTEND`), with the frontend's descriptors (3: the clients' socket, 4: the
//! broker channel) and user. It attacks the broker and the store-writer through their IPC,
//! writes what each attack got to `$WARD_EVIL_REPORT` (one `name: outcome` line each), leaves
//! `$WARD_EVIL_DONE` and exits; started again (the broker restarts a frontend that dies), it
//! execs the real frontend (`$WARD_REAL_FRONTEND`) with its arguments, which then serves.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::ipc::broker::{BrokerToFrontend, BuildRequest, FrontendToBroker};
use ward_proto::ipc::store_writer::{
    AddPathFromNar, FrontendToStoreWriter, PathInfo, StoreWriterToFrontend,
};
use ward_proto::ipc::{BuildId, Channel, FrameLimit, IPC_VERSION};
use ward_proto::store_path::StorePath;

type Broker = Channel<FrontendToBroker, BrokerToFrontend>;
type Writer = Channel<FrontendToStoreWriter, StoreWriterToFrontend>;

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

/// What the peer answered, in a word: its reply's variant, or that it closed the channel.
fn broker_call(broker: &Broker, request: FrontendToBroker) -> String {
    if let Err(e) = broker.send(&request, &[]) {
        return format!("send failed: {e}");
    }
    match broker.recv() {
        Ok(reply) => match reply.message {
            BrokerToFrontend::Error(e) => format!("refused: {e}"),
            other => format!("answered {other:?}"),
        },
        Err(e) => format!("closed: {e}"),
    }
}

fn writer_call(
    writer: &Writer,
    request: FrontendToStoreWriter,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> String {
    if let Err(e) = writer.send(&request, fds) {
        return format!("send failed: {e}");
    }
    match writer.recv() {
        Ok(reply) => match reply.message {
            StoreWriterToFrontend::Error(e) => format!("refused: {e}"),
            other => format!("answered {other:?}"),
        },
        Err(e) => format!("closed: {e}"),
    }
}

/// AddPathFromNar of `nar` through a pipe, as the real frontend sends uploads.
fn add_from_nar(w: &Writer, info: PathInfo, nar: &[u8]) -> String {
    let (r, wr) = rustix::pipe::pipe().unwrap();
    let request = FrontendToStoreWriter::AddPathFromNar(Box::new(AddPathFromNar {
        info,
        repair: false,
        check_sigs: false,
        defer: false,
    }));
    let sent = w.send(&request, &[r.as_fd()]);
    drop(r);
    let mut pipe = std::fs::File::from(wr);
    let _ = pipe.write_all(nar);
    drop(pipe);
    match sent {
        Err(e) => format!("send failed: {e}"),
        Ok(()) => match w.recv() {
            Ok(reply) => match reply.message {
                StoreWriterToFrontend::Error(e) => format!("refused: {e}"),
                other => format!("answered {other:?}"),
            },
            Err(e) => format!("closed: {e}"),
        },
    }
}

/// The second start: on a fresh broker channel, a build request that carries bytes of the
/// frontend's own after the message (as a frontend would smuggle seccomp flags); appended to
/// the report, then this round is marked done.
fn second_round(marker: &std::path::Path) -> ! {
    #[allow(unsafe_code)]
    // SAFETY: fd 4 is the broker channel the broker placed there for the frontend; nothing
    // else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(4) };
    let socket = UnixStream::from(fd);
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = socket.try_clone().unwrap();
    let broker: Broker = Channel::new(socket, FrameLimit::DEFAULT);
    let hello = broker_call(
        &broker,
        FrontendToBroker::Hello {
            ipc_version: IPC_VERSION,
        },
    );
    let request = FrontendToBroker::Ping;
    let mut frame = ward_proto::ipc::frame::encode_frame(&request, FrameLimit::DEFAULT).unwrap();
    let junk = b"seccomp=off;landlock=off;netns=host";
    frame.extend_from_slice(junk);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) + junk.len() as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    let outcome = match raw.write_all(&frame) {
        Err(e) => format!("send failed: {e}"),
        Ok(()) => match broker.recv() {
            Ok(reply) => match reply.message {
                BrokerToFrontend::Error(e) => format!("refused: {e}"),
                other => format!("answered {other:?}"),
            },
            Err(e) => format!("closed: {e}"),
        },
    };
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .open(env_path("WARD_EVIL_REPORT"))
        .unwrap();
    writeln!(out, "second-round-hello: {}", hello.replace('\n', " ")).unwrap();
    writeln!(
        out,
        "i3-request-with-extra-fields: {}",
        outcome.replace('\n', " ")
    )
    .unwrap();
    std::fs::write(marker, "").unwrap();
    std::process::exit(1);
}

fn hello() -> FrontendToStoreWriter {
    FrontendToStoreWriter::Hello {
        ipc_version: IPC_VERSION,
        client_uid: None,
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let done = env_path("WARD_EVIL_DONE");
    let second = done.with_extension("second");
    if done.exists() && !second.exists() {
        // Started again after the first round closed its broker channel: one attack that
        // needs a fresh one, then the real frontend takes over on the next start.
        second_round(&second);
    }
    if done.exists() {
        let err = std::process::Command::new(env_path("WARD_REAL_FRONTEND"))
            .args(&args[1..])
            .exec();
        panic!("exec of the real frontend: {err}");
    }
    let ipc_dir = args
        .iter()
        .position(|a| a == "--ipc-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("--ipc-dir");
    let mut report = Vec::new();

    // ---- The broker (fd 4). ----
    #[allow(unsafe_code)]
    // SAFETY: fd 4 is the broker channel the broker placed there for the frontend; nothing
    // else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(4) };
    let socket = UnixStream::from(fd);
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let broker: Broker = Channel::new(socket, FrameLimit::DEFAULT);
    report.push((
        "broker-hello".to_owned(),
        broker_call(
            &broker,
            FrontendToBroker::Hello {
                ipc_version: IPC_VERSION,
            },
        ),
    ));
    // I1: per-user directories for root, and for a uid nobody has.
    report.push((
        "i1-user-dirs-root".to_owned(),
        broker_call(&broker, FrontendToBroker::CreateUserDirs { uid: 0 }),
    ));
    report.push((
        "i1-user-dirs-nobody".to_owned(),
        broker_call(
            &broker,
            FrontendToBroker::CreateUserDirs { uid: 4_000_000_000 },
        ),
    ));
    // I1/I2: a build on behalf of root, with a builder and an input outside the store's rules.
    let fake = StorePath::from_base_name("00000000000000000000000000000000-evil").unwrap();
    let drv = StorePath::from_base_name("11111111111111111111111111111111-evil.drv").unwrap();
    let out = StorePath::from_base_name("22222222222222222222222222222222-evil").unwrap();
    let request = BuildRequest {
        build: BuildId(1),
        drv_path: drv,
        system: std::env::var("WARD_EVIL_SYSTEM").unwrap_or_else(|_| "x86_64-linux".into()),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "cat /etc/shadow > $out".into()],
        env: BTreeMap::new(),
        input_paths: BTreeSet::from([fake]),
        outputs: BTreeMap::from([("out".to_owned(), out)]),
        fixed_output: true,
        build_dir_files: Vec::new(),
        timeout_secs: 5,
        no_chroot: true,
        requester_uid: 0,
    };
    report.push((
        "i2-build-with-invalid-input".to_owned(),
        broker_call(&broker, FrontendToBroker::StartBuild(Box::new(request))),
    ));
    // I1: a build on behalf of a build user (a client of the build group).
    let build_user_uid = nix::unistd::User::from_name("nixbld1")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .unwrap_or(30001);
    let request = BuildRequest {
        build: BuildId(2),
        drv_path: StorePath::from_base_name("11111111111111111111111111111111-evil2.drv").unwrap(),
        system: std::env::var("WARD_EVIL_SYSTEM").unwrap_or_else(|_| "x86_64-linux".into()),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "true".into()],
        env: BTreeMap::new(),
        input_paths: BTreeSet::new(),
        outputs: BTreeMap::from([(
            "out".to_owned(),
            StorePath::from_base_name("22222222222222222222222222222222-evil2").unwrap(),
        )]),
        fixed_output: false,
        build_dir_files: Vec::new(),
        timeout_secs: 5,
        no_chroot: false,
        requester_uid: build_user_uid,
    };
    report.push((
        "i1-build-as-build-user".to_owned(),
        broker_call(&broker, FrontendToBroker::StartBuild(Box::new(request))),
    ));
    // I5: replay the handshake: a protocol violation, the channel is closed.
    report.push((
        "i5-hello-again".to_owned(),
        broker_call(
            &broker,
            FrontendToBroker::Hello {
                ipc_version: IPC_VERSION,
            },
        ),
    ));
    report.push((
        "i5-after-close".to_owned(),
        broker_call(&broker, FrontendToBroker::Ping),
    ));

    // ---- The store-writer. ----
    let socket_path = ipc_dir.join("store-writer.socket");
    let connect = || -> Writer {
        let s = UnixStream::connect(&socket_path).expect("connecting to the store-writer");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Channel::new(s, FrameLimit::DEFAULT)
    };
    // I5: a request before the handshake.
    let w = connect();
    report.push((
        "i5-writer-before-hello".to_owned(),
        writer_call(&w, FrontendToStoreWriter::Ping, &[]),
    ));
    // I4: a path registered with a made-up hash: its NAR does not match.
    let w = connect();
    report.push(("writer-hello".to_owned(), writer_call(&w, hello(), &[])));
    let nar = {
        let mut writer = ward_proto::nar::NarWriter::new(Vec::new());
        writer
            .file_from_bytes(false, b"not what the hash says\n")
            .unwrap();
        writer.finish().unwrap()
    };
    let path = StorePath::from_base_name("33333333333333333333333333333333-made-up").unwrap();
    let mut info = PathInfo::new(path, Hash::compute(HashAlgo::Sha256, b"something else"));
    info.nar_size = nar.len() as u64;
    report.push(("i4-made-up-hash".to_owned(), add_from_nar(&w, info, &nar)));
    // I4: a NAR that matches its hash, with references to paths that are not valid.
    let w = connect();
    let _ = writer_call(&w, hello(), &[]);
    let path = StorePath::from_base_name("55555555555555555555555555555555-made-up-refs").unwrap();
    let mut info = PathInfo::new(path, Hash::compute(HashAlgo::Sha256, &nar));
    info.nar_size = nar.len() as u64;
    info.references =
        BTreeSet::from([
            StorePath::from_base_name("77777777777777777777777777777777-nowhere").unwrap(),
        ]);
    report.push((
        "i4-made-up-references".to_owned(),
        add_from_nar(&w, info, &nar),
    ));
    // I4: a content address that the path does not have.
    let w = connect();
    let _ = writer_call(&w, hello(), &[]);
    let path = StorePath::from_base_name("66666666666666666666666666666666-false-ca").unwrap();
    let mut info = PathInfo::new(path, Hash::compute(HashAlgo::Sha256, &nar));
    info.nar_size = nar.len() as u64;
    info.ca = Some(
        ward_proto::content_address::ContentAddress::parse(&format!(
            "fixed:r:sha256:{}",
            Hash::compute(HashAlgo::Sha256, &nar).to_nix32()
        ))
        .unwrap(),
    );
    report.push((
        "i4-false-content-address".to_owned(),
        add_from_nar(&w, info, &nar),
    ));
    // I6: unexpected descriptors: a directory fd for / where a socket is expected, a regular
    // file and a socket where a pipe is expected. Each on a channel of its own, which must be
    // closed after the refusal (a Ping on it afterwards is not answered).
    let fresh = || {
        let w = connect();
        let _ = writer_call(&w, hello(), &[]);
        w
    };
    let w = fresh();
    let root = std::fs::File::open("/").unwrap();
    report.push((
        "i6-open-channel-with-a-directory".to_owned(),
        writer_call(
            &w,
            FrontendToStoreWriter::OpenChannel {
                peer_pid: None,
                peer_uid: None,
            },
            &[root.as_fd()],
        ),
    ));
    report.push((
        "i6-open-channel-with-a-directory-then".to_owned(),
        writer_call(&w, FrontendToStoreWriter::Ping, &[]),
    ));
    let not_a_pipe = |base: &str| {
        FrontendToStoreWriter::AddPathFromNar(Box::new(AddPathFromNar {
            info: PathInfo::new(
                StorePath::from_base_name(base).unwrap(),
                Hash::compute(HashAlgo::Sha256, b"x"),
            ),
            repair: false,
            check_sigs: false,
            defer: false,
        }))
    };
    let file = std::fs::File::open("/etc/hostname")
        .or_else(|_| std::fs::File::open("/dev/null"))
        .unwrap();
    let w = fresh();
    report.push((
        "i6-nar-from-a-file".to_owned(),
        writer_call(
            &w,
            not_a_pipe("44444444444444444444444444444444-not-a-pipe"),
            &[file.as_fd()],
        ),
    ));
    report.push((
        "i6-nar-from-a-file-then".to_owned(),
        writer_call(&w, FrontendToStoreWriter::Ping, &[]),
    ));
    let (socket_end, _other_end) = UnixStream::pair().unwrap();
    let w = fresh();
    report.push((
        "i6-nar-from-a-socket".to_owned(),
        writer_call(
            &w,
            not_a_pipe("88888888888888888888888888888888-not-a-pipe"),
            &[socket_end.as_fd()],
        ),
    ));
    report.push((
        "i6-nar-from-a-socket-then".to_owned(),
        writer_call(&w, FrontendToStoreWriter::Ping, &[]),
    ));
    // I5: the handshake again on a serving channel.
    let w = fresh();
    report.push((
        "i5-writer-hello-again".to_owned(),
        writer_call(&w, hello(), &[]),
    ));
    report.push((
        "i5-writer-after-close".to_owned(),
        writer_call(&w, FrontendToStoreWriter::Ping, &[]),
    ));

    let mut out = std::fs::File::create(env_path("WARD_EVIL_REPORT")).unwrap();
    for (name, outcome) in &report {
        writeln!(out, "{name}: {}", outcome.replace('\n', " ")).unwrap();
    }
    std::fs::write(&done, "").unwrap();
    std::process::exit(1);
}
