//! Unit checks of the sync CRC rules that the lab transcripts do not
//! exercise (no conversations there, so no `thrid`), written from the
//! Cyrus 3.6.1 algorithm: XOR of per-record CRC-32s, expunged records
//! contribute nothing, keywords fold case, `thrid` is unpadded hex.

use bytes::Bytes;
use engine::model::crc::{annotation_crc, record_annot, record_basic, CRC_ANNOT_INIT};
use engine::model::*;

fn rec() -> Record {
    let mut r = Record::new(
        Uid::new(3).unwrap(),
        ModSeq(18),
        Guid::parse(b"b1f42b51ccea47da43909c7482835c0b19f56d38").unwrap(),
        3151,
        UnixTime(1795305561),
    );
    r.last_updated = UnixTime(1795305568);
    r
}

#[test]
fn empty_mailbox_pair_is_0_and_12345678() {
    assert_eq!(
        SyncCrcs::of_records([]),
        SyncCrcs {
            basic: 0,
            annot: 12_345_678
        }
    );
    assert_eq!(CRC_ANNOT_INIT, 12_345_678);
}

#[test]
fn basic_crc_is_crc32_of_the_record_text() {
    let r = rec();
    let text = "3 18 1795305568 (0) 1795305561 b1f42b51ccea47da43909c7482835c0b19f56d38";
    assert_eq!(record_basic(&r), crc32fast::hash(text.as_bytes()));
    let mut f = r.clone();
    f.flags.system.insert(SystemFlags::SEEN);
    f.flags.insert_keyword(Keyword::new("$Label1").unwrap());
    let flagcrc = crc32fast::hash(b"\\seen") ^ crc32fast::hash(b"$label1");
    let text =
        format!("3 18 1795305568 ({flagcrc}) 1795305561 b1f42b51ccea47da43909c7482835c0b19f56d38");
    assert_eq!(record_basic(&f), crc32fast::hash(text.as_bytes()));
}

#[test]
fn expunged_records_and_order_do_not_matter() {
    let a = rec();
    let mut b = rec();
    b.uid = Uid::new(4).unwrap();
    let mut gone = rec();
    gone.uid = Uid::new(5).unwrap();
    gone.expunged = true;
    assert_eq!(record_basic(&gone), 0);
    assert_eq!(record_annot(&gone), 0);
    assert_eq!(
        SyncCrcs::of_records([&a, &b, &gone]),
        SyncCrcs::of_records([&b, &a])
    );
    // Toggling is its own inverse: incremental upkeep.
    let mut c = SyncCrcs::of_records([&a, &b]);
    c.toggle(&b);
    assert_eq!(c, SyncCrcs::of_records([&a]));
}

#[test]
fn virtual_annotations_use_cyrus_value_forms() {
    let mut r = rec();
    r.thrid = 0x00ab_cdef;
    r.savedate = UnixTime(1795305561);
    r.createdmodseq = ModSeq(4);
    let expect = annotation_crc(3, b"/vendor/cmu/cyrus-imapd/thrid", b"", b"abcdef")
        ^ annotation_crc(3, b"/vendor/cmu/cyrus-imapd/savedate", b"", b"1795305561")
        ^ annotation_crc(3, b"/vendor/cmu/cyrus-imapd/createdmodseq", b"", b"4");
    assert_eq!(record_annot(&r), expect);
    assert_eq!(
        annotation_crc(3, b"/comment", b"alice", b"hi"),
        crc32fast::hash(b"3 /comment alice hi")
    );
    // A real annotation counts with its owner; shared is "".
    r.annotations.set(
        AnnotationEntry::new("/comment").unwrap(),
        AnnotationOwner::Shared,
        AnnotationValue {
            modseq: ModSeq(1),
            value: Bytes::from_static(b"x"),
        },
    );
    assert_eq!(record_annot(&r), expect ^ crc32fast::hash(b"3 /comment  x"));
}

#[test]
fn zero_halves_match_anything() {
    let a = SyncCrcs { basic: 5, annot: 6 };
    assert!(a.matches(&SyncCrcs { basic: 0, annot: 6 }));
    assert!(a.matches(&SyncCrcs { basic: 5, annot: 0 }));
    assert!(!a.matches(&SyncCrcs { basic: 4, annot: 6 }));
}
