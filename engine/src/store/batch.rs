//! Write batches: the typed mutations a machine asks a store to make, all
//! or nothing.
//!
//! A batch leaves a machine as an effect and comes back as a
//! [`Completion`](super::Completion). Mutations apply in order, each seeing
//! the ones before it; if any is refused the store is left exactly as it
//! was. The semantics of every variant are written here once and
//! implemented by [`Delta`](super::Pending) (shared by the overlay and
//! [`MemStore`](crate::memstore::MemStore)); a durable store must behave the
//! same, and `engine/tests/memstore_*.rs` are the executable description.

use bytes::Bytes;

use crate::model::{
    AnnotationEntry, AnnotationOwner, AnnotationValue, Guid, Mailbox, MailboxName, ModSeq,
    QuotaRoot, Record, Seen, SieveName, SieveScript, Subscription, SyncLogLine, Uid, UniqueId,
    UnixTime, UserId,
};

/// Names a batch; chosen by the machine that emits it (usually its
/// effect id), echoed in the completion and in the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// One mutation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutation {
    /// Make message bytes that were staged (and verified) under `guid` part
    /// of the store. A no-op if the store already has `guid`. Refused with
    /// `MissingMessage` if nothing is staged or stored under it, and with
    /// `SizeMismatch` if the staged size differs from `size`.
    LinkMessage {
        /// The message's SHA-1.
        guid: Guid,
        /// Its size in bytes.
        size: u64,
    },
    /// Store small message bytes given inline. Refused with `GuidMismatch`
    /// if SHA-1(bytes) ≠ `guid`. A no-op if the store already has `guid`.
    PutMessage {
        /// The message's SHA-1.
        guid: Guid,
        /// The bytes.
        bytes: Bytes,
    },
    /// Create a mailbox or replace all of its state (keyed by
    /// [`Mailbox::uniqueid`]). Refused with `NameTaken` if another mailbox
    /// holds the name and `GuidTaken` if another holds the mailbox GUID.
    /// Records are untouched. To change the name use `RenameMailbox`
    /// (replacing with a different name is refused as `NameChanged`).
    PutMailbox(Mailbox),
    /// Rename a mailbox, appending the old name to its history and setting
    /// `renamed_or_created_at`. Refused if the mailbox is unknown or the new
    /// name is taken by another mailbox.
    RenameMailbox {
        /// Which mailbox.
        uniqueid: UniqueId,
        /// Its new name.
        new_name: MailboxName,
        /// When.
        at: UnixTime,
        /// The modseq to record in the history.
        modseq: ModSeq,
    },
    /// Delete a mailbox with its records and every user's seen state for
    /// it, leaving a [`Tombstone`](crate::model::Tombstone). Refused if the
    /// mailbox is unknown.
    DeleteMailbox {
        /// Which mailbox.
        uniqueid: UniqueId,
        /// When.
        at: UnixTime,
        /// The modseq of the delete.
        modseq: ModSeq,
    },
    /// Insert or replace one record (keyed by UID). Refused if the mailbox
    /// is unknown, or if the record is live and its message is not stored
    /// (an expunged record may name bytes we never had, as Cyrus appends
    /// expunged records "unlinked").
    PutRecord {
        /// The mailbox.
        mailbox: UniqueId,
        /// The record.
        record: Record,
    },
    /// Remove records from the index entirely (Cyrus cleanup of expunged
    /// records). Unknown UIDs are skipped. Marking a record expunged is a
    /// `PutRecord` with `expunged: true`.
    PurgeRecords {
        /// The mailbox.
        mailbox: UniqueId,
        /// Which UIDs.
        uids: Vec<Uid>,
    },
    /// Set a user's seen state for a mailbox (the mailbox need not exist
    /// here, as with Cyrus's seen DB).
    PutSeen {
        /// Whose.
        user: UserId,
        /// Which mailbox.
        mailbox: UniqueId,
        /// The state.
        seen: Seen,
    },
    /// Forget a user's seen state for a mailbox.
    DeleteSeen {
        /// Whose.
        user: UserId,
        /// Which mailbox.
        mailbox: UniqueId,
    },
    /// Record a subscribe or unsubscribe of a name.
    SetSubscription {
        /// Whose.
        user: UserId,
        /// Which name (need not exist).
        name: MailboxName,
        /// The new state.
        subscription: Subscription,
    },
    /// Create or replace a quota root.
    PutQuota {
        /// The root's name.
        root: MailboxName,
        /// Its limits, usage and modseq.
        quota: QuotaRoot,
    },
    /// Remove a quota root (unknown roots are fine).
    DeleteQuota {
        /// The root's name.
        root: MailboxName,
    },
    /// Set (non-empty value) or delete (empty value) one annotation of a
    /// mailbox or of the server. Refused if the mailbox is unknown.
    SetAnnotation {
        /// `None`: a server annotation (Cyrus `MBOXNAME ""`).
        mailbox: Option<UniqueId>,
        /// The entry.
        entry: AnnotationEntry,
        /// Shared or private.
        owner: AnnotationOwner,
        /// The value and its modseq.
        value: AnnotationValue,
    },
    /// Create or replace a user's Sieve script.
    PutSieve {
        /// Whose.
        user: UserId,
        /// The script.
        script: SieveScript,
    },
    /// Delete a user's Sieve script (unknown names are fine). Deleting the
    /// active script leaves the user with none active.
    DeleteSieve {
        /// Whose.
        user: UserId,
        /// Which script.
        name: SieveName,
    },
    /// Set or clear the user's active script. Refused with `UnknownSieve`
    /// if the named script does not exist.
    ActivateSieve {
        /// Whose.
        user: UserId,
        /// The script, or `None` for none.
        name: Option<SieveName>,
    },
    /// Delete a user: every mailbox they own (as `DeleteMailbox`, deepest
    /// name first), their seen state, subscriptions, Sieve scripts, and the
    /// quota roots named after their mailboxes. Unknown users are fine.
    DeleteUser {
        /// Whom.
        user: UserId,
        /// When (tombstones).
        at: UnixTime,
        /// Modseq of the deletes.
        modseq: ModSeq,
    },
    /// Drop a tombstone (expiry).
    ForgetTombstone {
        /// The deleted mailbox's uniqueid.
        uniqueid: UniqueId,
    },
    /// Append a line to a sync log channel (`""` is the default channel).
    AppendSyncLog {
        /// The channel.
        channel: String,
        /// The line.
        line: SyncLogLine,
    },
    /// Drop the channel's lines that exist now with sequence numbers up to
    /// and including `through` (after a sync run consumed them). It never
    /// affects lines appended later, even if `through` is beyond the last
    /// number used so far (it is clamped to it).
    TrimSyncLog {
        /// The channel.
        channel: String,
        /// Last sequence number to drop.
        through: u64,
    },
}

/// A list of mutations applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// The batch's id.
    pub id: BatchId,
    /// The mutations, applied in order.
    pub mutations: Vec<Mutation>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new(id: BatchId) -> WriteBatch {
        WriteBatch {
            id,
            mutations: Vec::new(),
        }
    }

    /// Add a mutation.
    pub fn push(&mut self, m: Mutation) -> &mut WriteBatch {
        self.mutations.push(m);
        self
    }

    /// Whether it has no mutation.
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    /// The GUIDs whose bytes this batch makes part of the store.
    pub fn message_guids(&self) -> impl Iterator<Item = &Guid> {
        self.mutations.iter().filter_map(|m| match m {
            Mutation::LinkMessage { guid, .. } | Mutation::PutMessage { guid, .. } => Some(guid),
            _ => None,
        })
    }
}
