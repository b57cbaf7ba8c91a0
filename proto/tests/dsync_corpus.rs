//! Every real Dovecot 2.3 capture in `corpus/traces/dsync/` decodes fully,
//! re-encodes to the identical bytes, and agrees record by record with the
//! lab's independent (Python) decoding in the scenario's transcript.

mod dsync_common;

use dsync_common::*;
use proto::dsync::{ChangeType, Event, Existence, Item};

/// Tokens of one direction, in the transcript's vocabulary, plus the text
/// after the type for records.
fn our_tokens(events: &[Event]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut body_len: Option<usize> = None;
    for ev in events {
        match ev {
            Event::Version { major, minor } => out.push((format!("V{major}.{minor}"), vec![])),
            Event::Header(_) => {}
            Event::HeadersEnd => out.push(("HE".into(), vec![])),
            Event::EndOfList => out.push((".".into(), vec![])),
            Event::Done => out.push(("X".into(), vec![])),
            Event::BodyChunk(b) => *body_len.get_or_insert(0) += b.len(),
            Event::BodyEnd => out.push((format!("body {}", body_len.take().unwrap_or(0)), vec![])),
            Event::Item(item) => {
                out.push(((item.chr() as char).to_string(), expected_fields(item)))
            }
        }
    }
    out
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Substrings the lab decoder must have printed for this record.
fn expected_fields(item: &Item) -> Vec<String> {
    match item {
        Item::Handshake(h) => vec![format!("hostname={}", s(&h.hostname))],
        Item::MailboxState(st) => vec![format!(
            "mailbox_guid={} last_uidvalidity={} last_common_uid={} last_common_modseq={} last_common_pvt_modseq={} last_messages_count={}",
            st.mailbox_guid, st.last_uidvalidity, st.last_common_uid, st.last_common_modseq, st.last_common_pvt_modseq, st.last_messages_count
        )],
        Item::MailboxTreeNode(n) => {
            let name: Vec<String> = n.name.iter().map(|p| s(p)).collect();
            let ex = match n.existence {
                Existence::Exists => "exists",
                Existence::Nonexistent => "nonexistent",
                Existence::Deleted => "deleted",
            };
            let mut v = vec![format!("name={} existence={ex}", name.join("/"))];
            if let Some(g) = n.mailbox_guid {
                v.push(format!("mailbox_guid={g}"));
            }
            v
        }
        Item::MailboxDelete(d) => {
            let mut v = vec![format!("hierarchy_sep={}", d.hierarchy_sep as char)];
            for t in &d.mailboxes {
                v.push(format!("{} {}", t.guid, t.timestamp));
            }
            v
        }
        Item::Mailbox(b) => vec![format!(
            "mailbox_guid={} uid_validity={} uid_next={} messages_count={} first_recent_uid={} highest_modseq={} highest_pvt_modseq={}",
            b.mailbox_guid, b.uid_validity, b.uid_next, b.messages_count, b.first_recent_uid, b.highest_modseq, b.highest_pvt_modseq
        )],
        Item::MailChange(c) => {
            let t = match c.change_type {
                ChangeType::Save => "save",
                ChangeType::Expunge => "expunge",
                ChangeType::FlagChange => "flag-change",
            };
            let mut v = vec![format!("type={t} uid={}", c.uid)];
            if let Some(g) = &c.guid {
                v.push(format!("guid={}", s(g)));
            }
            if c.modseq != 0 {
                v.push(format!("modseq={}", c.modseq));
            }
            if c.final_flags != 0 {
                v.push(format!("final_flags={:x}(", c.final_flags));
            }
            if c.add_flags != 0 {
                v.push(format!("add_flags={:x}(", c.add_flags));
            }
            if c.remove_flags != 0 {
                v.push(format!("remove_flags={:x}(", c.remove_flags));
            }
            for k in &c.keyword_changes {
                v.push(s(k));
            }
            v
        }
        Item::MailRequest(r) => {
            let mut v = Vec::new();
            if let Some(g) = &r.guid {
                v.push(format!("guid={}", s(g)));
            }
            if r.uid != 0 {
                v.push(format!("uid={}", r.uid));
            }
            v
        }
        Item::Mail(m) => {
            let mut v = Vec::new();
            if let Some(g) = &m.guid {
                v.push(format!("guid={}", s(g)));
            }
            if m.stream {
                v.push("stream=<follows>".into());
            }
            v
        }
        Item::Finish(f) => f.error.iter().map(|e| format!("error={}", s(e))).collect(),
        _ => vec![],
    }
}

/// (direction, token, rest of line) per transcript run.
fn transcript_runs(text: &str) -> Vec<Vec<(String, String, String)>> {
    let mut runs: Vec<Vec<(String, String, String)>> = Vec::new();
    let mut in_run = false;
    for line in text.lines() {
        if line.starts_with("====================") {
            in_run = line.contains("dsync run #");
            if in_run {
                runs.push(Vec::new());
            }
            continue;
        }
        if !in_run || !line.starts_with('[') {
            continue;
        }
        let Some(close) = line.find("] ") else {
            continue;
        };
        let rest = &line[close + 2..];
        let (dir, rest) = rest.split_at(3);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let token = if rest.starts_with("VERSION") {
            let v: Vec<&str> = rest.split("\\t").collect();
            format!("V{}.{}", v[2], v[3])
        } else if rest.starts_with(".   (end of item headers)") {
            "HE".into()
        } else if rest.starts_with(".   (end of list)") {
            ".".into()
        } else if let Some(b) = rest.strip_prefix("  <body ") {
            let n = b.split(' ').next().unwrap();
            assert!(
                !b.contains("INCOMPLETE"),
                "transcript has an incomplete body"
            );
            format!("body {n}")
        } else {
            rest.chars().next().unwrap().to_string()
        };
        runs.last_mut()
            .unwrap()
            .push((dir.to_string(), token, rest.to_string()));
    }
    runs
}

#[test]
fn every_capture_decodes_and_reencodes_identically() {
    let caps = captures();
    assert!(caps.len() >= 20, "corpus missing: {caps:?}");
    let mut records = 0;
    for cap in &caps {
        for dir in ["m2s.raw", "s2m.raw"] {
            let raw = std::fs::read(cap.join(dir)).unwrap();
            let events = decode_all(&raw);
            records += events
                .iter()
                .filter(|e| matches!(e, Event::Item(_)))
                .count();
            assert!(matches!(events[0], Event::Version { major: 3, minor: 5 }));
            let again = encode_all(&events);
            assert!(again == raw, "{}/{dir}: re-encoding differs", cap.display());
        }
    }
    assert!(records > 500, "only {records} records");
}

#[test]
fn captures_agree_with_the_lab_transcripts() {
    let mut checked_lines = 0;
    for cap in captures() {
        let transcript = cap.parent().unwrap().join("transcript.txt");
        let Ok(text) = std::fs::read_to_string(&transcript) else {
            continue;
        };
        let runs = transcript_runs(&text);
        let n: usize = cap
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("cap")
            .parse()
            .unwrap();
        let run = &runs[n - 1];
        for (file, label) in [("m2s.raw", "M>S"), ("s2m.raw", "S>M")] {
            let ours = our_tokens(&decode_all(&std::fs::read(cap.join(file)).unwrap()));
            let theirs: Vec<&(String, String, String)> =
                run.iter().filter(|(d, _, _)| d == label).collect();
            let ours_tok: Vec<&str> = ours.iter().map(|(t, _)| t.as_str()).collect();
            let theirs_tok: Vec<&str> = theirs.iter().map(|(_, t, _)| t.as_str()).collect();
            assert_eq!(ours_tok, theirs_tok, "{} {label}", cap.display());
            for ((_, fields), (_, _, line)) in ours.iter().zip(&theirs) {
                for f in fields {
                    assert!(
                        line.contains(f.as_str()),
                        "{} {label}: {f:?} not in {line:?}",
                        cap.display()
                    );
                }
                checked_lines += 1;
            }
        }
    }
    assert!(
        checked_lines > 500,
        "only {checked_lines} transcript lines checked"
    );
}

#[test]
fn decoded_new_mail_stream_snapshot() {
    let cap = corpus_dir().join("new-mail/cap1");
    let m2s = decode_all(&std::fs::read(cap.join("m2s.raw")).unwrap());
    let s2m = decode_all(&std::fs::read(cap.join("s2m.raw")).unwrap());
    insta::assert_snapshot!("new_mail_m2s", render(&m2s));
    insta::assert_snapshot!("new_mail_s2m", render(&s2m));
}
