//! Per-user state beside the mailboxes: seen state, subscriptions, quota
//! roots, Sieve scripts, and the sync log lines a server writes for rolling
//! replication.

use bytes::Bytes;

use super::ids::{Guid, InvalidValue, MailboxName, ModSeq, SieveName, UniqueId, UnixTime, UserId};

/// An IMAP sequence set of UIDs as Cyrus keeps SEENUIDS, e.g. `1:3,5,7:9`.
///
/// Grammar: empty, or `range *("," range)` with `range = n / n ":" n`,
/// `n` decimal 1 ..= 4294967295 (`*` is not allowed in stored state).
/// The text is kept exactly as received so that it compares equal to the
/// peer's string (Cyrus compares SEEN records field by field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SeqSet(String);

impl SeqSet {
    /// The longest text accepted (a very fragmented seen set).
    pub const MAX_BYTES: usize = 1 << 20;

    /// Validate and wrap.
    pub fn parse(s: &[u8]) -> Result<SeqSet, InvalidValue> {
        if s.len() > SeqSet::MAX_BYTES {
            return Err(InvalidValue::TooLong {
                what: "sequence set",
                len: s.len(),
                max: SeqSet::MAX_BYTES,
            });
        }
        if !s.is_empty() {
            for range in s.split(|&c| c == b',') {
                let mut ends = range.splitn(2, |&c| c == b':');
                for n in ends.by_ref() {
                    let ok = !n.is_empty()
                        && n.len() <= 10
                        && n.iter().all(u8::is_ascii_digit)
                        && std::str::from_utf8(n)
                            .ok()
                            .and_then(|t| t.parse::<u32>().ok())
                            .is_some_and(|v| v > 0);
                    if !ok {
                        return Err(InvalidValue::BadSeqSet);
                    }
                }
            }
        }
        // Checked above: ASCII digits, ':' and ',' only.
        Ok(SeqSet(String::from_utf8_lossy(s).into_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `uid` is in the set.
    pub fn contains(&self, uid: u32) -> bool {
        self.ranges().any(|(a, b)| a <= uid && uid <= b)
    }

    /// The ranges as (low, high), in text order.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.split(',').filter(|r| !r.is_empty()).map(|r| {
            let mut it = r.splitn(2, ':').map(|n| n.parse::<u32>().unwrap_or(0));
            let a = it.next().unwrap_or(0);
            let b = it.next().unwrap_or(a);
            (a.min(b), a.max(b))
        })
    }
}

/// One user's seen state for one mailbox (Cyrus seen DB record, csync
/// `SEEN %(UNIQUEID LASTREAD LASTUID LASTCHANGE SEENUIDS)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// LASTREAD.
    pub lastread: UnixTime,
    /// LASTUID.
    pub lastuid: u32,
    /// LASTCHANGE.
    pub lastchange: UnixTime,
    /// SEENUIDS.
    pub seenuids: SeqSet,
}

/// A user's subscription state for one name, with the time it last
/// changed. An unsubscribe is kept (as `subscribed: false`) so dsync can
/// send it as a dated tombstone; csync LSUB lists only subscribed names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Subscribed now.
    pub subscribed: bool,
    /// When it last changed (dsync `last_subscription_change`).
    pub changed_at: UnixTime,
}

/// A quota resource (RFC 9208 names; Cyrus's legacy `X-` names map here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum QuotaResource {
    /// STORAGE, in KiB (Cyrus sends LIMIT as a copy of it).
    Storage,
    /// MESSAGE: number of messages.
    Message,
    /// ANNOTATION-STORAGE (`X-ANNOTATION-STORAGE`), in KiB.
    AnnotationStorage,
    /// MAILBOX (`X-NUM-FOLDERS`): number of mailboxes.
    Mailbox,
}

impl QuotaResource {
    /// Every resource, in Cyrus's printing order.
    pub const ALL: [QuotaResource; 4] = [
        QuotaResource::Storage,
        QuotaResource::Message,
        QuotaResource::AnnotationStorage,
        QuotaResource::Mailbox,
    ];
}

/// A quota root: limits per resource, usage, and the MODSEQ of the last
/// limit change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaRoot {
    /// Limits set; a resource absent here is unlimited.
    pub limits: std::collections::BTreeMap<QuotaResource, u64>,
    /// Usage as last computed by the store.
    pub usage: std::collections::BTreeMap<QuotaResource, u64>,
    /// MODSEQ (Cyrus quota modseq; 0 if unknown).
    pub modseq: ModSeq,
}

/// A Sieve script of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SieveScript {
    /// The name, without `.script`.
    pub name: SieveName,
    /// LAST_UPDATE.
    pub last_update: UnixTime,
    /// The script text (bounded by the store's options).
    pub content: Bytes,
}

impl SieveScript {
    /// The GUID Cyrus reports for it: SHA-1 of the content.
    pub fn guid(&self) -> Guid {
        Guid::of(&self.content)
    }
}

/// One line of a Cyrus sync log (`{configdirectory}/sync/[channel/]log`),
/// as rolling replication reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncLogLine {
    /// `USER userid`: full user sync.
    User(UserId),
    /// `UNUSER userid`: delete the user on the replica.
    Unuser(UserId),
    /// `META userid`: seen, subscriptions and sieve.
    Meta(UserId),
    /// `MAILBOX name`.
    Mailbox(MailboxName),
    /// `APPEND name` (treated like MAILBOX).
    Append(MailboxName),
    /// `DOUBLEMAILBOX a b`: sync both in one batch.
    DoubleMailbox(MailboxName, MailboxName),
    /// `RENAME old new`.
    Rename(MailboxName, MailboxName),
    /// `UNMAILBOX name`.
    Unmailbox(MailboxName),
    /// `QUOTA root`.
    Quota(MailboxName),
    /// `ANNOTATION name` (`None` = server annotations, written `""`).
    Annotation(Option<MailboxName>),
    /// `SEEN userid uniqueid`.
    Seen(UserId, UniqueId),
    /// `SUB userid name` (also used for unsubscribe).
    Sub(UserId, MailboxName),
}
