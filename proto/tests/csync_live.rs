//! csync against the real Cyrus 3.6.1 daemons of `scripts/peers`:
//!
//! * our encoders and [`ClientDecoder`] drive the real `sync_server`: every
//!   reply decodes and re-encodes to the bytes received, a fetched message
//!   body streams out hashing to its GUID, and for each malformed line the
//!   real server's answer is exactly what [`ServerDecoder`] refuses it with;
//! * the real `sync_client` (both flavours: csync, and IMAP-embedded with
//!   `X-REPLICATION`) pushes a user to a minimal server built on
//!   [`ServerDecoder`] / [`ImapServerDecoder`]: every line decodes, every
//!   file literal hashes to its GUID, and sync_client exits 0.
//!
//! Nothing is changed on the replica: uploads only reach the staging area,
//! which `RESTART` discards. Needs the peers (`scripts/peers/start.sh`, run
//! as root for `sync-client.sh`); without their env file the tests print
//! SKIP and pass, except under `CI=true`, where they fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use proto::csync::imap::{
    Condition, ImapClientLine, ImapCommandBody, ImapResponse, ImapServerDecoder,
};
use proto::csync::{
    Capability, ClientDecoder, ClientLine, Command, Event, Greeting, Response, SaslData,
    ServerDecoder, Status,
};
use proto::dlist::{FileRef, Guid, Item, KvList, Value};
use sha1::{Digest, Sha1};

fn peers_env() -> Option<Vec<(String, String)>> {
    let path = std::env::var("CORVID_PEERS_ENV").unwrap_or_else(|_| "/tmp/corvid-peers/env".into());
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the peers are not running ({path})"
            );
            eprintln!("SKIP csync_live: no peers env file at {path}; run scripts/peers/start.sh");
            None
        }
    }
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    &env.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} missing from peers env"))
        .1
}

fn sha1_hex(b: &[u8]) -> String {
    hex::encode(Sha1::digest(b))
}

fn s(v: &str) -> Value {
    Value::string(Bytes::copy_from_slice(v.as_bytes()))
}

fn item(k: &str, v: Value) -> Item {
    Item::new(Bytes::copy_from_slice(k.as_bytes()), v)
}

/// A csync client session: our encoder out, our decoder in, and every
/// byte received kept to compare with the re-encoded responses.
struct Client {
    sock: TcpStream,
    dec: ClientDecoder,
    received: Vec<u8>,
    reencoded: Vec<u8>,
    files: Vec<(FileRef, Vec<u8>)>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            sock,
            dec: ClientDecoder::new(),
            received: Vec::new(),
            reencoded: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Reads decoded responses up to the next status-like line.
    fn responses(&mut self) -> Vec<Response> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            while let Some(ev) = self.dec.poll_event().expect("no fatal decoding error") {
                match ev {
                    Event::FileStart(f) => self.files.push((f, Vec::new())),
                    Event::FileChunk(c) => self.files.last_mut().unwrap().1.extend_from_slice(&c),
                    Event::FileEnd => {}
                    Event::Decoded(r) => {
                        let files = &self.files;
                        let mut it = files.iter().rev().take(r.encode().files().len()).rev();
                        self.reencoded.extend_from_slice(
                            &r.encode()
                                .to_wire(|_| Bytes::from(it.next().unwrap().1.clone())),
                        );
                        let end = matches!(
                            r,
                            Response::Status(_)
                                | Response::Greeting(_)
                                | Response::Bye(_)
                                | Response::Fatal(_)
                        );
                        out.push(r);
                        if end {
                            return out;
                        }
                    }
                    Event::Refused(e) => panic!("a real server line was refused: {e}"),
                    Event::ContinuationNeeded { .. } => unreachable!("client side"),
                }
            }
            let n = self.sock.read(&mut buf).unwrap();
            assert!(n > 0, "server closed");
            self.received.extend_from_slice(&buf[..n]);
            self.dec.handle_input(&buf[..n]);
        }
    }

    fn command(&mut self, c: &Command, body: &dyn Fn(&FileRef) -> Bytes) -> Vec<Response> {
        self.sock.write_all(&c.encode().to_wire(body)).unwrap();
        self.responses()
    }

    fn raw(&mut self, line: &[u8]) -> Vec<Response> {
        self.sock.write_all(line).unwrap();
        self.responses()
    }
}

fn status(r: &[Response]) -> &Status {
    match r.last() {
        Some(Response::Status(s)) => s,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn real_sync_server_replies_decode_and_refusals_match() {
    let Some(env) = peers_env() else { return };
    let port: u16 = get(&env, "REPLICA_CSYNC_PORT").parse().unwrap();
    let mut c = Client::connect(port);
    let nobody = |_: &FileRef| Bytes::new();

    let banner = {
        let mut all = Vec::new();
        while !matches!(all.last(), Some(Response::Greeting(_))) {
            all.extend(c.responses());
        }
        all
    };
    assert!(banner.iter().any(|r| matches!(r, Response::Capability(Capability::Sasl(m)) if m.iter().any(|m| &m[..] == b"PLAIN"))));
    let Some(Response::Greeting(g)) = banner.last() else {
        unreachable!()
    };
    assert!(
        g.text.windows(17).any(|w| w == b"Cyrus sync server"),
        "{g:?}"
    );

    let ir = format!("\0{}\0{}", get(&env, "REPL_USER"), get(&env, "REPL_PASS"));
    let auth = Command::Authenticate {
        mechanism: Bytes::from_static(b"PLAIN"),
        initial_response: Some(SaslData::encode(ir.as_bytes(), true)),
    };
    assert_eq!(
        status(&c.command(&auth, &nobody)),
        &Status::auth_success("no protection")
    );
    assert_eq!(
        status(&c.command(&Command::Noop, &nobody)).text,
        "Noop completed"
    );

    let users: Vec<&str> = get(&env, "MAIL_USERS").split(' ').collect();
    let user = if users.contains(&"live") {
        "live"
    } else {
        users[0]
    }
    .to_string();
    let r = c.command(&Command::Get(item("USER", s(&user))), &nobody);
    assert_eq!(status(&r), &Status::success());
    c.command(&Command::Get(item("META", s(&user))), &nobody);

    // A message body round trip through the replica's staging area.
    let body =
        b"From: csync_live@corvid.test\r\nSubject: staged only\r\n\r\nEXIT\r\nAPPLY UNUSER x\r\n"
            .to_vec();
    let guid = Guid::parse(sha1_hex(&body).as_bytes()).unwrap();
    let reserve = KvList::new()
        .with("PARTITION", s("default"))
        .with("MBOXNAME", Value::List(vec![s(&format!("user.{user}"))]))
        .with("GUID", Value::List(vec![Value::guid(&guid)]));
    let r = c.command(
        &Command::Apply(item("RESERVE", Value::KvList(reserve))),
        &nobody,
    );
    assert_eq!(status(&r), &Status::success());
    let file = FileRef {
        partition: Bytes::from_static(b"default"),
        guid,
        size: body.len() as u64,
    };
    let b2 = body.clone();
    let r = c.command(
        &Command::Apply(item("MESSAGE", Value::List(vec![Value::File(file)]))),
        &move |_| Bytes::from(b2.clone()),
    );
    assert_eq!(
        status(&r),
        &Status::success(),
        "the replica accepted our file literal"
    );

    // If the replica holds the user's INBOX, fetch one body back: it must
    // stream out of our decoder hashing to its GUID.
    let full = c.command(
        &Command::Get(item("FULLMAILBOX", s(&format!("user.{user}")))),
        &nobody,
    );
    if let Some(Response::Data(mb)) = full.first() {
        let kv = mb.value.as_kvlist().unwrap();
        if let Some(rec) = kv
            .get("RECORD")
            .and_then(Value::as_list)
            .and_then(|l| l.first())
        {
            let rk = rec.as_kvlist().unwrap();
            let q = KvList::new()
                .with("MBOXNAME", kv.get("MBOXNAME").unwrap().clone())
                .with("PARTITION", kv.get("PARTITION").unwrap().clone())
                .with("UNIQUEID", kv.get("UNIQUEID").unwrap().clone())
                .with("GUID", rk.get("GUID").unwrap().clone())
                .with("UID", rk.get("UID").unwrap().clone());
            c.files.clear();
            let r = c.command(&Command::Get(item("FETCH", Value::KvList(q))), &nobody);
            assert_eq!(status(&r), &Status::success());
            let (f, b) = &c.files[0];
            assert_eq!(f.size as usize, b.len());
            assert_eq!(sha1_hex(b), f.guid.to_string());
        }
    }

    // Malformed lines: the real answer is our decoder's refusal, verbatim.
    for line in [
        &b"FOO\r\n"[..],
        b"C01 CAPABILITY\r\n",
        b"\r\n",
        b"GET\r\n",
        b"APPLY\r\n",
        b"RESTORE\r\n",
        b"NOOP extra\r\n",
        b"RESTART now\r\n",
        b"COMPRESS\r\n",
        b"APPLY MAILBOX %(UNIQUEID x) trailing\r\n",
        b"GET USER (unclosed\"\r\n",
    ] {
        let mut d = ServerDecoder::new();
        d.handle_input(line);
        let Some(Event::Refused(e)) = d.poll_event().unwrap() else {
            panic!(
                "{:?} was not refused by our decoder",
                String::from_utf8_lossy(line)
            )
        };
        let real = c.raw(line);
        assert_eq!(
            status(&real),
            &e.response(),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }

    assert_eq!(
        status(&c.command(&Command::Restart, &nobody)).text,
        "Restarting"
    );
    assert_eq!(status(&c.command(&Command::Exit, &nobody)).text, "Finished");
    // Everything received re-encodes to the identical bytes.
    assert_eq!(c.reencoded, c.received);
}

/// Runs the peers' real sync_client against `port` for one user.
fn run_sync_client(
    env: &[(String, String)],
    port: u16,
    imap: bool,
    user: &str,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(get(env, "SYNC_CLIENT"));
    cmd.arg("--port").arg(port.to_string());
    if imap {
        cmd.arg("--try-imap");
    }
    cmd.args(["--", "-u", user])
        .output()
        .expect("sync-client.sh runs")
}

struct Pushed {
    commands: Vec<String>,
    files: usize,
}

/// A minimal csync server on our decoder: accepts everything, claims to
/// have nothing (so the client uploads), checks every file's SHA-1.
fn serve_csync(listener: TcpListener) -> Pushed {
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let send =
        |sock: &mut TcpStream, r: Response| sock.write_all(&r.encode().into_bytes()).unwrap();
    send(
        &mut sock,
        Response::Capability(Capability::Sasl(vec![Bytes::from_static(b"PLAIN")])),
    );
    send(
        &mut sock,
        Response::Greeting(Greeting::sync_server("corvid.test", "3.6.1")),
    );
    let mut d = ServerDecoder::new();
    let mut pushed = Pushed {
        commands: Vec::new(),
        files: 0,
    };
    let mut hash: Option<(FileRef, Sha1, u64)> = None;
    let mut buf = [0u8; 16384];
    loop {
        let n = sock.read(&mut buf).unwrap();
        if n == 0 {
            return pushed;
        }
        d.handle_input(&buf[..n]);
        while let Some(ev) = d.poll_event().expect("no fatal error") {
            match ev {
                Event::FileStart(f) => hash = Some((f, Sha1::new(), 0)),
                Event::FileChunk(c) => {
                    let h = hash.as_mut().unwrap();
                    h.1.update(&c);
                    h.2 += c.len() as u64;
                }
                Event::FileEnd => {
                    let (f, h, n) = hash.take().unwrap();
                    assert_eq!(n, f.size);
                    assert_eq!(hex::encode(h.finalize()), f.guid.to_string());
                    pushed.files += 1;
                }
                Event::Decoded(ClientLine::Command(c)) => {
                    pushed.commands.push(format!("{:?}", c.verb()));
                    let replies = match &c {
                        Command::Authenticate { .. } => {
                            vec![Response::Status(Status::auth_success("no protection"))]
                        }
                        Command::Exit => vec![Response::Status(Status::ok("Finished"))],
                        Command::Restart => vec![Response::Status(Status::ok("Restarting"))],
                        Command::Noop => vec![Response::Status(Status::ok("Noop completed"))],
                        Command::Apply(i) if i.key_is("RESERVE") => {
                            let guids = i.value.as_kvlist().unwrap().get("GUID").unwrap().clone();
                            vec![
                                Response::Data(item("MISSING", guids)),
                                Response::Status(Status::success()),
                            ]
                        }
                        _ => vec![Response::Status(Status::success())],
                    };
                    for r in replies {
                        send(&mut sock, r);
                    }
                    if matches!(c, Command::Exit) {
                        return pushed;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// The same as an imapd stand-in advertising X-REPLICATION.
fn serve_imap(listener: TcpListener) -> Pushed {
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let send =
        |sock: &mut TcpStream, r: ImapResponse| sock.write_all(&r.encode().into_bytes()).unwrap();
    send(
        &mut sock,
        ImapResponse::Condition {
            condition: Condition::Ok,
            text: Bytes::from_static(
                b"[CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN SASL-IR] corvid.test server ready",
            ),
        },
    );
    let mut d = ImapServerDecoder::new();
    let mut pushed = Pushed {
        commands: Vec::new(),
        files: 0,
    };
    let mut hash: Option<(FileRef, Sha1)> = None;
    let mut buf = [0u8; 16384];
    loop {
        let n = sock.read(&mut buf).unwrap();
        if n == 0 {
            return pushed;
        }
        d.handle_input(&buf[..n]);
        while let Some(ev) = d.poll_event().expect("no fatal error") {
            match ev {
                Event::FileStart(f) => hash = Some((f, Sha1::new())),
                Event::FileChunk(c) => hash.as_mut().unwrap().1.update(&c),
                Event::FileEnd => {
                    let (f, h) = hash.take().unwrap();
                    assert_eq!(hex::encode(h.finalize()), f.guid.to_string());
                    pushed.files += 1;
                }
                Event::Decoded(ImapClientLine::Command(c)) => {
                    let tagged = |text: &'static str| ImapResponse::Tagged {
                        tag: c.tag.clone(),
                        status: Status::ok(Bytes::from_static(text.as_bytes())),
                    };
                    let (name, replies) = match &c.body {
                        ImapCommandBody::Authenticate { .. } => (
                            "AUTHENTICATE",
                            vec![tagged("[CAPABILITY IMAP4rev1 LITERAL+ X-REPLICATION] Success (no protection)")],
                        ),
                        ImapCommandBody::Capability => (
                            "CAPABILITY",
                            vec![
                                ImapResponse::Capability(vec![
                                    Bytes::from_static(b"IMAP4rev1"),
                                    Bytes::from_static(b"X-REPLICATION"),
                                ]),
                                tagged("Completed"),
                            ],
                        ),
                        ImapCommandBody::SyncApply(i) if i.key_is("RESERVE") => {
                            let guids = i.value.as_kvlist().unwrap().get("GUID").unwrap().clone();
                            ("SYNCAPPLY", vec![ImapResponse::Data(item("MISSING", guids)), tagged("success")])
                        }
                        ImapCommandBody::SyncApply(i) if i.key_is("CAPABILITIES") => {
                            ("SYNCAPPLY", vec![ImapResponse::Data(item("ENABLED", i.value.clone())), tagged("success")])
                        }
                        ImapCommandBody::SyncApply(_) => ("SYNCAPPLY", vec![tagged("success")]),
                        ImapCommandBody::SyncGet(_) => ("SYNCGET", vec![tagged("success")]),
                        ImapCommandBody::SyncRestart => ("SYNCRESTART", vec![tagged("Restarting")]),
                        ImapCommandBody::Logout => (
                            "LOGOUT",
                            vec![
                                ImapResponse::Condition {
                                    condition: Condition::Bye,
                                    text: Bytes::from_static(b"LOGOUT received"),
                                },
                                tagged("Completed"),
                            ],
                        ),
                        other => panic!("unexpected command {other:?}"),
                    };
                    pushed.commands.push(name.to_string());
                    for r in replies {
                        send(&mut sock, r);
                    }
                    if name == "LOGOUT" {
                        return pushed;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn real_sync_client_pushes_through_our_decoders() {
    let Some(env) = peers_env() else { return };
    if std::env::var("USER").as_deref() != Ok("root") && !nix_is_root() {
        eprintln!("SKIP real_sync_client_pushes_through_our_decoders: sync-client.sh needs root");
        return;
    }
    // `live` is the suite's own user on the master (others may be empty).
    let users: Vec<&str> = get(&env, "MAIL_USERS").split(' ').collect();
    let user = if users.contains(&"live") {
        "live"
    } else {
        users[0]
    }
    .to_string();
    for imap in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            if imap {
                serve_imap(listener)
            } else {
                serve_csync(listener)
            }
        });
        let out = run_sync_client(&env, port, imap, &user);
        let pushed = server.join().expect("our server side did not panic");
        assert!(
            out.status.success(),
            "sync_client (imap={imap}) failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let want = if imap { "SYNCGET" } else { "Get" };
        assert!(
            pushed.commands.iter().any(|c| c == want),
            "imap={imap}: {:?}",
            pushed.commands
        );
        eprintln!(
            "imap={imap}: {} commands, {} files verified",
            pushed.commands.len(),
            pushed.files
        );
    }
}

fn nix_is_root() -> bool {
    // Without libc: root's /proc/self/status shows Uid 0.
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
