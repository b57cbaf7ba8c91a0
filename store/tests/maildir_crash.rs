//! Crash safety of store::maildir: a writer child process (this test
//! binary, re-run as `crash_child`) is aborted at every durability step in
//! turn (`Options::fault_abort_at`), on one maildir that accumulates the
//! survivors. After every crash the parent reopens the maildir and checks:
//! no uidlist line names a missing file (except the one expunge that was in
//! flight), everything acknowledged is there with its UID, bytes and
//! flags, acknowledged expunges stay gone, UIDs never go backwards.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use engine::model::{Flags, Guid, Keyword, SystemFlags};
use store::maildir::{Append, Maildir, Name, Options};

const CHILD_DIR: &str = "CORVID_MAILDIR_CRASH_DIR";
const CHILD_AT: &str = "CORVID_MAILDIR_CRASH_AT";
const CHILD_ROUND: &str = "CORVID_MAILDIR_CRASH_ROUND";

fn body(round: u64, i: u64) -> Vec<u8> {
    format!("Subject: round {round} message {i}\n\nbody {round}/{i}\n").into_bytes()
}

/// The writer. Prints `ACK …` only after a call returned Ok, i.e. what a
/// server would have told its client.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(at), Ok(round)) = (
        std::env::var(CHILD_DIR),
        std::env::var(CHILD_AT),
        std::env::var(CHILD_ROUND),
    ) else {
        return; // Not a child run.
    };
    let round: u64 = round.parse().unwrap();
    let opts = Options {
        fault_abort_at: Some(at.parse().unwrap()),
        ..Options::default()
    };
    let md = Maildir::open(&dir, opts).unwrap();
    let inbox = Name::inbox();
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        // A leading newline: libtest may have printed "test crash_child ... "
        // without one.
        writeln!(o, "\n{s}").unwrap();
        o.flush().unwrap();
    };
    let mut uids = Vec::new();
    for i in 0..3 {
        let b = body(round, i);
        let how = Append {
            flags: if i == 1 {
                SystemFlags::SEEN
            } else {
                SystemFlags::empty()
            },
            keywords: if i == 2 {
                vec![Keyword::new(format!("kw{}", round % 3)).unwrap()]
            } else {
                vec![]
            },
            ..Append::default()
        };
        let m = md.append(&inbox, &mut &b[..], &how).unwrap();
        say(format!(
            "ACK append {} {} {}",
            m.uid,
            Guid::of(&b).to_hex(),
            m.flags.bits()
        ));
        uids.push(m.uid);
    }
    say(format!(
        "FLAGGING {} {}",
        uids[0],
        (SystemFlags::FLAGGED | SystemFlags::ANSWERED).bits()
    ));
    md.set_flags(
        &inbox,
        uids[0],
        &Flags::with(SystemFlags::FLAGGED | SystemFlags::ANSWERED, []),
    )
    .unwrap();
    say(format!(
        "ACK flags {} {}",
        uids[0],
        (SystemFlags::FLAGGED | SystemFlags::ANSWERED).bits()
    ));
    say(format!("EXPUNGING {}", uids[1]));
    md.expunge(&inbox, &[uids[1]]).unwrap();
    say(format!("ACK expunge {}", uids[1]));
    say("DONE".to_string());
}

#[derive(Debug, Default)]
struct Ledger {
    /// uid → (sha1 of bytes, flag bits)
    live: BTreeMap<u32, (String, u8)>,
    expunged: Vec<u32>,
    max_uid: u32,
}

#[test]
fn crash_at_every_step_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    Maildir::open(&dir, Options::default()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut ledger = Ledger::default();
    let mut crashes = 0;
    let mut finished = false;
    // Fault points are counted per child run; stop at the first run that
    // gets through without reaching its fault point.
    for at in 0..200u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(CHILD_AT, at.to_string())
            .env(CHILD_ROUND, at.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut in_flight_expunge = None;
        let mut in_flight_flags = None;
        let mut done = false;
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["ACK", "append", uid, guid, bits] => {
                    let uid: u32 = uid.parse().unwrap();
                    assert!(uid > ledger.max_uid, "UID {uid} reused");
                    ledger.max_uid = uid;
                    ledger
                        .live
                        .insert(uid, (guid.to_string(), bits.parse().unwrap()));
                }
                ["ACK", "flags", uid, bits] => {
                    ledger.live.get_mut(&uid.parse().unwrap()).unwrap().1 = bits.parse().unwrap();
                    in_flight_flags = None;
                }
                ["FLAGGING", uid, bits] => {
                    in_flight_flags = Some((uid.parse().unwrap(), bits.parse().unwrap()))
                }
                ["EXPUNGING", uid] => in_flight_expunge = Some(uid.parse::<u32>().unwrap()),
                ["ACK", "expunge", uid] => {
                    let uid = uid.parse().unwrap();
                    ledger.live.remove(&uid);
                    ledger.expunged.push(uid);
                    in_flight_expunge = None;
                }
                ["DONE"] => done = true,
                _ => {}
            }
        }
        let status = child.wait().unwrap();
        if done {
            assert!(status.success());
            finished = true;
        } else {
            assert!(!status.success(), "child stopped early without crashing");
            crashes += 1;
        }
        check(&dir, &mut ledger, in_flight_expunge, in_flight_flags);
        if finished {
            break;
        }
    }
    assert!(finished, "never got through a whole run");
    assert!(crashes >= 15, "only {crashes} crash points exercised");
    eprintln!(
        "{crashes} crashes, {} messages acknowledged and present",
        ledger.live.len()
    );
}

/// `in_flight_*`: the operation the child had started but not acknowledged
/// when it crashed; it may or may not have happened. Whichever it is now
/// is durable, so the ledger adopts it.
fn check(
    dir: &std::path::Path,
    ledger: &mut Ledger,
    in_flight_expunge: Option<u32>,
    in_flight_flags: Option<(u32, u8)>,
) {
    // Every uidlist line names a file (read the raw files, not the API).
    let text = std::fs::read_to_string(dir.join("dovecot-uidlist")).unwrap_or_default();
    let mut names = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            names.push(n.split(':').next().unwrap().to_string());
        }
    }
    for line in text.lines().skip(1) {
        let (uid, base) = line.split_once(" :").unwrap();
        let uid: u32 = uid.split(' ').next().unwrap().parse().unwrap();
        assert!(
            names.contains(&base.to_string()) || Some(uid) == in_flight_expunge,
            "uidlist names missing file for UID {uid}: {line}"
        );
    }
    let md = Maildir::open(dir, Options::default()).unwrap();
    let inbox = Name::inbox();
    let msgs = md.messages(&inbox).unwrap();
    // After corvid's own pass (which rolls an interrupted expunge forward)
    // no line at all names a missing file.
    let text = std::fs::read_to_string(dir.join("dovecot-uidlist")).unwrap();
    let mut names = Vec::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            names.push(n.split(':').next().unwrap().to_string());
        }
    }
    for line in text.lines().skip(1) {
        let base = line.split_once(" :").unwrap().1;
        assert!(names.contains(&base.to_string()), "after recovery: {line}");
    }
    let by_uid: BTreeMap<u32, _> = msgs.iter().map(|m| (m.uid, m)).collect();
    for (uid, (sha, bits)) in &ledger.live {
        let Some(m) = by_uid.get(uid) else {
            assert_eq!(Some(*uid), in_flight_expunge, "acknowledged UID {uid} lost");
            continue;
        };
        let bytes = md.read(&inbox, *uid, 0, 1 << 20).unwrap();
        assert_eq!(&Guid::of(&bytes).to_hex(), sha, "UID {uid} bytes");
        assert!(
            m.flags.bits() == *bits || in_flight_flags == Some((*uid, m.flags.bits())),
            "UID {uid} flags {} not {bits}",
            m.flags.bits()
        );
    }
    if let Some((uid, bits)) = in_flight_flags {
        if by_uid.get(&uid).is_some_and(|m| m.flags.bits() == bits) {
            ledger.live.get_mut(&uid).unwrap().1 = bits;
        }
    }
    if let Some(uid) = in_flight_expunge {
        if !by_uid.contains_key(&uid) {
            ledger.live.remove(&uid);
            ledger.expunged.push(uid);
        }
    }
    for uid in &ledger.expunged {
        assert!(!by_uid.contains_key(uid), "expunged UID {uid} came back");
    }
    assert!(md.status(&inbox).unwrap().uidnext > ledger.max_uid);
    // Nothing half-written is visible as a message: every message reads
    // whole (its size field matches its bytes).
    for m in &msgs {
        let bytes = md.read(&inbox, m.uid, 0, 1 << 20).unwrap();
        assert_eq!(bytes.len() as u64, m.size, "UID {} size", m.uid);
    }
}
