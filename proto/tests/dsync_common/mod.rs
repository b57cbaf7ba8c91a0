//! Helpers shared by the dsync integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use proto::dsync::{DecodeError, Decoder, EncodeOptions, Encoder, Event, Options};

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/traces/dsync")
}

/// Every capture directory (`<scenario>/capN`, `live-*/capN`), sorted.
pub fn captures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut scen: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    scen.sort();
    for s in scen.into_iter().filter(|p| p.is_dir()) {
        let mut caps: Vec<_> = std::fs::read_dir(&s)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("m2s.raw").exists())
            .collect();
        caps.sort_by_key(|p| {
            let n = p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("cap")
                .parse::<u32>()
                .unwrap_or(0);
            n
        });
        out.extend(caps);
    }
    out
}

/// Decode `data` fed in pieces of `chunk` bytes; returns events and the
/// first error (if any).
pub fn decode_chunked(
    data: &[u8],
    chunk: usize,
    opts: Options,
) -> (Vec<Event>, Option<DecodeError>) {
    let mut d = Decoder::new(opts);
    let mut events = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        d.feed(piece);
        loop {
            match d.next() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

/// Decode a whole stream and require a clean end.
pub fn decode_all(data: &[u8]) -> Vec<Event> {
    let mut d = Decoder::new(Options::default());
    d.feed(data);
    let mut events = Vec::new();
    while let Some(ev) = d.next().unwrap() {
        events.push(ev);
    }
    d.handle_eof().unwrap();
    events
}

/// Merge adjacent body chunks, so streams decoded under different
/// chunkings compare equal.
pub fn merge_bodies(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        if let (Event::BodyChunk(b), Some(Event::BodyChunk(prev))) = (&ev, out.last_mut()) {
            let mut m = BytesMut::from(prev.as_ref());
            m.extend_from_slice(b);
            *prev = m.freeze();
            continue;
        }
        out.push(ev);
    }
    out
}

/// Re-encode events; `stuff_leading_dot: false` copies Dovecot exactly.
pub fn encode_all(events: &[Event]) -> Vec<u8> {
    let mut enc = Encoder::new(EncodeOptions {
        stuff_leading_dot: false,
    });
    let mut out = BytesMut::new();
    for ev in events {
        enc.encode(ev, &mut out)
            .unwrap_or_else(|e| panic!("encoding {ev:?}: {e}"));
    }
    out.to_vec()
}

/// One line per event, bodies shown as length + a short lossy prefix.
pub fn render(events: &[Event]) -> String {
    let mut s = String::new();
    for ev in merge_bodies(events.to_vec()) {
        match ev {
            Event::BodyChunk(b) => {
                let head = String::from_utf8_lossy(&b[..b.len().min(48)])
                    .replace('\n', "\\n")
                    .replace('\r', "\\r");
                s.push_str(&format!("BodyChunk({} bytes: {head:?}...)\n", b.len()));
            }
            Event::Header(h) => s.push_str(&format!(
                "Header {} [{}]\n",
                h.chr as char,
                h.keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            other => s.push_str(&format!("{other:?}\n")),
        }
    }
    s
}
