//! The storage contract, case by case, on `MemStore`: staging with SHA-1
//! checks, durability only through completions, all-or-nothing batches,
//! dedupe by GUID, crash, the `Pending` overlay, and the driver helpers.

mod memstore_support;

use bytes::Bytes;
use engine::memstore::{MemStore, MemStoreOptions};
use engine::model::*;
use engine::store::{
    commit, commit_group, BatchId, Completion, EffectRunner, MailRead, Mutation, Pending, StageId,
    StoreEffect, StoreError, StoreWrite, UidRange, WriteBatch,
};
use memstore_support::*;

fn stage(s: &mut MemStore, bytes: &[u8], announced: Guid, size: u64) -> Result<(), StoreError> {
    let h = s.stage_begin(announced, size)?;
    for c in bytes.chunks(3) {
        s.stage_chunk(h, c)?;
    }
    s.stage_end(h)
}

fn link(i: usize) -> Mutation {
    Mutation::LinkMessage {
        guid: Guid::of(&msg(i)),
        size: msg(i).len() as u64,
    }
}

fn batch(id: u64, mutations: Vec<Mutation>) -> WriteBatch {
    WriteBatch {
        id: BatchId(id),
        mutations,
    }
}

#[test]
fn staged_message_is_invisible_until_a_linking_batch_is_durable() {
    let mut s = MemStore::default();
    let g = Guid::of(&msg(1));
    stage(&mut s, &msg(1), g, msg(1).len() as u64).unwrap();
    assert!(s.is_staged(&g));
    assert!(!s.has_message(&g).unwrap());

    let b = batch(
        1,
        vec![
            link(1),
            Mutation::PutMailbox(mailbox(0, 0)),
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(1, 1, false),
            },
        ],
    );
    s.apply(&b).unwrap();
    // Applied, not durable: readers see nothing; the pending view does.
    assert!(!s.has_message(&g).unwrap());
    assert!(s.mailbox(&name(0)).unwrap().is_none());
    assert!(s.with_pending().has_message(&g).unwrap());
    assert_eq!(
        s.with_pending()
            .records(&uniq(0), UidRange::ALL, 10)
            .unwrap()
            .len(),
        1
    );

    let done = s.make_durable(BatchId(1));
    assert!(
        matches!(&done[..], [Completion::Durable { batch_id: BatchId(1), proof }] if proof.batch_id() == BatchId(1))
    );
    assert_eq!(s.message_bytes(&g, 0, 1 << 20).unwrap(), msg(1));
    assert_eq!(s.message_bytes(&g, 4, 3).unwrap(), msg(1).slice(4..7));
    assert_eq!(
        s.records(&uniq(0), UidRange::ALL, 10).unwrap(),
        vec![record(1, 1, false)]
    );
}

#[test]
fn guid_mismatch_and_wrong_sizes_are_refused_while_staging() {
    let mut s = MemStore::default();
    let g = Guid::of(&msg(1));
    let n = msg(1).len() as u64;
    let mut bad = msg(1).to_vec();
    bad[3] ^= 0x20;
    assert!(matches!(
        stage(&mut s, &bad, g, n),
        Err(StoreError::GuidMismatch { expected, actual }) if expected == g && actual == Guid::of(&bad)
    ));
    assert!(!s.is_staged(&g));
    // Too many bytes: refused at the chunk that overflows.
    let mut long = msg(1).to_vec();
    long.push(b'x');
    assert!(matches!(
        stage(&mut s, &long, g, n),
        Err(StoreError::SizeMismatch { .. })
    ));
    // Too few: refused at the end.
    assert!(matches!(
        stage(&mut s, &msg(1)[..5], g, n),
        Err(StoreError::SizeMismatch { actual: 5, .. })
    ));
    // Over the per-message limit: refused before any byte is taken.
    let mut small = MemStore::new(MemStoreOptions {
        message_bytes_max: 10,
        ..MemStoreOptions::default()
    });
    assert!(matches!(
        small.stage_begin(g, n),
        Err(StoreError::LimitExceeded { .. })
    ));
    // An inline message is hashed at apply time.
    let r = s.apply(&batch(
        1,
        vec![Mutation::PutMessage {
            guid: g,
            bytes: Bytes::from(bad),
        }],
    ));
    assert!(matches!(r, Err(StoreError::GuidMismatch { .. })));
    // A link to bytes never staged is refused.
    assert_eq!(
        s.apply(&batch(2, vec![link(1)])),
        Err(StoreError::MissingMessage(g))
    );
}

#[test]
fn a_refused_batch_changes_nothing() {
    let mut s = MemStore::default();
    stage(&mut s, &msg(2), Guid::of(&msg(2)), msg(2).len() as u64).unwrap();
    let before = dump(&s.with_pending());
    let b = batch(
        1,
        vec![
            link(2),
            Mutation::PutMailbox(mailbox(0, 0)),
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(1, 2, false),
            },
            // Refused: message 3 was never staged.
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(2, 3, false),
            },
        ],
    );
    assert_eq!(
        s.apply(&b),
        Err(StoreError::MissingMessage(Guid::of(&msg(3))))
    );
    assert_eq!(dump(&s.with_pending()), before);
    assert!(s.pending_ids().is_empty());
    // The staged bytes were not consumed by the refused batch.
    assert!(s.is_staged(&Guid::of(&msg(2))));
}

#[test]
fn expunged_records_may_name_bytes_we_never_had() {
    let mut s = MemStore::default();
    let c = commit(
        &mut s,
        &batch(
            1,
            vec![
                Mutation::PutMailbox(mailbox(0, 0)),
                Mutation::PutRecord {
                    mailbox: uniq(0),
                    record: record(4, 4, true),
                },
            ],
        ),
    );
    assert!(matches!(c, Completion::Durable { .. }));
    assert!(!s.has_message(&Guid::of(&msg(4))).unwrap());
    // Expunged records do not count in the CRCs.
    assert_eq!(s.sync_crcs(&uniq(0)).unwrap(), SyncCrcs::EMPTY);
}

#[test]
fn one_copy_per_guid_across_mailboxes() {
    let mut s = MemStore::default();
    stage(&mut s, &msg(1), Guid::of(&msg(1)), msg(1).len() as u64).unwrap();
    let b1 = batch(
        1,
        vec![
            link(1),
            Mutation::PutMailbox(mailbox(0, 0)),
            Mutation::PutMailbox(mailbox(1, 1)),
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(1, 1, false),
            },
        ],
    );
    assert!(matches!(commit(&mut s, &b1), Completion::Durable { .. }));
    // Linking again needs no staged copy: the store already has it.
    let b2 = batch(
        2,
        vec![
            link(1),
            Mutation::PutRecord {
                mailbox: uniq(1),
                record: record(7, 1, false),
            },
        ],
    );
    assert!(matches!(commit(&mut s, &b2), Completion::Durable { .. }));
    assert_eq!(s.durable().message_count(), 1);
    assert_eq!(
        s.records(&uniq(1), UidRange::ALL, 10).unwrap()[0].guid,
        Guid::of(&msg(1))
    );
}

#[test]
fn crash_drops_pending_batches_and_staged_bytes_only() {
    let mut s = MemStore::default();
    assert!(matches!(
        commit(&mut s, &batch(1, vec![Mutation::PutMailbox(mailbox(0, 0))])),
        Completion::Durable { .. }
    ));
    stage(&mut s, &msg(1), Guid::of(&msg(1)), msg(1).len() as u64).unwrap();
    stage(&mut s, &msg(2), Guid::of(&msg(2)), msg(2).len() as u64).unwrap();
    s.apply(&batch(
        2,
        vec![
            link(1),
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(1, 1, false),
            },
        ],
    ))
    .unwrap();
    s.apply(&batch(
        3,
        vec![Mutation::DeleteMailbox {
            uniqueid: uniq(0),
            at: UnixTime(9),
            modseq: ModSeq(9),
        }],
    ))
    .unwrap();
    // Durability is a prefix: making 2 durable leaves 3 pending.
    assert_eq!(s.make_durable(BatchId(2)).len(), 1);
    assert_eq!(s.pending_ids(), vec![BatchId(3)]);
    assert_eq!(s.crash(), vec![BatchId(3)]);
    assert!(s.mailbox(&name(0)).unwrap().is_some());
    assert_eq!(s.records(&uniq(0), UidRange::ALL, 10).unwrap().len(), 1);
    assert!(!s.is_staged(&Guid::of(&msg(2))));
    assert!(s.pending_ids().is_empty());
}

#[test]
fn rename_delete_and_user_delete_keep_history_and_tombstones() {
    let mut s = MemStore::default();
    let mut inbox = mailbox(0, 0);
    inbox.quotaroot = Some(name(0));
    let b = batch(
        1,
        vec![
            Mutation::PutMailbox(inbox),
            Mutation::PutMailbox(mailbox(1, 1)),
            Mutation::PutMailbox(mailbox(3, 4)),
            Mutation::RenameMailbox {
                uniqueid: uniq(1),
                new_name: name(2),
                at: UnixTime(100),
                modseq: ModSeq(3),
            },
            Mutation::PutQuota {
                root: name(0),
                quota: QuotaRoot::default(),
            },
            Mutation::PutSeen {
                user: user(0),
                mailbox: uniq(0),
                seen: Seen {
                    lastread: UnixTime(1),
                    lastuid: 1,
                    lastchange: UnixTime(1),
                    seenuids: SeqSet::parse(b"1").unwrap(),
                },
            },
        ],
    );
    assert!(matches!(commit(&mut s, &b), Completion::Durable { .. }));
    let moved = s.mailbox_by_uniqueid(&uniq(1)).unwrap().unwrap();
    assert_eq!(moved.name, name(2));
    assert_eq!(moved.renamed_or_created_at, UnixTime(100));
    assert_eq!(moved.name_history[0].old_name, name(1));
    assert!(s.mailbox(&name(1)).unwrap().is_none());
    // Renaming onto a taken name is refused.
    let clash = batch(
        2,
        vec![Mutation::RenameMailbox {
            uniqueid: uniq(1),
            new_name: name(0),
            at: UnixTime(101),
            modseq: ModSeq(4),
        }],
    );
    assert!(matches!(
        commit(&mut s, &clash),
        Completion::Failed {
            error: StoreError::NameTaken { .. },
            ..
        }
    ));

    let del = batch(
        3,
        vec![Mutation::DeleteUser {
            user: user(0),
            at: UnixTime(200),
            modseq: ModSeq(9),
        }],
    );
    assert!(matches!(commit(&mut s, &del), Completion::Durable { .. }));
    assert!(s.mailboxes_of_user(&user(0)).unwrap().is_empty());
    assert!(s.seen_of_user(&user(0)).unwrap().is_empty());
    assert!(s.quota(&name(0)).unwrap().is_none());
    let tombs = s.tombstones_of_user(&user(0)).unwrap();
    assert_eq!(tombs.len(), 2);
    assert_eq!(s.tombstones_named(&name(2)).unwrap()[0].uniqueid, uniq(1));
    // The shared mailbox is untouched.
    assert!(s.mailbox(&name(4)).unwrap().is_some());
    assert_eq!(s.users().unwrap(), Vec::<UserId>::new());
}

#[test]
fn pending_overlay_reads_own_writes_then_the_store() {
    let mut s = MemStore::default();
    assert!(matches!(
        commit(&mut s, &batch(1, vec![Mutation::PutMailbox(mailbox(0, 0))])),
        Completion::Durable { .. }
    ));
    let b = batch(
        2,
        vec![
            Mutation::PutMessage {
                guid: Guid::of(&msg(1)),
                bytes: msg(1),
            },
            Mutation::PutRecord {
                mailbox: uniq(0),
                record: record(1, 1, false),
            },
            Mutation::AppendSyncLog {
                channel: String::new(),
                line: SyncLogLine::Mailbox(name(0)),
            },
        ],
    );
    {
        let mut p = Pending::new(&s);
        p.push(&b).unwrap();
        assert_eq!(p.records(&uniq(0), UidRange::ALL, 10).unwrap().len(), 1);
        assert_eq!(p.message_bytes(&Guid::of(&msg(1)), 0, 100).unwrap(), msg(1));
        assert_eq!(
            p.sync_log("", 0, 10).unwrap(),
            vec![(1, SyncLogLine::Mailbox(name(0)))]
        );
        assert_eq!(
            p.sync_crcs(&uniq(0)).unwrap(),
            SyncCrcs::of_records([&record(1, 1, false)])
        );
        // The store itself does not show it yet.
        assert!(s.records(&uniq(0), UidRange::ALL, 10).unwrap().is_empty());
        // A batch the store would refuse is refused here too, and leaves
        // the overlay as it was.
        let bad = batch(
            3,
            vec![Mutation::PutRecord {
                mailbox: uniq(9),
                record: record(1, 1, false),
            }],
        );
        assert_eq!(p.push(&bad), Err(StoreError::UnknownMailbox(uniq(9))));
        assert_eq!(p.batch_ids(), vec![BatchId(2)]);
    }
    let c = commit(&mut s, &b);
    assert!(matches!(c, Completion::Durable { .. }));
    let mut p = Pending::new(&s);
    assert!(!p.complete(BatchId(2)));
    assert_eq!(s.sync_log_last("").unwrap(), 1);
    assert_eq!(dump(&p), dump(&s));
}

#[test]
fn effect_runner_stages_in_chunks_and_commits() {
    let mut s = MemStore::default();
    let mut run = EffectRunner::new();
    let g = Guid::of(&msg(3));
    assert!(run
        .run(
            &mut s,
            StoreEffect::StageBegin {
                stage: StageId(1),
                guid: g,
                size: msg(3).len() as u64
            }
        )
        .is_none());
    for c in msg(3).chunks(4) {
        assert!(run
            .run(
                &mut s,
                StoreEffect::StageChunk {
                    stage: StageId(1),
                    bytes: Bytes::copy_from_slice(c)
                }
            )
            .is_none());
    }
    assert_eq!(
        run.run(&mut s, StoreEffect::StageEnd { stage: StageId(1) }),
        Some(Completion::Staged {
            stage: StageId(1),
            result: Ok(())
        })
    );
    // A corrupt staging reports at its end.
    run.run(
        &mut s,
        StoreEffect::StageBegin {
            stage: StageId(2),
            guid: g,
            size: 3,
        },
    );
    run.run(
        &mut s,
        StoreEffect::StageChunk {
            stage: StageId(2),
            bytes: Bytes::from_static(b"abcd"),
        },
    );
    assert!(matches!(
        run.run(&mut s, StoreEffect::StageEnd { stage: StageId(2) }),
        Some(Completion::Staged {
            result: Err(StoreError::SizeMismatch { .. }),
            ..
        })
    ));
    let b = batch(7, vec![link(3)]);
    let c = run.run(&mut s, StoreEffect::Write(b)).unwrap();
    assert!(matches!(
        c,
        Completion::Durable {
            batch_id: BatchId(7),
            ..
        }
    ));
    assert!(s.has_message(&g).unwrap());
}

#[test]
fn commit_group_fails_refused_batches_alone() {
    let mut s = MemStore::default();
    let good = batch(1, vec![Mutation::PutMailbox(mailbox(0, 0))]);
    let bad = batch(
        2,
        vec![Mutation::DeleteMailbox {
            uniqueid: uniq(3),
            at: UnixTime(0),
            modseq: ModSeq(0),
        }],
    );
    let good2 = batch(3, vec![Mutation::PutMailbox(mailbox(1, 1))]);
    let cs = commit_group(&mut s, &[good, bad, good2]);
    assert!(matches!(
        cs[0],
        Completion::Durable {
            batch_id: BatchId(1),
            ..
        }
    ));
    assert!(matches!(
        cs[1],
        Completion::Failed {
            batch_id: BatchId(2),
            error: StoreError::UnknownMailbox(_)
        }
    ));
    assert!(matches!(
        cs[2],
        Completion::Durable {
            batch_id: BatchId(3),
            ..
        }
    ));
    assert_eq!(s.mailboxes(None, 10).unwrap().len(), 2);
}

#[test]
fn sync_log_numbers_lines_and_trims() {
    let mut s = MemStore::default();
    let mut b = WriteBatch::new(BatchId(1));
    for i in 0..4 {
        b.push(Mutation::AppendSyncLog {
            channel: String::new(),
            line: SyncLogLine::Mailbox(name(i)),
        });
    }
    b.push(Mutation::TrimSyncLog {
        channel: String::new(),
        through: 2,
    });
    assert!(matches!(commit(&mut s, &b), Completion::Durable { .. }));
    assert_eq!(
        s.sync_log("", 0, 10).unwrap(),
        vec![
            (3, SyncLogLine::Mailbox(name(2))),
            (4, SyncLogLine::Mailbox(name(3)))
        ]
    );
    assert_eq!(s.sync_log_last("").unwrap(), 4);
    assert!(s.sync_log("squatter", 0, 10).unwrap().is_empty());
}

#[test]
fn put_mailbox_refuses_name_and_guid_clashes() {
    let mut s = MemStore::default();
    commit(&mut s, &batch(1, vec![Mutation::PutMailbox(mailbox(0, 0))]));
    let mut other = mailbox(1, 0);
    assert!(matches!(
        commit(&mut s, &batch(2, vec![Mutation::PutMailbox(other.clone())])),
        Completion::Failed {
            error: StoreError::NameTaken { .. },
            ..
        }
    ));
    other.name = name(1);
    other.guid = mailbox(0, 0).guid;
    assert!(matches!(
        commit(&mut s, &batch(3, vec![Mutation::PutMailbox(other)])),
        Completion::Failed {
            error: StoreError::GuidTaken { .. },
            ..
        }
    ));
    let mut renamed = mailbox(0, 1);
    renamed.uniqueid = uniq(0);
    assert!(matches!(
        commit(&mut s, &batch(4, vec![Mutation::PutMailbox(renamed)])),
        Completion::Failed {
            error: StoreError::NameChanged(_),
            ..
        }
    ));
}

#[test]
fn plan_orders_changes_so_a_name_swap_applies() {
    use engine::store::{Change, Plan};
    let mut s = MemStore::default();
    commit(
        &mut s,
        &batch(
            1,
            vec![
                Mutation::PutMailbox(mailbox(0, 0)),
                Mutation::PutMailbox(mailbox(1, 1)),
            ],
        ),
    );
    let rename = |i: usize, n: MailboxName| Mutation::RenameMailbox {
        uniqueid: uniq(i),
        new_name: n,
        at: UnixTime(50),
        modseq: ModSeq(2),
    };
    let tmp = MailboxName::new("tmp").unwrap();
    let swap = batch(
        2,
        vec![rename(0, tmp), rename(1, name(0)), rename(0, name(1))],
    );
    let plan = Plan::build(&s, &swap, &|_| None).unwrap();
    let kinds: Vec<&str> = plan
        .changes()
        .iter()
        .map(|c| match c {
            Change::RemoveMailbox(_) => "remove",
            Change::PutMailbox(_) => "put",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["remove", "remove", "put", "put"]);
    assert!(matches!(commit(&mut s, &swap), Completion::Durable { .. }));
    assert_eq!(s.mailbox(&name(0)).unwrap().unwrap().uniqueid, uniq(1));
    assert_eq!(s.mailbox(&name(1)).unwrap().unwrap().uniqueid, uniq(0));
    assert_eq!(
        s.mailbox_by_uniqueid(&uniq(0))
            .unwrap()
            .unwrap()
            .name_history
            .len(),
        2
    );
    // What the store refuses, the plan refuses.
    let bad = batch(3, vec![link(1)]);
    assert_eq!(
        Plan::build(&s, &bad, &|_| None).unwrap_err(),
        StoreError::MissingMessage(Guid::of(&msg(1)))
    );
}

#[test]
fn completions_hand_out_their_proof_only_for_the_expected_batch() {
    let mut s = MemStore::default();
    let c = commit(&mut s, &batch(5, vec![Mutation::PutMailbox(mailbox(0, 0))]));
    assert_eq!(c.batch_id(), Some(BatchId(5)));
    let c2 = commit(&mut s, &batch(6, vec![Mutation::PutMailbox(mailbox(1, 1))]));
    assert!(matches!(
        c2.into_proof(BatchId(5)),
        Err(Err(Completion::Durable { .. }))
    ));
    let proof = c.into_proof(BatchId(5)).unwrap();
    assert_eq!(proof.batch_id(), BatchId(5));
    let f = commit(
        &mut s,
        &batch(
            7,
            vec![Mutation::DeleteMailbox {
                uniqueid: uniq(3),
                at: UnixTime(0),
                modseq: ModSeq(0),
            }],
        ),
    );
    assert_eq!(
        f.into_proof(BatchId(7)).unwrap_err().unwrap(),
        StoreError::UnknownMailbox(uniq(3))
    );
}

#[test]
fn trimming_never_hides_lines_appended_later() {
    let line = |i: usize| Mutation::AppendSyncLog {
        channel: "squatter".into(),
        line: SyncLogLine::Mailbox(name(i)),
    };
    let trim = |t: u64| Mutation::TrimSyncLog {
        channel: "squatter".into(),
        through: t,
    };
    let mut s = MemStore::default();
    // A trim beyond the end is clamped: the line appended after it stays.
    commit(&mut s, &batch(1, vec![trim(100), line(0)]));
    assert_eq!(
        s.sync_log("squatter", 0, 10).unwrap(),
        vec![(1, SyncLogLine::Mailbox(name(0)))]
    );
    // Lines appended and trimmed in one batch still use up their numbers.
    commit(&mut s, &batch(2, vec![line(1), line(2), trim(100)]));
    assert!(s.sync_log("squatter", 0, 10).unwrap().is_empty());
    assert_eq!(s.sync_log_last("squatter").unwrap(), 3);
    // Same through the overlay before durability.
    let mut p = Pending::new(&s);
    p.push(&batch(3, vec![line(3), trim(4), line(4)])).unwrap();
    assert_eq!(
        p.sync_log("squatter", 0, 10).unwrap(),
        vec![(5, SyncLogLine::Mailbox(name(4)))]
    );
    assert_eq!(p.sync_log_last("squatter").unwrap(), 5);
    commit(&mut s, &batch(3, vec![line(3), trim(4), line(4)]));
    assert_eq!(
        s.sync_log("squatter", 0, 10).unwrap(),
        vec![(5, SyncLogLine::Mailbox(name(4)))]
    );
    assert_eq!(s.sync_log_last("squatter").unwrap(), 5);
}
