//! THE PROOF: the real Cyrus 3.6.1 `sync_client` replicates into
//! `corvid sync_server`, and corvid ends up in the same state as the real
//! Cyrus replica.
//!
//! Needs the real peers of `scripts/peers` (their env file: $CORVID_PEERS_ENV,
//! else /tmp/corvid-peers/env). Without it the test prints SKIP and passes,
//! except with `CI=true`, where it fails. Must run as root (saslpasswd2 for
//! the test's own users, sync_client via cyrexec.sh).
//!
//! One test, scenarios in sequence on fresh users of its own (added to the
//! peers' sasldb, created on the master with mail.py), each followed by the
//! same sync into corvid and into the real replica, then `GET USER` sent to
//! both over csync: every `* MAILBOX` (with SYNC_CRC, SYNC_CRC_ANNOT,
//! LAST_UID, HIGHESTMODSEQ, UIDVALIDITY …), `* QUOTA`, `* SEEN` and
//! `* LSUB` line must be byte-identical. After each, a second sync_client
//! run into corvid must send no APPLY at all (counted in its `-v -v`
//! protocol log).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use proto::csync::{ClientDecoder, Event, Response, SaslData, StatusKind};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[path = "support/peers.rs"]
mod support;
use support::Peers;

fn peers() -> Option<Peers> {
    support::peers("sync_server_live")
}

/// corvid sync_server on a free port with its own configdirectory.
struct Corvid {
    child: Child,
    port: u16,
    /// The IMAP-embedded flavour's port (`--imap-listen`).
    imap_port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Corvid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_corvid() -> Corvid {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_corvid");
    let passwd = dir.path().join("passwd");
    let mut c = Command::new(exe)
        .args(["passwd"])
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
             admins: repl\nsasl_mech_list: PLAIN LOGIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free();
    let imap_port = free();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(exe)
        .args(["sync_server", "-C"])
        .arg(&conf)
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
    Corvid {
        child,
        port,
        imap_port,
        dir,
    }
}

/// A minimal csync client: PLAIN login as repl, one command, its lines.
fn csync(port: u16, command: &str) -> Vec<String> {
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
    let ir = SaslData::encode(b"\0repl\0replpass", true);
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
    s.write_all(command.as_bytes()).unwrap();
    s.write_all(b"\r\n").unwrap();
    let mut lines = Vec::new();
    loop {
        let r = next(&mut s, &mut dec);
        let text = String::from_utf8_lossy(r.encode().text())
            .trim_end()
            .to_string();
        match r {
            Response::Status(st) => {
                assert_eq!(st.kind, StatusKind::Ok, "{command}: {text}");
                break;
            }
            _ => lines.push(text),
        }
    }
    let _ = s.write_all(b"EXIT\r\n");
    lines
}

fn applies(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter_map(|l| {
            let rest = l.strip_prefix('>')?;
            let (_, cmd) = rest.split_once('>')?;
            (cmd.starts_with("APPLY ") && !cmd.starts_with("APPLY CAPABILITIES"))
                .then(|| cmd.chars().take(80).collect())
        })
        .collect()
}

struct Live {
    p: Peers,
    c: Corvid,
    real: u16,
    proven: Vec<String>,
}

impl Live {
    fn ok(&self, port: u16, args: &[&str]) -> Output {
        let out = self.p.sync(port, args);
        assert!(
            out.status.success(),
            "sync_client {args:?} into port {port} exited {:?}\nstderr: {}\ncorvid log tail: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.corvid_log_tail()
        );
        out
    }

    fn corvid_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.c.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Same sync into corvid and into the real replica; same GET USER
    /// answers; a second run into corvid applies nothing.
    fn both(&mut self, scenario: &str, args: &[&str], users: &[&str]) {
        self.ok(self.c.port, args);
        self.ok(self.real, args);
        self.same(scenario, users);
        let again = self.ok(self.c.port, &[&["-v", "-v"], args].concat());
        let a = applies(&again);
        assert!(
            a.is_empty(),
            "{scenario}: second run into corvid still applied {a:?}"
        );
    }

    /// Takes the master's sync log and replays one copy into each target.
    fn rolling(&mut self, scenario: &str, users: &[&str]) {
        let log = Path::new(self.p.get("CORVID_PEERS_RUN")).join("master/conf/sync/log");
        let text = std::fs::read(&log).expect("the master wrote a sync log");
        let _ = std::fs::remove_file(&log);
        let dir = self.c.dir.path();
        let _ = Command::new("chmod").arg("755").arg(dir).status();
        for (i, port) in [self.c.port, self.real].into_iter().enumerate() {
            let copy = dir.join(format!("synclog-{}-{i}", self.proven.len()));
            std::fs::write(&copy, &text).unwrap();
            let _ = Command::new("chown").arg("cyrus").arg(&copy).status();
            self.ok(port, &["-v", "-R", "-f", copy.to_str().unwrap()]);
        }
        self.same(scenario, users);
    }

    fn same(&mut self, scenario: &str, users: &[&str]) {
        for u in users {
            let ours = csync(self.c.port, &format!("GET USER {u}"));
            let real = csync(self.real, &format!("GET USER {u}"));
            assert!(
                !real.is_empty() || scenario == "unuser",
                "{scenario}: real replica has nothing for {u}"
            );
            if ours != real {
                let diff: Vec<String> = (0..ours.len().max(real.len()))
                    .filter(|&i| ours.get(i) != real.get(i))
                    .map(|i| {
                        format!(
                            "line {i}\n  cyrus:  {:?}\n  corvid: {:?}",
                            real.get(i),
                            ours.get(i)
                        )
                    })
                    .collect();
                panic!(
                    "{scenario}: corvid's GET USER {u} differs from the real replica's:\n{}",
                    diff.join("\n")
                );
            }
        }
        self.proven.push(scenario.to_string());
    }
}

#[test]
fn real_sync_client_replicates_into_corvid_like_into_cyrus() {
    let Some(p) = peers() else { return };
    let c = start_corvid();
    let real: u16 = p.get("REPLICA_CSYNC_PORT").parse().unwrap();
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 0xffffff
    );
    let u = format!("cs{tag}");
    let r = format!("cr{tag}");
    p.add_user(&u);
    p.add_user(&r);
    let mut t = Live {
        p,
        c,
        real,
        proven: Vec::new(),
    };
    let u = u.as_str();
    let r = r.as_str();

    // initial: folders, LMTP and APPENDed mail, flags.
    t.p.mail(&["mkuser", u, "Work", "Trash"]);
    t.p.mail(&["mkuser", r]);
    t.p.mail(&["lmtp", u, "4"]);
    t.p.mail(&["append", u, "Work", "3"]);
    t.p.mail(&["flag", u, "INBOX", "1", "+", "\\Flagged"]);
    t.both("initial", &["-v", "-u", u], &[u]);

    // sync_try_imap on (Cyrus's default): the IMAP probe must not cost
    // the 10 s timeout Cyrus's own csync port makes the client wait.
    t.p.mail(&["lmtp", u, "2"]);
    let started = Instant::now();
    let out =
        t.p.cmd("bash")
            .arg(repo().join("scripts/peers/sync-client.sh"))
            .args(["--try-imap", "--port", &t.c.port.to_string(), "--", "-u", u])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "try-imap sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = started.elapsed();
    t.ok(t.real, &["-u", u]);
    t.same("new message (sync_try_imap on)", &[u]);
    t.proven
        .push(format!("try-imap fallback in {} ms", took.as_millis()));

    t.p.mail(&["flag", u, "INBOX", "2:3", "+", "\\Seen $Label1"]);
    t.p.mail(&["flag", u, "INBOX", "1", "-", "\\Flagged"]);
    t.both("flag change", &["-u", u], &[u]);

    // The IMAP-embedded flavour: sync_try_imap on, pointed at corvid's
    // IMAP port, which advertises X-REPLICATION after login.
    t.p.mail(&["lmtp", u, "1"]);
    let out =
        t.p.cmd("bash")
            .arg(repo().join("scripts/peers/sync-client.sh"))
            .args([
                "--try-imap",
                "--port",
                &t.c.imap_port.to_string(),
                "--",
                "-v",
                "-v",
                "-u",
                u,
            ])
            .output()
            .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "IMAP-flavour sync failed: {log}");
    assert!(
        log.contains("SYNCAPPLY MAILBOX"),
        "no tagged SYNCAPPLY seen:\n{log}"
    );
    t.ok(t.real, &["-u", u]);
    t.same("IMAP-embedded flavour (SYNCGET/SYNCAPPLY)", &[u]);

    t.p.mail(&["expunge", u, "INBOX", "4"]);
    t.both("expunge", &["-u", u], &[u]);

    t.p.mail(&["rename", u, "Work", "Projects"]);
    t.both("rename", &["-u", u], &[u]);

    t.p.mail(&["delete", u, "Trash"]);
    t.both("delete (delayed: rename to DELETED.)", &["-u", u], &[u]);

    t.p.mail(&["create", u, "Later"]);
    t.p.mail(&["subscribe", u, "Later"]);
    t.p.mail(&["unsubscribe", u, "Projects"]);
    t.both("subscriptions", &["-u", u], &[u]);

    t.p.mail(&["setacl", u, "INBOX", r, "lrs"]);
    t.p.mail(&["seen", r, u, "INBOX", "1:2"]);
    t.both("seen (non-owner)", &["-u", u], &[u]);
    t.both("seen, reader's user sync", &["-u", r], &[r]);

    t.p.mail(&["quota", u, "200000", "900"]);
    t.both("quota", &["-u", u], &[u]);

    t.p.mail(&["annotate", u, "Projects", "/private/comment", "work stuff"]);
    t.p.mail(&["annotate", u, "INBOX", "/shared/comment", "shared note"]);
    t.p.mail(&["msgannot", u, "INBOX", "2", "/comment", "remember this"]);
    t.both("annotations", &["-u", u], &[u]);

    let script = t.c.dir.path().join("vac.sieve");
    std::fs::write(&script, "require \"fileinto\";\r\nif header :contains \"subject\" \"x\" { fileinto \"INBOX.Later\"; }\r\n").unwrap();
    t.p.mail(&["sieve", u, "vac", script.to_str().unwrap()]);
    t.both("sieve (#sieve mailbox)", &["-u", u], &[u]);

    t.p.mail(&["append", u, "Projects", "2"]);
    t.both(
        "mailbox mode -m",
        &["-m", &format!("user/{u}/Projects")],
        &[u],
    );

    t.p.mail(&["subscribe", u, "Projects"]);
    t.both("meta mode -s", &["-s", u], &[u]);

    t.p.mail(&["lmtp", u, "1"]);
    t.p.mail(&["flag", u, "INBOX", "2", "+", "\\Answered"]);
    t.both("all users -A", &["-A"], &[u, r]);

    // Rolling: the master's sync log, replayed into both (`-R -f FILE`
    // processes one log file and exits; each target gets its own copy).
    t.p.mail(&["lmtp", u, "2"]);
    t.p.mail(&["flag", u, "INBOX", "5", "+", "\\Deleted"]);
    t.p.mail(&["quota", u, "300000", "900"]);
    t.rolling("rolling (sync log)", &[u]);

    // Diverged replica: corvid gets a change the master never made (a
    // flag with a higher modseq, applied directly); the real sync_client
    // must run its repair path (CHECKSUM, GET FULLMAILBOX, copyback) and
    // both replicas end equal (the real one learns it via the master).
    diverge(&t, u, "$ReplicaOnly");
    let out = t.ok(t.c.port, &["-v", "-v", "-u", u]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("GET FULLMAILBOX"),
        "no full update ran:\n{log}"
    );
    t.ok(t.real, &["-u", u]);
    t.same("diverged replica (copyback)", &[u]);
    let ours = csync(t.c.port, &format!("GET FULLMAILBOX user.{u}"));
    assert!(
        ours[0].contains("$ReplicaOnly"),
        "the replica-only flag was lost"
    );

    // -O: no copyback; the client sends APPLY FORCE and gives up.
    diverge(&t, u, "$Again");
    let out = t.p.sync(t.c.port, &["-v", "-v", "-O", "-u", u]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("APPLY FORCE"),
        "-O sent no APPLY FORCE:\n{log}"
    );
    assert!(!log.contains("GET FULLMAILBOX"), "-O must not copy back");
    t.proven
        .push(format!("-O no-copyback (exit {:?})", out.status.code()));
    // A normal run repairs it.
    t.ok(t.c.port, &["-u", u]);
    t.ok(t.real, &["-u", u]);
    t.same("repair after -O", &[u]);

    // unuser: delete the reader on the master; the rolling log carries
    // UNUSER; corvid drops every mailbox of the user.
    t.p.mail(&["deluser", r]);
    t.rolling("unuser (rolling)", &[r, u]);
    let ours = csync(t.c.port, &format!("GET USER {r}"));
    assert!(
        !ours
            .iter()
            .any(|l| l.contains(&format!("MBOXNAME user.{r}"))),
        "user still on corvid after UNUSER: {ours:?}"
    );

    eprintln!("proven against real Cyrus 3.6.1: {}", t.proven.join(", "));
}

/// Applies a record change straight to corvid's replica (as if someone had
/// changed it there): the first live INBOX record gets `flag`, with a
/// modseq above the mailbox's.
fn diverge(t: &Live, u: &str, flag: &str) {
    let full = csync(t.c.port, &format!("GET FULLMAILBOX user.{u}"));
    let line = full[0].strip_prefix("* MAILBOX ").unwrap().to_string();
    let hms: u64 = field(&line, "HIGHESTMODSEQ").parse().unwrap();
    let new = hms + 1;
    // The first record that is not expunged.
    let recs = line.split_once(" RECORD (").unwrap().1;
    let first = recs
        .split("%(UID ")
        .skip(1)
        .find(|r| !r.contains("\\Expunged"))
        .expect("a live record");
    let old_modseq = first
        .split(" MODSEQ ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let flags = first
        .split("FLAGS (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let new_flags = if flags.is_empty() {
        flag.to_string()
    } else {
        format!("{flags} {flag}")
    };
    let rec = balance(&format!("%(UID {first}"))
        .trim_end()
        .replacen(
            &format!(" MODSEQ {old_modseq} "),
            &format!(" MODSEQ {new} "),
            1,
        )
        .replacen(
            &format!("FLAGS ({flags})"),
            &format!("FLAGS ({new_flags})"),
            1,
        );
    let head = line.split_once(" RECORD (").unwrap().0.to_string();
    let head = head
        .replacen(
            &format!(" HIGHESTMODSEQ {hms} "),
            &format!(" HIGHESTMODSEQ {new} "),
            1,
        )
        .replacen(
            &format!(" SYNC_CRC {} ", field(&line, "SYNC_CRC")),
            " SYNC_CRC 0 ",
            1,
        )
        .replacen(
            &format!(" SYNC_CRC_ANNOT {} ", field(&line, "SYNC_CRC_ANNOT")),
            " SYNC_CRC_ANNOT 0 ",
            1,
        );
    let cmd = format!("APPLY MAILBOX {head} RECORD ({rec}))");
    let got = csync_status(t.c.port, &cmd);
    assert_eq!(got, "OK success", "diverging corvid's replica: {cmd}");
}

/// Closes the parentheses of one record cut out of a FULLMAILBOX line.
fn balance(s: &str) -> String {
    let mut depth = 0i32;
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => {
                if depth == 0 {
                    break;
                }
                depth -= 1
            }
            _ => {}
        }
        out.push(ch);
    }
    for _ in 0..depth {
        out.push(')');
    }
    out
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(&format!(" {key} "))
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
}

fn csync_status(port: u16, command: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ir = SaslData::encode(b"\0repl\0replpass", true);
    s.write_all(
        format!(
            "AUTHENTICATE PLAIN {}\r\n{command}\r\nEXIT\r\n",
            String::from_utf8_lossy(ir.as_wire())
        )
        .as_bytes(),
    )
    .unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    // Banner, auth OK, then the command's status, then OK Finished.
    let statuses: Vec<&str> = all.lines().filter(|l| !l.starts_with("* ")).collect();
    statuses.get(1).copied().unwrap_or("").to_string()
}
