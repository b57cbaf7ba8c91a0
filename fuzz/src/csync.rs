//! Target `csync`: the four csync decoders (dedicated protocol server and
//! client side, IMAP-flavour server and client side).
//!
//! Input: a selector byte (bits 0-1: which decoder; bit 2: small framer
//! limits; bit 3: expect a SASL response first / banner first), then the
//! stream. Checks: no panic; the same events and fatal error under every
//! chunking; file chunks merged compare equal; buffered bytes bounded after
//! every drain; a file's streamed bytes equal its announced size. Then the
//! same input as [`arbitrary::Unstructured`] builds valid lines of all four
//! kinds, which must encode and decode back to themselves (the oracle).

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use proto::csync::imap::{
    ImapClientDecoder, ImapClientLine, ImapCommand, ImapResponse, ImapServerDecoder,
};
use proto::csync::{
    ClientDecoder, ClientLine, Command, DecodeError, Event, Response, ServerDecoder,
};
use proto::dlist::FileRef;
use proto::frame::{self, LITERAL_HEADER_BYTES_MAX};

use crate::util::{chunkings, push_merged, selector};

/// A decoder event with file chunks merged, its payload as `Debug` text
/// (the four decoders have different line types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// `FileStart`.
    FileStart(FileRef),
    /// Consecutive `FileChunk`s.
    Bytes(Vec<u8>),
    /// `FileEnd`.
    FileEnd,
    /// `ContinuationNeeded`.
    Continuation(u64),
    /// `Decoded`.
    Decoded(String),
    /// `Refused`.
    Refused(String),
    /// Fatal.
    Fatal(DecodeError),
}

/// The common surface of the four decoders.
trait Dec {
    fn input(&mut self, b: &[u8]);
    fn poll(&mut self) -> Result<Option<Ev>, DecodeError>;
    fn eof(&mut self) -> Result<(), DecodeError>;
    fn buffered(&self) -> usize;
}

fn map<T: std::fmt::Debug, E: std::fmt::Debug>(ev: Event<T, E>) -> Ev {
    match ev {
        Event::FileStart(f) => Ev::FileStart(f),
        Event::FileChunk(c) => Ev::Bytes(c.to_vec()),
        Event::FileEnd => Ev::FileEnd,
        Event::ContinuationNeeded { len } => Ev::Continuation(len),
        Event::Decoded(t) => Ev::Decoded(format!("{t:?}")),
        Event::Refused(e) => Ev::Refused(format!("{e:?}")),
    }
}

macro_rules! dec {
    ($t:ty) => {
        impl Dec for $t {
            fn input(&mut self, b: &[u8]) {
                self.handle_input(b)
            }
            fn poll(&mut self) -> Result<Option<Ev>, DecodeError> {
                Ok(self.poll_event()?.map(map))
            }
            fn eof(&mut self) -> Result<(), DecodeError> {
                self.handle_eof()
            }
            fn buffered(&self) -> usize {
                self.buffered_bytes()
            }
        }
    };
}
dec!(ServerDecoder);
dec!(ClientDecoder);
dec!(ImapServerDecoder);
dec!(ImapClientDecoder);

fn frame_opts(small: bool) -> frame::Options {
    if small {
        frame::Options {
            line_bytes_max: 64,
            literal_bytes_max: 32,
            file_literal_bytes_max: 100,
            inline_literal_bytes_max: 32,
            chunk_bytes_max: 3,
            ..frame::Options::csync()
        }
    } else {
        frame::Options::csync()
    }
}

fn decoder(sel: u8) -> Box<dyn Dec> {
    let o = frame_opts(sel & 4 != 0);
    let first = sel & 8 != 0;
    match sel & 3 {
        0 => {
            let mut d = ServerDecoder::with_options(o).expect("valid options");
            if first {
                d.expect_sasl_response();
            }
            Box::new(d)
        }
        1 => {
            let mut d = ClientDecoder::with_options(o).expect("valid options");
            if first {
                d.expect_banner();
            }
            Box::new(d)
        }
        2 => {
            let mut d = ImapServerDecoder::with_options(o).expect("valid options");
            if first {
                d.expect_sasl_response();
            }
            Box::new(d)
        }
        _ => Box::new(ImapClientDecoder::with_options(o).expect("valid options")),
    }
}

/// Runs decoder `sel` over `chunks`: merged events, then the EOF result
/// (`None` after a fatal error).
pub fn run(sel: u8, chunks: &[&[u8]]) -> Vec<Ev> {
    let o = frame_opts(sel & 4 != 0);
    let mut d = decoder(sel);
    let mut evs: Vec<Ev> = Vec::new();
    let mut file_left: Option<u64> = None;
    for chunk in chunks {
        d.input(chunk);
        loop {
            match d.poll() {
                Ok(None) => break,
                Ok(Some(Ev::Bytes(b))) => {
                    assert!(
                        !b.is_empty() && b.len() <= o.chunk_bytes_max,
                        "file chunk size"
                    );
                    let left = file_left.as_mut().expect("FileChunk outside a file");
                    *left = left
                        .checked_sub(b.len() as u64)
                        .expect("more file bytes than announced");
                    push_merged(
                        &mut evs,
                        &b,
                        |e| match e {
                            Ev::Bytes(v) => Some(v),
                            _ => None,
                        },
                        Ev::Bytes,
                    );
                }
                Ok(Some(ev)) => {
                    match &ev {
                        Ev::FileStart(f) => {
                            assert!(file_left.is_none(), "FileStart inside a file");
                            assert!(f.size <= o.file_literal_bytes_max, "file over its limit");
                            file_left = Some(f.size);
                        }
                        Ev::FileEnd => {
                            assert_eq!(
                                file_left.take(),
                                Some(0),
                                "FileEnd before the announced size"
                            );
                        }
                        _ => {}
                    }
                    evs.push(ev);
                }
                Err(e) => {
                    assert_eq!(d.poll(), Err(e.clone()), "a fatal error must repeat");
                    evs.push(Ev::Fatal(e));
                    return evs;
                }
            }
        }
        let bound = chunk.len() + o.line_bytes_max + LITERAL_HEADER_BYTES_MAX;
        assert!(
            d.buffered() <= bound,
            "decoder holds {} bytes, bound {bound}",
            d.buffered()
        );
    }
    if let Err(e) = d.eof() {
        evs.push(Ev::Fatal(e));
    }
    evs
}

fn file_body(f: &FileRef) -> Bytes {
    Bytes::from(vec![b'\n'; f.size as usize])
}

fn decoded<T, E: std::fmt::Debug>(mut poll: impl FnMut() -> Option<Event<T, E>>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(ev) = poll() {
        match ev {
            Event::Decoded(t) => out.push(t),
            Event::Refused(e) => panic!("a valid line was refused: {e:?}"),
            _ => {}
        }
    }
    out
}

/// Encode→decode of valid lines built from `data`.
pub fn oracle(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(cmd) = Command::arbitrary(&mut u) {
        let mut d = ServerDecoder::new();
        d.handle_input(&cmd.encode().to_wire(file_body));
        assert_eq!(
            decoded(|| d.poll_event().unwrap()),
            vec![ClientLine::Command(cmd)]
        );
    }
    if let Ok(resp) = Response::arbitrary(&mut u) {
        let mut d = ClientDecoder::new();
        d.handle_input(b"* OK x\r\n");
        d.handle_input(&resp.encode().to_wire(file_body));
        let got = decoded(|| d.poll_event().unwrap());
        assert_eq!(&got[1..], &[resp][..]);
    }
    if let Ok(cmd) = ImapCommand::arbitrary(&mut u) {
        let mut d = ImapServerDecoder::new();
        d.handle_input(&cmd.encode().to_wire(file_body));
        assert_eq!(
            decoded(|| d.poll_event().unwrap()),
            vec![ImapClientLine::Command(cmd)]
        );
    }
    if let Ok(resp) = ImapResponse::arbitrary(&mut u) {
        let mut d = ImapClientDecoder::new();
        d.handle_input(&resp.encode().to_wire(file_body));
        assert_eq!(decoded(|| d.poll_event().unwrap()), vec![resp]);
    }
}

/// The target body.
pub fn body(data: &[u8]) {
    let (sel, input) = selector(data);
    let mut first: Option<Vec<Ev>> = None;
    for chunks in chunkings(input) {
        let got = run(sel, &chunks);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "events depend on chunking"),
        }
    }
    oracle(data);
}
