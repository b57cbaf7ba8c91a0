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
//! * The *current* state (what `GET` answers from) lives in a working
//!   embedded store whose index sits in the first `backuppartition-NAME`
//!   directory.
//! * The *backup* is [`store::backup`] (format 2), and it is the source of
//!   truth: a batch is journaled **before** the working store may apply
//!   it. While the peer uploads a message, its bytes are streamed into
//!   the shared zstd pack as well (compressed and hashed as they arrive,
//!   deduplicated by GUID). When the machine emits a batch,
//!   [`store::backup::ops::ops_of_batch`] splits what it will do by user
//!   (reading the state after it through [`engine::store::Pending`]); the
//!   batch's new pack files are made durable together (one round of
//!   parallel fsyncs, not two per message), one chunk of deltas is
//!   appended to each touched user's journal and fsynced, and only then
//!   is the batch handed to the working store, whose durability completes
//!   the APPLY. If the journal fails, the working store never sees the
//!   batch: the peer gets NO and a retry finds the change absent and sends
//!   it again. If the working store fails after the journal succeeded, the
//!   journal holds a change the peer was told failed; its retry records it
//!   again, which replays to the same state (records are keyed by UID and
//!   never replaced by an older MODSEQ). Expunges and deletes are
//!   recorded, never destructive for the backup. At startup a torn last
//!   chunk (a crash mid-append) is cut off.
//!
//! Cost, said plainly: the working store still keeps the newest bytes
//! uncompressed beside the pack (the replica machine's store reads them);
//! a backup-native `MailRead` would remove that copy.
//!
//! What it never does: serve mail back over csync `GET FETCH` for
//! copyback (`corvid backup restore` reads the backup instead), or change
//! a journal other than by appending.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use super::csync_common;
use engine::csync::{Completion, Effect, Options as MachineOptions, Server};
use engine::machine::Time;
use engine::model::{Guid, MailboxName, UniqueId, UnixTime, UserId};
use engine::store::{MailRead, Mutation, Pending, StageId, StoreEffect, WriteBatch};
use io_tokio::auth::{Access, LivePwCheck};
use io_tokio::config::Config;
use io_tokio::driver::{Driver, EffectExecutor};
use io_tokio::listen::{self, ServeOptions};
use store::backup::{Backup, PackWriter, Staged};
use store::embedded::{Committer, CommitterOptions, ConnId, Options as StoreOptions, Reader};
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing::{error, info, warn};

/// Cyrus backup server (csync target keeping restorable backups).
#[derive(Debug, Parser)]
#[command(name = "backupd")]
struct Args {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// Serve this many connections, then exit once they end (Cyrus
    /// master's `-U uses`; unlimited when not given).
    #[arg(short = 'U')]
    uses: Option<u32>,
    /// Exit after this many seconds without a connection (Cyrus master's
    /// `-T timeout`; 0 or not given: never).
    #[arg(short = 'T')]
    idle: Option<u64>,
    /// Run the external debugger (`debug_command`): not supported, said
    /// so at startup, otherwise ignored.
    #[arg(short = 'D')]
    debug: bool,
    /// Accepted for Cyrus service command lines; no effect.
    #[arg(short = 's')]
    s_flag: bool,
    /// Accepted for Cyrus service command lines; no effect.
    #[arg(short = 'N')]
    n_flag: bool,
    /// An external security layer of this strength exists (logged; corvid
    /// offers the same mechanisms either way).
    #[arg(short = 'p')]
    ssf: Option<u32>,
    /// Listen on HOST:PORT instead of master's socket or stdin/stdout.
    #[arg(long)]
    listen: Option<String>,
}

/// Where a backup store lives, from imapd.conf.
pub struct Layout {
    /// The working store's options (index dir = first backup partition).
    pub store: StoreOptions,
    /// The backup itself (journals, pack, index).
    pub backup: store::backup::Options,
    /// `backup_retention` (`backup_retention_days`), seconds; 0 = keep all.
    pub retention_s: i64,
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
    let backup = store::backup::Options::new(
        std::iter::once(first.clone())
            .chain(parts.values().filter(|p| **p != first).cloned())
            .collect(),
    );
    let mut store = StoreOptions::new(first.clone(), parts);

    store.default_partition = Some(
        conf.get_str("defaultpartition")
            .filter(|d| store.partitions.contains_key(*d))
            .map(str::to_owned)
            .unwrap_or(first_name),
    );
    let retention_s = conf
        .get_duration_s("backup_retention", io_tokio::config::DurationUnit::Days)
        .map_err(|e| e.to_string())?;
    Ok(Layout {
        store,
        backup,
        retention_s,
    })
}

struct Shared {
    committer: Committer,
    reader: Reader,
    pwcheck: LivePwCheck,
    access: Access,
    machine: MachineOptions,
    realm: Option<String>,
    backup: Backup,
}

/// Puts what `batch` will do into the backup, before the working store
/// sees it: message bytes into the pack (those `staged` while the peer
/// uploaded them, else read from `view`, which already holds them), made
/// durable together, then one chunk per touched user, each durable on
/// return. `view` is the state *after* the batch (the working store with
/// the batch layered over it, [`engine::store::Pending`]); `deleted`
/// names the owner and name of every mailbox the batch deletes, read
/// before it.
pub fn journal_batch(
    backup: &Backup,
    view: &impl MailRead,
    batch: &WriteBatch,
    deleted: &BTreeMap<UniqueId, (Option<UserId>, MailboxName)>,
    staged: &mut BTreeMap<Guid, Staged>,
    now: i64,
) -> Result<(), String> {
    let (per_user, guids) =
        store::backup::ops::ops_of_batch(batch, deleted, view).map_err(|e| e.to_string())?;
    let mut commit: Vec<Staged> = Vec::new();
    let mut seen = BTreeSet::new();
    for (g, size) in &guids {
        if !seen.insert(*g) || backup.pack().has(g) {
            continue;
        }
        if let Some(s) = staged.remove(g) {
            commit.push(s);
            continue;
        }
        // Bytes the working store already holds (an earlier upload, or
        // another user's copy of the same message).
        let mut w = backup.pack().writer(*g, *size).map_err(|e| e.to_string())?;
        let mut off = 0u64;
        while off < *size {
            let want = (*size - off).min(1 << 20) as usize;
            let b = view
                .message_bytes(g, off, want)
                .map_err(|e| format!("message {}: {e}", g.to_hex()))?;
            if b.is_empty() {
                return Err(format!(
                    "message {}: ended at {off} of {size} bytes",
                    g.to_hex()
                ));
            }
            w.write(&b).map_err(|e| e.to_string())?;
            off += b.len() as u64;
        }
        commit.push(w.finish().map_err(|e| e.to_string())?);
    }
    backup.pack().commit(commit).map_err(|e| e.to_string())?;
    for (user, ops) in &per_user {
        backup
            .append(user.as_ref(), now, ops)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One connection's executor: the committer for the working store, plus
/// the pack copies of the messages the peer is uploading and the
/// connection's batches journaled but not yet durable in the working
/// store.
struct Exec {
    shared: Arc<Shared>,
    conn: ConnId,
    tee: Mutex<Tee>,
    pending: Arc<Mutex<Pending<Reader>>>,
}

/// Messages streamed into the pack while the peer uploads them. Bounded
/// by the working store's `staged_messages_max`: a staging the store
/// refuses ends the machine's upload, so this never holds more than one
/// beyond it.
#[derive(Default)]
struct Tee {
    writing: BTreeMap<StageId, PackWriter>,
    staged: BTreeMap<Guid, Staged>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it is our bug; the data (files to commit or
    // drop) is still consistent enough to carry on or clean up.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking file work from inside a runtime task without stalling
/// the other connections on this worker.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Exec {
    /// Copies a staging into the pack as it arrives. A failure here only
    /// costs a re-read at journal time, so it is logged, not answered.
    fn tee(&self, e: &StoreEffect) {
        let mut tee = lock(&self.tee);
        match e {
            StoreEffect::StageBegin { stage, guid, size } => {
                if self.shared.backup.pack().has(guid) || tee.staged.contains_key(guid) {
                    return;
                }
                match self.shared.backup.pack().writer(*guid, *size) {
                    Ok(w) => {
                        tee.writing.insert(*stage, w);
                    }
                    Err(e) => warn!(error = %e, "pack: cannot stage a message"),
                }
            }
            StoreEffect::StageChunk { stage, bytes } => {
                if let Some(w) = tee.writing.get_mut(stage) {
                    if let Err(e) = w.write(bytes) {
                        // The store refuses the same bytes (size/GUID).
                        tracing::debug!(error = %e, "pack: staging dropped");
                        tee.writing.remove(stage);
                    }
                }
            }
            StoreEffect::StageEnd { stage } => {
                if let Some(w) = tee.writing.remove(stage) {
                    match w.finish() {
                        Ok(s) => {
                            tee.staged.insert(s.guid(), s);
                        }
                        Err(e) => tracing::debug!(error = %e, "pack: staging dropped"),
                    }
                }
            }
            StoreEffect::StageAbort { stage } => {
                tee.writing.remove(stage);
            }
            _ => {}
        }
    }

    /// Journals `batch` before the working store may apply it (the
    /// journal is the source of truth: if this fails the store never sees
    /// the batch, the peer gets NO and its retry sends the change again).
    fn journal_first(&self, batch: &WriteBatch) -> Result<(), String> {
        let shared = &self.shared;
        let mut pending = lock(&self.pending);
        let mut deleted: BTreeMap<UniqueId, (Option<UserId>, MailboxName)> = BTreeMap::new();
        for m in &batch.mutations {
            if let Mutation::DeleteMailbox { uniqueid, .. } = m {
                if let Ok(Some(mb)) = pending.mailbox_by_uniqueid(uniqueid) {
                    let owner = mb
                        .owner
                        .clone()
                        .or_else(|| engine::csync::wire::owner_of(&mb.name));
                    deleted.insert(uniqueid.clone(), (owner, mb.name.clone()));
                }
            }
        }
        pending.push(batch).map_err(|e| e.to_string())?;
        let mut staged = std::mem::take(&mut lock(&self.tee).staged);
        let r = journal_batch(
            &shared.backup,
            &*pending,
            batch,
            &deleted,
            &mut staged,
            unix_now(),
        );
        // Stagings this batch did not link stay for a later one.
        lock(&self.tee).staged.append(&mut staged);
        if r.is_err() {
            pending.complete(batch.id);
        }
        r
    }
}

impl EffectExecutor<Effect> for Exec {
    type Completion = Completion;

    fn execute(&self, effect: Effect) -> impl std::future::Future<Output = Completion> + Send {
        crate::observe::csync_effect(&effect);
        let shared = self.shared.clone();
        let pending = self.pending.clone();
        let mut pending_store = None;
        let mut creds = None;
        let mut refused = None;
        let mut written = None;
        match effect {
            Effect::Store(e) => {
                self.tee(&e);
                if let StoreEffect::Write(batch) = &e {
                    if let Err(err) = blocking(|| self.journal_first(batch)) {
                        // Nothing reaches the working store: a retry
                        // finds the change absent and sends it again.
                        error!(error = %err, "backup append failed; answering NO");
                        refused = Some(engine::store::Completion::Failed {
                            batch_id: batch.id,
                            error: engine::store::StoreError::Io(format!("backup: {err}")),
                        });
                    }
                    written = Some(batch.id);
                }
                if refused.is_none() {
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
            }
            Effect::Authenticate(c) => creds = Some(c),
        }
        async move {
            if let Some(c) = refused {
                return Completion::Store(Some(c));
            }
            if let Some(rx) = pending_store {
                let c = rx.await.ok();
                if let Some(id) = written {
                    // Durable: the store answers for it now; failed: it
                    // is journaled but never happened (replaying it again
                    // on a retry is harmless: records are keyed by UID).
                    lock(&pending).complete(id);
                }
                return Completion::Store(c);
            }
            let Some(creds) = creds else {
                return Completion::Store(None);
            };
            csync_common::login(
                &shared.pwcheck.get(),
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
    let mut opts = shared.machine.clone();
    crate::observe::live_csync(&mut opts, csync_common::machine_options);
    let machine = Server::new(now, shared.reader.clone(), opts);
    let span = crate::observe::connection_span("backupd", &peer);
    let _active = io_tokio::metrics::global().connection_opened("backupd");
    let (etx, logger) = csync_common::spawn_event_logger("backupd", &span);
    let exec = Exec {
        shared: shared.clone(),
        conn,
        tee: Mutex::new(Tee::default()),
        pending: Arc::new(Mutex::new(Pending::new(shared.reader.clone()))),
    };
    let outcome = Driver::new(machine, exec)
        .epoch(epoch)
        .peer(&peer)
        .events(etx)
        .telemetry(crate::observe::telemetry(), crate::observe::csync_user)
        .run(stream)
        .instrument(span)
        .await;
    shared.committer.close(conn);
    let _ = logger.await;
    info!(%peer, result = ?outcome.result, read = outcome.bytes_read, written = outcome.bytes_written, "session ended");
}

/// Connections served and live, for `-U` and `-T`.
#[derive(Default)]
struct Life {
    started: std::sync::atomic::AtomicU64,
    live: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Life {
    /// Counts a connection as started (at once, before the accept loop
    /// looks at the count again) and returns it wrapped to count its end.
    fn track(
        self: Arc<Self>,
        conn: impl std::future::Future<Output = ()>,
    ) -> impl std::future::Future<Output = ()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.started.fetch_add(1, SeqCst);
        self.live.fetch_add(1, SeqCst);
        self.changed.notify_waiters();
        async move {
            conn.await;
            self.live.fetch_sub(1, SeqCst);
            self.changed.notify_waiters();
        }
    }

    /// Resolves when the daemon should stop accepting: `uses` connections
    /// started (as a Cyrus service's `-U`: the count-th is the last one
    /// taken), or no connection for `idle` seconds; never if neither is
    /// given. Connections already taken then run to their end.
    async fn accepting_ends(self: Arc<Self>, uses: Option<u32>, idle: Option<u64>) {
        use std::sync::atomic::Ordering::SeqCst;
        if uses.is_none() && idle.is_none() {
            return std::future::pending().await;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if uses.is_some_and(|u| self.started.load(SeqCst) >= u as u64) {
                info!(uses = ?uses, "served the -U count of connections; no longer accepting");
                return;
            }
            match idle {
                Some(t) if self.live.load(SeqCst) == 0 => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(std::time::Duration::from_secs(t)) => {
                            if self.live.load(SeqCst) == 0 {
                                info!(idle_s = t, "no connection for the -T timeout; exiting");
                                return;
                            }
                        }
                    }
                }
                _ => changed.await,
            }
        }
    }
}

/// Grace a connection gets to finish after SIGTERM (then it is cut).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts until a signal or the `-U`/`-T` end, then lets the connections
/// taken finish: all of them, however long, after `-U`/`-T`; after a
/// signal, each ends after its command in flight, cut after
/// [`SHUTDOWN_GRACE`].
async fn serve_until_done<L: listen::Listener>(
    listener: L,
    shared: Arc<Shared>,
    epoch: tokio::time::Instant,
    uses: Option<u32>,
    idle: Option<u64>,
) {
    let life = Arc::new(Life::default());
    // Streams are wrapped with `conns`, which only a signal throws; the
    // accept loop's own drain (thrown when it stops accepting) reaches no
    // stream, so the end of accepting at -U never cuts a sync.
    let conns = listen::Drain::default();
    let signalled = Arc::new(tokio::sync::Notify::new());
    let stop = {
        let (life, conns, signalled) = (life.clone(), conns.clone(), signalled.clone());
        async move {
            let mut sig = Box::pin(listen::shutdown_signal(listen::master::is_under_master()));
            tokio::select! {
                _ = &mut sig => {
                    conns.start();
                    signalled.notify_one();
                    info!("shutting down");
                    return;
                },
                _ = life.accepting_ends(uses, idle) => {},
            }
            // Still answer a signal while the last connections finish.
            tokio::spawn(async move {
                sig.await;
                conns.start();
                signalled.notify_one();
                info!("shutting down");
            });
        }
    };
    let opts = ServeOptions {
        shutdown_grace: std::time::Duration::from_secs(365 * 86_400),
        ..ServeOptions::default()
    };
    let served = listen::serve(
        listener,
        move |stream, peer: SocketAddr| {
            life.clone().track(run_connection(
                shared.clone(),
                epoch,
                conns.wrap(stream),
                peer.to_string(),
            ))
        },
        stop,
        opts,
    );
    tokio::select! {
        _ = served => {},
        _ = async {
            signalled.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => warn!("shutdown grace over; aborting connections"),
    }
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
    if args.debug {
        eprintln!("backupd: -D (debug_command) is not supported by corvid; ignored");
    }
    let _ = (args.s_flag, args.n_flag);
    if let Some(ssf) = args.ssf {
        info!(ssf, "external security layer announced (-p)");
    }
    let conf = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
    };
    // operator: logs to syslog or stderr (crate::logging), config findings.
    let log = crate::logging::Setup::new("backupd", "info", Some(&conf));
    if let Some(w) = crate::logging::init(&log) {
        eprintln!("backupd: {w}");
    }
    for f in io_tokio::config::lint::check(&conf) {
        tracing::warn!("{f}");
    }
    let layout = match layout(&conf) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("backupd: {}: {e}", args.config.display());
            return ExitCode::from(78);
        }
    };
    let backup = match Backup::open(layout.backup.clone()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
    };
    for old in backup.old_format_journals() {
        eprintln!(
            "backupd: {}: a format-1 journal from an earlier corvid is ignored (this version writes format 2 under users/)",
            old.display()
        );
    }
    for note in backup.repair() {
        eprintln!("backupd: journal: {note}");
    }
    // Pack files a writer that died left unnamed (a live writer's are
    // minutes old at most; several backupd processes may share the pack).
    let stale = backup
        .pack()
        .clean_tmp(std::time::Duration::from_secs(86_400));
    if stale > 0 {
        eprintln!("backupd: pack: removed {stale} unfinished file(s) older than a day");
    }
    let pwcheck = match LivePwCheck::from_config(&conf) {
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
            backup,
        });
        crate::observe::watch_hangup(args.config.clone(), None);
        if let Err(e) = crate::observe::start_metrics(&conf).await {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
        crate::observe::spawn_backup_bytes(&conf);
        let idle = args.idle.filter(|t| *t > 0);
        if let Some(addr) = &args.listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("backupd: listen {addr}: {e}");
                    return ExitCode::from(71);
                }
            };
            info!(addr = %addr, "listening");
            serve_until_done(listener, shared.clone(), epoch, args.uses, idle).await;
        } else if listen::master::is_under_master() {
            let listener = match listen::master::MasterListener::from_master() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("backupd: {e}");
                    return ExitCode::from(71);
                }
            };
            serve_until_done(listener, shared.clone(), epoch, args.uses, idle).await;
        } else {
            run_connection(
                shared.clone(),
                epoch,
                io_tokio::driver::stdio(),
                "stdin".into(),
            )
            .await;
        }
        ExitCode::SUCCESS
    });
    drop(rt);
    code
}
