#!/usr/bin/env python3
"""Drive corvid's real Cyrus peers: deliver test mail and do IMAP actions.

Reads ports and credentials from the env file start.sh writes
($CORVID_PEERS_ENV, else $CORVID_PEERS_RUN/env, else /tmp/corvid-peers/env).
Python standard library only: smtplib.LMTP, imaplib, a few ManageSieve lines.

Folder names are the USER-relative IMAP names of Cyrus 3.6's default
namespace ("INBOX", "Work", "Work/Projects"); on the csync wire the same
mailboxes are user.alice, user.alice.Work, user.alice.Work.Projects.
--inst replica talks to the replica's imapd instead of the master's
(to make the replica diverge).

  mkuser USER [FOLDER...]          admin CREATE user/USER (+ folders, subscribed)
  lmtp USER N [--folder F]         deliver N generated messages over LMTP (RCPT USER[+F])
  append USER FOLDER N             IMAP APPEND N generated messages
  flag USER FOLDER UIDS +|- FLAGS  UID STORE +FLAGS/-FLAGS
  expunge USER FOLDER UIDS         \\Deleted + UID EXPUNGE
  create|delete USER FOLDER        CREATE / DELETE a folder
  rename USER OLD NEW              RENAME a folder
  subscribe|unsubscribe USER FOLDER
  setacl USER FOLDER WHO RIGHTS
  seen READER OWNER FOLDER UIDS    READER marks OWNER's FOLDER messages \\Seen (non-owner seen)
  quota USER STORAGE_KB [MESSAGES] admin SETQUOTA on user/USER
  annotate USER FOLDER ENTRY VALUE SETMETADATA on a folder (/private/... or /shared/...)
  msgannot USER FOLDER UID ENTRY VALUE   per-message ANNOTATION (value.priv)
  sieve USER NAME FILE             ManageSieve PUTSCRIPT + SETACTIVE ("-" = stdin)
  deluser USER                     admin DELETE user/USER
  list USER                        print folders with message counts
"""
import argparse
import base64
import imaplib
import os
import subprocess
import random
import smtplib
import socket
import sys
import time


def load_env():
    path = os.environ.get("CORVID_PEERS_ENV") or os.path.join(
        os.environ.get("CORVID_PEERS_RUN", "/tmp/corvid-peers"), "env")
    env = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v
    except FileNotFoundError:
        sys.exit("mail.py: no peers env file at %s (run scripts/peers/start.sh)" % path)
    return env


ENV = load_env()
HOST = ENV["PEERS_HOST"]
IMAP_PORT = int(ENV["MASTER_IMAP_PORT"])


def q(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def ok(res, what):
    typ, dat = res
    if typ != "OK":
        sys.exit("mail.py: %s failed: %s %r" % (what, typ, dat))
    return dat


def login(user):
    c = imaplib.IMAP4(HOST, IMAP_PORT)
    pw = ENV["ADMIN_PASS"] if user == ENV["ADMIN_USER"] else ENV["USER_PASS"]
    ok(c.login(user, pw), "login %s" % user)
    return c


def select(c, folder):
    ok(c.select(q(folder)), "select %s" % folder)


WORDS = ("replication mailbox message server client flag quota sieve annotation folder "
         "rename expunge seen subscribe backup murder update reserve activate delete "
         "the a of to and in is it for on with as at by from").split()


def make_message(rng, to, n):
    """A small RFC 5322 message; every fourth one carries a base64 attachment
    and a non-ASCII subject, so literals hold more than plain text."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    subj = " ".join(rng.choice(WORDS) for _ in range(5))
    mid = "<%08x.%d@corvid.test>" % (rng.getrandbits(32), n)
    hdr = ["From: Sender %d <sender%d@example.org>" % (n, n), "To: <%s>" % to,
           "Date: %s" % date, "Message-ID: %s" % mid, "MIME-Version: 1.0"]
    body = "\r\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randint(3, 20)))
    if n % 4 == 3:
        hdr.append("Subject: =?UTF-8?B?%s?=" % base64.b64encode(("caf\u00e9 " + subj).encode()).decode())
        bnd = "corvid-%08x" % rng.getrandbits(32)
        blob = base64.encodebytes(rng.randbytes(rng.randint(300, 3000))).decode().replace("\n", "\r\n")
        hdr.append('Content-Type: multipart/mixed; boundary="%s"' % bnd)
        body = ("--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n--%s\r\n"
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                "%s--%s--" % (bnd, body, bnd, blob, bnd))
    else:
        hdr.append("Subject: %s" % subj)
        hdr.append("Content-Type: text/plain; charset=us-ascii")
    return ("\r\n".join(hdr) + "\r\n\r\n" + body + "\r\n").encode()


def cmd_lmtp(a):
    rng = random.Random(a.seed)
    rcpt = "%s%s@%s" % (a.user, "+" + a.folder if a.folder else "", ENV["MASTER_NAME"])
    with smtplib.LMTP(HOST, int(ENV["MASTER_LMTP_PORT"])) as l:
        for i in range(a.n):
            refused = l.sendmail("sender@example.org", [rcpt], make_message(rng, rcpt, i))
            if refused:
                sys.exit("mail.py: LMTP refused %r" % refused)


def cmd_append(a):
    rng = random.Random(a.seed)
    c = login(a.user)
    for i in range(a.n):
        ok(c.append(q(a.folder), None, None, make_message(rng, a.user, i)), "append")
    c.logout()


def ensure_sasl_user(user):
    """Give `user` the lab's USER_PASS in the peers' sasldb, in each Cyrus
    instance's realm, so that a user start.sh did not create can log in
    (saslpasswd2 -c replaces an existing entry's password)."""
    db = os.path.join(ENV["CORVID_PEERS_RUN"], "sasldb2")
    for realm in (ENV["MASTER_NAME"], ENV["REPLICA_NAME"], ENV["REPLICA2_NAME"]):
        subprocess.run(["saslpasswd2", "-p", "-c", "-f", db, "-u", realm, user],
                       input=ENV["USER_PASS"].encode(), check=True)
    subprocess.run(["chown", "cyrus:mail", db], check=False)


def cmd_mkuser(a):
    if a.user != ENV["ADMIN_USER"]:
        ensure_sasl_user(a.user)
    c = login(ENV["ADMIN_USER"])
    ok(c.create("user/%s" % a.user), "create user/%s" % a.user)
    c.logout()
    c = login(a.user)
    c.subscribe("INBOX")
    for f in a.folders:
        ok(c.create(q(f)), "create %s" % f)
        ok(c.subscribe(q(f)), "subscribe %s" % f)
    c.logout()


def user_op(fn):
    def run(a):
        c = login(a.user)
        fn(c, a)
        c.logout()
    return run


def other_users_name(c, owner, folder):
    """OWNER's FOLDER as seen by another user (namespace 'Other Users')."""
    typ, dat = c.namespace()
    # (("" "/")) (("Other Users/" "/")) ...: second group is the other-users prefix
    parts = dat[0].decode().split("((")
    prefix = parts[2].split('"')[1]
    sep = parts[2].split('"')[3]
    return prefix + owner + ("" if folder == "INBOX" else sep + folder)


def cmd_seen(a):
    c = login(a.reader)
    select(c, other_users_name(c, a.owner, a.folder) if a.reader != a.owner else a.folder)
    ok(c.uid("STORE", a.uids, "+FLAGS", "(\\Seen)"), "store \\Seen")
    c.logout()


def cmd_sieve(a):
    script = sys.stdin.buffer.read() if a.file == "-" else open(a.file, "rb").read()
    s = socket.create_connection((HOST, int(ENV["MASTER_SIEVE_PORT"])))
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                sys.exit("mail.py: ManageSieve connection closed")
            if line.startswith((b"OK", b"NO", b"BYE")):
                if not line.startswith(b"OK"):
                    sys.exit("mail.py: ManageSieve said %r" % line)
                return
    reply()
    tok = base64.b64encode(b"\0" + a.user.encode() + b"\0" + ENV["USER_PASS"].encode())
    s.sendall(b'AUTHENTICATE "PLAIN" "' + tok + b'"\r\n'); reply()
    s.sendall(b'PUTSCRIPT "%s" {%d+}\r\n' % (a.name.encode(), len(script)) + script + b"\r\n"); reply()
    s.sendall(b'SETACTIVE "%s"\r\n' % a.name.encode()); reply()
    s.sendall(b"LOGOUT\r\n")
    s.close()


def cmd_list(a):
    c = login(a.user)
    typ, boxes = c.list()
    for b in boxes:
        name = b.decode().rsplit(' "/" ', 1)[-1]
        typ, st = c.status(name, "(MESSAGES UIDNEXT)")
        print(name, st[0].decode().split("(", 1)[1].rstrip(")"))
    c.logout()


def main():
    global IMAP_PORT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inst", choices=("master", "replica"), default="master")
    sp = ap.add_subparsers(dest="cmd", required=True)
    x = sp.add_parser("mkuser"); x.add_argument("user"); x.add_argument("folders", nargs="*")
    x = sp.add_parser("lmtp"); x.add_argument("user"); x.add_argument("n", type=int)
    x.add_argument("--folder"); x.add_argument("--seed", type=int, default=1)
    x = sp.add_parser("append"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("n", type=int)
    x.add_argument("--seed", type=int, default=2)
    x = sp.add_parser("flag"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("uids")
    x.add_argument("op", choices="+-"); x.add_argument("flags")
    x = sp.add_parser("expunge"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("uids")
    for n in ("create", "delete", "subscribe", "unsubscribe"):
        x = sp.add_parser(n); x.add_argument("user"); x.add_argument("folder")
    x = sp.add_parser("rename"); x.add_argument("user"); x.add_argument("old"); x.add_argument("new")
    x = sp.add_parser("setacl"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("who"); x.add_argument("rights")
    x = sp.add_parser("seen"); x.add_argument("reader"); x.add_argument("owner"); x.add_argument("folder"); x.add_argument("uids")
    x = sp.add_parser("quota"); x.add_argument("user"); x.add_argument("storage", type=int); x.add_argument("messages", type=int, nargs="?")
    x = sp.add_parser("annotate"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("entry"); x.add_argument("value")
    x = sp.add_parser("msgannot"); x.add_argument("user"); x.add_argument("folder"); x.add_argument("uid"); x.add_argument("entry"); x.add_argument("value")
    x = sp.add_parser("sieve"); x.add_argument("user"); x.add_argument("name"); x.add_argument("file")
    x = sp.add_parser("deluser"); x.add_argument("user")
    x = sp.add_parser("list"); x.add_argument("user")
    a = ap.parse_args()
    if a.inst == "replica":
        IMAP_PORT = int(ENV["REPLICA_IMAP_PORT"])

    ops = {
        "mkuser": cmd_mkuser, "lmtp": cmd_lmtp, "append": cmd_append, "seen": cmd_seen,
        "sieve": cmd_sieve, "list": cmd_list,
        "flag": user_op(lambda c, a: (select(c, a.folder), ok(c.uid("STORE", a.uids, a.op + "FLAGS", "(%s)" % a.flags), "store"))),
        "expunge": user_op(lambda c, a: (select(c, a.folder), ok(c.uid("STORE", a.uids, "+FLAGS", "(\\Deleted)"), "store"),
                                         ok(c.uid("EXPUNGE", a.uids), "uid expunge"))),
        "create": user_op(lambda c, a: (ok(c.create(q(a.folder)), "create"), ok(c.subscribe(q(a.folder)), "subscribe"))),
        "delete": user_op(lambda c, a: ok(c.delete(q(a.folder)), "delete")),
        "subscribe": user_op(lambda c, a: ok(c.subscribe(q(a.folder)), "subscribe")),
        "unsubscribe": user_op(lambda c, a: ok(c.unsubscribe(q(a.folder)), "unsubscribe")),
        "rename": user_op(lambda c, a: ok(c.rename(q(a.old), q(a.new)), "rename")),
        "setacl": user_op(lambda c, a: ok(c.setacl(q(a.folder), a.who, a.rights), "setacl")),
        "annotate": user_op(lambda c, a: ok(c.xatom("SETMETADATA", q(a.folder), "(%s %s)" % (a.entry, q(a.value))), "setmetadata")),
        "msgannot": user_op(lambda c, a: (select(c, a.folder), ok(c.uid("STORE", a.uid, "ANNOTATION",
                                          "(%s (value.priv %s))" % (a.entry, q(a.value))), "annotation"))),
    }
    if a.cmd == "quota":
        c = login(ENV["ADMIN_USER"])
        limits = "STORAGE %d" % a.storage + (" MESSAGE %d" % a.messages if a.messages else "")
        ok(c.setquota("user/%s" % a.user, "(%s)" % limits), "setquota")
        c.logout()
    elif a.cmd == "deluser":
        c = login(ENV["ADMIN_USER"])
        ok(c.setacl("user/%s" % a.user, ENV["ADMIN_USER"], "x"), "setacl x for delete")
        ok(c.delete("user/%s" % a.user), "delete user/%s" % a.user)
        c.logout()
    else:
        ops[a.cmd](a)


if __name__ == "__main__":
    main()
