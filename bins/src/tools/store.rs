//! `corvid store`: inspect and verify an embedded corvid store.
//!
//! ```text
//! corvid store -C /etc/imapd.conf ls
//! corvid store -C /etc/imapd.conf show MAILBOX
//! corvid store -C /etc/imapd.conf cat GUID
//! corvid store -C /etc/imapd.conf digest
//! corvid store -C /etc/imapd.conf verify
//! corvid store -C /etc/imapd.conf gc
//! ```
//!
//! The store is found through imapd.conf (`configdirectory`,
//! `partition-NAME`, `defaultpartition`) and opened read-only, so this runs
//! beside a live server — except `gc`, which removes message files no
//! record refers to and so takes the store's write lock (it refuses while
//! a server has the store open). This module only parses flags and prints; the
//! store's library does the work. `verify` and `cat` exit non-zero on
//! damage: `cat` fails rather than ends when the bytes no longer hash to
//! the GUID.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::model::{Guid, MailboxName, SystemFlags};
use engine::store::{MailRead, UidRange};
use store::embedded::{Embedded, Options, Reader};

/// Inspect and verify a corvid store.
#[derive(Debug, Parser)]
#[command(name = "store")]
struct Args {
    /// imapd.conf to read configdirectory and partition-NAME from.
    #[arg(short = 'C', long = "config", default_value = "/etc/imapd.conf")]
    config: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// List mailboxes: name, uniqueid, UIDVALIDITY, messages, HIGHESTMODSEQ.
    Ls,
    /// Show one mailbox and its records.
    Show {
        /// The mailbox's internal name, e.g. user.alice.Sent.
        mailbox: String,
    },
    /// Write a message's bytes to stdout.
    Cat {
        /// 40 hex digits.
        guid: String,
    },
    /// Print a canonical, sorted, diffable listing of all mail.
    Digest,
    /// Rehash every message and check the index; exit 1 on any problem.
    Verify,
    /// Remove message files no record refers to, and files the index does
    /// not know (needs the store closed: stop the server first).
    Gc,
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corvid store: {e}");
            ExitCode::from(1)
        }
    }
}

/// The store's options from imapd.conf.
pub fn options_from_config(path: &std::path::Path) -> Result<Options, String> {
    let conf = io_tokio::config::Config::load(path).map_err(|e| e.to_string())?;
    let dir = conf
        .configdirectory()
        .map_err(|e| e.to_string())?
        .to_path_buf();
    let partitions: BTreeMap<String, PathBuf> = conf
        .partitions()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    if partitions.is_empty() {
        return Err(format!(
            "{}: no partition-NAME is configured",
            path.display()
        ));
    }
    let mut o = Options::new(dir, partitions);
    o.default_partition = conf.default_partition().map(str::to_owned);
    Ok(o)
}

fn run(args: Args) -> Result<ExitCode, String> {
    let options = options_from_config(&args.config)?;
    if let What::Gc = args.what {
        let mut options = options;
        options.exclusive = true;
        let mut store = Embedded::open(options).map_err(|e| match e {
            store::embedded::Error::Locked(p) => format!(
                "the store is in use ({} is locked): stop the server before gc",
                p.display()
            ),
            e => e.to_string(),
        })?;
        let r = store.gc().map_err(|e| e.to_string())?;
        println!(
            "removed {} unreferenced messages ({} bytes) and {} stray files; kept {} staged",
            r.messages_removed, r.message_bytes_removed, r.stray_files_removed, r.kept_staged
        );
        return Ok(ExitCode::SUCCESS);
    }
    let reader = Embedded::open_read_only(&options).map_err(|e| e.to_string())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let e = |e: std::io::Error| e.to_string();
    match args.what {
        What::Ls => ls(&reader, &mut out).map_err(|x| x.to_string())?,
        What::Show { mailbox } => {
            let name = MailboxName::new(mailbox.as_bytes()).map_err(|x| x.to_string())?;
            if !show(&reader, &name, &mut out).map_err(|x| x.to_string())? {
                return Err(format!("no mailbox {mailbox}"));
            }
        }
        What::Cat { guid } => {
            let guid = Guid::parse(guid.as_bytes()).map_err(|x| x.to_string())?;
            let mut src = reader.open_message(&guid).map_err(|x| x.to_string())?;
            std::io::copy(&mut src, &mut out).map_err(e)?;
        }
        What::Digest => reader.digest(&mut out).map_err(|x| x.to_string())?,
        What::Gc => unreachable!("handled above"),
        What::Verify => {
            let report = reader.verify().map_err(|x| x.to_string())?;
            for p in &report.problems {
                writeln!(out, "PROBLEM {p}").map_err(e)?;
            }
            for p in &report.warnings {
                writeln!(out, "WARNING {p}").map_err(e)?;
            }
            writeln!(
                out,
                "{} mailboxes, {} records, {} messages ({} bytes) rehashed, {} unreferenced, {} stray files: {}",
                report.mailboxes,
                report.records,
                report.messages,
                report.message_bytes,
                report.unreferenced_messages,
                report.stray_files,
                if report.is_clean() { "OK".to_string() } else { format!("{} PROBLEMS", report.problems.len()) }
            )
            .map_err(e)?;
            out.flush().map_err(e)?;
            if !report.is_clean() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    out.flush().map_err(e)?;
    Ok(ExitCode::SUCCESS)
}

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn ls(reader: &Reader, out: &mut dyn Write) -> R<()> {
    let mut after: Option<MailboxName> = None;
    loop {
        let page = reader.mailboxes(after.as_ref(), 256)?;
        for m in &page {
            let mut live = 0u64;
            let mut range = UidRange::ALL;
            loop {
                let recs = reader.records(&m.uniqueid, range, 4096)?;
                live += recs.iter().filter(|r| !r.expunged).count() as u64;
                match recs.last().and_then(|r| r.uid.next()) {
                    Some(n) if recs.len() == 4096 => range.first = n,
                    _ => break,
                }
            }
            writeln!(
                out,
                "{}\t{}\tUIDVALIDITY {}\tEXISTS {live}\tHIGHESTMODSEQ {}",
                m.name, m.uniqueid, m.uidvalidity, m.highestmodseq
            )?;
        }
        if page.len() < 256 {
            return Ok(());
        }
        after = page.last().map(|m| m.name.clone());
    }
}

fn show(reader: &Reader, name: &MailboxName, out: &mut dyn Write) -> R<bool> {
    let Some(m) = reader.mailbox(name)? else {
        return Ok(false);
    };
    let crcs = reader.sync_crcs(&m.uniqueid)?;
    writeln!(out, "MBOXNAME {}", m.name)?;
    writeln!(out, "UNIQUEID {}", m.uniqueid)?;
    writeln!(out, "MAILBOX-GUID {}", m.guid)?;
    writeln!(
        out,
        "OWNER {}",
        m.owner.as_ref().map_or("-".into(), |o| o.to_string())
    )?;
    writeln!(out, "MBOXTYPE {:?}", m.mbtype.to_cyrus())?;
    writeln!(out, "PARTITION {}", m.partition)?;
    writeln!(out, "UIDVALIDITY {}", m.uidvalidity)?;
    writeln!(out, "LAST_UID {}", m.last_uid)?;
    writeln!(out, "HIGHESTMODSEQ {}", m.highestmodseq)?;
    writeln!(out, "SYNC_CRC {} SYNC_CRC_ANNOT {}", crcs.basic, crcs.annot)?;
    writeln!(out, "ACL {:?}", String::from_utf8_lossy(&m.acl.to_cyrus()))?;
    writeln!(out, "OPTIONS {:?}", m.options.to_cyrus())?;
    for (entry, owner, v) in m.annotations.iter() {
        writeln!(
            out,
            "ANNOTATION {entry} {:?} MODSEQ {} {} bytes",
            String::from_utf8_lossy(owner.as_bytes()),
            v.modseq,
            v.value.len()
        )?;
    }
    for h in &m.name_history {
        writeln!(
            out,
            "WAS {} until {} (modseq {})",
            h.old_name, h.at, h.modseq
        )?;
    }
    let mut range = UidRange::ALL;
    loop {
        let recs = reader.records(&m.uniqueid, range, 4096)?;
        for r in &recs {
            let mut flags: Vec<String> = SystemFlags::CYRUS_ORDER
                .into_iter()
                .filter(|f| r.flags.system.contains(*f))
                .filter_map(|f| f.name().map(str::to_owned))
                .collect();
            if r.expunged {
                flags.push("\\Expunged".into());
            }
            flags.extend(r.flags.keywords().iter().map(|k| k.to_string()));
            writeln!(
                out,
                "  UID {} MODSEQ {} GUID {} SIZE {} INTERNALDATE {} FLAGS ({})",
                r.uid,
                r.modseq,
                r.guid,
                r.size,
                r.internaldate,
                flags.join(" ")
            )?;
        }
        match recs.last().and_then(|r| r.uid.next()) {
            Some(n) if recs.len() == 4096 => range.first = n,
            _ => return Ok(true),
        }
    }
}
