//! The mail model every protocol machine and every store shares: users,
//! mailboxes with all the state Cyrus replicates and what dsync needs on
//! top, message records, seen state, subscriptions, quota roots, Sieve
//! scripts, tombstones, server annotations and sync log lines; plus the
//! Cyrus sync CRCs computed over records.
//!
//! These are plain values with validated newtypes for every identifier
//! (grammar in each type's doc). The model never does I/O and never turns
//! a name into a path; ordering is deterministic everywhere (`BTreeMap`).
//!
//! Message GUIDs: `proto` had no GUID type committed when this was written,
//! so the model defines [`Guid`] (with SHA-1 hashing and hex helpers); it
//! converts both ways with `proto::dlist::Guid` (`From`), so codecs and
//! machines meet at that edge.

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;
pub mod crc;
mod ids;
mod mailbox;
mod record;
mod user;

pub use crc::SyncCrcs;
pub use ids::{
    AnnotationEntry, AnnotationOwner, Guid, InvalidValue, Keyword, MailboxGuid, MailboxName,
    ModSeq, Partition, PeerMailGuid, SieveName, Uid, UidValidity, UniqueId, UnixTime, UserId,
};
pub use mailbox::{
    Acl, AclEntry, Mailbox, MailboxKind, MailboxOptions, MailboxType, NameChange, Tombstone,
};
pub use record::{AnnotationValue, Annotations, Flags, Record, SystemFlags};
pub use user::{QuotaResource, QuotaRoot, Seen, SeqSet, SieveScript, Subscription, SyncLogLine};
