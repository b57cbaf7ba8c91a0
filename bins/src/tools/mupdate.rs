//! `corvid mupdate`: the MUPDATE server of a Cyrus Murder, a drop-in for
//! Cyrus's `mupdate -m` (master).
//!
//! ```text
//! corvid mupdate [-C imapd.conf] [-m] [-a] [--listen HOST:PORT] [--db PATH]
//! ```
//!
//! This file parses flags and imapd.conf, opens the durable database
//! (`store::mupdate`), and runs one `engine::mupdate::Server` per connection
//! with the generic tokio driver, on the `--listen` address or on the socket
//! Cyrus master(8) hands down (`mupdate cmd="corvid mupdate -m" listen=3905
//! prefork=1` in cyrus.conf). Every protocol decision is the engine's; this
//! file only wires effects to the store and the password check:
//!
//! * `Effect::Authenticate` → `io_tokio::auth` (`corvid_passwd_file`, or
//!   saslauthd); MUPDATE admits only identities listed in `admins` (Cyrus:
//!   "only admins may authenticate"), judged on the authentication id.
//! * `Effect::Write` → `MupdateDb::submit` (decide under the lock, group
//!   commit, publish); the completion comes back after the commit.
//! * `Effect::Subscribe` → `MupdateDb::subscribe` with this connection's
//!   command channel as the subscriber: committed changes arrive as
//!   `Command::Change` and are pushed at once.
//!
//! Config keys read: `configdirectory` (a master's database is
//! `<configdirectory>/mupdate.corvid.sqlite3`; a slave's is the frontend's
//! `mailboxes.db`, below), `servername`, `admins`, `corvid_passwd_file` /
//! `sasl_pwcheck_method`, `tls_server_cert`/`tls_server_key` (STARTTLS),
//! `failedloginpause`, `mupdate_connections_max`, `mupdate_server` (for
//! `-a`), `mboxlist_db_path` / `mboxlist_db` (slave), `mupdate_config`,
//! `allowplaintext`, `sasl_mech_list`, `sasl_minimum_layer`,
//! `mupdate_retry_delay`, and corvid's `corvid_mupdate_idle_timeout` (a
//! session completing no command that long is closed; Cyrus: fixed 3 h).
//!
//! Without `-m` it is a **slave**: it follows `mupdate_server` (logging in
//! as `mupdate_authname`/`mupdate_username` with `mupdate_password`, exactly
//! as a Cyrus slave, `engine::mupdate::follower`) into the frontend's
//! `mailboxes.db` (`mboxlist_db_path`, default
//! `<configdirectory>/mailboxes.db`), in Cyrus 3.6's twoskip format with
//! Cyrus's locking, so the frontend's unmodified imapd/lmtpd route with it
//! (`store::mupdate::mailboxes_db`). It reconnects with back-off and serves
//! FIND/LIST/UPDATE read-only.
//!
//! Both roles answer the kick socket `<configdirectory>/socket/mupdate.target`
//! as Cyrus does (`kick_mupdate()` in a frontend's imapd connects, sends
//! nothing, and blocks reading until the socket says `ok` and closes): a
//! slave sends `NOOP` to its master and says `ok` only after the master's
//! OK, i.e. after every change the master had is applied and durable in
//! mailboxes.db; a master (Cyrus's "placebo" thread) says `ok` at once. A
//! slave listens on that socket only while its link is synced, as Cyrus's
//! slave opens it after each full sync and closes it when the link ends
//! (mupdate-slave.c): without a master a frontend's kick is refused at once
//! and the frontend goes on with what it has; a kick in flight when the
//! link drops, or unanswered for twice `mupdate_retry_delay`, is closed
//! without `ok`.
//!
//! Mechanisms are offered as libsasl offers them under Cyrus
//! (`io_tokio::auth::offered_mechanisms`): PLAIN/LOGIN in the clear only
//! with `allowplaintext: yes`, else only after STARTTLS — which is what
//! makes a real Cyrus slave or backend start TLS.
//!
//! `mupdate_config`: a master refuses `unified` (as Cyrus) and, with
//! `replicated`, accepts the repeated writes of backends sharing a
//! servername (`engine::mupdate::Topology`); a `unified` slave leaves the
//! server's own mailboxes local in mailboxes.db
//! (`store::mupdate::Options::local_server`).
//!
//! Over `mupdate_connections_max` live connections a newcomer gets Cyrus's
//! `* BYE "Server Unable"` and is closed.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use engine::machine::Time;
use engine::mupdate::follower::{self, Follower};
use engine::mupdate::{
    AuthOk, Change, Command, Completion, Effect, Options, Role, Server, Topology,
};
use io_tokio::auth::{Access, CheckContext, LivePwCheck};
use io_tokio::config::{Config, DurationUnit, LoadOptions};
use io_tokio::driver::{Driver, EffectExecutor};
use io_tokio::listen::{self, ServeOptions};
use io_tokio::tls::{TlsConfigs, TlsFiles};
use store::mupdate::{Delivery, MupdateDb, Subscriber};
use tokio::sync::mpsc;
use tracing::Instrument;

/// MUPDATE server (Cyrus Murder): master (-m) or slave.
#[derive(Debug, Parser)]
#[command(name = "mupdate")]
struct Args {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// Run as the MUPDATE master.
    #[arg(short = 'm')]
    master: bool,
    /// Master if `mupdate_server` is unset or names this host, else slave.
    #[arg(short = 'a')]
    auto: bool,
    /// Listen here instead of on the socket Cyrus master(8) passes.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The database file (default `<configdirectory>/mupdate.corvid.sqlite3`).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Service name for Cyrus's `<service>_<key>` overrides.
    #[arg(long, default_value = "mupdate")]
    service: String,
}

/// Why the tool stopped, for its one error line.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Config(#[from] io_tokio::config::ConfigError),
    #[error("{0}")]
    Auth(#[from] io_tokio::auth::AuthError),
    #[error("{0}")]
    Tls(#[from] io_tokio::tls::TlsError),
    #[error("{0}")]
    Store(#[from] store::mupdate::StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Master(#[from] io_tokio::listen::master::MasterError),
    #[error("mboxlist_db is {0}: corvid's slave keeps mailboxes.db only as twoskip")]
    MboxlistBackend(String),
    #[error("slave mode (no -m) needs mupdate_server and mupdate_authname in imapd.conf")]
    SlaveNotImplemented,
    #[error("cannot run mupdate master on a unified server (mupdate_config: unified)")]
    UnifiedMaster,
    #[error("mupdate_config is {0:?}: expected standard, unified or replicated")]
    BadTopology(String),
    #[error("no --listen address given and not started by Cyrus master(8)")]
    NoListener,
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Everything connections share.
struct Shared {
    db: MupdateDb,
    pwcheck: LivePwCheck,
    access: Access,
    opts: Options,
    upstream: Option<SlaveConf>,
    /// A slave's route from its clients' NOOPs to its master link.
    kicker: Arc<Kicker>,
    /// `<configdirectory>/socket/mupdate.target`.
    kick_socket: PathBuf,
    /// Live client connections, against `connections_max`.
    live: std::sync::atomic::AtomicUsize,
    /// `mupdate_connections_max`.
    connections_max: usize,
}

/// Kicks from a slave's clients to its master link (`Effect::Kick` and the
/// kick socket), as Cyrus's `mupdate_listen` handles them: a kick sends
/// the master a NOOP and is done when its OK arrives, i.e. once every
/// change the master had is durable here. It gives up (a kick-socket
/// client then gets no `ok`, only the close, as Cyrus closes its kick
/// descriptors) when there is no synced link, when the link drops, or
/// after `timeout`: Cyrus's slave declares its master dead when a NOOP is
/// still unanswered at the next `mupdate_retry_delay` tick, so a kick
/// waits at most about twice that.
struct Kicker {
    /// The current master link's command channel, if connected.
    link: std::sync::Mutex<Option<mpsc::Sender<follower::Command>>>,
    /// `true` from the link's first full sync until it drops. Cyrus opens
    /// the kick socket only then (`open_kick_socket` after
    /// `mupdate_synchronize`) and closes it when the link ends.
    linked: tokio::sync::watch::Sender<bool>,
    /// Last kick number handed out.
    next: std::sync::atomic::AtomicU64,
    /// Highest kick number done.
    done: tokio::sync::watch::Sender<u64>,
    /// The longest a kick waits for its NOOP's OK.
    timeout: Duration,
}

impl Kicker {
    fn new(timeout: Duration) -> Kicker {
        Kicker {
            link: std::sync::Mutex::new(None),
            linked: tokio::sync::watch::Sender::new(false),
            next: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new(0),
            timeout,
        }
    }

    /// `true` if the master answered the NOOP (see the type's doc).
    async fn kick(&self) -> bool {
        let mut linked = self.linked.subscribe();
        if !*linked.borrow_and_update() {
            return false;
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut done = self.done.subscribe();
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(link) = link else { return false };
        if link.send(follower::Command::Kick(n)).await.is_err() {
            return false;
        }
        tokio::select! {
            r = done.wait_for(|d| *d >= n) => r.is_ok(),
            _ = linked.wait_for(|l| !*l) => false,
            _ = tokio::time::sleep(self.timeout) => false,
        }
    }
}

/// Per-connection executor: knows this connection's command channel so a
/// subscription can be registered.
struct Exec {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

/// A connection's command channel as a store subscriber. The last slot is
/// kept for `Command::Lagged`, so a full channel can still be told.
struct ChannelSubscriber(mpsc::Sender<Command>);

impl Subscriber for ChannelSubscriber {
    fn push(&self, change: &Arc<Change>) -> Delivery {
        if self.0.is_closed() {
            return Delivery::Gone;
        }
        if self.0.capacity() <= 1 {
            return Delivery::Lagged;
        }
        match self.0.try_send(Command::Change(change.clone())) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Lagged,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }
    fn lagged(&self) {
        let _ = self.0.try_send(Command::Lagged);
    }
}

impl EffectExecutor<Effect> for Exec {
    type Completion = Completion;

    fn execute(&self, effect: Effect) -> impl std::future::Future<Output = Completion> + Send {
        let shared = self.shared.clone();
        let commands = self.commands.clone();
        async move {
            match effect {
                Effect::Authenticate(creds) => {
                    let ctx = CheckContext {
                        service: "mupdate",
                        realm: None,
                    };
                    match shared
                        .access
                        .login(&*shared.pwcheck.get(), &creds, ctx)
                        .await
                    {
                        Ok(a) => Completion::Auth(Some(AuthOk {
                            admin: shared.access.is_admin(&a.authcid),
                            userid: a.userid,
                        })),
                        Err(io_tokio::auth::LoginError::Auth(e)) => {
                            tracing::error!(error = %e, "password check could not run");
                            Completion::AuthUnavailable
                        }
                        Err(e) => {
                            tracing::info!(reason = %e, "login refused");
                            Completion::Auth(None)
                        }
                    }
                }
                Effect::Write(w) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    shared.db.submit(
                        &w,
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    match rx.await {
                        Ok(Ok(r)) => Completion::Written(r),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "mupdate database write failed");
                            Completion::WriteFailed(e.to_string())
                        }
                        Err(_) => Completion::WriteFailed("committer gone".into()),
                    }
                }
                Effect::Kick => {
                    // Cyrus's slave answers the NOOP either way.
                    shared.kicker.kick().await;
                    Completion::Kicked
                }
                Effect::Subscribe { hosts } => Completion::Subscribed(
                    shared
                        .db
                        .subscribe(hosts, Box::new(ChannelSubscriber(commands))),
                ),
            }
        }
    }
}

/// Channel capacity per subscriber: changes a slow slave may be behind
/// before it is dropped (it then reconnects and gets a fresh dump).
const SUBSCRIBER_QUEUE: usize = 65_536;

/// Gives back one count when dropped.
struct Decrement<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `<configdirectory>/socket/mupdate.target` (see the module doc):
/// on a master always (Cyrus's placebo thread); on a slave only while its
/// link is synced, as Cyrus's slave does: while the link is down the
/// socket file stays but nobody listens, so a frontend's `kick_mupdate()`
/// fails at once (connection refused) instead of waiting for a master
/// that is not there.
async fn kick_socket(shared: Arc<Shared>, master: bool) {
    let path = shared.kick_socket.clone();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut linked = shared.kicker.linked.subscribe();
    loop {
        if !master && linked.wait_for(|l| *l).await.is_err() {
            return;
        }
        let _ = std::fs::remove_file(&path);
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                // Cyrus exits here; a frontend's kicks then fail fast
                // (connect refused) and it routes with what it has, so
                // keep serving.
                tracing::error!(path = %path.display(), error = %e, "cannot open the mupdate.target kick socket");
                return;
            }
        };
        // Any local process may kick (Cyrus: mode 0777).
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        }
        tracing::info!(path = %path.display(), "kick socket ready");
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = linked.wait_for(|l| !*l), if !master => break,
            };
            let mut conn = match accepted {
                Ok((c, _)) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "kick socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                if master || shared.kicker.kick().await {
                    let _ = conn.write_all(b"ok").await;
                }
                let _ = conn.shutdown().await;
            });
        }
        // Closed, not removed: connects are refused until the next sync.
        drop(listener);
        tracing::info!(path = %path.display(), "kick socket closed until the master link is synced again");
    }
}

/// Runs one connection to its end.
async fn connection(
    shared: Arc<Shared>,
    tls: TlsConfigs,
    stream: listen::Draining<tokio::net::TcpStream>,
    peer: SocketAddr,
) {
    let _ = stream.get_ref().set_nodelay(true);
    let _active = io_tokio::metrics::global().connection_opened("mupdate");
    // Cyrus counts connections itself and refuses the one over
    // mupdate_connections_max with this line (its write also sends the
    // string's NUL; we do not).
    let live = shared.live.fetch_add(1, Ordering::SeqCst) + 1;
    let _count = Decrement(&shared.live);
    let connections_max =
        crate::observe::live_usize("mupdate_connections_max", shared.connections_max);
    if live > connections_max {
        use tokio::io::AsyncWriteExt as _;
        tracing::warn!(%peer, max = connections_max, "mupdate_connections_max reached; refusing");
        let mut stream = stream;
        let _ = stream.write_all(b"* BYE \"Server Unable\"\r\n").await;
        let _ = stream.shutdown().await;
        return;
    }
    let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    let mut opts = shared.opts.clone();
    if let Some(conf) = io_tokio::config::live::current() {
        // allowplaintext / sasl_mech_list as of the last SIGHUP.
        if let (Ok(clear), Ok(tls)) = (
            io_tokio::auth::offered_mechanisms(&conf, 0),
            io_tokio::auth::offered_mechanisms(&conf, 256),
        ) {
            opts.mechanisms = clear;
            opts.mechanisms_tls = tls;
        }
    }
    let machine = Server::new(Time::ZERO, shared.db.clone(), opts);
    let exec = Exec {
        shared: shared.clone(),
        commands: tx,
    };
    // Counts each answer in corvid_commands_total off the session's task.
    let (etx, mut erx) = mpsc::channel::<engine::mupdate::server::Event>(256);
    let counter = tokio::spawn(async move {
        while let Some(e) = erx.recv().await {
            crate::observe::mupdate_event(&e);
        }
    });
    let outcome = Driver::new(machine, exec)
        .commands(rx)
        .events(etx)
        .tls(crate::observe::live_tls(tls))
        .peer(peer)
        .telemetry(
            crate::observe::telemetry_per_session(),
            crate::observe::mupdate_user,
        )
        .run(stream)
        .instrument(crate::observe::connection_span(
            "mupdate",
            &peer.to_string(),
        ))
        .await;
    let _ = counter.await;
    tracing::debug!(?outcome, "mupdate connection ended");
}

fn is_master(args: &Args, conf: &Config) -> bool {
    if args.master {
        return true;
    }
    if !args.auto {
        return false;
    }
    // -a: master iff mupdate_server is unset or names this host.
    match conf.get_str("mupdate_server") {
        None => true,
        Some(s) => {
            let host = s.split(['/', ':']).next().unwrap_or("");
            host == "localhost"
                || host == "127.0.0.1"
                || host == "::1"
                || Some(host) == conf.servername()
        }
    }
}

fn build(args: &Args) -> Result<(Arc<Shared>, TlsConfigs, ServeOptions), Error> {
    let conf = Config::load_with(
        &args.config,
        &LoadOptions {
            ident: Some(args.service.clone()),
            ..LoadOptions::default()
        },
    )?;
    let master = is_master(args, &conf);
    let topology = conf
        .get_str("mupdate_config")
        .map_or(Some(Topology::Standard), Topology::from_config)
        .ok_or_else(|| {
            Error::BadTopology(conf.get_str("mupdate_config").unwrap_or("").to_owned())
        })?;
    if master && topology == Topology::Unified {
        // Cyrus: mailboxes created on the master would reach the slaves
        // as local entries (mupdate.c, "cannot run mupdate master on a
        // unified server").
        return Err(Error::UnifiedMaster);
    }
    let store_opts = store::mupdate::Options {
        topology,
        // A unified server's own mailboxes stay local in its mailboxes.db.
        local_server: (topology == Topology::Unified)
            .then(|| {
                conf.servername()
                    .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
            })
            .flatten(),
        ..store::mupdate::Options::default()
    };
    let upstream = if master {
        None
    } else {
        Some(SlaveConf::from_config(&conf).ok_or(Error::SlaveNotImplemented)?)
    };
    let db_path = match (&args.db, master) {
        (Some(p), _) => p.clone(),
        (None, true) => conf.configdirectory()?.join("mupdate.corvid.sqlite3"),
        (None, false) => match conf.get_str("mboxlist_db_path") {
            Some(p) => PathBuf::from(p),
            None => conf.configdirectory()?.join("mailboxes.db"),
        },
    };
    let db = if master {
        MupdateDb::open(&db_path, store_opts)?
    } else {
        match conf.get_str("mboxlist_db") {
            None | Some("twoskip") => {}
            Some(other) => return Err(Error::MboxlistBackend(other.to_owned())),
        }
        MupdateDb::open_mailboxes_db(&db_path, store_opts)?
    };
    let kick_socket = conf
        .configdirectory()?
        .join("socket")
        .join("mupdate.target");
    let pwcheck = LivePwCheck::from_config(&conf)?;
    let access = Access::from_config(&conf);
    let tls_files = TlsFiles::from_lookup(|k| conf.get_str(k).map(str::to_owned))?;
    let tls = TlsConfigs::from_files(&tls_files)?;
    let pause = conf
        .get_str("failedloginpause")
        .and_then(io_tokio::config::parse_int)
        .unwrap_or(3)
        .max(0) as u64;
    let connections_max = conf
        .get_str("mupdate_connections_max")
        .and_then(io_tokio::config::parse_int)
        .filter(|n| *n > 0)
        .unwrap_or(1024) as usize;
    // As libsasl under Cyrus: PLAIN/LOGIN in the clear only with
    // `allowplaintext: yes` (default no), so a Cyrus client starts TLS.
    // rustls prefers AES-256-GCM, so TLS counts as a 256-bit layer.
    let mechanisms = io_tokio::auth::offered_mechanisms(&conf, 0)?;
    let mechanisms_tls = io_tokio::auth::offered_mechanisms(&conf, 256)?;
    if mechanisms.is_empty() && tls.server.is_none() {
        tracing::warn!(
            "no SASL mechanism is offered: allowplaintext is off and no tls_server_cert is set, so nobody can log in"
        );
    }
    // corvid's own key; Cyrus hard-codes 3 h (`prot_settimeout(180*60)`).
    let idle_s = conf.get_duration_s("corvid_mupdate_idle_timeout", DurationUnit::Seconds)?;
    let opts = Options {
        server_name: conf
            .servername()
            .map(str::to_owned)
            .unwrap_or_else(|| "localhost".into()),
        implementation: "corvid".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: match &upstream {
            None => Role::Master,
            Some(u) => Role::Slave {
                upstream: u.server.clone(),
            },
        },
        starttls: tls.server.is_some(),
        mechanisms,
        mechanisms_tls,
        idle_timeout: (idle_s > 0).then(|| Duration::from_secs(idle_s as u64)),
        kick_upstream: !master,
        failed_login_pause: Duration::from_secs(pause),
        ..Options::default()
    };
    tracing::info!(db = %db_path.display(), entries = db.len(), master, "mupdate database loaded");
    let serve = ServeOptions {
        // The accept loop keeps taking connections past the cap so the
        // one over it can be told (Cyrus's BYE); this bounds the slack.
        connections_max: connections_max.saturating_add(64),
        ..ServeOptions::default()
    };
    // Cyrus: a NOOP still unanswered at the next retry-delay tick means the
    // master is dead.
    let kick_timeout = upstream.as_ref().map_or(Duration::from_secs(40), |u| {
        2 * u.retry_delay + Duration::from_secs(1)
    });
    Ok((
        Arc::new(Shared {
            db,
            pwcheck,
            access,
            opts,
            upstream,
            kicker: Arc::new(Kicker::new(kick_timeout)),
            kick_socket,
            live: std::sync::atomic::AtomicUsize::new(0),
            connections_max,
        }),
        tls,
        serve,
    ))
}

/// A slave's upstream settings (`mupdate_server` and friends).
#[derive(Clone)]
struct SlaveConf {
    /// As configured (`host[:port][/…]`), shown in the banner.
    server: String,
    /// `host:port` to connect to (port 3905 if none).
    addr: String,
    authname: String,
    username: String,
    password: String,
    retry_delay: Duration,
}

impl SlaveConf {
    /// The master's host, without port (`[v6]` brackets removed).
    fn host(&self) -> &str {
        let hp = self.addr.as_str();
        match hp.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => hp.rsplit_once(':').map_or(hp, |(h, _)| h),
        }
    }

    fn from_config(conf: &Config) -> Option<SlaveConf> {
        let server = conf.get_str("mupdate_server")?.to_owned();
        let hostport = server.split('/').next().unwrap_or("").to_owned();
        let addr = if hostport.contains(':') {
            hostport
        } else {
            format!("{hostport}:3905")
        };
        Some(SlaveConf {
            addr,
            authname: conf.get_str("mupdate_authname")?.to_owned(),
            username: conf.get_str("mupdate_username").unwrap_or("").to_owned(),
            password: conf.get_str("mupdate_password").unwrap_or("").to_owned(),
            retry_delay: Duration::from_secs(
                conf.get_str("mupdate_retry_delay")
                    .and_then(io_tokio::config::parse_int)
                    .unwrap_or(20)
                    .max(1) as u64,
            ),
            server,
        })
    }
}

/// Performs a follower's effects on the slave's local database.
struct FollowerExec(MupdateDb);

impl EffectExecutor<follower::Effect> for FollowerExec {
    type Completion = follower::Completion;

    fn execute(
        &self,
        effect: follower::Effect,
    ) -> impl std::future::Future<Output = follower::Completion> + Send {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done: store::mupdate::Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let arrived = crate::observe::mupdate_change_arrived(&effect);
        // Called before the first await: effects reach the store in order.
        match effect {
            follower::Effect::Replace(entries) => self.0.replace_remote(entries, done),
            follower::Effect::Apply { name, record } => self.0.apply_remote(name, record, done),
        }
        async move {
            match rx.await {
                Ok(Ok(_)) => {
                    crate::observe::mupdate_change_applied(arrived);
                    follower::Completion::Done
                }
                Ok(Err(e)) => follower::Completion::Failed(e.to_string()),
                Err(_) => follower::Completion::Failed("committer gone".into()),
            }
        }
    }
}

/// The slave's link to its master: connect, follow, and after any end
/// reconnect after `follower::backoff` (a full UPDATE every time, as Cyrus).
async fn follow(
    db: MupdateDb,
    up: SlaveConf,
    first_sync: Arc<tokio::sync::Notify>,
    kicker: Arc<Kicker>,
    tls: TlsConfigs,
) {
    let mut attempt = 0u32;
    loop {
        match tokio::net::TcpStream::connect(&up.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let mut fo = follower::Options::new(
                    up.authname.clone(),
                    io_tokio::auth::Secret::new(up.password.as_bytes().to_vec()),
                );
                fo.username = up.username.clone();
                fo.noop_interval = up.retry_delay;
                // As Cyrus's slave: STARTTLS when the master offers no
                // PLAIN in the clear; the master is verified by its host
                // (tls_server_ca_file, else the system trust store).
                if tls.client.is_some() {
                    fo.tls_server_name = Some(up.host().to_owned());
                }
                let machine = Follower::new(Time::ZERO, fo);
                let (link, rx) = mpsc::channel::<follower::Command>(64);
                *kicker.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
                let kicks = kicker.clone();
                let (ev_tx, mut ev_rx) = mpsc::channel::<follower::Event>(16);
                let linked = kicker.clone();
                let first = first_sync.clone();
                let synced = tokio::spawn(async move {
                    let mut synced = false;
                    while let Some(e) = ev_rx.recv().await {
                        match e {
                            follower::Event::Synced { entries } => {
                                io_tokio::metrics::global().set_mupdate_mailboxes(entries as u64);
                                tracing::info!(entries, "mupdate slave synced with its master");
                                synced = true;
                                linked.linked.send_replace(true);
                                first.notify_one();
                            }
                            follower::Event::Kicked(n) => {
                                kicks.done.send_modify(|d| *d = (*d).max(n))
                            }
                            follower::Event::Authenticated => {}
                        }
                    }
                    synced
                });
                let outcome = Driver::new(machine, FollowerExec(db.clone()))
                    .tls(tls.clone())
                    .commands(rx)
                    .events(ev_tx)
                    .peer(&up.addr)
                    .run(crate::observe::master_link(stream))
                    .await;
                tracing::warn!(result = ?outcome.result, "mupdate slave lost its master");
                kicker.link.lock().unwrap_or_else(|p| p.into_inner()).take();
                // After the event task has seen the link's last event, so a
                // late `Synced` cannot mark a dead link live again.
                let was_synced = synced.await.unwrap_or(false);
                kicker.linked.send_replace(false);
                if was_synced {
                    attempt = 0;
                }
            }
            Err(e) => {
                tracing::warn!(master = %up.addr, error = %e, "mupdate slave cannot reach its master")
            }
        }
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 1000)
            .unwrap_or(0) as f64
            / 1000.0;
        let delay = follower::backoff(up.retry_delay, attempt, jitter);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

async fn serve(args: Args) -> Result<(), Error> {
    let (shared, tls, serve_opts) = build(&args)?;
    // Take the socket first: clients that come before a slave's first sync
    // wait in the listen backlog instead of being refused.
    enum Socket {
        Tcp(tokio::net::TcpListener),
        Master(listen::master::MasterListener),
    }
    let socket = if let Some(addr) = args.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Listen(addr, e))?;
        tracing::info!(%addr, "mupdate listening");
        Socket::Tcp(l)
    } else if listen::master::is_under_master() {
        Socket::Master(listen::master::MasterListener::from_master()?)
    } else {
        return Err(Error::NoListener);
    };
    if let Some(up) = shared.upstream.clone() {
        tracing::info!(master = %up.server, "mupdate slave: following the master");
        let first_sync = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(follow(
            shared.db.clone(),
            up,
            first_sync.clone(),
            shared.kicker.clone(),
            tls.clone(),
        ));
        // Like Cyrus's slave: serve nobody before the first full sync, so a
        // frontend never routes with a stale or empty copy.
        first_sync.notified().await;
    }
    // Like Cyrus: the kick socket opens once the database is current.
    tokio::spawn(kick_socket(shared.clone(), shared.upstream.is_none()));
    // operator: /metrics, SIGHUP re-reads the config when standalone, and
    // connections drain between commands on shutdown.
    if let Ok(conf) = Config::load_with(
        &args.config,
        &LoadOptions {
            ident: Some(args.service.clone()),
            ..LoadOptions::default()
        },
    ) {
        for f in io_tokio::config::lint::check(&conf) {
            tracing::warn!("{f}");
        }
        if let Err(e) = crate::observe::start_metrics(&conf).await {
            tracing::error!("{e}");
        }
    }
    io_tokio::metrics::global().set_mupdate_mailboxes(shared.db.len() as u64);
    crate::observe::watch_hangup(args.config.clone(), Some(args.service.clone()));
    let drain = serve_opts.drain.clone();
    let handler = {
        let shared = shared.clone();
        move |stream: tokio::net::TcpStream, peer: SocketAddr| {
            connection(shared.clone(), tls.clone(), drain.wrap(stream), peer)
        }
    };
    let report = match socket {
        Socket::Tcp(l) => {
            listen::serve(l, handler, listen::shutdown_signal(false), serve_opts).await
        }
        Socket::Master(l) => {
            listen::serve(l, handler, listen::shutdown_signal(true), serve_opts).await
        }
    };
    shared.db.close();
    tracing::info!(?report, "mupdate stopped");
    Ok(())
}

/// Entry point.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    // operator: syslog under master(8), else stderr (crate::logging).
    let log = crate::logging::Setup::new("mupdate", "info", None);
    if let Some(w) = crate::logging::init(&log) {
        eprintln!("mupdate: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mupdate: {}", Error::Runtime(e));
            return ExitCode::from(71);
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mupdate: {e}");
            tracing::error!(error = %e, "mupdate exiting");
            ExitCode::from(match e {
                Error::SlaveNotImplemented => 69,
                Error::Config(_)
                | Error::Auth(_)
                | Error::Tls(_)
                | Error::NoListener
                | Error::BadTopology(_)
                | Error::MboxlistBackend(_) => 78,
                // Cyrus exits EX_USAGE here.
                Error::UnifiedMaster => 64,
                _ => 75,
            })
        }
    }
}

/// `corvid mupdate-load`: the same MUPDATE workload against one or more
/// servers, side by side, with ratios to the first one. Not a test: a
/// benchmark, run by hand (no timing is ever asserted).
///
/// ```text
/// corvid mupdate-load --target 127.0.0.1:25021 --target 127.0.0.1:3905 \
///     --user mupdateadmin --password secret -n 10000 -c 16
/// ```
///
/// Per target, with fresh names (`bench.<run>.<target>.<i>` at
/// `bench<run>!default`): load N mailboxes as RESERVE+ACTIVATE, lock-step
/// per connection like a Cyrus backend, over `-c` connections; LIST all;
/// FIND of random loaded names (p50/p99) from one connection, then from
/// `-c` connections at once (each with one FIND outstanding, all driven
/// from one thread by a single-threaded tokio runtime: with one OS thread
/// per connection, a 2-core machine measured its own thread scheduling —
/// a time slice in the p99 — rather than the server); propagation: an UPDATE
/// subscriber's latency from a writer's ACTIVATE OK to the pushed MAILBOX
/// line (p50/p99), passively (Cyrus batches every ~5 s; corvid pushes at
/// once). Start the servers yourself (e.g. `scripts/peers/start.sh` for
/// Cyrus, `corvid mupdate -m --listen …` for corvid) with the same admin
/// credentials.
pub fn load_main(args: Vec<OsString>) -> ExitCode {
    match load::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mupdate-load: {e}");
            ExitCode::from(1)
        }
    }
}

mod load {
    use std::ffi::OsString;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use clap::Parser;
    use proto::frame::{Event, Framer};
    use proto::mupdate::{self, parse_response, Command, Form, Response, Status};

    #[derive(Debug, Parser)]
    #[command(name = "mupdate-load")]
    struct Args {
        /// host:port of a MUPDATE master (repeat to compare; ratios are to the first).
        #[arg(long, required = true)]
        target: Vec<String>,
        /// Admin user.
        #[arg(long, default_value = "mupdateadmin")]
        user: String,
        /// Its password.
        #[arg(long)]
        password: String,
        /// Mailboxes to load per target.
        #[arg(short = 'n', default_value_t = 2000)]
        n: usize,
        /// Writer connections.
        #[arg(short = 'c', default_value_t = 4)]
        clients: usize,
        /// FIND samples.
        #[arg(long, default_value_t = 2000)]
        finds: usize,
        /// Propagation samples.
        #[arg(long, default_value_t = 20)]
        pushes: usize,
    }

    type R<T> = Result<T, String>;

    struct Conn {
        s: TcpStream,
        framer: Framer,
        n: u64,
    }

    impl Conn {
        fn open(addr: &str, user: &str, pass: &str) -> R<Conn> {
            let s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            let mut c = Conn {
                s,
                framer: Framer::new(mupdate::client_frame_options()),
                n: 0,
            };
            while !matches!(c.next()?, Response::Ready { .. }) {}
            let mut ir = Vec::new();
            ir.push(0);
            ir.extend_from_slice(user.as_bytes());
            ir.push(0);
            ir.extend_from_slice(pass.as_bytes());
            let (_, st) = c.run(&Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some(proto::sasl::encode(&ir).into()),
            })?;
            if st != Status::Ok {
                return Err(format!("{addr}: login refused"));
            }
            Ok(c)
        }

        fn next(&mut self) -> R<Response> {
            loop {
                if let Some(ev) = self.framer.poll_event().map_err(|e| e.to_string())? {
                    let Event::Message(m) = ev else {
                        return Err("unexpected literal event".into());
                    };
                    return parse_response(&m).map_err(|e| e.to_string());
                }
                let mut buf = [0u8; 65536];
                let n = self.s.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("server closed".into());
                }
                self.framer.handle_input(&buf[..n]);
            }
        }

        fn send(&mut self, cmd: &Command) -> R<String> {
            self.n += 1;
            let tag = format!("B{}", self.n);
            self.s
                .write_all(&cmd.encode(tag.as_bytes(), Form::NonSync))
                .map_err(|e| e.to_string())?;
            Ok(tag)
        }

        fn run(&mut self, cmd: &Command) -> R<(Vec<Response>, Status)> {
            let tag = self.send(cmd)?;
            let mut data = Vec::new();
            loop {
                match self.next()? {
                    Response::Reply(r) if r.tag[..] == *tag.as_bytes() => {
                        return Ok((data, r.status))
                    }
                    other => data.push(other),
                }
            }
        }
    }

    /// Runs each connection's FINDs one after the other, all connections
    /// at once on one thread; the latencies of all, in ms.
    fn finds_at_once(finders: Vec<(Conn, Vec<String>)>) -> R<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (conn, names) in finders {
                conn.s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let s = tokio::net::TcpStream::from_std(conn.s).map_err(|e| e.to_string())?;
                tasks.push(tokio::task::spawn(find_loop(s, conn.framer, names)));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.map_err(|e| e.to_string())??);
            }
            Ok(all)
        })
    }

    /// One connection's FINDs, each sent when the last one's tagged answer
    /// arrived.
    async fn find_loop(
        mut s: tokio::net::TcpStream,
        mut framer: Framer,
        names: Vec<String>,
    ) -> R<Vec<f64>> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut lat = Vec::with_capacity(names.len());
        let mut buf = vec![0u8; 65536];
        for (k, n) in names.into_iter().enumerate() {
            let tag = format!("M{k}");
            let cmd = Command::Find { name: b(n) }.encode(tag.as_bytes(), Form::NonSync);
            let t = Instant::now();
            s.write_all(&cmd).await.map_err(|e| e.to_string())?;
            'answer: loop {
                while let Some(ev) = framer.poll_event().map_err(|e| e.to_string())? {
                    let Event::Message(m) = ev else {
                        return Err("unexpected literal event".into());
                    };
                    if let Response::Reply(r) = parse_response(&m).map_err(|e| e.to_string())? {
                        if r.tag[..] == *tag.as_bytes() {
                            break 'answer;
                        }
                    }
                }
                let got = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                if got == 0 {
                    return Err("server closed".into());
                }
                framer.handle_input(&buf[..got]);
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    }

    fn pct(v: &mut [f64], p: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }

    fn b(s: String) -> Bytes {
        Bytes::from(s)
    }

    struct Row {
        load_s: f64,
        list_s: f64,
        find_p50_ms: f64,
        find_p99_ms: f64,
        /// FIND latency with `-c` clients looking up at once.
        findc_p50_ms: f64,
        findc_p99_ms: f64,
        push_p50_ms: f64,
        push_p99_ms: f64,
    }

    fn measure(a: &Args, addr: &str, run: &str, ti: usize) -> R<Row> {
        let loc = format!("bench{run}!default");
        let name = |i: usize| format!("bench.{run}.t{ti}.{i}");
        // Load.
        let t0 = Instant::now();
        let per = a.n.div_ceil(a.clients.max(1));
        let handles: Vec<_> = (0..a.clients.max(1))
            .map(|c| {
                let (addr, user, pass, loc) = (
                    addr.to_string(),
                    a.user.clone(),
                    a.password.clone(),
                    loc.clone(),
                );
                let names: Vec<String> = (c * per..((c + 1) * per).min(a.n)).map(name).collect();
                std::thread::spawn(move || -> R<()> {
                    let mut conn = Conn::open(&addr, &user, &pass)?;
                    for n in names {
                        conn.run(&Command::Reserve {
                            name: b(n.clone()),
                            location: b(loc.clone()),
                        })?;
                        conn.run(&Command::Activate {
                            name: b(n),
                            location: b(loc.clone()),
                            acl: b("anyone\tlrs\t".into()),
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "writer panicked".to_string())??;
        }
        let load_s = t0.elapsed().as_secs_f64();
        let mut conn = Conn::open(addr, &a.user, &a.password)?;
        let t0 = Instant::now();
        let (_, _) = conn.run(&Command::List {
            prefix: Some(b(format!("bench{run}!"))),
        })?;
        let list_s = t0.elapsed().as_secs_f64();
        // FIND: a fixed stride through the loaded names (deterministic).
        let mut finds = Vec::with_capacity(a.finds);
        for k in 0..a.finds {
            let i = (k * 7919) % a.n.max(1);
            let t = Instant::now();
            conn.run(&Command::Find { name: b(name(i)) })?;
            finds.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // FIND again from `-c` connections at once, each its own stride.
        let per = a.finds.div_ceil(a.clients.max(1));
        let mut finders = Vec::new();
        for c in 0..a.clients.max(1) {
            let conn = Conn::open(addr, &a.user, &a.password)?;
            let names: Vec<String> = (0..per)
                .map(|k| name((k * 7919 + c * 104_729) % a.n.max(1)))
                .collect();
            finders.push((conn, names));
        }
        let mut findc = finds_at_once(finders)?;
        // Propagation.
        let mut sub = Conn::open(addr, &a.user, &a.password)?;
        let utag = sub.send(&Command::Update {
            hosts: vec![b(format!("bench{run}"))],
        })?;
        loop {
            if let Response::Reply(r) = sub.next()? {
                if r.tag[..] == *utag.as_bytes() {
                    break;
                }
            }
        }
        sub.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut pushes = Vec::new();
        for k in 0..a.pushes {
            let n = format!("bench.{run}.t{ti}.push{k}");
            conn.run(&Command::Activate {
                name: b(n.clone()),
                location: b(loc.clone()),
                acl: b(String::new()),
            })?;
            let t = Instant::now();
            loop {
                if let Response::Mailbox { name, .. } = sub.next()? {
                    if name.value()[..] == *n.as_bytes() {
                        break;
                    }
                }
            }
            pushes.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(Row {
            load_s,
            list_s,
            find_p50_ms: pct(&mut finds.clone(), 0.5),
            find_p99_ms: pct(&mut finds, 0.99),
            findc_p50_ms: pct(&mut findc.clone(), 0.5),
            findc_p99_ms: pct(&mut findc, 0.99),
            push_p50_ms: pct(&mut pushes.clone(), 0.5),
            push_p99_ms: pct(&mut pushes, 0.99),
        })
    }

    pub(super) fn run(args: Vec<OsString>) -> R<()> {
        let a = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        let run = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs()
        );
        let mut rows = Vec::new();
        for (ti, t) in a.target.iter().enumerate() {
            eprintln!(
                "mupdate-load: {t}: loading {} mailboxes over {} connections…",
                a.n, a.clients
            );
            rows.push((t.clone(), measure(&a, t, &run, ti)?));
        }
        let c = a.clients.max(1);
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
            "target",
            "load s",
            "mbox/s",
            "LIST s",
            "FIND p50ms",
            "FIND p99ms",
            format!("FINDx{c} p50"),
            format!("FINDx{c} p99"),
            "push p50 ms",
            "push p99 ms"
        );
        for (t, r) in &rows {
            println!(
                "{:<24} {:>10.2} {:>10.0} {:>10.3} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>12.2} {:>12.2}",
                t,
                r.load_s,
                a.n as f64 / r.load_s,
                r.list_s,
                r.find_p50_ms,
                r.find_p99_ms,
                r.findc_p50_ms,
                r.findc_p99_ms,
                r.push_p50_ms,
                r.push_p99_ms
            );
        }
        if let Some((first, base)) = rows.first() {
            for (t, r) in rows.iter().skip(1) {
                println!(
                    "ratio {t} / {first}: load {:.2}x, LIST {:.2}x, FIND p50 {:.2}x p99 {:.2}x, FINDx{c} p50 {:.2}x p99 {:.2}x, push p50 {:.2}x p99 {:.2}x  (<1 = {t} faster)",
                    r.load_s / base.load_s,
                    r.list_s / base.list_s,
                    r.find_p50_ms / base.find_p50_ms,
                    r.find_p99_ms / base.find_p99_ms,
                    r.findc_p50_ms / base.findc_p50_ms,
                    r.findc_p99_ms / base.findc_p99_ms,
                    r.push_p50_ms / base.push_p50_ms,
                    r.push_p99_ms / base.push_p99_ms
                );
            }
        }
        Ok(())
    }
}
