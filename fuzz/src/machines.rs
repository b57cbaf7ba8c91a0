//! Targets `mupdate_server` and `csync_server`: the server session machines
//! (`engine::mupdate::Server` over a real `Database`, `engine::csync::Server`
//! over a `MemStore`) fed arbitrary client bytes.
//!
//! Input: a selector byte (options: small framer limits, COMPRESS offered,
//! and for MUPDATE the slave role), then the client's bytes, fed in
//! pseudo-random pieces. The rig plays the daemon: it resolves effects at
//! once (any non-empty password but `wrong` passes; an authcid containing
//! `admin`, or `repl`, is an admin; writes go to the database or store),
//! fires timers only when the machine waits for one, and treats bytes after
//! a layer switch as already decoded (as the replay tests do).
//!
//! Checks: no panic; the call-order contract holds (a machine that refuses
//! input always has an effect or a timer pending — never stalls; after
//! `Close` nothing more comes out; after EOF it closes within a bounded
//! number of steps); a client line is never met with silence (if the
//! machine read a complete line and did not close, it answered something);
//! and the store is consistent afterwards: nothing left pending, every
//! mailbox's records in strictly ascending UID order at or below
//! `last_uid`, every record's message present, every mailbox found again by
//! its unique id.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use engine::machine::{CloseReason, EffectId, Machine, Output, Time};
use engine::memstore::MemStore;
use engine::model::UnixTime;
use engine::store::{EffectRunner, MailRead, UidRange};

use crate::util::{chunkings, selector};

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every transmitted byte.
    pub out: Vec<u8>,
    /// Bytes transmitted by the constructor (banner).
    pub banner_len: usize,
    /// The close reason, if the machine closed.
    pub closed: Option<CloseReason>,
    /// The machine was closed before the input ran out.
    pub closed_early: bool,
}

fn password_ok(authcid: &str, pw: &[u8]) -> Option<bool> {
    (!pw.is_empty() && pw != b"wrong").then(|| authcid.contains("admin") || authcid == "repl")
}

/// Drives `m` with `resolve` playing the daemon.
fn drive<M: Machine>(
    m: &mut M,
    chunks: &[&[u8]],
    mut resolve: impl FnMut(M::Effect) -> Option<M::Completion>,
) -> Outcome {
    let mut now = Time::ZERO;
    let mut o = Outcome::default();
    let mut pending: VecDeque<(EffectId, M::Completion)> = VecDeque::new();
    let mut after_switch: VecDeque<Vec<u8>> = VecDeque::new();
    let mut step = |m: &mut M,
                    o: &mut Outcome,
                    pending: &mut VecDeque<(EffectId, M::Completion)>,
                    after: &mut VecDeque<Vec<u8>>| {
        let was_closed = o.closed.is_some();
        while let Some(out) = m.poll_output() {
            // After Close, completions of effects already emitted may still
            // produce events (and bytes the driver discards), nothing else.
            assert!(
                !was_closed || matches!(out, Output::Event(_) | Output::Transmit(_)),
                "effect, layer switch or second close after Close: {}",
                match &out {
                    Output::Effect { .. } => "effect",
                    Output::StartLayer { .. } => "layer",
                    Output::Close(_) => "close",
                    _ => "other",
                }
            );
            match out {
                Output::Transmit(b) if !was_closed => o.out.extend_from_slice(&b),
                Output::Transmit(_) => {}
                Output::Effect { id, effect } => {
                    if let Some(c) = resolve(effect) {
                        pending.push_back((id, c));
                    }
                }
                Output::Event(_) => {}
                Output::StartLayer {
                    input_after_switch, ..
                } => {
                    if !input_after_switch.is_empty() {
                        after.push_back(input_after_switch.to_vec());
                    }
                }
                Output::Close(r) => {
                    assert!(o.closed.is_none(), "closed twice");
                    o.closed = Some(r);
                }
            }
        }
        assert_eq!(
            m.is_closed(),
            o.closed.is_some(),
            "is_closed disagrees with Close"
        );
    };
    step(m, &mut o, &mut pending, &mut after_switch);
    o.banner_len = o.out.len();
    let mut input: VecDeque<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
    let mut eof_sent = false;
    let mut steps_after_eof = 0;
    loop {
        if m.is_closed() {
            o.closed_early = !input.is_empty() || !after_switch.is_empty();
            // Completions of effects already emitted are still delivered.
            while let Some((id, c)) = pending.pop_front() {
                m.handle_completion(now, id, c);
                step(m, &mut o, &mut pending, &mut after_switch);
            }
            return o;
        }
        if let Some((id, c)) = pending.pop_front() {
            m.handle_completion(now, id, c);
        } else if m.wants_input() && (!after_switch.is_empty() || !input.is_empty()) {
            let b = after_switch
                .pop_front()
                .or_else(|| input.pop_front())
                .expect("non-empty");
            m.handle_input(now, &b);
        } else if m.wants_input() && !eof_sent {
            eof_sent = true;
            m.handle_eof(now);
        } else {
            let t = m.poll_timeout().unwrap_or_else(|| {
                panic!(
                    "machine stalled: wants_input={}, no effect and no timer pending",
                    m.wants_input()
                )
            });
            now = now.max(t);
            m.handle_timeout(now);
        }
        if eof_sent {
            steps_after_eof += 1;
            assert!(steps_after_eof < 1000, "machine does not close after EOF");
        }
        step(m, &mut o, &mut pending, &mut after_switch);
    }
}

/// Silence check: if the input holds at least one complete client message
/// (framed with the machine's own options), the machine must have answered
/// something, or closed for a reason other than the peer's EOF.
fn no_silence(frame: &proto::frame::Options, input: &[u8], o: &Outcome) {
    let mut f = proto::frame::Framer::new(frame.clone());
    f.handle_input(input);
    let mut complete = false;
    while let Ok(Some(ev)) = f.poll_event() {
        if matches!(
            ev,
            proto::frame::Event::Message(_) | proto::frame::Event::Refused(_)
        ) {
            complete = true;
            break;
        }
    }
    let answered = o.out.len() > o.banner_len;
    let quiet_end = matches!(
        o.closed,
        Some(CloseReason::PeerClosed) | Some(CloseReason::Done) | None
    );
    assert!(
        !(complete && !answered && quiet_end),
        "a complete client message met with silence (close: {:?})",
        o.closed
    );
}

/// Target `mupdate_server`.
pub fn mupdate_server(data: &[u8]) {
    use engine::mupdate::{
        AuthOk, Committed, Completion, Database, Effect, Options, Read, Role, Server,
    };
    #[derive(Clone, Default)]
    struct Db(Rc<RefCell<Database>>);
    impl Read for Db {
        fn find(&self, name: &[u8]) -> Option<engine::mupdate::Record> {
            self.0.borrow().find(name).cloned()
        }
        fn list(&self, prefix: Option<&[u8]>) -> Vec<engine::mupdate::Entry> {
            self.0.borrow().list(prefix)
        }
    }
    let (sel, input) = selector(data);
    let mut opts = Options {
        compress: sel & 1 != 0,
        failed_login_pause: Duration::from_millis(50),
        ..Options::default()
    };
    if sel & 2 != 0 {
        opts.frame = proto::frame::Options {
            line_bytes_max: 64,
            literal_bytes_max: 32,
            inline_literal_bytes_max: 32,
            chunk_bytes_max: 8,
            ..opts.frame
        };
        opts.pending_changes_max = 2;
    }
    if sel & 4 != 0 {
        opts.role = Role::Slave {
            upstream: "master.test".into(),
        };
        opts.kick_upstream = sel & 8 != 0;
    }
    let chunks = chunkings(input).pop().expect("random chunking");
    let frame_opts = opts.frame.clone();
    let db = Db::default();
    let mut m = Server::new(Time::ZERO, db.clone(), opts);
    let o = drive(&mut m, &chunks, |e| {
        Some(match e {
            Effect::Authenticate(c) => Completion::Auth(
                password_ok(&c.authcid, c.password.expose()).map(|admin| AuthOk {
                    userid: c.authcid.clone(),
                    admin,
                }),
            ),
            Effect::Write(w) => {
                let mut d = db.0.borrow_mut();
                Completion::Written(d.decide(&w).map(|c| {
                    d.apply(&c);
                    Committed::after_commit()
                }))
            }
            Effect::Subscribe { hosts } => Completion::Subscribed(db.0.borrow().dump(&hosts)),
            // A slave's NOOP: the rig's "master" has nothing in flight.
            Effect::Kick => Completion::Kicked,
        })
    });
    no_silence(&frame_opts, input, &o);
    // Database consistency: list() is in name order and agrees with find().
    let d = db.0.borrow();
    let all = d.list(None);
    assert_eq!(all.len(), d.len());
    for e in &all {
        assert!(d.find(&e.name).is_some(), "listed entry not found");
    }
    assert!(
        all.windows(2).all(|w| w[0].name < w[1].name),
        "LIST not in name order"
    );
}

/// Checks a MemStore after a session.
pub fn check_store(store: &MemStore) {
    assert!(
        store.pending_ids().is_empty(),
        "batches left pending after every completion"
    );
    let s = store.durable();
    let boxes = s.mailboxes(None, usize::MAX).expect("read mailboxes");
    for mb in &boxes {
        let again = s
            .mailbox_by_uniqueid(&mb.uniqueid)
            .expect("read")
            .expect("mailbox by its unique id");
        assert_eq!(&again, mb, "mailbox differs by name and by unique id");
        let recs = s
            .records(&mb.uniqueid, UidRange::ALL, usize::MAX)
            .expect("read records");
        let mut last = 0u32;
        for r in &recs {
            assert!(r.uid.get() > last, "records not in ascending UID order");
            last = r.uid.get();
            assert!(r.uid.get() <= mb.last_uid, "record UID above last_uid");
            if !r.expunged {
                assert!(
                    s.has_message(&r.guid).expect("read"),
                    "record without its message"
                );
            }
        }
    }
}

/// Target `csync_server`.
pub fn csync_server(data: &[u8]) {
    use engine::csync::{AuthOk, Completion, Effect, Options, Server};
    let (sel, input) = selector(data);
    let mut opts = Options {
        server_name: "replica.test".into(),
        version: "3.6.1-corvid-fuzz".into(),
        partitions: vec!["default".into()],
        epoch_unix: UnixTime(1_800_000_000),
        compress: sel & 1 != 0,
        failed_login_pause: Duration::from_millis(50),
        ..Options::default()
    };
    if sel & 2 != 0 {
        opts.frame = proto::frame::Options {
            line_bytes_max: 256,
            literal_bytes_max: 64,
            inline_literal_bytes_max: 64,
            file_literal_bytes_max: 512,
            chunk_bytes_max: 16,
            ..opts.frame
        };
        opts.small_bodies_bytes_max = 600;
    }
    let chunks = chunkings(input).pop().expect("random chunking");
    let frame_opts = opts.frame.clone();
    let store = Rc::new(RefCell::new(MemStore::default()));
    let mut runner = EffectRunner::new();
    let mut m = Server::new(Time::ZERO, store.clone(), opts);
    let o = drive(&mut m, &chunks, |e| match e {
        Effect::Authenticate(c) => Some(Completion::Auth(
            password_ok(&c.authcid, c.password.expose()).map(|admin| AuthOk {
                userid: c.authcid.clone(),
                admin,
            }),
        )),
        Effect::Store(e) => Some(Completion::Store(runner.run(&mut *store.borrow_mut(), e))),
    });
    runner.abort_all(&mut *store.borrow_mut());
    no_silence(&frame_opts, input, &o);
    check_store(&store.borrow());
}
