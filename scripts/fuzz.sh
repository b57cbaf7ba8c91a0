#!/usr/bin/env bash
# Runs the fuzz targets under libFuzzer. Not part of CI (CI replays the
# committed corpus with `cargo test -p fuzz`).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]      one pass
#   scripts/fuzz.sh --rotate SECONDS-PER-TURN [target...] until stopped
#   scripts/fuzz.sh --merge [target...]                   keep what is new
#
# One target runs at a time (the machine has 2 shared cores), under
# `nice -n 19`. Each run appends one line to $CARGO_TARGET_DIR/fuzz-stats.tsv:
# date, target, wall seconds, executions, coverage, features, corpus size,
# crashes, CPU seconds — fuzz/README.md's table is summed from it (`--stats`).
#
# Works on the stable toolchain: cargo-fuzz (`cargo install cargo-fuzz`) is
# run with RUSTC_BOOTSTRAP=1 and `--sanitizer none` (corvid has no unsafe
# code outside one isolated fd call, so AddressSanitizer adds little;
# coverage instrumentation is plain `-Cpasses=sancov-module`, which stable
# rustc supports), and with debug assertions on so overflow and
# debug_assert! fire.
#
# Corpus: libFuzzer writes what it learns to $CARGO_TARGET_DIR/fuzz-corpus/
# <target>/ (not committed) and also reads corpus/seeds/<target>/,
# corpus/fuzz/<target>/ and corpus/regressions/<target>/, with the grammar
# dictionary fuzz/dict/<target>.dict. `--merge` minimizes the working corpus
# against the committed one and copies only inputs that add coverage into
# corpus/fuzz/<target>/ (commit those). A crash lands in
# $CARGO_TARGET_DIR/fuzz-artifacts/<target>/; fix it, then copy the file to
# corpus/regressions/<target>/ so `cargo test -p fuzz` replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
all=(frame dlist csync mupdate dsync compress sasl config capture mupdate_server csync_server)
: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
stats="$CARGO_TARGET_DIR/fuzz-stats.tsv"

build() {
    # FUZZ_NO_BUILD=1: use the binaries already built (e.g. while the tree
    # is mid-edit).
    [ "${FUZZ_NO_BUILD:-}" = 1 ] && return 0
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build --fuzz-dir fuzz -s none -a --features libfuzzer
}

# run TARGET SECONDS: one libFuzzer run; returns 1 on a crash.
run() {
    local t=$1 secs=$2
    local work="$CARGO_TARGET_DIR/fuzz-corpus/$t" art="$CARGO_TARGET_DIR/fuzz-artifacts/$t"
    local log="$CARGO_TARGET_DIR/fuzz-logs/$t.$(date -u +%Y%m%dT%H%M%S).log"
    mkdir -p "$work" "$art" "$(dirname "$log")" "corpus/seeds/$t" "corpus/regressions/$t" "corpus/fuzz/$t"
    local dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    local before after start end rc=0
    before=$(ls "$art" | wc -l)
    start=$(date +%s)
    echo "== $t: ${secs}s (log $log)"
    # CPU seconds (user+sys) of the fuzzer: at nice 19 on a shared machine
    # wall time overstates the work done, so the table counts CPU time too.
    local cpu_file
    cpu_file=$(mktemp)
    { TIMEFORMAT='%U %S'; time nice -n 19 "$bin/$t" "$work" "corpus/seeds/$t" "corpus/fuzz/$t" "corpus/regressions/$t" \
        "${dict[@]}" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=30 \
        -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1 || rc=$?; } 2>"$cpu_file"
    local cpu
    cpu=$(awk '{printf "%d", $1 + $2}' "$cpu_file")
    rm -f "$cpu_file"
    end=$(date +%s)
    after=$(ls "$art" | wc -l)
    local execs cov ft corp
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corp=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$((end - start))" \
        "${execs:-0}" "${cov:-0}" "${ft:-0}" "${corp:-0}" "$((after - before))" "${cpu:-0}" >>"$stats"
    tail -n 8 "$log"
    if [ "$after" -gt "$before" ] || [ "$rc" -ne 0 ]; then
        echo "!! $t: exit $rc, crash artifacts in $art"
        return 1
    fi
}

# merge TARGET: inputs of the working corpus that add coverage over the
# committed seeds, regressions and corpus/fuzz go to corpus/fuzz/TARGET.
merge() {
    local t=$1 tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/base" "corpus/fuzz/$t"
    cp corpus/seeds/"$t"/* corpus/regressions/"$t"/* corpus/fuzz/"$t"/* "$tmp/base/" 2>/dev/null || true
    ls "$tmp/base" >"$tmp/before"
    # Edge coverage only (no hit-count buckets) and inputs cut to 4 KiB: the
    # committed set stays small enough to replay in CI in seconds.
    nice -n 19 "$bin/$t" -merge=1 -use_counters=0 -max_len=4096 -timeout=30 -rss_limit_mb=2048 \
        "$tmp/base" "$CARGO_TARGET_DIR/fuzz-corpus/$t" >"$tmp/log" 2>&1 || { tail -5 "$tmp/log"; }
    local n=0
    for f in "$tmp"/base/*; do
        local b
        b=$(basename "$f")
        if ! grep -qxF "$b" "$tmp/before"; then
            cp "$f" "corpus/fuzz/$t/$b"
            n=$((n + 1))
        fi
    done
    echo "== $t: $n new inputs in corpus/fuzz/$t"
    rm -rf "$tmp"
}

case "${1:-}" in
--rotate)
    secs=${2:?seconds per turn}
    shift 2
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
    build
    while :; do
        for t in "${targets[@]}"; do run "$t" "$secs" || true; done
    done
    ;;
--merge)
    shift
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
    for t in "${targets[@]}"; do merge "$t"; done
    ;;
--stats)
    # Per target: runs, wall hours, executions, last coverage, crashes.
    awk -F'\t' '{r[$2]++; w[$2]+=$3; e[$2]+=$4; c[$2]=$5; x[$2]+=$8; u[$2]+=$9}
        END {for (t in r) printf "%s\t%d runs\t%.2f h wall\t%.2f h cpu\t%d execs\tcov %s\t%d crashes\n", t, r[t], w[t]/3600, u[t]/3600, e[t], c[t], x[t]}' \
        "$stats" | sort
    ;;
*)
    secs=${1:-60}
    shift || true
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
    build
    status=0
    for t in "${targets[@]}"; do run "$t" "$secs" || status=1; done
    exit $status
    ;;
esac
