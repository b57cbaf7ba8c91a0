//! Client commands: decoding with Cyrus's refusal classes, and encoding.

use bytes::Bytes;

use super::string::{encode_value, Cursor, ReadError};
use super::{Form, Str};
use crate::frame::Message;

/// Most host arguments `UPDATE` takes (Cyrus: about 30, then "Extra
/// arguments").
pub const UPDATE_HOSTS_MAX: usize = 30;

/// A command word MUPDATE knows (matched case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Verb {
    /// `ACTIVATE name location acl`
    Activate,
    /// `AUTHENTICATE mech [initial-response]`
    Authenticate,
    /// `COMPRESS algorithm` (Cyrus extension)
    Compress,
    /// `DEACTIVATE name location`
    Deactivate,
    /// `DELETE name`
    Delete,
    /// `FIND name`
    Find,
    /// `LIST [location-prefix]`
    List,
    /// `LOGOUT`
    Logout,
    /// `NOOP`
    Noop,
    /// `RESERVE name location`
    Reserve,
    /// `STARTTLS`
    Starttls,
    /// `UPDATE [host…]`
    Update,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 12] = [
        Verb::Activate,
        Verb::Authenticate,
        Verb::Compress,
        Verb::Deactivate,
        Verb::Delete,
        Verb::Find,
        Verb::List,
        Verb::Logout,
        Verb::Noop,
        Verb::Reserve,
        Verb::Starttls,
        Verb::Update,
    ];

    /// The word as Cyrus clients send it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Activate => "ACTIVATE",
            Verb::Authenticate => "AUTHENTICATE",
            Verb::Compress => "COMPRESS",
            Verb::Deactivate => "DEACTIVATE",
            Verb::Delete => "DELETE",
            Verb::Find => "FIND",
            Verb::List => "LIST",
            Verb::Logout => "LOGOUT",
            Verb::Noop => "NOOP",
            Verb::Reserve => "RESERVE",
            Verb::Starttls => "STARTTLS",
            Verb::Update => "UPDATE",
        }
    }

    /// The verb for a command word, ignoring case.
    pub fn from_word(word: &[u8]) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str().as_bytes().eq_ignore_ascii_case(word))
    }

    /// `true` for the commands that change the database.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Activate | Verb::Deactivate | Verb::Delete | Verb::Reserve
        )
    }
}

/// The tag and command word of a command line, read before its arguments
/// so a server can refuse by state first (Cyrus answers "Please login
/// first" without looking at the arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The tag: any bytes up to the first SP.
    pub tag: Bytes,
    /// The command word as sent (never empty).
    pub word: Bytes,
    /// The verb, if the word is one.
    pub verb: Option<Verb>,
    /// Offset in the message text just after the word.
    pub args_at: usize,
}

/// A decoded client command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Start SASL with `mechanism`, optionally with an initial response
    /// (base64 text; `"="` means empty).
    Authenticate {
        /// SASL mechanism name.
        mechanism: Bytes,
        /// Initial response, still base64.
        initial: Option<Bytes>,
    },
    /// Start TLS.
    Starttls,
    /// Start COMPRESS with `algorithm` (Cyrus offers `DEFLATE`).
    Compress {
        /// Algorithm name.
        algorithm: Bytes,
    },
    /// Create or update an active mailbox.
    Activate {
        /// Mailbox name (Cyrus internal form).
        name: Bytes,
        /// `server!partition`, opaque.
        location: Bytes,
        /// ACL string, opaque.
        acl: Bytes,
    },
    /// Demote an active mailbox to reserved at `location`.
    Deactivate {
        /// Mailbox name.
        name: Bytes,
        /// New location.
        location: Bytes,
    },
    /// Reserve a name at a location.
    Reserve {
        /// Mailbox name.
        name: Bytes,
        /// Location.
        location: Bytes,
    },
    /// Remove a name.
    Delete {
        /// Mailbox name.
        name: Bytes,
    },
    /// Look up one name.
    Find {
        /// Mailbox name.
        name: Bytes,
    },
    /// List entries whose location starts with `prefix` (all if `None`).
    List {
        /// Location prefix.
        prefix: Option<Bytes>,
    },
    /// Dump and then stream changes, optionally only for these servers
    /// (PARTIAL-UPDATE).
    Update {
        /// Server names (location parts before `!`).
        hosts: Vec<Bytes>,
    },
    /// Nothing (flushes pending UPDATE pushes).
    Noop,
    /// End the session.
    Logout,
}

/// Why a command line was refused, in Cyrus's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// Peer's: an empty line or a line without SP after the tag.
    #[error("Need command")]
    NeedCommand,
    /// Peer's: an empty command word (two spaces after the tag).
    #[error("Null command")]
    NullCommand,
    /// Peer's: a word that is no MUPDATE command.
    #[error("Unrecognized command")]
    Unrecognized,
    /// Peer's: fewer arguments than the command takes.
    #[error("Missing arguments")]
    MissingArguments,
    /// Peer's: more arguments than the command takes, or an argument that is
    /// not a string (an atom, a malformed literal, a NUL).
    #[error("Extra arguments")]
    ExtraArguments,
    /// Peer's: an empty host name in `UPDATE`.
    #[error("Badly formed arguments")]
    BadlyFormed,
}

/// A refused command line: the tag to answer with (`None`: answer `*`) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct CommandError {
    /// The tag, if the line had one.
    pub tag: Option<Bytes>,
    /// The refusal class; its `Display` is Cyrus's reply text.
    pub kind: CommandErrorKind,
}

/// Reads the tag and command word.
pub fn parse_head(msg: &Message) -> Result<Head, CommandError> {
    let mut cur = Cursor::new(msg, 0);
    let tag = cur.word();
    if tag.is_empty() || !cur.eat_sp() {
        return Err(CommandError {
            tag: None,
            kind: CommandErrorKind::NeedCommand,
        });
    }
    let tag = msg.text_bytes().slice_ref(tag);
    let word = cur.word();
    if word.is_empty() {
        return Err(CommandError {
            tag: Some(tag),
            kind: CommandErrorKind::NullCommand,
        });
    }
    Ok(Head {
        tag,
        word: msg.text_bytes().slice_ref(word),
        verb: Verb::from_word(word),
        args_at: cur.pos,
    })
}

/// Reads `n_min..=n_max` string arguments after the head.
fn args(cur: &mut Cursor<'_>, n_min: usize, n_max: usize) -> Result<Vec<Str>, CommandErrorKind> {
    let mut out = Vec::new();
    loop {
        if cur.at_end() {
            return if out.len() < n_min {
                Err(CommandErrorKind::MissingArguments)
            } else {
                Ok(out)
            };
        }
        if !cur.eat_sp() || out.len() == n_max {
            return Err(CommandErrorKind::ExtraArguments);
        }
        if cur.at_end() {
            return Err(CommandErrorKind::MissingArguments);
        }
        match cur.string() {
            Ok(s) => out.push(s),
            Err(ReadError::NotAString | ReadError::Nul) => {
                return Err(CommandErrorKind::ExtraArguments)
            }
        }
    }
}

/// Decodes a whole command line (tag, word, arguments).
pub fn parse_command(msg: &Message) -> Result<(Bytes, Command), CommandError> {
    let head = parse_head(msg)?;
    let tag = head.tag.clone();
    let fail = |kind| CommandError {
        tag: Some(tag.clone()),
        kind,
    };
    let Some(verb) = head.verb else {
        return Err(fail(CommandErrorKind::Unrecognized));
    };
    let mut cur = Cursor::new(msg, head.args_at);
    let (min, max) = match verb {
        Verb::Activate => (3, 3),
        Verb::Authenticate => (1, 2),
        Verb::Compress => (1, 1),
        Verb::Deactivate | Verb::Reserve => (2, 2),
        Verb::Delete | Verb::Find => (1, 1),
        Verb::List => (0, 1),
        Verb::Logout | Verb::Noop | Verb::Starttls => (0, 0),
        Verb::Update => (0, UPDATE_HOSTS_MAX),
    };
    let mut a = args(&mut cur, min, max)
        .map_err(fail)?
        .into_iter()
        .map(Str::into_value);
    let mut next = || a.next().expect("arity checked");
    let cmd = match verb {
        Verb::Activate => Command::Activate {
            name: next(),
            location: next(),
            acl: next(),
        },
        Verb::Authenticate => {
            let mechanism = next();
            let initial = a.next();
            Command::Authenticate { mechanism, initial }
        }
        Verb::Compress => Command::Compress { algorithm: next() },
        Verb::Deactivate => Command::Deactivate {
            name: next(),
            location: next(),
        },
        Verb::Reserve => Command::Reserve {
            name: next(),
            location: next(),
        },
        Verb::Delete => Command::Delete { name: next() },
        Verb::Find => Command::Find { name: next() },
        Verb::List => Command::List { prefix: a.next() },
        Verb::Logout => Command::Logout,
        Verb::Noop => Command::Noop,
        Verb::Starttls => Command::Starttls,
        Verb::Update => {
            let hosts: Vec<Bytes> = a.collect();
            if hosts.iter().any(|h| h.is_empty()) {
                return Err(fail(CommandErrorKind::BadlyFormed));
            }
            Command::Update { hosts }
        }
    };
    Ok((tag, cmd))
}

impl Command {
    /// The verb.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Authenticate { .. } => Verb::Authenticate,
            Command::Starttls => Verb::Starttls,
            Command::Compress { .. } => Verb::Compress,
            Command::Activate { .. } => Verb::Activate,
            Command::Deactivate { .. } => Verb::Deactivate,
            Command::Reserve { .. } => Verb::Reserve,
            Command::Delete { .. } => Verb::Delete,
            Command::Find { .. } => Verb::Find,
            Command::List { .. } => Verb::List,
            Command::Update { .. } => Verb::Update,
            Command::Noop => Verb::Noop,
            Command::Logout => Verb::Logout,
        }
    }

    /// The string arguments in order.
    pub fn args(&self) -> Vec<&Bytes> {
        match self {
            Command::Authenticate { mechanism, initial } => {
                std::iter::once(mechanism).chain(initial.iter()).collect()
            }
            Command::Compress { algorithm } => vec![algorithm],
            Command::Activate {
                name,
                location,
                acl,
            } => vec![name, location, acl],
            Command::Deactivate { name, location } | Command::Reserve { name, location } => {
                vec![name, location]
            }
            Command::Delete { name } | Command::Find { name } => vec![name],
            Command::List { prefix } => prefix.iter().collect(),
            Command::Update { hosts } => hosts.iter().collect(),
            Command::Starttls | Command::Noop | Command::Logout => Vec::new(),
        }
    }

    /// Encodes `tag SP VERB [SP string…] CRLF`. `form` chooses how strings
    /// travel: [`Form::NonSync`] is what every Cyrus client sends; a value
    /// that cannot be quoted (CR/LF) is always sent as `{n+}`.
    ///
    /// Panics if the tag is empty or holds SP/CR/LF, or an argument holds
    /// NUL: both are caller bugs (no MUPDATE peer could read them).
    pub fn encode(&self, tag: &[u8], form: Form) -> Vec<u8> {
        assert!(
            !tag.is_empty() && !tag.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n')),
            "invalid MUPDATE tag"
        );
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(tag);
        out.push(b' ');
        out.extend_from_slice(self.verb().as_str().as_bytes());
        for arg in self.args() {
            assert!(!arg.contains(&0), "MUPDATE strings cannot hold NUL");
            out.push(b' ');
            let f = if form == Form::Quoted && arg.iter().any(|&b| b == b'\r' || b == b'\n') {
                Form::NonSync
            } else {
                form
            };
            encode_value(arg, f, &mut out);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}
