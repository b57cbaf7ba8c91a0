//! `corvid backupd` end to end over csync, no peers needed: Cyrus
//! backupd's banner and texts, a message and its mailbox backed up, then
//! expunged and the mailbox deleted on the "master" — and `cyr_backup`
//! still lists the message at the earlier point in time, `ctl_backups
//! verify` passes, and `list` shows the user.
//!
//! Plus, with the real peers (scripts/peers; SKIP without the env file,
//! FAIL with CI=true): the real Cyrus `sync_client -n backup -u USER`
//! backs a user up into corvid backupd, exits 0, and `cyr_backup` lists
//! every message the master delivered.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::model::crc::SyncCrcs;
use engine::model::{
    Acl, Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, Record, Uid, UidValidity,
    UniqueId, UnixTime, UserId,
};
use proto::csync::Command as CsCommand;
use proto::dlist::{Item, Value};

struct Backupd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Drop for Backupd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_corvid")
}

fn start(user: &str, pass: &str) -> Backupd {
    start_with(user, pass, &[])
}

fn start_with(user: &str, pass: &str, extra: &[&str]) -> Backupd {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let mut c = Command::new(exe())
        .arg("passwd")
        .arg(&passwd)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{pass}\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
    std::fs::create_dir_all(dir.path().join("backup")).unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "backuppartition-default: {d}/backup\nservername: backup.test\n\
             admins: {user}\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(exe())
        .args(["backupd", "-C"])
        .arg(&conf)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "corvid backupd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Backupd {
        child,
        port,
        dir,
        conf,
    }
}

fn tool(conf: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(exe())
        .arg(args[0])
        .arg("-C")
        .arg(conf)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Reads server lines until one not starting with `* ` (the status).
fn until_status(s: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<String>, String) {
    let mut untagged = Vec::new();
    loop {
        while let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..p]).into_owned();
            buf.drain(..p + 2);
            if line.starts_with("* ") && !line.starts_with("* OK") {
                untagged.push(line);
            } else {
                return (untagged, line);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "backupd closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn mailbox_line(mb: &Mailbox, records: &[Record]) -> Vec<u8> {
    let mut crcs = SyncCrcs::EMPTY;
    for r in records {
        crcs.toggle(r);
    }
    let kv = engine::csync::wire::mailbox_kv(
        mb,
        crcs,
        Some(records.iter().map(engine::csync::wire::record_kv).collect()),
    );
    CsCommand::Apply(Item::new("MAILBOX", Value::KvList(kv)))
        .encode()
        .text()
        .to_vec()
}

fn cmd(s: &mut TcpStream, buf: &mut Vec<u8>, line: &[u8]) -> String {
    s.write_all(line).unwrap();
    until_status(s, buf).1
}

#[test]
fn backupd_keeps_expunged_and_deleted_mail_restorable() {
    let b = start("repl", "replpass");
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let (banner, greeting) = until_status(&mut s, &mut buf);
    assert!(
        greeting.starts_with("* OK backup.test Cyrus backup server "),
        "{greeting}"
    );
    assert!(
        banner.iter().any(|l| l == "* SASL PLAIN LOGIN"),
        "{banner:?}"
    );
    assert!(
        !banner.iter().any(|l| l.contains("SIEVE-MAILBOX")),
        "{banner:?}"
    );
    assert_eq!(
        cmd(&mut s, &mut buf, b"STARTTLS\r\n"),
        "NO command not implemented"
    );
    // AUTHENTICATE PLAIN "\0repl\0replpass"
    assert_eq!(
        cmd(
            &mut s,
            &mut buf,
            b"AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n"
        ),
        "OK Success (no protection)"
    );
    assert_eq!(cmd(&mut s, &mut buf, b"GET USER carol\r\n"), "OK Success");

    let body = b"From: a@example.org\r\nSubject: keep me\r\n\r\nhello backup\r\n".to_vec();
    let guid = Guid::of(&body);
    let mut upload = format!(
        "APPLY MESSAGE (%{{default {} {}}}\r\n",
        guid.to_hex(),
        body.len()
    )
    .into_bytes();
    upload.extend_from_slice(&body);
    upload.extend_from_slice(b")\r\n");
    assert_eq!(cmd(&mut s, &mut buf, &upload), "OK Success");

    let id = UniqueId::new("bk-carol-inbox-0001").unwrap();
    let mut mb = Mailbox::new(
        id.clone(),
        MailboxGuid::derive_from_uniqueid(&id),
        MailboxName::new("user.carol").unwrap(),
        Some(UserId::new("carol").unwrap()),
        UidValidity::new(1_700_000_000).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.acl = Acl::parse_cyrus(b"carol\tlrswipkxtecdan\t");
    mb.createdmodseq = ModSeq(1);
    mb.foldermodseq = ModSeq(1);
    mb.last_uid = 1;
    mb.highestmodseq = ModSeq(2);
    let mut rec = Record::new(
        Uid::new(1).unwrap(),
        ModSeq(2),
        guid,
        body.len() as u64,
        UnixTime(1_700_000_001),
    );
    rec.last_updated = UnixTime(1_700_000_001);
    assert_eq!(
        cmd(&mut s, &mut buf, &mailbox_line(&mb, &[rec.clone()])),
        "OK Success"
    );
    // GET USER now reports the backed-up mailbox (what sync_client compares).
    s.write_all(b"GET USER carol\r\n").unwrap();
    let (lines, st) = until_status(&mut s, &mut buf);
    assert_eq!(st, "OK Success");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("* MAILBOX") && l.contains("user.carol")),
        "{lines:?}"
    );

    let before_expunge = unix_now();
    // Entries are stamped in whole seconds: let the clock pass one.
    wait_next_second(before_expunge);

    // The master expunges UID 1, then deletes the mailbox.
    rec.expunged = true;
    rec.modseq = ModSeq(3);
    rec.last_updated = UnixTime(1_700_000_002);
    mb.highestmodseq = ModSeq(3);
    assert_eq!(
        cmd(&mut s, &mut buf, &mailbox_line(&mb, &[rec.clone()])),
        "OK Success"
    );
    let after_expunge = unix_now();
    wait_next_second(after_expunge);
    assert_eq!(
        cmd(&mut s, &mut buf, b"APPLY UNMAILBOX user.carol\r\n"),
        "OK Success"
    );
    assert_eq!(cmd(&mut s, &mut buf, b"EXIT\r\n"), "OK Finished");

    let hex = guid.to_hex();
    // Before the expunge: the message, live.
    let t = before_expunge.to_string();
    let (ok, out) = tool(
        &b.conf,
        &["cyr_backup", "-u", "carol", "-t", &t, "list", "messages"],
    );
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&hex))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("user.carol\t1\t"), "{line}");
    assert!(!line.contains("Expunged"), "{line}");
    // After the expunge: still there, marked expunged.
    let t = after_expunge.to_string();
    let (ok, out) = tool(
        &b.conf,
        &["cyr_backup", "-u", "carol", "-t", &t, "list", "messages"],
    );
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&hex) && l.contains("\\Expunged")),
        "{out}"
    );
    // Now: the mailbox is gone from the latest state ...
    let (ok, out) = tool(&b.conf, &["cyr_backup", "-u", "carol", "list", "mailboxes"]);
    assert!(ok, "{out}");
    assert!(!out.contains("user.carol"), "{out}");
    // ... but its earlier state is listed at the earlier time.
    let t = before_expunge.to_string();
    let (ok, out) = tool(
        &b.conf,
        &["cyr_backup", "-u", "carol", "-t", &t, "list", "mailboxes"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("bk-carol-inbox-0001\tuser.carol\t1\t1"),
        "{out}"
    );

    let (ok, out) = tool(&b.conf, &["ctl_backups", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("carol: OK (3 chunks, 1 messages)"), "{out}");
    let (ok, out) = tool(&b.conf, &["ctl_backups", "list"]);
    assert!(ok, "{out}");
    assert!(out.lines().any(|l| l.starts_with("carol\t3\t")), "{out}");
    // The new names: `backup show` at the earlier time, `backup verify`.
    let (ok, out) = tool(
        &b.conf,
        &["backup", "show", "carol", "--at", &t, "--messages"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("mailbox\tuser.carol\tbk-carol-inbox-0001\tlast_uid=1\tmessages=1"),
        "{out}"
    );
    assert!(
        out.contains(&format!("message\tuser.carol\t1\t{hex}\t")),
        "{out}"
    );
    assert!(!out.contains("deleted\t"), "{out}");
    let (ok, out) = tool(&b.conf, &["backup", "show", "carol"]);
    assert!(
        ok && out.contains("deleted\tuser.carol\tbk-carol-inbox-0001"),
        "{out}"
    );
    let (ok, out) = tool(&b.conf, &["backup", "verify", "carol"]);
    assert!(ok, "{out}");
    // Everything is younger than a day: compaction keeps it all.
    let (ok, out) = tool(&b.conf, &["backup", "compact", "--retention-days", "1"]);
    assert!(ok && out.contains("compacted 0 user(s)"), "{out}");

    // Restore the deleted mailbox as it was before the expunge into a
    // Maildir; the message comes back with its bytes and internaldate.
    let md = b.dir.path().join("maildir");
    let (ok, out) = tool(
        &b.conf,
        &[
            "backup",
            "restore",
            "carol",
            "--at",
            &t,
            "--maildir",
            md.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let maildir = store::maildir::Maildir::open(&md, Default::default()).unwrap();
    let inbox = maildir
        .list()
        .unwrap()
        .into_iter()
        .next()
        .expect("a restored mailbox");
    let msgs = maildir.messages(&inbox).unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let got = maildir.read(&inbox, msgs[0].uid, 0, 1 << 20).unwrap();
    assert_eq!(got, body);
    let _ = &b.dir;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn wait_next_second(t: i64) {
    while unix_now() <= t {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peers_env() -> Option<(PathBuf, HashMap<String, String>)> {
    let path = std::env::var_os("CORVID_PEERS_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corvid-peers/env"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no peers env file at {}", path.display());
        }
        eprintln!(
            "SKIP backupd real sync_client: no peers env file at {} (run scripts/peers/start.sh)",
            path.display()
        );
        return None;
    };
    let env = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((path, env))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// THE PROOF: the real Cyrus sync_client, as a `backup` channel, into
/// corvid backupd.
#[test]
fn real_sync_client_backs_up_into_corvid_backupd() {
    let Some((env_path, env)) = peers_env() else {
        return;
    };
    let b = start(&env["REPL_USER"], &env["REPL_PASS"]);
    let user = format!("bk{}", std::process::id() % 100000);
    let run = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.current_dir(repo())
            .env("CORVID_PEERS_ENV", &env_path)
            .env("CORVID_PEERS_RUN", &env["CORVID_PEERS_RUN"]);
        for (k, v) in &env {
            if k.ends_with("_PORT") {
                c.env(k, v);
            }
        }
        c.args(args).output().unwrap()
    };
    // Fresh mail users of this test's own, able to log in (sasldb): `user`,
    // and `other`, so that `-A` below has a second user with mail whatever
    // other tests did (or did not yet do) on the shared peers.
    let other = format!("{user}x");
    let db = Path::new(&env["CORVID_PEERS_RUN"]).join("sasldb2");
    for who in [&user, &other] {
        for realm in [&env["MASTER_NAME"], &env["REPLICA_NAME"]] {
            let mut c = Command::new("saslpasswd2")
                .args(["-p", "-c", "-f"])
                .arg(&db)
                .args(["-u", realm, who.as_str()])
                .stdin(Stdio::piped())
                .spawn()
                .expect("saslpasswd2");
            c.stdin
                .take()
                .unwrap()
                .write_all(env["USER_PASS"].as_bytes())
                .unwrap();
            assert!(c.wait().unwrap().success(), "saslpasswd2 {who}");
        }
    }
    let _ = Command::new("chown").arg("cyrus:mail").arg(&db).status();
    let mail = repo().join("scripts/peers/mail.py");
    let mail = mail.to_str().unwrap();
    let out = run("python3", &[mail, "mkuser", &user, "Work"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("python3", &[mail, "lmtp", &user, "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sc = repo().join("scripts/peers/sync-client.sh");
    let port = b.port.to_string();
    let out = run(
        "bash",
        &[
            sc.to_str().unwrap(),
            "--port",
            &port,
            "--",
            "-v",
            "-v",
            "-n",
            "backup",
            "-u",
            &user,
        ],
    );
    let log = std::fs::read_to_string(b.dir.path().join("log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "sync_client -n backup failed:\n{}{}\nbackupd log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, listing) = tool(&b.conf, &["cyr_backup", "-u", &user, "list", "messages"]);
    assert!(ok, "{listing}");
    let inbox = format!("user.{user}\t");
    let n = listing.lines().filter(|l| l.starts_with(&inbox)).count();
    assert_eq!(n, 3, "{listing}");
    let (ok, mbs) = tool(&b.conf, &["cyr_backup", "-u", &user, "list", "mailboxes"]);
    assert!(ok && mbs.contains(&format!("user.{user}.Work")), "{mbs}");
    let (ok, v) = tool(&b.conf, &["ctl_backups", "verify"]);
    assert!(ok, "{v}");
    // A second run finds nothing to send and still exits 0.
    let out = run(
        "bash",
        &[
            sc.to_str().unwrap(),
            "--port",
            &port,
            "--",
            "-n",
            "backup",
            "-u",
            &user,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The master expunges UID 2; the next backup records it, not destroys it.
    let before = unix_now();
    wait_next_second(before);
    let out = run("python3", &[mail, "expunge", &user, "INBOX", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        "bash",
        &[
            sc.to_str().unwrap(),
            "--port",
            &port,
            "--",
            "-n",
            "backup",
            "-u",
            &user,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, now) = tool(&b.conf, &["cyr_backup", "-u", &user, "list", "messages"]);
    assert!(
        now.lines()
            .any(|l| l.starts_with(&format!("{inbox}2\t")) && l.contains("\\Expunged")),
        "{now}"
    );

    // restore(8)'s job, against the REAL replica: the INBOX as it was
    // before the expunge, as a new mailbox, three messages live.
    let mut conf = std::fs::read_to_string(&b.conf).unwrap();
    conf.push_str(&format!(
        "restore_authname: {}\nrestore_password: {}\n",
        env["REPL_USER"], env["REPL_PASS"]
    ));
    std::fs::write(&b.conf, conf).unwrap();
    // -A (every user of the master) into the same backupd: exit 0 and the
    // user is still listed, with its two mailboxes.
    for args in [
        vec![mail, "mkuser", &other],
        vec![mail, "lmtp", &other, "2"],
    ] {
        let out = run("python3", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(
        "bash",
        &[
            sc.to_str().unwrap(),
            "--port",
            &port,
            "--",
            "-n",
            "backup",
            "-A",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, list) = tool(&b.conf, &["ctl_backups", "list"]);
    assert!(ok, "{list}");
    assert!(
        list.lines()
            .any(|l| l.split('\t').next() == Some(&user) && l.split('\t').nth(4) == Some("2")),
        "{list}"
    );
    // Each user's backup holds that user's mail only (Cyrus 3.6.1 filed
    // every user's mail into every backup open on the connection).
    assert!(
        list.lines()
            .any(|l| l.split('\t').next() == Some(other.as_str())),
        "-A backed up the second user too: {list}"
    );
    let (ok, shown) = tool(&b.conf, &["backup", "show", &user]);
    assert!(ok, "{shown}");
    let own = format!("mailbox\tuser.{user}");
    for l in shown.lines().filter(|l| l.starts_with("mailbox\t")) {
        assert!(
            l.starts_with(&own),
            "another user's mailbox in {user}'s backup: {l}"
        );
    }

    // Rolling replication's path: the master's sync_client replays a
    // sync log (`-r -f FILE`: MAILBOXES lookups, then per-mailbox syncs)
    // into a fresh backupd; the user's mailboxes and messages land.
    let fresh = start(&env["REPL_USER"], &env["REPL_PASS"]);
    let logf =
        Path::new(&env["CORVID_PEERS_RUN"]).join(format!("master/tmp/backupd-roll-{user}.log"));
    std::fs::write(
        &logf,
        format!("APPEND user.{user}\nMAILBOX user.{user}\nMAILBOX user.{user}.Work\n"),
    )
    .unwrap();
    let _ = Command::new("chown").arg("cyrus:mail").arg(&logf).status();
    let fport = fresh.port.to_string();
    let out = run(
        "bash",
        &[
            sc.to_str().unwrap(),
            "--port",
            &fport,
            "--",
            "-n",
            "backup",
            "-r",
            "-f",
            logf.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, rolled) = tool(
        &fresh.conf,
        &["cyr_backup", "-u", &user, "list", "mailboxes"],
    );
    assert!(ok, "{rolled}");
    assert!(
        rolled.contains(&format!("\tuser.{user}\t"))
            && rolled.contains(&format!("\tuser.{user}.Work\t")),
        "{rolled}"
    );
    let _ = std::fs::remove_file(&logf);

    // The user must exist where we restore to (Cyrus refuses to create a
    // mailbox under a user it does not have): replicate the master to the
    // real replica first, the normal way.
    let out = run("bash", &[sc.to_str().unwrap(), "--", "-u", &user]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = format!("user.{user}.Restored");
    let server = format!("{}:{}", env["PEERS_HOST"], env["REPLICA_CSYNC_PORT"]);
    let t = before.to_string();
    let src = format!("user.{user}");
    let (ok, out) = tool(
        &b.conf,
        &["restore", "-t", &t, "-M", &target, &server, &user, &src],
    );
    assert!(ok, "restore into the real replica failed: {out}");
    // Ask the real replica what it now has.
    let mut s = TcpStream::connect(&server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let _ = until_status(&mut s, &mut buf);
    let ir = format!("\0{}\0{}", env["REPL_USER"], env["REPL_PASS"]);
    let st = cmd(
        &mut s,
        &mut buf,
        format!("AUTHENTICATE PLAIN {}\r\n", b64(ir.as_bytes())).as_bytes(),
    );
    assert!(st.starts_with("OK"), "{st}");
    s.write_all(format!("GET FULLMAILBOX {target}\r\n").as_bytes())
        .unwrap();
    let (lines, st) = until_status(&mut s, &mut buf);
    assert!(st.starts_with("OK"), "{st} {lines:?}");
    let mb = lines
        .iter()
        .find(|l| l.starts_with("* MAILBOX"))
        .unwrap_or_else(|| panic!("no MAILBOX: {lines:?}"));
    assert_eq!(mb.matches("%(UID ").count(), 3, "{mb}");
    assert!(!mb.contains("\\Expunged"), "{mb}");
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Logs in to a csync server and returns the untagged lines of `GET USER`.
fn csync_get_user(server: &str, auth: (&str, &str), user: &str) -> Vec<String> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let _ = until_status(&mut s, &mut buf);
    let ir = format!("\0{}\0{}", auth.0, auth.1);
    let st = cmd(
        &mut s,
        &mut buf,
        format!("AUTHENTICATE PLAIN {}\r\n", b64(ir.as_bytes())).as_bytes(),
    );
    assert!(st.starts_with("OK"), "{st}");
    s.write_all(format!("GET USER {user}\r\n").as_bytes())
        .unwrap();
    let (lines, st) = until_status(&mut s, &mut buf);
    assert!(st.starts_with("OK"), "{st} {lines:?}");
    let _ = cmd(&mut s, &mut buf, b"EXIT\r\n");
    lines
}

/// The value of `KEY` in a printed dlist line (atom or quoted), if any.
fn field(line: &str, key: &str) -> Option<String> {
    let at = line
        .find(&format!(" {key} "))
        .or_else(|| line.find(&format!("({key} ")))?;
    let rest = &line[at + key.len() + 2..];
    let v = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next().unwrap_or_default()
    } else {
        rest.split([' ', ')']).next().unwrap_or_default()
    };
    Some(v.to_owned())
}

/// What GET USER says about a user, in the fields a restore must bring
/// back exactly: per mailbox (by name) its identity, counters and CRCs;
/// subscriptions; Sieve scripts (name, GUID, active); quota roots.
fn restorable_state(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        if l.starts_with("* MAILBOX ") {
            let mut v = Vec::new();
            for k in [
                "MBOXNAME",
                "UNIQUEID",
                "UIDVALIDITY",
                "LAST_UID",
                "HIGHESTMODSEQ",
                "SYNC_CRC",
                "SYNC_CRC_ANNOT",
            ] {
                v.push(format!("{k}={}", field(l, k).unwrap_or_default()));
            }
            let ann = l.find("ANNOTATIONS").map(|i| &l[i..]).unwrap_or("");
            v.push(format!("ANNOTATIONS={}", ann.contains("restore-me")));
            out.push(format!("mailbox {}", v.join(" ")));
        } else if l.starts_with("* LSUB ") {
            out.push(l.clone());
        } else if l.starts_with("* SIEVE ") {
            out.push(format!(
                "sieve {} {} {}",
                field(l, "FILENAME").unwrap_or_default(),
                field(l, "GUID").unwrap_or_default(),
                field(l, "ISACTIVE").unwrap_or_default()
            ));
        } else if l.starts_with("* QUOTA ") {
            out.push(format!(
                "quota {} {}",
                field(l, "ROOT").unwrap_or_default(),
                field(l, "STORAGE").unwrap_or_default()
            ));
        }
    }
    out.sort();
    out
}

/// Every folder of `user` over IMAP: name, then per message UID, FLAGS
/// (without \Recent), INTERNALDATE and RFC822.SIZE; and LSUB.
fn imap_dump(port: &str, user: &str, pass: &str) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let mut n = 0;
    let mut run = |s: &mut TcpStream, buf: &mut Vec<u8>, c: &str| -> Vec<String> {
        n += 1;
        let tag = format!("t{n}");
        s.write_all(format!("{tag} {c}\r\n").as_bytes()).unwrap();
        let mut lines = Vec::new();
        loop {
            while let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..p]).into_owned();
                buf.drain(..p + 2);
                if let Some(st) = line.strip_prefix(&format!("{tag} ")) {
                    assert!(st.starts_with("OK"), "{c}: {st}");
                    return lines;
                }
                lines.push(line);
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "imap closed");
            buf.extend_from_slice(&chunk[..k]);
        }
    };
    // Banner.
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let mut chunk = [0u8; 4096];
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0);
        buf.extend_from_slice(&chunk[..k]);
    }
    let p = buf.windows(2).position(|w| w == b"\r\n").unwrap();
    buf.drain(..p + 2);
    run(&mut s, &mut buf, &format!("LOGIN {user} {pass}"));
    let mut out = Vec::new();
    let mut folders: Vec<String> = run(&mut s, &mut buf, "LIST \"\" \"*\"")
        .iter()
        .filter_map(|l| {
            l.rsplit(" \"/\" ")
                .next()
                .map(|f| f.trim_matches('"').to_owned())
        })
        .collect();
    folders.sort();
    for f in folders {
        out.push(format!("folder {f}"));
        run(&mut s, &mut buf, &format!("EXAMINE \"{f}\""));
        let mut msgs: Vec<String> = run(
            &mut s,
            &mut buf,
            "UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)",
        )
        .into_iter()
        .filter(|l| l.contains("FETCH"))
        .map(|l| {
            let uid = l
                .split("UID ")
                .nth(1)
                .and_then(|r| r.split([' ', ')']).next())
                .unwrap_or("")
                .to_owned();
            let flags = l
                .split("FLAGS (")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap_or("")
                .split(' ')
                .filter(|f| *f != "\\Recent" && !f.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let date = l
                .split("INTERNALDATE \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned();
            let size = l
                .split("RFC822.SIZE ")
                .nth(1)
                .and_then(|r| r.split([' ', ')']).next())
                .unwrap_or("")
                .to_owned();
            format!("  uid={uid} flags=[{flags}] date={date} size={size}")
        })
        .collect();
        msgs.sort();
        out.extend(msgs);
    }
    let mut subs: Vec<String> = run(&mut s, &mut buf, "LSUB \"\" \"*\"")
        .into_iter()
        .map(|l| format!("lsub {}", l.rsplit(' ').next().unwrap_or("")))
        .collect();
    subs.sort();
    out.extend(subs);
    let _ = run(&mut s, &mut buf, "LOGOUT");
    out
}

/// THE ISSUE'S PROOF: real Cyrus 3.6 sync_client backs a user up into
/// corvid backupd; the master then expunges mail and deletes a folder and
/// replicates that too; `corvid backup restore --at <before>` into a real
/// Cyrus server where the user does not exist brings back every message
/// with flags and internaldate, the Sieve script, seen state (\Seen),
/// subscriptions, quota and a folder annotation — compared by IMAP with
/// the master as it was, and by SYNC_CRC (GET USER) with what the master
/// replicated at that time.
#[test]
fn restore_at_an_earlier_time_into_a_fresh_real_cyrus() {
    let Some((env_path, env)) = peers_env() else {
        return;
    };
    let b = start(&env["REPL_USER"], &env["REPL_PASS"]);
    let mut conf = std::fs::read_to_string(&b.conf).unwrap();
    conf.push_str(&format!(
        "restore_authname: {}\nrestore_password: {}\n",
        env["REPL_USER"], env["REPL_PASS"]
    ));
    std::fs::write(&b.conf, conf).unwrap();
    let user = format!("rs{}", std::process::id() % 100000);
    let run = |program: &str, args: &[&str]| {
        let mut c = Command::new(program);
        c.current_dir(repo())
            .env("CORVID_PEERS_ENV", &env_path)
            .env("CORVID_PEERS_RUN", &env["CORVID_PEERS_RUN"]);
        let out = c.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let db = Path::new(&env["CORVID_PEERS_RUN"]).join("sasldb2");
    for realm in [&env["MASTER_NAME"], &env["REPLICA_NAME"]] {
        let mut c = Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-u", realm, &user])
            .stdin(Stdio::piped())
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
    let mail = repo().join("scripts/peers/mail.py");
    let mail = mail.to_str().unwrap();
    let sieve = b.dir.path().join("main.sieve");
    std::fs::write(
        &sieve,
        "require \"fileinto\";\r\nif header :contains \"subject\" \"x\" { fileinto \"Work\"; }\r\n",
    )
    .unwrap();
    run("python3", &[mail, "mkuser", &user, "Work"]);
    run("python3", &[mail, "lmtp", &user, "4"]);
    run("python3", &[mail, "append", &user, "Work", "3"]);
    run(
        "python3",
        &[mail, "flag", &user, "INBOX", "1", "+", "\\Flagged"],
    );
    run(
        "python3",
        &[mail, "flag", &user, "INBOX", "2", "+", "\\Seen"],
    );
    run(
        "python3",
        &[mail, "flag", &user, "Work", "1:2", "+", "\\Seen $Label1"],
    );
    run(
        "python3",
        &[mail, "sieve", &user, "main", sieve.to_str().unwrap()],
    );
    run("python3", &[mail, "quota", &user, "50000"]);
    run(
        "python3",
        &[
            mail,
            "annotate",
            &user,
            "Work",
            "/private/comment",
            "restore-me",
        ],
    );
    let sc = repo().join("scripts/peers/sync-client.sh");
    let sc = sc.to_str().unwrap();
    let port = b.port.to_string();
    run(
        "bash",
        &[sc, "--port", &port, "--", "-n", "backup", "-u", &user],
    );
    let backupd = format!("127.0.0.1:{port}");
    let repl = (env["REPL_USER"].as_str(), env["REPL_PASS"].as_str());
    let before_state = restorable_state(&csync_get_user(&backupd, repl, &user));
    assert_eq!(
        before_state
            .iter()
            .filter(|l| l.starts_with("mailbox "))
            .count(),
        2,
        "{before_state:?}"
    );
    assert!(
        before_state
            .iter()
            .any(|l| l.starts_with("sieve main.script ")),
        "{before_state:?}"
    );
    let before_imap = imap_dump(&env["MASTER_IMAP_PORT"], &user, &env["USER_PASS"]);
    assert!(before_imap.len() >= 2 + 7 + 2, "{before_imap:?}");
    let t = unix_now();
    wait_next_second(t);

    // The master expunges and deletes a folder; backupd records it.
    run("python3", &[mail, "expunge", &user, "INBOX", "1:3"]);
    run("python3", &[mail, "delete", &user, "Work"]);
    run(
        "bash",
        &[sc, "--port", &port, "--", "-n", "backup", "-u", &user],
    );
    let (ok, now) = tool(&b.conf, &["backup", "show", &user]);
    assert!(ok, "{now}");
    // Cyrus's delayed delete renames the folder into DELETED.*; either
    // way it is no longer user.X.Work.
    assert!(
        !now.contains(&format!("mailbox\tuser.{user}.Work\t")),
        "{now}"
    );
    assert!(now.contains("messages=1\texpunged=3"), "{now}");

    // Restore as it was at t into the real replica, where the user does
    // not exist (this test's user is never replicated there otherwise).
    let server = format!("{}:{}", env["PEERS_HOST"], env["REPLICA_CSYNC_PORT"]);
    let (ok, out) = tool(
        &b.conf,
        &[
            "backup",
            "restore",
            &user,
            "--at",
            &t.to_string(),
            "--to",
            &server,
        ],
    );
    assert!(ok, "restore into the real replica failed: {out}");
    let after_state = restorable_state(&csync_get_user(&server, repl, &user));
    assert_eq!(after_state, before_state, "GET USER (SYNC_CRC …) differs");
    let after_imap = imap_dump(&env["REPLICA_IMAP_PORT"], &user, &env["USER_PASS"]);
    assert_eq!(after_imap, before_imap, "IMAP view differs");
    let (ok, v) = tool(&b.conf, &["backup", "verify"]);
    assert!(ok, "{v}");
    // The same point in time as a new user, into the real replica beside
    // the one just restored (new UNIQUEIDs, so no IMAP_MAILBOX_MOVED).
    let other = format!("{user}as");
    let (ok, out) = tool(
        &b.conf,
        &[
            "backup",
            "restore",
            &user,
            "--at",
            &t.to_string(),
            "--to",
            &server,
            "--as",
            &other,
        ],
    );
    assert!(ok, "restore --as failed: {out}");
    let got = csync_get_user(&server, repl, &other);
    assert!(
        got.iter()
            .any(|l| l.contains(&format!("user.{other}.Work"))),
        "{got:?}"
    );
    let orig = restorable_state(&csync_get_user(&server, repl, &user));
    assert_eq!(orig, before_state, "the original user is untouched");
    run("python3", &[mail, "--inst", "replica", "deluser", &other]);
    // And into a Maildir: seen as the S flag, subscriptions, Sieve beside
    // it as Pigeonhole reads it, the quota root as maildirsize.
    let home = b.dir.path().join("home");
    let md = home.join("Maildir");
    std::fs::create_dir_all(&md).unwrap();
    let (ok, out) = tool(
        &b.conf,
        &[
            "backup",
            "restore",
            &user,
            "--at",
            &t.to_string(),
            "--maildir",
            md.to_str().unwrap(),
            "--as",
            &other,
        ],
    );
    assert!(ok, "Maildir restore failed: {out}");
    assert!(out.contains("quota_rule = *:storage=50000K"), "{out}");
    let mut flagged = Vec::new();
    for sub in ["cur", "new", ".Work/cur", ".Work/new"] {
        for e in std::fs::read_dir(md.join(sub)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            flagged.push(
                name.rsplit_once(":2,")
                    .map(|x| x.1.to_owned())
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(flagged.len(), 7, "{flagged:?}");
    assert_eq!(
        flagged.iter().filter(|f| f.contains('S')).count(),
        3,
        "{flagged:?}"
    );
    let subs = std::fs::read_to_string(md.join("subscriptions")).unwrap();
    assert!(subs.lines().any(|l| l == "Work"), "{subs}");
    assert_eq!(
        std::fs::read(home.join("sieve/main.sieve")).unwrap(),
        std::fs::read(&sieve).unwrap()
    );
    assert_eq!(
        std::fs::read_link(home.join(".dovecot.sieve")).unwrap(),
        Path::new("sieve/main.sieve")
    );
    let size = std::fs::read_to_string(md.join("maildirsize")).unwrap();
    assert_eq!(size.lines().next(), Some("51200000S"), "{size}");
    // The restored user now lives on the shared replica with mailboxes the
    // master's own replication never created (its #sieve has another
    // uniqueid): a later `sync_client -A` of another test would stop on it
    // with IMAP_MAILBOX_MOVED. Remove the user from both.
    run("python3", &[mail, "deluser", &user]);
    run("python3", &[mail, "--inst", "replica", "deluser", &user]);
}

/// Waits (bounded, as a hang guard only) for the daemon to exit by itself.
fn exits_by_itself(b: &mut Backupd) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = b.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "backupd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn uses_and_idle_timeout_end_the_daemon_as_cyrus_master_expects() {
    // -U 2: start_with's readiness probe is the first use, ours the
    // second; served to its end, then exit 0.
    let mut b = start_with("repl", "replpass", &["-U", "2", "-s", "-N", "-p", "0"]);
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let (_, greeting) = until_status(&mut s, &mut buf);
    assert!(greeting.starts_with("* OK"), "{greeting}");
    assert_eq!(cmd(&mut s, &mut buf, b"NOOP\r\n"), "OK Noop completed");
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "exited mid-connection"
    );
    // The count is reached: no third connection is taken while ours is
    // live (as a Cyrus service's -U; the wait only bounds the moment the
    // accept loop drops its socket, a hang guard, not a timing claim).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(("127.0.0.1", b.port)) {
            Err(_) => break,
            Ok(extra) => {
                // Only possible in the instant before the loop stopped:
                // it must not be served.
                drop(extra);
                assert!(Instant::now() < deadline, "still accepting after -U 2");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert_eq!(cmd(&mut s, &mut buf, b"NOOP\r\n"), "OK Noop completed");
    assert_eq!(cmd(&mut s, &mut buf, b"EXIT\r\n"), "OK Finished");
    assert!(exits_by_itself(&mut b).success());
    // -T 1: no connection at all, exit 0.
    let mut b = start_with("repl", "replpass", &["-T", "1"]);
    assert!(exits_by_itself(&mut b).success());
}

#[test]
fn a_failed_journal_append_is_refused_and_the_retry_is_backed_up() {
    let b = start("repl", "replpass");
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    until_status(&mut s, &mut buf);
    assert_eq!(
        cmd(
            &mut s,
            &mut buf,
            b"AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n"
        ),
        "OK Success (no protection)"
    );
    let body = b"From: a@example.org\r\nSubject: retry me\r\n\r\nonce\r\n".to_vec();
    let guid = Guid::of(&body);
    let mut upload = format!(
        "APPLY MESSAGE (%{{default {} {}}}\r\n",
        guid.to_hex(),
        body.len()
    )
    .into_bytes();
    upload.extend_from_slice(&body);
    upload.extend_from_slice(b")\r\n");
    assert_eq!(cmd(&mut s, &mut buf, &upload), "OK Success");
    let id = UniqueId::new("bk-dave-inbox-0001").unwrap();
    let mut mb = Mailbox::new(
        id.clone(),
        MailboxGuid::derive_from_uniqueid(&id),
        MailboxName::new("user.dave").unwrap(),
        Some(UserId::new("dave").unwrap()),
        UidValidity::new(1_700_000_000).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.createdmodseq = ModSeq(1);
    mb.foldermodseq = ModSeq(1);
    mb.last_uid = 1;
    mb.highestmodseq = ModSeq(2);
    let mut rec = Record::new(
        Uid::new(1).unwrap(),
        ModSeq(2),
        guid,
        body.len() as u64,
        UnixTime(1_700_000_001),
    );
    rec.last_updated = UnixTime(1_700_000_001);
    // The journal cannot be appended to (a directory in its place, which
    // even root cannot open for writing).
    let users = b.dir.path().join("backup/users");
    std::fs::create_dir_all(users.join("dave.cvb")).unwrap();
    let st = cmd(&mut s, &mut buf, &mailbox_line(&mb, &[rec.clone()]));
    assert!(st.starts_with("NO"), "{st}");
    // The working store never saw it: GET answers as before, so a
    // retrying sync_client sends the mailbox again.
    s.write_all(b"GET USER dave\r\n").unwrap();
    let (lines, st) = until_status(&mut s, &mut buf);
    assert_eq!(st, "OK Success");
    assert!(!lines.iter().any(|l| l.contains("user.dave")), "{lines:?}");
    // The disk heals; the retry is stored and backed up.
    std::fs::remove_dir(users.join("dave.cvb")).unwrap();
    assert_eq!(
        cmd(&mut s, &mut buf, &mailbox_line(&mb, &[rec.clone()])),
        "OK Success"
    );
    assert_eq!(cmd(&mut s, &mut buf, b"EXIT\r\n"), "OK Finished");
    let (ok, out) = tool(&b.conf, &["backup", "show", "dave", "--messages"]);
    assert!(ok, "{out}");
    assert!(out.contains("messages=1\t"), "{out}");
    assert!(out.contains(&guid.to_hex()), "{out}");
    let (ok, out) = tool(&b.conf, &["backup", "verify", "dave"]);
    assert!(ok, "{out}");
}
