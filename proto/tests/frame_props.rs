//! Properties and edge cases of `proto::frame::Framer`.

use bytes::Bytes;
use proptest::prelude::*;
use proto::frame::{
    Event, FrameError, Framer, LiteralKind, Options, Oversize, RefusalReason, SyncLiterals,
};

/// Feeds `input` in the given chunk sizes, polling until need-more after
/// each chunk, and merges consecutive literal chunks so that different
/// chunkings compare equal.
fn run(opts: &Options, input: &[u8], cuts: &[usize]) -> (Vec<Event>, Result<(), FrameError>) {
    let mut f = Framer::new(opts.clone());
    let mut events = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().copied().cycle();
    while at < input.len() {
        let n = cuts
            .next()
            .unwrap_or(input.len())
            .max(1)
            .min(input.len() - at);
        f.handle_input(&input[at..at + n]);
        at += n;
        loop {
            match f.poll_event() {
                Ok(Some(e)) => push_merged(&mut events, e),
                Ok(None) => break,
                Err(e) => return (events, Err(e)),
            }
        }
    }
    (events, f.handle_eof())
}

fn push_merged(events: &mut Vec<Event>, e: Event) {
    if let Event::LiteralChunk(c) = &e {
        if let Some(Event::LiteralChunk(prev)) = events.last_mut() {
            let mut v = prev.to_vec();
            v.extend_from_slice(c);
            *prev = Bytes::from(v);
            return;
        }
    }
    events.push(e);
}

fn messages(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text().to_vec()),
            _ => None,
        })
        .collect()
}

/// A generator of valid csync-ish streams: lines with atoms, inline
/// literals, big (streamed) literals and file literals.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[A-Za-z0-9 ()%\\\\]{0,20}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|body| {
            let mut v = format!("{{{}+}}\r\n", body.len()).into_bytes();
            v.extend_from_slice(&body);
            v
        }),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|body| {
            let mut v = format!(
                "%{{default 0123456789abcdef0123456789abcdef01234567 {}}}\r\n",
                body.len()
            )
            .into_bytes();
            v.extend_from_slice(&body);
            v
        }),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::collection::vec(piece(), 0..5), 1..6).prop_map(|lines| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(b"CMD ");
            for p in line {
                out.extend_from_slice(&p);
                out.push(b' ');
            }
            out.extend_from_slice(b"x\r\n");
        }
        out
    })
}

fn small_opts() -> Options {
    Options {
        inline_literal_bytes_max: 16,
        chunk_bytes_max: 7,
        ..Options::csync()
    }
}

proptest! {
    #[test]
    fn any_chunking_frames_identically(input in stream(), cuts in proptest::collection::vec(1usize..50, 1..10)) {
        let opts = small_opts();
        let (whole, end1) = run(&opts, &input, &[input.len()]);
        let (chunked, end2) = run(&opts, &input, &cuts);
        prop_assert_eq!(end1, Ok(()));
        prop_assert_eq!(end2, Ok(()));
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn every_strict_prefix_needs_more(input in stream()) {
        let opts = small_opts();
        for cut in 0..input.len() {
            let mut f = Framer::new(opts.clone());
            f.handle_input(&input[..cut]);
            loop {
                match f.poll_event() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => prop_assert!(false, "prefix {} gave error {:?}", cut, e),
                }
            }
        }
    }

    #[test]
    fn inline_messages_rebuild_the_wire(input in stream()) {
        // With everything inline, the messages' wire forms concatenate to the input.
        let opts = Options { inline_literal_bytes_max: 1 << 20, ..Options::csync() };
        let (events, end) = run(&opts, &input, &[13]);
        prop_assert_eq!(end, Ok(()));
        let mut rebuilt = Vec::new();
        for e in &events {
            match e {
                Event::Message(m) => {
                    if let Some(w) = m.to_wire() { rebuilt.extend_from_slice(&w) } else {
                        // File literals are always streamed; rebuild from the events instead.
                        rebuilt.clear();
                        break;
                    }
                }
                Event::LiteralStart(_) | Event::LiteralChunk(_) | Event::LiteralEnd => {}
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        if !rebuilt.is_empty() {
            prop_assert_eq!(rebuilt, input);
        }
    }
}

#[test]
fn streamed_file_literal_events() {
    let mut input =
        b"APPLY MESSAGE (%{default 0123456789abcdef0123456789abcdef01234567 19}\r\n".to_vec();
    input.extend_from_slice(b"EXIT\r\nNOOP\r\nAPPLY x");
    input.extend_from_slice(b")\r\nNOOP\r\n");
    let (events, end) = run(&small_opts(), &input, &[5]);
    assert_eq!(end, Ok(()));
    match &events[0] {
        Event::LiteralStart(h) => {
            assert_eq!(h.len, 19);
            assert!(
                matches!(&h.kind, LiteralKind::File { partition, .. } if &partition[..] == b"default")
            );
        }
        other => panic!("{other:?}"),
    }
    // The literal bytes look like commands but are delivered as data.
    assert_eq!(
        events[1],
        Event::LiteralChunk(Bytes::from_static(b"EXIT\r\nNOOP\r\nAPPLY x"))
    );
    assert_eq!(events[2], Event::LiteralEnd);
    assert_eq!(
        messages(&events),
        vec![
            b"APPLY MESSAGE (%{default 0123456789abcdef0123456789abcdef01234567 19})".to_vec(),
            b"NOOP".to_vec()
        ]
    );
    let Event::Message(m) = &events[3] else {
        panic!()
    };
    assert_eq!(m.literals().len(), 1);
    assert!(m.literals()[0].body.is_none());
}

#[test]
fn over_long_line_is_refused_and_next_line_decodes() {
    let opts = Options {
        line_bytes_max: 32,
        ..Options::csync()
    };
    let mut input = Vec::new();
    input.extend_from_slice(b"A1 ");
    input.extend_from_slice(&[b'x'; 100]);
    // The refused line announces a literal whose bytes look like a command.
    input.extend_from_slice(b" {12+}\r\nNOOP\r\nEXIT\r\n tail\r\nNOOP\r\n");
    for cut in [1usize, 3, 7, 1000] {
        let (events, end) = run(&opts, &input, &[cut]);
        assert_eq!(end, Ok(()));
        assert_eq!(events.len(), 2, "cut {cut}: {events:?}");
        match &events[0] {
            Event::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::LineTooLong);
                assert!(r.head.starts_with(b"A1 xxx"));
                assert!(r.head.len() <= 32 + 110);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            events[1],
            Event::Message(proto::frame::Message::new(
                Bytes::from_static(b"NOOP"),
                vec![]
            ))
        );
    }
}

#[test]
fn oversize_literal_is_discarded_or_fatal() {
    let mut input = b"APPLY X {100+}\r\n".to_vec();
    input.extend_from_slice(&[b'Z'; 100]);
    input.extend_from_slice(b" more\r\nNOOP\r\n");
    let discard = Options {
        literal_bytes_max: 50,
        ..Options::csync()
    };
    let (events, end) = run(&discard, &input, &[9]);
    assert_eq!(end, Ok(()));
    assert!(matches!(&events[0], Event::Refused(r) if r.reason == RefusalReason::LiteralTooLarge));
    assert_eq!(messages(&events), vec![b"NOOP".to_vec()]);

    let fatal = Options {
        oversize: Oversize::Fatal,
        ..discard
    };
    let (_, end) = run(&fatal, &input, &[9]);
    assert_eq!(end, Err(FrameError::LiteralTooLarge { len: 100, max: 50 }));

    let (_, end) = run(
        &Options::csync(),
        b"X {123456789012345678901234567890+}\r\n",
        &[100],
    );
    assert_eq!(end, Err(FrameError::LiteralLengthOverflow));
}

#[test]
fn sync_literal_asks_for_continuation() {
    let opts = Options::default(); // AwaitContinuation
    let mut f = Framer::new(opts.clone());
    f.handle_input(b"F2 FIND {10}\r\n");
    assert_eq!(
        f.poll_event(),
        Ok(Some(Event::ContinuationNeeded { len: 10 }))
    );
    assert_eq!(f.poll_event(), Ok(None));
    f.handle_input(b"user.alice\r\n");
    let Ok(Some(Event::Message(m))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(m.to_wire().unwrap(), b"F2 FIND {10}\r\nuser.alice\r\n");
    assert_eq!(m.literals()[0].header.kind, LiteralKind::Sync);

    // The machine may reject it instead: no bytes follow, the next line is a command.
    let mut f = Framer::new(opts.clone());
    assert!(f.reject_literal().is_err());
    f.handle_input(b"F3 FIND {10}\r\n");
    assert_eq!(
        f.poll_event(),
        Ok(Some(Event::ContinuationNeeded { len: 10 }))
    );
    f.reject_literal().unwrap();
    let Ok(Some(Event::Refused(r))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(r.reason, RefusalReason::LiteralRejected);
    assert!(r.at_sync_literal);
    assert_eq!(&r.head[..], b"F3 FIND {10}");
    f.handle_input(b"N1 NOOP\r\n");
    let Ok(Some(Event::Message(m))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(m.text(), b"N1 NOOP");

    // Over the limit: refused at once, no continuation, nothing skipped.
    let mut f = Framer::new(opts);
    f.handle_input(b"F9 FIND {1000000}\r\nN1 NOOP\r\n");
    let Ok(Some(Event::Refused(r))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(r.reason, RefusalReason::LiteralTooLarge);
    assert!(r.at_sync_literal);
    let Ok(Some(Event::Message(m))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(m.text(), b"N1 NOOP");

    // In csync "client mode" {n} follows immediately.
    let opts = Options {
        sync_literals: SyncLiterals::FollowImmediately,
        ..Options::default()
    };
    let (events, _) = run(&opts, b"A {3}\r\nabc\r\n", &[100]);
    assert_eq!(messages(&events), vec![b"A {3}".to_vec()]);
}

#[test]
fn truncated_stream_is_reported_at_eof() {
    let mut f = Framer::new(Options::csync());
    f.handle_input(b"APPLY X {5+}\r\nab");
    while f.poll_event().unwrap().is_some() {}
    assert_eq!(f.handle_eof(), Err(FrameError::TruncatedMessage));
    let mut f = Framer::new(Options::csync());
    assert_eq!(f.handle_eof(), Ok(()));
}

#[test]
fn fifty_megabyte_file_literal_keeps_memory_bounded() {
    let opts = Options::csync();
    let feed = 16 * 1024;
    let total: u64 = 50 * 1024 * 1024;
    let mut f = Framer::new(opts.clone());
    f.handle_input(
        format!("APPLY MESSAGE (%{{default 0123456789abcdef0123456789abcdef01234567 {total}}}\r\n")
            .as_bytes(),
    );
    let block = vec![b'm'; feed];
    let mut sent = 0u64;
    let mut got = 0u64;
    let mut max_buffered = 0usize;
    while sent < total {
        let n = (total - sent).min(feed as u64) as usize;
        f.handle_input(&block[..n]);
        sent += n as u64;
        max_buffered = max_buffered.max(f.buffered_bytes());
        while let Some(e) = f.poll_event().unwrap() {
            match e {
                Event::LiteralChunk(c) => {
                    assert!(c.len() <= opts.chunk_bytes_max);
                    got += c.len() as u64;
                }
                Event::LiteralStart(_) => {}
                Event::LiteralEnd => assert_eq!(sent, total),
                other => panic!("{other:?}"),
            }
        }
        max_buffered = max_buffered.max(f.buffered_bytes());
    }
    f.handle_input(b")\r\n");
    assert!(matches!(f.poll_event().unwrap(), Some(Event::Message(_))));
    assert_eq!(got, total);
    // Never more than one input chunk plus the (short) message text.
    assert!(max_buffered <= feed + 200, "buffered {max_buffered}");
}

#[test]
fn oversize_discard_keeps_memory_bounded() {
    // A 50 MB literal over the limit is counted away without being kept.
    let opts = Options {
        file_literal_bytes_max: 1024,
        ..Options::csync()
    };
    let mut f = Framer::new(opts);
    f.handle_input(
        b"APPLY MESSAGE (%{default 0123456789abcdef0123456789abcdef01234567 52428800}\r\n",
    );
    let block = vec![0u8; 65536];
    let mut max_buffered = 0;
    for _ in 0..800 {
        f.handle_input(&block);
        assert_eq!(f.poll_event().unwrap(), None);
        max_buffered = max_buffered.max(f.buffered_bytes());
    }
    f.handle_input(b")\r\nNOOP\r\n");
    assert!(
        matches!(f.poll_event().unwrap(), Some(Event::Refused(r)) if r.reason == RefusalReason::FileLiteralTooLarge)
    );
    assert!(matches!(f.poll_event().unwrap(), Some(Event::Message(m)) if m.text() == b"NOOP"));
    assert!(max_buffered <= 65536 + 200);
}

#[test]
fn long_unterminated_line_memory_is_bounded() {
    let opts = Options {
        line_bytes_max: 4096,
        ..Options::csync()
    };
    let mut f = Framer::new(opts);
    let block = vec![b'a'; 10_000];
    for _ in 0..100 {
        f.handle_input(&block);
        assert_eq!(f.poll_event().unwrap(), None);
        assert!(f.buffered_bytes() <= 4096 + 1024 + 10_000);
    }
    f.handle_input(b"\r\nNOOP\r\n");
    assert!(matches!(f.poll_event().unwrap(), Some(Event::Refused(_))));
    assert!(matches!(f.poll_event().unwrap(), Some(Event::Message(m)) if m.text() == b"NOOP"));
}

#[test]
fn bare_lf_and_empty_lines() {
    let (events, end) = run(&Options::csync(), b"NOOP\n\r\nEXIT\r\n", &[1]);
    assert_eq!(end, Ok(()));
    assert_eq!(
        messages(&events),
        vec![b"NOOP".to_vec(), b"".to_vec(), b"EXIT".to_vec()]
    );
}

#[test]
fn file_literals_off_for_mupdate() {
    let opts = Options {
        sync_literals: SyncLiterals::FollowImmediately,
        ..Options::default()
    };
    let (events, _) = run(&opts, b"X %{default abc 3}\r\nabc\r\n", &[100]);
    assert_eq!(
        messages(&events),
        vec![b"X %{default abc 3}".to_vec(), b"abc".to_vec()]
    );
}

#[test]
fn announced_inline_literal_is_not_preallocated() {
    // A header alone must not make the framer reserve the announced size.
    let opts = Options::csync();
    let mut f = Framer::new(opts);
    f.handle_input(b"APPLY SIEVE %(CONTENT {60000000+}\r\nabc");
    while f.poll_event().unwrap().is_some() {}
    assert!(
        f.buffered_bytes() <= 64 * 1024 + 1024,
        "{}",
        f.buffered_bytes()
    );
}

#[test]
fn sync_literal_that_would_overflow_the_line_is_refused_before_continuation() {
    let opts = Options {
        line_bytes_max: 64,
        ..Options::default()
    };
    let mut f = Framer::new(opts);
    f.handle_input(b"A1 FIND {60}\r\nN1 NOOP\r\n");
    let Ok(Some(Event::Refused(r))) = f.poll_event() else {
        panic!()
    };
    assert_eq!(r.reason, RefusalReason::LineTooLong);
    assert!(r.at_sync_literal);
    assert!(matches!(f.poll_event(), Ok(Some(Event::Message(m))) if m.text() == b"N1 NOOP"));
}
