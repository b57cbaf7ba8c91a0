//! Streaming decoders for both ends of a csync connection, built on
//! [`crate::frame::Framer`]: file literal bodies come out as chunks while
//! the message is still arriving; the decoded line comes after them.

use bytes::{Bytes, BytesMut};

use super::command::{decode_command, decode_sasl_line, head_verb, ClientLine, CommandError};
use super::response::{Greeting, Response, Status, StatusKind};
use super::SaslData;
use crate::dlist::parse::{Cursor, ParseError};
use crate::dlist::{FileRef, Guid};
use crate::frame::{self, FrameError, Framer, LiteralKind, Message, Refusal, RefusalReason};

/// What a decoder reports.
///
/// Order: for a message carrying file literals, each file comes as
/// `FileStart`, `FileChunk`*, `FileEnd` while it arrives, then the message
/// itself as `Decoded` — or `Refused`, in which case the files streamed
/// for it must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T, E> {
    /// A file literal begins (partition, GUID, size).
    FileStart(FileRef),
    /// Next bytes of the current file.
    FileChunk(Bytes),
    /// The current file is complete (check its SHA-1 against the GUID).
    FileEnd,
    /// The peer sent a synchronising literal and waits for `+ go ahead`
    /// (IMAP-flavour server side only); see
    /// [`crate::frame::Event::ContinuationNeeded`].
    ContinuationNeeded {
        /// Announced length.
        len: u64,
    },
    /// A decoded line.
    Decoded(T),
    /// A line framed to its end and refused; the session goes on.
    Refused(E),
}

/// Fatal decoding errors: the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The framer could not resynchronise (see [`FrameError`]).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Our caller's misuse: options a dlist decoder cannot work with.
    #[error("invalid decoder options: {0}")]
    Options(&'static str),
}

/// Framer events with file literals validated, other streamed literals
/// swallowed (the message that owns them is refused by the parser).
pub(crate) enum Raw {
    File(FilePart),
    Continuation(u64),
    Message(Message),
    Refused(Refusal),
}

pub(crate) enum FilePart {
    Start(FileRef),
    Chunk(Bytes),
    End,
}

pub(crate) struct Stream {
    framer: Framer,
    /// The streamed literal in progress is not a valid file: drop its bytes.
    swallowing: bool,
}

impl Stream {
    pub(crate) fn new(opts: frame::Options) -> Result<Self, DecodeError> {
        if !opts.file_literals {
            // Without them a file literal's bytes would be read as lines.
            return Err(DecodeError::Options("csync needs file_literals"));
        }
        if (opts.inline_literal_bytes_max as u64) < opts.literal_bytes_max {
            // dlist values need a plain literal's bytes in the message.
            return Err(DecodeError::Options(
                "inline_literal_bytes_max below literal_bytes_max",
            ));
        }
        if opts.inline_literal_bytes_max > opts.line_bytes_max {
            return Err(DecodeError::Options(
                "inline_literal_bytes_max exceeds line_bytes_max",
            ));
        }
        Ok(Stream {
            framer: Framer::new(opts),
            swallowing: false,
        })
    }

    pub(crate) fn framer(&mut self) -> &mut Framer {
        &mut self.framer
    }

    pub(crate) fn framer_ref(&self) -> &Framer {
        &self.framer
    }

    pub(crate) fn poll(&mut self) -> Result<Option<Raw>, DecodeError> {
        loop {
            let Some(ev) = self.framer.poll_event()? else {
                return Ok(None);
            };
            return Ok(Some(match ev {
                frame::Event::ContinuationNeeded { len } => Raw::Continuation(len),
                frame::Event::LiteralStart(h) => match (&h.kind, self.swallowing) {
                    (LiteralKind::File { partition, guid }, _) => match Guid::parse(guid) {
                        Ok(guid) => {
                            self.swallowing = false;
                            Raw::File(FilePart::Start(FileRef {
                                partition: partition.clone(),
                                guid,
                                size: h.len,
                            }))
                        }
                        Err(_) => {
                            self.swallowing = true;
                            continue;
                        }
                    },
                    _ => {
                        self.swallowing = true;
                        continue;
                    }
                },
                frame::Event::LiteralChunk(c) => {
                    if self.swallowing {
                        continue;
                    }
                    Raw::File(FilePart::Chunk(c))
                }
                frame::Event::LiteralEnd => {
                    if std::mem::take(&mut self.swallowing) {
                        continue;
                    }
                    Raw::File(FilePart::End)
                }
                frame::Event::Message(m) => Raw::Message(m),
                frame::Event::Refused(r) => Raw::Refused(r),
            }));
        }
    }
}

impl<T, E> Event<T, E> {
    pub(crate) fn from_file(p: FilePart) -> Self {
        match p {
            FilePart::Start(f) => Event::FileStart(f),
            FilePart::Chunk(c) => Event::FileChunk(c),
            FilePart::End => Event::FileEnd,
        }
    }
}

/// Decodes what a csync client sends (the server's side of the wire).
///
/// Drive it like the framer: [`ServerDecoder::handle_input`] with received
/// (already inflated/decrypted) bytes, then [`ServerDecoder::poll_event`]
/// until `Ok(None)`. Stream `FileStart..FileEnd` to staging; act on
/// `Decoded(ClientLine)`; answer `Refused(e)` with `e.response()` (or
/// `NO Please authenticate first`, see [`CommandError`]). After sending a
/// SASL challenge (`+ …`), call [`ServerDecoder::expect_sasl_response`]
/// so the next line is read as a response, not a command. When switching
/// layers (COMPRESS, STARTTLS) take the undecoded bytes with
/// [`ServerDecoder::take_unconsumed`].
pub struct ServerDecoder {
    stream: Stream,
    sasl_pending: bool,
}

impl ServerDecoder {
    /// A decoder with csync framing options ([`frame::Options::csync`]).
    pub fn new() -> Self {
        Self::with_options(frame::Options::csync()).expect("csync defaults are valid")
    }

    /// A decoder with custom limits: `file_literals` on, and
    /// `literal_bytes_max <= inline_literal_bytes_max <= line_bytes_max`
    /// (dlist values need a plain literal's bytes inline), else
    /// [`DecodeError::Options`].
    pub fn with_options(opts: frame::Options) -> Result<Self, DecodeError> {
        Ok(ServerDecoder {
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

    /// The peer closed its side.
    pub fn handle_eof(&mut self) -> Result<(), DecodeError> {
        Ok(self.stream.framer().handle_eof()?)
    }

    /// The next line is the client's answer to a SASL challenge.
    pub fn expect_sasl_response(&mut self) {
        self.sasl_pending = true;
    }

    /// Bytes received but not decoded (for a layer switch).
    pub fn take_unconsumed(&mut self) -> BytesMut {
        self.stream.framer().take_unconsumed()
    }

    /// Bytes held (bounded; see [`crate::frame`]).
    pub fn buffered_bytes(&self) -> usize {
        self.stream.framer_ref().buffered_bytes()
    }

    /// The next event, `Ok(None)` for need-more, or a fatal error.
    pub fn poll_event(&mut self) -> Result<Option<Event<ClientLine, CommandError>>, DecodeError> {
        let Some(raw) = self.stream.poll()? else {
            return Ok(None);
        };
        Ok(Some(match raw {
            Raw::File(p) => Event::from_file(p),
            Raw::Continuation(len) => Event::ContinuationNeeded { len },
            Raw::Message(m) => {
                let sasl = std::mem::take(&mut self.sasl_pending);
                let r = if sasl {
                    decode_sasl_line(&m)
                } else {
                    decode_command(&m).map(ClientLine::Command)
                };
                match r {
                    Ok(line) => Event::Decoded(line),
                    Err(e) => Event::Refused(e),
                }
            }
            Raw::Refused(r) => {
                self.sasl_pending = false;
                Event::Refused(CommandError::Limit {
                    verb: head_verb(&r.head),
                    reason: r.reason,
                })
            }
        }))
    }
}

impl Default for ServerDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// A server line the client cannot decode. Peer's fault in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// Peer's fault: not a csync response line.
    #[error("unrecognised response line")]
    Unrecognized {
        /// The first bytes of the line.
        head: Bytes,
    },
    /// Peer's fault: untagged data whose dlist does not parse.
    #[error("bad untagged data: {0}")]
    BadData(ParseError),
    /// Peer's fault: the line broke a framing limit and was skipped whole.
    #[error("line refused by the framer: {0:?}")]
    Limit(RefusalReason),
}

/// Where the client is in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Reading banner lines up to `* OK …`.
    Banner,
    /// After the greeting: `* KEY value` is data.
    Session,
}

/// Decodes what a csync server sends (the client's side of the wire).
///
/// Starts in [`ClientPhase::Banner`]: `* NAME …` lines are capabilities
/// until `* OK …` (the greeting), then the phase is
/// [`ClientPhase::Session`] and `* KEY value` lines are data. After
/// STARTTLS the server re-sends the banner: call
/// [`ClientDecoder::expect_banner`]. Status, challenge, BYE and
/// `* Fatal error:` lines decode in either phase.
pub struct ClientDecoder {
    stream: Stream,
    phase: ClientPhase,
}

impl ClientDecoder {
    /// A decoder with csync framing options, in the banner phase.
    pub fn new() -> Self {
        Self::with_options(frame::Options::csync()).expect("csync defaults are valid")
    }

    /// A decoder with custom limits.
    pub fn with_options(opts: frame::Options) -> Result<Self, DecodeError> {
        Ok(ClientDecoder {
            stream: Stream::new(opts)?,
            phase: ClientPhase::Banner,
        })
    }

    /// The current phase.
    pub fn phase(&self) -> ClientPhase {
        self.phase
    }

    /// Read a banner next (after STARTTLS).
    pub fn expect_banner(&mut self) {
        self.phase = ClientPhase::Banner;
    }

    /// Received bytes.
    pub fn handle_input(&mut self, input: &[u8]) {
        self.stream.framer().handle_input(input);
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self) -> Result<(), DecodeError> {
        Ok(self.stream.framer().handle_eof()?)
    }

    /// Bytes received but not decoded (for a layer switch).
    pub fn take_unconsumed(&mut self) -> BytesMut {
        self.stream.framer().take_unconsumed()
    }

    /// Bytes held (bounded; see [`crate::frame`]).
    pub fn buffered_bytes(&self) -> usize {
        self.stream.framer_ref().buffered_bytes()
    }

    /// The next event, `Ok(None)` for need-more, or a fatal error.
    pub fn poll_event(&mut self) -> Result<Option<Event<Response, ResponseError>>, DecodeError> {
        let Some(raw) = self.stream.poll()? else {
            return Ok(None);
        };
        Ok(Some(match raw {
            Raw::File(p) => Event::from_file(p),
            Raw::Continuation(len) => Event::ContinuationNeeded { len },
            Raw::Message(m) => match decode_response(&m, self.phase) {
                Ok(r) => {
                    if matches!(r, Response::Greeting(_)) {
                        self.phase = ClientPhase::Session;
                    }
                    Event::Decoded(r)
                }
                Err(e) => Event::Refused(e),
            },
            Raw::Refused(r) => Event::Refused(ResponseError::Limit(r.reason)),
        }))
    }
}

impl Default for ClientDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn unrecognized(m: &Message) -> ResponseError {
    let t = m.text();
    ResponseError::Unrecognized {
        head: Bytes::copy_from_slice(&t[..t.len().min(64)]),
    }
}

/// Status words after which the rest of the line is text.
pub(crate) fn status_kind(word: &[u8]) -> Option<StatusKind> {
    match word {
        b"OK" => Some(StatusKind::Ok),
        b"NO" => Some(StatusKind::No),
        b"BAD" => Some(StatusKind::Bad),
        _ => None,
    }
}

/// The text after `WORD ` on a literal-free line (empty if the line is just `WORD`).
pub(crate) fn rest_after(text: &[u8], word_len: usize) -> Option<&[u8]> {
    match text.get(word_len) {
        None => Some(&[]),
        Some(b' ') => Some(&text[word_len + 1..]),
        Some(_) => None,
    }
}

fn decode_response(m: &Message, phase: ClientPhase) -> Result<Response, ResponseError> {
    let text = m.text();
    let plain = m.literals().is_empty();
    if let Some(rest) = text.strip_prefix(b"* ") {
        if let Some(t) = rest.strip_prefix(b"Fatal error: ") {
            if plain {
                return Ok(Response::Fatal(Bytes::copy_from_slice(t)));
            }
        }
        if phase == ClientPhase::Banner {
            if !plain {
                return Err(unrecognized(m));
            }
            if let Some(t) = rest.strip_prefix(b"OK ") {
                return Ok(Response::Greeting(Greeting {
                    text: Bytes::copy_from_slice(t),
                }));
            }
            return Ok(Response::parse_capability(rest));
        }
        let item = Cursor::new(m, 2).item().map_err(ResponseError::BadData)?;
        return Ok(Response::Data(item));
    }
    if !plain {
        return Err(unrecognized(m));
    }
    if text == b"+" {
        return Ok(Response::Challenge(SaslData::from_wire(Bytes::new())));
    }
    if let Some(rest) = text.strip_prefix(b"+ ") {
        return Ok(Response::Challenge(SaslData::from_wire(
            Bytes::copy_from_slice(rest),
        )));
    }
    let wl = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let word = &text[..wl];
    if word == b"BYE" {
        return Ok(Response::Bye(Bytes::copy_from_slice(
            rest_after(text, wl).unwrap_or_default(),
        )));
    }
    match (status_kind(word), rest_after(text, wl)) {
        (Some(kind), Some(rest)) => Ok(Response::Status(Status::from_rest(kind, rest))),
        _ => Err(unrecognized(m)),
    }
}
