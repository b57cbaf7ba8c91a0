//! Cyrus replication ("csync"), master side: the session machine of a
//! Cyrus 3.6.1 `sync_client` ([`Client`]) that replicates a corvid store
//! to a real Cyrus `sync_server` (or to corvid's own
//! [`csync::Server`](crate::csync::Server)).
//!
//! ```text
//!   banner (* SASL …, [* STARTTLS], * COMPRESS DEFLATE, * SIEVE-MAILBOX, * OK …)
//!     │ [STARTTLS ─▶ StartLayer(TlsClient) ─▶ banner again]  (Options::starttls)
//!     │ AUTHENTICATE PLAIN|LOGIN (credentials from Options)
//!     ▼ OK Success
//!   [COMPRESS DEFLATE ─▶ StartLayer(Deflate)]   (-z: required)
//!   [APPLY FORCE %()]                            (-O: no copyback)
//!   [APPLY CAPABILITIES (SIEVE-MAILBOX)]         (when offered; Options::sieve_mailbox)
//!     ▼ Event::Ready(flavour)
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
//! Memory: an `APPLY MESSAGE` (at most [`Options::upload_files_max`]
//! files and [`Options::upload_bytes_max`] bytes; a larger single message
//! goes alone) is streamed, not built: each turn hands the driver at most
//! [`Options::upload_turn_bytes`], read from the store in
//! [`Options::chunk_bytes`] pieces, then asks for an immediate timeout
//! that the driver grants only when its write buffer has room. Every
//! file's size is checked before the first byte, since a store failure
//! mid-command can only close the session. Replies are bounded by the
//! framer limits and [`Options::reply_items_max`]. Incoming `GET FETCH`
//! bodies stream out as staging effects.
//!
//! Flavours ([`Flavour`]): the csync port, or (`sync_try_imap`) an imapd
//! advertising `X-REPLICATION`, where the same dlists travel as tagged
//! `S<n> SYNCGET`/`SYNCAPPLY` after `A01 AUTHENTICATE`, and `EXIT` is
//! `Q01 LOGOUT`. An IMAP attempt that meets a csync banner continues as
//! csync on the same connection (Cyrus's client waits 10 s for a tagged
//! answer, then reconnects); an imapd without `X-REPLICATION` ends with
//! [`Event::NoReplication`] and the caller reconnects to the csync port.
//! STARTTLS ([`Options::starttls`]) is csync-only here: after `OK` the
//! driver runs the TLS handshake and the banner is read again.
//!
//! Where corvid deliberately differs from 3.6.1 (each found by the
//! simulator, `sim/tests/world_csync.rs`): a replica-only mailbox of the
//! user that no local mailbox, name or tombstone explains is copied back
//! (Cyrus strands it after a crash failover); when exactly one side's
//! SYNC_CRC is 0 and the incremental update cannot explain it, the full
//! update runs at once (0 is a wildcard to Cyrus's `mailbox_crceq`, which
//! hid an equal-HIGHESTMODSEQ split brain); a copyback is planned again
//! from the store when its write is made, after the GET FETCHes, so a
//! local append in between is not overwritten. Scripts without a local
//! `#sieve` mailbox are compared with `GET FETCH_SIEVE` before being
//! sent again. Server annotations follow `ANNOTATION ""` log lines
//! ([`Command::Annotation`]).
//!
//! What it never does: open sockets, read clocks, log message bytes or
//! the password, or decide which users to replicate (the caller's
//! commands do; [`jobs_from_log`] turns sync log lines into commands).

mod full;
mod machine;
mod plan;

pub use machine::{Client, Command, Completion, Effect, Event, Flavour, JobError, Options};
pub use plan::jobs_from_log;
