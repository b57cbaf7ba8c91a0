//! Import benchmark for the embedded store (a benchmark, not a test: it
//! prints numbers and asserts nothing about time).
//!
//! 10,000 deterministic messages (median ~4 KB, 9% 16–256 KB, 1% up to
//! 1 MB) into 20 folders, through the group [`Committer`] from 8
//! connections at once (each owning some folders), each keeping up to 16
//! batches in flight. One batch
//! per message (link the staged bytes, put the record, update the folder,
//! append a sync log line), and every batch is acknowledged only once it is
//! durable: fsynced file, fsynced directory, fsynced WAL.
//!
//! `cargo bench -p store --bench import [-- COUNT [DIR]]`; DIR must be on a
//! real disk (default: a temp dir under the target directory).
//! `CORVID_BENCH_SYNCFS=1` uses [`GroupSync::SyncFs`] (one `syncfs` per
//! group) instead of per-file fsyncs; `CORVID_BENCH_FSYNC_THREADS=n` sets
//! the per-file fsync parallelism; `CORVID_BENCH_FSYNC_AT_STAGING=1`
//! fsyncs each message on its connection's thread when its staging ends.

use bytes::Bytes;
use engine::model::*;
use engine::store::{BatchId, Completion, Mutation, StageId, StoreEffect, WriteBatch};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;
use store::embedded::{Committer, CommitterOptions, Embedded, GroupSync, Options};

const FOLDERS: u32 = 20;
const CONNS: u32 = 8;
const WINDOW: usize = 16;

/// xorshift64*: deterministic sizes and contents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Log-uniform in [lo, hi).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (lo * (hi / lo).powf(u)) as usize
    }
}

fn message(i: u64) -> Bytes {
    let mut rng = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let kind = rng.next() % 100;
    let size = match kind {
        0 => rng.log_uniform(256e3, 1024e3),
        1..=9 => rng.log_uniform(16e3, 256e3),
        _ => rng.log_uniform(1e3, 16e3),
    };
    let mut b = format!(
        "From: bench{i}@example.org\r\nTo: someone@example.org\r\nSubject: message {i}\r\nMessage-ID: <{i}@bench>\r\n\r\n"
    )
    .into_bytes();
    while b.len() < size {
        let w = rng.next();
        b.extend_from_slice(format!("{w:016x} ").as_bytes());
        if rng.next() % 8 == 0 {
            b.extend_from_slice(b"\r\n");
        }
    }
    b.truncate(size.max(120));
    Bytes::from(b)
}

fn folder(f: u32) -> Mailbox {
    let name = MailboxName::new(format!("user.bench.f{f:02}")).unwrap();
    Mailbox::new(
        UniqueId::new(format!("bench-{f:02}")).unwrap(),
        MailboxGuid::from_bytes([f as u8 + 1; 16]),
        name,
        Some(UserId::new("bench").unwrap()),
        UidValidity::new(1_700_000_000).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let count: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let base = match args.get(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.path().join("spool"));
    let mut options = Options::new(dir.path().join("conf"), parts);
    if let Some(n) = std::env::var("CORVID_BENCH_FSYNC_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.fsync_threads = n;
    }
    if std::env::var("CORVID_BENCH_FSYNC_AT_STAGING").is_ok() {
        options.fsync_at_staging = true;
    }
    if std::env::var("CORVID_BENCH_SYNCFS").is_ok() {
        options.group_sync = GroupSync::SyncFs { min_files: 8 };
    }
    println!(
        "group sync: {:?}, fsync threads: {}, fsync at staging: {}",
        options.group_sync, options.fsync_threads, options.fsync_at_staging
    );

    // Generate first, so the timing is the store's alone.
    let t = Instant::now();
    let messages: Vec<Bytes> = (0..count).map(message).collect();
    let total_bytes: u64 = messages.iter().map(|m| m.len() as u64).sum();
    let mut sizes: Vec<usize> = messages.iter().map(|m| m.len()).collect();
    sizes.sort_unstable();
    println!(
        "generated {count} messages, {:.1} MB, median {} B, max {} B in {:.2?}",
        total_bytes as f64 / 1e6,
        sizes[sizes.len() / 2],
        sizes[sizes.len() - 1],
        t.elapsed()
    );

    let store = Embedded::open(options.clone()).unwrap();
    let committer = Committer::spawn(store, CommitterOptions::default());
    // Create the folders durably first.
    {
        let (tx, rx) = mpsc::channel();
        let conn = committer.connection();
        let batch = WriteBatch {
            id: BatchId(u64::MAX),
            mutations: (0..FOLDERS)
                .map(|f| Mutation::PutMailbox(folder(f)))
                .collect(),
        };
        committer.submit(conn, StoreEffect::Write(batch), move |c| {
            tx.send(c).unwrap()
        });
        assert!(matches!(rx.recv().unwrap(), Completion::Durable { .. }));
    }

    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..CONNS {
            let committer = &committer;
            let messages = &messages;
            s.spawn(move || {
                let conn = committer.connection();
                let (tx, rx) = mpsc::channel::<Completion>();
                let mut in_flight = 0usize;
                // Connection c imports folders f ≡ c (mod CONNS), UIDs in order.
                let mut next_uid = [0u32; FOLDERS as usize];
                let mut folders: Vec<Mailbox> = (0..FOLDERS).map(folder).collect();
                // Message i goes to folder i % FOLDERS; connection c owns the
                // folders f ≡ c (mod CONNS), so UIDs of a folder stay in order.
                for i in (0..count).filter(|i| (i % FOLDERS as u64) % CONNS as u64 == c as u64) {
                    let f = (i % FOLDERS as u64) as usize;
                    let bytes = &messages[i as usize];
                    let guid = Guid::of(bytes);
                    let stage = StageId(i);
                    committer.submit(
                        conn,
                        StoreEffect::StageBegin {
                            stage,
                            guid,
                            size: bytes.len() as u64,
                        },
                        |_| {},
                    );
                    for chunk in bytes.chunks(64 * 1024) {
                        committer.submit(
                            conn,
                            StoreEffect::StageChunk {
                                stage,
                                bytes: bytes.slice_ref(chunk),
                            },
                            |_| {},
                        );
                    }
                    let t2 = tx.clone();
                    committer.submit(conn, StoreEffect::StageEnd { stage }, move |c| {
                        t2.send(c).unwrap()
                    });
                    next_uid[f] += 1;
                    let uid = next_uid[f];
                    let mb = &mut folders[f];
                    mb.last_uid = uid;
                    mb.highestmodseq = ModSeq(uid as u64);
                    let record = Record::new(
                        Uid::new(uid).unwrap(),
                        ModSeq(uid as u64),
                        guid,
                        bytes.len() as u64,
                        UnixTime(1_700_000_000 + i as i64),
                    );
                    let batch = WriteBatch {
                        id: BatchId(i),
                        mutations: vec![
                            Mutation::LinkMessage {
                                guid,
                                size: bytes.len() as u64,
                            },
                            Mutation::PutMailbox(mb.clone()),
                            Mutation::PutRecord {
                                mailbox: mb.uniqueid.clone(),
                                record,
                            },
                            Mutation::AppendSyncLog {
                                channel: String::new(),
                                line: SyncLogLine::Append(mb.name.clone()),
                            },
                        ],
                    };
                    let t2 = tx.clone();
                    committer.submit(conn, StoreEffect::Write(batch), move |c| {
                        t2.send(c).unwrap()
                    });
                    in_flight += 2;
                    while in_flight > 2 * WINDOW {
                        check(rx.recv().unwrap());
                        in_flight -= 1;
                    }
                }
                while in_flight > 0 {
                    check(rx.recv().unwrap());
                    in_flight -= 1;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let reader = committer.reader();
    drop(committer);
    let secs = elapsed.as_secs_f64();
    println!(
        "imported {count} messages ({:.1} MB), one durable batch each, in {:.2} s: {:.0} msg/s, {:.1} MB/s",
        total_bytes as f64 / 1e6,
        secs,
        count as f64 / secs,
        total_bytes as f64 / 1e6 / secs
    );
    let t = Instant::now();
    let report = reader.verify().unwrap();
    println!(
        "verify: {} records, {} messages, {:.1} MB rehashed in {:.2?}: {}",
        report.records,
        report.messages,
        report.message_bytes as f64 / 1e6,
        t.elapsed(),
        if report.is_clean() {
            "clean"
        } else {
            "PROBLEMS"
        }
    );
    assert!(report.is_clean(), "{:?}", report.problems);
}

fn check(c: Completion) {
    match c {
        Completion::Durable { .. } | Completion::Staged { result: Ok(()), .. } => {}
        other => panic!("{other:?}"),
    }
}
