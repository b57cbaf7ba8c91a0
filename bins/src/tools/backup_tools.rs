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
