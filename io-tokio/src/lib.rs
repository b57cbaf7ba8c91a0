//! The tokio adapter: runs engine machines over TCP, TLS, stdin/stdout or
//! turmoil streams, reads imapd.conf, and checks credentials (saslauthd or
//! corvid's password file).
//!
//! It holds no protocol decision: it moves bytes, time and store completions
//! between the world and a machine, and nothing else.
#![forbid(unsafe_code)]
pub mod auth;
pub mod config;
