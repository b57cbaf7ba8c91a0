//! The rolling replication log, in Cyrus's `sync_log` line format.
//!
//! # Where the log lives, and why there twice
//!
//! The source of truth is the SQLite table `sync_log`: a batch's
//! `AppendSyncLog` mutations land *in the batch's own transaction*, so a
//! committed change always has its line and a rolled-back one never does
//! (Cyrus writes the line after the change; a crash in between loses it and
//! relies on a later full USER sync). corvid's rolling client reads it
//! through `MailRead::sync_log` and trims it with `TrimSyncLog`.
//!
//! With `Options::sync_log_files`, every committed line is also appended
//! to the files Cyrus uses, `{configdirectory}/sync/log` for the default
//! channel and `{configdirectory}/sync/<channel>/log` for each named one,
//! with Cyrus's writer procedure: open append/create (mode 0640), take an
//! exclusive lock, check the locked inode is still the one at the path (a
//! reader may have renamed it to `log-run`), write, fsync, unlock. So any
//! tool that reads Cyrus logs can follow a corvid store. How far the files
//! got is recorded in the *next* transaction (or at a clean close), never
//! in an extra commit; a crash in between appends those lines again, which
//! is harmless because a sync_log line only names something to
//! resynchronise.
//!
//! # Line format (`imap/sync_log.c`, 3.6.1)
//!
//! `TYPE SP arg [SP arg] LF`. An argument is written bare unless it is empty
//! (`""`) or contains SP, TAB, `(`, `)` (then it is double-quoted) or
//! `\`, `"`, `{`, `}` (backslash-escaped and quoted). CR or LF in a name is
//! fatal in Cyrus; here it refuses the batch. Sieve changes are logged as
//! `META userid`, as Cyrus's writers do (`SIEVE` is only a reader synonym).
//!
//! This module never decides which changes deserve a line (the batch
//! says so); [`parse`] exists for tests and tools.

use super::error::{Error, Result};
use super::rows;
use engine::model::SyncLogLine;
use engine::store::StoreError;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The exact bytes Cyrus writes for `line`, LF-terminated (three lines for
/// a rename, as Cyrus's `sync_log_rename` writes `RENAME` then both
/// `MAILBOX` lines).
pub fn encode(line: &SyncLogLine) -> Result<Vec<u8>, StoreError> {
    let (ty, a, b) = rows::encode_line(line)?;
    let mut out = Vec::new();
    match b {
        None => one(&mut out, ty, &a),
        Some(b) => {
            two(&mut out, ty, &a, &b);
            if ty == "RENAME" {
                one(&mut out, "MAILBOX", &a);
                one(&mut out, "MAILBOX", &b);
            }
        }
    }
    Ok(out)
}

fn one(out: &mut Vec<u8>, ty: &str, a: &[u8]) {
    out.extend_from_slice(ty.as_bytes());
    out.push(b' ');
    quote(out, a);
    out.push(b'\n');
}

fn two(out: &mut Vec<u8>, ty: &str, a: &[u8], b: &[u8]) {
    out.extend_from_slice(ty.as_bytes());
    out.push(b' ');
    quote(out, a);
    out.push(b' ');
    quote(out, b);
    out.push(b'\n');
}

/// Cyrus's `sync_quote_name`. The model's names cannot hold CR or LF
/// (Cyrus would die on them), so no line can be split.
fn quote(out: &mut Vec<u8>, name: &[u8]) {
    debug_assert!(!name.contains(&b'\r') && !name.contains(&b'\n'));
    let needs = name.is_empty()
        || name
            .iter()
            .any(|c| matches!(c, b' ' | b'\t' | b'(' | b')' | b'\\' | b'"' | b'{' | b'}'));
    if !needs {
        out.extend_from_slice(name);
        return;
    }
    out.push(b'"');
    for &c in name {
        if matches!(c, b'\\' | b'"' | b'{' | b'}') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// Parses one log line the way Cyrus's reader does (a word, one or two
/// astrings, optional CR, LF), returning (TYPE upper-cased, args). For
/// tests and tools; `None` for a line Cyrus would skip as malformed.
pub fn parse(line: &str) -> Option<(String, Vec<String>)> {
    // Cyrus's reader takes one or two astrings after the type word.
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (ty, mut rest) = line.split_once(' ')?;
    if ty.is_empty() {
        return None;
    }
    let mut args = Vec::new();
    while args.len() < 2 {
        let (arg, after) = astring(rest)?;
        args.push(arg);
        match after.strip_prefix(' ') {
            Some(r) if args.len() < 2 => rest = r,
            _ if after.is_empty() => return Some((ty.to_ascii_uppercase(), args)),
            _ => return None,
        }
    }
    None
}

fn astring(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &body[i + 1..])),
                '\\' => out.push(chars.next()?.1),
                c => out.push(c),
            }
        }
        None
    } else {
        let end = s.find([' ', '\r', '\n']).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((s[..end].to_owned(), &s[end..]))
    }
}

/// A log channel: the default one (`""` in `sync_log_channels`) or a named one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `{configdirectory}/sync/log`.
    Default,
    /// `{configdirectory}/sync/<name>/log`.
    Named(String),
}

impl Channel {
    /// Parses `sync_log_channels` (space-separated; `""` is the default
    /// channel). An unset option means the default channel alone. Channel
    /// names come from the operator, but they become directory names, so
    /// anything with a `/` or a dot-only name is refused.
    pub fn parse_list(value: Option<&str>) -> Result<Vec<Channel>> {
        let Some(value) = value else {
            return Ok(vec![Channel::Default]);
        };
        let mut out = Vec::new();
        for word in value.split_ascii_whitespace() {
            let ch = if word == "\"\"" {
                Channel::Default
            } else if word.contains('/') || word.chars().all(|c| c == '.') || word.contains('\0') {
                return Err(Error::Config(format!(
                    "sync_log_channels: {word:?} cannot be a directory name"
                )));
            } else {
                Channel::Named(word.to_owned())
            };
            if !out.contains(&ch) {
                out.push(ch);
            }
        }
        Ok(out)
    }

    /// The name stored in the `sync_log` table (`""` for the default channel).
    pub fn key(&self) -> &str {
        match self {
            Channel::Default => "",
            Channel::Named(n) => n,
        }
    }

    /// The channel for a stored key.
    pub(crate) fn from_key(key: &str) -> Channel {
        if key.is_empty() {
            Channel::Default
        } else {
            Channel::Named(key.to_owned())
        }
    }

    /// The log file of this channel under `configdirectory`.
    pub fn path(&self, configdirectory: &Path) -> PathBuf {
        match self {
            Channel::Default => configdirectory.join("sync").join("log"),
            Channel::Named(n) => configdirectory.join("sync").join(n).join("log"),
        }
    }
}

/// How many times to reopen a log whose inode changed under us (Cyrus: 64).
const RETRIES: usize = 64;

/// Appends `text` to the channel's log file with Cyrus's writer procedure.
pub(crate) fn append(path: &Path, text: &[u8]) -> Result<()> {
    for _ in 0..RETRIES {
        let file = match open_append(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = path.parent().expect("log path has a parent");
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                open_append(path).map_err(|e| Error::io(path, e))?
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        file.lock().map_err(|e| Error::io(path, e))?;
        let same = match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            // A reader renamed the log to log-run between our open and our
            // lock; writing now would land in a file it has already read.
            drop(file);
            continue;
        }
        let mut f = &file;
        f.write_all(text)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(path, e))?;
        let _ = file.unlock();
        return Ok(());
    }
    Err(Error::io(
        path,
        std::io::Error::other("log file kept being renamed while locking it"),
    ))
}

fn open_append(path: &Path) -> std::io::Result<fs::File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::model::{MailboxName, UniqueId, UserId};
    use proptest::prelude::*;

    fn name(s: &str) -> MailboxName {
        MailboxName::new(s).unwrap()
    }

    fn enc(l: SyncLogLine) -> String {
        String::from_utf8(encode(&l).unwrap()).unwrap()
    }

    #[test]
    fn cyrus_quoting() {
        assert_eq!(
            enc(SyncLogLine::Mailbox(name("user.alice"))),
            "MAILBOX user.alice\n"
        );
        assert_eq!(
            enc(SyncLogLine::Mailbox(name("user.a b"))),
            "MAILBOX \"user.a b\"\n"
        );
        assert_eq!(enc(SyncLogLine::Annotation(None)), "ANNOTATION \"\"\n");
        assert_eq!(
            enc(SyncLogLine::Mailbox(name("a\\b{1}"))),
            "MAILBOX \"a\\\\b\\{1\\}\"\n"
        );
        assert_eq!(
            enc(SyncLogLine::Mailbox(name("x(y)"))),
            "MAILBOX \"x(y)\"\n"
        );
        assert_eq!(
            enc(SyncLogLine::Seen(
                UserId::new("alice").unwrap(),
                UniqueId::new("5f56").unwrap()
            )),
            "SEEN alice 5f56\n"
        );
        assert_eq!(
            enc(SyncLogLine::Rename(name("user.a.x"), name("user.a.y"))),
            "RENAME user.a.x user.a.y\nMAILBOX user.a.x\nMAILBOX user.a.y\n"
        );
        assert_eq!(
            enc(SyncLogLine::Meta(UserId::new("bob").unwrap())),
            "META bob\n"
        );
        assert_eq!(
            enc(SyncLogLine::Append(name("user.bob"))),
            "APPEND user.bob\n"
        );
    }

    #[test]
    fn channels() {
        assert_eq!(Channel::parse_list(None).unwrap(), vec![Channel::Default]);
        assert_eq!(
            Channel::parse_list(Some("squatter \"\" replica")).unwrap(),
            vec![
                Channel::Named("squatter".into()),
                Channel::Default,
                Channel::Named("replica".into())
            ]
        );
        // Listing a named channel drops the default one (Cyrus issue #2248).
        assert_eq!(
            Channel::parse_list(Some("replica")).unwrap(),
            vec![Channel::Named("replica".into())]
        );
        assert!(Channel::parse_list(Some("../etc")).is_err());
        assert!(Channel::parse_list(Some("..")).is_err());
        let dir = Path::new("/var/lib/imap");
        assert_eq!(
            Channel::Default.path(dir),
            Path::new("/var/lib/imap/sync/log")
        );
        assert_eq!(
            Channel::Named("r".into()).path(dir),
            Path::new("/var/lib/imap/sync/r/log")
        );
    }

    #[test]
    fn append_follows_a_renamed_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Channel::Named("r".into()).path(dir.path());
        append(&log, b"MAILBOX a\n").unwrap();
        // A reader takes the log away, as `sync_client -r` does.
        let run = log.with_file_name("log-run");
        fs::rename(&log, &run).unwrap();
        append(&log, b"MAILBOX b\n").unwrap();
        assert_eq!(fs::read_to_string(&run).unwrap(), "MAILBOX a\n");
        assert_eq!(fs::read_to_string(&log).unwrap(), "MAILBOX b\n");
    }

    proptest! {
        /// Whatever the names (short of line breaks), Cyrus's reader gets them back.
        #[test]
        fn encode_then_parse(a in "[!-~]{1,40}", b in "[ -~\t]{1,40}") {
            let text = enc(SyncLogLine::Sub(UserId::new(&a).unwrap(), name(&b)));
            prop_assert_eq!(parse(&text), Some(("SUB".to_owned(), vec![a, b])));
        }
    }
}
