//! Writes seed bodies (each message's frame after its length prefix and tag) for the
//! `ipc_broker` and `ipc_store_writer` targets into the directories given: one file per
//! message, a few of every shape the decoders see. Run by `make-seeds.sh`.
//!
//!     cargo run --example ipc_seeds -- CORPUS_BROKER CORPUS_STORE_WRITER

use std::path::Path;

use ward_proto::ipc::broker::{CancelReason, FrontendToBroker, StoreWriterToBroker};
use ward_proto::ipc::builder::BuilderToBroker;
use ward_proto::ipc::frame::{encode_frame, LENGTH_PREFIX_LEN};
use ward_proto::ipc::store_writer::{FrontendToStoreWriter, GcAction};
use ward_proto::ipc::{BuildId, FrameLimit, IpcMessage, IPC_VERSION};
use ward_proto::store_path::StorePath;

fn body<M: IpcMessage>(message: &M) -> Vec<u8> {
    let frame = encode_frame(message, FrameLimit::DEFAULT).expect("encodes");
    frame[LENGTH_PREFIX_LEN + 4..].to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [broker, store_writer] = args.as_slice() else {
        eprintln!("usage: ipc_seeds CORPUS_BROKER CORPUS_STORE_WRITER");
        std::process::exit(2);
    };
    let (broker, store_writer) = (Path::new(broker), Path::new(store_writer));
    let path = StorePath::from_base_name("7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1")
        .expect("a valid store path");

    let frontend: Vec<(&str, FrontendToBroker)> = vec![
        (
            "hello",
            FrontendToBroker::Hello {
                ipc_version: IPC_VERSION,
            },
        ),
        ("ping", FrontendToBroker::Ping),
        ("serving", FrontendToBroker::Serving),
        ("shutting-down", FrontendToBroker::ShuttingDown),
        ("user-dirs", FrontendToBroker::CreateUserDirs { uid: 1000 }),
        ("find-roots", FrontendToBroker::FindRoots),
        (
            "cancel",
            FrontendToBroker::CancelBuild {
                build: BuildId(7),
                reason: CancelReason::Client,
            },
        ),
    ];
    for (name, m) in &frontend {
        let mut bytes = vec![0u8];
        bytes.extend(body(m));
        write(broker, &format!("frontend-{name}"), &bytes);
    }
    let writer: Vec<(&str, StoreWriterToBroker)> = vec![
        (
            "hello",
            StoreWriterToBroker::Hello {
                ipc_version: IPC_VERSION,
            },
        ),
        ("find-roots", StoreWriterToBroker::FindRoots),
    ];
    for (name, m) in &writer {
        let mut bytes = vec![1u8];
        bytes.extend(body(m));
        write(broker, &format!("store-writer-{name}"), &bytes);
    }
    let builder: Vec<(&str, BuilderToBroker)> = vec![
        ("collected", BuilderToBroker::Collected),
        (
            "refused",
            BuilderToBroker::CollectRefused {
                output: path.to_string(),
                reason: "a symlink to /etc/shadow".into(),
            },
        ),
    ];
    for (name, m) in &builder {
        let mut bytes = vec![2u8];
        bytes.extend(body(m));
        write(broker, &format!("builder-{name}"), &bytes);
    }

    let requests: Vec<(&str, FrontendToStoreWriter)> = vec![
        (
            "hello",
            FrontendToStoreWriter::Hello {
                ipc_version: IPC_VERSION,
                client_uid: Some(1000),
            },
        ),
        (
            "temp-root",
            FrontendToStoreWriter::AddTempRoot { path: path.clone() },
        ),
        (
            "indirect-root",
            FrontendToStoreWriter::AddIndirectRoot {
                link: "/home/alice/result".into(),
            },
        ),
        (
            "user-dirs",
            FrontendToStoreWriter::CreateUserDirs {
                user: "alice".into(),
                uid: 1000,
            },
        ),
        (
            "gc",
            FrontendToStoreWriter::CollectGarbage {
                action: GcAction::DeleteSpecific,
                paths: [path.clone()].into_iter().collect(),
                max_freed: u64::MAX,
                keep_outputs: false,
                keep_derivations: true,
            },
        ),
        (
            "verify",
            FrontendToStoreWriter::VerifyStore {
                check_contents: true,
                repair: false,
            },
        ),
        ("optimise", FrontendToStoreWriter::OptimiseStore),
    ];
    for (name, m) in &requests {
        write(store_writer, name, &body(m));
    }
}
