//! The pair harness driving two small real machines defined here (test-only):
//! a line client and a key-value server with an idle timer, store effects,
//! backpressure and a COMPRESS-style layer switch. The assertions are exact
//! logs, so any change in order or virtual time fails them.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use engine::harness::{Options, Pair, Resolution};
use engine::machine::{CloseReason, EffectId, EffectIds, Layer, Machine, Output, Time};
use proptest::prelude::*;

const LINE_BYTES_MAX: usize = 64;
const IDLE: Duration = Duration::from_secs(30);

/// Splits complete CRLF lines off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = buf.split_to(end + 2);
    Some(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// Toy server: `ECHO x` -> `x`; `STORE k v` -> effect, then `OK stored k`
/// only after the completion; `COMPRESS` -> `OK DEFLATE active` and a layer
/// switch; `QUIT` -> `BYE` and close; 30 s idle -> `BYE idle` and close.
struct Server {
    buf: BytesMut,
    out: std::collections::VecDeque<Output<Write, ServerEvent>>,
    ids: EffectIds,
    waiting: Option<(EffectId, String)>,
    idle_at: Time,
    closed: bool,
    compressed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    key: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerEvent {
    Stored(String),
    Bad,
}

impl Server {
    fn new(now: Time) -> Self {
        let mut s = Server {
            buf: BytesMut::new(),
            out: Default::default(),
            ids: EffectIds::default(),
            waiting: None,
            idle_at: now + IDLE,
            closed: false,
            compressed: false,
        };
        s.send("* OK toy");
        s
    }

    fn send(&mut self, line: &str) {
        self.out
            .push_back(Output::Transmit(Bytes::from(format!("{line}\r\n"))));
    }

    fn close(&mut self, reason: CloseReason) {
        self.out.push_back(Output::Close(reason));
        self.closed = true;
    }

    fn process(&mut self, now: Time) {
        while !self.closed && self.waiting.is_none() {
            let line_end = self.buf.windows(2).position(|w| w == b"\r\n");
            if line_end.unwrap_or(self.buf.len()) > LINE_BYTES_MAX {
                self.close(CloseReason::LimitExceeded("line_bytes_max".into()));
                return;
            }
            let Some(line) = take_line(&mut self.buf) else {
                return;
            };
            self.idle_at = now + IDLE;
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("ECHO"), Some(x), rest) => {
                    let x = match rest {
                        Some(r) => format!("{x} {r}"),
                        None => x.to_owned(),
                    };
                    self.send(&x)
                }
                (Some("STORE"), Some(k), Some(v)) => {
                    let id = self.ids.next_id();
                    self.waiting = Some((id, k.to_owned()));
                    self.out.push_back(Output::Effect {
                        id,
                        effect: Write {
                            key: k.to_owned(),
                            value: v.to_owned(),
                        },
                    });
                }
                (Some("COMPRESS"), None, None) if !self.compressed => {
                    self.compressed = true;
                    self.send("OK DEFLATE active");
                    let rest = self.buf.split().freeze();
                    self.out.push_back(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: rest,
                    });
                    // Like Cyrus after STARTTLS: speak first under the new layer.
                    self.send("* OK compressed");
                }
                (Some("QUIT"), None, None) => {
                    self.send("BYE");
                    self.close(CloseReason::Done);
                }
                _ => {
                    self.send("BAD");
                    self.out.push_back(Output::Event(ServerEvent::Bad));
                }
            }
        }
    }
}

impl Machine for Server {
    type Effect = Write;
    type Completion = Stored;
    type Event = ServerEvent;
    type Command = Infallible;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        assert!(self.wants_input(), "fed while not reading");
        self.buf.extend_from_slice(bytes);
        self.process(now);
    }

    fn handle_eof(&mut self, _now: Time) {
        if !self.closed {
            self.close(CloseReason::PeerClosed);
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        if !self.closed && now >= self.idle_at {
            self.send("BYE idle");
            self.close(CloseReason::Timeout("idle".into()));
        }
    }

    fn handle_completion(&mut self, now: Time, id: EffectId, completion: Stored) {
        let (want, key) = self.waiting.take().expect("a completion we asked for");
        assert_eq!(want, id);
        if self.closed {
            return;
        }
        match completion {
            Stored::Ok => {
                self.send(&format!("OK stored {key}"));
                self.out.push_back(Output::Event(ServerEvent::Stored(key)));
            }
            Stored::Failed => self.send("NO store failed"),
        }
        self.process(now);
    }

    fn handle_command(&mut self, _now: Time, command: Infallible) {
        match command {}
    }

    fn poll_output(&mut self) -> Option<Output<Write, ServerEvent>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        (!self.closed).then_some(self.idle_at)
    }

    fn wants_input(&self) -> bool {
        !self.closed && self.waiting.is_none()
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// Toy client: each command is a line to send; each line received is an
/// event; on `OK DEFLATE active` after sending `COMPRESS`, it switches too.
#[derive(Default)]
struct Client {
    buf: BytesMut,
    out: std::collections::VecDeque<Output<Infallible, String>>,
    compress_sent: bool,
    closed: bool,
    /// A deliberate bug for the harness to catch: drop bytes read past the
    /// switch instead of handing them back.
    drop_tail_at_switch: bool,
}

impl Machine for Client {
    type Effect = Infallible;
    type Completion = Infallible;
    type Event = String;
    type Command = String;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(line) = take_line(&mut self.buf) {
            let switch = self.compress_sent && line == "OK DEFLATE active";
            self.out.push_back(Output::Event(line));
            if switch {
                self.compress_sent = false;
                let mut rest = self.buf.split().freeze();
                if self.drop_tail_at_switch {
                    rest.clear();
                }
                self.out.push_back(Output::StartLayer {
                    layer: Layer::Deflate,
                    input_after_switch: rest,
                });
                return;
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        self.closed = true;
        self.out.push_back(Output::Close(CloseReason::PeerClosed));
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn handle_completion(&mut self, _now: Time, _id: EffectId, completion: Infallible) {
        match completion {}
    }

    fn handle_command(&mut self, _now: Time, line: String) {
        self.compress_sent |= line == "COMPRESS";
        self.out
            .push_back(Output::Transmit(Bytes::from(format!("{line}\r\n"))));
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

fn pair(options: Options) -> Pair<Client, Server> {
    Pair::with_names(
        Client::default(),
        "c",
        Server::new(Time::ZERO),
        "s",
        options,
    )
}

fn latency(ms: u64) -> Options {
    Options {
        latency_a_to_b: Duration::from_millis(ms),
        latency_b_to_a: Duration::from_millis(ms),
        ..Options::default()
    }
}

#[test]
fn echo_and_quit_exact_log() {
    let mut p = pair(latency(10));
    p.settle();
    p.command_a("ECHO hello world".into());
    p.settle();
    p.command_a("QUIT".into());
    p.run_to_end();
    assert_eq!(
        p.log(),
        [
            r#"0.000s s send "* OK toy\r\n""#,
            r#"0.010s c event "* OK toy""#,
            r#"0.010s c command "ECHO hello world""#,
            r#"0.010s c send "ECHO hello world\r\n""#,
            r#"0.020s s send "hello world\r\n""#,
            r#"0.030s c event "hello world""#,
            r#"0.030s c command "QUIT""#,
            r#"0.030s c send "QUIT\r\n""#,
            r#"0.040s s send "BYE\r\n""#,
            r#"0.040s s close done"#,
            r#"0.050s c event "BYE""#,
            r#"0.050s c eof"#,
            r#"0.050s c close peer closed the connection"#,
        ]
    );
    assert_eq!(p.closed_b(), Some(&CloseReason::Done));
    assert!(p.a().is_closed() && p.b().is_closed());
    assert!(p
        .log_text()
        .starts_with("0.000s s send \"* OK toy\\r\\n\"\n0.010s c event"));
    assert!(p
        .log_text()
        .ends_with("c close peer closed the connection\n"));
}

#[test]
fn idle_timeout_fires_exactly_thirty_seconds_after_last_line() {
    let mut p = pair(latency(10));
    p.settle();
    p.run_until(Time::from_millis(5_000));
    p.command_a("ECHO x".into());
    p.settle();
    p.take_log();
    // Nothing happens before the deadline...
    p.run_until(Time::from_millis(35_009));
    assert_eq!(p.log(), Vec::<String>::new());
    // ...and at it, the server says goodbye: the line arrived at 5.010s.
    assert_eq!(p.next_due_at(), Some(Time::from_millis(35_010)));
    p.run_to_end();
    assert_eq!(
        p.log(),
        [
            "35.010s s timeout",
            r#"35.010s s send "BYE idle\r\n""#,
            "35.010s s close timed out: idle",
            r#"35.020s c event "BYE idle""#,
            "35.020s c eof",
            "35.020s c close peer closed the connection",
        ]
    );
}

#[test]
fn reply_waits_for_the_store_completion_and_input_waits_for_the_reply() {
    let mut p = pair(Options::default());
    p.resolve_b(|_now, w: &Write| {
        if w.value == "bad" {
            Resolution::After(Duration::from_millis(7), Stored::Failed)
        } else {
            Resolution::After(Duration::from_millis(5), Stored::Ok)
        }
    });
    p.settle();
    p.take_log();
    // Pipelined: the second STORE must not be read before the first is
    // durable (the server stops reading), and the ECHO behind them waits too.
    p.command_a("STORE a 1".into());
    p.command_a("STORE b bad".into());
    p.command_a("ECHO after".into());
    p.settle();
    assert_eq!(
        p.log(),
        [
            r#"0.000s c command "STORE a 1""#,
            r#"0.000s c send "STORE a 1\r\n""#,
            r#"0.000s c command "STORE b bad""#,
            r#"0.000s c send "STORE b bad\r\n""#,
            r#"0.000s c command "ECHO after""#,
            r#"0.000s c send "ECHO after\r\n""#,
            r#"0.000s s effect #1 Write { key: "a", value: "1" }"#,
            r#"0.005s s completion #1 Ok"#,
            r#"0.005s s send "OK stored a\r\n""#,
            r#"0.005s s event Stored("a")"#,
            r#"0.005s s effect #2 Write { key: "b", value: "bad" }"#,
            r#"0.005s c event "OK stored a""#,
            r#"0.012s s completion #2 Failed"#,
            r#"0.012s s send "NO store failed\r\n""#,
            r#"0.012s s send "after\r\n""#,
            r#"0.012s c event "NO store failed""#,
            r#"0.012s c event "after""#,
        ]
    );
    assert_eq!(
        p.events_b(),
        [(Time::from_millis(5), ServerEvent::Stored("a".into()))]
    );
}

#[test]
fn a_hung_effect_stops_reading_and_settle_returns() {
    let mut p = pair(Options::default());
    p.resolve_b(|_, _| Resolution::Never);
    p.settle();
    p.command_a("STORE a 1".into());
    p.command_a("ECHO never".into());
    p.settle();
    assert!(!p.b().wants_input());
    let log = p.take_log();
    assert_eq!(log.last().unwrap(), "0.000s s effect #1 hangs");
    // Only the idle timer is left; the ECHO is never read.
    assert_eq!(p.next_due_at(), Some(Time::from_millis(30_000)));
}

#[test]
fn layer_switch_at_the_same_byte_on_both_sides() {
    let mut p = pair(latency(1));
    p.settle();
    p.take_log();
    p.command_a("COMPRESS".into());
    p.settle();
    p.command_a("ECHO squeezed".into());
    p.settle();
    assert_eq!(
        p.log(),
        [
            r#"0.001s c command "COMPRESS""#,
            r#"0.001s c send "COMPRESS\r\n""#,
            r#"0.002s s send "OK DEFLATE active\r\n""#,
            r#"0.002s s layer deflate"#,
            r#"0.002s s send "* OK compressed\r\n""#,
            r#"0.003s c event "OK DEFLATE active""#,
            r#"0.003s c layer deflate"#,
            r#"0.003s c event "* OK compressed""#,
            r#"0.003s c command "ECHO squeezed""#,
            r#"0.003s c send "ECHO squeezed\r\n""#,
            r#"0.004s s send "squeezed\r\n""#,
            r#"0.005s c event "squeezed""#,
        ]
    );
}

#[test]
fn bytes_read_past_a_switch_are_handed_back_and_read_under_the_new_layer() {
    // As over TCP, the client reads the OK and the server's first
    // post-switch bytes in one read; it must hand the tail back.
    let mut p = pair(Options {
        coalesce: true,
        ..latency(1)
    });
    p.settle();
    p.take_log();
    p.command_a("COMPRESS".into());
    p.settle();
    assert_eq!(
        p.log()[3..],
        [
            r#"0.002s s layer deflate"#,
            r#"0.002s s send "* OK compressed\r\n""#,
            r#"0.003s c event "OK DEFLATE active""#,
            r#"0.003s c layer deflate (+17 bytes handed back)"#,
            r#"0.003s c event "* OK compressed""#,
        ]
    );
}

#[test]
#[should_panic(expected = "handed back a different number of bytes")]
fn a_switch_that_swallows_post_switch_bytes_is_caught() {
    let client = Client {
        drop_tail_at_switch: true,
        ..Client::default()
    };
    let mut p = Pair::with_names(
        client,
        "c",
        Server::new(Time::ZERO),
        "s",
        Options {
            coalesce: true,
            ..latency(1)
        },
    );
    p.settle();
    p.command_a("COMPRESS".into());
    p.settle();
}

#[test]
#[should_panic(expected = "layer desync")]
fn pipelining_past_a_layer_switch_is_caught() {
    // The client sends ECHO before it has seen `OK DEFLATE active`: in a real
    // connection the server would inflate plaintext. The harness refuses.
    let mut p = pair(latency(1));
    p.settle();
    p.command_a("COMPRESS".into());
    p.run_for(Duration::from_micros(1_500)); // COMPRESS is read, OK not yet seen
    p.command_a("ECHO too early".into());
    p.run_to_end();
}

#[test]
fn an_overlong_line_closes_with_a_limit() {
    let mut p = pair(Options::default());
    p.settle();
    p.command_a("ECHO ".to_string() + &"x".repeat(100));
    p.run_to_end();
    assert_eq!(
        p.closed_b(),
        Some(&CloseReason::LimitExceeded("line_bytes_max".into()))
    );
    assert_eq!(p.closed_a(), Some(&CloseReason::PeerClosed));
}

/// The conversation the client sees, for the chunking property.
fn conversation(chunk: Option<usize>) -> Vec<(Time, String)> {
    let mut p = pair(Options {
        chunk_bytes_max: chunk,
        ..latency(3)
    });
    p.resolve_b(|_, _| Resolution::After(Duration::from_millis(2), Stored::Ok));
    p.settle();
    for line in [
        "ECHO a b c",
        "STORE k v",
        "ECHO done",
        "NONSENSE",
        "COMPRESS",
    ] {
        p.command_a(line.into());
    }
    p.settle();
    p.command_a("ECHO compressed".into());
    p.command_a("QUIT".into());
    p.run_to_end();
    p.events_a().to_vec()
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_conversation(chunk in 1usize..40) {
        prop_assert_eq!(conversation(Some(chunk)), conversation(None));
    }
}

#[test]
fn the_same_calls_give_the_same_log() {
    let run = || {
        let mut p = pair(latency(4));
        p.resolve_b(|now, _| {
            Resolution::After(
                Duration::from_millis(1 + now.since_epoch().as_millis() as u64 % 3),
                Stored::Ok,
            )
        });
        p.settle();
        for i in 0..5 {
            p.command_a(format!("STORE k{i} v"));
        }
        p.run_to_end();
        p.take_log()
    };
    assert_eq!(run(), run());
}
