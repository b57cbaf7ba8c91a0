//! Running as a Cyrus master(8) service: the inherited listening socket and
//! the status pipe.
//!
//! What master does (shared/research/cyrus-internals.md §1, from
//! `master/service.h`, `master/master.c`, `master/service-thread.c`, verified
//! in the lab): it creates, binds and listens on the service's socket and
//! `dup2`s it to **fd 4** (`LISTEN_FD`); **fd 3** (`STATUS_FD`) is the write
//! end of a pipe on which the child reports its state as 8-byte messages,
//! `struct { int message; pid_t pid; }` in host byte order, written with one
//! `write()`. The child's environment has `CYRUS_SERVICE` (and `CYRUS_ID`);
//! DAEMON entries get `CYRUS_ISDAEMON=1` and no fds 3/4.
//!
//! corvid follows the *threaded* service model that Cyrus's own mupdate uses
//! (`service-thread.c`), the one the note recommends for an async server:
//! one process accepts on fd 4 forever, serves connections concurrently, and
//! writes `MASTER_SERVICE_CONNECTION_MULTI` (4) per accepted connection, so
//! master keeps counting it READY and never forks a second one (cyrus.conf
//! should say `prefork=1`). It never writes `UNAVAILABLE` (2) without later
//! writing `AVAILABLE` (1), which would make master fork extra workers; on
//! shutdown it simply exits 0, which master treats as normal.
//!
//! This is the only place in corvid that adopts raw file descriptors, which
//! needs `unsafe` (`FromRawFd`): see the private `adopt`. Before adopting, it checks
//! through `/proc/self/fd` that fd 3 is a pipe and fd 4 a socket, and it
//! adopts them at most once per process, so no descriptor gets two owners.

use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::Listener;

/// master's status pipe, as the child sees it.
pub const STATUS_FD: RawFd = 3;
/// master's listening socket, as the child sees it.
pub const LISTEN_FD: RawFd = 4;

/// A message to master (`master/service.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// `MASTER_SERVICE_AVAILABLE`: ready for another connection.
    Available = 0x01,
    /// `MASTER_SERVICE_UNAVAILABLE`: busy.
    Unavailable = 0x02,
    /// `MASTER_SERVICE_CONNECTION`: took a connection (serial model).
    Connection = 0x03,
    /// `MASTER_SERVICE_CONNECTION_MULTI`: took a connection and can take
    /// more (threaded model; what corvid sends).
    ConnectionMulti = 0x04,
}

impl Status {
    /// The 8 bytes master reads: message then pid, host byte order.
    pub fn encode(self, pid: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(self as i32).to_ne_bytes());
        // pid_t is a signed 32-bit int on Linux; real pids fit.
        b[4..].copy_from_slice(&(pid as i32).to_ne_bytes());
        b
    }
}

/// What went wrong adopting master's descriptors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    /// The operator's setup: not started by master (no `CYRUS_SERVICE`), or
    /// started as a DAEMON entry, which has no listening socket.
    #[error(
        "not running as a Cyrus master SERVICES entry (CYRUS_SERVICE unset or CYRUS_ISDAEMON set)"
    )]
    NotUnderMaster,
    /// The operator's setup: fd 3 or fd 4 is missing or of the wrong kind
    /// (e.g. `listen="/path"` gives a unix socket, which corvid does not
    /// serve).
    #[error("fd {fd} is not {expected}")]
    BadDescriptor {
        /// The descriptor.
        fd: RawFd,
        /// What it should be.
        expected: &'static str,
    },
    /// Our caller's misuse: the descriptors were already adopted.
    #[error("master's descriptors were already adopted by this process")]
    AlreadyAdopted,
    /// The system's: turning the socket into a tokio listener failed.
    #[error("setting up the inherited socket: {0}")]
    Io(#[from] io::Error),
}

/// Whether this process looks like a master(8) SERVICES child.
pub fn is_under_master() -> bool {
    std::env::var_os("CYRUS_SERVICE").is_some() && std::env::var_os("CYRUS_ISDAEMON").is_none()
}

/// The write end of master's status pipe. Cloning shares it.
#[derive(Clone, Debug)]
pub struct StatusPipe {
    file: Arc<Mutex<File>>,
    pid: u32,
}

impl StatusPipe {
    /// Sends `status` to master. A failure is logged and otherwise ignored:
    /// master may be gone (shutting down), and serving must not depend on it.
    pub fn send(&self, status: Status) {
        let bytes = status.encode(self.pid);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write() of 8 bytes is atomic on a pipe (PIPE_BUF >= 512), as
        // master's reader requires.
        if let Err(e) = file.write_all(&bytes) {
            warn!(error = %e, ?status, "cannot report to master");
        }
    }
}

/// master's listening socket as a [`Listener`] that reports each accepted
/// connection with `CONNECTION_MULTI`.
#[derive(Debug)]
pub struct MasterListener {
    listener: tokio::net::TcpListener,
    status: StatusPipe,
}

impl MasterListener {
    /// Adopts fds 3 and 4 (once per process). Needs a tokio runtime.
    pub fn from_master() -> Result<MasterListener, MasterError> {
        if !is_under_master() {
            return Err(MasterError::NotUnderMaster);
        }
        let (status, listen) = adopt()?;
        let std_listener = std::net::TcpListener::from(listen);
        // A unix-domain socket has no IP address: refuse it clearly.
        std_listener
            .local_addr()
            .map_err(|_| MasterError::BadDescriptor {
                fd: LISTEN_FD,
                expected: "a TCP socket",
            })?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        Ok(MasterListener {
            listener,
            status: StatusPipe {
                file: Arc::new(Mutex::new(File::from(status))),
                pid: std::process::id(),
            },
        })
    }

    /// The status pipe, to send other messages.
    pub fn status(&self) -> &StatusPipe {
        &self.status
    }

    /// The address master bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for MasterListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let accepted = self.listener.accept().await?;
        self.status.send(Status::ConnectionMulti);
        Ok(accepted)
    }
}

static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of fds 3 (status pipe) and 4 (listening socket).
///
/// This is corvid's single use of `unsafe`: std offers no safe way to adopt
/// a descriptor inherited across `exec`. The checks before it make the
/// adoption sound: each fd is verified open and of the right kind through
/// `/proc/self/fd` (so we never claim a closed or unrelated descriptor), and
/// the `ADOPTED` flag makes sure it happens once, so each descriptor has
/// exactly one owner that closes it.
#[allow(unsafe_code)]
fn adopt() -> Result<(OwnedFd, OwnedFd), MasterError> {
    let kind = |fd: RawFd| std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.file_type());
    match kind(STATUS_FD) {
        Ok(t) if t.is_fifo() => {}
        _ => {
            return Err(MasterError::BadDescriptor {
                fd: STATUS_FD,
                expected: "a pipe",
            })
        }
    }
    match kind(LISTEN_FD) {
        Ok(t) if t.is_socket() => {}
        _ => {
            return Err(MasterError::BadDescriptor {
                fd: LISTEN_FD,
                expected: "a socket",
            })
        }
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(MasterError::AlreadyAdopted);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors are open and of the expected kind (checked
    // above), were inherited from master and are not owned by anything else
    // in this process, and ADOPTED guarantees this runs at most once.
    let owned = unsafe {
        (
            OwnedFd::from_raw_fd(STATUS_FD),
            OwnedFd::from_raw_fd(LISTEN_FD),
        )
    };
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_eight_host_order_bytes() {
        let b = Status::ConnectionMulti.encode(0x01020304);
        assert_eq!(&b[..4], &4i32.to_ne_bytes());
        assert_eq!(&b[4..], &0x01020304i32.to_ne_bytes());
        assert_eq!(Status::Available.encode(7)[..4], 1i32.to_ne_bytes());
        assert_eq!(Status::Unavailable as i32, 2);
        assert_eq!(Status::Connection as i32, 3);
    }
}
