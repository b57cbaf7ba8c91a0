//! Errors of the dsync stream codec, each saying whose fault it is.

/// Why a [`Decoder`](super::Decoder) refused the peer's stream. Every one
/// closes the stream: after it, the decoder repeats the same error.
/// Values never appear in these messages (they may be mailbox names or
/// message data); item and key names do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The peer's first line is not `VERSION\tdsync\t<major>\t<minor>`.
    #[error("peer's first line is not a dsync VERSION line")]
    BadVersionLine,
    /// The peer speaks a major protocol version other than 3.
    #[error("peer speaks dsync protocol {major}.{minor}, we speak 3.x")]
    UnsupportedVersion {
        /// Peer's major version.
        major: u32,
        /// Peer's minor version.
        minor: u32,
    },
    /// The peer sent an empty line where a record was due.
    #[error("peer sent an empty line")]
    EmptyLine,
    /// The peer sent a line longer than `Options::line_bytes_max`.
    #[error("peer sent a line over the {limit}-byte limit")]
    LineTooLong {
        /// `Options::line_bytes_max`.
        limit: usize,
    },
    /// The peer announced more header lines than `Options::headers_max`.
    #[error("peer announced more than {limit} item headers")]
    TooManyHeaders {
        /// `Options::headers_max`.
        limit: usize,
    },
    /// The peer's header for an item type lacks a key Dovecot requires.
    #[error("peer's {item} header misses required key {key}")]
    HeaderMissingKey {
        /// Item name.
        item: &'static str,
        /// Missing key.
        key: &'static str,
    },
    /// The peer ended its headers without one for an item type its
    /// protocol version has.
    #[error("peer did not announce a header for {item}")]
    MissingHeader {
        /// Item name.
        item: &'static str,
    },
    /// The peer sent a record of a type it announced no header for.
    #[error("peer sent a record of undeclared type {chr:#04x}")]
    UndeclaredItem {
        /// The record's type byte.
        chr: u8,
    },
    /// The peer sent a record type that may only appear nested (`c`).
    #[error("peer sent a top-level record of nested-only type {chr:#04x}")]
    UnexpectedItem {
        /// The record's type byte.
        chr: u8,
    },
    /// The peer sent more values than its header declares keys.
    #[error("peer sent {got} values for {declared} declared keys of type {chr:#04x}")]
    TooManyValues {
        /// The record's type byte.
        chr: u8,
        /// Keys in the peer's header.
        declared: usize,
        /// Values on the line.
        got: usize,
    },
    /// A required field of the peer's record is NULL or missing.
    #[error("peer's {item} record misses required field {key}")]
    MissingField {
        /// Item name.
        item: &'static str,
        /// Key.
        key: &'static str,
    },
    /// A field of the peer's record does not parse (bad number, GUID, enum).
    #[error("peer's {item} record has an invalid {key}")]
    InvalidField {
        /// Item name.
        item: &'static str,
        /// Key.
        key: &'static str,
    },
    /// The peer sent bytes after its `X` (done) line.
    #[error("peer sent data after closing")]
    DataAfterDone,
    /// The stream ended in the middle of a line or a body.
    #[error("peer's stream ended inside {during}")]
    UnexpectedEof {
        /// What was being read.
        during: &'static str,
    },
}

/// Why an [`Encoder`](super::Encoder) refused an event. All of these are
/// our caller's misuse; nothing is written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// No header was announced for this item type.
    #[error("no header announced for type {chr:#04x}")]
    NoHeader {
        /// Type byte.
        chr: u8,
    },
    /// The item has a value for a key its announced header lacks.
    #[error("key {key} is not in the announced header for type {chr:#04x}")]
    NotInSchema {
        /// Type byte.
        chr: u8,
        /// The key (lossy UTF-8).
        key: String,
    },
    /// The event is not valid at this point of the stream (a record
    /// before the headers ended, a body chunk outside a body, a record
    /// while a body is open, anything after `X`).
    #[error("{event} not allowed {state}")]
    OutOfOrder {
        /// What was encoded.
        event: &'static str,
        /// Where the stream was.
        state: &'static str,
    },
    /// A value cannot be represented (an empty mailbox name, a header key
    /// for a reserved type byte).
    #[error("{item} cannot carry this {key}")]
    InvalidValue {
        /// Item name.
        item: &'static str,
        /// Key.
        key: &'static str,
    },
}
