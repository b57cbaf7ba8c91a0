//! `corvid sync_client` with TLS toward `corvid sync_server` (no peers
//! needed): STARTTLS when the server offers it and the client has TLS
//! settings (`tls_server_ca_file`), the certificate checked against the
//! `sync_host` name; and `-N`, which skips a user another sync_client
//! holds the lock of.
//!
//! Certificates come from the `openssl` command line (a test CA and a
//! `localhost` leaf), written to a temporary directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::model::{
    Acl, Guid, Mailbox, MailboxGuid, MailboxName, ModSeq, Partition, Record, Uid, UidValidity,
    UniqueId, UnixTime, UserId,
};
use engine::store::{commit, BatchId, Completion, Mutation, WriteBatch};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ca.pem, and leaf.pem/leaf.key for `localhost`, signed by it.
fn certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=corvid test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A corvid sync_server with STARTTLS on a free port.
fn tls_server(dir: &Path) -> (Kill, u16) {
    let exe = env!("CARGO_BIN_EXE_corvid");
    for d in ["conf", "part"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mut c = Command::new(exe)
        .arg("passwd")
        .arg(dir.join("passwd"))
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"replpass\n").unwrap();
    assert!(c.wait().unwrap().success());
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\npartition-default: {d}/part\nservername: localhost\n\
             admins: repl\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n\
             tls_server_cert: {c}/leaf.pem\ntls_server_key: {c}/leaf.key\n",
            d = dir.display(),
            c = dir.parent().unwrap().display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(exe)
        .args(["sync_server", "-C"])
        .arg(&conf)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "corvid sync_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Kill(child), port)
}

/// A source store with one user (INBOX, two messages).
fn source(dir: &Path, port: u16, ca: &Path) -> PathBuf {
    for d in ["conf", "part"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let mut parts = BTreeMap::new();
    parts.insert("default".to_string(), dir.join("part"));
    let mut st =
        store::Embedded::open(store::embedded::Options::new(dir.join("conf"), parts)).unwrap();
    let id = UniqueId::new("tls-0001-inbox").unwrap();
    let mut mb = Mailbox::new(
        id.clone(),
        MailboxGuid::derive_from_uniqueid(&id),
        MailboxName::new("user.tina").unwrap(),
        Some(UserId::new("tina").unwrap()),
        UidValidity::new(1_700_000_000).unwrap(),
        Partition::new("default").unwrap(),
        UnixTime(1_700_000_000),
    );
    mb.acl = Acl::parse_cyrus(b"tina\tlrswipkxtecdan\t");
    let mut b = WriteBatch::new(BatchId(1));
    let mut recs = Vec::new();
    for n in 1..=2u32 {
        let bytes = Bytes::from(format!(
            "From: a@example.org\r\nSubject: tls {n}\r\n\r\nbody {n}\r\n"
        ));
        let guid = Guid::of(&bytes);
        mb.highestmodseq = ModSeq(n as u64);
        mb.last_uid = n;
        recs.push(Record::new(
            Uid::new(n).unwrap(),
            ModSeq(n as u64),
            guid,
            bytes.len() as u64,
            UnixTime(1_700_000_000 + n as i64),
        ));
        b.push(Mutation::PutMessage { guid, bytes });
    }
    b.push(Mutation::PutMailbox(mb));
    for r in recs {
        b.push(Mutation::PutRecord {
            mailbox: id.clone(),
            record: r,
        });
    }
    assert!(matches!(commit(&mut st, &b), Completion::Durable { .. }));
    drop(st);
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\npartition-default: {d}/part\nsync_host: localhost\n\
             sync_port: {port}\nsync_authname: repl\nsync_password: replpass\n\
             sync_try_imap: no\ntls_server_ca_file: {ca}\n",
            d = dir.display(),
            ca = ca.display(),
        ),
    )
    .unwrap();
    conf
}

fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn sync_client(conf: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corvid"))
        .arg("sync_client")
        .arg("-C")
        .arg(conf)
        .arg("-v")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        plain(&String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn starttls_then_replication_and_dash_n_skips_a_locked_user() {
    let tmp = tempfile::tempdir().unwrap();
    certs(tmp.path());
    let (_server, port) = tls_server(&tmp.path().join("replica"));
    let conf = source(&tmp.path().join("master"), port, &tmp.path().join("ca.pem"));

    let (ok, log) = sync_client(&conf, &["-u", "tina"]);
    assert!(ok, "{log}");
    assert!(log.contains("TLS on"), "no STARTTLS:\n{log}");
    assert!(log.contains("mailbox replicated"), "{log}");
    let (ok, log) = sync_client(&conf, &["-u", "tina"]);
    assert!(ok && log.contains("TLS on"), "{log}");
    assert!(!log.contains("mailbox replicated"), "resent:\n{log}");

    // A client that does not trust the server's CA stops before login.
    let untrusted = tmp.path().join("untrusted.conf");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("ca.pem", "leaf.pem");
    std::fs::write(&untrusted, text).unwrap();
    let (ok, log) = sync_client(&untrusted, &["-o", "-u", "tina"]);
    assert!(!ok, "an untrusted certificate was accepted:\n{log}");
    assert!(!log.contains("authenticated"), "{log}");

    // -N: while another process holds tina's lock toward this replica,
    // her job is skipped (and the run still succeeds).
    let locks = tmp.path().join("master/conf/sync/locks");
    let lockdir = std::fs::read_dir(&locks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(lockdir.join("74696e61"))
        .unwrap();
    // flock is per open file description: a child process's own open
    // of the file conflicts with this one.
    held.lock().unwrap();
    let (ok, log) = sync_client(&conf, &["-N", "-u", "tina"]);
    assert!(ok, "{log}");
    assert!(
        log.contains("skipped"),
        "-N did not skip the locked user:\n{log}"
    );
    assert!(!log.contains("done job=USER tina"), "{log}");
    drop(held);
    let (ok, log) = sync_client(&conf, &["-N", "-u", "tina"]);
    assert!(ok && log.contains("done job=USER tina"), "{log}");
}
