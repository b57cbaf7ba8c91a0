#!/usr/bin/env bash
# scripts/bench/mupdate.sh — the same MUPDATE workload against the real
# Cyrus 3.6 `mupdate -m` (the peers' master) and `corvid mupdate -m`, side
# by side in one run, with ratios (corvid / Cyrus; < 1 = corvid faster).
#
#   scripts/bench/mupdate.sh [-n N] [-c CLIENTS] [--finds F] [--pushes P]
#
# Defaults: N = 100,000 mailboxes loaded as RESERVE+ACTIVATE over 16
# connections, 10,000 FINDs, 20 propagation samples (see `corvid
# mupdate-load --help`). Needs the real peers (scripts/peers/start.sh, as
# root) and their env file ($CORVID_PEERS_ENV, else /tmp/corvid-peers/env).
# corvid listens on the peers' port base + 40 with a fresh database in a
# temporary directory; its RSS at the end is printed. CORVID_BIN picks the
# binary (default: a release build, built if needed). Every run uses fresh
# mailbox names, so the Cyrus master's earlier contents only add size.
set -euo pipefail
N=100000 C=16 FINDS=10000 PUSHES=20
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    -c) C=$2; shift 2 ;;
    --finds) FINDS=$2; shift 2 ;;
    --pushes) PUSHES=$2; shift 2 ;;
    *) echo "usage: $0 [-n N] [-c CLIENTS] [--finds F] [--pushes P]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENV_FILE=${CORVID_PEERS_ENV:-/tmp/corvid-peers/env}
[ -f "$ENV_FILE" ] || { echo "no peers env file $ENV_FILE: run scripts/peers/start.sh" >&2; exit 1; }
while IFS='=' read -r k v; do
  case $k in ''|'#'*) continue ;; esac
  export "$k=$v"
done <"$ENV_FILE"
if [ -z "${CORVID_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p bins)
  CORVID_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/corvid
fi
BASE=$((MUPDATE_PORT - 21))
PORT=$((BASE + 40))
D=$(mktemp -d /tmp/corvid-bench-mupdate.XXXXXX)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$D"' EXIT
printf '%s\n' "$MUPDATE_PASS" | "$CORVID_BIN" passwd "$D/passwd" "$MUPDATE_USER" >/dev/null
cat >"$D/imapd.conf" <<EOF
configdirectory: $D
servername: corvid-bench
admins: $MUPDATE_USER
corvid_passwd_file: $D/passwd
allowplaintext: yes
EOF
CORVID_LOG=warn "$CORVID_BIN" mupdate -C "$D/imapd.conf" -m --listen "$PEERS_HOST:$PORT" 2>"$D/corvid.log" &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/$PEERS_HOST/$PORT") 2>/dev/null && break; sleep 0.1; done
echo "Cyrus: $CYRUS_PEER on $PEERS_HOST:$MUPDATE_PORT; corvid: $CORVID_BIN on $PEERS_HOST:$PORT"
echo "N=$N clients=$C finds=$FINDS pushes=$PUSHES; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$CORVID_BIN" mupdate-load --target "$PEERS_HOST:$MUPDATE_PORT" --target "$PEERS_HOST:$PORT" \
  --user "$MUPDATE_USER" --password "$MUPDATE_PASS" -n "$N" -c "$C" --finds "$FINDS" --pushes "$PUSHES"
echo "corvid master RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$PID/status")"
CYR=$(pgrep -f "mupdate -C $MUPDATE_CONF -m" | head -1 || true)
[ -n "$CYR" ] && echo "Cyrus mupdate RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$CYR/status")"
