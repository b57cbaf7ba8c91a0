//! The dlist parser: runs on a complete framed [`Message`], never on a
//! partial stream (the framer has already found every literal).
//!
//! Grammar accepted (Cyrus 3.6.1 `dlist_parse`, restricted to one message):
//!
//! ```text
//! item     = astring *WSP value                  ; then end of message
//! value    = list / kvlist / filelit / literal / flag / nastring
//! list     = "(" *WSP [value *(*WSP value)] *WSP ")"
//! kvlist   = "%(" *WSP [astring *WSP value *(*WSP astring *WSP value)] *WSP ")"
//! filelit  = "%{" astring SP astring SP number "}" CRLF <bytes, streamed>
//! literal  = "{" number ["+"] "}" CRLF <number octets>      ; NUL allowed
//! flag     = "\" *ATOM-CHAR
//! nastring = "NIL" / quoted / atom                         ; bare NIL = Value::Nil
//! quoted   = DQUOTE *(any byte but DQUOTE and "\", or "\" any byte) DQUOTE
//! atom     = 1*ATOM-CHAR   ; ATOM-CHAR: any byte but SP TAB CR LF ( ) DQUOTE NUL
//! WSP      = SP / TAB / VT / FF
//! ```
//!
//! Differences from Cyrus, all refusals of things Cyrus never prints: a
//! list may not span lines (the framer ends a message at a line end that
//! does not follow a literal announcement), nesting is bounded by
//! [`DEPTH_MAX`], and a token may not run into a literal body.

use bytes::Bytes;
use nom::bytes::complete::take_while1;
use nom::character::complete::digit1;
use nom::IResult;

use super::{FileRef, Guid, Item, KvList, Value};
use crate::frame::{LiteralKind, Message};

/// Deepest nesting of lists/kvlists accepted (real records nest 4 deep).
pub const DEPTH_MAX: usize = 64;

/// A dlist that does not parse. Every variant is the peer's fault except
/// [`ParseError::StreamedLiteral`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Peer's fault: an unexpected byte at text offset `at`.
    #[error("unexpected input at byte {at}: expected {expected}")]
    Unexpected {
        /// Text offset.
        at: usize,
        /// What the grammar wanted.
        expected: &'static str,
    },
    /// Peer's fault: the message ended inside a value.
    #[error("message ended early: expected {expected}")]
    UnexpectedEnd {
        /// What the grammar wanted.
        expected: &'static str,
    },
    /// Peer's fault: bytes after the complete item.
    #[error("unexpected bytes after the value at byte {at}")]
    Trailing {
        /// Text offset.
        at: usize,
    },
    /// Peer's fault: a literal announcement that the framer did not see at
    /// a line end (so its bytes were not taken as a literal).
    #[error("literal announcement at byte {at} is not at a line end")]
    UnframedLiteral {
        /// Text offset.
        at: usize,
    },
    /// Peer's fault: a file literal whose GUID is not 40 hex digits.
    #[error("file literal at byte {at} has an invalid GUID")]
    BadGuid {
        /// Text offset.
        at: usize,
    },
    /// Peer's fault: a file literal whose partition name is neither an
    /// atom nor a quotable string (8-bit bytes, CR/LF, NUL ...): Cyrus
    /// partition names come from `partition-NAME` keys, and such a name
    /// could not be printed back into a frameable `%{...}` announcement.
    #[error("file literal at byte {at} has an invalid partition name")]
    BadPartition {
        /// Text offset.
        at: usize,
    },
    /// Peer's fault: lists nested deeper than [`DEPTH_MAX`].
    #[error("lists nested deeper than {DEPTH_MAX}")]
    TooDeep,
    /// Our configuration: a plain literal was streamed (framer
    /// `inline_literal_bytes_max` too small for dlist use).
    #[error("plain literal at byte {at} was streamed, not inline")]
    StreamedLiteral {
        /// Text offset.
        at: usize,
    },
}

/// A byte that may appear in a (liberal) atom or flag.
pub fn is_liberal_atom_char(b: u8) -> bool {
    !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b'"' | 0)
}

fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c)
}

fn atom_token(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(is_liberal_atom_char)(i)
}

fn command_word(i: &[u8]) -> IResult<&[u8], &[u8]> {
    take_while1(|b| !matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'(' | b')' | b'"'))(i)
}

fn number(i: &[u8]) -> IResult<&[u8], u64> {
    let (rest, d) = digit1(i)?;
    let n = d
        .iter()
        .try_fold(0u64, |acc, c| {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        })
        .ok_or_else(|| {
            nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::TooLarge))
        })?;
    Ok((rest, n))
}

/// A position in a message, aware of where literal bodies sit.
#[derive(Debug, Clone)]
pub struct Cursor<'m> {
    msg: &'m Message,
    pos: usize,
    /// Index of the first literal whose announcement ends at or after `pos`.
    next_lit: usize,
}

impl<'m> Cursor<'m> {
    /// A cursor at text offset `pos`.
    pub fn new(msg: &'m Message, pos: usize) -> Self {
        let next_lit = msg
            .literals()
            .iter()
            .take_while(|l| l.text_offset < pos)
            .count();
        Cursor { msg, pos, next_lit }
    }

    /// Current text offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// `true` at the end of the message.
    pub fn at_end(&self) -> bool {
        self.pos >= self.msg.text().len()
    }

    /// Text up to the next line end inside the message (a literal body).
    fn window(&self) -> &'m [u8] {
        let text = self.msg.text();
        let end = self
            .msg
            .literals()
            .get(self.next_lit)
            .map_or(text.len(), |l| l.text_offset);
        &text[self.pos..end]
    }

    /// The next byte, if it is on the current line.
    pub fn peek(&self) -> Option<u8> {
        self.window().first().copied()
    }

    /// The unparsed remainder of the current line.
    pub fn rest_of_line(&self) -> &'m [u8] {
        self.window()
    }

    /// `true` if the rest of the message is one line with no literal.
    pub fn rest_is_plain(&self) -> bool {
        self.next_lit >= self.msg.literals().len()
    }

    /// Skips SP / TAB / VT / FF; returns how many.
    pub fn skip_wsp(&mut self) -> usize {
        let n = self.window().iter().take_while(|&&b| is_wsp(b)).count();
        self.pos += n;
        n
    }

    /// Consumes exactly one SP.
    pub fn expect_sp(&mut self) -> Result<(), ParseError> {
        self.expect_byte(b' ', "a space")
    }

    fn expect_byte(&mut self, b: u8, expected: &'static str) -> Result<(), ParseError> {
        match self.peek() {
            Some(c) if c == b => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(ParseError::Unexpected {
                at: self.pos,
                expected,
            }),
            None => Err(self.end_error(expected)),
        }
    }

    fn end_error(&self, expected: &'static str) -> ParseError {
        if self.at_end() {
            ParseError::UnexpectedEnd { expected }
        } else {
            ParseError::Unexpected {
                at: self.pos,
                expected,
            }
        }
    }

    /// An IMAP `getword`: bytes up to whitespace, `(`, `)` or `"`
    /// (command words, SASL mechanisms). `None` if there is none.
    pub fn word(&mut self) -> Option<&'m [u8]> {
        let (rest, w) = command_word(self.window()).ok()?;
        let _ = rest;
        self.pos += w.len();
        Some(w)
    }

    /// Consumes the rest of the current line (status texts).
    pub fn take_rest_of_line(&mut self) -> &'m [u8] {
        let w = self.window();
        self.pos += w.len();
        w
    }

    /// Fails unless the message is fully consumed.
    pub fn expect_end(&self) -> Result<(), ParseError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(ParseError::Trailing { at: self.pos })
        }
    }

    /// An astring (atom, quoted or literal), as used for keys.
    pub fn astring(&mut self) -> Result<Bytes, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            Some(_) => {
                let at = self.pos;
                let (_, a) = atom_token(self.window()).map_err(|_| ParseError::Unexpected {
                    at,
                    expected: "an atom",
                })?;
                self.pos += a.len();
                self.check_not_into_literal(at)?;
                Ok(self.share(a))
            }
            None => Err(self.end_error("a string")),
        }
    }

    /// An item: `key *WSP value` up to the end of the message.
    pub fn item(&mut self) -> Result<Item, ParseError> {
        let key = self.astring()?;
        self.skip_wsp();
        let value = self.value(0)?;
        self.expect_end()?;
        Ok(Item { key, value })
    }

    /// One value.
    pub fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > DEPTH_MAX {
            return Err(ParseError::TooDeep);
        }
        let at = self.pos;
        match self.peek() {
            None => Err(self.end_error("a value")),
            Some(b'(') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_wsp();
                    match self.peek() {
                        Some(b')') => {
                            self.pos += 1;
                            return Ok(Value::List(items));
                        }
                        None => return Err(self.end_error("a value or ')'")),
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(b'%') => match self.window().get(1) {
                Some(b'(') => {
                    self.pos += 2;
                    let mut kv = KvList::new();
                    loop {
                        self.skip_wsp();
                        match self.peek() {
                            Some(b')') => {
                                self.pos += 1;
                                return Ok(Value::KvList(kv));
                            }
                            None => return Err(self.end_error("a key or ')'")),
                            Some(_) => {
                                let k = self.astring()?;
                                self.skip_wsp();
                                let v = self.value(depth + 1)?;
                                kv.0.push((k, v));
                            }
                        }
                    }
                }
                Some(b'{') => self.file_literal(),
                _ => Err(ParseError::Unexpected {
                    at,
                    expected: "'(' or '{' after '%'",
                }),
            },
            Some(b'{') => Ok(Value::Literal(self.literal()?)),
            Some(b'"') => Ok(Value::Quoted(self.quoted()?)),
            Some(b'\\') => {
                let w = self.window();
                let n = 1 + w[1..]
                    .iter()
                    .take_while(|&&b| is_liberal_atom_char(b))
                    .count();
                self.pos += n;
                self.check_not_into_literal(at)?;
                Ok(Value::Flag(self.share(&w[..n])))
            }
            Some(_) => {
                let (_, a) = atom_token(self.window()).map_err(|_| ParseError::Unexpected {
                    at,
                    expected: "a value",
                })?;
                self.pos += a.len();
                self.check_not_into_literal(at)?;
                if a == b"NIL" {
                    Ok(Value::Nil)
                } else {
                    Ok(Value::Atom(self.share(a)))
                }
            }
        }
    }

    /// `part` (a slice of the message text) as shared bytes, without
    /// copying: decoded values keep the message text alive, so a consumer
    /// that stores a small value for long should copy it.
    fn share(&self, part: &[u8]) -> Bytes {
        self.msg.text_bytes().slice_ref(part)
    }

    /// A token that ran up to a literal boundary swallowed an announcement
    /// the framer took as a literal: refuse rather than misread the body.
    fn check_not_into_literal(&self, at: usize) -> Result<(), ParseError> {
        match self.msg.literals().get(self.next_lit) {
            Some(l) if l.text_offset == self.pos => Err(ParseError::UnframedLiteral { at }),
            _ => Ok(()),
        }
    }

    fn quoted(&mut self) -> Result<Bytes, ParseError> {
        let w = self.window();
        debug_assert_eq!(w.first(), Some(&b'"'));
        // Without escapes (always, from Cyrus) the content is a slice of
        // the message; with them it is rebuilt.
        if let Some(end) = w[1..].iter().position(|&b| b == b'"' || b == b'\\') {
            if w[1 + end] == b'"' {
                self.pos += end + 2;
                return Ok(self.share(&w[1..1 + end]));
            }
        }
        let mut out = Vec::new();
        let mut i = 1;
        while i < w.len() {
            match w[i] {
                b'"' => {
                    self.pos += i + 1;
                    return Ok(Bytes::from(out));
                }
                b'\\' if i + 1 < w.len() => {
                    out.push(w[i + 1]);
                    i += 2;
                }
                b'\\' => break,
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        // Ran into a line end (a literal boundary) or the end of the message.
        Err(self.end_error_at(self.pos + w.len(), "a closing '\"'"))
    }

    fn end_error_at(&self, at: usize, expected: &'static str) -> ParseError {
        if at >= self.msg.text().len() {
            ParseError::UnexpectedEnd { expected }
        } else {
            ParseError::Unexpected { at, expected }
        }
    }

    /// `{n}` / `{n+}` at the end of a line: the inline body.
    fn literal(&mut self) -> Result<Bytes, ParseError> {
        let at = self.pos;
        let w = self.window();
        let inner = &w[1..];
        let (rest, n) = number(inner).map_err(|_| ParseError::Unexpected {
            at,
            expected: "a literal length",
        })?;
        let rest = rest.strip_prefix(b"+").unwrap_or(rest);
        if rest != b"}" {
            // The announcement must end the line, else the framer did not
            // take the bytes after it as a literal.
            return Err(ParseError::UnframedLiteral { at });
        }
        let end = at + w.len();
        let lit = self.take_literal(end, at)?;
        if !matches!(lit.header.kind, LiteralKind::Sync | LiteralKind::NonSync)
            || lit.header.len != n
        {
            return Err(ParseError::UnframedLiteral { at });
        }
        lit.body.clone().ok_or(ParseError::StreamedLiteral { at })
    }

    fn take_literal(
        &mut self,
        end: usize,
        at: usize,
    ) -> Result<&'m crate::frame::Literal, ParseError> {
        let lit = self
            .msg
            .literals()
            .get(self.next_lit)
            .filter(|l| l.text_offset == end)
            .ok_or(ParseError::UnframedLiteral { at })?;
        self.pos = end;
        self.next_lit += 1;
        Ok(lit)
    }

    /// `%{partition guid size}` at the end of a line.
    fn file_literal(&mut self) -> Result<Value, ParseError> {
        let at = self.pos;
        let w = self.window();
        let end = at + w.len();
        let lit = self.take_literal(end, at)?;
        let LiteralKind::File { partition, guid } = &lit.header.kind else {
            return Err(ParseError::UnframedLiteral { at });
        };
        let guid = Guid::parse(guid).map_err(|_| ParseError::BadGuid { at })?;
        if !(super::is_cyrus_atom(partition) || super::is_cyrus_quotable(partition)) {
            return Err(ParseError::BadPartition { at });
        }
        Ok(Value::File(FileRef {
            partition: partition.clone(),
            guid,
            size: lit.header.len,
        }))
    }
}

/// Parses a whole item (`KEY value`) starting at text offset `start` and
/// running to the end of the message.
pub fn parse_item(msg: &Message, start: usize) -> Result<Item, ParseError> {
    Cursor::new(msg, start).item()
}

/// Parses one value starting at `start` and running to the end of the
/// message.
pub fn parse_value(msg: &Message, start: usize) -> Result<Value, ParseError> {
    let mut c = Cursor::new(msg, start);
    let v = c.value(0)?;
    c.expect_end()?;
    Ok(v)
}
