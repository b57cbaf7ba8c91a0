//! `engine::csync_client::Client` against corvid's own replica machine
//! (`engine::csync::Server`) in the pair harness, each over a MemStore:
//! a USER sync makes the replica equal to the master (mailboxes, records,
//! CRCs, seen, subscriptions, quota, Sieve); a second sync sends no
//! mailbox; a replica changed behind the master's back (split brain) is
//! repaired by the full update with copyback, after which both stores hold
//! the same records. Tests against ourselves are not the interop proof
//! (that is `bins/tests/sync_client_live.rs`), but they pin the algorithm.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use engine::csync::{AuthOk, Server};
use engine::csync_client::{jobs_from_log, Client, Command, Event, Options};
use engine::harness::{Pair, Resolution};
use engine::machine::CloseReason;
use engine::memstore::{MemStore, MemStoreOptions};
use engine::model::{
    Acl, Flags, Guid, Keyword, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, QuotaResource,
    QuotaRoot, Record, Seen, SeqSet, SieveName, SieveScript, Subscription, SyncLogLine,
    SystemFlags, Uid, UidValidity, UniqueId, UnixTime, UserId,
};
use engine::store::{commit, BatchId, EffectRunner, MailRead, Mutation, UidRange, WriteBatch};
use proto::sasl::{Credentials, Secret};

type Store = Rc<RefCell<MemStore>>;

fn store() -> Store {
    Rc::new(RefCell::new(MemStore::new(MemStoreOptions::default())))
}

fn write(s: &Store, muts: Vec<Mutation>) {
    let mut b = WriteBatch::new(BatchId(7));
    for m in muts {
        b.push(m);
    }
    let c = commit(&mut *s.borrow_mut(), &b);
    assert!(
        matches!(c, engine::store::Completion::Durable { .. }),
        "{c:?}"
    );
}

fn mailbox(name: &str, id: &str) -> Mailbox {
    let uniqueid = UniqueId::new(id).unwrap();
    let mut mb = Mailbox::new(
        uniqueid.clone(),
        MailboxGuid::derive_from_uniqueid(&uniqueid),
        MailboxName::new(name).unwrap(),
        Some(UserId::new("alice").unwrap()),
        UidValidity::new(1_700_000_000).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.acl = Acl::parse_cyrus(b"alice\tlrswipkxtecdan\t");
    mb
}

fn msg(n: u32) -> Bytes {
    Bytes::from(format!("Subject: {n}\r\n\r\nbody {n}\r\n"))
}

fn fill(mb: &mut Mailbox, uids: std::ops::RangeInclusive<u32>) -> Vec<Mutation> {
    let mut muts = Vec::new();
    let mut recs = Vec::new();
    for n in uids {
        let bytes = msg(n * 31 + mb.name.as_bytes().len() as u32);
        let guid = Guid::of(&bytes);
        mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
        let mut r = Record::new(
            Uid::new(n).unwrap(),
            mb.highestmodseq,
            guid,
            bytes.len() as u64,
            UnixTime(1_700_000_000 + n as i64),
        );
        r.last_updated = UnixTime(1_700_000_100);
        if n % 2 == 0 {
            r.flags = Flags::with(SystemFlags::SEEN, [Keyword::new("$Work").unwrap()]);
        }
        muts.push(Mutation::PutMessage { guid, bytes });
        recs.push(r);
        mb.last_uid = n;
    }
    muts.push(Mutation::PutMailbox(mb.clone()));
    for r in recs {
        muts.push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r,
        });
    }
    muts
}

fn master() -> (Store, Vec<Mailbox>) {
    let s = store();
    let mut inbox = mailbox("user.alice", "0001-inbox");
    let mut work = mailbox("user.alice.Work", "0002-work");
    let root = MailboxName::new("user.alice").unwrap();
    inbox.quotaroot = Some(root.clone());
    work.quotaroot = Some(root.clone());
    let mut m = fill(&mut inbox, 1..=5);
    m.extend(fill(&mut work, 1..=2));
    let alice = UserId::new("alice").unwrap();
    let mut q = QuotaRoot::default();
    q.limits.insert(QuotaResource::Storage, 5000);
    m.push(Mutation::PutQuota { root, quota: q });
    m.push(Mutation::SetSubscription {
        user: alice.clone(),
        name: work.name.clone(),
        subscription: Subscription {
            subscribed: true,
            changed_at: UnixTime(1),
        },
    });
    m.push(Mutation::PutSeen {
        user: alice.clone(),
        mailbox: inbox.uniqueid.clone(),
        seen: Seen {
            lastread: UnixTime(5),
            lastuid: 5,
            lastchange: UnixTime(5),
            seenuids: SeqSet::parse(b"1:3").unwrap(),
        },
    });
    m.push(Mutation::PutSieve {
        user: alice.clone(),
        script: SieveScript {
            name: SieveName::new("main").unwrap(),
            last_update: UnixTime(9),
            content: Bytes::from_static(b"keep;\r\n"),
        },
    });
    m.push(Mutation::ActivateSieve {
        user: alice,
        name: Some(SieveName::new("main").unwrap()),
    });
    write(&s, m);
    (s, vec![inbox, work])
}

fn run(master: &Store, replica: &Store, opts: Options, jobs: Vec<Command>) -> Vec<Event> {
    run_on(master, replica, opts, jobs, engine::csync::Flavour::Csync)
}

fn run_on(
    master: &Store,
    replica: &Store,
    opts: Options,
    jobs: Vec<Command>,
    server_flavour: engine::csync::Flavour,
) -> Vec<Event> {
    run_logged(master, replica, opts, jobs, server_flavour).0
}

/// As [`run_on`], with the pair's log (what each side sent).
fn run_logged(
    master: &Store,
    replica: &Store,
    opts: Options,
    jobs: Vec<Command>,
    server_flavour: engine::csync::Flavour,
) -> (Vec<Event>, String) {
    let client = Client::new(engine::machine::Time::ZERO, master.clone(), opts);
    let server = Server::new(
        engine::machine::Time::ZERO,
        replica.clone(),
        engine::csync::Options {
            partitions: vec!["default".into()],
            flavour: server_flavour,
            ..engine::csync::Options::default()
        },
    );
    let mut pair = Pair::new(client, server);
    let ms = master.clone();
    let mut mr = EffectRunner::new();
    pair.resolve_a(move |_, e| {
        let engine::csync_client::Effect::Store(e) = e.clone();
        match mr.run(&mut *ms.borrow_mut(), e) {
            Some(c) => Resolution::now(engine::csync_client::Completion::Store(c)),
            None => Resolution::Never,
        }
    });
    let rs = replica.clone();
    let mut rr = EffectRunner::new();
    pair.resolve_b(move |_, e| match e.clone() {
        engine::csync::Effect::Authenticate(c) => {
            Resolution::now(engine::csync::Completion::Auth(Some(AuthOk {
                userid: c.authcid.clone(),
                admin: true,
            })))
        }
        engine::csync::Effect::Store(e) => Resolution::now(engine::csync::Completion::Store(
            rr.run(&mut *rs.borrow_mut(), e),
        )),
    });
    for j in jobs {
        pair.command_a(j);
    }
    pair.command_a(Command::Exit);
    pair.run_to_end();
    assert_eq!(
        pair.closed_a(),
        Some(&CloseReason::Done),
        "{}",
        pair.log_text()
    );
    (
        pair.events_a().iter().map(|(_, e)| e.clone()).collect(),
        pair.log_text(),
    )
}

fn opts() -> Options {
    Options::new(Credentials {
        authzid: None,
        authcid: "repl".into(),
        password: Secret::new(b"replpass".to_vec()),
    })
}

fn records(s: &Store, id: &UniqueId) -> Vec<Record> {
    s.borrow().records(id, UidRange::ALL, usize::MAX).unwrap()
}

fn job_ok(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| {
            if let Event::JobDone { result, job } = e {
                assert!(result.is_ok(), "{job}: {result:?}");
                true
            } else {
                false
            }
        })
        .count()
}

fn same_records(a: &[Record], b: &[Record]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.uid, x.guid, x.modseq, &x.flags, x.expunged),
            (y.uid, y.guid, y.modseq, &y.flags, y.expunged)
        );
    }
}

#[test]
fn user_sync_makes_the_replica_equal() {
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    let ev = run(&m, &r, opts(), vec![Command::User(alice.clone())]);
    assert_eq!(job_ok(&ev), 1);
    for mb in &mbs {
        let rm = r
            .borrow()
            .mailbox_by_uniqueid(&mb.uniqueid)
            .unwrap()
            .unwrap();
        assert_eq!(rm.name, mb.name);
        assert_eq!(rm.last_uid, mb.last_uid);
        assert_eq!(rm.highestmodseq, mb.highestmodseq);
        same_records(&records(&m, &mb.uniqueid), &records(&r, &mb.uniqueid));
        assert_eq!(
            m.borrow().sync_crcs(&mb.uniqueid).unwrap(),
            r.borrow().sync_crcs(&mb.uniqueid).unwrap()
        );
    }
    let rb = r.borrow();
    assert_eq!(
        rb.seen_of_user(&alice).unwrap(),
        m.borrow().seen_of_user(&alice).unwrap()
    );
    assert!(rb
        .subscriptions(&alice)
        .unwrap()
        .iter()
        .any(|(n, s)| n.as_bytes() == b"user.alice.Work" && s.subscribed));
    let q = rb
        .quota(&MailboxName::new("user.alice").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(q.limits.get(&QuotaResource::Storage), Some(&5000));
    assert_eq!(rb.sieve_scripts(&alice).unwrap().len(), 1);
    assert_eq!(
        rb.sieve_active(&alice)
            .unwrap()
            .map(|n| n.as_bytes().to_vec()),
        Some(b"main".to_vec())
    );
    drop(rb);

    // Nothing changed: no mailbox is sent again.
    let ev = run(&m, &r, opts(), vec![Command::User(alice)]);
    assert_eq!(job_ok(&ev), 1);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::MailboxSynced { .. })),
        "{ev:?}"
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::MailboxUnchanged(_)))
            .count(),
        2
    );
}

#[test]
fn split_brain_is_repaired_by_copyback() {
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    run(&m, &r, opts(), vec![Command::User(alice.clone())]);
    let inbox = &mbs[0];
    // Behind the master's back: the replica flags UID 1 (newer modseq)
    // and gets a message of its own at UID 6.
    let mut rmb = r
        .borrow()
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    let mut r1 = records(&r, &inbox.uniqueid)[0].clone();
    rmb.highestmodseq = ModSeq(rmb.highestmodseq.get() + 1);
    r1.modseq = rmb.highestmodseq;
    r1.last_updated = UnixTime(1_700_009_999);
    r1.flags = Flags::with(SystemFlags::FLAGGED, []);
    let bytes = Bytes::from_static(b"Subject: replica only\r\n\r\nx\r\n");
    let guid = Guid::of(&bytes);
    rmb.highestmodseq = ModSeq(rmb.highestmodseq.get() + 1);
    rmb.last_uid = 6;
    let r6 = Record::new(
        Uid::new(6).unwrap(),
        rmb.highestmodseq,
        guid,
        bytes.len() as u64,
        UnixTime(1_700_000_600),
    );
    write(
        &r,
        vec![
            Mutation::PutMessage { guid, bytes },
            Mutation::PutMailbox(rmb),
            Mutation::PutRecord {
                mailbox: inbox.uniqueid.clone(),
                record: r1,
            },
            Mutation::PutRecord {
                mailbox: inbox.uniqueid.clone(),
                record: r6,
            },
        ],
    );
    let ev = run(
        &m,
        &r,
        opts(),
        vec![Command::Mailboxes(vec![inbox.name.clone()])],
    );
    assert_eq!(job_ok(&ev), 1);
    assert!(
        ev.iter().any(|e| matches!(e, Event::FullUpdate(_))),
        "{ev:?}"
    );
    let mine = records(&m, &inbox.uniqueid);
    same_records(&mine, &records(&r, &inbox.uniqueid));
    // The replica's flag won, its message was copied back with its UID.
    assert!(mine[0].flags.system.contains(SystemFlags::FLAGGED));
    assert_eq!(mine.last().unwrap().uid.get(), 6);
    assert_eq!(mine.last().unwrap().guid, guid);
    assert!(m.borrow().has_message(&guid).unwrap());
    assert_eq!(
        m.borrow().sync_crcs(&inbox.uniqueid).unwrap(),
        r.borrow().sync_crcs(&inbox.uniqueid).unwrap()
    );
}

#[test]
fn log_lines_coalesce_like_cyrus() {
    let u = |s: &str| UserId::new(s).unwrap();
    let n = |s: &str| MailboxName::new(s).unwrap();
    let lines = vec![
        SyncLogLine::Mailbox(n("user.bob")),
        SyncLogLine::Append(n("user.alice.Work")),
        SyncLogLine::Seen(u("carol"), UniqueId::new("x").unwrap()),
        SyncLogLine::Meta(u("bob")),
        SyncLogLine::User(u("bob")),
        SyncLogLine::Mailbox(n("shared.news")),
        SyncLogLine::Rename(n("user.alice.A"), n("user.alice.B")),
        SyncLogLine::Unmailbox(n("user.alice.Old")),
        SyncLogLine::Unuser(u("dave")),
    ];
    assert_eq!(
        jobs_from_log(&lines),
        vec![
            Command::Mailboxes(vec![n("shared.news")]),
            Command::Mailboxes(vec![
                n("user.alice.A"),
                n("user.alice.B"),
                n("user.alice.Work")
            ]),
            Command::Meta(u("carol")),
            Command::Unmailbox(n("user.alice.Old")),
            Command::User(u("bob")),
            Command::Unuser(u("dave")),
        ]
    );
}

#[test]
fn uploads_stream_in_small_chunks_and_batches() {
    // Tiny read chunks and two files per APPLY MESSAGE: the bytes the
    // replica verifies (SHA-1 per file) must still be exact.
    let (m, mbs) = master();
    let r = store();
    let mut o = opts();
    o.chunk_bytes = 3;
    o.upload_files_max = 2;
    let ev = run(
        &m,
        &r,
        o,
        vec![Command::User(UserId::new("alice").unwrap())],
    );
    assert_eq!(job_ok(&ev), 1);
    let uploaded: usize = ev
        .iter()
        .map(|e| match e {
            Event::MailboxSynced { uploaded, .. } => *uploaded,
            _ => 0,
        })
        .sum();
    assert_eq!(uploaded, 7);
    for mb in &mbs {
        same_records(&records(&m, &mb.uniqueid), &records(&r, &mb.uniqueid));
        for rec in records(&r, &mb.uniqueid) {
            assert!(r.borrow().has_message(&rec.guid).unwrap());
        }
    }
}

#[test]
fn local_only_and_rename_reach_the_replica() {
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    let mut o = opts();
    o.local_only = true;
    let ev = run(&m, &r, o, vec![Command::User(alice.clone())]);
    assert_eq!(job_ok(&ev), 1);
    // Rename Work on the master: the next USER sync renames it on the
    // replica (matched by uniqueid) and restarts.
    let work = &mbs[1];
    write(
        &m,
        vec![Mutation::RenameMailbox {
            uniqueid: work.uniqueid.clone(),
            new_name: MailboxName::new("user.alice.Projects").unwrap(),
            at: UnixTime(1_700_000_900),
            modseq: ModSeq(100),
        }],
    );
    let ev = run(&m, &r, opts(), vec![Command::User(alice)]);
    assert_eq!(job_ok(&ev), 1);
    let rm = r
        .borrow()
        .mailbox_by_uniqueid(&work.uniqueid)
        .unwrap()
        .unwrap();
    assert_eq!(rm.name.as_bytes(), b"user.alice.Projects");
    same_records(&records(&m, &work.uniqueid), &records(&r, &work.uniqueid));
}

mod converge {
    use super::*;
    use proptest::prelude::*;

    fn flags(bits: u8) -> Flags {
        let mut sys = SystemFlags::default();
        for (i, f) in [
            SystemFlags::SEEN,
            SystemFlags::FLAGGED,
            SystemFlags::ANSWERED,
        ]
        .into_iter()
        .enumerate()
        {
            if bits & (1 << i) != 0 {
                sys.insert(f);
            }
        }
        let kw = (bits & 8 != 0).then(|| Keyword::new("$Todo").unwrap());
        Flags::with(sys, kw)
    }

    /// Changes one side makes on its own: (uid index, new flag bits or
    /// expunge) and how many new messages it appends.
    fn side_changes(
        s: &Store,
        id: &UniqueId,
        edits: &[(usize, Option<u8>)],
        appends: u32,
        salt: u32,
    ) {
        let mut mb = s.borrow().mailbox_by_uniqueid(id).unwrap().unwrap();
        let recs = records(s, id);
        let mut muts = Vec::new();
        for (i, e) in edits {
            let mut r = recs[i % recs.len()].clone();
            if r.expunged {
                continue;
            }
            mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
            r.modseq = mb.highestmodseq;
            r.last_updated = UnixTime(1_700_100_000 + mb.highestmodseq.get() as i64);
            match e {
                Some(bits) => r.flags = flags(*bits),
                None => r.expunged = true,
            }
            muts.push(Mutation::PutRecord {
                mailbox: id.clone(),
                record: r,
            });
        }
        for k in 0..appends {
            let bytes = Bytes::from(format!("Subject: side {salt} {k}\r\n\r\n{salt}\r\n"));
            let guid = Guid::of(&bytes);
            mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
            mb.last_uid += 1;
            let r = Record::new(
                Uid::new(mb.last_uid).unwrap(),
                mb.highestmodseq,
                guid,
                bytes.len() as u64,
                UnixTime(1_700_200_000),
            );
            muts.push(Mutation::PutMessage { guid, bytes });
            muts.push(Mutation::PutRecord {
                mailbox: id.clone(),
                record: r,
            });
        }
        let mut all = vec![Mutation::PutMailbox(mb)];
        all.extend(muts);
        // PutRecord needs the mailbox; messages before records.
        all.sort_by_key(|m| match m {
            Mutation::PutMessage { .. } => 0,
            Mutation::PutMailbox(_) => 1,
            _ => 2,
        });
        write(s, all);
    }

    fn live(s: &Store, id: &UniqueId) -> Vec<(u32, Guid, Flags)> {
        records(s, id)
            .into_iter()
            .filter(|r| !r.expunged)
            .map(|r| (r.uid.get(), r.guid, r.flags))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever both sides did on their own after a sync (flag
        /// changes, expunges, appends — a split brain), the next sync
        /// leaves them with the same live messages and the same CRCs.
        #[test]
        fn both_sides_converge_after_a_split_brain(
            master_edits in proptest::collection::vec((0usize..8, proptest::option::of(0u8..16)), 0..4),
            replica_edits in proptest::collection::vec((0usize..8, proptest::option::of(0u8..16)), 0..4),
            master_appends in 0u32..3,
            replica_appends in 0u32..3,
        ) {
            let (m, mbs) = master();
            let r = store();
            let alice = UserId::new("alice").unwrap();
            run(&m, &r, opts(), vec![Command::User(alice.clone())]);
            let id = mbs[0].uniqueid.clone();
            side_changes(&m, &id, &master_edits, master_appends, 1);
            side_changes(&r, &id, &replica_edits, replica_appends, 2);
            let ev = run(&m, &r, opts(), vec![Command::User(alice.clone())]);
            for e in &ev {
                if let Event::JobDone { result, job } = e {
                    prop_assert!(result.is_ok(), "{}: {:?}", job, result);
                }
            }
            prop_assert_eq!(live(&m, &id), live(&r, &id));
            prop_assert_eq!(
                m.borrow().sync_crcs(&id).unwrap(),
                r.borrow().sync_crcs(&id).unwrap()
            );
            // Every message the replica had is still somewhere on ours.
            let ours: Vec<Guid> = live(&m, &id).into_iter().map(|x| x.1).collect();
            for (_, g, _) in live(&r, &id) {
                prop_assert!(ours.contains(&g));
            }
            // And a third sync is quiet.
            let ev = run(&m, &r, opts(), vec![Command::User(alice)]);
            prop_assert!(!ev.iter().any(|e| matches!(e, Event::MailboxSynced { .. })), "{:?}", ev);
        }
    }
}

/// The IMAP-embedded flavour (`sync_try_imap`): tagged SYNCGET/SYNCAPPLY
/// after an IMAP login that lists X-REPLICATION; the replica ends equal
/// and a second run sends nothing. A client that tries IMAP on a csync
/// service takes the csync banner in place.
#[test]
fn user_sync_over_the_imap_flavour() {
    use engine::csync::Flavour as ServerFlavour;
    use engine::csync_client::Flavour;
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    let mut o = opts();
    o.flavour = Flavour::Imap;
    let ev = run_on(
        &m,
        &r,
        o.clone(),
        vec![Command::User(alice.clone())],
        ServerFlavour::Imap,
    );
    assert!(ev.contains(&Event::Ready(Flavour::Imap)), "{ev:?}");
    assert_eq!(job_ok(&ev), 1);
    for mb in &mbs {
        same_records(&records(&m, &mb.uniqueid), &records(&r, &mb.uniqueid));
        assert_eq!(
            m.borrow().sync_crcs(&mb.uniqueid).unwrap(),
            r.borrow().sync_crcs(&mb.uniqueid).unwrap()
        );
    }
    let ev = run_on(
        &m,
        &r,
        o.clone(),
        vec![Command::User(alice.clone())],
        ServerFlavour::Imap,
    );
    assert_eq!(job_ok(&ev), 1);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::MailboxSynced { .. })),
        "{ev:?}"
    );
    // IMAP tried on the csync service: same connection, csync from there.
    let ev = run_on(&m, &r, o, vec![Command::User(alice)], ServerFlavour::Csync);
    assert!(ev.contains(&Event::Ready(Flavour::Csync)), "{ev:?}");
    assert_eq!(job_ok(&ev), 1);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::MailboxSynced { .. })),
        "{ev:?}"
    );
}

/// Both sides reach the same HIGHESTMODSEQ by different histories (a crash
/// failover) and the replica has nothing live: its SYNC_CRC is 0, which
/// Cyrus's `mailbox_crceq` takes as "unknown", so neither the client's
/// unchanged check nor the server's CRC check after APPLY MAILBOX sees the
/// difference. The client must go to the full update (simulator seeds
/// 3841, 6599, 7884).
#[test]
fn equal_modseq_split_brain_with_an_empty_replica_is_repaired() {
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    run(&m, &r, opts(), vec![Command::User(alice.clone())]);
    let inbox = mbs[0].clone();
    // The replica expunges all five (modseq 6..=10).
    let mut rmb = r
        .borrow()
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    let mut muts = Vec::new();
    for mut rec in records(&r, &inbox.uniqueid) {
        rmb.highestmodseq = ModSeq(rmb.highestmodseq.get() + 1);
        rec.modseq = rmb.highestmodseq;
        rec.expunged = true;
        muts.push(Mutation::PutRecord {
            mailbox: inbox.uniqueid.clone(),
            record: rec,
        });
    }
    muts.push(Mutation::PutMailbox(rmb.clone()));
    write(&r, muts);
    // The master appends five more (UIDs 6..=10, modseq 6..=10).
    let mut mmb = m
        .borrow()
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    write(&m, fill(&mut mmb, 6..=10));
    assert_eq!(mmb.highestmodseq, rmb.highestmodseq);
    assert_eq!(
        r.borrow().sync_crcs(&inbox.uniqueid).unwrap().basic,
        0,
        "nothing live on the replica"
    );
    let ev = run(
        &m,
        &r,
        opts(),
        vec![Command::Mailboxes(vec![inbox.name.clone()])],
    );
    assert_eq!(job_ok(&ev), 1);
    assert!(
        ev.iter().any(|e| matches!(e, Event::FullUpdate(_))),
        "{ev:?}"
    );
    let mine = records(&m, &inbox.uniqueid);
    // Live records equal; an expunged record's modseq may differ (the
    // replica keeps its own expunge).
    let live_of =
        |v: &[Record]| -> Vec<Record> { v.iter().filter(|x| !x.expunged).cloned().collect() };
    same_records(&live_of(&mine), &live_of(&records(&r, &inbox.uniqueid)));
    let live: Vec<u32> = mine
        .iter()
        .filter(|x| !x.expunged)
        .map(|x| x.uid.get())
        .collect();
    assert_eq!(live, vec![6, 7, 8, 9, 10]);
    assert_eq!(
        m.borrow().sync_crcs(&inbox.uniqueid).unwrap(),
        r.borrow().sync_crcs(&inbox.uniqueid).unwrap()
    );
    // And the next sync is quiet.
    let ev = run(&m, &r, opts(), vec![Command::Mailboxes(vec![inbox.name])]);
    assert!(
        ev.iter().any(|e| matches!(e, Event::MailboxUnchanged(_))),
        "{ev:?}"
    );
}

/// A replica mailbox of the user that the master neither holds nor buried
/// (a create acknowledged by a master that crashed before replicating it,
/// simulator seed 60) is copied back with its UIDs; Cyrus would leave it
/// stranded. With `-O` nothing is written here and the mailbox stays.
#[test]
fn replica_only_mailbox_is_copied_back_unless_no_copyback() {
    let (m, _) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    run(&m, &r, opts(), vec![Command::User(alice.clone())]);
    let mut lost = mailbox("user.alice.Lost", "0003-lost");
    write(&r, fill(&mut lost, 1..=3));
    let mut no_copyback = opts();
    no_copyback.no_copyback = true;
    let ev = run(&m, &r, no_copyback, vec![Command::User(alice.clone())]);
    assert_eq!(job_ok(&ev), 1);
    assert!(m.borrow().mailbox(&lost.name).unwrap().is_none());
    let ev = run(&m, &r, opts(), vec![Command::User(alice.clone())]);
    assert_eq!(job_ok(&ev), 1);
    let here = m
        .borrow()
        .mailbox_by_uniqueid(&lost.uniqueid)
        .unwrap()
        .expect("copied back");
    assert_eq!(here.name, lost.name);
    assert_eq!(here.uidvalidity, lost.uidvalidity);
    let mine = records(&m, &lost.uniqueid);
    same_records(&mine, &records(&r, &lost.uniqueid));
    assert_eq!(
        mine.iter().map(|x| x.uid.get()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Quiet afterwards.
    let ev = run(&m, &r, opts(), vec![Command::User(alice)]);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::MailboxSynced { .. } | Event::FullUpdate(_)))
            .count(),
        0,
        "{ev:?}"
    );
}

/// Scripts that have no `#sieve` mailbox here travel as `APPLY SIEVE`;
/// corvid's replica keeps them as scripts and, under SIEVE-MAILBOX, lists
/// none in GET USER. The client asks for the bytes (GET FETCH_SIEVE)
/// instead of sending them again on every run, and sends a changed script.
#[test]
fn scripts_without_a_sieve_mailbox_are_not_sent_again() {
    let (m, _) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    let mut plain = opts();
    plain.compress = false;
    let csync = engine::csync::Flavour::Csync;
    let (ev, log) = run_logged(
        &m,
        &r,
        plain.clone(),
        vec![Command::User(alice.clone())],
        csync,
    );
    assert_eq!(job_ok(&ev), 1);
    assert!(log.contains("APPLY SIEVE"), "{log}");
    let main = SieveName::new("main").unwrap();
    assert_eq!(r.borrow().sieve_active(&alice).unwrap(), Some(main.clone()));
    let (ev, log) = run_logged(
        &m,
        &r,
        plain.clone(),
        vec![Command::User(alice.clone())],
        csync,
    );
    assert_eq!(job_ok(&ev), 1);
    assert!(log.contains("GET FETCH_SIEVE"), "{log}");
    assert!(!log.contains("APPLY SIEVE"), "sent again:\n{log}");
    // A changed script goes (and stays active).
    write(
        &m,
        vec![Mutation::PutSieve {
            user: alice.clone(),
            script: SieveScript {
                name: main.clone(),
                last_update: UnixTime(10),
                content: Bytes::from_static(b"discard;\r\n"),
            },
        }],
    );
    let (ev, log) = run_logged(&m, &r, plain, vec![Command::User(alice.clone())], csync);
    assert_eq!(job_ok(&ev), 1);
    assert!(log.contains("APPLY SIEVE"), "{log}");
    let scripts = r.borrow().sieve_scripts(&alice).unwrap();
    assert_eq!(&scripts[0].content[..], b"discard;\r\n");
    assert_eq!(r.borrow().sieve_active(&alice).unwrap(), Some(main));
}

/// `sync_batchsize`: a mailbox with more new messages than the batch goes
/// as partial states (LAST_UID at the batch end, SYNC_CRC 0), the replica
/// read again between them; the end state equals a single sync's.
#[test]
fn batch_size_splits_a_large_update_into_partial_states() {
    let (m, mbs) = master();
    let r = store();
    let alice = UserId::new("alice").unwrap();
    let mut o = opts();
    o.batch_size = Some(2);
    let ev = run(&m, &r, o.clone(), vec![Command::User(alice.clone())]);
    assert_eq!(job_ok(&ev), 1);
    let inbox = &mbs[0];
    // INBOX has 5 new messages: 2 + 2 + 1; Work has 2: one APPLY.
    let synced: Vec<usize> = ev
        .iter()
        .filter_map(|e| match e {
            Event::MailboxSynced { name, records, .. } if *name == inbox.name => Some(*records),
            _ => None,
        })
        .collect();
    assert_eq!(synced, vec![2, 2, 1], "{ev:?}");
    same_records(&records(&m, &inbox.uniqueid), &records(&r, &inbox.uniqueid));
    assert_eq!(
        m.borrow().sync_crcs(&inbox.uniqueid).unwrap(),
        r.borrow().sync_crcs(&inbox.uniqueid).unwrap()
    );
    let rmb = r
        .borrow()
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    assert_eq!((rmb.last_uid, rmb.highestmodseq), (5, ModSeq(5)));
    let ev = run(&m, &r, o, vec![Command::User(alice)]);
    assert!(
        !ev.iter().any(|e| matches!(e, Event::MailboxSynced { .. })),
        "{ev:?}"
    );
}

/// Server annotations (sync log `ANNOTATION ""`): `GET ANNOTATION ""`,
/// then APPLY ANNOTATION for ours the replica lacks or holds otherwise,
/// UNANNOTATION for the replica's that we do not have.
#[test]
fn server_annotations_follow_the_log() {
    use engine::model::{AnnotationEntry, AnnotationOwner, AnnotationValue};
    let (m, _) = master();
    let r = store();
    let set = |s: &Store, entry: &str, value: &'static [u8]| {
        write(
            s,
            vec![Mutation::SetAnnotation {
                mailbox: None,
                entry: AnnotationEntry::new(entry).unwrap(),
                owner: AnnotationOwner::Shared,
                value: AnnotationValue {
                    modseq: ModSeq(0),
                    value: Bytes::from_static(value),
                },
            }],
        )
    };
    set(&m, "/motd", b"hello");
    set(&m, "/admin", b"root@example.org");
    set(&r, "/admin", b"someone@else");
    set(&r, "/comment", b"replica only");
    let jobs = jobs_from_log(&[SyncLogLine::Annotation(None)]);
    assert_eq!(jobs, vec![Command::Annotation(None)]);
    let ev = run(&m, &r, opts(), jobs.clone());
    assert_eq!(job_ok(&ev), 1);
    assert_eq!(
        r.borrow().server_annotations().unwrap(),
        m.borrow().server_annotations().unwrap()
    );
    let ev = run(&m, &r, opts(), jobs);
    assert_eq!(job_ok(&ev), 1);
}
