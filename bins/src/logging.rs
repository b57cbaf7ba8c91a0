//! Where a tool's log lines go, and how many: the one place every tool sets
//! up `tracing`.
//!
//! - Level: `-v`/`-l` as the man pages have them (sync_client(8): `-v`
//!   verbose, twice for protocol traffic; `-l` verbose logging), from the
//!   tool's default level; `CORVID_LOG` (an `EnvFilter` directive such as
//!   `debug` or `io_tokio=trace`) overrides both.
//! - Target: syslog, as Cyrus daemons log, when running under Cyrus
//!   master(8) (whose children's stderr goes nowhere) or when
//!   `CORVID_LOG_TARGET=syslog`; stderr otherwise (or with
//!   `CORVID_LOG_TARGET=stderr`). Syslog lines go to `/dev/log` as
//!   `<PRI>IDENT[PID]: message`, the facility from imapd.conf's
//!   `syslog_facility` (Cyrus's default `LOCAL6`), the ident the service
//!   name master passes (`CYRUS_SERVICE`, e.g. `syncserver`) or else the
//!   tool's name, prefixed `syslog_prefix/` when that is set, as Cyrus
//!   does. If `/dev/log` cannot be reached, lines go to stderr and one
//!   warning says so.
//!
//! - Live level: imapd.conf's `debug: yes` (Cyrus: "allow syslog() to
//!   pass LOG_DEBUG messages") raises the level to `debug`; [`apply_config`]
//!   re-applies it from a re-read config (SIGHUP), at once, without a
//!   restart. `CORVID_LOG`, when set, stays in force.
//!
//! It never logs by itself, never opens files other than the syslog socket,
//! and never decides what is logged: the tools and libraries do.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use io_tokio::config::Config;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// What a tool asks for.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The program name: syslog's ident.
    pub ident: String,
    /// The level with no flag: `"info"` for daemons, `"warn"` for clients.
    pub default_level: &'static str,
    /// How many `-v` were given.
    pub verbose: u8,
    /// `-l` (verbose logging).
    pub verbose_logging: bool,
    /// The facility name (`syslog_facility`), if set.
    pub facility: Option<String>,
    /// `syslog_prefix`, if set.
    pub prefix: Option<String>,
    /// The syslog socket. `/dev/log`.
    pub syslog_path: PathBuf,
    /// Send to syslog rather than stderr.
    pub syslog: bool,
}

impl Setup {
    /// The setup for tool `ident` with `default_level`, target chosen as
    /// the module doc says, facility and prefix read from `conf` if given.
    pub fn new(ident: &str, default_level: &'static str, conf: Option<&Config>) -> Setup {
        let syslog = match std::env::var("CORVID_LOG_TARGET").as_deref() {
            Ok("syslog") => true,
            Ok("stderr") => false,
            _ => io_tokio::listen::master::is_under_master(),
        };
        // Under master(8), Cyrus logs as the SERVICES name master passes in
        // CYRUS_SERVICE (`syncserver`); elsewhere as the program.
        let ident = std::env::var("CYRUS_SERVICE")
            .ok()
            .filter(|s| !s.is_empty() && io_tokio::listen::master::is_under_master())
            .unwrap_or_else(|| ident.to_owned());
        Setup {
            ident,
            default_level,
            verbose: 0,
            verbose_logging: false,
            facility: conf.and_then(|c| c.get_str("syslog_facility").map(str::to_owned)),
            prefix: conf.and_then(|c| c.get_str("syslog_prefix").map(str::to_owned)),
            syslog_path: std::env::var_os("CORVID_SYSLOG_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/log")),
            syslog,
        }
    }

    /// With `-v` given `n` times and `-l` as given.
    pub fn verbosity(mut self, verbose: u8, verbose_logging: bool) -> Setup {
        self.verbose = verbose;
        self.verbose_logging = verbose_logging;
        self
    }

    /// The level directive the flags give: the default; one step more with
    /// `-v` or `-l`; `debug` with `-v -v` (protocol traffic), `trace` with
    /// three.
    pub fn level(&self) -> &'static str {
        const ORDER: &[&str] = &["error", "warn", "info", "debug", "trace"];
        let base = ORDER
            .iter()
            .position(|l| *l == self.default_level)
            .unwrap_or(2);
        let steps = usize::from(self.verbose).max(usize::from(self.verbose_logging));
        ORDER[(base + steps).min(ORDER.len() - 1)]
    }

    /// The syslog ident: `prefix/ident` or `ident`.
    pub fn syslog_ident(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{}", self.ident),
            None => self.ident.clone(),
        }
    }
}

/// Sets the level filter of the installed subscriber (a directive such as
/// `info`).
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What [`init`] installed: the ident, the flags' level, and how to change
/// the level later (`None` when `CORVID_LOG` rules).
struct Installed {
    ident: String,
    level: &'static str,
    set_level: Option<SetLevel>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The ident the process logs as (the service name under master(8), else
/// the tool's name), once [`init`] ran.
pub fn ident() -> Option<&'static str> {
    INSTALLED.get().map(|i| i.ident.as_str())
}

/// The level `conf` asks for on top of the flags': `debug` when its
/// `debug` switch is on (and the flags ask for less), else the flags'.
fn level_for(flags: &'static str, conf: &Config) -> &'static str {
    const ORDER: &[&str] = &["error", "warn", "info", "debug", "trace"];
    let rank = |l: &str| ORDER.iter().position(|x| *x == l).unwrap_or(2);
    if conf.get_bool("debug").unwrap_or(false) && rank(flags) < rank("debug") {
        "debug"
    } else {
        flags
    }
}

/// Applies what of the logging setup `conf` controls (today: the `debug`
/// switch) to the running process, at once. Returns the level now in
/// force, or `None` when nothing could change (`CORVID_LOG` is set, or no
/// subscriber of ours is installed).
pub fn apply_config(conf: &Config) -> Option<&'static str> {
    let installed = INSTALLED.get()?;
    let set = installed.set_level.as_ref()?;
    let level = level_for(installed.level, conf);
    match set(level) {
        Ok(()) => Some(level),
        Err(e) => {
            tracing::warn!(error = %e, "log level not changed");
            None
        }
    }
}

/// Installs the subscriber. A second call (a tool that calls a tool) keeps
/// the first. Returns a warning to print if syslog was asked for but not
/// reachable, or the facility name was not one syslog knows.
pub fn init(setup: &Setup) -> Option<String> {
    let from_env = tracing_subscriber::EnvFilter::try_from_env("CORVID_LOG").ok();
    let env_rules = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(setup.level()));
    let record = |set_level: Option<SetLevel>| {
        let _ = INSTALLED.set(Installed {
            ident: setup.ident.clone(),
            level: setup.level(),
            set_level: if env_rules { None } else { set_level },
        });
    };
    let mut warning = None;
    if setup.syslog {
        let facility = match setup.facility.as_deref() {
            None => facility_code("local6"),
            Some(name) => facility_code(name).or_else(|| {
                warning = Some(format!(
                    "syslog_facility {name:?} is not a syslog facility; using LOCAL6"
                ));
                facility_code("local6")
            }),
        }
        .expect("local6 is a facility");
        match Syslog::connect(&setup.syslog_path, &setup.syslog_ident(), facility) {
            Ok(w) => {
                let builder = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(false)
                    .without_time()
                    .with_target(false)
                    .with_level(false)
                    .with_writer(w)
                    // Last: the reload handle is typed by all of the above.
                    .with_filter_reloading();
                let handle = builder.reload_handle();
                if builder.try_init().is_ok() {
                    record(Some(Box::new(move |l: &str| {
                        handle
                            .reload(tracing_subscriber::EnvFilter::new(l))
                            .map_err(|e| e.to_string())
                    })));
                }
                if let Some(w) = &warning {
                    tracing::warn!("{w}");
                }
                return warning;
            }
            Err(e) => {
                warning = Some(format!(
                    "cannot log to syslog at {}: {e}; logging to stderr",
                    setup.syslog_path.display()
                ))
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person watching; a log file gets plain text.
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_writer(io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() {
        record(Some(Box::new(move |l: &str| {
            handle
                .reload(tracing_subscriber::EnvFilter::new(l))
                .map_err(|e| e.to_string())
        })));
    }
    warning
}

/// The syslog facility number for a name (`local6`, `LOG_MAIL`, `daemon`…).
pub fn facility_code(name: &str) -> Option<u8> {
    let n = name.to_ascii_lowercase();
    let n = n.strip_prefix("log_").unwrap_or(&n);
    Some(match n {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        l if l.len() == 6 && l.starts_with("local") => {
            let d = l.as_bytes()[5];
            if !(b'0'..=b'7').contains(&d) {
                return None;
            }
            16 + (d - b'0')
        }
        _ => return None,
    })
}

/// Syslog severity of a tracing level.
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A `MakeWriter` that sends each event as one datagram to a syslog socket.
#[derive(Clone)]
pub struct Syslog {
    socket: Arc<UnixDatagram>,
    /// `IDENT[PID]: `
    tag: Arc<str>,
    facility: u8,
}

impl Syslog {
    /// Connects to the syslog socket at `path`.
    pub fn connect(path: &Path, ident: &str, facility: u8) -> io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Syslog {
            socket: Arc::new(socket),
            tag: format!("{ident}[{}]: ", std::process::id()).into(),
            facility,
        })
    }
}

/// One event's bytes, sent when the formatter drops it.
pub struct SyslogLine {
    owner: Syslog,
    pri: u8,
    buf: Vec<u8>,
}

/// syslogd truncates somewhere past 1 KiB anyway; a bounded line keeps a
/// huge event from making a huge datagram.
const LINE_BYTES_MAX: usize = 8 << 10;

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = LINE_BYTES_MAX.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&b[..b.len().min(room)]);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last().is_some_and(|c| *c == b'\n') {
            self.buf.pop();
        }
        if self.buf.is_empty() {
            return;
        }
        let mut msg = format!("<{}>{}", self.pri, self.owner.tag).into_bytes();
        msg.extend_from_slice(&self.buf);
        // A full or gone syslogd loses the line; logging must never block
        // or fail the daemon.
        let _ = self.owner.socket.send(&msg);
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        self.line(6)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        self.line(severity(meta.level()))
    }
}

impl Syslog {
    fn line(&self, severity: u8) -> SyslogLine {
        SyslogLine {
            owner: self.clone(),
            pri: self.facility * 8 + severity,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_raise_the_level_from_the_tools_default() {
        let s = |d, v, l| {
            Setup {
                ident: "x".into(),
                default_level: d,
                verbose: 0,
                verbose_logging: false,
                facility: None,
                prefix: None,
                syslog_path: "/dev/log".into(),
                syslog: false,
            }
            .verbosity(v, l)
            .level()
        };
        assert_eq!(s("warn", 0, false), "warn");
        assert_eq!(s("warn", 0, true), "info");
        assert_eq!(s("warn", 1, false), "info");
        assert_eq!(s("warn", 2, false), "debug");
        assert_eq!(s("info", 0, false), "info");
        assert_eq!(s("info", 5, true), "trace");
    }

    #[test]
    fn the_debug_switch_raises_the_level_to_debug_never_lowers_it() {
        let conf = |t: &str| {
            Config::parse_str(t, "/x.conf", &io_tokio::config::LoadOptions::default()).unwrap()
        };
        assert_eq!(level_for("info", &conf("debug: yes\n")), "debug");
        assert_eq!(level_for("info", &conf("debug: no\n")), "info");
        assert_eq!(level_for("info", &conf("")), "info");
        assert_eq!(level_for("trace", &conf("debug: 1\n")), "trace");
    }

    #[test]
    fn facility_names_as_syslog_knows_them() {
        assert_eq!(facility_code("local6"), Some(22));
        assert_eq!(facility_code("LOCAL0"), Some(16));
        assert_eq!(facility_code("LOG_MAIL"), Some(2));
        assert_eq!(facility_code("daemon"), Some(3));
        assert_eq!(facility_code("local8"), None);
        assert_eq!(facility_code("nonsense"), None);
    }

    #[test]
    fn each_event_is_one_datagram_with_priority_ident_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let w =
            Syslog::connect(&path, "cyrus/sync_server", facility_code("local6").unwrap()).unwrap();
        {
            let mut line = w.line(severity(&Level::WARN));
            line.write_all(b"login failed for ").unwrap();
            line.write_all(b"alice\n").unwrap();
        }
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        // LOCAL6 (22) * 8 + warning (4) = 180.
        assert_eq!(
            got,
            format!(
                "<180>cyrus/sync_server[{}]: login failed for alice",
                std::process::id()
            )
        );
        // A huge event is cut, not sent whole.
        {
            let mut line = w.line(6);
            line.write_all(&vec![b'a'; 100_000]).unwrap();
        }
        let mut big = vec![0u8; 200_000];
        let n = server.recv(&mut big).unwrap();
        assert!(n <= LINE_BYTES_MAX + 64, "{n}");
    }
}
