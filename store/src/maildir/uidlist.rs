//! `dovecot-uidlist`: UIDVALIDITY, next UID, mailbox GUID and the UID of
//! every message base name, as Dovecot 2.3 reads and writes it.
//!
//! Version 3 (written): header `3 V<uidvalidity> N<nextuid> G<guid-hex>`
//! plus any other `<Key><value>` header fields (kept verbatim), then one
//! line per message `<uid>[ <Key><value>]* :<base>`, UIDs strictly
//! increasing. Version 1 (`1 <uidvalidity> <nextuid>` / `<uid> <file>`) is
//! read too. The header's N is not authoritative: the next UID is
//! `max(N, last UID + 1)` ([`Uidlist::next_uid`]).
//!
//! A file Dovecot would call broken (other version, V or N zero, UIDs out
//! of order, a malformed line) is refused with [`UidlistError`]: Dovecot
//! would delete and rebuild it, renumbering messages, and corvid never
//! renumbers on its own. This module never touches the file system.

use engine::model::MailboxGuid;

/// Why a uidlist was refused. Whose fault: whoever wrote the file (a
/// broken or foreign writer); the store reports it as corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidlistError {
    /// The version digit was not 1 or 3.
    #[error("unsupported dovecot-uidlist version {0:?}")]
    Version(String),
    /// The header lacked V or N, or one was 0 or not a number.
    #[error("bad dovecot-uidlist header: {0:?}")]
    Header(String),
    /// A record line was malformed.
    #[error("bad dovecot-uidlist line {line}: {text:?}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The text (truncated).
        text: String,
    },
    /// A UID was not above the previous one.
    #[error("dovecot-uidlist UIDs not ordered at line {0}")]
    Unordered(usize),
}

/// One message line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The UID.
    pub uid: u32,
    /// Extension fields (`G`, `S`, `W`, `P`, `O`, others), in file order.
    pub ext: Vec<(char, String)>,
    /// The base file name (no `:2,` info).
    pub base: String,
}

impl Entry {
    /// The value of extension `key`.
    pub fn ext(&self, key: char) -> Option<&str> {
        self.ext
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed uidlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    /// UIDVALIDITY (non-zero).
    pub uidvalidity: u32,
    /// The header's N (not authoritative; see [`Uidlist::next_uid`]).
    pub header_next_uid: u32,
    /// The mailbox GUID (`None` in version 1 or a header without `G`).
    pub guid: Option<MailboxGuid>,
    /// Other header fields, kept verbatim (`P<fmt>` …).
    pub header_ext: Vec<(char, String)>,
    /// The message lines, by UID.
    pub entries: Vec<Entry>,
}

impl Uidlist {
    /// An empty uidlist.
    pub fn new(uidvalidity: u32, guid: MailboxGuid) -> Uidlist {
        Uidlist {
            uidvalidity,
            header_next_uid: 1,
            guid: Some(guid),
            header_ext: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// The next UID Dovecot would assign: `max(N, last UID + 1)`.
    pub fn next_uid(&self) -> u32 {
        let last = self.entries.last().map_or(0, |e| e.uid.saturating_add(1));
        self.header_next_uid.max(last).max(1)
    }

    /// The entry for a base name (a scan: for many lookups use
    /// [`Uidlist::bases`]).
    pub fn by_base(&self, base: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.base == base)
    }

    /// Every listed base name, for lookups.
    pub fn bases(&self) -> std::collections::HashSet<&str> {
        self.entries.iter().map(|e| e.base.as_str()).collect()
    }

    /// Whether every one of `bases` is listed.
    pub fn lists_all<'a>(&self, mut bases: impl Iterator<Item = &'a String>) -> bool {
        let listed = self.bases();
        bases.all(|b| listed.contains(b.as_str()))
    }

    /// Parse the file's text.
    pub fn parse(text: &str) -> Result<Uidlist, UidlistError> {
        let mut lines = text.split('\n');
        let header = lines.next().unwrap_or("");
        let bad_header = || UidlistError::Header(header.chars().take(200).collect());
        let mut list = Uidlist {
            uidvalidity: 0,
            header_next_uid: 0,
            guid: None,
            header_ext: Vec::new(),
            entries: Vec::new(),
        };
        let v1 = match header.split(' ').next() {
            Some("3") => false,
            Some("1") => true,
            other => return Err(UidlistError::Version(other.unwrap_or("").to_string())),
        };
        if v1 {
            let f: Vec<&str> = header.split(' ').collect();
            if f.len() < 3 {
                return Err(bad_header());
            }
            list.uidvalidity = f[1].parse().map_err(|_| bad_header())?;
            list.header_next_uid = f[2].parse().map_err(|_| bad_header())?;
        } else {
            for field in header.split(' ').skip(1).filter(|f| !f.is_empty()) {
                let mut cs = field.chars();
                let key = cs.next().ok_or_else(bad_header)?;
                let val = cs.as_str();
                match key {
                    'V' => list.uidvalidity = val.parse().map_err(|_| bad_header())?,
                    'N' => list.header_next_uid = val.parse().map_err(|_| bad_header())?,
                    'G' => {
                        list.guid =
                            Some(MailboxGuid::parse(val.as_bytes()).map_err(|_| bad_header())?)
                    }
                    k => list.header_ext.push((k, val.to_string())),
                }
            }
        }
        if list.uidvalidity == 0 || list.header_next_uid == 0 {
            return Err(bad_header());
        }
        let mut prev = 0u32;
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            if line.is_empty() {
                continue;
            }
            let bad = || UidlistError::Line {
                line: n,
                text: line.chars().take(200).collect(),
            };
            let e = if v1 {
                let (uid, file) = line.split_once(' ').ok_or_else(bad)?;
                Entry {
                    uid: uid.parse().map_err(|_| bad())?,
                    ext: Vec::new(),
                    base: file.split(':').next().unwrap_or("").to_string(),
                }
            } else {
                let (head, base) = line.split_once(" :").ok_or_else(bad)?;
                let mut fields = head.split(' ');
                let uid: u32 = fields.next().unwrap_or("").parse().map_err(|_| bad())?;
                let mut ext = Vec::new();
                for f in fields.filter(|f| !f.is_empty()) {
                    let mut cs = f.chars();
                    let k = cs.next().ok_or_else(bad)?;
                    if !k.is_ascii_uppercase() {
                        return Err(bad());
                    }
                    ext.push((k, cs.as_str().to_string()));
                }
                Entry {
                    uid,
                    ext,
                    base: base.to_string(),
                }
            };
            if e.uid == 0 || e.base.is_empty() || e.base.contains('/') {
                return Err(bad());
            }
            if e.uid <= prev {
                return Err(UidlistError::Unordered(n));
            }
            prev = e.uid;
            list.entries.push(e);
        }
        Ok(list)
    }

    /// The version 3 text.
    pub fn to_text(&self) -> String {
        let mut s = format!("3 V{} N{}", self.uidvalidity, self.header_next_uid);
        if let Some(g) = &self.guid {
            s.push_str(" G");
            s.push_str(&g.to_hex());
        }
        for (k, v) in &self.header_ext {
            s.push(' ');
            s.push(*k);
            s.push_str(v);
        }
        s.push('\n');
        for e in &self.entries {
            s.push_str(&e.uid.to_string());
            for (k, v) in &e.ext {
                s.push(' ');
                s.push(*k);
                s.push_str(v);
            }
            s.push_str(" :");
            s.push_str(&e.base);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_file_round_trips() {
        let t = "3 V1234567 N50 G0123456789abcdef0123456789abcdef\n10 :1893456000.M100000P1.handhost,S=157,W=165\n21 G<explicit-guid-21@x> :1893456003.M400000P1.handhost\n30 :b\n";
        let l = Uidlist::parse(t).unwrap();
        assert_eq!(l.uidvalidity, 1234567);
        assert_eq!(l.next_uid(), 50);
        assert_eq!(l.entries[1].ext('G'), Some("<explicit-guid-21@x>"));
        assert_eq!(l.to_text(), t);
        let appended =
            Uidlist::parse("3 V5 N1 Gcdec7637cdec7637cdec7637cdec7637\n1 :a\n2 :b\n").unwrap();
        assert_eq!(appended.next_uid(), 3);
    }

    #[test]
    fn broken_files_refused() {
        assert!(matches!(
            Uidlist::parse("2 V1 N1"),
            Err(UidlistError::Version(_))
        ));
        assert!(matches!(
            Uidlist::parse("3 V0 N1"),
            Err(UidlistError::Header(_))
        ));
        assert!(matches!(
            Uidlist::parse("3 V1 N1\n5 :a\n5 :b\n"),
            Err(UidlistError::Unordered(3))
        ));
        let v1 = Uidlist::parse("1 77 9\n3 a:2,S\n").unwrap();
        assert_eq!((v1.uidvalidity, v1.entries[0].base.as_str()), (77, "a"));
        assert_eq!(v1.next_uid(), 9);
    }
}
