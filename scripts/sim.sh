#!/bin/sh
# A longer bounded simulation run (not in CI): N seeds of every scenario,
# one at a time, starting at FIRST. A failure prints its replay command.
#   scripts/sim.sh [N=50] [FIRST=1000]
set -eu
n=${1:-50}
first=${2:-1000}
seed=$first
end=$((first + n))
while [ "$seed" -lt "$end" ]; do
    for t in mupdate:mupdate_converges_under_faults csync_crash:csync_replica_survives_crashes_and_retry_converges; do
        bin=${t%%:*}
        t=${t#*:}
        if ! CORVID_SIM_SEED=$seed cargo test -q -p sim --test "$bin" "$t" >/dev/null 2>&1; then
            echo "FAILED: CORVID_SIM_SEED=$seed cargo test -p sim $t"
            exit 1
        fi
    done
    seed=$((seed + 1))
done
echo "ok: seeds $first..$((end - 1))"
