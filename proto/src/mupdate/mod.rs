//! MUPDATE (RFC 3656) as Cyrus IMAP 3.6 speaks it: commands, responses and
//! the banner, decoded from complete [`crate::frame`] messages and encoded
//! back to bytes.
//!
//! What it does:
//! * [`Command`]s (client → server): `parse_head` finds the tag and the
//!   command word (so a server can refuse by state before it looks at the
//!   arguments, as Cyrus does), [`parse_command`] reads the arguments with
//!   Cyrus's exact refusal classes ([`CommandErrorKind`]: "Need command",
//!   "Null command", "Unrecognized command", "Missing arguments", "Extra
//!   arguments", "Badly formed arguments"). [`Command::encode`] writes them
//!   the way Cyrus clients do (every string a `{n+}` literal) or quoted.
//! * [`Response`]s (server → client): banner lines, tagged data
//!   (`MAILBOX`/`RESERVE`/`DELETE`), `OK/NO/BAD/BYE` with quoted, literal or
//!   bare text, `+` continuations and bare SASL challenge lines.
//!   [`parse_response`] then [`Response::encode`] reproduces every server
//!   line of the real Cyrus transcripts byte for byte, because each
//!   [`Str`] remembers the form it travelled in.
//!
//! What it never does: frame bytes (that is [`crate::frame`], which also
//! bounds every size), decide anything about state (the engine's master and
//! slave machines do), or interpret locations and ACLs (opaque strings).
//!
//! Grammar (RFC 3656 §5 as Cyrus accepts and sends it; see
//! `research/mupdate.md` §2):
//! ```text
//! command  = tag SP word [SP string *(SP string)]        ; strings only, never atoms
//! tag      = 1*(any byte but SP)                         ; Cyrus takes "*", "+1", "T.3"
//! string   = quoted / "{" number ["+"] "}" CRLF *OCTET
//! response = tag SP ("OK"/"NO"/"BAD"/"BYE") [SP text]
//!          / tag SP "MAILBOX" 3(SP string) / tag SP "RESERVE" 2(SP string)
//!          / tag SP "DELETE" SP string
//! banner   = *("*" SP capability) "*" SP "OK" SP "MUPDATE" 4(SP string)
//! ```

mod command;
mod response;
mod string;

pub use command::{
    parse_command, parse_head, Command, CommandError, CommandErrorKind, Head, Verb,
    UPDATE_HOSTS_MAX,
};
pub use response::{parse_response, Reply, Response, ResponseError, Status, Text};
pub use string::{Form, Str, StrError};

use crate::frame;

/// Framer options for a MUPDATE server reading its client: `{n}` gets a
/// continuation, 128 KiB literals (Cyrus's `maxliteral`), lines up to
/// 512 KiB. Cyrus exits on bigger input; the framer refuses the message and
/// the session goes on.
pub fn server_frame_options() -> frame::Options {
    frame::Options::default()
}

/// Framer options for a MUPDATE client reading a server: every literal
/// follows at once (servers never wait for continuations), everything
/// inline. A LIST or UPDATE dump is many messages, so per-message limits
/// stay small.
pub fn client_frame_options() -> frame::Options {
    frame::Options {
        sync_literals: frame::SyncLiterals::FollowImmediately,
        ..frame::Options::default()
    }
}
