//! Target `dsync`: the dsync stream [`Decoder`] and [`Encoder`].
//!
//! Input: a selector byte (bit 0: small limits), then one direction of a
//! stream. Checks: no panic; the same events (body chunks merged) and the
//! same error under every chunking; buffered bytes bounded after every
//! drain; body chunks non-empty and at most `body_chunk_bytes_max`; an
//! error repeats forever. When the encoder accepts the decoded events, its
//! bytes decode to the same events again (decode→encode→decode).

use bytes::BytesMut;
use proto::dsync::{DecodeError, Decoder, EncodeOptions, Encoder, Event, Options};

use crate::util::{chunkings, push_merged, selector};

/// A decoder event with body chunks merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// Any event but `BodyChunk`.
    Event(Event),
    /// Consecutive `BodyChunk`s.
    Body(Vec<u8>),
    /// The error that closed the stream (at EOF or before).
    Fatal(DecodeError),
}

/// Limits by selector.
pub fn options(sel: u8) -> Options {
    if sel & 1 == 0 {
        Options::default()
    } else {
        Options {
            line_bytes_max: 96,
            body_chunk_bytes_max: 4,
            headers_max: 20,
        }
    }
}

/// Runs a decoder over `chunks`.
pub fn run(opts: Options, chunks: &[&[u8]]) -> Vec<Ev> {
    let mut d = Decoder::new(opts);
    let mut evs = Vec::new();
    for chunk in chunks {
        d.feed(chunk);
        loop {
            match d.next() {
                Ok(None) => break,
                Ok(Some(Event::BodyChunk(c))) => {
                    assert!(
                        !c.is_empty() && c.len() <= opts.body_chunk_bytes_max,
                        "body chunk size {}",
                        c.len()
                    );
                    push_merged(
                        &mut evs,
                        &c,
                        |e| match e {
                            Ev::Body(b) => Some(b),
                            _ => None,
                        },
                        Ev::Body,
                    );
                }
                Ok(Some(ev)) => evs.push(Ev::Event(ev)),
                Err(e) => {
                    d.feed(b"X\n");
                    assert_eq!(d.next(), Err(e.clone()), "an error must repeat");
                    evs.push(Ev::Fatal(e));
                    return evs;
                }
            }
        }
        let bound = chunk.len() + opts.line_bytes_max + 8;
        assert!(
            d.buffered() <= bound,
            "decoder holds {} bytes, bound {bound}",
            d.buffered()
        );
    }
    if let Err(e) = d.handle_eof() {
        evs.push(Ev::Fatal(e));
    }
    evs
}

/// Re-encodes merged events; `None` if the encoder refuses them.
fn encode(evs: &[Ev]) -> Option<Vec<u8>> {
    let mut enc = Encoder::new(EncodeOptions::default());
    let mut out = BytesMut::new();
    for ev in evs {
        let e = match ev {
            Ev::Event(e) => e.clone(),
            Ev::Body(b) => Event::BodyChunk(bytes::Bytes::copy_from_slice(b)),
            Ev::Fatal(_) => return None,
        };
        enc.encode(&e, &mut out).ok()?;
    }
    Some(out.to_vec())
}

/// The target body.
pub fn body(data: &[u8]) {
    let (sel, input) = selector(data);
    let opts = options(sel);
    let mut first: Option<Vec<Ev>> = None;
    for chunks in chunkings(input) {
        let got = run(opts, &chunks);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "events depend on chunking"),
        }
    }
    let evs = first.expect("one chunking at least");
    if let Some(wire) = encode(&evs) {
        let again = run(
            Options {
                line_bytes_max: usize::MAX / 2,
                ..opts
            },
            &[&wire],
        );
        assert_eq!(again, evs, "decode→encode→decode changed the stream");
    }
}
