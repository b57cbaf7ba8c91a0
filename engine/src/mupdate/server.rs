//! The MUPDATE server session: one connection of a master (or of a slave
//! serving its local clients read-only), as a [`Machine`].
//!
//! ```text
//!            banner (* AUTH, [* STARTTLS], [* COMPRESS], * PARTIAL-UPDATE, * OK MUPDATE)
//!              │
//!              ▼
//!   ┌──▶ NotAuth ──STARTTLS──▶ TLS, banner again, NotAuth
//!   │      │ ──COMPRESS──▶ deflate, NotAuth (allowed before login, as Cyrus)
//!   │      │ AUTHENTICATE ─▶ Sasl (bare base64 challenges) ─▶ Effect::Authenticate
//!   │      │     fail / not an admin ─▶ pause ─▶ NO "undefined error!"
//!   │      ▼ OK "Authenticated"
//!   │    Auth ── FIND / LIST / NOOP ; writes ─▶ Effect::Write ─▶ OK "done" | NO
//!   │      │ UPDATE ─▶ Effect::Subscribe ─▶ dump, OK "streaming starts"
//!   │      ▼
//!   │    Streaming ── Command::Change ─▶ tagged MAILBOX/RESERVE/DELETE at once
//!   │      │ NOOP ─▶ OK "Noop done"; anything else BAD "not legal when streaming"
//!   └──── LOGOUT (any state) ─▶ OK "bye-bye", close
//! ```
//!
//! Reply texts are Cyrus 3.6.1's, byte for byte (`research/mupdate.md` §3–§5),
//! including its unquoted STARTTLS/COMPRESS/cancel texts. Where Cyrus
//! crashes (§9) this machine answers: oversized words, quoted strings and
//! literals are framed away by [`proto::frame`] and refused with `BAD`; a
//! DELETE/DEACTIVATE of a missing name gets `NO` from
//! [`crate::mupdate::db::Database::decide`]; STARTTLS is the driver's
//! per-connection TLS, with no shared state to race on.
//!
//! Commands are handled strictly one at a time: while an effect (auth
//! check, write, subscription) or the failed-login pause is pending, the
//! machine reads no further commands ([`Machine::wants_input`] is false)
//! and the framer keeps at most one input chunk plus one message.
//!
//! What it never does: decide a write itself (the daemon calls
//! `Database::decide` under its lock), check a password, or log a
//! credential.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::frame::{self, Event as FrameEvent, Framer, RefusalReason};
use proto::mupdate::{parse_command, parse_head, Command as Cmd, Form, Response, Str, Verb};
use proto::sasl::{self, Credentials, Mechanism, ServerStep};

use super::db::{Change, Entry, Record, Refusal, State, Write};
use crate::machine::{CloseReason, EffectId, EffectIds, Layer, Machine, Output, Time};

/// Synchronous reads of the database (FIND, LIST).
pub trait Read {
    /// The record of `name`.
    fn find(&self, name: &[u8]) -> Option<Record>;
    /// Every entry whose location starts with `prefix` (all for `None`), in
    /// name order.
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry>;
}

impl Read for super::db::Database {
    fn find(&self, name: &[u8]) -> Option<Record> {
        super::db::Database::find(self, name).cloned()
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        super::db::Database::list(self, prefix)
    }
}

impl<R: Read + ?Sized> Read for Arc<R> {
    fn find(&self, name: &[u8]) -> Option<Record> {
        (**self).find(name)
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        (**self).list(prefix)
    }
}

/// Whether this server accepts writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The authoritative master: banner `"(master)"`, writes accepted.
    Master,
    /// A slave serving its replica: banner `"mupdate://<upstream>"`, writes
    /// refused with `BAD "read-only session"`.
    Slave {
        /// The master as configured (`mupdate_server`), shown verbatim.
        upstream: String,
    },
}

/// Configuration and limits of one session.
#[derive(Debug, Clone)]
pub struct Options {
    /// First banner string (`servername`).
    pub server_name: String,
    /// Second banner string.
    pub implementation: String,
    /// Third banner string.
    pub version: String,
    /// Master or slave.
    pub role: Role,
    /// SASL mechanisms offered in `* AUTH` (in that order) and accepted
    /// while the connection is in the clear. With Cyrus's default
    /// `allowplaintext: no` this is empty (libsasl withholds PLAIN/LOGIN
    /// without a security layer), which is what makes a Cyrus client start
    /// TLS: the daemon computes it with `io_tokio::auth::offered_mechanisms`.
    pub mechanisms: Vec<Mechanism>,
    /// The same once the connection is under TLS (after STARTTLS, or
    /// [`Options::tls_active`] from the start).
    pub mechanisms_tls: Vec<Mechanism>,
    /// Offer and accept STARTTLS (the driver must have a server TLS config).
    pub starttls: bool,
    /// Offer and accept `COMPRESS "DEFLATE"`.
    pub compress: bool,
    /// The connection is already under TLS (no `* STARTTLS` offered).
    pub tls_active: bool,
    /// Delay before every failed-login `NO` (Cyrus `failedloginpause`, 3 s).
    pub failed_login_pause: Duration,
    /// A session that completes no command for this long is closed (Cyrus:
    /// 3 h). The clock restarts on a whole command, never on a partial one,
    /// so a peer dribbling one byte at a time cannot hold its slot forever
    /// (SECURITY.md W4). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Framer limits (line, literal sizes).
    pub frame: frame::Options,
    /// SASL limits.
    pub sasl: sasl::Options,
    /// Changes held for a subscriber whose dump is still being taken; more
    /// closes the session (the daemon's channel bounds this too).
    pub pending_changes_max: usize,
    /// On a slave, a client's NOOP first makes the master flush (see
    /// [`Effect::Kick`]); off, NOOP answers at once.
    pub kick_upstream: bool,
    /// How data strings are sent: [`Form::NonSync`] (`{n+}`, what Cyrus
    /// 3.6 sends and its clients read) or [`Form::Quoted`] where possible
    /// (the portable choice for Cyrus 3.8.3, whose clients rejected `{n+}`:
    /// cyrus-imapd #4932).
    pub data_form: Form,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server_name: "localhost".into(),
            implementation: "corvid".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            role: Role::Master,
            mechanisms: vec![Mechanism::Plain],
            mechanisms_tls: vec![Mechanism::Plain],
            starttls: false,
            compress: true,
            tls_active: false,
            failed_login_pause: Duration::from_secs(3),
            idle_timeout: Some(Duration::from_secs(180 * 60)),
            frame: proto::mupdate::server_frame_options(),
            sasl: sasl::Options::default(),
            pending_changes_max: 65_536,
            data_form: Form::NonSync,
            kick_upstream: false,
        }
    }
}

/// Proof that a write is durable. Only the daemon's commit path creates it
/// (after its transaction committed), and `OK "done"` needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    _private: (),
}

impl Committed {
    /// For a store, right after the transaction holding the change
    /// committed. Calling it anywhere else breaks "OK means durable".
    pub fn after_commit() -> Committed {
        Committed { _private: () }
    }

    /// For a store asked to write something it already holds: nothing to
    /// make durable, so nothing can be lost.
    pub fn after_commit_of_nothing() -> Committed {
        Committed { _private: () }
    }
}

/// What the machine asks the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Check these credentials; answer [`Completion::Auth`].
    Authenticate(Credentials),
    /// Decide (with `Database::decide`, under the database lock), commit,
    /// publish to subscribers; answer [`Completion::Written`].
    Write(Write),
    /// Register this connection's command channel as a subscriber for
    /// `hosts` (all if empty) and take the dump (`Database::dump`) under the
    /// same lock; answer [`Completion::Subscribed`].
    Subscribe {
        /// PARTIAL-UPDATE hosts.
        hosts: Vec<Bytes>,
    },
    /// Slave only (with [`Options::kick_upstream`]): make the master flush
    /// (the slave's link sends it a NOOP) and answer [`Completion::Kicked`]
    /// once everything it sent before that NOOP's OK is durable here. This
    /// is how a NOOP on a Cyrus slave behaves.
    Kick,
}

/// The result of an [`Effect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The password check ran: `None` if rejected, else whether the
    /// identity may use MUPDATE (Cyrus: only `admins`) and who it is.
    Auth(Option<AuthOk>),
    /// The password check could not run (saslauthd down): like a rejection
    /// for the client, logged by the daemon.
    AuthUnavailable,
    /// The write was decided: durable, or refused with a `NO`.
    Written(Result<Committed, Refusal>),
    /// The write could not be made durable: the session ends.
    WriteFailed(String),
    /// The subscription is registered; the dump as of that moment.
    Subscribed(Vec<Entry>),
    /// The kick is done (or gave up: the NOOP is answered either way).
    Kicked,
}

/// A successful password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOk {
    /// The identity the session acts as.
    pub userid: String,
    /// Whether it is in `admins` (required to use MUPDATE at all).
    pub admin: bool,
}

/// What the daemon tells a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A committed change, for UPDATE subscribers (others ignore it).
    Change(Arc<Change>),
    /// The daemon dropped this subscriber (its channel overflowed): the
    /// session closes, the slave reconnects and gets a fresh dump.
    Lagged,
    /// Close the session (server shutdown).
    Shutdown,
}

/// What the session tells the application (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client logged in as this identity.
    Authenticated(String),
    /// A login failed for this authentication identity (never a password).
    AuthFailed(String),
    /// A client became an UPDATE subscriber.
    Subscribed {
        /// Entries in its dump.
        dump_entries: usize,
    },
    /// A write was refused with `NO` (client's doing, e.g. a name taken).
    WriteRefused(Refusal),
    /// A tagged answer was queued: one per command, for
    /// `corvid_commands_total`. Both fields come from small fixed sets, so
    /// a peer cannot grow the metric's label space.
    Answered {
        /// The command's verb (`FIND`, `ACTIVATE` …), `_unknown` for a
        /// word that is none, `_refused` for a line the framer refused.
        command: &'static str,
        /// `OK`, `NO` or `BAD`.
        status: &'static str,
    },
}

enum Phase {
    NotAuth,
    Sasl { tag: Bytes, server: sasl::Server },
    Auth,
    Streaming { tag: Bytes, hosts: Vec<Bytes> },
}

enum Wait {
    Idle,
    Auth {
        id: EffectId,
        tag: Bytes,
    },
    Write {
        id: EffectId,
        tag: Bytes,
    },
    Kick {
        id: EffectId,
        tag: Bytes,
    },
    Subscribe {
        id: EffectId,
        tag: Bytes,
        hosts: Vec<Bytes>,
        early: Vec<Arc<Change>>,
    },
    /// Failed-login pause: at `until`, send `tag NO "undefined error!"`.
    Pause {
        until: Time,
        tag: Bytes,
    },
}

/// The MUPDATE server session. See the module documentation.
pub struct Server<R> {
    read: R,
    opts: Options,
    framer: Framer,
    phase: Phase,
    wait: Wait,
    ids: EffectIds,
    out: Vec<u8>,
    outputs: VecDeque<Output<Effect, Event>>,
    tls_active: bool,
    compress_active: bool,
    closed: bool,
    /// When the last whole command arrived (or the session began, or a
    /// pending effect ended): the idle clock's origin.
    last_command: Time,
    /// The verb of the command being answered, for [`Event::Answered`].
    current: &'static str,
}

const NO_AUTH: &str = "undefined error!";

impl<R: Read> Server<R> {
    /// A new session at `now`; the banner is queued.
    pub fn new(now: Time, read: R, opts: Options) -> Self {
        let mut s = Server {
            read,
            framer: Framer::new(opts.frame.clone()),
            tls_active: opts.tls_active,
            opts,
            phase: Phase::NotAuth,
            wait: Wait::Idle,
            ids: EffectIds::default(),
            out: Vec::new(),
            outputs: VecDeque::new(),
            compress_active: false,
            closed: false,
            last_command: now,
            current: "_unknown",
        };
        s.banner();
        s
    }

    /// The mechanisms on offer now: libsasl re-evaluates them under TLS.
    fn mechanisms(&self) -> &[Mechanism] {
        if self.tls_active {
            &self.opts.mechanisms_tls
        } else {
            &self.opts.mechanisms
        }
    }

    fn banner(&mut self) {
        let mechs = self
            .mechanisms()
            .iter()
            .map(|m| Str::with_form(m.name(), Form::Quoted).expect("mechanism names are plain"))
            .collect();
        let mut lines = vec![Response::Auth(mechs)];
        if self.opts.starttls && !self.tls_active {
            lines.push(Response::Starttls);
        }
        if self.opts.compress && !self.compress_active {
            lines.push(Response::Compress(vec![Str::with_form(
                "DEFLATE",
                Form::Quoted,
            )
            .expect("plain")]));
        }
        lines.push(Response::PartialUpdate);
        let q = |s: &str| {
            Str::new(Bytes::copy_from_slice(
                s.replace(['\r', '\n', '\0'], " ").as_bytes(),
            ))
            .expect("sanitized")
        };
        let source = match &self.opts.role {
            Role::Master => "(master)".to_string(),
            Role::Slave { upstream } => format!("mupdate://{upstream}"),
        };
        lines.push(Response::Ready {
            server: q(&self.opts.server_name),
            implementation: q(&self.opts.implementation),
            version: q(&self.opts.version),
            source: q(&source),
        });
        for l in lines {
            l.encode_into(&mut self.out);
        }
    }

    /// Notes the answer to a command (tagged, or `*` when the tag could
    /// not be read). The event goes straight to the queue
    /// without flushing `out`, so answers stay batched in one transmit;
    /// its order relative to the bytes does not matter to a counter.
    fn answered(&mut self, status: &str) {
        let status = match status {
            "OK" => "OK",
            "NO" => "NO",
            _ => "BAD",
        };
        self.outputs.push_back(Output::Event(Event::Answered {
            command: self.current,
            status,
        }));
    }

    /// `tag STATUS "text"`.
    fn reply(&mut self, tag: &[u8], status: &str, text: &str) {
        self.answered(status);
        self.out.extend_from_slice(tag);
        self.out.push(b' ');
        self.out.extend_from_slice(status.as_bytes());
        self.out.extend_from_slice(b" \"");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\"\r\n");
    }

    /// `tag STATUS text` without quotes (Cyrus's STARTTLS/COMPRESS/cancel).
    fn reply_bare(&mut self, tag: &[u8], status: &str, text: &[u8]) {
        self.answered(status);
        self.out.extend_from_slice(tag);
        self.out.push(b' ');
        self.out.extend_from_slice(status.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(text);
        self.out.extend_from_slice(b"\r\n");
    }

    fn data_str(&self, v: &Bytes) -> Str {
        match self.opts.data_form {
            Form::Quoted => Str::new(v.clone()),
            f => Str::with_form(v.clone(), f),
        }
        .unwrap_or_else(|_| Str::literal(v.clone()).expect("stored values hold no NUL"))
    }

    fn entry_line(&mut self, tag: &Bytes, name: &Bytes, record: Option<&Record>) {
        let name = self.data_str(name);
        let resp = match record {
            Some(Record {
                state: State::Active { acl },
                location,
            }) => Response::Mailbox {
                tag: tag.clone(),
                name,
                location: self.data_str(location),
                acl: self.data_str(acl),
            },
            Some(Record {
                state: State::Reserved,
                location,
            }) => Response::Reserve {
                tag: tag.clone(),
                name,
                location: self.data_str(location),
            },
            None => Response::Delete {
                tag: tag.clone(),
                name,
            },
        };
        resp.encode_into(&mut self.out);
    }

    fn flush_out(&mut self) {
        if !self.out.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.out));
            self.outputs.push_back(Output::Transmit(bytes));
        }
    }

    fn push(&mut self, o: Output<Effect, Event>) {
        self.flush_out();
        self.outputs.push_back(o);
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.push(Output::Close(reason));
        }
    }

    fn effect(&mut self, effect: Effect) -> EffectId {
        let id = self.ids.next_id();
        self.push(Output::Effect { id, effect });
        id
    }

    fn blocked(&self) -> bool {
        !matches!(self.wait, Wait::Idle)
    }

    /// Handles framed messages until blocked, closed or out of input.
    fn pump(&mut self, now: Time) {
        while !self.closed && !self.blocked() {
            match self.framer.poll_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::ContinuationNeeded { .. })) => {
                    self.out.extend_from_slice(b"+ go ahead\r\n")
                }
                Ok(Some(FrameEvent::Message(m))) => self.on_message(now, m),
                Ok(Some(FrameEvent::Refused(r))) => self.on_refused(now, r),
                // Literal bodies are inline with our options; a streamed one
                // would be refused by its message anyway.
                Ok(Some(
                    FrameEvent::LiteralStart(_)
                    | FrameEvent::LiteralChunk(_)
                    | FrameEvent::LiteralEnd,
                )) => {}
                Err(e) => {
                    self.out.extend_from_slice(b"* BYE \"protocol error\"\r\n");
                    self.close(CloseReason::PeerError(e.to_string()));
                }
            }
        }
    }

    fn on_refused(&mut self, now: Time, r: frame::Refusal) {
        // A refused message was still framed whole: it counts as a command.
        self.last_command = now;
        self.current = "_refused";
        let tag = match r.head.iter().position(|&b| b == b' ') {
            Some(i) if i > 0 => r.head.slice(..i),
            _ => Bytes::from_static(b"*"),
        };
        if matches!(self.phase, Phase::Sasl { .. }) {
            // An over-long SASL response: fail the exchange.
            self.sasl_failed(tag_of_sasl(&self.phase));
            return;
        }
        let text = match (r.reason, r.at_sync_literal) {
            // Cyrus's answer to a synchronising literal over maxliteral.
            (_, true) => "Extra arguments",
            (RefusalReason::LineTooLong, _) => "Line too long",
            (RefusalReason::LiteralTooLarge, _) => "Literal too large",
            _ => "Command refused",
        };
        self.reply(&tag, "BAD", text);
    }

    fn on_message(&mut self, now: Time, msg: frame::Message) {
        self.last_command = now;
        if let Phase::Sasl { .. } = self.phase {
            return self.on_sasl_line(now, msg);
        }
        self.current = "_unknown";
        let head = match parse_head(&msg) {
            Ok(h) => h,
            Err(e) => {
                let tag = e.tag.clone().unwrap_or_else(|| Bytes::from_static(b"*"));
                return self.reply(&tag, "BAD", &e.kind.to_string());
            }
        };
        let tag = head.tag.clone();
        self.current = head.verb.map_or("_unknown", Verb::as_str);
        let verb = match head.verb {
            Some(Verb::Starttls) if !self.opts.starttls => None,
            Some(Verb::Compress) if !self.opts.compress => None,
            v => v,
        };
        match (&self.phase, verb) {
            (
                Phase::NotAuth,
                Some(Verb::Authenticate | Verb::Logout | Verb::Starttls | Verb::Compress),
            ) => {}
            (Phase::NotAuth, v) => {
                // Cyrus dispatches on the first letter and checks login
                // before comparing the rest of the word.
                let first = head.word[0].to_ascii_uppercase();
                let text = if v.is_some() || b"ADFLNRU".contains(&first) {
                    "Please login first"
                } else {
                    "Unrecognized command"
                };
                return self.reply(&tag, "BAD", text);
            }
            (Phase::Streaming { .. }, Some(Verb::Noop | Verb::Logout)) => {}
            (Phase::Streaming { .. }, _) => {
                return self.reply(&tag, "BAD", "not legal when streaming")
            }
            (_, None) => return self.reply(&tag, "BAD", "Unrecognized command"),
            (_, Some(Verb::Authenticate)) => {
                return self.reply(&tag, "BAD", "already authenticated")
            }
            (_, Some(Verb::Starttls)) => {
                return self.reply_bare(&tag, "BAD", b"Can't Starttls after authentication")
            }
            (_, Some(v)) if v.is_write() && matches!(self.opts.role, Role::Slave { .. }) => {
                return self.reply(&tag, "BAD", "read-only session")
            }
            _ => {}
        }
        let cmd = match parse_command(&msg) {
            Ok((_, cmd)) => cmd,
            Err(e) => return self.reply(&tag, "BAD", &e.kind.to_string()),
        };
        self.dispatch(now, tag, cmd);
    }

    fn dispatch(&mut self, now: Time, tag: Bytes, cmd: Cmd) {
        match cmd {
            Cmd::Authenticate { mechanism, initial } => {
                self.authenticate(now, tag, &mechanism, initial)
            }
            Cmd::Starttls => {
                if self.tls_active {
                    self.reply_bare(&tag, "BAD", b"Already did a successful Starttls");
                } else if self.compress_active {
                    self.reply_bare(&tag, "BAD", b"Can't Starttls after Compress");
                } else {
                    self.reply_bare(&tag, "OK", b"Begin TLS negotiation now");
                    self.tls_active = true;
                    let rest = self.framer.take_unconsumed().freeze();
                    self.push(Output::StartLayer {
                        layer: Layer::TlsServer,
                        input_after_switch: rest,
                    });
                    self.banner();
                }
            }
            Cmd::Compress { algorithm } => {
                if self.compress_active {
                    self.reply_bare(&tag, "BAD", b"DEFLATE active via COMPRESS");
                } else if algorithm.eq_ignore_ascii_case(b"DEFLATE") {
                    self.reply_bare(&tag, "OK", b"DEFLATE active");
                    self.compress_active = true;
                    let rest = self.framer.take_unconsumed().freeze();
                    self.push(Output::StartLayer {
                        layer: Layer::Deflate,
                        input_after_switch: rest,
                    });
                } else {
                    let mut text = b"Unknown COMPRESS algorithm: ".to_vec();
                    text.extend(
                        algorithm
                            .iter()
                            .map(|&b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
                    );
                    self.reply_bare(&tag, "NO", &text);
                }
            }
            Cmd::Find { name } => {
                if let Some(rec) = self.read.find(&name) {
                    // Cyrus echoes the name as asked.
                    self.entry_line(&tag, &name, Some(&rec));
                }
                self.reply(&tag, "OK", "Search completed");
            }
            Cmd::List { prefix } => {
                for e in self.read.list(prefix.as_deref()) {
                    self.entry_line(&tag, &e.name, Some(&e.record));
                }
                self.reply(&tag, "OK", "list complete");
            }
            Cmd::Reserve { name, location } => self.write(tag, Write::Reserve { name, location }),
            Cmd::Activate {
                name,
                location,
                acl,
            } => self.write(
                tag,
                Write::Activate {
                    name,
                    location,
                    acl,
                },
            ),
            Cmd::Deactivate { name, location } => {
                self.write(tag, Write::Deactivate { name, location })
            }
            Cmd::Delete { name } => self.write(tag, Write::Delete { name }),
            Cmd::Update { hosts } => {
                let id = self.effect(Effect::Subscribe {
                    hosts: hosts.clone(),
                });
                self.wait = Wait::Subscribe {
                    id,
                    tag,
                    hosts,
                    early: Vec::new(),
                };
            }
            Cmd::Noop
                if self.opts.kick_upstream && matches!(self.opts.role, Role::Slave { .. }) =>
            {
                let id = self.effect(Effect::Kick);
                self.wait = Wait::Kick { id, tag };
            }
            Cmd::Noop => self.reply(&tag, "OK", "Noop done"),
            Cmd::Logout => {
                self.reply(&tag, "OK", "bye-bye");
                self.close(CloseReason::Done);
            }
        }
    }

    fn write(&mut self, tag: Bytes, w: Write) {
        let id = self.effect(Effect::Write(w));
        self.wait = Wait::Write { id, tag };
    }

    fn authenticate(&mut self, now: Time, tag: Bytes, mechanism: &[u8], initial: Option<Bytes>) {
        let mech = std::str::from_utf8(mechanism)
            .ok()
            .and_then(Mechanism::from_name)
            .filter(|m| self.mechanisms().contains(m));
        let Some(mech) = mech else {
            return self.start_pause(now, tag);
        };
        let initial = match initial
            .map(|i| sasl::decode_initial(&i, &self.opts.sasl))
            .transpose()
        {
            Ok(i) => i,
            Err(_) => return self.start_pause(now, tag),
        };
        match sasl::Server::start(
            mech,
            initial.as_ref().map(|s| s.expose()),
            self.opts.sasl.clone(),
        ) {
            Ok((server, step)) => self.sasl_step(now, tag, server, step),
            Err(_) => self.start_pause(now, tag),
        }
    }

    fn sasl_step(&mut self, now: Time, tag: Bytes, server: sasl::Server, step: ServerStep) {
        match step {
            ServerStep::Challenge(c) => {
                // Cyrus sends the challenge as a bare base64 line.
                self.out.extend_from_slice(sasl::encode(&c).as_bytes());
                self.out.extend_from_slice(b"\r\n");
                self.phase = Phase::Sasl { tag, server };
            }
            ServerStep::Done(creds) => {
                self.phase = Phase::NotAuth;
                let _ = now;
                let id = self.effect(Effect::Authenticate(creds));
                self.wait = Wait::Auth { id, tag };
            }
        }
    }

    fn on_sasl_line(&mut self, now: Time, msg: frame::Message) {
        let Phase::Sasl { tag, mut server } = std::mem::replace(&mut self.phase, Phase::NotAuth)
        else {
            unreachable!("checked by caller")
        };
        if !msg.literals().is_empty() {
            return self.start_pause(now, tag);
        }
        match sasl::decode_response(msg.text(), &self.opts.sasl) {
            Ok(sasl::Response::Cancel) => {
                self.reply_bare(&tag, "NO", b"Client canceled authentication")
            }
            Ok(sasl::Response::Data(d)) => match server.step(d.expose()) {
                Ok(step) => self.sasl_step(now, tag, server, step),
                Err(_) => self.start_pause(now, tag),
            },
            Err(_) => self.start_pause(now, tag),
        }
    }

    fn sasl_failed(&mut self, tag: Bytes) {
        self.phase = Phase::NotAuth;
        let now = self.last_command;
        self.start_pause(now, tag);
    }

    fn start_pause(&mut self, now: Time, tag: Bytes) {
        self.phase = Phase::NotAuth;
        let until = now.checked_add(self.opts.failed_login_pause).unwrap_or(now);
        self.wait = Wait::Pause { until, tag };
    }

    fn push_change(&mut self, change: &Change) {
        let Phase::Streaming { tag, hosts } = &self.phase else {
            return;
        };
        if !change.concerns(hosts) {
            return;
        }
        let tag = tag.clone();
        self.entry_line(&tag, &change.name, change.after.as_ref());
    }
}

fn tag_of_sasl(p: &Phase) -> Bytes {
    match p {
        Phase::Sasl { tag, .. } => tag.clone(),
        _ => Bytes::from_static(b"*"),
    }
}

impl<R: Read> Machine for Server<R> {
    type Effect = Effect;
    type Completion = Completion;
    type Event = Event;
    type Command = Command;

    fn handle_input(&mut self, now: Time, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.framer.handle_input(bytes);
        self.pump(now);
    }

    fn handle_eof(&mut self, now: Time) {
        let _ = now;
        self.close(CloseReason::PeerClosed);
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.closed {
            return;
        }
        if let Wait::Pause { until, .. } = &self.wait {
            if now >= *until {
                let Wait::Pause { tag, .. } = std::mem::replace(&mut self.wait, Wait::Idle) else {
                    unreachable!()
                };
                self.reply(&tag, "NO", NO_AUTH);
                self.last_command = now;
                self.pump(now);
                return;
            }
        }
        if let Some(idle) = self.opts.idle_timeout {
            if !self.blocked() && now.saturating_since(self.last_command) >= idle {
                self.out
                    .extend_from_slice(b"* BYE \"idle for too long\"\r\n");
                self.close(CloseReason::Timeout("idle".into()));
            }
        }
    }

    fn handle_completion(&mut self, now: Time, id: EffectId, completion: Completion) {
        if self.closed {
            return;
        }
        let wait = std::mem::replace(&mut self.wait, Wait::Idle);
        // The idle clock was stopped while the effect ran.
        self.last_command = now;
        match (wait, completion) {
            (Wait::Auth { id: w, tag }, c) if w == id => match c {
                Completion::Auth(Some(ok)) if ok.admin => {
                    self.phase = Phase::Auth;
                    self.reply(&tag, "OK", "Authenticated");
                    self.push(Output::Event(Event::Authenticated(ok.userid)));
                }
                Completion::Auth(Some(ok)) => {
                    // Cyrus: "only admins may authenticate".
                    self.push(Output::Event(Event::AuthFailed(ok.userid)));
                    self.start_pause(now, tag);
                }
                _ => {
                    self.push(Output::Event(Event::AuthFailed(String::new())));
                    self.start_pause(now, tag);
                }
            },
            (Wait::Write { id: w, tag }, c) if w == id => match c {
                Completion::Written(Ok(Committed { .. })) => self.reply(&tag, "OK", "done"),
                Completion::Written(Err(r)) => {
                    self.reply(&tag, "NO", &r.to_string());
                    self.push(Output::Event(Event::WriteRefused(r)));
                }
                Completion::WriteFailed(e) => {
                    self.out
                        .extend_from_slice(b"* BYE \"database failure\"\r\n");
                    self.close(CloseReason::EffectFailed(e));
                    return;
                }
                other => panic!("MUPDATE write completed with {other:?}: daemon bug"),
            },
            (
                Wait::Subscribe {
                    id: w,
                    tag,
                    hosts,
                    early,
                },
                c,
            ) if w == id => {
                let Completion::Subscribed(dump) = c else {
                    panic!("MUPDATE subscribe completed with {c:?}: daemon bug");
                };
                let n = dump.len();
                for e in &dump {
                    self.entry_line(&tag, &e.name, Some(&e.record));
                }
                self.reply(&tag, "OK", "streaming starts");
                self.phase = Phase::Streaming { tag, hosts };
                for c in early {
                    self.push_change(&c);
                }
                self.push(Output::Event(Event::Subscribed { dump_entries: n }));
            }
            (Wait::Kick { id: w, tag }, Completion::Kicked) if w == id => {
                self.reply(&tag, "OK", "Noop done");
            }
            (w, c) => panic!(
                "unexpected MUPDATE completion {id:?} {c:?} (waiting: {})",
                matches!(w, Wait::Idle)
            ),
        }
        self.pump(now);
    }

    fn handle_command(&mut self, now: Time, command: Command) {
        if self.closed {
            return;
        }
        match command {
            Command::Change(c) => {
                if let Wait::Subscribe { early, .. } = &mut self.wait {
                    if early.len() >= self.opts.pending_changes_max {
                        self.out
                            .extend_from_slice(b"* BYE \"too many pending changes\"\r\n");
                        self.close(CloseReason::LimitExceeded("pending changes".into()));
                    } else {
                        early.push(c);
                    }
                } else {
                    self.push_change(&c);
                }
            }
            Command::Lagged => {
                self.out
                    .extend_from_slice(b"* BYE \"update stream overflow\"\r\n");
                self.close(CloseReason::LimitExceeded("subscriber lagged".into()));
            }
            Command::Shutdown => {
                self.out
                    .extend_from_slice(b"* BYE \"server shutting down\"\r\n");
                self.close(CloseReason::Local("shutdown".into()));
            }
        }
        let _ = now;
    }

    fn poll_output(&mut self) -> Option<Output<Effect, Event>> {
        self.flush_out();
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.closed {
            return None;
        }
        if let Wait::Pause { until, .. } = &self.wait {
            return Some(*until);
        }
        if self.blocked() {
            return None;
        }
        self.opts
            .idle_timeout
            .and_then(|d| self.last_command.checked_add(d))
    }

    fn wants_input(&self) -> bool {
        // Unblocked, the framer consumes all it can and holds at most one
        // partial message (bounded by `frame` limits); blocked, nothing more
        // is read until the effect or pause ends.
        !self.closed && !self.blocked()
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}
