//! `corvid mupdate -m` against the real Cyrus 3.6 tools:
//!
//! * `mupdatetest` (Cyrus's own client) drives every command, plain and
//!   with COMPRESS;
//! * a real Cyrus **slave** (`mupdate` without `-m`, under Cyrus master(8))
//!   follows corvid: it must authenticate, `UPDATE`, take the dump and the
//!   stream; its `mailboxes.db` is read back with `ctl_mboxlist -d`;
//! * a real Cyrus **backend** push: `ctl_mboxlist -m` reconciles a backend's
//!   mailbox list into corvid (LIST, DELETE, ACTIVATE).
//!
//! Needs the Debian Cyrus packages (`/usr/lib/cyrus/bin`) and root (Cyrus
//! daemons run as `cyrus`). Without them each test prints SKIP and passes,
//! except with `CI=true`, where it fails.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::frame::{Event, Framer};
use proto::mupdate::{self, parse_response, Form, Response};

const CYRUS: &str = "/usr/lib/cyrus/bin";

fn cyrus_available(test: &str) -> bool {
    let ok = Path::new(CYRUS).join("mupdate").exists()
        && Path::new(CYRUS).join("mupdatetest").exists()
        && std::process::id() > 0
        && unsafe_free_is_root();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: real Cyrus (cyrus-murder, cyrus-clients) and root are required under CI=true");
        }
        eprintln!("SKIP {test}: real Cyrus tools or root not available");
    }
    ok
}

fn unsafe_free_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A corvid master with its own imapd.conf and password file.
struct Corvid {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Corvid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn corvid() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_corvid"))
}

fn start_corvid(dir: &Path) -> Corvid {
    start_corvid_with(dir, "")
}

fn start_corvid_with(dir: &Path, conf_extra: &str) -> Corvid {
    let passwd = dir.join("passwd");
    for user in ["mupdateadmin", "sl2", "be1", "nobody1"] {
        let mut p = Command::new(corvid())
            .args(["passwd", passwd.to_str().unwrap(), user])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
        assert!(p.wait().unwrap().success());
    }
    let conf = dir.join("corvid.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}\nservername: corvid-master.test\nadmins: mupdateadmin sl2 be1\ncorvid_passwd_file: {p}\nfailedloginpause: 1\n{plain}{conf_extra}",
            d = dir.display(),
            p = passwd.display(),
            // PLAIN over clear TCP, as these tests log in; Cyrus's default
            // (no) withholds it until STARTTLS.
            plain = if conf_extra.contains("allowplaintext") {
                ""
            } else {
                "allowplaintext: yes\n"
            }
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(corvid())
        .args([
            "mupdate",
            "-C",
            conf.to_str().unwrap(),
            "-m",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::fs::File::create(dir.join("corvid.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(port);
    Corvid {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

/// A minimal lock-step MUPDATE client on our own codec.
struct Client {
    s: TcpStream,
    framer: Framer,
    n: u32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            s,
            framer: Framer::new(mupdate::client_frame_options()),
            n: 0,
        };
        loop {
            if let Response::Ready { .. } = c.next() {
                break;
            }
        }
        c
    }

    fn next(&mut self) -> Response {
        loop {
            if let Some(ev) = self.framer.poll_event().unwrap() {
                let Event::Message(m) = ev else {
                    panic!("unexpected {ev:?}")
                };
                return parse_response(&m).unwrap();
            }
            let mut buf = [0u8; 65536];
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed");
            self.framer.handle_input(&buf[..n]);
        }
    }

    /// Sends `cmd`, returns the data lines and the final reply text.
    fn run(&mut self, cmd: mupdate::Command) -> (Vec<Response>, String) {
        self.n += 1;
        let tag = format!("T{}", self.n);
        self.s
            .write_all(&cmd.encode(tag.as_bytes(), Form::NonSync))
            .unwrap();
        let mut data = Vec::new();
        loop {
            match self.next() {
                Response::Reply(r) if r.tag[..] == *tag.as_bytes() => {
                    return (
                        data,
                        format!(
                            "{:?} {}",
                            r.status,
                            String::from_utf8_lossy(
                                r.text.as_ref().map_or(&b""[..], |t| t.value())
                            )
                        ),
                    )
                }
                other => data.push(other),
            }
        }
    }

    fn login(port: u16) -> Client {
        let mut c = Client::connect(port);
        let (_, r) = c.run(mupdate::Command::Authenticate {
            mechanism: "PLAIN".into(),
            initial: Some(proto::sasl::encode(b"\0mupdateadmin\0secret").into()),
        });
        assert_eq!(r, "Ok Authenticated");
        c
    }
}

fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fn mupdatetest(port: u16, script: &str, extra: &[&str], dir: &Path) -> String {
    let f = dir.join("script.txt");
    std::fs::write(&f, script).unwrap();
    let mut cmd = Command::new(Path::new(CYRUS).join("mupdatetest"));
    cmd.args([
        "-p",
        &port.to_string(),
        "-m",
        "PLAIN",
        "-a",
        "mupdateadmin",
        "-w",
        "secret",
    ])
    .args(extra)
    .args(["-f", f.to_str().unwrap(), "127.0.0.1"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn real_mupdatetest_drives_every_command() {
    if !cyrus_available("real_mupdatetest_drives_every_command") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start_corvid(dir.path());
    let script = "N1 NOOP\r\n\
R1 RESERVE \"user.alice\" \"127.0.0.1:34003!default\"\r\n\
F1 FIND \"user.alice\"\r\n\
A1 ACTIVATE \"user.alice\" \"127.0.0.1:34003!default\" \"alice\tlrswipkxtecdan\t\"\r\n\
A2 ACTIVATE {10+}\r\nshared.new {23+}\r\n127.0.0.1:34005!default {6+}\r\nanyone\r\n\
R2 RESERVE \"user.alice\" \"elsewhere!p\"\r\n\
F2 FIND \"user.alice\"\r\n\
L1 LIST\r\n\
L2 LIST \"127.0.0.1:34005!\"\r\n\
D1 DEACTIVATE \"shared.new\" \"127.0.0.1:34005!default\"\r\n\
X1 DELETE \"shared.new\"\r\n\
X2 DELETE \"shared.new\"\r\n\
D2 DEACTIVATE \"nonexistent\" \"x!y\"\r\n\
Z1 BOGUS\r\n\
U1 UPDATE\r\n\
N2 NOOP\r\n\
Q1 LOGOUT\r\n";
    let out = mupdatetest(c.port, script, &[], dir.path());
    for want in [
        "S: A01 OK \"Authenticated\"",
        "N1 OK \"Noop done\"",
        "R1 OK \"done\"",
        "F1 RESERVE {10+}\nuser.alice {23+}\n127.0.0.1:34003!default\nF1 OK \"Search completed\"",
        "A1 OK \"done\"",
        "A2 OK \"done\"",
        "R2 NO \"mailbox already exists\"",
        "F2 MAILBOX {10+}\nuser.alice {23+}\n127.0.0.1:34003!default {21+}\nalice\tlrswipkxtecdan\t\nF2 OK \"Search completed\"",
        "L1 MAILBOX {10+}\nshared.new {23+}\n127.0.0.1:34005!default {6+}\nanyone\nL1 MAILBOX {10+}\nuser.alice",
        "L1 OK \"list complete\"",
        "L2 MAILBOX {10+}\nshared.new {23+}\n127.0.0.1:34005!default {6+}\nanyone\nL2 OK \"list complete\"",
        "D1 OK \"done\"",
        "X1 OK \"done\"",
        "X2 NO \"mailbox does not exist\"",
        "D2 NO \"mailbox does not exist\"",
        "Z1 BAD \"Unrecognized command\"",
        "U1 MAILBOX {10+}\nuser.alice",
        "U1 OK \"streaming starts\"",
        "N2 OK \"Noop done\"",
        "Q1 OK \"bye-bye\"",
    ] {
        assert!(out.replace("\r\n", "\n").contains(want), "mupdatetest output lacks {want:?}:\n{out}");
    }
    // The same through COMPRESS DEFLATE (mupdatetest -q).
    let out = mupdatetest(
        c.port,
        "F1 FIND \"user.alice\"\r\nQ1 LOGOUT\r\n",
        &["-q"],
        dir.path(),
    );
    assert!(out.contains("F1 MAILBOX {10+}"), "with -q:\n{out}");
    assert!(out.contains("Q1 OK \"bye-bye\""), "with -q:\n{out}");
    // A wrong password is refused.
    let f = dir.path().join("empty.txt");
    std::fs::write(&f, "Q1 LOGOUT\r\n").unwrap();
    let out = Command::new(Path::new(CYRUS).join("mupdatetest"))
        .args([
            "-p",
            &c.port.to_string(),
            "-m",
            "PLAIN",
            "-a",
            "mupdateadmin",
            "-w",
            "wrong",
            "-f",
            f.to_str().unwrap(),
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NO \"undefined error!\"") || text.contains("Authentication failed"),
        "{text}"
    );
    // A valid user who is not an admin is refused too.
    let out = Command::new(Path::new(CYRUS).join("mupdatetest"))
        .args([
            "-p",
            &c.port.to_string(),
            "-m",
            "PLAIN",
            "-a",
            "nobody1",
            "-w",
            "secret",
            "-f",
            f.to_str().unwrap(),
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NO \"undefined error!\"") || text.contains("Authentication failed"),
        "{text}"
    );
    // The write survived in the durable store: restart and FIND again.
    drop(c);
    let c = start_corvid(dir.path());
    let mut cl = Client::login(c.port);
    let (data, r) = cl.run(mupdate::Command::Find {
        name: b("user.alice"),
    });
    assert_eq!(r, "Ok Search completed");
    assert!(matches!(&data[..], [Response::Mailbox { .. }]), "{data:?}");
}

/// Runs a Cyrus program as user `cyrus`.
fn as_cyrus(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "cyrus", "--", &format!("{CYRUS}/{prog}")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A Cyrus instance dir owned by cyrus, with the directories Cyrus wants.
fn cyrus_instance(root: &Path, name: &str, conf_extra: &str) -> PathBuf {
    let d = root.join(name);
    for sub in [
        "conf",
        "conf/log",
        "conf/db",
        "conf/socket",
        "conf/user",
        "conf/quota",
        "conf/sieve",
        "spool",
        "proc",
        "lock",
        "socket",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let conf = format!(
        "configdirectory: {d}/conf\npartition-default: {d}/spool\ndefaultpartition: default\nproc_path: {d}/proc\nmboxname_lockpath: {d}/lock\n\
lmtpsocket: {d}/socket/lmtp\nidlesocket: {d}/socket/idle\nnotifysocket: {d}/socket/notify\nallowplaintext: yes\n\
force_sasl_client_mech: PLAIN\nsasl_mech_list: PLAIN\nunixhierarchysep: no\naltnamespace: no\n{conf_extra}",
        d = d.display()
    );
    std::fs::write(d.join("imapd.conf"), conf).unwrap();
    let st = Command::new("chown")
        .args(["-R", "cyrus:mail", d.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    d
}

fn dump_mboxlist(inst: &Path) -> String {
    let out = as_cyrus(
        "ctl_mboxlist",
        &["-C", inst.join("imapd.conf").to_str().unwrap(), "-d"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cyrus master(8) running one instance; killed on drop.
struct CyrusMaster {
    pidfile: PathBuf,
}

impl Drop for CyrusMaster {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(500));
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

fn open_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("corvid-mupdate-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn real_cyrus_slave_follows_corvid_master() {
    if !cyrus_available("real_cyrus_slave_follows_corvid_master") {
        return;
    }
    let root = open_root();
    let c = start_corvid(&root.path().join("corvid").tap_mkdir());
    // Some state before the slave boots: the dump.
    let mut w = Client::login(c.port);
    for (n, loc, acl) in [
        ("user.alice", "be1!default", "alice\tlrswipkxtecdan\t"),
        ("shared.news", "be2!default", "anyone\tlrs\t"),
    ] {
        let (_, r) = w.run(mupdate::Command::Activate {
            name: b(n),
            location: b(loc),
            acl: b(acl),
        });
        assert_eq!(r, "Ok done");
    }
    let (_, r) = w.run(mupdate::Command::Reserve {
        name: b("user.zed"),
        location: b("be2!default"),
    });
    assert_eq!(r, "Ok done");

    let slave_port = free_port();
    let inst = cyrus_instance(
        root.path(),
        "slave",
        &format!(
            "servername: slave.test\nadmins: cyrus\nmupdate_server: 127.0.0.1:{}\nmupdate_authname: sl2\nmupdate_username: sl2\n\
mupdate_password: secret\nmupdate_retry_delay: 2\nmupdate_config: standard\n",
            c.port
        ),
    );
    std::fs::write(
        inst.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  mupdate cmd=\"{CYRUS}/mupdate -C {conf}\" listen=\"127.0.0.1:{slave_port}\" prefork=1\n}}\n",
            conf = inst.join("imapd.conf").display()
        ),
    )
    .unwrap();
    let pidfile = inst.join("master.pid");
    let st = Command::new("runuser")
        .args(["-u", "cyrus", "--", &format!("{CYRUS}/master")])
        .args([
            "-C",
            inst.join("imapd.conf").to_str().unwrap(),
            "-M",
            inst.join("cyrus.conf").to_str().unwrap(),
        ])
        .args(["-p", pidfile.to_str().unwrap(), "-d"])
        .status()
        .unwrap();
    assert!(st.success());
    let _master = CyrusMaster { pidfile };
    // The slave authenticated, sent UPDATE, and wrote the dump.
    wait_until("the slave's initial sync", 30, || {
        let d = dump_mboxlist(&inst);
        d.contains("user.alice") && d.contains("shared.news") && d.contains("user.zed")
    });
    let d = dump_mboxlist(&inst);
    assert!(
        d.contains("be1!default") || d.contains("be1"),
        "slave dump: {d}"
    );
    // Streaming: a new mailbox, a move and a delete reach the slave.
    let (_, r) = w.run(mupdate::Command::Activate {
        name: b("user.hank"),
        location: b("be1!default"),
        acl: b("hank\tlrs\t"),
    });
    assert_eq!(r, "Ok done");
    let (_, r) = w.run(mupdate::Command::Delete {
        name: b("shared.news"),
    });
    assert_eq!(r, "Ok done");
    wait_until("the slave to stream the changes", 30, || {
        let d = dump_mboxlist(&inst);
        d.contains("user.hank") && !d.contains("shared.news")
    });
    let final_dump = dump_mboxlist(&inst);
    assert!(
        final_dump.contains("user.alice") && final_dump.contains("user.zed"),
        "{final_dump}"
    );
    // corvid saw the slave log in as sl2 and subscribe.
    let log = std::fs::read_to_string(c.dir.join("corvid.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[allow(dead_code)]
fn read_lines(p: &Path) -> Vec<String> {
    BufReader::new(std::fs::File::open(p).unwrap())
        .lines()
        .map(|l| l.unwrap())
        .collect()
}

#[test]
fn real_cyrus_backend_push_reconciles_into_corvid() {
    if !cyrus_available("real_cyrus_backend_push_reconciles_into_corvid") {
        return;
    }
    let root = open_root();
    let c = start_corvid(&root.path().join("corvid").tap_mkdir());
    let mut w = Client::login(c.port);
    // The master's view before the backend boots: a stale entry the backend
    // no longer has, a wrong ACL, and another backend's mailbox.
    for cmd in [
        mupdate::Command::Activate {
            name: b("user.stale"),
            location: b("be1.test!default"),
            acl: b("x\tlr\t"),
        },
        mupdate::Command::Activate {
            name: b("user.alice"),
            location: b("be1.test!default"),
            acl: b("old\tlr\t"),
        },
        mupdate::Command::Activate {
            name: b("shared.other"),
            location: b("be2.test!default"),
            acl: b("anyone\tlr\t"),
        },
    ] {
        assert_eq!(w.run(cmd).1, "Ok done");
    }
    let inst = cyrus_instance(
        root.path(),
        "be1",
        &format!(
            "servername: be1.test\nadmins: cyrus\nproxyservers: proxy\nmupdate_server: 127.0.0.1:{}\nmupdate_authname: be1\n\
mupdate_username: be1\nmupdate_password: secret\nmupdate_config: standard\n",
            c.port
        ),
    );
    // The backend's own mailboxes (ctl_mboxlist -u takes Cyrus 3.6's JSON dump).
    let mb = |n: &str, who: &str, id: &str| {
        format!(
            "\"{n}\": {{\"partition\": \"default\", \"acl\": {{\"{who}\": \"lrswipkxtecdan\"}}, \"uidvalidity\": \"1700000000\", \
\"createdmodseq\": \"1\", \"foldermodseq\": \"1\", \"mbtype\": \"e\", \"uniqueid\": \"{id}\"}}"
        )
    };
    let json = format!(
        "{{{}, {}}}\n",
        mb("user.alice", "alice", "a1b2c3d4e5f6a7b8c9d0e1f2"),
        mb("user.bob", "bob", "b1b2c3d4e5f6a7b8c9d0e1f2")
    );
    let f = inst.join("undump.json");
    std::fs::write(&f, json).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "runuser -u cyrus -- {CYRUS}/ctl_mboxlist -C {} -u < {}",
            inst.join("imapd.conf").display(),
            f.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(dump_mboxlist(&inst).contains("user.bob"));
    // The real push, as cyrus.conf START runs it on a backend.
    let out = as_cyrus(
        "ctl_mboxlist",
        &["-C", inst.join("imapd.conf").to_str().unwrap(), "-m"],
    );
    assert!(
        out.status.success(),
        "ctl_mboxlist -m failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |cl: &mut Client, n: &str| cl.run(mupdate::Command::Find { name: b(n) }).0;
    let mut r = Client::login(c.port);
    assert!(
        find(&mut r, "user.stale").is_empty(),
        "the stale entry was deleted"
    );
    match &find(&mut r, "user.bob")[..] {
        [Response::Mailbox { location, acl, .. }] => {
            assert_eq!(&location.value()[..], b"be1.test!default");
            assert_eq!(&acl.value()[..], b"bob\tlrswipkxtecdan\t");
        }
        other => panic!("user.bob after push: {other:?}"),
    }
    match &find(&mut r, "user.alice")[..] {
        [Response::Mailbox { acl, .. }] => assert_eq!(&acl.value()[..], b"alice\tlrswipkxtecdan\t"),
        other => panic!("user.alice after push: {other:?}"),
    }
    assert_eq!(
        find(&mut r, "shared.other").len(),
        1,
        "another backend's entry is untouched"
    );
}

/// Starts a real Cyrus `mupdate -m` under Cyrus master(8), with a private
/// sasldb holding `mupdateadmin`/`secret`.
fn start_cyrus_master(root: &Path) -> (CyrusMaster, u16) {
    let port = free_port();
    let sasldb = root.join("sasldb2");
    let mut p = Command::new("saslpasswd2")
        .args([
            "-p",
            "-c",
            "-f",
            sasldb.to_str().unwrap(),
            "-u",
            "cyrus-master.test",
            "mupdateadmin",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret").unwrap();
    assert!(p.wait().unwrap().success());
    assert!(Command::new("chown")
        .args(["cyrus:mail", sasldb.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let inst = cyrus_instance(
        root,
        "cmaster",
        &format!(
            "servername: cyrus-master.test\nadmins: mupdateadmin\nsasl_pwcheck_method: auxprop\nsasl_auxprop_plugin: sasldb\n\
sasl_sasldb_path: {}\nmupdate_config: standard\n",
            sasldb.display()
        ),
    );
    std::fs::write(
        inst.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  mupdate cmd=\"{CYRUS}/mupdate -C {conf} -m\" listen=\"127.0.0.1:{port}\" prefork=1\n}}\n",
            conf = inst.join("imapd.conf").display()
        ),
    )
    .unwrap();
    let pidfile = inst.join("master.pid");
    let st = Command::new("runuser")
        .args(["-u", "cyrus", "--", &format!("{CYRUS}/master")])
        .args([
            "-C",
            inst.join("imapd.conf").to_str().unwrap(),
            "-M",
            inst.join("cyrus.conf").to_str().unwrap(),
        ])
        .args(["-p", pidfile.to_str().unwrap(), "-d"])
        .status()
        .unwrap();
    assert!(st.success());
    wait_port(port);
    (CyrusMaster { pidfile }, port)
}

#[test]
fn corvid_slave_follows_the_real_cyrus_master() {
    if !cyrus_available("corvid_slave_follows_the_real_cyrus_master") {
        return;
    }
    let root = open_root();
    let (_cyrus, cport) = start_cyrus_master(root.path());
    // State on the real master before our slave boots.
    let mut w = Client::login(cport);
    assert_eq!(
        w.run(mupdate::Command::Reserve {
            name: b("user.alice"),
            location: b("be1!default")
        })
        .1,
        "Ok done"
    );
    assert_eq!(
        w.run(mupdate::Command::Activate {
            name: b("user.alice"),
            location: b("be1!default"),
            acl: b("alice\tlrs\t")
        })
        .1,
        "Ok done"
    );
    assert_eq!(
        w.run(mupdate::Command::Reserve {
            name: b("user.zed"),
            location: b("be2!default")
        })
        .1,
        "Ok done"
    );
    // corvid as a slave (no -m) of the Cyrus master.
    let dir = root.path().join("corvid-slave").tap_mkdir();
    let passwd = dir.join("passwd");
    let mut p = Command::new(corvid())
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}\nservername: corvid-slave.test\nadmins: mupdateadmin\ncorvid_passwd_file: {p}\nallowplaintext: yes\n\
mupdate_server: 127.0.0.1:{cport}\nmupdate_authname: mupdateadmin\nmupdate_password: secret\nmupdate_retry_delay: 2\n",
            d = dir.display(),
            p = passwd.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(corvid())
        .args([
            "mupdate",
            "-C",
            conf.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::fs::File::create(dir.join("corvid.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(port);
    let _slave = Corvid {
        child,
        port,
        dir: dir.clone(),
    };
    let find = |cl: &mut Client, n: &str| cl.run(mupdate::Command::Find { name: b(n) }).0;
    let mut r = Client::login(port);
    // The slave serves nobody before its first full sync (as Cyrus's), so
    // the very first FIND already sees the master's state.
    assert_eq!(find(&mut r, "user.zed").len(), 1);
    match &find(&mut r, "user.alice")[..] {
        [Response::Mailbox { location, acl, .. }] => {
            assert_eq!(&location.value()[..], b"be1!default");
            assert_eq!(&acl.value()[..], b"alice\tlrs\t");
        }
        other => panic!("{other:?}"),
    }
    // Read-only.
    assert_eq!(
        r.run(mupdate::Command::Delete {
            name: b("user.alice")
        })
        .1,
        "Bad read-only session"
    );
    // A NOOP on our slave kicks the Cyrus master (which flushes its ~5 s
    // batch at once) and is answered only when the changes are applied:
    // right after it, FIND sees them, with no waiting.
    assert_eq!(
        w.run(mupdate::Command::Activate {
            name: b("user.new"),
            location: b("be1!default"),
            acl: b("")
        })
        .1,
        "Ok done"
    );
    assert_eq!(
        w.run(mupdate::Command::Delete {
            name: b("user.zed")
        })
        .1,
        "Ok done"
    );
    assert_eq!(r.run(mupdate::Command::Noop).1, "Ok Noop done");
    assert_eq!(find(&mut r, "user.new").len(), 1);
    assert!(find(&mut r, "user.zed").is_empty());
    // And passively (no kick): the next change arrives by itself.
    assert_eq!(
        w.run(mupdate::Command::Activate {
            name: b("user.later"),
            location: b("be2!default"),
            acl: b("")
        })
        .1,
        "Ok done"
    );
    wait_until("Cyrus pushes to reach corvid's slave", 30, || {
        find(&mut r, "user.later").len() == 1
    });
}

#[test]
fn corvid_master_runs_under_cyrus_master8_and_serves_mupdatetest() {
    if !cyrus_available("corvid_master_runs_under_cyrus_master8_and_serves_mupdatetest") {
        return;
    }
    let root = open_root();
    let port = free_port();
    // corvid's binary must be reachable by user cyrus.
    let exe = corvid();
    let inst = cyrus_instance(
        root.path(),
        "corvid8",
        "servername: corvid8.test\nadmins: mupdateadmin\n",
    );
    let passwd = inst.join("passwd");
    let mut p = Command::new(&exe)
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    let conf = inst.join("imapd.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("corvid_passwd_file: {}\n", passwd.display()));
    std::fs::write(&conf, text).unwrap();
    std::fs::write(
        inst.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  mupdate cmd=\"{exe} mupdate -C {conf} -m\" listen=\"127.0.0.1:{port}\" prefork=1\n}}\n",
            exe = exe.display(),
            conf = conf.display()
        ),
    )
    .unwrap();
    assert!(Command::new("chown")
        .args(["-R", "cyrus:mail", inst.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let pidfile = inst.join("master.pid");
    let st = Command::new("runuser")
        .args(["-u", "cyrus", "--", &format!("{CYRUS}/master")])
        .args([
            "-C",
            conf.to_str().unwrap(),
            "-M",
            inst.join("cyrus.conf").to_str().unwrap(),
        ])
        .args([
            "-p",
            pidfile.to_str().unwrap(),
            "-L",
            inst.join("master.log").to_str().unwrap(),
            "-d",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let _m = CyrusMaster { pidfile };
    wait_port(port);
    let out = mupdatetest(
        port,
        "R1 RESERVE \"user.m8\" \"be1!default\"\r\nF1 FIND \"user.m8\"\r\nQ1 LOGOUT\r\n",
        &[],
        root.path(),
    );
    assert!(out.contains("R1 OK \"done\""), "{out}");
    assert!(out.contains("F1 RESERVE {7+}"), "{out}");
    // A second connection is served by the same process (prefork=1, one
    // multi-connection child, as Cyrus's threaded mupdate).
    let mut c = Client::login(port);
    assert_eq!(
        c.run(mupdate::Command::Find { name: b("user.m8") }).0.len(),
        1
    );
    // The database lives in the configdirectory, written by user cyrus.
    assert!(inst.join("conf/mupdate.corvid.sqlite3").exists());
}

/// The uid and gid of `cyrus:mail`, so corvid can run as Cyrus's user.
fn cyrus_ids() -> (u32, u32) {
    let id = |args: &[&str]| -> u32 {
        let o = Command::new("id").args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let gid = Command::new("getent")
        .args(["group", "mail"])
        .output()
        .unwrap();
    let gid: u32 = String::from_utf8_lossy(&gid.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    (id(&["-u", "cyrus"]), gid)
}

/// Reads the kick socket as a frontend's `kick_mupdate()` does: connect,
/// send nothing, read until the slave answers and closes.
fn kick(socket: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// corvid as the MUPDATE slave of a Murder **frontend**: it follows a real
/// Cyrus master into the frontend's own `mailboxes.db` (twoskip), which the
/// real Cyrus tools on that configdirectory read (`ctl_mboxlist -d`,
/// `cyr_dbtool … consistent`, `mbpath`); the frontend's kick socket
/// answers `ok` only once the master's latest changes are in the file.
#[test]
fn corvid_slave_keeps_a_frontend_mailboxes_db_cyrus_reads() {
    if !cyrus_available("corvid_slave_keeps_a_frontend_mailboxes_db_cyrus_reads") {
        return;
    }
    let root = open_root();
    let (_cyrus, cport) = start_cyrus_master(root.path());
    let mut w = Client::login(cport);
    for (cmd, want) in [
        (
            mupdate::Command::Activate {
                name: b("user.alice"),
                location: b("be1.test!default"),
                acl: b("alice\tlrswipkxtecdan\tanyone\tlrs\t"),
            },
            "Ok done",
        ),
        (
            mupdate::Command::Activate {
                name: b("example.com!user.carol.Sent"),
                location: b("be2.test!p2"),
                acl: b("carol@example.com\tlrs\t"),
            },
            "Ok done",
        ),
        (
            mupdate::Command::Reserve {
                name: b("user.zed"),
                location: b("be2.test!default"),
            },
            "Ok done",
        ),
    ] {
        assert_eq!(w.run(cmd).1, want);
    }
    // The frontend: a Cyrus configdirectory with mupdate_server set and no
    // proxyservers; corvid runs as its slave, as user cyrus (as master(8)
    // would start it).
    let passwd = root.path().join("fe-passwd");
    let mut p = Command::new(corvid())
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    let fe = cyrus_instance(
        root.path(),
        "fe",
        &format!(
            "servername: fe.test\nadmins: mupdateadmin\nmupdate_server: 127.0.0.1:{cport}\nmupdate_authname: mupdateadmin\n\
mupdate_password: secret\nmupdate_retry_delay: 2\nmupdate_config: standard\ncorvid_passwd_file: {}\n",
            passwd.display()
        ),
    );
    assert!(Command::new("chown")
        .args(["cyrus:mail", passwd.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let conf = fe.join("imapd.conf");
    let port = free_port();
    let (uid, gid) = cyrus_ids();
    let child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(corvid())
            .args([
                "mupdate",
                "-C",
                conf.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .uid(uid)
            .gid(gid)
            .stderr(std::fs::File::create(root.path().join("fe-corvid.log")).unwrap())
            .spawn()
            .unwrap()
    };
    wait_port(port);
    let _slave = Corvid {
        child,
        port,
        dir: fe.clone(),
    };
    let db = fe.join("conf/mailboxes.db");
    let socket = fe.join("conf/socket/mupdate.target");
    wait_until("the kick socket", 20, || socket.exists());
    // Cyrus's own tools read the file corvid wrote.
    let dump = dump_mboxlist(&fe);
    for want in [
        r#""user.alice": {"name": "user.alice", "mtime": "#,
        r#""mbtype": "er", "partition": "default", "server": "be1.test", "acl": {"alice": "lrswipkxtecdan", "anyone": "lrs"}"#,
        r#""example.com!user.carol.Sent": {"name": "example.com!user.carol.Sent""#,
        r#""mbtype": "er", "partition": "p2", "server": "be2.test", "acl": {"carol@example.com": "lrs"}"#,
        r#""user.zed": {"name": "user.zed""#,
        r#""mbtype": "erz", "partition": "default", "server": "be2.test", "acl": {}"#,
    ] {
        assert!(dump.contains(want), "ctl_mboxlist -d lacks {want}:\n{dump}");
    }
    let check = as_cyrus(
        "cyr_dbtool",
        &[
            "-C",
            conf.to_str().unwrap(),
            db.to_str().unwrap(),
            "twoskip",
            "consistent",
        ],
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("Yes, consistent"),
        "{check:?}"
    );
    let path = as_cyrus("mbpath", &["-C", conf.to_str().unwrap(), "user.alice"]);
    assert!(path.status.success(), "mbpath: {path:?}");
    // A change on the master, then a kick as the frontend's imapd sends
    // after proxying a CREATE: when the socket says ok, the change is in
    // mailboxes.db (the Cyrus master alone would push it only ~5 s later).
    assert_eq!(
        w.run(mupdate::Command::Activate {
            name: b("user.new"),
            location: b("be1.test!default"),
            acl: b("new\tlrs\t"),
        })
        .1,
        "Ok done"
    );
    assert_eq!(
        w.run(mupdate::Command::Delete {
            name: b("user.zed")
        })
        .1,
        "Ok done"
    );
    assert_eq!(kick(&socket), "ok");
    let dump = dump_mboxlist(&fe);
    assert!(
        dump.contains(r#""user.new": {"name": "user.new""#),
        "{dump}"
    );
    assert!(!dump.contains("user.zed"), "{dump}");
    let show = as_cyrus(
        "cyr_dbtool",
        &[
            "-C",
            conf.to_str().unwrap(),
            db.to_str().unwrap(),
            "twoskip",
            "show",
        ],
    );
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        show.contains("Nuser\u{1f}new\t%(T er P default S be1.test M "),
        "{show}"
    );
    // The file stays Cyrus's: it belongs to cyrus and keeps its mode.
    let meta = std::fs::metadata(&db).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(meta.uid(), uid);
}

/// Runs `corvid mupdate-client` with `conf`; returns (exit code, stdout,
/// stderr).
fn mupdate_client(conf: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(corvid())
        .args(["mupdate-client", "-C", conf.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same script of `corvid mupdate-client` calls against one server;
/// every answer is checked. The credentials come from imapd.conf, as for
/// a backend.
fn client_script(conf: &Path, who: &str) {
    let run = |args: &[&str]| mupdate_client(conf, args);
    let ok = |args: &[&str]| {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{who}: {args:?}: {out}{err}");
        out
    };
    ok(&["reserve", "user.cli", "be1.test!default"]);
    assert_eq!(
        ok(&["find", "user.cli"]),
        "RESERVE\tuser.cli\tbe1.test!default\n",
        "{who}"
    );
    ok(&[
        "activate",
        "user.cli",
        "be1.test!default",
        "cli lrswipkxtecdan anyone lrs",
    ]);
    ok(&["activate", "user.cli.Sent", "be1.test!p2", "cli\tlrs\t"]);
    assert_eq!(
        ok(&["find", "user.cli"]),
        "MAILBOX\tuser.cli\tbe1.test!default\tcli lrswipkxtecdan anyone lrs\n",
        "{who}"
    );
    assert_eq!(ok(&["find", "user.nobody"]), "", "{who}");
    assert_eq!(
        ok(&["list", "be1.test!"]),
        "MAILBOX\tuser.cli\tbe1.test!default\tcli lrswipkxtecdan anyone lrs\n\
MAILBOX\tuser.cli.Sent\tbe1.test!p2\tcli lrs\n",
        "{who}"
    );
    // NO is exit 1 with the server's text.
    let (code, _, err) = run(&["reserve", "user.cli", "elsewhere!default"]);
    assert_eq!(code, 1, "{who}: {err}");
    assert!(err.contains("NO mailbox already exists"), "{who}: {err}");
    ok(&["deactivate", "user.cli.Sent", "be1.test!p2"]);
    assert_eq!(
        ok(&["find", "user.cli.Sent"]),
        "RESERVE\tuser.cli.Sent\tbe1.test!p2\n",
        "{who}"
    );
    ok(&["delete", "user.cli.Sent"]);
    ok(&["delete", "user.cli"]);
    assert_eq!(ok(&["list", "be1.test!"]), "", "{who}");
}

#[test]
fn mupdate_client_tool_against_corvid_and_the_real_cyrus_master() {
    if !cyrus_available("mupdate_client_tool_against_corvid_and_the_real_cyrus_master") {
        return;
    }
    let root = open_root();
    let (_cyrus, cport) = start_cyrus_master(root.path());
    let cdir = root.path().join("cm").tap_mkdir();
    let corvid_master = start_corvid(&cdir);
    for (who, port) in [("corvid", corvid_master.port), ("cyrus", cport)] {
        let conf = root.path().join(format!("{who}-client.conf"));
        std::fs::write(
            &conf,
            format!(
                "mupdate_server: 127.0.0.1:{port}\nmupdate_authname: mupdateadmin\nmupdate_password: secret\n"
            ),
        )
        .unwrap();
        client_script(&conf, who);
        // A wrong password: exit 69 (unavailable), nothing printed.
        let (code, out, err) = mupdate_client(&conf, &["--password", "wrong", "list"]);
        assert_eq!(code, 69, "{who}: {out}{err}");
        assert!(err.contains("refused"), "{who}: {err}");
    }
    // No server anywhere: a usage error.
    let empty = root.path().join("empty.conf");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(mupdate_client(&empty, &["list"]).0, 64);
}

/// Over `mupdate_connections_max`, a newcomer gets Cyrus's
/// `* BYE "Server Unable"` and is closed; the others keep being served.
#[test]
fn over_the_connection_cap_a_client_gets_server_unable() {
    if !cyrus_available("over_the_connection_cap_a_client_gets_server_unable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = start_corvid_with(dir.path(), "mupdate_connections_max: 2\n");
    let mut a = Client::login(c.port);
    let b2 = Client::login(c.port);
    let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"* BYE \"Server Unable\"\r\n");
    assert_eq!(a.run(mupdate::Command::Noop).1, "Ok Noop done");
    drop(b2.s.shutdown(std::net::Shutdown::Both));
    // A slot is free again once a client leaves (the server notices the
    // close a moment later, so poll).
    wait_until("a free slot", 20, || {
        let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        n > 0 && !buf[..n].starts_with(b"* BYE")
    });
}

/// A line-based IMAP client for the frontend test (no literals needed).
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u32,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut i = Imap {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            n: 0,
        };
        let mut greeting = String::new();
        i.r.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        i
    }

    /// Runs one command; returns every line up to and including the tagged one.
    fn run(&mut self, cmd: &str) -> String {
        self.n += 1;
        let tag = format!("i{}", self.n);
        write!(self.w, "{tag} {cmd}\r\n").unwrap();
        let mut out = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).unwrap() > 0,
                "imap closed: {out}"
            );
            out.push_str(&line);
            if line.starts_with(&format!("{tag} ")) {
                return out;
            }
        }
    }
}

/// The whole Murder with corvid as the frontend's MUPDATE slave:
///
/// ```text
///   real Cyrus mupdate -m  ◀── RESERVE/ACTIVATE ── real Cyrus backend imapd
///          │ UPDATE stream
///          ▼
///   corvid mupdate (slave, under the frontend's Cyrus master(8))
///          │ writes mailboxes.db (twoskip)      ▲ kick (mupdate.target)
///          ▼                                     │
///   real Cyrus frontend imapd ── proxies ──▶ backend
/// ```
///
/// An unmodified frontend imapd lists alice's INBOX from corvid's
/// mailboxes.db, proxies SELECT to the backend named there, proxies a
/// CREATE, kicks corvid, and lists the new folder at once.
#[test]
fn real_cyrus_frontend_routes_with_corvid_slave() {
    if !cyrus_available("real_cyrus_frontend_routes_with_corvid_slave") {
        return;
    }
    let root = open_root();
    let (_mupdate_master, cport) = start_cyrus_master(root.path());
    let be_port = free_port();
    let be_name = format!("127.0.0.1:{be_port}");
    let sasldb = root.path().join("murder-sasldb2");
    for realm in ["fe.test", be_name.as_str()] {
        for (user, pass) in [
            ("cyrus", "cyruspass"),
            ("proxy", "proxypass"),
            ("alice", "pass"),
        ] {
            let mut p = Command::new("saslpasswd2")
                .args([
                    "-p",
                    "-c",
                    "-f",
                    sasldb.to_str().unwrap(),
                    "-u",
                    realm,
                    user,
                ])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            p.stdin.take().unwrap().write_all(pass.as_bytes()).unwrap();
            assert!(p.wait().unwrap().success());
        }
    }
    assert!(Command::new("chown")
        .args(["cyrus:mail", sasldb.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let sasl = format!(
        "sasl_pwcheck_method: auxprop\nsasl_auxprop_plugin: sasldb\nsasl_sasldb_path: {}\n",
        sasldb.display()
    );
    let start_master = |inst: &Path| -> CyrusMaster {
        let pidfile = inst.join("master.pid");
        let st = Command::new("runuser")
            .args(["-u", "cyrus", "--", &format!("{CYRUS}/master")])
            .args(["-C", inst.join("imapd.conf").to_str().unwrap()])
            .args(["-M", inst.join("cyrus.conf").to_str().unwrap()])
            .args(["-p", pidfile.to_str().unwrap(), "-d"])
            .status()
            .unwrap();
        assert!(st.success());
        CyrusMaster { pidfile }
    };
    // The backend: pushes its mailboxes to the Cyrus MUPDATE master.
    let be = cyrus_instance(
        root.path(),
        "be",
        &format!(
            "servername: {be_name}\nadmins: cyrus\nproxyservers: proxy\nmupdate_server: 127.0.0.1:{cport}\n\
mupdate_authname: mupdateadmin\nmupdate_password: secret\nmupdate_config: standard\n{sasl}"
        ),
    );
    std::fs::write(
        be.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  imap cmd=\"{CYRUS}/imapd -C {c}\" listen=\"127.0.0.1:{be_port}\" prefork=0\n}}\n",
            c = be.join("imapd.conf").display()
        ),
    )
    .unwrap();
    let _be = start_master(&be);
    wait_port(be_port);
    let mut admin = Imap::connect(be_port);
    assert!(admin.run("LOGIN cyrus cyruspass").contains(" OK"));
    let created = admin.run("CREATE user.alice");
    assert!(created.contains(" OK"), "backend CREATE: {created}");
    // The frontend: corvid as its MUPDATE slave under its master(8), and
    // the real imapd proxying to the backend.
    let passwd = root.path().join("fe-passwd");
    let mut p = Command::new(corvid())
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    assert!(Command::new("chown")
        .args(["cyrus:mail", passwd.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let fe = cyrus_instance(
        root.path(),
        "fe",
        &format!(
            "servername: fe.test\nadmins: cyrus\nmupdate_server: 127.0.0.1:{cport}\nmupdate_authname: mupdateadmin\n\
mupdate_password: secret\nmupdate_retry_delay: 2\nmupdate_config: standard\nproxy_authname: proxy\nproxy_password: proxypass\n\
serverlist: {be_name}\ncorvid_passwd_file: {}\n{sasl}",
            passwd.display()
        ),
    );
    let slave_port = free_port();
    let fe_port = free_port();
    std::fs::write(
        fe.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  mupdate cmd=\"{exe} mupdate -C {c}\" listen=\"127.0.0.1:{slave_port}\" prefork=1\n  \
imap cmd=\"{CYRUS}/imapd -C {c}\" listen=\"127.0.0.1:{fe_port}\" prefork=0\n}}\n",
            exe = corvid().display(),
            c = fe.join("imapd.conf").display()
        ),
    )
    .unwrap();
    let _fe = start_master(&fe);
    let socket = fe.join("conf/socket/mupdate.target");
    wait_until("corvid slave's first sync (kick socket)", 30, || {
        socket.exists()
    });
    wait_port(fe_port);
    let mut imap = Imap::connect(fe_port);
    let login = imap.run("LOGIN alice pass");
    assert!(login.contains(" OK"), "frontend LOGIN: {login}");
    let list = imap.run("LIST \"\" \"*\"");
    assert!(
        list.contains("\"INBOX\"") || list.contains(" INBOX\r\n"),
        "frontend LIST: {list}"
    );
    let select = imap.run("SELECT INBOX");
    assert!(
        select.contains("OK [READ-WRITE]"),
        "frontend SELECT (proxied): {select}"
    );
    // CREATE through the frontend: proxied to the backend, which tells the
    // master; the frontend then kicks corvid, and the folder is listed at
    // once (the Cyrus master alone pushes only every ~5 s).
    let create = imap.run("CREATE INBOX.Sent");
    assert!(create.contains(" OK"), "frontend CREATE: {create}");
    let list = imap.run("LIST \"\" \"*\"");
    assert!(
        list.contains("INBOX.Sent"),
        "frontend LIST after CREATE: {list}"
    );
    let dump = dump_mboxlist(&fe);
    assert!(
        dump.contains(&format!("\"server\": \"{be_name}\"")),
        "{dump}"
    );
}

/// A corvid slave of `master_port` with its own configdirectory under
/// `dir` (a SQLite-free slave: its mailboxes.db is the twoskip file);
/// `extra` is added to its imapd.conf.
fn start_corvid_slave(dir: &Path, master_port: u16, extra: &str) -> Corvid {
    std::fs::create_dir_all(dir).unwrap();
    let passwd = dir.join("passwd");
    let mut p = Command::new(corvid())
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    let conf = dir.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {d}\nadmins: mupdateadmin\ncorvid_passwd_file: {p}\nallowplaintext: yes\n\
mupdate_server: 127.0.0.1:{master_port}\nmupdate_authname: mupdateadmin\nmupdate_password: secret\n\
mupdate_retry_delay: 1\n{extra}",
            d = dir.display(),
            p = passwd.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(corvid())
        .args([
            "mupdate",
            "-C",
            conf.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::fs::File::create(dir.join("corvid.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(port);
    Corvid {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

/// A master on a given port (to restart one where its slave looks for it).
fn start_corvid_on(dir: &Path, port: u16) -> Corvid {
    let conf = dir.join("corvid.conf");
    let child = Command::new(corvid())
        .args([
            "mupdate",
            "-C",
            conf.to_str().unwrap(),
            "-m",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::fs::File::create(dir.join("corvid-again.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(port);
    Corvid {
        child,
        port,
        dir: dir.to_path_buf(),
    }
}

/// The kick socket follows the master link as Cyrus's slave's does
/// (mupdate-slave.c: the socket is opened after each full sync and closed
/// when the link ends): with a synced link a kick answers `ok` after the
/// master's NOOP; with the master gone a kick is refused at once (a
/// frontend's `kick_mupdate()` logs and goes on) instead of answering `ok`
/// for changes the slave cannot have; a local client's NOOP is answered
/// either way; after the master returns and the slave has re-synced, kicks
/// work again and the master's new state is there.
#[test]
fn corvid_slave_kick_socket_follows_the_master_link() {
    let root = open_root();
    let mdir = root.path().join("master").tap_mkdir();
    let mut master = start_corvid(&mdir);
    let mport = master.port;
    let mut w = Client::login(mport);
    let activate = |name: &str| mupdate::Command::Activate {
        name: b(name),
        location: b("be1!default"),
        acl: b("anyone\tlrs\t"),
    };
    assert_eq!(w.run(activate("user.before")).1, "Ok done");
    let slave = start_corvid_slave(&root.path().join("slave"), mport, "");
    let socket = slave.dir.join("socket/mupdate.target");
    wait_until("the kick socket", 20, || socket.exists());
    assert_eq!(w.run(activate("user.kicked")).1, "Ok done");
    assert_eq!(kick(&socket), "ok");
    let mut local = Client::login(slave.port);
    let (data, r) = local.run(mupdate::Command::Find {
        name: b("user.kicked"),
    });
    assert_eq!(r, "Ok Search completed");
    assert_eq!(data.len(), 1, "{data:?}");

    // The master goes away: kicks are refused, not answered.
    drop(w);
    let _ = master.child.kill();
    let _ = master.child.wait();
    wait_until("kicks to be refused without a master", 30, || {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(mut s) => {
                // Accepted just before the link loss was noticed: it must
                // close without `ok` or answer `ok` — never hang.
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                false
            }
        }
    });
    assert!(socket.exists(), "the socket file stays, as Cyrus leaves it");
    // A local client's NOOP on the slave is still answered (Cyrus's slave
    // kicks itself, fails, and says OK).
    let (_, r) = local.run(mupdate::Command::Noop);
    assert_eq!(r, "Ok Noop done");

    // The master comes back with a change made while the slave was away.
    let master = start_corvid_on(&mdir, mport);
    let mut w = Client::login(master.port);
    assert_eq!(w.run(activate("user.after")).1, "Ok done");
    wait_until("kicks to work again", 60, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert_eq!(kick(&socket), "ok");
    let (data, r) = local.run(mupdate::Command::Find {
        name: b("user.after"),
    });
    assert_eq!((data.len(), r.as_str()), (1, "Ok Search completed"));
}

/// W4: `corvid_mupdate_idle_timeout` bounds how long a session may go
/// without completing a command, however it dribbles bytes (Cyrus
/// restarts its 3 h timer on every read).
#[test]
fn a_dribbling_client_is_cut_off_by_the_configured_idle_timeout() {
    let root = open_root();
    let c = start_corvid_with(
        &root.path().join("m").tap_mkdir(),
        "corvid_mupdate_idle_timeout: 2s\n",
    );
    let mut s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut seen = Vec::new();
    let mut closed = false;
    let t0 = Instant::now();
    // One byte of a never-finished command every 0.3 s.
    for byte in b"N1 NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP" {
        if s.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(closed, "still connected after dribbling: {seen}");
    assert!(seen.contains("* BYE \"idle for too long\""), "{seen}");
    // Others are served.
    let mut other = Client::login(c.port);
    assert_eq!(other.run(mupdate::Command::Noop).1, "Ok Noop done");
}

/// `mupdate_config` on a master: `unified` is refused at start as Cyrus
/// does (exit 64); `replicated` tolerates the repeated writes of backends
/// sharing a servername (mupdate.c `cmd_set`): a second RESERVE from
/// elsewhere, a DEACTIVATE of a reserved name, a DELETE of a missing one.
#[test]
fn master_topologies_unified_refused_replicated_tolerant() {
    let root = open_root();
    let dir = root.path().join("uni").tap_mkdir();
    std::fs::write(
        dir.join("u.conf"),
        format!(
            "configdirectory: {}\nmupdate_config: unified\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(corvid())
        .args(["mupdate", "-C", dir.join("u.conf").to_str().unwrap(), "-m"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot run mupdate master on a unified server"),
        "{out:?}"
    );

    let std_master = start_corvid(&root.path().join("std").tap_mkdir());
    let rep = start_corvid_with(
        &root.path().join("rep").tap_mkdir(),
        "mupdate_config: replicated\n",
    );
    let script = |c: &mut Client| -> Vec<String> {
        [
            mupdate::Command::Reserve {
                name: b("user.x"),
                location: b("default"),
            },
            mupdate::Command::Reserve {
                name: b("user.x"),
                location: b("other"),
            },
            mupdate::Command::Deactivate {
                name: b("user.x"),
                location: b("third"),
            },
            mupdate::Command::Delete { name: b("user.x") },
            mupdate::Command::Delete { name: b("user.x") },
            mupdate::Command::Deactivate {
                name: b("user.y"),
                location: b("default"),
            },
        ]
        .into_iter()
        .map(|cmd| c.run(cmd).1)
        .collect()
    };
    assert_eq!(
        script(&mut Client::login(std_master.port)),
        [
            "Ok done",
            "No mailbox already exists",
            "No mailbox not currently active",
            "Ok done",
            "No mailbox does not exist",
            "No mailbox does not exist"
        ]
    );
    let mut c = Client::login(rep.port);
    assert_eq!(script(&mut c), ["Ok done"; 6]);
    let (data, _) = c.run(mupdate::Command::Find { name: b("user.y") });
    assert!(
        matches!(&data[..], [Response::Reserve { location, .. }] if location.value()[..] == b"default"[..]),
        "{data:?}"
    );
}

/// A test CA and a server certificate for 127.0.0.1 under `dir`, readable
/// by the Cyrus daemons (user cyrus).
fn make_test_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
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
        "/CN=corvid mupdate test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// The banner of a fresh connection, up to its `* OK` line.
fn banner(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("* OK") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the banner");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// W6, proven with the real Cyrus slave: with `allowplaintext` unset
/// (Cyrus's default, no) corvid's master offers no mechanism in the clear
/// (a bare `* AUTH`, as Cyrus's own master then sends), so the real slave
/// starts TLS (backend.c: no usable mechanism, STARTTLS offered), logs in
/// with PLAIN under TLS, takes the dump and follows the stream.
#[test]
fn real_cyrus_slave_starts_tls_when_corvid_withholds_plain() {
    if !cyrus_available("real_cyrus_slave_starts_tls_when_corvid_withholds_plain") {
        return;
    }
    let root = open_root();
    let pki = root.path().join("pki").tap_mkdir();
    make_test_pki(&pki);
    let cdir = root.path().join("corvid").tap_mkdir();
    {
        // Something for the dump, written while PLAIN is allowed.
        let seed = start_corvid_with(&cdir, "allowplaintext: yes\n");
        let mut w = Client::login(seed.port);
        let (_, r) = w.run(mupdate::Command::Activate {
            name: b("user.tlsdump"),
            location: b("be1!default"),
            acl: b("anyone\tlrs\t"),
        });
        assert_eq!(r, "Ok done");
    }
    let c = start_corvid_with(
        &cdir,
        &format!(
            "allowplaintext: no\ntls_server_cert: {p}/server.pem\ntls_server_key: {p}/server.key\n",
            p = pki.display()
        ),
    );
    let clear = banner(c.port);
    assert!(clear.starts_with("* AUTH\r\n* STARTTLS\r\n"), "{clear}");
    assert!(!clear.contains("PLAIN"), "{clear}");
    // Our own client under TLS would be allowed; in the clear it is not.
    let mut plain = Client::connect(c.port);
    let (_, r) = plain.run(mupdate::Command::Authenticate {
        mechanism: "PLAIN".into(),
        initial: Some(proto::sasl::encode(b"\0mupdateadmin\0secret").into()),
    });
    assert_eq!(r, "No undefined error!");

    let slave_port = free_port();
    let inst = cyrus_instance(
        root.path(),
        "tlsslave",
        &format!(
            "servername: tlsslave.test\nadmins: cyrus\nmupdate_server: 127.0.0.1:{}\nmupdate_authname: sl2\nmupdate_username: sl2\n\
mupdate_password: secret\nmupdate_retry_delay: 2\nmupdate_config: standard\ntls_client_ca_file: {}/ca.pem\n",
            c.port,
            pki.display()
        ),
    );
    // No forced mechanism: the slave must find PLAIN the way Cyrus does.
    let conf = inst.join("imapd.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("force_sasl_client_mech: PLAIN\n", "")).unwrap();
    std::fs::write(
        inst.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  mupdate cmd=\"{CYRUS}/mupdate -C {conf}\" listen=\"127.0.0.1:{slave_port}\" prefork=1\n}}\n",
            conf = conf.display()
        ),
    )
    .unwrap();
    let pidfile = inst.join("master.pid");
    let st = Command::new("runuser")
        .args(["-u", "cyrus", "--", &format!("{CYRUS}/master")])
        .args(["-C", conf.to_str().unwrap()])
        .args(["-M", inst.join("cyrus.conf").to_str().unwrap()])
        .args(["-p", pidfile.to_str().unwrap(), "-d"])
        .status()
        .unwrap();
    assert!(st.success());
    let _master = CyrusMaster { pidfile };
    wait_until("the TLS slave's initial sync", 60, || {
        dump_mboxlist(&inst).contains("user.tlsdump")
    });
    // A write by the real mupdatetest over STARTTLS reaches the slave.
    let out = mupdatetest(
        c.port,
        "X1 ACTIVATE \"user.tlsstream\" \"be2!default\" \"anyone\tlrs\t\"\r\n",
        &["-t", ""],
        &pki,
    );
    assert!(
        out.contains("S01 STARTTLS") || out.contains("STARTTLS"),
        "{out}"
    );
    assert!(out.contains("X1 OK"), "{out}");
    wait_until("the TLS slave to stream the change", 60, || {
        dump_mboxlist(&inst).contains("user.tlsstream")
    });
    let log = std::fs::read_to_string(c.dir.join("corvid.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

/// `mupdate_config: unified`: the slave runs on a server that is frontend
/// and backend at once, whose mailboxes.db also holds its own (local)
/// mailboxes, written by its imapd. The corvid slave never writes over
/// them: not with the master's record for the same name, not with a
/// record at its own server (Cyrus's slave would turn that into a local
/// entry without the mailbox's uniqueid), and not on a DELETE; a stale
/// remote entry for a mailbox now at this server is removed. Remote
/// mailboxes are kept as usual. The file is read back with Cyrus's own
/// `cyr_dbtool`, which also wrote the local entries.
#[test]
fn corvid_unified_slave_keeps_the_servers_own_mailboxes_local() {
    if !cyrus_available("corvid_unified_slave_keeps_the_servers_own_mailboxes_local") {
        return;
    }
    let root = open_root();
    let master = start_corvid(&root.path().join("master").tap_mkdir());
    let mut w = Client::login(master.port);
    for (name, loc) in [
        ("user.local", "uni.test!default"),
        ("user.away", "be1.test!default"),
        ("user.moved", "uni.test!default"),
        ("user.clash", "be1.test!default"),
    ] {
        let (_, r) = w.run(mupdate::Command::Activate {
            name: b(name),
            location: b(loc),
            acl: b("anyone\tlrs\t"),
        });
        assert_eq!(r, "Ok done");
    }
    // The unified server's configdirectory, with entries its imapd wrote:
    // two local mailboxes and a remote one that has since moved here.
    let uni = cyrus_instance(root.path(), "uni", "servername: uni.test\n");
    let conf = uni.join("imapd.conf");
    let db = uni.join("conf/mailboxes.db");
    // Cyrus creates mailboxes.db at start (master(8) runs `ctl_cyrusdb -r`).
    let out = as_cyrus("ctl_cyrusdb", &["-C", conf.to_str().unwrap(), "-r"]);
    assert!(out.status.success() && db.exists(), "{out:?}");
    let local_value =
        "%(I 0123456789abcdef P default T e V 1700000000 M 1700000001 A %(owner lrswipkxtecdan))";
    for (key, value) in [
        ("Nuser\u{1f}local", local_value),
        ("Nuser\u{1f}clash", local_value),
        (
            "Nuser\u{1f}moved",
            "%(T er P default S be9.test M 1700000001 A %(anyone lrs))",
        ),
    ] {
        let out = as_cyrus(
            "cyr_dbtool",
            &[
                "-C",
                conf.to_str().unwrap(),
                db.to_str().unwrap(),
                "twoskip",
                "set",
                key,
                value,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let show = || {
        let out = as_cyrus(
            "cyr_dbtool",
            &[
                "-C",
                conf.to_str().unwrap(),
                db.to_str().unwrap(),
                "twoskip",
                "show",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The slave runs as cyrus, on the same configdirectory.
    let passwd = root.path().join("uni-passwd");
    let mut p = Command::new(corvid())
        .args(["passwd", passwd.to_str().unwrap(), "mupdateadmin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(p.wait().unwrap().success());
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "admins: mupdateadmin\nmupdate_server: 127.0.0.1:{}\nmupdate_authname: mupdateadmin\nmupdate_password: secret\n\
mupdate_retry_delay: 1\nmupdate_config: unified\ncorvid_passwd_file: {}\n",
        master.port,
        passwd.display()
    ));
    std::fs::write(&conf, text).unwrap();
    assert!(Command::new("chown")
        .args([
            "-R",
            "cyrus:mail",
            uni.to_str().unwrap(),
            passwd.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let port = free_port();
    let (uid, gid) = cyrus_ids();
    let child = {
        use std::os::unix::process::CommandExt as _;
        Command::new(corvid())
            .args(["mupdate", "-C", conf.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .uid(uid)
            .gid(gid)
            .stderr(std::fs::File::create(root.path().join("uni-corvid.log")).unwrap())
            .spawn()
            .unwrap()
    };
    wait_port(port);
    let _slave = Corvid {
        child,
        port,
        dir: uni.clone(),
    };
    let slave_log =
        || std::fs::read_to_string(root.path().join("uni-corvid.log")).unwrap_or_default();
    wait_until("the slave's first sync in mailboxes.db", 30, || {
        show().contains("Nuser\u{1f}away\t")
    });
    let after_sync = show();
    eprintln!("slave log:\n{}", slave_log());
    let line = |dump: &str, key: &str| -> Option<String> {
        dump.lines()
            .find(|l| l.starts_with(&format!("{key}\t")))
            .map(str::to_owned)
    };
    assert_eq!(
        line(&after_sync, "Nuser\u{1f}local"),
        Some(format!("Nuser\u{1f}local\t{local_value}")),
        "{after_sync}"
    );
    assert_eq!(
        line(&after_sync, "Nuser\u{1f}clash"),
        Some(format!("Nuser\u{1f}clash\t{local_value}")),
        "{after_sync}"
    );
    assert_eq!(line(&after_sync, "Nuser\u{1f}moved"), None, "{after_sync}");
    assert!(
        line(&after_sync, "Nuser\u{1f}away")
            .is_some_and(|l| l.contains("T er P default S be1.test")),
        "{after_sync}"
    );
    // Streaming: a DELETE of a local mailbox and a record at this server
    // leave the file alone; a remote mailbox arrives.
    for cmd in [
        mupdate::Command::Delete {
            name: b("user.local"),
        },
        mupdate::Command::Activate {
            name: b("user.newhere"),
            location: b("UNI.test!default"),
            acl: b("x\tlrs\t"),
        },
        mupdate::Command::Activate {
            name: b("user.newaway"),
            location: b("be2.test!default"),
            acl: b("x\tlrs\t"),
        },
    ] {
        assert_eq!(w.run(cmd).1, "Ok done");
    }
    let socket = uni.join("conf/socket/mupdate.target");
    wait_until("the kick socket", 20, || socket.exists());
    assert_eq!(kick(&socket), "ok");
    let streamed = show();
    assert_eq!(
        line(&streamed, "Nuser\u{1f}local"),
        Some(format!("Nuser\u{1f}local\t{local_value}")),
        "{streamed}"
    );
    assert_eq!(line(&streamed, "Nuser\u{1f}newhere"), None, "{streamed}");
    assert!(
        line(&streamed, "Nuser\u{1f}newaway").is_some(),
        "{streamed}"
    );
    let log = std::fs::read_to_string(root.path().join("uni-corvid.log")).unwrap_or_default();
    assert!(log.contains("local mailbox"), "{log}");
}

/// The corvid slave against a master that withholds PLAIN in the clear
/// (here corvid's, `allowplaintext` unset): like Cyrus's slave it starts
/// TLS, verifies the master against `tls_server_ca_file`, logs in, syncs
/// and follows.
#[test]
fn corvid_slave_starts_tls_when_its_master_withholds_plain() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl missing under CI=true"
        );
        eprintln!("SKIP: openssl missing");
        return;
    }
    let root = open_root();
    let pki = root.path().join("pki").tap_mkdir();
    make_test_pki(&pki);
    let mdir = root.path().join("master").tap_mkdir();
    {
        let seed = start_corvid_with(&mdir, "allowplaintext: yes\n");
        let mut w = Client::login(seed.port);
        let (_, r) = w.run(mupdate::Command::Activate {
            name: b("user.overtls"),
            location: b("be1!default"),
            acl: b("anyone\tlrs\t"),
        });
        assert_eq!(r, "Ok done");
    }
    let master = start_corvid_with(
        &mdir,
        &format!(
            "allowplaintext: no\ntls_server_cert: {p}/server.pem\ntls_server_key: {p}/server.key\n",
            p = pki.display()
        ),
    );
    let slave = start_corvid_slave(
        &root.path().join("slave"),
        master.port,
        &format!("tls_server_ca_file: {}/ca.pem\n", pki.display()),
    );
    let slave_log = || std::fs::read_to_string(slave.dir.join("corvid.log")).unwrap_or_default();
    let t0 = Instant::now();
    while !slave_log().contains("synced with its master") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never synced:\n{}",
            slave_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut local = Client::login(slave.port);
    let (data, r) = local.run(mupdate::Command::Find {
        name: b("user.overtls"),
    });
    assert_eq!((data.len(), r.as_str()), (1, "Ok Search completed"));
    let log = std::fs::read_to_string(slave.dir.join("corvid.log")).unwrap_or_default();
    assert!(!log.contains("refused our login"), "{log}");
}
