//! Cyrus replication values ("dlist"), as printed and parsed by Cyrus 3.6.1
//! (`imap/dlist.c`).
//!
//! A dlist is an IMAP-like S-expression. Every csync command argument and
//! every untagged csync response is one keyed item, `KEY SP value`
//! ([`Item`]). Values ([`Value`]) are `NIL`, atoms, quoted strings,
//! literals (binary allowed), raw flags (`\Seen`), lists `( … )`,
//! key/value lists `%( KEY value … )` ([`KvList`]) and file literals
//! `%{partition guid size}` ([`FileRef`]) whose bytes travel separately.
//!
//! What it does:
//! * [`parse`] turns a complete framed [`Message`](crate::frame::Message)
//!   (from [`crate::frame`]) into values. It accepts what Cyrus's streaming
//!   parser accepts (liberal atoms, any whitespace run inside lists, a key
//!   written as quoted or literal), refuses anything else with a
//!   [`ParseError`], and bounds nesting depth ([`parse::DEPTH_MAX`]).
//! * [`print`] writes values exactly as Cyrus prints them: each decoded
//!   value keeps the form it arrived in (atom, quoted, literal, flag), and
//!   [`Value::string`] chooses the form by Cyrus's `prot_printastring` /
//!   `prot_printamap` rules for values we build ourselves, so a line Cyrus
//!   printed re-encodes to identical bytes and a line we build is one Cyrus
//!   would have printed. Literals are `{n+}` in csync and from IMAP-flavour
//!   clients, `{n}` from an IMAP-flavour server ([`LiteralStyle`]).
//! * Typed views: numbers ([`Value::as_u64`], [`Value::as_u32_wrapping`]
//!   — Cyrus parses 64-bit and truncates), [`Guid`], key lookup in
//!   [`KvList`]. Unknown keys are kept in order (Cyrus ignores them; we
//!   pass them through).
//!
//! What it never does: stream or store file bytes (the framer streams
//! them; [`FileRef`] only names them), interpret record semantics (that is
//! `engine`'s job), or emit backslash escapes (Cyrus never does; a string
//! that would need one becomes a literal).

mod guid;
pub mod parse;
pub mod print;

#[cfg(feature = "arbitrary")]
mod arbitrary_impls;

pub use guid::{FileRef, Guid, GuidError};
pub use parse::{parse_item, parse_value, ParseError};
pub use print::{Encoded, Encoder, LiteralStyle, Piece};

use bytes::Bytes;

/// Largest atom or quoted string Cyrus prints (`MAXQSTRING`, and the
/// `imparse_isnatom` limit): strings of 1024 bytes or more are literals.
pub const QSTRING_BYTES_MAX: usize = 1024;

/// One dlist value.
///
/// The string-like variants keep the form the value arrived in so it
/// re-encodes byte for byte; build new strings with [`Value::string`],
/// which picks the form Cyrus would print.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// Bare `NIL`: no value. (The quoted `"NIL"` is the 3-byte string.)
    Nil,
    /// A bare word, printed raw. Numbers, GUIDs, names usually travel so.
    Atom(Bytes),
    /// A quoted string (content without the quotes, escapes removed).
    Quoted(Bytes),
    /// A literal `{n+}` / `{n}` with its raw bytes (NUL allowed).
    Literal(Bytes),
    /// A flag printed raw, including its leading backslash (`\Seen`).
    Flag(Bytes),
    /// `( … )`.
    List(Vec<Value>),
    /// `%( KEY value … )`.
    KvList(KvList),
    /// `%{partition guid size}`: a message file whose bytes are streamed
    /// right after the announcement.
    File(FileRef),
}

/// `KEY SP value`: a whole command argument or untagged response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    /// The key (`MAILBOX`, `RESERVE`, `USER`, …), case-sensitive.
    pub key: Bytes,
    /// Its value.
    pub value: Value,
}

impl Item {
    /// An item from a key and a value.
    pub fn new(key: impl Into<Bytes>, value: Value) -> Self {
        Item {
            key: key.into(),
            value,
        }
    }

    /// `true` if the key is `name`, ignoring ASCII case — how sync_server
    /// matches the sub-command after APPLY/GET/RESTORE (it upper-cases
    /// it). Keys inside kvlists are case-sensitive: use [`KvList::get`].
    pub fn key_is(&self, name: &str) -> bool {
        self.key.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A key/value list, order preserved (Cyrus emits keys in a fixed order and
/// looks them up by name, ignoring unknown ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KvList(pub Vec<(Bytes, Value)>);

impl KvList {
    /// An empty list (`%()`).
    pub fn new() -> Self {
        KvList(Vec::new())
    }

    /// Appends `key value`.
    pub fn push(&mut self, key: impl Into<Bytes>, value: Value) -> &mut Self {
        self.0.push((key.into(), value));
        self
    }

    /// Builder form of [`KvList::push`].
    pub fn with(mut self, key: impl Into<Bytes>, value: Value) -> Self {
        self.0.push((key.into(), value));
        self
    }

    /// The first value under `key` (exact, case-sensitive, as Cyrus's
    /// `dlist_getchild`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` for `%()`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `true` if Cyrus 3.6.1 prints `s` as a bare atom (`imparse_isnatom`):
/// 1..1024 bytes, none 8-bit, below 0x1F, DEL, or one of `SP { ( ) " % * \`,
/// and not the word `NIL`. (0x1F itself is allowed: the test is `< 0x1f`.)
pub fn is_cyrus_atom(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() < QSTRING_BYTES_MAX
        && s != b"NIL"
        && s.iter().all(|&b| {
            !(b & 0x80 != 0
                || b < 0x1f
                || b == 0x7f
                || matches!(b, b' ' | b'{' | b'(' | b')' | b'"' | b'%' | b'*' | b'\\'))
        })
}

/// `true` if Cyrus prints `s` (not an atom) as a quoted string: shorter
/// than 1024 bytes and no 8-bit byte, NUL, CR, LF, `"`, `%` or `\`. TAB
/// and other controls are allowed raw (ACLs travel this way).
pub fn is_cyrus_quotable(s: &[u8]) -> bool {
    s.len() < QSTRING_BYTES_MAX
        && s.iter()
            .all(|&b| !(b & 0x80 != 0 || matches!(b, 0 | b'\r' | b'\n' | b'"' | b'%' | b'\\')))
}

impl Value {
    /// A string in the form Cyrus prints it (`DL_ATOM`/`DL_BUF`): `""` if
    /// empty, an atom if [`is_cyrus_atom`], a quoted string if
    /// [`is_cyrus_quotable`], else a literal.
    pub fn string(s: impl Into<Bytes>) -> Value {
        let s: Bytes = s.into();
        if is_cyrus_atom(&s) {
            Value::Atom(s)
        } else if is_cyrus_quotable(&s) {
            Value::Quoted(s)
        } else {
            Value::Literal(s)
        }
    }

    /// A number as Cyrus prints `DL_NUM`/`DL_DATE` (`%llu`).
    pub fn num(n: u64) -> Value {
        Value::Atom(Bytes::from(n.to_string()))
    }

    /// `DL_HEX`: exactly 16 lower-case hex digits (thread ids).
    pub fn hex(n: u64) -> Value {
        Value::Atom(Bytes::from(format!("{n:016x}")))
    }

    /// `DL_GUID`: 40 lower-case hex digits.
    pub fn guid(g: &Guid) -> Value {
        Value::Atom(Bytes::from(g.to_string()))
    }

    /// A flag (`\Seen`, or a user flag such as `$Label1`), printed raw by
    /// Cyrus. User flags without a backslash become atoms.
    pub fn flag(f: impl Into<Bytes>) -> Value {
        let f: Bytes = f.into();
        if f.first() == Some(&b'\\') {
            Value::Flag(f)
        } else {
            Value::Atom(f)
        }
    }

    /// `true` for `NIL`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The bytes of a string-like value (atom, quoted, literal, flag).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Atom(b) | Value::Quoted(b) | Value::Literal(b) | Value::Flag(b) => Some(b),
            _ => None,
        }
    }

    /// The shared bytes of a string-like value.
    pub fn as_shared_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Atom(b) | Value::Quoted(b) | Value::Literal(b) | Value::Flag(b) => Some(b),
            _ => None,
        }
    }

    /// The value as UTF-8 text, if string-like and valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// A decimal number (the whole string must be digits, any form: Cyrus
    /// accepts `LAST_UID "5"`). `None` on overflow or non-digits.
    pub fn as_u64(&self) -> Option<u64> {
        let b = self.as_bytes()?;
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        b.iter().try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// A 32-bit field as Cyrus reads it: parsed as 64-bit, then truncated
    /// without error (an "unlimited" quota of 2^64−1 becomes 4294967295).
    pub fn as_u32_wrapping(&self) -> Option<u32> {
        self.as_u64().map(|n| n as u32)
    }

    /// A `DL_HEX` value (any number of hex digits up to 16).
    pub fn as_hex_u64(&self) -> Option<u64> {
        let s = self.as_str()?;
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    }

    /// A GUID (exactly 40 hex digits).
    pub fn as_guid(&self) -> Option<Guid> {
        Guid::parse(self.as_bytes()?).ok()
    }

    /// The members of a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a kvlist.
    pub fn as_kvlist(&self) -> Option<&KvList> {
        match self {
            Value::KvList(kv) => Some(kv),
            _ => None,
        }
    }

    /// The file reference of a file literal.
    pub fn as_file(&self) -> Option<&FileRef> {
        match self {
            Value::File(f) => Some(f),
            _ => None,
        }
    }

    /// Number of file literals in this value (they are streamed in this
    /// order, depth first).
    pub fn file_count(&self) -> usize {
        match self {
            Value::File(_) => 1,
            Value::List(v) => v.iter().map(Value::file_count).sum(),
            Value::KvList(kv) => kv.0.iter().map(|(_, v)| v.file_count()).sum(),
            _ => 0,
        }
    }
}

impl From<KvList> for Value {
    fn from(kv: KvList) -> Self {
        Value::KvList(kv)
    }
}
