//! imapd.conf, read the way Cyrus 3.6 reads it (`lib/libconfig.c`
//! `config_read_file`), so that corvid drops into an existing Cyrus host and
//! reads the same file the Cyrus daemons beside it read.
//!
//! Syntax, exactly as Cyrus has it:
//! - one `key: value` per line; a line ending in `\` continues on the next
//!   line (the backslash is removed, nothing is trimmed across the join);
//! - leading whitespace is skipped; blank lines and lines whose first
//!   non-blank character is `#` are comments. There are no trailing
//!   comments: `key: a # b` has the value `a # b`;
//! - a key is an optional `@` then `[A-Za-z0-9_-]*`, lower-cased, followed
//!   *immediately* by `:`. The value is the rest of the line, trimmed; an
//!   empty value is an error;
//! - `@include: path` reads another file in place (the path is used as
//!   given, relative to the working directory as Cyrus does; a file included
//!   twice is an error, which also stops include loops);
//! - the same key twice is an error (Cyrus: "specified twice");
//! - `<ident>_<key>` overrides `<key>` for the process whose ident (the
//!   `CYRUS_SERVICE` name under master, else the program name) is `<ident>`,
//!   whatever their order. [`LoadOptions::ident`] sets the ident; every
//!   lookup tries `<ident>_<key>` first, then `<key>`. Cyrus resolves known
//!   options at load and unknown ones at lookup, with the same result.
//! - channel keys (`<channel>_sync_host`) fall back to the generic key
//!   ([`Config::channel_str`]), as `sync_get_config` does.
//!
//! Unknown keys are kept and readable (Cyrus keeps them too: one imapd.conf
//! serves every Cyrus service, so refusing a key corvid does not know would
//! refuse a working Cyrus host). The keys corvid reads are listed with their
//! Cyrus type and default in `keys.rs`; their values are checked at load, so
//! a broken value is reported with file, line and key before anything
//! starts. Values of other keys are checked when a typed accessor reads them,
//! and those errors name file, line and key too.
//!
//! What this module never does: it never prints a value of a key whose name
//! contains `password` or `secret` (in `Debug` and in errors), never writes
//! the file, and never reads the environment (`CYRUS_PREFIX` and the ident
//! are passed in by the caller through [`LoadOptions`]).

mod cyrus_options;
mod keys;
pub mod lint;
pub mod live;

pub use keys::Kind as KeyKind;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keys::Kind;

/// The keys corvid knows (type-checks at load and has Cyrus defaults for),
/// with their kind and default, in name order. Deprecated keys are listed
/// with the key that replaced them.
pub fn known_keys() -> impl Iterator<
    Item = (
        &'static str,
        KeyKind,
        Option<&'static str>,
        Option<&'static str>,
    ),
> {
    keys::KEYS
        .iter()
        .map(|k| (k.name, k.kind, k.default, k.replaced_by))
}

/// Where a value came from: the file and the line (the first physical line
/// of a continued line) it was set on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as it was named (the main path, or an `@include` value).
    pub file: Arc<Path>,
    /// 1-based line number.
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A config file the administrator has to fix, or could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file (or an `@include`d file) could not be opened or read: the environment's fault.
    #[error("can't read configuration file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`LoadOptions::file_bytes_max`]: the administrator's file.
    #[error("configuration file {} is larger than {bytes_max} bytes", file.display())]
    TooLarge { file: PathBuf, bytes_max: u64 },
    /// A line is not valid UTF-8: the administrator's file.
    #[error("{origin}: line is not valid UTF-8")]
    NotUtf8 { origin: Origin },
    /// A line is neither a comment nor `key: value` (Cyrus: "invalid option name"):
    /// the administrator's file.
    #[error("{origin}: invalid option name (expected `key: value`, keys are letters, digits, '-' and '_' followed directly by ':')")]
    InvalidKey { origin: Origin },
    /// `key:` with nothing after it (Cyrus: "empty option value"): the administrator's file.
    #[error("{origin}: empty value for option '{key}'")]
    EmptyValue { origin: Origin, key: String },
    /// An `@directive` other than `@include`: the administrator's file.
    #[error("{origin}: invalid directive '{directive}' (only @include is known)")]
    InvalidDirective { origin: Origin, directive: String },
    /// `@include` of a file already read: the administrator's file.
    #[error("{origin}: configuration file {} included twice", included.display())]
    IncludedTwice { origin: Origin, included: PathBuf },
    /// The same key set twice (Cyrus refuses this too): the administrator's file.
    #[error("{origin}: option '{key}' was specified twice (first at {first})")]
    Duplicate {
        origin: Origin,
        key: String,
        first: Origin,
    },
    /// A value that does not parse as the key's type: the administrator's file.
    #[error("{origin}: invalid value {shown} for option '{key}': expected {expected}")]
    InvalidValue {
        origin: Origin,
        key: String,
        /// The value quoted, or `<hidden>` for secrets.
        shown: String,
        expected: String,
    },
    /// A key that the caller needs is not set and has no default: the administrator's file.
    #[error("option '{key}' is not set in configuration file {}", file.display())]
    Missing { file: PathBuf, key: String },
    /// Our caller asked for a typed value of a key that has no such type: a corvid bug
    /// reported as an error so that a daemon does not die on it.
    #[error("option '{key}' has no default and no type known to corvid")]
    NoDefault { key: String },
}

/// How to load a config.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The process's ident: `<ident>_<key>` overrides `<key>`. Cyrus uses the
    /// `CYRUS_SERVICE` name under master, else the program's name.
    pub ident: Option<String>,
    /// Cyrus's `CYRUS_PREFIX`: prepended to every config path that opens
    /// with it; the path as given is used otherwise.
    pub prefix: Option<PathBuf>,
    /// The largest file (main or included) read; Cyrus has no limit, this
    /// guards against pointing corvid at a log file or a device.
    pub file_bytes_max: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ident: None,
            prefix: None,
            file_bytes_max: 16 << 20,
        }
    }
}

#[derive(Clone)]
struct Entry {
    value: String,
    origin: Origin,
}

/// A loaded imapd.conf.
///
/// Accessors resolve `<ident>_<key>`, then `<key>`, then (for a deprecated
/// key's replacement) the deprecated key, then the Cyrus default.
#[derive(Clone)]
pub struct Config {
    path: PathBuf,
    ident: Option<String>,
    entries: BTreeMap<String, Entry>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Shown<'a>(&'a str, &'a str);
        impl fmt::Debug for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if keys::is_secret(self.0) {
                    f.write_str("<redacted>")
                } else {
                    fmt::Debug::fmt(self.1, f)
                }
            }
        }
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("ident", &self.ident)
            .field(
                "entries",
                &self
                    .entries
                    .iter()
                    .map(|(k, e)| (k.as_str(), Shown(k, &e.value)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

/// The unit a bare trailing number of a duration is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl DurationUnit {
    fn letter(self) -> u8 {
        match self {
            DurationUnit::Seconds => b's',
            DurationUnit::Minutes => b'm',
            DurationUnit::Hours => b'h',
            DurationUnit::Days => b'd',
        }
    }
}

/// A `partition-NAME: path` (or `backuppartition-`, `metapartition-`, …) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// NAME, lower-cased as every key is.
    pub name: String,
    pub path: PathBuf,
}

/// The identities listed in `admins:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admins {
    ids: Vec<String>,
}

impl Admins {
    /// Parses an `admins:` value: identities separated by whitespace.
    pub fn parse(value: &str) -> Admins {
        Admins {
            ids: value.split_ascii_whitespace().map(str::to_owned).collect(),
        }
    }

    /// Whether `authcid` is an admin, with Cyrus's unix-auth semantics
    /// (`auth_unix.c mymemberof`): an exact, case-sensitive match, or the
    /// entry `anyone`. `group:NAME` entries need the system group database,
    /// which corvid does not read: they never match.
    pub fn contains(&self, authcid: &str) -> bool {
        self.ids.iter().any(|id| id == "anyone" || id == authcid)
    }

    /// The listed identities, in file order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

fn is_space(b: u8) -> bool {
    // C isspace in the "C" locale.
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Cyrus `config_parse_switch`: judged by the first character(s) only.
pub fn parse_switch(value: &str) -> Option<bool> {
    let b = value.as_bytes();
    match (b.first(), b.get(1)) {
        (Some(b'0' | b'n' | b'f'), _) | (Some(b'o'), Some(b'f')) => Some(false),
        (Some(b'1' | b'y' | b't'), _) | (Some(b'o'), Some(b'n')) => Some(true),
        _ => None,
    }
}

/// Cyrus `strtol(value, &end, 0)` with the whole value consumed: optional
/// sign, `0x` hex, leading-`0` octal, else decimal. Out of range clamps to
/// the i64 bounds, as strtol does (Cyrus accepts such a value).
pub fn parse_int(value: &str) -> Option<i64> {
    let (neg, rest) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    let (radix, digits) =
        if let Some(h) = rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
            (16, h)
        } else if rest.len() > 1 && rest.starts_with('0') {
            (8, &rest[1..])
        } else {
            (10, rest)
        };
    if digits.is_empty() || !digits.bytes().all(|c| (c as char).is_digit(radix)) {
        return None;
    }
    // Only a digit string too long for i128 fails here: it is out of range.
    let v = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    let v = if neg { -v } else { v };
    Some(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// Cyrus `config_parseduration`: seconds, or `None` if malformed.
/// `default_unit` applies to a trailing bare number (`"90"`, `"1h30"`).
pub fn parse_duration_s(value: &str, default_unit: DurationUnit) -> Option<i64> {
    let mut text = value.as_bytes().to_vec();
    if text.last().is_some_and(u8::is_ascii_digit) {
        text.push(default_unit.letter());
    }
    let (neg, body) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, &text[..]),
    };
    let mut total: i64 = 0;
    let mut accum: i64 = 0;
    let mut saw_digit = false;
    for &c in body {
        if c.is_ascii_digit() {
            accum = accum.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
            saw_digit = true;
        } else {
            if !saw_digit {
                return None;
            }
            saw_digit = false;
            let mult = match c {
                b'd' => 86_400,
                b'h' => 3_600,
                b'm' => 60,
                b's' => 1,
                _ => return None,
            };
            total = total.checked_add(accum.checked_mul(mult)?)?;
            accum = 0;
        }
    }
    Some(if neg { -total } else { total })
}

/// Checks `value` against `kind`; returns the value to store (ENUM values
/// are normalised on/off as Cyrus does) or what was expected.
fn check_kind(kind: Kind, value: &str) -> Result<String, String> {
    match kind {
        Kind::Str => Ok(value.to_owned()),
        Kind::Switch => parse_switch(value)
            .map(|_| value.to_owned())
            .ok_or_else(|| "a switch (yes/no, on/off, true/false, 1/0, t/f)".to_owned()),
        Kind::Int => parse_int(value)
            .map(|_| value.to_owned())
            .ok_or_else(|| "an integer (decimal, 0x hex or 0 octal)".to_owned()),
        Kind::Duration => parse_duration_s(value, DurationUnit::Seconds)
            .map(|_| value.to_owned())
            .ok_or_else(|| "a duration such as 90, 30s, 20m, 1h30m or 7d".to_owned()),
        Kind::Enum(names) => {
            let v = match value {
                "1" | "yes" | "t" | "true" => "on",
                "0" | "no" | "f" | "false" => "off",
                v => v,
            };
            if names.contains(&v) {
                Ok(v.to_owned())
            } else {
                Err(format!("one of {}", names.join(", ")))
            }
        }
        Kind::StringList(names) => {
            if names.contains(&value) {
                Ok(value.to_owned())
            } else {
                Err(format!("one of {}", names.join(", ")))
            }
        }
    }
}

fn shown(key: &str, value: &str) -> String {
    if keys::is_secret(key) {
        "<hidden>".to_owned()
    } else {
        format!("{value:?}")
    }
}

struct Loader<'o> {
    opts: &'o LoadOptions,
    entries: BTreeMap<String, Entry>,
    /// Files read so far, by the name they were given (as Cyrus keys them).
    seen_files: BTreeSet<PathBuf>,
}

impl Loader<'_> {
    fn read(&self, file: &Path) -> Result<Vec<u8>, ConfigError> {
        use std::io::Read;
        let mut open = None;
        if let Some(prefix) = &self.opts.prefix {
            let mut p = prefix.as_os_str().to_owned();
            p.push(file.as_os_str());
            open = std::fs::File::open(PathBuf::from(p)).ok();
        }
        let f = match open {
            Some(f) => f,
            None => std::fs::File::open(file).map_err(|source| ConfigError::Read {
                file: file.to_owned(),
                source,
            })?,
        };
        let mut buf = Vec::new();
        f.take(self.opts.file_bytes_max + 1)
            .read_to_end(&mut buf)
            .map_err(|source| ConfigError::Read {
                file: file.to_owned(),
                source,
            })?;
        if buf.len() as u64 > self.opts.file_bytes_max {
            return Err(ConfigError::TooLarge {
                file: file.to_owned(),
                bytes_max: self.opts.file_bytes_max,
            });
        }
        Ok(buf)
    }

    fn load_file(&mut self, file: &Path, included_at: Option<Origin>) -> Result<(), ConfigError> {
        let text = self.read(file)?;
        if !self.seen_files.insert(file.to_owned()) {
            // Cyrus checks after opening, so a missing file is reported as missing.
            let origin = included_at.expect("the main file is the first one read");
            return Err(ConfigError::IncludedTwice {
                origin,
                included: file.to_owned(),
            });
        }
        self.load_text(&text, Arc::from(file))
    }

    fn load_text(&mut self, text: &[u8], file: Arc<Path>) -> Result<(), ConfigError> {
        let mut lineno: u32 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            // Assemble one logical line from physical lines joined by a trailing '\'.
            let first_line = lineno + 1;
            let mut logical = Vec::new();
            loop {
                let (line, had_nl, next) = match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => (&rest[..i], true, &rest[i + 1..]),
                    None => (rest, false, &rest[rest.len()..]),
                };
                rest = next;
                lineno += 1;
                if had_nl && line.last() == Some(&b'\\') {
                    logical.extend_from_slice(&line[..line.len() - 1]);
                    if rest.is_empty() {
                        // A continuation with nothing after it: Cyrus's
                        // fgets loop ends with the line still pending and
                        // drops it without a word. So do we.
                        return Ok(());
                    }
                    continue;
                }
                logical.extend_from_slice(line);
                break;
            }
            let origin = Origin {
                file: file.clone(),
                line: first_line,
            };
            self.line(&logical, origin)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], origin: Origin) -> Result<(), ConfigError> {
        let start = line
            .iter()
            .position(|&b| !is_space(b))
            .unwrap_or(line.len());
        let line = &line[start..];
        if line.is_empty() || line[0] == b'#' {
            return Ok(());
        }
        let mut i = usize::from(line[0] == b'@');
        while i < line.len()
            && (line[i].is_ascii_alphanumeric() || line[i] == b'-' || line[i] == b'_')
        {
            i += 1;
        }
        // An empty key (`: value`) is not caught by Cyrus's parser, but
        // Cyrus dies on it later (cyr_info exits without a word): refuse it here.
        if line.get(i) != Some(&b':') || i == usize::from(line[0] == b'@') {
            return Err(ConfigError::InvalidKey { origin });
        }
        let key = String::from_utf8_lossy(&line[..i]).to_ascii_lowercase();
        let mut value = &line[i + 1..];
        while let Some((&b, r)) = value.split_first() {
            if !is_space(b) {
                break;
            }
            value = r;
        }
        while let Some((&b, r)) = value.split_last() {
            if !is_space(b) {
                break;
            }
            value = r;
        }
        if value.is_empty() {
            return Err(ConfigError::EmptyValue { origin, key });
        }
        let value = std::str::from_utf8(value).map_err(|_| ConfigError::NotUtf8 {
            origin: origin.clone(),
        })?;

        if let Some(directive) = key.strip_prefix('@') {
            if directive == "include" {
                return self.load_file(Path::new(value), Some(origin));
            }
            return Err(ConfigError::InvalidDirective {
                origin,
                directive: key,
            });
        }

        // Known keys are type-checked now, in their generic and their
        // `<ident>_` form, as Cyrus checks its known options at load.
        let known = keys::find(&key).or_else(|| {
            let ident = self.opts.ident.as_deref()?.to_ascii_lowercase();
            keys::find(key.strip_prefix(&ident)?.strip_prefix('_')?)
        });
        let value = match known {
            Some(k) => check_kind(k.kind, value).map_err(|expected| ConfigError::InvalidValue {
                origin: origin.clone(),
                key: key.clone(),
                shown: shown(&key, value),
                expected,
            })?,
            None => value.to_owned(),
        };
        if let Some(first) = self.entries.get(&key) {
            return Err(ConfigError::Duplicate {
                origin,
                key,
                first: first.origin.clone(),
            });
        }
        self.entries.insert(key, Entry { value, origin });
        Ok(())
    }
}

impl Config {
    /// Reads `path` (and what it `@include`s) with default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, &LoadOptions::default())
    }

    /// Reads `path` (and what it `@include`s).
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let mut loader = Loader {
            opts,
            entries: BTreeMap::new(),
            seen_files: BTreeSet::new(),
        };
        loader.load_file(path, None)?;
        Config::finish(path, opts, loader.entries)
    }

    /// Parses `text` as if it were the file `name` (`@include`s still read files).
    pub fn parse_str(
        text: &str,
        name: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<Config, ConfigError> {
        let name = name.as_ref();
        let mut loader = Loader {
            opts,
            entries: BTreeMap::new(),
            seen_files: BTreeSet::new(),
        };
        loader.seen_files.insert(name.to_owned());
        loader.load_text(text.as_bytes(), Arc::from(name))?;
        Config::finish(name, opts, loader.entries)
    }

    fn finish(
        path: &Path,
        opts: &LoadOptions,
        entries: BTreeMap<String, Entry>,
    ) -> Result<Config, ConfigError> {
        let mut conf = Config {
            path: path.to_owned(),
            ident: opts.ident.as_ref().map(|i| i.to_ascii_lowercase()),
            entries,
        };
        // `{configdirectory}` at the start of a known string option is
        // replaced at load, as Cyrus does (overflow keys are left alone).
        if let Some(dir) = conf.lookup("configdirectory").map(|e| e.value.clone()) {
            for (key, e) in conf.entries.iter_mut() {
                let known = keys::find(key).is_some_and(|k| k.kind == Kind::Str);
                if known
                    && key != "configdirectory"
                    // `get`: a value with a multi-byte character across
                    // byte 17 must not panic (found by the fuzz target
                    // `config`, corpus/regressions/config/).
                    && e.value
                        .get(..17)
                        .is_some_and(|p| p.eq_ignore_ascii_case("{configdirectory}"))
                {
                    e.value = format!("{dir}{}", &e.value[17..]);
                }
            }
        }
        // Cyrus refuses a defaultpartition that is not alphanumeric, and lower-cases it.
        let ident_key = conf.ident.as_ref().map(|i| format!("{i}_defaultpartition"));
        let key = match ident_key {
            Some(k) if conf.entries.contains_key(&k) => k,
            _ => "defaultpartition".to_owned(),
        };
        if let Some(e) = conf.entries.get_mut(&key) {
            if !e.value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(ConfigError::InvalidValue {
                    origin: e.origin.clone(),
                    key,
                    shown: shown("defaultpartition", &e.value),
                    expected: "a partition name of letters and digits".into(),
                });
            }
            e.value.make_ascii_lowercase();
        }
        Ok(conf)
    }

    /// The main file's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ident lookups use (lower-cased), if any.
    pub fn ident(&self) -> Option<&str> {
        self.ident.as_deref()
    }

    /// `<ident>_<key>`, then `<key>`.
    fn lookup_raw(&self, key: &str) -> Option<&Entry> {
        if let Some(ident) = &self.ident {
            if let Some(e) = self.entries.get(&format!("{ident}_{key}")) {
                return Some(e);
            }
        }
        self.entries.get(key)
    }

    /// As `lookup_raw`, then the deprecated key this one replaced.
    fn lookup(&self, key: &str) -> Option<&Entry> {
        self.lookup_raw(key)
            .or_else(|| keys::replaced(key).and_then(|old| self.lookup_raw(old.name)))
    }

    /// Where `key`'s value was set, if it was.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.lookup(&key.to_ascii_lowercase()).map(|e| &e.origin)
    }

    /// Whether `key` is set in the file (defaults do not count).
    pub fn is_set(&self, key: &str) -> bool {
        self.lookup(&key.to_ascii_lowercase()).is_some()
    }

    /// `key`'s value as text: as set, else the Cyrus default, else `None`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        match self.lookup(&key) {
            Some(e) => Some(&e.value),
            None => keys::find(&key).and_then(|k| k.default),
        }
    }

    /// `key`'s value; an error naming the key and the file if it is unset
    /// and has no default.
    pub fn require_str(&self, key: &str) -> Result<&str, ConfigError> {
        self.get_str(key).ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing {
            file: self.path.clone(),
            key: key.to_ascii_lowercase(),
        }
    }

    /// Parses `key`'s value (or default) with `parse`; errors name where it was set.
    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        let key = key.to_ascii_lowercase();
        match self.lookup(&key) {
            Some(e) => parse(&e.value)
                .map(Some)
                .ok_or_else(|| ConfigError::InvalidValue {
                    origin: e.origin.clone(),
                    key: key.clone(),
                    shown: shown(&key, &e.value),
                    expected: expected.to_owned(),
                }),
            None => Ok(keys::find(&key).and_then(|k| k.default).and_then(parse)),
        }
    }

    /// `key` as a Cyrus switch (yes/no/on/off/true/false/1/0/t/f).
    pub fn get_bool(&self, key: &str) -> Result<bool, ConfigError> {
        self.typed(
            key,
            "a switch (yes/no, on/off, true/false, 1/0, t/f)",
            parse_switch,
        )?
        .ok_or_else(|| self.no_default(key))
    }

    /// `key` as a switch, `default` if unset.
    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self
            .typed(
                key,
                "a switch (yes/no, on/off, true/false, 1/0, t/f)",
                parse_switch,
            )?
            .unwrap_or(default))
    }

    /// `key` as a Cyrus integer (`strtol` base 0).
    pub fn get_int(&self, key: &str) -> Result<i64, ConfigError> {
        self.typed(key, "an integer", parse_int)?
            .ok_or_else(|| self.no_default(key))
    }

    /// `key` as a Cyrus duration, in seconds; a bare trailing number is in `unit`.
    pub fn get_duration_s(&self, key: &str, unit: DurationUnit) -> Result<i64, ConfigError> {
        self.typed(key, "a duration such as 90, 30s, 20m, 1h30m or 7d", |v| {
            parse_duration_s(v, unit)
        })?
        .ok_or_else(|| self.no_default(key))
    }

    fn no_default(&self, key: &str) -> ConfigError {
        match keys::find(&key.to_ascii_lowercase()) {
            Some(_) => self.missing(key),
            None => ConfigError::NoDefault {
                key: key.to_ascii_lowercase(),
            },
        }
    }

    /// The channel form of `key` (`sync_get_config`): `<channel>_<key>` if
    /// `channel` is given and that key is set, else `key` itself.
    pub fn channel_str(&self, channel: Option<&str>, key: &str) -> Option<&str> {
        self.channel_key(channel, key)
            .and_then(|k| self.get_str(&k))
            .or_else(|| self.get_str(key))
    }

    /// The key to read for `key` on `channel`, if the channel form is set.
    fn channel_key(&self, channel: Option<&str>, key: &str) -> Option<String> {
        let k = format!("{}_{}", channel?, key).to_ascii_lowercase();
        self.lookup(&k).is_some().then_some(k)
    }

    /// `channel_str`, as a switch.
    pub fn channel_bool(&self, channel: Option<&str>, key: &str) -> Result<bool, ConfigError> {
        match self.channel_key(channel, key) {
            Some(k) => self.get_bool(&k),
            None => self.get_bool(key),
        }
    }

    /// `channel_str`, as an integer.
    pub fn channel_int(&self, channel: Option<&str>, key: &str) -> Result<i64, ConfigError> {
        match self.channel_key(channel, key) {
            Some(k) => self.get_int(&k),
            None => self.get_int(key),
        }
    }

    /// `channel_str`, as a duration in seconds.
    pub fn channel_duration_s(
        &self,
        channel: Option<&str>,
        key: &str,
        unit: DurationUnit,
    ) -> Result<i64, ConfigError> {
        match self.channel_key(channel, key) {
            Some(k) => self.get_duration_s(&k, unit),
            None => self.get_duration_s(key, unit),
        }
    }

    /// `configdirectory`, which Cyrus requires and which has no default.
    pub fn configdirectory(&self) -> Result<&Path, ConfigError> {
        self.require_str("configdirectory").map(Path::new)
    }

    /// `servername`; `None` means "the host name", which the caller looks up.
    pub fn servername(&self) -> Option<&str> {
        self.get_str("servername")
    }

    /// The `admins:` list.
    pub fn admins(&self) -> Admins {
        Admins::parse(self.get_str("admins").unwrap_or(""))
    }

    /// Every `<prefix>-NAME: path` entry (`prefix` is `partition`,
    /// `backuppartition`, `metapartition`, `archivepartition`…), sorted by
    /// name, with `<ident>_` forms applied.
    pub fn partitions_with_prefix(&self, prefix: &str) -> Vec<Partition> {
        let prefix = format!("{}-", prefix.to_ascii_lowercase());
        let ident = self.ident.as_deref().map(|i| format!("{i}_{prefix}"));
        let mut names = BTreeSet::new();
        for key in self.entries.keys() {
            if let Some(n) = key.strip_prefix(&prefix) {
                names.insert(n.to_owned());
            } else if let Some(n) = ident.as_deref().and_then(|p| key.strip_prefix(p)) {
                names.insert(n.to_owned());
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let e = self.lookup(&format!("{prefix}{name}"))?;
                Some(Partition {
                    path: PathBuf::from(&e.value),
                    name,
                })
            })
            .collect()
    }

    /// The mail partitions (`partition-NAME`), sorted by name.
    pub fn partitions(&self) -> Vec<Partition> {
        self.partitions_with_prefix("partition")
    }

    /// The backup partitions (`backuppartition-NAME`), sorted by name.
    pub fn backup_partitions(&self) -> Vec<Partition> {
        self.partitions_with_prefix("backuppartition")
    }

    /// The path of mail partition `name`.
    pub fn partition_path(&self, name: &str) -> Option<&Path> {
        self.get_str(&format!("partition-{name}")).map(Path::new)
    }

    /// `defaultpartition` (lower-cased at load, as Cyrus does), if set.
    pub fn default_partition(&self) -> Option<&str> {
        self.get_str("defaultpartition")
    }

    /// `sync_log_channels` as channel names; `None` is the default channel
    /// (written `""` in the file). Unset means only the default channel.
    pub fn sync_log_channels(&self) -> Vec<Option<String>> {
        match self.get_str("sync_log_channels") {
            None => vec![None],
            Some(v) => v
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    if c == "\"\"" {
                        None
                    } else {
                        Some(c.to_owned())
                    }
                })
                .collect(),
        }
    }

    /// Every key set in the file(s), lower-cased, in sorted order, with
    /// where it was set. Values are not included; read them with `get_str`.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &Origin)> {
        self.entries.iter().map(|(k, e)| (k.as_str(), &e.origin))
    }
}
