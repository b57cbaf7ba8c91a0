//! The daemons' hooks into logs and metrics, so that each daemon needs a
//! line or two per hook and they all record the same way.
//!
//! - [`connection_span`]: one `session` span per connection with service,
//!   peer, and the user once authenticated ([`csync_event`] records it).
//! - [`csync_event`] / [`csync_effect`]: `corvid_commands_total` from the
//!   csync server's events (OK'd writes and refused commands), message
//!   uploads into `corvid_replicated_{messages,bytes}_total`;
//!   [`mupdate_event`]: the same counter from every MUPDATE answer.
//! - [`start_metrics`]: the `/metrics` listener from imapd.conf.
//! - [`finish_cli`]: a one-shot tool's registry to the file
//!   `CORVID_METRICS_TEXTFILE` names (node_exporter's textfile collector).
//! - [`watch_hangup`]: installs the running config
//!   ([`io_tokio::config::live`]) and, when not under master(8), re-reads
//!   imapd.conf on SIGHUP and applies what can change live: the log level
//!   (`debug`), the `/metrics` listener, TLS certificate and key files (for
//!   new connections: [`live_tls`]), and the per-connection values the
//!   daemons read through [`live_csync`] and [`live_usize`]. Every changed
//!   key that needs a restart is named in the log.
//! - [`telemetry`], [`csync_user`], [`mupdate_user`]: per-user protocol
//!   telemetry under `configdirectory/log/USER/` (see
//!   [`io_tokio::driver::telemetry`]).
//! - [`spawn_backup_bytes`], [`start_rolling`]: gauges sampled from disk
//!   (bytes under each backup partition; bytes of the sync log waiting),
//!   every minute / ten seconds, by a bounded walk or a `stat`.
//!
//! It records; it never decides anything about a session.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use engine::csync::{Effect, Event};
use engine::store::StoreEffect;
use io_tokio::config::{live, Config, LoadOptions};
use io_tokio::driver::telemetry::Telemetry;
use io_tokio::listen;
use io_tokio::metrics;
use io_tokio::tls::{TlsConfigs, TlsFiles};
use tracing::Span;

/// The span of one connection. `user` is filled in at authentication.
pub fn connection_span(service: &'static str, peer: &str) -> Span {
    tracing::info_span!("session", service, peer, user = tracing::field::Empty)
}

/// Records a csync server event: the command and its result, and the user
/// on the connection's span.
pub fn csync_event(service: &str, span: &Span, e: &Event) {
    let m = metrics::global();
    match e {
        Event::Authenticated(user) => {
            span.record("user", user.as_str());
            m.command(service, "AUTHENTICATE", "ok");
        }
        Event::AuthFailed(_) => m.command(service, "AUTHENTICATE", "no"),
        Event::Applied { command, .. } => m.command(service, command, "ok"),
        Event::Answered { command } => m.command(service, command, "ok"),
        Event::Refused {
            command, status, ..
        } => {
            // The status word and code (`NO IMAP_MAILBOX_NONEXISTENT`),
            // never the free text after it.
            let result: String = status
                .split_ascii_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            m.command(service, command, &result)
        }
        Event::StoreFailed(_) => m.command(service, "store", "failed"),
        Event::MessageRefused(_) => m.command(service, "APPLY MESSAGE", "refused"),
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// Counts a message upload (its announced size) when the server starts
/// staging it.
pub fn csync_effect(e: &Effect) {
    if let Effect::Store(StoreEffect::StageBegin { size, .. }) = e {
        metrics::global().replicated("", 1, *size);
    }
}

/// Starts `/metrics` if `corvid_metrics_listen` is set; an error is the
/// administrator's (bad address, port taken) and should stop the daemon.
pub async fn start_metrics(conf: &Config) -> Result<(), String> {
    metrics::spawn_from_config(conf).await.map(|_| ())
}

/// Writes the registry to `$CORVID_METRICS_TEXTFILE` if set (one-shot
/// tools), after recording the exit code of a dsync run.
pub fn finish_cli(dsync_code: Option<u8>) {
    if let Some(code) = dsync_code {
        metrics::global().dsync_exit(code);
    }
    if let Some(path) = std::env::var_os("CORVID_METRICS_TEXTFILE") {
        if let Err(e) = metrics::global().write_textfile(&PathBuf::from(&path)) {
            tracing::warn!(error = %e, "cannot write CORVID_METRICS_TEXTFILE");
        }
    }
}

/// Installs `path` (read as `ident`) as the running configuration and
/// applies its `debug` switch. Standalone (not under master(8)), every
/// SIGHUP then re-reads it and applies what can change live (the module
/// doc); a file that fails to load leaves everything as it was. Under
/// master, SIGHUP is a shutdown request handled by
/// `listen::shutdown_signal(true)` (master starts a fresh child, which
/// reads the file anew).
pub fn watch_hangup(path: PathBuf, ident: Option<String>) {
    let opts = LoadOptions {
        ident,
        ..LoadOptions::default()
    };
    if let Ok(conf) = Config::load_with(&path, &opts) {
        crate::logging::apply_config(&conf);
        live::install(conf);
    }
    if listen::master::is_under_master() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(listen::hangup_signals(move |_| {
        // One reload pending is enough: it reads the newest file.
        let _ = tx.try_send(());
    }));
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if let Some(new) = listen::reload_config(&path, &opts) {
                apply(new).await;
            }
        }
    });
}

/// Applies a re-read configuration: what changes live changes now, and
/// the log names every changed key that waits for a restart.
async fn apply(new: Config) {
    let changes = live::current()
        .map(|old| live::classify(&old, &new))
        .unwrap_or_default();
    if let Some(level) = crate::logging::apply_config(&new) {
        tracing::info!(level, "log level in force");
    }
    if let Err(e) = metrics::spawn_from_config(&new).await {
        tracing::warn!("{e}; the metrics listener is unchanged");
    }
    reload_tls(&new);
    for key in &changes.restart {
        tracing::warn!(key = key.as_str(), "changed; applies only after a restart");
    }
    tracing::info!(
        live = ?changes.live,
        restart = ?changes.restart,
        "configuration applied"
    );
    live::install(new);
}

/// TLS configurations re-read by the last SIGHUP, for new connections.
static RELOADED_TLS: RwLock<Option<TlsConfigs>> = RwLock::new(None);

/// Re-reads the TLS certificate, key and CA files `conf` names (a renewed
/// certificate usually keeps its file name). A file that does not load is
/// reported and the running TLS setup kept.
fn reload_tls(conf: &Config) {
    if conf.get_str("tls_server_cert").is_none() || conf.get_str("tls_server_key").is_none() {
        return;
    }
    match TlsFiles::from_lookup(|k| conf.get_str(k).map(str::to_owned))
        .and_then(|f| TlsConfigs::from_files(&f))
    {
        Ok(t) => {
            *RELOADED_TLS.write().unwrap_or_else(|p| p.into_inner()) = Some(t);
            tracing::info!("TLS certificate and key re-read; new connections use them");
        }
        Err(e) => tracing::warn!(error = %e, "TLS files not re-read; keeping the running ones"),
    }
}

/// The TLS setup for a new connection: the one the last SIGHUP loaded, or
/// `started` (what the daemon loaded at start) if none.
pub fn live_tls(started: TlsConfigs) -> TlsConfigs {
    RELOADED_TLS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or(started)
}

/// Refreshes a new csync connection's options from the running
/// configuration: `sync_timeout`, `failedloginpause`, and the SASL
/// mechanisms on offer in the clear and under TLS (`allowplaintext`,
/// `sasl_mech_list`, `sasl_minimum_layer`); the rest of `opts` was decided
/// at start.
/// `from_config` is how the daemon builds its options from a config.
pub fn live_csync(
    opts: &mut engine::csync::Options,
    from_config: fn(&Config) -> engine::csync::Options,
) {
    if let Some(conf) = live::current() {
        let fresh = from_config(&conf);
        opts.idle_timeout = fresh.idle_timeout;
        opts.failed_login_pause = fresh.failed_login_pause;
        opts.mechanisms = fresh.mechanisms;
        opts.mechanisms_tls = fresh.mechanisms_tls;
    }
}

/// An integer limit read per use from the running configuration: `key`
/// if set to a positive number, else `started`.
pub fn live_usize(key: &str, started: usize) -> usize {
    live::current()
        .and_then(|c| c.get_str(key).and_then(io_tokio::config::parse_int))
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(started)
}

/// A MUPDATE slave's change arrived: for an `Apply` (an UPDATE the master
/// pushed), the time the link last read from the master, which is the
/// read that carried it (the driver reads nothing while effects wait).
/// `None` for the initial dump, whose lag would only measure its size.
pub fn mupdate_change_arrived(e: &engine::mupdate::follower::Effect) -> Option<std::time::Instant> {
    match e {
        engine::mupdate::follower::Effect::Apply { .. } => Some(
            metrics::global()
                .mupdate_master_contact_at()
                .unwrap_or_else(std::time::Instant::now),
        ),
        _ => None,
    }
}

/// The change [`mupdate_change_arrived`] saw is durable in the slave's
/// database: records `corvid_mupdate_slave_lag_seconds`.
pub fn mupdate_change_applied(arrived: Option<std::time::Instant>) {
    if let Some(at) = arrived {
        metrics::global().mupdate_slave_lag(at.elapsed());
    }
}

/// The slave's link to its master, which notes every read from it in
/// `corvid_mupdate_master_contact_age_seconds`.
pub fn master_link<T>(stream: T) -> io_tokio::driver::observed::OnRead<T, fn()> {
    io_tokio::driver::observed::OnRead::new(stream, note_master_contact as fn())
}

fn note_master_contact() {
    metrics::global().mupdate_master_contact();
}

/// Replication lag of `sync_client -r` (`corvid_replication_lag_seconds`):
/// from the moment the rolling client first read a sync log entry to the
/// replica's OK for the run that covered it. corvid's sync log rows carry
/// no write time, so the first read stands in for it: at most one `-d`
/// delay late.
#[derive(Debug)]
pub struct RollingLag {
    channel: String,
    /// The newest log sequence first seen at each read, oldest first.
    seen: std::collections::VecDeque<(u64, std::time::Instant)>,
}

/// Reads whose first-seen time is kept at most (older ones merge into the
/// oldest kept, so a replica that stays down for days costs no memory).
const ROLLING_SEEN_MAX: usize = 4096;

impl RollingLag {
    /// For the rolling log of `channel` (`""` for the default).
    pub fn new(channel: &str) -> RollingLag {
        RollingLag {
            channel: channel.to_owned(),
            seen: Default::default(),
        }
    }

    /// The log was read; its newest entry is `last`.
    pub fn seen(&mut self, last: u64) {
        if self.seen.back().is_some_and(|(s, _)| *s >= last) {
            return;
        }
        if self.seen.len() >= ROLLING_SEEN_MAX {
            // Keep the oldest time (the lag is never understated): drop the
            // second entry, whose entries now count as first seen with the
            // oldest.
            self.seen.remove(1);
        }
        self.seen.push_back((last, std::time::Instant::now()));
    }

    /// The replica said OK to everything up to `last`: one observation,
    /// the lag of the oldest entry the run covered.
    pub fn replicated(&mut self, last: u64) {
        let mut oldest = None;
        while let Some(&(seq, at)) = self.seen.front() {
            if seq > last {
                break;
            }
            oldest.get_or_insert(at);
            self.seen.pop_front();
        }
        if let Some(at) = oldest {
            metrics::global().replication_lag(&self.channel, at.elapsed());
        }
    }
}

/// Where this daemon's protocol transcripts go: `configdirectory/log/USER/`
/// of the running configuration, files named after the ident the process
/// logs as (Cyrus's `config_ident`). `None` before [`watch_hangup`]
/// installed a configuration.
pub fn telemetry() -> Option<Telemetry> {
    let conf = live::current()?;
    let dir = conf.configdirectory().ok()?;
    Some(Telemetry::new(
        dir,
        crate::logging::ident().unwrap_or("corvid"),
    ))
}

/// [`telemetry`] with one file per session named by its start time, as
/// Cyrus's threaded `mupdate` names them (`mupdate-SECONDS.MICROSECONDS`).
pub fn telemetry_per_session() -> Option<Telemetry> {
    telemetry().map(Telemetry::per_session)
}

/// The user a csync session logged in as, for [`telemetry`].
pub fn csync_user(e: &Event) -> Option<&str> {
    match e {
        Event::Authenticated(user) => Some(user),
        _ => None,
    }
}

/// Records a MUPDATE server event: each command's answer in
/// `corvid_commands_total{service="mupdate"}` (result `ok`, `no`, `bad`).
pub fn mupdate_event(e: &engine::mupdate::server::Event) {
    if let engine::mupdate::server::Event::Answered { command, status } = e {
        let result = match *status {
            "OK" => "ok",
            "NO" => "no",
            _ => "bad",
        };
        metrics::global().command("mupdate", command, result);
    }
}

/// The user a MUPDATE session logged in as, for [`telemetry`].
pub fn mupdate_user(e: &engine::mupdate::server::Event) -> Option<&str> {
    match e {
        engine::mupdate::server::Event::Authenticated(user) => Some(user),
        _ => None,
    }
}

/// Files a size walk visits at most: a backup partition holds a few files
/// per user, so this bounds the walk without cutting real partitions short.
const WALK_FILES_MAX: u64 = 10_000_000;

/// Bytes of the regular files under `dir` (symlinks not followed), at most
/// [`WALK_FILES_MAX`] files.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut files = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                files += 1;
                if files >= WALK_FILES_MAX {
                    return total;
                }
            }
        }
    }
    total
}

/// Samples `corvid_backup_bytes{partition}` for every `backuppartition-NAME`
/// now and every minute (on a blocking thread: it walks directories).
pub fn spawn_backup_bytes(conf: &Config) {
    let parts: Vec<(String, PathBuf)> = conf
        .backup_partitions()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    if parts.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let parts = parts.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (name, path) in parts {
                    metrics::global().set_backup_bytes(&name, dir_bytes(&path));
                }
            })
            .await;
        }
    });
}

/// The rolling sync log of `channel` under `configdirectory`, as Cyrus and
/// corvid's store write it: `sync/log`, or `sync/CHANNEL/log`.
fn sync_log_dir(configdirectory: &Path, channel: Option<&str>) -> PathBuf {
    match channel {
        None => configdirectory.join("sync"),
        Some(c) => configdirectory.join("sync").join(c),
    }
}

/// Bytes waiting in a sync log directory: `log` plus `log-run` (the file a
/// rolling client renamed and is working through).
fn sync_log_bytes(dir: &Path) -> u64 {
    ["log", "log-run"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// For `sync_client -r`: reads `path` (as the tool did), starts `/metrics`
/// if configured, and samples `corvid_sync_log_backlog_bytes{channel}`
/// every ten seconds. Problems are logged; rolling replication goes on.
pub async fn start_rolling(path: &Path, channel: Option<String>) {
    // As Cyrus's sync_client (ident `sync_client`): `sync_client_KEY`
    // overrides KEY, so a rolling client sharing an imapd.conf with a
    // sync_server can have a /metrics address of its own.
    let opts = LoadOptions {
        ident: Some("sync_client".into()),
        ..LoadOptions::default()
    };
    let conf = match Config::load_with(path, &opts) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "metrics not started");
            return;
        }
    };
    if let Err(e) = start_metrics(&conf).await {
        tracing::error!("{e}");
    }
    let Ok(configdir) = conf.configdirectory() else {
        return;
    };
    let dir = sync_log_dir(configdir, channel.as_deref());
    let label = channel.unwrap_or_default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            metrics::global().set_sync_log_backlog_bytes(&label, sync_log_bytes(&dir));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_lag_observes_once_per_covering_run_and_stays_bounded() {
        let count = || {
            let text = metrics::global().render();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "corvid_replication_lag_seconds_count{channel=\"rolling-test\"} ",
                    )
                })
                .map(|n| n.parse::<u64>().unwrap())
                .unwrap_or(0)
        };
        let mut lag = RollingLag::new("rolling-test");
        lag.seen(5);
        lag.seen(5);
        lag.seen(9);
        assert_eq!(lag.seen.len(), 2);
        lag.replicated(7);
        assert_eq!(count(), 1);
        assert_eq!(lag.seen.len(), 1);
        lag.replicated(9);
        lag.replicated(9);
        assert_eq!(count(), 2);
        for seq in 10..10_000 {
            lag.seen(seq);
        }
        assert!(lag.seen.len() <= ROLLING_SEEN_MAX);
        assert_eq!(lag.seen.front().map(|(s, _)| *s), Some(10));
        lag.replicated(u64::MAX);
        assert_eq!(count(), 3);
        assert!(lag.seen.is_empty());
    }

    #[test]
    fn directory_bytes_sum_regular_files_at_any_depth() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("x"), [0u8; 10]).unwrap();
        std::fs::write(d.path().join("a/b/y"), [0u8; 32]).unwrap();
        std::os::unix::fs::symlink(d.path().join("x"), d.path().join("a/link")).unwrap();
        assert_eq!(dir_bytes(d.path()), 42);
        assert_eq!(dir_bytes(&d.path().join("missing")), 0);
    }

    #[test]
    fn the_sync_log_backlog_is_log_plus_log_run() {
        let d = tempfile::tempdir().unwrap();
        let dir = sync_log_dir(d.path(), Some("replica"));
        assert_eq!(dir, d.path().join("sync/replica"));
        assert_eq!(sync_log_dir(d.path(), None), d.path().join("sync"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(sync_log_bytes(&dir), 0);
        std::fs::write(dir.join("log"), "APPEND user.alice\n").unwrap();
        std::fs::write(dir.join("log-run"), "MAILBOX user.bob\n").unwrap();
        assert_eq!(sync_log_bytes(&dir), 18 + 17);
    }
}
