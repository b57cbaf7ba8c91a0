//! Target `capture`: `io_tokio::capture::decode_transcript`, the reader of
//! the `.txt` capture format, on arbitrary text.
//!
//! Checks: no panic; each decoded stream is at most two bytes (a CRLF) per
//! input byte, since every record is at least `D: ` plus its escapes.

use io_tokio::capture::decode_transcript;

/// The target body.
pub fn body(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok((c2s, s2c)) = decode_transcript(&text) {
        assert!(
            c2s.len() + s2c.len() <= text.len() + 2,
            "decoded more bytes than a transcript can hold"
        );
    }
}
