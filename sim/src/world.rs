//! Tier 1: a seeded discrete-event world over the engine machines and
//! [`MemStore`]s, with no tokio, no threads and no real time.
//!
//! ```text
//!   node 0: Disk(MemStore: pending | durable) ◀─ effects ─┐
//!                                                         │
//!   Conn 7:  End<A> ══ bytes (delayed, chunked) ══ End<B> │
//!             ▲ completions after the simulated fsync ────┘
//!   node 1: Disk(MemStore) ◀── effects of End<B>
//! ```
//!
//! What it models:
//! - **Network**: a [`Conn`] is one TCP connection between two machines.
//!   Within it bytes are never reordered or duplicated (TCP does neither):
//!   each transmit arrives after a seeded latency, no earlier than the bytes
//!   before it, split into seeded chunks so every framing boundary is
//!   exercised. A connection can be **cut** (a reset or a partition: both
//!   machines stop being fed, undelivered bytes vanish, as when the kernel
//!   gives up) or **closed** (the machine said `Close`; the peer sees EOF
//!   after the bytes in flight). Reordering and duplication across
//!   connections come from the scenarios: a retried session re-sends
//!   commands whose first copy may or may not have been applied.
//!   A connection can also be **stalled** ([`Conn::stall`]): a silent
//!   partition, during which nothing arrives and both machines learn of it
//!   only through their own timers; afterwards the bytes arrive in order,
//!   as TCP retransmits them.
//! - **Disks**: a [`Disk`] wraps a node's `MemStore`. A store write is
//!   applied to the pending layer at once and completed only when a seeded
//!   "fsync" fires later (slow writes), which makes every pending batch
//!   durable at once (group commit) or, with a seeded chance, fails all of
//!   them (`MemStore::fail_pending`: an I/O error). A crash
//!   ([`Disk::crash`]) loses everything pending and staged.
//! - **Time**: virtual; the caller always advances to the earliest thing
//!   due, so a 30-minute idle timeout costs nothing.
//!
//! - **COMPRESS**: a machine's `StartLayer(Deflate)` turns on raw deflate
//!   for that end, as the io-tokio driver does: every later transmit is
//!   compressed with a sync flush, every later input inflated (starting
//!   with the machine's `input_after_switch`). The peer's machine must
//!   switch at the matching point, or inflating fails and the run panics.
//!
//! What it never does: TLS (a `StartLayer` for TLS is a scenario bug and
//! panics), real I/O, or
//! any choice not drawn from the seed's RNG. Maps are ordered, so the same
//! seed always gives the same event order.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use engine::machine::{drain, handle, CloseReason, EffectId, Input, Machine, Output, Time};
use engine::memstore::MemStore;
use engine::store::{Completion as StoreCompletion, EffectRunner, StoreEffect, StoreError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A node's store, shared by every machine on that node.
pub type Store = Rc<RefCell<MemStore>>;

/// Which end of a [`Conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The end that connected (client, dsync master).
    A,
    /// The end that accepted (server, dsync slave).
    B,
}

/// Who waits for a write's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A machine: connection id, end, and the machine's effect id.
    Conn(u64, Side, EffectId),
    /// The scenario's workload: its operation number (acknowledged to the
    /// user only when durable).
    Op(u64),
}

/// How a machine's effects reach the world: which are store effects (run
/// against the node's [`Disk`]) and which the world answers itself (auth).
pub trait SimMachine: Machine {
    /// `Ok` for a store effect; `Err` with the immediate answer otherwise.
    fn store_effect(effect: Self::Effect) -> Result<StoreEffect, Self::Completion>;
    /// The machine's completion for a store effect's result (`None`: the
    /// effect has no completion, e.g. a staging chunk). Return `None` for
    /// results a machine does not expect.
    fn store_completion(result: Option<StoreCompletion>) -> Option<Self::Completion>;
    /// `true` for an effect the scenario performs itself (a MUPDATE write
    /// decided under the daemon's lock, a subscription): it is parked in
    /// [`End::external`] and answered later with [`Conn::complete_a`] /
    /// [`Conn::complete_b`]. Default: none.
    fn is_external(effect: &Self::Effect) -> bool {
        let _ = effect;
        false
    }
}

/// Seeded fault knobs of one disk.
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Longest simulated fsync after the first pending write.
    pub fsync_delay_max: Duration,
    /// Chance that an fsync fails (every pending batch reported failed).
    pub fsync_fail_chance: f64,
}

/// A node's store with simulated fsync; see the module doc.
pub struct Disk {
    /// The store (machines on this node read it).
    pub store: Store,
    /// Seeded behaviour.
    pub options: DiskOptions,
    /// Owners of MemStore's pending batches, in the same order.
    owners: VecDeque<Owner>,
    fsync_at: Option<Time>,
    runners: BTreeMap<(u64, Side), EffectRunner>,
    /// Times this disk's durable state changed (for checkers).
    pub durable_changes: u64,
}

impl Disk {
    /// An empty store.
    pub fn new(options: DiskOptions) -> Disk {
        Disk {
            store: Rc::new(RefCell::new(MemStore::default())),
            options,
            owners: VecDeque::new(),
            fsync_at: None,
            runners: BTreeMap::new(),
            durable_changes: 0,
        }
    }

    /// Whether writes are pending (applied, not durable).
    pub fn has_pending(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Whether any staging (message upload) is open on this disk.
    pub fn has_open_stagings(&self) -> bool {
        !self.runners.is_empty()
    }

    /// When the next fsync fires, if a write is pending.
    pub fn fsync_at(&self) -> Option<Time> {
        self.fsync_at
    }

    /// Runs one effect for `owner`; `Some` when it completes at once
    /// (stagings, refused batches). A write completes at the next fsync.
    pub fn run(
        &mut self,
        now: Time,
        rng: &mut ChaCha8Rng,
        owner: Owner,
        effect: StoreEffect,
    ) -> Option<StoreCompletion> {
        match effect {
            StoreEffect::Write(batch) => {
                let applied = self.store.borrow_mut().apply(&batch);
                match applied {
                    Err(error) => Some(StoreCompletion::Failed {
                        batch_id: batch.id,
                        error,
                    }),
                    Ok(()) => {
                        self.owners.push_back(owner);
                        if self.fsync_at.is_none() {
                            let max = self.options.fsync_delay_max.as_micros() as u64;
                            let d = Duration::from_micros(rng.gen_range(0..=max));
                            self.fsync_at = Some(now + d);
                        }
                        None
                    }
                }
            }
            other => {
                let Owner::Conn(conn, side, _) = owner else {
                    unreachable!("workload writes are batches only")
                };
                let runner = self.runners.entry((conn, side)).or_default();
                let done = runner.run(&mut *self.store.borrow_mut(), other);
                done
            }
        }
    }

    /// Fires the fsync: every pending batch becomes durable, or (seeded)
    /// all of them fail. Returns each owner with its completion.
    pub fn fsync(&mut self, rng: &mut ChaCha8Rng) -> (bool, Vec<(Owner, StoreCompletion)>) {
        self.fsync_at = None;
        let failed = rng.gen_bool(self.options.fsync_fail_chance);
        let done = if failed {
            self.store
                .borrow_mut()
                .fail_pending("simulated fsync failure")
        } else {
            self.durable_changes += 1;
            self.store.borrow_mut().sync_all()
        };
        assert_eq!(done.len(), self.owners.len(), "one owner per pending batch");
        (failed, self.owners.drain(..).zip(done).collect())
    }

    /// A machine's connection is gone: abort its stagings.
    pub fn forget(&mut self, conn: u64, side: Side) {
        if let Some(mut r) = self.runners.remove(&(conn, side)) {
            r.abort_all(&mut *self.store.borrow_mut());
        }
    }

    /// The node crashed: pending batches and staged bytes are lost, no
    /// completion is ever delivered for them. Returns how many were lost.
    pub fn crash(&mut self) -> usize {
        let lost = self.store.borrow_mut().crash().len();
        self.owners.clear();
        self.fsync_at = None;
        self.runners.clear();
        lost
    }
}

/// One end of a connection.
pub struct End<M: SimMachine> {
    /// The machine.
    pub m: M,
    /// The node it runs on.
    pub node: usize,
    inbox: VecDeque<(Time, Bytes)>,
    eof_at: Option<Time>,
    timer: Option<Time>,
    ready: VecDeque<(Time, EffectId, M::Completion)>,
    /// Events it emitted, with their time.
    pub events: Vec<(Time, M::Event)>,
    /// Why it closed, once it has.
    pub closed: Option<CloseReason>,
    /// Effects the scenario performs itself ([`SimMachine::is_external`]),
    /// in emission order; the scenario takes them after every step.
    pub external: VecDeque<(EffectId, M::Effect)>,
    /// Bytes of the peer's arrivals (so later bytes never overtake).
    last_arrival: Time,
    /// After its `StartLayer(Deflate)`: what it sends is deflated...
    deflate: Option<flate2::Compress>,
    /// ...and what it receives inflated.
    inflate: Option<flate2::Decompress>,
}

/// Raw deflate with a sync flush (what the driver does after each drain).
fn deflate(z: &mut flate2::Compress, input: &[u8]) -> Bytes {
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        out.reserve(input.len() - pos + 64);
        let before = z.total_in();
        z.compress_vec(&input[pos..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate cannot fail on valid state");
        pos += (z.total_in() - before) as usize;
        if pos == input.len() && out.len() < out.capacity() {
            return Bytes::from(out);
        }
    }
}

/// Inflates what arrived; a peer that did not deflate is a scenario bug.
fn inflate(z: &mut flate2::Decompress, input: &[u8]) -> Bytes {
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        out.reserve(4 * (input.len() - pos) + 256);
        let before = z.total_in();
        z.decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync)
            .expect("the peer's bytes are not deflate: the machines switched at different points");
        pos += (z.total_in() - before) as usize;
        if pos == input.len() && out.len() < out.capacity() {
            return Bytes::from(out);
        }
    }
}

impl<M: SimMachine> End<M> {
    fn new(m: M, node: usize, now: Time) -> End<M> {
        End {
            m,
            node,
            inbox: VecDeque::new(),
            eof_at: None,
            timer: None,
            ready: VecDeque::new(),
            events: Vec::new(),
            closed: None,
            external: VecDeque::new(),
            last_arrival: now,
            deflate: None,
            inflate: None,
        }
    }

    fn next_due(&self) -> Option<Time> {
        let mut t = self.ready.front().map(|r| r.0);
        let mut min = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Time| t.min(x)));
            }
        };
        if self.closed.is_none() {
            if self.m.wants_input() {
                min(self.inbox.front().map(|b| b.0));
            }
            if self.inbox.is_empty() {
                min(self.eof_at);
            }
            min(self.timer);
        }
        t
    }
}

/// Network knobs of one connection.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Largest one-way latency of a transmit.
    pub latency_max: Duration,
    /// Largest piece a transmit is cut into on arrival.
    pub chunk_bytes_max: usize,
}

/// What a step of a connection did, for the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stepped {
    /// Nothing special.
    Quiet,
    /// An end closed (both may be closed now).
    Closed(Side),
}

/// One TCP connection between two machines; see the module doc.
pub struct Conn<A: SimMachine, B: SimMachine> {
    /// World-unique id.
    pub id: u64,
    /// Client end.
    pub a: End<A>,
    /// Server end.
    pub b: End<B>,
    net: NetOptions,
    /// With `SIM_WIRE=1`: the first line of every transmit, for debugging
    /// a replay (never on by default: it costs and holds payload text).
    pub wire: Option<Vec<String>>,
    /// While the network between the two ends is partitioned, nothing
    /// arrives before this (TCP retransmits once it heals; bytes are
    /// delayed, never lost or reordered). See [`Conn::stall`].
    stalled_until: Time,
}

/// Immediate store effect results a step produced, to be queued by the
/// caller on the right end (kept here so `Conn` needs no `&mut World`).
fn to_ready<M: SimMachine>(end: &mut End<M>, at: Time, id: EffectId, c: Option<StoreCompletion>) {
    if let Some(c) = M::store_completion(c) {
        end.ready.push_back((at, id, c));
    }
}

impl<A: SimMachine, B: SimMachine> Conn<A, B>
where
    A::Event: Clone,
    B::Event: Clone,
{
    /// A new connection; each machine's constructor output is drained now.
    pub fn open(
        id: u64,
        now: Time,
        (a, node_a): (A, usize),
        (b, node_b): (B, usize),
        net: NetOptions,
        disks: &mut [Disk],
        rng: &mut ChaCha8Rng,
    ) -> Conn<A, B> {
        let mut c = Conn {
            id,
            a: End::new(a, node_a, now),
            b: End::new(b, node_b, now),
            net,
            wire: std::env::var_os("SIM_WIRE").map(|_| Vec::new()),
            stalled_until: now,
        };
        c.drain(Side::A, now, disks, rng);
        c.drain(Side::B, now, disks, rng);
        c
    }

    /// A one-line picture of the connection, for a liveness failure.
    pub fn describe(&self) -> String {
        format!(
            "conn {}: a closed {:?} wants_input {} inbox {} eof {:?} timer {:?} ready {} | b closed {:?} wants_input {} inbox {} eof {:?} timer {:?} ready {}",
            self.id,
            self.a.closed,
            self.a.m.wants_input(),
            self.a.inbox.len(),
            self.a.eof_at,
            self.a.timer,
            self.a.ready.len(),
            self.b.closed,
            self.b.m.wants_input(),
            self.b.inbox.len(),
            self.b.eof_at,
            self.b.timer,
            self.b.ready.len()
        )
    }

    /// Both ends closed: nothing more happens here.
    pub fn finished(&self) -> bool {
        self.a.closed.is_some() && self.b.closed.is_some()
    }

    /// When something is next due on this connection.
    pub fn next_due(&self) -> Option<Time> {
        match (self.a.next_due(), self.b.next_due()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// A completion of an external effect of end A (see
    /// [`SimMachine::is_external`]), delivered at `at`.
    pub fn complete_a(&mut self, at: Time, id: EffectId, c: A::Completion) {
        self.a.ready.push_back((at, id, c));
    }

    /// The same for end B.
    pub fn complete_b(&mut self, at: Time, id: EffectId, c: B::Completion) {
        self.b.ready.push_back((at, id, c));
    }

    /// A silent partition until `until`: bytes in flight and bytes sent
    /// meanwhile arrive no earlier than that, in order (TCP retransmits
    /// once the path is back). The machines notice only through their own
    /// timers, as over a real partitioned link.
    pub fn stall(&mut self, until: Time) {
        self.stalled_until = self.stalled_until.max(until);
        for end_inbox in [&mut self.a.inbox, &mut self.b.inbox] {
            for (t, _) in end_inbox.iter_mut() {
                *t = (*t).max(until);
            }
        }
        for eof in [&mut self.a.eof_at, &mut self.b.eof_at] {
            if let Some(t) = eof.as_mut() {
                *t = (*t).max(until);
            }
        }
        self.a.last_arrival = self.a.last_arrival.max(until);
        self.b.last_arrival = self.b.last_arrival.max(until);
    }

    /// Whether both ends have switched to COMPRESS DEFLATE.
    pub fn compressed(&self) -> bool {
        self.a.deflate.is_some() && self.b.deflate.is_some()
    }

    /// Whether the connection is stalled by a partition at `now`.
    pub fn stalled(&self, now: Time) -> bool {
        self.stalled_until > now
    }

    /// Bytes or an EOF on their way to end A, to end B.
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.a.inbox.len() + usize::from(self.a.eof_at.is_some()),
            self.b.inbox.len() + usize::from(self.b.eof_at.is_some()),
        )
    }

    /// Nothing in flight, no completion waiting, no external effect
    /// untaken: only timers can move this connection now.
    pub fn quiet(&self) -> bool {
        self.in_flight() == (0, 0)
            && self.a.ready.is_empty()
            && self.b.ready.is_empty()
            && self.a.external.is_empty()
            && self.b.external.is_empty()
    }

    /// A store completion for one of this connection's machines.
    pub fn complete(&mut self, at: Time, side: Side, id: EffectId, c: StoreCompletion) {
        match side {
            Side::A => to_ready(&mut self.a, at, id, Some(c)),
            Side::B => to_ready(&mut self.b, at, id, Some(c)),
        }
    }

    /// Performs the one input due at `now` (the caller chose `now` from
    /// [`Conn::next_due`]). Ties: completions, then bytes, then EOF, then
    /// timers; end A before end B.
    pub fn step(&mut self, now: Time, disks: &mut [Disk], rng: &mut ChaCha8Rng) -> Stepped {
        for side in [Side::A, Side::B] {
            let was_closed = self.closed(side);
            let fed = match side {
                Side::A => Self::feed(&mut self.a, now),
                Side::B => Self::feed(&mut self.b, now),
            };
            if fed {
                self.drain(side, now, disks, rng);
                if !was_closed && self.closed(side) {
                    return Stepped::Closed(side);
                }
                return Stepped::Quiet;
            }
        }
        Stepped::Quiet
    }

    fn closed(&self, side: Side) -> bool {
        match side {
            Side::A => self.a.closed.is_some(),
            Side::B => self.b.closed.is_some(),
        }
    }

    fn feed<M: SimMachine>(end: &mut End<M>, now: Time) -> bool {
        match Self::take_input(end, now) {
            Some(input) => {
                handle(&mut end.m, now, input);
                true
            }
            None => false,
        }
    }

    fn take_input<M: SimMachine>(
        end: &mut End<M>,
        now: Time,
    ) -> Option<Input<M::Completion, M::Command>> {
        if end.ready.front().is_some_and(|r| r.0 <= now) {
            let (_, id, c) = end.ready.pop_front().expect("front exists");
            if end.closed.is_some() && end.m.is_closed() {
                // The driver still delivers completions to a closed
                // machine (its events matter); bytes it makes vanish.
            }
            return Some(Input::Completion(id, c));
        }
        if end.closed.is_some() {
            return None;
        }
        if end.m.wants_input() && end.inbox.front().is_some_and(|b| b.0 <= now) {
            let (_, b) = end.inbox.pop_front().expect("front exists");
            let b = match end.inflate.as_mut() {
                Some(z) => inflate(z, &b),
                None => b,
            };
            return Some(Input::Bytes(b));
        }
        if end.inbox.is_empty() && end.eof_at.is_some_and(|t| t <= now) {
            end.eof_at = None;
            return Some(Input::Eof);
        }
        if end.timer.is_some_and(|t| t <= now) {
            end.timer = None;
            return Some(Input::Timeout);
        }
        None
    }

    /// An application command for one end.
    pub fn command_a(
        &mut self,
        now: Time,
        cmd: A::Command,
        disks: &mut [Disk],
        rng: &mut ChaCha8Rng,
    ) {
        if self.a.closed.is_none() {
            handle(&mut self.a.m, now, Input::Command(cmd));
            self.drain(Side::A, now, disks, rng);
        }
    }

    /// An application command for end B.
    pub fn command_b(
        &mut self,
        now: Time,
        cmd: B::Command,
        disks: &mut [Disk],
        rng: &mut ChaCha8Rng,
    ) {
        if self.b.closed.is_none() {
            handle(&mut self.b.m, now, Input::Command(cmd));
            self.drain(Side::B, now, disks, rng);
        }
    }

    /// Drains one end's outputs: transmits go to the peer's inbox, store
    /// effects to its node's disk, events to its list.
    fn drain(&mut self, side: Side, now: Time, disks: &mut [Disk], rng: &mut ChaCha8Rng) {
        let (conn, net, stalled) = (self.id, self.net.clone(), self.stalled_until);
        let wire = &mut self.wire;
        macro_rules! pump {
            ($me:expr, $peer:expr, $S:ty) => {{
                let me = $me;
                let peer = $peer;
                let mut outs = Vec::new();
                let t = drain(&mut me.m, |o| outs.push(o));
                for o in outs {
                    match o {
                        Output::Transmit(bytes) => {
                            if me.closed.is_some() || peer.closed.is_some() {
                                continue;
                            }
                            let plain = bytes;
                            let bytes = match me.deflate.as_mut() {
                                Some(z) => deflate(z, &plain),
                                None => plain.clone(),
                            };
                            if let Some(w) = wire.as_mut() {
                                let line = plain.split(|&b| b == b'\n').next().unwrap_or(&[]);
                                let n = line.len().min(160);
                                w.push(format!(
                                    "{now} {side:?} {}",
                                    String::from_utf8_lossy(&line[..n])
                                ));
                            }
                            let lat = rng.gen_range(0..=net.latency_max.as_micros() as u64);
                            let at = (now + Duration::from_micros(lat))
                                .max(peer.last_arrival)
                                .max(stalled);
                            peer.last_arrival = at;
                            let mut rest = bytes;
                            while !rest.is_empty() {
                                let n = rng.gen_range(1..=net.chunk_bytes_max).min(rest.len());
                                peer.inbox.push_back((at, rest.split_to(n)));
                            }
                        }
                        Output::Effect { id, effect } if <$S>::is_external(&effect) => {
                            me.external.push_back((id, effect));
                        }
                        Output::Effect { id, effect } => match <$S>::store_effect(effect) {
                            Err(answer) => me.ready.push_back((now, id, answer)),
                            Ok(e) => {
                                let expects = matches!(
                                    e,
                                    StoreEffect::StageBegin { .. }
                                        | StoreEffect::StageChunk { .. }
                                        | StoreEffect::StageAbort { .. }
                                );
                                let r =
                                    disks[me.node].run(now, rng, Owner::Conn(conn, side, id), e);
                                if r.is_some() || expects {
                                    to_ready(me, now, id, r);
                                }
                            }
                        },
                        Output::Event(e) => me.events.push((now, e)),
                        Output::StartLayer {
                            layer: engine::machine::Layer::Deflate,
                            input_after_switch,
                        } => {
                            me.deflate =
                                Some(flate2::Compress::new(flate2::Compression::default(), false));
                            me.inflate = Some(flate2::Decompress::new(false));
                            // Everything still queued for this end was sent
                            // after the peer's switch: the peer answered the
                            // COMPRESS command and switched before sending on.
                            if !input_after_switch.is_empty() {
                                me.inbox.push_front((now, input_after_switch));
                            }
                        }
                        Output::StartLayer { layer, .. } => {
                            panic!("the tier-1 world has no {layer} layer: configure it off")
                        }
                        Output::Close(reason) => {
                            if me.closed.is_none() {
                                me.closed = Some(reason);
                                if peer.closed.is_none() {
                                    let lat = rng.gen_range(0..=net.latency_max.as_micros() as u64);
                                    let at = (now + Duration::from_micros(lat))
                                        .max(peer.last_arrival)
                                        .max(stalled);
                                    peer.eof_at = Some(at);
                                }
                                me.inbox.clear();
                                me.timer = None;
                            }
                        }
                    }
                }
                if me.closed.is_none() {
                    me.timer = t;
                }
            }};
        }
        match side {
            Side::A => pump!(&mut self.a, &mut self.b, A),
            Side::B => pump!(&mut self.b, &mut self.a, B),
        }
    }

    /// The connection is cut (reset, partition, a node died): neither end
    /// is fed again; their stagings are aborted. Completions of writes
    /// already on the disk still become durable (or are lost in a crash).
    pub fn cut(&mut self, disks: &mut [Disk]) {
        for (node, side) in [(self.a.node, Side::A), (self.b.node, Side::B)] {
            // A scenario without mail stores (MUPDATE) passes no disks.
            if let Some(d) = disks.get_mut(node) {
                d.forget(self.id, side);
            }
        }
        let cut = || Some(CloseReason::Local("cut".into()));
        if self.a.closed.is_none() {
            self.a.closed = cut();
        }
        if self.b.closed.is_none() {
            self.b.closed = cut();
        }
        self.a.inbox.clear();
        self.b.inbox.clear();
        self.a.ready.clear();
        self.b.ready.clear();
        self.a.external.clear();
        self.b.external.clear();
    }
}

/// The error a failed fsync reports, for matching.
pub fn is_fsync_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Io(_))
}
