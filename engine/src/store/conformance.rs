//! A conformance check any store can run against `MemStore`, the
//! reference: the same deterministic sequence of stagings, batches, syncs
//! and reopens goes to both, and after every step they must agree on what
//! was accepted and refused, and (after each sync) on everything a reader
//! can see.
//!
//! It draws from a small fixed universe (five names, two users, six
//! messages), so names collide, records overwrite each other and many
//! mutations are refused — the interesting cases. Pure and deterministic:
//! a seed and a step count name a run. Drive it from a store crate's test:
//!
//! ```ignore
//! let report = engine::store::conformance::run(open(dir), seed, 400, |s| reopen(s))?;
//! ```

use std::fmt::Write as _;

use bytes::Bytes;

use super::{BatchId, MailRead, Mutation, StoreError, StoreWrite, UidRange, WriteBatch};
use crate::memstore::MemStore;
use crate::model::*;

/// A tiny deterministic PRNG (xorshift64*), so runs replay from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn pick(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NAMES: [&str; 5] = [
    "user.alice",
    "user.alice.Sent",
    "user.alice.Sent.2024",
    "user.bob",
    "shared.news",
];
const USERS: [&str; 2] = ["alice", "bob"];
const MESSAGES: usize = 6;
const MAILBOXES: usize = 4;

fn name(i: usize) -> MailboxName {
    MailboxName::new(NAMES[i % NAMES.len()]).expect("valid")
}

fn user(i: usize) -> UserId {
    UserId::new(USERS[i % USERS.len()]).expect("valid")
}

fn uniq(i: usize) -> UniqueId {
    UniqueId::new(format!("conf{i}")).expect("valid")
}

/// Message `i` of the universe.
pub fn message(i: usize) -> Bytes {
    Bytes::from(format!(
        "From: a@example.org\r\nSubject: conformance {i}\r\n\r\n{}\r\n",
        "body ".repeat(i * 3 + 1)
    ))
}

fn owner_of(n: &MailboxName) -> Option<UserId> {
    let s = n.as_bytes();
    USERS.iter().enumerate().find_map(|(i, u)| {
        let inbox = format!("user.{u}");
        let under = s == inbox.as_bytes()
            || (s.starts_with(inbox.as_bytes()) && s.get(inbox.len()) == Some(&b'.'));
        under.then(|| user(i))
    })
}

fn mailbox(rng: &mut Rng) -> Mailbox {
    let i = rng.pick(MAILBOXES);
    let n = name(rng.pick(NAMES.len()));
    let mut m = Mailbox::new(
        uniq(i),
        MailboxGuid::derive_from_uniqueid(&uniq(i)),
        n.clone(),
        owner_of(&n),
        UidValidity::new(1000 + i as u32).expect("non-zero"),
        Partition::new("default").expect("valid"),
        UnixTime(1_700_000_000),
    );
    m.highestmodseq = ModSeq(rng.below(40));
    m.last_uid = rng.below(9) as u32;
    m.acl = Acl::parse_cyrus(b"alice\tlrswipkxtecdan\t");
    m.options = MailboxOptions::parse(if rng.chance(50) { b"P" } else { b"" });
    if rng.chance(30) {
        m.annotations.set(
            AnnotationEntry::new("/comment").expect("valid"),
            AnnotationOwner::Shared,
            AnnotationValue {
                modseq: ModSeq(rng.below(5)),
                value: Bytes::from_static(b"note"),
            },
        );
    }
    m
}

fn record(rng: &mut Rng) -> Record {
    let m = rng.pick(MESSAGES);
    let b = message(m);
    let uid = Uid::new(1 + rng.below(8) as u32).expect("non-zero");
    let mut r = Record::new(
        uid,
        ModSeq(10 + rng.below(30)),
        Guid::of(&b),
        b.len() as u64,
        UnixTime(1_700_000_000 + rng.below(1000) as i64),
    );
    r.expunged = rng.chance(15);
    r.flags.system = SystemFlags::from_bits_truncate(rng.below(32) as u8);
    if rng.chance(30) {
        r.flags
            .insert_keyword(Keyword::new("$Label1").expect("valid"));
    }
    if rng.chance(30) {
        r.savedate = UnixTime(1_700_000_500);
        r.createdmodseq = ModSeq(3);
    }
    if rng.chance(20) {
        r.annotations.set(
            AnnotationEntry::new("/comment").expect("valid"),
            AnnotationOwner::User(user(0)),
            AnnotationValue {
                modseq: ModSeq(2),
                value: Bytes::from_static(b"remember"),
            },
        );
    }
    r
}

/// One random mutation from the universe.
pub fn mutation(rng: &mut Rng) -> Mutation {
    let at = UnixTime(1_700_001_000 + rng.below(100) as i64);
    let modseq = ModSeq(rng.below(50));
    match rng.below(26) {
        0..=2 => {
            let b = message(rng.pick(MESSAGES));
            Mutation::PutMessage {
                guid: Guid::of(&b),
                bytes: b,
            }
        }
        3 | 4 => {
            let b = message(rng.pick(MESSAGES));
            Mutation::LinkMessage {
                guid: Guid::of(&b),
                size: b.len() as u64,
            }
        }
        5..=8 => Mutation::PutMailbox(mailbox(rng)),
        9 => Mutation::RenameMailbox {
            uniqueid: uniq(rng.pick(MAILBOXES)),
            new_name: name(rng.pick(NAMES.len())),
            at,
            modseq,
        },
        10 => Mutation::DeleteMailbox {
            uniqueid: uniq(rng.pick(MAILBOXES)),
            at,
            modseq,
        },
        11..=15 => Mutation::PutRecord {
            mailbox: uniq(rng.pick(MAILBOXES)),
            record: record(rng),
        },
        16 => Mutation::PurgeRecords {
            mailbox: uniq(rng.pick(MAILBOXES)),
            uids: vec![Uid::new(1 + rng.below(8) as u32).expect("non-zero")],
        },
        17 => Mutation::PutSeen {
            user: user(rng.pick(2)),
            mailbox: uniq(rng.pick(MAILBOXES)),
            seen: Seen {
                lastread: at,
                lastuid: rng.below(8) as u32,
                lastchange: at,
                seenuids: SeqSet::parse(if rng.chance(50) { b"1:3,5" } else { b"" })
                    .expect("valid"),
            },
        },
        18 => Mutation::SetSubscription {
            user: user(rng.pick(2)),
            name: name(rng.pick(NAMES.len())),
            subscription: Subscription {
                subscribed: rng.chance(70),
                changed_at: at,
            },
        },
        19 => {
            let root = name(rng.pick(NAMES.len()));
            if rng.chance(70) {
                Mutation::PutQuota {
                    root,
                    quota: QuotaRoot {
                        limits: [(QuotaResource::Storage, rng.below(1000))]
                            .into_iter()
                            .collect(),
                        usage: Default::default(),
                        modseq,
                    },
                }
            } else {
                Mutation::DeleteQuota { root }
            }
        }
        20 => Mutation::SetAnnotation {
            mailbox: rng.chance(50).then(|| uniq(rng.pick(MAILBOXES))),
            entry: AnnotationEntry::new(format!("/entry{}", rng.below(3))).expect("valid"),
            owner: if rng.chance(50) {
                AnnotationOwner::Shared
            } else {
                AnnotationOwner::User(user(1))
            },
            value: AnnotationValue {
                modseq,
                value: Bytes::from(["", "a", "bb"][rng.pick(3)]),
            },
        },
        21 => {
            let n = SieveName::new(format!("s{}", rng.below(3))).expect("valid");
            let u = user(rng.pick(2));
            match rng.below(3) {
                0 => Mutation::PutSieve {
                    user: u,
                    script: SieveScript {
                        name: n,
                        last_update: at,
                        content: Bytes::from_static(b"keep;\r\n"),
                    },
                },
                1 => Mutation::DeleteSieve { user: u, name: n },
                _ => Mutation::ActivateSieve {
                    user: u,
                    name: rng.chance(70).then_some(n),
                },
            }
        }
        22 => Mutation::DeleteUser {
            user: user(rng.pick(2)),
            at,
            modseq,
        },
        23 => Mutation::ForgetTombstone {
            uniqueid: uniq(rng.pick(MAILBOXES)),
        },
        24 => Mutation::AppendSyncLog {
            channel: ["", "squatter"][rng.pick(2)].to_string(),
            line: SyncLogLine::Mailbox(name(rng.pick(NAMES.len()))),
        },
        _ => Mutation::TrimSyncLog {
            channel: ["", "squatter"][rng.pick(2)].to_string(),
            through: rng.below(6),
        },
    }
}

/// Everything a reader can see of the universe, as text in a fixed order.
/// Two stores with equal dumps are indistinguishable through [`MailRead`]
/// for this universe.
pub fn dump<S: MailRead + ?Sized>(s: &S) -> Result<String, StoreError> {
    let mut o = String::new();
    let w = |o: &mut String, args: std::fmt::Arguments<'_>| {
        o.write_fmt(args).expect("writing to a String");
        o.push('\n');
    };
    let mbs = s.mailboxes(None, 1000)?;
    for m in &mbs {
        w(&mut o, format_args!("mailbox {m:?}"));
        w(
            &mut o,
            format_args!("  by name {:?}", s.mailbox(&m.name)?.map(|x| x.uniqueid)),
        );
        w(
            &mut o,
            format_args!(
                "  by guid {:?}",
                s.mailbox_by_guid(&m.guid)?.map(|x| x.uniqueid)
            ),
        );
        for r in s.records(&m.uniqueid, UidRange::ALL, 1000)? {
            w(&mut o, format_args!("  record {r:?}"));
        }
        w(
            &mut o,
            format_args!(
                "  page {:?}",
                s.records(&m.uniqueid, UidRange::ALL, 2)?.len()
            ),
        );
        w(
            &mut o,
            format_args!("  crcs {:?}", s.sync_crcs(&m.uniqueid)?),
        );
    }
    for i in 0..MAILBOXES {
        w(
            &mut o,
            format_args!(
                "by uniqueid {i}: {:?}",
                s.mailbox_by_uniqueid(&uniq(i))?.map(|m| m.name)
            ),
        );
    }
    w(&mut o, format_args!("users {:?}", s.users()?));
    for u in 0..USERS.len() {
        let u = user(u);
        let names: Vec<_> = s
            .mailboxes_of_user(&u)?
            .into_iter()
            .map(|m| m.name)
            .collect();
        w(&mut o, format_args!("{u} mailboxes {names:?}"));
        w(&mut o, format_args!("{u} seen {:?}", s.seen_of_user(&u)?));
        w(&mut o, format_args!("{u} subs {:?}", s.subscriptions(&u)?));
        w(&mut o, format_args!("{u} sieve {:?}", s.sieve_scripts(&u)?));
        w(&mut o, format_args!("{u} active {:?}", s.sieve_active(&u)?));
        w(
            &mut o,
            format_args!("{u} tombstones {:?}", s.tombstones_of_user(&u)?),
        );
    }
    for i in 0..NAMES.len() {
        let n = name(i);
        w(&mut o, format_args!("quota {n}: {:?}", s.quota(&n)?));
        w(
            &mut o,
            format_args!("tombstones {n}: {:?}", s.tombstones_named(&n)?),
        );
    }
    for i in 0..MESSAGES {
        let g = Guid::of(&message(i));
        let size = s.message_size(&g)?;
        let bytes = match size {
            Some(_) => Some(s.message_bytes(&g, 0, 1 << 20)?),
            None => None,
        };
        w(
            &mut o,
            format_args!("message {i}: {size:?} {:?}", bytes.map(|b| b == message(i))),
        );
    }
    w(
        &mut o,
        format_args!("server annotations {:?}", s.server_annotations()?),
    );
    for ch in ["", "squatter"] {
        w(
            &mut o,
            format_args!(
                "log {ch:?}: last {} {:?}",
                s.sync_log_last(ch)?,
                s.sync_log(ch, 0, 1000)?
            ),
        );
    }
    Ok(o)
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Batches written.
    pub batches: usize,
    /// Of those, accepted by both stores.
    pub accepted: usize,
    /// Syncs (each followed by a full comparison).
    pub syncs: usize,
    /// Reopens (each right after a sync).
    pub reopens: usize,
}

fn stage<S: StoreWrite + ?Sized>(s: &mut S, i: usize, corrupt: bool) -> Result<(), StoreError> {
    let b = message(i);
    let h = s.stage_begin(Guid::of(&b), b.len() as u64)?;
    let mut bytes = b.to_vec();
    if corrupt {
        bytes[0] ^= 1;
    }
    for c in bytes.chunks(11) {
        if let Err(e) = s.stage_chunk(h, c) {
            s.stage_abort(h);
            return Err(e);
        }
    }
    s.stage_end(h)
}

/// Run `steps` random steps from `seed` against `store` and a `MemStore`.
/// `reopen` closes the store and opens it again from its durable state
/// (for an in-memory store: a simulated crash); it is only called right
/// after a successful sync. Returns a description of the first
/// disagreement, with the seed and step to replay it.
pub fn run<S: StoreWrite>(
    mut store: S,
    seed: u64,
    steps: usize,
    mut reopen: impl FnMut(S) -> S,
) -> Result<Report, String> {
    let mut rng = Rng::new(seed);
    let mut mem = MemStore::default();
    let mut report = Report::default();
    let fail = |step: usize, what: String| format!("conformance seed {seed} step {step}: {what}");
    for step in 0..steps {
        match rng.below(10) {
            0 | 1 => {
                let i = rng.pick(MESSAGES);
                let corrupt = rng.chance(15);
                let a = stage(&mut mem, i, corrupt);
                let b = stage(&mut store, i, corrupt);
                if a.is_ok() != b.is_ok() {
                    return Err(fail(step, format!("staging: MemStore {a:?}, store {b:?}")));
                }
            }
            2..=7 => {
                let n = 1 + rng.pick(5);
                let batch = WriteBatch {
                    id: BatchId(step as u64 + 1),
                    mutations: (0..n).map(|_| mutation(&mut rng)).collect(),
                };
                report.batches += 1;
                let a = mem.write(&batch);
                let b = store.write(&batch);
                match (&a, &b) {
                    (Ok(()), Ok(())) => report.accepted += 1,
                    (Err(_), Err(_)) => {}
                    _ => {
                        return Err(fail(
                            step,
                            format!("batch {batch:?}: MemStore {a:?}, store {b:?}"),
                        ))
                    }
                }
            }
            8 => {
                mem.sync()
                    .map_err(|e| fail(step, format!("MemStore sync: {e}")))?;
                store
                    .sync()
                    .map_err(|e| fail(step, format!("store sync: {e}")))?;
                report.syncs += 1;
                compare(&mem, &store).map_err(|e| fail(step, e))?;
            }
            _ => {
                mem.sync()
                    .map_err(|e| fail(step, format!("MemStore sync: {e}")))?;
                store
                    .sync()
                    .map_err(|e| fail(step, format!("store sync: {e}")))?;
                mem.crash();
                store = reopen(store);
                report.reopens += 1;
                compare(&mem, &store).map_err(|e| fail(step, format!("after reopen: {e}")))?;
            }
        }
    }
    Ok(report)
}

fn compare<S: MailRead>(mem: &MemStore, store: &S) -> Result<(), String> {
    let a = dump(mem).map_err(|e| format!("MemStore read: {e}"))?;
    let b = dump(store).map_err(|e| format!("store read: {e}"))?;
    if a == b {
        return Ok(());
    }
    let diff: Vec<String> = a
        .lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .take(3)
        .map(|(x, y)| format!("\n  MemStore: {x}\n  store:    {y}"))
        .collect();
    Err(format!("durable states differ:{}", diff.concat()))
}
