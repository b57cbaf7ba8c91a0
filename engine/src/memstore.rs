//! The in-memory store: the reference implementation of the storage
//! contract, for tests and the simulator.
//!
//! Two layers, as an OS keeps a file: **pending** (written, not yet
//! synced) and **durable**. [`MemStore::apply`] validates a batch against
//! durable + pending state and, if every mutation is accepted, adds it to
//! pending; [`MemStore::make_durable`] (or [`MemStore::sync_all`]) moves
//! pending batches, oldest first, into durable and returns their
//! completions with proofs; [`MemStore::crash`] drops everything pending,
//! and all staged bytes, exactly as a machine crash loses unsynced writes.
//! Readers ([`MailRead`]) see durable state only.
//!
//! Message bytes are staged per GUID in chunks, hashed while they stream,
//! and kept (verified) until a batch links them; each GUID is stored once
//! however many records, in however many mailboxes, name it.
//!
//! Deterministic: every map is ordered, handles are counters, and nothing
//! depends on time or randomness. It never does I/O.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, QuotaRoot, Record, Seen, SieveName,
    SieveScript, Subscription, SyncLogLine, Tombstone, UniqueId, UserId,
};
use crate::store::{
    BatchId, Change, Completion, Delta, DurableProof, MailRead, Overlay, Plan, StageHandle,
    StageHasher, StoreError, StoreWrite, UidRange, WriteBatch,
};

/// Limits of a [`MemStore`].
#[derive(Debug, Clone)]
pub struct MemStoreOptions {
    /// Largest message accepted for staging, in bytes.
    pub message_bytes_max: u64,
    /// Most bytes staged (in progress or verified, not yet linked) at once.
    pub staged_bytes_max: u64,
    /// Most batches pending (applied, not durable) at once.
    pub pending_batches_max: usize,
}

impl Default for MemStoreOptions {
    fn default() -> MemStoreOptions {
        MemStoreOptions {
            message_bytes_max: 64 << 20,
            staged_bytes_max: 256 << 20,
            pending_batches_max: 4096,
        }
    }
}

/// A materialized mail state: what a [`MemStore`] holds durably.
/// Comparable, so tests can check two stores converged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemState {
    mailboxes: BTreeMap<UniqueId, Mailbox>,
    names: BTreeMap<MailboxName, UniqueId>,
    records: BTreeMap<UniqueId, BTreeMap<crate::model::Uid, Record>>,
    messages: BTreeMap<Guid, Bytes>,
    seen: BTreeMap<(UserId, UniqueId), Seen>,
    subs: BTreeMap<(UserId, MailboxName), Subscription>,
    quotas: BTreeMap<MailboxName, QuotaRoot>,
    server_annotations: Annotations,
    sieve: BTreeMap<(UserId, SieveName), SieveScript>,
    sieve_active: BTreeMap<UserId, SieveName>,
    tombstones: BTreeMap<UniqueId, Tombstone>,
    logs: BTreeMap<String, (u64, BTreeMap<u64, SyncLogLine>)>,
}

impl MemState {
    /// Number of distinct message GUIDs stored.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Apply a plan built over this state: exactly the primitive
    /// [`Change`]s a durable store applies. `linked` holds the bytes of
    /// every staged message the plan links.
    fn apply_plan(&mut self, plan: &Plan, linked: &BTreeMap<Guid, Bytes>) {
        for c in plan.changes() {
            match c {
                Change::StoreInline(g, b) => {
                    self.messages.entry(*g).or_insert_with(|| b.clone());
                }
                Change::LinkStaged(g, _) => {
                    let b = linked
                        .get(g)
                        .expect("MemStore captured the bytes of every linked message");
                    self.messages.entry(*g).or_insert_with(|| b.clone());
                }
                Change::RemoveMailbox(id) => {
                    if let Some(old) = self.mailboxes.remove(id) {
                        if self.names.get(&old.name) == Some(id) {
                            self.names.remove(&old.name);
                        }
                    }
                }
                Change::PutMailbox(m) => {
                    let clash = self.names.insert(m.name.clone(), m.uniqueid.clone());
                    assert!(
                        clash.is_none() || clash.as_ref() == Some(&m.uniqueid),
                        "plan order frees a name before it is reused"
                    );
                    self.mailboxes.insert(m.uniqueid.clone(), m.clone());
                }
                Change::ClearRecords(id) => {
                    self.records.remove(id);
                }
                Change::PutRecord(id, r) => {
                    self.records
                        .entry(id.clone())
                        .or_default()
                        .insert(r.uid, r.clone());
                }
                Change::RemoveRecord(id, uid) => {
                    if let Some(recs) = self.records.get_mut(id) {
                        recs.remove(&uid);
                        if recs.is_empty() {
                            self.records.remove(id);
                        }
                    }
                }
                Change::ClearSeenOfUser(u) => self.seen.retain(|(x, _), _| x != u),
                Change::ClearSeenOfMailbox(m) => self.seen.retain(|(_, x), _| x != m),
                Change::PutSeen(u, m, s) => {
                    self.seen.insert((u.clone(), m.clone()), s.clone());
                }
                Change::RemoveSeen(u, m) => {
                    self.seen.remove(&(u.clone(), m.clone()));
                }
                Change::ClearSubscriptionsOfUser(u) => self.subs.retain(|(x, _), _| x != u),
                Change::PutSubscription(u, n, s) => {
                    self.subs.insert((u.clone(), n.clone()), *s);
                }
                Change::PutQuota(r, q) => {
                    self.quotas.insert(r.clone(), q.clone());
                }
                Change::RemoveQuota(r) => {
                    self.quotas.remove(r);
                }
                Change::SetServerAnnotations(a) => self.server_annotations = a.clone(),
                Change::ClearSieveOfUser(u) => self.sieve.retain(|(x, _), _| x != u),
                Change::PutSieve(u, sc) => {
                    self.sieve.insert((u.clone(), sc.name.clone()), sc.clone());
                }
                Change::RemoveSieve(u, n) => {
                    self.sieve.remove(&(u.clone(), n.clone()));
                }
                Change::SetSieveActive(u, Some(n)) => {
                    self.sieve_active.insert(u.clone(), n.clone());
                }
                Change::SetSieveActive(u, None) => {
                    self.sieve_active.remove(u);
                }
                Change::PutTombstone(t) => {
                    self.tombstones.insert(t.uniqueid.clone(), t.clone());
                }
                Change::RemoveTombstone(id) => {
                    self.tombstones.remove(id);
                }
                Change::AppendSyncLog(ch, seq, line) => {
                    let (last, lines) = self.logs.entry(ch.to_string()).or_default();
                    assert!(seq > *last, "sequence numbers never repeat");
                    lines.insert(seq, line.clone());
                    *last = seq;
                }
                Change::SyncLogLast(ch, seq) => {
                    let (last, _) = self.logs.entry(ch.to_string()).or_default();
                    *last = (*last).max(seq);
                }
                Change::TrimSyncLog(ch, through) => {
                    if let Some((_, lines)) = self.logs.get_mut(ch) {
                        lines.retain(|seq, _| *seq > through);
                    }
                }
            }
        }
    }
}

impl MailRead for MemState {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        Ok(self
            .names
            .get(name)
            .and_then(|id| self.mailboxes.get(id))
            .cloned())
    }

    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.mailboxes.get(id).cloned())
    }

    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        if guid.is_zero() {
            return Ok(None);
        }
        // Linear: MemStore serves tests and the simulator, not millions.
        Ok(self.mailboxes.values().find(|m| m.guid == *guid).cloned())
    }

    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        Ok(self
            .names
            .values()
            .filter_map(|id| self.mailboxes.get(id))
            .filter(|m| m.owner.as_ref() == Some(user))
            .cloned()
            .collect())
    }

    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        let iter: Box<dyn Iterator<Item = (&MailboxName, &UniqueId)>> = match after {
            Some(a) => Box::new(self.names.range::<MailboxName, _>((
                std::ops::Bound::Excluded(a),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(self.names.iter()),
        };
        Ok(iter
            .take(limit)
            .filter_map(|(_, id)| self.mailboxes.get(id).cloned())
            .collect())
    }

    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        let mut set = std::collections::BTreeSet::new();
        set.extend(self.mailboxes.values().filter_map(|m| m.owner.clone()));
        set.extend(self.seen.keys().map(|(u, _)| u.clone()));
        set.extend(self.subs.keys().map(|(u, _)| u.clone()));
        set.extend(self.sieve.keys().map(|(u, _)| u.clone()));
        Ok(set.into_iter().collect())
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
            .map(|m| {
                m.range(range.first..=range.last)
                    .take(limit)
                    .map(|(_, r)| r.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        Ok(self.messages.get(guid).map(|b| b.len() as u64))
    }

    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        let b = self
            .messages
            .get(guid)
            .ok_or(StoreError::MissingMessage(*guid))?;
        let start = offset.min(b.len() as u64) as usize;
        let end = start.saturating_add(max_len).min(b.len());
        Ok(b.slice(start..end))
    }

    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        Ok(self.seen.get(&(user.clone(), mailbox.clone())).cloned())
    }

    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        Ok(self
            .seen
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, m), s)| (m.clone(), s.clone()))
            .collect())
    }

    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        Ok(self
            .subs
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, n), s)| (n.clone(), *s))
            .collect())
    }

    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        Ok(self.quotas.get(root).cloned())
    }

    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        Ok(self
            .sieve
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, s)| s.clone())
            .collect())
    }

    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        Ok(self.sieve_active.get(user).cloned())
    }

    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        Ok(self.server_annotations.clone())
    }

    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        let mut v: Vec<Tombstone> = self
            .tombstones
            .values()
            .filter(|t| t.name == *name)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.deleted_at, &a.uniqueid).cmp(&(b.deleted_at, &b.uniqueid)));
        Ok(v)
    }

    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        Ok(self
            .tombstones
            .values()
            .filter(|t| t.owner.as_ref() == Some(user))
            .cloned()
            .collect())
    }

    fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        Ok(self
            .logs
            .get(channel)
            .map(|(_, lines)| {
                lines
                    .range(after.saturating_add(1)..)
                    .take(limit)
                    .map(|(s, l)| (*s, l.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
        Ok(self.logs.get(channel).map_or(0, |(last, _)| *last))
    }
}

struct PendingBatch {
    id: BatchId,
    plan: Plan,
    linked: BTreeMap<Guid, Bytes>,
}

struct Staging {
    hasher: StageHasher,
    bytes: Vec<u8>,
}

/// The in-memory two-layer store; see the module doc.
pub struct MemStore {
    options: MemStoreOptions,
    durable: MemState,
    pending: Vec<PendingBatch>,
    /// All pending deltas composed, for validating the next batch.
    pending_delta: Delta,
    staging: BTreeMap<StageHandle, Staging>,
    staged: BTreeMap<Guid, Bytes>,
    next_handle: u64,
}

impl Default for MemStore {
    fn default() -> MemStore {
        MemStore::new(MemStoreOptions::default())
    }
}

impl MemStore {
    /// An empty store.
    pub fn new(options: MemStoreOptions) -> MemStore {
        MemStore {
            options,
            durable: MemState::default(),
            pending: Vec::new(),
            pending_delta: Delta::default(),
            staging: BTreeMap::new(),
            staged: BTreeMap::new(),
            next_handle: 1,
        }
    }

    /// The durable state.
    pub fn durable(&self) -> &MemState {
        &self.durable
    }

    /// Durable plus pending state, as the next batch will be validated
    /// against (what the store will hold if nothing crashes).
    pub fn with_pending(&self) -> impl MailRead + '_ {
        Overlay::new(&self.durable, &self.pending_delta)
    }

    /// Ids of the pending batches, oldest first.
    pub fn pending_ids(&self) -> Vec<BatchId> {
        self.pending.iter().map(|p| p.id).collect()
    }

    fn staged_bytes(&self) -> u64 {
        self.staged.values().map(|b| b.len() as u64).sum::<u64>()
            + self
                .staging
                .values()
                .map(|s| s.bytes.len() as u64)
                .sum::<u64>()
    }

    /// Validate `batch` against durable + pending state and add it to
    /// pending. On `Err` nothing changed (all or nothing). Staged bytes the
    /// batch links move with it, so a crash loses them together.
    pub fn apply(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        if self.pending.len() >= self.options.pending_batches_max {
            return Err(StoreError::LimitExceeded {
                what: "pending batches",
                limit: self.options.pending_batches_max as u64,
            });
        }
        let staged = &self.staged;
        let lookup = |g: &Guid| staged.get(g).map(|b| b.len() as u64);
        let plan = Plan::build(
            &Overlay::new(&self.durable, &self.pending_delta),
            batch,
            &lookup,
        )?;
        let guids: Vec<Guid> = plan.linked().map(|(g, _)| *g).collect();
        let mut linked = BTreeMap::new();
        for guid in guids {
            let b = self
                .staged
                .remove(&guid)
                .expect("a plan only links staged GUIDs");
            linked.insert(guid, b);
        }
        self.pending_delta.merge(plan.delta.clone());
        self.pending.push(PendingBatch {
            id: batch.id,
            plan,
            linked,
        });
        Ok(())
    }

    /// Make pending batches durable, oldest first, up to and including
    /// `batch` (durability is a prefix, as with fsync). Returns their
    /// completions; empty if `batch` is not pending.
    pub fn make_durable(&mut self, batch: BatchId) -> Vec<Completion> {
        match self.pending.iter().position(|p| p.id == batch) {
            Some(i) => self.make_durable_count(i + 1),
            None => Vec::new(),
        }
    }

    /// Make every pending batch durable.
    pub fn sync_all(&mut self) -> Vec<Completion> {
        self.make_durable_count(self.pending.len())
    }

    fn make_durable_count(&mut self, n: usize) -> Vec<Completion> {
        let done: Vec<PendingBatch> = self.pending.drain(..n).collect();
        let mut out = Vec::with_capacity(done.len());
        for p in done {
            self.durable.apply_plan(&p.plan, &p.linked);
            out.push(Completion::Durable {
                batch_id: p.id,
                proof: DurableProof::attest(p.id),
            });
        }
        self.rebuild_pending_delta();
        out
    }

    fn rebuild_pending_delta(&mut self) {
        let mut d = Delta::default();
        for p in &self.pending {
            d.merge(p.plan.delta.clone());
        }
        self.pending_delta = d;
    }

    /// Simulated crash: every pending batch and every staged byte is lost.
    /// Returns the ids of the lost batches (no completion is delivered for
    /// them: their machines died too).
    pub fn crash(&mut self) -> Vec<BatchId> {
        let lost = self.pending_ids();
        self.pending.clear();
        self.pending_delta = Delta::default();
        self.staging.clear();
        self.staged.clear();
        lost
    }

    /// Simulated fsync failure: every pending batch is dropped and reported
    /// `Failed` with an I/O error. Staged bytes survive.
    pub fn fail_pending(&mut self, why: &str) -> Vec<Completion> {
        let failed: Vec<PendingBatch> = std::mem::take(&mut self.pending);
        self.pending_delta = Delta::default();
        failed
            .into_iter()
            .map(|p| Completion::Failed {
                batch_id: p.id,
                error: StoreError::Io(why.to_string()),
            })
            .collect()
    }

    /// Drop verified staged bytes no batch linked (csync RESTART).
    pub fn clear_staged(&mut self) {
        self.staged.clear();
    }

    /// Whether verified bytes for `guid` are staged (not yet linked).
    pub fn is_staged(&self, guid: &Guid) -> bool {
        self.staged.contains_key(guid)
    }
}

macro_rules! durable_reads {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl MailRead for MemStore {
            fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
                self.durable.mailbox(name)
            }
            fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
                self.durable.mailbox_by_uniqueid(id)
            }
            fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
                self.durable.mailbox_by_guid(guid)
            }
            $(fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                self.durable.$name($($arg),*)
            })*
        }
    };
}

crate::store::with_other_reads!(durable_reads);

impl StoreWrite for MemStore {
    fn stage_begin(&mut self, guid: Guid, size: u64) -> Result<StageHandle, StoreError> {
        let hasher = StageHasher::new(guid, size, self.options.message_bytes_max)?;
        if self.staged_bytes().saturating_add(size) > self.options.staged_bytes_max {
            return Err(StoreError::LimitExceeded {
                what: "staged bytes",
                limit: self.options.staged_bytes_max,
            });
        }
        let h = StageHandle(self.next_handle);
        self.next_handle += 1;
        self.staging.insert(
            h,
            Staging {
                hasher,
                bytes: Vec::new(),
            },
        );
        Ok(h)
    }

    fn stage_chunk(&mut self, handle: StageHandle, chunk: &[u8]) -> Result<(), StoreError> {
        let s = self
            .staging
            .get_mut(&handle)
            .ok_or(StoreError::UnknownStage(handle))?;
        if let Err(e) = s.hasher.update(chunk) {
            self.staging.remove(&handle);
            return Err(e);
        }
        s.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn stage_end(&mut self, handle: StageHandle) -> Result<(), StoreError> {
        let s = self
            .staging
            .remove(&handle)
            .ok_or(StoreError::UnknownStage(handle))?;
        let guid = s.hasher.guid();
        s.hasher.finish()?;
        self.staged.insert(guid, Bytes::from(s.bytes));
        Ok(())
    }

    fn stage_abort(&mut self, handle: StageHandle) {
        self.staging.remove(&handle);
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.apply(batch)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.sync_all();
        Ok(())
    }
}
