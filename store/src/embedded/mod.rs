//! The embedded store: message bytes as content-addressed files in the
//! configured partitions, everything else in one SQLite index. corvid's
//! default store.
//!
//! # Shape
//!
//! * [`Embedded`] owns the write side and implements the engine's
//!   [`StoreWrite`] (and [`MailRead`] of durable state). One per store: a
//!   lock file keeps a second process out.
//! * [`Reader`] is a cheap, cloneable, thread-safe [`MailRead`] handle for
//!   machines (`Embedded::reader`). Readers use their own SQLite
//!   connections and see only committed state, and a commit here is durable
//!   before readers can see it (below), so they never see a batch before its
//!   completion.
//! * [`Committer`] runs an `Embedded` on its own thread and group-commits
//!   the batches that many connections submit: the way to use the store from
//!   a server.
//!
//! # Crash safety, by construction
//!
//! 1. Message bytes are received into `<partition>/corvid/tmp/`, hashed on
//!    the way, and refused unless they hash to the announced GUID.
//! 2. `write` applies a batch inside the open SQLite transaction, in a
//!    savepoint, so a refused batch leaves nothing behind. Nothing is
//!    visible to readers yet.
//! 3. `sync` first makes every message the open transaction links durable
//!    under its final name (fsync files, rename, fsync directories: see
//!    [`blobs`]), and only then commits. So the index never refers to bytes
//!    that a crash could lose.
//! 4. The engine's `commit`/`commit_group` create the [`DurableProof`]
//!    only after `sync` returns Ok, so no "stored" reply can precede the
//!    commit.
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: the WAL is fsynced at
//! every commit, before the commit becomes visible to other connections.
//! `NORMAL` would be faster but lets the last commits roll back after a
//! power loss — and we have already said "stored" for them. Group commit
//! recovers the speed: one WAL fsync and one round of parallel file fsyncs
//! cover every batch in the group.
//!
//! # Partitions
//!
//! Uploads are staged in the default partition (an `APPLY MESSAGE` file
//! does not say which mailbox it is for); the batch whose first record
//! uses a new message moves it to that mailbox's partition before it is
//! published (a rename, or a copy across filesystems), and inline bytes
//! are written there directly. A message shared by mailboxes on several
//! partitions is stored once, in the first one's.
//!
//! # Names never become paths
//!
//! Mailbox names, user ids and annotation entries are only SQLite keys.
//! Only validated GUIDs (40 hex digits) become file names, under
//! directories derived from the operator's `partition-NAME` keys; temporary
//! names are made from the pid and a counter. Nothing a peer sends can
//! escape the store's directories.
//!
//! # The rolling replication log
//!
//! Kept in SQLite (table `sync_log`), appended by `AppendSyncLog` in the
//! same transaction as the change it describes, read by corvid's rolling
//! client through [`MailRead::sync_log`] and trimmed by `TrimSyncLog`. So a
//! committed change always has its line, and a rolled-back one never does
//! (Cyrus writes the line after the change and can lose it in a crash). With
//! [`Options::sync_log_files`] each committed line is also appended, in
//! Cyrus's exact line format and with Cyrus's locking, to
//! `{configdirectory}/sync/[<channel>/]log`, so tools that read Cyrus logs
//! can follow a corvid store: see [`synclog`].
//!
//! # What this module never does
//!
//! It never decides protocol outcomes, never deletes message files while
//! serving (a message no record refers to stays until an operator runs
//! [`Embedded::gc`], `corvid store gc`), and never
//! serves bytes that fail their hash: see [`Reader`]'s `message_bytes`.

mod apply;
pub mod blobs;
mod committer;
mod error;
mod gc;
mod rows;
mod schema;
mod staging;
pub mod synclog;
mod verify;

pub use blobs::{GroupSync, MessageReader, MessageWriter, StagedMessage};
pub use committer::{Committer, CommitterOptions, ConnId, Done};
pub use error::{Error, Result};
pub use gc::GcReport;
pub use verify::{Problem, Report};

use apply::{Apply, Links};
use engine::model::{
    Annotations, Guid, Mailbox, MailboxGuid, MailboxName, QuotaRoot, Record, Seen, SieveName,
    SieveScript, Subscription, SyncCrcs, SyncLogLine, Tombstone, Uid, UniqueId, UserId,
};
use engine::store::synclog::Channels;
use engine::store::{
    MailRead, Mutation, StageHandle, StoreError, StoreWrite, UidRange, WriteBatch,
};
use rows::{db, ConnRead};
use rusqlite::{Connection, OpenFlags};
use staging::{Stage, StagingArea};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How to open an embedded store, with every limit it enforces.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cyrus `configdirectory`: the index lives in `<it>/corvid/`, sync log
    /// files in `<it>/sync/`.
    pub configdirectory: PathBuf,
    /// Cyrus `partition-NAME: /path` keys, name → path.
    pub partitions: BTreeMap<String, PathBuf>,
    /// Cyrus `defaultpartition`: where new message bytes go (the storage
    /// trait does not name a partition for them). `None`: `default` if
    /// configured, else the first name.
    pub default_partition: Option<String>,
    /// Largest message accepted, in bytes.
    pub message_bytes_max: u64,
    /// Most stagings (in progress or finished but not yet linked) at once.
    ///
    /// A real Cyrus `sync_client` uploads every new message of a mailbox
    /// (`APPLY MESSAGE`, 1,024 files a line) before the one `APPLY MAILBOX`
    /// that links them, so a 10,000-message user stages 10,000 files at
    /// once. Staged bytes are files on disk; what this bounds is the
    /// bookkeeping in memory (a few hundred bytes a staging).
    pub staged_messages_max: usize,
    /// Most bytes announced by those stagings together (disk, not memory).
    pub staged_bytes_max: u64,
    /// How each group's message files are made durable.
    pub group_sync: GroupSync,
    /// Threads that fsync files and directories in parallel (`PerFile`).
    pub fsync_threads: usize,
    /// With `PerFile`: fsync each message when its staging ends, on the
    /// thread that staged it, instead of at the group commit. Connections
    /// then flush concurrently with the committer; a single connection
    /// waits for each of its messages.
    pub fsync_at_staging: bool,
    /// Reader connections shared by all [`Reader`] clones.
    pub reader_connections: usize,
    /// Also append committed sync log lines to Cyrus-format files.
    pub sync_log_files: bool,
    /// The channels every batch logs its changes to (Cyrus's `sync_log`,
    /// `sync_log_channels`, `sync_log_chain` resolved by the writer): the
    /// store appends the lines [`engine::store::synclog::lines_for`]
    /// derives, in the batch's own transaction. Empty: no logging.
    pub sync_log_channels: Channels,
    /// Take the store's lock exclusively (`corvid store gc`). Otherwise
    /// the lock is shared: several corvid processes may write one store at
    /// once (a `sync_server` serving and a `sync_client -r` trimming the
    /// log it replicates onward); SQLite serialises their transactions.
    pub exclusive: bool,
    /// Rehash a message before handing out its last bytes.
    pub verify_on_read: bool,
    /// Run SQLite's `quick_check` when opening (linear in the index size).
    pub check_index_on_open: bool,
}

impl Options {
    /// Defaults for a store with these directories.
    pub fn new(
        configdirectory: impl Into<PathBuf>,
        partitions: BTreeMap<String, PathBuf>,
    ) -> Options {
        Options {
            configdirectory: configdirectory.into(),
            partitions,
            default_partition: None,
            message_bytes_max: 256 << 20,
            staged_messages_max: 262_144,
            staged_bytes_max: 64 << 30,
            // Portable and without side effects on other users of the
            // filesystem; SyncFs is faster on a filesystem dedicated to mail.
            group_sync: GroupSync::PerFile,
            fsync_threads: 32,
            fsync_at_staging: false,
            reader_connections: 4,
            sync_log_files: false,
            sync_log_channels: Channels::none(),
            exclusive: false,
            verify_on_read: true,
            check_index_on_open: true,
        }
    }

    fn default_partition(&self) -> Result<String> {
        match &self.default_partition {
            Some(p) if self.partitions.contains_key(p) => Ok(p.clone()),
            Some(p) => Err(Error::Config(format!(
                "defaultpartition {p:?} is not configured"
            ))),
            None if self.partitions.contains_key("default") => Ok("default".into()),
            None => self
                .partitions
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| Error::Config("no partition-NAME is configured".into())),
        }
    }

    /// The index database file.
    pub fn index_path(&self) -> PathBuf {
        self.configdirectory.join("corvid").join("index.sqlite3")
    }
}

/// State shared by the owner and every reader.
struct Shared {
    partitions: blobs::Partitions,
    index_path: PathBuf,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    verify_on_read: bool,
}

/// A cloneable, thread-safe [`MailRead`] of the durable state.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "embedded::Reader({})", self.shared.index_path.display())
    }
}

impl Reader {
    /// Runs `f` on a reader connection inside a read transaction, so one
    /// answer never mixes two commits.
    fn with<T>(
        &self,
        f: impl FnOnce(&ConnRead<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let n = self.shared.readers.len();
        let start = self.shared.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut guard = None;
        for k in 0..n {
            if let Ok(g) = self.shared.readers[(start + k) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let conn = match guard {
            Some(g) => g,
            None => self.shared.readers[start % n]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        };
        let tx = conn.unchecked_transaction().map_err(db)?;
        let out = f(&ConnRead(&tx));
        drop(tx); // read-only: rollback == commit
        out
    }

    /// A stored message as a stream that fails (rather than ends) if the
    /// bytes no longer hash to the GUID.
    pub fn open_message(&self, guid: &Guid) -> Result<MessageReader> {
        let (partition, size) = self
            .with(|c| rows::message_row(c.0, guid).map_err(db))
            .map_err(|e| match e {
                StoreError::Corrupt(problem) => Error::CorruptIndex {
                    path: self.shared.index_path.clone(),
                    problem,
                },
                e => Error::io(
                    &self.shared.index_path,
                    std::io::Error::other(e.to_string()),
                ),
            })?
            .ok_or_else(|| Error::DamagedMessage {
                guid: guid.to_hex(),
                problem: "not in the index".into(),
            })?;
        self.shared.partitions.reader(&partition, guid, size)
    }

    /// Checks every message file and the index; see [`Report`].
    pub fn verify(&self) -> Result<Report> {
        let conn = self.shared.readers[0]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        verify::run(&conn, &self.shared.partitions, &self.shared.index_path)
    }

    /// The canonical, sorted, diffable listing of the store's mail (what
    /// `corvid store digest` prints).
    pub fn digest(&self, out: &mut dyn std::io::Write) -> Result<()> {
        let conn = self.shared.readers[0]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        verify::digest(&conn, out)
    }

    /// The index database path.
    pub fn index_path(&self) -> &Path {
        &self.shared.index_path
    }
}

impl MailRead for Reader {
    rows::forward_to_conn!();

    fn message_bytes(
        &self,
        guid: &Guid,
        offset: u64,
        max_len: usize,
    ) -> Result<bytes::Bytes, StoreError> {
        let (partition, size) = self
            .with(|c| rows::message_row(c.0, guid).map_err(db))?
            .ok_or(StoreError::MissingMessage(*guid))?;
        self.shared.partitions.read_range(
            &partition,
            guid,
            size,
            offset,
            max_len,
            self.shared.verify_on_read,
        )
    }
}

/// The embedded store's write side. See the module doc.
pub struct Embedded {
    reader: Reader,
    conn: Connection,
    in_tx: bool,
    /// Verified bytes waiting to be linked (shared with a committer's connections).
    area: StagingArea,
    /// Stagings in progress through the trait, by handle: (announced size, stage).
    staging: HashMap<u64, (u64, Stage)>,
    next_stage: u64,
    /// GUIDs linked by batches written since the last sync.
    linked: Vec<Guid>,
    options: Options,
    default_partition: String,
    /// Sync log lines appended to files, not yet recorded as exported.
    exported: BTreeMap<String, u64>,
    _lock: File,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "embedded::Embedded({})",
            self.reader.shared.index_path.display()
        )
    }
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| schema::corrupt(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let res: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| schema::corrupt(path, e))?;
    if res != "ok" {
        return Err(Error::CorruptIndex {
            path: path.to_path_buf(),
            problem: res,
        });
    }
    Ok(())
}

fn shared(
    options: &Options,
    partitions: blobs::Partitions,
    read_only: bool,
) -> Result<Arc<Shared>> {
    let index_path = options.index_path();
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let mut readers = Vec::new();
    for _ in 0..options.reader_connections.max(1) {
        let c = open_conn(&index_path, flags)?;
        schema::check(&c, &index_path)?;
        readers.push(Mutex::new(c));
    }
    Ok(Arc::new(Shared {
        partitions,
        index_path,
        readers,
        next_reader: AtomicUsize::new(0),
        verify_on_read: options.verify_on_read,
    }))
}

impl Embedded {
    /// Opens (creating if needed) the store for writing. Takes the store's
    /// lock, creates missing directories, migrates the index, removes
    /// temporaries a crash left, and with `check_index_on_open` runs
    /// SQLite's `quick_check`.
    pub fn open(options: Options) -> Result<Embedded> {
        let default_partition = options.default_partition()?;
        let dir = options.configdirectory.join("corvid");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        // Alone (the exclusive lock is free): temporaries are a crash's
        // leftovers. Beside another writer they may be its uploads.
        let alone = match lock.try_lock() {
            Ok(()) => true,
            Err(fs::TryLockError::WouldBlock) if !options.exclusive => false,
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(lock_path)),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        };
        let partitions = blobs::Partitions::open(&options.partitions, true)?;
        if alone {
            partitions.clean_tmp()?;
        }
        if !options.exclusive {
            // Shared from here on (converting an exclusive lock, or joining
            // other writers'). Blocks only while a gc holds it exclusively.
            match lock.try_lock_shared() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) if alone => {
                    lock.lock_shared().map_err(|e| Error::io(&lock_path, e))?
                }
                Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(lock_path)),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
            }
        }
        let index_path = options.index_path();
        let mut conn = open_conn(
            &index_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| schema::corrupt(&index_path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "SQLite refused WAL mode (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")?;
        // The directory entry of a new index (and its WAL) must survive a crash.
        blobs::sync_dir(&dir)?;
        schema::migrate(&mut conn, &index_path)?;
        if options.check_index_on_open {
            quick_check(&conn, &index_path)?;
        }
        let area = StagingArea::new(
            partitions.clone(),
            default_partition.clone(),
            options.message_bytes_max,
            options.staged_messages_max,
            options.staged_bytes_max,
            options.fsync_at_staging && options.group_sync == GroupSync::PerFile,
        );
        let reader = Reader {
            shared: shared(&options, partitions, false)?,
        };
        Ok(Embedded {
            reader,
            conn,
            in_tx: false,
            area,
            staging: HashMap::new(),
            next_stage: 0,
            linked: Vec::new(),
            options,
            default_partition,
            exported: BTreeMap::new(),
            _lock: lock,
        })
    }

    /// Opens an existing store read-only (no lock, no migration): for
    /// inspection tools while a server runs.
    pub fn open_read_only(options: &Options) -> Result<Reader> {
        let index_path = options.index_path();
        if !index_path.is_file() {
            return Err(Error::CorruptIndex {
                path: index_path,
                problem: "no index database: not a corvid store".into(),
            });
        }
        let partitions = blobs::Partitions::open(&options.partitions, false)?;
        let shared = shared(options, partitions, true)?;
        if options.check_index_on_open {
            let c = shared.readers[0].lock().unwrap_or_else(|p| p.into_inner());
            quick_check(&c, &shared.index_path)?;
        }
        Ok(Reader { shared })
    }

    pub(crate) fn staging_area(&self) -> StagingArea {
        self.area.clone()
    }

    /// A read handle for machines.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Stages a whole message from a stream (for tools and tests): the
    /// same path as `stage_begin`/`stage_chunk`/`stage_end`.
    pub fn stage_from(
        &mut self,
        guid: Guid,
        size: u64,
        mut src: impl std::io::Read,
    ) -> Result<(), StoreError> {
        let h = self.stage_begin(guid, size)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    self.stage_abort(h);
                    return Err(StoreError::Io(e.to_string()));
                }
            };
            if n == 0 {
                break;
            }
            self.stage_chunk(h, &buf[..n])?;
        }
        self.stage_end(h)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.in_tx {
            return Ok(());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        self.in_tx = true;
        // Record how far the file mirror got, in this transaction: a crash
        // before it commits only means those lines are appended again.
        for (channel, seq) in std::mem::take(&mut self.exported) {
            self.conn
                .execute(
                    "UPDATE sync_log_channels SET exported_seq = max(exported_seq, ?2) WHERE channel = ?1",
                    rusqlite::params![channel, rows::i(seq)],
                )
                .map_err(db)?;
        }
        Ok(())
    }

    fn rollback(&mut self) {
        if self.in_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.in_tx = false;
        }
        // Linked stagings stay staged: a retry may link them again.
        self.linked.clear();
    }

    /// Appends committed sync log lines to the Cyrus-format files.
    fn export_sync_log(&mut self) -> Result<(), StoreError> {
        let pending: Vec<(String, u64, u64)> = {
            let mut st = self
                .conn
                .prepare_cached(
                    "SELECT channel, exported_seq, last_seq FROM sync_log_channels \
                     WHERE last_seq > exported_seq ORDER BY channel",
                )
                .map_err(db)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                    ))
                })
                .map_err(db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db)?
        };
        for (channel, from, to) in pending {
            let from = from.max(self.exported.get(&channel).copied().unwrap_or(0));
            if from >= to {
                continue;
            }
            let lines = ConnRead(&self.conn).sync_log(&channel, from, usize::MAX)?;
            let mut text = Vec::new();
            for (_, line) in &lines {
                text.extend_from_slice(&synclog::encode(line)?);
            }
            if !text.is_empty() {
                let path = synclog::Channel::from_key(&channel).path(&self.options.configdirectory);
                synclog::append(&path, &text)?;
            }
            self.exported.insert(channel, to);
        }
        Ok(())
    }
}

impl MailRead for Embedded {
    fn mailbox(&self, name: &MailboxName) -> Result<Option<Mailbox>, StoreError> {
        self.reader.mailbox(name)
    }
    fn mailbox_by_uniqueid(&self, id: &UniqueId) -> Result<Option<Mailbox>, StoreError> {
        self.reader.mailbox_by_uniqueid(id)
    }
    fn mailbox_by_guid(&self, guid: &MailboxGuid) -> Result<Option<Mailbox>, StoreError> {
        self.reader.mailbox_by_guid(guid)
    }
    fn mailboxes_of_user(&self, user: &UserId) -> Result<Vec<Mailbox>, StoreError> {
        self.reader.mailboxes_of_user(user)
    }
    fn mailboxes(
        &self,
        after: Option<&MailboxName>,
        limit: usize,
    ) -> Result<Vec<Mailbox>, StoreError> {
        self.reader.mailboxes(after, limit)
    }
    fn users(&self) -> Result<Vec<UserId>, StoreError> {
        self.reader.users()
    }
    fn records(
        &self,
        mailbox: &UniqueId,
        range: UidRange,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.reader.records(mailbox, range, limit)
    }
    fn record(&self, mailbox: &UniqueId, uid: Uid) -> Result<Option<Record>, StoreError> {
        self.reader.record(mailbox, uid)
    }
    fn sync_crcs(&self, mailbox: &UniqueId) -> Result<SyncCrcs, StoreError> {
        self.reader.sync_crcs(mailbox)
    }
    fn message_size(&self, guid: &Guid) -> Result<Option<u64>, StoreError> {
        self.reader.message_size(guid)
    }
    fn message_bytes(
        &self,
        guid: &Guid,
        offset: u64,
        max_len: usize,
    ) -> Result<bytes::Bytes, StoreError> {
        self.reader.message_bytes(guid, offset, max_len)
    }
    fn seen(&self, user: &UserId, mailbox: &UniqueId) -> Result<Option<Seen>, StoreError> {
        self.reader.seen(user, mailbox)
    }
    fn seen_of_user(&self, user: &UserId) -> Result<Vec<(UniqueId, Seen)>, StoreError> {
        self.reader.seen_of_user(user)
    }
    fn subscriptions(&self, user: &UserId) -> Result<Vec<(MailboxName, Subscription)>, StoreError> {
        self.reader.subscriptions(user)
    }
    fn quota(&self, root: &MailboxName) -> Result<Option<QuotaRoot>, StoreError> {
        self.reader.quota(root)
    }
    fn sieve_scripts(&self, user: &UserId) -> Result<Vec<SieveScript>, StoreError> {
        self.reader.sieve_scripts(user)
    }
    fn sieve_active(&self, user: &UserId) -> Result<Option<SieveName>, StoreError> {
        self.reader.sieve_active(user)
    }
    fn server_annotations(&self) -> Result<Annotations, StoreError> {
        self.reader.server_annotations()
    }
    fn tombstones_named(&self, name: &MailboxName) -> Result<Vec<Tombstone>, StoreError> {
        self.reader.tombstones_named(name)
    }
    fn tombstones_of_user(&self, user: &UserId) -> Result<Vec<Tombstone>, StoreError> {
        self.reader.tombstones_of_user(user)
    }
    fn sync_log(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SyncLogLine)>, StoreError> {
        self.reader.sync_log(channel, after, limit)
    }
    fn sync_log_last(&self, channel: &str) -> Result<u64, StoreError> {
        self.reader.sync_log_last(channel)
    }
}

impl StoreWrite for Embedded {
    fn stage_begin(&mut self, guid: Guid, size: u64) -> Result<StageHandle, StoreError> {
        let w = self.area.begin(guid, size)?;
        let h = self.next_stage;
        self.next_stage += 1;
        self.staging.insert(h, (size, Stage::Open(w)));
        Ok(StageHandle(h))
    }

    fn stage_chunk(&mut self, handle: StageHandle, chunk: &[u8]) -> Result<(), StoreError> {
        let Some((size, stage)) = self.staging.get_mut(&handle.0) else {
            return Err(StoreError::UnknownStage(handle));
        };
        stage.chunk(&self.area, *size, chunk)
    }

    fn stage_end(&mut self, handle: StageHandle) -> Result<(), StoreError> {
        let (size, stage) = self
            .staging
            .remove(&handle.0)
            .ok_or(StoreError::UnknownStage(handle))?;
        stage.end(&self.area, size)
    }

    fn stage_abort(&mut self, handle: StageHandle) {
        if let Some((size, stage)) = self.staging.remove(&handle.0) {
            stage.abort(&self.area, size);
        }
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.begin()?;
        self.conn.execute_batch("SAVEPOINT batch").map_err(db)?;
        let area = &self.area;
        let lookup = |g: &Guid| area.lookup(g);
        let partitions = &self.options.partitions;
        let has_partition = |p: &str| partitions.contains_key(p);
        let mut a = Apply {
            c: &self.conn,
            staged: &lookup,
            inline_partition: &self.default_partition,
            has_partition: &has_partition,
            links: Links::default(),
            run: None,
        };
        // The sync log lines, named from the state the batch applies to
        // (this transaction's, earlier batches of the group included).
        let log: Vec<Mutation> = if self.options.sync_log_channels.is_empty() {
            Vec::new()
        } else {
            match engine::store::synclog::lines_for(&batch.mutations, &ConnRead(&self.conn)) {
                Ok(lines) => self.options.sync_log_channels.appends(&lines),
                Err(e) => {
                    self.conn
                        .execute_batch("ROLLBACK TO batch; RELEASE batch")
                        .map_err(db)?;
                    return Err(e);
                }
            }
        };
        let mut result = batch
            .mutations
            .iter()
            .chain(&log)
            .try_for_each(|m| a.apply(m))
            .and_then(|()| a.finish());
        let links = std::mem::take(&mut a.links);
        // Inline bytes become staged files now, so sync treats both alike
        // (unless the same bytes are already staged).
        let mut put_inline = Vec::new();
        let placed: HashMap<Guid, &str> =
            links.placed.iter().map(|(g, p)| (*g, p.as_str())).collect();
        if result.is_ok() {
            for (guid, bytes) in &links.inline {
                if self.area.lookup(guid).is_some() {
                    continue;
                }
                let partition = placed.get(guid).copied().unwrap_or(&self.default_partition);
                match self.area.stage_bytes(partition, *guid, bytes) {
                    Ok(m) => {
                        self.area.put(m);
                        put_inline.push(*guid);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            // Staged bytes whose mailbox is on another partition move
            // there before anything refers to them (a rename within one
            // filesystem, a copy across two).
            for (guid, partition) in &links.placed {
                if let Err(e) = self.area.relocate(guid, partition) {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => {
                self.conn.execute_batch("RELEASE batch").map_err(db)?;
                self.linked.extend(links.staged);
                self.linked.extend(links.inline.iter().map(|(g, _)| *g));
                Ok(())
            }
            Err(e) => {
                self.conn
                    .execute_batch("ROLLBACK TO batch; RELEASE batch")
                    .map_err(db)?;
                for guid in &put_inline {
                    self.area.remove(guid);
                }
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if !self.in_tx {
            return Ok(());
        }
        let mut publish = self.area.take(&std::mem::take(&mut self.linked));
        // 1. Bytes durable under their final names, before the index
        //    can refer to them.
        if let Err(e) = blobs::make_durable(
            &mut publish,
            self.options.fsync_threads,
            self.options.group_sync,
        ) {
            self.rollback();
            return Err(e.into());
        }
        // 2. The index, durable at COMMIT (WAL, synchronous=FULL).
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            self.rollback();
            return Err(db(e));
        }
        self.in_tx = false;
        // 3. The optional Cyrus-format mirror of the sync log. The batches
        //    are durable whatever happens here; a failure is reported, and
        //    the lines go out with the next successful sync.
        if self.options.sync_log_files {
            if let Err(e) = self.export_sync_log() {
                tracing::warn!(error = %e, "sync log files not updated; retrying after the next commit");
            }
        }
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Unsynced batches were never acknowledged: drop them.
        self.rollback();
        // Record how far the sync log files got, so a clean restart does
        // not append those lines again (a crash may; that is harmless).
        if !self.exported.is_empty() && self.begin().is_ok() {
            if self.conn.execute_batch("COMMIT").is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.in_tx = false;
        }
    }
}
