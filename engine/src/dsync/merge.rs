//! The two pure decisions of a dsync session, computed by each brain for
//! its own side from the same inputs: the mailbox tree merge
//! ([`merge_tree`]) and one mailbox's message merge ([`plan_mailbox`]).
//!
//! Both are deterministic functions of (local state, what the peer sent,
//! role, mode); every tie breaks the same way on both brains (timestamps,
//! then GUIDs, then the master), so two corvid brains compute mirror-image
//! plans and converge. They return mutations for the local store and never
//! touch it. The rules, and where they differ from Dovecot, are in the
//! parent module's doc.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proto::dsync::{flags as wire_flags, ChangeType, KeywordChangeKind, MailChange, MailboxState};
use sha1::{Digest, Sha1};

use crate::model::{
    Flags, Keyword, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, Record, Subscription,
    SystemFlags, Tombstone, Uid, UidValidity, UniqueId, UnixTime, UserId,
};
use crate::store::Mutation;

use super::{Mode, Role};

/// A message's dsync GUID as it travels: the peer's GUID if it gave us
/// one, else our SHA-1 in hex.
pub fn wire_guid(r: &Record) -> Bytes {
    match &r.peer_guid {
        Some(g) => Bytes::copy_from_slice(g.as_bytes()),
        None => Bytes::from(r.guid.to_hex()),
    }
}

/// Dovecot's 128-bit form of a message GUID (`mail_generate_guid_128_hash`):
/// the GUID itself if it is 32 hex digits, else the last 16 bytes of its
/// SHA-1. Expunge records carry this form, even for maildir.
pub fn guid128(wire: &[u8]) -> [u8; 16] {
    if let Some(g) = proto::dsync::Guid128::parse(wire) {
        return g.0;
    }
    let d = Sha1::digest(wire);
    d[4..20].try_into().expect("16 bytes")
}

/// Our system flags in Dovecot's bit layout (`\Recent` never).
pub fn flags_to_wire(f: SystemFlags) -> u8 {
    let mut b = 0;
    for (ours, theirs) in FLAG_MAP {
        if f.contains(ours) {
            b |= theirs;
        }
    }
    b
}

/// Dovecot's flag bits as our system flags (`\Recent` dropped).
pub fn flags_from_wire(b: u8) -> SystemFlags {
    let mut f = SystemFlags::empty();
    for (ours, theirs) in FLAG_MAP {
        if b & theirs != 0 {
            f.insert(ours);
        }
    }
    f
}

const FLAG_MAP: [(SystemFlags, u8); 5] = [
    (SystemFlags::ANSWERED, wire_flags::ANSWERED),
    (SystemFlags::FLAGGED, wire_flags::FLAGGED),
    (SystemFlags::DELETED, wire_flags::DELETED),
    (SystemFlags::SEEN, wire_flags::SEEN),
    (SystemFlags::DRAFT, wire_flags::DRAFT),
];

/// The flags a `C` record says the message has now.
pub fn change_flags(c: &MailChange) -> Flags {
    let kws = c.keyword_changes.iter().filter_map(|e| {
        let (kind, kw) = KeywordChangeKind::parse(e)?;
        match kind {
            KeywordChangeKind::Remove => None,
            _ => Keyword::new(kw).ok(),
        }
    });
    Flags::with(flags_from_wire(c.final_flags), kws)
}

/// `=kw` entries for every keyword of `f`, sorted (deterministic bytes).
pub fn keyword_entries(f: &Flags) -> Vec<Bytes> {
    let mut v: Vec<Bytes> = f
        .keywords()
        .iter()
        .map(|k| KeywordChangeKind::Final.entry(k.as_bytes()))
        .collect();
    v.sort();
    v
}

/// One side's mailbox tree node, in separator-free form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Hierarchy parts joined with the local separator.
    pub name: MailboxName,
    /// The mailbox GUID.
    pub guid: MailboxGuid,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT.
    pub uid_next: u32,
    /// When it got its name.
    pub renamed_at: i64,
}

/// What the peer told us about its tree.
#[derive(Debug, Clone, Default)]
pub struct RemoteTree {
    /// Existing mailboxes, by GUID.
    pub mailboxes: BTreeMap<MailboxGuid, Node>,
    /// Deleted mailboxes: GUID → when.
    pub deleted: BTreeMap<MailboxGuid, i64>,
    /// Subscription states by name: (subscribed, when).
    pub subscriptions: BTreeMap<MailboxName, (bool, i64)>,
    /// Unsubscribes of names the peer no longer has (its `D`
    /// `unsubscribes`): [`name_hash`] of the name in the peer's
    /// separator → when.
    pub unsubscribes: BTreeMap<[u8; 16], i64>,
    /// The peer's hierarchy separator (from its `D`), for [`name_hash`].
    pub sep: Option<u8>,
}

/// Dovecot's name hash (`mailbox_name_get_sha128`): the first 16 bytes of
/// the SHA-1 of a mailbox name written with the hashing side's
/// separator. Dovecot keys subscription changes and directory deletes by
/// it, since names are all they have.
pub fn name_hash(name: &[u8]) -> [u8; 16] {
    let d = Sha1::digest(name);
    d[..16].try_into().expect("16 bytes")
}

/// `name` (parts joined by `ours`) rewritten with the separator `theirs`.
pub fn with_separator(name: &MailboxName, ours: u8, theirs: u8) -> Vec<u8> {
    name.as_bytes()
        .iter()
        .map(|&c| if c == ours { theirs } else { c })
        .collect()
}

/// Everything the tree merge needs from our side.
pub struct LocalTree<'a> {
    /// Our user's mailboxes.
    pub mailboxes: &'a [Mailbox],
    /// Our tombstones.
    pub tombstones: &'a [Tombstone],
    /// Our subscriptions.
    pub subscriptions: &'a [(MailboxName, Subscription)],
    /// Our hierarchy separator.
    pub sep: u8,
    /// Live records of a mailbox that the deleting peer cannot have seen
    /// (saved after `deleted_at`, or above the saved last common UID).
    pub unseen: &'a dyn Fn(&Mailbox, i64) -> Vec<Record>,
}

/// The local side of a tree merge.
#[derive(Debug, Default)]
pub struct TreePlan {
    /// Mutations for our store, in order.
    pub mutations: Vec<Mutation>,
    /// Human-readable decisions (for `-v`).
    pub notes: Vec<String>,
}

/// The deterministic GUID of the mailbox that rescues mail from a deleted
/// mailbox: both brains (and later runs) derive the same one.
pub fn rescue_guid(deleted: &MailboxGuid) -> MailboxGuid {
    let mut h = Sha1::new();
    h.update(b"corvid dsync rescue\0");
    h.update(deleted.as_bytes());
    let d = h.finalize();
    MailboxGuid::from_bytes(d[..16].try_into().expect("16 bytes"))
}

fn suffixed(name: &MailboxName, guid: &MailboxGuid) -> MailboxName {
    let mut v = name.as_bytes().to_vec();
    v.push(b'-');
    v.extend_from_slice(&guid.to_hex().as_bytes()[..8]);
    MailboxName::new(v).unwrap_or_else(|_| name.clone())
}

/// A fresh mailbox as dsync creates it (GUID and UIDVALIDITY from the peer).
pub fn new_mailbox(
    user: &UserId,
    guid: MailboxGuid,
    name: MailboxName,
    uidvalidity: u32,
    at: i64,
) -> Mailbox {
    Mailbox::new(
        UniqueId::from_mailbox_guid(&guid),
        guid,
        name,
        Some(user.clone()),
        UidValidity::new(uidvalidity.max(1)).expect("nonzero"),
        Partition::new("default").expect("valid partition"),
        UnixTime(at),
    )
}

/// Whether `name` is the INBOX (IMAP: case-insensitive).
fn is_inbox(name: &MailboxName) -> bool {
    name.as_bytes().eq_ignore_ascii_case(b"INBOX")
}

/// [`new_mailbox`], with a uniqueid no local mailbox holds: a mailbox
/// that adopted a peer's GUID (rule 2) keeps the uniqueid derived from its
/// old GUID, and that GUID may still come back from a third replica.
fn new_mailbox_here(
    local: &LocalTree<'_>,
    user: &UserId,
    guid: MailboxGuid,
    name: MailboxName,
    uidvalidity: u32,
    at: i64,
) -> Mailbox {
    let mut mb = new_mailbox(user, guid, name, uidvalidity, at);
    let mut n = 0u32;
    while local.mailboxes.iter().any(|m| m.uniqueid == mb.uniqueid) {
        let mut h = Sha1::new();
        h.update(b"corvid dsync uniqueid\0");
        h.update(guid.as_bytes());
        h.update(n.to_be_bytes());
        let d = h.finalize();
        mb.uniqueid = UniqueId::new(hex::encode(&d[..16])).expect("hex is atom text");
        n += 1;
    }
    mb
}

/// Merge the trees; see the parent module for the rules.
pub fn merge_tree(
    user: &UserId,
    local: &LocalTree<'_>,
    remote: &RemoteTree,
    role: Role,
    mode: Mode,
    now: i64,
) -> TreePlan {
    let mut plan = TreePlan::default();
    if mode == Mode::BackupSend {
        return plan;
    }
    let local_tombs: BTreeMap<MailboxGuid, i64> = local
        .tombstones
        .iter()
        .map(|t| (t.guid, t.deleted_at.0))
        .collect();
    // Working view of our names: name -> guid, guid -> mailbox.
    let mut by_guid: BTreeMap<MailboxGuid, Mailbox> = local
        .mailboxes
        .iter()
        .map(|m| (m.guid, m.clone()))
        .collect();
    let mut names: BTreeMap<MailboxName, MailboxGuid> = local
        .mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.guid))
        .collect();

    // 1. The peer's deletes (and, for a backup destination, anything the
    //    source does not have).
    for m in local.mailboxes {
        if remote.mailboxes.contains_key(&m.guid) {
            continue;
        }
        let deleted_at = remote.deleted.get(&m.guid).copied();
        // A backup destination keeps a mailbox whose name the source uses
        // (it takes the source's identity below, INBOX included).
        let name_on_source = remote.mailboxes.values().any(|r| r.name == m.name);
        let delete = match (mode, deleted_at) {
            (Mode::BackupRecv, _) => !name_on_source,
            (_, Some(_)) => true,
            _ => false,
        };
        if !delete {
            continue;
        }
        let rescued = match (mode, deleted_at) {
            (Mode::TwoWay, Some(at)) => (local.unseen)(m, at),
            _ => Vec::new(),
        };
        plan.mutations.push(Mutation::DeleteMailbox {
            uniqueid: m.uniqueid.clone(),
            at: UnixTime(now),
            modseq: ModSeq(m.highestmodseq.0 + 1),
        });
        names.remove(&m.name);
        by_guid.remove(&m.guid);
        if rescued.is_empty() {
            plan.notes
                .push(format!("delete mailbox {}", m.name.to_lossy()));
            continue;
        }
        // corvid: mail the deleting side never saw survives, in a mailbox
        // with a new GUID (derived, so both sides agree) under the old
        // name; the peer learns it as a new mailbox on the next run.
        let g = rescue_guid(&m.guid);
        let mut mb = new_mailbox(user, g, m.name.clone(), m.uidvalidity.get(), now);
        mb.uidvalidity =
            UidValidity::new(m.uidvalidity.get().wrapping_add(1).max(1)).expect("nonzero");
        mb.last_uid = m.last_uid;
        mb.highestmodseq = m.highestmodseq;
        plan.notes.push(format!(
            "mailbox {} deleted by peer; keeping {} unseen messages as new mailbox {}",
            m.name.to_lossy(),
            rescued.len(),
            g
        ));
        plan.mutations.push(Mutation::PutMailbox(mb.clone()));
        for r in rescued {
            plan.mutations.push(Mutation::PutRecord {
                mailbox: mb.uniqueid.clone(),
                record: r,
            });
        }
        names.insert(mb.name.clone(), g);
        by_guid.insert(g, mb);
    }

    // 2. Renames of mailboxes both sides have.
    let mut renames: Vec<(MailboxGuid, MailboxName)> = Vec::new();
    for (g, r) in &remote.mailboxes {
        let Some(l) = by_guid.get(g) else { continue };
        if l.name == r.name {
            continue;
        }
        let remote_wins = match mode {
            Mode::BackupRecv => true,
            Mode::BackupSend => false,
            Mode::TwoWay => {
                r.renamed_at > l.renamed_or_created_at.0
                    || (r.renamed_at == l.renamed_or_created_at.0 && role == Role::Slave)
            }
        };
        if remote_wins {
            renames.push((*g, r.name.clone()));
        }
    }
    // A target held by a mailbox only we have (not known to the peer)
    // moves aside to a GUID-suffixed name: both brains pick the same one.
    let mut pending = renames;
    let mut guard = 0;
    while !pending.is_empty() && guard < 4 * (pending.len() + 4) {
        guard += 1;
        let (g, target) = pending.remove(0);
        match names.get(&target).copied() {
            Some(holder) if holder == g => {}
            Some(holder) if !remote.mailboxes.contains_key(&holder) => {
                let aside = suffixed(&target, &holder);
                rename(&mut plan, &mut names, &mut by_guid, holder, aside, now);
                rename(&mut plan, &mut names, &mut by_guid, g, target, now);
            }
            Some(holder) => {
                // Held by a mailbox that is itself moving: park ours on a
                // temporary name and retry after the others.
                if pending.iter().any(|(h, _)| *h == holder) {
                    let tmp = suffixed(&target, &g);
                    rename(&mut plan, &mut names, &mut by_guid, g, tmp, now);
                    pending.push((g, target));
                } else {
                    let aside = suffixed(&target, &holder);
                    rename(&mut plan, &mut names, &mut by_guid, holder, aside, now);
                    rename(&mut plan, &mut names, &mut by_guid, g, target, now);
                }
            }
            None => rename(&mut plan, &mut names, &mut by_guid, g, target, now),
        }
    }

    // 3. Mailboxes only the peer has.
    for (g, r) in &remote.mailboxes {
        if by_guid.contains_key(g) {
            continue;
        }
        if mode == Mode::TwoWay && local_tombs.contains_key(g) {
            // We deleted it; the peer applies our delete (or rescues).
            continue;
        }
        if let Some(holder) = names.get(&r.name).copied() {
            let holder_known = remote.mailboxes.contains_key(&holder);
            if !holder_known && mode == Mode::BackupRecv {
                // The destination takes the source's identity in place:
                // never delete-and-recreate (a maildir INBOX cannot be).
                let mut mb = by_guid.remove(&holder).expect("named mailbox exists");
                plan.notes.push(format!(
                    "mailbox {}: taking the source's GUID {}",
                    mb.name.to_lossy(),
                    g
                ));
                mb.guid = *g;
                mb.uidvalidity = UidValidity::new(r.uidvalidity.max(1)).expect("nonzero");
                plan.mutations.push(Mutation::PutMailbox(mb.clone()));
                names.insert(mb.name.clone(), *g);
                by_guid.insert(*g, mb);
                continue;
            }
            if !holder_known && mode == Mode::TwoWay && !is_inbox(&r.name) {
                // Two independent creations of one name other than INBOX:
                // the smaller GUID steps aside to `<name>-<8 hex of its
                // GUID>` on both sides (as a name wanted by a mailbox the
                // peer does not know). Never merged: a merge changes a
                // GUID that a third replica may already hold under
                // another name, and two identities for one mailbox never
                // converge (sim seeds 3758, 4589, 8146, 9777).
                if g > &holder {
                    let aside = suffixed(&r.name, &holder);
                    rename(&mut plan, &mut names, &mut by_guid, holder, aside, now);
                    // Falls through: create the peer's at the name.
                } else {
                    let aside = suffixed(&r.name, g);
                    let mb = new_mailbox_here(local, user, *g, aside, r.uidvalidity, now);
                    plan.notes.push(format!(
                        "create mailbox {} (the peer's {} steps aside)",
                        mb.name.to_lossy(),
                        r.name.to_lossy()
                    ));
                    plan.mutations.push(Mutation::PutMailbox(mb.clone()));
                    names.insert(mb.name.clone(), *g);
                    by_guid.insert(*g, mb);
                    continue;
                }
            } else if !holder_known && mode == Mode::TwoWay {
                // Two independent INBOXes: one mailbox, the bigger GUID,
                // messages merged (INBOX cannot be renamed away, so its
                // name is its identity on every replica).
                if g > &holder {
                    let mut mb = by_guid.remove(&holder).expect("named mailbox exists");
                    plan.notes.push(format!(
                        "mailbox {} created on both sides: adopting GUID {}",
                        mb.name.to_lossy(),
                        g
                    ));
                    mb.guid = *g;
                    plan.mutations.push(Mutation::PutMailbox(mb.clone()));
                    names.insert(mb.name.clone(), *g);
                    by_guid.insert(*g, mb);
                }
                continue;
            }
            if holder_known {
                let aside = suffixed(&r.name, &holder);
                rename(&mut plan, &mut names, &mut by_guid, holder, aside, now);
            }
        }
        let mb = new_mailbox_here(local, user, *g, r.name.clone(), r.uidvalidity, r.renamed_at);
        plan.notes
            .push(format!("create mailbox {}", r.name.to_lossy()));
        plan.mutations.push(Mutation::PutMailbox(mb.clone()));
        names.insert(mb.name.clone(), *g);
        by_guid.insert(*g, mb);
    }

    // 4. Subscriptions: newer change wins, a tie subscribes.
    let local_subs: BTreeMap<&MailboxName, &Subscription> =
        local.subscriptions.iter().map(|(n, s)| (n, s)).collect();
    for (name, &(subscribed, at)) in &remote.subscriptions {
        let take = match (mode, local_subs.get(name)) {
            (Mode::BackupRecv, Some(l)) => l.subscribed != subscribed,
            (_, None) => subscribed,
            (_, Some(l)) => {
                l.subscribed != subscribed
                    && (at > l.changed_at.0 || (at == l.changed_at.0 && subscribed))
            }
        };
        if take {
            plan.mutations.push(Mutation::SetSubscription {
                user: user.clone(),
                name: name.clone(),
                subscription: Subscription {
                    subscribed,
                    changed_at: UnixTime(at),
                },
            });
        }
    }
    // 5. The peer's unsubscribes of names it no longer has (Dovecot keys
    //    them by name hash): they win over an older subscribe here.
    if mode == Mode::TwoWay && !remote.unsubscribes.is_empty() {
        let theirs = remote.sep.unwrap_or(local.sep);
        for (name, s) in local.subscriptions {
            if !s.subscribed || remote.subscriptions.contains_key(name) {
                continue;
            }
            let h = name_hash(&with_separator(name, local.sep, theirs));
            if let Some(&at) = remote.unsubscribes.get(&h) {
                if at > s.changed_at.0 {
                    plan.notes.push(format!(
                        "unsubscribe {} (peer's unsubscribe)",
                        name.to_lossy()
                    ));
                    plan.mutations.push(Mutation::SetSubscription {
                        user: user.clone(),
                        name: name.clone(),
                        subscription: Subscription {
                            subscribed: false,
                            changed_at: UnixTime(at),
                        },
                    });
                }
            }
        }
    }
    if mode == Mode::BackupRecv {
        for (name, s) in local.subscriptions {
            if s.subscribed && !remote.subscriptions.get(name).is_some_and(|r| r.0) {
                plan.mutations.push(Mutation::SetSubscription {
                    user: user.clone(),
                    name: name.clone(),
                    subscription: Subscription {
                        subscribed: false,
                        changed_at: UnixTime(now),
                    },
                });
            }
        }
    }
    plan
}

fn rename(
    plan: &mut TreePlan,
    names: &mut BTreeMap<MailboxName, MailboxGuid>,
    by_guid: &mut BTreeMap<MailboxGuid, Mailbox>,
    g: MailboxGuid,
    to: MailboxName,
    now: i64,
) {
    let Some(mb) = by_guid.get_mut(&g) else {
        return;
    };
    if mb.name == to {
        return;
    }
    plan.notes.push(format!(
        "rename mailbox {} -> {}",
        mb.name.to_lossy(),
        to.to_lossy()
    ));
    names.remove(&mb.name);
    plan.mutations.push(Mutation::RenameMailbox {
        uniqueid: mb.uniqueid.clone(),
        new_name: to.clone(),
        at: UnixTime(now),
        modseq: mb.highestmodseq,
    });
    mb.name = to.clone();
    names.insert(to, g);
}

/// A message body this side must get from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The UID to save it under here.
    pub uid: u32,
    /// The peer's UID (for the request).
    pub remote_uid: u32,
    /// Its flags here.
    pub flags: Flags,
}

/// One mailbox's message merge for our side.
#[derive(Debug, Default)]
pub struct MailPlan {
    /// Record changes for our store (flags, expunges, moves).
    pub mutations: Vec<Mutation>,
    /// Bodies to request, by wire GUID.
    pub wants: BTreeMap<Bytes, Want>,
    /// Highest UID this side will hold afterwards.
    pub last_uid: u32,
    /// Human-readable decisions.
    pub notes: Vec<String>,
}

/// What [`plan_mailbox`] needs.
pub struct MailInputs<'a> {
    /// Our mailbox.
    pub mailbox: &'a Mailbox,
    /// All our records (live and expunged), by UID.
    pub records: &'a [Record],
    /// The peer's changes, by UID.
    pub remote: &'a [MailChange],
    /// The peer's UIDNEXT.
    pub remote_uid_next: u32,
    /// The saved state when the peer sent only changes since it.
    pub state: Option<&'a MailboxState>,
    /// Master or slave.
    pub role: Role,
    /// Two-way or backup.
    pub mode: Mode,
    /// The modseq our changes get.
    pub modseq: ModSeq,
}

/// Merge one mailbox's messages; see the parent module for the rules.
pub fn plan_mailbox(inp: &MailInputs<'_>) -> MailPlan {
    let mut plan = MailPlan {
        last_uid: inp.mailbox.last_uid,
        ..MailPlan::default()
    };
    let local_next = inp.mailbox.last_uid + 1;
    let remote_next = inp.remote_uid_next.max(1);
    let common_uid = inp.state.map_or(0, |s| s.last_common_uid);
    let mb = &inp.mailbox.uniqueid;

    let mut live: BTreeMap<u32, Record> = BTreeMap::new();
    let mut exp128: BTreeSet<(u32, [u8; 16])> = BTreeSet::new();
    for r in inp.records {
        if r.expunged {
            exp128.insert((r.uid.get(), guid128(&wire_guid(r))));
        } else {
            live.insert(r.uid.get(), r.clone());
        }
    }
    let mut saves: BTreeMap<Bytes, &MailChange> = BTreeMap::new();
    let mut flag_changes: BTreeMap<u32, &MailChange> = BTreeMap::new();
    let mut remote_exp: Vec<&MailChange> = Vec::new();
    for c in inp.remote {
        match c.change_type {
            ChangeType::Save => {
                if let Some(g) = &c.guid {
                    saves.insert(g.clone(), c);
                }
            }
            ChangeType::FlagChange => {
                flag_changes.insert(c.uid, c);
            }
            ChangeType::Expunge => remote_exp.push(c),
        }
    }
    let backup_send = inp.mode == Mode::BackupSend;
    let backup_recv = inp.mode == Mode::BackupRecv;

    let expunge = |plan: &mut MailPlan, r: &Record, why: &str| {
        let mut e = r.clone();
        e.expunged = true;
        e.modseq = inp.modseq;
        plan.notes
            .push(format!("expunge uid {} ({why})", r.uid.get()));
        plan.mutations.push(Mutation::PutRecord {
            mailbox: mb.clone(),
            record: e,
        });
    };

    // 1. The peer's expunges (they win over anything but backup).
    if !backup_send {
        for c in &remote_exp {
            let Some(g) = &c.guid else { continue };
            let Some(h) = proto::dsync::Guid128::parse(g)
                .map(|g| g.0)
                .or_else(|| Some(guid128(g)))
            else {
                continue;
            };
            // Only the same UID: a live copy of that GUID elsewhere was
            // moved there by a UID conflict and is not what was expunged.
            let hit = live
                .get(&c.uid)
                .filter(|r| guid128(&wire_guid(r)) == h)
                .map(|_| c.uid);
            if let Some(u) = hit {
                let r = live.remove(&u).expect("found");
                expunge(&mut plan, &r, "expunged by peer");
            }
        }
    }

    // 2. Our live messages against the peer's list.
    let mut renumber: BTreeMap<Bytes, (Option<Record>, Option<&MailChange>)> = BTreeMap::new();
    let mut want_at: Vec<(Bytes, u32, &MailChange)> = Vec::new();
    for r in live.values() {
        let g = wire_guid(r);
        let remote = saves.get(&g).copied().or_else(|| {
            flag_changes
                .get(&r.uid.get())
                .copied()
                .filter(|c| c.guid.iter().all(|cg| *cg == g))
        });
        match remote {
            Some(c) if c.uid == r.uid.get() => merge_flags(&mut plan, inp, r, c),
            Some(c) => {
                if backup_recv {
                    // The source's UID is the truth: drop ours, import at its UID.
                    expunge(&mut plan, r, "backup: UID differs from source");
                    want_at.push((g.clone(), c.uid, c));
                } else if !backup_send {
                    let (ours, theirs) = (r.uid.get(), c.uid);
                    if ours < theirs && theirs >= local_next {
                        // The higher UID is free here: take it, the peer
                        // keeps it. A new UID above both UIDNEXTs would
                        // differ from a third replica's and chase it
                        // round the ring for ever (sim seed 13).
                        move_record(&mut plan, inp, r, theirs, Some(c));
                    } else if theirs < ours && ours >= remote_next {
                        // The peer takes our (higher, free there) UID.
                        merge_flags(&mut plan, inp, r, c);
                    } else {
                        renumber.insert(g.clone(), (Some(r.clone()), Some(c)));
                    }
                }
            }
            None => {
                let peer_lacks = inp.state.is_none() || r.uid.get() > common_uid;
                if !peer_lacks {
                    continue;
                }
                if backup_recv {
                    expunge(&mut plan, r, "backup: not on source");
                } else if !backup_send && r.uid.get() < remote_next {
                    renumber.insert(g, (Some(r.clone()), None));
                }
            }
        }
    }

    // 3. The peer's messages we lack.
    let local_guids: BTreeSet<Bytes> = live.values().map(wire_guid).collect();
    if !backup_send {
        for (g, c) in &saves {
            if local_guids.contains(g) {
                continue;
            }
            if !backup_recv && exp128.contains(&(c.uid, guid128(g))) {
                // We expunged it; our expunge record makes the peer do so.
                continue;
            }
            if backup_recv || (c.uid >= local_next && !live.contains_key(&c.uid)) {
                if let Some(r) = live.get(&c.uid) {
                    expunge(
                        &mut plan,
                        &r.clone(),
                        "backup: UID taken by another message",
                    );
                }
                want_at.push((g.clone(), c.uid, c));
            } else {
                renumber.insert(g.clone(), (None, Some(c)));
            }
        }
    }
    for (g, uid, c) in want_at {
        plan.last_uid = plan.last_uid.max(uid);
        plan.wants.insert(
            g,
            Want {
                uid,
                remote_uid: c.uid,
                flags: change_flags(c),
            },
        );
    }

    // 4. UID conflicts: new UIDs above both UIDNEXTs, in GUID order, on
    //    both sides (the same order on both brains).
    for (uid, (g, (local_rec, remote))) in (local_next.max(remote_next)..).zip(renumber) {
        plan.last_uid = plan.last_uid.max(uid);
        match local_rec {
            Some(r) => move_record(&mut plan, inp, &r, uid, remote),
            None => {
                let c = remote.expect("one side has it");
                plan.wants.insert(
                    g,
                    Want {
                        uid,
                        remote_uid: c.uid,
                        flags: change_flags(c),
                    },
                );
            }
        }
    }
    if !backup_send {
        plan.last_uid = plan.last_uid.max(remote_next - 1);
    }
    plan
}

/// Moves our record `r` to `uid` (expunging the old UID), with the flags
/// rule 5 picks when the peer has the message too.
fn move_record(
    plan: &mut MailPlan,
    inp: &MailInputs<'_>,
    r: &Record,
    uid: u32,
    remote: Option<&MailChange>,
) {
    let mb = &inp.mailbox.uniqueid;
    let mut e = r.clone();
    e.expunged = true;
    e.modseq = inp.modseq;
    plan.notes.push(format!(
        "expunge uid {} (UID conflict: moving)",
        r.uid.get()
    ));
    plan.mutations.push(Mutation::PutRecord {
        mailbox: mb.clone(),
        record: e,
    });
    let mut moved = r.clone();
    moved.uid = Uid::new(uid).expect("nonzero");
    moved.modseq = inp.modseq;
    if let Some(c) = remote {
        moved.flags = winner_flags(inp, r, c).unwrap_or(moved.flags);
    }
    plan.last_uid = plan.last_uid.max(uid);
    plan.notes.push(format!("uid {} -> {uid}", r.uid.get()));
    plan.mutations.push(Mutation::PutRecord {
        mailbox: mb.clone(),
        record: moved,
    });
}

/// The peer's explicit per-flag deltas in a change (`add_flags`,
/// `remove_flags`, `+kw`/`&kw`, `-kw`): what it changed since the last
/// sync, as Dovecot exports from its transaction log. `None` when it sent
/// only final flags (corvid, or a full sync).
pub fn change_deltas(c: &MailChange) -> Option<(Flags, Flags)> {
    let mut add = Flags::with(flags_from_wire(c.add_flags), []);
    let mut remove = Flags::with(flags_from_wire(c.remove_flags), []);
    for e in &c.keyword_changes {
        let Some((kind, kw)) = KeywordChangeKind::parse(e) else {
            continue;
        };
        let Ok(k) = Keyword::new(kw) else { continue };
        match kind {
            KeywordChangeKind::Add | KeywordChangeKind::AddAndFinal => {
                add.insert_keyword(k);
            }
            KeywordChangeKind::Remove => {
                remove.insert_keyword(k);
            }
            KeywordChangeKind::Final => {}
        }
    }
    let empty = Flags::new();
    (add != empty || remove != empty).then_some((add, remove))
}

/// `base` with the peer's deltas applied flag by flag.
fn apply_deltas(base: &Flags, add: &Flags, remove: &Flags) -> Flags {
    let mut out = base.clone();
    out.system.insert(add.system);
    out.system.remove(remove.system);
    for k in add.keywords() {
        out.insert_keyword(k.clone());
    }
    for k in remove.keywords() {
        out.remove_keyword(k);
    }
    out
}

/// The flags a message both sides have should end with here, when they
/// differ from ours.
///
/// Per flag, as Dovecot's importer merges (`merge_flags`): the side that
/// wins (rule 5: with a state the side that changed since; else the higher
/// modseq; tie: the master) decides every flag, except the flags the
/// losing peer explicitly added or removed since the last sync (its
/// deltas), which stay changed. corvid keeps no per-flag history of its
/// own, so only the peer's deltas count; corvid sends final flags only,
/// and Dovecot's merge then keeps its own deltas in the same way, so both
/// sides end equal in one run. (A flag both sides changed in opposite
/// directions ends as the peer's delta says.)
fn winner_flags(inp: &MailInputs<'_>, r: &Record, c: &MailChange) -> Option<Flags> {
    let theirs = change_flags(c);
    if theirs == r.flags {
        return None;
    }
    let remote_wins = match inp.mode {
        Mode::BackupSend => false,
        Mode::BackupRecv => true,
        Mode::TwoWay => {
            let local_changed = inp.state.iter().all(|s| r.modseq.0 > s.last_common_modseq);
            if !local_changed {
                true
            } else if c.modseq != r.modseq.0 {
                c.modseq > r.modseq.0
            } else {
                inp.role == Role::Slave
            }
        }
    };
    if remote_wins {
        return Some(theirs);
    }
    // Ours win, but not over the peer's own explicit changes (two-way
    // only: a backup source never takes anything).
    if inp.mode != Mode::TwoWay {
        return None;
    }
    let (add, remove) = change_deltas(c)?;
    let merged = apply_deltas(&r.flags, &add, &remove);
    (merged != r.flags).then_some(merged)
}

fn merge_flags(plan: &mut MailPlan, inp: &MailInputs<'_>, r: &Record, c: &MailChange) {
    if let Some(f) = winner_flags(inp, r, c) {
        let mut n = r.clone();
        n.flags = f;
        n.modseq = inp.modseq;
        plan.notes
            .push(format!("flags of uid {} from peer", r.uid.get()));
        plan.mutations.push(Mutation::PutRecord {
            mailbox: inp.mailbox.uniqueid.clone(),
            record: n,
        });
    }
}
