//! Target `compress`: the COMPRESS DEFLATE [`Inflater`] on arbitrary
//! bytes, and [`Deflater`]→[`Inflater`] as an oracle.
//!
//! Input: a selector byte (output chunk limit 1..=256 or the default), then
//! the compressed stream. Checks: no panic; no pull returns more than
//! `output_chunk_bytes_max`; whole / byte-by-byte / random splits give the
//! same output and agree on failing (a failing run's output is a prefix of
//! the others'); total output is capped at [`OUTPUT_BYTES_CAP`] so a bomb
//! costs bounded time — the pulls themselves stay chunk-sized. Then the
//! input as plain data, written through a [`Deflater`] in random flushes,
//! must inflate back to itself under every chunking.

use proto::compress::{Deflater, InflateOptions, Inflater};

use crate::util::{chunkings, selector, Rng};

/// Stop pulling after this much output: a bomb is fine as long as each
/// pull is bounded; decompressing all of it would only cost time.
pub const OUTPUT_BYTES_CAP: usize = 8 << 20;

fn options(sel: u8) -> InflateOptions {
    InflateOptions {
        output_chunk_bytes_max: if sel == 0 {
            64 * 1024
        } else {
            usize::from(sel)
        },
        input_buffer_bytes_max: 1 << 20,
    }
}

/// Inflates `chunks`; returns the output and whether it failed.
pub fn run(opts: InflateOptions, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut inf = Inflater::new(opts);
    let mut out = Vec::new();
    for chunk in chunks {
        if inf.feed(chunk).is_err() {
            return (out, true);
        }
        loop {
            match inf.pull() {
                Ok(Some(b)) => {
                    assert!(!b.is_empty(), "empty pull");
                    assert!(
                        b.len() <= opts.output_chunk_bytes_max,
                        "pull over the chunk limit"
                    );
                    out.extend_from_slice(&b);
                    if out.len() > OUTPUT_BYTES_CAP {
                        return (out, false);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(inf.pull().is_err(), "a corrupt stream must stay corrupt");
                    return (out, true);
                }
            }
        }
    }
    assert_eq!(inf.total_out(), out.len() as u64);
    (out, false)
}

/// The target body.
pub fn body(data: &[u8]) {
    let (sel, input) = selector(data);
    let opts = options(sel);
    let runs: Vec<(Vec<u8>, bool)> = chunkings(input).iter().map(|c| run(opts, c)).collect();
    // Whole input over the input buffer limit fails where pieces do not.
    let capped = runs.iter().any(|(o, _)| o.len() > OUTPUT_BYTES_CAP)
        || input.len() > opts.input_buffer_bytes_max;
    if !capped {
        let (o0, e0) = &runs[0];
        for (o, e) in &runs[1..] {
            assert_eq!(e0, e, "failure depends on chunking");
            if !*e0 {
                assert!(o0 == o, "output depends on chunking");
            } else {
                let n = o0.len().min(o.len());
                assert_eq!(o0[..n], o[..n], "outputs before the failure disagree");
            }
        }
    }
    // Oracle: our own deflate stream, flushed at random points.
    let mut rng = Rng::from_data(data);
    let mut d = Deflater::new();
    let mut wire = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = rng.below_incl(512).min(data.len() - at);
        d.write(&data[at..at + n]).expect("deflate");
        at += n;
        if rng.next_u64() % 3 == 0 {
            wire.extend_from_slice(&d.flush().expect("flush"));
        }
    }
    wire.extend_from_slice(&d.flush().expect("flush"));
    for chunks in chunkings(&wire) {
        let (out, failed) = run(opts, &chunks);
        assert!(!failed, "our own deflate stream failed to inflate");
        assert!(out == data, "deflate→inflate changed the data");
    }
}
