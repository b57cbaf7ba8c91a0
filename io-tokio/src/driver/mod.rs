//! The one generic driver: runs any [`engine::machine::Machine`] over any
//! byte stream (TCP, TLS, stdin/stdout, a turmoil `TcpStream`).
//!
//! It is the tokio half of the machine contract. Per connection it:
//! - reads and writes **concurrently** (one `select!` over the read half, the
//!   write half, effect completions, the timer and the command channel), so a
//!   peer that sends a large literal while we send a large reply never
//!   deadlocks us (imap-next's stream driver explains the trap);
//! - takes `now` from `tokio::time::Instant`, so tokio's paused clock and
//!   turmoil's simulated clock drive the machine's timers;
//! - hands effects to an [`EffectExecutor`] (a store, an auth checker), at
//!   most [`Options::effects_in_flight_max`] at once, and feeds completions
//!   back in the order they finish;
//! - applies COMPRESS DEFLATE ([`proto::compress`]) and STARTTLS
//!   (tokio-rustls) at exactly the byte the machine's
//!   [`Output::StartLayer`] names;
//! - closes when the machine says [`Output::Close`], after sending everything
//!   before it, and still completes the effects already started;
//! - logs with `tracing` in a span per connection: the peer, byte counts,
//!   layer switches and the close reason — never payload bytes;
//! - writes the per-user protocol transcript Cyrus admins know
//!   ([`telemetry`]) when the tool asks for it and the user's
//!   `log/USER/` directory exists: the one place payload bytes are
//!   written, to a file the admin created for that purpose.
//!
//! It makes no protocol decision: it never looks inside the bytes, effects,
//! events or commands it moves.
//!
//! # Bounded memory
//! Nothing here grows with what the peer sends or fails to read: reads are
//! at most [`Options::read_chunk_bytes`]; the driver stops reading while the
//! machine says [`Machine::wants_input`] is false, while effects are waiting
//! for an executor slot, or while the write buffer is full (at least
//! [`Options::write_buffer_bytes_max`] unsent bytes); inflated input comes
//! out in chunks of at most
//! [`proto::compress::InflateOptions::output_chunk_bytes_max`]. The machine
//! bounds its own buffers. Timers fire only while the write buffer has room,
//! so a machine streams a long reply chunk by chunk by asking for a timeout
//! at `now` after each one (the csync server's `GET FETCH` does).
//!
//! # Backpressure on commands, and a peer that stops reading
//! Application commands are output the peer did not ask for (a MUPDATE
//! master pushes every change to its UPDATE subscribers as commands), so a
//! peer that stops reading must not make them pile up here. While the write
//! buffer is full, or effects wait for an executor slot, the driver takes
//! **no command**: they stay in the bounded command channel, whose sender
//! then finds it full and applies its own policy (the MUPDATE feed drops a
//! subscriber that falls behind and queues `Lagged` in the slot it keeps
//! for that). So the driver's unsent bytes never exceed
//! `write_buffer_bytes_max` plus what one step of the machine emits (one
//! command, one completion, one read chunk or one timer); `Outcome` reports
//! the peak as [`Outcome::write_buffer_bytes_peak`].
//!
//! Backpressure alone would let a peer that never reads again hold its
//! connection, its full buffer and the full channel behind it forever. So
//! when the peer accepts **not one byte** for [`Options::write_stall_timeout`]
//! while the buffer is full (or while the last bytes before a close or a
//! TLS switch wait), the driver ends the connection with
//! [`Error::PeerNotReading`]. The clock restarts at every byte the peer
//! takes, so a healthy slow reader (one that reads, however slowly) is never
//! cut off, and a buffer below the limit never starts it. This is not
//! [`Error::Stalled`]: that is the machine waiting for nothing, detected only
//! when no branch of the loop can fire; a full buffer always has its write
//! pending, so it never looks stalled.
//!
//! # Determinism
//! The `select!` is `biased` (completions, then writes, then reads, then the
//! timer, then commands), so under turmoil the same seed gives the same run.

pub mod observed;
mod prefixed;
pub mod telemetry;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use engine::machine::{self, CloseReason, EffectId, Layer, Machine, Output, OutputOf, Time};
use futures_util::stream::{FuturesUnordered, StreamExt};
use proto::compress::{CompressError, Deflater, InflateOptions, Inflater};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::tls::TlsConfigs;
use prefixed::Prefixed;
use telemetry::{Direction, Telemetry, Transcript};

/// Performs a machine's effects: the store, the auth checker, … plug in here.
///
/// `execute` is called in the order the machine emitted the effects, and
/// whatever it does before its first `.await` happens in that order too; a
/// store that must apply writes in order can enqueue them there (onto its
/// writer thread) and await the result afterwards. The futures then run
/// concurrently, up to [`Options::effects_in_flight_max`] per connection.
pub trait EffectExecutor<X>: Send + Sync {
    /// What an effect comes back as (the machine's `Completion`).
    type Completion: Send;

    /// Performs `effect`. Failures are completions too (the machine decides
    /// what a failed write means for the protocol).
    fn execute(&self, effect: X) -> impl Future<Output = Self::Completion> + Send;
}

impl<X, T: EffectExecutor<X> + ?Sized> EffectExecutor<X> for Arc<T> {
    type Completion = T::Completion;
    fn execute(&self, effect: X) -> impl Future<Output = Self::Completion> + Send {
        (**self).execute(effect)
    }
}

impl<X, T: EffectExecutor<X> + ?Sized> EffectExecutor<X> for &T {
    type Completion = T::Completion;
    fn execute(&self, effect: X) -> impl Future<Output = Self::Completion> + Send {
        (**self).execute(effect)
    }
}

/// The executor for machines without effects (`type Effect = Infallible`).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEffects;

impl EffectExecutor<Infallible> for NoEffects {
    type Completion = Infallible;
    async fn execute(&self, effect: Infallible) -> Infallible {
        match effect {}
    }
}

/// An executor made of a closure returning a future: `FnExecutor(|e| async { … })`.
#[derive(Clone, Copy, Debug)]
pub struct FnExecutor<F>(pub F);

impl<X, F, Fut> EffectExecutor<X> for FnExecutor<F>
where
    F: Fn(X) -> Fut + Send + Sync,
    Fut: Future + Send,
    Fut::Output: Send,
{
    type Completion = Fut::Output;
    fn execute(&self, effect: X) -> impl Future<Output = Fut::Output> + Send {
        (self.0)(effect)
    }
}

/// Limits and knobs of one driven connection.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest single read from the transport, and so the largest
    /// `handle_input` without COMPRESS. 16 KiB: a TLS record's worth.
    pub read_chunk_bytes: usize,
    /// Reading and taking commands pause while at least this many bytes
    /// (at least one, if 0) wait to be written, so a peer that sends
    /// requests but never reads replies, or that is pushed changes it never
    /// reads, cannot make us buffer without end. 1 MiB.
    pub write_buffer_bytes_max: usize,
    /// A peer that accepts no byte at all for this long while the write
    /// buffer is full (or while our last bytes before a close or a TLS
    /// switch wait) is cut off with [`Error::PeerNotReading`]. Any byte it
    /// takes restarts the clock. 5 minutes.
    pub write_stall_timeout: Duration,
    /// Effects of one connection running at once; further ones wait in
    /// order (and reading pauses while any wait). 16.
    pub effects_in_flight_max: usize,
    /// Limits of the COMPRESS inflater (chunk size given to the machine,
    /// compressed bytes held).
    pub inflate: InflateOptions,
    /// zlib level for our COMPRESS output; 6 is what Cyrus and Dovecot use.
    pub deflate_level: u32,
    /// A TLS handshake that takes longer ends the connection. 60 s.
    pub tls_handshake_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_chunk_bytes: 16 * 1024,
            write_buffer_bytes_max: 1024 * 1024,
            write_stall_timeout: Duration::from_secs(300),
            effects_in_flight_max: 16,
            inflate: InflateOptions::default(),
            deflate_level: 6,
            tls_handshake_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a connection ended other than by the machine's own [`Output::Close`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The network's or the peer's: reading or writing the connection failed
    /// (reset, broken pipe).
    #[error("connection i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer's: its COMPRESS stream is corrupt, or it outran our inflate
    /// buffer.
    #[error("compression layer: {0}")]
    Compress(#[from] CompressError),
    /// Our configuration's: the machine started TLS in a role this driver
    /// has no configuration for.
    #[error("no TLS configuration for the {0} role")]
    TlsNotConfigured(&'static str),
    /// The peer's (or our certificates'): the TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(io::Error),
    /// The peer's: the TLS handshake did not finish within
    /// [`Options::tls_handshake_timeout`].
    #[error("TLS handshake timed out")]
    TlsHandshakeTimeout,
    /// Our machine's bug: a layer this driver cannot stack there (a second
    /// COMPRESS, TLS under an active COMPRESS, an unknown layer).
    #[error("unsupported layer switch: {0}")]
    LayerUnsupported(String),
    /// Our machine's bug: it waits for nothing (no input wanted, no effect,
    /// no timer, no command channel) without having closed.
    #[error("machine stalled: waiting for nothing without closing")]
    Stalled,
    /// The peer's: it accepted no byte for [`Options::write_stall_timeout`]
    /// while our write buffer was full (or our last bytes waited).
    #[error("peer read nothing for {0:?} with our write buffer full")]
    PeerNotReading(Duration),
}

/// How a driven connection ended.
pub struct Outcome<M> {
    /// The machine, for inspection.
    pub machine: M,
    /// The machine's close reason, or why the driver ended it.
    pub result: Result<CloseReason, Error>,
    /// Bytes read from the transport (after TLS, before inflating).
    pub bytes_read: u64,
    /// Bytes written to the transport (after deflating, before TLS).
    pub bytes_written: u64,
    /// The most bytes that ever waited to be written at once: at most
    /// [`Options::write_buffer_bytes_max`] plus one step's output.
    pub write_buffer_bytes_peak: usize,
}

impl<M> fmt::Debug for Outcome<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("result", &self.result)
            .field("bytes_read", &self.bytes_read)
            .field("bytes_written", &self.bytes_written)
            .field("write_buffer_bytes_peak", &self.write_buffer_bytes_peak)
            .finish_non_exhaustive()
    }
}

/// Any transport the driver can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

type BoxTransport = Box<dyn Transport>;

/// stdin and stdout as one transport (Cyrus's `-X` / inetd style, and
/// dsync's pipe mode).
pub fn stdio() -> tokio::io::Join<tokio::io::Stdin, tokio::io::Stdout> {
    tokio::io::join(tokio::io::stdin(), tokio::io::stdout())
}

/// One machine, ready to be run over a transport. Build with [`Driver::new`]
/// and the setters, then [`Driver::run`].
pub struct Driver<M: Machine, E> {
    machine: M,
    executor: E,
    options: Options,
    tls: TlsConfigs,
    events: Option<mpsc::Sender<M::Event>>,
    commands: Option<mpsc::Receiver<M::Command>>,
    epoch: Option<tokio::time::Instant>,
    peer: String,
    first_layer: Option<Layer>,
    telemetry: Option<(Telemetry, UserOf<M::Event>)>,
}

/// Picks the authenticated user out of a machine's event (for
/// [`Driver::telemetry`]).
pub type UserOf<Ev> = fn(&Ev) -> Option<&str>;

impl<M, E> Driver<M, E>
where
    M: Machine + Send,
    M::Effect: Send + 'static,
    M::Completion: Send + 'static,
    M::Event: Send,
    M::Command: Send,
    E: EffectExecutor<M::Effect, Completion = M::Completion>,
{
    /// A driver for `machine`, whose effects `executor` performs. The
    /// machine's constructor has queued whatever it says first.
    pub fn new(machine: M, executor: E) -> Self {
        Driver {
            machine,
            executor,
            options: Options::default(),
            tls: TlsConfigs::default(),
            events: None,
            commands: None,
            epoch: None,
            peer: String::from("-"),
            first_layer: None,
            telemetry: None,
        }
    }

    /// Starts `layer` before the machine's first output: implicit TLS
    /// (an imaps-style port, `Layer::TlsServer`; or `Layer::TlsClient`
    /// toward one). The machine's first words go out under it.
    pub fn start_layer(mut self, layer: Layer) -> Self {
        self.first_layer = Some(layer);
        self
    }

    /// Sets the limits.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Sets the TLS configurations `StartLayer` uses.
    pub fn tls(mut self, tls: TlsConfigs) -> Self {
        self.tls = tls;
        self
    }

    /// Where the machine's events go. The driver waits for room in the
    /// channel (so a slow consumer slows the connection, never memory);
    /// without a channel, events are dropped.
    pub fn events(mut self, events: mpsc::Sender<M::Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Where application commands come from.
    pub fn commands(mut self, commands: mpsc::Receiver<M::Command>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// The instant that is [`Time::ZERO`] for this machine (default: when
    /// `run` starts). Use the one the machine was created against.
    pub fn epoch(mut self, epoch: tokio::time::Instant) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Per-user protocol telemetry ([`telemetry`]): when the machine emits
    /// an event `user_of` maps to a user whose `log/USER/` directory
    /// exists, everything after it is written there in plaintext. The
    /// driver does not know what a login looks like; the tool says, so
    /// this stays free of protocol decisions.
    /// `None` turns it off.
    pub fn telemetry(mut self, telemetry: Option<Telemetry>, user_of: UserOf<M::Event>) -> Self {
        self.telemetry = telemetry.map(|t| (t, user_of));
        self
    }

    /// How logs name the peer (its address).
    pub fn peer(mut self, peer: impl fmt::Display) -> Self {
        self.peer = peer.to_string();
        self
    }

    /// Runs the machine over `transport` until it closes or the connection
    /// fails. Never panics on peer behaviour.
    pub async fn run<T: Transport>(self, transport: T) -> Outcome<M> {
        let span = tracing::info_span!("conn", peer = %self.peer);
        let Driver {
            machine,
            executor,
            options,
            tls,
            events,
            commands,
            epoch,
            peer: _,
            first_layer,
            telemetry,
        } = self;
        let mut run = Run {
            machine,
            executor: &executor,
            epoch: epoch.unwrap_or_else(tokio::time::Instant::now),
            read_buf: vec![0; options.read_chunk_bytes.max(1)],
            options,
            tls,
            events,
            commands,
            out: BytesMut::new(),
            need_flush: false,
            write_dead: false,
            deflater: None,
            deflate_dirty: false,
            inflater: None,
            pending_events: VecDeque::new(),
            queued_effects: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            deferred: VecDeque::new(),
            tls_switch: None,
            close: None,
            ended: false,
            timeout: None,
            peer_eof: false,
            bytes_read: 0,
            bytes_written: 0,
            write_buffer_bytes_peak: 0,
            write_stalled_since: None,
            telemetry,
            transcript: None,
        };
        let result = async {
            let result = run.run(Box::new(transport), first_layer).await;
            // Whatever ended the connection, effects already emitted run to
            // completion and the machine hears of them (a store write must
            // not be cut off halfway because the peer reset).
            run.ended = true;
            run.finish_effects().await;
            result
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match &result {
            Ok(reason) => info!(
                bytes_read = run.bytes_read,
                bytes_written = run.bytes_written,
                %reason,
                "connection closed"
            ),
            Err(e) => warn!(
                bytes_read = run.bytes_read,
                bytes_written = run.bytes_written,
                error = %e,
                "connection ended"
            ),
        }
        Outcome {
            bytes_read: run.bytes_read,
            bytes_written: run.bytes_written,
            write_buffer_bytes_peak: run.write_buffer_bytes_peak,
            machine: run.machine,
            result,
        }
    }
}

type EffectFuture<'e, C> = Pin<Box<dyn Future<Output = (EffectId, C)> + Send + 'e>>;

/// The state of one running connection.
struct Run<'e, M: Machine, E> {
    machine: M,
    executor: &'e E,
    options: Options,
    tls: TlsConfigs,
    events: Option<mpsc::Sender<M::Event>>,
    commands: Option<mpsc::Receiver<M::Command>>,
    epoch: tokio::time::Instant,
    read_buf: Vec<u8>,
    /// Wire bytes (deflated if COMPRESS is on) not yet written.
    out: BytesMut,
    /// Bytes were written since the last flush (TLS buffers them).
    need_flush: bool,
    /// The peer stopped reading (broken pipe, reset on write): nothing more
    /// is written, reading goes on until its EOF.
    write_dead: bool,
    deflater: Option<Deflater>,
    /// The deflater holds bytes not yet sync-flushed.
    deflate_dirty: bool,
    inflater: Option<Inflater>,
    pending_events: VecDeque<M::Event>,
    /// Effects waiting for an executor slot, in emission order.
    queued_effects: VecDeque<(EffectId, M::Effect)>,
    in_flight: FuturesUnordered<EffectFuture<'e, M::Completion>>,
    /// Outputs that came after a TLS `StartLayer`, acted on after the
    /// handshake.
    deferred: VecDeque<OutputOf<M>>,
    tls_switch: Option<(Layer, bytes::Bytes)>,
    close: Option<CloseReason>,
    /// The connection is over; only completions of effects in flight are
    /// still delivered.
    ended: bool,
    timeout: Option<Time>,
    peer_eof: bool,
    bytes_read: u64,
    bytes_written: u64,
    write_buffer_bytes_peak: usize,
    /// Since when the write buffer has been full without the peer taking a
    /// byte (the [`Options::write_stall_timeout`] clock).
    write_stalled_since: Option<tokio::time::Instant>,
    /// Where transcripts would go, and how to see a login.
    telemetry: Option<(Telemetry, UserOf<M::Event>)>,
    /// This connection's open transcript, once its user logged in.
    transcript: Option<Transcript>,
}

impl<'e, M, E> Run<'e, M, E>
where
    M: Machine + Send,
    M::Effect: Send + 'static,
    M::Completion: Send + 'static,
    M::Event: Send,
    M::Command: Send,
    E: EffectExecutor<M::Effect, Completion = M::Completion>,
{
    fn now(&self) -> Time {
        Time::from_since_epoch(tokio::time::Instant::now().saturating_duration_since(self.epoch))
    }

    async fn run(
        &mut self,
        transport: BoxTransport,
        first_layer: Option<Layer>,
    ) -> Result<CloseReason, Error> {
        let (mut rd, mut wr) = tokio::io::split(transport);
        if let Some(layer) = first_layer {
            self.act(Output::StartLayer {
                layer,
                input_after_switch: bytes::Bytes::new(),
            })?;
        }
        self.drain()?;
        // One timer each for the machine's deadline and the write stall,
        // reset only when the deadline moves: a fresh `sleep_until` per
        // pass would register and cancel a timer entry on every command
        // (three per FIND), which showed in MUPDATE's FIND latency under
        // many clients.
        let machine_timer = tokio::time::sleep_until(far_future());
        tokio::pin!(machine_timer);
        let stall_timer = tokio::time::sleep_until(far_future());
        tokio::pin!(stall_timer);
        loop {
            // The buffer only grows while acting on outputs, each of which
            // ends an iteration, so sampling here sees every peak.
            self.write_buffer_bytes_peak = self.write_buffer_bytes_peak.max(self.out.len());
            self.send_events().await;

            if let Some((layer, handback)) = self.tls_switch.take() {
                // Everything before the switch goes out under the old
                // layering, completely, before the handshake starts.
                write_all(
                    &mut wr,
                    &mut self.out,
                    &mut self.bytes_written,
                    self.options.write_stall_timeout,
                )
                .await?;
                let stream = Prefixed::new(handback, rd.unsplit(wr));
                let tls = handshake(
                    &self.tls,
                    self.options.tls_handshake_timeout,
                    &layer,
                    stream,
                )
                .await?;
                debug!(%layer, "layer started");
                (rd, wr) = tokio::io::split(tls);
                let deferred = std::mem::take(&mut self.deferred);
                for output in deferred {
                    self.act(output)?;
                }
                self.flush_deflate()?;
                continue;
            }

            if let Some(reason) = self.close.clone() {
                if !self.write_dead {
                    match write_all(
                        &mut wr,
                        &mut self.out,
                        &mut self.bytes_written,
                        self.options.write_stall_timeout,
                    )
                    .await
                    {
                        // The peer may already be gone; the close stands
                        // either way.
                        Ok(()) => {
                            let _ = wr.shutdown().await;
                        }
                        Err(Error::Io(e)) if peer_gone(&e) => {
                            debug!(error = %e, "peer gone before our last bytes")
                        }
                        Err(e) => return Err(e),
                    }
                }
                return Ok(reason);
            }

            // Inflated input not yet given to the machine comes before any
            // new read.
            if self.reading_allowed() {
                if let Some(inflater) = self.inflater.as_mut() {
                    if let Some(chunk) = inflater.pull()? {
                        let now = self.now();
                        record(&mut self.transcript, Direction::In, &chunk);
                        self.machine.handle_input(now, &chunk);
                        self.drain()?;
                        continue;
                    }
                }
            }

            let reading = !self.peer_eof && self.reading_allowed();
            let writing = !self.write_dead && (!self.out.is_empty() || self.need_flush);
            if let Some(t) = self.timeout {
                let deadline = self.epoch + t.since_epoch();
                if machine_timer.deadline() != deadline {
                    machine_timer.as_mut().reset(deadline);
                }
            }
            // Commands are output the peer did not ask for: none is taken
            // while the buffer is full or effects queue (see the module doc),
            // so they wait in their bounded channel instead of here.
            let commands_open = self.commands.is_some() && self.room_for_more();
            let full = !self.write_dead && !self.room_for_output();
            if !full {
                self.write_stalled_since = None;
            }
            let stall_deadline = match (full, self.write_stalled_since) {
                (false, _) => None,
                (true, Some(since)) => Some(since + self.options.write_stall_timeout),
                (true, None) => {
                    let now = tokio::time::Instant::now();
                    self.write_stalled_since = Some(now);
                    Some(now + self.options.write_stall_timeout)
                }
            };

            if let Some(deadline) = stall_deadline {
                if stall_timer.deadline() != deadline {
                    stall_timer.as_mut().reset(deadline);
                }
            }

            tokio::select! {
                biased;
                Some((id, completion)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    let now = self.now();
                    self.machine.handle_completion(now, id, completion);
                    self.start_effects();
                    self.drain()?;
                }
                written = write_some(&mut wr, &self.out), if writing => {
                    let n = match written {
                        Ok(n) => n,
                        // The peer closed its reading side (it may have
                        // said goodbye already): stop writing, keep reading,
                        // and let the machine hear the EOF and close.
                        Err(e) if peer_gone(&e) => {
                            debug!(error = %e, "peer stopped reading; discarding our unsent bytes");
                            self.write_dead = true;
                            self.out.clear();
                            self.need_flush = false;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        self.need_flush = false;
                    } else {
                        // The peer took bytes: it reads, however slowly.
                        self.write_stalled_since = None;
                        self.out.advance(n);
                        self.bytes_written += n as u64;
                        self.need_flush = true;
                    }
                }
                read = rd.read(&mut self.read_buf), if reading => {
                    let n = read?;
                    let now = self.now();
                    if n == 0 {
                        debug!("peer closed its side");
                        self.peer_eof = true;
                        self.machine.handle_eof(now);
                    } else {
                        self.bytes_read += n as u64;
                        match self.inflater.as_mut() {
                            Some(inflater) => inflater.feed(&self.read_buf[..n])?,
                            None => {
                                record(&mut self.transcript, Direction::In, &self.read_buf[..n]);
                                self.machine.handle_input(now, &self.read_buf[..n])
                            }
                        }
                    }
                    self.drain()?;
                }
                // Timers wait while the write buffer is full: a machine
                // that streams a long reply asks to be woken at once after
                // each chunk, and gets its next turn only when the peer
                // has taken enough (the stall timeout covers a peer that
                // takes nothing).
                () = &mut machine_timer,
                    if self.timeout.is_some() && self.room_for_output() =>
                {
                    let now = self.now();
                    self.machine.handle_timeout(now);
                    self.drain()?;
                }
                () = &mut stall_timer, if stall_deadline.is_some() =>
                {
                    return Err(Error::PeerNotReading(self.options.write_stall_timeout));
                }
                command = recv(&mut self.commands), if commands_open => {
                    match command {
                        Some(command) => {
                            let now = self.now();
                            self.machine.handle_command(now, command);
                            self.drain()?;
                        }
                        None => self.commands = None,
                    }
                }
                else => return Err(Error::Stalled),
            }
        }
    }

    /// Opens the transcript when `e` says a user logged in whose telemetry
    /// directory exists (one transcript per connection: the first login).
    fn watch_login(&mut self, e: &M::Event) {
        if self.transcript.is_some() {
            return;
        }
        if let Some((telemetry, user_of)) = &self.telemetry {
            if let Some(user) = user_of(e) {
                self.transcript = telemetry.open(user);
                // Looked up once: a later event never opens a second file.
                self.telemetry = None;
            }
        }
    }

    /// Whether the machine may be given more input now.
    fn reading_allowed(&self) -> bool {
        self.close.is_none() && self.machine.wants_input() && self.room_for_more()
    }

    /// Whether the machine may be handed more work (input or a command):
    /// nothing waits for an executor slot and the write buffer has room.
    fn room_for_more(&self) -> bool {
        self.queued_effects.is_empty() && self.room_for_output()
    }

    /// Whether fewer than [`Options::write_buffer_bytes_max`] bytes (at
    /// least one) wait to be written.
    fn room_for_output(&self) -> bool {
        self.out.len() < self.options.write_buffer_bytes_max.max(1)
    }

    /// Step 3 of the machine contract, then acting on every output.
    fn drain(&mut self) -> Result<(), Error> {
        let mut outputs = Vec::new();
        self.timeout = machine::drain(&mut self.machine, |o| outputs.push(o));
        for output in outputs {
            self.act(output)?;
        }
        self.flush_deflate()?;
        if self.close.is_some() {
            self.timeout = None;
        }
        Ok(())
    }

    fn act(&mut self, output: OutputOf<M>) -> Result<(), Error> {
        if self.tls_switch.is_some() && !self.ended {
            // Whatever follows a TLS switch waits for the handshake.
            self.deferred.push_back(output);
            return Ok(());
        }
        if self.close.is_some() || self.ended {
            // After Close (or the connection's end): events still matter;
            // bytes and layers do not.
            match output {
                Output::Event(e) => self.pending_events.push_back(e),
                Output::Effect { id, .. } => {
                    warn!(?id, "machine emitted an effect after closing; not executed")
                }
                _ => {}
            }
            return Ok(());
        }
        match output {
            Output::Transmit(_) if self.write_dead => {}
            Output::Transmit(bytes) => {
                // Plaintext, before COMPRESS and TLS, as Cyrus logs it.
                record(&mut self.transcript, Direction::Out, &bytes);
                match self.deflater.as_mut() {
                    Some(deflater) => {
                        deflater.write(&bytes)?;
                        self.deflate_dirty = true;
                    }
                    None => self.out.extend_from_slice(&bytes),
                }
            }
            Output::Effect { id, effect } => {
                self.queued_effects.push_back((id, effect));
                self.start_effects();
            }
            Output::Event(e) => {
                self.watch_login(&e);
                self.pending_events.push_back(e);
            }
            Output::StartLayer {
                layer,
                input_after_switch,
            } => match layer {
                Layer::Deflate => {
                    if self.deflater.is_some() {
                        return Err(Error::LayerUnsupported("a second COMPRESS".into()));
                    }
                    self.deflater = Some(Deflater::with_level(self.options.deflate_level));
                    let mut inflater = Inflater::new(self.options.inflate);
                    inflater.feed(&input_after_switch)?;
                    self.inflater = Some(inflater);
                    debug!(
                        layer = "deflate",
                        handed_back = input_after_switch.len(),
                        "layer started"
                    );
                }
                Layer::TlsServer | Layer::TlsClient { .. } => {
                    if self.deflater.is_some() {
                        return Err(Error::LayerUnsupported(
                            "TLS under an active COMPRESS".into(),
                        ));
                    }
                    self.tls_switch = Some((layer, input_after_switch));
                }
                other => return Err(Error::LayerUnsupported(other.to_string())),
            },
            Output::Close(reason) => {
                self.flush_deflate()?;
                debug!(%reason, "machine closed");
                self.close = Some(reason);
            }
        }
        Ok(())
    }

    /// Ends a batch of compressed output with a sync flush, so the peer can
    /// read all of it now.
    fn flush_deflate(&mut self) -> Result<(), Error> {
        if self.deflate_dirty {
            if let Some(deflater) = self.deflater.as_mut() {
                let flushed = deflater.flush()?;
                self.out.extend_from_slice(&flushed);
            }
            self.deflate_dirty = false;
        }
        Ok(())
    }

    /// Moves queued effects into executor slots, in emission order.
    fn start_effects(&mut self) {
        while self.in_flight.len() < self.options.effects_in_flight_max.max(1) {
            let Some((id, effect)) = self.queued_effects.pop_front() else {
                break;
            };
            let future = self.executor.execute(effect);
            self.in_flight
                .push(Box::pin(async move { (id, future.await) }));
        }
    }

    /// After the end: runs every effect already emitted to completion and
    /// hands the completions to the machine (whose events still go out). An
    /// executor that never completes holds the connection's task, so
    /// executors carry their own timeouts.
    async fn finish_effects(&mut self) {
        loop {
            self.start_effects();
            let Some((id, completion)) = self.in_flight.next().await else {
                break;
            };
            let now = self.now();
            self.machine.handle_completion(now, id, completion);
            // Only events survive after Close, so this cannot fail.
            let _ = self.drain();
            self.send_events().await;
        }
    }

    async fn send_events(&mut self) {
        while let Some(event) = self.pending_events.pop_front() {
            if let Some(tx) = &self.events {
                if tx.send(event).await.is_err() {
                    debug!("event receiver gone; dropping events from now on");
                    self.events = None;
                }
            }
        }
    }
}

/// Runs the TLS handshake for `layer` over `stream`.
async fn handshake(
    tls: &TlsConfigs,
    limit: Duration,
    layer: &Layer,
    stream: Prefixed<BoxTransport>,
) -> Result<BoxTransport, Error> {
    let timed = |r: Result<io::Result<BoxTransport>, tokio::time::error::Elapsed>| match r {
        Err(_) => Err(Error::TlsHandshakeTimeout),
        Ok(Err(e)) => Err(Error::TlsHandshake(e)),
        Ok(Ok(s)) => Ok(s),
    };
    match layer {
        Layer::TlsServer => {
            let config = tls
                .server
                .clone()
                .ok_or(Error::TlsNotConfigured("server"))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            timed(
                tokio::time::timeout(limit, async {
                    acceptor
                        .accept(stream)
                        .await
                        .map(|s| Box::new(s) as BoxTransport)
                })
                .await,
            )
        }
        Layer::TlsClient { server_name } => {
            let config = tls
                .client
                .clone()
                .ok_or(Error::TlsNotConfigured("client"))?;
            let name = rustls::pki_types::ServerName::try_from(server_name.clone())
                .map_err(|e| Error::TlsHandshake(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            timed(
                tokio::time::timeout(limit, async {
                    connector
                        .connect(name, stream)
                        .await
                        .map(|s| Box::new(s) as BoxTransport)
                })
                .await,
            )
        }
        other => Err(Error::LayerUnsupported(other.to_string())),
    }
}

/// Whether a write error means the peer no longer reads (as opposed to our
/// side failing).
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// Writes some of `out`, or flushes when it is empty.
async fn write_some(wr: &mut WriteHalf<BoxTransport>, out: &[u8]) -> io::Result<usize> {
    if out.is_empty() {
        wr.flush().await?;
        return Ok(0);
    }
    match wr.write(out).await? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

/// Writes and flushes all of `out`, giving up with
/// [`Error::PeerNotReading`] when the peer takes no byte for `stall` (any
/// byte it takes restarts the clock, so a slow reader still gets it all).
async fn write_all(
    wr: &mut WriteHalf<BoxTransport>,
    out: &mut BytesMut,
    bytes_written: &mut u64,
    stall: Duration,
) -> Result<(), Error> {
    while !out.is_empty() {
        let n = tokio::time::timeout(stall, write_some(wr, out))
            .await
            .map_err(|_| Error::PeerNotReading(stall))??;
        out.advance(n);
        *bytes_written += n as u64;
    }
    tokio::time::timeout(stall, wr.flush())
        .await
        .map_err(|_| Error::PeerNotReading(stall))??;
    Ok(())
}

/// Writes a chunk to the transcript, if any; a failed write ends the
/// transcript, never the session.
fn record(transcript: &mut Option<Transcript>, direction: Direction, bytes: &[u8]) {
    if let Some(t) = transcript {
        if !t.record(direction, bytes) {
            *transcript = None;
        }
    }
}

async fn recv<C>(commands: &mut Option<mpsc::Receiver<C>>) -> Option<C> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A deadline for a disabled timer branch (never polled).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}
