//! `ward-wireload`: a native client of the Nix worker protocol that measures how many
//! QueryPathInfo / IsValidPath operations a daemon socket answers per second.
//!
//! It runs the same workload as the shared `wirebench.py query` (handshake at protocol 1.34,
//! SetOptions, then one op at a time per connection, cycling through a list of paths, K
//! connections started together), but costs a few microseconds per op instead of the tens a
//! Python client costs, so the daemon rather than the client decides the rate. Every reply is
//! parsed to its last field and checked (a path the daemon calls invalid is an error), so a
//! daemon that answered wrongly could not look fast.
//!
//! std only and independent of ward's crates on purpose: the harness must not share encoding
//! code with the daemon it measures.
//!
//! ```text
//! ward-wireload query --socket PATH --paths-file FILE [--op qpi|valid] [--ops N]
//!                     [--concurrency K] [--reps R]
//! ```
//!
//! Prints one JSON object: ops/s of each rep, their median, and latency percentiles (µs).

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
const CLIENT_VERSION: u64 = (1 << 8) | 34;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_READ: u64 = 0x6461_7461;
const STDERR_WRITE: u64 = 0x6461_7416;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6370_7865;
const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
const STDERR_RESULT: u64 = 0x5245_5354;

const OP_IS_VALID_PATH: u64 = 1;
const OP_SET_OPTIONS: u64 = 19;
const OP_QUERY_PATH_INFO: u64 = 26;

/// Longest string a reply may carry; a daemon that sends more is broken.
const MAX_STRING: u64 = 1 << 20;

type Result<T, E = String> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    QueryPathInfo,
    IsValidPath,
}

#[derive(Debug)]
struct Args {
    socket: PathBuf,
    paths_file: PathBuf,
    op: OpKind,
    ops: usize,
    concurrency: usize,
    reps: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("query") => {}
        Some("--help") | Some("-h") | None => {
            return Err(
                "usage: ward-wireload query --socket PATH --paths-file FILE \
                 [--op qpi|valid] [--ops N] [--concurrency K] [--reps R]"
                    .to_owned(),
            )
        }
        Some(other) => return Err(format!("unknown command '{other}' (only 'query')")),
    }
    let mut socket = None;
    let mut paths_file = None;
    let mut op = OpKind::QueryPathInfo;
    let mut ops = 10_000;
    let mut concurrency = 1;
    let mut reps = 1;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: '{v}' is not a positive number"))
        };
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--paths-file" => paths_file = Some(PathBuf::from(value()?)),
            "--op" => {
                op = match value()?.as_str() {
                    "qpi" => OpKind::QueryPathInfo,
                    "valid" => OpKind::IsValidPath,
                    other => return Err(format!("--op: '{other}' is not qpi or valid")),
                }
            }
            "--ops" => ops = number(value()?)?,
            "--concurrency" => concurrency = number(value()?)?,
            "--reps" => reps = number(value()?)?,
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        paths_file: paths_file.ok_or("--paths-file is required")?,
        op,
        ops,
        concurrency,
        reps,
    })
}

/// One client connection with buffered, blocking I/O.
struct Conn {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
}

impl Conn {
    fn open(socket: &PathBuf) -> Result<Conn> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connecting to '{}': {e}", socket.display()))?;
        let read_half = stream
            .try_clone()
            .map_err(|e| format!("cloning the socket: {e}"))?;
        let mut conn = Conn {
            r: BufReader::with_capacity(1 << 16, read_half),
            w: BufWriter::with_capacity(1 << 16, stream),
        };
        conn.handshake()?;
        conn.set_options()?;
        Ok(conn)
    }

    fn w_u64(&mut self, n: u64) -> Result<()> {
        self.w
            .write_all(&n.to_le_bytes())
            .map_err(|e| format!("writing: {e}"))
    }

    fn w_str(&mut self, s: &[u8]) -> Result<()> {
        self.w_u64(s.len() as u64)?;
        self.w.write_all(s).map_err(|e| format!("writing: {e}"))?;
        let pad = (8 - s.len() % 8) % 8;
        self.w
            .write_all(&[0u8; 8][..pad])
            .map_err(|e| format!("writing: {e}"))
    }

    fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| format!("writing: {e}"))
    }

    fn r_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("reading: {e}"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn r_bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.r_u64()?;
        if n > MAX_STRING {
            return Err(format!("daemon sent a {n}-byte string"));
        }
        let padded = (n as usize).div_ceil(8) * 8;
        let mut b = vec![0u8; padded];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("reading: {e}"))?;
        if b[n as usize..].iter().any(|&x| x != 0) {
            return Err("non-zero padding".to_owned());
        }
        b.truncate(n as usize);
        Ok(b)
    }

    fn r_strings(&mut self) -> Result<Vec<Vec<u8>>> {
        let n = self.r_u64()?;
        if n > MAX_STRING {
            return Err(format!("daemon sent a list of {n} strings"));
        }
        (0..n).map(|_| self.r_bytes()).collect()
    }

    fn handshake(&mut self) -> Result<()> {
        self.w_u64(WORKER_MAGIC_1)?;
        self.flush()?;
        if self.r_u64()? != WORKER_MAGIC_2 {
            return Err("not a Nix daemon (wrong magic)".to_owned());
        }
        let daemon_version = self.r_u64()?;
        if daemon_version >> 8 != 1 || (daemon_version & 0xff) < 34 {
            return Err(format!(
                "daemon protocol {daemon_version:#x} is not 1.34 or newer"
            ));
        }
        self.w_u64(CLIENT_VERSION)?;
        self.w_u64(0)?; // obsolete CPU affinity
        self.w_u64(0)?; // obsolete reserveSpace
        self.flush()?;
        self.r_bytes()?; // daemon's Nix version (negotiated 1.34 ≥ 1.33)
        self.stderr_until_last()
    }

    /// SetOptions as wirebench sends it: verbosity 0, no substitutes, no overrides.
    fn set_options(&mut self) -> Result<()> {
        self.w_u64(OP_SET_OPTIONS)?;
        for v in [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0] {
            self.w_u64(v)?;
        }
        self.w_u64(0)?;
        self.flush()?;
        self.stderr_until_last()
    }

    /// Reads logger messages up to STDERR_LAST; an error message fails the op.
    fn stderr_until_last(&mut self) -> Result<()> {
        loop {
            match self.r_u64()? {
                STDERR_LAST => return Ok(()),
                STDERR_NEXT => {
                    self.r_bytes()?;
                }
                STDERR_ERROR => {
                    let _type = self.r_bytes()?;
                    let _level = self.r_u64()?;
                    let _name = self.r_bytes()?;
                    let msg = self.r_bytes()?;
                    return Err(format!("daemon error: {}", String::from_utf8_lossy(&msg)));
                }
                STDERR_START_ACTIVITY => {
                    for _ in 0..3 {
                        self.r_u64()?;
                    }
                    self.r_bytes()?;
                    self.skip_fields()?;
                    self.r_u64()?;
                }
                STDERR_STOP_ACTIVITY => {
                    self.r_u64()?;
                }
                STDERR_RESULT => {
                    self.r_u64()?;
                    self.r_u64()?;
                    self.skip_fields()?;
                }
                STDERR_READ | STDERR_WRITE => {
                    return Err("daemon asked for data transfer during a query".to_owned())
                }
                other => return Err(format!("unknown logger message {other:#x}")),
            }
        }
    }

    fn skip_fields(&mut self) -> Result<()> {
        for _ in 0..self.r_u64()? {
            match self.r_u64()? {
                0 => {
                    self.r_u64()?;
                }
                1 => {
                    self.r_bytes()?;
                }
                t => return Err(format!("unknown logger field type {t}")),
            }
        }
        Ok(())
    }

    /// One op; fails unless the daemon says the path is valid.
    fn query(&mut self, op: OpKind, path: &[u8]) -> Result<()> {
        let code = match op {
            OpKind::QueryPathInfo => OP_QUERY_PATH_INFO,
            OpKind::IsValidPath => OP_IS_VALID_PATH,
        };
        self.w_u64(code)?;
        self.w_str(path)?;
        self.flush()?;
        self.stderr_until_last()?;
        let valid = self.r_u64()?;
        if valid != 1 {
            return Err(format!(
                "daemon says '{}' is not valid",
                String::from_utf8_lossy(path)
            ));
        }
        if op == OpKind::QueryPathInfo {
            let _deriver = self.r_bytes()?;
            let nar_hash = self.r_bytes()?;
            if nar_hash.len() != 64 && !nar_hash.contains(&b':') {
                return Err(format!(
                    "odd narHash '{}'",
                    String::from_utf8_lossy(&nar_hash)
                ));
            }
            let _references = self.r_strings()?;
            let _registration_time = self.r_u64()?;
            let nar_size = self.r_u64()?;
            if nar_size == 0 {
                return Err("narSize 0".to_owned());
            }
            let _ultimate = self.r_u64()?;
            let _sigs = self.r_strings()?;
            let _ca = self.r_bytes()?;
        }
        Ok(())
    }
}

struct WorkerResult {
    start: Instant,
    end: Instant,
    ops: usize,
    latencies_ns: Vec<u64>,
}

fn run_rep(args: &Args, paths: &Arc<Vec<Vec<u8>>>) -> Result<(f64, Vec<u64>)> {
    // Connect everyone first (not timed), then start together.
    let mut conns = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        conns.push(Conn::open(&args.socket)?);
    }
    let barrier = Arc::new(Barrier::new(args.concurrency));
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(worker, mut conn)| {
            let barrier = Arc::clone(&barrier);
            let paths = Arc::clone(paths);
            let (op, ops) = (args.op, args.ops);
            std::thread::spawn(move || -> Result<WorkerResult> {
                let mut latencies_ns = Vec::with_capacity(ops);
                barrier.wait();
                let start = Instant::now();
                for i in 0..ops {
                    let path = &paths[(i + worker) % paths.len()];
                    let t = Instant::now();
                    conn.query(op, path)?;
                    latencies_ns.push(t.elapsed().as_nanos() as u64);
                }
                Ok(WorkerResult {
                    start,
                    end: Instant::now(),
                    ops,
                    latencies_ns,
                })
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "a worker panicked".to_owned())??);
    }
    let start = results.iter().map(|r| r.start).min().expect("≥ 1 worker");
    let end = results.iter().map(|r| r.end).max().expect("≥ 1 worker");
    let ops: usize = results.iter().map(|r| r.ops).sum();
    let rate = ops as f64 / (end - start).as_secs_f64();
    let latencies = results.into_iter().flat_map(|r| r.latencies_ns).collect();
    Ok((rate, latencies))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let text = std::fs::read_to_string(&args.paths_file)
        .map_err(|e| format!("reading '{}': {e}", args.paths_file.display()))?;
    let paths: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if paths.is_empty() {
        return Err(format!("'{}' lists no paths", args.paths_file.display()));
    }
    let paths = Arc::new(paths);
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..args.reps {
        let (rate, lat) = run_rep(&args, &paths)?;
        rates.push(rate);
        latencies.extend(lat);
    }
    let mut sorted_rates = rates.clone();
    sorted_rates.sort_by(f64::total_cmp);
    let median = sorted_rates[sorted_rates.len() / 2];
    latencies.sort_unstable();
    let op = match args.op {
        OpKind::QueryPathInfo => "qpi",
        OpKind::IsValidPath => "valid",
    };
    let rates_json: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "{{\"command\": \"query\", \"client\": \"ward-wireload\", \"op\": \"{op}\", \
         \"concurrency\": {}, \"ops_per_worker\": {}, \"n_paths\": {}, \
         \"per_rep_ops_per_s\": [{}], \"ops_per_s_median\": {median:.1}, \
         \"latency_us\": {{\"p50\": {:.1}, \"p90\": {:.1}, \"p99\": {:.1}}}}}",
        args.concurrency,
        args.ops,
        paths.len(),
        rates_json.join(", "),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-wireload: {e}");
            ExitCode::FAILURE
        }
    }
}
