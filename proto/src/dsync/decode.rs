//! The resumable, sans-IO reader of one direction of a dsync stream.
//!
//! Framing comes first: the decoder finds complete `\n`-terminated lines
//! (at most [`Options::line_bytes_max`] bytes) and, after a record that
//! announces a body, runs the dot-decoder over the following bytes, handing
//! the body out in chunks of at most [`Options::body_chunk_bytes_max`]
//! bytes however large it is. Only complete lines are parsed. A strict
//! prefix of a valid stream is never an error, just "need more"
//! (`Ok(None)`); the first error closes the stream for good.
//!
//! The decoder checks what the stream itself says (version, headers,
//! records against the sender's headers, bodies) but not the order of the
//! sync conversation, which belongs to the engine's state machine.

use bytes::{Buf, Bytes, BytesMut};

use super::dot::DotDecoder;
use super::error::DecodeError;
use super::escape::{split_list, split_values};
use super::item::{decode_item, Item, UnknownItem};
use super::schema::{ItemHeader, ItemKind, Schema};

/// Limits for [`Decoder`]; each bounds memory a peer can make us use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Longest line (record or header) accepted, without its `\n`.
    pub line_bytes_max: usize,
    /// Largest [`Event::BodyChunk`] handed out (at least 4).
    pub body_chunk_bytes_max: usize,
    /// Most header lines accepted before the `.` that ends them.
    pub headers_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            line_bytes_max: 1024 * 1024,
            body_chunk_bytes_max: 64 * 1024,
            headers_max: 64,
        }
    }
}

/// One thing read from the stream, in wire order.
// Events are handed out one at a time, never stored in bulk by the codec,
// so the size of the `Item` variant is not worth a box on every record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `VERSION\tdsync\t<major>\t<minor>`.
    Version {
        /// Major version (always 3 once accepted).
        major: u32,
        /// Minor version (Dovecot 2.3 speaks 5).
        minor: u32,
    },
    /// One item header line.
    Header(ItemHeader),
    /// The `.` ending the header block.
    HeadersEnd,
    /// One record.
    Item(Item),
    /// A `.` line ending a list.
    EndOfList,
    /// A piece of the body announced by the previous `M`/`A` record,
    /// dot-decoded.
    BodyChunk(Bytes),
    /// The body's terminator.
    BodyEnd,
    /// `X`: the peer is closing.
    Done,
}

#[derive(Debug)]
enum Phase {
    Version,
    Headers,
    Records,
    Body(DotDecoder),
    /// The body's last chunk was handed out; `BodyEnd` is next.
    BodyEndPending,
    Done,
}

/// Reader of one direction of a dsync stream. Call order: [`feed`](Self::feed)
/// what arrived, then [`next`](Self::next) until it returns `Ok(None)`;
/// at end of input call [`handle_eof`](Self::handle_eof).
#[derive(Debug)]
pub struct Decoder {
    options: Options,
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no `\n`.
    scanned: usize,
    phase: Phase,
    schema: Schema,
    minor: u32,
    poisoned: Option<DecodeError>,
}

impl Decoder {
    /// A decoder waiting for the VERSION line.
    pub fn new(options: Options) -> Self {
        Self {
            options,
            buf: BytesMut::new(),
            scanned: 0,
            phase: Phase::Version,
            schema: Schema::new(),
            minor: 0,
            poisoned: None,
        }
    }

    /// Hand over bytes received from the peer. Drain [`next`](Self::next)
    /// before feeding again: buffered input is bounded by one line limit
    /// plus what one `feed` gives.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The headers the peer announced so far.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The peer's minor protocol version (0 before the VERSION line).
    pub fn minor_version(&self) -> u32 {
        self.minor
    }

    /// Bytes fed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next event, `Ok(None)` when more input is needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Event>, DecodeError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(e) => {
                self.poisoned = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The peer closed its side. Fine between records (whether an `X` came
    /// first is the caller's concern); an error inside a line or a body.
    pub fn handle_eof(&mut self) -> Result<(), DecodeError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let during = match self.phase {
            Phase::Body(_) | Phase::BodyEndPending => Some("a message body"),
            _ if !self.buf.is_empty() => Some("a line"),
            Phase::Version => Some("the VERSION line"),
            Phase::Headers => Some("the item headers"),
            _ => None,
        };
        match during {
            Some(during) => {
                let e = DecodeError::UnexpectedEof { during };
                self.poisoned = Some(e.clone());
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn step(&mut self) -> Result<Option<Event>, DecodeError> {
        match &mut self.phase {
            Phase::Body(dot) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let mut out =
                    Vec::with_capacity(self.options.body_chunk_bytes_max.min(self.buf.len() + 4));
                let (used, ended) =
                    dot.decode(&self.buf, &mut out, self.options.body_chunk_bytes_max);
                self.buf.advance(used);
                if ended {
                    self.phase = Phase::BodyEndPending;
                    if out.is_empty() {
                        self.phase = Phase::Records;
                        return Ok(Some(Event::BodyEnd));
                    }
                }
                if out.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Event::BodyChunk(Bytes::from(out))));
            }
            Phase::BodyEndPending => {
                self.phase = Phase::Records;
                return Ok(Some(Event::BodyEnd));
            }
            Phase::Done => {
                if !self.buf.is_empty() {
                    return Err(DecodeError::DataAfterDone);
                }
                return Ok(None);
            }
            _ => {}
        }
        let Some(line) = self.take_line()? else {
            return Ok(None);
        };
        match self.phase {
            Phase::Version => {
                let (major, minor) = parse_version(&line)?;
                if major != 3 {
                    return Err(DecodeError::UnsupportedVersion { major, minor });
                }
                self.minor = minor;
                self.phase = Phase::Headers;
                Ok(Some(Event::Version { major, minor }))
            }
            Phase::Headers => {
                if line.as_ref() == b"." {
                    self.check_headers()?;
                    self.phase = Phase::Records;
                    return Ok(Some(Event::HeadersEnd));
                }
                let Some(&chr) = line.first() else {
                    return Err(DecodeError::EmptyLine);
                };
                if self.schema.len() >= self.options.headers_max && self.schema.get(chr).is_none() {
                    return Err(DecodeError::TooManyHeaders {
                        limit: self.options.headers_max,
                    });
                }
                let header = ItemHeader {
                    chr,
                    keys: split_list(&line[1..]),
                };
                if let Some(kind) = ItemKind::from_chr(chr) {
                    for key in kind.required_keys() {
                        if header.index_of(key.as_bytes()).is_none() {
                            return Err(DecodeError::HeaderMissingKey {
                                item: kind.name(),
                                key,
                            });
                        }
                    }
                }
                self.schema.insert(header.clone());
                Ok(Some(Event::Header(header)))
            }
            Phase::Records => {
                if line.as_ref() == b"." {
                    return Ok(Some(Event::EndOfList));
                }
                let Some(&chr) = line.first() else {
                    return Err(DecodeError::EmptyLine);
                };
                if chr == b'X' {
                    // Dovecot treats any line starting with X as "done".
                    // Bytes after it are refused by the next call, whether
                    // they came with the X line or later: reporting them here
                    // instead would lose `Done` only when they arrive
                    // together (found by the fuzz target `dsync`,
                    // corpus/regressions/dsync/).
                    self.phase = Phase::Done;
                    return Ok(Some(Event::Done));
                }
                let header = self
                    .schema
                    .get(chr)
                    .ok_or(DecodeError::UndeclaredItem { chr })?;
                let values = split_values(&line[1..]);
                if values.len() > header.keys.len() {
                    return Err(DecodeError::TooManyValues {
                        chr,
                        declared: header.keys.len(),
                        got: values.len(),
                    });
                }
                let item = match ItemKind::from_chr(chr) {
                    Some(ItemKind::MailboxCacheField) => {
                        return Err(DecodeError::UnexpectedItem { chr })
                    }
                    Some(kind) => {
                        for key in kind.required_keys() {
                            let i = header
                                .index_of(key.as_bytes())
                                .expect("checked when the header came");
                            if !matches!(values.get(i), Some(Some(_))) {
                                return Err(DecodeError::MissingField {
                                    item: kind.name(),
                                    key,
                                });
                            }
                        }
                        decode_item(kind, header, &values, self.schema.get(b'c'))?
                    }
                    None => Item::Unknown(UnknownItem { chr, values }),
                };
                if item.has_body() {
                    self.phase = Phase::Body(DotDecoder::new());
                }
                Ok(Some(Event::Item(item)))
            }
            Phase::Body(_) | Phase::BodyEndPending | Phase::Done => unreachable!("handled above"),
        }
    }

    /// Dovecot refuses a peer that did not announce every item type its
    /// protocol version has.
    fn check_headers(&self) -> Result<(), DecodeError> {
        for kind in ItemKind::all() {
            if kind != ItemKind::Done
                && self.minor >= kind.min_minor()
                && self.schema.get(kind.chr()).is_none()
            {
                return Err(DecodeError::MissingHeader { item: kind.name() });
            }
        }
        Ok(())
    }

    /// One complete line without its `\n`, or `None` if it has not all
    /// arrived.
    fn take_line(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let limit = self.options.line_bytes_max;
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(off) => {
                let len = self.scanned + off;
                if len > limit {
                    return Err(DecodeError::LineTooLong { limit });
                }
                let mut line = self.buf.split_to(len + 1).freeze();
                line.truncate(len);
                self.scanned = 0;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > limit {
                    return Err(DecodeError::LineTooLong { limit });
                }
                Ok(None)
            }
        }
    }
}

fn parse_version(line: &[u8]) -> Result<(u32, u32), DecodeError> {
    let parts: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
    let num = |v: &[u8]| -> Option<u32> {
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(v).ok()?.parse().ok()
    };
    match parts.as_slice() {
        [b"VERSION", b"dsync", major, minor] => match (num(major), num(minor)) {
            (Some(major), Some(minor)) => Ok((major, minor)),
            _ => Err(DecodeError::BadVersionLine),
        },
        _ => Err(DecodeError::BadVersionLine),
    }
}
