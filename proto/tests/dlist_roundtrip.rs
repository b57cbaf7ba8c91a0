//! dlist printer/parser: Cyrus's form choices, and encode→frame→decode
//! round trips for arbitrary valid values.

use bytes::Bytes;
use proptest::prelude::*;
use proto::dlist::{self, Encoder, FileRef, Guid, Item, KvList, LiteralStyle, Value};
use proto::frame::{Event, Framer, Options};

fn body_for(f: &FileRef) -> Bytes {
    // Content that looks like commands, to prove it is never read as one.
    let pattern = b"EXIT\r\nAPPLY UNUSER x\r\n)";
    Bytes::from(
        (0..f.size as usize)
            .map(|i| pattern[i % pattern.len()])
            .collect::<Vec<u8>>(),
    )
}

fn encode_item(item: &Item, style: LiteralStyle) -> (Vec<u8>, Vec<FileRef>) {
    let mut e = Encoder::new(style);
    e.item(item).crlf();
    let enc = e.finish();
    let files = enc.files().iter().map(|(_, f)| f.clone()).collect();
    (enc.to_wire(body_for), files)
}

/// Frames `wire` (fed in `chunk`-byte pieces) and parses the one message.
fn decode_item(wire: &[u8], chunk: usize) -> (Item, Vec<(FileRef, Vec<u8>)>) {
    let opts = Options {
        chunk_bytes_max: 5,
        ..Options::csync()
    };
    let mut f = Framer::new(opts);
    let mut streamed: Vec<(proto::frame::LiteralHeader, Vec<u8>)> = Vec::new();
    let mut msg = None;
    for piece in wire.chunks(chunk.max(1)) {
        f.handle_input(piece);
        while let Some(ev) = f.poll_event().expect("framing") {
            match ev {
                Event::LiteralStart(h) => streamed.push((h, Vec::new())),
                Event::LiteralChunk(c) => streamed.last_mut().unwrap().1.extend_from_slice(&c),
                Event::LiteralEnd => {}
                Event::Message(m) => {
                    assert!(msg.is_none(), "one message expected");
                    msg = Some(m)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(f.handle_eof(), Ok(()));
    let msg = msg.expect("a message");
    let item = dlist::parse_item(&msg, 0).expect("parse");
    let mut files = Vec::new();
    fn collect(v: &Value, out: &mut Vec<FileRef>) {
        match v {
            Value::File(f) => out.push(f.clone()),
            Value::List(l) => l.iter().for_each(|v| collect(v, out)),
            Value::KvList(kv) => kv.iter().for_each(|(_, v)| collect(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    collect(&item.value, &mut refs);
    assert_eq!(refs.len(), streamed.len());
    for (r, (h, body)) in refs.into_iter().zip(streamed) {
        assert_eq!(h.len, r.size);
        files.push((r, body));
    }
    (item, files)
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..30),
        "[a-zA-Z0-9._\\-/ \t\"%\\\\{}*()]{0,20}".prop_map(String::into_bytes),
        (0usize..3).prop_map(|k| vec![b'a'; [1023, 1024, 1500][k]]),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        arb_bytes().prop_map(|b| Value::string(Bytes::from(b))),
        "[A-Za-z$]{0,10}".prop_map(|s| Value::flag(Bytes::from(format!("\\{s}")))),
        any::<u64>().prop_map(Value::num),
        any::<u64>().prop_map(Value::hex),
        (
            any::<[u8; 20]>(),
            0u64..300,
            prop_oneof![
                Just("default".to_string()),
                "[a-z]{1,8}",
                Just("my part".to_string())
            ]
        )
            .prop_map(|(g, size, p)| Value::File(FileRef {
                partition: Bytes::from(p),
                guid: Guid::from_bytes(g),
                size
            })),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::vec((arb_bytes(), inner), 0..6).prop_map(|kvs| {
                Value::KvList(KvList(
                    kvs.into_iter().map(|(k, v)| (Bytes::from(k), v)).collect(),
                ))
            }),
        ]
    })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(key in arb_bytes(), value in arb_value(), chunk in 1usize..64) {
        let item = Item { key: Bytes::from(key), value };
        let (wire, files) = encode_item(&item, LiteralStyle::NonSync);
        let (back, streamed) = decode_item(&wire, chunk);
        prop_assert_eq!(&back, &item);
        prop_assert_eq!(streamed.len(), files.len());
        for (r, body) in streamed {
            prop_assert_eq!(Bytes::from(body), body_for(&r));
        }
        // And re-encoding the decoded item gives the same bytes.
        let (again, _) = encode_item(&back, LiteralStyle::NonSync);
        prop_assert_eq!(again, wire);
    }

    #[test]
    fn string_form_follows_cyrus(s in arb_bytes()) {
        let v = Value::string(Bytes::from(s.clone()));
        let mut e = Encoder::new(LiteralStyle::NonSync);
        e.value(&v);
        let out = e.finish().into_bytes();
        let atomish = !s.is_empty() && s.len() < 1024 && s != b"NIL"
            && s.iter().all(|&b| (0x1f..0x80).contains(&b) && b != 0x7f && !b" {()\"%*\\".contains(&b));
        let quotable = s.len() < 1024 && s.iter().all(|&b| b < 0x80 && !b"\0\r\n\"%\\".contains(&b));
        if atomish {
            prop_assert_eq!(&out[..], &s[..]);
        } else if quotable {
            prop_assert_eq!(out[0], b'"');
            prop_assert_eq!(&out[1..out.len() - 1], &s[..]);
        } else {
            let head = format!("{{{}+}}\r\n", s.len());
            prop_assert!(out.starts_with(head.as_bytes()));
        }
    }
}

#[cfg(feature = "arbitrary")]
proptest! {
    #[test]
    fn arbitrary_values_round_trip(seed in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut u = arbitrary::Unstructured::new(&seed);
        let item: Item = u.arbitrary().unwrap();
        let (wire, _) = encode_item(&item, LiteralStyle::NonSync);
        let (back, _) = decode_item(&wire, 7);
        prop_assert_eq!(back, item);
    }
}

fn enc(v: &Value, style: LiteralStyle) -> Vec<u8> {
    let mut e = Encoder::new(style);
    e.value(v);
    e.finish().to_wire(body_for)
}

#[test]
fn cyrus_form_choices() {
    let s = |b: &[u8]| {
        enc(
            &Value::string(Bytes::copy_from_slice(b)),
            LiteralStyle::NonSync,
        )
    };
    assert_eq!(s(b""), b"\"\"");
    assert_eq!(s(b"NIL"), b"\"NIL\"");
    assert_eq!(s(b"user.alice"), b"user.alice");
    assert_eq!(s(b"a]b[c!@^:,/+$"), b"a]b[c!@^:,/+$");
    // 0x1F is an atom byte in 3.6.1 (`*s < 0x1f`), 0x1E is not.
    assert_eq!(s(b"a\x1fb"), b"a\x1fb");
    assert_eq!(s(b"a\x1eb"), b"\"a\x1eb\"");
    // TAB travels raw inside quotes (ACLs).
    assert_eq!(
        s(b"alice\tlrswipkxtecdan\t"),
        b"\"alice\tlrswipkxtecdan\t\""
    );
    assert_eq!(s(b"changed shared note"), b"\"changed shared note\"");
    assert_eq!(s(b"a*b"), b"\"a*b\"");
    assert_eq!(s(b"{x"), b"\"{x\"");
    // ", %, \, CR/LF, 8-bit, NUL and >= 1024 bytes make a literal.
    assert_eq!(s(b"\\Drafts"), b"{7+}\r\n\\Drafts");
    assert_eq!(s(b"50%"), b"{3+}\r\n50%");
    assert_eq!(s(b"a\"b"), b"{3+}\r\na\"b");
    assert_eq!(s("é".as_bytes()), b"{2+}\r\n\xc3\xa9");
    assert_eq!(s(b"a\0b"), b"{3+}\r\na\0b");
    assert_eq!(s(&[b'a'; 1023]), vec![b'a'; 1023]);
    let long = s(&[b'a'; 1024]);
    assert!(long.starts_with(b"{1024+}\r\n"));
    let spaced = [b' '; 1024];
    assert!(s(&spaced).starts_with(b"{1024+}\r\n"));
    // IMAP-flavour server output uses synchronising literals.
    assert_eq!(
        enc(
            &Value::string(Bytes::from_static(b"\\Drafts")),
            LiteralStyle::Sync
        ),
        b"{7}\r\n\\Drafts"
    );
    // Flags print raw, numbers and hex as Cyrus does.
    assert_eq!(
        enc(
            &Value::flag(Bytes::from_static(b"\\Seen")),
            LiteralStyle::NonSync
        ),
        b"\\Seen"
    );
    assert_eq!(
        enc(&Value::hex(0xabc), LiteralStyle::NonSync),
        b"0000000000000abc"
    );
    assert_eq!(
        enc(&Value::num(4294967295), LiteralStyle::NonSync),
        b"4294967295"
    );
}

#[test]
fn parses_a_real_record_line() {
    let line = b"MAILBOX %(UNIQUEID sctu2lym8k567b5dbwv2fqbg MBOXNAME user.alice.Work SYNC_CRC 1123265735 ACL \"alice\tlrswipkxtecdan\tanyone\tp\t\" OPTIONS P ANNOTATIONS (%(ENTRY /comment USERID \"\" MODSEQ 0 VALUE \"changed shared note\")) RECORD (%(UID 1 FLAGS (\\Flagged \\Seen $Important) GUID 644657d1095548205478542cf038c9f624f2e7cb)))\r\n";
    let (item, _) = decode_item(line, 1000);
    assert_eq!(&item.key[..], b"MAILBOX");
    let kv = item.value.as_kvlist().unwrap();
    assert_eq!(kv.get("SYNC_CRC").unwrap().as_u64(), Some(1123265735));
    assert_eq!(
        kv.get("ACL").unwrap().as_bytes().unwrap(),
        b"alice\tlrswipkxtecdan\tanyone\tp\t"
    );
    let rec = &kv.get("RECORD").unwrap().as_list().unwrap()[0];
    let flags = rec
        .as_kvlist()
        .unwrap()
        .get("FLAGS")
        .unwrap()
        .as_list()
        .unwrap();
    assert_eq!(flags[0], Value::Flag(Bytes::from_static(b"\\Flagged")));
    assert_eq!(flags[2], Value::Atom(Bytes::from_static(b"$Important")));
    assert!(rec
        .as_kvlist()
        .unwrap()
        .get("GUID")
        .unwrap()
        .as_guid()
        .is_some());
    let (again, _) = encode_item(&item, LiteralStyle::NonSync);
    assert_eq!(again, line);
}

#[test]
fn malformed_values_are_refused() {
    let cases: &[&[u8]] = &[
        b"K (a b\r\n",
        b"K %(A)\r\n",
        b"K %x\r\n",
        b"K \"open\r\n",
        b"K a b\r\n",
        b"K %{default nothex 3}\r\nabc\r\n",
        b"K {3+}x\r\n",
        b"K\r\n",
    ];
    for case in cases {
        let mut f = Framer::new(Options::csync());
        f.handle_input(case);
        let mut parsed = None;
        while let Some(ev) = f.poll_event().unwrap() {
            if let Event::Message(m) = ev {
                parsed = Some(dlist::parse_item(&m, 0));
            }
        }
        let r = parsed.expect("framed");
        assert!(
            r.is_err(),
            "{:?} parsed as {:?}",
            String::from_utf8_lossy(case),
            r
        );
    }
    // Deep nesting is bounded.
    let mut deep = b"K ".to_vec();
    deep.extend_from_slice(&[b'('; 1000]);
    deep.extend_from_slice(&[b')'; 1000]);
    deep.extend_from_slice(b"\r\n");
    let mut f = Framer::new(Options::csync());
    f.handle_input(&deep);
    let Some(Event::Message(m)) = f.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(dlist::parse_item(&m, 0), Err(dlist::ParseError::TooDeep));
}

#[test]
fn typed_accessors() {
    assert_eq!(Value::Quoted(Bytes::from_static(b"5")).as_u64(), Some(5));
    assert_eq!(
        Value::Atom(Bytes::from_static(b"18446744073709551615")).as_u32_wrapping(),
        Some(u32::MAX)
    );
    assert_eq!(
        Value::Atom(Bytes::from_static(b"4294967296")).as_u32_wrapping(),
        Some(0)
    );
    assert_eq!(Value::Atom(Bytes::from_static(b"-1")).as_u64(), None);
    assert_eq!(Value::hex(0x1234).as_hex_u64(), Some(0x1234));
    let g: Guid = "644657D1095548205478542CF038C9F624F2E7CB".parse().unwrap();
    assert_eq!(g.to_string(), "644657d1095548205478542cf038c9f624f2e7cb");
    assert!(Guid::parse(b"644657d1").is_err());
}

#[test]
fn quoted_escapes_from_other_peers_round_trip() {
    let line = b"K (\"a\\\"b\\\\c\" \"plain\" \"\")\r\n";
    let (item, _) = decode_item(line, 3);
    let l = item.value.as_list().unwrap();
    assert_eq!(l[0], Value::Quoted(Bytes::from_static(b"a\"b\\c")));
    assert_eq!(l[1], Value::Quoted(Bytes::from_static(b"plain")));
    assert_eq!(l[2], Value::Quoted(Bytes::new()));
    let (again, _) = encode_item(&item, LiteralStyle::NonSync);
    assert_eq!(again, line);
}
