//! Substituters through ward with Debian's Nix 2.8 client: a binary cache written by the real
//! `nix copy --to file://…` (xz, none, bzip2, zstd) and served from a directory or over HTTP
//! (Python's http.server); `nix-store --realise` and `nix-build` fetch from it instead of
//! building, `--dry-run` shows what would be fetched and its sizes; and a hostile cache gets
//! nowhere: an unsigned path, a NAR that does not match its narinfo (or tries to climb out with
//! `..`), a narinfo for another path, a narinfo that is a symlink to a file outside the cache,
//! and an untrusted client naming a cache the daemon does not list are all refused with the
//! store unchanged.

use std::path::{Path, PathBuf};

use ward_e2e_tests::builds::{self, drv, expr};
use ward_e2e_tests::nar::NarNode;
use ward_e2e_tests::{inputs, DaemonOptions, Fixture, ImportedGraph, SigningKey};

/// A cache directory filled by the real client from `src`'s store: `paths` and their
/// closures, signed with `key` when given.
fn fill_cache(src: &Fixture, dir: &Path, params: &str, key: Option<&SigningKey>, paths: &[&str]) {
    let mut url = format!("file://{}?{params}", dir.display());
    if let Some(key) = key {
        url.push_str(&format!("&secret-key={}", key.secret_arg()));
    }
    let mut args = vec!["copy", "--to", url.as_str()];
    args.extend_from_slice(paths);
    src.ward.ok("nix", &args);
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// A daemon that substitutes from `url`, trusting `key`.
fn substituting(test: &str, url: &str, key: &SigningKey, extra: DaemonOptions) -> Option<Fixture> {
    Fixture::start(
        test,
        extra
            .conf(format!("substituters = {url}"))
            .conf(format!("trusted-public-keys = {}", key.public)),
    )
}

fn narinfo_file(dir: &Path, path: &str) -> PathBuf {
    let base = path.rsplit('/').next().unwrap();
    dir.join(format!("{}.narinfo", &base[..32]))
}

/// The value of `key` in the narinfo of `path`.
fn narinfo_field(dir: &Path, path: &str, key: &str) -> String {
    let text = std::fs::read_to_string(narinfo_file(dir, path)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

/// The source daemon with an imported graph a ← b ← c, and a key.
fn source(test: &str) -> Option<(Fixture, ImportedGraph, SigningKey)> {
    let src = Fixture::single_user(&format!("{test}-src"))?;
    let store_dir = src.daemon.layout().logical_store_dir.clone();
    let graph = ImportedGraph::new(&src.env.dir("graph"), &store_dir, test);
    graph.import(&src.ward);
    let key = SigningKey::generate(&src.env, "cache-1");
    Some((src, graph, key))
}

fn with_substituters<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--option", "substituters", url]);
    all
}

#[test]
fn nix_store_realise_fetches_a_closure_from_a_file_cache() {
    let test = "nix_store_realise_fetches_a_closure_from_a_file_cache";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.c]);
    assert_eq!(narinfo_field(&cache, &graph.c, "Compression"), "xz");
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };

    // QueryMissing: what would be fetched, with sizes.
    let dry = f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", "--dry-run", &graph.c]),
    );
    // Nix's words and sizes: the compressed NARs' total and the unpacked NARs' total, in MiB.
    let total = |key: &str| -> u64 {
        [&graph.a, &graph.b, &graph.c]
            .iter()
            .map(|p| narinfo_field(&cache, p, key).parse::<u64>().unwrap())
            .sum()
    };
    let mib = |bytes: u64| format!("{:.2}", bytes as f64 / (1024.0 * 1024.0));
    dry.assert_stderr_contains(&format!(
        "these 3 paths will be fetched ({} MiB download, {} MiB unpacked)",
        mib(total("FileSize")),
        mib(total("NarSize"))
    ));
    assert!(
        f.ward.all_valid_paths().is_empty(),
        "a dry run fetches nothing"
    );
    // A path no cache has is "unknown" to QueryMissing, as Nix says it.
    let unknown = ward_e2e_tests::nar::made_up_path("/nix/store", "unknown", test);
    f.ward
        .run(
            "nix-store",
            &with_substituters(&url, &["--realise", "--dry-run", &unknown]),
        )
        .assert_stderr_contains("don't know how to build these paths")
        .assert_stderr_contains(&unknown);

    let out = f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.c]),
    );
    assert_eq!(out.single_line(), graph.c);
    out.assert_stderr_contains(&format!("copying path '{}' from '{url}'", graph.a));
    let valid = f.ward.all_valid_paths();
    for p in [&graph.a, &graph.b, &graph.c] {
        assert!(valid.contains(p), "{p} substituted: {valid:?}");
    }
    // The same contents, references and signature as in the source store.
    for (i, p) in [&graph.a, &graph.b, &graph.c].into_iter().enumerate() {
        let dumped = f.ward.ok("nix", &["store", "dump-path", p]);
        assert_eq!(dumped.stdout, graph.nars[i], "{p}");
    }
    let refs = f.ward.ok("nix-store", &["-q", "--references", &graph.b]);
    assert_eq!(refs.lines(), vec![graph.a.clone()]);
    let info = f.ward.path_info_json(&graph.c);
    let sigs = info.to_string();
    assert!(sigs.contains("cache-1:"), "{sigs}");
    assert!(!sigs.contains("\"ultimate\":true"), "{sigs}");
}

#[test]
fn every_compression_nix_writes_is_read() {
    let test = "every_compression_nix_writes_is_read";
    let Some(src) = Fixture::single_user(&format!("{test}-src")) else {
        return;
    };
    let key = SigningKey::generate(&src.env, "cache-1");
    let dir = src.env.dir("inputs");
    let mut caches = Vec::new();
    for compression in ["none", "bzip2", "zstd", "xz"] {
        let tree = inputs::tree(&dir, &format!("tree-{compression}"), compression);
        let path = src.ward.add(&[&tree]).remove(0);
        let cache = src.env.dir(&format!("cache-{compression}"));
        fill_cache(
            &src,
            &cache,
            &format!("compression={compression}"),
            Some(&key),
            &[&path],
        );
        assert_eq!(narinfo_field(&cache, &path, "Compression"), compression);
        caches.push((compression, path, file_url(&cache)));
    }
    let all: Vec<&str> = caches.iter().map(|(_, _, u)| u.as_str()).collect();
    let list = all.join(" ");
    let Some(f) = substituting(test, &list, &key, DaemonOptions::single_user()) else {
        return;
    };
    for (compression, path, _) in &caches {
        f.ward
            .ok("nix-store", &with_substituters(&list, &["--realise", path]));
        let want = src.ward.ok("nix", &["store", "dump-path", path]).stdout;
        let got = f.ward.ok("nix", &["store", "dump-path", path]).stdout;
        assert_eq!(got, want, "{compression}");
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits (up to 5 s) until a test server accepts connections on `port`.
fn wait_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("no test server came up on port {port}");
}

/// `python3 -m http.server` serving `dir` on a free port, killed on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server");
        wait_listening(port);
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl HttpServer {
    /// An HTTPS server for `dir` with a certificate for 127.0.0.1 signed by a CA made here;
    /// returns it and the CA's certificate file.
    fn start_tls(dir: &Path, scratch: &Path) -> (HttpServer, PathBuf) {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(scratch)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=ward test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            scratch.join("srv.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-extfile",
            "srv.ext",
        ]);
        let port = free_port();
        let script = format!(
            "import http.server, ssl, functools\n\
             h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
             s = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), h)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
             c.load_cert_chain({crt:?}, {key:?})\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\n\
             s.serve_forever()\n",
            dir = dir.display().to_string(),
            crt = scratch.join("srv.crt").display().to_string(),
            key = scratch.join("srv.key").display().to_string(),
        );
        let child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the HTTPS server");
        wait_listening(port);
        (
            HttpServer {
                child,
                url: format!("https://127.0.0.1:{port}"),
            },
            scratch.join("ca.crt"),
        )
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn paths_are_fetched_over_http() {
    let test = "paths_are_fetched_over_http";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.c]);
    let server = HttpServer::start(&cache);
    let Some(f) = substituting(test, &server.url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let out = f.ward.ok(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &graph.c]),
    );
    out.assert_stderr_contains(&format!("copying path '{}' from '{}'", graph.c, server.url));
    assert_eq!(
        f.ward.ok("nix", &["store", "dump-path", &graph.c]).stdout,
        graph.nars[2]
    );
    // A path the cache does not have (404) is Nix's error, and the daemon goes on.
    let missing = ward_e2e_tests::nar::made_up_path("/nix/store", "absent", test);
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &missing]),
    );
    failed.assert_stderr_contains("don't know how to build these paths");
    f.ward.ok("nix-store", &["--verify-path", &graph.c]);
}

#[test]
fn nix_build_substitutes_outputs_instead_of_building() {
    let test = "nix_build_substitutes_outputs_instead_of_building";
    if !builds::have_busybox(test) {
        return;
    }
    let Some(src) = builds::start(&format!("{test}-src"), DaemonOptions::single_user()) else {
        return;
    };
    let key = SigningKey::generate(&src.env, "cache-1");
    let body = drv("subst", "echo built by the source daemon > $out", "");
    let file = expr(&src, "subst", &body);
    let out = builds::build(&src.ward, &file);
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&out]);
    let url = file_url(&cache);

    let Some(f) = builds::start(
        test,
        DaemonOptions::single_user()
            .conf(format!("substituters = {url}"))
            .conf(format!("trusted-public-keys = {}", key.public)),
    ) else {
        return;
    };
    let file = expr(&f, "subst", &body);
    let built = f.ward.ok(
        "nix-build",
        &with_substituters(&url, &[file.to_str().unwrap(), "--no-out-link"]),
    );
    assert_eq!(built.single_line(), out);
    assert!(
        !built.stderr.contains("building '"),
        "fetched, not built: {}",
        built.stderr
    );
    built.assert_stderr_contains(&format!("copying path '{out}' from '{url}'"));
    assert_eq!(
        builds::read_output(&f, &out),
        "built by the source daemon\n"
    );
}

#[test]
fn an_unsigned_path_is_not_fetched() {
    let test = "an_unsigned_path_is_not_fetched";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", None, &[&graph.a]);
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&format!(
        "the substitute for '{}' from '{url}' is not signed by any of the keys in 'trusted-public-keys'",
        graph.a
    ));
    before.assert_unchanged(f.daemon.layout(), "after an unsigned substitute");
}

#[test]
fn a_path_signed_by_an_untrusted_key_is_not_fetched() {
    let test = "a_path_signed_by_an_untrusted_key_is_not_fetched";
    let Some((src, graph, trusted)) = source(test) else {
        return;
    };
    let other = SigningKey::generate(&src.env, "someone-else-1");
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&other), &[&graph.a]);
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &trusted, DaemonOptions::single_user()) else {
        return;
    };
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&format!(
        "the substitute for '{}' from '{url}' is not signed by any of the keys in 'trusted-public-keys'",
        graph.a
    ));
    before.assert_unchanged(f.daemon.layout(), "after a wrongly signed substitute");
}

/// How [`start_nar_server`] serves NARs.
#[derive(Clone, Copy)]
enum NarServing {
    /// The first half (with the full Content-Length), then the connection closes, as a
    /// cache dying mid-download does.
    Half,
    /// All of it, 64 KiB every 10 ms.
    Slow,
}

/// An HTTP server for `dir` (Python's http.server) that serves NARs as `serving` says.
fn start_nar_server(dir: &Path, serving: NarServing) -> HttpServer {
    let port = free_port();
    let mode = match serving {
        NarServing::Half => "half",
        NarServing::Slow => "slow",
    };
    let script = r#"
import http.server, os, sys, time
root, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        p = os.path.join(root, self.path.lstrip('/'))
        if not os.path.isfile(p):
            self.send_error(404)
            return
        data = open(p, 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if not self.path.startswith('/nar/'):
            self.wfile.write(data)
        elif mode == 'half':
            self.wfile.write(data[:len(data) // 2])
        else:
            for i in range(0, len(data), 65536):
                self.wfile.write(data[i:i + 65536])
                self.wfile.flush()
                time.sleep(0.01)
        self.wfile.flush()
        self.close_connection = True
http.server.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
"#;
    python_server("the NAR server", script, dir, port, mode.as_ref())
}

/// Runs `python3 -c script DIR PORT EXTRA` and waits until it listens on `port`.
fn python_server(
    what: &str,
    script: &str,
    dir: &Path,
    port: u16,
    extra: &std::ffi::OsStr,
) -> HttpServer {
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(port.to_string())
        .arg(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    wait_listening(port);
    HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[test]
fn a_cache_dying_mid_download_registers_nothing() {
    let test = "a_cache_dying_mid_download_registers_nothing";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "compression=none", Some(&key), &[&graph.a]);
    let server = start_nar_server(&cache, NarServing::Half);
    let Some(f) = substituting(test, &server.url, &key, DaemonOptions::single_user()) else {
        return;
    };
    f.populate();
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&format!(
        "error: substituting '{}' from '{}'",
        graph.a, server.url
    ));
    before.assert_unchanged(f.daemon.layout(), "after a cache died mid-download");
    // The daemon still serves.
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);
}

/// Replaces the (uncompressed) NAR of `path` in `cache` with `nar`.
fn replace_nar(cache: &Path, path: &str, nar: &[u8]) {
    let url = narinfo_field(cache, path, "URL");
    std::fs::write(cache.join(url), nar).unwrap();
}

#[test]
fn a_nar_that_does_not_match_its_narinfo_is_refused() {
    let test = "a_nar_that_does_not_match_its_narinfo_is_refused";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(
        &src,
        &cache,
        "compression=none",
        Some(&key),
        &[&graph.a, &graph.b],
    );
    // a: other contents; b: a NAR whose entry climbs out with `..`.
    replace_nar(
        &cache,
        &graph.a,
        &ward_e2e_tests::nar::nar_of_file(b"not what was signed\n", false),
    );
    let climbing = NarNode::Directory(vec![(
        b"..".to_vec(),
        NarNode::File {
            contents: b"pwned\n".to_vec(),
            executable: false,
        },
    )]);
    replace_nar(&cache, &graph.b, &climbing.to_nar());
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    f.populate();
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&graph.a);
    failed.assert_stderr_contains("hash mismatch");
    before.assert_unchanged(f.daemon.layout(), "after a NAR with the wrong hash");

    // b's NAR is refused too (a first has to be fetched, and is not).
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.b]),
    );
    failed.assert_stderr_contains(&graph.b);
    before.assert_unchanged(f.daemon.layout(), "after a NAR climbing out");
    let store_parent = f
        .real_path(&graph.b)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    assert!(!store_parent.join("pwned").exists());
    assert!(!f.real_path("/nix/store/pwned").exists());

    // The daemon still serves.
    f.ward
        .ok("nix-store", &["-q", "--hash", &before.paths()[0]]);
}

#[test]
fn a_narinfo_for_another_path_is_refused() {
    let test = "a_narinfo_for_another_path_is_refused";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.a]);
    // A validly signed narinfo, served under c's name.
    std::fs::copy(
        narinfo_file(&cache, &graph.a),
        narinfo_file(&cache, &graph.c),
    )
    .unwrap();
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.c]),
    );
    failed.assert_stderr_contains(&format!(
        "binary cache '{url}' answered for '{}' with the narinfo of '{}'",
        graph.c, graph.a
    ));
    before.assert_unchanged(f.daemon.layout(), "after a narinfo for another path");
}

#[test]
fn a_narinfo_symlinked_out_of_the_cache_is_not_followed() {
    let test = "a_narinfo_symlinked_out_of_the_cache_is_not_followed";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.a]);
    // The real narinfo moves outside the cache; the cache holds a link to it.
    let outside = src.env.dir("outside").join("secret.narinfo");
    std::fs::rename(narinfo_file(&cache, &graph.a), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, narinfo_file(&cache, &graph.a)).unwrap();
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(
        "is a symlink; ward does not follow symlinks inside a binary cache",
    );
    before.assert_unchanged(f.daemon.layout(), "after a symlinked narinfo");
}

#[test]
fn an_untrusted_client_cannot_add_a_cache() {
    let test = "an_untrusted_client_cannot_add_a_cache";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.a, &graph.b]);
    let url = file_url(&cache);
    // The daemon lists no substituter; the cache is only a trusted substituter.
    let Some(f) = Fixture::start(
        test,
        DaemonOptions::single_user()
            .untrusted()
            .conf(format!("trusted-public-keys = {}", key.public))
            .conf(format!("trusted-substituters = {url}/trusted-only")),
    ) else {
        return;
    };
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&format!("ignoring untrusted substituter '{url}'"));
    before.assert_unchanged(f.daemon.layout(), "after an untrusted client's cache");
}

#[test]
fn an_untrusted_client_may_pick_a_trusted_substituter() {
    let test = "an_untrusted_client_may_pick_a_trusted_substituter";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.a]);
    let url = file_url(&cache);
    let Some(f) = Fixture::start(
        test,
        DaemonOptions::single_user()
            .untrusted()
            .conf(format!("trusted-public-keys = {}", key.public))
            .conf(format!("trusted-substituters = {url}")),
    ) else {
        return;
    };
    f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    assert!(f.ward.all_valid_paths().contains(&graph.a));
}

#[test]
fn a_failing_cache_stops_the_build_unless_fallback_is_set() {
    let test = "a_failing_cache_stops_the_build_unless_fallback_is_set";
    if !builds::have_busybox(test) {
        return;
    }
    let Some(src) = builds::start(&format!("{test}-src"), DaemonOptions::single_user()) else {
        return;
    };
    let key = SigningKey::generate(&src.env, "cache-1");
    let body = drv("fallback", "echo built here > $out", "");
    let out = builds::build(&src.ward, &expr(&src, "fallback", &body));
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "compression=none", Some(&key), &[&out]);
    replace_nar(
        &cache,
        &out,
        &ward_e2e_tests::nar::nar_of_file(b"tampered\n", false),
    );
    let url = file_url(&cache);
    let Some(f) = builds::start(
        test,
        DaemonOptions::single_user()
            .conf(format!("substituters = {url}"))
            .conf(format!("trusted-public-keys = {}", key.public)),
    ) else {
        return;
    };
    let file = expr(&f, "fallback", &body);
    let file = file.to_str().unwrap();
    let failed = f.ward.fails(
        "nix-build",
        &with_substituters(&url, &[file, "--no-out-link"]),
    );
    failed.assert_stderr_contains("some substitutes for the outputs of derivation");
    failed.assert_stderr_contains("try '--fallback' to build derivation from source");
    assert!(!f.ward.all_valid_paths().contains(&out));

    let built = f.ward.ok(
        "nix-build",
        &with_substituters(&url, &[file, "--no-out-link", "--fallback"]),
    );
    assert_eq!(built.single_line(), out);
    built.assert_stderr_contains("building '");
    assert_eq!(builds::read_output(&f, &out), "built here\n");
}

#[test]
fn the_multi_user_frontend_reads_a_file_cache() {
    let test = "the_multi_user_frontend_reads_a_file_cache";
    if !ward_e2e_tests::require_nix(test) || !ward_e2e_tests::require_root(test) {
        return;
    }
    let env = ward_e2e_tests::TestEnv::new(test);
    let key = SigningKey::generate(&env, "cache-1");
    let cache = env.dir("cache");
    let url = file_url(&cache);
    let f = Fixture::with_env(
        env,
        DaemonOptions::multi_user()
            .conf(format!("substituters = {url}"))
            .conf(format!("trusted-public-keys = {}", key.public)),
    );
    // The cache is written by real Nix from a store with the daemon's store directory.
    let store_dir = f.daemon.layout().logical_store_dir.clone();
    let graph = ImportedGraph::new(&f.env.dir("graph"), &store_dir, test);
    graph.import(&f.reference.client);
    let to = format!("{url}?secret-key={}", key.secret_arg());
    f.reference
        .client
        .ok("nix", &["copy", "--to", &to, &graph.b]);
    // The frontend runs as ward-frontend: the cache must be readable by others.
    std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&cache)
        .status()
        .unwrap();
    let mut dir = cache.clone();
    while dir.pop() && dir.starts_with(f.env.path()) {
        std::process::Command::new("chmod")
            .arg("a+rx")
            .arg(&dir)
            .status()
            .unwrap();
    }

    f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.b]),
    );
    let valid = f.ward.all_valid_paths();
    assert!(
        valid.contains(&graph.a) && valid.contains(&graph.b),
        "{valid:?}"
    );
}

fn tamper(f: &Fixture, path: &str, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let real = f.real_path(path);
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&real, contents).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o444)).unwrap();
}

#[test]
fn verify_repair_fetches_damaged_and_vanished_paths_again() {
    let test = "verify_repair_fetches_damaged_and_vanished_paths_again";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.c]);
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.c]),
    );

    // a changed by hand: named, then fetched again.
    tamper(&f, &graph.a, b"tampered\n");
    let checked = f.ward.run("nix-store", &["--verify", "--check-contents"]);
    assert!(!checked.status.success(), "{checked}");
    checked.assert_stderr_contains(&format!("path '{}' was modified!", graph.a));
    let repaired = f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--verify", "--check-contents", "--repair"]),
    );
    repaired.assert_stderr_contains(&format!("copying path '{}' from '{url}'", graph.a));
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);
    assert_eq!(
        f.ward.ok("nix", &["store", "dump-path", &graph.a]).stdout,
        graph.nars[0]
    );

    // a gone while b still refers to it: kept in the database and fetched again.
    std::fs::remove_file(f.real_path(&graph.a)).unwrap();
    let repaired = f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--verify", "--repair"]),
    );
    repaired.assert_stderr_contains(&format!(
        "path '{}' disappeared, but it still has valid referrers!",
        graph.a
    ));
    assert!(f.real_path(&graph.a).exists());
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);

    // `nix-store --realise --repair` fetches a named path again too.
    tamper(&f, &graph.a, b"tampered again\n");
    f.ward.ok(
        "nix-store",
        &with_substituters(&url, &["--realise", "--repair", &graph.a]),
    );
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);
}

#[test]
fn a_path_no_cache_has_cannot_be_repaired() {
    let test = "a_path_no_cache_has_cannot_be_repaired";
    let Some(f) = Fixture::single_user(test) else {
        return;
    };
    let dir = f.env.dir("inputs");
    let path = f
        .ward
        .add(&[&inputs::file(&dir, "lone.txt", b"original\n")])[0]
        .clone();
    tamper(&f, &path, b"tampered\n");
    let out = f
        .ward
        .run("nix-store", &["--verify", "--check-contents", "--repair"]);
    assert!(!out.status.success(), "{out}");
    out.assert_stderr_contains(&format!("cannot repair path '{path}'"));
    // Nix 2.8's `--repair-path` never reaches a daemon: the client refuses it itself.
    let client_side = f.ward.run("nix-store", &["--repair-path", &path]);
    assert!(!client_side.status.success(), "{client_side}");
    client_side.assert_stderr_contains("repairPath");
}

#[test]
fn paths_are_fetched_over_https_with_the_configured_roots_only() {
    let test = "paths_are_fetched_over_https_with_the_configured_roots_only";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "", Some(&key), &[&graph.a]);
    let (server, ca) = HttpServer::start_tls(&cache, &src.env.dir("tls"));

    // Without the CA, the certificate is refused and nothing is fetched.
    let Some(untrusting) = substituting(
        &format!("{test}-no-ca"),
        &server.url,
        &key,
        DaemonOptions::single_user(),
    ) else {
        return;
    };
    let failed = untrusting.ward.fails(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&server.url);
    assert!(!untrusting.ward.all_valid_paths().contains(&graph.a));

    // With `ssl-cert-file` naming it, the path comes over TLS.
    let Some(f) = substituting(
        test,
        &server.url,
        &key,
        DaemonOptions::single_user().conf(format!("ssl-cert-file = {}", ca.display())),
    ) else {
        return;
    };
    let out = f.ward.ok(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &graph.a]),
    );
    out.assert_stderr_contains(&format!("copying path '{}' from '{}'", graph.a, server.url));
    assert_eq!(
        f.ward.ok("nix", &["store", "dump-path", &graph.a]).stdout,
        graph.nars[0]
    );
}

#[test]
fn a_nar_far_longer_than_its_narinfo_claims_is_cut_off() {
    let test = "a_nar_far_longer_than_its_narinfo_claims_is_cut_off";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "compression=none", Some(&key), &[&graph.a]);
    // 64 MiB where a few hundred bytes were signed for (as a decompression bomb would).
    replace_nar(
        &cache,
        &graph.a,
        &ward_e2e_tests::nar::nar_of_file(&vec![0u8; 64 << 20], false),
    );
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    f.populate();
    let before = f.snapshot();
    let failed = f.ward.fails(
        "nix-store",
        &with_substituters(&url, &["--realise", &graph.a]),
    );
    failed.assert_stderr_contains(&format!("size mismatch importing path '{}'", graph.a));
    failed.assert_stderr_contains("got:       more than");
    before.assert_unchanged(f.daemon.layout(), "after an overlong NAR");
}

#[test]
fn a_store_writer_killed_mid_substitution_leaves_nothing_partial() {
    use ward_e2e_tests::lifecycle::{kill_9, wait_for_process};
    let test = "a_store_writer_killed_mid_substitution_leaves_nothing_partial";
    let Some(src) = Fixture::single_user(&format!("{test}-src")) else {
        return;
    };
    let key = SigningKey::generate(&src.env, "cache-1");
    let dir = src.env.dir("inputs");
    let big = inputs::file(&dir, "big.bin", &vec![7u8; 16 << 20]);
    let path = src.ward.add(&[&big]).remove(0);
    let cache = src.env.dir("cache");
    fill_cache(&src, &cache, "compression=none", Some(&key), &[&path]);
    let server = start_nar_server(&cache, NarServing::Slow);
    let Some(f) = substituting(test, &server.url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let broker = f.daemon.pid().expect("ward runs");
    let timeout = std::time::Duration::from_secs(30);
    let mut writer = wait_for_process(broker, "ward-store-writer", None, timeout).unwrap();
    f.populate();
    let before = f.snapshot();

    // About 2.5 s of download; the store-writer dies early, midway and late in it, each
    // time in a new attempt.
    for kill_at_ms in [300, 1200, 2000] {
        let context = format!("store-writer killed {kill_at_ms} ms into a substitution");
        let client = f.ward.clone();
        let (url, target) = (server.url.clone(), path.clone());
        let realise = std::thread::spawn(move || {
            client.run(
                "nix-store",
                &with_substituters(&url, &["--realise", &target]),
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(kill_at_ms));
        kill_9(writer);
        let out = realise.join().unwrap();
        assert!(!out.status.success(), "{context}: it was cut short: {out}");
        writer = wait_for_process(broker, "ward-store-writer", Some(writer), timeout).unwrap();
        before.assert_unchanged(f.daemon.layout(), &context);
        let verify = f.ward.run("nix-store", &["--verify", "--check-contents"]);
        assert!(verify.status.success(), "{context}: {verify}");
    }

    // The restarted store-writer takes the whole path.
    f.ward.ok(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &path]),
    );
    f.ward.ok("nix-store", &["--verify-path", &path]);
}

/// An HTTP cache that also takes uploads: GET and HEAD serve `dir`, PUT writes into it (as
/// Nix's `nix copy --to http://…` sends files) and appends the path to `log`.
fn start_upload_server(dir: &Path, log: &Path) -> HttpServer {
    let port = free_port();
    let script = r#"
import functools, http.server, os, sys
root, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_PUT(self):
        rel = self.path.split('?')[0].lstrip('/')
        if '..' in rel.split('/'):
            self.send_error(400)
            return
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            data = b''
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get('Content-Length', '0')))
        target = os.path.join(root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, 'wb') as f:
            f.write(data)
        with open(log, 'a') as f:
            f.write('PUT /' + rel + ' ' + str(len(data)) + '\n')
        self.send_response(201)
        self.send_header('Content-Length', '0')
        self.end_headers()
handler = functools.partial(H, directory=root)
http.server.ThreadingHTTPServer(('127.0.0.1', port), handler).serve_forever()
"#;
    python_server("the upload server", script, dir, port, log.as_os_str())
}

#[test]
fn nix_copy_uploads_a_closure_to_an_http_cache_that_a_fresh_store_fetches() {
    let test = "nix_copy_uploads_a_closure_to_an_http_cache_that_a_fresh_store_fetches";
    let Some((src, graph, key)) = source(test) else {
        return;
    };
    let cache = src.env.dir("cache");
    let log = src.env.dir("server").join("puts.log");
    let server = start_upload_server(&cache, &log);
    // The client reads the NARs from ward (NarFromPath) and PUTs them to the cache itself.
    let to = format!("{}?secret-key={}", server.url, key.secret_arg());
    src.ward.ok("nix", &["copy", "--to", &to, &graph.c]);
    let puts = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(puts.contains("PUT /nix-cache-info"), "{puts}");
    for p in [&graph.a, &graph.b, &graph.c] {
        let base = p.rsplit('/').next().unwrap();
        assert!(
            puts.contains(&format!("PUT /{}.narinfo", &base[..32])),
            "{p} uploaded: {puts}"
        );
        assert_eq!(narinfo_field(&cache, p, "StorePath"), *p);
    }
    assert!(puts.contains("PUT /nar/"), "{puts}");

    // A fresh store fetches the closure back over HTTP, signature checked.
    let Some(f) = substituting(test, &server.url, &key, DaemonOptions::single_user()) else {
        return;
    };
    f.ward.ok(
        "nix-store",
        &with_substituters(&server.url, &["--realise", &graph.c]),
    );
    for (i, p) in [&graph.a, &graph.b, &graph.c].into_iter().enumerate() {
        assert_eq!(
            f.ward.ok("nix", &["store", "dump-path", p]).stdout,
            graph.nars[i],
            "{p}"
        );
    }
}

#[test]
fn one_realise_of_more_paths_than_the_store_writer_has_channels_fetches_them_all() {
    // The store-writer serves at most 512 channels; goals in flight must not each need one.
    let test = "one_realise_of_more_paths_than_the_store_writer_has_channels_fetches_them_all";
    let Some(src) = Fixture::single_user(&format!("{test}-src")) else {
        return;
    };
    let key = SigningKey::generate(&src.env, "cache-1");
    let dir = src.env.dir("inputs");
    let files: Vec<PathBuf> = (0..600)
        .map(|i| {
            inputs::file(
                &dir,
                &format!("small-{i}"),
                format!("small {i}\n").as_bytes(),
            )
        })
        .collect();
    let file_refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let paths = src.ward.add(&file_refs);
    assert_eq!(paths.len(), 600);
    let cache = src.env.dir("cache");
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    fill_cache(&src, &cache, "compression=none", Some(&key), &path_refs);
    let url = file_url(&cache);
    let Some(f) = substituting(test, &url, &key, DaemonOptions::single_user()) else {
        return;
    };
    let mut args = vec!["--realise"];
    args.extend(path_refs.iter().copied());
    let out = f.ward.ok("nix-store", &with_substituters(&url, &args));
    assert_eq!(out.lines().len(), 600, "{out}");
    let valid = f.ward.all_valid_paths();
    for p in &paths {
        assert!(valid.contains(p), "{p} was fetched");
    }
    f.ward.ok("nix-store", &["--verify", "--check-contents"]);
    // Once the realise is over nothing keeps the paths alive: a collection takes them (the
    // goals' roots go with the goals, a moment after the client's reply at most).
    let mut deleted = f.ward.run("nix-store", &["--delete", &paths[0]]);
    for _ in 0..20 {
        if deleted.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        deleted = f.ward.run("nix-store", &["--delete", &paths[0]]);
    }
    assert!(deleted.status.success(), "{deleted}");
    f.ward.ok("nix-store", &["--gc"]);
    assert!(f.ward.all_valid_paths().is_empty(), "all collected");
}
