//! What `corvid config check` reports about a loaded imapd.conf beyond what
//! stops a load: keys no Cyrus 3.6 or corvid option has (with the nearest
//! known key when one is close enough to be a typo), values Cyrus itself
//! would refuse for options corvid does not read, deprecated options, and
//! values of corvid's own keys that parse but cannot work.
//!
//! Why this is separate from loading: one imapd.conf serves every Cyrus
//! service, and Cyrus keeps unknown keys without a word, so a daemon must
//! not refuse a file a working Cyrus host reads. Daemons log these findings
//! as warnings at start; `corvid config check` prints them and fails on
//! [`Severity::Error`].
//!
//! How a key is classified (after the process ident, which `Config` already
//! resolves): a Cyrus or corvid option; `<service-or-channel>_<option>` (the
//! ident and channel override forms, checked with the option's type);
//! `<kind>partition-NAME` paths; `sasl_*` (passed to libsasl, which has
//! plugin-defined options, so only near-misses of the sasl keys corvid reads
//! are flagged). Anything else is unknown; it is an error when a known key
//! lies within a small Damerau–Levenshtein distance (a typo that Cyrus would
//! silently ignore), a warning otherwise.
//!
//! It never prints a secret's value and never touches the file system.

use std::net::ToSocketAddrs;

use super::cyrus_options::{self, Type};
use super::{
    check_kind, keys, parse_duration_s, parse_int, parse_switch, shown, Config, DurationUnit,
    Origin,
};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; the file works.
    Warning,
    /// The file does not do what its author meant: `config check` fails.
    Error,
}

/// What is wrong with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// No Cyrus or corvid option of this name, but `nearest` is one typo away.
    Misspelt { nearest: &'static str },
    /// No Cyrus or corvid option of this name, nor one close to it.
    Unknown,
    /// Cyrus would refuse this value at load (or corvid cannot use it).
    BadValue { shown: String, expected: String },
    /// A deprecated Cyrus option; `use_instead` replaced it.
    Deprecated { use_instead: &'static str },
    /// A value that parses but will not work as meant (a relative path, …).
    Suspicious { why: String },
    /// A key the file must set is not set.
    Missing,
}

/// One thing found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Where the key was set; `None` for a key that is missing.
    pub origin: Option<Origin>,
    /// The key as written (lower-cased).
    pub key: String,
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.origin {
            Some(o) => write!(f, "{o}: {sev}: ")?,
            None => write!(f, "{sev}: ")?,
        }
        let key = &self.key;
        match &self.problem {
            Problem::Misspelt { nearest } => write!(
                f,
                "unknown option '{key}'; did you mean '{nearest}'? (Cyrus ignores unknown options silently)"
            ),
            Problem::Unknown => write!(
                f,
                "unknown option '{key}' (not a Cyrus 3.6 or corvid option; kept, but nothing reads it)"
            ),
            Problem::BadValue { shown, expected } => {
                write!(f, "invalid value {shown} for option '{key}': expected {expected}")
            }
            Problem::Deprecated { use_instead } => {
                write!(f, "option '{key}' is deprecated; use '{use_instead}'")
            }
            Problem::Suspicious { why } => write!(f, "option '{key}': {why}"),
            Problem::Missing => write!(f, "option '{key}' is not set"),
        }
    }
}

/// libsasl options corvid reads or that are commonly set: a `sasl_` key
/// near one of these (but not equal) is a typo.
const SASL_KEYS: &[&str] = &[
    "sasl_auxprop_plugin",
    "sasl_canon_user_plugin",
    "sasl_keytab",
    "sasl_log_level",
    "sasl_maximum_layer",
    "sasl_mech_list",
    "sasl_minimum_layer",
    "sasl_pwcheck_method",
    "sasl_saslauthd_path",
    "sasl_sasldb_path",
];

/// The `<kind>partition-` prefixes Cyrus knows (`searchpartition` also
/// comes tier-prefixed, `<tier>searchpartition-`).
const PARTITION_KINDS: &[&str] = &[
    "partition",
    "metapartition",
    "archivepartition",
    "backuppartition",
];

/// What a key is.
enum Class {
    /// A Cyrus and/or corvid option (the name after any override prefix).
    Option(&'static str),
    Partition,
    Sasl,
    Unknown,
}

fn known(name: &str) -> Option<&'static str> {
    cyrus_options::find(name)
        .map(|o| o.name)
        .or_else(|| keys::find(name).map(|k| k.name))
}

fn classify(key: &str) -> Class {
    if let Some(name) = known(key) {
        return Class::Option(name);
    }
    if is_partition(key) {
        return Class::Partition;
    }
    if key.starts_with("sasl_") && !near_sasl(key) {
        return Class::Sasl;
    }
    // `<ident>_<option>` / `<channel>_<option>`: any prefix ending at an
    // underscore, the longest option that remains wins.
    for (i, _) in key.match_indices('_') {
        let rest = &key[i + 1..];
        if let Some(name) = known(rest) {
            return Class::Option(name);
        }
        if is_partition(rest) {
            return Class::Partition;
        }
        if rest.starts_with("sasl_") && !near_sasl(rest) {
            return Class::Sasl;
        }
    }
    Class::Unknown
}

fn is_partition(key: &str) -> bool {
    let Some((kind, name)) = key.split_once('-') else {
        return false;
    };
    !name.is_empty()
        && (PARTITION_KINDS.contains(&kind)
            || kind
                .strip_suffix("searchpartition")
                .is_some_and(|tier| tier.bytes().all(|b| b.is_ascii_alphanumeric())))
}

fn near_sasl(key: &str) -> bool {
    SASL_KEYS
        .iter()
        .any(|k| *k != key && distance(k, key) <= typo_distance_max(key))
}

/// How many edits still count as a typo of a key this long.
fn typo_distance_max(key: &str) -> usize {
    match key.len() {
        0..=5 => 1,
        6..=14 => 2,
        _ => 3,
    }
}

/// Optimal string alignment distance (Levenshtein plus adjacent
/// transpositions, each counting one edit), on bytes: keys are ASCII.
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The known key nearest to `key` (Cyrus options, corvid keys, the sasl
/// keys), if one is within typo distance. Ties go to the first in name order.
pub fn nearest_known(key: &str) -> Option<&'static str> {
    let max = typo_distance_max(key);
    let candidates = cyrus_options::OPTIONS
        .iter()
        .map(|o| o.name)
        .chain(keys::KEYS.iter().map(|k| k.name))
        .chain(SASL_KEYS.iter().copied());
    let mut best: Option<(usize, &'static str)> = None;
    for name in candidates {
        let d = distance(key, name);
        if d <= max && best.is_none_or(|(bd, bn)| (d, name) < (bd, bn)) {
            best = Some((d, name));
        }
    }
    // `<prefix>_<typo>`: the override form of a misspelt option.
    if best.is_none() {
        for (i, _) in key.match_indices('_') {
            let rest = &key[i + 1..];
            if rest.len() >= 6 {
                if let Some(n) = nearest_known(rest) {
                    return Some(n);
                }
            }
        }
    }
    best.map(|(_, n)| n)
}

/// Checks `value` against a Cyrus option type, as libconfig does at load.
fn check_type(ty: Type, value: &str) -> Result<(), String> {
    let ok = match ty {
        Type::Str => true,
        Type::Int => parse_int(value).is_some(),
        Type::Switch => parse_switch(value).is_some(),
        Type::Duration => parse_duration_s(value, DurationUnit::Seconds).is_some(),
        Type::Enum(names) => {
            let v = match value {
                "1" | "yes" | "t" | "true" => "on",
                "0" | "no" | "f" | "false" => "off",
                v => v,
            };
            names.contains(&v)
        }
        Type::StringList(names) => names.contains(&value),
        Type::Bitfield(names) => value.split_ascii_whitespace().all(|t| names.contains(&t)),
    };
    if ok {
        return Ok(());
    }
    Err(match ty {
        Type::Str => unreachable!("strings always pass"),
        Type::Int => "an integer (decimal, 0x hex or 0 octal)".into(),
        Type::Switch => "a switch (yes/no, on/off, true/false, 1/0, t/f)".into(),
        Type::Duration => "a duration such as 90, 30s, 20m, 1h30m or 7d".into(),
        Type::Enum(n) | Type::StringList(n) => format!("one of {}", n.join(", ")),
        Type::Bitfield(n) => format!("any of {}, separated by blanks", n.join(", ")),
    })
}

/// Checks a `HOST:PORT` listen address (`[v6]:port` too).
pub fn check_host_port(value: &str) -> Result<(), String> {
    let expected = "HOST:PORT, e.g. 127.0.0.1:9105 or [::1]:9105";
    let (host, port) = value.rsplit_once(':').ok_or_else(|| expected.to_owned())?;
    // Port 0 (any free port) passes here, for tests; `check` refuses it in
    // a config, where nobody could find the port.
    let _port: u16 = port.parse().map_err(|_| expected.to_owned())?;
    if host.is_empty() {
        return Err(expected.to_owned());
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // A literal address is checked here; a name resolves at bind time.
    if host.parse::<std::net::IpAddr>().is_ok()
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        Ok(())
    } else {
        Err(expected.to_owned())
    }
}

/// Checks a `HOST:PORT` and resolves it (for callers that bind).
pub fn resolve_host_port(value: &str) -> Result<std::net::SocketAddr, String> {
    check_host_port(value)?;
    value
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {value:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

/// Everything worth telling the administrator about `conf`, in file order
/// (findings without an origin last).
pub fn check(conf: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for (key, e) in &conf.entries {
        let mut push = |severity, problem| {
            out.push(Finding {
                severity,
                origin: Some(e.origin.clone()),
                key: key.clone(),
                problem,
            })
        };
        match classify(key) {
            Class::Option(name) => {
                let mut bad = false;
                if let Some(opt) = cyrus_options::find(name) {
                    if let Err(expected) = check_type(opt.ty, &e.value) {
                        bad = true;
                        push(
                            Severity::Error,
                            Problem::BadValue {
                                shown: shown(key, &e.value),
                                expected,
                            },
                        );
                    }
                    if let Some(new) = opt.replaced_by {
                        push(Severity::Warning, Problem::Deprecated { use_instead: new });
                    }
                }
                // corvid's own reading of the key (stricter for some keys,
                // and the only one for corvid_*); the load checked the
                // generic form, this also covers override forms.
                if let Some(k) = keys::find(name).filter(|_| !bad) {
                    if let Err(expected) = check_kind(k.kind, &e.value) {
                        push(
                            Severity::Error,
                            Problem::BadValue {
                                shown: shown(key, &e.value),
                                expected,
                            },
                        );
                    }
                }
                if let Some(problem) = corvid_value_check(name, &e.value) {
                    push(Severity::Error, problem);
                } else if let Some(why) = path_check(name, &e.value) {
                    push(Severity::Warning, Problem::Suspicious { why });
                }
            }
            Class::Partition => {
                if !e.value.starts_with('/') {
                    push(
                        Severity::Warning,
                        Problem::Suspicious {
                            why: "partition path is not absolute (it would depend on the working directory)".into(),
                        },
                    );
                }
            }
            Class::Sasl => {}
            Class::Unknown => match nearest_known(key) {
                Some(nearest) => push(Severity::Error, Problem::Misspelt { nearest }),
                None => push(Severity::Warning, Problem::Unknown),
            },
        }
    }
    out.sort_by(|a, b| {
        let pos = |f: &Finding| {
            f.origin
                .as_ref()
                .map(|o| (0, o.file.to_path_buf(), o.line))
                .unwrap_or((1, Default::default(), 0))
        };
        pos(a).cmp(&pos(b))
    });
    if !conf.is_set("configdirectory") {
        out.push(Finding {
            severity: Severity::Error,
            origin: None,
            key: "configdirectory".into(),
            problem: Problem::Missing,
        });
    }
    out
}

/// Value rules of corvid's own keys beyond their type.
fn corvid_value_check(name: &str, value: &str) -> Option<Problem> {
    match name {
        "corvid_metrics_listen" => check_host_port(value)
            .and_then(|()| match value.ends_with(":0") {
                true => Err("HOST:PORT with a fixed port (0 would pick a random one)".into()),
                false => Ok(()),
            })
            .err()
            .map(|expected| Problem::BadValue {
                shown: format!("{value:?}"),
                expected,
            }),
        _ => None,
    }
}

fn path_check(name: &str, value: &str) -> Option<String> {
    let is_path = matches!(
        name,
        "configdirectory" | "corvid_passwd_file" | "sasl_saslauthd_path" | "temp_path"
    );
    (is_path && !value.starts_with('/'))
        .then(|| "path is not absolute (it would depend on the working directory)".to_owned())
}

/// Where an effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Set in the file(s), here.
    Set(Origin),
    /// Not set: the Cyrus (or corvid) default.
    Default,
}

/// One line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub key: String,
    /// The value, or `<hidden>` for a secret.
    pub value: String,
    pub source: Source,
}

/// The effective configuration: every key set in the file(s) as read (after
/// `{configdirectory}` expansion), then every key corvid reads that is not
/// set but has a default, each marked as such. Sorted by key; secrets hidden.
pub fn effective(conf: &Config) -> Vec<Effective> {
    let mut out: Vec<Effective> = conf
        .entries
        .iter()
        .map(|(k, e)| Effective {
            key: k.clone(),
            value: if keys::is_secret(k) {
                "<hidden>".into()
            } else {
                e.value.clone()
            },
            source: Source::Set(e.origin.clone()),
        })
        .collect();
    for k in keys::KEYS {
        if k.replaced_by.is_some() || conf.is_set(k.name) {
            continue;
        }
        if let Some(d) = k.default {
            out.push(Effective {
                key: k.name.to_owned(),
                value: d.to_owned(),
                source: Source::Default,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// How many Cyrus options the table holds (for the test against `cyr_info`).
pub fn known_cyrus_option_count() -> usize {
    cyrus_options::OPTIONS.len()
}

/// The number of errors among `findings`.
pub fn errors(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_one_transposition_as_one_edit() {
        assert_eq!(distance("sync_host", "sync_hsot"), 1);
        assert_eq!(distance("sync_host", "sync_hots"), 1);
        assert_eq!(distance("admins", "admin"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
    }

    #[test]
    fn partitions_and_overrides_are_known_forms() {
        assert!(matches!(classify("partition-default"), Class::Partition));
        assert!(matches!(classify("backuppartition-b1"), Class::Partition));
        assert!(matches!(
            classify("tier1searchpartition-x"),
            Class::Partition
        ));
        assert!(matches!(
            classify("replica_sync_host"),
            Class::Option("sync_host")
        ));
        assert!(matches!(
            classify("sync_server_sasl_mech_list"),
            Class::Option("sasl_mech_list")
        ));
        assert!(matches!(classify("sasl_sql_engine"), Class::Sasl));
        assert!(matches!(classify("sasl_pwcheck_methd"), Class::Unknown));
        assert!(matches!(classify("partitionx-a"), Class::Unknown));
    }
}
