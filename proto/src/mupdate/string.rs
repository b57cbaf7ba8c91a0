//! MUPDATE strings: the only argument type the protocol has.
//!
//! A string travels quoted (`"…"`, backslash escapes) or as a literal
//! (`{n}` / `{n+}` then `n` raw octets). [`Str`] keeps the value and the
//! [`Form`] it travelled in, so that a decoded response re-encodes to the
//! same bytes; equality compares both, [`Str::value`] gives the bytes.

use bytes::{BufMut, Bytes};

use crate::frame::{LiteralKind, Message};

/// How a string travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Form {
    /// `"…"` with `\"` and `\\` escaped. Cannot hold CR, LF or NUL.
    Quoted,
    /// `{n}`: synchronising literal (a client waits for `+ go ahead`).
    Sync,
    /// `{n+}`: non-synchronising literal. What Cyrus sends for every data
    /// string and every client argument.
    NonSync,
}

/// A MUPDATE string value and its wire form.
///
/// Grammar: any octets but NUL (Cyrus handles them as C strings: a NUL in a
/// literal is refused, so we never accept or produce one). A quoted form
/// additionally excludes CR and LF; [`Str::new`] falls back to `{n+}` then.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Str {
    value: Bytes,
    form: Form,
}

/// Why bytes are not a valid [`Str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StrError {
    /// Caller's (or peer's) bytes: a NUL octet, which no MUPDATE string holds.
    #[error("string contains NUL")]
    Nul,
    /// Caller's misuse: CR or LF asked for in quoted form.
    #[error("quoted string cannot hold CR or LF")]
    LineEndInQuoted,
}

impl Str {
    /// A string in the given form. Errors if the value has a NUL, or CR/LF
    /// with [`Form::Quoted`].
    pub fn with_form(value: impl Into<Bytes>, form: Form) -> Result<Str, StrError> {
        let value = value.into();
        if value.contains(&0) {
            return Err(StrError::Nul);
        }
        if form == Form::Quoted && value.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(StrError::LineEndInQuoted);
        }
        Ok(Str { value, form })
    }

    /// A string as Cyrus sends it: a `{n+}` literal.
    pub fn literal(value: impl Into<Bytes>) -> Result<Str, StrError> {
        Str::with_form(value, Form::NonSync)
    }

    /// A quoted string if the value allows it, else a `{n+}` literal.
    pub fn new(value: impl Into<Bytes>) -> Result<Str, StrError> {
        let value = value.into();
        let form = if value.iter().any(|&b| b == b'\r' || b == b'\n') {
            Form::NonSync
        } else {
            Form::Quoted
        };
        Str::with_form(value, form)
    }

    /// The value.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The wire form.
    pub fn form(&self) -> Form {
        self.form
    }

    /// Consumes into the value.
    pub fn into_value(self) -> Bytes {
        self.value
    }

    /// Appends the wire bytes. A literal's announcement ends the current
    /// line (`{n+}\r\n` then the octets); the caller continues the line.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_value(&self.value, self.form, out);
    }
}

/// Appends `value` in `form` (see [`Str::encode`]). The value must satisfy
/// [`Str`]'s grammar; callers with unchecked bytes use [`Str::with_form`].
pub(crate) fn encode_value(value: &[u8], form: Form, out: &mut Vec<u8>) {
    match form {
        Form::Quoted => {
            out.push(b'"');
            for &b in value {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        }
        Form::Sync | Form::NonSync => {
            out.put_u8(b'{');
            out.extend_from_slice(value.len().to_string().as_bytes());
            if form == Form::NonSync {
                out.push(b'+');
            }
            out.extend_from_slice(b"}\r\n");
            out.extend_from_slice(value);
        }
    }
}

/// Why a string could not be read at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// No string starts here (an atom, a bad literal header, end of text).
    NotAString,
    /// A literal or quoted string holding NUL.
    Nul,
}

/// A read position inside a framed message's text.
pub(crate) struct Cursor<'m> {
    msg: &'m Message,
    pub(crate) pos: usize,
}

impl<'m> Cursor<'m> {
    pub(crate) fn new(msg: &'m Message, pos: usize) -> Self {
        Cursor { msg, pos }
    }

    fn text(&self) -> &'m [u8] {
        self.msg.text()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.text().len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.text().get(self.pos).copied()
    }

    /// Consumes one SP if it is next.
    pub(crate) fn eat_sp(&mut self) -> bool {
        if self.peek() == Some(b' ') {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Bytes up to the next SP or the end (not consumed: the SP).
    pub(crate) fn word(&mut self) -> &'m [u8] {
        let text = self.text();
        let start = self.pos;
        let end = text[start..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(text.len(), |i| start + i);
        self.pos = end;
        &text[start..end]
    }

    /// The rest of the text.
    pub(crate) fn rest(&mut self) -> &'m [u8] {
        let text = self.text();
        let start = self.pos.min(text.len());
        self.pos = text.len();
        &text[start..]
    }

    /// Reads one string (quoted or literal) at the current position.
    pub(crate) fn string(&mut self) -> Result<Str, ReadError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => Err(ReadError::NotAString),
        }
    }

    fn quoted(&mut self) -> Result<Str, ReadError> {
        let text = self.text();
        let mut i = self.pos + 1;
        let mut value = Vec::new();
        loop {
            match text.get(i) {
                None => return Err(ReadError::NotAString),
                Some(b'"') => break,
                Some(b'\\') => {
                    // Cyrus accepts any escaped octet, not only `"` and `\`.
                    match text.get(i + 1) {
                        None => return Err(ReadError::NotAString),
                        Some(&b) => value.push(b),
                    }
                    i += 2;
                }
                Some(&b) => {
                    value.push(b);
                    i += 1;
                }
            }
        }
        if value.contains(&0) {
            return Err(ReadError::Nul);
        }
        self.pos = i + 1;
        Ok(Str {
            value: Bytes::from(value),
            form: Form::Quoted,
        })
    }

    fn literal(&mut self) -> Result<Str, ReadError> {
        let text = self.text();
        let close = match text[self.pos..].iter().position(|&b| b == b'}') {
            Some(i) => self.pos + i,
            None => return Err(ReadError::NotAString),
        };
        // The framer recognised a literal only if its announcement ended a
        // segment; the offset just after `}` identifies it.
        let Some((_, lit)) = self.msg.literal_at(close + 1) else {
            return Err(ReadError::NotAString);
        };
        let form = match lit.header.kind {
            LiteralKind::Sync => Form::Sync,
            LiteralKind::NonSync => Form::NonSync,
            LiteralKind::File { .. } => return Err(ReadError::NotAString),
        };
        // Literal bodies of MUPDATE messages are always inline (the server
        // options keep them so); a streamed one is not a string we can use.
        let Some(body) = lit.body.clone() else {
            return Err(ReadError::NotAString);
        };
        if body.contains(&0) {
            return Err(ReadError::Nul);
        }
        self.pos = close + 1;
        Ok(Str { value: body, form })
    }
}
