//! New message bytes go to the partition of the mailbox whose record first
//! refers to them (Cyrus keeps a message in its mailbox's partition), for
//! staged uploads and inline bytes alike; a message already stored stays
//! where it is. Checked on the files themselves, by reading back, and by
//! `verify`.

use bytes::Bytes;
use engine::model::*;
use engine::store::{commit, BatchId, Completion, MailRead, Mutation, WriteBatch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use store::embedded::{Embedded, Options};

fn options(dir: &Path) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    parts.insert("p2".to_string(), dir.join("spool2"));
    Options::new(dir.join("conf"), parts)
}

fn msg(i: u32) -> Bytes {
    Bytes::from(format!("Subject: {i}\r\n\r\npartition test {i}\r\n"))
}

fn file(dir: &Path, spool: &str, b: &[u8]) -> PathBuf {
    let hex = Guid::of(b).to_hex();
    dir.join(spool).join("corvid").join(&hex[..2]).join(hex)
}

fn mailbox(id: &str, name: &str, partition: &str) -> Mailbox {
    let mut mb = Mailbox::new(
        UniqueId::new(id).unwrap(),
        MailboxGuid::from_bytes([id.len() as u8; 16]),
        MailboxName::new(name).unwrap(),
        Some(UserId::new("p").unwrap()),
        UidValidity::new(1).unwrap(),
        Partition::new(partition).unwrap(),
        UnixTime(1),
    );
    mb.last_uid = 10;
    mb
}

fn record(uid: u32, b: &[u8]) -> Record {
    Record::new(
        Uid::new(uid).unwrap(),
        ModSeq(uid as u64),
        Guid::of(b),
        b.len() as u64,
        UnixTime(1),
    )
}

fn ok(s: &mut Embedded, id: u64, mutations: Vec<Mutation>) {
    let c = commit(
        s,
        &WriteBatch {
            id: BatchId(id),
            mutations,
        },
    );
    assert!(matches!(c, Completion::Durable { .. }), "{c:?}");
}

#[test]
fn new_bytes_go_to_the_partition_of_their_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut s = Embedded::open(options(d)).unwrap();
    let (m1, m2, m3) = (msg(1), msg(2), msg(3));
    // m1 staged (uploads land in the default partition), m2 inline.
    s.stage_from(Guid::of(&m1), m1.len() as u64, &m1[..])
        .unwrap();
    ok(
        &mut s,
        1,
        vec![
            Mutation::PutMailbox(mailbox("u-p2", "user.p.two", "p2")),
            Mutation::PutMailbox(mailbox("u-def", "user.p", "default")),
            Mutation::LinkMessage {
                guid: Guid::of(&m1),
                size: m1.len() as u64,
            },
            Mutation::PutMessage {
                guid: Guid::of(&m2),
                bytes: m2.clone(),
            },
            Mutation::PutMessage {
                guid: Guid::of(&m3),
                bytes: m3.clone(),
            },
            Mutation::PutRecord {
                mailbox: UniqueId::new("u-p2").unwrap(),
                record: record(1, &m1),
            },
            Mutation::PutRecord {
                mailbox: UniqueId::new("u-p2").unwrap(),
                record: record(2, &m2),
            },
            // m3 is first used in the default mailbox, then in p2's.
            Mutation::PutRecord {
                mailbox: UniqueId::new("u-def").unwrap(),
                record: record(1, &m3),
            },
            Mutation::PutRecord {
                mailbox: UniqueId::new("u-p2").unwrap(),
                record: record(3, &m3),
            },
        ],
    );
    for b in [&m1, &m2] {
        assert!(file(d, "spool2", b).is_file());
        assert!(!file(d, "spool", b).exists());
    }
    assert!(file(d, "spool", &m3).is_file());
    assert!(!file(d, "spool2", &m3).exists());
    // Nothing left behind in either staging directory.
    for spool in ["spool", "spool2"] {
        let tmp = d.join(spool).join("corvid").join("tmp");
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{spool}");
    }
    for b in [&m1, &m2, &m3] {
        assert_eq!(&s.message_bytes(&Guid::of(b), 0, 1 << 16).unwrap(), b);
    }
    let report = s.reader().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    drop(s);
    // And after reopening.
    let s = Embedded::open(options(d)).unwrap();
    assert_eq!(&s.message_bytes(&Guid::of(&m1), 0, 1 << 16).unwrap(), &m1);
    assert!(s.reader().verify().unwrap().is_clean());
}
