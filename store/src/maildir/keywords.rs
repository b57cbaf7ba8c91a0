//! `dovecot-keywords`: which keyword a filename letter `a`..`z` stands for
//! in one mailbox.
//!
//! Format: `<index> <name>` per line, index 0..=25 (letter `a` + index).
//! Lines without a space, a bad index or a duplicate name are ignored, as
//! Dovecot ignores them. New keywords take the lowest free index. Keyword
//! names compare case-insensitively (IMAP), keeping the first spelling.
//! This module never touches the file system.

use engine::model::Keyword;

/// Most keywords a Maildir file name can carry (`a`..`z`).
pub const SLOTS: usize = 26;

/// The keyword table of one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keywords {
    slots: [Option<Keyword>; SLOTS],
}

impl Keywords {
    /// Parse the file's text.
    pub fn parse(text: &str) -> Keywords {
        let mut k = Keywords::default();
        for line in text.lines() {
            let Some((idx, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(i) = idx.parse::<usize>() else {
                continue;
            };
            let Ok(kw) = Keyword::new(name) else {
                continue;
            };
            if i < SLOTS && k.slots[i].is_none() && k.index_of(&kw).is_none() {
                k.slots[i] = Some(kw);
            }
        }
        k
    }

    /// The keyword at an index.
    pub fn get(&self, index: u8) -> Option<&Keyword> {
        self.slots.get(index as usize).and_then(Option::as_ref)
    }

    /// The index of a keyword (case-insensitive).
    pub fn index_of(&self, kw: &Keyword) -> Option<u8> {
        self.slots
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|x| x.as_bytes().eq_ignore_ascii_case(kw.as_bytes()))
            })
            .map(|i| i as u8)
    }

    /// The index of a keyword, adding it at the lowest free index if new;
    /// `None` if all 26 are taken.
    pub fn intern(&mut self, kw: &Keyword) -> Option<u8> {
        if let Some(i) = self.index_of(kw) {
            return Some(i);
        }
        let i = self.slots.iter().position(Option::is_none)?;
        self.slots[i] = Some(kw.clone());
        Some(i as u8)
    }

    /// The file text, lines in index order.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (i, k) in self.slots.iter().enumerate() {
            if let Some(k) = k {
                s.push_str(&format!("{i} {k}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_intern_print() {
        let mut k = Keywords::parse("0 MyKw\n1 $Label1\nbogus\n30 Far\n2 mykw\n");
        assert_eq!(k.get(1).unwrap().to_string(), "$Label1");
        assert!(k.get(2).is_none());
        assert_eq!(k.intern(&Keyword::new("NewKw").unwrap()), Some(2));
        assert_eq!(k.intern(&Keyword::new("mykw").unwrap()), Some(0));
        assert_eq!(k.to_text(), "0 MyKw\n1 $Label1\n2 NewKw\n");
    }
}
