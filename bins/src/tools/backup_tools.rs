//! The tools that read what `corvid backupd` keeps, named after Cyrus's:
//!
//! * `ctl_backups [-C conf] list` — every user with a backup: journal
//!   entries, first and last change, mailboxes and messages now.
//! * `ctl_backups [-C conf] verify [USER…]` — the store's own check
//!   (every message file hashes to its GUID, index consistent) and every
//!   journal entry readable, with every message it names present.
//! * `cyr_backup [-C conf] -u USER [-t UNIXTIME] list mailboxes|messages`
//!   — the user's backed-up mailboxes (or their messages: UID, GUID, size,
//!   flags, `EXPUNGED` marks) as they were at that time (default: now).
//! * `restore [-C conf] [-t UNIXTIME] [-M NEWNAME] [-x] HOST:PORT USER
//!   [MBOXNAME…]` — Cyrus restore(8)'s job: a csync client that sends
//!   `APPLY RESERVE`, then `APPLY MESSAGE` for each GUID the server reports
//!   `* MISSING`, then `RESTORE MAILBOX` per mailbox, with the records the
//!   mailbox had at that time (expunged ones only with `-x`). Like Cyrus's
//!   restore without `-U`, it sends no UNIQUEID/UIDVALIDITY/HIGHESTMODSEQ,
//!   so the server creates the mailbox or appends with new UIDs. Logs in
//!   as `restore_authname`/`restore_password` (else `sync_*`), PLAIN over
//!   plain TCP, no COMPRESS or TLS.
//!
//! They open the backup store read-only and read the journals, so they
//! run while backupd serves. They never change a backup.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::store::MailRead;
use io_tokio::config::Config;

use super::backupd::{journal_file, layout, read_journal, state_at, Layout};

fn parse<T: Parser>(args: Vec<OsString>) -> Result<T, ExitCode> {
    T::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(64)
        } else {
            ExitCode::SUCCESS
        }
    })
}

fn load(tool: &str, path: &PathBuf) -> Result<Layout, ExitCode> {
    let conf = Config::load(path).map_err(|e| {
        eprintln!("{tool}: {e}");
        ExitCode::from(78)
    })?;
    layout(&conf).map_err(|e| {
        eprintln!("{tool}: {}: {e}", path.display());
        ExitCode::from(78)
    })
}

/// Users with a journal, from the journal file names (unescaped).
fn users(l: &Layout) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(&l.journal) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        let user = if stem == "%SHARED" {
            stem.to_owned()
        } else {
            unescape(stem)
        };
        out.push((user, e.path()));
    }
    out.sort();
    out
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// List and verify corvid backups.
#[derive(Debug, Parser)]
#[command(name = "ctl_backups")]
struct CtlArgs {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Debug, Subcommand)]
enum CtlCmd {
    /// Every backup: user, entries, first/last change, mailboxes, messages, deleted mailboxes.
    List,
    /// Check the store and the journals (all users, or those named).
    Verify {
        /// Users to check (all if none).
        users: Vec<String>,
    },
}

pub fn ctl_backups_main(args: Vec<OsString>) -> ExitCode {
    let args: CtlArgs = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let l = match load("ctl_backups", &args.config) {
        Ok(l) => l,
        Err(c) => return c,
    };
    match args.cmd {
        CtlCmd::List => {
            println!("user\tentries\tfirst\tlast\tmailboxes\tmessages\tdeleted");
            for (user, path) in users(&l) {
                match read_journal(&path) {
                    Ok(entries) => {
                        let now = state_at(&entries, i64::MAX);
                        let msgs: usize = now
                            .values()
                            .map(|kv| {
                                kv.get("RECORD")
                                    .and_then(|r| r.as_list())
                                    .map_or(0, |r| r.len())
                            })
                            .sum();
                        let deleted: Vec<&str> = entries
                            .iter()
                            .filter_map(|e| match &e.kind {
                                super::backupd::EntryKind::Unmailbox { name, .. } => {
                                    Some(name.as_str())
                                }
                                _ => None,
                            })
                            .collect();
                        println!(
                            "{user}\t{}\t{}\t{}\t{}\t{msgs}\t{}",
                            entries.len(),
                            entries.first().map_or(0, |e| e.at),
                            entries.last().map_or(0, |e| e.at),
                            now.len(),
                            deleted.join(" ")
                        );
                    }
                    Err(e) => println!("{user}\tERROR {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        CtlCmd::Verify { users: only } => {
            let mut bad = 0usize;
            let reader = match store::Embedded::open_read_only(&l.store) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ctl_backups: store: {e}");
                    return ExitCode::from(74);
                }
            };
            match reader.verify() {
                Ok(report) => {
                    for p in &report.problems {
                        println!("store: {p}");
                        bad += 1;
                    }
                }
                Err(e) => {
                    println!("store: verify failed: {e}");
                    bad += 1;
                }
            }
            let mut list = users(&l);
            if !only.is_empty() {
                list = only
                    .iter()
                    .map(|u| (u.clone(), journal_file(&l.journal, Some(u))))
                    .collect();
            }
            for (user, path) in list {
                let entries = match read_journal(&path) {
                    Ok(e) => e,
                    Err(e) => {
                        println!("{user}: {e}");
                        bad += 1;
                        continue;
                    }
                };
                let mut missing = 0usize;
                for e in &entries {
                    let super::backupd::EntryKind::Mailbox(kv) = &e.kind else {
                        continue;
                    };
                    for r in kv
                        .get("RECORD")
                        .and_then(|r| r.as_list())
                        .unwrap_or_default()
                    {
                        let Some(guid) = r
                            .as_kvlist()
                            .and_then(|k| k.get("GUID"))
                            .and_then(|g| g.as_guid())
                        else {
                            continue;
                        };
                        let expunged = r
                            .as_kvlist()
                            .and_then(|k| k.get("FLAGS"))
                            .and_then(|f| f.as_list())
                            .is_some_and(|f| f.iter().any(|x| x.as_bytes() == Some(b"\\Expunged")));
                        let g = engine::model::Guid::from_bytes(*guid.as_bytes());
                        let have = reader.has_message(&g).unwrap_or(false);
                        // An expunged record may name bytes never sent (Cyrus appends them unlinked).
                        if !have && !expunged {
                            missing += 1;
                        }
                    }
                }
                if missing > 0 {
                    println!("{user}: {missing} record(s) name messages the store lacks");
                    bad += 1;
                } else {
                    println!("{user}: OK ({} entries)", entries.len());
                }
            }
            if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Inspect one user's corvid backup.
#[derive(Debug, Parser)]
#[command(name = "cyr_backup")]
struct CyrArgs {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// The user whose backup to read.
    #[arg(short = 'u')]
    user: String,
    /// The point in time (Unix seconds; default: the latest).
    #[arg(short = 't')]
    at: Option<i64>,
    /// `list`.
    action: String,
    /// `mailboxes` or `messages`.
    what: String,
}

pub fn cyr_backup_main(args: Vec<OsString>) -> ExitCode {
    let args: CyrArgs = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let l = match load("cyr_backup", &args.config) {
        Ok(l) => l,
        Err(c) => return c,
    };
    if args.action != "list" {
        eprintln!("cyr_backup: unknown action {:?} (list)", args.action);
        return ExitCode::from(64);
    }
    let entries = match read_journal(&journal_file(&l.journal, Some(&args.user))) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cyr_backup: {e}");
            return ExitCode::from(66);
        }
    };
    let state = state_at(&entries, args.at.unwrap_or(i64::MAX));
    let str_of = |kv: &proto::dlist::KvList, k: &str| -> String {
        kv.get(k)
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let mut by_name: Vec<_> = state.values().collect();
    by_name.sort_by_key(|kv| str_of(kv, "MBOXNAME"));
    match args.what.as_str() {
        "mailboxes" => {
            for kv in by_name {
                let n = kv
                    .get("RECORD")
                    .and_then(|r| r.as_list())
                    .map_or(0, |r| r.len());
                println!(
                    "{}\t{}\t{}\t{n}",
                    str_of(kv, "UNIQUEID"),
                    str_of(kv, "MBOXNAME"),
                    str_of(kv, "LAST_UID"),
                );
            }
        }
        "messages" => {
            for kv in by_name {
                let name = str_of(kv, "MBOXNAME");
                for r in kv
                    .get("RECORD")
                    .and_then(|r| r.as_list())
                    .unwrap_or_default()
                {
                    let Some(r) = r.as_kvlist() else { continue };
                    let flags: Vec<String> = r
                        .get("FLAGS")
                        .and_then(|f| f.as_list())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|f| {
                            f.as_bytes()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        })
                        .collect();
                    println!(
                        "{name}\t{}\t{}\t{}\t{}",
                        str_of(r, "UID"),
                        str_of(r, "GUID"),
                        str_of(r, "SIZE"),
                        flags.join(" ")
                    );
                }
            }
        }
        other => {
            eprintln!("cyr_backup: list what? {other:?} (mailboxes|messages)");
            return ExitCode::from(64);
        }
    }
    ExitCode::SUCCESS
}

/// Restore mailboxes from a corvid backup into a Cyrus (or corvid)
/// sync_server, as Cyrus's restore(8) does: `APPLY RESERVE`, the missing
/// messages as `APPLY MESSAGE`, then `RESTORE MAILBOX` for each mailbox.
#[derive(Debug, Parser)]
#[command(name = "restore")]
struct RestoreArgs {
    /// imapd.conf of the backup (backuppartition-*, restore_authname,
    /// restore_password; else sync_authname, sync_password).
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// The point in time to restore (Unix seconds; default: the latest).
    #[arg(short = 't')]
    at: Option<i64>,
    /// Restore into this mailbox name (one mailbox only).
    #[arg(short = 'M')]
    rename: Option<String>,
    /// Also bring back records that were already expunged at that time.
    #[arg(short = 'x')]
    expunged: bool,
    /// The sync_server, HOST:PORT.
    server: String,
    /// Whose backup.
    user: String,
    /// Mailboxes to restore (internal names, e.g. user.alice.Work); all if none.
    mailboxes: Vec<String>,
}

/// A minimal blocking csync client: enough for restore's three commands.
struct Wire {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    /// Reads lines up to the next status line; returns (untagged, status).
    fn status(&mut self) -> std::io::Result<(Vec<String>, String)> {
        use std::io::Read;
        let mut untagged = Vec::new();
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                if line.starts_with("* ") && !line.starts_with("* OK") {
                    untagged.push(line);
                } else {
                    return Ok((untagged, line));
                }
            }
            if self.buf.len() > 16 << 20 {
                return Err(std::io::Error::other("server line over 16 MiB"));
            }
            let mut chunk = [0u8; 8192];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("server closed the connection"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<(Vec<String>, String)> {
        use std::io::Write;
        self.s.write_all(bytes)?;
        self.status()
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn is_expunged(r: &proto::dlist::KvList) -> bool {
    r.get("FLAGS")
        .and_then(|f| f.as_list())
        .is_some_and(|f| f.iter().any(|x| x.as_bytes() == Some(b"\\Expunged")))
}

pub fn restore_main(args: Vec<OsString>) -> ExitCode {
    use proto::dlist::{Item, KvList, Value};
    let args: RestoreArgs = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let conf = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::from(78);
        }
    };
    let l = match layout(&conf) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("restore: {}: {e}", args.config.display());
            return ExitCode::from(78);
        }
    };
    let key = |a: &str, b: &str| {
        conf.get_str(a)
            .or_else(|| conf.get_str(b))
            .map(str::to_owned)
    };
    let (Some(authname), Some(password)) = (
        key("restore_authname", "sync_authname"),
        key("restore_password", "sync_password"),
    ) else {
        eprintln!("restore: no restore_authname/restore_password (or sync_*) in the config");
        return ExitCode::from(78);
    };
    let entries = match read_journal(&journal_file(&l.journal, Some(&args.user))) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::from(66);
        }
    };
    let state = state_at(&entries, args.at.unwrap_or(i64::MAX));
    let name_of = |kv: &KvList| {
        kv.get("MBOXNAME")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut chosen: Vec<KvList> = state
        .into_values()
        .filter(|kv| args.mailboxes.is_empty() || args.mailboxes.contains(&name_of(kv)))
        .collect();
    chosen.sort_by_key(|kv| name_of(kv));
    if chosen.is_empty() {
        eprintln!("restore: nothing in {}'s backup matches", args.user);
        return ExitCode::from(66);
    }
    if args.rename.is_some() && chosen.len() != 1 {
        eprintln!(
            "restore: -M needs exactly one mailbox ({} match)",
            chosen.len()
        );
        return ExitCode::from(64);
    }
    let reader = match store::Embedded::open_read_only(&l.store) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("restore: store: {e}");
            return ExitCode::from(74);
        }
    };
    // What each mailbox becomes: new name, records kept, Cyrus restore's
    // "not -U" form (no UNIQUEID/UIDVALIDITY/HIGHESTMODSEQ: the server
    // allocates; existing mailboxes get the messages appended).
    let mut plans = Vec::new();
    let mut guids: Vec<(proto::dlist::Guid, u64)> = Vec::new();
    for kv in chosen {
        let mut out = KvList::new();
        let mut records = Vec::new();
        for r in kv
            .get("RECORD")
            .and_then(|r| r.as_list())
            .unwrap_or_default()
        {
            let Some(rk) = r.as_kvlist() else { continue };
            if is_expunged(rk) && !args.expunged {
                continue;
            }
            let mut nr = KvList::new();
            for (k, v) in rk.iter() {
                if &k[..] == b"FLAGS" {
                    let kept: Vec<Value> = v
                        .as_list()
                        .unwrap_or_default()
                        .iter()
                        .filter(|f| f.as_bytes() != Some(b"\\Expunged"))
                        .cloned()
                        .collect();
                    nr.push(k.clone(), Value::List(kept));
                } else {
                    nr.push(k.clone(), v.clone());
                }
            }
            if let (Some(g), Some(sz)) = (
                rk.get("GUID").and_then(|g| g.as_guid()),
                rk.get("SIZE").and_then(|s| s.as_u64()),
            ) {
                if !guids.iter().any(|(x, _)| *x == g) {
                    guids.push((g, sz));
                }
            }
            records.push(Value::KvList(nr));
        }
        for (k, v) in kv.iter() {
            let v = match &k[..] {
                b"UNIQUEID" | b"MBOXTYPE" | b"QUOTAROOT" => Value::Nil,
                b"UIDVALIDITY" | b"HIGHESTMODSEQ" => Value::Atom(bytes::Bytes::from_static(b"0")),
                b"MBOXNAME" => match &args.rename {
                    Some(n) => Value::Atom(bytes::Bytes::from(n.clone())),
                    None => v.clone(),
                },
                // The kept records are not the backed-up set: let the
                // server compute its own checksums.
                b"SYNC_CRC" | b"SYNC_CRC_ANNOT" | b"RECORD" | b"CREATEDMODSEQ"
                | b"FOLDERMODSEQ" => continue,
                _ => v.clone(),
            };
            out.push(k.clone(), v);
        }
        out.push("RECORD", Value::List(records));
        plans.push(out);
    }
    let run = || -> Result<(), String> {
        let s = std::net::TcpStream::connect(&args.server)
            .map_err(|e| format!("connect {}: {e}", args.server))?;
        let mut w = Wire { s, buf: Vec::new() };
        let io = |e: std::io::Error| e.to_string();
        let (_, greeting) = w.status().map_err(io)?;
        if !greeting.starts_with("* OK") {
            return Err(format!("server greeting: {greeting}"));
        }
        let mut ir = vec![0u8];
        ir.extend_from_slice(authname.as_bytes());
        ir.push(0);
        ir.extend_from_slice(password.as_bytes());
        let (_, st) = w
            .send(format!("AUTHENTICATE PLAIN {}\r\n", base64(&ir)).as_bytes())
            .map_err(io)?;
        if !st.starts_with("OK") {
            return Err(format!("AUTHENTICATE: {st}"));
        }
        let names: Vec<Value> = plans
            .iter()
            .map(|p| p.get("MBOXNAME").cloned().unwrap_or(Value::Nil))
            .collect();
        let part = plans[0]
            .get("PARTITION")
            .cloned()
            .unwrap_or(Value::Atom(bytes::Bytes::from_static(b"default")));
        let reserve = KvList::new()
            .with("PARTITION", part.clone())
            .with("MBOXNAME", Value::List(names))
            .with(
                "GUID",
                Value::List(
                    guids
                        .iter()
                        .map(|(g, _)| Value::Atom(bytes::Bytes::from(g.to_string())))
                        .collect(),
                ),
            );
        let enc =
            proto::csync::Command::Apply(Item::new("RESERVE", Value::KvList(reserve))).encode();
        let (lines, st) = w.send(enc.text()).map_err(io)?;
        if !st.starts_with("OK") {
            return Err(format!("APPLY RESERVE: {st}"));
        }
        let missing: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("* MISSING ("))
            .flat_map(|l| {
                l.trim_end_matches(')')
                    .split(' ')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let pname = part.as_str().unwrap_or("default").to_owned();
        for (g, size) in guids
            .iter()
            .filter(|(g, _)| missing.contains(&g.to_string()))
        {
            let mg = engine::model::Guid::from_bytes(*g.as_bytes());
            let bytes = reader
                .message_bytes(&mg, 0, *size as usize)
                .map_err(|e| format!("message {g}: {e}"))?;
            let mut line =
                format!("APPLY MESSAGE (%{{{pname} {g} {}}}\r\n", bytes.len()).into_bytes();
            line.extend_from_slice(&bytes);
            line.extend_from_slice(b")\r\n");
            let (_, st) = w.send(&line).map_err(io)?;
            if !st.starts_with("OK") {
                return Err(format!("APPLY MESSAGE {g}: {st}"));
            }
        }
        for p in plans {
            let name = p
                .get("MBOXNAME")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let enc =
                proto::csync::Command::Restore(Item::new("MAILBOX", Value::KvList(p))).encode();
            let (_, st) = w.send(enc.text()).map_err(io)?;
            if !st.starts_with("OK") {
                return Err(format!("RESTORE MAILBOX {name}: {st}"));
            }
            println!("restored {name}");
        }
        let _ = w.send(b"EXIT\r\n");
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restore: {e}");
            ExitCode::from(75)
        }
    }
}
