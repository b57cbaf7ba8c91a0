#!/usr/bin/env python3
"""MUPDATE client sessions for capture-all.sh: one scenario = one connection.

    mupdate-scenarios.py --port RELAY_PORT [--direct-port MUPDATE_PORT] SCENARIO

The session talks to --port (the capture relay in front of the real Cyrus
mupdate master). Scenarios that need a second party (UPDATE streams) make
their changes over a separate, uncaptured connection to --direct-port.
Every scenario creates its own mailbox names and deletes only names that
exist: DELETE/DEACTIVATE of an unknown name crashes Cyrus 3.6.1's mupdate
(only the 'crash-delete-unknown' scenario does that, on purpose).

Python standard library only. Credentials come from the peers env file
($CORVID_PEERS_ENV, else $CORVID_PEERS_RUN/env, else /tmp/corvid-peers/env).
"""
import argparse
import base64
import os
import re
import socket
import sys
import time
import zlib

LIT = re.compile(rb"\{(\d+)\+?\}\r\n$")


def load_env():
    path = os.environ.get("CORVID_PEERS_ENV") or os.path.join(
        os.environ.get("CORVID_PEERS_RUN", "/tmp/corvid-peers"), "env")
    env = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


ENV = load_env()
USER, PASS = ENV["MUPDATE_USER"], ENV["MUPDATE_PASS"]
LOC1, LOC2 = "127.0.0.1:25901!default", "127.0.0.1:25902!default"


class Conn:
    """One MUPDATE connection: raw sends, response reads (literal-aware),
    optional COMPRESS DEFLATE."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.z = None  # (compressor, decompressor) once COMPRESS is active

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        if self.z:
            data = self.z[0].compress(data) + self.z[0].flush(zlib.Z_SYNC_FLUSH)
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += self.z[1].decompress(chunk) if self.z else chunk

    def line(self):
        while b"\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def response(self):
        """One response line with the literals it announces."""
        out = b""
        while True:
            ln = self.line()
            out += ln
            m = LIT.search(ln)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += self.buf[:n]
            self.buf = self.buf[n:]

    def until(self, tag):
        """Responses up to the status (OK/NO/BAD/BYE) tagged `tag`."""
        got = []
        while True:
            r = self.response()
            got.append(r)
            w = r.split(b" ", 2)
            if w[0] == tag.encode() and len(w) > 1 and w[1].rstrip(b"\r\n") in (b"OK", b"NO", b"BAD", b"BYE"):
                return got
            if w[0] == b"*" and w[1].startswith(b"BYE"):
                return got

    def banner(self):
        while True:
            r = self.response()
            if r.startswith(b"* OK") or r.startswith(b"* BYE"):
                return

    def cmd(self, tag, rest=""):
        self.send("%s %s\r\n" % (tag, rest) if rest else "%s\r\n" % tag)
        return self.until(tag)

    def raw(self, data, wait=0.5):
        """Send anything; read what comes back for `wait` seconds."""
        self.send(data)
        self.s.settimeout(wait)
        try:
            while True:
                self._fill()
        except socket.timeout:
            pass
        except EOFError:
            pass
        finally:
            self.s.settimeout(30)
        self.buf = b""

    def auth(self, tag="A01", user=USER, password=PASS, style="literal"):
        tok = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
        if style == "literal":  # what Cyrus's own clients send
            return self.cmd(tag, 'AUTHENTICATE "PLAIN" {%d+}\r\n%s' % (len(tok), tok))
        return self.cmd(tag, 'AUTHENTICATE "PLAIN" "%s"' % tok)

    def compress(self):
        self.z = (zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15),
                  zlib.decompressobj(-15))

    def logout(self, tag="Q01"):
        self.send("%s LOGOUT\r\n" % tag)
        try:
            self.until(tag)
            while True:
                self._fill()
        except (EOFError, OSError):
            pass
        self.s.close()


def q(s):
    return '"%s"' % s


def uniq(prefix):
    return "%s%d" % (prefix, int(time.time() * 1000) % 10**9)


def session(a, auth=True):
    c = Conn(a.port)
    c.banner()
    if auth:
        c.auth()
    return c


def direct(a):
    c = Conn(a.direct_port)
    c.banner()
    c.auth()
    return c


# ------------------------------------------------------------------ scenarios
def sc_auth(a):
    """AUTHENTICATE: literal and quoted initial responses, the no-initial-
    response challenge (a bare empty line, no '+ '), cancel with '*', wrong
    password, a valid user who is not an admin, an unknown mechanism, and
    AUTHENTICATE after success."""
    c = Conn(a.port)
    c.banner()
    c.auth("A01", password="wrong")
    c.auth("A02", user="alice", password=ENV["USER_PASS"], style="quoted")
    c.cmd("A03", 'AUTHENTICATE "NOSUCHMECH"')
    c.cmd("A04", "AUTHENTICATE PLAIN")
    c.send('A05 AUTHENTICATE "PLAIN"\r\n')
    c.line()
    c.send("*\r\n")
    c.until("A05")
    c.send('A06 AUTHENTICATE "PLAIN"\r\n')
    c.line()
    c.send(base64.b64encode(("\0%s\0%s" % (USER, PASS)).encode()) + b"\r\n")
    c.until("A06")
    c.auth("A07", style="quoted")
    c.cmd("N01", "NOOP")
    c.logout()


def sc_noop(a):
    c = session(a)
    c.cmd("N01", "NOOP")
    c.cmd("N02", "noop")
    c.logout()


def sc_reserve(a):
    """RESERVE, the same again (tolerated), the same name elsewhere (NO)."""
    c = session(a)
    n = uniq("user.res")
    c.cmd("R01", "RESERVE %s %s" % (q(n), q(LOC1)))
    c.cmd("F01", "FIND %s" % q(n))
    c.cmd("R02", "RESERVE %s %s" % (q(n), q(LOC1)))
    c.cmd("R03", "RESERVE %s %s" % (q(n), q(LOC2)))
    c.cmd("X01", "DELETE %s" % q(n))
    c.logout()


def sc_activate(a):
    """RESERVE then ACTIVATE; ACTIVATE without RESERVE; ACTIVATE to another
    location (a move) with a new ACL."""
    c = session(a)
    n, m = uniq("user.act"), uniq("user.act2")
    c.cmd("R01", "RESERVE %s %s" % (q(n), q(LOC1)))
    c.cmd("A01", "ACTIVATE %s %s %s" % (q(n), q(LOC1), q("act\tlrswipkxtecdan\t")))
    c.cmd("F01", "FIND %s" % q(n))
    c.cmd("A02", "ACTIVATE %s %s %s" % (q(m), q(LOC1), q("act\tlrswipkxtecdan\t")))
    c.cmd("A03", "ACTIVATE %s %s %s" % (q(m), q(LOC2), q("act\tlrs\tanyone\tr\t")))
    c.cmd("F02", "FIND %s" % q(m))
    c.cmd("X01", "DELETE %s" % q(n))
    c.cmd("X02", "DELETE %s" % q(m))
    c.logout()


def sc_deactivate(a):
    """DEACTIVATE an active mailbox: it becomes RESERVED, its ACL dropped."""
    c = session(a)
    n = uniq("user.deact")
    c.cmd("A01", "ACTIVATE %s %s %s" % (q(n), q(LOC1), q("d\tlrswipkxtecdan\t")))
    c.cmd("D01", "DEACTIVATE %s %s" % (q(n), q(LOC1)))
    c.cmd("F01", "FIND %s" % q(n))
    c.cmd("X01", "DELETE %s" % q(n))
    c.logout()


def sc_delete(a):
    c = session(a)
    n = uniq("user.del")
    c.cmd("A01", "ACTIVATE %s %s %s" % (q(n), q(LOC1), q("d\tlrswipkxtecdan\t")))
    c.cmd("X01", "DELETE %s" % q(n))
    c.cmd("F01", "FIND %s" % q(n))
    c.logout()


def sc_find(a):
    """FIND an active, a reserved and an unknown name; a literal argument."""
    c = session(a)
    n, r = uniq("user.find"), uniq("user.findr")
    c.cmd("A01", "ACTIVATE %s %s %s" % (q(n), q(LOC1), q("f\tlrswipkxtecdan\t")))
    c.cmd("R01", "RESERVE %s %s" % (q(r), q(LOC2)))
    c.cmd("F01", "FIND %s" % q(n))
    c.cmd("F02", "FIND %s" % q(r))
    c.cmd("F03", 'FIND "user.nosuchmailbox"')
    c.cmd("F04", "FIND {%d+}\r\n%s" % (len(n), n))
    c.cmd("X01", "DELETE %s" % q(n))
    c.cmd("X02", "DELETE %s" % q(r))
    c.logout()


def populate(c, prefix):
    names = []
    for i, (loc, acl) in enumerate([(LOC1, "u\tlrswipkxtecdan\t"), (LOC2, "anyone\tlrs\t"), (LOC1, "")]):
        n = "%s%d" % (prefix, i)
        if acl:
            c.cmd("P%02d" % i, "ACTIVATE %s %s %s" % (q(n), q(loc), q(acl)))
        else:
            c.cmd("P%02d" % i, "RESERVE %s %s" % (q(n), q(loc)))
        names.append(n)
    return names


def cleanup(c, names):
    for i, n in enumerate(names):
        c.cmd("Y%02d" % i, "DELETE %s" % q(n))


def sc_list(a):
    c = session(a)
    names = populate(c, uniq("user.list"))
    c.cmd("L01", "LIST")
    cleanup(c, names)
    c.logout()


def sc_list_prefix(a):
    """LIST with a prefix: a plain string-prefix match on the location."""
    c = session(a)
    names = populate(c, uniq("user.lp"))
    c.cmd("L01", "LIST %s" % q(LOC2.split("!")[0] + "!"))
    c.cmd("L02", 'LIST "127.0.0.1:2590"')
    c.cmd("L03", 'LIST "nowhere!"')
    cleanup(c, names)
    c.logout()


def sc_update(a):
    """UPDATE: the full dump, then only NOOP and LOGOUT are legal."""
    w = direct(a)
    names = populate(w, uniq("user.upd"))
    c = session(a)
    c.cmd("U01", "UPDATE")
    c.cmd("F01", 'FIND "user.x"')
    c.cmd("N01", "NOOP")
    c.logout()
    cleanup(w, names)
    w.logout()


def stream(a, args):
    w = direct(a)
    base = uniq("user.str")
    names = populate(w, base)
    c = session(a)
    c.cmd("U01", "UPDATE" + args)
    # changes by another party are queued per subscriber by name and sent
    # with their current state; a NOOP from the subscriber flushes them
    n1, n2 = base + "new1", base + "new2"
    w.cmd("W01", "ACTIVATE %s %s %s" % (q(n1), q(LOC1), q("s\tlrswipkxtecdan\t")))
    w.cmd("W02", "ACTIVATE %s %s %s" % (q(n2), q(LOC2), q("s\tlrswipkxtecdan\t")))
    w.cmd("W03", "RESERVE %s %s" % (q(base + "res"), q(LOC1)))
    w.cmd("W04", "DELETE %s" % q(names[0]))
    c.cmd("N01", "NOOP")
    w.cmd("W05", "ACTIVATE %s %s %s" % (q(n1), q(LOC2), q("s\tlrs\t")))
    w.cmd("W06", "DELETE %s" % q(n2))
    c.cmd("N02", "NOOP")
    c.logout()
    for i, n in enumerate(names[1:] + [n1, base + "res"]):
        w.cmd("Z%02d" % i, "DELETE %s" % q(n))
    w.logout()


def sc_update_stream(a):
    stream(a, "")


def sc_partial_update(a):
    """UPDATE with a host argument (PARTIAL-UPDATE): only that server's part."""
    stream(a, " %s" % q(LOC2.split("!")[0]))


def sc_logout(a):
    c = session(a)
    c.logout("Q01")


def sc_errors_unauthenticated(a):
    c = session(a, auth=False)
    c.cmd("F01", 'FIND "user.x"')
    c.cmd("N01", "NOOP")
    c.cmd("L01", "LIST")
    c.cmd("U01", "UPDATE")
    c.cmd("R01", 'RESERVE "user.x" "h!p"')
    c.cmd("A01", 'ACTIVATE "user.x" "h!p" ""')
    c.logout()


def sc_errors_bad_command(a):
    c = session(a)
    c.cmd("T1", "FROB")
    c.cmd("T2", "XYZZY 1 2 3")
    c.cmd("N1", "NOOP extra")
    c.raw(b"\r\n")
    c.raw(b"NOTAG\r\n")
    c.cmd("T3", "FIND user.atom")
    c.cmd("T4", "STARTTLS")
    c.cmd("U0", 'UPDATE ""')
    c.logout()


def sc_errors_missing_args(a):
    c = session(a)
    c.cmd("F1", "FIND")
    c.cmd("R1", 'RESERVE "user.x"')
    c.cmd("A1", 'ACTIVATE "user.x" "h!p"')
    c.cmd("D1", 'DEACTIVATE "user.x"')
    c.cmd("X1", "DELETE")
    c.cmd("L1", 'LIST "a" "b"')
    c.cmd("F2", 'FIND "a" "b"')
    c.logout()


def sc_compress(a):
    """COMPRESS: unknown algorithm refused, DEFLATE accepted, then a
    compressed session; a second COMPRESS is refused."""
    c = session(a)
    n = uniq("user.z")
    c.cmd("Z0", 'COMPRESS "GZIP"')
    c.cmd("Z1", 'COMPRESS "DEFLATE"')
    c.compress()
    c.cmd("A01", "ACTIVATE %s %s %s" % (q(n), q(LOC1), q("z\tlrswipkxtecdan\t")))
    c.cmd("F01", "FIND %s" % q(n))
    c.cmd("L01", "LIST %s" % q(LOC1.split("!")[0] + "!"))
    c.cmd("Z2", 'COMPRESS "DEFLATE"')
    c.cmd("X01", "DELETE %s" % q(n))
    c.logout()


def sc_slave_before(a):
    """(uncaptured, for the slave capture) names the slave's first UPDATE dumps."""
    c = Conn(a.port)
    c.banner()
    c.auth()
    c.cmd("A01", "ACTIVATE %s %s %s" % (q("user.slave0"), q(LOC1), q("s\tlrswipkxtecdan\t")))
    c.cmd("A02", "ACTIVATE %s %s %s" % (q("user.slave1"), q(LOC2), q("anyone\tlrs\t")))
    c.cmd("R01", "RESERVE %s %s" % (q("user.slave2"), q(LOC1)))
    c.logout()


def sc_slave_after(a):
    """(uncaptured, for the slave capture) changes streamed to the booted slave."""
    c = Conn(a.port)
    c.banner()
    c.auth()
    c.cmd("A01", "ACTIVATE %s %s %s" % (q("user.slave3"), q(LOC1), q("s\tlrswipkxtecdan\t")))
    c.cmd("A02", "ACTIVATE %s %s %s" % (q("user.slave2"), q(LOC1), q("s\tlrswipkxtecdan\t")))
    c.cmd("X01", "DELETE %s" % q("user.slave0"))
    c.logout()


def sc_crash_delete_unknown(a):
    """Cyrus 3.6.1 mupdate dereferences NULL on DELETE of an unknown name:
    the whole server process dies and master(8) respawns it."""
    c = session(a)
    c.raw(b'X1 DELETE "user.nonexistent-crash"\r\n', wait=2.0)
    try:
        c.s.close()
    except OSError:
        pass


SCENARIOS = {k[3:].replace("_", "-"): v for k, v in globals().items() if k.startswith("sc_")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--direct-port", type=int, default=int(ENV["MUPDATE_PORT"]))
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    a = ap.parse_args()
    SCENARIOS[a.scenario](a)


if __name__ == "__main__":
    main()
