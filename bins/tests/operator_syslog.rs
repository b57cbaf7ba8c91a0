//! corvid sync_server under the real Cyrus `master(8)`, logging to syslog
//! as Cyrus services do: a private master (run through the peers'
//! `cyrexec.sh`, so it runs as cyrus and its children's `/dev/log` is the
//! peers' syslog sink) has a SERVICES entry `syncserver` running corvid. A
//! real Cyrus sync_client replicates one user through it; the sink must then
//! hold corvid's lines under the ident `PREFIX/syncserver[PID]` (Cyrus's
//! `syslog_prefix/SERVICE`), with the authenticated user on the session's
//! span, and, when master is stopped, the drain's shutdown lines.
//!
//! SKIPs without the peers (env file), fails under CI=true.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn peers() -> Option<BTreeMap<String, String>> {
    let path = std::env::var("CORVID_PEERS_ENV").unwrap_or_else(|_| "/tmp/corvid-peers/env".into());
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("no peers env file at {path} (CI=true: this live test must run)")
        }
        Err(_) => {
            eprintln!("SKIP: no peers env file at {path}");
            None
        }
    }
}

fn ok(mut c: Command) {
    assert!(c.status().unwrap().success(), "{c:?}");
}

fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn sync_server_under_the_real_master_logs_to_syslog_as_a_cyrus_service() {
    let Some(env) = peers() else { return };
    let dir = tempfile::Builder::new()
        .prefix("corvid-optest")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    for sub in ["conf", "spool", "bin"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // User cyrus must be able to run it; our target dir may be private.
    let bin = d.join("bin/corvid");
    std::fs::copy(env!("CARGO_BIN_EXE_corvid"), &bin).unwrap();
    let mut p = Command::new(&bin)
        .arg("passwd")
        .arg(d.join("passwd"))
        .arg(&env["REPL_USER"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    p.stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", env["REPL_PASS"]).as_bytes())
        .unwrap();
    assert!(p.wait().unwrap().success());
    let prefix = format!("corvid-optest-{}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = d.join("imapd.conf");
    std::fs::write(
        &conf,
        format!(
            "configdirectory: {0}/conf\npartition-default: {0}/spool\nadmins: {1}\n\
             sasl_mech_list: PLAIN\nallowplaintext: yes\ncorvid_passwd_file: {0}/passwd\nsyslog_prefix: {2}\n",
            d.display(),
            env["REPL_USER"],
            prefix
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("cyrus.conf"),
        format!(
            "SERVICES {{\n  syncserver cmd=\"{} sync_server -C {}\" listen=\"127.0.0.1:{port}\" prefork=1\n}}\n",
            bin.display(),
            conf.display()
        ),
    )
    .unwrap();
    let mut chown = Command::new("chown");
    chown.args(["-R", "cyrus:mail"]).arg(d);
    ok(chown);
    let mut chmod = Command::new("chmod");
    chmod.arg("755").arg(d);
    ok(chmod);

    let pidfile = d.join("master.pid");
    let mut master = Command::new("bash");
    master
        .arg(&env["CYREXEC"])
        .arg("/usr/lib/cyrus/bin/master")
        .arg("-C")
        .arg(&conf)
        .arg("-M")
        .arg(d.join("cyrus.conf"))
        .arg("-p")
        .arg(&pidfile)
        .arg("-L")
        .arg(d.join("master.log"))
        .arg("-d")
        .env("CORVID_PEERS_RUN", &env["CORVID_PEERS_RUN"])
        .env("CYRUS_SYSLOG_PREFIX", &prefix);
    ok(master);

    let result = std::panic::catch_unwind(|| {
        // A real sync_client replicates one user through corvid.
        let user = format!("oplog{}", std::process::id() % 100_000);
        let mail = |args: &[&str]| {
            let mut c = Command::new("python3");
            c.arg(&env["PEERS_MAIL"]).args(args);
            c.env(
                "CORVID_PEERS_ENV",
                std::env::var("CORVID_PEERS_ENV").unwrap_or_default(),
            );
            ok(c);
        };
        // A master user that can log in (sasldb), as the live tests add theirs.
        let db = Path::new(&env["CORVID_PEERS_RUN"]).join("sasldb2");
        let mut c = Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(&db)
            .args(["-u", &env["MASTER_NAME"], &user])
            .stdin(Stdio::piped())
            .spawn()
            .expect("saslpasswd2");
        c.stdin
            .take()
            .unwrap()
            .write_all(env["USER_PASS"].as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "saslpasswd2 {user}");
        let _ = Command::new("chown").arg("cyrus:mail").arg(&db).status();
        mail(&["mkuser", &user]);
        mail(&["lmtp", &user, "2"]);
        // master binds at once; the prefork child comes up shortly.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut sc = Command::new("bash");
        sc.arg(&env["SYNC_CLIENT"])
            .args(["--port", &port.to_string(), "--", "-u", &user])
            .env("CORVID_PEERS_RUN", &env["CORVID_PEERS_RUN"]);
        ok(sc);
    });

    // We started this master; we stop it, by its pid (it sends its service
    // children SIGTERM).
    let master_pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
    let master_pid = master_pid.trim().to_owned();
    if !master_pid.is_empty() {
        let _ = Command::new("kill").arg(&master_pid).status();
        for _ in 0..100 {
            if !alive(&master_pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // The sink's lines for this test's ident (the child's shutdown lines
    // may arrive a moment after master exits).
    let ident = format!("{prefix}/syncserver[");
    let mut ours = Vec::new();
    for _ in 0..100 {
        let log = std::fs::read(Path::new(&env["SYSLOG"])).unwrap_or_default();
        ours = String::from_utf8_lossy(&log)
            .lines()
            .filter(|l| l.contains(&ident))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if ours.iter().any(|l| l.contains("no longer accepting")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = ours.join("\n");
    assert!(
        ours.iter()
            .any(|l| l.contains(&format!("user=\"{}\"", env["REPL_USER"]))
                && l.contains("authenticated")),
        "no authenticated line with the user on the span:\n{all}"
    );
    assert!(
        ours.iter().any(|l| l.contains("SIGTERM: shutting down")),
        "{all}"
    );
    assert!(
        ours.iter().any(|l| l.contains("no longer accepting")),
        "{all}"
    );
    // Plain text: no terminal colour codes in syslog.
    assert!(!all.contains('\u{1b}'), "{all}");
}
