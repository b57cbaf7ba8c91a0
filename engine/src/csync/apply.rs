//! What an `APPLY MAILBOX` (and `RESTORE MAILBOX`) does to a replica, as
//! Cyrus 3.6.1's `sync_apply_mailbox` decides it (research note §5.3), over
//! the [`MailRead`] of durable state: every check first, then the
//! mutations of one [`WriteBatch`](crate::store::WriteBatch).
//!
//! Differences from Cyrus, each where Cyrus would crash or half-apply:
//! * a new live record whose bytes are neither stored nor uploaded on this
//!   connection is refused with `IMAP_SYNC_CHECKSUM` before any write
//!   (Cyrus aborts the process mid-apply); the client's retry re-reserves
//!   and re-uploads, so replication heals;
//! * the whole apply is one batch: the ACL change Cyrus writes before pass 2
//!   is not kept when the batch is refused.
//!
//! Like Cyrus, a CRC mismatch found *after* the apply is answered
//! `IMAP_SYNC_CHECKSUM` with the apply committed ([`MailboxPlan::crc_ok`]):
//! the client's repeat or full update then repairs from that state. We
//! compute the resulting CRCs before writing, so the decision is pure.

use std::collections::BTreeMap;

use proto::csync::Code;

use super::wire::{owner_of, uidvalidity, MailboxHeader};
use crate::model::{
    Guid, Mailbox, MailboxGuid, MailboxKind, ModSeq, Partition, Record, SyncCrcs, Uid, UniqueId,
    UnixTime,
};
use crate::store::{MailRead, Mutation, StoreError, UidRange};

/// Why an apply is refused; each maps to one 3.6.1 status line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Peer's request conflicts with the replica (the `IMAP_*` code says how).
    #[error("refused: {0:?}")]
    Code(Code),
    /// Peer's fault: required or well-formed parameters missing
    /// (`NO IMAP_PROTOCOL_BAD_PARAMETERS`, no text, as 3.6.1).
    #[error("bad parameters: {0}")]
    BadParameters(String),
    /// A refusal Cyrus reports as `NO Unknown error` (type mismatch, name
    /// taken on rename, unknown partition).
    #[error("{0}")]
    Unknown(String),
    /// Our store's failure reading state.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The session facts an apply depends on.
pub struct ApplyCtx<'a> {
    /// `APPLY FORCE` (or `sync_server -f`): relax the monotonicity checks.
    pub force: bool,
    /// `SIEVE-MAILBOX` enabled by `APPLY CAPABILITIES`.
    pub sieve_mailbox: bool,
    /// GUIDs uploaded on this connection (or found by RESERVE), with size.
    pub staged: &'a BTreeMap<Guid, u64>,
    /// Wall clock, for created/renamed times.
    pub now: UnixTime,
    /// Partitions this server has; empty = any.
    pub partitions: &'a [String],
}

/// The outcome of planning an apply.
#[derive(Debug)]
pub struct MailboxPlan {
    /// What to write, in order.
    pub mutations: Vec<Mutation>,
    /// Whether the resulting CRCs match what the master sent (else answer
    /// `IMAP_SYNC_CHECKSUM` once the write is durable).
    pub crc_ok: bool,
    /// The mailbox as it will be.
    pub mailbox: Mailbox,
}

const CHECKSUM: Refusal = Refusal::Code(Code::SyncChecksum);

/// A mailbox GUID for a Cyrus mailbox (Cyrus has none): derived from its
/// uniqueid as the model does, so master and replica agree.
pub fn mailbox_guid_of(uniqueid: &UniqueId) -> MailboxGuid {
    MailboxGuid::derive_from_uniqueid(uniqueid)
}

fn partition_of(hdr: &MailboxHeader, ctx: &ApplyCtx<'_>) -> Result<Partition, Refusal> {
    let p = hdr.partition.as_deref().unwrap_or(b"default");
    let part = Partition::new(p).map_err(|_| Refusal::BadParameters("PARTITION".into()))?;
    if !ctx.partitions.is_empty() && !ctx.partitions.iter().any(|x| x.as_bytes() == p) {
        // Cyrus 3.6 asserts and dies here (issue #2120).
        return Err(Refusal::Unknown(format!("unknown partition {}", part)));
    }
    Ok(part)
}

/// Plans an `APPLY MAILBOX` with `records` (ascending UID as sent).
pub fn plan_mailbox<S: MailRead + ?Sized>(
    store: &S,
    hdr: &MailboxHeader,
    records: &[Record],
    ctx: &ApplyCtx<'_>,
) -> Result<MailboxPlan, Refusal> {
    if hdr.mbtype.kind == MailboxKind::Sieve && !ctx.sieve_mailbox {
        return Err(Refusal::BadParameters(
            "#sieve without SIEVE-MAILBOX".into(),
        ));
    }
    let mut mutations = Vec::new();
    let existing = store.mailbox(&hdr.name)?;
    let by_id = store.mailbox_by_uniqueid(&hdr.uniqueid)?;

    // Intermediate and tombstone entries: name, type and ids only.
    if hdr.mbtype.intermediate || hdr.mbtype.deleted {
        let mut mb = match (&existing, &by_id) {
            (Some(e), _) if e.uniqueid == hdr.uniqueid => e.clone(),
            (None, None) => new_mailbox(hdr, ctx, Partition::new("default").expect("valid"))?,
            _ => return Err(Refusal::Code(Code::MailboxMoved)),
        };
        mb.mbtype = hdr.mbtype;
        mb.foldermodseq = hdr.highestmodseq;
        mb.createdmodseq = hdr.createdmodseq;
        mutations.push(Mutation::PutMailbox(mb.clone()));
        return Ok(MailboxPlan {
            mutations,
            crc_ok: true,
            mailbox: mb,
        });
    }

    let partition = partition_of(hdr, ctx)?;
    // The replica's current state: (mailbox, CRCs, is it new).
    let (mut mb, old_crcs, fresh) = match existing {
        None => {
            if by_id.is_some() {
                // The uniqueid lives under another name: the client must
                // RENAME first.
                return Err(Refusal::Code(Code::MailboxMoved));
            }
            (
                new_mailbox(hdr, ctx, partition.clone())?,
                SyncCrcs::EMPTY,
                true,
            )
        }
        Some(e) if e.uniqueid != hdr.uniqueid => {
            // 3.6: replace a mailbox that never had mail, or when forced
            // (PR #3608); else "uniqueid changed - retry".
            if !(ctx.force || e.last_uid == 0) || by_id.is_some() {
                return Err(Refusal::Code(Code::MailboxMoved));
            }
            mutations.push(Mutation::DeleteMailbox {
                uniqueid: e.uniqueid.clone(),
                at: ctx.now,
                modseq: e.highestmodseq,
            });
            (
                new_mailbox(hdr, ctx, partition.clone())?,
                SyncCrcs::EMPTY,
                true,
            )
        }
        Some(e) => {
            let crcs = store.sync_crcs(&e.uniqueid)?;
            (e, crcs, false)
        }
    };

    if let Some((since_modseq, since_crcs)) = hdr.since {
        if !fresh && (since_modseq != mb.highestmodseq || !since_crcs.matches(&old_crcs)) {
            return Err(Refusal::Code(Code::SyncChanged));
        }
    }
    if !fresh && mb.mbtype.kind != hdr.mbtype.kind {
        return Err(Refusal::Unknown("mailbox type differs".into()));
    }
    // The master may never be behind the replica (unless forced).
    let behind = hdr.highestmodseq < mb.highestmodseq
        || hdr.uidvalidity < mb.uidvalidity.get()
        || hdr.last_uid < mb.last_uid
        || hdr.xconvmodseq < mb.xconvmodseq;
    if !fresh && !ctx.force && behind {
        return Err(CHECKSUM);
    }

    // Pass 1: validate every record, collect the writes.
    let replica_last_uid = if fresh { 0 } else { mb.last_uid };
    let mut crcs = old_crcs;
    let mut puts: Vec<Record> = Vec::with_capacity(records.len());
    let mut links: BTreeMap<Guid, u64> = BTreeMap::new();
    let mut prev_uid: Option<Uid> = None;
    for r in records {
        if prev_uid.is_some_and(|p| p >= r.uid) {
            return Err(Refusal::BadParameters(
                "RECORD not in ascending UID order".into(),
            ));
        }
        prev_uid = Some(r.uid);
        let old = if fresh || r.uid.get() > replica_last_uid {
            None
        } else {
            store.record(&mb.uniqueid, r.uid)?
        };
        match old {
            Some(old) => {
                if old.expunged && r.expunged {
                    continue;
                }
                if old.guid != r.guid {
                    return Err(CHECKSUM);
                }
                if !ctx.force && old.modseq > r.modseq {
                    return Err(CHECKSUM);
                }
                if old.expunged && !r.expunged {
                    return Err(CHECKSUM);
                }
                // Master's fields win; the replica's peer-only data stays.
                let mut new = r.clone();
                new.peer_guid = old.peer_guid.clone();
                crcs.toggle(&old);
                crcs.toggle(&new);
                puts.push(new);
            }
            None if r.uid.get() <= replica_last_uid => {
                if !r.expunged {
                    return Err(CHECKSUM);
                }
            }
            None => {
                if !r.expunged && !links.contains_key(&r.guid) {
                    match ctx.staged.get(&r.guid) {
                        Some(&size) => {
                            if size != r.size {
                                return Err(CHECKSUM);
                            }
                            links.insert(r.guid, size);
                        }
                        None => {
                            if !store.has_message(&r.guid)? {
                                return Err(CHECKSUM);
                            }
                        }
                    }
                }
                crcs.toggle(r);
                puts.push(r.clone());
            }
        }
    }

    // Header fields from the master.
    mb.acl = hdr.acl.clone();
    mb.annotations = hdr.annotations.clone();
    mb.mbtype = hdr.mbtype;
    mb.last_uid = hdr
        .last_uid
        .max(puts.iter().map(|r| r.uid.get()).max().unwrap_or(0));
    mb.recentuid = hdr.recentuid;
    mb.highestmodseq = hdr.highestmodseq;
    mb.recenttime = hdr.recenttime;
    mb.last_appenddate = hdr.last_appenddate;
    mb.pop3_last_login = hdr.pop3_last_login;
    mb.pop3_show_after = hdr.pop3_show_after;
    mb.createdmodseq = hdr.createdmodseq;
    mb.options = hdr.options;
    mb.xconvmodseq = hdr.xconvmodseq;
    mb.raclmodseq = hdr.raclmodseq;
    mb.foldermodseq = hdr.foldermodseq.unwrap_or(hdr.highestmodseq);
    mb.quotaroot = hdr.quotaroot.clone();
    if ctx.force || fresh || hdr.uidvalidity > mb.uidvalidity.get() {
        mb.uidvalidity = uidvalidity(hdr.uidvalidity);
    }

    for (guid, size) in links {
        if !store.has_message(&guid)? {
            mutations.push(Mutation::LinkMessage { guid, size });
        }
    }
    mutations.push(Mutation::PutMailbox(mb.clone()));
    for r in puts {
        mutations.push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r,
        });
    }
    Ok(MailboxPlan {
        mutations,
        crc_ok: hdr.crcs.matches(&crcs),
        mailbox: mb,
    })
}

fn new_mailbox(
    hdr: &MailboxHeader,
    ctx: &ApplyCtx<'_>,
    partition: Partition,
) -> Result<Mailbox, Refusal> {
    policy_check(&hdr.name)?;
    let mut mb = Mailbox::new(
        hdr.uniqueid.clone(),
        mailbox_guid_of(&hdr.uniqueid),
        hdr.name.clone(),
        owner_of(&hdr.name),
        uidvalidity(hdr.uidvalidity),
        partition,
        ctx.now,
    );
    mb.mbtype = hdr.mbtype;
    Ok(mb)
}

/// Cyrus's `mboxname_policycheck` on a name about to be created or
/// renamed to: `IMAP_MAILBOX_BADNAME`, which 3.6's sync_server answers as
/// `NO Unknown error` (its `sync_response` has no text for it). A `domain!`
/// prefix is allowed (as with `virtdomains`), since the replica cannot know
/// the master's setting and refusing it would stop a virtdomains master.
pub fn policy_check(name: &crate::model::MailboxName) -> Result<(), Refusal> {
    if name.cyrus_policy_ok(true) {
        Ok(())
    } else {
        Err(Refusal::Unknown(format!(
            "invalid mailbox name {name} (Cyrus mboxname_policycheck)"
        )))
    }
}

/// Plans a `RESTORE MAILBOX`: appends the records to the mailbox with new
/// UIDs (or creates it, keeping UNIQUEID/UIDVALIDITY/UIDs only when all
/// were given), as Cyrus's `restore` expects. Bytes must be stored or
/// uploaded on this connection.
pub fn plan_restore<S: MailRead + ?Sized>(
    store: &S,
    hdr: &MailboxHeader,
    uniqueid_given: bool,
    records: &[Record],
    ctx: &ApplyCtx<'_>,
) -> Result<MailboxPlan, Refusal> {
    let partition = partition_of(hdr, ctx)?;
    let mut mutations = Vec::new();
    let keep_ids = uniqueid_given && hdr.uidvalidity != 0;
    let (mut mb, renumber) = match store.mailbox(&hdr.name)? {
        Some(mb) => (mb, true),
        None => {
            let mut h = hdr.clone();
            if !keep_ids {
                // A fresh identity derived from the name and time.
                let seed = format!("{}\0{}", hdr.name, ctx.now.0);
                h.uniqueid = UniqueId::new(&Guid::of(seed.as_bytes()).to_hex()[..24]).expect("hex");
                if h.uidvalidity == 0 {
                    h.uidvalidity = ctx.now.0.clamp(1, u32::MAX as i64) as u32;
                }
            }
            if store.mailbox_by_uniqueid(&h.uniqueid)?.is_some() {
                return Err(Refusal::Code(Code::MailboxMoved));
            }
            let mut mb = new_mailbox(&h, ctx, partition)?;
            mb.acl = h.acl.clone();
            mb.options = h.options;
            (mb, !keep_ids)
        }
    };
    let mut links = BTreeMap::new();
    let mut puts = Vec::new();
    for r in records.iter().filter(|r| !r.expunged) {
        if !store.has_message(&r.guid)? {
            match ctx.staged.get(&r.guid) {
                Some(&s) => {
                    links.insert(r.guid, s);
                }
                None => return Err(Refusal::Code(Code::MailboxNonexistent)),
            }
        }
        let mut n = r.clone();
        if renumber || r.uid.get() <= mb.last_uid {
            mb.last_uid += 1;
            n.uid = Uid::new(mb.last_uid).map_err(|_| Refusal::Unknown("uid overflow".into()))?;
            mb.highestmodseq = ModSeq(mb.highestmodseq.get() + 1);
            n.modseq = mb.highestmodseq;
        } else {
            mb.last_uid = mb.last_uid.max(r.uid.get());
            mb.highestmodseq = mb.highestmodseq.max(r.modseq);
        }
        puts.push(n);
    }
    for (guid, size) in links {
        mutations.push(Mutation::LinkMessage { guid, size });
    }
    mutations.push(Mutation::PutMailbox(mb.clone()));
    for r in puts {
        mutations.push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r,
        });
    }
    Ok(MailboxPlan {
        mutations,
        crc_ok: true,
        mailbox: mb,
    })
}

/// The CRCs of a mailbox (helper for GET replies; every record is walked
/// unless the store keeps them).
pub fn crcs_of<S: MailRead + ?Sized>(store: &S, mb: &Mailbox) -> Result<SyncCrcs, StoreError> {
    store.sync_crcs(&mb.uniqueid)
}

/// Every record of a mailbox, paged through the store.
pub fn all_records<S: MailRead + ?Sized>(
    store: &S,
    id: &UniqueId,
) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut range = UidRange::ALL;
    loop {
        let page = store.records(id, range, 1024)?;
        let n = page.len();
        let next = page.last().and_then(|r| r.uid.next());
        out.extend(page);
        match next {
            Some(u) if n == 1024 => range.first = u,
            _ => return Ok(out),
        }
    }
}

/// The Sieve scripts a `#sieve` mailbox (`MBOXTYPE f`, SIEVE-MAILBOX)
/// holds, as scripts: Cyrus 3.6 keeps each script as a message whose
/// `Subject:` is the script name and whose body is the script; the active
/// one is `\Flagged`. Returns the mutations that make the user's scripts
/// (`PutSieve`/`DeleteSieve`/`ActivateSieve`) match `records` (the
/// mailbox's records after the apply), so a replica keeps scripts whichever
/// way they arrive. A record whose bytes are unavailable or unparsable is
/// skipped (its script stays as it was).
pub fn sieve_mutations<S: MailRead + ?Sized>(
    store: &S,
    owner: &crate::model::UserId,
    records: &[Record],
    body_of: &dyn Fn(&Guid) -> Option<bytes::Bytes>,
) -> Result<Vec<Mutation>, StoreError> {
    use crate::model::{SieveName, SieveScript};
    let mut want: BTreeMap<SieveName, SieveScript> = BTreeMap::new();
    let mut active = None;
    for r in records.iter().filter(|r| !r.expunged) {
        let Some(bytes) = body_of(&r.guid) else {
            continue;
        };
        let Some((name, content)) = parse_sieve_message(&bytes) else {
            continue;
        };
        let Ok(name) = SieveName::new(name) else {
            continue;
        };
        if r.flags.system.contains(crate::model::SystemFlags::FLAGGED) {
            active = Some(name.clone());
        }
        want.insert(
            name.clone(),
            SieveScript {
                name,
                last_update: r.last_updated,
                content: bytes.slice_ref(content),
            },
        );
    }
    let have = store.sieve_scripts(owner)?;
    let mut out = Vec::new();
    for s in &have {
        if !want.contains_key(&s.name) {
            out.push(Mutation::DeleteSieve {
                user: owner.clone(),
                name: s.name.clone(),
            });
        }
    }
    for (name, s) in want {
        if have.iter().any(|h| h.name == name && *h == s) {
            continue;
        }
        out.push(Mutation::PutSieve {
            user: owner.clone(),
            script: s,
        });
    }
    if store.sieve_active(owner)? != active || !out.is_empty() {
        out.push(Mutation::ActivateSieve {
            user: owner.clone(),
            name: active,
        });
    }
    Ok(out)
}

/// `(Subject, body)` of a `#sieve` message.
fn parse_sieve_message(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (head, body) = match b.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&b[..i], &b[i + 4..]),
        None => {
            let i = b.windows(2).position(|w| w == b"\n\n")?;
            (&b[..i], &b[i + 2..])
        }
    };
    for line in head.split(|&c| c == b'\n') {
        if line.len() > 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            let v = &line[8..];
            let v = v.strip_suffix(b"\r").unwrap_or(v);
            let start = v.iter().position(|c| !c.is_ascii_whitespace())?;
            let end = v.iter().rposition(|c| !c.is_ascii_whitespace())? + 1;
            return Some((&v[start..end], body));
        }
    }
    None
}
