#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seed inputs built from Nix's own test data and traces
# (/work/shared/nix-test-data, /work/shared/nix-traces; override with WARD_NIX_TEST_DATA and
# WARD_NIX_TRACES) plus a few hand-written ones. Seeds are named seed-*, so running this again
# only refreshes them and leaves what the fuzzer found alone. The corpus is gitignored.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
test_data="${WARD_NIX_TEST_DATA:-/work/shared/nix-test-data}"
traces="${WARD_NIX_TRACES:-/work/shared/nix-traces}"
corpus="$here/corpus"

seed() { # seed TARGET NAME < bytes
    mkdir -p "$corpus/$1"
    cat >"$corpus/$1/seed-$2"
}

seed_file() { # seed_file TARGET FILE...
    local target="$1" f
    shift
    for f in "$@"; do
        [ -f "$f" ] || continue
        # The parent directory keeps json-1/pure.json and json-2/pure.json apart.
        seed "$target" "$(basename "$(dirname "$f")")-$(basename "$f")" <"$f"
    done
}

# ---- NARs: Nix's good and bad NARs, plus dumps of a small tree covering every node kind ----
for target in nar_reader nar_unpack; do
    seed_file "$target" "$test_data"/libutil-tests/data/nars/*.nar
done
if command -v nix-store >/dev/null 2>&1; then
    tree="$(mktemp -d)"
    trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree/t/dir/nested" "$tree/t/empty-dir"
    printf 'hello\n' >"$tree/t/file"
    printf '#!/bin/sh\necho hi\n' >"$tree/t/exec"
    chmod +x "$tree/t/exec"
    : >"$tree/t/dir/empty-file"
    printf '12345678' >"$tree/t/dir/nested/eight-bytes"
    ln -s ../file "$tree/t/dir/link"
    ln -s /absolute/target "$tree/t/abs-link"
    for node in t t/file t/exec t/dir t/dir/link t/empty-dir; do
        name="dump-$(echo "$node" | tr / _)"
        for target in nar_reader nar_unpack; do
            nix-store --dump "$tree/$node" | seed "$target" "$name.nar"
        done
    done
else
    echo "make-seeds: nix-store not found, NAR seeds are only Nix's test files" >&2
fi

# ---- narinfo: text written by Nix 2.8 and variants, and Nix's JSON forms ----------------------
seed narinfo nix28.narinfo <<'NARINFO'
StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt
URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz
Compression: xz
FileHash: sha256:17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a
FileSize: 128
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Sig: k1:UkIWnW+h9R5rSTWuGQZO1P+erwrDTGT5S5Px8y4qOFBVzWmjVp2NJ89MFfVy2KS4dcGu4fiBAXFIrkEIxkcEBA==
CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NARINFO
seed narinfo optional-keys.narinfo <<'NARINFO'
StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt
URL: nar/x.nar
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt  00000000000000000000000000000000-a
Deriver: 00000000000000000000000000000000-a.drv
System: x86_64-linux
StoreDir: /nix/store
X-Unknown: whatever: with colons
Sig: b:AAAA
Sig: a:AAAA
NARINFO
seed narinfo text-ca.narinfo <<'NARINFO'
StorePath: /nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt
URL: nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar
Compression: none
NarHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
NarSize: 18446744073709551615
References: 00000000000000000000000000000000-a
Deriver: unknown-deriver
CA: text:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NARINFO
seed_file narinfo "$test_data"/libstore-tests/data/nar-info/json-*/*.json

# ---- derivations: Nix's .drv files, each prefixed with its name and a newline ------------------
for f in "$test_data"/libstore-tests/data/derivation/*.drv \
    "$test_data"/libstore-tests/data/derivation/*/*.drv; do
    [ -f "$f" ] || continue
    # Some entries are git symlinks stored as a file holding the link target: not a .drv.
    case "$(head -c 3 "$f")" in ../) continue ;; esac
    json="${f%.drv}.json"
    name=""
    if [ -f "$json" ]; then
        name=$(grep -o '"name": *"[^"]*"' "$json" | head -1 | sed 's/.*"\([^"]*\)"$/\1/' || true)
    fi
    if [ -z "$name" ]; then
        name=$(grep -o '("name","[^"]*")' "$f" | head -1 | sed 's/("name","\(.*\)")/\1/' || true)
    fi
    [ -n "$name" ] || name=fuzz
    { printf '%s\n' "$name"; cat "$f"; } |
        seed derivation "$(basename "$(dirname "$f")")-$(basename "$f")"
done

# ---- worker protocol: what real Nix 2.8 clients sent, handshake included ---------------------
seed_file worker_op "$traces"/*.client.bin

# ---- ward's IPC: a few messages of each enum the broker and the store-writer decode -----------
(cd "$here" && RUSTC_BOOTSTRAP=1 cargo run -q --example ipc_seeds -- \
    "$corpus/ipc_broker" "$corpus/ipc_store_writer")

# ---- nix.conf: settings of every kind, includes, extra-, and ward's defaults printed --------
seed nix_conf debian.conf <<'CONF'
# see https://nixos.org/nix/manual/#sec-conf-file
sandbox = false
CONF
seed nix_conf kinds.conf <<'CONF'
trusted-users = root @wheel
allowed-users = *
extra-substituters = https://cache.example.org?priority=30 file:///srv/cache
trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
max-jobs = auto
cores = 0
min-free = 2G
max-free = 10G
sandbox = relaxed
sandbox-paths = /bin/sh=/bin/busybox /etc/ssl/certs?
experimental-features = nix-command flakes ca-derivations
build-users-group = nixbld
!include /nonexistent/ward.conf
include /nonexistent/other.conf
connect-timeout = 5
narinfo-cache-negative-ttl = 3600
keep-outputs = true
fallback = false
CONF
if [ -x "$here/../target/debug/ward" ]; then
    NIX_CONF_DIR=/nonexistent "$here/../target/debug/ward" show-config 2>/dev/null |
        seed nix_conf ward-show-config.conf || true
fi

echo "make-seeds: $(find "$corpus" -name 'seed-*' | wc -l) seeds in $corpus"
