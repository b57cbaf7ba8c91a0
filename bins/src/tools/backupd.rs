//! `corvid backupd`: a csync target that keeps restorable per-user backups
//! (what Cyrus 3.0–3.10's backupd was), fed by a real Cyrus
//! `sync_client -n <channel>` whose channel points here.
//!
//! # Design
//!
//! * The wire is the replica machine, [`engine::csync::Server`], run with
//!   `Options::backupd` (Cyrus backupd's texts: `Cyrus backup server`
//!   greeting, `OK Success`, no `* SIEVE-MAILBOX`, STARTTLS `NO command
//!   not implemented`). So sync_client sees a server that answers `GET
//!   USER` truthfully and sends only what changed — the same machine
//!   decides everything, as for `corvid sync_server`.
//! * The *current* state lives in an embedded store whose index sits in
//!   the first `backuppartition-NAME` directory and whose message files
//!   are spread over all of them. The embedded store never deletes message
//!   files, so every message ever backed up stays restorable by GUID.
//! * The *history* is an append-only journal per user,
//!   `<index dir>/journal/<user>.log`: after every durable batch, each
//!   mailbox the batch touched is appended as one entry
//!   `APPLY MAILBOX %(… RECORD (…))` (its full state, records included,
//!   in Cyrus's own dlist form), and a deleted mailbox as
//!   `APPLY UNMAILBOX %(UNIQUEID … MBOXNAME …)`. Each entry is framed as
//!   `<unix-time> <length> CRLF <csync command bytes>`, so a reader never
//!   has to guess where a literal ends. Expunges and deletes are thus
//!   *recorded*, never destructive for the backup: the state at any time
//!   T is, per mailbox, its last entry at or before T ([`state_at`]), and
//!   the bytes are in the store. Entries are fsynced before the daemon
//!   answers the APPLY that caused them; at startup a torn last entry (a
//!   crash mid-append) is cut off ([`repair_journals`]).
//!
//! Cost, said plainly: a mailbox's line carries all of its records, so a
//! big mailbox changed often makes a big journal (Cyrus's backupd wrote
//! only the APPLY it received and needed a SQLite index to read it back;
//! we trade space for a journal that reads alone).
//!
//! What it never does: serve mail back over csync `GET FETCH` for copyback
//! (`corvid restore` reads the backup instead), or forget a journal line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;

use super::csync_common;
use engine::csync::{Completion, Effect, Event, Options as MachineOptions, Server};
use engine::machine::Time;
use engine::model::{UniqueId, UnixTime};
use engine::store::{MailRead, Mutation, StoreEffect, UidRange};
use io_tokio::auth::{Access, PwCheck};
use io_tokio::config::Config;
use io_tokio::driver::{Driver, EffectExecutor};
use io_tokio::listen::{self, ServeOptions};
use proto::csync::{ClientLine, Command, Event as DecodeEvent, ServerDecoder};
use proto::dlist::{Item, KvList, Value};
use store::embedded::{Committer, CommitterOptions, ConnId, Options as StoreOptions, Reader};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

/// Cyrus backup server (csync target keeping restorable backups).
#[derive(Debug, Parser)]
#[command(name = "backupd")]
struct Args {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// Cyrus master's reuse count (ignored).
    #[arg(short = 'U')]
    reuse: Option<u32>,
    /// Cyrus master's idle timeout (ignored).
    #[arg(short = 'T')]
    idle: Option<u32>,
    /// Listen on HOST:PORT instead of master's socket or stdin/stdout.
    #[arg(long)]
    listen: Option<String>,
}

/// Where a backup store lives, from imapd.conf.
pub struct Layout {
    /// The embedded store's options (index dir = first backup partition).
    pub store: StoreOptions,
    /// `<index dir>/journal`.
    pub journal: PathBuf,
}

/// The backup layout of `conf`: `backuppartition-NAME` keys, the first by
/// name holding the index and the journal.
pub fn layout(conf: &Config) -> Result<Layout, String> {
    let parts: BTreeMap<String, PathBuf> = conf
        .backup_partitions()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    let (first_name, first) = parts
        .iter()
        .next()
        .map(|(n, p)| (n.clone(), p.clone()))
        .ok_or("no backuppartition-NAME configured")?;
    let mut store = StoreOptions::new(first.clone(), parts);
    store.default_partition = Some(
        conf.get_str("defaultpartition")
            .filter(|d| store.partitions.contains_key(*d))
            .map(str::to_owned)
            .unwrap_or(first_name),
    );
    Ok(Layout {
        store,
        journal: first.join("journal"),
    })
}

/// The journal file of `owner` (`None`: shared mailboxes). User ids become
/// file names only through this escaping: anything outside
/// `[A-Za-z0-9._@-]` (and a leading dot) is `%XX`.
pub fn journal_file(dir: &Path, owner: Option<&str>) -> PathBuf {
    let Some(owner) = owner else {
        return dir.join("%SHARED.log");
    };
    let mut name = String::new();
    for (i, b) in owner.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b"_@-".contains(&b) || (b == b'.' && i > 0);
        if plain {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    dir.join(format!("{name}.log"))
}

/// Appends to the per-user journals.
struct Journal {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Journal {
    fn append(&self, owner: Option<&str>, line: &[u8]) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&self.dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_file(&self.dir, owner))?;
        f.write_all(line)?;
        f.sync_data()
    }

    /// Appends one framed entry: `<now> <len> CRLF <cmd>`.
    fn entry(
        &self,
        owner: Option<&str>,
        now: i64,
        cmd: &proto::csync::Command,
    ) -> std::io::Result<()> {
        let enc = cmd.encode();
        let body = enc.text();
        let mut line = format!("{now} {}\r\n", body.len()).into_bytes();
        line.extend_from_slice(body);
        self.append(owner, &line)
    }

    /// Records the state of `id` after a durable batch.
    fn snapshot(&self, reader: &Reader, id: &UniqueId, now: i64) -> Result<(), String> {
        let Some(mb) = reader.mailbox_by_uniqueid(id).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let records = reader
            .records(id, UidRange::ALL, usize::MAX)
            .map_err(|e| e.to_string())?;
        let crcs = reader.sync_crcs(id).map_err(|e| e.to_string())?;
        let kv = engine::csync::wire::mailbox_kv(
            &mb,
            crcs,
            Some(records.iter().map(engine::csync::wire::record_kv).collect()),
        );
        let cmd = Command::Apply(Item::new("MAILBOX", Value::KvList(kv)));
        let owner = mb.owner.as_ref().map(|o| o.to_lossy());
        self.entry(owner.as_deref(), now, &cmd)
            .map_err(|e| e.to_string())
    }

    /// Records that `id` (named `name`) was deleted.
    fn unmailbox(
        &self,
        owner: Option<&str>,
        id: &UniqueId,
        name: &str,
        now: i64,
    ) -> Result<(), String> {
        let kv = KvList::new()
            .with(
                "UNIQUEID",
                Value::Atom(Bytes::copy_from_slice(id.as_bytes())),
            )
            .with(
                "MBOXNAME",
                Value::Quoted(Bytes::copy_from_slice(name.as_bytes())),
            );
        let cmd = Command::Apply(Item::new("UNMAILBOX", Value::KvList(kv)));
        self.entry(owner, now, &cmd).map_err(|e| e.to_string())
    }
}

/// One journal entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it was recorded (Unix seconds).
    pub at: i64,
    /// What it says.
    pub kind: EntryKind,
}

/// What a journal entry says.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// The full state of a mailbox (the `APPLY MAILBOX` dlist, records included).
    Mailbox(KvList),
    /// The mailbox with this UNIQUEID and name was deleted.
    Unmailbox {
        /// Its UNIQUEID.
        uniqueid: String,
        /// Its name then.
        name: String,
    },
}

/// Why a journal could not be read: the file's fault (truncated or
/// foreign bytes) or the disk's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The file could not be read (disk, permissions).
    #[error("read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// An entry's frame or command is malformed (a torn last write or a foreign file).
    #[error("{path}: entry at byte {offset}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where the bad entry starts.
        offset: usize,
        /// What is wrong.
        what: String,
    },
}

/// Reads every entry of a journal file, in order.
pub fn read_journal(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let data = std::fs::read(path).map_err(|e| JournalError::Io(path.to_owned(), e))?;
    let bad = |offset: usize, what: &str| JournalError::Malformed {
        path: path.to_owned(),
        offset,
        what: what.to_owned(),
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let nl = data[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad(pos, TORN_HEADER))?;
        let header =
            std::str::from_utf8(&data[pos..pos + nl]).map_err(|_| bad(pos, "header not text"))?;
        let (at, len) = header
            .split_once(' ')
            .ok_or_else(|| bad(pos, "header is not `time length`"))?;
        let at: i64 = at.parse().map_err(|_| bad(pos, "bad time"))?;
        let len: usize = len.parse().map_err(|_| bad(pos, "bad length"))?;
        let start = pos + nl + 2;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad(pos, TORN_BODY))?;
        let mut dec = ServerDecoder::new();
        dec.handle_input(&data[start..end]);
        let item = match dec.poll_event() {
            Ok(Some(DecodeEvent::Decoded(ClientLine::Command(Command::Apply(item))))) => item,
            _ => return Err(bad(pos, "not an APPLY command")),
        };
        let kv = item
            .value
            .as_kvlist()
            .cloned()
            .ok_or_else(|| bad(pos, "APPLY without a dlist"))?;
        let kind = match &item.key[..] {
            b"MAILBOX" => EntryKind::Mailbox(kv),
            b"UNMAILBOX" => EntryKind::Unmailbox {
                uniqueid: kv
                    .get("UNIQUEID")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                name: kv
                    .get("MBOXNAME")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            },
            _ => return Err(bad(pos, "unknown APPLY kind")),
        };
        out.push(Entry { at, kind });
        pos = end;
    }
    Ok(out)
}

/// Cuts a torn last entry (a crash during its append: no complete header
/// line, or fewer bytes than announced) off every journal in `dir`, so
/// later entries are not appended behind bytes no reader gets past. Any
/// other damage is left alone and reported: it is not a torn append, and
/// only an operator should decide what to drop. Returns what it did.
pub fn repair_journals(dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return notes;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("log") {
            continue;
        }
        match read_journal(&path) {
            Ok(_) => {}
            Err(JournalError::Malformed { offset, what, .. })
                if what == TORN_HEADER || what == TORN_BODY =>
            {
                let cut = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(offset as u64).and_then(|_| f.sync_all()));
                notes.push(match cut {
                    Ok(()) => format!("{}: torn last entry cut at byte {offset}", path.display()),
                    Err(e) => format!("{}: torn last entry, cut failed: {e}", path.display()),
                });
            }
            Err(e) => notes.push(format!("{e} (left as is)")),
        }
    }
    notes
}

const TORN_HEADER: &str = "no entry header line";
const TORN_BODY: &str = "truncated entry";

/// The backed-up mailboxes as they were at time `at` (Unix seconds;
/// `i64::MAX` for the latest), by UNIQUEID: for each mailbox, its last
/// `MAILBOX` entry at or before `at`, unless a later `UNMAILBOX` (still at
/// or before `at`) deleted it.
pub fn state_at(entries: &[Entry], at: i64) -> BTreeMap<String, KvList> {
    let mut state = BTreeMap::new();
    for e in entries.iter().filter(|e| e.at <= at) {
        match &e.kind {
            EntryKind::Mailbox(kv) => {
                if let Some(id) = kv.get("UNIQUEID").and_then(|v| v.as_str()) {
                    state.insert(id.to_owned(), kv.clone());
                }
            }
            EntryKind::Unmailbox { uniqueid, .. } => {
                state.remove(uniqueid);
            }
        }
    }
    state
}

struct Shared {
    committer: Committer,
    reader: Reader,
    pwcheck: PwCheck,
    access: Access,
    machine: MachineOptions,
    realm: Option<String>,
    journal: Journal,
}

struct Exec {
    shared: Arc<Shared>,
    conn: ConnId,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl EffectExecutor<Effect> for Exec {
    type Completion = Completion;

    fn execute(&self, effect: Effect) -> impl std::future::Future<Output = Completion> + Send {
        let shared = self.shared.clone();
        let mut pending_store = None;
        let mut creds = None;
        // Mailboxes this batch touches, and deletes (owner, uniqueid, name
        // read before the batch removes them).
        let mut touched: Vec<UniqueId> = Vec::new();
        let mut deleted: Vec<(Option<String>, UniqueId, String)> = Vec::new();
        match effect {
            Effect::Store(e) => {
                if let StoreEffect::Write(batch) = &e {
                    for m in &batch.mutations {
                        match m {
                            Mutation::PutMailbox(mb) => touched.push(mb.uniqueid.clone()),
                            Mutation::RenameMailbox { uniqueid, .. } => {
                                touched.push(uniqueid.clone())
                            }
                            Mutation::PutRecord { mailbox, .. }
                            | Mutation::PurgeRecords { mailbox, .. } => {
                                touched.push(mailbox.clone())
                            }
                            Mutation::DeleteMailbox { uniqueid, .. } => {
                                if let Ok(Some(mb)) = shared.reader.mailbox_by_uniqueid(uniqueid) {
                                    deleted.push((
                                        mb.owner.as_ref().map(|o| o.to_lossy()),
                                        uniqueid.clone(),
                                        mb.name.to_lossy(),
                                    ));
                                }
                            }
                            _ => {}
                        }
                    }
                    touched.sort();
                    touched.dedup();
                }
                let wants = matches!(e, StoreEffect::StageEnd { .. } | StoreEffect::Write(_));
                if wants {
                    let (tx, rx) = oneshot::channel();
                    shared.committer.submit(self.conn, e, move |c| {
                        let _ = tx.send(c);
                    });
                    pending_store = Some(rx);
                } else {
                    shared.committer.submit(self.conn, e, |_| {});
                }
            }
            Effect::Authenticate(c) => creds = Some(c),
        }
        async move {
            if let Some(rx) = pending_store {
                let c = rx.await.ok();
                if let Some(engine::store::Completion::Durable { .. }) = &c {
                    let now = unix_now();
                    let s = shared.clone();
                    let journaled = tokio::task::spawn_blocking(move || {
                        for id in &touched {
                            s.journal.snapshot(&s.reader, id, now)?;
                        }
                        for (owner, id, name) in &deleted {
                            s.journal.unmailbox(owner.as_deref(), id, name, now)?;
                        }
                        Ok::<(), String>(())
                    })
                    .await;
                    match journaled {
                        Ok(Ok(())) => {}
                        // The store has the change but the history does not:
                        // the next snapshot of the mailbox carries it, so
                        // only the in-between point in time is lost. Say so.
                        Ok(Err(e)) => error!(error = %e, "journal append failed"),
                        Err(e) => error!(error = %e, "journal task failed"),
                    }
                }
                return Completion::Store(c);
            }
            let Some(creds) = creds else {
                return Completion::Store(None);
            };
            csync_common::login(
                &shared.pwcheck,
                &shared.access,
                shared.realm.as_deref(),
                &creds,
            )
            .await
        }
    }
}

async fn run_connection<T: io_tokio::driver::Transport>(
    shared: Arc<Shared>,
    epoch: tokio::time::Instant,
    stream: T,
    peer: String,
) {
    let conn = shared.committer.connection();
    let now = Time::from_since_epoch(tokio::time::Instant::now() - epoch);
    let machine = Server::new(now, shared.reader.clone(), shared.machine.clone());
    let (etx, mut erx) = mpsc::channel::<Event>(256);
    let logger = tokio::spawn(async move {
        while let Some(e) = erx.recv().await {
            csync_common::log_event(e);
        }
    });
    let exec = Exec {
        shared: shared.clone(),
        conn,
    };
    let outcome = Driver::new(machine, exec)
        .epoch(epoch)
        .peer(&peer)
        .events(etx)
        .run(stream)
        .await;
    shared.committer.close(conn);
    let _ = logger.await;
    info!(%peer, result = ?outcome.result, read = outcome.bytes_read, written = outcome.bytes_written, "session ended");
}

fn machine_options(conf: &Config) -> MachineOptions {
    let mut m = csync_common::machine_options(conf);
    m.backupd = true;
    // Cyrus backupd accepts a file literal for any partition name.
    m.partitions = Vec::new();
    m
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORVID_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let _ = (args.reuse, args.idle);
    let conf = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
    };
    let layout = match layout(&conf) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("backupd: {}: {e}", args.config.display());
            return ExitCode::from(78);
        }
    };
    for note in repair_journals(&layout.journal) {
        eprintln!("backupd: journal: {note}");
    }
    let pwcheck = match PwCheck::from_config(&conf) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
    };
    let store = match store::Embedded::open(layout.store) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backupd: store: {e}");
            return ExitCode::from(74);
        }
    };
    let committer = Committer::spawn(store, CommitterOptions::default());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backupd: runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let mut machine = machine_options(&conf);
    let code = rt.block_on(async move {
        let epoch = tokio::time::Instant::now();
        machine.epoch_unix = UnixTime(unix_now());
        let shared = Arc::new(Shared {
            reader: committer.reader(),
            committer,
            pwcheck,
            access: Access::from_config(&conf),
            machine,
            realm: conf.get_str("sync_realm").map(str::to_owned),
            journal: Journal {
                dir: layout.journal,
                lock: Mutex::new(()),
            },
        });
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
            info!("shutting down");
        };
        let serve_opts = ServeOptions::default();
        if let Some(addr) = &args.listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("backupd: listen {addr}: {e}");
                    return ExitCode::from(71);
                }
            };
            info!(addr = %addr, "listening");
            let s = shared.clone();
            listen::serve(
                listener,
                move |stream, peer: SocketAddr| run_connection(s.clone(), epoch, stream, peer.to_string()),
                shutdown,
                serve_opts,
            )
            .await;
        } else if listen::master::is_under_master() {
            let listener = match listen::master::MasterListener::from_master() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("backupd: {e}");
                    return ExitCode::from(71);
                }
            };
            let s = shared.clone();
            listen::serve(
                listener,
                move |stream, peer: SocketAddr| run_connection(s.clone(), epoch, stream, peer.to_string()),
                shutdown,
                serve_opts,
            )
            .await;
        } else {
            run_connection(shared.clone(), epoch, io_tokio::driver::stdio(), "stdin".into()).await;
        }
        ExitCode::SUCCESS
    });
    drop(rt);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_never_leave_the_journal_dir() {
        let d = Path::new("/j");
        assert_eq!(journal_file(d, Some("alice")), Path::new("/j/alice.log"));
        assert_eq!(
            journal_file(d, Some("../etc/x")),
            Path::new("/j/%2E.%2Fetc%2Fx.log")
        );
        assert_eq!(
            journal_file(d, Some("bob@example.org")),
            Path::new("/j/bob@example.org.log")
        );
        assert_eq!(journal_file(d, None), Path::new("/j/%SHARED.log"));
    }

    fn entry(at: i64, cmd: &str) -> Vec<u8> {
        let mut v = format!("{at} {}\r\n", cmd.len()).into_bytes();
        v.extend_from_slice(cmd.as_bytes());
        v
    }

    #[test]
    fn state_at_replays_snapshots_and_deletes_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.log");
        let mut data = entry(
            10,
            "APPLY MAILBOX %(UNIQUEID a1 MBOXNAME user.u LAST_UID 1)\r\n",
        );
        data.extend(entry(
            20,
            "APPLY MAILBOX %(UNIQUEID a1 MBOXNAME user.u LAST_UID 2)\r\n",
        ));
        data.extend(entry(
            30,
            "APPLY UNMAILBOX %(UNIQUEID a1 MBOXNAME user.u)\r\n",
        ));
        std::fs::write(&p, &data).unwrap();
        let es = read_journal(&p).unwrap();
        assert_eq!(es.len(), 3);
        let last_uid = |t| {
            state_at(&es, t)
                .get("a1")
                .and_then(|kv| kv.get("LAST_UID").and_then(|v| v.as_u64()))
        };
        assert_eq!(last_uid(5), None);
        assert_eq!(last_uid(10), Some(1));
        assert_eq!(last_uid(29), Some(2));
        assert_eq!(last_uid(30), None);
        // A torn last entry is reported, with where it starts, and
        // repair cuts exactly it.
        let whole = data.len();
        data.truncate(whole - 3);
        std::fs::write(&p, &data).unwrap();
        match read_journal(&p) {
            Err(JournalError::Malformed { offset, .. }) => assert!(offset > 0),
            other => panic!("{other:?}"),
        }
        let notes = repair_journals(dir.path());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(read_journal(&p).unwrap().len(), 2);
        // Damage that is not a torn append is left alone.
        let mut bad = std::fs::read(&p).unwrap();
        bad.splice(0..2, *b"xx");
        std::fs::write(&p, &bad).unwrap();
        let notes = repair_journals(dir.path());
        assert!(notes[0].ends_with("(left as is)"), "{notes:?}");
        assert_eq!(std::fs::read(&p).unwrap(), bad);
    }
}
