//! One user's backup as it was at a point in time: the journal's
//! operations replayed in order up to that time.
//!
//! A [`Snapshot`] is a read-only [`MailRead`] store — message bytes come
//! from the [`Pack`] — so the replication client machine
//! (`engine::csync_client`) can send it to a real Cyrus server exactly as
//! it sends a live store, and a Maildir restore can walk it.
//!
//! What it never does: write anything, or invent state: a mailbox,
//! record or script is there only if an operation at or before the time
//! put it there and none after (up to the time) took it away.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use engine::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, QuotaRoot, Record, Seen, SieveName,
    SieveScript, Subscription, SyncLogLine, Tombstone, Uid, UniqueId, UserId,
};
use engine::store::{MailRead, StoreError, UidRange};

use super::ops::Op;
use super::Pack;

/// A mailbox deleted at some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// When (Unix seconds).
    pub at: i64,
    /// Its UNIQUEID.
    pub uniqueid: UniqueId,
    /// Its name then.
    pub name: MailboxName,
}

/// A user's backed-up state at one time.
#[derive(Default)]
pub struct Snapshot {
    /// Whose (`None`: the shared mailboxes).
    pub user: Option<UserId>,
    /// The mailboxes, by uniqueid.
    pub mailboxes: BTreeMap<UniqueId, Mailbox>,
    /// Their records, by UID.
    pub records: BTreeMap<UniqueId, BTreeMap<Uid, Record>>,
    /// The user's seen state, by mailbox uniqueid.
    pub seen: BTreeMap<UniqueId, Seen>,
    /// Subscriptions (unsubscribes kept as `subscribed: false`).
    pub subs: BTreeMap<MailboxName, Subscription>,
    /// Quota roots.
    pub quotas: BTreeMap<MailboxName, QuotaRoot>,
    /// Sieve scripts.
    pub sieve: BTreeMap<SieveName, SieveScript>,
    /// The active script.
    pub sieve_active: Option<SieveName>,
    /// Mailboxes deleted up to the time (history, not state).
    pub deleted: Vec<Deleted>,
    pack: Option<Pack>,
    /// Size of every GUID a record ever named.
    sizes: BTreeMap<Guid, u64>,
    /// The last message inflated (reads come in pieces, in order).
    cache: Mutex<Option<(Guid, Bytes)>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("user", &self.user)
            .field("mailboxes", &self.mailboxes.len())
            .field("seen", &self.seen.len())
            .field("subs", &self.subs.len())
            .field("sieve", &self.sieve.len())
            .finish()
    }
}

/// Most bytes of one message a snapshot inflates for a reader.
pub const MESSAGE_BYTES_MAX: u64 = 4 << 30;

impl Snapshot {
    /// An empty snapshot of `user`, reading bytes from `pack`.
    pub fn new(user: Option<UserId>, pack: Option<Pack>) -> Snapshot {
        Snapshot {
            user,
            pack,
            ..Snapshot::default()
        }
    }

    /// Applies one operation recorded at `at`.
    pub fn apply(&mut self, at: i64, op: &Op) {
        match op {
            Op::Mailbox(mb) => {
                // Keyed by uniqueid, so a rename replaces. Two connections
                // may append chunks out of commit order: a header never
                // replaces one with a higher HIGHESTMODSEQ.
                match self.mailboxes.get(&mb.uniqueid) {
                    Some(have) if have.highestmodseq > mb.highestmodseq => {}
                    _ => {
                        self.mailboxes.insert(mb.uniqueid.clone(), (**mb).clone());
                    }
                }
            }
            Op::Records { mailbox, records } => {
                if !self.mailboxes.contains_key(mailbox) {
                    return;
                }
                let recs = self.records.entry(mailbox.clone()).or_default();
                for r in records {
                    self.sizes.insert(r.guid, r.size);
                    // Same reason: an older state of a record (lower
                    // MODSEQ) never replaces a newer one.
                    match recs.get(&r.uid) {
                        Some(have) if have.modseq > r.modseq => {}
                        _ => {
                            recs.insert(r.uid, r.clone());
                        }
                    }
                }
            }
            Op::Purge { mailbox, uids } => {
                if let Some(recs) = self.records.get_mut(mailbox) {
                    for u in uids {
                        recs.remove(u);
                    }
                }
            }
            Op::Unmailbox { mailbox, name } => {
                self.mailboxes.remove(mailbox);
                self.records.remove(mailbox);
                self.deleted.push(Deleted {
                    at,
                    uniqueid: mailbox.clone(),
                    name: name.clone(),
                });
            }
            Op::Seen { mailbox, seen } => {
                self.seen.insert(mailbox.clone(), seen.clone());
            }
            Op::Unseen { mailbox } => {
                self.seen.remove(mailbox);
            }
            Op::Sub { name, sub } => {
                self.subs.insert(name.clone(), *sub);
            }
            Op::Quota { root, quota } => {
                self.quotas.insert(root.clone(), quota.clone());
            }
            Op::Unquota { root } => {
                self.quotas.remove(root);
            }
            Op::Sieve(s) => {
                self.sieve.insert(s.name.clone(), s.clone());
            }
            Op::Unsieve(n) => {
                self.sieve.remove(n);
                if self.sieve_active.as_ref() == Some(n) {
                    self.sieve_active = None;
                }
            }
            Op::Activate(n) => self.sieve_active = n.clone(),
            Op::Unuser => {
                for (id, mb) in std::mem::take(&mut self.mailboxes) {
                    self.deleted.push(Deleted {
                        at,
                        uniqueid: id,
                        name: mb.name,
                    });
                }
                self.records.clear();
                self.seen.clear();
                self.subs.clear();
                self.quotas.clear();
                self.sieve.clear();
                self.sieve_active = None;
            }
        }
    }

    /// Every live record's GUID (what a restore needs).
    pub fn guids(&self) -> Vec<(Guid, u64)> {
        let mut v: Vec<(Guid, u64)> = self
            .records
            .values()
            .flat_map(|r| r.values())
            .map(|r| (r.guid, r.size))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The state as operations that rebuild it from nothing (compaction's
    /// base chunk).
    pub fn to_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (id, mb) in &self.mailboxes {
            ops.push(Op::Mailbox(Box::new(mb.clone())));
            if let Some(recs) = self.records.get(id) {
                let all: Vec<Record> = recs.values().cloned().collect();
                for part in all.chunks(super::ops::RECORDS_PER_OP) {
                    ops.push(Op::Records {
                        mailbox: id.clone(),
                        records: part.to_vec(),
                    });
                }
            }
        }
        for (m, s) in &self.seen {
            ops.push(Op::Seen {
                mailbox: m.clone(),
                seen: s.clone(),
            });
        }
        for (n, s) in &self.subs {
            ops.push(Op::Sub {
                name: n.clone(),
                sub: *s,
            });
        }
        for (r, q) in &self.quotas {
            ops.push(Op::Quota {
                root: r.clone(),
                quota: q.clone(),
            });
        }
        for s in self.sieve.values() {
            ops.push(Op::Sieve(s.clone()));
        }
        if self.sieve_active.is_some() {
            ops.push(Op::Activate(self.sieve_active.clone()));
        }
        ops
    }

    /// Keeps only the mailboxes `keep` says yes to (and their seen state).
    pub fn retain_mailboxes(&mut self, mut keep: impl FnMut(&Mailbox) -> bool) {
        self.mailboxes.retain(|_, mb| keep(mb));
        let ids = &self.mailboxes;
        self.records.retain(|id, _| ids.contains_key(id));
        self.seen.retain(|id, _| ids.contains_key(id));
    }

    /// Makes this `user`'s backup restorable as `to`'s (`restore --as`):
    /// every mailbox under the old user's INBOX is renamed under the new
    /// one's, gets a new UNIQUEID and dsync GUID (derived from the old one
    /// and the new user, so running the same restore twice names the same
    /// mailboxes, and never the originals, which may still exist on the
    /// target), and so do the seen state, subscriptions, quota roots and
    /// ACL entries naming the old user. Sieve scripts move as they are.
    pub fn rename_user(&mut self, to: &UserId) -> Result<(), String> {
        use engine::csync::wire::inbox_of;
        let from = self.user.clone().ok_or("shared mailboxes have no user")?;
        let old = inbox_of(&from).ok_or_else(|| format!("{from} has no INBOX name"))?;
        let new = inbox_of(to).ok_or_else(|| format!("{to} has no INBOX name"))?;
        let rename = |n: &MailboxName| -> Result<MailboxName, String> {
            let b = n.as_bytes();
            let o = old.as_bytes();
            if b == o || (b.starts_with(o) && b.get(o.len()) == Some(&b'.')) {
                let mut v = new.as_bytes().to_vec();
                v.extend_from_slice(&b[o.len()..]);
                MailboxName::new(v).map_err(|e| format!("{n} as {to}'s: {e}"))
            } else {
                Ok(n.clone())
            }
        };
        let new_id = |id: &UniqueId| -> (UniqueId, MailboxGuid) {
            use sha1::{Digest, Sha1};
            let mut h = Sha1::new();
            h.update(b"corvid restore --as\0");
            h.update(id.as_bytes());
            h.update(b"\0");
            h.update(to.as_bytes());
            let d = h.finalize();
            let mut g = [0u8; 16];
            g.copy_from_slice(&d[..16]);
            let g = MailboxGuid::from_bytes(g);
            (UniqueId::from_mailbox_guid(&g), g)
        };
        let mut ids = BTreeMap::new();
        let mut mailboxes = BTreeMap::new();
        for (id, mut mb) in std::mem::take(&mut self.mailboxes) {
            let (nid, g) = new_id(&id);
            mb.uniqueid = nid.clone();
            mb.guid = g;
            mb.name = rename(&mb.name)?;
            if mb.owner.as_ref() == Some(&from) {
                mb.owner = Some(to.clone());
            }
            if let Some(q) = &mb.quotaroot {
                mb.quotaroot = Some(rename(q)?);
            }
            for e in &mut mb.acl.0 {
                if e.identifier == from.as_bytes() {
                    e.identifier = to.as_bytes().to_vec();
                }
            }
            ids.insert(id, nid.clone());
            mailboxes.insert(nid, mb);
        }
        self.mailboxes = mailboxes;
        self.records = std::mem::take(&mut self.records)
            .into_iter()
            .filter_map(|(id, r)| ids.get(&id).map(|n| (n.clone(), r)))
            .collect();
        // Seen state of another user's mailbox stays on that mailbox.
        self.seen = std::mem::take(&mut self.seen)
            .into_iter()
            .map(|(id, s)| (ids.get(&id).cloned().unwrap_or(id), s))
            .collect();
        self.subs = std::mem::take(&mut self.subs)
            .into_iter()
            .map(|(n, s)| rename(&n).map(|n| (n, s)))
            .collect::<Result<_, _>>()?;
        self.quotas = std::mem::take(&mut self.quotas)
            .into_iter()
            .map(|(n, q)| rename(&n).map(|n| (n, q)))
            .collect::<Result<_, _>>()?;
        for d in &mut self.deleted {
            if let Some(n) = ids.get(&d.uniqueid) {
                d.uniqueid = n.clone();
            }
            d.name = rename(&d.name)?;
        }
        self.user = Some(to.clone());
        Ok(())
    }

    fn pack(&self) -> Result<&Pack, StoreError> {
        self.pack
            .as_ref()
            .ok_or_else(|| StoreError::Io("snapshot has no message pack".into()))
    }

    fn size_of(&self, guid: &Guid) -> Option<u64> {
        self.sizes.get(guid).copied()
    }
}

impl MailRead for Snapshot {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailboxes.values().find(|m| &m.name == name).cloned())
    }
    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailboxes.get(id).cloned())
    }
    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailboxes.values().find(|m| &m.guid == guid).cloned())
    }
    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        let mut v: Vec<Mailbox> = self
            .mailboxes
            .values()
            .filter(|m| m.owner.as_ref() == Some(user))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }
    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        let mut v: Vec<Mailbox> = self
            .mailboxes
            .values()
            .filter(|m| after.is_none_or(|a| &m.name > a))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.truncate(limit);
        Ok(v)
    }
    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        Ok(self.user.iter().cloned().collect())
    }
    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .records
            .get(mailbox)
            .map(|r| {
                r.range(range.first..=range.last)
                    .take(limit)
                    .map(|(_, r)| r.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        match &self.pack {
            Some(p) if p.has(guid) => Ok(self.size_of(guid)),
            _ => Ok(None),
        }
    }
    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let hit = matches!(&*cache, Some((g, _)) if g == guid);
        if !hit {
            let bytes = self
                .pack()?
                .read(guid, MESSAGE_BYTES_MAX)
                .map_err(|e| match e {
                    super::PackError::Missing(_) => StoreError::MissingMessage(*guid),
                    e => StoreError::Io(e.to_string()),
                })?;
            *cache = Some((*guid, Bytes::from(bytes)));
        }
        let (_, b) = cache.as_ref().expect("filled above");
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(max_len).min(b.len());
        Ok(b.slice(start..end))
    }
    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        if self.user.as_ref() != Some(user) {
            return Ok(None);
        }
        Ok(self.seen.get(mailbox).cloned())
    }
    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        if self.user.as_ref() != Some(user) {
            return Ok(Vec::new());
        }
        Ok(self
            .seen
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        if self.user.as_ref() != Some(user) {
            return Ok(Vec::new());
        }
        Ok(self.subs.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }
    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        Ok(self.quotas.get(root).cloned())
    }
    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        if self.user.as_ref() != Some(user) {
            return Ok(Vec::new());
        }
        Ok(self.sieve.values().cloned().collect())
    }
    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        if self.user.as_ref() != Some(user) {
            return Ok(None);
        }
        Ok(self.sieve_active.clone())
    }
    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        Ok(Annotations::new())
    }
    // A restore never deletes on the target: no tombstones.
    fn tombstones_named(&self, _name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        Ok(Vec::new())
    }
    fn tombstones_of_user(&self, _user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        Ok(Vec::new())
    }
    fn sync_log(
        &self,
        _channel: &str,
        _after: u64,
        _limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        Ok(Vec::new())
    }
    fn sync_log_last(&self, _channel: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
}
