//! STARTTLS of corvid's daemons (rustls) against the real Cyrus 3.6.1
//! clients: `mupdatetest -t` against `corvid mupdate`, `synctest -t`
//! against `corvid sync_server` (imtest's csync mode: the same STARTTLS,
//! re-banner and AUTHENTICATE path Cyrus's sync_client uses), both with
//! `tls_server_cert`/`tls_server_key`; client certificates verified from
//! `tls_client_ca_file` with `tls_client_certs: require`; and credentials
//! never in the daemon's log.
//!
//! Needs the Cyrus client binaries (`/usr/lib/cyrus/bin`, installed by
//! scripts/peers/install.sh) and the `openssl` command to make a test CA.
//! Without them the tests say SKIP on stderr, and fail under `CI=true`.
//!
//! What is not here: the real `sync_client` over STARTTLS. Cyrus's client
//! starts TLS only when no offered mechanism is usable without it
//! (backend.c: `SASL_NOMECH` then STARTTLS), and corvid offers PLAIN
//! before TLS even with `allowplaintext: no` — see the ignored
//! `plain_is_withheld_before_tls_when_allowplaintext_is_off`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CYRUS: &str = "/usr/lib/cyrus/bin";
const ADMIN: &str = "repl";
const ADMIN_PASS: &str = "Tls-Secret-9q";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_corvid")
}

/// The tools are here, or the test says SKIP (and fails under CI=true).
fn tools_present() -> bool {
    let ok = Path::new(CYRUS).join("mupdatetest").exists()
        && Path::new(CYRUS).join("synctest").exists()
        && Command::new("openssl")
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the Cyrus clients or openssl are missing"
        );
        eprintln!("SKIP: needs {CYRUS}/mupdatetest, synctest and openssl");
    }
    ok
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// both signed by it; `client.pem` holds the client's certificate and key
/// (the file imtest's `-t` wants).
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=corvid test CA",
        ],
    );
    for (name, cn, ext) in [
        (
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "repl", "extendedKeyUsage=clientAuth\n"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    let mut both = std::fs::read(dir.join("client.pem")).unwrap();
    both.extend(std::fs::read(dir.join("client.key")).unwrap());
    std::fs::write(dir.join("client-both.pem"), both).unwrap();
}

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

/// `tool` is `mupdate` or `sync_server`; `extra` is added to imapd.conf.
fn start(tool: &str, pki: &Path, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let passwd = d.join("passwd");
    let mut c = Command::new(exe())
        .arg("passwd")
        .arg(&passwd)
        .arg(ADMIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN_PASS}\n").as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
    std::fs::create_dir_all(d.join("conf")).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let conf = d.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}/conf\npartition-default: {d}/data\nservername: tls.test\n\
             admins: {ADMIN}\nsasl_mech_list: PLAIN\ncorvid_passwd_file: {d}/passwd\n\
             failedloginpause: 0\ntls_server_cert: {p}/server.pem\ntls_server_key: {p}/server.key\n{extra}",
            d = d.display(),
            p = pki.display()
        ),
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = d.join("log");
    let mut cmd = Command::new(exe());
    cmd.arg(tool);
    if tool == "mupdate" {
        cmd.args(["-m", "--db"]).arg(d.join("data/mupdate.sqlite3"));
    }
    let child = cmd
        .arg("-C")
        .arg(&conf)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CORVID_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "corvid {tool} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon {
        child,
        port,
        log,
        _dir: dir,
    }
}

/// Runs Cyrus's `client` (mupdatetest, synctest) with `-t tls_arg`, the
/// script piped in after authentication; returns everything it printed.
fn cyrus_client(client: &str, port: u16, tls_arg: &str, script: &str, dir: &Path) -> String {
    let f = dir.join(format!("{client}-script.txt"));
    std::fs::write(&f, script).unwrap();
    let mut child = Command::new(Path::new(CYRUS).join(client))
        .args(["-t", tls_arg, "-p", &port.to_string(), "-m", "PLAIN"])
        .args(["-a", ADMIN, "-w", ADMIN_PASS, "-f"])
        .arg(&f)
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn assert_no_credentials(d: &Daemon) {
    let log = d.log_text();
    let blob = "AHJlcGwAVGxzLVNlY3JldC05cQ=="; // base64 of "\0repl\0Tls-Secret-9q"
    assert!(!log.contains(ADMIN_PASS), "password in the log:\n{log}");
    assert!(!log.contains(blob), "SASL blob in the log:\n{log}");
}

#[test]
fn real_mupdatetest_starttls_to_corvid_mupdate() {
    if !tools_present() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let d = start("mupdate", pki.path(), "");
    let out = cyrus_client(
        "mupdatetest",
        d.port,
        "",
        "X1 ACTIVATE \"user.tls\" \"b1!default\" \"repl\tlrs\t\"\r\nX2 FIND \"user.tls\"\r\n",
        pki.path(),
    );
    assert!(out.contains("C: S01 STARTTLS"), "{out}");
    assert!(out.contains("TLS connection established"), "{out}");
    // After TLS the banner comes again, without STARTTLS.
    let after = out.split("TLS connection established").nth(1).unwrap();
    assert!(!after.contains("* STARTTLS"), "{out}");
    assert!(out.contains("A01 OK \"Authenticated\""), "{out}");
    assert!(out.contains("X1 OK"), "{out}");
    assert!(out.contains("X2 OK"), "{out}");
    assert_no_credentials(&d);
}

#[test]
fn real_synctest_starttls_to_corvid_sync_server() {
    if !tools_present() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let d = start("sync_server", pki.path(), "");
    let out = cyrus_client("synctest", d.port, "", "GET USER nobody\r\n", pki.path());
    assert!(out.contains("C: STARTTLS"), "{out}");
    assert!(out.contains("OK Begin TLS negotiation now"), "{out}");
    assert!(out.contains("TLS connection established"), "{out}");
    let after = out.split("TLS connection established").nth(1).unwrap();
    assert!(
        after.contains("* SASL PLAIN"),
        "banner again after TLS: {out}"
    );
    assert!(!after.contains("* STARTTLS"), "{out}");
    assert!(out.contains("OK Success (tls protection)"), "{out}");
    assert!(out.contains("Security strength factor: 256"), "{out}");
    assert_no_credentials(&d);
}

/// `tls_client_ca_file` + `tls_client_certs: require`: a client
/// certificate signed by the CA is accepted, no certificate is refused
/// (the handshake fails and nothing is authenticated).
#[test]
fn client_certificates_verified_from_tls_client_ca_file() {
    if !tools_present() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let extra = format!(
        "tls_client_ca_file: {}/ca.pem\ntls_client_certs: require\n",
        pki.path().display()
    );
    for tool in ["mupdate", "sync_server"] {
        let d = start(tool, pki.path(), &extra);
        let (client, script) = if tool == "mupdate" {
            ("mupdatetest", "X1 NOOP\r\n")
        } else {
            ("synctest", "NOOP\r\n")
        };
        let cert = pki.path().join("client-both.pem");
        let out = cyrus_client(client, d.port, cert.to_str().unwrap(), script, pki.path());
        assert!(
            out.contains("TLS connection established"),
            "{tool} with a cert: {out}"
        );
        assert!(out.contains("Authenticated."), "{tool} with a cert: {out}");
        let out = cyrus_client(client, d.port, "", script, pki.path());
        assert!(
            !out.contains("Authenticated."),
            "{tool} without a client cert must not get in: {out}"
        );
        let log = d.log_text();
        assert!(
            log.to_lowercase().contains("certificate"),
            "{tool}: the refusal is not in the log:\n{log}"
        );
        assert_no_credentials(&d);
    }
}

/// W6 (fixed): with `allowplaintext: no` Cyrus (libsasl's `mech_permitted`)
/// offers PLAIN/LOGIN only after STARTTLS; so do corvid's mupdate and
/// sync_server now (`io_tokio::auth::offered_mechanisms` for the clear and
/// the TLS lists), so a real `sync_client` or MUPDATE slave starts TLS.
#[test]
fn plain_is_withheld_before_tls_when_allowplaintext_is_off() {
    if !tools_present() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    for tool in ["mupdate", "sync_server"] {
        let d = start(tool, pki.path(), "allowplaintext: no\n");
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut banner = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&banner).contains("* OK") {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0);
            banner.extend_from_slice(&buf[..n]);
        }
        let banner = String::from_utf8_lossy(&banner);
        assert!(
            !banner.contains("PLAIN"),
            "{tool} offers PLAIN in the clear:\n{banner}"
        );
    }
}
