//! Target `sasl`: the SASL PLAIN/LOGIN server and client and the base64
//! step codec.
//!
//! Input: lines. The first line names the mechanism (any bytes: unknown
//! names must be refused), the second is the initial response (`-` for
//! none), the rest are the client's responses. Checks: no panic; decoded
//! steps never exceed `response_bytes_max`; finished credentials satisfy
//! the grammar (non-empty authcid without NUL, password without NUL). Then
//! the input as [`arbitrary::Unstructured`] builds valid credentials that a
//! [`Client`] and a [`Server`] must agree on through base64, for both
//! mechanisms, with and without an initial response.

use arbitrary::{Result as ArbResult, Unstructured};
use proto::sasl::{
    self, decode_initial, decode_response, Client, Credentials, Mechanism, Options, Response,
    Secret, Server, ServerStep,
};

fn check_creds(c: &Credentials, opts: &Options) {
    assert!(!c.authcid.is_empty(), "empty authcid accepted");
    assert!(!c.authcid.contains('\0'), "NUL in authcid");
    assert!(!c.password.expose().contains(&0), "NUL in password");
    assert!(c.password.len() <= opts.response_bytes_max);
    if let Some(z) = &c.authzid {
        assert!(!z.is_empty() && !z.contains('\0'));
    }
}

fn hostile(data: &[u8]) {
    let opts = Options {
        response_bytes_max: 64,
        login_field_bytes_max: 16,
    };
    let mut lines = data.split(|&b| b == b'\n');
    let name = String::from_utf8_lossy(lines.next().unwrap_or(b""));
    let initial_line = lines.next().unwrap_or(b"-");
    let initial = if initial_line == b"-" {
        None
    } else {
        match decode_initial(initial_line, &opts) {
            Ok(s) => {
                assert!(s.len() <= opts.response_bytes_max, "initial over the limit");
                Some(s)
            }
            Err(_) => return,
        }
    };
    let Ok((mut server, mut step)) =
        Server::start_named(&name, initial.as_ref().map(|s| s.expose()), opts.clone())
    else {
        return;
    };
    loop {
        match step {
            ServerStep::Done(c) => {
                check_creds(&c, &opts);
                // Finished: any further step is refused.
                assert_eq!(server.step(b"x"), Err(sasl::SaslError::Finished));
                return;
            }
            ServerStep::Challenge(_) => {
                let Some(line) = lines.next() else { return };
                let resp = match decode_response(line, &opts) {
                    Ok(Response::Data(d)) => d,
                    Ok(Response::Cancel) | Err(_) => return,
                };
                assert!(
                    resp.len() <= opts.response_bytes_max,
                    "response over the limit"
                );
                step = match server.step(resp.expose()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        }
    }
}

fn arb_creds(u: &mut Unstructured<'_>, mechanism: Mechanism) -> ArbResult<Credentials> {
    fn text(u: &mut Unstructured<'_>, nonempty: bool) -> ArbResult<String> {
        let s: String = u.arbitrary()?;
        let mut s: String = s.chars().filter(|&c| c != '\0').take(200).collect();
        if nonempty && s.is_empty() {
            s.push('u');
        }
        Ok(s)
    }
    let authcid = text(u, true)?;
    let authzid = match mechanism {
        Mechanism::Plain if u.arbitrary()? => Some(text(u, true)?),
        _ => None,
    };
    let pw: Vec<u8> = u.arbitrary()?;
    let mut pw: Vec<u8> = pw.into_iter().filter(|&b| b != 0).take(200).collect();
    if pw.is_empty() {
        pw.push(b'p');
    }
    Ok(Credentials {
        authzid,
        authcid,
        password: Secret::new(pw),
    })
}

fn oracle(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let opts = Options::default();
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let Ok(creds) = arb_creds(&mut u, mechanism) else {
            return;
        };
        let use_initial = u.arbitrary::<bool>().unwrap_or(false);
        let mut client = Client::new(mechanism, creds.clone());
        let initial = if use_initial {
            client.initial_response()
        } else {
            None
        };
        let wire_initial = initial.as_ref().map(|s| sasl::encode_initial(s.expose()));
        let decoded_initial = wire_initial
            .map(|w| decode_initial(w.as_bytes(), &opts).expect("our initial response"));
        let (mut server, mut step) = Server::start(
            mechanism,
            decoded_initial.as_ref().map(|s| s.expose()),
            opts.clone(),
        )
        .expect("start");
        let mut rounds = 0;
        let got = loop {
            rounds += 1;
            assert!(rounds < 5, "exchange does not end");
            match step {
                ServerStep::Done(c) => break c,
                ServerStep::Challenge(ch) => {
                    let ch_wire = sasl::encode(&ch);
                    let ch = decode_initial(ch_wire.as_bytes(), &opts)
                        .map(|s| s.expose().to_vec())
                        .unwrap_or_default();
                    let resp = client.step(&ch).expect("client answers");
                    let wire = sasl::encode(resp.expose());
                    let Response::Data(d) =
                        decode_response(wire.as_bytes(), &opts).expect("our response")
                    else {
                        panic!("a response decoded as cancel");
                    };
                    step = server
                        .step(d.expose())
                        .unwrap_or_else(|e| panic!("valid {mechanism} credentials refused: {e}"));
                }
            }
        };
        assert!(got == creds, "credentials changed through {mechanism}");
    }
}

/// The target body.
pub fn body(data: &[u8]) {
    hostile(data);
    oracle(data);
}
