//! Dovecot's dsync stream protocol ("ibc-stream", protocol 3.5, as
//! Dovecot 2.3 speaks it between `doveadm sync|backup` and
//! `doveadm dsync-server`): a sans-IO [`Decoder`] and a byte-exact
//! [`Encoder`] for one direction of the stream.
//!
//! The stream, in wire order (details in each submodule):
//!
//! ```text
//! VERSION\tdsync\t3\t5                       version line
//! H<key>\t<key>...  (one per item type)     the sender's column names
//! .                                         end of headers
//! <chr><value>\t<value>...                   records, positional, tab-escaped,
//!                                           \x02 = NULL, trailing NULLs omitted
//! .                                         end of a list
//! <body bytes, dot-stuffed>\r\n.\r\n        after M/A records with `stream`
//! X                                         "closing"
//! ```
//!
//! What this module never does: read or write a socket, decide what to
//! send next (the sync conversation lives in `engine::dsync`), or hold a
//! whole message body — bodies go in and out in bounded chunks. It does not
//! speak the doveadm TCP preamble (`\tuser\tdsync-server…` / `+`), only
//! the stream that follows it.
//!
//! Typed items mirror Dovecot's structs; keys and item types it does not
//! know are kept (`extra`, [`Item::Unknown`]) and re-encoded, so a stream
//! Dovecot wrote decodes and re-encodes to the identical bytes.

mod decode;
mod dot;
mod encode;
mod error;
mod escape;
mod item;
mod schema;

pub use decode::{Decoder, Event, Options};
pub use encode::{EncodeOptions, Encoder};
pub use error::{DecodeError, EncodeError};
pub use item::{
    flags, AttributeType, CacheDecision, CacheDecisionKind, CacheField, ChangeType, Existence,
    Extra, Finish, Guid128, Handshake, Item, KeywordChangeKind, Mail, MailChange, MailRequest,
    Mailbox, MailboxAttribute, MailboxDelete, MailboxState, MailboxTreeNode, SyncType, Tombstone,
    UnknownItem,
};
pub use schema::{ItemHeader, ItemKind, Schema};
