//! Test-only machines and helpers shared by the driver tests: a line-based
//! key-value server (effects, idle timer, COMPRESS, STARTTLS) and a line
//! client driven by commands.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use engine::machine::{CloseReason, EffectId, EffectIds, Layer, Machine, Output, Time};
use io_tokio::driver::FnExecutor;
use tokio::sync::mpsc;

/// Splits one CRLF line off the front of `buf`.
pub fn take_line(buf: &mut BytesMut) -> Option<String> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = buf.split_to(end + 2);
    Some(String::from_utf8_lossy(&line[..end]).into_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Ok,
}

/// The toy server. Commands: `ECHO x`, `STORE k v` (effect; `OK stored k`
/// only after the completion; no reading meanwhile), `COMPRESS`,
/// `STARTTLS`, `QUIT`. Says `BYE idle` and closes after `idle` of silence.
pub struct KvServer {
    buf: BytesMut,
    out: VecDeque<Output<Write, String>>,
    ids: EffectIds,
    waiting: Option<(EffectId, String)>,
    idle: Duration,
    idle_at: Time,
    closed: bool,
    compressed: bool,
    tls: bool,
    pub line_bytes_max: usize,
}

impl KvServer {
    pub fn new(now: Time) -> Self {
        Self::with_idle(now, Duration::from_secs(30))
    }

    pub fn with_idle(now: Time, idle: Duration) -> Self {
        let mut s = KvServer {
            buf: BytesMut::new(),
            out: VecDeque::new(),
            ids: EffectIds::default(),
            waiting: None,
            idle,
            idle_at: now + idle,
            closed: false,
            compressed: false,
            tls: false,
            line_bytes_max: 4096,
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
            let end = self.buf.windows(2).position(|w| w == b"\r\n");
            if end.unwrap_or(self.buf.len()) > self.line_bytes_max {
                self.close(CloseReason::LimitExceeded("line_bytes_max".into()));
                return;
            }
            let Some(line) = take_line(&mut self.buf) else {
                return;
            };
            self.idle_at = now + self.idle;
            let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
            match verb {
                "ECHO" => self.send(rest),
                "STORE" => {
                    let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
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
                "COMPRESS" if !self.compressed => {
                    self.compressed = true;
                    self.send("OK DEFLATE active");
                    let rest = self.buf.split().freeze();
                    self.out.push_back(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: rest,
                    });
                    self.send("* OK compressed");
                }
                "STARTTLS" if !self.tls && !self.compressed => {
                    self.tls = true;
                    self.send("OK Begin TLS negotiation now");
                    let rest = self.buf.split().freeze();
                    self.out.push_back(Output::StartLayer {
                        layer: Layer::TlsServer,
                        input_after_switch: rest,
                    });
                    // Like Cyrus: the banner again, under TLS.
                    self.send("* OK tls");
                }
                "QUIT" => {
                    self.send("BYE");
                    self.close(CloseReason::Done);
                }
                _ => {
                    self.send("BAD");
                    self.out.push_back(Output::Event(format!("bad {verb}")));
                }
            }
        }
    }
}

impl Machine for KvServer {
    type Effect = Write;
    type Completion = Stored;
    type Event = String;
    type Command = Infallible;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        // The driver must honour wants_input: feeding us now is its bug.
        assert!(
            self.wants_input(),
            "driver fed input while the machine did not want it"
        );
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
                self.out.push_back(Output::Event(format!("stored {key}")));
            }
        }
        self.process(now);
    }

    fn handle_command(&mut self, _now: Time, command: Infallible) {
        match command {}
    }

    fn poll_output(&mut self) -> Option<Output<Write, String>> {
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

/// The toy client: each command is a line to send (`!close` closes); each
/// line received is an event; it follows the server into COMPRESS and TLS.
#[derive(Default)]
pub struct LineClient {
    buf: BytesMut,
    out: VecDeque<Output<Infallible, String>>,
    compress_sent: bool,
    starttls_sent: bool,
    closed: bool,
}

impl Machine for LineClient {
    type Effect = Infallible;
    type Completion = Infallible;
    type Event = String;
    type Command = String;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(line) = take_line(&mut self.buf) {
            let layer = if self.compress_sent && line == "OK DEFLATE active" {
                self.compress_sent = false;
                Some(Layer::Deflate)
            } else if self.starttls_sent && line == "OK Begin TLS negotiation now" {
                self.starttls_sent = false;
                Some(Layer::TlsClient {
                    server_name: "localhost".into(),
                })
            } else {
                None
            };
            self.out.push_back(Output::Event(line));
            if let Some(layer) = layer {
                let rest = self.buf.split().freeze();
                self.out.push_back(Output::StartLayer {
                    layer,
                    input_after_switch: rest,
                });
                return;
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Output::Close(CloseReason::PeerClosed));
        }
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn handle_completion(&mut self, _now: Time, _id: EffectId, completion: Infallible) {
        match completion {}
    }

    fn handle_command(&mut self, _now: Time, line: String) {
        if self.closed {
            return;
        }
        if line == "!close" {
            self.closed = true;
            self.out
                .push_back(Output::Close(CloseReason::Local("done".into())));
            return;
        }
        self.compress_sent |= line == "COMPRESS";
        self.starttls_sent |= line == "STARTTLS";
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

type StoreFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Stored> + Send>>;

/// A store that records writes and completes them after `delay` (tokio
/// time, so turmoil's clock applies).
#[allow(clippy::type_complexity)] // returns an opaque closure type
pub fn recording_store(
    delay: Duration,
) -> (
    FnExecutor<impl Fn(Write) -> StoreFuture + Clone>,
    Arc<Mutex<Vec<Write>>>,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let exec = FnExecutor(move |w: Write| {
        log2.lock().unwrap().push(w);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Stored::Ok
        }) as StoreFuture
    });
    (exec, log)
}

/// The next event, or a panic naming what was expected if none comes
/// within 20 s (a hang guard, not a timing assertion).
pub async fn next_event(events: &mut mpsc::Receiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("no event within 20 s: the connection hangs")
}

/// An executor for a server that is never asked to store.
#[derive(Clone, Copy)]
pub struct NoStore;

impl io_tokio::driver::EffectExecutor<Write> for NoStore {
    type Completion = Stored;
    async fn execute(&self, _w: Write) -> Stored {
        panic!("no store in this test")
    }
}
