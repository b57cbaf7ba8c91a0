//! store::maildir's group calls (`append_many`, `set_flags_many`): the
//! same result as one call per message, rounds cut at
//! `Options::batch_messages_max`, a refused round links nothing, an
//! unknown UID renames nothing.

use std::fs;
use std::path::Path;

use engine::model::{Flags, Guid, Keyword, SystemFlags};
use store::maildir::{Append, Body, Create, Error, Maildir, Name, NewMessage, Options};

fn body(n: u32) -> Vec<u8> {
    format!("Subject: {n}\r\n\r\nbody {n}\nmore\n").into_bytes()
}

fn kw(s: &str) -> Keyword {
    Keyword::new(s).unwrap()
}

fn open(dir: &Path, round: usize) -> Maildir {
    Maildir::open(
        dir,
        Options {
            batch_messages_max: round,
            ..Options::default()
        },
    )
    .unwrap()
}

#[test]
fn append_many_matches_single_appends_and_cuts_rounds() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path(), 16);
    let n = Name::new("Work").unwrap();
    md.create(&n, Create::default()).unwrap();
    let bodies: Vec<Vec<u8>> = (0..50).map(body).collect();
    let file = t.path().join("one-file");
    fs::write(&file, body(999)).unwrap();
    let mut msgs: Vec<NewMessage<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| NewMessage {
            body: Body::Bytes(b),
            how: Append {
                uid: Some(10 + 2 * i as u32),
                guid: (i % 5 == 0).then(|| format!("peer-guid-{i}")),
                flags: if i % 3 == 0 {
                    SystemFlags::SEEN
                } else {
                    SystemFlags::empty()
                },
                keywords: if i % 7 == 0 {
                    vec![kw("$Work")]
                } else {
                    vec![]
                },
                internaldate: Some(1_600_000_000 + i as i64),
            },
        })
        .collect();
    msgs.push(NewMessage {
        body: Body::File(&file),
        how: Append::default(),
    });
    let stored = md.append_many(&n, msgs).unwrap();
    assert_eq!(stored.len(), 51);
    for (i, m) in stored.iter().take(50).enumerate() {
        assert_eq!(m.uid, 10 + 2 * i as u32);
        assert_eq!(m.sha1, Some(Guid::of(&bodies[i])));
        assert_eq!(m.internaldate, 1_600_000_000 + i as i64);
        assert_eq!(m.flags.contains(SystemFlags::SEEN), i % 3 == 0);
        assert_eq!(m.keywords.contains(&kw("$Work")), i % 7 == 0);
        if i % 5 == 0 {
            assert_eq!(m.guid, format!("peer-guid-{i}"));
        }
        assert_eq!(md.read(&n, m.uid, 0, 1 << 20).unwrap(), bodies[i]);
    }
    // No UID given: the next one after the group's last.
    assert_eq!(stored[50].uid, 10 + 2 * 49 + 1);
    assert_eq!(md.messages(&n).unwrap(), stored);
    assert_eq!(md.status(&n).unwrap().uidnext, 10 + 2 * 49 + 2);
    // tmp/ is left empty.
    let tmp: Vec<_> = fs::read_dir(t.path().join(".Work/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn a_refused_round_links_nothing() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path(), 100);
    let n = Name::inbox();
    md.append(
        &n,
        &mut &body(0)[..],
        &Append {
            uid: Some(5),
            ..Append::default()
        },
    )
    .unwrap();
    let bodies: Vec<Vec<u8>> = (1..4).map(body).collect();
    // The third asks for a UID below the next one: the whole round goes.
    let msgs = bodies
        .iter()
        .zip([6, 7, 3])
        .map(|(b, uid)| NewMessage {
            body: Body::Bytes(b),
            how: Append {
                uid: Some(uid),
                ..Append::default()
            },
        })
        .collect();
    match md.append_many(&n, msgs) {
        Err(Error::UidTooLow { wanted: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(md.messages(&n).unwrap().len(), 1);
    let count = |sub: &str| fs::read_dir(t.path().join(sub)).unwrap().count();
    assert_eq!((count("new") + count("cur"), count("tmp")), (1, 0));
    // 27 distinct keywords in one round: refused whole, too.
    let bodies: Vec<Vec<u8>> = (10..37).map(body).collect();
    let msgs = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| NewMessage {
            body: Body::Bytes(b),
            how: Append {
                keywords: vec![kw(&format!("k{i}"))],
                ..Append::default()
            },
        })
        .collect();
    assert!(matches!(
        md.append_many(&n, msgs),
        Err(Error::KeywordsFull(_))
    ));
    assert_eq!(md.messages(&n).unwrap().len(), 1);
    assert!(!t.path().join("dovecot-keywords").exists());
}

#[test]
fn set_flags_many_changes_each_and_checks_first() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path(), 100);
    let n = Name::inbox();
    let bodies: Vec<Vec<u8>> = (0..20).map(body).collect();
    let msgs = bodies
        .iter()
        .map(|b| NewMessage {
            body: Body::Bytes(b),
            how: Append::default(),
        })
        .collect();
    let stored = md.append_many(&n, msgs).unwrap();
    let before: Vec<u64> = stored.iter().map(|m| m.modseq).collect();
    let changes: Vec<(u32, Flags)> = stored
        .iter()
        .step_by(2)
        .map(|m| (m.uid, Flags::with(SystemFlags::FLAGGED, [kw("$Label1")])))
        .collect();
    let now = md.set_flags_many(&n, &changes).unwrap();
    assert_eq!(now.len(), 10);
    for m in md.messages(&n).unwrap() {
        let changed = (m.uid - stored[0].uid) % 2 == 0;
        assert_eq!(m.flags.contains(SystemFlags::FLAGGED), changed, "{m:?}");
        assert_eq!(m.keywords.contains(&kw("$Label1")), changed);
        let i = (m.uid - stored[0].uid) as usize;
        assert_eq!(m.modseq > before[i], changed);
        assert_eq!(md.read(&n, m.uid, 0, 1 << 20).unwrap(), bodies[i]);
    }
    // An unknown UID anywhere: nothing renamed.
    let listing = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(t.path().join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let cur = listing("cur");
    let bad = vec![
        (stored[1].uid, Flags::with(SystemFlags::SEEN, [])),
        (999, Flags::with(SystemFlags::SEEN, [])),
    ];
    assert!(matches!(
        md.set_flags_many(&n, &bad),
        Err(Error::NoMessage { uid: 999, .. })
    ));
    assert_eq!(listing("cur"), cur);
}
