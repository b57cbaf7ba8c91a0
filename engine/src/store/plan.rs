//! A validated batch as a list of primitive row changes, for durable
//! stores.
//!
//! [`Plan::build`] runs the one implementation of [`Mutation`] semantics
//! (validation, rename history, tombstones, user deletion, …) against a
//! store's current state and hands back primitive [`Change`]s in an order
//! that is safe to apply inside one transaction: removals of a mailbox's
//! old row before the new rows (so name swaps never trip a uniqueness
//! constraint), mailboxes and message bytes before the records that refer
//! to them, "clear" before the puts that follow it. A store that applies
//! exactly these changes behaves exactly as `MemStore` does, which applies
//! them too.
//!
//! [`Mutation`]: super::Mutation

use bytes::Bytes;

use super::overlay::{Delta, MsgDelta};
use super::{MailRead, Overlay, StoreError, WriteBatch};
use crate::model::{
    Annotations, Guid, Mailbox, MailboxName, QuotaRoot, Record, Seen, SieveName, SieveScript,
    Subscription, SyncLogLine, Tombstone, Uid, UniqueId, UserId,
};

/// One primitive change of a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Change<'a> {
    /// Store these bytes under this GUID unless it is already stored.
    StoreInline(&'a Guid, &'a Bytes),
    /// Move the verified staged bytes of this GUID (this many bytes) into
    /// the message store, unless it is already stored.
    LinkStaged(&'a Guid, u64),
    /// Forget the current row of this mailbox (if any), but not its
    /// records: a `PutMailbox` for the same uniqueid may follow.
    RemoveMailbox(&'a UniqueId),
    /// Insert this mailbox row (its uniqueid, name and GUID are free now).
    PutMailbox(&'a Mailbox),
    /// Delete every record of this mailbox.
    ClearRecords(&'a UniqueId),
    /// Insert or replace a record (keyed by mailbox and UID).
    PutRecord(&'a UniqueId, &'a Record),
    /// Delete one record if present.
    RemoveRecord(&'a UniqueId, Uid),
    /// Delete all seen state of a user.
    ClearSeenOfUser(&'a UserId),
    /// Delete every user's seen state for a mailbox.
    ClearSeenOfMailbox(&'a UniqueId),
    /// Insert or replace one seen state.
    PutSeen(&'a UserId, &'a UniqueId, &'a Seen),
    /// Delete one seen state if present.
    RemoveSeen(&'a UserId, &'a UniqueId),
    /// Delete all subscriptions of a user.
    ClearSubscriptionsOfUser(&'a UserId),
    /// Insert or replace one subscription state.
    PutSubscription(&'a UserId, &'a MailboxName, &'a Subscription),
    /// Insert or replace a quota root.
    PutQuota(&'a MailboxName, &'a QuotaRoot),
    /// Delete a quota root if present.
    RemoveQuota(&'a MailboxName),
    /// Replace the whole set of server annotations.
    SetServerAnnotations(&'a Annotations),
    /// Delete all Sieve scripts of a user.
    ClearSieveOfUser(&'a UserId),
    /// Insert or replace a Sieve script.
    PutSieve(&'a UserId, &'a SieveScript),
    /// Delete a Sieve script if present.
    RemoveSieve(&'a UserId, &'a SieveName),
    /// Set or clear the user's active script.
    SetSieveActive(&'a UserId, Option<&'a SieveName>),
    /// Insert or replace a tombstone (keyed by uniqueid).
    PutTombstone(&'a Tombstone),
    /// Delete a tombstone if present.
    RemoveTombstone(&'a UniqueId),
    /// Delete a channel's existing lines with sequence numbers ≤ this.
    TrimSyncLog(&'a str, u64),
    /// Insert a line with this sequence number (higher than any the
    /// channel had).
    AppendSyncLog(&'a str, u64, &'a SyncLogLine),
    /// The channel's last sequence number ever used is now this (it
    /// counts lines appended and trimmed again within the batch, so
    /// numbers never repeat).
    SyncLogLast(&'a str, u64),
}

/// A validated batch; see the module doc.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) delta: Delta,
}

impl Plan {
    /// Validate `batch` against `base` (the store's current state,
    /// including batches written but not yet synced). `staged` answers the
    /// size of verified staged bytes for a GUID (`None`: not staged). On
    /// `Err` the batch must be refused whole.
    pub fn build<S: MailRead + ?Sized>(
        base: &S,
        batch: &WriteBatch,
        staged: &dyn Fn(&Guid) -> Option<u64>,
    ) -> Result<Plan, StoreError> {
        Ok(Plan {
            delta: Delta::of_batch(base, batch, Some(staged))?,
        })
    }

    /// The state after the plan, for reads before it is applied.
    pub fn overlay<'a, S: MailRead + ?Sized>(&'a self, base: &'a S) -> Overlay<'a, S> {
        Overlay::new(base, &self.delta)
    }

    /// The GUIDs whose staged bytes the plan links.
    pub fn linked(&self) -> impl Iterator<Item = (&Guid, u64)> {
        self.delta.messages.iter().filter_map(|(g, m)| match m {
            MsgDelta::Linked { size } => Some((g, *size)),
            MsgDelta::Inline(_) => None,
        })
    }

    /// The primitive changes, in the order to apply them.
    pub fn changes(&self) -> Vec<Change<'_>> {
        let d = &self.delta;
        let mut out = Vec::new();
        for (g, m) in &d.messages {
            out.push(match m {
                MsgDelta::Inline(b) => Change::StoreInline(g, b),
                MsgDelta::Linked { size } => Change::LinkStaged(g, *size),
            });
        }
        out.extend(d.mailboxes.keys().map(Change::RemoveMailbox));
        out.extend(d.mailboxes.values().flatten().map(Change::PutMailbox));
        for (id, rd) in &d.records {
            if rd.cleared {
                out.push(Change::ClearRecords(id));
            }
            for (uid, r) in &rd.puts {
                out.push(match r {
                    Some(r) => Change::PutRecord(id, r),
                    None => Change::RemoveRecord(id, *uid),
                });
            }
        }
        out.extend(d.seen_cleared_users.iter().map(Change::ClearSeenOfUser));
        out.extend(
            d.seen_cleared_mailboxes
                .iter()
                .map(Change::ClearSeenOfMailbox),
        );
        for ((u, m), s) in &d.seen {
            out.push(match s {
                Some(s) => Change::PutSeen(u, m, s),
                None => Change::RemoveSeen(u, m),
            });
        }
        out.extend(
            d.subs_cleared_users
                .iter()
                .map(Change::ClearSubscriptionsOfUser),
        );
        for ((u, n), s) in &d.subs {
            out.push(Change::PutSubscription(u, n, s));
        }
        for (root, q) in &d.quotas {
            out.push(match q {
                Some(q) => Change::PutQuota(root, q),
                None => Change::RemoveQuota(root),
            });
        }
        if let Some(a) = &d.server_annotations {
            out.push(Change::SetServerAnnotations(a));
        }
        out.extend(d.sieve_cleared_users.iter().map(Change::ClearSieveOfUser));
        for ((u, n), s) in &d.sieve {
            out.push(match s {
                Some(s) => Change::PutSieve(u, s),
                None => Change::RemoveSieve(u, n),
            });
        }
        for (u, a) in &d.sieve_active {
            out.push(Change::SetSieveActive(u, a.as_ref()));
        }
        for (id, t) in &d.tombstones {
            out.push(match t {
                Some(t) => Change::PutTombstone(t),
                None => Change::RemoveTombstone(id),
            });
        }
        for (ch, l) in &d.logs {
            if l.trimmed_through > 0 {
                out.push(Change::TrimSyncLog(ch, l.trimmed_through));
            }
            out.extend(
                l.appended
                    .iter()
                    .map(|(seq, line)| Change::AppendSyncLog(ch, *seq, line)),
            );
            if l.last > 0 {
                out.push(Change::SyncLogLast(ch, l.last));
            }
        }
        out
    }
}
