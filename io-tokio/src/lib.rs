//! The tokio adapter: runs engine machines over TCP, TLS, stdin/stdout or
//! turmoil streams, reads imapd.conf, and checks credentials (saslauthd or
//! corvid's password file).
//!
//! It holds no protocol decision: it moves bytes, time and store completions
//! between the world and a machine, and nothing else.
// `deny`, not `forbid`: `listen::master::adopt` must adopt the descriptors
// Cyrus master(8) hands down, which std only allows through `unsafe`; that
// one function opts out, with its reasoning beside it.
#![deny(unsafe_code)]
pub mod auth;
pub mod capture;
pub mod config;
pub mod driver;
pub mod listen;
pub mod metrics;
pub mod tls;
