#!/usr/bin/env python3
"""Collects the syslog(3) output of corvid's private Cyrus peers.

Cyrus logs only through syslog(3). This machine (and CI) has no syslog
daemon, and a global /dev/log would capture other programs' logs too, so
cyrexec.sh gives every Cyrus process a private /dev/log that points at the
UNIX datagram socket bound here; each message is appended to a log file.

usage: syslog-sink.py SOCKET LOGFILE PIDFILE
"""
import os
import signal
import socket
import sys
import time


def main():
    sock_path, log_path, pid_path = sys.argv[1:4]
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    os.chmod(sock_path, 0o666)  # Cyrus runs as user cyrus
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    out = open(log_path, "a", buffering=1)
    with open(pid_path, "w") as f:  # written last: its presence means "ready"
        f.write("%d\n" % os.getpid())
    while True:
        msg = s.recv(65536).decode("utf-8", "replace").rstrip("\n\0")
        # "<PRI>Mon dd hh:mm:ss tag[pid]: text": keep the severity, drop the rest of PRI
        sev = "?"
        if msg.startswith("<") and 0 < msg.find(">") < 5:
            pri, msg = msg[1:msg.find(">")], msg[msg.find(">") + 1:]
            sev = str(int(pri) & 7) if pri.isdigit() else "?"
        t = time.time()
        out.write("%s.%03d [%s] %s\n" % (time.strftime("%H:%M:%S", time.gmtime(t)),
                                         int(t * 1000) % 1000, sev, msg))


if __name__ == "__main__":
    main()
