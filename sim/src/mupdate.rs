//! MUPDATE under faults: a master, several backends writing to it and
//! several UPDATE subscribers following it, with partitions and master
//! crashes.
//!
//! ```text
//!   b0 ─┐ RESERVE/ACTIVATE/DELETE          ┌─ s0  Follower (engine) ─▶ view
//!   b1 ─┼────────────▶ master ─── UPDATE ──┼─ s1  Follower (engine) ─▶ view
//!   b2 ─┘   engine::mupdate::Server        └─ …
//!           per connection, in io_tokio's Driver;
//!           SimDisk: live / pending / durable
//! ```
//!
//! The master runs `engine::mupdate::Server` per connection and the
//! subscribers run `engine::mupdate::follower::Follower`, both inside the
//! real `io_tokio::driver::Driver` over turmoil streams. What the daemon
//! (`corvid mupdate -m`) does around them is played here by [`SimDisk`]:
//! decide under one lock (`Database::decide`), stage the change, wait a
//! simulated fsync, make every staged change durable in order, publish to
//! subscribers, and only then complete the write with a `Committed` token.
//! A master crash drops what was staged but not durable, and its
//! subscribers' channels, exactly as losing the process would.
//!
//! Backends are scripted clients (encoders and parsers from `proto::mupdate`)
//! because the engine has no MUPDATE backend machine; each owns its own
//! names, so the ledger can say what each name must hold:
//! - the state after the last write answered `OK`, or
//! - the state of a write sent after it whose answer never came (it may or
//!   may not have been committed).
//!
//! Checked after every step: the master's durable database agrees with the
//! ledger for every name. Checked at the end, after healing: every
//! subscriber's view equals the master's durable database, which still
//! agrees with the ledger, and every write eventually got an answer.
//!
//! What it never does: check wire bytes against Cyrus (the live tests in
//! `bins` do), or model disk corruption (only loss of the un-synced tail).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use engine::machine::Time;
use engine::mupdate::follower::{self, Follower};
use engine::mupdate::{
    AuthOk, Change, Command, Committed, Completion, Database, Effect, Entry, Options, Read, Record,
    Server, State, Write,
};
use io_tokio::driver::{Driver, EffectExecutor};
use proto::frame::{Event as FrameEvent, Framer};
use proto::mupdate::{parse_response, Command as Cmd, Form, Response, Status};
use proto::sasl::Secret;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::Trace;

const PORT: u16 = 3905;
const MASTER: &str = "master";
const PASSWORD: &[u8] = b"simsecret";

/// The knobs of one world. [`Config::from_seed`] picks them from the seed
/// (swarm testing: different seeds, different worlds).
#[derive(Debug, Clone)]
pub struct Config {
    /// Backends writing.
    pub backends: usize,
    /// Subscribers following.
    pub subscribers: usize,
    /// Writes each backend sends.
    pub writes_per_backend: usize,
    /// Names each backend owns.
    pub names_per_backend: usize,
    /// Longest pause a backend takes before a write.
    pub think_ms_max: u64,
    /// Largest one-way network latency.
    pub latency_max: Duration,
    /// Largest simulated fsync of the master's store.
    pub commit_delay_max: Duration,
    /// How often the fault schedule rolls its dice.
    pub fault_interval: Duration,
    /// Chance per roll of partitioning one host from the master.
    pub partition_chance: f64,
    /// Chance per roll of crashing the master.
    pub crash_chance: f64,
    /// Phase 1 ends here even if backends are not finished.
    pub faults_for: Duration,
    /// Phase 2 (healed) must converge within this.
    pub converge_within: Duration,
}

impl Config {
    /// A world chosen by `rng`: 2–4 backends, 1–3 subscribers, latencies,
    /// fault rates.
    pub fn from_seed(seed: u64) -> Config {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d75_7064_6174_6521);
        Config {
            backends: rng.gen_range(2..=4),
            subscribers: rng.gen_range(1..=3),
            writes_per_backend: rng.gen_range(15..=40),
            names_per_backend: rng.gen_range(2..=5),
            think_ms_max: rng.gen_range(50..=400),
            latency_max: Duration::from_millis(rng.gen_range(1..=40)),
            commit_delay_max: Duration::from_millis(rng.gen_range(1..=30)),
            fault_interval: Duration::from_millis(250),
            partition_chance: rng.gen_range(0.0..0.3),
            crash_chance: rng.gen_range(0.0..0.15),
            faults_for: Duration::from_secs(60),
            converge_within: Duration::from_secs(60),
        }
    }
}

/// What one run produced.
#[derive(Clone)]
pub struct Report {
    /// Hash of the whole trace ([`Trace::hash`]).
    pub trace_hash: u64,
    /// The trace itself (for finding where two runs diverged).
    pub trace: Vec<String>,
    /// Writes answered `OK`.
    pub acked: usize,
    /// Writes answered `NO`.
    pub refused: usize,
    /// Writes whose answer never came.
    pub unanswered: usize,
    /// Master crashes injected.
    pub crashes: usize,
    /// Partitions injected.
    pub partitions: usize,
    /// Entries in the master's final durable database.
    pub final_entries: usize,
    /// Simulated time the run took.
    pub elapsed: Duration,
}

/// The master's store as the daemon keeps it, with a crash that loses the
/// un-synced part.
///
/// `live` is what decisions and reads see (durable plus staged changes);
/// `staged` are decided changes waiting for the fsync; `durable` survives a
/// crash. Subscribers' channels live here because the daemon publishes
/// under the same lock it commits under.
#[derive(Default)]
pub struct SimDisk {
    live: Database,
    staged: Vec<Change>,
    durable: Database,
    subscribers: Vec<mpsc::Sender<Command>>,
    commits: u64,
}

impl SimDisk {
    /// Every staged change becomes durable, in decision order, and goes to
    /// every subscriber.
    fn sync(&mut self) {
        for change in std::mem::take(&mut self.staged) {
            self.durable.apply(&change);
            self.commits += 1;
            let change = Arc::new(change);
            // A full channel is a lagging subscriber: the daemon drops it
            // (the session ends and the slave reconnects for a fresh dump).
            self.subscribers
                .retain(|tx| tx.try_send(Command::Change(change.clone())).is_ok());
        }
    }

    /// The process died: staged changes and subscriptions are gone; the
    /// restarted process reads the durable state.
    fn crash(&mut self) {
        self.staged.clear();
        self.subscribers.clear();
        self.live = self.durable.clone();
    }

    /// The durable database as a map (for comparisons).
    pub fn durable(&self) -> BTreeMap<Bytes, Record> {
        entries(&self.durable)
    }
}

fn entries(db: &Database) -> BTreeMap<Bytes, Record> {
    db.iter().map(|(n, r)| (n.clone(), r.clone())).collect()
}

/// The master's database handle for FIND/LIST.
#[derive(Clone)]
struct LiveRead(Arc<Mutex<SimDisk>>);

impl Read for LiveRead {
    fn find(&self, name: &[u8]) -> Option<Record> {
        self.0.lock().unwrap().live.find(name).cloned()
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        self.0.lock().unwrap().live.list(prefix)
    }
}

/// One master connection's effects, as the daemon performs them.
struct MasterExec {
    disk: Arc<Mutex<SimDisk>>,
    commands: mpsc::Sender<Command>,
    commit_delay: Duration,
}

impl EffectExecutor<Effect> for MasterExec {
    type Completion = Completion;
    async fn execute(&self, effect: Effect) -> Completion {
        match effect {
            Effect::Authenticate(creds) => {
                let ok = creds.password.expose() == PASSWORD;
                Completion::Auth(ok.then(|| AuthOk {
                    userid: creds.effective_id().to_owned(),
                    admin: true,
                }))
            }
            Effect::Write(write) => {
                let decided = {
                    let mut d = self.disk.lock().unwrap();
                    let decided = d.live.decide(&write);
                    if let Ok(change) = &decided {
                        d.live.apply(change);
                        d.staged.push(change.clone());
                    }
                    decided
                };
                match decided {
                    Err(refusal) => Completion::Written(Err(refusal)),
                    Ok(_) => {
                        // The fsync. A crash while we sleep drops this task
                        // with the host: the write is never answered.
                        tokio::time::sleep(self.commit_delay).await;
                        self.disk.lock().unwrap().sync();
                        Completion::Written(Ok(Committed::after_commit()))
                    }
                }
            }
            Effect::Subscribe { hosts } => {
                let mut d = self.disk.lock().unwrap();
                // Staged changes will be published when they sync, so the
                // dump is the durable state: nothing missed, nothing twice.
                d.subscribers.push(self.commands.clone());
                Completion::Subscribed(d.durable.dump(&hosts))
            }
            // Kicks are a slave's (its NOOP flushing the upstream); this is
            // a master.
            #[allow(unreachable_patterns)]
            _ => unreachable!("a master session never asks for a kick"),
        }
    }
}

/// A subscriber's local copy, kept by its follower's effects.
struct SubscriberExec {
    view: Arc<Mutex<BTreeMap<Bytes, Record>>>,
}

impl EffectExecutor<follower::Effect> for SubscriberExec {
    type Completion = follower::Completion;
    async fn execute(&self, effect: follower::Effect) -> follower::Completion {
        let mut view = self.view.lock().unwrap();
        match effect {
            follower::Effect::Replace(dump) => {
                *view = dump.into_iter().map(|e| (e.name, e.record)).collect();
            }
            follower::Effect::Apply { name, record } => match record {
                Some(r) => {
                    view.insert(name, r);
                }
                None => {
                    view.remove(&name);
                }
            },
        }
        follower::Completion::Done
    }
}

/// What each name may hold, from what backends were told.
#[derive(Debug, Default)]
struct NameLedger {
    /// The state after the last `OK` (`None`: absent, as at the start).
    acked: Option<Record>,
    /// States of writes sent after it and not refused: in flight, or never
    /// answered. Any of them may be what the master committed.
    maybe: Vec<Option<Record>>,
}

/// Every write a backend sent and what it was told.
#[derive(Default)]
pub struct Ledger {
    names: BTreeMap<Bytes, NameLedger>,
    acked: usize,
    refused: usize,
    unanswered: usize,
}

impl Ledger {
    fn sent(&mut self, name: &Bytes, after: Option<Record>) {
        self.names
            .entry(name.clone())
            .or_default()
            .maybe
            .push(after);
    }
    fn ok(&mut self, name: &Bytes, after: Option<Record>) {
        let n = self.names.entry(name.clone()).or_default();
        n.acked = after;
        n.maybe.clear();
        self.acked += 1;
    }
    fn no(&mut self, name: &Bytes) {
        let n = self.names.entry(name.clone()).or_default();
        n.maybe.pop();
        self.refused += 1;
    }
    fn lost(&mut self) {
        self.unanswered += 1;
    }

    /// Nothing acknowledged is lost: each name in `durable` holds its last
    /// acknowledged state or that of a later unanswered write. Names the
    /// ledger does not know must not exist.
    pub fn check(&self, durable: &BTreeMap<Bytes, Record>) -> Result<(), String> {
        for (name, l) in &self.names {
            let have = durable.get(name).cloned();
            if have != l.acked && !l.maybe.contains(&have) {
                return Err(format!(
                    "{}: master holds {:?}; last OK said {:?}, unanswered writes {:?}",
                    String::from_utf8_lossy(name),
                    have,
                    l.acked,
                    l.maybe
                ));
            }
        }
        if let Some(stray) = durable.keys().find(|n| !self.names.contains_key(*n)) {
            return Err(format!(
                "master holds {} that no backend wrote",
                String::from_utf8_lossy(stray)
            ));
        }
        Ok(())
    }
}

/// The state `write` leaves its name in, if the master commits it.
pub(crate) fn result_of(write: &Write) -> Option<Record> {
    match write {
        Write::Reserve { location, .. } => Some(Record {
            state: State::Reserved,
            location: location.clone(),
        }),
        Write::Activate { location, acl, .. } => Some(Record {
            state: State::Active { acl: acl.clone() },
            location: location.clone(),
        }),
        Write::Deactivate { location, .. } => Some(Record {
            state: State::Reserved,
            location: location.clone(),
        }),
        Write::Delete { .. } => None,
    }
}

/// The wire command of a write (also the tier-1 backend's).
pub(crate) fn command_of(write: &Write) -> Cmd {
    match write.clone() {
        Write::Reserve { name, location } => Cmd::Reserve { name, location },
        Write::Activate {
            name,
            location,
            acl,
        } => Cmd::Activate {
            name,
            location,
            acl,
        },
        Write::Deactivate { name, location } => Cmd::Deactivate { name, location },
        Write::Delete { name } => Cmd::Delete { name },
    }
}

/// Backend `b`'s workload, chosen from the seed before the run.
/// Each write comes with the pause before it, so the workload spans the
/// fault schedule instead of finishing before the first fault.
fn workload(rng: &mut ChaCha8Rng, b: usize, cfg: &Config) -> Vec<(Duration, Write)> {
    let location = Bytes::from(format!("b{b}!default"));
    (0..cfg.writes_per_backend)
        .map(|_| {
            let pause = Duration::from_millis(rng.gen_range(0..=cfg.think_ms_max));
            let name = Bytes::from(format!(
                "user.b{b}.m{}",
                rng.gen_range(0..cfg.names_per_backend)
            ));
            let write = match rng.gen_range(0..10) {
                0..=2 => Write::Reserve {
                    name,
                    location: location.clone(),
                },
                3..=6 => Write::Activate {
                    name,
                    location: location.clone(),
                    acl: Bytes::from(format!("b{b}\tlrswipkxtecda\t{}\t", rng.gen_range(0..100))),
                },
                7 => Write::Deactivate {
                    name,
                    location: location.clone(),
                },
                _ => Write::Delete { name },
            };
            (pause, write)
        })
        .collect()
}

/// A scripted MUPDATE backend connection: PLAIN login, then one write at a
/// time, each answered or timed out.
struct BackendConn {
    stream: turmoil::net::TcpStream,
    framer: Framer,
    tag: u64,
}

/// How long a backend waits for any one answer before giving up on the
/// connection (a partition or a dead master).
const ANSWER_WAIT: Duration = Duration::from_secs(3);

impl BackendConn {
    async fn open(b: usize) -> Result<BackendConn, String> {
        let stream = tokio::time::timeout(
            ANSWER_WAIT,
            turmoil::net::TcpStream::connect((MASTER, PORT)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let mut c = BackendConn {
            stream,
            framer: Framer::new(proto::mupdate::client_frame_options()),
            tag: 0,
        };
        loop {
            match c.next().await? {
                Response::Ready { .. } => break,
                _ => continue,
            }
        }
        let initial = base64_plain(&format!("b{b}"), PASSWORD);
        let login = Cmd::Authenticate {
            mechanism: Bytes::from_static(b"PLAIN"),
            initial: Some(Bytes::from(initial)),
        };
        match c.call(&login).await? {
            Status::Ok => Ok(c),
            s => Err(format!("login answered {s:?}")),
        }
    }

    async fn call(&mut self, cmd: &Cmd) -> Result<Status, String> {
        self.tag += 1;
        let tag = format!("X{}", self.tag);
        self.stream
            .write_all(&cmd.encode(tag.as_bytes(), Form::NonSync))
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            if let Response::Reply(r) = self.next().await? {
                if r.tag.as_ref() == tag.as_bytes() {
                    return Ok(r.status);
                }
            }
        }
    }

    async fn next(&mut self) -> Result<Response, String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.framer.poll_event() {
                Ok(Some(FrameEvent::Message(m))) => {
                    return parse_response(&m).map_err(|e| format!("bad response: {e}"))
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(format!("framing: {e}")),
            }
            let n = tokio::time::timeout(ANSWER_WAIT, self.stream.read(&mut buf))
                .await
                .map_err(|_| "no answer".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("master closed".into());
            }
            self.framer.handle_input(&buf[..n]);
        }
    }
}

fn base64_plain(user: &str, password: &[u8]) -> String {
    let mut raw = Vec::new();
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password);
    base64_encode(&raw)
}

fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn backend(
    b: usize,
    writes: Vec<(Duration, Write)>,
    ledger: Arc<Mutex<Ledger>>,
    trace: Trace,
) -> turmoil::Result {
    let mut conn: Option<BackendConn> = None;
    for (i, (pause, write)) in writes.iter().enumerate() {
        tokio::time::sleep(*pause).await;
        // Reconnect until the master takes us (it may be down or cut off).
        while conn.is_none() {
            match BackendConn::open(b).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    trace.here(format!("b{b} connect failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let name = write.name().clone();
        let after = result_of(write);
        ledger.lock().unwrap().sent(&name, after.clone());
        let verdict = c.call(&command_of(write)).await;
        let mut l = ledger.lock().unwrap();
        let shown = String::from_utf8_lossy(&name).into_owned();
        match verdict {
            Ok(Status::Ok) => {
                l.ok(&name, after);
                trace.here(format!("b{b} #{i} {shown} OK"));
            }
            Ok(Status::No) => {
                l.no(&name);
                trace.here(format!("b{b} #{i} {shown} NO"));
            }
            Ok(s) => panic!("b{b} write #{i} answered {s:?}: a backend's writes are well formed"),
            Err(e) => {
                l.lost();
                trace.here(format!("b{b} #{i} {shown} unanswered: {e}"));
                conn = None;
            }
        }
    }
    trace.here(format!("b{b} done"));
    Ok(())
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("trace_hash", &self.trace_hash)
            .field("trace_lines", &self.trace.len())
            .field("acked", &self.acked)
            .field("refused", &self.refused)
            .field("unanswered", &self.unanswered)
            .field("crashes", &self.crashes)
            .field("partitions", &self.partitions)
            .field("final_entries", &self.final_entries)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// Runs one world from `seed` and checks it; panics (with the trace's tail)
/// on any violated invariant or missing convergence.
pub fn run(seed: u64) -> Report {
    run_with(seed, Config::from_seed(seed))
}

/// [`run`] with an explicit configuration.
pub fn run_with(seed: u64, cfg: Config) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let trace = Trace::default();
    trace.record(Duration::ZERO, format!("seed {seed} {cfg:?}"));
    let mut sim = turmoil::Builder::new()
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(cfg.latency_max.max(Duration::from_millis(1)))
        .enable_random_order()
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(cfg.faults_for + cfg.converge_within + Duration::from_secs(60))
        .build_with_rng(Box::new(ChaCha8Rng::seed_from_u64(rng.gen())));

    let disk = Arc::new(Mutex::new(SimDisk::default()));
    let commit_rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(rng.gen())));
    {
        let disk = disk.clone();
        let trace = trace.clone();
        let commit_delay_max = cfg.commit_delay_max;
        sim.host(MASTER, move || {
            let disk = disk.clone();
            let trace = trace.clone();
            let commit_rng = commit_rng.clone();
            async move {
                trace.here("master up");
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                loop {
                    let (stream, peer) = listener.accept().await?;
                    let (tx, rx) = mpsc::channel(4096);
                    let commit_delay = Duration::from_micros(
                        commit_rng
                            .lock()
                            .unwrap()
                            .gen_range(0..=commit_delay_max.as_micros() as u64),
                    );
                    let exec = MasterExec {
                        disk: disk.clone(),
                        commands: tx,
                        commit_delay,
                    };
                    let machine =
                        Server::new(Time::ZERO, LiveRead(disk.clone()), Options::default());
                    let trace = trace.clone();
                    tokio::spawn(async move {
                        let out = Driver::new(machine, exec)
                            .commands(rx)
                            .epoch(tokio::time::Instant::now())
                            .run(stream)
                            .await;
                        trace.here(format!("master conn {peer} ended: {:?}", out.result));
                    });
                }
            }
        });
    }

    let mut views = Vec::new();
    for s in 0..cfg.subscribers {
        let view = Arc::new(Mutex::new(BTreeMap::new()));
        views.push(view.clone());
        let trace = trace.clone();
        sim.host(format!("s{s}"), move || {
            let view = view.clone();
            let trace = trace.clone();
            async move {
                let mut attempt = 0u32;
                loop {
                    let stream = match tokio::time::timeout(
                        ANSWER_WAIT,
                        turmoil::net::TcpStream::connect((MASTER, PORT)),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        _ => {
                            attempt += 1;
                            tokio::time::sleep(follower::backoff(
                                Duration::from_millis(200),
                                attempt.min(4),
                                0.0,
                            ))
                            .await;
                            continue;
                        }
                    };
                    attempt = 0;
                    let mut opts = follower::Options::new("slave", Secret::new(PASSWORD));
                    // Notice a dead master within seconds, not Cyrus's 20 s.
                    opts.noop_interval = Duration::from_secs(1);
                    let machine = Follower::new(Time::ZERO, opts);
                    let exec = SubscriberExec { view: view.clone() };
                    let out = Driver::new(machine, exec)
                        .epoch(tokio::time::Instant::now())
                        .run(stream)
                        .await;
                    trace.here(format!("s{s} follower ended: {:?}", out.result));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for b in 0..cfg.backends {
        let writes = workload(&mut rng, b, &cfg);
        sim.client(
            format!("b{b}"),
            backend(b, writes, ledger.clone(), trace.clone()),
        );
    }

    let fail = |why: String, trace: &Trace| -> ! {
        panic!(
            "seed {seed}: {why}\n--- last trace lines ---\n{}",
            trace.tail(40)
        );
    };

    // Phase 1: workload under faults.
    let mut crashes = 0;
    let mut partitions = 0;
    let mut next_roll = cfg.fault_interval;
    let mut master_back_at: Option<Duration> = None;
    let mut repairs: Vec<(Duration, String)> = Vec::new();
    let mut hosts: Vec<String> = (0..cfg.backends).map(|b| format!("b{b}")).collect();
    hosts.extend((0..cfg.subscribers).map(|s| format!("s{s}")));
    loop {
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => fail(format!("a host failed: {e}"), &trace),
        };
        if let Err(why) = ledger
            .lock()
            .unwrap()
            .check(&disk.lock().unwrap().durable())
        {
            fail(why, &trace);
        }
        let now = sim.elapsed();
        if done || now >= cfg.faults_for {
            break;
        }
        if let Some(at) = master_back_at {
            if now >= at {
                sim.bounce(MASTER);
                trace.record(now, "fault: master restarted");
                master_back_at = None;
            }
        }
        repairs.retain(|(at, host)| {
            if now >= *at {
                sim.repair(MASTER, host.as_str());
                trace.record(now, format!("fault: {host} rejoined"));
                false
            } else {
                true
            }
        });
        if now >= next_roll {
            next_roll += cfg.fault_interval;
            if rng.gen_bool(cfg.partition_chance) {
                let host = hosts[rng.gen_range(0..hosts.len())].clone();
                if !repairs.iter().any(|(_, h)| *h == host) {
                    sim.partition(MASTER, host.as_str());
                    let back = now + Duration::from_millis(rng.gen_range(200..3000));
                    trace.record(now, format!("fault: {host} cut off from master"));
                    repairs.push((back, host));
                    partitions += 1;
                }
            }
            if master_back_at.is_none() && rng.gen_bool(cfg.crash_chance) {
                sim.crash(MASTER);
                disk.lock().unwrap().crash();
                crashes += 1;
                trace.record(now, "fault: master crashed");
                master_back_at = Some(now + Duration::from_millis(rng.gen_range(100..2000)));
            }
        }
    }

    // Phase 2: heal, let everything settle, then everything must agree.
    let healed_at = sim.elapsed();
    if master_back_at.take().is_some() {
        sim.bounce(MASTER);
    }
    for (_, host) in repairs.drain(..) {
        sim.repair(MASTER, host.as_str());
    }
    trace.record(healed_at, "healed");
    loop {
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => fail(format!("a host failed after healing: {e}"), &trace),
        };
        let durable = disk.lock().unwrap().durable();
        if let Err(why) = ledger.lock().unwrap().check(&durable) {
            fail(why, &trace);
        }
        let converged = done
            && disk.lock().unwrap().staged.is_empty()
            && views.iter().all(|v| *v.lock().unwrap() == durable);
        if converged {
            break;
        }
        if sim.elapsed() - healed_at > cfg.converge_within {
            let lagging: Vec<usize> = (0..views.len())
                .filter(|&s| *views[s].lock().unwrap() != durable)
                .collect();
            fail(
                format!(
                    "no convergence {:?} after healing: backends done {done}, subscribers differing {lagging:?}",
                    cfg.converge_within
                ),
                &trace,
            );
        }
    }
    let elapsed = sim.elapsed();
    let d = disk.lock().unwrap();
    trace.record(
        elapsed,
        format!(
            "converged: {} entries, {} commits",
            d.durable.len(),
            d.commits
        ),
    );
    let l = ledger.lock().unwrap();
    Report {
        trace_hash: trace.hash(),
        trace: trace.lines(),
        acked: l.acked,
        refused: l.refused,
        unanswered: l.unanswered,
        crashes,
        partitions,
        final_entries: d.durable.len(),
        elapsed,
    }
}
