//! MUPDATE on the tier-1 world: a master, two or three slaves following it
//! and two to four backends writing to it, under cuts, silent partitions,
//! crashes and failing fsyncs; thousands of seeds a second.
//!
//! ```text
//!   backend b0 ─┐ RESERVE/ACTIVATE/     ┌─ Follower ─▶ slave 1: Db (live│staged│durable)
//!   backend b1 ─┼─ DEACTIVATE/DELETE ─▶ │  master: Server per connection
//!   backend b2 ─┘   (sim::mupdate_t1::  │  Db (live│staged│durable) + subscribers
//!                    Backend)           └─ Follower ─▶ slave 2: Db …
//! ```
//!
//! Real machines on the wire: every master connection runs
//! `engine::mupdate::Server`, every slave link `engine::mupdate::follower::
//! Follower`, over [`Conn`]s (delays, any chunking, cuts, stalls). The
//! backends are [`Backend`], a small client machine written for this
//! scenario (the engine has none; a Cyrus backend's `mupdate-client.c`
//! plays that part in production): PLAIN login, one write at a time.
//!
//! What the daemon does around the machines is played by [`Db`], modelled
//! on `store::mupdate::MupdateDb` (its module doc is the spec): a write is
//! decided with `Database::decide` against the live state and applied to
//! it at once (FIND and LIST read live state; the UPDATE dump reads the
//! durable state, as `MupdateDb::subscribe`), staged,
//! and made durable by a seeded group fsync; only then is every change of
//! the batch published to the subscribers, in decision order, and each
//! writer completed with a `Committed` token. A failed fsync makes the
//! daemon exit (`MupdateDb::is_failed`): modelled as a crash. A crash drops
//! what is staged; the restarted process reads the durable state. A slave's
//! `Db` applies the master's dump (`replace_remote`: only differences) and
//! pushes (`apply_remote`) the same way.
//!
//! Backends own names by what they were told: `OK` to RESERVE/ACTIVATE at
//! their location makes a name theirs, `OK` to DELETE gives it up. Several
//! backends share one small pool of names, so they race to reserve. A write
//! whose answer was lost (cut, crash) is retried after reconnecting; a lost
//! DELETE is resolved with a RESERVE at the backend's own location (`NO`:
//! someone else has it, so the delete happened), never by re-sending the
//! DELETE, which would remove a name another backend may own by then.
//!
//! Invariants, after every step:
//! - a name never belongs to two backends (two `OK`s for one name without a
//!   `DELETE` between them);
//! - `OK` means durable: when a backend reads `OK`, the master's durable
//!   state holds what it wrote;
//! - the master's durable state for every name is what its owner was last
//!   told, or the result of a write still unanswered — nothing acknowledged
//!   lost, nothing present that no backend wrote;
//! - no slave ever makes durable a record the master never had for that
//!   name (live or durable).
//!
//! After healing (no faults, every node up, every write answered, every
//! slave streaming and quiet): every slave's durable database equals the
//! master's, which equals exactly what the owners were told.
//!
//! Half the seeds' backends start `COMPRESS "DEFLATE"` before logging in
//! (the world deflates their connections, see [`crate::world`]).
//!
//! What it never does: TLS, a slave's own clients (their reads are
//! the slave's live state), or the Cyrus 5-second push batching.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use engine::machine::{CloseReason, EffectId, Machine, Output, Time};
use engine::mupdate::follower::{self, Follower};
use engine::mupdate::{
    AuthOk, Change, Command, Committed, Completion, Database, Effect, Entry, Options, Read, Record,
    Role, Server, State, Write,
};
use engine::store::{Completion as StoreCompletion, StoreEffect};
use proto::frame::{Event as FrameEvent, Framer};
use proto::mupdate::{parse_response, Form, Response, Status};
use proto::sasl::{self, Credentials, Mechanism, Secret};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::mupdate::{command_of, result_of};
use crate::world::{Conn, Disk, NetOptions, SimMachine, Stepped};
use crate::{Coverage, Trace};

const PASSWORD: &[u8] = b"simsecret";

// ---- the backend machine ----------------------------------------------------

/// What a [`Backend`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// Logged in; writes may be sent.
    Ready,
    /// The answer to the write in flight.
    Answer(Status, String),
}

#[derive(Debug, PartialEq, Eq)]
enum BPhase {
    Banner,
    Compress,
    Auth,
    Ready,
}

/// A MUPDATE backend connection as a [`Machine`]: waits for the banner,
/// logs in with `AUTHENTICATE "PLAIN" {n+}` (as Cyrus's clients do), then
/// sends each commanded write and reports its answer. One write at a time:
/// a command while one is in flight is the caller's bug.
pub struct Backend {
    framer: Framer,
    phase: BPhase,
    creds: Credentials,
    form: Form,
    compress: bool,
    out: Vec<u8>,
    outputs: VecDeque<Output<Infallible, BackendEvent>>,
    tag: Option<String>,
    seq: u64,
    closed: bool,
}

impl Backend {
    /// A new connection; `form` is how it sends strings (quoted or `{n+}`);
    /// with `compress` it sends `COMPRESS "DEFLATE"` before logging in.
    pub fn new(authname: &str, password: &[u8], form: Form, compress: bool) -> Backend {
        Backend {
            framer: Framer::new(proto::mupdate::client_frame_options()),
            phase: BPhase::Banner,
            creds: Credentials {
                authzid: None,
                authcid: authname.into(),
                password: Secret::new(password.to_vec()),
            },
            form,
            compress,
            out: Vec::new(),
            outputs: VecDeque::new(),
            tag: None,
            seq: 0,
            closed: false,
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let b = Bytes::from(std::mem::take(&mut self.out));
            self.outputs.push_back(Output::Transmit(b));
        }
    }

    fn close(&mut self, r: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.flush();
            self.outputs.push_back(Output::Close(r));
        }
    }

    fn event(&mut self, e: BackendEvent) {
        self.flush();
        self.outputs.push_back(Output::Event(e));
    }

    fn login(&mut self) {
        let mut client = sasl::Client::new(Mechanism::Plain, self.creds.clone());
        let ir = client.initial_response().expect("PLAIN has one");
        let b64 = sasl::encode(ir.expose());
        self.out.extend_from_slice(
            format!("A01 AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{b64}\r\n", b64.len()).as_bytes(),
        );
        self.phase = BPhase::Auth;
    }

    fn on_response(&mut self, r: Response) {
        match (&self.phase, r) {
            (BPhase::Banner, Response::Ready { .. }) if self.compress => {
                self.out.extend_from_slice(b"C01 COMPRESS \"DEFLATE\"\r\n");
                self.phase = BPhase::Compress;
            }
            (BPhase::Banner, Response::Ready { .. }) => self.login(),
            (BPhase::Banner, _) => {}
            (BPhase::Compress, Response::Reply(r)) if r.tag[..] == *b"C01" => {
                if r.status == Status::Ok {
                    // The server sends nothing more until we log in, so no
                    // byte already read lies past the switch.
                    self.flush();
                    self.outputs.push_back(Output::StartLayer {
                        layer: engine::machine::Layer::Deflate,
                        input_after_switch: Bytes::new(),
                    });
                }
                self.login();
            }
            (BPhase::Auth, Response::Reply(r)) if r.tag[..] == *b"A01" => {
                if r.status == Status::Ok {
                    self.phase = BPhase::Ready;
                    self.event(BackendEvent::Ready);
                } else {
                    self.close(CloseReason::PeerError("login refused".into()));
                }
            }
            (_, Response::Reply(r)) if r.status == Status::Bye => {
                self.close(CloseReason::PeerClosed)
            }
            (BPhase::Ready, Response::Reply(r))
                if self.tag.as_deref().map(str::as_bytes) == Some(&r.tag[..]) =>
            {
                self.tag = None;
                let text = r
                    .text
                    .map(|t| String::from_utf8_lossy(t.value()).into_owned())
                    .unwrap_or_default();
                self.event(BackendEvent::Answer(r.status, text));
            }
            (_, other) => self.close(CloseReason::PeerError(format!(
                "unexpected response {other:?}"
            ))),
        }
    }
}

impl Machine for Backend {
    type Effect = Infallible;
    type Completion = Infallible;
    type Event = BackendEvent;
    type Command = Write;

    fn handle_input(&mut self, _now: Time, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.framer.handle_input(bytes);
        while !self.closed {
            match self.framer.poll_event() {
                Ok(None) => break,
                Ok(Some(FrameEvent::Message(m))) => match parse_response(&m) {
                    Ok(r) => self.on_response(r),
                    Err(e) => self.close(CloseReason::PeerError(e.to_string())),
                },
                Ok(Some(FrameEvent::Refused(_))) => {
                    self.close(CloseReason::LimitExceeded("response too large".into()))
                }
                Ok(Some(_)) => {}
                Err(e) => self.close(CloseReason::PeerError(e.to_string())),
            }
        }
    }

    fn handle_eof(&mut self, _now: Time) {
        self.close(CloseReason::PeerClosed);
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn handle_completion(&mut self, _now: Time, _id: EffectId, c: Infallible) {
        match c {}
    }

    fn handle_command(&mut self, _now: Time, write: Write) {
        assert!(
            self.phase == BPhase::Ready && self.tag.is_none(),
            "a backend sends one write at a time, after login"
        );
        self.seq += 1;
        let tag = format!("W{}", self.seq);
        self.out
            .extend_from_slice(&command_of(&write).encode(tag.as_bytes(), self.form));
        self.tag = Some(tag);
    }

    fn poll_output(&mut self) -> Option<Output<Infallible, BackendEvent>> {
        self.flush();
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    fn wants_input(&self) -> bool {
        !self.closed
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

impl SimMachine for Backend {
    fn store_effect(effect: Infallible) -> Result<StoreEffect, Infallible> {
        match effect {}
    }
    fn store_completion(_: Option<StoreCompletion>) -> Option<Infallible> {
        None
    }
}

// ---- the daemons' databases ------------------------------------------------

/// Who waits for a staged change: a connection id and the machine's effect.
type Waiter = (u64, EffectId);

/// One daemon's MUPDATE database: live (decisions and reads), staged
/// (decided, waiting for the fsync) and durable (survives a crash).
#[derive(Default)]
pub struct Db {
    live: Database,
    staged: Vec<(Change, Option<Waiter>)>,
    durable: Database,
    fsync_at: Option<Time>,
}

impl Db {
    fn stage(&mut self, change: Change, waiter: Option<Waiter>, now: Time, delay: Duration) {
        self.live.apply(&change);
        self.staged.push((change, waiter));
        if self.fsync_at.is_none() {
            self.fsync_at = Some(now + delay);
        }
    }

    /// The process died: staged changes are gone, live is durable again.
    fn crash(&mut self) -> usize {
        let lost = self.staged.len();
        self.staged.clear();
        self.fsync_at = None;
        self.live = self.durable.clone();
        lost
    }
}

/// The master's live database, as its sessions read it (FIND, LIST).
#[derive(Clone)]
pub struct LiveRead(Rc<RefCell<Db>>);

impl Read for LiveRead {
    fn find(&self, name: &[u8]) -> Option<Record> {
        self.0.borrow().live.find(name).cloned()
    }
    fn list(&self, prefix: Option<&[u8]>) -> Vec<Entry> {
        self.0.borrow().live.list(prefix)
    }
}

impl SimMachine for Server<LiveRead> {
    fn store_effect(effect: Effect) -> Result<StoreEffect, Completion> {
        match effect {
            Effect::Authenticate(creds) => Err(Completion::Auth(
                (creds.password.expose() == PASSWORD).then(|| AuthOk {
                    userid: creds.effective_id().to_owned(),
                    admin: true,
                }),
            )),
            Effect::Kick => Err(Completion::Kicked),
            other => unreachable!("{other:?} is external"),
        }
    }
    fn store_completion(_: Option<StoreCompletion>) -> Option<Completion> {
        None
    }
    fn is_external(effect: &Effect) -> bool {
        matches!(effect, Effect::Write(_) | Effect::Subscribe { .. })
    }
}

impl SimMachine for Follower {
    fn store_effect(effect: follower::Effect) -> Result<StoreEffect, follower::Completion> {
        unreachable!("{effect:?} is external")
    }
    fn store_completion(_: Option<StoreCompletion>) -> Option<follower::Completion> {
        None
    }
    fn is_external(_: &follower::Effect) -> bool {
        true
    }
}

// ---- the world ----------------------------------------------------------------

/// The knobs of one MUPDATE world, chosen by the seed (swarm testing).
#[derive(Debug, Clone)]
pub struct Config {
    /// Slaves following the master.
    pub slaves: usize,
    /// Backends writing.
    pub backends: usize,
    /// Names in the shared pool.
    pub names: usize,
    /// Writes each backend chooses (retries not counted).
    pub ops_per_backend: usize,
    /// Longest pause before a backend's next write.
    pub think_ms_max: u64,
    /// Network.
    pub net: NetOptions,
    /// Longest group-commit fsync.
    pub fsync_delay_max: Duration,
    /// Chance an fsync fails (the daemon exits).
    pub fsync_fail_chance: f64,
    /// Chance per backend write of a fault.
    pub fault_chance: f64,
    /// Longest silent partition.
    pub partition_ms_max: u64,
    /// Follower NOOP interval (a partition longer than two of them is
    /// noticed by the slave).
    pub noop_interval: Duration,
    /// Follower reconnect base delay.
    pub retry_delay: Duration,
    /// How backends send strings.
    pub quoted: bool,
    /// Backends start COMPRESS before logging in.
    pub compress: bool,
}

impl Config {
    /// Each seed its own world.
    pub fn from_seed(seed: u64) -> Config {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d75_7064_6174_65);
        Config {
            slaves: rng.gen_range(2..=3),
            backends: rng.gen_range(2..=4),
            names: rng.gen_range(2..=8),
            ops_per_backend: rng.gen_range(4..=30),
            think_ms_max: rng.gen_range(1..=500),
            net: NetOptions {
                latency_max: Duration::from_micros(rng.gen_range(0..=20_000)),
                chunk_bytes_max: [3usize, 7, 64, 4096][rng.gen_range(0..4)],
            },
            fsync_delay_max: Duration::from_micros(rng.gen_range(0..=30_000)),
            fsync_fail_chance: [0.0, 0.0, 0.02, 0.1][rng.gen_range(0..4)],
            fault_chance: [0.0, 0.05, 0.15, 0.3][rng.gen_range(0..4)],
            partition_ms_max: [500, 5_000, 30_000][rng.gen_range(0..3)],
            noop_interval: Duration::from_millis(rng.gen_range(1_000..=20_000)),
            retry_delay: Duration::from_millis(rng.gen_range(50..=3_000)),
            quoted: rng.gen_bool(0.5),
            compress: rng.gen_bool(0.5),
        }
    }
}

type BConn = Conn<Backend, Server<LiveRead>>;
type FConn = Conn<Follower, Server<LiveRead>>;

/// What a backend is waiting to hear about.
#[derive(Debug, Clone)]
enum Pending {
    /// A write (first try or retry after a lost answer).
    Plain(Write),
    /// RESERVE at our location after a DELETE whose answer was lost: `OK`
    /// means the name is still (or again) ours, so the DELETE follows;
    /// `NO` means someone else holds it, so our DELETE happened.
    Probe { name: Bytes, old: Option<Record> },
}

impl Pending {
    fn write(&self, location: &Bytes) -> Write {
        match self {
            Pending::Plain(w) => w.clone(),
            Pending::Probe { name, .. } => Write::Reserve {
                name: name.clone(),
                location: location.clone(),
            },
        }
    }
    fn name(&self) -> &Bytes {
        match self {
            Pending::Plain(w) => w.name(),
            Pending::Probe { name, .. } => name,
        }
    }
}

struct BackendState {
    location: Bytes,
    /// Names this backend was told are its own, with their state.
    owned: BTreeMap<Bytes, Record>,
    pending: Option<Pending>,
    /// The pending write is on the wire (its answer may be lost).
    on_wire: bool,
    ops_left: usize,
    link: Option<BConn>,
    ready: bool,
    reconnect_at: Time,
    next_op_at: Time,
    isolated_until: Time,
}

struct SlaveState {
    db: Db,
    up: bool,
    down_until: Time,
    link: Option<FConn>,
    synced: bool,
    attempt: u32,
    reconnect_at: Time,
    isolated_until: Time,
}

struct World {
    cfg: Config,
    rng: ChaCha8Rng,
    now: Time,
    master: Rc<RefCell<Db>>,
    master_up: bool,
    master_down_until: Time,
    master_isolated_until: Time,
    /// Subscribed master sessions (follower connection ids).
    subs: BTreeSet<u64>,
    slaves: Vec<SlaveState>,
    backends: Vec<BackendState>,
    names: Vec<Bytes>,
    next_conn: u64,
    /// Every record the master ever held per name (live), and durably.
    master_had: BTreeSet<(Bytes, String)>,
    master_durable_had: BTreeSet<(Bytes, String)>,
    no_disks: Vec<Disk>,
    trace: Trace,
    cov: Coverage,
    steps: u64,
}

#[derive(Clone, Copy, Debug)]
enum Due {
    Backend(usize),
    Slave(usize),
    MasterFsync,
    SlaveFsync(usize),
    MasterUp,
    SlaveUp(usize),
    BackendOp(usize),
    BackendConnect(usize),
    SlaveConnect(usize),
}

fn rec_str(r: &Option<Record>) -> String {
    match r {
        None => "-".into(),
        Some(Record {
            state: State::Reserved,
            location,
        }) => format!("R@{}", String::from_utf8_lossy(location)),
        Some(Record {
            state: State::Active { acl },
            location,
        }) => format!(
            "A@{}[{}]",
            String::from_utf8_lossy(location),
            String::from_utf8_lossy(acl)
        ),
    }
}

impl World {
    fn new(seed: u64, cfg: Config) -> World {
        let names = (0..cfg.names)
            .map(|i| Bytes::from(format!("user.u{i}")))
            .collect::<Vec<_>>();
        let backends = (0..cfg.backends)
            .map(|b| BackendState {
                location: Bytes::from(format!("b{b}!default")),
                owned: BTreeMap::new(),
                pending: None,
                on_wire: false,
                ops_left: cfg.ops_per_backend,
                link: None,
                ready: false,
                reconnect_at: Time::ZERO,
                next_op_at: Time::ZERO,
                isolated_until: Time::ZERO,
            })
            .collect();
        let slaves = (0..cfg.slaves)
            .map(|_| SlaveState {
                db: Db::default(),
                up: true,
                down_until: Time::ZERO,
                link: None,
                synced: false,
                attempt: 0,
                reconnect_at: Time::ZERO,
                isolated_until: Time::ZERO,
            })
            .collect();
        let mut master_had = BTreeSet::new();
        for n in &names {
            master_had.insert((n.clone(), rec_str(&None)));
        }
        World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Time::ZERO,
            master: Rc::new(RefCell::new(Db::default())),
            master_up: true,
            master_down_until: Time::ZERO,
            master_isolated_until: Time::ZERO,
            subs: BTreeSet::new(),
            slaves,
            backends,
            master_durable_had: master_had.clone(),
            master_had,
            names,
            next_conn: 1,
            no_disks: Vec::new(),
            trace: Trace::default(),
            cov: Coverage::default(),
            steps: 0,
            cfg,
        }
    }

    fn log(&mut self, line: impl Into<String>) {
        self.trace.record(self.now.since_epoch(), line);
    }

    fn violation(&self, what: String) -> ! {
        panic!("invariant violated: {what}")
    }

    fn fsync_delay(&mut self) -> Duration {
        let max = self.cfg.fsync_delay_max.as_micros() as u64;
        Duration::from_micros(self.rng.gen_range(0..=max))
    }

    fn server(&self) -> Server<LiveRead> {
        Server::new(
            self.now,
            LiveRead(self.master.clone()),
            Options {
                server_name: "master".into(),
                role: Role::Master,
                compress: true,
                ..Options::default()
            },
        )
    }

    fn isolation(&self, until: Time) -> Time {
        until.max(self.master_isolated_until)
    }

    // ---- connections ----------------------------------------------------

    /// A new connection from `client` on `node` to a fresh master session;
    /// stalled at once while either side is partitioned.
    fn open_to_master<M: SimMachine>(
        &mut self,
        id: u64,
        client: M,
        node: usize,
        isolated_until: Time,
    ) -> Conn<M, Server<LiveRead>>
    where
        M::Event: Clone,
    {
        let server = self.server();
        let mut c = Conn::open(
            id,
            self.now,
            (client, node),
            (server, 0),
            self.cfg.net.clone(),
            &mut self.no_disks,
            &mut self.rng,
        );
        let until = self.isolation(isolated_until);
        if until > self.now {
            c.stall(until);
        }
        c
    }

    fn connect_backend(&mut self, b: usize) {
        if !self.master_up {
            self.backends[b].reconnect_at = self.master_down_until;
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let form = if self.cfg.quoted {
            Form::Quoted
        } else {
            Form::NonSync
        };
        let client = Backend::new("admin", PASSWORD, form, self.cfg.compress);
        let c = self.open_to_master(id, client, 100 + b, self.backends[b].isolated_until);
        self.log(format!("b{b} connects (conn {id})"));
        self.backends[b].link = Some(c);
        self.backends[b].ready = false;
    }

    fn connect_slave(&mut self, s: usize) {
        if !self.slaves[s].up {
            return;
        }
        if !self.master_up {
            self.slaves[s].reconnect_at = self.master_down_until;
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let mut fo = follower::Options::new("admin", Secret::new(PASSWORD.to_vec()));
        fo.noop_interval = self.cfg.noop_interval;
        fo.handshake_idle_max = self.cfg.noop_interval * 2;
        let client = Follower::new(self.now, fo);
        let c = self.open_to_master(id, client, 1 + s, self.slaves[s].isolated_until);
        self.log(format!("s{s} connects (conn {id})"));
        self.slaves[s].link = Some(c);
        self.slaves[s].synced = false;
    }

    /// A backend's link is gone (cut, closed, crash): the write on the wire
    /// has an unknown outcome.
    fn backend_lost(&mut self, b: usize) {
        if let Some(mut c) = self.backends[b].link.take() {
            c.cut(&mut self.no_disks);
            self.log(format!("b{b} link {} gone", c.id));
        }
        let st = &mut self.backends[b];
        st.ready = false;
        if st.on_wire {
            st.on_wire = false;
            self.cov.hit("write answer lost");
            if let Some(Pending::Plain(Write::Delete { name })) = st.pending.clone() {
                let old = st.owned.remove(&name);
                st.pending = Some(Pending::Probe { name, old });
                self.cov.hit("delete answer lost");
            }
        }
        let ms = self.rng.gen_range(10..=500);
        self.backends[b].reconnect_at = self.now + Duration::from_millis(ms);
    }

    /// A slave's link is gone: reconnect after Cyrus's back-off.
    fn slave_lost(&mut self, s: usize) {
        if let Some(mut c) = self.slaves[s].link.take() {
            if self.slaves[s].synced
                && (c.in_flight().0 > 0 || !self.master.borrow().staged.is_empty())
            {
                self.cov.hit("partition during update stream");
            }
            self.subs.remove(&c.id);
            c.cut(&mut self.no_disks);
            self.log(format!("s{s} link {} gone", c.id));
        }
        let st = &mut self.slaves[s];
        st.synced = false;
        let jitter = self.rng.gen_range(0.0..1.0);
        let d = follower::backoff(self.cfg.retry_delay, st.attempt, jitter);
        st.attempt += 1;
        st.reconnect_at = self.now + d;
    }

    // ---- effects ----------------------------------------------------------

    /// A master session's external effects (writes, subscriptions).
    fn master_effects(
        &mut self,
        conn: u64,
        effects: Vec<(EffectId, Effect)>,
    ) -> Vec<(EffectId, Completion)> {
        let mut now_done = Vec::new();
        for (id, e) in effects {
            match e {
                Effect::Write(w) => {
                    let decided = self.master.borrow().live.decide(&w);
                    match decided {
                        Err(r) => now_done.push((id, Completion::Written(Err(r)))),
                        Ok(change) => {
                            self.master_had
                                .insert((change.name.clone(), rec_str(&change.after)));
                            let d = self.fsync_delay();
                            let now = self.now;
                            self.master
                                .borrow_mut()
                                .stage(change, Some((conn, id)), now, d);
                        }
                    }
                }
                Effect::Subscribe { hosts } => {
                    self.subs.insert(conn);
                    // The committed state, as MupdateDb::subscribe: what
                    // is staged reaches the new subscriber when published.
                    let dump = self.master.borrow().durable.dump(&hosts);
                    now_done.push((id, Completion::Subscribed(dump)));
                }
                other => unreachable!("not external: {other:?}"),
            }
        }
        now_done
    }

    /// A follower's effects against slave `s`'s database (`replace_remote`
    /// and `apply_remote` of the daemon).
    fn slave_effects(
        &mut self,
        s: usize,
        conn: u64,
        effects: Vec<(EffectId, follower::Effect)>,
    ) -> Vec<EffectId> {
        let mut now_done = Vec::new();
        for (id, e) in effects {
            let d = self.fsync_delay();
            let now = self.now;
            let db = &mut self.slaves[s].db;
            let mut changes = Vec::new();
            match e {
                follower::Effect::Replace(entries) => {
                    let mut want: BTreeMap<Bytes, Record> =
                        entries.into_iter().map(|e| (e.name, e.record)).collect();
                    for (name, rec) in db.live.iter() {
                        match want.remove(name) {
                            Some(r) if r == *rec => {}
                            after => changes.push(Change {
                                name: name.clone(),
                                before: Some(rec.clone()),
                                after,
                            }),
                        }
                    }
                    changes.extend(want.into_iter().map(|(name, r)| Change {
                        name,
                        before: None,
                        after: Some(r),
                    }));
                }
                follower::Effect::Apply { name, record } => {
                    let before = db.live.find(&name).cloned();
                    if before != record {
                        changes.push(Change {
                            name,
                            before,
                            after: record,
                        });
                    }
                }
            }
            if changes.is_empty() {
                now_done.push(id);
                continue;
            }
            let last = changes.len() - 1;
            for (i, c) in changes.into_iter().enumerate() {
                db.stage(c, (i == last).then_some((conn, id)), now, d);
            }
        }
        now_done
    }

    fn master_fsync(&mut self) {
        let failed = self.rng.gen_bool(self.cfg.fsync_fail_chance);
        if failed {
            self.cov.hit("fsync failure");
            self.log("master fsync FAILED: the daemon exits");
            let ms = self.rng.gen_range(1..=2000);
            self.crash_master(ms);
            return;
        }
        let staged = {
            let mut m = self.master.borrow_mut();
            m.fsync_at = None;
            let staged = std::mem::take(&mut m.staged);
            for (c, _) in &staged {
                m.durable.apply(c);
            }
            staged
        };
        self.log(format!("master fsync: {} changes durable", staged.len()));
        let now = self.now;
        for (c, _) in &staged {
            self.master_durable_had
                .insert((c.name.clone(), rec_str(&c.after)));
            let change = Arc::new(c.clone());
            for s in 0..self.slaves.len() {
                if let Some(l) = self.slaves[s].link.as_mut() {
                    if self.subs.contains(&l.id) {
                        l.command_b(
                            now,
                            Command::Change(change.clone()),
                            &mut self.no_disks,
                            &mut self.rng,
                        );
                    }
                }
            }
        }
        for (_, w) in staged {
            let Some((conn, id)) = w else { continue };
            for b in &mut self.backends {
                if let Some(l) = b.link.as_mut().filter(|l| l.id == conn) {
                    l.complete_b(now, id, Completion::Written(Ok(Committed::after_commit())));
                }
            }
        }
    }

    fn slave_fsync(&mut self, s: usize) {
        if self.rng.gen_bool(self.cfg.fsync_fail_chance) {
            self.cov.hit("fsync failure");
            self.log(format!("s{s} fsync FAILED: the daemon exits"));
            let ms = self.rng.gen_range(1..=2000);
            self.crash_slave(s, ms);
            return;
        }
        let staged = {
            let db = &mut self.slaves[s].db;
            db.fsync_at = None;
            let staged = std::mem::take(&mut db.staged);
            for (c, _) in &staged {
                db.durable.apply(c);
            }
            staged
        };
        for (c, _) in &staged {
            let key = (c.name.clone(), rec_str(&c.after));
            if !self.master_had.contains(&key) {
                self.violation(format!(
                    "s{s} made durable {} = {}, which the master never had",
                    String::from_utf8_lossy(&c.name),
                    rec_str(&c.after)
                ));
            }
            if !self.master_durable_had.contains(&key) {
                // The UPDATE dump and the published changes are committed
                // state only (MupdateDb::subscribe dumps what is committed).
                self.violation(format!(
                    "s{s} made durable {} = {}, which the master had not made durable",
                    String::from_utf8_lossy(&c.name),
                    rec_str(&c.after)
                ));
            }
        }
        let now = self.now;
        if let Some(l) = self.slaves[s].link.as_mut() {
            for (_, w) in &staged {
                if let Some((conn, id)) = w {
                    if *conn == l.id {
                        l.complete_a(now, *id, follower::Completion::Done);
                    }
                }
            }
        }
        self.log(format!("s{s} fsync: {} changes durable", staged.len()));
    }

    fn crash_master(&mut self, down_ms: u64) {
        // Records the crash takes back that a slave already holds: it got
        // them in a dump of live state. The slave serves them until its
        // next dump (see sim/README.md, MUPDATE findings).
        let lost_records: Vec<(Bytes, Option<Record>)> = self
            .master
            .borrow()
            .staged
            .iter()
            .filter(|(c, _)| {
                !self
                    .master_durable_had
                    .contains(&(c.name.clone(), rec_str(&c.after)))
            })
            .map(|(c, _)| (c.name.clone(), c.after.clone()))
            .collect();
        if self.slaves.iter().any(|s| {
            lost_records
                .iter()
                .any(|(n, r)| s.db.live.find(n).cloned() == *r)
        }) {
            self.violation("a slave holds a record the master lost in its crash".to_string());
        }
        let lost = self.master.borrow_mut().crash();
        if lost > 0 {
            self.cov.hit("crash mid-write");
        }
        self.cov.hit("master crash");
        self.master_up = false;
        self.master_down_until = self.now + Duration::from_millis(down_ms);
        self.log(format!(
            "master CRASH lost {lost} staged, down {down_ms} ms"
        ));
        self.subs.clear();
        for b in 0..self.backends.len() {
            if self.backends[b].link.is_some() {
                self.backend_lost(b);
            }
        }
        for s in 0..self.slaves.len() {
            if self.slaves[s].link.is_some() {
                self.slave_lost(s);
            }
        }
    }

    fn crash_slave(&mut self, s: usize, down_ms: u64) {
        if self.slaves[s].link.is_some() {
            self.slave_lost(s);
        }
        let lost = self.slaves[s].db.crash();
        if lost > 0 {
            self.cov.hit("slave crash mid-apply");
        }
        self.cov.hit("slave crash");
        self.slaves[s].up = false;
        self.slaves[s].down_until = self.now + Duration::from_millis(down_ms);
        self.log(format!("s{s} CRASH lost {lost} staged, down {down_ms} ms"));
    }

    // ---- workload -----------------------------------------------------------

    /// Backend `b` chooses its next write from what it owns.
    fn choose_write(&mut self, b: usize) -> Write {
        let n = self.names[self.rng.gen_range(0..self.names.len())].clone();
        let location = self.backends[b].location.clone();
        let acl = Bytes::from(format!(
            "b{b}\tlrswipkxtecda\t{}\t",
            self.rng.gen_range(0..100)
        ));
        let roll = self.rng.gen_range(0..100);
        match self.backends[b].owned.get(&n).map(|r| &r.state) {
            None => Write::Reserve { name: n, location },
            Some(State::Reserved) if roll < 65 => Write::Activate {
                name: n,
                location,
                acl,
            },
            Some(State::Reserved) => Write::Delete { name: n },
            Some(State::Active { .. }) if roll < 30 => Write::Activate {
                name: n,
                location,
                acl,
            },
            Some(State::Active { .. }) if roll < 60 => Write::Deactivate { name: n, location },
            Some(State::Active { .. }) => Write::Delete { name: n },
        }
    }

    fn send_pending(&mut self, b: usize) {
        let st = &self.backends[b];
        let Some(p) = st.pending.clone() else { return };
        let w = p.write(&st.location);
        if let Write::Reserve { name, .. } = &w {
            let racing = self.backends.iter().enumerate().any(|(o, ob)| {
                o != b
                    && ob.on_wire
                    && ob.pending.as_ref().is_some_and(|q| {
                        matches!(q.write(&ob.location), Write::Reserve { .. }) && q.name() == name
                    })
            });
            if racing {
                self.cov.hit("concurrent reserve of one name");
            }
        }
        self.log(format!(
            "b{b} sends {:?} {}",
            command_of(&w).verb(),
            String::from_utf8_lossy(w.name())
        ));
        let now = self.now;
        let st = &mut self.backends[b];
        st.on_wire = true;
        let l = st.link.as_mut().expect("ready link");
        l.command_a(now, w, &mut self.no_disks, &mut self.rng);
    }

    /// The answer to backend `b`'s pending write.
    fn answered(&mut self, b: usize, status: Status, text: String) {
        let st = &mut self.backends[b];
        st.on_wire = false;
        let p = st.pending.take().expect("an answer to a write in flight");
        let location = st.location.clone();
        let w = p.write(&location);
        let name = w.name().clone();
        self.log(format!(
            "b{b} {} -> {status:?} {text}",
            String::from_utf8_lossy(&name)
        ));
        match (&p, &w, status) {
            (_, _, Status::Ok) => {
                let after = result_of(&w);
                let durable = self.master.borrow().durable.find(&name).cloned();
                // Another backend may have reserved a deleted name while
                // our OK was on its way; nothing else may differ.
                let taken_since =
                    after.is_none() && durable.as_ref().is_some_and(|r| r.location != location);
                if durable != after && !taken_since {
                    self.violation(format!(
                        "b{b} was told OK for {} = {} but the master's durable state is {}",
                        String::from_utf8_lossy(&name),
                        rec_str(&after),
                        rec_str(&durable)
                    ));
                }
                match after {
                    Some(r) => {
                        self.backends[b].owned.insert(name.clone(), r);
                    }
                    None => {
                        self.backends[b].owned.remove(&name);
                    }
                }
                if let Pending::Probe { .. } = p {
                    self.cov.hit("probe after lost delete: still ours");
                    self.backends[b].pending = Some(Pending::Plain(Write::Delete { name }));
                    self.send_pending(b);
                }
            }
            (Pending::Probe { .. }, _, Status::No) if text == "mailbox already exists" => {
                self.cov.hit("probe after lost delete: taken");
            }
            (Pending::Plain(Write::Reserve { .. }), _, Status::No)
                if text == "mailbox already exists" =>
            {
                self.cov.hit("reserve refused: taken");
            }
            _ => self.violation(format!(
                "b{b}: unexpected {status:?} \"{text}\" to {:?} of {}",
                command_of(&w).verb(),
                String::from_utf8_lossy(&name)
            )),
        }
    }

    fn backend_events(&mut self, b: usize) {
        let Some(l) = self.backends[b].link.as_mut() else {
            return;
        };
        let evs = std::mem::take(&mut l.a.events);
        for (_, e) in evs {
            match e {
                BackendEvent::Ready => {
                    self.backends[b].ready = true;
                    if self.cfg.compress {
                        self.cov.hit("backend link under COMPRESS");
                    }
                    if self.backends[b].pending.is_some() {
                        self.cov.hit("retry after reconnect");
                        self.send_pending(b);
                    }
                }
                BackendEvent::Answer(status, text) => self.answered(b, status, text),
            }
        }
    }

    fn slave_events(&mut self, s: usize) {
        let Some(l) = self.slaves[s].link.as_mut() else {
            return;
        };
        let evs = std::mem::take(&mut l.a.events);
        for (_, e) in evs {
            if let follower::Event::Synced { entries } = e {
                self.slaves[s].synced = true;
                self.slaves[s].attempt = 0;
                self.cov.hit("slave synced");
                self.log(format!("s{s} synced ({entries} entries)"));
            }
        }
    }

    // ---- faults ---------------------------------------------------------------

    fn fault(&mut self) {
        let roll = self.rng.gen_range(0..100);
        if roll < 25 {
            let k = self
                .rng
                .gen_range(0..self.backends.len() + self.slaves.len());
            if k < self.backends.len() {
                if self.backends[k].link.is_some() {
                    self.cov.hit("cut");
                    self.log(format!("CUT b{k}"));
                    self.backend_lost(k);
                }
            } else {
                let s = k - self.backends.len();
                if self.slaves[s].link.is_some() {
                    self.cov.hit("cut");
                    self.log(format!("CUT s{s}"));
                    self.slave_lost(s);
                }
            }
        } else if roll < 50 {
            let ms = self.rng.gen_range(1..=self.cfg.partition_ms_max);
            let until = self.now + Duration::from_millis(ms);
            let k = self
                .rng
                .gen_range(0..=self.backends.len() + self.slaves.len());
            self.cov.hit("partition");
            if k < self.backends.len() {
                self.log(format!("PARTITION b{k} for {ms} ms"));
                self.backends[k].isolated_until = until;
                if let Some(l) = self.backends[k].link.as_mut() {
                    l.stall(until);
                }
            } else if k < self.backends.len() + self.slaves.len() {
                let s = k - self.backends.len();
                self.log(format!("PARTITION s{s} for {ms} ms"));
                self.slaves[s].isolated_until = until;
                self.stall_slave(s, until);
            } else {
                self.log(format!("PARTITION master for {ms} ms"));
                self.master_isolated_until = until;
                for b in &mut self.backends {
                    if let Some(l) = b.link.as_mut() {
                        l.stall(until);
                    }
                }
                for s in 0..self.slaves.len() {
                    self.stall_slave(s, until);
                }
            }
        } else if roll < 70 {
            if self.master_up {
                let ms = self.rng.gen_range(1..=3000);
                self.crash_master(ms);
            }
        } else if roll < 90 {
            let s = self.rng.gen_range(0..self.slaves.len());
            if self.slaves[s].up {
                let ms = self.rng.gen_range(1..=3000);
                self.crash_slave(s, ms);
            }
        } else {
            let b = self.rng.gen_range(0..self.backends.len());
            if self.backends[b].link.is_some() {
                self.cov.hit("backend restart");
                self.log(format!("b{b} RESTART"));
                self.backend_lost(b);
            }
        }
    }

    fn stall_slave(&mut self, s: usize, until: Time) {
        let synced = self.slaves[s].synced;
        if let Some(l) = self.slaves[s].link.as_mut() {
            if synced && (l.in_flight().0 > 0 || !self.master.borrow().staged.is_empty()) {
                self.cov.hit("partition during update stream");
            }
            l.stall(until);
        }
    }

    // ---- the loop -----------------------------------------------------------------

    fn next_due(&self, faults: bool) -> Option<(Time, Due)> {
        let mut next: Option<(Time, Due)> = None;
        let mut cand = |t: Option<Time>, d: Due| {
            if let Some(t) = t {
                if next.is_none_or(|(n, _)| t < n) {
                    next = Some((t, d));
                }
            }
        };
        for (b, st) in self.backends.iter().enumerate() {
            cand(st.link.as_ref().and_then(|l| l.next_due()), Due::Backend(b));
        }
        for (s, st) in self.slaves.iter().enumerate() {
            cand(st.link.as_ref().and_then(|l| l.next_due()), Due::Slave(s));
        }
        cand(self.master.borrow().fsync_at, Due::MasterFsync);
        for (s, st) in self.slaves.iter().enumerate() {
            cand(st.db.fsync_at, Due::SlaveFsync(s));
        }
        if !self.master_up {
            cand(Some(self.master_down_until), Due::MasterUp);
        }
        for (s, st) in self.slaves.iter().enumerate() {
            if !st.up {
                cand(Some(st.down_until), Due::SlaveUp(s));
            }
        }
        for (b, st) in self.backends.iter().enumerate() {
            match &st.link {
                None if st.pending.is_some() || st.ops_left > 0 => {
                    cand(Some(st.reconnect_at), Due::BackendConnect(b))
                }
                Some(_) if st.ready && st.pending.is_none() && st.ops_left > 0 => {
                    cand(Some(st.next_op_at), Due::BackendOp(b))
                }
                _ => {}
            }
        }
        for (s, st) in self.slaves.iter().enumerate() {
            if st.up && st.link.is_none() {
                cand(Some(st.reconnect_at), Due::SlaveConnect(s));
            }
        }
        let _ = faults;
        next
    }

    fn step(&mut self, faults: bool) -> bool {
        self.steps += 1;
        let Some((t, due)) = self.next_due(faults) else {
            return false;
        };
        self.now = t.max(self.now);
        match due {
            Due::Backend(b) => {
                let now = self.now;
                let l = self.backends[b].link.as_mut().expect("due");
                let st = l.step(now, &mut self.no_disks, &mut self.rng);
                let id = l.id;
                let ext: Vec<_> = l.b.external.drain(..).collect();
                let done = self.master_effects(id, ext);
                let l = self.backends[b].link.as_mut().expect("still here");
                for (eid, c) in done {
                    l.complete_b(now, eid, c);
                }
                self.backend_events(b);
                // A client that closed its end reconnects at once, whether
                // or not the master has noticed yet.
                if st != Stepped::Quiet
                    && self.backends[b]
                        .link
                        .as_ref()
                        .is_some_and(|l| l.a.closed.is_some())
                {
                    let l = self.backends[b].link.as_ref().expect("here");
                    let why = format!("{:?} / {:?}", l.a.closed, l.b.closed);
                    self.log(format!("b{b} link closed: {why}"));
                    self.backend_lost(b);
                }
            }
            Due::Slave(s) => {
                let now = self.now;
                let l = self.slaves[s].link.as_mut().expect("due");
                let st = l.step(now, &mut self.no_disks, &mut self.rng);
                let id = l.id;
                let ext_b: Vec<_> = l.b.external.drain(..).collect();
                let ext_a: Vec<_> = l.a.external.drain(..).collect();
                let done_b = self.master_effects(id, ext_b);
                let done_a = self.slave_effects(s, id, ext_a);
                let l = self.slaves[s].link.as_mut().expect("still here");
                for (eid, c) in done_b {
                    l.complete_b(now, eid, c);
                }
                for eid in done_a {
                    l.complete_a(now, eid, follower::Completion::Done);
                }
                if l.b.closed.is_some() {
                    self.subs.remove(&id);
                }
                self.slave_events(s);
                if st != Stepped::Quiet
                    && self.slaves[s]
                        .link
                        .as_ref()
                        .is_some_and(|l| l.a.closed.is_some())
                {
                    let l = self.slaves[s].link.as_ref().expect("here");
                    if matches!(l.a.closed, Some(CloseReason::Timeout(_))) {
                        self.cov.hit("slave noticed a silent master");
                    }
                    let why = format!("{:?} / {:?}", l.a.closed, l.b.closed);
                    self.log(format!("s{s} link closed: {why}"));
                    self.slave_lost(s);
                }
            }
            Due::MasterFsync => self.master_fsync(),
            Due::SlaveFsync(s) => self.slave_fsync(s),
            Due::MasterUp => {
                self.master_up = true;
                self.log("master restarted");
            }
            Due::SlaveUp(s) => {
                self.slaves[s].up = true;
                self.slaves[s].reconnect_at = self.now;
                self.log(format!("s{s} restarted"));
            }
            Due::BackendOp(b) => {
                let w = self.choose_write(b);
                let st = &mut self.backends[b];
                st.ops_left -= 1;
                st.pending = Some(Pending::Plain(w));
                let ms = self.rng.gen_range(0..=self.cfg.think_ms_max);
                self.backends[b].next_op_at = self.now + Duration::from_millis(ms);
                self.send_pending(b);
                if faults && self.rng.gen_bool(self.cfg.fault_chance) {
                    self.fault();
                }
            }
            Due::BackendConnect(b) => self.connect_backend(b),
            Due::SlaveConnect(s) => self.connect_slave(s),
        }
        self.check();
        true
    }

    // ---- checkers ---------------------------------------------------------------

    /// The ledger against the master's durable state (module doc).
    fn check(&self) {
        let m = self.master.borrow();
        for (name, _) in m.durable.iter() {
            if !self.names.contains(name) {
                self.violation(format!(
                    "the master holds {} that no backend wrote",
                    String::from_utf8_lossy(name)
                ));
            }
        }
        for n in &self.names {
            let mut owners = Vec::new();
            // Few candidates: a Vec (records have no order).
            let mut cand: Vec<Option<Record>> = Vec::new();
            for (b, st) in self.backends.iter().enumerate() {
                let deleting = matches!(&st.pending, Some(Pending::Plain(Write::Delete { name })) if name == n);
                if let Some(r) = st.owned.get(n) {
                    cand.push(Some(r.clone()));
                    if !deleting {
                        owners.push((b, r.clone()));
                    }
                }
                match &st.pending {
                    Some(p @ Pending::Plain(w)) if p.name() == n => {
                        cand.push(result_of(w));
                    }
                    Some(Pending::Probe { name, old }) if name == n => {
                        cand.push(old.clone());
                        cand.push(Some(Record {
                            state: State::Reserved,
                            location: st.location.clone(),
                        }));
                        cand.push(None);
                    }
                    _ => {}
                }
            }
            if owners.len() > 1 {
                self.violation(format!(
                    "{} belongs to two servers: {:?}",
                    String::from_utf8_lossy(n),
                    owners
                        .iter()
                        .map(|(b, r)| format!("b{b} {}", rec_str(&Some(r.clone()))))
                        .collect::<Vec<_>>()
                ));
            }
            if owners.is_empty() {
                cand.push(None);
            }
            let have = m.durable.find(n).cloned();
            if !cand.contains(&have) {
                self.violation(format!(
                    "the master's durable {} is {}; the backends allow only {:?}",
                    String::from_utf8_lossy(n),
                    rec_str(&have),
                    cand.iter().map(rec_str).collect::<Vec<_>>()
                ));
            }
        }
    }

    fn settled(&self) -> bool {
        self.master_up
            && self.master.borrow().staged.is_empty()
            && self
                .backends
                .iter()
                .all(|b| b.pending.is_none() && b.ops_left == 0)
            && self.slaves.iter().all(|s| {
                s.up && s.synced
                    && s.db.staged.is_empty()
                    && s.link.as_ref().is_some_and(|l| l.quiet())
            })
    }

    fn heal_and_converge(&mut self) {
        self.log("HEAL");
        self.cfg.fsync_fail_chance = 0.0;
        let limit = self.now + Duration::from_secs(3600);
        let mut guard = 0u64;
        while !self.settled() {
            guard += 1;
            if guard > 1_000_000 || self.now > limit || !self.step(false) {
                let state: Vec<String> = self
                    .slaves
                    .iter()
                    .enumerate()
                    .map(|(s, st)| {
                        format!(
                            "s{s} up {} synced {} staged {} link {}",
                            st.up,
                            st.synced,
                            st.db.staged.len(),
                            st.link.as_ref().map(|l| l.describe()).unwrap_or_default()
                        )
                    })
                    .collect();
                self.violation(format!(
                    "no convergence after healing (liveness): master up {} staged {}; backends pending {:?}; {state:?}",
                    self.master_up,
                    self.master.borrow().staged.len(),
                    self.backends
                        .iter()
                        .map(|b| (b.pending.is_some(), b.ops_left, b.link.is_some(), b.ready))
                        .collect::<Vec<_>>()
                ));
            }
        }
        let m = self.master.borrow();
        let master: Vec<(Bytes, Record)> = m
            .durable
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        // Exactly what the owners were told.
        let mut told: Vec<(Bytes, Record)> = Vec::new();
        for st in &self.backends {
            told.extend(st.owned.iter().map(|(n, r)| (n.clone(), r.clone())));
        }
        told.sort_by(|a, b| a.0.cmp(&b.0));
        if told != master {
            self.violation(format!(
                "after healing the master holds {:?}, the backends were told {:?}",
                master
                    .iter()
                    .map(|(n, r)| format!(
                        "{}={}",
                        String::from_utf8_lossy(n),
                        rec_str(&Some(r.clone()))
                    ))
                    .collect::<Vec<_>>(),
                told.iter()
                    .map(|(n, r)| format!(
                        "{}={}",
                        String::from_utf8_lossy(n),
                        rec_str(&Some(r.clone()))
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        for (s, st) in self.slaves.iter().enumerate() {
            let slave: Vec<(Bytes, Record)> = st
                .db
                .durable
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            if slave != master {
                self.violation(format!(
                    "after healing s{s} differs from the master: {:?} vs {:?}",
                    slave
                        .iter()
                        .map(|(n, r)| format!(
                            "{}={}",
                            String::from_utf8_lossy(n),
                            rec_str(&Some(r.clone()))
                        ))
                        .collect::<Vec<_>>(),
                    master
                        .iter()
                        .map(|(n, r)| format!(
                            "{}={}",
                            String::from_utf8_lossy(n),
                            rec_str(&Some(r.clone()))
                        ))
                        .collect::<Vec<_>>()
                ));
            }
        }
        drop(m);
        self.cov.hit("converged");
    }
}

/// Runs one seed: the workload under faults, then heal and converge.
/// Panics with the violation.
pub fn run(seed: u64, trace: &mut Trace, cov: &mut Coverage) {
    run_with(seed, Config::from_seed(seed), trace, cov)
}

/// [`run`] with a given configuration.
pub fn run_with(seed: u64, cfg: Config, trace: &mut Trace, cov: &mut Coverage) {
    let mut w = World::new(seed, cfg);
    w.trace = trace.clone();
    w.log(format!("config {:?}", w.cfg));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        while w.backends.iter().any(|b| b.ops_left > 0) {
            if !w.step(true) {
                break;
            }
            if w.steps > 5_000_000 {
                w.violation("phase 1 never ended".into());
            }
        }
        w.heal_and_converge();
    }));
    cov.merge(&w.cov);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
