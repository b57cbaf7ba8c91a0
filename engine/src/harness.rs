//! The pair harness: two [`Machine`]s talking to each other in one thread, on
//! virtual time, with an exact log of what happened.
//!
//! quinn-proto's `tests::util::Pair` and h11's `ConnectionPair` are the
//! precedent. The harness moves bytes both ways with a configurable one-way
//! latency, resolves each side's effects through a caller-supplied resolver
//! (a closure answering with a completion and a delay, or never), fires
//! timeouts exactly at the times machines ask for, and records every
//! transmit, effect, completion, event, timeout, layer switch and close as
//! one line of text, so tests assert whole sequences with `assert_eq!` or
//! insta.
//!
//! What it does not do: it never touches a socket or a clock (time starts at
//! [`Time::ZERO`] and only moves when the next thing is due), and its layers
//! are identity transforms. It does check that the two sides switch layers at
//! the same byte: every chunk is tagged with the sender's layer count, and a
//! chunk reaching a receiver with a different count panics with
//! "layer desync", which in a real connection would be garbage. With
//! [`Options::coalesce`] a read may span the switch, as over TCP; the
//! receiver must then hand back, in its `StartLayer`, exactly the bytes its
//! peer sent after the switch.
//!
//! A side reads (bytes, then its peer's close) only while its machine
//! [`wants_input`](Machine::wants_input), as a real driver does; completions
//! and timers reach it regardless.
//!
//! Order: the earliest pending input wins; at equal times side A goes before
//! side B, and within a side completions come before bytes, bytes before
//! EOF, and EOF before the timer. Everything is deterministic: the same
//! calls give the same log.

use std::collections::VecDeque;
use std::fmt::{self, Debug, Write as _};
use std::time::Duration;

use bytes::Bytes;

use crate::machine::{self, CloseReason, EffectId, Input, InputOf, Layer, Machine, Output, Time};

/// How a resolver answers one effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution<C> {
    /// The completion arrives `delay` after the effect was emitted.
    After(Duration, C),
    /// The effect never completes (a hung disk, a lost auth server).
    Never,
}

impl<C> Resolution<C> {
    /// The completion arrives at once (still as a separate input).
    pub fn now(completion: C) -> Self {
        Resolution::After(Duration::ZERO, completion)
    }
}

/// Knobs of a [`Pair`].
#[derive(Clone, Debug)]
pub struct Options {
    /// One-way delay from A to B.
    pub latency_a_to_b: Duration,
    /// One-way delay from B to A.
    pub latency_b_to_a: Duration,
    /// If set, every transmit is delivered in pieces of at most this many
    /// bytes (each a separate `handle_input`), to exercise framing at odd
    /// boundaries.
    pub chunk_bytes_max: Option<usize>,
    /// If set, every chunk that has arrived by the time a side reads is
    /// handed over in one `handle_input`, as a TCP read returns whatever is
    /// in the socket buffer. Chunks sent under different layers then meet in
    /// one input; the harness checks that the receiver hands back exactly
    /// the bytes sent under the new layer in its `StartLayer`.
    pub coalesce: bool,
    /// A run that delivers more inputs than this panics: a machine that
    /// keeps asking for a timeout in the past, or two machines ping-ponging
    /// forever, is a bug the test should see rather than hang on.
    pub steps_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency_a_to_b: Duration::ZERO,
            latency_b_to_a: Duration::ZERO,
            chunk_bytes_max: None,
            coalesce: false,
            steps_max: 100_000,
        }
    }
}

/// Which machine of the pair an input is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The first machine given to [`Pair::new`].
    A,
    /// The second.
    B,
}

/// Two machines connected back to back. See the module doc.
pub struct Pair<A: Machine, B: Machine> {
    now: Time,
    options: Options,
    a: Side<A>,
    b: Side<B>,
    log: Vec<String>,
    steps: usize,
}

type Resolver<M> =
    Box<dyn FnMut(Time, &<M as Machine>::Effect) -> Resolution<<M as Machine>::Completion>>;

struct Side<M: Machine> {
    name: String,
    machine: M,
    /// Chunks on their way to this side: arrival time, the sender's layer
    /// count when it sent them, the bytes.
    inbound: VecDeque<(Time, usize, Bytes)>,
    /// When the peer's close reaches this side (after its last chunk).
    eof_at: Option<Time>,
    eof_delivered: bool,
    /// Completions waiting to be delivered: (due, emission order, id, value).
    completions: Vec<(Time, u64, EffectId, M::Completion)>,
    completion_seq: u64,
    resolver: Option<Resolver<M>>,
    timeout: Option<Time>,
    closed: Option<CloseReason>,
    layers: Vec<Layer>,
    /// Bytes handed back in `StartLayer`s so far.
    handed_back: usize,
    events: Vec<(Time, M::Event)>,
}

/// What one side's drain asks of the other side.
enum ToPeer {
    /// Bytes, with the number of layers the sender ran when it sent them.
    Bytes(usize, Bytes),
    Close,
}

/// The next thing a side has to do, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    // Declaration order is the tie-break order within a side.
    Completion,
    Bytes,
    Eof,
    Timeout,
}

impl<M: Machine> Side<M>
where
    M::Effect: Debug,
    M::Completion: Debug,
    M::Event: Debug,
    M::Command: Debug,
{
    fn new(name: &str, machine: M) -> Self {
        Side {
            name: name.to_owned(),
            machine,
            inbound: VecDeque::new(),
            eof_at: None,
            eof_delivered: false,
            completions: Vec::new(),
            completion_seq: 0,
            resolver: None,
            timeout: None,
            closed: None,
            layers: Vec::new(),
            handed_back: 0,
            events: Vec::new(),
        }
    }

    /// The earliest thing this side can do next, if any.
    fn next_due(&self) -> Option<(Time, Due)> {
        let mut best: Option<(Time, Due)> = None;
        let mut consider = |t: Time, d: Due| {
            if !matches!(best, Some(b) if b <= (t, d)) {
                best = Some((t, d));
            }
        };
        if let Some(&(t, _, _, _)) = self.completions.iter().min_by_key(|c| (c.0, c.1)) {
            consider(t, Due::Completion);
        }
        if self.closed.is_some() {
            // After Close only completions are delivered (the contract).
            return best;
        }
        let reading = self.machine.wants_input();
        if reading {
            if let Some(&(t, _, _)) = self.inbound.front() {
                consider(t, Due::Bytes);
            } else if let (Some(t), false) = (self.eof_at, self.eof_delivered) {
                consider(t, Due::Eof);
            }
        }
        if let Some(t) = self.timeout {
            consider(t, Due::Timeout);
        }
        best
    }

    /// Delivers the input `due` at `now`, drains, and returns what the peer
    /// must receive.
    fn deliver(
        &mut self,
        now: Time,
        due: Due,
        coalesce: bool,
        log: &mut Vec<String>,
    ) -> Vec<ToPeer> {
        let layers_before = self.layers.len();
        // Bytes in this input that the sender sent under the next layer.
        let mut post_switch_bytes = 0;
        let input: InputOf<M> = match due {
            Due::Completion => {
                let i = (0..self.completions.len())
                    .min_by_key(|&i| (self.completions[i].0, self.completions[i].1))
                    .expect("a completion is due");
                let (_, _, id, c) = self.completions.remove(i);
                log.push(format!("{now} {} completion {id:?} {c:?}", self.name));
                Input::Completion(id, c)
            }
            Due::Bytes => {
                let (_, tag, first) = self.inbound.pop_front().expect("bytes are due");
                let old = self.layers.len();
                assert_eq!(
                    tag, old,
                    "layer desync: {} received bytes sent under {} layer(s) while it runs {:?}",
                    self.name, tag, self.layers
                );
                if !coalesce {
                    Input::Bytes(first)
                } else {
                    let mut all = first.to_vec();
                    while let Some(&(t, tag, _)) = self.inbound.front() {
                        if t > now {
                            break;
                        }
                        let (_, _, more) = self.inbound.pop_front().expect("front exists");
                        // Only the layer right after the current one can
                        // follow in the same read: anything later would need
                        // a switch the receiver has not reached.
                        assert!(
                            tag == old || tag == old + 1,
                            "layer desync: {} got bytes under {tag} layer(s) behind bytes under {old}",
                            self.name
                        );
                        if tag != old {
                            post_switch_bytes += more.len();
                        }
                        all.extend_from_slice(&more);
                    }
                    Input::Bytes(Bytes::from(all))
                }
            }
            Due::Eof => {
                self.eof_delivered = true;
                log.push(format!("{now} {} eof", self.name));
                Input::Eof
            }
            Due::Timeout => {
                log.push(format!("{now} {} timeout", self.name));
                Input::Timeout
            }
        };
        machine::handle(&mut self.machine, now, input);
        let handed_back_before = self.handed_back;
        let to_peer = self.drain(now, log);
        if post_switch_bytes > 0 && self.closed.is_none() {
            assert!(
                self.layers.len() > layers_before,
                "layer desync: {} read {post_switch_bytes} bytes sent under a layer it never started",
                self.name
            );
            assert_eq!(
                self.handed_back - handed_back_before,
                post_switch_bytes,
                "layer desync: {} switched layers but handed back a different number of bytes \
                 than its peer sent after the switch",
                self.name
            );
        }
        to_peer
    }

    fn command(&mut self, now: Time, command: M::Command, log: &mut Vec<String>) -> Vec<ToPeer> {
        assert!(
            self.closed.is_none(),
            "command to {} after it closed",
            self.name
        );
        log.push(format!("{now} {} command {command:?}", self.name));
        self.machine.handle_command(now, command);
        self.drain(now, log)
    }

    fn drain(&mut self, now: Time, log: &mut Vec<String>) -> Vec<ToPeer> {
        let mut to_peer = Vec::new();
        let mut outputs = Vec::new();
        self.timeout = machine::drain(&mut self.machine, |o| outputs.push(o));
        for output in outputs {
            match output {
                Output::Transmit(bytes) => {
                    if self.closed.is_some() {
                        continue; // the connection is gone; bytes go nowhere
                    }
                    log.push(format!(
                        "{now} {} send \"{}\"",
                        self.name,
                        bytes.escape_ascii()
                    ));
                    to_peer.push(ToPeer::Bytes(self.layers.len(), bytes));
                }
                Output::Effect { id, effect } => {
                    log.push(format!("{now} {} effect {id:?} {effect:?}", self.name));
                    let resolver = self.resolver.as_mut().unwrap_or_else(|| {
                        panic!("{} emitted an effect but has no resolver", self.name)
                    });
                    match resolver(now, &effect) {
                        Resolution::After(delay, c) => {
                            self.completion_seq += 1;
                            self.completions
                                .push((now + delay, self.completion_seq, id, c));
                        }
                        Resolution::Never => {
                            log.push(format!("{now} {} effect {id:?} hangs", self.name))
                        }
                    }
                }
                Output::Event(e) => {
                    log.push(format!("{now} {} event {e:?}", self.name));
                    self.events.push((now, e));
                }
                Output::StartLayer {
                    layer,
                    input_after_switch,
                } => {
                    if self.closed.is_some() {
                        continue;
                    }
                    let mut line = format!("{now} {} layer {layer}", self.name);
                    self.layers.push(layer);
                    if !input_after_switch.is_empty() {
                        let _ = write!(line, " (+{} bytes handed back)", input_after_switch.len());
                        self.handed_back += input_after_switch.len();
                        self.inbound
                            .push_front((now, self.layers.len(), input_after_switch));
                    }
                    log.push(line);
                }
                Output::Close(reason) => {
                    if self.closed.is_some() {
                        continue;
                    }
                    log.push(format!("{now} {} close {reason}", self.name));
                    self.closed = Some(reason);
                    self.inbound.clear();
                    to_peer.push(ToPeer::Close);
                }
            }
        }
        if self.closed.is_some() {
            self.timeout = None;
        }
        to_peer
    }

    fn receive(&mut self, at: Time, tag: usize, bytes: Bytes, chunk_bytes_max: Option<usize>) {
        if self.closed.is_some() {
            return;
        }
        match chunk_bytes_max {
            Some(n) if n > 0 => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let piece = rest.split_to(n.min(rest.len()));
                    self.inbound.push_back((at, tag, piece));
                }
            }
            _ => self.inbound.push_back((at, tag, bytes)),
        }
    }
}

impl<A: Machine, B: Machine> Pair<A, B>
where
    A::Effect: Debug,
    A::Completion: Debug,
    A::Event: Debug,
    A::Command: Debug,
    B::Effect: Debug,
    B::Completion: Debug,
    B::Event: Debug,
    B::Command: Debug,
{
    /// Connects `a` and `b` at time zero and drains both (A first), so
    /// whatever their constructors queued (banners) is on its way.
    pub fn new(a: A, b: B) -> Self {
        Self::with_options(a, b, Options::default())
    }

    /// As [`Pair::new`], with knobs.
    pub fn with_options(a: A, b: B, options: Options) -> Self {
        Self::with_names(a, "a", b, "b", options)
    }

    /// As [`Pair::with_options`], naming the sides in the log (e.g.
    /// "client" and "server").
    pub fn with_names(a: A, a_name: &str, b: B, b_name: &str, options: Options) -> Self {
        let mut pair = Pair {
            now: Time::ZERO,
            options,
            a: Side::new(a_name, a),
            b: Side::new(b_name, b),
            log: Vec::new(),
            steps: 0,
        };
        let to_b = pair.a.drain(Time::ZERO, &mut pair.log);
        pair.send_a_to_b(to_b);
        let to_a = pair.b.drain(Time::ZERO, &mut pair.log);
        pair.send_b_to_a(to_a);
        pair
    }

    /// Sets how A's effects are answered: `resolver(now, &effect)`.
    pub fn resolve_a(
        &mut self,
        resolver: impl FnMut(Time, &A::Effect) -> Resolution<A::Completion> + 'static,
    ) -> &mut Self {
        self.a.resolver = Some(Box::new(resolver));
        self
    }

    /// Sets how B's effects are answered: `resolver(now, &effect)`.
    pub fn resolve_b(
        &mut self,
        resolver: impl FnMut(Time, &B::Effect) -> Resolution<B::Completion> + 'static,
    ) -> &mut Self {
        self.b.resolver = Some(Box::new(resolver));
        self
    }

    /// Delivers an application command to A now, and drains it.
    pub fn command_a(&mut self, command: A::Command) {
        let to_b = self.a.command(self.now, command, &mut self.log);
        self.send_a_to_b(to_b);
    }

    /// Delivers an application command to B now, and drains it.
    pub fn command_b(&mut self, command: B::Command) {
        let to_a = self.b.command(self.now, command, &mut self.log);
        self.send_b_to_a(to_a);
    }

    /// Delivers the single earliest pending input (which may be a timer).
    /// Returns `false`, doing nothing, when nothing at all is pending.
    pub fn step(&mut self) -> bool {
        let Some((t, which, due)) = self.next_due() else {
            return false;
        };
        self.steps += 1;
        assert!(
            self.steps <= self.options.steps_max,
            "pair harness: more than {} steps; machines are not converging. Log tail:\n{}",
            self.options.steps_max,
            self.log[self.log.len().saturating_sub(20)..].join("\n")
        );
        // Time never goes backwards, even for an input that was due earlier
        // but held back by `wants_input`.
        self.now = self.now.max(t);
        match which {
            Which::A => {
                let to_b = self
                    .a
                    .deliver(self.now, due, self.options.coalesce, &mut self.log);
                self.send_a_to_b(to_b);
            }
            Which::B => {
                let to_a = self
                    .b
                    .deliver(self.now, due, self.options.coalesce, &mut self.log);
                self.send_b_to_a(to_a);
            }
        }
        true
    }

    /// Runs until only timers are pending (or nothing): every byte in
    /// flight, EOF and completion is delivered, and timers due before them
    /// fire in order. Timers due later than the last such input do not.
    pub fn settle(&mut self) {
        while self.next_due_not_timer_bound().is_some() {
            self.step();
        }
    }

    /// Runs every input due at or before `t`, then moves the clock to `t`.
    pub fn run_until(&mut self, t: Time) {
        while let Some((due_at, _, _)) = self.next_due() {
            if due_at > t {
                break;
            }
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time from now.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until both machines have closed and every completion has been
    /// delivered, or nothing is pending at all.
    pub fn run_to_end(&mut self) {
        while self.step() {}
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Machine A, to inspect (mutating it would bypass the drain rule).
    pub fn a(&self) -> &A {
        &self.a.machine
    }

    /// Machine B, to inspect.
    pub fn b(&self) -> &B {
        &self.b.machine
    }

    /// Events A emitted so far, with their times.
    pub fn events_a(&self) -> &[(Time, A::Event)] {
        &self.a.events
    }

    /// Events B emitted so far, with their times.
    pub fn events_b(&self) -> &[(Time, B::Event)] {
        &self.b.events
    }

    /// Why A closed, if it did.
    pub fn closed_a(&self) -> Option<&CloseReason> {
        self.a.closed.as_ref()
    }

    /// Why B closed, if it did.
    pub fn closed_b(&self) -> Option<&CloseReason> {
        self.b.closed.as_ref()
    }

    /// The log so far: one line per thing that happened,
    /// `"<time> <side> <what> …"`.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// The log as one string, a line per entry: ready for an insta
    /// snapshot (`insta::assert_snapshot!(pair.log_text())`).
    pub fn log_text(&self) -> String {
        let mut text = self.log.join("\n");
        text.push('\n');
        text
    }

    /// Returns the log so far and starts a new one.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// When the next input of any kind is due, if any (A's and B's timers
    /// included).
    pub fn next_due_at(&self) -> Option<Time> {
        self.next_due().map(|(t, _, _)| t)
    }

    fn next_due(&self) -> Option<(Time, Which, Due)> {
        let a = self.a.next_due().map(|(t, d)| (t, Which::A, d));
        let b = self.b.next_due().map(|(t, d)| (t, Which::B, d));
        match (a, b) {
            // At equal times A goes first.
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The next input if some non-timer input is still pending somewhere
    /// (then the earliest input overall, which may be a timer due before it).
    fn next_due_not_timer_bound(&self) -> Option<(Time, Which, Due)> {
        if self.a.has_non_timer_pending() || self.b.has_non_timer_pending() {
            self.next_due()
        } else {
            None
        }
    }

    fn send_a_to_b(&mut self, to_b: Vec<ToPeer>) {
        let at = self.now + self.options.latency_a_to_b;
        for t in to_b {
            match t {
                ToPeer::Bytes(tag, bytes) => {
                    self.b.receive(at, tag, bytes, self.options.chunk_bytes_max)
                }
                ToPeer::Close => self.b.eof_at = Some(at),
            }
        }
    }

    fn send_b_to_a(&mut self, to_a: Vec<ToPeer>) {
        let at = self.now + self.options.latency_b_to_a;
        for t in to_a {
            match t {
                ToPeer::Bytes(tag, bytes) => {
                    self.a.receive(at, tag, bytes, self.options.chunk_bytes_max)
                }
                ToPeer::Close => self.a.eof_at = Some(at),
            }
        }
    }
}

impl<M: Machine> Side<M> {
    /// Whether an input other than a timer is waiting and deliverable.
    fn has_non_timer_pending(&self) -> bool {
        if !self.completions.is_empty() {
            return true;
        }
        if self.closed.is_some() || !self.machine.wants_input() {
            return false;
        }
        !self.inbound.is_empty() || (self.eof_at.is_some() && !self.eof_delivered)
    }
}

impl<A: Machine, B: Machine> fmt::Debug for Pair<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("now", &self.now)
            .field("a", &self.a.name)
            .field("b", &self.b.name)
            .field("log_lines", &self.log.len())
            .finish()
    }
}
