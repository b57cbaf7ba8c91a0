//! Client → server lines of the csync flavour: the untagged commands and
//! SASL continuation lines, with the command loop's refusals.

use bytes::Bytes;

use super::response::{Code, Status};
use super::SaslData;
use crate::dlist::parse::{Cursor, ParseError};
use crate::dlist::{is_cyrus_atom, Encoded, Encoder, Item, LiteralStyle};
use crate::frame::{Message, RefusalReason};

/// A csync command word (case-insensitive on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `AUTHENTICATE`
    Authenticate,
    /// `STARTTLS`
    StartTls,
    /// `COMPRESS`
    Compress,
    /// `NOOP`
    Noop,
    /// `EXIT`
    Exit,
    /// `RESTART`
    Restart,
    /// `APPLY`
    Apply,
    /// `GET`
    Get,
    /// `RESTORE`
    Restore,
}

impl Verb {
    const ALL: [Verb; 9] = [
        Verb::Authenticate,
        Verb::StartTls,
        Verb::Compress,
        Verb::Noop,
        Verb::Exit,
        Verb::Restart,
        Verb::Apply,
        Verb::Get,
        Verb::Restore,
    ];

    /// The word as clients send it (`APPLY`).
    pub fn wire(self) -> &'static str {
        match self {
            Verb::Authenticate => "AUTHENTICATE",
            Verb::StartTls => "STARTTLS",
            Verb::Compress => "COMPRESS",
            Verb::Noop => "NOOP",
            Verb::Exit => "EXIT",
            Verb::Restart => "RESTART",
            Verb::Apply => "APPLY",
            Verb::Get => "GET",
            Verb::Restore => "RESTORE",
        }
    }

    /// The capitalised form sync_server uses in error texts (`Noop`).
    pub fn cyrus_name(self) -> &'static str {
        match self {
            Verb::Authenticate => "Authenticate",
            Verb::StartTls => "Starttls",
            Verb::Compress => "Compress",
            Verb::Noop => "Noop",
            Verb::Exit => "Exit",
            Verb::Restart => "Restart",
            Verb::Apply => "Apply",
            Verb::Get => "Get",
            Verb::Restore => "Restore",
        }
    }

    /// Case-insensitive lookup.
    pub fn from_word(w: &[u8]) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.wire().as_bytes().eq_ignore_ascii_case(w))
    }

    /// `true` for the commands allowed before authentication.
    pub fn allowed_before_auth(self) -> bool {
        !matches!(self, Verb::Apply | Verb::Get | Verb::Restore)
    }
}

/// A csync command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AUTHENTICATE <mech> [<initial response>]` (`=` is an empty one).
    Authenticate {
        /// SASL mechanism name as sent.
        mechanism: Bytes,
        /// The inline initial response, base64 as sent.
        initial_response: Option<SaslData>,
    },
    /// `STARTTLS`
    StartTls,
    /// `COMPRESS <algorithm>` (`DEFLATE`).
    Compress {
        /// The algorithm word as sent.
        algorithm: Bytes,
    },
    /// `NOOP`
    Noop,
    /// `EXIT`
    Exit,
    /// `RESTART`
    Restart,
    /// `APPLY <KEY value>`; the key is the sub-command (`MAILBOX`, …) as
    /// sent — Cyrus upper-cases it before dispatch.
    Apply(Item),
    /// `GET <KEY value>`
    Get(Item),
    /// `RESTORE <KEY value>`
    Restore(Item),
}

impl Command {
    /// The verb.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Authenticate { .. } => Verb::Authenticate,
            Command::StartTls => Verb::StartTls,
            Command::Compress { .. } => Verb::Compress,
            Command::Noop => Verb::Noop,
            Command::Exit => Verb::Exit,
            Command::Restart => Verb::Restart,
            Command::Apply(_) => Verb::Apply,
            Command::Get(_) => Verb::Get,
            Command::Restore(_) => Verb::Restore,
        }
    }

    /// The exact line sync_client prints (upper-case verb, `{n+}`
    /// literals, CRLF). File bodies are left to the driver.
    pub fn encode(&self) -> Encoded {
        let mut e = Encoder::new(LiteralStyle::NonSync);
        self.write(&mut e);
        e.crlf();
        e.finish()
    }

    /// Writes the command without CRLF (the IMAP flavour prefixes a tag).
    pub(crate) fn write(&self, e: &mut Encoder) {
        e.raw(self.verb().wire().as_bytes());
        match self {
            Command::Authenticate {
                mechanism,
                initial_response,
            } => {
                e.raw(b" ").raw(mechanism);
                if let Some(ir) = initial_response {
                    e.raw(b" ").raw(ir.as_wire());
                }
            }
            Command::Compress { algorithm } => {
                e.raw(b" ").raw(algorithm);
            }
            Command::Apply(item) | Command::Get(item) | Command::Restore(item) => {
                e.raw(b" ").item(item);
            }
            Command::StartTls | Command::Noop | Command::Exit | Command::Restart => {}
        }
    }
}

/// Any line a csync server reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientLine {
    /// A command.
    Command(Command),
    /// A line answering a SASL challenge (base64, possibly empty).
    SaslResponse(SaslData),
    /// `*`: the client cancels the authentication exchange.
    SaslCancel,
}

impl ClientLine {
    /// The exact line, CRLF included.
    pub fn encode(&self) -> Encoded {
        match self {
            ClientLine::Command(c) => c.encode(),
            ClientLine::SaslResponse(d) => {
                let mut e = Encoder::new(LiteralStyle::NonSync);
                e.raw(d.as_wire()).crlf();
                e.finish()
            }
            ClientLine::SaslCancel => {
                let mut e = Encoder::new(LiteralStyle::NonSync);
                e.raw(b"*").crlf();
                e.finish()
            }
        }
    }
}

/// A client line the server refuses. All are the peer's fault; each maps
/// to the line sync_server 3.6.1 answers ([`CommandError::response`]).
///
/// Cyrus checks authentication before parsing APPLY/GET/RESTORE
/// arguments: a machine that is not yet authenticated should answer
/// `NO Please authenticate first` for any refusal whose
/// [`CommandError::verb`] is not [`Verb::allowed_before_auth`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Peer's fault: an empty command word.
    #[error("null command")]
    NullCommand,
    /// Peer's fault: not a csync command word.
    #[error("unrecognized command")]
    Unrecognized {
        /// The first bytes of the word.
        word: Bytes,
    },
    /// Peer's fault: a required argument is missing.
    #[error("missing argument to {0:?}")]
    MissingArgument(Verb),
    /// Peer's fault: arguments after a complete command.
    #[error("extra arguments to {0:?}")]
    ExtraArguments(Verb),
    /// Peer's fault: an AUTHENTICATE mechanism that is not an atom.
    #[error("invalid SASL mechanism")]
    InvalidMechanism,
    /// Peer's fault: the dlist after APPLY/GET/RESTORE does not parse.
    #[error("cannot parse {verb:?} argument: {error}")]
    BadArgument {
        /// Which command.
        verb: Verb,
        /// Why.
        error: ParseError,
    },
    /// Peer's fault: the line broke a framing limit and was skipped whole.
    #[error("line refused by the framer: {reason:?}")]
    Limit {
        /// The command, if its word was readable.
        verb: Option<Verb>,
        /// Which limit.
        reason: RefusalReason,
    },
}

impl CommandError {
    /// The command concerned, if known.
    pub fn verb(&self) -> Option<Verb> {
        match self {
            CommandError::MissingArgument(v) | CommandError::ExtraArguments(v) => Some(*v),
            CommandError::InvalidMechanism => Some(Verb::Authenticate),
            CommandError::BadArgument { verb, .. } => Some(*verb),
            CommandError::Limit { verb, .. } => *verb,
            CommandError::NullCommand | CommandError::Unrecognized { .. } => None,
        }
    }

    /// The status line sync_server 3.6.1 sends for this refusal. (A blown
    /// limit makes Cyrus exit with `* Fatal error`; we answer like a parse
    /// failure and keep the session, which the framer's resync allows.)
    pub fn response(&self) -> Status {
        match self {
            CommandError::NullCommand => Status::bad("Null command"),
            CommandError::Unrecognized { .. } | CommandError::Limit { verb: None, .. } => {
                Status::bad_protocol("Unrecognized command")
            }
            CommandError::MissingArgument(v) => Status::bad(Bytes::from(format!(
                "Missing required argument to {}",
                v.cyrus_name()
            ))),
            CommandError::ExtraArguments(v) => Status::bad(Bytes::from(format!(
                "Unexpected extra arguments to {}",
                v.cyrus_name()
            ))),
            CommandError::InvalidMechanism => Status::bad("Invalid mechanism"),
            CommandError::BadArgument { verb, .. }
            | CommandError::Limit {
                verb: Some(verb), ..
            } => match verb {
                Verb::Apply | Verb::Get | Verb::Restore => Status {
                    kind: super::StatusKind::Bad,
                    code: Some(Code::ProtocolError),
                    text: Bytes::from(format!("Failed to parse {} line", verb.wire())),
                },
                v => Status::bad(Bytes::from(format!(
                    "Unexpected extra arguments to {}",
                    v.cyrus_name()
                ))),
            },
        }
    }
}

/// Decodes one framed client message (not a SASL response).
pub(crate) fn decode_command(msg: &Message) -> Result<Command, CommandError> {
    let mut c = Cursor::new(msg, 0);
    let word = c.word().unwrap_or_default();
    if word.is_empty() {
        return Err(CommandError::NullCommand);
    }
    let Some(verb) = Verb::from_word(word) else {
        return Err(CommandError::Unrecognized {
            word: Bytes::copy_from_slice(&word[..word.len().min(64)]),
        });
    };
    decode_args(verb, &mut c)
}

/// Decodes the arguments of `verb` from the cursor (just after the word).
pub(crate) fn decode_args(verb: Verb, c: &mut Cursor<'_>) -> Result<Command, CommandError> {
    let no_args = |c: &Cursor<'_>, cmd: Command| {
        if c.at_end() {
            Ok(cmd)
        } else {
            Err(CommandError::ExtraArguments(verb))
        }
    };
    match verb {
        Verb::Noop => no_args(c, Command::Noop),
        Verb::Exit => no_args(c, Command::Exit),
        Verb::Restart => no_args(c, Command::Restart),
        Verb::StartTls => no_args(c, Command::StartTls),
        Verb::Authenticate | Verb::Compress => {
            if c.at_end() || c.expect_sp().is_err() {
                return Err(if c.at_end() {
                    CommandError::MissingArgument(verb)
                } else {
                    CommandError::ExtraArguments(verb)
                });
            }
            let first = Bytes::copy_from_slice(c.word().unwrap_or_default());
            if verb == Verb::Compress {
                return no_args(c, Command::Compress { algorithm: first });
            }
            if !is_cyrus_atom(&first) {
                return Err(CommandError::InvalidMechanism);
            }
            let initial_response = if c.at_end() {
                None
            } else {
                c.expect_sp()
                    .map_err(|_| CommandError::ExtraArguments(verb))?;
                Some(SaslData::from_wire(Bytes::copy_from_slice(
                    c.word().unwrap_or_default(),
                )))
            };
            no_args(
                c,
                Command::Authenticate {
                    mechanism: first,
                    initial_response,
                },
            )
        }
        Verb::Apply | Verb::Get | Verb::Restore => {
            let bad = |error| CommandError::BadArgument { verb, error };
            c.expect_sp().map_err(bad)?;
            let item = c.item().map_err(bad)?;
            Ok(match verb {
                Verb::Apply => Command::Apply(item),
                Verb::Get => Command::Get(item),
                _ => Command::Restore(item),
            })
        }
    }
}

/// Decodes a line answering a SASL challenge.
pub(crate) fn decode_sasl_line(msg: &Message) -> Result<ClientLine, CommandError> {
    if !msg.literals().is_empty() {
        return Err(CommandError::BadArgument {
            verb: Verb::Authenticate,
            error: ParseError::Trailing {
                at: msg.literals()[0].text_offset,
            },
        });
    }
    Ok(if msg.text() == b"*" {
        ClientLine::SaslCancel
    } else {
        ClientLine::SaslResponse(SaslData::from_wire(msg.text_bytes().clone()))
    })
}

/// The verb at the start of a refused message's head, if readable.
pub(crate) fn head_verb(head: &[u8]) -> Option<Verb> {
    let end = head
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'(' | b')' | b'"'))
        .unwrap_or(head.len());
    Verb::from_word(&head[..end])
}
