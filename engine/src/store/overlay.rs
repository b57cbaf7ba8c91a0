//! Not-yet-durable state layered over a store: the one implementation of
//! [`Mutation`] semantics.
//!
//! A [`Delta`] is what a sequence of mutations changes, relative to some
//! base state it was validated against. [`Overlay`] answers [`MailRead`]
//! questions from a base plus a delta. [`Pending`] is the machine-side
//! helper: a machine pushes each batch it emits, reads through `Pending`
//! (so it sees its own writes before their completion), and removes the
//! batch when the completion arrives. `MemStore` uses the same `Delta` to
//! validate a batch atomically (build the delta; on any refusal drop it)
//! and to apply it.
//!
//! Deltas hold whole values (a mailbox, a record), never diffs of fields,
//! so reads are a lookup in the delta and then in the base. "Cleared"
//! markers (a deleted mailbox's records, a deleted user's seen state) hide
//! the base; puts made after a clear live in the delta and win over it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{BatchId, MailRead, Mutation, StoreError, UidRange, WriteBatch};
use crate::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, NameChange, QuotaRoot, Record, Seen,
    SieveName, SieveScript, Subscription, SyncCrcs, SyncLogLine, Tombstone, Uid, UniqueId, UserId,
};

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RecDelta {
    pub(crate) cleared: bool,
    pub(crate) puts: BTreeMap<Uid, Option<Record>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MsgDelta {
    Inline(Bytes),
    Linked { size: u64 },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LogDelta {
    /// Lines appended, with the sequence numbers they got.
    pub(crate) appended: Vec<(u64, SyncLogLine)>,
    /// Every line with a sequence number ≤ this is gone (clamped to the
    /// last number that existed when trimmed, so it never hides a line
    /// appended after the trim).
    pub(crate) trimmed_through: u64,
    /// The highest sequence number appended here (kept when its line is
    /// trimmed again: numbers never repeat).
    pub(crate) last: u64,
}

/// What a sequence of mutations changes; see the module doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Delta {
    pub(crate) mailboxes: BTreeMap<UniqueId, Option<Mailbox>>,
    pub(crate) records: BTreeMap<UniqueId, RecDelta>,
    pub(crate) messages: BTreeMap<Guid, MsgDelta>,
    pub(crate) seen: BTreeMap<(UserId, UniqueId), Option<Seen>>,
    pub(crate) seen_cleared_users: BTreeSet<UserId>,
    pub(crate) seen_cleared_mailboxes: BTreeSet<UniqueId>,
    pub(crate) subs: BTreeMap<(UserId, MailboxName), Subscription>,
    pub(crate) subs_cleared_users: BTreeSet<UserId>,
    pub(crate) quotas: BTreeMap<MailboxName, Option<QuotaRoot>>,
    pub(crate) server_annotations: Option<Annotations>,
    pub(crate) sieve: BTreeMap<(UserId, SieveName), Option<SieveScript>>,
    pub(crate) sieve_cleared_users: BTreeSet<UserId>,
    pub(crate) sieve_active: BTreeMap<UserId, Option<SieveName>>,
    pub(crate) tombstones: BTreeMap<UniqueId, Option<Tombstone>>,
    pub(crate) logs: BTreeMap<String, LogDelta>,
}

/// How a delta learns whether message bytes are staged: `None` means
/// "trust the batch" (the machine side cannot see the store's staging
/// area; it got a `Staged` completion instead).
pub(crate) type StagedLookup<'a> = Option<&'a dyn Fn(&Guid) -> Option<u64>>;

impl Delta {
    /// The delta of a whole batch over `base`, or the first refusal.
    pub(crate) fn of_batch<S: MailRead + ?Sized>(
        base: &S,
        batch: &WriteBatch,
        staged: StagedLookup<'_>,
    ) -> Result<Delta, StoreError> {
        let mut d = Delta::default();
        let base = BatchReads::new(base);
        for m in &batch.mutations {
            d.apply(&base, m, staged)?;
        }
        Ok(d)
    }

    fn view<'a, S: MailRead + ?Sized>(&'a self, base: &'a S) -> Overlay<'a, S> {
        Overlay { base, delta: self }
    }

    fn clear_seen_user(&mut self, user: &UserId) {
        self.seen.retain(|(u, _), _| u != user);
        self.seen_cleared_users.insert(user.clone());
    }

    fn delete_mailbox<S: MailRead + ?Sized>(
        &mut self,
        base: &S,
        uniqueid: &UniqueId,
        at: crate::model::UnixTime,
        modseq: crate::model::ModSeq,
    ) -> Result<(), StoreError> {
        let mb = self
            .view(base)
            .mailbox_by_uniqueid(uniqueid)?
            .ok_or_else(|| StoreError::UnknownMailbox(uniqueid.clone()))?;
        self.mailboxes.insert(uniqueid.clone(), None);
        self.records.insert(
            uniqueid.clone(),
            RecDelta {
                cleared: true,
                puts: BTreeMap::new(),
            },
        );
        self.seen.retain(|(_, m), _| m != uniqueid);
        self.seen_cleared_mailboxes.insert(uniqueid.clone());
        self.tombstones.insert(
            uniqueid.clone(),
            Some(Tombstone {
                name: mb.name,
                uniqueid: mb.uniqueid,
                guid: mb.guid,
                owner: mb.owner,
                deleted_at: at,
                modseq,
            }),
        );
        Ok(())
    }

    /// Apply one mutation, reading `base` + `self`.
    pub(crate) fn apply<S: MailRead + ?Sized>(
        &mut self,
        base: &S,
        m: &Mutation,
        staged: StagedLookup<'_>,
    ) -> Result<(), StoreError> {
        match m {
            Mutation::LinkMessage { guid, size } => {
                if self.view(base).message_size(guid)?.is_some() {
                    return Ok(());
                }
                if let Some(lookup) = staged {
                    match lookup(guid) {
                        None => return Err(StoreError::MissingMessage(*guid)),
                        Some(s) if s != *size => {
                            return Err(StoreError::SizeMismatch {
                                guid: *guid,
                                expected: *size,
                                actual: s,
                            })
                        }
                        Some(_) => {}
                    }
                }
                self.messages
                    .insert(*guid, MsgDelta::Linked { size: *size });
            }
            Mutation::PutMessage { guid, bytes } => {
                let actual = Guid::of(bytes);
                if actual != *guid {
                    return Err(StoreError::GuidMismatch {
                        expected: *guid,
                        actual,
                    });
                }
                if self.view(base).message_size(guid)?.is_none() {
                    self.messages.insert(*guid, MsgDelta::Inline(bytes.clone()));
                }
            }
            Mutation::PutMailbox(mb) => {
                let v = self.view(base);
                if let Some(old) = v.mailbox_by_uniqueid(&mb.uniqueid)? {
                    if old.name != mb.name {
                        return Err(StoreError::NameChanged(mb.uniqueid.clone()));
                    }
                }
                if let Some(holder) = v.mailbox(&mb.name)? {
                    if holder.uniqueid != mb.uniqueid {
                        return Err(StoreError::NameTaken {
                            name: mb.name.clone(),
                            holder: holder.uniqueid,
                        });
                    }
                }
                if !mb.guid.is_zero() {
                    if let Some(holder) = v.mailbox_by_guid(&mb.guid)? {
                        if holder.uniqueid != mb.uniqueid {
                            return Err(StoreError::GuidTaken {
                                guid: mb.guid,
                                holder: holder.uniqueid,
                            });
                        }
                    }
                }
                self.mailboxes.insert(mb.uniqueid.clone(), Some(mb.clone()));
            }
            Mutation::RenameMailbox {
                uniqueid,
                new_name,
                at,
                modseq,
            } => {
                let v = self.view(base);
                let mut mb = v
                    .mailbox_by_uniqueid(uniqueid)?
                    .ok_or_else(|| StoreError::UnknownMailbox(uniqueid.clone()))?;
                if mb.name == *new_name {
                    return Ok(());
                }
                if let Some(holder) = v.mailbox(new_name)? {
                    return Err(StoreError::NameTaken {
                        name: new_name.clone(),
                        holder: holder.uniqueid,
                    });
                }
                let old = std::mem::replace(&mut mb.name, new_name.clone());
                mb.name_history.push(NameChange {
                    old_name: old,
                    at: *at,
                    modseq: *modseq,
                });
                mb.renamed_or_created_at = *at;
                self.mailboxes.insert(uniqueid.clone(), Some(mb));
            }
            Mutation::DeleteMailbox {
                uniqueid,
                at,
                modseq,
            } => self.delete_mailbox(base, uniqueid, *at, *modseq)?,
            Mutation::PutRecord { mailbox, record } => {
                let v = self.view(base);
                if v.mailbox_by_uniqueid(mailbox)?.is_none() {
                    return Err(StoreError::UnknownMailbox(mailbox.clone()));
                }
                if !record.expunged && !v.has_message(&record.guid)? {
                    return Err(StoreError::MissingMessage(record.guid));
                }
                self.records
                    .entry(mailbox.clone())
                    .or_default()
                    .puts
                    .insert(record.uid, Some(record.clone()));
            }
            Mutation::PurgeRecords { mailbox, uids } => {
                if self.view(base).mailbox_by_uniqueid(mailbox)?.is_none() {
                    return Err(StoreError::UnknownMailbox(mailbox.clone()));
                }
                let rd = self.records.entry(mailbox.clone()).or_default();
                for uid in uids {
                    rd.puts.insert(*uid, None);
                }
            }
            Mutation::PutSeen {
                user,
                mailbox,
                seen,
            } => {
                self.seen
                    .insert((user.clone(), mailbox.clone()), Some(seen.clone()));
            }
            Mutation::DeleteSeen { user, mailbox } => {
                self.seen.insert((user.clone(), mailbox.clone()), None);
            }
            Mutation::SetSubscription {
                user,
                name,
                subscription,
            } => {
                self.subs
                    .insert((user.clone(), name.clone()), *subscription);
            }
            Mutation::PutQuota { root, quota } => {
                self.quotas.insert(root.clone(), Some(quota.clone()));
            }
            Mutation::DeleteQuota { root } => {
                self.quotas.insert(root.clone(), None);
            }
            Mutation::SetAnnotation {
                mailbox,
                entry,
                owner,
                value,
            } => match mailbox {
                None => {
                    let mut anns = self.view(base).server_annotations()?;
                    anns.set(entry.clone(), owner.clone(), value.clone());
                    self.server_annotations = Some(anns);
                }
                Some(id) => {
                    let mut mb = self
                        .view(base)
                        .mailbox_by_uniqueid(id)?
                        .ok_or_else(|| StoreError::UnknownMailbox(id.clone()))?;
                    mb.annotations
                        .set(entry.clone(), owner.clone(), value.clone());
                    self.mailboxes.insert(id.clone(), Some(mb));
                }
            },
            Mutation::PutSieve { user, script } => {
                self.sieve
                    .insert((user.clone(), script.name.clone()), Some(script.clone()));
            }
            Mutation::DeleteSieve { user, name } => {
                let active = self.view(base).sieve_active(user)?;
                self.sieve.insert((user.clone(), name.clone()), None);
                if active.as_ref() == Some(name) {
                    self.sieve_active.insert(user.clone(), None);
                }
            }
            Mutation::ActivateSieve { user, name } => {
                if let Some(n) = name {
                    let exists = self
                        .view(base)
                        .sieve_scripts(user)?
                        .iter()
                        .any(|s| s.name == *n);
                    if !exists {
                        return Err(StoreError::UnknownSieve {
                            user: user.clone(),
                            name: n.clone(),
                        });
                    }
                }
                self.sieve_active.insert(user.clone(), name.clone());
            }
            Mutation::DeleteUser { user, at, modseq } => {
                let mut mbs = self.view(base).mailboxes_of_user(user)?;
                // Deepest first: a child's name sorts after its parent's.
                mbs.sort_by(|a, b| b.name.cmp(&a.name));
                for mb in &mbs {
                    self.delete_mailbox(base, &mb.uniqueid, *at, *modseq)?;
                    if self.view(base).quota(&mb.name)?.is_some() {
                        self.quotas.insert(mb.name.clone(), None);
                    }
                }
                self.clear_seen_user(user);
                self.subs.retain(|(u, _), _| u != user);
                self.subs_cleared_users.insert(user.clone());
                self.sieve.retain(|(u, _), _| u != user);
                self.sieve_cleared_users.insert(user.clone());
                self.sieve_active.insert(user.clone(), None);
            }
            Mutation::ForgetTombstone { uniqueid } => {
                self.tombstones.insert(uniqueid.clone(), None);
            }
            Mutation::AppendSyncLog { channel, line } => {
                let seq = self.view(base).sync_log_last(channel)? + 1;
                self.logs
                    .entry(channel.clone())
                    .or_default()
                    .appended
                    .push((seq, line.clone()));
                let l = self.logs.get_mut(channel).expect("just inserted");
                l.last = seq;
            }
            Mutation::TrimSyncLog { channel, through } => {
                let last = self.view(base).sync_log_last(channel)?;
                let l = self.logs.entry(channel.clone()).or_default();
                l.trimmed_through = l.trimmed_through.max((*through).min(last));
                let t = l.trimmed_through;
                l.appended.retain(|(seq, _)| *seq > t);
            }
        }
        Ok(())
    }

    /// Compose: `self` then `later` (which was built over base + `self`).
    pub(crate) fn merge(&mut self, later: Delta) {
        self.mailboxes.extend(later.mailboxes);
        for (id, rd) in later.records {
            if rd.cleared {
                self.records.insert(id, rd);
            } else {
                self.records.entry(id).or_default().puts.extend(rd.puts);
            }
        }
        self.messages.extend(later.messages);
        for u in later.seen_cleared_users {
            self.clear_seen_user(&u);
        }
        for m in later.seen_cleared_mailboxes {
            self.seen.retain(|(_, x), _| *x != m);
            self.seen_cleared_mailboxes.insert(m);
        }
        self.seen.extend(later.seen);
        for u in later.subs_cleared_users {
            self.subs.retain(|(x, _), _| *x != u);
            self.subs_cleared_users.insert(u);
        }
        self.subs.extend(later.subs);
        self.quotas.extend(later.quotas);
        if later.server_annotations.is_some() {
            self.server_annotations = later.server_annotations;
        }
        for u in later.sieve_cleared_users {
            self.sieve.retain(|(x, _), _| *x != u);
            self.sieve_cleared_users.insert(u);
        }
        self.sieve.extend(later.sieve);
        self.sieve_active.extend(later.sieve_active);
        self.tombstones.extend(later.tombstones);
        for (ch, l) in later.logs {
            let mine = self.logs.entry(ch).or_default();
            mine.trimmed_through = mine.trimmed_through.max(l.trimmed_through);
            let t = mine.trimmed_through;
            mine.appended.retain(|(seq, _)| *seq > t);
            mine.appended.extend(l.appended);
            mine.last = mine.last.max(l.last);
        }
    }
}

/// [`MailRead`] over a base plus not-yet-durable changes.
pub struct Overlay<'a, S: ?Sized> {
    base: &'a S,
    delta: &'a Delta,
}

impl<'a, S: MailRead + ?Sized> Overlay<'a, S> {
    pub(crate) fn new(base: &'a S, delta: &'a Delta) -> Overlay<'a, S> {
        Overlay { base, delta }
    }

    fn seen_hidden(&self, user: &UserId, mailbox: &UniqueId) -> bool {
        self.delta.seen_cleared_users.contains(user)
            || self.delta.seen_cleared_mailboxes.contains(mailbox)
    }

    fn user_has_data(&self, user: &UserId) -> Result<bool, StoreError> {
        Ok(!self.mailboxes_of_user(user)?.is_empty()
            || !self.seen_of_user(user)?.is_empty()
            || !self.subscriptions(user)?.is_empty()
            || !self.sieve_scripts(user)?.is_empty())
    }
}

impl<S: MailRead + ?Sized> MailRead for Overlay<'_, S> {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        for m in self.delta.mailboxes.values().flatten() {
            if m.name == *name {
                return Ok(Some(m.clone()));
            }
        }
        Ok(self
            .base
            .mailbox(name)?
            .filter(|m| !self.delta.mailboxes.contains_key(&m.uniqueid)))
    }

    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        match self.delta.mailboxes.get(id) {
            Some(m) => Ok(m.clone()),
            None => self.base.mailbox_by_uniqueid(id),
        }
    }

    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        if guid.is_zero() {
            return Ok(None);
        }
        for m in self.delta.mailboxes.values().flatten() {
            if m.guid == *guid {
                return Ok(Some(m.clone()));
            }
        }
        Ok(self
            .base
            .mailbox_by_guid(guid)?
            .filter(|m| !self.delta.mailboxes.contains_key(&m.uniqueid)))
    }

    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        let mut v: Vec<Mailbox> = self
            .base
            .mailboxes_of_user(user)?
            .into_iter()
            .filter(|m| !self.delta.mailboxes.contains_key(&m.uniqueid))
            .collect();
        v.extend(
            self.delta
                .mailboxes
                .values()
                .flatten()
                .filter(|m| m.owner.as_ref() == Some(user))
                .cloned(),
        );
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Fetch base pages until `limit` survivors or the end; then the
        // `limit` smallest names of (survivors + delta) below the last
        // fetched base name are exactly the answer.
        let mut base_items = Vec::new();
        let mut cursor = after.cloned();
        let mut bound: Option<MailboxName> = None;
        loop {
            let page = self.base.mailboxes(cursor.as_ref(), limit)?;
            let full = page.len() == limit;
            if let Some(last) = page.last() {
                cursor = Some(last.name.clone());
            }
            base_items.extend(
                page.into_iter()
                    .filter(|m| !self.delta.mailboxes.contains_key(&m.uniqueid)),
            );
            if !full {
                break;
            }
            if base_items.len() >= limit {
                bound = cursor.clone();
                break;
            }
        }
        base_items.extend(
            self.delta
                .mailboxes
                .values()
                .flatten()
                .filter(|m| !matches!(after, Some(a) if m.name <= *a))
                .filter(|m| !matches!(&bound, Some(b) if m.name > *b))
                .cloned(),
        );
        base_items.sort_by(|a, b| a.name.cmp(&b.name));
        base_items.truncate(limit);
        Ok(base_items)
    }

    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        let mut set: BTreeSet<UserId> = self.base.users()?.into_iter().collect();
        let d = self.delta;
        set.extend(
            d.mailboxes
                .values()
                .flatten()
                .filter_map(|m| m.owner.clone()),
        );
        set.extend(d.seen.keys().map(|(u, _)| u.clone()));
        set.extend(d.subs.keys().map(|(u, _)| u.clone()));
        set.extend(d.sieve.keys().map(|(u, _)| u.clone()));
        let mut out = Vec::new();
        for u in set {
            if self.user_has_data(&u)? {
                out.push(u);
            }
        }
        Ok(out)
    }

    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let Some(rd) = self.delta.records.get(mailbox) else {
            return self.base.records(mailbox, range, limit);
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut items = Vec::new();
        let mut bound = None;
        if !rd.cleared {
            let mut r = range;
            loop {
                let page = self.base.records(mailbox, r, limit)?;
                let full = page.len() == limit;
                let last = page.last().map(|x| x.uid);
                items.extend(page.into_iter().filter(|x| !rd.puts.contains_key(&x.uid)));
                if !full {
                    break;
                }
                let last = last.expect("a full page has a last record");
                if items.len() >= limit {
                    bound = Some(last);
                    break;
                }
                match last.next() {
                    Some(n) if n <= range.last => r.first = n,
                    _ => break,
                }
            }
        }
        let hi = bound.unwrap_or(range.last);
        items.extend(
            rd.puts
                .range(range.first..=hi)
                .filter_map(|(_, r)| r.clone()),
        );
        items.sort_by_key(|r| r.uid);
        items.truncate(limit);
        Ok(items)
    }

    fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
        let Some(rd) = self.delta.records.get(mailbox) else {
            return self.base.sync_crcs(mailbox);
        };
        if rd.cleared {
            return Ok(SyncCrcs::of_records(rd.puts.values().flatten()));
        }
        // XOR out what the delta replaces, XOR in what it puts.
        let mut crcs = self.base.sync_crcs(mailbox)?;
        for (uid, new) in &rd.puts {
            if let Some(old) = self.base.record(mailbox, *uid)? {
                crcs.toggle(&old);
            }
            if let Some(new) = new {
                crcs.toggle(new);
            }
        }
        Ok(crcs)
    }

    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        match self.delta.messages.get(guid) {
            Some(MsgDelta::Inline(b)) => Ok(Some(b.len() as u64)),
            Some(MsgDelta::Linked { size }) => Ok(Some(*size)),
            None => self.base.message_size(guid),
        }
    }

    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        match self.delta.messages.get(guid) {
            Some(MsgDelta::Inline(b)) => {
                let start = (offset.min(b.len() as u64)) as usize;
                let end = start.saturating_add(max_len).min(b.len());
                Ok(b.slice(start..end))
            }
            // Linked bytes sit in the store's staging area, which only the
            // store sees; they are readable once the batch is durable.
            _ => self.base.message_bytes(guid, offset, max_len),
        }
    }

    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        if let Some(s) = self.delta.seen.get(&(user.clone(), mailbox.clone())) {
            return Ok(s.clone());
        }
        if self.seen_hidden(user, mailbox) {
            return Ok(None);
        }
        self.base.seen(user, mailbox)
    }

    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        let mut map: BTreeMap<UniqueId, Seen> = if self.delta.seen_cleared_users.contains(user) {
            BTreeMap::new()
        } else {
            self.base
                .seen_of_user(user)?
                .into_iter()
                .filter(|(m, _)| !self.delta.seen_cleared_mailboxes.contains(m))
                .collect()
        };
        for ((u, m), s) in &self.delta.seen {
            if u == user {
                match s {
                    Some(s) => map.insert(m.clone(), s.clone()),
                    None => map.remove(m),
                };
            }
        }
        Ok(map.into_iter().collect())
    }

    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        let mut map: BTreeMap<MailboxName, Subscription> =
            if self.delta.subs_cleared_users.contains(user) {
                BTreeMap::new()
            } else {
                self.base.subscriptions(user)?.into_iter().collect()
            };
        for ((u, n), s) in &self.delta.subs {
            if u == user {
                map.insert(n.clone(), *s);
            }
        }
        Ok(map.into_iter().collect())
    }

    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        match self.delta.quotas.get(root) {
            Some(q) => Ok(q.clone()),
            None => self.base.quota(root),
        }
    }

    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        let mut map: BTreeMap<SieveName, SieveScript> =
            if self.delta.sieve_cleared_users.contains(user) {
                BTreeMap::new()
            } else {
                self.base
                    .sieve_scripts(user)?
                    .into_iter()
                    .map(|s| (s.name.clone(), s))
                    .collect()
            };
        for ((u, n), s) in &self.delta.sieve {
            if u == user {
                match s {
                    Some(s) => map.insert(n.clone(), s.clone()),
                    None => map.remove(n),
                };
            }
        }
        Ok(map.into_values().collect())
    }

    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        match self.delta.sieve_active.get(user) {
            Some(a) => Ok(a.clone()),
            None => self.base.sieve_active(user),
        }
    }

    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        match &self.delta.server_annotations {
            Some(a) => Ok(a.clone()),
            None => self.base.server_annotations(),
        }
    }

    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        let mut v: Vec<Tombstone> = self
            .base
            .tombstones_named(name)?
            .into_iter()
            .filter(|t| !self.delta.tombstones.contains_key(&t.uniqueid))
            .collect();
        v.extend(
            self.delta
                .tombstones
                .values()
                .flatten()
                .filter(|t| t.name == *name)
                .cloned(),
        );
        v.sort_by(|a, b| (a.deleted_at, &a.uniqueid).cmp(&(b.deleted_at, &b.uniqueid)));
        Ok(v)
    }

    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        let mut v: Vec<Tombstone> = self
            .base
            .tombstones_of_user(user)?
            .into_iter()
            .filter(|t| !self.delta.tombstones.contains_key(&t.uniqueid))
            .collect();
        v.extend(
            self.delta
                .tombstones
                .values()
                .flatten()
                .filter(|t| t.owner.as_ref() == Some(user))
                .cloned(),
        );
        v.sort_by(|a, b| a.uniqueid.cmp(&b.uniqueid));
        Ok(v)
    }

    fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        let Some(l) = self.delta.logs.get(channel) else {
            return self.base.sync_log(channel, after, limit);
        };
        let after = after.max(l.trimmed_through);
        let mut v = self.base.sync_log(channel, after, limit)?;
        v.extend(
            l.appended
                .iter()
                .filter(|(seq, _)| *seq > after)
                .take(limit.saturating_sub(v.len()))
                .cloned(),
        );
        Ok(v)
    }

    fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
        let base = self.base.sync_log_last(channel)?;
        Ok(self
            .delta
            .logs
            .get(channel)
            .map_or(base, |l| base.max(l.last)))
    }
}

/// A machine's own not-yet-durable batches over a store.
///
/// Call order: [`Pending::push`] each batch as you emit it (a refusal here
/// means the store would refuse it too: don't emit it), read through
/// `Pending` (it implements [`MailRead`]), and [`Pending::complete`] the
/// batch when its completion arrives, durable or failed. Reads then come
/// from the store for everything already durable. `S` is any handle to the
/// store: `&Store`, `Rc<Store>`, `Arc<Store>`.
///
/// Staged message bytes cannot be checked from here (only the store sees
/// its staging area): `LinkMessage` is trusted, and the bytes of a linked,
/// not yet durable message are not readable through `Pending`.
pub struct Pending<S> {
    base: S,
    batches: Vec<(BatchId, Delta)>,
    delta: Delta,
}

impl<S: MailRead> Pending<S> {
    /// Nothing pending over `base`.
    pub fn new(base: S) -> Pending<S> {
        Pending {
            base,
            batches: Vec::new(),
            delta: Delta::default(),
        }
    }

    /// The store underneath.
    pub fn base(&self) -> &S {
        &self.base
    }

    /// Layer a batch the machine is about to emit. On a refusal nothing is
    /// layered.
    pub fn push(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let d = Delta::of_batch(&Overlay::new(&self.base, &self.delta), batch, None)?;
        self.delta.merge(d.clone());
        self.batches.push((batch.id, d));
        Ok(())
    }

    /// Remove a batch whose completion arrived (durable: the store now
    /// answers for it; failed: it never happened). Later batches stay
    /// layered. Returns whether the batch was pending.
    pub fn complete(&mut self, batch: BatchId) -> bool {
        let before = self.batches.len();
        self.batches.retain(|(id, _)| *id != batch);
        if self.batches.len() == before {
            return false;
        }
        let mut d = Delta::default();
        for (_, b) in &self.batches {
            d.merge(b.clone());
        }
        self.delta = d;
        true
    }

    /// The ids of the pending batches, oldest first.
    pub fn batch_ids(&self) -> Vec<BatchId> {
        self.batches.iter().map(|(id, _)| *id).collect()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn view(&self) -> Overlay<'_, S> {
        Overlay::new(&self.base, &self.delta)
    }
}

/// `base` for the validation of one batch: the mailbox lookups every
/// record's check repeats are answered once each. Sound because the base
/// does not change while a batch is validated (the batch's own changes
/// are in the delta, which is read first).
struct BatchReads<'a, S: ?Sized> {
    base: &'a S,
    by_uniqueid: std::cell::RefCell<BTreeMap<UniqueId, Option<Mailbox>>>,
    by_name: std::cell::RefCell<BTreeMap<MailboxName, Option<Mailbox>>>,
    by_guid: std::cell::RefCell<BTreeMap<MailboxGuid, Option<Mailbox>>>,
}

impl<'a, S: MailRead + ?Sized> BatchReads<'a, S> {
    fn new(base: &'a S) -> Self {
        BatchReads {
            base,
            by_uniqueid: Default::default(),
            by_name: Default::default(),
            by_guid: Default::default(),
        }
    }
}

/// Look `key` up in `memo`, else ask and remember the answer.
fn memo<K: Ord + Clone, V: Clone>(
    memo: &std::cell::RefCell<BTreeMap<K, V>>,
    key: &K,
    ask: impl FnOnce() -> Result<V, StoreError>,
) -> Result<V, StoreError> {
    if let Some(v) = memo.borrow().get(key) {
        return Ok(v.clone());
    }
    let v = ask()?;
    memo.borrow_mut().insert(key.clone(), v.clone());
    Ok(v)
}

/// Calls `$then!` with the [`MailRead`] methods other than the three
/// mailbox lookups, so each wrapper below lists them once.
macro_rules! with_other_reads {
    ($then:ident) => {
        $then! {
            mailboxes_of_user(user: &UserId) -> Vec<Mailbox>;
            mailboxes(after: Option<&MailboxName>, limit: usize) -> Vec<Mailbox>;
            users() -> Vec<UserId>;
            records(mailbox: &UniqueId, range: UidRange, limit: usize) -> Vec<Record>;
            sync_crcs(mailbox: &UniqueId) -> crate::model::SyncCrcs;
            message_size(guid: &Guid) -> Option<u64>;
            message_bytes(guid: &Guid, offset: u64, max_len: usize) -> Bytes;
            seen(user: &UserId, mailbox: &UniqueId) -> Option<Seen>;
            seen_of_user(user: &UserId) -> Vec<(UniqueId, Seen)>;
            subscriptions(user: &UserId) -> Vec<(MailboxName, Subscription)>;
            quota(root: &MailboxName) -> Option<QuotaRoot>;
            sieve_scripts(user: &UserId) -> Vec<SieveScript>;
            sieve_active(user: &UserId) -> Option<SieveName>;
            server_annotations() -> Annotations;
            tombstones_named(name: &MailboxName) -> Vec<Tombstone>;
            tombstones_of_user(user: &UserId) -> Vec<Tombstone>;
            sync_log(channel: &str, after: u64, limit: usize) -> Vec<(u64, SyncLogLine)>;
            sync_log_last(channel: &str) -> u64;
        }
    };
}

macro_rules! via_base {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl<S: MailRead + ?Sized> MailRead for BatchReads<'_, S> {
            fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
                memo(&self.by_name, name, || self.base.mailbox(name))
            }
            fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
                memo(&self.by_uniqueid, id, || self.base.mailbox_by_uniqueid(id))
            }
            fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
                memo(&self.by_guid, guid, || self.base.mailbox_by_guid(guid))
            }
            $(fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                self.base.$name($($arg),*)
            })*
        }
    };
}

with_other_reads!(via_base);
pub(crate) use with_other_reads;

macro_rules! via_view {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl<S: MailRead> MailRead for Pending<S> {
            fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
                self.view().mailbox(name)
            }
            fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
                self.view().mailbox_by_uniqueid(id)
            }
            fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
                self.view().mailbox_by_guid(guid)
            }
            $(fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                self.view().$name($($arg),*)
            })*
        }
    };
}

with_other_reads!(via_view);
