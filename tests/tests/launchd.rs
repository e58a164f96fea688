//! `launchd/org.nixos.nix-daemon.plist`, the macOS job, parsed as a property list: Nix's label,
//! ward started once the /nix volume is there, the socket launchd holds for it, the log and
//! the file limits. Runs anywhere (nothing is loaded into launchd).

use std::fs;
use std::path::{Path, PathBuf};

use plist::{Dictionary, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn job() -> Dictionary {
    let path = workspace().join("launchd/org.nixos.nix-daemon.plist");
    Value::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_dictionary()
        .expect("the plist is a dictionary")
}

fn string<'a>(dict: &'a Dictionary, key: &str) -> &'a str {
    dict.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("'{key}' is not a string: {:?}", dict.get(key)))
}

fn integer(dict: &Dictionary, key: &str) -> u64 {
    dict.get(key)
        .and_then(Value::as_unsigned_integer)
        .unwrap_or_else(|| panic!("'{key}' is not an integer: {:?}", dict.get(key)))
}

fn dict<'a>(dict: &'a Dictionary, key: &str) -> &'a Dictionary {
    dict.get(key)
        .and_then(Value::as_dictionary)
        .unwrap_or_else(|| panic!("'{key}' is not a dictionary: {:?}", dict.get(key)))
}

#[test]
fn the_job_has_nixs_label_and_runs_ward_once_the_store_is_mounted() {
    let job = job();
    assert_eq!(string(&job, "Label"), "org.nixos.nix-daemon");
    assert_eq!(job.get("KeepAlive").and_then(Value::as_boolean), Some(true));
    assert_eq!(job.get("RunAtLoad").and_then(Value::as_boolean), Some(true));

    let args: Vec<&str> = job
        .get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments is an array")
        .iter()
        .map(|v| v.as_string().expect("each argument is a string"))
        .collect();
    let [shell, "-c", script] = args.as_slice() else {
        panic!("not '/bin/sh -c SCRIPT': {args:?}");
    };
    assert_eq!(*shell, "/bin/sh");
    let steps: Vec<Vec<&str>> = script
        .split("&&")
        .map(|step| step.split_whitespace().collect())
        .collect();
    assert_eq!(
        steps,
        [
            vec!["/bin/wait4path", "/nix/store"],
            vec!["exec", "@bindir@/ward", "daemon"],
        ],
        "{script}"
    );

    let env = dict(&job, "EnvironmentVariables");
    assert_eq!(
        string(env, "NIX_SSL_CERT_FILE"),
        "/nix/var/nix/profiles/default/etc/ssl/certs/ca-bundle.crt"
    );
}

#[test]
fn launchd_holds_the_daemon_socket() {
    let job = job();
    let sockets = dict(&job, "Sockets");
    assert_eq!(
        sockets.keys().collect::<Vec<_>>(),
        ["nix-daemon.socket"],
        "one socket, named as ward asks launchd for it"
    );
    let socket = dict(sockets, "nix-daemon.socket");
    assert_eq!(
        string(socket, "SockPathName"),
        "/nix/var/nix/daemon-socket/socket"
    );
    assert_eq!(integer(socket, "SockPathMode"), 0o666);
    assert_eq!(string(socket, "SockType"), "stream");

    // ward takes the socket by that name (frontend/src/launchd.rs).
    let source = fs::read_to_string(workspace().join("frontend/src/launchd.rs")).unwrap();
    assert!(
        source.contains("pub const SOCKET_NAME: &str = \"nix-daemon.socket\";"),
        "frontend/src/launchd.rs asks launchd for another name"
    );
}

#[test]
fn the_log_and_the_file_limits() {
    let job = job();
    assert_eq!(string(&job, "StandardErrorPath"), "/var/log/nix-daemon.log");
    assert_eq!(string(&job, "StandardOutPath"), "/dev/null");
    for limits in ["SoftResourceLimits", "HardResourceLimits"] {
        assert_eq!(
            integer(dict(&job, limits), "NumberOfFiles"),
            1_048_576,
            "{limits}"
        );
    }
}

/// Every text file of the workspace, skipping build output and version control.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            text_files(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

#[test]
fn nothing_names_the_old_job() {
    let old = concat!("org.nixos.", "ward-daemon");
    let launchd_dir: Vec<_> = fs::read_dir(workspace().join("launchd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(launchd_dir, ["org.nixos.nix-daemon.plist"]);
    let mut files = Vec::new();
    text_files(&workspace(), &mut files);
    let naming: Vec<_> = files
        .iter()
        .filter(|path| {
            fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).contains(old))
                .unwrap_or(false)
        })
        .collect();
    assert!(naming.is_empty(), "{old} is still named in {naming:?}");
}
