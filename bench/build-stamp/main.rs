//! The builder of the build benchmark (bench/compare.py, phase "build"): writes the wall-clock
//! time at which it started, in nanoseconds since the epoch, to `$out`. compare.py compiles it
//! statically (`rustc -C target-feature=+crt-static`) so it runs in an empty sandbox, and
//! binds it in with `sandbox-paths`; the time from the BuildPaths request to this stamp is the
//! "request to exec" latency of a daemon. busybox's `date` has no sub-second format.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is before 1970")
        .as_nanos();
    let out = std::env::var_os("out").expect("$out is not set");
    std::fs::write(&out, format!("{started}\n")).expect("writing $out");
}
