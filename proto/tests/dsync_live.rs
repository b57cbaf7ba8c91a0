//! The proof against the real thing: run Dovecot's own `doveadm sync`
//! between two tiny Maildirs, with the remote side (`doveadm dsync-server`)
//! behind a tap of our own that copies both directions to files, then
//! decode every captured byte, check each message body against the file it
//! came from, and re-encode both directions to the identical bytes.
//!
//! Skips (with a message) when `doveadm` is not installed. Runs doveadm
//! without any Dovecot daemon, as the lab does: a private config, no auth,
//! `HOME` per side. As root the mail processes run as uid/gid 5000 (Dovecot
//! refuses uid 0); otherwise as the invoking user.
//!
//! Set `CORVID_DSYNC_SAVE_CAPTURE=1` to copy the captures into
//! `corpus/traces/dsync/live-sync/`.

mod dsync_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dsync_common::*;
use proto::dsync::{AttributeType, Event, Item, MailboxAttribute};

fn find_doveadm() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("doveadm"))
        .find(|p| p.is_file())
}

fn current_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).output().expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

struct Lab {
    root: PathBuf,
    doveadm: PathBuf,
    conf: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Lab {
    fn new(doveadm: PathBuf) -> Self {
        let root = std::env::temp_dir().join(format!("corvid-dsync-live-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("state")).unwrap();
        let (uid, gid) = current_ids();
        // Dovecot refuses to access mail as root; as root we hand the mail
        // directories to an unprivileged uid, as the lab config does.
        let (mail_uid, mail_gid, owner) = if uid == 0 {
            (5000, 5000, Some((5000, 5000)))
        } else {
            (uid, gid, None)
        };
        let first_valid = mail_uid.min(1000);
        let conf = root.join("dovecot.conf");
        fs::write(
            &conf,
            format!(
                "base_dir = {root}/run\nstate_dir = {root}/state\nlog_path = /dev/stderr\n\
                 info_log_path = /dev/stderr\ndebug_log_path = /dev/stderr\nssl = no\nprotocols =\n\
                 mail_location = maildir:~/Maildir\n\
                 namespace inbox {{\n  inbox = yes\n  separator = /\n  prefix =\n}}\n\
                 mail_privileged_group =\nmail_uid = {mail_uid}\nmail_gid = {mail_gid}\n\
                 first_valid_uid = {first_valid}\nfirst_valid_gid = {first_valid_gid}\n\
                 mail_attribute_dict = file:%h/dovecot-attributes\n\
                 protocol imap {{\n  imap_metadata = yes\n}}\n",
                root = root.display(),
                first_valid_gid = mail_gid.min(1000),
            ),
        )
        .unwrap();
        Lab {
            root,
            doveadm,
            conf,
            owner,
        }
    }

    fn side(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn chown_tree(&self, p: &Path) {
        if let Some((u, g)) = self.owner {
            std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
            if p.is_dir() {
                for e in fs::read_dir(p).unwrap() {
                    self.chown_tree(&e.unwrap().path());
                }
            }
        }
    }

    /// Write one message file into `side`'s maildir folder (`""` = INBOX,
    /// `".Archive.2024"` = Archive/2024); returns its mail GUID.
    fn put(&self, side: &str, folder: &str, base: &str, info: &str, body: &[u8]) -> String {
        let dir = self.side(side).join("Maildir").join(folder);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        if !folder.is_empty() {
            fs::write(dir.join("maildirfolder"), b"").unwrap();
        }
        fs::write(dir.join("cur").join(format!("{base}:2,{info}")), body).unwrap();
        base.to_string()
    }

    /// A remote command that tees the pipe to `capdir` around the real
    /// `doveadm dsync-server` (doveadm appends `dsync-server` itself).
    fn tap_script(&self, server_side: &str, capdir: &Path) -> PathBuf {
        fs::create_dir_all(capdir).unwrap();
        let script = self.root.join(format!(
            "tap-{}.sh",
            capdir.file_name().unwrap().to_string_lossy()
        ));
        fs::write(
            &script,
            format!(
                "#!/bin/sh\ntee '{m2s}' | env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME='{home}' USER=corvid \
                 '{doveadm}' -c '{conf}' \"$@\" | tee '{s2m}'\n",
                m2s = capdir.join("m2s.raw").display(),
                s2m = capdir.join("s2m.raw").display(),
                home = self.side(server_side).display(),
                doveadm = self.doveadm.display(),
                conf = self.conf.display(),
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// A plain `doveadm <args>` on `side`.
    fn doveadm(&self, side: &str, args: &[&str]) {
        self.chown_tree(&self.side(side));
        let out = Command::new("env")
            .arg("-i")
            .arg("PATH=/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", self.side(side).display()))
            .arg("USER=corvid")
            .arg(&self.doveadm)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run doveadm");
        assert!(
            out.status.success(),
            "doveadm {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `doveadm <args> <tap>` on `side` as master, against `server_side`.
    fn dsync(&self, side: &str, args: &[&str], server_side: &str, capdir: &Path) {
        self.chown_tree(&self.side(side));
        self.chown_tree(&self.side(server_side));
        let tap = self.tap_script(server_side, capdir);
        let out = Command::new("env")
            .arg("-i")
            .arg("PATH=/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", self.side(side).display()))
            .arg("USER=corvid")
            .arg(&self.doveadm)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .arg(&tap)
            .output()
            .expect("run doveadm");
        assert!(
            out.status.success(),
            "doveadm {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

const ATTR_VALUE: &str = "tab\there\nnew line\r\n.\n\u{1}one\u{2}two";

/// Bodies that exercise the dot-stuffing: dot lines, a lone `.`, a CRLF
/// terminator inside the text, a trailing CR, no final newline.
fn messages() -> Vec<(&'static str, &'static str, &'static str, Vec<u8>)> {
    let hdr = |id: &str, subject: &str| {
        format!(
            "From: Alice <alice@example.com>\nTo: Bob <bob@example.com>\nSubject: {subject}\n\
             Message-ID: <{id}@corvid>\nDate: Mon, 01 Jan 2024 12:00:00 +0000\n\n"
        )
        .into_bytes()
    };
    let with = |id: &str, subject: &str, body: &[u8]| [hdr(id, subject), body.to_vec()].concat();
    vec![
        (
            "",
            "1700000001.M1P1.corvid",
            "S",
            with("m1", "plain", b"hello\n"),
        ),
        (
            "",
            "1700000002.M2P2.corvid",
            "FS",
            with("m2", "dots", b"line\n.\n..two\n.leading\nend .\n."),
        ),
        (
            "",
            "1700000003.M3P3.corvid",
            "",
            with("m3", "crlf", b"a\r\n.\r\nb\r\n..\r\n\r\nlast\r"),
        ),
        (
            "",
            "1700000004.M4P4.corvid",
            "RS",
            with("m4", "big", &b".x\n".repeat(20_000)),
        ),
        (
            ".Archive.2024",
            "1700000005.M5P5.corvid",
            "",
            with("a1", "archived", b"no newline at end"),
        ),
    ]
}

fn check_capture(capdir: &Path, sources: &[(String, Vec<u8>)]) -> usize {
    let mut bodies_checked = 0;
    for file in ["m2s.raw", "s2m.raw"] {
        let raw = fs::read(capdir.join(file)).unwrap();
        assert!(!raw.is_empty(), "{file} captured nothing");
        let events = decode_all(&raw);
        assert!(matches!(events[0], Event::Version { major: 3, minor: 5 }));
        // byte-identical re-encoding of everything Dovecot wrote
        assert!(
            encode_all(&events) == raw,
            "{}/{file}: re-encoding differs",
            capdir.display()
        );
        // every body equals the maildir file it was read from
        let merged = merge_bodies(events);
        for (i, ev) in merged.iter().enumerate() {
            if let Event::Item(Item::Mail(m)) = ev {
                assert!(m.stream, "Dovecot sends mails with bodies");
                let guid = String::from_utf8_lossy(m.guid.as_deref().unwrap()).into_owned();
                let body = match &merged[i + 1] {
                    Event::BodyChunk(b) => b.to_vec(),
                    Event::BodyEnd => Vec::new(),
                    other => panic!("after M: {other:?}"),
                };
                let (_, want) = sources
                    .iter()
                    .find(|(g, _)| *g == guid)
                    .unwrap_or_else(|| panic!("body for unknown GUID {guid}"));
                assert!(
                    body == *want,
                    "body of {guid} differs ({} vs {} bytes)",
                    body.len(),
                    want.len()
                );
                bodies_checked += 1;
            }
        }
    }
    bodies_checked
}

#[test]
fn real_doveadm_sync_through_our_tap() {
    let Some(doveadm) = find_doveadm() else {
        eprintln!("SKIPPED dsync_live: doveadm (Dovecot 2.3) is not installed; install dovecot-core to run it");
        return;
    };
    let lab = Lab::new(doveadm);
    let mut sources = Vec::new();
    for (folder, base, info, body) in messages() {
        let guid = lab.put("A", folder, base, info, &body);
        sources.push((guid, body));
    }
    fs::create_dir_all(lab.side("B")).unwrap();
    // Mailbox attributes (METADATA) travel as A records; values with TAB,
    // LF and \x01 exercise the escaping.
    lab.doveadm(
        "A",
        &[
            "mailbox",
            "metadata",
            "set",
            "INBOX",
            "/private/comment",
            "hello world",
        ],
    );
    lab.doveadm(
        "A",
        &[
            "mailbox",
            "metadata",
            "set",
            "INBOX",
            "/shared/vendor/corvid",
            ATTR_VALUE,
        ],
    );

    // 1: initial two-way sync A -> empty B: trees, changes, requests, bodies.
    let cap1 = lab.root.join("cap1");
    lab.dsync("A", &["sync"], "B", &cap1);
    let n1 = check_capture(&cap1, &sources);
    assert_eq!(
        n1,
        sources.len(),
        "every message crossed once with its body"
    );

    // 2: B gets a new message and a flag change, then a full sync pulls it
    // back to A (bodies now flow slave -> master).
    let body =
        b"From: b@example.com\nSubject: from B\nMessage-ID: <b1@corvid>\n\n.\n..\n.x\n".to_vec();
    let guid = lab.put("B", "", "1700000009.M9P9.corvid", "", &body);
    sources.push((guid, body));
    let cap2 = lab.root.join("cap2");
    lab.dsync("A", &["sync", "-f"], "B", &cap2);
    let n2 = check_capture(&cap2, &sources);
    assert!(n2 >= 1, "the new message on B crossed to A");

    if std::env::var_os("CORVID_DSYNC_SAVE_CAPTURE").is_some() {
        let dst = corpus_dir().join("live-sync");
        for cap in ["cap1", "cap2"] {
            fs::create_dir_all(dst.join(cap)).unwrap();
            for f in ["m2s.raw", "s2m.raw"] {
                fs::copy(lab.root.join(cap).join(f), dst.join(cap).join(f)).unwrap();
            }
        }
    }
}
