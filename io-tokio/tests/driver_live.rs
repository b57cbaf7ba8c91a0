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
