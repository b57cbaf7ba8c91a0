//! MUPDATE on the tier-1 world: a master, slaves and backends under cuts,
//! silent partitions, crashes and failing fsyncs (`sim::mupdate_t1`).
//! `SIM_SEEDS=A..B` / `SIM_SEED=N` choose the seeds; the default range is
//! what a debug `cargo test` runs, CI runs 10,000 in release
//! (scripts/sim.sh).

/// Seeds when no `SIM_SEED(S)` is given.
const DEFAULT_SEEDS: std::ops::Range<u64> = 0..200;

#[test]
fn mupdate_master_slaves_backends() {
    let r = sim::run_range(
        "mupdate",
        "mupdate_master_slaves_backends",
        DEFAULT_SEEDS,
        10,
        sim::mupdate_t1::run,
    );
    if r.seeds >= 1000 {
        r.coverage.require(&[
            "crash mid-write",
            "partition during update stream",
            "concurrent reserve of one name",
            "reserve refused: taken",
            "write answer lost",
            "delete answer lost",
            "retry after reconnect",
            "slave crash mid-apply",
            "slave noticed a silent master",
            "fsync failure",
            "converged",
        ]);
    }
}
