//! The protocol state machines of corvid (csync, MUPDATE, dsync), the mail
//! model they share, the storage trait and the in-memory store.
//!
//! Machines here are plain structs: they are fed with `handle_*(now, …)` and
//! drained with `poll_*()`. They never touch a socket, a file, a clock, a
//! thread or a random source; time and randomness are inputs, and every write
//! leaves a machine as an effect whose durability comes back as a completion.
#![forbid(unsafe_code)]
pub mod csync;
pub mod csync_client;
pub mod dsync;
pub mod harness;
pub mod machine;
pub mod memstore;
pub mod model;
pub mod mupdate;
pub mod store;
