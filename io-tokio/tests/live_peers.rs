//! Live tests against the real Cyrus daemons, through the capture relay
//! (`io_tokio::capture`) running in this process:
//!
//! * the real `sync_client` replicating a fresh message into the real
//!   `sync_server` (both Cyrus 3.6.1), COMPRESS DEFLATE on;
//! * a MUPDATE session with the real `mupdate -m` master, switching to
//!   COMPRESS "DEFLATE" half-way.
//!
//! Both assert that each direction's bytes reach the tap, decompressed, with
//! the commands and answers the session must contain; the csync session is
//! then decoded byte for byte by `proto::csync`, both directions.
//!
//! The peers come from `scripts/peers/start.sh`, found through the env file
//! named by `CORVID_PEERS_ENV` (default `/tmp/corvid-peers/env`). Without it a
//! test prints `SKIP` and passes — unless `CI` is set (`CI=true`), where a
//! missing peer is a failure: CI must prove interoperability, not skip it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use io_tokio::capture::{self, Collector, Dir, Event, Options, Summary, Tap};
use proto::compress::{Deflater, Inflater};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Guards against a peer that never answers: a hang becomes a failure with
/// a message instead of a stuck test run. Not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The peers' env file as a map, or `None` (after printing SKIP) when the
/// peers are not running and we are not in CI.
fn peers_env(test: &str) -> Option<BTreeMap<String, String>> {
    let path = std::env::var("CORVID_PEERS_ENV").unwrap_or_else(|_| "/tmp/corvid-peers/env".into());
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "CI is set but the real peers are not running ({path}: {e}); \
                 run scripts/test.sh (it starts them with scripts/peers/start.sh)"
            );
            // Straight to stderr, past the test harness's output capture, so
            // the skip is visible in a normal `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test}: real peers not running ({path}: {e}); start them with scripts/peers/start.sh"
            );
            None
        }
    }
}

fn get<'a>(env: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    env.get(key)
        .unwrap_or_else(|| panic!("peers env has no {key}"))
}

/// What the relay's tap saw.
#[derive(Default)]
struct Seen {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    compressing: bool,
    decode_errors: Vec<String>,
}

impl Tap for Seen {
    fn on_bytes(&mut self, dir: Dir, bytes: &[u8]) {
        match dir {
            Dir::ClientToServer => self.c2s.extend_from_slice(bytes),
            Dir::ServerToClient => self.s2c.extend_from_slice(bytes),
        }
    }
    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Compressing { .. } => self.compressing = true,
            Event::DecodeError { dir, error } => {
                self.decode_errors.push(format!("{dir:?}: {error}"))
            }
            _ => {}
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Byte strings from mixed literals and `format!`s.
macro_rules! needles {
    ($($e:expr),* $(,)?) => { vec![$(AsRef::<[u8]>::as_ref(&$e).to_vec()),*] };
}

fn assert_has(stream: &[u8], what: &str, needles: Vec<Vec<u8>>) {
    for n in &needles {
        assert!(
            contains(stream, n),
            "{what} lacks {:?}; it was:\n{}",
            String::from_utf8_lossy(n),
            String::from_utf8_lossy(&stream[..stream.len().min(4000)])
        );
    }
}

/// Something unique per run, for message ids and mailbox names.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

// ------------------------------------------------------------------ csync

/// One LMTP delivery to the real master's lmtpd.
async fn lmtp_deliver(env: &BTreeMap<String, String>, user: &str, message: &[u8]) {
    let addr = format!(
        "{}:{}",
        get(env, "PEERS_HOST"),
        get(env, "MASTER_LMTP_PORT")
    );
    let rcpt = format!("{user}@{}", get(env, "MASTER_NAME"));
    let mut s = TcpStream::connect(&addr)
        .await
        .expect("connect to the master's lmtpd");
    let mut reply = Vec::new();
    // Each step: send, then read the reply lines until one has a space after the code.
    async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = buf.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                if line.as_bytes().get(3) == Some(&b' ') {
                    return line;
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read from lmtpd");
            assert!(n > 0, "lmtpd closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    assert!(answer(&mut s, &mut reply).await.starts_with("220"));
    let mut data = message.to_vec();
    data.extend_from_slice(b".\r\n");
    for (send, want) in [
        (b"LHLO corvid.test\r\n".to_vec(), "250"),
        (b"MAIL FROM:<sender@corvid.test>\r\n".to_vec(), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n").into_bytes(), "250"),
        (b"DATA\r\n".to_vec(), "354"),
        (data, "250"),
        (b"QUIT\r\n".to_vec(), "221"),
    ] {
        s.write_all(&send).await.expect("write to lmtpd");
        let line = answer(&mut s, &mut reply).await;
        assert!(
            line.starts_with(want),
            "lmtpd answered {line:?} to {:?}",
            String::from_utf8_lossy(&send)
        );
    }
}

/// Makes sure the test user has a mailbox on the master (it may exist from
/// an earlier run against the same peers; that is fine).
async fn ensure_user(env: &BTreeMap<String, String>, user: &str) {
    let out = tokio::process::Command::new("python3")
        .arg(get(env, "PEERS_MAIL"))
        .args(["mkuser", user])
        .env(
            "CORVID_PEERS_ENV",
            std::env::var("CORVID_PEERS_ENV").unwrap_or_default(),
        )
        .output()
        .await
        .expect("run scripts/peers/mail.py");
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase()
        + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success() || text.contains("exists"),
        "mail.py mkuser {user} failed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sync_client_replicates_into_real_sync_server_through_the_relay() {
    let Some(env) =
        peers_env("real_sync_client_replicates_into_real_sync_server_through_the_relay")
    else {
        return;
    };
    let user = "live";
    let id = unique();
    let message_id = format!("<csync-{id}@corvid.test>");
    let message = format!(
        "From: <sender@corvid.test>\r\nTo: <{user}@corvid.test>\r\nSubject: live csync {id}\r\n\
         Message-ID: {message_id}\r\n\r\nA body line that must reach the tap inflated.\r\n"
    );
    ensure_user(&env, user).await;
    lmtp_deliver(&env, user, message.as_bytes()).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = listener.local_addr().expect("relay address").port();
    let target = format!(
        "{}:{}",
        get(&env, "PEERS_HOST"),
        get(&env, "REPLICA_CSYNC_PORT")
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(get(&env, "SYNC_CLIENT"))
        .args(["--port", &port.to_string(), "--", "-v", "-u", user])
        .env("CORVID_PEERS_RUN", get(&env, "CORVID_PEERS_RUN"));
    let client = command.output();
    let opts = Options::default();
    let relay = capture::relay_one(&listener, &target, Seen::default(), &opts);
    let (client, relay) = tokio::time::timeout(HANG_GUARD, async { tokio::join!(client, relay) })
        .await
        .expect("sync_client and the relay did not finish (hang guard)");
    let client = client.expect("run sync_client");
    let (summary, seen): (Summary, Seen) = relay.expect("relay to the real sync_server");

    assert!(
        client.status.success(),
        "sync_client failed: {}\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(
        seen.decode_errors.is_empty(),
        "inflate errors: {:?}",
        seen.decode_errors
    );
    assert!(
        summary.compressed && seen.compressing,
        "Cyrus always turns on COMPRESS DEFLATE"
    );
    assert!(!seen.c2s.is_empty() && !seen.s2c.is_empty());
    assert_eq!(summary.c2s_plain_bytes, seen.c2s.len() as u64);
    assert_eq!(summary.s2c_plain_bytes, seen.s2c.len() as u64);
    assert_has(
        &seen.c2s,
        "client->server",
        needles![
            b"AUTHENTICATE PLAIN ",
            b"COMPRESS DEFLATE\r\n",
            format!("GET USER {user}\r\n").into_bytes(),
            b"APPLY MESSAGE (%{default ",
            b"APPLY MAILBOX %(UNIQUEID ",
            format!("MBOXNAME user.{user} ").into_bytes(),
            // the message travelled inside the compressed stream, byte for
            // byte (lmtpd adds Return-Path, Received, Date... around ours)
            message.split("\r\n\r\n").next().expect("headers"),
            b"\r\n\r\nA body line that must reach the tap inflated.\r\n",
            b"EXIT\r\n",
        ],
    );
    assert_has(
        &seen.s2c,
        "server->client",
        needles![
            b"* SASL ",
            b"* COMPRESS DEFLATE\r\n",
            format!("* OK {} Cyrus sync server 3.6.1", get(&env, "REPLICA_NAME")).into_bytes(),
            b"OK DEFLATE active\r\n",
            b"OK success\r\n",
            b"OK Finished\r\n",
        ],
    );
    // The switch point is exact: everything up to the client's COMPRESS is
    // plain text, and nothing of the compressed stream leaks in as garbage.
    assert!(seen.c2s.starts_with(b"AUTHENTICATE PLAIN "));
    assert!(
        std::str::from_utf8(&seen.s2c).is_ok(),
        "server bytes are all text here"
    );
    // And the replication really happened, through the relay: the replica's
    // own imapd finds the message.
    let found = imap_uid_search(
        &format!(
            "{}:{}",
            get(&env, "PEERS_HOST"),
            get(&env, "REPLICA_IMAP_PORT")
        ),
        user,
        get(&env, "USER_PASS"),
        &format!("HEADER Message-ID \"{message_id}\""),
    )
    .await;
    assert_eq!(
        found.len(),
        1,
        "the replica has the message once: {found:?}"
    );
    // Finally, corvid's own codecs read both directions exactly as the
    // real peers wrote them: every byte framed and decoded, nothing
    // refused, every file literal hashing to its GUID.
    let decoded = decode_csync_session(&seen.c2s, &seen.s2c);
    assert!(
        decoded.files >= 1 && decoded.commands >= 5 && decoded.responses >= 5,
        "the session carries the message and the sync: {decoded:?}"
    );
}

/// What [`decode_csync_session`] found.
#[derive(Debug)]
struct DecodedSession {
    commands: usize,
    responses: usize,
    files: usize,
}

/// Decodes a captured csync session with `proto::csync`: the client's
/// bytes as our sync_server reads them, the server's as our sync_client
/// does. Panics on any refusal, decode error or bytes left over, and checks
/// each file literal's SHA-1 against its GUID.
fn decode_csync_session(c2s: &[u8], s2c: &[u8]) -> DecodedSession {
    use proto::csync::{ClientDecoder, Event, ServerDecoder};
    use sha1::{Digest, Sha1};

    let mut server_side = ServerDecoder::new();
    server_side.handle_input(c2s);
    let (mut commands, mut files) = (0, 0);
    let mut file: Option<(proto::dlist::FileRef, Sha1, u64)> = None;
    let mut drain = |d: &mut ServerDecoder| {
        while let Some(event) = d.poll_event().expect("client->server bytes decode") {
            match event {
                Event::Decoded(_) => commands += 1,
                Event::Refused(e) => panic!("proto refused what real sync_client sent: {e:?}"),
                Event::ContinuationNeeded { len } => {
                    panic!("sync_client sent a synchronising literal of {len} bytes")
                }
                Event::FileStart(f) => file = Some((f, Sha1::new(), 0)),
                Event::FileChunk(chunk) => {
                    let (_, hasher, n) = file.as_mut().expect("chunk inside a file literal");
                    hasher.update(&chunk);
                    *n += chunk.len() as u64;
                }
                Event::FileEnd => {
                    let (f, hasher, n) = file.take().expect("end of a file literal");
                    assert_eq!(n, f.size, "file literal size");
                    assert_eq!(
                        hasher.finalize().as_slice(),
                        f.guid.as_bytes(),
                        "file literal bytes hash to its GUID"
                    );
                    files += 1;
                }
            }
        }
    };
    drain(&mut server_side);
    server_side
        .handle_eof()
        .expect("client stream ends on a message boundary");
    drain(&mut server_side);
    assert_eq!(
        server_side.buffered_bytes(),
        0,
        "client bytes left undecoded"
    );

    let mut client_side = ClientDecoder::new();
    client_side.handle_input(s2c);
    let mut responses = 0;
    let mut drain = |d: &mut ClientDecoder| {
        while let Some(event) = d.poll_event().expect("server->client bytes decode") {
            match event {
                Event::Decoded(_) => responses += 1,
                other => panic!("unexpected event in the server's stream: {other:?}"),
            }
        }
    };
    drain(&mut client_side);
    client_side
        .handle_eof()
        .expect("server stream ends on a message boundary");
    drain(&mut client_side);
    assert_eq!(
        client_side.buffered_bytes(),
        0,
        "server bytes left undecoded"
    );
    DecodedSession {
        commands,
        responses,
        files,
    }
}

/// `UID SEARCH <criteria>` in `user`'s INBOX over plain IMAP; the UIDs found.
async fn imap_uid_search(addr: &str, user: &str, pass: &str, criteria: &str) -> Vec<u32> {
    let mut s = TcpStream::connect(addr).await.expect("connect to imapd");
    let mut buf = Vec::new();
    let mut found = Vec::new();
    // (tag, command); the empty tag reads the greeting
    let steps: [(&str, String); 5] = [
        ("", String::new()),
        ("a", format!("a LOGIN {user} {pass}\r\n")),
        ("b", "b SELECT INBOX\r\n".into()),
        ("c", format!("c UID SEARCH {criteria}\r\n")),
        ("d", "d LOGOUT\r\n".into()),
    ];
    for (tag, cmd) in steps {
        s.write_all(cmd.as_bytes()).await.expect("write to imapd");
        // read lines until the greeting (tag "") or this tag's status
        loop {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.expect("read from imapd");
                assert!(n > 0, "imapd closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                continue;
            };
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(uids) = line.strip_prefix("* SEARCH") {
                found.extend(
                    uids.split_whitespace()
                        .filter_map(|u| u.parse::<u32>().ok()),
                );
            }
            if tag.is_empty() && line.starts_with("* OK") {
                break;
            }
            if !tag.is_empty() && line.starts_with(&format!("{tag} ")) {
                assert!(
                    tag == "d" || line.starts_with(&format!("{tag} OK")),
                    "imapd: {line}"
                );
                break;
            }
        }
    }
    found
}

// ------------------------------------------------------------------ MUPDATE

/// A minimal MUPDATE client for the test: line reads, optional deflate.
struct Mupdate {
    s: TcpStream,
    buf: Vec<u8>,
    z: Option<(Deflater, Inflater)>,
}

impl Mupdate {
    async fn send(&mut self, line: &[u8]) {
        let bytes = match &mut self.z {
            Some((d, _)) => {
                d.write(line).expect("deflate");
                d.flush().expect("deflate flush").to_vec()
            }
            None => line.to_vec(),
        };
        self.s.write_all(&bytes).await.expect("write to mupdate");
    }

    /// Reads lines until the status (`OK`/`NO`/`BAD`) tagged `tag`; returns
    /// all lines read. `*` reads the banner, which ends with `* OK`.
    async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                let mut words = line.split(' ');
                let done = words.next() == Some(tag)
                    && matches!(words.next(), Some("OK" | "NO" | "BAD" | "BYE"));
                lines.push(line);
                if done {
                    return lines;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk).await.expect("read from mupdate");
            assert!(n > 0, "mupdate closed the connection; got {lines:?}");
            match &mut self.z {
                Some((_, inf)) => {
                    inf.feed(&chunk[..n]).expect("inflate feed");
                    while let Some(out) = inf.pull().expect("inflate") {
                        self.buf.extend_from_slice(&out);
                    }
                }
                None => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn command(&mut self, tag: &str, rest: &str) -> Vec<String> {
        self.send(format!("{tag} {rest}\r\n").as_bytes()).await;
        self.until_tagged(tag).await
    }
}

fn last_ok(lines: &[String], what: &str) {
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(
        last.split(' ').nth(1) == Some("OK"),
        "{what}: expected a tagged OK, got {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mupdate_master_session_through_the_relay() {
    let Some(env) = peers_env("real_mupdate_master_session_through_the_relay") else {
        return;
    };
    let target = format!("{}:{}", get(&env, "PEERS_HOST"), get(&env, "MUPDATE_PORT"));
    // This test uses the library's one-line setup and in-memory tap.
    let (relay_addr, relay) =
        capture::spawn_one(target, Collector::new(1 << 20), Options::default())
            .await
            .expect("bind relay");
    let name = format!("user.live{}", unique().replace('-', ""));
    let location = "127.0.0.1:25999!default";
    let (user, pass) = (
        get(&env, "MUPDATE_USER").to_string(),
        get(&env, "MUPDATE_PASS").to_string(),
    );

    let session = {
        let name = name.clone();
        async move {
            let s = TcpStream::connect(relay_addr)
                .await
                .expect("connect to the relay");
            let mut m = Mupdate {
                s,
                buf: Vec::new(),
                z: None,
            };
            let banner = m.until_tagged("*").await;
            assert!(
                banner.last().is_some_and(|l| l.starts_with("* OK MUPDATE")),
                "banner {banner:?}"
            );
            let token = base64_plain(&user, &pass);
            let auth = m
                .command(
                    "A01",
                    &format!("AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{token}", token.len()),
                )
                .await;
            last_ok(&auth, "AUTHENTICATE");
            last_ok(&m.command("N01", "NOOP").await, "NOOP");
            last_ok(
                &m.command("R01", &format!("RESERVE \"{name}\" \"{location}\""))
                    .await,
                "RESERVE",
            );
            let acl = "live\tlrswipkxtecdan\t";
            last_ok(
                &m.command(
                    "A02",
                    &format!("ACTIVATE \"{name}\" \"{location}\" \"{acl}\""),
                )
                .await,
                "ACTIVATE",
            );
            let found = m.command("F01", &format!("FIND \"{name}\"")).await;
            assert!(
                found.iter().any(|l| l.starts_with("F01 MAILBOX")),
                "FIND {found:?}"
            );
            last_ok(&m.command("L01", "LIST \"127.0.0.1:25999!\"").await, "LIST");
            let z = m.command("Z01", "COMPRESS \"DEFLATE\"").await;
            last_ok(&z, "COMPRESS");
            m.z = Some((Deflater::new(), Inflater::default()));
            let found = m.command("F02", &format!("FIND \"{name}\"")).await;
            assert!(
                found.iter().any(|l| l.starts_with("F02 MAILBOX")),
                "compressed FIND {found:?}"
            );
            // DELETE only a name that exists: Cyrus 3.6.1 crashes on unknown names.
            last_ok(
                &m.command("X01", &format!("DELETE \"{name}\"")).await,
                "DELETE",
            );
            last_ok(&m.command("Q01", "LOGOUT").await, "LOGOUT");
            m.s.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            let _ = m.s.read_to_end(&mut rest).await;
        }
    };
    let ((), relay) = tokio::time::timeout(HANG_GUARD, async { tokio::join!(session, relay) })
        .await
        .expect("MUPDATE session did not finish (hang guard)");
    let (summary, seen) = relay
        .expect("relay task")
        .expect("relay to the real mupdate master");

    assert!(
        !seen
            .events
            .iter()
            .any(|e| matches!(e, Event::DecodeError { .. })),
        "inflate errors: {:?}",
        seen.events
    );
    assert!(!seen.truncated);
    assert!(summary.compressed && seen.compressed());
    assert!(matches!(seen.events.last(), Some(Event::Closed(s)) if *s == summary));
    assert_has(
        &seen.c2s,
        "client->server",
        needles![
            b"A01 AUTHENTICATE \"PLAIN\" {",
            b"N01 NOOP\r\n",
            format!("R01 RESERVE \"{name}\" \"{location}\"\r\n").into_bytes(),
            b"Z01 COMPRESS \"DEFLATE\"\r\n",
            // after the switch: inflated by the relay
            format!("F02 FIND \"{name}\"\r\n").into_bytes(),
            format!("X01 DELETE \"{name}\"\r\n").into_bytes(),
            b"Q01 LOGOUT\r\n",
        ],
    );
    assert_has(
        &seen.s2c,
        "server->client",
        needles![
            b"* OK MUPDATE \"",
            b"A01 OK ",
            b"Z01 OK ",
            format!("F02 MAILBOX {{{}+}}\r\n{name}", name.len()).into_bytes(),
            b"X01 OK ",
            b"Q01 OK ",
        ],
    );
}

/// base64 of the SASL PLAIN message `\0user\0pass`.
fn base64_plain(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}
