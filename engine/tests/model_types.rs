//! Grammar and round trips of the model's validated types.

use engine::model::*;
use proptest::prelude::*;

#[test]
fn uids_and_uidvalidity_refuse_zero() {
    assert_eq!(Uid::new(0), Err(InvalidValue::ZeroUid));
    assert_eq!(Uid::new(7).unwrap().get(), 7);
    assert_eq!(Uid::MAX.next(), None);
    assert_eq!(UidValidity::new(0), Err(InvalidValue::ZeroUidValidity));
}

#[test]
fn guids_are_40_hex_digits_and_sha1() {
    let g = Guid::parse(b"644657D1095548205478542cf038c9f624f2e7cb").unwrap();
    assert_eq!(g.to_hex(), "644657d1095548205478542cf038c9f624f2e7cb");
    assert_eq!(Guid::parse(b"644657d1"), Err(InvalidValue::BadGuid));
    assert_eq!(Guid::parse(&[b'g'; 40]), Err(InvalidValue::BadGuid));
    // SHA-1("abc").
    assert_eq!(
        Guid::of(b"abc").to_hex(),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert!(Guid::NULL.is_null());
    let wire: proto::dlist::Guid = g.into();
    assert_eq!(Guid::from(wire), g);
    let mg = MailboxGuid::parse(b"0123456789abcdef0123456789ABCDEF").unwrap();
    assert_eq!(mg.to_hex(), "0123456789abcdef0123456789abcdef");
    assert!(MailboxGuid::parse(b"0123").is_err());
    let u = UniqueId::new("p0mgjmas3k7mjy7qj5jqib3f").unwrap();
    let d = MailboxGuid::derive_from_uniqueid(&u);
    assert_eq!(d, MailboxGuid::derive_from_uniqueid(&u.clone()));
    assert_ne!(
        d,
        MailboxGuid::derive_from_uniqueid(&UniqueId::new("other").unwrap())
    );
    assert!(!d.is_zero());
    assert_eq!(
        UniqueId::from_mailbox_guid(&mg).as_bytes(),
        mg.to_hex().as_bytes()
    );
}

#[test]
fn names_are_opaque_bytes_within_limits() {
    // 8-bit and odd bytes are fine in a mailbox name; it is never a path.
    assert!(MailboxName::new(b"user.j\xc3\xbcrgen.../../etc").is_ok());
    assert!(MailboxName::new(b"").is_err());
    assert!(MailboxName::new(b"a\nb").is_err());
    assert!(MailboxName::new(vec![b'a'; 1025]).is_err());
    assert!(UserId::new("alice@example.com").is_ok());
    assert!(UserId::new("al ice").is_err());
    assert!(UniqueId::new("619daa68-0607-4c6a-a5c1-2a4c2a3e503f").is_ok());
    assert!(UniqueId::new("has space").is_err());
    assert!(UniqueId::new("quote\"").is_err());
    assert!(Keyword::new("$Forwarded").is_ok());
    assert!(Keyword::new("\\Seen").is_err());
    let a = MailboxName::new("user.alice.Sent").unwrap();
    let b = MailboxName::new("user.alice").unwrap();
    assert!(a.is_at_or_below(&b, b'.'));
    assert!(!MailboxName::new("user.alicex")
        .unwrap()
        .is_at_or_below(&b, b'.'));
}

#[test]
fn mailbox_types_round_trip_as_cyrus_prints_them() {
    for s in [
        "", "f", "ei", "ed", "c", "a", "n", "b", "s", "p", "j", "emi",
    ] {
        let t = MailboxType::parse(s.as_bytes()).unwrap();
        assert_eq!(t.to_cyrus(), s, "{s}");
    }
    assert_eq!(MailboxType::parse(b"e").unwrap().to_cyrus(), "");
    assert_eq!(MailboxType::parse(b"el").unwrap().to_cyrus(), "");
    assert_eq!(MailboxType::parse(b"eim").unwrap().to_cyrus(), "emi");
    // Pre-3.x flag-only strings gain the kind letter.
    assert_eq!(MailboxType::parse(b"d").unwrap().to_cyrus(), "ed");
    assert!(MailboxType::parse(b"eq").is_err());
    assert_eq!(MailboxType::parse(b"f").unwrap().kind, MailboxKind::Sieve);
}

#[test]
fn acl_and_options_round_trip() {
    let raw = b"alice\tlrswipkxtecdan\tbob\tlrs\t";
    let acl = Acl::parse_cyrus(raw);
    assert_eq!(acl.0.len(), 2);
    assert_eq!(acl.0[1].identifier, b"bob");
    assert_eq!(acl.to_cyrus(), raw);
    assert_eq!(Acl::parse_cyrus(b"").to_cyrus(), b"");
    let o = MailboxOptions::parse(b"PSX");
    assert!(o.pop3_new_uidl && o.shared_seen && !o.duplicate_deliver);
    assert_eq!(o.to_cyrus(), "PS");
}

#[test]
fn seq_sets_follow_their_grammar() {
    let s = SeqSet::parse(b"1:3,5,9:7").unwrap();
    assert!(s.contains(2) && s.contains(5) && s.contains(8));
    assert!(!s.contains(4) && !s.contains(10));
    assert_eq!(s.as_str(), "1:3,5,9:7");
    assert!(SeqSet::parse(b"").unwrap().ranges().next().is_none());
    for bad in [
        &b"0"[..],
        b"1:",
        b",",
        b"1,,2",
        b"*",
        b"1:x",
        b"99999999999",
    ] {
        assert_eq!(SeqSet::parse(bad), Err(InvalidValue::BadSeqSet), "{bad:?}");
    }
}

#[test]
fn keywords_fold_case_and_flags_compare_as_sets() {
    let mut f = Flags::new();
    assert!(f.insert_keyword(Keyword::new("$Label1").unwrap()));
    assert!(!f.insert_keyword(Keyword::new("$label1").unwrap()));
    assert_eq!(f.keywords()[0].as_bytes(), b"$Label1");
    let g = Flags::with(SystemFlags::empty(), [Keyword::new("$LABEL1").unwrap()]);
    assert_eq!(f, g);
    assert!(f.remove_keyword(&Keyword::new("$LABEL1").unwrap()));
    assert!(f.keywords().is_empty());
    assert_eq!(SystemFlags::from_name(b"\\seen"), Some(SystemFlags::SEEN));
    assert_eq!(SystemFlags::from_name(b"\\Recent"), None);
}

#[test]
fn empty_annotation_values_delete() {
    let mut a = Annotations::new();
    let e = AnnotationEntry::new("/comment").unwrap();
    let v = |s: &'static str| AnnotationValue {
        modseq: ModSeq(1),
        value: bytes::Bytes::from_static(s.as_bytes()),
    };
    a.set(e.clone(), AnnotationOwner::Shared, v("x"));
    a.set(
        e.clone(),
        AnnotationOwner::User(UserId::new("alice").unwrap()),
        v("y"),
    );
    assert_eq!(a.len(), 2);
    a.set(e.clone(), AnnotationOwner::Shared, v(""));
    assert_eq!(a.len(), 1);
    assert_eq!(
        AnnotationOwner::from_bytes(b"").unwrap(),
        AnnotationOwner::Shared
    );
}

proptest! {
    #[test]
    fn guid_hex_round_trips(b in proptest::array::uniform20(any::<u8>())) {
        let g = Guid::from_bytes(b);
        prop_assert_eq!(Guid::parse(g.to_hex().as_bytes()).unwrap(), g);
        prop_assert_eq!(Guid::parse(g.to_hex().to_uppercase().as_bytes()).unwrap(), g);
    }

    #[test]
    fn acl_round_trips(entries in proptest::collection::vec(("[a-z@.-]{1,12}", "[a-z]{0,14}"), 0..5)) {
        let acl = Acl(entries.iter().map(|(i, r)| AclEntry { identifier: i.as_bytes().to_vec(), rights: r.as_bytes().to_vec() }).collect());
        prop_assert_eq!(Acl::parse_cyrus(&acl.to_cyrus()), acl);
    }

    #[test]
    fn seq_set_membership_matches_ranges(ranges in proptest::collection::vec((1u32..50, 1u32..50), 1..6), probe in 1u32..60) {
        let text = ranges.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}:{b}") }).collect::<Vec<_>>().join(",");
        let s = SeqSet::parse(text.as_bytes()).unwrap();
        let expect = ranges.iter().any(|(a, b)| (*a.min(b)..=*a.max(b)).contains(&probe));
        prop_assert_eq!(s.contains(probe), expect);
    }
}
