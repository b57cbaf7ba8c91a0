//! Message records: one entry of a mailbox's index, as Cyrus replicates it
//! (`RECORD %(UID MODSEQ LAST_UPDATED FLAGS INTERNALDATE SIZE GUID
//! ANNOTATIONS)`), plus the fields Cyrus 3.6 sends as "virtual annotations"
//! (`thrid`, `savedate`, `createdmodseq` under `/vendor/cmu/cyrus-imapd/`),
//! which the model keeps as plain fields, as a Cyrus v16+ index does.
//!
//! A record never holds message bytes: it names them by [`Guid`], and the
//! store keeps each distinct GUID once however many records refer to it.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use super::ids::{
    AnnotationEntry, AnnotationOwner, Guid, Keyword, ModSeq, PeerMailGuid, Uid, UnixTime,
};

/// The five IMAP system flags a record can carry (`\Recent` is session
/// state and `\Expunged` is [`Record::expunged`], so neither is here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemFlags(u8);

impl SystemFlags {
    /// `\Answered`.
    pub const ANSWERED: SystemFlags = SystemFlags(1);
    /// `\Flagged`.
    pub const FLAGGED: SystemFlags = SystemFlags(2);
    /// `\Deleted`.
    pub const DELETED: SystemFlags = SystemFlags(4);
    /// `\Draft`.
    pub const DRAFT: SystemFlags = SystemFlags(8);
    /// `\Seen`.
    pub const SEEN: SystemFlags = SystemFlags(16);

    /// Every flag, in the order Cyrus prints them in a FLAGS list
    /// (`\Deleted \Answered \Flagged \Draft [\Expunged] \Seen`).
    pub const CYRUS_ORDER: [SystemFlags; 5] = [
        SystemFlags::DELETED,
        SystemFlags::ANSWERED,
        SystemFlags::FLAGGED,
        SystemFlags::DRAFT,
        SystemFlags::SEEN,
    ];

    /// No flag set.
    pub const fn empty() -> SystemFlags {
        SystemFlags(0)
    }

    /// The raw bits (answered 1, flagged 2, deleted 4, draft 8, seen 16).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// From raw bits; unknown bits are dropped.
    pub fn from_bits_truncate(b: u8) -> SystemFlags {
        SystemFlags(b & 31)
    }

    /// Whether every flag of `other` is set here.
    pub fn contains(self, other: SystemFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Set the flags of `other`.
    pub fn insert(&mut self, other: SystemFlags) {
        self.0 |= other.0;
    }

    /// Clear the flags of `other`.
    pub fn remove(&mut self, other: SystemFlags) {
        self.0 &= !other.0;
    }

    /// The IMAP name of a single flag (`\Seen`); `None` for a combination.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "\\Answered",
            2 => "\\Flagged",
            4 => "\\Deleted",
            8 => "\\Draft",
            16 => "\\Seen",
            _ => return None,
        })
    }

    /// A single flag from its IMAP name, case-insensitively (`\seen`).
    pub fn from_name(name: &[u8]) -> Option<SystemFlags> {
        SystemFlags::CYRUS_ORDER.into_iter().find(|f| {
            f.name()
                .is_some_and(|n| n.as_bytes().eq_ignore_ascii_case(name))
        })
    }
}

impl std::ops::BitOr for SystemFlags {
    type Output = SystemFlags;
    fn bitor(self, rhs: SystemFlags) -> SystemFlags {
        SystemFlags(self.0 | rhs.0)
    }
}

/// The flags of a record: system flags plus user keywords.
///
/// Keywords compare case-insensitively (IMAP): adding `$label1` when
/// `$Label1` is present keeps the first spelling. They are kept in the order
/// first added, which for a record decoded from Cyrus is the mailbox's
/// flag-slot order, so a printer can reproduce Cyrus's FLAGS lists.
/// Equality ignores that order.
#[derive(Clone, Default)]
pub struct Flags {
    /// The system flags.
    pub system: SystemFlags,
    keywords: Vec<Keyword>,
}

impl Flags {
    /// No flags.
    pub fn new() -> Flags {
        Flags::default()
    }

    /// Flags from system flags and keywords (duplicates folded).
    pub fn with(system: SystemFlags, keywords: impl IntoIterator<Item = Keyword>) -> Flags {
        let mut f = Flags {
            system,
            keywords: Vec::new(),
        };
        for k in keywords {
            f.insert_keyword(k);
        }
        f
    }

    /// The keywords, in first-added order.
    pub fn keywords(&self) -> &[Keyword] {
        &self.keywords
    }

    /// Whether the keyword is set (case-insensitive).
    pub fn has_keyword(&self, k: &Keyword) -> bool {
        self.keywords
            .iter()
            .any(|x| x.as_bytes().eq_ignore_ascii_case(k.as_bytes()))
    }

    /// Set a keyword; returns false if it was already set.
    pub fn insert_keyword(&mut self, k: Keyword) -> bool {
        if self.has_keyword(&k) {
            return false;
        }
        self.keywords.push(k);
        true
    }

    /// Clear a keyword; returns false if it was not set.
    pub fn remove_keyword(&mut self, k: &Keyword) -> bool {
        let before = self.keywords.len();
        self.keywords
            .retain(|x| !x.as_bytes().eq_ignore_ascii_case(k.as_bytes()));
        self.keywords.len() != before
    }

    /// The keywords lower-cased and sorted: the canonical form used for
    /// equality and hashing.
    pub fn folded_keywords(&self) -> std::collections::BTreeSet<Vec<u8>> {
        self.keywords.iter().map(|k| k.folded()).collect()
    }
}

impl PartialEq for Flags {
    fn eq(&self, other: &Flags) -> bool {
        self.system == other.system && self.folded_keywords() == other.folded_keywords()
    }
}

impl Eq for Flags {}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for s in SystemFlags::CYRUS_ORDER {
            if self.system.contains(s) {
                l.entry(&format_args!("{}", s.name().unwrap_or("?")));
            }
        }
        for k in &self.keywords {
            l.entry(&format_args!("{k}"));
        }
        l.finish()
    }
}

/// One annotation value with the modseq at which it last changed.
///
/// An empty value means "no value" in Cyrus (sending one deletes the
/// entry), so the model never stores an empty value: see
/// [`Annotations::set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationValue {
    /// MODSEQ of the last change (0 from 3.0 peers, which do not send it).
    pub modseq: ModSeq,
    /// The value bytes (binary allowed).
    pub value: Bytes,
}

/// A set of annotations keyed by (entry, owner), iterated in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(BTreeMap<(AnnotationEntry, AnnotationOwner), AnnotationValue>);

impl Annotations {
    /// No annotations.
    pub fn new() -> Annotations {
        Annotations::default()
    }

    /// Set (non-empty value) or delete (empty value) one entry.
    pub fn set(&mut self, entry: AnnotationEntry, owner: AnnotationOwner, v: AnnotationValue) {
        if v.value.is_empty() {
            self.0.remove(&(entry, owner));
        } else {
            self.0.insert((entry, owner), v);
        }
    }

    /// Delete one entry; returns the old value.
    pub fn remove(
        &mut self,
        entry: &AnnotationEntry,
        owner: &AnnotationOwner,
    ) -> Option<AnnotationValue> {
        self.0.remove(&(entry.clone(), owner.clone()))
    }

    /// One entry.
    pub fn get(
        &self,
        entry: &AnnotationEntry,
        owner: &AnnotationOwner,
    ) -> Option<&AnnotationValue> {
        self.0.get(&(entry.clone(), owner.clone()))
    }

    /// All entries in (entry, owner) order.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = (&AnnotationEntry, &AnnotationOwner, &AnnotationValue)> {
        self.0.iter().map(|((e, o), v)| (e, o, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes of values (Cyrus charges these to ANNOTATION-STORAGE).
    pub fn value_bytes(&self) -> u64 {
        self.0.values().map(|v| v.value.len() as u64).sum()
    }
}

/// One message record of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// UID within the mailbox.
    pub uid: Uid,
    /// MODSEQ of the last change to this record.
    pub modseq: ModSeq,
    /// When the record last changed (Cyrus LAST_UPDATED).
    pub last_updated: UnixTime,
    /// System flags and keywords.
    pub flags: Flags,
    /// Expunged (Cyrus keeps expunged records in the index until cleanup,
    /// and sends them with `\Expunged` so the peer expunges too).
    pub expunged: bool,
    /// INTERNALDATE.
    pub internaldate: UnixTime,
    /// Size of the message bytes (RFC822.SIZE).
    pub size: u64,
    /// SHA-1 of the message bytes.
    pub guid: Guid,
    /// Per-message annotations, without the virtual ones below.
    pub annotations: Annotations,
    /// Conversation id (Cyrus `cid`, virtual annotation `thrid`); 0 = none.
    pub thrid: u64,
    /// When the message was saved into this mailbox (virtual `savedate`);
    /// 0 = unknown.
    pub savedate: UnixTime,
    /// MODSEQ at which the record was created (virtual `createdmodseq`);
    /// 0 = unknown.
    pub createdmodseq: ModSeq,
    /// The GUID a dsync peer gave this message, if not our SHA-1 hex.
    /// Not part of any Cyrus checksum.
    pub peer_guid: Option<PeerMailGuid>,
}

impl Record {
    /// A live record with no flags, annotations or virtual fields.
    pub fn new(uid: Uid, modseq: ModSeq, guid: Guid, size: u64, internaldate: UnixTime) -> Record {
        Record {
            uid,
            modseq,
            last_updated: internaldate,
            flags: Flags::new(),
            expunged: false,
            internaldate,
            size,
            guid,
            annotations: Annotations::new(),
            thrid: 0,
            savedate: UnixTime::ZERO,
            createdmodseq: ModSeq::ZERO,
            peer_guid: None,
        }
    }
}
