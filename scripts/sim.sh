#!/usr/bin/env bash
# The tier-1 simulator over a large seed range, in a release build.
#
#   bash scripts/sim.sh                 # 10,000 seeds per scenario (CI)
#   SIM_SEEDS=0..100000 bash scripts/sim.sh
#   SIM_SEED=4711 bash scripts/sim.sh   # one seed, e.g. to replay a failure
#
# Scenarios (sim/tests/world_*.rs): csync rolling replication with failover,
# backupd under interrupted streams, dsync between two and three replicas,
# MUPDATE master with slaves and backends, and csync over the IMAP flavour
# and COMPRESS (world_csync_variants).
# A failing seed prints its replay command and writes its trace to
# $SIM_TRACE_DIR (default: $TMPDIR/corvid-sim). See sim/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SIM_SEED:-}" ]; then
  export SIM_SEEDS="${SIM_SEEDS:-0..10000}"
fi
start=$(date +%s)
cargo test --release --no-fail-fast -p sim --test world_csync --test world_dsync --test world_mupdate --test world_csync_variants -- --test-threads="${SIM_THREADS:-2}" --nocapture 2>&1 \
  | grep -v '^\s*$'
echo "sim.sh: seeds ${SIM_SEED:-$SIM_SEEDS} done in $(( $(date +%s) - start )) s (including the build)"
