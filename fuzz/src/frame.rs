//! Target `frame`: [`proto::frame::Framer`] on arbitrary bytes.
//!
//! Input: one selector byte (which limits and dialect, see
//! [`options`]), then the stream. Checks: no panic; the same events and
//! the same fatal error under every chunking ([`crate::util::chunkings`]);
//! buffered bytes within the documented bound after every drain; streamed
//! chunks non-empty and at most `chunk_bytes_max`; a message's text within
//! `line_bytes_max`; a fatal error repeats forever; and every message whose
//! literals are inline re-frames from [`Message::to_wire`] to itself.

use proto::frame::{
    Event, FrameError, Framer, LiteralHeader, Message, Options, Oversize, Refusal, SyncLiterals,
    LITERAL_HEADER_BYTES_MAX,
};

use crate::util::{chunkings, push_merged, selector};

/// A framer event with streamed chunks merged (chunk boundaries depend on
/// how the input arrived; the bytes must not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// `ContinuationNeeded`.
    Continuation(u64),
    /// `LiteralStart`.
    Start(LiteralHeader),
    /// Consecutive `LiteralChunk`s.
    Bytes(Vec<u8>),
    /// `LiteralEnd`.
    End,
    /// `Message`.
    Message(Message),
    /// `Refused`.
    Refused(Refusal),
    /// A fatal error (the last event).
    Fatal(FrameError),
}

/// Options chosen by the selector: bits 0-1 pick a base (csync, MUPDATE
/// server, MUPDATE client, tiny limits), bit 2 flips `Oversize`, bit 3
/// rejects every synchronising literal.
pub fn options(sel: u8) -> Options {
    let mut o = match sel & 3 {
        0 => Options::csync(),
        1 => proto::mupdate::server_frame_options(),
        2 => proto::mupdate::client_frame_options(),
        _ => Options {
            line_bytes_max: 48,
            literal_bytes_max: 40,
            file_literal_bytes_max: 60,
            inline_literal_bytes_max: 8,
            chunk_bytes_max: 5,
            file_literals: true,
            sync_literals: if sel & 16 == 0 {
                SyncLiterals::AwaitContinuation
            } else {
                SyncLiterals::FollowImmediately
            },
            oversize: Oversize::Discard,
        },
    };
    if sel & 4 != 0 {
        o.oversize = match o.oversize {
            Oversize::Discard => Oversize::Fatal,
            Oversize::Fatal => Oversize::Discard,
        };
    }
    o
}

/// Runs one framer over `chunks`, checking the per-step invariants;
/// returns the merged events and the `handle_eof` result (if no fatal
/// error came first).
pub fn run(
    opts: &Options,
    chunks: &[&[u8]],
    reject_sync: bool,
) -> (Vec<Ev>, Option<Result<(), FrameError>>) {
    let mut f = Framer::new(opts.clone());
    let mut evs = Vec::new();
    for chunk in chunks {
        f.handle_input(chunk);
        loop {
            match f.poll_event() {
                Ok(None) => break,
                Ok(Some(ev)) => match ev {
                    Event::ContinuationNeeded { len } => {
                        assert!(
                            len <= opts.literal_bytes_max,
                            "accepted an over-limit literal"
                        );
                        evs.push(Ev::Continuation(len));
                        if reject_sync {
                            f.reject_literal()
                                .expect("reject right after ContinuationNeeded");
                        }
                    }
                    Event::LiteralStart(h) => evs.push(Ev::Start(h)),
                    Event::LiteralChunk(c) => {
                        assert!(!c.is_empty(), "empty literal chunk");
                        assert!(
                            c.len() <= opts.chunk_bytes_max,
                            "chunk over chunk_bytes_max"
                        );
                        push_merged(
                            &mut evs,
                            &c,
                            |e| match e {
                                Ev::Bytes(b) => Some(b),
                                _ => None,
                            },
                            Ev::Bytes,
                        );
                    }
                    Event::LiteralEnd => evs.push(Ev::End),
                    Event::Message(m) => {
                        let inline: usize = m
                            .literals()
                            .iter()
                            .filter_map(|l| l.body.as_ref().map(|b| b.len()))
                            .sum();
                        assert!(
                            m.text().len() + inline <= opts.line_bytes_max,
                            "message over line_bytes_max"
                        );
                        evs.push(Ev::Message(m));
                    }
                    Event::Refused(r) => {
                        assert!(r.head.len() <= proto::frame::REFUSAL_HEAD_BYTES_MAX);
                        evs.push(Ev::Refused(r));
                    }
                },
                Err(e) => {
                    // Closed for good: the same error again, input ignored.
                    f.handle_input(b"NOOP\r\n");
                    assert_eq!(f.poll_event(), Err(e.clone()), "a fatal error must repeat");
                    assert_eq!(f.handle_eof(), Err(e.clone()));
                    evs.push(Ev::Fatal(e));
                    return (evs, None);
                }
            }
        }
        let bound = chunk.len() + opts.line_bytes_max + LITERAL_HEADER_BYTES_MAX;
        assert!(
            f.buffered_bytes() <= bound,
            "framer holds {} bytes, bound {bound}",
            f.buffered_bytes()
        );
    }
    (evs, Some(f.handle_eof()))
}

/// Frames `m.to_wire()` again and expects exactly `m` back.
fn reframes(opts: &Options, m: &Message) {
    let Some(wire) = m.to_wire() else { return };
    let mut f = Framer::new(opts.clone());
    f.handle_input(&wire);
    let mut got = Vec::new();
    while let Some(ev) = f.poll_event().expect("re-framing a framed message") {
        match ev {
            Event::ContinuationNeeded { .. } => {}
            Event::Message(m2) => got.push(m2),
            other => panic!("re-framing gave {other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![m.clone()],
        "to_wire does not re-frame to the same message"
    );
    assert_eq!(f.handle_eof(), Ok(()));
}

/// The target body.
pub fn body(data: &[u8]) {
    let (sel, input) = selector(data);
    let opts = options(sel);
    let reject_sync = sel & 8 != 0;
    let mut first: Option<(Vec<Ev>, Option<Result<(), FrameError>>)> = None;
    for chunks in chunkings(input) {
        let got = run(&opts, &chunks, reject_sync);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "events depend on chunking"),
        }
    }
    if !reject_sync {
        for ev in &first.expect("at least one chunking").0 {
            if let Ev::Message(m) = ev {
                reframes(&opts, m);
            }
        }
    }
}
