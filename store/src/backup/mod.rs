//! corvid's backup format: per-user, append-only journals of deltas plus
//! one message pack shared by all users — what `corvid backupd` writes
//! and `corvid backup …` reads, verifies, restores and compacts.
//!
//! # Layout
//!
//! ```text
//! <partition>/users/<user>.cvb     journal of one user (users spread over
//!                                  the backuppartition-* directories)
//! <partition>/users/<user>.lock    taken while appending or compacting
//! <first>/messages/ab/<guid>.zst   message bytes, once per GUID, zstd
//! <first>/index/<user>.idx         listing cache, keyed by journal length
//! ```
//!
//! * **Deltas** ([`ops`]): a journal records what changed — a mailbox's
//!   header, the records added or changed, purged UIDs, deletes, seen,
//!   subscriptions, quota, Sieve — never a mailbox's whole record list per
//!   change. One chunk per durable batch per user, stamped with its time.
//! * **Per user**: [`ops::ops_of_batch`] splits a batch by owner, so a
//!   user's backup holds that user's mail only (Cyrus 3.6.1 filed every
//!   user's mail into every backup open on the connection).
//! * **Dedup and compression**: bytes live in the [`Pack`] by GUID; two
//!   users (or two mailboxes, or two points in time) share one file.
//! * **Checksums** ([`chunk`]): every chunk carries a SHA-1-based sum of
//!   its header and payload; every pack file is named by the SHA-1 of its
//!   inflated bytes and its zstd frame carries a content checksum.
//! * **Crash safety**: bytes reach the pack (fsync, rename, fsync dir)
//!   before the chunk that names them is appended, and the chunk is
//!   fsynced before [`Backup::append`] returns, so an acknowledged change
//!   is never lost and never names missing bytes. A torn last chunk is the
//!   only damage a crash can cause; [`Backup::repair`] cuts it.
//! * **Index**: `backup list` reads a per-user summary cached under
//!   `index/`, valid while the journal has the length it records.
//! * **Retention** ([`Backup::compact`]): chunks older than the retention
//!   period are folded into one base chunk holding the state at the
//!   cutoff; every point in time from the cutoff on reads exactly as
//!   before. Pack files no journal names any more are then removed (after
//!   a grace period, since a writer stores bytes before their chunk).
//!
//! Format 2. Session 1's format (text journals under `journal/`, one full
//! mailbox per change) is not read: [`Backup::old_format_journals`] lists
//! such files so the tools can say so.
//!
//! What it never does: talk a protocol, or change a journal other than by
//! appending, cutting a torn tail, or an atomic compaction rewrite under
//! the user's lock.

pub mod chunk;
pub mod ops;
mod pack;
mod snapshot;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use engine::model::{Guid, UserId};

pub use chunk::{ChunkError, Tail};
pub use ops::{Op, OpError};
pub use pack::{Pack, PackError, PackWriter, Staged};
pub use snapshot::{Deleted, Snapshot};

/// A journal read back: each chunk's time and operations, in order.
pub type Chunks = Vec<(i64, Vec<Op>)>;

/// Where backups live and how they are written.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `backuppartition-*` directories, the first holding the pack and
    /// the index. Never empty.
    pub partitions: Vec<PathBuf>,
    /// zstd level for chunks and messages.
    pub zstd_level: i32,
    /// Largest inflated chunk a reader accepts (bounds memory whatever a
    /// damaged file says).
    pub chunk_bytes_max: u64,
    /// Pack commits of at least this many new messages flush the whole
    /// filesystem once ([`Pack::with_syncfs`]); `None`: fsync per file.
    pub pack_syncfs_min_files: Option<usize>,
}

impl Options {
    /// Defaults over these partitions.
    pub fn new(partitions: Vec<PathBuf>) -> Options {
        Options {
            partitions,
            zstd_level: 3,
            chunk_bytes_max: 512 << 20,
            pack_syncfs_min_files: None,
        }
    }
}

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Our caller's misuse: no partition configured.
    #[error("no backup partition configured")]
    NoPartition,
    /// A journal could not be read or written (disk, damage, old format).
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A chunk's operations could not be decoded (damage or a newer corvid).
    #[error("{path}: chunk at byte {offset}: {source}")]
    Op {
        /// The journal.
        path: PathBuf,
        /// The chunk.
        offset: u64,
        /// What is wrong.
        source: OpError,
    },
    /// The message pack failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Another file (lock, index, directory) failed: the disk's fault.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file-name form of a user (`None`: shared mailboxes): anything
/// outside `[A-Za-z0-9_@-]` and non-leading `.` becomes `%XX`, so a user
/// name never becomes a path.
pub fn file_stem(user: Option<&UserId>) -> String {
    let Some(user) = user else {
        return "%SHARED".into();
    };
    let mut name = String::new();
    for (i, &b) in user.as_bytes().iter().enumerate() {
        if b.is_ascii_alphanumeric() || b"_@-".contains(&b) || (b == b'.' && i > 0) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

/// The user a file stem names (inverse of [`file_stem`]).
pub fn user_of_stem(stem: &str) -> Option<Option<UserId>> {
    if stem == "%SHARED" {
        return Some(None);
    }
    let b = stem.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = stem.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(v, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    UserId::new(out).ok().map(Some)
}

/// One user's backup at a glance (what `backup list` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Chunks in the journal.
    pub chunks: u64,
    /// Time of the first and last chunk (0 if none).
    pub first_at: i64,
    /// See `first_at`.
    pub last_at: i64,
    /// Mailboxes now.
    pub mailboxes: u64,
    /// Live (not expunged) messages now.
    pub messages: u64,
    /// Their total size.
    pub message_bytes: u64,
    /// Mailboxes deleted over the journal's history.
    pub deleted: u64,
    /// Bytes of the journal file.
    pub journal_bytes: u64,
}

/// What [`Backup::verify`] found for one user.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Chunks read and checked.
    pub chunks: u64,
    /// Distinct messages checked in the pack.
    pub messages: u64,
    /// Problems, one line each.
    pub problems: Vec<String>,
}

/// What [`Backup::compact`] did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    /// Users whose journal was rewritten.
    pub users: u64,
    /// Chunks folded into base chunks.
    pub chunks_folded: u64,
    /// Journal bytes before and after.
    pub journal_bytes_before: u64,
    /// See `journal_bytes_before`.
    pub journal_bytes_after: u64,
    /// Pack files removed and their bytes.
    pub messages_removed: usize,
    /// See `messages_removed`.
    pub message_bytes_removed: u64,
}

/// A backup store: journals, pack and index under the partitions.
#[derive(Debug, Clone)]
pub struct Backup {
    opts: Options,
    pack: Pack,
}

impl Backup {
    /// The backup over `opts` (nothing is created until written).
    pub fn open(opts: Options) -> Result<Backup, BackupError> {
        let first = opts.partitions.first().ok_or(BackupError::NoPartition)?;
        let pack = Pack::new(first.join("messages"), opts.zstd_level)
            .with_syncfs(opts.pack_syncfs_min_files);
        Ok(Backup { opts, pack })
    }

    /// The message pack.
    pub fn pack(&self) -> &Pack {
        &self.pack
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn first(&self) -> &Path {
        &self.opts.partitions[0]
    }

    /// The journal of `user`: where it is if it exists, else where a new
    /// one goes (users spread over partitions by a hash of the name).
    pub fn journal_path(&self, user: Option<&UserId>) -> PathBuf {
        let stem = file_stem(user);
        let name = format!("{stem}.cvb");
        for p in &self.opts.partitions {
            let path = p.join("users").join(&name);
            if path.exists() {
                return path;
            }
        }
        // FNV-1a: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stem.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let p = &self.opts.partitions[(h % self.opts.partitions.len() as u64) as usize];
        p.join("users").join(name)
    }

    /// Every user with a journal, sorted (shared mailboxes as `None`).
    pub fn users(&self) -> Result<Vec<(Option<UserId>, PathBuf)>, BackupError> {
        let mut out = Vec::new();
        for p in &self.opts.partitions {
            let dir = p.join("users");
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".cvb") else {
                    continue;
                };
                if let Some(u) = user_of_stem(stem) {
                    out.push((u, e.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Journals of session 1's format found under the partitions.
    pub fn old_format_journals(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in &self.opts.partitions {
            if let Ok(rd) = std::fs::read_dir(p.join("journal")) {
                out.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "log")),
                );
            }
        }
        out.sort();
        out
    }

    fn lock(&self, journal: &Path) -> Result<File, BackupError> {
        let dir = journal.parent().expect("journal has a parent");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = journal.with_extension("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        f.lock().map_err(io(&path))?;
        Ok(f)
    }

    /// Appends one chunk of `ops` recorded at `at` to `user`'s journal,
    /// durable on return. The bytes of every live record named must
    /// already be in the pack.
    pub fn append(&self, user: Option<&UserId>, at: i64, ops: &[Op]) -> Result<(), BackupError> {
        if ops.is_empty() {
            return Ok(());
        }
        let raw = ops::encode(ops);
        let path = self.journal_path(user);
        let framed = chunk::frame(at, &raw, self.opts.zstd_level).map_err(io(&path))?;
        let _lock = self.lock(&path)?;
        chunk::append(&path, &framed)?;
        Ok(())
    }

    /// Every chunk of `user`'s journal, decoded, and how the file ends (a
    /// torn tail is skipped: a writer died mid-append, or is appending).
    pub fn read(&self, user: Option<&UserId>) -> Result<(Chunks, Tail), BackupError> {
        let path = self.journal_path(user);
        if !path.exists() {
            return Ok((Vec::new(), Tail::Clean));
        }
        self.read_path(&path, user)
    }

    fn read_path(&self, path: &Path, user: Option<&UserId>) -> Result<(Chunks, Tail), BackupError> {
        let (chunks, tail) = chunk::read(path, self.opts.chunk_bytes_max, false)?;
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let ops = ops::decode(&c.payload, user).map_err(|source| BackupError::Op {
                path: path.to_owned(),
                offset: c.offset,
                source,
            })?;
            out.push((c.at, ops));
        }
        Ok((out, tail))
    }

    /// `user`'s backup as it was at `at` (Unix seconds; `i64::MAX`: the
    /// latest).
    pub fn snapshot(&self, user: Option<&UserId>, at: i64) -> Result<Snapshot, BackupError> {
        let (chunks, _) = self.read(user)?;
        let mut s = Snapshot::new(user.cloned(), Some(self.pack.clone()));
        for (t, ops) in chunks.iter().filter(|(t, _)| *t <= at) {
            for op in ops {
                s.apply(*t, op);
            }
        }
        Ok(s)
    }

    /// The times of `user`'s chunks, in order (what `--at` can pick).
    pub fn times(&self, user: Option<&UserId>) -> Result<Vec<i64>, BackupError> {
        let path = self.journal_path(user);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let (chunks, _) = chunk::read(&path, self.opts.chunk_bytes_max, true)?;
        Ok(chunks.iter().map(|c| c.at).collect())
    }

    /// `user`'s summary, from the index when it is current, else computed
    /// (and the index refreshed when writable).
    pub fn summary(&self, user: Option<&UserId>) -> Result<Summary, BackupError> {
        let path = self.journal_path(user);
        let len = std::fs::metadata(&path).map_err(io(&path))?.len();
        let idx = self
            .first()
            .join("index")
            .join(format!("{}.idx", file_stem(user)));
        if let Ok(text) = std::fs::read_to_string(&idx) {
            let n: Vec<i64> = text
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            if text.starts_with("v1 ") && n.len() == 8 && n[0] as u64 == len {
                return Ok(Summary {
                    journal_bytes: len,
                    chunks: n[1] as u64,
                    first_at: n[2],
                    last_at: n[3],
                    mailboxes: n[4] as u64,
                    messages: n[5] as u64,
                    message_bytes: n[6] as u64,
                    deleted: n[7] as u64,
                });
            }
        }
        let (chunks, _) = self.read_path(&path, user)?;
        let mut s = Snapshot::new(user.cloned(), None);
        for (t, ops) in &chunks {
            for op in ops {
                s.apply(*t, op);
            }
        }
        let live = s
            .records
            .values()
            .flat_map(|r| r.values())
            .filter(|r| !r.expunged);
        let (messages, message_bytes) = live.fold((0, 0), |(n, b), r| (n + 1, b + r.size));
        let sum = Summary {
            chunks: chunks.len() as u64,
            first_at: chunks.first().map_or(0, |c| c.0),
            last_at: chunks.last().map_or(0, |c| c.0),
            mailboxes: s.mailboxes.len() as u64,
            messages,
            message_bytes,
            deleted: s.deleted.len() as u64,
            journal_bytes: len,
        };
        // The index is a cache: failing to write it (read-only use) is fine.
        let _ = std::fs::create_dir_all(idx.parent().expect("index dir")).and_then(|_| {
            let tmp = idx.with_extension("idx.tmp");
            std::fs::write(
                &tmp,
                format!(
                    "v1 {len} {} {} {} {} {} {} {}\n",
                    sum.chunks,
                    sum.first_at,
                    sum.last_at,
                    sum.mailboxes,
                    sum.messages,
                    sum.message_bytes,
                    sum.deleted
                ),
            )?;
            std::fs::rename(&tmp, &idx)
        });
        Ok(sum)
    }

    /// Cuts a torn last chunk off every journal (at daemon start, before
    /// appending behind it). Other damage is reported and left alone.
    pub fn repair(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let users = match self.users() {
            Ok(u) => u,
            Err(e) => return vec![e.to_string()],
        };
        for (_, path) in users {
            match chunk::read(&path, self.opts.chunk_bytes_max, false) {
                Ok((_, Tail::Clean)) => {}
                Ok((_, Tail::Torn(at))) => notes.push(match chunk::cut(&path, at) {
                    Ok(()) => format!("{}: torn last chunk cut at byte {at}", path.display()),
                    Err(e) => format!("{}: torn last chunk, cut failed: {e}", path.display()),
                }),
                Err(e) => notes.push(format!("{e} (left as is)")),
            }
        }
        notes
    }

    /// Checks `user`'s journal (every chunk's sum, every operation) and
    /// every message it names (inflated and hashed). `progress(done,
    /// total)` is called per message.
    pub fn verify(
        &self,
        user: Option<&UserId>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> VerifyReport {
        let mut rep = VerifyReport::default();
        let path = self.journal_path(user);
        let chunks = match self.read_path(&path, user) {
            Ok((c, tail)) => {
                if let Tail::Torn(at) = tail {
                    rep.problems
                        .push(format!("{}: torn last chunk at byte {at}", path.display()));
                }
                c
            }
            Err(e) => {
                rep.problems.push(e.to_string());
                return rep;
            }
        };
        rep.chunks = chunks.len() as u64;
        let mut guids = BTreeSet::new();
        for (_, ops) in &chunks {
            for op in ops {
                if let Op::Records { records, .. } = op {
                    // Expunged records may name bytes never sent.
                    guids.extend(records.iter().filter(|r| !r.expunged).map(|r| r.guid));
                }
            }
        }
        let total = guids.len() as u64;
        for (i, g) in guids.iter().enumerate() {
            if let Err(e) = self.pack.verify(g) {
                rep.problems.push(e.to_string());
            }
            rep.messages += 1;
            progress(i as u64 + 1, total);
        }
        rep
    }

    /// Folds every user's chunks recorded before `cutoff` (Unix seconds)
    /// into one base chunk, then removes pack files no journal names and
    /// older than `grace`. Every snapshot at a time ≥ `cutoff` is the same
    /// before and after.
    pub fn compact(
        &self,
        cutoff: i64,
        grace: std::time::Duration,
    ) -> Result<CompactReport, BackupError> {
        let mut rep = CompactReport::default();
        let mut keep: BTreeSet<Guid> = BTreeSet::new();
        for (user, path) in self.users()? {
            let _lock = self.lock(&path)?;
            let before = std::fs::metadata(&path).map_err(io(&path))?.len();
            let (raw, tail) = chunk::read(&path, self.opts.chunk_bytes_max, false)?;
            let old: Vec<&chunk::Chunk> = raw.iter().filter(|c| c.at < cutoff).collect();
            let mut decoded = Vec::new();
            for c in &raw {
                let ops =
                    ops::decode(&c.payload, user.as_ref()).map_err(|source| BackupError::Op {
                        path: path.clone(),
                        offset: c.offset,
                        source,
                    })?;
                decoded.push((c.at, ops));
            }
            let n_old = old.len();
            if n_old >= 2 {
                let mut base = Snapshot::new(user.clone(), None);
                for (t, ops) in decoded.iter().take(n_old) {
                    for op in ops {
                        base.apply(*t, op);
                    }
                }
                let base_at = old.last().map(|c| c.at).expect("n_old >= 2");
                let base_ops = base.to_ops();
                let mut file = chunk::FILE_MAGIC.to_vec();
                if !base_ops.is_empty() {
                    file.extend(
                        chunk::frame(base_at, &ops::encode(&base_ops), self.opts.zstd_level)
                            .map_err(io(&path))?,
                    );
                }
                // Later chunks are copied as they are (re-framed from the
                // inflated bytes, same content and time).
                for c in raw.iter().skip(n_old) {
                    file.extend(
                        chunk::frame(c.at, &c.payload, self.opts.zstd_level).map_err(io(&path))?,
                    );
                }
                let tmp = path.with_extension("cvb.compact");
                {
                    let mut f = File::create(&tmp).map_err(io(&tmp))?;
                    std::io::Write::write_all(&mut f, &file).map_err(io(&tmp))?;
                    f.sync_all().map_err(io(&tmp))?;
                }
                std::fs::rename(&tmp, &path).map_err(io(&path))?;
                if let Some(dir) = path.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io(dir))?;
                }
                rep.users += 1;
                rep.chunks_folded += n_old as u64;
                rep.journal_bytes_before += before;
                rep.journal_bytes_after += file.len() as u64;
                for op in &base_ops {
                    if let Op::Records { records, .. } = op {
                        keep.extend(records.iter().map(|r| r.guid));
                    }
                }
                for (_, ops) in decoded.iter().skip(n_old) {
                    for op in ops {
                        if let Op::Records { records, .. } = op {
                            keep.extend(records.iter().map(|r| r.guid));
                        }
                    }
                }
            } else {
                let _ = tail;
                for (_, ops) in &decoded {
                    for op in ops {
                        if let Op::Records { records, .. } = op {
                            keep.extend(records.iter().map(|r| r.guid));
                        }
                    }
                }
            }
        }
        let (n, b) = self.pack.gc(&keep, grace)?;
        rep.messages_removed = n;
        rep.message_bytes_removed = b;
        Ok(rep)
    }
}

#[cfg(test)]
mod tests;
