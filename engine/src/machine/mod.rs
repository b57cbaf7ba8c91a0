//! The contract every protocol machine implements: [`Machine`].
//!
//! One trait serves csync and MUPDATE and dsync, servers and clients, so that
//! the tokio driver (`io_tokio::driver`), the pair harness
//! ([`crate::harness`]) and the simulator are each written once.
//!
//! This module never performs I/O, reads a clock or spawns anything: it only
//! names the inputs a machine accepts and the outputs it produces.
//!
//! # Inputs and outputs
//!
//! | inputs (`handle_*`)                         | outputs ([`Output`], from `poll_output`)        |
//! |---------------------------------------------|--------------------------------------------------|
//! | bytes from the peer: `handle_input`         | bytes to send: [`Output::Transmit`]              |
//! | the peer's end of stream: `handle_eof`      | a side effect: [`Output::Effect`] (store write, auth check, …) |
//! | a timer expiry: `handle_timeout`            | an application event: [`Output::Event`]          |
//! | an effect finished: `handle_completion`     | a layer switch: [`Output::StartLayer`] (COMPRESS, STARTTLS) |
//! | an application command: `handle_command`    | the end: [`Output::Close`]                       |
//! |                                             | and, separately, "wake me at": `poll_timeout`    |
//!
//! # Design choices
//!
//! - **Time** is a [`Time`] value passed into every input (see [`time`] for why
//!   a newtype rather than `std::time::Instant`).
//! - **Effects carry an [`EffectId`]** chosen by the machine; the completion
//!   comes back with the same id, in *any* order, so a driver may run effects
//!   concurrently (the tokio driver does, up to a bound). A machine that needs
//!   effect B to start after effect A finished waits for A's completion
//!   before emitting B. This is how "reads are synchronous, writes are
//!   effects" (STYLE.md, Storage) reaches the driver: the effect type is the
//!   machine's own (`type Effect`), so a csync server's effect can be a store
//!   transaction while a client's is an auth lookup.
//! - **Layers** (COMPRESS DEFLATE, TLS) live in the driver, but the machine
//!   decides the byte at which they start: every [`Output::Transmit`] before
//!   an [`Output::StartLayer`] goes out under the old layering, every one after
//!   it under the new. Bytes the machine had already received past the switch
//!   point (a client that pipelined compressed bytes right behind
//!   `COMPRESS DEFLATE`) are handed back in `StartLayer::input_after_switch`
//!   so the driver decodes them through the new layer. quinn and str0m have no
//!   such output because their layers are fixed; IMAP's are negotiated.
//! - **Backpressure** is [`Machine::wants_input`]: while it is `false` the
//!   driver does not call `handle_input`, so a machine with many store writes
//!   in flight stops the peer through TCP flow control instead of buffering.
//!   Together with the driver's own bound on unsent bytes, memory per
//!   connection stays bounded whatever the peer sends.
//! - **Outputs and timeout are split** (quinn): `poll_output` returns `None`
//!   when drained, and `poll_timeout` is a pure query, rather than str0m's
//!   `Output::Timeout` terminator. That keeps "when next?" answerable at any
//!   moment, which the harness and simulator need to pick the next event.

pub mod time;

use bytes::Bytes;
use core::fmt;

pub use time::Time;

/// A protocol state machine: fed with `handle_*`, drained with
/// [`poll_output`](Machine::poll_output), woken at
/// [`poll_timeout`](Machine::poll_timeout).
///
/// # Call order (the single-mutation rule)
///
/// 1. A machine is created when its connection exists. Whatever it must say
///    first (a banner, a client's first command) its constructor queues; the
///    driver drains it before feeding anything.
/// 2. Call exactly one mutation: `handle_input`, `handle_eof`,
///    `handle_timeout`, `handle_completion` or `handle_command`.
/// 3. Then call `poll_output` until it returns `None`, acting on each output
///    in order, and only then read `poll_timeout` and `wants_input`.
///    [`drain`] does steps 3 in one call; use it.
/// 4. Wait for the next input: bytes (only while `wants_input()`), peer EOF,
///    the timeout, an effect completion, or a command. Go to 2.
///
/// Further rules:
/// - Every `now` is non-decreasing across calls on one machine.
/// - `handle_timeout` may be called spuriously (early, or twice); it must be a
///   no-op when nothing is due.
/// - After `handle_eof`, no more `handle_input`.
/// - After an [`Output::Close`], the driver sends the transmits that came
///   before it, closes the connection, and delivers completions for effects
///   already emitted (their events still matter; any bytes are discarded).
///   Nothing else is fed. `is_closed` is then `true` for good.
/// - `poll_timeout`'s value may change after any mutation or `poll_output`,
///   and after nothing else.
/// - After `handle_eof` a machine must eventually emit [`Output::Close`]
///   (at once, or after its last effects or a timeout); one that waits for
///   nothing at all is a bug the tokio driver reports as `Stalled`.
/// - If the connection itself fails (reset, TLS or COMPRESS error), the
///   driver stops feeding the machine without `handle_eof`, but still
///   delivers completions of effects already emitted: a store write is
///   never abandoned halfway.
///
/// Errors are outputs, not `Result`s: a peer's bad bytes give the protocol's
/// own BAD/NO as a `Transmit` (and usually an `Event`), or an
/// [`Output::Close`] with a [`CloseReason`] when the session cannot go on.
/// Caller misuse (input after EOF) is a bug and may panic in debug builds.
pub trait Machine {
    /// A side effect the driver performs for the machine (store write, auth
    /// check, …). Comes out as [`Output::Effect`] with an [`EffectId`].
    type Effect;
    /// The result of an effect, handed back with its [`EffectId`].
    type Completion;
    /// Something the application should learn (a mailbox replicated, a
    /// peer authenticated, a protocol error logged).
    type Event;
    /// Something the application asks the machine to do (replicate this
    /// user, shut down). Machines without commands use
    /// [`core::convert::Infallible`].
    type Command;

    /// Bytes from the peer, in order, any chunking. The machine buffers what
    /// it cannot use yet, within its `Options` limits; a peer that blows a
    /// limit gets an [`Output::Close`].
    fn handle_input(&mut self, now: Time, bytes: &[u8]);

    /// The peer will send no more bytes.
    fn handle_eof(&mut self, now: Time);

    /// The time from `poll_timeout` has come (or a spurious wake-up).
    fn handle_timeout(&mut self, now: Time);

    /// The effect `id` finished with `completion`.
    fn handle_completion(&mut self, now: Time, id: EffectId, completion: Self::Completion);

    /// An application command.
    fn handle_command(&mut self, now: Time, command: Self::Command);

    /// The next output, or `None` when drained.
    fn poll_output(&mut self) -> Option<Output<Self::Effect, Self::Event>>;

    /// When `handle_timeout` should next be called, if ever.
    fn poll_timeout(&self) -> Option<Time>;

    /// `false` while the machine wants no more peer bytes (it is waiting for
    /// completions, or has as much buffered as its options allow). The
    /// driver stops reading from the peer until this turns `true` again after
    /// a later mutation. A machine must not return `false` with nothing in
    /// flight that could change it (no pending effect, no timeout), or the
    /// connection stalls.
    fn wants_input(&self) -> bool;

    /// `true` once the machine has emitted [`Output::Close`].
    fn is_closed(&self) -> bool;
}

/// One output of a machine, in the order the driver must act on them.
#[must_use = "every output must be acted on, or the conversation desynchronises"]
#[derive(Clone, PartialEq, Eq)]
pub enum Output<X, V> {
    /// Send these bytes to the peer, after every earlier `Transmit`.
    Transmit(Bytes),
    /// Perform `effect` and later call `handle_completion(now, id, ..)`.
    Effect {
        /// Chosen by the machine, unique among its effects in flight.
        id: EffectId,
        /// What to do.
        effect: X,
    },
    /// Tell the application.
    Event(V),
    /// From here on, both directions go through `layer`: every `Transmit`
    /// before this output is sent under the old layering, every one after it
    /// under the new; incoming bytes are decoded by the new layer from the
    /// first byte the machine did not consume.
    StartLayer {
        /// The layer to push on top of the current ones.
        layer: Layer,
        /// Bytes the machine already received that lie past the switch point
        /// (still encoded by the new layer: deflated, or TLS records). The
        /// driver decodes them before anything it reads next. Usually empty.
        input_after_switch: Bytes,
    },
    /// Send the earlier transmits, then close the connection.
    Close(CloseReason),
}

impl<X: fmt::Debug, V: fmt::Debug> fmt::Debug for Output<X, V> {
    /// Transmitted bytes are summarised by length: payloads never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Transmit(b) => write!(f, "Transmit({} bytes)", b.len()),
            Output::Effect { id, effect } => write!(f, "Effect({id:?}, {effect:?})"),
            Output::Event(e) => write!(f, "Event({e:?})"),
            Output::StartLayer {
                layer,
                input_after_switch,
            } => write!(
                f,
                "StartLayer({layer:?}, {} bytes after switch)",
                input_after_switch.len()
            ),
            Output::Close(r) => write!(f, "Close({r:?})"),
        }
    }
}

/// A transport layer a machine can start mid-stream. The driver owns the
/// implementation; the machine only decides when.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layer {
    /// Raw deflate (RFC 1951, no zlib header) both ways, as IMAP COMPRESS
    /// (RFC 4978) and Cyrus csync's `COMPRESS DEFLATE` use it. The driver
    /// sync-flushes after every drain, so each protocol reply reaches the
    /// peer without waiting for more data.
    Deflate,
    /// A TLS server handshake with the driver's server configuration
    /// (STARTTLS accepted). If the driver has none, or the handshake fails,
    /// the driver closes the connection.
    TlsServer,
    /// A TLS client handshake, verifying the peer as `server_name`.
    TlsClient {
        /// DNS name or IP address the server certificate must match.
        server_name: String,
    },
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Deflate => f.write_str("deflate"),
            Layer::TlsServer => f.write_str("tls-server"),
            Layer::TlsClient { server_name } => write!(f, "tls-client({server_name})"),
        }
    }
}

/// Why a machine closed its connection. Details name the rule or limit,
/// never the peer's bytes (they may hold credentials or mail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// Nobody's fault: the conversation ended as the protocol says
    /// (LOGOUT, EXIT, QUIT, a client that finished its work).
    #[error("done")]
    Done,
    /// The peer closed its side and the machine has nothing left to say.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer's fault: it broke framing or the protocol beyond recovery.
    #[error("peer broke the protocol: {0}")]
    PeerError(String),
    /// The peer's fault: it exceeded a limit from our `Options`.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The peer's (or the network's) fault: it went silent past a timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Our side's fault: a store or auth effect failed in a way the
    /// protocol cannot report and go on.
    #[error("effect failed: {0}")]
    EffectFailed(String),
    /// Our application's choice: a command asked the machine to stop.
    #[error("closed locally: {0}")]
    Local(String),
}

/// Identifies one effect of one machine; its completion carries it back.
///
/// The machine chooses ids (usually a counter, [`EffectIds`]); the driver
/// treats them as opaque.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(pub u64);

impl fmt::Debug for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A counter handing out fresh [`EffectId`]s, starting at 1.
#[derive(Clone, Debug, Default)]
pub struct EffectIds {
    last: u64,
}

impl EffectIds {
    /// A fresh id, never returned before by this counter.
    pub fn next_id(&mut self) -> EffectId {
        self.last += 1;
        EffectId(self.last)
    }
}

/// One input to a machine, as a value: what the harness and the simulator
/// queue before they deliver it with [`handle`].
#[derive(Clone, PartialEq, Eq)]
pub enum Input<C, Cmd> {
    /// Bytes from the peer.
    Bytes(Bytes),
    /// The peer's end of stream.
    Eof,
    /// A timer expiry.
    Timeout,
    /// An effect finished.
    Completion(EffectId, C),
    /// An application command.
    Command(Cmd),
}

impl<C: fmt::Debug, Cmd: fmt::Debug> fmt::Debug for Input<C, Cmd> {
    /// Bytes are summarised by length: payloads never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Input::Eof => f.write_str("Eof"),
            Input::Timeout => f.write_str("Timeout"),
            Input::Completion(id, c) => write!(f, "Completion({id:?}, {c:?})"),
            Input::Command(c) => write!(f, "Command({c:?})"),
        }
    }
}

/// Shorthand for the [`Input`] type of machine `M`.
pub type InputOf<M> = Input<<M as Machine>::Completion, <M as Machine>::Command>;
/// Shorthand for the [`Output`] type of machine `M`.
pub type OutputOf<M> = Output<<M as Machine>::Effect, <M as Machine>::Event>;

/// Delivers one [`Input`] to `machine` with the matching `handle_*` call.
/// Follow it with [`drain`].
pub fn handle<M: Machine + ?Sized>(machine: &mut M, now: Time, input: InputOf<M>) {
    match input {
        Input::Bytes(b) => machine.handle_input(now, &b),
        Input::Eof => machine.handle_eof(now),
        Input::Timeout => machine.handle_timeout(now),
        Input::Completion(id, c) => machine.handle_completion(now, id, c),
        Input::Command(c) => machine.handle_command(now, c),
    }
}

/// Step 3 of the call order: hands every pending output to `sink`, in order,
/// then returns [`Machine::poll_timeout`]. Call it after every mutation.
pub fn drain<M: Machine + ?Sized>(
    machine: &mut M,
    mut sink: impl FnMut(OutputOf<M>),
) -> Option<Time> {
    while let Some(output) = machine.poll_output() {
        sink(output);
    }
    machine.poll_timeout()
}
