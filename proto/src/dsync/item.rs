//! Typed dsync items and their mapping to and from a record's positional
//! values under a header.
//!
//! The typed model is Dovecot's own (`struct dsync_mailbox`,
//! `dsync_mail_change`, …): a number Dovecot omits when zero is a plain
//! number here with 0 meaning "not sent", a string Dovecot may send as NULL
//! is an `Option`, a boolean is "present with an empty value" vs NULL. The
//! encoder writes exactly the fields Dovecot's writer would for the same
//! values, so a stream Dovecot wrote re-encodes byte for byte. Fields under
//! keys this crate does not know are kept in `extra` (in the sender's column
//! order) and written back under the same key.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::escape::{join_list, join_values, split_list, split_values};
use super::schema::{ItemHeader, ItemKind};

/// Fields under keys this crate does not know: (key, value), non-NULL only.
pub type Extra = Vec<(Bytes, Bytes)>;

/// Message flag bits as `C.add_flags/remove_flags/final_flags` carry them
/// (Dovecot's `enum mail_flags`).
pub mod flags {
    /// `\Answered`
    pub const ANSWERED: u8 = 0x01;
    /// `\Flagged`
    pub const FLAGGED: u8 = 0x02;
    /// `\Deleted`
    pub const DELETED: u8 = 0x04;
    /// `\Seen`
    pub const SEEN: u8 = 0x08;
    /// `\Draft`
    pub const DRAFT: u8 = 0x10;
    /// `\Recent` (appears in `final_flags`)
    pub const RECENT: u8 = 0x20;
}

/// A 128-bit GUID (mailbox GUIDs, tombstones, `sync_box_guid`).
/// Grammar: exactly 32 hex digits; written lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Guid128(pub [u8; 16]);

impl Guid128 {
    /// Parse 32 hex digits (either case).
    pub fn parse(s: &[u8]) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    fn to_bytes(self) -> Bytes {
        Bytes::from(hex::encode(self.0))
    }
}

impl std::fmt::Debug for Guid128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl std::fmt::Display for Guid128 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

/// `H.sync_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SyncType {
    /// `f`: message-sync every mailbox.
    Full,
    /// `c`: skip mailboxes whose metadata is equal ("fast").
    Changed,
    /// `s`: stateful, from the `S` records.
    State,
}

/// `N.existence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Existence {
    /// `n`: a directory only (no mailbox).
    Nonexistent,
    /// `y`: a mailbox.
    Exists,
    /// `d`: deleted.
    Deleted,
}

/// `A.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum AttributeType {
    /// `p`
    Private,
    /// `s`
    Shared,
}

/// `C.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ChangeType {
    /// `s`: the message exists (new since the last common UID).
    Save,
    /// `e`: expunged.
    Expunge,
    /// `f`: flags/keywords changed.
    FlagChange,
}

/// `c.decision` base value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum CacheDecisionKind {
    /// `n`
    No,
    /// `t`
    Temp,
    /// `y`
    Yes,
}

/// `c.decision`: base value plus the `F` (forced) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CacheDecision {
    /// Base decision.
    pub kind: CacheDecisionKind,
    /// Whether the decision is forced (`F`).
    pub forced: bool,
}

/// One `c` record nested in `B.cache_fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheField {
    /// Cache field name (`flags`, `hdr.message-id`, …).
    pub name: Bytes,
    /// Caching decision.
    pub decision: CacheDecision,
    /// Last use (unix time); 0 = not sent.
    pub last_used: i64,
    /// Unknown keys.
    pub extra: Extra,
}

/// `H`: each side's settings, sent once after the headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handshake {
    /// Sender's hostname (required).
    pub hostname: Bytes,
    /// Namespace prefixes to sync.
    pub sync_ns_prefix: Option<Bytes>,
    /// Only this mailbox (name).
    pub sync_box: Option<Bytes>,
    /// Only this mailbox (GUID).
    pub sync_box_guid: Option<Guid128>,
    /// Sync type (master only).
    pub sync_type: Option<SyncType>,
    /// `debug`
    pub debug: bool,
    /// `sync_visible_namespaces`
    pub sync_visible_namespaces: bool,
    /// Mailbox patterns to skip (`None` = not sent).
    pub exclude_mailboxes: Option<Vec<Bytes>>,
    /// Bodies only on request (`R`).
    pub send_mail_requests: bool,
    /// This side is a backup source.
    pub backup_send: bool,
    /// This side is a backup destination.
    pub backup_recv: bool,
    /// Lock timeout seconds; 0 = not sent.
    pub lock_timeout: u32,
    /// `no_mail_sync`
    pub no_mail_sync: bool,
    /// `no_backup_overwrite` (`sync -1`)
    pub no_backup_overwrite: bool,
    /// `purge_remote`
    pub purge_remote: bool,
    /// `no_notify`
    pub no_notify: bool,
    /// Only mails saved since (unix time); 0 = not sent.
    pub sync_since_timestamp: i64,
    /// Only mails up to this size; 0 = not sent.
    pub sync_max_size: u64,
    /// Only mails with these flags.
    pub sync_flags: Option<Bytes>,
    /// Only mails saved until (unix time); 0 = not sent. (Dovecot 2.3.19
    /// writes `sync_since_timestamp`'s value here, a bug we do not copy.)
    pub sync_until_timestamp: i64,
    /// Virtual \All mailbox name.
    pub virtual_all_box: Option<Bytes>,
    /// `empty_hdr_workaround`
    pub empty_hdr_workaround: bool,
    /// Import commit interval; 0 = not sent.
    pub import_commit_msgs_interval: u32,
    /// Headers hashed for GUID-less backends. Dovecot always sends this
    /// key, each name followed by a TAB (the slave sends it empty).
    pub hashed_headers: Vec<Bytes>,
    /// Replacement for unrepresentable name characters.
    pub alt_char: Option<u8>,
    /// Unknown keys.
    pub extra: Extra,
}

/// `S`: saved per-mailbox state (stateful sync).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailboxState {
    /// Mailbox GUID.
    pub mailbox_guid: Guid128,
    /// UIDVALIDITY at the last sync.
    pub last_uidvalidity: u32,
    /// Highest UID both sides had.
    pub last_common_uid: u32,
    /// HIGHESTMODSEQ both sides had.
    pub last_common_modseq: u64,
    /// Private HIGHESTMODSEQ both sides had.
    pub last_common_pvt_modseq: u64,
    /// Message count at the last sync (always sent by Dovecot).
    pub last_messages_count: u32,
    /// The last sync saw concurrent changes.
    pub changes_during_sync: bool,
    /// Unknown keys.
    pub extra: Extra,
}

/// `N`: one mailbox tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxTreeNode {
    /// Hierarchy parts (separator-independent), at least one.
    pub name: Vec<Bytes>,
    /// Existence.
    pub existence: Existence,
    /// Mailbox GUID (`None` for directories).
    pub mailbox_guid: Option<Guid128>,
    /// 0 = not sent.
    pub uid_validity: u32,
    /// 0 = not sent.
    pub uid_next: u32,
    /// Unix time; 0 = not sent.
    pub last_renamed_or_created: i64,
    /// Subscribed.
    pub subscribed: bool,
    /// Unix time; 0 = not sent.
    pub last_subscription_change: i64,
    /// Unknown keys.
    pub extra: Extra,
}

/// One tombstone in `D.mailboxes|dirs|unsubscribes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Tombstone {
    /// Mailbox GUID, or SHA-1-of-name prefix for dirs/unsubscribes.
    pub guid: Guid128,
    /// When (unix time).
    pub timestamp: i64,
}

/// `D`: all tombstones of one side (a single record per sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxDelete {
    /// Sender's hierarchy separator.
    pub hierarchy_sep: u8,
    /// Sender's name escape char (`None` = none; always sent by Dovecot).
    pub escape_char: Option<u8>,
    /// Deleted mailboxes.
    pub mailboxes: Vec<Tombstone>,
    /// Deleted directories.
    pub dirs: Vec<Tombstone>,
    /// Unsubscriptions.
    pub unsubscribes: Vec<Tombstone>,
    /// Unknown keys.
    pub extra: Extra,
}

/// `B`: one mailbox's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Mailbox GUID.
    pub mailbox_guid: Guid128,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// UIDNEXT.
    pub uid_next: u32,
    /// Messages.
    pub messages_count: u32,
    /// First \Recent UID.
    pub first_recent_uid: u32,
    /// HIGHESTMODSEQ.
    pub highest_modseq: u64,
    /// Private HIGHESTMODSEQ.
    pub highest_pvt_modseq: u64,
    /// The mailbox vanished on the sender.
    pub mailbox_lost: bool,
    /// Skip this mailbox.
    pub mailbox_ignore: bool,
    /// Cache decisions (always sent by Dovecot, possibly empty).
    pub cache_fields: Vec<CacheField>,
    /// Messages have GUIDs.
    pub have_guids: bool,
    /// Saves can set GUIDs.
    pub have_save_guids: bool,
    /// GUIDs are 128-bit only.
    pub have_only_guid128: bool,
    /// Unknown keys.
    pub extra: Extra,
}

/// `A`: a mailbox attribute; a body follows when `stream` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxAttribute {
    /// Private or shared.
    pub attr_type: AttributeType,
    /// Attribute key.
    pub key: Bytes,
    /// Inline value.
    pub value: Option<Bytes>,
    /// The value follows as a dot-encoded body.
    pub stream: bool,
    /// Deleted.
    pub deleted: bool,
    /// Unix time; 0 = not sent.
    pub last_change: i64,
    /// 0 = not sent.
    pub modseq: u64,
    /// Unknown keys.
    pub extra: Extra,
}

/// `C`: a message change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailChange {
    /// Save, expunge or flag change.
    pub change_type: ChangeType,
    /// UID.
    pub uid: u32,
    /// Message GUID (maildir base name, or 128-bit hex).
    pub guid: Option<Bytes>,
    /// Header hash for GUID-less backends.
    pub hdr_hash: Option<Bytes>,
    /// 0 = not sent.
    pub modseq: u64,
    /// 0 = not sent.
    pub pvt_modseq: u64,
    /// Flag bits added ([`flags`]); 0 = not sent. Hex on the wire.
    pub add_flags: u8,
    /// Flag bits removed; 0 = not sent. Hex on the wire.
    pub remove_flags: u8,
    /// Final flag bits; 0 = not sent. Hex on the wire.
    pub final_flags: u8,
    /// Keywords were reset.
    pub keywords_reset: bool,
    /// `+kw`, `-kw`, `=kw`, `&kw` entries (see [`KeywordChangeKind`]),
    /// kept as sent; empty = not sent.
    pub keyword_changes: Vec<Bytes>,
    /// Unix time; 0 = not sent. Hex on the wire.
    pub received_timestamp: u64,
    /// Virtual size (`u64::MAX` = unknown); 0 = not sent. Hex on the wire.
    pub virtual_size: u64,
    /// Unknown keys.
    pub extra: Extra,
}

/// What one `C.keyword_changes` entry says, from its prefix byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum KeywordChangeKind {
    /// `+kw`: added since the last sync.
    Add,
    /// `-kw`: removed since the last sync.
    Remove,
    /// `=kw`: set now, unchanged.
    Final,
    /// `&kw`: added since the last sync and set now.
    AddAndFinal,
}

impl KeywordChangeKind {
    /// The prefix byte on the wire.
    pub fn prefix(self) -> u8 {
        match self {
            KeywordChangeKind::Add => b'+',
            KeywordChangeKind::Remove => b'-',
            KeywordChangeKind::Final => b'=',
            KeywordChangeKind::AddAndFinal => b'&',
        }
    }

    /// Split an entry into its kind and keyword; `None` for an empty
    /// entry or an unknown prefix.
    pub fn parse(entry: &[u8]) -> Option<(Self, &[u8])> {
        let (&p, kw) = entry.split_first()?;
        let kind = match p {
            b'+' => KeywordChangeKind::Add,
            b'-' => KeywordChangeKind::Remove,
            b'=' => KeywordChangeKind::Final,
            b'&' => KeywordChangeKind::AddAndFinal,
            _ => return None,
        };
        Some((kind, kw))
    }

    /// The wire entry for `keyword` with this prefix.
    pub fn entry(self, keyword: &[u8]) -> Bytes {
        let mut v = Vec::with_capacity(keyword.len() + 1);
        v.push(self.prefix());
        v.extend_from_slice(keyword);
        Bytes::from(v)
    }
}

/// `R`: a request for a body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailRequest {
    /// Message GUID.
    pub guid: Option<Bytes>,
    /// Remote UID; 0 = not sent.
    pub uid: u32,
    /// Unknown keys.
    pub extra: Extra,
}

/// `M`: a message; its body follows when `stream` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mail {
    /// Message GUID.
    pub guid: Option<Bytes>,
    /// UID; 0 = not sent.
    pub uid: u32,
    /// POP3 UIDL (Dovecot sends an empty one).
    pub pop3_uidl: Option<Bytes>,
    /// 0 = not sent.
    pub pop3_order: u32,
    /// Unix time; sent when positive.
    pub received_date: i64,
    /// Unix time; 0 = not sent.
    pub saved_date: i64,
    /// The body follows.
    pub stream: bool,
    /// Unknown keys.
    pub extra: Extra,
}

/// `F`: the slave's result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Finish {
    /// Error text. (An empty error alone encodes as a bare `F`, which reads
    /// back as no error, in Dovecot too.)
    pub error: Option<Bytes>,
    /// Dovecot `enum mail_error`; 0 = not sent.
    pub mail_error: i32,
    /// The state must be discarded.
    pub require_full_resync: bool,
    /// Unknown keys.
    pub extra: Extra,
}

/// A record of a type this crate does not know, kept positionally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownItem {
    /// Type byte.
    pub chr: u8,
    /// Values in the sender's column order.
    pub values: Vec<Option<Bytes>>,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item {
    /// `H`
    Handshake(Handshake),
    /// `S`
    MailboxState(MailboxState),
    /// `N`
    MailboxTreeNode(MailboxTreeNode),
    /// `D`
    MailboxDelete(MailboxDelete),
    /// `B`
    Mailbox(Mailbox),
    /// `A`
    MailboxAttribute(MailboxAttribute),
    /// `C`
    MailChange(MailChange),
    /// `R`
    MailRequest(MailRequest),
    /// `M`
    Mail(Mail),
    /// `F`
    Finish(Finish),
    /// Any other announced type.
    Unknown(UnknownItem),
}

impl Item {
    /// The record's type byte.
    pub fn chr(&self) -> u8 {
        match self {
            Item::Handshake(_) => b'H',
            Item::MailboxState(_) => b'S',
            Item::MailboxTreeNode(_) => b'N',
            Item::MailboxDelete(_) => b'D',
            Item::Mailbox(_) => b'B',
            Item::MailboxAttribute(_) => b'A',
            Item::MailChange(_) => b'C',
            Item::MailRequest(_) => b'R',
            Item::Mail(_) => b'M',
            Item::Finish(_) => b'F',
            Item::Unknown(u) => u.chr,
        }
    }

    /// Whether a dot-encoded body follows this record.
    pub fn has_body(&self) -> bool {
        match self {
            Item::Mail(m) => m.stream,
            Item::MailboxAttribute(a) => a.stream,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// decoding

fn parse_dec_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_dec_i64(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_hex_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 || !v.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
}

/// Reads named fields of one record under the sender's header, remembering
/// which columns the typed item used so the rest become `extra`.
pub(crate) struct Reader<'a> {
    item: &'static str,
    header: &'a ItemHeader,
    values: &'a [Option<Bytes>],
    used: Vec<bool>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(kind: ItemKind, header: &'a ItemHeader, values: &'a [Option<Bytes>]) -> Self {
        Self {
            item: kind.name(),
            header,
            values,
            used: vec![false; header.keys.len()],
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Bytes> {
        let i = self.header.index_of(key.as_bytes())?;
        self.used[i] = true;
        self.values.get(i).and_then(|v| v.as_ref())
    }

    fn invalid(&self, key: &'static str) -> DecodeError {
        DecodeError::InvalidField {
            item: self.item,
            key,
        }
    }

    fn req(&mut self, key: &'static str) -> Result<&'a Bytes, DecodeError> {
        self.get(key).ok_or(DecodeError::MissingField {
            item: self.item,
            key,
        })
    }

    fn string(&mut self, key: &'static str) -> Option<Bytes> {
        self.get(key).cloned()
    }

    fn flag(&mut self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    fn with<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| self.invalid(key)),
        }
    }

    fn req_with<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let v = self.req(key)?;
        parse(v).ok_or_else(|| self.invalid(key))
    }

    fn u32(&mut self, key: &'static str) -> Result<u32, DecodeError> {
        Ok(self
            .with(key, |v| {
                parse_dec_u64(v).and_then(|n| u32::try_from(n).ok())
            })?
            .unwrap_or(0))
    }

    fn req_u32(&mut self, key: &'static str) -> Result<u32, DecodeError> {
        self.req_with(key, |v| {
            parse_dec_u64(v).and_then(|n| u32::try_from(n).ok())
        })
    }

    fn u64(&mut self, key: &'static str) -> Result<u64, DecodeError> {
        Ok(self.with(key, parse_dec_u64)?.unwrap_or(0))
    }

    fn req_u64(&mut self, key: &'static str) -> Result<u64, DecodeError> {
        self.req_with(key, parse_dec_u64)
    }

    fn i64(&mut self, key: &'static str) -> Result<i64, DecodeError> {
        Ok(self.with(key, parse_dec_i64)?.unwrap_or(0))
    }

    /// A number Dovecot rejects when zero.
    fn nonzero<T: Default + PartialEq>(
        &mut self,
        key: &'static str,
        v: T,
    ) -> Result<T, DecodeError> {
        let present = self
            .header
            .index_of(key.as_bytes())
            .and_then(|i| self.values.get(i))
            .is_some_and(|v| v.is_some());
        if present && v == T::default() {
            return Err(self.invalid(key));
        }
        Ok(v)
    }

    fn hex_u8(&mut self, key: &'static str) -> Result<u8, DecodeError> {
        Ok(self
            .with(key, |v| parse_hex_u64(v).and_then(|n| u8::try_from(n).ok()))?
            .unwrap_or(0))
    }

    fn hex_u64(&mut self, key: &'static str) -> Result<u64, DecodeError> {
        Ok(self.with(key, parse_hex_u64)?.unwrap_or(0))
    }

    fn guid(&mut self, key: &'static str) -> Result<Option<Guid128>, DecodeError> {
        self.with(key, Guid128::parse)
    }

    fn req_guid(&mut self, key: &'static str) -> Result<Guid128, DecodeError> {
        self.req_with(key, Guid128::parse)
    }

    /// Columns no typed field claimed, with their non-NULL values.
    pub(crate) fn extra(self) -> Extra {
        self.header
            .keys
            .iter()
            .zip(&self.used)
            .enumerate()
            .filter(|(_, (_, used))| !**used)
            // A key declared twice is only ever read from its first column
            // (as in Dovecot); the later copies cannot be written back under
            // that key without clobbering it, so they are not kept.
            .filter(|(i, (k, _))| self.header.index_of(k) == Some(*i))
            .filter_map(|(i, (k, _))| Some((k.clone(), self.values.get(i)?.clone()?)))
            .collect()
    }
}

fn one_byte(v: &[u8]) -> Option<u8> {
    match v {
        [b] => Some(*b),
        _ => None,
    }
}

fn parse_tombstones(v: &[u8]) -> Option<Vec<Tombstone>> {
    if v.is_empty() {
        return Some(Vec::new());
    }
    let words: Vec<&[u8]> = v.split(|&b| b == b' ').collect();
    if words.len() % 2 == 1 {
        return None;
    }
    words
        .chunks(2)
        .map(|p| {
            Some(Tombstone {
                guid: Guid128::parse(p[0])?,
                timestamp: parse_dec_i64(p[1])?,
            })
        })
        .collect()
}

fn parse_decision(v: &[u8]) -> Option<CacheDecision> {
    let kind = match v.first()? {
        b'n' => CacheDecisionKind::No,
        b't' => CacheDecisionKind::Temp,
        b'y' => CacheDecisionKind::Yes,
        _ => return None,
    };
    match &v[1..] {
        b"" => Some(CacheDecision {
            kind,
            forced: false,
        }),
        b"F" => Some(CacheDecision { kind, forced: true }),
        _ => None,
    }
}

/// Decode one record's values (already split) into a typed item, given the
/// sender's header for its type and for nested `c` records.
pub(crate) fn decode_item(
    kind: ItemKind,
    header: &ItemHeader,
    values: &[Option<Bytes>],
    cache_header: Option<&ItemHeader>,
) -> Result<Item, DecodeError> {
    let mut r = Reader::new(kind, header, values);
    let item = match kind {
        ItemKind::Handshake => {
            let hostname = r.req("hostname")?.clone();
            let sync_type = r.with("sync_type", |v| match v {
                b"f" => Some(SyncType::Full),
                b"c" => Some(SyncType::Changed),
                b"s" => Some(SyncType::State),
                _ => None,
            })?;
            let exclude_mailboxes = r.string("exclude_mailboxes").map(|v| split_list(&v));
            let hashed_headers = r
                .string("hashed_headers")
                .map(|v| {
                    // each name is followed by a TAB; tolerate a missing last one
                    let mut list = split_list(&v);
                    if list.last().is_some_and(|l| l.is_empty()) {
                        list.pop();
                    }
                    list
                })
                .unwrap_or_default();
            let lock_timeout = r.u32("lock_timeout")?;
            let import_commit_msgs_interval = r.u32("import_commit_msgs_interval")?;
            let sync_since_timestamp = r.i64("sync_since_timestamp")?;
            let sync_until_timestamp = r.i64("sync_until_timestamp")?;
            let sync_max_size = r.u64("sync_max_size")?;
            Item::Handshake(Handshake {
                hostname,
                sync_ns_prefix: r.string("sync_ns_prefix"),
                sync_box: r.string("sync_box"),
                sync_box_guid: r.guid("sync_box_guid")?,
                sync_type,
                debug: r.flag("debug"),
                sync_visible_namespaces: r.flag("sync_visible_namespaces"),
                exclude_mailboxes,
                send_mail_requests: r.flag("send_mail_requests"),
                backup_send: r.flag("backup_send"),
                backup_recv: r.flag("backup_recv"),
                lock_timeout: r.nonzero("lock_timeout", lock_timeout)?,
                no_mail_sync: r.flag("no_mail_sync"),
                no_backup_overwrite: r.flag("no_backup_overwrite"),
                purge_remote: r.flag("purge_remote"),
                no_notify: r.flag("no_notify"),
                sync_since_timestamp: r.nonzero("sync_since_timestamp", sync_since_timestamp)?,
                sync_max_size: r.nonzero("sync_max_size", sync_max_size)?,
                sync_flags: r.string("sync_flags"),
                sync_until_timestamp: r.nonzero("sync_until_timestamp", sync_until_timestamp)?,
                virtual_all_box: r.string("virtual_all_box"),
                empty_hdr_workaround: r.flag("empty_hdr_workaround"),
                import_commit_msgs_interval: r
                    .nonzero("import_commit_msgs_interval", import_commit_msgs_interval)?,
                hashed_headers,
                alt_char: r.with("alt_char", one_byte)?,
                extra: Vec::new(),
            })
        }
        ItemKind::MailboxState => Item::MailboxState(MailboxState {
            mailbox_guid: r.req_guid("mailbox_guid")?,
            last_uidvalidity: r.req_u32("last_uidvalidity")?,
            last_common_uid: r.req_u32("last_common_uid")?,
            last_common_modseq: r.req_u64("last_common_modseq")?,
            last_common_pvt_modseq: r.req_u64("last_common_pvt_modseq")?,
            last_messages_count: r.u32("last_messages_count")?,
            changes_during_sync: r.flag("changes_during_sync"),
            extra: Vec::new(),
        }),
        ItemKind::MailboxTreeNode => {
            let name = r.req("name")?;
            if name.is_empty() {
                return Err(r.invalid("name"));
            }
            let name = split_list(name);
            let existence = r.req_with("existence", |v| match v {
                b"n" => Some(Existence::Nonexistent),
                b"y" => Some(Existence::Exists),
                b"d" => Some(Existence::Deleted),
                _ => None,
            })?;
            Item::MailboxTreeNode(MailboxTreeNode {
                name,
                existence,
                mailbox_guid: r.guid("mailbox_guid")?,
                uid_validity: r.u32("uid_validity")?,
                uid_next: r.u32("uid_next")?,
                last_renamed_or_created: r.i64("last_renamed_or_created")?,
                subscribed: r.flag("subscribed"),
                last_subscription_change: r.i64("last_subscription_change")?,
                extra: Vec::new(),
            })
        }
        ItemKind::MailboxDelete => Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: r.req_with("hierarchy_sep", one_byte)?,
            escape_char: r
                .with("escape_char", |v| match v {
                    [] => Some(None),
                    [b] => Some(Some(*b)),
                    _ => None,
                })?
                .flatten(),
            mailboxes: r.with("mailboxes", parse_tombstones)?.unwrap_or_default(),
            dirs: r.with("dirs", parse_tombstones)?.unwrap_or_default(),
            unsubscribes: r
                .with("unsubscribes", parse_tombstones)?
                .unwrap_or_default(),
            extra: Vec::new(),
        }),
        ItemKind::Mailbox => {
            let mut cache_fields = Vec::new();
            if let Some(v) = r.get("cache_fields") {
                if !v.is_empty() {
                    let ch = cache_header.ok_or(DecodeError::MissingHeader {
                        item: ItemKind::MailboxCacheField.name(),
                    })?;
                    for rec in v.split(|&b| b == b'\n') {
                        let vals = split_values(rec);
                        if vals.len() > ch.keys.len() {
                            return Err(DecodeError::TooManyValues {
                                chr: b'c',
                                declared: ch.keys.len(),
                                got: vals.len(),
                            });
                        }
                        let mut cr = Reader::new(ItemKind::MailboxCacheField, ch, &vals);
                        let field = CacheField {
                            name: cr.req("name")?.clone(),
                            decision: cr.req_with("decision", parse_decision)?,
                            last_used: cr.i64("last_used")?,
                            extra: Vec::new(),
                        };
                        cache_fields.push(CacheField {
                            extra: cr.extra(),
                            ..field
                        });
                    }
                }
            }
            Item::Mailbox(Mailbox {
                mailbox_guid: r.req_guid("mailbox_guid")?,
                uid_validity: r.req_u32("uid_validity")?,
                uid_next: r.req_u32("uid_next")?,
                messages_count: r.req_u32("messages_count")?,
                first_recent_uid: r.req_u32("first_recent_uid")?,
                highest_modseq: r.req_u64("highest_modseq")?,
                highest_pvt_modseq: r.req_u64("highest_pvt_modseq")?,
                mailbox_lost: r.flag("mailbox_lost"),
                mailbox_ignore: r.flag("mailbox_ignore"),
                cache_fields,
                have_guids: r.flag("have_guids"),
                have_save_guids: r.flag("have_save_guids"),
                have_only_guid128: r.flag("have_only_guid128"),
                extra: Vec::new(),
            })
        }
        ItemKind::MailboxAttribute => Item::MailboxAttribute(MailboxAttribute {
            attr_type: r.req_with("type", |v| match v {
                b"p" => Some(AttributeType::Private),
                b"s" => Some(AttributeType::Shared),
                _ => None,
            })?,
            key: r.req("key")?.clone(),
            value: r.string("value"),
            stream: r.flag("stream"),
            deleted: r.flag("deleted"),
            last_change: r.i64("last_change")?,
            modseq: r.u64("modseq")?,
            extra: Vec::new(),
        }),
        ItemKind::MailChange => Item::MailChange(MailChange {
            change_type: r.req_with("type", |v| match v {
                b"s" => Some(ChangeType::Save),
                b"e" => Some(ChangeType::Expunge),
                b"f" => Some(ChangeType::FlagChange),
                _ => None,
            })?,
            uid: r.req_u32("uid")?,
            guid: r.string("guid"),
            hdr_hash: r.string("hdr_hash"),
            modseq: r.u64("modseq")?,
            pvt_modseq: r.u64("pvt_modseq")?,
            add_flags: r.hex_u8("add_flags")?,
            remove_flags: r.hex_u8("remove_flags")?,
            final_flags: r.hex_u8("final_flags")?,
            keywords_reset: r.flag("keywords_reset"),
            keyword_changes: r
                .string("keyword_changes")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            received_timestamp: r.hex_u64("received_timestamp")?,
            virtual_size: r.hex_u64("virtual_size")?,
            extra: Vec::new(),
        }),
        ItemKind::MailRequest => Item::MailRequest(MailRequest {
            guid: r.string("guid"),
            uid: r.u32("uid")?,
            extra: Vec::new(),
        }),
        ItemKind::Mail => Item::Mail(Mail {
            guid: r.string("guid"),
            uid: r.u32("uid")?,
            pop3_uidl: r.string("pop3_uidl"),
            pop3_order: r.u32("pop3_order")?,
            // Dovecot's exporter sends received_date only when > 0 (and
            // so does ours): a negative one means "unknown", as absent, so
            // that what is decoded is what would be sent on (fuzz finding).
            received_date: r.i64("received_date")?.max(0),
            saved_date: r.i64("saved_date")?,
            stream: r.flag("stream"),
            extra: Vec::new(),
        }),
        ItemKind::Finish => Item::Finish(Finish {
            error: r.string("error"),
            mail_error: r
                .with("mail_error", |v| {
                    parse_dec_i64(v).and_then(|n| i32::try_from(n).ok())
                })?
                .unwrap_or(0),
            require_full_resync: r.flag("require_full_resync"),
            extra: Vec::new(),
        }),
        ItemKind::Done | ItemKind::MailboxCacheField => {
            unreachable!("the decoder handles X and refuses top-level c itself")
        }
    };
    let extra = r.extra();
    Ok(set_extra(item, extra))
}

fn set_extra(mut item: Item, extra: Extra) -> Item {
    match &mut item {
        Item::Handshake(x) => x.extra = extra,
        Item::MailboxState(x) => x.extra = extra,
        Item::MailboxTreeNode(x) => x.extra = extra,
        Item::MailboxDelete(x) => x.extra = extra,
        Item::Mailbox(x) => x.extra = extra,
        Item::MailboxAttribute(x) => x.extra = extra,
        Item::MailChange(x) => x.extra = extra,
        Item::MailRequest(x) => x.extra = extra,
        Item::Mail(x) => x.extra = extra,
        Item::Finish(x) => x.extra = extra,
        Item::Unknown(_) => {}
    }
    item
}

// ---------------------------------------------------------------------------
// encoding

/// Named non-NULL values of one record, as Dovecot's writer would add them.
/// A "soft" value is one Dovecot always writes even when it says nothing
/// (an empty `hashed_headers`, `cache_fields`, `escape_char`, a zero
/// `last_messages_count`): it is left out when the announced header lacks
/// its key, so items still encode under an older peer's schema.
#[derive(Default)]
struct Writer {
    fields: Vec<(&'static str, Bytes, bool)>,
}

impl Writer {
    fn put(&mut self, key: &'static str, v: impl Into<Bytes>) {
        self.fields.push((key, v.into(), false));
    }
    fn put_soft(&mut self, key: &'static str, v: impl Into<Bytes>, says_nothing: bool) {
        self.fields.push((key, v.into(), says_nothing));
    }
    fn opt(&mut self, key: &'static str, v: &Option<Bytes>) {
        if let Some(v) = v {
            self.put(key, v.clone());
        }
    }
    fn flag(&mut self, key: &'static str, on: bool) {
        if on {
            self.put(key, Bytes::new());
        }
    }
    fn dec(&mut self, key: &'static str, n: impl std::fmt::Display) {
        self.put(key, n.to_string());
    }
    fn dec_nz<T: std::fmt::Display + Default + PartialEq>(&mut self, key: &'static str, n: T) {
        if n != T::default() {
            self.dec(key, n);
        }
    }
    fn hex_nz(&mut self, key: &'static str, n: u64) {
        if n != 0 {
            self.put(key, format!("{n:x}"));
        }
    }
}

/// Place named values into the header's columns; trailing NULLs are left
/// off as Dovecot's serializer does.
fn to_columns(
    chr: u8,
    header: &ItemHeader,
    w: Writer,
    extra: &Extra,
) -> Result<Vec<Option<Bytes>>, EncodeError> {
    let mut cols: Vec<Option<Bytes>> = vec![None; header.keys.len()];
    let named = w
        .fields
        .into_iter()
        .filter(|(k, _, soft)| !*soft || header.index_of(k.as_bytes()).is_some())
        .map(|(k, v, _)| (Bytes::from_static(k.as_bytes()), v));
    for (k, v) in named.chain(extra.iter().cloned()) {
        let i = header
            .index_of(&k)
            .ok_or_else(|| EncodeError::NotInSchema {
                chr,
                key: String::from_utf8_lossy(&k).into_owned(),
            })?;
        cols[i] = Some(v);
    }
    while cols.last().is_some_and(|c| c.is_none()) {
        cols.pop();
    }
    Ok(cols)
}

fn tombstones(list: &[Tombstone]) -> Bytes {
    let words: Vec<String> = list
        .iter()
        .map(|t| format!("{} {}", t.guid, t.timestamp))
        .collect();
    Bytes::from(words.join(" "))
}

/// The record values for `item` under the announced headers.
pub(crate) fn encode_item(
    item: &Item,
    header: &ItemHeader,
    cache_header: Option<&ItemHeader>,
) -> Result<Vec<Option<Bytes>>, EncodeError> {
    let mut w = Writer::default();
    let chr = item.chr();
    let extra = match item {
        Item::Handshake(h) => {
            w.put("hostname", h.hostname.clone());
            w.opt("sync_ns_prefix", &h.sync_ns_prefix);
            w.opt("sync_box", &h.sync_box);
            w.opt("virtual_all_box", &h.virtual_all_box);
            if let Some(list) = &h.exclude_mailboxes {
                w.put("exclude_mailboxes", join_list(list));
            }
            if let Some(g) = h.sync_box_guid {
                w.put("sync_box_guid", g.to_bytes());
            }
            if let Some(t) = h.sync_type {
                w.put(
                    "sync_type",
                    Bytes::from_static(match t {
                        SyncType::Full => b"f",
                        SyncType::Changed => b"c",
                        SyncType::State => b"s",
                    }),
                );
            }
            w.dec_nz("lock_timeout", h.lock_timeout);
            w.dec_nz("import_commit_msgs_interval", h.import_commit_msgs_interval);
            w.dec_nz("sync_since_timestamp", h.sync_since_timestamp);
            w.dec_nz("sync_until_timestamp", h.sync_until_timestamp);
            w.dec_nz("sync_max_size", h.sync_max_size);
            w.opt("sync_flags", &h.sync_flags);
            if let Some(c) = h.alt_char {
                w.put("alt_char", vec![c]);
            }
            w.flag("send_mail_requests", h.send_mail_requests);
            w.flag("backup_send", h.backup_send);
            w.flag("backup_recv", h.backup_recv);
            w.flag("debug", h.debug);
            w.flag("sync_visible_namespaces", h.sync_visible_namespaces);
            w.flag("no_mail_sync", h.no_mail_sync);
            w.flag("no_backup_overwrite", h.no_backup_overwrite);
            w.flag("purge_remote", h.purge_remote);
            w.flag("no_notify", h.no_notify);
            w.flag("empty_hdr_workaround", h.empty_hdr_workaround);
            let mut hh = Vec::new();
            for name in &h.hashed_headers {
                hh.extend_from_slice(&join_list(std::slice::from_ref(name)));
                hh.push(b'\t');
            }
            let empty = hh.is_empty();
            w.put_soft("hashed_headers", hh, empty);
            &h.extra
        }
        Item::MailboxState(s) => {
            w.put("mailbox_guid", s.mailbox_guid.to_bytes());
            w.dec("last_uidvalidity", s.last_uidvalidity);
            w.dec("last_common_uid", s.last_common_uid);
            w.dec("last_common_modseq", s.last_common_modseq);
            w.dec("last_common_pvt_modseq", s.last_common_pvt_modseq);
            w.put_soft(
                "last_messages_count",
                s.last_messages_count.to_string(),
                s.last_messages_count == 0,
            );
            w.flag("changes_during_sync", s.changes_during_sync);
            &s.extra
        }
        Item::MailboxTreeNode(n) => {
            if n.name.is_empty() || (n.name.len() == 1 && n.name[0].is_empty()) {
                return Err(EncodeError::InvalidValue {
                    item: "mailbox_tree_node",
                    key: "name",
                });
            }
            w.put("name", join_list(&n.name));
            w.put(
                "existence",
                Bytes::from_static(match n.existence {
                    Existence::Nonexistent => b"n",
                    Existence::Exists => b"y",
                    Existence::Deleted => b"d",
                }),
            );
            if let Some(g) = n.mailbox_guid {
                w.put("mailbox_guid", g.to_bytes());
            }
            w.dec_nz("uid_validity", n.uid_validity);
            w.dec_nz("uid_next", n.uid_next);
            w.dec_nz("last_renamed_or_created", n.last_renamed_or_created);
            w.dec_nz("last_subscription_change", n.last_subscription_change);
            w.flag("subscribed", n.subscribed);
            &n.extra
        }
        Item::MailboxDelete(d) => {
            w.put("hierarchy_sep", vec![d.hierarchy_sep]);
            w.put_soft(
                "escape_char",
                d.escape_char.map(|c| vec![c]).unwrap_or_default(),
                d.escape_char.is_none(),
            );
            for (key, list) in [
                ("mailboxes", &d.mailboxes),
                ("dirs", &d.dirs),
                ("unsubscribes", &d.unsubscribes),
            ] {
                if !list.is_empty() {
                    w.put(key, tombstones(list));
                }
            }
            &d.extra
        }
        Item::Mailbox(b) => {
            w.put("mailbox_guid", b.mailbox_guid.to_bytes());
            w.flag("mailbox_lost", b.mailbox_lost);
            w.flag("mailbox_ignore", b.mailbox_ignore);
            w.flag("have_guids", b.have_guids);
            w.flag("have_save_guids", b.have_save_guids);
            w.flag("have_only_guid128", b.have_only_guid128);
            w.dec("uid_validity", b.uid_validity);
            w.dec("uid_next", b.uid_next);
            w.dec("messages_count", b.messages_count);
            w.dec("first_recent_uid", b.first_recent_uid);
            w.dec("highest_modseq", b.highest_modseq);
            w.dec("highest_pvt_modseq", b.highest_pvt_modseq);
            let mut cf = Vec::new();
            if !b.cache_fields.is_empty() {
                let ch = cache_header.ok_or(EncodeError::NoHeader { chr: b'c' })?;
                for (i, f) in b.cache_fields.iter().enumerate() {
                    let mut fw = Writer::default();
                    fw.put("name", f.name.clone());
                    let mut d = vec![match f.decision.kind {
                        CacheDecisionKind::No => b'n',
                        CacheDecisionKind::Temp => b't',
                        CacheDecisionKind::Yes => b'y',
                    }];
                    if f.decision.forced {
                        d.push(b'F');
                    }
                    fw.put("decision", d);
                    fw.dec_nz("last_used", f.last_used);
                    if i > 0 {
                        cf.push(b'\n');
                    }
                    join_values(&mut cf, &to_columns(b'c', ch, fw, &f.extra)?);
                }
            }
            let empty = cf.is_empty();
            w.put_soft("cache_fields", cf, empty);
            &b.extra
        }
        Item::MailboxAttribute(a) => {
            w.put(
                "type",
                Bytes::from_static(match a.attr_type {
                    AttributeType::Private => b"p",
                    AttributeType::Shared => b"s",
                }),
            );
            w.put("key", a.key.clone());
            w.opt("value", &a.value);
            w.flag("stream", a.stream);
            w.flag("deleted", a.deleted);
            w.dec_nz("last_change", a.last_change);
            w.dec_nz("modseq", a.modseq);
            &a.extra
        }
        Item::MailChange(c) => {
            w.put(
                "type",
                Bytes::from_static(match c.change_type {
                    ChangeType::Save => b"s",
                    ChangeType::Expunge => b"e",
                    ChangeType::FlagChange => b"f",
                }),
            );
            w.dec("uid", c.uid);
            w.opt("guid", &c.guid);
            w.opt("hdr_hash", &c.hdr_hash);
            w.dec_nz("modseq", c.modseq);
            w.dec_nz("pvt_modseq", c.pvt_modseq);
            w.hex_nz("add_flags", c.add_flags.into());
            w.hex_nz("remove_flags", c.remove_flags.into());
            w.hex_nz("final_flags", c.final_flags.into());
            w.flag("keywords_reset", c.keywords_reset);
            if !c.keyword_changes.is_empty() {
                w.put("keyword_changes", join_list(&c.keyword_changes));
            }
            w.hex_nz("received_timestamp", c.received_timestamp);
            w.hex_nz("virtual_size", c.virtual_size);
            &c.extra
        }
        Item::MailRequest(r) => {
            w.opt("guid", &r.guid);
            w.dec_nz("uid", r.uid);
            &r.extra
        }
        Item::Mail(m) => {
            w.opt("guid", &m.guid);
            w.dec_nz("uid", m.uid);
            w.opt("pop3_uidl", &m.pop3_uidl);
            w.dec_nz("pop3_order", m.pop3_order);
            if m.received_date > 0 {
                w.dec("received_date", m.received_date);
            }
            w.dec_nz("saved_date", m.saved_date);
            w.flag("stream", m.stream);
            &m.extra
        }
        Item::Finish(f) => {
            w.opt("error", &f.error);
            w.dec_nz("mail_error", f.mail_error);
            w.flag("require_full_resync", f.require_full_resync);
            &f.extra
        }
        Item::Unknown(u) => {
            if u.values.len() > header.keys.len() {
                return Err(EncodeError::InvalidValue {
                    item: "unknown item",
                    key: "values",
                });
            }
            return Ok(u.values.clone());
        }
    };
    to_columns(chr, header, w, extra)
}
