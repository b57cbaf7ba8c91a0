//! Fuzz target bodies for every corvid parser and server machine.
//!
//! Each target is a plain function `fn(&[u8])` that panics when an
//! invariant breaks ([`TARGETS`] lists them). The same bodies run in three
//! places:
//! * `cargo test -p fuzz` (`tests/replay.rs`) replays every file of
//!   `corpus/seeds/<target>/` and `corpus/regressions/<target>/` through
//!   its body — fast and deterministic, part of CI;
//! * libFuzzer: `fuzz_targets/<target>.rs` are cargo-fuzz entry points,
//!   built only with the `libfuzzer` feature (`scripts/fuzz.sh` runs them
//!   all for a bounded time on the stable toolchain);
//! * `tests/hostile.rs` feeds hand-made hostile inputs (lying literals,
//!   deep nesting, bombs) to the codecs directly.
//!
//! Bodies are deterministic: their choices (chunk boundaries, options)
//! come from the input itself ([`util`]), never from a clock or an
//! unseeded random source, so a reproducer always reproduces.
//!
//! The checks, per target, are in each module's doc: no panic anywhere;
//! the same events under any chunking (whole, byte-by-byte, random split);
//! buffers within their `Options` limits; encode→decode round trips for
//! valid values built by the `arbitrary` impls (the oracle); and for the
//! server machines, the call-order contract, no silent refusal and a
//! consistent store afterwards.
//!
//! What this crate never does: touch the network or the file system (the
//! config body neutralises `@include`), or change the code it tests.
#![forbid(unsafe_code)]

pub mod capture;
pub mod compress;
pub mod config;
pub mod csync;
pub mod dlist;
pub mod dsync;
pub mod frame;
pub mod machines;
pub mod mupdate;
pub mod sasl;
pub mod util;

/// Every target: its name (the folder under `corpus/seeds` and
/// `corpus/regressions`, and the libFuzzer binary) and its body.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("frame", frame::body),
    ("dlist", dlist::body),
    ("csync", csync::body),
    ("mupdate", mupdate::body),
    ("dsync", dsync::body),
    ("compress", compress::body),
    ("sasl", sasl::body),
    ("config", config::body),
    ("capture", capture::body),
    ("mupdate_server", machines::mupdate_server),
    ("csync_server", machines::csync_server),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
