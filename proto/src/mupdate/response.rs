//! Server lines: banner, tagged data, status replies, continuations and
//! SASL challenges — decoded and re-encoded byte for byte.

use bytes::Bytes;

use super::string::{Cursor, ReadError};
use super::Str;
use crate::frame::Message;

/// Status reply kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Status {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
    /// `BYE`
    Bye,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
            Status::Bye => "BYE",
        }
    }

    fn from_word(w: &[u8]) -> Option<Status> {
        [Status::Ok, Status::No, Status::Bad, Status::Bye]
            .into_iter()
            .find(|s| s.as_str().as_bytes().eq_ignore_ascii_case(w))
    }
}

/// The human text after a status word.
///
/// Cyrus quotes it for every normal reply (and its clients *require* the
/// quotes: `mupdate_scarf` reads it as a string) but sends STARTTLS,
/// COMPRESS and SASL-cancel replies bare (`OK DEFLATE active`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Text {
    /// A string (quoted or literal).
    Str(Str),
    /// The rest of the line, unquoted.
    Bare(Bytes),
}

impl Text {
    /// A quoted text (the normal case). Panics on NUL/CR/LF: our texts are
    /// constants.
    pub fn quoted(s: &str) -> Text {
        Text::Str(
            Str::with_form(Bytes::copy_from_slice(s.as_bytes()), super::Form::Quoted)
                .expect("constant text"),
        )
    }

    /// The text's bytes, without quoting.
    pub fn value(&self) -> &[u8] {
        match self {
            Text::Str(s) => s.value(),
            Text::Bare(b) => b,
        }
    }
}

/// A server line (one framed message).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response {
    /// `* AUTH ["mech"…]`: SASL mechanisms offered (quoted strings in Cyrus;
    /// none: a bare `* AUTH`).
    Auth(Vec<Str>),
    /// `* STARTTLS`: TLS offered.
    Starttls,
    /// `* COMPRESS "DEFLATE"…`: compression algorithms offered.
    Compress(Vec<Str>),
    /// `* PARTIAL-UPDATE`: UPDATE takes host arguments.
    PartialUpdate,
    /// `* OK MUPDATE "server" "implementation" "version" "(master)"`: the
    /// last banner line; the fourth string is `(master)` or, on a slave,
    /// `mupdate://<master>`.
    Ready {
        /// The server's name (`servername`).
        server: Str,
        /// Implementation (`Cyrus IMAP`).
        implementation: Str,
        /// Version string.
        version: Str,
        /// `(master)` or the upstream URL.
        source: Str,
    },
    /// `tag MAILBOX name location acl`: an active entry.
    Mailbox {
        /// The command's tag (UPDATE's tag for pushes).
        tag: Bytes,
        /// Mailbox name.
        name: Str,
        /// Location.
        location: Str,
        /// ACL.
        acl: Str,
    },
    /// `tag RESERVE name location`: a reserved entry.
    Reserve {
        /// Tag.
        tag: Bytes,
        /// Mailbox name.
        name: Str,
        /// Location.
        location: Str,
    },
    /// `tag DELETE name`: the name is gone (UPDATE pushes).
    Delete {
        /// Tag.
        tag: Bytes,
        /// Mailbox name.
        name: Str,
    },
    /// `tag OK|NO|BAD|BYE [text]` (tag may be `*`).
    Reply(Reply),
    /// `+ text`: continuation for a synchronising literal.
    Continuation(Bytes),
    /// A line without SP (possibly empty): a SASL challenge, base64, which
    /// Cyrus sends with no `+ ` prefix.
    Challenge(Bytes),
}

/// A status reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The tag, `*` for untagged.
    pub tag: Bytes,
    /// OK/NO/BAD/BYE.
    pub status: Status,
    /// The text, if any followed the status word.
    pub text: Option<Text>,
}

impl Reply {
    /// `tag status "text"` with quoted text.
    pub fn quoted(tag: impl Into<Bytes>, status: Status, text: &str) -> Reply {
        Reply {
            tag: tag.into(),
            status,
            text: Some(Text::quoted(text)),
        }
    }
}

/// Why a server line could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// Peer's: a data response with a missing, extra or non-string field.
    #[error("malformed {0} response")]
    Malformed(&'static str),
    /// Peer's: a response word MUPDATE does not define.
    #[error("unknown response word")]
    Unknown,
}

fn strings(cur: &mut Cursor<'_>, n: usize, what: &'static str) -> Result<Vec<Str>, ResponseError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if !cur.eat_sp() {
            return Err(ResponseError::Malformed(what));
        }
        out.push(
            cur.string()
                .map_err(|_: ReadError| ResponseError::Malformed(what))?,
        );
    }
    if !cur.at_end() {
        return Err(ResponseError::Malformed(what));
    }
    Ok(out)
}

fn string_list(cur: &mut Cursor<'_>, what: &'static str) -> Result<Vec<Str>, ResponseError> {
    let mut out = Vec::new();
    while cur.eat_sp() {
        out.push(cur.string().map_err(|_| ResponseError::Malformed(what))?);
    }
    if !cur.at_end() {
        return Err(ResponseError::Malformed(what));
    }
    Ok(out)
}

/// Decodes one server line.
pub fn parse_response(msg: &Message) -> Result<Response, ResponseError> {
    let text = msg.text();
    if !text.contains(&b' ') && msg.literals().is_empty() {
        if text == b"+" {
            return Ok(Response::Continuation(Bytes::new()));
        }
        return Ok(Response::Challenge(msg.text_bytes().clone()));
    }
    let mut cur = Cursor::new(msg, 0);
    let tag = msg.text_bytes().slice_ref(cur.word());
    if &tag[..] == b"+" {
        cur.eat_sp();
        return Ok(Response::Continuation(
            msg.text_bytes().slice_ref(cur.rest()),
        ));
    }
    if !cur.eat_sp() {
        return Err(ResponseError::Unknown);
    }
    let word = cur.word();
    let untagged = &tag[..] == b"*";
    if untagged {
        if word == b"AUTH" {
            return Ok(Response::Auth(string_list(&mut cur, "AUTH")?));
        }
        if word == b"STARTTLS" && cur.at_end() {
            return Ok(Response::Starttls);
        }
        if word == b"COMPRESS" {
            return Ok(Response::Compress(string_list(&mut cur, "COMPRESS")?));
        }
        if word == b"PARTIAL-UPDATE" && cur.at_end() {
            return Ok(Response::PartialUpdate);
        }
        if word == b"OK" && text[cur.pos..].starts_with(b" MUPDATE ") {
            cur.eat_sp();
            cur.word();
            let mut s = strings(&mut cur, 4, "banner")?.into_iter();
            return Ok(Response::Ready {
                server: s.next().expect("4"),
                implementation: s.next().expect("4"),
                version: s.next().expect("4"),
                source: s.next().expect("4"),
            });
        }
    }
    if let Some(status) = Status::from_word(word) {
        let text = if cur.eat_sp() {
            let save = cur.pos;
            match cur.string() {
                Ok(s) if cur.at_end() => Some(Text::Str(s)),
                _ => {
                    cur.pos = save;
                    Some(Text::Bare(msg.text_bytes().slice_ref(cur.rest())))
                }
            }
        } else if cur.at_end() {
            None
        } else {
            return Err(ResponseError::Unknown);
        };
        return Ok(Response::Reply(Reply { tag, status, text }));
    }
    match word {
        b"MAILBOX" => {
            let mut s = strings(&mut cur, 3, "MAILBOX")?.into_iter();
            Ok(Response::Mailbox {
                tag,
                name: s.next().expect("3"),
                location: s.next().expect("3"),
                acl: s.next().expect("3"),
            })
        }
        b"RESERVE" => {
            let mut s = strings(&mut cur, 2, "RESERVE")?.into_iter();
            Ok(Response::Reserve {
                tag,
                name: s.next().expect("2"),
                location: s.next().expect("2"),
            })
        }
        b"DELETE" => {
            let mut s = strings(&mut cur, 1, "DELETE")?.into_iter();
            Ok(Response::Delete {
                tag,
                name: s.next().expect("1"),
            })
        }
        _ => Err(ResponseError::Unknown),
    }
}

fn put_strs(out: &mut Vec<u8>, strs: &[&Str]) {
    for s in strs {
        out.push(b' ');
        s.encode(out);
    }
}

impl Response {
    /// Appends the line with its CRLF.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Response::Auth(mechs) => {
                out.extend_from_slice(b"* AUTH");
                put_strs(out, &mechs.iter().collect::<Vec<_>>());
            }
            Response::Starttls => out.extend_from_slice(b"* STARTTLS"),
            Response::Compress(algs) => {
                out.extend_from_slice(b"* COMPRESS");
                put_strs(out, &algs.iter().collect::<Vec<_>>());
            }
            Response::PartialUpdate => out.extend_from_slice(b"* PARTIAL-UPDATE"),
            Response::Ready {
                server,
                implementation,
                version,
                source,
            } => {
                out.extend_from_slice(b"* OK MUPDATE");
                put_strs(out, &[server, implementation, version, source]);
            }
            Response::Mailbox {
                tag,
                name,
                location,
                acl,
            } => {
                out.extend_from_slice(tag);
                out.extend_from_slice(b" MAILBOX");
                put_strs(out, &[name, location, acl]);
            }
            Response::Reserve {
                tag,
                name,
                location,
            } => {
                out.extend_from_slice(tag);
                out.extend_from_slice(b" RESERVE");
                put_strs(out, &[name, location]);
            }
            Response::Delete { tag, name } => {
                out.extend_from_slice(tag);
                out.extend_from_slice(b" DELETE");
                put_strs(out, &[name]);
            }
            Response::Reply(r) => {
                out.extend_from_slice(&r.tag);
                out.push(b' ');
                out.extend_from_slice(r.status.as_str().as_bytes());
                match &r.text {
                    None => {}
                    Some(Text::Str(s)) => put_strs(out, &[s]),
                    Some(Text::Bare(b)) => {
                        out.push(b' ');
                        out.extend_from_slice(b);
                    }
                }
            }
            Response::Continuation(text) => {
                out.push(b'+');
                if !text.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(text);
                }
            }
            Response::Challenge(b) => out.extend_from_slice(b),
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The line with its CRLF.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }
}
