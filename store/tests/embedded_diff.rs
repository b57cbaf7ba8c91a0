//! The embedded store against the engine's MemStore, the executable
//! description of the mutation semantics: random batches from a small
//! universe (names collide, records overwrite, many batches are refused)
//! go to both; each must accept or refuse the same batches and read back
//! identically (`dump` reads everything through `MailRead`). Then the store
//! is closed and reopened, and must still read the same.

#[path = "../../engine/tests/memstore_support/mod.rs"]
mod memstore_support;

use bytes::Bytes;
use engine::memstore::MemStore;
use engine::model::*;
use engine::store::{commit, BatchId, Completion, MailRead, Mutation, StoreWrite, WriteBatch};
use memstore_support::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use store::embedded::{Embedded, Options};

fn options(dir: &std::path::Path) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    Options::new(dir.join("conf"), parts)
}

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
    Log(bool, usize),
    Trim(bool, u64),
}

fn m_strategy() -> impl Strategy<Value = M> {
    prop_oneof![
        2 => (0..5usize).prop_map(M::PutMessage),
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
        1 => (any::<bool>(), 0..NAMES).prop_map(|(a, b)| M::Log(a, b)),
        1 => (any::<bool>(), 0..6u64).prop_map(|(a, b)| M::Trim(a, b)),
    ]
}

fn channel(named: bool) -> String {
    if named {
        "squatter".into()
    } else {
        String::new()
    }
}

fn to_mutation(m: &M) -> Mutation {
    let sieve_name = |i: u8| SieveName::new(format!("script{i}")).unwrap();
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
            mb.last_uid = 7;
            mb.annotations.set(
                AnnotationEntry::new("/comment").unwrap(),
                AnnotationOwner::Shared,
                AnnotationValue {
                    modseq: ModSeq(hms),
                    value: Bytes::from("hi"),
                },
            );
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
                r.flags.insert_keyword(Keyword::new("Junk").unwrap());
            }
            if fl & 64 != 0 {
                r.savedate = UnixTime(1_700_000_300);
                r.thrid = 0xabc;
                r.annotations.set(
                    AnnotationEntry::new("/comment").unwrap(),
                    AnnotationOwner::User(user(0)),
                    AnnotationValue {
                        modseq: ModSeq(3),
                        value: Bytes::from_static(b"\x00bin"),
                    },
                );
            }
            Mutation::PutRecord {
                mailbox: uniq(i),
                record: r,
            }
        }
        M::Purge(i, u) => Mutation::PurgeRecords {
            mailbox: uniq(i),
            uids: vec![uid(u), uid(u + 1)],
        },
        M::PutSeen(u, mb, last) => Mutation::PutSeen {
            user: user(u),
            mailbox: uniq(mb),
            seen: Seen {
                lastread: UnixTime(1),
                lastuid: last,
                lastchange: UnixTime(2),
                seenuids: SeqSet::parse(if last > 0 { b"1:3,5" } else { b"" }).unwrap(),
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
                limits: [(QuotaResource::Storage, limit), (QuotaResource::Mailbox, 9)]
                    .into_iter()
                    .collect(),
                usage: [(QuotaResource::Message, 3)].into_iter().collect(),
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
        M::Sieve(u, n, true) => Mutation::PutSieve {
            user: user(u),
            script: SieveScript {
                name: sieve_name(n),
                last_update: UnixTime(4),
                content: Bytes::from(format!("keep; # {n}")),
            },
        },
        M::Sieve(u, n, false) => Mutation::DeleteSieve {
            user: user(u),
            name: sieve_name(n),
        },
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
            line: if n % 2 == 0 {
                SyncLogLine::Mailbox(name(n))
            } else {
                SyncLogLine::Seen(user(n), uniq(n))
            },
        },
        M::Trim(c, t) => Mutation::TrimSyncLog {
            channel: channel(c),
            through: t,
        },
    }
}

fn stage_all<S: StoreWrite>(s: &mut S) {
    for i in 0..5 {
        let b = msg(i);
        let h = s.stage_begin(Guid::of(&b), b.len() as u64).unwrap();
        for c in b.chunks(5) {
            s.stage_chunk(h, c).unwrap();
        }
        s.stage_end(h).unwrap();
    }
}

/// `dump` plus what it leaves out: the sync log and server annotations and
/// message bytes.
fn full_dump(s: &impl MailRead) -> String {
    let mut o = dump(s);
    for ch in ["", "squatter"] {
        o.push_str(&format!(
            "log {ch:?}: last {} {:?}\n",
            s.sync_log_last(ch).unwrap(),
            s.sync_log(ch, 0, 100).unwrap()
        ));
    }
    o.push_str(&format!(
        "server annotations {:?}\n",
        s.server_annotations().unwrap()
    ));
    for i in 0..5 {
        let g = Guid::of(&msg(i));
        if s.message_size(&g).unwrap().is_some() {
            let mut got = Vec::new();
            loop {
                let chunk = s.message_bytes(&g, got.len() as u64, 9).unwrap();
                if chunk.is_empty() {
                    break;
                }
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, msg(i), "message {i} reads back different bytes");
        }
    }
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn behaves_like_memstore(batches in proptest::collection::vec(proptest::collection::vec(m_strategy(), 1..6), 1..14)) {
        // Semantics, not durability, are under test here: tmpfs (when there
        // is one) keeps the fsyncs cheap. tests/crash.rs uses the real disk.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let mut mem = MemStore::default();
        let mut emb = Embedded::open(options(dir.path())).unwrap();
        for (n, ms) in batches.iter().enumerate() {
            // Staged bytes are consumed by a linking batch; restage before each.
            stage_all(&mut mem);
            stage_all(&mut emb);
            let b = WriteBatch { id: BatchId(n as u64), mutations: ms.iter().map(to_mutation).collect() };
            let a = commit(&mut mem, &b);
            let e = commit(&mut emb, &b);
            let ok = |c: &Completion| matches!(c, Completion::Durable { .. });
            prop_assert_eq!(ok(&a), ok(&e), "batch {:?}: memstore {:?}, embedded {:?}", b, a, e);
            if let (Completion::Failed { error: x, .. }, Completion::Failed { error: y, .. }) = (&a, &e) {
                prop_assert_eq!(x, y);
            }
            prop_assert_eq!(full_dump(mem.durable()), full_dump(&emb));
        }
        let before = full_dump(&emb);
        drop(emb);
        let emb = Embedded::open(options(dir.path())).unwrap();
        prop_assert_eq!(full_dump(&emb), before);
        let report = emb.reader().verify().unwrap();
        prop_assert!(report.is_clean(), "{:?}", report);
    }
}

/// The engine's own conformance run (the same steps to MemStore and to
/// us, reopening the store from disk now and then), over several seeds.
#[test]
fn engine_conformance_harness() {
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().to_path_buf();
        let store = Embedded::open(options(&path)).unwrap();
        let report = engine::store::conformance::run(store, seed, 300, |s| {
            drop(s);
            Embedded::open(options(&path)).unwrap()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.accepted > 10,
            "seed {seed}: too few batches accepted: {report:?}"
        );
        let verify = Embedded::open_read_only(&options(&path))
            .unwrap()
            .verify()
            .unwrap();
        assert!(verify.is_clean(), "seed {seed}: {:?}", verify.problems);
    }
}
