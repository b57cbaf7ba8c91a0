//! Mailboxes: everything Cyrus replicates about a folder (the `MAILBOX`
//! kvlist of csync), what dsync needs on top (a 128-bit mailbox GUID and
//! rename timestamps), and the tombstones left by deletes.
//!
//! Identity is [`UniqueId`] (Cyrus) and [`MailboxGuid`] (dsync), never the
//! name: a rename changes only [`Mailbox::name`].

use super::ids::{
    InvalidValue, MailboxGuid, MailboxName, ModSeq, Partition, UidValidity, UniqueId, UnixTime,
    UserId,
};
use super::record::Annotations;

/// What a mailbox holds: the first letter of Cyrus's MBOXTYPE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MailboxKind {
    /// `e` (or MBOXTYPE absent): plain email.
    #[default]
    Email,
    /// `n`: netnews.
    Netnews,
    /// `b`: DAV collection.
    Collection,
    /// `c`: calendar.
    Calendar,
    /// `a`: addressbook.
    Addressbook,
    /// `s`: JMAP submission.
    Submission,
    /// `p`: JMAP push subscriptions.
    PushSubscription,
    /// `j`: JMAP notifications.
    JmapNotify,
    /// `f`: the `#sieve` mailbox (3.6 SIEVE-MAILBOX).
    Sieve,
}

/// Cyrus MBOXTYPE: a kind letter followed by flag letters.
///
/// Grammar: `[kind] *flag` where kind is one of `e n b c a s p j f` and
/// flags are `d` (deleted, tombstone), `m` (moving), `r` (remote),
/// `z` (reserved), `i` (intermediate); `l` (legacy dirs) is accepted and
/// dropped, as Cyrus strips it before sending. The empty string is plain
/// email, which Cyrus 3.6 sends by omitting MBOXTYPE. Printed as Cyrus
/// does: kind, then `d m r z i` in that order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MailboxType {
    /// The kind.
    pub kind: MailboxKind,
    /// `i`: an intermediate (placeholder) mailbox, 3.2–3.5 only.
    pub intermediate: bool,
    /// `d`: a deleted-mailbox tombstone entry.
    pub deleted: bool,
    /// `m`: being moved.
    pub moving: bool,
    /// `r`: remote (Murder).
    pub remote: bool,
    /// `z`: reserved name.
    pub reserved: bool,
}

impl MailboxType {
    /// Parse the MBOXTYPE string.
    pub fn parse(s: &[u8]) -> Result<MailboxType, InvalidValue> {
        let bad = || InvalidValue::BadMailboxType(String::from_utf8_lossy(s).into_owned());
        let mut t = MailboxType::default();
        let mut rest = s;
        if let Some((&first, tail)) = s.split_first() {
            let kind = match first {
                b'e' => Some(MailboxKind::Email),
                b'n' => Some(MailboxKind::Netnews),
                b'b' => Some(MailboxKind::Collection),
                b'c' => Some(MailboxKind::Calendar),
                b'a' => Some(MailboxKind::Addressbook),
                b's' => Some(MailboxKind::Submission),
                b'p' => Some(MailboxKind::PushSubscription),
                b'j' => Some(MailboxKind::JmapNotify),
                b'f' => Some(MailboxKind::Sieve),
                _ => None,
            };
            if let Some(k) = kind {
                t.kind = k;
                rest = tail;
            }
        }
        for &c in rest {
            match c {
                b'd' => t.deleted = true,
                b'm' => t.moving = true,
                b'r' => t.remote = true,
                b'z' => t.reserved = true,
                b'i' => t.intermediate = true,
                b'l' => {}
                _ => return Err(bad()),
            }
        }
        Ok(t)
    }

    /// The MBOXTYPE string Cyrus 3.6 would send; empty for plain email
    /// (the printer then omits the key).
    pub fn to_cyrus(&self) -> String {
        let mut s = String::new();
        let kind = match self.kind {
            MailboxKind::Email => 'e',
            MailboxKind::Netnews => 'n',
            MailboxKind::Collection => 'b',
            MailboxKind::Calendar => 'c',
            MailboxKind::Addressbook => 'a',
            MailboxKind::Submission => 's',
            MailboxKind::PushSubscription => 'p',
            MailboxKind::JmapNotify => 'j',
            MailboxKind::Sieve => 'f',
        };
        let flags = [
            (self.deleted, 'd'),
            (self.moving, 'm'),
            (self.remote, 'r'),
            (self.reserved, 'z'),
            (self.intermediate, 'i'),
        ];
        if self.kind != MailboxKind::Email || flags.iter().any(|f| f.0) {
            s.push(kind);
        }
        for (on, c) in flags {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// Cyrus mailbox OPTIONS that replicate: `P` POP3 new-UIDL, `S` shared
/// seen, `D` duplicate delivery, `A` has alarms. Grammar: any letters;
/// unknown letters are ignored, as Cyrus does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MailboxOptions {
    /// `P`.
    pub pop3_new_uidl: bool,
    /// `S`.
    pub shared_seen: bool,
    /// `D`.
    pub duplicate_deliver: bool,
    /// `A`.
    pub has_alarms: bool,
}

impl MailboxOptions {
    /// Parse the OPTIONS string.
    pub fn parse(s: &[u8]) -> MailboxOptions {
        MailboxOptions {
            pop3_new_uidl: s.contains(&b'P'),
            shared_seen: s.contains(&b'S'),
            duplicate_deliver: s.contains(&b'D'),
            has_alarms: s.contains(&b'A'),
        }
    }

    /// The OPTIONS string in Cyrus's letter order (`P S D A`).
    pub fn to_cyrus(&self) -> String {
        let mut s = String::new();
        for (on, c) in [
            (self.pop3_new_uidl, 'P'),
            (self.shared_seen, 'S'),
            (self.duplicate_deliver, 'D'),
            (self.has_alarms, 'A'),
        ] {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// One ACL entry: an identifier (`alice`, `anyone`, `-bob`) and its rights
/// letters (`lrswipkxtecdan`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclEntry {
    /// Who.
    pub identifier: Vec<u8>,
    /// The rights letters.
    pub rights: Vec<u8>,
}

/// A mailbox ACL, entries in the order given.
///
/// Order is kept because Cyrus compares ACLs as strings when deciding
/// whether a mailbox changed. Wire form (Cyrus): `id TAB rights TAB` per
/// entry, concatenated (`"alice\tlrswipkxtecdan\tbob\tlrs\t"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Acl(pub Vec<AclEntry>);

impl Acl {
    /// Parse the TAB-separated Cyrus form. A missing final TAB is accepted;
    /// an identifier without rights gets empty rights.
    pub fn parse_cyrus(s: &[u8]) -> Acl {
        let mut out = Vec::new();
        let mut parts = s.split(|&c| c == b'\t');
        while let Some(id) = parts.next() {
            if id.is_empty() {
                continue;
            }
            let rights = parts.next().unwrap_or(b"");
            out.push(AclEntry {
                identifier: id.to_vec(),
                rights: rights.to_vec(),
            });
        }
        Acl(out)
    }

    /// The TAB-separated Cyrus form.
    pub fn to_cyrus(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for e in &self.0 {
            v.extend_from_slice(&e.identifier);
            v.push(b'\t');
            v.extend_from_slice(&e.rights);
            v.push(b'\t');
        }
        v
    }
}

/// A past name of a mailbox and when it stopped being its name.
///
/// Cyrus keeps such a history per uniqueid so rolling replication can sync
/// the old and new names together; dsync sends the rename time as
/// `last_renamed_or_created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameChange {
    /// The name the mailbox had before.
    pub old_name: MailboxName,
    /// When it was renamed away from that name.
    pub at: UnixTime,
    /// The mailbox's HIGHESTMODSEQ at the rename (0 if unknown).
    pub modseq: ModSeq,
}

/// A mailbox and all of its replicated state except its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Cyrus UNIQUEID: the identity master and replica share.
    pub uniqueid: UniqueId,
    /// dsync mailbox GUID: the identity dsync peers share.
    pub guid: MailboxGuid,
    /// Current name (Cyrus internal form).
    pub name: MailboxName,
    /// The user that owns it (`None` for a shared mailbox). Set by whoever
    /// creates the mailbox; stores index "mailboxes of a user" by it.
    pub owner: Option<UserId>,
    /// MBOXTYPE.
    pub mbtype: MailboxType,
    /// UIDVALIDITY.
    pub uidvalidity: UidValidity,
    /// LAST_UID: highest UID ever assigned (0 = none yet).
    pub last_uid: u32,
    /// HIGHESTMODSEQ.
    pub highestmodseq: ModSeq,
    /// RECENTUID.
    pub recentuid: u32,
    /// RECENTTIME.
    pub recenttime: UnixTime,
    /// LAST_APPENDDATE.
    pub last_appenddate: UnixTime,
    /// POP3_LAST_LOGIN.
    pub pop3_last_login: UnixTime,
    /// POP3_SHOW_AFTER.
    pub pop3_show_after: UnixTime,
    /// XCONVMODSEQ (conversations; 0 = not sent).
    pub xconvmodseq: ModSeq,
    /// RACLMODSEQ (reverse ACLs; 0 = not sent).
    pub raclmodseq: ModSeq,
    /// CREATEDMODSEQ.
    pub createdmodseq: ModSeq,
    /// FOLDERMODSEQ.
    pub foldermodseq: ModSeq,
    /// Highest MODSEQ of records already purged from the index: an
    /// incremental sync from below it cannot describe those deletions.
    pub deletedmodseq: ModSeq,
    /// PARTITION.
    pub partition: Partition,
    /// ACL.
    pub acl: Acl,
    /// OPTIONS.
    pub options: MailboxOptions,
    /// QUOTAROOT (sent by Cyrus, ignored by its receiver; kept for GET
    /// replies).
    pub quotaroot: Option<MailboxName>,
    /// Mailbox-level annotations (uid 0 in Cyrus); they do not count in the
    /// sync CRCs.
    pub annotations: Annotations,
    /// When the mailbox got its current name: created or last renamed
    /// (dsync `last_renamed_or_created`).
    pub renamed_or_created_at: UnixTime,
    /// Earlier names, oldest first.
    pub name_history: Vec<NameChange>,
}

impl Mailbox {
    /// A fresh, empty mailbox: every counter 0, no ACL, no annotations.
    pub fn new(
        uniqueid: UniqueId,
        guid: MailboxGuid,
        name: MailboxName,
        owner: Option<UserId>,
        uidvalidity: UidValidity,
        partition: Partition,
        created_at: UnixTime,
    ) -> Mailbox {
        Mailbox {
            uniqueid,
            guid,
            name,
            owner,
            mbtype: MailboxType::default(),
            uidvalidity,
            last_uid: 0,
            highestmodseq: ModSeq::ZERO,
            recentuid: 0,
            recenttime: UnixTime::ZERO,
            last_appenddate: UnixTime::ZERO,
            pop3_last_login: UnixTime::ZERO,
            pop3_show_after: UnixTime::ZERO,
            xconvmodseq: ModSeq::ZERO,
            raclmodseq: ModSeq::ZERO,
            createdmodseq: ModSeq::ZERO,
            foldermodseq: ModSeq::ZERO,
            deletedmodseq: ModSeq::ZERO,
            partition,
            acl: Acl::default(),
            options: MailboxOptions::default(),
            quotaroot: None,
            annotations: Annotations::new(),
            renamed_or_created_at: created_at,
            name_history: Vec::new(),
        }
    }
}

/// What remains of a deleted mailbox: Cyrus keeps a `d`-type entry in
/// mailboxes.db under the old name (a 3.4+ sync_client only sends
/// UNMAILBOX for a name that has one); dsync sends mailbox deletes keyed by
/// GUID with a timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The name the mailbox had when deleted.
    pub name: MailboxName,
    /// Its UNIQUEID.
    pub uniqueid: UniqueId,
    /// Its dsync GUID.
    pub guid: MailboxGuid,
    /// Its owner.
    pub owner: Option<UserId>,
    /// When it was deleted.
    pub deleted_at: UnixTime,
    /// The MODSEQ of the delete (Cyrus: the tombstone's foldermodseq).
    pub modseq: ModSeq,
}
