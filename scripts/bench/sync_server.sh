#!/usr/bin/env bash
# scripts/bench/sync_server.sh — the real Cyrus 3.6 sync_client replicating
# into the real Cyrus sync_server and into `corvid sync_server`, side by
# side, on the same corpus: wall time, server CPU, and the ratio.
#
#   scripts/bench/sync_server.sh [--big N] [--users U] [--per-user M] [--incr K] [--reps R]
#
# Defaults are the lab's anchor (research/csync-lab.md §8): one user with
# 10,000 messages (T1 initial -u), 100 users × 100 messages (T2 initial,
# one sync_client run over all of them), 100 new messages (T3 incremental
# -u). Needs the real peers (scripts/peers/start.sh; run as root) and their
# env file ($CORVID_PEERS_ENV, else /tmp/corvid-peers/env). Every run uses
# fresh user names, so the real replica starts empty for them too.
#
# Server CPU: corvid = utime+stime of its process (/proc/PID/stat);
# Cyrus = the replica master's reaped children (cutime+cstime) plus the
# live sync_server processes' utime+stime. Wall = the sync_client run.
# Both sides negotiate COMPRESS DEFLATE, as the real client always does.
# CORVID_BIN picks the binary (default: a release build, built if needed).
set -euo pipefail
BIG=10000 USERS=100 PER_USER=100 INCR=100 REPS=1
while [ $# -gt 0 ]; do
  case $1 in
    --big) BIG=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --per-user) PER_USER=$2; shift 2 ;;
    --incr) INCR=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    *) echo "usage: $0 [--big N] [--users U] [--per-user M] [--incr K] [--reps R]" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ENV_FILE=${CORVID_PEERS_ENV:-/tmp/corvid-peers/env}
[ -f "$ENV_FILE" ] || { echo "no peers env file $ENV_FILE: run scripts/peers/start.sh" >&2; exit 1; }
while IFS='=' read -r k v; do
  case $k in ''|'#'*) continue ;; esac
  export "$k=$v"
done <"$ENV_FILE"
export CORVID_PEERS_ENV=$ENV_FILE
if [ -z "${CORVID_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p bins)
  CORVID_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/corvid
fi
MAIL="python3 $ROOT/scripts/peers/mail.py"
SYNC="bash $ROOT/scripts/peers/sync-client.sh"
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/corvid-bench-ss.XXXXXX)
chmod 755 "$WORK"
CORVID_PID=
cleanup() { [ -n "$CORVID_PID" ] && kill "$CORVID_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

adduser() {  # a master user that can log in (mail.py mkuser logs in as it)
  for realm in "$MASTER_NAME" "$REPLICA_NAME"; do
    printf '%s' "$USER_PASS" | saslpasswd2 -p -c -f "$CORVID_PEERS_RUN/sasldb2" -u "$realm" "$1"
  done
  chown cyrus:mail "$CORVID_PEERS_RUN/sasldb2"
  $MAIL mkuser "$1" Sent Archive
}

# CPU seconds (in ticks) of a process, or of Cyrus's replica services.
ticks_pid() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_cyrus() {
  local m; m=$(cat "$CORVID_PEERS_RUN/replica/master.pid")
  local t; t=$(awk '{print $16 + $17}' "/proc/$m/stat")
  for c in $(pgrep -P "$m" -f sync_server || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

start_corvid() {
  local d=$WORK/corvid-$1
  mkdir -p "$d/conf" "$d/part"
  echo replpass | "$CORVID_BIN" passwd "$d/passwd" repl >/dev/null
  cat >"$d/imapd.conf" <<EOF
configdirectory: $d/conf
partition-default: $d/part
servername: corvid.bench
admins: repl
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
corvid_passwd_file: $d/passwd
EOF
  CORVID_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CORVID_LOG=warn "$CORVID_BIN" sync_server -C "$d/imapd.conf" --listen "127.0.0.1:$CORVID_PORT" 2>"$d/log" &
  CORVID_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$CORVID_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "corvid sync_server did not start" >&2; exit 1
}

# run TARGET(cyrus|corvid) ARGS... -> sets WALL (s) and CPU (s)
run() {
  local target=$1; shift
  local port before after t0 t1
  if [ "$target" = cyrus ]; then port=$REPLICA_CSYNC_PORT; before=$(ticks_cyrus)
  else port=$CORVID_PORT; before=$(ticks_pid "$CORVID_PID"); fi
  t0=$(date +%s.%N)
  $SYNC --port "$port" -- "$@" >"$WORK/sync.out" 2>&1 || { cat "$WORK/sync.out" >&2; echo "sync_client failed ($target $*)" >&2; exit 1; }
  t1=$(date +%s.%N)
  sleep 0.2  # let Cyrus reap its service process
  if [ "$target" = cyrus ]; then after=$(ticks_cyrus); else after=$(ticks_pid "$CORVID_PID"); fi
  WALL=$(echo "$t1 - $t0" | bc -l)
  CPU=$(echo "($after - $before) / $TICK" | bc -l)
}

row() {  # NAME cyrus_wall corvid_wall cyrus_cpu corvid_cpu
  printf '%-34s %9.2f %9.2f %7.2fx %9.2f %9.2f %7.2fx\n' "$1" "$2" "$3" \
    "$(echo "$3 / ($2 + 0.0001)" | bc -l)" "$4" "$5" "$(echo "$5 / ($4 + 0.0001)" | bc -l)"
}

printf '%-34s %9s %9s %8s %9s %9s %8s\n' test "cyrus s" "corvid s" "ratio" "cyrus cpu" "corvid cpu" "ratio"
for rep in $(seq "$REPS"); do
  tag=$(printf '%x' $(( $(date +%s%N) / 1000000 % 16777215 )))
  big=bb$tag
  echo "# rep $rep: building corpus ($big: $BIG msgs; $USERS users x $PER_USER msgs)" >&2
  adduser "$big"
  $MAIL lmtp "$big" "$BIG"
  users=()
  for i in $(seq "$USERS"); do
    u=bu${tag}x$i
    adduser "$u"
    $MAIL lmtp "$u" "$PER_USER"
    users+=("$u")
  done
  start_corvid "$rep"

  run cyrus -u "$big"; cw=$WALL cc=$CPU
  run corvid -u "$big"; row "T1 initial -u ($BIG msgs)" "$cw" "$WALL" "$cc" "$CPU"

  run cyrus -u "${users[@]}"; cw=$WALL cc=$CPU
  run corvid -u "${users[@]}"; row "T2 initial $USERS users x $PER_USER" "$cw" "$WALL" "$cc" "$CPU"

  $MAIL lmtp "$big" "$INCR"
  run cyrus -u "$big"; cw=$WALL cc=$CPU
  run corvid -u "$big"; row "T3 incremental -u (+$INCR msgs)" "$cw" "$WALL" "$cc" "$CPU"

  run cyrus -u "$big"; cw=$WALL cc=$CPU
  run corvid -u "$big"; row "T4 unchanged -u (GET only)" "$cw" "$WALL" "$cc" "$CPU"

  kill "$CORVID_PID"; wait "$CORVID_PID" 2>/dev/null || true; CORVID_PID=
  rm -f "$CORVID_PEERS_RUN/master/conf/sync/log"
done
