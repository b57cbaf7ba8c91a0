#!/usr/bin/env bash
# scripts/bench/sync_client.sh — the master side of replication, side by
# side on one corpus: corvid sync_client → corvid sync_server against the
# real Cyrus 3.6 sync_client → the real Cyrus sync_server. Prints wall
# times and the ratio (corvid / Cyrus; below 1 is faster).
#
#   scripts/bench/sync_client.sh [--big N] [--users U] [--per-user M] [--incr K] [--rounds R]
#
# Tests (defaults are the issue's anchor):
#   T1 initial -u of one user with N (10,000) messages
#   T2 initial -u of U (100) users × M (100) messages, one run
#   T3 incremental -u after K (100) new messages
#   T4 rolling rounds: R (20) rounds, each one new message for each of 10
#      users, replayed from a sync log file (`-f`) the moment the
#      messages are committed; the round's wall time is the lag from the
#      last commit to the replica's OK, reported as p50/p99.
#
# How the two sides get the same corpus: mail is delivered to the peers'
# real Cyrus master (LMTP). Cyrus side: the master's real sync_client into
# the real replica (fresh user names, so it starts empty). corvid side: the
# master is first replicated (untimed) into corvid store A with `corvid
# sync_server`; then the timed run is `corvid sync_client` from store A
# into a second, empty `corvid sync_server` B. (One process holds a corvid
# store at a time, so A's server stops before its client runs.) Both sides
# use COMPRESS DEFLATE (Cyrus's client always does; corvid's too).
#
# Needs the real peers (scripts/peers/start.sh; run as root) and their env
# file ($CORVID_PEERS_ENV, else /tmp/corvid-peers/env). CORVID_BIN picks
# the binary (default: a release build, built if needed).
set -euo pipefail
BIG=10000 USERS=100 PER_USER=100 INCR=100 ROUNDS=20 ROUND_USERS=10
while [ $# -gt 0 ]; do
  case $1 in
    --big) BIG=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --per-user) PER_USER=$2; shift 2 ;;
    --incr) INCR=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "usage: $0 [--big N] [--users U] [--per-user M] [--incr K] [--rounds R]" >&2; exit 2 ;;
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
WORK=$(mktemp -d /tmp/corvid-bench-sc.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

adduser() {
  for realm in "$MASTER_NAME" "$REPLICA_NAME"; do
    printf '%s' "$USER_PASS" | saslpasswd2 -p -c -f "$CORVID_PEERS_RUN/sasldb2" -u "$realm" "$1"
  done
  chown cyrus:mail "$CORVID_PEERS_RUN/sasldb2"
  $MAIL mkuser "$1" Sent Archive
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# mkstore NAME: a corvid store dir with an imapd.conf (server and client).
mkstore() {
  local d=$WORK/$1
  mkdir -p "$d/conf" "$d/part"
  echo replpass | "$CORVID_BIN" passwd "$d/passwd" repl >/dev/null
  cat >"$d/imapd.conf" <<EOF
configdirectory: $d/conf
partition-default: $d/part
servername: corvid-$1.bench
admins: repl
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
corvid_passwd_file: $d/passwd
sync_host: 127.0.0.1
sync_authname: repl
sync_password: replpass
sync_try_imap: no
EOF
}

# serve NAME -> PORT_<NAME>, PID_<NAME>
serve() {
  local d=$WORK/$1 port
  port=$(free_port)
  CORVID_LOG=warn "$CORVID_BIN" sync_server -C "$d/imapd.conf" --listen "127.0.0.1:$port" 2>>"$d/server.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  printf -v "PORT_$1" '%s' "$port"
  printf -v "PID_$1" '%s' "$pid"
}
unserve() { local v="PID_$1"; kill "${!v}" 2>/dev/null || true; wait "${!v}" 2>/dev/null || true; }

# feed ARGS...: the real master into corvid store A (untimed).
feed() {
  serve a
  $SYNC --port "$PORT_a" -- "$@" >"$WORK/feed.out" 2>&1 || { cat "$WORK/feed.out" >&2; echo "feeding A failed" >&2; exit 1; }
  unserve a
}

now() { date +%s.%N; }

# cyrus ARGS... -> WALL: the real sync_client into the real replica.
cyrus() {
  local t0 t1
  t0=$(now)
  $SYNC --port "$REPLICA_CSYNC_PORT" -- "$@" >"$WORK/sync.out" 2>&1 || { cat "$WORK/sync.out" >&2; echo "cyrus sync_client failed ($*)" >&2; exit 1; }
  t1=$(now)
  WALL=$(echo "$t1 - $t0" | bc -l)
}

# corvid ARGS... -> WALL: corvid sync_client from A into B.
corvid() {
  local t0 t1 conf=$WORK/a/client.conf
  { cat "$WORK/a/imapd.conf"; echo "sync_port: $PORT_b"; } >"$conf"
  t0=$(now)
  "$CORVID_BIN" sync_client -C "$conf" "$@" >"$WORK/csync.out" 2>&1 || { cat "$WORK/csync.out" >&2; echo "corvid sync_client failed ($*)" >&2; exit 1; }
  t1=$(now)
  WALL=$(echo "$t1 - $t0" | bc -l)
}

row() {  # NAME cyrus_wall corvid_wall
  printf '%-40s %9.3f %9.3f %7.2fx\n' "$1" "$2" "$3" "$(echo "$3 / ($2 + 0.0001)" | bc -l)"
}

pct() {  # P FILE -> the P-th percentile (nearest rank) of the numbers in FILE
  sort -g "$2" | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if(i<1)i=1; if(i>NR)i=NR; print a[i]*1000}'
}

tag=$(printf '%x' $(( $(date +%s%N) / 1000000 % 16777215 )))
big=cb$tag
echo "# building corpus ($big: $BIG msgs; $USERS users x $PER_USER msgs)" >&2
adduser "$big"
$MAIL lmtp "$big" "$BIG"
users=()
for i in $(seq "$USERS"); do
  u=cu${tag}x$i
  adduser "$u"
  $MAIL lmtp "$u" "$PER_USER"
  users+=("$u")
done
mkstore a
mkstore b
feed -u "$big" "${users[@]}"
serve b

printf '%-40s %9s %9s %8s\n' test "cyrus s" "corvid s" "ratio"
cyrus -u "$big"; cw=$WALL
corvid -u "$big"; row "T1 initial -u ($BIG msgs)" "$cw" "$WALL"

cyrus -u "${users[@]}"; cw=$WALL
corvid -u "${users[@]}"; row "T2 initial $USERS users x $PER_USER" "$cw" "$WALL"

$MAIL lmtp "$big" "$INCR"
unserve b; feed -u "$big"; serve b
cyrus -u "$big"; cw=$WALL
corvid -u "$big"; row "T3 incremental -u (+$INCR msgs)" "$cw" "$WALL"

cyrus -u "$big"; cw=$WALL
corvid -u "$big"; row "T3b unchanged -u (GET only)" "$cw" "$WALL"

# T4: rolling rounds. The master's sync log names exactly the round's
# mailboxes (it is emptied first); each side replays that list once.
: >"$WORK/lag.cyrus"; : >"$WORK/lag.corvid"
round_users=("${users[@]:0:$ROUND_USERS}")
for r in $(seq "$ROUNDS"); do
  rm -f "$CORVID_PEERS_RUN/master/conf/sync/log"
  for u in "${round_users[@]}"; do $MAIL lmtp "$u" 1; done
  log=$WORK/round-$r.log
  cp "$CORVID_PEERS_RUN/master/conf/sync/log" "$log"
  chown cyrus "$log"
  cyrus -R -f "$log"; echo "$WALL" >>"$WORK/lag.cyrus"
  unserve b; feed -u "${round_users[@]}"; serve b
  # the same changes, as a Cyrus-format log for corvid's -f
  for u in "${round_users[@]}"; do echo "APPEND user.$u"; done >"$log.corvid"
  corvid -f "$log.corvid"; echo "$WALL" >>"$WORK/lag.corvid"
done
printf '%-40s %9.1f %9.1f %7.2fx\n' "T4 rolling round lag p50 ms (${#round_users[@]} msgs)" \
  "$(pct 50 "$WORK/lag.cyrus")" "$(pct 50 "$WORK/lag.corvid")" \
  "$(echo "$(pct 50 "$WORK/lag.corvid") / ($(pct 50 "$WORK/lag.cyrus") + 0.0001)" | bc -l)"
printf '%-40s %9.1f %9.1f %7.2fx\n' "T4 rolling round lag p99 ms (${#round_users[@]} msgs)" \
  "$(pct 99 "$WORK/lag.cyrus")" "$(pct 99 "$WORK/lag.corvid")" \
  "$(echo "$(pct 99 "$WORK/lag.corvid") / ($(pct 99 "$WORK/lag.cyrus") + 0.0001)" | bc -l)"
rm -f "$CORVID_PEERS_RUN/master/conf/sync/log"
