//! `corvid sync_server`: a Cyrus replication replica that a real Cyrus
//! `sync_client` replicates into.
//!
//! Flags as Cyrus's sync_server (`-C imapd.conf`, `-p ssf`, `-f` force
//! mode; `-U`, `-T`, `-D` accepted and ignored), plus `--listen HOST:PORT`.
//! It serves, in this order of preference: the `--listen` address; the
//! socket Cyrus master(8) hands down (a SERVICES entry, `prefork=1`); one
//! session on stdin/stdout.
//!
//! What it wires together: imapd.conf (`configdirectory`, `partition-*`,
//! `servername`, `sasl_mech_list`, `admins`, `sync_timeout`, TLS keys), the
//! embedded store under `configdirectory` (one committer thread with group
//! commit), the password check (`corvid_passwd_file` or saslauthd), and
//! one `engine::csync::Server` machine per connection run by the tokio
//! driver. Every protocol decision is the machine's.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

use super::csync_common;
use engine::csync::{Completion, Effect, Flavour, Options as MachineOptions, Server};
use engine::machine::Time;
use engine::model::UnixTime;
use engine::store::StoreEffect;
use io_tokio::auth::{Access, LivePwCheck};
use io_tokio::config::Config;
use io_tokio::driver::{Driver, EffectExecutor};
use io_tokio::listen::{self, ServeOptions};
use store::embedded::{Committer, CommitterOptions, ConnId, Options as StoreOptions, Reader};
use tokio::sync::oneshot;
use tracing::info;
use tracing::Instrument;

/// Cyrus replication replica (csync).
#[derive(Debug, Parser)]
#[command(name = "sync_server")]
struct Args {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// External security strength factor (as Cyrus): a layer this strong
    /// already protects the socket, so PLAIN/LOGIN may be offered on it.
    #[arg(short = 'p')]
    ssf: Option<u32>,
    /// Force mode for every session (relaxes the replica-ahead checks).
    #[arg(short = 'f')]
    force: bool,
    /// Cyrus master's reuse count (ignored: corvid serves all connections in one process).
    #[arg(short = 'U')]
    reuse: Option<u32>,
    /// Cyrus master's idle timeout (ignored).
    #[arg(short = 'T')]
    idle: Option<u32>,
    /// Cyrus debug flag (ignored).
    #[arg(short = 'D')]
    debug: bool,
    /// Listen on HOST:PORT instead of master's socket or stdin/stdout.
    #[arg(long)]
    listen: Option<String>,
    /// Also serve the IMAP-embedded flavour (what a sync_client with
    /// `sync_try_imap` looks for: X-REPLICATION, tagged SYNCAPPLY/SYNCGET)
    /// on HOST:PORT, from the same store.
    #[arg(long)]
    imap_listen: Option<String>,
    /// Speak the IMAP-embedded flavour on the main socket (master(8) fd,
    /// stdin/stdout or --listen) instead of csync.
    #[arg(long)]
    imap: bool,
}

/// Everything connections share.
struct Shared {
    committer: Committer,
    reader: Reader,
    pwcheck: LivePwCheck,
    logins: csync_common::LoginCache,
    locks: Arc<UserLockTable>,
    access: Access,
    machine: MachineOptions,
    realm: Option<String>,
    /// `-p ssf`: the strength master(8) says the socket already has.
    ssf: Option<u32>,
}

/// The per-user locks of this daemon's sessions ([`engine::csync::UserLocks`]):
/// who holds each user id. Taken all-or-none under one mutex, held only for
/// the map update, never across an await.
#[derive(Default)]
struct UserLockTable {
    held: std::sync::Mutex<std::collections::HashMap<bytes::Bytes, u64>>,
}

impl engine::csync::UserLocks for UserLockTable {
    fn try_lock(&self, session: u64, users: &[bytes::Bytes]) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if users
            .iter()
            .any(|u| held.get(u).is_some_and(|&s| s != session))
        {
            return false;
        }
        for u in users {
            held.insert(u.clone(), session);
        }
        true
    }

    fn unlock(&self, session: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, s| *s != session);
    }
}

/// Performs one connection's effects: store effects through the committer
/// (in emission order: `submit` runs before the future's first await),
/// password checks through the configured backend.
struct Exec {
    shared: Arc<Shared>,
    conn: ConnId,
}

impl EffectExecutor<Effect> for Exec {
    type Completion = Completion;

    fn execute(&self, effect: Effect) -> impl std::future::Future<Output = Completion> + Send {
        let shared = self.shared.clone();
        let mut pending_store: Option<oneshot::Receiver<engine::store::Completion>> = None;
        let mut creds = None;
        crate::observe::csync_effect(&effect);
        match effect {
            Effect::Store(e) => {
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
                return Completion::Store(rx.await.ok());
            }
            let Some(creds) = creds else {
                return Completion::Store(None);
            };
            csync_common::login_cached(
                &shared.logins,
                &shared.pwcheck.get(),
                &shared.access,
                shared.realm.as_deref(),
                &creds,
            )
            .await
        }
    }
}

fn settings(conf: &Config, args: &Args) -> Result<(MachineOptions, StoreOptions), String> {
    let configdir = conf
        .configdirectory()
        .map_err(|e| e.to_string())?
        .to_path_buf();
    let partitions: std::collections::BTreeMap<String, PathBuf> = conf
        .partitions()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    if partitions.is_empty() {
        return Err("no partition-NAME configured".into());
    }
    let mut store = StoreOptions::new(configdir, partitions.clone());
    store.default_partition = conf.get_str("defaultpartition").map(str::to_owned);
    // What it applies goes to the sync log when `sync_log` and
    // `sync_log_chain` say so, for a rolling client to replicate onward.
    store.sync_log_channels = csync_common::sync_log_channels(conf, true)?;
    let mut m = csync_common::machine_options(conf);
    m.starttls =
        conf.get_str("tls_server_cert").is_some() && conf.get_str("tls_server_key").is_some();
    m.force = args.force;
    if let Some(ssf) = args.ssf {
        // master(8) says the socket is already protected (`-p`): what may
        // be offered in the clear follows from that strength.
        m.mechanisms = io_tokio::auth::offered_mechanisms(conf, ssf).map_err(|e| e.to_string())?;
    }

    m.partitions = partitions.keys().cloned().collect();
    Ok((m, store))
}

async fn run_connection<T: io_tokio::driver::Transport>(
    shared: Arc<Shared>,
    epoch: tokio::time::Instant,
    stream: T,
    peer: String,
    tls: io_tokio::tls::TlsConfigs,
    flavour: Flavour,
) {
    let conn = shared.committer.connection();
    let now = Time::from_since_epoch(tokio::time::Instant::now() - epoch);
    let mut opts = shared.machine.clone();
    crate::observe::live_csync(&mut opts, csync_common::machine_options);
    if let (Some(ssf), Some(conf)) = (shared.ssf, io_tokio::config::live::current()) {
        // -p: what may be offered in the clear follows from that strength,
        // under the running allowplaintext/sasl_mech_list.
        if let Ok(m) = io_tokio::auth::offered_mechanisms(&conf, ssf) {
            opts.mechanisms = m;
        }
    }
    opts.flavour = flavour;
    opts.session = conn.get();
    opts.user_locks = Some(engine::csync::Locks(shared.locks.clone()));
    let machine = Server::new(now, shared.reader.clone(), opts);
    let span = crate::observe::connection_span("sync_server", &peer);
    let _active = io_tokio::metrics::global().connection_opened("sync_server");
    let (etx, logger) = csync_common::spawn_event_logger("sync_server", &span);
    let exec = Exec {
        shared: shared.clone(),
        conn,
    };
    let outcome = Driver::new(machine, exec)
        .epoch(epoch)
        .peer(&peer)
        .tls(crate::observe::live_tls(tls))
        .events(etx)
        .telemetry(crate::observe::telemetry(), crate::observe::csync_user)
        .run(stream)
        .instrument(span)
        .await;
    shared.committer.close(conn);
    // The machine releases its locks when it closes; a session that ended
    // without closing (a connection error) must not keep them.
    engine::csync::UserLocks::unlock(&*shared.locks, conn.get());
    let _ = logger.await;
    info!(%peer, result = ?outcome.result, read = outcome.bytes_read, written = outcome.bytes_written, "session ended");
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
    let _ = (args.ssf, args.reuse, args.idle, args.debug);
    let conf = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sync_server: {e}");
            return ExitCode::from(78);
        }
    };
    // operator: logs to syslog or stderr (crate::logging), config findings, metrics.
    let log = crate::logging::Setup::new("sync_server", "info", Some(&conf));
    if let Some(w) = crate::logging::init(&log) {
        eprintln!("sync_server: {w}");
    }
    for f in io_tokio::config::lint::check(&conf) {
        tracing::warn!("{f}");
    }
    let (mut machine, store_opts) = match settings(&conf, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sync_server: {}: {e}", args.config.display());
            return ExitCode::from(78);
        }
    };
    let pwcheck = match LivePwCheck::from_config(&conf) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sync_server: {e}");
            return ExitCode::from(78);
        }
    };
    let tls = if machine.starttls {
        match io_tokio::tls::TlsFiles::from_lookup(|k| conf.get_str(k).map(str::to_owned))
            .and_then(|f| io_tokio::tls::TlsConfigs::from_files(&f))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sync_server: TLS: {e}");
                return ExitCode::from(78);
            }
        }
    } else {
        io_tokio::tls::TlsConfigs::default()
    };
    let store = match store::Embedded::open(store_opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sync_server: store: {e}");
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
            eprintln!("sync_server: runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let code = rt.block_on(async move {
        let epoch = tokio::time::Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        machine.epoch_unix = UnixTime(unix);
        let shared = Arc::new(Shared {
            reader: committer.reader(),
            committer,
            logins: csync_common::LoginCache::new(),
            locks: Arc::new(UserLockTable::default()),
            pwcheck,
            access: Access::from_config(&conf),
            machine,
            realm: conf.get_str("sync_realm").map(str::to_owned),
            ssf: args.ssf,
        });
        let shutdown = async {
            listen::shutdown_signal(listen::master::is_under_master()).await;
            info!("shutting down");
        };
        crate::observe::watch_hangup(args.config.clone(), None);
        if let Err(e) = crate::observe::start_metrics(&conf).await {
            eprintln!("sync_server: {e}");
            return ExitCode::from(78);
        }
        let serve_opts = ServeOptions::default();
        let drain = serve_opts.drain.clone();
        let main_flavour = if args.imap {
            Flavour::Imap
        } else {
            Flavour::Csync
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let mut imap_task = None;
        if let Some(addr) = &args.imap_listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sync_server: listen {addr}: {e}");
                    return ExitCode::from(71);
                }
            };
            info!(addr = %addr, "listening (IMAP-embedded flavour)");
            let s = shared.clone();
            let tls = tls.clone();
            let mut stop = stop_rx.clone();
            let opts = serve_opts.clone();
            let drain = drain.clone();
            imap_task = Some(tokio::spawn(listen::serve(
                listener,
                move |stream, peer: SocketAddr| {
                    run_connection(
                        s.clone(),
                        epoch,
                        drain.wrap(stream),
                        peer.to_string(),
                        tls.clone(),
                        Flavour::Imap,
                    )
                },
                async move {
                    let _ = stop.wait_for(|v| *v).await;
                },
                opts,
            )));
        }
        if let Some(addr) = &args.listen {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sync_server: listen {addr}: {e}");
                    return ExitCode::from(71);
                }
            };
            info!(addr = %addr, "listening");
            let s = shared.clone();
            listen::serve(
                listener,
                move |stream, peer: SocketAddr| {
                    run_connection(
                        s.clone(),
                        epoch,
                        drain.wrap(stream),
                        peer.to_string(),
                        tls.clone(),
                        main_flavour,
                    )
                },
                shutdown,
                serve_opts,
            )
            .await;
        } else if listen::master::is_under_master() {
            let listener = match listen::master::MasterListener::from_master() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sync_server: {e}");
                    return ExitCode::from(71);
                }
            };
            let s = shared.clone();
            listen::serve(
                listener,
                move |stream, peer: SocketAddr| {
                    run_connection(
                        s.clone(),
                        epoch,
                        drain.wrap(stream),
                        peer.to_string(),
                        tls.clone(),
                        main_flavour,
                    )
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
                tls,
                main_flavour,
            )
            .await;
            // One stdin session: the process ends with it.
            if let Some(t) = imap_task.take() {
                t.abort();
            }
        }
        if let Some(t) = imap_task {
            // The main accept loop ended on shutdown, which stops this one.
            let _ = t.await;
        }
        ExitCode::SUCCESS
    });
    // Let the committer finish queued work before the process ends.
    drop(rt);
    code
}
