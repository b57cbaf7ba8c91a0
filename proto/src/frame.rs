//! Resumable, sans-IO framer for IMAP-like protocols (csync, MUPDATE, the
//! IMAP-embedded replication flavour).
//!
//! The framer splits a byte stream into **messages**: one command or
//! response line, including every literal it announces. A message's text is
//! the concatenation of its line segments without their line ends; a
//! segment that ends with a literal announcement — `{n}`, `{n+}` or (csync
//! only, behind [`Options::file_literals`]) a Cyrus file literal
//! `%{partition guid size}` — is followed by the literal's `n` raw bytes and
//! then by the next segment of the same message.
//!
//! What it does:
//! * Small plain literals (`len <= Options::inline_literal_bytes_max`) stay
//!   inside the [`Message`] ([`Literal::body`] is `Some`). Bigger plain
//!   literals and every file literal are **streamed**: [`Event::LiteralStart`],
//!   any number of [`Event::LiteralChunk`]s of at most
//!   [`Options::chunk_bytes_max`] bytes, [`Event::LiteralEnd`]; the message
//!   that follows records the literal with `body: None`. Every
//!   `LiteralStart..LiteralEnd` belongs to the message that ends with the
//!   next [`Event::Message`] or [`Event::Refused`] — a consumer that staged
//!   streamed bytes drops them when that message is refused.
//! * "Need more bytes" is `Ok(None)` from [`Framer::poll_event`], never an
//!   error: every strict prefix of valid input yields `Ok(None)` after the
//!   events it fully contains.
//! * A message that breaks a limit is **poisoned**: the framer still frames
//!   it to its real end (skipping every announced literal by counting, never
//!   buffering it) and reports [`Event::Refused`], so literal bytes are never
//!   read as commands and the next message decodes normally.
//! * Synchronising literals `{n}`: with [`SyncLiterals::AwaitContinuation`]
//!   (an IMAP/MUPDATE server reading a client) the framer emits
//!   [`Event::ContinuationNeeded`] when it accepts one; the machine must then
//!   send its continuation (`+ go ahead`) — or call
//!   [`Framer::reject_literal`], after which the peer is expected not to send
//!   the bytes and the message is refused. An over-limit synchronising
//!   literal (or one announced by an already poisoned message) is refused at
//!   once without `ContinuationNeeded`: no bytes follow, so nothing is
//!   skipped. With [`SyncLiterals::FollowImmediately`] (a csync server, which
//!   Cyrus runs in "client mode", and every client reading server output)
//!   `{n}` is treated like `{n+}`.
//!
//! Limits and the one unrecoverable case: the message text plus its inline
//! literal bodies is bounded by [`Options::line_bytes_max`]; a streamed
//! literal's size by [`Options::literal_bytes_max`] or
//! [`Options::file_literal_bytes_max`]. When a non-synchronising literal
//! over its limit is announced, the bytes are coming whatever we do;
//! [`Oversize::Discard`] (the default) counts them away and refuses the
//! message, [`Oversize::Fatal`] closes the stream with
//! [`FrameError::LiteralTooLarge`] (Cyrus's own choice: it exits). A literal
//! length that does not fit in a `u64` cannot be counted away, so it is
//! always fatal ([`FrameError::LiteralLengthOverflow`]). After a fatal error
//! the framer stays closed and returns the same error forever.
//!
//! Memory: the framer holds the current message's text and inline literals
//! (at most `line_bytes_max`), at most [`LITERAL_HEADER_BYTES_MAX`] bytes of
//! a poisoned line's tail (to recognise a literal announcement at its end),
//! and whatever input was handed to [`Framer::handle_input`] but not yet
//! consumed. Call `poll_event` until it returns `Ok(None)` after every
//! `handle_input`; then the buffered input never exceeds one input chunk
//! plus `line_bytes_max`. Streamed chunks are split off the input buffer
//! without copying.
//!
//! What it never does: interpret the text (no tags, no command words, no
//! dlist), send anything, or buffer a streamed literal. A line ends at LF;
//! a CR right before it is dropped (Cyrus accepts a bare LF too).
//!
//! # Driving it
//!
//! ```
//! use proto::frame::{Event, Framer, Options};
//! let mut framer = Framer::new(Options::csync());
//! framer.handle_input(b"APPLY MESSAGE (%{default 0123456789abcdef0123456789abcdef01234567 5}\r\nhello)\r\n");
//! let mut events = Vec::new();
//! while let Some(event) = framer.poll_event().expect("no fatal framing error") {
//!     events.push(event);
//! }
//! assert!(matches!(events[0], Event::LiteralStart(_)));
//! assert!(matches!(events.last(), Some(Event::Message(_))));
//! ```

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Longest literal announcement (`{n+}` or `%{partition guid size}`) the
/// framer can still recognise at the end of a poisoned (over-long) line,
/// whose text it no longer keeps. File literal partitions are short
/// configuration names, so 1 KiB is ample.
pub const LITERAL_HEADER_BYTES_MAX: usize = 1024;

/// How many bytes of a refused message's text are kept in
/// [`Refusal::head`], so the machine can still find a tag to answer.
pub const REFUSAL_HEAD_BYTES_MAX: usize = 1024;

/// What a synchronising literal `{n}` means on this stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncLiterals {
    /// The peer waits for a continuation before sending the bytes (an IMAP
    /// or MUPDATE server reading its client): the framer emits
    /// [`Event::ContinuationNeeded`].
    AwaitContinuation,
    /// The bytes follow at once (a csync server in Cyrus "client mode", or
    /// any client reading server output).
    FollowImmediately,
}

/// What to do when a literal whose bytes will come anyway is over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// Count the bytes away without keeping them, then refuse the message.
    Discard,
    /// Close the stream with [`FrameError::LiteralTooLarge`].
    Fatal,
}

/// Limits and dialect switches. Every buffer a peer can grow is bounded by
/// one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Largest message text plus inline literal bodies (line ends and
    /// streamed literal bodies not counted).
    pub line_bytes_max: usize,
    /// Largest plain literal (`{n}` / `{n+}`) accepted.
    pub literal_bytes_max: u64,
    /// Largest Cyrus file literal (`%{p g size}`) accepted.
    pub file_literal_bytes_max: u64,
    /// Plain literals up to this size are kept inside the [`Message`];
    /// bigger ones are streamed. File literals are always streamed.
    pub inline_literal_bytes_max: usize,
    /// Largest [`Event::LiteralChunk`].
    pub chunk_bytes_max: usize,
    /// Recognise `%{partition guid size}` file literals (csync only; off
    /// for MUPDATE, where `%{` means nothing).
    pub file_literals: bool,
    /// Meaning of `{n}` on this stream.
    pub sync_literals: SyncLiterals,
    /// Over-limit non-synchronising literals: discard or close.
    pub oversize: Oversize,
}

impl Default for Options {
    /// An IMAP-like server reading its client (MUPDATE): no file literals,
    /// `{n}` needs a continuation, 128 KiB lines and literals (Cyrus's own
    /// `maxword`/`maxliteral`), all literals inline.
    fn default() -> Self {
        Options {
            line_bytes_max: 128 * 1024 * 4,
            literal_bytes_max: 128 * 1024,
            file_literal_bytes_max: 0,
            inline_literal_bytes_max: 128 * 1024,
            chunk_bytes_max: 64 * 1024,
            file_literals: false,
            sync_literals: SyncLiterals::AwaitContinuation,
            oversize: Oversize::Discard,
        }
    }
}

impl Options {
    /// csync (either side): file literals on, `{n}` follows immediately,
    /// plain literals (sieve scripts, annotation values) inline, messages up
    /// to 128 MiB of text (real `APPLY MAILBOX` lines reach 1.3 MB for 4k
    /// records; Cyrus itself has no line limit), file literals up to
    /// 4 GiB − 1 (Cyrus's 32-bit size).
    pub fn csync() -> Self {
        Options {
            line_bytes_max: 128 * 1024 * 1024,
            literal_bytes_max: 64 * 1024 * 1024,
            file_literal_bytes_max: u32::MAX as u64,
            inline_literal_bytes_max: 64 * 1024 * 1024,
            chunk_bytes_max: 64 * 1024,
            file_literals: true,
            sync_literals: SyncLiterals::FollowImmediately,
            oversize: Oversize::Discard,
        }
    }
}

/// The kind of an announced literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LiteralKind {
    /// `{n}`: synchronising.
    Sync,
    /// `{n+}`: non-synchronising (LITERAL+).
    NonSync,
    /// `%{partition guid size}`: a Cyrus file literal. `partition` and
    /// `guid` are the astring values as announced (quotes removed), not
    /// validated here.
    File {
        /// Partition name.
        partition: Bytes,
        /// Message GUID text (should be 40 hex digits; the dlist layer checks).
        guid: Bytes,
    },
}

/// A literal announcement: kind and byte count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LiteralHeader {
    /// What was announced.
    pub kind: LiteralKind,
    /// Number of body bytes that follow.
    pub len: u64,
}

/// One literal of a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    /// The announcement.
    pub header: LiteralHeader,
    /// Offset in [`Message::text`] just after the announcement (its closing
    /// `}`), i.e. the end of the segment that announced it.
    pub text_offset: usize,
    /// The body if it was kept inline; `None` if it was streamed as
    /// `LiteralStart`/`LiteralChunk`/`LiteralEnd` before this message.
    pub body: Option<Bytes>,
}

/// A complete command or response: text without line ends, plus literals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    text: Bytes,
    literals: Vec<Literal>,
}

impl Message {
    /// Builds a message from parts (tests, encoders). `literals` must be in
    /// text order with offsets inside `text`.
    pub fn new(text: Bytes, literals: Vec<Literal>) -> Self {
        debug_assert!(literals
            .windows(2)
            .all(|w| w[0].text_offset <= w[1].text_offset));
        debug_assert!(literals.iter().all(|l| l.text_offset <= text.len()));
        Message { text, literals }
    }

    /// The text of all segments, line ends and literal bodies removed;
    /// literal announcements are kept.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The text as shared bytes.
    pub fn text_bytes(&self) -> &Bytes {
        &self.text
    }

    /// Literals in the order they were announced.
    pub fn literals(&self) -> &[Literal] {
        &self.literals
    }

    /// Index and literal announced by the segment ending at `text_offset`.
    pub fn literal_at(&self, text_offset: usize) -> Option<(usize, &Literal)> {
        self.literals
            .iter()
            .enumerate()
            .find(|(_, l)| l.text_offset == text_offset)
    }

    /// The message as it travelled, with `\r\n` line ends, if every literal
    /// body is inline (`None` if one was streamed).
    pub fn to_wire(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.text.len() + 2);
        let mut at = 0;
        for lit in &self.literals {
            out.extend_from_slice(&self.text[at..lit.text_offset]);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(lit.body.as_ref()?);
            at = lit.text_offset;
        }
        out.extend_from_slice(&self.text[at..]);
        out.extend_from_slice(b"\r\n");
        Some(out)
    }
}

/// Why a message was refused (its bytes were framed and thrown away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Peer's fault: the text plus inline literals exceeded `line_bytes_max`.
    LineTooLong,
    /// Peer's fault: a plain literal exceeded `literal_bytes_max`.
    LiteralTooLarge,
    /// Peer's fault: a file literal exceeded `file_literal_bytes_max`.
    FileLiteralTooLarge,
    /// Our machine's choice: it called [`Framer::reject_literal`].
    LiteralRejected,
}

/// A refused (poisoned) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The first bytes of the message text (at most
    /// [`REFUSAL_HEAD_BYTES_MAX`]), e.g. to find the tag to answer.
    pub head: Bytes,
    /// `true` if the refusal was decided at a synchronising literal before
    /// any continuation: the peer sends no literal bytes, and the machine
    /// must not send a continuation.
    pub at_sync_literal: bool,
}

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A synchronising literal of `len` bytes was accepted: the peer waits
    /// for a continuation (`+ go ahead`) before sending it. Only with
    /// [`SyncLiterals::AwaitContinuation`]. Send one, or call
    /// [`Framer::reject_literal`] before the next `poll_event`.
    ContinuationNeeded {
        /// Announced length.
        len: u64,
    },
    /// A streamed literal begins.
    LiteralStart(LiteralHeader),
    /// Next bytes of the streamed literal (never empty).
    LiteralChunk(Bytes),
    /// The streamed literal is complete.
    LiteralEnd,
    /// A complete message.
    Message(Message),
    /// A message framed to its end and refused.
    Refused(Refusal),
}

/// Fatal framing errors: the stream cannot be resynchronised and the
/// connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Peer's fault: a literal length that does not fit in 64 bits, so its
    /// bytes cannot even be counted away.
    #[error("literal length does not fit in 64 bits")]
    LiteralLengthOverflow,
    /// Peer's fault, with [`Oversize::Fatal`]: a non-synchronising literal
    /// over its limit.
    #[error("literal of {len} bytes exceeds the limit of {max}")]
    LiteralTooLarge {
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// Peer's fault: the stream ended inside a message or literal.
    #[error("stream ended inside a message")]
    TruncatedMessage,
    /// Our caller's misuse of the framer API.
    #[error("framer misuse: {0}")]
    Misuse(&'static str),
}

enum Sink {
    Inline(BytesMut),
    Stream,
    Discard,
}

enum State {
    /// Scanning for the LF ending the current segment.
    Line,
    /// Reading a literal body.
    Literal {
        remaining: u64,
        sink: Sink,
        header: LiteralHeader,
    },
    /// The stream is closed by a fatal error.
    Closed(FrameError),
}

/// The message being assembled.
#[derive(Default)]
struct Acc {
    text: BytesMut,
    literals: Vec<Literal>,
    inline_bytes: usize,
    poison: Option<RefusalReason>,
    head: Bytes,
    /// Tail of the current segment while poisoned (its text is not kept).
    tail: Vec<u8>,
    /// `true` once any byte of the message was seen.
    started: bool,
}

impl Acc {
    fn size(&self) -> usize {
        self.text.len() + self.inline_bytes
    }

    fn poison(&mut self, reason: RefusalReason, extra: &[u8]) {
        if self.poison.is_some() {
            return;
        }
        let mut head = Vec::with_capacity(REFUSAL_HEAD_BYTES_MAX);
        let take = REFUSAL_HEAD_BYTES_MAX.min(self.text.len());
        head.extend_from_slice(&self.text[..take]);
        let room = REFUSAL_HEAD_BYTES_MAX - head.len();
        head.extend_from_slice(&extra[..room.min(extra.len())]);
        self.head = Bytes::from(head);
        self.poison = Some(reason);
        self.text = BytesMut::new();
        self.literals = Vec::new();
        self.inline_bytes = 0;
    }
}

/// The resumable framer. See the module documentation for the call order.
pub struct Framer {
    opts: Options,
    buf: BytesMut,
    /// Bytes of `buf` already searched for LF in the current segment.
    scan_from: usize,
    state: State,
    acc: Acc,
    pending: VecDeque<Event>,
    /// A `ContinuationNeeded` was handed out and no literal byte consumed yet.
    awaiting_decision: bool,
}

impl Framer {
    /// A framer with these limits.
    pub fn new(opts: Options) -> Self {
        Framer {
            opts,
            buf: BytesMut::new(),
            scan_from: 0,
            state: State::Line,
            acc: Acc::default(),
            pending: VecDeque::new(),
            awaiting_decision: false,
        }
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Changes the line limit from now on; the line being read counts
    /// against the new limit. Servers read an unauthenticated peer with a
    /// small limit and raise it after login, so that a stranger cannot make
    /// them buffer a 128 MiB line.
    pub fn set_line_bytes_max(&mut self, line_bytes_max: usize) {
        self.opts.line_bytes_max = line_bytes_max;
    }

    /// Hands received bytes to the framer (copied). Follow with
    /// [`Framer::poll_event`] until `Ok(None)`.
    pub fn handle_input(&mut self, input: &[u8]) {
        if !matches!(self.state, State::Closed(_)) {
            self.buf.extend_from_slice(input);
        }
    }

    /// Bytes currently held: unconsumed input, the message text and inline
    /// literal bodies being assembled, and a poisoned line's tail. Bounded
    /// as described in the module documentation (tests assert it).
    pub fn buffered_bytes(&self) -> usize {
        let inline = match &self.state {
            // By capacity: what is allocated, not just filled.
            State::Literal {
                sink: Sink::Inline(b),
                ..
            } => b.capacity(),
            _ => 0,
        };
        self.buf.len() + self.acc.text.len() + self.acc.inline_bytes + inline + self.acc.tail.len()
    }

    /// `true` if no partial message or literal is pending (a clean place
    /// for the stream to end or to switch layers, e.g. after STARTTLS).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
            && self.pending.is_empty()
            && matches!(self.state, State::Line)
            && !self.acc.started
    }

    /// Takes back input that was handed over but not framed yet (e.g. the
    /// bytes after `COMPRESS`'s OK, which belong to the next layer).
    pub fn take_unconsumed(&mut self) -> BytesMut {
        self.scan_from = 0;
        std::mem::take(&mut self.buf)
    }

    /// The peer closed its side. `Ok` if it ended between messages.
    pub fn handle_eof(&mut self) -> Result<(), FrameError> {
        if let State::Closed(e) = &self.state {
            return Err(e.clone());
        }
        if self.is_idle() {
            Ok(())
        } else {
            self.state = State::Closed(FrameError::TruncatedMessage);
            Err(FrameError::TruncatedMessage)
        }
    }

    /// Refuses the synchronising literal just announced by
    /// [`Event::ContinuationNeeded`] (instead of sending a continuation):
    /// the peer will not send its bytes, and the message is reported as
    /// [`Event::Refused`] with [`RefusalReason::LiteralRejected`].
    pub fn reject_literal(&mut self) -> Result<(), FrameError> {
        if !self.awaiting_decision {
            return Err(FrameError::Misuse(
                "reject_literal without a pending ContinuationNeeded",
            ));
        }
        self.awaiting_decision = false;
        // Drop a LiteralStart queued for the rejected literal.
        self.pending
            .retain(|e| !matches!(e, Event::LiteralStart(_)));
        self.acc.poison(RefusalReason::LiteralRejected, &[]);
        self.state = State::Line;
        let refusal = self.finish_refused(true);
        self.pending.push_back(Event::Refused(refusal));
        Ok(())
    }

    /// The next event, `Ok(None)` if more input is needed, or a fatal error
    /// (the framer then stays closed).
    pub fn poll_event(&mut self) -> Result<Option<Event>, FrameError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if let State::Closed(e) = &self.state {
                return Err(e.clone());
            }
            if self.buf.is_empty() {
                // A zero-length literal completes without input.
                if let State::Literal { remaining: 0, .. } = self.state {
                    self.finish_literal();
                    continue;
                }
                return Ok(None);
            }
            self.awaiting_decision = false;
            let progressed = match self.state {
                State::Line => self.step_line(),
                State::Literal { .. } => {
                    self.step_literal();
                    true
                }
                State::Closed(_) => unreachable!("handled above"),
            };
            if !progressed && self.pending.is_empty() {
                return Ok(None);
            }
        }
    }

    /// How many of `len` new line bytes go into a `LineTooLong` refusal's
    /// head: only those up to the first byte over the limit, so the head is
    /// the same however the input was chunked (found by the fuzz target
    /// `frame`, corpus/regressions/frame/).
    fn line_overflow_head(&self, len: usize) -> usize {
        (self.opts.line_bytes_max + 1)
            .saturating_sub(self.acc.size())
            .min(len)
    }

    /// Scans for the end of the current segment. Returns `false` if more
    /// input is needed.
    fn step_line(&mut self) -> bool {
        self.acc.started = true;
        let lf = self.buf[self.scan_from..].iter().position(|&b| b == b'\n');
        let Some(pos) = lf.map(|p| p + self.scan_from) else {
            self.scan_from = self.buf.len();
            // A CR at the end may be the line end's: not counted yet, or a
            // line at exactly the limit would be refused when its CR and LF
            // arrive apart but not together (found by the fuzz target
            // `csync`, corpus/regressions/csync/).
            let cr = usize::from(self.buf.last() == Some(&b'\r'));
            if self.acc.poison.is_none()
                && self.acc.size() + self.buf.len() - cr > self.opts.line_bytes_max
            {
                let partial = self.buf.split().freeze();
                let keep = self.line_overflow_head(partial.len());
                self.acc
                    .poison(RefusalReason::LineTooLong, &partial[..keep]);
                push_tail(&mut self.acc.tail, &partial);
                self.scan_from = 0;
            } else if self.acc.poison.is_some() {
                let partial = self.buf.split();
                push_tail(&mut self.acc.tail, &partial);
                self.scan_from = 0;
            }
            return false;
        };
        let mut seg = self.buf.split_to(pos + 1);
        self.scan_from = 0;
        seg.truncate(pos);
        if self.acc.poison.is_some() {
            // The CR may have arrived before the LF and already sit in the tail.
            push_tail(&mut self.acc.tail, &seg);
            if self.acc.tail.last() == Some(&b'\r') {
                self.acc.tail.pop();
            }
        } else if seg.last() == Some(&b'\r') {
            seg.truncate(pos - 1);
        }
        if self.acc.poison.is_none() && self.acc.size() + seg.len() > self.opts.line_bytes_max {
            let keep = self.line_overflow_head(seg.len());
            self.acc.poison(RefusalReason::LineTooLong, &seg[..keep]);
            push_tail(&mut self.acc.tail, &seg);
        }
        let header = if self.acc.poison.is_some() {
            let h = detect_literal(&self.acc.tail, self.opts.file_literals);
            self.acc.tail.clear();
            h
        } else {
            let seg_start = self.acc.text.len();
            self.acc.text.extend_from_slice(&seg);
            detect_literal(&self.acc.text[seg_start..], self.opts.file_literals)
        };
        match header {
            None => self.finish_message(),
            Some(Announced::Overflow { sync }) => {
                if sync && self.opts.sync_literals == SyncLiterals::AwaitContinuation {
                    self.acc.poison(RefusalReason::LiteralTooLarge, &[]);
                    let r = self.finish_refused(true);
                    self.pending.push_back(Event::Refused(r));
                } else {
                    self.close(FrameError::LiteralLengthOverflow);
                }
            }
            Some(Announced::Literal(header)) => self.start_literal(header),
        }
        true
    }

    fn start_literal(&mut self, header: LiteralHeader) {
        let awaits = header.kind == LiteralKind::Sync
            && self.opts.sync_literals == SyncLiterals::AwaitContinuation;
        let (max, too_large) = match header.kind {
            LiteralKind::File { .. } => (
                self.opts.file_literal_bytes_max,
                RefusalReason::FileLiteralTooLarge,
            ),
            _ => (self.opts.literal_bytes_max, RefusalReason::LiteralTooLarge),
        };
        let over = header.len > max
            || (matches!(header.kind, LiteralKind::File { .. }) && !self.opts.file_literals);
        let inline = matches!(header.kind, LiteralKind::Sync | LiteralKind::NonSync)
            && header.len <= self.opts.inline_literal_bytes_max as u64;
        let overflows_line =
            inline && self.acc.size() as u64 + header.len > self.opts.line_bytes_max as u64;
        if awaits && (over || overflows_line || self.acc.poison.is_some()) {
            // The peer sends nothing until we continue, so refusing now
            // keeps the stream in sync without skipping anything.
            let reason = if over {
                too_large
            } else {
                RefusalReason::LineTooLong
            };
            self.acc.poison(reason, &[]);
            let r = self.finish_refused(true);
            self.pending.push_back(Event::Refused(r));
            return;
        }
        if over {
            if self.opts.oversize == Oversize::Fatal && self.acc.poison.is_none() {
                self.close(FrameError::LiteralTooLarge {
                    len: header.len,
                    max,
                });
                return;
            }
            self.acc.poison(too_large, &[]);
        }
        if awaits {
            self.pending
                .push_back(Event::ContinuationNeeded { len: header.len });
            self.awaiting_decision = true;
        }
        let sink = if self.acc.poison.is_some() {
            Sink::Discard
        } else if inline {
            if overflows_line {
                self.acc.poison(RefusalReason::LineTooLong, &[]);
                Sink::Discard
            } else {
                // Grow with the bytes that actually arrive: reserving the
                // announced size up front would let a peer make us allocate
                // the whole limit with a few header bytes.
                Sink::Inline(BytesMut::with_capacity(
                    (header.len as usize).min(self.opts.chunk_bytes_max.max(1)),
                ))
            }
        } else {
            self.pending.push_back(Event::LiteralStart(header.clone()));
            Sink::Stream
        };
        self.state = State::Literal {
            remaining: header.len,
            sink,
            header,
        };
    }

    fn step_literal(&mut self) {
        let State::Literal {
            remaining, sink, ..
        } = &mut self.state
        else {
            unreachable!("step_literal outside a literal")
        };
        let avail = (*remaining).min(self.buf.len() as u64) as usize;
        match sink {
            Sink::Inline(body) => {
                body.extend_from_slice(&self.buf[..avail]);
                self.buf.advance(avail);
            }
            Sink::Stream => {
                let n = avail.min(self.opts.chunk_bytes_max.max(1));
                let chunk = self.buf.split_to(n).freeze();
                *remaining -= n as u64;
                if n > 0 {
                    self.pending.push_back(Event::LiteralChunk(chunk));
                }
                if *remaining == 0 {
                    self.finish_literal();
                }
                return;
            }
            Sink::Discard => self.buf.advance(avail),
        }
        *remaining -= avail as u64;
        if *remaining == 0 {
            self.finish_literal();
        }
    }

    fn finish_literal(&mut self) {
        let State::Literal { sink, header, .. } = std::mem::replace(&mut self.state, State::Line)
        else {
            unreachable!("finish_literal outside a literal")
        };
        let text_offset = self.acc.text.len();
        match sink {
            Sink::Inline(body) => {
                self.acc.inline_bytes += body.len();
                self.acc.literals.push(Literal {
                    header,
                    text_offset,
                    body: Some(body.freeze()),
                });
            }
            Sink::Stream => {
                self.pending.push_back(Event::LiteralEnd);
                if self.acc.poison.is_none() {
                    self.acc.literals.push(Literal {
                        header,
                        text_offset,
                        body: None,
                    });
                }
            }
            Sink::Discard => {}
        }
    }

    fn finish_message(&mut self) {
        if self.acc.poison.is_some() {
            let r = self.finish_refused(false);
            self.pending.push_back(Event::Refused(r));
        } else {
            let acc = std::mem::take(&mut self.acc);
            self.pending.push_back(Event::Message(Message {
                text: acc.text.freeze(),
                literals: acc.literals,
            }));
        }
    }

    fn finish_refused(&mut self, at_sync_literal: bool) -> Refusal {
        let acc = std::mem::take(&mut self.acc);
        Refusal {
            reason: acc
                .poison
                .expect("finish_refused on a message that is not poisoned"),
            head: acc.head,
            at_sync_literal,
        }
    }

    fn close(&mut self, e: FrameError) {
        self.buf = BytesMut::new();
        self.acc = Acc::default();
        self.state = State::Closed(e);
    }
}

fn push_tail(tail: &mut Vec<u8>, more: &[u8]) {
    if more.len() >= LITERAL_HEADER_BYTES_MAX {
        tail.clear();
        tail.extend_from_slice(&more[more.len() - LITERAL_HEADER_BYTES_MAX..]);
    } else {
        tail.extend_from_slice(more);
        if tail.len() > LITERAL_HEADER_BYTES_MAX {
            let cut = tail.len() - LITERAL_HEADER_BYTES_MAX;
            tail.drain(..cut);
        }
    }
}

enum Announced {
    Literal(LiteralHeader),
    /// A literal whose length does not fit in u64.
    Overflow {
        sync: bool,
    },
}

/// Recognises a literal announcement at the very end of a segment.
fn detect_literal(seg: &[u8], file_literals: bool) -> Option<Announced> {
    let body = seg.strip_suffix(b"}")?;
    let (body, plus) = match body.strip_suffix(b"+") {
        Some(b) => (b, true),
        None => (body, false),
    };
    let ndigits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if ndigits == 0 {
        return None;
    }
    let (before, digits) = body.split_at(body.len() - ndigits);
    let len = parse_u64(digits);
    if before.ends_with(b"{") {
        let sync = !plus;
        return Some(match len {
            Some(len) => Announced::Literal(LiteralHeader {
                kind: if sync {
                    LiteralKind::Sync
                } else {
                    LiteralKind::NonSync
                },
                len,
            }),
            None => Announced::Overflow { sync },
        });
    }
    if plus || !file_literals {
        return None;
    }
    let before = before.strip_suffix(b" ")?;
    let start = before.windows(2).rposition(|w| w == b"%{")?;
    let inner = &before[start + 2..];
    let (partition, rest) = header_astring(inner)?;
    let rest = rest.strip_prefix(b" ")?;
    let (guid, rest) = header_astring(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(match len {
        Some(len) => Announced::Literal(LiteralHeader {
            kind: LiteralKind::File { partition, guid },
            len,
        }),
        None => Announced::Overflow { sync: false },
    })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// An atom or quoted string inside a file literal announcement.
fn header_astring(input: &[u8]) -> Option<(Bytes, &[u8])> {
    if let Some(rest) = input.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'"' => return Some((Bytes::from(out), &rest[i + 1..])),
                b'\\' if i + 1 < rest.len() => {
                    out.push(rest[i + 1]);
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        None
    } else {
        let n = input
            .iter()
            .take_while(|&&b| !matches!(b, b' ' | b'\t' | b'(' | b')' | b'"' | b'{' | b'%'))
            .count();
        if n == 0 {
            return None;
        }
        Some((Bytes::copy_from_slice(&input[..n]), &input[n..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(f: &mut Framer) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(e) = f.poll_event().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn detects_announcements() {
        assert!(matches!(
            detect_literal(b"A {12}", false),
            Some(Announced::Literal(LiteralHeader {
                kind: LiteralKind::Sync,
                len: 12
            }))
        ));
        assert!(matches!(
            detect_literal(b"A {0+}", false),
            Some(Announced::Literal(LiteralHeader {
                kind: LiteralKind::NonSync,
                len: 0
            }))
        ));
        assert!(detect_literal(b"A {abc}", false).is_none());
        assert!(detect_literal(b"A {}", false).is_none());
        assert!(detect_literal(b"(%{default abc 5}", false).is_none());
        match detect_literal(b"(%{default abc 5}", true) {
            Some(Announced::Literal(LiteralHeader {
                kind: LiteralKind::File { partition, guid },
                len: 5,
            })) => {
                assert_eq!(&partition[..], b"default");
                assert_eq!(&guid[..], b"abc");
            }
            _ => panic!("file literal not recognised"),
        }
        assert!(matches!(
            detect_literal(b"x {99999999999999999999999+}", false),
            Some(Announced::Overflow { sync: false })
        ));
    }

    #[test]
    fn inline_literal_message() {
        let mut f = Framer::new(Options::csync());
        f.handle_input(b"APPLY X %(A {3+}\r\na\"b B c)\r\n");
        let ev = drain(&mut f);
        assert_eq!(ev.len(), 1);
        let Event::Message(m) = &ev[0] else { panic!() };
        assert_eq!(m.text(), b"APPLY X %(A {3+} B c)");
        assert_eq!(m.literals()[0].body.as_deref(), Some(&b"a\"b"[..]));
        assert_eq!(m.to_wire().unwrap(), b"APPLY X %(A {3+}\r\na\"b B c)\r\n");
    }
}
