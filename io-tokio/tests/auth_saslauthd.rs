//! The saslauthd client against the real saslauthd 2.1.28 (Debian's
//! sasl2-bin), started privately for the test: `-m <tempdir>` for its
//! socket, and the `rimap` backend pointed at a small IMAP responder this
//! test runs on loopback. rimap is used because it needs no system account
//! and no shared file (sasldb reads the fixed /etc/sasldb2, shadow and pam
//! need system users); saslauthd's socket side, which is what corvid
//! speaks, is the same for every backend. testsaslauthd, libsasl's own
//! client, is run against the same daemon as a cross-check.
//!
//! Protocol corner cases (bare `NO`, short replies, a missing socket) are
//! tested against a scripted socket.
//!
//! The same private saslauthd also backs two checks of `proto::sasl`
//! against libsasl2's own mechanism plugins: corvid's SASL client against
//! `sasl-sample-server` (libsasl's PLAIN and LOGIN server plugins, which
//! send the real `Username:`/`Password:` challenges), and Cyrus's own
//! `mupdatetest` client (libsasl's client plugins, PLAIN initial response as
//! a `{n+}` literal) logging in to corvid's SASL server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use io_tokio::auth::{
    Access, AuthError, Authenticator, CheckContext, LoginError, PwCheck, Saslauthd,
    SaslauthdOptions, Secret, Verdict,
};
use io_tokio::config::{Config, LoadOptions};
use proto::sasl::{decode_initial, Mechanism, Options, Server, ServerStep};

const SASLAUTHD: &str = "/usr/sbin/saslauthd";
const TESTSASLAUTHD: &str = "/usr/sbin/testsaslauthd";

/// The users the IMAP responder accepts.
const USERS: &[(&str, &str)] = &[
    ("alice", "wonderland"),
    ("repl", "replpass"),
    ("odd", "a \"quoted\" \\ pass"),
];

/// A missing peer skips the test, except under CI (CI=true), where the
/// peers are installed and a skip would hide a failure.
fn skip(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: this live test must run)");
    }
    eprintln!("skipped: {reason}");
}

/// Parses `tag LOGIN "user" "pass"` as rimap's qstring writes it.
fn parse_login(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("saslauthd LOGIN ")?;
    let mut out = Vec::new();
    let mut chars = rest.chars();
    for _ in 0..2 {
        for c in chars.by_ref() {
            if c == '"' {
                break;
            }
        }
        let mut s = String::new();
        loop {
            match chars.next()? {
                '\\' => s.push(chars.next()?),
                '"' => break,
                c => s.push(c),
            }
        }
        out.push(s);
    }
    Some((out[0].clone(), out[1].clone()))
}

/// An IMAP responder for saslauthd's rimap backend: greeting, LOGIN, LOGOUT.
fn imap_responder(seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                conn.write_all(b"* OK corvid test IMAP responder ready\r\n")
                    .unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let l = line.trim_end().to_owned();
                    line.clear();
                    if let Some((user, pass)) = parse_login(&l) {
                        seen.lock().unwrap().push(user.clone());
                        let ok = USERS.iter().any(|(u, p)| *u == user && *p == pass);
                        let reply: &[u8] = if ok {
                            b"saslauthd OK LOGIN completed\r\n"
                        } else {
                            b"saslauthd NO LOGIN failed\r\n"
                        };
                        let _ = conn.write_all(reply);
                    } else if l.ends_with("LOGOUT") {
                        let _ = conn.write_all(b"* BYE\r\nsaslauthd OK LOGOUT completed\r\n");
                        return;
                    } else {
                        let _ = conn.write_all(b"* BAD unexpected\r\n");
                        return;
                    }
                }
            });
        }
    });
    port
}

/// saslauthd, killed (by its own pid) when dropped.
struct Daemon {
    child: Child,
    mux: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_saslauthd(imap_port: u16) -> Option<Daemon> {
    if !Path::new(SASLAUTHD).exists() {
        skip(&format!(
            "{SASLAUTHD} not installed (apt-get install sasl2-bin)"
        ));
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("saslauthd.log")).unwrap();
    let child = Command::new(SASLAUTHD)
        .args([
            "-a",
            "rimap",
            "-O",
            &format!("127.0.0.1/{imap_port}"),
            "-n",
            "1",
            "-d",
            "-m",
        ])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("saslauthd starts");
    let mux = dir.path().join("mux");
    let mut daemon = Daemon {
        child,
        mux,
        _dir: dir,
    };
    // Wait for the socket to appear (bounded; not a timing assertion).
    for _ in 0..200 {
        if daemon.mux.exists() {
            return Some(daemon);
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            let log = std::fs::read_to_string(daemon._dir.path().join("saslauthd.log"))
                .unwrap_or_default();
            panic!("saslauthd exited with {status}: {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "saslauthd did not create {} within 10 s",
        daemon.mux.display()
    );
}

fn ctx(service: &str) -> CheckContext<'_> {
    CheckContext {
        service,
        realm: None,
    }
}

#[tokio::test]
async fn real_saslauthd_checks_passwords() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = imap_responder(seen.clone());
    let Some(daemon) = start_saslauthd(port) else {
        return;
    };
    let sa = Saslauthd::new(&daemon.mux, SaslauthdOptions::default());

    let pw = |s: &str| Secret::new(s.as_bytes());
    assert_eq!(
        sa.check("alice", &pw("wonderland"), ctx("csync"))
            .await
            .unwrap(),
        Verdict::Accepted
    );
    assert_eq!(
        sa.check("repl", &pw("replpass"), ctx("mupdate"))
            .await
            .unwrap(),
        Verdict::Accepted
    );
    assert_eq!(
        sa.check("odd", &pw("a \"quoted\" \\ pass"), ctx("csync"))
            .await
            .unwrap(),
        Verdict::Accepted
    );

    let Verdict::Rejected(reason) = sa.check("alice", &pw("wrong"), ctx("csync")).await.unwrap()
    else {
        panic!("wrong password accepted")
    };
    assert!(reason.starts_with("saslauthd: NO"), "{reason}");
    assert!(
        !reason.contains("wrong"),
        "reason must not echo the password: {reason}"
    );
    assert!(matches!(
        sa.check("mallory", &pw("wonderland"), ctx("csync"))
            .await
            .unwrap(),
        Verdict::Rejected(_)
    ));

    // user@realm: libsasl (and so corvid) sends login "alice", realm "example.com".
    seen.lock().unwrap().clear();
    assert_eq!(
        sa.check(
            "alice@example.com",
            &pw("wonderland"),
            CheckContext {
                service: "csync",
                realm: Some("x")
            }
        )
        .await
        .unwrap(),
        Verdict::Accepted
    );
    assert_eq!(*seen.lock().unwrap(), vec!["alice".to_owned()]);

    // libsasl's own client agrees with ours about the same daemon.
    if Path::new(TESTSASLAUTHD).exists() {
        for (user, pass, want) in [("alice", "wonderland", "OK"), ("alice", "nope", "NO")] {
            let out = Command::new(TESTSASLAUTHD)
                .args(["-u", user, "-p", pass, "-s", "csync", "-f"])
                .arg(&daemon.mux)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.starts_with(&format!("0: {want}")),
                "testsaslauthd {user}/{pass}: {text}"
            );
        }
    } else {
        skip(&format!(
            "{TESTSASLAUTHD} not installed (sasl2-bin): cross-check"
        ));
    }
}

/// From imapd.conf to an authorized identity, as a sync_server would: the
/// exact PLAIN initial response sync_client sent (csync transcripts).
#[tokio::test]
async fn config_to_login_through_real_saslauthd() {
    let port = imap_responder(Arc::new(Mutex::new(Vec::new())));
    let Some(daemon) = start_saslauthd(port) else {
        return;
    };
    let conf = Config::parse_str(
        &format!(
            "configdirectory: /var/lib/cyrus\nadmins: cyrus repl\nsasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: {}\n",
            daemon.mux.display()
        ),
        "imapd.conf",
        &LoadOptions::default(),
    )
    .unwrap();
    let auth = PwCheck::from_config(&conf).unwrap();
    assert!(matches!(auth, PwCheck::Saslauthd(ref s) if s.path() == daemon.mux));
    let access = Access::from_config(&conf);

    let ir = decode_initial(b"AHJlcGwAcmVwbHBhc3M=", &Options::default()).unwrap();
    let (_, ServerStep::Done(creds)) =
        Server::start(Mechanism::Plain, Some(ir.expose()), Options::default()).unwrap()
    else {
        panic!()
    };
    let who = access.login(&auth, &creds, ctx("csync")).await.unwrap();
    assert_eq!(
        (who.authcid.as_str(), who.userid.as_str(), who.is_admin),
        ("repl", "repl", true)
    );

    // alice is a valid user but not an admin; she may not act as repl.
    let alice = proto::sasl::Credentials {
        authzid: Some("repl".into()),
        authcid: "alice".into(),
        password: Secret::new(&b"wonderland"[..]),
    };
    let e = access.login(&auth, &alice, ctx("csync")).await.unwrap_err();
    assert!(matches!(e, LoginError::ProxyDenied { .. }), "{e}");
    let alice = proto::sasl::Credentials {
        authzid: None,
        ..alice
    };
    let who = access.login(&auth, &alice, ctx("csync")).await.unwrap();
    assert!(!who.is_admin);
    let bad = proto::sasl::Credentials {
        password: Secret::new(&b"x"[..]),
        ..alice
    };
    assert!(matches!(
        access.login(&auth, &bad, ctx("csync")).await.unwrap_err(),
        LoginError::Rejected { .. }
    ));
}

/// A socket that answers each connection with `reply` and records the request.
fn scripted(dir: &Path, reply: Vec<u8>) -> (PathBuf, Arc<Mutex<Vec<u8>>>) {
    use std::io::Read;
    let path = dir.join("mux");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            // Read the four counted fields.
            let mut req = Vec::new();
            for _ in 0..4 {
                let mut len = [0u8; 2];
                if conn.read_exact(&mut len).is_err() {
                    break;
                }
                let mut field = vec![0u8; usize::from(u16::from_be_bytes(len))];
                conn.read_exact(&mut field).unwrap();
                req.extend_from_slice(&len);
                req.extend_from_slice(&field);
            }
            *g.lock().unwrap() = req;
            let _ = conn.write_all(&reply);
        }
    });
    (path, got)
}

#[tokio::test]
async fn protocol_corner_cases() {
    let pw = Secret::new(&b"pw"[..]);
    // A bare two-byte NO, as saslauthd -a sasldb sends for an unknown user.
    let dir = tempfile::tempdir().unwrap();
    let (path, got) = scripted(dir.path(), b"\0\x02NO".to_vec());
    let sa = Saslauthd::new(&path, SaslauthdOptions::default());
    let v = sa
        .check(
            "bob",
            &pw,
            CheckContext {
                service: "mupdate",
                realm: Some("EXAMPLE.COM"),
            },
        )
        .await
        .unwrap();
    assert_eq!(v, Verdict::Rejected("saslauthd: NO".into()));
    assert_eq!(
        *got.lock().unwrap(),
        b"\0\x03bob\0\x02pw\0\x07mupdate\0\x0bEXAMPLE.COM".to_vec()
    );

    // OK with a long text: only the start matters.
    let dir = tempfile::tempdir().unwrap();
    let mut reply = vec![0x07, 0xd0];
    reply.extend_from_slice(b"OK ");
    reply.resize(2 + 2000, b'x');
    let (path, _) = scripted(dir.path(), reply);
    let sa = Saslauthd::new(&path, SaslauthdOptions::default());
    assert_eq!(
        sa.check("bob", &pw, ctx("csync")).await.unwrap(),
        Verdict::Accepted
    );

    // A reply shorter than "OK"/"NO" is an error, not a verdict.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = scripted(dir.path(), b"\0\x01O".to_vec());
    let e = Saslauthd::new(&path, SaslauthdOptions::default())
        .check("bob", &pw, ctx("csync"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthError::Saslauthd { .. }) && e.to_string().contains("bad response"),
        "{e}"
    );

    // A reply cut short.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = scripted(dir.path(), b"\0\x10OK".to_vec());
    let e = Saslauthd::new(&path, SaslauthdOptions::default())
        .check("bob", &pw, ctx("csync"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read failed"), "{e}");

    // No daemon: the error names the socket.
    let e = Saslauthd::new("/nonexistent/saslauthd/mux", SaslauthdOptions::default())
        .check("bob", &pw, ctx("csync"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("saslauthd at /nonexistent/saslauthd/mux: cannot connect"),
        "{e}"
    );

    // Credentials that do not fit a request are rejected without asking.
    let huge = Secret::new(vec![b'x'; 9000]);
    let v = Saslauthd::new("/nonexistent/mux", SaslauthdOptions::default())
        .check("bob", &huge, ctx("csync"))
        .await
        .unwrap();
    assert_eq!(v, Verdict::Rejected("request too large".into()));
}

// ---------------------------------------------------------------------------
// proto::sasl against libsasl2's own mechanisms.

const SAMPLE_SERVER: &str = "/usr/sbin/sasl-sample-server";
const MUPDATETEST: &str = "/usr/lib/cyrus/bin/mupdatetest";

/// What libsasl's sample server concluded.
#[derive(Debug, PartialEq)]
enum SampleOutcome {
    /// "Negotiation complete", and the user name it reports.
    Authenticated(String),
    /// It gave up; its error text.
    Failed(String),
}

/// Runs corvid's client `mech` against libsasl2's server plugins
/// (`sasl-sample-server`, app config `sample.conf` in a private
/// SASL_CONF_PATH that checks passwords with our private saslauthd).
fn against_sample_server(
    mux: &Path,
    mech: Mechanism,
    creds: proto::sasl::Credentials,
    send_initial: bool,
) -> SampleOutcome {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("sample.conf"),
        format!(
            "pwcheck_method: saslauthd\nsaslauthd_path: {}\nmech_list: PLAIN LOGIN\n",
            mux.display()
        ),
    )
    .unwrap();
    // stdbuf: the sample server printf()s to a pipe and would not flush before reading.
    // timeout(1): a misunderstanding of the exchange fails the test instead of hanging it.
    let mut child = Command::new("timeout")
        .args([
            "60",
            "stdbuf",
            "-oL",
            SAMPLE_SERVER,
            "-m",
            mech.name(),
            "-s",
            "csync",
        ])
        .env("SASL_CONF_PATH", conf.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sasl-sample-server starts");
    let mut to = child.stdin.take().unwrap();
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let mut client = proto::sasl::Client::new(mech, creds);
    let mut line = String::new();
    let mut first = true;
    let outcome = loop {
        line.clear();
        if from.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            break SampleOutcome::Failed(err);
        }
        // Not trim_end(): an empty challenge is the line "S: ".
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(data) = l.strip_prefix("S: ") {
            let reply = if first {
                // The mechanism list; answer with our mechanism and maybe an initial response.
                first = false;
                let mut m = mech.name().as_bytes().to_vec();
                // Asking for the initial response means sending it: only when we do.
                if let Some(ir) = send_initial.then(|| client.initial_response()).flatten() {
                    m.push(0);
                    m.extend_from_slice(ir.expose());
                }
                m
            } else {
                let challenge = b64.decode(data).unwrap();
                client.step(&challenge).unwrap().expose().to_vec()
            };
            writeln!(to, "C: {}", b64.encode(reply)).unwrap();
        } else if let Some(user) = l.strip_prefix("Username: ") {
            break SampleOutcome::Authenticated(user.to_owned());
        }
    };
    drop(to);
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

#[test]
fn our_client_against_libsasl_server_plugins() {
    if !Path::new(SAMPLE_SERVER).exists() {
        skip(&format!(
            "{SAMPLE_SERVER} not installed (sasl2-bin, libsasl2-modules)"
        ));
        return;
    }
    let port = imap_responder(Arc::new(Mutex::new(Vec::new())));
    let Some(daemon) = start_saslauthd(port) else {
        return;
    };
    let alice = |pw: &str| proto::sasl::Credentials {
        authzid: None,
        authcid: "alice".into(),
        password: Secret::new(pw.as_bytes()),
    };
    for (mech, initial) in [
        (Mechanism::Plain, true),
        (Mechanism::Plain, false),
        (Mechanism::Login, false),
    ] {
        assert_eq!(
            against_sample_server(&daemon.mux, mech, alice("wonderland"), initial),
            SampleOutcome::Authenticated("alice".into()),
            "{mech} initial={initial}"
        );
        let SampleOutcome::Failed(err) =
            against_sample_server(&daemon.mux, mech, alice("wrong"), initial)
        else {
            panic!("{mech}: wrong password accepted")
        };
        assert!(err.contains("authentication failure"), "{mech}: {err}");
    }
}

/// A one-connection MUPDATE front door (banner, AUTHENTICATE, LOGOUT) whose
/// SASL side is proto::sasl::Server and whose password check is
/// corvid's password file, for Cyrus's own `mupdatetest` to log in to.
/// Returns the port and a handle yielding the authenticated identity (or
/// the login error).
fn mupdate_door(
    auth: PwCheck,
    access: Access,
) -> (
    u16,
    std::thread::JoinHandle<Result<io_tokio::auth::Authenticated, String>>,
) {
    use base64::Engine as _;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        conn.write_all(b"* AUTH \"PLAIN\" \"LOGIN\"\r\n* OK MUPDATE \"corvid-test\" \"corvid\" \"0\" \"(master)\"\r\n")
            .unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        // A01 AUTHENTICATE "MECH" [{n+}\r\n<b64> | "<b64>"]
        let rest = line
            .trim_end()
            .strip_prefix("A01 AUTHENTICATE \"")
            .unwrap()
            .to_owned();
        let (mech, arg) = rest.split_once('"').unwrap();
        let arg = arg.trim();
        let initial = if let Some(n) = arg.strip_prefix('{').and_then(|a| a.strip_suffix("+}")) {
            let mut lit = vec![0u8; n.parse().unwrap()];
            std::io::Read::read_exact(&mut r, &mut lit).unwrap();
            let mut crlf = String::new();
            r.read_line(&mut crlf).unwrap();
            Some(lit)
        } else {
            arg.strip_prefix('"')
                .and_then(|a| a.strip_suffix('"'))
                .map(|a| a.as_bytes().to_vec())
        };
        let sopts = Options::default();
        let initial = initial.map(|i| decode_initial(&i, &sopts).unwrap());
        let (mut server, mut step) =
            Server::start_named(mech, initial.as_ref().map(|i| i.expose()), sopts.clone())
                .map_err(|e| e.to_string())?;
        let creds = loop {
            match step {
                ServerStep::Done(c) => break c,
                ServerStep::Challenge(ch) => {
                    // MUPDATE sends challenges as bare base64 lines.
                    conn.write_all(
                        format!(
                            "{}\r\n",
                            base64::engine::general_purpose::STANDARD.encode(ch)
                        )
                        .as_bytes(),
                    )
                    .unwrap();
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    match proto::sasl::decode_response(line.trim_end().as_bytes(), &sopts).unwrap()
                    {
                        proto::sasl::Response::Data(d) => {
                            step = server.step(d.expose()).map_err(|e| e.to_string())?
                        }
                        proto::sasl::Response::Cancel => return Err("canceled".into()),
                    }
                }
            }
        };
        let result = rt.block_on(access.login(
            &auth,
            &creds,
            CheckContext {
                service: "mupdate",
                realm: None,
            },
        ));
        let reply: &[u8] = if result.is_ok() {
            b"A01 OK \"Authenticated\"\r\n"
        } else {
            b"A01 NO \"undefined error!\"\r\n"
        };
        conn.write_all(reply).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(tag) = line.strip_suffix(" LOGOUT\r\n") {
            conn.write_all(format!("{tag} OK \"bye-bye\"\r\n").as_bytes())
                .unwrap();
        }
        result.map_err(|e| e.to_string())
    });
    (port, handle)
}

/// Cyrus's own MUPDATE client (libsasl client plugins) logs in to corvid's
/// SASL server, PLAIN (initial response as a `{n+}` literal) and LOGIN.
#[test]
fn cyrus_mupdatetest_logs_in_to_our_server() {
    if !Path::new(MUPDATETEST).exists() {
        skip(&format!("{MUPDATETEST} not installed (cyrus-murder)"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("passwd");
    let f = io_tokio::auth::PasswdFile::new(&pwfile);
    f.set_password("mupdateadmin", &Secret::new(&b"secret"[..]))
        .unwrap();
    f.set_password("nobody1", &Secret::new(&b"secret"[..]))
        .unwrap();
    let conf = Config::parse_str(
        &format!(
            "admins: mupdateadmin\ncorvid_passwd_file: {}\n",
            pwfile.display()
        ),
        "imapd.conf",
        &LoadOptions::default(),
    )
    .unwrap();
    let run = |mech: &str, authcid: &str, authzid: Option<&str>, pw: &str| {
        let (port, door) = mupdate_door(
            PwCheck::from_config(&conf).unwrap(),
            Access::from_config(&conf),
        );
        let mut cmd = Command::new(MUPDATETEST);
        cmd.args(["-m", mech, "-a", authcid, "-w", pw, "-p", &port.to_string()]);
        if let Some(z) = authzid {
            cmd.args(["-u", z]);
        }
        let out = cmd.arg("127.0.0.1").stdin(Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (door.join().unwrap(), text)
    };

    for mech in ["PLAIN", "LOGIN"] {
        let (who, text) = run(mech, "mupdateadmin", None, "secret");
        let who = who.unwrap_or_else(|e| panic!("{mech}: {e}\n{text}"));
        assert_eq!(
            (who.userid.as_str(), who.is_admin),
            ("mupdateadmin", true),
            "{mech}"
        );
        assert!(text.contains("Authenticated."), "{mech}: {text}");

        let (who, text) = run(mech, "mupdateadmin", None, "wrong");
        assert!(who.unwrap_err().contains("wrong password"), "{mech}");
        assert!(!text.contains("Authenticated."), "{mech}: {text}");
    }
    // PLAIN with an authorization identity (mupdate-auth.txt's third connection).
    let (who, text) = run("PLAIN", "mupdateadmin", Some("someone"), "secret");
    let who = who.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        (who.authcid.as_str(), who.userid.as_str()),
        ("mupdateadmin", "someone")
    );
    // A non-admin may not act as someone else.
    let (who, _) = run("PLAIN", "nobody1", Some("someone"), "secret");
    assert!(who.unwrap_err().contains("may not authorize as someone"));
}
