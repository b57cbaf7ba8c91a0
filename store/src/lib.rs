//! Durable stores behind the engine's storage trait: the embedded default
//! (content-addressed message files plus a SQLite index) and Dovecot-compatible
//! Maildir++.
//!
//! This crate never speaks a protocol; it only keeps mail and says when a
//! write is durable.
//!
//! The embedded store: [`Embedded::open`] → implements
//! `engine::store::{MailRead, StoreWrite}`; [`Embedded::reader`] gives
//! cloneable read handles; [`embedded::Committer`] runs it on a thread with
//! group commit.
#![forbid(unsafe_code)]

pub mod backup;
pub mod cyrusdb;
pub mod embedded;
pub mod maildir;
pub mod mupdate;

pub use embedded::{Embedded, Reader};
