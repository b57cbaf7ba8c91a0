//! `corvid dsync` and `corvid dsync-server`: Dovecot's dsync, on corvid's
//! stores, speaking Dovecot's own protocol (stream 3.5) so either side may
//! be real Dovecot.
//!
//! ```text
//! corvid dsync [-c config] [-o setting=value]... [-u user] [-m mailbox]
//!              [-f] [-R] [-s state] [-T secs] [-l secs] [-v] [-D] mirror|backup LOCATION2
//! corvid dsync-server [-c config] [-o setting=value]... [-u user] [-T secs] [-l secs]
//! ```
//!
//! `-T secs` (both sides, default 600 as Dovecot's): a peer that sends
//! nothing for that long while we wait for it ends the sync with exit 1
//! (0: wait forever).
//!
//! The local location is `-o mail_location=LOC` (or `mail_location` in the
//! `-c` file, `key = value` lines). Locations: `maildir:PATH` (a Dovecot
//! Maildir++ through `store::maildir::UserStore`, the one Maildir writer) and `corvid:PATH` (the embedded store, with
//! its index and messages under PATH). LOCATION2 is a location (both brains
//! run here), a command line run as a child whose stdin/stdout carry the
//! stream (`corvid dsync-server …`, `doveadm dsync-server -u user`), or
//! `host` / `user@host` (`ssh host corvid dsync-server [-u user]`).
//!
//! The user lock (rule 9 of `engine::dsync`): every run holds Dovecot's
//! `<home>/.dovecot-sync.lock` (fcntl, `store::maildir::lock::SyncLock`) on
//! each local store it opens, for the whole run, so two runs for one user
//! (corvid's, or a real `doveadm sync -l`) never interleave their writes.
//! `home` is the `mail_home` setting if given, else the location's
//! directory (`maildir:PATH`, `corvid:PATH`). Dovecot locks only with
//! `-l SECS`; corvid always locks, and `-l SECS` sets how long to wait for
//! a holder (default 30 s). Two local stores are locked in path order.
//!
//! Exit codes (man page): 0 synced perfectly; 2 synced, but something
//! changed meanwhile, run again; 1 failed; 75 (EX_TEMPFAIL, as doveadm's
//! for a temporary failure) when the user's lock stayed held. With `-s`
//! the new state is printed on stdout.
//!
//! The brains (`engine::dsync::Brain`) make every decision; this file
//! parses flags, opens stores, and moves bytes and store writes. The
//! driver here is a plain blocking loop (a reader thread per pipe, store
//! writes committed in order) rather than `io_tokio::driver`: a sync is one
//! conversation whose writes must apply in order, and the maildir adapter
//! is not `Send`-friendly async code.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::mpsc;

use engine::dsync::{Brain, Event, Mode, Options, Outcome, Role, SyncState};
use engine::machine::{EffectId, Machine, Output, Time};
use engine::model::{MailboxName, UnixTime, UserId};
use engine::store::{commit, Completion, StoreEffect, StoreWrite};

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    config: Option<PathBuf>,
    settings: BTreeMap<String, String>,
    user: Option<String>,
    mailbox: Option<String>,
    full: bool,
    reverse: bool,
    state: Option<String>,
    verbose: bool,
    debug: bool,
    /// `-T secs`: give up when the peer sends nothing for this long while
    /// we wait for it (Dovecot's dsync: 600 s); 0 waits forever.
    io_timeout_secs: u64,
    /// `-l secs`: how long to wait for another run's user lock.
    lock_timeout_secs: u64,
    rest: Vec<String>,
}

/// How long a run waits for the user's lock without `-l`.
const LOCK_TIMEOUT_SECS_DEFAULT: u64 = 30;

/// Exit code when the user's lock stayed held (doveadm's EX_TEMPFAIL).
const EXIT_LOCKED: u8 = 75;

/// Dovecot's default I/O timeout for a dsync stream (10 minutes).
const IO_TIMEOUT_SECS_DEFAULT: u64 = 600;

fn parse(args: Vec<OsString>) -> Result<Args, String> {
    let mut a = Args {
        io_timeout_secs: IO_TIMEOUT_SECS_DEFAULT,
        lock_timeout_secs: LOCK_TIMEOUT_SECS_DEFAULT,
        ..Args::default()
    };
    let mut it = args
        .into_iter()
        .skip(1)
        .map(|s| s.to_string_lossy().into_owned());
    while let Some(x) = it.next() {
        let mut val = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match x.as_str() {
            "-c" => a.config = Some(PathBuf::from(val("-c")?)),
            "-o" => {
                let kv = val("-o")?;
                let (k, v) = kv.split_once('=').ok_or("-o wants setting=value")?;
                a.settings
                    .insert(k.trim().to_string(), v.trim().to_string());
            }
            "-u" => a.user = Some(val("-u")?),
            "-m" => a.mailbox = Some(val("-m")?),
            "-s" => a.state = Some(val("-s")?),
            "-T" => {
                let v = val("-T")?;
                a.io_timeout_secs = v
                    .parse()
                    .map_err(|_| format!("-T wants seconds, got {v:?}"))?;
            }
            "-l" => {
                let v = val("-l")?;
                a.lock_timeout_secs = v
                    .parse()
                    .map_err(|_| format!("-l wants seconds, got {v:?}"))?;
            }
            "-C" => {
                val(&x)?;
            }
            "-f" => a.full = true,
            "-R" => a.reverse = true,
            "-v" => a.verbose = true,
            "-D" => {
                a.debug = true;
                a.verbose = true;
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => {
                a.rest.push(x);
                a.rest.extend(it.by_ref());
            }
        }
    }
    Ok(a)
}

impl Args {
    fn setting(&self, key: &str) -> Option<String> {
        if let Some(v) = self.settings.get(key) {
            return Some(v.clone());
        }
        let text = std::fs::read_to_string(self.config.as_ref()?).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    }

    fn user(&self) -> UserId {
        let u = self
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "corvid".into());
        UserId::new(u).unwrap_or_else(|_| UserId::new("corvid").expect("valid"))
    }
}

/// `corvid dsync`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let code = match run_master(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dsync: {e}");
            ExitCode::from(1)
        }
    };
    // operator: corvid_dsync_exits_total to $CORVID_METRICS_TEXTFILE if set.
    let n = if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    };
    crate::observe::finish_cli(Some(n));
    code
}

/// `corvid dsync-server`.
pub fn server_main(args: Vec<OsString>) -> ExitCode {
    match run_server(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dsync-server: {e}");
            ExitCode::from(1)
        }
    }
}

fn exit_code(o: &Outcome) -> ExitCode {
    if let Some(e) = &o.error {
        eprintln!("dsync: error: {e}");
        ExitCode::from(1)
    } else if o.changes_during_sync {
        eprintln!("dsync: Mailbox changes caused a desync. You may want to run dsync again.");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_master(args: Vec<OsString>) -> Result<ExitCode, String> {
    let a = parse(args)?;
    let (cmd, loc2) = match a.rest.as_slice() {
        [c, rest @ ..] if !rest.is_empty() => (c.as_str(), rest.to_vec()),
        _ => return Err("usage: dsync [options] mirror|backup LOCATION2".into()),
    };
    let mode = match (cmd, a.reverse) {
        ("mirror" | "sync", _) => Mode::TwoWay,
        ("backup", false) => Mode::BackupSend,
        ("backup", true) => Mode::BackupRecv,
        (other, _) => return Err(format!("unknown command {other} (mirror or backup)")),
    };
    let local = a
        .setting("mail_location")
        .ok_or("no local mail location: give -o mail_location=maildir:PATH or corvid:PATH")?;
    let user = a.user();
    let mut o = Options::new(Role::Master, user.clone());
    o.mode = mode;
    o.full = a.full;
    o.hostname = hostname();
    o.now = UnixTime(now());
    o.mailbox = a.mailbox.as_ref().and_then(|m| MailboxName::new(m).ok());
    if let Some(s) = &a.state {
        o.state = Some(SyncState::parse(s).map_err(|e| format!("-s: {e}"))?);
    }
    let progress = Progress::new(a.verbose);
    let both_local = loc2.len() == 1 && is_location(&loc2[0]);
    let mut homes = vec![lock_home(&a, &local)?];
    if both_local {
        // The second store's own directory (mail_home names the first's).
        homes.push(location_dir(&loc2[0])?);
    }
    let _locks = match lock_all(homes, &a) {
        Ok(l) => l,
        Err(Locked { msg, held }) => {
            eprintln!("dsync: {msg}");
            return Ok(ExitCode::from(if held { EXIT_LOCKED } else { 1 }));
        }
    };
    let local_store = open(&local, &user)?;
    let outcome = if both_local {
        let remote_store = open(&loc2[0], &user)?;
        let mut so = Options::new(Role::Slave, user.clone());
        so.hostname = o.hostname.clone();
        so.now = o.now;
        run_local_pair(o, local_store, so, remote_store, &progress)
    } else {
        let argv = remote_command(&loc2, &user.to_lossy());
        let timeout = io_timeout(&a);
        with_store(local_store, |st| {
            run_over_child(o, st, &argv, timeout, &progress)
        })?
    };
    if a.state.is_some() {
        println!(
            "{}",
            outcome
                .state
                .as_ref()
                .map(|s| s.to_state_string())
                .unwrap_or_default()
        );
    }
    progress.finish();
    Ok(exit_code(&outcome))
}

fn run_server(args: Vec<OsString>) -> Result<ExitCode, String> {
    let a = parse(args)?;
    let local = a
        .setting("mail_location")
        .or_else(|| std::env::var("CORVID_MAIL_LOCATION").ok())
        .ok_or("no mail location: give -o mail_location=maildir:PATH or corvid:PATH")?;
    let user = a.user();
    let mut o = Options::new(Role::Slave, user.clone());
    o.hostname = hostname();
    o.now = UnixTime(now());
    let _lock = match lock_all(vec![lock_home(&a, &local)?], &a) {
        Ok(l) => l,
        Err(Locked { msg, held }) => {
            eprintln!("dsync-server: {msg}");
            return Ok(ExitCode::from(if held { EXIT_LOCKED } else { 1 }));
        }
    };
    let st = open(&local, &user)?;
    let progress = Progress::new(false);
    let outcome = with_store(st, |st| {
        let (tx, rx) = mpsc::channel();
        spawn_reader(std::io::stdin(), tx);
        let mut out = std::io::stdout().lock();
        drive(
            Brain::new(o, st.clone()),
            st,
            rx,
            &mut out,
            io_timeout(&a),
            &progress,
        )
    })?;
    Ok(exit_code(&outcome))
}

fn is_location(s: &str) -> bool {
    s.starts_with("maildir:") || s.starts_with("corvid:")
}

/// LOCATION2 as a child command line. `host` or `login@host` becomes
/// Dovecot's default `dsync_remote_cmd` with corvid in doveadm's place:
/// `ssh [-l login] host corvid dsync-server -u user`, where `user` is the
/// user being synced (`-u`, else `$USER`).
fn remote_command(loc2: &[String], user: &str) -> Vec<String> {
    if loc2.len() == 1 && !loc2[0].contains(' ') && !loc2[0].contains('/') {
        let (login, host) = match loc2[0].split_once('@') {
            Some((l, h)) => (Some(l.to_string()), h.to_string()),
            None => (None, loc2[0].clone()),
        };
        let mut v = vec!["ssh".to_string()];
        if let Some(l) = login {
            v.push("-l".into());
            v.push(l);
        }
        v.extend([host, "corvid".into(), "dsync-server".into()]);
        v.push("-u".into());
        v.push(user.to_string());
        return v;
    }
    loc2.iter()
        .flat_map(|s| s.split_whitespace().map(str::to_string))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "corvid".into())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    verbose: bool,
}

impl Progress {
    fn new(verbose: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Progress { bar, verbose }
    }

    fn note(&self, n: &str) {
        if let Some(b) = &self.bar {
            b.set_message(n.to_string());
            b.inc(1);
        }
        if self.verbose {
            match &self.bar {
                Some(b) => b.println(format!("dsync: {n}")),
                None => eprintln!("dsync: {n}"),
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

// ----- the user lock -----

/// The user lock was not taken: `held` when someone else kept it for the
/// whole wait (a temporary failure), else it could not be created.
struct Locked {
    msg: String,
    held: bool,
}

/// The directory a location names (`maildir:PATH[:params]`, `corvid:PATH`).
fn location_dir(loc: &str) -> Result<PathBuf, String> {
    if let Some(p) = loc.strip_prefix("corvid:") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = loc.strip_prefix("maildir:") {
        return Ok(PathBuf::from(p.split(':').next().unwrap_or(p)));
    }
    Err(format!(
        "{loc}: unknown location (maildir:PATH or corvid:PATH)"
    ))
}

/// Where the local user's lock lives: `mail_home`, else the location's
/// directory.
fn lock_home(a: &Args, loc: &str) -> Result<PathBuf, String> {
    match a.setting("mail_home") {
        Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
        _ => location_dir(loc),
    }
}

/// Takes the user lock in each of `homes` (in path order, so two runs
/// over the same pair cannot each hold one and wait for the other).
fn lock_all(
    mut homes: Vec<PathBuf>,
    a: &Args,
) -> Result<Vec<store::maildir::lock::SyncLock>, Locked> {
    homes.sort();
    homes.dedup();
    let timeout = std::time::Duration::from_secs(a.lock_timeout_secs);
    let mut held = Vec::new();
    for home in homes {
        if let Err(e) = std::fs::create_dir_all(&home) {
            return Err(Locked {
                msg: format!("{}: {e}", home.display()),
                held: false,
            });
        }
        match store::maildir::lock::SyncLock::acquire(&home, timeout) {
            Ok(l) => held.push(l),
            Err(e) => {
                return Err(Locked {
                    msg: lock_error(&home, &e),
                    held: e.kind() == std::io::ErrorKind::TimedOut,
                })
            }
        }
    }
    Ok(held)
}

fn lock_error(home: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::TimedOut {
        e.to_string()
    } else {
        format!(
            "Couldn't create lock {}: {e}",
            home.join(store::maildir::lock::SYNC_LOCK_NAME).display()
        )
    }
}

// ----- stores -----

/// An opened local store.
enum Opened {
    Corvid(Box<store::embedded::Embedded>),
    Maildir(Box<store::maildir::UserStore>),
}

fn open(loc: &str, user: &UserId) -> Result<Opened, String> {
    if let Some(p) = loc.strip_prefix("corvid:") {
        let p = PathBuf::from(p);
        let mut parts = BTreeMap::new();
        parts.insert("default".to_string(), p.join("data"));
        let opts = store::embedded::Options::new(p.join("conf"), parts);
        return store::embedded::Embedded::open(opts)
            .map(|e| Opened::Corvid(Box::new(e)))
            .map_err(|e| format!("{loc}: {e}"));
    }
    if let Some(p) = loc.strip_prefix("maildir:") {
        let p = p.split(':').next().unwrap_or(p);
        let md = store::maildir::Maildir::open(PathBuf::from(p), Default::default())
            .map_err(|e| format!("{loc}: {e}"))?;
        return Ok(Opened::Maildir(Box::new(store::maildir::UserStore::new(
            md,
            user.clone(),
        ))));
    }
    Err(format!(
        "{loc}: unknown location (maildir:PATH or corvid:PATH)"
    ))
}

/// Both kinds behind one type: a store that reads and writes.
trait Store: StoreWrite {}
impl<T: StoreWrite> Store for T {}

fn with_store<R>(o: Opened, f: impl FnOnce(Rc<RefCell<Box<dyn Store>>>) -> R) -> Result<R, String> {
    let b: Box<dyn Store> = match o {
        Opened::Corvid(e) => e,
        Opened::Maildir(m) => m,
    };
    Ok(f(Rc::new(RefCell::new(b))))
}

type Shared = Rc<RefCell<Box<dyn Store>>>;

// ----- drivers -----

fn spawn_reader(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Option<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// `-T`: how long to wait for the peer's next bytes (`None`: forever).
fn io_timeout(a: &Args) -> Option<std::time::Duration> {
    (a.io_timeout_secs > 0).then(|| std::time::Duration::from_secs(a.io_timeout_secs))
}

fn run_over_child(
    o: Options,
    st: Shared,
    argv: &[String],
    io_timeout: Option<std::time::Duration>,
    progress: &Progress,
) -> Outcome {
    let (prog, args) = argv.split_first().expect("a command");
    let mut child = match Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                state: None,
                changes_during_sync: false,
                error: Some(format!("can't run {prog}: {e}")),
            }
        }
    };
    let (tx, rx) = mpsc::channel();
    spawn_reader(child.stdout.take().expect("piped"), tx);
    let mut stdin = child.stdin.take().expect("piped");
    let mut outcome = drive(
        Brain::new(o, st.clone()),
        st,
        rx,
        &mut stdin,
        io_timeout,
        progress,
    );
    drop(stdin);
    if outcome
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with(TIMED_OUT))
    {
        // A silent peer may never notice its stdin closing.
        let _ = child.kill();
    }
    match child.wait() {
        Ok(s) if s.success() => {}
        Ok(s) if s.code() == Some(2) => outcome.changes_during_sync = true,
        Ok(s) => {
            outcome
                .error
                .get_or_insert(format!("remote command exited with {s}"));
        }
        Err(e) => {
            outcome.error.get_or_insert(format!("remote command: {e}"));
        }
    }
    outcome
}

/// How a sync that gave up on a silent peer reports it.
const TIMED_OUT: &str = "timed out:";

/// One brain against a byte pipe. While the brain waits for the peer,
/// `io_timeout` without a single byte ends the sync with an error (exit
/// 1), as Dovecot's dsync does after its I/O timeout: a peer that stops
/// talking must not hold the process (and the user's mail) forever.
fn drive(
    mut brain: Brain<Shared>,
    st: Shared,
    rx: mpsc::Receiver<Option<Vec<u8>>>,
    out: &mut dyn Write,
    io_timeout: Option<std::time::Duration>,
    progress: &Progress,
) -> Outcome {
    let mut outcome = None;
    let mut broken = false;
    let now = Time::ZERO;
    // Bytes are gathered and written once per turn (before waiting for
    // the peer, or when a turn has gathered `FLUSH_AT`): one item per
    // write(2) cost a syscall and a wakeup of the peer per record line.
    // Sending later is always safe: an acknowledgement is only produced
    // after its writes are durable, whenever it leaves.
    const FLUSH_AT: usize = 256 * 1024;
    let mut pending: Vec<u8> = Vec::new();
    let mut flush = |pending: &mut Vec<u8>, broken: &mut bool| {
        if !*broken && !pending.is_empty() {
            *broken = out.write_all(pending).is_err() || out.flush().is_err();
        }
        pending.clear();
    };
    loop {
        let mut done: Vec<(EffectId, Completion)> = Vec::new();
        while let Some(o) = brain.poll_output() {
            match o {
                Output::Transmit(b) if !broken => {
                    pending.extend_from_slice(&b);
                    if pending.len() >= FLUSH_AT {
                        flush(&mut pending, &mut broken);
                    }
                }
                Output::Transmit(_) => {}
                Output::Effect { id, effect } => done.push((id, apply(&st, effect))),
                Output::Event(Event::Finished(o)) => outcome = Some(o),
                Output::Event(Event::Note(n)) => progress.note(&n),
                _ => {}
            }
        }
        if brain.is_closed() {
            flush(&mut pending, &mut broken);
            break;
        }
        if !done.is_empty() {
            for (id, c) in done {
                brain.handle_completion(now, id, c);
            }
            continue;
        }
        flush(&mut pending, &mut broken);
        let next = match io_timeout {
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => true,
                mpsc::RecvTimeoutError::Disconnected => false,
            }),
            None => rx.recv().map_err(|_| false),
        };
        match next {
            Ok(Some(b)) => brain.handle_input(now, &b),
            Ok(None) | Err(false) => brain.handle_eof(now),
            Err(true) => {
                let secs = io_timeout.map_or(0, |t| t.as_secs());
                return Outcome {
                    state: None,
                    changes_during_sync: false,
                    error: Some(format!(
                        "{TIMED_OUT} no input from the peer for {secs} s (-T {secs})"
                    )),
                };
            }
        }
    }
    outcome.unwrap_or(Outcome {
        state: None,
        changes_during_sync: false,
        error: Some("the sync ended without a result".into()),
    })
}

fn apply(st: &Shared, effect: StoreEffect) -> Completion {
    match effect {
        StoreEffect::Write(batch) => commit(&mut **st.borrow_mut(), &batch),
        other => panic!("dsync brains only write batches, got {other:?}"),
    }
}

/// Both brains here, bytes passed in memory.
fn run_local_pair(mo: Options, a: Opened, so: Options, b: Opened, progress: &Progress) -> Outcome {
    let boxed = |o: Opened| -> Shared {
        let b: Box<dyn Store> = match o {
            Opened::Corvid(e) => e,
            Opened::Maildir(m) => m,
        };
        Rc::new(RefCell::new(b))
    };
    let (sa, sb) = (boxed(a), boxed(b));
    let mut ma = Brain::new(mo, sa.clone());
    let mut mb = Brain::new(so, sb.clone());
    let now = Time::ZERO;
    let mut outcome: Option<Outcome> = None;
    let mut slave_error = None;
    loop {
        let mut progressed = false;
        for side in 0..2 {
            let (me, peer, st) = if side == 0 {
                (&mut ma, &mut mb, &sa)
            } else {
                (&mut mb, &mut ma, &sb)
            };
            let mut done = Vec::new();
            let mut bytes = Vec::new();
            while let Some(o) = me.poll_output() {
                progressed = true;
                match o {
                    Output::Transmit(b) => {
                        if std::env::var_os("CORVID_DSYNC_TRACE").is_some() {
                            eprintln!(
                                "{}> {:?}",
                                if side == 0 { "M" } else { "S" },
                                String::from_utf8_lossy(&b[..b.len().min(120)])
                            );
                        }
                        bytes.push(b)
                    }
                    Output::Effect { id, effect } => done.push((id, apply(st, effect))),
                    Output::Event(Event::Finished(o)) => {
                        if side == 0 {
                            outcome = Some(o)
                        } else if let Some(e) = o.error {
                            slave_error = Some(e);
                        }
                    }
                    Output::Event(Event::Note(n)) => progress.note(&n),
                    Output::Close(_) if !peer.is_closed() => {
                        for b in bytes.drain(..) {
                            peer.handle_input(now, &b);
                        }
                        peer.handle_eof(now);
                    }
                    _ => {}
                }
            }
            for b in bytes {
                if !peer.is_closed() {
                    peer.handle_input(now, &b);
                }
            }
            for (id, c) in done {
                me.handle_completion(now, id, c);
            }
        }
        // A brain may close inside the peer's turn with outputs still
        // queued: stop only once a whole round moved nothing.
        if !progressed {
            break;
        }
    }
    let mut o = outcome.unwrap_or(Outcome {
        state: None,
        changes_during_sync: false,
        error: Some("the local sync stalled".into()),
    });
    if let Some(e) = slave_error {
        o.error = Some(format!("location2: {e}"));
    }
    o
}
