//! COMPRESS DEFLATE layer against zlib's real raw-deflate output (vectors
//! made with CPython's zlib, see `compress_vectors/README.md`), plus round
//! trips under arbitrary chunking.

use proptest::prelude::*;
use proto::compress::{CompressError, Deflater, InflateOptions, Inflater};

/// Two sync-flushed IMAP responses, from
/// `zlib.compressobj(6, zlib.DEFLATED, -15)`, each followed by `Z_SYNC_FLUSH`.
const GREETING_PLAIN: &[&[u8]] = &[
    b"* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] ready\r\n",
    b"a1 OK done\r\n",
];
const GREETING_ZLIB_HEX: &str = "d252f0f7568876760c7074f2f4f10c8954f0f4750c30294a2d335470f6f70d08720d0eb6757175f3710c718d55284a4d4ca9e4e502000000ffff4a3404694ac9cf4be5e502000000ffff";
/// `compressobj(6, DEFLATED, -15)`: "hello hello hello" then `flush()` (Z_FINISH).
const FINAL_BLOCK_HEX: &str = "cb48cdc9c957c8409000";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/compress_vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn inflate_all(
    inf: &mut Inflater,
    data: &[u8],
    feed_chunk: usize,
) -> Result<Vec<u8>, CompressError> {
    let mut out = Vec::new();
    for piece in data.chunks(feed_chunk.max(1)) {
        inf.feed(piece)?;
        while let Some(chunk) = inf.pull()? {
            out.extend_from_slice(&chunk);
        }
    }
    Ok(out)
}

fn expected_lines() -> Vec<u8> {
    (0..2000)
        .flat_map(|i| {
            format!("line {i:05} of the repeated test text for compression\r\n").into_bytes()
        })
        .collect()
}

#[test]
fn inflates_zlib_sync_flushed_responses_at_each_flush_point() {
    let wire = unhex(GREETING_ZLIB_HEX);
    // The first flush point ends right after the first 00 00 ff ff.
    let first_end = wire
        .windows(4)
        .position(|w| w == [0, 0, 0xff, 0xff])
        .unwrap()
        + 4;
    let mut inf = Inflater::default();
    inf.feed(&wire[..first_end]).unwrap();
    let mut got = Vec::new();
    while let Some(c) = inf.pull().unwrap() {
        got.extend_from_slice(&c);
    }
    // Everything up to a sync flush is available without further input.
    assert_eq!(got, GREETING_PLAIN[0]);
    inf.feed(&wire[first_end..]).unwrap();
    while let Some(c) = inf.pull().unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, [GREETING_PLAIN[0], GREETING_PLAIN[1]].concat());
    assert!(!inf.is_finished());
}

#[test]
fn inflates_zlib_level9_vector_under_any_feed_size() {
    let wire = vector("lines-level9-syncflush.deflate");
    for feed in [1, 2, 7, 100, 4096, wire.len()] {
        let mut inf = Inflater::default();
        assert_eq!(
            inflate_all(&mut inf, &wire, feed).unwrap(),
            expected_lines(),
            "feed {feed}"
        );
    }
}

#[test]
fn final_block_then_trailing_bytes_is_an_error() {
    let mut inf = Inflater::default();
    let out = inflate_all(&mut inf, &unhex(FINAL_BLOCK_HEX), 3).unwrap();
    assert_eq!(out, b"hello hello hello");
    assert!(inf.is_finished());
    assert_eq!(inf.feed(b"x"), Err(CompressError::TrailingData(1)));
    // poisoned: stays failed
    assert!(inf.pull().is_err());
}

#[test]
fn bomb_is_handed_out_in_bounded_chunks() {
    let wire = vector("zeros-10MiB-level9.deflate");
    let opts = InflateOptions {
        output_chunk_bytes_max: 32 * 1024,
        ..InflateOptions::default()
    };
    let mut inf = Inflater::new(opts);
    inf.feed(&wire).unwrap();
    let mut total = 0usize;
    let mut pulls = 0usize;
    while let Some(c) = inf.pull().unwrap() {
        assert!(c.len() <= 32 * 1024);
        assert!(c.iter().all(|&b| b == 0));
        total += c.len();
        pulls += 1;
    }
    assert_eq!(total, 10 * 1024 * 1024);
    assert!(pulls >= 320);
}

#[test]
fn corrupt_stream_is_a_typed_error_and_sticks() {
    // 0xff starts a block with BTYPE=11 (reserved): invalid in RFC 1951.
    let mut inf = Inflater::default();
    inf.feed(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    let e = inf.pull().unwrap_err();
    assert!(matches!(e, CompressError::Corrupt(_)), "{e:?}");
    assert!(matches!(inf.feed(b"more"), Err(CompressError::Corrupt(_))));
}

#[test]
fn zlib_wrapped_stream_is_refused() {
    // A zlib header (78 9c) is not raw deflate: 0x78 has BTYPE=00 stored
    // with a LEN/NLEN mismatch.
    let mut inf = Inflater::default();
    inf.feed(&[0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
        .unwrap();
    assert!(matches!(inf.pull(), Err(CompressError::Corrupt(_))));
}

#[test]
fn input_buffer_limit() {
    let mut inf = Inflater::new(InflateOptions {
        input_buffer_bytes_max: 10,
        ..Default::default()
    });
    inf.feed(&[0; 6]).unwrap();
    assert_eq!(
        inf.feed(&[0; 6]),
        Err(CompressError::InputBufferFull { limit: 10 })
    );
}

#[test]
fn deflater_output_is_raw_deflate_zlib_understands() {
    // zlib itself is the judge when python3 is around (CI has it); our
    // inflater, checked against zlib's vectors above, judges too.
    let mut d = Deflater::new();
    d.write(GREETING_PLAIN[0]).unwrap();
    let a = d.flush().unwrap();
    assert_eq!(&a[a.len() - 4..], &[0, 0, 0xff, 0xff], "sync flush marker");
    d.write(GREETING_PLAIN[1]).unwrap();
    let b = d.flush().unwrap();
    let wire = [a.as_ref(), b.as_ref()].concat();
    let mut inf = Inflater::default();
    assert_eq!(
        inflate_all(&mut inf, &wire, 5).unwrap(),
        GREETING_PLAIN.concat()
    );
    if let Ok(out) = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import zlib,sys; d=zlib.decompressobj(-15); sys.stdout.buffer.write(d.decompress(bytes.fromhex('{}')))",
            hex::encode(&wire)
        ))
        .output()
    {
        if out.status.success() {
            assert_eq!(out.stdout, GREETING_PLAIN.concat());
        }
    }
    // (Not byte-identical to zlib: miniz_oxide may choose a stored block
    // where zlib chooses fixed Huffman; both are valid raw deflate.)
}

#[test]
fn empty_flush_is_just_the_marker() {
    let mut d = Deflater::new();
    let f = d.flush().unwrap();
    assert!(f.ends_with(&[0, 0, 0xff, 0xff]), "{f:?}");
    let mut inf = Inflater::default();
    inf.feed(&f).unwrap();
    assert_eq!(inf.pull().unwrap(), None);
}

proptest! {
    #[test]
    fn round_trip_under_any_chunking(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..8),
        feed in 1usize..600,
        out_max in 1usize..5000,
        level in 0u32..10,
    ) {
        let mut d = Deflater::with_level(level);
        let mut inf = Inflater::new(InflateOptions { output_chunk_bytes_max: out_max, ..Default::default() });
        let mut got = Vec::new();
        for m in &msgs {
            // write in two halves to exercise internal buffering
            let (x, y) = m.split_at(m.len() / 2);
            d.write(x).unwrap();
            d.write(y).unwrap();
            let wire = d.flush().unwrap();
            let before = got.len();
            for piece in wire.chunks(feed) {
                inf.feed(piece).unwrap();
                while let Some(c) = inf.pull().unwrap() {
                    prop_assert!(c.len() <= out_max);
                    got.extend_from_slice(&c);
                }
            }
            // after each flush point, the whole message is out
            prop_assert_eq!(&got[before..], &m[..]);
        }
    }
}
