//! The daemons' hooks into logs and metrics, so that each daemon needs a
//! line or two per hook and they all record the same way.
//!
//! - [`connection_span`]: one `session` span per connection with service,
//!   peer, and the user once authenticated ([`csync_event`] records it).
//! - [`csync_event`] / [`csync_effect`]: `corvid_commands_total` from the
//!   csync server's events (OK'd writes and refused commands), message
//!   uploads into `corvid_replicated_{messages,bytes}_total`.
//! - [`start_metrics`]: the `/metrics` listener from imapd.conf.
//! - [`finish_cli`]: a one-shot tool's registry to the file
//!   `CORVID_METRICS_TEXTFILE` names (node_exporter's textfile collector).
//! - [`watch_hangup`]: SIGHUP re-reads imapd.conf when not under master(8).
//! - [`spawn_backup_bytes`], [`start_rolling`]: gauges sampled from disk
//!   (bytes under each backup partition; bytes of the sync log waiting),
//!   every minute / ten seconds, by a bounded walk or a `stat`.
//!
//! It records; it never decides anything about a session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::csync::{Effect, Event};
use engine::store::StoreEffect;
use io_tokio::config::{Config, LoadOptions};
use io_tokio::listen;
use io_tokio::metrics;
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

/// Standalone (not under master(8)): every SIGHUP re-reads `path` as
/// `ident` and logs what it finds. Under master, SIGHUP is a shutdown
/// request handled by `listen::shutdown_signal(true)`.
pub fn watch_hangup(path: PathBuf, ident: Option<String>) {
    if listen::master::is_under_master() {
        return;
    }
    let opts = LoadOptions {
        ident,
        ..LoadOptions::default()
    };
    tokio::spawn(listen::hangup_signals(move |_| {
        let _ = listen::reload_config(&path, &opts);
    }));
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
    let conf = match Config::load(path) {
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
