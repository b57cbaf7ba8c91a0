//! The driver over stdin/stdout (`driver::stdio()`), as Cyrus's `-X` mode
//! and dsync's pipe mode use it: this binary runs itself as a child whose
//! `stdio_child` serves the toy protocol on its own stdin/stdout.

use std::process::Stdio;

use engine::machine::{CloseReason, Time};
use io_tokio::driver::{stdio, Driver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{KvServer, NoStore};

/// The child half; ignored unless run by `serves_over_stdin_and_stdout`.
#[tokio::test]
#[ignore = "child half of serves_over_stdin_and_stdout"]
async fn stdio_child() {
    let outcome = Driver::new(KvServer::new(Time::ZERO), NoStore)
        .run(stdio())
        .await;
    assert_eq!(outcome.result.unwrap(), CloseReason::Done);
}

/// Reads from `from` until `buf` ends with `marker`.
async fn read_until(from: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>, marker: &[u8]) {
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(marker) {
        let n = from.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "child closed stdout; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn serves_over_stdin_and_stdout() {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "stdio::stdio_child",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The test harness announces itself on stdout first ("running 1 test");
    // the protocol starts at the banner.
    let mut got = Vec::new();
    read_until(&mut stdout, &mut got, b"* OK toy\r\n").await;
    stdin
        .write_all(b"ECHO over a pipe\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    read_until(&mut stdout, &mut reply, b"BYE\r\n").await;
    assert_eq!(reply, b"over a pipe\r\nBYE\r\n");
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(
        status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&rest)
    );
}
