//! Dot-stuffing of the message and attribute bodies that follow an `M` or
//! `A` record whose `stream` field is set.
//!
//! On the wire a body is its raw bytes with a `.` doubled wherever it starts
//! a line, then `\r\n.\r\n`. Dovecot's reader (`istream-dot.c`, created
//! without "send last LF") starts in beginning-of-line state, drops one dot
//! at the start of any line, and ends the body at a line that is just `.`
//! (LF or CRLF terminated); the line break before that `.` line is not part
//! of the body. Dovecot's *writer* does not stuff a dot at offset 0 (a body
//! starting with `.` is then damaged by its own reader); [`DotEncoder`] does
//! stuff it unless asked to copy that quirk, which Dovecot reads correctly.
//!
//! Both halves keep at most a few bytes of state, so bodies of any size pass
//! through in bounded memory.

/// The line break seen just before a possible `.` line, not yet emitted
/// because it belongs to the body only if the line is not the terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Start of the body: nothing held.
    Nothing,
    Lf,
    CrLf,
}

impl Held {
    fn bytes(self) -> &'static [u8] {
        match self {
            Held::Nothing => b"",
            Held::Lf => b"\n",
            Held::CrLf => b"\r\n",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a line.
    Text,
    /// A CR was seen (held back: it may start CRLF).
    Cr,
    /// At the start of a line.
    LineStart(Held),
    /// `.` at the start of a line.
    Dot(Held),
    /// `.` CR at the start of a line.
    DotCr(Held),
}

/// Incremental dot-decoder for one body.
#[derive(Debug, Clone)]
pub(crate) struct DotDecoder {
    state: State,
}

impl DotDecoder {
    pub(crate) fn new() -> Self {
        Self {
            state: State::LineStart(Held::Nothing),
        }
    }

    /// Decode from `input` into `out` until `out` holds `out_max - 4` or
    /// more bytes (one input byte emits at most 3), the input runs out, or the
    /// terminator is found. Returns (bytes of input consumed, terminator
    /// found).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        out_max: usize,
    ) -> (usize, bool) {
        let max = out_max.max(4);
        let mut i = 0;
        while i < input.len() && out.len() + 4 <= max {
            if self.state == State::Text {
                // Fast path: copy plain text up to the next CR/LF in one go,
                // leaving room for the 3 bytes one state step may emit.
                let end = input.len().min(i + (max - 3 - out.len()));
                let run = input[i..end]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(end - i);
                if run > 0 {
                    out.extend_from_slice(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b, out) {
                return (i, true);
            }
        }
        (i, false)
    }

    /// Feed one byte; true when it completed the terminator.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        loop {
            match self.state {
                State::Text => {
                    match b {
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.state = State::LineStart(Held::Lf),
                        _ => out.push(b),
                    }
                    return false;
                }
                State::Cr => {
                    if b == b'\n' {
                        self.state = State::LineStart(Held::CrLf);
                        return false;
                    }
                    out.push(b'\r');
                    self.state = State::Text;
                }
                State::LineStart(h) => {
                    if b == b'.' {
                        self.state = State::Dot(h);
                        return false;
                    }
                    out.extend_from_slice(h.bytes());
                    self.state = State::Text;
                }
                State::Dot(h) => match b {
                    b'\n' => return true,
                    b'\r' => {
                        self.state = State::DotCr(h);
                        return false;
                    }
                    _ => {
                        // a stuffed (or unstuffed, by a sloppy writer) dot:
                        // drop it and go on with the line
                        out.extend_from_slice(h.bytes());
                        self.state = State::Text;
                    }
                },
                State::DotCr(h) => {
                    if b == b'\n' {
                        return true;
                    }
                    // ".\r" followed by something else: the dot is dropped,
                    // the CR is kept (Dovecot loses it after a bare LF; we
                    // do not copy that).
                    out.extend_from_slice(h.bytes());
                    self.state = State::Cr;
                }
            }
        }
    }
}

/// Incremental dot-stuffer for one body.
#[derive(Debug, Clone)]
pub(crate) struct DotEncoder {
    at_line_start: bool,
}

impl DotEncoder {
    /// `stuff_leading_dot`: whether offset 0 counts as a line start (true is
    /// correct; false copies Dovecot's writer exactly).
    pub(crate) fn new(stuff_leading_dot: bool) -> Self {
        Self {
            at_line_start: stuff_leading_dot,
        }
    }

    pub(crate) fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // Line by line: only the first byte of each line can need a dot.
        for line in data.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start && line[0] == b'.' {
                out.push(b'.');
            }
            out.extend_from_slice(line);
            self.at_line_start = line.last() == Some(&b'\n');
        }
    }

    /// The terminator: CRLF even for LF-only bodies, so a body ending in CR
    /// survives.
    pub(crate) const END: &'static [u8] = b"\r\n.\r\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(wire: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut d = DotDecoder::new();
        let mut out = Vec::new();
        let (n, end) = d.decode(wire, &mut out, usize::MAX);
        (out, n, end)
    }

    #[test]
    fn dovecot_reader_semantics() {
        assert_eq!(dec(b"abc\r\n.\r\nX"), (b"abc".to_vec(), 8, true));
        assert_eq!(dec(b"abc\n\r\n.\r\n"), (b"abc\n".to_vec(), 9, true));
        assert_eq!(dec(b"a\n..\nb\r\n.\r\n"), (b"a\n.\nb".to_vec(), 11, true));
        assert_eq!(dec(b"\r\n.\r\n"), (b"".to_vec(), 5, true));
        assert_eq!(dec(b".\r\n"), (b"".to_vec(), 3, true));
        assert_eq!(dec(b"a\n.\n"), (b"a".to_vec(), 4, true));
        // an unstuffed leading dot is dropped, as Dovecot's reader does
        assert_eq!(dec(b".x\r\n.\r\n"), (b"x".to_vec(), 7, true));
        assert_eq!(dec(b"x\r\r\n.\r\n"), (b"x\r".to_vec(), 7, true));
        assert_eq!(dec(b"abc\r\n.\r"), (b"abc".to_vec(), 7, false));
    }

    #[test]
    fn stuffing() {
        let mut e = DotEncoder::new(false);
        let mut out = Vec::new();
        e.encode(b".a\n.\n..b\n", &mut out);
        assert_eq!(out, b".a\n..\n...b\n");
        let mut e = DotEncoder::new(true);
        let mut out = Vec::new();
        e.encode(b".a", &mut out);
        assert_eq!(out, b"..a");
    }
}
