//! The driver over a real loopback TCP pair.

use std::time::Duration;

use engine::machine::{CloseReason, Time};
use io_tokio::driver::{Driver, NoEffects};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::{next_event, recording_store, KvServer, LineClient, NoStore, Write};

pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

#[tokio::test]
async fn a_whole_conversation_over_loopback() {
    let (c, s) = tcp_pair().await;
    let (store, writes) = recording_store(Duration::from_millis(20));
    let server = tokio::spawn(
        Driver::new(KvServer::new(Time::ZERO), store)
            .peer("client")
            .run(s),
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .commands(cmd_rx)
            .events(ev_tx)
            .run(c),
    );
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK toy"));
    // Pipelined: the STORE's reply waits for the store, the ECHO behind it
    // is not even read before then (KvServer asserts that).
    for line in ["ECHO hello", "STORE k v", "ECHO after", "NOPE", "QUIT"] {
        cmd_tx.send(line.to_owned()).await.unwrap();
    }
    let mut seen = Vec::new();
    while let Some(e) = next_event(&mut ev_rx).await {
        seen.push(e);
    }
    assert_eq!(seen, ["hello", "OK stored k", "after", "BAD", "BYE"]);
    let server = server.await.unwrap();
    let client = client.await.unwrap();
    assert_eq!(server.result.unwrap(), CloseReason::Done);
    assert_eq!(client.result.unwrap(), CloseReason::PeerClosed);
    assert_eq!(
        *writes.lock().unwrap(),
        [Write {
            key: "k".into(),
            value: "v".into()
        }]
    );
    // Every byte one side wrote, the other read.
    assert_eq!(server.bytes_written, client.bytes_read);
    assert_eq!(client.bytes_written, server.bytes_read);
    assert_eq!(
        client.bytes_written,
        "ECHO hello\r\nSTORE k v\r\nECHO after\r\nNOPE\r\nQUIT\r\n".len() as u64
    );
}

/// A peer that sends megabytes of requests while we send megabytes of
/// replies: a driver that did not read and write at the same time would
/// deadlock once both socket buffers fill.
#[tokio::test]
async fn reads_and_writes_at_the_same_time() {
    const LINES: usize = 20_000;
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    let (mut rd, mut wr) = c.into_split();
    let payload = "x".repeat(300);
    let writer = tokio::spawn(async move {
        let mut all = Vec::new();
        for i in 0..LINES {
            all.extend_from_slice(format!("ECHO {i:05} {payload}\r\n").as_bytes());
        }
        all.extend_from_slice(b"QUIT\r\n");
        // One huge write: the server must drain us while its replies pile up.
        wr.write_all(&all).await.unwrap();
        wr
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut received))
        .await
        .expect("deadlock: no EOF within 60 s")
        .unwrap();
    let _wr = writer.await.unwrap();
    let text = String::from_utf8(received).unwrap();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), LINES + 2, "banner, every echo, BYE");
    assert_eq!(lines[0], "* OK toy");
    assert!(lines[1].starts_with("00000 "));
    assert!(lines[LINES].starts_with(&format!("{:05} ", LINES - 1)));
    assert_eq!(lines[LINES + 1], "BYE");
    assert_eq!(server.await.unwrap().result.unwrap(), CloseReason::Done);
}

#[tokio::test]
async fn a_limit_closes_the_connection() {
    let (c, s) = tcp_pair().await;
    let mut machine = KvServer::new(Time::ZERO);
    machine.line_bytes_max = 16;
    let server = tokio::spawn(Driver::new(machine, NoStore).run(s));
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"ECHO this line is longer than sixteen bytes\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    rd.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, b"* OK toy\r\n");
    assert_eq!(
        server.await.unwrap().result.unwrap(),
        CloseReason::LimitExceeded("line_bytes_max".into())
    );
}

#[tokio::test]
async fn peer_eof_reaches_the_machine() {
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"ECHO bye\r\n").await.unwrap();
    wr.shutdown().await.unwrap();
    let mut received = Vec::new();
    rd.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, b"* OK toy\r\nbye\r\n");
    assert_eq!(
        server.await.unwrap().result.unwrap(),
        CloseReason::PeerClosed
    );
}

#[tokio::test]
async fn local_close_by_command() {
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .commands(cmd_rx)
            .events(ev_tx)
            .run(c),
    );
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK toy"));
    cmd_tx.send("!close".into()).await.unwrap();
    assert_eq!(next_event(&mut ev_rx).await, None);
    assert_eq!(
        client.await.unwrap().result.unwrap(),
        CloseReason::Local("done".into())
    );
    assert_eq!(
        server.await.unwrap().result.unwrap(),
        CloseReason::PeerClosed
    );
}

/// A machine that stores every line it reads and keeps reading while the
/// stores run; each completion becomes an event.
#[derive(Default)]
struct Recorder {
    buf: bytes::BytesMut,
    out: std::collections::VecDeque<engine::machine::Output<Write, String>>,
    ids: engine::machine::EffectIds,
    closed: bool,
}

impl engine::machine::Machine for Recorder {
    type Effect = Write;
    type Completion = crate::support::Stored;
    type Event = String;
    type Command = std::convert::Infallible;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some(line) = crate::support::take_line(&mut self.buf) {
            let id = self.ids.next_id();
            self.out.push_back(engine::machine::Output::Effect {
                id,
                effect: Write {
                    key: line,
                    value: String::new(),
                },
            });
        }
    }
    fn handle_eof(&mut self, _now: Time) {
        self.closed = true;
        self.out
            .push_back(engine::machine::Output::Close(CloseReason::PeerClosed));
    }
    fn handle_timeout(&mut self, _now: Time) {}
    fn handle_completion(
        &mut self,
        _now: Time,
        id: engine::machine::EffectId,
        _c: crate::support::Stored,
    ) {
        self.out
            .push_back(engine::machine::Output::Event(format!("done {id:?}")));
    }
    fn handle_command(&mut self, _now: Time, c: std::convert::Infallible) {
        match c {}
    }
    fn poll_output(&mut self) -> Option<engine::machine::Output<Write, String>> {
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

/// The peer resets the connection while a store runs: the driver ends with
/// the i/o error, but the store still completes and the machine still hears
/// of it.
#[tokio::test]
async fn effects_in_flight_complete_after_a_reset() {
    let (c, s) = tcp_pair().await;
    let (store, writes) = recording_store(Duration::from_millis(300));
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let server = tokio::spawn(Driver::new(Recorder::default(), store).events(ev_tx).run(s));
    let mut c = c;
    c.write_all(b"first\r\nsecond\r\n").await.unwrap();
    // Wait until both writes reached the store, then reset (RST, not FIN).
    while writes.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    c.set_zero_linger().unwrap();
    drop(c);
    let mut seen = Vec::new();
    while let Some(e) = next_event(&mut ev_rx).await {
        seen.push(e);
    }
    assert_eq!(seen, ["done #1", "done #2"]);
    let outcome = server.await.unwrap();
    assert!(
        matches!(&outcome.result, Err(io_tokio::driver::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{:?}",
        outcome.result
    );
}
