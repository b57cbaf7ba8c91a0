//! Mailbox names and their Maildir++ directory names, as Dovecot 2.3 maps
//! them with the default configuration (`maildir:PATH`, namespace
//! separator `/`, no `UTF-8`, no `BROKENCHAR`, no storage escape char).
//!
//! A [`Name`] is what a user sees (`Work/Sub`, `Café`): UTF-8, hierarchy
//! parts joined by `/`. On disk every part is IMAP modified UTF-7 and the
//! parts are joined by `.` behind a leading `.` (`.Work.Sub`,
//! `.Caf&AOk-`); INBOX is the root directory itself.
//!
//! Because Dovecot has no escape for `.` or `/` in this configuration, it
//! refuses such names (`Character not allowed in mailbox name: '.'`), and
//! so does [`Name::new`]: a name that is valid here is always a single
//! directory directly under the root, so no name can escape the root
//! (`..`, `/`, NUL are refused, never escaped). The extra rules copy
//! Dovecot's limits: at most 20 levels of at most 200 bytes each, no part
//! starting with `~` (a home-directory reference for Dovecot), no last part
//! `cur`/`new`/`tmp`.
//!
//! This module never touches the file system.

use std::fmt;

/// Most hierarchy levels in a name (Dovecot's `MAILBOX_MAX_HIERARCHY_LEVELS`).
pub const LEVELS_MAX: usize = 20;
/// Most bytes in one hierarchy part, as UTF-8 (Dovecot's
/// `MAILBOX_MAX_HIERARCHY_NAME_LENGTH`).
pub const PART_BYTES_MAX: usize = 200;

/// Why a mailbox name or directory name was refused. Whose fault: the
/// caller's (or the peer's that sent the name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name was empty or had an empty hierarchy part (`a//b`, `/a`).
    #[error("mailbox name has an empty hierarchy part")]
    EmptyPart,
    /// A character Dovecot's Maildir++ layout cannot store (`.`, NUL, CR,
    /// LF, TAB) was in the name.
    #[error("character {0:?} not allowed in a Maildir++ mailbox name")]
    ForbiddenChar(char),
    /// A part started with `~`, or the last part was `cur`, `new` or `tmp`.
    #[error("mailbox name part {0:?} is reserved")]
    Reserved(String),
    /// Too many levels or a part too long.
    #[error("mailbox name too long (at most {LEVELS_MAX} levels of {PART_BYTES_MAX} bytes)")]
    TooLong,
    /// A directory or subscription entry was not valid modified UTF-7.
    #[error("not valid modified UTF-7: {0:?}")]
    BadUtf7(String),
}

/// A validated mailbox name: UTF-8 parts joined by `/`; `INBOX` (any case)
/// is the inbox and is kept as `INBOX`. Grammar: 1..=20 parts, each 1..=200
/// bytes, no `.` `/` NUL CR LF TAB, not starting with `~`, last part not
/// `cur`/`new`/`tmp`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// The inbox.
    pub fn inbox() -> Name {
        Name("INBOX".to_string())
    }

    /// Validate a name.
    pub fn new(s: &str) -> Result<Name, NameError> {
        if s.eq_ignore_ascii_case("INBOX") {
            return Ok(Name::inbox());
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > LEVELS_MAX {
            return Err(NameError::TooLong);
        }
        for p in &parts {
            check_part(p)?;
        }
        let last = parts[parts.len() - 1];
        if matches!(last, "cur" | "new" | "tmp") {
            return Err(NameError::Reserved(last.to_string()));
        }
        // `INBOX/x` keeps the parent spelled `INBOX` as Dovecot does.
        let mut out = String::with_capacity(s.len());
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            if i == 0 && p.eq_ignore_ascii_case("INBOX") {
                out.push_str("INBOX");
            } else {
                out.push_str(p);
            }
        }
        Ok(Name(out))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is INBOX.
    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    /// The hierarchy parts.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `self` is `other` or below it.
    pub fn is_at_or_below(&self, other: &Name) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }

    /// The storage name parts: each part in modified UTF-7.
    pub fn storage_parts(&self) -> Vec<String> {
        self.parts().map(utf7_encode).collect()
    }

    /// The directory name under the root; `None` for INBOX (the root).
    pub fn dir_name(&self) -> Option<String> {
        if self.is_inbox() {
            return None;
        }
        let mut d = String::new();
        for p in self.parts() {
            d.push('.');
            d.push_str(&utf7_encode(p));
        }
        Some(d)
    }

    /// The name a Maildir++ directory entry (`.Work.Sub`) stands for;
    /// `None` if the entry is not a mailbox directory (no leading `.`, `.`,
    /// `..`). Invalid encodings are an error so a caller can log and skip.
    pub fn from_dir_name(entry: &str) -> Option<Result<Name, NameError>> {
        let rest = entry.strip_prefix('.')?;
        if rest.is_empty() || rest == "." {
            return None;
        }
        Some(Name::from_storage_parts(rest.split('.')))
    }

    /// The name from storage (modified UTF-7) parts.
    pub fn from_storage_parts<'a>(
        parts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Name, NameError> {
        let mut v = Vec::new();
        for p in parts {
            v.push(utf7_decode(p)?);
        }
        if v.is_empty() {
            return Err(NameError::EmptyPart);
        }
        Name::new(&v.join("/"))
    }
}

fn check_part(p: &str) -> Result<(), NameError> {
    if p.is_empty() {
        return Err(NameError::EmptyPart);
    }
    if p.len() > PART_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '.' | '\0' | '\r' | '\n' | '\t'))
    {
        return Err(NameError::ForbiddenChar(c));
    }
    if p.starts_with('~') {
        return Err(NameError::Reserved(p.to_string()));
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// IMAP modified UTF-7 (RFC 3501 5.1.3): printable ASCII stands for itself
/// except `&`, written `&-`; everything else is UTF-16BE in base64 with `,`
/// for `/`, between `&` and `-`.
pub fn utf7_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            let chars = match chunk.len() {
                1 => 2,
                2 => 3,
                _ => 4,
            };
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decode modified UTF-7; refuses what Dovecot refuses (unterminated or
/// non-canonical shifts, encoded printable ASCII, bad UTF-16).
pub fn utf7_decode(s: &str) -> Result<String, NameError> {
    let bad = || NameError::BadUtf7(s.to_string());
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'&' {
            if !(0x20..=0x7e).contains(&c) {
                return Err(bad());
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        let end = b[i + 1..]
            .iter()
            .position(|&x| x == b'-')
            .map(|p| i + 1 + p)
            .ok_or_else(bad)?;
        let enc = &b[i + 1..end];
        i = end + 1;
        if enc.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut units: Vec<u16> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        for &e in enc {
            let v = B64.iter().position(|&x| x == e).ok_or_else(bad)? as u32;
            bits = bits << 6 | v;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                bytes.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        // Leftover bits must be zero padding, and whole UTF-16 units only.
        if bits != 0 || bytes.len() & 1 == 1 || nbits >= 6 {
            return Err(bad());
        }
        for pair in bytes.chunks(2) {
            units.push(u16::from_be_bytes([pair[0], pair[1]]));
        }
        let decoded = String::from_utf16(&units).map_err(|_| bad())?;
        if decoded.chars().any(|c| (' '..='~').contains(&c)) {
            return Err(bad());
        }
        out.push_str(&decoded);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_examples() {
        // Observed with doveadm (research note 1.2).
        assert_eq!(
            Name::new("Café/Ünter").unwrap().dir_name().unwrap(),
            ".Caf&AOk-.&ANw-nter"
        );
        assert_eq!(
            Name::new("Caf&AOk-").unwrap().dir_name().unwrap(),
            ".Caf&-AOk-"
        );
        assert_eq!(
            Name::new("Sent Items").unwrap().dir_name().unwrap(),
            ".Sent Items"
        );
        assert_eq!(Name::new("inbox").unwrap().dir_name(), None);
        assert_eq!(
            Name::from_dir_name(".Work.Sub").unwrap().unwrap().as_str(),
            "Work/Sub"
        );
        assert!(Name::from_dir_name("..DOVECOT-TRASHED").unwrap().is_err());
        assert!(Name::from_dir_name("cur").is_none());
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "", "a//b", "/a", "a/", "..", "a/../b", "Bad.Name", "~x", "a/cur", "a\0b",
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn utf7_round_trip_and_strictness() {
        for s in ["Café", "日本語", "a&b", "😀x", "&", "~"] {
            assert_eq!(utf7_decode(&utf7_encode(s)).unwrap(), s);
        }
        assert!(utf7_decode("&AGE-").is_err()); // encoded 'a'
        assert!(utf7_decode("&AOk").is_err()); // unterminated
        assert!(utf7_decode("&AO-").is_err()); // odd bytes
    }
}
