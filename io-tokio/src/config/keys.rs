//! The imapd.conf keys corvid reads, with their type and their Cyrus 3.6.1
//! default (from `lib/imapoptions`, or libsasl2's compiled-in default for the
//! `sasl_*` keys, which Cyrus passes through to libsasl unchanged).
//!
//! Keys not listed here are still kept and readable as strings: Cyrus itself
//! puts every unknown key in its "overflow" table, and one imapd.conf is
//! shared by every Cyrus service, so refusing a key we do not know would
//! refuse a working Cyrus configuration. Listing a key here buys two things:
//! its value is type-checked when the file is loaded (so a broken value is
//! reported with its line before any daemon starts), and a typed accessor
//! falls back to the Cyrus default when the key is absent.

/// How Cyrus interprets a key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Taken verbatim.
    Str,
    /// Cyrus `SWITCH`: judged by its first character(s), see `parse_switch`.
    Switch,
    /// Cyrus `INT`: `strtol(value, &end, 0)`, trailing junk refused.
    Int,
    /// Cyrus `DURATION`: `[-]` then digit groups each followed by d/h/m/s; a
    /// trailing bare number takes the caller's default unit.
    Duration,
    /// Cyrus `ENUM`: one of these names exactly, after mapping
    /// 1/yes/t/true to `on` and 0/no/f/false to `off`.
    Enum(&'static [&'static str]),
    /// Cyrus `STRINGLIST`: one of these names exactly (no on/off mapping).
    StringList(&'static [&'static str]),
}

/// One known key.
pub(crate) struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// The default as Cyrus would hold it in text form (`None`: no default,
    /// Cyrus's NULL). Switch defaults are `"0"`/`"1"`.
    pub default: Option<&'static str>,
    /// Set on a deprecated key: the key that replaced it. Cyrus copies a
    /// deprecated key's value into its replacement when the replacement is
    /// not set (libconfig.c `config_option_deprecate`).
    pub replaced_by: Option<&'static str>,
}

const fn k(name: &'static str, kind: Kind, default: Option<&'static str>) -> Key {
    Key {
        name,
        kind,
        default,
        replaced_by: None,
    }
}

const fn old(name: &'static str, kind: Kind, replaced_by: &'static str) -> Key {
    Key {
        name,
        kind,
        default: None,
        replaced_by: Some(replaced_by),
    }
}

use Kind::*;

const DB: &[&str] = &["skiplist", "sql", "twoskip", "zeroskip"];

/// Sorted by name (checked by a test) so lookup is a binary search.
pub(crate) const KEYS: &[Key] = &[
    k("admins", Str, Some("")),
    k("allowplaintext", Switch, Some("0")),
    k("altnamespace", Switch, Some("1")),
    k("backup_compact_maxsize", Int, Some("0")),
    k("backup_compact_minsize", Int, Some("0")),
    k("backup_compact_work_threshold", Int, Some("1")),
    k("backup_db", StringList(DB), Some("twoskip")),
    k("backup_db_path", Str, None),
    k("backup_keep_previous", Switch, Some("0")),
    k("backup_retention", Duration, Some("7d")),
    old("backup_retention_days", Duration, "backup_retention"),
    k("backup_staging_path", Str, None),
    k("client_timeout", Duration, Some("10s")),
    k("configdirectory", Str, None),
    // corvid's own: where `/metrics` is served (HOST:PORT); unset, nowhere.
    k("corvid_metrics_listen", Str, None),
    // corvid's own: a MUPDATE session completing no command this long is
    // closed (Cyrus hard-codes 3 h); 0 = never. Bare numbers are seconds.
    k("corvid_mupdate_idle_timeout", Duration, Some("3h")),
    // corvid's own: the password file of `sasl_pwcheck_method: corvid`.
    k("corvid_passwd_file", Str, None),
    k("debug", Switch, Some("0")),
    k("defaultdomain", Str, Some("internal")),
    k("defaultpartition", Str, None),
    k(
        "delete_mode",
        Enum(&["immediate", "delayed"]),
        Some("delayed"),
    ),
    k("deletedprefix", Str, Some("DELETED")),
    k(
        "expunge_mode",
        Enum(&["immediate", "semidelayed", "delayed"]),
        Some("delayed"),
    ),
    k("failedloginpause", Duration, Some("3s")),
    k("force_sasl_client_mech", Str, None),
    k("hashimapspool", Switch, Some("0")),
    k("maxquoted", Int, Some("131072")),
    k("maxword", Int, Some("131072")),
    k(
        "mboxlist_db",
        StringList(&["flat", "skiplist", "sql", "twoskip", "zeroskip"]),
        Some("twoskip"),
    ),
    k("mboxlist_db_path", Str, None),
    k("mupdate_authname", Str, None),
    k(
        "mupdate_config",
        Enum(&["standard", "unified", "replicated"]),
        Some("standard"),
    ),
    k("mupdate_connections_max", Int, Some("128")),
    k("mupdate_password", Str, None),
    k("mupdate_port", Int, Some("3905")),
    k("mupdate_realm", Str, None),
    k("mupdate_retry_delay", Int, Some("20")),
    k("mupdate_server", Str, None),
    k("mupdate_username", Str, Some("")),
    k("mupdate_workers_max", Int, Some("50")),
    k("mupdate_workers_maxspare", Int, Some("10")),
    k("mupdate_workers_minspare", Int, Some("2")),
    k("mupdate_workers_start", Int, Some("5")),
    k("proxy_authname", Str, Some("proxy")),
    k("proxy_password", Str, None),
    k("proxyservers", Str, None),
    k("restore_authname", Str, None),
    k("restore_password", Str, None),
    k("restore_realm", Str, None),
    // libsasl2 options (Cyrus overflow keys, passed to libsasl as `<opt>`).
    k("sasl_auxprop_plugin", Str, None),
    k("sasl_maximum_layer", Int, Some("256")),
    k("sasl_mech_list", Str, None),
    k("sasl_minimum_layer", Int, Some("0")),
    k("sasl_pwcheck_method", Str, Some("auxprop")),
    // Debian builds libsasl2 with the saslauthd run dir /var/run/saslauthd.
    k("sasl_saslauthd_path", Str, Some("/var/run/saslauthd/mux")),
    k("sasl_sasldb_path", Str, Some("/etc/sasldb2")),
    k("serverlist", Str, None),
    k("servername", Str, None),
    k("sync_authname", Str, None),
    k("sync_batchsize", Int, Some("8192")),
    k("sync_cache_db", StringList(DB), Some("twoskip")),
    k("sync_cache_db_path", Str, None),
    k("sync_host", Str, None),
    k("sync_log", Switch, Some("0")),
    k("sync_log_chain", Switch, Some("0")),
    k("sync_log_channels", Str, None),
    k("sync_log_unsuppressable_channels", Str, Some("squatter")),
    k("sync_password", Str, None),
    k("sync_port", Str, None),
    k("sync_realm", Str, None),
    k("sync_reconnect_maxwait", Duration, Some("20m")),
    k("sync_repeat_interval", Duration, Some("1s")),
    k("sync_rightnow_channel", Str, None),
    k("sync_shutdown_file", Str, None),
    k("sync_timeout", Duration, Some("30m")),
    k("sync_try_imap", Switch, Some("1")),
    k("temp_path", Str, Some("/tmp")),
    k("timeout", Duration, Some("32m")),
    old("tls_ca_file", Str, "tls_client_ca_file"),
    old("tls_ca_path", Str, "tls_client_ca_dir"),
    old("tls_cert_file", Str, "tls_server_cert"),
    old("tls_cipher_list", Str, "tls_ciphers"),
    k("tls_ciphers", Str, Some("DEFAULT")),
    k("tls_client_ca_dir", Str, None),
    k("tls_client_ca_file", Str, None),
    k("tls_client_cert", Str, None),
    k(
        "tls_client_certs",
        Enum(&["off", "optional", "require"]),
        Some("optional"),
    ),
    k("tls_client_key", Str, None),
    old("tls_key_file", Str, "tls_server_key"),
    k("tls_required", Switch, Some("0")),
    k("tls_server_ca_dir", Str, None),
    k("tls_server_ca_file", Str, None),
    k("tls_server_cert", Str, None),
    k("tls_server_key", Str, None),
    k("tls_versions", Str, Some("tls1_0 tls1_1 tls1_2 tls1_3")),
    k("umask", Str, Some("077")),
    k("unixhierarchysep", Switch, Some("1")),
    k("virtdomains", Enum(&["off", "userid", "on"]), Some("off")),
];

/// The known key `name`, if corvid knows it.
pub(crate) fn find(name: &str) -> Option<&'static Key> {
    KEYS.binary_search_by(|k| k.name.cmp(name))
        .ok()
        .map(|i| &KEYS[i])
}

/// The deprecated key whose value stands in for `name` when `name` is unset.
pub(crate) fn replaced(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.replaced_by == Some(name))
}

/// Whether a key holds a secret: its value is never shown in Debug output or
/// in error messages.
pub(crate) fn is_secret(name: &str) -> bool {
    name.contains("password") || name.contains("secret")
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_sorted_and_unique() {
        for w in super::KEYS.windows(2) {
            assert!(w[0].name < w[1].name, "{} >= {}", w[0].name, w[1].name);
        }
    }
}
