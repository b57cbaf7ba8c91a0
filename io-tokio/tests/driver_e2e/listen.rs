//! The accept loop: graceful shutdown, and the Cyrus master(8) path with
//! real inherited descriptors.

use std::io::{BufRead, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use io_tokio::listen::{master, serve_machines, MachineServe, ServeOptions, ServeReport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::{KvServer, NoStore};

fn settings(grace: Duration) -> MachineServe {
    MachineServe {
        serve: ServeOptions {
            shutdown_grace: grace,
            ..ServeOptions::default()
        },
        ..MachineServe::default()
    }
}

async fn banner(stream: &mut BufReader<TcpStream>) {
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert_eq!(line, "* OK toy\r\n");
}

#[tokio::test]
async fn shutdown_lets_live_connections_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = tokio::spawn(serve_machines(
        listener,
        |now, _| KvServer::new(now),
        NoStore,
        settings(Duration::from_secs(20)),
        async {
            let _ = stopped.await;
        },
    ));
    let mut a = BufReader::new(TcpStream::connect(addr).await.unwrap());
    banner(&mut a).await;
    stop.send(()).unwrap();
    // Still served after shutdown began: the connection finishes normally.
    a.get_mut()
        .write_all(b"ECHO still here\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    a.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "still here\r\nBYE\r\n");
    let report = serve.await.unwrap();
    assert_eq!(
        report,
        ServeReport {
            accepted: 1,
            finished: 1,
            aborted: 0
        }
    );
    // And nobody listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_aborts_what_outlives_the_grace() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = tokio::spawn(serve_machines(
        listener,
        |now, _| KvServer::new(now),
        NoStore,
        settings(Duration::from_millis(200)),
        async {
            let _ = stopped.await;
        },
    ));
    let mut quitter = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut idler = BufReader::new(TcpStream::connect(addr).await.unwrap());
    banner(&mut quitter).await;
    banner(&mut idler).await;
    quitter.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = String::new();
    quitter.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "BYE\r\n");
    stop.send(()).unwrap();
    let report = serve.await.unwrap();
    assert_eq!(
        report,
        ServeReport {
            accepted: 2,
            finished: 1,
            aborted: 1
        }
    );
    // The aborted connection is closed, without a goodbye.
    let mut rest = Vec::new();
    let _ = idler.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

/// Run in a child process that has master's fds 3 and 4: by
/// `inherited_descriptors_from_a_master_like_parent` below, and by the real
/// Cyrus master in `driver_live.rs`; ignored otherwise.
#[tokio::test]
#[ignore = "child half of inherited_descriptors_from_a_master_like_parent"]
async fn master_child() {
    let listener = master::MasterListener::from_master().expect("fds 3 and 4 from the parent");
    // A second adoption must be refused: one owner per descriptor.
    assert!(matches!(
        master::MasterListener::from_master(),
        Err(master::MasterError::AlreadyAdopted)
    ));
    serve_machines(
        listener,
        |now, _| KvServer::new(now),
        NoStore,
        MachineServe::default(),
        io_tokio::listen::shutdown_signal(true),
    )
    .await;
    // Returning ends the process with status 0: a normal exit for master.
}

/// Python plays master(8): it binds and listens, puts the socket on fd 4
/// and the status FIFO on fd 3, sets `CYRUS_SERVICE`/`CYRUS_ID`, prints the
/// port, and execs this test binary's `master_child`. We then talk to the
/// child over that socket and read master's status messages.
#[test]
fn inherited_descriptors_from_a_master_like_parent() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("status");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let launcher = r#"
import fcntl, os, socket, sys
fifo, exe = sys.argv[1], sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(32)
port = s.getsockname()[1]
# Move both above 4 first, so placing one cannot clobber the other.
st = fcntl.fcntl(os.open(fifo, os.O_RDWR), fcntl.F_DUPFD, 10)
ls = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 10)
os.dup2(st, 3, inheritable=True)
os.dup2(ls, 4, inheritable=True)
print(port, flush=True)
# The parent stops reading our stdout; the child's test report goes nowhere
# (its panics still reach stderr).
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
env = dict(os.environ, CYRUS_SERVICE="corvid-test", CYRUS_ID="0")
env.pop("CYRUS_ISDAEMON", None)
os.execve(exe, [exe, "--ignored", "--exact", "listen::master_child", "--test-threads=1"], env)
"#;
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(launcher)
        .arg(&fifo)
        .arg(&exe)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the launcher");
    let pid = child.id();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().expect("the launcher prints the port");
    // Opened after the child holds the write end, so this does not block.
    let mut status_pipe = std::fs::File::open(&fifo).unwrap();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
            banner(&mut conn).await;
            conn.get_mut()
                .write_all(b"ECHO via fd 4\r\nQUIT\r\n")
                .await
                .unwrap();
            let mut rest = String::new();
            conn.read_to_string(&mut rest).await.unwrap();
            assert_eq!(rest, "via fd 4\r\nBYE\r\n");
        });
        let mut msg = [0u8; 8];
        status_pipe.read_exact(&mut msg).unwrap();
        msg
    }));
    // We started the child; we end it, by its id.
    let _ = child.kill();
    let _ = child.wait();
    let msg = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(msg, master::Status::ConnectionMulti.encode(pid));
}
