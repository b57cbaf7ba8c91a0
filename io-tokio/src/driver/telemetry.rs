//! Per-user protocol telemetry, as Cyrus's `telemetry_log()`: when the
//! directory `configdirectory/log/USER/` exists, a connection that
//! authenticates as `USER` writes its protocol transcript there.
//!
//! What Cyrus 3.6 does, and so what we do (read from its `telemetry.c` and
//! `prot.c`; the files look the same to a script that reads Cyrus's):
//! - the file is `log/USER/IDENT-PID` (IDENT is the service name, e.g.
//!   `syncserver` under master(8)), opened for appending; Cyrus's threaded `mupdate` names each session's file
//!   `IDENT-SECONDS.MICROSECONDS` instead ([`Telemetry::per_session`]);
//! - it starts with `---------- USER <ctime>` and an empty line (ctime
//!   ends in its own newline);
//! - every chunk read from the peer is written as `<SECONDS<` followed by
//!   the bytes, every chunk sent as `>SECONDS>` and the bytes, SECONDS
//!   being the Unix time; no separator is added, so the file reads as the
//!   conversation with markers where each read or write began;
//! - the bytes are the plaintext the protocol machine sees: after TLS is
//!   removed and COMPRESS inflated, before our output is deflated and
//!   encrypted;
//! - logging starts when the login succeeds, so the credentials themselves
//!   are never in the file.
//!
//! Where we differ, and why:
//! - Cyrus forks one process per connection, so `IDENT-PID` names one
//!   session (or, for a reused process, several one after the other). A
//!   corvid daemon serves connections concurrently in one process, so the
//!   first transcript of a process keeps Cyrus's name and the N-th one
//!   (N ≥ 2) is `IDENT-PID.N`; sessions never interleave in one file.
//! - Files are created `0600`. Cyrus asks `open(2)` for `0644`, but its
//!   daemons run under master(8)'s restrictive umask and the files seen
//!   on a real 3.6.1 server are `0600`; a corvid daemon may run with any
//!   umask (standalone, systemd), and a transcript holds a user's mail, so
//!   the mode is set explicitly rather than left to the umask.
//! - The header's time is UTC (Cyrus's `ctime` uses the local zone).
//! - A user name that could leave `log/` (empty, `.`, `..`, containing `/`
//!   or NUL) never gets a transcript; Cyrus would use it as it is.
//! - Writes are plain blocking `write(2)`s on the connection's task, as
//!   Cyrus's are; telemetry is a debugging aid an admin turns on for one
//!   user. A failed open or write is logged once, turns this connection's
//!   transcript off, and never affects the session.
//!
//! It never buffers: each chunk is written when the machine sees it, so
//! memory does not grow with the transcript.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

/// Where transcripts go and what they are called: built once per daemon
/// from `configdirectory`, handed to [`super::Driver::telemetry`].
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// `configdirectory/log`.
    dir: PathBuf,
    /// The service name in file names (`syncserver`, `mupdate`).
    ident: String,
    /// Name files by the session's start time, not the process id.
    per_session: bool,
}

/// How many transcripts this process has opened (file names after the
/// first get `.N`).
static OPENED: AtomicU64 = AtomicU64::new(0);

impl Telemetry {
    /// Transcripts under `configdirectory/log/USER/`, named `ident-PID`.
    pub fn new(configdirectory: &Path, ident: &str) -> Telemetry {
        Telemetry {
            dir: configdirectory.join("log"),
            ident: ident.to_owned(),
            per_session: false,
        }
    }

    /// Names each transcript `IDENT-SECONDS.MICROSECONDS` (the login's
    /// time), as Cyrus's threaded `mupdate` does (`telemetry_log()` with
    /// `usetimestamp`), instead of `IDENT-PID`.
    pub fn per_session(mut self) -> Telemetry {
        self.per_session = true;
        self
    }

    /// The directory a transcript of `user` would go to, if `user` may
    /// name one.
    pub fn user_dir(&self, user: &str) -> Option<PathBuf> {
        let safe = !user.is_empty()
            && user != "."
            && user != ".."
            && !user.contains('/')
            && !user.contains('\0');
        safe.then(|| self.dir.join(user))
    }

    /// Opens `user`'s transcript if their directory exists; `None` (the
    /// usual case) otherwise, or if it cannot be opened (logged).
    pub(crate) fn open(&self, user: &str) -> Option<Transcript> {
        let dir = self.user_dir(user)?;
        if !dir.is_dir() {
            return None;
        }
        let name = if self.per_session {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-{}.{:06}", self.ident, t.as_secs(), t.subsec_micros())
        } else {
            let n = OPENED.fetch_add(1, Ordering::Relaxed) + 1;
            let pid = std::process::id();
            match n {
                1 => format!("{}-{pid}", self.ident),
                n => format!("{}-{pid}.{n}", self.ident),
            }
        };
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path);
        let mut transcript = match file {
            Ok(file) => Transcript { file, path },
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot open telemetry log");
                return None;
            }
        };
        let header = format!("---------- {user} {}\n\n", ctime_utc(unix_seconds()));
        if let Err(e) = transcript.file.write_all(header.as_bytes()) {
            warn!(path = %transcript.path.display(), error = %e, "cannot write telemetry log");
            return None;
        }
        info!(path = %transcript.path.display(), "protocol telemetry on");
        Some(transcript)
    }
}

/// One connection's open transcript.
#[derive(Debug)]
pub(crate) struct Transcript {
    file: File,
    path: PathBuf,
}

/// Which way a chunk went.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// Read from the peer: `<SECONDS<`.
    In,
    /// Sent to the peer: `>SECONDS>`.
    Out,
}

impl Transcript {
    /// Appends one chunk. `false` if the write failed (logged): the
    /// caller drops the transcript.
    pub(crate) fn record(&mut self, direction: Direction, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mark = match direction {
            Direction::In => '<',
            Direction::Out => '>',
        };
        let stamp = format!("{mark}{}{mark}", unix_seconds());
        let written = self
            .file
            .write_all(stamp.as_bytes())
            .and_then(|()| self.file.write_all(bytes));
        match written {
            Ok(()) => true,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e,
                    "telemetry log write failed; telemetry off for this connection");
                false
            }
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` as C's `ctime()` spells it, in UTC, without its newline:
/// `Sun Nov 22 06:09:44 2026`.
pub fn ctime_utc(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        y
    )
}

/// Year, month (1-12), day (1-31) of `days` since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctime_matches_c() {
        assert_eq!(ctime_utc(0), "Thu Jan  1 00:00:00 1970");
        // date -u -d @1795327784 '+%a %b %e %T %Y'
        assert_eq!(ctime_utc(1_795_327_784), "Sun Nov 22 06:09:44 2026");
        assert_eq!(ctime_utc(951_782_400), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn names_that_leave_the_log_directory_get_no_transcript() {
        let t = Telemetry::new(Path::new("/conf"), "syncserver");
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert_eq!(t.user_dir(bad), None, "{bad:?}");
        }
        assert_eq!(
            t.user_dir("alice@example.com"),
            Some(PathBuf::from("/conf/log/alice@example.com"))
        );
    }

    #[test]
    fn a_transcript_appears_only_when_the_user_directory_exists() {
        let conf = tempfile::tempdir().unwrap();
        let t = Telemetry::new(conf.path(), "mupdate");
        assert!(t.open("alice").is_none());
        std::fs::create_dir_all(conf.path().join("log/alice")).unwrap();
        let mut tr = t.open("alice").unwrap();
        assert!(tr.record(Direction::In, b"NOOP\r\n"));
        assert!(tr.record(Direction::Out, b"OK Noop\r\n"));
        let text = std::fs::read_to_string(&tr.path).unwrap();
        let name = tr.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with(&format!("mupdate-{}", std::process::id())));
        assert!(text.starts_with("---------- alice "), "{text:?}");
        let body = text.split_once("\n\n").unwrap().1;
        let (a, rest) = body.split_once("<NOOP\r\n").unwrap();
        assert!(a.starts_with('<') && a[1..].parse::<u64>().is_ok(), "{a:?}");
        assert!(
            rest.starts_with('>') && rest.ends_with(">OK Noop\r\n"),
            "{rest:?}"
        );

        let t = t.per_session();
        let tr = t.open("alice").unwrap();
        let name = tr.path.file_name().unwrap().to_str().unwrap().to_owned();
        let (secs, micros) = name
            .strip_prefix("mupdate-")
            .unwrap()
            .split_once('.')
            .unwrap();
        assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{name}");
    }
}
