//! Wire codecs for the three protocols corvid speaks: Cyrus replication
//! (csync, the dlist format), MUPDATE (RFC 3656 as Cyrus 3.6 speaks it) and
//! Dovecot's dsync stream protocol 3.5, plus the COMPRESS DEFLATE layer and
//! SASL framing they share.
//!
//! Every codec here is sans-IO: it takes bytes and returns values or
//! "need more", and turns values into bytes. This crate never touches a
//! socket, a file, a clock, a thread or a random source, and it never holds
//! more than a documented, bounded amount of a peer's input: literal bodies
//! are handed out in chunks whatever size the peer announces.
#![forbid(unsafe_code)]
pub mod compress;
pub mod csync;
pub mod dlist;
pub mod dsync;
pub mod frame;
pub mod mupdate;
pub mod sasl;
