//! `ward-wireload`: a native client of the Nix worker protocol for the benchmark harness
//! (`bench/compare.py`), for workloads where a Python client would cost as much as the daemon
//! it measures.
//!
//! `query` runs the same workload as the shared `wirebench.py query` (handshake at protocol
//! 1.34, SetOptions, then one op at a time per connection, cycling through a list of paths, K
//! connections started together), but costs a few microseconds per op instead of the tens a
//! Python client costs, so the daemon rather than the client decides the rate. Every reply is
//! parsed to its last field and checked (a path the daemon calls invalid is an error), so a
//! daemon that answered wrongly could not look fast. The other commands do the same for
//! QueryValidPaths of a long list, many small AddToStoreNar on one connection and NarFromPath,
//! and `pingpong` measures the machine's unix-socket round trip (no daemon involved).
//!
//! std only and independent of ward's crates on purpose: the harness must not share encoding
//! code with the daemon it measures.
//!
//! ```text
//! ward-wireload query --socket PATH --paths-file FILE [--op qpi|valid] [--ops N]
//!                     [--concurrency K] [--reps R]
//! ward-wireload valid-paths --socket PATH --paths-file FILE --expect-valid N [--reps R]
//! ward-wireload add-nar --socket PATH --entries FILE
//! ward-wireload narfrom --socket PATH --path STORE-PATH [--reps R]
//! ward-wireload pingpong [--count N] [--reps R]
//! ```
//!
//! `--entries FILE` holds what AddMultipleToStore's framed stream carries (written by
//! compare.py): a u64 count, then per path its ValidPathInfo in the 1.16 ("full") encoding
//! (path, deriver, narHash, references, registrationTime, narSize, ultimate, sigs, ca) and the
//! NAR's bytes. `add-nar` sends each entry as its own AddToStoreNar, one after another.
//!
//! Each command prints one JSON object: rates of each rep, their median, and latency
//! percentiles (µs) where there are several ops.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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
const OP_QUERY_VALID_PATHS: u64 = 31;
const OP_NAR_FROM_PATH: u64 = 38;
const OP_ADD_TO_STORE_NAR: u64 = 39;

/// Longest string a reply may carry; a daemon that sends more is broken.
const MAX_STRING: u64 = 1 << 20;
/// Largest NAR `add-nar` sends in one frame without reading the daemon's log meanwhile: the
/// socket's buffers hold this much, so neither side can block the other.
const MAX_ADD_NAR: u64 = 1 << 20;

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

const USAGE: &str = "usage: ward-wireload query --socket PATH --paths-file FILE \
                     [--op qpi|valid] [--ops N] [--concurrency K] [--reps R]\n       \
                     ward-wireload valid-paths --socket PATH --paths-file FILE \
                     --expect-valid N [--reps R]\n       \
                     ward-wireload add-nar --socket PATH --entries FILE\n       \
                     ward-wireload narfrom --socket PATH --path STORE-PATH [--reps R]\n       \
                     ward-wireload pingpong [--count N] [--reps R]";

/// `--flag value` pairs of one command line; each command takes what it knows and
/// [`Flags::finish`] refuses the rest, so a misspelt flag is never silently ignored.
#[derive(Debug)]
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Flags> {
        let mut map = HashMap::new();
        while let Some(flag) = it.next() {
            if !flag.starts_with("--") {
                return Err(format!("unexpected argument '{flag}'"));
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            map.insert(flag, value);
        }
        Ok(Flags(map))
    }

    fn text(&mut self, flag: &str) -> Option<String> {
        self.0.remove(flag)
    }

    fn required(&mut self, flag: &str) -> Result<String> {
        self.text(flag).ok_or_else(|| format!("{flag} is required"))
    }

    fn number(&mut self, flag: &str, default: usize) -> Result<usize> {
        match self.text(flag) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: '{v}' is not a positive number")),
        }
    }

    fn finish(self) -> Result<()> {
        match self.0.keys().next() {
            Some(flag) => Err(format!("unknown option '{flag}'")),
            None => Ok(()),
        }
    }
}

fn parse_query_args(mut f: Flags) -> Result<Args> {
    let op = match f.text("--op").as_deref() {
        None | Some("qpi") => OpKind::QueryPathInfo,
        Some("valid") => OpKind::IsValidPath,
        Some(other) => return Err(format!("--op: '{other}' is not qpi or valid")),
    };
    let args = Args {
        socket: PathBuf::from(f.required("--socket")?),
        paths_file: PathBuf::from(f.required("--paths-file")?),
        op,
        ops: f.number("--ops", 10_000)?,
        concurrency: f.number("--concurrency", 1)?,
        reps: f.number("--reps", 1)?,
    };
    f.finish()?;
    Ok(args)
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

impl Conn {
    fn w_strs(&mut self, items: &[&[u8]]) -> Result<()> {
        self.w_u64(items.len() as u64)?;
        for s in items {
            self.w_str(s)?;
        }
        Ok(())
    }

    /// QueryValidPaths (substitute = false) of `paths`; returns how many the daemon calls
    /// valid, after checking that each of them was asked for.
    fn query_valid_paths(&mut self, paths: &[&[u8]]) -> Result<usize> {
        self.w_u64(OP_QUERY_VALID_PATHS)?;
        self.w_strs(paths)?;
        self.w_u64(0)?;
        self.flush()?;
        self.stderr_until_last()?;
        let n = self.r_u64()?;
        if n > paths.len() as u64 {
            return Err(format!("daemon calls {n} of {} paths valid", paths.len()));
        }
        for _ in 0..n {
            let p = self.r_bytes()?;
            if paths.binary_search(&p.as_slice()).is_err() {
                return Err(format!(
                    "daemon calls '{}' valid, which was not asked for",
                    String::from_utf8_lossy(&p)
                ));
            }
        }
        Ok(n as usize)
    }

    /// AddToStoreNar of one entry, its NAR in one frame (the entry is small, see
    /// [`MAX_ADD_NAR`]); trusted clients' dontCheckSigs, as `nix copy --no-check-sigs` sends.
    fn add_to_store_nar(&mut self, e: &Entry<'_>) -> Result<()> {
        self.w_u64(OP_ADD_TO_STORE_NAR)?;
        self.w_str(e.path)?;
        self.w_str(e.deriver)?;
        self.w_str(e.nar_hash)?;
        self.w_strs(&e.references)?;
        self.w_u64(e.registration_time)?;
        self.w_u64(e.nar.len() as u64)?;
        self.w_u64(e.ultimate)?;
        self.w_strs(&e.sigs)?;
        self.w_str(e.ca)?;
        self.w_u64(0)?; // repair
        self.w_u64(1)?; // dontCheckSigs
        self.w_u64(e.nar.len() as u64)?;
        self.w
            .write_all(e.nar)
            .map_err(|e| format!("writing: {e}"))?;
        self.w_u64(0)?; // end of the framed stream
        self.flush()?;
        self.stderr_until_last()
    }

    /// NarFromPath: the daemon's log ends, then the NAR follows unframed; it is parsed to
    /// find its end (and so that a malformed one fails). Returns its size in bytes.
    fn nar_from_path(&mut self, path: &[u8], buf: &mut [u8]) -> Result<u64> {
        self.w_u64(OP_NAR_FROM_PATH)?;
        self.w_str(path)?;
        self.flush()?;
        self.stderr_until_last()?;
        let mut nar = NarCount { n: 0 };
        nar.expect(self, b"nix-archive-1")?;
        nar.node(self, buf, 0)?;
        Ok(nar.n)
    }
}

/// Reads one NAR from a connection, counting its bytes.
struct NarCount {
    n: u64,
}

impl NarCount {
    fn token(&mut self, c: &mut Conn) -> Result<Vec<u8>> {
        let t = c.r_bytes()?;
        self.n += 8 + (t.len() as u64).div_ceil(8) * 8;
        Ok(t)
    }

    fn expect(&mut self, c: &mut Conn, want: &[u8]) -> Result<()> {
        let t = self.token(c)?;
        if t != want {
            return Err(format!(
                "NAR: expected '{}', got '{}'",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&t)
            ));
        }
        Ok(())
    }

    fn contents(&mut self, c: &mut Conn, buf: &mut [u8]) -> Result<()> {
        let size = c.r_u64()?;
        let padded = size.div_ceil(8) * 8;
        let mut left = padded;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            c.r.read_exact(&mut buf[..k])
                .map_err(|e| format!("reading the NAR: {e}"))?;
            left -= k as u64;
        }
        self.n += 8 + padded;
        Ok(())
    }

    fn node(&mut self, c: &mut Conn, buf: &mut [u8], depth: usize) -> Result<()> {
        if depth > 256 {
            return Err("NAR: directories nested too deep".to_owned());
        }
        self.expect(c, b"(")?;
        self.expect(c, b"type")?;
        match self.token(c)?.as_slice() {
            b"regular" => {
                let mut t = self.token(c)?;
                if t == b"executable" {
                    self.expect(c, b"")?;
                    t = self.token(c)?;
                }
                if t == b"contents" {
                    self.contents(c, buf)?;
                    t = self.token(c)?;
                }
                if t != b")" {
                    return Err("NAR: bad regular node".to_owned());
                }
            }
            b"symlink" => {
                self.expect(c, b"target")?;
                self.token(c)?;
                self.expect(c, b")")?;
            }
            b"directory" => loop {
                let t = self.token(c)?;
                if t == b")" {
                    break;
                }
                if t != b"entry" {
                    return Err("NAR: bad directory".to_owned());
                }
                self.expect(c, b"(")?;
                self.expect(c, b"name")?;
                self.token(c)?;
                self.expect(c, b"node")?;
                self.node(c, buf, depth + 1)?;
                self.expect(c, b")")?;
            },
            other => {
                return Err(format!(
                    "NAR: unknown node type '{}'",
                    String::from_utf8_lossy(other)
                ))
            }
        }
        Ok(())
    }
}

/// One path of an entries file (see the module docs), borrowing from the file's bytes.
struct Entry<'a> {
    path: &'a [u8],
    deriver: &'a [u8],
    nar_hash: &'a [u8],
    references: Vec<&'a [u8]>,
    registration_time: u64,
    ultimate: u64,
    sigs: Vec<&'a [u8]>,
    ca: &'a [u8],
    nar: &'a [u8],
}

/// A cursor over an entries file, in the wire encoding (u64 little endian, padded strings).
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| format!("entries file ends early (at byte {})", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let n = self.u64()? as usize;
        let s = self.take(n)?;
        self.take((8 - n % 8) % 8)?;
        Ok(s)
    }

    fn strings(&mut self) -> Result<Vec<&'a [u8]>> {
        let n = self.u64()?;
        (0..n).map(|_| self.string()).collect()
    }

    fn entry(&mut self) -> Result<Entry<'a>> {
        let path = self.string()?;
        let deriver = self.string()?;
        let nar_hash = self.string()?;
        let references = self.strings()?;
        let registration_time = self.u64()?;
        let nar_size = self.u64()?;
        let ultimate = self.u64()?;
        let sigs = self.strings()?;
        let ca = self.string()?;
        if nar_size > MAX_ADD_NAR {
            return Err(format!(
                "entry of {nar_size} NAR bytes; add-nar sends small NARs only"
            ));
        }
        let nar = self.take(nar_size as usize)?;
        Ok(Entry {
            path,
            deriver,
            nar_hash,
            references,
            registration_time,
            ultimate,
            sigs,
            ca,
            nar,
        })
    }
}

fn read_entries(data: &[u8]) -> Result<Vec<Entry<'_>>> {
    let mut c = Cursor { data, at: 0 };
    let count = c.u64()?;
    let entries = (0..count).map(|_| c.entry()).collect::<Result<Vec<_>>>()?;
    if c.at != data.len() {
        return Err(format!("{} bytes after the last entry", data.len() - c.at));
    }
    Ok(entries)
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

fn run_query(args: Args) -> Result<()> {
    let paths = read_paths(&args.paths_file)?;
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

fn read_paths(file: &Path) -> Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading '{}': {e}", file.display()))?;
    let paths: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if paths.is_empty() {
        return Err(format!("'{}' lists no paths", file.display()));
    }
    Ok(paths)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn json_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// QueryValidPaths of the whole list, once per rep, on one connection; the daemon must call
/// exactly `--expect-valid` of them valid.
fn run_valid_paths(mut f: Flags) -> Result<()> {
    let socket = PathBuf::from(f.required("--socket")?);
    let file = f.required("--paths-file")?;
    let expect = f.required("--expect-valid")?;
    let expect: usize = expect
        .parse()
        .map_err(|_| format!("--expect-valid: '{expect}'"))?;
    let reps = f.number("--reps", 1)?;
    f.finish()?;
    let mut paths = read_paths(Path::new(&file))?;
    paths.sort(); // sent as Nix sends a StorePathSet
    paths.dedup();
    let refs: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
    let mut conn = Conn::open(&socket)?;
    let mut seconds = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let valid = conn.query_valid_paths(&refs)?;
        seconds.push(t.elapsed().as_secs_f64());
        if valid != expect {
            return Err(format!(
                "daemon calls {valid} of {} paths valid, expected {expect}",
                refs.len()
            ));
        }
    }
    let rates: Vec<f64> = seconds.iter().map(|s| refs.len() as f64 / s).collect();
    let ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
    println!(
        "{{\"command\": \"valid-paths\", \"client\": \"ward-wireload\", \"n_paths\": {}, \
         \"valid\": {expect}, \"reps\": {reps}, \"per_rep_paths_per_s\": [{}], \
         \"per_rep_ms\": [{}], \"paths_per_s_median\": {:.1}, \"ms_median\": {:.3}}}",
        refs.len(),
        json_list(&rates),
        json_list(&ms),
        median(&rates),
        median(&ms),
    );
    Ok(())
}

/// Every entry of the file as its own AddToStoreNar, one after another on one connection
/// (the connection is opened before the clock starts).
fn run_add_nar(mut f: Flags) -> Result<()> {
    let socket = PathBuf::from(f.required("--socket")?);
    let file = f.required("--entries")?;
    f.finish()?;
    let data = std::fs::read(&file).map_err(|e| format!("reading '{file}': {e}"))?;
    let entries = read_entries(&data)?;
    if entries.is_empty() {
        return Err(format!("'{file}' holds no entries"));
    }
    let mut conn = Conn::open(&socket)?;
    let mut latencies = Vec::with_capacity(entries.len());
    let start = Instant::now();
    for e in &entries {
        let t = Instant::now();
        conn.add_to_store_nar(e)
            .map_err(|err| format!("adding '{}': {err}", String::from_utf8_lossy(e.path)))?;
        latencies.push(t.elapsed().as_nanos() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    let nar_bytes: usize = entries.iter().map(|e| e.nar.len()).sum();
    latencies.sort_unstable();
    println!(
        "{{\"command\": \"add-nar\", \"client\": \"ward-wireload\", \"adds\": {}, \
         \"nar_bytes\": {nar_bytes}, \"seconds\": {seconds:.6}, \"adds_per_s\": {:.1}, \
         \"latency_us\": {{\"p50\": {:.1}, \"p90\": {:.1}, \"p99\": {:.1}}}}}",
        entries.len(),
        entries.len() as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
    );
    Ok(())
}

/// NarFromPath of one path, `--reps` times on one connection; MB/s (10^6 bytes) of each.
fn run_narfrom(mut f: Flags) -> Result<()> {
    let socket = PathBuf::from(f.required("--socket")?);
    let path = f.required("--path")?;
    let reps = f.number("--reps", 1)?;
    f.finish()?;
    let mut conn = Conn::open(&socket)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut rates, mut size) = (Vec::with_capacity(reps), 0);
    for _ in 0..reps {
        let t = Instant::now();
        size = conn.nar_from_path(path.as_bytes(), &mut buf)?;
        rates.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    println!(
        "{{\"command\": \"narfrom\", \"client\": \"ward-wireload\", \"nar_bytes\": {size}, \
         \"reps\": {reps}, \"per_rep_MB_per_s\": [{}], \"MB_per_s_median\": {:.1}}}",
        json_list(&rates),
        median(&rates),
    );
    Ok(())
}

/// One byte back and forth between two threads over a unix socket pair: the machine's
/// round-trip time, the floor under every one-op-at-a-time request to a daemon.
fn run_pingpong(mut f: Flags) -> Result<()> {
    let count = f.number("--count", 20_000)?;
    let reps = f.number("--reps", 3)?;
    f.finish()?;
    let (mut a, mut b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() {
            if b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut us = Vec::with_capacity(reps);
    let mut byte = [1u8; 1];
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..count {
            a.write_all(&byte).map_err(|e| format!("writing: {e}"))?;
            a.read_exact(&mut byte)
                .map_err(|e| format!("reading: {e}"))?;
        }
        us.push(t.elapsed().as_secs_f64() * 1e6 / count as f64);
    }
    drop(a);
    echo.join()
        .map_err(|_| "the echo thread panicked".to_owned())?;
    println!(
        "{{\"command\": \"pingpong\", \"client\": \"ward-wireload\", \"count\": {count}, \
         \"per_rep_round_trip_us\": [{}], \"round_trip_us_median\": {:.3}}}",
        json_list(&us),
        median(&us),
    );
    Ok(())
}

fn run() -> Result<()> {
    let mut it = std::env::args().skip(1);
    let command = it.next();
    let flags = Flags::parse(it)?;
    match command.as_deref() {
        Some("query") => run_query(parse_query_args(flags)?),
        Some("valid-paths") => run_valid_paths(flags),
        Some("add-nar") => run_add_nar(flags),
        Some("narfrom") => run_narfrom(flags),
        Some("pingpong") => run_pingpong(flags),
        Some("--help") | Some("-h") | None => Err(USAGE.to_owned()),
        Some(other) => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
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
