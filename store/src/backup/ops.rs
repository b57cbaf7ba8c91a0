//! The operations a backup journal records: deltas, one per thing that
//! changed, in the dlist form Cyrus's own replication prints (so a
//! journal can be read with the csync decoder and eyes).
//!
//! [`ops_of_batch`] turns one durable write batch of the replica machine
//! into the operations of each user it touched: a user's journal only
//! ever gets that user's mailboxes, seen state, subscriptions, quota roots
//! and Sieve scripts, however many users one connection carries.
//!
//! What it never does: read or write files, or keep message bytes (those
//! go to the [`Pack`](super::Pack) by GUID).

use std::collections::BTreeMap;

use bytes::Bytes;
use engine::csync::apply::mailbox_guid_of;
use engine::csync::wire::{self, owner_of};
use engine::model::{
    Guid, Mailbox, MailboxName, Partition, QuotaRoot, Record, Seen, SieveName, SieveScript,
    Subscription, SyncCrcs, Uid, UniqueId, UnixTime, UserId,
};
use engine::store::{MailRead, Mutation, StoreError, WriteBatch};
use proto::csync::{ClientLine, Command, Event as DecodeEvent, ServerDecoder};
use proto::dlist::{Item, KvList, Value};

/// One recorded change. Replayed in order by
/// [`Snapshot`](super::Snapshot).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// A mailbox's header (everything but its records) after a change:
    /// created, renamed, its counters or annotations changed.
    Mailbox(Box<Mailbox>),
    /// Records added or changed (an expunge is a record with
    /// `expunged: true`: the message stays restorable).
    Records {
        /// The mailbox.
        mailbox: UniqueId,
        /// The records as they are now.
        records: Vec<Record>,
    },
    /// Records removed from the index (Cyrus cleanup of expunged ones).
    Purge {
        /// The mailbox.
        mailbox: UniqueId,
        /// Which UIDs.
        uids: Vec<Uid>,
    },
    /// The mailbox was deleted (its history stays in the journal).
    Unmailbox {
        /// Which.
        mailbox: UniqueId,
        /// Its name then.
        name: MailboxName,
    },
    /// The user's seen state for a mailbox.
    Seen {
        /// The mailbox (may be another user's).
        mailbox: UniqueId,
        /// The state.
        seen: Seen,
    },
    /// The user's seen state for a mailbox was dropped.
    Unseen {
        /// The mailbox.
        mailbox: UniqueId,
    },
    /// A subscription changed.
    Sub {
        /// The name.
        name: MailboxName,
        /// The new state.
        sub: Subscription,
    },
    /// A quota root of the user was set.
    Quota {
        /// The root.
        root: MailboxName,
        /// Limits and modseq (usage is not kept: the server recomputes it).
        quota: QuotaRoot,
    },
    /// A quota root of the user was removed.
    Unquota {
        /// The root.
        root: MailboxName,
    },
    /// A Sieve script was stored.
    Sieve(SieveScript),
    /// A Sieve script was deleted.
    Unsieve(SieveName),
    /// The active Sieve script changed (`None`: none active).
    Activate(Option<SieveName>),
    /// The user was deleted on the master: everything above is gone now
    /// (and stays restorable from earlier points in time).
    Unuser,
}

/// Why recorded bytes could not be read back as operations. The journal's
/// fault (damage or a foreign file), never the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The bytes are not a sequence of csync `APPLY` lines.
    #[error("not an operation line: {0}")]
    Framing(String),
    /// A line's key is not an operation this version knows.
    #[error("unknown operation {0}")]
    Unknown(String),
    /// A known operation with a missing or malformed field.
    #[error("operation {op}: {what}")]
    Field {
        /// The operation's key.
        op: &'static str,
        /// What is wrong.
        what: String,
    },
}

fn s(b: &[u8]) -> Value {
    Value::string(Bytes::copy_from_slice(b))
}

fn field<T, E: std::fmt::Display>(op: &'static str, r: Result<T, E>) -> Result<T, OpError> {
    r.map_err(|e| OpError::Field {
        op,
        what: e.to_string(),
    })
}

fn req<'a>(op: &'static str, kv: &'a KvList, key: &'static str) -> Result<&'a [u8], OpError> {
    kv.get(key)
        .and_then(|v| v.as_bytes())
        .ok_or_else(|| OpError::Field {
            op,
            what: format!("{key} missing"),
        })
}

fn num(op: &'static str, kv: &KvList, key: &'static str) -> Result<u64, OpError> {
    kv.get(key)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| OpError::Field {
            op,
            what: format!("{key} missing or not a number"),
        })
}

impl Op {
    /// The operation as one dlist item (`KEY %(…)`).
    pub fn to_item(&self) -> Item {
        let (key, kv): (&str, KvList) = match self {
            Op::Mailbox(mb) => ("MAILBOX", wire::mailbox_kv(mb, SyncCrcs::EMPTY, None)),
            Op::Records { mailbox, records } => (
                "RECORDS",
                KvList::new().with("UNIQUEID", s(mailbox.as_bytes())).with(
                    "RECORD",
                    Value::List(records.iter().map(wire::record_kv).collect()),
                ),
            ),
            Op::Purge { mailbox, uids } => (
                "PURGE",
                KvList::new().with("UNIQUEID", s(mailbox.as_bytes())).with(
                    "UID",
                    Value::List(uids.iter().map(|u| Value::num(u.get().into())).collect()),
                ),
            ),
            Op::Unmailbox { mailbox, name } => (
                "UNMAILBOX",
                KvList::new()
                    .with("UNIQUEID", s(mailbox.as_bytes()))
                    .with("MBOXNAME", s(name.as_bytes())),
            ),
            Op::Seen { mailbox, seen } => (
                "SEEN",
                // seen_of wants a USERID; the journal's user is implied.
                wire::seen_kv(mailbox, seen).with("USERID", s(b"-")),
            ),
            Op::Unseen { mailbox } => (
                "UNSEEN",
                KvList::new().with("UNIQUEID", s(mailbox.as_bytes())),
            ),
            Op::Sub { name, sub } => (
                "SUB",
                KvList::new()
                    .with("MBOXNAME", s(name.as_bytes()))
                    .with("SUBSCRIBED", Value::num(sub.subscribed.into()))
                    .with("CHANGED", Value::num(sub.changed_at.0.max(0) as u64)),
            ),
            Op::Quota { root, quota } => ("QUOTA", wire::quota_kv(root, quota)),
            Op::Unquota { root } => ("UNQUOTA", KvList::new().with("ROOT", s(root.as_bytes()))),
            Op::Sieve(script) => (
                "SIEVE",
                KvList::new()
                    .with("FILENAME", s(script.name.as_bytes()))
                    .with(
                        "LAST_UPDATE",
                        Value::num(script.last_update.0.max(0) as u64),
                    )
                    .with("CONTENT", Value::Literal(script.content.clone())),
            ),
            Op::Unsieve(name) => (
                "UNSIEVE",
                KvList::new().with("FILENAME", s(name.as_bytes())),
            ),
            Op::Activate(name) => (
                "ACTIVATE",
                match name {
                    Some(n) => KvList::new().with("FILENAME", s(n.as_bytes())),
                    None => KvList::new(),
                },
            ),
            Op::Unuser => ("UNUSER", KvList::new()),
        };
        Item::new(key, Value::KvList(kv))
    }

    /// Reads one item back (`owner`: the journal's user, set on mailboxes).
    pub fn from_item(item: &Item, owner: Option<&UserId>) -> Result<Op, OpError> {
        let empty = KvList::new();
        let kv = item.value.as_kvlist().unwrap_or(&empty);
        let uid_of = |op: &'static str| -> Result<UniqueId, OpError> {
            field(op, UniqueId::new(req(op, kv, "UNIQUEID")?))
        };
        Ok(match &item.key[..] {
            b"MAILBOX" => Op::Mailbox(Box::new(mailbox_of(kv, owner)?)),
            b"RECORDS" => {
                let mut records = Vec::new();
                for r in kv
                    .get("RECORD")
                    .and_then(|v| v.as_list())
                    .unwrap_or_default()
                {
                    records.push(field("RECORDS", wire::record_of(r))?);
                }
                Op::Records {
                    mailbox: uid_of("RECORDS")?,
                    records,
                }
            }
            b"PURGE" => {
                let mut uids = Vec::new();
                for u in kv.get("UID").and_then(|v| v.as_list()).unwrap_or_default() {
                    let n = u.as_u64().ok_or_else(|| OpError::Field {
                        op: "PURGE",
                        what: "UID not a number".into(),
                    })?;
                    uids.push(field("PURGE", Uid::new(n as u32))?);
                }
                Op::Purge {
                    mailbox: uid_of("PURGE")?,
                    uids,
                }
            }
            b"UNMAILBOX" => Op::Unmailbox {
                mailbox: uid_of("UNMAILBOX")?,
                name: field(
                    "UNMAILBOX",
                    MailboxName::new(req("UNMAILBOX", kv, "MBOXNAME")?),
                )?,
            },
            b"SEEN" => {
                let (_, mailbox, seen) = field("SEEN", wire::seen_of(kv))?;
                Op::Seen { mailbox, seen }
            }
            b"UNSEEN" => Op::Unseen {
                mailbox: uid_of("UNSEEN")?,
            },
            b"SUB" => Op::Sub {
                name: field("SUB", MailboxName::new(req("SUB", kv, "MBOXNAME")?))?,
                sub: Subscription {
                    subscribed: num("SUB", kv, "SUBSCRIBED")? != 0,
                    changed_at: UnixTime(num("SUB", kv, "CHANGED")? as i64),
                },
            },
            b"QUOTA" => {
                let (root, quota) = field("QUOTA", wire::quota_of(kv))?;
                Op::Quota { root, quota }
            }
            b"UNQUOTA" => Op::Unquota {
                root: field("UNQUOTA", MailboxName::new(req("UNQUOTA", kv, "ROOT")?))?,
            },
            b"SIEVE" => Op::Sieve(SieveScript {
                name: field("SIEVE", SieveName::new(req("SIEVE", kv, "FILENAME")?))?,
                last_update: UnixTime(num("SIEVE", kv, "LAST_UPDATE")? as i64),
                content: kv
                    .get("CONTENT")
                    .and_then(|v| v.as_shared_bytes())
                    .cloned()
                    .ok_or_else(|| OpError::Field {
                        op: "SIEVE",
                        what: "CONTENT missing".into(),
                    })?,
            }),
            b"UNSIEVE" => Op::Unsieve(field(
                "UNSIEVE",
                SieveName::new(req("UNSIEVE", kv, "FILENAME")?),
            )?),
            b"ACTIVATE" => Op::Activate(match kv.get("FILENAME").and_then(|v| v.as_bytes()) {
                Some(n) => Some(field("ACTIVATE", SieveName::new(n))?),
                None => None,
            }),
            b"UNUSER" => Op::Unuser,
            other => {
                return Err(OpError::Unknown(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        })
    }
}

/// A mailbox header as the journal prints it, back into the model.
fn mailbox_of(kv: &KvList, owner: Option<&UserId>) -> Result<Mailbox, OpError> {
    let h = field("MAILBOX", wire::mailbox_header(kv, false))?;
    let partition = field(
        "MAILBOX",
        Partition::new(h.partition.as_deref().unwrap_or(b"default")),
    )?;
    let mut mb = Mailbox::new(
        h.uniqueid.clone(),
        mailbox_guid_of(&h.uniqueid),
        h.name.clone(),
        owner.cloned().or_else(|| owner_of(&h.name)),
        wire::uidvalidity(h.uidvalidity),
        partition,
        UnixTime::ZERO,
    );
    mb.mbtype = h.mbtype;
    mb.last_uid = h.last_uid;
    mb.highestmodseq = h.highestmodseq;
    mb.recentuid = h.recentuid;
    mb.recenttime = h.recenttime;
    mb.last_appenddate = h.last_appenddate;
    mb.pop3_last_login = h.pop3_last_login;
    mb.pop3_show_after = h.pop3_show_after;
    mb.xconvmodseq = h.xconvmodseq;
    mb.raclmodseq = h.raclmodseq;
    mb.createdmodseq = h.createdmodseq;
    mb.foldermodseq = h.foldermodseq.unwrap_or(h.highestmodseq);
    mb.acl = h.acl;
    mb.options = h.options;
    mb.quotaroot = h.quotaroot;
    mb.annotations = h.annotations;
    Ok(mb)
}

/// Most records in one `RECORDS` operation, so that no journal line grows
/// with a mailbox's size.
pub const RECORDS_PER_OP: usize = 1024;

/// Encodes operations as the payload of one chunk.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        let enc = Command::Apply(op.to_item()).encode();
        out.extend_from_slice(enc.text());
    }
    out
}

/// Decodes a chunk's payload.
pub fn decode(payload: &[u8], owner: Option<&UserId>) -> Result<Vec<Op>, OpError> {
    let mut dec = ServerDecoder::new();
    dec.handle_input(payload);
    let mut ops = Vec::new();
    loop {
        match dec.poll_event() {
            Ok(Some(DecodeEvent::Decoded(ClientLine::Command(Command::Apply(item))))) => {
                ops.push(Op::from_item(&item, owner)?)
            }
            Ok(Some(other)) => return Err(OpError::Framing(format!("{other:?}"))),
            Ok(None) => break,
            Err(e) => return Err(OpError::Framing(e.to_string())),
        }
    }
    // Every byte must belong to a complete line.
    dec.handle_eof()
        .map_err(|e| OpError::Framing(e.to_string()))?;
    Ok(ops)
}

/// Whose journal a mailbox belongs in: its owner, or `None` (shared).
fn owner_key(mb: &Mailbox) -> Option<UserId> {
    mb.owner.clone().or_else(|| owner_of(&mb.name))
}

/// Per user (`None`: shared), the operations of one batch; and the GUIDs
/// (with sizes) of the live records it names.
pub type BatchOps = (BTreeMap<Option<UserId>, Vec<Op>>, Vec<(Guid, u64)>);

/// What a batch did, per user (`None`: shared mailboxes), as journal
/// operations; and the GUIDs of live records whose bytes the backup must
/// hold. `deleted` names the owner and name of every mailbox the batch
/// deletes, read before it was applied; `after` reads the state after it.
pub fn ops_of_batch(
    batch: &WriteBatch,
    deleted: &BTreeMap<UniqueId, (Option<UserId>, MailboxName)>,
    after: &impl MailRead,
) -> Result<BatchOps, StoreError> {
    let mut per: BTreeMap<Option<UserId>, Vec<Op>> = BTreeMap::new();
    let mut guids = Vec::new();
    let mut headed: BTreeMap<UniqueId, Option<UserId>> = BTreeMap::new();
    // A mailbox's header goes in once per batch, before its first record
    // change, as it is after the whole batch.
    fn head(
        id: &UniqueId,
        per: &mut BTreeMap<Option<UserId>, Vec<Op>>,
        headed: &mut BTreeMap<UniqueId, Option<UserId>>,
        after: &impl MailRead,
    ) -> Result<Option<Option<UserId>>, StoreError> {
        if let Some(o) = headed.get(id) {
            return Ok(Some(o.clone()));
        }
        let Some(mb) = after.mailbox_by_uniqueid(id)? else {
            return Ok(None);
        };
        let owner = owner_key(&mb);
        per.entry(owner.clone())
            .or_default()
            .push(Op::Mailbox(Box::new(mb)));
        headed.insert(id.clone(), owner.clone());
        Ok(Some(owner))
    }
    for m in &batch.mutations {
        match m {
            Mutation::PutMailbox(mb) => {
                head(&mb.uniqueid, &mut per, &mut headed, after)?;
            }
            Mutation::RenameMailbox { uniqueid, .. } => {
                headed.remove(uniqueid);
                head(uniqueid, &mut per, &mut headed, after)?;
            }
            Mutation::SetAnnotation {
                mailbox: Some(id), ..
            } => {
                headed.remove(id);
                head(id, &mut per, &mut headed, after)?;
            }
            Mutation::PutRecord { mailbox, record } => {
                let Some(owner) = head(mailbox, &mut per, &mut headed, after)? else {
                    continue;
                };
                if !record.expunged {
                    guids.push((record.guid, record.size));
                }
                let ops = per.entry(owner).or_default();
                match ops.last_mut() {
                    Some(Op::Records {
                        mailbox: m,
                        records,
                    }) if m == mailbox && records.len() < RECORDS_PER_OP => {
                        records.push(record.clone())
                    }
                    _ => ops.push(Op::Records {
                        mailbox: mailbox.clone(),
                        records: vec![record.clone()],
                    }),
                }
            }
            Mutation::PurgeRecords { mailbox, uids } => {
                let Some(owner) = head(mailbox, &mut per, &mut headed, after)? else {
                    continue;
                };
                for part in uids.chunks(RECORDS_PER_OP) {
                    per.entry(owner.clone()).or_default().push(Op::Purge {
                        mailbox: mailbox.clone(),
                        uids: part.to_vec(),
                    });
                }
            }
            Mutation::DeleteMailbox { uniqueid, .. } => {
                headed.remove(uniqueid);
                if let Some((owner, name)) = deleted.get(uniqueid) {
                    per.entry(owner.clone()).or_default().push(Op::Unmailbox {
                        mailbox: uniqueid.clone(),
                        name: name.clone(),
                    });
                }
            }
            Mutation::PutSeen {
                user,
                mailbox,
                seen,
            } => per.entry(Some(user.clone())).or_default().push(Op::Seen {
                mailbox: mailbox.clone(),
                seen: seen.clone(),
            }),
            Mutation::DeleteSeen { user, mailbox } => {
                per.entry(Some(user.clone())).or_default().push(Op::Unseen {
                    mailbox: mailbox.clone(),
                })
            }
            Mutation::SetSubscription {
                user,
                name,
                subscription,
            } => per.entry(Some(user.clone())).or_default().push(Op::Sub {
                name: name.clone(),
                sub: *subscription,
            }),
            Mutation::PutQuota { root, quota } => {
                per.entry(owner_of(root)).or_default().push(Op::Quota {
                    root: root.clone(),
                    quota: quota.clone(),
                })
            }
            Mutation::DeleteQuota { root } => per
                .entry(owner_of(root))
                .or_default()
                .push(Op::Unquota { root: root.clone() }),
            Mutation::PutSieve { user, script } => per
                .entry(Some(user.clone()))
                .or_default()
                .push(Op::Sieve(script.clone())),
            Mutation::DeleteSieve { user, name } => per
                .entry(Some(user.clone()))
                .or_default()
                .push(Op::Unsieve(name.clone())),
            Mutation::ActivateSieve { user, name } => per
                .entry(Some(user.clone()))
                .or_default()
                .push(Op::Activate(name.clone())),
            Mutation::DeleteUser { user, .. } => {
                per.entry(Some(user.clone())).or_default().push(Op::Unuser)
            }
            // Bytes go to the pack (by the GUIDs above); server
            // annotations, tombstone expiry and sync logs are not a
            // user's backup.
            _ => {}
        }
    }
    per.retain(|_, ops| !ops.is_empty());
    Ok((per, guids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::model::{ModSeq, SeqSet, UidValidity};

    fn mb() -> Mailbox {
        let id = UniqueId::new("abc123").unwrap();
        let mut m = Mailbox::new(
            id.clone(),
            mailbox_guid_of(&id),
            MailboxName::new("user.alice.Work").unwrap(),
            Some(UserId::new("alice").unwrap()),
            UidValidity::new(77).unwrap(),
            Partition::new("default").unwrap(),
            UnixTime::ZERO,
        );
        m.last_uid = 9;
        m.highestmodseq = ModSeq(12);
        m.foldermodseq = ModSeq(12);
        m
    }

    #[test]
    fn every_op_round_trips_through_its_encoding() {
        let m = mb();
        let mut r = Record::new(
            Uid::new(3).unwrap(),
            ModSeq(5),
            Guid::of(b"hello"),
            5,
            UnixTime(1_700_000_000),
        );
        r.expunged = true;
        let ops = vec![
            Op::Mailbox(Box::new(m.clone())),
            Op::Records {
                mailbox: m.uniqueid.clone(),
                records: vec![r],
            },
            Op::Purge {
                mailbox: m.uniqueid.clone(),
                uids: vec![Uid::new(1).unwrap(), Uid::new(2).unwrap()],
            },
            Op::Seen {
                mailbox: m.uniqueid.clone(),
                seen: Seen {
                    lastread: UnixTime(5),
                    lastuid: 3,
                    lastchange: UnixTime(6),
                    seenuids: SeqSet::parse(b"1:3").unwrap(),
                },
            },
            Op::Unseen {
                mailbox: m.uniqueid.clone(),
            },
            Op::Sub {
                name: m.name.clone(),
                sub: Subscription {
                    subscribed: true,
                    changed_at: UnixTime(9),
                },
            },
            Op::Quota {
                root: MailboxName::new("user.alice").unwrap(),
                quota: QuotaRoot::default(),
            },
            Op::Unquota {
                root: MailboxName::new("user.alice").unwrap(),
            },
            Op::Sieve(SieveScript {
                name: SieveName::new("main").unwrap(),
                last_update: UnixTime(10),
                content: Bytes::from_static(b"require \"fileinto\";\r\nkeep;\r\n"),
            }),
            Op::Unsieve(SieveName::new("old").unwrap()),
            Op::Activate(Some(SieveName::new("main").unwrap())),
            Op::Activate(None),
            Op::Unmailbox {
                mailbox: m.uniqueid.clone(),
                name: m.name.clone(),
            },
            Op::Unuser,
        ];
        let bytes = encode(&ops);
        let back = decode(&bytes, m.owner.as_ref()).unwrap();
        assert_eq!(back, ops);
    }
}
