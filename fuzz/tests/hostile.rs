//! Hand-made hostile input, each answered with a clear typed refusal and
//! bounded memory: huge and lying literals, oversized lines, NULs, bare
//! LF, deep nesting (on a small stack), decompression bombs, truncated
//! streams, absurd dsync field counts, and the same attacks on the server
//! machines (a BAD/NO, never silence or a crash). These are the classes of
//! input that crashed Cyrus and Dovecot (research/mupdate.md §9,
//! csync-protocol.md §9, dsync.md).

use bytes::BytesMut;
use proto::compress::{CompressError, InflateOptions, Inflater};
use proto::csync::{ClientLine, CommandError, Event as CEvent, ServerDecoder};
use proto::dlist::{self, ParseError};
use proto::dsync::{DecodeError, Decoder, Event as DEvent, Options as DOptions};
use proto::frame::{Event, FrameError, Framer, Options, Oversize, RefusalReason};

const GUID: &str = "0123456789abcdef0123456789abcdef01234567";

/// Feeds `input` in `chunk`-byte pieces, draining after each; asserts the
/// framer never holds more than its documented bound. Returns the events
/// (literal chunks counted, not kept) and the first fatal error.
fn frame(opts: Options, input: &[u8], chunk: usize) -> (Vec<Event>, u64, Option<FrameError>) {
    let bound = chunk + opts.line_bytes_max + proto::frame::LITERAL_HEADER_BYTES_MAX;
    let mut f = Framer::new(opts);
    let mut evs = Vec::new();
    let mut streamed = 0u64;
    for piece in input.chunks(chunk) {
        f.handle_input(piece);
        loop {
            match f.poll_event() {
                Ok(Some(Event::LiteralChunk(c))) => streamed += c.len() as u64,
                Ok(Some(e)) => evs.push(e),
                Ok(None) => break,
                Err(e) => return (evs, streamed, Some(e)),
            }
        }
        assert!(
            f.buffered_bytes() <= bound,
            "framer holds {}",
            f.buffered_bytes()
        );
    }
    (evs, streamed, None)
}

fn run_on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    // 256 KiB: a parser that recursed once per `(` would overflow here long
    // before 1 MB of nesting.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no stack overflow or panic");
}

#[test]
fn sync_literal_of_a_trillion_bytes_is_refused_at_once_without_continuation() {
    let (evs, _, err) = frame(
        proto::mupdate::server_frame_options(),
        b"A01 FIND {999999999999}\r\nA02 NOOP\r\n",
        7,
    );
    assert_eq!(err, None);
    match &evs[0] {
        Event::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::LiteralTooLarge);
            assert!(r.at_sync_literal, "no continuation, nothing to skip");
            assert_eq!(&r.head[..], b"A01 FIND {999999999999}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        matches!(&evs[1], Event::Message(m) if m.text() == b"A02 NOOP"),
        "the session goes on"
    );
    assert!(!evs
        .iter()
        .any(|e| matches!(e, Event::ContinuationNeeded { .. })));
}

#[test]
fn non_sync_literal_over_4_gib_is_counted_away_not_buffered() {
    // {4294967296+}: the bytes come whatever we do. Send 3 MiB of them: all
    // counted away in bounded memory, nothing decoded, no message yet.
    let mut input = b"APPLY RESERVE {4294967296+}\r\n".to_vec();
    input.extend(std::iter::repeat(b'x').take(3 << 20));
    let opts = Options {
        line_bytes_max: 4096,
        ..Options::csync()
    };
    let (evs, streamed, err) = frame(opts.clone(), &input, 64 * 1024);
    assert_eq!(err, None);
    assert!(
        evs.is_empty(),
        "nothing may come out of a discarded literal: {evs:?}"
    );
    assert_eq!(streamed, 0);
    // With Oversize::Fatal the stream closes at the announcement.
    let fatal = Options {
        oversize: Oversize::Fatal,
        ..opts
    };
    let (_, _, err) = frame(fatal, &input, 4096);
    assert_eq!(
        err,
        Some(FrameError::LiteralTooLarge {
            len: 4_294_967_296,
            max: 64 * 1024 * 1024
        })
    );
}

#[test]
fn literal_length_beyond_u64_is_fatal() {
    let (_, _, err) = frame(
        Options::csync(),
        b"APPLY RESERVE {99999999999999999999999+}\r\nxx",
        3,
    );
    assert_eq!(err, Some(FrameError::LiteralLengthOverflow));
    let (_, _, err) = frame(Options::csync(), b"APPLY MESSAGE (%{default 0123456789abcdef0123456789abcdef01234567 99999999999999999999999}\r\n", 5);
    assert_eq!(err, Some(FrameError::LiteralLengthOverflow));
}

#[test]
fn lying_file_literal_is_refused_by_the_csync_decoder() {
    // %{p guid 99999999999}: over 4 GiB - 1; its bytes are counted away
    // (3 MiB sent here), the command is refused once they are through.
    let opts = proto::frame::Options {
        file_literal_bytes_max: 1 << 20,
        ..Options::csync()
    };
    let mut d = ServerDecoder::with_options(opts).expect("options");
    let announced = 3u64 << 20;
    d.handle_input(format!("APPLY MESSAGE (%{{default {GUID} {announced}}}\r\n").as_bytes());
    let body = vec![b')'; 64 * 1024];
    let mut events = Vec::new();
    for _ in 0..48 {
        d.handle_input(&body);
        while let Some(e) = d.poll_event().expect("not fatal") {
            events.push(e);
        }
        assert!(
            d.buffered_bytes() < 256 * 1024,
            "decoder holds {}",
            d.buffered_bytes()
        );
    }
    d.handle_input(b")\r\nNOOP\r\n");
    while let Some(e) = d.poll_event().expect("not fatal") {
        events.push(e);
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, CEvent::FileStart(_) | CEvent::FileChunk(_))),
        "no byte of it is streamed"
    );
    assert!(
        matches!(
            &events[0],
            CEvent::Refused(CommandError::Limit {
                reason: RefusalReason::FileLiteralTooLarge,
                ..
            })
        ),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], CEvent::Decoded(ClientLine::Command(_))),
        "NOOP after it decodes: {events:?}"
    );
}

#[test]
fn oversized_line_is_framed_away_and_the_next_one_decodes() {
    let opts = proto::mupdate::server_frame_options();
    let max = opts.line_bytes_max;
    let mut input = b"A01 FIND \"".to_vec();
    input.extend(std::iter::repeat(b'a').take(max * 4));
    input.extend_from_slice(b"\"\r\nA02 NOOP\r\n");
    let (evs, _, err) = frame(opts, &input, 64 * 1024);
    assert_eq!(err, None);
    assert!(
        matches!(&evs[0], Event::Refused(r) if r.reason == RefusalReason::LineTooLong && r.head.starts_with(b"A01 FIND"))
    );
    assert!(matches!(&evs[1], Event::Message(m) if m.text() == b"A02 NOOP"));
}

#[test]
fn oversized_word_and_quoted_string_in_mupdate_get_a_refusal() {
    // A 1 MiB atom and a 1 MiB quoted string: Cyrus's fixed buffers crashed
    // on these; here both lines are refused as too long.
    for line in [
        format!("A01 {}\r\n", "X".repeat(1 << 20)),
        format!("A01 FIND \"{}\"\r\n", "n".repeat(1 << 20)),
    ] {
        let (evs, _, err) = frame(
            proto::mupdate::server_frame_options(),
            line.as_bytes(),
            8192,
        );
        assert_eq!(err, None);
        assert!(
            matches!(&evs[..], [Event::Refused(r)] if r.reason == RefusalReason::LineTooLong),
            "{evs:?}"
        );
    }
}

#[test]
fn nul_in_a_mupdate_string_is_refused_as_cyrus_does() {
    let (evs, _, _) = frame(
        proto::mupdate::server_frame_options(),
        b"A01 FIND {3+}\r\na\0b\r\n",
        4,
    );
    let [Event::Message(m)] = &evs[..] else {
        panic!("{evs:?}")
    };
    let e = proto::mupdate::parse_command(m).expect_err("NUL refused");
    assert_eq!(e.kind, proto::mupdate::CommandErrorKind::ExtraArguments);
    assert_eq!(e.tag.as_deref(), Some(&b"A01"[..]));
}

#[test]
fn bare_lf_ends_a_line_as_in_cyrus() {
    let (evs, _, err) = frame(Options::csync(), b"NOOP\nNOOP\r\n", 1);
    assert_eq!(err, None);
    assert_eq!(evs.len(), 2);
    assert!(evs
        .iter()
        .all(|e| matches!(e, Event::Message(m) if m.text() == b"NOOP")));
}

#[test]
fn one_megabyte_of_nested_lists_is_refused_without_stack_overflow() {
    run_on_small_stack(|| {
        for (open, close) in [("(", ")"), ("%(A ", ")"), ("%(A (", "))")] {
            let depth = (1 << 20) / open.len();
            let mut line = b"APPLY MAILBOX ".to_vec();
            line.extend(open.repeat(depth).bytes());
            line.extend(close.repeat(depth).bytes());
            line.extend_from_slice(b"\r\n");
            let mut d = ServerDecoder::new();
            d.handle_input(&line);
            let ev = d.poll_event().expect("not fatal").expect("an event");
            match ev {
                CEvent::Refused(CommandError::BadArgument { error, .. }) => {
                    assert_eq!(error, ParseError::TooDeep)
                }
                other => panic!("expected TooDeep, got {other:?}"),
            }
            // Also straight through the dlist parser, unclosed.
            let (evs, _, _) = frame(
                Options::csync(),
                format!("X {}\r\n", open.repeat(depth)).as_bytes(),
                1 << 20,
            );
            let [Event::Message(m)] = &evs[..] else {
                panic!("one message")
            };
            assert_eq!(dlist::parse_item(m, 0), Err(ParseError::TooDeep));
        }
    });
}

#[test]
fn deep_nesting_at_the_limit_still_parses() {
    let depth = dlist::parse::DEPTH_MAX;
    let line = format!("K {}{}\r\n", "(".repeat(depth), ")".repeat(depth));
    let (evs, _, _) = frame(Options::csync(), line.as_bytes(), 1024);
    let [Event::Message(m)] = &evs[..] else {
        panic!("one message")
    };
    assert!(dlist::parse_item(m, 0).is_ok());
    // The item's value is at depth 0, so DEPTH_MAX + 1 lists still parse
    // (the innermost at depth DEPTH_MAX); one more is refused.
    let line = format!("K {}{}\r\n", "(".repeat(depth + 2), ")".repeat(depth + 2));
    let (evs, _, _) = frame(Options::csync(), line.as_bytes(), 1024);
    let [Event::Message(m)] = &evs[..] else {
        panic!("one message")
    };
    assert_eq!(dlist::parse_item(m, 0), Err(ParseError::TooDeep));
}

#[test]
fn decompression_bomb_comes_out_in_bounded_pulls() {
    // 64 MiB of zeros in about 64 KiB of deflate.
    let mut d = proto::compress::Deflater::with_level(9);
    let zeros = vec![0u8; 1 << 20];
    let mut wire = Vec::new();
    for _ in 0..64 {
        d.write(&zeros).expect("deflate");
    }
    wire.extend_from_slice(&d.flush().expect("flush"));
    assert!(wire.len() < 256 * 1024, "bomb is {} bytes", wire.len());
    let opts = InflateOptions {
        output_chunk_bytes_max: 16 * 1024,
        input_buffer_bytes_max: 1 << 20,
    };
    let mut inf = Inflater::new(opts);
    inf.feed(&wire).expect("feed");
    let mut total = 0u64;
    let mut pulls = 0u64;
    while let Some(c) = inf.pull().expect("valid") {
        assert!(c.len() <= 16 * 1024);
        total += c.len() as u64;
        pulls += 1;
    }
    assert_eq!(total, 64 << 20);
    assert!(pulls >= (64 << 20) / (16 << 10));
}

#[test]
fn compressed_input_beyond_the_buffer_limit_is_refused() {
    let mut inf = Inflater::new(InflateOptions {
        output_chunk_bytes_max: 1024,
        input_buffer_bytes_max: 4096,
    });
    inf.feed(&[0u8; 4096]).expect("at the limit");
    assert_eq!(
        inf.feed(&[0u8; 1]),
        Err(CompressError::InputBufferFull { limit: 4096 })
    );
    // And it stays refused.
    assert!(inf.pull().is_err());
}

#[test]
fn corrupt_and_trailing_deflate_are_typed_errors() {
    let mut inf = Inflater::default();
    inf.feed(&[0xff; 16]).expect("buffered");
    assert!(matches!(inf.pull(), Err(CompressError::Corrupt(_))));
    // A final empty block, then more bytes.
    let mut inf = Inflater::default();
    inf.feed(&[0x03, 0x00]).expect("final block");
    assert_eq!(inf.pull(), Ok(None));
    assert!(inf.is_finished());
    assert_eq!(inf.feed(b"more"), Err(CompressError::TrailingData(4)));
}

#[test]
fn truncated_streams_are_typed_errors_at_eof() {
    // Inside a literal.
    let mut f = Framer::new(Options::csync());
    f.handle_input(b"APPLY RESERVE {10+}\r\nabc");
    while f.poll_event().expect("ok").is_some() {}
    assert_eq!(f.handle_eof(), Err(FrameError::TruncatedMessage));
    // Inside a line.
    let mut f = Framer::new(Options::csync());
    f.handle_input(b"NOO");
    assert_eq!(f.poll_event(), Ok(None));
    assert_eq!(f.handle_eof(), Err(FrameError::TruncatedMessage));
    // dsync: inside the VERSION line, and inside a body.
    let mut d = Decoder::new(DOptions::default());
    d.feed(b"VERSION\tds");
    assert_eq!(d.next(), Ok(None));
    assert!(matches!(
        d.handle_eof(),
        Err(DecodeError::UnexpectedEof { .. })
    ));
}

fn dsync_preamble() -> Vec<u8> {
    let mut out = BytesMut::new();
    proto::dsync::Encoder::new(Default::default())
        .encode_preamble(&mut out)
        .expect("preamble");
    out.to_vec()
}

#[test]
fn dsync_record_with_absurd_field_count_is_refused() {
    let mut input = dsync_preamble();
    // A mailbox-delete record ('D'?) is not needed: any declared type with
    // 200 000 values instead of a handful.
    let chr = proto::dsync::Schema::dovecot_3_5()
        .headers()
        .first()
        .expect("a header")
        .chr;
    input.push(chr);
    input.extend(std::iter::repeat(b"x\t").take(200_000).flatten());
    input.push(b'\n');
    let mut d = Decoder::new(DOptions::default());
    d.feed(&input);
    let err = loop {
        match d.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error for 200 000 fields"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            DecodeError::TooManyValues { got: 200_000, .. } | DecodeError::TooManyValues { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn dsync_header_flood_and_long_line_are_refused() {
    // 100 header lines of unknown types.
    let mut input = b"VERSION\tdsync\t3\t5\n".to_vec();
    for i in 0..100u8 {
        // Header lines are `<type byte><key>\t<key>…`; 0x80.. are unknown types.
        input.push(0x80 | i);
        input.extend_from_slice(b"k\tl\n");
    }
    let mut d = Decoder::new(DOptions::default());
    d.feed(&input);
    let err = loop {
        match d.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("headers_max not enforced"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, DecodeError::TooManyHeaders { limit: 64 });
    // A 2 MiB line without LF, fed in pieces: refused at the limit, the
    // buffer never much beyond it.
    let mut d = Decoder::new(DOptions::default());
    d.feed(b"VERSION\tdsync\t3\t5\n");
    assert!(matches!(d.next(), Ok(Some(DEvent::Version { .. }))));
    let piece = vec![b'a'; 64 * 1024];
    let mut err = None;
    for _ in 0..32 {
        d.feed(&piece);
        match d.next() {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        assert!(d.buffered() <= (1 << 20) + piece.len());
    }
    assert_eq!(err, Some(DecodeError::LineTooLong { limit: 1 << 20 }));
}

#[test]
fn dsync_garbage_first_line_and_wrong_major_are_refused() {
    let mut d = Decoder::new(DOptions::default());
    d.feed(b"HELLO\n");
    assert_eq!(d.next(), Err(DecodeError::BadVersionLine));
    let mut d = Decoder::new(DOptions::default());
    d.feed(b"VERSION\tdsync\t4294967295\t5\n");
    assert!(matches!(
        d.next(),
        Err(DecodeError::UnsupportedVersion { .. }) | Err(DecodeError::BadVersionLine)
    ));
    let mut d = Decoder::new(DOptions::default());
    d.feed(b"VERSION\tdsync\t99999999999999999999\t5\n");
    assert!(d.next().is_err());
}

#[test]
fn sasl_response_of_a_megabyte_is_refused_before_decoding() {
    let opts = proto::sasl::Options::default();
    let huge = "A".repeat(1 << 20);
    assert_eq!(
        proto::sasl::decode_response(huge.as_bytes(), &opts),
        Err(proto::sasl::SaslError::TooLong { bytes_max: 8192 })
    );
    assert!(proto::sasl::decode_initial(b"!!!!", &opts).is_err());
    assert!(proto::sasl::Server::start_named("PLAIN", Some(b"\0\0\0"), opts.clone()).is_err());
    assert!(proto::sasl::Server::start_named("GSSAPI", None, opts).is_err());
}

/// Runs the machine targets on hostile sessions: the target bodies check
/// no-stall, no-silence and store consistency; here we also look at the
/// replies.
mod machines {
    fn mupdate(session: &[u8]) {
        let mut data = vec![0u8];
        data.extend_from_slice(session);
        fuzz::machines::mupdate_server(&data);
    }

    fn csync(session: &[u8]) {
        let mut data = vec![0u8];
        data.extend_from_slice(session);
        fuzz::machines::csync_server(&data);
    }

    const MUP_LOGIN: &[u8] =
        b"A01 AUTHENTICATE \"PLAIN\" {36+}\r\nAG11cGRhdGVhZG1pbgBtdXBkYXRlcGFzcw==\r\n";
    const CSYNC_LOGIN: &[u8] = b"AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n";

    #[test]
    fn mupdate_server_survives_lying_literals_and_huge_lines() {
        let mut s = MUP_LOGIN.to_vec();
        s.extend_from_slice(b"A02 FIND {999999999999}\r\n");
        s.extend_from_slice(b"A03 FIND {4294967296+}\r\nxxxx\r\n");
        s.extend_from_slice(format!("A04 {}\r\n", "Z".repeat(1 << 20)).as_bytes());
        s.extend_from_slice(b"A05 DELETE \"never.existed\"\r\nA06 NOOP\r\n");
        mupdate(&s);
    }

    #[test]
    fn csync_server_survives_nesting_lying_files_and_nul() {
        let mut s = CSYNC_LOGIN.to_vec();
        s.extend_from_slice(format!("APPLY MAILBOX {}\r\n", "(".repeat(1 << 20)).as_bytes());
        s.extend_from_slice(
            format!(
                "APPLY MESSAGE (%{{default {} 99999999999}}\r\nshort)\r\n",
                super::GUID
            )
            .as_bytes(),
        );
        s.extend_from_slice(b"GET USER \0alice\r\nAPPLY RESERVE {5+}\r\n\0\0\0\0\0\r\nNOOP\r\n");
        let handle = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || csync(&s))
            .expect("spawn");
        handle.join().expect("no panic, no stack overflow");
    }
}
