//! Per-user protocol telemetry, on the real binary: with
//! `configdirectory/log/USER/` present, a session that logs in as USER
//! leaves its transcript there as Cyrus's `telemetry_log()` does
//! (`IDENT-PID`, a `---------- USER <ctime>` header, `<SECONDS<` before
//! what the client sent and `>SECONDS>` before what we answered), in
//! plaintext even under COMPRESS, and never the credentials.
//!
//! - `corvid sync_server`: a session that turns COMPRESS DEFLATE on after
//!   its login; the transcript holds the plaintext commands.
//! - `corvid mupdate -m`: an admin session and a user without a directory
//!   (who gets no transcript).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::compress::{Deflater, InflateOptions, Inflater};

const PASS: &str = "telemetry-secret";

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

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn plain(user: &str) -> String {
    b64(format!("\0{user}\0{PASS}").as_bytes())
}

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
    confdir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `corvid <tool...> -C imapd.conf --listen` (`{d}` in an
    /// argument is the test's directory), with users `admin` (in `admins`)
    /// and `bob`, and `log/admin/` present.
    fn start(tool: &[&str], extra_conf: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let confdir = d.join("conf");
        std::fs::create_dir_all(confdir.join("log/admin")).unwrap();
        std::fs::create_dir_all(d.join("spool")).unwrap();
        for user in ["admin", "bob"] {
            let mut p = Command::new(corvid())
                .arg("passwd")
                .arg(d.join("passwd"))
                .arg(user)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            p.stdin
                .take()
                .unwrap()
                .write_all(format!("{PASS}\n").as_bytes())
                .unwrap();
            assert!(p.wait().unwrap().success());
        }
        let conf = d.join("imapd.conf");
        std::fs::write(
            &conf,
            format!(
                "servername: telemetry.test\nconfigdirectory: {c}\npartition-default: {d}/spool\n\
                 admins: admin bob\nsasl_mech_list: PLAIN\nallowplaintext: yes\n\
                 corvid_passwd_file: {d}/passwd\n{extra_conf}",
                c = confdir.display(),
                d = d.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = d.join("stderr.log");
        let child = Command::new(corvid())
            .args(
                tool.iter()
                    .map(|a| a.replace("{d}", &d.display().to_string())),
            )
            .arg("-C")
            .arg(&conf)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CORVID_LOG_TARGET", "stderr")
            .env("CORVID_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            port,
            log,
            confdir,
            _dir: dir,
        }
    }

    /// Connects, retrying while the daemon starts (bounded: 60 s).
    fn connect(&mut self) -> BufReader<TcpStream> {
        for _ in 0..600 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return BufReader::new(s);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("daemon exited {st}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never listened: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The transcript files under `log/USER/`.
    fn transcripts(&self, user: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.confdir.join("log").join(user))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Reads lines until one starts with `prefix`; returns it.
fn line_starting(r: &mut BufReader<TcpStream>, prefix: &str) -> String {
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "closed before {prefix:?}"
        );
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// The transcript's records after its header, as (direction, bytes).
fn records(text: &str, user: &str) -> Vec<(char, String)> {
    let (header, body) = text.split_once('\n').unwrap();
    assert!(
        header.starts_with(&format!("---------- {user} ")),
        "{header:?}"
    );
    // ctime's own newline follows the header line.
    let body = body
        .strip_prefix('\n')
        .expect("empty line after the header");
    // A marker is '<' or '>', digits, the same character again.
    let marker_len = |s: &[u8]| -> Option<usize> {
        let m = *s.first()?;
        if m != b'<' && m != b'>' {
            return None;
        }
        let digits = s[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        (digits > 0 && s.get(1 + digits) == Some(&m)).then_some(digits + 2)
    };
    let bytes = body.as_bytes();
    assert!(marker_len(bytes).is_some(), "{body:?}");
    let mut out: Vec<(char, String)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(n) = marker_len(&bytes[i..]) {
            out.push((bytes[i] as char, String::new()));
            i += n;
        } else {
            out.last_mut().unwrap().1.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

#[test]
fn sync_server_writes_a_plaintext_transcript_under_compress() {
    let metrics = free_port();
    let mut d = Daemon::start(
        &["sync_server"],
        &format!("corvid_metrics_listen: 127.0.0.1:{metrics}\n"),
    );
    let mut c = d.connect();
    let banner = line_starting(&mut c, "* OK");
    assert!(banner.contains("Cyrus sync server"), "{banner}");
    c.get_mut()
        .write_all(format!("AUTHENTICATE PLAIN {}\r\n", plain("admin")).as_bytes())
        .unwrap();
    let ok = line_starting(&mut c, "OK");
    assert!(ok.starts_with("OK Success"), "{ok}");
    c.get_mut().write_all(b"COMPRESS DEFLATE\r\n").unwrap();
    let ok = line_starting(&mut c, "OK");
    assert!(ok.contains("DEFLATE"), "{ok}");
    // From here on both ways are deflated on the wire.
    let mut stream = c.into_inner();
    let mut deflater = Deflater::with_level(6);
    let mut inflater = Inflater::new(InflateOptions::default());
    let mut said = Vec::new();
    for cmd in ["NOOP\r\n", "GET USER nobody\r\n", "EXIT\r\n"] {
        deflater.write(cmd.as_bytes()).unwrap();
        stream.write_all(&deflater.flush().unwrap()).unwrap();
        // Read until the answer's line is complete.
        loop {
            if said.ends_with(b"\r\n") && said.len() > 2 {
                break;
            }
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&said));
            inflater.feed(&buf[..n]).unwrap();
            while let Some(chunk) = inflater.pull().unwrap() {
                said.extend_from_slice(&chunk);
            }
        }
        said.push(b'|');
    }
    let said = String::from_utf8(said).unwrap();
    assert!(said.contains("OK Finished"), "{said}");

    let files = d.transcripts("admin");
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(name, format!("sync_server-{}", d.child.id()));
    // A transcript holds the user's mail: owner-only, whatever the umask
    // (the files of a real Cyrus 3.6.1 under master(8) are 0600 too).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&files[0]).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        !text.contains(PASS) && !text.contains(&plain("admin")),
        "{text}"
    );
    assert!(!text.contains("AUTHENTICATE"), "{text}");
    let recs = records(&text, "admin");
    let sent: String = recs
        .iter()
        .filter(|(m, _)| *m == '<')
        .map(|(_, b)| b.as_str())
        .collect();
    let answered: String = recs
        .iter()
        .filter(|(m, _)| *m == '>')
        .map(|(_, b)| b.as_str())
        .collect();
    assert_eq!(
        sent, "COMPRESS DEFLATE\r\nNOOP\r\nGET USER nobody\r\nEXIT\r\n",
        "{text}"
    );
    assert!(answered.contains("DEFLATE"), "{text}");
    assert!(answered.ends_with("OK Finished\r\n"), "{text}");
    // Each command comes before its answer.
    let noop = recs.iter().position(|(m, b)| *m == '<' && b == "NOOP\r\n");
    let exit = recs.iter().position(|(m, b)| *m == '<' && b == "EXIT\r\n");
    assert!(noop < exit, "{recs:?}");
    assert!(d.log_text().contains("protocol telemetry on"));

    // The read was counted as a command answered OK (events are recorded
    // by a task of their own: poll, bounded).
    let want =
        "corvid_commands_total{service=\"sync_server\",command=\"GET USER\",result=\"ok\"} 1\n";
    let mut body = String::new();
    for _ in 0..300 {
        let mut m = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        m.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        body.clear();
        m.read_to_string(&mut body).unwrap();
        if body.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.contains(want), "{body}");
}

#[test]
fn mupdate_writes_a_transcript_only_for_users_with_a_directory() {
    let mut d = Daemon::start(&["mupdate", "-m", "--db", "{d}/mupdate.sqlite3"], "");
    // bob has no log/bob/: nothing is written for him.
    let mut b = d.connect();
    line_starting(&mut b, "* OK MUPDATE");
    b.get_mut()
        .write_all(format!("B01 AUTHENTICATE \"PLAIN\" \"{}\"\r\n", plain("bob")).as_bytes())
        .unwrap();
    let ok = line_starting(&mut b, "B01 ");
    assert!(ok.starts_with("B01 OK"), "{ok}");
    b.get_mut().write_all(b"B02 NOOP\r\n").unwrap();
    line_starting(&mut b, "B02 OK");

    let mut c = d.connect();
    line_starting(&mut c, "* OK MUPDATE");
    c.get_mut()
        .write_all(format!("A01 AUTHENTICATE \"PLAIN\" \"{}\"\r\n", plain("admin")).as_bytes())
        .unwrap();
    let ok = line_starting(&mut c, "A01 ");
    assert!(ok.starts_with("A01 OK"), "{ok}");
    c.get_mut()
        .write_all(b"A02 RESERVE \"user.carol\" \"be1!default\"\r\nA03 NOOP\r\nA04 LOGOUT\r\n")
        .unwrap();
    line_starting(&mut c, "A02 OK");
    line_starting(&mut c, "A03 OK");
    line_starting(&mut c, "A04 OK");

    assert!(d.transcripts("bob").is_empty());
    let files = d.transcripts("admin");
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    // As Cyrus's threaded mupdate: `mupdate-SECONDS.MICROSECONDS`.
    let (secs, micros) = name
        .strip_prefix("mupdate-")
        .and_then(|n| n.split_once('.'))
        .unwrap_or_else(|| panic!("{name}"));
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        !text.contains(PASS) && !text.contains("AUTHENTICATE"),
        "{text}"
    );
    let recs = records(&text, "admin");
    let sent: String = recs
        .iter()
        .filter(|(m, _)| *m == '<')
        .map(|(_, b)| b.as_str())
        .collect();
    assert_eq!(
        sent, "A02 RESERVE \"user.carol\" \"be1!default\"\r\nA03 NOOP\r\nA04 LOGOUT\r\n",
        "{text}"
    );
    let answered: String = recs
        .iter()
        .filter(|(m, _)| *m == '>')
        .map(|(_, b)| b.as_str())
        .collect();
    assert!(answered.contains("A02 OK"), "{text}");
    assert!(answered.contains("A04 OK"), "{text}");
}

#[test]
fn a_failing_transcript_never_breaks_the_session() {
    let mut d = Daemon::start(&["sync_server"], "");
    // bob's transcript would be written to a full disk.
    let bob = d.confdir.join("log/bob");
    std::fs::create_dir_all(&bob).unwrap();
    std::os::unix::fs::symlink(
        "/dev/full",
        bob.join(format!("sync_server-{}", d.child.id())),
    )
    .unwrap();
    let mut c = d.connect();
    line_starting(&mut c, "* OK");
    c.get_mut()
        .write_all(format!("AUTHENTICATE PLAIN {}\r\n", plain("bob")).as_bytes())
        .unwrap();
    assert!(line_starting(&mut c, "OK").starts_with("OK Success"));
    c.get_mut().write_all(b"NOOP\r\nEXIT\r\n").unwrap();
    line_starting(&mut c, "OK");
    assert!(line_starting(&mut c, "OK").starts_with("OK Finished"));
    let log = d.log_text();
    assert!(log.contains("cannot write telemetry log"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
}
