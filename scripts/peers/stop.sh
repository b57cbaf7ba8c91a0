#!/usr/bin/env bash
# stop.sh -- stop corvid's peers under $CORVID_PEERS_RUN (default /tmp/corvid-peers).
#
# Only processes this run dir started are touched: each Cyrus master by its
# pidfile (SIGTERM; master takes its services down), then any straggler whose
# command line names this run dir (a service child that outlived its master),
# then the syslog sink. Removes $CORVID_PEERS_RUN/env first, so tests stop
# believing the peers are up. Data is kept for inspection; start.sh wipes it.
set -uo pipefail
. "$(dirname "$0")/peers.env"
R=$CORVID_PEERS_RUN
rm -f "$R/env"

stop_pid() {  # pid label
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
  echo "stop.sh: stopped $2 (pid $1)"
}

for inst in master replica replica2 mupdate slave; do
  pf=$R/$inst/master.pid
  [ -f "$pf" ] && stop_pid "$(cat "$pf")" "Cyrus master of $inst"
  rm -f "$pf"
done
# Stragglers: processes whose argv mentions one of our private configs.
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = $$ ] && continue
  cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
  case $cmd in
    *"$R/master/imapd.conf"*|*"$R/replica/imapd.conf"*|*"$R/replica2/imapd.conf"*|*"$R/mupdate/imapd.conf"*|*"$R/slave/imapd.conf"*|*"$R/master/sync-"*)
      stop_pid "$pid" "leftover ${cmd:0:60}" ;;
  esac
done
pf=$R/log/sink.pid
[ -f "$pf" ] && stop_pid "$(cat "$pf")" "syslog sink"
rm -f "$pf"
exit 0
