//! The dlist printer: values to bytes, as Cyrus 3.6.1 prints them.
//!
//! File literal bodies are not in the output: [`Encoded`] records where
//! each one goes, and the driver streams the file there ([`Encoded::pieces`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::{FileRef, Item, KvList, Value};

/// How literals are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralStyle {
    /// `{n+}`: csync (both directions) and IMAP-flavour clients.
    NonSync,
    /// `{n}`: an IMAP-flavour server (imapd's output is not in client mode).
    Sync,
}

/// One piece of encoded output: bytes to send as they are, or a file whose
/// `size` bytes the driver must send at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes to write.
    Bytes(&'a [u8]),
    /// Stream this file's content here.
    File(&'a FileRef),
}

/// Encoded output: text plus the places where file bodies go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    text: Bytes,
    files: Vec<(usize, FileRef)>,
}

impl Encoded {
    /// The text with file bodies left out (each file literal announcement
    /// and its CRLF are present).
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// File literals in order, with the text offset their body goes at.
    pub fn files(&self) -> &[(usize, FileRef)] {
        &self.files
    }

    /// The output in sending order.
    pub fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let mut out = Vec::with_capacity(self.files.len() * 2 + 1);
        let mut at = 0;
        for (off, f) in &self.files {
            out.push(Piece::Bytes(&self.text[at..*off]));
            out.push(Piece::File(f));
            at = *off;
        }
        out.push(Piece::Bytes(&self.text[at..]));
        out.into_iter()
            .filter(|p| !matches!(p, Piece::Bytes(b) if b.is_empty()))
    }

    /// The whole wire form, asking `body` for each file's bytes (tests and
    /// small messages; drivers should stream [`Encoded::pieces`]).
    pub fn to_wire(&self, mut body: impl FnMut(&FileRef) -> Bytes) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len());
        for p in self.pieces() {
            match p {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::File(f) => out.extend_from_slice(&body(f)),
            }
        }
        out
    }

    /// The wire form of an encoding without file literals.
    pub fn into_bytes(self) -> Bytes {
        assert!(
            self.files.is_empty(),
            "into_bytes on an encoding with file literals"
        );
        self.text
    }
}

/// Builds one line (or several) of output.
#[derive(Debug)]
pub struct Encoder {
    out: BytesMut,
    files: Vec<(usize, FileRef)>,
    style: LiteralStyle,
}

impl Encoder {
    /// A new encoder announcing literals in `style`.
    pub fn new(style: LiteralStyle) -> Self {
        Encoder {
            out: BytesMut::new(),
            files: Vec::new(),
            style,
        }
    }

    /// Appends raw bytes (command words, spaces, CRLF).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.put_slice(b);
        self
    }

    /// Appends `s` as Cyrus's `prot_printastring`/`prot_printamap`.
    pub fn astring(&mut self, s: &[u8]) -> &mut Self {
        self.value(&Value::string(Bytes::copy_from_slice(s)))
    }

    /// Appends `KEY SP value`.
    pub fn item(&mut self, item: &Item) -> &mut Self {
        self.astring(&item.key);
        self.out.put_u8(b' ');
        self.value(&item.value)
    }

    /// Appends a value in the form it carries.
    pub fn value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Nil => self.out.put_slice(b"NIL"),
            Value::Atom(a) => {
                if is_raw_atom(a) {
                    self.out.put_slice(a)
                } else {
                    // Not re-parseable as an atom: print it as Cyrus would.
                    self.string_form(a)
                }
            }
            Value::Quoted(q) => {
                if q.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n')) {
                    self.literal(q)
                } else {
                    self.out.put_u8(b'"');
                    for &b in q.iter() {
                        // Cyrus never escapes; these only arise from peers
                        // that did, and re-escaping gives their bytes back.
                        if b == b'"' || b == b'\\' {
                            self.out.put_u8(b'\\');
                        }
                        self.out.put_u8(b);
                    }
                    self.out.put_u8(b'"');
                }
            }
            Value::Literal(l) => self.literal(l),
            Value::Flag(f) => {
                if is_raw_flag(f) {
                    self.out.put_slice(f)
                } else {
                    self.string_form(f)
                }
            }
            Value::List(items) => {
                self.out.put_u8(b'(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.put_u8(b' ');
                    }
                    self.value(item);
                }
                self.out.put_u8(b')');
            }
            Value::KvList(kv) => self.kvlist(kv),
            Value::File(f) => {
                self.out.put_slice(b"%{");
                self.astring(&f.partition);
                self.out.put_u8(b' ');
                self.out.put_slice(f.guid.to_string().as_bytes());
                self.out.put_slice(format!(" {}}}\r\n", f.size).as_bytes());
                self.files.push((self.out.len(), f.clone()));
            }
        }
        self
    }

    fn kvlist(&mut self, kv: &KvList) {
        self.out.put_slice(b"%(");
        for (i, (k, v)) in kv.0.iter().enumerate() {
            if i > 0 {
                self.out.put_u8(b' ');
            }
            self.astring(k);
            self.out.put_u8(b' ');
            self.value(v);
        }
        self.out.put_u8(b')');
    }

    fn string_form(&mut self, s: &Bytes) {
        match Value::string(s.clone()) {
            Value::Atom(a) => self.out.put_slice(&a),
            Value::Quoted(q) => {
                self.out.put_u8(b'"');
                self.out.put_slice(&q);
                self.out.put_u8(b'"');
            }
            Value::Literal(l) => self.literal(&l),
            _ => unreachable!("Value::string returns a string form"),
        }
    }

    fn literal(&mut self, l: &[u8]) {
        let head = match self.style {
            LiteralStyle::NonSync => format!("{{{}+}}\r\n", l.len()),
            LiteralStyle::Sync => format!("{{{}}}\r\n", l.len()),
        };
        self.out.put_slice(head.as_bytes());
        self.out.put_slice(l);
    }

    /// Appends CRLF.
    pub fn crlf(&mut self) -> &mut Self {
        self.out.put_slice(b"\r\n");
        self
    }

    /// The output.
    pub fn finish(self) -> Encoded {
        Encoded {
            text: self.out.freeze(),
            files: self.files,
        }
    }
}

/// An atom the parser reads back as the same atom: non-empty, not `NIL`,
/// no byte that ends an atom (SP, TAB, CR, LF, `(`, `)`, `"`, NUL) and no
/// first byte that starts another form (`%`, `{`, `\`).
fn is_raw_atom(a: &[u8]) -> bool {
    !a.is_empty()
        && a != b"NIL"
        && !matches!(a[0], b'%' | b'{' | b'\\')
        && a.iter().all(|&b| super::parse::is_liberal_atom_char(b))
        && !ends_like_literal(a)
}

/// A flag the parser reads back as the same flag.
fn is_raw_flag(f: &[u8]) -> bool {
    f.first() == Some(&b'\\')
        && f[1..]
            .iter()
            .all(|&b| super::parse::is_liberal_atom_char(b))
        && !ends_like_literal(f)
}

/// A word ending in `{n}` / `{n+}` would be framed as a literal
/// announcement at the end of a line.
fn ends_like_literal(a: &[u8]) -> bool {
    let Some(body) = a.strip_suffix(b"}") else {
        return false;
    };
    let body = body.strip_suffix(b"+").unwrap_or(body);
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && body[..body.len() - digits].ends_with(b"{")
}
