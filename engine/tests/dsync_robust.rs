//! A peer that sends well-formed records in any order, or garbage, never
//! makes a brain panic: it gets a protocol-error close (or the sync goes
//! on where the order happens to be valid). Both roles, over a populated
//! MemStore.

use std::cell::RefCell;
use std::rc::Rc;

use engine::dsync::{Brain, Options, Role};
use engine::machine::{Machine, Output, Time};
use engine::memstore::MemStore;
use engine::model::UserId;
use engine::store::{commit, StoreEffect};
use proptest::prelude::*;

/// The opening Dovecot 2.3 sends (from the `initial` capture): VERSION,
/// headers, `.`.
fn preamble() -> Vec<u8> {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../corpus/traces/dsync/initial/cap1/m2s.raw"
    ))
    .unwrap();
    let end = raw.windows(3).position(|w| w == b"\n.\n").unwrap() + 3;
    raw[..end].to_vec()
}

/// INBOX with the GUID the records below name, and two messages.
fn seed(st: &Rc<RefCell<MemStore>>) {
    use engine::model::*;
    use engine::store::{BatchId, Mutation, WriteBatch};
    let g = MailboxGuid::parse(b"1254a80cf335026b9860000083ecc375").unwrap();
    let mut mb = Mailbox::new(
        UniqueId::from_mailbox_guid(&g),
        g,
        MailboxName::new("INBOX").unwrap(),
        Some(UserId::new("alice").unwrap()),
        UidValidity::new(1795306997).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1),
    );
    mb.last_uid = 2;
    mb.highestmodseq = ModSeq(5);
    let mut muts = vec![Mutation::PutMailbox(mb.clone())];
    for (uid, body) in [(1u32, &b"From: a\n\none\n"[..]), (2, b"From: b\n\ntwo\n")] {
        let guid = Guid::of(body);
        muts.push(Mutation::PutMessage {
            guid,
            bytes: bytes::Bytes::copy_from_slice(body),
        });
        let mut r = Record::new(
            Uid::new(uid).unwrap(),
            ModSeq(uid as u64 + 2),
            guid,
            body.len() as u64,
            UnixTime(1),
        );
        if uid == 2 {
            r.peer_guid = Some(PeerMailGuid::new("guid-c").unwrap());
        }
        muts.push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r,
        });
    }
    let b = WriteBatch {
        id: BatchId(1 << 60),
        mutations: muts,
    };
    commit(&mut *st.borrow_mut(), &b).into_proof(b.id).unwrap();
}

const LINES: &[&str] = &[
    "Hvm\t\u{2}\t\u{2}\t\u{2}\tf\n",
    "Hvm\t\u{2}\t\u{2}\t\u{2}\ts\n",
    "Hvm\t\u{2}\t\u{2}\t\u{2}\tf\t\u{2}\t\u{2}\t\u{2}\t\t\t\n",
    ".\n",
    "NINBOX\ty\t1254a80cf335026b9860000083ecc375\t1795306997\t4\t\t\t1795306995\n",
    "NArchive\tn\n",
    "D/\t%\n",
    "D/\t%\t1254a80cf335026b9860000083ecc375 1795306990\n",
    "B1254a80cf335026b9860000083ecc375\t1795306997\t4\t3\t1\t7\t0\n",
    "B1254a80cf335026b9860000083ecc375\t1\t1\t0\t1\t1\t0\t\t\n",
    "Cs\t1\tguid-a\t\u{2}\t7\t\u{2}\t\u{2}\t\u{2}\t28\n",
    "Cs\t4000000000\tguid-b\t\u{2}\t7\t\u{2}\t\u{2}\t\u{2}\t0\n",
    "Ce\t1\tea448cb1ca00edb185d3bc95b6905f78\n",
    "Cf\t2\tguid-c\t\u{2}\t9\t\u{2}\t1\t2\t3\n",
    "Rguid-a\t1\n",
    "R\u{2}\t2\n",
    "Mguid-a\t1\t\t\u{2}\t1795306997\t1795306997\t\nFrom: a\n\nbody\n\r\n.\r\n",
    "Mguid-b\t4000000000\t\t\u{2}\t1\t1\t\nx\r\n.\r\n",
    "S1254a80cf335026b9860000083ecc375\t1795306997\t3\t7\t0\t3\n",
    "F\n",
    "Ferror text\t2\t\n",
    "X\n",
    "Zgarbage\n",
    "Cs\t0\tguid-z\t\u{2}\t7\n",
    "Mguid-z\t0\t\t\u{2}\t1\t1\t\nz\r\n.\r\n",
    "\u{1}\u{2}\t\t\t\n",
];

fn run(role: Role, prefix: bool, picks: &[usize], chunk: usize) {
    let st = Rc::new(RefCell::new(MemStore::default()));
    seed(&st);
    let mut b = Brain::new(
        Options::new(role, UserId::new("alice").unwrap()),
        st.clone(),
    );
    let mut input = preamble();
    if prefix {
        // A valid start (handshake, empty tree, deletes) so the random
        // records land in the mailbox phase.
        input.extend_from_slice(b"Hvm\t\x02\t\x02\t\x02\tf\n.\nD/\t%\n");
    }
    for &p in picks {
        input.extend_from_slice(LINES[p % LINES.len()].as_bytes());
    }
    let now = Time::ZERO;
    let drain = |b: &mut Brain<Rc<RefCell<MemStore>>>| {
        let mut done = Vec::new();
        while let Some(o) = b.poll_output() {
            if let Output::Effect {
                id,
                effect: StoreEffect::Write(batch),
            } = o
            {
                done.push((id, commit(&mut *st.borrow_mut(), &batch)));
            }
        }
        done
    };
    for piece in input.chunks(chunk.max(1)) {
        if b.is_closed() {
            break;
        }
        b.handle_input(now, piece);
        let mut done = drain(&mut b);
        while !done.is_empty() {
            for (id, c) in done.drain(..) {
                b.handle_completion(now, id, c);
            }
            done = drain(&mut b);
        }
    }
    if !b.is_closed() {
        b.handle_eof(now);
        drain(&mut b);
    }
    assert!(b.is_closed(), "EOF always ends the session");
}

proptest! {
    #[test]
    fn any_record_order_never_panics(
        picks in proptest::collection::vec(0..LINES.len(), 0..40),
        chunk in 1..200usize,
        master in any::<bool>(),
        prefix in any::<bool>(),
    ) {
        run(if master { Role::Master } else { Role::Slave }, prefix, &picks, chunk);
    }
}
