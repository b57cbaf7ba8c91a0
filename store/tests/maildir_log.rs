//! `dovecot.mailbox.log` shared with the real Dovecot 2.3, both ways:
//!
//! 1. History doveadm writes (rename, delete, unsubscribe) is what corvid's
//!    maildir model shows: a tombstone with the GUID and date, a rename
//!    date, an unsubscribe date.
//! 2. History corvid writes travels in Dovecot's own dsync: after corvid
//!    deletes, renames and unsubscribes on maildir A, a real `doveadm sync`
//!    of A with its earlier copy B deletes, renames and unsubscribes on B
//!    too (without the log Dovecot would bring the deleted mailbox back),
//!    and `doveadm dump` decodes corvid's records.
//!
//! doveadm runs as uid 5000 with a private config; without doveadm or root
//! the tests print SKIP and pass, except with CI=true, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use engine::model::{MailboxName, ModSeq, Subscription, UnixTime, UserId};
use engine::store::{commit, BatchId, MailRead, Mutation, WriteBatch};
use store::maildir::mailbox_log::{name_hash, Kind};
use store::maildir::{Create, Maildir, Name, Options, UserStore, UserView};

const MAIL_UID: u32 = 5000;

fn user() -> UserId {
    UserId::new("corvid").unwrap()
}

struct Dove {
    tmp: tempfile::TempDir,
    home: PathBuf,
    conf: PathBuf,
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
    let d = Dove { tmp, home, conf };
    d.chown();
    Some(d)
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
    fn chown(&self) {
        chown_tree(self.tmp.path());
    }

    fn maildir(&self, which: &str) -> PathBuf {
        self.home.join(which)
    }

    /// doveadm on maildir `which` (under the home).
    fn run(&self, which: &str, args: &[&str]) -> String {
        let out = Command::new("doveadm")
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("USER", "corvid")
            .arg("-c")
            .arg(&self.conf)
            .arg("-o")
            .arg(format!(
                "mail_location=maildir:{}",
                self.maildir(which).display()
            ))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("Error") && !err.contains("Panic"),
            "doveadm {args:?} failed: {:?}\n{err}",
            out.status
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn guid_of(&self, which: &str, mailbox: &str) -> String {
        let out = self.run(which, &["mailbox", "status", "guid", mailbox]);
        out.trim()
            .rsplit_once("guid=")
            .expect("guid= in mailbox status")
            .1
            .to_string()
    }

    fn list(&self, which: &str, subscribed: bool) -> Vec<String> {
        let mut args = vec!["mailbox", "list"];
        if subscribed {
            args.push("-s");
        }
        let mut v: Vec<String> = self.run(which, &args).lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn name(s: &str) -> MailboxName {
    MailboxName::new(s).unwrap()
}

#[test]
fn history_doveadm_writes_is_what_corvid_reads() {
    let Some(d) = dove("history_doveadm_writes_is_what_corvid_reads") else {
        return;
    };
    let t0 = now();
    d.run("A", &["mailbox", "create", "-s", "Gone", "Old", "Keep"]);
    let gone = d.guid_of("A", "Gone");
    d.run("A", &["mailbox", "rename", "Old", "New"]);
    d.run("A", &["mailbox", "delete", "Gone"]);
    d.run("A", &["mailbox", "unsubscribe", "Keep"]);
    let t1 = now();

    let md = Maildir::open(d.maildir("A"), Options::default()).unwrap();
    let view = UserView::new(&md, user());
    let tombs = view.tombstones_of_user(&user()).unwrap();
    assert_eq!(tombs.len(), 1, "{tombs:?}");
    assert_eq!(tombs[0].guid.to_hex(), gone);
    assert!((t0..=t1).contains(&tombs[0].deleted_at.0));

    let new = view.mailbox(&name("New")).unwrap().unwrap();
    assert!(
        (t0..=t1).contains(&new.renamed_or_created_at.0),
        "rename date {:?} not in {t0}..={t1}",
        new.renamed_or_created_at
    );
    // Never renamed: no date, as Dovecot's dsync sends it.
    let keep = view.mailbox(&name("Keep")).unwrap().unwrap();
    assert_eq!(keep.renamed_or_created_at, UnixTime(0));

    let subs = view.subscriptions(&user()).unwrap();
    let keep_sub = subs
        .iter()
        .find(|(n, _)| *n == name("Keep"))
        .expect("Keep's unsubscribe is known")
        .1;
    assert!(!keep_sub.subscribed);
    assert!((t0..=t1).contains(&keep_sub.changed_at.0));
    // Dovecot keeps the subscriptions of deleted and renamed mailboxes.
    let gone_sub = subs.iter().find(|(n, _)| *n == name("Gone")).unwrap().1;
    assert!(gone_sub.subscribed && (t0..=t1).contains(&gone_sub.changed_at.0));
}

#[test]
fn history_corvid_writes_travels_in_doveadm_sync() {
    let Some(d) = dove("history_corvid_writes_travels_in_doveadm_sync") else {
        return;
    };
    let a = d.maildir("A");
    {
        let md = Maildir::open(&a, Options::default()).unwrap();
        for n in ["Gone", "Old", "Keep"] {
            md.create(&Name::new(n).unwrap(), Create::default())
                .unwrap();
            md.set_subscribed(&Name::new(n).unwrap(), true).unwrap();
        }
    }
    d.chown();
    // B becomes A's copy through Dovecot's own dsync.
    let b = format!("maildir:{}", d.maildir("B").display());
    d.run("A", &["sync", &b]);
    assert_eq!(d.list("B", false), ["Gone", "INBOX", "Keep", "Old"]);

    // corvid changes A.
    // B's subscriptions were dated by that sync; ours must be newer to
    // win (a tie subscribes, in Dovecot as in corvid).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let at = now();
    let mut st = UserStore::new(Maildir::open(&a, Options::default()).unwrap(), user());
    let gone = st.mailbox(&name("Gone")).unwrap().unwrap();
    let old = st.mailbox(&name("Old")).unwrap().unwrap();
    let batch = WriteBatch {
        id: BatchId(1),
        mutations: vec![
            Mutation::DeleteMailbox {
                uniqueid: gone.uniqueid.clone(),
                at: UnixTime(at),
                modseq: ModSeq(1),
            },
            Mutation::RenameMailbox {
                uniqueid: old.uniqueid.clone(),
                new_name: name("New"),
                at: UnixTime(at),
                modseq: ModSeq(1),
            },
            Mutation::SetSubscription {
                user: user(),
                name: name("Keep"),
                subscription: Subscription {
                    subscribed: false,
                    changed_at: UnixTime(at),
                },
            },
        ],
    };
    commit(&mut st, &batch).into_proof(batch.id).unwrap();
    // What corvid reads back from its own log.
    let tombs = st.tombstones_of_user(&user()).unwrap();
    assert_eq!(tombs.len(), 1);
    assert_eq!(
        (tombs[0].guid, tombs[0].deleted_at),
        (gone.guid, UnixTime(at))
    );
    let new = st.mailbox(&name("New")).unwrap().unwrap();
    assert_eq!(
        (new.guid, new.renamed_or_created_at),
        (old.guid, UnixTime(at))
    );
    drop(st);
    d.chown();

    // Dovecot decodes corvid's records.
    let dump = d.run(
        "A",
        &["dump", a.join("dovecot.mailbox.log").to_str().unwrap()],
    );
    assert!(
        dump.contains(&format!("delete-mailbox {}", gone.guid.to_hex())),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("rename {}", hex(&name_hash("New")))),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("unsubscribe {}", hex(&name_hash("Keep")))),
        "{dump}"
    );

    // And its dsync applies them to B.
    d.run("A", &["sync", &b]);
    assert_eq!(d.list("B", false), ["INBOX", "Keep", "New"]);
    assert_eq!(d.list("A", false), ["INBOX", "Keep", "New"]);
    assert!(!d.list("B", true).contains(&"Keep".to_string()));
    // Kind is re-exported for readers of the raw log.
    let _ = Kind::DeleteMailbox;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
