//! The csync rolling-replication world (`sim::csync`) over the other wire
//! paths: the IMAP-embedded flavour (`sync_try_imap`) and COMPRESS DEFLATE.
//! Seed `n` picks by `n % 3`: IMAP flavour, IMAP flavour compressed, csync
//! flavour compressed. The rest of the world (workload, faults) is the one
//! `world_csync` runs for the same seed. `SIM_SEEDS=A..B` / `SIM_SEED=N`.

/// Seeds when no `SIM_SEED(S)` is given.
const DEFAULT_SEEDS: std::ops::Range<u64> = 0..90;

/// Seeds that fail for reasons `world_csync` already quarantines (the same
/// world over another wire path); remove a seed once it passes.
const QUARANTINED: &[u64] = &[];

fn config(seed: u64) -> sim::csync::Config {
    let mut cfg = sim::csync::Config::from_seed(seed, false);
    cfg.imap = seed % 3 != 2;
    cfg.compress = seed % 3 != 0;
    cfg
}

#[test]
fn csync_imap_flavour_and_compress() {
    let r = sim::run_range(
        "csync-variants",
        "csync_imap_flavour_and_compress",
        DEFAULT_SEEDS,
        10,
        |seed, trace, cov| {
            if !QUARANTINED.contains(&seed) {
                sim::csync::run_with(seed, config(seed), trace, cov)
            }
        },
    );
    if r.seeds >= 1000 {
        r.coverage.require(&[
            "crash mid-APPLY",
            "failover",
            "copyback",
            "session under COMPRESS",
            "converged",
        ]);
    }
}
