#!/usr/bin/env bash
# Installs everything corvid's tests need on a fresh Debian machine (the real
# Cyrus and Dovecot peers among them), starts the peers on 127.0.0.1, and runs
# every test. `.ci/run` calls exactly this.
#
# Idempotent and non-interactive: re-running restarts the peers from scratch;
# on exit (success, failure or interrupt) the peers are stopped, so no daemon
# outlives this script. Tests find the peers through CORVID_PEERS_ENV; a live
# test without peers SKIPs, except with CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

export CORVID_PEERS_RUN="${CORVID_PEERS_RUN:-/tmp/corvid-peers}"
export CORVID_PEERS_ENV="$CORVID_PEERS_RUN/env"

peers=0
if [ "$(id -u)" = 0 ]; then
  bash scripts/peers/install.sh
  peers=1
else
  echo "test.sh: not root: the real Cyrus/Dovecot peers are not installed or started; live tests will SKIP" >&2
fi

cargo build --workspace --all-targets

if [ $peers = 1 ]; then
  trap 'bash scripts/peers/stop.sh' EXIT
  bash scripts/peers/start.sh
fi
status=0
cargo test --workspace --no-fail-fast || status=$?
# The tier-1 simulator: 10,000 seeds per scenario in a release build
# (sim/README.md); runs even when a test above failed, so one run shows both.
bash scripts/sim.sh || status=$?
exit $status
