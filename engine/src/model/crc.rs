//! The Cyrus replication checksums SYNC_CRC and SYNC_CRC_ANNOT, bit-exact
//! with Cyrus 3.2 – 3.6 (and unchanged since: the basic one is "locked in"
//! since 2.4).
//!
//! Both are XORs of per-record CRC-32s (the zlib / IEEE 802.3 CRC), so they
//! can be kept incrementally: XOR a record's contribution out before a
//! change and in after it. Expunged records contribute nothing.
//!
//! * basic: for each live record, CRC-32 of the ASCII text
//!   `"<uid> <modseq> <last_updated> (<flagcrc>) <internaldate> <guid>"`,
//!   where `flagcrc` is the XOR of the CRC-32s of the lower-cased names of
//!   the set flags (`\deleted`, `\answered`, `\flagged`, `\draft`, `\seen`,
//!   and each keyword lower-cased), all numbers in decimal. Starts at 0.
//! * annot: starts at 12345678 (0 before Cyrus 3.2). For each live record,
//!   for each per-message annotation with a value, CRC-32 of
//!   `"<uid> <entry> <userid> " + value bytes` (userid empty for shared
//!   values), plus the same for the virtual annotations Cyrus derives from
//!   the record: `/vendor/cmu/cyrus-imapd/thrid` (value: the conversation
//!   id in *unpadded* lower-case hex, although the wire pads it to 16
//!   digits), `…/savedate` and `…/createdmodseq` (decimal), each only when
//!   non-zero. Mailbox-level annotations do not count.
//!
//! The virtual annotations are included as a Cyrus mailbox of index minor
//! version ≥ 16 does, which is every mailbox a 3.2+ server creates. A
//! mailbox with no records has the pair (0, 12345678).
//!
//! This module only computes; deciding what a mismatch means is the
//! protocol machine's job.

use super::ids::Guid;
use super::record::{Record, SystemFlags};

/// The initial value of SYNC_CRC_ANNOT since Cyrus 3.2.
pub const CRC_ANNOT_INIT: u32 = 12_345_678;

/// Entry name of the virtual `thrid` annotation.
pub const VIRTUAL_THRID: &str = "/vendor/cmu/cyrus-imapd/thrid";
/// Entry name of the virtual `savedate` annotation.
pub const VIRTUAL_SAVEDATE: &str = "/vendor/cmu/cyrus-imapd/savedate";
/// Entry name of the virtual `createdmodseq` annotation.
pub const VIRTUAL_CREATEDMODSEQ: &str = "/vendor/cmu/cyrus-imapd/createdmodseq";

/// The pair of sync CRCs of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncCrcs {
    /// SYNC_CRC.
    pub basic: u32,
    /// SYNC_CRC_ANNOT.
    pub annot: u32,
}

impl Default for SyncCrcs {
    fn default() -> SyncCrcs {
        SyncCrcs::EMPTY
    }
}

impl SyncCrcs {
    /// The CRCs of a mailbox without live records.
    pub const EMPTY: SyncCrcs = SyncCrcs {
        basic: 0,
        annot: CRC_ANNOT_INIT,
    };

    /// The CRCs over a sequence of records (any order).
    pub fn of_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> SyncCrcs {
        let mut c = SyncCrcs::EMPTY;
        for r in records {
            c.toggle(r);
        }
        c
    }

    /// XOR a record's contribution in (if absent) or out (if present).
    /// Call it with the old record before a change and with the new one
    /// after it.
    pub fn toggle(&mut self, r: &Record) {
        self.basic ^= record_basic(r);
        self.annot ^= record_annot(r);
    }

    /// Cyrus's comparison (`mailbox_crceq`): each half matches if the
    /// values are equal or either side is 0 ("unknown, don't check").
    pub fn matches(&self, other: &SyncCrcs) -> bool {
        let half = |a: u32, b: u32| a == 0 || b == 0 || a == b;
        half(self.basic, other.basic) && half(self.annot, other.annot)
    }
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The SYNC_CRC contribution of one record (0 if expunged).
pub fn record_basic(r: &Record) -> u32 {
    if r.expunged {
        return 0;
    }
    let mut flagcrc = 0u32;
    // Order does not matter (XOR); this is Cyrus's order anyway.
    for (flag, name) in [
        (SystemFlags::DELETED, "\\deleted"),
        (SystemFlags::ANSWERED, "\\answered"),
        (SystemFlags::FLAGGED, "\\flagged"),
        (SystemFlags::DRAFT, "\\draft"),
        (SystemFlags::SEEN, "\\seen"),
    ] {
        if r.flags.system.contains(flag) {
            flagcrc ^= crc(name.as_bytes());
        }
    }
    for k in r.flags.keywords() {
        flagcrc ^= crc(&k.folded());
    }
    let text = format!(
        "{} {} {} ({}) {} {}",
        r.uid.get(),
        r.modseq.get(),
        r.last_updated.0,
        flagcrc,
        r.internaldate.0,
        r.guid.to_hex()
    );
    crc(text.as_bytes())
}

/// The CRC of one annotation value of message `uid` (Cyrus `crc_annot`):
/// `"<uid> <entry> <userid> " + value`.
pub fn annotation_crc(uid: u32, entry: &[u8], userid: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(uid.to_string().as_bytes());
    h.update(b" ");
    h.update(entry);
    h.update(b" ");
    h.update(userid);
    h.update(b" ");
    h.update(value);
    h.finalize()
}

/// The SYNC_CRC_ANNOT contribution of one record (0 if expunged),
/// including its virtual annotations.
pub fn record_annot(r: &Record) -> u32 {
    if r.expunged {
        return 0;
    }
    let uid = r.uid.get();
    let mut c = 0u32;
    for (entry, owner, v) in r.annotations.iter() {
        // A stored annotation named like a virtual one is not counted by
        // Cyrus (the index field is authoritative), so skip it here too.
        let e = entry.as_bytes();
        if is_virtual(e) || v.value.is_empty() {
            continue;
        }
        c ^= annotation_crc(uid, e, owner.as_bytes(), &v.value);
    }
    if r.thrid != 0 {
        let v = format!("{:x}", r.thrid);
        c ^= annotation_crc(uid, VIRTUAL_THRID.as_bytes(), b"", v.as_bytes());
    }
    if r.savedate.0 != 0 {
        let v = r.savedate.0.to_string();
        c ^= annotation_crc(uid, VIRTUAL_SAVEDATE.as_bytes(), b"", v.as_bytes());
    }
    if r.createdmodseq.get() != 0 {
        let v = r.createdmodseq.get().to_string();
        c ^= annotation_crc(uid, VIRTUAL_CREATEDMODSEQ.as_bytes(), b"", v.as_bytes());
    }
    c
}

/// Whether `entry` names one of the virtual annotations the model keeps as
/// record fields.
pub fn is_virtual(entry: &[u8]) -> bool {
    entry == VIRTUAL_THRID.as_bytes()
        || entry == VIRTUAL_SAVEDATE.as_bytes()
        || entry == VIRTUAL_CREATEDMODSEQ.as_bytes()
}

/// Whether `guid` could be the GUID of `bytes` (a convenience for tests
/// and stores; the real check happens while staging).
pub fn guid_matches(guid: &Guid, bytes: &[u8]) -> bool {
    Guid::of(bytes) == *guid
}
