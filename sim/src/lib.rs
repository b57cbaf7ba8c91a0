//! Deterministic simulation: the same engine machines under turmoil, with
//! partitions, crashes and concurrent edits, checked for convergence with
//! nothing lost or duplicated.
//!
//! Nothing here is used in production; every run is replayable from its seed.
//!
//! # Shape (after TigerBeetle's VOPR and madsim)
//!
//! - **One seed drives everything**: turmoil's network RNG (latencies, host
//!   order) and the world's own RNG (workload, fault schedule, store commit
//!   latency) are both ChaCha8 seeded from it. [`seeds`] reads
//!   `CORVID_SIM_SEED`, or falls back to a fixed list per test;
//!   [`run_seeds`] prints `CORVID_SIM_SEED=N cargo test -p sim <test>` for a
//!   failing seed.
//! - **Real machines through the real driver**: every host runs engine
//!   machines inside `io_tokio::driver::Driver` over turmoil's `TcpStream`,
//!   the same code path the daemons use over TCP.
//! - **Two phases**: a workload under faults (partitions, crashes that drop
//!   the un-synced half of a store), then heal everything and let it settle;
//!   failing to converge within a bound is a failure ("liveness").
//! - **Checkers observe from outside**: a [`Trace`] of events (hashed for the
//!   determinism check), a ledger of every acknowledged operation, and
//!   invariants run after every `Sim::step`.
//!
//! Scenarios live in one module each: [`mupdate`].
#![forbid(unsafe_code)]

pub mod mupdate;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment variable that pins a run to one seed.
pub const SEED_ENV: &str = "CORVID_SIM_SEED";

/// The seeds to run: the one in `CORVID_SIM_SEED` if set (so a failure
/// replays exactly), else `defaults`.
///
/// # Panics
/// If `CORVID_SIM_SEED` is set but not a `u64`: a typo must not silently
/// run the default list.
pub fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => vec![s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64"))],
        Err(_) => defaults.to_vec(),
    }
}

/// Runs `scenario` once per seed from [`seeds`]; when one panics, prints the
/// command that replays it, then lets the panic through.
pub fn run_seeds(test: &str, defaults: &[u64], mut scenario: impl FnMut(u64)) {
    for seed in seeds(defaults) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scenario(seed))) {
            eprintln!(
                "simulation failed; replay with:\n  {SEED_ENV}={seed} cargo test -p sim {test}"
            );
            resume_unwind(panic);
        }
    }
}

/// The event log of one run: one line per event, in the order the single
/// simulation thread produced them. Shared by every host of the world.
///
/// Lines never hold message bytes or credentials, only names and outcomes.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    /// Appends one event seen at simulated time `at`.
    pub fn record(&self, at: Duration, event: impl Into<String>) {
        let line = format!("{:>9.3} {}", at.as_secs_f64(), event.into());
        self.0.lock().expect("trace lock").push(line);
    }

    /// Appends one event at the current host's simulated time (inside a
    /// turmoil host or client).
    pub fn here(&self, event: impl Into<String>) {
        self.record(turmoil::sim_elapsed().unwrap_or_default(), event);
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("trace lock").clone()
    }

    /// FNV-1a over every line: equal hashes for equal traces, so two runs of
    /// one seed can be compared without keeping both logs.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for line in self.0.lock().expect("trace lock").iter() {
            for &b in line.as_bytes().iter().chain(b"\n") {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().expect("trace lock");
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }
}
