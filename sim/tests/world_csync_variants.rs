//! The csync rolling-replication world (`sim::csync`) over the other wire
//! paths: the IMAP-embedded flavour (`sync_try_imap`) and COMPRESS DEFLATE.
//! Seed `n` picks by `n % 3`: IMAP flavour, IMAP flavour compressed, csync
//! flavour compressed. The rest of the world (workload, faults) is the one
//! `world_csync` runs for the same seed. `SIM_SEEDS=A..B` / `SIM_SEED=N`.

/// Seeds when no `SIM_SEED(S)` is given.
const DEFAULT_SEEDS: std::ops::Range<u64> = 0..90;

/// Seeds that fail here and fail the same way in `world_csync` (the same
/// world over the csync flavour, uncompressed), so the cause is not the wire
/// path; remove a seed once it passes. 966 (found by the 10,000-seed run
/// at the end of session 3): after a crash failover and a copyback,
/// `user.alice.r35`'s HIGHESTMODSEQ goes back from 4 to 2 on the old
/// master (`SIM_SEED=966 cargo test -p sim --test world_csync`).
const QUARANTINED: &[u64] = &[966];

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
