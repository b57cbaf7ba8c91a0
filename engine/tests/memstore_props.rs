//! Properties of `MemStore` and `Pending`, over random sequences of
//! batches drawn from a small universe (so that names collide, records
//! overwrite each other and many mutations are refused):
//!
//! * a crash at any point loses exactly the batches not yet durable:
//!   durable state always equals a fresh store fed only the batches that
//!   were reported durable, in order;
//! * a batch is all or nothing: a refused batch changes nothing, durable or
//!   pending;
//! * `Pending` (the machine-side overlay) accepts and refuses exactly what
//!   the store does and reads the same as the store's durable + pending
//!   state, while batches complete in any prefix order.

mod memstore_support;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use engine::memstore::MemStore;
use engine::model::*;
use engine::store::{BatchId, Completion, Mutation, Pending, StoreError, StoreWrite, WriteBatch};
use memstore_support::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum M {
    PutMessage(usize),
    LinkMessage(usize),
    PutMailbox(usize, usize, u64),
    Rename(usize, usize),
    Delete(usize),
    PutRecord(usize, u32, usize, bool, u8),
    Purge(usize, u32),
    PutSeen(usize, usize, u32),
    DeleteSeen(usize, usize),
    Sub(usize, usize, bool),
    Quota(usize, Option<u64>),
    Annot(Option<usize>, u8, bool, u8),
    Sieve(usize, u8, bool),
    Activate(usize, Option<u8>),
    DeleteUser(usize),
    Forget(usize),
    Log(u8, usize),
    Trim(u8, u64),
}

fn m_strategy() -> impl Strategy<Value = M> {
    prop_oneof![
        3 => (0..5usize).prop_map(M::PutMessage),
        2 => (0..5usize).prop_map(M::LinkMessage),
        4 => (0..4usize, 0..NAMES, 0..50u64).prop_map(|(a, b, c)| M::PutMailbox(a, b, c)),
        2 => (0..4usize, 0..NAMES).prop_map(|(a, b)| M::Rename(a, b)),
        1 => (0..4usize).prop_map(M::Delete),
        6 => (0..4usize, 1..8u32, 0..5usize, any::<bool>(), any::<u8>())
            .prop_map(|(a, b, c, d, e)| M::PutRecord(a, b, c, d, e)),
        1 => (0..4usize, 1..8u32).prop_map(|(a, b)| M::Purge(a, b)),
        1 => (0..2usize, 0..4usize, 0..9u32).prop_map(|(a, b, c)| M::PutSeen(a, b, c)),
        1 => (0..2usize, 0..4usize).prop_map(|(a, b)| M::DeleteSeen(a, b)),
        1 => (0..2usize, 0..NAMES, any::<bool>()).prop_map(|(a, b, c)| M::Sub(a, b, c)),
        1 => (0..NAMES, proptest::option::of(0..100u64)).prop_map(|(a, b)| M::Quota(a, b)),
        1 => (proptest::option::of(0..4usize), 0..3u8, any::<bool>(), 0..3u8)
            .prop_map(|(a, b, c, d)| M::Annot(a, b, c, d)),
        1 => (0..2usize, 0..3u8, any::<bool>()).prop_map(|(a, b, c)| M::Sieve(a, b, c)),
        1 => (0..2usize, proptest::option::of(0..3u8)).prop_map(|(a, b)| M::Activate(a, b)),
        1 => (0..2usize).prop_map(M::DeleteUser),
        1 => (0..4usize).prop_map(M::Forget),
        1 => (0..2u8, 0..NAMES).prop_map(|(a, b)| M::Log(a, b)),
        1 => (0..2u8, 0..6u64).prop_map(|(a, b)| M::Trim(a, b)),
    ]
}

fn channel(c: u8) -> String {
    ["", "squatter"][c as usize % 2].to_string()
}

fn sieve_name(i: u8) -> SieveName {
    SieveName::new(format!("script{i}")).unwrap()
}

fn to_mutation(m: &M) -> Mutation {
    match *m {
        M::PutMessage(i) => Mutation::PutMessage {
            guid: Guid::of(&msg(i)),
            bytes: msg(i),
        },
        M::LinkMessage(i) => Mutation::LinkMessage {
            guid: Guid::of(&msg(i)),
            size: msg(i).len() as u64,
        },
        M::PutMailbox(i, n, hms) => {
            let mut mb = mailbox(i, n);
            mb.highestmodseq = ModSeq(hms);
            Mutation::PutMailbox(mb)
        }
        M::Rename(i, n) => Mutation::RenameMailbox {
            uniqueid: uniq(i),
            new_name: name(n),
            at: UnixTime(1_700_000_100),
            modseq: ModSeq(5),
        },
        M::Delete(i) => Mutation::DeleteMailbox {
            uniqueid: uniq(i),
            at: UnixTime(1_700_000_200),
            modseq: ModSeq(6),
        },
        M::PutRecord(i, u, msgi, expunged, fl) => {
            let mut r = record(u, msgi, expunged);
            r.flags.system = SystemFlags::from_bits_truncate(fl);
            if fl & 32 != 0 {
                r.flags.insert_keyword(Keyword::new("$Label1").unwrap());
            }
            if fl & 64 != 0 {
                r.savedate = UnixTime(1_700_000_300);
            }
            Mutation::PutRecord {
                mailbox: uniq(i),
                record: r,
            }
        }
        M::Purge(i, u) => Mutation::PurgeRecords {
            mailbox: uniq(i),
            uids: vec![uid(u)],
        },
        M::PutSeen(u, mb, last) => Mutation::PutSeen {
            user: user(u),
            mailbox: uniq(mb),
            seen: Seen {
                lastread: UnixTime(1),
                lastuid: last,
                lastchange: UnixTime(2),
                seenuids: SeqSet::parse(if last > 0 { b"1:3" } else { b"" }).unwrap(),
            },
        },
        M::DeleteSeen(u, mb) => Mutation::DeleteSeen {
            user: user(u),
            mailbox: uniq(mb),
        },
        M::Sub(u, n, on) => Mutation::SetSubscription {
            user: user(u),
            name: name(n),
            subscription: Subscription {
                subscribed: on,
                changed_at: UnixTime(3),
            },
        },
        M::Quota(n, Some(limit)) => Mutation::PutQuota {
            root: name(n),
            quota: QuotaRoot {
                limits: [(QuotaResource::Storage, limit)].into_iter().collect(),
                usage: Default::default(),
                modseq: ModSeq(limit),
            },
        },
        M::Quota(n, None) => Mutation::DeleteQuota { root: name(n) },
        M::Annot(mb, e, shared, v) => Mutation::SetAnnotation {
            mailbox: mb.map(uniq),
            entry: AnnotationEntry::new(format!("/entry{e}")).unwrap(),
            owner: if shared {
                AnnotationOwner::Shared
            } else {
                AnnotationOwner::User(user(0))
            },
            value: AnnotationValue {
                modseq: ModSeq(v as u64),
                value: Bytes::from(["", "a", "bb"][v as usize % 3]),
            },
        },
        M::Sieve(u, n, put) => {
            if put {
                Mutation::PutSieve {
                    user: user(u),
                    script: SieveScript {
                        name: sieve_name(n),
                        last_update: UnixTime(4),
                        content: Bytes::from(format!("keep; # {n}")),
                    },
                }
            } else {
                Mutation::DeleteSieve {
                    user: user(u),
                    name: sieve_name(n),
                }
            }
        }
        M::Activate(u, n) => Mutation::ActivateSieve {
            user: user(u),
            name: n.map(sieve_name),
        },
        M::DeleteUser(u) => Mutation::DeleteUser {
            user: user(u),
            at: UnixTime(5),
            modseq: ModSeq(7),
        },
        M::Forget(i) => Mutation::ForgetTombstone { uniqueid: uniq(i) },
        M::Log(c, n) => Mutation::AppendSyncLog {
            channel: channel(c),
            line: SyncLogLine::Mailbox(name(n)),
        },
        M::Trim(c, t) => Mutation::TrimSyncLog {
            channel: channel(c),
            through: t,
        },
    }
}

#[derive(Debug, Clone)]
enum Op {
    Apply(Vec<M>),
    Stage(usize, bool),
    Durable(usize),
    SyncAll,
    Crash,
    FailPending,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(m_strategy(), 1..6).prop_map(Op::Apply),
        2 => (0..5usize, proptest::bool::weighted(0.2)).prop_map(|(a, b)| Op::Stage(a, b)),
        2 => (0..4usize).prop_map(Op::Durable),
        1 => Just(Op::SyncAll),
        1 => Just(Op::Crash),
        1 => Just(Op::FailPending),
    ]
}

fn batch(id: u64, ms: &[M]) -> WriteBatch {
    WriteBatch {
        id: BatchId(id),
        mutations: ms.iter().map(to_mutation).collect(),
    }
}

/// A fresh store fed `batches` in order, all durable. Linked messages are
/// staged first, as they were for the original.
fn replay(batches: &[WriteBatch]) -> MemStore {
    let mut s = MemStore::default();
    for b in batches {
        for m in &b.mutations {
            if let Mutation::LinkMessage { guid, .. } = m {
                for i in 0..5 {
                    if Guid::of(&msg(i)) == *guid {
                        stage(&mut s, i, false).unwrap();
                    }
                }
            }
        }
        s.apply(b).expect("a batch the original store accepted");
    }
    s.sync_all();
    s
}

fn stage(s: &mut MemStore, i: usize, corrupt: bool) -> Result<(), StoreError> {
    let bytes = msg(i);
    let h = s.stage_begin(Guid::of(&bytes), bytes.len() as u64)?;
    let mut b = bytes.to_vec();
    if corrupt {
        b[0] ^= 1;
    }
    for c in b.chunks(7) {
        s.stage_chunk(h, c)?;
    }
    s.stage_end(h)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn crash_loses_only_non_durable_batches(ops in proptest::collection::vec(op_strategy(), 1..30)) {
        let mut s = MemStore::default();
        let mut durable: Vec<WriteBatch> = Vec::new();
        let mut pending: Vec<WriteBatch> = Vec::new();
        let mut next = 1u64;
        for op in &ops {
            match op {
                Op::Apply(ms) => {
                    let b = batch(next, ms);
                    next += 1;
                    let before_pending = dump(&s.with_pending());
                    let before_durable = dump(s.durable());
                    match s.apply(&b) {
                        Ok(()) => pending.push(b),
                        Err(_) => {
                            prop_assert_eq!(dump(&s.with_pending()), before_pending);
                            prop_assert_eq!(dump(s.durable()), before_durable);
                        }
                    }
                }
                Op::Stage(i, corrupt) => {
                    let r = stage(&mut s, *i, *corrupt);
                    if *corrupt {
                        let refused = matches!(r, Err(StoreError::GuidMismatch { .. }));
                        prop_assert!(refused, "corrupt bytes accepted: {:?}", r);
                    } else {
                        prop_assert_eq!(r, Ok(()));
                    }
                }
                Op::Durable(k) => {
                    if let Some(b) = pending.get(*k) {
                        let done = s.make_durable(b.id);
                        prop_assert_eq!(done.len(), k + 1);
                        for (c, b) in done.iter().zip(pending.drain(..=*k)) {
                            match c {
                                Completion::Durable { batch_id, proof } => {
                                    prop_assert_eq!(*batch_id, b.id);
                                    prop_assert_eq!(proof.batch_id(), b.id);
                                }
                                other => prop_assert!(false, "{:?}", other),
                            }
                            durable.push(b);
                        }
                    }
                }
                Op::SyncAll => {
                    let done = s.sync_all();
                    prop_assert_eq!(done.len(), pending.len());
                    durable.append(&mut pending);
                }
                Op::Crash => {
                    let lost = s.crash();
                    prop_assert_eq!(lost, pending.iter().map(|b| b.id).collect::<Vec<_>>());
                    pending.clear();
                }
                Op::FailPending => {
                    let failed = s.fail_pending("disk full");
                    prop_assert_eq!(failed.len(), pending.len());
                    pending.clear();
                }
            }
            // Durable state is exactly the durable batches, replayed.
            let fresh = replay(&durable);
            prop_assert_eq!(dump(s.durable()), dump(fresh.durable()));
            prop_assert_eq!(s.durable(), fresh.durable());
            prop_assert_eq!(dump(&s), dump(s.durable()));
        }
    }

    #[test]
    fn pending_overlay_agrees_with_the_store(
        batches in proptest::collection::vec(proptest::collection::vec(m_strategy(), 1..6), 1..12),
        completions in proptest::collection::vec(0..3usize, 12),
    ) {
        let store = Rc::new(RefCell::new(MemStore::default()));
        // Stage every message once so LinkMessage can succeed in the store.
        for i in 0..5 {
            stage(&mut store.borrow_mut(), i, false).unwrap();
        }
        let mut p = Pending::new(store.clone());
        for (n, ms) in batches.iter().enumerate() {
            let b = batch(n as u64 + 1, ms);
            let overlay = p.push(&b);
            let real = store.borrow_mut().apply(&b);
            // Staged-but-linked GUIDs: Pending trusts LinkMessage, the store
            // checks it; all messages are staged here, so they agree unless
            // a GUID was consumed by an earlier batch that later failed.
            prop_assert_eq!(overlay.is_ok(), real.is_ok(), "batch {:?}: {:?} vs {:?}", b, overlay, real);
            prop_assert_eq!(dump(&p), dump(&store.borrow().with_pending()));
            // Complete a prefix of the pending batches.
            let k = completions[n].min(p.batch_ids().len());
            if k > 0 {
                let id = p.batch_ids()[k - 1];
                let done = store.borrow_mut().make_durable(id);
                for c in done {
                    if let Completion::Durable { batch_id, .. } = c {
                        prop_assert!(p.complete(batch_id));
                    }
                }
                prop_assert_eq!(dump(&p), dump(&store.borrow().with_pending()));
            }
        }
        store.borrow_mut().sync_all();
        for id in p.batch_ids() {
            p.complete(id);
        }
        prop_assert!(p.is_empty());
        prop_assert_eq!(dump(&p), dump(&*store.borrow()));
    }
}
