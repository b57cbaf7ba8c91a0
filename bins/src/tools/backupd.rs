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
//! * The *backup* is [`store::backup`] (format 2): after every durable
//!   batch, [`store::backup::ops::ops_of_batch`] splits what the batch did
//!   by user, the bytes of every live record go to the shared zstd pack
//!   (deduplicated by GUID), and one chunk of deltas is appended to each
//!   touched user's journal and fsynced — all before the daemon answers
//!   the APPLY that caused it. Expunges and deletes are recorded, never
//!   destructive for the backup. At startup a torn last chunk (a crash
//!   mid-append) is cut off.
//!
//! Cost, said plainly: the working store keeps the newest bytes
//! uncompressed beside the pack (the replica machine reads it); a
//! backup-native `MailRead` would remove that copy.
//!
//! What it never does: serve mail back over csync `GET FETCH` for
//! copyback (`corvid backup restore` reads the backup instead), or change
//! a journal other than by appending.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use super::csync_common;
use engine::csync::{Completion, Effect, Options as MachineOptions, Server};
use engine::machine::Time;
use engine::model::{MailboxName, UniqueId, UnixTime, UserId};
use engine::store::{MailRead, Mutation, StoreEffect, WriteBatch};
use io_tokio::auth::{Access, PwCheck};
use io_tokio::config::Config;
use io_tokio::driver::{Driver, EffectExecutor};
use io_tokio::listen::{self, ServeOptions};
use store::backup::Backup;
use store::embedded::{Committer, CommitterOptions, ConnId, Options as StoreOptions, Reader};
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing::{error, info};

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
    pwcheck: PwCheck,
    access: Access,
    machine: MachineOptions,
    realm: Option<String>,
    backup: Backup,
}

/// Puts what `batch` did into the backup: message bytes into the pack
/// first, then one chunk per touched user, each durable on return.
pub fn journal_batch(
    backup: &Backup,
    reader: &Reader,
    batch: &WriteBatch,
    deleted: &BTreeMap<UniqueId, (Option<UserId>, MailboxName)>,
    now: i64,
) -> Result<(), String> {
    let (per_user, guids) =
        store::backup::ops::ops_of_batch(batch, deleted, reader).map_err(|e| e.to_string())?;
    for (g, size) in &guids {
        if backup.pack().has(g) {
            continue;
        }
        backup
            .pack()
            .put_from(g, *size, |off, n| {
                reader.message_bytes(g, off, n).map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?;
    }
    for (user, ops) in &per_user {
        backup
            .append(user.as_ref(), now, ops)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
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
        crate::observe::csync_effect(&effect);
        let shared = self.shared.clone();
        let mut pending_store = None;
        let mut creds = None;
        // The batch (to journal once durable) and the owner and name of
        // every mailbox it deletes, read before the batch removes them.
        let mut written: Option<WriteBatch> = None;
        let mut deleted: BTreeMap<UniqueId, (Option<UserId>, MailboxName)> = BTreeMap::new();
        match effect {
            Effect::Store(e) => {
                if let StoreEffect::Write(batch) = &e {
                    for m in &batch.mutations {
                        if let Mutation::DeleteMailbox { uniqueid, .. } = m {
                            if let Ok(Some(mb)) = shared.reader.mailbox_by_uniqueid(uniqueid) {
                                let owner = mb
                                    .owner
                                    .clone()
                                    .or_else(|| engine::csync::wire::owner_of(&mb.name));
                                deleted.insert(uniqueid.clone(), (owner, mb.name.clone()));
                            }
                        }
                    }
                    written = Some(batch.clone());
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
                if let (Some(engine::store::Completion::Durable { batch_id, .. }), Some(batch)) =
                    (&c, written)
                {
                    let batch_id = *batch_id;
                    let s = shared.clone();
                    let journaled = tokio::task::spawn_blocking(move || {
                        journal_batch(&s.backup, &s.reader, &batch, &deleted, unix_now())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    if let Err(e) = journaled {
                        // The working store has the change but the backup
                        // does not: never say "stored" for it.
                        error!(error = %e, "backup append failed; answering NO");
                        return Completion::Store(Some(engine::store::Completion::Failed {
                            batch_id,
                            error: engine::store::StoreError::Io(format!("backup: {e}")),
                        }));
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
    let span = crate::observe::connection_span("backupd", &peer);
    let _active = io_tokio::metrics::global().connection_opened("backupd");
    let (etx, logger) = csync_common::spawn_event_logger("backupd", &span);
    let exec = Exec {
        shared: shared.clone(),
        conn,
    };
    let outcome = Driver::new(machine, exec)
        .epoch(epoch)
        .peer(&peer)
        .events(etx)
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
    /// Runs one connection, counted.
    async fn track(self: Arc<Self>, conn: impl std::future::Future<Output = ()>) {
        use std::sync::atomic::Ordering::SeqCst;
        self.started.fetch_add(1, SeqCst);
        self.live.fetch_add(1, SeqCst);
        self.changed.notify_waiters();
        conn.await;
        self.live.fetch_sub(1, SeqCst);
        self.changed.notify_waiters();
    }

    /// Resolves when the daemon should stop: `uses` connections started
    /// and all ended, or no connection for `idle` seconds; never if
    /// neither is given. Only ever stops with no connection live, so a
    /// stop never cuts a sync.
    async fn ends(self: Arc<Self>, uses: Option<u32>, idle: Option<u64>) {
        use std::sync::atomic::Ordering::SeqCst;
        if uses.is_none() && idle.is_none() {
            return std::future::pending().await;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let live = self.live.load(SeqCst);
            if live == 0 && uses.is_some_and(|u| self.started.load(SeqCst) >= u as u64) {
                return;
            }
            match idle {
                Some(t) if live == 0 => {
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
            backup,
        });
        let life = Arc::new(Life::default());
        let lifetime = life.clone().ends(args.uses, args.idle.filter(|t| *t > 0));
        let shutdown = async {
            tokio::select! {
                _ = listen::shutdown_signal(listen::master::is_under_master()) => {},
                _ = lifetime => {},
            }
            info!("shutting down");
        };
        crate::observe::watch_hangup(args.config.clone(), None);
        if let Err(e) = crate::observe::start_metrics(&conf).await {
            eprintln!("backupd: {e}");
            return ExitCode::from(78);
        }
        crate::observe::spawn_backup_bytes(&conf);
        let serve_opts = ServeOptions::default();
        let drain = serve_opts.drain.clone();
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
                {
                    let life = life.clone();
                    move |stream, peer: SocketAddr| {
                        life.clone().track(run_connection(
                            s.clone(),
                            epoch,
                            drain.wrap(stream),
                            peer.to_string(),
                        ))
                    }
                },
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
                {
                    let life = life.clone();
                    move |stream, peer: SocketAddr| {
                        life.clone().track(run_connection(
                            s.clone(),
                            epoch,
                            drain.wrap(stream),
                            peer.to_string(),
                        ))
                    }
                },
                shutdown,
                serve_opts,
            )
            .await;
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
