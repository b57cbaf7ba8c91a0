//! Test helpers shared by the memstore tests: a small fixed universe of
//! names and a `dump` that reads everything through `MailRead`, so two
//! stores (or a store and an overlay) can be compared as text.
#![allow(dead_code)]

use std::fmt::Write;

use bytes::Bytes;
use engine::model::*;
use engine::store::{MailRead, UidRange};

pub fn uid(n: u32) -> Uid {
    Uid::new(n).unwrap()
}
pub fn uniq(i: usize) -> UniqueId {
    UniqueId::new(format!("uid{i}")).unwrap()
}
pub fn name(i: usize) -> MailboxName {
    const N: [&str; 5] = [
        "user.alice",
        "user.alice.Sent",
        "user.alice.Sent.2024",
        "user.bob",
        "shared.news",
    ];
    MailboxName::new(N[i % N.len()]).unwrap()
}
pub const NAMES: usize = 5;
pub fn user(i: usize) -> UserId {
    UserId::new(["alice", "bob"][i % 2]).unwrap()
}
pub fn owner_of(n: &MailboxName) -> Option<UserId> {
    let s = n.to_lossy();
    if s.starts_with("user.alice") {
        Some(user(0))
    } else if s.starts_with("user.bob") {
        Some(user(1))
    } else {
        None
    }
}
pub fn msg(i: usize) -> Bytes {
    Bytes::from(format!(
        "From: a@example.org\r\nSubject: message {i}\r\n\r\nbody {}\r\n",
        "x".repeat(i * 7)
    ))
}
pub fn mailbox(i: usize, name_i: usize) -> Mailbox {
    let n = name(name_i);
    let mut m = Mailbox::new(
        uniq(i),
        MailboxGuid::from_bytes([i as u8 + 1; 16]),
        n.clone(),
        owner_of(&n),
        UidValidity::new(1000 + i as u32).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    m.acl = Acl::parse_cyrus(b"alice\tlrswipkxtecdan\t");
    m
}
pub fn record(u: u32, m: usize, expunged: bool) -> Record {
    let b = msg(m);
    let mut r = Record::new(
        uid(u),
        ModSeq(u as u64 + 10),
        Guid::of(&b),
        b.len() as u64,
        UnixTime(1_700_000_000 + u as i64),
    );
    r.expunged = expunged;
    r
}

/// Everything readable, as text, in a deterministic order.
pub fn dump(s: &impl MailRead) -> String {
    let mut o = String::new();
    let mbs = s.mailboxes(None, 1000).unwrap();
    for m in &mbs {
        writeln!(o, "mailbox {m:?}").unwrap();
        assert_eq!(s.mailbox(&m.name).unwrap().as_ref(), Some(m));
        assert_eq!(
            s.mailbox_by_uniqueid(&m.uniqueid).unwrap().as_ref(),
            Some(m)
        );
        assert_eq!(s.mailbox_by_guid(&m.guid).unwrap().as_ref(), Some(m));
        let recs = s.records(&m.uniqueid, UidRange::ALL, 10_000).unwrap();
        for r in &recs {
            writeln!(o, "  record {r:?}").unwrap();
        }
        // Paging must agree with one big read.
        let mut paged = Vec::new();
        let mut range = UidRange::ALL;
        loop {
            let page = s.records(&m.uniqueid, range, 2).unwrap();
            paged.extend(page.iter().cloned());
            match page.last().and_then(|r| r.uid.next()) {
                Some(n) if page.len() == 2 => range.first = n,
                _ => break,
            }
        }
        assert_eq!(paged, recs, "paged records differ");
        let crcs = s.sync_crcs(&m.uniqueid).unwrap();
        assert_eq!(crcs, SyncCrcs::of_records(&recs), "sync_crcs differ");
        writeln!(o, "  crcs {crcs:?}").unwrap();
    }
    // Paging of mailboxes.
    let mut paged = Vec::new();
    let mut after: Option<MailboxName> = None;
    loop {
        let page = s.mailboxes(after.as_ref(), 2).unwrap();
        paged.extend(page.iter().cloned());
        if page.len() < 2 {
            break;
        }
        after = page.last().map(|m| m.name.clone());
    }
    assert_eq!(paged, mbs, "paged mailboxes differ");
    for u in [user(0), user(1)] {
        let mine = s.mailboxes_of_user(&u).unwrap();
        let expect: Vec<Mailbox> = mbs
            .iter()
            .filter(|m| m.owner.as_ref() == Some(&u))
            .cloned()
            .collect();
        assert_eq!(mine, expect, "mailboxes_of_user differs");
        writeln!(o, "seen {u}: {:?}", s.seen_of_user(&u).unwrap()).unwrap();
        for (mb, seen) in s.seen_of_user(&u).unwrap() {
            assert_eq!(s.seen(&u, &mb).unwrap(), Some(seen));
        }
        writeln!(o, "subs {u}: {:?}", s.subscriptions(&u).unwrap()).unwrap();
        writeln!(o, "sieve {u}: {:?}", s.sieve_scripts(&u).unwrap()).unwrap();
        writeln!(o, "active {u}: {:?}", s.sieve_active(&u).unwrap()).unwrap();
        writeln!(o, "tombstones {u}: {:?}", s.tombstones_of_user(&u).unwrap()).unwrap();
    }
    writeln!(o, "users {:?}", s.users().unwrap()).unwrap();
    for i in 0..NAMES {
        let n = name(i);
        writeln!(o, "quota {n}: {:?}", s.quota(&n).unwrap()).unwrap();
        writeln!(o, "tombstones {n}: {:?}", s.tombstones_named(&n).unwrap()).unwrap();
    }
    for i in 0..6 {
        let g = Guid::of(&msg(i));
        let size = s.message_size(&g).unwrap();
        writeln!(o, "message {i}: {size:?}").unwrap();
        if size.is_some() && s.message_bytes(&g, 0, 5).is_err() {
            // Linked but not durable: only the store's staging has it.
            writeln!(o, "  unreadable").unwrap();
        } else if size.is_some() {
            // Read in chunks; must equal the original bytes.
            let mut got = Vec::new();
            loop {
                let c = s.message_bytes(&g, got.len() as u64, 5).unwrap();
                if c.is_empty() {
                    break;
                }
                got.extend_from_slice(&c);
            }
            assert_eq!(got, msg(i).to_vec());
        }
    }
    writeln!(
        o,
        "server annotations {:?}",
        s.server_annotations().unwrap()
    )
    .unwrap();
    for ch in ["", "squatter"] {
        writeln!(
            o,
            "log {ch:?}: last {} lines {:?}",
            s.sync_log_last(ch).unwrap(),
            s.sync_log(ch, 0, 1000).unwrap()
        )
        .unwrap();
    }
    o
}
