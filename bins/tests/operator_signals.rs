//! Signals, on the real binary: `corvid sync_server --listen` is started,
//! clients connect, and the test sends SIGTERM / SIGHUP with kill(1).
//!
//! - SIGTERM: a command whose first bytes arrived before the signal is still
//!   read whole and answered, then the connection is closed; an idle
//!   connection is closed; the process exits 0.
//! - SIGHUP (standalone, not under master): the process keeps serving and
//!   re-reads imapd.conf; a broken file is reported and the running
//!   configuration kept.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn corvid() -> &'static str {
    env!("CARGO_BIN_EXE_corvid")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects, retrying while the daemon starts (bounded: 30 s).
fn connect(port: u16) -> TcpStream {
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("corvid sync_server never listened on {port}");
}

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(dir: &Path) -> String {
    format!(
        "configdirectory: {d}/conf\npartition-default: {d}/spool\nadmins: repl\nsasl_mech_list: PLAIN\nallowplaintext: yes\ncorvid_passwd_file: {d}/passwd\n",
        d = dir.display()
    )
}

fn start() -> Daemon {
    start_with_log(Some("info"))
}

/// Starts the daemon with `CORVID_LOG` set to `level`, or unset (then the
/// level follows the flags and imapd.conf's `debug`).
fn start_with_log(level: Option<&str>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let conf = dir.path().join("imapd.conf");
    std::fs::write(&conf, config_text(dir.path())).unwrap();
    passwd(&dir.path().join("passwd"), "repl", "secret");
    let port = free_port();
    let log = dir.path().join("log");
    let mut cmd = Command::new(corvid());
    cmd.args(["sync_server", "-C"])
        .arg(&conf)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CORVID_LOG_TARGET", "stderr")
        .env_remove("CORVID_LOG")
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(level) = level {
        cmd.env("CORVID_LOG", level);
    }
    let child = cmd.spawn().unwrap();
    Daemon {
        child,
        port,
        log,
        conf,
        _dir: dir,
    }
}

/// Reads the csync banner up to its `* OK` line.
fn banner(r: &mut BufReader<TcpStream>) {
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed during banner");
        if line.starts_with("* OK") {
            return;
        }
    }
}

fn signal(d: &Daemon, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &d.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Waits (bounded: 30 s) until the daemon's log holds `needle`.
fn wait_log(d: &Daemon, needle: &str, occurrences: usize) {
    for _ in 0..300 {
        let text = std::fs::read_to_string(&d.log).unwrap_or_default();
        if text.matches(needle).count() >= occurrences {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no {needle:?} in the log:\n{}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
}

#[test]
fn sigterm_finishes_the_command_in_flight_then_exits_0() {
    let mut d = start();
    let mut busy = BufReader::new(connect(d.port));
    banner(&mut busy);
    let mut idle = BufReader::new(connect(d.port));
    banner(&mut idle);
    // Half a command is in flight when the signal comes.
    busy.get_mut().write_all(b"NOO").unwrap();
    busy.get_mut().flush().unwrap();
    signal(&d, "-TERM");
    wait_log(&d, "no longer accepting", 1);
    // Longer than the drain's idle time: a connection cut mid-command would
    // have been cut by now.
    std::thread::sleep(Duration::from_millis(1500));
    busy.get_mut().write_all(b"P\r\n").unwrap();
    let mut answer = String::new();
    busy.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("OK "), "{answer:?}");
    // Then the server ends the session (no EXIT was sent).
    let mut rest = Vec::new();
    busy.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The idle connection was closed too.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Both ended by the drain, not cut when the shutdown grace ran out.
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(!log.contains("aborting connections"), "{log}");
    // No new connection is taken after the signal.
    assert!(TcpStream::connect(("127.0.0.1", d.port)).is_err());
}

#[test]
fn sighup_rereads_the_config_and_keeps_serving() {
    let d = start();
    let mut c = BufReader::new(connect(d.port));
    banner(&mut c);
    signal(&d, "-HUP");
    wait_log(&d, "configuration re-read", 1);
    // A broken file is reported; the daemon keeps the running one.
    let mut text = std::fs::read_to_string(&d.conf).unwrap();
    text.push_str("sync_log: perhaps\n");
    std::fs::write(&d.conf, &text).unwrap();
    signal(&d, "-HUP");
    wait_log(&d, "keeping the running one", 1);
    // Still serving, on the old connection and on a new one.
    c.get_mut().write_all(b"NOOP\r\n").unwrap();
    let mut answer = String::new();
    c.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("OK "), "{answer:?}");
    let mut n = BufReader::new(connect(d.port));
    banner(&mut n);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains(":7: invalid value"), "{log}");
}

/// `GET /metrics` on `port`: the body, or `None` if nothing listens.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn sighup_applies_live_values_without_a_restart() {
    let d = start_with_log(None);
    // Listening means the SIGHUP handler is in place.
    banner(&mut BufReader::new(connect(d.port)));
    let (m1, m2) = (free_port(), free_port());
    let base = config_text(d._dir.path());
    std::fs::write(
        &d.conf,
        format!("{base}corvid_metrics_listen: 127.0.0.1:{m1}\nsync_timeout: 1h\n"),
    )
    .unwrap();
    signal(&d, "-HUP");
    wait_log(&d, "configuration applied", 1);
    // The metrics listener started at the reload, without a restart.
    let body = scrape(m1).expect("metrics on the first address");
    assert!(body.contains("corvid_connections_total"), "{body}");

    // Now: a new metrics address, debug logging, a 3 s idle timeout, and
    // a key only a restart applies.
    std::fs::write(
        &d.conf,
        format!(
            "{base}corvid_metrics_listen: 127.0.0.1:{m2}\nsync_timeout: 3\ndebug: yes\nservername: renamed.test\n"
        ),
    )
    .unwrap();
    signal(&d, "-HUP");
    wait_log(&d, "configuration applied", 2);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("log level in force"), "{log}");
    assert!(log.contains("servername"), "{log}");
    assert!(log.contains("applies only after a restart"), "{log}");
    // The listener moved.
    assert!(scrape(m2).is_some_and(|b| b.contains("corvid_connections_total")));
    assert!(
        scrape(m1).is_none(),
        "the old metrics address still answers"
    );

    // A new connection gets the new idle timeout: the server ends it
    // (under the old one hour it would still be open when our 60 s read
    // timeout fired, and read_to_end would fail).
    let mut c = BufReader::new(connect(d.port));
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    banner(&mut c);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the server should close an idle connection after sync_timeout");
    // Debug lines flow now (the driver logs a peer's close at debug).
    wait_log(&d, "DEBUG", 1);
}

/// The banner's lines up to `* OK`, joined.
fn banner_text(r: &mut BufReader<TcpStream>) -> String {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed during banner");
        text.push_str(&line);
        if line.starts_with("* OK") {
            return text;
        }
    }
}

/// `AUTHENTICATE PLAIN` as `user` with `password` on a new connection:
/// the server's answer line.
fn login(port: u16, user: &str, password: &str) -> String {
    use std::fmt::Write as _;
    let mut c = BufReader::new(connect(port));
    banner_text(&mut c);
    let creds = format!("\0{user}\0{password}");
    // Base64 by hand: the test depends on nothing else.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in creds.as_bytes().chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut cmd = String::new();
    write!(cmd, "AUTHENTICATE PLAIN {b64}\r\n").unwrap();
    c.get_mut().write_all(cmd.as_bytes()).unwrap();
    let mut answer = String::new();
    c.read_line(&mut answer).unwrap();
    answer
}

/// Fresh `corvid passwd` file at `path` holding `user` with `password`.
fn passwd(path: &Path, user: &str, password: &str) {
    let mut p = Command::new(corvid())
        .arg("passwd")
        .arg(path)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(p.wait().unwrap().success());
}

/// SIGHUP applies `allowplaintext`, `sasl_mech_list` and the password
/// file to new connections, without a restart.
#[test]
fn sighup_applies_sasl_settings_and_the_password_file() {
    let d = start();
    let dir = d._dir.path().to_path_buf();
    let mut first = BufReader::new(connect(d.port));
    let banner = banner_text(&mut first);
    assert!(banner.contains("* SASL PLAIN"), "{banner}");
    assert!(login(d.port, "repl", "secret").starts_with("OK"));

    // allowplaintext off (Cyrus's default): nothing is offered in the
    // clear to a new connection, and PLAIN is refused there.
    let base = config_text(&dir).replace("allowplaintext: yes\n", "failedloginpause: 0\n");
    std::fs::write(&d.conf, &base).unwrap();
    signal(&d, "-HUP");
    wait_log(&d, "configuration applied", 1);
    let banner = banner_text(&mut BufReader::new(connect(d.port)));
    assert!(!banner.contains("PLAIN"), "{banner}");
    assert!(login(d.port, "repl", "secret").starts_with("NO"));

    // Back on, with LOGIN listed too, and a new password file in which
    // repl has another password: new logins check against it at once.
    let other = dir.join("passwd2");
    passwd(&other, "repl", "other");
    let text = base
        .replace("sasl_mech_list: PLAIN\n", "sasl_mech_list: LOGIN PLAIN\n")
        .replace(
            &format!("corvid_passwd_file: {}/passwd\n", dir.display()),
            &format!("corvid_passwd_file: {}\n", other.display()),
        )
        + "allowplaintext: yes\n";
    std::fs::write(&d.conf, &text).unwrap();
    signal(&d, "-HUP");
    wait_log(&d, "configuration applied", 2);
    let banner = banner_text(&mut BufReader::new(connect(d.port)));
    assert!(banner.contains("* SASL LOGIN PLAIN"), "{banner}");
    // The old password was accepted (and remembered) before: it no longer
    // logs in; the new file's does.
    assert!(login(d.port, "repl", "secret").starts_with("NO"));
    assert!(login(d.port, "repl", "other").starts_with("OK"));
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("password check changed"), "{log}");
    // The connection opened before the reloads keeps what it was offered.
    first.get_mut().write_all(b"NOOP\r\n").unwrap();
    let mut answer = String::new();
    first.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("OK "), "{answer:?}");
}
