#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 60), one after the other, on a
# single core, then prints a summary. Exits 1 if any target crashed (the crashing input is in
# fuzz/artifacts/<target>/), 2 on a usage or build error.
#
#   fuzz/run-all.sh [SECONDS] [TARGET...]
#
# Environment: WARD_FUZZ_SANITIZER (default "none": proto is safe Rust, so AddressSanitizer
# only costs speed; set "address" to use it), WARD_FUZZ_RSS_MB (default 2048),
# WARD_FUZZ_TIMEOUT (seconds one input may take, default 10).
set -uo pipefail

usage() { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
seconds="${1:-60}"
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
shift || true

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here" || exit 2
sanitizer="${WARD_FUZZ_SANITIZER:-none}"
rss_mb="${WARD_FUZZ_RSS_MB:-2048}"
timeout="${WARD_FUZZ_TIMEOUT:-10}"

# cargo-fuzz passes -Z flags to rustc; the stable compiler accepts them with this set.
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null 2>&1 || {
    echo "run-all: cargo-fuzz not found; install it with: cargo install cargo-fuzz" >&2
    exit 2
}

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[ "${#targets[@]}" -gt 0 ] || { echo "run-all: no fuzz targets" >&2; exit 2; }

./make-seeds.sh || exit 2
echo "run-all: building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build -s "$sanitizer" "$target" || { echo "run-all: build of $target failed" >&2; exit 2; }
done

logs="$here/logs"
mkdir -p "$logs"
summary=()
failed=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$logs/$target.log"
    echo "run-all: $target for ${seconds}s (log: $log)"
    start=$(date +%s)
    cargo fuzz run -s "$sanitizer" "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
    entries=$(find "corpus/$target" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        status=ok
    else
        status="CRASH (exit $rc)"
        failed=1
        artifact=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -1)
        [ -n "$artifact" ] && status="$status: fuzz/$artifact"
        tail -n 40 "$log" | grep -E 'panicked|ERROR|SUMMARY' | head -5 | sed 's/^/    /'
    fi
    summary+=("$(printf '%-14s %5ss  %10s runs  cov %6s  corpus %6s  %s' \
        "$target" "$elapsed" "${runs:-?}" "${cov:-?}" "$entries" "$status")")
done

echo
echo "run-all summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
