//! PLAIN and LOGIN against the exchanges real Cyrus peers sent
//! (research/transcripts csync-*.txt and mupdate-auth.txt) and Cyrus SASL's
//! plugin behaviour.

use proptest::prelude::*;
use proto::sasl::{
    decode_initial, decode_response, encode, encode_initial, Client, Credentials, Mechanism,
    Options, Response, SaslError, Secret, Server, ServerStep, LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
};

fn opts() -> Options {
    Options::default()
}

fn done(step: ServerStep) -> Credentials {
    match step {
        ServerStep::Done(c) => c,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn creds(authzid: Option<&str>, authcid: &str, pw: &[u8]) -> Credentials {
    Credentials {
        authzid: authzid.map(Into::into),
        authcid: authcid.into(),
        password: Secret::new(pw),
    }
}

/// `C: AUTHENTICATE PLAIN AHJlcGwAcmVwbHBhc3M=` from sync_client 3.6.1 (csync-*.txt).
#[test]
fn csync_plain_initial_response() {
    let ir = decode_initial(b"AHJlcGwAcmVwbHBhc3M=", &opts()).unwrap();
    let (_, step) = Server::start_named("PLAIN", Some(ir.expose()), opts()).unwrap();
    let c = done(step);
    assert_eq!(c, creds(None, "repl", b"replpass"));
    assert_eq!(c.effective_id(), "repl");
    // And our client produces the same bytes.
    let mut client = Client::new(Mechanism::Plain, creds(None, "repl", b"replpass"));
    assert_eq!(
        encode_initial(client.initial_response().unwrap().expose()),
        "AHJlcGwAcmVwbHBhc3M="
    );
}

/// mupdate-auth.txt, third connection: authzid differs from authcid.
#[test]
fn mupdate_plain_with_authzid() {
    let ir = decode_initial(b"c29tZW9uZQBtdXBkYXRlYWRtaW4Ac2VjcmV0", &opts()).unwrap();
    let c = done(
        Server::start(Mechanism::Plain, Some(ir.expose()), opts())
            .unwrap()
            .1,
    );
    assert_eq!(c, creds(Some("someone"), "mupdateadmin", b"secret"));
    assert_eq!(c.effective_id(), "someone");
}

/// mupdate-auth.txt A5/A6: no initial response, empty challenge, then the
/// response on its own line, or `*`.
#[test]
fn plain_without_initial_response() {
    let (mut s, step) = Server::start(Mechanism::Plain, None, opts()).unwrap();
    assert_eq!(step, ServerStep::Challenge(Vec::new()));
    assert_eq!(encode(b""), "");
    let Response::Data(r) = decode_response(b"AG11cGRhdGVhZG1pbgBzZWNyZXQ=", &opts()).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        done(s.step(r.expose()).unwrap()),
        creds(None, "mupdateadmin", b"secret")
    );
    assert_eq!(s.step(b"more"), Err(SaslError::Finished));

    assert_eq!(decode_response(b"*", &opts()).unwrap(), Response::Cancel);

    // Our client answers the empty challenge with the message.
    let mut client = Client::new(Mechanism::Plain, creds(None, "mupdateadmin", b"secret"));
    assert_eq!(
        encode(client.step(b"").unwrap().expose()),
        "AG11cGRhdGVhZG1pbgBzZWNyZXQ="
    );
    assert!(matches!(
        client.step(b""),
        Err(SaslError::UnexpectedChallenge { .. })
    ));
}

#[test]
fn plain_malformed_messages_refused() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "expected authzid NUL authcid NUL password"),
        (b"alice", "expected authzid NUL authcid NUL password"),
        (b"\0alice", "expected authzid NUL authcid NUL password"),
        (b"\0\0pw", "empty authentication identity"),
        (b"\0alice\0", "empty password"),
        (b"\0alice\0pw\0x", "more than two NUL separators"),
        (b"\0al\xffice\0pw", "authentication identity is not UTF-8"),
        (b"\xff\0alice\0pw", "authorization identity is not UTF-8"),
    ];
    for (msg, reason) in cases {
        let e = Server::start(Mechanism::Plain, Some(msg), opts()).unwrap_err();
        assert_eq!(
            e,
            SaslError::Malformed {
                mechanism: Mechanism::Plain,
                reason
            },
            "{msg:?}"
        );
        // The same message as a response to the empty challenge.
        let (mut s, _) = Server::start(Mechanism::Plain, None, opts()).unwrap();
        assert!(matches!(s.step(msg), Err(SaslError::Malformed { .. })));
    }
    // A password of any bytes but NUL is kept as bytes.
    let c = done(
        Server::start(Mechanism::Plain, Some(b"\0alice\0p\xe4ss w"), opts())
            .unwrap()
            .1,
    );
    assert_eq!(c.password.expose(), b"p\xe4ss w");
}

/// Cyrus's LOGIN plugin: `Username:` then `Password:`.
#[test]
fn login_two_steps() {
    let (mut s, step) = Server::start(Mechanism::Login, None, opts()).unwrap();
    assert_eq!(step, ServerStep::Challenge(b"Username:".to_vec()));
    assert_eq!(encode(LOGIN_USERNAME_CHALLENGE), "VXNlcm5hbWU6");
    assert_eq!(
        s.step(b"alice").unwrap(),
        ServerStep::Challenge(b"Password:".to_vec())
    );
    assert_eq!(encode(LOGIN_PASSWORD_CHALLENGE), "UGFzc3dvcmQ6");
    let c = done(s.step(b"wonderland").unwrap());
    assert_eq!(c, creds(None, "alice", b"wonderland"));
    assert_eq!(s.step(b""), Err(SaslError::Finished));

    // `=` (empty initial response) is the same as none.
    let (_, step) = Server::start(Mechanism::Login, Some(b""), opts()).unwrap();
    assert_eq!(step, ServerStep::Challenge(b"Username:".to_vec()));
    // A non-empty initial response is the user name.
    let (mut s, step) = Server::start(Mechanism::Login, Some(b"bob"), opts()).unwrap();
    assert_eq!(step, ServerStep::Challenge(b"Password:".to_vec()));
    assert_eq!(done(s.step(b"pw").unwrap()).authcid, "bob");
}

#[test]
fn login_client_answers_in_order() {
    let mut c = Client::new(Mechanism::Login, creds(None, "alice", b"pw"));
    assert!(c.initial_response().is_none());
    assert_eq!(c.step(b"Username:").unwrap().expose(), b"alice");
    assert_eq!(c.step(b"Password:").unwrap().expose(), b"pw");
    assert!(matches!(
        c.step(b"Again:"),
        Err(SaslError::UnexpectedChallenge {
            mechanism: Mechanism::Login
        })
    ));
}

#[test]
fn login_limits_and_malformed() {
    let (mut s, _) = Server::start(Mechanism::Login, None, opts()).unwrap();
    assert!(matches!(
        s.step(&[b'a'; 1025]),
        Err(SaslError::Malformed { .. })
    ));
    let (mut s, _) = Server::start(Mechanism::Login, None, opts()).unwrap();
    assert!(matches!(
        s.step(b""),
        Err(SaslError::Malformed {
            reason: "empty user name",
            ..
        })
    ));
    let (mut s, _) = Server::start(Mechanism::Login, Some(&[b'a'; 1024]), opts()).unwrap();
    assert!(matches!(
        s.step(&[b'p'; 1025]),
        Err(SaslError::Malformed { .. })
    ));
    let (mut s, _) = Server::start(Mechanism::Login, Some(b"a"), opts()).unwrap();
    assert!(matches!(
        s.step(b"p\0w"),
        Err(SaslError::Malformed {
            reason: "NUL in field",
            ..
        })
    ));
}

#[test]
fn base64_steps_and_limits() {
    assert_eq!(decode_initial(b"=", &opts()).unwrap(), Secret::default());
    assert_eq!(encode_initial(b""), "=");
    assert_eq!(
        decode_response(b"", &opts()).unwrap(),
        Response::Data(Secret::default())
    );
    assert_eq!(
        decode_response(b"not base64!", &opts()),
        Err(SaslError::BadBase64)
    );
    assert_eq!(
        decode_initial(b"AHJlcGw", &opts()),
        Err(SaslError::BadBase64)
    );
    let small = Options {
        response_bytes_max: 6,
        ..Options::default()
    };
    // 8 base64 characters are 6 bytes: at the limit, accepted; one over, refused.
    assert!(decode_response(b"AAAAAAAA", &small).is_ok());
    assert_eq!(
        decode_response(b"AAAAAAAAAAAA", &small),
        Err(SaslError::TooLong { bytes_max: 6 })
    );
    let five = Options {
        response_bytes_max: 5,
        ..Options::default()
    };
    assert_eq!(
        decode_response(b"AAAAAAAA", &five),
        Err(SaslError::TooLong { bytes_max: 5 })
    );
    assert!(decode_response(b"AAAAAAA=", &five).is_ok());
    // A huge line is refused by its length alone.
    let huge = vec![b'A'; 1 << 20];
    assert_eq!(
        decode_response(&huge, &opts()),
        Err(SaslError::TooLong { bytes_max: 8192 })
    );
    let (mut s, _) = Server::start(Mechanism::Plain, None, small).unwrap();
    assert_eq!(
        s.step(b"\0alice\0pw"),
        Err(SaslError::TooLong { bytes_max: 6 })
    );
}

#[test]
fn mechanism_names() {
    assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
    assert_eq!(Mechanism::from_name("Login"), Some(Mechanism::Login));
    assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
    assert_eq!(
        Mechanism::parse_list("SCRAM-SHA-1 LOGIN  plain LOGIN"),
        vec![Mechanism::Login, Mechanism::Plain]
    );
    assert_eq!(
        Server::start_named("NOSUCHMECH", None, opts()).unwrap_err(),
        SaslError::UnknownMechanism("NOSUCHMECH".into())
    );
    assert_eq!(Mechanism::Plain.to_string(), "PLAIN");
}

#[test]
fn passwords_never_in_debug() {
    let c = creds(Some("someone"), "mupdateadmin", b"hunter2");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(
        dbg.contains("mupdateadmin") && dbg.contains("7 bytes redacted"),
        "{dbg}"
    );
    let mut client = Client::new(Mechanism::Plain, c.clone());
    assert!(!format!("{client:?}").contains("hunter2"));
    let ir = client.initial_response().unwrap();
    assert!(!format!("{ir:?}").contains("hunter2"));
    let (mut s, _) = Server::start(Mechanism::Login, Some(b"u"), opts()).unwrap();
    let step = s.step(b"hunter2").unwrap();
    assert!(!format!("{step:?} {s:?}").contains("hunter2"));
    let r = decode_response(encode(b"\0u\0hunter2").as_bytes(), &opts()).unwrap();
    assert!(!format!("{r:?}").contains("hunter2"));
}

fn id() -> impl Strategy<Value = String> {
    "[^\u{0}]{1,40}"
}

proptest! {
    /// Whatever the credentials, our client and our server agree, through base64.
    #[test]
    fn client_server_agree(
        authzid in proptest::option::of(id()),
        authcid in id(),
        password in proptest::collection::vec(1u8..=255, 1..100),
        login in any::<bool>(),
        send_initial in any::<bool>(),
    ) {
        let mech = if login { Mechanism::Login } else { Mechanism::Plain };
        // LOGIN carries no authorization identity.
        let authzid = if login { None } else { authzid };
        let sent = creds(authzid.as_deref(), &authcid, &password);
        let mut client = Client::new(mech, sent.clone());
        let initial = if send_initial { client.initial_response() } else { None };
        let initial_wire = initial.map(|i| encode_initial(i.expose()));
        let initial = initial_wire.map(|w| decode_initial(w.as_bytes(), &opts()).unwrap());
        let (mut server, mut step) = Server::start(mech, initial.as_ref().map(|i| i.expose()), opts()).unwrap();
        let got = loop {
            match step {
                ServerStep::Done(c) => break c,
                ServerStep::Challenge(ch) => {
                    let ch = b64_round(&ch);
                    let resp = client.step(&ch).unwrap();
                    let Response::Data(r) = decode_response(encode(resp.expose()).as_bytes(), &opts()).unwrap() else {
                        panic!("cancel")
                    };
                    step = server.step(r.expose()).unwrap();
                }
            }
        };
        prop_assert_eq!(got, sent);
    }

    /// The server never panics and never holds more than the limit, whatever the client sends.
    #[test]
    fn server_total(steps in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4), login in any::<bool>()) {
        let mech = if login { Mechanism::Login } else { Mechanism::Plain };
        let mut it = steps.iter();
        if let Ok((mut s, _)) = Server::start(mech, it.next().map(|v| v.as_slice()), opts()) {
            for st in it {
                if s.step(st).is_err() { break; }
            }
        }
    }
}

fn b64_round(bytes: &[u8]) -> Vec<u8> {
    match decode_response(encode(bytes).as_bytes(), &opts()).unwrap() {
        Response::Data(d) => d.expose().to_vec(),
        Response::Cancel => unreachable!(),
    }
}
