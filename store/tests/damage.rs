//! A damaged store is reported, never served as mail: truncated, altered
//! and missing message files, a corrupt or foreign index, a second writer.
//! Each damage is made by hand on a store built through the public API,
//! then the store is opened and read the way a server and `corvid store
//! verify` would.

use bytes::Bytes;
use engine::model::*;
use engine::store::{
    commit, BatchId, Completion, MailRead, Mutation, StoreError, StoreWrite, WriteBatch,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use store::embedded::{Embedded, Error, Options};

fn options(dir: &Path) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    Options::new(dir.join("conf"), parts)
}

fn msg(i: u32) -> Bytes {
    Bytes::from(format!(
        "Subject: {i}\r\n\r\n{}\r\n",
        "body ".repeat(200 + i as usize)
    ))
}

fn uniq() -> UniqueId {
    UniqueId::new("dmg-1").unwrap()
}

/// A store with one mailbox holding three messages (one staged and linked,
/// two inline); returns the message file paths by UID.
fn build(dir: &Path) -> BTreeMap<u32, PathBuf> {
    let mut s = Embedded::open(options(dir)).unwrap();
    let mut mb = Mailbox::new(
        uniq(),
        MailboxGuid::from_bytes([7; 16]),
        MailboxName::new("user.dmg").unwrap(),
        Some(UserId::new("dmg").unwrap()),
        UidValidity::new(42).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1),
    );
    mb.last_uid = 3;
    let b1 = msg(1);
    s.stage_from(Guid::of(&b1), b1.len() as u64, &b1[..])
        .unwrap();
    let mut muts = vec![
        Mutation::PutMailbox(mb),
        Mutation::LinkMessage {
            guid: Guid::of(&b1),
            size: b1.len() as u64,
        },
    ];
    for i in 2..=3 {
        muts.push(Mutation::PutMessage {
            guid: Guid::of(&msg(i)),
            bytes: msg(i),
        });
    }
    for i in 1..=3 {
        let b = msg(i);
        muts.push(Mutation::PutRecord {
            mailbox: uniq(),
            record: Record::new(
                Uid::new(i).unwrap(),
                ModSeq(i as u64),
                Guid::of(&b),
                b.len() as u64,
                UnixTime(i as i64),
            ),
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
    let mut paths = BTreeMap::new();
    for i in 1..=3 {
        let hex = Guid::of(&msg(i)).to_hex();
        paths.insert(
            i,
            dir.join("spool").join("corvid").join(&hex[..2]).join(hex),
        );
    }
    assert!(s.reader().verify().unwrap().is_clean());
    paths
}

#[test]
fn damaged_message_files_are_reported_with_mailbox_and_uid() {
    let dir = tempfile::tempdir().unwrap();
    let paths = build(dir.path());
    // Truncate 1, alter 2 (same length), remove 3.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[&1])
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    let mut b2 = std::fs::read(&paths[&2]).unwrap();
    b2[5] ^= 0x20;
    std::fs::write(&paths[&2], &b2).unwrap();
    std::fs::remove_file(&paths[&3]).unwrap();

    let s = Embedded::open(options(dir.path())).expect("the index is fine, so the store opens");
    // Reads refuse rather than serve damaged bytes.
    for i in 1..=3 {
        let g = Guid::of(&msg(i));
        match s.message_bytes(&g, 0, 1 << 20) {
            Err(StoreError::Corrupt(why)) => assert!(why.contains(&g.to_hex()), "{why}"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    // Chunked reads of the altered file: every chunk before the last may
    // come, the last one never does.
    let g2 = Guid::of(&msg(2));
    let size = msg(2).len() as u64;
    let mut off = 0;
    let err = loop {
        match s.message_bytes(&g2, off, 100) {
            Ok(c) if c.is_empty() => panic!("a damaged message was read to its end"),
            Ok(c) => off += c.len() as u64,
            Err(e) => break e,
        }
    };
    assert!(
        off < size && matches!(err, StoreError::Corrupt(_)),
        "{off} {err:?}"
    );
    // The streaming reader fails instead of ending.
    let mut r = s.reader().open_message(&g2).unwrap();
    assert!(std::io::copy(&mut r, &mut std::io::sink()).is_err());

    let report = s.reader().verify().unwrap();
    assert!(!report.is_clean());
    let by_uid: BTreeMap<u32, String> = report
        .problems
        .iter()
        .map(|p| (p.uid.unwrap(), format!("{p}")))
        .collect();
    assert_eq!(by_uid.len(), 3, "{:#?}", report.problems);
    assert!(
        by_uid[&1].contains("user.dmg") && by_uid[&1].contains("truncated"),
        "{}",
        by_uid[&1]
    );
    assert!(by_uid[&2].contains("does not hash"), "{}", by_uid[&2]);
    assert!(by_uid[&3].contains("missing"), "{}", by_uid[&3]);
}

#[test]
fn a_corrupt_or_foreign_index_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let index = options(dir.path()).index_path();
    // Overwrite the middle of the database file with garbage.
    let mut db = std::fs::read(&index).unwrap();
    let _ = std::fs::remove_file(index.with_extension("sqlite3-wal"));
    let _ = std::fs::remove_file(index.with_extension("sqlite3-shm"));
    let half = db.len() / 2;
    for b in &mut db[half.min(4096)..] {
        *b = 0xA5;
    }
    std::fs::write(&index, &db).unwrap();
    match Embedded::open(options(dir.path())) {
        Err(Error::CorruptIndex { .. }) => {}
        other => panic!("opened a corrupt index: {other:?}"),
    }
    match Embedded::open_read_only(&options(dir.path())) {
        Err(Error::CorruptIndex { .. }) => {}
        other => panic!("opened a corrupt index read-only: {other:?}"),
    }

    // Not a database at all.
    let dir2 = tempfile::tempdir().unwrap();
    let idx2 = options(dir2.path()).index_path();
    std::fs::create_dir_all(idx2.parent().unwrap()).unwrap();
    std::fs::write(&idx2, b"this is not an SQLite file, just text that is long enough ..........................................").unwrap();
    match Embedded::open(options(dir2.path())) {
        Err(Error::CorruptIndex { .. }) => {}
        other => panic!("opened a non-database: {other:?}"),
    }

    // An SQLite database that is someone else's.
    let dir3 = tempfile::tempdir().unwrap();
    let idx3 = options(dir3.path()).index_path();
    std::fs::create_dir_all(idx3.parent().unwrap()).unwrap();
    rusqlite::Connection::open(&idx3)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    match Embedded::open(options(dir3.path())) {
        Err(Error::CorruptIndex { problem, .. }) => assert!(problem.contains("not a corvid store")),
        other => panic!("opened a foreign database: {other:?}"),
    }

    // No store at all, read-only: a clear error, nothing created.
    let dir4 = tempfile::tempdir().unwrap();
    assert!(matches!(
        Embedded::open_read_only(&options(dir4.path())),
        Err(Error::CorruptIndex { .. })
    ));
}

#[test]
fn one_writer_at_a_time_and_no_unknown_partition() {
    let dir = tempfile::tempdir().unwrap();
    let a = Embedded::open(options(dir.path())).unwrap();
    // Writers share the store (a server and a rolling client); a writer
    // that needs it alone (gc) is refused while one runs, and keeps the
    // others out while it runs.
    let b = Embedded::open(options(dir.path())).unwrap();
    let mut alone = options(dir.path());
    alone.exclusive = true;
    assert!(matches!(
        Embedded::open(alone.clone()),
        Err(Error::Locked(_))
    ));
    drop((a, b));
    let _x = Embedded::open(alone.clone()).unwrap();
    assert!(matches!(
        Embedded::open(options(dir.path())),
        Err(Error::Locked(_))
    ));
    assert!(matches!(Embedded::open(alone), Err(Error::Locked(_))));
    // Readers may come while the writer runs.
    Embedded::open_read_only(&options(dir.path())).unwrap();

    let mut o = options(dir.path());
    o.default_partition = Some("nope".into());
    assert!(matches!(Embedded::open(o), Err(Error::Config(_))));
}

#[test]
fn staging_refuses_wrong_bytes_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.message_bytes_max = 1000;
    o.staged_messages_max = 2;
    let mut s = Embedded::open(o).unwrap();
    let b = msg(1);
    // Announced bigger than the limit.
    assert!(matches!(
        s.stage_begin(Guid::of(&b), 5000),
        Err(StoreError::LimitExceeded { .. })
    ));
    let small = Bytes::from_static(b"Subject: x\r\n\r\ny\r\n");
    // Wrong GUID.
    let wrong = Guid::of(b"something else");
    assert!(matches!(
        s.stage_from(wrong, small.len() as u64, &small[..]),
        Err(StoreError::GuidMismatch { .. })
    ));
    // More bytes than announced.
    assert!(matches!(
        s.stage_from(Guid::of(&small), small.len() as u64 - 1, &small[..]),
        Err(StoreError::SizeMismatch { .. })
    ));
    // Fewer bytes than announced.
    assert!(matches!(
        s.stage_from(Guid::of(&small), small.len() as u64 + 1, &small[..]),
        Err(StoreError::SizeMismatch { .. })
    ));
    // Refused stagings leave no temporary file behind and no slot taken.
    let tmp = dir.path().join("spool/corvid/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    s.stage_from(Guid::of(&small), small.len() as u64, &small[..])
        .unwrap();
    let other = Bytes::from_static(b"Subject: z\r\n\r\nz\r\n");
    s.stage_from(Guid::of(&other), other.len() as u64, &other[..])
        .unwrap();
    let third = Bytes::from_static(b"Subject: w\r\n\r\nw\r\n");
    assert!(matches!(
        s.stage_begin(Guid::of(&third), third.len() as u64),
        Err(StoreError::LimitExceeded {
            what: "staged messages",
            ..
        })
    ));
    // Linking a staged message frees its slot once durable.
    let c = commit(
        &mut s,
        &WriteBatch {
            id: BatchId(1),
            mutations: vec![Mutation::LinkMessage {
                guid: Guid::of(&small),
                size: small.len() as u64,
            }],
        },
    );
    assert!(matches!(c, Completion::Durable { .. }));
    s.stage_from(Guid::of(&third), third.len() as u64, &third[..])
        .unwrap();
    assert_eq!(s.message_bytes(&Guid::of(&small), 0, 100).unwrap(), small);
}

#[test]
fn sync_log_mirror_writes_cyrus_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.sync_log_files = true;
    let mut s = Embedded::open(o).unwrap();
    let line = |n: &str| SyncLogLine::Mailbox(MailboxName::new(n).unwrap());
    let c = commit(
        &mut s,
        &WriteBatch {
            id: BatchId(1),
            mutations: vec![
                Mutation::AppendSyncLog {
                    channel: String::new(),
                    line: line("user.a b"),
                },
                Mutation::AppendSyncLog {
                    channel: "replica".into(),
                    line: SyncLogLine::Rename(
                        MailboxName::new("user.x").unwrap(),
                        MailboxName::new("user.y").unwrap(),
                    ),
                },
            ],
        },
    );
    assert!(matches!(c, Completion::Durable { .. }));
    let c = commit(
        &mut s,
        &WriteBatch {
            id: BatchId(2),
            mutations: vec![Mutation::AppendSyncLog {
                channel: String::new(),
                line: SyncLogLine::Seen(UserId::new("a").unwrap(), UniqueId::new("u1").unwrap()),
            }],
        },
    );
    assert!(matches!(c, Completion::Durable { .. }));
    let conf = dir.path().join("conf");
    assert_eq!(
        std::fs::read_to_string(conf.join("sync/log")).unwrap(),
        "MAILBOX \"user.a b\"\nSEEN a u1\n"
    );
    assert_eq!(
        std::fs::read_to_string(conf.join("sync/replica/log")).unwrap(),
        "RENAME user.x user.y\nMAILBOX user.x\nMAILBOX user.y\n"
    );
    // Reopening does not write them again.
    drop(s);
    let mut o = options(dir.path());
    o.sync_log_files = true;
    let mut s = Embedded::open(o).unwrap();
    let c = commit(
        &mut s,
        &WriteBatch {
            id: BatchId(3),
            mutations: vec![],
        },
    );
    assert!(matches!(c, Completion::Durable { .. }));
    assert_eq!(
        std::fs::read_to_string(conf.join("sync/log"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// Not a test: builds the sample store of `build` under
/// `$CORVID_SAMPLE_STORE` (with an imapd.conf there) to try
/// `corvid store -C $CORVID_SAMPLE_STORE/imapd.conf ...` by hand.
#[test]
#[ignore]
fn make_sample_store() {
    let Ok(dir) = std::env::var("CORVID_SAMPLE_STORE") else {
        return;
    };
    let dir = Path::new(&dir);
    build(dir);
    std::fs::write(
        dir.join("imapd.conf"),
        format!(
            "configdirectory: {}\npartition-default: {}\n",
            dir.join("conf").display(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
}
