//! Cyrus replication ("csync"), master side: the session machine of a
//! Cyrus 3.6.1 `sync_client` ([`Client`]) that replicates a corvid store
//! to a real Cyrus `sync_server` (or to corvid's own
//! [`csync::Server`](crate::csync::Server)).
//!
//! ```text
//!   banner (* SASL …, * COMPRESS DEFLATE, * SIEVE-MAILBOX, * OK …)
//!     │ AUTHENTICATE PLAIN|LOGIN (credentials from Options)
//!     ▼ OK Success
//!   [COMPRESS DEFLATE ─▶ StartLayer(Deflate)]   (-z: required)
//!   [APPLY FORCE %()]                            (-O: no copyback)
//!   [APPLY CAPABILITIES (SIEVE-MAILBOX)]         (only with Options::sieve_mailbox)
//!     ▼
//!   Ready ◀────────────────────────────────────────────────┐
//!     │ Command::User / Mailboxes / Meta / Unuser / …      │
//!     ▼ one job: a queue of steps, one command in flight   │
//!   GET USER ─▶ RESERVE ─▶ RENAME* (restart, ≤3) ─▶ UNMAILBOX (tombstones)
//!     ─▶ per mailbox: unchanged? skip : APPLY MESSAGE* ─▶ APPLY MAILBOX
//!          NO IMAP_SYNC_CHECKSUM ─▶ GET MAILBOXES, again without SINCE_*
//!          again NO ─▶ GET FULLMAILBOX ─▶ GET FETCH* ─▶ local write ─▶ APPLY EXPUNGE ─▶ again
//!     ─▶ QUOTA ─▶ SUB/UNSUB ─▶ SIEVE ─▶ SEEN ─▶ job done ──────┘
//!     │ Command::Exit ─▶ EXIT ─▶ close
//! ```
//!
//! The algorithm is §4 of `research/csync-protocol.md` (3.6.1
//! `sync_do_user`, `update_mailbox_once`, `mailbox_full_update`); the
//! printed dlists come from [`crate::csync::wire`], so what this client
//! sends has the same key order a replica receives from Cyrus's own
//! client.
//!
//! Reads of the local store are synchronous ([`MailRead`]); the only
//! writes — the split-brain repair of a full update ("copyback") — leave
//! as [`Effect::Store`] and the job goes on only after the durable
//! completion. With [`Options::no_copyback`] (`-O`) nothing local is ever
//! written.
//!
//! Memory: message uploads are read from the store in
//! [`Options::chunk_bytes`] pieces; one `APPLY MESSAGE` holds at most
//! [`Options::upload_files_max`] files and [`Options::upload_bytes_max`]
//! bytes (a larger single message goes alone), which is what the driver
//! may hold unsent. Replies are bounded by the framer limits and
//! [`Options::reply_items_max`]. Incoming `GET FETCH` bodies stream out as
//! staging effects.
//!
//! What it never does: open sockets, read clocks, log message bytes or
//! the password, or decide which users to replicate (the caller's
//! commands do; [`jobs_from_log`] turns sync log lines into commands).

mod full;
mod machine;
mod plan;

pub use machine::{Client, Command, Completion, Effect, Event, Flavour, JobError, Options};
pub use plan::jobs_from_log;
