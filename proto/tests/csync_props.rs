//! csync decoders: any chunking decodes identically, strict prefixes need
//! more, encode→decode round trips, refusals resync, literal bytes are
//! never commands, memory stays bounded for huge file literals.

use bytes::Bytes;
use proptest::prelude::*;
use proto::csync::imap::{
    ImapClientDecoder, ImapCommand, ImapCommandBody, ImapResponse, ImapServerDecoder,
};
use proto::csync::{
    Capability, ClientDecoder, ClientLine, Code, Command, CommandError, Event, Greeting, Response,
    SaslData, ServerDecoder, Status, Verb,
};
use proto::dlist::{FileRef, Guid, Item, KvList, Value};

fn body_for(f: &FileRef) -> Bytes {
    let pattern = b"EXIT\r\nAPPLY UNUSER bob\r\n* OK fake\r\n";
    Bytes::from(
        (0..f.size as usize)
            .map(|i| pattern[(i + f.guid.as_bytes()[0] as usize) % pattern.len()])
            .collect::<Vec<u8>>(),
    )
}

fn arb_string() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9._/]{1,12}".prop_map(String::into_bytes),
        "[a-z \t\"%\\\\]{0,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..20),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        arb_string().prop_map(|b| Value::string(Bytes::from(b))),
        "[A-Za-z]{0,8}".prop_map(|s| Value::flag(Bytes::from(format!("\\{s}")))),
        any::<u32>().prop_map(|n| Value::num(n.into())),
        (any::<[u8; 20]>(), 0u64..200).prop_map(|(g, size)| Value::File(FileRef {
            partition: Bytes::from_static(b"default"),
            guid: Guid::from_bytes(g),
            size
        })),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
            proptest::collection::vec(("[A-Z_]{1,10}", inner), 0..5).prop_map(|kvs| {
                Value::KvList(KvList(
                    kvs.into_iter().map(|(k, v)| (Bytes::from(k), v)).collect(),
                ))
            }),
        ]
    })
}

fn arb_item() -> impl Strategy<Value = Item> {
    ("[A-Z_]{1,12}", arb_value()).prop_map(|(k, v)| Item::new(Bytes::from(k), v))
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            "[A-Z0-9-]{1,10}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30))
        )
            .prop_map(|(m, ir)| {
                Command::Authenticate {
                    mechanism: Bytes::from(m),
                    initial_response: ir.map(|r| SaslData::encode(&r, true)),
                }
            }),
        Just(Command::StartTls),
        Just(Command::Compress {
            algorithm: Bytes::from_static(b"DEFLATE")
        }),
        Just(Command::Noop),
        Just(Command::Exit),
        Just(Command::Restart),
        arb_item().prop_map(Command::Apply),
        arb_item().prop_map(Command::Get),
        arb_item().prop_map(Command::Restore),
    ]
}

fn arb_code() -> impl Strategy<Value = Code> {
    prop_oneof![
        Just(Code::InvalidUser),
        Just(Code::MailboxNonexistent),
        Just(Code::MailboxLocked),
        Just(Code::MailboxMoved),
        Just(Code::MailboxNotSupported),
        Just(Code::SyncChecksum),
        Just(Code::SyncChanged),
        Just(Code::SyncBadSieve),
        Just(Code::ProtocolError),
        Just(Code::ProtocolBadParameters),
        Just(Code::PermissionDenied),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        arb_item().prop_map(Response::Data),
        arb_code().prop_map(|c| Response::Status(Status::no_code(c))),
        Just(Response::Status(Status::success())),
        "[a-zA-Z ()]{1,30}".prop_map(|t| Response::Status(Status::ok(Bytes::from(t)))),
        "[a-zA-Z ]{1,30}".prop_map(|t| Response::Status(Status::bad(Bytes::from(t)))),
        proptest::collection::vec(any::<u8>(), 0..30)
            .prop_map(|c| Response::Challenge(SaslData::encode(&c, false))),
        Just(Response::Bye(Bytes::from_static(b"shutting down"))),
        "[a-z ]{1,20}".prop_map(|t| Response::Fatal(Bytes::from(t))),
    ]
}

/// Wire bytes of a sequence of encodings, with file bodies filled in.
fn wire(encs: &[proto::dlist::Encoded]) -> Vec<u8> {
    encs.iter().flat_map(|e| e.to_wire(body_for)).collect()
}

#[derive(Debug, PartialEq)]
enum Got<T> {
    Line(T, Vec<(FileRef, Vec<u8>)>),
    Refused(String),
}

fn drive<T, E: std::fmt::Display>(
    input: &[u8],
    cuts: &[usize],
    feed: &mut dyn FnMut(&[u8]),
    poll: &mut dyn FnMut() -> Option<Event<T, E>>,
) -> Vec<Got<T>> {
    let mut out = Vec::new();
    let mut files: Vec<(FileRef, Vec<u8>)> = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().copied().cycle();
    while at < input.len() {
        let n = cuts
            .next()
            .unwrap_or(input.len())
            .clamp(1, input.len() - at);
        feed(&input[at..at + n]);
        at += n;
        while let Some(ev) = poll() {
            match ev {
                Event::FileStart(f) => files.push((f, Vec::new())),
                Event::FileChunk(c) => files.last_mut().unwrap().1.extend_from_slice(&c),
                Event::FileEnd => {}
                Event::ContinuationNeeded { .. } => panic!("no sync literals here"),
                Event::Decoded(t) => out.push(Got::Line(t, std::mem::take(&mut files))),
                Event::Refused(e) => {
                    files.clear();
                    out.push(Got::Refused(e.to_string()))
                }
            }
        }
    }
    out
}

fn server_side(input: &[u8], cuts: &[usize]) -> Vec<Got<ClientLine>> {
    let d = std::cell::RefCell::new(ServerDecoder::new());
    drive(
        input,
        cuts,
        &mut |b| d.borrow_mut().handle_input(b),
        &mut || d.borrow_mut().poll_event().unwrap(),
    )
}

fn client_side(input: &[u8], cuts: &[usize]) -> Vec<Got<Response>> {
    let d = std::cell::RefCell::new(ClientDecoder::new());
    // Past the banner: untagged lines are data.
    d.borrow_mut()
        .handle_input(b"* OK test Cyrus sync server 3.6.1\r\n");
    assert!(matches!(
        d.borrow_mut().poll_event().unwrap(),
        Some(Event::Decoded(Response::Greeting(_)))
    ));
    drive(
        input,
        cuts,
        &mut |b| d.borrow_mut().handle_input(b),
        &mut || d.borrow_mut().poll_event().unwrap(),
    )
}

fn files_of(v: &Value, out: &mut Vec<FileRef>) {
    match v {
        Value::File(f) => out.push(f.clone()),
        Value::List(l) => l.iter().for_each(|v| files_of(v, out)),
        Value::KvList(kv) => kv.iter().for_each(|(_, v)| files_of(v, out)),
        _ => {}
    }
}

proptest! {
    #[test]
    fn commands_round_trip_under_any_chunking(cmds in proptest::collection::vec(arb_command(), 1..6), cuts in proptest::collection::vec(1usize..40, 1..8)) {
        let encs: Vec<_> = cmds.iter().map(Command::encode).collect();
        let input = wire(&encs);
        let whole = server_side(&input, &[input.len()]);
        let chunked = server_side(&input, &cuts);
        prop_assert_eq!(&whole, &chunked);
        prop_assert_eq!(whole.len(), cmds.len());
        for (got, cmd) in whole.iter().zip(&cmds) {
            let Got::Line(ClientLine::Command(c), files) = got else { return Err(TestCaseError::fail(format!("{got:?}"))) };
            prop_assert_eq!(c, cmd);
            let mut refs = Vec::new();
            if let Command::Apply(i) | Command::Get(i) | Command::Restore(i) = c { files_of(&i.value, &mut refs) }
            prop_assert_eq!(refs.len(), files.len());
            for (r, (f, body)) in refs.iter().zip(files) {
                prop_assert_eq!(r, f);
                prop_assert_eq!(&body_for(r)[..], &body[..]);
            }
        }
    }

    #[test]
    fn responses_round_trip_under_any_chunking(resps in proptest::collection::vec(arb_response(), 1..6), cuts in proptest::collection::vec(1usize..40, 1..8)) {
        let encs: Vec<_> = resps.iter().map(Response::encode).collect();
        let input = wire(&encs);
        let whole = client_side(&input, &[input.len()]);
        prop_assert_eq!(&whole, &client_side(&input, &cuts));
        prop_assert_eq!(whole.len(), resps.len());
        for (got, r) in whole.iter().zip(&resps) {
            let Got::Line(d, _) = got else { return Err(TestCaseError::fail(format!("{got:?}"))) };
            prop_assert_eq!(d, r);
        }
    }

    #[test]
    fn strict_prefixes_need_more(cmd in arb_command(), resp in arb_response()) {
        let input = wire(&[cmd.encode()]);
        for cut in 0..input.len() {
            let mut d = ServerDecoder::new();
            d.handle_input(&input[..cut]);
            while let Some(ev) = d.poll_event().expect("a prefix is never fatal") {
                prop_assert!(!matches!(ev, Event::Decoded(_) | Event::Refused(_)), "prefix {} decoded", cut);
            }
        }
        let input = wire(&[resp.encode()]);
        for cut in 0..input.len() {
            let mut d = ClientDecoder::new();
            d.handle_input(b"* OK x\r\n");
            d.poll_event().unwrap();
            d.handle_input(&input[..cut]);
            while let Some(ev) = d.poll_event().expect("a prefix is never fatal") {
                prop_assert!(!matches!(ev, Event::Decoded(_) | Event::Refused(_)), "prefix {} decoded", cut);
            }
        }
    }

    #[test]
    fn imap_flavour_round_trips(item in arb_item(), tag in "[A-Z][0-9]{1,3}", code in arb_code()) {
        let cmd = ImapCommand { tag: Bytes::from(tag.clone()), body: ImapCommandBody::SyncApply(item.clone()) };
        let input = cmd.encode().to_wire(body_for);
        let mut d = ImapServerDecoder::new();
        d.handle_input(&input);
        let mut got = None;
        while let Some(ev) = d.poll_event().unwrap() {
            if let Event::Decoded(proto::csync::imap::ImapClientLine::Command(c)) = ev { got = Some(c) }
        }
        prop_assert_eq!(got, Some(cmd));
        let resps = [
            ImapResponse::Data(item),
            ImapResponse::Tagged { tag: Bytes::from(tag), status: Status::no_code(code) },
        ];
        let input: Vec<u8> = resps.iter().flat_map(|r| r.encode().to_wire(body_for)).collect();
        let mut d = ImapClientDecoder::new();
        d.handle_input(&input);
        let mut got = Vec::new();
        while let Some(ev) = d.poll_event().unwrap() {
            if let Event::Decoded(r) = ev { got.push(r) }
        }
        prop_assert_eq!(got, resps.to_vec());
    }
}

#[test]
fn bad_line_is_refused_and_the_next_decodes() {
    let input = b"FOO bar {5+}\r\nEXIT\n baz\r\nNOOP\r\nGET\r\nNOOP extra\r\nAPPLY MAILBOX %(UNIQUEID\r\nAUTHENTICATE \"PLAIN\"\r\nEXIT\r\n";
    let got = server_side(input, &[3]);
    let want_refusals = [
        "BAD IMAP_PROTOCOL_ERROR Unrecognized command",
        "BAD IMAP_PROTOCOL_ERROR Failed to parse GET line",
        "BAD Unexpected extra arguments to Noop",
        "BAD IMAP_PROTOCOL_ERROR Failed to parse APPLY line",
        "BAD Invalid mechanism",
    ];
    let mut refusals = Vec::new();
    let mut lines = Vec::new();
    let mut d = ServerDecoder::new();
    d.handle_input(input);
    while let Some(ev) = d.poll_event().unwrap() {
        match ev {
            Event::Refused(e) => {
                let mut b = bytes::BytesMut::new();
                e.response().write(&mut b);
                refusals.push(String::from_utf8(b.to_vec()).unwrap());
            }
            Event::Decoded(l) => lines.push(l),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refusals, want_refusals);
    // The literal's "EXIT" was data of the refused line, never a command.
    assert_eq!(
        lines,
        vec![
            ClientLine::Command(Command::Noop),
            ClientLine::Command(Command::Exit)
        ]
    );
    assert_eq!(got.len(), 7);
}

#[test]
fn refusals_know_their_verb() {
    let mut d = ServerDecoder::new();
    d.handle_input(b"apply\r\nGeT USER alice\r\n");
    let Some(Event::Refused(e)) = d.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(e.verb(), Some(Verb::Apply));
    assert!(!Verb::Apply.allowed_before_auth());
    assert!(matches!(
        e,
        CommandError::BadArgument {
            verb: Verb::Apply,
            ..
        }
    ));
    // Command words are case-insensitive; the re-encoding is upper-case.
    let Some(Event::Decoded(ClientLine::Command(c))) = d.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(
        c,
        Command::Get(Item::new(
            Bytes::from_static(b"USER"),
            Value::string(Bytes::from_static(b"alice"))
        ))
    );
    assert_eq!(
        c.encode().into_bytes(),
        Bytes::from_static(b"GET USER alice\r\n")
    );
}

#[test]
fn file_literal_bytes_that_look_like_commands_stay_data() {
    let body = b"EXIT\r\nAPPLY UNUSER alice\r\n)\r\nNOOP\r\n";
    let mut input = format!(
        "APPLY MESSAGE (%{{default 0123456789abcdef0123456789abcdef01234567 {}}}\r\n",
        body.len()
    )
    .into_bytes();
    input.extend_from_slice(body);
    input.extend_from_slice(b")\r\nNOOP\r\n");
    for cut in [1, 2, 5, 1000] {
        let got = server_side(&input, &[cut]);
        assert_eq!(got.len(), 2, "cut {cut}");
        let Got::Line(ClientLine::Command(Command::Apply(item)), files) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(&item.key[..], b"MESSAGE");
        assert_eq!(files[0].1, body.to_vec());
        assert_eq!(
            got[1],
            Got::Line(ClientLine::Command(Command::Noop), vec![])
        );
    }
}

#[test]
fn sasl_continuation_lines() {
    let mut d = ServerDecoder::new();
    d.handle_input(b"AUTHENTICATE LOGIN\r\n");
    assert!(matches!(
        d.poll_event().unwrap(),
        Some(Event::Decoded(ClientLine::Command(
            Command::Authenticate { .. }
        )))
    ));
    d.expect_sasl_response();
    d.handle_input(b"cmVwbA==\r\n");
    let Some(Event::Decoded(ClientLine::SaslResponse(r))) = d.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(r.decode().unwrap(), b"repl");
    d.expect_sasl_response();
    d.handle_input(b"*\r\nNOOP\r\n");
    assert_eq!(
        d.poll_event().unwrap(),
        Some(Event::Decoded(ClientLine::SaslCancel))
    );
    assert_eq!(
        d.poll_event().unwrap(),
        Some(Event::Decoded(ClientLine::Command(Command::Noop)))
    );
    // `=` is an empty initial response.
    d.handle_input(b"AUTHENTICATE PLAIN =\r\n");
    let Some(Event::Decoded(ClientLine::Command(Command::Authenticate {
        initial_response: Some(ir),
        ..
    }))) = d.poll_event().unwrap()
    else {
        panic!()
    };
    assert_eq!(ir.decode().unwrap(), b"");
    assert_eq!(ir.as_wire(), b"=");
}

#[test]
fn exact_status_texts() {
    let line = |s: Status| {
        let mut b = bytes::BytesMut::new();
        s.write(&mut b);
        String::from_utf8(b.to_vec()).unwrap()
    };
    assert_eq!(line(Status::success()), "OK success");
    assert_eq!(
        line(Status::no_code(Code::ProtocolBadParameters)),
        "NO IMAP_PROTOCOL_BAD_PARAMETERS"
    );
    assert_eq!(
        line(Status::no_code(Code::SyncChecksum)),
        "NO IMAP_SYNC_CHECKSUM Checksum Failure"
    );
    assert_eq!(
        line(Status::no_code(Code::InvalidUser)),
        "NO IMAP_INVALID_USER No Such User"
    );
    assert_eq!(
        line(Status::no_code(Code::MailboxMoved)),
        "NO IMAP_MAILBOX_MOVED Mailbox exists with another name or uniqueid"
    );
    assert_eq!(
        line(Status::auth_success("no protection")),
        "OK Success (no protection)"
    );
    let banner = [
        Response::Capability(Capability::Sasl(vec![
            Bytes::from_static(b"PLAIN"),
            Bytes::from_static(b"LOGIN"),
        ])),
        Response::Capability(Capability::Compress(vec![Bytes::from_static(b"DEFLATE")])),
        Response::Capability(Capability::SieveMailbox),
        Response::Greeting(Greeting::sync_server("replica.lab", "3.6.1")),
    ];
    let wire: Vec<u8> = banner
        .iter()
        .flat_map(|r| r.encode().into_bytes().to_vec())
        .collect();
    assert_eq!(
        wire,
        b"* SASL PLAIN LOGIN\r\n* COMPRESS DEFLATE\r\n* SIEVE-MAILBOX\r\n* OK replica.lab Cyrus sync server 3.6.1\r\n"
    );
    let mut d = ClientDecoder::new();
    d.handle_input(&wire);
    d.handle_input(
        b"* SIEVE %(FILENAME a.script)\r\n* Fatal error: word too long\r\nBYE shutting down\r\n",
    );
    let mut got = Vec::new();
    while let Some(Event::Decoded(r)) = d.poll_event().unwrap() {
        got.push(r);
    }
    assert_eq!(&got[..4], &banner);
    assert!(matches!(&got[4], Response::Data(i) if &i.key[..] == b"SIEVE"));
    assert_eq!(
        got[5],
        Response::Fatal(Bytes::from_static(b"word too long"))
    );
    assert_eq!(got[6], Response::Bye(Bytes::from_static(b"shutting down")));
}

#[test]
fn fifty_megabyte_fetch_reply_streams_in_bounded_memory() {
    let total: u64 = 50 * 1024 * 1024;
    let mut d = ClientDecoder::new();
    d.handle_input(b"* OK x\r\n");
    d.poll_event().unwrap();
    d.handle_input(
        format!("* MESSAGE %{{default 0123456789abcdef0123456789abcdef01234567 {total}}}\r\n")
            .as_bytes(),
    );
    let block = vec![b'\n'; 32 * 1024];
    let mut sent = 0u64;
    let mut got = 0u64;
    let mut max = 0;
    while sent < total {
        let n = (total - sent).min(block.len() as u64) as usize;
        d.handle_input(&block[..n]);
        sent += n as u64;
        max = max.max(d.buffered_bytes());
        while let Some(ev) = d.poll_event().unwrap() {
            match ev {
                Event::FileChunk(c) => got += c.len() as u64,
                Event::FileStart(f) => assert_eq!(f.size, total),
                Event::FileEnd => assert_eq!(got, total),
                other => panic!("{other:?}"),
            }
        }
        max = max.max(d.buffered_bytes());
    }
    d.handle_input(b"\r\nOK success\r\n");
    assert!(matches!(
        d.poll_event().unwrap(),
        Some(Event::Decoded(Response::Data(_)))
    ));
    assert_eq!(
        d.poll_event().unwrap(),
        Some(Event::Decoded(Response::Status(Status::success())))
    );
    assert_eq!(got, total);
    assert!(max <= 32 * 1024 + 200, "held {max} bytes");
}

#[test]
fn imap_capabilities_are_found() {
    let mut d = ImapClientDecoder::new();
    d.handle_input(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN SASL-IR] replica Cyrus IMAP 3.6.1 server ready\r\n");
    d.handle_input(
        b"A01 OK [CAPABILITY IMAP4rev1 X-REPLICATION X-SIEVE-MAILBOX] Success (no protection)\r\n",
    );
    d.handle_input(b"* CAPABILITY IMAP4rev1 x-replication\r\n* BYE LOGOUT received\r\n");
    let mut got = Vec::new();
    while let Some(Event::Decoded(r)) = d.poll_event().unwrap() {
        got.push(r);
    }
    assert_eq!(got.len(), 4);
    assert!(!got[0].has_capability("X-REPLICATION"));
    assert!(got[0].has_capability("sasl-ir"));
    assert!(got[1].has_capability("X-REPLICATION"));
    assert!(got[2].has_capability("X-REPLICATION"));
    assert_eq!(got[3].capabilities(), None);
}

#[test]
fn decoder_options_are_checked() {
    use proto::frame::Options;
    assert!(ServerDecoder::with_options(Options {
        file_literals: false,
        ..Options::csync()
    })
    .is_err());
    assert!(ClientDecoder::with_options(Options {
        inline_literal_bytes_max: 10,
        ..Options::csync()
    })
    .is_err());
    assert!(ServerDecoder::with_options(Options {
        line_bytes_max: 1 << 20,
        literal_bytes_max: 1 << 16,
        inline_literal_bytes_max: 1 << 16,
        ..Options::csync()
    })
    .is_ok());
    let item = Item::new(Bytes::from_static(b"mailbox"), Value::Nil);
    assert!(item.key_is("MAILBOX"));
}

fn junk() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        Just(b"\r\n".to_vec()),
        Just(b"{3+}\r\n".to_vec()),
        Just(b"{2}\r\n".to_vec()),
        Just(b"%{default 0123456789abcdef0123456789abcdef01234567 4}\r\n".to_vec()),
        Just(b"%{p nothex 2}\r\n".to_vec()),
        Just(b"APPLY MAILBOX %(".to_vec()),
        Just(b"* MAILBOX (".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"(((".to_vec()),
        Just(b")".to_vec()),
        Just(b"NIL ".to_vec()),
        Just(b"S1 SYNCGET ".to_vec()),
        Just(b"+ ".to_vec()),
    ];
    proptest::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in junk(), cut in 1usize..20) {
        let small = proto::frame::Options { line_bytes_max: 200, literal_bytes_max: 50, inline_literal_bytes_max: 50, file_literal_bytes_max: 10, ..proto::frame::Options::csync() };
        let mut a = ServerDecoder::with_options(small.clone()).unwrap();
        let mut b = ClientDecoder::with_options(small.clone()).unwrap();
        let mut c = ImapServerDecoder::with_options(proto::frame::Options { sync_literals: proto::frame::SyncLiterals::AwaitContinuation, ..small.clone() }).unwrap();
        let mut d = ImapClientDecoder::with_options(small).unwrap();
        let (mut fa, mut fb, mut fc, mut fd) = (false, false, false, false);
        for piece in input.chunks(cut) {
            a.handle_input(piece);
            b.handle_input(piece);
            c.handle_input(piece);
            d.handle_input(piece);
            while !fa { match a.poll_event() { Ok(Some(_)) => {}, Ok(None) => break, Err(_) => fa = true } }
            while !fb { match b.poll_event() { Ok(Some(_)) => {}, Ok(None) => break, Err(_) => fb = true } }
            while !fc {
                match c.poll_event() {
                    // Alternate accepting and refusing synchronising literals.
                    Ok(Some(Event::ContinuationNeeded { len })) => { if len % 2 == 1 { c.reject_literal().unwrap() } }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => fc = true,
                }
            }
            while !fd { match d.poll_event() { Ok(Some(_)) => {}, Ok(None) => break, Err(_) => fd = true } }
            // Memory stays within the small limits plus one input piece.
            prop_assert!(a.buffered_bytes() <= 200 + 1024 + 64 * 1024);
        }
        let _ = (a.handle_eof(), b.handle_eof(), c.handle_eof(), d.handle_eof());
    }
}
