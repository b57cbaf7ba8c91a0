//! Properties of the MUPDATE database rules: a subscriber that takes the
//! dump at any point and then applies every later change in order ends at
//! the master's state (filtered subscribers: exactly on their hosts), and
//! decisions are total (no input panics, refusals change nothing).

use bytes::Bytes;
use engine::mupdate::{Change, Database, Entry, Write};
use proptest::prelude::*;

fn pick(v: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    prop::sample::select(v).prop_map(|s| Bytes::from_static(s.as_bytes()))
}

fn write() -> impl Strategy<Value = Write> {
    let name = || pick(&["a", "b", "c", "d"]);
    let loc = || pick(&["h1!p", "h2!p", "h2!q", "h3"]);
    prop_oneof![
        (name(), loc()).prop_map(|(name, location)| Write::Reserve { name, location }),
        (name(), loc(), pick(&["", "x\tlr\t"])).prop_map(|(name, location, acl)| Write::Activate {
            name,
            location,
            acl
        }),
        (name(), loc()).prop_map(|(name, location)| Write::Deactivate { name, location }),
        name().prop_map(|name| Write::Delete { name }),
    ]
}

fn replay(dump: Vec<Entry>, changes: &[Change]) -> Database {
    let mut db = Database::new();
    for e in dump {
        db.load(e.name, e.record);
    }
    for c in changes {
        let mut c = c.clone();
        c.before = db.find(&c.name).cloned();
        db.apply(&c);
    }
    db
}

proptest! {
    #[test]
    fn subscribers_converge(writes in prop::collection::vec(write(), 0..40), cut in any::<prop::sample::Index>()) {
        let mut master = Database::new();
        let mut log = Vec::new();
        let k = cut.index(writes.len() + 1);
        let mut dump_all = None;
        let mut dump_h2 = None;
        for (i, w) in writes.iter().enumerate() {
            if i == k {
                dump_all = Some((master.dump(&[]), log.len()));
                dump_h2 = Some((master.dump(&[Bytes::from_static(b"h2")]), log.len()));
            }
            let before = master.clone();
            match master.decide(w) {
                Ok(c) => {
                    prop_assert_eq!(&c.before, &before.find(&c.name).cloned());
                    master.apply(&c);
                    prop_assert_eq!(master.find(&c.name).cloned(), c.after.clone());
                    log.push(c);
                }
                Err(_) => prop_assert_eq!(&master, &before),
            }
        }
        let (dump, from) = dump_all.unwrap_or_else(|| (master.dump(&[]), log.len()));
        prop_assert_eq!(replay(dump, &log[from..]), master.clone());
        // A PARTIAL-UPDATE subscriber for h2 holds exactly the master's h2 entries
        // (it may also keep stale entries that moved away: Cyrus's documented gap).
        let hosts = [Bytes::from_static(b"h2")];
        let (dump, from) = dump_h2.unwrap_or_else(|| (master.dump(&hosts), log.len()));
        let pushed: Vec<Change> = log[from..].iter().filter(|c| c.concerns(&hosts)).cloned().collect();
        let sub = replay(dump, &pushed);
        let on_h2 = |db: &Database| db.iter().filter(|(_, r)| r.server() == b"h2").map(|(n, r)| (n.clone(), r.clone())).collect::<Vec<_>>();
        prop_assert_eq!(on_h2(&sub), on_h2(&master));
    }
}
