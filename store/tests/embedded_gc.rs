//! `Embedded::gc` removes messages no record refers to and files the index
//! does not know, and nothing else: referenced messages and messages
//! staged for a batch that has not linked them yet stay, and the store
//! verifies clean afterwards.

use bytes::Bytes;
use engine::model::*;
use engine::store::{commit, BatchId, Completion, MailRead, Mutation, WriteBatch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use store::embedded::{Embedded, Options};

fn options(dir: &Path) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    let mut o = Options::new(dir.join("conf"), parts);
    // gc needs the store to itself.
    o.exclusive = true;
    o
}

fn msg(i: u32) -> Bytes {
    Bytes::from(format!("Subject: {i}\r\n\r\ngc test {i}\r\n"))
}

fn file(dir: &Path, b: &[u8]) -> PathBuf {
    let hex = Guid::of(b).to_hex();
    dir.join("spool").join("corvid").join(&hex[..2]).join(hex)
}

fn uniq() -> UniqueId {
    UniqueId::new("gc-1").unwrap()
}

#[test]
fn gc_removes_only_unreferenced_and_unstaged_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Embedded::open(options(d)).unwrap();
    let mut mb = Mailbox::new(
        uniq(),
        MailboxGuid::from_bytes([3; 16]),
        MailboxName::new("user.gc").unwrap(),
        Some(UserId::new("gc").unwrap()),
        UidValidity::new(5).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1),
    );
    mb.last_uid = 2;
    // 1 and 2 have records (2 expunged: still referenced, as Cyrus keeps
    // expunged records); 3 and 4 are stored but referenced by nothing.
    let mut muts = vec![Mutation::PutMailbox(mb)];
    for i in 1..=4 {
        muts.push(Mutation::PutMessage {
            guid: Guid::of(&msg(i)),
            bytes: msg(i),
        });
    }
    for i in 1..=2 {
        let b = msg(i);
        let mut r = Record::new(
            Uid::new(i).unwrap(),
            ModSeq(i as u64),
            Guid::of(&b),
            b.len() as u64,
            UnixTime(1),
        );
        r.expunged = i == 2;
        muts.push(Mutation::PutRecord {
            mailbox: uniq(),
            record: r,
        });
    }
    let c = commit(
        &mut s,
        &WriteBatch {
            id: BatchId(1),
            mutations: muts,
        },
    );
    assert!(matches!(c, Completion::Durable { .. }), "{c:?}");
    assert_eq!(s.reader().verify().unwrap().unreferenced_messages, 2);
    // An upload of 4 is staged (a client was told "missing" and sent it;
    // its APPLY MAILBOX has not come yet): 4 must survive.
    let m4 = msg(4);
    s.stage_from(Guid::of(&m4), m4.len() as u64, &m4[..])
        .unwrap();
    // A crash leftover: a published file the index never got.
    let stray = msg(99);
    let stray_path = file(d, &stray);
    std::fs::create_dir_all(stray_path.parent().unwrap()).unwrap();
    std::fs::write(&stray_path, &stray).unwrap();
    // Not a message file name: left alone.
    let other = stray_path.with_file_name("README");
    std::fs::write(&other, b"x").unwrap();

    let rep = s.gc().unwrap();
    assert_eq!(rep.messages_removed, 1, "{rep:?}");
    assert_eq!(rep.message_bytes_removed, msg(3).len() as u64);
    assert_eq!(rep.kept_staged, 1);
    assert_eq!(rep.stray_files_removed, 1);
    assert!(!file(d, &msg(3)).exists());
    assert!(!stray_path.exists());
    assert!(other.exists());
    for i in [1, 2, 4] {
        assert!(file(d, &msg(i)).is_file(), "message {i}");
        assert_eq!(
            s.message_bytes(&Guid::of(&msg(i)), 0, 1 << 16).unwrap(),
            msg(i)
        );
    }
    assert!(!s.has_message(&Guid::of(&msg(3))).unwrap());
    let report = s.reader().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.unreferenced_messages, 1, "only the staged one's");
    assert_eq!(report.stray_files, 1, "only the README");
    // A second run finds nothing new.
    let again = s.gc().unwrap();
    assert_eq!((again.messages_removed, again.stray_files_removed), (0, 0));
}
