//! SYNC_CRC / SYNC_CRC_ANNOT computed by `engine::model::crc` against the
//! values real Cyrus 3.6.1 put on the wire (transcripts captured in the lab,
//! copied to `tests/crc_corpus/`).
//!
//! For each transcript the test replays every csync command and reply in
//! order and keeps, per mailbox UNIQUEID, the replica's record set when it
//! is *known*:
//! * a `GET FULLMAILBOX` reply carries every record: the CRCs computed from
//!   them must equal the CRCs on the same line;
//! * a mailbox reported with LAST_UID 0 has no records (CRCs must be the
//!   empty pair);
//! * an `APPLY MAILBOX` over a known set (or for a mailbox the previous GET
//!   showed absent) answered `OK` leaves the replica with the merged set,
//!   and sync_server answers OK only after checking its CRCs equal the
//!   master's on the APPLY line: the computed pair must equal that pair;
//! * a later `GET USER`/`GET MAILBOXES` line for a mailbox with a known set
//!   must carry the computed pair;
//! * an `APPLY MAILBOX` over a known set that carries SINCE_CRC /
//!   SINCE_CRC_ANNOT (sync cache) must name that set's pair;
//! * `APPLY EXPUNGE` answered OK expunges in the known set.
//!
//! Anything else (a NO, a sync-cache delta over unknown state) makes the
//! set unknown. The test fails on any mismatch and also requires a minimum
//! number of checks, so it cannot pass by checking nothing.
//!
//! The dlist parser here is a small test-side one (proto's was not
//! committed when this was written); lines with literals are skipped.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use engine::model::crc::{VIRTUAL_CREATEDMODSEQ, VIRTUAL_SAVEDATE, VIRTUAL_THRID};
use engine::model::{
    AnnotationEntry, AnnotationOwner, AnnotationValue, Flags, Guid, Keyword, ModSeq, Record,
    SyncCrcs, SystemFlags, Uid, UnixTime,
};

#[derive(Debug, Clone)]
enum V {
    Nil,
    Atom(Vec<u8>),
    List(Vec<V>),
    Kv(Vec<(Vec<u8>, V)>),
}

impl V {
    fn atom(&self) -> &[u8] {
        match self {
            V::Atom(a) => a,
            V::Nil => b"",
            _ => panic!("not an atom: {self:?}"),
        }
    }
    fn num(&self) -> u64 {
        std::str::from_utf8(self.atom()).unwrap().parse().unwrap()
    }
    fn list(&self) -> &[V] {
        match self {
            V::List(l) => l,
            _ => panic!("not a list: {self:?}"),
        }
    }
    fn get(&self, key: &str) -> Option<&V> {
        match self {
            V::Kv(kv) => kv.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => panic!("not a kvlist: {self:?}"),
        }
    }
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i] == b' ' {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn word(&mut self) -> Vec<u8> {
        let st = self.i;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'(' || c == b')' || c == b'"' {
                break;
            }
            self.i += 1;
        }
        self.s[st..self.i].to_vec()
    }
    fn value(&mut self) -> Option<V> {
        self.ws();
        match self.peek()? {
            b'(' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    self.ws();
                    if self.peek()? == b')' {
                        self.i += 1;
                        return Some(V::List(out));
                    }
                    out.push(self.value()?);
                }
            }
            b'%' => {
                if self.s.get(self.i + 1) != Some(&b'(') {
                    return None; // file literal
                }
                self.i += 2;
                let mut out = Vec::new();
                loop {
                    self.ws();
                    if self.peek()? == b')' {
                        self.i += 1;
                        return Some(V::Kv(out));
                    }
                    let k = self.word();
                    let v = self.value()?;
                    out.push((k, v));
                }
            }
            b'"' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    let c = self.peek()?;
                    self.i += 1;
                    match c {
                        b'"' => return Some(V::Atom(out)),
                        b'\\' => {
                            out.push(self.peek()?);
                            self.i += 1;
                        }
                        _ => out.push(c),
                    }
                }
            }
            b'{' => None, // literal: not reproduced in transcripts
            _ => {
                let w = self.word();
                if w == b"NIL" {
                    Some(V::Nil)
                } else {
                    Some(V::Atom(w))
                }
            }
        }
    }
}

fn parse_value(s: &[u8]) -> Option<V> {
    let mut p = P { s, i: 0 };
    let v = p.value()?;
    p.ws();
    (p.i == s.len()).then_some(v)
}

/// A wire RECORD kvlist as a model record (virtual annotations to fields).
fn record_of(v: &V) -> Record {
    let guid = Guid::parse(v.get("GUID").unwrap().atom()).unwrap();
    let mut r = Record::new(
        Uid::new(v.get("UID").unwrap().num() as u32).unwrap(),
        ModSeq(v.get("MODSEQ").unwrap().num()),
        guid,
        v.get("SIZE").unwrap().num(),
        UnixTime(v.get("INTERNALDATE").unwrap().num() as i64),
    );
    r.last_updated = UnixTime(v.get("LAST_UPDATED").unwrap().num() as i64);
    let mut flags = Flags::new();
    for f in v.get("FLAGS").unwrap().list() {
        let f = f.atom();
        if f.eq_ignore_ascii_case(b"\\Expunged") {
            r.expunged = true;
        } else if let Some(sf) = SystemFlags::from_name(f) {
            flags.system.insert(sf);
        } else {
            flags.insert_keyword(Keyword::new(f).unwrap());
        }
    }
    r.flags = flags;
    if let Some(anns) = v.get("ANNOTATIONS") {
        for a in anns.list() {
            let entry = a.get("ENTRY").unwrap().atom();
            let value = a.get("VALUE").unwrap().atom().to_vec();
            let text = String::from_utf8(value.clone()).unwrap_or_default();
            if entry == VIRTUAL_THRID.as_bytes() {
                r.thrid = u64::from_str_radix(&text, 16).unwrap();
            } else if entry == VIRTUAL_SAVEDATE.as_bytes() {
                r.savedate = UnixTime(text.parse().unwrap());
            } else if entry == VIRTUAL_CREATEDMODSEQ.as_bytes() {
                r.createdmodseq = ModSeq(text.parse().unwrap());
            } else {
                r.annotations.set(
                    AnnotationEntry::new(entry).unwrap(),
                    AnnotationOwner::from_bytes(a.get("USERID").unwrap().atom()).unwrap(),
                    AnnotationValue {
                        modseq: ModSeq(a.get("MODSEQ").map_or(0, V::num)),
                        value: Bytes::from(value),
                    },
                );
            }
        }
    }
    r
}

fn crcs_of_line(v: &V) -> Option<SyncCrcs> {
    Some(SyncCrcs {
        basic: v.get("SYNC_CRC")?.num() as u32,
        annot: v.get("SYNC_CRC_ANNOT")?.num() as u32,
    })
}

type Records = BTreeMap<u32, Record>;

#[derive(Default)]
struct Tally {
    full_mailbox: usize,
    empty: usize,
    after_apply: usize,
    reported: usize,
    since: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, what: &str, file: &str, line: usize, got: SyncCrcs, want: SyncCrcs) {
        if got != want {
            self.failures.push(format!(
                "{file}:{line}: {what}: computed {got:?}, wire says {want:?}"
            ));
        }
    }
}

enum Cmd {
    GetMailboxes(Vec<Vec<u8>>),
    GetUser(Vec<u8>),
    ApplyMailbox(V, usize),
    Expunge(Vec<u8>, Vec<u32>),
    Unmailbox(Vec<u8>),
    Rename(Vec<u8>),
    Other,
}

fn replay(file: &str, text: &str, t: &mut Tally) {
    let mut known: BTreeMap<Vec<u8>, Records> = BTreeMap::new();
    let mut pending: Option<Cmd> = None;
    let mut users_listed: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut replies: Vec<V> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        if let Some(rest) = raw.strip_prefix("C: ") {
            replies.clear();
            // Optional IMAP tag (SYNCAPPLY / SYNCGET flavour).
            let mut words = rest.splitn(3, ' ');
            let mut w1 = words.next().unwrap_or("");
            let mut w2 = words.next().unwrap_or("");
            let mut tail = words.next().unwrap_or("");
            if w2.starts_with("SYNC") {
                let mut w = tail.splitn(2, ' ');
                w1 = &w2[4..];
                w2 = w.next().unwrap_or("");
                tail = w.next().unwrap_or("");
            }
            let arg = parse_value(tail.as_bytes());
            pending = Some(match (w1, w2, arg) {
                ("GET", "MAILBOXES", Some(V::List(l))) => {
                    Cmd::GetMailboxes(l.iter().map(|x| x.atom().to_vec()).collect())
                }
                ("GET", "USER", Some(v)) => Cmd::GetUser(v.atom().to_vec()),
                ("APPLY", "MAILBOX", Some(v)) => Cmd::ApplyMailbox(v, lineno),
                ("APPLY", "EXPUNGE", Some(v)) => Cmd::Expunge(
                    v.get("UNIQUEID").unwrap().atom().to_vec(),
                    v.get("UID")
                        .unwrap()
                        .list()
                        .iter()
                        .map(|u| u.num() as u32)
                        .collect(),
                ),
                ("APPLY", "UNMAILBOX", Some(v)) => Cmd::Unmailbox(v.atom().to_vec()),
                ("APPLY", "RENAME", Some(v)) => {
                    Cmd::Rename(v.get("NEWMBOXNAME").unwrap().atom().to_vec())
                }
                ("APPLY", "MAILBOX", None) => {
                    // Unparseable (literal): whatever it names is unknown now.
                    known.clear();
                    Cmd::Other
                }
                _ => Cmd::Other,
            });
            continue;
        }
        let Some(rest) = raw.strip_prefix("S: ") else {
            continue;
        };
        if let Some(data) = rest.strip_prefix("* MAILBOX ") {
            let Some(v) = parse_value(data.as_bytes()) else {
                continue;
            };
            let id = v.get("UNIQUEID").unwrap().atom().to_vec();
            let want = crcs_of_line(&v);
            if let Some(recs) = v.get("RECORD") {
                let recs: Records = recs
                    .list()
                    .iter()
                    .map(record_of)
                    .map(|r| (r.uid.get(), r))
                    .collect();
                let got = SyncCrcs::of_records(recs.values());
                t.check("GET FULLMAILBOX records", file, lineno, got, want.unwrap());
                t.full_mailbox += 1;
                known.insert(id, recs);
            } else if v.get("LAST_UID").map(V::num) == Some(0) {
                if let Some(want) = want {
                    t.check(
                        "mailbox with LAST_UID 0",
                        file,
                        lineno,
                        SyncCrcs::EMPTY,
                        want,
                    );
                    t.empty += 1;
                }
                known.insert(id, Records::new());
            } else if let (Some(recs), Some(want)) = (known.get(&id), want) {
                let got = SyncCrcs::of_records(recs.values());
                t.check("replica report of a known set", file, lineno, got, want);
                t.reported += 1;
            }
            replies.push(v);
            continue;
        }
        // A status line: OK / NO / BAD, maybe tagged.
        let mut w = rest.split(' ');
        let first = w.next().unwrap_or("");
        let status = if ["OK", "NO", "BAD"].contains(&first) {
            first
        } else {
            w.next().unwrap_or("")
        };
        if !["OK", "NO", "BAD"].contains(&status) {
            continue;
        }
        let ok = status == "OK";
        match pending.take() {
            Some(Cmd::GetMailboxes(names)) if ok => {
                let present: BTreeSet<Vec<u8>> = replies
                    .iter()
                    .map(|v| v.get("MBOXNAME").unwrap().atom().to_vec())
                    .collect();
                for name in names.iter().filter(|n| !present.contains(*n)) {
                    known.insert(absent_key(name), Records::new());
                }
            }
            Some(Cmd::GetUser(user)) if ok => {
                // Every mailbox of the user is listed: any other name under
                // user.<id> is absent on the replica.
                let present: BTreeSet<Vec<u8>> = replies
                    .iter()
                    .map(|v| v.get("MBOXNAME").unwrap().atom().to_vec())
                    .collect();
                let mut inbox = b"user.".to_vec();
                inbox.extend_from_slice(&user);
                users_listed.insert(inbox, present);
            }
            Some(Cmd::Rename(new_name)) => {
                // A name the replica lacked may hold a mailbox now.
                known.remove(&absent_key(&new_name));
                users_listed.clear();
            }
            Some(Cmd::ApplyMailbox(v, line)) => {
                let id = v.get("UNIQUEID").unwrap().atom().to_vec();
                let name = v.get("MBOXNAME").unwrap().atom().to_vec();
                if !ok {
                    known.remove(&id);
                    continue;
                }
                let absent_by_user = users_listed.iter().any(|(inbox, present)| {
                    let under = name == *inbox
                        || (name.starts_with(inbox) && name.get(inbox.len()) == Some(&b'.'));
                    under && !present.contains(&name)
                });
                let base = known.get(&id).cloned().or_else(|| {
                    known
                        .get(&absent_key(&name))
                        .cloned()
                        .or(absent_by_user.then(Records::new))
                });
                let Some(mut recs) = base else {
                    continue;
                };
                // SINCE_CRC / SINCE_CRC_ANNOT (sync cache) name the replica's
                // state before this apply: our known set must match it.
                if let (Some(b), Some(a)) = (v.get("SINCE_CRC"), v.get("SINCE_CRC_ANNOT")) {
                    let since = SyncCrcs {
                        basic: b.num() as u32,
                        annot: a.num() as u32,
                    };
                    let got = SyncCrcs::of_records(recs.values());
                    // 0 is Cyrus's "don't check" for either half.
                    let since = SyncCrcs {
                        basic: if since.basic == 0 {
                            got.basic
                        } else {
                            since.basic
                        },
                        annot: if since.annot == 0 {
                            got.annot
                        } else {
                            since.annot
                        },
                    };
                    t.check("SINCE_CRC of a known set", file, line, got, since);
                    t.since += 1;
                }
                if let Some(list) = v.get("RECORD") {
                    for r in list.list().iter().map(record_of) {
                        recs.insert(r.uid.get(), r);
                    }
                }
                if let Some(want) = crcs_of_line(&v) {
                    if want.basic != 0 {
                        let got = SyncCrcs::of_records(recs.values());
                        t.check("replica set after APPLY MAILBOX OK", file, line, got, want);
                        t.after_apply += 1;
                    }
                }
                known.remove(&absent_key(&name));
                known.insert(id, recs);
            }
            Some(Cmd::Expunge(id, uids)) => {
                if !ok {
                    known.remove(&id);
                } else if let Some(recs) = known.get_mut(&id) {
                    for u in uids {
                        if let Some(r) = recs.get_mut(&u) {
                            r.expunged = true;
                        }
                    }
                }
            }
            Some(Cmd::Unmailbox(name)) => {
                known.remove(&absent_key(&name));
            }
            _ => {}
        }
    }
}

fn absent_key(name: &[u8]) -> Vec<u8> {
    let mut k = b"absent:".to_vec();
    k.extend_from_slice(name);
    k
}

#[test]
fn sync_crcs_match_cyrus_3_6_transcripts() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/crc_corpus");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut t = Tally::default();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        replay(&name, &text, &mut t);
    }
    eprintln!(
        "checked: {} FULLMAILBOX, {} empty, {} after APPLY, {} later reports, {} SINCE",
        t.full_mailbox, t.empty, t.after_apply, t.reported, t.since
    );
    assert!(t.failures.is_empty(), "{}", t.failures.join("\n"));
    assert!(t.full_mailbox >= 4, "too few FULLMAILBOX checks");
    assert!(t.after_apply >= 10, "too few APPLY checks");
}
