//! What to send, decided from the local store and the replica's answers:
//! the USER plan (reserve, renames, deletes, updates, quotas), the META
//! plan (subscriptions, Sieve, seen), one mailbox update (with the
//! is_unchanged short-cut of 3.6.1), and sync log coalescing.
//!
//! Pure functions over [`MailRead`] and the replica state; nothing here
//! sends or writes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::dlist::{FileRef, Item, KvList, Value};

use super::machine::Command;
use crate::csync::wire::{self, inbox_of, mailbox_kv, owner_of, record_kv, MailboxHeader};
use crate::model::{
    Guid, Mailbox, MailboxName, QuotaRoot, Seen, SieveName, SyncCrcs, SyncLogLine, UniqueId, UserId,
};
use crate::store::{MailRead, StoreError, UidRange};

/// What the replica told us about one user (GET USER / GET META /
/// GET MAILBOXES answers), kept for the rest of the job.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replica {
    pub mailboxes: BTreeMap<UniqueId, MailboxHeader>,
    pub quotas: BTreeMap<MailboxName, QuotaRoot>,
    pub seen: BTreeMap<UniqueId, Seen>,
    pub lsub: BTreeSet<MailboxName>,
    /// Script name → (LAST_UPDATE, GUID or null).
    pub sieve: BTreeMap<SieveName, (i64, Guid)>,
    pub sieve_active: Option<SieveName>,
}

/// Which try of a mailbox update this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// With SINCE_* from the replica state we already had.
    First,
    /// After `IMAP_SYNC_CHECKSUM`: fresh GET MAILBOXES, no SINCE_*.
    Repeat,
    /// After a full update (copyback); a failure now fails the job.
    AfterFull,
}

/// One step of a job: a command to send, or a local decision to make
/// when the steps before it are done.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    GetUser,
    GetMeta,
    /// `repeat`: after the answer, update this mailbox with this attempt
    /// (instead of planning the names as a mailbox job).
    GetMailboxes {
        names: Vec<MailboxName>,
        repeat: Option<(UniqueId, Attempt)>,
    },
    /// Local: plan the USER job from the GET USER answer.
    PlanUser,
    /// Local: plan the mailbox job from the GET MAILBOXES answer.
    PlanMailboxes {
        names: Vec<MailboxName>,
    },
    /// Local: plan subscriptions, Sieve and seen.
    PlanMeta,
    Reserve {
        partition: Bytes,
        names: Vec<MailboxName>,
        guids: Vec<Guid>,
    },
    /// Local: decide and queue one mailbox's upload and APPLY MAILBOX.
    Update {
        uniqueid: UniqueId,
        attempt: Attempt,
    },
    Upload {
        files: Vec<FileRef>,
    },
    ApplyMailbox {
        uniqueid: UniqueId,
        attempt: Attempt,
        kv: KvList,
        /// A `sync_batchsize` partial state: after OK, read the replica
        /// again and send the next batch.
        partial: bool,
    },
    GetFull {
        uniqueid: UniqueId,
        /// A replica-only mailbox to copy here under this (replica) name.
        adopt: Option<MailboxName>,
    },
    Fetch {
        kv: KvList,
    },
    /// Local: the copyback batch (waits for fetched files to be staged).
    /// The repair is planned again here, from the local store as it is
    /// now: user edits that landed while the files were fetched must not
    /// be overwritten (the simulator's UID reuse, seeds 4748 and 6998).
    LocalWrite {
        uniqueid: UniqueId,
        /// The replica's `GET FULLMAILBOX` answer.
        replica: Box<MailboxHeader>,
        theirs: Vec<crate::model::Record>,
        /// GUIDs fetched (staged) so far for this repair.
        staged: BTreeSet<Guid>,
        /// A replica-only mailbox being copied here: created by this
        /// write unless a mailbox took its id or name meanwhile.
        adopt: Option<Box<Mailbox>>,
    },
    /// `GET ANNOTATION` of a mailbox (empty name: the server's); the
    /// answer is planned by [`plan_annotations`].
    GetAnnotation {
        name: Bytes,
    },
    /// `GET FETCH_SIEVE`: a script the replica may hold outside any
    /// `#sieve` mailbox (corvid's own server keeps `APPLY SIEVE` scripts
    /// as scripts and, under SIEVE-MAILBOX, lists none). When the replica
    /// lacks it or holds other bytes, `then` runs (its APPLY SIEVE).
    CheckSieve {
        kv: KvList,
        content: Bytes,
        then: Vec<Step>,
    },
    /// Any other `APPLY`, answered by a status only.
    Simple {
        item: Item,
        nonexistent_ok: bool,
    },
}

impl Step {
    /// A short name for events and errors (no message bytes).
    pub fn describe(&self) -> String {
        match self {
            Step::GetUser => "GET USER".into(),
            Step::GetMeta => "GET META".into(),
            Step::GetMailboxes { .. } => "GET MAILBOXES".into(),
            Step::Reserve { .. } => "APPLY RESERVE".into(),
            Step::Upload { .. } => "APPLY MESSAGE".into(),
            Step::ApplyMailbox { .. } => "APPLY MAILBOX".into(),
            Step::GetFull { .. } => "GET FULLMAILBOX".into(),
            Step::Fetch { .. } => "GET FETCH".into(),
            Step::CheckSieve { .. } => "GET FETCH_SIEVE".into(),
            Step::GetAnnotation { .. } => "GET ANNOTATION".into(),
            Step::Simple { item, .. } => {
                format!("APPLY {}", String::from_utf8_lossy(&item.key))
            }
            Step::PlanUser
            | Step::PlanMailboxes { .. }
            | Step::PlanMeta
            | Step::Update { .. }
            | Step::LocalWrite { .. } => "local".into(),
        }
    }
}

pub(crate) fn text(b: &[u8]) -> Value {
    Value::string(Bytes::copy_from_slice(b))
}

/// Settings the planners need.
#[derive(Debug, Clone)]
pub(crate) struct PlanCtx<'a> {
    pub local_only: bool,
    pub partition: Option<&'a str>,
    pub sieve_mailbox: bool,
    pub reserve_guids_max: usize,
    /// Local writes allowed (not `-O`).
    pub copyback: bool,
    /// `sync_batchsize`: most new messages per APPLY MAILBOX (`None`: all).
    pub batch_size: Option<usize>,
}

impl PlanCtx<'_> {
    pub fn verb(&self, base: &'static str) -> Bytes {
        if self.local_only {
            Bytes::from(format!("LOCAL_{base}"))
        } else {
            Bytes::from_static(base.as_bytes())
        }
    }

    pub fn dest_partition(&self, mb: &Mailbox) -> Bytes {
        match self.partition {
            Some(p) => Bytes::copy_from_slice(p.as_bytes()),
            None => Bytes::copy_from_slice(mb.partition.as_bytes()),
        }
    }
}

/// Every record of a mailbox, by UID (paged reads).
pub(crate) fn all_records<R: MailRead + ?Sized>(
    read: &R,
    id: &UniqueId,
) -> Result<Vec<crate::model::Record>, StoreError> {
    crate::csync::apply::all_records(read, id)
}

/// The USER plan after GET USER (§4.2 steps 2–4, then the META plan).
pub(crate) fn plan_user<R: MailRead + ?Sized>(
    read: &R,
    ctx: &PlanCtx<'_>,
    user: &UserId,
    replica: &Replica,
    available: &BTreeSet<Guid>,
    tries: u8,
) -> Result<Result<Vec<Step>, &'static str>, StoreError> {
    let local = sendable(ctx, read.mailboxes_of_user(user)?);
    let has_inbox = inbox_of(user).is_some_and(|i| local.iter().any(|m| m.name == i));
    if !has_inbox {
        // Cyrus: a user without a local INBOX is skipped, never deleted
        // on the replica (only an UNUSER does that).
        return Ok(Ok(Vec::new()));
    }
    let mut steps = Vec::new();
    // Renames first: any rename restarts the whole USER sync.
    for mb in &local {
        if let Some(rm) = replica.mailboxes.get(&mb.uniqueid) {
            let dest = ctx.dest_partition(mb);
            let part_differs =
                ctx.partition.is_some() && rm.partition.as_deref().is_some_and(|p| p != &dest[..]);
            if rm.name != mb.name || part_differs {
                steps.push(Step::Simple {
                    item: Item::new(
                        ctx.verb("RENAME"),
                        Value::KvList(
                            KvList::new()
                                .with("OLDMBOXNAME", text(rm.name.as_bytes()))
                                .with("NEWMBOXNAME", text(mb.name.as_bytes()))
                                .with("PARTITION", Value::string(dest)),
                        ),
                    ),
                    nonexistent_ok: false,
                });
            }
        }
    }
    if !steps.is_empty() {
        if tries >= 3 {
            return Ok(Err("renames did not settle after 3 tries"));
        }
        steps.push(Step::GetUser);
        return Ok(Ok(steps));
    }
    steps.extend(reserve_steps(read, ctx, &local, replica, available)?);
    let local_ids: BTreeSet<&UniqueId> = local.iter().map(|m| &m.uniqueid).collect();
    // A replica mailbox we deleted may carry an older name than our
    // tombstone (renamed here, then deleted, before a sync): match the
    // tombstone by uniqueid too, or the replica keeps it forever (found by
    // the simulator, sim/README.md).
    let buried: BTreeSet<UniqueId> = read
        .tombstones_of_user(user)?
        .into_iter()
        .map(|t| t.uniqueid)
        .collect();
    for (id, rm) in &replica.mailboxes {
        if !local_ids.contains(id)
            && (buried.contains(id) || !read.tombstones_named(&rm.name)?.is_empty())
        {
            steps.push(unmailbox(ctx, &rm.name));
        }
    }
    // corvid differs from Cyrus here: a replica mailbox of this user that
    // we neither hold nor buried is copied back (a split brain after a
    // crash failover: the old master acknowledged the create, or mail in
    // it, before replicating; simulator seed 60). Cyrus leaves it on the
    // replica for ever. Not with -O (nothing local is written then), and
    // never a #sieve, intermediate or deleted mailbox, or a name taken
    // here by another mailbox.
    if ctx.copyback {
        for (id, rm) in &replica.mailboxes {
            if local_ids.contains(id)
                || buried.contains(id)
                || rm.mbtype.intermediate
                || rm.mbtype.deleted
                || rm.mbtype.kind != crate::model::MailboxKind::Email
                || owner_of(&rm.name).as_ref() != Some(user)
                || read.mailbox(&rm.name)?.is_some()
                || !read.tombstones_named(&rm.name)?.is_empty()
            {
                continue;
            }
            steps.push(Step::GetFull {
                uniqueid: id.clone(),
                adopt: Some(rm.name.clone()),
            });
        }
    }
    for mb in &local {
        steps.push(Step::Update {
            uniqueid: mb.uniqueid.clone(),
            attempt: Attempt::First,
        });
    }
    // Quotas of the roots the user's mailboxes use.
    let roots: BTreeSet<&MailboxName> = local.iter().filter_map(|m| m.quotaroot.as_ref()).collect();
    for root in &roots {
        match (read.quota(root)?, replica.quotas.get(*root)) {
            (Some(q), r) if r.map(|r| &r.limits) != Some(&q.limits) => steps.push(Step::Simple {
                item: Item::new("QUOTA", Value::KvList(wire::quota_kv(root, &q))),
                nonexistent_ok: false,
            }),
            (None, Some(_)) => steps.push(unquota(root)),
            _ => {}
        }
    }
    for root in replica.quotas.keys() {
        if !roots.contains(root) {
            steps.push(unquota(root));
        }
    }
    steps.extend(plan_meta(read, ctx, user, replica)?);
    Ok(Ok(steps))
}

fn unquota(root: &MailboxName) -> Step {
    Step::Simple {
        item: Item::new("UNQUOTA", text(root.as_bytes())),
        nonexistent_ok: true,
    }
}

pub(crate) fn unmailbox(ctx: &PlanCtx<'_>, name: &MailboxName) -> Step {
    Step::Simple {
        item: Item::new(ctx.verb("UNMAILBOX"), text(name.as_bytes())),
        nonexistent_ok: true,
    }
}

/// The local mailboxes this session may send: a `#sieve` mailbox only
/// when SIEVE-MAILBOX is on (a replica without it refuses `MBOXTYPE f`).
pub(crate) fn sendable(ctx: &PlanCtx<'_>, mut local: Vec<Mailbox>) -> Vec<Mailbox> {
    if !ctx.sieve_mailbox {
        local.retain(|m| m.mbtype.kind != crate::model::MailboxKind::Sieve);
    }
    local
}

/// `APPLY RESERVE` per destination partition for the GUIDs of records
/// the replica does not have yet (UID above its LAST_UID), naming every
/// replica folder of the batch; none when the replica has no folder.
pub(crate) fn reserve_steps<R: MailRead + ?Sized>(
    read: &R,
    ctx: &PlanCtx<'_>,
    local: &[Mailbox],
    replica: &Replica,
    available: &BTreeSet<Guid>,
) -> Result<Vec<Step>, StoreError> {
    if replica.mailboxes.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<MailboxName> = replica.mailboxes.values().map(|m| m.name.clone()).collect();
    let mut by_part: BTreeMap<Bytes, BTreeSet<Guid>> = BTreeMap::new();
    for mb in local {
        let rlast = replica
            .mailboxes
            .get(&mb.uniqueid)
            .map_or(0, |r| r.last_uid);
        if rlast >= mb.last_uid {
            continue;
        }
        let first = crate::model::Uid::new(rlast.saturating_add(1)).expect("non-zero");
        for r in read.records(&mb.uniqueid, UidRange::from(first), usize::MAX)? {
            if !r.expunged && !available.contains(&r.guid) {
                by_part
                    .entry(ctx.dest_partition(mb))
                    .or_default()
                    .insert(r.guid);
            }
        }
    }
    let mut steps = Vec::new();
    for (partition, guids) in by_part {
        let guids: Vec<Guid> = guids.into_iter().collect();
        for chunk in guids.chunks(ctx.reserve_guids_max.max(1)) {
            steps.push(Step::Reserve {
                partition: partition.clone(),
                names: names.clone(),
                guids: chunk.to_vec(),
            });
        }
    }
    Ok(steps)
}

/// Subscriptions, Sieve (unless the `#sieve` mailbox carries it) and seen
/// (§4.2 steps 5–7).
pub(crate) fn plan_meta<R: MailRead + ?Sized>(
    read: &R,
    ctx: &PlanCtx<'_>,
    user: &UserId,
    replica: &Replica,
) -> Result<Vec<Step>, StoreError> {
    let mut steps = Vec::new();
    let uid_v = || text(user.as_bytes());
    let subs: BTreeSet<MailboxName> = read
        .subscriptions(user)?
        .into_iter()
        .filter(|(_, s)| s.subscribed)
        .map(|(n, _)| n)
        .collect();
    for (set, other, verb) in [
        (&subs, &replica.lsub, "SUB"),
        (&replica.lsub, &subs, "UNSUB"),
    ] {
        for name in set.difference(other) {
            steps.push(Step::Simple {
                item: Item::new(
                    verb,
                    Value::KvList(
                        KvList::new()
                            .with("USERID", uid_v())
                            .with("MBOXNAME", text(name.as_bytes())),
                    ),
                ),
                nonexistent_ok: false,
            });
        }
    }
    // With SIEVE-MAILBOX the scripts travel inside the user's `#sieve`
    // mailbox. A user whose scripts came here without one (APPLY SIEVE
    // from an older master, dsync) still sends them as APPLY SIEVE, which
    // a 3.6 replica files into its own `#sieve` mailbox; GET USER then
    // lists no SIEVE lines, so they go when the replica's `#sieve` mailbox
    // is missing or older than a script.
    let sieve_box = |m: &Mailbox| {
        m.mbtype.kind == crate::model::MailboxKind::Sieve
            && owner_of(&m.name).as_ref() == Some(user)
    };
    let scripts_as_apply =
        !ctx.sieve_mailbox || !read.mailboxes_of_user(user)?.iter().any(|m| sieve_box(m));
    if scripts_as_apply {
        let scripts = read.sieve_scripts(user)?;
        let replica_box = replica.mailboxes.values().find(|m| {
            m.mbtype.kind == crate::model::MailboxKind::Sieve
                && owner_of(&m.name).as_ref() == Some(user)
        });
        let active = read.sieve_active(user)?;
        let mut sent_any = false;
        for s in &scripts {
            let apply = Step::Simple {
                item: Item::new(
                    "SIEVE",
                    Value::KvList(
                        KvList::new()
                            .with("USERID", uid_v())
                            .with("FILENAME", script_file(&s.name, "script"))
                            .with("LAST_UPDATE", Value::num(s.last_update.0.max(0) as u64))
                            .with("CONTENT", Value::Literal(s.content.clone())),
                    ),
                ),
                nonexistent_ok: false,
            };
            match replica.sieve.get(&s.name) {
                // Under SIEVE-MAILBOX the replica lists no scripts. With
                // its `#sieve` mailbox, its last append dates them; without
                // one, a Cyrus 3.6 replica has none, but corvid's keeps
                // APPLY SIEVE scripts as scripts: ask for the bytes rather
                // than send them again on every run.
                None if ctx.sieve_mailbox => match replica_box {
                    Some(b) if b.last_appenddate.0 >= s.last_update.0 => {}
                    Some(_) => {
                        sent_any = true;
                        steps.push(apply);
                    }
                    None => {
                        let mut then = vec![apply];
                        if active.as_ref() == Some(&s.name) {
                            then.push(activate_step(user, Some(&s.name)));
                        }
                        steps.push(Step::CheckSieve {
                            kv: KvList::new()
                                .with("USERID", uid_v())
                                .with("FILENAME", script_file(&s.name, "script")),
                            content: s.content.clone(),
                            then,
                        });
                    }
                },
                None => {
                    sent_any = true;
                    steps.push(apply);
                }
                Some((_, g)) if !g.is_null() => {
                    if *g != s.guid() {
                        sent_any = true;
                        steps.push(apply);
                    }
                }
                Some((t, _)) => {
                    if *t < s.last_update.0 {
                        sent_any = true;
                        steps.push(apply);
                    }
                }
            }
        }
        for name in replica.sieve.keys() {
            if !scripts.iter().any(|s| &s.name == name) {
                steps.push(Step::Simple {
                    item: Item::new(
                        "UNSIEVE",
                        Value::KvList(
                            KvList::new()
                                .with("USERID", uid_v())
                                .with("FILENAME", script_file(name, "script")),
                        ),
                    ),
                    nonexistent_ok: true,
                });
            }
        }
        // Under SIEVE-MAILBOX the replica does not say which is active:
        // (re)activate with the scripts we send.
        let activate = if ctx.sieve_mailbox {
            sent_any
        } else {
            active != replica.sieve_active
        };
        if activate {
            steps.push(activate_step(user, active.as_ref()));
        }
    }
    for (mailbox, seen) in read.seen_of_user(user)? {
        if replica.seen.get(&mailbox) != Some(&seen) {
            let mut kv = KvList::new().with("USERID", uid_v());
            for (k, v) in wire::seen_kv(&mailbox, &seen).0 {
                kv.push(k, v);
            }
            steps.push(Step::Simple {
                item: Item::new("SEEN", Value::KvList(kv)),
                nonexistent_ok: false,
            });
        }
    }
    Ok(steps)
}

/// The `APPLY ANNOTATION` / `UNANNOTATION` steps that make the replica's
/// annotations of mailbox `name` (empty: the server's), as listed in its
/// `GET ANNOTATION` answer, equal ours. Ours win: annotations carry no
/// usable MODSEQ in 3.6.1's answer. A mailbox we do not hold is left to
/// the mailbox sync.
pub(crate) fn plan_annotations<R: MailRead + ?Sized>(
    read: &R,
    name: &Bytes,
    answer: &[Item],
) -> Result<Result<Vec<Step>, wire::WireError>, StoreError> {
    let ours = if name.is_empty() {
        read.server_annotations()?
    } else {
        let Ok(n) = MailboxName::new(&name[..]) else {
            return Ok(Err(wire::WireError::Bad("MBOXNAME")));
        };
        match read.mailbox(&n)? {
            Some(mb) => mb.annotations,
            None => return Ok(Ok(Vec::new())),
        }
    };
    let mut theirs: BTreeMap<(Bytes, Bytes), Bytes> = BTreeMap::new();
    for item in answer.iter().filter(|i| i.key_is("ANNOTATION")) {
        let Some(kv) = item.value.as_kvlist() else {
            return Ok(Err(wire::WireError::Bad("ANNOTATION")));
        };
        let field = |k: &'static str| -> Result<Bytes, wire::WireError> {
            match kv.get(k) {
                Some(Value::Nil) | None if k == "VALUE" => Ok(Bytes::new()),
                Some(v) => v
                    .as_bytes()
                    .map(Bytes::copy_from_slice)
                    .ok_or(wire::WireError::Bad(k)),
                None => Err(wire::WireError::Missing(k)),
            }
        };
        let (entry, owner, value) = match (field("ENTRY"), field("USERID"), field("VALUE")) {
            (Ok(e), Ok(o), Ok(v)) => (e, o, v),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Ok(Err(e)),
        };
        theirs.insert((entry, owner), value);
    }
    let mut steps = Vec::new();
    let mut mine: BTreeSet<(Bytes, Bytes)> = BTreeSet::new();
    for (entry, owner, v) in ours.iter() {
        let key = (
            Bytes::copy_from_slice(entry.as_bytes()),
            Bytes::copy_from_slice(owner.as_bytes()),
        );
        if v.value.is_empty() {
            continue;
        }
        if theirs.get(&key) != Some(&v.value) {
            steps.push(Step::Simple {
                item: Item::new(
                    "ANNOTATION",
                    Value::KvList(wire::annotation_line(name, entry, owner, &v.value)),
                ),
                nonexistent_ok: false,
            });
        }
        mine.insert(key);
    }
    for (entry, owner) in theirs.keys() {
        if !mine.contains(&(entry.clone(), owner.clone())) {
            steps.push(Step::Simple {
                item: Item::new(
                    "UNANNOTATION",
                    Value::KvList(
                        KvList::new()
                            .with("MBOXNAME", Value::string(name.clone()))
                            .with("ENTRY", Value::string(entry.clone()))
                            .with("USERID", Value::string(owner.clone())),
                    ),
                ),
                nonexistent_ok: true,
            });
        }
    }
    Ok(Ok(steps))
}

/// `APPLY ACTIVATE_SIEVE` of `name`, or `UNACTIVATE_SIEVE` for none.
fn activate_step(user: &UserId, name: Option<&SieveName>) -> Step {
    let kv = KvList::new().with("USERID", text(user.as_bytes()));
    Step::Simple {
        item: match name {
            Some(a) => Item::new(
                "ACTIVATE_SIEVE",
                Value::KvList(kv.with("FILENAME", script_file(a, "bc"))),
            ),
            None => Item::new("UNACTIVATE_SIEVE", Value::KvList(kv)),
        },
        nonexistent_ok: true,
    }
}

fn script_file(name: &SieveName, ext: &str) -> Value {
    let mut f = name.as_bytes().to_vec();
    f.push(b'.');
    f.extend_from_slice(ext.as_bytes());
    Value::string(Bytes::from(f))
}

/// What one mailbox needs.
#[derive(Debug)]
pub(crate) enum Update {
    /// Replica equals local (3.6.1 `is_unchanged`): send nothing.
    Unchanged,
    /// The local index lost records the replica may still hold
    /// (`deletedmodseq` above the replica's HIGHESTMODSEQ): only a full
    /// update can describe that.
    NeedsFull,
    /// Upload these files, then send this APPLY MAILBOX (`partial`: a
    /// `sync_batchsize` batch; more follow).
    Apply {
        uploads: Vec<FileRef>,
        kv: KvList,
        partial: bool,
    },
}

fn crc_eq(a: SyncCrcs, b: SyncCrcs) -> bool {
    let half = |x: u32, y: u32| x == 0 || y == 0 || x == y;
    half(a.basic, b.basic) && half(a.annot, b.annot)
}

/// Whether Cyrus's CRC comparison cannot see a split brain here.
///
/// `mailbox_crceq` (and so Cyrus's `is_unchanged` and a replica's check
/// of `SYNC_CRC` after APPLY MAILBOX, corvid's server included) treats a
/// 0 CRC as "unknown", but 0 is also the CRC of a mailbox with no live
/// record. After a crash failover both sides can reach the same
/// HIGHESTMODSEQ by different histories; when one of them has nothing
/// live, every check passes and the difference stays for ever (the
/// simulator's seeds 3841, 6599, 7884). corvid differs from Cyrus here:
/// when exactly one side's basic CRC is 0 and the records this update
/// would send cannot bring the replica to our state, go straight to the
/// full update, which compares record by record. In a consistent pair
/// this never fires: a replica with nothing live whose HIGHESTMODSEQ
/// covers a live record of ours, or a replica with live records while we
/// send no expunge, is a split brain.
fn zero_crc_blind_spot<R: MailRead + ?Sized>(
    read: &R,
    mb: &Mailbox,
    rm: &MailboxHeader,
    crcs: SyncCrcs,
) -> Result<bool, StoreError> {
    let (ours, theirs) = (crcs.basic, rm.crcs.basic);
    if (ours == 0) == (theirs == 0) {
        return Ok(false);
    }
    let r_hms = rm.highestmodseq.get();
    let records = all_records(read, &mb.uniqueid)?;
    Ok(if theirs == 0 {
        // The replica holds nothing live: a live record of ours that the
        // update would not send (it is at or below the replica's
        // HIGHESTMODSEQ) would stay missing there.
        records
            .iter()
            .any(|r| !r.expunged && r.modseq.get() <= r_hms)
    } else {
        // The replica holds live records and we hold none: only expunges
        // we send can empty it.
        !records.iter().any(|r| r.expunged && r.modseq.get() > r_hms)
    })
}

/// `update_mailbox_once` up to the send: compare, select records, list
/// uploads.
pub(crate) fn plan_update<R: MailRead + ?Sized>(
    read: &R,
    ctx: &PlanCtx<'_>,
    mb: &Mailbox,
    rm: Option<&MailboxHeader>,
    attempt: Attempt,
    available: &BTreeSet<Guid>,
) -> Result<Update, StoreError> {
    let crcs = read.sync_crcs(&mb.uniqueid)?;
    let dest = ctx.dest_partition(mb);
    if let Some(rm) = rm {
        if attempt == Attempt::First && mb.deletedmodseq > rm.highestmodseq {
            return Ok(Update::NeedsFull);
        }
        if attempt == Attempt::First && zero_crc_blind_spot(read, mb, rm, crcs)? {
            return Ok(Update::NeedsFull);
        }
        let unchanged = rm.mbtype == mb.mbtype
            && rm.last_uid == mb.last_uid
            && rm.highestmodseq == mb.highestmodseq
            && rm.uidvalidity == mb.uidvalidity.get()
            && rm.recentuid == mb.recentuid
            && rm.recenttime == mb.recenttime
            && rm.pop3_last_login == mb.pop3_last_login
            && rm.pop3_show_after == mb.pop3_show_after
            && rm.options == mb.options
            && rm.foldermodseq.is_none_or_eq(mb.foldermodseq)
            && rm.acl.to_cyrus() == mb.acl.to_cyrus()
            && rm.annotations == mb.annotations
            && rm.partition.as_deref().is_none_or_eq_bytes(&dest)
            && crc_eq(rm.crcs, crcs);
        if unchanged {
            return Ok(Update::Unchanged);
        }
    }
    let (r_hms, r_last) = rm.map_or((0, 0), |r| (r.highestmodseq.get(), r.last_uid));
    let all = all_records(read, &mb.uniqueid)?;
    let cut = ctx
        .batch_size
        .and_then(|n| batch_cut(&all, r_last, r_hms, n));
    let mut out = mb.clone();
    let mut crcs = crcs;
    if let Some((last_uid, hms)) = cut {
        // A synthetic partial state (Cyrus 3.6 `sync_batchsize`): LAST_UID
        // at the batch's end, HIGHESTMODSEQ just below every record beyond
        // it, and CRC 0 so the replica does not check it.
        out.last_uid = last_uid;
        out.highestmodseq = crate::model::ModSeq(hms);
        out.recentuid = out.recentuid.min(last_uid);
        crcs = SyncCrcs::default();
    }
    if let Some(rm) = rm {
        // The replica's UIDVALIDITY never goes down (Cyrus adopts it).
        if rm.uidvalidity > mb.uidvalidity.get() {
            out.uidvalidity = wire::uidvalidity(rm.uidvalidity);
        }
    }
    out.partition = crate::model::Partition::new(&dest[..]).unwrap_or(out.partition);
    let mut kv = mailbox_kv(&out, crcs, None);
    if let (Attempt::First, Some(rm)) = (attempt, rm) {
        kv.push("SINCE_MODSEQ", Value::num(rm.highestmodseq.get()));
        kv.push("SINCE_CRC", Value::num(rm.crcs.basic.into()));
        kv.push("SINCE_CRC_ANNOT", Value::num(rm.crcs.annot.into()));
    }
    let mut records = Vec::new();
    let mut uploads: Vec<FileRef> = Vec::new();
    let mut seen_guids = BTreeSet::new();
    for r in all {
        if r.modseq.get() <= r_hms {
            continue;
        }
        if cut.is_some_and(|(u, m)| r.uid.get() > u || r.modseq.get() > m) {
            continue;
        }
        if r.uid.get() > r_last
            && !r.expunged
            && !available.contains(&r.guid)
            && seen_guids.insert(r.guid)
        {
            let size = read
                .message_size(&r.guid)?
                .ok_or(StoreError::MissingMessage(r.guid))?;
            uploads.push(FileRef {
                partition: dest.clone(),
                guid: r.guid.into(),
                size,
            });
        }
        records.push(record_kv(&r));
    }
    kv.push("RECORD", Value::List(records));
    Ok(Update::Apply {
        uploads,
        kv,
        partial: cut.is_some(),
    })
}

/// Where a `sync_batchsize` batch ends: `(LAST_UID, HIGHESTMODSEQ)` of
/// the partial state, or `None` to send everything. Records are by UID.
///
/// The batch is the first `n` records above the replica's LAST_UID. The
/// partial HIGHESTMODSEQ is one below the lowest MODSEQ beyond the batch,
/// so everything at or below it is in the batch; it must be above the
/// replica's and at least every batch record's MODSEQ (else a new record
/// would be left out below the partial LAST_UID), or there is no batch.
fn batch_cut(
    all: &[crate::model::Record],
    r_last: u32,
    r_hms: u64,
    n: usize,
) -> Option<(u32, u64)> {
    let n = n.max(1);
    let first_new = all.iter().position(|r| r.uid.get() > r_last)?;
    let new = &all[first_new..];
    if new.len() <= n {
        return None;
    }
    let (batch, beyond) = new.split_at(n);
    let below_beyond = beyond.iter().map(|r| r.modseq.get()).min()? - 1;
    let batch_max = batch.iter().map(|r| r.modseq.get()).max()?;
    if below_beyond <= r_hms || batch_max > below_beyond {
        return None;
    }
    Some((batch.last()?.uid.get(), below_beyond))
}

trait OptEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
}
impl<T: PartialEq> OptEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}
trait OptBytesEq {
    fn is_none_or_eq_bytes(&self, v: &[u8]) -> bool;
}
impl OptBytesEq for Option<&[u8]> {
    fn is_none_or_eq_bytes(&self, v: &[u8]) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}

/// Parses the untagged answers of GET USER / META / MAILBOXES into
/// `replica`. Unknown keys are ignored (forward compatibility, §2.8).
pub(crate) fn absorb(replica: &mut Replica, data: &[Item]) -> Result<(), wire::WireError> {
    for item in data {
        if item.key_is("MAILBOX") {
            let kv = item
                .value
                .as_kvlist()
                .ok_or(wire::WireError::Bad("MAILBOX"))?;
            let h = wire::mailbox_header(kv, false)?;
            replica.mailboxes.insert(h.uniqueid.clone(), h);
        } else if item.key_is("QUOTA") {
            let kv = item
                .value
                .as_kvlist()
                .ok_or(wire::WireError::Bad("QUOTA"))?;
            let (root, q) = wire::quota_of(kv)?;
            replica.quotas.insert(root, q);
        } else if item.key_is("SEEN") {
            let kv = item.value.as_kvlist().ok_or(wire::WireError::Bad("SEEN"))?;
            let mut with_user = KvList::new().with("USERID", Value::string("-"));
            for (k, v) in kv.iter() {
                with_user.push(k.clone(), v.clone());
            }
            let (_, id, seen) = wire::seen_of(&with_user)?;
            replica.seen.insert(id, seen);
        } else if item.key_is("LSUB") {
            for v in item.value.as_list().ok_or(wire::WireError::Bad("LSUB"))? {
                let n = v.as_bytes().ok_or(wire::WireError::Bad("LSUB"))?;
                replica
                    .lsub
                    .insert(MailboxName::new(n).map_err(|_| wire::WireError::Bad("LSUB"))?);
            }
        } else if item.key_is("SIEVE") {
            let kv = item
                .value
                .as_kvlist()
                .ok_or(wire::WireError::Bad("SIEVE"))?;
            let file = wire::bytes(kv, "FILENAME")?;
            let active = wire::num_opt(kv, "ISACTIVE")?.unwrap_or(0) != 0;
            let last = wire::num_opt(kv, "LAST_UPDATE")?.unwrap_or(0) as i64;
            let guid = kv
                .get("GUID")
                .and_then(|g| g.as_bytes())
                .and_then(|g| Guid::parse(g).ok())
                .unwrap_or(Guid::NULL);
            if let Some(stem) = file.strip_suffix(b".script") {
                if let Ok(n) = SieveName::new(stem) {
                    replica.sieve.insert(n, (last, guid));
                }
            } else if let Some(stem) = file.strip_suffix(b".bc") {
                if active {
                    replica.sieve_active = SieveName::new(stem).ok();
                }
            }
        }
    }
    Ok(())
}

/// Turns a batch of sync log lines into jobs, coalesced as 3.6.1's
/// rolling mode does (§4.5): mailbox-ish lines grouped per owner into one
/// [`Command::Mailboxes`] each (both names of a RENAME/DOUBLEMAILBOX),
/// SEEN/SUB become META, a USER supersedes that user's META, QUOTA and
/// ANNOTATION promote to the owner's USER (a shared mailbox's annotation
/// is a mailbox sync), and UNMAILBOX/UNUSER come last, in log order.
pub fn jobs_from_log<'a>(lines: impl IntoIterator<Item = &'a SyncLogLine>) -> Vec<Command> {
    let mut mailboxes: BTreeMap<Option<UserId>, BTreeSet<MailboxName>> = BTreeMap::new();
    let mut users: BTreeSet<UserId> = BTreeSet::new();
    let mut metas: BTreeSet<UserId> = BTreeSet::new();
    let mut unmailboxes: Vec<MailboxName> = Vec::new();
    let mut unusers: Vec<UserId> = Vec::new();
    let mut server_annotations = false;
    let mut add_mb = |n: &MailboxName| {
        mailboxes.entry(owner_of(n)).or_default().insert(n.clone());
    };
    for line in lines {
        match line {
            SyncLogLine::User(u) => {
                users.insert(u.clone());
            }
            SyncLogLine::Unuser(u) => {
                if !unusers.contains(u) {
                    unusers.push(u.clone());
                }
            }
            SyncLogLine::Meta(u) | SyncLogLine::Seen(u, _) | SyncLogLine::Sub(u, _) => {
                metas.insert(u.clone());
            }
            SyncLogLine::Mailbox(n) | SyncLogLine::Append(n) => add_mb(n),
            SyncLogLine::DoubleMailbox(a, b) | SyncLogLine::Rename(a, b) => {
                add_mb(a);
                add_mb(b);
            }
            SyncLogLine::Unmailbox(n) => {
                if !unmailboxes.contains(n) {
                    unmailboxes.push(n.clone());
                }
            }
            SyncLogLine::Quota(n) => match owner_of(n) {
                Some(u) => {
                    users.insert(u);
                }
                None => add_mb(n),
            },
            // A mailbox's annotations travel in its APPLY MAILBOX; the
            // server's in their own job (3.6.1 `sync_do_annotation`).
            SyncLogLine::Annotation(Some(n)) => add_mb(n),
            SyncLogLine::Annotation(None) => server_annotations = true,
        }
    }
    let mut out = Vec::new();
    for (owner, names) in mailboxes {
        if owner.as_ref().is_some_and(|u| users.contains(u)) {
            continue;
        }
        out.push(Command::Mailboxes(names.into_iter().collect()));
    }
    if server_annotations {
        out.push(Command::Annotation(None));
    }
    for u in metas {
        if !users.contains(&u) {
            out.push(Command::Meta(u));
        }
    }
    out.extend(unmailboxes.into_iter().map(Command::Unmailbox));
    out.extend(users.into_iter().map(Command::User));
    out.extend(unusers.into_iter().map(Command::Unuser));
    out
}
