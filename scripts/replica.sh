#!/usr/bin/env bash
# Builds corvid and runs a Cyrus replication replica on the embedded store:
# `corvid sync_server`, which a real Cyrus 3.x sync_client replicates into.
#
# Everything lives under one data directory (default ./corvid-replica):
# imapd.conf, the store's index (configdirectory) and message files
# (partition-default), and corvid's password file for the replication user.
# The first run creates them and prints the password and the lines to put in
# the Cyrus master's imapd.conf; later runs reuse them.
#
# Environment: CORVID_DATA (data dir), CORVID_LISTEN (default 127.0.0.1:2005),
# CORVID_REPL_USER (default repl), CORVID_REPL_PASSWORD (default: generated).
set -euo pipefail
cd "$(dirname "$0")/.."

data=${CORVID_DATA:-$PWD/corvid-replica}
listen=${CORVID_LISTEN:-127.0.0.1:2005}
user=${CORVID_REPL_USER:-repl}

if ! command -v cargo >/dev/null; then
  echo "replica.sh: cargo is needed (a Rust toolchain); install it and run again" >&2
  exit 1
fi
cargo build --release -p bins
corvid=${CARGO_TARGET_DIR:-$PWD/target}/release/corvid

mkdir -p "$data/conf" "$data/partition-default"
data=$(cd "$data" && pwd)
conf=$data/imapd.conf
if [ ! -f "$conf" ]; then
  cat >"$conf" <<CONF
# corvid replica, written by scripts/replica.sh
configdirectory: $data/conf
partition-default: $data/partition-default
servername: $(hostname -f 2>/dev/null || hostname)
admins: $user
sasl_mech_list: PLAIN LOGIN
# PLAIN over cleartext (Cyrus's default is no): set tls_server_cert and
# tls_server_key and drop this line to make the master's sync_client use TLS.
allowplaintext: yes
corvid_passwd_file: $data/passwd
# To replicate onward while serving (A -> corvid -> C): log what arrives,
# then run `corvid sync_client -r -C $conf` with sync_host/sync_port/
# sync_authname/sync_password naming C, beside this server.
#sync_log: 1
#sync_log_chain: 1
CONF
fi
if [ ! -f "$data/passwd" ] || ! grep -q "^$user:" "$data/passwd"; then
  pass=${CORVID_REPL_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')}
  printf '%s\n' "$pass" | "$corvid" passwd "$data/passwd" "$user"
  host=${listen%:*}; port=${listen##*:}
  cat <<MSG

corvid replica: user '$user', password '$pass' (stored hashed in $data/passwd).
On the Cyrus master, add to imapd.conf and run sync_client (e.g. sync_client -v -u USER):
    sync_host: $host
    sync_port: $port
    sync_try_imap: no
    sync_authname: $user
    sync_password: $pass

MSG
fi
echo "corvid sync_server on $listen, store in $data (Ctrl-C stops it)" >&2
exec "$corvid" sync_server -C "$conf" --listen "$listen"
