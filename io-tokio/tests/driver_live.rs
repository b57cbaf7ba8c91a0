//! The driver against the real Cyrus 3.6 daemons (scripts/peers): a scripted
//! client machine negotiates COMPRESS DEFLATE with the real `sync_server`
//! and the real MUPDATE master, then talks to them compressed. Their zlib
//! must understand our deflate from exactly the byte after their OK, and we
//! theirs, or the conversation breaks.
//!
//! Without the peers (no `$CORVID_PEERS_ENV` file) the tests print SKIP and
//! pass, except with `CI=true`, where they fail.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use engine::machine::{CloseReason, EffectId, Layer, Machine, Output, Time};
use io_tokio::driver::{Driver, NoEffects};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The peers' env file, or `None` (after printing SKIP) when they are not
/// running outside CI.
fn peers() -> Option<BTreeMap<String, String>> {
    let path = std::env::var_os("CORVID_PEERS_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/corvid-peers/env"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the real peers are not running ({}: {e})",
                path.display()
            );
            eprintln!("SKIP: real peers not running ({}: {e})", path.display());
            None
        }
    }
}

enum Step {
    /// Wait for a line starting with this.
    Expect(&'static str),
    /// Send this line.
    Send(&'static str),
    /// Start COMPRESS here (right after the line just expected).
    Deflate,
}

/// Plays a script; every line received is an event.
struct Script {
    steps: VecDeque<Step>,
    buf: BytesMut,
    out: VecDeque<Output<Infallible, String>>,
    closed: bool,
}

impl Script {
    fn new(steps: Vec<Step>) -> Self {
        let mut s = Script {
            steps: steps.into(),
            buf: BytesMut::new(),
            out: VecDeque::new(),
            closed: false,
        };
        s.run_sends();
        s
    }

    /// Acts on steps up to the next `Expect`; returns whether COMPRESS
    /// starts now.
    fn run_sends(&mut self) -> bool {
        let mut deflate = false;
        while let Some(step) = self.steps.front() {
            match step {
                Step::Expect(_) => break,
                Step::Send(line) => self
                    .out
                    .push_back(Output::Transmit(Bytes::from(format!("{line}\r\n")))),
                Step::Deflate => {
                    // Bytes after the OK line are already deflated: hand
                    // them back before anything else goes out.
                    self.out.push_back(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: self.buf.split().freeze(),
                    });
                    deflate = true;
                }
            }
            self.steps.pop_front();
        }
        deflate
    }
}

impl Machine for Script {
    type Effect = Infallible;
    type Completion = Infallible;
    type Event = String;
    type Command = Infallible;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
            let line = self.buf.split_to(end + 2);
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            let matched =
                matches!(self.steps.front(), Some(Step::Expect(p)) if line.starts_with(p));
            self.out.push_back(Output::Event(line));
            if matched {
                self.steps.pop_front();
                if self.run_sends() {
                    return;
                }
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        self.closed = true;
        let reason = if self.steps.is_empty() {
            CloseReason::PeerClosed
        } else {
            CloseReason::PeerError("closed before the script ended".into())
        };
        self.out.push_back(Output::Close(reason));
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn handle_completion(&mut self, _now: Time, _id: EffectId, c: Infallible) {
        match c {}
    }

    fn handle_command(&mut self, _now: Time, c: Infallible) {
        match c {}
    }

    fn poll_output(&mut self) -> Option<Output<Infallible, String>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    fn wants_input(&self) -> bool {
        !self.closed
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

async fn play(
    port: &str,
    steps: Vec<Step>,
) -> (Vec<String>, Result<CloseReason, io_tokio::driver::Error>) {
    let stream = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let driver = tokio::spawn(
        Driver::new(Script::new(steps), NoEffects)
            .events(ev_tx)
            .peer(format!("127.0.0.1:{port}"))
            .run(stream),
    );
    let mut lines = Vec::new();
    let collect = async {
        while let Some(line) = ev_rx.recv().await {
            lines.push(line);
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(30), collect)
        .await
        .is_err()
    {
        panic!(
            "the real peer did not finish the conversation within 30 s; lines so far: {lines:?}"
        );
    }
    let outcome = driver.await.unwrap();
    (lines, outcome.result)
}

#[tokio::test]
async fn compress_with_the_real_sync_server() {
    let Some(env) = peers() else { return };
    let (lines, result) = play(
        &env["REPLICA_CSYNC_PORT"],
        vec![
            Step::Expect("* OK "),
            Step::Send("COMPRESS DEFLATE"),
            Step::Expect("OK DEFLATE active"),
            Step::Deflate,
            Step::Send("NOOP"),
            Step::Expect("OK "),
            Step::Send("NOOP"),
            Step::Expect("OK "),
            Step::Send("EXIT"),
            Step::Expect("OK "),
        ],
    )
    .await;
    assert!(lines.iter().any(|l| l == "* COMPRESS DEFLATE"), "{lines:?}");
    let after: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("* OK "))
        .skip(1)
        .map(String::as_str)
        .collect();
    assert_eq!(
        after,
        [
            "OK DEFLATE active",
            "OK Noop completed",
            "OK Noop completed",
            "OK Finished"
        ]
    );
    assert_eq!(result.unwrap(), CloseReason::PeerClosed);
}

#[tokio::test]
async fn compress_with_the_real_mupdate_master() {
    let Some(env) = peers() else { return };
    let (lines, result) = play(
        &env["MUPDATE_PORT"],
        vec![
            Step::Expect("* OK MUPDATE"),
            Step::Send("Z1 COMPRESS \"DEFLATE\""),
            Step::Expect("Z1 OK"),
            Step::Deflate,
            // Refused before authentication, but the refusal itself proves
            // both directions are deflated correctly.
            Step::Send("N1 NOOP"),
            Step::Expect("N1 "),
            Step::Send("Q1 LOGOUT"),
            Step::Expect("Q1 "),
        ],
    )
    .await;
    assert!(
        lines.iter().any(|l| l == "* COMPRESS \"DEFLATE\""),
        "{lines:?}"
    );
    let after: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("* OK MUPDATE"))
        .skip(1)
        .map(String::as_str)
        .collect();
    assert_eq!(
        after,
        [
            "Z1 OK DEFLATE active",
            "N1 BAD \"Please login first\"",
            "Q1 OK \"bye-bye\""
        ]
    );
    assert_eq!(result.unwrap(), CloseReason::PeerClosed);
}

/// The `listen::master` path under the real Cyrus `master(8)`: a private
/// master (run through the peers' `cyrexec.sh`, so it runs as cyrus and logs
/// to the peers' syslog sink, with `-v` and `debug: yes` so it logs every
/// status message) has a SERVICES entry running the `driver_e2e` test
/// binary's `listen::master_child` (found by `e2e_binary`), which adopts
/// fds 3 and 4 and serves the toy protocol. Two connections at once must be
/// served, and master's log must show both reported as CONNECTION_MULTI by
/// one process, and no complaint.
#[test]
fn serves_under_the_real_cyrus_master() {
    let Some(env) = peers() else { return };
    let Some(child_bin) = e2e_binary() else {
        panic!("the driver_e2e test binary was not found next to this one; build it with `cargo test -p io-tokio`");
    };
    let dir = tempfile::Builder::new()
        .prefix("corvid-mtest")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    for sub in [
        "conf/proc",
        "conf/lock",
        "conf/socket",
        "conf/log",
        "conf/db",
        "spool",
        "bin",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // User cyrus must be able to run it; our target dir may be private.
    let bin = d.join("bin/corvid-e2e");
    std::fs::copy(&child_bin, &bin).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let prefix = format!("corvid-mtest-{}", std::process::id());
    std::fs::write(
        d.join("imapd.conf"),
        format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\nproc_path: {0}/conf/proc\n\
             mboxname_lockpath: {0}/conf/lock\nsyslog_prefix: {1}\ndebug: yes\n",
            d.display(),
            prefix
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  corvidtest cmd=\"{} --ignored --exact listen::master_child --test-threads=1\" \
             listen=\"127.0.0.1:{port}\" prefork=1\n}}\n",
            bin.display()
        ),
    )
    .unwrap();
    let ok = |mut c: std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
    let mut chown = std::process::Command::new("chown");
    chown.args(["-R", "cyrus:mail"]).arg(d);
    ok(chown);
    let mut chmod = std::process::Command::new("chmod");
    chmod.arg("755").arg(d);
    ok(chmod);

    let pidfile = d.join("master.pid");
    let mut master = std::process::Command::new("bash");
    master
        .arg(&env["CYREXEC"])
        .arg("/usr/lib/cyrus/bin/master")
        .arg("-C")
        .arg(d.join("imapd.conf"))
        .arg("-M")
        .arg(d.join("cyrus.conf"))
        .arg("-p")
        .arg(&pidfile)
        .arg("-L")
        .arg(d.join("master.log"))
        .args(["-d", "-v"])
        .env("CYRUS_SYSLOG_PREFIX", &prefix);
    ok(master);

    let result = std::panic::catch_unwind(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
            // master binds at once; the prefork child comes up shortly.
            let mut conns = Vec::new();
            for _ in 0..2 {
                let mut tries = 0;
                let stream = loop {
                    match TcpStream::connect(("127.0.0.1", port)).await {
                        Ok(s) => break s,
                        Err(e) if tries < 100 => {
                            let _ = e;
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("master never listened on {port}: {e}"),
                    }
                };
                let mut conn = BufReader::new(stream);
                let mut line = String::new();
                conn.read_line(&mut line).await.unwrap();
                assert_eq!(line, "* OK toy\r\n");
                conns.push(conn);
            }
            // Both connections are live at once, in one process.
            for (i, conn) in conns.iter_mut().enumerate() {
                conn.get_mut()
                    .write_all(format!("ECHO conn {i}\r\nQUIT\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            for (i, mut conn) in conns.into_iter().enumerate() {
                let mut rest = String::new();
                conn.read_to_string(&mut rest).await.unwrap();
                assert_eq!(rest, format!("conn {i}\r\nBYE\r\n"));
            }
        });
    });

    // We started this master; we stop it, by its pid (it ends its service
    // children itself).
    let master_pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
    let master_pid = master_pid.trim().to_owned();
    if !master_pid.is_empty() {
        let _ = std::process::Command::new("kill").arg(&master_pid).status();
        for _ in 0..50 {
            let alive = std::process::Command::new("kill")
                .args(["-0", &master_pid])
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !alive {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // master's own account of it: one process reported two connections
    // with CONNECTION_MULTI while READY, and nothing it did not understand.
    let log = std::fs::read_to_string(&env["SYSLOG"]).unwrap();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains(&prefix)).collect();
    let multi: Vec<&str> = ours
        .iter()
        .copied()
        .filter(|l| {
            l.contains("corvidtest")
                && l.contains("in READY state: serving one more multi-threaded connection")
        })
        .collect();
    assert_eq!(multi.len(), 2, "master's log:\n{}", ours.join("\n"));
    let pid_of = |l: &str| {
        l.split(" pid ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        pid_of(multi[0]),
        pid_of(multi[1]),
        "one process served both"
    );
    // On master's SIGTERM the service shut down by itself and exited 0.
    assert!(
        ours.iter()
            .any(|l| l.contains("name:corvidtest") && l.contains("exited normally")),
        "master's log:\n{}",
        ours.join("\n")
    );
    for bad in [
        "unrecognized message",
        "BUSY state",
        "incorrectly sized",
        "signaled to death",
        "exited, status",
    ] {
        assert!(
            !ours.iter().any(|l| l.contains(bad)),
            "master complained ({bad}):\n{}",
            ours.join("\n")
        );
    }
}

/// The `driver_e2e` test binary (it holds `listen::master_child`), found
/// next to this one in the target's `deps` directory: the newest
/// `driver_e2e-*` executable.
fn e2e_binary() -> Option<PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_owned();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("driver_e2e-") && p.extension().is_none()
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}
