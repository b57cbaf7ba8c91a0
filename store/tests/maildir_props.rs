//! Properties of the Maildir codecs: modified UTF-7 and mailbox names
//! round-trip and never leave one path component; uidlists, keyword
//! tables and subscriptions round-trip; flag renames keep what corvid does
//! not interpret.

use engine::model::{Keyword, MailboxGuid, SystemFlags};
use proptest::prelude::*;
use store::maildir::file_name::FileName;
use store::maildir::name::{utf7_decode, utf7_encode};
use store::maildir::subscriptions::Subscriptions;
use store::maildir::uidlist::{Entry, Uidlist};
use store::maildir::Name;

fn part() -> impl Strategy<Value = String> {
    // Printable ASCII incl. '&', '~', ' ', plus some non-ASCII and astral.
    proptest::collection::vec(
        prop_oneof![
            (0x20u8..0x7f).prop_map(|b| if b == b'/' { '_' } else { b as char }),
            Just('é'),
            Just('日'),
            Just('😀'),
            Just('&'),
        ],
        1..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #[test]
    fn utf7_round_trips(s in "\\PC{0,20}") {
        let e = utf7_encode(&s);
        prop_assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)));
        prop_assert_eq!(utf7_decode(&e).unwrap(), s);
    }

    #[test]
    fn valid_names_are_one_component_and_round_trip(parts in proptest::collection::vec(part(), 1..4)) {
        let text = parts.join("/");
        if let Ok(n) = Name::new(&text) {
            if let Some(d) = n.dir_name() {
                prop_assert!(d.starts_with('.') && !d.contains('/') && !d.contains('\0'));
                prop_assert!(d != "." && d != "..");
                prop_assert_eq!(Name::from_dir_name(&d).unwrap().unwrap(), n.clone());
            }
            let mut subs = Subscriptions::default();
            subs.set(&n, true);
            let back = Subscriptions::parse(&subs.to_text());
            prop_assert_eq!(back.names().into_iter().next().unwrap().unwrap(), n);
        } else {
            // Refused only for the documented reasons.
            prop_assert!(parts.iter().any(|p| p.contains('.') || p.starts_with('~'))
                || matches!(parts.last().map(String::as_str), Some("cur" | "new" | "tmp")));
        }
    }

    #[test]
    fn uidlists_round_trip(
        v in 1u32..,
        n in 1u32..1000,
        gaps in proptest::collection::vec((1u32..50, proptest::option::of("[A-Za-z0-9<>@.,=-]{1,20}")), 0..20),
        g in any::<[u8; 16]>(),
    ) {
        let mut l = Uidlist::new(v, MailboxGuid::from_bytes(g));
        l.header_next_uid = n;
        let mut uid = 0;
        for (i, (gap, guid)) in gaps.into_iter().enumerate() {
            uid += gap;
            l.entries.push(Entry {
                uid,
                ext: guid.map(|g| vec![('G', g)]).unwrap_or_default(),
                base: format!("{i}.M{i}P1.host,S=1,W=1"),
            });
        }
        let back = Uidlist::parse(&l.to_text()).unwrap();
        prop_assert_eq!(&back, &l);
        prop_assert!(back.next_uid() >= n && back.next_uid() > uid);
    }

    #[test]
    fn flag_renames_keep_unknown_letters(
        base in "[0-9]{1,10}\\.M[0-9]{1,6}P[0-9]{1,5}\\.[a-z]{1,8}",
        old in "[A-Za-z]{0,8}",
        bits in 0u8..32,
        kws in proptest::collection::btree_set(0u8..26, 0..5),
    ) {
        let f = FileName::parse(&format!("{base}:2,{old}")).unwrap();
        let kws: Vec<u8> = kws.into_iter().collect();
        let flags = SystemFlags::from_bits_truncate(bits);
        let g = f.with_flags(flags, &kws);
        prop_assert_eq!(&g.base, &f.base);
        prop_assert_eq!(g.system_flags(), flags);
        prop_assert_eq!(g.keyword_indexes(), kws);
        let mut want: Vec<char> = f.other_letters().chars().collect();
        want.sort_unstable();
        want.dedup();
        prop_assert_eq!(g.other_letters(), want.into_iter().collect::<String>());
        let letters: Vec<char> = g.flag_letters().chars().collect();
        let mut sorted = letters.clone();
        sorted.sort_unstable();
        prop_assert_eq!(letters, sorted);
        prop_assert_eq!(FileName::parse(&g.to_entry()).unwrap(), g);
    }

    #[test]
    fn keyword_tables_round_trip(names in proptest::collection::vec("[A-Za-z$][A-Za-z0-9_]{0,10}", 0..30)) {
        let mut k = store::maildir::keywords::Keywords::default();
        let mut idx = Vec::new();
        for n in &names {
            idx.push(k.intern(&Keyword::new(n).unwrap()));
        }
        let back = store::maildir::keywords::Keywords::parse(&k.to_text());
        prop_assert_eq!(&back, &k);
        for (n, i) in names.iter().zip(idx) {
            match i {
                Some(i) => prop_assert!(back.get(i).unwrap().as_bytes().eq_ignore_ascii_case(n.as_bytes())),
                None => prop_assert!(back.index_of(&Keyword::new(n).unwrap()).is_none()),
            }
        }
    }
}
