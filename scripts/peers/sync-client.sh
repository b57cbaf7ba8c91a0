#!/usr/bin/env bash
# sync-client.sh [--host H] [--port P] [--try-imap] [--] SYNC_CLIENT_ARGS...
#
# Runs the real Cyrus sync_client of the peers' master instance (as cyrus, via
# cyrexec.sh), pointed at any csync server: by default the peers' replica
# sync_server; with --port at e.g. a capture relay or a corvid sync_server.
# --try-imap sets sync_try_imap: yes (IMAP-embedded replication: point --port
# at an imapd that advertises X-REPLICATION, e.g. $REPLICA_IMAP_PORT).
# Everything after the options goes to sync_client, e.g.
#   sync-client.sh --port 25030 -- -v -u alice      # one user
#   sync-client.sh -- -v -R -1                      # the rolling sync log, once
#   sync-client.sh -- -v -m user/alice/Work         # one mailbox (admin namespace name)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/peers.env"
host=$PEERS_HOST port=$REPLICA_CSYNC_PORT tryimap=no
while [ $# -gt 0 ]; do
  case $1 in
    --host) host=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --try-imap) tryimap=yes; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
BASE=$CORVID_PEERS_RUN/master/imapd.conf
[ -f "$BASE" ] || { echo "sync-client.sh: peers not set up (no $BASE); run start.sh" >&2; exit 1; }
CONF=$CORVID_PEERS_RUN/master/sync-$host-$port-$tryimap.conf
{
  grep -Ev '^(sync_host|sync_port|sync_try_imap):' "$BASE"
  echo "# --- sync-client.sh target ---"
  echo "sync_host: $host"
  echo "sync_port: $port"
  echo "sync_try_imap: $tryimap"
} >"$CONF.tmp"
chown cyrus:mail "$CONF.tmp"
mv "$CONF.tmp" "$CONF"
export CYRUS_SYSLOG_PREFIX=peers-master
exec "$HERE/cyrexec.sh" "$CYRUS_BIN/sync_client" -C "$CONF" "$@"
