//! store::maildir behaviour on its own: name safety, UID and GUID rules,
//! Dovecot's treatment of unlisted files, broken uidlists, modseqs, folder
//! operations, locks, limits, and the engine-model view.

use std::fs;
use std::path::Path;

use engine::model::{Flags, Guid, Keyword, MailboxGuid, MailboxName, SystemFlags, UserId};
use engine::store::{MailRead, UidRange};
use store::maildir::{Append, Create, Error, Maildir, Name, Options, UserView};

fn open(dir: &Path) -> Maildir {
    Maildir::open(dir, Options::default()).unwrap()
}

fn body(n: u32) -> Vec<u8> {
    format!("Subject: {n}\r\n\r\nbody {n}\r\nmore\n").into_bytes()
}

/// A fresh maildir with one message (body 1) in INBOX.
fn with_one_message() -> (tempfile::TempDir, Maildir, store::maildir::Message) {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    let a = md
        .append(&Name::inbox(), &mut &body(1)[..], &Append::default())
        .unwrap();
    (t, md, a)
}

fn kw(s: &str) -> Keyword {
    Keyword::new(s).unwrap()
}

#[test]
fn names_never_escape_the_root() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    for bad in [
        "..",
        "../x",
        "a/..",
        "a/../../b",
        "/abs",
        "a//b",
        "x.y",
        "~root",
        "a\0b",
        "a\nb",
        "a/cur",
    ] {
        assert!(Name::new(bad).is_err(), "{bad:?} accepted");
    }
    for good in [
        "a&b",
        "Sent Items",
        "日本/語",
        "x~y",
        "&-",
        "-&",
        "INBOX/child",
        "new/x",
    ] {
        let n = Name::new(good).unwrap();
        md.create(&n, Create::default()).unwrap();
        let dir = t.path().join(n.dir_name().unwrap());
        assert_eq!(dir.parent().unwrap(), t.path(), "{good:?}");
        assert!(dir.join("cur").is_dir() && dir.join("maildirfolder").is_file());
    }
    let listed: Vec<String> = md.list().unwrap().iter().map(|n| n.to_string()).collect();
    assert_eq!(
        listed,
        [
            "&-",
            "-&",
            "INBOX",
            "INBOX/child",
            "Sent Items",
            "a&b",
            "new/x",
            "x~y",
            "日本/語"
        ]
    );
    assert!(matches!(
        md.create(&Name::new("a&b").unwrap(), Create::default()),
        Err(Error::MailboxExists(_))
    ));
}

#[test]
fn uid_and_guid_rules() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    let inbox = Name::inbox();
    let m = md
        .append(
            &inbox,
            &mut &body(1)[..],
            &Append {
                uid: Some(5),
                ..Append::default()
            },
        )
        .unwrap();
    assert_eq!(m.uid, 5);
    assert!(matches!(
        md.append(
            &inbox,
            &mut &body(2)[..],
            &Append {
                uid: Some(3),
                ..Append::default()
            }
        ),
        Err(Error::UidTooLow { wanted: 3, next: 6 })
    ));
    assert!(matches!(
        md.append(
            &inbox,
            &mut &body(2)[..],
            &Append {
                guid: Some("has space".into()),
                ..Append::default()
            }
        ),
        Err(Error::BadGuid(_))
    ));
    // A base-like GUID with wrong sizes cannot be the file name: kept in G.
    let g = "1.M1P1.h,S=1,W=1".to_string();
    let m = md
        .append(
            &inbox,
            &mut &body(2)[..],
            &Append {
                guid: Some(g.clone()),
                ..Append::default()
            },
        )
        .unwrap();
    assert_eq!((m.uid, m.guid.as_str()), (6, g.as_str()));
    assert!(!m.file.contains("1.M1P1.h"));
    // CRLF counts once, bare LF twice in the virtual size.
    let b = body(2);
    assert_eq!(m.size, b.len() as u64);
    assert_eq!(m.vsize, b.len() as u64 + 1);
    let text = fs::read_to_string(t.path().join("dovecot-uidlist")).unwrap();
    assert!(text.contains(&format!("6 G{g} :")), "{text}");
    // Internaldate is the file mtime.
    let m = md
        .append(
            &inbox,
            &mut &body(3)[..],
            &Append {
                internaldate: Some(1_600_000_000),
                ..Append::default()
            },
        )
        .unwrap();
    assert_eq!(m.internaldate, 1_600_000_000);
}

const HAND_UIDLIST: &str =
    "3 V1234567 N50 G0123456789abcdef0123456789abcdef\n10 :1893456000.M100000P1.handhost,S=5,W=5\n";

fn hand_file(dir: &Path, sub: &str, name: &str) {
    fs::write(dir.join(sub).join(name), b"abcde").unwrap();
}

#[test]
fn unlisted_files_get_uids_in_dovecot_order() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    fs::write(t.path().join("dovecot-uidlist"), HAND_UIDLIST).unwrap();
    hand_file(t.path(), "cur", "1893456000.M100000P1.handhost,S=5,W=5:2,S");
    hand_file(t.path(), "new", "1893456009.M2P1.handhost");
    hand_file(t.path(), "cur", "1893456009.M10P1.handhost:2,F");
    hand_file(t.path(), "new", "1893456001.M999P1.handhost");
    let got: Vec<(u32, String)> = md
        .messages(&Name::inbox())
        .unwrap()
        .into_iter()
        .map(|m| (m.uid, m.guid))
        .collect();
    assert_eq!(
        got,
        [
            (10, "1893456000.M100000P1.handhost,S=5,W=5".to_string()),
            (50, "1893456001.M999P1.handhost".to_string()),
            (51, "1893456009.M2P1.handhost".to_string()),
            (52, "1893456009.M10P1.handhost".to_string()),
        ]
    );
    let st = md.status(&Name::inbox()).unwrap();
    assert_eq!(
        (st.uidvalidity, st.uidnext, st.guid.to_hex().as_str()),
        (1234567, 53, "0123456789abcdef0123456789abcdef")
    );
    // No uidlist at all: UIDs from 1 in the same order, fresh identity.
    let t2 = tempfile::tempdir().unwrap();
    let md2 = open(t2.path());
    hand_file(t2.path(), "new", "1893456009.M2P1.handhost");
    hand_file(t2.path(), "new", "1893456001.M999P1.handhost");
    let uids: Vec<(u32, String)> = md2
        .messages(&Name::inbox())
        .unwrap()
        .into_iter()
        .map(|m| (m.uid, m.guid))
        .collect();
    assert_eq!(
        uids,
        [
            (1, "1893456001.M999P1.handhost".to_string()),
            (2, "1893456009.M2P1.handhost".to_string())
        ]
    );
    assert!(!md2.status(&Name::inbox()).unwrap().guid.is_zero());
}

#[test]
fn broken_uidlist_is_refused_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    let broken = "3 V1 N1 G0123456789abcdef0123456789abcdef\n5 :a\n4 :b\n";
    fs::write(t.path().join("dovecot-uidlist"), broken).unwrap();
    assert!(matches!(
        md.messages(&Name::inbox()),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        md.append(&Name::inbox(), &mut &body(1)[..], &Append::default()),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(
        fs::read_to_string(t.path().join("dovecot-uidlist")).unwrap(),
        broken
    );
    // The refused append left nothing behind.
    assert_eq!(fs::read_dir(t.path().join("new")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn modseqs_follow_every_change_including_foreign_ones() {
    let (t, md, a) = with_one_message();
    let inbox = Name::inbox();
    let b = md
        .append(&inbox, &mut &body(2)[..], &Append::default())
        .unwrap();
    assert!(b.modseq > a.modseq);
    let h1 = md.status(&inbox).unwrap().highest_modseq;
    assert_eq!(h1, b.modseq);
    let a2 = md
        .set_flags(&inbox, a.uid, &Flags::with(SystemFlags::SEEN, [kw("X")]))
        .unwrap();
    assert!(a2.modseq > h1);
    assert_eq!(a2.file, format!("{}:2,Sa", a.file)); // renamed in place in new/
                                                     // A foreign rename (as Dovecot's flag change) is seen at the next pass.
    let from = t.path().join(&b.file);
    fs::rename(&from, format!("{}:2,T", from.display())).unwrap();
    let b2 = md.message(&inbox, b.uid).unwrap();
    assert_eq!(b2.flags, SystemFlags::DELETED);
    assert!(b2.modseq > a2.modseq);
    let h2 = md.status(&inbox).unwrap().highest_modseq;
    md.expunge(&inbox, &[b.uid]).unwrap();
    let h3 = md.status(&inbox).unwrap().highest_modseq;
    assert!(h3 > h2);
    // Reading again changes nothing.
    assert_eq!(md.status(&inbox).unwrap().highest_modseq, h3);
    assert_eq!(md.message(&inbox, a.uid).unwrap().modseq, a2.modseq);
}

#[test]
fn rename_moves_children_and_delete_keeps_them() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    let n = |s: &str| Name::new(s).unwrap();
    let guid = MailboxGuid::parse(b"00112233445566778899aabbccddeeff").unwrap();
    md.create(
        &n("A"),
        Create {
            guid: Some(guid),
            uidvalidity: Some(42),
        },
    )
    .unwrap();
    md.create(&n("A/B"), Create::default()).unwrap();
    md.create(&n("AB"), Create::default()).unwrap();
    md.append(&n("A/B"), &mut &body(1)[..], &Append::default())
        .unwrap();
    md.rename(&n("A"), &n("Z/Y")).unwrap();
    let names: Vec<String> = md.list().unwrap().iter().map(|x| x.to_string()).collect();
    assert_eq!(names, ["AB", "INBOX", "Z/Y", "Z/Y/B"]);
    let st = md.status(&n("Z/Y")).unwrap();
    assert_eq!((st.guid, st.uidvalidity), (guid, 42));
    assert_eq!(md.messages(&n("Z/Y/B")).unwrap().len(), 1);
    assert!(matches!(
        md.rename(&n("AB"), &n("Z/Y")),
        Err(Error::MailboxExists(_))
    ));
    assert!(matches!(
        md.rename(&Name::inbox(), &n("Q")),
        Err(Error::Inbox)
    ));
    md.delete(&n("Z/Y")).unwrap();
    let names: Vec<String> = md.list().unwrap().iter().map(|x| x.to_string()).collect();
    assert_eq!(names, ["AB", "INBOX", "Z/Y/B"]);
    assert!(matches!(md.delete(&Name::inbox()), Err(Error::Inbox)));
    assert!(matches!(md.status(&n("Nope")), Err(Error::NoMailbox(_))));
}

#[test]
fn dead_holders_lock_is_broken_and_a_live_one_waited_for() {
    let t = tempfile::tempdir().unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let lock = t.path().join("dovecot-uidlist.lock");
    let md = Maildir::open(
        t.path(),
        Options {
            lock_timeout_ms: 300,
            ..Options::default()
        },
    )
    .unwrap();
    // pid_max is at most 2^22 on Linux: this pid cannot be alive.
    fs::write(&lock, format!("{}:{host}", 1u32 << 23)).unwrap();
    md.append(&Name::inbox(), &mut &body(1)[..], &Append::default())
        .unwrap();
    assert!(!lock.exists());
    fs::write(&lock, format!("{}:{host}", std::process::id())).unwrap();
    match md.append(&Name::inbox(), &mut &body(2)[..], &Append::default()) {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert!(lock.exists(), "a live holder's lock is not ours to remove");
    fs::remove_file(&lock).unwrap();
    assert_eq!(md.messages(&Name::inbox()).unwrap().len(), 1);
}

#[test]
fn limits_and_unsupported_concepts() {
    let t = tempfile::tempdir().unwrap();
    let md = Maildir::open(
        t.path(),
        Options {
            message_bytes_max: 10,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(matches!(
        md.append(&Name::inbox(), &mut &[b'x'; 11][..], &Append::default()),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    let m = md
        .append(&Name::inbox(), &mut &b"0123456789"[..], &Append::default())
        .unwrap();
    let many: Vec<Keyword> = (0..27).map(|i| kw(&format!("k{i}"))).collect();
    assert!(matches!(
        md.set_flags(
            &Name::inbox(),
            m.uid,
            &Flags::with(SystemFlags::empty(), many)
        ),
        Err(Error::KeywordsFull(_))
    ));
    assert!(matches!(
        md.refuse::<()>("ACL"),
        Err(Error::Unsupported("ACL"))
    ));
}

#[test]
fn user_view_reads_the_engine_model() {
    let t = tempfile::tempdir().unwrap();
    let md = open(t.path());
    let user = UserId::new("alice").unwrap();
    let work = Name::new("Work").unwrap();
    md.create(&work, Create::default()).unwrap();
    let b = body(7);
    let m = md
        .append(
            &work,
            &mut &b[..],
            &Append {
                flags: SystemFlags::SEEN,
                keywords: vec![kw("$Label1")],
                internaldate: Some(1_700_000_000),
                ..Append::default()
            },
        )
        .unwrap();
    md.set_subscribed(&work, true).unwrap();
    let v = UserView::new(&md, user.clone());
    let boxes = v.mailboxes_of_user(&user).unwrap();
    let names: Vec<String> = boxes.iter().map(|m| m.name.to_lossy()).collect();
    assert_eq!(names, ["INBOX", "Work"]);
    let mb = v
        .mailbox(&MailboxName::new("Work").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(v.mailbox_by_guid(&mb.guid).unwrap().unwrap().name, mb.name);
    assert_eq!(mb.last_uid, m.uid);
    let recs = v.records(&mb.uniqueid, UidRange::ALL, 100).unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.guid, Guid::of(&b));
    assert_eq!(r.size, b.len() as u64);
    assert_eq!(r.internaldate.0, 1_700_000_000);
    assert_eq!(r.flags, Flags::with(SystemFlags::SEEN, [kw("$label1")]));
    assert_eq!(r.peer_guid.as_ref().unwrap().to_lossy(), m.guid);
    let mut got = Vec::new();
    while let Ok(c) = v.message_bytes(&r.guid, got.len() as u64, 5) {
        if c.is_empty() {
            break;
        }
        got.extend_from_slice(&c);
    }
    assert_eq!(got, b);
    assert_eq!(v.message_size(&r.guid).unwrap(), Some(b.len() as u64));
    assert!(v.message_bytes(&Guid::of(b"nope"), 0, 1).is_err());
    let subs = v.subscriptions(&user).unwrap();
    assert_eq!(subs.len(), 1);
    assert!(subs[0].1.subscribed);
    assert!(v
        .mailbox(&MailboxName::new("Nope").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn a_sidecar_from_before_the_cached_sizes_is_filled_in_without_new_modseqs() {
    let (t, md, a) = with_one_message();
    let inbox = Name::inbox();
    let sidecar = t.path().join("corvid-modseqs");
    let text = fs::read_to_string(&sidecar).unwrap();
    let line = text.lines().nth(1).unwrap().to_string();
    assert!(
        line.contains(" S") && line.contains(" W") && line.contains(" T"),
        "{line}"
    );
    // The line as corvid wrote it before sizes were kept: uid modseq sha1 :letters.
    let f: Vec<&str> = line.split(' ').collect();
    let old_line = format!("{} {} {} {}", f[0], f[1], f[2], f[f.len() - 1]);
    let old = format!("{}\n{old_line}\n", text.lines().next().unwrap());
    fs::write(&sidecar, &old).unwrap();
    let m = md.message(&inbox, a.uid).unwrap();
    assert_eq!((m.modseq, m.size, m.vsize), (a.modseq, a.size, a.vsize));
    assert_eq!(md.status(&inbox).unwrap().highest_modseq, a.modseq);
    // Filled in, the rest of the line unchanged.
    assert_eq!(fs::read_to_string(&sidecar).unwrap(), text);
}

#[test]
fn a_reused_view_gives_way_to_any_foreign_change() {
    let (t, md, a) = with_one_message();
    let inbox = Name::inbox();
    // Quiet long enough that the view is kept and reused.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(md.messages(&inbox).unwrap().len(), 1);
    assert_eq!(md.messages(&inbox).unwrap().len(), 1);
    // Dovecot's flag change: a rename in new/ (into cur/ here).
    let from = t.path().join(&a.file);
    let base = a.file.rsplit('/').next().unwrap().to_string();
    fs::rename(&from, t.path().join("cur").join(format!("{base}:2,S"))).unwrap();
    let m = md.message(&inbox, a.uid).unwrap();
    assert_eq!(m.flags, SystemFlags::SEEN);
    assert!(m.modseq > a.modseq);
    // A delivery by Dovecot: a new unlisted file gets the next UID.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(md.messages(&inbox).unwrap().len(), 1);
    fs::write(
        t.path().join("new").join("1893456009.M2P1.handhost"),
        body(2),
    )
    .unwrap();
    let all = md.messages(&inbox).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].uid, a.uid + 1);
}
