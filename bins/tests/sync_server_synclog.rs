//! A corvid replica replicates onward while it serves: the real Cyrus
//! 3.6.1 master's `sync_client` replicates into `corvid sync_server`
//! (`sync_log: 1`, `sync_log_chain: 1`), which logs every change it applies
//! in Cyrus's sync_log lines; a `corvid sync_client -r` on the same store,
//! running at the same time, reads that log and keeps the real, initially
//! empty `replica2` current.
//!
//! Checked, in order:
//! * without `sync_log_chain` a replica logs nothing (as Cyrus's
//!   sync_server suppresses its own logging), with it the log holds
//!   Cyrus's lines for what arrived (`MAILBOX`, `SUB`, `QUOTA`, `META` …);
//! * after the initial sync, and again after changes on the master (new
//!   mail, flags, expunge, a rename, a deleted folder, seen, subscription,
//!   quota, annotation), replica2's `GET USER` equals corvid's line for
//!   line, and what the user sees over IMAP on replica2 equals the master;
//! * the rolling client trims what it replicated: the log empties;
//! * deleting the user (`APPLY UNUSER`) reaches replica2 through corvid's
//!   log (this also cleans up what the test left there, but for the
//!   DELETED.* mailboxes Cyrus keeps too).
//!
//! Needs the peers' env file ($CORVID_PEERS_ENV, else /tmp/corvid-peers/env);
//! without it the test prints SKIP and passes, except with `CI=true`. Runs
//! as root (saslpasswd2 for its own user). Fresh user names every run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::store::MailRead;
use proto::csync::{ClientDecoder, Event, Response, SaslData, StatusKind};

#[path = "support/peers.rs"]
mod support;
use support::Peers;

fn peers() -> Option<Peers> {
    support::peers("sync_server_synclog")
}

/// `GET /metrics` on `port` until `pred` holds (bounded: 60 s).
fn scrape_until(port: u16, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut body = String::new();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            if s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").is_ok() {
                let _ = s.read_to_string(&mut body);
            }
        }
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never matched:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process killed when the guard drops.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A corvid store with one imapd.conf for its sync_server (logging as
/// `extra` says) and its sync_client (aimed at replica2).
struct Corvid {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Corvid {
    fn new(p: &Peers, extra: &str) -> Corvid {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let mut c = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .arg("passwd")
            .arg(&passwd)
            .arg("repl")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
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
                 admins: repl\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\n\
                 corvid_passwd_file: {d}/passwd\n\
                 sync_host: 127.0.0.1\nsync_port: {port}\nsync_authname: {u}\n\
                 sync_password: {pw}\nsync_try_imap: no\n{extra}",
                d = dir.path().display(),
                port = p.port("REPLICA2_CSYNC_PORT"),
                u = p.get("REPL_USER"),
                pw = p.get("REPL_PASS"),
            ),
        )
        .unwrap();
        Corvid { dir, conf }
    }

    fn serve(&self) -> (Proc, u16) {
        let port = free_port();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(["sync_server", "-C"])
            .arg(&self.conf)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CORVID_LOG", "info")
            .stderr(log)
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
        (Proc(child), port)
    }

    /// `corvid sync_client -r` on this store, beside the server.
    fn rolling(&self) -> Proc {
        let log = std::fs::File::create(self.dir.path().join("client.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(["sync_client", "-C"])
            .arg(&self.conf)
            .args(["-v", "-r", "-d", "1"])
            .arg("-F")
            .arg(self.dir.path().join("shutdown"))
            .env("CORVID_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// The store's sync log (default channel), read beside the writers.
    fn log(&self) -> Vec<String> {
        let mut parts = std::collections::BTreeMap::new();
        parts.insert("default".to_string(), self.dir.path().join("part"));
        let o = store::embedded::Options::new(self.dir.path().join("conf"), parts);
        let r = store::Embedded::open_read_only(&o).expect("open the store read-only");
        r.sync_log("", 0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, l)| String::from_utf8(store::embedded::synclog::encode(&l).unwrap()).unwrap())
            .collect()
    }

    fn tail(&self, file: &str) -> String {
        let t = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

/// `GET USER` over csync: the untagged lines.
fn get_user(port: u16, login: (&str, &str), user: &str) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut dec = ClientDecoder::new();
    let mut buf = vec![0u8; 65536];
    let mut next = |s: &mut TcpStream, dec: &mut ClientDecoder| -> Response {
        loop {
            match dec.poll_event().unwrap() {
                Some(Event::Decoded(r)) => return r,
                Some(Event::Refused(e)) => panic!("undecodable reply: {e}"),
                Some(_) => continue,
                None => {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "server closed");
                    dec.handle_input(&buf[..n]);
                }
            }
        }
    };
    while !matches!(next(&mut s, &mut dec), Response::Greeting(_)) {}
    let ir = SaslData::encode(format!("\0{}\0{}", login.0, login.1).as_bytes(), true);
    s.write_all(
        format!(
            "AUTHENTICATE PLAIN {}\r\n",
            String::from_utf8_lossy(ir.as_wire())
        )
        .as_bytes(),
    )
    .unwrap();
    match next(&mut s, &mut dec) {
        Response::Status(st) if st.kind == StatusKind::Ok => {}
        other => panic!("login failed: {other:?}"),
    }
    s.write_all(format!("GET USER {user}\r\n").as_bytes())
        .unwrap();
    let mut lines = Vec::new();
    loop {
        let r = next(&mut s, &mut dec);
        let text = String::from_utf8_lossy(r.encode().text())
            .trim_end()
            .to_string();
        match r {
            Response::Status(st) => {
                assert_eq!(st.kind, StatusKind::Ok, "GET USER {user}: {text}");
                break;
            }
            _ => lines.push(text),
        }
    }
    let _ = s.write_all(b"EXIT\r\n");
    lines
}

/// One IMAP session: LOGIN, then commands one at a time.
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u32,
}

impl Imap {
    fn login(port: u16, user: &str, pass: &str) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut i = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            n: 0,
        };
        let mut greeting = Vec::new();
        i.r.read_until(b'\n', &mut greeting).unwrap();
        let ok = i.run(&format!("LOGIN {user} {pass}"));
        assert!(ok.0, "IMAP login {user} on {port}: {}", ok.1);
        i
    }

    fn run(&mut self, cmd: &str) -> (bool, String) {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.w
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .unwrap();
        let mut all = Vec::new();
        loop {
            let mut line = Vec::new();
            self.r.read_until(b'\n', &mut line).unwrap();
            assert!(!line.is_empty(), "IMAP server closed during {cmd}");
            all.extend_from_slice(&line);
            let t = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if let Some(n) = t.strip_suffix(b"}").and_then(|t| {
                let at = t.iter().rposition(|&b| b == b'{')?;
                std::str::from_utf8(&t[at + 1..])
                    .ok()?
                    .parse::<usize>()
                    .ok()
            }) {
                let mut lit = vec![0u8; n];
                self.r.read_exact(&mut lit).unwrap();
                all.extend_from_slice(&lit);
                continue;
            }
            if line.starts_with(format!("{tag} ").as_bytes()) {
                let ok = line[tag.len() + 1..].starts_with(b"OK");
                return (ok, String::from_utf8_lossy(&all).into_owned());
            }
        }
    }
}

/// Folders, their STATUS, and every message (UID, flags without
/// `\Recent`, internaldate, size, bytes) as the user sees them.
fn imap_view(port: u16, user: &str, pass: &str) -> Vec<String> {
    let mut i = Imap::login(port, user, pass);
    let (ok, list) = i.run("LIST \"\" \"*\"");
    assert!(ok, "LIST: {list}");
    let mut folders: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("* LIST "))
        .map(|l| {
            let l = l.trim_end();
            match l.strip_suffix('"') {
                Some(q) => q[q.rfind('"').unwrap() + 1..].to_string(),
                None => l.rsplit(' ').next().unwrap().to_string(),
            }
        })
        .collect();
    folders.sort();
    let mut view = vec![format!("folders {folders:?}")];
    for f in &folders {
        let (ok, st) = i.run(&format!(
            "STATUS \"{f}\" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)"
        ));
        assert!(ok, "STATUS {f}: {st}");
        view.push(st.lines().next().unwrap_or("").to_string());
        let (ok, ex) = i.run(&format!("EXAMINE \"{f}\""));
        assert!(ok, "EXAMINE {f}: {ex}");
        let (ok, fetch) = i.run("UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])");
        assert!(ok, "FETCH {f}: {fetch}");
        let body: Vec<&str> = fetch.split_inclusive("\r\n").collect();
        let body = body[..body.len() - 1].concat();
        view.push(format!(
            "{f}: {}",
            body.replace(" \\Recent", "")
                .replace("\\Recent ", "")
                .replace("\\Recent", "")
        ));
    }
    let _ = i.run("LOGOUT");
    view
}

fn tag() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 0xffffff
    )
}

/// Waits (bounded, for a failure message rather than a timing claim)
/// until replica2's GET USER equals corvid's.
fn converge(p: &Peers, c: &Corvid, corvid_port: u16, u: &str, what: &str) -> Vec<String> {
    let repl = (p.get("REPL_USER"), p.get("REPL_PASS"));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ours = get_user(corvid_port, ("repl", "replpass"), u);
        let theirs = get_user(p.port("REPLICA2_CSYNC_PORT"), repl, u);
        if ours == theirs {
            return ours;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: replica2 never caught up with corvid\ncorvid:   {ours:#?}\nreplica2: {theirs:#?}\n\
                 corvid log now: {:?}\nclient log:\n{}\nserver log:\n{}",
                c.log(),
                c.tail("client.log"),
                c.tail("server.log")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn corvid_replica_replicates_onward_while_serving() {
    let Some(p) = peers() else { return };
    let u = format!("sl{}", tag());
    p.add_user(&u);
    p.mail(&["mkuser", &u, "Work", "Trash", "Old"]);
    p.mail(&["lmtp", &u, "4"]);
    p.mail(&["append", &u, "Work", "2"]);
    p.mail(&["quota", &u, "100000"]);

    // 1. Without sync_log_chain a replica logs nothing, as Cyrus's.
    let quiet = Corvid::new(&p, "sync_log: 1\n");
    {
        let (_s, port) = quiet.serve();
        p.real_sync(port, &["-v", "-u", &u]);
    }
    assert_eq!(
        quiet.log(),
        Vec::<String>::new(),
        "a replica without sync_log_chain logged"
    );

    // 2. With it, every change applied is logged in Cyrus's lines.
    let metrics = free_port();
    let c = Corvid::new(
        &p,
        &format!(
            "sync_log: 1\nsync_log_chain: 1\n\
             sync_client_corvid_metrics_listen: 127.0.0.1:{metrics}\n"
        ),
    );
    let (server, port) = c.serve();
    p.real_sync(port, &["-v", "-u", &u]);
    let log = c.log();
    for want in [
        format!("MAILBOX user.{u}\n"),
        format!("MAILBOX user.{u}.Work\n"),
        format!("QUOTA user.{u}\n"),
    ] {
        assert!(log.contains(&want), "no {want:?} in corvid's log {log:#?}");
    }

    // 3. The rolling client replicates onward while the server serves.
    let client = c.rolling();
    let first = converge(&p, &c, port, &u, "initial");
    assert!(
        first.iter().any(|l| l.contains(&format!("user.{u}.Work"))),
        "{first:#?}"
    );
    // The rolling client's /metrics (its own address, by the
    // `sync_client_` prefix) has a replication-lag observation for it.
    let lag = scrape_until(metrics, |b| {
        b.lines().any(|l| {
            l.strip_prefix("corvid_replication_lag_seconds_count{channel=\"\"} ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
        })
    });
    assert!(
        lag.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"+Inf\"}"),
        "{lag}"
    );

    // 4. Changes on the master, through corvid, onward.
    p.mail(&["lmtp", &u, "3"]);
    p.mail(&["flag", &u, "INBOX", "1", "+", "\\Flagged"]);
    p.mail(&["flag", &u, "INBOX", "2:3", "+", "\\Seen $Label1"]);
    p.mail(&["expunge", &u, "INBOX", "4"]);
    p.mail(&["annotate", &u, "Work", "/private/comment", "work stuff"]);
    p.mail(&["unsubscribe", &u, "Old"]);
    p.mail(&["rename", &u, "Old", "Archive"]);
    p.mail(&["delete", &u, "Trash"]);
    p.mail(&["quota", &u, "200000", "900"]);
    p.real_sync(port, &["-v", "-u", &u]);
    let after = converge(&p, &c, port, &u, "changes");
    assert!(
        after
            .iter()
            .any(|l| l.contains(&format!("user.{u}.Archive"))),
        "{after:#?}"
    );
    let pass = p.get("USER_PASS");
    let master = imap_view(p.port("MASTER_IMAP_PORT"), &u, pass);
    let second = imap_view(p.port("REPLICA2_IMAP_PORT"), &u, pass);
    assert!(master.len() > 4, "the master shows too little: {master:?}");
    assert_eq!(master, second, "replica2 differs from the master over IMAP");

    // 5. What was replicated is trimmed from the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.log().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the rolling client never trimmed {:?}\n{}",
            c.log(),
            c.tail("client.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 6. Deleting the user travels as UNUSER (and cleans replica2 up).
    // `-u` of a user that is gone sends nothing; Cyrus replicates a delete
    // from its log (`UNUSER`), replayed here from a file of our own so the
    // master's shared log stays untouched.
    p.mail(&["deluser", &u]);
    let dir = c.dir.path();
    let _ = Command::new("chmod").arg("755").arg(dir).status();
    let unuser = dir.join("unuser.log");
    std::fs::write(&unuser, format!("UNUSER {u}\n")).unwrap();
    let _ = Command::new("chown").arg("cyrus").arg(&unuser).status();
    let out = p.real_sync(port, &["-v", "-v", "-R", "-f", unuser.to_str().unwrap()]);
    // As Cyrus 3.6: the user's live mailboxes go, its DELETED.* ones stay.
    let left: Vec<String> = get_user(port, ("repl", "replpass"), &u)
        .into_iter()
        .filter(|l| l.starts_with("* MAILBOX") && !l.contains("MBOXNAME DELETED."))
        .collect();
    assert!(
        left.is_empty(),
        "corvid kept the deleted user: {left:#?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = converge(&p, &c, port, &u, "unuser");
    assert!(
        gone.iter().all(|l| l.contains("MBOXNAME DELETED.")),
        "{gone:#?}"
    );

    std::fs::write(c.dir.path().join("shutdown"), b"").unwrap();
    drop(client);
    drop(server);
}
