//! `engine::store::conformance` run on `MemStore` itself (reopen = crash
//! after a sync): the harness other stores run must pass on the
//! reference, and its random batches must get accepted often enough to
//! mean something.

use engine::memstore::MemStore;
use engine::store::conformance;

#[test]
fn memstore_passes_its_own_conformance_run() {
    let mut total = conformance::Report::default();
    for seed in 0..12 {
        let r = conformance::run(MemStore::default(), seed, 300, |mut s| {
            s.crash();
            s
        })
        .unwrap_or_else(|e| panic!("{e}"));
        total.batches += r.batches;
        total.accepted += r.accepted;
        total.syncs += r.syncs;
        total.reopens += r.reopens;
    }
    eprintln!("{total:?}");
    assert!(total.accepted * 4 > total.batches, "{total:?}");
    assert!(total.syncs > 100 && total.reopens > 100, "{total:?}");
}

#[test]
fn the_dump_sees_what_a_store_holds() {
    // A run's durable state is not empty: the dump lists mailboxes and
    // records, so a comparison of two dumps compares something.
    let mut s = MemStore::default();
    let mut rng = conformance::Rng::new(7);
    for id in 0..200u64 {
        let b = engine::store::WriteBatch {
            id: engine::store::BatchId(id),
            mutations: vec![conformance::mutation(&mut rng)],
        };
        let _ = s.apply(&b);
    }
    s.sync_all();
    let d = conformance::dump(&s).unwrap();
    assert!(d.contains("mailbox Mailbox"), "{d}");
    assert!(d.contains("record Record"), "{d}");
}
