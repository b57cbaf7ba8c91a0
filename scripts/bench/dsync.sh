#!/usr/bin/env bash
# corvid dsync vs Dovecot 2.3 doveadm, side by side on the same Maildir corpus.
#
#   scripts/bench/dsync.sh [MESSAGES]        (default 2000)
#
# Steps, each timed for doveadm and for corvid, then the ratio
# corvid/doveadm (below 1 = corvid faster):
#   1. initial backup of the corpus into an empty Maildir
#   2. a no-change re-sync (two-way)
#   3. a re-sync after 50 new messages and 200 flag changes on the source
# Both tools read and write Dovecot Maildirs (maildir:PATH on both sides),
# in-process (no pipe), as `doveadm sync maildir:…` does. Dovecot runs
# privately (own config, no daemon) like the lab. Set CORVID=path to pick a
# binary (default: target/release/corvid, built if missing; build it with
# `cargo build --release -p bins` when the machine is quiet).
# Times are wall-clock seconds of one run each on a shared machine: compare
# within one run of this script only.
set -euo pipefail

N=${1:-2000}
ROOT=$(mktemp -d /tmp/corvid-bench-dsync.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
HERE=$(cd "$(dirname "$0")/../.." && pwd)
CORVID=${CORVID:-$HERE/target/release/corvid}
if [ ! -x "$CORVID" ]; then
  (cd "$HERE" && cargo build --release -p bins >&2)
fi
DOVEADM=$(command -v doveadm || echo /usr/bin/doveadm)
[ -x "$DOVEADM" ] || { echo "SKIP: doveadm (Dovecot 2.3) is not installed" >&2; exit 0; }

MAILUID=$(id -u); [ "$MAILUID" = 0 ] && MAILUID=5000
mkdir -p "$ROOT/run" "$ROOT/state" "$ROOT/home"
cat > "$ROOT/dovecot.conf" <<EOF
base_dir = $ROOT/run
state_dir = $ROOT/state
log_path = /dev/stderr
ssl = no
protocols =
mail_location = maildir:$ROOT/src
namespace inbox {
  inbox = yes
  separator = /
  prefix =
}
mail_privileged_group =
mail_uid = $MAILUID
mail_gid = $MAILUID
first_valid_uid = $(( MAILUID < 1000 ? MAILUID : 1000 ))
first_valid_gid = $(( MAILUID < 1000 ? MAILUID : 1000 ))
EOF

# The corpus: N messages over 5 folders, sizes 1-40 KB, a third flagged \Seen.
python3 - "$ROOT/src" "$N" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
folders = ["", ".Sent", ".Work", ".Archive.2024", ".Lists"]
for f in folders:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, f, sub), exist_ok=True)
    if f:
        open(os.path.join(root, f, "maildirfolder"), "w").close()
words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do".split()
for i in range(n):
    f = folders[i % len(folders)]
    body = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(10, 600)))
    msg = f"From: a@example.com\nTo: b@example.com\nSubject: m{i}\nMessage-ID: <m{i}@bench>\nDate: Mon, 01 Jan 2024 12:00:00 +0000\n\n{body}\n"
    flags = "S" if i % 3 == 0 else ""
    with open(os.path.join(root, f, "cur", f"{1700000000+i}.M{i}P1.bench:2,{flags}"), "w") as fh:
        fh.write(msg)
EOF
[ "$(id -u)" = 0 ] && chown -R "$MAILUID:$MAILUID" "$ROOT"

dv() { env -i PATH=/usr/bin:/bin HOME="$ROOT/home" USER=bench "$DOVEADM" -c "$ROOT/dovecot.conf" "$@"; }
cv() { "$CORVID" dsync -u bench -o "mail_location=maildir:$ROOT/src" "$@"; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>"$ROOT/err" || { cat "$ROOT/err" >&2; echo "FAILED: $*" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }
fix() { [ "$(id -u)" = 0 ] && chown -R "$MAILUID:$MAILUID" "$ROOT" || true; }

# Warm the source's indexes/sidecars once for both tools (not timed).
dv mailbox status all '*' >/dev/null; fix
cv backup "maildir:$ROOT/warm" >/dev/null 2>&1 || true; rm -rf "$ROOT/warm"; fix

printf '%-34s %10s %10s %8s\n' step doveadm_s corvid_s ratio
row() { printf '%-34s %10.3f %10.3f %8.2f\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }

fix; d1=$(t dv backup "maildir:$ROOT/dst-dove"); fix
c1=$(t cv backup "maildir:$ROOT/dst-corvid"); fix
row "1. initial backup ($N msgs)" "$d1" "$c1"

d2=$(t dv sync "maildir:$ROOT/dst-dove"); fix
c2=$(t cv mirror "maildir:$ROOT/dst-corvid"); fix
row "2. no-change re-sync" "$d2" "$c2"

python3 - "$ROOT/src" "$N" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
cur = os.path.join(root, "cur")
for i in range(50):
    with open(os.path.join(root, "new", f"1800000000.M{i}P2.bench"), "w") as fh:
        fh.write(f"From: a@example.com\nSubject: new{i}\nMessage-ID: <new{i}@bench>\n\nnew mail {i}\n")
names = sorted(os.listdir(cur))[:200]
for name in names:
    base, _, flags = name.partition(":2,")
    os.rename(os.path.join(cur, name), os.path.join(cur, base + ":2," + ("F" + flags if "F" not in flags else flags)))
EOF
fix
d3=$(t dv sync "maildir:$ROOT/dst-dove"); fix
c3=$(t cv mirror "maildir:$ROOT/dst-corvid"); fix
row "3. re-sync after changes" "$d3" "$c3"

# Same content on both destinations?
listing() { dv -o "mail_location=maildir:$1" -f tab fetch 'mailbox flags hdr.message-id' all | sed 's/ *\\Recent//' | sort; }
if diff <(listing "$ROOT/dst-dove") <(listing "$ROOT/dst-corvid") > "$ROOT/diff"; then
  echo "destinations identical (mailbox, flags, Message-ID)"
else
  echo "DESTINATIONS DIFFER:" >&2; head -20 "$ROOT/diff" >&2
fi
