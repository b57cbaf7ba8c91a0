//! THE ROUND TRIP of issue #6: the real Cyrus 3.6.1 master replicates a
//! user into `corvid sync_server`; `corvid sync_client` then replicates
//! that corvid store into a second, EMPTY real Cyrus replica (`replica2`
//! of `scripts/peers`). The proof that corvid carried everything:
//!
//! * the real `sync_client` from the master to replica2 finds nothing to
//!   send (its `-v -v` protocol log holds no `APPLY`);
//! * IMAP `FETCH` of every message of every folder (UID, flags,
//!   internaldate, size, the bytes) on replica2 equals the master's, and
//!   so do the folder list and each folder's STATUS (UIDVALIDITY, UIDNEXT,
//!   HIGHESTMODSEQ);
//! * replica2's `GET USER` equals, line for line, that of the first real
//!   replica fed directly by the master (Cyrus → Cyrus).
//!
//! A second test runs the same chain with `corvid sync_client` speaking
//! the IMAP-embedded flavour (`sync_try_imap`) to replica2's imapd.
//!
//! Needs the peers' env file ($CORVID_PEERS_ENV, else
//! /tmp/corvid-peers/env) with the `REPLICA2_*` keys. Without it the test
//! prints SKIP and passes, except with `CI=true`, where it fails. Runs as
//! root (saslpasswd2 for its own users). Every run uses fresh user names.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use proto::csync::{ClientDecoder, Event, Response, SaslData, StatusKind};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Peers {
    env: HashMap<String, String>,
    env_path: PathBuf,
}

impl Peers {
    fn get(&self, k: &str) -> &str {
        self.env
            .get(k)
            .unwrap_or_else(|| panic!("peers env has no {k} (restart scripts/peers/start.sh)"))
    }

    fn port(&self, k: &str) -> u16 {
        self.get(k).parse().unwrap()
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(repo())
            .env("CORVID_PEERS_ENV", &self.env_path)
            .env("CORVID_PEERS_RUN", self.get("CORVID_PEERS_RUN"));
        // sync-client.sh re-derives ports from the base; pass them all.
        for (k, v) in &self.env {
            if k.ends_with("_PORT") {
                c.env(k, v);
            }
        }
        c
    }

    fn mail(&self, args: &[&str]) {
        let out = self
            .cmd("python3")
            .arg(repo().join("scripts/peers/mail.py"))
            .args(args)
            .output()
            .expect("run mail.py");
        assert!(
            out.status.success(),
            "mail.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The real sync_client of the master, pointed at `port`.
    fn real_sync(&self, port: u16, try_imap: bool, args: &[&str]) -> Output {
        let mut c = self.cmd("bash");
        c.arg(repo().join("scripts/peers/sync-client.sh"));
        if try_imap {
            c.arg("--try-imap");
        }
        let out = c
            .args(["--port", &port.to_string(), "--"])
            .args(args)
            .output()
            .expect("run sync-client.sh");
        assert!(
            out.status.success(),
            "real sync_client {args:?} into {port}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A mail user that can log in (sasldb) on every instance. The two
    /// tests of this file run in parallel, and two saslpasswd2 writing
    /// one sasldb at once can lose an entry: one at a time.
    fn add_user(&self, user: &str) {
        static SASLDB: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SASLDB.lock().unwrap_or_else(|e| e.into_inner());
        let db = Path::new(self.get("CORVID_PEERS_RUN")).join("sasldb2");
        for realm in [
            self.get("MASTER_NAME"),
            self.get("REPLICA_NAME"),
            self.get("REPLICA2_NAME"),
        ] {
            let mut c = Command::new("saslpasswd2")
                .args(["-p", "-c", "-f"])
                .arg(&db)
                .args(["-u", realm, user])
                .stdin(Stdio::piped())
                .spawn()
                .expect("saslpasswd2");
            c.stdin
                .take()
                .unwrap()
                .write_all(self.get("USER_PASS").as_bytes())
                .unwrap();
            assert!(c.wait().unwrap().success(), "saslpasswd2 {user}");
        }
        let _ = Command::new("chown").arg("cyrus:mail").arg(&db).status();
    }
}

fn peers() -> Option<Peers> {
    let path = std::env::var_os("CORVID_PEERS_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corvid-peers/env"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but no peers env file at {}", path.display());
        }
        eprintln!(
            "SKIP sync_client_roundtrip: no peers env file at {} (run scripts/peers/start.sh)",
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
    Some(Peers {
        env,
        env_path: path,
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A corvid store directory with an imapd.conf that serves as both the
/// sync_server's and (with the sync_* keys) the sync_client's config.
struct Corvid {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Corvid {
    fn new(p: &Peers, target_port: u16, try_imap: bool) -> Corvid {
        Corvid::with_creds(
            p.get("REPL_USER"),
            p.get("REPL_PASS"),
            target_port,
            try_imap,
        )
    }

    fn with_creds(user: &str, pass: &str, target_port: u16, try_imap: bool) -> Corvid {
        let dir = tempfile::tempdir().unwrap();
        let exe = env!("CARGO_BIN_EXE_corvid");
        let passwd = dir.path().join("passwd");
        let mut c = Command::new(exe)
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
                 admins: repl\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n\
                 sync_host: 127.0.0.1\nsync_port: {target_port}\nsync_authname: {u}\n\
                 sync_password: {pw}\nsync_try_imap: {ti}\n",
                d = dir.path().display(),
                u = user,
                pw = pass,
                ti = if try_imap { "yes" } else { "no" },
            ),
        )
        .unwrap();
        Corvid { dir, conf }
    }

    /// `corvid sync_server` on a free port until the guard drops.
    fn serve(&self) -> (Server, u16) {
        let (s, port, _) = self.serve_both();
        (s, port)
    }

    /// `corvid sync_server` on free csync and IMAP-flavour ports.
    fn serve_both(&self) -> (Server, u16, u16) {
        let port = free_port();
        let imap_port = free_port();
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .args(["sync_server", "-C"])
            .arg(&self.conf)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--imap-listen", &format!("127.0.0.1:{imap_port}")])
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
        (Server(child), port, imap_port)
    }

    /// Another config over the same store, aimed at `port`.
    fn conf_for(&self, port: u16, try_imap: bool) -> PathBuf {
        let text = std::fs::read_to_string(&self.conf).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("sync_port:") && !l.starts_with("sync_try_imap:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = self
            .dir
            .path()
            .join(format!("imapd-{port}-{try_imap}.conf"));
        std::fs::write(
            &path,
            format!(
                "{text}sync_port: {port}\nsync_try_imap: {}\n",
                if try_imap { "yes" } else { "no" }
            ),
        )
        .unwrap();
        path
    }

    fn sync_client(&self, args: &[&str]) -> String {
        self.sync_client_with(&self.conf, args)
    }

    fn sync_client_with(&self, conf: &Path, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_corvid"))
            .arg("sync_client")
            .arg("-C")
            .arg(conf)
            .args(args)
            .output()
            .expect("run corvid sync_client");
        let log = plain(&String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "corvid sync_client {args:?}: {:?}\n{log}",
            out.status
        );
        log
    }
}

/// `text` without ANSI colour sequences (tracing colours its output).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
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

/// The APPLY commands in a real sync_client's `-v -v` protocol log.
fn applies(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter_map(|l| {
            let rest = l.strip_prefix('>')?;
            let (_, cmd) = rest.split_once('>')?;
            let cmd = cmd.split_once(' ').map_or(cmd, |(t, c)| {
                // IMAP flavour: `S3 SYNCAPPLY …`.
                if t.starts_with('S') && t[1..].bytes().all(|b| b.is_ascii_digit()) {
                    c
                } else {
                    cmd
                }
            });
            let is_apply = cmd.starts_with("APPLY ") || cmd.starts_with("SYNCAPPLY ");
            (is_apply && !cmd.contains("APPLY CAPABILITIES"))
                .then(|| cmd.chars().take(100).collect())
        })
        .collect()
}

/// `GET USER` over csync as the replication admin: the untagged lines.
fn get_user(p: &Peers, port: u16, user: &str) -> Vec<String> {
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
    let plain = format!("\0{}\0{}", p.get("REPL_USER"), p.get("REPL_PASS"));
    let ir = SaslData::encode(plain.as_bytes(), true);
    // One at a time: sync_server drops input sent ahead of its AUTH OK.
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

/// A minimal IMAP client: one command at a time, responses as raw bytes
/// with literals inlined.
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

    /// (tagged OK?, the whole response).
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
            // A literal `{n}` ends the line: its bytes follow.
            let t = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if let Some(open) = t.strip_suffix(b"}").and_then(|t| {
                let at = t.iter().rposition(|&b| b == b'{')?;
                std::str::from_utf8(&t[at + 1..])
                    .ok()?
                    .parse::<usize>()
                    .ok()
            }) {
                let mut lit = vec![0u8; open];
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

/// Everything a user sees over IMAP: folders, their STATUS, and every
/// message's UID, flags (without the session-bound `\Recent`),
/// internaldate, size and bytes.
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

/// Mail on the master: folders, LMTP and APPENDed messages, flags and
/// keywords, an expunge, quota, mailbox and message annotations, a
/// subscription, a Sieve script, a deleted folder and a renamed one.
fn populate(p: &Peers, u: &str, dir: &Path) {
    p.mail(&["mkuser", u, "Work", "Trash", "Old"]);
    p.mail(&["lmtp", u, "5"]);
    p.mail(&["append", u, "Work", "3"]);
    p.mail(&["flag", u, "INBOX", "1", "+", "\\Flagged"]);
    p.mail(&["flag", u, "INBOX", "2:3", "+", "\\Seen $Label1"]);
    p.mail(&["flag", u, "Work", "2", "+", "\\Answered \\Draft"]);
    p.mail(&["expunge", u, "INBOX", "4"]);
    p.mail(&["quota", u, "200000", "900"]);
    p.mail(&["annotate", u, "Work", "/private/comment", "work stuff"]);
    p.mail(&["annotate", u, "INBOX", "/shared/comment", "shared note"]);
    p.mail(&["msgannot", u, "INBOX", "2", "/comment", "remember this"]);
    p.mail(&["unsubscribe", u, "Old"]);
    p.mail(&["rename", u, "Old", "Archive"]);
    p.mail(&["delete", u, "Trash"]);
    let script = dir.join("main.sieve");
    std::fs::write(
        &script,
        "require \"fileinto\";\r\nif header :contains \"subject\" \"x\" { fileinto \"Work\"; }\r\n",
    )
    .unwrap();
    p.mail(&["sieve", u, "main", script.to_str().unwrap()]);
}

/// master → corvid sync_server → corvid sync_client → replica2, then the
/// checks of the module doc. `imap` picks replica2's IMAP port (the
/// IMAP-embedded flavour) for corvid's client.
fn round_trip(p: &Peers, u: &str, imap: bool) {
    p.add_user(u);
    let target = if imap {
        p.port("REPLICA2_IMAP_PORT")
    } else {
        p.port("REPLICA2_CSYNC_PORT")
    };
    let corvid = Corvid::new(p, target, imap);
    populate(p, u, corvid.dir.path());

    // 1. Real master → corvid sync_server.
    {
        let (_server, port) = corvid.serve();
        p.real_sync(port, false, &["-v", "-u", u]);
    }
    // 2. corvid sync_client (same store, now free) → empty replica2.
    let log = corvid.sync_client(&["-v", "-u", u]);
    eprintln!("corvid sync_client into replica2:\n{log}");
    let want = if imap {
        "flavour=Imap"
    } else {
        "flavour=Csync"
    };
    assert!(log.contains(want), "corvid did not use {want}:\n{log}");
    // 3. The real master finds nothing to send to replica2.
    let out = p.real_sync(p.port("REPLICA2_CSYNC_PORT"), false, &["-v", "-v", "-u", u]);
    let a = applies(&out);
    assert!(
        a.is_empty(),
        "the real sync_client still had to send {a:?} to replica2\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 4. What users see over IMAP is identical.
    let pass = p.get("USER_PASS");
    let master = imap_view(p.port("MASTER_IMAP_PORT"), u, pass);
    let second = imap_view(p.port("REPLICA2_IMAP_PORT"), u, pass);
    assert!(master.len() > 4, "the master shows too little: {master:?}");
    for (m, r) in master.iter().zip(&second) {
        assert_eq!(m, r, "replica2 differs from the master over IMAP");
    }
    assert_eq!(master.len(), second.len());
    // 5. Cyrus → Cyrus gives the same replica state as Cyrus → corvid →
    //    Cyrus, line for line.
    p.real_sync(p.port("REPLICA_CSYNC_PORT"), false, &["-u", u]);
    let direct = get_user(p, p.port("REPLICA_CSYNC_PORT"), u);
    let via = get_user(p, p.port("REPLICA2_CSYNC_PORT"), u);
    assert!(!direct.is_empty());
    for (i, (d, v)) in direct.iter().zip(&via).enumerate() {
        assert_eq!(
            d, v,
            "GET USER line {i}: replica (direct) vs replica2 (via corvid)"
        );
    }
    assert_eq!(direct.len(), via.len(), "{direct:#?}\n{via:#?}");
    // 6. Again: nothing to send.
    let again = corvid.sync_client(&["-v", "-u", u]);
    assert!(!again.contains("mailbox replicated"), "resent:\n{again}");
    if imap {
        // sync_try_imap against a csync port: the csync banner is taken
        // as it is, on the same connection (Cyrus waits 10 s, reconnects).
        let conf = corvid.conf_for(p.port("REPLICA2_CSYNC_PORT"), true);
        let started = Instant::now();
        let log = corvid.sync_client_with(&conf, &["-v", "-u", u]);
        assert!(log.contains("flavour=Csync"), "{log}");
        assert!(!log.contains("mailbox replicated"), "resent:\n{log}");
        assert!(
            log.matches("connected").count() == 1,
            "reconnected instead of switching in place:\n{log}"
        );
        eprintln!(
            "try-imap on a csync port: {} ms",
            started.elapsed().as_millis()
        );
        // corvid → corvid over the IMAP flavour: a fresh corvid replica
        // ends equal to replica2 (GET USER line for line).
        let second = Corvid::with_creds("repl", "replpass", 0, true);
        let (_server, csync_port, imap_port) = second.serve_both();
        let conf = corvid.conf_for(imap_port, true);
        let log = corvid.sync_client_with(&conf, &["-v", "-u", u]);
        assert!(log.contains("flavour=Imap"), "{log}");
        let ours = get_user(p, csync_port, u);
        // A script's LAST_UPDATE is when each replica wrote it (replica2:
        // its sievedir file; corvid: the #sieve record it applied), so the
        // two may differ by a second; everything else must be equal.
        let written_at = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(
                    |l| match (l.starts_with("* SIEVE "), l.find("LAST_UPDATE ")) {
                        (true, Some(i)) => {
                            let rest = &l[i + "LAST_UPDATE ".len()..];
                            let end = rest.find(' ').unwrap_or(rest.len());
                            format!("{}LAST_UPDATE _{}", &l[..i], &rest[end..])
                        }
                        _ => l.clone(),
                    },
                )
                .collect()
        };
        assert_eq!(
            written_at(&ours),
            written_at(&via),
            "corvid replica (IMAP flavour) vs replica2"
        );
        let log = corvid.sync_client_with(&conf, &["-v", "-u", u]);
        assert!(!log.contains("mailbox replicated"), "resent:\n{log}");
    }
}

#[test]
fn master_to_corvid_to_second_replica_round_trip() {
    let Some(p) = peers() else { return };
    round_trip(&p, &format!("rt{}", tag()), false);
}

/// The same chain with corvid's client on replica2's imapd
/// (`sync_try_imap`: tagged SYNCGET/SYNCAPPLY after an IMAP login), then
/// the in-place fallback on a csync port, then corvid → corvid over the
/// IMAP flavour.
#[test]
fn round_trip_over_the_imap_flavour() {
    let Some(p) = peers() else { return };
    round_trip(&p, &format!("ri{}", tag()), true);
}
