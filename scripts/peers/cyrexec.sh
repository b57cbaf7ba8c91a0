#!/usr/bin/env bash
# cyrexec.sh CMD [ARGS...] -- run a Cyrus program for corvid's private peers.
#
# * As user cyrus, group mail (Cyrus daemons refuse to run as root).
# * In a private mount namespace whose /dev is a small tmpfs with the usual
#   device nodes and /dev/log -> $CORVID_PEERS_RUN/log/syslog.sock, served by
#   syslog-sink.py; children (master's services) inherit it. Nothing global
#   is created.
# * With /etc/imapd.conf and /etc/cyrus.conf hidden behind a guard file, so a
#   program that was started without -C fails instead of touching the system
#   configdirectory (/var/lib/cyrus).
# Without the privilege to unshare, it runs the program directly (logs lost).
set -euo pipefail
. "$(dirname "$0")/peers.env"
[ $# -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

GUARD="$CORVID_PEERS_RUN/guard.conf"
if [ ! -f "$GUARD" ]; then
  printf '# corvid peers guard: a Cyrus program read this, so it was started without -C\nconfigdirectory: /proc/corvid-peers-missing-dash-C\n' >"$GUARD"
fi

if ! unshare --mount --propagation private -- true 2>/dev/null; then
  echo "cyrexec.sh: cannot unshare a mount namespace; Cyrus syslog output is lost" >&2
  exec setpriv --reuid=cyrus --regid=mail --init-groups -- "$@"
fi

export GUARD SOCK="$CORVID_PEERS_RUN/log/syslog.sock"
exec unshare --mount --propagation private -- /bin/bash -c '
  set -e
  mount -t tmpfs -o mode=755,size=1m corvid-peers-dev /dev
  mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
  mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
  ln -s /proc/self/fd /dev/fd
  ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
  mkdir -m 1777 /dev/shm
  ln -s "$SOCK" /dev/log
  [ -e /etc/imapd.conf ] && mount --bind "$GUARD" /etc/imapd.conf
  [ -e /etc/cyrus.conf ] && mount --bind "$GUARD" /etc/cyrus.conf
  exec setpriv --reuid=cyrus --regid=mail --init-groups -- "$@"
' cyrexec "$@"
