//! The IMAP-embedded replication flavour (Cyrus 3.0+): an admin session on
//! an imapd that advertises `X-REPLICATION` carries the csync GET/APPLY/
//! RESTORE dlists as tagged IMAP commands — `S0 SYNCAPPLY …`,
//! `S1 SYNCGET …`, `SYNCRESTORE`, `SYNCRESTART` — answered by the same
//! untagged `* KEY value` lines and a tagged status (`S1 OK success`).
//!
//! Covered here: those commands plus the IMAP lines sync_client uses
//! around them (`AUTHENTICATE`, `CAPABILITY`, `LOGOUT`, `NOOP`; the
//! greeting `* OK [CAPABILITY …] …`, `* CAPABILITY …`, `* BYE …`, tagged
//! statuses). Any other IMAP command or untagged line is kept raw so a
//! transcript still decodes without unknown bytes; this is not an IMAP
//! codec.
//!
//! Literal styles differ from csync: imapd's output is not in Cyrus
//! "client mode", so server literals are `{n}` (sent without waiting), and
//! a client's `{n}` does need `+ go ahead` — the server decoder reports
//! [`Event::ContinuationNeeded`].

use bytes::{BufMut, Bytes, BytesMut};

use super::command::{decode_args, CommandError, Verb};
use super::decoder::{rest_after, status_kind, DecodeError, Event, Raw, ResponseError, Stream};
use super::response::Status;
use super::{Command, SaslData};
use crate::dlist::parse::Cursor;
use crate::dlist::{Encoded, Encoder, Item, LiteralStyle};
use crate::frame::{self, Message, SyncLiterals};

/// What follows the tag of a client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapCommandBody {
    /// `SYNCAPPLY <KEY value>`
    SyncApply(Item),
    /// `SYNCGET <KEY value>`
    SyncGet(Item),
    /// `SYNCRESTORE <KEY value>`
    SyncRestore(Item),
    /// `SYNCRESTART`
    SyncRestart,
    /// `AUTHENTICATE <mech> [<initial response>]`
    Authenticate {
        /// Mechanism as sent.
        mechanism: Bytes,
        /// Inline initial response (SASL-IR), base64 as sent.
        initial_response: Option<SaslData>,
    },
    /// `CAPABILITY`
    Capability,
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// Any other IMAP command (no literals), kept raw.
    Other {
        /// The command word as sent.
        name: Bytes,
        /// Everything after `name SP` (empty if nothing).
        args: Bytes,
    },
}

/// A tagged client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapCommand {
    /// The tag (`S12`, `A01`).
    pub tag: Bytes,
    /// The command.
    pub body: ImapCommandBody,
}

/// A line an IMAP-flavour server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapClientLine {
    /// A tagged command.
    Command(ImapCommand),
    /// Answer to a SASL challenge.
    SaslResponse(SaslData),
    /// `*`: SASL exchange cancelled.
    SaslCancel,
}

impl ImapCommand {
    /// The exact line sync_client prints (`{n+}` literals), CRLF included.
    pub fn encode(&self) -> Encoded {
        let mut e = Encoder::new(LiteralStyle::NonSync);
        e.raw(&self.tag).raw(b" ");
        match &self.body {
            ImapCommandBody::SyncApply(i) => {
                e.raw(b"SYNCAPPLY ").item(i);
            }
            ImapCommandBody::SyncGet(i) => {
                e.raw(b"SYNCGET ").item(i);
            }
            ImapCommandBody::SyncRestore(i) => {
                e.raw(b"SYNCRESTORE ").item(i);
            }
            ImapCommandBody::SyncRestart => {
                e.raw(b"SYNCRESTART");
            }
            ImapCommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                Command::Authenticate {
                    mechanism: mechanism.clone(),
                    initial_response: initial_response.clone(),
                }
                .write(&mut e);
            }
            ImapCommandBody::Capability => {
                e.raw(b"CAPABILITY");
            }
            ImapCommandBody::Noop => {
                e.raw(b"NOOP");
            }
            ImapCommandBody::Logout => {
                e.raw(b"LOGOUT");
            }
            ImapCommandBody::Other { name, args } => {
                e.raw(name);
                if !args.is_empty() {
                    e.raw(b" ").raw(args);
                }
            }
        }
        e.crlf();
        e.finish()
    }
}

impl ImapClientLine {
    /// The exact line, CRLF included.
    pub fn encode(&self) -> Encoded {
        match self {
            ImapClientLine::Command(c) => c.encode(),
            ImapClientLine::SaslResponse(d) => {
                let mut e = Encoder::new(LiteralStyle::NonSync);
                e.raw(d.as_wire()).crlf();
                e.finish()
            }
            ImapClientLine::SaslCancel => {
                let mut e = Encoder::new(LiteralStyle::NonSync);
                e.raw(b"*").crlf();
                e.finish()
            }
        }
    }
}

/// A refused IMAP-flavour command, with its tag when readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused command (tag {tag:?}): {error}")]
pub struct ImapCommandError {
    /// The tag, to answer `<tag> BAD …` (None: answer untagged).
    pub tag: Option<Bytes>,
    /// Why.
    pub error: CommandError,
}

fn decode_imap_command(m: &Message) -> Result<ImapCommand, ImapCommandError> {
    let mut c = Cursor::new(m, 0);
    let tag = c.word().map(Bytes::copy_from_slice);
    let fail = |tag: &Option<Bytes>, error| ImapCommandError {
        tag: tag.clone(),
        error,
    };
    let Some(tag) = tag.filter(|t| !t.is_empty()) else {
        return Err(fail(&None, CommandError::NullCommand));
    };
    let tag_opt = Some(tag.clone());
    if c.expect_sp().is_err() {
        return Err(fail(&tag_opt, CommandError::NullCommand));
    }
    let name = c.word().unwrap_or_default();
    let upper = name.to_ascii_uppercase();
    let verb_for = |v: Verb| v;
    let body = match &upper[..] {
        b"SYNCAPPLY" | b"SYNCGET" | b"SYNCRESTORE" => {
            let verb = match &upper[..] {
                b"SYNCAPPLY" => verb_for(Verb::Apply),
                b"SYNCGET" => Verb::Get,
                _ => Verb::Restore,
            };
            match decode_args(verb, &mut c).map_err(|e| fail(&tag_opt, e))? {
                Command::Apply(i) => ImapCommandBody::SyncApply(i),
                Command::Get(i) => ImapCommandBody::SyncGet(i),
                Command::Restore(i) => ImapCommandBody::SyncRestore(i),
                _ => unreachable!("decode_args returns the verb's command"),
            }
        }
        b"SYNCRESTART" => {
            if !c.at_end() {
                return Err(fail(&tag_opt, CommandError::ExtraArguments(Verb::Restart)));
            }
            ImapCommandBody::SyncRestart
        }
        b"AUTHENTICATE" => {
            match decode_args(Verb::Authenticate, &mut c).map_err(|e| fail(&tag_opt, e))? {
                Command::Authenticate {
                    mechanism,
                    initial_response,
                } => ImapCommandBody::Authenticate {
                    mechanism,
                    initial_response,
                },
                _ => unreachable!("decode_args returns the verb's command"),
            }
        }
        b"CAPABILITY" | b"NOOP" | b"LOGOUT" if c.at_end() => match &upper[..] {
            b"CAPABILITY" => ImapCommandBody::Capability,
            b"NOOP" => ImapCommandBody::Noop,
            _ => ImapCommandBody::Logout,
        },
        _ => {
            if !m.literals().is_empty() || name.is_empty() {
                return Err(fail(
                    &tag_opt,
                    CommandError::Unrecognized {
                        word: Bytes::copy_from_slice(&name[..name.len().min(64)]),
                    },
                ));
            }
            let name = Bytes::copy_from_slice(name);
            let args = match c.rest_of_line() {
                [] => Bytes::new(),
                [b' ', rest @ ..] => Bytes::copy_from_slice(rest),
                _ => {
                    return Err(fail(&tag_opt, CommandError::Unrecognized { word: name }));
                }
            };
            ImapCommandBody::Other { name, args }
        }
    };
    Ok(ImapCommand { tag, body })
}

/// Decodes what a replication client sends to an imapd (the server side
/// of the IMAP flavour). Same driving rules as
/// [`super::ServerDecoder`], plus `ContinuationNeeded` for `{n}` literals.
pub struct ImapServerDecoder {
    stream: Stream,
    sasl_pending: bool,
}

impl ImapServerDecoder {
    /// csync limits, `{n}` awaiting a continuation.
    pub fn new() -> Self {
        let opts = frame::Options {
            sync_literals: SyncLiterals::AwaitContinuation,
            ..frame::Options::csync()
        };
        Self::with_options(opts).expect("defaults are valid")
    }

    /// Custom limits.
    pub fn with_options(opts: frame::Options) -> Result<Self, DecodeError> {
        Ok(ImapServerDecoder {
            stream: Stream::new(opts)?,
            sasl_pending: false,
        })
    }

    /// Changes the line limit from now on (see
    /// [`crate::frame::Framer::set_line_bytes_max`]): servers keep it small
    /// until the peer has logged in.
    pub fn set_line_bytes_max(&mut self, line_bytes_max: usize) {
        self.stream.framer().set_line_bytes_max(line_bytes_max);
    }

    /// Received bytes.
    pub fn handle_input(&mut self, input: &[u8]) {
        self.stream.framer().handle_input(input);
    }

    /// Bytes received but not decoded (for a layer switch).
    pub fn take_unconsumed(&mut self) -> BytesMut {
        self.stream.framer().take_unconsumed()
    }

    /// Bytes held (bounded; see [`crate::frame`]).
    pub fn buffered_bytes(&self) -> usize {
        self.stream.framer_ref().buffered_bytes()
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self) -> Result<(), DecodeError> {
        Ok(self.stream.framer().handle_eof()?)
    }

    /// The next line answers a SASL challenge.
    pub fn expect_sasl_response(&mut self) {
        self.sasl_pending = true;
    }

    /// Refuse the `{n}` literal just reported (see
    /// [`crate::frame::Framer::reject_literal`]).
    pub fn reject_literal(&mut self) -> Result<(), DecodeError> {
        Ok(self.stream.framer().reject_literal()?)
    }

    /// The next event, `Ok(None)` for need-more, or a fatal error.
    pub fn poll_event(
        &mut self,
    ) -> Result<Option<Event<ImapClientLine, ImapCommandError>>, DecodeError> {
        let Some(raw) = self.stream.poll()? else {
            return Ok(None);
        };
        Ok(Some(match raw {
            Raw::File(p) => Event::from_file(p),
            Raw::Continuation(len) => Event::ContinuationNeeded { len },
            Raw::Message(m) => {
                if std::mem::take(&mut self.sasl_pending) {
                    match super::command::decode_sasl_line(&m) {
                        Ok(super::ClientLine::SaslCancel) => {
                            Event::Decoded(ImapClientLine::SaslCancel)
                        }
                        Ok(super::ClientLine::SaslResponse(d)) => {
                            Event::Decoded(ImapClientLine::SaslResponse(d))
                        }
                        Ok(super::ClientLine::Command(_)) => {
                            unreachable!("SASL lines are not commands")
                        }
                        Err(error) => Event::Refused(ImapCommandError { tag: None, error }),
                    }
                } else {
                    match decode_imap_command(&m) {
                        Ok(c) => Event::Decoded(ImapClientLine::Command(c)),
                        Err(e) => Event::Refused(e),
                    }
                }
            }
            Raw::Refused(r) => {
                self.sasl_pending = false;
                let tag_end = r
                    .head
                    .iter()
                    .position(|&b| b == b' ')
                    .unwrap_or(r.head.len());
                let tag = (tag_end > 0).then(|| r.head.slice(..tag_end));
                Event::Refused(ImapCommandError {
                    tag,
                    error: CommandError::Limit {
                        verb: None,
                        reason: r.reason,
                    },
                })
            }
        }))
    }
}

impl Default for ImapServerDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// An untagged IMAP condition word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
    /// `BYE`
    Bye,
    /// `PREAUTH`
    Preauth,
}

impl Condition {
    fn word(self) -> &'static [u8] {
        match self {
            Condition::Ok => b"OK",
            Condition::No => b"NO",
            Condition::Bad => b"BAD",
            Condition::Bye => b"BYE",
            Condition::Preauth => b"PREAUTH",
        }
    }

    fn from_word(w: &[u8]) -> Option<Self> {
        Some(match w {
            b"OK" => Condition::Ok,
            b"NO" => Condition::No,
            b"BAD" => Condition::Bad,
            b"BYE" => Condition::Bye,
            b"PREAUTH" => Condition::Preauth,
            _ => return None,
        })
    }
}

/// A line an IMAP-flavour client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapResponse {
    /// `<tag> OK/NO/BAD …`; replication results use the csync texts
    /// (`S1 OK success`, `S4 NO IMAP_SYNC_CHECKSUM Checksum Failure`).
    Tagged {
        /// The command's tag.
        tag: Bytes,
        /// The status.
        status: Status,
    },
    /// `* OK/NO/BAD/BYE/PREAUTH text` (the greeting is `* OK [CAPABILITY …] …`).
    Condition {
        /// Which.
        condition: Condition,
        /// The rest of the line.
        text: Bytes,
    },
    /// `* CAPABILITY word…` (look for `X-REPLICATION`).
    Capability(Vec<Bytes>),
    /// `* KEY value` replication data (MAILBOX, ENABLED, MISSING, …).
    Data(Item),
    /// `+ text`.
    Continuation(Bytes),
    /// Any other untagged line (no literals), everything after `* `.
    Other(Bytes),
}

impl ImapResponse {
    /// The capabilities this line announces: the words of
    /// `* CAPABILITY …`, or of a `[CAPABILITY …]` code opening the text of
    /// an untagged or tagged OK (the greeting, and the AUTHENTICATE reply
    /// where imapd lists `X-REPLICATION`).
    pub fn capabilities(&self) -> Option<Vec<&[u8]>> {
        let text: &[u8] = match self {
            ImapResponse::Capability(words) => return Some(words.iter().map(|w| &w[..]).collect()),
            ImapResponse::Condition {
                condition: Condition::Ok,
                text,
            } => text,
            ImapResponse::Tagged { status, .. }
                if status.kind == super::StatusKind::Ok && status.code.is_none() =>
            {
                &status.text
            }
            _ => return None,
        };
        let inner = text.strip_prefix(b"[CAPABILITY ")?;
        let end = inner.iter().position(|&b| b == b']')?;
        Some(
            inner[..end]
                .split(|&b| b == b' ')
                .filter(|w| !w.is_empty())
                .collect(),
        )
    }

    /// `true` if [`ImapResponse::capabilities`] lists `name` (ASCII
    /// case-insensitive), e.g. `X-REPLICATION`.
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities()
            .is_some_and(|c| c.iter().any(|w| w.eq_ignore_ascii_case(name.as_bytes())))
    }

    /// The exact line imapd prints (`{n}` literals), CRLF included.
    pub fn encode(&self) -> Encoded {
        let mut e = Encoder::new(LiteralStyle::Sync);
        match self {
            ImapResponse::Data(item) => {
                e.raw(b"* ").item(item);
            }
            other => {
                let mut out = BytesMut::new();
                match other {
                    ImapResponse::Tagged { tag, status } => {
                        out.put_slice(tag);
                        out.put_u8(b' ');
                        status.write(&mut out);
                    }
                    ImapResponse::Condition { condition, text } => {
                        out.put_slice(b"* ");
                        out.put_slice(condition.word());
                        if !text.is_empty() {
                            out.put_u8(b' ');
                            out.put_slice(text);
                        }
                    }
                    ImapResponse::Capability(words) => {
                        out.put_slice(b"* CAPABILITY");
                        for w in words {
                            out.put_u8(b' ');
                            out.put_slice(w);
                        }
                    }
                    ImapResponse::Continuation(t) => {
                        out.put_slice(b"+ ");
                        out.put_slice(t);
                    }
                    ImapResponse::Other(t) => {
                        out.put_slice(b"* ");
                        out.put_slice(t);
                    }
                    ImapResponse::Data(_) => unreachable!("handled above"),
                }
                e.raw(&out);
            }
        }
        e.crlf();
        e.finish()
    }
}

fn decode_imap_response(m: &Message) -> Result<ImapResponse, ResponseError> {
    let text = m.text();
    let plain = m.literals().is_empty();
    let unrecognized = || ResponseError::Unrecognized {
        head: Bytes::copy_from_slice(&text[..text.len().min(64)]),
    };
    if let Some(rest) = text.strip_prefix(b"* ") {
        let wl = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let word = &rest[..wl];
        if plain {
            if let (Some(condition), Some(t)) = (Condition::from_word(word), rest_after(rest, wl)) {
                return Ok(ImapResponse::Condition {
                    condition,
                    text: Bytes::copy_from_slice(t),
                });
            }
            if word == b"CAPABILITY" {
                let words = rest[wl..].split(|&b| b == b' ').filter(|w| !w.is_empty());
                return Ok(ImapResponse::Capability(
                    words.map(Bytes::copy_from_slice).collect(),
                ));
            }
        }
        return match Cursor::new(m, 2).item() {
            Ok(item) => Ok(ImapResponse::Data(item)),
            Err(_) if plain => Ok(ImapResponse::Other(Bytes::copy_from_slice(rest))),
            Err(e) => Err(ResponseError::BadData(e)),
        };
    }
    if !plain {
        return Err(unrecognized());
    }
    if text == b"+" {
        return Ok(ImapResponse::Continuation(Bytes::new()));
    }
    if let Some(rest) = text.strip_prefix(b"+ ") {
        return Ok(ImapResponse::Continuation(Bytes::copy_from_slice(rest)));
    }
    let tl = text
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(unrecognized)?;
    let rest = &text[tl + 1..];
    let wl = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    match (status_kind(&rest[..wl]), rest_after(rest, wl)) {
        (Some(kind), Some(r)) if tl > 0 => Ok(ImapResponse::Tagged {
            tag: Bytes::copy_from_slice(&text[..tl]),
            status: Status::from_rest(kind, r),
        }),
        _ => Err(unrecognized()),
    }
}

/// Decodes what an imapd sends to a replication client (the client side
/// of the IMAP flavour). `{n}` literals follow at once.
pub struct ImapClientDecoder {
    stream: Stream,
}

impl ImapClientDecoder {
    /// csync limits.
    pub fn new() -> Self {
        Self::with_options(frame::Options::csync()).expect("defaults are valid")
    }

    /// Custom limits.
    pub fn with_options(opts: frame::Options) -> Result<Self, DecodeError> {
        Ok(ImapClientDecoder {
            stream: Stream::new(opts)?,
        })
    }

    /// Received bytes.
    pub fn handle_input(&mut self, input: &[u8]) {
        self.stream.framer().handle_input(input);
    }

    /// Bytes received but not decoded (for a layer switch).
    pub fn take_unconsumed(&mut self) -> BytesMut {
        self.stream.framer().take_unconsumed()
    }

    /// Bytes held (bounded; see [`crate::frame`]).
    pub fn buffered_bytes(&self) -> usize {
        self.stream.framer_ref().buffered_bytes()
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self) -> Result<(), DecodeError> {
        Ok(self.stream.framer().handle_eof()?)
    }

    /// The next event, `Ok(None)` for need-more, or a fatal error.
    pub fn poll_event(
        &mut self,
    ) -> Result<Option<Event<ImapResponse, ResponseError>>, DecodeError> {
        let Some(raw) = self.stream.poll()? else {
            return Ok(None);
        };
        Ok(Some(match raw {
            Raw::File(p) => Event::from_file(p),
            Raw::Continuation(len) => Event::ContinuationNeeded { len },
            Raw::Message(m) => match decode_imap_response(&m) {
                Ok(r) => Event::Decoded(r),
                Err(e) => Event::Refused(e),
            },
            Raw::Refused(r) => Event::Refused(ResponseError::Limit(r.reason)),
        }))
    }
}

impl Default for ImapClientDecoder {
    fn default() -> Self {
        Self::new()
    }
}
