//! The `ward-frontend` process: read the same command line and settings as the daemon, wait
//! for the store-writer, open the store read-only, confine itself, and serve.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use ward_config::cli::LogFormat;
use ward_proto::store_path::StoreDir;

use crate::launch::{load_setup, parse_passthrough, DaemonSetup};
use crate::server::{self, Shared};
use crate::store::StoreView;
use crate::writer_client::WriterClient;

/// How long the frontend waits for the store-writer at start-up.
const STORE_WRITER_WAIT: Duration = Duration::from_secs(60);

/// The frontend's own arguments, then `--` and the daemon's.
#[derive(Debug)]
struct FrontendArgs {
    ipc_dir: PathBuf,
    daemon_args: Vec<OsString>,
}

fn parse_args(args: Vec<OsString>) -> Result<FrontendArgs, String> {
    let mut iter = args.into_iter();
    let mut ipc_dir = None;
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--listen-fd") => {
                // The descriptor is always 3 (socket-activation convention); the value is
                // informational.
                iter.next().ok_or("--listen-fd needs a value")?;
            }
            Some("--ipc-dir") => {
                ipc_dir = Some(PathBuf::from(iter.next().ok_or("--ipc-dir needs a value")?));
            }
            Some("--") => break,
            _ => return Err(format!("unknown argument '{}'", arg.to_string_lossy())),
        }
    }
    Ok(FrontendArgs {
        ipc_dir: ipc_dir.ok_or("--ipc-dir is required")?,
        daemon_args: iter.collect(),
    })
}

/// Sets up tracing on stderr as the daemon's `-v`/`--debug`/`--quiet`/`--log-format` ask.
pub fn init_logging(setup: &DaemonSetup) {
    use std::io::IsTerminal;
    use ward_config::Verbosity as V;
    // Nix shows a message when its level is at most the verbosity; ward's `info!` lines are
    // Nix's info level, so `--quiet` (notice) hides them.
    let level = match setup.args.verbosity {
        V::Error => "error",
        V::Warn | V::Notice => "warn",
        V::Info => "info",
        V::Talkative | V::Chatty => "debug",
        V::Debug | V::Vomit => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // raw, bar and bar-with-logs are the same for a daemon: plain lines (Nix draws no bar on
    // a daemon's stderr either).
    let layer: Boxed = match setup.args.log_format {
        Some(LogFormat::InternalJson) => Box::new(stderr.event_format(NixJsonFormat)),
        _ => Box::new(stderr.with_target(false)),
    };
    // `--log-format internal-json` asks for Nix's machine-readable lines, not the journal.
    if setup.args.log_format == Some(LogFormat::InternalJson) {
        let _ = tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .try_init();
    } else {
        ward_store::logging::init("ward-frontend", filter, Some(layer));
    }
}

/// `--log-format internal-json` as Nix writes it: one `@nix {"action":"msg","level":N,
/// "msg":"..."}` line per message, N being Nix's verbosity number.
struct NixJsonFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for NixJsonFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => 0,
            tracing::Level::WARN => 1,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 7,
        };
        let mut text = MessageText::default();
        event.record(&mut text);
        writeln!(
            writer,
            "@nix {{\"action\":\"msg\",\"level\":{level},\"msg\":\"{}\"}}",
            json_escape(&text.0)
        )
    }
}

/// The message of an event followed by its other fields as ` name=value`.
#[derive(Default)]
struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            self.0.push_str(&rest);
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Escapes text for a JSON string literal.
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Runs the frontend.
pub fn run(args: Vec<OsString>) -> Result<(), String> {
    let args = parse_args(args)?;
    let daemon_args = parse_passthrough(args.daemon_args).map_err(|e| e.to_string())?;
    let setup = load_setup(daemon_args, false).map_err(|e| e.to_string())?;
    init_logging(&setup);
    if let Err(e) = ward_store::audit::init(&setup.settings.ward_audit_log, "frontend") {
        tracing::error!(
            "the audit log '{}' (setting 'ward-audit-log') cannot be opened: {e}",
            setup.settings.ward_audit_log
        );
    }

    let mut listen = listenfd::ListenFd::from_env();
    // This thread accepts connections (and serves --stdio's one); the workers serve the rest.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async move {
        // The store-writer creates the DB and its WAL files; wait for it before reading.
        let _ = WriterClient::connect(&args.ipc_dir, STORE_WRITER_WAIT)
            .await
            .map_err(|e| format!("connecting to the store-writer: {e}"))?;
        let layout = &setup.layout;
        let store_dir =
            StoreDir::new(&layout.store_dir).map_err(|e| format!("store directory: {e}"))?;
        let store_layout = ward_store::layout::StoreLayout::from_parts(
            store_dir,
            &layout.real_store_dir,
            &layout.state_dir,
            &layout.log_dir,
        )
        .map_err(|e| e.to_string())?;
        let store = StoreView::open(store_layout)
            .map_err(|e| format!("opening the store database read-only: {e}"))?;
        // Before any other thread starts (landlock confines only the calling thread).
        #[cfg(target_os = "linux")]
        {
            let landlock = crate::confine::confine_files(layout, &setup.settings.ward_audit_log)
                .map_err(|e| format!("confining the frontend: {e}"))?;
            info!(landlock = %landlock, "frontend file access confined");
        }
        let broker = match listen.take_custom::<std::os::unix::net::UnixStream>(
            1,
            libc::AF_UNIX,
            libc::SOCK_STREAM,
            "unix stream socket",
        ) {
            Ok(Some(socket)) => Some(crate::broker_client::BrokerClient::start(socket)?),
            Ok(None) => None,
            Err(e) => return Err(format!("fd 4: {e}")),
        };
        let shared = Arc::new(Shared::new(crate::server::SharedParts {
            broker,
            builds: crate::build::Builds::new(
                setup.settings.max_jobs,
                setup.settings.ward_max_jobs_per_user,
            ),
            settings: setup.settings.clone(),
            substituters: crate::substitute::CachePool::new(
                &setup.settings,
                store.store_dir().clone(),
            ),
            store,
            ipc_dir: args.ipc_dir.clone(),
            trust_override: setup.args.trust_override,
            writer_restarts: Some(
                crate::writer_watch::start(args.ipc_dir.clone())
                    .map_err(|e| format!("starting the store-writer watch: {e}"))?,
            ),
        }));
        // Goals' temporary roots go to a restarted store-writer at once, as connections' do.
        if let Some(mut restarts) = shared.writer_restarts.clone() {
            let keeper = std::sync::Arc::clone(&shared.builds.roots);
            let ipc_dir = shared.ipc_dir.clone();
            tokio::spawn(async move {
                while restarts.changed().await.is_ok() {
                    keeper.refresh(&ipc_dir).await;
                }
            });
        }
        crate::confine::confine_frontend(&setup.layout)
            .map_err(|e| format!("confining the frontend: {e}"))?;
        #[cfg(all(target_os = "linux", debug_assertions))]
        crate::confine::probe_confinement(&setup.layout);
        let signals = tokio::spawn(crate::signals::handle(
            Arc::clone(&shared),
            setup.args.clone(),
        ));
        if setup.args.stdio {
            let stream = listen
                .take_custom::<std::os::unix::net::UnixStream>(
                    0,
                    libc::AF_UNIX,
                    libc::SOCK_STREAM,
                    "unix stream socket",
                )
                .map_err(|e| format!("fd 3: {e}"))?
                .ok_or("no client socket at fd 3 (LISTEN_FDS)")?;
            stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| e.to_string())?;
            server::serve_stdio(stream, shared).await;
            return Ok(());
        }
        let listener = listen
            .take_unix_listener(0)
            .map_err(|e| format!("fd 3: {e}"))?
            .ok_or("no listening socket at fd 3 (LISTEN_FDS)")?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
        let workers = crate::workers::Workers::for_this_machine(setup.args.busy_poll)
            .map_err(|e| format!("starting the worker threads: {e}"))?;
        info!(
            socket = %setup.layout.socket_path.display(),
            workers = workers.len(),
            "ward frontend ready"
        );
        if let Some(broker) = &shared.broker {
            if let Err(e) = broker.serving().await {
                tracing::warn!("telling the broker the frontend serves: {e}");
            }
        }
        server::serve_listener(listener, Arc::clone(&shared), &workers).await;
        // Draining: wait for the connections still busy with an operation.
        let deadline = tokio::time::Instant::now() + crate::signals::DRAIN_TIMEOUT;
        loop {
            let open: usize = workers.loads().iter().sum();
            if open == 0 {
                info!("stopped: every connection closed");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(open, "stopping with connections still busy");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Ok(Err(e)) = signals.await {
            tracing::warn!("signal handling: {e}");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escape_handles_quotes_backslashes_and_controls() {
        assert_eq!(json_escape("plain"), "plain");
        assert_eq!(json_escape(r#"a "b" \c"#), r#"a \"b\" \\c"#);
        assert_eq!(json_escape("x\ny\t\u{1}"), "x\\ny\\t\\u0001");
    }

    #[test]
    fn nix_json_lines_carry_level_and_message_with_fields() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(NixJsonFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            info!(socket = "/s", "ward \"frontend\" ready");
            tracing::warn!("careful");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "@nix {\"action\":\"msg\",\"level\":3,\"msg\":\"ward \\\"frontend\\\" ready socket=/s\"}\n\
             @nix {\"action\":\"msg\",\"level\":1,\"msg\":\"careful\"}\n"
        );
    }
}
