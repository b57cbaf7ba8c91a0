//! Staging at the scale a real Cyrus `sync_client` uses: it uploads every
//! new message of a mailbox (`APPLY MESSAGE`, up to 1,024 files a line)
//! before the one `APPLY MAILBOX` that links them all, so a replica must
//! hold more than 4,096 staged messages at once and link them in one batch.
//! The store once allowed only 4,096 (found by `scripts/bench/sync_server.sh`
//! with a 10,000-message user); these tests keep that from coming back, on
//! the server's path (a [`Committer`] and its staging effects).

use bytes::Bytes;
use engine::model::*;
use engine::store::{
    BatchId, Completion, MailRead, Mutation, StageId, StoreEffect, StoreError, WriteBatch,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use store::embedded::{Committer, CommitterOptions, ConnId, Embedded, Options};

/// More than the old limit of 4,096.
const STAGED: u32 = 4_500;

fn options(dir: &Path) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    Options::new(dir.join("conf"), parts)
}

fn msg(i: u32) -> Bytes {
    Bytes::from(format!(
        "Subject: {i}\r\nMessage-ID: <{i}@staging>\r\n\r\nbody {i}\r\n"
    ))
}

fn mailbox(last_uid: u32) -> Mailbox {
    let mut mb = Mailbox::new(
        UniqueId::new("staging-1").unwrap(),
        MailboxGuid::from_bytes([9; 16]),
        MailboxName::new("user.big").unwrap(),
        Some(UserId::new("big").unwrap()),
        UidValidity::new(7).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1),
    );
    mb.last_uid = last_uid;
    mb
}

/// Stages message `i` as connection `conn` would (begin, two chunks, end)
/// and returns the `Staged` completion's result.
fn stage(c: &Committer, conn: ConnId, i: u32) -> Result<(), StoreError> {
    let b = msg(i);
    let stage = StageId(i as u64);
    c.submit(
        conn,
        StoreEffect::StageBegin {
            stage,
            guid: Guid::of(&b),
            size: b.len() as u64,
        },
        |_| {},
    );
    let half = b.len() / 2;
    for bytes in [b.slice(..half), b.slice(half..)] {
        c.submit(conn, StoreEffect::StageChunk { stage, bytes }, |_| {});
    }
    let (tx, rx) = mpsc::channel();
    c.submit(conn, StoreEffect::StageEnd { stage }, move |done| {
        let _ = tx.send(done);
    });
    match rx.recv().unwrap() {
        Completion::Staged { result, .. } => result,
        other => panic!("stage end completed with {other:?}"),
    }
}

fn write(c: &Committer, conn: ConnId, id: u64, mutations: Vec<Mutation>) -> Completion {
    let (tx, rx) = mpsc::channel();
    c.submit(
        conn,
        StoreEffect::Write(WriteBatch {
            id: BatchId(id),
            mutations,
        }),
        move |done| {
            let _ = tx.send(done);
        },
    );
    rx.recv().unwrap()
}

#[test]
fn more_than_4096_staged_messages_link_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(options(dir.path())).unwrap();
    let c = Committer::spawn(store, CommitterOptions::default());
    let conn = c.connection();
    for i in 1..=STAGED {
        stage(&c, conn, i).unwrap_or_else(|e| panic!("staging {i} refused: {e}"));
    }
    // Nothing is visible before the batch links it.
    assert!(!c.reader().has_message(&Guid::of(&msg(1))).unwrap());

    let mut muts = vec![Mutation::PutMailbox(mailbox(STAGED))];
    for i in 1..=STAGED {
        let b = msg(i);
        muts.push(Mutation::LinkMessage {
            guid: Guid::of(&b),
            size: b.len() as u64,
        });
        muts.push(Mutation::PutRecord {
            mailbox: UniqueId::new("staging-1").unwrap(),
            record: Record::new(
                Uid::new(i).unwrap(),
                ModSeq(i as u64),
                Guid::of(&b),
                b.len() as u64,
                UnixTime(i as i64),
            ),
        });
    }
    let done = write(&c, conn, 1, muts);
    assert!(matches!(done, Completion::Durable { .. }), "{done:?}");

    let r = c.reader();
    let uniq = UniqueId::new("staging-1").unwrap();
    let recs = r
        .records(&uniq, engine::store::UidRange::ALL, usize::MAX)
        .unwrap();
    assert_eq!(recs.len(), STAGED as usize);
    for i in [1, 4_096, 4_097, STAGED] {
        let b = msg(i);
        assert_eq!(r.message_bytes(&Guid::of(&b), 0, 1 << 16).unwrap(), b);
    }
    c.close(conn);
    let store = c.shutdown();
    let report = store.reader().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn the_staging_limit_refuses_the_one_too_many_and_recovers_after_linking() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.staged_messages_max = 3;
    let c = Committer::spawn(Embedded::open(o).unwrap(), CommitterOptions::default());
    let conn = c.connection();
    for i in 1..=3 {
        stage(&c, conn, i).unwrap();
    }
    match stage(&c, conn, 4) {
        Err(StoreError::LimitExceeded { what, limit: 3 }) => assert_eq!(what, "staged messages"),
        other => panic!("fourth staging: {other:?}"),
    }
    // Linking the three frees their places.
    let mut muts = vec![Mutation::PutMailbox(mailbox(3))];
    for i in 1..=3 {
        let b = msg(i);
        muts.push(Mutation::LinkMessage {
            guid: Guid::of(&b),
            size: b.len() as u64,
        });
        muts.push(Mutation::PutRecord {
            mailbox: UniqueId::new("staging-1").unwrap(),
            record: Record::new(
                Uid::new(i).unwrap(),
                ModSeq(i as u64),
                Guid::of(&b),
                b.len() as u64,
                UnixTime(1),
            ),
        });
    }
    assert!(matches!(
        write(&c, conn, 1, muts),
        Completion::Durable { .. }
    ));
    stage(&c, conn, 4).expect("room again after the link");
}
