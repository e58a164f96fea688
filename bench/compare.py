#!/usr/bin/env python3
"""compare.py - the same wire-level workloads against ward and Debian's nix-daemon, in one run.

Starts both daemons on throw-away chroot stores under a temporary directory, drives them with
the shared `wirebench.py` (never copied into this repository), and prints a markdown table
(workload, nix-daemon, ward, ratio ward/nix, target, met) plus the raw JSON of every run.

    python3 bench/compare.py --quick        # about 4 minutes after the build
    python3 bench/compare.py                # the full run

Runs are strictly sequential (the machine has 2 cores); measured workloads alternate between
the two daemons round by round, so background load drifting over the run hits both alike.
Daemons, their stores and the temporary directory are removed on exit, on Ctrl-C and on errors.
See bench/README.md for what each number means.
"""

import argparse
import hashlib
import importlib.util
import json
import platform
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SIDES = ("nix", "ward")
SIDE_TITLES = {"nix": "nix-daemon", "ward": "ward"}
KIB = 1024
MIB = 1024 * 1024

# Workload sizes. Measured workloads run in rounds (see Run.rounds): "add" entries are
# (size in MiB, rounds), one timed add per side per round after one warm-up add per side.
PROFILES = {
    "quick": {
        "connect": {"count": 100, "rounds": 3},
        "populate": 1000,
        "hot_paths": 16,
        # ops_at: ops per connection for some connection counts (32 clients asking 2,000 each
        # would take minutes from the Python client)
        "query": {"ops": 2000, "rounds": 2, "concurrency": [1, 8, 32], "ops_at": {32: 500}},
        "native_query": {"ops": 10000, "rounds": 2, "concurrency": [1, 8, 32],
                         "ops_at": {32: 2500}, "split_concurrency": [8]},
        "valid_paths": {"paths": 10000, "rounds": 3, "reps": 20},
        "bigstore": {"small": 1000, "large": 100000, "ops": 1000, "rounds": 3},
        "add": [(1, 5), (64, 2)],
        "add_small": {"size": 1024, "count": 1000, "rounds": 3},
        "add_multiple": {"paths": 2000, "size": 1024, "rounds": 2},
        "nix_copy": {"paths": 300, "size": 1024, "rounds": 2},
        "narfrom": {"size_mb": 64, "rounds": 2, "reps": 3},
        "idle": {"connections": [1, 100, 1000], "nix_cap": 2000, "settle": 0.5},
        "limits": {"sha_mb": 256, "disk_mb": 64, "mem_mb": 256, "pingpong": 20000, "reps": 3},
        "build": {"single": 8, "rounds": 3, "batch": 20, "batch_rounds": 2},
        "maint": {"gc_paths": 10000, "gc_group": 50, "sub_small": 200, "sub_large_mb": 128,
                  "sub_rounds": 2},
        "timeout": 300,
    },
    "full": {
        "connect": {"count": 200, "rounds": 7},
        "populate": 5000,
        "hot_paths": 16,
        "query": {"ops": 5000, "rounds": 5, "concurrency": [1, 8, 32], "ops_at": {32: 1250}},
        "native_query": {"ops": 20000, "rounds": 5, "concurrency": [1, 8, 32],
                         "ops_at": {32: 5000}, "split_concurrency": [8]},
        "valid_paths": {"paths": 10000, "rounds": 5, "reps": 50},
        "bigstore": {"small": 1000, "large": 1000000, "ops": 1000, "rounds": 5},
        "add": [(1, 10), (64, 5), (256, 3), (1024, 3)],
        "add_small": {"size": 1024, "count": 5000, "rounds": 5},
        "add_multiple": {"paths": 10000, "size": 1024, "rounds": 3},
        "nix_copy": {"paths": 2000, "size": 1024, "rounds": 3},
        "narfrom": {"size_mb": 1024, "rounds": 3, "reps": 3},
        "idle": {"connections": [1, 100, 1000, 10000], "nix_cap": 2000, "settle": 1.0},
        "limits": {"sha_mb": 256, "disk_mb": 256, "mem_mb": 256, "pingpong": 50000, "reps": 3},
        "build": {"single": 10, "rounds": 5, "batch": 20, "batch_rounds": 3},
        "maint": {"gc_paths": 100000, "gc_group": 50, "sub_small": 1000, "sub_large_mb": 1024,
                  "sub_rounds": 3},
        "timeout": 1800,
    },
}

# Worker protocol greeting (Nix 2.8 worker-protocol.hh), for the readiness probe only.
WORKER_MAGIC_1 = 0x6E697863
WORKER_MAGIC_2 = 0x6478696F
STDERR_LAST = 0x616C7473
PROBE_CLIENT_VERSION = (1 << 8) | 34

PHASES = ("protocol", "data", "build", "maint")

# The build phase: a statically linked builder that stamps its own start time into $out, bound
# into both daemons' sandboxes with sandbox-paths, and max-jobs for the batch of builds.
BUILD_STAMP_SRC = REPO_ROOT / "bench" / "build-stamp" / "main.rs"
BUILD_MAX_JOBS = 4
BUILD_SYSTEM = platform.machine() + "-" + platform.system().lower()
# What the sandbox probe build reports: the build's view of its own confinement.
SANDBOX_PROBE_SCRIPT = (
    "{ echo \"uid_map: $(tr -s ' ' < /proc/self/uid_map)\"; "
    "grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; "
    "echo \"hostname: $(hostname)\"; "
    "echo \"network devices: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')\"; "
    "echo \"/home visible: $([ -e /home ] && echo yes || echo no)\"; } > $out")

QUERY_OPS = ("qpi", "valid")
QUERY_OP_NAMES = {"qpi": "QueryPathInfo", "valid": "IsValidPath"}


def query_key(kind, op, k):
    return "query_%s_%s_k%d" % (kind, op, k)


def native_query_key(kind, k, split=False):
    return "native_query_%s_qpi_k%d%s" % (kind, k, "_split" if split else "")


def split_cpus():
    """(daemon CPUs, client CPUs) for the split rows: the daemon alone on the last CPU this
    process may use, the clients on the others; None with fewer than 2 CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def set_tree_affinity(root, cpus):
    """Every thread of every process in root's tree may run only on cpus (new threads and
    children inherit it)."""
    for pid in process_tree(root):
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # the thread ended


# The issue's targets.
CONNECT_RATIO_TARGET = 10.0
# QueryPathInfo: by connection count; other counts (8) keep the original 2x
QUERY_PATH_INFO_RATIO_TARGETS = {1: 3.0, 32: 5.0}
QUERY_PATH_INFO_RATIO_TARGET = 2.0
ADD_1GIB_RATIO_TARGET = 1.5
NARFROM_1GIB_RATIO_TARGET = 1.5
ADD_TARGET_SIZE_MB = 1024
# 1 GiB adds and downloads: ward's MB/s at least this share of min(SHA-256, disk write)
MACHINE_LIMIT_SHARE_TARGET = 0.8
ADD_SMALL_RATIO_TARGET = 2.0  # AddToStoreNar of 1 KiB, adds/s
ADD_MULTIPLE_RATIO_TARGET = 2.0  # AddMultipleToStore, paths/s
NIX_COPY_RATIO_TARGET = 0.5  # nix copy seconds: ward at least 2x faster
BIGSTORE_LATENCY_GROWTH_LIMIT = 1.2  # QueryPathInfo latency, large store / small store
PEAK_RSS_LIMIT_KB = 64 * KIB  # 64 MiB, in KiB as /proc reports it
IDLE_PER_CONNECTION_LIMIT_KB = 16  # 16 KiB
IDLE_TARGET_CONNECTIONS = (1000, 10000)
GC_RATIO_TARGET = 0.5  # GC seconds: ward at least 2x faster
SUBSTITUTE_RATIO_TARGET = 1.0  # substitution seconds: ward at least as fast

# The maint phase: the nix-store --export framing (Nix 2.8 export-import.cc), and the size of
# each path of the small-substitution set.
EXPORT_MAGIC = 0x4558494E
SUB_SMALL_SIZE = 1024
# The binary cache's server: 'python3 -m http.server' (its handler, its threading server, HTTP/1.0,
# one connection per request) but with a listen queue of 1,024 instead of socketserver's 5: a
# daemon fetching in parallel overflows 5, and every dropped SYN then costs the kernel's SYN
# retransmission back-off (1 s, 2 s, 4 s, ...), which would be measured instead of the daemon.
HTTP_CACHE_SERVER = (
    "import functools, http.server, sys\n"
    "class Server(http.server.ThreadingHTTPServer):\n"
    "    request_queue_size = 1024\n"
    "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
    "Server(('127.0.0.1', int(sys.argv[2])), handler).serve_forever()\n")


class BenchError(Exception):
    """A failure that ends one side's workload (or the whole run) with a readable message."""


def log(msg):
    print("[compare] " + msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# locating the tools


def git_main_checkout():
    """The main checkout of this repository when running from a linked worktree, else None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--path-format=absolute",
             "--git-common-dir"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out).parent if out else None


def find_wirebench(explicit):
    """Locate the shared wirebench.py; refuse to run without it (it is not vendored here)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SystemExit("compare.py: --wirebench %s does not exist" % path)
        return path.resolve()
    candidates = []
    shared = os.environ.get("WARD_SHARED_DIR")
    if shared:
        candidates.append(Path(shared) / "bench" / "wirebench.py")
    candidates.append(REPO_ROOT.parent / "shared" / "bench" / "wirebench.py")
    main = git_main_checkout()
    if main is not None:
        candidates.append(main.parent / "shared" / "bench" / "wirebench.py")
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise SystemExit(
        "compare.py: cannot find wirebench.py; looked in:\n  %s\n"
        "set WARD_SHARED_DIR to the shared directory (holding bench/wirebench.py) "
        "or pass --wirebench PATH" % "\n  ".join(str(p) for p in candidates))


def build_ward():
    """cargo build --release --workspace; returns the ward binary or raises BenchError."""
    cmd = ["cargo", "build", "--release", "--workspace"]
    log("building ward: %s (in %s)" % (" ".join(cmd), REPO_ROOT))
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise BenchError("cannot run cargo: %s" % e) from e
    if proc.returncode != 0:
        raise BenchError("'%s' failed (exit %d):\n%s"
                         % (" ".join(cmd), proc.returncode, tail(proc.stdout, 40)))
    ward = REPO_ROOT / "target" / "release" / "ward"
    if not ward.is_file():
        raise BenchError("the build succeeded but %s does not exist" % ward)
    return ward


def describe_log(path):
    text = file_tail(path)
    return "its log ends with:\n%s" % text if text else "it printed nothing"


PROBLEM_WORDS = ("WARN", "ERROR", "panic", "cannot", "failed", "refus")


def describe_problems(path, lines=8):
    """describe_log, preceded by the log's last warnings and errors (repeats counted): when a
    daemon logs a line per path, its last 30 lines seldom show what went wrong."""
    problems = []  # [message without its time stamp, count, line]
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if not any(w in line for w in PROBLEM_WORDS):
                    continue
                line = line.rstrip()
                msg = line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line
                if problems and problems[-1][0] == msg:
                    problems[-1][1] += 1
                else:
                    problems.append([msg, 1, line])
    except OSError:
        pass
    text = describe_log(path)
    if not problems:
        return text
    shown = "\n".join(clip(line) + ("" if n == 1 else "  [%d times]" % n)
                      for _msg, n, line in problems[-lines:])
    return "its last warnings and errors:\n%s\n%s" % (shown, text)


def clip(line, width=300):
    """A line cut to width characters (nix-store names every path of a failed build)."""
    return line if len(line) <= width else line[:width] + "… [%d more characters]" % (
        len(line) - width)


def clip_lines(text, width=300):
    return "\n".join(clip(l, width) for l in (text or "").splitlines())


def tail(text, lines):
    parts = (text or "").rstrip().splitlines()
    return "\n".join(parts[-lines:])


def file_tail(path, lines=30):
    try:
        return tail(Path(path).read_text(errors="replace"), lines)
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# /proc helpers


def read_status(pid):
    """Name, VmRSS and VmHWM (KiB) of a process, or None once it is gone."""
    fields = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Name", "VmRSS", "VmHWM"):
                    fields[key] = value.strip()
    except OSError:
        return None
    return {
        "name": fields.get("Name", "?"),
        "rss_kb": int(fields.get("VmRSS", "0 kB").split()[0]),
        "hwm_kb": int(fields.get("VmHWM", "0 kB").split()[0]),
    }


def process_name(pid):
    """The executable's file name (comm is cut at 15 bytes: 'ward-store-writ')."""
    try:
        return os.path.basename(os.readlink("/proc/%d/exe" % pid))
    except OSError:
        status = read_status(pid)
        return status["name"] if status else "?"


def process_tree(root):
    """root and all its descendants (by parent pid)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        if os.path.exists("/proc/%d" % pid):
            out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def tree_peaks(root):
    """Peak and current RSS of every process in root's tree."""
    out = []
    for pid in process_tree(root):
        status = read_status(pid)
        if status:
            out.append({"pid": pid, "name": process_name(pid), "hwm_kb": status["hwm_kb"],
                        "rss_kb": status["rss_kb"]})
    return out


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root):
    """User + system CPU time of root's tree, reaped children included; and its process count.

    nix-daemon reaps its per-connection children, so their time lands in its cutime/cstime."""
    ticks = 0
    pids = process_tree(root)
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS, len(pids)


def settle_tree(root, count, timeout=3.0):
    """Wait until per-connection processes have exited and been reaped (their CPU time then
    shows up in the parent's cutime/cstime)."""
    deadline = time.monotonic() + timeout
    while len(process_tree(root)) > count and time.monotonic() < deadline:
        time.sleep(0.02)


def listen_overflows():
    """The kernel's count of connections dropped by full listen queues (TcpExt
    ListenOverflows), or None."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"]) if "ListenOverflows" in fields else None
    return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


class PeakSampler(threading.Thread):
    """Polls VmHWM of every process of the daemons' trees while the adds run.

    ward's processes live for the whole run, so their VmHWM after the adds is exact; this
    sampler exists for nix-daemon, whose per-connection children exit (taking their VmHWM
    with them) as soon as each add is done."""

    def __init__(self, daemons, interval=0.2):
        super().__init__(daemon=True)
        self.daemons = daemons
        self.interval = interval
        self.stop_event = threading.Event()
        self.peaks = {d.side: {} for d in daemons}

    def run(self):
        while not self.stop_event.wait(self.interval):
            for d in self.daemons:
                if not d.running():
                    continue
                for p in tree_peaks(d.pid):
                    seen = self.peaks[d.side].setdefault(p["pid"], {"name": p["name"], "hwm_kb": 0})
                    seen["hwm_kb"] = max(seen["hwm_kb"], p["hwm_kb"])

    def stop(self):
        self.stop_event.set()
        self.join()


# --------------------------------------------------------------------------------------------
# daemons


class Daemon:
    """One daemon on a fresh chroot store; stop() ends it and every process it started."""

    def __init__(self, side, argv, env, socket_path, store_root, log_path):
        self.side = side
        self.argv = argv
        self.env = env
        self.socket_path = socket_path
        self.store_root = store_root
        self.log_path = log_path
        self.proc = None
        self.logf = None

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=30.0):
        self.logf = open(self.log_path, "ab")
        log("starting %s: %s" % (SIDE_TITLES[self.side], " ".join(map(str, self.argv))))
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=self.logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as e:
            raise BenchError("cannot start %s: %s" % (self.argv[0], e)) from e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("%s exited with status %d before accepting connections; %s"
                                 % (SIDE_TITLES[self.side], self.proc.returncode,
                                    describe_log(self.log_path)))
            if self._accepts():
                return
            time.sleep(0.05)
        raise BenchError("%s did not accept connections on %s within %.0f s; %s"
                         % (SIDE_TITLES[self.side], self.socket_path, timeout,
                            describe_log(self.log_path)))

    def _accepts(self):
        """Ready means serving: the daemon completes a protocol 1.34 handshake."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)

        def read_exact(n):
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                if not chunk:
                    raise EOFError("the daemon hung up")
                data += chunk
            return data

        def read_u64():
            return struct.unpack("<Q", read_exact(8))[0]

        try:
            s.connect(str(self.socket_path))
            s.sendall(struct.pack("<Q", WORKER_MAGIC_1))
            if read_u64() != WORKER_MAGIC_2 or read_u64() >> 8 != 1:
                return False
            # our version, then the obsolete CPU-affinity and reserveSpace flags
            s.sendall(struct.pack("<QQQ", PROBE_CLIENT_VERSION, 0, 0))
            length = read_u64()  # the daemon's Nix version string, sent from 1.33 on
            if length > 4096:
                return False
            read_exact(length + (-length) % 8)
            return read_u64() == STDERR_LAST
        except (OSError, EOFError):
            return False
        finally:
            s.close()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            tree = process_tree(self.proc.pid)
            self._signal_all(tree, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            # nix-daemon's per-connection children and ward's children may outlive the parent
            for _ in range(50):
                left = [p for p in tree if os.path.exists("/proc/%d" % p) and not _is_zombie(p)]
                if not left:
                    break
                time.sleep(0.1)
            self._signal_all([p for p in tree if os.path.exists("/proc/%d" % p)], signal.SIGKILL)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log("warning: %s (pid %d) did not exit after SIGKILL"
                    % (SIDE_TITLES[self.side], self.proc.pid))
        if self.logf:
            self.logf.close()
            self.logf = None
        self.proc = None

    @staticmethod
    def _signal_all(pids, sig):
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] == "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------------------------
# the run


class Run:
    def __init__(self, args, wirebench, tmp):
        self.args = args
        self.profile = PROFILES["quick" if args.quick else "full"]
        self.timeout = args.timeout or self.profile["timeout"]
        self.wirebench = wirebench
        # the native client, built with ward (next to --ward-bin, else in target/release)
        self.wireload = None
        self.tmp = tmp
        self.sides = [s for s in SIDES if s in args.sides]
        self.side_info = {s: {} for s in SIDES}
        self.side_error = {}  # side -> why it cannot run at all
        self.crashes = []  # daemons found dead at the end of a phase
        self.interrupted = False
        self.workloads = {}  # key -> side -> record
        self.peak_rss = {}
        self.daemons = {}
        self.start_load = loadavg()
        self.build_stamp = None  # the static builder of the build phase, once compiled
        self.http_cache = None  # (Popen, log file) of the maint phase's HTTP binary cache
        self.limits = {}  # machine limits: key -> {"value": v} or {"error": why}
        self.peak_rss_reset = {}

    # ---- daemons

    def daemon_for(self, side, phase):
        root = self.tmp / ("%s-%s-root" % (side, phase))
        sock = self.tmp / ("%s-%s.sock" % (side, phase))
        logp = self.tmp / ("%s-%s.log" % (side, phase))
        env = self.daemon_env(phase)
        if side == "nix":
            env["NIX_DAEMON_SOCKET_PATH"] = str(sock)
            argv = [self.args.nix_daemon, "--store", str(root)]
            if phase != "build":
                argv += ["--option", "sandbox", "false"]
        else:
            argv = [str(self.side_info["ward"]["bin"]), "daemon", "--store", str(root),
                    "--socket-path", str(sock)] + list(self.args.ward_arg or [])
        setpriv = shutil.which("setpriv")
        if setpriv:
            # should compare.py itself be killed outright, the daemon dies with it
            argv = [setpriv, "--pdeathsig", "KILL"] + argv
        return Daemon(side, argv, env, sock, root, logp)

    def daemon_env(self, phase):
        """The same small environment for both daemons: no host or user nix.conf, no NIX_REMOTE.
        The build phase sandboxes both daemons' builds as build users of nixbld; the maint
        phase turns signature checks off and names no substituter (its client names the cache)."""
        home = self.tmp / "home"
        conf = self.tmp / ("conf-%s" % phase)
        for d in (home / ".config", home / ".cache", conf):
            d.mkdir(parents=True, exist_ok=True)
        if phase == "build":
            conf_text = ("sandbox = true\nsandbox-fallback = false\nbuild-users-group = nixbld\n"
                         "sandbox-paths = /bin/stamp=%s /bin/sh=/bin/busybox\n"
                         "max-jobs = %d\nsubstituters =\n" % (self.build_stamp, BUILD_MAX_JOBS))
        elif phase == "maint":
            # no cache in nix.conf: the substitution client names the local one per command
            conf_text = "sandbox = false\nrequire-sigs = false\nsubstituters =\n"
        else:
            conf_text = "sandbox = false\n"
        (conf / "nix.conf").write_text(conf_text)
        os.chmod(conf, 0o755)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CONFIG_DIRS": str(conf),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "NIX_CONF_DIR": str(conf),
        }
        for name in ("RUST_LOG", "RUST_BACKTRACE"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def start_phase(self, phase):
        for side in self.sides:
            if side in self.side_error:
                continue
            d = self.daemon_for(side, phase)
            self.daemons[side] = d
            try:
                d.start()
            except BenchError as e:
                self.side_error[side] = str(e)
                self.side_info[side].setdefault("logs", {})[phase] = file_tail(d.log_path, 200)
                log("%s cannot run: %s" % (SIDE_TITLES[side], e))
                d.stop()
                del self.daemons[side]

    def stop_phase(self, phase):
        for side, d in list(self.daemons.items()):
            exit_status = d.proc.poll()
            d.stop()
            self.side_info[side].setdefault("logs", {})[phase] = file_tail(d.log_path, 200)
            if exit_status is not None and side not in self.side_error:
                # reported under the table; the next phase starts a fresh daemon all the same
                self.crashes.append({"side": side, "phase": phase, "exit_status": exit_status,
                                     "log_tail": file_tail(d.log_path)})
            remove_tree(d.store_root)
        self.daemons = {}

    def stop_all(self):
        self.stop_http_cache()
        for d in list(self.daemons.values()):
            d.stop()
        self.daemons = {}

    # ---- wirebench

    def wirebench_json(self, side, sub_argv, timeout=None):
        d = self.daemons[side]
        argv = [sys.executable, str(self.wirebench), "--socket", str(d.socket_path)] + sub_argv
        return self.client_json("wirebench", side, argv, sub_argv, timeout)

    def wireload_json(self, side, sub_argv, timeout=None, cpus=None):
        """The native client (bench/src/main.rs): same workload, a few µs per op of its own."""
        if not self.wireload or not Path(self.wireload).is_file():
            raise BenchError("ward-wireload is not built (cargo build --release -p ward-bench)")
        d = self.daemons[side]
        argv = [str(self.wireload), sub_argv[0], "--socket", str(d.socket_path)] + sub_argv[1:]
        return self.client_json("ward-wireload", side, argv, sub_argv, timeout, cpus)

    def client_json(self, client, side, argv, sub_argv, timeout=None, cpus=None):
        d = self.daemons[side]
        t0 = time.monotonic()
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                cwd=self.tmp, preexec_fn=None if cpus is None
                                else lambda: os.sched_setaffinity(0, cpus))
        try:
            out, err = proc.communicate(timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise BenchError("%s %s timed out after %d s; stderr:\n%s\n%s: %s"
                             % (client, sub_argv[0], timeout or self.timeout, tail(err, 20),
                                SIDE_TITLES[side], describe_log(d.log_path)))
        except BaseException:
            kill_group(proc)  # Ctrl-C or SIGTERM: the client and its workers go too
            raise
        if proc.returncode != 0:
            raise BenchError("%s %s exited with status %d; stderr:\n%s\n%s %s; %s"
                             % (client, " ".join(sub_argv), proc.returncode, tail(err, 20),
                                SIDE_TITLES[side],
                                "is still running" if d.running() else
                                "has exited (status %s)" % d.proc.returncode,
                                describe_log(d.log_path)))
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise BenchError("%s %s printed no JSON (%s): %s"
                             % (client, sub_argv[0], e, tail(out, 5)))
        doc["wall_s"] = time.monotonic() - t0
        # The client and every worker it reaped: runs are sequential, so nothing else ends
        # in between.
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        doc["client_cpu_s"] = ((usage_after.ru_utime - usage_before.ru_utime)
                               + (usage_after.ru_stime - usage_before.ru_stime))
        return doc

    def cannot_run(self, side):
        """Why a side cannot run a workload now, or None."""
        if side in self.side_error:
            return "not run: " + first_line(self.side_error[side])
        d = self.daemons.get(side)
        if d is None or not d.running():
            return "not run: %s is not running%s" % (
                SIDE_TITLES[side], "" if d is None or d.proc is None
                else " (it exited with status %s)" % d.proc.returncode)
        return None

    def once(self, key, side, fn, needs_daemon=True):
        """One side of a one-shot workload (ping, idle, populate): its document or its error.
        needs_daemon=False: fn starts the daemon itself (only a side that cannot run at all is
        skipped)."""
        rec = {"loadavg_before": loadavg()}
        self.workloads.setdefault(key, {})[side] = rec
        if needs_daemon:
            why = self.cannot_run(side)
        else:
            why = ("not run: " + first_line(self.side_error[side])
                   if side in self.side_error else None)
        if why:
            rec["error"] = why
            return None
        log("%-16s %s" % (key, SIDE_TITLES[side]))
        try:
            rec["result"] = fn()
            return rec["result"]
        except BenchError as e:
            rec["error"] = str(e)
            log("%s failed on %s:\n%s" % (key, SIDE_TITLES[side], indent(str(e))))
            return None

    def rounds(self, key, count, argv_for, samples_of, work_of=None, before=None, runner=None,
               check=None):
        """A measured workload, interleaved: every round runs each side once, the order flipping
        from round to round, so drifting background load hits both sides alike.

        argv_for(side, round) -> wirebench arguments; samples_of(side, doc) -> {metric: [values]};
        work_of(doc) -> units of work done (ops, connections, MiB) for the daemon-CPU figure;
        before(side) runs untimed ahead of each run (it may restart the side's daemon);
        check(side, doc) runs after the CPU time is read, so that verifying what a run did (the
        daemon's answers to it) is neither timed nor charged to the run. A row's value is the
        median of all samples; the CPU figure is all rounds' daemon CPU time over all rounds'
        work. runner(side, argv) runs the client (default: wirebench)."""
        runner = runner or self.wirebench_json
        recs = {}
        for side in self.sides:
            rec = {"loadavg_before": loadavg(), "runs": [], "samples": {}, "cpu_s": [],
                   "client_cpu_s": [], "work": []}
            why = self.cannot_run(side)
            if why:
                rec["error"] = why
            self.workloads.setdefault(key, {})[side] = rec
            recs[side] = rec
        for i in range(count):
            order = self.sides if i % 2 == 0 else list(reversed(self.sides))
            for side in order:
                rec = recs[side]
                if "error" in rec:
                    continue
                why = self.cannot_run(side)
                if why:
                    rec["error"] = why
                    continue
                log("%-24s %s (round %d/%d)" % (key, SIDE_TITLES[side], i + 1, count))
                try:
                    if before:
                        before(side)
                    daemon = self.daemons[side]
                    cpu_before, pids_before = tree_cpu_seconds(daemon.pid)
                    doc = runner(side, argv_for(side, i))
                    settle_tree(daemon.pid, pids_before)
                    cpu_after, _ = tree_cpu_seconds(daemon.pid)
                    if check:
                        check(side, doc)
                    samples = samples_of(side, doc)
                except BenchError as e:
                    rec["error"] = "round %d: %s" % (i + 1, e)
                    log("%s failed on %s:\n%s" % (key, SIDE_TITLES[side], indent(rec["error"])))
                    continue
                rec["runs"].append(doc)
                for metric, values in samples.items():
                    rec["samples"].setdefault(metric, []).extend(values)
                if work_of:
                    rec["cpu_s"].append(cpu_after - cpu_before)
                    rec["client_cpu_s"].append(doc.get("client_cpu_s", 0.0))
                    rec["work"].append(work_of(doc))
        for rec in recs.values():
            rec["summary"] = {m: summarize(v) for m, v in rec["samples"].items()}
            if rec["work"] and sum(rec["work"]) > 0:
                rec["cpu_per_unit_s"] = sum(rec["cpu_s"]) / sum(rec["work"])
                rec["client_cpu_per_unit_s"] = sum(rec["client_cpu_s"]) / sum(rec["work"])

    # ---- machine limits

    def machine_limits(self):
        """What the machine allows, measured once before the phases (no daemon running): SHA-256
        of one core, sequential write with fsync where the stores live, a unix socket round trip,
        memory copy bandwidth. Printed beside the table; the large add and download rows show
        the share ward reaches of min(SHA-256, disk write)."""
        l = self.profile["limits"]
        tests = {
            "sha256_hashlib": lambda: sha256_hashlib_mb_s(l["sha_mb"], l["reps"]),
            "sha256_openssl": sha256_openssl_mb_s,
            "disk_write": lambda: disk_write_mb_s(self.tmp, l["disk_mb"], l["reps"]),
            "socket_rtt": lambda: self.socket_round_trip_us(l["pingpong"], l["reps"]),
            "memcpy": lambda: memcpy_gb_s(l["mem_mb"], l["reps"]),
        }
        for key, fn in tests.items():
            log("limits: %s" % key)
            try:
                self.limits[key] = {"value": fn()}
            except (BenchError, OSError, ValueError, subprocess.SubprocessError) as e:
                self.limits[key] = {"error": str(e)}
                log("limits: %s failed: %s" % (key, e))

    def socket_round_trip_us(self, count, reps):
        """µs per 1-byte round trip over a unix socket pair (ward-wireload pingpong: native, so
        that the figure is the kernel's and the CPUs', not Python's)."""
        if not self.wireload or not Path(self.wireload).is_file():
            raise BenchError("ward-wireload is not built (cargo build --release -p ward-bench)")
        argv = [str(self.wireload), "pingpong", "--count", str(count), "--reps", str(reps)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=self.timeout)
        if proc.returncode != 0:
            raise BenchError("%s exited with status %d: %s"
                             % (" ".join(argv), proc.returncode, tail(proc.stderr, 10)))
        return json.loads(proc.stdout)["round_trip_us_median"]

    # ---- phases

    def phase_protocol(self):
        """Fresh daemons and stores: ping, idle memory, connect, populate, query."""
        p = self.profile
        self.start_phase("protocol")
        for side in self.sides:
            res = self.once("ping", side, lambda side=side: self.wirebench_json(side, ["ping"]))
            if res:
                r = res["result"]
                self.side_info[side].update({"daemon_nix_version": r.get("daemon_nix_version"),
                                             "daemon_proto": r.get("daemon_proto"),
                                             "negotiated_proto": r.get("negotiated_proto"),
                                             "trusted": r.get("trusted")})
        # idle first: "at rest" is then a freshly started daemon with an empty store
        idle = p["idle"]
        for side in self.sides:
            self.once("idle", side, lambda side=side: self.wirebench_json(side, [
                "idle", "-c", ",".join(map(str, idle_counts(idle, side))),
                "--settle", str(idle["settle"]), "--daemon-pid", str(self.daemons[side].pid)]))
        c = p["connect"]
        self.rounds("connect", c["rounds"],
                    lambda side, i: ["connect", "-n", str(c["count"]), "-r", "1", "--set-options"],
                    lambda side, doc: {"conn_per_s": doc["result"]["per_rep_connections_per_s"]},
                    work_of=lambda doc: doc["result"]["params"]["count"])
        pop_files = {}

        def populate(side):
            out = self.tmp / ("%s-paths.txt" % side)
            doc = self.wirebench_json(
                side, ["populate", "-p", str(p["populate"]), "--out", str(out)])
            lines = [l for l in out.read_text().splitlines() if l.strip()]
            if len(lines) != p["populate"]:
                raise BenchError("populate wrote %d paths, expected %d"
                                 % (len(lines), p["populate"]))
            hot = self.tmp / ("%s-hot.txt" % side)
            hot.write_text("\n".join(lines[:p["hot_paths"]]) + "\n")
            pop_files[side] = {"distinct": out, "hot": hot}
            return doc

        for side in self.sides:
            self.once("populate", side, lambda side=side: populate(side))
        q = p["query"]
        # one wirebench run per (op, connections), so the daemon's CPU time is attributable
        for kind in ("hot", "distinct"):
            for op in QUERY_OPS:
                for k in q["concurrency"]:
                    def query_argv(side, _round, kind=kind, op=op, k=k):
                        if side not in pop_files:
                            raise BenchError("skipped: populate failed on this side")
                        return ["query", "-n", str(q["ops_at"].get(k, q["ops"])), "-r", "1",
                                "-k", str(k),
                                "--ops-kind", op, "--paths-file", str(pop_files[side][kind])]

                    self.rounds(
                        query_key(kind, op, k), q["rounds"], query_argv,
                        lambda side, doc: {"ops_per_s": [
                            v for r in doc["result"]["results"].values()
                            for v in r["per_rep_ops_per_s"]]},
                        work_of=lambda doc: sum(
                            doc["result"]["params"]["ops_per_worker"] * k
                            for k in doc["result"]["params"]["concurrency"]))
        # The same QueryPathInfo workload from the native client, whose own cost per op is
        # small, so the daemon rather than the client sets the rate.
        nq = p["native_query"]

        def native_rounds(kind, k, split=False, before=None, runner=self.wireload_json):
            def native_argv(side, _round):
                if side not in pop_files:
                    raise BenchError("skipped: populate failed on this side")
                return ["query", "--op", "qpi", "--ops", str(nq["ops_at"].get(k, nq["ops"])),
                        "--reps", "1",
                        "--concurrency", str(k), "--paths-file", str(pop_files[side][kind])]

            self.rounds(native_query_key(kind, k, split), nq["rounds"], native_argv,
                        lambda side, doc: {"ops_per_s": doc["per_rep_ops_per_s"]},
                        work_of=lambda doc: doc["ops_per_worker"] * doc["concurrency"],
                        before=before, runner=runner)

        for kind in ("hot", "distinct"):
            for k in nq["concurrency"]:
                native_rounds(kind, k)
        # Again with the daemon alone on one CPU and the clients on the others: the clients no
        # longer take CPU time from the daemon, so the rate is the daemon's capacity on one CPU.
        split = split_cpus()
        if split:
            daemon_cpus, client_cpus = split
            try:
                for kind in ("hot", "distinct"):
                    for k in nq["split_concurrency"]:
                        native_rounds(
                            kind, k, split=True,
                            before=lambda side: set_tree_affinity(self.daemons[side].pid,
                                                                  daemon_cpus),
                            runner=lambda side, argv: self.wireload_json(side, argv,
                                                                         cpus=client_cpus))
            finally:
                for d in self.daemons.values():
                    if d.running():
                        set_tree_affinity(d.pid, daemon_cpus | client_cpus)
        self.valid_paths(pop_files)
        self.stop_phase("protocol")
        self.phase_bigstore()

    def valid_paths(self, pop_files):
        """QueryValidPaths of one long list on one connection (native client): the populated
        paths, which are valid, and made-up ones, which are not, as `nix copy` asks a daemon
        which of a closure's paths it lacks."""
        v = self.profile["valid_paths"]
        files = {}
        missing = made_up_paths(max(0, v["paths"] - self.profile["populate"]),
                                "bench-not-there", seed=31)
        for side, f in pop_files.items():
            valid = [l for l in f["distinct"].read_text().splitlines() if l.strip()]
            path = self.tmp / ("%s-valid-paths.txt" % side)
            path.write_text("\n".join(sorted(valid + missing)) + "\n")
            files[side] = (path, len(valid))

        def argv(side, _round):
            if side not in files:
                raise BenchError("skipped: populate failed on this side")
            path, valid = files[side]
            return ["valid-paths", "--paths-file", str(path), "--expect-valid", str(valid),
                    "--reps", str(v["reps"])]

        self.rounds("valid_paths", v["rounds"], argv,
                    lambda side, doc: {"paths_per_s": doc["per_rep_paths_per_s"],
                                       "ms": doc["per_rep_ms"]},
                    work_of=lambda doc: doc["n_paths"] * doc["reps"],
                    runner=self.wireload_json)

    # ---- the store of a million paths (run after the protocol phase, its own daemons)

    def phase_bigstore(self):
        """QueryPathInfo latency (native client, 1 connection) on a store of `small` valid
        paths, then on one of `large`. Filling a million paths through the wire would take
        hours, so the rows are written straight into each daemon's SQLite database (Nix's
        schema, which both use) while it is stopped: each daemon is started once to create its
        store and schema, stopped, filled, and restarted. QueryPathInfo reads only the database
        (Nix 2.8's LocalStore and ward's frontend alike), so the paths need no files. Before every
        round the daemon is restarted (untimed), so that neither daemon answers from a cache
        filled by an earlier round: at 1,000 paths every round asks for all of them."""
        b = self.profile["bigstore"]
        t0 = time.monotonic()
        paths = made_up_paths(b["large"], "bench-big", seed=8)
        log("bigstore: %d made-up paths in %.1f s" % (len(paths), time.monotonic() - t0))
        small, rest = paths[:b["small"]], paths[b["small"]:]
        for side in self.sides:
            self.once("bigstore_setup", side,
                      lambda side=side: self.bigstore_fill(side, small, fresh=True),
                      needs_daemon=False)
        samples = {}

        def sample_file(kind, i):
            """The paths of one round, the same for both sides: all of the small store's
            (shuffled), or ops paths drawn afresh from the large store's."""
            if (kind, i) not in samples:
                rng = random.Random("%s %d" % (kind, i))
                chosen = (rng.sample(small, len(small)) if kind == "small"
                          else rng.sample(paths, b["ops"]))
                path = self.tmp / ("bigstore-%s-%d.txt" % (kind, i))
                path.write_text("\n".join(chosen) + "\n")
                samples[(kind, i)] = (path, len(chosen))
            return samples[(kind, i)]

        def measure(kind):
            def argv(_side, i):
                path, count = sample_file(kind, i)
                return ["query", "--op", "qpi", "--ops", str(min(count, b["ops"])), "--reps",
                        "1", "--concurrency", "1", "--paths-file", str(path)]

            self.rounds("bigstore_%s" % kind, b["rounds"], argv,
                        lambda side, doc: {"p50_us": [doc["latency_us"]["p50"]],
                                           "ops_per_s": doc["per_rep_ops_per_s"]},
                        work_of=lambda doc: doc["ops_per_worker"] * doc["concurrency"],
                        before=lambda side: self.restart_daemon(side, "bigstore", settle=0.5),
                        runner=self.wireload_json)

        try:
            measure("small")
            for side in self.sides:
                if side in self.daemons:
                    self.once("bigstore_grow", side,
                              lambda side=side: self.bigstore_fill(side, rest, fresh=False))
            measure("large")
        finally:
            self.stop_phase("bigstore")
            for side in self.sides:
                remove_tree(self.tmp / ("%s-bigstore-root" % side))

    def bigstore_fill(self, side, paths, fresh):
        """Registers paths in the side's database with its daemon stopped, then starts it again.
        fresh: first start a daemon on a new store, so that it creates the database."""
        if fresh:
            self.restart_daemon(side, "bigstore")
        d = self.daemons.pop(side)
        d.stop()
        db = d.store_root / "nix" / "var" / "nix" / "db" / "db.sqlite"
        if not db.is_file():
            raise BenchError("%s created no database at %s" % (SIDE_TITLES[side], db))
        t0 = time.monotonic()
        total = register_paths(db, paths)
        seconds = time.monotonic() - t0
        log("bigstore: %d rows written into %s's database in %.1f s (%d valid paths now)"
            % (len(paths), SIDE_TITLES[side], seconds, total))
        self.restart_daemon(side, "bigstore")
        return {"registered": len(paths), "valid_paths": total, "seconds": seconds}

    def restart_daemon(self, side, phase, settle=0.0):
        """Stops the side's daemon (if any) and starts a fresh one on the same store: its caches
        are empty, its store and database are what the last one left. settle: seconds to wait
        once it accepts connections, so that what it does as it starts is not measured."""
        old = self.daemons.pop(side, None)
        if old is not None:
            old.stop()
        d = self.daemon_for(side, phase)
        try:
            d.start()
        except BenchError:
            d.stop()
            raise
        self.daemons[side] = d
        time.sleep(settle)

    def phase_data(self):
        """Fresh daemons and stores: AddToStoreNar of growing sizes, peak RSS, NarFromPath (with
        its own peak RSS), then many small paths: AddToStoreNar, AddMultipleToStore, nix copy."""
        p = self.profile
        try:
            client = load_wirebench(self.wirebench)
        except BenchError as e:
            client = None
            client_error = str(e)
        self.start_phase("data")
        sampler = PeakSampler(list(self.daemons.values()))
        sampler.start()
        try:
            for size_mb, count in p["add"]:
                self.rounds(
                    "add_%d" % size_mb, count,
                    # one warm-up add per side in the first round; --no-cleanup*: ward has no GC yet
                    lambda side, i, size_mb=size_mb: [
                        "add", "-s", str(size_mb), "-r", "1", "--warmup", "1" if i == 0 else "0",
                        "--no-cleanup", "--no-cleanup-each"],
                    lambda side, doc: {"MB_per_s": doc["result"]["per_rep_MB_per_s"]},
                    # MiB received, the warm-up add included
                    work_of=lambda doc: doc["result"]["params"]["nar_bytes"] / MIB * (
                        doc["result"]["params"]["reps"] + doc["result"]["params"]["warmup"]),
                    # the other side's dirty pages must not be written back during this run
                    before=lambda side: os.sync())
        finally:
            sampler.stop()
        for side in self.sides:
            d = self.daemons.get(side)
            if d is None or not d.running():
                continue
            self.peak_rss[side] = {
                "after_add": tree_peaks(d.pid),
                "sampled_during_add": [
                    {"pid": pid, "name": v["name"], "hwm_kb": v["hwm_kb"]}
                    for pid, v in sorted(sampler.peaks[side].items())],
            }
        n = p["narfrom"]
        narfrom_paths = {}

        def add_narfrom_path(side):
            doc = self.wirebench_json(side, [
                "add", "-s", str(n["size_mb"]), "-r", "1", "--warmup", "0", "--name",
                "wirebench-narfrom", "--no-cleanup", "--no-cleanup-each"])
            narfrom_paths[side] = doc["result"]["paths"][0]
            return doc

        # the path to download is added beforehand, outside the timed and CPU-counted runs
        for side in self.sides:
            self.once("narfrom_setup", side, lambda side=side: add_narfrom_path(side))

        def narfrom_argv(side, _round):
            if side not in narfrom_paths:
                raise BenchError("skipped: adding the path to download failed on this side")
            return ["narfrom", "--path", narfrom_paths[side], "-r", str(n["reps"]),
                    "--no-cleanup"]

        def native_narfrom_argv(side, _round):
            if side not in narfrom_paths:
                raise BenchError("skipped: adding the path to download failed on this side")
            return ["narfrom", "--path", narfrom_paths[side], "--reps", str(n["reps"])]

        # peaks from here on are the downloads' own (the adds' are in the rows above)
        self.peak_rss_reset = {side: reset_peak_rss(d.pid) for side, d in self.daemons.items()
                               if d.running()}
        sampler = PeakSampler(list(self.daemons.values()), interval=0.1)
        sampler.start()
        try:
            self.rounds("narfrom", n["rounds"], narfrom_argv,
                        lambda side, doc: {"MB_per_s": [doc["result"]["MB_per_s"]["median"]]},
                        work_of=lambda doc: doc["result"]["params"]["nar_bytes"] / MIB
                        * doc["result"]["params"]["reps"])
            self.rounds("narfrom_native", n["rounds"], native_narfrom_argv,
                        lambda side, doc: {"MB_per_s": [doc["MB_per_s_median"]]},
                        work_of=lambda doc: doc["nar_bytes"] / MIB * doc["reps"],
                        runner=self.wireload_json)
        finally:
            sampler.stop()
        for side, peaks in sampler.peaks.items():
            d = self.daemons.get(side)
            self.peak_rss.setdefault(side, {})["narfrom"] = {
                "vmhwm_reset_before": self.peak_rss_reset.get(side),
                "sampled": [{"pid": pid, "name": v["name"], "hwm_kb": v["hwm_kb"]}
                            for pid, v in sorted(peaks.items())],
                "after": tree_peaks(d.pid) if d is not None and d.running() else []}
        if client is None:
            self.set_not_run(("add_small", "add_multiple", "nix_copy"), client_error)
        else:
            self.small_adds(client)
        self.stop_phase("data")

    def small_adds(self, client):
        """Many small paths on one connection: AddToStoreNar one after another (native client),
        one AddMultipleToStore of a batch, and `nix copy` of a closure with Nix's own client.
        Every round adds paths of its own, made before the daemons' clocks start."""
        s, m, cp = (self.profile[k] for k in ("add_small", "add_multiple", "nix_copy"))
        try:
            t0 = time.monotonic()
            sets = {}
            for key, spec, count in (("add_small", s, s["count"]),
                                     ("add_multiple", m, m["paths"])):
                for side in self.sides:
                    for i in range(spec["rounds"]):
                        f = self.tmp / ("%s-%s-%d.entries" % (key, side, i))
                        sets[(key, side, i)] = (f, write_entries(
                            f, client, "bench-%s-%s-%d" % (key.replace("_", "-"), side, i),
                            spec["size"], count))
            copy = self.copy_source(client, cp)
            log("data: %d entries files and a source store of %d closures made in %.1f s"
                % (len(sets), len(copy["closures"]), time.monotonic() - t0))
        except (BenchError, OSError) as e:
            self.set_not_run(("add_small", "add_multiple", "nix_copy"),
                             "small-add set-up: %s" % e)
            log("small adds not run: %s" % e)
            return

        def all_valid(side, paths, what):
            valid = self.wire(client, side, "QueryValidPaths", lambda c: c.query_valid_paths(paths))
            if len(valid) != len(paths):
                raise BenchError("%s returned, but then %d of its %d paths are valid"
                                 % (what, len(valid), len(paths)))

        def entries_of(key):
            return lambda side, i: sets[(key, side, i)]

        self.rounds("add_small", s["rounds"], entries_of("add_small"),
                    lambda side, doc: {"adds_per_s": [doc["adds_per_s"]]},
                    work_of=lambda doc: doc["adds"],
                    before=lambda side: os.sync(),
                    runner=lambda side, spec: dict(
                        self.wireload_json(side, ["add-nar", "--entries", str(spec[0])]),
                        paths=spec[1]),
                    check=lambda side, doc: all_valid(side, doc["paths"], "add-nar"))
        self.rounds("add_multiple", m["rounds"], entries_of("add_multiple"),
                    lambda side, doc: {"paths_per_s": [doc["paths_per_s"]]},
                    work_of=lambda doc: doc["paths"],
                    before=lambda side: os.sync(),
                    runner=lambda side, spec: self.add_multiple(client, side, *spec),
                    check=lambda side, doc: all_valid(side, doc["added"], "AddMultipleToStore"))
        self.rounds("nix_copy", cp["rounds"],
                    lambda side, i: copy["closures"][2 * i + self.sides.index(side)],
                    lambda side, doc: {"seconds": [doc["wall_s"]]},
                    work_of=lambda doc: doc["paths"],
                    before=lambda side: os.sync(),
                    runner=lambda side, closure: self.nix_copy(side, copy["store"], closure),
                    check=lambda side, doc: all_valid(side, doc["closure"], "nix copy"))

    def add_multiple(self, client, side, entries, paths):
        """One AddMultipleToStore (op 44, protocol >= 1.32) of an entries file, as `nix copy`
        sends it: repair 0, dontCheckSigs 1, then the file as a framed stream (32 KiB frames, as
        Nix's FramedSink), the daemon's log read meanwhile. Timed from the request to the
        daemon's final STDERR_LAST."""
        payload = entries.read_bytes()
        holder = {}

        def send(c):
            c.w_u64(client.OP["AddMultipleToStore"])
            c.w_u64(0)  # repair
            c.w_u64(1)  # dontCheckSigs (the client is root, so trusted)
            t0 = time.perf_counter()
            c._send_framed([payload], 32768)  # flushes the request first
            holder["seconds"] = time.perf_counter() - t0

        self.wire(client, side, "AddMultipleToStore of %d paths" % len(paths), send)
        return {"seconds": holder["seconds"], "paths": len(paths),
                "paths_per_s": len(paths) / holder["seconds"], "bytes": len(payload),
                "added": paths}

    def copy_source(self, client, spec):
        """The local store `nix copy` copies from: one closure of spec["paths"] paths per side
        and round, imported (untimed) with `nix-store --import` into a chroot store of its own."""
        count = 2 * spec["rounds"]
        export = self.tmp / "copy-source.export"
        closures = write_copy_export(export, client, count, spec["paths"], spec["size"])
        store = self.tmp / "copy-source-root"
        res = self.nix_command(["nix-store", "--store", "local?root=%s" % store,
                                "--option", "require-sigs", "false", "--import"],
                               stdin_path=export, phase="data",
                               what="nix-store --import into the copy source (%d paths)"
                               % (count * spec["paths"]))
        imported = [l for l in res["stdout"].splitlines() if l.strip()]
        if len(imported) != count * spec["paths"]:
            raise BenchError("nix-store --import printed %d paths, expected %d"
                             % (len(imported), count * spec["paths"]))
        return {"store": store, "closures": closures}

    def nix_copy(self, side, store, closure):
        """`nix copy` of one closure (its top path names it all) from the local source store to
        the daemon, with Nix 2.8's client: QueryValidPaths, then AddMultipleToStore of what the
        daemon lacks. --no-check-sigs: the made-up input-addressed paths are unsigned."""
        d = self.daemons[side]
        res = self.nix_command(
            ["nix", "--extra-experimental-features", "nix-command", "copy", "--no-check-sigs",
             "--from", "local?root=%s" % store, "--to", "unix://%s" % d.socket_path,
             closure[0]],
            side=side, phase="data",
            what="nix copy of a %d-path closure to %s" % (len(closure), SIDE_TITLES[side]))
        return {"wall_s": res["wall_s"], "client_cpu_s": res["client_cpu_s"],
                "paths": len(closure), "closure": closure}


    def phase_build(self):
        """Fresh daemons and stores, both sandboxing as build users: a trivial build's round trip
        and its request-to-exec latency, one build at a time, then a batch of builds at once."""
        p = self.profile["build"]
        why = build_phase_unavailable()
        if why:
            for side in self.sides:
                for key in ("build_single", "build_batch"):
                    self.workloads.setdefault(key, {})[side] = {"error": "not run: " + why}
            log("build phase skipped: %s" % why)
            return
        try:
            self.build_stamp = compile_build_stamp(self.tmp)
            client = load_wirebench(self.wirebench)
        except BenchError as e:
            for side in self.sides:
                for key in ("build_single", "build_batch"):
                    self.workloads.setdefault(key, {})[side] = {"error": str(e)}
            log("build phase failed: %s" % e)
            return
        self.start_phase("build")
        for side in self.sides:
            self.once("build_sandbox", side,
                      lambda side=side: self.sandbox_probe(client, side))
            if "result" in self.workloads["build_sandbox"][side]:
                self.side_info[side]["build_sandbox"] = \
                    self.workloads["build_sandbox"][side]["result"]
        self.rounds("build_single", p["rounds"],
                    lambda side, i: {"builds": p["single"]},
                    lambda side, doc: {"roundtrip_ms": doc["roundtrip_ms"],
                                       "exec_ms": doc["exec_ms"]},
                    work_of=lambda doc: doc["builds"],
                    runner=lambda side, spec: self.builds_one_by_one(client, side, spec["builds"]))
        self.rounds("build_batch", p["batch_rounds"],
                    lambda side, i: {"builds": p["batch"]},
                    lambda side, doc: {"wall_ms": [doc["wall_ms"]],
                                       "last_exec_ms": [doc["last_exec_ms"]]},
                    work_of=lambda doc: doc["builds"],
                    runner=lambda side, spec: self.builds_at_once(client, side, spec["builds"]))
        self.stop_phase("build")

    def build_conn(self, client, side):
        """A connection as nix-build opens one: handshake, then SetOptions with max-jobs."""
        try:
            c = client.Conn(str(self.daemons[side].socket_path), (1 << 8) | 34,
                            timeout=self.timeout)
            c.handshake()
            c.set_options(max_build_jobs=BUILD_MAX_JOBS)
            return c
        except (OSError, EOFError, client.ProtocolError, client.DaemonError) as e:
            raise BenchError("connecting to %s: %s" % (SIDE_TITLES[side], e)) from e

    def add_derivation(self, client, conn, side, builder, args, nonce):
        drv = client.SimpleDerivation(name="bench-build", system=BUILD_SYSTEM, builder=builder,
                                      args=args, env={"nonce": nonce})
        got = conn.add_text_to_store(drv.name + ".drv", drv.text, drv.input_srcs)
        if got != drv.drv_path:
            raise BenchError("%s stored the derivation at %s, expected %s"
                             % (SIDE_TITLES[side], got, drv.drv_path))
        return drv

    def build(self, client, conn, side, drvs):
        try:
            conn.build_paths([d.drv_path + "!out" for d in drvs])
        except (OSError, EOFError, client.ProtocolError, client.DaemonError) as e:
            raise BenchError("BuildPaths on %s failed: %s; %s"
                             % (SIDE_TITLES[side], e, describe_log(self.daemons[side].log_path)))

    def output_text(self, side, drv):
        real = self.daemons[side].store_root / drv.outputs["out"].lstrip("/")
        try:
            return real.read_text()
        except OSError as e:
            raise BenchError("reading the output %s: %s" % (real, e)) from e

    def exec_stamp(self, side, drv):
        text = self.output_text(side, drv).strip()
        if not text.isdigit():
            raise BenchError("the output %s holds %r, not a time stamp" % (drv.outputs["out"], text))
        return int(text)

    def sandbox_probe(self, client, side):
        """One build reporting its own uid map, capabilities, seccomp and network devices."""
        c = self.build_conn(client, side)
        try:
            drv = self.add_derivation(client, c, side, "/bin/sh", ["-c", SANDBOX_PROBE_SCRIPT],
                                      client.unique_tag())
            self.build(client, c, side, [drv])
        finally:
            c.close()
        return dict(line.split(": ", 1) for line in self.output_text(side, drv).splitlines()
                    if ": " in line)

    def builds_one_by_one(self, client, side, count):
        """count trivial builds, each on its own connection as nix-build makes them."""
        roundtrip, to_exec = [], []
        for _ in range(count):
            c = self.build_conn(client, side)
            try:
                drv = self.add_derivation(client, c, side, "/bin/stamp", [], client.unique_tag())
                requested_ns = time.time_ns()
                t0 = time.perf_counter()
                self.build(client, c, side, [drv])
                roundtrip.append((time.perf_counter() - t0) * 1e3)
            finally:
                c.close()
            to_exec.append((self.exec_stamp(side, drv) - requested_ns) / 1e6)
        return {"builds": count, "roundtrip_ms": roundtrip, "exec_ms": to_exec}

    def builds_at_once(self, client, side, count):
        """count independent trivial builds in one BuildPaths, max-jobs of them at a time."""
        c = self.build_conn(client, side)
        try:
            drvs = [self.add_derivation(client, c, side, "/bin/stamp", [], client.unique_tag())
                    for _ in range(count)]
            requested_ns = time.time_ns()
            t0 = time.perf_counter()
            self.build(client, c, side, drvs)
            wall_ms = (time.perf_counter() - t0) * 1e3
        finally:
            c.close()
        stamps = [(self.exec_stamp(side, d) - requested_ns) / 1e6 for d in drvs]
        return {"builds": count, "wall_ms": wall_ms, "first_exec_ms": min(stamps),
                "last_exec_ms": max(stamps)}

    # ---- the maint phase

    def phase_maint(self):
        """Fresh daemons and stores: GC of a store of N paths, half of them dead, then
        substitution of many small paths and of one large path from a local HTTP binary cache."""
        m = self.profile["maint"]
        keys = ("maint_gc_setup", "maint_gc", "maint_sub_small", "maint_sub_large")
        try:
            client = load_wirebench(self.wirebench)
            t0 = time.monotonic()
            gc_set = write_gc_export(self.tmp / "maint-gc.export", client, m["gc_paths"],
                                     m["gc_group"])
            log("maint: export stream of %d paths (%.1f MiB) written in %.1f s"
                % (gc_set["count"], gc_set["bytes"] / MIB, time.monotonic() - t0))
            t0 = time.monotonic()
            cache = build_binary_cache(self.tmp / "maint-cache", client, m["sub_small"],
                                       m["sub_large_mb"])
            log("maint: binary cache of %d small paths and %s written in %.1f s"
                % (len(cache["small"]), fmt_size(m["sub_large_mb"]), time.monotonic() - t0))
        except (BenchError, OSError) as e:
            self.set_not_run(keys, "maint phase set-up: %s" % e)
            log("maint phase failed: %s" % e)
            return
        self.start_phase("maint")
        try:
            self.maint_gc(client, gc_set)
            try:
                url = self.start_http_cache(cache["dir"])
            except BenchError as e:
                self.set_not_run(keys[2:], str(e))
                log("maint: %s" % e)
            else:
                self.maint_substitute(client, cache, url)
        finally:
            self.stop_http_cache()
        for side in self.sides:
            d = self.daemons.get(side)
            if d is not None and d.running():
                self.peak_rss.setdefault(side, {}).setdefault("maint", {})["after_maint"] = \
                    tree_peaks(d.pid)
        self.stop_phase("maint")

    def set_not_run(self, keys, why):
        """The first key gets the error (listed under the table), the others 'not run'."""
        for side in self.sides:
            for i, key in enumerate(keys):
                self.workloads.setdefault(key, {})[side] = {
                    "error": why if i == 0 else "not run: " + first_line(why)}

    def maint_conn(self, client, side):
        """A wire connection as nix-store opens one: handshake, then SetOptions."""
        try:
            c = client.Conn(str(self.daemons[side].socket_path), (1 << 8) | 34,
                            timeout=self.timeout)
            c.handshake()
            c.set_options()
            return c
        except (OSError, EOFError, client.ProtocolError, client.DaemonError) as e:
            raise BenchError("connecting to %s: %s" % (SIDE_TITLES[side], e)) from e

    def wire(self, client, side, what, fn):
        """fn(conn) on a fresh connection; wire and daemon errors become BenchError."""
        c = self.maint_conn(client, side)
        try:
            return fn(c)
        except (OSError, EOFError, client.ProtocolError, client.DaemonError) as e:
            raise BenchError("%s on %s failed: %s; %s"
                             % (what, SIDE_TITLES[side], e,
                                describe_problems(self.daemons[side].log_path)))
        finally:
            c.close()

    def store_client(self, side, argv, stdin_path=None, what=None):
        """A Nix 2.8 client command (nix-store OP ...) against one daemon: '--store
        unix://SOCKET' after the operation, the daemons' environment. Returns its stdout, stderr,
        wall seconds and CPU seconds."""
        d = self.daemons[side]
        argv = argv[:2] + ["--store", "unix://%s" % d.socket_path] + argv[2:]
        return self.nix_command(argv, side=side, stdin_path=stdin_path, what=what)

    def nix_command(self, argv, side=None, stdin_path=None, what=None, phase="maint"):
        """A Nix 2.8 client command with the daemons' environment (that phase's nix.conf); side:
        the daemon it talks to, whose log a failure then shows. Returns its stdout, stderr, wall
        seconds and CPU seconds."""
        d = self.daemons[side] if side else None
        what = what or " ".join(argv)
        env = self.daemon_env(phase)
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        t0 = time.monotonic()
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True,
                                    cwd=self.tmp)
        except OSError as e:
            if stdin_path:
                stdin.close()
            raise BenchError("cannot run %s: %s" % (argv[0], e)) from e
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise BenchError("%s timed out after %d s; stderr:\n%s%s"
                             % (what, self.timeout, clip_lines(tail(err, 20)),
                                "" if d is None else "\n%s: %s" % (
                                    SIDE_TITLES[side], describe_problems(d.log_path))))
        except BaseException:
            kill_group(proc)  # Ctrl-C or SIGTERM
            raise
        finally:
            if stdin_path:
                stdin.close()
        wall = time.monotonic() - t0
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise BenchError("%s exited with status %d; stderr:\n%s%s"
                             % (what, proc.returncode, clip_lines(tail(err, 20)),
                                "" if d is None else "\n%s %s; %s" % (
                                    SIDE_TITLES[side], "is still running" if d.running() else
                                    "has exited (status %s)" % d.proc.returncode,
                                    describe_problems(d.log_path))))
        return {"stdout": out, "stderr": err, "wall_s": wall,
                "client_cpu_s": ((usage_after.ru_utime - usage_before.ru_utime)
                                 + (usage_after.ru_stime - usage_before.ru_stime))}

    def maint_gc(self, client, gc):
        """Import the same N paths into both stores (untimed), root half of the groups, check
        that each daemon sees N/2 dead paths, then time one CollectGarbage(delete dead) per
        side: nix-daemon first, then ward (the GC is destructive, so one run per side)."""
        n = gc["count"]
        dead_set = set(gc["dead"])

        def setup(side):
            d = self.daemons[side]
            res = self.store_client(side, ["nix-store", "--import"], stdin_path=gc["file"],
                                    what="nix-store --import < %s (%d paths)"
                                    % (gc["file"].name, n))
            imported = [l for l in res["stdout"].splitlines() if l.strip()]
            if len(imported) != n:
                raise BenchError("nix-store --import printed %d paths, expected %d; stderr:\n%s"
                                 % (len(imported), n, clip_lines(tail(res["stderr"], 10))))
            roots = d.store_root / "nix" / "var" / "nix" / "gcroots" / "bench"
            roots.mkdir(parents=True, exist_ok=True)
            for i, top in enumerate(gc["live_tops"]):
                os.symlink(top, roots / str(i))
            dead, _freed = self.wire(client, side, "CollectGarbage(return dead)",
                                     lambda c: c.collect_garbage(1))
            reported = set(dead)
            if reported != dead_set:
                raise BenchError(
                    "before the timed GC, CollectGarbage(return dead) reports %d dead paths, "
                    "expected %d (%d of the expected dead paths missing, %d others reported%s); "
                    "the GC is not timed"
                    % (len(reported), len(dead_set), len(dead_set - reported),
                       len(reported - dead_set),
                       (", e.g. %s" % sorted(reported - dead_set)[0])
                       if reported - dead_set else ""))
            return {"result": {"imported": n, "import_s": res["wall_s"],
                               "imports_per_s": n / res["wall_s"] if res["wall_s"] else None,
                               "dead_reported": len(reported), "roots": len(gc["live_tops"])}}

        for side in self.sides:
            self.once("maint_gc_setup", side, lambda side=side: setup(side))

        def collect(side):
            setup_rec = self.workloads["maint_gc_setup"].get(side, {})
            if "result" not in setup_rec:
                raise BenchError("not run: the set-up (maint_gc_setup) failed on this side")
            d = self.daemons[side]
            os.sync()  # the import's dirty pages must not be written back during the GC
            cpu_before, pids_before = tree_cpu_seconds(d.pid)
            holder = {}

            def timed(c):
                t0 = time.perf_counter()
                holder["reply"] = c.collect_garbage(2)
                holder["wall_s"] = time.perf_counter() - t0

            self.wire(client, side, "CollectGarbage(delete dead)", timed)
            settle_tree(d.pid, pids_before)
            cpu_after, _ = tree_cpu_seconds(d.pid)
            deleted, freed = holder["reply"]
            result = {"seconds": holder["wall_s"], "deleted": len(deleted), "bytes_freed": freed,
                      "daemon_cpu_s": cpu_after - cpu_before}
            if set(deleted) != dead_set:
                raise BenchError("CollectGarbage(delete dead) took %.2f s but deleted %d paths, "
                                 "expected the %d dead ones (%d of them not deleted, %d others)"
                                 % (result["seconds"], len(deleted), len(dead_set),
                                    len(dead_set - set(deleted)), len(set(deleted) - dead_set)))
            still = self.wire(client, side, "QueryValidPaths",
                              lambda c: c.query_valid_paths(gc["live"]))
            if len(still) != len(gc["live"]):
                raise BenchError("after the GC (%.2f s), %d of the %d live paths are valid"
                                 % (result["seconds"], len(still), len(gc["live"])))
            return {"result": result}

        sampler = PeakSampler(list(self.daemons.values()), interval=0.1)
        sampler.start()
        try:
            for side in self.sides:
                self.once("maint_gc", side, lambda side=side: collect(side))
        finally:
            sampler.stop()
        self.record_maint_peaks(sampler, "sampled_during_gc")

    def record_maint_peaks(self, sampler, key):
        for side, peaks in sampler.peaks.items():
            self.peak_rss.setdefault(side, {}).setdefault("maint", {})[key] = [
                {"pid": pid, "name": v["name"], "hwm_kb": v["hwm_kb"]}
                for pid, v in sorted(peaks.items())]

    def maint_substitute(self, client, cache, url):
        """nix-store --realise of paths only the HTTP cache has, in rounds alternating between
        the sides; the paths are deleted again (untimed) before every round."""
        m = self.profile["maint"]
        options = ["--option", "substituters", url, "--option", "require-sigs", "false",
                   # every round asks the cache for the narinfos again
                   "--option", "narinfo-cache-positive-ttl", "0",
                   "--option", "narinfo-cache-negative-ttl", "0"]

        def realise(side, paths):
            overflows = listen_overflows()
            res = self.store_client(side, ["nix-store", "--realise"] + options + paths,
                                    what="nix-store --realise --option substituters %s (%d path%s)"
                                    % (url, len(paths), "" if len(paths) == 1 else "s"))
            valid = self.wire(client, side, "QueryValidPaths",
                              lambda c: c.query_valid_paths(paths))
            if len(valid) != len(paths):
                raise BenchError("nix-store --realise succeeded, but then %d of the %d paths are "
                                 "valid; its stderr ends with:\n%s"
                                 % (len(valid), len(paths), clip_lines(tail(res["stderr"], 10))))
            doc = {"wall_s": res["wall_s"], "client_cpu_s": res["client_cpu_s"],
                   "paths": len(paths), "nar_bytes": sum(cache["nar_size"][p] for p in paths)}
            if overflows is not None and listen_overflows() is not None:
                # connections the cache's listen queue dropped (TcpExt ListenOverflows)
                doc["listen_overflows"] = listen_overflows() - overflows
                if doc["listen_overflows"]:
                    log("warning: the binary cache's listen queue overflowed %d times during "
                        "this run on %s (the time includes SYN retransmissions)"
                        % (doc["listen_overflows"], SIDE_TITLES[side]))
            return doc

        def forget(side, paths):
            def delete(c):
                valid = c.query_valid_paths(paths)
                if not valid:
                    return
                deleted, _freed = c.collect_garbage(3, valid)
                if len(deleted) != len(valid):
                    raise BenchError("CollectGarbage(delete specific) of %d paths deleted %d"
                                     % (len(valid), len(deleted)))
            self.wire(client, side, "deleting the substituted paths", delete)
            os.sync()

        small, large = cache["small"], [cache["large"]]
        self.rounds("maint_sub_small", m["sub_rounds"], lambda side, i: small,
                    lambda side, doc: {"seconds": [doc["wall_s"]]},
                    work_of=lambda doc: doc["paths"],
                    before=lambda side: forget(side, small), runner=realise)
        sampler = PeakSampler(list(self.daemons.values()), interval=0.1)
        sampler.start()
        try:
            self.rounds("maint_sub_large", m["sub_rounds"], lambda side, i: large,
                        lambda side, doc: {"seconds": [doc["wall_s"]]},
                        work_of=lambda doc: doc["nar_bytes"] / MIB,
                        before=lambda side: forget(side, large), runner=realise)
        finally:
            sampler.stop()
        self.record_maint_peaks(sampler, "sampled_during_substitute_large")

    def start_http_cache(self, directory):
        """http.server (HTTP_CACHE_SERVER) on a free local port serving the cache; its URL."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        argv = [sys.executable, "-c", HTTP_CACHE_SERVER, str(directory), str(port)]
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL"] + argv
        log_path = self.tmp / "maint-http.log"
        logf = open(log_path, "ab")
        log("starting the binary cache: http.server on 127.0.0.1:%d serving %s"
            % (port, directory))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp)
        except OSError as e:
            logf.close()
            raise BenchError("cannot start the HTTP binary cache: %s" % e) from e
        self.http_cache = (proc, logf)
        url = "http://127.0.0.1:%d" % port
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise BenchError("the HTTP binary cache (%s) exited with status %d; %s"
                                 % (" ".join(argv), proc.returncode, describe_log(log_path)))
            try:
                with urllib.request.urlopen(url + "/nix-cache-info", timeout=2) as r:
                    if b"StoreDir: /nix/store" in r.read():
                        return url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the HTTP binary cache did not answer on %s within 15 s; %s"
                                 % (url, describe_log(log_path)))
            time.sleep(0.05)

    def stop_http_cache(self):
        if self.http_cache is None:
            return
        proc, logf = self.http_cache
        self.http_cache = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                kill_group(proc)
        logf.close()


def build_phase_unavailable():
    """Why this machine cannot run the build phase, or None."""
    if os.geteuid() != 0:
        return "needs root (both daemons build as build users of the nixbld group)"
    try:
        import grp
        members = grp.getgrnam("nixbld").gr_mem
    except KeyError:
        return "no nixbld group (bash .ci/test-all creates it with nixbld1..12)"
    if len(members) < BUILD_MAX_JOBS:
        return "the nixbld group has %d members, the batch needs %d" % (len(members),
                                                                      BUILD_MAX_JOBS)
    if not os.path.exists("/bin/busybox"):
        return "no /bin/busybox for the sandbox probe (apt-get install busybox-static)"
    if not shutil.which("rustc"):
        return "no rustc to compile the static builder %s" % BUILD_STAMP_SRC
    return None


def compile_build_stamp(tmp):
    """The builder of the build phase, linked statically so that an empty sandbox can run it."""
    out = tmp / "build-stamp"
    cmd = ["rustc", "--edition", "2021", "-O", "-C", "target-feature=+crt-static",
           "-C", "strip=symbols", "-o", str(out), str(BUILD_STAMP_SRC)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BenchError("'%s' failed:\n%s" % (" ".join(cmd), tail(proc.stdout, 20)))
    probe = tmp / "build-stamp-probe"
    subprocess.run([str(out)], env={"out": str(probe)}, check=True)
    if not probe.read_text().strip().isdigit():
        raise BenchError("%s does not write a time stamp" % out)
    os.chmod(out, 0o755)
    return out


def gc_store_path(wb, kind, i):
    """A made-up input-addressed path: the hash part is nix32 of 20 bytes of sha256(seed)."""
    hash_part = wb.nix_base32(hashlib.sha256(b"ward-bench-gc %d" % i).digest()[:20])
    return "/nix/store/%s-bench-gc-%s-%d" % (hash_part, kind, i)


# Nix's base-32 alphabet (wirebench.NIX_B32); byte b stands for NIX32_CHARS[b % 32].
NIX32_CHARS = "0123456789abcdfghijklmnpqrsvwxyz"
NIX32_TABLE = bytes(ord(NIX32_CHARS[b % 32]) for b in range(256))


def made_up_paths(count, name, seed):
    """count valid-looking store paths no daemon has: 32 characters of Nix's base-32 alphabet
    (160 bits, so every string is a canonical hash part) from seeded random bytes, translated
    in C, so that a million take about a second."""
    raw = random.Random(seed).randbytes(32 * count).translate(NIX32_TABLE).decode()
    return ["/nix/store/%s-%s-%d" % (raw[32 * i:32 * i + 32], name, i) for i in range(count)]


def register_paths(db_path, paths, nar_size=1024):
    """Adds paths to a store database (Nix's schema, used by both daemons) as Nix registers a
    path without references: a made-up NAR hash, no deriver, signatures or CA; one transaction.
    The daemon must be stopped. Files the daemon's users own stay theirs. Returns the count of
    valid paths afterwards."""
    owner = os.stat(db_path)
    now = int(time.time())
    con = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        con.execute("pragma synchronous = off")
        con.execute("begin")
        con.executemany(
            "insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, ?, ?)",
            (("%s" % p, "sha256:" + hashlib.sha256(p.encode()).hexdigest(), now, nar_size)
             for p in paths))
        con.execute("commit")
        total = con.execute("select count(*) from ValidPaths").fetchone()[0]
        con.execute("pragma wal_checkpoint(truncate)")
    except sqlite3.Error as e:
        raise BenchError("writing %d paths into %s: %s" % (len(paths), db_path, e)) from e
    finally:
        con.close()
    for suffix in ("", "-wal", "-shm"):
        f = str(db_path) + suffix
        if os.path.exists(f):
            os.chown(f, owner.st_uid, owner.st_gid)
    return total


def write_entries(path, wb, name, size, count):
    """An entries file: what AddMultipleToStore's framed stream carries, and what
    `ward-wireload add-nar` sends path by path. A u64 count, then per path its ValidPathInfo in
    the 1.16 ("full") encoding, as Nix 2.8's copyPaths writes it (path, deriver, narHash in
    base16, references, registrationTime, narSize, ultimate, sigs, ca), then the NAR. The paths
    are content-addressed (fixed:r:sha256) single files of `size` bytes without references,
    named NAME-I, with contents no other path has. Returns the store paths."""
    tag = os.urandom(8).hex()
    now = int(time.time())
    parts, paths = [wb.enc_u64(count)], []
    no_refs, zero = wb.enc_u64(0), wb.enc_u64(0)
    for i in range(count):
        content = ("ward bench %s %s %d\n" % (name, tag, i)).encode().ljust(size, b".")
        head, nar_tail = wb.nar_single_file_parts(len(content))
        nar = head + content + nar_tail
        digest = hashlib.sha256(nar).digest()
        store_path = wb.make_fixed_output_path_recursive_sha256("%s-%d" % (name, i),
                                                                digest.hex())
        parts += [wb.enc_str(store_path), wb.enc_str(""), wb.enc_str(digest.hex()), no_refs,
                  wb.enc_u64(now), wb.enc_u64(len(nar)), zero, no_refs,
                  wb.enc_str("fixed:r:sha256:" + wb.nix_base32(digest)), nar]
        paths.append(store_path)
    path.write_bytes(b"".join(parts))
    return paths


def write_copy_export(path, wb, closures, count, size):
    """A 'nix-store --export' stream of `closures` closures of `count` made-up input-addressed
    paths each (files of `size` bytes), for `nix copy` to copy. Within a closure, path J refers to
    paths 2J+1 and 2J+2 (a binary tree, so the closure has depth log2(count) and path 0, its top,
    reaches all of it); referenced paths come first in the stream. Returns each closure's paths,
    its top first."""
    tag = os.urandom(8).hex()
    one, zero, magic = wb.enc_u64(1), wb.enc_u64(0), wb.enc_u64(EXPORT_MAGIC)
    no_deriver = wb.enc_str("")
    out = []
    with open(path, "wb", buffering=1 << 20) as f:
        for c in range(closures):
            names = [wb.nix_base32(hashlib.sha256(
                ("ward-bench-copy %s %d %d" % (tag, c, j)).encode()).digest()[:20])
                for j in range(count)]
            paths = ["/nix/store/%s-bench-copy-%d-%d" % (h, c, j) for j, h in enumerate(names)]
            for j in reversed(range(count)):
                content = ("ward bench copy %s %d %d\n" % (tag, c, j)).encode().ljust(size, b".")
                head, nar_tail = wb.nar_single_file_parts(len(content))
                refs = sorted(paths[k] for k in (2 * j + 1, 2 * j + 2) if k < count)
                f.write(b"".join((one, head, content, nar_tail, magic, wb.enc_str(paths[j]),
                                  wb.enc_strs(refs), no_deriver, zero)))
            out.append(paths)
        f.write(zero)
    return out


# --------------------------------------------------------------------------------------------
# machine limits: what the hardware allows the daemons, measured once before the phases


def sha256_hashlib_mb_s(size_mb, reps):
    """MB/s (10^6 bytes) of one SHA-256 over a size_mb MiB buffer with Python's hashlib (its
    OpenSSL), one core: the median of reps."""
    buf = bytearray(size_mb * MIB)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        hashlib.sha256(buf).digest()
        rates.append(len(buf) / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def sha256_openssl_mb_s():
    """MB/s of `openssl speed -evp sha256` on 1 MiB blocks, one core. Python's hashlib reaches
    half of this on some machines (same libcrypto), and a daemon's own SHA-256 (with the CPU's
    SHA extensions) may well reach it, so the limit is the faster of the two."""
    exe = shutil.which("openssl")
    if not exe:
        raise BenchError("not run: no openssl")
    proc = subprocess.run([exe, "speed", "-evp", "sha256", "-bytes", str(MIB), "-seconds", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60)
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "sha256" and fields[1].endswith("k"):
            return float(fields[1][:-1]) * 1e3 / 1e6  # 1000s of bytes per second
    raise BenchError("openssl speed printed no sha256 line:\n%s" % tail(proc.stdout, 10))


def disk_write_mb_s(directory, size_mb, reps):
    """MB/s of writing size_mb MiB (1 MiB writes of random bytes) to a new file in directory,
    fsync included: what a daemon writing a large path and syncing it can reach there. The
    median of reps, each after a sync so that earlier dirty pages are not charged to it."""
    block = os.urandom(MIB)
    path = Path(directory) / "limits-disk-write"
    rates = []
    try:
        for _ in range(reps):
            os.sync()
            t0 = time.perf_counter()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(size_mb):
                    os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            rates.append(size_mb * MIB / (time.perf_counter() - t0) / 1e6)
            path.unlink()
    finally:
        if path.exists():
            path.unlink()
    return statistics.median(rates)


def memcpy_gb_s(size_mb, reps):
    """GB/s (10^9 bytes copied per second) of copying a size_mb MiB buffer into another one
    already faulted in (a slice assignment is one memcpy): the median of reps."""
    src = bytearray(os.urandom(MIB)) * size_mb
    dst = bytearray(len(src))
    dst[:] = src  # fault the pages in
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dst[:] = src
        rates.append(len(src) / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


LIMITS = (  # key, table label, unit
    ("sha256_hashlib", "SHA-256, one core, Python hashlib over a {sha_mb} MiB buffer", "MB/s"),
    ("sha256_openssl", "SHA-256, one core, openssl speed -evp sha256 (1 MiB blocks)", "MB/s"),
    ("disk_write", "sequential write of {disk_mb} MiB + fsync, temporary directory's filesystem",
     "MB/s"),
    ("socket_rtt", "unix socket round trip, 1 byte each way between two threads (native)", "µs"),
    ("memcpy", "memory copy of a {mem_mb} MiB buffer", "GB/s"),
)


def add_limit_mb_s(run):
    """min(SHA-256, disk write) in MB/s: a daemon that hashes and writes every byte of a large
    add once cannot be faster. SHA-256 is the faster of the two measurements; None if either
    kind is missing."""
    sha = [run.limits.get(k, {}).get("value") for k in ("sha256_hashlib", "sha256_openssl")]
    sha = [v for v in sha if v is not None]
    disk = run.limits.get("disk_write", {}).get("value")
    if not sha or disk is None:
        return None
    return min(max(sha), disk)


def reset_peak_rss(root):
    """Resets VmHWM of every process of root's tree to its current RSS (writing 5 to
    /proc/PID/clear_refs, Linux >= 4.0), so that a later VmHWM is the peak of what ran in
    between rather than since the process started. False if any process refused."""
    ok = True
    for pid in process_tree(root):
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def write_gc_export(path, wb, count, group):
    """A 'nix-store --export' stream of count tiny paths in groups of `group`: the last path of
    each group (its top) refers to the other group-1 (which come first in the stream); every
    other group is live (its top gets a GC root). Per path: 1, the NAR (self-delimiting, as
    exportPath writes it), the magic, the path, its references, the deriver (none) and 0 (no
    signature); 0 at the end."""
    if count % (2 * group):
        raise BenchError("gc_paths (%d) must be a multiple of twice gc_group (%d)" % (count, group))
    live, dead, live_tops = [], [], []
    one, zero, magic = wb.enc_u64(1), wb.enc_u64(0), wb.enc_u64(EXPORT_MAGIC)
    no_deriver, no_refs = wb.enc_str(""), wb.enc_u64(0)
    size = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for g in range(count // group):
            kind = "live" if g % 2 == 0 else "dead"
            members = []
            for j in range(group):
                i = g * group + j
                store_path = gc_store_path(wb, kind, i)
                content = b"ward bench gc %d\n" % i
                head, nar_tail = wb.nar_single_file_parts(len(content))
                refs = wb.enc_strs(sorted(members)) if j == group - 1 else no_refs
                chunk = b"".join((one, head, content, nar_tail, magic, wb.enc_str(store_path),
                                  refs, no_deriver, zero))
                f.write(chunk)
                size += len(chunk)
                members.append(store_path)
            (live if kind == "live" else dead).extend(members)
            if kind == "live":
                live_tops.append(members[-1])
        f.write(zero)
    return {"file": path, "count": count, "bytes": size + 8, "live": live, "dead": dead,
            "live_tops": live_tops}


def add_cache_entry(directory, wb, name, chunks):
    """One path of the binary cache: the uncompressed NAR made of `chunks` (hashed while it is
    written, never held whole), its narinfo; the path is the content-addressed one
    (fixed:r:sha256) of that NAR. Returns (store path, NAR size)."""
    partial = directory / "nar" / ".partial"
    h = hashlib.sha256()
    size = 0
    with open(partial, "wb") as f:
        for chunk in chunks:
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
    digest = h.digest()
    nix32 = wb.nix_base32(digest)
    os.replace(partial, directory / "nar" / ("%s.nar" % nix32))
    store_path = wb.make_fixed_output_path_recursive_sha256(name, digest.hex())
    hash_part = store_path[len("/nix/store/"):].split("-", 1)[0]
    # "References: " keeps its space, as Nix writes it: Nix 2.8's parser needs one
    (directory / ("%s.narinfo" % hash_part)).write_text(
        "StorePath: %s\nURL: nar/%s.nar\nCompression: none\nFileHash: sha256:%s\n"
        "FileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \nCA: fixed:r:sha256:%s\n"
        % (store_path, nix32, nix32, size, nix32, size, nix32))
    return store_path, size


def build_binary_cache(directory, wb, small_count, large_mb):
    """The maint phase's binary cache: small_count paths of SUB_SMALL_SIZE bytes and one of
    large_mb MiB, each a single regular file."""
    (directory / "nar").mkdir(parents=True, exist_ok=True)
    (directory / "nix-cache-info").write_text(
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
    small, nar_size = [], {}
    for i in range(small_count):
        content = ("ward bench substitute %d\n" % i).encode().ljust(SUB_SMALL_SIZE, b".")
        head, nar_tail = wb.nar_single_file_parts(len(content))
        path, size = add_cache_entry(directory, wb, "bench-sub-small-%d" % i,
                                     [head, content, nar_tail])
        small.append(path)
        nar_size[path] = size
    large_size = large_mb * MIB
    head, nar_tail = wb.nar_single_file_parts(large_size)
    block = bytearray(os.urandom(MIB))

    def large_chunks():
        yield head
        for k in range(large_mb):
            block[:8] = struct.pack("<Q", k)  # no two MiB alike
            yield bytes(block)
        yield nar_tail

    large, size = add_cache_entry(directory, wb, "bench-sub-large", large_chunks())
    nar_size[large] = size
    return {"dir": directory, "small": small, "large": large, "nar_size": nar_size}


def load_wirebench(path):
    """wirebench.py as a module: the build phase drives its Conn in this process."""
    spec = importlib.util.spec_from_file_location("wirebench", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import is reported the same way
        raise BenchError("cannot load %s: %s" % (path, e)) from e
    return module


def summarize(values):
    v = sorted(values)
    if not v:
        return {}
    return {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1]}


def kill_group(proc):
    """SIGKILL a wirebench client and the workers it forked (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def remove_tree(path):
    """rm -rf that also copes with the read-only directories of a store."""
    def make_writable(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass
    if os.path.lexists(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable)
        else:
            shutil.rmtree(path, onerror=make_writable)


def first_line(text):
    return text.splitlines()[0] if text else text


def indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------
# the table


class Row:
    """One table line. value(side) -> number or None; target -> (text, check(nix, ward)); key:
    the workload it shows, so that a partial run (--phases) keeps the row when it ran but failed."""

    def __init__(self, workload, unit, value, target=None, key=None):
        self.workload = workload
        self.unit = unit
        self.value = value
        self.target = target
        self.key = key


def fmt_number(v):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return "{:,.0f}".format(v)
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def ratio_at_least(factor):
    return ("≥ %g× nix-daemon" % factor,
            lambda nix, ward: None if nix in (None, 0) or ward is None else ward / nix >= factor)


def ratio_at_most(factor):
    """For times, where lower is better: ward's at most factor × nix-daemon's."""
    return ("≤ %g× nix-daemon" % factor,
            lambda nix, ward: None if nix in (None, 0) or ward is None else ward / nix <= factor)


def below(limit, unit):
    return ("< %g %s" % (limit, unit), lambda nix, ward: None if ward is None else ward < limit)


def at_most(limit, unit, what=""):
    """ward's own value at most limit (what: a note on what the value is)."""
    return ("≤ %g%s%s" % (limit, unit, what),
            lambda nix, ward: None if ward is None else ward <= limit)


def at_least(limit, unit, what=""):
    return ("≥ %g%s%s" % (limit, unit, what),
            lambda nix, ward: None if ward is None else ward >= limit)


def qpi_target(k):
    """The QueryPathInfo target for k connections (3x on one, 5x with 32, else 2x)."""
    return ratio_at_least(QUERY_PATH_INFO_RATIO_TARGETS.get(k, QUERY_PATH_INFO_RATIO_TARGET))


def result_of(run, key, side):
    rec = run.workloads.get(key, {}).get(side)
    if not rec or "result" not in rec:
        return None
    return rec["result"]["result"]


def median_of(run, key, side, metric):
    """Median of a rounds workload's samples; None when the side failed or has none."""
    rec = run.workloads.get(key, {}).get(side)
    if not rec or "error" in rec:
        return None
    return rec.get("summary", {}).get(metric, {}).get("median")


def dig(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d or d[p] is None:
            return None
        d = d[p]
    return d


def build_rows(run):
    p = run.profile
    rows = []

    def val(key, metric):
        def get(side):
            return median_of(run, key, side, metric)
        return get

    rows.append(Row("connect + handshake + SetOptions, sequential", "conn/s",
                    val("connect", "conn_per_s"), ratio_at_least(CONNECT_RATIO_TARGET)))
    for kind, op, k, label in query_variants(p):
        target = qpi_target(k) if op == "qpi" else None
        rows.append(Row(label, "ops/s", val(query_key(kind, op, k), "ops_per_s"), target))
    for key, label, k in native_query_variants(p):
        rows.append(Row(label, "ops/s", val(key, "ops_per_s"), qpi_target(k)))
    labels = data_labels(p)
    rows.append(Row(labels["valid_paths"], "paths/s", val("valid_paths", "paths_per_s"),
                    key="valid_paths"))
    rows.extend(bigstore_rows(run))
    rows.append(Row("populate: AddToStoreNar of tiny paths, 1 conn", "adds/s",
                    lambda side: dig(result_of(run, "populate", side), "adds_per_s")))
    rows.append(Row(labels["add_small"], "adds/s", val("add_small", "adds_per_s"),
                    ratio_at_least(ADD_SMALL_RATIO_TARGET), key="add_small"))
    for size_mb, _rounds in p["add"]:
        target = ratio_at_least(ADD_1GIB_RATIO_TARGET) if size_mb == ADD_TARGET_SIZE_MB else None
        rows.append(Row("AddToStoreNar %s" % fmt_size(size_mb), "MB/s",
                        val("add_%d" % size_mb, "MB_per_s"), target))
    largest_add = max(size for size, _rounds in p["add"])
    rows.append(limit_share_row(run, "AddToStoreNar %s" % fmt_size(largest_add),
                                "add_%d" % largest_add, largest_add))
    rows.extend(peak_rss_rows(run))
    narfrom_mb = p["narfrom"]["size_mb"]
    narfrom_target = (ratio_at_least(NARFROM_1GIB_RATIO_TARGET)
                      if narfrom_mb == ADD_TARGET_SIZE_MB else None)
    for key, label in (("narfrom", "NarFromPath %s" % fmt_size(narfrom_mb)),
                       ("narfrom_native", "NarFromPath %s, native client" % fmt_size(narfrom_mb))):
        rows.append(Row(label, "MB/s", val(key, "MB_per_s"), narfrom_target, key=key))
        rows.append(limit_share_row(run, label, key, narfrom_mb))
    rows.extend(narfrom_peak_rss_rows(run))
    rows.append(Row(labels["add_multiple"], "paths/s", val("add_multiple", "paths_per_s"),
                    ratio_at_least(ADD_MULTIPLE_RATIO_TARGET), key="add_multiple"))
    rows.append(Row(labels["nix_copy"], "s", val("nix_copy", "seconds"),
                    ratio_at_most(NIX_COPY_RATIO_TARGET), key="nix_copy"))
    rows.extend(idle_rows(run))
    b = p["build"]
    rows.append(Row("trivial sandboxed build, BuildPaths round trip", "ms",
                    val("build_single", "roundtrip_ms"), ratio_at_most(1)))
    rows.append(Row("trivial sandboxed build, request to builder exec", "ms",
                    val("build_single", "exec_ms")))
    rows.append(Row("%d trivial sandboxed builds in one BuildPaths, max-jobs %d"
                    % (b["batch"], BUILD_MAX_JOBS), "ms wall",
                    val("build_batch", "wall_ms"), ratio_at_most(1)))
    rows.append(Row("%d builds: request to the last builder's exec" % b["batch"], "ms",
                    val("build_batch", "last_exec_ms")))
    rows.extend(maint_rows(run))
    return rows


def data_labels(profile):
    """Table labels of the workloads of many small paths (and of QueryValidPaths)."""
    v, s, m, c = (profile[k] for k in ("valid_paths", "add_small", "add_multiple", "nix_copy"))
    return {
        "valid_paths": "QueryValidPaths of {:,} paths ({:,} valid), native client, 1 conn".format(
            v["paths"], min(v["paths"], profile["populate"])),
        "add_small": "AddToStoreNar of {}, native client, 1 conn, {:,} adds one after another"
                     .format(fmt_bytes(s["size"]), s["count"]),
        "add_multiple": "AddMultipleToStore of {:,} paths of {}, 1 conn".format(
            m["paths"], fmt_bytes(m["size"])),
        "nix_copy": "nix copy of a {:,}-path closure ({} each) from a local store".format(
            c["paths"], fmt_bytes(c["size"])),
    }


def fmt_bytes(n):
    return "%g KiB" % (n / KIB) if n >= KIB else "%d bytes" % n


def limit_share_row(run, label, key, size_mb):
    """A side's MB/s as a share of min(SHA-256, disk write) of this machine; the target (80%)
    applies to the 1 GiB rows of the full run only."""
    limit = add_limit_mb_s(run)

    def share(side):
        v = median_of(run, key, side, "MB_per_s")
        return None if v is None or not limit else 100.0 * v / limit

    target = (at_least(100 * MACHINE_LIMIT_SHARE_TARGET, "%", " of the limit")
              if size_mb == ADD_TARGET_SIZE_MB else None)
    return Row("%s: share of min(SHA-256, disk write)%s" % (
        label, "" if limit else " (limit not measured)"), "%", share, target, key=key)


def bigstore_rows(run):
    """QueryPathInfo latency at a small and a large store, and large / small for each side."""
    b = run.profile["bigstore"]
    label = "QueryPathInfo latency p50, native client, 1 conn, {:,}-path store"
    rows = [Row(label.format(b["small"]), "µs",
                lambda side: median_of(run, "bigstore_small", side, "p50_us"),
                key="bigstore_small"),
            Row(label.format(b["large"]), "µs",
                lambda side: median_of(run, "bigstore_large", side, "p50_us"),
                key="bigstore_large")]

    def growth(side):
        small = median_of(run, "bigstore_small", side, "p50_us")
        large = median_of(run, "bigstore_large", side, "p50_us")
        return None if not small or large is None else large / small

    rows.append(Row("QueryPathInfo latency, {:,}-path store / {:,}-path store".format(
        b["large"], b["small"]), "×", growth,
        at_most(BIGSTORE_LATENCY_GROWTH_LIMIT, "×", " (each daemon's own)"),
        key="bigstore_large"))
    return rows


def narfrom_peak_rss_rows(run):
    """One row per ward process: its VmHWM during the downloads (reset before them), against
    nix-daemon's largest process."""
    label = "peak RSS (VmHWM) during NarFromPath %s" % fmt_size(
        run.profile["narfrom"]["size_mb"])
    if False in run.peak_rss_reset.values():
        label += " (VmHWM could not be reset: peak since the data phase began)"
    limit = below(PEAK_RSS_LIMIT_KB / KIB, "MiB")

    def peaks(side):
        rec = run.peak_rss.get(side, {}).get("narfrom") or {}
        out = {}
        for proc in (rec.get("sampled") or []) + (rec.get("after") or []):
            out[proc["name"]] = max(out.get(proc["name"], 0), proc["hwm_kb"])
        return out

    nix_peak = max(peaks("nix").values(), default=None)
    ward = peaks("ward")

    def nix_value():
        return None if nix_peak is None else nix_peak / KIB

    if not ward:
        return [Row(label + ", each ward process", "MiB",
                    lambda side: None if side == "ward" else nix_value(), limit, key="narfrom")]
    return [Row("%s: %s" % (label, name), "MiB",
                lambda side, name=name: ward[name] / KIB if side == "ward" else nix_value(),
                limit, key="narfrom")
            for name in sorted(ward)]


def maint_labels(profile):
    """Table labels of the maint phase's workloads."""
    m = profile["maint"]
    return {"maint_gc": "GC of {:,} paths (half dead)".format(m["gc_paths"]),
            "maint_sub_small": "substitute {:,} small paths over HTTP".format(m["sub_small"]),
            "maint_sub_large": "substitute %s over HTTP" % fmt_size(m["sub_large_mb"])}


def maint_rows(run):
    labels = maint_labels(run.profile)
    rows = [Row(labels["maint_gc"], "s",
                lambda side: dig(result_of(run, "maint_gc", side), "seconds"),
                ratio_at_most(GC_RATIO_TARGET), key="maint_gc")]
    for key in ("maint_sub_small", "maint_sub_large"):
        rows.append(Row(labels[key], "s",
                        lambda side, key=key: median_of(run, key, side, "seconds"),
                        ratio_at_most(SUBSTITUTE_RATIO_TARGET), key=key))
    rows.extend(maint_peak_rss_rows(run))
    return rows


def maint_peaks(run, side):
    """name -> the largest VmHWM (KiB) of the side's processes of that name in the maint phase."""
    m = run.peak_rss.get(side, {}).get("maint") or {}
    out = {}
    for key in ("sampled_during_gc", "sampled_during_substitute_large", "after_maint"):
        for proc in m.get(key) or []:
            out[proc["name"]] = max(out.get(proc["name"], 0), proc["hwm_kb"])
    return out


def maint_peak_rss_rows(run):
    """One row per ward process (by name): its VmHWM sampled during the GC and the large
    substitution (and read at the end of the phase), against nix-daemon's largest process."""
    label = "peak RSS (VmHWM) during GC and %s substitution" % fmt_size(
        run.profile["maint"]["sub_large_mb"])
    nix_peak = max(maint_peaks(run, "nix").values(), default=None)
    ward = maint_peaks(run, "ward")
    limit = below(PEAK_RSS_LIMIT_KB / KIB, "MiB")

    def nix_value():
        return None if nix_peak is None else nix_peak / KIB

    if not ward:
        return [Row(label + ", each ward process", "MiB",
                    lambda side: None if side == "ward" else nix_value(), limit)]
    return [Row("%s: %s" % (label, name), "MiB",
                lambda side, name=name: ward[name] / KIB if side == "ward" else nix_value(),
                limit)
            for name in sorted(ward)]


def query_variants(profile):
    """(kind, op, connections, label) of every query row."""
    out = []
    for kind, paths in (("hot", "%d hot paths" % profile["hot_paths"]),
                        ("distinct", "%d distinct paths" % profile["populate"])):
        for op in QUERY_OPS:
            for k in profile["query"]["concurrency"]:
                out.append((kind, op, k, "%s, %d conn%s, %s" % (
                    QUERY_OP_NAMES[op], k, "" if k == 1 else "s", paths)))
    return out


def native_query_variants(profile):
    """(key, label, connections) of every native-client QueryPathInfo row."""
    out = []
    kinds = (("hot", "%d hot paths" % profile["hot_paths"]),
             ("distinct", "%d distinct paths" % profile["populate"]))
    for kind, paths in kinds:
        for k in profile["native_query"]["concurrency"]:
            out.append((native_query_key(kind, k), "QueryPathInfo, native client, %d conn%s, %s"
                        % (k, "" if k == 1 else "s", paths), k))
    split = split_cpus()
    if split:
        daemon_cpus, _clients = split
        for kind, paths in kinds:
            for k in profile["native_query"]["split_concurrency"]:
                out.append((native_query_key(kind, k, split=True),
                            "QueryPathInfo, native client, %d conn%s, %s, daemon alone on CPU %d"
                            % (k, "" if k == 1 else "s", paths, min(daemon_cpus)), k))
    return out


def build_cpu_rows(run):
    """Daemon CPU time per unit of work: what the daemon itself spends, whatever the client."""
    p = run.profile

    def cpu(key, scale):
        def get(side):
            rec = run.workloads.get(key, {}).get(side)
            if not rec or "error" in rec or "cpu_per_unit_s" not in rec:
                return None
            return rec["cpu_per_unit_s"] * scale
        return get

    rows = [Row("connect + handshake + SetOptions", "ms/conn", cpu("connect", 1e3))]
    for kind, op, k, label in query_variants(p):
        rows.append(Row(label, "µs/op", cpu(query_key(kind, op, k), 1e6)))
    for key, label, _k in native_query_variants(p):
        rows.append(Row(label, "µs/op", cpu(key, 1e6)))
    labels = data_labels(p)
    rows.append(Row(labels["valid_paths"], "µs/path", cpu("valid_paths", 1e6)))
    b = p["bigstore"]
    for kind in ("small", "large"):
        rows.append(Row("QueryPathInfo, native client, 1 conn, {:,}-path store".format(b[kind]),
                        "µs/op", cpu("bigstore_%s" % kind, 1e6)))
    rows.append(Row(labels["add_small"], "µs/add", cpu("add_small", 1e6)))
    for size_mb, _rounds in p["add"]:
        rows.append(Row("AddToStoreNar %s" % fmt_size(size_mb), "ms/MiB",
                        cpu("add_%d" % size_mb, 1e3)))
    rows.append(Row("NarFromPath %s" % fmt_size(p["narfrom"]["size_mb"]), "ms/MiB",
                    cpu("narfrom", 1e3)))
    rows.append(Row("NarFromPath %s, native client" % fmt_size(p["narfrom"]["size_mb"]),
                    "ms/MiB", cpu("narfrom_native", 1e3)))
    rows.append(Row(labels["add_multiple"], "µs/path", cpu("add_multiple", 1e6)))
    rows.append(Row(labels["nix_copy"], "µs/path", cpu("nix_copy", 1e6)))
    rows.append(Row("trivial sandboxed build (its connection and .drv included)", "ms/build",
                    cpu("build_single", 1e3)))
    rows.append(Row("%d builds in one BuildPaths" % p["build"]["batch"], "ms/build",
                    cpu("build_batch", 1e3)))
    labels = maint_labels(p)

    def gc_cpu(side):
        res = result_of(run, "maint_gc", side)
        if not res or not res.get("deleted"):
            return None
        return res["daemon_cpu_s"] / res["deleted"] * 1e6

    rows.append(Row(labels["maint_gc"], "µs/deleted path", gc_cpu))
    rows.append(Row(labels["maint_sub_small"], "ms/path", cpu("maint_sub_small", 1e3)))
    rows.append(Row(labels["maint_sub_large"], "ms/MiB", cpu("maint_sub_large", 1e3)))
    return rows


def render_query_cpu_budget(run):
    """Client and daemon CPU per query, side by side, and what they allow.

    With every CPU busy (several connections on a small machine), throughput is at most
    CPUs / (client + daemon CPU per op), so the throughput ratio ward/nix-daemon cannot exceed
    (nix client + nix-daemon) / (ward client + ward), nor, even for a daemon that cost nothing,
    (nix client + nix-daemon) / ward client. Returns (markdown, records)."""
    p = run.profile
    out = ["| query workload (CPU µs/op) | client, nix | nix-daemon | client, ward | ward "
           "| CPU-bound ward/nix | ward/nix if ward cost 0 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    records = []
    variants = [(query_key(kind, op, k), label) for kind, op, k, label in query_variants(p)]
    # (not the split rows: there client and daemon do not share the CPUs)
    variants += [(key, label) for key, label, _k in native_query_variants(p)
                 if not key.endswith("_split")]
    for key, label in variants:
        figures = {}
        for side in ("nix", "ward"):
            rec = run.workloads.get(key, {}).get(side) or {}
            if "error" in rec or "client_cpu_per_unit_s" not in rec:
                figures = None
                break
            figures[side] = (rec["client_cpu_per_unit_s"] * 1e6, rec["cpu_per_unit_s"] * 1e6)
        if figures is None:
            continue
        (nc, nd), (wc, wd) = figures["nix"], figures["ward"]
        bound = (nc + nd) / (wc + wd) if wc + wd > 0 else None
        ceiling = (nc + nd) / wc if wc > 0 else None
        out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt_number(nc), fmt_number(nd), fmt_number(wc), fmt_number(wd),
            "—" if bound is None else "%.2f×" % bound,
            "—" if ceiling is None else "%.2f×" % ceiling))
        records.append({"workload": label, "client_nix_us": nc, "nix_daemon_us": nd,
                        "client_ward_us": wc, "ward_us": wd, "cpu_bound_ratio": bound,
                        "ratio_if_ward_cost_nothing": ceiling})
    if not records:
        return "", []
    return "\n".join(out), records


def fmt_size(size_mb):
    return "%g GiB" % (size_mb / 1024) if size_mb >= 1024 else "%g MiB" % size_mb


def peak_rss_rows(run):
    """One row per ward process: its VmHWM after the adds, against nix-daemon's largest."""
    largest_add = fmt_size(max(s for s, _rounds in run.profile["add"]))
    nix = run.peak_rss.get("nix", {}).get("sampled_during_add") or []
    nix_peak = max((p["hwm_kb"] for p in nix), default=None)
    ward = run.peak_rss.get("ward", {}).get("after_add")
    limit = below(PEAK_RSS_LIMIT_KB / KIB, "MiB")
    if not ward:
        return [Row("peak RSS (VmHWM) after adds up to %s, each ward process" % largest_add, "MiB",
                    lambda side: None if side == "ward" or nix_peak is None else nix_peak / KIB,
                    limit)]
    rows = []
    for proc in sorted(ward, key=lambda p: p["name"]):
        rows.append(Row("peak RSS (VmHWM) after adds up to %s: %s" % (largest_add, proc["name"]),
                        "MiB",
                        lambda side, proc=proc: (proc["hwm_kb"] / KIB if side == "ward"
                                                 else None if nix_peak is None else nix_peak / KIB),
                        limit))
    return rows


def idle_rows(run):
    rows = []

    def rest(field):
        def get(side):
            v = dig(result_of(run, "idle", side), "at_rest", field)
            return None if v is None else v / KIB
        return get

    rows.append(Row("memory at rest, daemon process tree RSS", "MiB", rest("rss_kb_sum")))
    rows.append(Row("memory at rest, daemon process tree PSS", "MiB", rest("pss_kb_sum")))
    idle = run.profile["idle"]
    counts = idle["connections"]
    target_counts = [c for c in IDLE_TARGET_CONNECTIONS if c in counts] or [max(counts)]
    for count in counts:
        nix_count = min(count, idle["nix_cap"])

        def result(side, count=count, nix_count=nix_count):
            """The side's figures at count connections (nix-daemon's at its cap, if lower)."""
            res = result_of(run, "idle", side)
            want = nix_count if side == "nix" else count
            for r in (res or {}).get("results", []):
                if r["connections"] == want:
                    return r
            return None

        name = "{:,} idle conns".format(count)
        if nix_count != count:
            name += " (nix-daemon: {:,}, capped: a process per connection)".format(nix_count)
        target = (at_most(IDLE_PER_CONNECTION_LIMIT_KB, " KiB")
                  if count in target_counts else None)
        rows.append(Row("%s: PSS per connection" % name, "KiB",
                        lambda side, r=result: dig(r(side), "per_connection", "pss_kb"), target))
        rows.append(Row("%s: RSS per connection" % name, "KiB",
                        lambda side, r=result: dig(r(side), "per_connection", "rss_kb"), target))
        if count in target_counts:
            rows.append(Row("%s: daemon process tree PSS" % name, "MiB",
                            lambda side, r=result: (lambda v: None if v is None else v / KIB)(
                                dig(r(side), "tree", "pss_kb_sum"))))
            rows.append(Row("%s: processes in the daemon tree" % name, "",
                            lambda side, r=result: dig(r(side), "tree", "pids")))
    return rows


def idle_counts(idle, side):
    """The idle connection counts a side is measured at: nix-daemon forks a process per
    connection (about 0.5 MiB PSS and a pid each), so its counts stop at nix_cap, and a higher
    count is measured at the cap instead."""
    counts = idle["connections"]
    if side != "nix":
        return counts
    cap = idle["nix_cap"]
    out = [c for c in counts if c <= cap]
    if any(c > cap for c in counts) and cap not in out:
        out.append(cap)
    return out


def render_table(run, rows, targets=True):
    if targets:
        out = ["| workload | nix-daemon | ward | ward/nix | target | met |",
               "|---|---:|---:|---:|---|---|"]
    else:
        out = ["| daemon CPU time per unit of work | nix-daemon | ward | ward/nix |",
               "|---|---:|---:|---:|"]
    records = []
    partial = set(run.args.phases) != set(PHASES)
    for row in rows:
        nix, ward = row.value("nix"), row.value("ward")
        if partial and nix is None and ward is None and not run.workloads.get(row.key):
            continue  # a phase not asked for (--phases); errors are listed under the table
        ratio = ward / nix if nix not in (None, 0) and ward is not None else None
        target_text, met = "—", None
        if row.target:
            target_text, check = row.target
            met = check(nix, ward)
        if row.target is None:
            met_text = "—"
        else:
            met_text = "yes" if met else "NO" if met is False else "n/a"
        unit = " " + row.unit if row.unit else ""
        cells = [row.workload + ("" if not row.unit else " (%s)" % row.unit),
                 cell(run, row, "nix", nix), cell(run, row, "ward", ward),
                 "—" if ratio is None else "%.2f×" % ratio]
        if targets:
            cells += [target_text, met_text]
        out.append("| %s |" % " | ".join(cells))
        records.append({"workload": row.workload, "unit": unit.strip(), "nix": nix, "ward": ward,
                        "ratio_ward_over_nix": ratio, "target": None if row.target is None
                        else target_text, "met": met})
    return "\n".join(out), records


def cell(run, row, side, value):
    if value is not None:
        return fmt_number(value)
    if side not in run.sides:
        return "skipped"
    return "error" if run.side_error.get(side) or _any_error(run, side) else "—"


def _any_error(run, side):
    return any("error" in recs.get(side, {}) for recs in run.workloads.values())


def render_limits(run):
    """The machine-limits table (markdown) and its records; empty if nothing was measured."""
    if not run.limits:
        return "", []
    l = run.profile["limits"]
    out = ["| machine limit | value |", "|---|---:|"]
    records = []
    for key, label, unit in LIMITS:
        rec = run.limits.get(key, {})
        value = rec.get("value")
        error = rec.get("error")
        text = (fmt_number(value) if value is not None
                else "not run" if (error or "").startswith("not run:") else "error")
        out.append("| %s (%s) | %s |" % (label.format(**l), unit, text))
        records.append({"limit": key, "unit": unit, "value": value, "error": error})
    limit = add_limit_mb_s(run)
    out.append("| min(SHA-256, disk write): what a daemon that hashes and writes every byte can "
               "reach (MB/s) | %s |" % fmt_number(limit))
    records.append({"limit": "min_sha256_disk", "unit": "MB/s", "value": limit})
    return "\n".join(out), records


def render_report(run, rows_md, cpu_md, budget_md=""):
    lines = []
    mode = "quick" if run.args.quick else "full"
    lines.append("## ward vs nix-daemon (%s run, %s%s)" % (
        mode, time.strftime("%Y-%m-%d %H:%M:%S"), ", INTERRUPTED" if run.interrupted else ""))
    lines.append("")
    for side in run.sides:
        info = run.side_info[side]
        if side in run.side_error:
            lines.append("- %s: **did not run** — %s" % (SIDE_TITLES[side],
                                                         first_line(run.side_error[side])))
        elif info.get("daemon_proto") is None:
            lines.append("- %s: %s" % (SIDE_TITLES[side], info.get("bin")))
        else:
            lines.append("- %s: %s, version %s, protocol %s (negotiated %s)" % (
                SIDE_TITLES[side], info.get("bin"), info.get("daemon_nix_version"),
                info.get("daemon_proto"), info.get("negotiated_proto")))
    for side in run.sides:
        probe = run.side_info[side].get("build_sandbox")
        if probe:
            lines.append("- %s's sandbox, as its probe build saw it: %s" % (
                SIDE_TITLES[side], "; ".join("%s %s" % (k, v) for k, v in probe.items())))
    lines.append("- machine: %d CPUs, load average at start %s" % (
        os.cpu_count() or 0, " ".join("%.2f" % x for x in (run.start_load or []))))
    one_minute_loads = (run.start_load or [])[:1] + (loadavg() or [])[:1]
    busy = [x for x in one_minute_loads if x > (os.cpu_count() or 1)]
    if busy:
        lines.append("- **the machine was busy** (1-minute load average %s on %d CPUs at the start "
                     "or the end): other work competed with both daemons; ratios of a few tens of "
                     "percent either way are noise" % (" / ".join("%.1f" % x for x in busy),
                                                        os.cpu_count() or 1))
    limits_md, _records = render_limits(run)
    if limits_md:
        lines.append("")
        lines.append("Machine limits, measured once before the daemons start (median of %d runs "
                     "each; SHA-256 is the faster of hashlib and openssl for the limit):"
                     % run.profile["limits"]["reps"])
        lines.append("")
        lines.append(limits_md)
    lines.append("")
    lines.append(rows_md)
    lines.append("")
    lines.append("Daemon CPU time (user + system, every process of the daemon's tree, nix-daemon's "
                 "reaped per-connection children included) per unit of work: what the daemon "
                 "itself spends, independent of the Python client's speed and far less sensitive "
                 "to other load than the throughputs above.")
    lines.append("")
    lines.append(cpu_md)
    if budget_md:
        lines.append("")
        lines.append("Client and daemon CPU per query (the client's is wirebench's or ward-wireload's "
                     "own user + system time, its worker processes included). When all %d CPUs "
                     "are busy — several connections — throughput is at most CPUs / (client + "
                     "daemon), so the ward/nix-daemon throughput ratio is bounded by the "
                     "CPU-bound column, and by the last column even for a daemon that cost "
                     "nothing. Single-connection rows are bound by wake-up latency instead."
                     % (os.cpu_count() or 1))
        lines.append("")
        lines.append(budget_md)
    if "data" in run.args.phases and not any(size == ADD_TARGET_SIZE_MB
                                             for size, _rounds in run.profile["add"]):
        lines.append("")
        lines.append("AddToStoreNar and NarFromPath of %s (targets ≥ %g× nix-daemon and "
                     "≥ %d%% of min(SHA-256, disk write)) run only in the full run; the rows "
                     "above cover smaller sizes." % (
                         fmt_size(ADD_TARGET_SIZE_MB), ADD_1GIB_RATIO_TARGET,
                         100 * MACHINE_LIMIT_SHARE_TARGET))
    errors = []
    for key, per_side in run.workloads.items():
        for side, rec in per_side.items():
            if "error" in rec and not rec["error"].startswith("not run:"):
                errors.append("### %s on %s\n\n```\n%s\n```"
                              % (key, SIDE_TITLES[side], rec["error"]))
    for crash in run.crashes:
        errors.append("### %s exited (status %s) during the %s phase\n\nits log ends with:\n\n"
                      "```\n%s\n```" % (SIDE_TITLES[crash["side"]], crash["exit_status"],
                                         crash["phase"], crash["log_tail"]))
    for side, err in run.side_error.items():
        errors.append("### %s could not run\n\n```\n%s\n```" % (SIDE_TITLES[side], err))
    for key, rec in run.limits.items():
        if "error" in rec and not rec["error"].startswith("not run:"):
            errors.append("### machine limit %s\n\n```\n%s\n```" % (key, rec["error"]))
    if errors:
        lines.append("")
        lines.append("## Errors")
        lines.append("")
        lines.extend(errors)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few repetitions (about 4 minutes once ward is built)")
    ap.add_argument("--ward-bin", help="use this ward binary instead of building one "
                    "(cargo build --release --workspace)")
    ap.add_argument("--ward-arg", action="append", metavar="ARG",
                    help="extra argument for 'ward daemon' (repeatable)")
    ap.add_argument("--nix-daemon", default=shutil.which("nix-daemon") or "/usr/bin/nix-daemon",
                    help="nix-daemon binary (default: %(default)s)")
    ap.add_argument("--wirebench", help="path of wirebench.py (default: "
                    "$WARD_SHARED_DIR/bench/wirebench.py or ../shared/bench/wirebench.py)")
    ap.add_argument("--sides", default="nix,ward",
                    type=lambda s: [x for x in s.split(",") if x],
                    help="which daemons to run, comma-separated (default: %(default)s)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    type=lambda s: [x for x in s.split(",") if x],
                    help="which phases to run, comma-separated (default: %(default)s)")
    ap.add_argument("--json", dest="json_out",
                    help="write the raw results here (default: target/bench/compare-TIME.json)")
    ap.add_argument("--tmpdir", help="parent of the temporary directory (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (stores, sockets, daemon logs)")
    ap.add_argument("--timeout", type=int,
                    help="seconds allowed for one wirebench run (default: 300 quick, 1800 full)")
    args = ap.parse_args(argv)
    bad = [s for s in args.sides if s not in SIDES]
    if bad or not args.sides:
        ap.error("--sides takes a comma-separated subset of %s" % ",".join(SIDES))
    bad = [p for p in args.phases if p not in PHASES]
    if bad or not args.phases:
        ap.error("--phases takes a comma-separated subset of %s" % ",".join(PHASES))
    return args


def raise_fd_limit():
    """10,000 idle connections (the full run) need more descriptors than a 1,024 soft limit,
    in the client and in the daemon (both inherit it from this process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def on_terminate(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv=None):
    args = parse_args(argv)
    wirebench = find_wirebench(args.wirebench)
    raise_fd_limit()
    # explicitly: a shell starting us in the background leaves SIGINT ignored
    signal.signal(signal.SIGINT, on_terminate)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGHUP, on_terminate)

    tmp = Path(tempfile.mkdtemp(prefix="ward-bench-", dir=args.tmpdir))
    # ward's unprivileged users must be able to reach their store and socket inside it
    os.chmod(tmp, 0o711)
    run = Run(args, wirebench, tmp)
    started = time.time()
    interrupted = False
    if "nix" in run.sides:
        run.side_info["nix"]["bin"] = args.nix_daemon
        if not (os.path.isfile(args.nix_daemon) and os.access(args.nix_daemon, os.X_OK)):
            run.side_error["nix"] = ("nix-daemon not found at %s (pass --nix-daemon)"
                                     % args.nix_daemon)
    try:
        if "ward" in run.sides:
            if args.ward_bin:
                ward = Path(args.ward_bin).resolve()
                if not ward.is_file():
                    run.side_error["ward"] = "--ward-bin %s does not exist" % ward
                run.side_info["ward"]["bin"] = str(ward)
            else:
                try:
                    run.side_info["ward"]["bin"] = str(build_ward())
                except BenchError as e:
                    run.side_error["ward"] = str(e)
                    log("ward side disabled: %s" % e)
        candidates = [REPO_ROOT / "target" / "release" / "ward-wireload"]
        if run.side_info["ward"].get("bin"):
            candidates.insert(0, Path(run.side_info["ward"]["bin"]).with_name("ward-wireload"))
        run.wireload = next((c for c in candidates if c.is_file()), None)
        log("profile %s, temporary directory %s, wirebench %s"
            % ("quick" if args.quick else "full", tmp, wirebench))
        run.machine_limits()
        if "protocol" in args.phases:
            run.phase_protocol()
        if "data" in args.phases:
            run.phase_data()
        if "build" in args.phases:
            run.phase_build()
        if "maint" in args.phases:
            run.phase_maint()
    except KeyboardInterrupt:
        interrupted = run.interrupted = True
        log("interrupted; stopping daemons and printing what was measured")
    finally:
        # a second Ctrl-C must not cut the clean-up short
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        run.stop_all()
        if args.keep:
            log("kept %s" % tmp)
        else:
            remove_tree(tmp)

    table, records = render_table(run, build_rows(run))
    cpu_table, cpu_records = render_table(run, build_cpu_rows(run), targets=False)
    budget_table, budget_records = render_query_cpu_budget(run)
    report = render_report(run, table, cpu_table, budget_table)
    json_out = Path(args.json_out) if args.json_out else (
        REPO_ROOT / "target" / "bench" / time.strftime("compare-%Y%m%d-%H%M%S.json"))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "tool": "bench/compare.py",
        "profile": "quick" if args.quick else "full",
        "parameters": run.profile,
        "interrupted": interrupted,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": run.start_load,
                    "loadavg_end": loadavg()},
        "wirebench": str(wirebench),
        "sides": {s: dict(run.side_info[s], error=run.side_error.get(s)) for s in run.sides},
        "table": records,
        "cpu_table": cpu_records,
        "query_cpu_budget": budget_records,
        "machine_limits": render_limits(run)[1],
        "peak_rss": run.peak_rss,
        "crashes": run.crashes,
        "workloads": run.workloads,
    }
    json_out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    json_out.with_suffix(".md").write_text(report)
    sys.stdout.write(report)
    log("raw results: %s (table: %s)" % (json_out, json_out.with_suffix(".md")))
    if interrupted:
        return 130
    failed = (bool(run.side_error) or bool(run.crashes)
              or any("error" in rec for per in run.workloads.values() for rec in per.values())
              or any(not rec["error"].startswith("not run:")
                     for rec in run.limits.values() if "error" in rec))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
