//! The full update (3.6.1 `mailbox_full_update`, §4.3 of the protocol
//! notes): the split-brain repair run after a mailbox update failed twice
//! with `IMAP_SYNC_CHECKSUM`.
//!
//! From the replica's complete record list (`GET FULLMAILBOX`) and ours,
//! [`plan`] decides, record by record and merged by UID:
//! - same UID, same GUID, fields differ: the replica's flags and
//!   annotations win if its MODSEQ is higher and its LAST_UPDATED not
//!   older; a replica expunge is taken over; either way our record is
//!   rewritten with a fresh MODSEQ so the next update pushes the merge;
//! - same UID, different GUID: both copies move to new UIDs (ours is
//!   *renumbered*, the replica's *copied back* with `GET FETCH`), and the
//!   old UID is expunged on both sides;
//! - only ours: below the replica's LAST_UID and live → renumbered; above
//!   it but with a MODSEQ the replica already passed → MODSEQ bumped;
//! - only the replica's, live: above our LAST_UID → fetched and appended
//!   with the same UID; else stale (below our `deletedmodseq`) → expunged
//!   on the replica, or copied back to a new UID.
//!
//! The result is a [`Copyback`]: the files to fetch, one [`WriteBatch`]
//! worth of local changes and the replica UIDs to `APPLY EXPUNGE`. This
//! module decides only; the machine fetches, writes and sends.

use bytes::Bytes;
use proto::dlist::{KvList, Value};

use crate::csync::wire::{mailbox_header, record_of, MailboxHeader, WireError};
use crate::model::{Guid, Mailbox, ModSeq, Record, Uid};
use crate::store::Mutation;

/// A record the replica has and we must copy back.
#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    /// The `GET FETCH` argument.
    pub kv: KvList,
    /// The replica's record, already renumbered to its local UID.
    pub record: Record,
}

/// Everything a full update does.
#[derive(Debug, Clone)]
pub(crate) struct Copyback {
    /// Files to fetch before writing.
    pub fetches: Vec<Fetch>,
    /// Local record rewrites and the mailbox header (last).
    pub mutations: Vec<Mutation>,
    /// Replica UIDs to expunge afterwards.
    pub expunge: Vec<u32>,
    /// How many of our records moved to new UIDs.
    pub renumbered: usize,
}

impl Copyback {
    /// Nothing to change on either side.
    pub fn is_empty(&self) -> bool {
        self.fetches.is_empty() && self.mutations.is_empty() && self.expunge.is_empty()
    }
}

/// Reads a `GET FULLMAILBOX` answer.
pub(crate) fn read_full(kv: &KvList) -> Result<(MailboxHeader, Vec<Record>), WireError> {
    let header = mailbox_header(kv, false)?;
    let mut records = Vec::new();
    if let Some(list) = kv.get("RECORD") {
        for v in list.as_list().ok_or(WireError::Bad("RECORD"))? {
            records.push(record_of(v)?);
        }
    }
    records.sort_by_key(|r| r.uid);
    Ok((header, records))
}

fn differs(a: &Record, b: &Record) -> bool {
    a.modseq != b.modseq
        || a.last_updated != b.last_updated
        || a.internaldate != b.internaldate
        || a.flags != b.flags
        || a.expunged != b.expunged
        || a.annotations != b.annotations
        || a.thrid != b.thrid
        || a.savedate != b.savedate
        || a.createdmodseq != b.createdmodseq
}

/// Decides the repair of `local` (with its records `ours`, by UID) against
/// the replica's `theirs`. `dest_partition` names the replica partition
/// for `GET FETCH`.
pub(crate) fn plan(
    local: &Mailbox,
    ours: &[Record],
    replica: &MailboxHeader,
    theirs: &[Record],
    dest_partition: &Bytes,
) -> Copyback {
    let mut mb = local.clone();
    if replica.uidvalidity > mb.uidvalidity.get() {
        mb.uidvalidity = crate::csync::wire::uidvalidity(replica.uidvalidity);
    }
    let mut modseq = mb.highestmodseq.get().max(replica.highestmodseq.get());
    let mut next_uid = mb.last_uid.max(replica.last_uid);
    let mut out = Copyback {
        fetches: Vec::new(),
        mutations: Vec::new(),
        expunge: Vec::new(),
        renumbered: 0,
    };
    let mut bump = |r: &mut Record| {
        modseq += 1;
        r.modseq = ModSeq(modseq);
    };
    let mut new_uid = || {
        next_uid += 1;
        Uid::new(next_uid).expect("non-zero")
    };
    let fetch_kv = |r: &Record| {
        KvList::new()
            .with(
                "MBOXNAME",
                Value::string(Bytes::copy_from_slice(replica.name.as_bytes())),
            )
            .with("PARTITION", Value::string(dest_partition.clone()))
            .with(
                "UNIQUEID",
                Value::string(Bytes::copy_from_slice(replica.uniqueid.as_bytes())),
            )
            .with("GUID", Value::Atom(Bytes::from(r.guid.to_hex())))
            .with("UID", Value::num(r.uid.get().into()))
    };
    let (mut i, mut j) = (0, 0);
    // Copies that get new UIDs are collected and numbered after the walk,
    // lower GUID first, as Cyrus does for a split brain.
    let mut renumber: Vec<Record> = Vec::new();
    let mut copyback: Vec<Record> = Vec::new();
    while i < ours.len() || j < theirs.len() {
        let o = ours.get(i);
        let t = theirs.get(j);
        match (o, t) {
            (Some(o), Some(t)) if o.uid == t.uid => {
                i += 1;
                j += 1;
                if o.expunged && t.expunged {
                    continue;
                }
                if o.guid != t.guid {
                    if !o.expunged {
                        renumber.push(o.clone());
                        let mut gone = o.clone();
                        gone.expunged = true;
                        bump(&mut gone);
                        out.mutations.push(Mutation::PutRecord {
                            mailbox: mb.uniqueid.clone(),
                            record: gone,
                        });
                    }
                    if !t.expunged {
                        copyback.push(t.clone());
                        out.expunge.push(t.uid.get());
                    }
                    continue;
                }
                if !differs(o, t) {
                    continue;
                }
                let mut merged = o.clone();
                if t.expunged {
                    merged.expunged = true;
                } else if t.modseq > o.modseq && t.last_updated >= o.last_updated {
                    merged.flags = t.flags.clone();
                    merged.annotations = t.annotations.clone();
                    merged.thrid = t.thrid;
                    merged.last_updated = t.last_updated;
                }
                bump(&mut merged);
                out.mutations.push(Mutation::PutRecord {
                    mailbox: mb.uniqueid.clone(),
                    record: merged,
                });
            }
            (Some(o), t) if t.is_none_or_after(o.uid) => {
                i += 1;
                if o.uid.get() <= replica.last_uid && !o.expunged {
                    renumber.push(o.clone());
                    let mut gone = o.clone();
                    gone.expunged = true;
                    bump(&mut gone);
                    out.mutations.push(Mutation::PutRecord {
                        mailbox: mb.uniqueid.clone(),
                        record: gone,
                    });
                } else if o.uid.get() > replica.last_uid
                    && o.modseq.get() <= replica.highestmodseq.get()
                {
                    let mut r = o.clone();
                    bump(&mut r);
                    out.mutations.push(Mutation::PutRecord {
                        mailbox: mb.uniqueid.clone(),
                        record: r,
                    });
                }
            }
            (_, Some(t)) => {
                j += 1;
                if t.expunged {
                    continue;
                }
                if t.uid.get() > local.last_uid {
                    let mut r = t.clone();
                    bump(&mut r);
                    out.fetches.push(Fetch {
                        kv: fetch_kv(t),
                        record: r,
                    });
                } else if t.modseq < local.deletedmodseq {
                    out.expunge.push(t.uid.get());
                } else {
                    copyback.push(t.clone());
                    out.expunge.push(t.uid.get());
                }
            }
            (Some(_), None) | (None, None) => unreachable!("covered by the guards above"),
        }
    }
    let mut moved: Vec<(Guid, bool, Record)> = renumber
        .into_iter()
        .map(|r| (r.guid, false, r))
        .chain(copyback.into_iter().map(|r| (r.guid, true, r)))
        .collect();
    moved.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
    for (_, from_replica, r) in moved {
        let mut n = r.clone();
        n.uid = new_uid();
        n.expunged = false;
        bump(&mut n);
        if from_replica {
            out.fetches.push(Fetch {
                kv: fetch_kv(&r),
                record: n,
            });
        } else {
            out.renumbered += 1;
            out.mutations.push(Mutation::PutRecord {
                mailbox: mb.uniqueid.clone(),
                record: n,
            });
        }
    }
    if out.is_empty()
        && mb.uidvalidity == local.uidvalidity
        && modseq == local.highestmodseq.get()
        && next_uid == local.last_uid
    {
        return out;
    }
    mb.highestmodseq = ModSeq(modseq);
    mb.last_uid = next_uid;
    out.mutations.push(Mutation::PutMailbox(mb));
    out
}

trait AfterUid {
    fn is_none_or_after(&self, uid: Uid) -> bool;
}
impl AfterUid for Option<&Record> {
    fn is_none_or_after(&self, uid: Uid) -> bool {
        match self {
            None => true,
            Some(r) => r.uid > uid,
        }
    }
}
