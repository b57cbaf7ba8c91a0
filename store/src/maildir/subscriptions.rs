//! The root `subscriptions` file, version 2 as Dovecot 2.3 writes it:
//! `V\t2\n\n` then one name per line, its storage (modified UTF-7) parts
//! joined by TAB, each part tab-escaped (`\001` → `\0011`, TAB → `\001t`,
//! LF → `\001n`, CR → `\001r`). A file without that header is version 1:
//! one name per line with the Maildir++ `.` separator. Order is append
//! order. This module never touches the file system.

use super::name::{Name, NameError};

/// Parse the file; entries that are not valid names are returned as errors
/// so the caller can log them (Dovecot keeps them; we keep them too when
/// rewriting, see [`Subscriptions::raw`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    /// The lines (storage form, TAB-joined escaped parts), in file order.
    raw: Vec<String>,
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1}' {
            match it.next() {
                Some('1') => out.push('\u{1}'),
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\u{1}' => out.push_str("\u{1}1"),
            '\t' => out.push_str("\u{1}t"),
            '\n' => out.push_str("\u{1}n"),
            '\r' => out.push_str("\u{1}r"),
            c => out.push(c),
        }
    }
    out
}

impl Subscriptions {
    /// Parse either version.
    pub fn parse(text: &str) -> Subscriptions {
        let (v2, body) = match text.strip_prefix("V\t2\n") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut raw = Vec::new();
        for line in body.split('\n').filter(|l| !l.is_empty()) {
            if v2 {
                raw.push(line.to_string());
            } else {
                raw.push(line.split('.').map(escape).collect::<Vec<_>>().join("\t"));
            }
        }
        Subscriptions { raw }
    }

    /// The raw lines.
    pub fn raw(&self) -> &[String] {
        &self.raw
    }

    /// The subscribed names, in file order; invalid entries as errors.
    pub fn names(&self) -> Vec<Result<Name, NameError>> {
        self.raw
            .iter()
            .map(|l| {
                let parts: Vec<String> = l.split('\t').map(unescape).collect();
                Name::from_storage_parts(parts.iter().map(String::as_str))
            })
            .collect()
    }

    fn line_of(name: &Name) -> String {
        name.storage_parts()
            .iter()
            .map(|p| escape(p))
            .collect::<Vec<_>>()
            .join("\t")
    }

    /// Whether a name is subscribed.
    pub fn contains(&self, name: &Name) -> bool {
        self.raw.contains(&Subscriptions::line_of(name))
    }

    /// Subscribe (append) or unsubscribe (drop the line); returns whether
    /// anything changed.
    pub fn set(&mut self, name: &Name, subscribed: bool) -> bool {
        let line = Subscriptions::line_of(name);
        let has = self.raw.contains(&line);
        if subscribed && !has {
            self.raw.push(line);
            true
        } else if !subscribed && has {
            self.raw.retain(|l| *l != line);
            true
        } else {
            false
        }
    }

    /// The version 2 text.
    pub fn to_text(&self) -> String {
        let mut s = String::from("V\t2\n\n");
        for l in &self.raw {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_file() {
        let t = "V\t2\n\nFolder\tChild\nCaf&AOk-\n";
        let s = Subscriptions::parse(t);
        let names: Vec<String> = s
            .names()
            .into_iter()
            .map(|n| n.unwrap().to_string())
            .collect();
        assert_eq!(names, ["Folder/Child", "Café"]);
        assert_eq!(s.to_text(), t);
        let mut v1 = Subscriptions::parse("Work\nWork.Sub\n");
        assert!(v1.contains(&Name::new("Work/Sub").unwrap()));
        assert!(v1.set(&Name::new("INBOX").unwrap(), true));
        assert!(v1.set(&Name::new("Work").unwrap(), false));
        assert_eq!(v1.to_text(), "V\t2\n\nWork\tSub\nINBOX\n");
    }
}
