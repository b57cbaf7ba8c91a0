//! dsync brains back to back on MemStores for the rules session 3 added
//! (engine::dsync module doc): mailbox attributes (METADATA `A` records)
//! merged as Dovecot 2.3 merges them, two independent non-INBOX mailboxes
//! of one name kept apart, and a message's UID settling on the highest
//! any of three replicas gave it (the simulator's seed-13 chase).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use engine::dsync::{Brain, Event, Mode, Options, Outcome, Role};
use engine::harness::{Pair, Resolution};
use engine::memstore::MemStore;
use engine::model::{
    AnnotationEntry, AnnotationOwner, AnnotationValue, Guid, Mailbox, MailboxGuid, MailboxName,
    ModSeq, Partition, Record, Uid, UidValidity, UniqueId, UnixTime, UserId,
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
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1 << 40);
    let b = WriteBatch {
        id: BatchId(N.fetch_add(1, Ordering::Relaxed)),
        mutations: muts,
    };
    let c = commit(&mut *st.borrow_mut(), &b);
    c.into_proof(b.id).expect("test write is durable");
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
    write(st, vec![Mutation::PutMailbox(mb.clone())]);
    mb
}

fn mailbox(st: &Store, n: &str) -> Mailbox {
    st.borrow()
        .durable()
        .mailbox(&name(n))
        .unwrap()
        .expect("mailbox exists")
}

fn deliver(st: &Store, n: &str, msgid: &str, at: i64) -> u32 {
    let mut mb = mailbox(st, n);
    let b = Bytes::from(format!("Message-ID: <{msgid}>\r\n\r\nbody {msgid}\r\n"));
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

fn set_attr(st: &Store, n: &str, entry: &str, owner: AnnotationOwner, value: &str) {
    let mut mb = mailbox(st, n);
    mb.highestmodseq = ModSeq(mb.highestmodseq.0 + 1);
    let e = AnnotationEntry::new(entry).unwrap();
    let v = AnnotationValue {
        modseq: mb.highestmodseq,
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    mb.annotations.set(e, owner, v);
    write(st, vec![Mutation::PutMailbox(mb)]);
}

fn attrs(st: &Store, n: &str) -> Vec<(String, String, String)> {
    mailbox(st, n)
        .annotations
        .iter()
        .map(|(e, o, v)| {
            (
                String::from_utf8_lossy(e.as_bytes()).into_owned(),
                String::from_utf8_lossy(o.as_bytes()).into_owned(),
                String::from_utf8_lossy(&v.value).into_owned(),
            )
        })
        .collect()
}

/// Mailboxes (name, GUID) and live messages (mailbox, UID, GUID).
fn dump(st: &Store) -> Vec<String> {
    let s = st.borrow();
    let d = s.durable();
    let mut out = Vec::new();
    for mb in d.mailboxes_of_user(&user()).unwrap() {
        out.push(format!("B {} {}", mb.name.to_lossy(), mb.guid));
        for r in d.records(&mb.uniqueid, UidRange::ALL, usize::MAX).unwrap() {
            if !r.expunged {
                out.push(format!(
                    "M {} {} {}",
                    mb.name.to_lossy(),
                    r.uid.get(),
                    r.guid
                ));
            }
        }
    }
    out.sort();
    out
}

fn run(a: &Store, b: &Store, mode: Mode, attributes: bool) -> (Outcome, Outcome) {
    let mut mo = Options::new(Role::Master, user());
    mo.mode = mode;
    mo.now = UnixTime(1000);
    mo.sync_attributes = attributes;
    let mut so = Options::new(Role::Slave, user());
    so.now = UnixTime(1000);
    so.sync_attributes = attributes;
    let mut pair = Pair::with_options(
        Brain::new(mo, a.clone()),
        Brain::new(so, b.clone()),
        engine::harness::Options {
            chunk_bytes_max: Some(7),
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
    let out = (fin(pair.events_a()), fin(pair.events_b()));
    assert_eq!(out.0.error, None);
    assert_eq!(out.1.error, None);
    out
}

fn resolve(st: &Store, e: &engine::store::StoreEffect) -> Resolution<engine::store::Completion> {
    match e {
        engine::store::StoreEffect::Write(b) => Resolution::now(commit(&mut *st.borrow_mut(), b)),
        other => panic!("unexpected effect {other:?}"),
    }
}

fn private() -> AnnotationOwner {
    AnnotationOwner::User(user())
}

#[test]
fn attributes_travel_both_ways_and_merge() {
    let a = new_store();
    let b = new_store();
    create(&a, "INBOX", 0x20, 7, 100);
    run(&a, &b, Mode::TwoWay, true);
    set_attr(&a, "INBOX", "/comment", private(), "from a");
    set_attr(
        &b,
        "INBOX",
        "/vendor/x",
        AnnotationOwner::Shared,
        "shared from b",
    );
    // Another user's private value never travels.
    let bob = AnnotationOwner::User(UserId::new("bob").unwrap());
    set_attr(&a, "INBOX", "/comment", bob, "bob's");
    run(&a, &b, Mode::TwoWay, true);
    let want_b = vec![
        ("/comment".into(), "alice".into(), "from a".into()),
        ("/vendor/x".into(), "".into(), "shared from b".into()),
    ];
    assert_eq!(attrs(&b, "INBOX"), want_b);
    assert_eq!(attrs(&a, "INBOX").len(), 3);
    // A conflicting change: the higher modseq wins on both sides (no
    // timestamps in corvid's stores), and a second run changes nothing.
    set_attr(&a, "INBOX", "/comment", private(), "a again");
    set_attr(&b, "INBOX", "/comment", private(), "b");
    set_attr(&b, "INBOX", "/comment", private(), "b twice");
    run(&a, &b, Mode::TwoWay, true);
    let get = |st: &Store| {
        attrs(st, "INBOX")
            .into_iter()
            .find(|(e, o, _)| e == "/comment" && o == "alice")
            .map(|t| t.2)
    };
    assert_eq!(get(&a), get(&b));
    let before = (attrs(&a, "INBOX"), attrs(&b, "INBOX"));
    run(&b, &a, Mode::TwoWay, true);
    assert_eq!(before, (attrs(&a, "INBOX"), attrs(&b, "INBOX")));
}

#[test]
fn attributes_off_sends_but_never_writes() {
    let a = new_store();
    let b = new_store();
    create(&a, "INBOX", 0x20, 7, 100);
    run(&a, &b, Mode::TwoWay, false);
    set_attr(&a, "INBOX", "/comment", private(), "x");
    run(&a, &b, Mode::TwoWay, false);
    assert!(attrs(&b, "INBOX").is_empty());
}

#[test]
fn backup_destination_takes_the_sources_attributes() {
    let a = new_store();
    let b = new_store();
    create(&a, "INBOX", 0x20, 7, 100);
    run(&a, &b, Mode::BackupSend, true);
    set_attr(&a, "INBOX", "/comment", private(), "source");
    set_attr(&b, "INBOX", "/comment", private(), "dest");
    set_attr(&b, "INBOX", "/only-dest", private(), "gone");
    set_attr(&b, "INBOX", "/only-dest", private(), "gone twice");
    // `a` is the master and the source: the slave `b` is the destination.
    run(&a, &b, Mode::BackupSend, true);
    assert_eq!(
        attrs(&b, "INBOX"),
        vec![("/comment".into(), "alice".into(), "source".into())]
    );
    assert_eq!(attrs(&a, "INBOX").len(), 1, "the source is never written");
}

#[test]
fn independent_mailboxes_of_one_name_are_kept_apart() {
    let a = new_store();
    let b = new_store();
    create(&a, "INBOX", 0x20, 7, 100);
    run(&a, &b, Mode::TwoWay, false);
    create(&a, "Archive", 0x11, 8, 100);
    create(&b, "Archive", 0x33, 9, 100);
    deliver(&a, "Archive", "from-a", 110);
    deliver(&b, "Archive", "from-b", 110);
    run(&a, &b, Mode::TwoWay, false);
    run(&b, &a, Mode::TwoWay, false);
    assert_eq!(dump(&a), dump(&b));
    let d = dump(&a);
    // The bigger GUID keeps the name; the smaller steps aside, with its
    // mail; both GUIDs live on.
    assert!(d.iter().any(|l| l.starts_with("B Archive 33")), "{d:?}");
    assert!(d.iter().any(|l| l.starts_with("B Archive-11")), "{d:?}");
    assert_eq!(d.iter().filter(|l| l.starts_with("M Archive")).count(), 2);
}

#[test]
fn a_uid_settles_on_the_highest_around_three_replicas() {
    // One message at three different UIDs on three replicas (each
    // delivered other mail first): every pair must agree on one UID that
    // the third accepts, not chase it upwards for ever.
    let n: Vec<Store> = (0..3).map(|_| new_store()).collect();
    create(&n[0], "INBOX", 0x20, 7, 100);
    run(&n[0], &n[1], Mode::TwoWay, false);
    run(&n[0], &n[2], Mode::TwoWay, false);
    for (k, st) in n.iter().enumerate() {
        for i in 0..k {
            deliver(st, "INBOX", &format!("local-{k}-{i}"), 110);
        }
    }
    // The same bytes (same GUID) delivered everywhere, at UIDs 1, 2, 3.
    for st in &n {
        deliver(st, "INBOX", "shared", 120);
    }
    for _ in 0..3 {
        run(&n[0], &n[1], Mode::TwoWay, false);
        run(&n[1], &n[2], Mode::TwoWay, false);
        run(&n[2], &n[0], Mode::TwoWay, false);
    }
    let before: Vec<Vec<String>> = n.iter().map(dump).collect();
    assert_eq!(before[0], before[1]);
    assert_eq!(before[1], before[2]);
    run(&n[0], &n[1], Mode::TwoWay, false);
    run(&n[1], &n[2], Mode::TwoWay, false);
    run(&n[2], &n[0], Mode::TwoWay, false);
    let after: Vec<Vec<String>> = n.iter().map(dump).collect();
    assert_eq!(before, after, "a further round changed UIDs");
}
