#!/usr/bin/env bash
# slave.sh start|stop -- the real Cyrus MUPDATE slave that start.sh configures
# (not started by default). It logs in to $MUPDATE_SLAVE_UPSTREAM_PORT as
# given to start.sh (default: the peers' MUPDATE master), sends UPDATE and
# keeps streaming; its own clients get port $MUPDATE_SLAVE_PORT once the
# first UPDATE completed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/peers.env"
S=$CORVID_PEERS_RUN/slave
[ -f "$S/imapd.conf" ] || { echo "slave.sh: no $S/imapd.conf; run start.sh" >&2; exit 1; }
case ${1:-} in
  start)
    if [ -f "$S/master.pid" ] && kill -0 "$(cat "$S/master.pid")" 2>/dev/null; then
      echo "slave.sh: already running"; exit 0
    fi
    CYRUS_SYSLOG_PREFIX=peers-slave "$HERE/cyrexec.sh" "$CYRUS_BIN/master" \
      -C "$S/imapd.conf" -M "$S/cyrus.conf" -p "$S/master.pid" -d -L "$S/master.log"
    for _ in $(seq 50); do [ -s "$S/master.pid" ] && break; sleep 0.1; done
    echo "slave.sh: slave started (master pid $(cat "$S/master.pid")), upstream $(grep '^mupdate_server:' "$S/imapd.conf" | cut -d' ' -f2)"
    ;;
  stop)
    [ -f "$S/master.pid" ] || exit 0
    pid=$(cat "$S/master.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$S/master.pid"
    echo "slave.sh: slave stopped (pid $pid)"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
