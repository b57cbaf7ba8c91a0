//! The csync (Cyrus replication) command/response layer, both flavours:
//! the dedicated untagged protocol of `sync_server`/`backupd`, and the
//! IMAP-embedded one (`Sn SYNCAPPLY …` on an imapd advertising
//! `X-REPLICATION`, module [`imap`]).
//!
//! What it does: typed commands ([`Command`], [`ClientLine`]) and responses
//! ([`Response`], [`Status`] with the [`Code`] table of 3.6.1), streaming
//! decoders for both directions ([`ServerDecoder`] reads a client,
//! [`ClientDecoder`] reads a server) that hand file literal bodies out in
//! chunks, and encoders that print every line byte for byte as Cyrus 3.6.1
//! does (checked against the lab transcripts in `corpus/traces/csync/`).
//!
//! What it never does: decide anything. Authentication state, which
//! commands are allowed, what to answer, when to switch on COMPRESS or
//! TLS — all that is the engine's machine. The decoders only keep the
//! state needed to read the next line correctly (the banner phase of the
//! client side, a pending SASL response on the server side).
//!
//! Known differences from Cyrus, both refusals of input Cyrus's own
//! client never sends: a command whose dlist is still open at the end of
//! its line (`GET USER` with no argument, an unclosed `%(`) is refused as
//! a parse failure, where sync_server keeps reading the next line
//! (`csync-error-probes.txt`); and a blown framing limit gets the parse
//! failure's BAD instead of Cyrus's `* Fatal error` and exit.
//!
//! Layering: bytes in → (TLS, inflate: not here) → [`crate::frame`] →
//! [`crate::dlist`] on complete messages → these types.

mod command;
mod decoder;
pub mod imap;
mod response;

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;

pub use command::{ClientLine, Command, CommandError, Verb};
pub use decoder::{ClientDecoder, ClientPhase, DecodeError, Event, ResponseError, ServerDecoder};
pub use response::{texts, Capability, Code, Greeting, Response, Status, StatusKind};

use bytes::Bytes;

/// SASL data as it travels: base64 text, kept exactly as sent. An initial
/// response of `=` means "empty" (Cyrus `saslserver`).
///
/// Kept undecoded so the machine, not the codec, decides what a bad
/// encoding means (Cyrus answers `NO <sasl error>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SaslData(Bytes);

/// Base64 that does not decode. Peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64 in SASL data")]
pub struct SaslDataError;

impl SaslData {
    /// Wraps the wire text.
    pub fn from_wire(text: Bytes) -> Self {
        SaslData(text)
    }

    /// Encodes raw SASL bytes: standard base64, or `=` for an empty
    /// initial response when `empty_as_equals` (a challenge or a
    /// continuation answer is just empty instead).
    pub fn encode(raw: &[u8], empty_as_equals: bool) -> Self {
        use base64::Engine as _;
        if raw.is_empty() && empty_as_equals {
            return SaslData(Bytes::from_static(b"="));
        }
        SaslData(Bytes::from(
            base64::engine::general_purpose::STANDARD.encode(raw),
        ))
    }

    /// The text as sent.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// The decoded bytes (`=` decodes to empty).
    pub fn decode(&self) -> Result<Vec<u8>, SaslDataError> {
        use base64::Engine as _;
        if &self.0[..] == b"=" {
            return Ok(Vec::new());
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.0)
            .map_err(|_| SaslDataError)
    }
}
