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
//!
//! It records; it never decides anything about a session.

use std::path::PathBuf;

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
