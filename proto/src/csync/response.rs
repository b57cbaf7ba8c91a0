//! Server → client lines of the csync flavour: banner, untagged data,
//! status lines with the `IMAP_*` codes, SASL challenges, BYE and fatal
//! errors — typed, and printed exactly as Cyrus 3.6.1 prints them.

use bytes::{BufMut, Bytes, BytesMut};

use super::SaslData;
use crate::dlist::{Encoded, Encoder, Item, LiteralStyle};

/// The machine-readable error code Cyrus puts first after `NO`/`BAD`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// `IMAP_INVALID_USER No Such User`
    InvalidUser,
    /// `IMAP_MAILBOX_NONEXISTENT No Such Mailbox`
    MailboxNonexistent,
    /// `IMAP_MAILBOX_LOCKED Mailbox locked`
    MailboxLocked,
    /// `IMAP_MAILBOX_MOVED Mailbox exists with another name or uniqueid`
    MailboxMoved,
    /// `IMAP_MAILBOX_NOTSUPPORTED Operation is not supported on mailbox`
    MailboxNotSupported,
    /// `IMAP_SYNC_CHECKSUM Checksum Failure`
    SyncChecksum,
    /// `IMAP_SYNC_CHANGED Changed since last sync`
    SyncChanged,
    /// `IMAP_SYNC_BADSIEVE Sieve script compilation failure`
    SyncBadSieve,
    /// `IMAP_PROTOCOL_ERROR Protocol error` (also the word in the
    /// `BAD IMAP_PROTOCOL_ERROR …` lines of the command loop)
    ProtocolError,
    /// `IMAP_PROTOCOL_BAD_PARAMETERS` — 3.6.1 sends **no** text after it.
    ProtocolBadParameters,
    /// `IMAP_PERMISSION_DENIED Permission denied` (HEAD only).
    PermissionDenied,
    /// `IMAP_MAILBOX_CRC Checksum Failure` (2.4's name for SyncChecksum).
    MailboxCrc,
    /// Another `IMAP_*` word, kept as sent.
    Other(Bytes),
}

impl Code {
    const TABLE: &'static [(Code, &'static str, Option<&'static str>)] = &[
        (Code::InvalidUser, "IMAP_INVALID_USER", Some("No Such User")),
        (
            Code::MailboxNonexistent,
            "IMAP_MAILBOX_NONEXISTENT",
            Some("No Such Mailbox"),
        ),
        (
            Code::MailboxLocked,
            "IMAP_MAILBOX_LOCKED",
            Some("Mailbox locked"),
        ),
        (
            Code::MailboxMoved,
            "IMAP_MAILBOX_MOVED",
            Some("Mailbox exists with another name or uniqueid"),
        ),
        (
            Code::MailboxNotSupported,
            "IMAP_MAILBOX_NOTSUPPORTED",
            Some("Operation is not supported on mailbox"),
        ),
        (
            Code::SyncChecksum,
            "IMAP_SYNC_CHECKSUM",
            Some("Checksum Failure"),
        ),
        (
            Code::SyncChanged,
            "IMAP_SYNC_CHANGED",
            Some("Changed since last sync"),
        ),
        (
            Code::SyncBadSieve,
            "IMAP_SYNC_BADSIEVE",
            Some("Sieve script compilation failure"),
        ),
        (
            Code::ProtocolError,
            "IMAP_PROTOCOL_ERROR",
            Some("Protocol error"),
        ),
        (
            Code::ProtocolBadParameters,
            "IMAP_PROTOCOL_BAD_PARAMETERS",
            None,
        ),
        (
            Code::PermissionDenied,
            "IMAP_PERMISSION_DENIED",
            Some("Permission denied"),
        ),
        (
            Code::MailboxCrc,
            "IMAP_MAILBOX_CRC",
            Some("Checksum Failure"),
        ),
    ];

    /// The wire word (`IMAP_SYNC_CHECKSUM`).
    pub fn name(&self) -> &[u8] {
        match self {
            Code::Other(b) => b,
            c => Self::TABLE
                .iter()
                .find(|(k, _, _)| k == c)
                .map(|(_, n, _)| n.as_bytes())
                .unwrap_or_default(),
        }
    }

    /// The text 3.6.1's `sync_response` prints after the word (`None` for
    /// `IMAP_PROTOCOL_BAD_PARAMETERS`, which has none).
    pub fn cyrus_text(&self) -> Option<&'static str> {
        Self::TABLE
            .iter()
            .find(|(k, _, _)| k == self)
            .and_then(|(_, _, t)| *t)
    }

    /// Recognises a code word: a known one, or any word starting `IMAP_`.
    pub fn from_word(w: &[u8]) -> Option<Code> {
        if let Some((c, _, _)) = Self::TABLE.iter().find(|(_, n, _)| n.as_bytes() == w) {
            return Some(c.clone());
        }
        (w.starts_with(b"IMAP_") && w.len() > 5).then(|| Code::Other(Bytes::copy_from_slice(w)))
    }
}

/// `OK`, `NO` or `BAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusKind {
    /// `OK`
    Ok,
    /// `NO`
    No,
    /// `BAD`
    Bad,
}

impl StatusKind {
    fn word(self) -> &'static [u8] {
        match self {
            StatusKind::Ok => b"OK",
            StatusKind::No => b"NO",
            StatusKind::Bad => b"BAD",
        }
    }
}

/// A status line: `KIND [CODE] [text]`. The text is kept as sent (after
/// the code), so any status re-encodes byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Status {
    /// OK / NO / BAD.
    pub kind: StatusKind,
    /// The `IMAP_*` word, if the text starts with one.
    pub code: Option<Code>,
    /// The rest of the line (may be empty).
    pub text: Bytes,
}

/// Exact 3.6.1 status texts the server uses outside `sync_response`.
pub mod texts {
    /// `OK success` (sync_server; backupd says `Success`).
    pub const SUCCESS: &str = "success";
    /// backupd's `OK Success`.
    pub const BACKUPD_SUCCESS: &str = "Success";
    /// `OK Finished` (EXIT).
    pub const FINISHED: &str = "Finished";
    /// `OK Noop completed`.
    pub const NOOP_COMPLETED: &str = "Noop completed";
    /// `OK Restarting`.
    pub const RESTARTING: &str = "Restarting";
    /// `OK DEFLATE active`.
    pub const DEFLATE_ACTIVE: &str = "DEFLATE active";
    /// `OK Begin TLS negotiation now`.
    pub const BEGIN_TLS: &str = "Begin TLS negotiation now";
    /// `NO Please authenticate first`.
    pub const AUTHENTICATE_FIRST: &str = "Please authenticate first";
    /// `NO Permission denied` (non-admin, every command).
    pub const PERMISSION_DENIED: &str = "Permission denied";
    /// `BAD Already authenticated`.
    pub const ALREADY_AUTHENTICATED: &str = "Already authenticated";
    /// `BAD Client canceled authentication`.
    pub const CLIENT_CANCELED: &str = "Client canceled authentication";
    /// `NO Error authenticating`.
    pub const ERROR_AUTHENTICATING: &str = "Error authenticating";
    /// `NO Unknown error`.
    pub const UNKNOWN_ERROR: &str = "Unknown error";
    /// `BYE shutting down`.
    pub const SHUTTING_DOWN: &str = "shutting down";
}

impl Status {
    /// `kind text` without a code.
    pub fn new(kind: StatusKind, text: impl Into<Bytes>) -> Self {
        Status {
            kind,
            code: None,
            text: text.into(),
        }
    }

    /// `OK text`.
    pub fn ok(text: impl Into<Bytes>) -> Self {
        Status::new(StatusKind::Ok, text)
    }

    /// `NO text`.
    pub fn no(text: impl Into<Bytes>) -> Self {
        Status::new(StatusKind::No, text)
    }

    /// `BAD text`.
    pub fn bad(text: impl Into<Bytes>) -> Self {
        Status::new(StatusKind::Bad, text)
    }

    /// `OK success`, sync_server's answer to a good APPLY/GET/RESTORE.
    pub fn success() -> Self {
        Status::ok(texts::SUCCESS)
    }

    /// `NO <CODE> <3.6.1 text>` exactly as `sync_response` prints it.
    pub fn no_code(code: Code) -> Self {
        let text = code
            .cyrus_text()
            .map(|t| Bytes::from_static(t.as_bytes()))
            .unwrap_or_default();
        Status {
            kind: StatusKind::No,
            code: Some(code),
            text,
        }
    }

    /// `BAD IMAP_PROTOCOL_ERROR <text>` (command loop errors).
    pub fn bad_protocol(text: impl Into<Bytes>) -> Self {
        Status {
            kind: StatusKind::Bad,
            code: Some(Code::ProtocolError),
            text: text.into(),
        }
    }

    /// `OK Success (<ssf text>)` after AUTHENTICATE, e.g. `no protection`.
    pub fn auth_success(ssf_text: &str) -> Self {
        Status::ok(Bytes::from(format!("Success ({ssf_text})")))
    }

    /// Parses the words after the status word.
    pub(crate) fn from_rest(kind: StatusKind, rest: &[u8]) -> Self {
        let word_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if let Some(code) = Code::from_word(&rest[..word_len]) {
            let text = rest.get(word_len + 1..).unwrap_or_default();
            // `NO IMAP_X` and `NO IMAP_X ` differ on the wire; keep the
            // second's empty text distinguishable by not parsing a code.
            if word_len < rest.len() && text.is_empty() {
                return Status::new(kind, Bytes::copy_from_slice(rest));
            }
            return Status {
                kind,
                code: Some(code),
                text: Bytes::copy_from_slice(text),
            };
        }
        Status::new(kind, Bytes::copy_from_slice(rest))
    }

    /// `KIND[ CODE][ text]` without CRLF.
    pub fn write(&self, out: &mut BytesMut) {
        out.put_slice(self.kind.word());
        if let Some(code) = &self.code {
            out.put_u8(b' ');
            out.put_slice(code.name());
        }
        if !self.text.is_empty() {
            out.put_u8(b' ');
            out.put_slice(&self.text);
        }
    }
}

/// A banner capability line `* NAME params…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// `* SASL <mech> <mech> …`
    Sasl(Vec<Bytes>),
    /// `* STARTTLS`
    StartTls,
    /// `* COMPRESS DEFLATE`
    Compress(Vec<Bytes>),
    /// `* SIEVE-MAILBOX` (3.6+)
    SieveMailbox,
    /// `* REPLICATION-ARCHIVE` (3.8+)
    ReplicationArchive,
    /// Any other line (clients ignore them), kept as sent.
    Other {
        /// The word after `* `.
        name: Bytes,
        /// Following words.
        params: Vec<Bytes>,
    },
}

impl Capability {
    fn parse(words: Vec<Bytes>) -> Capability {
        let mut it = words.into_iter();
        let name = it.next().unwrap_or_default();
        let params: Vec<Bytes> = it.collect();
        let upper = name.to_ascii_uppercase();
        match (&upper[..], params.is_empty()) {
            (b"SASL", _) => Capability::Sasl(params),
            (b"STARTTLS", true) => Capability::StartTls,
            (b"COMPRESS", _) => Capability::Compress(params),
            (b"SIEVE-MAILBOX", true) => Capability::SieveMailbox,
            (b"REPLICATION-ARCHIVE", true) => Capability::ReplicationArchive,
            _ => Capability::Other { name, params },
        }
    }

    fn write(&self, out: &mut BytesMut) {
        let (name, params): (&[u8], &[Bytes]) = match self {
            Capability::Sasl(m) => (b"SASL", m),
            Capability::StartTls => (b"STARTTLS", &[]),
            Capability::Compress(a) => (b"COMPRESS", a),
            Capability::SieveMailbox => (b"SIEVE-MAILBOX", &[]),
            Capability::ReplicationArchive => (b"REPLICATION-ARCHIVE", &[]),
            Capability::Other { name, params } => (name, params),
        };
        out.put_slice(b"* ");
        out.put_slice(name);
        for p in params {
            out.put_u8(b' ');
            out.put_slice(p);
        }
    }
}

/// The banner's last line, `* OK <text>`; the text is
/// `<servername> Cyrus sync server <version>` (or `… backup server …`).
/// Clients never interpret it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Greeting {
    /// Everything after `* OK `.
    pub text: Bytes,
}

impl Greeting {
    /// `<host> Cyrus sync server <version>` (sync_server's form).
    pub fn sync_server(host: &str, version: &str) -> Self {
        Greeting {
            text: Bytes::from(format!("{host} Cyrus sync server {version}")),
        }
    }

    /// `<host> Cyrus backup server <version>` (backupd's form).
    pub fn backup_server(host: &str, version: &str) -> Self {
        Greeting {
            text: Bytes::from(format!("{host} Cyrus backup server {version}")),
        }
    }

    /// The first word (the server name).
    pub fn host(&self) -> &[u8] {
        self.text.split(|&b| b == b' ').next().unwrap_or_default()
    }
}

/// One server → client line of the csync flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A banner capability line.
    Capability(Capability),
    /// The banner's closing `* OK …`.
    Greeting(Greeting),
    /// Untagged data `* KEY value` (MAILBOX, QUOTA, MISSING, MESSAGE …).
    Data(Item),
    /// `OK` / `NO` / `BAD` status.
    Status(Status),
    /// `+ <base64>` SASL challenge.
    Challenge(SaslData),
    /// `BYE <text>` (3.6+ sync_server on shutdown: `BYE shutting down`).
    Bye(Bytes),
    /// `* Fatal error: <text>`; the server closes after it.
    Fatal(Bytes),
}

impl Response {
    /// The exact line(s), CRLF included. `* MESSAGE %{…}` data leaves the
    /// file body to the driver ([`Encoded::pieces`]); Cyrus ends such a
    /// line with CRLF right after the body.
    pub fn encode(&self) -> Encoded {
        let mut e = Encoder::new(LiteralStyle::NonSync);
        match self {
            Response::Data(item) => {
                e.raw(b"* ").item(item);
            }
            other => {
                let mut out = BytesMut::new();
                match other {
                    Response::Capability(c) => c.write(&mut out),
                    Response::Greeting(g) => {
                        out.put_slice(b"* OK ");
                        out.put_slice(&g.text);
                    }
                    Response::Status(s) => s.write(&mut out),
                    Response::Challenge(d) => {
                        out.put_slice(b"+ ");
                        out.put_slice(d.as_wire());
                    }
                    Response::Bye(t) => {
                        out.put_slice(b"BYE ");
                        out.put_slice(t);
                    }
                    Response::Fatal(t) => {
                        out.put_slice(b"* Fatal error: ");
                        out.put_slice(t);
                    }
                    Response::Data(_) => unreachable!("handled above"),
                }
                e.raw(&out);
            }
        }
        e.crlf();
        e.finish()
    }

    pub(crate) fn parse_capability(rest: &[u8]) -> Response {
        let words = rest
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .map(Bytes::copy_from_slice)
            .collect();
        Response::Capability(Capability::parse(words))
    }
}
