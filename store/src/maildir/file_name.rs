//! Message file names: `<base>[,S=<size>][,W=<vsize>][:2,<flags>]`.
//!
//! The base (everything before the first `:`) is the message's identity:
//! the uidlist names files by it and Dovecot uses it as the message GUID.
//! The info part after `:2,` holds flag letters in ASCII order: `D`raft,
//! `F`lagged, `R` answered, `S`een, `T` deleted, `a`..`z` keywords by
//! index in `dovecot-keywords`; any other letter (`P` passed) is kept as
//! it is, and a second `,`-separated info set after the letters too.
//!
//! This module never touches the file system.

use engine::model::SystemFlags;

/// One parsed file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// Everything before the first `:` (includes `,S=`/`,W=`).
    pub base: String,
    /// Everything from the first `:` on (empty if none).
    pub info: String,
}

impl FileName {
    /// Split a directory entry; `None` for entries a reader ignores
    /// (starting with `.`, empty base, containing `/`, CR or LF).
    pub fn parse(entry: &str) -> Option<FileName> {
        if entry.starts_with('.') || entry.contains(['/', '\r', '\n']) {
            return None;
        }
        let (base, info) = match entry.find(':') {
            Some(i) => (&entry[..i], &entry[i..]),
            None => (entry, ""),
        };
        if base.is_empty() {
            return None;
        }
        Some(FileName {
            base: base.to_string(),
            info: info.to_string(),
        })
    }

    /// The full entry name.
    pub fn to_entry(&self) -> String {
        format!("{}{}", self.base, self.info)
    }

    /// The flag letters of a `:2,` info (empty for no or another info).
    pub fn flag_letters(&self) -> &str {
        match self.info.strip_prefix(":2,") {
            Some(rest) => rest.split(',').next().unwrap_or(""),
            None => "",
        }
    }

    /// The system flags in the name.
    pub fn system_flags(&self) -> SystemFlags {
        let mut f = SystemFlags::empty();
        for c in self.flag_letters().chars() {
            if let Some(s) = letter_flag(c) {
                f.insert(s);
            }
        }
        f
    }

    /// Keyword indexes 0..=25 in the name, ascending.
    pub fn keyword_indexes(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .flag_letters()
            .bytes()
            .filter(u8::is_ascii_lowercase)
            .map(|c| c - b'a')
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Letters we do not interpret (`P`, unknown upper-case), kept verbatim.
    pub fn other_letters(&self) -> String {
        self.flag_letters()
            .chars()
            .filter(|&c| letter_flag(c).is_none() && !c.is_ascii_lowercase())
            .collect()
    }

    /// The same file with these flags and keyword indexes: known letters
    /// replaced, others kept, all in ASCII order (as Dovecot writes them),
    /// a trailing `,`-info kept. No flags at all in a name that had no
    /// info keeps it without info.
    pub fn with_flags(&self, flags: SystemFlags, keywords: &[u8]) -> FileName {
        let mut letters: Vec<char> = self.other_letters().chars().collect();
        for (s, c) in FLAG_LETTERS {
            if flags.contains(s) {
                letters.push(c);
            }
        }
        letters.extend(
            keywords
                .iter()
                .filter(|&&k| k < 26)
                .map(|&k| (b'a' + k) as char),
        );
        letters.sort_unstable();
        letters.dedup();
        let tail = match self.info.strip_prefix(":2,") {
            Some(rest) => rest.find(',').map(|i| &rest[i..]).unwrap_or(""),
            None => "",
        };
        let info = if letters.is_empty() && tail.is_empty() && self.info.is_empty() {
            String::new()
        } else {
            format!(":2,{}{}", letters.into_iter().collect::<String>(), tail)
        };
        FileName {
            base: self.base.clone(),
            info,
        }
    }
}

const FLAG_LETTERS: [(SystemFlags, char); 5] = [
    (SystemFlags::DRAFT, 'D'),
    (SystemFlags::FLAGGED, 'F'),
    (SystemFlags::ANSWERED, 'R'),
    (SystemFlags::SEEN, 'S'),
    (SystemFlags::DELETED, 'T'),
];

fn letter_flag(c: char) -> Option<SystemFlags> {
    FLAG_LETTERS.iter().find(|(_, l)| *l == c).map(|(s, _)| *s)
}

/// A `,<key>=<digits>` size field in a base name, as Dovecot parses it:
/// the digits must end at `,`, `:` or the end.
pub fn size_field(base: &str, key: char) -> Option<u64> {
    let pat = format!(",{key}=");
    let mut from = 0;
    while let Some(i) = base[from..].find(&pat) {
        let start = from + i + pat.len();
        let digits: &str = &base[start..];
        let n = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        let after = digits[n..].chars().next();
        if n > 0 && matches!(after, None | Some(',') | Some(':')) {
            return digits[..n].parse().ok();
        }
        from = start;
    }
    None
}

/// The order Dovecot gives files without a uidlist line: leading decimal
/// seconds, then the number after `M` in the second dot field, then the
/// base name.
pub fn new_file_order(base: &str) -> (u64, u64, String) {
    let secs_len = base
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(base.len());
    let secs = base[..secs_len].parse().unwrap_or(0);
    let usecs = base
        .split('.')
        .nth(1)
        .and_then(|f| f.strip_prefix('M'))
        .map(|f| {
            let n = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            f[..n].parse().unwrap_or(0)
        })
        .unwrap_or(0);
    (secs, usecs, base.to_string())
}

/// Dovecot's host part of a base name: `/` and `:` escaped as `\057` and
/// `\072` so the name stays one path component without an info part.
pub fn escape_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_dovecot_order() {
        let f = FileName::parse("1.M1P1.h,S=3,W=4:2,P").unwrap();
        let g = f.with_flags(SystemFlags::empty(), &[1]);
        assert_eq!(g.to_entry(), "1.M1P1.h,S=3,W=4:2,Pb");
        let h = FileName::parse("x").unwrap().with_flags(
            SystemFlags::SEEN | SystemFlags::FLAGGED | SystemFlags::DRAFT,
            &[2, 0],
        );
        assert_eq!(h.to_entry(), "x:2,DFSac");
        assert_eq!(
            h.system_flags(),
            SystemFlags::SEEN | SystemFlags::FLAGGED | SystemFlags::DRAFT
        );
        assert_eq!(h.keyword_indexes(), vec![0, 2]);
        let t = FileName::parse("x:2,S,extra").unwrap();
        assert_eq!(
            t.with_flags(SystemFlags::ANSWERED, &[]).to_entry(),
            "x:2,R,extra"
        );
        let n = FileName::parse("x")
            .unwrap()
            .with_flags(SystemFlags::empty(), &[]);
        assert_eq!(n.to_entry(), "x");
    }

    #[test]
    fn sizes_and_order() {
        assert_eq!(size_field("1.M1P1.h,S=335,W=345", 'S'), Some(335));
        assert_eq!(size_field("1.M1P1.h,S=335,W=345", 'W'), Some(345));
        assert_eq!(size_field("1.M1P1.h,S=33x", 'S'), None);
        assert!(new_file_order("1893456005.M600000P1.h") > new_file_order("1893456005.M50000P1.h"));
        assert!(FileName::parse(".hidden").is_none());
        assert!(FileName::parse(":2,S").is_none());
    }
}
