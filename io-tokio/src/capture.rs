//! A capturing TCP relay: sits between a real client and a real server,
//! forwards every byte unchanged, and hands each direction's *decompressed*
//! bytes to a [`Tap`] as they flow — for transcripts in `corpus/traces/`
//! and for live tests that decode real peers' traffic while it happens.
//!
//! What it does:
//! * Forwards both directions as they arrive, half-closing each side when
//!   the other ends (so `EXIT`/`LOGOUT` sequences finish naturally).
//! * Follows COMPRESS DEFLATE (RFC 4978, raw deflate): when the client sends
//!   `COMPRESS DEFLATE` (csync, untagged) or `<tag> COMPRESS "DEFLATE"` /
//!   `<tag> COMPRESS DEFLATE` (MUPDATE, IMAP) and the server answers with the
//!   matching `OK` (untagged `OK …` for csync, `<tag> OK …` otherwise), every
//!   later byte of both directions is inflated with
//!   [`proto::compress::Inflater`] before the tap sees it. The switch happens
//!   at the exact byte after the server's OK line, and the client's direction
//!   is switched before that OK is forwarded, so no compressed client byte is
//!   ever read as plain text.
//! * [`TranscriptWriter`] is the tap behind `corvid capture`: it writes the
//!   exact decompressed streams (`NAME.c2s.bin`, `NAME.s2c.bin`) and a
//!   readable, still byte-exact transcript (`NAME.txt`, format below;
//!   [`decode_transcript`] turns it back into the two streams).
//!
//! What it never does: change, delay on purpose, or inject a byte; decide
//! anything about the protocol beyond spotting the COMPRESS switch; or stop
//! forwarding because the tap failed — a corrupt deflate stream only stops
//! the *tap* for that direction ([`Event::DecodeError`]), the peers keep
//! talking.
//!
//! Why not [`proto::frame`]: that framer exists to decode (it drops CRs and
//! refuses over-limit messages); a tap must keep every byte and its exact
//! position to find the switch point. The line/literal scanner here keeps
//! only a fixed head and tail of the current line, so memory per connection
//! is bounded whatever the peers send: one read buffer, one inflate chunk,
//! and (in the transcript writer) at most [`TranscriptOptions::record_bytes_max`]
//! per direction. Known blind spot: when a server refuses a synchronising
//! literal `{n}`, the client does not send the `n` bytes but the scanner
//! still counts them as literal; that only changes how the `.txt` labels
//! lines (`:` vs `|`) and could hide a COMPRESS command in that window —
//! the `.bin` streams stay exact.
//!
//! # Transcript format (`.txt`)
//!
//! ```text
//! # header and notes: lines starting with '#'
//! S: * OK replica.peers Cyrus sync server …      a line from the server
//! C: APPLY MESSAGE (%{default 3b5f…768d 4388}      a line from the client …
//! C| Return-Path: <sender@example.org>              … the literal it announced …
//! C: )                                              … and the rest of its line
//! ```
//!
//! Each record is `D` (`C` client→server, `S` server→client), then `:` for
//! protocol-line bytes or `|` for literal bytes, a space, and the bytes
//! escaped: printable ASCII as is, `\\` for a backslash, `\t` `\r` `\n` for
//! TAB CR LF, `\xNN` for every other byte. A record stands for its bytes plus
//! an implied CRLF, unless it ends with `\-`, which means "no CRLF here" (a
//! bare-LF line, a literal piece that does not end in CRLF, or a record split
//! because it reached the size limit). Concatenating one direction's records
//! in order gives exactly that direction's `.bin` stream.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use proto::compress::{CompressError, InflateOptions, Inflater};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Which way bytes flow through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the connecting client to the target server.
    ClientToServer,
    /// From the target server back to the client.
    ServerToClient,
}

impl Dir {
    /// The transcript letter: `C` or `S`.
    pub fn letter(self) -> char {
        match self {
            Dir::ClientToServer => 'C',
            Dir::ServerToClient => 'S',
        }
    }

    fn index(self) -> usize {
        match self {
            Dir::ClientToServer => 0,
            Dir::ServerToClient => 1,
        }
    }
}

/// Byte counts of one relayed connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes the client sent, as on the wire (compressed after the switch).
    pub c2s_wire_bytes: u64,
    /// Bytes the server sent, as on the wire.
    pub s2c_wire_bytes: u64,
    /// Client bytes after inflating: what the tap saw.
    pub c2s_plain_bytes: u64,
    /// Server bytes after inflating: what the tap saw.
    pub s2c_plain_bytes: u64,
    /// Whether the peers switched to COMPRESS DEFLATE.
    pub compressed: bool,
    /// Whether inflating failed in either direction (the tap then stopped
    /// seeing that direction; forwarding went on).
    pub decode_failed: bool,
}

/// Something the relay noticed, besides bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Both directions are raw deflate on the wire from here on. The
    /// offsets are plain-stream positions (bytes the tap has seen so far).
    Compressing {
        /// Client bytes before the switch.
        c2s_offset: u64,
        /// Server bytes before the switch, including the server's OK line.
        s2c_offset: u64,
    },
    /// The peer in this direction sent bytes that do not inflate; the tap
    /// sees nothing more of this direction.
    DecodeError {
        /// The direction that broke.
        dir: Dir,
        /// What the inflater said.
        error: CompressError,
    },
    /// This direction reached its end (the sender closed or reset).
    Eof(Dir),
    /// Both directions ended; the last event of a connection.
    Closed(Summary),
}

/// Receives what flows through the relay. Calls for one connection are
/// serialised: `on_bytes` of both directions in arrival order, events at
/// the point they happen, [`Event::Closed`] last.
pub trait Tap: Send {
    /// Decompressed bytes of `dir`, exactly as the peer meant them.
    fn on_bytes(&mut self, dir: Dir, bytes: &[u8]);
    /// A relay event; ignored unless the tap cares.
    fn on_event(&mut self, event: &Event) {
        let _ = event;
    }
}

impl<F: FnMut(Dir, &[u8]) + Send> Tap for F {
    fn on_bytes(&mut self, dir: Dir, bytes: &[u8]) {
        self(dir, bytes)
    }
}

/// Relay limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Largest single read from either socket; also the relay's buffer size.
    pub read_chunk_bytes: usize,
    /// Limits of each direction's inflater (its output chunk bounds what the
    /// tap gets per call).
    pub inflate: InflateOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            read_chunk_bytes: 64 * 1024,
            inflate: InflateOptions::default(),
        }
    }
}

/// Why a capture could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The target server could not be reached (its address or its state,
    /// not the client's fault).
    #[error("cannot connect to target {target}: {source}")]
    Connect {
        /// The address we tried.
        target: String,
        /// What the OS said.
        source: io::Error,
    },
    /// Accepting a client connection failed (our listener's problem).
    #[error("accept failed: {0}")]
    Accept(io::Error),
    /// Writing the transcript files failed (our disk, not the peers).
    #[error("writing transcript {path}: {source}")]
    Transcript {
        /// The file we could not write.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

// ------------------------------------------------------------------ scanning

/// Bytes of a line kept from its start: enough for a tag and `COMPRESS "DEFLATE"`.
const LINE_HEAD_BYTES: usize = 128;
/// Bytes of a line kept from its end: enough for `%{partition sha1 size}`.
const LINE_TAIL_BYTES: usize = 160;

/// What the scanner says about the bytes it just consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// Protocol-line bytes; `ended` when they include the line's LF.
    Line { len: usize, ended: bool },
    /// Literal bytes; `ended` when they are the literal's last.
    Literal { len: usize, ended: bool },
}

/// Splits one direction's plain bytes into protocol-line and literal pieces,
/// byte-exact, keeping only a bounded head and tail of the current line.
#[derive(Debug, Default)]
struct Scanner {
    literal_left: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Head of the line that ended last (without its line end).
    last_line: Vec<u8>,
}

impl Scanner {
    /// Consumes a non-empty prefix of `data` and says what it was.
    fn next(&mut self, data: &[u8]) -> Piece {
        debug_assert!(!data.is_empty());
        if self.literal_left > 0 {
            let len = data
                .len()
                .min(usize::try_from(self.literal_left).unwrap_or(usize::MAX));
            self.literal_left -= len as u64;
            return Piece::Literal {
                len,
                ended: self.literal_left == 0,
            };
        }
        let (len, ended) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (data.len(), false),
        };
        let bytes = &data[..len];
        if self.head.len() < LINE_HEAD_BYTES {
            let take = (LINE_HEAD_BYTES - self.head.len()).min(len);
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.tail
            .extend_from_slice(&bytes[len.saturating_sub(LINE_TAIL_BYTES)..]);
        if self.tail.len() > LINE_TAIL_BYTES {
            self.tail.drain(..self.tail.len() - LINE_TAIL_BYTES);
        }
        if ended {
            let tail = trim_line_end(&self.tail);
            self.literal_left = literal_announced(tail).unwrap_or(0);
            self.last_line.clear();
            self.last_line.extend_from_slice(trim_line_end(&self.head));
            self.head.clear();
            self.tail.clear();
        }
        Piece::Line { len, ended }
    }

    /// The head of the line that ended with the last `Piece::Line { ended: true }`.
    fn last_line(&self) -> &[u8] {
        &self.last_line
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The size of the literal a line announces at its end: `{n}`, `{n+}`, or
/// Cyrus's file literal `%{partition guid n}`.
fn literal_announced(line: &[u8]) -> Option<u64> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let body = &inner[open + 1..];
    let digits = if open > 0 && inner[open - 1] == b'%' {
        // %{partition guid size}: the size is the last of three words
        let mut words = body.split(|&b| b == b' ');
        let (_, _, size, rest) = (words.next()?, words.next()?, words.next()?, words.next());
        if rest.is_some() {
            return None;
        }
        size
    } else {
        body.strip_suffix(b"+").unwrap_or(body)
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Spots the COMPRESS DEFLATE exchange in the plain phase.
#[derive(Debug, Default)]
struct CompressWatch {
    /// Set after the client asked: `Some(None)` untagged (csync),
    /// `Some(Some(tag))` tagged (MUPDATE, IMAP).
    pending: Option<Option<Vec<u8>>>,
}

impl CompressWatch {
    fn client_line(&mut self, line: &[u8]) {
        let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let is_deflate =
            |w: &[u8]| w.eq_ignore_ascii_case(b"DEFLATE") || w.eq_ignore_ascii_case(b"\"DEFLATE\"");
        match words.as_slice() {
            [cmd, arg] if cmd.eq_ignore_ascii_case(b"COMPRESS") && is_deflate(arg) => {
                self.pending = Some(None)
            }
            [tag, cmd, arg] if cmd.eq_ignore_ascii_case(b"COMPRESS") && is_deflate(arg) => {
                self.pending = Some(Some(tag.to_vec()))
            }
            _ => {}
        }
    }

    /// Whether this server line accepts the pending COMPRESS.
    fn server_line(&mut self, line: &[u8]) -> bool {
        let Some(pending) = &self.pending else {
            return false;
        };
        let status = match pending {
            None if line.starts_with(b"* ") => return false,
            None => line,
            Some(tag) => match line
                .strip_prefix(tag.as_slice())
                .and_then(|r| r.strip_prefix(b" "))
            {
                Some(rest) => rest,
                None => return false,
            },
        };
        self.pending = None;
        status.len() >= 2 && status[..2].eq_ignore_ascii_case(b"OK")
    }
}

// ------------------------------------------------------------------ the relay core

#[derive(Debug, Default)]
struct Side {
    wire: u64,
    plain: u64,
    scanner: Scanner,
    inflater: Option<Inflater>,
    /// The tap stopped seeing this direction (inflate failed).
    broken: bool,
}

/// Both directions' decoding state and the tap, behind one lock so that
/// the COMPRESS switch of both directions is one step.
struct Shared<T> {
    sides: [Side; 2],
    watch: CompressWatch,
    compressed: bool,
    decode_failed: bool,
    inflate: InflateOptions,
    tap: T,
}

impl<T: Tap> Shared<T> {
    fn new(tap: T, opts: &Options) -> Self {
        Self {
            sides: Default::default(),
            watch: CompressWatch::default(),
            compressed: false,
            decode_failed: false,
            inflate: opts.inflate,
            tap,
        }
    }

    /// Everything that arrived from `dir`'s sender, before it is forwarded.
    fn process(&mut self, dir: Dir, mut data: &[u8]) {
        self.sides[dir.index()].wire += data.len() as u64;
        while !data.is_empty() {
            if self.sides[dir.index()].broken {
                return;
            }
            if self.sides[dir.index()].inflater.is_some() {
                self.inflate(dir, data);
                return;
            }
            let used = self.plain_until_switch(dir, data);
            data = &data[used..];
        }
    }

    /// Plain phase: passes bytes to the tap, watching for the switch;
    /// returns how many bytes were plain (all, or up to the switch point).
    fn plain_until_switch(&mut self, dir: Dir, data: &[u8]) -> usize {
        let mut used = 0;
        let mut switch = false;
        while used < data.len() && !switch {
            let side = &mut self.sides[dir.index()];
            let piece = side.scanner.next(&data[used..]);
            match piece {
                Piece::Literal { len, .. } => used += len,
                Piece::Line { len, ended } => {
                    used += len;
                    if ended {
                        let line = side.scanner.last_line();
                        match dir {
                            Dir::ClientToServer => self.watch.client_line(line),
                            Dir::ServerToClient => switch = self.watch.server_line(line),
                        }
                    }
                }
            }
        }
        self.emit(dir, &data[..used]);
        if switch {
            for side in &mut self.sides {
                side.inflater = Some(Inflater::new(self.inflate));
            }
            self.compressed = true;
            let event = Event::Compressing {
                c2s_offset: self.sides[0].plain,
                s2c_offset: self.sides[1].plain,
            };
            self.tap.on_event(&event);
        }
        used
    }

    fn inflate(&mut self, dir: Dir, data: &[u8]) {
        let mut result = Ok(());
        {
            let inflater = self.sides[dir.index()]
                .inflater
                .as_mut()
                .expect("compressed side");
            if let Err(e) = inflater.feed(data) {
                result = Err(e);
            }
        }
        while result.is_ok() {
            let inflater = self.sides[dir.index()]
                .inflater
                .as_mut()
                .expect("compressed side");
            match inflater.pull() {
                Ok(Some(chunk)) => self.emit(dir, &chunk),
                Ok(None) => break,
                Err(e) => result = Err(e),
            }
        }
        if let Err(error) = result {
            self.sides[dir.index()].broken = true;
            self.decode_failed = true;
            self.tap.on_event(&Event::DecodeError { dir, error });
        }
    }

    fn emit(&mut self, dir: Dir, plain: &[u8]) {
        if plain.is_empty() {
            return;
        }
        self.sides[dir.index()].plain += plain.len() as u64;
        self.tap.on_bytes(dir, plain);
    }

    fn summary(&self) -> Summary {
        Summary {
            c2s_wire_bytes: self.sides[0].wire,
            s2c_wire_bytes: self.sides[1].wire,
            c2s_plain_bytes: self.sides[0].plain,
            s2c_plain_bytes: self.sides[1].plain,
            compressed: self.compressed,
            decode_failed: self.decode_failed,
        }
    }
}

async fn pump<T: Tap>(
    dir: Dir,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Mutex<Shared<T>>,
    chunk_bytes: usize,
) {
    let mut buf = vec![0u8; chunk_bytes.max(1)];
    loop {
        // A reset counts as the end of this direction: the relay mirrors it
        // by closing the other side's write half, as a clean end would.
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        // Decode before forwarding: the COMPRESS switch must be in place
        // before the peer can react to the bytes that trigger it.
        shared.lock().expect("tap panicked").process(dir, &buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    shared
        .lock()
        .expect("tap panicked")
        .tap
        .on_event(&Event::Eof(dir));
}

/// Relays one already-connected pair until both directions end; returns the
/// byte counts and the tap (which has seen [`Event::Closed`]).
pub async fn relay<T: Tap>(
    client: TcpStream,
    server: TcpStream,
    tap: T,
    opts: &Options,
) -> (Summary, T) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let shared = Mutex::new(Shared::new(tap, opts));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(
            Dir::ClientToServer,
            client_read,
            server_write,
            &shared,
            opts.read_chunk_bytes
        ),
        pump(
            Dir::ServerToClient,
            server_read,
            client_write,
            &shared,
            opts.read_chunk_bytes
        ),
    );
    let mut shared = shared.into_inner().expect("tap panicked");
    let summary = shared.summary();
    shared.tap.on_event(&Event::Closed(summary));
    (summary, shared.tap)
}

/// Connects to `target` and relays `client` to it.
pub async fn relay_to<T: Tap>(
    client: TcpStream,
    target: &str,
    tap: T,
    opts: &Options,
) -> Result<(Summary, T), CaptureError> {
    let server = TcpStream::connect(target)
        .await
        .map_err(|source| CaptureError::Connect {
            target: target.to_string(),
            source,
        })?;
    Ok(relay(client, server, tap, opts).await)
}

/// Accepts one connection on `listener`, relays it to `target`, returns when
/// both directions have ended.
pub async fn relay_one<T: Tap>(
    listener: &TcpListener,
    target: &str,
    tap: T,
    opts: &Options,
) -> Result<(Summary, T), CaptureError> {
    let (client, _) = listener.accept().await.map_err(CaptureError::Accept)?;
    relay_to(client, target, tap, opts).await
}

/// Serves `listener` until `connections_max` connections have been relayed
/// and finished (forever if `None`), each with its own tap from `make_tap`
/// (given the 1-based connection number and the client's address). A
/// connection whose target is unreachable is closed and reported through
/// `on_done`, and serving goes on.
pub async fn serve<T, M, D>(
    listener: TcpListener,
    target: String,
    opts: Options,
    connections_max: Option<u64>,
    mut make_tap: M,
    on_done: D,
) -> Result<(), CaptureError>
where
    T: Tap + 'static,
    M: FnMut(u64, SocketAddr) -> Result<T, CaptureError>,
    D: Fn(u64, Result<(Summary, T), CaptureError>) + Send + Sync + 'static,
{
    let on_done = std::sync::Arc::new(on_done);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while !matches!(connections_max, Some(max) if n >= max) {
        let (client, peer) = listener.accept().await.map_err(CaptureError::Accept)?;
        n += 1;
        let tap = make_tap(n, peer)?;
        let (target, on_done) = (target.clone(), on_done.clone());
        tasks.spawn(async move {
            let result = relay_to(client, &target, tap, &opts).await;
            on_done(n, result);
        });
        // Reap finished connections so a long-running relay holds no dead tasks.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Binds a relay on an ephemeral port of 127.0.0.1 and relays the first
/// connection to `target` in a spawned task: the one-line setup a test
/// needs (point the real client at the returned address, then await the
/// handle for the summary and the tap).
pub async fn spawn_one<T: Tap + 'static>(
    target: String,
    tap: T,
    opts: Options,
) -> io::Result<(
    SocketAddr,
    tokio::task::JoinHandle<Result<(Summary, T), CaptureError>>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move { relay_one(&listener, &target, tap, &opts).await });
    Ok((addr, handle))
}

/// A tap that keeps what it sees in memory, for tests: both directions'
/// plain bytes (each up to `bytes_max`; beyond it bytes are dropped and
/// `truncated` is set) and every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collector {
    /// Client→server plain bytes.
    pub c2s: Vec<u8>,
    /// Server→client plain bytes.
    pub s2c: Vec<u8>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Whether either direction exceeded `bytes_max`.
    pub truncated: bool,
    bytes_max: usize,
}

impl Collector {
    /// Keeps at most `bytes_max` bytes per direction.
    pub fn new(bytes_max: usize) -> Self {
        Self {
            bytes_max,
            ..Self::default()
        }
    }

    /// Whether the relay saw the COMPRESS switch.
    pub fn compressed(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Compressing { .. }))
    }
}

impl Tap for Collector {
    fn on_bytes(&mut self, dir: Dir, bytes: &[u8]) {
        let max = self.bytes_max;
        let buf = match dir {
            Dir::ClientToServer => &mut self.c2s,
            Dir::ServerToClient => &mut self.s2c,
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if bytes.len() > room {
            self.truncated = true;
        }
    }

    fn on_event(&mut self, event: &Event) {
        self.events.push(event.clone());
    }
}

// ------------------------------------------------------------------ transcripts

/// Limits of [`TranscriptWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscriptOptions {
    /// Longest record (one `.txt` line's worth of bytes) held per direction
    /// before it is written out split (with `\-`).
    pub record_bytes_max: usize,
}

impl Default for TranscriptOptions {
    fn default() -> Self {
        Self {
            record_bytes_max: 64 * 1024,
        }
    }
}

/// The files one captured connection produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptPaths {
    /// The readable, byte-exact transcript.
    pub txt: PathBuf,
    /// Exact client→server bytes, decompressed.
    pub c2s_bin: PathBuf,
    /// Exact server→client bytes, decompressed.
    pub s2c_bin: PathBuf,
}

impl TranscriptPaths {
    /// `DIR/NAME.txt`, `DIR/NAME.c2s.bin`, `DIR/NAME.s2c.bin`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            txt: dir.join(format!("{name}.txt")),
            c2s_bin: dir.join(format!("{name}.c2s.bin")),
            s2c_bin: dir.join(format!("{name}.s2c.bin")),
        }
    }
}

/// Per-direction record being assembled.
#[derive(Debug, Default)]
struct Record {
    scanner: Scanner,
    bytes: Vec<u8>,
    literal: bool,
}

/// The tap behind `corvid capture`: writes the `.bin` streams and the
/// `.txt` transcript of one connection (format in the module doc).
pub struct TranscriptWriter {
    paths: TranscriptPaths,
    txt: BufWriter<File>,
    bins: [BufWriter<File>; 2],
    records: [Record; 2],
    opts: TranscriptOptions,
    /// The first write error; later writes are skipped, `finish` reports it.
    error: Option<CaptureError>,
}

impl TranscriptWriter {
    /// Creates the three files and writes `header` lines (each prefixed
    /// `# `) and the format legend at the top of the `.txt`.
    pub fn create(
        paths: TranscriptPaths,
        header: &[String],
        opts: TranscriptOptions,
    ) -> Result<Self, CaptureError> {
        let open = |p: &PathBuf| {
            File::create(p)
                .map(BufWriter::new)
                .map_err(|source| CaptureError::Transcript {
                    path: p.clone(),
                    source,
                })
        };
        let mut w = Self {
            txt: open(&paths.txt)?,
            bins: [open(&paths.c2s_bin)?, open(&paths.s2c_bin)?],
            paths,
            records: Default::default(),
            opts,
            error: None,
        };
        let mut text = String::new();
        for line in header {
            for part in line.lines() {
                let _ = writeln!(text, "# {part}");
            }
        }
        text.push_str(LEGEND);
        w.write_txt(text.as_bytes());
        Ok(w)
    }

    /// The files being written.
    pub fn paths(&self) -> &TranscriptPaths {
        &self.paths
    }

    /// Writes out what is still held, flushes, and reports the first error.
    pub fn finish(mut self) -> Result<TranscriptPaths, CaptureError> {
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            self.flush_record(dir);
        }
        let result = self
            .txt
            .flush()
            .map_err(|source| (self.paths.txt.clone(), source))
            .and(
                self.bins[0]
                    .flush()
                    .map_err(|source| (self.paths.c2s_bin.clone(), source)),
            )
            .and(
                self.bins[1]
                    .flush()
                    .map_err(|source| (self.paths.s2c_bin.clone(), source)),
            );
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        result.map_err(|(path, source)| CaptureError::Transcript { path, source })?;
        Ok(self.paths)
    }

    /// Adds a `# ` note line to the `.txt` (after what each direction has
    /// completed so far).
    pub fn note(&mut self, text: &str) {
        let mut s = String::new();
        for part in text.lines() {
            let _ = writeln!(s, "# {part}");
        }
        self.write_txt(s.as_bytes());
    }

    fn write_txt(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            if let Err(source) = self.txt.write_all(bytes) {
                self.error = Some(CaptureError::Transcript {
                    path: self.paths.txt.clone(),
                    source,
                });
            }
        }
    }

    fn flush_record(&mut self, dir: Dir) {
        let rec = &mut self.records[dir.index()];
        if rec.bytes.is_empty() {
            return;
        }
        let line = render_record(dir, rec.literal, &rec.bytes);
        rec.bytes.clear();
        self.write_txt(line.as_bytes());
    }
}

const LEGEND: &str = "\
# format: 'C: '/'S: ' protocol bytes client->server / server->client, 'C| '/'S| ' literal bytes;
#   escapes \\\\ \\t \\r \\n \\xNN; each record implies a CRLF unless it ends in '\\-';
#   one direction's records concatenated = its .c2s.bin/.s2c.bin (inflated if COMPRESS was on).
";

impl Tap for TranscriptWriter {
    fn on_bytes(&mut self, dir: Dir, mut bytes: &[u8]) {
        if self.error.is_none() {
            if let Err(source) = self.bins[dir.index()].write_all(bytes) {
                let path = match dir {
                    Dir::ClientToServer => self.paths.c2s_bin.clone(),
                    Dir::ServerToClient => self.paths.s2c_bin.clone(),
                };
                self.error = Some(CaptureError::Transcript { path, source });
            }
        }
        while !bytes.is_empty() {
            let rec = &mut self.records[dir.index()];
            let piece = rec.scanner.next(bytes);
            let (len, literal, ended) = match piece {
                Piece::Line { len, ended } => (len, false, ended),
                Piece::Literal { len, ended } => (len, true, ended),
            };
            if rec.literal != literal {
                self.flush_record(dir);
            }
            let mut chunk = &bytes[..len];
            bytes = &bytes[len..];
            // A literal is shown one line per record, for reading.
            while !chunk.is_empty() {
                let rec = &mut self.records[dir.index()];
                rec.literal = literal;
                let cut = if literal {
                    chunk
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(chunk.len(), |i| i + 1)
                } else {
                    chunk.len()
                };
                let room = self.opts.record_bytes_max.max(1) - rec.bytes.len();
                let take = cut.min(room);
                rec.bytes.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                let full = rec.bytes.len() >= self.opts.record_bytes_max.max(1);
                let line_done = rec.bytes.last() == Some(&b'\n');
                if full || line_done {
                    self.flush_record(dir);
                }
            }
            if literal && ended {
                self.flush_record(dir);
            }
        }
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Compressing {
                c2s_offset,
                s2c_offset,
            } => self.note(&format!(
                "COMPRESS DEFLATE active after C byte {c2s_offset} / S byte {s2c_offset}: \
                 both directions raw deflate on the wire, shown inflated"
            )),
            Event::DecodeError { dir, error } => {
                self.flush_record(*dir);
                self.note(&format!(
                    "{}: inflate failed, nothing more shown: {error}",
                    dir.letter()
                ))
            }
            Event::Eof(dir) => {
                self.flush_record(*dir);
                self.note(&format!("{} closed", dir.letter()));
            }
            Event::Closed(s) => self.note(&format!(
                "summary: c2s {} bytes wire / {} plain, s2c {} wire / {} plain, compressed {}",
                s.c2s_wire_bytes,
                s.c2s_plain_bytes,
                s.s2c_wire_bytes,
                s.s2c_plain_bytes,
                s.compressed
            )),
        }
    }
}

/// One `.txt` record line (with its newline) for `bytes`.
fn render_record(dir: Dir, literal: bool, bytes: &[u8]) -> String {
    let (body, implied_crlf) = match bytes.strip_suffix(b"\r\n") {
        Some(body) => (body, true),
        None => (bytes, false),
    };
    let mut s = String::with_capacity(body.len() + 8);
    s.push(dir.letter());
    s.push(if literal { '|' } else { ':' });
    s.push(' ');
    for &b in body {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\t' => s.push_str("\\t"),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if !implied_crlf {
        s.push_str("\\-");
    }
    s.push('\n');
    s
}

/// A `.txt` transcript that is not in the format [`TranscriptWriter`] writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranscriptError {
    /// A line is neither a `#` comment nor a `C:`/`C|`/`S:`/`S|` record
    /// (the file's fault).
    #[error("line {line}: not a transcript record")]
    BadRecord {
        /// 1-based line number.
        line: usize,
    },
    /// A backslash escape that the format does not define (the file's fault).
    #[error("line {line}: bad escape")]
    BadEscape {
        /// 1-based line number.
        line: usize,
    },
}

/// Turns a `.txt` transcript back into its exact (client→server,
/// server→client) byte streams.
pub fn decode_transcript(text: &str) -> Result<(Vec<u8>, Vec<u8>), TranscriptError> {
    let mut streams = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.starts_with('#') {
            continue;
        }
        let b = line.as_bytes();
        if b.len() < 3 || !matches!(b[1], b':' | b'|') || b[2] != b' ' {
            return Err(TranscriptError::BadRecord { line: n });
        }
        let out = match b[0] {
            b'C' => &mut streams.0,
            b'S' => &mut streams.1,
            _ => return Err(TranscriptError::BadRecord { line: n }),
        };
        let mut body = &b[3..];
        let crlf = match body.strip_suffix(b"\\-") {
            // "\\-" at the end could be an escaped backslash followed by '-':
            // count the backslashes before the '-' to tell.
            Some(rest) if rest.iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 0 => {
                body = rest;
                false
            }
            _ => true,
        };
        let mut j = 0;
        while j < body.len() {
            let c = body[j];
            if c != b'\\' {
                out.push(c);
                j += 1;
                continue;
            }
            let esc = *body
                .get(j + 1)
                .ok_or(TranscriptError::BadEscape { line: n })?;
            j += 2;
            match esc {
                b'\\' => out.push(b'\\'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'x' => {
                    let hex = body
                        .get(j..j + 2)
                        .ok_or(TranscriptError::BadEscape { line: n })?;
                    let v = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or(TranscriptError::BadEscape { line: n })?;
                    out.push(v);
                    j += 2;
                }
                _ => return Err(TranscriptError::BadEscape { line: n }),
            }
        }
        if crlf {
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"C01 FIND {10}"), Some(10));
        assert_eq!(literal_announced(b"X {10+}"), Some(10));
        assert_eq!(
            literal_announced(
                b"APPLY MESSAGE (%{default 3b5f72b466e07c9e37bff639abf74ec13f71768d 4388}"
            ),
            Some(4388)
        );
        assert_eq!(literal_announced(b"OK {x}"), None);
        assert_eq!(literal_announced(b"OK {}"), None);
        assert_eq!(literal_announced(b"OK done"), None);
        assert_eq!(literal_announced(b"%{a b c d}"), None);
    }

    #[test]
    fn compress_watch_untagged_and_tagged() {
        let mut w = CompressWatch::default();
        w.client_line(b"COMPRESS DEFLATE");
        assert!(!w.server_line(b"* BYE maybe"));
        assert!(w.server_line(b"OK DEFLATE active"));
        let mut w = CompressWatch::default();
        w.client_line(b"Z1 COMPRESS \"DEFLATE\"");
        assert!(!w.server_line(b"* OK unrelated"));
        assert!(!w.server_line(b"Z2 OK other tag"));
        assert!(w.server_line(b"Z1 OK \"DEFLATE active\""));
        let mut w = CompressWatch::default();
        w.client_line(b"Z1 COMPRESS DEFLATE");
        assert!(!w.server_line(b"Z1 NO already"));
        assert!(
            !w.server_line(b"Z1 OK late"),
            "a refused COMPRESS leaves nothing pending"
        );
    }

    #[test]
    fn scanner_skips_literals() {
        let mut s = Scanner::default();
        let data = b"A {4}\r\nB\r\nC\r\nCOMPRESS DEFLATE\r\n";
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let p = s.next(&data[at..]);
            let len = match p {
                Piece::Line { len, .. } | Piece::Literal { len, .. } => len,
            };
            pieces.push((p, s.last_line().to_vec()));
            at += len;
        }
        assert_eq!(
            pieces[0].0,
            Piece::Line {
                len: 7,
                ended: true
            }
        );
        assert_eq!(
            pieces[1].0,
            Piece::Literal {
                len: 4,
                ended: true
            }
        );
        assert_eq!(
            pieces[2].0,
            Piece::Line {
                len: 2,
                ended: true
            }
        );
        assert_eq!(pieces[3].1, b"COMPRESS DEFLATE".to_vec());
    }

    /// Collects what a tap sees, per direction.
    #[derive(Default)]
    struct Collect {
        streams: [Vec<u8>; 2],
        events: Vec<Event>,
    }

    impl Tap for Collect {
        fn on_bytes(&mut self, dir: Dir, bytes: &[u8]) {
            self.streams[dir.index()].extend_from_slice(bytes);
        }
        fn on_event(&mut self, event: &Event) {
            self.events.push(event.clone());
        }
    }

    async fn read_line(s: &mut TcpStream) -> Vec<u8> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        line
    }

    /// A csync-shaped exchange where the server's OK and its first
    /// compressed bytes arrive in one segment: the tap must see the exact
    /// plain streams, and the client's compressed bytes must be inflated too.
    #[tokio::test]
    async fn relay_follows_compress_switch_mid_segment() {
        use proto::compress::Deflater;
        let server_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server_listener.local_addr().unwrap().to_string();
        let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay_listener.local_addr().unwrap();

        let server = tokio::spawn(async move {
            let (mut s, _) = server_listener.accept().await.unwrap();
            s.write_all(b"* COMPRESS DEFLATE\r\n* OK test\r\n")
                .await
                .unwrap();
            assert_eq!(read_line(&mut s).await, b"COMPRESS DEFLATE\r\n");
            let mut z = Deflater::new();
            z.write(b"* hello\r\n").unwrap();
            let mut seg = b"OK DEFLATE active\r\n".to_vec();
            seg.extend_from_slice(&z.flush().unwrap());
            s.write_all(&seg).await.unwrap();
            // read the client's compressed command until EOF
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            z.write(b"OK Finished\r\n").unwrap();
            let _ = s.write_all(&z.flush().unwrap()).await;
            rest
        });
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(relay_addr).await.unwrap();
            read_line(&mut c).await;
            read_line(&mut c).await;
            c.write_all(b"COMPRESS DEFLATE\r\n").await.unwrap();
            assert_eq!(read_line(&mut c).await, b"OK DEFLATE active\r\n");
            let mut z = Deflater::new();
            z.write(b"APPLY SIEVE %(CONTENT {5+}\r\nhello)\r\nEXIT\r\n")
                .unwrap();
            c.write_all(&z.flush().unwrap()).await.unwrap();
            c.shutdown().await.unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
        });
        let (summary, tap) = relay_one(
            &relay_listener,
            &target,
            Collect::default(),
            &Options::default(),
        )
        .await
        .unwrap();
        client.await.unwrap();
        server.await.unwrap();
        assert_eq!(
            tap.streams[0],
            b"COMPRESS DEFLATE\r\nAPPLY SIEVE %(CONTENT {5+}\r\nhello)\r\nEXIT\r\n".to_vec()
        );
        assert_eq!(
            tap.streams[1],
            b"* COMPRESS DEFLATE\r\n* OK test\r\nOK DEFLATE active\r\n* hello\r\nOK Finished\r\n"
                .to_vec()
        );
        assert!(summary.compressed && !summary.decode_failed);
        assert_eq!(summary.c2s_plain_bytes, tap.streams[0].len() as u64);
        assert!(tap.events.contains(&Event::Compressing {
            c2s_offset: 18,
            s2c_offset: 50
        }));
        assert!(matches!(tap.events.last(), Some(Event::Closed(_))));
    }

    /// Splits `data` at the cut points drawn by proptest.
    fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        at.push(0);
        at.push(data.len());
        at.sort_unstable();
        at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
    }

    fn stream() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|mut v| {
                v.retain(|&b| b != b'\n');
                v.extend_from_slice(b"\r\n");
                v
            }),
            proptest::collection::vec(any::<u8>(), 0..60).prop_map(|body| {
                let mut v = format!("X {{{}+}}\r\n", body.len()).into_bytes();
                v.extend_from_slice(&body);
                v.extend_from_slice(b")\r\n");
                v
            }),
            proptest::collection::vec(any::<u8>(), 0..30),
            Just(b"a\\-\r\nb\\\nc\\".to_vec()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are chunked and interleaved,
        /// the `.txt` decodes back to exactly the `.bin` streams.
        #[test]
        fn transcript_is_byte_exact(
            c in stream(),
            s in stream(),
            c_cuts in proptest::collection::vec(0usize..1000, 0..10),
            s_cuts in proptest::collection::vec(0usize..1000, 0..10),
            record_bytes_max in 1usize..50,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let paths = TranscriptPaths::new(dir.path(), "t");
            let mut w = TranscriptWriter::create(
                paths.clone(),
                &["peer: nobody".to_string()],
                TranscriptOptions { record_bytes_max },
            ).unwrap();
            let (cc, sc) = (chunks(&c, &c_cuts), chunks(&s, &s_cuts));
            for i in 0..cc.len().max(sc.len()) {
                if let Some(x) = cc.get(i) { w.on_bytes(Dir::ClientToServer, x); }
                if let Some(x) = sc.get(i) { w.on_bytes(Dir::ServerToClient, x); }
            }
            w.on_event(&Event::Eof(Dir::ClientToServer));
            w.on_event(&Event::Eof(Dir::ServerToClient));
            let paths = w.finish().unwrap();
            let txt = std::fs::read_to_string(&paths.txt).unwrap();
            let (c2, s2) = decode_transcript(&txt).unwrap();
            proptest::prop_assert_eq!(&c2, &c);
            proptest::prop_assert_eq!(&s2, &s);
            proptest::prop_assert_eq!(std::fs::read(&paths.c2s_bin).unwrap(), c);
            proptest::prop_assert_eq!(std::fs::read(&paths.s2c_bin).unwrap(), s);
        }
    }
}
