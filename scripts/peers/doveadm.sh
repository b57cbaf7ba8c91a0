#!/usr/bin/env bash
# doveadm.sh SIDE [DOVEADM ARGS...] -- run the real doveadm on the private
# maildir "side" SIDE ($CORVID_PEERS_RUN/dovecot/home/SIDE/Maildir), with the
# peers' dovecot.conf (no daemon, no auth: doveadm works locally).
#   doveadm.sh a save -m INBOX <msg.eml
#   doveadm.sh a backup maildir:$CORVID_PEERS_RUN/dovecot/home/b/Maildir
#   doveadm.sh a sync -1 'corvid dsync-server ...'     # or any dsync remote command
set -euo pipefail
. "$(dirname "$0")/peers.env"
[ $# -ge 1 ] || { echo "usage: $0 SIDE [doveadm args...]" >&2; exit 2; }
D=$CORVID_PEERS_RUN/dovecot
[ -f "$D/dovecot.conf" ] || { echo "doveadm.sh: no $D/dovecot.conf; run start.sh" >&2; exit 1; }
side=$1; shift
# doveadm switches to uid/gid 5000 for mail access (it refuses root)
[ -d "$D/home/$side" ] || install -d -o 5000 -g 5000 -m 700 "$D/home/$side"
export USER=$side HOME=$D/home/$side
exec doveadm -c "$D/dovecot.conf" "$@"
