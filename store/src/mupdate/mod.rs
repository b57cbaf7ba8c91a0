//! The durable MUPDATE database of a corvid master: the in-memory
//! [`engine::mupdate::Database`] every connection reads, a SQLite file it is
//! loaded from and committed to, and the change feed UPDATE subscribers
//! hang on.
//!
//! Writes: [`MupdateDb::submit`] decides the write with
//! `Database::decide` under the one lock (so racing connections get one
//! answer each, in order), applies it to memory, and queues it for the
//! committer thread. The committer takes every queued write at once (group
//! commit: one transaction, one fsync for all of them), commits, and only
//! then, in commit order, publishes each change to the subscribers and calls
//! each writer's callback with a [`Committed`] token — so an `OK "done"` is
//! never sent before the change is on disk, and a subscriber never sees a
//! change that could be lost.
//!
//! Readers (FIND, LIST) see a write as soon as it is decided, up to one
//! group commit before it is durable. The UPDATE dump does not: it is the
//! committed state (the live state with the queued, uncommitted changes
//! taken back), because a slave keeps and serves what it was dumped — a
//! record the master then lost in a crash would stay on the slave until
//! its next full dump (found by the simulator, `sim::mupdate_t1`). Cyrus's
//! dump reads its committed database too. If a commit fails
//! the in-memory state can no longer be trusted: the database turns
//! [`MupdateDb::is_failed`], every pending and later write fails, and the
//! daemon is expected to exit (a restart reloads the durable state).
//!
//! Subscribers: [`MupdateDb::subscribe`] takes the dump and registers a
//! [`Subscriber`] under the same lock, so a subscriber misses no change and
//! sees each in order. A subscriber whose queue is full or gone is dropped
//! (it learns so through [`Delivery`] handling of its own channel).
//!
//! Two durable forms ([`MupdateDb::open`] and
//! [`MupdateDb::open_mailboxes_db`]): a SQLite file (a corvid master, or a
//! slave nobody else reads), or a Cyrus 3.6 `mailboxes.db` in twoskip
//! format ([`mailboxes_db`], [`crate::cyrusdb::twoskip`]): a slave on a
//! Murder frontend, whose unmodified imapd/lmtpd read that file to route.
//! Each group commit is then one twoskip transaction under Cyrus's lock,
//! in which an entry the local server wrote (not a remote one) is never
//! written over or deleted — judged on the file under that lock, since the
//! frontend's imapd writes it too — and, in a `unified` murder
//! ([`Options::local_server`]), records at this server are not written as
//! remote entries at all.
//!
//! What it never does: speak MUPDATE, or hold a lock across an fsync
//! (commits run on the committer thread with the lock released).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;

pub mod mailboxes_db;

use bytes::Bytes;
use engine::mupdate::{
    Change, Committed, Database, Entry, Read, Record, Refusal, State, Topology, Write,
};
use rusqlite::{params, Connection, OptionalExtension};

/// Why the MUPDATE store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's (disk, permissions, corruption): SQLite failed.
    #[error("mupdate database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store's: a stored row is not a valid record.
    #[error("mupdate database: bad row for {name:?}: {why}")]
    BadRow {
        /// Name of the row (lossy UTF-8).
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The store's: the transaction holding this write failed to commit.
    #[error("mupdate commit failed: {0}")]
    Commit(String),
    /// The store's: an earlier commit failed, so this one cannot be trusted.
    #[error("mupdate database failed earlier; restart to reload it")]
    Failed,
    /// The store's: the committer thread is gone.
    #[error("mupdate committer stopped")]
    Stopped,
    /// The store's (disk, locks, damage): the twoskip mailboxes.db failed.
    #[error("mailboxes.db: {0}")]
    Twoskip(#[from] crate::cyrusdb::twoskip::Error),
    /// The file's: a mailboxes.db entry the slave owns cannot be read.
    #[error("mailboxes.db: bad entry for {name:?}: {why}")]
    BadEntry {
        /// Name of the entry (lossy UTF-8).
        name: String,
        /// What is wrong.
        why: mailboxes_db::DecodeError,
    },
}

/// Limits and durability settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most writes in one transaction.
    pub batch_max: usize,
    /// `PRAGMA synchronous=FULL` (fsync at every commit). Turn off only
    /// for benchmarks of the non-durable case.
    pub fsync: bool,
    /// The murder's `mupdate_config`: which rules [`MupdateDb::submit`]
    /// decides writes by ([`Database::decide_in`]).
    pub topology: Topology,
    /// A slave's own server (`servername`) in a `unified` murder: records
    /// located there are this server's own mailboxes, which its imapd keeps
    /// as local entries in mailboxes.db. The slave never writes them as
    /// remote entries (a frontend would proxy to itself); a remote entry
    /// left under such a name is removed. `None`: every record is remote.
    pub local_server: Option<Bytes>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_max: 4096,
            fsync: true,
            topology: Topology::Standard,
            local_server: None,
        }
    }
}

/// What happened to one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the subscriber.
    Queued,
    /// The subscriber's queue is full: it is dropped (and should be told).
    Lagged,
    /// The subscriber is gone: it is dropped.
    Gone,
}

/// Where a subscriber's changes go (a connection's command channel).
pub trait Subscriber: Send + Sync {
    /// Queues `change`, without blocking.
    fn push(&self, change: &Arc<Change>) -> Delivery;
    /// Called once when the subscriber is dropped for lagging.
    fn lagged(&self);
}

/// A writer's callback: the decision, after commit.
pub type Done = Box<dyn FnOnce(Result<Result<Committed, Refusal>, StoreError>) + Send>;

struct Sub {
    hosts: Vec<Bytes>,
    sink: Box<dyn Subscriber>,
}

struct Shared {
    db: Database,
    subs: Vec<Sub>,
    failed: bool,
    /// Changes applied to `db` and queued, not yet committed, in decision
    /// order: what a dump must take back (see the module documentation).
    uncommitted: std::collections::VecDeque<Arc<Change>>,
}

struct Job {
    change: Arc<Change>,
    done: Done,
}

struct Inner {
    /// Readers (FIND, LIST, len) share it; writers, the committer's
    /// publish and subscribe take it alone. A reader never waits for
    /// another reader: with 16 clients on 2 cores, a preempted reader
    /// holding a plain mutex made every other FIND wait a time slice.
    shared: RwLock<Shared>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    path: PathBuf,
    topology: Topology,
}

/// The shared handle. Cheap to clone; one per daemon.
#[derive(Clone)]
pub struct MupdateDb {
    inner: Arc<Inner>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mupdate (
    name     BLOB PRIMARY KEY,
    reserved INTEGER NOT NULL,
    location BLOB NOT NULL,
    acl      BLOB
) WITHOUT ROWID;
";

fn open_conn(path: &Path, opts: &Options) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if opts.fsync { "FULL" } else { "OFF" })?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Where committed changes go.
enum Backend {
    Sqlite(Connection),
    MailboxesDb {
        file: crate::cyrusdb::twoskip::Twoskip,
        /// [`Options::local_server`].
        local_server: Option<Bytes>,
    },
}

impl Backend {
    fn commit(&mut self, jobs: &[Job]) -> Result<(), StoreError> {
        match self {
            Backend::Sqlite(conn) => Ok(commit(conn, jobs)?),
            Backend::MailboxesDb { file, local_server } => {
                use crate::cyrusdb::twoskip::Op;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let ops: Vec<Op> = jobs
                    .iter()
                    .map(|j| {
                        let key = mailboxes_db::key_of(&j.change.name);
                        match &j.change.after {
                            Some(r) if !is_local(local_server.as_deref(), r) => {
                                Op::Put(key, mailboxes_db::encode(r, now))
                            }
                            // Deleted, or now this server's own mailbox.
                            _ => Op::Delete(key),
                        }
                    })
                    .collect();
                // Judged on the file under its lock: the local imapd may
                // have written a local entry since we last looked.
                let (_, skipped) = file.apply_guarded(&ops, |_, current| {
                    current.map_or(true, |v| {
                        matches!(
                            mailboxes_db::decode(v),
                            Ok(mailboxes_db::Decoded::Remote(_))
                        )
                    })
                })?;
                for key in skipped {
                    let name = mailboxes_db::name_of(&key).unwrap_or_default();
                    let put = ops
                        .iter()
                        .any(|op| matches!(op, Op::Put(k, _) if *k == key));
                    let mailbox = String::from_utf8_lossy(&name);
                    if put {
                        tracing::warn!(
                            %mailbox,
                            "mailboxes.db holds a local mailbox under this name; the master's record for another server is not written over it"
                        );
                    } else {
                        // This server's own mailbox (unified), or the
                        // master deleting one: its imapd keeps the entry.
                        tracing::debug!(%mailbox, "local mailbox left to the local server");
                    }
                }
                Ok(())
            }
        }
    }
}

/// `true` if `record` is at `local_server` (Cyrus compares servers without
/// case, `mboxlist_insertremote`).
fn is_local(local_server: Option<&[u8]>, record: &Record) -> bool {
    local_server.is_some_and(|own| record.server().eq_ignore_ascii_case(own))
}

/// The remote entries of a mailboxes.db (see [`mailboxes_db`]).
fn load_mailboxes_db(db: &crate::cyrusdb::twoskip::Twoskip) -> Result<Database, StoreError> {
    let mut out = Database::new();
    for (key, value) in db.iter() {
        let Some(name) = mailboxes_db::name_of(key) else {
            continue;
        };
        match mailboxes_db::decode(value) {
            Ok(mailboxes_db::Decoded::Remote(r)) => out.load(name, r),
            Ok(mailboxes_db::Decoded::NotOurs) => {}
            Err(why) => {
                return Err(StoreError::BadEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    why,
                })
            }
        }
    }
    Ok(out)
}

fn load(conn: &Connection) -> Result<Database, StoreError> {
    let mut db = Database::new();
    let mut stmt = conn.prepare("SELECT name, reserved, location, acl FROM mupdate")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name: Vec<u8> = row.get(0)?;
        let reserved: i64 = row.get(1)?;
        let location: Vec<u8> = row.get(2)?;
        let acl: Option<Vec<u8>> = row.get(3)?;
        let state = match (reserved, acl) {
            (1, None) => State::Reserved,
            (0, Some(acl)) => State::Active {
                acl: Bytes::from(acl),
            },
            _ => {
                return Err(StoreError::BadRow {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    why: "state and ACL disagree",
                })
            }
        };
        db.load(
            Bytes::from(name),
            Record {
                state,
                location: Bytes::from(location),
            },
        );
    }
    Ok(db)
}

fn commit(conn: &mut Connection, jobs: &[Job]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO mupdate (name, reserved, location, acl) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET reserved = ?2, location = ?3, acl = ?4",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM mupdate WHERE name = ?1")?;
        for job in jobs {
            let c = &job.change;
            match &c.after {
                Some(r) => {
                    let (reserved, acl) = match &r.state {
                        State::Reserved => (1i64, None),
                        State::Active { acl } => (0, Some(&acl[..])),
                    };
                    put.execute(params![&c.name[..], reserved, &r.location[..], acl])?;
                }
                None => {
                    del.execute(params![&c.name[..]])?;
                }
            }
        }
    }
    tx.commit()
}

impl MupdateDb {
    /// Opens (creating if needed) the database file at `path`, loads it,
    /// and starts the committer thread.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<MupdateDb, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_conn(&path, &opts)?;
        let db = load(&conn)?;
        Self::start(path, Backend::Sqlite(conn), db, opts)
    }

    /// Opens (creating if needed) a Cyrus `mailboxes.db` (twoskip) at
    /// `path` as a slave's database: its remote entries are loaded, other
    /// entries are left alone, and every commit is a twoskip transaction.
    pub fn open_mailboxes_db(
        path: impl AsRef<Path>,
        opts: Options,
    ) -> Result<MupdateDb, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = crate::cyrusdb::twoskip::Twoskip::open(
            &path,
            crate::cyrusdb::twoskip::Options {
                fsync: opts.fsync,
                ..Default::default()
            },
        )?;
        let db = load_mailboxes_db(&file)?;
        let backend = Backend::MailboxesDb {
            file,
            local_server: opts.local_server.clone(),
        };
        Self::start(path, backend, db, opts)
    }

    fn start(
        path: PathBuf,
        mut backend: Backend,
        db: Database,
        opts: Options,
    ) -> Result<MupdateDb, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            shared: RwLock::new(Shared {
                db,
                subs: Vec::new(),
                failed: false,
                uncommitted: std::collections::VecDeque::new(),
            }),
            queue: Mutex::new(Some(tx)),
            path,
            topology: opts.topology,
        });
        let weak = Arc::downgrade(&inner);
        let batch_max = opts.batch_max.max(1);
        thread::Builder::new()
            .name("mupdate-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < batch_max {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let result = backend.commit(&jobs);
                    let Some(inner) = weak.upgrade() else { return };
                    match result {
                        Ok(()) => {
                            let mut shared = write_lock(&inner.shared);
                            for job in &jobs {
                                // Jobs are committed in the order they were
                                // queued, which is the order of `uncommitted`.
                                let front = shared.uncommitted.pop_front();
                                debug_assert!(front.is_some_and(|c| Arc::ptr_eq(&c, &job.change)));
                                publish(&mut shared, &job.change);
                            }
                            drop(shared);
                            for job in jobs {
                                (job.done)(Ok(Ok(Committed::after_commit())));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "mupdate commit failed; refusing all further writes");
                            write_lock(&inner.shared).failed = true;
                            for job in jobs {
                                (job.done)(Err(StoreError::Commit(e.to_string())));
                            }
                        }
                    }
                }
            })
            .map_err(|_| StoreError::Stopped)?;
        Ok(MupdateDb { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `true` after a failed commit (see the module documentation).
    pub fn is_failed(&self) -> bool {
        read(&self.inner.shared).failed
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        read(&self.inner.shared).db.len()
    }

    /// `true` if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `write` now; `done` is called with the refusal at once, or
    /// with the commit's outcome later, from the committer thread.
    pub fn submit(&self, write: &Write, done: Done) {
        let mut shared = write_lock(&self.inner.shared);
        if shared.failed {
            drop(shared);
            return done(Err(StoreError::Failed));
        }
        let change = match shared.db.decide_in(write, self.inner.topology) {
            Ok(c) => c,
            Err(r) => {
                drop(shared);
                return done(Ok(Err(r)));
            }
        };
        shared.db.apply(&change);
        // Queued under the lock, so commit (and publish) order is decide order.
        let queue = lock(&self.inner.queue);
        let change = Arc::new(change);
        shared.uncommitted.push_back(change.clone());
        let job = Job { change, done };
        match queue.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    shared.failed = true;
                    drop(queue);
                    drop(shared);
                    (job.done)(Err(StoreError::Stopped));
                }
            }
            None => {
                drop(queue);
                drop(shared);
                (job.done)(Err(StoreError::Stopped));
            }
        }
    }

    /// A slave's copy: applies the master's state for `name` as given (no
    /// decision: the master decided), durably, and republishes it to this
    /// database's own subscribers. `done` as for [`MupdateDb::submit`].
    pub fn apply_remote(&self, name: Bytes, record: Option<Record>, done: Done) {
        let mut shared = write_lock(&self.inner.shared);
        if shared.failed {
            drop(shared);
            return done(Err(StoreError::Failed));
        }
        let before = shared.db.find(&name).cloned();
        if before == record {
            drop(shared);
            return done(Ok(Ok(Committed::after_commit_of_nothing())));
        }
        let change = Change {
            name,
            before,
            after: record,
        };
        shared.db.apply(&change);
        self.enqueue(shared, change, done);
    }

    /// A slave's copy after a full UPDATE dump: every name not in `entries`
    /// is removed, every entry is set; only differences are written. `done`
    /// is called once, after the last of them is durable.
    pub fn replace_remote(&self, entries: Vec<Entry>, done: Done) {
        let mut shared = write_lock(&self.inner.shared);
        if shared.failed {
            drop(shared);
            return done(Err(StoreError::Failed));
        }
        let mut want: std::collections::BTreeMap<Bytes, Record> =
            entries.into_iter().map(|e| (e.name, e.record)).collect();
        let mut changes = Vec::new();
        for (name, rec) in shared.db.iter() {
            match want.remove(name) {
                Some(r) if r == *rec => {}
                Some(r) => changes.push(Change {
                    name: name.clone(),
                    before: Some(rec.clone()),
                    after: Some(r),
                }),
                None => changes.push(Change {
                    name: name.clone(),
                    before: Some(rec.clone()),
                    after: None,
                }),
            }
        }
        changes.extend(want.into_iter().map(|(name, r)| Change {
            name,
            before: None,
            after: Some(r),
        }));
        if changes.is_empty() {
            drop(shared);
            return done(Ok(Ok(Committed::after_commit_of_nothing())));
        }
        let last = changes.len() - 1;
        let mut done = Some(done);
        for (i, change) in changes.into_iter().enumerate() {
            shared.db.apply(&change);
            let d: Done = if i == last {
                done.take().expect("once")
            } else {
                Box::new(|_| {})
            };
            shared = self.enqueue_keep(shared, change, d);
        }
    }

    fn enqueue(&self, shared: RwLockWriteGuard<'_, Shared>, change: Change, done: Done) {
        drop(self.enqueue_keep(shared, change, done));
    }

    /// Queues a decided change for commit; returns the lock (still held).
    fn enqueue_keep<'a>(
        &'a self,
        mut shared: RwLockWriteGuard<'a, Shared>,
        change: Change,
        done: Done,
    ) -> RwLockWriteGuard<'a, Shared> {
        let queue = lock(&self.inner.queue);
        let change = Arc::new(change);
        shared.uncommitted.push_back(change.clone());
        let job = Job { change, done };
        let failed = match queue.as_ref() {
            Some(tx) => tx.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        drop(queue);
        if let Some(job) = failed {
            shared.failed = true;
            (job.done)(Err(StoreError::Stopped));
        }
        shared
    }

    /// Registers `sink` for changes concerning `hosts` (all if empty) and
    /// returns the committed state as of now: every change still waiting for
    /// its commit reaches `sink` when it is committed, after this dump.
    pub fn subscribe(&self, hosts: Vec<Bytes>, sink: Box<dyn Subscriber>) -> Vec<Entry> {
        let mut shared = write_lock(&self.inner.shared);
        let dump = committed_dump(&shared, &hosts);
        shared.subs.push(Sub { hosts, sink });
        dump
    }

    /// Number of registered subscribers.
    pub fn subscribers(&self) -> usize {
        read(&self.inner.shared).subs.len()
    }

    /// Stops the committer after the writes already queued.
    pub fn close(&self) {
        lock(&self.inner.queue).take();
    }
}

/// The dump of the committed state: the live dump with every uncommitted
/// change taken back (a name's oldest uncommitted `before` is its committed
/// record), sorted by name as [`Database::dump`].
fn committed_dump(shared: &Shared, hosts: &[Bytes]) -> Vec<Entry> {
    if shared.uncommitted.is_empty() {
        return shared.db.dump(hosts);
    }
    let mut committed: std::collections::BTreeMap<Bytes, Option<Record>> =
        std::collections::BTreeMap::new();
    // Newest first, so the oldest change's `before` is the one left.
    for change in shared.uncommitted.iter().rev() {
        committed.insert(change.name.clone(), change.before.clone());
    }
    let on_hosts = |r: &Record| hosts.is_empty() || hosts.iter().any(|h| h[..] == *r.server());
    let mut out: Vec<Entry> = shared
        .db
        .dump(hosts)
        .into_iter()
        .filter(|e| !committed.contains_key(&e.name))
        .collect();
    out.extend(committed.into_iter().filter_map(|(name, record)| {
        record
            .filter(|r| on_hosts(r))
            .map(|record| Entry { name, record })
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn publish(shared: &mut Shared, change: &Arc<Change>) {
    shared.subs.retain(|s| {
        if !change.concerns(&s.hosts) {
            return true;
        }
        match s.sink.push(change) {
            Delivery::Queued => true,
            Delivery::Gone => false,
            Delivery::Lagged => {
                s.sink.lagged();
                false
            }
        }
    });
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // As `lock`: a panic under the lock is our bug; the map stays whole.
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is our bug; the data (a map) is still
    // consistent at every await-free step, so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Read for MupdateDb {
    fn find(&self, name: &[u8]) -> Option<Record> {
        read(&self.inner.shared).db.find(name).cloned()
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        read(&self.inner.shared).db.list(prefix)
    }
}

/// A stored row: (reserved, location, ACL).
pub type Row = (bool, Vec<u8>, Option<Vec<u8>>);

/// Reads one stored record directly from the file (tests, tools).
pub fn read_row(path: &Path, name: &[u8]) -> Result<Option<Row>, StoreError> {
    let conn = Connection::open(path)?;
    Ok(conn
        .query_row(
            "SELECT reserved, location, acl FROM mupdate WHERE name = ?1",
            params![name],
            |r| Ok((r.get::<_, i64>(0)? == 1, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(location: &str) -> Record {
        Record {
            state: State::Reserved,
            location: Bytes::from(location.to_owned()),
        }
    }

    fn names(dump: &[Entry]) -> Vec<(String, String)> {
        dump.iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    String::from_utf8_lossy(&e.record.location).into_owned(),
                )
            })
            .collect()
    }

    /// A dump never holds a decided but uncommitted change: created,
    /// moved and deleted names show their committed records, on every
    /// host filter.
    #[test]
    fn the_dump_is_the_committed_state() {
        let mut shared = Shared {
            db: Database::new(),
            subs: Vec::new(),
            failed: false,
            uncommitted: std::collections::VecDeque::new(),
        };
        shared.db.load(Bytes::from_static(b"a"), rec("h1!p"));
        shared.db.load(Bytes::from_static(b"c"), rec("h1!p"));
        let changes = [
            // New, uncommitted: not in the dump.
            Change {
                name: Bytes::from_static(b"b"),
                before: None,
                after: Some(rec("h1!p")),
            },
            // Moved twice to h2, uncommitted: still at h1.
            Change {
                name: Bytes::from_static(b"a"),
                before: Some(rec("h1!p")),
                after: Some(rec("h2!p")),
            },
            Change {
                name: Bytes::from_static(b"a"),
                before: Some(rec("h2!p")),
                after: Some(rec("h2!q")),
            },
            // Deleted, uncommitted: still there.
            Change {
                name: Bytes::from_static(b"c"),
                before: Some(rec("h1!p")),
                after: None,
            },
        ];
        for c in changes {
            shared.db.apply(&c);
            shared.uncommitted.push_back(Arc::new(c));
        }
        let committed = vec![
            ("a".to_owned(), "h1!p".to_owned()),
            ("c".to_owned(), "h1!p".to_owned()),
        ];
        assert_eq!(names(&committed_dump(&shared, &[])), committed);
        assert_eq!(
            names(&committed_dump(&shared, &[Bytes::from_static(b"h1")])),
            committed
        );
        assert!(committed_dump(&shared, &[Bytes::from_static(b"h2")]).is_empty());
        // Once committed, the live state is the dump.
        shared.uncommitted.clear();
        assert_eq!(
            names(&committed_dump(&shared, &[])),
            vec![
                ("a".to_owned(), "h2!q".to_owned()),
                ("b".to_owned(), "h1!p".to_owned())
            ]
        );
    }
}
