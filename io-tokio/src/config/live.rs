//! The configuration a running daemon uses now, which SIGHUP replaces.
//!
//! A daemon installs the [`Config`] it started with; on SIGHUP (standalone,
//! not under master(8)) it re-reads the file and installs the new one if it
//! loads. Code that applies a setting *per new connection or per login*
//! reads [`current`] there instead of keeping its own copy, so the change
//! applies at once without a restart. Settings that shape the process
//! itself (the store, listen sockets, partitions) are read once at start:
//! [`classify`] names which are which, and the reload logs every changed key
//! that only a restart applies.
//!
//! It never reads files by itself and never decides what a key means: the
//! [`LIVE_KEYS`] table only records which keys corvid re-reads per
//! connection, login or signal.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use super::Config;

/// Keys whose new value applies without a restart, and where.
///
/// Everything else needs a restart (and the reload says so by name).
pub const LIVE_KEYS: &[(&str, &str)] = &[
    ("debug", "log level, at once"),
    (
        "corvid_metrics_listen",
        "the /metrics listener moves at once",
    ),
    ("sync_timeout", "idle timeout of new csync connections"),
    ("failedloginpause", "new csync connections"),
    (
        "allowplaintext",
        "SASL mechanisms offered to new connections",
    ),
    (
        "sasl_mech_list",
        "SASL mechanisms offered to new connections",
    ),
    (
        "sasl_minimum_layer",
        "SASL mechanisms offered to new connections",
    ),
    ("corvid_passwd_file", "password checks of new logins"),
    ("sasl_pwcheck_method", "password checks of new logins"),
    ("sasl_saslauthd_path", "password checks of new logins"),
    (
        "mupdate_connections_max",
        "checked at each new MUPDATE connection",
    ),
    (
        "tls_server_cert",
        "new connections' STARTTLS (files re-read on every SIGHUP)",
    ),
    (
        "tls_server_key",
        "new connections' STARTTLS (files re-read on every SIGHUP)",
    ),
    (
        "tls_client_ca_file",
        "new connections' client certificate checks",
    ),
    (
        "tls_client_ca_dir",
        "new connections' client certificate checks",
    ),
];

static CURRENT: RwLock<Option<Arc<Config>>> = RwLock::new(None);

/// Makes `conf` the running configuration; returns the one it replaces.
pub fn install(conf: Config) -> Option<Arc<Config>> {
    let mut slot = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    slot.replace(Arc::new(conf))
}

/// The running configuration, if the daemon installed one.
pub fn current() -> Option<Arc<Config>> {
    CURRENT.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The key of Cyrus's option behind `key` as set in the file: `key`
/// itself, or without the service prefix (`syncserver_sync_timeout` is
/// `sync_timeout` for ident `syncserver`) or a channel prefix
/// (`replica_sync_host`).
fn base_key<'k>(key: &'k str, ident: Option<&str>) -> &'k str {
    if let Some(rest) = ident.and_then(|i| key.strip_prefix(i)?.strip_prefix('_')) {
        return rest;
    }
    if super::known_keys().any(|(k, ..)| k == key) {
        return key;
    }
    // A channel prefix: the longest known key that ends the name.
    key.match_indices('_')
        .map(|(i, _)| &key[i + 1..])
        .find(|rest| super::known_keys().any(|(k, ..)| k == *rest))
        .unwrap_or(key)
}

/// What changed between two configurations, split by how it applies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Changed keys (as written in the file) that apply without a restart.
    pub live: Vec<String>,
    /// Changed keys that apply only when the daemon restarts.
    pub restart: Vec<String>,
}

/// The keys whose value differs between `old` and `new` (set, unset or
/// changed), each classified by [`LIVE_KEYS`].
pub fn classify(old: &Config, new: &Config) -> Changes {
    let keys: BTreeSet<&str> = old.keys().chain(new.keys()).map(|(k, _)| k).collect();
    let mut changes = Changes::default();
    for key in keys {
        if old.get_str(key) == new.get_str(key) {
            continue;
        }
        let base = base_key(key, new.ident());
        if LIVE_KEYS.iter().any(|(k, _)| *k == base) {
            changes.live.push(key.to_owned());
        } else {
            changes.restart.push(key.to_owned());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadOptions;

    fn conf(text: &str) -> Config {
        Config::parse_str(
            text,
            "/etc/imapd.conf",
            &LoadOptions {
                ident: Some("syncserver".into()),
                ..LoadOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn changed_keys_are_split_into_live_and_restart() {
        let old = conf("configdirectory: /a\nsync_timeout: 60\nsyncserver_debug: no\n");
        let new = conf(
            "configdirectory: /b\nsync_timeout: 90\nsyncserver_debug: yes\ncorvid_metrics_listen: 127.0.0.1:9\nsync_log: yes\n",
        );
        let c = classify(&old, &new);
        assert_eq!(
            c.live,
            ["corvid_metrics_listen", "sync_timeout", "syncserver_debug"]
        );
        assert_eq!(c.restart, ["configdirectory", "sync_log"]);
        assert_eq!(classify(&new, &new), Changes::default());
    }

    #[test]
    fn channel_prefixed_keys_are_classified_by_their_option() {
        assert_eq!(base_key("replica_sync_timeout", None), "sync_timeout");
        assert_eq!(base_key("sync_timeout", None), "sync_timeout");
        assert_eq!(base_key("mupdate_debug", Some("mupdate")), "debug");
    }
}
