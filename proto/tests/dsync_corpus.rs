//! Every real Dovecot 2.3 capture in `corpus/traces/dsync/` decodes fully,
//! re-encodes to the identical bytes, and agrees record by record with the
//! lab's independent (Python) decoding in the scenario's transcript.

mod dsync_common;

use dsync_common::*;
use proto::dsync::{CacheDecisionKind, ChangeType, Event, Existence, Item, ItemKind, SyncType};

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
                out.push(((item.chr() as char).to_string(), vec![lab_pretty(item)]))
            }
        }
    }
    out
}

/// `visible()` of the lab's ibc-format.py.
fn vis(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push_str("\\t"),
                '\u{1}' => out.push_str("\\001"),
                '\u{2}' => out.push_str("\\002"),
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn flags_str(v: u8) -> String {
    let names: Vec<&str> = [
        (1, "\\Answered"),
        (2, "\\Flagged"),
        (4, "\\Deleted"),
        (8, "\\Seen"),
        (0x10, "\\Draft"),
        (0x20, "\\Recent"),
    ]
    .iter()
    .filter(|(bit, _)| v & bit != 0)
    .map(|(_, n)| *n)
    .collect();
    format!(
        "{v:x}({})",
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(" ")
        }
    )
}

fn list_str(l: &[bytes::Bytes], trailing_empty: bool) -> String {
    let mut parts: Vec<String> = l.iter().map(|x| vis(x)).collect();
    if trailing_empty {
        parts.push(String::new());
    }
    format!("[{}]", parts.join(", "))
}

/// The lab transcript's rendering of a record (`pretty()` in
/// ibc-format.py), written from our typed fields, in Dovecot's key order:
/// every field of every record is compared with an independent decoder.
fn lab_pretty(item: &Item) -> String {
    let mut p: Vec<String> = Vec::new();
    let mut kv = |k: &str, v: String| p.push(format!("{k}={v}"));
    match item {
        Item::Handshake(h) => {
            kv("hostname", vis(&h.hostname));
            let opt = |p: &mut Vec<String>, k: &str, v: &Option<bytes::Bytes>| {
                if let Some(v) = v {
                    p.push(if v.is_empty() {
                        format!("{k}=\"\"")
                    } else {
                        format!("{k}={}", vis(v))
                    });
                }
            };
            let mut q = std::mem::take(&mut p);
            opt(&mut q, "sync_ns_prefix", &h.sync_ns_prefix);
            opt(&mut q, "sync_box", &h.sync_box);
            if let Some(g) = h.sync_box_guid {
                q.push(format!("sync_box_guid={g}"));
            }
            if let Some(t) = h.sync_type {
                q.push(format!(
                    "sync_type={}",
                    match t {
                        SyncType::Full => "f",
                        SyncType::Changed => "c",
                        SyncType::State => "s",
                    }
                ));
            }
            let flag = |q: &mut Vec<String>, k: &str, on: bool| {
                if on {
                    q.push(k.to_string())
                }
            };
            flag(&mut q, "debug", h.debug);
            flag(&mut q, "sync_visible_namespaces", h.sync_visible_namespaces);
            if let Some(l) = &h.exclude_mailboxes {
                q.push(if l.is_empty() {
                    "exclude_mailboxes=\"\"".into()
                } else {
                    format!("exclude_mailboxes={}", list_str(l, false))
                });
            }
            flag(&mut q, "send_mail_requests", h.send_mail_requests);
            flag(&mut q, "backup_send", h.backup_send);
            flag(&mut q, "backup_recv", h.backup_recv);
            if h.lock_timeout != 0 {
                q.push(format!("lock_timeout={}", h.lock_timeout));
            }
            flag(&mut q, "no_mail_sync", h.no_mail_sync);
            flag(&mut q, "no_backup_overwrite", h.no_backup_overwrite);
            flag(&mut q, "purge_remote", h.purge_remote);
            flag(&mut q, "no_notify", h.no_notify);
            if h.sync_since_timestamp != 0 {
                q.push(format!("sync_since_timestamp={}", h.sync_since_timestamp));
            }
            if h.sync_max_size != 0 {
                q.push(format!("sync_max_size={}", h.sync_max_size));
            }
            opt(&mut q, "sync_flags", &h.sync_flags);
            if h.sync_until_timestamp != 0 {
                q.push(format!("sync_until_timestamp={}", h.sync_until_timestamp));
            }
            opt(&mut q, "virtual_all_box", &h.virtual_all_box);
            flag(&mut q, "empty_hdr_workaround", h.empty_hdr_workaround);
            if h.import_commit_msgs_interval != 0 {
                q.push(format!(
                    "import_commit_msgs_interval={}",
                    h.import_commit_msgs_interval
                ));
            }
            q.push(if h.hashed_headers.is_empty() {
                "hashed_headers=\"\"".into()
            } else {
                format!("hashed_headers={}", list_str(&h.hashed_headers, true))
            });
            if let Some(c) = h.alt_char {
                q.push(format!("alt_char={}", c as char));
            }
            p = q;
        }
        Item::MailboxState(s) => {
            kv("mailbox_guid", s.mailbox_guid.to_string());
            kv("last_uidvalidity", s.last_uidvalidity.to_string());
            kv("last_common_uid", s.last_common_uid.to_string());
            kv("last_common_modseq", s.last_common_modseq.to_string());
            kv(
                "last_common_pvt_modseq",
                s.last_common_pvt_modseq.to_string(),
            );
            kv("last_messages_count", s.last_messages_count.to_string());
            if s.changes_during_sync {
                p.push("changes_during_sync".into());
            }
        }
        Item::MailboxTreeNode(n) => {
            kv(
                "name",
                n.name.iter().map(|x| vis(x)).collect::<Vec<_>>().join("/"),
            );
            kv(
                "existence",
                match n.existence {
                    Existence::Exists => "exists",
                    Existence::Nonexistent => "nonexistent",
                    Existence::Deleted => "deleted",
                }
                .into(),
            );
            if let Some(g) = n.mailbox_guid {
                kv("mailbox_guid", g.to_string());
            }
            if n.uid_validity != 0 {
                kv("uid_validity", n.uid_validity.to_string());
            }
            if n.uid_next != 0 {
                kv("uid_next", n.uid_next.to_string());
            }
            if n.last_renamed_or_created != 0 {
                kv(
                    "last_renamed_or_created",
                    n.last_renamed_or_created.to_string(),
                );
            }
            if n.subscribed {
                p.push("subscribed".into());
            }
            if n.last_subscription_change != 0 {
                p.push(format!(
                    "last_subscription_change={}",
                    n.last_subscription_change
                ));
            }
        }
        Item::MailboxDelete(d) => {
            kv("hierarchy_sep", (d.hierarchy_sep as char).to_string());
            match d.escape_char {
                Some(c) => kv("escape_char", (c as char).to_string()),
                None => p.push("escape_char=\"\"".into()),
            }
            for (k, l) in [
                ("mailboxes", &d.mailboxes),
                ("dirs", &d.dirs),
                ("unsubscribes", &d.unsubscribes),
            ] {
                if !l.is_empty() {
                    let words: Vec<String> = l
                        .iter()
                        .map(|t| format!("{} {}", t.guid, t.timestamp))
                        .collect();
                    p.push(format!("{k}={}", words.join(" ")));
                }
            }
        }
        Item::Mailbox(b) => {
            kv("mailbox_guid", b.mailbox_guid.to_string());
            kv("uid_validity", b.uid_validity.to_string());
            kv("uid_next", b.uid_next.to_string());
            kv("messages_count", b.messages_count.to_string());
            kv("first_recent_uid", b.first_recent_uid.to_string());
            kv("highest_modseq", b.highest_modseq.to_string());
            kv("highest_pvt_modseq", b.highest_pvt_modseq.to_string());
            if b.mailbox_lost {
                p.push("mailbox_lost".into());
            }
            if b.mailbox_ignore {
                p.push("mailbox_ignore".into());
            }
            if b.cache_fields.is_empty() {
                p.push("cache_fields=\"\"".into());
            } else {
                let fields: Vec<String> = b
                    .cache_fields
                    .iter()
                    .map(|f| {
                        let d = format!(
                            "{}{}",
                            match f.decision.kind {
                                CacheDecisionKind::No => "n",
                                CacheDecisionKind::Temp => "t",
                                CacheDecisionKind::Yes => "y",
                            },
                            if f.decision.forced { "F" } else { "" }
                        );
                        let mut s = format!("{}\\t{d}", vis(&f.name));
                        if f.last_used != 0 {
                            s.push_str(&format!("\\t{}", f.last_used));
                        }
                        s
                    })
                    .collect();
                p.push(format!("cache_fields=[{}]", fields.join("; ")));
            }
            if b.have_guids {
                p.push("have_guids".into());
            }
            if b.have_save_guids {
                p.push("have_save_guids".into());
            }
            if b.have_only_guid128 {
                p.push("have_only_guid128".into());
            }
        }
        Item::MailChange(c) => {
            kv(
                "type",
                match c.change_type {
                    ChangeType::Save => "save",
                    ChangeType::Expunge => "expunge",
                    ChangeType::FlagChange => "flag-change",
                }
                .into(),
            );
            kv("uid", c.uid.to_string());
            if let Some(g) = &c.guid {
                kv("guid", vis(g));
            }
            if let Some(h) = &c.hdr_hash {
                kv("hdr_hash", vis(h));
            }
            if c.modseq != 0 {
                kv("modseq", c.modseq.to_string());
            }
            if c.pvt_modseq != 0 {
                kv("pvt_modseq", c.pvt_modseq.to_string());
            }
            if c.add_flags != 0 {
                kv("add_flags", flags_str(c.add_flags));
            }
            if c.remove_flags != 0 {
                kv("remove_flags", flags_str(c.remove_flags));
            }
            if c.final_flags != 0 {
                kv("final_flags", flags_str(c.final_flags));
            }
            if c.keywords_reset {
                p.push("keywords_reset".into());
            }
            if !c.keyword_changes.is_empty() {
                p.push(format!(
                    "keyword_changes={}",
                    list_str(&c.keyword_changes, false)
                ));
            }
            if c.received_timestamp != 0 {
                p.push(format!(
                    "received_timestamp=0x{:x}(={})",
                    c.received_timestamp, c.received_timestamp
                ));
            }
            if c.virtual_size != 0 {
                p.push(format!(
                    "virtual_size=0x{:x}(={})",
                    c.virtual_size, c.virtual_size
                ));
            }
        }
        Item::MailRequest(r) => {
            if let Some(g) = &r.guid {
                kv("guid", vis(g));
            }
            if r.uid != 0 {
                kv("uid", r.uid.to_string());
            }
        }
        Item::Mail(m) => {
            if let Some(g) = &m.guid {
                kv("guid", vis(g));
            }
            if m.uid != 0 {
                kv("uid", m.uid.to_string());
            }
            if let Some(u) = &m.pop3_uidl {
                p.push(if u.is_empty() {
                    "pop3_uidl=\"\"".into()
                } else {
                    format!("pop3_uidl={}", vis(u))
                });
            }
            if m.pop3_order != 0 {
                p.push(format!("pop3_order={}", m.pop3_order));
            }
            if m.received_date > 0 {
                p.push(format!("received_date={}", m.received_date));
            }
            if m.saved_date != 0 {
                p.push(format!("saved_date={}", m.saved_date));
            }
            if m.stream {
                p.push("stream=<follows>".into());
            }
        }
        Item::Finish(f) => {
            if let Some(e) = &f.error {
                p.push(if e.is_empty() {
                    "error=\"\"".into()
                } else {
                    format!("error={}", vis(e))
                });
            }
            if f.mail_error != 0 {
                p.push(format!("mail_error={}", f.mail_error));
            }
            if f.require_full_resync {
                p.push("require_full_resync".into());
            }
        }
        other => panic!("no lab rendering for {other:?}"),
    }
    let name = ItemKind::from_chr(item.chr()).unwrap().name();
    format!("{} {name:<17} {}", item.chr() as char, p.join(" "))
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
