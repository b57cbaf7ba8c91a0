//! A `maildir::UserStore` batch interrupted by a crash at every durability
//! step loses no message it moves.
//!
//! The batch is the kind dsync writes: every INBOX message moves to a new
//! UID (expunge + append, as a UID renumbering does) and mailbox `Old` is
//! deleted while its messages are rescued into a new mailbox `Rescue`. A
//! child process (this binary, re-run as `batch_child`) aborts at the n-th
//! durability step (`Options::fault_abort_at`) for n = 0, 1, … until one
//! run gets through. After each crash the parent reopens the maildir as a
//! `UserStore` (which runs `recover`) and checks: all six messages are in
//! some mailbox with their flags, no intent file is left, and opening again
//! restores nothing more. A refused batch changes nothing at all.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use engine::model::{
    Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, SystemFlags, Uid, UidValidity,
    UniqueId, UnixTime, UserId,
};
use engine::store::{commit, BatchId, MailRead, Mutation, StoreWrite, UidRange, WriteBatch};
use store::maildir::{Append, Create, Maildir, Name, Options, UserStore};

const CHILD_DIR: &str = "CORVID_MAILDIR_BATCH_DIR";
const CHILD_AT: &str = "CORVID_MAILDIR_BATCH_AT";

fn user() -> UserId {
    UserId::new("alice").unwrap()
}

fn body(i: u32) -> Vec<u8> {
    format!("Subject: message {i}\nMessage-ID: <m{i}@example>\n\nbody {i}\n").into_bytes()
}

fn all_sha1() -> BTreeSet<Guid> {
    (0..6).map(|i| Guid::of(&body(i))).collect()
}

/// INBOX holds messages 0..3 (0 is \Seen), `Old` holds 3..6.
fn setup(dir: &Path) {
    let md = Maildir::open(dir, Options::default()).unwrap();
    let old = Name::new("Old").unwrap();
    md.create(&old, Create::default()).unwrap();
    for i in 0..6 {
        let to = if i < 3 { Name::inbox() } else { old.clone() };
        let how = Append {
            flags: if i == 0 {
                SystemFlags::SEEN
            } else {
                SystemFlags::empty()
            },
            ..Append::default()
        };
        md.append(&to, &mut &body(i)[..], &how).unwrap();
    }
}

/// The batch: renumber INBOX, delete `Old` and rescue its mail.
fn the_batch(st: &UserStore) -> WriteBatch {
    let inbox = st
        .mailbox(&MailboxName::new("INBOX").unwrap())
        .unwrap()
        .unwrap();
    let old = st
        .mailbox(&MailboxName::new("Old").unwrap())
        .unwrap()
        .unwrap();
    let mut muts = Vec::new();
    for r in st.records(&inbox.uniqueid, UidRange::ALL, 100).unwrap() {
        let mut gone = r.clone();
        gone.expunged = true;
        muts.push(Mutation::PutRecord {
            mailbox: inbox.uniqueid.clone(),
            record: gone,
        });
        let mut moved = r.clone();
        moved.uid = Uid::new(r.uid.get() + 10).unwrap();
        muts.push(Mutation::PutRecord {
            mailbox: inbox.uniqueid.clone(),
            record: moved,
        });
    }
    let g = MailboxGuid::from_bytes([7; 16]);
    let mut rescue = Mailbox::new(
        UniqueId::from_mailbox_guid(&g),
        g,
        MailboxName::new("Rescue").unwrap(),
        Some(user()),
        UidValidity::new(77).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(100),
    );
    let recs = st.records(&old.uniqueid, UidRange::ALL, 100).unwrap();
    rescue.last_uid = recs.len() as u32;
    muts.push(Mutation::PutMailbox(rescue.clone()));
    for (i, r) in recs.into_iter().enumerate() {
        let mut r = r;
        r.uid = Uid::new(i as u32 + 1).unwrap();
        muts.push(Mutation::PutRecord {
            mailbox: rescue.uniqueid.clone(),
            record: r,
        });
    }
    muts.push(Mutation::DeleteMailbox {
        uniqueid: old.uniqueid.clone(),
        at: UnixTime(200),
        modseq: ModSeq(1),
    });
    WriteBatch {
        id: BatchId(1),
        mutations: muts,
    }
}

#[test]
fn batch_child() {
    let (Ok(dir), Ok(at)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_AT)) else {
        return; // Not a child run.
    };
    let opts = Options {
        fault_abort_at: Some(at.parse().unwrap()),
        ..Options::default()
    };
    let mut st = UserStore::new(Maildir::open(&dir, opts).unwrap(), user());
    let b = the_batch(&st);
    commit(&mut st, &b).into_proof(b.id).expect("batch applied");
    println!("\nDONE");
}

/// Every message's SHA-1 with its flag bits, over all mailboxes.
fn contents(st: &UserStore) -> Vec<(Guid, u8)> {
    let mut out = Vec::new();
    for mb in st.mailboxes_of_user(&user()).unwrap() {
        for r in st.records(&mb.uniqueid, UidRange::ALL, 1000).unwrap() {
            out.push((r.guid, r.flags.system.bits()));
        }
    }
    out.sort();
    out
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("corvid-batch."))
        .collect()
}

#[test]
fn a_crash_at_any_step_of_a_batch_loses_no_moved_message() {
    let exe = std::env::current_exe().unwrap();
    let mut crashes = 0;
    let mut finished = false;
    let mut needed_recovery = 0;
    for at in 0..400u64 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("Maildir");
        setup(&dir);
        let out = Command::new(&exe)
            .args(["--exact", "batch_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(CHILD_AT, at.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let done = String::from_utf8_lossy(&out.stdout).contains("\nDONE");
        if done {
            assert!(out.status.success());
        } else {
            assert!(
                !out.status.success(),
                "child stopped early without crashing"
            );
            crashes += 1;
        }
        // What a reader sees before recovery (a plain Maildir does not
        // recover): the crash may have left moved messages only in pins.
        let raw = Maildir::open(&dir, Options::default()).unwrap();
        let present: BTreeSet<String> = raw
            .list()
            .unwrap()
            .iter()
            .flat_map(|n| raw.messages(n).unwrap())
            .filter_map(|m| m.sha1.map(|g| g.to_hex()))
            .collect();
        if present.len() < 6 {
            needed_recovery += 1;
        }
        drop(raw);
        // Reopen: recovery runs.
        let st = UserStore::new(Maildir::open(&dir, Options::default()).unwrap(), user());
        let have = contents(&st);
        let sha: BTreeSet<Guid> = have.iter().map(|(g, _)| *g).collect();
        assert_eq!(sha, all_sha1(), "crash at step {at}: a message was lost");
        let seen = Guid::of(&body(0));
        assert!(
            have.iter()
                .any(|(g, f)| *g == seen && *f == SystemFlags::SEEN.bits()),
            "crash at step {at}: message 0 lost its \\Seen flag: {have:?}"
        );
        assert!(
            leftovers(&dir).is_empty(),
            "crash at step {at}: intent left"
        );
        assert_eq!(st.recover().unwrap(), 0, "recovery is idempotent");
        if done {
            // A whole batch: exactly the batch's result, nothing doubled.
            assert_eq!(have.len(), 6, "{have:?}");
            assert!(st
                .mailbox(&MailboxName::new("Old").unwrap())
                .unwrap()
                .is_none());
            finished = true;
            break;
        }
    }
    assert!(finished, "never got through a whole batch");
    assert!(crashes >= 10, "only {crashes} crash points exercised");
    // The test reaches the window recovery exists for.
    assert!(
        needed_recovery > 0,
        "no crash left a moved message only in a pin"
    );
    eprintln!("{crashes} crashes, {needed_recovery} repaired by recovery");
}

#[test]
fn a_refused_batch_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    setup(&dir);
    let mut st = UserStore::new(Maildir::open(&dir, Options::default()).unwrap(), user());
    let before = contents(&st);
    let mut b = the_batch(&st);
    // A record of an unknown mailbox makes the whole batch invalid.
    let bogus = Guid::of(b"never stored");
    b.mutations.push(Mutation::PutRecord {
        mailbox: UniqueId::from_mailbox_guid(&MailboxGuid::from_bytes([9; 16])),
        record: engine::model::Record::new(Uid::new(1).unwrap(), ModSeq(1), bogus, 1, UnixTime(1)),
    });
    assert!(st.write(&b).is_err());
    assert_eq!(contents(&st), before);
    assert!(st
        .mailbox(&MailboxName::new("Old").unwrap())
        .unwrap()
        .is_some());
    assert!(st
        .mailbox(&MailboxName::new("Rescue").unwrap())
        .unwrap()
        .is_none());
    assert!(leftovers(&dir).is_empty());
}
