//! `corvid dsync` / `corvid dsync-server` as processes, without Dovecot:
//!
//! * the I/O timeout (`-T`, hostile-input finding W4 for dsync-server): a
//!   peer that opens the stream and then says nothing is dropped with exit
//!   1 and a message naming the timeout, instead of holding the process
//!   (and the user's mail) forever;
//! * LOCATION2 as `login@host`: the exact `ssh` command line is
//!   run (a fake `ssh` first on PATH records its arguments and execs the
//!   rest locally, so the sync really happens through it).
//!
//! No timed assertions: the waits below only bound a hang.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CORVID: &str = env!("CARGO_BIN_EXE_corvid");

fn tmp(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("corvid-dsync-tool-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Wait for a child, killing it after `bound` (a hang is a failure).
fn wait_bounded(mut child: std::process::Child, bound: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (status.code(), err);
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dsync_server_drops_a_silent_peer_after_its_io_timeout() {
    let d = tmp("idle");
    let child = Command::new(CORVID)
        .args(["dsync-server", "-u", "idle", "-T", "1", "-o"])
        .arg(format!(
            "mail_location=maildir:{}",
            d.join("Maildir").display()
        ))
        // stdin stays open and silent for as long as the child lives.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(child, Duration::from_secs(120));
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("no input from the peer for 1 s"),
        "stderr: {err}"
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn dsync_server_rejects_a_bad_timeout() {
    let out = Command::new(CORVID)
        .args(["dsync-server", "-T", "soon"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-T wants seconds"));
}

#[test]
fn user_at_host_runs_ssh_host_corvid_dsync_server() {
    let d = tmp("ssh");
    let bin = d.join("bin");
    fs::create_dir_all(&bin).unwrap();
    // The fake ssh: record argv, then run the remote command here, with
    // `corvid` resolved to the binary under test and the remote mail
    // location passed the way a login environment would.
    let log = d.join("ssh-argv");
    let remote = d.join("remote");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{log}'\n\
         [ \"$1\" = -l ] && shift 2\nshift\n\
         [ \"$1\" = corvid ] || exit 97\nshift\n\
         CORVID_MAIL_LOCATION='maildir:{remote}' exec '{corvid}' \"$@\"\n",
        log = log.display(),
        remote = remote.display(),
        corvid = CORVID,
    );
    fs::write(bin.join("ssh"), script).unwrap();
    fs::set_permissions(bin.join("ssh"), fs::Permissions::from_mode(0o755)).unwrap();
    // Some mail on the local side.
    let local = d.join("local");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(local.join(sub)).unwrap();
    }
    for i in 0..3 {
        fs::write(
            local.join("cur").join(format!("17000000{i}.M1P1.test:2,S")),
            format!("Subject: {i}\n\nbody {i}\n"),
        )
        .unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(CORVID)
        .env("PATH", path)
        .args(["dsync", "-u", "alice", "-o"])
        .arg(format!("mail_location=maildir:{}", local.display()))
        .args(["backup", "alice@mail.example"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(child, Duration::from_secs(300));
    assert_eq!(code, Some(0), "stderr: {err}");
    let argv: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        argv,
        [
            "-l",
            "alice",
            "mail.example",
            "corvid",
            "dsync-server",
            "-u",
            "alice"
        ],
        "ssh argv"
    );
    assert_eq!(count_messages(&remote), 3);
    let _ = fs::remove_dir_all(&d);
}

fn count_messages(maildir: &Path) -> usize {
    ["cur", "new"]
        .iter()
        .map(|s| fs::read_dir(maildir.join(s)).map_or(0, |r| r.count()))
        .sum()
}

/// Another process holds the user's lock as Dovecot takes it (an fcntl
/// write lock on `<home>/.dovecot-sync.lock`, here held by python's
/// `fcntl.lockf`, which is that call): corvid dsync waits `-l` seconds and
/// gives up with exit 75, touching nothing; dsync-server the same; once
/// the holder is gone the run proceeds, and the lock file is gone after.
#[test]
fn a_held_user_lock_makes_dsync_wait_then_fail_with_75() {
    let d = tmp("lock");
    let home = d.join("home");
    let local = d.join("local");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(local.join(sub)).unwrap();
    }
    fs::write(
        local.join("cur").join("1700000000.M1P1.test:2,S"),
        "Subject: x\n\nbody\n",
    )
    .unwrap();
    fs::create_dir_all(&home).unwrap();
    let lock = home.join(".dovecot-sync.lock");
    let ready = d.join("ready");
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(
            "import fcntl,sys,time\n\
             f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n\
             open(sys.argv[2],'w').close(); sys.stdin.read()",
        )
        .arg(&lock)
        .arg(&ready)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "holder never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let backup = |extra: &[&str]| {
        let child = Command::new(CORVID)
            .args(["dsync", "-u", "alice", "-l", "1", "-o"])
            .arg(format!("mail_location=maildir:{}", local.display()))
            .arg("-o")
            .arg(format!("mail_home={}", home.display()))
            .args(extra)
            .arg("backup")
            .arg(format!("maildir:{}", d.join("copy").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_bounded(child, Duration::from_secs(120))
    };
    let (code, err) = backup(&[]);
    assert_eq!(code, Some(75), "stderr: {err}");
    assert!(
        err.contains("Couldn't lock") && err.contains(".dovecot-sync.lock"),
        "stderr: {err}"
    );
    assert_eq!(count_messages(&d.join("copy")), 0, "a locked run wrote");
    // The server side locks its own home for the session too.
    let server = Command::new(CORVID)
        .args(["dsync-server", "-u", "alice", "-l", "1", "-o"])
        .arg(format!(
            "mail_location=maildir:{}",
            d.join("copy").display()
        ))
        .arg("-o")
        .arg(format!("mail_home={}", home.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = wait_bounded(server, Duration::from_secs(120));
    assert_eq!(code, Some(75), "stderr: {err}");
    // The holder goes: the same run now succeeds and leaves no lock file.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let (code, err) = backup(&[]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert_eq!(count_messages(&d.join("copy")), 1);
    assert!(!lock.exists(), "the lock file was left behind");
    let _ = fs::remove_dir_all(&d);
}
