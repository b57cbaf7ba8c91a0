//! The proof against the real thing: run Dovecot's own `doveadm sync`
//! between two tiny Maildirs, with the remote side (`doveadm dsync-server`)
//! behind a tap of our own that copies both directions to files, then
//! decode every captured byte, check each message body against the file it
//! came from, and re-encode both directions to the identical bytes.
//! A second test turns it around: our encoder, as the master, writes a
//! stream from typed items to a real `doveadm dsync-server`, which must
//! accept it and store the message exactly.
//!
//! Skips (with a message) when `doveadm` is not installed, except under
//! `CI=true`, where that fails. Runs doveadm
//! without any Dovecot daemon, as the lab does: a private config, no auth,
//! `HOME` per side. As root the mail processes run as uid/gid 5000 (Dovecot
//! refuses uid 0); otherwise as the invoking user.
//!
//! Set `CORVID_DSYNC_SAVE_CAPTURE=1` to copy the captures into
//! `corpus/traces/dsync/live-sync/`.

mod dsync_common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::{Bytes, BytesMut};
use dsync_common::*;
use proto::dsync::*;

fn find_doveadm() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("doveadm"))
        .find(|p| p.is_file())
}

/// doveadm, or `None` after printing why the test is skipped. Under
/// `CI=true` a missing doveadm fails instead (CI installs dovecot-core).
fn doveadm_or_skip() -> Option<PathBuf> {
    let found = find_doveadm();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but doveadm (dovecot-core 2.3) is not installed"
        );
        eprintln!("SKIP dsync_live: doveadm (Dovecot 2.3) is not installed; install dovecot-core to run it");
    }
    found
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
    fn new(doveadm: PathBuf, test: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("corvid-dsync-live-{}-{test}", std::process::id()));
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
    let Some(doveadm) = doveadm_or_skip() else {
        return;
    };
    let lab = Lab::new(doveadm, "tap");
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

/// Our encoder as the master: a stream built from typed items (never
/// copied from a capture) pushes one mailbox with one message into an
/// empty replica served by the real `doveadm dsync-server`, open loop.
/// Dovecot must accept every byte, request the body, store it with our
/// GUIDs and flags, and finish cleanly; its answer must decode fully.
#[test]
fn real_dsync_server_accepts_our_stream() {
    let Some(doveadm) = doveadm_or_skip() else {
        return;
    };
    let lab = Lab::new(doveadm, "master");
    fs::create_dir_all(lab.side("B")).unwrap();
    lab.chown_tree(&lab.side("B"));

    let mailbox_guid = Guid128::parse(b"0123456789abcdef0123456789abcdef").unwrap();
    let uid_validity = 1_700_000_000;
    let mail_guid = Bytes::from_static(b"1700000100.M1P1.corvid");
    let body: &[u8] =
        b"From: corvid@example.com\nSubject: from our encoder\nMessage-ID: <enc@corvid>\n\n\
.\n..\n.leading dot\nlast line without newline";

    let mut out = BytesMut::new();
    let mut enc = Encoder::new(EncodeOptions::default());
    enc.encode_preamble(&mut out).unwrap();
    let mut put = |ev: Event, out: &mut BytesMut| enc.encode(&ev, out).unwrap();
    put(
        Event::Item(Item::Handshake(Handshake {
            hostname: Bytes::from_static(b"corvid"),
            sync_type: Some(SyncType::Full),
            send_mail_requests: true,
            import_commit_msgs_interval: 100,
            hashed_headers: vec![
                Bytes::from_static(b"Date"),
                Bytes::from_static(b"Message-ID"),
            ],
            alt_char: Some(b'_'),
            ..Handshake::default()
        })),
        &mut out,
    );
    put(
        Event::Item(Item::MailboxTreeNode(MailboxTreeNode {
            name: vec![Bytes::from_static(b"INBOX")],
            existence: Existence::Exists,
            mailbox_guid: Some(mailbox_guid),
            uid_validity,
            uid_next: 2,
            last_renamed_or_created: 0,
            subscribed: true,
            last_subscription_change: 1_700_000_000,
            extra: vec![],
        })),
        &mut out,
    );
    put(Event::EndOfList, &mut out);
    put(
        Event::Item(Item::MailboxDelete(MailboxDelete {
            hierarchy_sep: b'/',
            escape_char: Some(b'%'),
            mailboxes: vec![],
            dirs: vec![],
            unsubscribes: vec![],
            extra: vec![],
        })),
        &mut out,
    );
    put(
        Event::Item(Item::Mailbox(Mailbox {
            mailbox_guid,
            uid_validity,
            uid_next: 2,
            messages_count: 1,
            first_recent_uid: 1,
            highest_modseq: 2,
            have_guids: true,
            have_save_guids: true,
            ..Mailbox::default()
        })),
        &mut out,
    );
    put(Event::EndOfList, &mut out); // attributes
    put(
        Event::Item(Item::MailChange(MailChange {
            change_type: ChangeType::Save,
            uid: 1,
            guid: Some(mail_guid.clone()),
            hdr_hash: None,
            modseq: 2,
            pvt_modseq: 0,
            add_flags: 0,
            remove_flags: 0,
            final_flags: flags::SEEN | flags::FLAGGED,
            keywords_reset: false,
            keyword_changes: vec![],
            received_timestamp: 0,
            virtual_size: u64::MAX,
            extra: vec![],
        })),
        &mut out,
    );
    put(Event::EndOfList, &mut out); // changes
    put(Event::EndOfList, &mut out); // our requests: none
    put(
        Event::Item(Item::Mail(Mail {
            guid: Some(mail_guid.clone()),
            pop3_uidl: Some(Bytes::new()),
            received_date: 1_700_000_100,
            saved_date: 1_700_000_100,
            stream: true,
            ..Mail::default()
        })),
        &mut out,
    );
    put(Event::BodyChunk(Bytes::from_static(body)), &mut out);
    put(Event::BodyEnd, &mut out);
    put(Event::EndOfList, &mut out); // mails
    put(
        Event::Item(Item::MailboxState(MailboxState {
            mailbox_guid,
            last_uidvalidity: uid_validity,
            last_common_uid: 1,
            last_common_modseq: 2,
            last_common_pvt_modseq: 0,
            last_messages_count: 1,
            changes_during_sync: false,
            extra: vec![],
        })),
        &mut out,
    );
    put(Event::EndOfList, &mut out); // mailboxes

    let mut child = Command::new("env")
        .arg("-i")
        .arg("PATH=/usr/bin:/bin:/usr/sbin:/sbin")
        .arg(format!("HOME={}", lab.side("B").display()))
        .arg("USER=corvid")
        .arg(&lab.doveadm)
        .arg("-c")
        .arg(&lab.conf)
        .arg("dsync-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn doveadm dsync-server");
    let mut stdin = child.stdin.take().unwrap();
    let to_send = out.to_vec();
    // write on a thread so a full stdout pipe cannot deadlock us
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&to_send);
    });
    let mut answer = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut answer)
        .unwrap();
    writer.join().unwrap();
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "dsync-server failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let events = merge_bodies(decode_all(&answer));
    let items: Vec<&Item> = events
        .iter()
        .filter_map(|e| match e {
            Event::Item(i) => Some(i),
            _ => None,
        })
        .collect();
    assert!(
        items.iter().any(|i| matches!(i, Item::MailRequest(r) if r.guid.as_ref() == Some(&mail_guid) && r.uid == 1)),
        "the server asked for our body: {items:?}"
    );
    let finish = items.iter().find_map(|i| match i {
        Item::Finish(f) => Some(f),
        _ => None,
    });
    assert_eq!(finish, Some(&Finish::default()), "clean finish");
    assert_eq!(events.last(), Some(&Event::Done));

    // Dovecot stored the message under our GUID with our flags and body.
    let cur = lab.side("B").join("Maildir/cur");
    let stored: Vec<PathBuf> = fs::read_dir(&cur)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let name = stored[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.ends_with(":2,FS"), "{name}");
    assert!(fs::read(&stored[0]).unwrap() == body, "stored body differs");
    let uidlist = fs::read_to_string(lab.side("B").join("Maildir/dovecot-uidlist")).unwrap();
    // header: our UIDVALIDITY and mailbox GUID; record: UID 1 with our GUID
    let header = uidlist.lines().next().unwrap();
    assert!(header.contains(&format!(" V{uid_validity} ")), "{uidlist}");
    assert!(header.ends_with(&format!(" G{mailbox_guid}")), "{uidlist}");
    assert!(
        uidlist
            .lines()
            .any(|l| l.starts_with("1 G1700000100.M1P1.corvid :")),
        "{uidlist}"
    );
}
