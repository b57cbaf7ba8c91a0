//! store::maildir against the real Dovecot 2.3 `doveadm`: a maildir
//! written by corvid is read by doveadm exactly as written, and a maildir
//! written by doveadm is read by corvid exactly as doveadm reports it.
//!
//! doveadm runs with a private config (no daemons, no auth): it accesses
//! mail as uid/gid 5000 (it refuses root), so the test runs as root and
//! hands the maildir to 5000. Without doveadm or root the tests print SKIP
//! and pass, except with CI=true, where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use engine::model::{Flags, Guid, Keyword, MailboxGuid, SystemFlags, UserId};
use engine::store::{MailRead, StoreWrite, UidRange};
use store::maildir::{Append, Create, Maildir, Name, Options, UserView};

const MAIL_UID: u32 = 5000;

/// (mailbox, uid) → (guid, flags without \Recent, full text).
type Fetched = BTreeMap<(String, u32), (String, BTreeSet<String>, Vec<u8>)>;

struct Dove {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    conf: PathBuf,
    maildir: PathBuf,
}

fn dove(test: &str) -> Option<Dove> {
    let why = if Command::new("doveadm").arg("help").output().is_err() {
        Some("doveadm not installed")
    } else if String::from_utf8_lossy(&Command::new("id").arg("-u").output().ok()?.stdout).trim()
        != "0"
    {
        Some("not root (doveadm must switch to uid 5000)")
    } else {
        None
    };
    if let Some(why) = why {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}, and CI=true");
        }
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let conf = tmp.path().join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = /dev/stderr\n\
             ssl = no\nprotocols =\nmail_location = maildir:~/Maildir\n\
             namespace inbox {{\n  inbox = yes\n  separator = /\n  prefix =\n}}\n\
             mail_privileged_group =\nmail_uid = {MAIL_UID}\nmail_gid = {MAIL_UID}\n\
             first_valid_uid = 1000\nfirst_valid_gid = 1000\n",
            d = tmp.path().display()
        ),
    )
    .unwrap();
    chown_tree(tmp.path());
    let maildir = home.join("Maildir");
    Some(Dove {
        _tmp: tmp,
        home,
        conf,
        maildir,
    })
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::chown(p, Some(MAIL_UID), Some(MAIL_UID)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

impl Dove {
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        use std::io::Write;
        let mut cmd = Command::new("doveadm");
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("USER", "corvid")
            .arg("-c")
            .arg(&self.conf)
            .arg("-o")
            .arg(format!("mail_location=maildir:{}", self.maildir.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            let mut i = child.stdin.take().unwrap();
            if let Some(b) = stdin {
                i.write_all(b).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("Error") && !err.contains("Panic"),
            "doveadm {args:?} failed: {:?}\n{err}",
            out.status
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `doveadm fetch 'mailbox uid guid flags text' ALL` for every mailbox,
    /// as (mailbox, uid) → (guid, flags without \Recent, text).
    fn fetch_all(&self) -> Fetched {
        let out = self.run(
            &["fetch", "mailbox uid guid flags text", "mailbox", "*"],
            None,
        );
        let mut m = BTreeMap::new();
        for rec in out.split("\x0c\n").filter(|r| !r.is_empty()) {
            let (head, text) = rec.split_once("text:\n").expect("text field last");
            let mut f = BTreeMap::new();
            for l in head.lines() {
                let (k, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
                f.insert(k.to_string(), v.to_string());
            }
            let flags = f["flags"]
                .split(' ')
                .filter(|s| !s.is_empty() && *s != "\\Recent")
                .map(str::to_string)
                .collect();
            m.insert(
                (f["mailbox"].clone(), f["uid"].parse().unwrap()),
                (f["guid"].clone(), flags, text.as_bytes().to_vec()),
            );
        }
        m
    }

    /// `doveadm mailbox status` of every mailbox: name → (messages,
    /// uidvalidity, uidnext, guid).
    fn status_all(&self) -> BTreeMap<String, (u32, u32, u32, String)> {
        let out = self.run(
            &[
                "-f",
                "tab",
                "mailbox",
                "status",
                "messages uidvalidity uidnext guid",
                "*",
            ],
            None,
        );
        let mut lines = out.lines();
        let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
        let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Vec<&str> = l.split('\t').collect();
                (
                    v[col("mailbox")].to_string(),
                    (
                        v[col("messages")].parse().unwrap(),
                        v[col("uidvalidity")].parse().unwrap(),
                        v[col("uidnext")].parse().unwrap(),
                        v[col("guid")].to_string(),
                    ),
                )
            })
            .collect()
    }

    fn lines(&self, args: &[&str]) -> Vec<String> {
        self.run(args, None).lines().map(str::to_string).collect()
    }
}

fn flag_names(m: &store::maildir::Message) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for f in SystemFlags::CYRUS_ORDER {
        if m.flags.contains(f) {
            s.insert(f.name().unwrap().to_string());
        }
    }
    s.extend(m.keywords.iter().map(|k| k.to_string()));
    s
}

fn kw(s: &str) -> Keyword {
    Keyword::new(s).unwrap()
}

fn msg(n: usize) -> Vec<u8> {
    format!(
        "From: a{n}@example.com\nTo: b@example.com\nSubject: message {n}\nMessage-ID: <{n}@corvid>\n\nline one of {n}\nline two\n"
    )
    .into_bytes()
}

#[test]
fn maildir_written_by_corvid_is_read_by_doveadm() {
    let Some(d) = dove("maildir_written_by_corvid_is_read_by_doveadm") else {
        return;
    };
    let md = Maildir::open(&d.maildir, Options::default()).unwrap();
    let inbox = Name::inbox();
    let work = Name::new("Work").unwrap();
    let sub = Name::new("Work/Sub").unwrap();
    let cafe = Name::new("Café & Bar").unwrap();
    let work_guid = MailboxGuid::parse(b"fedcba9876543210fedcba9876543210").unwrap();
    md.create(
        &work,
        Create {
            guid: Some(work_guid),
            uidvalidity: Some(2222),
        },
    )
    .unwrap();
    md.create(&sub, Create::default()).unwrap();
    md.create(&cafe, Create::default()).unwrap();

    let plain = md
        .append(&inbox, &mut &msg(1)[..], &Append::default())
        .unwrap();
    assert!(plain.file.starts_with("new/"), "{}", plain.file);
    md.append(
        &inbox,
        &mut &msg(2)[..],
        &Append {
            flags: SystemFlags::SEEN | SystemFlags::FLAGGED,
            keywords: vec![kw("MyKw")],
            internaldate: Some(1_700_000_000),
            ..Append::default()
        },
    )
    .unwrap();
    let third = md
        .append(
            &inbox,
            &mut &msg(3)[..],
            &Append {
                flags: SystemFlags::ANSWERED,
                keywords: vec![kw("$Label1"), kw("MyKw")],
                ..Append::default()
            },
        )
        .unwrap();
    let gone = md
        .append(&inbox, &mut &msg(4)[..], &Append::default())
        .unwrap();
    md.expunge(&inbox, &[gone.uid]).unwrap();
    // Expunging the last message never gives its UID back.
    assert_eq!(md.status(&inbox).unwrap().uidnext, gone.uid + 1);
    md.set_flags(
        &inbox,
        third.uid,
        &Flags::with(SystemFlags::DELETED | SystemFlags::DRAFT, [kw("$Label1")]),
    )
    .unwrap();
    // dsync-style appends: a chosen UID and a GUID that is not a base name
    // (kept in the uidlist G extension) ...
    md.append(
        &work,
        &mut &msg(5)[..],
        &Append {
            uid: Some(7),
            guid: Some("<explicit-guid@x>".into()),
            flags: SystemFlags::SEEN,
            ..Append::default()
        },
    )
    .unwrap();
    // ... and a GUID that is a Dovecot base name with the right sizes,
    // which becomes the file's base name.
    let body = msg(6);
    let lf = body.iter().filter(|&&b| b == b'\n').count();
    let base = format!(
        "1893456000.M100000P1.otherhost,S={},W={}",
        body.len(),
        body.len() + lf
    );
    md.append(
        &sub,
        &mut &body[..],
        &Append {
            uid: Some(3),
            guid: Some(base.clone()),
            ..Append::default()
        },
    )
    .unwrap();
    md.append(&cafe, &mut &msg(7)[..], &Append::default())
        .unwrap();
    md.set_subscribed(&work, true).unwrap();
    md.set_subscribed(&cafe, true).unwrap();
    md.set_subscribed(&sub, true).unwrap();
    md.set_subscribed(&sub, false).unwrap();

    // What corvid believes it wrote.
    let mut expect = BTreeMap::new();
    let mut expect_status = BTreeMap::new();
    for name in md.list().unwrap() {
        let st = md.status(&name).unwrap();
        expect_status.insert(
            name.to_string(),
            (st.messages, st.uidvalidity, st.uidnext, st.guid.to_hex()),
        );
        for m in md.messages(&name).unwrap() {
            let text = md.read(&name, m.uid, 0, 1 << 20).unwrap();
            expect.insert(
                (name.to_string(), m.uid),
                (m.guid.clone(), flag_names(&m), text),
            );
        }
    }
    assert_eq!(expect.len(), 6);
    assert_eq!(expect_status["Work"], (1, 2222, 8, work_guid.to_hex()));
    assert_eq!(expect[&("Work".to_string(), 7)].0, "<explicit-guid@x>");
    assert_eq!(expect[&("Work/Sub".to_string(), 3)].0, base);

    chown_tree(&d.home);
    let got = d.fetch_all();
    assert_eq!(got, expect, "doveadm fetch differs from what corvid wrote");
    assert_eq!(d.status_all(), expect_status);
    let mut listed = d.lines(&["mailbox", "list"]);
    listed.sort();
    assert_eq!(listed, ["Café & Bar", "INBOX", "Work", "Work/Sub"]);
    let mut subscribed = d.lines(&["mailbox", "list", "-s"]);
    subscribed.sort();
    assert_eq!(subscribed, ["Café & Bar", "Work"]);

    // Dovecot only appends to our files (no renumbering): corvid reads the
    // same after doveadm has indexed it.
    for name in md.list().unwrap() {
        let st = md.status(&name).unwrap();
        assert_eq!(
            expect_status[name.as_str()],
            (st.messages, st.uidvalidity, st.uidnext, st.guid.to_hex())
        );
    }
}

#[test]
fn maildir_written_by_dovecot_is_read_by_corvid() {
    let Some(d) = dove("maildir_written_by_dovecot_is_read_by_corvid") else {
        return;
    };
    for i in 0..3 {
        d.run(&["save", "-m", "INBOX"], Some(&msg(i)));
    }
    d.run(&["mailbox", "create", "Folder/Child", "Café"], None);
    d.run(&["mailbox", "subscribe", "Folder/Child", "Café"], None);
    d.run(&["save", "-m", "Folder/Child"], Some(&msg(10)));
    d.run(&["save", "-m", "Café"], Some(&msg(11)));
    d.run(
        &[
            "flags",
            "add",
            "\\Seen \\Flagged",
            "mailbox",
            "INBOX",
            "uid",
            "1",
        ],
        None,
    );
    d.run(
        &[
            "flags",
            "add",
            "MyKw $Label1 \\Answered",
            "mailbox",
            "INBOX",
            "uid",
            "2",
        ],
        None,
    );
    d.run(
        &[
            "flags",
            "add",
            "\\Deleted Other",
            "mailbox",
            "Café",
            "uid",
            "1",
        ],
        None,
    );
    d.run(&["expunge", "mailbox", "INBOX", "uid", "3"], None);
    let want = d.fetch_all();
    let want_status = d.status_all();
    assert_eq!(want.len(), 4);

    let md = Maildir::open(&d.maildir, Options::default()).unwrap();
    let names: Vec<String> = md.list().unwrap().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["Café", "Folder/Child", "INBOX"]);
    let mut got = BTreeMap::new();
    let mut got_status = BTreeMap::new();
    for name in md.list().unwrap() {
        let st = md.status(&name).unwrap();
        got_status.insert(
            name.to_string(),
            (st.messages, st.uidvalidity, st.uidnext, st.guid.to_hex()),
        );
        for m in md.messages(&name).unwrap() {
            // Read in small chunks to exercise offsets.
            let mut text = Vec::new();
            loop {
                let c = md.read(&name, m.uid, text.len() as u64, 7).unwrap();
                if c.is_empty() {
                    break;
                }
                text.extend_from_slice(&c);
            }
            got.insert(
                (name.to_string(), m.uid),
                (m.guid.clone(), flag_names(&m), text),
            );
        }
    }
    assert_eq!(got, want);
    // doveadm's list omits the parent "Folder" only because it does not
    // exist; our list has exactly the mailboxes with a directory.
    let mut want_names: BTreeSet<String> = want_status.keys().cloned().collect();
    want_names.remove("Folder");
    assert_eq!(
        got_status.keys().cloned().collect::<BTreeSet<_>>(),
        want_names
    );
    for (k, v) in &got_status {
        assert_eq!(&want_status[k], v, "status of {k}");
    }
    let subs: Vec<String> = md
        .subscriptions()
        .unwrap()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(subs, ["Folder/Child", "Café"]);
    // The engine-model view agrees with doveadm too.
    let user = UserId::new("corvid").unwrap();
    let view = UserView::new(&md, user.clone());
    let mut records = 0;
    for mb in view.mailboxes_of_user(&user).unwrap() {
        let name = mb.name.to_lossy();
        assert_eq!(mb.guid.to_hex(), want_status[&name].3);
        assert_eq!(mb.uidvalidity.get(), want_status[&name].1);
        assert_eq!(mb.last_uid + 1, want_status[&name].2);
        for r in view.records(&mb.uniqueid, UidRange::ALL, 1000).unwrap() {
            let (guid, _, text) = &want[&(name.clone(), r.uid.get())];
            assert_eq!(&r.peer_guid.unwrap().to_lossy(), guid);
            assert_eq!(r.guid, Guid::of(text));
            records += 1;
        }
    }
    assert_eq!(records, want.len());
    // Dovecot's `new/` files with flags are renamed in place; corvid reads
    // both places.
    let inbox = md.messages(&Name::inbox()).unwrap();
    assert!(inbox.iter().all(|m| m.file.starts_with("new/")));
    assert_eq!(
        inbox[1].model_flags(),
        Flags::with(SystemFlags::ANSWERED, [kw("MyKw"), kw("$Label1")])
    );
}

/// The engine's write path (WriteBatch → commit → DurableProof) on a
/// maildir, read back by doveadm: what a dsync brain would write.
#[test]
fn engine_batches_on_a_maildir_are_read_by_doveadm() {
    use engine::model::{
        Mailbox, MailboxName, ModSeq, Partition, PeerMailGuid, Record, Subscription, Uid,
        UidValidity, UniqueId, UnixTime,
    };
    use engine::store::{commit, BatchId, Completion, Mutation, WriteBatch};
    use store::maildir::UserStore;

    let Some(d) = dove("engine_batches_on_a_maildir_are_read_by_doveadm") else {
        return;
    };
    let user = UserId::new("corvid").unwrap();
    let mut st = UserStore::new(
        Maildir::open(&d.maildir, Options::default()).unwrap(),
        user.clone(),
    );
    let guid = MailboxGuid::parse(b"0123456789abcdef0123456789abcdef").unwrap();
    let mut mb = Mailbox::new(
        UniqueId::from_mailbox_guid(&guid),
        guid,
        MailboxName::new("Archive/2024").unwrap(),
        Some(user.clone()),
        UidValidity::new(777).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.last_uid = 20;
    let b1 = msg(1);
    let b2 = msg(2);
    let mut r1 = Record::new(
        Uid::new(5).unwrap(),
        ModSeq(1),
        Guid::of(&b1),
        b1.len() as u64,
        UnixTime(1_600_000_000),
    );
    r1.flags = Flags::with(SystemFlags::SEEN, [kw("Work")]);
    r1.peer_guid = Some(PeerMailGuid::new("<peer-guid-1@x>").unwrap());
    let r2 = Record::new(
        Uid::new(9).unwrap(),
        ModSeq(1),
        Guid::of(&b2),
        b2.len() as u64,
        UnixTime(1_600_000_001),
    );
    // Bytes staged in chunks, as a machine streams them.
    let h = st.stage_begin(Guid::of(&b2), b2.len() as u64).unwrap();
    for c in b2.chunks(7) {
        st.stage_chunk(h, c).unwrap();
    }
    st.stage_end(h).unwrap();
    let mut batch = WriteBatch::new(BatchId(1));
    batch
        .push(Mutation::PutMailbox(mb.clone()))
        .push(Mutation::PutMessage {
            guid: Guid::of(&b1),
            bytes: b1.clone().into(),
        })
        .push(Mutation::LinkMessage {
            guid: Guid::of(&b2),
            size: b2.len() as u64,
        })
        .push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r1.clone(),
        })
        .push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r2.clone(),
        })
        .push(Mutation::SetSubscription {
            user: user.clone(),
            name: MailboxName::new("Archive/2024").unwrap(),
            subscription: Subscription {
                subscribed: true,
                changed_at: UnixTime(1),
            },
        });
    match commit(&mut st, &batch) {
        Completion::Durable { batch_id, .. } => assert_eq!(batch_id, BatchId(1)),
        other => panic!("{other:?}"),
    }
    // Then a flag change on one record, an expunge of the other, a rename.
    let mut r1b = r1.clone();
    r1b.flags = Flags::with(SystemFlags::ANSWERED, []);
    let mut r2b = r2.clone();
    r2b.expunged = true;
    let mut batch = WriteBatch::new(BatchId(2));
    batch
        .push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r1b,
        })
        .push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r2b,
        })
        .push(Mutation::RenameMailbox {
            uniqueid: mb.uniqueid.clone(),
            new_name: MailboxName::new("Old/2024").unwrap(),
            at: UnixTime(1_700_000_100),
            modseq: ModSeq(9),
        });
    assert!(matches!(
        commit(&mut st, &batch),
        Completion::Durable { .. }
    ));
    // Refused whole, before anything is applied: a quota root.
    let mut bad = WriteBatch::new(BatchId(3));
    bad.push(Mutation::DeleteMailbox {
        uniqueid: mb.uniqueid.clone(),
        at: UnixTime(2),
        modseq: ModSeq(2),
    })
    .push(Mutation::PutQuota {
        root: MailboxName::new("Old/2024").unwrap(),
        quota: Default::default(),
    });
    assert!(matches!(commit(&mut st, &bad), Completion::Failed { .. }));

    chown_tree(&d.home);
    let got = d.fetch_all();
    let keys: Vec<(String, u32)> = got.keys().cloned().collect();
    assert_eq!(keys, [("Old/2024".to_string(), 5)]);
    let (g, flags, text) = &got[&("Old/2024".to_string(), 5)];
    assert_eq!(g, "<peer-guid-1@x>");
    assert_eq!(flags, &BTreeSet::from(["\\Answered".to_string()]));
    assert_eq!(text, &b1);
    let status = d.status_all();
    assert_eq!(
        status["Old/2024"],
        (1, 777, 21, "0123456789abcdef0123456789abcdef".to_string())
    );
    assert_eq!(d.lines(&["mailbox", "list", "-s"]), ["Archive/2024"]);
    // And the engine view agrees.
    let back = st.mailbox_by_guid(&guid).unwrap().unwrap();
    assert_eq!(back.name.to_lossy(), "Old/2024");
    assert_eq!((back.uidvalidity.get(), back.last_uid), (777, 20));
}

/// corvid and Dovecot writing one maildir at the same time: doveadm saves
/// and flag changes race corvid's appends, flag changes and expunges.
/// Afterwards every message has one UID, both sides see the same UIDs,
/// GUIDs and flags, and nothing corvid acknowledged is missing.
#[test]
fn corvid_and_dovecot_share_a_maildir_concurrently() {
    let Some(d) = dove("corvid_and_dovecot_share_a_maildir_concurrently") else {
        return;
    };
    // Dovecot creates the directories (owned by the mail uid) so that
    // both can write into them while running as different users.
    d.run(&["save", "-m", "INBOX"], Some(&msg(1000)));
    let md = Maildir::open(&d.maildir, Options::default()).unwrap();
    let inbox = Name::inbox();
    let rounds = 12;
    let mut acked = Vec::new();
    let dovecot_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 0..rounds {
                d.run(&["save", "-m", "INBOX"], Some(&msg(2000 + i)));
                d.run(
                    &["flags", "add", "\\Flagged", "mailbox", "INBOX", "ALL"],
                    None,
                );
            }
            dovecot_done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Keep writing for as long as Dovecot does (bounded), so the two
        // really overlap.
        let mut i = 0;
        while !dovecot_done.load(std::sync::atomic::Ordering::SeqCst) && i < 400 {
            let m = md
                .append(&inbox, &mut &msg(3000 + i)[..], &Append::default())
                .unwrap();
            md.set_flags(&inbox, m.uid, &Flags::with(SystemFlags::SEEN, []))
                .unwrap();
            acked.push(m.uid);
            i += 1;
        }
    });
    eprintln!("corvid appended {} messages while doveadm ran", acked.len());
    let expunged = acked.remove(0);
    md.expunge(&inbox, &[expunged]).unwrap();
    chown_tree(&d.home);
    let want = d.fetch_all();
    let ours = md.messages(&inbox).unwrap();
    assert_eq!(ours.len(), 1 + rounds + acked.len());
    assert_eq!(want.len(), ours.len());
    for m in &ours {
        let (guid, flags, _) = &want[&("INBOX".to_string(), m.uid)];
        assert_eq!(&m.guid, guid, "UID {}", m.uid);
        assert_eq!(&flag_names(m), flags, "UID {}", m.uid);
    }
    for uid in &acked {
        let m = ours.iter().find(|m| m.uid == *uid).expect("acknowledged");
        assert!(m.flags.contains(SystemFlags::SEEN));
    }
    assert!(!ours.iter().any(|m| m.uid == expunged));
}
