//! Graceful shutdown of live connections: after SIGTERM a connection ends
//! at its next idle moment, never in the middle of a command.
//!
//! [`Drain`] is a switch shared by an accept loop and its connections;
//! [`Drain::wrap`] puts a [`Draining`] around each connection's stream.
//! Until the switch is thrown the wrapper only passes bytes through. Once
//! it is thrown, the wrapper reports end-of-file to the reader (the
//! driver, then the machine, which closes as on a peer's EOF) as soon as the
//! connection is **idle**: we wrote last (our answer went out, so no command
//! of the peer is half-received or waiting for its answer) and nothing
//! moved either way for [`Drain::quiet`]. A command the peer has started
//! sending, or one whose answer we owe, keeps the connection open, so it
//! finishes; the accept loop's `shutdown_grace` bounds how long that may
//! take (after it, tasks are aborted: the stores commit a batch whole or not
//! at all, so even then no change is half-applied).
//!
//! Why at the byte-stream level: it needs no protocol knowledge (io-tokio
//! makes no protocol decision) and no change to any machine: every machine
//! already handles a peer's EOF between commands by closing cleanly. "We
//! wrote last" is the one protocol-free sign that a request/response
//! exchange is complete; a push stream (MUPDATE UPDATE) is idle between
//! pushes by the same rule.
//!
//! It never reads or changes the bytes.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Default)]
struct Shared {
    draining: AtomicBool,
    next_id: AtomicU64,
    /// One waker per live wrapper that is waiting to hear of the drain.
    wakers: Mutex<BTreeMap<u64, Waker>>,
}

/// The shutdown switch of one accept loop (cheap to clone).
#[derive(Debug, Clone)]
pub struct Drain {
    shared: Arc<Shared>,
    quiet: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new(Duration::from_millis(500))
    }
}

impl Drain {
    /// A switch whose connections end after `quiet` of idleness once thrown.
    pub fn new(quiet: Duration) -> Drain {
        Drain {
            shared: Arc::default(),
            quiet,
        }
    }

    /// How long a connection must be idle before it is ended.
    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    /// Throws the switch: every wrapped connection ends at its next idle
    /// moment. Idempotent.
    pub fn start(&self) {
        if self.shared.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        let wakers =
            std::mem::take(&mut *self.shared.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers.into_values() {
            w.wake();
        }
    }

    /// Whether the switch was thrown.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Wraps a connection's stream.
    pub fn wrap<T>(&self, inner: T) -> Draining<T> {
        Draining {
            inner,
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            drain: self.clone(),
            last_io: Instant::now(),
            // A server speaks first or waits: a fresh connection with
            // nothing said is idle too.
            wrote_last: true,
            eof_sent: false,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

/// A stream that reports EOF at its first idle moment after a [`Drain`].
#[derive(Debug)]
pub struct Draining<T> {
    inner: T,
    id: u64,
    drain: Drain,
    last_io: Instant,
    wrote_last: bool,
    eof_sent: bool,
    timer: Pin<Box<Sleep>>,
}

impl<T> Draining<T> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether this connection was ended by the drain.
    pub fn drained(&self) -> bool {
        self.eof_sent
    }

    /// `Ready` when the read side should report EOF now; otherwise arranges
    /// a wake-up for when that may change (the drain starting, or the idle
    /// deadline).
    fn poll_drained(&mut self, cx: &mut Context<'_>) -> bool {
        if self.eof_sent {
            return true;
        }
        let shared = &self.drain.shared;
        if !shared.draining.load(Ordering::SeqCst) {
            let mut w = shared.wakers.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock: `start` takes the wakers under
            // it, so a wake cannot be lost between the check and the insert.
            if !shared.draining.load(Ordering::SeqCst) {
                w.insert(self.id, cx.waker().clone());
                return false;
            }
        }
        if !self.wrote_last {
            // Mid-command: the next write (our answer) re-arms the check.
            return false;
        }
        let idle_at = self.last_io + self.drain.quiet;
        if Instant::now() >= idle_at {
            self.eof_sent = true;
            return true;
        }
        self.timer.as_mut().reset(idle_at);
        let _ = self.timer.as_mut().poll(cx);
        false
    }
}

impl<T> Drop for Draining<T> {
    fn drop(&mut self) {
        let mut w = self
            .drain
            .shared
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        w.remove(&self.id);
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for Draining<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_drained(cx) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            if buf.filled().len() > before {
                this.last_io = Instant::now();
                this.wrote_last = false;
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Draining<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                this.last_io = Instant::now();
                this.wrote_last = true;
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_idle_connection_reads_eof_once_draining() {
        let drain = Drain::new(Duration::from_millis(20));
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = drain.wrap(server);
        server.write_all(b"* OK banner\r\n").await.unwrap();
        let mut got = [0u8; 64];
        let n = client.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"* OK banner\r\n");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = server.read(&mut buf).await.unwrap();
            (n, server.drained())
        });
        tokio::task::yield_now().await;
        drain.start();
        assert_eq!(reader.await.unwrap(), (0, true));
        drop(client);
    }

    #[tokio::test]
    async fn a_command_in_flight_is_read_whole_and_answered_before_eof() {
        let drain = Drain::new(Duration::from_millis(20));
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = drain.wrap(server);
        // The peer has sent half a command when the drain starts.
        client.write_all(b"APPLY MESSAGE (").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"APPLY MESSAGE (");
        drain.start();
        // However long the rest takes, it is delivered, not cut by an EOF.
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"...)\r\n").await.unwrap();
            client
        });
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"...)\r\n");
        assert!(!server.drained());
        let mut client = rest.await.unwrap();
        // Answered: now idle, so the next read is EOF.
        server.write_all(b"OK success\r\n").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert!(server.drained());
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"OK success\r\n");
    }

    #[tokio::test]
    async fn without_a_drain_bytes_pass_through_untouched() {
        let drain = Drain::new(Duration::from_millis(1));
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = drain.wrap(server);
        client.write_all(b"abc").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abc");
        assert!(!server.drained());
    }
}
