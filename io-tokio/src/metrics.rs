//! Prometheus metrics: a small fixed set of families the daemons update,
//! rendered in the text exposition format (version 0.0.4) and served at
//! `/metrics` on the optional `corvid_metrics_listen: HOST:PORT` of
//! imapd.conf.
//!
//! The families (every name starts `corvid_`):
//! - `connections_total{service}`, `connections_active{service}`;
//! - `commands_total{service,command,result}`;
//! - `replicated_messages_total{channel}`, `replicated_bytes_total{channel}`;
//! - `replication_lag_seconds{channel}` (histogram): from a change at the
//!   source to its OK on the replica. Cyrus has no such measure;
//! - `sync_log_backlog_bytes{channel}`: bytes of the rolling sync log
//!   (`log` plus a `log-run` being worked on) not yet replicated;
//! - `mupdate_mailboxes`: the MUPDATE database size;
//!   `mupdate_slave_lag_seconds` (histogram): from the arrival of the
//!   master's UPDATE line to the slave's durable commit of it;
//!   `mupdate_master_contact_age_seconds`: seconds since the slave last
//!   heard from its master (any line), computed at scrape time;
//! - `backup_bytes{partition}`: bytes under a backup partition;
//! - `dsync_exits_total{code}`.
//!
//! Why hand-written and not a client crate: the set is small and fixed, the
//! format is a few lines, and this way label cardinality is bounded in one
//! place: every labelled family holds at most
//! [`Options::series_max`] label sets; later new label sets are counted
//! under the value `_other`, so a peer that sends made-up command names
//! cannot grow memory. Output order is sorted (BTreeMap), so a scrape is
//! deterministic.
//!
//! The HTTP side ([`serve`]) answers one `GET /metrics` per connection
//! (HTTP/1.0 or 1.1, `Connection: close`), reads at most
//! [`Options::request_bytes_max`] of request head within
//! [`Options::request_timeout`], and serves at most
//! [`Options::connections_max`] scrapers at once. It never reads a body,
//! never follows anything but the path, and exposes no mail data: only
//! counts, sizes, service/channel/partition names and command names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Limits of the registry and its HTTP responder.
#[derive(Debug, Clone)]
pub struct Options {
    /// Label sets kept per family; more are counted as `_other`. 1000.
    pub series_max: usize,
    /// Largest request head read before answering 431. 8 KiB.
    pub request_bytes_max: usize,
    /// A scraper that has not sent its request head by then is dropped. 5 s.
    pub request_timeout: Duration,
    /// Scrapers served at once; more wait in the kernel backlog. 16.
    pub connections_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            series_max: 1000,
            request_bytes_max: 8 << 10,
            request_timeout: Duration::from_secs(5),
            connections_max: 16,
        }
    }
}

/// Replication lag buckets, seconds: a healthy rolling replica is in the
/// sub-second buckets, a stuck one climbs through minutes to hours.
pub const LAG_BUCKETS_S: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// MUPDATE slave lag buckets, seconds: a slave applies a pushed UPDATE in
/// milliseconds; Cyrus's own slaves are seconds behind (its poll).
pub const MUPDATE_LAG_BUCKETS_S: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    /// Per bucket (not cumulative); rendering accumulates.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.buckets.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// A family keyed by its label values, bounded by `series_max`.
#[derive(Debug)]
struct Family<V> {
    series: BTreeMap<Vec<String>, V>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Family {
            series: BTreeMap::new(),
        }
    }
}

impl<V> Family<V> {
    fn get(&mut self, labels: &[&str], series_max: usize, new: impl FnOnce() -> V) -> &mut V {
        let mut key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        if !self.series.contains_key(&key) && self.series.len() >= series_max {
            key = vec!["_other".to_owned(); labels.len()];
        }
        self.series.entry(key).or_insert_with(new)
    }
}

#[derive(Debug, Default)]
struct State {
    connections_total: Family<u64>,
    connections_active: Family<i64>,
    commands_total: Family<u64>,
    replicated_messages: Family<u64>,
    replicated_bytes: Family<u64>,
    replication_lag: Family<Histogram>,
    sync_log_backlog_bytes: Family<u64>,
    mupdate_mailboxes: Option<u64>,
    mupdate_slave_lag: Option<Histogram>,
    mupdate_master_contact: Option<std::time::Instant>,
    backup_bytes: Family<u64>,
    dsync_exits: Family<u64>,
}

/// The registry: cheap to update from any thread, rendered on scrape.
#[derive(Debug)]
pub struct Metrics {
    options: Options,
    state: Mutex<State>,
}

/// Keeps `corvid_connections_active{service}` raised while alive.
#[derive(Debug)]
#[must_use = "the connection counts as active until this is dropped"]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    service: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let series_max = self.metrics.options.series_max;
        let mut s = self.metrics.lock();
        *s.connections_active.get(&[&self.service], series_max, || 0) -= 1;
    }
}

/// The process's registry, the one `/metrics` serves by default.
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::new(Options::default())))
}

impl Metrics {
    /// An empty registry.
    pub fn new(options: Options) -> Metrics {
        Metrics {
            options,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts, never broken
        // invariants worth dying for: keep serving them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `service` (`sync_server`, `mupdate`, …) began; it
    /// counts as active until the guard drops.
    pub fn connection_opened(self: &Arc<Self>, service: &str) -> ConnectionGuard {
        let max = self.options.series_max;
        let mut s = self.lock();
        *s.connections_total.get(&[service], max, || 0) += 1;
        *s.connections_active.get(&[service], max, || 0) += 1;
        ConnectionGuard {
            metrics: self.clone(),
            service: service.to_owned(),
        }
    }

    /// A command `command` of `service` ended with `result` (`ok`, `no`,
    /// `bad`, or a protocol's own code such as `IMAP_MAILBOX_NONEXISTENT`).
    pub fn command(&self, service: &str, command: &str, result: &str) {
        let max = self.options.series_max;
        *self
            .lock()
            .commands_total
            .get(&[service, command, result], max, || 0) += 1;
    }

    /// `messages` messages of `bytes` bytes in total were replicated on
    /// `channel` (`""` for the default channel).
    pub fn replicated(&self, channel: &str, messages: u64, bytes: u64) {
        let max = self.options.series_max;
        let mut s = self.lock();
        *s.replicated_messages.get(&[channel], max, || 0) += messages;
        *s.replicated_bytes.get(&[channel], max, || 0) += bytes;
    }

    /// A change made `lag` ago at the source is now OK on `channel`'s replica.
    pub fn replication_lag(&self, channel: &str, lag: Duration) {
        let max = self.options.series_max;
        self.lock()
            .replication_lag
            .get(&[channel], max, || Histogram::new(LAG_BUCKETS_S))
            .observe(lag.as_secs_f64());
    }

    /// `bytes` of `channel`'s rolling sync log wait to be replicated.
    pub fn set_sync_log_backlog_bytes(&self, channel: &str, bytes: u64) {
        let max = self.options.series_max;
        *self
            .lock()
            .sync_log_backlog_bytes
            .get(&[channel], max, || 0) = bytes;
    }

    /// The MUPDATE database holds `mailboxes` entries.
    pub fn set_mupdate_mailboxes(&self, mailboxes: u64) {
        self.lock().mupdate_mailboxes = Some(mailboxes);
    }

    /// A slave committed a change the master made `lag` ago.
    pub fn mupdate_slave_lag(&self, lag: Duration) {
        self.lock()
            .mupdate_slave_lag
            .get_or_insert_with(|| Histogram::new(MUPDATE_LAG_BUCKETS_S))
            .observe(lag.as_secs_f64());
    }

    /// A MUPDATE slave heard from its master just now.
    pub fn mupdate_master_contact(&self) {
        self.lock().mupdate_master_contact = Some(std::time::Instant::now());
    }

    /// When the MUPDATE slave last heard from its master, if ever.
    pub fn mupdate_master_contact_at(&self) -> Option<std::time::Instant> {
        self.lock().mupdate_master_contact
    }

    /// The backup partition `partition` holds `bytes` bytes.
    pub fn set_backup_bytes(&self, partition: &str, bytes: u64) {
        let max = self.options.series_max;
        *self.lock().backup_bytes.get(&[partition], max, || 0) = bytes;
    }

    /// A dsync run ended with exit `code`.
    pub fn dsync_exit(&self, code: u8) {
        let max = self.options.series_max;
        *self.lock().dsync_exits.get(&[&code.to_string()], max, || 0) += 1;
    }

    /// The text exposition format (0.0.4), families in a fixed order and
    /// series sorted by label values.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        let svc = &["service"];
        let chan = &["channel"];
        let part = &["partition"];
        counter(
            &mut out,
            "corvid_connections_total",
            "Connections accepted.",
            svc,
            &s.connections_total,
        );
        gauge(
            &mut out,
            "corvid_connections_active",
            "Connections open now.",
            svc,
            &s.connections_active,
        );
        counter(
            &mut out,
            "corvid_commands_total",
            "Protocol commands handled, by command and result.",
            &["service", "command", "result"],
            &s.commands_total,
        );
        counter(
            &mut out,
            "corvid_replicated_messages_total",
            "Messages replicated.",
            chan,
            &s.replicated_messages,
        );
        counter(
            &mut out,
            "corvid_replicated_bytes_total",
            "Message bytes replicated.",
            chan,
            &s.replicated_bytes,
        );
        histogram(
            &mut out,
            "corvid_replication_lag_seconds",
            "Time from a change at the source to its OK on the replica.",
            chan,
            s.replication_lag
                .series
                .iter()
                .map(|(k, v)| (k.as_slice(), v)),
        );
        gauge(
            &mut out,
            "corvid_sync_log_backlog_bytes",
            "Bytes of the rolling sync log waiting to be replicated.",
            chan,
            &s.sync_log_backlog_bytes,
        );
        if let Some(n) = s.mupdate_mailboxes {
            header(
                &mut out,
                "corvid_mupdate_mailboxes",
                "Mailboxes in the MUPDATE database.",
                "gauge",
            );
            let _ = writeln!(out, "corvid_mupdate_mailboxes {n}");
        }
        if let Some(h) = &s.mupdate_slave_lag {
            histogram(
                &mut out,
                "corvid_mupdate_slave_lag_seconds",
                "Time from a change on the MUPDATE master to its commit on this slave.",
                &[],
                std::iter::once((&[][..], h)),
            );
        }
        if let Some(at) = s.mupdate_master_contact {
            header(
                &mut out,
                "corvid_mupdate_master_contact_age_seconds",
                "Seconds since this MUPDATE slave last heard from its master.",
                "gauge",
            );
            let age = at.elapsed().as_secs_f64();
            let _ = writeln!(out, "corvid_mupdate_master_contact_age_seconds {age:.3}");
        }
        gauge(
            &mut out,
            "corvid_backup_bytes",
            "Bytes under each backup partition.",
            part,
            &s.backup_bytes,
        );
        counter(
            &mut out,
            "corvid_dsync_exits_total",
            "dsync runs, by exit code.",
            &["code"],
            &s.dsync_exits,
        );
        out
    }
}

impl Metrics {
    /// Writes [`Metrics::render`] to `path` atomically (a temporary file in
    /// the same directory, then rename), for one-shot tools whose process
    /// ends before any scrape: Prometheus node_exporter's textfile
    /// collector reads such files.
    pub fn write_textfile(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label value escaping of the text format: `\`, `"` and newline.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn labels(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn counter(out: &mut String, name: &str, help: &str, names: &[&str], f: &Family<u64>) {
    if f.series.is_empty() {
        return;
    }
    header(out, name, help, "counter");
    for (k, v) in &f.series {
        let _ = writeln!(out, "{name}{} {v}", labels(names, k, None));
    }
}

fn gauge<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&str],
    f: &Family<V>,
) {
    if f.series.is_empty() {
        return;
    }
    header(out, name, help, "gauge");
    for (k, v) in &f.series {
        let _ = writeln!(out, "{name}{} {v}", labels(names, k, None));
    }
}

fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&str],
    series: impl Iterator<Item = (&'a [String], &'a Histogram)>,
) {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return;
    }
    header(out, name, help, "histogram");
    for (k, h) in series {
        let mut cumulative = 0;
        for (b, c) in h.buckets.iter().zip(&h.counts) {
            cumulative += c;
            let le = format!("{b}");
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                labels(names, k, Some(("le", &le)))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            labels(names, k, Some(("le", "+Inf"))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", labels(names, k, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", labels(names, k, None), h.count);
    }
}

/// Serves `metrics` at `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        metrics.options.connections_max.max(1),
    ));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let m = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &m).await {
                        debug!(%peer, error = %e, "metrics scrape failed");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The process's `/metrics` listener: the address asked for, the bound
/// one, and the task serving it.
struct Listening {
    asked: SocketAddr,
    bound: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

static LISTENING: Mutex<Option<Listening>> = Mutex::new(None);

fn listening() -> std::sync::MutexGuard<'static, Option<Listening>> {
    LISTENING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `addr` and serves [`global`] there on a task of the current
/// runtime; returns the bound address (useful when the port was 0). A
/// listener this process already runs is replaced (after the new one is
/// bound), or kept when it already listens at `addr`.
pub async fn spawn_global(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    if let Some(l) = listening()
        .as_ref()
        .filter(|l| l.asked == addr && !l.task.is_finished())
    {
        return Ok(l.bound);
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving metrics at /metrics");
    let task = tokio::spawn(serve(listener, global().clone(), std::future::pending()));
    let old = listening().replace(Listening {
        asked: addr,
        bound,
        task,
    });
    if let Some(old) = old {
        info!(addr = %old.bound, "metrics no longer served here");
        old.task.abort();
    }
    Ok(bound)
}

/// Stops the process's `/metrics` listener, if any.
pub fn stop_global() {
    if let Some(old) = listening().take() {
        info!(addr = %old.bound, "metrics no longer served");
        old.task.abort();
    }
}

/// Starts the `/metrics` listener if `corvid_metrics_listen` is set in
/// `conf`; `Ok(None)` when it is not. An address that does not parse or
/// bind is an error the daemon should report and exit on. Called again
/// with a re-read config (SIGHUP), it moves the listener to a changed
/// address, or stops it when the key is gone; on an error the running
/// listener stays.
pub async fn spawn_from_config(conf: &crate::config::Config) -> Result<Option<SocketAddr>, String> {
    let Some(value) = conf.get_str("corvid_metrics_listen") else {
        stop_global();
        return Ok(None);
    };
    let where_ = conf
        .origin("corvid_metrics_listen")
        .map(|o| o.to_string())
        .unwrap_or_default();
    let addr = crate::config::lint::resolve_host_port(value)
        .map_err(|e| format!("{where_}: corvid_metrics_listen: {e}"))?;
    spawn_global(addr)
        .await
        .map(Some)
        .map_err(|e| format!("{where_}: corvid_metrics_listen: cannot listen on {addr}: {e}"))
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let opts = &metrics.options;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > opts.request_bytes_max {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "request head cut short",
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
    };
    let complete = match tokio::time::timeout(opts.request_timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head too slow",
            ))
        }
    };
    let (status, body) = if !complete {
        ("431 Request Header Fields Too Large", String::new())
    } else {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.trim_end().split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(path), Some(v)) if v.starts_with("HTTP/1.") => {
                let path = path.split('?').next().unwrap_or_default();
                match (m, path) {
                    ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.render()),
                    ("GET" | "HEAD", _) => {
                        ("404 Not Found", "only /metrics is served\n".to_owned())
                    }
                    _ => ("405 Method Not Allowed", String::new()),
                }
            }
            _ => ("400 Bad Request", String::new()),
        }
    };
    let is_head = head.starts_with(b"HEAD ");
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_beyond_the_limit_count_as_other() {
        let m = Metrics::new(Options {
            series_max: 2,
            ..Options::default()
        });
        for c in ["A", "B", "C", "D"] {
            m.command("sync_server", c, "ok");
        }
        let text = m.render();
        assert!(text.contains("command=\"A\""));
        assert!(text.contains("command=\"B\""));
        assert!(!text.contains("command=\"C\""));
        assert!(text.contains(
            "corvid_commands_total{service=\"_other\",command=\"_other\",result=\"_other\"} 2"
        ));
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::new(Options::default());
        m.replication_lag("", Duration::from_millis(30));
        m.replication_lag("", Duration::from_secs(2));
        m.replication_lag("", Duration::from_secs(100_000));
        let text = m.render();
        assert!(
            text.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"0.01\"} 0\n")
        );
        assert!(
            text.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"0.05\"} 1\n")
        );
        assert!(text.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"2.5\"} 2\n"));
        assert!(
            text.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"14400\"} 2\n")
        );
        assert!(
            text.contains("corvid_replication_lag_seconds_bucket{channel=\"\",le=\"+Inf\"} 3\n")
        );
        assert!(text.contains("corvid_replication_lag_seconds_count{channel=\"\"} 3\n"));
        assert!(text.contains("corvid_replication_lag_seconds_sum{channel=\"\"} 100002.03\n"));
    }

    #[test]
    fn a_textfile_holds_the_rendered_registry() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(Options::default());
        m.dsync_exit(2);
        let path = dir.path().join("corvid_dsync.prom");
        m.write_textfile(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), m.render());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(Options::default());
        m.command("s", "a\"b\\c\nd", "ok");
        assert!(m.render().contains("command=\"a\\\"b\\\\c\\nd\""));
    }
}
