#!/usr/bin/env bash
# install.sh -- install the real peers corvid tests against (Debian packages):
# Cyrus IMAP 3.6 (imapd, lmtpd, sync_client/sync_server, mupdate), the Cyrus
# client tools, SASL tools and Dovecot's doveadm.
#
# Idempotent: does nothing (no apt-get update either) when everything is
# already installed. Never leaves a system-wide Cyrus or Dovecot daemon
# running: package scripts are kept from starting services while we install
# (policy-rc.d answers 101 "action forbidden"), and any such daemon that is
# running afterwards is stopped. corvid's peers run privately (start.sh).
set -euo pipefail

PKGS="cyrus-imapd cyrus-replication cyrus-murder cyrus-clients cyrus-admin sasl2-bin
libsasl2-modules dovecot-core python3 util-linux"

missing=()
for p in $PKGS; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install.sh: need root to install: ${missing[*]}" >&2; exit 1; }
  echo "install.sh: installing ${missing[*]}"
  # Keep maintainer scripts from starting services; restore whatever policy was there.
  policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  restore_policy() {
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\n# corvid scripts/peers/install.sh: no service starts during install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
  restore_policy
  trap - EXIT
fi

# Stop system instances if something (an earlier install, a boot) started them.
# They would not clash with our ports, but tests must not depend on them and
# nothing system-wide should run on behalf of corvid.
stop_service() {  # $1 service name, $2 pidfile
  [ -f "$2" ] && kill -0 "$(cat "$2")" 2>/dev/null || return 0
  echo "install.sh: stopping system $1 (pid $(cat "$2"))"
  if [ -d /run/systemd/system ]; then
    systemctl stop "$1" || true
  else
    invoke-rc.d --force "$1" stop </dev/null || service "$1" stop </dev/null || true
  fi
}
stop_service cyrus-imapd /run/cyrus-master.pid
stop_service dovecot /run/dovecot/master.pid
stop_service saslauthd /run/saslauthd/saslauthd.pid

v=$(dpkg-query -W -f='${Version}' cyrus-common)
echo "install.sh: Cyrus IMAP $v and Dovecot $(dpkg-query -W -f='${Version}' dovecot-core) present"
