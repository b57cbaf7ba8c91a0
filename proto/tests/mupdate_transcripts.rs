//! Every line of every real Cyrus 3.6.1 MUPDATE transcript
//! (`tests/mupdate_transcripts/`, copied from `research/transcripts/`):
//! client lines decode to commands (or to Cyrus's refusal class), server
//! lines decode to responses and re-encode byte for byte; the decoded
//! sessions are snapshotted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proto::frame::{Event, Framer, Message};
use proto::mupdate::{self, parse_command, parse_response, Response};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mupdate_transcripts")
}

/// Undoes the transcript rendering: `\t` is TAB, `\xNN` a byte.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b't') {
            out.push(b'\t');
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
            match u8::from_str_radix(hex, 16) {
                Ok(v) => {
                    out.push(v);
                    i += 4;
                }
                Err(_) => {
                    out.push(b[i]);
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// One direction of one connection: bytes in order.
#[derive(Default)]
struct Streams {
    /// (stream key, direction) -> bytes; key is "conn/peer".
    bytes: BTreeMap<(String, char), Vec<u8>>,
}

/// Splits a transcript into per-connection client and server byte streams.
/// A new connection starts at every `* AUTH` banner line of a peer; in
/// two-party transcripts the `A`/`B` column names the peer.
fn load(name: &str) -> Streams {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    let mut streams = Streams::default();
    let mut conn: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        // Optional "seconds peer " prefix.
        let mut rest = trimmed;
        let mut peer = "-".to_string();
        if rest.as_bytes()[0].is_ascii_digit() {
            let (_, r) = rest.split_once(' ').unwrap();
            rest = r.trim_start();
            if rest.starts_with('#') {
                continue;
            }
            if let Some((p, r)) = rest.split_once(' ') {
                if p == "A" || p == "B" {
                    peer = p.to_string();
                    rest = r;
                }
            }
            if rest.starts_with('#') {
                continue;
            }
        }
        let (dir, payload) = if let Some(p) =
            rest.strip_prefix("S: ")
                .or(if rest == "S:" { Some("") } else { None })
        {
            ('S', p)
        } else if let Some(p) =
            rest.strip_prefix("C: ")
                .or(if rest == "C:" { Some("") } else { None })
        {
            ('C', p)
        } else {
            panic!("{name}: unexpected line {line:?}");
        };
        let n = conn.entry(peer.clone()).or_insert(0);
        if dir == 'S' && payload.starts_with("* AUTH") {
            *n += 1;
        }
        let key = format!("{peer}/{n:02}");
        let (payload, eol): (&str, &[u8]) = match payload.strip_suffix(" [bare LF]") {
            Some(p) => (p, b"\n"),
            None => (payload, b"\r\n"),
        };
        let buf = streams.bytes.entry((key, dir)).or_default();
        buf.extend_from_slice(&unescape(payload));
        buf.extend_from_slice(eol);
    }
    streams
}

fn frame_all(bytes: &[u8], opts: proto::frame::Options) -> Vec<Result<Message, String>> {
    let mut f = Framer::new(opts);
    f.handle_input(bytes);
    let mut out = Vec::new();
    while let Some(ev) = f.poll_event().expect("no fatal framing error") {
        match ev {
            Event::Message(m) => out.push(Ok(m)),
            Event::Refused(r) => out.push(Err(format!("refused {:?}", r.reason))),
            Event::ContinuationNeeded { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(f.is_idle(), "stream ended mid-message");
    out
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .replace('\t', "\\t")
        .replace('\0', "\\0")
}

/// Decodes one transcript into a readable listing, asserting the
/// byte-identical re-encoding of every server line on the way.
fn decode(name: &str) -> Vec<String> {
    let streams = load(name);
    let mut out = Vec::new();
    for ((key, dir), bytes) in &streams.bytes {
        if *dir == 'C' {
            for m in frame_all(bytes, mupdate::server_frame_options()) {
                let line = match m {
                    Ok(m) => match parse_command(&m) {
                        Ok((tag, cmd)) => format!("{key} C {} {cmd:?}", show(&tag)),
                        Err(e) => {
                            format!("{key} C error {:?} {}", e.tag.as_deref().map(show), e.kind)
                        }
                    },
                    Err(r) => format!("{key} C {r}"),
                };
                out.push(line);
            }
        } else {
            let mut reencoded = Vec::new();
            for m in frame_all(bytes, mupdate::client_frame_options()) {
                let m = m.expect("server lines are never refused");
                let r = parse_response(&m)
                    .unwrap_or_else(|e| panic!("{name} {key}: {e}: {:?}", show(m.text())));
                r.encode_into(&mut reencoded);
                out.push(format!("{key} S {}", summarize(&r)));
            }
            // Bare-LF lines exist only client side: server streams are CRLF.
            assert_eq!(
                show(&reencoded),
                show(bytes),
                "{name} {key}: server bytes re-encode identically"
            );
        }
    }
    out
}

fn summarize(r: &Response) -> String {
    format!("{r:?}")
}

macro_rules! transcript_test {
    ($fn:ident, $file:literal) => {
        #[test]
        fn $fn() {
            insta::assert_yaml_snapshot!(decode($file));
        }
    };
}

transcript_test!(basic, "mupdate-basic.txt");
transcript_test!(auth, "mupdate-auth.txt");
transcript_test!(errors, "mupdate-errors.txt");
transcript_test!(literals, "mupdate-literals.txt");
transcript_test!(states, "mupdate-states.txt");
transcript_test!(update_stream, "mupdate-update-stream.txt");
transcript_test!(partial_update, "mupdate-partial-update.txt");
transcript_test!(compress, "mupdate-compress.txt");
transcript_test!(starttls, "mupdate-starttls.txt");
transcript_test!(crashes, "mupdate-crashes.txt");
transcript_test!(slave_boot, "mupdate-slave-boot.txt");
transcript_test!(slave_client, "mupdate-slave-client.txt");
transcript_test!(backend_push, "mupdate-backend-push.txt");
transcript_test!(frontend_create, "mupdate-frontend-create.txt");
transcript_test!(master_restart, "mupdate-master-restart.txt");

/// The mupdatetest transcript mixes the tool's own output with bare echoed
/// server lines; its protocol lines are checked one by one.
#[test]
fn mupdatetest_lines_decode() {
    let text = std::fs::read_to_string(dir().join("mupdate-mupdatetest.txt")).unwrap();
    let mut server = Vec::new();
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("S: ") {
            server.extend_from_slice(&unescape(p));
            server.extend_from_slice(b"\r\n");
        }
    }
    let mut re = Vec::new();
    for m in frame_all(&server, mupdate::client_frame_options()) {
        parse_response(&m.unwrap()).unwrap().encode_into(&mut re);
    }
    assert_eq!(re, server);
}

/// Cyrus's exact refusal classes for the error transcript's lines.
#[test]
fn error_classes_match_cyrus_replies() {
    let cases: &[(&[u8], &str)] = &[
        (b"\r\n", "Need command"),
        (b"FOO\r\n", "Need command"),
        (b"T1 FROB\r\n", "Unrecognized command"),
        (b"F1 FIND\r\n", "Missing arguments"),
        (b"F2 FIND \"a\" \"b\"\r\n", "Extra arguments"),
        (b"F3 FIND user.alice\r\n", "Extra arguments"),
        (b"N1 NOOP extra\r\n", "Extra arguments"),
        (b"R1 RESERVE \"user.x\"\r\n", "Missing arguments"),
        (b"A1 ACTIVATE \"user.x\" \"h!p\"\r\n", "Missing arguments"),
        (b"L1 LIST \"a\" \"b\"\r\n", "Extra arguments"),
        (b"F5  FIND \"user.alice\"\r\n", "Null command"),
        (b"U0 UPDATE \"\"\r\n", "Badly formed arguments"),
        (b"F5 FIND {abc}\r\n", "Extra arguments"),
        (b"F6 FIND {3+}\r\nuser.alice\r\n", "Extra arguments"),
        (b"F7 FIND {3+}\r\na\0b\r\n", "Extra arguments"),
        (b"A1 AUTHENTICATE PLAIN\r\n", "Extra arguments"),
    ];
    for (input, want) in cases {
        let msgs = frame_all(input, mupdate::server_frame_options());
        assert_eq!(msgs.len(), 1, "{}", show(input));
        let err = parse_command(msgs[0].as_ref().unwrap()).unwrap_err();
        assert_eq!(err.kind.to_string(), *want, "{}", show(input));
    }
}
