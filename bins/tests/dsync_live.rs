//! THE PROOF for `corvid dsync` / `corvid dsync-server` against real
//! Dovecot 2.3:
//!
//! 1. `corvid dsync` (master, on the embedded store) against a real
//!    `doveadm dsync-server` run as LOCATION2's command line;
//! 2. a real `doveadm sync` that runs `corvid dsync-server` as its remote
//!    command (corvid is the slave);
//! 3. corvid against corvid: the embedded store converted to a Maildir and
//!    back, the Maildir read by real doveadm.
//!
//! Results are compared with `doveadm fetch` on the Dovecot side (and on
//! corvid's Maildir copies). Skips with a printed reason when doveadm is
//! missing, fails under `CI=true`. Dovecot runs privately: own config, no
//! daemon, `HOME` per side, mail uid 5000 when run as root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CORVID: &str = env!("CARGO_BIN_EXE_corvid");

fn doveadm_or_skip() -> Option<PathBuf> {
    let found = ["/usr/bin/doveadm", "/usr/sbin/doveadm"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but doveadm (dovecot-core 2.3) is not installed"
        );
        eprintln!("SKIP dsync_live: doveadm (Dovecot 2.3) is not installed; install dovecot-core to run it");
    }
    found
}

struct Lab {
    root: PathBuf,
    doveadm: PathBuf,
    conf: PathBuf,
    as_root: bool,
}

impl Lab {
    fn new(doveadm: PathBuf, test: &str) -> Lab {
        let root =
            std::env::temp_dir().join(format!("corvid-bins-dsync-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["run", "state", "B/Maildir", "C"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let uid: u32 = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let as_root = uid == 0;
        let mu = if as_root { 5000 } else { uid };
        let conf = root.join("dovecot.conf");
        fs::write(
            &conf,
            format!(
                "base_dir = {r}/run\nstate_dir = {r}/state\nlog_path = /dev/stderr\n\
                 info_log_path = /dev/stderr\nssl = no\nprotocols =\n\
                 mail_location = maildir:~/Maildir\n\
                 namespace inbox {{\n  inbox = yes\n  separator = /\n  prefix =\n}}\n\
                 mail_privileged_group =\nmail_uid = {mu}\nmail_gid = {mu}\n\
                 first_valid_uid = {fv}\nfirst_valid_gid = {fv}\n",
                r = root.display(),
                fv = mu.min(1000),
            ),
        )
        .unwrap();
        Lab {
            root,
            doveadm,
            conf,
            as_root,
        }
    }

    fn chown(&self) {
        if self.as_root {
            let _ = Command::new("chown")
                .args(["-R", "5000:5000"])
                .arg(&self.root)
                .status();
        }
    }

    fn home(&self) -> PathBuf {
        self.root.join("B")
    }

    fn put(&self, maildir: &Path, folder: &str, base: &str, info: &str, body: &str) {
        let dir = maildir.join(folder);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        if !folder.is_empty() {
            fs::write(dir.join("maildirfolder"), b"").unwrap();
        }
        fs::write(dir.join("cur").join(format!("{base}:2,{info}")), body).unwrap();
    }

    fn doveadm_cmd(&self, location: Option<&Path>, args: &[&str]) -> Command {
        self.chown();
        let mut c = Command::new("env");
        c.arg("-i")
            .arg("PATH=/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", self.home().display()))
            .arg("USER=corvid")
            .arg(&self.doveadm)
            .arg("-c")
            .arg(&self.conf);
        if let Some(l) = location {
            c.arg("-o")
                .arg(format!("mail_location=maildir:{}", l.display()));
        }
        c.args(args);
        c
    }

    /// `mailbox uid flags message-id` of a maildir as Dovecot reads it
    /// (`None`: the Dovecot side B), sorted, `\Recent` dropped.
    fn fetch(&self, location: Option<&Path>) -> Vec<String> {
        let out = self
            .doveadm_cmd(
                location,
                &[
                    "-f",
                    "tab",
                    "fetch",
                    "mailbox uid flags hdr.message-id",
                    "all",
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let mut flags: Vec<&str> = f[2]
                    .split(' ')
                    .filter(|x| !x.is_empty() && *x != "\\Recent")
                    .collect();
                flags.sort();
                format!("{} {} {} {}", f[0], f[1], flags.join(","), f[3])
            })
            .collect();
        v.sort();
        v
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.root.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The remote command for corvid: a real `doveadm dsync-server` on B.
    fn dovecot_server(&self) -> PathBuf {
        self.script(
            "dovecot-server.sh",
            &format!(
                "exec env -i PATH=/usr/bin:/bin HOME='{}' USER=corvid '{}' -c '{}' dsync-server",
                self.home().display(),
                self.doveadm.display(),
                self.conf.display()
            ),
        )
    }

    fn corvid(&self, args: &[&str]) -> (i32, String, String) {
        self.chown();
        let out = Command::new(CORVID).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn msg(id: &str, extra: &str) -> String {
    format!(
        "From: Alice <alice@example.com>\nSubject: {id}\nMessage-ID: <{id}@corvid>\n\
         Date: Mon, 01 Jan 2024 12:00:00 +0000\n\n{extra}"
    )
}

#[test]
fn corvid_master_against_doveadm_dsync_server() {
    let Some(doveadm) = doveadm_or_skip() else {
        return;
    };
    let lab = Lab::new(doveadm, "master");
    let b = lab.home().join("Maildir");
    lab.put(&b, "", "1700000001.M1P1.vm", "S", &msg("m1", "hello\n"));
    lab.put(
        &b,
        "",
        "1700000002.M2P2.vm",
        "FS",
        &msg("m2", ".\n..dots\n."),
    );
    lab.put(&b, ".Work", "1700000003.M3P3.vm", "", &msg("w1", "work\n"));
    let store = format!(
        "mail_location=corvid:{}",
        lab.root.join("C/store").display()
    );
    let server = lab.dovecot_server();
    let server = server.to_str().unwrap();

    // Initial: Dovecot -> corvid.
    let (rc, _, err) = lab.corvid(&["dsync", "-u", "corvid", "-o", &store, "mirror", server]);
    assert_eq!(rc, 0, "{err}");
    // Export corvid's copy into a fresh maildir and let doveadm read it.
    let copy = lab.root.join("C/copy");
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &store,
        "backup",
        &format!("maildir:{}", copy.display()),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        lab.fetch(Some(&copy)),
        lab.fetch(None),
        "corvid copy vs Dovecot"
    );
    assert_eq!(lab.fetch(None).len(), 3);

    // Two-way: new mail on Dovecot, a stateful run prints a state.
    lab.put(
        &b,
        "",
        "1700000004.M4P4.vm",
        "",
        &msg("m3", "new on dovecot\n"),
    );
    let (rc, state, err) = lab.corvid(&[
        "dsync", "-u", "corvid", "-o", &store, "-s", "", "mirror", server,
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(!state.trim().is_empty(), "a state string is printed");
    // Incremental from that state after one more delivery.
    lab.put(&b, ".Work", "1700000005.M5P5.vm", "", &msg("w2", "later\n"));
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &store,
        "-s",
        state.trim(),
        "mirror",
        server,
    ]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &store,
        "backup",
        &format!("maildir:{}", copy.display()),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        lab.fetch(Some(&copy)),
        lab.fetch(None),
        "after incremental runs"
    );
    assert_eq!(lab.fetch(None).len(), 5);
}

#[test]
fn doveadm_sync_against_corvid_dsync_server() {
    let Some(doveadm) = doveadm_or_skip() else {
        return;
    };
    let lab = Lab::new(doveadm, "slave");
    let b = lab.home().join("Maildir");
    lab.put(&b, "", "1700000001.M1P1.vm", "S", &msg("m1", "hello\n"));
    lab.put(
        &b,
        ".Archive.2024",
        "1700000002.M2P2.vm",
        "",
        &msg("a1", "old\n"),
    );
    let store_dir = lab.root.join("C/store");
    // doveadm appends `dsync-server` itself; ours ignores that word.
    let remote = lab.script(
        "corvid-server.sh",
        &format!(
            "exec '{CORVID}' dsync-server -u corvid -o mail_location=corvid:{} \"$@\"",
            store_dir.display()
        ),
    );
    let sync = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.push(remote.to_str().unwrap());
        let out = lab.doveadm_cmd(None, &all).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (rc, err) = sync(&["sync", "-f"]);
    assert_eq!(rc, 0, "doveadm sync against corvid: {err}");
    // New mail on both sides, then Dovecot's own default sync.
    lab.put(
        &b,
        "",
        "1700000003.M3P3.vm",
        "",
        &msg("m2", "dovecot side\n"),
    );
    let (rc, err) = sync(&["sync"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, err) = sync(&["sync", "-f"]);
    assert_eq!(rc, 0, "{err}");
    // What corvid holds, read back through a maildir copy by doveadm.
    let copy = lab.root.join("C/copy");
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &format!("mail_location=corvid:{}", store_dir.display()),
        "backup",
        &format!("maildir:{}", copy.display()),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        lab.fetch(Some(&copy)),
        lab.fetch(None),
        "corvid slave vs Dovecot"
    );
    assert_eq!(lab.fetch(None).len(), 3);
}

#[test]
fn corvid_converts_maildir_to_embedded_and_back() {
    let Some(doveadm) = doveadm_or_skip() else {
        return;
    };
    let lab = Lab::new(doveadm, "convert");
    let src = lab.root.join("C/src");
    lab.put(&src, "", "1700000001.M1P1.vm", "S", &msg("m1", "one\n"));
    lab.put(&src, "", "1700000002.M2P2.vm", "RF", &msg("m2", "two\n"));
    lab.put(
        &src,
        ".Lists.rust",
        "1700000003.M3P3.vm",
        "",
        &msg("l1", "list\n"),
    );
    let emb = format!("corvid:{}", lab.root.join("C/emb").display());
    let out = lab.root.join("C/out");
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &format!("mail_location=maildir:{}", src.display()),
        "backup",
        &emb,
    ]);
    assert_eq!(rc, 0, "maildir -> embedded: {err}");
    let (rc, _, err) = lab.corvid(&[
        "dsync",
        "-u",
        "corvid",
        "-o",
        &format!("mail_location={emb}"),
        "backup",
        &format!("maildir:{}", out.display()),
    ]);
    assert_eq!(rc, 0, "embedded -> maildir: {err}");
    let a = lab.fetch(Some(&src));
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(lab.fetch(Some(&out)), a);
}
