//! Dovecot's tab-escaping (`lib/strescape.c`) as dsync uses it for every
//! value on a record line and for lists nested inside one value.
//!
//! Escape byte `\x01`: `\x01`→`\x01 1`, TAB→`\x01 t`, CR→`\x01 r`,
//! LF→`\x01 n`; the decoder also maps `\x01 0` to NUL (Dovecot's writer
//! never produces it because its values are C strings; ours escapes NUL
//! that way so a line never carries a raw NUL). Any other byte after `\x01`
//! stands for itself and a `\x01` at the very end is dropped, as Dovecot's
//! unescaper does. A record value that is exactly `\x02` is NULL; a real
//! value starting with `\x02` gets one more `\x02` in front. Never
//! allocates more than the input it is given.

use bytes::Bytes;

/// Marks a NULL value on a record line.
pub(crate) const NULL_CHR: u8 = 0x02;
const ESC: u8 = 0x01;

/// Append `v` tab-escaped to `out`.
pub(crate) fn escape_into(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            ESC => out.extend_from_slice(b"\x011"),
            b'\t' => out.extend_from_slice(b"\x01t"),
            b'\r' => out.extend_from_slice(b"\x01r"),
            b'\n' => out.extend_from_slice(b"\x01n"),
            0 => out.extend_from_slice(b"\x010"),
            _ => out.push(b),
        }
    }
}

/// Undo [`escape_into`].
pub(crate) fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == ESC {
            match v.get(i + 1) {
                None => break,
                Some(b'0') => out.push(0),
                Some(b'1') => out.push(ESC),
                Some(b't') => out.push(b'\t'),
                Some(b'r') => out.push(b'\r'),
                Some(b'n') => out.push(b'\n'),
                Some(&other) => out.push(other),
            }
            i += 2;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

/// Split a tab-joined list of escaped parts (Dovecot's
/// `t_strsplit_tabescaped`): the empty string is the empty list.
pub(crate) fn split_list(v: &[u8]) -> Vec<Bytes> {
    if v.is_empty() {
        return Vec::new();
    }
    v.split(|&b| b == b'\t')
        .map(|p| Bytes::from(unescape(p)))
        .collect()
}

/// Join parts escaped with TAB between them (inverse of [`split_list`],
/// except that `[""]` and `[]` both become the empty string).
pub(crate) fn join_list<T: AsRef<[u8]>>(parts: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        escape_into(&mut out, p.as_ref());
    }
    out
}

/// Decode the values of one record (the line after its type byte): split
/// on TAB, unescape, then map the NULL marker.
pub(crate) fn split_values(rest: &[u8]) -> Vec<Option<Bytes>> {
    split_list(rest)
        .into_iter()
        .map(|v| match v.first() {
            Some(&NULL_CHR) if v.len() == 1 => None,
            Some(&NULL_CHR) => Some(v.slice(1..)),
            _ => Some(v),
        })
        .collect()
}

/// Encode record values (inverse of [`split_values`]).
pub(crate) fn join_values(out: &mut Vec<u8>, values: &[Option<Bytes>]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.push(NULL_CHR),
            Some(v) => {
                if v.first() == Some(&NULL_CHR) {
                    out.push(NULL_CHR);
                }
                escape_into(out, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_dovecot() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a\tb\x01c\rd\ne\0");
        assert_eq!(out, b"a\x01tb\x011c\x01rd\x01ne\x010");
        assert_eq!(unescape(&out), b"a\tb\x01c\rd\ne\0");
        // unknown escapes stand for themselves, a trailing escape is dropped
        assert_eq!(unescape(b"\x01x\x01"), b"x");
    }

    #[test]
    fn null_and_leading_marker() {
        let mut out = Vec::new();
        join_values(
            &mut out,
            &[None, Some(Bytes::from_static(b"\x02x")), Some(Bytes::new())],
        );
        assert_eq!(out, b"\x02\t\x02\x02x\t");
        assert_eq!(
            split_values(&out),
            vec![None, Some(Bytes::from_static(b"\x02x")), Some(Bytes::new())]
        );
        assert!(split_values(b"").is_empty());
    }
}
