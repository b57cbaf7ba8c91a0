//! `corvid sync_client`: replicate the local corvid store to a Cyrus
//! replica (a real Cyrus `sync_server`, or `corvid sync_server`).
//!
//! Flags and modes are Cyrus 3.6.1's (`sync_client(8)`): `-u user…`,
//! `-m mailbox…`, `-s user…` (META), `-A` (every user, then shared
//! mailboxes), `-r` (rolling from the store's sync log, `-d` delay, `-t`
//! reconnect interval, `-F` shutdown file, removed on shutdown), `-1` (the
//! log once), `-f file` (with `-u`/`-m`/`-s` a file of names; alone or
//! with `-r`/`-1` a Cyrus-format log file replayed once; `-` is stdin);
//! `-n channel`,
//! `-S servername`, `-p partition`, `-L` local-only, `-O` no copyback,
//! `-z` require compression, `-o` a single connection attempt (otherwise
//! retried with back-off for up to 1000 s), `-w secs` wait before
//! starting, `-N` (skip users another sync_client is replicating to the
//! same replica: a non-blocking per-user lock; without it the lock is
//! waited for), `-v`, `-l` verbose.
//!
//! Transport (Cyrus's `sync_connect`): with `sync_try_imap` (default yes)
//! the IMAP-embedded flavour first — on `sync_port`, or on 143 when no
//! port is configured — then the csync port (`sync_port`, else 2005); a
//! csync banner met by the IMAP attempt is used in place, without the
//! reconnect Cyrus makes. `sync_host` takes `host:port` and `/tls`
//! (implicit TLS). With TLS client settings (`tls_server_ca_file`/`_dir`
//! or `tls_client_cert`, channel-prefixable) the csync flavour does
//! STARTTLS when offered, checking the certificate against the host name.
//!
//! What it wires together: imapd.conf (`configdirectory`, `partition-*`,
//! `[<channel>_]sync_host`, `sync_port`, `sync_authname`, `sync_password`,
//! `sync_realm`, `sync_try_imap`, `sync_timeout`, `sync_repeat_interval`,
//! `sync_shutdown_file`, `tls_*`), the embedded store (reads; copyback writes go
//! through its committer), and one `engine::csync_client::Client` per
//! connection run by the tokio driver. Every protocol decision is the
//! machine's; this file only picks jobs and counts failures.
//!
//! Deliberate differences from the seed man page: `-A` also syncs shared
//! mailboxes one by one (as 3.6.1's code does; the page calls their
//! absence a bug); `-d` defaults to `sync_repeat_interval` (1 s in 3.6.1,
//! the page says 3 s); `sync_realm` is read but PLAIN and LOGIN (the
//! layer-less mechanisms corvid speaks) carry no realm, as with Cyrus SASL.
//! Not done: STARTTLS inside the IMAP flavour, SASL security layers.
//!
//! Exit codes: 0 all jobs succeeded; 1 a job failed; 64 usage; 74 store;
//! 75 the replica could not be reached or dropped us; 78 configuration.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use engine::csync_client::{
    jobs_from_log, Client, Command, Completion, Effect, Event, Flavour, Options,
};
use engine::machine::{CloseReason, Layer, Time};
use engine::model::{MailboxName, SyncLogLine, UserId};
use engine::store::{MailRead, Mutation, StoreEffect, WriteBatch};
use io_tokio::config::{Config, DurationUnit};
use io_tokio::driver::{Driver, EffectExecutor};
use proto::sasl::{Credentials, Secret};
use store::embedded::{Committer, CommitterOptions, ConnId, Options as StoreOptions, Reader};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Cyrus replication client.
#[derive(Debug, Parser)]
#[command(name = "sync_client")]
struct Args {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// Verbose (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Verbose logging (as -v).
    #[arg(short = 'l')]
    log: bool,
    /// Require compression.
    #[arg(short = 'z')]
    require_compress: bool,
    /// Connect only once (no reconnect in rolling mode).
    #[arg(short = 'o')]
    once_connect: bool,
    /// No copyback: never modify the local store (sends APPLY FORCE).
    #[arg(short = 'O')]
    no_copyback: bool,
    /// Local-only updates (LOCAL_* commands).
    #[arg(short = 'L')]
    local_only: bool,
    /// Channel name (prefix of the sync_* keys and sync log directory).
    #[arg(short = 'n')]
    channel: Option<String>,
    /// Replica host (overrides sync_host).
    #[arg(short = 'S')]
    servername: Option<String>,
    /// Replica partition for every mailbox.
    #[arg(short = 'p')]
    partition: Option<String>,
    /// Rolling mode: reconnect every this many seconds (600).
    #[arg(short = 't')]
    timeout: Option<u64>,
    /// Rolling mode: minimum seconds between log runs (sync_repeat_interval).
    #[arg(short = 'd')]
    delay: Option<u64>,
    /// Shutdown file (sync_shutdown_file).
    #[arg(short = 'F')]
    shutdown_file: Option<PathBuf>,
    /// Wait this many seconds before starting.
    #[arg(short = 'w')]
    wait: Option<u64>,
    /// Skip users locked by another sync_client (accepted; see module docs).
    #[arg(short = 'N')]
    skip_locked: bool,
    /// USER sync of these users.
    #[arg(short = 'u')]
    user: bool,
    /// Sync these mailboxes.
    #[arg(short = 'm')]
    mailbox: bool,
    /// META sync of these users.
    #[arg(short = 's')]
    meta: bool,
    /// Every user and mailbox.
    #[arg(short = 'A')]
    all: bool,
    /// Rolling replication from the sync log.
    #[arg(short = 'r')]
    rolling: bool,
    /// Process the sync log once.
    #[arg(short = '1')]
    once: bool,
    /// With -u/-m/-s: a file of names (`-` = stdin); otherwise a sync log
    /// file to replay once, then exit.
    #[arg(short = 'f')]
    file: Option<String>,
    /// Users or mailboxes.
    names: Vec<String>,
}

struct Settings {
    host: String,
    /// Where the csync flavour connects (`sync_port`, a port in
    /// `sync_host`, else 2005).
    port: u16,
    /// Where `sync_try_imap` tries the IMAP flavour first (the same port
    /// when one is configured, else 143 — Cyrus's `imap` service).
    imap_port: u16,
    try_imap: bool,
    /// `sync_host` ended in `/tls`: TLS right after connecting.
    implicit_tls: bool,
    tls: io_tokio::tls::TlsConfigs,
    machine: Options,
    store: StoreOptions,
    channel: String,
    delay: Duration,
    restart: Duration,
    shutdown_file: Option<PathBuf>,
    /// Per-user locks toward this replica (`-N` skips busy users).
    locks: UserLocks,
    skip_locked: bool,
}

/// Per-user sync locks: one flock'd file per (replica host, user) under
/// `configdirectory/sync/locks/`, so two corvid sync_client processes
/// never replicate one user to one replica at the same time (Cyrus's
/// `sync_lock`). Without `-N` a busy user is waited for; with `-N` it is
/// skipped (sync_client(8)). File names are hex, never the names
/// themselves.
struct UserLocks {
    dir: PathBuf,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl UserLocks {
    /// The lock of `user`, waiting for it unless `skip`; `None` when
    /// skipped because another process holds it.
    fn take(&self, user: &UserId, skip: bool) -> std::io::Result<Option<std::fs::File>> {
        std::fs::create_dir_all(&self.dir)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(hex(user.as_bytes())))?;
        if !skip {
            f.lock()?;
            return Ok(Some(f));
        }
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Takes the locks of the users `jobs` touch; with `-N` the jobs of busy
/// users are dropped (and logged). The guards hold the locks until
/// dropped.
async fn lock_jobs(
    s: &Settings,
    jobs: Vec<Command>,
) -> Result<(Vec<Command>, Vec<std::fs::File>), String> {
    let mut kept = Vec::new();
    let mut guards = Vec::new();
    let mut held: std::collections::BTreeSet<UserId> = Default::default();
    for j in jobs {
        let users: Vec<UserId> = match &j {
            Command::User(u) | Command::Meta(u) | Command::Unuser(u) => vec![u.clone()],
            Command::Mailboxes(n) => n.iter().filter_map(engine::csync::wire::owner_of).collect(),
            _ => Vec::new(),
        };
        let mut busy = false;
        for u in users {
            if held.contains(&u) {
                continue;
            }
            let dir = s.locks.dir.clone();
            let skip = s.skip_locked;
            let u2 = u.clone();
            let got = tokio::task::spawn_blocking(move || UserLocks { dir }.take(&u2, skip))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("sync lock: {e}"))?;
            match got {
                Some(f) => {
                    guards.push(f);
                    held.insert(u);
                }
                None => {
                    warn!(user = %String::from_utf8_lossy(u.as_bytes()), "busy in another sync_client (-N): skipped");
                    busy = true;
                }
            }
        }
        if !busy {
            kept.push(j);
        }
    }
    Ok((kept, guards))
}

fn settings(conf: &Config, args: &Args) -> Result<Settings, String> {
    let ch = args.channel.as_deref();
    let host = args
        .servername
        .clone()
        .or_else(|| conf.channel_str(ch, "sync_host").map(str::to_owned))
        .ok_or("sync_host is not set")?;
    // `host[:port][/tls|/noauth…]` (Cyrus backend_connect's syntax).
    let (host, flags) = match host.split_once('/') {
        Some((h, f)) => (h.to_owned(), f.to_ascii_lowercase()),
        None => (host.clone(), String::new()),
    };
    let implicit_tls = flags.split('/').any(|f| f == "tls");
    let (host, port_in_host) = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.to_owned(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("sync_host port {p:?} is not a port"))?,
            ),
        ),
        _ => (host.clone(), None),
    };
    let configured = match conf.channel_str(ch, "sync_port") {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("sync_port {p:?} is not a port"))?,
        ),
        None => port_in_host,
    };
    let port = configured.unwrap_or(2005);
    let imap_port = configured.unwrap_or(143);
    let try_imap = conf.channel_bool(ch, "sync_try_imap").unwrap_or(true);
    let tls_files =
        io_tokio::tls::TlsFiles::from_lookup(|k| conf.channel_str(ch, k).map(str::to_owned))
            .map_err(|e| e.to_string())?;
    // STARTTLS when the server offers it and this side has TLS client
    // settings of its own (trust anchors or a client certificate), as
    // Cyrus's sync_client does with tls_* configured.
    let tls_wanted = tls_files.server_ca_file.is_some()
        || tls_files.server_ca_dir.is_some()
        || tls_files.client_cert.is_some();
    let tls = if tls_wanted || implicit_tls {
        io_tokio::tls::TlsConfigs::from_files(&tls_files).map_err(|e| e.to_string())?
    } else {
        io_tokio::tls::TlsConfigs::default()
    };
    if (tls_wanted || implicit_tls) && tls.client.is_none() {
        return Err("TLS wanted but no trust anchors (tls_server_ca_file)".into());
    }
    let authname = conf
        .channel_str(ch, "sync_authname")
        .ok_or("sync_authname is not set")?
        .to_owned();
    let password = conf
        .channel_str(ch, "sync_password")
        .ok_or("sync_password is not set")?;
    // sync_realm: Cyrus hands it to SASL's realm callback, which only
    // realm-using mechanisms (DIGEST-MD5, GSSAPI) ask for; PLAIN and
    // LOGIN — the ones corvid speaks, having no security layer — send
    // the authname as given, so a realm changes nothing on their wire.
    let _realm = conf.channel_str(ch, "sync_realm");
    let mut m = Options::new(Credentials {
        authzid: None,
        authcid: authname,
        password: Secret::new(password.as_bytes().to_vec()),
    });
    if tls_wanted && !implicit_tls {
        m.starttls = Some(host.clone());
    }
    m.require_compress = args.require_compress;
    m.no_copyback = args.no_copyback;
    m.local_only = args.local_only;
    m.partition = args.partition.clone();
    m.promote_errors = args.rolling || args.once || args.file.is_some();
    if let Ok(s) = conf.channel_duration_s(ch, "sync_timeout", DurationUnit::Seconds) {
        m.reply_timeout = Some(Duration::from_secs(s.max(3) as u64));
    }
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
    let mut store = StoreOptions::new(configdir.clone(), partitions);
    store.default_partition = conf.get_str("defaultpartition").map(str::to_owned);
    let delay = args.delay.map(Duration::from_secs).unwrap_or_else(|| {
        conf.channel_duration_s(ch, "sync_repeat_interval", DurationUnit::Seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(Duration::from_secs(1))
    });
    let locks = UserLocks {
        dir: configdir
            .join("sync")
            .join("locks")
            .join(hex(format!("{host}:{port}").as_bytes())),
    };
    Ok(Settings {
        locks,
        skip_locked: args.skip_locked,
        host,
        port,
        imap_port,
        try_imap,
        implicit_tls,
        tls,
        machine: m,
        store,
        channel: args.channel.clone().unwrap_or_default(),
        delay,
        restart: Duration::from_secs(args.timeout.unwrap_or(600)),
        shutdown_file: args.shutdown_file.clone().or_else(|| {
            conf.channel_str(ch, "sync_shutdown_file")
                .map(PathBuf::from)
        }),
    })
}

/// Store effects of the machine (copyback) through the committer.
struct Exec {
    committer: Arc<Committer>,
    conn: ConnId,
}

impl EffectExecutor<Effect> for Exec {
    type Completion = Completion;

    fn execute(&self, effect: Effect) -> impl std::future::Future<Output = Completion> + Send {
        let Effect::Store(e) = effect;
        let wants = matches!(e, StoreEffect::StageEnd { .. } | StoreEffect::Write(_));
        let rx = if wants {
            let (tx, rx) = oneshot::channel();
            self.committer.submit(self.conn, e, move |c| {
                let _ = tx.send(c);
            });
            Some(rx)
        } else {
            self.committer.submit(self.conn, e, |_| {});
            None
        };
        async move {
            match rx {
                Some(rx) => match rx.await {
                    Ok(c) => Completion::Store(c),
                    Err(_) => Completion::Store(engine::store::Completion::Failed {
                        batch_id: engine::store::BatchId(0),
                        error: engine::store::StoreError::Io("committer stopped".into()),
                    }),
                },
                // Completions of effects without one are never delivered
                // by the driver's contract users; this arm is not awaited
                // by the machine (it registers none).
                None => Completion::Store(engine::store::Completion::Failed {
                    batch_id: engine::store::BatchId(0),
                    error: engine::store::StoreError::Io("no completion".into()),
                }),
            }
        }
    }
}

/// One connection: a driver task, its command sender and event receiver.
struct Session {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<Result<CloseReason, String>>,
}

/// Why a connection attempt gave no session.
enum ConnectError {
    /// An IMAP server without `X-REPLICATION`: try the csync port.
    NoReplication,
    Other(String),
}

impl Session {
    /// One connection attempt that ends logged in and ready, or not.
    async fn connect_one(
        s: &Settings,
        committer: &Arc<Committer>,
        flavour: Flavour,
    ) -> Result<Session, ConnectError> {
        let port = match flavour {
            Flavour::Imap => s.imap_port,
            Flavour::Csync => s.port,
        };
        let stream = tokio::net::TcpStream::connect((s.host.as_str(), port))
            .await
            .map_err(|e| ConnectError::Other(format!("connect {}:{port}: {e}", s.host)))?;
        let _ = stream.set_nodelay(true);
        let epoch = tokio::time::Instant::now();
        let mut opts = s.machine.clone();
        opts.flavour = flavour;
        let machine = Client::new(Time::ZERO, committer.reader(), opts);
        let (ctx, crx) = mpsc::channel(64);
        let (etx, erx) = mpsc::channel(256);
        let exec = Exec {
            committer: committer.clone(),
            conn: committer.connection(),
        };
        let peer = format!("{}:{port}", s.host);
        let tls = s.tls.clone();
        let first = s.implicit_tls.then(|| Layer::TlsClient {
            server_name: s.host.clone(),
        });
        let task = tokio::spawn(async move {
            let mut d = Driver::new(machine, exec)
                .epoch(epoch)
                .peer(&peer)
                .tls(tls)
                .commands(crx)
                .events(etx);
            if let Some(l) = first {
                d = d.start_layer(l);
            }
            let out = d.run(stream).await;
            out.result.map_err(|e| e.to_string())
        });
        let mut session = Session {
            commands: ctx,
            events: erx,
            task,
        };
        // Login, STARTTLS, COMPRESS, capabilities: until Ready.
        let mut no_replication = false;
        loop {
            match session.events.recv().await {
                Some(Event::Ready(f)) => {
                    info!(flavour = ?f, "ready");
                    return Ok(session);
                }
                Some(Event::NoReplication) => no_replication = true,
                Some(e) => log_event(&e),
                None => {
                    let why = match session.task.await {
                        Ok(Ok(r)) => r.to_string(),
                        Ok(Err(e)) => e,
                        Err(e) => e.to_string(),
                    };
                    return Err(if no_replication {
                        ConnectError::NoReplication
                    } else {
                        ConnectError::Other(format!("{}:{port}: {why}", s.host))
                    });
                }
            }
        }
    }

    /// Cyrus's `sync_connect`: with `sync_try_imap`, the IMAP flavour
    /// first (an imapd with X-REPLICATION; a csync banner there is taken
    /// as it is), then the csync port.
    async fn connect(s: &Settings, committer: &Arc<Committer>) -> Result<Session, String> {
        if s.try_imap {
            match Session::connect_one(s, committer, Flavour::Imap).await {
                Ok(x) => return Ok(x),
                Err(ConnectError::NoReplication) => {
                    info!("IMAP server without X-REPLICATION; using the csync port")
                }
                Err(ConnectError::Other(e)) => {
                    info!(error = %e, "IMAP attempt failed; using the csync port")
                }
            }
        }
        Session::connect_one(s, committer, Flavour::Csync)
            .await
            .map_err(|e| match e {
                ConnectError::NoReplication => "no replication service".to_string(),
                ConnectError::Other(e) => e,
            })
    }

    /// Runs `jobs` and waits until the machine is idle; the failed job
    /// names, or `Err` if the connection ended.
    async fn run(&mut self, jobs: Vec<Command>) -> Result<Vec<(String, String)>, String> {
        let n = jobs
            .iter()
            .filter(|j| !matches!(j, Command::Restart | Command::Exit))
            .count();
        if n == 0 {
            return Ok(Vec::new());
        }
        for j in jobs {
            self.commands
                .send(j)
                .await
                .map_err(|_| "connection ended")?;
        }
        let mut failed = Vec::new();
        let mut done = 0;
        loop {
            let Some(e) = self.events.recv().await else {
                return Err("connection ended".into());
            };
            log_event(&e);
            match e {
                Event::JobDone { job, result } => {
                    done += 1;
                    if let Err(err) = result {
                        failed.push((job, err.to_string()));
                    }
                }
                Event::Idle if done >= n => return Ok(failed),
                _ => {}
            }
        }
    }

    async fn exit(mut self) -> Result<(), String> {
        let _ = self.commands.send(Command::Exit).await;
        while let Some(e) = self.events.recv().await {
            log_event(&e);
        }
        match self.task.await {
            Ok(Ok(CloseReason::Done)) => Ok(()),
            Ok(Ok(r)) => Err(r.to_string()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Greeting(g) => info!(greeting = %String::from_utf8_lossy(g), "connected"),
        Event::Authenticated(m) => info!(mechanism = m, "authenticated"),
        Event::Compressed => info!("COMPRESS DEFLATE on"),
        Event::Tls => info!("TLS on"),
        Event::Ready(f) => info!(flavour = ?f, "ready"),
        Event::NoReplication => info!("no X-REPLICATION"),
        Event::MailboxSynced {
            name,
            uploaded,
            records,
        } => {
            info!(mailbox = %String::from_utf8_lossy(name.as_bytes()), uploaded, records, "mailbox replicated")
        }
        Event::MailboxUnchanged(n) => {
            tracing::debug!(mailbox = %String::from_utf8_lossy(n.as_bytes()), "unchanged")
        }
        Event::FullUpdate(n) => {
            warn!(mailbox = %String::from_utf8_lossy(n.as_bytes()), "full update (checksum failed twice)")
        }
        Event::Copyback {
            name,
            fetched,
            renumbered,
        } => {
            warn!(mailbox = %String::from_utf8_lossy(name.as_bytes()), fetched, renumbered, "copyback")
        }
        Event::JobDone { job, result } => match result {
            Ok(()) => info!(%job, "done"),
            Err(e) => error!(%job, error = %e, "failed"),
        },
        Event::Idle => {}
        _ => {}
    }
}

/// Parses a Cyrus sync log line: `TYPE SP astring [SP astring]`.
fn parse_log_line(line: &str) -> Option<SyncLogLine> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_once(' ')?;
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut a = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => a.extend(chars.next()),
                    '"' => break,
                    c => a.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                a.push(c);
                chars.next();
            }
        }
        args.push(a);
    }
    let user = |i: usize| args.get(i).and_then(|a| UserId::new(a.as_bytes()).ok());
    let name = |i: usize| {
        args.get(i)
            .and_then(|a| MailboxName::new(a.as_bytes()).ok())
    };
    Some(match kind.to_ascii_uppercase().as_str() {
        "USER" => SyncLogLine::User(user(0)?),
        "UNUSER" => SyncLogLine::Unuser(user(0)?),
        "META" | "SIEVE" => SyncLogLine::Meta(user(0)?),
        "MAILBOX" => SyncLogLine::Mailbox(name(0)?),
        "APPEND" => SyncLogLine::Append(name(0)?),
        "DOUBLEMAILBOX" => SyncLogLine::DoubleMailbox(name(0)?, name(1)?),
        "RENAME" => SyncLogLine::Rename(name(0)?, name(1)?),
        "UNMAILBOX" => SyncLogLine::Unmailbox(name(0)?),
        "QUOTA" => SyncLogLine::Quota(name(0)?),
        "ANNOTATION" => SyncLogLine::Annotation(if args.first().is_some_and(|a| a.is_empty()) {
            None
        } else {
            Some(name(0)?)
        }),
        "SEEN" => SyncLogLine::Seen(
            user(0)?,
            engine::model::UniqueId::new(args.get(1)?.as_bytes()).ok()?,
        ),
        "SUB" | "UNSUB" => SyncLogLine::Sub(user(0)?, name(1)?),
        _ => return None,
    })
}

fn jobs_for_all(read: &Reader) -> Result<Vec<Command>, String> {
    let mut jobs: Vec<Command> = read
        .users()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(Command::User)
        .collect();
    let mut shared = Vec::new();
    let mut after: Option<MailboxName> = None;
    loop {
        let page = read
            .mailboxes(after.as_ref(), 1000)
            .map_err(|e| e.to_string())?;
        let n = page.len();
        for mb in page {
            if mb.owner.is_none() {
                shared.push(mb.name.clone());
            }
            after = Some(mb.name);
        }
        if n < 1000 {
            break;
        }
    }
    jobs.extend(shared.into_iter().map(|n| Command::Mailboxes(vec![n])));
    Ok(jobs)
}

fn report(failed: &[(String, String)]) -> ExitCode {
    for (job, e) in failed {
        eprintln!("sync_client: {job}: {e}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
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
    // operator: -v/-l as sync_client(8); syslog under master(8), else stderr.
    let log =
        crate::logging::Setup::new("sync_client", "warn", None).verbosity(args.verbose, args.log);
    if let Some(w) = crate::logging::init(&log) {
        eprintln!("sync_client: {w}");
    }
    // -f is a list of names with -u/-m/-s, a log file to replay (then
    // exit) alone or with -r/-1 (sync_client(8)).
    let modes = [
        args.user,
        args.mailbox,
        args.meta,
        args.all,
        args.rolling
            || args.once
            || (args.file.is_some() && !(args.user || args.mailbox || args.meta)),
    ]
    .iter()
    .filter(|m| **m)
    .count();
    if modes != 1 || (args.rolling && args.once) {
        eprintln!("sync_client: give exactly one of -u, -m, -s, -A, -r, -1, -f");
        return ExitCode::from(64);
    }
    let mut args = args;
    if args.user || args.mailbox || args.meta {
        if let Some(f) = args.file.take() {
            match read_input(&f) {
                Ok(t) => args.names.extend(
                    t.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                ),
                Err(c) => return c,
            }
        }
        if args.names.is_empty() {
            eprintln!("sync_client: -u, -m and -s need at least one name");
            return ExitCode::from(64);
        }
    }
    if args.file.is_some() {
        // A replayed file is processed once, whatever -r says.
        args.rolling = false;
    }
    let conf = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sync_client: {e}");
            return ExitCode::from(78);
        }
    };
    let s = match settings(&conf, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sync_client: {}: {e}", args.config.display());
            return ExitCode::from(78);
        }
    };
    let store = match store::Embedded::open(s.store.clone()) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("sync_client: store: {e}");
            return ExitCode::from(74);
        }
    };
    let committer = Arc::new(Committer::spawn(store, CommitterOptions::default()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sync_client: runtime: {e}");
            return ExitCode::from(71);
        }
    };
    let code = rt.block_on(async {
        if let Some(w) = args.wait {
            tokio::time::sleep(Duration::from_secs(w)).await;
        }
        if args.rolling {
            // operator: /metrics and the sync log backlog gauge while rolling.
            crate::observe::start_rolling(&args.config, args.channel.clone()).await;
            return rolling(&s, &committer, args.once_connect).await;
        }
        let reader = committer.reader();
        let mut trim_through = None;
        let jobs: Vec<Command> = if args.user {
            match names(&args.names, |n| UserId::new(n).ok()) {
                Ok(u) => u.into_iter().map(Command::User).collect(),
                Err(c) => return c,
            }
        } else if args.meta {
            match names(&args.names, |n| UserId::new(n).ok()) {
                Ok(u) => u.into_iter().map(Command::Meta).collect(),
                Err(c) => return c,
            }
        } else if args.mailbox {
            match names(&args.names, |n| MailboxName::new(n).ok()) {
                Ok(m) => vec![Command::Mailboxes(m)],
                Err(c) => return c,
            }
        } else if args.all {
            match jobs_for_all(&reader) {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("sync_client: store: {e}");
                    return ExitCode::from(74);
                }
            }
        } else if let Some(f) = &args.file {
            let text = match read_input(f) {
                Ok(t) => t,
                Err(c) => return c,
            };
            let lines: Vec<SyncLogLine> = text.lines().filter_map(parse_log_line).collect();
            jobs_from_log(&lines)
        } else {
            match reader.sync_log(&s.channel, 0, usize::MAX) {
                Ok(lines) => {
                    trim_through = lines.last().map(|(n, _)| *n);
                    jobs_from_log(lines.iter().map(|(_, l)| l))
                }
                Err(e) => {
                    eprintln!("sync_client: store: {e}");
                    return ExitCode::from(74);
                }
            }
        };
        let mut session = match connect_patiently(&s, &committer, args.once_connect).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("sync_client: {e}");
                return ExitCode::from(75);
            }
        };
        let (jobs, _locks) = match lock_jobs(&s, jobs).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("sync_client: {e}");
                return ExitCode::from(74);
            }
        };
        let failed = match session.run(jobs).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("sync_client: {e}");
                let _ = session.exit().await;
                return ExitCode::from(75);
            }
        };
        if let Err(e) = session.exit().await {
            warn!(error = %e, "session did not end cleanly");
        }
        if failed.is_empty() {
            if let Some(n) = trim_through {
                if let Err(e) = trim(&committer, &s.channel, n).await {
                    eprintln!("sync_client: store: {e}");
                    return ExitCode::from(74);
                }
            }
        }
        report(&failed)
    });
    drop(rt);
    code
}

/// A file's text, or stdin's for `-`.
fn read_input(f: &str) -> Result<String, ExitCode> {
    if f == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| {
            eprintln!("sync_client: stdin: {e}");
            ExitCode::from(66)
        })?;
        return Ok(t);
    }
    std::fs::read_to_string(f).map_err(|e| {
        eprintln!("sync_client: {f}: {e}");
        ExitCode::from(66)
    })
}

fn names<T>(raw: &[String], parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, ExitCode> {
    raw.iter()
        .map(|n| {
            parse(n).ok_or_else(|| {
                eprintln!("sync_client: invalid name {n:?}");
                ExitCode::from(64)
            })
        })
        .collect()
}

/// Connects, retrying with back-off (15 s doubling) for up to 1000 s
/// unless `-o` asked for a single attempt (sync_client(8) `-o`).
async fn connect_patiently(
    s: &Settings,
    committer: &Arc<Committer>,
    once: bool,
) -> Result<Session, String> {
    let start = tokio::time::Instant::now();
    let mut wait = Duration::from_secs(15);
    loop {
        match Session::connect(s, committer).await {
            Ok(x) => return Ok(x),
            Err(e) if once || start.elapsed() + wait > Duration::from_secs(1000) => return Err(e),
            Err(e) => {
                warn!(error = %e, wait_s = wait.as_secs(), "cannot connect; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

async fn trim(committer: &Committer, channel: &str, through: u64) -> Result<(), String> {
    let mut b = WriteBatch::new(engine::store::BatchId(u64::MAX));
    b.push(Mutation::TrimSyncLog {
        channel: channel.to_owned(),
        through,
    });
    let (tx, rx) = oneshot::channel();
    committer.submit(committer.connection(), StoreEffect::Write(b), move |c| {
        let _ = tx.send(c);
    });
    match rx.await {
        Ok(engine::store::Completion::Durable { .. }) => Ok(()),
        Ok(other) => Err(format!("{other:?}")),
        Err(_) => Err("committer stopped".into()),
    }
}

/// `-r`: process the sync log every `-d`, reconnecting every `-t`, until
/// the shutdown file appears.
async fn rolling(s: &Settings, committer: &Arc<Committer>, once_connect: bool) -> ExitCode {
    let mut backoff = Duration::from_secs(15);
    loop {
        let mut session = match Session::connect(s, committer).await {
            Ok(x) => x,
            Err(e) if !once_connect => {
                warn!(error = %e, wait_s = backoff.as_secs(), "reconnecting later");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(20 * 60));
                continue;
            }
            Err(e) => {
                eprintln!("sync_client: {e}");
                return ExitCode::from(75);
            }
        };
        backoff = Duration::from_secs(15);
        let started = tokio::time::Instant::now();
        let mut lag = crate::observe::RollingLag::new(&s.channel);
        loop {
            if let Some(f) = s.shutdown_file.as_ref().filter(|f| f.exists()) {
                // sync_client(8): the file is removed on shutdown.
                let _ = std::fs::remove_file(f);
                let _ = session.exit().await;
                return ExitCode::SUCCESS;
            }
            if started.elapsed() >= s.restart {
                break;
            }
            let run_start = tokio::time::Instant::now();
            let lines = match committer.reader().sync_log(&s.channel, 0, 100_000) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("sync_client: store: {e}");
                    return ExitCode::from(74);
                }
            };
            if let Some((last, _)) = lines.last() {
                lag.seen(*last);
                let jobs = jobs_from_log(lines.iter().map(|(_, l)| l));
                let (mut jobs, _locks) = match lock_jobs(s, jobs).await {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("sync_client: {e}");
                        return ExitCode::from(74);
                    }
                };
                jobs.push(Command::Restart);
                match session.run(jobs).await {
                    Ok(failed) if failed.is_empty() => {
                        if let Err(e) = trim(committer, &s.channel, *last).await {
                            eprintln!("sync_client: store: {e}");
                            return ExitCode::from(74);
                        }
                        lag.replicated(*last);
                    }
                    Ok(failed) => {
                        let _ = report(&failed);
                    }
                    Err(e) => {
                        warn!(error = %e, "connection lost");
                        break;
                    }
                }
            }
            let spent = run_start.elapsed();
            if spent < s.delay {
                tokio::time::sleep(s.delay - spent).await;
            }
        }
        let _ = session.exit().await;
        if once_connect {
            return ExitCode::SUCCESS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> MailboxName {
        MailboxName::new(s).unwrap()
    }

    #[test]
    fn log_lines_parse_as_cyrus_writes_them() {
        assert_eq!(
            parse_log_line("APPEND user.alice\n"),
            Some(SyncLogLine::Append(n("user.alice")))
        );
        assert_eq!(
            parse_log_line("RENAME \"user.alice.a b\" user.alice.c\r\n"),
            Some(SyncLogLine::Rename(n("user.alice.a b"), n("user.alice.c")))
        );
        assert_eq!(
            parse_log_line("MAILBOX \"user.alice.q\\\"x\""),
            Some(SyncLogLine::Mailbox(n("user.alice.q\"x")))
        );
        assert_eq!(
            parse_log_line("ANNOTATION \"\""),
            Some(SyncLogLine::Annotation(None))
        );
        assert_eq!(
            parse_log_line("sieve alice"),
            Some(SyncLogLine::Meta(UserId::new("alice").unwrap()))
        );
        assert_eq!(
            parse_log_line("UNSUB alice user.alice.x"),
            Some(SyncLogLine::Sub(
                UserId::new("alice").unwrap(),
                n("user.alice.x")
            ))
        );
        assert_eq!(parse_log_line("BOGUS x"), None);
        assert_eq!(parse_log_line("MAILBOX"), None);
    }
}
