//! The client half of a MUPDATE slave: one connection to a master,
//! following it (`engine::mupdate::follower::Follower`).
//!
//! ```text
//!   connect ─▶ Banner (wait for "* OK MUPDATE …")
//!      ─▶ [PLAIN not offered, STARTTLS offered, `tls_server_name` set:
//!          S01 STARTTLS ─▶ TLS client layer ─▶ Banner again]
//!      ─▶ Auth: A01 AUTHENTICATE "PLAIN" {n+} <base64>   (bare-line challenges answered)
//!      ─▶ Dump: U01 UPDATE; MAILBOX/RESERVE lines collected (bounded)
//!      ─▶ on "U01 OK": Effect::Replace(dump) — the local copy becomes the dump
//!      ─▶ Streaming: each pushed MAILBOX/RESERVE/DELETE ─▶ Effect::Apply, in order
//!         idle for `noop_interval` ─▶ N<k> NOOP; unanswered at the next tick ─▶ close
//!         Command::Kick(n) ─▶ NOOP (after any in flight); Event::Kicked(n) when
//!         its OK came and every change before it is applied
//!   Banner, Auth and Dump close the connection when the master sends nothing
//!   for `handshake_idle_max`, so a master that dies (or a network that
//!   partitions) before the stream starts never leaves the slave waiting
//!   forever; the daemon then reconnects with back-off.
//! ```
//!
//! Like Cyrus's client side (backend.c: no usable mechanism, so STARTTLS
//! and ask again), the follower starts TLS only when the master's banner
//! offers no PLAIN — a master with Cyrus's default `allowplaintext: no` —
//! and offers STARTTLS. A banner that offers neither still gets PLAIN (the
//! master's refusal then closes the link, logged).
//!
//! This is what a real Cyrus slave does on the wire (`mupdate-slave-boot.txt`:
//! `A01 AUTHENTICATE "PLAIN" {20+}`, `U01 UPDATE`, `N<k> NOOP` when idle), so a
//! Cyrus master treats it as one of its own. Reconnecting is the daemon's job
//! (a new machine per connection, after [`backoff`]); every connection starts
//! with a full UPDATE, as in Cyrus.
//!
//! What it never does: decide what the local database keeps (it hands the
//! daemon the master's state), or log the password.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proto::frame::{Event as FrameEvent, Framer};
use proto::mupdate::{parse_response, Command as Cmd, Form, Response, Status};
use proto::sasl::{self, Credentials, Mechanism, Secret};

use super::db::{Entry, Record, State};
use crate::machine::{CloseReason, EffectId, EffectIds, Machine, Output, Time};

/// Settings of one follower connection.
#[derive(Debug, Clone)]
pub struct Options {
    /// `mupdate_authname`.
    pub authname: String,
    /// `mupdate_username` (the authorization id; empty = none).
    pub username: String,
    /// `mupdate_password`.
    pub password: Secret,
    /// Idle NOOP interval (`mupdate_retry_delay`, 20 s).
    pub noop_interval: Duration,
    /// Longest silence from the master tolerated before the update stream
    /// starts (banner, login, dump); past it the connection is closed as a
    /// timeout. It measures silence, not total time, so a long dump that
    /// keeps arriving is never cut.
    pub handshake_idle_max: Duration,
    /// Most entries held while the dump arrives.
    pub dump_entries_max: usize,
    /// Framer limits for the master's output.
    pub frame: proto::frame::Options,
    /// Start TLS (verifying the master as this name) when the banner
    /// offers STARTTLS but no PLAIN. `None`: never start TLS.
    pub tls_server_name: Option<String>,
}

impl Options {
    /// Defaults for `authname` / `password`.
    pub fn new(authname: impl Into<String>, password: Secret) -> Options {
        Options {
            authname: authname.into(),
            username: String::new(),
            password,
            noop_interval: Duration::from_secs(20),
            handshake_idle_max: Duration::from_secs(60),
            dump_entries_max: 10_000_000,
            frame: proto::mupdate::client_frame_options(),
            tls_server_name: None,
        }
    }
}

/// What the daemon does for the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the local copy exactly these entries (the UPDATE dump).
    Replace(Vec<Entry>),
    /// One pushed change: `Some` upserts, `None` removes (a missing name is
    /// fine: Cyrus pushes DELETE for names a subscriber never had).
    Apply {
        /// Mailbox name.
        name: Bytes,
        /// Its new record.
        record: Option<Record>,
    },
}

/// The daemon applied an [`Effect`] (or could not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Applied.
    Done,
    /// Could not be applied: the connection closes and the daemon retries.
    Failed(String),
}

/// What the daemon asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make the master flush: send a NOOP (after any NOOP already in flight,
    /// whose flush may predate the request) and report [`Event::Kicked`]
    /// with this number once its OK came and every change before it is
    /// applied. Numbers must increase.
    Kick(u64),
    /// Log out and close.
    Shutdown,
}

/// What the follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The master accepted our login.
    Authenticated,
    /// The dump is applied; streaming has started.
    Synced {
        /// Entries in the dump.
        entries: usize,
    },
    /// Every kick up to this number is done: the master flushed, and every
    /// change it sent before is applied (durable).
    Kicked(u64),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Banner,
    StartTls,
    Auth,
    Dump,
    Streaming,
}

/// The follower machine. See the module documentation.
pub struct Follower {
    opts: Options,
    framer: Framer,
    phase: Phase,
    sasl: sasl::Client,
    dump: Vec<Entry>,
    ids: EffectIds,
    in_flight: usize,
    /// The dump's Replace effect and its size, until it completes.
    replace_pending: Option<(EffectId, usize)>,
    outputs: VecDeque<Output<Effect, Event>>,
    out: Vec<u8>,
    noop_seq: u64,
    /// Tag of the NOOP awaiting its OK, and the highest kick it covers.
    noop_pending: Option<(String, u64)>,
    /// Highest kick requested but not yet covered by a sent NOOP.
    kick_wanted: u64,
    /// Highest kick whose NOOP was answered, reported once no effect is in
    /// flight.
    kick_answered: u64,
    kick_reported: u64,
    last_traffic: Time,
    closed: bool,
    /// This banner's `* AUTH` list offered PLAIN.
    plain_offered: bool,
    /// This banner offered `* STARTTLS`.
    starttls_offered: bool,
    /// TLS is on (after STARTTLS).
    tls_active: bool,
}

const STARTTLS_TAG: &[u8] = b"S01";
const AUTH_TAG: &[u8] = b"A01";
const UPDATE_TAG: &[u8] = b"U01";

impl Follower {
    /// A new connection at `now` (nothing is sent before the banner).
    pub fn new(now: Time, opts: Options) -> Follower {
        let creds = Credentials {
            authzid: (!opts.username.is_empty()).then(|| opts.username.clone()),
            authcid: opts.authname.clone(),
            password: opts.password.clone(),
        };
        Follower {
            framer: Framer::new(opts.frame.clone()),
            sasl: sasl::Client::new(Mechanism::Plain, creds),
            opts,
            phase: Phase::Banner,
            dump: Vec::new(),
            ids: EffectIds::default(),
            in_flight: 0,
            replace_pending: None,
            outputs: VecDeque::new(),
            out: Vec::new(),
            noop_seq: 0,
            noop_pending: None,
            kick_wanted: 0,
            kick_answered: 0,
            kick_reported: 0,
            last_traffic: now,
            closed: false,
            plain_offered: false,
            starttls_offered: false,
            tls_active: false,
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let b = Bytes::from(std::mem::take(&mut self.out));
            self.outputs.push_back(Output::Transmit(b));
        }
    }

    fn push(&mut self, o: Output<Effect, Event>) {
        self.flush();
        self.outputs.push_back(o);
    }

    fn close(&mut self, r: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.push(Output::Close(r));
        }
    }

    fn effect(&mut self, e: Effect) -> EffectId {
        let id = self.ids.next_id();
        self.in_flight += 1;
        self.push(Output::Effect { id, effect: e });
        id
    }

    fn send_noop(&mut self, kick: u64) {
        // Cyrus's slave numbers its NOOPs from N0.
        let tag = format!("N{}", self.noop_seq);
        self.noop_seq += 1;
        self.out
            .extend_from_slice(&Cmd::Noop.encode(tag.as_bytes(), Form::NonSync));
        self.noop_pending = Some((tag, kick));
    }

    fn on_response(&mut self, now: Time, r: Response) {
        match (&self.phase, r) {
            (Phase::Banner, Response::Auth(mechs)) => {
                self.plain_offered = mechs
                    .iter()
                    .any(|m| m.value().eq_ignore_ascii_case(b"PLAIN"));
            }
            (Phase::Banner, Response::Starttls) => self.starttls_offered = true,
            (Phase::Banner, Response::Ready { .. })
                if !self.plain_offered
                    && self.starttls_offered
                    && !self.tls_active
                    && self.opts.tls_server_name.is_some() =>
            {
                self.out.extend_from_slice(STARTTLS_TAG);
                self.out.extend_from_slice(b" STARTTLS\r\n");
                self.phase = Phase::StartTls;
            }
            (Phase::StartTls, Response::Reply(r)) if r.tag[..] == *STARTTLS_TAG => {
                if r.status != Status::Ok {
                    return self
                        .close(CloseReason::PeerError("the master refused STARTTLS".into()));
                }
                let server_name = self.opts.tls_server_name.clone().expect("checked");
                let rest = self.framer.take_unconsumed().freeze();
                self.tls_active = true;
                self.plain_offered = false;
                self.starttls_offered = false;
                self.phase = Phase::Banner;
                self.push(Output::StartLayer {
                    layer: crate::machine::Layer::TlsClient { server_name },
                    input_after_switch: rest,
                });
            }
            (Phase::Banner, Response::Ready { .. }) => {
                // Exactly what Cyrus clients send: the mechanism quoted (a
                // Cyrus master refuses an atom), the initial response as a
                // `{n+}` literal.
                let ir = self.sasl.initial_response().expect("PLAIN has one");
                let b64 = sasl::encode(ir.expose());
                self.out.extend_from_slice(AUTH_TAG);
                self.out.extend_from_slice(
                    format!(" AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{b64}\r\n", b64.len()).as_bytes(),
                );
                self.phase = Phase::Auth;
            }
            (Phase::Banner, _) => {}
            (Phase::Auth, Response::Challenge(c)) => match base64_step(&mut self.sasl, &c) {
                Some(line) => {
                    self.out.extend_from_slice(line.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                }
                None => self.out.extend_from_slice(b"*\r\n"),
            },
            (Phase::Auth, Response::Reply(r)) if r.tag[..] == *AUTH_TAG => {
                if r.status == Status::Ok {
                    self.push(Output::Event(Event::Authenticated));
                    self.out.extend_from_slice(
                        &Cmd::Update { hosts: Vec::new() }.encode(UPDATE_TAG, Form::NonSync),
                    );
                    self.phase = Phase::Dump;
                } else {
                    self.close(CloseReason::PeerError(
                        "the master refused our login".into(),
                    ));
                }
            }
            (
                Phase::Dump,
                Response::Mailbox {
                    name,
                    location,
                    acl,
                    ..
                },
            ) => self.collect(
                name.into_value(),
                Record {
                    state: State::Active {
                        acl: acl.into_value(),
                    },
                    location: location.into_value(),
                },
            ),
            (Phase::Dump, Response::Reserve { name, location, .. }) => self.collect(
                name.into_value(),
                Record {
                    state: State::Reserved,
                    location: location.into_value(),
                },
            ),
            (Phase::Dump, Response::Reply(r)) if r.tag[..] == *UPDATE_TAG => {
                if r.status == Status::Ok {
                    let dump = std::mem::take(&mut self.dump);
                    let n = dump.len();
                    // Synced is reported when the Replace completes: a
                    // daemon that opens to clients (and a frontend that
                    // routes) on Synced must find the dump stored.
                    let id = self.effect(Effect::Replace(dump));
                    self.replace_pending = Some((id, n));
                    self.phase = Phase::Streaming;
                    if self.kick_wanted > 0 {
                        {
                            let k = std::mem::take(&mut self.kick_wanted);
                            self.send_noop(k);
                        }
                    }
                } else {
                    self.close(CloseReason::PeerError("the master refused UPDATE".into()));
                }
            }
            (
                Phase::Streaming,
                Response::Mailbox {
                    name,
                    location,
                    acl,
                    ..
                },
            ) => {
                let record = Some(Record {
                    state: State::Active {
                        acl: acl.into_value(),
                    },
                    location: location.into_value(),
                });
                self.effect(Effect::Apply {
                    name: name.into_value(),
                    record,
                });
            }
            (Phase::Streaming, Response::Reserve { name, location, .. }) => {
                let record = Some(Record {
                    state: State::Reserved,
                    location: location.into_value(),
                });
                self.effect(Effect::Apply {
                    name: name.into_value(),
                    record,
                });
            }
            (Phase::Streaming, Response::Delete { name, .. }) => {
                self.effect(Effect::Apply {
                    name: name.into_value(),
                    record: None,
                });
            }
            (Phase::Streaming, Response::Reply(r))
                if self
                    .noop_pending
                    .as_ref()
                    .is_some_and(|(t, _)| r.tag[..] == *t.as_bytes()) =>
            {
                let (_, kick) = self.noop_pending.take().expect("checked");
                if r.status != Status::Ok {
                    self.close(CloseReason::PeerError("the master refused NOOP".into()));
                } else {
                    self.kick_answered = self.kick_answered.max(kick);
                    self.report_kicks();
                    if self.kick_wanted > 0 {
                        {
                            let k = std::mem::take(&mut self.kick_wanted);
                            self.send_noop(k);
                        }
                    }
                }
            }
            (_, Response::Reply(r)) if r.status == Status::Bye => {
                self.close(CloseReason::PeerClosed);
            }
            (_, other) => {
                let _ = other;
                self.close(CloseReason::PeerError(
                    "unexpected response from the master".into(),
                ));
            }
        }
        let _ = now;
    }

    /// Reports answered kicks once every change sent before them is applied.
    fn report_kicks(&mut self) {
        if self.in_flight == 0 && self.kick_answered > self.kick_reported {
            self.kick_reported = self.kick_answered;
            self.push(Output::Event(Event::Kicked(self.kick_answered)));
        }
    }

    fn collect(&mut self, name: Bytes, record: Record) {
        if self.dump.len() >= self.opts.dump_entries_max {
            self.close(CloseReason::LimitExceeded("UPDATE dump too large".into()));
            return;
        }
        self.dump.push(Entry { name, record });
    }
}

/// Answers a bare base64 challenge line; `None` to cancel.
fn base64_step(client: &mut sasl::Client, line: &[u8]) -> Option<String> {
    let challenge = match sasl::decode_response(line, &sasl::Options::default()).ok()? {
        sasl::Response::Data(d) => d,
        sasl::Response::Cancel => return None,
    };
    client
        .step(challenge.expose())
        .ok()
        .map(|r| sasl::encode(r.expose()))
}

/// The delay before reconnect attempt `attempt` (0-based): Cyrus waits
/// `retry_delay + rand(retry_delay / 2)`; here the random part comes from
/// `jitter` in `[0, 1)`, supplied by the caller, and repeated failures
/// double the base up to 8×.
pub fn backoff(retry_delay: Duration, attempt: u32, jitter: f64) -> Duration {
    let base = retry_delay * (1u32 << attempt.min(3));
    base + retry_delay.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

impl Machine for Follower {
    type Effect = Effect;
    type Completion = Completion;
    type Event = Event;
    type Command = Command;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.last_traffic = now;
        self.framer.handle_input(bytes);
        loop {
            match self.framer.poll_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::Message(m))) => match parse_response(&m) {
                    Ok(r) => self.on_response(now, r),
                    Err(_) => self.close(CloseReason::PeerError(
                        "malformed response from the master".into(),
                    )),
                },
                Ok(Some(FrameEvent::Refused(_))) => self.close(CloseReason::LimitExceeded(
                    "response over the size limit".into(),
                )),
                Ok(Some(_)) => {}
                Err(e) => self.close(CloseReason::PeerError(e.to_string())),
            }
            if self.closed {
                break;
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        self.close(CloseReason::PeerClosed);
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.closed {
            return;
        }
        if self.phase != Phase::Streaming {
            if now.saturating_since(self.last_traffic) >= self.opts.handshake_idle_max {
                self.close(CloseReason::Timeout(
                    "the master went silent before the update stream started".into(),
                ));
            }
            return;
        }
        if now.saturating_since(self.last_traffic) < self.opts.noop_interval {
            return;
        }
        if self.noop_pending.is_some() {
            // Cyrus declares the master dead when its NOOP goes unanswered
            // for a whole interval.
            self.close(CloseReason::Timeout(
                "the master did not answer NOOP".into(),
            ));
            return;
        }
        self.send_noop(0);
        self.last_traffic = now;
    }

    fn handle_completion(&mut self, _now: Time, id: EffectId, completion: Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Completion::Failed(e) = completion {
            self.close(CloseReason::EffectFailed(e));
            return;
        }
        if let Some((want, entries)) = self.replace_pending {
            if want == id {
                self.replace_pending = None;
                self.push(Output::Event(Event::Synced { entries }));
            }
        }
        self.report_kicks();
    }

    fn handle_command(&mut self, _now: Time, command: Command) {
        if self.closed {
            return;
        }
        match command {
            Command::Kick(n) => {
                self.kick_wanted = self.kick_wanted.max(n);
                if self.phase == Phase::Streaming && self.noop_pending.is_none() {
                    {
                        let k = std::mem::take(&mut self.kick_wanted);
                        self.send_noop(k);
                    }
                }
            }
            Command::Shutdown => {
                self.out
                    .extend_from_slice(&Cmd::Logout.encode(b"Q01", Form::NonSync));
                self.close(CloseReason::Local("shutdown".into()));
            }
        }
    }

    fn poll_output(&mut self) -> Option<Output<Effect, Event>> {
        self.flush();
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.closed {
            return None;
        }
        if self.phase != Phase::Streaming {
            return self.last_traffic.checked_add(self.opts.handshake_idle_max);
        }
        self.last_traffic.checked_add(self.opts.noop_interval)
    }

    fn wants_input(&self) -> bool {
        // Effects are applied in emission order by the daemon; a bounded
        // number in flight keeps memory bounded under a fast stream.
        !self.closed && self.in_flight < 1024
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}
