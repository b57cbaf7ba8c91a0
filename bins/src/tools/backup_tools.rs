//! `corvid backup …`: what an administrator does with the backups
//! `corvid backupd` keeps ([`store::backup`], format 2).
//!
//! * `backup list` — every user: chunks, first/last change, mailboxes,
//!   live messages and bytes now, deleted mailboxes, journal size (from
//!   the listing index).
//! * `backup show USER [--at T] [--messages]` — mailboxes (and messages:
//!   UID, GUID, size, internaldate, flags, `\Expunged`), seen state,
//!   subscriptions, quota roots and Sieve scripts as they were at T.
//! * `backup verify [USER…]` — every chunk's sum and operation, every
//!   message the journal names inflated and hashed to its GUID.
//! * `backup restore USER [--at T] [--mailbox NAME…] [--uid N…]
//!   [--expunged] (--to HOST:PORT | --maildir DIR)` — the user (or some
//!   mailboxes, or single messages) as they were at T, with seen state,
//!   subscriptions, quota, annotations and Sieve scripts, sent by the
//!   replication client machine (`engine::csync_client`, the one `corvid
//!   sync_client` runs) to a real Cyrus sync_server or a corvid replica —
//!   same UNIQUEIDs, UIDs, flags, internaldates and modseqs, so the
//!   mailboxes' SYNC_CRCs equal the master's at T — or written into a
//!   Maildir++ (mailboxes, messages, flags, subscriptions).
//! * `backup compact [--retention-days N]` — folds history older than
//!   the retention (`backup_retention`, default 7 days) into base chunks
//!   and removes message files no point in retention needs.
//!
//! `T` is Unix seconds or `YYYY-MM-DDTHH:MM:SSZ`. Progress bars appear on
//! long verifies and restores when stderr is a terminal.
//!
//! Cyrus's names stay as aliases: `ctl_backups list|verify`, `cyr_backup
//! -u USER [-t T] list mailboxes|messages`, and `restore [-t T] [-M NEW]
//! [-x] HOST:PORT USER [MBOX…]` (restore(8)'s job: `RESTORE MAILBOX`
//! with new UIDs, into an existing user).
//!
//! They only read backups (compact excepted, under each user's lock), so
//! they run while backupd serves.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::model::{Guid, MailboxName, Uid, UserId};
use engine::store::MailRead;
use io_tokio::config::Config;
use store::backup::{Backup, Snapshot};

use super::backupd::{layout, Layout};

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

fn load(tool: &str, path: &PathBuf) -> Result<(Config, Layout, Backup), ExitCode> {
    let conf = Config::load(path).map_err(|e| {
        eprintln!("{tool}: {e}");
        ExitCode::from(78)
    })?;
    let l = layout(&conf).map_err(|e| {
        eprintln!("{tool}: {}: {e}", path.display());
        ExitCode::from(78)
    })?;
    let b = Backup::open(l.backup.clone()).map_err(|e| {
        eprintln!("{tool}: {e}");
        ExitCode::from(78)
    })?;
    for old in b.old_format_journals() {
        eprintln!(
            "{tool}: {}: a format-1 journal from an earlier corvid; this version reads format 2 only (back the user up again into a fresh backuppartition)",
            old.display()
        );
    }
    Ok((conf, l, b))
}

/// `T`: Unix seconds, or `YYYY-MM-DDTHH:MM:SS[Z]` (UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let bad = || format!("{s:?} is neither Unix seconds nor YYYY-MM-DDTHH:MM:SSZ");
    let t = s.trim_end_matches('Z');
    let (date, time) = t.split_once(['T', ' ']).ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let h: Vec<i64> = time
        .split(':')
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if d.len() != 3 || h.len() != 3 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, dd) = (d[0] - (d[1] <= 2) as i64, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2])
}

fn user_id(tool: &str, s: &str) -> Result<UserId, ExitCode> {
    UserId::new(s).map_err(|e| {
        eprintln!("{tool}: user {s:?}: {e}");
        ExitCode::from(64)
    })
}

fn bar(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || total < 2 {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    Some(b)
}

/// Work with corvid backups.
#[derive(Debug, Parser)]
#[command(name = "backup")]
struct Args {
    /// imapd.conf to read (backuppartition-*, backup_retention).
    #[arg(short = 'C', default_value = "/etc/imapd.conf", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every user with a backup, with sizes.
    List,
    /// One user's backup at a point in time.
    Show {
        /// Whose.
        user: String,
        /// When (Unix seconds or YYYY-MM-DDTHH:MM:SSZ; default: latest).
        #[arg(long)]
        at: Option<String>,
        /// Also list every message.
        #[arg(long)]
        messages: bool,
    },
    /// Check chunks and messages (all users, or those named).
    Verify {
        /// Users (all if none).
        users: Vec<String>,
    },
    /// Restore a user, mailboxes or messages as they were at a time.
    Restore(RestoreArgs),
    /// Fold history older than the retention period; drop unneeded bytes.
    Compact {
        /// Retention in days (default: backup_retention from the config).
        #[arg(long)]
        retention_days: Option<u32>,
        /// Keep pack files younger than this many seconds whatever (a
        /// running backupd stores bytes before the chunk naming them).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
    },
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// Whose backup.
    user: String,
    /// The point in time (default: the latest).
    #[arg(long)]
    at: Option<String>,
    /// Only these mailboxes (internal names, e.g. user.alice.Work).
    #[arg(long = "mailbox")]
    mailboxes: Vec<String>,
    /// Only these UIDs (of the one mailbox given with --mailbox).
    #[arg(long = "uid")]
    uids: Vec<u32>,
    /// Bring back records already expunged at that time, live.
    #[arg(long)]
    expunged: bool,
    /// A Cyrus sync_server (or corvid replica), HOST:PORT. Credentials:
    /// restore_authname/restore_password, else sync_authname/sync_password.
    #[arg(long, conflicts_with = "maildir")]
    to: Option<String>,
    /// A Maildir++ root to write into instead. Seen state becomes the
    /// `S` flag, subscriptions the `subscriptions` file, Sieve scripts go
    /// beside it as Pigeonhole keeps them (`../sieve/NAME.sieve`, the
    /// active one linked from `../.dovecot.sieve`), and the user's quota
    /// root becomes a Maildir++ `maildirsize`.
    #[arg(long)]
    maildir: Option<PathBuf>,
    /// Restore as this (new) user instead: mailboxes renamed under its
    /// INBOX, with new UNIQUEIDs, so the original user may still exist on
    /// the target.
    #[arg(long = "as")]
    as_user: Option<String>,
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    let args: Args = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let (conf, l, b) = match load("backup", &args.config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match args.cmd {
        Cmd::List => list(&b),
        Cmd::Show { user, at, messages } => {
            let at = match at.as_deref().map(parse_time).transpose() {
                Ok(t) => t.unwrap_or(i64::MAX),
                Err(e) => {
                    eprintln!("backup show: {e}");
                    return ExitCode::from(64);
                }
            };
            let user = match user_id("backup show", &user) {
                Ok(u) => u,
                Err(c) => return c,
            };
            show(&b, &user, at, messages)
        }
        Cmd::Verify { users } => verify(&b, &users),
        Cmd::Restore(r) => restore(&conf, &b, r),
        Cmd::Compact {
            retention_days,
            grace_secs,
        } => {
            let keep_s = match retention_days {
                Some(d) => d as i64 * 86_400,
                None => l.retention_s,
            };
            if keep_s <= 0 {
                println!("retention is 0 (keep everything): nothing to compact");
                return ExitCode::SUCCESS;
            }
            let cutoff = unix_now() - keep_s;
            match b.compact(cutoff, std::time::Duration::from_secs(grace_secs)) {
                Ok(r) => {
                    println!(
                        "compacted {} user(s): {} chunk(s) folded, journals {} -> {} bytes; {} message(s) ({} bytes) removed",
                        r.users,
                        r.chunks_folded,
                        r.journal_bytes_before,
                        r.journal_bytes_after,
                        r.messages_removed,
                        r.message_bytes_removed
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backup compact: {e}");
                    ExitCode::from(74)
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn user_text(u: &Option<UserId>) -> String {
    u.as_ref()
        .map(|u| u.to_lossy())
        .unwrap_or_else(|| "%SHARED".into())
}

fn list(b: &Backup) -> ExitCode {
    let users = match b.users() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("backup list: {e}");
            return ExitCode::from(74);
        }
    };
    println!("user\tchunks\tfirst\tlast\tmailboxes\tmessages\tbytes\tdeleted\tjournal_bytes");
    let mut bad = false;
    for (u, _) in users {
        match b.summary(u.as_ref()) {
            Ok(s) => println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                user_text(&u),
                s.chunks,
                s.first_at,
                s.last_at,
                s.mailboxes,
                s.messages,
                s.message_bytes,
                s.deleted,
                s.journal_bytes
            ),
            Err(e) => {
                bad = true;
                println!("{}\tERROR {e}", user_text(&u));
            }
        }
    }
    if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn flags_text(r: &engine::model::Record) -> String {
    let v = engine::csync::wire::record_kv(r);
    v.as_kvlist()
        .and_then(|k| k.get("FLAGS"))
        .and_then(|f| f.as_list())
        .unwrap_or_default()
        .iter()
        .filter_map(|f| {
            f.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn show(b: &Backup, user: &UserId, at: i64, messages: bool) -> ExitCode {
    let s = match b.snapshot(Some(user), at) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backup show: {e}");
            return ExitCode::from(66);
        }
    };
    let mut mbs: Vec<_> = s.mailboxes.values().collect();
    mbs.sort_by(|a, b| a.name.cmp(&b.name));
    for mb in &mbs {
        let recs = s.records.get(&mb.uniqueid);
        let live = recs.map_or(0, |r| r.values().filter(|r| !r.expunged).count());
        let exp = recs.map_or(0, |r| r.len()) - live;
        println!(
            "mailbox\t{}\t{}\tlast_uid={}\tmessages={live}\texpunged={exp}",
            mb.name,
            mb.uniqueid.to_lossy(),
            mb.last_uid
        );
        if messages {
            for r in recs
                .map(|r| r.values().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                println!(
                    "message\t{}\t{}\t{}\t{}\t{}\t{}",
                    mb.name,
                    r.uid.get(),
                    r.guid.to_hex(),
                    r.size,
                    r.internaldate.0,
                    flags_text(r)
                );
            }
        }
    }
    for (id, seen) in &s.seen {
        println!("seen\t{}\t{}", id.to_lossy(), seen.seenuids.as_str());
    }
    for (name, sub) in &s.subs {
        if sub.subscribed {
            println!("subscribed\t{name}");
        }
    }
    for (root, q) in &s.quotas {
        let limits: Vec<String> = q.limits.iter().map(|(r, v)| format!("{r:?}={v}")).collect();
        println!("quota\t{root}\t{}", limits.join(" "));
    }
    for script in s.sieve.values() {
        let active = s.sieve_active.as_ref() == Some(&script.name);
        println!(
            "sieve\t{}\t{} bytes{}",
            script.name,
            script.content.len(),
            if active { "\tactive" } else { "" }
        );
    }
    for d in &s.deleted {
        println!(
            "deleted\t{}\t{}\tat={}",
            d.name,
            d.uniqueid.to_lossy(),
            d.at
        );
    }
    ExitCode::SUCCESS
}

fn verify(b: &Backup, only: &[String]) -> ExitCode {
    let users: Vec<Option<UserId>> = if only.is_empty() {
        match b.users() {
            Ok(u) => u.into_iter().map(|(u, _)| u).collect(),
            Err(e) => {
                eprintln!("backup verify: {e}");
                return ExitCode::from(74);
            }
        }
    } else {
        let mut v = Vec::new();
        for u in only {
            match user_id("backup verify", u) {
                Ok(u) => v.push(Some(u)),
                Err(c) => return c,
            }
        }
        v
    };
    let mut bad = 0usize;
    for u in users {
        let mut pb: Option<indicatif::ProgressBar> = None;
        let name = user_text(&u);
        let rep = b.verify(u.as_ref(), &mut |done, total| {
            if pb.is_none() && done == 1 {
                pb = bar(total, &format!("verify {name}"));
            }
            if let Some(p) = &pb {
                p.set_position(done);
            }
        });
        if let Some(p) = pb {
            p.finish_and_clear();
        }
        if rep.problems.is_empty() {
            println!(
                "{name}: OK ({} chunks, {} messages)",
                rep.chunks, rep.messages
            );
        } else {
            bad += 1;
            for p in &rep.problems {
                println!("{name}: {p}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Narrows a snapshot to what the restore asks for.
fn select(s: &mut Snapshot, r: &RestoreArgs) -> Result<(), String> {
    if !r.mailboxes.is_empty() {
        let names: Vec<MailboxName> = r
            .mailboxes
            .iter()
            .map(|n| MailboxName::new(n).map_err(|e| format!("mailbox {n:?}: {e}")))
            .collect::<Result<_, _>>()?;
        for n in &names {
            if s.mailbox(n).map_err(|e| e.to_string())?.is_none() {
                return Err(format!("{n} is not in the backup at that time"));
            }
        }
        s.retain_mailboxes(|mb| names.contains(&mb.name));
    }
    if !r.uids.is_empty() {
        if r.mailboxes.len() != 1 {
            return Err("--uid needs exactly one --mailbox".into());
        }
        let uids: Vec<Uid> = r
            .uids
            .iter()
            .map(|u| Uid::new(*u).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        for recs in s.records.values_mut() {
            recs.retain(|uid, _| uids.contains(uid));
        }
    }
    for recs in s.records.values_mut() {
        if r.expunged {
            for rec in recs.values_mut() {
                rec.expunged = false;
            }
        } else {
            recs.retain(|_, rec| !rec.expunged);
        }
    }
    Ok(())
}

fn restore(conf: &Config, b: &Backup, r: RestoreArgs) -> ExitCode {
    let at = match r.at.as_deref().map(parse_time).transpose() {
        Ok(t) => t.unwrap_or(i64::MAX),
        Err(e) => {
            eprintln!("backup restore: {e}");
            return ExitCode::from(64);
        }
    };
    let user = match user_id("backup restore", &r.user) {
        Ok(u) => u,
        Err(c) => return c,
    };
    let mut s = match b.snapshot(Some(&user), at) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backup restore: {e}");
            return ExitCode::from(66);
        }
    };
    if s.mailboxes.is_empty() {
        eprintln!("backup restore: {user} has no mailboxes in the backup at that time");
        return ExitCode::from(66);
    }
    if let Err(e) = select(&mut s, &r) {
        eprintln!("backup restore: {e}");
        return ExitCode::from(64);
    }
    let user = match &r.as_user {
        None => user,
        Some(to) => {
            let to = match user_id("backup restore", to) {
                Ok(u) => u,
                Err(c) => return c,
            };
            if let Err(e) = s.rename_user(&to) {
                eprintln!("backup restore: --as {to}: {e}");
                return ExitCode::from(64);
            }
            to
        }
    };
    // Every message must be in the pack before anything is sent.
    let missing: Vec<Guid> = s
        .guids()
        .into_iter()
        .filter(|(g, _)| !b.pack().has(g))
        .map(|(g, _)| g)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "backup restore: {} message(s) the backup names are not in its pack (first {}): run `corvid backup verify`",
            missing.len(),
            missing[0].to_hex()
        );
        return ExitCode::from(65);
    }
    let whole_user = r.mailboxes.is_empty();
    let result = match (&r.to, &r.maildir) {
        (Some(server), None) => csync_restore(conf, s, &user, whole_user, server),
        (None, Some(dir)) => maildir_restore(s, &user, dir),
        _ => {
            eprintln!("backup restore: say where: --to HOST:PORT or --maildir DIR");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(n) => {
            println!("restored {n} mailbox(es) of {user}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backup restore: {e}");
            ExitCode::from(75)
        }
    }
}

fn credentials(conf: &Config) -> Result<proto::sasl::Credentials, String> {
    let key = |a: &str, b: &str| {
        conf.get_str(a)
            .or_else(|| conf.get_str(b))
            .map(str::to_owned)
    };
    let (Some(authname), Some(password)) = (
        key("restore_authname", "sync_authname"),
        key("restore_password", "sync_password"),
    ) else {
        return Err("no restore_authname/restore_password (or sync_*) in the config".into());
    };
    Ok(proto::sasl::Credentials {
        authzid: None,
        authcid: authname,
        password: proto::sasl::Secret::new(password.into_bytes()),
    })
}

/// The client machine never writes locally here (`-O`): every store
/// effect is refused.
struct NoWrites;

impl io_tokio::driver::EffectExecutor<engine::csync_client::Effect> for NoWrites {
    type Completion = engine::csync_client::Completion;

    fn execute(
        &self,
        effect: engine::csync_client::Effect,
    ) -> impl std::future::Future<Output = Self::Completion> + Send {
        let engine::csync_client::Effect::Store(e) = effect;
        let batch_id = match &e {
            engine::store::StoreEffect::Write(b) => b.id,
            _ => engine::store::BatchId(0),
        };
        async move {
            engine::csync_client::Completion::Store(engine::store::Completion::Failed {
                batch_id,
                error: engine::store::StoreError::Io("a restore never writes to the backup".into()),
            })
        }
    }
}

/// Sends the snapshot with the replication client machine: `USER` for a
/// whole user (mailboxes, quota, subscriptions, Sieve, seen), else
/// `MAILBOXES` for the chosen ones and then `META` for seen and
/// subscriptions.
fn csync_restore(
    conf: &Config,
    s: Snapshot,
    user: &UserId,
    whole_user: bool,
    server: &str,
) -> Result<usize, String> {
    use engine::csync_client::{Client, Command, Event, Options};
    let mut opts = Options::new(credentials(conf)?);
    opts.no_copyback = true;
    let names: Vec<MailboxName> = {
        let mut v: Vec<MailboxName> = s.mailboxes.values().map(|m| m.name.clone()).collect();
        v.sort();
        v
    };
    let n = names.len();
    let mut jobs = if whole_user {
        vec![Command::User(user.clone())]
    } else {
        vec![
            Command::Mailboxes(names.clone()),
            Command::Meta(user.clone()),
        ]
    };
    let njobs = jobs.len();
    jobs.push(Command::Exit);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| format!("connect {server}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let machine = Client::new(engine::machine::Time::ZERO, s, opts);
        let (ctx, crx) = tokio::sync::mpsc::channel(16);
        let (etx, mut erx) = tokio::sync::mpsc::channel(256);
        for j in jobs {
            ctx.send(j).await.map_err(|_| "machine gone")?;
        }
        let driver = io_tokio::driver::Driver::new(machine, NoWrites)
            .epoch(tokio::time::Instant::now())
            .peer(server)
            .commands(crx)
            .events(etx)
            .run(stream);
        let pb = bar(n as u64, "restore");
        let watch = async {
            let mut failed = Vec::new();
            let mut done = 0;
            while let Some(e) = erx.recv().await {
                match e {
                    Event::MailboxSynced { .. } | Event::MailboxUnchanged(_) => {
                        if let Some(p) = &pb {
                            p.inc(1);
                        }
                    }
                    Event::JobDone { job, result } => {
                        done += 1;
                        if let Err(e) = result {
                            failed.push(format!("{job}: {e}"));
                        }
                    }
                    _ => {}
                }
            }
            (done, failed)
        };
        let (out, (done, failed)) = tokio::join!(driver, watch);
        if let Some(p) = pb {
            p.finish_and_clear();
        }
        drop(ctx);
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        if done < njobs {
            return Err(format!(
                "connection ended after {done} of {njobs} job(s): {:?}",
                out.result
            ));
        }
        Ok(n)
    })
}

/// Writes the snapshot into a Maildir++: mailboxes, messages, flags, the
/// user's seen state (as Dovecot's `S` flag: Maildir has no per-user seen
/// list, so seen UIDs are marked `\Seen`), subscriptions (Maildir++
/// `subscriptions`), Sieve scripts beside the Maildir and the quota root
/// as `maildirsize` ([`write_sieve`], [`write_quota`]). Annotations have
/// no Maildir form and are reported, not written.
fn maildir_restore(s: Snapshot, user: &UserId, dir: &std::path::Path) -> Result<usize, String> {
    use engine::store::{BatchId, Mutation, StoreWrite, WriteBatch};
    let md = store::maildir::Maildir::open(dir, store::maildir::Options::default())
        .map_err(|e| e.to_string())?;
    let mut us = store::maildir::UserStore::new(md, user.clone());
    let mut batch = WriteBatch::new(BatchId(1));
    let mut n = 0;
    let guids = s.guids();
    for (g, size) in &guids {
        if us.has_message(g).map_err(|e| e.to_string())? {
            continue;
        }
        let h = us.stage_begin(*g, *size).map_err(|e| e.to_string())?;
        let mut off = 0u64;
        while off < *size {
            let chunk = s
                .message_bytes(g, off, 1 << 20)
                .map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                break;
            }
            us.stage_chunk(h, &chunk).map_err(|e| e.to_string())?;
            off += chunk.len() as u64;
        }
        us.stage_end(h).map_err(|e| e.to_string())?;
        batch.push(Mutation::LinkMessage {
            guid: *g,
            size: *size,
        });
    }
    let mut mbs: Vec<_> = s.mailboxes.values().cloned().collect();
    mbs.sort_by(|a, b| a.name.cmp(&b.name));
    for mb in mbs {
        let mut mb = mb;
        mb.name = maildir_name(&mb.name, user)?;
        mb.acl = Default::default();
        mb.annotations = Default::default();
        mb.quotaroot = None;
        let seen = s.seen.get(&mb.uniqueid);
        let records: Vec<_> = s
            .records
            .get(&mb.uniqueid)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let records: Vec<_> = records
            .into_iter()
            .map(|mut r: engine::model::Record| {
                if seen.is_some_and(|sn| sn.seenuids.contains(r.uid.get())) {
                    r.flags.system.insert(engine::model::SystemFlags::SEEN);
                }
                r
            })
            .collect();
        // Into an existing mailbox of that name: its identity, and the
        // restored messages appended after its last UID (never over one).
        let mut next_uid = None;
        if let Some(have) = us.mailbox(&mb.name).map_err(|e| e.to_string())? {
            next_uid = Some(have.last_uid + 1);
            mb.uniqueid = have.uniqueid;
            mb.guid = have.guid;
            mb.uidvalidity = have.uidvalidity;
            mb.last_uid = have.last_uid + records.len() as u32;
            mb.highestmodseq = mb.highestmodseq.max(have.highestmodseq);
        }
        let id = mb.uniqueid.clone();
        batch.push(Mutation::PutMailbox(mb));
        for (i, mut r) in records.into_iter().enumerate() {
            if let Some(first) = next_uid {
                r.uid = Uid::new(first + i as u32).map_err(|e| e.to_string())?;
            }
            r.annotations = Default::default();
            batch.push(Mutation::PutRecord {
                mailbox: id.clone(),
                record: r,
            });
        }
        n += 1;
    }
    for (name, sub) in &s.subs {
        let Ok(name) = maildir_name(name, user) else {
            continue;
        };
        batch.push(Mutation::SetSubscription {
            user: user.clone(),
            name,
            subscription: *sub,
        });
    }
    us.write(&batch).map_err(|e| e.to_string())?;
    us.sync().map_err(|e| e.to_string())?;
    if !s.sieve.is_empty() {
        let at = write_sieve(&s, dir)?;
        eprintln!(
            "backup restore: {} Sieve script(s) written to {} (Pigeonhole's default sieve = file:~/sieve;active=~/.dovecot.sieve)",
            s.sieve.len(),
            at.display()
        );
    }
    if let Some(line) = write_quota(&s, user, dir)? {
        eprintln!("backup restore: {line}");
    }
    let annotated = s
        .mailboxes
        .values()
        .filter(|m| !m.annotations.is_empty())
        .count();
    if annotated > 0 {
        eprintln!(
            "backup restore: annotations of {annotated} mailbox(es) not written (no Maildir form)"
        );
    }
    Ok(n)
}

/// Writes the Sieve scripts where Dovecot Pigeonhole looks by default,
/// taking the Maildir's parent as the home directory: `sieve/NAME.sieve`
/// and the symbolic link `.dovecot.sieve` to the active one (replaced if
/// present). Returns the script directory.
fn write_sieve(s: &Snapshot, maildir: &std::path::Path) -> Result<PathBuf, String> {
    let home = std::fs::canonicalize(maildir)
        .map_err(|e| format!("{}: {e}", maildir.display()))?
        .parent()
        .ok_or("the Maildir has no parent directory for sieve/")?
        .to_owned();
    let dir = home.join("sieve");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for sc in s.sieve.values() {
        let name = String::from_utf8_lossy(sc.name.as_bytes()).into_owned();
        let path = dir.join(format!("{name}.sieve"));
        std::fs::write(&path, &sc.content).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(active) = &s.sieve_active {
        let link = home.join(".dovecot.sieve");
        let tmp = home.join(".dovecot.sieve.corvid-tmp");
        let _ = std::fs::remove_file(&tmp);
        let target = format!("sieve/{}.sieve", String::from_utf8_lossy(active.as_bytes()));
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &link))
            .map_err(|e| format!("{}: {e}", link.display()))?;
    }
    Ok(dir)
}

/// Writes the user's own quota root (Cyrus `user.NAME`) as a Maildir++
/// `maildirsize`: the limit line (`<bytes>S,<count>C`) and the usage of
/// the restored messages. Dovecot's `maildir` quota backend keeps this
/// file up to date but takes the *limits* from its configuration
/// (`quota_rule`), so the line returned says which rule to set.
fn write_quota(
    s: &Snapshot,
    user: &UserId,
    maildir: &std::path::Path,
) -> Result<Option<String>, String> {
    use engine::model::QuotaResource;
    let Some(root) = engine::csync::wire::inbox_of(user) else {
        return Ok(None);
    };
    let Some(q) = s.quotas.get(&root) else {
        return Ok(None);
    };
    let storage_kib = q.limits.get(&QuotaResource::Storage).copied();
    let messages = q.limits.get(&QuotaResource::Message).copied();
    if storage_kib.is_none() && messages.is_none() {
        return Ok(None);
    }
    let mut def = Vec::new();
    if let Some(k) = storage_kib {
        def.push(format!("{}S", k * 1024));
    }
    if let Some(m) = messages {
        def.push(format!("{m}C"));
    }
    let live = s.records.values().flat_map(|r| r.values());
    let (bytes, count) = live.fold((0u64, 0u64), |(b, c), r| (b + r.size, c + 1));
    let text = format!("{}\n{bytes} {count}\n", def.join(","));
    let path = maildir.join("maildirsize");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rule = String::from("quota_rule = *:");
    let mut parts = Vec::new();
    if let Some(k) = storage_kib {
        parts.push(format!("storage={k}K"));
    }
    if let Some(m) = messages {
        parts.push(format!("messages={m}"));
    }
    rule.push_str(&parts.join(":"));
    Ok(Some(format!(
        "quota root {root} written to {} ({}); Dovecot reads its limits from its config: set `{rule}` for {user}",
        path.display(),
        def.join(",")
    )))
}

/// A Cyrus internal name of `user`'s (`user.alice.Work`, `^` for a dot,
/// modified UTF-7) as the Maildir++ user sees it (`Work`, `INBOX`).
fn maildir_name(name: &MailboxName, user: &UserId) -> Result<MailboxName, String> {
    let inbox = engine::csync::wire::inbox_of(user).ok_or("user has no INBOX name")?;
    let n = name.as_bytes();
    let rest = if n == inbox.as_bytes() {
        return MailboxName::new("INBOX").map_err(|e| e.to_string());
    } else if n.starts_with(inbox.as_bytes()) && n.get(inbox.as_bytes().len()) == Some(&b'.') {
        &n[inbox.as_bytes().len() + 1..]
    } else {
        return Err(format!("{name} is not one of {user}'s mailboxes"));
    };
    let text = String::from_utf8_lossy(rest).replace('.', "/");
    let utf8 = store::maildir::name::utf7_decode(&text).map_err(|e| format!("{name}: {e}"))?;
    MailboxName::new(utf8).map_err(|e| e.to_string())
}

/// `ctl_backups list|verify [USER…]` (Cyrus's name).
#[derive(Debug, Parser)]
#[command(name = "ctl_backups")]
struct CtlArgs {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// `list` or `verify`.
    action: String,
    /// Users (verify).
    users: Vec<String>,
}

pub fn ctl_backups_main(args: Vec<OsString>) -> ExitCode {
    let a: CtlArgs = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let (_, _, b) = match load("ctl_backups", &a.config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match a.action.as_str() {
        "list" => list(&b),
        "verify" => verify(&b, &a.users),
        other => {
            eprintln!("ctl_backups: unknown action {other:?} (list|verify)");
            ExitCode::from(64)
        }
    }
}

/// `cyr_backup -u USER [-t T] list mailboxes|messages` (Cyrus's name).
#[derive(Debug, Parser)]
#[command(name = "cyr_backup")]
struct CyrArgs {
    /// imapd.conf to read.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// The user whose backup to read.
    #[arg(short = 'u')]
    user: String,
    /// The point in time (default: the latest).
    #[arg(short = 't')]
    at: Option<String>,
    /// `list`.
    action: String,
    /// `mailboxes` or `messages`.
    what: String,
}

pub fn cyr_backup_main(args: Vec<OsString>) -> ExitCode {
    let a: CyrArgs = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let (_, _, b) = match load("cyr_backup", &a.config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    if a.action != "list" {
        eprintln!("cyr_backup: unknown action {:?} (list)", a.action);
        return ExitCode::from(64);
    }
    let at = match a.at.as_deref().map(parse_time).transpose() {
        Ok(t) => t.unwrap_or(i64::MAX),
        Err(e) => {
            eprintln!("cyr_backup: {e}");
            return ExitCode::from(64);
        }
    };
    let user = match user_id("cyr_backup", &a.user) {
        Ok(u) => u,
        Err(c) => return c,
    };
    let s = match b.snapshot(Some(&user), at) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cyr_backup: {e}");
            return ExitCode::from(66);
        }
    };
    let mut mbs: Vec<_> = s.mailboxes.values().collect();
    mbs.sort_by(|a, b| a.name.cmp(&b.name));
    match a.what.as_str() {
        "mailboxes" => {
            for mb in mbs {
                let n = s.records.get(&mb.uniqueid).map_or(0, |r| r.len());
                println!(
                    "{}\t{}\t{}\t{n}",
                    mb.uniqueid.to_lossy(),
                    mb.name,
                    mb.last_uid
                );
            }
        }
        "messages" => {
            for mb in mbs {
                for r in s
                    .records
                    .get(&mb.uniqueid)
                    .map(|r| r.values().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    println!(
                        "{}\t{}\t{}\t{}\t{}",
                        mb.name,
                        r.uid.get(),
                        r.guid.to_hex(),
                        r.size,
                        flags_text(r)
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
/// messages as `APPLY MESSAGE`, then `RESTORE MAILBOX` for each mailbox
/// (new UIDs; the user must exist there).
#[derive(Debug, Parser)]
#[command(name = "restore")]
struct Restore8Args {
    /// imapd.conf of the backup.
    #[arg(short = 'C', default_value = "/etc/imapd.conf")]
    config: PathBuf,
    /// The point in time to restore (default: the latest).
    #[arg(short = 't')]
    at: Option<String>,
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
    /// Mailboxes to restore (internal names); all if none.
    mailboxes: Vec<String>,
}

/// A minimal blocking csync client: enough for restore(8)'s commands.
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

pub fn restore_main(args: Vec<OsString>) -> ExitCode {
    use bytes::Bytes;
    use proto::dlist::{Item, KvList, Value};
    let a: Restore8Args = match parse(args) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let (conf, _, b) = match load("restore", &a.config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let creds = match credentials(&conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::from(78);
        }
    };
    let at = match a.at.as_deref().map(parse_time).transpose() {
        Ok(t) => t.unwrap_or(i64::MAX),
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::from(64);
        }
    };
    let user = match user_id("restore", &a.user) {
        Ok(u) => u,
        Err(c) => return c,
    };
    let mut s = match b.snapshot(Some(&user), at) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::from(66);
        }
    };
    let sel = RestoreArgs {
        user: a.user.clone(),
        at: None,
        mailboxes: a.mailboxes.clone(),
        uids: Vec::new(),
        expunged: a.expunged,
        to: None,
        maildir: None,
        as_user: None,
    };
    if let Err(e) = select(&mut s, &sel) {
        eprintln!("restore: {e}");
        return ExitCode::from(66);
    }
    let mut chosen: Vec<_> = s.mailboxes.values().cloned().collect();
    chosen.sort_by(|x, y| x.name.cmp(&y.name));
    if chosen.is_empty() {
        eprintln!("restore: nothing in {user}'s backup matches");
        return ExitCode::from(66);
    }
    if a.rename.is_some() && chosen.len() != 1 {
        eprintln!(
            "restore: -M needs exactly one mailbox ({} match)",
            chosen.len()
        );
        return ExitCode::from(64);
    }
    // Cyrus restore's "not -U" form: no UNIQUEID/UIDVALIDITY/
    // HIGHESTMODSEQ, so the server allocates and appends with new UIDs.
    let mut plans = Vec::new();
    for mb in &chosen {
        let full = engine::csync::wire::mailbox_kv(mb, Default::default(), None);
        let mut out = KvList::new();
        for (k, v) in full.iter() {
            let v = match &k[..] {
                b"UNIQUEID" | b"MBOXTYPE" | b"QUOTAROOT" => Value::Nil,
                b"UIDVALIDITY" | b"HIGHESTMODSEQ" => Value::Atom(Bytes::from_static(b"0")),
                b"MBOXNAME" => match &a.rename {
                    Some(n) => Value::Atom(Bytes::from(n.clone())),
                    None => v.clone(),
                },
                b"SYNC_CRC" | b"SYNC_CRC_ANNOT" | b"CREATEDMODSEQ" | b"FOLDERMODSEQ" => continue,
                _ => v.clone(),
            };
            out.push(k.clone(), v);
        }
        let records: Vec<Value> = s
            .records
            .get(&mb.uniqueid)
            .map(|r| r.values().map(engine::csync::wire::record_kv).collect())
            .unwrap_or_default();
        out.push("RECORD", Value::List(records));
        plans.push((mb.name.to_lossy(), mb.partition.to_lossy(), out));
    }
    let guids = s.guids();
    let run = || -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let st = std::net::TcpStream::connect(&a.server)
            .map_err(|e| format!("connect {}: {e}", a.server))?;
        let mut w = Wire {
            s: st,
            buf: Vec::new(),
        };
        let (_, greeting) = w.status().map_err(io)?;
        if !greeting.starts_with("* OK") {
            return Err(format!("server greeting: {greeting}"));
        }
        let mut ir = vec![0u8];
        ir.extend_from_slice(creds.authcid.as_bytes());
        ir.push(0);
        ir.extend_from_slice(creds.password.expose());
        let (_, st) = w
            .send(format!("AUTHENTICATE PLAIN {}\r\n", base64(&ir)).as_bytes())
            .map_err(io)?;
        if !st.starts_with("OK") {
            return Err(format!("AUTHENTICATE: {st}"));
        }
        let part = plans[0].1.clone();
        let names: Vec<Value> = plans
            .iter()
            .map(|p| p.2.get("MBOXNAME").cloned().unwrap_or(Value::Nil))
            .collect();
        let reserve = KvList::new()
            .with("PARTITION", Value::string(Bytes::from(part.clone())))
            .with("MBOXNAME", Value::List(names))
            .with(
                "GUID",
                Value::List(
                    guids
                        .iter()
                        .map(|(g, _)| Value::Atom(Bytes::from(g.to_hex())))
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
        for (g, size) in guids.iter().filter(|(g, _)| missing.contains(&g.to_hex())) {
            let bytes = s
                .message_bytes(g, 0, *size as usize)
                .map_err(|e| format!("message {}: {e}", g.to_hex()))?;
            let mut line = format!(
                "APPLY MESSAGE (%{{{part} {} {}}}\r\n",
                g.to_hex(),
                bytes.len()
            )
            .into_bytes();
            line.extend_from_slice(&bytes);
            line.extend_from_slice(b")\r\n");
            let (_, st) = w.send(&line).map_err(io)?;
            if !st.starts_with("OK") {
                return Err(format!("APPLY MESSAGE {}: {st}", g.to_hex()));
            }
        }
        for (name, _, p) in plans {
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

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_as_unix_seconds_or_utc() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(parse_time("2000-03-01 00:00:00"), Ok(951_868_800));
        assert!(parse_time("yesterday").is_err());
    }
}
