//! Target `config`: the imapd.conf reader (`io_tokio::config`), fed the
//! input as file text, then every accessor on every known key.
//!
//! Checks: no panic, at load or in any typed accessor, whatever the text;
//! parse functions (`parse_int`, `parse_switch`, `parse_duration_s`) on
//! each value never panic. `@include` would read files, so an input that
//! could spell it (even across `\` continuations) has its `@`s replaced:
//! the body never touches the file system.

use io_tokio::config::{self, Config, DurationUnit, KeyKind, LoadOptions};

/// The target body.
pub fn body(data: &[u8]) {
    let mut text = String::from_utf8_lossy(data).into_owned();
    let joined: String = text.replace("\\\n", "").to_ascii_lowercase();
    if joined.contains("include") || joined.contains('\\') {
        text = text.replace('@', "_");
    }
    for ident in [None, Some("sync_server".to_owned()), Some("X".to_owned())] {
        let opts = LoadOptions {
            ident,
            ..LoadOptions::default()
        };
        let Ok(conf) = Config::parse_str(&text, "fuzz.conf", &opts) else {
            continue;
        };
        let _ = format!("{conf:?}");
        for (key, kind, _, _) in config::known_keys() {
            let _ = conf.is_set(key);
            if let Some(v) = conf.get_str(key) {
                let _ = config::parse_int(v);
                let _ = config::parse_switch(v);
                let _ = config::parse_duration_s(v, DurationUnit::Seconds);
            }
            match kind {
                KeyKind::Str => {
                    let _ = conf.require_str(key);
                }
                _ => {
                    let _ = conf.get_bool(key);
                    let _ = conf.get_int(key);
                    let _ = conf.get_duration_s(key, DurationUnit::Minutes);
                }
            }
            let _ = conf.channel_str(Some("chan"), key);
            let _ = conf.channel_bool(Some("chan"), key);
            let _ = conf.channel_int(None, key);
            let _ = conf.channel_duration_s(Some("chan"), key, DurationUnit::Seconds);
            let _ = conf.origin(key);
        }
        let _ = conf.configdirectory();
        let _ = conf.servername();
        let _ = conf.admins();
        let _ = conf.partitions();
        let _ = conf.backup_partitions();
        let _ = conf.default_partition();
        let _ = conf.partition_path("default");
    }
}
