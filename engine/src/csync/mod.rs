//! Cyrus replication ("csync"), replica side: the session machine a real
//! Cyrus 3.6 `sync_client` replicates into ([`Server`]), the rules of
//! `APPLY MAILBOX` ([`apply`]) and the model ↔ dlist edge ([`wire`]).
//!
//! The wire codec is `proto::csync`; this module decides what to answer
//! and what to write. It reads mail state through
//! [`MailRead`](crate::store::MailRead) and writes only by emitting store
//! effects ([`Effect::Store`]) whose durable completion is the only way to
//! an `OK success`.
//!
//! What it never does: I/O, clocks, password checks, or logging of message
//! bytes and credentials (it reports [`Event`]s; the daemon logs them).

pub mod apply;
mod server;
pub mod wire;

pub use apply::Refusal;
pub use server::{
    AuthOk, Command, Completion, Effect, Event, Flavour, Locks, Options, Server, UserLocks,
};

#[cfg(test)]
mod tests;
