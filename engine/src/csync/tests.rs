//! Unit tests of the session rules that need two sessions or a view of
//! each step: per-user locks across sessions, and `GET FETCH` streaming one
//! chunk per step. (Wire texts and whole scenarios are in
//! `engine/tests/csync_server.rs`.)

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::server::{AuthOk, Completion, Effect, Locks, Options, Server, UserLocks};
use crate::machine::{EffectId, Machine, Output, Time};
use crate::memstore::MemStore;
use crate::model::*;
use crate::store::{commit, BatchId, EffectRunner, Mutation, StoreEffect, WriteBatch};

type Store = Rc<RefCell<MemStore>>;

/// The daemon's lock table, as simply as possible.
#[derive(Default)]
struct Table(Mutex<BTreeMap<Bytes, u64>>);

impl UserLocks for Table {
    fn try_lock(&self, session: u64, users: &[Bytes]) -> bool {
        let mut t = self.0.lock().unwrap();
        if users
            .iter()
            .any(|u| t.get(u).is_some_and(|&s| s != session))
        {
            return false;
        }
        for u in users {
            t.insert(u.clone(), session);
        }
        true
    }
    fn unlock(&self, session: u64) {
        self.0.lock().unwrap().retain(|_, s| *s != session);
    }
}

/// One session; store effects run at once unless writes are held.
struct Session {
    m: Server<Store>,
    store: Store,
    runner: EffectRunner,
    out: Vec<u8>,
    hold_writes: bool,
    held: Vec<(EffectId, WriteBatch)>,
    /// Transmits of the last drain, by size.
    transmits: Vec<usize>,
}

impl Session {
    fn new(store: Store, locks: Option<Arc<Table>>, session: u64, now: Time) -> Session {
        let o = Options {
            server_name: "replica.test".into(),
            partitions: vec!["default".into()],
            user_locks: locks.map(|l| Locks(l as Arc<dyn UserLocks>)),
            session,
            fetch_chunk_bytes: 1000,
            ..Options::default()
        };
        let mut s = Session {
            m: Server::new(now, store.clone(), o),
            store,
            runner: EffectRunner::new(),
            out: Vec::new(),
            hold_writes: false,
            held: Vec::new(),
            transmits: Vec::new(),
        };
        s.drain(now);
        s.say(now, "AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n");
        s
    }

    /// Acts on every output (no timeouts).
    fn drain(&mut self, now: Time) {
        self.transmits.clear();
        loop {
            let mut completions = Vec::new();
            while let Some(o) = self.m.poll_output() {
                match o {
                    Output::Transmit(b) => {
                        self.transmits.push(b.len());
                        self.out.extend_from_slice(&b);
                    }
                    Output::Effect { id, effect } => match effect {
                        Effect::Authenticate(c) => completions.push((
                            id,
                            Completion::Auth(Some(AuthOk {
                                userid: c.authcid.clone(),
                                admin: true,
                            })),
                        )),
                        Effect::Store(StoreEffect::Write(b)) if self.hold_writes => {
                            self.held.push((id, b))
                        }
                        Effect::Store(e) => {
                            let c = self.runner.run(&mut *self.store.borrow_mut(), e);
                            completions.push((id, Completion::Store(c)));
                        }
                    },
                    _ => {}
                }
            }
            if completions.is_empty() {
                return;
            }
            for (id, c) in completions {
                self.m.handle_completion(now, id, c);
            }
        }
    }

    fn say(&mut self, now: Time, line: &str) -> String {
        let start = self.out.len();
        self.m.handle_input(now, line.as_bytes());
        self.drain(now);
        String::from_utf8_lossy(&self.out[start..]).into_owned()
    }

    /// Delivers a due timeout, if the machine asks for one by `now`.
    fn tick(&mut self, now: Time) -> String {
        let start = self.out.len();
        if self.m.poll_timeout().is_some_and(|t| t <= now) {
            self.m.handle_timeout(now);
            self.drain(now);
        }
        String::from_utf8_lossy(&self.out[start..]).into_owned()
    }

    fn release_writes(&mut self, now: Time) -> String {
        let start = self.out.len();
        for (id, b) in std::mem::take(&mut self.held) {
            let c = self
                .runner
                .run(&mut *self.store.borrow_mut(), StoreEffect::Write(b));
            self.m.handle_completion(now, id, Completion::Store(c));
            self.drain(now);
        }
        String::from_utf8_lossy(&self.out[start..]).into_owned()
    }
}

fn at(ms: u64) -> Time {
    Time::from_millis(ms)
}

#[test]
fn a_user_locked_by_one_session_waits_in_another_and_other_users_do_not() {
    let store: Store = Rc::default();
    let table = Arc::new(Table::default());
    let mut a = Session::new(store.clone(), Some(table.clone()), 1, at(0));
    let mut b = Session::new(store.clone(), Some(table.clone()), 2, at(0));
    let mut c = Session::new(store.clone(), Some(table.clone()), 3, at(0));

    // A's write for alice is in flight: A holds alice.
    a.hold_writes = true;
    assert_eq!(
        a.say(
            at(1),
            "APPLY SUB %(USERID alice MBOXNAME user.alice.Work)\r\n"
        ),
        ""
    );
    assert_eq!(a.held.len(), 1);
    // B asks about alice: nothing until A is answered, and B retries on a timer.
    assert_eq!(b.say(at(2), "GET USER alice\r\n"), "");
    assert!(!b.m.wants_input());
    assert!(b.m.poll_timeout().is_some());
    assert_eq!(b.tick(at(50)), "");
    // C's user is free.
    assert_eq!(c.say(at(3), "GET USER bob\r\n"), "OK success\r\n");

    // A's write becomes durable: A answers and lets go; B's retry sees
    // the state after A's write, never the one before it.
    assert_eq!(a.release_writes(at(60)), "OK success\r\n");
    assert_eq!(
        b.tick(at(100)),
        "* LSUB (user.alice.Work)\r\nOK success\r\n"
    );
    assert!(b.m.wants_input());
    assert!(table.0.lock().unwrap().is_empty(), "every lock released");
}

#[test]
fn a_rename_across_users_takes_both_locks_or_none() {
    let store: Store = Rc::default();
    let table = Arc::new(Table::default());
    let mut a = Session::new(store.clone(), Some(table.clone()), 1, at(0));
    let mut b = Session::new(store.clone(), Some(table.clone()), 2, at(0));
    a.hold_writes = true;
    a.say(at(1), "APPLY SUB %(USERID bob MBOXNAME user.bob)\r\n");
    // alice is free but bob is not: B takes neither.
    assert_eq!(
        b.say(
            at(2),
            "APPLY RENAME %(OLDMBOXNAME user.alice.x NEWMBOXNAME user.bob.x PARTITION default UIDVALIDITY 1)\r\n"
        ),
        ""
    );
    assert_eq!(
        table.0.lock().unwrap().keys().cloned().collect::<Vec<_>>(),
        vec![Bytes::from_static(b"bob")]
    );
    a.release_writes(at(3));
    // Now B runs (and is refused: there is no such mailbox), releasing both.
    assert_eq!(
        b.tick(at(10)),
        "NO IMAP_MAILBOX_NONEXISTENT No Such Mailbox\r\n"
    );
    assert!(table.0.lock().unwrap().is_empty());
}

#[test]
fn a_closed_session_releases_its_locks() {
    let store: Store = Rc::default();
    let table = Arc::new(Table::default());
    let mut a = Session::new(store.clone(), Some(table.clone()), 1, at(0));
    a.hold_writes = true;
    a.say(at(1), "APPLY SUB %(USERID alice MBOXNAME user.alice)\r\n");
    assert!(!table.0.lock().unwrap().is_empty());
    a.m.handle_eof(at(2));
    a.drain(at(2));
    assert!(table.0.lock().unwrap().is_empty());
}

#[test]
fn get_fetch_streams_one_chunk_per_step() {
    let store: Store = Rc::default();
    let body: Bytes = (0..4500u32)
        .map(|i| b"abcdefghij"[(i % 10) as usize])
        .collect::<Vec<u8>>()
        .into();
    let guid = Guid::of(&body);
    let done = commit(
        &mut *store.borrow_mut(),
        &WriteBatch {
            id: BatchId(1),
            mutations: vec![Mutation::PutMessage {
                guid,
                bytes: body.clone(),
            }],
        },
    );
    assert!(matches!(done, crate::store::Completion::Durable { .. }));
    let mut s = Session::new(store, None, 1, at(0));
    let first = s.say(
        at(1),
        &format!("GET FETCH %(MBOXNAME user.a PARTITION default UNIQUEID u GUID {guid} UID 1)\r\n"),
    );
    let head = format!("* MESSAGE %{{default {guid} 4500}}\r\n");
    assert!(first.starts_with(&head), "{first:?}");
    // The head and one chunk of 1,000 bytes; the rest waits for timeouts.
    assert_eq!(first.len(), head.len() + 1000);
    assert!(!s.m.wants_input());
    let mut got = first.into_bytes();
    let mut steps = 0;
    let mut now = at(1);
    while !String::from_utf8_lossy(&got).ends_with("OK success\r\n") {
        let t =
            s.m.poll_timeout()
                .expect("a streaming reply asks to be woken");
        assert!(t > now && t.saturating_since(now) < Duration::from_millis(1));
        now = t;
        let more = s.tick(now);
        assert!(s.transmits.iter().all(|&n| n <= 1000), "{:?}", s.transmits);
        got.extend_from_slice(more.as_bytes());
        steps += 1;
        assert!(steps < 10, "streaming does not end");
    }
    assert_eq!(steps, 4);
    let mut want = head.into_bytes();
    want.extend_from_slice(&body);
    want.extend_from_slice(b"\r\nOK success\r\n");
    assert_eq!(got, want);
    assert!(s.m.wants_input());
}

/// W6: with no mechanism allowed in the clear (`allowplaintext: no`),
/// the banner offers none and PLAIN is refused; after STARTTLS the TLS
/// list is offered and accepted.
#[test]
fn mechanisms_follow_the_tls_state() {
    let store: Store = Rc::default();
    let o = Options {
        server_name: "replica.test".into(),
        mechanisms: Vec::new(),
        mechanisms_tls: vec![proto::sasl::Mechanism::Plain],
        starttls: true,
        failed_login_pause: Duration::ZERO,
        ..Options::default()
    };
    let mut m = Server::new(at(0), store, o);
    let mut out = Vec::new();
    let mut run = |m: &mut Server<Store>, input: Option<&str>| -> (String, bool) {
        if let Some(i) = input {
            m.handle_input(at(0), i.as_bytes());
        }
        let mut auth = false;
        let mut tls = false;
        out.clear();
        while let Some(o) = m.poll_output() {
            match o {
                Output::Transmit(b) => out.extend_from_slice(&b),
                Output::Effect {
                    effect: Effect::Authenticate(_),
                    ..
                } => auth = true,
                Output::StartLayer { .. } => tls = true,
                _ => {}
            }
        }
        if m.poll_timeout().is_some_and(|t| t <= at(0)) {
            m.handle_timeout(at(0));
            while let Some(o) = m.poll_output() {
                if let Output::Transmit(b) = o {
                    out.extend_from_slice(&b);
                }
            }
        }
        let _ = tls;
        (String::from_utf8_lossy(&out).into_owned(), auth)
    };
    let (banner, _) = run(&mut m, None);
    assert!(!banner.contains("PLAIN"), "{banner}");
    assert!(banner.contains("STARTTLS"), "{banner}");
    let (r, auth) = run(&mut m, Some("AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n"));
    assert!(!auth, "a password was checked over cleartext: {r}");
    assert!(r.contains("NO"), "{r}");
    let (r, _) = run(&mut m, Some("STARTTLS\r\n"));
    assert!(r.contains("PLAIN"), "no PLAIN offered under TLS: {r}");
    let (_, auth) = run(&mut m, Some("AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=\r\n"));
    assert!(auth, "PLAIN refused under TLS");
}

/// W4: bytes that never complete a command do not keep a session alive.
#[test]
fn idle_clock_counts_whole_commands_not_bytes() {
    let store: Store = Rc::default();
    let mut s = Session::new(store, None, 1, at(0));
    s.m = Server::new(
        at(0),
        s.store.clone(),
        Options {
            idle_timeout: Some(Duration::from_secs(3)),
            ..Options::default()
        },
    );
    s.drain(at(0));
    // A byte every 2 s: never a whole line.
    for k in 1..=3u64 {
        s.m.handle_input(at(k * 2000), b"G");
        s.drain(at(k * 2000));
        let t = s.tick(at(k * 2000));
        if k == 1 {
            assert!(t.is_empty(), "cut off too early: {t}");
        }
    }
    assert!(s.m.is_closed(), "a dribbling peer was kept");
    // A peer that completes commands slowly stays.
    let store: Store = Rc::default();
    let mut s = Session::new(store, None, 1, at(0));
    s.m = Server::new(
        at(0),
        s.store.clone(),
        Options {
            idle_timeout: Some(Duration::from_secs(3)),
            ..Options::default()
        },
    );
    s.drain(at(0));
    for k in 1..=5u64 {
        s.say(at(k * 2000), "NOOP\r\n");
        s.tick(at(k * 2000));
    }
    assert!(
        !s.m.is_closed(),
        "a peer sending whole commands was cut off"
    );
}
