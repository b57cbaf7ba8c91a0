//! Durable stores behind the engine's storage trait: the embedded default
//! (content-addressed message files plus a SQLite index) and Dovecot-compatible
//! Maildir++.
//!
//! This crate never speaks a protocol; it only keeps mail and says when a
//! write is durable.
#![forbid(unsafe_code)]
