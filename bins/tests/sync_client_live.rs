//! THE PROOF for `corvid sync_client`: a corvid store replicated into the
//! REAL Cyrus 3.6.1 `sync_server` of `scripts/peers`, checked by asking
//! that replica (`GET USER` over csync, as the admin `repl`) what it now
//! holds: same UIDs, GUIDs, flags (through SYNC_CRC), counters, quota,
//! seen and subscriptions.
//!
//! Needs the peers' env file ($CORVID_PEERS_ENV, else
//! /tmp/corvid-peers/env). Without it the test prints SKIP and passes,
//! except with `CI=true`, where it fails. Each run uses a fresh user name.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use engine::model::{
    Acl, AnnotationEntry, AnnotationOwner, AnnotationValue, Flags, Guid, Keyword, Mailbox,
    MailboxGuid, MailboxName, ModSeq, Partition, QuotaResource, QuotaRoot, Record, Seen, SeqSet,
    SieveName, SieveScript, Subscription, SyncCrcs, SyncLogLine, SystemFlags, Uid, UidValidity,
    UniqueId, UnixTime, UserId,
};
use engine::store::{commit, BatchId, Completion, MailRead, Mutation, UidRange, WriteBatch};
use proto::csync::{ClientDecoder, Event, Response, SaslData, StatusKind};
use proto::dlist::{Item, KvList};

fn peers() -> Option<HashMap<String, String>> {
    let path = std::env::var_os("CORVID_PEERS_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corvid-peers/env"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no peers env file at {}", path.display());
        }
        eprintln!(
            "SKIP sync_client_live: no peers env file at {} (run scripts/peers/start.sh)",
            path.display()
        );
        return None;
    };
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// `GET USER` on the real replica: every untagged item, by key.
fn replica_user(env: &HashMap<String, String>, user: &str) -> Vec<Item> {
    let port: u16 = env["REPLICA_CSYNC_PORT"].parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect replica");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut dec = ClientDecoder::new();
    let mut buf = [0u8; 65536];
    let mut next = |s: &mut TcpStream, dec: &mut ClientDecoder| -> Response {
        loop {
            match dec.poll_event().unwrap() {
                Some(Event::Decoded(r)) => return r,
                Some(_) => continue,
                None => {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "replica closed");
                    dec.handle_input(&buf[..n]);
                }
            }
        }
    };
    while !matches!(next(&mut s, &mut dec), Response::Greeting(_)) {}
    let mut plain = Vec::new();
    plain.push(0);
    plain.extend_from_slice(env["REPL_USER"].as_bytes());
    plain.push(0);
    plain.extend_from_slice(env["REPL_PASS"].as_bytes());
    let ir = SaslData::encode(&plain, true);
    s.write_all(b"AUTHENTICATE PLAIN ").unwrap();
    s.write_all(ir.as_wire()).unwrap();
    s.write_all(b"\r\n").unwrap();
    match next(&mut s, &mut dec) {
        Response::Status(st) => assert_eq!(st.kind, StatusKind::Ok, "auth"),
        r => panic!("auth answer {r:?}"),
    }
    s.write_all(format!("GET USER {user}\r\n").as_bytes())
        .unwrap();
    let mut items = Vec::new();
    loop {
        match next(&mut s, &mut dec) {
            Response::Data(i) => items.push(i),
            Response::Status(st) => {
                assert_eq!(st.kind, StatusKind::Ok, "GET USER: {st:?}");
                break;
            }
            r => panic!("unexpected {r:?}"),
        }
    }
    let _ = s.write_all(b"EXIT\r\n");
    items
}

fn mailboxes(items: &[Item]) -> BTreeMap<String, KvList> {
    items
        .iter()
        .filter(|i| i.key_is("MAILBOX"))
        .map(|i| {
            let kv = i.value.as_kvlist().unwrap().clone();
            let name = kv.get("MBOXNAME").unwrap().as_str().unwrap().to_owned();
            (name, kv)
        })
        .collect()
}

fn num(kv: &KvList, k: &str) -> u64 {
    kv.get(k)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no {k}"))
}

struct Local {
    dir: PathBuf,
    conf: PathBuf,
}

impl Local {
    fn new(env: &HashMap<String, String>, tag: &str) -> Local {
        let dir = std::env::temp_dir().join(format!("corvid-sc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::create_dir_all(dir.join("spool")).unwrap();
        let conf = dir.join("imapd.conf");
        std::fs::write(
            &conf,
            format!(
                "configdirectory: {}\npartition-default: {}\nsync_host: 127.0.0.1\nsync_port: {}\nsync_authname: {}\nsync_password: {}\n",
                dir.join("config").display(),
                dir.join("spool").display(),
                env["REPLICA_CSYNC_PORT"],
                env["REPL_USER"],
                env["REPL_PASS"],
            ),
        )
        .unwrap();
        Local { dir, conf }
    }

    fn store(&self) -> store::Embedded {
        let mut parts = BTreeMap::new();
        parts.insert("default".to_string(), self.dir.join("spool"));
        // The store's lock is an flock on an open file description. While
        // the other test in this binary forks a child (before its exec
        // closes our descriptors), that child briefly shares the lock we
        // just released by dropping the previous handle; so `Locked` here
        // can be a passing shadow. Retry a bounded number of times; a lock
        // really held (a corvid process still running) still fails.
        let mut tries = 0;
        loop {
            match store::Embedded::open(store::embedded::Options::new(
                self.dir.join("config"),
                parts.clone(),
            )) {
                Ok(st) => return st,
                Err(store::embedded::Error::Locked(_)) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("open store: {e:?}"),
            }
        }
    }

    fn write(&self, muts: Vec<Mutation>) {
        let mut st = self.store();
        let mut b = WriteBatch::new(BatchId(1));
        for m in muts {
            b.push(m);
        }
        match commit(&mut st, &b) {
            Completion::Durable { .. } => {}
            other => panic!("local write: {other:?}"),
        }
    }

    fn sync_client(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .arg("sync_client")
            .arg("-C")
            .arg(&self.conf)
            .arg("-v")
            .args(args)
            .output()
            .expect("run corvid sync_client");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), err)
    }
}

fn message(n: u32, user: &str) -> Bytes {
    Bytes::from(format!(
        "From: a@example.org\r\nTo: {user}@example.org\r\nSubject: corvid sync_client test {n}\r\nMessage-ID: <sc{n}.{user}@corvid>\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\n\r\nbody {n} of the sync_client live test\r\n"
    ))
}

fn mailbox(user: &str, name: &str, id: &str) -> Mailbox {
    let uniqueid = UniqueId::new(id).unwrap();
    let mut mb = Mailbox::new(
        uniqueid.clone(),
        MailboxGuid::derive_from_uniqueid(&uniqueid),
        MailboxName::new(name).unwrap(),
        Some(UserId::new(user).unwrap()),
        UidValidity::new(1_700_000_000 + id.len() as u32).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.acl = Acl::parse_cyrus(format!("{user}\tlrswipkxtecdan\t").as_bytes());
    mb.createdmodseq = ModSeq(1);
    mb.foldermodseq = ModSeq(1);
    mb
}

/// Records `uids` of `user`'s messages, with the mailbox counters set.
fn fill(mb: &mut Mailbox, user: &str, uids: std::ops::RangeInclusive<u32>) -> Vec<Mutation> {
    let mut muts = Vec::new();
    let mut recs = Vec::new();
    for n in uids {
        let bytes = message(n + mb.name.as_bytes().len() as u32 * 100, user);
        let guid = Guid::of(&bytes);
        let modseq = mb.highestmodseq.get() + 1;
        mb.highestmodseq = ModSeq(modseq);
        let mut r = Record::new(
            Uid::new(n).unwrap(),
            ModSeq(modseq),
            guid,
            bytes.len() as u64,
            UnixTime(1_700_000_000 + n as i64),
        );
        r.last_updated = UnixTime(1_700_000_100 + n as i64);
        if n == 1 {
            // A per-message annotation: counts in SYNC_CRC_ANNOT.
            r.annotations.set(
                AnnotationEntry::new("/comment").unwrap(),
                AnnotationOwner::Shared,
                AnnotationValue {
                    modseq: ModSeq(modseq),
                    value: Bytes::from_static(b"first message"),
                },
            );
        }
        if n % 2 == 1 {
            r.flags = Flags::with(SystemFlags::SEEN, [Keyword::new("$Label1").unwrap()]);
        } else {
            r.flags = Flags::with(SystemFlags::FLAGGED, []);
        }
        muts.push(Mutation::PutMessage { guid, bytes });
        recs.push(r);
        mb.last_uid = n;
        mb.last_appenddate = UnixTime(1_700_000_000 + n as i64);
    }
    muts.push(Mutation::PutMailbox(mb.clone()));
    for r in recs {
        muts.push(Mutation::PutRecord {
            mailbox: mb.uniqueid.clone(),
            record: r,
        });
    }
    muts
}

fn local_crcs(local: &Local, mb: &Mailbox) -> SyncCrcs {
    local.store().reader().sync_crcs(&mb.uniqueid).unwrap()
}

#[test]
fn sync_client_replicates_into_real_cyrus() {
    let Some(env) = peers() else { return };
    let tag = format!(
        "sc{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 100000
    );
    let user = tag.as_str();
    let local = Local::new(&env, user);
    let inbox_name = format!("user.{user}");
    let work_name = format!("user.{user}.Work");
    let mut inbox = mailbox(user, &inbox_name, &format!("{tag}-0001-inbox"));
    let mut work = mailbox(user, &work_name, &format!("{tag}-0002-work"));
    let root = MailboxName::new(inbox_name.as_bytes()).unwrap();
    inbox.quotaroot = Some(root.clone());
    work.quotaroot = Some(root.clone());
    // A mailbox-level annotation: travels in APPLY MAILBOX's ANNOTATIONS.
    inbox.annotations.set(
        AnnotationEntry::new("/comment").unwrap(),
        AnnotationOwner::Shared,
        AnnotationValue {
            modseq: ModSeq(1),
            value: Bytes::from_static(b"the inbox"),
        },
    );
    let uid_u = UserId::new(user).unwrap();
    let mut muts = fill(&mut inbox, user, 1..=3);
    muts.extend(fill(&mut work, user, 1..=2));
    let mut q = QuotaRoot::default();
    q.limits.insert(QuotaResource::Storage, 100_000);
    muts.push(Mutation::PutQuota {
        root: root.clone(),
        quota: q,
    });
    muts.push(Mutation::SetSubscription {
        user: uid_u.clone(),
        name: MailboxName::new(work_name.as_bytes()).unwrap(),
        subscription: Subscription {
            subscribed: true,
            changed_at: UnixTime(1_700_000_000),
        },
    });
    muts.push(Mutation::PutSeen {
        user: uid_u.clone(),
        mailbox: inbox.uniqueid.clone(),
        seen: Seen {
            lastread: UnixTime(1_700_000_500),
            lastuid: 3,
            lastchange: UnixTime(1_700_000_500),
            seenuids: SeqSet::parse(b"1:2").unwrap(),
        },
    });
    muts.push(Mutation::PutSieve {
        user: uid_u.clone(),
        script: SieveScript {
            name: SieveName::new("main").unwrap(),
            last_update: UnixTime(1_700_000_000),
            content: Bytes::from_static(b"require [\"fileinto\"];\r\nkeep;\r\n"),
        },
    });
    muts.push(Mutation::ActivateSieve {
        user: uid_u.clone(),
        name: Some(SieveName::new("main").unwrap()),
    });
    local.write(muts);

    // 1. First USER sync into an empty real replica.
    let (ok, log) = local.sync_client(&["-u", user]);
    assert!(ok, "sync_client -u failed:\n{log}");
    eprintln!("first run:\n{log}");
    let items = replica_user(&env, user);
    let mbs = mailboxes(&items);
    for (mb, n) in [(&inbox, 3), (&work, 2)] {
        let name = String::from_utf8_lossy(mb.name.as_bytes()).into_owned();
        let kv = mbs
            .get(&name)
            .unwrap_or_else(|| panic!("replica lacks {name}: {items:?}\n{log}"));
        assert_eq!(num(kv, "LAST_UID"), n, "{name}");
        assert_eq!(
            kv.get("UNIQUEID").unwrap().as_bytes().unwrap(),
            mb.uniqueid.as_bytes()
        );
        assert_eq!(num(kv, "UIDVALIDITY"), mb.uidvalidity.get() as u64);
        assert_eq!(num(kv, "HIGHESTMODSEQ"), mb.highestmodseq.get());
        let crcs = local_crcs(&local, mb);
        // The replica computed its CRCs over the records it stored: equal
        // CRCs mean equal UIDs, GUIDs, flags, modseqs and dates.
        assert_eq!(num(kv, "SYNC_CRC"), crcs.basic as u64, "{name} SYNC_CRC");
        assert_eq!(num(kv, "SYNC_CRC_ANNOT"), crcs.annot as u64, "{name}");
    }
    let annots = format!("{:?}", mbs[&inbox_name].get("ANNOTATIONS"));
    assert!(
        annots.contains("/comment") && annots.contains("the inbox"),
        "mailbox annotation missing on the replica: {annots}"
    );
    assert!(
        items.iter().any(|i| i.key_is("QUOTA")),
        "no quota on the replica: {items:?}"
    );
    assert!(items.iter().any(|i| i.key_is("SEEN")), "no seen: {items:?}");
    let lsub = items.iter().find(|i| i.key_is("LSUB")).expect("LSUB");
    assert!(format!("{:?}", lsub.value).contains("Work"));
    assert!(
        items
            .iter()
            .any(|i| i.key_is("SIEVE") && format!("{:?}", i.value).contains("main.script")),
        "no sieve script: {items:?}"
    );
    assert!(
        items.iter().any(|i| i.key_is("SIEVE")
            && format!("{:?}", i.value).contains("main.bc")
            && i.value
                .as_kvlist()
                .and_then(|k| k.get("ISACTIVE"))
                .and_then(|v| v.as_u64())
                == Some(1)),
        "main is not the active script: {items:?}"
    );

    // 2. Nothing changed: a second run sends no mailbox.
    let (ok, log2) = local.sync_client(&["-u", user]);
    assert!(ok, "second run failed:\n{log2}");
    assert!(!log2.contains("mailbox replicated"), "resent:\n{log2}");

    // 3. Incremental: one new message and a flag change, with -m.
    let mut muts = fill(&mut inbox, user, 4..=4);
    let mut r1 = local
        .store()
        .reader()
        .record(&inbox.uniqueid, Uid::new(2).unwrap())
        .unwrap()
        .unwrap();
    inbox.highestmodseq = ModSeq(inbox.highestmodseq.get() + 1);
    r1.modseq = inbox.highestmodseq;
    r1.flags = Flags::with(SystemFlags::ANSWERED, [Keyword::new("$Done").unwrap()]);
    muts.push(Mutation::PutMailbox(inbox.clone()));
    muts.push(Mutation::PutRecord {
        mailbox: inbox.uniqueid.clone(),
        record: r1,
    });
    local.write(muts);
    let (ok, log3) = local.sync_client(&["-m", &inbox_name]);
    assert!(ok, "-m failed:\n{log3}");
    let items = replica_user(&env, user);
    let kv = &mailboxes(&items)[&inbox_name];
    assert_eq!(num(kv, "LAST_UID"), 4);
    assert_eq!(num(kv, "HIGHESTMODSEQ"), inbox.highestmodseq.get());
    assert_eq!(num(kv, "SYNC_CRC"), local_crcs(&local, &inbox).basic as u64);

    // 4. -A: everything again (unchanged) succeeds.
    let (ok, log4) = local.sync_client(&["-A"]);
    assert!(ok, "-A failed:\n{log4}");
    //    -u with -f: the users come from a file.
    let users = local.dir.join("users.txt");
    std::fs::write(&users, format!("{user}\n")).unwrap();
    let (ok, log4b) = local.sync_client(&["-u", "-f", users.to_str().unwrap()]);
    assert!(
        ok && log4b.contains(&format!("USER {user}")),
        "-u -f:\n{log4b}"
    );

    // 5. Rolling once (-1): a change logged in the store's sync log is
    //    replicated and the log is trimmed.
    let mut muts = fill(&mut work, user, 3..=3);
    muts.push(Mutation::AppendSyncLog {
        channel: String::new(),
        line: SyncLogLine::Append(work.name.clone()),
    });
    local.write(muts);
    let (ok, log5) = local.sync_client(&["-1"]);
    assert!(ok, "-1 failed:\n{log5}");
    let items = replica_user(&env, user);
    let kv = &mailboxes(&items)[&work_name];
    assert_eq!(num(kv, "LAST_UID"), 3, "-1 did not replicate:\n{log5}");
    assert_eq!(num(kv, "SYNC_CRC"), local_crcs(&local, &work).basic as u64);
    assert!(
        local
            .store()
            .reader()
            .sync_log("", 0, 10)
            .unwrap()
            .is_empty(),
        "-1 left the log"
    );

    // 6. Split brain: the REAL replica changes behind our back (a flag
    //    set and a message appended over its own IMAP). The next sync
    //    fails the checksum twice, runs the full update (GET FULLMAILBOX,
    //    GET FETCH), copies the replica's data back into our store and
    //    converges.
    add_user(&env, user);
    mail(
        &env,
        &[
            "--inst",
            "replica",
            "flag",
            user,
            "INBOX",
            "1",
            "+",
            "\\Flagged",
        ],
    );
    mail(&env, &["--inst", "replica", "append", user, "INBOX", "1"]);
    let (ok, log6) = local.sync_client(&["-u", user]);
    assert!(ok, "sync after divergence failed:\n{log6}");
    assert!(log6.contains("full update"), "no full update:\n{log6}");
    let reader = local.store().reader();
    let mine = reader
        .records(&inbox.uniqueid, UidRange::ALL, usize::MAX)
        .unwrap();
    assert_eq!(mine.len(), 5, "copyback did not add the replica's message");
    assert!(mine[0].flags.system.contains(SystemFlags::FLAGGED));
    assert!(reader.has_message(&mine[4].guid).unwrap());
    let items = replica_user(&env, user);
    let kv = &mailboxes(&items)[&inbox_name];
    let now = reader
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    assert_eq!(num(kv, "LAST_UID"), now.last_uid as u64);
    assert_eq!(num(kv, "HIGHESTMODSEQ"), now.highestmodseq.get());
    let crcs = local_crcs(&local, &inbox);
    assert_eq!(
        num(kv, "SYNC_CRC"),
        crcs.basic as u64,
        "not converged:\n{log6}"
    );
    assert_eq!(num(kv, "SYNC_CRC_ANNOT"), crcs.annot as u64);
    // And now it is quiet again.
    let (ok, log7) = local.sync_client(&["-u", user]);
    assert!(ok && !log7.contains("mailbox replicated"), "{log7}");

    // 7. A rename on our side becomes APPLY RENAME on the replica (same
    //    uniqueid, new name); a delete with a tombstone becomes UNMAILBOX.
    local.write(vec![Mutation::RenameMailbox {
        uniqueid: work.uniqueid.clone(),
        new_name: MailboxName::new(format!("user.{user}.Projects")).unwrap(),
        at: UnixTime(1_700_001_000),
        modseq: ModSeq(work.highestmodseq.get() + 1),
    }]);
    let (ok, log8) = local.sync_client(&["-u", user]);
    assert!(ok, "rename sync failed:\n{log8}");
    let mbs = mailboxes(&replica_user(&env, user));
    let projects = format!("user.{user}.Projects");
    assert!(!mbs.contains_key(&work_name), "old name still there");
    assert_eq!(
        mbs[&projects].get("UNIQUEID").unwrap().as_bytes().unwrap(),
        work.uniqueid.as_bytes()
    );
    local.write(vec![Mutation::DeleteMailbox {
        uniqueid: work.uniqueid.clone(),
        at: UnixTime(1_700_002_000),
        modseq: ModSeq(work.highestmodseq.get() + 2),
    }]);
    let (ok, log9) = local.sync_client(&["-u", user]);
    assert!(ok, "delete sync failed:\n{log9}");
    let mbs = mailboxes(&replica_user(&env, user));
    assert!(
        !mbs.contains_key(&projects),
        "deleted mailbox still on the replica"
    );
    assert!(mbs.contains_key(&inbox_name));

    // 8. -f: replay a Cyrus-format log file (a quoted name included).
    //    The copyback moved our INBOX's counters: start from the store.
    inbox = local
        .store()
        .reader()
        .mailbox_by_uniqueid(&inbox.uniqueid)
        .unwrap()
        .unwrap();
    let mut muts = fill(&mut inbox, user, 6..=6);
    muts.push(Mutation::PutMailbox(inbox.clone()));
    local.write(muts);
    let logfile = local.dir.join("replay.log");
    std::fs::write(&logfile, format!("APPEND \"{inbox_name}\"\nBOGUS line\n")).unwrap();
    // No -O here: Cyrus 3.6.1 keeps APPLY FORCE's mode in a reused
    // sync_server process, so later sessions of other tests would be
    // forced too (seen here: a replica that accepted a lower LAST_UID,
    // then died on an assertion in mailbox.c).
    let (ok, log10) = local.sync_client(&["-z", "-f", logfile.to_str().unwrap()]);
    assert!(ok, "-f failed:\n{log10}");
    let kv = &mailboxes(&replica_user(&env, user))[&inbox_name];
    assert_eq!(num(kv, "LAST_UID"), 6, "-f did not replicate:\n{log10}");

    // 9. -r: the rolling daemon picks up the store's sync log, trims it,
    //    and stops when the shutdown file appears.
    let mut muts = fill(&mut inbox, user, 7..=7);
    muts.push(Mutation::PutMailbox(inbox.clone()));
    muts.push(Mutation::AppendSyncLog {
        channel: String::new(),
        line: SyncLogLine::Mailbox(inbox.name.clone()),
    });
    local.write(muts);
    let stop = local.dir.join("shutdown");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .arg("sync_client")
        .arg("-C")
        .arg(&local.conf)
        .args(["-r", "-d", "1", "-F"])
        .arg(&stop)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn -r");
    let mut replicated = false;
    for _ in 0..60 {
        let kv = &mailboxes(&replica_user(&env, user))[&inbox_name];
        if num(kv, "LAST_UID") == 7 {
            replicated = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(&stop, b"").unwrap();
    let mut status = None;
    for _ in 0..60 {
        if let Some(s) = daemon.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = status.unwrap_or_else(|| {
        let _ = daemon.kill();
        panic!("-r did not stop at the shutdown file")
    });
    assert!(replicated, "-r never replicated UID 7");
    assert!(status.success(), "-r exited with {status}");
    assert!(!stop.exists(), "-r left the shutdown file");
    assert!(local
        .store()
        .reader()
        .sync_log("", 0, 10)
        .unwrap()
        .is_empty());

    let _ = std::fs::remove_dir_all(&local.dir);
}

/// The user in the peers' sasldb (both realms), so mail.py can log in.
fn add_user(env: &HashMap<String, String>, user: &str) {
    let db = Path::new(&env["CORVID_PEERS_RUN"]).join("sasldb2");
    for realm in [&env["MASTER_NAME"], &env["REPLICA_NAME"]] {
        let mut c = Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-u", realm, user])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("saslpasswd2");
        c.stdin
            .take()
            .unwrap()
            .write_all(env["USER_PASS"].as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "saslpasswd2 {user}");
    }
    let _ = Command::new("chown").arg("cyrus:mail").arg(&db).status();
}

fn mail(env: &HashMap<String, String>, args: &[&str]) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut c = Command::new("python3");
    c.arg(repo.join("scripts/peers/mail.py")).args(args);
    if let Ok(p) = std::env::var("CORVID_PEERS_ENV") {
        c.env("CORVID_PEERS_ENV", p);
    }
    c.env("CORVID_PEERS_RUN", &env["CORVID_PEERS_RUN"]);
    let out = c.output().expect("mail.py");
    assert!(
        out.status.success(),
        "mail.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `corvid sync_client` into `corvid sync_server` (no peers needed): the
/// same USER sync, checked by the corvid replica's own `GET USER`.
#[test]
fn sync_client_replicates_into_corvid_sync_server() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_corvid");
    let passwd = dir.path().join("passwd");
    let mut c = Command::new(exe)
        .arg("passwd")
        .arg(&passwd)
        .arg("repl")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"replpass\n").unwrap();
    assert!(c.wait().unwrap().success());
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::create_dir_all(dir.path().join("part")).unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\npartition-default: {d}/part\nservername: corvid.test\n\
             admins: repl\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new(exe)
            .args(["sync_server", "-C"])
            .arg(&conf)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "corvid sync_server did not start");
    let env: HashMap<String, String> = [
        ("REPLICA_CSYNC_PORT", port.to_string()),
        ("REPL_USER", "repl".to_string()),
        ("REPL_PASS", "replpass".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let user = "carol";
    let local = Local::new(&env, &format!("corvid{port}"));
    let mut inbox = mailbox(user, "user.carol", "c-0001-inbox");
    let mut work = mailbox(user, "user.carol.Work", "c-0002-work");
    let mut muts = fill(&mut inbox, user, 1..=3);
    muts.extend(fill(&mut work, user, 1..=2));
    muts.push(Mutation::SetSubscription {
        user: UserId::new(user).unwrap(),
        name: work.name.clone(),
        subscription: Subscription {
            subscribed: true,
            changed_at: UnixTime(1),
        },
    });
    local.write(muts);
    let (ok, log) = local.sync_client(&["-u", user]);
    assert!(ok, "sync_client into corvid failed:\n{log}");
    let items = replica_user(&env, user);
    let mbs = mailboxes(&items);
    for mb in [&inbox, &work] {
        let kv = &mbs[std::str::from_utf8(mb.name.as_bytes()).unwrap()];
        assert_eq!(num(kv, "LAST_UID"), mb.last_uid as u64);
        assert_eq!(num(kv, "HIGHESTMODSEQ"), mb.highestmodseq.get());
        let crcs = local_crcs(&local, mb);
        assert_eq!(num(kv, "SYNC_CRC"), crcs.basic as u64);
        assert_eq!(num(kv, "SYNC_CRC_ANNOT"), crcs.annot as u64);
    }
    assert!(items.iter().any(|i| i.key_is("LSUB")));
    let (ok, log2) = local.sync_client(&["-u", user]);
    assert!(ok && !log2.contains("mailbox replicated"), "{log2}");
    let _ = std::fs::remove_dir_all(&local.dir);
}
