//! `verify`: rehash every message, check the index against itself and the
//! files, and report each problem with the mailbox and UID it affects.
//! `digest`: a canonical, sorted, diffable listing of the mail.
//!
//! Both read through one read-only connection inside one read transaction,
//! so they see a single committed state while a server keeps writing. They
//! never repair anything: a report is for an operator to act on.

use super::blobs::{self, Partitions};
use super::error::{Error, Result};
use super::rows::{record_row, RECORD_COLS};
use engine::model::{Guid, Record, SyncCrcs, SystemFlags};
use rusqlite::{params, Connection};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::Path;

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The mailbox affected (escaped name), if any.
    pub mailbox: Option<String>,
    /// The record affected, if any.
    pub uid: Option<u32>,
    /// The message affected, if any.
    pub guid: Option<String>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.mailbox {
            write!(f, "mailbox {m} ")?;
        }
        if let Some(u) = self.uid {
            write!(f, "uid {u} ")?;
        }
        if let Some(g) = &self.guid {
            write!(f, "guid {g} ")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every problem, in the order found (index, messages, records, mailboxes).
    pub problems: Vec<Problem>,
    /// Oddities that are not damage but break a Cyrus invariant a peer may
    /// rely on (a UID above LAST_UID): the store keeps whatever batches
    /// said, so these are the writer's doing.
    pub warnings: Vec<Problem>,
    /// Mailboxes checked.
    pub mailboxes: u64,
    /// Records checked.
    pub records: u64,
    /// Message files rehashed.
    pub messages: u64,
    /// Bytes rehashed.
    pub message_bytes: u64,
    /// Stored messages no record refers to (not a problem: a cleanup may
    /// remove them).
    pub unreferenced_messages: u64,
    /// Files in the fan-out directories that the index does not know
    /// (not a problem: left by a crash between publishing bytes and the
    /// commit that would have referred to them).
    pub stray_files: u64,
}

impl Report {
    /// No problem found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Escapes a name for reports and digests: printable ASCII but `\` as is,
/// everything else `\xNN`.
pub(crate) fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if (0x21..0x7f).contains(&c) && c != b'\\' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

fn problem(
    mailbox: Option<&[u8]>,
    uid: Option<u32>,
    guid: Option<&Guid>,
    what: impl Into<String>,
) -> Problem {
    Problem {
        mailbox: mailbox.map(escape),
        uid,
        guid: guid.map(Guid::to_hex),
        what: what.into(),
    }
}

pub(crate) fn run(conn: &Connection, partitions: &Partitions, path: &Path) -> Result<Report> {
    let tx = conn.unchecked_transaction()?;
    let c = &*tx;
    let mut rep = Report::default();

    // 1. SQLite's own view of the file.
    {
        let mut st = c.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = st
            .query_map([], |r| r.get(0))
            .map_err(|e| super::schema::corrupt(path, e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| super::schema::corrupt(path, e))?;
        for l in lines.into_iter().filter(|l| l != "ok") {
            rep.problems
                .push(problem(None, None, None, format!("index: {l}")));
        }
    }

    // 2. Every message file: present, right size, hashes to its GUID.
    let mut known = BTreeSet::new();
    {
        let mut st = c.prepare("SELECT guid, partition, size FROM messages ORDER BY guid")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let g: Vec<u8> = r.get(0)?;
            let partition: String = r.get(1)?;
            let size = r.get::<_, i64>(2)? as u64;
            let Ok(g) = <[u8; 20]>::try_from(g.as_slice()) else {
                rep.problems.push(problem(
                    None,
                    None,
                    None,
                    "index: a message row has a malformed GUID",
                ));
                continue;
            };
            let guid = Guid::from_bytes(g);
            known.insert(guid);
            rep.messages += 1;
            let damage = match partitions.message_path(&partition, &guid) {
                Err(_) => Some(format!("partition {partition:?} is not configured")),
                Ok(p) => match blobs::hash_file(&p) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Some(format!("message file {} is missing", p.display()))
                    }
                    Err(e) => Some(format!("message file {} unreadable: {e}", p.display())),
                    Ok((_, len)) if len != size => Some(format!(
                        "message file {} has {len} bytes, index says {size} (truncated or extended)",
                        p.display()
                    )),
                    Ok((h, len)) => {
                        rep.message_bytes += len;
                        (&h != guid.as_bytes()).then(|| {
                            format!("message file {} does not hash to its GUID", p.display())
                        })
                    }
                },
            };
            if let Some(what) = damage {
                let users = records_with(c, &guid)?;
                if users.is_empty() {
                    rep.problems
                        .push(problem(None, None, Some(&guid), what.clone()));
                }
                for (name, uid) in users {
                    rep.problems
                        .push(problem(Some(&name), Some(uid), Some(&guid), what.clone()));
                }
            }
        }
    }

    // 3. Records: their mailbox exists; live ones have their bytes; UIDs
    //    within LAST_UID. 4. Each mailbox's stored CRCs equal a recount.
    let mut referenced = BTreeSet::new();
    {
        let orphans: i64 = c.query_row(
            "SELECT count(*) FROM records WHERE mailbox_id NOT IN (SELECT id FROM mailboxes)",
            [],
            |r| r.get(0),
        )?;
        if orphans > 0 {
            rep.problems.push(problem(
                None,
                None,
                None,
                format!("index: {orphans} records belong to no mailbox"),
            ));
        }
        let mut st = c.prepare(
            "SELECT id, name, last_uid, sync_crc, sync_crc_annot FROM mailboxes ORDER BY name",
        )?;
        let mbs: Vec<(i64, Vec<u8>, i64, i64, i64)> = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let sql = format!("SELECT {RECORD_COLS} FROM records WHERE mailbox_id = ?1 ORDER BY uid");
        let mut rs = c.prepare(&sql)?;
        for (id, name, last_uid, crc, crc_annot) in mbs {
            rep.mailboxes += 1;
            let mut crcs = SyncCrcs::EMPTY;
            let mut rows = rs.query([id])?;
            while let Some(r) = rows.next()? {
                rep.records += 1;
                let rec = match record_row(r) {
                    Ok(rec) => rec,
                    Err(e) => {
                        let uid: Option<i64> = r.get(0).ok();
                        rep.problems.push(problem(
                            Some(&name),
                            uid.map(|u| u as u32),
                            None,
                            format!("index: unreadable record: {e}"),
                        ));
                        continue;
                    }
                };
                crcs.toggle(&rec);
                referenced.insert(rec.guid);
                if !rec.expunged && !known.contains(&rec.guid) {
                    rep.problems.push(problem(
                        Some(&name),
                        Some(rec.uid.get()),
                        Some(&rec.guid),
                        "live record refers to a message the store does not hold",
                    ));
                }
                if i64::from(rec.uid.get()) > last_uid {
                    rep.warnings.push(problem(
                        Some(&name),
                        Some(rec.uid.get()),
                        None,
                        format!("UID above the mailbox's LAST_UID {last_uid}"),
                    ));
                }
            }
            if crcs.basic != crc as u32 || crcs.annot != crc_annot as u32 {
                rep.problems.push(problem(
                    Some(&name),
                    None,
                    None,
                    format!(
                        "stored SYNC_CRC {}/{} but the records give {}/{}",
                        crc as u32, crc_annot as u32, crcs.basic, crcs.annot
                    ),
                ));
            }
        }
    }
    rep.unreferenced_messages = known.difference(&referenced).count() as u64;

    // 5. Files the index does not know.
    for part in partitions.names() {
        for i in 0..=255u8 {
            let dir = match partitions.message_path(part, &Guid::from_bytes([i; 20])) {
                Ok(p) => p.parent().map(Path::to_path_buf),
                Err(_) => None,
            };
            let Some(dir) = dir else { continue };
            let Ok(entries) = std::fs::read_dir(&dir) else {
                rep.problems.push(problem(
                    None,
                    None,
                    None,
                    format!(
                        "fan-out directory {} is missing or unreadable",
                        dir.display()
                    ),
                ));
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let known_file = name
                    .to_str()
                    .and_then(|n| Guid::parse(n.as_bytes()).ok())
                    .is_some_and(|g| known.contains(&g));
                if !known_file {
                    rep.stray_files += 1;
                }
            }
        }
    }
    Ok(rep)
}

/// (mailbox name, uid) of every record naming `guid`.
fn records_with(c: &Connection, guid: &Guid) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut st = c.prepare_cached(
        "SELECT m.name, r.uid FROM records r JOIN mailboxes m ON m.id = r.mailbox_id \
         WHERE r.guid = ?1 ORDER BY m.name, r.uid",
    )?;
    let rows = st.query_map(params![&guid.as_bytes()[..]], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u32))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn flags_text(r: &Record) -> String {
    let mut parts: Vec<String> = Vec::new();
    for f in SystemFlags::CYRUS_ORDER {
        if r.flags.system.contains(f) {
            parts.push(f.name().unwrap_or("?").to_owned());
        }
    }
    if r.expunged {
        parts.push("\\Expunged".to_owned());
    }
    // Canonical: keywords lower-cased and sorted.
    for k in r.flags.folded_keywords() {
        parts.push(escape(&k));
    }
    parts.join(" ")
}

/// Writes the digest: per mailbox (by name) one line, then one line per
/// record (by UID). SYNC_CRC is recomputed from the records, so two stores
/// with the same mail print the same bytes.
pub(crate) fn digest(conn: &Connection, out: &mut dyn Write) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let c = &*tx;
    let io = |e: std::io::Error| Error::io("<digest output>", e);
    let mut st = c.prepare(
        "SELECT id, name, uniqueid, uidvalidity, highestmodseq, last_uid FROM mailboxes ORDER BY name",
    )?;
    let mbs: Vec<(i64, Vec<u8>, Vec<u8>, i64, i64, i64)> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let sql = format!("SELECT {RECORD_COLS} FROM records WHERE mailbox_id = ?1 ORDER BY uid");
    let mut rs = c.prepare(&sql)?;
    for (id, name, uniqueid, uidvalidity, hms, last_uid) in mbs {
        let records: Vec<Record> = rs
            .query_map([id], record_row)?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::CorruptIndex {
                path: "<index>".into(),
                problem: format!("mailbox {}: {e}", escape(&name)),
            })?;
        let crcs = SyncCrcs::of_records(&records);
        writeln!(
            out,
            "MAILBOX {} UNIQUEID {} UIDVALIDITY {uidvalidity} HIGHESTMODSEQ {} LAST_UID {last_uid} SYNC_CRC {} SYNC_CRC_ANNOT {}",
            escape(&name),
            escape(&uniqueid),
            hms as u64,
            crcs.basic,
            crcs.annot
        )
        .map_err(io)?;
        for r in &records {
            writeln!(
                out,
                "  UID {} GUID {} MODSEQ {} SIZE {} FLAGS ({})",
                r.uid,
                r.guid,
                r.modseq,
                r.size,
                flags_text(r)
            )
            .map_err(io)?;
        }
    }
    Ok(())
}
