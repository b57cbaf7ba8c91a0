//! Properties of the MUPDATE codec: encode → frame (any chunking) → decode
//! is the identity for commands and responses, and every strict prefix of
//! an encoded stream decodes to a prefix of its messages.

use bytes::Bytes;
use proptest::prelude::*;
use proto::frame::{Event, Framer, Options};
use proto::mupdate::{
    self, parse_command, parse_response, Command, Form, Reply, Response, Status, Str, Text,
};

/// Any bytes but NUL (MUPDATE strings never hold NUL).
fn value() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(1u8..=255, 0..40).prop_map(Bytes::from)
}

fn nonempty() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(1u8..=255, 1..20).prop_map(Bytes::from)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (nonempty(), prop::option::of(value()))
            .prop_map(|(mechanism, initial)| Command::Authenticate { mechanism, initial }),
        Just(Command::Starttls),
        value().prop_map(|algorithm| Command::Compress { algorithm }),
        (value(), value(), value()).prop_map(|(name, location, acl)| Command::Activate {
            name,
            location,
            acl
        }),
        (value(), value()).prop_map(|(name, location)| Command::Deactivate { name, location }),
        (value(), value()).prop_map(|(name, location)| Command::Reserve { name, location }),
        value().prop_map(|name| Command::Delete { name }),
        value().prop_map(|name| Command::Find { name }),
        prop::option::of(value()).prop_map(|prefix| Command::List { prefix }),
        prop::collection::vec(nonempty(), 0..=mupdate::UPDATE_HOSTS_MAX)
            .prop_map(|hosts| Command::Update { hosts }),
        Just(Command::Noop),
        Just(Command::Logout),
    ]
}

fn tag() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"ABCXYZ0123456789.+*".to_vec()), 1..8)
}

fn str_any() -> impl Strategy<Value = Str> {
    (
        value(),
        prop_oneof![Just(Form::Quoted), Just(Form::NonSync), Just(Form::Sync)],
    )
        .prop_map(|(v, f)| {
            Str::with_form(v.clone(), f).unwrap_or_else(|_| Str::literal(v).unwrap())
        })
}

fn response() -> impl Strategy<Value = Response> {
    // A server echoes the client's tag; a tag that is exactly `+` would read
    // as a continuation, so clients never use it (Cyrus's never do).
    let t = || {
        tag().prop_map(|mut t| {
            t.insert(0, b'T');
            Bytes::from(t)
        })
    };
    prop_oneof![
        prop::collection::vec(str_any(), 0..3).prop_map(Response::Auth),
        Just(Response::Starttls),
        prop::collection::vec(str_any(), 0..3).prop_map(Response::Compress),
        Just(Response::PartialUpdate),
        (str_any(), str_any(), str_any(), str_any()).prop_map(
            |(server, implementation, version, source)| Response::Ready {
                server,
                implementation,
                version,
                source
            }
        ),
        (t(), str_any(), str_any(), str_any()).prop_map(|(tag, name, location, acl)| {
            Response::Mailbox {
                tag,
                name,
                location,
                acl,
            }
        }),
        (t(), str_any(), str_any()).prop_map(|(tag, name, location)| Response::Reserve {
            tag,
            name,
            location
        }),
        (t(), str_any()).prop_map(|(tag, name)| Response::Delete { tag, name }),
        (
            t(),
            prop_oneof![
                Just(Status::Ok),
                Just(Status::No),
                Just(Status::Bad),
                Just(Status::Bye)
            ],
            prop::option::of(str_any())
        )
            .prop_map(|(tag, status, text)| Response::Reply(Reply {
                tag,
                status,
                text: text.map(Text::Str)
            })),
    ]
}

fn frame_chunked(bytes: &[u8], cuts: &[usize], opts: Options) -> Vec<proto::frame::Message> {
    let mut f = Framer::new(opts);
    let mut out = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort();
    for p in points {
        f.handle_input(&bytes[at..p]);
        at = p;
        while let Some(ev) = f.poll_event().unwrap() {
            match ev {
                Event::Message(m) => out.push(m),
                Event::ContinuationNeeded { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn commands_round_trip(cmds in prop::collection::vec((tag(), command(), prop_oneof![Just(Form::Quoted), Just(Form::NonSync), Just(Form::Sync)]), 1..6),
                           cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut wire = Vec::new();
        for (t, c, f) in &cmds {
            wire.extend_from_slice(&c.encode(t, *f));
        }
        let msgs = frame_chunked(&wire, &cuts, mupdate::server_frame_options());
        prop_assert_eq!(msgs.len(), cmds.len());
        for (m, (t, c, _)) in msgs.iter().zip(&cmds) {
            let (tag, cmd) = parse_command(m).unwrap();
            prop_assert_eq!(&tag[..], &t[..]);
            prop_assert_eq!(&cmd, c);
        }
    }

    #[test]
    fn responses_round_trip_byte_identically(rs in prop::collection::vec(response(), 1..6),
                                             cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let mut wire = Vec::new();
        for r in &rs {
            r.encode_into(&mut wire);
        }
        let msgs = frame_chunked(&wire, &cuts, mupdate::client_frame_options());
        prop_assert_eq!(msgs.len(), rs.len());
        let mut again = Vec::new();
        for (m, r) in msgs.iter().zip(&rs) {
            let got = parse_response(m).unwrap();
            prop_assert_eq!(&got, r);
            got.encode_into(&mut again);
        }
        prop_assert_eq!(again, wire);
    }

    #[test]
    fn prefixes_give_prefixes(cmds in prop::collection::vec((tag(), command()), 1..4), cut in any::<usize>()) {
        let mut wire = Vec::new();
        for (t, c) in &cmds {
            wire.extend_from_slice(&c.encode(t, Form::NonSync));
        }
        let cut = cut % (wire.len() + 1);
        let msgs = frame_chunked(&wire[..cut], &[], mupdate::server_frame_options());
        prop_assert!(msgs.len() <= cmds.len());
        for (m, (t, c)) in msgs.iter().zip(&cmds) {
            let (tag, cmd) = parse_command(m).unwrap();
            prop_assert_eq!(&tag[..], &t[..]);
            prop_assert_eq!(&cmd, c);
        }
    }
}
