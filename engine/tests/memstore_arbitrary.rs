//! With feature `arbitrary`: arbitrary model values are valid (they pass
//! their own constructors again) and arbitrary batches never panic a
//! `MemStore`; a refused one changes nothing.
#![cfg(feature = "arbitrary")]

use arbitrary::{Arbitrary, Unstructured};
use engine::memstore::MemStore;
use engine::model::*;
use engine::store::{MailRead, WriteBatch};

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    // A fixed xorshift stream: deterministic, no randomness source.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn arbitrary_values_are_valid() {
    for seed in 0..300 {
        let data = bytes(seed, 4096);
        let mut u = Unstructured::new(&data);
        let m = Mailbox::arbitrary(&mut u).unwrap();
        assert!(MailboxName::new(m.name.as_bytes()).is_ok());
        assert!(UniqueId::new(m.uniqueid.as_bytes()).is_ok());
        assert_eq!(
            MailboxType::parse(m.mbtype.to_cyrus().as_bytes()).unwrap(),
            m.mbtype
        );
        assert_eq!(Acl::parse_cyrus(&m.acl.to_cyrus()), m.acl);
        let r = Record::arbitrary(&mut u).unwrap();
        assert!(r.uid.get() > 0);
        for k in r.flags.keywords() {
            assert!(Keyword::new(k.as_bytes()).is_ok());
        }
        let s = Seen::arbitrary(&mut u).unwrap();
        assert_eq!(
            SeqSet::parse(s.seenuids.as_str().as_bytes()).unwrap(),
            s.seenuids
        );
    }
}

#[test]
fn arbitrary_batches_are_all_or_nothing() {
    let mut store = MemStore::default();
    let mut accepted = 0;
    for seed in 0..400 {
        let data = bytes(seed, 2048);
        let mut u = Unstructured::new(&data);
        let Ok(b) = WriteBatch::arbitrary(&mut u) else {
            continue;
        };
        let before = format!(
            "{:?}",
            store.with_pending().mailboxes(None, 10_000).unwrap()
        );
        match store.apply(&b) {
            Ok(()) => accepted += 1,
            Err(_) => assert_eq!(
                format!(
                    "{:?}",
                    store.with_pending().mailboxes(None, 10_000).unwrap()
                ),
                before
            ),
        }
        if seed % 7 == 0 {
            store.sync_all();
        }
        if seed % 31 == 0 {
            store.crash();
        }
    }
    assert!(accepted > 20, "only {accepted} batches accepted");
}
