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
//! Scenarios live in one module each: [`mupdate`] (tier 2, turmoil, the
//! real driver), and on the tier-1 [`world`] (discrete events, no tokio,
//! thousands of seeds a second): [`csync`] (rolling replication with
//! failover, and backupd), [`dsync`] (two-way between two and three
//! replicas), [`mupdate_t1`] (master, slaves, backends).
//!
//! # Running seeds
//!
//! [`seed_list`] reads `SIM_SEED=N` (one seed), `SIM_SEEDS=A..B` (a
//! half-open range) or the older `CORVID_SIM_SEED`; [`run_range`] runs a
//! scenario over them, counts coverage ([`Coverage`]), writes the trace of
//! a failing seed to a file (one line per event) and prints the command
//! that replays it.
#![forbid(unsafe_code)]

pub mod check;
pub mod csync;
pub mod dsync;

pub mod mupdate;
pub mod mupdate_t1;

pub mod world;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, Once};
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
    // Tier-2 (turmoil) tests run fixed lists; `SIM_SEEDS` ranges are for
    // the tier-1 world (a turmoil seed costs far more). `SIM_SEED` replays
    // one seed here too.
    let var = if std::env::var_os(SEED_ENV).is_none() && std::env::var_os("SIM_SEED").is_some() {
        "SIM_SEED"
    } else {
        SEED_ENV
    };
    match std::env::var(var) {
        Ok(s) => vec![s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64"))],
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

/// Names of scenario points and how often a run reached them ("sometimes
/// assertions": a run that never crashed mid-APPLY proves nothing about
/// crashes mid-APPLY, so [`Coverage::require`] fails it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage(pub BTreeMap<&'static str, u64>);

impl Coverage {
    /// Counts one visit of `point`.
    pub fn hit(&mut self, point: &'static str) {
        *self.0.entry(point).or_default() += 1;
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &Coverage) {
        for (k, v) in &other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }

    /// How often `point` was reached.
    pub fn count(&self, point: &str) -> u64 {
        self.0.get(point).copied().unwrap_or(0)
    }

    /// Panics naming every point of `points` never reached.
    pub fn require(&self, points: &[&str]) {
        let missing: Vec<&str> = points
            .iter()
            .copied()
            .filter(|p| self.count(p) == 0)
            .collect();
        assert!(
            missing.is_empty(),
            "coverage: never reached {missing:?} (counts: {:?})",
            self.0
        );
    }

    /// One line per point, for reports and sim/README.md.
    pub fn table(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("  {k:<28} {v}\n"))
            .collect()
    }
}

/// The seeds to run: `SIM_SEED=N`, else `SIM_SEEDS=A..B` (half-open; `A..=B`
/// inclusive), else `CORVID_SIM_SEED=N`, else `default`.
///
/// # Panics
/// On a value that does not parse: a typo must not silently run the
/// default range.
pub fn seed_list(default: Range<u64>) -> Vec<u64> {
    let one = |var: &str| {
        std::env::var(var).ok().map(|s| {
            vec![s
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{var}={s:?} is not a u64"))]
        })
    };
    if let Some(v) = one("SIM_SEED") {
        return v;
    }
    if let Ok(s) = std::env::var("SIM_SEEDS") {
        fn bad(s: &str) -> ! {
            panic!("SIM_SEEDS={s:?} is not A..B or A..=B")
        }
        let (a, b, incl) = if let Some((a, b)) = s.trim().split_once("..=") {
            (a, b, true)
        } else if let Some((a, b)) = s.trim().split_once("..") {
            (a, b, false)
        } else {
            bad(&s)
        };
        let a: u64 = a.trim().parse().unwrap_or_else(|_| bad(&s));
        let b: u64 = b.trim().parse().unwrap_or_else(|_| bad(&s));
        return if incl {
            (a..=b).collect()
        } else {
            (a..b).collect()
        };
    }
    if let Some(v) = one(SEED_ENV) {
        return v;
    }
    default.collect()
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays silent while [`run_range`]
/// catches a seed's panic on this thread, and otherwise behaves as before:
/// thousands of failing seeds must not print thousands of backtraces.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}

/// What [`run_range`] saw.
#[derive(Debug, Default)]
pub struct RangeReport {
    /// Seeds run.
    pub seeds: usize,
    /// Coverage summed over them.
    pub coverage: Coverage,
    /// Seeds whose run twice gave different traces.
    pub nondeterministic: Vec<u64>,
}

/// Where failing traces go: `SIM_TRACE_DIR`, else `<tmp>/corvid-sim`.
pub fn trace_dir() -> std::path::PathBuf {
    std::env::var_os("SIM_TRACE_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("corvid-sim"))
}

/// Runs `scenario` for every seed of [`seed_list`]`(default)`.
///
/// Every `recheck_every`-th seed runs twice and the two traces must be
/// equal (determinism). A failing seed's trace is written to
/// [`trace_dir`]`/<name>-<seed>.trace`; after the whole range, if any seed
/// failed, this panics with the first failures and the replay command
/// (`SIM_SEED=N cargo test --release -p sim <test>`).
pub fn run_range(
    name: &str,
    test: &str,
    default: Range<u64>,
    recheck_every: u64,
    mut scenario: impl FnMut(u64, &mut Trace, &mut Coverage),
) -> RangeReport {
    quiet_hook();
    let seeds = seed_list(default);
    let mut report = RangeReport {
        seeds: seeds.len(),
        ..RangeReport::default()
    };
    let mut failures: Vec<(u64, String, std::path::PathBuf)> = Vec::new();
    let mut failed = 0usize;
    for &seed in &seeds {
        let mut trace = Trace::default();
        let mut cov = Coverage::default();
        QUIET.with(|q| q.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| scenario(seed, &mut trace, &mut cov)));
        QUIET.with(|q| q.set(false));
        report.coverage.merge(&cov);
        match r {
            Ok(()) => {
                if recheck_every > 0 && seed % recheck_every == 0 {
                    let mut again = Trace::default();
                    let mut c2 = Coverage::default();
                    QUIET.with(|q| q.set(true));
                    let r2 = catch_unwind(AssertUnwindSafe(|| scenario(seed, &mut again, &mut c2)));
                    QUIET.with(|q| q.set(false));
                    if r2.is_err() || again.hash() != trace.hash() {
                        report.nondeterministic.push(seed);
                    }
                }
            }
            Err(p) => {
                failed += 1;
                let msg = panic_text(&*p);
                let dir = trace_dir();
                let path = dir.join(format!("{name}-{seed}.trace"));
                if failures.len() < 8 {
                    let _ = std::fs::create_dir_all(&dir);
                    let mut text = trace.lines().join("\n");
                    text.push_str(&format!("\nFAILED: {msg}\n"));
                    let _ = std::fs::write(&path, text);
                    failures.push((seed, msg, path));
                }
            }
        }
    }
    if failed > 0 {
        let mut text = format!("{name}: {failed} of {} seeds failed\n", seeds.len());
        for (seed, msg, path) in &failures {
            text.push_str(&format!(
                "seed {seed}: {msg}\n  trace: {}\n  replay: SIM_SEED={seed} cargo test --release -p sim {test}\n",
                path.display()
            ));
        }
        panic!("{text}");
    }
    assert!(
        report.nondeterministic.is_empty(),
        "{name}: the same seed gave two different traces: {:?} (replay one with SIM_SEED=N cargo test --release -p sim {test})",
        report.nondeterministic
    );
    eprintln!(
        "{name}: {} seeds passed; coverage:\n{}",
        report.seeds,
        report.coverage.table()
    );
    report
}
