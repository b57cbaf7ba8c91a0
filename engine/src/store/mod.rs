//! The storage contract: reads through a synchronous trait, writes as
//! effects that come back as completions, durability as a type.
//!
//! Shape (after raft-rs `Storage` and firezone's relay commands):
//!
//! * [`MailRead`] answers questions about **durable** state only. A store
//!   never shows a batch to readers before it is durable; a machine sees
//!   its own not-yet-durable writes through [`Pending`], which layers its
//!   in-flight batches over the store.
//! * Writes leave a machine as [`StoreEffect`]s: message bytes are staged
//!   in chunks under their GUID (hashed while streaming, refused if the
//!   SHA-1 differs, invisible until a batch links them), and everything
//!   else travels in a [`WriteBatch`] of typed [`Mutation`]s, applied whole
//!   or not at all.
//! * The driver performs effects against a [`StoreWrite`] with
//!   [`EffectRunner`] (or [`commit`] / [`commit_group`]) and hands the
//!   machine a [`Completion`]. [`Completion::Durable`] carries a
//!   [`DurableProof`]: the only way to get one is a successful
//!   [`StoreWrite::sync`] run by those functions (or by
//!   [`MemStore`](crate::memstore::MemStore)). A reply that tells a peer
//!   "stored" is built from a proof, so it cannot be sent early.
//!
//! This module never does I/O itself; the store behind the trait does.

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;
mod batch;
mod completion;
pub mod conformance;
mod overlay;
pub(crate) use overlay::with_other_reads;
mod plan;
mod stage;
pub mod synclog;

pub use batch::{BatchId, Mutation, WriteBatch};
pub use completion::{
    commit, commit_group, Completion, DurableProof, EffectRunner, StageId, StoreEffect,
};
pub(crate) use overlay::Delta;
pub use overlay::{Overlay, Pending};
pub use plan::{Change, Plan};
pub use stage::{StageHandle, StageHasher};

use bytes::Bytes;

use crate::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, QuotaRoot, Record, Seen, SieveName,
    SieveScript, Subscription, SyncCrcs, SyncLogLine, Tombstone, Uid, UniqueId, UserId,
};

/// Why a store operation failed, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Caller's misuse (or a peer's request the machine passed on): the
    /// mailbox is not in the store.
    #[error("no mailbox with uniqueid {0}")]
    UnknownMailbox(UniqueId),
    /// Caller's misuse: the name belongs to another mailbox.
    #[error("mailbox name {name} is held by {holder}")]
    NameTaken {
        /// The name.
        name: MailboxName,
        /// The mailbox holding it.
        holder: UniqueId,
    },
    /// Caller's misuse: `PutMailbox` with a new name (use `RenameMailbox`).
    #[error("PutMailbox may not change the name of {0}; use RenameMailbox")]
    NameChanged(UniqueId),
    /// Caller's misuse: the mailbox GUID belongs to another mailbox.
    #[error("mailbox GUID {guid} is held by {holder}")]
    GuidTaken {
        /// The GUID.
        guid: MailboxGuid,
        /// The mailbox holding it.
        holder: UniqueId,
    },
    /// The peer never sent (or we never staged) the bytes a live record or
    /// a link names.
    #[error("message {0} is neither stored nor staged")]
    MissingMessage(Guid),
    /// The peer's bytes do not hash to the GUID it announced.
    #[error("message bytes hash to {actual}, not the announced {expected}")]
    GuidMismatch {
        /// The announced GUID.
        expected: Guid,
        /// SHA-1 of what arrived.
        actual: Guid,
    },
    /// The peer's bytes are not as long as announced.
    #[error("message {guid}: {actual} bytes, announced {expected}")]
    SizeMismatch {
        /// The message.
        guid: Guid,
        /// The announced size.
        expected: u64,
        /// What arrived (so far, if too many).
        actual: u64,
    },
    /// Caller's misuse: no such staging handle (finished, aborted or lost
    /// in a crash).
    #[error("unknown staging handle {0:?}")]
    UnknownStage(StageHandle),
    /// Caller's misuse: activating a Sieve script that does not exist.
    #[error("no sieve script {name} for {user}")]
    UnknownSieve {
        /// Whose.
        user: UserId,
        /// Which.
        name: SieveName,
    },
    /// A limit of the store's options was hit (message too big, too much
    /// staged at once, …).
    #[error("store limit exceeded: {what} > {limit}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The store's own failure: disk, database, fsync. Nothing of the
    /// failed operation is durable.
    #[error("store I/O failure: {0}")]
    Io(String),
    /// The store found its own durable data inconsistent.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

/// An inclusive range of UIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// First UID.
    pub first: Uid,
    /// Last UID.
    pub last: Uid,
}

impl UidRange {
    /// Every UID.
    pub const ALL: UidRange = UidRange {
        first: Uid::MIN,
        last: Uid::MAX,
    };

    /// UIDs from `first` on.
    pub fn from(first: Uid) -> UidRange {
        UidRange {
            first,
            last: Uid::MAX,
        }
    }

    /// Whether `uid` is inside.
    pub fn contains(&self, uid: Uid) -> bool {
        self.first <= uid && uid <= self.last
    }
}

/// Synchronous reads of durable mail state.
///
/// Every list comes back in a deterministic order (documented per method).
/// Lists that can grow with a mailbox's size are paged (`limit`); lists
/// bounded by a user's size (mailboxes, seen, subscriptions, scripts) are
/// not. Errors are [`StoreError::Io`]/[`StoreError::Corrupt`] only: an
/// absent thing is `None` or empty, never an error — except
/// [`MailRead::message_bytes`] of a GUID the store does not have, which is
/// `MissingMessage`.
pub trait MailRead {
    /// The mailbox holding `name` now.
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError>;
    /// The mailbox with this Cyrus UNIQUEID.
    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError>;
    /// The mailbox with this dsync GUID (`None` for the zero GUID, which
    /// means "no GUID").
    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError>;
    /// Every mailbox whose [`Mailbox::owner`] is `user`, by name.
    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError>;
    /// Up to `limit` mailboxes with names after `after` (all if `None`), by
    /// name.
    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError>;
    /// Every user that owns a mailbox or has seen state, subscriptions or
    /// Sieve scripts, sorted.
    fn users(&self) -> Result<Vec<UserId>, StoreError>;

    /// Up to `limit` records of the mailbox with UIDs in `range`, by UID.
    /// An unknown mailbox has no records.
    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// One record.
    fn record(&self, mailbox: &UniqueId, uid: Uid) -> Result<Option<Record>, StoreError> {
        Ok(self
            .records(
                mailbox,
                UidRange {
                    first: uid,
                    last: uid,
                },
                1,
            )?
            .into_iter()
            .next())
    }
    /// The mailbox's SYNC_CRC / SYNC_CRC_ANNOT over its records. The
    /// default walks every record; a store may keep them incrementally.
    fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
        let mut crcs = SyncCrcs::EMPTY;
        let mut range = UidRange::ALL;
        loop {
            let page = self.records(mailbox, range, 1024)?;
            for r in &page {
                crcs.toggle(r);
            }
            match page.last().and_then(|r| r.uid.next()) {
                Some(next) if page.len() == 1024 => range.first = next,
                _ => return Ok(crcs),
            }
        }
    }

    /// Whether the bytes of `guid` are stored.
    fn has_message(&self, guid: &Guid) -> Result<bool, StoreError> {
        Ok(self.message_size(guid)?.is_some())
    }
    /// The size of the stored bytes of `guid`.
    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError>;
    /// Up to `max_len` bytes of message `guid` from `offset` (fewer only at
    /// the end; empty at or past the end). Read a message in chunks to keep
    /// memory bounded.
    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError>;

    /// A user's seen state for a mailbox.
    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError>;
    /// All of a user's seen states, by mailbox uniqueid.
    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError>;
    /// A user's subscription states (including remembered unsubscribes),
    /// by name.
    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError>;
    /// A quota root.
    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError>;
    /// A user's Sieve scripts, by name.
    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError>;
    /// A user's active Sieve script.
    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError>;
    /// The server annotations (Cyrus mailbox `""`).
    fn server_annotations(&self) -> Result<Annotations, StoreError>;
    /// Tombstones of deleted mailboxes that had `name`, oldest first (ties
    /// by uniqueid).
    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError>;
    /// Tombstones of a user's deleted mailboxes, by uniqueid.
    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError>;
    /// Up to `limit` sync log lines of `channel` with sequence numbers
    /// after `after`, in order. Sequence numbers start at 1 and never
    /// repeat within a channel.
    fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError>;
    /// The sequence number of the channel's last line ever appended (0 if
    /// none), trimmed or not.
    fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError>;
}

/// The write side a durable store implements. Drivers call it (through
/// [`EffectRunner`], [`commit`] or [`commit_group`]); machines never hold
/// one.
///
/// Contract:
/// * `stage_*`: bytes for one GUID arrive in chunks; `stage_end` checks
///   size and SHA-1 (use [`StageHasher`]) and keeps the verified bytes
///   staged, invisible to [`MailRead`], until a written batch links them.
///   Staged bytes are not durable and may be dropped at any time before a
///   linking batch is written (they are always dropped by a crash).
/// * `write` applies a batch atomically with the semantics documented on
///   [`Mutation`]: on `Err` nothing of it happened. [`Plan::build`] does the
///   validation and turns the batch into primitive [`Change`]s; a store
///   that applies those in one transaction has exactly `MemStore`'s
///   semantics. A written batch need
///   not be durable (nor visible to readers) before `sync`.
/// * `sync` makes every batch written so far durable and visible; on `Err`
///   none of the batches written since the last successful `sync` may be
///   assumed durable.
pub trait StoreWrite: MailRead {
    /// Start staging the bytes of `guid`, announced as `size` bytes.
    fn stage_begin(&mut self, guid: Guid, size: u64) -> Result<StageHandle, StoreError>;
    /// Add the next chunk.
    fn stage_chunk(&mut self, handle: StageHandle, chunk: &[u8]) -> Result<(), StoreError>;
    /// Finish: verify size and SHA-1; on error the staged bytes are gone.
    fn stage_end(&mut self, handle: StageHandle) -> Result<(), StoreError>;
    /// Abandon a staging in progress.
    fn stage_abort(&mut self, handle: StageHandle);
    /// Apply a batch, all or nothing.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Make everything written so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
}

macro_rules! forward_mail_read {
    ($($ty:ty),*) => {$(
        impl<T: MailRead + ?Sized> MailRead for $ty {
            fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
                (**self).mailbox(name)
            }
            fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
                (**self).mailbox_by_uniqueid(id)
            }
            fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
                (**self).mailbox_by_guid(guid)
            }
            fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
                (**self).mailboxes_of_user(user)
            }
            fn mailboxes(&self, after: Option<&MailboxName>, limit: usize) -> Result<Vec<Mailbox>, StoreError> {
                (**self).mailboxes(after, limit)
            }
            fn users(&self) -> Result<Vec<UserId>, StoreError> {
                (**self).users()
            }
            fn records(&self, mailbox: &UniqueId, range: UidRange, limit: usize) -> Result<Vec<Record>, StoreError> {
                (**self).records(mailbox, range, limit)
            }
            fn record(&self, mailbox: &UniqueId, uid: Uid) -> Result<Option<Record>, StoreError> {
                (**self).record(mailbox, uid)
            }
            fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
                (**self).sync_crcs(mailbox)
            }
            fn has_message(&self, guid: &Guid) -> Result<bool, StoreError> {
                (**self).has_message(guid)
            }
            fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
                (**self).message_size(guid)
            }
            fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
                (**self).message_bytes(guid, offset, max_len)
            }
            fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
                (**self).seen(user, mailbox)
            }
            fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
                (**self).seen_of_user(user)
            }
            fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
                (**self).subscriptions(user)
            }
            fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
                (**self).quota(root)
            }
            fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
                (**self).sieve_scripts(user)
            }
            fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
                (**self).sieve_active(user)
            }
            fn server_annotations(&self) -> Result<Annotations, StoreError> {
                (**self).server_annotations()
            }
            fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
                (**self).tombstones_named(name)
            }
            fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
                (**self).tombstones_of_user(user)
            }
            fn sync_log(&self, channel: &str, after: u64, limit: usize) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
                (**self).sync_log(channel, after, limit)
            }
            fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
                (**self).sync_log_last(channel)
            }
        }
    )*};
}

forward_mail_read!(&T, &mut T, std::rc::Rc<T>, std::sync::Arc<T>, Box<T>);

/// A `RefCell` reads through a shared borrow per call, so a simulator can
/// hand machines `Rc<RefCell<MemStore>>` while it mutates the store
/// between steps. Panics if the store is mutably borrowed during a read
/// (a driver bug).
impl<T: MailRead> MailRead for std::cell::RefCell<T> {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        self.borrow().mailbox(name)
    }
    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        self.borrow().mailbox_by_uniqueid(id)
    }
    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        self.borrow().mailbox_by_guid(guid)
    }
    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        self.borrow().mailboxes_of_user(user)
    }
    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        self.borrow().mailboxes(after, limit)
    }
    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        self.borrow().users()
    }
    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.borrow().records(mailbox, range, limit)
    }
    fn record(&self, mailbox: &UniqueId, uid: Uid) -> Result<Option<Record>, StoreError> {
        self.borrow().record(mailbox, uid)
    }
    fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
        self.borrow().sync_crcs(mailbox)
    }
    fn has_message(&self, guid: &Guid) -> Result<bool, StoreError> {
        self.borrow().has_message(guid)
    }
    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        self.borrow().message_size(guid)
    }
    fn message_bytes(&self, guid: &Guid, offset: u64, max_len: usize) -> Result<Bytes, StoreError> {
        self.borrow().message_bytes(guid, offset, max_len)
    }
    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        self.borrow().seen(user, mailbox)
    }
    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        self.borrow().seen_of_user(user)
    }
    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        self.borrow().subscriptions(user)
    }
    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        self.borrow().quota(root)
    }
    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        self.borrow().sieve_scripts(user)
    }
    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        self.borrow().sieve_active(user)
    }
    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        self.borrow().server_annotations()
    }
    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        self.borrow().tombstones_named(name)
    }
    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        self.borrow().tombstones_of_user(user)
    }
    fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        self.borrow().sync_log(channel, after, limit)
    }
    fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
        self.borrow().sync_log_last(channel)
    }
}
