//! `engine::mupdate::follower::Follower`: replays the real Cyrus slave's
//! boot against the Cyrus master's recorded lines, then follows our own
//! `Server` end to end.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use engine::machine::{self, Machine, Output, Time};
use engine::mupdate::follower::{
    self, Completion as FCompletion, Effect as FEffect, Event as FEvent, Follower,
};
use engine::mupdate::{
    AuthOk, Committed, Completion, Database, Effect, Entry, Read, Record, Server, State,
};
use proto::sasl::Secret;

fn opts(user: &str, pass: &str) -> follower::Options {
    let mut o = follower::Options::new(user, Secret::new(pass.as_bytes().to_vec()));
    o.username = user.into();
    o
}

/// Applies follower effects to a local database.
fn apply(local: &mut Database, e: FEffect) {
    match e {
        FEffect::Replace(entries) => {
            *local = Database::new();
            for Entry { name, record } in entries {
                local.load(name, record);
            }
        }
        FEffect::Apply { name, record } => {
            let before = local.find(&name).cloned();
            local.apply(&engine::mupdate::Change {
                name,
                before,
                after: record,
            });
        }
    }
}

#[test]
fn boots_like_the_real_cyrus_slave() {
    // Server lines of mupdate-slave-boot.txt (Cyrus master → Cyrus slave fe1).
    let dump = "* AUTH \"PLAIN\"\r\n* COMPRESS \"DEFLATE\"\r\n* PARTIAL-UPDATE\r\n\
* OK MUPDATE \"mupdate-master.lab\" \"Cyrus IMAP\" \"3.6.1-Debian-3.6.1-4+deb12u5\" \"(master)\"\r\n";
    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    let mut sent = Vec::new();
    let mut local = Database::new();
    let mut events = Vec::new();
    let pump = |f: &mut Follower,
                sent: &mut Vec<u8>,
                local: &mut Database,
                events: &mut Vec<FEvent>,
                now: Time| {
        let mut done = Vec::new();
        machine::drain(f, |o| match o {
            Output::Transmit(b) => sent.extend_from_slice(&b),
            Output::Effect { id, effect } => {
                apply(local, effect);
                done.push(id);
            }
            Output::Event(e) => events.push(e),
            _ => {}
        });
        for id in done {
            f.handle_completion(now, id, FCompletion::Done);
        }
    };
    f.handle_input(Time::ZERO, dump.as_bytes());
    pump(&mut f, &mut sent, &mut local, &mut events, Time::ZERO);
    // Byte for byte what the real slave sent (mupdate-slave-boot.txt).
    assert_eq!(
        String::from_utf8_lossy(&sent),
        "A01 AUTHENTICATE \"PLAIN\" {20+}\r\nZmUxAGZlMQBzZWNyZXQ=\r\n"
    );
    sent.clear();
    f.handle_input(Time::ZERO, b"A01 OK \"Authenticated\"\r\n");
    pump(&mut f, &mut sent, &mut local, &mut events, Time::ZERO);
    assert_eq!(String::from_utf8_lossy(&sent), "U01 UPDATE\r\n");
    sent.clear();
    let stream = "U01 MAILBOX {11+}\r\nshared.news {23+}\r\n127.0.0.1:34005!default {32+}\r\nanyone\tlrs\tcyrus\tlrswipkxtecdan\t\r\n\
U01 MAILBOX {10+}\r\nuser.alice {23+}\r\n127.0.0.1:34003!default {21+}\r\nalice\tlrswipkxtecdan\t\r\n\
U01 RESERVE {8+}\r\nuser.zed {23+}\r\n127.0.0.1:34005!default\r\nU01 OK \"streaming starts\"\r\n";
    f.handle_input(Time::ZERO, stream.as_bytes());
    pump(&mut f, &mut sent, &mut local, &mut events, Time::ZERO);
    assert_eq!(local.len(), 3);
    assert_eq!(local.find(b"user.zed").unwrap().state, State::Reserved);
    let t = Time::from_millis(4972);
    f.handle_input(t, b"U01 MAILBOX {9+}\r\nuser.hank {23+}\r\n127.0.0.1:34003!default {20+}\r\nhank\tlrswipkxtecdan\t\r\n");
    pump(&mut f, &mut sent, &mut local, &mut events, t);
    assert!(local.find(b"user.hank").is_some());
    // 20 s of silence: the idle NOOP, numbered from N0 like Cyrus's.
    assert_eq!(f.poll_timeout(), Some(Time::from_millis(24_972)));
    f.handle_timeout(Time::from_millis(24_972));
    pump(&mut f, &mut sent, &mut local, &mut events, t);
    assert_eq!(String::from_utf8_lossy(&sent), "N0 NOOP\r\n");
    f.handle_input(Time::from_millis(24_973), b"N0 OK \"Noop done\"\r\n");
    pump(&mut f, &mut sent, &mut local, &mut events, t);
    assert!(!f.is_closed());
    assert_eq!(
        events,
        vec![FEvent::Authenticated, FEvent::Synced { entries: 3 }]
    );
    // A master that stops answering is declared dead after another interval.
    f.handle_timeout(Time::from_millis(44_973));
    f.handle_timeout(Time::from_millis(64_974));
    pump(&mut f, &mut sent, &mut local, &mut events, t);
    assert!(f.is_closed());
}

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

#[test]
fn follows_our_own_master_end_to_end() {
    let master_db = Shared::default();
    master_db.0.borrow_mut().load(
        Bytes::from_static(b"user.a"),
        Record {
            state: State::Active {
                acl: Bytes::from_static(b"a\tlrs\t"),
            },
            location: Bytes::from_static(b"h!p"),
        },
    );
    let mut m = Server::new(
        Time::ZERO,
        master_db.clone(),
        engine::mupdate::Options::default(),
    );
    let mut f = Follower::new(Time::ZERO, opts("admin", "pw"));
    let mut local = Database::new();
    let mut sub_registered = false;
    // Shuttle bytes until quiet; the master's effects are resolved inline.
    let shuttle =
        |m: &mut Server<Shared>, f: &mut Follower, local: &mut Database, sub: &mut bool| {
            for _ in 0..50 {
                let mut to_f = Vec::new();
                loop {
                    let mut effects = Vec::new();
                    machine::drain(m, |o| match o {
                        Output::Transmit(b) => to_f.extend_from_slice(&b),
                        Output::Effect { id, effect } => effects.push((id, effect)),
                        _ => {}
                    });
                    if effects.is_empty() {
                        break;
                    }
                    for (id, e) in effects {
                        let c = match e {
                            Effect::Authenticate(c) => Completion::Auth(Some(AuthOk {
                                userid: c.authcid.clone(),
                                admin: c.password.expose() == b"pw",
                            })),
                            Effect::Subscribe { hosts } => {
                                *sub = true;
                                Completion::Subscribed(master_db.0.borrow().dump(&hosts))
                            }
                            Effect::Write(_) | Effect::Kick => unreachable!(),
                        };
                        m.handle_completion(Time::ZERO, id, c);
                    }
                }
                if !to_f.is_empty() {
                    f.handle_input(Time::ZERO, &to_f);
                }
                let mut to_m = Vec::new();
                let mut done = Vec::new();
                machine::drain(f, |o| match o {
                    Output::Transmit(b) => to_m.extend_from_slice(&b),
                    Output::Effect { id, effect } => {
                        apply(local, effect);
                        done.push(id);
                    }
                    _ => {}
                });
                for id in done {
                    f.handle_completion(Time::ZERO, id, FCompletion::Done);
                }
                if to_m.is_empty() && to_f.is_empty() {
                    return;
                }
                if !to_m.is_empty() {
                    m.handle_input(Time::ZERO, &to_m);
                }
            }
            panic!("no quiescence");
        };
    shuttle(&mut m, &mut f, &mut local, &mut sub_registered);
    assert!(sub_registered);
    assert_eq!(local.list(None), master_db.0.borrow().list(None));
    // A committed change on the master reaches the follower's copy.
    let change = master_db
        .0
        .borrow()
        .decide(&engine::mupdate::Write::Delete {
            name: Bytes::from_static(b"user.a"),
        })
        .unwrap();
    master_db.0.borrow_mut().apply(&change);
    m.handle_command(
        Time::ZERO,
        engine::mupdate::Command::Change(std::sync::Arc::new(change)),
    );
    shuttle(&mut m, &mut f, &mut local, &mut sub_registered);
    assert!(local.is_empty());
    let _ = Committed::after_commit();
    assert_eq!(
        follower::backoff(Duration::from_secs(20), 0, 0.5),
        Duration::from_secs(25)
    );
    assert_eq!(
        follower::backoff(Duration::from_secs(20), 9, 0.0),
        Duration::from_secs(160)
    );
}

#[test]
fn kicks_are_reported_after_the_noop_and_the_changes_before_it() {
    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    let mut out = Vec::new();
    let mut effects = Vec::new();
    let mut events = Vec::new();
    let feed = |f: &mut Follower,
                bytes: &[u8],
                out: &mut Vec<u8>,
                effects: &mut Vec<engine::machine::EffectId>,
                events: &mut Vec<FEvent>| {
        if !bytes.is_empty() {
            f.handle_input(Time::ZERO, bytes);
        }
        machine::drain(f, |o| match o {
            Output::Transmit(b) => out.extend_from_slice(&b),
            Output::Effect { id, .. } => effects.push(id),
            Output::Event(e) => events.push(e),
            _ => {}
        });
    };
    feed(&mut f, b"* OK MUPDATE \"m\" \"Cyrus IMAP\" \"v\" \"(master)\"\r\nA01 OK \"Authenticated\"\r\nU01 OK \"streaming starts\"\r\n", &mut out, &mut effects, &mut events);
    for id in effects.drain(..) {
        f.handle_completion(Time::ZERO, id, FCompletion::Done);
    }
    out.clear();
    // Kick 1: NOOP N0. Kick 2 while N0 is pending: queued behind it.
    f.handle_command(Time::ZERO, follower::Command::Kick(1));
    f.handle_command(Time::ZERO, follower::Command::Kick(2));
    feed(&mut f, b"", &mut out, &mut effects, &mut events);
    assert_eq!(String::from_utf8_lossy(&out), "N0 NOOP\r\n");
    out.clear();
    // The master flushes a change, then answers N0: kick 1 waits for the change to be applied.
    feed(
        &mut f,
        b"U01 DELETE {1+}\r\nx\r\nN0 OK \"Noop done\"\r\n",
        &mut out,
        &mut effects,
        &mut events,
    );
    assert_eq!(String::from_utf8_lossy(&out), "N1 NOOP\r\n");
    assert!(!events.iter().any(|e| matches!(e, FEvent::Kicked(_))));
    let id = effects.pop().unwrap();
    f.handle_completion(Time::ZERO, id, FCompletion::Done);
    feed(&mut f, b"", &mut out, &mut effects, &mut events);
    assert_eq!(events.last(), Some(&FEvent::Kicked(1)));
    feed(
        &mut f,
        b"N1 OK \"Noop done\"\r\n",
        &mut out,
        &mut effects,
        &mut events,
    );
    assert_eq!(events.last(), Some(&FEvent::Kicked(2)));
}

/// A master that goes silent before the update stream starts (here: after
/// its banner, so the login is never answered) must not leave the slave
/// waiting forever: the follower closes as a timeout once
/// `handshake_idle_max` passes without a byte, and the daemon reconnects.
/// Found by the simulator (`CORVID_SIM_SEED=101`, heavy faults).
#[test]
fn silent_master_before_the_stream_times_out() {
    let banner = "* AUTH \"PLAIN\"\r\n* OK MUPDATE \"m\" \"Cyrus IMAP\" \"3.6.1\" \"(master)\"\r\n";
    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    f.handle_input(Time::ZERO, banner.as_bytes());
    let mut closed = None;
    machine::drain(&mut f, |o| {
        if let Output::Close(r) = o {
            closed = Some(r)
        }
    });
    assert!(closed.is_none(), "the login goes out, nothing closes yet");
    let deadline = f.poll_timeout().expect("a deadline while logging in");
    assert_eq!(deadline, Time::ZERO + Duration::from_secs(60));

    // A spurious early wake-up changes nothing.
    f.handle_timeout(Time::ZERO + Duration::from_secs(59));
    machine::drain(&mut f, |o| {
        if let Output::Close(r) = o {
            closed = Some(r)
        }
    });
    assert!(closed.is_none() && !f.is_closed());

    f.handle_timeout(deadline);
    machine::drain(&mut f, |o| {
        if let Output::Close(r) = o {
            closed = Some(r)
        }
    });
    assert!(
        matches!(closed, Some(machine::CloseReason::Timeout(_))),
        "closed as a timeout: {closed:?}"
    );
    assert!(f.is_closed());
}

/// The deadline measures silence, not total time: a master that keeps
/// talking (a long dump arriving slowly) is never cut off.
#[test]
fn a_slow_but_live_dump_is_not_cut() {
    let banner = "* AUTH \"PLAIN\"\r\n* OK MUPDATE \"m\" \"Cyrus IMAP\" \"3.6.1\" \"(master)\"\r\n";
    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    f.handle_input(Time::ZERO, banner.as_bytes());
    machine::drain(&mut f, |_| {});
    let mut now = Time::ZERO;
    f.handle_input(now, b"A01 OK \"Authenticated\"\r\n");
    machine::drain(&mut f, |_| {});
    for i in 0..10u32 {
        now = now + Duration::from_secs(45);
        f.handle_timeout(now);
        let line =
            format!("U01 MAILBOX {{7+}}\r\nuser.u{i} {{11+}}\r\nbe1!default {{2+}}\r\nx\t\r\n");
        f.handle_input(now, line.as_bytes());
        machine::drain(&mut f, |_| {});
        assert!(!f.is_closed(), "cut off after {i} slow dump lines");
    }
}

/// `Synced` means the dump is stored: it is reported when the Replace
/// effect completes, not when it is issued (a daemon opens to clients, and
/// a frontend routes, on Synced).
#[test]
fn synced_waits_for_the_dump_to_be_stored() {
    let banner = "* AUTH \"PLAIN\"\r\n* OK MUPDATE \"m\" \"Cyrus IMAP\" \"3.6.1\" \"(master)\"\r\n";
    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    let mut events = Vec::new();
    let mut effects = Vec::new();
    let drain = |f: &mut Follower, events: &mut Vec<FEvent>, effects: &mut Vec<_>| {
        machine::drain(f, |o| match o {
            Output::Effect { id, .. } => effects.push(id),
            Output::Event(e) => events.push(e),
            _ => {}
        })
    };
    f.handle_input(Time::ZERO, banner.as_bytes());
    drain(&mut f, &mut events, &mut effects);
    f.handle_input(Time::ZERO, b"A01 OK \"Authenticated\"\r\n");
    f.handle_input(
        Time::ZERO,
        b"U01 RESERVE {8+}\r\nuser.zed {4+}\r\nbe!p\r\nU01 OK \"streaming starts\"\r\n",
    );
    drain(&mut f, &mut events, &mut effects);
    assert_eq!(events, vec![FEvent::Authenticated]);
    assert_eq!(effects.len(), 1, "the Replace");
    f.handle_completion(Time::ZERO, effects[0], FCompletion::Done);
    drain(&mut f, &mut events, &mut effects);
    assert_eq!(
        events,
        vec![FEvent::Authenticated, FEvent::Synced { entries: 1 }]
    );
}

/// A master that offers no PLAIN in the clear (Cyrus's default
/// `allowplaintext: no`) but STARTTLS: the follower starts TLS (the bytes
/// after the OK go to the TLS layer), reads the banner again and logs in
/// with PLAIN; without a TLS name it logs in with PLAIN at once, as before.
#[test]
fn starts_tls_when_the_master_withholds_plain() {
    let clear = "* AUTH\r\n* STARTTLS\r\n* PARTIAL-UPDATE\r\n* OK MUPDATE \"m\" \"corvid\" \"0\" \"(master)\"\r\n";
    let mut o = opts("fe1", "secret");
    o.tls_server_name = Some("mupdate.example".into());
    let mut f = Follower::new(Time::ZERO, o);
    let mut sent = Vec::new();
    let mut layers = Vec::new();
    let mut drain = |f: &mut Follower, sent: &mut Vec<u8>| {
        machine::drain(f, |out| match out {
            Output::Transmit(b) => sent.extend_from_slice(&b),
            Output::StartLayer {
                layer,
                input_after_switch,
            } => layers.push((layer, input_after_switch)),
            _ => {}
        })
    };
    f.handle_input(Time::ZERO, clear.as_bytes());
    drain(&mut f, &mut sent);
    assert_eq!(String::from_utf8_lossy(&sent), "S01 STARTTLS\r\n");
    sent.clear();
    f.handle_input(Time::ZERO, b"S01 OK Begin TLS negotiation now\r\nHANDSHAKE");
    drain(&mut f, &mut sent);
    assert!(sent.is_empty());
    f.handle_input(
        Time::ZERO,
        b"* AUTH \"PLAIN\"\r\n* OK MUPDATE \"m\" \"corvid\" \"0\" \"(master)\"\r\n",
    );
    drain(&mut f, &mut sent);
    assert_eq!(
        String::from_utf8_lossy(&sent),
        "A01 AUTHENTICATE \"PLAIN\" {20+}\r\nZmUxAGZlMQBzZWNyZXQ=\r\n"
    );
    assert_eq!(
        layers,
        vec![(
            machine::Layer::TlsClient {
                server_name: "mupdate.example".into()
            },
            Bytes::from_static(b"HANDSHAKE")
        )]
    );

    let mut f = Follower::new(Time::ZERO, opts("fe1", "secret"));
    let mut sent = Vec::new();
    f.handle_input(Time::ZERO, clear.as_bytes());
    machine::drain(&mut f, |out| {
        if let Output::Transmit(b) = out {
            sent.extend_from_slice(&b)
        }
    });
    assert!(String::from_utf8_lossy(&sent).starts_with("A01 AUTHENTICATE \"PLAIN\""));
}
