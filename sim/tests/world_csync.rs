//! csync on the tier-1 world: rolling replication with failover, and
//! backupd under interrupted streams. `SIM_SEEDS=A..B` / `SIM_SEED=N`
//! choose the seeds; the default range is what CI runs.

/// Seeds per test when no `SIM_SEED(S)` is given. A debug build runs this
/// many in well under a minute; CI runs 10,000 in release (scripts/sim.sh).
const DEFAULT_SEEDS: std::ops::Range<u64> = 0..150;

/// Seeds of the 10,000-seed release run that fail and are not fixed yet;
/// skipped in the range. Empty: the five found when the world was built
/// are fixed and replayed by `regression_fixed_csync_seeds`.
const QUARANTINED: &[u64] = &[];

/// Seeds that failed once and are fixed, replayed in every `cargo test`:
/// 4748 and 6998 reused a UID after a failover (a copyback planned from the
/// store before its GET FETCHes overwrote a user append that landed
/// meanwhile; `csync_client` now plans the write again when it makes it);
/// 3841, 6599 and 7884 left the replica without live records while every
/// session said OK (both sides at the same HIGHESTMODSEQ after a failover,
/// one with nothing live: a 0 SYNC_CRC is a wildcard to Cyrus's
/// comparison; `csync_client` now takes the full update then).
const FIXED: &[u64] = &[3841, 4748, 6599, 6998, 7884];

#[test]
fn csync_rolling_with_failover() {
    let r = sim::run_range(
        "csync",
        "csync_rolling_with_failover",
        DEFAULT_SEEDS,
        10,
        |seed, trace, cov| {
            if !QUARANTINED.contains(&seed) {
                sim::csync::run(seed, false, trace, cov)
            }
        },
    );
    if r.seeds >= 1000 {
        r.coverage.require(&[
            "crash mid-APPLY",
            "partition during rename",
            "concurrent flag conflict",
            "failover",
            "copyback",
            "fsync failure",
            "converged",
        ]);
    }
}

#[test]
fn csync_backupd_interrupted_streams() {
    let r = sim::run_range(
        "backupd",
        "csync_backupd_interrupted_streams",
        DEFAULT_SEEDS,
        10,
        |seed, trace, cov| sim::csync::run(seed, true, trace, cov),
    );
    if r.seeds >= 1000 {
        r.coverage.require(&[
            "crash mid-APPLY",
            "cut mid-upload",
            "fsync failure",
            "converged",
        ]);
    }
}

/// Split brain that Cyrus's algorithm (which corvid follows) does not
/// repair: the master acknowledged `create user.alice.f5`, crashed before
/// replicating it, and the replica took over. When the old master comes
/// back as the replica it still holds `user.alice.f5`; the new primary has
/// neither the mailbox nor a tombstone for it, so sync_client neither
/// deletes it there nor copies it back. The acknowledged create (and any
/// mail appended into it) is stranded on the old master. Fixing it needs a
/// design decision in `engine::csync_client` (copy back replica-only
/// mailboxes that no tombstone explains); the CI range fails over only when
/// the replica is caught up on creates and seen state.
#[test]
#[ignore = "known split-brain limitation (sim/README.md); replays seed 60"]
fn regression_seed_60_failover_strands_new_mailbox() {
    sim::run_range(
        "csync-any-failover",
        "regression_seed_60",
        60..60 + 1,
        0,
        |seed, t, c| {
            let mut cfg = sim::csync::Config::from_seed(seed, false);
            cfg.failover_any_time = true;
            sim::csync::run_with(seed, cfg, t, c)
        },
    );
}

/// The same split brain for seen state: the old master's seen entry for a
/// mailbox stays on it (as the replica) and never reaches the new primary.
#[test]
#[ignore = "known split-brain limitation (sim/README.md); replays seed 68"]
fn regression_seed_68_failover_strands_seen_state() {
    sim::run_range(
        "csync-any-failover",
        "regression_seed_68",
        68..68 + 1,
        0,
        |seed, t, c| {
            let mut cfg = sim::csync::Config::from_seed(seed, false);
            cfg.failover_any_time = true;
            sim::csync::run_with(seed, cfg, t, c)
        },
    );
}

/// The fixed seeds above, each replayed in full.
#[test]
fn regression_fixed_csync_seeds() {
    for &seed in FIXED {
        sim::run_range(
            "csync-fixed",
            "regression_fixed_csync_seeds",
            seed..seed + 1,
            0,
            |s, t, c| sim::csync::run(s, false, t, c),
        );
    }
}
