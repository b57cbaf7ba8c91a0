//! A transport wrapper that calls a function on every successful read, so
//! a daemon can note "the peer was heard from" (a MUPDATE slave's last
//! contact with its master) without the driver knowing why.
//!
//! It never looks at the bytes, never buffers, and never changes what is
//! read or written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `T`, calling `on_read` after each read that returned bytes.
#[derive(Debug)]
pub struct OnRead<T, F> {
    inner: T,
    on_read: F,
}

impl<T, F: Fn()> OnRead<T, F> {
    /// Wraps `inner`.
    pub fn new(inner: T, on_read: F) -> Self {
        OnRead { inner, on_read }
    }
}

impl<T: AsyncRead + Unpin, F: Fn() + Unpin> AsyncRead for OnRead<T, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            (this.on_read)();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, F: Unpin> AsyncWrite for OnRead<T, F> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    static READS: AtomicUsize = AtomicUsize::new(0);

    #[tokio::test]
    async fn counts_reads_that_returned_bytes_only() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = OnRead::new(a, || {
            READS.fetch_add(1, Ordering::SeqCst);
        });
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(w.read(&mut buf).await.unwrap(), 5);
        assert_eq!(READS.load(Ordering::SeqCst), 1);
        w.write_all(b"back").await.unwrap();
        drop(b);
        assert_eq!(w.read(&mut buf).await.unwrap(), 0);
        assert_eq!(READS.load(Ordering::SeqCst), 1);
    }
}
