//! Crash safety, by killing a real writer: this test binary re-invokes
//! itself as a child process that writes batches through the group
//! committer (three connections at once, each linking freshly staged
//! message bytes and putting a record) and prints `ACK <conn> <uid>` for
//! every batch whose completion says it is durable. The parent SIGKILLs the
//! child at a different moment each round (from "still opening the store"
//! to "deep in a run"), reopens the store, and checks:
//!
//! * the store opens and `verify` finds no problem (every message file
//!   hashes to its GUID, the index is consistent, CRCs match);
//! * every batch ever acknowledged is there: its record, with its GUID,
//!   and its bytes readable and intact;
//! * the sync log line each batch appended is there too (same transaction).
//!
//! The store lives on the real disk (the temp dir), never on tmpfs. Rounds
//! rotate through the three ways of making message files durable
//! (per-file at commit, per-file at staging, one syncfs per group).

use bytes::Bytes;
use engine::model::*;
use engine::store::{BatchId, Completion, MailRead, Mutation, StageId, StoreEffect, WriteBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use store::embedded::{Committer, CommitterOptions, Embedded, GroupSync, Options};

const CHILD_ENV: &str = "CORVID_STORE_CRASH_CHILD";
const MODE_ENV: &str = "CORVID_STORE_CRASH_MODE";
const CONNS: u32 = 3;

/// Rounds rotate through the ways a group's files are made durable.
fn options(dir: &Path, mode: u32) -> Options {
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("spool"));
    parts.insert("other".to_string(), dir.join("spool2"));
    let mut o = Options::new(dir.join("conf"), parts);
    match mode % 3 {
        0 => {}
        1 => o.fsync_at_staging = true,
        _ => o.group_sync = GroupSync::SyncFs { min_files: 2 },
    }
    o
}

fn folder(conn: u32) -> MailboxName {
    MailboxName::new(format!("user.crash.f{conn}")).unwrap()
}

fn uniqueid(conn: u32) -> UniqueId {
    UniqueId::new(format!("crash-{conn}")).unwrap()
}

/// Deterministic message bytes for (conn, uid): 300 B to ~260 KB.
fn message(conn: u32, uid: u32) -> Bytes {
    let n = (uid as usize * 7919 + conn as usize * 104_729) % 97;
    let body_len = if n < 80 {
        300 + n * 97
    } else {
        20_000 + n * 2_500
    };
    let mut b = format!("From: crash@example.org\r\nSubject: {conn}/{uid}\r\n\r\n").into_bytes();
    b.extend((0..body_len).map(|i| b"abcdefghijklmnopqrstuvwxyz\r\n"[(i + uid as usize) % 28]));
    Bytes::from(b)
}

/// The child: write until killed.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only runs when re-invoked by `kill_at_many_points`
    };
    let mode = std::env::var(MODE_ENV).unwrap().parse().unwrap();
    let store = Embedded::open(options(Path::new(&dir), mode)).expect("child opens the store");
    let committer = Committer::spawn(store, CommitterOptions::default());
    let reader = committer.reader();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        for conn in 0..CONNS {
            let committer = &committer;
            let reader = reader.clone();
            let out = out.clone();
            s.spawn(move || {
                let id = committer.connection();
                let existing = reader.mailbox(&folder(conn)).unwrap();
                let mut uid = existing.as_ref().map_or(0, |m| m.last_uid);
                let mut mb = existing.unwrap_or_else(|| {
                    Mailbox::new(
                        uniqueid(conn),
                        MailboxGuid::from_bytes([conn as u8 + 1; 16]),
                        folder(conn),
                        Some(UserId::new("crash").unwrap()),
                        UidValidity::new(1_700_000_000).unwrap(),
                        Partition::new("default").unwrap(),
                        UnixTime(1_700_000_000),
                    )
                });
                loop {
                    uid += 1;
                    let bytes = message(conn, uid);
                    let guid = Guid::of(&bytes);
                    let stage = StageId(uid as u64);
                    let (tx, rx) = mpsc::channel();
                    committer.submit(
                        id,
                        StoreEffect::StageBegin {
                            stage,
                            guid,
                            size: bytes.len() as u64,
                        },
                        |_| {},
                    );
                    for c in bytes.chunks(16 * 1024) {
                        committer.submit(
                            id,
                            StoreEffect::StageChunk {
                                stage,
                                bytes: Bytes::copy_from_slice(c),
                            },
                            |_| {},
                        );
                    }
                    let t = tx.clone();
                    committer.submit(id, StoreEffect::StageEnd { stage }, move |c| {
                        t.send(c).unwrap()
                    });
                    match rx.recv().unwrap() {
                        Completion::Staged { result: Ok(()), .. } => {}
                        other => panic!("staging failed: {other:?}"),
                    }
                    mb.last_uid = uid;
                    mb.highestmodseq = ModSeq(uid as u64);
                    let mut record = Record::new(
                        Uid::new(uid).unwrap(),
                        ModSeq(uid as u64),
                        guid,
                        bytes.len() as u64,
                        UnixTime(1_700_000_000 + uid as i64),
                    );
                    record.flags.system = SystemFlags::SEEN;
                    let batch = WriteBatch {
                        id: BatchId(((conn as u64) << 32) | uid as u64),
                        mutations: vec![
                            Mutation::LinkMessage {
                                guid,
                                size: bytes.len() as u64,
                            },
                            Mutation::PutMailbox(mb.clone()),
                            Mutation::PutRecord {
                                mailbox: uniqueid(conn),
                                record,
                            },
                            Mutation::AppendSyncLog {
                                channel: String::new(),
                                line: SyncLogLine::Append(folder(conn)),
                            },
                        ],
                    };
                    let t = tx.clone();
                    committer.submit(id, StoreEffect::Write(batch), move |c| t.send(c).unwrap());
                    match rx.recv().unwrap() {
                        Completion::Durable { proof, .. } => {
                            assert_eq!(
                                proof.batch_id(),
                                BatchId(((conn as u64) << 32) | uid as u64)
                            );
                            let mut o = out.lock().unwrap();
                            writeln!(o, "ACK {conn} {uid}").unwrap();
                            o.flush().unwrap();
                        }
                        other => panic!("write failed: {other:?}"),
                    }
                }
            });
        }
    });
}

#[test]
fn kill_at_many_points() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeSet<(u32, u32)> = BTreeSet::new();
    // Kill delays in ms: from "still opening the store" to "deep in a run".
    let delays = [
        5u64, 40, 120, 15, 300, 60, 0, 200, 90, 450, 25, 150, 70, 350, 10, 250,
    ];
    for (round, delay) in delays.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(MODE_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let mut it = rest.split(' ').map(|x| x.parse::<u32>().unwrap());
                    tx.send((it.next().unwrap(), it.next().unwrap())).unwrap();
                }
            }
        });
        // Let it write for a while (at least until it acknowledged
        // something, every other round), then kill it mid-flight.
        if round % 2 == 1 {
            let first = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child acknowledged nothing");
            acked.insert(first);
        }
        std::thread::sleep(Duration::from_millis(*delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        lines.join().unwrap();
        acked.extend(rx.try_iter());

        // Reopen as the next server would, and check everything.
        let store = Embedded::open(options(dir.path(), 0)).expect("store reopens after a kill");
        let report = store.reader().verify().unwrap();
        assert!(report.is_clean(), "round {round}: {:#?}", report.problems);
        for &(conn, uid) in &acked {
            let r = store
                .record(&uniqueid(conn), Uid::new(uid).unwrap())
                .unwrap()
                .unwrap_or_else(|| {
                    panic!("round {round}: acknowledged batch {conn}/{uid} is lost")
                });
            let bytes = message(conn, uid);
            assert_eq!(r.guid, Guid::of(&bytes));
            let got = store.message_bytes(&r.guid, 0, bytes.len() + 1).unwrap();
            assert_eq!(got, bytes, "round {round}: {conn}/{uid} bytes differ");
        }
        // Every record has its sync log line: one APPEND per batch, same transaction.
        let mut records = 0;
        for conn in 0..CONNS {
            records += store
                .records(&uniqueid(conn), engine::store::UidRange::ALL, usize::MAX)
                .unwrap()
                .len();
        }
        assert_eq!(
            store.sync_log_last("").unwrap(),
            records as u64,
            "round {round}"
        );
        eprintln!(
            "round {round}: killed after {delay} ms, {} acknowledged so far, {records} records",
            acked.len()
        );
    }
    assert!(
        acked.len() > 20,
        "too few acknowledged batches to mean anything: {}",
        acked.len()
    );
}
