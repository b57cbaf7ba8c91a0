//! Lag metrics on the real binary: a `corvid mupdate` slave following a
//! `corvid mupdate -m` master records, for each change the master pushes,
//! the time from the UPDATE line's arrival to its durable apply
//! (`corvid_mupdate_slave_lag_seconds`), and how long ago it last heard
//! from its master (`corvid_mupdate_master_contact_age_seconds`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

fn start(dir: &Path, name: &str, conf_extra: &str, args: &[&str]) -> Kill {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let conf = home.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {h}\nservername: {name}.test\nadmins: mupdateadmin\n\
             corvid_passwd_file: {d}/passwd\nallowplaintext: yes\n{conf_extra}",
            h = home.display(),
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(corvid())
        .arg("mupdate")
        .arg("-C")
        .arg(&conf)
        .args(args)
        .env("CORVID_LOG_TARGET", "stderr")
        .env("CORVID_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    Kill(child)
}

/// `GET /metrics`, retried until it answers (bounded: 60 s).
fn scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "no /metrics on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Scrapes until `pred` holds (bounded: 60 s); returns that scrape.
fn scrape_until(port: u16, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = scrape(port);
        if pred(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never matched:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_mupdate_slave_records_its_lag_and_last_master_contact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut p = Command::new(corvid())
        .arg("passwd")
        .arg(d.join("passwd"))
        .arg("mupdateadmin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());

    let (mport, mmetrics, smetrics, sport) = (free_port(), free_port(), free_port(), free_port());
    let _master = start(
        d,
        "master",
        &format!("corvid_metrics_listen: 127.0.0.1:{mmetrics}\n"),
        &[
            "-m",
            "--db",
            &d.join("master.sqlite3").display().to_string(),
            "--listen",
            &format!("127.0.0.1:{mport}"),
        ],
    );
    let _slave = start(
        d,
        "slave",
        &format!(
            "mupdate_server: 127.0.0.1:{mport}\nmupdate_authname: mupdateadmin\n\
             mupdate_password: secret\nmupdate_retry_delay: 1\n\
             corvid_metrics_listen: 127.0.0.1:{smetrics}\n"
        ),
        &["--listen", &format!("127.0.0.1:{sport}")],
    );
    // The slave serves /metrics once its first full sync is done.
    let first = scrape(smetrics);
    assert!(
        first.contains("corvid_mupdate_master_contact_age_seconds "),
        "{first}"
    );
    assert!(!first.contains("corvid_mupdate_slave_lag_seconds_count"));

    // A backend's change on the master reaches the slave as an UPDATE.
    let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", mport)).unwrap());
    c.get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    line_starting(&mut c, "* OK MUPDATE");
    let creds = b64(b"\0mupdateadmin\0secret");
    c.get_mut()
        .write_all(format!("A01 AUTHENTICATE \"PLAIN\" \"{creds}\"\r\n").as_bytes())
        .unwrap();
    assert!(line_starting(&mut c, "A01 ").starts_with("A01 OK"));
    c.get_mut()
        .write_all(b"A02 ACTIVATE \"user.lag\" \"be1!default\" \"anyone\tlrs\t\"\r\n")
        .unwrap();
    assert!(line_starting(&mut c, "A02 ").starts_with("A02 OK"));

    let body = scrape_until(smetrics, |b| {
        value(b, "corvid_mupdate_slave_lag_seconds_count").is_some_and(|n| n >= 1.0)
    });
    let sum = value(&body, "corvid_mupdate_slave_lag_seconds_sum").unwrap();
    assert!(sum >= 0.0, "{body}");
    let age = value(&body, "corvid_mupdate_master_contact_age_seconds").unwrap();
    assert!(age >= 0.0, "{body}");

    // The master counts every MUPDATE answer by verb and result: the
    // backend's ACTIVATE, a FIND, and a word that is no command (one
    // bounded label for all of those); logins from the backend and the
    // slave.
    c.get_mut()
        .write_all(b"A03 FIND \"user.lag\"\r\nA04 FROB\r\n")
        .unwrap();
    // FIND answers with the entry (`A03 MAILBOX …`), then its OK.
    assert!(line_starting(&mut c, "A03 ").starts_with("A03 MAILBOX"));
    assert!(line_starting(&mut c, "A03 ").starts_with("A03 OK"));
    assert!(line_starting(&mut c, "A04 ").starts_with("A04 BAD"));
    let series = |cmd: &str, result: &str| {
        format!(
            "corvid_commands_total{{service=\"mupdate\",command=\"{cmd}\",result=\"{result}\"}}"
        )
    };
    let body = scrape_until(mmetrics, |b| value(b, &series("_unknown", "bad")).is_some());
    for (cmd, result) in [("ACTIVATE", "ok"), ("FIND", "ok"), ("_unknown", "bad")] {
        assert_eq!(
            value(&body, &series(cmd, result)),
            Some(1.0),
            "{cmd} {result}: {body}"
        );
    }
    let logins = value(&body, &series("AUTHENTICATE", "ok")).unwrap_or(0.0);
    assert!(logins >= 2.0, "{body}");
}
