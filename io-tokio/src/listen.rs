//! Accept loops: one driver per accepted connection, with graceful shutdown.
//!
//! [`serve`] accepts from any [`Listener`] (a tokio `TcpListener`, a turmoil
//! `TcpListener`, or the socket Cyrus master(8) hands down, see [`master`]),
//! runs a caller's per-connection future on its own task, keeps at most
//! [`ServeOptions::connections_max`] of them alive, and on shutdown stops
//! accepting, lets the live ones finish for [`ServeOptions::shutdown_grace`],
//! then aborts the rest. [`serve_machines`] is the common case: build a
//! machine per connection and run it with [`Driver`].
//!
//! Graceful shutdown: on shutdown `serve` throws [`ServeOptions::drain`]
//! ([`drain`]), so connections whose streams the handler wrapped with
//! `options.drain.wrap(stream)` (`serve_machines` always does) end at their
//! next idle moment: the command in flight finishes and is answered, and no
//! new one starts. [`shutdown_signal`] and [`hangup_signals`] turn SIGTERM,
//! SIGINT and SIGHUP into the shutdown future and a re-read of the config.
//!
//! Nothing here knows a protocol; the machine factory does.

pub mod drain;
pub mod master;

pub use drain::{Drain, Draining};

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use engine::machine::{Machine, Time};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::driver::{Driver, EffectExecutor, Options, Transport};
use crate::tls::TlsConfigs;

/// Something that accepts connections.
pub trait Listener: Send {
    /// The connection type.
    type Stream: Transport;

    /// Waits for the next connection and its peer address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Listener for turmoil::net::TcpListener {
    type Stream = turmoil::net::TcpStream;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send {
        turmoil::net::TcpListener::accept(self)
    }
}

/// Knobs of an accept loop.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections served at once; the loop stops accepting (the kernel
    /// backlog holds newcomers) until one ends. 1024.
    pub connections_max: usize,
    /// After shutdown, how long live connections may take to finish before
    /// they are aborted. 10 s.
    pub shutdown_grace: Duration,
    /// Pause after a failed accept (out of file descriptors, …) so the loop
    /// does not spin. 100 ms.
    pub accept_error_pause: Duration,
    /// Thrown when shutdown begins; handlers wrap their streams with it so
    /// connections end between commands (see [`drain`]). Idle for 500 ms.
    pub drain: Drain,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            connections_max: 1024,
            shutdown_grace: Duration::from_secs(10),
            accept_error_pause: Duration::from_millis(100),
            drain: Drain::default(),
        }
    }
}

/// What an accept loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections whose task ran to its end.
    pub finished: u64,
    /// Connections aborted because the shutdown grace ran out.
    pub aborted: u64,
}

/// Accepts from `listener` until `shutdown` completes, running
/// `handle(stream, peer)` on a task per connection. See the module doc.
pub async fn serve<L, F, Fut>(
    mut listener: L,
    mut handle: F,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> ServeReport
where
    L: Listener,
    F: FnMut(L::Stream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut report = ServeReport::default();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let room = tasks.len() < options.connections_max.max(1);
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                count_join(&mut report, joined);
            }
            accepted = listener.accept(), if room => match accepted {
                Ok((stream, peer)) => {
                    report.accepted += 1;
                    debug!(%peer, "accepted");
                    tasks.spawn(handle(stream, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(options.accept_error_pause).await;
                }
            },
        }
    }
    info!(
        live = tasks.len(),
        "shutting down: no longer accepting; live connections end after their command in flight"
    );
    drop(listener);
    options.drain.start();
    let grace = tokio::time::sleep(options.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            biased;
            joined = tasks.join_next() => match joined {
                Some(joined) => count_join(&mut report, joined),
                None => break,
            },
            () = &mut grace => {
                report.aborted += tasks.len() as u64;
                warn!(aborted = tasks.len(), "shutdown grace over; aborting connections");
                tasks.shutdown().await;
                break;
            }
        }
    }
    report
}

/// Completes when the process is asked to stop: SIGTERM or SIGINT, and
/// SIGHUP too when `hangup_too` (under Cyrus master(8), SIGHUP means "finish
/// your clients and exit; master starts a fresh child", the note's §1.2).
/// Pass it as `serve`'s shutdown, then exit 0, which master counts as a
/// normal exit. If a handler cannot be installed (no signal support), that
/// signal is never reported.
pub async fn shutdown_signal(hangup_too: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    async fn wait(kind: SignalKind) {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot watch a signal");
                std::future::pending::<()>().await
            }
        }
    }
    let hup = async {
        if hangup_too {
            wait(SignalKind::hangup()).await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        () = wait(SignalKind::terminate()) => info!("SIGTERM: shutting down"),
        () = wait(SignalKind::interrupt()) => info!("SIGINT: shutting down"),
        () = hup => info!("SIGHUP: finishing clients, then exiting"),
    }
}

/// What a process was asked to do by a signal, as [`hangup_signals`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalRequest {
    /// SIGHUP outside master(8): re-read the configuration.
    Reload,
}

/// Calls `on_hangup` for every SIGHUP, forever (spawn it). For a daemon
/// running on its own (not under Cyrus master(8), where SIGHUP means "exit
/// after your clients" and [`shutdown_signal`]`(true)` handles it): the
/// callback re-reads imapd.conf, reports what `config::lint` finds, and
/// applies what can change without a restart (the caller decides what; new
/// connections see the new settings). A config that fails to load is
/// reported and the running one kept.
pub async fn hangup_signals(mut on_hangup: impl FnMut(SignalRequest) + Send) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; configuration reload disabled");
            return;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: re-reading the configuration");
        on_hangup(SignalRequest::Reload);
    }
}

/// Re-reads `path` with `opts` and logs the outcome: `Some(config)` to
/// apply, or `None` (the error logged) to keep the running one. Findings
/// of `config::lint` are logged as warnings (errors too: a running daemon
/// keeps running on a file Cyrus would also accept).
pub fn reload_config(
    path: &std::path::Path,
    opts: &crate::config::LoadOptions,
) -> Option<crate::config::Config> {
    match crate::config::Config::load_with(path, opts) {
        Ok(conf) => {
            for f in crate::config::lint::check(&conf) {
                warn!("{f}");
            }
            info!(config = %path.display(), "configuration re-read");
            Some(conf)
        }
        Err(e) => {
            warn!(error = %e, "configuration not re-read; keeping the running one");
            None
        }
    }
}

fn count_join(report: &mut ServeReport, joined: Result<(), tokio::task::JoinError>) {
    match joined {
        Ok(()) => report.finished += 1,
        // A panicking connection task is a bug; it ends that connection
        // only, and is counted as finished so the books balance.
        Err(e) => {
            warn!(error = %e, "connection task failed");
            report.finished += 1;
        }
    }
}

/// What every connection of [`serve_machines`] shares.
#[derive(Clone, Debug, Default)]
pub struct MachineServe {
    /// Driver limits.
    pub driver: Options,
    /// TLS configurations for STARTTLS (or implicit TLS, below).
    pub tls: TlsConfigs,
    /// Start TLS before the machine speaks (an imaps-style port).
    pub implicit_tls: bool,
    /// Accept-loop knobs.
    pub serve: ServeOptions,
}

/// [`serve`] with a machine per connection: `factory(now, peer)` builds it
/// (`now` on the loop's clock, shared by every connection, so machines can
/// compare times), and a [`Driver`] runs it with a clone of `executor`.
/// Events are not collected; a machine that must report to the application
/// does so through effects.
pub async fn serve_machines<L, M, E, F>(
    listener: L,
    mut factory: F,
    executor: E,
    settings: MachineServe,
    shutdown: impl Future<Output = ()>,
) -> ServeReport
where
    L: Listener,
    M: Machine + Send + 'static,
    M::Effect: Send + 'static,
    M::Completion: Send + 'static,
    M::Event: Send,
    M::Command: Send,
    E: EffectExecutor<M::Effect, Completion = M::Completion> + Clone + 'static,
    F: FnMut(Time, SocketAddr) -> M,
{
    let epoch = tokio::time::Instant::now();
    let serve_options = settings.serve.clone();
    let drain = serve_options.drain.clone();
    serve(
        listener,
        move |stream, peer| {
            let now = Time::from_since_epoch(tokio::time::Instant::now() - epoch);
            let machine = factory(now, peer);
            let mut driver = Driver::new(machine, executor.clone())
                .options(settings.driver.clone())
                .tls(settings.tls.clone())
                .epoch(epoch)
                .peer(peer);
            if settings.implicit_tls {
                driver = driver.start_layer(engine::machine::Layer::TlsServer);
            }
            let span = tracing::info_span!("serve");
            let stream = drain.wrap(stream);
            async move {
                let _outcome = driver.run(stream).await;
            }
            .instrument(span)
        },
        shutdown,
        serve_options,
    )
    .await
}
