#!/usr/bin/env bash
# scripts/bench/backupd.sh — the real Cyrus 3.6 sync_client backing up into
# the real Cyrus 3.6 backupd and into `corvid backupd`, side by side, on the
# same corpus: wall time, server CPU, bytes on disk, and the ratios; then
# `corvid backup restore` of the big user into the real replica, timed
# against its backup.
#
#   scripts/bench/backupd.sh [--big N] [--users U] [--per-user M] [--incr K]
#                            [--shared-users S] [--reuse TAG]
#
# --reuse TAG: the big user kbTAG and users kuTAGx1..U of an earlier run
# (interrupted after building its corpus) are on the master already; only
# the shared users of T5 are built.
#
# Defaults are the issue's anchor: one user with 10,000 messages (T1
# initial -u), 100 users × 100 messages (T2, one sync_client run over all
# of them), a rolling round (one new message to each of the 100 users,
# then one run over them: T3), 100 new messages for the big user (T4
# incremental -u), and T5: 100 more users with M messages each, half of
# them byte-identical across all users (IMAP APPEND of the same bytes, so
# the same GUID), backed up in one run — the disk each backup grew by.
# Needs the real peers (scripts/peers/start.sh; run as
# root) and their env file ($CORVID_PEERS_ENV, else /tmp/corvid-peers/env).
#
# The real backupd runs as Cyrus runs it: a private master(8) instance
# (created under a temp dir, port CORVID_PEERS_PORT_BASE+25) with
# `backupd -U 1`, so each connection's process exits and its CPU is reaped
# into the master's cutime+cstime. corvid's CPU is utime+stime of its
# process. Disk = du of the backup partition (Cyrus: backups + staging and
# its backups.db; corvid: journals, pack, index and its working store).
# CORVID_BIN picks the binary (default: a release build, built if needed).
#
# Measured (2026-11-22 07:37-07:48 UTC, release corvid at journal-first +
# batched pack commits, `--reuse 1c967e --users 48 --per-user 100 --incr 100
# --shared-users 20`: the full 10,000-message user; 48 users instead of 100
# because building the 100-user corpus by LMTP did not finish in the session.
# The 2 cores were shared with other helpers' builds and tests: load average
# 18-24 throughout, so Cyrus's times are ~9x the issue's quiet 12-13 s and
# only the ratios mean anything):
#   T1 initial -u 10,000 msgs   Cyrus 111.25 s / corvid 19.67 s (5.7x faster), CPU 7.06 / 4.33 s
#   T2 48 users x 100 (one run) Cyrus  94.43 s / corvid 10.93 s (8.6x faster), CPU 13.40 / 2.59 s
#   T3 rolling round (+1 x 48)  Cyrus   6.54 s / corvid  2.79 s (2.3x faster), CPU 1.47 / 0.21 s
#   T4 incremental -u (+100)    Cyrus   2.24 s / corvid  1.02 s (2.2x faster), CPU 0.22 / 0.16 s
#   disk after T1-T4            Cyrus 120.6 MB / corvid 57.2 MB (0.47x); corvid's pack 19.3 MB,
#                               journals 0.64 MB, the rest (37 MB) the working store's
#                               uncompressed copy and index
#   T5 20 users x 100, 50% same Cyrus  40.96 s / corvid  2.93 s (14x faster), CPU 4.48 / 0.77 s
#   disk T5 grew by             Cyrus 14.6 MB / corvid 6.2 MB (0.43x) for 9.07 MB of mail
#   restore of the 10,000-msg user into the real replica: 78.79 s (its backup: 19.67 s)
# Before (session 2, reduced corpus, load ~20): T1 3,000 msgs 2.16x SLOWER than Cyrus.
# Not met: >= 10x on the many-user run (8.6x here), restore faster than the
# backup (the real replica takes each message with its own fsyncs), and
# the working store's copy still dominates corvid's disk.
set -euo pipefail
BIG=10000 USERS=100 PER_USER=100 INCR=100 SHARED_USERS=100 REUSE=
while [ $# -gt 0 ]; do
  case $1 in
    --big) BIG=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --per-user) PER_USER=$2; shift 2 ;;
    --incr) INCR=$2; shift 2 ;;
    --shared-users) SHARED_USERS=$2; shift 2 ;;
    --reuse) REUSE=$2; shift 2 ;;
    *) echo "usage: $0 [--big N] [--users U] [--per-user M] [--incr K] [--shared-users S]" >&2; exit 2 ;;
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
WORK=$(mktemp -d /tmp/corvid-bench-bk.XXXXXX)
chmod 755 "$WORK"
CORVID_PID=
CY=$WORK/cyrus
CY_PORT=$(( ${CORVID_PEERS_PORT_BASE:-25000} + 25 ))
CY_NAME=backup.bench
cleanup() {
  [ -n "$CORVID_PID" ] && kill "$CORVID_PID" 2>/dev/null
  [ -f "$CY/master.pid" ] && kill "$(cat "$CY/master.pid")" 2>/dev/null
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

adduser() {  # a master user that can log in (mail.py mkuser logs in as it)
  for realm in "$MASTER_NAME" "$REPLICA_NAME"; do
    printf '%s' "$USER_PASS" | saslpasswd2 -p -c -f "$CORVID_PEERS_RUN/sasldb2" -u "$realm" "$1"
  done
  chown cyrus:mail "$CORVID_PEERS_RUN/sasldb2"
  $MAIL mkuser "$1" Sent Archive
}

start_cyrus_backupd() {
  mkdir -p "$CY"/{backups,staging,tmp} "$CY"/conf/{proc,lock,socket,sync,log,db}
  printf '%s' "$REPL_PASS" | saslpasswd2 -p -c -f "$CORVID_PEERS_RUN/sasldb2" -u "$CY_NAME" "$REPL_USER"
  chown cyrus:mail "$CORVID_PEERS_RUN/sasldb2"
  cat >"$CY/imapd.conf" <<EOF
configdirectory: $CY/conf
partition-default: $CY/tmp
backuppartition-default: $CY/backups
backup_staging_path: $CY/staging
temp_path: $CY/tmp
servername: $CY_NAME
admins: $REPL_USER
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $CORVID_PEERS_RUN/sasldb2
sasl_mech_list: PLAIN LOGIN
EOF
  cat >"$CY/cyrus.conf" <<EOF
START {
  recover cmd="ctl_cyrusdb -C $CY/imapd.conf -r"
}
SERVICES {
  backupd cmd="backupd -C $CY/imapd.conf -U 1" listen="$PEERS_HOST:$CY_PORT" prefork=0 maxchild=10
}
EVENTS {
}
EOF
  chown -R cyrus:mail "$CY"
  CYRUS_SYSLOG_PREFIX=bench-backupd "$CYREXEC" /usr/lib/cyrus/bin/master \
    -C "$CY/imapd.conf" -M "$CY/cyrus.conf" -p "$CY/master.pid" -d -L "$CY/master.log"
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$PEERS_HOST/$CY_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "Cyrus backupd did not come up on $CY_PORT; see $CY/master.log" >&2; exit 1
}

start_corvid() {
  local d=$WORK/corvid
  mkdir -p "$d/backup"
  echo "$REPL_PASS" | "$CORVID_BIN" passwd "$d/passwd" "$REPL_USER" >/dev/null
  cat >"$d/imapd.conf" <<EOF
backuppartition-default: $d/backup
servername: corvid.bench
admins: $REPL_USER
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
corvid_passwd_file: $d/passwd
restore_authname: $REPL_USER
restore_password: $REPL_PASS
EOF
  CORVID_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  CORVID_LOG=warn "$CORVID_BIN" backupd -C "$d/imapd.conf" --listen "127.0.0.1:$CORVID_PORT" 2>"$d/log" &
  CORVID_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$CORVID_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "corvid backupd did not start" >&2; exit 1
}

ticks_pid() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_cyrus() {
  local m; m=$(cat "$CY/master.pid")
  local t; t=$(awk '{print $16 + $17}' "/proc/$m/stat")
  for c in $(pgrep -P "$m" -f backupd || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# run TARGET(cyrus|corvid) ARGS... -> sets WALL (s) and CPU (s)
run() {
  local target=$1; shift
  local port before after t0 t1
  if [ "$target" = cyrus ]; then port=$CY_PORT; before=$(ticks_cyrus)
  else port=$CORVID_PORT; before=$(ticks_pid "$CORVID_PID"); fi
  t0=$(date +%s.%N)
  $SYNC --port "$port" -- -n backup "$@" >"$WORK/sync.out" 2>&1 || { cat "$WORK/sync.out" >&2; echo "sync_client failed ($target $*)" >&2; exit 1; }
  t1=$(date +%s.%N)
  sleep 0.3  # let Cyrus reap its service process
  if [ "$target" = cyrus ]; then after=$(ticks_cyrus); else after=$(ticks_pid "$CORVID_PID"); fi
  WALL=$(echo "$t1 - $t0" | bc -l)
  CPU=$(echo "($after - $before) / $TICK" | bc -l)
}

row() {  # NAME cyrus_wall corvid_wall cyrus_cpu corvid_cpu
  printf '%-36s %9.2f %9.2f %7.2fx %9.2f %9.2f %7.2fx\n' "$1" "$2" "$3" \
    "$(echo "$3 / ($2 + 0.0001)" | bc -l)" "$4" "$5" "$(echo "$5 / ($4 + 0.0001)" | bc -l)"
}

tag=${REUSE:-$(printf '%x' $(( $(date +%s%N) / 1000000 % 16777215 )))}
big=kb$tag
users=()
for i in $(seq "$USERS"); do users+=("ku${tag}x$i"); done
if [ -z "$REUSE" ]; then
  echo "# building corpus ($big: $BIG msgs; $USERS users x $PER_USER msgs)" >&2
  adduser "$big"
  $MAIL lmtp "$big" "$BIG"
  for u in "${users[@]}"; do
    adduser "$u"
    $MAIL lmtp "$u" "$PER_USER"
  done
else
  echo "# reusing corpus $tag" >&2
fi
shared=()
for i in $(seq "$SHARED_USERS"); do
  u=ks${tag}$$x$i
  adduser "$u"
  shared+=("$u")
done
# Half of each shared user's messages are the same bytes for every user.
python3 - "$WORK/shared.bytes" "$PER_USER" "${shared[@]}" <<'PY'
import imaplib, os, random, sys
out = sys.argv[1]; per = int(sys.argv[2]); users = sys.argv[3:]
total = 0
host = os.environ["PEERS_HOST"]; port = int(os.environ["MASTER_IMAP_PORT"])
def msg(seed, to):
    r = random.Random(seed)
    body = "\r\n".join(" ".join(r.choice("backup shared message quota sieve mailbox".split())
                                for _ in range(12)) for _ in range(r.randint(20, 80)))
    return ("From: list@example.org\r\nTo: %s\r\nSubject: bench %s\r\n"
            "Message-ID: <%s@corvid.test>\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\n\r\n%s\r\n"
            % (to, seed, seed, body)).encode()
for u in users:
    c = imaplib.IMAP4(host, port); c.login(u, os.environ["USER_PASS"])
    for i in range(per):
        m = msg("shared-%d" % i, "list@example.org") if i % 2 == 0 else msg("%s-%d" % (u, i), u)
        typ, _ = c.append("INBOX", None, None, m)
        assert typ == "OK", typ
        total += len(m)
    c.logout()
open(out, "w").write("%d\n" % total)
PY
start_cyrus_backupd
start_corvid

printf '%-36s %9s %9s %8s %9s %9s %8s\n' test "cyrus s" "corvid s" "ratio" "cyrus cpu" "corvid cpu" "ratio"
run cyrus -u "$big"; cw=$WALL cc=$CPU
run corvid -u "$big"; row "T1 initial -u ($BIG msgs)" "$cw" "$WALL" "$cc" "$CPU"; T1_CORVID=$WALL
run cyrus -u "${users[@]}"; cw=$WALL cc=$CPU
run corvid -u "${users[@]}"; row "T2 initial $USERS users x $PER_USER" "$cw" "$WALL" "$cc" "$CPU"
for u in "${users[@]}"; do $MAIL lmtp "$u" 1 --seed 77; done
run cyrus -u "${users[@]}"; cw=$WALL cc=$CPU
run corvid -u "${users[@]}"; row "T3 rolling round (+1 msg x $USERS)" "$cw" "$WALL" "$cc" "$CPU"
$MAIL lmtp "$big" "$INCR" --seed 99
run cyrus -u "$big"; cw=$WALL cc=$CPU
run corvid -u "$big"; row "T4 incremental -u (+$INCR msgs)" "$cw" "$WALL" "$cc" "$CPU"

cyd() { du -sb "$CY/backups" "$CY/staging" "$CY/conf" | awk '{s+=$1} END {print s}'; }
cod() { du -sb "$WORK/corvid/backup" | awk '{print $1}'; }
cy0=$(cyd) co0=$(cod)
printf '%-36s %9d %9d %7.2fx   (bytes on disk)\n' "disk after T1-T4" "$cy0" "$co0" "$(echo "$co0 / ($cy0 + 1)" | bc -l)"
pack=$(du -sb "$WORK/corvid/backup/messages" | awk '{print $1}')
jour=$(du -sb "$WORK/corvid/backup/users" | awk '{print $1}')
printf '%-36s %9s %9d             (corvid: zstd message pack alone)\n' "" "" "$pack"
printf '%-36s %9s %9d             (corvid: journals; the rest is the working store)\n' "" "" "$jour"
if [ "$SHARED_USERS" -gt 0 ]; then
  run cyrus -u "${shared[@]}"; cw=$WALL cc=$CPU
  run corvid -u "${shared[@]}"; row "T5 $SHARED_USERS users x $PER_USER, 50% shared" "$cw" "$WALL" "$cc" "$CPU"
  cy1=$(cyd) co1=$(cod)
  printf '%-36s %9d %9d %7.2fx   (bytes the backup grew by)\n' "disk T5 (50% shared)" \
    "$((cy1 - cy0))" "$((co1 - co0))" "$(echo "($co1 - $co0) / ($cy1 - $cy0 + 1)" | bc -l)"
  printf '%-36s %9d             (bytes of mail those users hold)\n' "" "$(cat "$WORK/shared.bytes")"
fi

# Restore of the big user (corvid only: Cyrus 3.6 restore needs the user
# to exist on the target) into the real replica, where it does not exist.
t0=$(date +%s.%N)
"$CORVID_BIN" backup -C "$WORK/corvid/imapd.conf" restore "$big" \
  --to "$PEERS_HOST:$REPLICA_CSYNC_PORT" >"$WORK/restore.out" 2>&1 || { cat "$WORK/restore.out" >&2; echo "restore failed" >&2; exit 1; }
t1=$(date +%s.%N)
printf '%-36s %9s %9.2f             (T1 backup took %.2f s)\n' "R1 restore $big (corvid)" "" \
  "$(echo "$t1 - $t0" | bc -l)" "$T1_CORVID"
