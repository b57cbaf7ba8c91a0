//! COMPRESS DEFLATE against a real peer: Cyrus 3.6 imapd (the private
//! `master` instance of `scripts/peers`). After `COMPRESS DEFLATE` both
//! directions are raw deflate; our Deflater's sync-flushed commands must be
//! understood by Cyrus's zlib, and our Inflater must read its replies.
//!
//! Needs the peers (`scripts/peers/start.sh`); without their env file the
//! test prints SKIP and passes, except under `CI=true`, where it fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proto::compress::{Deflater, Inflater};

fn peers_env() -> Option<Vec<(String, String)>> {
    let path = std::env::var("CORVID_PEERS_ENV").unwrap_or_else(|_| "/tmp/corvid-peers/env".into());
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    &env.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} missing from peers env"))
        .1
}

/// One plain line, read a byte at a time so nothing after it (the
/// compressed stream) is consumed.
fn plain_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "peer closed");
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn plain_until_tagged(s: &mut TcpStream, tag: &str) -> String {
    loop {
        let l = plain_line(s);
        if l.starts_with(&format!("{tag} ")) {
            return l;
        }
    }
}

/// Send one command compressed and inflate replies until its tagged one.
fn compressed_command(
    s: &mut TcpStream,
    d: &mut Deflater,
    inf: &mut Inflater,
    tag: &str,
    cmd: &str,
) -> String {
    d.write(format!("{tag} {cmd}\r\n").as_bytes()).unwrap();
    s.write_all(&d.flush().unwrap()).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "peer closed before answering {tag}; got {:?}",
            String::from_utf8_lossy(&text)
        );
        inf.feed(&buf[..n]).unwrap();
        while let Some(chunk) = inf.pull().unwrap() {
            text.extend_from_slice(&chunk);
        }
        let s = String::from_utf8_lossy(&text);
        if s.lines().any(|l| l.starts_with(&format!("{tag} "))) && s.ends_with("\r\n") {
            return s.into_owned();
        }
    }
}

#[test]
fn cyrus_imapd_speaks_deflate_with_us() {
    let Some(env) = peers_env() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but the real peers are not running (scripts/peers/start.sh)");
        }
        eprintln!("SKIP compress_live: real peers not running (scripts/peers/start.sh)");
        return;
    };
    let addr = format!(
        "{}:{}",
        get(&env, "PEERS_HOST"),
        get(&env, "MASTER_IMAP_PORT")
    );
    let mut s = TcpStream::connect(&addr).unwrap();
    // a hung peer must fail the test, not hang it
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(plain_line(&mut s).starts_with("* OK"));
    s.write_all(format!("a LOGIN live {}\r\n", get(&env, "USER_PASS")).as_bytes())
        .unwrap();
    assert!(plain_until_tagged(&mut s, "a").starts_with("a OK"));
    s.write_all(b"b COMPRESS DEFLATE\r\n").unwrap();
    assert!(plain_until_tagged(&mut s, "b").starts_with("b OK"));

    let mut d = Deflater::new();
    let mut inf = Inflater::default();
    let r = compressed_command(&mut s, &mut d, &mut inf, "c", "NOOP");
    assert!(r.contains("c OK"), "{r}");
    // A second COMPRESS inside the compressed layer is refused by Cyrus:
    // proof the reply came through our inflater from its deflater.
    let r = compressed_command(&mut s, &mut d, &mut inf, "d", "COMPRESS DEFLATE");
    assert!(r.contains("d BAD") || r.contains("d NO"), "{r}");
    // a reply of most of a kilobyte
    let r = compressed_command(&mut s, &mut d, &mut inf, "e", "CAPABILITY");
    assert!(
        r.contains("* CAPABILITY IMAP4rev1") && r.contains("e OK"),
        "{r}"
    );
    assert!(r.len() > 500, "{r}");
    // a long command line exercises multi-block deflate output
    let long = format!("SEARCH TEXT \"{}\"", "corvid".repeat(2000));
    let r = compressed_command(&mut s, &mut d, &mut inf, "f", &long);
    assert!(
        r.contains("f BAD") || r.contains("f NO") || r.contains("f OK"),
        "{r}"
    );
    let r = compressed_command(&mut s, &mut d, &mut inf, "g", "LOGOUT");
    assert!(r.contains("* BYE") && r.contains("g OK"), "{r}");
}
