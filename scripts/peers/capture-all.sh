#!/usr/bin/env bash
# capture-all.sh [csync|mupdate]... -- regenerate the live transcripts in
# corpus/traces/ from the real daemons, through `corvid capture`:
#
#   corpus/traces/csync/live-<scenario>.{txt,c2s.bin,s2c.bin}
#       real sync_client (master) -> capture relay -> real sync_server (replica)
#   corpus/traces/mupdate/<scenario>.{txt,c2s.bin,s2c.bin}
#       mupdate-scenarios.py -> capture relay -> real mupdate master
#
# It runs its own peers (run dir /tmp/corvid-peers-capture, ports 25100+),
# so a test run's peers are left alone, and stops them on exit. The csync
# scenarios build on each other in the order below (like a mailbox's life).
# Runs as root; takes about two minutes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CORVID_PEERS_RUN=${CAPTURE_PEERS_RUN:-/tmp/corvid-peers-capture}
export CORVID_PEERS_PORT_BASE=${CAPTURE_PEERS_PORT_BASE:-25100}
export CORVID_PEERS_ENV=$CORVID_PEERS_RUN/env
. "$HERE/peers.env"
WHAT=${*:-csync mupdate}

# CORVID=/path/to/corvid skips the build (e.g. while the workspace is mid-change)
if [ -z "${CORVID:-}" ]; then
  (cd "$ROOT" && cargo build -q -p bins)
  CORVID=${CARGO_TARGET_DIR:-$ROOT/target}/debug/corvid
fi
CS=$ROOT/corpus/traces/csync
MU=$ROOT/corpus/traces/mupdate
mkdir -p "$CS" "$MU"

trap '"$HERE/stop.sh" >/dev/null' EXIT
# the real MUPDATE slave (slave.sh) logs in through the first relay port
export MUPDATE_SLAVE_UPSTREAM_PORT=$RELAY_PORT_FIRST
"$HERE/start.sh"
. <(grep -E '^(CYRUS_PEER|CYRUS_VERSION)=' "$CORVID_PEERS_ENV" | sed 's/=\(.*\)/="\1"/')
MAIL="python3 $HERE/mail.py"
RELAY=$RELAY_PORT_FIRST

# relay NAME OUTDIR TARGET_PORT PEER COMMAND NOTE -- starts `corvid capture
# --once` in the background; waits until it listens. Sets RELAY_PID.
relay() {
  rm -f "$2/$1".{txt,c2s.bin,s2c.bin} "$CORVID_PEERS_RUN/relay.pid"
  timeout 300 "$CORVID" capture --once --listen "127.0.0.1:$RELAY" --target "127.0.0.1:$3" \
    --out "$2" --name "$1" --peer "$4" --command "$5" --note "$6" \
    --pidfile "$CORVID_PEERS_RUN/relay.pid" >>"$CORVID_PEERS_RUN/log/capture.log" 2>&1 &
  RELAY_PID=$!
  for _ in $(seq 100); do [ -s "$CORVID_PEERS_RUN/relay.pid" ] && return 0; sleep 0.05; done
  echo "capture-all.sh: relay for $1 did not start" >&2; exit 1
}

# csync NAME DESCRIPTION [--try-imap] -- SYNC_CLIENT_ARGS...
csync() {
  local name=live-$1 desc=$2 port=$REPLICA_CSYNC_PORT peer="$CYRUS_PEER sync_server" opt=()
  shift 2
  if [ "${1:-}" = --try-imap ]; then
    port=$REPLICA_IMAP_PORT peer="$CYRUS_PEER imapd (X-REPLICATION)" opt=(--try-imap); shift
  fi
  [ "${1:-}" = -- ] && shift
  relay "$name" "$CS" "$port" "$peer" "sync_client -C <master imapd.conf> $*" "$desc"
  local rc=0
  "$HERE/sync-client.sh" "${opt[@]}" --port "$RELAY" -- "$@" \
    >"$CORVID_PEERS_RUN/log/$name.client.out" 2>&1 || rc=$?
  wait "$RELAY_PID" || { echo "capture-all.sh: relay for $name failed" >&2; exit 1; }
  [ $rc = 0 ] || { echo "capture-all.sh: sync_client for $name exited $rc" >&2; cat "$CORVID_PEERS_RUN/log/$name.client.out" >&2; exit 1; }
  echo "captured csync/$name ($(wc -c <"$CS/$name.c2s.bin") + $(wc -c <"$CS/$name.s2c.bin") bytes)"
}

reset_synclog() {  # forget what the rolling log holds so far
  rm -f "$CORVID_PEERS_RUN/master/conf/sync/log" "$CORVID_PEERS_RUN"/master/conf/sync/log-*
}

capture_csync() {
  # fixture: alice with folders, mail by LMTP and APPEND, flags, annotations,
  # quota, ACLs, an active sieve script; bob with non-owner seen state
  $MAIL mkuser alice Work Work/Projects Travel Shared Archive
  $MAIL mkuser bob Lists
  $MAIL setacl alice Work anyone p           # lets LMTP deliver to alice+Work
  $MAIL setacl alice Shared bob lrs
  $MAIL unsubscribe alice Archive
  $MAIL lmtp alice 5 --seed 11
  $MAIL lmtp alice 2 --folder Work --seed 12
  $MAIL lmtp bob 3 --seed 13
  $MAIL append alice Archive 3 --seed 14
  $MAIL append alice Shared 3 --seed 15
  $MAIL flag alice INBOX 1:3 + '\Seen'
  $MAIL flag alice INBOX 2 + '\Flagged $Label1'
  $MAIL msgannot alice INBOX 1 /comment "remember this one"
  $MAIL annotate alice Work /private/comment "work stuff"
  $MAIL annotate alice Work /shared/comment "shared note"
  $MAIL quota alice 512000 5000
  printf 'require ["fileinto"];\r\nif header :contains "subject" "project" {\r\n  fileinto "Work";\r\n}\r\n' \
    | $MAIL sieve alice main -
  $MAIL seen bob alice Shared 1

  csync initial-user "Initial replication of one user into an empty replica (alice: INBOX + 5 folders, \
LMTP and APPENDed mail, flags, a message annotation, folder annotations, ACLs, quota, subscriptions, an active \
sieve script): sync_client -u alice." -- -v -u alice
  csync all-users "All-users mode (-A): alice is already in sync, bob is new." -- -v -A
  $MAIL lmtp alice 1 --folder Work --seed 21
  csync mailbox-mode "Mailbox mode: one new message in alice's Work, then sync_client -m user/alice/Work \
(admin-namespace name)." -- -v -m user/alice/Work
  $MAIL lmtp alice 1 --seed 22
  csync new-message "One new message in alice's INBOX via LMTP, then -u alice (RESERVE/MISSING, MESSAGE upload)." -- -v -u alice
  $MAIL flag alice INBOX 1:2 + '\Flagged'
  $MAIL flag alice INBOX 3 - '\Seen'
  $MAIL flag alice INBOX 4 + '$Forwarded $Label2'
  csync flag-change "Flag changes only: INBOX 1:2 +\\Flagged, 3 -\\Seen, 4 +\$Forwarded \$Label2; then -u alice." -- -v -u alice
  $MAIL expunge alice INBOX 5
  csync expunge "INBOX uid 5 \\Deleted + UID EXPUNGE (expunge_mode default); then -u alice." -- -v -u alice
  $MAIL rename alice Travel Trips
  csync rename "Folder rename Travel -> Trips (same UNIQUEID); then -u alice." -- -v -u alice
  $MAIL delete alice Work/Projects
  csync delete-mailbox "Folder Work/Projects deleted (delete_mode default delayed: it becomes DELETED.*); then -u alice." -- -v -u alice
  $MAIL unsubscribe alice Work
  $MAIL subscribe alice Archive
  csync subscriptions "alice unsubscribes Work and subscribes Archive; then -u alice." -- -v -u alice
  $MAIL seen bob alice Shared 2:3
  csync seen "Non-owner seen state: bob marks alice's Shared 2:3 \\Seen (kept in bob's seen db); then -u bob." -- -v -u bob
  $MAIL quota alice 1048576 20000
  csync quota "SETQUOTA user/alice (STORAGE 1048576 MESSAGE 20000); then -u alice." -- -v -u alice
  $MAIL annotate alice Work /shared/comment "changed shared note"
  $MAIL annotate alice INBOX /private/vendor/corvid/color "green"
  $MAIL msgannot alice INBOX 2 /comment "per-message note"
  csync annotations "Folder annotations on Work (/shared/comment) and INBOX (/private/vendor/corvid/color), \
a message annotation on INBOX uid 2; then -u alice." -- -v -u alice
  printf 'require ["vacation"];\r\nvacation :days 7 :subject "Away" "I am away.";\r\n' | $MAIL sieve alice vacation -
  csync sieve "alice uploads a second sieve script 'vacation' via ManageSieve and activates it; then -u alice." -- -v -u alice
  reset_synclog
  $MAIL lmtp bob 1 --seed 23
  $MAIL flag alice INBOX 1 + '$Important'
  $MAIL create alice Receipts
  $MAIL annotate alice Receipts /private/comment "rolling"
  csync rolling "Rolling replication, one pass over the sync log (-R -1) after: LMTP to bob, a flag on alice's \
INBOX, alice creates Receipts (+ subscribe) and annotates it." -- -v -R -1
  $MAIL --inst replica append alice INBOX 1 --seed 24
  $MAIL --inst replica flag alice INBOX 1 + '$ReplicaOnly'
  $MAIL --inst replica expunge alice Archive 3
  csync diverged-replica "The replica diverged (on the replica's imapd: a message appended to alice's INBOX, a \
flag on INBOX uid 1, Archive uid 3 expunged); then -u alice on the master must reconcile (copyback)." -- -v -u alice
  reset_synclog
  $MAIL deluser bob
  csync unuser "The admin deletes user bob on the master; replicated from the rolling log (-R -1), which \
carries the user's removal." -- -v -R -1
  $MAIL lmtp alice 1 --seed 25
  csync imap-embedded "Replication through the replica's IMAP port (sync_try_imap: yes): imapd advertises \
X-REPLICATION and the same GET/APPLY commands travel as tagged IMAP commands. One new message for alice \
first; then -u alice." --try-imap -- -v -u alice
}

# mupdate NAME DESCRIPTION -- one mupdate-scenarios.py session through the relay
mupdate() {
  relay "$1" "$MU" "$MUPDATE_PORT" "$CYRUS_PEER mupdate -m (MUPDATE master)" \
    "scripts/peers/mupdate-scenarios.py $1" "$2"
  python3 "$HERE/mupdate-scenarios.py" --port "$RELAY" --direct-port "$MUPDATE_PORT" "$1"
  wait "$RELAY_PID" || { echo "capture-all.sh: relay for mupdate/$1 failed" >&2; exit 1; }
  echo "captured mupdate/$1 ($(wc -c <"$MU/$1.c2s.bin") + $(wc -c <"$MU/$1.s2c.bin") bytes)"
}

capture_mupdate() {
  mupdate auth "AUTHENTICATE: wrong password, valid non-admin user, unknown mechanism, atom mechanism, \
no-initial-response challenge cancelled with '*', then answered, quoted initial response after success."
  mupdate noop "NOOP (upper and lower case)."
  mupdate reserve "RESERVE, the same RESERVE again (tolerated), the name at another location (NO), FIND, DELETE."
  mupdate activate "RESERVE+ACTIVATE, ACTIVATE without RESERVE, ACTIVATE to another location with a new ACL (move)."
  mupdate deactivate "ACTIVATE, DEACTIVATE (back to RESERVED, ACL dropped), FIND, DELETE."
  mupdate delete "ACTIVATE, DELETE, FIND finds nothing."
  mupdate find "FIND an active, a reserved and an unknown name; FIND with a literal argument."
  mupdate list "LIST everything (active and reserved entries)."
  mupdate list-prefix "LIST with a location prefix: 'host!', a shorter string prefix, no match."
  mupdate update "UPDATE: the full dump, then FIND is refused while streaming, NOOP, LOGOUT."
  mupdate update-stream "UPDATE, then another (uncaptured) connection activates, reserves and deletes names; \
the subscriber's NOOPs flush the queued changes (each name with its current state)."
  mupdate partial-update "UPDATE \"127.0.0.1:25902\" (PARTIAL-UPDATE): only that server's mailboxes, in the dump \
and in the stream."
  mupdate logout "LOGOUT right after AUTHENTICATE."
  mupdate errors-unauthenticated "Commands before AUTHENTICATE."
  mupdate errors-bad-command "Unknown commands, extra arguments, an empty line, a line without a tag, an atom \
where a string is needed, STARTTLS without TLS, UPDATE with an empty host."
  mupdate errors-missing-args "FIND, RESERVE, ACTIVATE, DEACTIVATE, DELETE with too few arguments; LIST and FIND \
with too many."
  mupdate compress "COMPRESS \"GZIP\" (refused), COMPRESS \"DEFLATE\", then ACTIVATE/FIND/LIST/DELETE inflated; \
a second COMPRESS is refused."
  # The real Cyrus client tool (imtest as mupdatetest): its AUTHENTICATE sends
  # the initial response as a {n+} literal, as every Cyrus MUPDATE client does.
  relay mupdatetest "$MU" "$MUPDATE_PORT" "$CYRUS_PEER mupdate -m (MUPDATE master)" \
    "mupdatetest -p <relay> -m PLAIN -a $MUPDATE_USER -w <password> 127.0.0.1" \
    "The real Cyrus client mupdatetest (cyrus-clients): AUTHENTICATE, then NOOP, FIND, LIST, LOGOUT from stdin."
  { sleep 1; printf 'N1 NOOP\r\nF1 FIND "user.nosuch"\r\nL1 LIST\r\n'; sleep 1; printf 'Q1 LOGOUT\r\n'; sleep 1; } \
    | timeout 20 "$CYRUS_BIN/mupdatetest" -p "$RELAY" -m PLAIN -a "$MUPDATE_USER" -w "$MUPDATE_PASS" 127.0.0.1 \
      >"$CORVID_PEERS_RUN/log/mupdatetest.out" 2>&1 || true
  wait "$RELAY_PID" || { echo "capture-all.sh: relay for mupdate/mupdatetest failed" >&2; exit 1; }
  echo "captured mupdate/mupdatetest ($(wc -c <"$MU/mupdatetest.c2s.bin") + $(wc -c <"$MU/mupdatetest.s2c.bin") bytes)"
  # A real Cyrus MUPDATE slave booting against the master (it is configured
  # to log in through the relay port): AUTHENTICATE, UPDATE, the dump, the
  # streamed changes, an idle NOOP; the capture ends when the slave stops.
  python3 "$HERE/mupdate-scenarios.py" --port "$MUPDATE_PORT" slave-before
  relay slave-boot "$MU" "$MUPDATE_PORT" "$CYRUS_PEER mupdate -m (MUPDATE master)" \
    "the real Cyrus MUPDATE slave: mupdate -C <slave imapd.conf> (no -m), mupdate_retry_delay 5" \
    "A real Cyrus 3.6.1 slave (client side of this capture) boots: AUTHENTICATE, U01 UPDATE, the dump of 3 names; \
then another connection activates user.slave3, activates the reserved user.slave2 and deletes user.slave0, which \
the master streams; the slave's idle NOOPs; the slave is stopped (SIGTERM) to end the capture."
  "$HERE/slave.sh" start
  sleep 3
  python3 "$HERE/mupdate-scenarios.py" --port "$MUPDATE_PORT" slave-after
  sleep 12
  "$HERE/slave.sh" stop
  wait "$RELAY_PID" || { echo "capture-all.sh: relay for mupdate/slave-boot failed" >&2; exit 1; }
  echo "captured mupdate/slave-boot ($(wc -c <"$MU/slave-boot.c2s.bin") + $(wc -c <"$MU/slave-boot.s2c.bin") bytes)"
  # Deliberately separate and last: this one kills the server process.
  mupdate crash-delete-unknown "KNOWN CRASHER: DELETE of an unknown name makes Cyrus 3.6.1's mupdate dereference \
NULL; the server process dies (connection dropped without an answer) and master(8) respawns it."
}

for w in $WHAT; do "capture_$w"; done
echo "capture-all.sh: done"
