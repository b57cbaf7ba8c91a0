//! `dovecot.mailbox.log`: Dovecot 2.3's binary log of mailbox-list
//! changes, read and written as Dovecot does, so that deletes, renames and
//! subscription changes made by either Dovecot or corvid keep their dates
//! and travel in dsync (`D` tombstones, `N` timestamps).
//!
//! Format (Dovecot `src/lib-index/mailbox-log.[ch]`): a flat file of
//! 24-byte records, no header: `type` (1 byte: 1 delete-mailbox, 2
//! delete-dir, 3 rename, 4 subscribe, 5 unsubscribe, 6 create-dir), 3
//! bytes of padding, a 16-byte GUID, the timestamp as 4 bytes big-endian.
//! The GUID is the mailbox GUID for delete-mailbox; for every other type
//! it is [`name_hash`] of the mailbox's (new) name, since a directory or
//! a subscription has no GUID. Writers append one record with one
//! `write()` (no lock, as Dovecot: records are all one size); when the
//! file reaches 4 KiB it is renamed to `dovecot.mailbox.log.2` (replacing
//! the older one), and readers read `.2` first, then the current file.
//!
//! What this module never does: interpret records (that is the maildir
//! model's job), delete a file it finds damaged (Dovecot unlinks a log
//! with an unknown record type; corvid stops reading it there and leaves
//! it to Dovecot), or hold more than [`LOG_RECORDS_MAX`] records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use engine::model::Guid;

/// The log's file name in the maildir root.
pub const FILE_NAME: &str = "dovecot.mailbox.log";
/// Size at which Dovecot rotates the log (`MAILBOX_LOG_ROTATE_SIZE`).
const ROTATE_BYTES: u64 = 4096;
/// One record.
const RECORD_BYTES: usize = 24;
/// Most records read from both files together; Dovecot's rotation keeps
/// them at about 340, so more means a file that is not a mailbox log.
pub const LOG_RECORDS_MAX: usize = 65_536;

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A mailbox was deleted; the GUID is the mailbox GUID.
    DeleteMailbox,
    /// A directory (a name without a mailbox) was deleted.
    DeleteDir,
    /// A mailbox was renamed to the hashed name.
    Rename,
    /// The hashed name was subscribed.
    Subscribe,
    /// The hashed name was unsubscribed.
    Unsubscribe,
    /// A directory was created.
    CreateDir,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::DeleteMailbox => 1,
            Kind::DeleteDir => 2,
            Kind::Rename => 3,
            Kind::Subscribe => 4,
            Kind::Unsubscribe => 5,
            Kind::CreateDir => 6,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::DeleteMailbox,
            2 => Kind::DeleteDir,
            3 => Kind::Rename,
            4 => Kind::Subscribe,
            5 => Kind::Unsubscribe,
            6 => Kind::CreateDir,
            _ => return None,
        })
    }
}

/// One record of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub kind: Kind,
    /// Mailbox GUID ([`Kind::DeleteMailbox`]) or [`name_hash`].
    pub guid: [u8; 16],
    /// When, Unix seconds (the format keeps 32 bits).
    pub timestamp: u32,
}

impl Record {
    /// The 24 bytes Dovecot writes.
    pub fn to_bytes(&self) -> [u8; RECORD_BYTES] {
        let mut b = [0u8; RECORD_BYTES];
        b[0] = self.kind.code();
        b[4..20].copy_from_slice(&self.guid);
        b[20..24].copy_from_slice(&self.timestamp.to_be_bytes());
        b
    }

    /// Decode one record; `None` for an unknown type (a damaged log).
    pub fn from_bytes(b: &[u8; RECORD_BYTES]) -> Option<Record> {
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&b[4..20]);
        Some(Record {
            kind: Kind::from_code(b[0])?,
            guid,
            timestamp: u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
        })
    }
}

/// Dovecot's `mailbox_name_get_sha128`: the first 16 bytes of the SHA-1
/// of the mailbox's virtual name (with the namespace separator, `/` for
/// corvid's maildirs).
pub fn name_hash(vname: &str) -> [u8; 16] {
    let g = Guid::of(vname.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&g.as_bytes()[..16]);
    out
}

/// Clamp a model timestamp into the log's 32 bits.
pub fn timestamp_of(unix: i64) -> u32 {
    unix.clamp(0, u32::MAX as i64) as u32
}

/// The log of one maildir root.
#[derive(Debug, Clone)]
pub struct MailboxLog {
    path: PathBuf,
    rotated: PathBuf,
}

impl MailboxLog {
    /// The log in `root` (it need not exist).
    pub fn at(root: &Path) -> MailboxLog {
        MailboxLog {
            path: root.join(FILE_NAME),
            rotated: root.join(format!("{FILE_NAME}.2")),
        }
    }

    /// Every record, oldest file first, in file order. A trailing partial
    /// record (a torn append) is ignored; reading a file stops at the
    /// first record of an unknown type.
    pub fn read(&self) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for p in [&self.rotated, &self.path] {
            let f = match File::open(p) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut bytes = Vec::new();
            let room = (LOG_RECORDS_MAX - out.len()) * RECORD_BYTES;
            f.take(room as u64 + 1).read_to_end(&mut bytes)?;
            if bytes.len() > room {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: more than {LOG_RECORDS_MAX} mailbox log records",
                        p.display()
                    ),
                ));
            }
            for chunk in bytes.chunks_exact(RECORD_BYTES) {
                let b: &[u8; RECORD_BYTES] = chunk.try_into().expect("exact chunk");
                match Record::from_bytes(b) {
                    Some(r) => out.push(r),
                    None => {
                        tracing::warn!(log = %p.display(), "damaged mailbox log record; ignoring the rest of the file");
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Append one record (one `write()`, then fsync, so a tombstone corvid
    /// reported is not lost), creating the file with the root directory's
    /// permissions, and rotate it as Dovecot does.
    pub fn append(&self, rec: &Record) -> io::Result<()> {
        let existed = self.path.exists();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)?;
        if !existed {
            if let Some(dir) = self.path.parent() {
                super::lock::like_dir(&self.path, dir)?;
            }
        }
        f.write_all(&rec.to_bytes())?;
        f.sync_data()?;
        if f.metadata()?.len() >= ROTATE_BYTES {
            fs::rename(&self.path, &self.rotated)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_bytes_are_dovecots_layout() {
        let r = Record {
            kind: Kind::Unsubscribe,
            guid: [0xab; 16],
            timestamp: 0x0102_0304,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[5, 0, 0, 0]);
        assert_eq!(&b[4..20], &[0xab; 16]);
        assert_eq!(&b[20..], &[1, 2, 3, 4]);
        assert_eq!(Record::from_bytes(&b), Some(r));
        let mut bad = b;
        bad[0] = 9;
        assert_eq!(Record::from_bytes(&bad), None);
    }

    #[test]
    fn name_hash_is_sha1_prefix_of_the_vname() {
        // SHA-1("INBOX") = 8a9a8a3d…; the hash keeps its first 16 bytes.
        let full = Guid::of(b"Work/Sub");
        assert_eq!(&name_hash("Work/Sub")[..], &full.as_bytes()[..16]);
        assert_ne!(name_hash("Work/Sub"), name_hash("Work.Sub"));
    }

    #[test]
    fn append_rotates_at_4k_and_read_sees_both_files_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let log = MailboxLog::at(tmp.path());
        assert!(log.read().unwrap().is_empty());
        for i in 0..200u32 {
            log.append(&Record {
                kind: Kind::Subscribe,
                guid: [i as u8; 16],
                timestamp: i,
            })
            .unwrap();
        }
        assert!(tmp.path().join("dovecot.mailbox.log.2").exists());
        let all = log.read().unwrap();
        // 4096 / 24 = 170.67: the 171st append rotated; 29 are in the new file.
        assert_eq!(all.len(), 200);
        let ts: Vec<u32> = all.iter().map(|r| r.timestamp).collect();
        assert_eq!(ts, (0..200).collect::<Vec<_>>());
        // A torn append (half a record) is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(tmp.path().join(FILE_NAME))
            .unwrap();
        f.write_all(&[4, 0, 0]).unwrap();
        assert_eq!(log.read().unwrap().len(), 200);
    }
}
