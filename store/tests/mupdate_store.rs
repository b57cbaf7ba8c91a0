//! The durable MUPDATE database: decisions, durability across reopen,
//! ordered publication to subscribers, concurrent writers.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use engine::mupdate::{Change, Read, Refusal, State, Write};
use store::mupdate::{Delivery, MupdateDb, Options, Subscriber};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn write_sync(db: &MupdateDb, w: Write) -> Result<(), Refusal> {
    let (tx, rx) = mpsc::channel();
    db.submit(&w, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap().expect("store ok").map(|_| ())
}

struct Collect(Arc<Mutex<Vec<Arc<Change>>>>, usize);

impl Subscriber for Collect {
    fn push(&self, change: &Arc<Change>) -> Delivery {
        let mut v = self.0.lock().unwrap();
        if v.len() >= self.1 {
            return Delivery::Lagged;
        }
        v.push(change.clone());
        Delivery::Queued
    }
    fn lagged(&self) {}
}

#[test]
fn writes_are_durable_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mupdate.sqlite3");
    {
        let db = MupdateDb::open(&path, Options::default()).unwrap();
        write_sync(
            &db,
            Write::Reserve {
                name: b("user.a"),
                location: b("h1!p"),
            },
        )
        .unwrap();
        write_sync(
            &db,
            Write::Activate {
                name: b("user.b"),
                location: b("h2!p"),
                acl: b("b\tlrs\t"),
            },
        )
        .unwrap();
        write_sync(
            &db,
            Write::Activate {
                name: b("user.c"),
                location: b("h2!p"),
                acl: b(""),
            },
        )
        .unwrap();
        write_sync(&db, Write::Delete { name: b("user.c") }).unwrap();
        assert_eq!(
            write_sync(
                &db,
                Write::Reserve {
                    name: b("user.a"),
                    location: b("h9!p")
                }
            ),
            Err(Refusal::Exists)
        );
        assert_eq!(
            write_sync(&db, Write::Delete { name: b("nope") }),
            Err(Refusal::Missing)
        );
        assert_eq!(
            write_sync(
                &db,
                Write::Deactivate {
                    name: b("nope"),
                    location: b("x")
                }
            ),
            Err(Refusal::Missing)
        );
        db.close();
    }
    let db = MupdateDb::open(&path, Options::default()).unwrap();
    assert_eq!(db.len(), 2);
    assert_eq!(db.find(b"user.a").unwrap().state, State::Reserved);
    let rb = db.find(b"user.b").unwrap();
    assert_eq!(rb.state, State::Active { acl: b("b\tlrs\t") });
    assert_eq!(&rb.location[..], b"h2!p");
    assert!(db.find(b"user.c").is_none());
    let names: Vec<_> = db.list(Some(b"h2")).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b("user.b")]);
}

#[test]
fn subscribers_get_every_change_in_commit_order_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let db = MupdateDb::open(dir.path().join("m.db"), Options::default()).unwrap();
    write_sync(
        &db,
        Write::Activate {
            name: b("pre"),
            location: b("h1!p"),
            acl: b(""),
        },
    )
    .unwrap();
    let all = Arc::new(Mutex::new(Vec::new()));
    let h2 = Arc::new(Mutex::new(Vec::new()));
    let dump = db.subscribe(vec![], Box::new(Collect(all.clone(), 1000)));
    assert_eq!(dump.len(), 1);
    let dump2 = db.subscribe(vec![b("h2")], Box::new(Collect(h2.clone(), 1000)));
    assert!(dump2.is_empty());
    // Many concurrent writers: group commit, then ordered publication.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let host = if i % 2 == 0 { "h1" } else { "h2" };
                    write_sync(
                        &db,
                        Write::Activate {
                            name: b(&format!("user.t{t}.{i}")),
                            location: b(&format!("{host}!p")),
                            acl: b(""),
                        },
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every OK came after publication, so the pushes are all there.
    let all_now = all.lock().unwrap().clone();
    let all = &all_now;
    assert_eq!(all.len(), 400);
    // Per writer, its changes appear in the order it made them.
    for t in 0..8 {
        let mine: Vec<_> = all
            .iter()
            .filter(|c| c.name.starts_with(format!("user.t{t}.").as_bytes()))
            .map(|c| c.name.clone())
            .collect();
        let want: Vec<_> = (0..50).map(|i| b(&format!("user.t{t}.{i}"))).collect();
        assert_eq!(mine, want);
    }
    assert_eq!(h2.lock().unwrap().len(), 200);
    // A move from h2 to h1 concerns the h2 subscriber (old location).
    write_sync(
        &db,
        Write::Activate {
            name: b("user.t0.1"),
            location: b("h1!p"),
            acl: b(""),
        },
    )
    .unwrap();
    assert_eq!(h2.lock().unwrap().len(), 201);
}

#[test]
fn lagging_subscriber_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = MupdateDb::open(dir.path().join("m.db"), Options::default()).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    db.subscribe(vec![], Box::new(Collect(got.clone(), 2)));
    assert_eq!(db.subscribers(), 1);
    for i in 0..5 {
        write_sync(
            &db,
            Write::Reserve {
                name: b(&format!("n{i}")),
                location: b("h!p"),
            },
        )
        .unwrap();
    }
    assert_eq!(db.subscribers(), 0);
    assert_eq!(got.lock().unwrap().len(), 2);
}

#[test]
fn slave_copy_replaces_and_applies_remote_state_and_republishes() {
    use engine::mupdate::{Entry, Record};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slave.db");
    let db = MupdateDb::open(&path, Options::default()).unwrap();
    let rec = |loc: &str| Record {
        state: State::Reserved,
        location: b(loc),
    };
    let sync = |f: &dyn Fn(store::mupdate::Done)| {
        let (tx, rx) = mpsc::channel();
        f(Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap().unwrap().unwrap();
    };
    sync(&|d| db.apply_remote(b("old"), Some(rec("h!p")), d));
    sync(&|d| db.apply_remote(b("keep"), Some(rec("h!p")), d));
    let seen = Arc::new(Mutex::new(Vec::new()));
    db.subscribe(vec![], Box::new(Collect(seen.clone(), 100)));
    // A dump: `old` goes, `keep` stays untouched, `new` arrives.
    sync(&|d| {
        db.replace_remote(
            vec![
                Entry {
                    name: b("keep"),
                    record: rec("h!p"),
                },
                Entry {
                    name: b("new"),
                    record: rec("g!p"),
                },
            ],
            d,
        )
    });
    let names: Vec<_> = db.list(None).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b("keep"), b("new")]);
    let pushed: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.after.is_some()))
        .collect();
    assert_eq!(pushed, vec![(b("old"), false), (b("new"), true)]);
    // An unknown DELETE push is harmless; an identical one writes nothing.
    sync(&|d| db.apply_remote(b("never-had"), None, d));
    sync(&|d| db.apply_remote(b("keep"), Some(rec("h!p")), d));
    assert_eq!(seen.lock().unwrap().len(), 2);
    db.close();
    drop(db);
    let again = MupdateDb::open(&path, Options::default()).unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.find(b"old").is_none());
}
