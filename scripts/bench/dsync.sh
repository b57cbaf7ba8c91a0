#!/usr/bin/env bash
# corvid dsync vs Dovecot 2.3 doveadm, side by side on the same Maildir
# corpus, ratio printed (corvid/doveadm: below 1 = corvid faster).
#
#   scripts/bench/dsync.sh [MESSAGES] [FOLDERS]     (default 10000 20)
#
# The issue's corpus: 10,000 messages, about 91.6 MB, 20 folders. Each tool
# gets its own copy of the source and its own destination, so two-way
# syncs never feed one tool's writes to the other. Steps, each once locally
# (both locations in one process, `doveadm sync maildir:DST` /
# `corvid dsync mirror maildir:DST`) and once over a pipe (the destination
# served by `doveadm dsync-server` / `corvid dsync-server` as a child):
#   1. first backup into an empty maildir
#   2. no-change re-sync (two-way)
#   3. re-sync after 100 new messages and 500 flag changes on EACH side
# After each phase the two tools' sources and destinations are compared
# (mailbox, flags, Message-ID per message).
# CORVID=path picks the binary (default: a release build under
# $CARGO_TARGET_DIR or target/, built if missing). Wall-clock seconds of
# one run each on a shared machine: compare within one run only.
#
# Last run (session 5, release, N=10,000 = 98.3 MB, 20 folders; 2 cores,
# two nice-19 fuzzers beside it, load average about 3): doveadm vs corvid
#   1. first backup     local 15.22 s vs 2.19 s (0.14x)  pipe 11.12 s vs 2.59 s (0.23x)
#   2. no-change        local 0.212 s vs 0.143 s (0.67x) pipe 0.205 s vs 0.187 s (0.91x)
#   3. after changes    local 0.253 s vs 0.556 s (2.20x) pipe 0.096 s vs 0.424 s
# (a run before the pipe writes were batched: step 2 pipe 0.180 vs 0.288 s;
# step 3 local varies 0.44-0.56 s from run to run on this machine; its
# user CPU is ~0.3 s: every mailbox written to is read afresh afterwards,
# since a view of files changed in the last 100 ms is never reused).
# Results identical after every step except step 3 over the pipe, where (as
# in sessions 2 and 3) doveadm exited 0 without moving the 200 new messages
# and corvid moved them. Session 3 measured 1.6-2.0x on step 2 and 2.0x on
# step 3 at N=1,000; at N=10,000 before session 5's changes step 2 was 5.5x
# and step 3 13x (every mailbox read rescanned it, re-read every file without
# ,W= for its size, and looked uidlist lines up by scanning). The first copy
# meets its goal (<= 0.3x); the re-syncs do not yet (goal <= 0.5x).
# The untimed warm-up runs one corvid backup of the source (builds its
# sidecars: SHA-1, sizes, dates); at 10,000 messages about 3 s.
set -euo pipefail

N=${1:-10000}
FOLDERS=${2:-20}
ROOT=$(mktemp -d /tmp/corvid-bench-dsync.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
HERE=$(cd "$(dirname "$0")/../.." && pwd)
CORVID=${CORVID:-${CARGO_TARGET_DIR:-$HERE/target}/release/corvid}
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

# The corpus: N messages over FOLDERS folders, ~9 KB on average (a few up
# to ~200 KB), a third \Seen.
python3 - "$ROOT/src" "$N" "$FOLDERS" <<'EOF'
import os, random, sys
root, n, nf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
folders = [""] + [f".F{k:02d}" for k in range(1, nf)]
for f in folders:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, f, sub), exist_ok=True)
    if f:
        open(os.path.join(root, f, "maildirfolder"), "w").close()
words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do".split()
total = 0
for i in range(n):
    f = folders[i % len(folders)]
    lines = rng.randint(10, 240) if i % 500 else 2800
    body = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(lines))
    msg = f"From: a@example.com\nTo: b@example.com\nSubject: m{i}\nMessage-ID: <m{i}@bench>\nDate: Mon, 01 Jan 2024 12:00:00 +0000\n\n{body}\n"
    total += len(msg)
    flags = "S" if i % 3 == 0 else ""
    with open(os.path.join(root, f, "cur", f"{1700000000+i}.M{i}P1.bench:2,{flags}"), "w") as fh:
        fh.write(msg)
print(f"corpus: {n} messages, {total/1e6:.1f} MB, {len(folders)} folders", file=sys.stderr)
EOF

# Changes on one maildir: 100 new INBOX messages and a flag added to 500
# existing messages chosen by Message-ID (file names differ between tools).
change() { # maildir tag letter offset
python3 - "$@" <<'EOF'
import os, sys, re
root, tag, letter, off = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(100):
    with open(os.path.join(root, "new", f"1800000000.M{i}P9.{tag}"), "w") as fh:
        fh.write(f"From: a@example.com\nSubject: {tag}{i}\nMessage-ID: <{tag}{i}@bench>\n\n{tag} mail {i}\n")
want = set(range(off, 10**9, 20))
done = 0
for d, _, files in sorted(os.walk(root)):
    if os.path.basename(d) not in ("cur", "new"):
        continue
    for name in sorted(files):
        if done >= 500:
            break
        p = os.path.join(d, name)
        with open(p, "rb") as fh:
            m = re.search(rb"Message-ID: <m(\d+)@bench>", fh.read(400))
        if not m or int(m.group(1)) not in want:
            continue
        base, _, flags = name.partition(":2,")
        flags = "".join(sorted(set(flags + letter)))
        os.rename(p, os.path.join(os.path.dirname(d), "cur", base + ":2," + flags))
        done += 1
EOF
}

fix() { [ "$(id -u)" = 0 ] && chown -R "$MAILUID:$MAILUID" "$ROOT" || true; }
for x in dove corvid; do cp -a "$ROOT/src" "$ROOT/src-$x"; done
fix

dv() { env -i PATH=/usr/bin:/bin HOME="$ROOT/home" USER=bench "$DOVEADM" -c "$ROOT/dovecot.conf" "$@"; }
dvs() { dv -o "mail_location=maildir:$ROOT/src-dove" "$@"; }
cvs() { "$CORVID" dsync -u bench -o "mail_location=maildir:$ROOT/src-corvid" "$@"; }
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>"$ROOT/err" || { cat "$ROOT/err" >&2; echo "FAILED: $*" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }
listing() { dv -o "mail_location=maildir:$1" -f tab fetch 'mailbox flags hdr.message-id' all | sed 's/ *\\Recent//' | sort; }
same() { # what dst-suffix
  for pair in "src-dove src-corvid" "dst-dove$2 dst-corvid$2"; do
    set -- "$1" "$2" $pair
    if ! diff <(listing "$ROOT/$3") <(listing "$ROOT/$4") > "$ROOT/diff"; then
      echo "$1: $3 and $4 DIFFER:" >&2; head -20 "$ROOT/diff" >&2
    else
      echo "$1: $3 = $4 (mailbox, flags, Message-ID)"
    fi
  done
}
row() { printf '%-44s %10.3f %10.3f %8.2f\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }

# Warm both sources' indexes/sidecars once (not timed).
dvs mailbox status all '*' >/dev/null; fix
cvs backup "maildir:$ROOT/warm" >/dev/null 2>&1 || true; rm -rf "$ROOT/warm"; fix

printf '%-44s %10s %10s %8s\n' step doveadm_s corvid_s ratio
for via in local pipe; do
  sfx=$([ $via = local ] && echo "" || echo "-p")
  D="$ROOT/dst-dove$sfx"; C="$ROOT/dst-corvid$sfx"
  if [ $via = local ]; then
    dtarget=("maildir:$D"); ctarget=("maildir:$C")
  else
    cat > "$ROOT/dove-server.sh" <<EOF
#!/bin/sh
exec env -i PATH=/usr/bin:/bin HOME="$ROOT/home" USER=bench "$DOVEADM" -c "$ROOT/dovecot.conf" -o "mail_location=maildir:$D" "\$@"
EOF
    cat > "$ROOT/corvid-server.sh" <<EOF
#!/bin/sh
exec "$CORVID" dsync-server -u bench -o "mail_location=maildir:$C"
EOF
    chmod +x "$ROOT/dove-server.sh" "$ROOT/corvid-server.sh"
    dtarget=("$ROOT/dove-server.sh"); ctarget=("$ROOT/corvid-server.sh")
  fi
  fix; d1=$(t dvs backup "${dtarget[@]}"); fix
  c1=$(t cvs backup "${ctarget[@]}"); fix
  row "1. first backup, $via ($N msgs)" "$d1" "$c1"
  d2=$(t dvs sync "${dtarget[@]}"); fix
  c2=$(t cvs mirror "${ctarget[@]}"); fix
  row "2. no-change re-sync, $via" "$d2" "$c2"
  same "after step 2 ($via)" "$sfx"
  tag=$([ $via = local ] && echo l || echo p)
  change "$ROOT/src-dove" "s$tag" F 0; change "$ROOT/src-corvid" "s$tag" F 0
  change "$D" "d$tag" A 10; change "$C" "d$tag" A 10
  fix
  d3=$(t dvs sync "${dtarget[@]}"); fix
  c3=$(t cvs mirror "${ctarget[@]}"); fix
  row "3. re-sync, 100 new + 500 flags each side, $via" "$d3" "$c3"
  same "after step 3 ($via)" "$sfx"
done
