//! `engine::mupdate::Server` behaviour beyond the Cyrus transcripts:
//! immediate UPDATE pushes (filtered, in order, including changes that
//! race the dump), layer switches, hostile input, the slave role, timers.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::machine::{self, CloseReason, EffectId, Layer, Machine, Output, Time};
use engine::mupdate::{
    AuthOk, Change, Command, Committed, Completion, Database, Effect, Entry, Options, Read, Record,
    Role, Server, State, Write,
};

#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Database>>);

impl Read for Shared {
    fn find(&self, name: &[u8]) -> Option<Record> {
        self.0.borrow().find(name).cloned()
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        self.0.borrow().list(prefix)
    }
}

/// One session with a scripted daemon: effects are resolved at once unless
/// `hold` is set.
struct T {
    s: Server<Shared>,
    db: Shared,
    now: Time,
    out: Vec<u8>,
    held: Vec<(EffectId, Effect)>,
    hold: bool,
    layers: Vec<(Layer, Bytes)>,
    closed: Option<CloseReason>,
    events: Vec<engine::mupdate::server::Event>,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl T {
    fn new(opts: Options) -> T {
        let db = Shared::default();
        let s = Server::new(Time::ZERO, db.clone(), opts);
        let mut t = T {
            s,
            db,
            now: Time::ZERO,
            out: Vec::new(),
            held: Vec::new(),
            hold: false,
            layers: Vec::new(),
            closed: None,
            events: Vec::new(),
        };
        t.drain();
        t.take();
        t
    }

    fn resolve(&mut self, e: Effect) -> Completion {
        match e {
            Effect::Authenticate(c) => {
                Completion::Auth((c.password.expose() == b"pw").then(|| AuthOk {
                    userid: c.authcid.clone(),
                    admin: c.authcid == "admin",
                }))
            }
            Effect::Write(w) => {
                let mut db = self.db.0.borrow_mut();
                Completion::Written(db.decide(&w).map(|c| {
                    db.apply(&c);
                    Committed::after_commit()
                }))
            }
            Effect::Subscribe { hosts } => Completion::Subscribed(self.db.0.borrow().dump(&hosts)),
            Effect::Kick => Completion::Kicked,
        }
    }

    fn drain(&mut self) {
        loop {
            let mut effects = Vec::new();
            machine::drain(&mut self.s, |o| match o {
                Output::Transmit(b) => self.out.extend_from_slice(&b),
                Output::Effect { id, effect } => effects.push((id, effect)),
                Output::StartLayer {
                    layer,
                    input_after_switch,
                } => self.layers.push((layer, input_after_switch)),
                Output::Close(r) => self.closed = Some(r),
                Output::Event(e) => self.events.push(e),
            });
            if effects.is_empty() {
                return;
            }
            for (id, e) in effects {
                if self.hold {
                    self.held.push((id, e));
                } else {
                    let c = self.resolve(e);
                    self.s.handle_completion(self.now, id, c);
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> String {
        self.s.handle_input(self.now, bytes);
        self.drain();
        self.take()
    }

    fn take(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
    }

    fn login(&mut self) {
        assert_eq!(
            self.send(b"A1 AUTHENTICATE \"PLAIN\" \"AGFkbWluAHB3\"\r\n"),
            "A1 OK \"Authenticated\"\r\n"
        );
    }

    fn change(&mut self, c: Change) -> String {
        self.s
            .handle_command(self.now, Command::Change(Arc::new(c)));
        self.drain();
        self.take()
    }
}

fn active(loc: &str, acl: &str) -> Option<Record> {
    Some(Record {
        state: State::Active { acl: b(acl) },
        location: b(loc),
    })
}

#[test]
fn update_pushes_changes_at_once_filtered_by_host() {
    let mut t = T::new(Options::default());
    t.login();
    t.send(b"A2 ACTIVATE \"user.a\" \"h1!p\" \"a\"\r\n");
    t.send(b"A3 ACTIVATE \"user.b\" \"h2!p\" \"b\"\r\n");
    let dump = t.send(b"U1 UPDATE \"h1\"\r\n");
    assert_eq!(
        dump,
        "U1 MAILBOX {6+}\r\nuser.a {4+}\r\nh1!p {1+}\r\na\r\nU1 OK \"streaming starts\"\r\n"
    );
    // A change on h1 is pushed at once; one on h3 is not; a move away from h1 is.
    assert_eq!(
        t.change(Change {
            name: b("user.c"),
            before: None,
            after: active("h1!p", "c")
        }),
        "U1 MAILBOX {6+}\r\nuser.c {4+}\r\nh1!p {1+}\r\nc\r\n"
    );
    assert_eq!(
        t.change(Change {
            name: b("user.x"),
            before: None,
            after: active("h3!p", "")
        }),
        ""
    );
    assert_eq!(
        t.change(Change {
            name: b("user.a"),
            before: active("h1!p", "a"),
            after: active("h3!p", "a")
        }),
        "U1 MAILBOX {6+}\r\nuser.a {4+}\r\nh3!p {1+}\r\na\r\n"
    );
    assert_eq!(
        t.change(Change {
            name: b("user.c"),
            before: active("h1!p", "c"),
            after: None
        }),
        "U1 DELETE {6+}\r\nuser.c\r\n"
    );
    // Only NOOP and LOGOUT while streaming.
    assert_eq!(
        t.send(b"F1 FIND \"user.a\"\r\n"),
        "F1 BAD \"not legal when streaming\"\r\n"
    );
    assert_eq!(t.send(b"N1 NOOP\r\n"), "N1 OK \"Noop done\"\r\n");
    assert_eq!(t.send(b"Q1 LOGOUT\r\n"), "Q1 OK \"bye-bye\"\r\n");
    assert_eq!(t.closed, Some(CloseReason::Done));
}

#[test]
fn changes_racing_the_dump_come_after_it() {
    let mut t = T::new(Options::default());
    t.login();
    t.hold = true;
    assert_eq!(t.send(b"U1 UPDATE\r\n"), "");
    assert!(!t.s.wants_input());
    // A change arrives before the subscription completes: held, sent after the dump.
    assert_eq!(
        t.change(Change {
            name: b("n"),
            before: None,
            after: active("h!p", "")
        }),
        ""
    );
    let (id, e) = t.held.pop().unwrap();
    t.hold = false;
    let c = t.resolve(e);
    t.s.handle_completion(t.now, id, c);
    t.drain();
    assert_eq!(
        t.take(),
        "U1 OK \"streaming starts\"\r\nU1 MAILBOX {1+}\r\nn {3+}\r\nh!p {0+}\r\n\r\n"
    );
}

#[test]
fn writes_answer_only_after_the_completion() {
    let mut t = T::new(Options::default());
    t.login();
    t.hold = true;
    // Pipelined: the FIND must wait for the RESERVE's completion.
    assert_eq!(t.send(b"R1 RESERVE \"x\" \"h!p\"\r\nF1 FIND \"x\"\r\n"), "");
    assert!(!t.s.wants_input());
    let (id, e) = t.held.pop().unwrap();
    assert_eq!(
        e,
        Effect::Write(Write::Reserve {
            name: b("x"),
            location: b("h!p")
        })
    );
    t.hold = false;
    let c = t.resolve(e);
    t.s.handle_completion(t.now, id, c);
    t.drain();
    assert_eq!(
        t.take(),
        "R1 OK \"done\"\r\nF1 RESERVE {1+}\r\nx {3+}\r\nh!p\r\nF1 OK \"Search completed\"\r\n"
    );
    // Missing names: NO, never a crash.
    assert_eq!(
        t.send(b"X1 DELETE \"nope\"\r\n"),
        "X1 NO \"mailbox does not exist\"\r\n"
    );
    assert_eq!(
        t.send(b"D1 DEACTIVATE \"nope\" \"h!p\"\r\n"),
        "D1 NO \"mailbox does not exist\"\r\n"
    );
    // DEACTIVATE of a reserved name at its own location (Cyrus: abort()).
    assert_eq!(
        t.send(b"D2 DEACTIVATE \"x\" \"h!p\"\r\n"),
        "D2 OK \"done\"\r\n"
    );
    // A store failure ends the session without an OK.
    t.hold = true;
    t.send(b"R2 RESERVE \"y\" \"h!p\"\r\n");
    let (id, _) = t.held.pop().unwrap();
    t.s.handle_completion(t.now, id, Completion::WriteFailed("disk".into()));
    t.drain();
    assert_eq!(t.take(), "* BYE \"database failure\"\r\n");
    assert!(matches!(t.closed, Some(CloseReason::EffectFailed(_))));
}

#[test]
fn failed_login_waits_for_the_pause_and_non_admins_are_refused() {
    let mut t = T::new(Options {
        failed_login_pause: Duration::from_secs(3),
        ..Options::default()
    });
    assert_eq!(
        t.send(b"A1 AUTHENTICATE \"PLAIN\" \"AGFkbWluAHdyb25n\"\r\n"),
        ""
    );
    assert_eq!(t.s.poll_timeout(), Some(Time::from_millis(3000)));
    assert!(!t.s.wants_input());
    t.now = Time::from_millis(3000);
    t.s.handle_timeout(t.now);
    t.drain();
    assert_eq!(t.take(), "A1 NO \"undefined error!\"\r\n");
    // Valid password, not an admin.
    assert_eq!(
        t.send(b"A2 AUTHENTICATE \"PLAIN\" \"AHVzZXIAcHc=\"\r\n"),
        ""
    );
    t.now = Time::from_millis(6000);
    t.s.handle_timeout(t.now);
    t.drain();
    assert_eq!(t.take(), "A2 NO \"undefined error!\"\r\n");
    assert_eq!(
        t.send(b"F1 FIND \"x\"\r\n"),
        "F1 BAD \"Please login first\"\r\n"
    );
    assert_eq!(
        t.send(b"Q1 XYZZY\r\n"),
        "Q1 BAD \"Unrecognized command\"\r\n"
    );
}

#[test]
fn compress_and_starttls_switch_layers_at_the_right_byte() {
    let mut t = T::new(Options {
        starttls: true,
        ..Options::default()
    });
    let out = t.send(b"S1 STARTTLS\r\nTLSBYTES");
    assert!(
        out.starts_with("S1 OK Begin TLS negotiation now\r\n* AUTH \"PLAIN\"\r\n* COMPRESS"),
        "{out}"
    );
    assert!(!out.contains("* STARTTLS"));
    assert_eq!(t.layers, vec![(Layer::TlsServer, b("TLSBYTES"))]);
    assert_eq!(
        t.send(b"S2 STARTTLS\r\n"),
        "S2 BAD Already did a successful Starttls\r\n"
    );
    assert_eq!(
        t.send(b"Z0 COMPRESS \"GZIP\"\r\n"),
        "Z0 NO Unknown COMPRESS algorithm: GZIP\r\n"
    );
    assert_eq!(
        t.send(b"Z1 COMPRESS \"DEFLATE\"\r\nxyz"),
        "Z1 OK DEFLATE active\r\n"
    );
    assert_eq!(t.layers[1], (Layer::Deflate, b("xyz")));
    assert_eq!(
        t.send(b"Z2 COMPRESS \"DEFLATE\"\r\n"),
        "Z2 BAD DEFLATE active via COMPRESS\r\n"
    );
    t.login();
    assert_eq!(
        t.send(b"S3 STARTTLS\r\n"),
        "S3 BAD Can't Starttls after authentication\r\n"
    );
}

#[test]
fn hostile_input_is_refused_and_the_session_goes_on() {
    let mut t = T::new(Options::default());
    // A 200 KB tag (Cyrus exits the whole server).
    let mut long = vec![b'T'; 600_000];
    long.extend_from_slice(b" NOOP\r\n");
    assert_eq!(t.send(&long), "* BAD \"Line too long\"\r\n");
    // A 1 MB non-synchronising literal, before login.
    let mut lit = b"A1 AUTHENTICATE \"PLAIN\" {1000000+}\r\n".to_vec();
    lit.extend_from_slice(&vec![b'a'; 1_000_000]);
    lit.extend_from_slice(b"\r\n");
    assert_eq!(t.send(&lit), "A1 BAD \"Literal too large\"\r\n");
    // An over-limit synchronising literal: no continuation.
    assert_eq!(
        t.send(b"F1 FIND {1000000}\r\n"),
        "F1 BAD \"Extra arguments\"\r\n"
    );
    // A small one gets its continuation.
    assert_eq!(t.send(b"F2 FIND {1}\r\n"), "+ go ahead\r\n");
    assert_eq!(t.send(b"x\r\n"), "F2 BAD \"Please login first\"\r\n");
    assert!(t.closed.is_none());
    t.login();
    assert_eq!(t.send(b"N1 NOOP\r\n"), "N1 OK \"Noop done\"\r\n");
}

#[test]
fn slave_role_is_read_only_and_says_where_its_master_is() {
    let db = Shared::default();
    let mut s = Server::new(
        Time::ZERO,
        db,
        Options {
            role: Role::Slave {
                upstream: "127.0.0.1:3905".into(),
            },
            ..Options::default()
        },
    );
    let mut out = Vec::new();
    machine::drain(&mut s, |o| {
        if let Output::Transmit(b) = o {
            out.extend_from_slice(&b)
        }
    });
    assert!(String::from_utf8_lossy(&out).ends_with("\"mupdate://127.0.0.1:3905\"\r\n"));
    let mut t = T {
        s,
        db: Shared::default(),
        now: Time::ZERO,
        out: Vec::new(),
        held: Vec::new(),
        hold: false,
        layers: Vec::new(),
        closed: None,
        events: Vec::new(),
    };
    t.login();
    for cmd in [
        "R1 RESERVE \"a\" \"b\"",
        "A1 ACTIVATE \"a\" \"b\" \"c\"",
        "D1 DEACTIVATE \"a\" \"b\"",
        "X1 DELETE \"a\"",
    ] {
        let tag = cmd.split(' ').next().unwrap();
        assert_eq!(
            t.send(format!("{cmd}\r\n").as_bytes()),
            format!("{tag} BAD \"read-only session\"\r\n")
        );
    }
}

#[test]
fn idle_sessions_are_closed() {
    let mut t = T::new(Options {
        idle_timeout: Some(Duration::from_secs(60)),
        ..Options::default()
    });
    assert_eq!(t.s.poll_timeout(), Some(Time::from_millis(60_000)));
    t.now = Time::from_millis(30_000);
    t.s.handle_timeout(t.now); // spurious
    t.drain();
    assert!(t.closed.is_none());
    t.now = Time::from_millis(60_000);
    t.s.handle_timeout(t.now);
    t.drain();
    assert_eq!(t.take(), "* BYE \"idle for too long\"\r\n");
    assert!(matches!(t.closed, Some(CloseReason::Timeout(_))));
}

#[test]
fn a_slave_answers_noop_only_after_kicking_its_master() {
    let opts = Options {
        role: Role::Slave {
            upstream: "m:3905".into(),
        },
        kick_upstream: true,
        ..Options::default()
    };
    let mut t = T::new(opts);
    t.login();
    t.hold = true;
    assert_eq!(t.send(b"N1 NOOP\r\nF1 FIND \"x\"\r\n"), "");
    let (id, e) = t.held.pop().unwrap();
    assert_eq!(e, Effect::Kick);
    t.hold = false;
    t.s.handle_completion(t.now, id, Completion::Kicked);
    t.drain();
    assert_eq!(
        t.take(),
        "N1 OK \"Noop done\"\r\nF1 OK \"Search completed\"\r\n"
    );
}

/// W6: with Cyrus's default `allowplaintext: no` the daemon gives an empty
/// clear-text list: the banner says a bare `* AUTH` (what Cyrus sends with
/// no mechanism), PLAIN is refused in the clear, and after STARTTLS the
/// re-sent banner offers it and it works.
#[test]
fn plain_is_offered_and_accepted_only_under_tls_when_the_clear_list_is_empty() {
    let opts = Options {
        starttls: true,
        mechanisms: Vec::new(),
        failed_login_pause: Duration::ZERO,
        ..Options::default()
    };
    let mut s = Server::new(Time::ZERO, Shared::default(), opts.clone());
    let mut banner = Vec::new();
    machine::drain(&mut s, |o| {
        if let Output::Transmit(b) = o {
            banner.extend_from_slice(&b)
        }
    });
    let banner = String::from_utf8(banner).unwrap();
    assert!(banner.starts_with("* AUTH\r\n* STARTTLS\r\n"), "{banner}");
    assert!(!banner.contains("PLAIN"), "{banner}");

    let mut t = T::new(opts);
    assert_eq!(
        t.send(b"A1 AUTHENTICATE \"PLAIN\" \"AGFkbWluAHB3\"\r\n"),
        ""
    );
    t.s.handle_timeout(t.now);
    t.drain();
    assert_eq!(t.take(), "A1 NO \"undefined error!\"\r\n");
    let out = t.send(b"S1 STARTTLS\r\n");
    assert!(
        out.starts_with("S1 OK Begin TLS negotiation now\r\n* AUTH \"PLAIN\"\r\n"),
        "{out}"
    );
    t.login();
}

/// W4: the idle clock measures whole commands. A peer dribbling a command
/// one byte at a time does not restart it; a completed command does.
#[test]
fn idle_clock_restarts_on_whole_commands_not_on_bytes() {
    let mut t = T::new(Options {
        idle_timeout: Some(Duration::from_secs(60)),
        ..Options::default()
    });
    t.login();
    assert_eq!(t.s.poll_timeout(), Some(Time::from_millis(60_000)));
    for (i, byte) in b"N1 NOO".iter().enumerate() {
        t.now = Time::from_millis(9_000 * (i as u64 + 1));
        assert_eq!(t.send(&[*byte]), "");
        assert_eq!(t.s.poll_timeout(), Some(Time::from_millis(60_000)));
    }
    t.now = Time::from_millis(59_000);
    assert_eq!(t.send(b"P\r\n"), "N1 OK \"Noop done\"\r\n");
    assert_eq!(t.s.poll_timeout(), Some(Time::from_millis(119_000)));
    // Dribble again: the deadline stays where the last command put it.
    t.now = Time::from_millis(100_000);
    assert_eq!(t.send(b"N2 NO"), "");
    t.now = Time::from_millis(119_000);
    t.s.handle_timeout(t.now);
    t.drain();
    assert_eq!(t.take(), "* BYE \"idle for too long\"\r\n");
    assert!(matches!(t.closed, Some(CloseReason::Timeout(_))));
}

/// One `Answered` event per tagged answer, labelled from fixed sets only,
/// so `corvid_commands_total` counts MUPDATE commands by verb and status
/// however hostile the input.
#[test]
fn every_tagged_answer_is_one_answered_event() {
    use engine::mupdate::server::Event;
    let mut t = T::new(Options::default());
    t.events.clear();
    t.send(b"X1 FROBNICATE\r\n");
    t.send(b"F0 FIND \"a\"\r\n");
    t.login();
    t.send(b"R1 RESERVE \"user.a\" \"be1!default\"\r\n");
    t.send(b"R2 RESERVE \"user.a\" \"be2!default\"\r\n");
    t.send(b"F1 FIND \"user.a\"\r\n");
    let mut long = vec![b'T'; 600_000];
    long.extend_from_slice(b" NOOP\r\n");
    t.send(&long);
    t.send(b"N1 NOOP\r\n");
    let answered: Vec<(&str, &str)> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Answered { command, status } => Some((*command, *status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("_unknown", "BAD"),
            ("FIND", "BAD"),
            ("AUTHENTICATE", "OK"),
            ("RESERVE", "OK"),
            ("RESERVE", "NO"),
            ("FIND", "OK"),
            ("_refused", "BAD"),
            ("NOOP", "OK"),
        ]
    );
}
