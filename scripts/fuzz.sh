#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer for a bounded time. Not part of CI
# (CI replays the committed corpus with `cargo test -p fuzz`).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Works on the stable toolchain: cargo-fuzz (`cargo install cargo-fuzz`) is
# run with RUSTC_BOOTSTRAP=1 and `--sanitizer none` (corvid has no unsafe
# code, so AddressSanitizer adds nothing; coverage instrumentation is
# plain `-Cpasses=sancov-module`, which stable rustc supports), and with
# debug assertions on so overflow and debug_assert! fire.
#
# Corpus: libFuzzer writes what it learns to $CARGO_TARGET_DIR/fuzz-corpus/
# <target>/ (not committed) and also reads corpus/seeds/<target>/ and
# corpus/regressions/<target>/. A crash lands in
# $CARGO_TARGET_DIR/fuzz-artifacts/<target>/; fix it, then copy the file to
# corpus/regressions/<target>/ so `cargo test -p fuzz` replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame dlist csync mupdate dsync compress sasl config capture mupdate_server csync_server)
fi
: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz -s none -a --features libfuzzer "${targets[@]/#/--bin=}" 2>/dev/null \
    || RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz -s none -a --features libfuzzer
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
status=0
for t in "${targets[@]}"; do
    work="$CARGO_TARGET_DIR/fuzz-corpus/$t"
    art="$CARGO_TARGET_DIR/fuzz-artifacts/$t"
    mkdir -p "$work" "$art" "corpus/seeds/$t" "corpus/regressions/$t"
    echo "== $t: ${secs}s"
    if ! "$bin/$t" "$work" "corpus/seeds/$t" "corpus/regressions/$t" \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=30 \
        -artifact_prefix="$art/" -print_final_stats=1 2>&1 | tail -n 12; then
        status=1
    fi
    if [ -n "$(ls -A "$art")" ]; then
        echo "!! $t: crash artifacts in $art"
        status=1
    fi
done
exit $status
