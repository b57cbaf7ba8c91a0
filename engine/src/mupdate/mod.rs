//! MUPDATE: the database model ([`db`]) and the server machine
//! ([`server::Server`], serving as master or as a read-only slave).
//!
//! How the pieces fit in a daemon (`corvid mupdate -m`):
//!
//! ```text
//!   conn 1: Server ──Effect::Write──▶ ┐
//!   conn 2: Server ──Effect::Write──▶ ├─ shared Database (decide under one lock)
//!   conn 3: Server ──Effect::Subscribe┘   + durable store (group commit)
//!      ▲                                     │ after commit, in order:
//!      └──── Command::Change(Arc<Change>) ◀──┘ every subscriber's channel
//! ```
//!
//! * Reads (FIND, LIST) are synchronous through [`server::Read`]: the
//!   daemon's shared handle implements it.
//! * Writes leave the machine as [`server::Effect::Write`]; the daemon
//!   decides them with [`db::Database::decide`] under its lock (so racing
//!   connections get one answer each, in order), commits, and only then
//!   completes them with [`server::Completion::Written`] carrying a
//!   [`server::Committed`] token: the `OK "done"` cannot be built without
//!   it.
//! * UPDATE leaves as [`server::Effect::Subscribe`]: the daemon registers
//!   the connection's command channel and takes the dump under the same
//!   lock, so every later change reaches the subscriber as a
//!   [`server::Command::Change`] and none is missed. Changes are pushed at
//!   once (Cyrus batches them for up to 5 s); pushes carry the change's
//!   resulting state, in commit order, so a subscriber always ends at the
//!   master's state.
//!
//! A slave's connection to its master is [`follower::Follower`]: it logs
//! in, sends `UPDATE`, hands the dump and every push to the daemon as
//! effects, and keeps the link alive with NOOPs, as a Cyrus slave does.
//!
//! Nothing here touches a socket, file, clock or thread.

pub mod db;
pub mod follower;
pub mod server;

pub use db::{Change, Database, Entry, Record, Refusal, State, Topology, Write};
pub use server::{
    AuthOk, Command, Committed, Completion, Effect, Event, Options, Read, Role, Server,
};
