//! Item types and the per-type header lines ("schema") each side announces
//! after the VERSION line.
//!
//! Records are positional against the *sender's* header for their type, so
//! a receiver maps values to keys by name; keys it does not know are kept,
//! not dropped. [`Schema::dovecot_3_5`] is exactly what Dovecot 2.3 sends
//! (`items[]` in `dsync-ibc-stream.c`: required keys first, then optional
//! ones, in this order, with no `X` header).

use bytes::Bytes;

/// The item types of protocol 3.5, by their type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ItemKind {
    /// `X`: "I am closing" (no fields).
    Done,
    /// `H`: session settings, sent once by each side.
    Handshake,
    /// `S`: saved per-mailbox state of a stateful sync.
    MailboxState,
    /// `N`: one node of the mailbox tree.
    MailboxTreeNode,
    /// `D`: the mailbox/directory/unsubscribe tombstones.
    MailboxDelete,
    /// `B`: one mailbox's metadata.
    Mailbox,
    /// `A`: a mailbox attribute (METADATA).
    MailboxAttribute,
    /// `C`: a message save / expunge / flag change.
    MailChange,
    /// `R`: a request for a message body.
    MailRequest,
    /// `M`: a message, with its body following.
    Mail,
    /// `F`: the slave's final result.
    Finish,
    /// `c`: a cache field decision, only nested inside `B.cache_fields`.
    MailboxCacheField,
}

/// One row of Dovecot's item table.
struct KindInfo {
    kind: ItemKind,
    chr: u8,
    name: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    min_minor: u32,
}

const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: ItemKind::Done,
        chr: b'X',
        name: "done",
        required: &[],
        optional: &[],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::Handshake,
        chr: b'H',
        name: "handshake",
        required: &["hostname"],
        optional: &[
            "sync_ns_prefix",
            "sync_box",
            "sync_box_guid",
            "sync_type",
            "debug",
            "sync_visible_namespaces",
            "exclude_mailboxes",
            "send_mail_requests",
            "backup_send",
            "backup_recv",
            "lock_timeout",
            "no_mail_sync",
            "no_backup_overwrite",
            "purge_remote",
            "no_notify",
            "sync_since_timestamp",
            "sync_max_size",
            "sync_flags",
            "sync_until_timestamp",
            "virtual_all_box",
            "empty_hdr_workaround",
            "import_commit_msgs_interval",
            "hashed_headers",
            "alt_char",
        ],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::MailboxState,
        chr: b'S',
        name: "mailbox_state",
        required: &[
            "mailbox_guid",
            "last_uidvalidity",
            "last_common_uid",
            "last_common_modseq",
            "last_common_pvt_modseq",
        ],
        optional: &["last_messages_count", "changes_during_sync"],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::MailboxTreeNode,
        chr: b'N',
        name: "mailbox_tree_node",
        required: &["name", "existence"],
        optional: &[
            "mailbox_guid",
            "uid_validity",
            "uid_next",
            "last_renamed_or_created",
            "subscribed",
            "last_subscription_change",
        ],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::MailboxDelete,
        chr: b'D',
        name: "mailbox_delete",
        required: &["hierarchy_sep"],
        optional: &["escape_char", "mailboxes", "dirs", "unsubscribes"],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::Mailbox,
        chr: b'B',
        name: "mailbox",
        required: &[
            "mailbox_guid",
            "uid_validity",
            "uid_next",
            "messages_count",
            "first_recent_uid",
            "highest_modseq",
            "highest_pvt_modseq",
        ],
        optional: &[
            "mailbox_lost",
            "mailbox_ignore",
            "cache_fields",
            "have_guids",
            "have_save_guids",
            "have_only_guid128",
        ],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::MailboxAttribute,
        chr: b'A',
        name: "mailbox_attribute",
        required: &["type", "key"],
        optional: &["value", "stream", "deleted", "last_change", "modseq"],
        min_minor: 1,
    },
    KindInfo {
        kind: ItemKind::MailChange,
        chr: b'C',
        name: "mail_change",
        required: &["type", "uid"],
        optional: &[
            "guid",
            "hdr_hash",
            "modseq",
            "pvt_modseq",
            "add_flags",
            "remove_flags",
            "final_flags",
            "keywords_reset",
            "keyword_changes",
            "received_timestamp",
            "virtual_size",
        ],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::MailRequest,
        chr: b'R',
        name: "mail_request",
        required: &[],
        optional: &["guid", "uid"],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::Mail,
        chr: b'M',
        name: "mail",
        required: &[],
        optional: &[
            "guid",
            "uid",
            "pop3_uidl",
            "pop3_order",
            "received_date",
            "saved_date",
            "stream",
        ],
        min_minor: 0,
    },
    KindInfo {
        kind: ItemKind::Finish,
        chr: b'F',
        name: "finish",
        required: &[],
        optional: &["error", "mail_error", "require_full_resync"],
        min_minor: 3,
    },
    KindInfo {
        kind: ItemKind::MailboxCacheField,
        chr: b'c',
        name: "mailbox_cache_field",
        required: &["name", "decision"],
        optional: &["last_used"],
        min_minor: 0,
    },
];

impl ItemKind {
    fn info(self) -> &'static KindInfo {
        KINDS
            .iter()
            .find(|k| k.kind == self)
            .expect("every kind has a table row")
    }

    /// The type byte on the wire.
    pub fn chr(self) -> u8 {
        self.info().chr
    }

    /// Dovecot's name for the item (as in its error messages).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The kind for a type byte, if it is one of protocol 3.5's.
    pub fn from_chr(chr: u8) -> Option<Self> {
        KINDS.iter().find(|k| k.chr == chr).map(|k| k.kind)
    }

    /// Keys a header for this kind must declare and every record must fill.
    pub fn required_keys(self) -> &'static [&'static str] {
        self.info().required
    }

    /// Keys Dovecot 2.3 declares after the required ones.
    pub fn optional_keys(self) -> &'static [&'static str] {
        self.info().optional
    }

    /// The protocol minor version that introduced this kind.
    pub fn min_minor(self) -> u32 {
        self.info().min_minor
    }

    /// Every kind, in the order Dovecot announces headers.
    pub fn all() -> impl Iterator<Item = ItemKind> {
        KINDS.iter().map(|k| k.kind)
    }
}

/// One header line: the type byte and the sender's keys, in column order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemHeader {
    /// The type byte (`H`, `S`, …; any byte for kinds we do not know).
    pub chr: u8,
    /// Column names, in the order the sender's records use.
    pub keys: Vec<Bytes>,
}

impl ItemHeader {
    /// The header Dovecot 2.3 announces for `kind`.
    pub fn dovecot(kind: ItemKind) -> Self {
        let keys = kind
            .required_keys()
            .iter()
            .chain(kind.optional_keys())
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect();
        Self {
            chr: kind.chr(),
            keys,
        }
    }

    /// Column of `key`, if declared.
    pub fn index_of(&self, key: &[u8]) -> Option<usize> {
        self.keys.iter().position(|k| k.as_ref() == key)
    }
}

/// The set of headers one side announced, at most one per type byte
/// (a later header for the same byte replaces the earlier, as in Dovecot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    headers: Vec<ItemHeader>,
}

impl Schema {
    /// An empty schema (nothing announced yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly the headers Dovecot 2.3 (protocol 3.5) announces, in its order.
    pub fn dovecot_3_5() -> Self {
        let headers = ItemKind::all()
            .filter(|k| *k != ItemKind::Done)
            .map(ItemHeader::dovecot)
            .collect();
        Self { headers }
    }

    /// Add or replace the header for its type byte.
    pub fn insert(&mut self, header: ItemHeader) {
        match self.headers.iter_mut().find(|h| h.chr == header.chr) {
            Some(h) => *h = header,
            None => self.headers.push(header),
        }
    }

    /// The header for a type byte.
    pub fn get(&self, chr: u8) -> Option<&ItemHeader> {
        self.headers.iter().find(|h| h.chr == chr)
    }

    /// Headers in the order they were announced.
    pub fn headers(&self) -> &[ItemHeader] {
        &self.headers
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether nothing was announced.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
}
