//! dsync brains back to back on MemStores (pair harness, virtual time):
//! every scenario of the lab transcripts (`research/transcripts/dsync-*`)
//! plus the four where Dovecot 2.3 loses or diverges. Each test checks
//! exactly what both sides hold afterwards: same mailboxes (name, GUID,
//! UIDVALIDITY), same messages (UID, body, flags), nothing lost, nothing
//! duplicated, within at most two runs.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use bytes::Bytes;
use engine::dsync::{Brain, Event, Mode, Options, Outcome, Role, SyncState};
use engine::harness::{Pair, Resolution};
use engine::memstore::MemStore;
use engine::model::{
    Flags, Guid, Keyword, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, Record,
    Subscription, SystemFlags, Uid, UidValidity, UniqueId, UnixTime, UserId,
};
use engine::store::{commit, BatchId, MailRead, Mutation, UidRange, WriteBatch};

type Store = Rc<RefCell<MemStore>>;

fn user() -> UserId {
    UserId::new("alice").unwrap()
}

fn name(s: &str) -> MailboxName {
    MailboxName::new(s).unwrap()
}

fn new_store() -> Store {
    Rc::new(RefCell::new(MemStore::default()))
}

fn write(st: &Store, muts: Vec<Mutation>) {
    let b = WriteBatch {
        id: BatchId(rand_id()),
        mutations: muts,
    };
    let c = commit(&mut *st.borrow_mut(), &b);
    assert!(c.batch_id().is_some());
    c.into_proof(b.id).expect("test write is durable");
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1 << 40);
    N.fetch_add(1, Ordering::Relaxed)
}

fn create(st: &Store, mbname: &str, guid: u8, uidvalidity: u32, at: i64) -> Mailbox {
    let mut g = [0u8; 16];
    g[0] = guid;
    g[15] = 0x5a;
    let g = MailboxGuid::from_bytes(g);
    let mb = Mailbox::new(
        UniqueId::from_mailbox_guid(&g),
        g,
        name(mbname),
        Some(user()),
        UidValidity::new(uidvalidity).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(at),
    );
    write(
        st,
        vec![
            Mutation::PutMailbox(mb.clone()),
            Mutation::SetSubscription {
                user: user(),
                name: name(mbname),
                subscription: Subscription {
                    subscribed: true,
                    changed_at: UnixTime(at),
                },
            },
        ],
    );
    mb
}

fn mailbox(st: &Store, n: &str) -> Mailbox {
    st.borrow()
        .durable()
        .mailbox(&name(n))
        .unwrap()
        .expect("mailbox exists")
}

fn body(msgid: &str) -> Bytes {
    Bytes::from(format!(
        "From: a@example.com\r\nMessage-ID: <{msgid}>\r\nSubject: {msgid}\r\n\r\nbody of {msgid}\r\n.dot line\r\n"
    ))
}

/// Deliver a message with the next UID, at time `at`.
fn deliver(st: &Store, n: &str, msgid: &str, at: i64) -> u32 {
    let mut mb = mailbox(st, n);
    let b = body(msgid);
    let uid = mb.last_uid + 1;
    mb.last_uid = uid;
    mb.highestmodseq = ModSeq(mb.highestmodseq.0 + 1);
    let mut r = Record::new(
        Uid::new(uid).unwrap(),
        mb.highestmodseq,
        Guid::of(&b),
        b.len() as u64,
        UnixTime(at),
    );
    r.savedate = UnixTime(at);
    write(
        st,
        vec![
            Mutation::PutMessage {
                guid: Guid::of(&b),
                bytes: b,
            },
            Mutation::PutRecord {
                mailbox: mb.uniqueid.clone(),
                record: r,
            },
            Mutation::PutMailbox(mb),
        ],
    );
    uid
}

fn set_flags(st: &Store, n: &str, uid: u32, system: SystemFlags, kws: &[&str]) {
    let mut mb = mailbox(st, n);
    let mut r = st
        .borrow()
        .durable()
        .record(&mb.uniqueid, Uid::new(uid).unwrap())
        .unwrap()
        .unwrap();
    mb.highestmodseq = ModSeq(mb.highestmodseq.0 + 1);
    r.flags = Flags::with(system, kws.iter().map(|k| Keyword::new(k).unwrap()));
    r.modseq = mb.highestmodseq;
    write(
        st,
        vec![
            Mutation::PutRecord {
                mailbox: mb.uniqueid.clone(),
                record: r,
            },
            Mutation::PutMailbox(mb),
        ],
    );
}

fn expunge(st: &Store, n: &str, uid: u32) {
    let mut mb = mailbox(st, n);
    let mut r = st
        .borrow()
        .durable()
        .record(&mb.uniqueid, Uid::new(uid).unwrap())
        .unwrap()
        .unwrap();
    mb.highestmodseq = ModSeq(mb.highestmodseq.0 + 1);
    r.expunged = true;
    r.modseq = mb.highestmodseq;
    write(
        st,
        vec![
            Mutation::PutRecord {
                mailbox: mb.uniqueid.clone(),
                record: r,
            },
            Mutation::PutMailbox(mb),
        ],
    );
}

/// Everything a user would see: mailboxes (name, GUID, UIDVALIDITY,
/// subscribed) and live messages (mailbox, UID, Message-ID, flags).
fn dump(st: &Store) -> Vec<String> {
    let s = st.borrow();
    let d = s.durable();
    let mut out = Vec::new();
    let subs: BTreeSet<MailboxName> = d
        .subscriptions(&user())
        .unwrap()
        .into_iter()
        .filter(|(_, s)| s.subscribed)
        .map(|(n, _)| n)
        .collect();
    for mb in d.mailboxes_of_user(&user()).unwrap() {
        out.push(format!(
            "B {} guid={} uidvalidity={} sub={}",
            mb.name.to_lossy(),
            mb.guid,
            mb.uidvalidity.get(),
            subs.contains(&mb.name)
        ));
        for r in d.records(&mb.uniqueid, UidRange::ALL, usize::MAX).unwrap() {
            if r.expunged {
                continue;
            }
            let bytes = d.message_bytes(&r.guid, 0, 1 << 20).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let msgid = text
                .split("Message-ID: <")
                .nth(1)
                .and_then(|t| t.split('>').next())
                .unwrap_or("?");
            let mut kws: Vec<String> = r
                .flags
                .folded_keywords()
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect();
            kws.sort();
            out.push(format!(
                "M {} uid={} <{}> flags={:02x}{:?}",
                mb.name.to_lossy(),
                r.uid.get(),
                msgid,
                r.flags.system.bits(),
                kws
            ));
        }
    }
    out.sort();
    out
}

/// Message-IDs of live messages per mailbox name.
fn messages(st: &Store) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = dump(st)
        .into_iter()
        .filter(|l| l.starts_with("M "))
        .map(|l| {
            let mut p = l.split(' ');
            p.next();
            let mb = p.next().unwrap().to_string();
            p.next();
            (mb, p.next().unwrap().to_string())
        })
        .collect();
    v.sort();
    v
}

struct Run {
    master: Outcome,
    slave: Outcome,
    notes: Vec<String>,
}

fn run(a: &Store, b: &Store, mode: Mode, state: Option<SyncState>, now: i64) -> Run {
    let mut mo = Options::new(Role::Master, user());
    mo.mode = mode;
    mo.state = state;
    mo.now = UnixTime(now);
    mo.hostname = "a".into();
    let mut so = Options::new(Role::Slave, user());
    so.now = UnixTime(now);
    so.hostname = "b".into();
    let ma = Brain::new(mo, a.clone());
    let mb = Brain::new(so, b.clone());
    let mut pair = Pair::with_options(
        ma,
        mb,
        engine::harness::Options {
            chunk_bytes_max: Some(97),
            ..Default::default()
        },
    );
    let (sa, sb) = (a.clone(), b.clone());
    pair.resolve_a(move |_, e| resolve(&sa, e));
    pair.resolve_b(move |_, e| resolve(&sb, e));
    pair.run_to_end();
    let fin = |evs: &[(engine::machine::Time, Event)]| {
        evs.iter()
            .find_map(|(_, e)| match e {
                Event::Finished(o) => Some(o.clone()),
                _ => None,
            })
            .expect("brain finished")
    };
    let notes = pair
        .events_a()
        .iter()
        .chain(pair.events_b())
        .filter_map(|(_, e)| match e {
            Event::Note(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    Run {
        master: fin(pair.events_a()),
        slave: fin(pair.events_b()),
        notes,
    }
}

fn resolve(st: &Store, e: &engine::store::StoreEffect) -> Resolution<engine::store::Completion> {
    match e {
        engine::store::StoreEffect::Write(b) => Resolution::now(commit(&mut *st.borrow_mut(), b)),
        other => panic!("unexpected effect {other:?}"),
    }
}

fn ok(r: &Run) {
    assert_eq!(r.master.error, None, "master error; notes {:?}", r.notes);
    assert_eq!(r.slave.error, None, "slave error; notes {:?}", r.notes);
}

fn assert_converged(a: &Store, b: &Store) {
    assert_eq!(dump(a), dump(b));
}

fn populated() -> Store {
    let a = new_store();
    create(&a, "INBOX", 0x12, 1000, 100);
    create(&a, "Sent", 0x10, 1001, 100);
    create(&a, "Archive/2024", 0x13, 1002, 100);
    deliver(&a, "INBOX", "m1", 110);
    deliver(&a, "INBOX", "m2", 111);
    deliver(&a, "INBOX", "m3", 112);
    set_flags(&a, "INBOX", 1, SystemFlags::SEEN, &[]);
    set_flags(&a, "INBOX", 2, SystemFlags::FLAGGED, &["$Important"]);
    deliver(&a, "Sent", "s1", 113);
    deliver(&a, "Archive/2024", "a1", 114);
    deliver(&a, "Archive/2024", "a2", 115);
    a
}

#[test]
fn initial_copies_everything_with_same_guids_and_uids() {
    let a = populated();
    let b = new_store();
    let r = run(&a, &b, Mode::TwoWay, None, 200);
    ok(&r);
    assert!(!r.master.changes_during_sync);
    assert_converged(&a, &b);
    assert_eq!(messages(&b).len(), 6);
    // A second run changes nothing.
    let before = dump(&a);
    ok(&run(&a, &b, Mode::TwoWay, None, 201));
    assert_eq!(dump(&a), before);
    assert_converged(&a, &b);
}

#[test]
fn new_mail_on_both_sides_in_different_mailboxes() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    deliver(&a, "INBOX", "m4", 300);
    deliver(&b, "Sent", "s2", 301);
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    assert!(messages(&a).contains(&("INBOX".into(), "<m4>".into())));
    assert_eq!(messages(&a).len(), 8);
}

#[test]
fn uid_conflict_keeps_both_messages_renumbered() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    let ua = deliver(&a, "INBOX", "from-a", 300);
    let ub = deliver(&b, "INBOX", "from-b", 301);
    assert_eq!((ua, ub), (4, 4));
    let r = run(&a, &b, Mode::TwoWay, None, 400);
    ok(&r);
    assert_converged(&a, &b);
    let d = dump(&a).join("\n");
    assert!(d.contains("<from-a>") && d.contains("<from-b>"), "{d}");
    assert!(!d.contains("uid=4 "), "UID 4 must not survive: {d}");
    assert_eq!(messages(&a).len(), 8);
}

#[test]
fn flag_conflict_resolves_deterministically_and_expunge_wins() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    set_flags(
        &a,
        "INBOX",
        1,
        SystemFlags::SEEN | SystemFlags::FLAGGED,
        &["work"],
    );
    set_flags(&b, "INBOX", 2, SystemFlags::ANSWERED, &["personal"]);
    set_flags(&b, "INBOX", 3, SystemFlags::DRAFT, &[]);
    expunge(&a, "INBOX", 3);
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    let d = dump(&b).join("\n");
    assert!(!d.contains("<m3>"), "expunge beats a flag change: {d}");
    assert!(d.contains("<m1> flags=12[\"work\"]"), "{d}");
    assert!(d.contains("<m2> flags=01[\"personal\"]"), "{d}");
}

#[test]
fn rename_on_one_side_new_mail_on_the_other() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    let mb = mailbox(&a, "Sent");
    write(
        &a,
        vec![
            Mutation::RenameMailbox {
                uniqueid: mb.uniqueid.clone(),
                new_name: name("Projects"),
                at: UnixTime(300),
                modseq: mb.highestmodseq,
            },
            Mutation::SetSubscription {
                user: user(),
                name: name("Projects"),
                subscription: Subscription {
                    subscribed: true,
                    changed_at: UnixTime(300),
                },
            },
        ],
    );
    deliver(&b, "Sent", "s2", 301);
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    let d = dump(&b).join("\n");
    assert!(d.contains("M Projects uid=2 <s2>"), "{d}");
    assert!(!d.contains("B Sent "), "{d}");
}

#[test]
fn delete_on_one_side_new_mail_on_the_other_keeps_the_mail() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    let mb = mailbox(&a, "Sent");
    write(
        &a,
        vec![Mutation::DeleteMailbox {
            uniqueid: mb.uniqueid.clone(),
            at: UnixTime(300),
            modseq: ModSeq(99),
        }],
    );
    deliver(&b, "Sent", "s-new", 350);
    let r1 = run(&a, &b, Mode::TwoWay, None, 400);
    ok(&r1);
    let r2 = run(&a, &b, Mode::TwoWay, None, 500);
    ok(&r2);
    assert_converged(&a, &b);
    let msgs = messages(&a);
    assert!(
        msgs.contains(&("Sent".into(), "<s-new>".into())),
        "{msgs:?} {:?}",
        r1.notes
    );
    let d = dump(&a).join("\n");
    assert!(
        d.contains("<s-new>") && !d.contains("<s1>"),
        "the delete wins for old mail, new mail survives: {d}"
    );
}

#[test]
fn independently_created_inboxes_merge_in_two_runs() {
    let a = new_store();
    let b = new_store();
    create(&a, "INBOX", 0x21, 500, 100);
    create(&b, "INBOX", 0x22, 600, 100);
    deliver(&a, "INBOX", "a1", 110);
    deliver(&a, "INBOX", "a2", 111);
    deliver(&b, "INBOX", "b1", 112);
    let r1 = run(&a, &b, Mode::TwoWay, None, 200);
    ok(&r1);
    let r2 = run(&a, &b, Mode::TwoWay, None, 300);
    ok(&r2);
    assert_converged(&a, &b);
    let d = dump(&a).join("\n");
    for m in ["<a1>", "<a2>", "<b1>"] {
        assert!(d.contains(m), "{m} lost: {d}");
    }
    assert_eq!(messages(&a).len(), 3, "{d}");
    assert_eq!(d.matches("B INBOX").count(), 1);
    // And it stays put.
    let r3 = run(&a, &b, Mode::TwoWay, None, 400);
    ok(&r3);
    assert!(!r3.master.changes_during_sync);
    assert_eq!(dump(&a).join("\n"), d);
}

#[test]
fn backup_over_a_diverged_destination_makes_it_identical() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::BackupSend, None, 200));
    assert_converged(&a, &b);
    // The destination diverges: local mail, flags, a new folder; the
    // source moves on too.
    deliver(&b, "INBOX", "dest-only", 300);
    set_flags(&b, "INBOX", 1, SystemFlags::DRAFT, &[]);
    create(&b, "Junk", 0x40, 777, 300);
    deliver(&a, "INBOX", "src-new", 301);
    let source_before = dump(&a);
    let r = run(&a, &b, Mode::BackupSend, None, 400);
    ok(&r);
    assert_eq!(dump(&a), source_before, "the source is never written");
    assert_converged(&a, &b);
    assert_eq!(messages(&b).iter().filter(|(m, _)| m == "INBOX").count(), 4);
    // Reverse direction (-R): the slave is the source.
    let c = new_store();
    let mut r = run(&c, &a, Mode::BackupRecv, None, 500);
    ok(&r);
    assert_converged(&a, &c);
    r = run(&c, &a, Mode::BackupRecv, None, 600);
    ok(&r);
    assert_eq!(dump(&a), source_before);
}

#[test]
fn equal_numbers_of_changes_on_both_sides_still_converge() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    // Same number of changes on each side (Dovecot's fast sync skips
    // INBOX here and exits 0 with the sides different).
    set_flags(&a, "INBOX", 1, SystemFlags::ANSWERED, &[]);
    set_flags(&b, "INBOX", 2, SystemFlags::DRAFT, &[]);
    deliver(&a, "INBOX", "fa", 300);
    deliver(&b, "INBOX", "fb", 300);
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    assert_eq!(messages(&a).len(), 8);
}

#[test]
fn stateful_incremental_sync() {
    let a = populated();
    let b = new_store();
    let r = run(&a, &b, Mode::TwoWay, Some(SyncState::default()), 200);
    ok(&r);
    let st = r.master.state.clone().expect("a state");
    assert_eq!(st.mailboxes.len(), 3);
    let text = st.to_state_string();
    assert_eq!(SyncState::parse(&text).unwrap(), st);
    // Changes on both sides, then an incremental run from the state.
    deliver(&a, "INBOX", "m4", 300);
    set_flags(
        &a,
        "INBOX",
        1,
        SystemFlags::ANSWERED | SystemFlags::SEEN,
        &[],
    );
    expunge(&b, "Archive/2024", 1);
    deliver(&b, "Sent", "s2", 301);
    let r2 = run(&a, &b, Mode::TwoWay, Some(st), 400);
    ok(&r2);
    assert_converged(&a, &b);
    let d = dump(&a).join("\n");
    assert!(
        d.contains("<m4>") && d.contains("<s2>") && !d.contains("<a1>"),
        "{d}"
    );
    assert!(d.contains("<m1> flags=11"), "{d}");
    // Again from the new state: nothing to do.
    let before = dump(&a);
    let r3 = run(&a, &b, Mode::TwoWay, r2.master.state.clone(), 500);
    ok(&r3);
    assert_eq!(dump(&a), before);
    assert_converged(&a, &b);
}

#[test]
fn subscriptions_follow_the_newer_change() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    write(
        &b,
        vec![Mutation::SetSubscription {
            user: user(),
            name: name("Sent"),
            subscription: Subscription {
                subscribed: false,
                changed_at: UnixTime(300),
            },
        }],
    );
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    assert!(dump(&a)
        .iter()
        .any(|l| l.starts_with("B Sent ") && l.ends_with("sub=false")));
}

/// `dsync-concurrent-delivery`: mail delivered to the slave while it
/// imports (after it planned, before the bodies arrive). Nothing is
/// overwritten or lost; the run reports changes during sync (exit 2) and
/// the next run converges.
#[test]
fn concurrent_delivery_during_sync_is_kept_and_converges() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    for i in 0..5 {
        deliver(&a, "INBOX", &format!("new-a{i}"), 300);
    }
    // A flag change B must adopt makes B write a flags-only batch right
    // after planning INBOX: the delivery is injected at that moment.
    set_flags(&a, "INBOX", 3, SystemFlags::ANSWERED, &[]);
    let mut mo = Options::new(Role::Master, user());
    mo.now = UnixTime(400);
    let mut so = Options::new(Role::Slave, user());
    so.now = UnixTime(400);
    let mut pair = Pair::new(Brain::new(mo, a.clone()), Brain::new(so, b.clone()));
    let (sa, sb) = (a.clone(), b.clone());
    let injected = Rc::new(std::cell::Cell::new(false));
    let inj = injected.clone();
    pair.resolve_a(move |_, e| resolve(&sa, e));
    pair.resolve_b(move |_, e| {
        if let engine::store::StoreEffect::Write(batch) = e {
            // (Records, plus the mailbox row whose counters cover them.)
            let flags_only = batch
                .mutations
                .iter()
                .any(|m| matches!(m, Mutation::PutRecord { .. }))
                && batch
                    .mutations
                    .iter()
                    .all(|m| matches!(m, Mutation::PutRecord { .. } | Mutation::PutMailbox(_)))
                && !batch
                    .mutations
                    .iter()
                    .any(|m| matches!(m, Mutation::PutMessage { .. }));
            if flags_only && !inj.get() {
                deliver(&sb, "INBOX", "concurrent", 401);
                inj.set(true);
            }
        }
        resolve(&sb, e)
    });
    pair.run_to_end();
    assert!(injected.get(), "the delivery happened during the sync");
    let slave = pair
        .events_b()
        .iter()
        .find_map(|(_, e)| match e {
            Event::Finished(o) => Some(o.clone()),
            _ => None,
        })
        .unwrap();
    assert!(slave.changes_during_sync, "the slave says: run again");
    let d = dump(&b).join("\n");
    assert!(
        d.contains("<concurrent>"),
        "the concurrent delivery survives: {d}"
    );
    assert!(d.contains("<new-a0>"), "{d}");
    ok(&run(&a, &b, Mode::TwoWay, None, 500));
    ok(&run(&a, &b, Mode::TwoWay, None, 600));
    assert_converged(&a, &b);
    assert_eq!(messages(&a).len(), 6 + 5 + 1);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Deliver {
            b_side: bool,
            mailbox: usize,
        },
        Flag {
            b_side: bool,
            mailbox: usize,
            nth: usize,
            bits: u8,
        },
        Expunge {
            b_side: bool,
            mailbox: usize,
            nth: usize,
        },
    }

    const MAILBOXES: [&str; 3] = ["INBOX", "Sent", "Archive/2024"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), 0..3usize)
                .prop_map(|(b_side, mailbox)| Op::Deliver { b_side, mailbox }),
            (any::<bool>(), 0..3usize, 0..8usize, 0..32u8).prop_map(
                |(b_side, mailbox, nth, bits)| Op::Flag {
                    b_side,
                    mailbox,
                    nth,
                    bits
                }
            ),
            (any::<bool>(), 0..3usize, 0..8usize).prop_map(|(b_side, mailbox, nth)| Op::Expunge {
                b_side,
                mailbox,
                nth
            }),
        ]
    }

    fn live_uids(st: &Store, n: &str) -> Vec<u32> {
        let mb = mailbox(st, n);
        st.borrow()
            .durable()
            .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| !r.expunged)
            .map(|r| r.uid.get())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any concurrent changes on both sides: two runs converge, every
        /// delivered message that nobody expunged is on both sides exactly
        /// once, and a third run changes nothing.
        #[test]
        fn any_changes_converge_in_two_runs(ops in proptest::collection::vec(op(), 0..24)) {
            let a = populated();
            let b = new_store();
            ok(&run(&a, &b, Mode::TwoWay, None, 200));
            let mut expected: BTreeSet<String> =
                messages(&a).into_iter().map(|(_, m)| m).collect();
            for (i, op) in ops.iter().enumerate() {
                let t = 300 + i as i64;
                match op {
                    Op::Deliver { b_side, mailbox } => {
                        let st = if *b_side { &b } else { &a };
                        let id = format!("p{i}");
                        deliver(st, MAILBOXES[*mailbox], &id, t);
                        expected.insert(format!("<{id}>"));
                    }
                    Op::Flag { b_side, mailbox, nth, bits } => {
                        let st = if *b_side { &b } else { &a };
                        let uids = live_uids(st, MAILBOXES[*mailbox]);
                        if let Some(u) = uids.get(nth % uids.len().max(1)) {
                            set_flags(st, MAILBOXES[*mailbox], *u, SystemFlags::from_bits_truncate(*bits), &[]);
                        }
                    }
                    Op::Expunge { b_side, mailbox, nth } => {
                        let st = if *b_side { &b } else { &a };
                        let uids = live_uids(st, MAILBOXES[*mailbox]);
                        if let Some(u) = uids.get(nth % uids.len().max(1)) {
                            let mb = super::mailbox(st, MAILBOXES[*mailbox]);
                            let r = st.borrow().durable().record(&mb.uniqueid, Uid::new(*u).unwrap()).unwrap().unwrap();
                            let text = String::from_utf8_lossy(&st.borrow().durable().message_bytes(&r.guid, 0, 1 << 20).unwrap()).to_string();
                            let id = text.split("Message-ID: <").nth(1).unwrap().split('>').next().unwrap().to_string();
                            expunge(st, MAILBOXES[*mailbox], *u);
                            expected.remove(&format!("<{id}>"));
                        }
                    }
                }
            }
            let r1 = run(&a, &b, Mode::TwoWay, None, 1000);
            ok(&r1);
            let r2 = run(&a, &b, Mode::TwoWay, None, 1001);
            ok(&r2);
            prop_assert_eq!(dump(&a), dump(&b));
            let got: Vec<String> = messages(&a).into_iter().map(|(_, m)| m).collect();
            let set: BTreeSet<String> = got.iter().cloned().collect();
            prop_assert_eq!(set.len(), got.len(), "duplicates: {:?}", got);
            prop_assert_eq!(set, expected);
            let before = dump(&a);
            ok(&run(&a, &b, Mode::TwoWay, None, 1002));
            prop_assert_eq!(dump(&a), before);
        }
    }
}

/// An unsubscribe of a name whose mailbox is gone travels as a name-hash
/// tombstone (`D` unsubscribes, as Dovecot sends it) and wins over an older
/// subscribe on the other side; an older unsubscribe loses to a newer
/// subscribe.
#[test]
fn unsubscribe_tombstones_of_deleted_mailboxes() {
    let a = populated();
    let b = new_store();
    ok(&run(&a, &b, Mode::TwoWay, None, 200));
    let sent = mailbox(&a, "Sent");
    write(
        &a,
        vec![
            Mutation::DeleteMailbox {
                uniqueid: sent.uniqueid.clone(),
                at: UnixTime(300),
                modseq: ModSeq(sent.highestmodseq.0 + 1),
            },
            Mutation::SetSubscription {
                user: user(),
                name: name("Sent"),
                subscription: Subscription {
                    subscribed: false,
                    changed_at: UnixTime(300),
                },
            },
        ],
    );
    ok(&run(&a, &b, Mode::TwoWay, None, 400));
    assert_converged(&a, &b);
    let subscribed = |st: &Store, n: &str| {
        st.borrow()
            .durable()
            .subscriptions(&user())
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == name(n))
            .map(|(_, s)| (s.subscribed, s.changed_at.0))
    };
    assert_eq!(subscribed(&b, "Sent"), Some((false, 300)));
    assert!(st_has_no(&b, "Sent"));

    // A newer subscribe on B beats A's older unsubscribe tombstone.
    write(
        &b,
        vec![Mutation::SetSubscription {
            user: user(),
            name: name("Sent"),
            subscription: Subscription {
                subscribed: true,
                changed_at: UnixTime(500),
            },
        }],
    );
    ok(&run(&a, &b, Mode::TwoWay, None, 600));
    assert_eq!(subscribed(&a, "Sent"), Some((true, 500)));
    assert_eq!(subscribed(&b, "Sent"), Some((true, 500)));
}

fn st_has_no(st: &Store, n: &str) -> bool {
    st.borrow().durable().mailbox(&name(n)).unwrap().is_none()
}
