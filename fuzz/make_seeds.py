#!/usr/bin/env python3
"""Builds corpus/seeds/<target>/ from the real captures in corpus/traces/.

Run from the repository root: `python3 fuzz/make_seeds.py`. Deterministic;
re-running rewrites the same files. Each seed starts with the target's
selector byte (see the target's module doc in fuzz/src/) where it has one.
Seeds stay small: every stream is cut to SEED_BYTES_MAX.
"""
import glob, os, zlib

SEED_BYTES_MAX = 16 * 1024
ROOT = 'corpus/seeds'


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data[:SEED_BYTES_MAX])


def read(p):
    with open(p, 'rb') as f:
        return f.read()


def base(p):
    return os.path.basename(p).replace('.', '-')


csync_c2s = sorted(glob.glob('corpus/traces/csync/live-*.c2s.bin'))
csync_s2c = sorted(glob.glob('corpus/traces/csync/live-*.s2c.bin'))
mup_c2s = sorted(glob.glob('corpus/traces/mupdate/*.c2s.bin'))
mup_s2c = sorted(glob.glob('corpus/traces/mupdate/*.s2c.bin'))
dsync = sorted(glob.glob('corpus/traces/dsync/*/cap*/*.raw'))

for p in csync_c2s:
    imap = 'imap-embedded' in p
    put('frame', base(p), b'\x00' + read(p))
    put('dlist', base(p), read(p))
    put('csync', base(p), (b'\x02' if imap else b'\x00') + read(p))
    if not imap:
        put('csync_server', base(p), b'\x00' + read(p))
for p in csync_s2c:
    imap = 'imap-embedded' in p
    put('csync', base(p), (b'\x03' if imap else b'\x01') + read(p))
for p in mup_c2s:
    put('frame', base(p), b'\x01' + read(p))
    put('mupdate', base(p), b'\x00' + read(p))
    put('mupdate_server', base(p), b'\x00' + read(p))
for p in mup_s2c:
    put('frame', base(p), b'\x02' + read(p))
    put('mupdate', base(p), b'\x01' + read(p))
for p in dsync:
    name = p.split('/')[-3] + '-' + p.split('/')[-2] + '-' + os.path.basename(p)
    put('dsync', name.replace('.', '-'), b'\x00' + read(p))

# compress: raw deflate (as COMPRESS DEFLATE sends it), sync-flushed per
# line, of a few real streams; selector 0 = default chunk limit, 7 = tiny.
for i, p in enumerate(csync_c2s[:4] + mup_c2s[:2]):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = b''
    for line in read(p)[:4096].split(b'\n'):
        out += c.compress(line + b'\n') + c.flush(zlib.Z_SYNC_FLUSH)
    put('compress', base(p), (b'\x00' if i % 2 == 0 else b'\x07') + out)
c = zlib.compressobj(9, zlib.DEFLATED, -15)
put('compress', 'zeros-bomb', b'\x00' + c.compress(b'\0' * (4 << 20)) + c.flush(zlib.Z_FINISH))

# sasl: mechanism line, initial response line ('-' none), responses.
put('sasl', 'plain-initial', b'PLAIN\nAHJlcGwAcmVwbHBhc3M=\n')
put('sasl', 'plain-challenge', b'PLAIN\n-\nYWRtaW4AYWRtaW4AcGFzcw==\n')
put('sasl', 'login', b'LOGIN\n-\ncmVwbA==\ncmVwbHBhc3M=\n')
put('sasl', 'login-initial', b'LOGIN\ncmVwbA==\ncmVwbHBhc3M=\n')
put('sasl', 'cancel', b'LOGIN\n-\n*\n')
put('sasl', 'unknown', b'CRAM-MD5\n-\n')

# config: the lab's real imapd.conf files and a few shapes of our own.
put('config', 'basic', b'configdirectory: /var/lib/cyrus\npartition-default: /var/spool/cyrus/mail\nadmins: repl admin\nsasl_pwcheck_method: saslauthd\n# comment\n  sync_log: 1\nsync_server_sync_timeout: 10m\nsync_host: replica\nchan_sync_host: other\ndefaultpartition: Default\n')
put('config', 'continuation', b'servername: a\\\n b\nmupdate_port: 0x10\nfailedloginpause: 1h2m3s\n')
for p in sorted(glob.glob('/work/shared/lab/**/imapd.conf', recursive=True))[:4]:
    put('config', 'lab-' + p.strip('/').replace('/', '-'), read(p))

# capture: a few real transcripts.
for p in sorted(glob.glob('corpus/traces/mupdate/*.txt'))[:4] + ['corpus/traces/csync/live-flag-change.txt']:
    put('capture', base(p), read(p))
