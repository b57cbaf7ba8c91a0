//! Removing message files no record refers to (`corvid store gc`).
//!
//! The store never deletes bytes while it serves (a record may come back:
//! Cyrus's `sync_client` reserves by GUID and links later), so expunged and
//! deleted mail leaves unreferenced messages behind, and a crash between
//! publishing files and committing the index leaves stray files. `gc`
//! removes both, safely:
//!
//! * It runs on a writer ([`Embedded`]) opened with `Options::exclusive`,
//!   which holds the store's lock alone: no server runs beside it and no group commit is in progress (it refuses to
//!   start inside an unsynced transaction).
//! * A message still staged in this process (an upload waiting for the
//!   batch that links it) is never removed, nor its file.
//! * The index rows go first, in one durable transaction; only then are the
//!   files removed. A crash in between leaves stray files, which the next
//!   `gc` removes — never a row without its file.
//!
//! What it never does: touch a message some record refers to, or a file
//! outside the partitions' fan-out directories.

use super::{blobs, Embedded, Error, Result};
use engine::model::Guid;
use std::collections::HashMap;
use std::path::Path;

/// What a [`Embedded::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Index rows (and their files) of messages no record referred to.
    pub messages_removed: u64,
    /// Their bytes.
    pub message_bytes_removed: u64,
    /// Files the index did not know (crash leftovers).
    pub stray_files_removed: u64,
    /// Unreferenced messages kept because an upload of the same GUID is
    /// staged and waiting for its batch.
    pub kept_staged: u64,
}

impl Embedded {
    /// Removes unreferenced messages and stray files; see the module doc.
    pub fn gc(&mut self) -> Result<GcReport> {
        if !self.options.exclusive {
            // Another writer could be linking a message gc is removing.
            return Err(Error::Config(
                "gc needs the store opened exclusively (Options::exclusive)".into(),
            ));
        }
        if self.in_tx {
            return Err(Error::Config(
                "gc with an unsynced batch in progress: sync first".into(),
            ));
        }
        let mut rep = GcReport::default();
        // 1. The rows, in one durable transaction.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let doomed = match self.gc_rows(&mut rep) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        self.conn.execute_batch("COMMIT")?;
        // 2. Their files, now that nothing can refer to them.
        let mut dirs = std::collections::BTreeSet::new();
        for (guid, partition) in &doomed {
            let path = self
                .reader
                .shared
                .partitions
                .message_path(partition, guid)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        // 3. Files the index does not know (in that partition).
        let known: HashMap<Guid, String> = {
            let mut st = self.conn.prepare("SELECT guid, partition FROM messages")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut m = HashMap::new();
            for row in rows {
                let (g, p) = row?;
                if let Ok(b) = <[u8; 20]>::try_from(g.as_slice()) {
                    m.insert(Guid::from_bytes(b), p);
                }
            }
            m
        };
        let names: Vec<String> = self
            .reader
            .shared
            .partitions
            .names()
            .map(str::to_owned)
            .collect();
        for part in &names {
            for i in 0..=255u8 {
                let probe = self
                    .reader
                    .shared
                    .partitions
                    .message_path(part, &Guid::from_bytes([i; 20]))?;
                let Some(dir) = probe.parent() else { continue };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name();
                    let Some(guid) = name.to_str().and_then(|n| Guid::parse(n.as_bytes()).ok())
                    else {
                        continue; // not a message file name: not ours to judge
                    };
                    if known.get(&guid).is_some_and(|p| p == part)
                        || self.area.lookup(&guid).is_some()
                    {
                        continue;
                    }
                    let path = e.path();
                    std::fs::remove_file(&path).map_err(|x| Error::io(&path, x))?;
                    rep.stray_files_removed += 1;
                    dirs.insert(dir.to_path_buf());
                }
            }
        }
        for d in &dirs {
            sync_dir_quiet(d);
        }
        Ok(rep)
    }

    /// Deletes the rows of unreferenced, unstaged messages; returns them.
    fn gc_rows(&mut self, rep: &mut GcReport) -> Result<Vec<(Guid, String)>> {
        let candidates: Vec<(Vec<u8>, String, i64)> = {
            let mut st = self.conn.prepare(
                "SELECT guid, partition, size FROM messages m \
                 WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.guid = m.guid)",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut doomed = Vec::new();
        for (g, partition, size) in candidates {
            let Ok(b) = <[u8; 20]>::try_from(g.as_slice()) else {
                continue; // verify reports a malformed row; gc leaves it
            };
            let guid = Guid::from_bytes(b);
            if self.area.lookup(&guid).is_some() {
                rep.kept_staged += 1;
                continue;
            }
            self.conn
                .execute("DELETE FROM messages WHERE guid = ?1", [&g])?;
            rep.messages_removed += 1;
            rep.message_bytes_removed += size.max(0) as u64;
            doomed.push((guid, partition));
        }
        Ok(doomed)
    }
}

/// Makes removals durable where possible; a failure only means a removed
/// file may reappear after a crash, and the next gc removes it again.
fn sync_dir_quiet(d: &Path) {
    let _ = blobs::sync_dir(d);
}
